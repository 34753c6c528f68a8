//! `shmbus_publisher` and `shmbus_loan`: sending copied bodies, and bodies
//! written in place into a loaned slot.
//!
//! A `LoanUninit` borrows its `Publisher` mutably, so the publisher lives in
//! a heap cell of its own (`Box<Publisher>` as a raw pointer) and its
//! handle carries a small state word: while a loan is out, the publisher's
//! functions fail with `SHMBUS_EBUSY` instead of making a second reference
//! to it, and `shmbus_publisher_free` only marks it, the loan freeing it
//! when it ends. The same word, taken with a compare-exchange for the
//! length of every call, turns two threads using one publisher at once
//! into `SHMBUS_EBUSY` instead of a data race.

use crate::bus::shmbus_bus;
use crate::error::{bytes_arg, call_int, call_or, call_ptr, handle, put, str_arg, timeout_arg, Error, SHMBUS_EBUSY};
use bus_client::{Backpressure, LoanUninit, Publisher};
use std::ffi::{c_char, c_int, c_void};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

/// Nothing is using the publisher.
const IDLE: u8 = 0;
/// A call is using it (on some thread).
const IN_CALL: u8 = 1;
/// A loan of it is outstanding.
const LOANED: u8 = 2;
/// A loan is outstanding and `shmbus_publisher_free` was called: the loan
/// frees the publisher when it ends.
const LOANED_FREED: u8 = 3;
/// Being freed by `shmbus_publisher_free` (no call can take it).
const FREED: u8 = 4;

/// Sends messages (`shmbus_publisher_new`).
///
/// One thread at a time: a call made while another thread is inside a
/// call on the same publisher fails with `SHMBUS_EBUSY` (it may move
/// between threads freely). While a loan from it is outstanding, its
/// sends and loans fail with `SHMBUS_EBUSY`; it may be freed then, and is
/// freed once the loan is sent or freed.
pub struct shmbus_publisher {
    /// The publisher, owned (from `Box::into_raw`). Referenced only by the
    /// call that holds the state word at `IN_CALL`, or by the one
    /// outstanding loan while it is `LOANED`/`LOANED_FREED`.
    publisher: NonNull<Publisher>,
    /// `IDLE`, `IN_CALL`, `LOANED` or `LOANED_FREED`. Taken from `IDLE`
    /// with an Acquire compare-exchange, given back with a Release store:
    /// SYNC: publisher-handoff, so that what one call (or a loan, on
    /// another thread) did to the publisher happens before the next use.
    state: AtomicU8,
}

impl shmbus_publisher {
    /// Takes the publisher for one call (`IDLE` → `IN_CALL`), or
    /// `SHMBUS_EBUSY`. The guard gives it back on drop, panics included.
    fn enter(&self) -> Result<InCall<'_>, Error> {
        // SYNC: publisher-handoff (Acquire pairs with the Release store in
        // `InCall::drop` and the Release side of the loan's
        // compare-exchange in `shmbus_loan::drop`).
        match self.state.compare_exchange(IDLE, IN_CALL, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => Ok(InCall { handle: self, loaned: false }),
            Err(LOANED) | Err(LOANED_FREED) => Err(Error::new(
                SHMBUS_EBUSY,
                "a loan from this publisher is outstanding: send it (shmbus_loan_send) or free it (shmbus_loan_free) first",
            )),
            Err(_) => Err(Error::new(
                SHMBUS_EBUSY,
                "another thread is using this publisher: use one publisher per thread, or serialize the calls",
            )),
        }
    }

    /// Frees the handle and its publisher.
    ///
    /// # Safety
    /// `this` came from `Box::into_raw`, and nothing references it or its
    /// publisher any more.
    unsafe fn destroy(this: *mut shmbus_publisher) {
        // SAFETY: by the contract, we own both allocations now.
        let handle = unsafe { Box::from_raw(this) };
        // SAFETY: as above; the publisher came from `Box::into_raw`.
        drop(unsafe { Box::from_raw(handle.publisher.as_ptr()) });
    }
}

/// A call's hold on a publisher (state `IN_CALL`).
struct InCall<'a> {
    handle: &'a shmbus_publisher,
    /// Set once a loan took the publisher over: then the state becomes
    /// `LOANED`, not `IDLE`.
    loaned: bool,
}

impl InCall<'_> {
    /// The publisher, for this call.
    fn publisher(&mut self) -> &mut Publisher {
        // SAFETY: the state is `IN_CALL` and this guard set it: no other
        // reference to the publisher exists until the guard is dropped,
        // and the returned borrow cannot outlive the guard.
        unsafe { &mut *self.handle.publisher.as_ptr() }
    }
}

