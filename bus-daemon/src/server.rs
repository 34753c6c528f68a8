//! The daemon's event loop: accepts clients on the control socket, answers
//! their requests, and reclaims a client the moment its connection closes.
//! Single-threaded: the control plane is rare, and one thread is the only
//! writer of the routing table and the client table.

use crate::config::Config;
use crate::reaper::Reaper;
use bus_client::control::{self, Received};
use bus_client::protocol::{ClientStatus, ErrorKind, Reply, Request};
use bus_core::layout::{
    CLIENT_ACTIVE, CLIENT_FREE, DAEMON_STOPPED, MAX_GROUPS, ROUTE_DURABLE, ROUTE_EPHEMERAL, ROUTE_LOSSY,
    ROUTE_RESTRICTED,
};
use bus_core::routing::{self, Expected, Kind};
use bus_core::segment::Segment;
use bus_core::slot_pool::Group;
use bus_core::LAYOUT_VERSION;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, UnixAddr};
use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

mod resume;
use crate::path_lock::{LockError, PathLock};
use resume::Ghost;

/// Why the daemon could not start or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// Another daemon serves this socket.
    #[error("another shmbusd is already serving {}: stop it first, or choose another --bus or --socket", socket.display())]
    AlreadyRunning {
        /// The socket.
        socket: PathBuf,
    },
    /// The directory of the socket could be tampered with by another user.
    #[error("refusing the runtime directory {}: {why}; remove it (the daemon creates it), fix it, or choose another --socket", dir.display())]
    UnsafeRuntimeDir {
        /// The directory.
        dir: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// Something other than a socket (a file, a directory, a symbolic
    /// link) is at the socket's path: the daemon never removes it.
    #[error("{} exists and is not a socket (it is {what}): the daemon only replaces a stale socket; choose another --socket, or move it away", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
        /// What is there.
        what: &'static str,
    },
    /// The configuration is invalid.
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    /// The segment could not be created.
    #[error("cannot create the bus segment: {0}")]
    Segment(#[from] bus_core::SegmentError),
    /// Stopped (SIGTERM, SIGINT, or a stop request) while waiting for a
    /// client of the previous daemon to bring its segment back: nothing was
    /// served, and the segment and its record are left for the next
    /// daemon.
    #[error(
        "stopped while waiting for the previous daemon's clients to resume; its segment is left for the next daemon"
    )]
    StoppedWhileWaiting,
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> DaemonError {
    let what = what.into();
    move |e| DaemonError::Io { what, source: e.into() }
}

/// A connection refused, waiting to be told why (see `Server::refused`).
struct Refusal {
    fd: OwnedFd,
    since: std::time::Instant,
    kind: ErrorKind,
    message: String,
}

/// Refused connections kept at once to be told why; beyond this, a
/// connection is closed unanswered (a connect flood).
const REFUSALS_KEPT: usize = 256;

struct Conn {
    fd: OwnedFd,
    /// Who it is (`SO_PEERCRED` and `/proc`), for the access policy.
    peer: crate::access::Peer,
    client: u32,
    /// The connection's serial (the copy in the segment is for status
    /// readers; this one is what the daemon trusts).
    serial: u32,
    pid: u32,
    uid: u32,
    /// The peer's gid (`SO_PEERCRED`).
    gid: u32,
    welcomed: bool,
    /// When it was accepted: one that has not said hello within
    /// [`HELLO_TIMEOUT`] is closed, so that silent connections cannot hold
    /// the client table.
    since: std::time::Instant,
    /// Keyed by the entry of a client that has not resumed yet (a ghost)
    /// with this connection's pid, because the table had no free entry: it
    /// may only resume that client (see `Server::admit`).
    borrowed: bool,
    subscriptions: Vec<Sub>,
    /// Taps this connection created (their names are numbered).
    taps: u32,
    /// The client's name (its own, or its executable's).
    name: String,
}

impl Conn {
    fn new(
        fd: OwnedFd,
        peer: crate::access::Peer,
        client: u32,
        serial: u32,
        (pid, uid, gid): (u32, u32, u32),
        borrowed: bool,
    ) -> Conn {
        let name =
            std::fs::read_to_string(format!("/proc/{pid}/comm")).map(|s| s.trim().to_owned()).unwrap_or_default();
        let since = std::time::Instant::now();
        Conn {
            fd,
            peer,
            client,
            serial,
            pid,
            uid,
            gid,
            welcomed: false,
            since,
            borrowed,
            subscriptions: Vec::new(),
            taps: 0,
            name,
        }
    }
}

/// How long an accepted connection may take to say hello (and a refused
/// one to send the packet its refusal answers) before it is closed.
pub(crate) const HELLO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long the daemon stops accepting after `accept` failed for want of
/// descriptors or memory: the pending connection stays in the listen
/// queue, so the listener stays readable, and retrying at once would spin.
pub(crate) const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

/// Whether `accept` failed for want of descriptors or memory (then the
/// daemon pauses accepting for [`ACCEPT_BACKOFF`]).
pub(crate) fn out_of_room(e: nix::errno::Errno) -> bool {
    use nix::errno::Errno::{EMFILE, ENFILE, ENOBUFS, ENOMEM};
    matches!(e, EMFILE | ENFILE | ENOBUFS | ENOMEM)
}

/// One subscription of a connection.
struct Sub {
    /// The subsystem.
    subsystem: String,
    /// The entry (queue) of its group.
    queue: u32,
}

/// What the daemon wrote into a routing entry it assigned (its own record;
/// subscriber counts come from the connections).
#[derive(Debug, Clone)]
struct Record {
    /// Subsystem or group name.
    name: String,
    /// `ROUTE_DURABLE`, `ROUTE_LOSSY`, `ROUTE_EPHEMERAL`.
    flags: u32,
    kind: RecordKind,
}

#[derive(Debug, Clone)]
enum RecordKind {
    /// A subsystem, and the entry of each of its other groups by slot.
    Subsystem { groups: [Option<u32>; MAX_GROUPS] },
    /// Group slot `slot` of subsystem entry `subsystem`.
    Group { subsystem: u32, slot: u32 },
}

/// A bound daemon, ready to serve.
pub struct Server {
    cfg: Config,
    seg: Segment,
    listener: OwnedFd,
    conns: BTreeMap<u32, Conn>,
    next_serial: u32,
    reaper: Reaper,
    buf: Vec<u8>,
    stop: bool,
    /// Connections refused (no client entry, or not allowed): each gets its reason
    /// once its first packet has been read (closing a Unix socket with
    /// unread data would reset the connection and lose the reason).
    refused: Vec<Refusal>,
    /// Caps the warnings about refused connections (a refused peer may
    /// connect in a loop).
    refusals_logged: crate::log_limit::LogLimit,
    /// Caps the log lines a connected client can cause at will: requests
    /// the access policy refuses, and protocol errors. A cap of its own, so
    /// that one client's loop cannot hide other peers' refused connections.
    request_refusals_logged: crate::log_limit::LogLimit,
    /// Since when each entry has had no subscriber (durable entries never
    /// appear). An entry idle this long with an empty queue may be recycled.
    idle_since: BTreeMap<u32, std::time::Instant>,
    /// Counter values of each entry when its current subsystem took it over.
    baselines: BTreeMap<u32, crate::status::Baseline>,
    /// Per subsystem entry: what its groups that are gone had received,
    /// still part of its totals.
    departed: BTreeMap<u32, crate::status::Baseline>,
    /// Queues found corrupt: the daemon pushes nothing more into them, and
    /// never recycles their entries (see [`Server::audit`]).
    quarantined: std::collections::BTreeSet<u32>,
    /// When the segment was last audited.
    audited: std::time::Instant,
    /// What the daemon wrote into each routing entry it assigned (see
    /// [`Record`]). The segment's copy is checked against it, and repaired
    /// from it (see [`Server::repair_routes`]).
    routes: BTreeMap<u32, Record>,
    /// The free ring was found corrupt (logged once; nothing to quarantine).
    free_ring_corrupt: bool,
    /// Where the audit's next pass over holder words starts.
    holders_cursor: u64,
    /// Clients of the previous daemon, by entry, that have not resumed yet
    /// (see [`resume`]).
    ghosts: BTreeMap<u32, Ghost>,
    /// Subscriptions the previous daemon counted, per entry, not yet
    /// claimed by a resuming client: counted as subscribers until every
    /// ghost has resumed or been reclaimed.
    pending_subs: BTreeMap<u32, u32>,
    /// Where a connection moved in the table when it resumed (read by
    /// [`Server::service`] right after [`Server::handle`]).
    moved_to: Option<u32>,
    /// The Prometheus endpoint's link to this loop (see [`crate::metrics`]).
    metrics: Option<(crate::metrics::MetricsLink, std::net::SocketAddr)>,
    /// The device and inode of the socket this daemon bound: it removes
    /// the file at its path only while that is still its own (another
    /// daemon may have replaced it).
    socket_id: Option<(u64, u64)>,

