//! The std-or-loom switch: every atomic that the lock-free code in this crate
//! touches comes from here, so that `RUSTFLAGS="--cfg loom"` runs the same
//! algorithms under the loom model checker (on heap copies of the same
//! `#[repr(C)]` structs; loom atomics cannot live in a shared mapping).

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Busy-wait hint for spin loops (a loom yield under the model checker, so
/// that spinning threads let the others make progress).
#[inline]
pub(crate) fn spin_hint() {
    #[cfg(not(loom))]
    std::hint::spin_loop();
    #[cfg(loom)]
    loom::thread::yield_now();
}

/// Under loom: a `SeqCst` fence. Elsewhere: nothing.
///
/// loom models `SeqCst` *accesses* as `AcqRel` (a documented limitation), so
/// it cannot see the single total order that the doorbell protocol relies on
/// between a `SeqCst` RMW and a later `SeqCst` load. The model therefore adds
/// the fence at the two places where the C++ model already gives that order
/// through the accesses themselves; on real hardware the fence would be an
/// extra `mfence` per push for nothing.
#[inline]
pub(crate) fn seqcst_order_for_loom() {
    #[cfg(loom)]
    loom::sync::atomic::fence(Ordering::SeqCst);
}
