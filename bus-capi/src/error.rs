//! Error codes, the thread's last error, and the guard around every entry
//! point that turns a Rust panic into `SHMBUS_EPANIC` instead of letting it
//! cross into C.
//!
//! The codes are a small stable set: each of bus-client's error variants
//! maps to one (see the `From` impls below), and the message kept for
//! `shmbus_last_error` is the variant's `Display` text, which says what to
//! do about it.

use bus_client::{ConnectError, RecvError, ReplyError, RequestError, SendError};
use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Success.
pub const SHMBUS_OK: c_int = 0;
/// An argument is invalid: a NULL handle or pointer, a string that is not
/// UTF-8, a malformed path or subsystem name, a timeout below -1.
pub const SHMBUS_EINVAL: c_int = -1;
/// No daemon answers on the socket, or the daemon stopped: restart
/// `shmbusd` and connect again.
pub const SHMBUS_EGONE: c_int = -2;
/// Nothing arrived (or no reply came) within the timeout, or a blocking
/// send waited longer than its timeout.
pub const SHMBUS_ETIMEDOUT: c_int = -3;
/// The body does not fit a slot (with this path): send less, or start the
/// daemon with a larger `--slot-size`.
pub const SHMBUS_ETOOBIG: c_int = -4;
/// No free slot, or the subsystem's queue is full, and the publisher fails
/// at once (a send timeout of 0): retry later.
pub const SHMBUS_EAGAIN: c_int = -5;
/// Nobody subscribes to the subsystem (and it is not declared durable):
/// nothing was sent.
pub const SHMBUS_ENOSUB: c_int = -6;
/// The message reached some of the subsystem's consumer groups; the
/// others' queues stayed full and their copies were dropped. It counts as
/// sent: retrying duplicates it for the groups that got it.
pub const SHMBUS_EPARTIAL: c_int = -7;
/// The daemon's access policy refuses this (connect, subscribe or send),
/// or the daemon runs as a user this client does not trust.
pub const SHMBUS_EPERM: c_int = -8;
/// A limit of this client is reached: the slots it may hold at once
/// (`max-slots-per-client`; free received messages and loans), or the
/// publishers and subscribers one connection may have.
pub const SHMBUS_EQUOTA: c_int = -9;
/// A request's subsystem is served, but its router has no route for the
/// path.
pub const SHMBUS_ENOROUTE: c_int = -10;
/// The handler of a request returned an error or panicked.
pub const SHMBUS_EHANDLER: c_int = -11;
/// The handler is on another host that cannot be reached (see
/// `shmbus-bridge`).
pub const SHMBUS_EUNREACHABLE: c_int = -12;
/// A received message was corrupt (a faulty sender); it was released and
/// skipped.
pub const SHMBUS_ECORRUPT: c_int = -13;
/// The handle is in use: a publisher with a loan outstanding, or used by
/// another thread at this moment.
pub const SHMBUS_EBUSY: c_int = -14;
/// This process is a forked child of the one that connected: the child
/// must call `shmbus_connect` itself.
pub const SHMBUS_EFORKED: c_int = -15;
/// Talking to the daemon failed otherwise (a system call, the protocol, a
/// version mismatch, a refusal).
pub const SHMBUS_EIO: c_int = -16;
/// An internal error (a panic inside the library, caught at the boundary):
/// a bug in shmbus, please report it with the message.
pub const SHMBUS_EPANIC: c_int = -17;

/// An error on its way to C: a `SHMBUS_E*` code and its message.
#[derive(Debug)]
pub(crate) struct Error {
    pub(crate) code: c_int,
    pub(crate) message: String,
}

impl Error {
    pub(crate) fn new(code: c_int, message: impl Into<String>) -> Error {
        // The Rust library's text names its own call; a C caller has another.
        let message = if code == SHMBUS_EFORKED {
            "this shmbus_bus was connected by the parent process before fork(): the child must call shmbus_connect() itself".into()
        } else {
            message.into()
        };
        Error { code, message }
    }

    /// A NULL or otherwise invalid argument.
    pub(crate) fn invalid(message: impl Into<String>) -> Error {
        Error::new(SHMBUS_EINVAL, message)
    }
}

