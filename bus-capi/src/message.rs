//! `shmbus_message`: a received message or a reply, holding its slot until
//! `shmbus_message_free`.
//!
//! Rust's guards borrow what releases their slot (`Message<'a>` its
//! `Subscriber`, `Response<'r>` its `Requester`). A C handle cannot carry a
//! lifetime, so the handle owns a counted reference to that owner and the
//! guard with its lifetime erased, and drops the guard first: the owner
//! outlives it whatever order C frees things in.

use crate::error::{call_or, handle, put, Error, SHMBUS_EINVAL};
use bus_client::{Message, Requester, Response, Subscriber};
use std::ffi::{c_char, c_int, c_void, CString};
use std::mem::ManuallyDrop;
use std::rc::Rc;
use std::sync::Arc;

/// A received message (`shmbus_recv`) or a reply (`shmbus_request`). It
/// holds its slot, and so its body in place, until `shmbus_message_free`.
///
/// A message received from a subscriber is used by one thread at a time
/// together with that subscriber (freeing it touches the subscriber's
/// state): not while another thread uses the subscriber. It may outlive
/// the subscriber handle. A reply belongs to no subscriber: it may be used
/// and freed on any thread, one at a time.
pub struct shmbus_message {
    /// The guard that holds the slot, and what it borrows.
    held: Held,
    /// The body in the held slot, read once when the message arrived (so
    /// that its accessor cannot fail): valid while `held` is.
    body: *const u8,
    body_len: usize,
    /// The path as a C string: copied on first ask for a received message,
    /// the request's path for a reply.
    /// Made by the first `shmbus_message_path` (once, even if two threads
    /// ask at the same time).
    path: std::sync::OnceLock<CString>,
}

/// The guard and its owner, dropped in that order (see `Drop`).
pub(crate) enum Held {
    Received {
        /// Borrows `*_sub` ('static stands for "as long as `_sub`").
        msg: ManuallyDrop<Message<'static>>,
        /// Kept only to keep the subscriber alive.
        _sub: Rc<Subscriber>,
    },
    Reply {
        /// Borrows `*_requester` ('static stands for "as long as
        /// `_requester`").
        response: ManuallyDrop<Response<'static>>,
        /// Kept only to keep the requester alive.
        _requester: Arc<Requester>,
    },
}

impl Drop for Held {
    fn drop(&mut self) {
        // The guard first (it releases the slot through its owner); the
        // owner's count drops after this, with the fields.
        match self {
            // SAFETY: dropped once, here; never used after.
            Held::Received { msg, _sub: _ } => unsafe { ManuallyDrop::drop(msg) },
            // SAFETY: as above.
            Held::Reply { response, _requester: _ } => unsafe { ManuallyDrop::drop(response) },
        }
    }
}

impl Held {
    /// The guard of a message received through `sub`.
    ///
    /// # Safety
    /// `msg` borrows `*sub` (it was received from the subscriber inside
    /// this `Rc`), lifetime erased.
    pub(crate) unsafe fn received(msg: Message<'static>, sub: Rc<Subscriber>) -> Held {
        Held::Received { msg: ManuallyDrop::new(msg), _sub: sub }
    }

    /// The guard of a reply.
    ///
    /// # Safety
    /// `response` borrows `*requester` (it answers a request made through
    /// the requester inside this `Arc`), lifetime erased.
    pub(crate) unsafe fn reply(response: Response<'static>, requester: Arc<Requester>) -> Held {
        Held::Reply { response: ManuallyDrop::new(response), _requester: requester }
    }
}

impl shmbus_message {
    /// The handle of a held message (a reply: to a request to `path`). A
    /// corrupt body is an error (`SHMBUS_ECORRUPT`), and the message is
    /// then released.
    pub(crate) fn new(held: Held, reply_to: Option<&str>) -> Result<Box<Self>, Error> {
        let body = match &held {
            Held::Received { msg, .. } => msg.body_bytes(),
            Held::Reply { response, .. } => response.body_bytes(),
        };
        // On error `held` is dropped here, in its own order.
        let (body, body_len) = body.map(|b| (b.as_ptr(), b.len()))?;
        let path = std::sync::OnceLock::new();
        if let Some(p) = reply_to {
            let _ = path.set(c_string(p));
        }
        Ok(Box::new(shmbus_message { held, body, body_len, path }))
    }

    fn path(&self) -> &CString {
        self.path.get_or_init(|| match &self.held {
            Held::Received { msg, .. } => c_string(msg.path()),
            Held::Reply { .. } => CString::default(),
        })
    }
}

