//! Linux implementation of the futex seam: `SYS_futex` with `FUTEX_WAIT` and
//! `FUTEX_WAKE`, without `FUTEX_PRIVATE_FLAG` (see the parent module).

use super::Wait;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Sleeps while `*word == expected`, for at most `timeout`.
pub fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> Wait {
    let ts;
    let ts_ptr = match timeout {
        Some(d) => {
            ts = libc::timespec {
                tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
                tv_nsec: d.subsec_nanos() as libc::c_long,
            };
            &ts as *const libc::timespec
        }
        None => std::ptr::null(),
    };
    // SAFETY: `word` is a valid, aligned u32 for the duration of the call (it
    // is borrowed); FUTEX_WAIT only reads it. `ts_ptr` is null or points at a
    // timespec that outlives the call.
    let rc = unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAIT, expected, ts_ptr, std::ptr::null::<u32>(), 0u32)
    };
    if rc == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ETIMEDOUT) {
        Wait::TimedOut
    } else {
        // 0 (woken), EAGAIN (value changed), EINTR (signal): all mean "re-check".
        Wait::Woken
    }
}

/// Wakes up to `count` processes sleeping on `word`.
pub fn wake(word: &AtomicU32, count: u32) -> u32 {
    // SAFETY: `word` is a valid, aligned u32; FUTEX_WAKE does not access it
    // beyond using its address as the key.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            count.min(i32::MAX as u32),
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    rc.max(0) as u32
}