impl From<ConnectError> for Error {
    fn from(e: ConnectError) -> Error {
        let code = match &e {
            ConnectError::NoDaemon { .. } => SHMBUS_EGONE,
            ConnectError::NotASocket { .. } => SHMBUS_EINVAL,
            ConnectError::PermissionDenied { .. }
            | ConnectError::NotAllowed { .. }
            | ConnectError::UntrustedDaemon { .. } => SHMBUS_EPERM,
            ConnectError::Timeout { .. } | ConnectError::Restarting { .. } => SHMBUS_ETIMEDOUT,
            ConnectError::Io { source, .. } if source.kind() == std::io::ErrorKind::InvalidInput => SHMBUS_EINVAL,
            _ => SHMBUS_EIO,
        };
        Error::new(code, e.to_string())
    }
}

impl From<RequestError> for Error {
    fn from(e: RequestError) -> Error {
        let code = match &e {
            RequestError::BusGone => SHMBUS_EGONE,
            RequestError::Forked => SHMBUS_EFORKED,
            RequestError::PermissionDenied { .. } => SHMBUS_EPERM,
            RequestError::InvalidName(_) | RequestError::InvalidWindow { .. } => SHMBUS_EINVAL,
            RequestError::TooManyPorts(_) => SHMBUS_EQUOTA,
            RequestError::Daemon { kind, .. } => {
                use bus_client::protocol::ErrorKind as K;
                match kind {
                    K::Invalid | K::GroupMismatch => SHMBUS_EINVAL,
                    K::TooManySubsystems | K::TooManyGroups | K::TooManyClients => SHMBUS_EQUOTA,
                    K::PermissionDenied => SHMBUS_EPERM,
                    _ => SHMBUS_EIO,
                }
            }
            _ => SHMBUS_EIO,
        };
        Error::new(code, e.to_string())
    }
}

/// The code of a failed send.
fn send_code(e: &SendError) -> c_int {
    match e {
        SendError::InvalidPath(_) => SHMBUS_EINVAL,
        SendError::BodyTooLarge { .. } => SHMBUS_ETOOBIG,
        SendError::PermissionDenied { .. } => SHMBUS_EPERM,
        SendError::NoSubscriber { .. } => SHMBUS_ENOSUB,
        SendError::QueueFull { .. } | SendError::PoolExhausted { .. } => SHMBUS_EAGAIN,
        SendError::PartlyDelivered { .. } => SHMBUS_EPARTIAL,
        SendError::QuotaExceeded { .. } => SHMBUS_EQUOTA,
        SendError::Timeout { .. } => SHMBUS_ETIMEDOUT,
        SendError::BusGone => SHMBUS_EGONE,
        SendError::Forked => SHMBUS_EFORKED,
        _ => SHMBUS_EIO,
    }
}

impl From<SendError> for Error {
    fn from(e: SendError) -> Error {
        Error::new(send_code(&e), e.to_string())
    }
}

impl From<RecvError> for Error {
    fn from(e: RecvError) -> Error {
        let code = match &e {
            RecvError::Timeout(_) => SHMBUS_ETIMEDOUT,
            RecvError::BusGone => SHMBUS_EGONE,
            RecvError::Forked => SHMBUS_EFORKED,
            RecvError::QuotaExceeded { .. } => SHMBUS_EQUOTA,
            RecvError::Corrupt(_) => SHMBUS_ECORRUPT,
            _ => SHMBUS_EIO,
        };
        Error::new(code, e.to_string())
    }
}

impl From<ReplyError> for Error {
    fn from(e: ReplyError) -> Error {
        let code = match &e {
            // Not sent at all (no slot or no room in time): unlike a
            // request that timed out waiting for its reply, safe to retry.
            ReplyError::Send(SendError::Timeout { .. }) => SHMBUS_EAGAIN,
            ReplyError::Send(s) => send_code(s),
            ReplyError::Timeout(_) => SHMBUS_ETIMEDOUT,
            ReplyError::NoRoute { .. } => SHMBUS_ENOROUTE,
            ReplyError::Handler(_) | ReplyError::Panicked(_) => SHMBUS_EHANDLER,
            ReplyError::Unreachable(_) => SHMBUS_EUNREACHABLE,
            ReplyError::BusGone => SHMBUS_EGONE,
            _ => SHMBUS_EIO,
        };
        Error::new(code, e.to_string())
    }
}