    /// The stop was asked for with a `shutdown` request: the bus ends
    /// (STOPPED) even with a resume grace.
    shutdown_requested: bool,
    /// systemd's watchdog interval (`WATCHDOG_USEC`), and when it was last
    /// pinged: `WATCHDOG=1` goes out from the event loop at half the
    /// interval, so a loop that hangs gets the daemon restarted.
    watchdog: Option<(std::time::Duration, std::time::Instant)>,
    /// This daemon is marked idle beside its record: it has no connection
    /// and no ghost (see `resume::mark_idle`).
    recorded_idle: bool,
    /// Durable subsystems (`None` group) and groups the config declares
    /// that found no room beside an adopted segment's entries: tried again
    /// by every audit until they fit.
    undeclared: Vec<(String, Option<crate::config::GroupConfig>)>,
    /// Accepting is paused until then (see [`ACCEPT_BACKOFF`]).
    accept_paused: Option<std::time::Instant>,
    /// Times `accept` failed for want of descriptors or memory.
    accept_failures: u64,
    /// This daemon's claim on its socket path, held for its life; declared
    /// last, so that it is let go after everything else is dropped.
    _lock: PathLock,
}

/// Holder words the audit looks at per pass (twice a second): all of them
/// within minutes even for the largest segments, long before a `gen`
/// could wrap (hours at full speed).
const HOLDERS_PER_AUDIT: u64 = 1 << 16;

/// Packets read from one connection per turn of the event loop.
const PACKETS_PER_TURN: usize = 16;

/// How long an entry must have had no subscriber, and an empty queue,
/// before another subsystem may take it over. Much longer than the few
/// instructions between a publisher's route check and its push.
const RECYCLE_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Logs how many refused connections were held back from the log.
fn refusals_not_logged(n: u64) {
    tracing::warn!(
        "{n} more connections were refused and not logged one by one (at most {} a second are)",
        crate::log_limit::LogLimit::PER_WINDOW
    );
}

/// Logs how many requests the access policy refused, and protocol errors,
/// were held back from the log.
fn request_refusals_not_logged(n: u64) {
    tracing::warn!(
        "{n} more requests refused by the access policy and protocol errors were not logged one by one (at most {} a second are)",
        crate::log_limit::LogLimit::PER_WINDOW
    );
}

impl Server {
    /// Creates the segment and binds the socket. After this returns, clients
    /// can connect (they are served once [`Server::serve`] runs).
    pub fn bind(cfg: Config) -> Result<Server, DaemonError> {
        Server::bind_until(cfg, &[])
    }