impl Drop for InCall<'_> {
    fn drop(&mut self) {
        let next = if self.loaned { LOANED } else { IDLE };
        // SYNC: publisher-handoff (Release pairs with the Acquire in `enter`).
        self.handle.state.store(next, Ordering::Release);
    }
}

/// A slot claimed by `shmbus_loan` (`shmbus_publisher_loan`), its path
/// written, its body to be written in place and sent with
/// `shmbus_loan_send` (or given back with `shmbus_loan_free`).
///
/// One thread at a time (it may move between threads). It keeps its
/// publisher busy (`SHMBUS_EBUSY`) and alive until it ends.
pub struct shmbus_loan {
    /// The loan; `None` once taken by `shmbus_loan_send`. Borrows the
    /// publisher behind `publisher` (lifetime erased): it is dropped before
    /// the publisher is released (see `Drop`).
    loan: Option<LoanUninit<'static>>,
    /// The handle of the publisher (the pointer `shmbus_loan` was given),
    /// in state `LOANED` or `LOANED_FREED` while this loan lives.
    publisher: NonNull<shmbus_publisher>,
}

impl Drop for shmbus_loan {
    fn drop(&mut self) {
        // First the loan (it returns its slot through the publisher, if
        // still unsent), then the publisher is free again, even if giving
        // the slot back panicked (the slot is then lost, the publisher
        // not).
        let loan = self.loan.take();
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(loan)));
        let handle = self.publisher.as_ptr();
        // SAFETY: the publisher handle lives while its state is `LOANED*`,
        // which this loan keeps; only shared access (the atomic) is made.
        let state = unsafe { &(*handle).state };
        // SYNC: publisher-handoff (the Release side pairs with the Acquire
        // in `enter`; on failure, the Acquire pairs with the Release side of
        // the compare-exchange in `shmbus_publisher_free`, so that the free
        // happens before the destruction here).
        if state.compare_exchange(LOANED, IDLE, Ordering::AcqRel, Ordering::Acquire).is_err() {
            // `LOANED_FREED`: the owner freed the publisher meanwhile.
            // SAFETY: the loan was the last user; its borrow ended above,
            // and no call can take a freed publisher.
            unsafe { shmbus_publisher::destroy(handle) };
        }
    }
}

/// A new publisher on `bus`, whose sends wait up to the bus's send
/// timeout (5 s) for a free slot or room in the queue, then fail with
/// `SHMBUS_ETIMEDOUT`. NULL on error (see `shmbus_last_error`). Free it
/// with `shmbus_publisher_free`.
///
/// # Safety
/// `bus` is NULL or a live bus handle.
#[no_mangle]
pub unsafe extern "C" fn shmbus_publisher_new(bus: *mut shmbus_bus) -> *mut shmbus_publisher {
    call_ptr(|| {
        // SAFETY: NULL or live, by the caller's contract (shared use: the
        // bus is thread-safe).
        let bus = unsafe { handle(bus, "bus") }?;
        new_publisher(bus.bus.publisher().create()?)
    })
}

/// A new publisher on `bus` whose sends wait up to `send_timeout_ms` for
/// a free slot or room in the queue (then `SHMBUS_ETIMEDOUT`); 0 makes
/// them fail at once with `SHMBUS_EAGAIN`, -1 wait as long as it takes.
/// NULL on error. Free it with `shmbus_publisher_free`.
///
/// # Safety
/// `bus` is NULL or a live bus handle.
#[no_mangle]
pub unsafe extern "C" fn shmbus_publisher_new_timeout(
    bus: *mut shmbus_bus,
    send_timeout_ms: i64,
) -> *mut shmbus_publisher {
    call_ptr(|| {
        // SAFETY: NULL or live, by the caller's contract.
        let bus = unsafe { handle(bus, "bus") }?;
        let backpressure = match timeout_arg(send_timeout_ms)? {
            Some(Duration::ZERO) => Backpressure::FailFast,
            Some(t) => Backpressure::Block(t),
            // "As long as it takes": a century (a deadline the clock can
            // hold without overflow).
            None => Backpressure::Block(Duration::from_secs(100 * 365 * 86_400)),
        };
        new_publisher(bus.bus.publisher().backpressure(backpressure).create()?)
    })
}