impl From<bus_client::BodyError> for Error {
    fn from(e: bus_client::BodyError) -> Error {
        Error::new(SHMBUS_ECORRUPT, e.to_string())
    }
}

/// The last failure of this thread: its code and message.
struct Last {
    code: c_int,
    message: CString,
}

thread_local! {
    static LAST: RefCell<Last> = RefCell::new(Last { code: SHMBUS_OK, message: CString::default() });
}

/// Records `e` as this thread's last error.
fn record(e: Error) -> c_int {
    let code = e.code;
    // A NUL inside the text would cut it short in C: show it instead.
    let message = CString::new(e.message.replace('\0', "\\0")).unwrap_or_default();
    // `try_with`: during thread teardown the slot may be gone; the code
    // still reaches the caller.
    let _ = LAST.try_with(|l| {
        if let Ok(mut l) = l.try_borrow_mut() {
            *l = Last { code, message };
        }
    });
    code
}

/// The text of a caught panic.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into());
    format!("internal error in libshmbus (a bug: please report it): {what}")
}

/// Runs an entry point that returns `int`: 0 on success, else the error's
/// code, recorded as the thread's last error. A panic becomes
/// [`SHMBUS_EPANIC`].
pub(crate) fn call_int(f: impl FnOnce() -> Result<(), Error>) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => SHMBUS_OK,
        Ok(Err(e)) => record(e),
        Err(p) => record(Error::new(SHMBUS_EPANIC, panic_text(&*p))),
    }
}

/// Runs an entry point that returns a handle: the handle on success, else
/// NULL with the error recorded as the thread's last error.
pub(crate) fn call_ptr<T>(f: impl FnOnce() -> Result<Box<T>, Error>) -> *mut T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(b)) => Box::into_raw(b),
        Ok(Err(e)) => {
            record(e);
            std::ptr::null_mut()
        }
        Err(p) => {
            record(Error::new(SHMBUS_EPANIC, panic_text(&*p)));
            std::ptr::null_mut()
        }
    }
}

/// Runs an entry point that cannot report an error through its return
/// value (an accessor, a free): on an error or a panic, records it and
/// returns `fallback`.
pub(crate) fn call_or<T>(fallback: T, f: impl FnOnce() -> Result<T, Error>) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            record(e);
            fallback
        }
        Err(p) => {
            record(Error::new(SHMBUS_EPANIC, panic_text(&*p)));
            fallback
        }
    }
}

/// A shared reference to the object behind a handle, or `SHMBUS_EINVAL`
/// for NULL.
///
/// # Safety
/// `p` is NULL or a live handle of this type (made by this library and not
/// freed), not used mutably elsewhere during `'a`.
pub(crate) unsafe fn handle<'a, T>(p: *const T, what: &str) -> Result<&'a T, Error> {
    // SAFETY: the caller's contract: NULL or a live, shared handle.
    unsafe { p.as_ref() }.ok_or_else(|| Error::invalid(format!("{what} is NULL")))
}

/// A C string argument as `&str`: `SHMBUS_EINVAL` if NULL or not UTF-8.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that stays unchanged
/// during `'a`.
pub(crate) unsafe fn str_arg<'a>(p: *const c_char, what: &str) -> Result<&'a str, Error> {
    if p.is_null() {
        return Err(Error::invalid(format!("{what} is NULL")));
    }
    // SAFETY: not NULL, and NUL-terminated by the caller's contract.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str().map_err(|_| Error::invalid(format!("{what} is not UTF-8: {}", s.to_string_lossy())))
}

