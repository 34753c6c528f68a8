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

/// Asks the CPU to bring the cache line holding `p` into this core's cache
/// for writing (x86-64 `prefetchw`, where the CPU has it: every x86-64 CPU
/// of the last decade; elsewhere `prefetcht0`, for reading), so that a miss
/// we know is coming overlaps with other work instead of stalling the
/// locked instruction that would otherwise take it. A hint: it never faults
/// and orders nothing, so `p` may point anywhere (a slot index read from
/// shared memory is checked before it becomes a pointer all the same). A
/// no-op on other architectures and under loom.
#[inline(always)]
pub fn prefetch_for_write<T>(p: *const T) {
    #[cfg(all(target_arch = "x86_64", not(loom)))]
    {
        if has_prefetchw() {
            // SAFETY: `prefetchw` only hints the cache (the CPU has it:
            // checked above); it reads no memory architecturally and
            // touches no register or flag.
            unsafe { core::arch::asm!("prefetchw [{0}]", in(reg) p, options(nostack, preserves_flags, readonly)) };
        } else {
            // SAFETY: `_mm_prefetch` only hints the cache; SSE is part of
            // the x86-64 baseline.
            unsafe { core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p as *const i8) };
        }
    }
    #[cfg(not(all(target_arch = "x86_64", not(loom))))]
    let _ = p;
}

/// Whether the CPU has `prefetchw` (CPUID 8000_0001h, ECX bit 8), asked once.
#[cfg(all(target_arch = "x86_64", not(loom)))]
#[inline(always)]
fn has_prefetchw() -> bool {
    use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
    // 0: not asked yet, 1: no, 2: yes. Relaxed: every thread computes the
    // same answer.
    static HAS: AtomicU8 = AtomicU8::new(0);
    match HAS.load(Relaxed) {
        0 => {
            // Leaf 8000_0001h is asked only if the highest extended leaf
            // reaches it.
            // SAFETY: CPUID exists on every x86-64 CPU. (`__cpuid` is a safe
            // function on recent toolchains, an unsafe one on older ones.)
            #[allow(unused_unsafe)]
            let yes = unsafe {
                core::arch::x86_64::__cpuid(0x8000_0000).eax >= 0x8000_0001
                    && core::arch::x86_64::__cpuid(0x8000_0001).ecx & (1 << 8) != 0
            };
            HAS.store(if yes { 2 } else { 1 }, Relaxed);
            yes
        }
        v => v == 2,
    }
}