    /// [`Server::bind`], giving up with [`DaemonError::StoppedWhileWaiting`]
    /// when one of `stop` becomes readable while it waits for a resuming
    /// client (up to the resume grace).
    pub fn bind_until(cfg: Config, stop: &[BorrowedFd<'_>]) -> Result<Server, DaemonError> {
        let generation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        let (listener, lock) = bind_socket(&cfg.socket, cfg.socket_mode)?;
        let socket_id = file_id(&cfg.socket);
        // Before the segment, so that a daemon that cannot serve its
        // metrics adopts nothing; its socket goes with it.
        let metrics = match cfg.metrics.map(crate::metrics::start).transpose() {
            Ok(m) => m,
            Err(source) => {
                remove_socket(&cfg.socket, socket_id);
                let addr = cfg.metrics.expect("metrics were asked for");
                return Err(DaemonError::Io { what: format!("serving metrics on {addr}"), source });
            }
        };
        // The previous daemon's segment, if it died with a resume grace and
        // left one to adopt (see [`resume`]); else a new one.
        let Ok((adopted, early)) = resume::find_segment(&cfg, &listener, stop) else {
            remove_socket(&cfg.socket, socket_id);
            tracing::info!("stopped while waiting for a resuming client; the previous segment is left as it was");
            return Err(DaemonError::StoppedWhileWaiting);
        };
        let is_adopted = adopted.is_some();
        if !is_adopted {
            if let Err(e) = crate::config::check_memory(&cfg.shape, &cfg.bus) {
                remove_socket(&cfg.socket, socket_id);
                return Err(e.into());
            }
        }
        let seg = match adopted.map_or_else(|| Segment::create(&cfg.shape, &cfg.bus, generation), Ok) {
            Ok(seg) => seg,
            Err(e) => {
                remove_socket(&cfg.socket, socket_id);
                return Err(e.into());
            }
        };
        let mut server = Server {
            cfg,
            seg,
            listener,
            conns: BTreeMap::new(),
            next_serial: 1,
            reaper: Reaper::default(),
            buf: Vec::new(),
            stop: false,
            refused: Vec::new(),
            refusals_logged: Default::default(),
            request_refusals_logged: Default::default(),
            idle_since: BTreeMap::new(),
            baselines: BTreeMap::new(),
            departed: BTreeMap::new(),
            quarantined: std::collections::BTreeSet::new(),
            audited: std::time::Instant::now(),
            routes: BTreeMap::new(),
            free_ring_corrupt: false,
            holders_cursor: 0,
            watchdog: None,
            ghosts: BTreeMap::new(),
            pending_subs: BTreeMap::new(),
            moved_to: None,
            shutdown_requested: false,
            metrics,
            socket_id,
            accept_paused: None,
            accept_failures: 0,
            recorded_idle: false,
            undeclared: Vec::new(),
            _lock: lock,
        };
        if let Some((_, addr)) = &server.metrics {
            tracing::info!("metrics at http://{addr}/metrics");
        }
        if is_adopted {
            server.adopt();
        }
        let live = &server.seg.header().live;
        live.resume_grace_ms.store(server.cfg.resume_grace.as_millis() as u32, Ordering::Relaxed);
        live.next_serial.store(server.next_serial, Ordering::Relaxed);
        let declared = server.cfg.durable.iter().map(|d| (d.clone(), None));
        let declared: Vec<_> =
            declared.chain(server.cfg.groups.iter().map(|g| (g.subsystem.clone(), Some(g.clone())))).collect();
        for (subsystem, group) in declared {
            if let Err(e) = server.declare(&subsystem, group.as_ref()) {
                // A new segment has room for all of them (the config was
                // checked against its shape); an adopted one holds its
                // predecessor's entries too. Stopping would lose the bus
                // the clients wait to resume: serve, and try again as
                // entries free up.
                if !is_adopted {
                    return Err(DaemonError::Config(crate::config::ConfigError::Invalid(e)));
                }
                tracing::error!("{e}; the adopted segment's routing table has no room for it now: it is declared as soon as an entry frees up (or raise max-subsystems / max-groups, which starts a new bus)");
                server.undeclared.push((subsystem, group));
            }
        }
        server.recorded_idle = server.conns.is_empty() && server.ghosts.is_empty();
        resume::publish(&server.cfg, &server.seg, server.recorded_idle);
        for fd in early {
            server.admit(fd);
        }
        Ok(server)
    }

    /// Declares durable subsystem `subsystem`, or with `group` its durable
    /// group; the error says which could not be.
    fn declare(&mut self, subsystem: &str, group: Option<&crate::config::GroupConfig>) -> Result<(), String> {
        let s = self.subsystem_entry(subsystem).map_err(|(_, e)| match group {
            None => format!("durable subsystem {subsystem}: {e}"),
            Some(g) => format!("group {} of {subsystem}: {e}", g.name),
        })?;
        match group {
            None => {
                if let Some(r) = self.routes.get_mut(&s) {
                    r.flags |= ROUTE_DURABLE;
                }
                self.publish(s);
            }
            Some(g) => {
                let flags = routing::group_flags(true, g.lossy, false);
                self.group_entry(s, &g.name, flags)
                    .map_err(|(_, e)| format!("group {} of {subsystem}: {e}", g.name))?;
            }
        }
        Ok(())
    }

    /// Declares what found no room at start, as far as it fits now.
    fn declare_pending(&mut self) {
        for (subsystem, group) in std::mem::take(&mut self.undeclared) {
            match self.declare(&subsystem, group.as_ref()) {
                Ok(()) => {
                    tracing::info!(%subsystem, group = group.as_ref().map(|g| g.name.as_str()), "declared, now that the routing table has room")
                }
                Err(_) => self.undeclared.push((subsystem, group)),
            }
        }
    }

    /// Pings systemd's watchdog (`WATCHDOG=1`) from the event loop at half
    /// of `interval`.
    pub fn set_watchdog(&mut self, interval: std::time::Duration) {
        self.watchdog = Some((interval, std::time::Instant::now()));
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The one line printed when ready (`resuming=N` when it adopted its
    /// predecessor's segment and waits for N of its clients).
    pub fn ready_line(&self) -> String {
        let p = self.seg.params();
        let mut resuming =
            if self.ghosts.is_empty() { String::new() } else { format!(" resuming={}", self.ghosts.len()) };
        if let Some((_, addr)) = &self.metrics {
            resuming.push_str(&format!(" metrics={addr}"));
        }
        format!(
            "shmbusd: ready bus={} socket={} slots={} slot_size={} pid={}{resuming}",
            self.cfg.bus,
            self.cfg.socket.display(),
            p.slot_count,
            p.slot_size,
            std::process::id()
        )
    }

    /// The welcome for client entry `client`, connection `serial`.
    fn welcome(&self, client: u32, serial: u32) -> Reply {
        Reply::Welcome {
            client,
            serial,
            bus: self.cfg.bus.clone(),
            shape: Some(bus_client::protocol::SegmentShape::of(self.seg.params())),
            quota: self.cfg.quota,
            resume_grace_ms: self.cfg.resume_grace.as_millis() as u32,
            statistics: self.cfg.statistics,
        }
    }

    /// Serves until a shutdown request, or until any of `stop_fds` becomes
    /// readable. Then marks the bus stopped, wakes every sleeper, removes the
    /// socket file.
    pub fn serve(mut self, stop_fds: &[BorrowedFd<'_>]) -> Result<(), DaemonError> {
        tracing::info!(bus = %self.cfg.bus, socket = %self.cfg.socket.display(), "serving");
        while !self.stop {
            let ids: Vec<u32> = self.conns.keys().copied().collect();
            let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(1 + stop_fds.len() + ids.len());
            // While accepting is paused, the listener is not watched.
            let paused = self.accept_paused.filter(|&t| t > std::time::Instant::now());
            self.accept_paused = paused;
            let listen = if paused.is_some() { PollFlags::empty() } else { PollFlags::POLLIN };
            fds.push(PollFd::new(self.listener.as_fd(), listen));
            fds.extend(stop_fds.iter().map(|f| PollFd::new(*f, PollFlags::POLLIN)));
            for id in &ids {
                fds.push(PollFd::new(self.conns[id].fd.as_fd(), PollFlags::POLLIN));
            }
            let metrics_at = fds.len();
            if let Some((m, _)) = &self.metrics {
                fds.push(PollFd::new(m.wake.as_fd(), PollFlags::POLLIN));
            }
            let first_refused = fds.len();
            fds.extend(self.refused.iter().map(|r| PollFd::new(r.fd.as_fd(), PollFlags::POLLIN)));
            let mut timeout = if self.reaper.busy() { 20u16 } else { 500 };
            if let Some(t) = paused {
                let left = t.saturating_duration_since(std::time::Instant::now());
                timeout = timeout.min(left.as_millis().clamp(1, 500) as u16);
            }
            if let Some((interval, pinged)) = &mut self.watchdog {
                if pinged.elapsed() >= *interval / 2 {
                    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
                    *pinged = std::time::Instant::now();
                }
                timeout = timeout.min((interval.as_millis() / 4).clamp(1, 500) as u16);
            }
            match poll(&mut fds, PollTimeout::from(timeout)) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(io_err("poll")(e)),
            }
            let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
            let accept = ready(&fds[0]);
            let stopped = fds[1..1 + stop_fds.len()].iter().any(ready);
            let readable: Vec<u32> = ids
                .iter()
                .zip(&fds[1 + stop_fds.len()..first_refused])
                .filter(|(_, f)| ready(f))
                .map(|(id, _)| *id)
                .collect();
            let refused_ready: Vec<bool> = fds[first_refused..].iter().map(ready).collect();
            let scraped = self.metrics.is_some() && ready(&fds[metrics_at]);
            drop(fds);
            self.answer_refused(&refused_ready);
            if scraped {
                self.answer_scrapes();
            }
            if stopped {
                tracing::info!("stop requested");
                break;
            }
            if accept {
                self.accept_all();
            }
            for id in readable {
                self.service(id);
            }
            self.reaper.tick(&self.seg);
            self.tend_ghosts();
            self.drain_abandoned_reply_queues();
            self.tend_taps();
            self.audit();
            if !self.recorded_idle && self.conns.is_empty() && self.ghosts.is_empty() {
                self.recorded_idle = true;
                resume::mark_idle(&self.cfg, true);
            }
        }
        self.shutdown();
        Ok(())
    }

    fn accept_all(&mut self) {
        // Bounded per turn, like the packets of a connection: a connect
        // flood cannot keep the daemon from the others or from a stop.
        for _ in 0..64 {
            let fd = match socket::accept4(self.listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK)
            {
                Ok(raw) => {
                    if self.accept_failures > 0 {
                        tracing::info!(failures = self.accept_failures, "accepting connections again");
                        self.accept_failures = 0;
                    }
                    // SAFETY: accept4 returned a new descriptor that we now own.
                    unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) }
                }
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    if out_of_room(e) {
                        // Logged once per pause, not once per retry.
                        self.accept_paused = Some(std::time::Instant::now() + ACCEPT_BACKOFF);
                        self.accept_failures += 1;
                        if self.accept_failures == 1 || self.accept_failures.is_power_of_two() {
                            tracing::warn!(
                                times = self.accept_failures,
                                "cannot accept connections: {e}; retrying every {ACCEPT_BACKOFF:?} (raise the open-files limit, LimitNOFILE= under systemd)"
                            );
                        }
                    } else {
                        tracing::warn!("accept failed: {e}");
                    }
                    return;
                }
            };
            self.admit(fd);
        }
    }

    /// Whether to log one more refused connection now (see
    /// [`crate::log_limit`]).
    fn log_refusal(&mut self) -> bool {
        self.refusals_logged.allow(std::time::Instant::now(), refusals_not_logged)
    }

    /// Whether to log one more request the access policy refused, or
    /// protocol error, now.
    fn log_request_refusal(&mut self) -> bool {
        self.request_refusals_logged.allow(std::time::Instant::now(), request_refusals_not_logged)
    }