/// A body argument as a byte slice: empty for `len` 0 (then `body` may be
/// NULL), `SHMBUS_EINVAL` for a NULL body with a length.
///
/// # Safety
/// Unless `len` is 0, `body` is NULL or points to `len` readable bytes
/// that stay unchanged during `'a`.
pub(crate) unsafe fn bytes_arg<'a>(body: *const std::ffi::c_void, len: usize) -> Result<&'a [u8], Error> {
    if len == 0 {
        return Ok(&[]);
    }
    if body.is_null() {
        return Err(Error::invalid(format!("body is NULL but len is {len}")));
    }
    // No object is that large (a negative length cast to `size_t`, say):
    // refused before a slice of it is made.
    if len > isize::MAX as usize {
        return Err(Error::new(
            SHMBUS_ETOOBIG,
            format!("a body of {len} bytes: no slot holds it (a negative length?)"),
        ));
    }
    // SAFETY: not NULL, `len` readable bytes by the caller's contract
    // (and within `isize::MAX`, checked above).
    Ok(unsafe { std::slice::from_raw_parts(body as *const u8, len) })
}

/// A timeout argument in milliseconds: `None` for -1 (wait as long as it
/// takes), `SHMBUS_EINVAL` below -1.
pub(crate) fn timeout_arg(ms: i64) -> Result<Option<std::time::Duration>, Error> {
    match ms {
        -1 => Ok(None),
        ms if ms < -1 => Err(Error::invalid(format!("timeout of {ms} ms: use 0 or more, or -1 to wait forever"))),
        ms => Ok(Some(std::time::Duration::from_millis(ms as u64))),
    }
}

/// Writes `value` through an out-pointer if it is not NULL.
///
/// # Safety
/// `out` is NULL or valid for a write of `T`.
pub(crate) unsafe fn put<T>(out: *mut T, value: T) {
    if !out.is_null() {
        // SAFETY: not NULL, writable by the caller's contract.
        unsafe { out.write(value) };
    }
}

/// The message of the last call that failed on the calling thread (the
/// Display text of the Rust error, which says what to do about it), or ""
/// if none has failed yet. A call that succeeds leaves it as it was.
///
/// Never NULL. The string belongs to the library: it stays valid until the
/// next `shmbus_*` call on the same thread (copy it to keep it). Each
/// thread has its own.
#[no_mangle]
pub extern "C" fn shmbus_last_error() -> *const c_char {
    LAST.try_with(|l| l.try_borrow().map(|l| l.message.as_ptr()).ok()).ok().flatten().unwrap_or(c"".as_ptr())
}

/// The code (`SHMBUS_E*`) of the last call that failed on the calling
/// thread, or `SHMBUS_OK` (0) if none has failed yet: what a function that
/// returns NULL on error failed with. A call that succeeds leaves it as it
/// was.
#[no_mangle]
pub extern "C" fn shmbus_last_error_code() -> c_int {
    LAST.try_with(|l| l.try_borrow().map(|l| l.code).unwrap_or(SHMBUS_OK)).unwrap_or(SHMBUS_OK)
}

