//! [`Bus`]: one connection to a daemon, holding the mapped segment.

use crate::control::{self, Received};
use crate::error::{ConnectError, RequestError};
use crate::protocol::{ErrorKind, Reply, Request, Status};
use bus_core::doorbell::Doorbell;
use bus_core::layout::PORTS_PER_CLIENT;
use bus_core::segment::Segment;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest single futex sleep while blocking: after each, the bus's
/// liveness is checked, so a dead daemon is noticed within this time.
pub(crate) const LIVENESS_SLICE: Duration = Duration::from_millis(100);

/// Default number of polls before a blocked receiver or sender parks on a
/// futex (a few microseconds).
pub const DEFAULT_SPINS: u32 = 2_000;

/// A connection to a shmbus daemon. Cheap to clone (shared); `Send + Sync`.
/// Publishers and subscribers are created from it and keep it alive.
#[derive(Clone)]
pub struct Bus {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) seg: Segment,
    pub(crate) client: u32,
    pub(crate) serial: u32,
    bus: String,
    socket: PathBuf,
    control: Mutex<(OwnedFd, Vec<u8>)>,
    ports: Mutex<u32>,
    pub(crate) send_timeout: Duration,
}

/// Builder for [`Bus`].
#[derive(Debug, Clone, Default)]
pub struct BusBuilder {
    bus: Option<String>,
    socket: Option<PathBuf>,
    connect_timeout: Option<Duration>,
    send_timeout: Option<Duration>,
}

impl BusBuilder {
    /// The bus name (default: `$SHMBUS_BUS`, else `default`).
    pub fn name(mut self, bus: impl Into<String>) -> Self {
        self.bus = Some(bus.into());
        self
    }

    /// The daemon's socket (default: see [`crate::addr`]).
    pub fn socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.socket = Some(path.into());
        self
    }

    /// How long to wait for the daemon's answers (default 5 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = Some(d);
        self
    }

    /// How long a blocking send waits for a free slot or queue space
    /// (default 5 s).
    pub fn send_timeout(mut self, d: Duration) -> Self {
        self.send_timeout = Some(d);
        self
    }

    /// Connects.
    pub fn connect(self) -> Result<Bus, ConnectError> {
        let socket = crate::addr::socket_path(self.socket.as_deref(), self.bus.as_deref());
        let timeout = self.connect_timeout.unwrap_or(Duration::from_secs(5));
        let fd = control::connect(&socket).map_err(|e| match e {
            nix::errno::Errno::ENOENT | nix::errno::Errno::ECONNREFUSED => {
                ConnectError::NoDaemon { socket: socket.clone() }
            }
            nix::errno::Errno::EACCES | nix::errno::Errno::EPERM => {
                ConnectError::PermissionDenied { socket: socket.clone() }
            }
            e => ConnectError::Io { socket: socket.clone(), source: e.into() },
        })?;
        set_recv_timeout(&fd, timeout);
        let io = |source: std::io::Error| {
            if matches!(source.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) {
                ConnectError::Timeout { socket: socket.clone(), waited: timeout }
            } else {
                ConnectError::Io { socket: socket.clone(), source }
            }
        };
        // A daemon that refuses us (client table full) says why and closes
        // at once, so our hello may fail: read its answer all the same.
        let sent = control::send(fd.as_fd(), &Request::Hello { layout_version: bus_core::LAYOUT_VERSION }, None);
        let mut buf = Vec::new();
        let (reply, seg_fd) = match (control::recv::<Reply>(fd.as_fd(), &mut buf), sent) {
            (Ok(Received::Packet(r, f)), _) => (r, f),
            (_, Err(e)) => return Err(io(e)),
            (Ok(Received::Closed), Ok(())) => {
                return Err(ConnectError::Refused { message: "the daemon closed the connection".into() })
            }
            (Err(e), Ok(())) => return Err(io(e)),
        };
        let (client, serial, bus) = match reply {
            Reply::Welcome { client, serial, bus } => (client, serial, bus),
            Reply::Error { kind: ErrorKind::VersionMismatch, message } => {
                let found = message.split_whitespace().filter_map(|w| w.parse().ok()).next().unwrap_or(0);
                return Err(ConnectError::VersionMismatch { found, expected: bus_core::LAYOUT_VERSION });
            }
            Reply::Error { message, .. } => return Err(ConnectError::Refused { message }),
            other => return Err(ConnectError::Protocol { detail: format!("expected welcome, got {other:?}") }),
        };
        let seg_fd =
            seg_fd.ok_or_else(|| ConnectError::Protocol { detail: "welcome came without the segment".into() })?;
        let seg = Segment::open(seg_fd)?;
        if client >= seg.params().max_clients {
            return Err(ConnectError::Protocol { detail: format!("client index {client} out of range") });
        }
        Ok(Bus {
            inner: Arc::new(Inner {
                seg,
                client,
                serial,
                bus,
                socket,
                control: Mutex::new((fd, buf)),
                ports: Mutex::new(0),
                send_timeout: self.send_timeout.unwrap_or(Duration::from_secs(5)),
            }),
        })
    }
}