fn new_publisher(p: Publisher) -> Result<Box<shmbus_publisher>, Error> {
    let publisher = NonNull::from(Box::leak(Box::new(p)));
    Ok(Box::new(shmbus_publisher { publisher, state: AtomicU8::new(IDLE) }))
}

/// Frees a publisher: its cached slots go back to the pool. NULL is
/// allowed. With a loan outstanding, the publisher is freed when the loan
/// is sent or freed (the loan stays valid). No other thread may be using
/// the handle.
///
/// # Safety
/// `publisher` is NULL or a live publisher handle, not freed before.
#[no_mangle]
pub unsafe extern "C" fn shmbus_publisher_free(publisher: *mut shmbus_publisher) {
    if publisher.is_null() {
        return;
    }
    call_or((), || {
        // SAFETY: live by the caller's contract; only the atomic is read.
        let state = unsafe { &(*publisher).state };
        // SYNC: publisher-handoff (Release pairs with the loan's Acquire
        // in its `Drop`).
        if state.compare_exchange(LOANED, LOANED_FREED, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            return Ok(()); // the loan frees it
        }
        // SYNC: publisher-handoff (Acquire pairs with the Release store in
        // `InCall::drop`: the last call's use happens before the free).
        if state.compare_exchange(IDLE, FREED, Ordering::Acquire, Ordering::Relaxed).is_err() {
            // Another thread is inside a call on it (against the rules):
            // freeing it under that call would be a use after free.
            // Leaked instead, and said.
            return Err(Error::new(
                SHMBUS_EBUSY,
                "shmbus_publisher_free while another thread was in a call on the publisher: it was not freed (leaked); \
                 free a publisher only once no thread uses it",
            ));
        }
        // SAFETY: no loan is out and no call is running (the state went
        // from IDLE to FREED, which no call can take): nothing else
        // references it.
        unsafe { shmbus_publisher::destroy(publisher) };
        Ok(())
    })
}

/// Copies `len` bytes at `body` into a slot and sends them to `path`
/// (`subsystem://route`). The body may be NULL when `len` is 0. The
/// message is raw bytes: a Rust receiver reads it with `body_bytes()`.
///
/// Returns 0, or `SHMBUS_EINVAL` (bad path), `SHMBUS_ETOOBIG`,
/// `SHMBUS_ENOSUB`, `SHMBUS_ETIMEDOUT`/`SHMBUS_EAGAIN` (pool or queue
/// full), `SHMBUS_EPARTIAL`, `SHMBUS_EQUOTA`, `SHMBUS_EPERM`,
/// `SHMBUS_EGONE`, `SHMBUS_EBUSY` (a loan is outstanding).
///
/// # Safety
/// `publisher` is NULL or a live publisher handle; `path` NULL or a
/// NUL-terminated string; `body` NULL or `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn shmbus_send(
    publisher: *mut shmbus_publisher,
    path: *const c_char,
    body: *const c_void,
    len: usize,
) -> c_int {
    call_int(|| {
        // SAFETY: NULL or live, by the caller's contract.
        let handle = unsafe { handle(publisher, "publisher") }?;
        // SAFETY: the caller's contract for `path` and `body`.
        let (path, body) = unsafe { (str_arg(path, "path")?, bytes_arg(body, len)?) };
        let mut call = handle.enter()?;
        call.publisher().send_bytes(path, body)?;
        Ok(())
    })
}

