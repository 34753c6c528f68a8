//! Shared (inter-process) futex wait and wake on an `AtomicU32` that lives in
//! the segment.
//!
//! The platform seam: each OS file provides exactly
//! - `wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> Wait`
//!   which sleeps while `*word == expected` (checked atomically by the kernel),
//!   for at most `timeout`, and may return spuriously;
//! - `wake(word: &AtomicU32, count: u32) -> u32` which wakes up to `count`
//!   sleepers and returns how many it woke.
//!
//! Never `FUTEX_PRIVATE_FLAG`: the sleepers and the wakers are different
//! processes that map the same memfd, and only a shared futex is keyed by the
//! underlying page rather than by the address space.

#[cfg(target_os = "linux")]
#[path = "futex/linux.rs"]
mod imp;

pub use imp::{wait, wake};

/// Why a [`wait`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Woken, or the word no longer held the expected value, or a spurious
    /// wake-up: the caller re-checks its condition.
    Woken,
    /// The timeout elapsed.
    TimedOut,
}
