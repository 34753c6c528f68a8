//! Surviving a daemon restart: a new daemon adopts the segment of the one
//! that died, and its clients resume their identities.
//!
//! With `resume-grace` above zero, a daemon that dies (or is stopped by a
//! signal) leaves the segment RUNNING, with its queued messages. Where the
//! next daemon finds it:
//! - under systemd, in the service's file descriptor store: every daemon
//!   with a grace stores its memfd there (`FDSTORE=1`, `FDNAME=segment`),
//!   and systemd hands it back at the restart (`LISTEN_FDS`);
//! - otherwise, from the first client that resumes, which sends the memfd
//!   with its hello. The daemon takes it only if its `(st_dev, st_ino)` is
//!   what its predecessor recorded beside the socket (`SOCKET.segment`, in
//!   a directory only the daemon's user can write), so that a crafted memfd
//!   is refused.
//!
//! The adopting daemon rebuilds its tables from the segment: the routing
//! entries (names, flags, groups, and their subscriber counts, which stand
//! for the subscriptions of clients not resumed yet), and the client
//! table, whose active entries become ghosts. A client resumes with its
//! entry, serial, pid and uid, and names its subscriptions. A ghost whose
//! process is gone, or that does not resume within the grace, is reclaimed
//! like any dead client: its held messages are redelivered. Only a
//! `shutdown` request ends the bus on purpose (STOPPED: clients get
//! `BusGone` at once, and the record and stored fd are dropped).

use super::{Record, RecordKind, Server, Sub};
use crate::config::Config;
use bus_client::control::{self, Received};
use bus_client::protocol::{ErrorKind, Reply, Request, Resume};
use bus_core::layout::{
    CLIENT_ACTIVE, CLIENT_FREE, CLIENT_RECLAIMING, DAEMON_RUNNING, MAX_GROUPS, ROUTE_DURABLE, ROUTE_EPHEMERAL,
    ROUTE_LOSSY, ROUTE_RESTRICTED,
};
use bus_core::routing::{self, Kind};
use bus_core::segment::Segment;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A client of the previous daemon that has not resumed yet.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ghost {
    pub(super) serial: u32,
    pub(super) pid: u32,
    pub(super) uid: u32,
    /// Reclaimed if not resumed by then.
    deadline: Instant,
}

/// What a daemon with a grace records beside its socket, for the next one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Handoff {
    /// The memfd's device and inode.
    dev: u64,
    ino: u64,
    /// The segment's `bus_generation`.
    generation: u64,
    /// The daemon that wrote it.
    pid: u32,
}

/// Connections kept while waiting for a resuming client, beyond the
/// client table's size.
const EARLY_EXTRA: usize = 16;

/// The name systemd stores the segment's fd under.
const FD_NAME: &str = "segment";

fn handoff_path(socket: &Path) -> PathBuf {
    let mut p = socket.as_os_str().to_owned();
    p.push(".segment");
    PathBuf::from(p)
}

/// Beside the record while the daemon has no client, nor a client of its
/// predecessor waiting to resume: nobody can be waiting for the segment,
/// and the next daemon starts a new bus at once. A file of its own, not a
/// field of the record, so that a client's arrival takes it away with an
/// unlink (which a full disk does not fail), before the client's welcome.
fn idle_path(socket: &Path) -> PathBuf {
    let mut p = socket.as_os_str().to_owned();
    p.push(".segment.idle");
    PathBuf::from(p)
}

/// Whether the idle mark is there, as a private file of this user.
fn marked_idle(socket: &Path) -> bool {
    std::fs::symlink_metadata(idle_path(socket)).is_ok_and(|md| private_file_of_ours(&md))
}

/// A regular file owned by this daemon's user and private to it: only
/// such a record or mark is trusted (in a sticky directory such as /tmp,
/// another user could have put one there first).
fn private_file_of_ours(md: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    md.is_file() && md.uid() == nix::unistd::geteuid().as_raw() && md.mode() & 0o077 == 0
}