/// `shmbus_loan(publisher, path, &loan, &body, &capacity)`: a macro for
/// this function, since C cannot give a function and a type
/// (`shmbus_loan`) one name. The library also exports it under the symbol
/// `shmbus_loan`, for `dlsym` and other languages.
///
/// Claims a slot for a message to `path` and writes the path into it: the
/// body is then written in place, at `*body` (16-byte aligned, up to
/// `*capacity` bytes, holding stale bytes), and sent with
/// `shmbus_loan_send`, or given back with `shmbus_loan_free`.
///
/// On success returns 0 and sets `*loan`, `*body` and `*capacity`
/// (`body` and `capacity` may be NULL if not wanted). On error sets
/// `*loan` to NULL and returns a code as `shmbus_send` does (it waits for
/// a free slot as a send does). While the loan is outstanding the
/// publisher's sends and loans fail with `SHMBUS_EBUSY`.
///
/// # Safety
/// `publisher` is NULL or a live publisher handle; `path` NULL or a
/// NUL-terminated string; `loan` NULL or writable; `body` and `capacity`
/// NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn shmbus_publisher_loan(
    publisher: *mut shmbus_publisher,
    path: *const c_char,
    loan: *mut *mut shmbus_loan,
    body: *mut *mut c_void,
    capacity: *mut usize,
) -> c_int {
    // SAFETY: NULL or writable by the caller's contract.
    unsafe { put(loan, std::ptr::null_mut()) };
    call_int(|| {
        if loan.is_null() {
            return Err(Error::invalid("loan (the out-pointer for the loan) is NULL"));
        }
        // SAFETY: NULL or live, by the caller's contract.
        let handle = unsafe { handle(publisher, "publisher") }?;
        // SAFETY: the caller's contract for `path`.
        let path = unsafe { str_arg(path, "path") }?;
        let mut call = handle.enter()?;
        let p: *mut Publisher = call.publisher();
        // SAFETY: the state is `IN_CALL`, held by `call`; on success it
        // becomes `LOANED` (below) and stays so until the `shmbus_loan`
        // handle, which owns this borrow, is dropped: the publisher is
        // referenced by nothing else, and freed only after the borrow ends
        // (see `shmbus_loan::drop`, `shmbus_publisher_free`). 'static stands
        // for "as long as the loan handle".
        let publisher_ref: &'static mut Publisher = unsafe { &mut *p };
        let mut uninit = publisher_ref.loan(path)?;
        let area = uninit.body_mut();
        let (area_ptr, area_len) = (area.as_mut_ptr(), area.len());
        // The C pointer itself (not one made from `handle`, a shared
        // borrow): the loan may have to free the publisher through it.
        let owner = NonNull::new(publisher).expect("checked above");
        let made = Box::new(shmbus_loan { loan: Some(uninit), publisher: owner });
        call.loaned = true;
        drop(call);
        // SAFETY: the out-pointers are NULL or writable (caller's contract).
        unsafe {
            put(loan, Box::into_raw(made));
            put(body, area_ptr as *mut c_void);
            put(capacity, area_len);
        }
        Ok(())
    })
}

/// cbindgen:ignore
///
/// `shmbus_publisher_loan` under the name of the header's `shmbus_loan`
/// macro, for `dlsym` and other languages (left out of the header, where
/// the name is the loan's type).
///
/// # Safety
/// As for `shmbus_publisher_loan`.
#[no_mangle]
pub unsafe extern "C" fn shmbus_loan(
    publisher: *mut shmbus_publisher,
    path: *const c_char,
    loan: *mut *mut shmbus_loan,
    body: *mut *mut c_void,
    capacity: *mut usize,
) -> c_int {
    // SAFETY: the same contract.
    unsafe { shmbus_publisher_loan(publisher, path, loan, body, capacity) }
}

/// Sends the loan's message, whose body is the first `len` bytes written
/// at the loan's body pointer. Consumes the loan whatever the result: on
/// error its slot goes back to the pool (the message is not sent, except
/// for `SHMBUS_EPARTIAL`), and the loan must not be used again.
///
/// Returns 0, or `SHMBUS_ETOOBIG` (`len` above the capacity), or a code
/// as `shmbus_send` does. `SHMBUS_EINVAL` for a NULL loan.
///
/// # Safety
/// `loan` is NULL or a live loan handle, not sent or freed before.
#[no_mangle]
pub unsafe extern "C" fn shmbus_loan_send(loan: *mut shmbus_loan, len: usize) -> c_int {
    call_int(|| {
        if loan.is_null() {
            return Err(Error::invalid("loan is NULL"));
        }
        // SAFETY: a live loan from `shmbus_loan` (Box::into_raw), consumed
        // here by the caller's contract. Declared first, so it is dropped
        // last (after `uninit` and anything made from it), panics
        // included: its `Drop` releases the publisher.
        let mut handle = unsafe { Box::from_raw(loan) };
        let uninit = handle.loan.take().ok_or_else(|| Error::invalid("the loan was already sent"))?;
        let sent = uninit.commit(len)?.send();
        // A loan handed back by a failed send is dropped here: its slot
        // returns to the pool.
        sent.map(drop).map_err(|f| Error::from(f.error))
    })
}

/// Gives the loan's slot back unsent. NULL is allowed.
///
/// # Safety
/// `loan` is NULL or a live loan handle, not sent or freed before.
#[no_mangle]
pub unsafe extern "C" fn shmbus_loan_free(loan: *mut shmbus_loan) {
    if loan.is_null() {
        return;
    }
    call_or((), || {
        // SAFETY: a live loan from `shmbus_loan`, ours now by the caller's
        // contract; its `Drop` returns the slot and releases the publisher.
        drop(unsafe { Box::from_raw(loan) });
        Ok(())
    })
}