    /// Gives accepted connection `fd` a client entry, or refuses it (with
    /// its reason, once its first packet arrived).
    fn admit(&mut self, fd: OwnedFd) {
        let cred = match socket::getsockopt(&fd, sockopt::PeerCredentials) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("SO_PEERCRED failed, dropping connection: {e}");
                return;
            }
        };
        let peer = crate::access::peer(cred.pid(), cred.uid(), cred.gid());
        if let Err(message) = self.cfg.access.check(&peer, crate::access::Action::Connect) {
            if self.log_refusal() {
                tracing::warn!(pid = cred.pid(), uid = cred.uid(), "refusing a client: {message}");
            }
            self.refuse(fd, ErrorKind::PermissionDenied, message);
            return;
        }
        let (pid, uid) = (cred.pid() as u32, cred.uid());
        // The daemon alone writes the client table, and reclaims an entry
        // completely before it leaves `conns`: every entry not in `conns`
        // (nor kept for a client of the previous daemon) is free, whatever
        // the segment says (a faulty process may have overwritten its
        // state; trusting that word would leak the entry for good).
        let max = self.seg.params().max_clients;
        let free = (0..max).find(|c| !self.conns.contains_key(c) && !self.ghosts.contains_key(c));
        let client = match free {
            Some(c) => c,
            // A full table may still take back a client of the previous
            // daemon: this connection waits in its entry, and may only
            // resume it.
            None => match self.ghosts.iter().find(|(c, g)| g.pid == pid && g.uid == uid && !self.conns.contains_key(c))
            {
                Some((&c, _)) => {
                    self.note_busy();
                    self.conns.insert(c, Conn::new(fd, peer, c, 0, (pid, uid, cred.gid()), true));
                    return;
                }
                None => {
                    if self.log_refusal() {
                        tracing::warn!(pid, "refusing a client: client table full");
                    }
                    let message = format!("the bus already has its maximum of {max} clients: raise --max-clients");
                    self.refuse(fd, ErrorKind::TooManyClients, message);
                    return;
                }
            },
        };
        self.note_busy();
        self.scrub_client_entry(client);
        let info = self.seg.client_info(client).expect("in range");
        let serial = self.next_serial;
        self.next_serial = self.next_serial.wrapping_add(1).max(1);
        self.seg.header().live.next_serial.store(self.next_serial, Ordering::Relaxed);
        info.serial.store(serial, Ordering::Relaxed);
        info.pid.store(pid, Ordering::Relaxed);
        info.uid.store(uid, Ordering::Relaxed);
        info.gid.store(cred.gid(), Ordering::Relaxed);
        // SYNC: client-state — pairs with the Acquire in this search.
        info.state.store(CLIENT_ACTIVE, Ordering::Release);
        self.seg.header().counters.clients_accepted.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(client, pid, uid, "client connected");
        self.conns.insert(client, Conn::new(fd, peer, client, serial, (pid, uid, cred.gid()), false));
    }

    /// Puts back the state and serial of every connected client's entry if
    /// a faulty process overwrote them: a client that no longer finds its
    /// own there takes itself for reclaimed, and leaves its slots alone
    /// (`bus-client`, `Inner::entry_lost`). Entries of clients of the
    /// previous daemon that have not resumed yet are theirs, left alone.
    fn repair_client_entries(&self) {
        let mut bad = 0u64;
        for (&c, conn) in &self.conns {
            if conn.borrowed || self.ghosts.contains_key(&c) {
                continue;
            }
            let Some(info) = self.seg.client_info(c) else { continue };
            // SYNC: client-state — Acquire pairs with the Release below and
            // at connect.
            let same = info.serial.load(Ordering::Relaxed) == conn.serial
                && info.pid.load(Ordering::Relaxed) == conn.pid
                && info.uid.load(Ordering::Relaxed) == conn.uid
                && info.gid.load(Ordering::Relaxed) == conn.gid;
            if info.state.load(Ordering::Acquire) == CLIENT_ACTIVE && same {
                continue;
            }
            // The next daemon reads pid, uid and gid too (a resuming
            // client must come from them): all of them go back.
            info.serial.store(conn.serial, Ordering::Relaxed);
            info.pid.store(conn.pid, Ordering::Relaxed);
            info.uid.store(conn.uid, Ordering::Relaxed);
            info.gid.store(conn.gid, Ordering::Relaxed);
            // SYNC: client-state — Release: the other words before the
            // state, as at connect.
            info.state.store(CLIENT_ACTIVE, Ordering::Release);
            tracing::error!(client = c, "client entry {c} was overwritten: rewritten from the daemon's record");
            bad += 1;
        }
        if bad > 0 {
            self.seg.header().counters.corruption.fetch_add(bad, Ordering::Relaxed);
        }
    }

    /// Before entry `client` is handed to a new client: its state must read
    /// FREE and its port records 0 (the reaper left them so). Anything else
    /// was written by a faulty process: counted as corruption, logged, and
    /// cleared, so that the next reclaim of the entry does not act on it.
    fn scrub_client_entry(&self, client: u32) {
        let Some(info) = self.seg.client_info(client) else { return };
        let mut bad = 0u64;
        // SYNC: client-state — pairs with the reaper's Release.
        if info.state.load(Ordering::Acquire) != CLIENT_FREE {
            bad += 1;
        }
        for port in 0..bus_core::layout::PORTS_PER_CLIENT as u32 {
            let Some(rec) = self.seg.port_intent(client, port) else { break };
            // Relaxed: nobody uses the entry until its welcome.
            bad += (rec.intent.swap(0, Ordering::Relaxed) != 0) as u64;
            bad += (rec.bell.swap(0, Ordering::Relaxed) != 0) as u64;
            // The previous client's counts: not corruption, just history.
            rec.sent.store(0, Ordering::Relaxed);
            rec.received.store(0, Ordering::Relaxed);
        }
        if bad > 0 {
            tracing::error!(client, words = bad, "client entry {client} held words the daemon did not write: cleared");
            self.seg.header().counters.corruption.fetch_add(bad, Ordering::Relaxed);
        }
    }

    /// Checks every routing entry against what the daemon wrote (`routes`,
    /// and the subscriber counts of `conns`); an entry that differs was
    /// overwritten by a faulty process: counted as corruption, logged, and
    /// rewritten whole (publishers re-resolve on the version bump). Bounded:
    /// one look at each entry.
    fn repair_routes(&mut self) {
        let counts = self.counts();
        for q in 0..self.seg.params().max_subsystems {
            let expect = self.expected(q, &counts);
            if routing::matches(&self.seg, q, expect) {
                continue;
            }
            let name = expect.map_or("", |e| e.name);
            tracing::error!(queue = q, name = %name, "routing entry {q} was overwritten: rewritten from the daemon's record");
            self.seg.header().counters.corruption.fetch_add(1, Ordering::Relaxed);
            routing::rewrite(&self.seg, q, expect);
        }
    }

    /// Connected subscriptions to queue `q`.
    fn subscribers_of(&self, q: u32) -> u32 {
        let pending = self.pending_subs.get(&q).copied().unwrap_or(0);
        self.conns.values().flat_map(|c| &c.subscriptions).filter(|sub| sub.queue == q).count() as u32 + pending
    }

    /// Connected subscriptions per entry (one pass over the connections).
    fn counts(&self) -> BTreeMap<u32, u32> {
        let mut counts: BTreeMap<u32, u32> = self.pending_subs.clone();
        for sub in self.conns.values().flat_map(|c| &c.subscriptions) {
            *counts.entry(sub.queue).or_default() += 1;
        }
        counts
    }

    /// What entry `q` must hold, from the daemon's record and `counts`.
    fn expected<'a>(&'a self, q: u32, counts: &BTreeMap<u32, u32>) -> Option<Expected<'a>> {
        let r = self.routes.get(&q)?;
        let subscribers = counts.get(&q).copied().unwrap_or(0);
        let receives = |q: u32, flags: u32| counts.get(&q).copied().unwrap_or(0) > 0 || flags & ROUTE_DURABLE != 0;
        let kind = match &r.kind {
            RecordKind::Group { subsystem, slot } => Kind::Group { subsystem: *subsystem, slot: *slot },
            RecordKind::Subsystem { groups } => {
                let mut queues = [0u16; MAX_GROUPS];
                queues[0] = q as u16;
                let mut mask = receives(q, r.flags) as u16;
                let mut lossy = 0u16;
                for (k, g) in groups.iter().enumerate().skip(1) {
                    let Some(g) = *g else { continue };
                    let flags = self.routes.get(&g).map_or(0, |r| r.flags);
                    queues[k] = g as u16;
                    if receives(g, flags) {
                        mask |= 1 << k;
                    }
                    if flags & ROUTE_LOSSY != 0 {
                        lossy |= 1 << k;
                    }
                }
                Kind::Subsystem { groups: mask, lossy, queues }
            }
        };
        Some(Expected { name: &r.name, flags: r.flags, subscribers, kind })
    }

    /// Writes entry `q` from the daemon's record (and, for a group, its
    /// subsystem's entry, whose group mask depends on it).
    fn publish(&self, q: u32) {
        let counts = self.counts();
        routing::rewrite(&self.seg, q, self.expected(q, &counts));
        if let Some(Record { kind: RecordKind::Group { subsystem, .. }, .. }) = self.routes.get(&q) {
            routing::rewrite(&self.seg, *subsystem, self.expected(*subsystem, &counts));
        }
    }

    /// Whether entry `q` may be taken over by another subsystem or group:
    /// not durable, not quarantined, no subscriber and no group of its own
    /// for [`RECYCLE_AFTER`], and an empty queue.
    fn recyclable(&self, q: u32) -> bool {
        let Some(r) = self.routes.get(&q) else { return false };
        let Some(ring) = self.seg.queue(q) else { return false };
        let has_groups = matches!(&r.kind, RecordKind::Subsystem { groups } if groups.iter().any(Option::is_some));
        r.flags & ROUTE_DURABLE == 0
            && !has_groups
            && !self.quarantined.contains(&q)
            && !self.reaper.holds_for(q)
            && self.subscribers_of(q) == 0
            && ring.is_empty()
            && self.idle_since.get(&q).is_some_and(|t| t.elapsed() >= RECYCLE_AFTER)
            // The hints say empty; the cells must agree (a producer stopped
            // right after its cell CAS has an entry there that the tail does
            // not count yet). Last: a pass over every cell.
            && !ring.holds_entries()
    }

    /// An entry for a new subsystem or group, taking over a recyclable one
    /// other than `keep` if none is unused (the record it held is dropped,
    /// and a group is removed from its subsystem).
    fn new_entry(&mut self, keep: Option<u32>) -> Result<u32, routing::TableFull> {
        let q = routing::pick_entry(&self.seg, |q| Some(q) != keep && self.recyclable(q))?;
        self.forget_entry(q);
        Ok(q)
    }

    /// What to tell a client whose subsystem or group found the table
    /// full: also how many entries are only waiting out [`RECYCLE_AFTER`]
    /// (a retry soon may get one).
    fn table_full(&self, e: routing::TableFull) -> (ErrorKind, String) {
        let waiting = self
            .idle_since
            .iter()
            .filter(|(&q, t)| {
                t.elapsed() < RECYCLE_AFTER && self.subscribers_of(q) == 0 && self.routes.contains_key(&q)
            })
            .count();
        let mut m = e.to_string();
        if waiting > 0 {
            m.push_str(&format!(
                " ({waiting} of them lost their last subscriber less than {RECYCLE_AFTER:?} ago and can be reused then: retry shortly)"
            ));
        }
        (ErrorKind::TooManySubsystems, m)
    }

    /// Drops the record of entry `q` (unused from now on).
    fn forget_entry(&mut self, q: u32) {
        if let Some(old) = self.routes.remove(&q) {
            tracing::debug!(queue = q, name = %old.name, "routing entry recycled");
            if matches!(old.kind, RecordKind::Subsystem { .. }) {
                self.departed.remove(&q);
            }
            if let RecordKind::Group { subsystem, slot } = old.kind {
                // What the group received stays counted in its subsystem's
                // totals (counters never go backwards).
                let base = self.baselines.get(&q).copied().unwrap_or_default();
                let counted = crate::status::Baseline::of(&self.seg, q).since(&base);
                self.departed.entry(subsystem).or_default().add_received(&counted);
                if let Some(Record { kind: RecordKind::Subsystem { groups }, .. }) = self.routes.get_mut(&subsystem) {
                    groups[slot as usize] = None;
                }
                self.publish(subsystem);
                // No message may keep the bit of a group that is gone: its
                // slot would never be freed, and the bit could be taken for
                // the next group of that slot.
                let cleared = bus_core::reclaim::clear_group(&self.seg, &Group { subsystem, slot, queue: q });
                if cleared > 0 {
                    tracing::debug!(queue = q, cleared, "copies of a removed group dropped");
                }
            }
        }
        self.idle_since.remove(&q);
        routing::rewrite(&self.seg, q, None);
    }

    /// The entry of subsystem `name`, assigned now if it has none.
    fn subsystem_entry(&mut self, name: &str) -> Result<u32, (ErrorKind, String)> {
        let found = self
            .routes
            .iter()
            .find(|(_, r)| r.name == name && matches!(r.kind, RecordKind::Subsystem { .. }))
            .map(|(q, _)| *q);
        if let Some(q) = found {
            return Ok(q);
        }
        let q = self.new_entry(None).map_err(|e| self.table_full(e))?;
        let mut flags = if self.cfg.durable.iter().any(|d| d == name) { ROUTE_DURABLE } else { 0 };
        if self.cfg.access.restricts_publish(name) {
            flags |= ROUTE_RESTRICTED;
        }
        self.routes.insert(
            q,
            Record { name: name.to_owned(), flags, kind: RecordKind::Subsystem { groups: [None; MAX_GROUPS] } },
        );
        self.baselines.insert(q, crate::status::Baseline::of(&self.seg, q));
        if let Some(st) = self.seg.entry_stats(q) {
            st.reset();
        }
        self.idle_since.insert(q, std::time::Instant::now());
        self.publish(q);
        tracing::debug!(subsystem = %name, queue = q, "routing entry assigned");
        Ok(q)
    }

    /// Group `name` of subsystem entry `s` (its entry and slot), created now
    /// with `flags` if it does not exist. Joining an existing blocking group
    /// while asking for a lossy one is an error.
    fn group_entry(&mut self, s: u32, name: &str, flags: u32) -> Result<(u32, u32), (ErrorKind, String)> {
        let Some(Record { kind: RecordKind::Subsystem { groups }, name: subsystem, .. }) = self.routes.get(&s) else {
            return Err((ErrorKind::Invalid, "not a subsystem".into()));
        };
        let subsystem = subsystem.clone();
        let groups = *groups;
        for (k, g) in groups.iter().enumerate() {
            let Some(g) = *g else { continue };
            let Some(r) = self.routes.get(&g) else { continue };
            if r.name == name {
                if flags & ROUTE_LOSSY != 0 && r.flags & ROUTE_LOSSY == 0 {
                    return Err((
                        ErrorKind::GroupMismatch,
                        format!("group {name:?} of {subsystem:?} exists and is blocking, not lossy: join it without lossy, or choose another name"),
                    ));
                }
                return Ok((g, k as u32));
            }
        }
        let max = self.seg.params().max_groups as usize;
        // A place among the subsystem's groups: a free one, else that of a
        // group whose last subscriber left a while ago and that holds no
        // message (it receives nothing without subscribers, and is removed
        // now; one that still holds messages keeps them for its next
        // subscriber, and its place).
        let free = (1..max).find(|&k| groups[k].is_none());
        let idle = || (1..max).find(|&k| groups[k].is_some_and(|g| self.recyclable(g)));
        let Some(k) = free.or_else(idle) else {
            return Err((
                ErrorKind::TooManyGroups,
                format!("subsystem {subsystem:?} already has {max} groups (max-groups): raise max-groups, or join an existing group (a group without subscribers gives up its place {RECYCLE_AFTER:?} after its last one left, once its queue is empty)"),
            ));
        };
        if let Some(old) = groups[k] {
            tracing::debug!(subsystem = %subsystem, queue = old, "removed an idle consumer group for a new one");
            self.forget_entry(old);
            self.baselines.remove(&old);
        }
        // Never the subsystem's own entry, recyclable as it may look.
        let q = self.new_entry(Some(s)).map_err(|e| self.table_full(e))?;
        self.routes.insert(
            q,
            Record { name: name.to_owned(), flags, kind: RecordKind::Group { subsystem: s, slot: k as u32 } },
        );
        if let Some(Record { kind: RecordKind::Subsystem { groups }, .. }) = self.routes.get_mut(&s) {
            groups[k] = Some(q);
        }
        self.baselines.insert(q, crate::status::Baseline::of(&self.seg, q));
        if let Some(st) = self.seg.entry_stats(q) {
            st.reset();
        }
        self.idle_since.insert(q, std::time::Instant::now());
        self.publish(q);
        tracing::debug!(subsystem = %subsystem, group = %name, queue = q, slot = k, "group created");
        Ok((q, k as u32))
    }

    /// Every tick: taps whose listener left are drained (their copies
    /// freed), and once idle for [`RECYCLE_AFTER`] with an empty queue,
    /// removed.
    fn tend_taps(&mut self) {
        let taps: Vec<(u32, u32, u32)> = self
            .routes
            .iter()
            .filter(|(_, r)| r.flags & ROUTE_EPHEMERAL != 0)
            .filter_map(|(q, r)| match r.kind {
                RecordKind::Group { subsystem, slot } => Some((*q, subsystem, slot)),
                _ => None,
            })
            .collect();
        for (q, subsystem, slot) in taps {
            if self.subscribers_of(q) > 0 {
                continue;
            }
            let drained = bus_core::reclaim::drain_queue(&self.seg, &Group { subsystem, slot, queue: q });
            if drained > 0 {
                tracing::debug!(queue = q, drained, "drained a tap whose listener left");
            }
            if self.idle_since.get(&q).is_some_and(|t| t.elapsed() >= RECYCLE_AFTER)
                && self.seg.queue(q).is_some_and(|r| r.is_empty() && !r.holds_entries())
            {
                self.forget_entry(q);
                self.baselines.remove(&q);
            }
        }
    }

    /// Puts back the segment header's fields that openers validate (see
    /// [`Segment::repair_header`]), counting and logging each repair.
    fn repair_header(&self) {
        let repaired = self.seg.repair_header();
        if !repaired.is_empty() {
            tracing::error!(fields = ?repaired, "the segment header was overwritten: repaired from the daemon's copy");
            self.seg.header().counters.corruption.fetch_add(repaired.len() as u64, Ordering::Relaxed);
        }
    }

    /// Keeps refused connection `fd` until its first packet arrives, to
    /// answer it with `kind` and `message` (see [`Server::answer_refused`]).
    fn refuse(&mut self, fd: OwnedFd, kind: ErrorKind, message: String) {
        if self.refused.len() < REFUSALS_KEPT {
            self.refused.push(Refusal { fd, since: std::time::Instant::now(), kind, message });
        }
    }

    /// Answers refused connections whose first packet arrived (or that
    /// waited 5 s) with the reason, then closes them.
    fn answer_refused(&mut self, ready: &[bool]) {
        let mut keep = Vec::new();
        for (i, r) in std::mem::take(&mut self.refused).into_iter().enumerate() {
            let is_ready = ready.get(i).copied().unwrap_or(false);
            if !is_ready && r.since.elapsed() < HELLO_TIMEOUT {
                keep.push(r);
                continue;
            }
            let _ = control::recv::<Request>(r.fd.as_fd(), &mut self.buf);
            let _ = control::send(r.fd.as_fd(), &Reply::Error { kind: r.kind, message: r.message }, None);
        }
        self.refused = keep;
    }

    /// Answers up to [`PACKETS_PER_TURN`] packets of client `id`; the rest
    /// wait for the next turn of the loop, so that a client that floods its
    /// connection cannot keep the daemon from the others or from a stop.
    fn service(&mut self, id: u32) {
        for _ in 0..PACKETS_PER_TURN {
            let Some(conn) = self.conns.get(&id) else { return };
            match control::recv::<Request>(conn.fd.as_fd(), &mut self.buf) {
                Ok(Received::Packet(req, _)) => {
                    let reply = self.handle(id, req);
                    // A resumed connection now sits in its old entry.
                    let id = self.moved_to.take().unwrap_or(id);
                    let conn = &self.conns[&id];
                    let fd = matches!(reply, Reply::Welcome { .. }).then(|| self.seg.fd());
                    if let Err(e) = control::send(conn.fd.as_fd(), &reply, fd) {
                        tracing::debug!(client = id, "reply failed: {e}");
                        self.drop_client(id);
                        return;
                    }
                }
                Ok(Received::Closed) => {
                    self.drop_client(id);
                    return;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    if self.log_request_refusal() {
                        tracing::warn!(client = id, "{e}; closing the connection");
                    }
                    self.drop_client(id);
                    return;
                }
                Err(e) => {
                    tracing::debug!(client = id, "connection error: {e}");
                    self.drop_client(id);
                    return;
                }
            }
        }
    }

    fn handle(&mut self, id: u32, req: Request) -> Reply {
        let err = |kind, message: String| Reply::Error { kind, message };
        let welcomed = self.conns[&id].welcomed;
        match req {
            Request::Hello { layout_version, resume, name, .. } => {
                if welcomed {
                    return err(ErrorKind::Sequence, "hello was already sent on this connection".into());
                }
                if let Some(n) = name {
                    let clean: String =
                        n.chars().filter(|c| !c.is_control()).take(64).collect::<String>().trim().to_owned();
                    if !clean.is_empty() {
                        self.conns.get_mut(&id).expect("present").name = clean;
                    }
                }
                let c = &self.conns[&id];
                tracing::info!(client = id, pid = c.pid, uid = c.uid, name = %c.name, resume = resume.is_some(), "hello");
                if layout_version != LAYOUT_VERSION {
                    return err(
                        ErrorKind::VersionMismatch,
                        format!("daemon speaks layout version {LAYOUT_VERSION}, client {layout_version}"),
                    );
                }
                if let Some(r) = resume {
                    return self.resume(id, r);
                }
                if self.conns[&id].borrowed {
                    let max = self.seg.params().max_clients;
                    return err(
                        ErrorKind::TooManyClients,
                        format!("the bus already has its maximum of {max} clients: raise --max-clients"),
                    );
                }
                // The client is about to open the segment: make sure that
                // what it validates is intact.
                self.repair_header();
                let conn = self.conns.get_mut(&id).expect("present");
                conn.welcomed = true;
                let serial = conn.serial;
                self.welcome(id, serial)
            }
            _ if !welcomed => err(ErrorKind::Sequence, "send hello first".into()),
            Request::Subscribe { subsystem, group, lossy, tap } => {
                // A subscription takes one of the client's ports: more than
                // that many is a misbehaving client, and each would make
                // the daemon's bookkeeping longer.
                let held = self.conns[&id].subscriptions.len();
                if held >= bus_core::layout::PORTS_PER_CLIENT {
                    return err(
                        ErrorKind::Invalid,
                        format!("this connection already holds {held} subscriptions, as many as it has ports"),
                    );
                }
                // `_reply.<serial>.<n>`: a requester's private reply queue,
                // only for the client whose serial it names.
                let reply_queue = subsystem.strip_prefix("_reply.").map(|rest| {
                    let serial = self.conns[&id].serial;
                    let mut parts = rest.split('.');
                    parts.next() == Some(serial.to_string().as_str())
                        && parts.next().is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                        && parts.next().is_none()
                        && subsystem.len() <= bus_core::layout::SUBSYSTEM_NAME_MAX
                });
                match reply_queue {
                    Some(true) if group.is_none() && !tap => {}
                    Some(true) => return err(ErrorKind::Invalid, "a reply queue has no groups".into()),
                    Some(false) => {
                        return err(ErrorKind::Invalid, format!("{subsystem:?} is another client's reply queue"))
                    }
                    None => {
                        if let Err(e) = bus_core::path::validate_subsystem(&subsystem) {
                            return err(ErrorKind::Invalid, e.to_string());
                        }
                        let peer = &self.conns[&id].peer;
                        if let Err(m) = self.cfg.access.check(peer, crate::access::Action::Subscribe(&subsystem)) {
                            let uid = peer.uid;
                            if self.log_request_refusal() {
                                tracing::info!(client = id, uid, %subsystem, "subscribe refused by the access policy");
                            }
                            return err(ErrorKind::PermissionDenied, m);
                        }
                    }
                }
                let group = if tap {
                    let conn = self.conns.get_mut(&id).expect("present");
                    conn.taps += 1;
                    Some(format!("tap.{}.{}", conn.serial, conn.taps))
                } else {
                    match group.filter(|g| g != "default") {
                        Some(g) => {
                            if let Err(e) = bus_core::path::validate_subsystem(&g) {
                                return err(ErrorKind::Invalid, format!("group name: {e}"));
                            }
                            if g.starts_with("tap.") || g.len() > bus_core::layout::SUBSYSTEM_NAME_MAX {
                                return err(ErrorKind::Invalid, format!("group name {g:?} is reserved for taps"));
                            }
                            Some(g)
                        }
                        None => None,
                    }
                };
                if group.is_none() && lossy {
                    return err(
                        ErrorKind::GroupMismatch,
                        format!("the default group of {subsystem:?} is blocking, never lossy: join it without lossy, or name a group of your own (or take a tap)"),
                    );
                }
                // The daemon decides from the table: make sure it holds what
                // the daemon wrote.
                self.repair_routes();
                let s = match self.subsystem_entry(&subsystem) {
                    Ok(s) => s,
                    Err((kind, m)) => return err(kind, m),
                };
                let (q, slot, name) = match group {
                    None => (s, 0, "default".to_owned()),
                    Some(g) => match self.group_entry(s, &g, routing::group_flags(false, lossy || tap, tap)) {
                        Ok((q, k)) => (q, k, g),
                        Err((kind, m)) => return err(kind, m),
                    },
                };
                self.conns
                    .get_mut(&id)
                    .expect("present")
                    .subscriptions
                    .push(Sub { subsystem: subsystem.clone(), queue: q });
                self.recount(q);
                tracing::debug!(client = id, %subsystem, group = %name, queue = q, "subscribed");
                Reply::Subscribed { queue: q, subsystem: s, slot, group: name }
            }
            Request::Unsubscribe { subsystem, queue } => {
                let conn = self.conns.get_mut(&id).expect("present");
                let found = conn
                    .subscriptions
                    .iter()
                    .position(|sub| sub.subsystem == subsystem && queue.is_none_or(|q| q == sub.queue));
                match found {
                    Some(pos) => {
                        let sub = conn.subscriptions.remove(pos);
                        self.recount(sub.queue);
                        Reply::Unsubscribed
                    }
                    None => err(ErrorKind::NotSubscribed, format!("not subscribed to {subsystem:?}")),
                }
            }
            Request::MayPublish { subsystem } => {
                if let Err(e) = bus_core::path::validate_subsystem(&subsystem) {
                    return err(ErrorKind::Invalid, e.to_string());
                }
                let peer = &self.conns[&id].peer;
                match self.cfg.access.check(peer, crate::access::Action::Publish(&subsystem)) {
                    Ok(()) => Reply::MayPublish,
                    Err(m) => {
                        let uid = peer.uid;
                        if self.log_request_refusal() {
                            tracing::info!(client = id, uid, %subsystem, "publish refused by the access policy");
                        }
                        err(ErrorKind::PermissionDenied, m)
                    }
                }
            }
            Request::Status => Reply::Status(self.status()),
            Request::Shutdown => {
                let peer = &self.conns[&id].peer;
                if let Err(m) = self.cfg.access.check(peer, crate::access::Action::Admin("shutdown")) {
                    let uid = peer.uid;
                    if self.log_request_refusal() {
                        tracing::warn!(client = id, uid, "shutdown refused by the access policy");
                    }
                    return err(ErrorKind::PermissionDenied, m);
                }
                tracing::info!(client = id, pid = self.conns[&id].pid, "shutdown requested");
                self.stop = true;
                self.shutdown_requested = true;
                Reply::ShuttingDown
            }
        }
    }

    /// Gives every waiting scrape a fresh status.
    fn answer_scrapes(&mut self) {
        let Some((m, _)) = &self.metrics else { return };
        let mut buf = [0u8; 64];
        loop {
            match nix::unistd::read(&m.wake, &mut buf) {
                Ok(n) if n > 0 => continue,
                // Every writer is gone: the metrics thread died. Stop
                // polling a pipe that would stay readable.
                Ok(_) => {
                    tracing::error!("the metrics endpoint stopped; the bus goes on without it");
                    self.metrics = None;
                    return;
                }
                Err(_) => break,
            }
        }
        let waiting: Vec<_> = m.waiting.try_iter().collect();
        if waiting.is_empty() {
            return;
        }
        // The scrapes waiting now share one status (a pass over every
        // slot); at most `metrics::MAX_SCRAPES` wait at once, as many as a
        // client asking `status` in a loop costs.
        let status = self.status();
        for w in waiting {
            let _ = w.send(status.clone());
        }
    }

    /// The bus as `shmbus status` (and the metrics) show it.
    fn status(&self) -> bus_client::protocol::Status {
        let holdings = bus_core::slot_pool::holdings(&self.seg);
        let ports = |c: u32| {
            (0..bus_core::layout::PORTS_PER_CLIENT as u32).filter_map(|p| self.seg.port_intent(c, p)).fold(
                (0u64, 0u64),
                |(s, r), rec| {
                    // Words from the segment: any value, so wrapping.
                    (
                        s.wrapping_add(rec.sent.load(Ordering::Relaxed)),
                        r.wrapping_add(rec.received.load(Ordering::Relaxed)),
                    )
                },
            )
        };
        let clients = self
            .conns
            .values()
            .map(|c| ClientStatus {
                id: c.client,
                pid: c.pid,
                uid: c.uid,
                name: c.name.clone(),
                slots: holdings.get(c.client as usize).copied().unwrap_or(0),
                sent: ports(c.client).0,
                received: ports(c.client).1,
                subscriptions: c
                    .subscriptions
                    .iter()
                    .map(|sub| match self.routes.get(&sub.queue) {
                        Some(Record { kind: RecordKind::Group { .. }, name, .. }) => {
                            format!("{}[{name}]", sub.subsystem)
                        }
                        _ => sub.subsystem.clone(),
                    })
                    .collect(),
            })
            .collect();
        let layout: Vec<crate::status::SubsystemLayout> = self
            .routes
            .iter()
            .filter_map(|(q, r)| match &r.kind {
                RecordKind::Subsystem { groups } => Some(crate::status::SubsystemLayout {
                    entry: *q,
                    departed: self.departed.get(q).copied().unwrap_or_default(),
                    groups: groups
                        .iter()
                        .flatten()
                        .filter_map(|g| self.routes.get(g).map(|r| (*g, r.name.clone(), r.flags)))
                        .collect(),
                }),
                RecordKind::Group { .. } => None,
            })
            .collect();
        crate::status::build(
            &self.seg,
            &self.cfg.socket.to_string_lossy(),
            clients,
            &self.baselines,
            &self.quarantined,
            &layout,
            self.cfg.statistics,
        )
    }

    /// Twice a second: repairs the segment header and the routing table if
    /// they were overwritten (see [`Segment::repair_header`],
    /// [`Server::repair_routes`]), and quarantines every queue whose ring
    /// holds words that cannot be right (its operations gave up: its
    /// `stalls` counter grew; or its hints or the cells at them are far
    /// off, see [`Segment::ring_plausible`]), logging it once; the free
    /// ring, which cannot be quarantined, is logged and counted once.
    /// Bounded: a look at the header, at each routing entry, and at each
    /// ring's counters, hints and two cells.
    fn audit(&mut self) {
        if self.audited.elapsed() < std::time::Duration::from_millis(500) {
            return;
        }
        self.audited = std::time::Instant::now();
        self.refusals_logged.flush(self.audited, refusals_not_logged);
        self.request_refusals_logged.flush(self.audited, request_refusals_not_logged);
        self.close_silent();
        self.repair_header();
        self.repair_routes();
        self.repair_client_entries();
        self.declare_pending();
        resume::heartbeat(&self.cfg);
        let (next, _) = bus_core::reclaim::clear_stale_holders(&self.seg, self.holders_cursor, HOLDERS_PER_AUDIT);
        self.holders_cursor = next;
        for q in 0..self.seg.params().max_subsystems {
            if self.quarantined.contains(&q) {
                continue;
            }
            let base = self.baselines.get(&q).map_or(0, |b| b.stalls());
            let stalled = crate::status::Baseline::of(&self.seg, q).stalls() > base;
            if stalled || !self.seg.ring_plausible(Some(q)) {
                let name = self.routes.get(&q).map_or("", |r| r.name.as_str());
                tracing::error!(
                    queue = q,
                    subsystem = %name,
                    "queue {q} is corrupt (its ring words cannot be right): quarantined; restart the bus to clear it"
                );
                self.seg.header().counters.corruption.fetch_add(1, Ordering::Relaxed);
                self.quarantined.insert(q);
            }
        }
        if !self.free_ring_corrupt {
            let stalls = self.seg.free_ring().header().stats.stalls.load(Ordering::Relaxed);
            if stalls > 0 || !self.seg.ring_plausible(None) {
                tracing::error!(
                    "the free ring is corrupt (its ring words cannot be right): sends may find no free slot, \
                     and released slots may be lost; restart the bus to clear it"
                );
                self.seg.header().counters.corruption.fetch_add(1, Ordering::Relaxed);
                self.free_ring_corrupt = true;
            }
        }
    }

    /// Frees what is left in reply queues whose requester has been gone for
    /// a while: replies that arrived after it stopped waiting.
    fn drain_abandoned_reply_queues(&mut self) {
        for (&q, since) in &self.idle_since {
            if since.elapsed() < RECYCLE_AFTER {
                continue;
            }
            let Some(v) = routing::read_as_writer(&self.seg, q) else { continue };
            if v.subscribers == 0 && v.name().starts_with("_reply.") && self.seg.queue(q).is_some_and(|r| !r.is_empty())
            {
                let n = bus_core::reclaim::drain_queue(&self.seg, &Group::default_of(q));
                tracing::debug!(queue = q, freed = n, "drained an abandoned reply queue");
            }
        }
    }

    /// Sets queue `q`'s subscriber count from the connections' records, and
    /// notes when it became idle.
    fn recount(&mut self, q: u32) {
        let n = self.subscribers_of(q);
        self.publish(q);
        if n == 0 {
            self.idle_since.entry(q).or_insert_with(std::time::Instant::now);
        } else {
            self.idle_since.remove(&q);
        }
    }

    /// Before a client gets an entry (and so, later, a welcome it could
    /// resume with): the record must no longer say that nobody can be
    /// waiting for this segment.
    fn note_busy(&mut self) {
        if self.recorded_idle {
            self.recorded_idle = false;
            resume::mark_idle(&self.cfg, false);
        }
    }

    /// Closes connections that did not say hello within [`HELLO_TIMEOUT`]
    /// (a client always says it first): each holds an entry of the client
    /// table, and enough silent ones would refuse every other client.
    fn close_silent(&mut self) {
        // One with a packet waiting is left to be read first (the loop may
        // have stalled with its hello queued).
        let silent: Vec<u32> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.welcomed && c.since.elapsed() > HELLO_TIMEOUT && !control::readable_now(c.fd.as_fd()))
            .map(|(&id, _)| id)
            .collect();
        for id in silent {
            let c = &self.conns[&id];
            tracing::warn!(
                client = id,
                pid = c.pid,
                uid = c.uid,
                "closing a connection not welcomed within {HELLO_TIMEOUT:?} (it sent no hello, or one that was refused)"
            );
            self.drop_client(id);
        }
    }

    fn drop_client(&mut self, id: u32) {
        let Some(conn) = self.conns.remove(&id) else { return };
        drop(conn.fd);
        if conn.borrowed {
            return; // the entry is a ghost's, not this connection's
        }
        tracing::info!(client = id, pid = conn.pid, uid = conn.uid, name = %conn.name, "client disconnected");
        for q in conn.subscriptions.iter().map(|sub| sub.queue).collect::<std::collections::BTreeSet<_>>() {
            self.recount(q);
        }
        self.reaper.reap(&self.seg, id, conn.pid);
    }

    fn shutdown(&mut self) {
        let on_purpose = self.shutdown_requested || self.cfg.resume_grace.is_zero();
        resume::retire(&self.cfg, on_purpose);
        if !on_purpose {
            // Stopped by a signal with a resume grace: the segment stays
            // RUNNING, its record stays, and the clients wait for the next
            // daemon (see [`resume`]).
            self.conns.clear();
            remove_socket(&self.cfg.socket, self.socket_id);
            tracing::info!(grace = ?self.cfg.resume_grace, "stopped; clients wait for the next daemon");
            return;
        }
        let h = self.seg.header();
        // SYNC: daemon-stopped — Release pairs with the Acquire load in
        // `Segment::daemon_running`.
        h.live.daemon_state.store(DAEMON_STOPPED, Ordering::Release);
        let p = self.seg.params();
        let free = self.seg.free_ring();
        free.header().items.ring_all();
        for q in 0..p.max_subsystems {
            if let Some(r) = self.seg.queue(q) {
                r.header().items.ring_all();
                r.header().space.ring_all();
            }
        }
        self.conns.clear();
        remove_socket(&self.cfg.socket, self.socket_id);
        tracing::info!("stopped");
    }
}