/// Marks the daemon idle (it has no client and no ghost) or busy (see
/// [`idle_path`]). Busy must hold before a client is welcomed: a failure to
/// remove the mark is logged as an error.
pub(super) fn mark_idle(cfg: &Config, idle: bool) {
    if cfg.resume_grace.is_zero() {
        return;
    }
    let path = idle_path(&cfg.socket);
    if idle {
        use std::os::unix::fs::OpenOptionsExt;
        // Not marked (busy, the safe side) if it cannot be written.
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&path);
    } else {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::error!(
                "cannot remove {}: {e}; if this daemon dies now, the next one will not wait for its clients to resume",
                path.display()
            ),
        }
    }
}

/// The record beside the socket, if this daemon's user wrote it (a regular
/// file, not a link, owned by us and private: in a sticky directory such
/// as /tmp, another user could have put one there first), and how long
/// ago it was last touched (every daemon with a grace touches it every
/// second while it runs).
fn read_handoff(path: &Path) -> Option<(Handoff, Duration)> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path).ok()?;
    let md = f.metadata().ok()?;
    if !private_file_of_ours(&md) {
        tracing::warn!("ignoring {}: not a private file of this daemon's user", path.display());
        return None;
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut f, &mut text).ok()?;
    let age = md.modified().ok().and_then(|m| m.elapsed().ok()).unwrap_or(Duration::MAX);
    toml::from_str::<Handoff>(&text).ok().map(|h| (h, age))
}