/// A short constant description of `code` (a `SHMBUS_E*` code, or 0), such
/// as "timed out"; "unknown error" for another value. Never NULL; the
/// string is static. Any thread.
#[no_mangle]
pub extern "C" fn shmbus_strerror(code: c_int) -> *const c_char {
    let s: &'static CStr = match code {
        SHMBUS_OK => c"success",
        SHMBUS_EINVAL => c"invalid argument",
        SHMBUS_EGONE => c"no daemon (the bus is gone)",
        SHMBUS_ETIMEDOUT => c"timed out",
        SHMBUS_ETOOBIG => c"body too large for a slot",
        SHMBUS_EAGAIN => c"no free slot or queue full",
        SHMBUS_ENOSUB => c"no subscriber for the subsystem",
        SHMBUS_EPARTIAL => c"delivered to some consumer groups only",
        SHMBUS_EPERM => c"permission denied",
        SHMBUS_EQUOTA => c"client limit reached",
        SHMBUS_ENOROUTE => c"no route for the request",
        SHMBUS_EHANDLER => c"the handler failed",
        SHMBUS_EUNREACHABLE => c"the service's host is unreachable",
        SHMBUS_ECORRUPT => c"corrupt message",
        SHMBUS_EBUSY => c"handle busy",
        SHMBUS_EFORKED => c"connection inherited across fork()",
        SHMBUS_EIO => c"communication with the daemon failed",
        SHMBUS_EPANIC => c"internal error",
        _ => c"unknown error",
    };
    s.as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemons_refusals_keep_their_meaning_in_c() {
        use bus_client::protocol::ErrorKind as K;
        let code = |kind| Error::from(RequestError::Daemon { kind, message: "x".into() }).code;
        assert_eq!(code(K::Invalid), SHMBUS_EINVAL);
        assert_eq!(code(K::TooManySubsystems), SHMBUS_EQUOTA);
        assert_eq!(code(K::TooManyGroups), SHMBUS_EQUOTA);
        assert_eq!(code(K::PermissionDenied), SHMBUS_EPERM);
        assert_eq!(code(K::Sequence), SHMBUS_EIO);
    }

    #[test]
    fn a_length_no_object_can_have_is_too_big_before_any_slice_is_made() {
        let byte = 0u8;
        // SAFETY: the length is refused before the pointer is read.
        let e = unsafe { bytes_arg(&byte as *const u8 as *const std::ffi::c_void, usize::MAX) }.unwrap_err();
        assert_eq!(e.code, SHMBUS_ETOOBIG);
    }

    fn last() -> (c_int, String) {
        // SAFETY: shmbus_last_error never returns NULL, and its string
        // stays valid until the next call on this thread.
        let text = unsafe { CStr::from_ptr(shmbus_last_error()) }.to_string_lossy().into_owned();
        (shmbus_last_error_code(), text)
    }

    #[test]
    fn a_panic_becomes_an_error_code_with_its_message() {
        let code = call_int(|| panic!("kaboom"));
        assert_eq!(code, SHMBUS_EPANIC);
        let (c, text) = last();
        assert_eq!(c, SHMBUS_EPANIC);
        assert!(text.contains("kaboom"), "{text}");
        let p: *mut u8 = call_ptr(|| panic!("again"));
        assert!(p.is_null());
        assert!(last().1.contains("again"));
        assert_eq!(call_or(7, || panic!("accessor")), 7);
    }

    #[test]
    fn a_success_leaves_the_last_error_as_it_was() {
        assert_eq!(call_int(|| Err(Error::invalid("first"))), SHMBUS_EINVAL);
        assert_eq!(call_int(|| Ok(())), SHMBUS_OK);
        assert_eq!(last(), (SHMBUS_EINVAL, "first".into()));
    }

    #[test]
    fn each_thread_has_its_own_last_error() {
        call_int(|| Err(Error::new(SHMBUS_EIO, "here")));
        std::thread::spawn(|| assert_eq!(last(), (SHMBUS_OK, String::new()))).join().unwrap();
        assert_eq!(last().0, SHMBUS_EIO);
    }

    #[test]
    fn a_nul_inside_a_message_is_shown_not_cut() {
        call_int(|| Err(Error::invalid("a\0b")));
        assert_eq!(last().1, "a\\0b");
    }

    #[test]
    fn every_code_has_its_own_description() {
        let mut seen = std::collections::HashSet::new();
        for code in SHMBUS_EPANIC..=SHMBUS_OK {
            // SAFETY: static NUL-terminated strings.
            let s = unsafe { CStr::from_ptr(shmbus_strerror(code)) }.to_str().unwrap();
            assert!(seen.insert(s), "{code}: {s} twice");
            assert_ne!(s, "unknown error");
        }
        // SAFETY: as above.
        assert_eq!(unsafe { CStr::from_ptr(shmbus_strerror(-999)) }.to_str().unwrap(), "unknown error");
    }

    #[test]
    fn timeouts_below_minus_one_are_invalid() {
        assert_eq!(timeout_arg(-1).unwrap(), None);
        assert_eq!(timeout_arg(0).unwrap(), Some(std::time::Duration::ZERO));
        assert_eq!(timeout_arg(-2).unwrap_err().code, SHMBUS_EINVAL);
    }
}
