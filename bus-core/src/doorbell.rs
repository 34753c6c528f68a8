//! Doorbell: how a consumer sleeps on an empty ring (or a producer on a full
//! one) without the other side paying a syscall while it is awake.
//!
//! A doorbell is a waiter count and a futex word on their own [`Line`]. The
//! protocol is the classic "publish, fence, check for waiters" pair (the same
//! shape as io_uring's `IORING_SQ_NEED_WAKEUP` check):
//!
//! ```text
//!  ringer (after a push)                 sleeper (found the ring empty)
//!  ─────────────────────                 ──────────────────────────────
//!  cell CAS            (SeqCst)          waiters += 1           (SeqCst)
//!  if waiters > 0      (SeqCst load)     w = word               (SeqCst)
//!   and swap(pending,1)==0 (SeqCst)      swap(pending, 0)       (SeqCst)
//!      word += 1 (Release)               re-check ring          (SeqCst load)
//!      futex_wake(word)                  if still empty: futex_wait(word, w)
//!                                        swap(pending, 0); waiters -= 1
//! ```
//!
//! SYNC: doorbell. All four marked operations are `SeqCst`, so they fall in
//! one total order. If the ringer's `waiters` load sees 0, that load precedes
//! the sleeper's increment, so the ringer's cell CAS precedes the sleeper's
//! re-check, which therefore sees the item. Otherwise the ringer bumps `word`
//! before waking, so a sleeper that read `w` before the bump either finds
//! `word != w` in the kernel's atomic check or is woken. On x86 the SeqCst
//! loads are plain loads and the CAS is a locked instruction anyway: the
//! awake path costs one extra load of a line that stays shared.
//!
//! `pending` makes it one syscall per sleep instead of one per push while a
//! sleeper is being scheduled: a ringer that finds a wake-up already on its
//! way skips the syscall. SYNC: doorbell-pending — the sleeper clears the
//! flag after reading the word. If a ringer's swap comes before that clear,
//! the clear reads the ringer's 1 and so synchronizes with it: the re-check
//! sees the ringer's item. If it comes after, the ringer reads 0 and wakes;
//! the word the sleeper read predates that bump (they are ordered through
//! the two swaps), so the futex call returns.
//!
//! [`Line`]: crate::line::Line

use crate::sync::{AtomicU32, Ordering};
use std::time::Duration;

/// Waiter count and futex word. Lives in a ring header in the segment.
#[repr(C)]
#[derive(Debug)]
pub struct Doorbell {
    /// Number of parties that announced they are about to sleep or are
    /// sleeping. Written by sleepers (RMW); read by ringers.
    waiters: AtomicU32,
    /// The futex word. Bumped by a ringer that saw a waiter; sleepers wait
    /// while it holds the value they read. Wraps.
    word: AtomicU32,
    /// 1 while a wake-up is on its way and not yet taken by a sleeper: later
    /// ringers skip the syscall. Set by the ringer that wakes (swap), cleared
    /// by a sleeper when it announces itself and when it wakes.
    pending: AtomicU32,
    /// Under loom, the "kernel" of the futex model: a mutex and condvar that
    /// give `FUTEX_WAIT`'s atomic check-and-sleep.
    #[cfg(loom)]
    kernel: (loom::sync::Mutex<()>, loom::sync::Condvar),
}

#[cfg(loom)]
impl Default for Doorbell {
    fn default() -> Self {
        Self::new()
    }
}

impl Doorbell {
    /// A fresh doorbell (heap use under loom; in the segment, zeroed memory is
    /// a valid doorbell).
    #[cfg(loom)]
    pub fn new() -> Self {
        Doorbell {
            waiters: AtomicU32::new(0),
            word: AtomicU32::new(0),
            pending: AtomicU32::new(0),
            kernel: (loom::sync::Mutex::new(()), loom::sync::Condvar::new()),
        }
    }

    /// A fresh doorbell for heap copies in tests (in the segment, zeroed
    /// memory is a valid doorbell).
    #[cfg(not(loom))]
    pub const fn zeroed() -> Self {
        Doorbell { waiters: AtomicU32::new(0), word: AtomicU32::new(0), pending: AtomicU32::new(0) }
    }

    /// Rings after an item was made available. Must be called after the
    /// `SeqCst` operation that published the item (SYNC: doorbell).
    #[inline]
    pub fn ring(&self) {
        if self.has_waiters() {
            self.wake_once();
        }
    }

    /// Wakes one sleeper unless a wake-up is already on its way. While a
    /// sleeper takes tens of microseconds to be scheduled, every push would
    /// otherwise see it as a waiter and pay a syscall.
    #[inline]
    fn wake_once(&self) {
        // SYNC: doorbell-pending — SeqCst pairs with the clearing store in
        // `announce`: if this swap reads 1 from an earlier cycle, the
        // sleeper's clear comes later in the total order, and so does its
        // re-check, which then sees our item.
        if self.pending.swap(1, Ordering::SeqCst) == 0 {
            self.wake(1);
        }
    }

