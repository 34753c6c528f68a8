//! How a tokio task sleeps on a doorbell: an io_uring `FUTEX_WAIT` on the
//! doorbell's own futex word, with the ring's descriptor registered in the
//! runtime's reactor (`AsyncFd`).
//!
//! The publisher's side does not change at all: it rings exactly as it does
//! for a blocked thread (`futex_wake` on the word, and only when a sleeper
//! announced itself), so a publisher still makes no system call while the
//! receiver is awake. The kernel completes the io_uring wait instead of
//! waking a thread; the completion makes the ring's descriptor readable,
//! and the runtime's `epoll` wakes the task. One wake-up, as for a blocked
//! thread, and no thread or timer of our own (`docs/design.md`, "Waiting
//! without a thread").
//!
//! The same ring also polls the link's "gone" eventfd, so a task parked on
//! an idle queue learns at once that the daemon went away, without waking
//! on a timer to look.
//!
//! Every wait follows the doorbell's protocol (`bus_core::doorbell`):
//! announce, re-check, wait on the value announce returned, then
//! `woken` and retire. A wait whose task stops caring (its future dropped)
//! is cancelled; if the kernel had already woken it, the wake-up is passed
//! on to another sleeper of the bell, so that it is never lost.

use crate::error::RecvError;
use bus_core::doorbell::Sleeper;
use io_uring::{opcode, types, IoUring};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::AtomicU32;
use std::task::{Context, Poll};
use tokio::io::unix::AsyncFd;

/// `user_data` of the poll on the link's "gone" eventfd.
const GONE: u64 = 1;
/// `user_data` of a cancellation request.
const CANCEL: u64 = 2;
/// `user_data` of futex waits: from here up, one per wait.
const FIRST_WAIT: u64 = 16;

/// futex2 flag: a 32-bit futex. Not `FUTEX2_PRIVATE`: the word is shared
/// with other processes (as `bus_core::futex` says for the blocking wait).
const FUTEX2_SIZE_U32: u32 = 0x02;
/// Wake on any `FUTEX_WAKE` (the ringers use the plain wake).
const FUTEX_BITSET_MATCH_ANY: u64 = 0xffff_ffff;

/// The ring's descriptor, as `AsyncFd` wants it (the ring owns it).
struct RingFd(RawFd);

impl AsRawFd for RingFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// A fresh ring, if this kernel has io_uring, allows it, and has its futex
/// wait.
fn ring() -> Result<IoUring, RecvError> {
    let ring = IoUring::new(8).map_err(|e| RecvError::AsyncWait { errno: errno(&e) })?;
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe).map_err(|e| RecvError::AsyncWait { errno: errno(&e) })?;
    if !probe.is_supported(opcode::FutexWait::CODE) {
        return Err(RecvError::AsyncWait { errno: libc::ENOSYS });
    }
    Ok(ring)
}

/// Whether the asynchronous API can wait on this machine (Linux 6.7 or
/// later, io_uring allowed): `Ok`, or the error its first wait would
/// return. Needs no runtime; sets up and closes an io_uring instance.
pub fn async_supported() -> Result<(), RecvError> {
    ring().map(drop)
}

/// What reaping the completion queue found.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Reaped {
    /// The wait in flight completed (woken, or the word had moved, or it
    /// was cancelled): the sleeper must call `woken` and retire.
    pub(crate) wait_done: bool,
    /// The wait completed because a ringer woke it (result 0).
    pub(crate) woken: bool,
    /// The "gone" eventfd became readable (it stays so: the poll is not
    /// re-armed, and the waiter's owner then finds the bus gone).
    pub(crate) gone: bool,
}

/// One io_uring instance, waiting on at most one doorbell at a time.
pub(crate) struct FutexWaiter {
    // Field order: the reactor registration goes before the ring closes.
    ready: AsyncFd<RingFd>,
    ring: IoUring,
    /// `user_data` of the wait in flight, if any (its completion not reaped).
    in_flight: Option<u64>,
    next: u64,
    /// The runtime whose reactor watches the ring (a task polled on another
    /// runtime needs a waiter of its own: see [`FutexWaiter::usable_here`]).
    runtime: tokio::runtime::Id,
    /// The gone eventfd, to poll again should that poll end otherwise.
    gone: RawFd,
}

