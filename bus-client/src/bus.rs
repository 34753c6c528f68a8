//! [`Bus`]: one connection to a daemon, holding the mapped segment.

use crate::control::{self, Received};
use crate::error::{ConnectError, RequestError, Unusable};
use crate::protocol::{ErrorKind, Reply, Request, Status};
use bus_core::doorbell::Sleeper;
use bus_core::layout::{CLIENT_ACTIVE, PORTS_PER_CLIENT};
use bus_core::segment::Segment;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest single futex sleep while blocking: after each, the bus's
/// liveness is checked, so a dead daemon is noticed within this time.
pub(crate) const LIVENESS_SLICE: Duration = Duration::from_millis(50);

/// Default number of polls before a blocked receiver or sender parks on a
/// futex (a few microseconds).
pub const DEFAULT_SPINS: u32 = 2_000;

/// Default number of CPU pause hints between two polls of an empty queue
/// while spinning (see [`crate::Subscriber::set_poll_pause`]).
pub const DEFAULT_POLL_PAUSE: u32 = 1;

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
    /// The control connection (see [`crate::link`]); the watcher thread
    /// holds it too. (`client`, `serial` and `gone` above and below are
    /// copies of the link's, kept here so that the hot path reads them
    /// without a second pointer.)
    pub(crate) link: Arc<crate::link::Link>,
    ports: Mutex<u32>,
    /// Reply queue names of this client whose subscription ended (the
    /// daemon has processed the unsubscribe): the next requester, pipeline
    /// or asynchronous reply queue takes one of them instead of a new name,
    /// so that requesters made and dropped in a loop (`Bus::request`) keep
    /// reusing a few routing entries instead of filling the table with
    /// entries that wait to be recycled. At most [`REPLY_NAMES_KEPT`].
    pub(crate) free_reply_names: Mutex<Vec<String>>,
    pub(crate) send_timeout: Duration,
    /// Whether this client counts the slots it holds: it connected under
    /// a quota. How many it holds (see [`Inner::allowance`]); the quota
    /// itself is the link's (`link.settings`), since the next daemon may
    /// change it.
    counting: bool,
    owned: AtomicU32,
    /// Set by the watcher thread once the daemon's end of the control
    /// connection closed (it stopped or was killed).
    gone: Arc<AtomicBool>,
    /// [`FORKS`] when this connection was made: a different value means we
    /// are a forked child of the process that connected.
    forks: u64,
    /// The watcher thread and the eventfd that stops it.
    watcher: Option<(std::thread::JoinHandle<()>, OwnedFd)>,
}

/// Forks this process has gone through (incremented in the child by a
/// `pthread_atfork` handler): a process-local word, so checking it costs a
/// load, not a `getpid()` system call.
static FORKS: AtomicU64 = AtomicU64::new(0);

/// How many forks this process has gone through (see [`FORKS`]).
pub(crate) fn fork_count() -> u64 {
    FORKS.load(Ordering::Relaxed)
}

/// The control sockets of this process's connections (-1: unused entry).
/// A forked child must not keep them open: the daemon learns that a client
/// died when its socket closes, and a child holding a copy (fork without
/// exec) would hide the parent's death until the child exits.
static CONTROL_FDS: [AtomicI32; 64] = [const { AtomicI32::new(-1) }; 64];

pub(crate) fn register_control_fd(fd: i32) {
    // A process with more than 64 connections at once: the others are not
    // covered (documented at `Bus`), nothing worse.
    let _ = CONTROL_FDS.iter().find(|e| e.compare_exchange(-1, fd, Ordering::Relaxed, Ordering::Relaxed).is_ok());
}

pub(crate) fn unregister_control_fd(fd: i32) {
    let _ = CONTROL_FDS.iter().find(|e| e.compare_exchange(fd, -1, Ordering::Relaxed, Ordering::Relaxed).is_ok());
}

/// Runs in the child right after `fork()`: counts the fork, and puts
/// `/dev/null` in place of every registered control socket (the numbers
/// stay valid, so the child's destructors close what they expect; the
/// parent's sockets are then held by the parent alone). Only
/// async-signal-safe calls.
extern "C" fn count_fork_in_child() {
    FORKS.fetch_add(1, Ordering::Relaxed);
    // SAFETY: open, dup3 and close on descriptors this process owns; the
    // path is a NUL-terminated literal.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if null < 0 {
            return;
        }
        for e in &CONTROL_FDS {
            let fd = e.load(Ordering::Relaxed);
            if fd >= 0 && fd != null {
                libc::dup3(null, fd, libc::O_CLOEXEC);
            }
        }
        libc::close(null);
    }
}

