//! Body type fingerprints: a 64-bit value stored in the slot header that the
//! receiver compares before it reads a body as `T`.
//!
//! The fingerprint hashes the type's name, the size and alignment of its
//! archived form, and the layout version. Two programs built from the same
//! type definition agree; a different type, or a changed one that moves its
//! archived size, does not. It is a guard against mistakes, not a proof of
//! schema equality: a field renamed at the same size is not detected.

use crate::layout::LAYOUT_VERSION;
use crate::path::fnv1a;

/// Fingerprint of raw byte bodies.
pub const RAW: u64 = 0;

/// The fingerprint of `T` whose archived form is `A`.
pub fn of<T: ?Sized, A>() -> u64 {
    let name = std::any::type_name::<T>();
    let mut h = fnv1a(name.as_bytes());
    for x in [core::mem::size_of::<A>() as u64, core::mem::align_of::<A>() as u64, LAYOUT_VERSION as u64] {
        h = (h ^ x).wrapping_mul(0x0000_0100_0000_01b3);
    }
    if h == RAW {
        1
    } else {
        h
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn different_types_have_different_fingerprints() {
        let a = super::of::<u32, u32>();
        let b = super::of::<i32, i32>();
        assert_ne!(a, b);
        assert_eq!(a, super::of::<u32, u32>());
        assert_ne!(a, super::RAW);
    }
}
