//! Crash points: every step of every shared-memory protocol has a name, so
//! that a test can kill a process exactly there (SIGKILL), or stop it there
//! (SIGSTOP) while the others must go on, instead of hoping that a random
//! kill lands in a window of a few instructions.
//!
//! [`crash_point!`](crate::crash_point) marks a step. Without the cargo
//! feature `crash-points` it compiles to nothing. With it, a process reads
//! `SHMBUS_CRASH_POINT=NAME:ACTION[:N]` once, and the `N`th time (default 1)
//! any of its threads passes point `NAME` it performs `ACTION`:
//!
//! - `kill`: `SIGKILL` to itself — the process dies at that instruction;
//! - `stop`: prints `shmbus crash point NAME: stopped` to stderr and sends
//!   itself `SIGSTOP`; it carries on from there when a `SIGCONT` comes.
//!
//! A point fires once per process. Only `bus-tests` turns the feature on,
//! and the points exist only in builds with debug assertions: a release
//! build never has them, even when feature unification across the
//! workspace (a plain `cargo build --release` at the root) turns the
//! feature on for every binary. [`ENABLED`] says whether this build has
//! them.

/// Whether crash points are compiled in (the `crash-points` feature, in a
/// build with debug assertions).
pub const ENABLED: bool = cfg!(all(feature = "crash-points", debug_assertions));

/// A named step. The order is the order of [`ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum Point {
    /// Ring push: the intent is recorded, the cell CAS not yet made.
    RingPushBeforeCas,
    /// Ring push: the cell holds the entry, the tail hint has not moved
    /// (the window where a lagging tail is left behind).
    RingPushAfterCas,
    /// Ring push: the tail hint moved; the caller has not cleared its intent.
    RingPushDone,
    /// Ring pop: the intent is recorded, the cell CAS not yet made.
    RingPopBeforeCas,
    /// Ring pop: the cell is taken, its slot not yet claimed, the head hint
    /// not moved.
    RingPopAfterCas,
    /// Ring pop: the head hint moved; the caller has not cleared its intent.
    RingPopDone,
    /// A free slot was claimed into a publisher's cache (`Free → Cached`).
    PoolCached,
    /// A cached slot was marked loaned (`Cached → Loaned`).
    PoolLoaned,
    /// A loaned slot went back to the private cache (`Loaned → Cached`).
    PoolUnloaned,
    /// A loan has its path written, the body not yet.
    LoanPathWritten,
    /// A loan is written and stamped, not yet pushed.
    SendBeforePush,
    /// `Loaned → Published` (the message's groups queued) is stored, the
    /// first ring push not yet made.
    EnqueueMarked,
    /// A message is pushed onto some of its groups' queues, not all yet.
    PublishPartly,
    /// A publisher cleared a group's bit (a lossy group's queue filled
    /// after `begin_publish` checked it, a group left, or a send gave up);
    /// if it was the last, the free-ring push is not yet made.
    LossyDropped,
    /// A receiver locked a slot's holder word for its group; the group's
    /// bit in the ownership word has not moved from queued to held yet.
    ClaimLocked,
    /// A push found the queue full; the slot is not yet rolled back to
    /// `Loaned`.
    EnqueueRollback,
    /// A queued message was claimed by a receiver (its group's bit moved
    /// from queued to held).
    DequeueClaimed,
    /// A release cleared its group's held bit (or stored `Free`); if it
    /// freed the slot, the free-ring push is not yet made.
    ReleaseMarked,
    /// Between two chunks of a batch send.
    BatchBetweenChunks,
    /// A handler's reply is written, not yet pushed to the reply queue.
    ReplyBeforePush,
    /// A sleeper announced itself on a doorbell, before its re-check.
    DoorbellAnnounced,
    /// A sleeper woke up and has not withdrawn its announcement yet.
    DoorbellBeforeRetire,
    /// Daemon reclaim: an intent was read, its repair not yet pushed.
    ReclaimIntent,
    /// Daemon reclaim: a held slot went back to `Queued`, not yet pushed.
    ReclaimRequeue,
    /// Daemon reclaim: a slot went back to `Free`, not yet pushed.
    ReclaimFree,
}

/// Every point, in order.
pub const ALL: &[Point] = &[
    Point::RingPushBeforeCas,
    Point::RingPushAfterCas,
    Point::RingPushDone,
    Point::RingPopBeforeCas,
    Point::RingPopAfterCas,
    Point::RingPopDone,
    Point::PoolCached,
    Point::PoolLoaned,
    Point::PoolUnloaned,
    Point::LoanPathWritten,
    Point::SendBeforePush,
    Point::EnqueueMarked,
    Point::PublishPartly,
    Point::LossyDropped,
    Point::ClaimLocked,
    Point::EnqueueRollback,
    Point::DequeueClaimed,
    Point::ReleaseMarked,
    Point::BatchBetweenChunks,
    Point::ReplyBeforePush,
    Point::DoorbellAnnounced,
    Point::DoorbellBeforeRetire,
    Point::ReclaimIntent,
    Point::ReclaimRequeue,
    Point::ReclaimFree,
];