    /// Whether anyone announced it sleeps (the same `SeqCst` load as
    /// [`Doorbell::ring`], for ringers that wake only past a threshold).
    #[inline]
    pub fn has_waiters(&self) -> bool {
        crate::sync::seqcst_order_for_loom();
        // SYNC: doorbell — pairs with the SeqCst increment in `announce`.
        self.waiters.load(Ordering::SeqCst) > 0
    }

    /// Wakes one sleeper (unless a wake-up is already on its way); for
    /// ringers that checked [`Doorbell::has_waiters`] themselves.
    pub fn ring_one(&self) {
        self.wake_once();
    }

    /// Rings after `n` items were made available at once: wakes up to `n`
    /// sleepers (one per item), so that a batch of requests reaches as many
    /// sleeping workers as it has requests, not one. Same ordering
    /// requirement as [`Doorbell::ring`].
    #[inline]
    pub fn ring_n(&self, n: u32) {
        crate::sync::seqcst_order_for_loom();
        // SYNC: doorbell — the same SeqCst load as `has_waiters`.
        let waiters = self.waiters.load(Ordering::SeqCst);
        match waiters.min(n) {
            0 => {}
            // One to wake: as `ring`, which spares the syscall while a
            // wake-up is already on its way.
            1 => self.wake_once(),
            k => {
                // SYNC: doorbell-pending — as in `wake_once`: the flag only
                // spares later ringers a syscall, and the sleepers woken
                // here clear it; waking more is always safe.
                self.pending.swap(1, Ordering::SeqCst);
                self.wake(k);
            }
        }
    }

    /// Wakes every sleeper (shutdown, reclaim): they re-check and find out.
    pub fn ring_all(&self) {
        self.wake(u32::MAX);
    }

    fn wake(&self, count: u32) {
        // SYNC: doorbell-word — Release pairs with the sleeper's SeqCst
        // (Acquire) load of the word in `announce`. A sleeper that reads the
        // bumped value does not sleep on it and must then see our item in
        // its re-check; a Relaxed bump would give it no happens-before edge
        // to our push (found by the loom model).
        self.word.fetch_add(1, Ordering::Release);
        #[cfg(not(loom))]
        crate::futex::wake(&self.word, count);
        #[cfg(loom)]
        {
            let _ = count;
            let _guard = self.kernel.0.lock().unwrap();
            self.kernel.1.notify_all();
        }
    }

    /// First half of going to sleep: announce the intent and return the
    /// futex word to sleep on. The caller must re-check its condition (with a
    /// SeqCst load) after this and before [`Doorbell::sleep`].
    #[inline]
    pub fn announce(&self) -> u32 {
        // SYNC: doorbell — pairs with the SeqCst load in `ring`.
        self.waiters.fetch_add(1, Ordering::SeqCst);
        crate::sync::seqcst_order_for_loom();
        let seen = self.word.load(Ordering::SeqCst);
        // SYNC: doorbell-pending — see `wake_once`. Cleared *after* reading
        // the word: a wake-up that bumped the word before we read it is used
        // up (we will not sleep on the old value), so from here on a ringer
        // must wake us again. Clearing before the read lost that wake-up
        // (found by the loom model). A swap, not a store: as
        // read-modify-writes, the ringer's swap and this clear are ordered
        // by the location itself. Slow path only.
        // SYNC: doorbell-pending — pairs with the swap in `wake_once`.
        self.pending.swap(0, Ordering::SeqCst);
        seen
    }

    /// Second half: sleep while the word still reads `seen`, for at most
    /// `timeout` (`None`: until woken), then withdraw the announcement.
    /// Returns whether the timeout elapsed.
    pub fn sleep(&self, seen: u32, timeout: Option<Duration>) -> bool {
        let timed_out = self.wait(seen, timeout);
        self.retire();
        timed_out
    }

    /// [`Doorbell::sleep`] without the final [`Doorbell::retire`] (the
    /// caller retires, recording that it does: see [`Sleeper`]).
    pub fn wait(&self, seen: u32, timeout: Option<Duration>) -> bool {
        #[cfg(not(loom))]
        let timed_out = crate::futex::wait(&self.word, seen, timeout) == crate::futex::Wait::TimedOut;
        #[cfg(loom)]
        let timed_out = {
            let _ = timeout;
            let guard = self.kernel.0.lock().unwrap();
            // The model of FUTEX_WAIT's atomic check (SYNC: doorbell-word).
            if self.word.load(Ordering::SeqCst) == seen {
                drop(self.kernel.1.wait(guard).unwrap());
            }
            false
        };
        self.woken();
        timed_out
    }

    /// What a sleeper does when its wait on the word ended (woken, timed
    /// out, or never slept because the word had moved): marks the wake-up
    /// taken, so the next ringer may wake another sleeper. [`Doorbell::wait`]
    /// calls it; a sleeper that waits by other means (an asynchronous futex
    /// wait through io_uring) calls it when its wait completes.
    #[inline]
    pub fn woken(&self) {
        // SYNC: doorbell-pending — pairs with the swap in `wake_once`.
        self.pending.swap(0, Ordering::SeqCst);
    }

