//! bus-core: everything of shmbus that touches shared memory.
//!
//! A daemon creates one [`segment::Segment`] (a sealed memfd) laid out as
//! [`layout`] describes: a pool of fixed-size message slots, lock-free
//! [`queue`]s of slot indices (one per subsystem, plus the free list), a
//! [`routing`] table and a client table. Clients map the same segment, move
//! slot indices between the rings through a [`slot_pool::Port`], and sleep on
//! [`doorbell`]s (shared futexes) only when there is nothing to do. When a
//! client dies, the daemon calls [`reclaim::reclaim_client`].
//!
//! Every `unsafe` block of shmbus lives in this crate.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod crash;
pub mod doorbell;
#[cfg(not(loom))]
pub mod futex;
pub mod line;
pub mod ownership;
pub mod queue;
mod sync;

#[cfg(not(loom))]
pub mod fingerprint;
#[cfg(not(loom))]
pub mod free_order;
#[cfg(not(loom))]
pub mod layout;
#[cfg(not(loom))]
pub mod path;
#[cfg(not(loom))]
pub mod reclaim;
#[cfg(not(loom))]
pub mod routing;
#[cfg(not(loom))]
pub mod segment;
#[cfg(not(loom))]
pub mod slot_pool;
#[cfg(not(loom))]
pub mod stats;

#[cfg(not(loom))]
pub use layout::{Shape, LAYOUT_VERSION, PATH_CAPACITY};
#[cfg(not(loom))]
pub use path::{Path, PathError};
#[cfg(not(loom))]
pub use segment::{Segment, SegmentError, SlotIndex};
