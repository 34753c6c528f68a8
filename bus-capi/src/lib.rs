//! The C API of shmbus: `libshmbus.so` and `libshmbus.a`, declared in
//! `include/shmbus.h` (generated from this crate by cbindgen; see
//! `tests/header.rs`). Install and usage: `bus-capi/README.md`.
//!
//! Conventions, the same for every function:
//! - a function that returns a pointer returns NULL on error;
//! - a function that returns `int` returns 0 (or a non-negative answer)
//!   on success and a negative `SHMBUS_E*` code on failure;
//! - `shmbus_last_error()` then says why, in the calling thread;
//! - every handle may be freed with NULL;
//! - no Rust panic crosses into C: each entry point catches it and
//!   returns `SHMBUS_EPANIC` (or NULL).
//!
//! Each handle wraps the `bus-client` object it names, and the rules that
//! Rust's borrow checker enforces there are kept here at run time:
//! - a message keeps its subscriber (or, for a reply, its requester)
//!   alive through a counted reference and drops its slot guard first
//!   ([`message`]), so that any order of frees is safe;
//! - a loan borrows its publisher mutably: the publisher refuses other
//!   calls with `SHMBUS_EBUSY` while it is out, and a publisher freed
//!   meanwhile is freed by the loan ([`publish`]).
//!
//! Bodies from C are raw bytes (`Publisher::send_bytes`,
//! `LoanUninit::body_mut`/`commit`, `Requester::request_bytes`): a Rust
//! receiver reads them with `Message::body_bytes`. rkyv bodies stay a Rust
//! matter (a C receiver gets their archived bytes).

#![deny(unsafe_op_in_unsafe_fn)]
// The handle types carry their C names (`shmbus_bus`, …), which cbindgen
// copies into the header as they are.
#![allow(non_camel_case_types)]

// One group each, in the order cbindgen writes them into the header (which
// rustfmt would otherwise sort).
pub mod error;

pub mod bus;

pub mod publish;

pub mod subscribe;

pub mod request;

pub mod message;

pub use bus::shmbus_bus;
pub use message::shmbus_message;
pub use publish::{shmbus_loan, shmbus_publisher};
pub use subscribe::shmbus_subscriber;