fn install_fork_counter() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers a handler that only increments an atomic and
        // calls open, dup3 and close, all async-signal-safe, as code run in
        // a freshly forked child must be.
        unsafe { libc::pthread_atfork(None, None, Some(count_fork_in_child)) };
    });
}

/// Builder for [`Bus`].
#[derive(Debug, Clone, Default)]
pub struct BusBuilder {
    bus: Option<String>,
    socket: Option<PathBuf>,
    connect_timeout: Option<Duration>,
    send_timeout: Option<Duration>,
    trusted_uids: Vec<u32>,
    client_name: Option<String>,
}

/// This program's name as the daemon shows it when it sets none: its
/// executable's file name.
fn program_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "?".into())
}

/// Whether a daemon running as `uid` may serve us: root, our own uid, one
/// given to the builder, or one in [`crate::addr::ENV_DAEMON_UID`].
pub(crate) fn trusted_daemon(uid: u32, extra: &[u32]) -> bool {
    uid == 0
        || uid == nix::unistd::geteuid().as_raw()
        || extra.contains(&uid)
        || std::env::var(crate::addr::ENV_DAEMON_UID)
            .ok()
            .is_some_and(|v| v.split(',').any(|u| u.trim().parse::<u32>().ok() == Some(uid)))
}

impl BusBuilder {
    /// The bus to connect to, by name (default: `$SHMBUS_BUS`, else
    /// `default`; see [`crate::addr`]).
    pub fn bus(mut self, bus: impl Into<String>) -> Self {
        self.bus = Some(bus.into());
        self
    }

