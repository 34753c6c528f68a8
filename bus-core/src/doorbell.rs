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
//!      word += 1; futex_wake(word)       re-check ring          (SeqCst load)
//!                                        if still empty: futex_wait(word, w)
//!                                        waiters -= 1
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
            kernel: (loom::sync::Mutex::new(()), loom::sync::Condvar::new()),
        }
    }

    /// A fresh doorbell for heap copies in tests (in the segment, zeroed
    /// memory is a valid doorbell).
    #[cfg(not(loom))]
    pub const fn zeroed() -> Self {
        Doorbell { waiters: AtomicU32::new(0), word: AtomicU32::new(0) }
    }

    /// Rings after an item was made available. Must be called after the
    /// `SeqCst` operation that published the item (SYNC: doorbell).
    #[inline]
    pub fn ring(&self) {
        crate::sync::seqcst_order_for_loom();
        // SYNC: doorbell — pairs with the SeqCst increment in `announce`.
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.wake(1);
        }
    }

    /// Wakes every sleeper (shutdown, reclaim): they re-check and find out.
    pub fn ring_all(&self) {
        self.wake(u32::MAX);
    }

    fn wake(&self, count: u32) {
        // Relaxed is enough for the bump: the kernel's futex check and the
        // wake syscall order it for the sleeper (SYNC: doorbell).
        self.word.fetch_add(1, Ordering::Relaxed);
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
        self.word.load(Ordering::SeqCst)
    }

    /// Second half: sleep while the word still reads `seen`, for at most
    /// `timeout` (`None`: until woken). Returns whether the timeout elapsed.
    pub fn sleep(&self, seen: u32, timeout: Option<Duration>) -> bool {
        #[cfg(not(loom))]
        let timed_out = crate::futex::wait(&self.word, seen, timeout) == crate::futex::Wait::TimedOut;
        #[cfg(loom)]
        let timed_out = {
            let _ = timeout;
            let guard = self.kernel.0.lock().unwrap();
            if self.word.load(Ordering::SeqCst) == seen {
                drop(self.kernel.1.wait(guard).unwrap());
            }
            false
        };
        self.retire();
        timed_out
    }

    /// Withdraws an [`Doorbell::announce`] without sleeping (the re-check
    /// found what it wanted).
    #[inline]
    pub fn retire(&self) {
        // Relaxed: a stale non-zero count only costs a ringer one wake call.
        self.waiters.fetch_sub(1, Ordering::Relaxed);
    }

    /// Current number of announced sleepers (for status).
    pub fn waiters(&self) -> u32 {
        self.waiters.load(Ordering::Relaxed)
    }
}
