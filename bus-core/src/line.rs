//! `Line<T>`: our own fixed-alignment wrapper that puts `T` alone on a
//! 128-byte region (two 64-byte cache lines, which also defeats the adjacent
//! line prefetcher). Fixed, unlike crossbeam's `CachePadded`, whose size
//! varies by architecture: the layout table must be the same everywhere.

use core::ops::Deref;

/// `T` padded and aligned to 128 bytes. Used for every field that one party
/// writes often and another reads (ring head, ring tail, doorbells).
#[repr(C, align(128))]
#[derive(Debug, Default)]
pub struct Line<T>(pub T);

impl<T> Deref for Line<T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Alignment and size of one [`Line`].
pub const LINE: usize = 128;

#[cfg(not(loom))]
const _: () = assert!(core::mem::size_of::<Line<u64>>() == LINE);
#[cfg(not(loom))]
const _: () = assert!(core::mem::align_of::<Line<u64>>() == LINE);
