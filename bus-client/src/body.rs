//! What can be a message body: any type rkyv can archive into a slot and
//! validate back. Implemented for every such type; nothing to derive but
//! rkyv's own `Archive` and `Serialize`.

use rkyv::api::high::{HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::ser::writer::Buffer;
use rkyv::Portable;

/// A type that can be sent as a message body and read back in place.
pub trait Body:
    rkyv::Archive<Archived: Portable + for<'v> CheckBytes<HighValidator<'v, rancor::Error>>>
    + for<'a, 'b> rkyv::Serialize<HighSerializer<Buffer<'b>, ArenaHandle<'a>, rancor::Error>>
{
}

impl<T> Body for T where
    T: rkyv::Archive<Archived: Portable + for<'v> CheckBytes<HighValidator<'v, rancor::Error>>>
        + for<'a, 'b> rkyv::Serialize<HighSerializer<Buffer<'b>, ArenaHandle<'a>, rancor::Error>>
{
}

/// The fingerprint stored with a body of type `T`.
pub fn fingerprint<T: Body>() -> u64 {
    bus_core::fingerprint::of::<T, T::Archived>()
}