/// Every second or so while serving: tells the next daemon that clients
/// may still be waiting (see [`find_segment`]).
pub(super) fn heartbeat(cfg: &Config) {
    if cfg.resume_grace.is_zero() {
        return;
    }
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(f) =
        std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NOFOLLOW).open(handoff_path(&cfg.socket))
    {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

fn identity(fd: BorrowedFd<'_>) -> Option<(u64, u64)> {
    nix::sys::stat::fstat(fd).ok().map(|st| (st.st_dev, st.st_ino))
}

/// What [`find_segment`] found: the predecessor's segment, if there is one
/// to adopt, and the connections accepted while waiting for it.
pub(super) type Found = (Option<Segment>, Vec<OwnedFd>);

/// A stop came while the daemon waited for a resuming client.
#[derive(Debug)]
pub(super) struct Stopped;

/// The predecessor's segment, if there is one to adopt, and the
/// connections accepted while waiting for it (served once the daemon runs).
///
/// `Err(Stopped)` if one of `stop` became readable (SIGTERM, say) while it
/// waited: the previous segment and its record are left as they are, for
/// the next daemon.
pub(super) fn find_segment(cfg: &Config, listener: &OwnedFd, stop: &[BorrowedFd<'_>]) -> Result<Found, Stopped> {
    let record = handoff_path(&cfg.socket);
    if cfg.resume_grace.is_zero() {
        let _ = std::fs::remove_file(&record);
        return Ok((None, Vec::new()));
    }
    let handoff = read_handoff(&record);
    if let Some(fd) = from_fd_store() {
        let recorded = handoff.as_ref().map(|(h, _)| h);
        let seg = Segment::open(fd).map_err(|e| e.to_string()).and_then(|seg| adoptable(cfg, seg, recorded));
        match seg {
            Ok(seg) => {
                tracing::info!("adopting the segment systemd kept for us");
                return Ok((Some(seg), Vec::new()));
            }
            Err(why) => tracing::warn!("not adopting the segment in systemd's fd store: {why}"),
        }
    }
    let Some((handoff, age)) = handoff else {
        return Ok((None, Vec::new()));
    };
    if marked_idle(&cfg.socket) {
        tracing::info!("the previous daemon had no clients when it went: starting a new bus");
        let _ = std::fs::remove_file(&record);
        let _ = std::fs::remove_file(idle_path(&cfg.socket));
        return Ok((None, Vec::new()));
    }
    // Clients give up a grace after their daemon went; it touched the
    // record every second until then.
    let slack = Duration::from_secs(2);
    if age > cfg.resume_grace + slack {
        tracing::info!(
            ?age,
            "the previous daemon left a segment too long ago for any client to be waiting: starting a new bus"
        );
        let _ = std::fs::remove_file(&record);
        return Ok((None, Vec::new()));
    }
    let wait = (cfg.resume_grace + slack).saturating_sub(age);
    tracing::info!(?wait, "a previous daemon left a segment: waiting for a client to bring it back");
    let cap = cfg.shape.max_clients as usize + EARLY_EXTRA;
    let (fd, early) = wait_for_resumer(listener, (handoff.dev, handoff.ino), wait, &cfg.access, cap, stop)?;
    let Some(fd) = fd else {
        tracing::warn!("no client brought the previous segment back within the grace: starting a new bus");
        return Ok((None, early));
    };
    match Segment::open(fd).map_err(|e| e.to_string()).and_then(|seg| adoptable(cfg, seg, Some(&handoff))) {
        Ok(seg) => Ok((Some(seg), early)),
        Err(why) => {
            tracing::warn!("not adopting the previous segment ({why}): starting a new bus");
            Ok((None, early))
        }
    }
}

/// The segment if this daemon can serve it: same bus and shape as the
/// config, not shut down on purpose, and the generation recorded.
fn adoptable(cfg: &Config, seg: Segment, handoff: Option<&Handoff>) -> Result<Segment, String> {
    let p = seg.params();
    if p.bus_name() != cfg.bus {
        return Err(format!("it is bus {:?}, not {:?}", p.bus_name(), cfg.bus));
    }
    if p.shape() != cfg.shape {
        return Err("its shape differs from the config's (slots, sizes, limits)".into());
    }
    if handoff.is_some_and(|h| h.generation != p.bus_generation) {
        return Err("its generation is not the one recorded".into());
    }
    if seg.header().live.daemon_state.load(Ordering::Acquire) != DAEMON_RUNNING {
        return Err("it was shut down".into());
    }
    Ok(seg)
}

/// The fd systemd kept under [`FD_NAME`], if it started us with one.
fn from_fd_store() -> Option<OwnedFd> {
    let fds = sd_notify::listen_fds_with_names(true).ok()?;
    let mut found = None;
    for (raw, name) in fds {
        // SAFETY: systemd passed these descriptors to this process
        // (LISTEN_PID is ours); nothing else owns them.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        if name == FD_NAME && found.is_none() {
            found = Some(fd);
        }
    }
    found
}

/// A connection accepted while waiting for a resuming client.
struct Early {
    fd: OwnedFd,
    /// When it was accepted.
    at: Instant,
    /// Its first packet was looked at: a hello, waiting to be served.
    seen: bool,
    /// That hello resumes a client (served first, see below).
    resumes: bool,
    /// Looks at a resuming hello that came without its memfd (the
    /// descriptor table was full as it was peeked).
    tries: u32,
}

/// Accepts connections for up to `grace`, looking (without consuming it)
/// at each one's first packet, until one is a resuming hello carrying the
/// memfd `want` names. Returns that memfd, and the connections accepted
/// meanwhile: those with a resuming hello first (the one that brought the
/// segment among them), so that a full client table cannot keep the
/// clients waiting for their entries out (they may only resume).
///
/// Bounded like the serving loop: at most `cap` connections are kept (the
/// rest wait in the listen queue); one that sends nothing within
/// [`super::HELLO_TIMEOUT`], hangs up, or sends something other than a
/// hello is closed; and accepting pauses for [`super::ACCEPT_BACKOFF`]
/// when descriptors or memory run out. So neither silent connections nor
/// a full descriptor table can keep the resuming client out.
fn wait_for_resumer(
    listener: &OwnedFd,
    want: (u64, u64),
    grace: Duration,
    policy: &crate::access::Policy,
    cap: usize,
    stop: &[BorrowedFd<'_>],
) -> Result<(Option<OwnedFd>, Vec<OwnedFd>), Stopped> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let deadline = Instant::now() + grace;
    let mut early: Vec<Early> = Vec::new();
    let mut buf = Vec::new();
    let mut paused_until: Option<Instant> = None;
    let mut accept_failed = false;
    let served = |mut early: Vec<Early>| -> Vec<OwnedFd> {
        early.sort_by_key(|e| !e.resumes);
        early.into_iter().map(|e| e.fd).collect()
    };
    while Instant::now() < deadline {
        early.retain(|e| e.seen || e.at.elapsed() < super::HELLO_TIMEOUT);
        let paused = paused_until.is_some_and(|t| Instant::now() < t);
        let left = deadline.saturating_duration_since(Instant::now()).min(Duration::from_millis(100));
        let listen = if paused || early.len() >= cap { PollFlags::empty() } else { PollFlags::POLLIN };
        let mut fds = vec![PollFd::new(listener.as_fd(), listen)];
        // Seen ones only for their hang-up (reported whatever is asked).
        fds.extend(
            early
                .iter()
                .map(|e| PollFd::new(e.fd.as_fd(), if e.seen { PollFlags::empty() } else { PollFlags::POLLIN })),
        );
        fds.extend(stop.iter().map(|f| PollFd::new(*f, PollFlags::POLLIN)));
        if poll(&mut fds, PollTimeout::from(left.as_millis() as u16)).is_err() {
            continue;
        }
        let revents: Vec<PollFlags> = fds.iter().map(|f| f.revents().unwrap_or(PollFlags::empty())).collect();
        drop(fds);
        if revents[1 + early.len()..].iter().any(|r| !r.is_empty()) {
            return Err(Stopped);
        }
        let mut gone = vec![false; early.len()];
        for (i, e) in early.iter_mut().enumerate() {
            let r = revents[i + 1];
            if e.seen {
                gone[i] = r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR);
                continue;
            }
            if r.is_empty() {
                continue;
            }
            let hello = match control::peek::<Request>(e.fd.as_fd(), &mut buf) {
                Ok(Received::Packet(Request::Hello { resume, waits, .. }, fd)) => ((resume.is_some(), waits), fd),
                // Closed, not a hello, or unreadable: nothing to serve.
                _ => {
                    gone[i] = true;
                    continue;
                }
            };
            // Only clients the policy lets on the bus are kept: others could
            // otherwise fill the connections kept here (`cap`) and keep the
            // resuming client out.
            // Refused as a serving daemon refuses: with the policy's reason
            // (the hello has arrived, so the answer goes out at once).
            let refusal = match nix::sys::socket::getsockopt(&e.fd, nix::sys::socket::sockopt::PeerCredentials) {
                Ok(c) => policy.check(&crate::access::peer(c.pid(), c.uid(), c.gid()), crate::access::Action::Connect),
                Err(e) => Err(format!("its credentials could not be read ({e})")),
            };
            if let Err(message) = refusal {
                tracing::info!("refusing a client while waiting for a resuming one: {message}");
                // The peeked hello is read first: a socket closed with
                // unread data resets the connection, and the client would
                // see that instead of the answer.
                let _ = control::recv::<Request>(e.fd.as_fd(), &mut buf);
                let _ = control::send(e.fd.as_fd(), &Reply::Error { kind: ErrorKind::PermissionDenied, message }, None);
                gone[i] = true;
                continue;
            }
            let ((resumes, waits), memfd) = hello;
            match (resumes, memfd) {
                (true, Some(fd)) => {
                    e.seen = true;
                    e.resumes = true;
                    if identity(fd.as_fd()) == Some(want) {
                        return Ok((Some(fd), served(early)));
                    }
                    tracing::warn!("a client offered a segment that is not the recorded one: ignored");
                }
                // A resuming hello always carries the memfd: without it, the
                // descriptor table was full as it was peeked. Looked at again
                // after a pause (a few times: a client could send one so).
                (true, None) if e.tries < 3 => {
                    e.tries += 1;
                    paused_until = Some(Instant::now() + super::ACCEPT_BACKOFF);
                }
                (resumes, _) => {
                    e.seen = true;
                    e.resumes = resumes;
                    // A new client is served once the wait ends: told so
                    // now, so that one that cannot wait that long says why
                    // it gave up (not "the daemon did not answer").
                    if !resumes && waits {
                        let wait_ms = deadline.saturating_duration_since(Instant::now()).as_millis() as u64;
                        let _ = control::send(e.fd.as_fd(), &Reply::Restarting { wait_ms }, None);
                    }
                }
            }
        }
        let mut k = 0;
        early.retain(|_| {
            k += 1;
            !gone[k - 1]
        });
        if revents[0].contains(PollFlags::POLLIN) {
            while early.len() < cap {
                match nix::sys::socket::accept4(
                    listener.as_raw_fd(),
                    nix::sys::socket::SockFlag::SOCK_CLOEXEC | nix::sys::socket::SockFlag::SOCK_NONBLOCK,
                ) {
                    Ok(raw) => {
                        // SAFETY: accept4 returned a new descriptor we now own.
                        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                        early.push(Early { fd, at: Instant::now(), seen: false, resumes: false, tries: 0 });
                    }
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) if super::out_of_room(e) => {
                        // The pending connection keeps the listener readable.
                        if !accept_failed {
                            tracing::warn!(
                                "cannot accept connections: {e}; retrying every {:?}",
                                super::ACCEPT_BACKOFF
                            );
                            accept_failed = true;
                        }
                        paused_until = Some(Instant::now() + super::ACCEPT_BACKOFF);
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
    }
    Ok((None, served(early)))
}

/// After bind: with a grace, records the segment for the next daemon
/// (beside the socket, and in systemd's fd store when run by it).
pub(super) fn publish(cfg: &Config, seg: &Segment, idle: bool) {
    if cfg.resume_grace.is_zero() {
        return;
    }
    // Busy first (whatever a previous daemon left), then the record, then
    // idle if it is: a death in between errs on the side of waiting.
    mark_idle(cfg, false);
    record(cfg, seg);
    if idle {
        mark_idle(cfg, true);
    }
    // The store keeps one segment: an older one (adopted or not) goes.
    let _ = notify(&format!("FDSTOREREMOVE=1\nFDNAME={FD_NAME}\n"), None);
    if let Err(e) = notify(&format!("FDSTORE=1\nFDNAME={FD_NAME}\n"), Some(seg.fd())) {
        tracing::warn!("cannot store the segment with systemd: {e}");
    }
}

/// Writes the record beside the socket: the segment's identity.
fn record(cfg: &Config, seg: &Segment) {
    let Some((dev, ino)) = identity(seg.fd()) else { return };
    let handoff = Handoff { dev, ino, generation: seg.params().bus_generation, pid: std::process::id() };
    let path = handoff_path(&cfg.socket);
    let tmp = handoff_path(&cfg.socket).with_extension("segment.new");
    let text = toml::to_string(&handoff).expect("a flat record serializes");
    use std::os::unix::fs::OpenOptionsExt;
    // A fresh private file (not one someone left there, nor a link), then
    // renamed over the record.
    let _ = std::fs::remove_file(&tmp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        tracing::warn!("cannot record the segment for the next daemon in {}: {e}", path.display());
    }
}

/// At the end: a bus ended on purpose leaves nothing to adopt.
pub(super) fn retire(cfg: &Config, on_purpose: bool) {
    if on_purpose {
        let _ = std::fs::remove_file(handoff_path(&cfg.socket));
        let _ = std::fs::remove_file(idle_path(&cfg.socket));
        let _ = notify(&format!("FDSTOREREMOVE=1\nFDNAME={FD_NAME}\n"), None);
    }
}

/// Sends `state` to systemd's notify socket (if run by systemd), with `fd`.
fn notify(state: &str, fd: Option<BorrowedFd<'_>>) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, socket, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr};
    use std::os::unix::ffi::OsStrExt;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET").filter(|p| !p.is_empty()) else { return Ok(()) };
    let sock = socket(AddressFamily::Unix, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
    let bytes = path.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => UnixAddr::new_abstract(name)?,
        None => UnixAddr::new(Path::new(&path))?,
    };
    let iov = [std::io::IoSlice::new(state.as_bytes())];
    let raw;
    let cmsgs: Vec<ControlMessage<'_>> = match fd {
        Some(fd) => {
            raw = [fd.as_raw_fd()];
            vec![ControlMessage::ScmRights(&raw)]
        }
        None => Vec::new(),
    };
    sendmsg(sock.as_raw_fd(), &iov, &cmsgs, MsgFlags::empty(), Some(&addr))?;
    Ok(())
}

/// Whether process `pid` still exists (a pid reused since counts as alive:
/// its ghost is then reclaimed when the grace ends).
fn alive(pid: u32) -> bool {
    !matches!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None), Err(nix::errno::Errno::ESRCH))
        && pid != 0
}