    /// This client's name, shown by `shmbus status`, `shmbus top` and the
    /// metrics (default: the executable's file name). At most 64 bytes.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.client_name = Some(name.into());
        self
    }

    /// The daemon's socket (default: see [`crate::addr`]).
    pub fn socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.socket = Some(path.into());
        self
    }

    /// How long to wait for the daemon's answers (default 5 s). Taken as at
    /// least 1 ms (the socket's receive timeout has no "do not wait": zero
    /// there means forever) and at most [`u32::MAX`] seconds.
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

    /// Also trusts a daemon running as `uid` (by default, only one running
    /// as root or as this process's user, or a uid in `$SHMBUS_DAEMON_UID`).
    /// The daemon's uid is checked with `SO_PEERCRED` before anything is
    /// sent: a socket served by another user could read every message.
    pub fn trust_daemon_uid(mut self, uid: u32) -> Self {
        self.trusted_uids.push(uid);
        self
    }

    /// Connects.
    pub fn connect(self) -> Result<Bus, ConnectError> {
        let socket = crate::addr::find_socket(self.socket.as_deref(), self.bus.as_deref());
        let timeout = self
            .connect_timeout
            .unwrap_or(Duration::from_secs(5))
            .clamp(Duration::from_millis(1), Duration::from_secs(u32::MAX as u64));
        // The whole connect, including a restarting daemon's wait.
        let deadline = Instant::now() + timeout;
        let fd = control::connect(&socket, crate::bus::deadline_in(timeout)).map_err(|e| match e {
            nix::errno::Errno::EAGAIN => ConnectError::Timeout { socket: socket.clone(), waited: timeout },
            nix::errno::Errno::ENOENT => ConnectError::NoDaemon { socket: socket.clone() },
            nix::errno::Errno::ECONNREFUSED => {
                use std::os::unix::fs::FileTypeExt;
                match std::fs::metadata(&socket) {
                    Ok(m) if !m.file_type().is_socket() => ConnectError::NotASocket { socket: socket.clone() },
                    _ => ConnectError::NoDaemon { socket: socket.clone() },
                }
            }
            nix::errno::Errno::EACCES | nix::errno::Errno::EPERM => {
                ConnectError::PermissionDenied { socket: socket.clone() }
            }
            nix::errno::Errno::EINVAL | nix::errno::Errno::ENAMETOOLONG => ConnectError::Io {
                socket: socket.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "not a usable socket path: it is empty, or longer than the 107 bytes a Unix socket address holds",
                ),
            },
            e => ConnectError::Io { socket: socket.clone(), source: e.into() },
        })?;
        match nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::PeerCredentials) {
            Ok(c) if trusted_daemon(c.uid(), &self.trusted_uids) => {}
            Ok(c) => return Err(ConnectError::UntrustedDaemon { socket: socket.clone(), uid: c.uid() }),
            Err(e) => return Err(ConnectError::Io { socket: socket.clone(), source: e.into() }),
        }
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
        let mut client_name = self.client_name.clone().unwrap_or_else(program_name);
        while client_name.len() > 64 {
            client_name.pop();
        }
        let sent = control::send(
            fd.as_fd(),
            &Request::Hello {
                layout_version: bus_core::LAYOUT_VERSION,
                resume: None,
                name: Some(client_name.clone()),
                waits: true,
            },
            None,
        );
        let mut buf = Vec::new();
        // A restarting daemon says so first, and welcomes us when its wait
        // for its predecessor's clients ends: we wait for that within our
        // own timeout, and say why if it runs out.
        let mut restarting = None;
        let received = loop {
            match control::recv::<Reply>(fd.as_fd(), &mut buf) {
                Ok(Received::Packet(Reply::Restarting { wait_ms }, _)) => {
                    restarting = Some(Duration::from_millis(wait_ms));
                    // Under a millisecond is "no time left": a receive
                    // timeout that rounds to zero would wait forever.
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left < Duration::from_millis(1) {
                        break Err(std::io::ErrorKind::TimedOut.into());
                    }
                    set_recv_timeout(&fd, left);
                }
                other => break other,
            }
        };
        if restarting.is_some() {
            set_recv_timeout(&fd, timeout);
        }
        let fail = |source: std::io::Error| match restarting {
            Some(up_to) if matches!(source.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                ConnectError::Restarting { socket: socket.clone(), waited: timeout, up_to }
            }
            _ => io(source),
        };
        let (reply, seg_fd) = match (received, sent) {
            (Ok(Received::Packet(r, f)), _) => (r, f),
            (_, Err(e)) => return Err(fail(e)),
            (Ok(Received::Closed), Ok(())) => {
                return Err(ConnectError::Refused { message: "the daemon closed the connection".into() })
            }
            (Err(e), Ok(())) => return Err(fail(e)),
        };
        let (client, serial, bus, shape, quota, grace_ms, statistics) = match reply {
            Reply::Welcome { client, serial, bus, shape, quota, resume_grace_ms, statistics } => {
                (client, serial, bus, shape, quota, resume_grace_ms, statistics)
            }
            Reply::Error { kind: ErrorKind::VersionMismatch, message } => {
                let found = message.split_whitespace().filter_map(|w| w.parse().ok()).next().unwrap_or(0);
                return Err(ConnectError::VersionMismatch { found, expected: bus_core::LAYOUT_VERSION });
            }
            Reply::Error { kind: ErrorKind::PermissionDenied, message } => {
                return Err(ConnectError::NotAllowed { message })
            }
            Reply::Error { message, .. } => return Err(ConnectError::Refused { message }),
            other => return Err(ConnectError::Protocol { detail: format!("expected welcome, got {other:?}") }),
        };
        let seg_fd =
            seg_fd.ok_or_else(|| ConnectError::Protocol { detail: "welcome came without the segment".into() })?;
        let seg = Segment::open(seg_fd)?;
        if let Some(expected) = shape {
            let found = crate::protocol::SegmentShape::of(seg.params());
            if found != expected {
                return Err(ConnectError::Protocol {
                    detail: format!(
                        "the segment's header says {found:?}, the daemon {expected:?}: another process overwrote it; \
                         connect again (the daemon repairs the header), and find the process that writes garbage"
                    ),
                });
            }
        }
        if client >= seg.params().max_clients {
            return Err(ConnectError::Protocol { detail: format!("client index {client} out of range") });
        }
        install_fork_counter();
        let io_err = |source| ConnectError::Io { socket: socket.clone(), source };
        let seg_fd = seg.fd().try_clone_to_owned().map_err(io_err)?;
        let control_raw = fd.as_raw_fd();
        register_control_fd(control_raw);
        let link = crate::link::Link::new(crate::link::LinkParts {
            socket: socket.clone(),
            fd,
            buf,
            client,
            serial,
            generation: seg.params().bus_generation,
            settings: crate::link::Settings::new(quota, statistics, grace_ms),
            trusted: self.trusted_uids,
            timeout,
            seg_fd,
            name: client_name,
            daemon_state: &seg.header().live.daemon_state,
        });
        let link = match link {
            Ok(l) => Arc::new(l),
            Err(e) => {
                // The connection closed with the parts: forget its number.
                unregister_control_fd(control_raw);
                return Err(io_err(e));
            }
        };
        let gone = link.gone.clone();
        let watching = link.clone();
        let started = stop_event().and_then(|(stop_r, stop_w)| {
            std::thread::Builder::new()
                .name("shmbus-watch".into())
                .spawn(move || watching.watch(stop_r))
                .map(|h| (h, stop_w))
        });
        let (handle, stop_w) = match started {
            Ok(x) => x,
            Err(e) => {
                // The connection closes with `link`: forget its number, or
                // a fork would later replace whatever reuses it.
                unregister_control_fd(link.control_raw());
                return Err(io_err(e));
            }
        };
        Ok(Bus {
            inner: Arc::new(Inner {
                seg,
                client,
                serial,
                bus,
                link,
                ports: Mutex::new(0),
                free_reply_names: Mutex::new(Vec::new()),
                counting: quota != 0,
                owned: AtomicU32::new(0),
                send_timeout: self.send_timeout.unwrap_or(Duration::from_secs(5)),
                gone,
                forks: FORKS.load(Ordering::Relaxed),
                watcher: Some((handle, stop_w)),
            }),
        })
    }
}

