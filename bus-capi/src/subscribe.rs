//! `shmbus_subscriber`: a subscription to a subsystem (its default group,
//! or a named consumer group), and `shmbus_recv`.
//!
//! The `Subscriber` lives in an `Rc` shared by the handle and every
//! message received through it, so that freeing the subscriber before its
//! messages is safe: the subscription ends when the last of them is freed.
//! `Rc`, not `Arc`: a subscriber and its messages are used by one thread at
//! a time (a message's release writes the subscriber's port record, which
//! belongs to that one thread), so the count is never touched by two
//! threads at once.

use crate::bus::shmbus_bus;
use crate::error::{call_int, call_or, call_ptr, handle, put, str_arg, timeout_arg, Error};
use crate::message::{shmbus_message, Held};
use bus_client::{Message, RecvError, Subscriber};
use std::ffi::{c_char, c_int};
use std::rc::Rc;
use std::time::Duration;

/// A subscription (`shmbus_subscribe`, `shmbus_subscribe_group`).
///
/// One thread at a time, together with the messages received from it (it
/// may move between threads with them). Several subscribers, in threads
/// or processes, of one group share its messages, each going to one.
pub struct shmbus_subscriber {
    sub: Rc<Subscriber>,
}

/// Subscribes to `subsystem`'s default group: from now on, each message
/// sent to `subsystem://…` goes to one of the default group's subscribers.
/// Messages already queued for the group (sent while it had no
/// subscriber, or put back after a subscriber died holding them) come
/// first. NULL on error (`SHMBUS_EINVAL` for an invalid name,
/// `SHMBUS_EPERM`, `SHMBUS_EQUOTA`, `SHMBUS_EGONE`, …). Free it with
/// `shmbus_subscriber_free`.
///
/// # Safety
/// `bus` is NULL or a live bus handle; `subsystem` NULL or a
/// NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn shmbus_subscribe(bus: *mut shmbus_bus, subsystem: *const c_char) -> *mut shmbus_subscriber {
    call_ptr(|| {
        // SAFETY: the caller's contract for both.
        let (bus, subsystem) = unsafe { (handle(bus, "bus")?, str_arg(subsystem, "subsystem")?) };
        Ok(Box::new(shmbus_subscriber { sub: Rc::new(bus.bus.subscribe(subsystem)?) }))
    })
}

/// Subscribes to `subsystem` as a member of consumer group `group`
/// (created on first use). Each group gets every message sent to the
/// subsystem after the group came to exist; within a group each message
/// goes to one subscriber. `group` "default" is the group of
/// `shmbus_subscribe`. NULL on error, as `shmbus_subscribe`.
///
/// # Safety
/// `bus` is NULL or a live bus handle; `subsystem` and `group` NULL or
/// NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn shmbus_subscribe_group(
    bus: *mut shmbus_bus,
    subsystem: *const c_char,
    group: *const c_char,
) -> *mut shmbus_subscriber {
    call_ptr(|| {
        // SAFETY: the caller's contract for all three.
        let (bus, subsystem, group) =
            unsafe { (handle(bus, "bus")?, str_arg(subsystem, "subsystem")?, str_arg(group, "group")?) };
        Ok(Box::new(shmbus_subscriber { sub: Rc::new(bus.bus.subscribe_group(subsystem, group)?) }))
    })
}

/// Frees a subscriber handle. Messages received from it stay valid; the
/// subscription ends when the handle and all of them are freed (messages
/// still queued for the group stay there for its other subscribers, or
/// the next one). NULL is allowed.
///
/// # Safety
/// `sub` is NULL or a live subscriber handle, not freed before.
#[no_mangle]
pub unsafe extern "C" fn shmbus_subscriber_free(sub: *mut shmbus_subscriber) {
    if sub.is_null() {
        return;
    }
    call_or((), || {
        // SAFETY: from `Box::into_raw` here, ours by the caller's contract.
        drop(unsafe { Box::from_raw(sub) });
        Ok(())
    })
}

/// Waits up to `timeout_ms` for the next message: 0 takes one only if one
/// is queued (no system call), -1 waits as long as it takes.
///
/// On success returns 0 and sets `*msg` to the message, which holds its
/// slot until `shmbus_message_free`. On error sets `*msg` to NULL and
/// returns `SHMBUS_ETIMEDOUT` (nothing came in time), `SHMBUS_EGONE`,
/// `SHMBUS_EQUOTA` (this client holds its quota of slots: free some
/// messages), `SHMBUS_ECORRUPT` (a corrupt message was skipped; receive
/// again), `SHMBUS_EINVAL`, `SHMBUS_EFORKED`.
///
/// # Safety
/// `sub` is NULL or a live subscriber handle, not used by another thread
/// meanwhile; `msg` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn shmbus_recv(
    sub: *mut shmbus_subscriber,
    timeout_ms: i64,
    msg: *mut *mut shmbus_message,
) -> c_int {
    // SAFETY: NULL or writable by the caller's contract.
    unsafe { put(msg, std::ptr::null_mut()) };
    call_int(|| {
        if msg.is_null() {
            return Err(Error::invalid("msg (the out-pointer for the message) is NULL"));
        }
        // SAFETY: NULL or live, by the caller's contract.
        let h = unsafe { handle(sub, "subscriber") }?;
        let timeout = timeout_arg(timeout_ms)?;
        // SAFETY: the `Rc` clone each message takes keeps the subscriber
        // alive, at this address, as long as the message: 'static stands
        // for that.
        let subscriber: &'static Subscriber = unsafe { &*Rc::as_ptr(&h.sub) };
        let m: Message<'static> = match timeout {
            None => subscriber.recv()?,
            Some(Duration::ZERO) => subscriber.try_recv()?.ok_or(RecvError::Timeout(Duration::ZERO))?,
            Some(t) => subscriber.recv_timeout(t)?,
        };
        // SAFETY: `m` was received from the subscriber in `h.sub`.
        let held = unsafe { Held::received(m, Rc::clone(&h.sub)) };
        let made = shmbus_message::new(held, None)?;
        // SAFETY: not NULL (checked), writable by the caller's contract.
        unsafe { put(msg, Box::into_raw(made)) };
        Ok(())
    })
}