impl Server {
    /// Rebuilds the daemon's tables from an adopted segment (see the module
    /// doc).
    pub(super) fn adopt(&mut self) {
        let p = *self.seg.params();
        let views: Vec<_> = (0..p.max_subsystems).filter_map(|q| routing::read_as_writer(&self.seg, q)).collect();
        let mut groups_of: BTreeMap<u32, [Option<u32>; MAX_GROUPS]> = BTreeMap::new();
        for v in &views {
            if let Kind::Group { subsystem, slot } = v.kind {
                groups_of.entry(subsystem).or_insert([None; MAX_GROUPS])[slot as usize] = Some(v.queue);
            }
        }
        let now = Instant::now();
        for v in &views {
            let kind = match v.kind {
                Kind::Subsystem { .. } => {
                    RecordKind::Subsystem { groups: groups_of.get(&v.queue).copied().unwrap_or([None; MAX_GROUPS]) }
                }
                Kind::Group { subsystem, slot } => {
                    // A group whose subsystem entry is not a subsystem is
                    // left out (and the entry cleared by the republish).
                    if !views.iter().any(|s| s.queue == subsystem && matches!(s.kind, Kind::Subsystem { .. })) {
                        continue;
                    }
                    RecordKind::Group { subsystem, slot }
                }
            };
            let mut flags = v.flags & !ROUTE_RESTRICTED;
            if matches!(kind, RecordKind::Subsystem { .. }) && self.cfg.access.restricts_publish(v.name()) {
                flags |= ROUTE_RESTRICTED;
            }
            flags = self.configured_flags(&views, v, &kind, flags);
            self.routes.insert(v.queue, Record { name: v.name().to_owned(), flags, kind });
            self.baselines.insert(v.queue, crate::status::Baseline::adopted(&self.seg, v.queue));
            if v.subscribers > 0 {
                self.pending_subs.insert(v.queue, v.subscribers);
            } else {
                self.idle_since.insert(v.queue, now);
            }
        }
        let live = &self.seg.header().live;
        let mut next = live.next_serial.load(Ordering::Relaxed).max(1);
        let deadline = now + self.cfg.resume_grace;
        for c in 0..p.max_clients {
            let Some(info) = self.seg.client_info(c) else { break };
            // SYNC: client-state — pairs with the previous daemon's Release.
            let state = info.state.load(Ordering::Acquire);
            let serial = info.serial.load(Ordering::Relaxed);
            let pid = info.pid.load(Ordering::Relaxed);
            match state {
                CLIENT_ACTIVE => {
                    next = next.max(serial.wrapping_add(1)).max(1);
                    let uid = info.uid.load(Ordering::Relaxed);
                    self.ghosts.insert(c, Ghost { serial, pid, uid, deadline });
                }
                // The previous daemon died while reclaiming it: finish.
                CLIENT_RECLAIMING => self.reaper.reap(&self.seg, c, pid),
                CLIENT_FREE => {}
                other => {
                    tracing::error!(client = c, state = other, "client entry {c} holds state {other}: cleared");
                    self.seg.header().counters.corruption.fetch_add(1, Ordering::Relaxed);
                    self.reaper.reap(&self.seg, c, pid);
                }
            }
        }
        self.next_serial = next;
        for q in self.routes.keys().copied().collect::<Vec<_>>() {
            self.publish(q);
        }
        for q in 0..p.max_subsystems {
            if !self.routes.contains_key(&q) {
                routing::rewrite(&self.seg, q, None);
            }
        }
        tracing::info!(
            entries = self.routes.len(),
            clients = self.ghosts.len(),
            grace = ?self.cfg.resume_grace,
            "adopted the previous daemon's segment: waiting for its clients to resume"
        );
        self.tend_ghosts();
    }