impl std::fmt::Debug for FutexWaiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FutexWaiter").field("in_flight", &self.in_flight).finish_non_exhaustive()
    }
}

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

impl FutexWaiter {
    /// A ring registered with the current tokio runtime, already polling
    /// `gone`. Fails outside a runtime, or where io_uring or its futex wait
    /// is not available.
    pub(crate) fn new(gone: BorrowedFd<'_>) -> Result<FutexWaiter, RecvError> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(RecvError::NoRuntime);
        };
        let ring = ring()?;
        // A runtime built without IO makes tokio panic here: that is a
        // runtime without IO, as `NoRuntime` says.
        let registered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: the descriptor is the ring's, which stays open for as
            // long as the `AsyncFd` lives: both are fields of the waiter, and
            // `ready` is declared (so dropped) first.
            unsafe { AsyncFd::register_with_interest(RingFd(ring.as_raw_fd()), tokio::io::Interest::READABLE) }
        }));
        let ready = match registered {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(RecvError::AsyncWait { errno: errno(&e.into_parts().1) }),
            Err(_) => return Err(RecvError::NoRuntime),
        };
        let mut w = FutexWaiter {
            ready,
            ring,
            in_flight: None,
            next: FIRST_WAIT,
            runtime: runtime.id(),
            gone: gone.as_raw_fd(),
        };
        w.poll_gone()?;
        Ok(w)
    }

    /// Whether this waiter may be polled by the current task: it must be on
    /// the runtime whose reactor watches the ring (another runtime's may
    /// not be driven at all any more).
    pub(crate) fn usable_here(&self) -> bool {
        tokio::runtime::Handle::try_current().is_ok_and(|h| h.id() == self.runtime)
    }

    fn poll_gone(&mut self) -> Result<(), RecvError> {
        let poll = opcode::PollAdd::new(types::Fd(self.gone), libc::POLLIN as u32).build().user_data(GONE);
        self.push(&poll)
    }

    /// Whether a wait is in flight.
    pub(crate) fn armed(&self) -> bool {
        self.in_flight.is_some()
    }

    fn push(&mut self, entry: &io_uring::squeue::Entry) -> Result<(), RecvError> {
        // SAFETY: every entry we push refers to memory that outlives the
        // operation: the futex word lives in the segment, which the owner
        // of this waiter keeps mapped (it holds the `Bus`) until the wait
        // completed or was cancelled (`disarm`, and `Drop` below); the
        // gone eventfd belongs to the same `Bus`. The queue has 8 entries
        // and at most 3 operations are ever outstanding (gone poll, one
        // wait, one cancel), so a full queue means a bug: reported.
        unsafe { self.ring.submission().push(entry) }.map_err(|_| RecvError::AsyncWait { errno: libc::EBUSY })?;
        self.ring.submit().map_err(|e| RecvError::AsyncWait { errno: errno(&e) })?;
        Ok(())
    }

    /// Starts waiting on `word` while it reads `seen` (the value the
    /// doorbell's `announce` returned).
    pub(crate) fn arm(&mut self, word: &AtomicU32, seen: u32) -> Result<(), RecvError> {
        debug_assert!(self.in_flight.is_none());
        let ud = self.next;
        self.next += 1;
        let wait = opcode::FutexWait::new(word.as_ptr(), seen as u64, FUTEX_BITSET_MATCH_ANY, FUTEX2_SIZE_U32)
            .build()
            .user_data(ud);
        self.push(&wait)?;
        self.in_flight = Some(ud);
        Ok(())
    }

    /// Ready once completions may be there (then [`FutexWaiter::reap`]);
    /// registers the task's waker otherwise.
    pub(crate) fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<Result<(), RecvError>> {
        match self.ready.poll_read_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(RecvError::AsyncWait { errno: errno(&e) })),
            Poll::Ready(Ok(mut guard)) => {
                // Cleared before reaping: a completion posted after the
                // guard was taken keeps the descriptor ready (tokio's tick
                // check), so none is missed.
                guard.clear_ready();
                Poll::Ready(Ok(()))
            }
        }
    }

    /// Takes every completion there is.
    pub(crate) fn reap(&mut self) -> Result<Reaped, RecvError> {
        let mut r = Reaped::default();
        let mut failed = None;
        let mut rearm_gone = false;
        for cqe in self.ring.completion() {
            match cqe.user_data() {
                // Readable: the bus is gone. Ended otherwise (cancelled
                // with the thread that submitted it): polled again below.
                GONE if cqe.result() >= 0 => r.gone = true,
                GONE => rearm_gone = true,
                CANCEL => {}
                ud if Some(ud) == self.in_flight => {
                    r.wait_done = true;
                    match -cqe.result() {
                        0 => r.woken = true,
                        // The word had moved (EAGAIN), the wait was
                        // cancelled (the submitting thread exited), or a
                        // signal: all mean "look again".
                        libc::EAGAIN | libc::ECANCELED | libc::EINTR | libc::ETIME => {}
                        e => failed = Some(e),
                    }
                }
                _ => {} // a cancelled earlier wait's late completion
            }
        }
        if r.wait_done {
            self.in_flight = None;
        }
        if rearm_gone {
            self.poll_gone()?;
        }
        match failed {
            Some(e) => Err(RecvError::AsyncWait { errno: e }),
            None => Ok(r),
        }
    }

    /// Withdraws a wait whose task no longer wants it: cancels it, waits
    /// for its completion (the kernel posts it at once), and takes the
    /// sleeper's announcement back. A wake-up that had already reached the
    /// wait is passed on to another sleeper of the bell (if any), which it
    /// may have been meant for.
    pub(crate) fn disarm(&mut self, sleeper: &Sleeper<'_>) {
        let Some(ud) = self.in_flight else { return };
        let mut woken = false;
        let cancel = opcode::AsyncCancel::new(ud).build().user_data(CANCEL);
        if self.push(&cancel).is_ok() {
            // Bounded: the cancel completes inline, and with it the wait
            // (or the wait had completed already). A completion that the
            // kernel queues for the submitting thread arrives as soon as
            // that thread runs its task work; `submit_and_wait` returns
            // when at least one is there, and we loop until ours is.
            for _ in 0..1000 {
                match self.reap() {
                    Ok(r) => woken |= r.woken,
                    Err(_) => self.in_flight = None,
                }
                if self.in_flight.is_none() {
                    break;
                }
                let _ = self.ring.submit_and_wait(1);
            }
        }
        // If the cancel could not even be queued, or the wait still has
        // not completed, forget it: the wait may then take one wake-up
        // meant for another sleeper of the bell. The owner drops a waiter
        // whose operations failed (closing the ring ends the wait).
        self.in_flight = None;
        sleeper.bell().woken();
        sleeper.retire();
        if woken && sleeper.bell().has_waiters() {
            sleeper.bell().ring_one();
        }
    }
}