/// The socket's directory must be owned by this user or root, and not
/// writable by anyone else unless sticky (like `/tmp`, where nobody can
/// remove or replace another's file): otherwise another user could swap the
/// socket for one of their own, and receive every client.
pub fn check_runtime_dir(dir: &Path) -> Result<(), DaemonError> {
    use std::os::unix::fs::MetadataExt;
    let unsafe_dir = |why: String| DaemonError::UnsafeRuntimeDir { dir: dir.to_owned(), why };
    let md = std::fs::metadata(dir)
        .map_err(|source| DaemonError::Io { what: format!("checking {}", dir.display()), source })?;
    if !md.is_dir() {
        return Err(unsafe_dir("it is not a directory".into()));
    }
    let me = nix::unistd::geteuid().as_raw();
    if md.uid() != me && md.uid() != 0 {
        return Err(unsafe_dir(format!(
            "it belongs to {} (uid {}), not to this user ({}) or root",
            crate::access::user_name(md.uid()),
            md.uid(),
            me
        )));
    }
    let mode = md.mode();
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(unsafe_dir(format!("others can write it (mode {:04o}) and it is not sticky", mode & 0o7777)));
    }
    Ok(())
}

/// The device and inode of the file at `path` (not following a link).
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Removes the socket this daemon bound at `path` (`id`, from [`file_id`]
/// right after binding), unless the file there is another by now.
fn remove_socket(path: &Path, id: Option<(u64, u64)>) {
    if id.is_some() && file_id(path) == id {
        let _ = std::fs::remove_file(path);
    }
}

/// Creates the socket's directory if it is missing, and checks it.
fn runtime_dir(path: &Path) -> Result<(), DaemonError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            use std::os::unix::fs::DirBuilderExt;
            let private = dir.file_name().is_some_and(|n| n.to_string_lossy().starts_with("shmbus-"));
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(if private { 0o700 } else { 0o755 })
                .create(dir)
                .map_err(|source| DaemonError::Io { what: format!("creating {}", dir.display()), source })?;
        }
        check_runtime_dir(dir)?;
    }
    Ok(())
}