    /// An adopted entry's flags as this daemon's config has them, so that
    /// a restart applies a changed config: a subsystem is durable exactly
    /// when `durable` names it; a group `[[group]]` declares is durable,
    /// lossy or blocking as declared, and one it no longer declares is no
    /// longer durable (it keeps what it holds for its next subscriber, as
    /// any group does). Taps keep theirs.
    fn configured_flags(
        &self,
        views: &[routing::RouteView],
        v: &routing::RouteView,
        kind: &RecordKind,
        flags: u32,
    ) -> u32 {
        match kind {
            RecordKind::Subsystem { .. } => {
                let durable = self.cfg.durable.iter().any(|d| d == v.name());
                (flags & !ROUTE_DURABLE) | if durable { ROUTE_DURABLE } else { 0 }
            }
            RecordKind::Group { .. } if flags & ROUTE_EPHEMERAL != 0 => flags,
            RecordKind::Group { subsystem, .. } => {
                let Some(parent) = views.iter().find(|s| s.queue == *subsystem) else { return flags };
                let declared = self.cfg.groups.iter().find(|g| g.subsystem == parent.name() && g.name == v.name());
                match declared {
                    Some(g) => (flags & !(ROUTE_DURABLE | ROUTE_LOSSY)) | routing::group_flags(true, g.lossy, false),
                    None => flags & !ROUTE_DURABLE,
                }
            }
        }
    }

