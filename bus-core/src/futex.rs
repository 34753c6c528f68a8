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

/// A few `AtomicU32` futex words in a small memfd that another process can
/// map: the floor against which shmbus's own wake-up latency is measured
/// (a bare shared-futex hand-off between two processes).
pub struct SharedWords {
    map: memmap2::MmapRaw,
    fd: std::os::fd::OwnedFd,
    len: usize,
}

impl SharedWords {
    /// A fresh memfd holding `len` zeroed words.
    pub fn create(len: usize) -> std::io::Result<SharedWords> {
        let fd = nix::sys::memfd::memfd_create(c"shmbus-futex-words", nix::sys::memfd::MFdFlags::empty())?;
        nix::unistd::ftruncate(&fd, (len.max(1) * 4) as i64)?;
        Self::open(fd, len)
    }

    /// Maps words created by another process.
    pub fn open(fd: std::os::fd::OwnedFd, len: usize) -> std::io::Result<SharedWords> {
        let size = nix::sys::stat::fstat(&fd)?.st_size as usize;
        if size < len * 4 {
            return Err(std::io::Error::other(format!("memfd holds {size} bytes, {len} words need {}", len * 4)));
        }
        let file = std::fs::File::from(fd.try_clone()?);
        let map = memmap2::MmapOptions::new().len(len.max(1) * 4).map_raw(&file)?;
        Ok(SharedWords { map, fd, len })
    }

    /// Word `i` (panics if out of range).
    pub fn word(&self, i: usize) -> &AtomicU32 {
        assert!(i < self.len);
        // SAFETY: in bounds (asserted), 4-aligned (page-aligned mapping),
        // valid for any bits, lives as long as `self`.
        unsafe { &*(self.map.as_mut_ptr().add(i * 4) as *const AtomicU32) }
    }

    /// The memfd, to pass to the other process.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }
}

use std::sync::atomic::AtomicU32;