impl Drop for FutexWaiter {
    fn drop(&mut self) {
        if self.in_flight.is_some() {
            // The owner disarms before dropping; this is the backstop that
            // keeps the kernel from holding a wait on a word whose mapping
            // may go next (closing the ring cancels it anyway).
            let cancel = opcode::AsyncCancel::new(self.in_flight.unwrap_or(0)).build().user_data(CANCEL);
            // SAFETY: as in `push`; the cancel refers to no memory.
            if unsafe { self.ring.submission().push(&cancel) }.is_ok() {
                let _ = self.ring.submit_and_wait(1);
            }
        }
    }
}

/// The wait of one subscription's task(s): a [`FutexWaiter`], made on first
/// need, and what its owner does with it, as the doorbell protocol wants,
/// on the bell of `sub`'s group (recorded in `sub`'s port).
#[derive(Debug, Default)]
pub(crate) struct Park(Option<FutexWaiter>);

impl Park {
    /// Whether a wait is in flight.
    pub(crate) fn armed(&self) -> bool {
        self.0.as_ref().is_some_and(FutexWaiter::armed)
    }

    /// The waiter, made on first need (registered with the current
    /// runtime). One made on another runtime is replaced: this runtime
    /// does not watch it.
    pub(crate) fn waiter(&mut self, sub: &crate::Subscriber) -> Result<&mut FutexWaiter, RecvError> {
        self.refresh(sub);
        if self.0.is_none() {
            self.0 = Some(FutexWaiter::new(sub.bus().inner.link.gone_event())?);
        }
        Ok(self.0.as_mut().expect("made above"))
    }

