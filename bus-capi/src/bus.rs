//! `shmbus_bus`: a connection to a daemon, and the requester that
//! `shmbus_request` shares, made on first use.

use crate::error::{call_ptr, Error};
use bus_client::{Bus, Requester};
use std::ffi::c_char;
use std::sync::{Arc, Mutex, OnceLock};

/// A connection to a shmbus daemon (`shmbus_connect`).
///
/// Thread-safe: one bus may be used by any number of threads at once
/// (`shmbus_publisher_new`, `shmbus_subscribe`, `shmbus_request`, …), but
/// must not be freed while another thread uses it. Publishers,
/// subscribers and messages made from it keep the connection open: it
/// closes when the bus and all of them are freed.
pub struct shmbus_bus {
    pub(crate) bus: Bus,
    /// The requester of `shmbus_request`, made by the first request (a
    /// control round trip) and shared by every thread after: it matches
    /// replies by correlation id. In an `Arc` because a reply message keeps
    /// it (its reply borrows it) past `shmbus_bus_free`.
    requester: OnceLock<Arc<Requester>>,
    /// Held while the requester is made, so that threads racing for the
    /// first request make one.
    making: Mutex<()>,
}

impl shmbus_bus {
    /// The shared requester, made on first use.
    pub(crate) fn requester(&self) -> Result<&Arc<Requester>, Error> {
        if let Some(r) = self.requester.get() {
            return Ok(r);
        }
        let _making = self.making.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = self.requester.get() {
            return Ok(r);
        }
        let r = Arc::new(self.bus.requester()?);
        Ok(self.requester.get_or_init(|| r))
    }
}

/// Connects to the daemon at `socket`, a Unix socket path; NULL connects
/// to the bus named by `$SHMBUS_SOCKET`, else to the default bus (see the
/// README: `$SHMBUS_BUS`, the runtime directory).
///
/// Returns a new bus, to be freed with `shmbus_bus_free`, or NULL on error
/// (`shmbus_last_error_code()`: `SHMBUS_EGONE` when no daemon listens,
/// `SHMBUS_EPERM`, `SHMBUS_ETIMEDOUT`, `SHMBUS_EIO`, `SHMBUS_EINVAL`).
///
/// # Safety
/// `socket` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn shmbus_connect(socket: *const c_char) -> *mut shmbus_bus {
    call_ptr(|| {
        let builder = Bus::builder();
        let builder = if socket.is_null() {
            builder
        } else {
            // Any bytes make a path (not only UTF-8).
            use std::os::unix::ffi::OsStrExt;
            // SAFETY: not NULL, NUL-terminated by the caller's contract.
            let bytes = unsafe { std::ffi::CStr::from_ptr(socket) }.to_bytes();
            builder.socket(std::path::Path::new(std::ffi::OsStr::from_bytes(bytes)))
        };
        let bus = builder.connect()?;
        Ok(Box::new(shmbus_bus { bus, requester: OnceLock::new(), making: Mutex::new(()) }))
    })
}

/// Frees a bus handle. Publishers, subscribers and messages made from it
/// stay valid (they keep the connection open until they are freed too).
/// NULL is allowed (nothing happens). No other thread may be using the
/// handle.
///
/// # Safety
/// `bus` is NULL or a bus from `shmbus_connect`, not freed before.
#[no_mangle]
pub unsafe extern "C" fn shmbus_bus_free(bus: *mut shmbus_bus) {
    if bus.is_null() {
        return;
    }
    crate::error::call_or((), || {
        // SAFETY: made by `shmbus_connect` (Box::into_raw) and not freed
        // before, by the caller's contract: we own it now.
        drop(unsafe { Box::from_raw(bus) });
        Ok(())
    })
}
