//! `shmbus_request`: a raw-byte request to a service (a Rust `Router`
//! served with `Bus::serve`, or any handler), its reply read in place.
//!
//! Every request of a bus handle goes through one `Requester` kept in the
//! handle (made by the first; it matches replies by correlation id, so
//! threads may request at once). The reply is not copied: the message
//! handle keeps the `Response`, and the requester it borrows, alive.

use crate::bus::shmbus_bus;
use crate::error::{bytes_arg, call_int, handle, put, str_arg, timeout_arg, Error};
use crate::message::{shmbus_message, Held};
use bus_client::{Requester, Response};
use std::ffi::{c_char, c_int, c_void};
use std::sync::Arc;
use std::time::Duration;

/// How long "as long as it takes" (-1) is: a century, which a deadline on
/// the monotonic clock holds without overflow.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Sends `len` bytes at `body` to `path` as a request, and waits up to
/// `timeout_ms` (-1: as long as it takes) for the handler's reply. The
/// body may be NULL when `len` is 0. With 0 the request is still sent
/// (and handled), but its reply is not waited for: `SHMBUS_ETIMEDOUT`.
///
/// On success returns 0 and sets `*reply` to the reply, read in place
/// (`shmbus_message_body`; its path is the request's `path`) until
/// `shmbus_message_free`. On error sets `*reply` to NULL and returns
/// `SHMBUS_ETIMEDOUT` (sent, but no reply in time: the handler is slow
/// or gone), `SHMBUS_EAGAIN` (not sent: no free slot or no room in the
/// service's queue within the timeout; safe to retry),
/// `SHMBUS_ENOROUTE` (the service has no route for the path),
/// `SHMBUS_EHANDLER` (the handler failed or panicked: its message is in
/// `shmbus_last_error`), `SHMBUS_ENOSUB` (nobody serves the subsystem),
/// `SHMBUS_EUNREACHABLE`, `SHMBUS_EGONE`, or a code as `shmbus_send`.
///
/// Thread-safe: several threads may make requests on one bus at once.
/// The first request of a bus sets up its reply queue (a round trip to the
/// daemon).
///
/// # Safety
/// `bus` is NULL or a live bus handle; `path` NULL or a NUL-terminated
/// string; `body` NULL or `len` readable bytes; `reply` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn shmbus_request(
    bus: *mut shmbus_bus,
    path: *const c_char,
    body: *const c_void,
    len: usize,
    timeout_ms: i64,
    reply: *mut *mut shmbus_message,
) -> c_int {
    // SAFETY: NULL or writable by the caller's contract.
    unsafe { put(reply, std::ptr::null_mut()) };
    call_int(|| {
        if reply.is_null() {
            return Err(Error::invalid("reply (the out-pointer for the reply) is NULL"));
        }
        // SAFETY: the caller's contract for each.
        let (bus, path, body) = unsafe { (handle(bus, "bus")?, str_arg(path, "path")?, bytes_arg(body, len)?) };
        let timeout = timeout_arg(timeout_ms)?.unwrap_or(FOREVER);
        let requester = Arc::clone(bus.requester()?);
        // SAFETY: the message handle keeps this `Arc` clone, so the
        // requester stays alive, at this address, as long as the response:
        // 'static stands for that.
        let r: &'static Requester = unsafe { &*Arc::as_ptr(&requester) };
        let response: Response<'static> = r.request_bytes(path, body, timeout)?;
        // SAFETY: `response` answers a request made through `requester`.
        let held = unsafe { Held::reply(response, requester) };
        let made = shmbus_message::new(held, Some(path))?;
        // SAFETY: not NULL (checked), writable by the caller's contract.
        unsafe { put(reply, Box::into_raw(made)) };
        Ok(())
    })
}