fn set_recv_timeout(fd: &OwnedFd, d: Duration) {
    let tv = nix::sys::time::TimeVal::new(d.as_secs() as _, d.subsec_micros() as _);
    let _ = nix::sys::socket::setsockopt(fd, nix::sys::socket::sockopt::ReceiveTimeout, &tv);
}

impl Bus {
    /// Connects to the default bus (see [`crate::addr`]).
    pub fn connect() -> Result<Bus, ConnectError> {
        BusBuilder::default().connect()
    }

    /// A builder to choose bus, socket and timeouts.
    pub fn builder() -> BusBuilder {
        BusBuilder::default()
    }

    /// The bus name.
    pub fn name(&self) -> &str {
        &self.inner.bus
    }

    /// The daemon's socket path.
    pub fn socket_path(&self) -> &Path {
        &self.inner.socket
    }

    /// Slot size in bytes (header included).
    pub fn slot_size(&self) -> usize {
        self.inner.seg.params().slot_size as usize
    }

    /// Largest body that fits a slot with a path of `path_len` bytes.
    pub fn body_capacity(&self, path_len: usize) -> usize {
        self.inner.seg.params().body_capacity(path_len)
    }

    /// Asks the daemon for the bus status.
    pub fn status(&self) -> Result<Status, RequestError> {
        match self.inner.request(&Request::Status)? {
            Reply::Status(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    /// Asks the daemon to shut down. Every client then gets `BusGone`.
    pub fn shutdown_daemon(&self) -> Result<(), RequestError> {
        match self.inner.request(&Request::Shutdown)? {
            Reply::ShuttingDown => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Whether the daemon is still there.
    pub fn is_alive(&self) -> bool {
        self.inner.alive()
    }
}

pub(crate) fn unexpected(r: Reply) -> RequestError {
    match r {
        Reply::Error { kind, message } => RequestError::Daemon { kind, message },
        other => RequestError::Io(std::io::Error::other(format!("unexpected reply {other:?}"))),
    }
}

impl Inner {
    pub(crate) fn request(&self, req: &Request) -> Result<Reply, RequestError> {
        let mut guard = self.control.lock().unwrap_or_else(|p| p.into_inner());
        let (fd, buf) = &mut *guard;
        let gone = |e: std::io::Error| {
            if matches!(e.raw_os_error(), Some(libc_epipe) if libc_epipe == nix::errno::Errno::EPIPE as i32 || libc_epipe == nix::errno::Errno::ECONNRESET as i32)
            {
                RequestError::BusGone
            } else {
                RequestError::Io(e)
            }
        };
        control::send(fd.as_fd(), req, None).map_err(gone)?;
        match control::recv::<Reply>(fd.as_fd(), buf).map_err(gone)? {
            Received::Packet(r, _) => Ok(r),
            Received::Closed => Err(RequestError::BusGone),
        }
    }

    /// Whether the daemon is running: it has not marked the segment stopped
    /// and has not closed our connection (it was not killed).
    pub(crate) fn alive(&self) -> bool {
        if !self.seg.daemon_running() {
            return false;
        }
        match self.control.try_lock() {
            Ok(g) => !control::peer_closed(g.0.as_fd()),
            // Someone is mid-request; they will see a dead daemon themselves.
            Err(_) => true,
        }
    }

    pub(crate) fn claim_port(&self) -> Result<u32, RequestError> {
        let mut used = self.ports.lock().unwrap_or_else(|p| p.into_inner());
        let free = (!*used).trailing_zeros();
        if free as usize >= PORTS_PER_CLIENT {
            return Err(RequestError::TooManyPorts(PORTS_PER_CLIENT));
        }
        *used |= 1 << free;
        Ok(free)
    }

    pub(crate) fn release_port(&self, port: u32) {
        let mut used = self.ports.lock().unwrap_or_else(|p| p.into_inner());
        *used &= !(1 << port);
    }

    /// Blocks until `attempt` yields a value, `timeout` passes (`Ok(None)`)
    /// or the daemon is gone (`Err(())`). Spins first, then sleeps on `bell`
    /// in slices of at most [`LIVENESS_SLICE`].
    pub(crate) fn wait_on<T>(
        &self,
        bell: &Doorbell,
        timeout: Option<Duration>,
        spins: u32,
        mut attempt: impl FnMut() -> Option<T>,
    ) -> Result<Option<T>, ()> {
        // Read the clock only once polling has found nothing: a receiver that
        // keeps up makes no clock call. (The timeout thus starts after the
        // few microseconds of polling.)
        for _ in 0..=spins {
            if let Some(v) = attempt() {
                return Ok(Some(v));
            }
            std::hint::spin_loop();
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if !self.alive() {
                return Err(());
            }
            let slice = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Ok(None);
                    }
                    (d - now).min(LIVENESS_SLICE)
                }
                None => LIVENESS_SLICE,
            };
            let seen = bell.announce();
            if let Some(v) = attempt() {
                bell.retire();
                return Ok(Some(v));
            }
            bell.sleep(seen, Some(slice));
            if let Some(v) = attempt() {
                return Ok(Some(v));
            }
        }
    }
}
