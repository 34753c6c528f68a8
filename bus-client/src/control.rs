//! The control connection: a `SOCK_SEQPACKET` Unix socket carrying
//! [`crate::protocol`] packets. Both the client and the daemon use these
//! helpers.

use crate::protocol::MAX_PACKET;
use nix::sys::socket::{
    self, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
};
use serde::{de::DeserializeOwned, Serialize};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// Connects to the daemon's socket at `path`.
pub fn connect(path: &Path) -> nix::Result<OwnedFd> {
    let fd = socket::socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None)?;
    socket::connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    Ok(fd)
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
    let mut cmsg = nix::cmsg_space!([RawFd; 2]);
    let (len, fds) = {
        let mut iov = [IoSliceMut::new(buf)];
        // A socket with a receive timeout is not restarted after an
        // interruption: a signal, or io_uring task work (an asynchronous
        // wait's completion, which the kernel delivers to this thread), ends
        // the call with EINTR. Giving up there would leave the answer
        // unread, and the next request would read it as its own: retry.
        let msg = loop {
            match socket::recvmsg::<UnixAddr>(
                sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC | flags,
            ) {
                Err(nix::errno::Errno::EINTR) => continue,
                r => break r?,
            }
        };
        let mut fds = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(rs) = c {
                // SAFETY: the kernel just installed these descriptors in our
                // table for us (SCM_RIGHTS); nothing else owns them.
                fds.extend(rs.into_iter().map(|r| unsafe { OwnedFd::from_raw_fd(r) }));
            }
        }
        (msg.bytes, fds)
    };
    if len == 0 {
        return Ok(Received::Closed);
    }
    let value = serde_json::from_slice(&buf[..len])
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("malformed control packet: {e}")))?;
    Ok(Received::Packet(value, fds.into_iter().next()))
}

/// Whether the peer has closed the connection, without consuming anything
/// and without blocking.
pub fn peer_closed(sock: BorrowedFd<'_>) -> bool {
    let mut b = [0u8; 1];
    match socket::recv(sock.as_fd().as_raw_fd(), &mut b, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT) {
        Ok(0) => true,
        Ok(_) => false,
        Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => false,
        Err(_) => true,
    }
}