/// Takes the path's lock (see [`crate::path_lock`]), then binds the socket,
/// replacing a stale one.
fn bind_socket(path: &Path, mode: u32) -> Result<(OwnedFd, PathLock), DaemonError> {
    runtime_dir(path)?;
    let lock = PathLock::take(path).map_err(|e| match e {
        LockError::Held => DaemonError::AlreadyRunning { socket: path.to_owned() },
        LockError::Foreign(lock) => DaemonError::Io {
            what: format!(
                "{} is not a regular file of this user: remove it, or choose another --socket",
                lock.display()
            ),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        },
        LockError::Io(source) => {
            DaemonError::Io { what: format!("locking {}", crate::path_lock::lock_path(path).display()), source }
        }
    })?;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if !t.is_socket() {
            let what = if t.is_symlink() {
                "a symbolic link"
            } else if t.is_dir() {
                "a directory"
            } else if t.is_file() {
                "a regular file"
            } else {
                "a special file"
            };
            return Err(DaemonError::NotASocket { path: path.to_owned(), what });
        }
        // A full listen queue (EAGAIN) is a live daemon too, or a stopped one.
        match control::connect(path, std::time::Instant::now() + std::time::Duration::from_secs(1)) {
            Ok(_) | Err(nix::errno::Errno::EAGAIN) => {
                return Err(DaemonError::AlreadyRunning { socket: path.to_owned() })
            }
            Err(nix::errno::Errno::ECONNREFUSED) => {
                tracing::warn!(socket = %path.display(), "removing a stale socket left by a daemon that died");
                std::fs::remove_file(path)
                    .map_err(|source| DaemonError::Io { what: format!("removing stale {}", path.display()), source })?;
            }
            Err(e) => {
                return Err(DaemonError::Io {
                    what: format!("{} exists and is not a live shmbus socket; remove it", path.display()),
                    source: e.into(),
                })
            }
        }
    }
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(io_err("socket"))?;
    let addr = UnixAddr::new(path).map_err(io_err(format!("socket path {}", path.display())))?;
    socket::bind(fd.as_raw_fd(), &addr).map_err(|e| match e {
        nix::errno::Errno::EADDRINUSE => DaemonError::AlreadyRunning { socket: path.to_owned() },
        e => io_err(format!("binding {}", path.display()))(e),
    })?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|source| DaemonError::Io { what: format!("chmod {}", path.display()), source })?;
    socket::listen(&fd, socket::Backlog::new(128).expect("valid backlog")).map_err(io_err("listen"))?;
    Ok((fd, lock))
}
