//! The control connection: a `SOCK_SEQPACKET` Unix socket carrying
//! [`crate::protocol`] packets. Both the client and the daemon use these
//! helpers.

use crate::protocol::MAX_PACKET;
use nix::sys::socket::{self, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr};
use serde::{de::DeserializeOwned, Serialize};
use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// How often a connection to a full listen queue is tried again.
const CONNECT_RETRY: std::time::Duration = std::time::Duration::from_millis(5);

/// Connects to the daemon's socket at `path`, trying until `deadline` while
/// its listen queue is full (a daemon stopped or too busy to accept): then
/// `EAGAIN`. A deadline already past makes one try. A blocking `connect`
/// would wait for room in that queue with no limit.
pub fn connect(path: &Path, deadline: std::time::Instant) -> nix::Result<OwnedFd> {
    let addr = UnixAddr::new(path)?;
    loop {
        let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
        let fd = socket::socket(AddressFamily::Unix, SockType::SeqPacket, flags, None)?;
        // A Unix socket connects at once or fails: never `EINPROGRESS`.
        match socket::connect(fd.as_raw_fd(), &addr) {
            Ok(()) => {
                nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()))?;
                return Ok(fd);
            }
            Err(nix::errno::Errno::EAGAIN) if std::time::Instant::now() < deadline => {
                std::thread::sleep(CONNECT_RETRY.min(deadline.saturating_duration_since(std::time::Instant::now())));
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Sends one packet holding `msg` as JSON, with `fd` attached if given.
pub fn send<T: Serialize>(sock: BorrowedFd<'_>, msg: &T, fd: Option<BorrowedFd<'_>>) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    if bytes.len() > MAX_PACKET {
        return Err(std::io::Error::other(format!("control packet of {} bytes exceeds {MAX_PACKET}", bytes.len())));
    }
    let iov = [IoSlice::new(&bytes)];
    let raw: [RawFd; 1];
    let cmsgs: Vec<ControlMessage<'_>> = match fd {
        Some(fd) => {
            raw = [fd.as_raw_fd()];
            vec![ControlMessage::ScmRights(&raw)]
        }
        None => Vec::new(),
    };
    // EINTR: see `recv_flags`.
    while let Err(e) = socket::sendmsg::<UnixAddr>(sock.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
        if e != nix::errno::Errno::EINTR {
            return Err(e.into());
        }
    }
    Ok(())
}

/// What [`recv`] got.
pub enum Received<T> {
    /// A packet, and the fd that came with it.
    Packet(T, Option<OwnedFd>),
    /// The peer closed the connection.
    Closed,
}

/// Receives one packet and parses it as `T`. Blocks unless the socket is
/// non-blocking (then `WouldBlock`).
pub fn recv<T: DeserializeOwned>(sock: BorrowedFd<'_>, buf: &mut Vec<u8>) -> std::io::Result<Received<T>> {
    recv_flags(sock, buf, MsgFlags::empty())
}

/// [`recv`] without consuming the packet: the next `recv` gets it again
/// (with fresh copies of the descriptors that came with it).
pub fn peek<T: DeserializeOwned>(sock: BorrowedFd<'_>, buf: &mut Vec<u8>) -> std::io::Result<Received<T>> {
    recv_flags(sock, buf, MsgFlags::MSG_PEEK)
}