    /// Client connection `id` asks to resume client `r.client` (see the
    /// module doc). On success the connection moves to that entry
    /// (`moved_to`).
    pub(super) fn resume(&mut self, id: u32, r: Resume) -> Reply {
        let refuse = |message: String| Reply::Error { kind: ErrorKind::Invalid, message };
        let conn = &self.conns[&id];
        let Some(ghost) = self.ghosts.get(&r.client).copied() else {
            return refuse(format!(
                "cannot resume client {}: this daemon has no such client waiting (the bus was restarted without its \
                 segment, or the client was reclaimed after the grace); connect again",
                r.client
            ));
        };
        if r.bus_generation != self.seg.params().bus_generation
            || ghost.serial != r.serial
            || ghost.pid != conn.pid
            || ghost.uid != conn.uid
        {
            return refuse(format!("cannot resume client {}: it was another process or another bus", r.client));
        }
        // This daemon's policy, which may differ from the last one's. A
        // client that may no longer hold one of its subscriptions does not
        // resume at all: its library would go on taking that queue's
        // messages whatever the daemon's books say. It gets `BusGone`, and
        // connects again (where subscribing is checked); its entry is
        // reclaimed as a ghost's.
        for sub in r.subscriptions.iter().filter(|s| !s.subsystem.starts_with("_reply.")) {
            if let Err(why) = self.cfg.access.check(&conn.peer, crate::access::Action::Subscribe(&sub.subsystem)) {
                tracing::warn!(client = r.client, subsystem = %sub.subsystem, "a resuming client's subscription is no longer allowed: resumption refused ({why})");
                return Reply::Error {
                    kind: ErrorKind::PermissionDenied,
                    message: format!(
                        "cannot resume client {}: its subscription to {:?} is no longer allowed ({why}); connect again",
                        r.client, sub.subsystem
                    ),
                };
            }
        }
        let g = r.client;
        if g != id {
            if let Some(other) = self.conns.get(&g) {
                // Another connection of the same process waits in that
                // entry for lack of a free one (see `Server::admit`): if
                // this one waits in a borrowed entry too, they swap;
                // otherwise this one asks again shortly.
                if !(other.borrowed && conn.borrowed) {
                    return Reply::Error {
                        kind: ErrorKind::TooManyClients,
                        message: format!("client entry {g} is busy: try again"),
                    };
                }
                let mut other = self.conns.remove(&g).expect("present");
                other.client = id;
                let mine = self.conns.insert(id, other).expect("present");
                self.conns.insert(g, mine);
                return self.resume_in_place(g, r, ghost);
            }
        }
        self.resume_in_place(id, r, ghost)
    }