    /// The futex word itself, for a sleeper that waits on it by other means
    /// than [`Doorbell::wait`] (an io_uring `FUTEX_WAIT`, shared: no
    /// `FUTEX2_PRIVATE`). It must follow the same protocol: wait only on the
    /// value [`Doorbell::announce`] returned, then call [`Doorbell::woken`]
    /// and retire.
    #[cfg(not(loom))]
    pub fn futex_word(&self) -> &AtomicU32 {
        &self.word
    }

    /// Withdraws an [`Doorbell::announce`] without sleeping (the re-check
    /// found what it wanted).
    #[inline]
    pub fn retire(&self) {
        // Relaxed: a stale non-zero count only costs a ringer one wake call.
        self.waiters.fetch_sub(1, Ordering::Relaxed);
    }

    /// Daemon, for a sleeper that died announced: withdraws its count, but
    /// never below zero (a corrupt count is not made worse).
    pub fn withdraw_dead(&self) {
        // Bounded: each lost CAS is another sleeper's announce or retire; a
        // peer that keeps scribbling here costs a stale count, not a hang.
        let mut w = self.waiters.load(Ordering::Relaxed);
        for _ in 0..64 {
            let Some(less) = w.checked_sub(1) else { return };
            match self.waiters.compare_exchange_weak(w, less, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(x) => w = x,
            }
        }
    }

    /// Current number of announced sleepers (for status).
    pub fn waiters(&self) -> u32 {
        self.waiters.load(Ordering::Relaxed)
    }
}

/// A port's way to sleep on a doorbell so that the daemon can withdraw its
/// announcement if the process dies asleep: otherwise `waiters` would stay
/// above zero for good, and every later ring would pay a `futex_wake`.
///
/// The port's record word (`PortIntent::bell` in the segment) says which
/// bell and how far the port got:
///
/// | record       | meaning                                   | daemon, after the client died |
/// |--------------|-------------------------------------------|-------------------------------|
/// | 0            | not sleeping                              | nothing                       |
/// | `id`·PRE     | about to announce (count maybe not raised) | nothing                       |
/// | `id`·IN      | announced: counted in `waiters`           | `retire` once                 |
/// | `id`·OUT     | retiring (count maybe already lowered)    | nothing                       |
///
/// The two "maybe" states are one instruction wide each; there the daemon
/// does nothing, so the worst a death in them leaves is one stale count
/// (a needless wake call per ring), never a count too low (a lost wake-up).
/// The record is Relaxed: the daemon reads it only after the process is
/// gone, when all its stores are visible.
pub struct Sleeper<'a> {
    bell: &'a Doorbell,
    record: &'a crate::sync::AtomicU64,
    id: u64,
}

/// Record states (low 2 bits).
const PRE: u64 = 1;
const IN: u64 = 2;
const OUT: u64 = 3;

impl<'a> Sleeper<'a> {
    /// Sleeps on `bell`, known to the daemon as `id` (see [`bell_id`]),
    /// recording progress in `record`.
    pub fn new(bell: &'a Doorbell, record: &'a crate::sync::AtomicU64, id: u64) -> Self {
        Sleeper { bell, record, id: id << 2 }
    }

    /// [`Doorbell::announce`], recorded.
    pub fn announce(&self) -> u32 {
        self.record.store(self.id | PRE, Ordering::Relaxed);
        let seen = self.bell.announce();
        self.record.store(self.id | IN, Ordering::Relaxed);
        seen
    }

    /// [`Doorbell::retire`], recorded.
    pub fn retire(&self) {
        self.record.store(self.id | OUT, Ordering::Relaxed);
        self.bell.retire();
        self.record.store(0, Ordering::Relaxed);
    }

    /// The doorbell slept on.
    pub fn bell(&self) -> &'a Doorbell {
        self.bell
    }

    /// [`Doorbell::sleep`], recorded.
    pub fn sleep(&self, seen: u32, timeout: Option<Duration>) -> bool {
        let timed_out = self.bell.wait(seen, timeout);
        crate::crash_point!(DoorbellBeforeRetire);
        self.retire();
        timed_out
    }
}

/// The id of a ring's doorbell in a [`Sleeper`] record: the ring as in
/// intents (`RING_FREE`, or `ring_of_queue(q)`), and whether it is the
/// `space` bell (else `items`).
pub fn bell_id(ring: u32, space: bool) -> u64 {
    (ring as u64) << 1 | space as u64
}

/// Daemon, after the client died: the bell a record says the client is
/// counted on, as (ring, space), if any. `None` for 0 and the "maybe"
/// states (see [`Sleeper`]).
pub fn counted_on(record: u64) -> Option<(u32, bool)> {
    if record & 3 != IN {
        return None;
    }
    let id = record >> 2;
    Some(((id >> 1) as u32, id & 1 == 1))
}