fn recv_flags<T: DeserializeOwned>(
    sock: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
    flags: MsgFlags,
) -> std::io::Result<Received<T>> {
    buf.resize(MAX_PACKET, 0);
    // A socket with a receive timeout is not restarted after an
    // interruption: a signal, or io_uring task work (an asynchronous wait's
    // completion, which the kernel delivers to this thread), ends the call
    // with EINTR. Giving up there would leave the answer unread, and the
    // next request would read it as its own: retry. But each retry would
    // start the socket's timeout afresh, so that interruptions coming
    // faster than it would make the call wait forever: the retries wait (in
    // `poll`) only for what is left of the timeout counted from the first
    // try.
    let start = std::time::Instant::now();
    let mut deadline = None;
    let (len, fds) = loop {
        match recv_packet(sock, buf, flags) {
            Err(nix::errno::Errno::EINTR) => {
                let d = *deadline.get_or_insert_with(|| receive_timeout(sock).map(|t| start + t));
                if !wait_readable(sock, d, None) {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::WouldBlock,
                        "timed out (interrupted by signals meanwhile)",
                    ));
                }
            }
            r => break r?,
        }
    };
    if len == 0 {
        return Ok(Received::Closed);
    }
    let value = serde_json::from_slice(&buf[..len])
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("malformed control packet: {e}")))?;
    Ok(Received::Packet(value, fds.into_iter().next()))
}

/// Receives one packet into `buf`, with every descriptor the kernel
/// installed for us from it. A packet may carry more than the control
/// buffer holds (the kernel then installs as many as fit, drops the rest
/// and sets `MSG_CTRUNC`); the ones installed are walked here all the same
/// and owned, so that they are closed. (nix's `cmsgs` refuses a truncated
/// buffer, which left them open: any peer could fill the daemon's table.)
fn recv_packet(sock: BorrowedFd<'_>, buf: &mut [u8], flags: MsgFlags) -> nix::Result<(usize, Vec<OwnedFd>)> {
    // u64s: control data must be aligned for `cmsghdr`. Room for a header
    // and a dozen descriptors; a request carries at most one.
    let mut control = [0u64; 8];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: an all-zero `msghdr` is valid (null pointers, zero lengths).
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = control.as_mut_ptr().cast();
    hdr.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `hdr` points at `iov` (valid for `buf.len()` bytes) and at
    // `control` (valid for its size), both alive for the call.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut hdr, (MsgFlags::MSG_CMSG_CLOEXEC | flags).bits()) };
    if n < 0 {
        return Err(nix::errno::Errno::last());
    }
    let begin = control.as_ptr() as usize;
    let end = begin + (hdr.msg_controllen as usize).min(std::mem::size_of_val(&control));
    let mut fds = Vec::new();
    // SAFETY: CMSG_FIRSTHDR and CMSG_NXTHDR walk the control data the
    // kernel wrote, within `msg_controllen` (which it set to what it wrote:
    // whole headers only); each descriptor read is checked to lie before
    // `end`, and read unaligned.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c);
                let bytes = ((*c).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                for k in 0..bytes / std::mem::size_of::<RawFd>() {
                    // Checked before it is read (wrapping: an address
                    // past the buffer is only compared, never read).
                    let at = data.wrapping_add(k * std::mem::size_of::<RawFd>());
                    if at as usize + std::mem::size_of::<RawFd>() > end {
                        break;
                    }
                    let raw = std::ptr::read_unaligned(at.cast::<RawFd>());
                    if raw >= 0 {
                        // The kernel just installed it in our table for
                        // us; nothing else owns it.
                        fds.push(OwnedFd::from_raw_fd(raw));
                    }
                }
            }
            c = libc::CMSG_NXTHDR(&hdr, c);
        }
    }
    Ok((n as usize, fds))
}

/// The socket's receive timeout (`SO_RCVTIMEO`), `None` if it has none.
fn receive_timeout(sock: BorrowedFd<'_>) -> Option<std::time::Duration> {
    let tv = socket::getsockopt(&sock, socket::sockopt::ReceiveTimeout).ok()?;
    let t = std::time::Duration::from_secs(tv.tv_sec().max(0) as u64)
        + std::time::Duration::from_micros(tv.tv_usec().max(0) as u64);
    (!t.is_zero()).then_some(t)
}

/// Whether `sock` has something to read (or is closed) right now.
pub fn readable_now(sock: BorrowedFd<'_>) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(sock, PollFlags::POLLIN)];
    // An error: let the receive report it.
    poll(&mut fds, PollTimeout::ZERO).map_or(true, |n| n > 0)
}