impl Point {
    /// The point's name, as `SHMBUS_CRASH_POINT` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Point::RingPushBeforeCas => "ring-push-before-cas",
            Point::RingPushAfterCas => "ring-push-after-cas",
            Point::RingPushDone => "ring-push-done",
            Point::RingPopBeforeCas => "ring-pop-before-cas",
            Point::RingPopAfterCas => "ring-pop-after-cas",
            Point::RingPopDone => "ring-pop-done",
            Point::PoolCached => "pool-cached",
            Point::PoolLoaned => "pool-loaned",
            Point::PoolUnloaned => "pool-unloaned",
            Point::LoanPathWritten => "loan-path-written",
            Point::SendBeforePush => "send-before-push",
            Point::EnqueueMarked => "enqueue-marked",
            Point::PublishPartly => "publish-partly",
            Point::LossyDropped => "lossy-dropped",
            Point::ClaimLocked => "claim-locked",
            Point::EnqueueRollback => "enqueue-rollback",
            Point::DequeueClaimed => "dequeue-claimed",
            Point::ReleaseMarked => "release-marked",
            Point::BatchBetweenChunks => "batch-between-chunks",
            Point::ReplyBeforePush => "reply-before-push",
            Point::DoorbellAnnounced => "doorbell-announced",
            Point::DoorbellBeforeRetire => "doorbell-before-retire",
            Point::ReclaimIntent => "reclaim-intent",
            Point::ReclaimRequeue => "reclaim-requeue",
            Point::ReclaimFree => "reclaim-free",
        }
    }

    /// The point named `name`.
    pub fn from_name(name: &str) -> Option<Point> {
        ALL.iter().copied().find(|p| p.name() == name)
    }

    /// Whether the point is passed by the daemon (reclaim), not by clients.
    pub fn in_daemon(self) -> bool {
        matches!(self, Point::ReclaimIntent | Point::ReclaimRequeue | Point::ReclaimFree)
    }
}

/// Marks a crash point (see the module doc). Nothing without the
/// `crash-points` feature of `bus-core`.
#[macro_export]
macro_rules! crash_point {
    ($p:ident) => {
        $crate::crash::hit($crate::crash::Point::$p)
    };
}

/// Passes point `p` (called through [`crash_point!`](crate::crash_point)).
#[cfg(not(all(feature = "crash-points", debug_assertions)))]
#[inline(always)]
pub fn hit(_p: Point) {}

/// Reads `SHMBUS_CRASH_POINT` now (it is otherwise read at the first point
/// passed, which allocates). Nothing without the feature.
#[cfg(not(all(feature = "crash-points", debug_assertions)))]
#[inline(always)]
pub fn init() {}

#[cfg(all(feature = "crash-points", debug_assertions))]
pub use armed::{hit, init};

#[cfg(all(feature = "crash-points", debug_assertions))]
mod armed {
    use super::Point;
    use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

    /// 0: not read yet; 1: disarmed; 2 + point: armed for that point.
    static STATE: AtomicU32 = AtomicU32::new(0);
    /// Hits left before the action.
    static COUNTDOWN: AtomicU64 = AtomicU64::new(0);
    /// 0: kill, 1: stop.
    static ACTION: AtomicU32 = AtomicU32::new(0);

    /// See [`super::init`].
    pub fn init() {
        if STATE.load(Relaxed) != 0 {
            return;
        }
        let spec = std::env::var("SHMBUS_CRASH_POINT").unwrap_or_default();
        let mut parts = spec.split(':');
        let point = parts.next().and_then(Point::from_name);
        let action = match parts.next() {
            Some("stop") => 1,
            _ => 0,
        };
        let n = parts.next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(1).max(1);
        match point {
            Some(p) => {
                COUNTDOWN.store(n, Relaxed);
                ACTION.store(action, Relaxed);
                STATE.store(2 + p as u32, Relaxed);
            }
            None => {
                if !spec.is_empty() {
                    eprintln!("shmbus: SHMBUS_CRASH_POINT={spec:?} names no crash point; ignored");
                }
                STATE.store(1, Relaxed);
            }
        }
    }

    /// See [`super::hit`].
    #[inline]
    pub fn hit(p: Point) {
        let s = STATE.load(Relaxed);
        if s == 1 {
            return;
        }
        if s == 0 {
            init();
            return hit(p);
        }
        if s != 2 + p as u32 || COUNTDOWN.fetch_sub(1, Relaxed) != 1 {
            return;
        }
        STATE.store(1, Relaxed);
        if ACTION.load(Relaxed) == 1 {
            eprintln!("shmbus crash point {}: stopped", p.name());
            // SAFETY: raise has no memory-safety preconditions.
            unsafe { libc::raise(libc::SIGSTOP) };
        } else {
            // SAFETY: as above; the process ends here.
            unsafe { libc::raise(libc::SIGKILL) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_point_has_a_unique_name_that_maps_back() {
        for (i, p) in ALL.iter().enumerate() {
            assert_eq!(*p as usize, i, "ALL is in declaration order");
            assert_eq!(Point::from_name(p.name()), Some(*p));
        }
    }
}