    /// Closes a waiter made on another runtime than the current one (even
    /// with a wait in flight: this runtime would never see it end).
    pub(crate) fn refresh(&mut self, sub: &crate::Subscriber) {
        if self.0.as_ref().is_some_and(|w| !w.usable_here()) {
            self.close(sub);
        }
    }

    /// Announces, re-checks with `recheck` (whose `Some` ends it: the
    /// announcement is taken back) and starts the wait.
    pub(crate) fn arm<T>(
        &mut self,
        sub: &crate::Subscriber,
        recheck: impl FnOnce() -> Option<T>,
    ) -> Result<Option<T>, RecvError> {
        self.waiter(sub)?;
        let sleeper = sub.sleeper();
        let seen = sleeper.announce();
        bus_core::crash_point!(DoorbellAnnounced);
        // The re-check of the doorbell protocol (a SeqCst load after the
        // SeqCst announce).
        if let Some(v) = recheck() {
            sleeper.retire();
            return Ok(Some(v));
        }
        let armed = self.0.as_mut().expect("made above").arm(sleeper.bell().futex_word(), seen);
        if let Err(e) = armed {
            sleeper.retire();
            self.close(sub);
            return Err(e);
        }
        Ok(None)
    }

    /// Ready once the wait may have ended (see [`FutexWaiter::poll_ready`]).
    pub(crate) fn poll_ready(&mut self, sub: &crate::Subscriber, cx: &mut Context<'_>) -> Poll<Result<(), RecvError>> {
        let Some(w) = self.0.as_ref() else { return Poll::Ready(Ok(())) };
        let r = w.poll_ready(cx);
        if let Poll::Ready(Err(_)) = r {
            self.close(sub);
        }
        r
    }

    /// Takes the completions there are; if the wait is among them, ends it
    /// as a blocking sleep ends (`woken`, retire). A waiter that failed is
    /// closed (closing its ring ends whatever it still had queued).
    pub(crate) fn reap(&mut self, sub: &crate::Subscriber) -> Result<(), RecvError> {
        // In a forked child the ring's memory is the parent's: reaping
        // there would take the parent's completions.
        if sub.bus().inner.forked() {
            std::mem::forget(self.0.take());
            return Err(RecvError::Forked);
        }
        let Some(waiter) = self.0.as_mut().filter(|w| w.armed()) else { return Ok(()) };
        let reaped = waiter.reap();
        // Over only if its completion was taken (an error may come from
        // something else with the wait still in flight: then `close`
        // below withdraws it, and retires once).
        if !waiter.armed() {
            let sleeper = sub.sleeper();
            sleeper.bell().woken();
            sleeper.retire();
        }
        if reaped.is_err() {
            self.close(sub);
        }
        reaped.map(|_| ())
    }

    /// Withdraws a wait in flight (see [`FutexWaiter::disarm`]). In a
    /// forked child the ring and the announcement are the parent's: left
    /// alone.
    pub(crate) fn disarm(&mut self, sub: &crate::Subscriber) {
        if sub.bus().inner.forked() {
            std::mem::forget(self.0.take());
            return;
        }
        if let Some(w) = self.0.as_mut().filter(|w| w.armed()) {
            w.disarm(&sub.sleeper());
        }
    }

    /// Withdraws the wait and closes the ring.
    pub(crate) fn close(&mut self, sub: &crate::Subscriber) {
        self.disarm(sub);
        self.0 = None;
    }
}