pub(crate) fn set_recv_timeout(fd: &OwnedFd, d: Duration) {
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
        &self.inner.link.socket
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

    /// Whether the daemon is still there (and this process may use the
    /// connection: not a forked child of the one that connected).
    pub fn is_alive(&self) -> bool {
        self.inner.alive().is_ok()
    }
}

pub(crate) fn unexpected(r: Reply) -> RequestError {
    match r {
        Reply::Error { kind: ErrorKind::PermissionDenied, message } => RequestError::PermissionDenied { message },
        Reply::Error { kind, message } => RequestError::Daemon { kind, message },
        other => RequestError::Io(std::io::Error::other(format!("unexpected reply {other:?}"))),
    }
}

/// Subsystems whose publish rights a connection remembers at most.
const MAX_PUBLISH_RIGHTS: usize = 1024;

impl Inner {
    /// A control request: waits for the answer, and across a daemon
    /// restart for the next daemon (see [`crate::link`]).
    pub(crate) fn request(&self, req: &Request) -> Result<Reply, RequestError> {
        self.usable()?;
        self.link.request(req)
    }

    /// Whether the daemon's access policy lets this client send to
    /// `subsystem` (whose routing entry is marked restricted, or which
    /// nobody receives): asked once per connection and subsystem, then
    /// answered from memory.
    pub(crate) fn may_publish(&self, subsystem: &str) -> Result<(), crate::SendError> {
        let denied = |message: String| crate::SendError::PermissionDenied { message };
        {
            let rights = self.link.publish_rights.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, r)) = rights.iter().find(|(s, _)| s == subsystem) {
                return r.clone().map_err(denied);
            }
        }
        let answer = match self.request(&Request::MayPublish { subsystem: subsystem.to_owned() }) {
            Ok(Reply::MayPublish) => Ok(()),
            Ok(Reply::Error { kind: ErrorKind::PermissionDenied, message }) => Err(message),
            Ok(other) => return Err(crate::SendError::Protocol { detail: format!("{:?}", unexpected(other)) }),
            Err(RequestError::BusGone) => return Err(crate::SendError::BusGone),
            Err(RequestError::Forked) => return Err(crate::SendError::Forked),
            Err(e) => return Err(crate::SendError::Protocol { detail: e.to_string() }),
        };
        let mut rights = self.link.publish_rights.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: a client that tries endless names asks again, rather
        // than growing this without end.
        if rights.len() >= MAX_PUBLISH_RIGHTS {
            rights.clear();
        }
        rights.push((subsystem.to_owned(), answer.clone()));
        answer.map_err(denied)
    }

    /// How many more slots this client may take under its quota
    /// (`max-slots-per-client`: its loaned, cached and received slots
    /// together; replies to its own requests, bounded by its windows, are
    /// not counted). `u32::MAX` without a quota, and then nothing is
    /// counted at all. The count is process-local and Relaxed: a quota
    /// keeps a well-behaved client from draining the pool (the trust
    /// domain is the bus), so it may be overshot by as many threads as
    /// take slots at the same instant.
    #[inline]
    pub(crate) fn allowance(&self) -> u32 {
        if !self.counting {
            return u32::MAX;
        }
        self.quota().saturating_sub(self.owned.load(Ordering::Relaxed))
    }

    /// Slots this client may hold at once (0: no quota; a client that
    /// connected without one is never given one, see `Settings::resumed`).
    #[inline]
    pub(crate) fn quota(&self) -> u32 {
        self.link.settings.quota()
    }

    /// Whether to keep statistics (the daemon's setting).
    #[inline]
    pub(crate) fn statistics(&self) -> bool {
        self.link.settings.statistics()
    }

    /// This client took `n` slots (counted under a quota only).
    #[inline]
    pub(crate) fn took(&self, n: usize) {
        if self.counting && n > 0 {
            self.owned.fetch_add(n as u32, Ordering::Relaxed);
        }
    }

    /// This client gave up `n` slots (counted under a quota only).
    #[inline]
    pub(crate) fn gave(&self, n: usize) {
        if self.counting && n > 0 {
            self.owned.fetch_sub(n as u32, Ordering::Relaxed);
        }
    }

    /// Whether this connection may be used: the daemon has not closed our
    /// connection (it stopped or was killed: the watcher thread saw the
    /// hang-up), our client entry is still ours ([`Inner::entry_lost`]),
    /// and we are not a forked child. Two loads of process-local words and
    /// two of a line only the daemon writes: no system call.
    #[inline(always)]
    pub(crate) fn usable(&self) -> Result<(), Unusable> {
        if FORKS.load(Ordering::Relaxed) != self.forks {
            return Err(Unusable::Forked);
        }
        if self.gone.load(Ordering::Relaxed) {
            return Err(Unusable::Gone);
        }
        // Not marked gone for good: the watcher decides that (the
        // resumption it tries is refused).
        if self.entry_lost() {
            return Err(Unusable::Gone);
        }
        Ok(())
    }

    /// Whether this client's entry in the segment is no longer its own: a
    /// daemon that took over the bus reclaimed it (this process could not
    /// run for the whole resume grace: stopped, say), and may have given it
    /// to another client since. Everything this client held was taken back
    /// then, so it must touch none of it: its watcher may not have seen the
    /// refusal yet when its threads run again (the slots its messages held
    /// may be other clients' messages by now). The daemon writes the entry
    /// only at connect and at reclaim, so the line stays in this CPU's
    /// cache. What is left: a thread stopped between this check and its
    /// write for a whole grace (docs/design.md, the dead daemon).
    #[inline]
    pub(crate) fn entry_lost(&self) -> bool {
        let Some(info) = self.seg.client_info(self.client) else { return true };
        // SYNC: client-entry — Acquire pairs with the reaper's Release
        // store of RECLAIMING (and with the Release store of ACTIVE at
        // connect, after the serial).
        if info.state.load(Ordering::Acquire) == CLIENT_ACTIVE && info.serial.load(Ordering::Relaxed) == self.serial {
            return false;
        }
        self.reclaimed()
    }

    /// The rare path of [`Inner::entry_lost`]: the entry is not ours. The
    /// daemon reclaims a client only once its connection has closed, so a
    /// connection still open means a faulty process overwrote the entry
    /// (the daemon's audit puts it back): this client carries on, its
    /// releases included. A closed one (or a bus already gone) means it
    /// was reclaimed. One system call, on this path only.
    #[cold]
    #[inline(never)]
    fn reclaimed(&self) -> bool {
        self.gone.load(Ordering::Relaxed) || self.link.hung_up()
    }

    /// Whether this process must leave the slots and ports of this
    /// connection alone: it is a forked child of the process that
    /// connected, or the daemon reclaimed this client
    /// ([`Inner::entry_lost`]). For destructors.
    #[inline]
    pub(crate) fn detached(&self) -> bool {
        self.forked() || self.entry_lost()
    }

    /// [`Inner::usable`], and the control socket itself says the daemon's
    /// end is open (a non-blocking peek: one system call), for the slow
    /// path, between sleeps. It covers a watcher thread that has not run
    /// yet (starved by busy threads of higher priority), without trusting
    /// the segment's stopped state, which any process could write.
    pub(crate) fn alive(&self) -> Result<(), Unusable> {
        self.usable()?;
        if !self.link.settings.grace().is_zero() {
            // A closed connection is no verdict under a resume grace: the
            // watcher thread resumes, or marks the bus gone.
            return Ok(());
        }
        // SAFETY: without a grace the connection is never swapped, and it
        // is closed only when `Inner` is dropped.
        let fd = unsafe { BorrowedFd::borrow_raw(self.link.control_raw()) };
        if control::peer_closed(fd) {
            self.link.mark_gone();
            return Err(Unusable::Gone);
        }
        Ok(())
    }

    /// Whether we are a forked child of the process that connected: then
    /// destructors must not touch the parent's slots or connection.
    #[inline]
    pub(crate) fn forked(&self) -> bool {
        FORKS.load(Ordering::Relaxed) != self.forks
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

    /// Blocks until `attempt` yields a value, the deadline passes
    /// (`Ok(None)`) or the daemon is gone (`Err(())`). Spins first (`spins`
    /// more tries, with `pause` CPU pause hints after each empty one), then
    /// sleeps on `bell` in slices of at most [`LIVENESS_SLICE`]. The
    /// deadline (`None`: none) is asked for only once spinning found
    /// nothing.
    pub(crate) fn wait_on<T>(
        &self,
        bell: &Sleeper<'_>,
        deadline: impl FnOnce() -> Option<Instant>,
        (spins, pause): (u32, u32),
        mut attempt: impl FnMut() -> Option<T>,
    ) -> Result<Option<T>, Unusable> {
        // Read the clock only once polling has found nothing: a receiver that
        // keeps up makes no clock call. (The timeout thus starts after the
        // few microseconds of polling.) With more than one pause between
        // polls, spinning can last milliseconds: the deadline is then read
        // at the first empty poll and holds within the spinning too (a
        // clock read is cheap next to the pauses).
        let mut deadline = Some(deadline);
        let mut due: Option<Option<Instant>> = None;
        for _ in 0..=spins {
            if let Some(v) = attempt() {
                return Ok(Some(v));
            }
            if pause > 1 {
                let d = *due.get_or_insert_with(|| deadline.take().and_then(|f| f()));
                if d.is_some_and(|d| Instant::now() >= d) {
                    return Ok(None);
                }
            }
            for _ in 0..pause {
                std::hint::spin_loop();
            }
        }
        let deadline = match due {
            Some(d) => d,
            None => deadline.take().and_then(|f| f()),
        };
        loop {
            self.alive()?;
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
            bus_core::crash_point!(DoorbellAnnounced);
            if let Some(v) = attempt() {
                bell.retire();
                return Ok(Some(v));
            }
            bell.sleep(seen, Some(slice));
            // A thread that slept through a stop of the process past a
            // restart's grace: the client was reclaimed meanwhile, and
            // what `attempt` would take or push is not ours to touch.
            if self.entry_lost() {
                return Err(Unusable::Gone);
            }
            if let Some(v) = attempt() {
                return Ok(Some(v));
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let Some((handle, stop)) = self.watcher.take() else { return };
        if self.forked() {
            // The watcher thread lives in the parent only, and the eventfd is
            // shared with it: neither is ours to touch.
            std::mem::forget(handle);
            std::mem::forget(stop);
            return;
        }
        // An eventfd, not a pipe: a pipe whose reader (the watcher) has
        // already ended would raise SIGPIPE here, which kills a program that
        // keeps its default action (a C program, say).
        let _ = nix::unistd::write(&stop, &1u64.to_ne_bytes());
        let _ = handle.join();
        unregister_control_fd(self.link.control_raw());
    }
}

/// The watcher's stop signal: an eventfd (readable once written to), as
/// two descriptors, the watcher's and the writer's.
fn stop_event() -> std::io::Result<(OwnedFd, OwnedFd)> {
    // SAFETY: eventfd takes no pointers; a non-negative result is a new
    // descriptor that nothing else owns.
    let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    let writer = fd.try_clone()?;
    Ok((fd, writer))
}

/// Most reply queue names a client keeps for reuse (see
/// `Inner::free_reply_names`).
pub(crate) const REPLY_NAMES_KEPT: usize = 16;

/// The deadline `timeout` from now (`None`: no deadline).
pub(crate) fn after(timeout: Option<Duration>) -> Option<Instant> {
    timeout.map(deadline_in)
}

/// The instant `t` from now; for a `t` beyond what the clock can hold
/// (`Duration::MAX`, say), a century from now.
pub(crate) fn deadline_in(t: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(t).unwrap_or(now + Duration::from_secs(100 * 365 * 86_400))
}