    /// [`Server::resume`] once connection `id` may take entry `r.client`.
    fn resume_in_place(&mut self, id: u32, r: Resume, ghost: Ghost) -> Reply {
        let mut conn = self.conns.remove(&id).expect("present");
        if !conn.borrowed {
            // The entry it was given at accept was only provisional.
            if let Some(info) = self.seg.client_info(id) {
                info.pid.store(0, Ordering::Relaxed);
                // SYNC: client-state — pairs with the Acquire in `admit`'s
                // callers and status readers.
                info.state.store(CLIENT_FREE, Ordering::Release);
            }
        }
        let g = r.client;
        conn.client = g;
        conn.serial = ghost.serial;
        conn.borrowed = false;
        conn.welcomed = true;
        let mut resumed = Vec::new();
        for sub in r.subscriptions {
            let known = match self.routes.get(&sub.queue) {
                Some(Record { kind: RecordKind::Subsystem { .. }, name, .. }) => *name == sub.subsystem,
                Some(Record { kind: RecordKind::Group { subsystem, .. }, name, .. }) => {
                    self.routes.get(subsystem).is_some_and(|s| s.name == sub.subsystem)
                        && (!name.starts_with("tap.") || name.starts_with(&format!("tap.{}.", ghost.serial)))
                }
                None => false,
            };
            if !known || conn.subscriptions.len() >= bus_core::layout::PORTS_PER_CLIENT {
                tracing::warn!(client = g, subsystem = %sub.subsystem, queue = sub.queue, "a resumed subscription names no such entry: dropped");
                continue;
            }
            // (Allowed by this daemon's policy: `resume` checked.)
            if let Some(n) = self.pending_subs.get_mut(&sub.queue) {
                *n = n.saturating_sub(1);
            }
            if let Some(Record { name, .. }) = self.routes.get(&sub.queue) {
                let tap = name.strip_prefix(&format!("tap.{}.", ghost.serial)).and_then(|n| n.parse::<u32>().ok());
                conn.taps = conn.taps.max(tap.unwrap_or(0));
            }
            resumed.push(sub.queue);
            conn.subscriptions.push(Sub { subsystem: sub.subsystem, queue: sub.queue });
        }
        self.pending_subs.retain(|_, n| *n > 0);
        self.ghosts.remove(&g);
        tracing::info!(client = g, pid = conn.pid, subscriptions = resumed.len(), "client resumed");
        self.conns.insert(g, conn);
        self.moved_to = Some(g);
        for q in resumed {
            self.recount(q);
        }
        self.settle_if_resolved();
        self.welcome(g, ghost.serial)
    }