/// `s` as a C string, cut at a NUL (a path holds none unless a faulty
/// sender wrote one).
fn c_string(s: &str) -> CString {
    CString::new(s.split('\0').next().unwrap_or("")).unwrap_or_default()
}

/// The body: returns a pointer to its first byte (16-byte aligned, in the
/// shared slot: read it in place, do not write it) and sets `*len` (if
/// `len` is not NULL) to its length. Valid until the message is freed.
/// Never NULL for a message, even with an empty body; NULL (and `*len` 0)
/// only for a NULL message.
///
/// # Safety
/// `msg` is NULL or a live message handle; `len` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn shmbus_message_body(msg: *const shmbus_message, len: *mut usize) -> *const c_void {
    // SAFETY: NULL or writable by the caller's contract.
    unsafe { put(len, 0) };
    call_or(std::ptr::null(), || {
        // SAFETY: NULL or live, by the caller's contract.
        let m = unsafe { handle(msg, "message") }?;
        // SAFETY: as above.
        unsafe { put(len, m.body_len) };
        Ok(m.body as *const c_void)
    })
}

/// The message's path, `subsystem://route`, as a NUL-terminated copy owned
/// by the message (valid until it is freed). For a reply: the path of the
/// request it answers. "" if a faulty sender wrote an invalid path; NULL
/// only for a NULL message.
///
/// # Safety
/// `msg` is NULL or a live message handle.
#[no_mangle]
pub unsafe extern "C" fn shmbus_message_path(msg: *const shmbus_message) -> *const c_char {
    call_or(std::ptr::null(), || {
        // SAFETY: NULL or live, by the caller's contract.
        let m = unsafe { handle(msg, "message") }?;
        Ok(m.path().as_ptr())
    })
}

/// The message's trace id: the id of the message that started the trace
/// (for a reply, its request's trace). 0 for a NULL message.
///
/// # Safety
/// `msg` is NULL or a live message handle.
#[no_mangle]
pub unsafe extern "C" fn shmbus_message_trace_id(msg: *const shmbus_message) -> u64 {
    call_or(0, || {
        // SAFETY: NULL or live, by the caller's contract.
        let m = unsafe { handle(msg, "message") }?;
        Ok(match &m.held {
            Held::Received { msg, .. } => msg.trace_id(),
            Held::Reply { response, .. } => response.trace_id(),
        })
    })
}

/// The message's bus-unique id. 0 for a NULL message.
///
/// # Safety
/// `msg` is NULL or a live message handle.
#[no_mangle]
pub unsafe extern "C" fn shmbus_message_id(msg: *const shmbus_message) -> u64 {
    call_or(0, || {
        // SAFETY: NULL or live, by the caller's contract.
        let m = unsafe { handle(msg, "message") }?;
        Ok(match &m.held {
            Held::Received { msg, .. } => msg.id(),
            Held::Reply { response, .. } => response.id(),
        })
    })
}

/// 1 if the message was delivered before, to a receiver of this consumer
/// group that died holding it (it may have been partly processed), else
/// 0; `SHMBUS_EINVAL` for a NULL message. A reply is never redelivered.
///
/// # Safety
/// `msg` is NULL or a live message handle.
#[no_mangle]
pub unsafe extern "C" fn shmbus_message_is_redelivered(msg: *const shmbus_message) -> c_int {
    call_or(SHMBUS_EINVAL, || {
        // SAFETY: NULL or live, by the caller's contract.
        let m = unsafe { handle(msg, "message") }?;
        Ok(match &m.held {
            Held::Received { msg, .. } => msg.is_redelivered() as c_int,
            Held::Reply { .. } => 0,
        })
    })
}

/// Frees a message and releases its slot (the body pointer and path are
/// invalid afterwards). NULL is allowed. A received message must not be
/// freed while another thread uses its subscriber. Freeing the last
/// message of a subscriber already freed ends the subscription (a round
/// trip to the daemon).
///
/// # Safety
/// `msg` is NULL or a live message handle, not freed before.
#[no_mangle]
pub unsafe extern "C" fn shmbus_message_free(msg: *mut shmbus_message) {
    if msg.is_null() {
        return;
    }
    call_or((), || {
        // SAFETY: made by `Box::into_raw` in this library, not freed before
        // (the caller's contract): ours now. Its `Held` releases the slot,
        // then the subscriber or requester it borrowed.
        drop(unsafe { Box::from_raw(msg) });
        Ok(())
    })
}