/// Waits until `sock` is readable (an answer, or the hang-up that a
/// receive then reports); `false` once `deadline` (`None`: never) has
/// passed first, or `stop` became readable first. Interruptions only loop.
pub(crate) fn wait_readable(
    sock: BorrowedFd<'_>,
    deadline: Option<std::time::Instant>,
    stop: Option<BorrowedFd<'_>>,
) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    loop {
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(d) => {
                let left = d.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return false;
                }
                PollTimeout::from(left.as_millis().clamp(1, u16::MAX as u128) as u16)
            }
        };
        let mut fds = vec![PollFd::new(sock, PollFlags::POLLIN)];
        fds.extend(stop.map(|s| PollFd::new(s, PollFlags::POLLIN)));
        match poll(&mut fds, timeout) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            // Let the receive itself report what is wrong.
            Err(_) => return true,
            Ok(_) => {}
        }
        if fds.get(1).is_some_and(|f| f.revents().is_some_and(|r| !r.is_empty())) {
            return false;
        }
        if fds[0].revents().is_some_and(|r| !r.is_empty()) {
            return true;
        }
    }
}

/// Whether the peer has closed the connection, without consuming anything
/// and without blocking: a hang-up (or an error) polled for, so that an
/// answer still queued on the socket from before does not make a closed
/// connection look open.
pub fn peer_closed(sock: BorrowedFd<'_>) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(sock, PollFlags::empty())];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(_) => fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL)),
        Err(nix::errno::Errno::EINTR) => false,
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    extern "C" fn nothing(_: libc::c_int) {}

    /// Signals every 20 ms at a receive with a 300 ms timeout, which no
    /// answer ends: it must still end on its timeout, not restart it at
    /// every interruption.
    #[test]
    fn a_receive_interrupted_faster_than_its_timeout_still_times_out() {
        use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
        // No SA_RESTART: each signal ends the blocked call with EINTR.
        let act = SigAction::new(SigHandler::Handler(nothing), SaFlags::empty(), SigSet::empty());
        // SAFETY: the handler does nothing, which is async-signal-safe.
        unsafe { sigaction(Signal::SIGUSR2, &act) }.unwrap();
        let (a, _b) =
            socket::socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).unwrap();
        let tv = nix::sys::time::TimeVal::new(0, 300_000);
        socket::setsockopt(&a, socket::sockopt::ReceiveTimeout, &tv).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let d = done.clone();
        let receiver = std::thread::spawn(move || {
            // SAFETY: pthread_self has no preconditions.
            tx.send(unsafe { libc::pthread_self() }).unwrap();
            let t = Instant::now();
            let r = recv::<serde_json::Value>(a.as_fd(), &mut Vec::new());
            d.store(true, Ordering::Relaxed);
            (r.map(|_| ()), t.elapsed())
        });
        let thread = rx.recv().unwrap();
        let t = Instant::now();
        while !done.load(Ordering::Relaxed) && t.elapsed() < Duration::from_secs(5) {
            // SAFETY: the thread is not joined until after this loop, so its
            // handle stays valid even once it has returned.
            unsafe { libc::pthread_kill(thread, libc::SIGUSR2) };
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(done.load(Ordering::Relaxed), "the receive never timed out: it restarted at every signal");
        let (r, took) = receiver.join().unwrap();
        assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::WouldBlock);
        assert!(took < Duration::from_secs(2), "took {took:?}");
    }

    /// A connection whose peer left, with a packet still queued on it, is
    /// closed all the same.
    #[test]
    fn a_closed_peer_is_seen_past_a_queued_packet() {
        let (a, b) =
            socket::socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).unwrap();
        assert!(!peer_closed(a.as_fd()));
        send(b.as_fd(), &serde_json::json!({"late": true}), None).unwrap();
        assert!(!peer_closed(a.as_fd()));
        drop(b);
        assert!(peer_closed(a.as_fd()));
        // The packet is still there to read.
        assert!(matches!(recv::<serde_json::Value>(a.as_fd(), &mut Vec::new()), Ok(Received::Packet(..))));
    }
}