    /// Every tick: reclaims the ghosts whose process is gone or whose grace
    /// passed (a ghost with a connection waiting in its entry is left to
    /// that connection's hello).
    pub(super) fn tend_ghosts(&mut self) {
        if self.ghosts.is_empty() {
            return;
        }
        let now = Instant::now();
        // A ghost not resumed by the end of the grace is reclaimed (a
        // connection waiting in its entry, see `Server::admit`, has
        // `HELLO_TIMEOUT` to say its hello, as any other).
        let done: Vec<(u32, Ghost)> = self
            .ghosts
            .iter()
            .filter(|(c, g)| now >= g.deadline || (!self.conns.contains_key(c) && !alive(g.pid)))
            .map(|(c, g)| (*c, *g))
            .collect();
        for (c, g) in done {
            if self.conns.get(&c).is_some_and(|conn| conn.borrowed) {
                self.conns.remove(&c);
            }
            let why = if alive(g.pid) { "did not resume within the grace" } else { "is gone" };
            tracing::info!(client = c, pid = g.pid, "client of the previous daemon {why}: reclaiming it");
            self.ghosts.remove(&c);
            self.reaper.reap(&self.seg, c, g.pid);
        }
        self.settle_if_resolved();
    }

    /// Once no ghost is left, the subscriber counts are the connections'
    /// alone.
    fn settle_if_resolved(&mut self) {
        if !self.ghosts.is_empty() || self.pending_subs.is_empty() {
            return;
        }
        for q in std::mem::take(&mut self.pending_subs).into_keys() {
            self.recount(q);
        }
    }
}
