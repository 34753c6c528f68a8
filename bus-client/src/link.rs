//! [`Link`]: a client's control connection to its daemon, the thread that
//! watches it, and its resumption after the daemon died.
//!
//! The data path never needs the daemon. With a resume grace (the daemon's
//! `resume-grace`, sent in the welcome), a client whose daemon dies keeps
//! sending and receiving; its watcher thread reconnects to the socket and
//! resumes its identity with the next daemon: same client entry, same
//! serial, the subscriptions it holds, and the segment's memfd, which a
//! daemon started without one adopts (after checking it is the segment its
//! predecessor recorded). Control requests made meanwhile wait for the
//! resumption, bounded by the grace. Only when no daemon takes the client
//! back within the grace, or the daemon was shut down on purpose (its state
//! in the segment says STOPPED), does the bus become gone.

use crate::control::{self, Received};
use crate::error::RequestError;
use crate::protocol::{ErrorKind, Reply, Request, Resume, ResumedSub};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a client whose daemon died tries the socket again.
const RETRY_EVERY: Duration = Duration::from_millis(50);

/// What a client needs to reach its daemon, and to resume with the next.
pub(crate) struct Link {
    pub(crate) socket: PathBuf,
    pub(crate) client: u32,
    pub(crate) serial: u32,
    /// The segment's `bus_generation`: a resumption names it.
    generation: u64,
    /// What the daemon's welcome set: the current daemon's, since a
    /// resumption takes the next daemon's (its config may have changed).
    pub(crate) settings: Settings,
    /// Daemon uids trusted besides root and our own.
    trusted: Vec<u32>,
    /// Receive timeout on the control socket.
    timeout: Duration,
    /// The connection and its receive buffer. The watcher swaps in a new
    /// connection when it resumes, under this lock.
    control: Mutex<(OwnedFd, Vec<u8>)>,
    /// `control`'s descriptor, for a peek without the lock.
    control_raw: AtomicI32,
    /// Set once the daemon is gone for good (shared with `Inner`, whose
    /// calls load it).
    pub(crate) gone: Arc<AtomicBool>,
    /// An eventfd made readable when `gone` is set (see [`Link::mark_gone`]):
    /// asynchronous waiters poll it, since they never wake on a timer to
    /// look at `gone`.
    gone_event: OwnedFd,
    /// Resumptions so far: a request that met a dead connection waits for
    /// this to move.
    resumes: AtomicU64,
    /// Requests on the current connection whose answers did not come in
    /// time: the daemon still sends them, in order, before the answer to
    /// the next request. Locked only under the `control` lock.
    unanswered: Mutex<std::collections::VecDeque<Request>>,
    /// The subscriptions this client holds (subsystem, queue), named in a
    /// resumption.
    subs: Mutex<Vec<ResumedSub>>,
    /// A copy of the segment's memfd, handed to a daemon that starts
    /// without the segment.
    seg_fd: OwnedFd,
    /// The segment's `daemon_state` word (see [`Link::stopped_on_purpose`]).
    daemon_state: StateWord,
    /// The client's name (told to the next daemon too).
    name: String,
    /// The daemon's answers to `may_publish` for subsystems marked
    /// restricted (see `Inner::may_publish`); forgotten when resuming,
    /// since the next daemon may have another policy.
    pub(crate) publish_rights: Mutex<Vec<(String, Result<(), String>)>>,
}

/// The address of the segment's `daemon_state` word.
struct StateWord(*const AtomicU32);

// SAFETY: the pointer is into the shared mapping that `Inner` keeps for as
// long as the `Link` is used (see `Inner`'s field order and its `Drop`,
// which joins the watcher before the mapping goes); an atomic may be read
// from any thread.
unsafe impl Send for StateWord {}
// SAFETY: as above.
unsafe impl Sync for StateWord {}

/// The settings a daemon's welcome gives its clients. Each is one
/// process-local word: the hot path reads them with Relaxed loads, and the
/// watcher thread stores the next daemon's when it resumes (a reader that
/// sees the old value a moment longer is harmless: each value is valid).
pub(crate) struct Settings {
    /// Slots this client may hold at once (`max-slots-per-client`; 0: no
    /// quota). Whether slots are counted at all is fixed at connect (see
    /// `Inner::counting`): counting cannot start midway, so a client that
    /// connected without a quota ignores the next daemon's, and one that
    /// connected with one takes the next daemon's, no quota being
    /// `u32::MAX`.
    quota: AtomicU32,
    /// Whether to keep statistics.
    statistics: AtomicBool,
    /// The resume grace in milliseconds (zero: no resumption).
    grace_ms: AtomicU64,
}

impl Settings {
    /// From a welcome's fields.
    pub(crate) fn new(quota: u32, statistics: bool, grace_ms: u32) -> Settings {
        Settings {
            quota: AtomicU32::new(quota),
            statistics: AtomicBool::new(statistics),
            grace_ms: AtomicU64::new(grace_ms as u64),
        }
    }

    /// The quota (0: none).
    #[inline]
    pub(crate) fn quota(&self) -> u32 {
        self.quota.load(Ordering::Relaxed)
    }

    /// Whether statistics are kept.
    #[inline]
    pub(crate) fn statistics(&self) -> bool {
        self.statistics.load(Ordering::Relaxed)
    }

    /// The resume grace.
    pub(crate) fn grace(&self) -> Duration {
        Duration::from_millis(self.grace_ms.load(Ordering::Relaxed))
    }

    /// Takes the next daemon's settings, from its welcome to a resumption.
    /// A counting client (quota non-zero) whose next daemon has no quota
    /// goes on counting against no limit.
    fn resumed(&self, quota: u32, statistics: bool, grace_ms: u32) {
        if self.quota() != 0 {
            self.quota.store(if quota == 0 { u32::MAX } else { quota }, Ordering::Relaxed);
        }
        self.statistics.store(statistics, Ordering::Relaxed);
        self.grace_ms.store(grace_ms as u64, Ordering::Relaxed);
    }
}

/// Everything [`Link::new`] takes.
pub(crate) struct LinkParts {
    pub(crate) socket: PathBuf,
    pub(crate) fd: OwnedFd,
    pub(crate) buf: Vec<u8>,
    pub(crate) client: u32,
    pub(crate) serial: u32,
    pub(crate) generation: u64,
    pub(crate) settings: Settings,
    pub(crate) trusted: Vec<u32>,
    pub(crate) timeout: Duration,
    pub(crate) seg_fd: OwnedFd,
    pub(crate) daemon_state: *const AtomicU32,
    pub(crate) name: String,
}

impl Link {
    pub(crate) fn new(p: LinkParts) -> std::io::Result<Link> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new
        // descriptor that nothing else owns.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `efd` was just created and is owned by nothing else.
        let gone_event = unsafe { OwnedFd::from_raw_fd(efd) };
        Ok(Link {
            gone_event,
            control_raw: AtomicI32::new(p.fd.as_raw_fd()),
            control: Mutex::new((p.fd, p.buf)),
            socket: p.socket,
            client: p.client,
            serial: p.serial,
            generation: p.generation,
            settings: p.settings,
            trusted: p.trusted,
            timeout: p.timeout,
            gone: Arc::new(AtomicBool::new(false)),
            resumes: AtomicU64::new(0),
            unanswered: Mutex::new(std::collections::VecDeque::new()),
            subs: Mutex::new(Vec::new()),
            seg_fd: p.seg_fd,
            daemon_state: StateWord(p.daemon_state),
            name: p.name,
            publish_rights: Mutex::new(Vec::new()),
        })
    }

    /// Marks the bus gone for good, and makes [`Link::gone_event`]
    /// readable so that asynchronous waiters wake up and find out.
    pub(crate) fn mark_gone(&self) {
        // SYNC: link-gone — pairs with the load of `gone` in
        // `Inner::usable` by an asynchronous waiter that the eventfd woke:
        // the flag is stored before the write, and the wake-up (a system
        // call on each side) orders the two. Its poll, armed once per ring,
        // checks readiness when submitted, so no write is missed.
        self.gone.store(true, Ordering::SeqCst);
        let _ = nix::unistd::write(&self.gone_event, &1u64.to_ne_bytes());
    }

    /// The eventfd that becomes readable once the bus is gone (never read:
    /// it stays readable).
    #[cfg(feature = "tokio")]
    pub(crate) fn gone_event(&self) -> std::os::fd::BorrowedFd<'_> {
        self.gone_event.as_fd()
    }

    /// The control socket's descriptor now.
    pub(crate) fn control_raw(&self) -> RawFd {
        self.control_raw.load(Ordering::Relaxed)
    }

    /// Whether the daemon's end of the current connection has closed (a
    /// peek without the lock, which a request may hold up to the grace). A
    /// descriptor the watcher closed meanwhile reads as closed.
    pub(crate) fn hung_up(&self) -> bool {
        // SAFETY: a raw descriptor number, only polled: if the watcher
        // swapped the connection meanwhile, the poll sees a closed number
        // (POLLNVAL: closed) or the new connection; it never reads or
        // writes through it.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.control_raw()) };
        control::peer_closed(fd)
    }

    /// Sends `req` and waits for the answer. If the daemon died, waits for
    /// the resumption (up to the grace) and asks the next daemon.
    pub(crate) fn request(&self, req: &Request) -> Result<Reply, RequestError> {
        let deadline = crate::bus::deadline_in(self.settings.grace().saturating_add(self.timeout));
        loop {
            let seen = self.resumes.load(Ordering::Acquire);
            match self.request_once(req) {
                Err(RequestError::BusGone)
                    if !self.settings.grace().is_zero() && !self.gone.load(Ordering::Relaxed) =>
                {
                    if !self.wait_resumed(seen, deadline) {
                        return Err(RequestError::BusGone);
                    }
                }
                other => return other,
            }
        }
    }

    /// One try on the current connection. Keeps the list of subscriptions
    /// a resumption names, under the same lock as the connection, so that
    /// a resumption lists exactly what the daemon granted: a subscription
    /// is added when granted, and removed before its end is asked for (a
    /// dead daemon cannot answer, and the next must not hear of it).
    pub(crate) fn request_once(&self, req: &Request) -> Result<Reply, RequestError> {
        self.try_request(req, true)
    }

    /// [`Link::request_once`] for a request whose answer its caller can do
    /// without (an unsubscribe as a subscriber is dropped): when answers to
    /// earlier requests are still missing and none is readable now, the
    /// daemon is not answering, so this request is sent after them without
    /// waiting (its answer is read and dropped later, as theirs are) and
    /// the call returns at once. Otherwise each such drop would wait a
    /// whole control timeout behind the same missing answer.
    pub(crate) fn request_or_leave(&self, req: &Request) -> Result<Reply, RequestError> {
        self.try_request(req, false)
    }

    fn try_request(&self, req: &Request, patient: bool) -> Result<Reply, RequestError> {
        let mut guard = self.control.lock().unwrap_or_else(|p| p.into_inner());
        if let Request::Unsubscribe { subsystem, queue: Some(queue) } = req {
            let mut subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(i) = subs.iter().position(|s| &s.subsystem == subsystem && s.queue == *queue) {
                subs.swap_remove(i);
            }
        }
        let (fd, buf) = &mut *guard;
        let gone = |e: std::io::Error| match e.raw_os_error() {
            Some(c) if c == nix::errno::Errno::EPIPE as i32 || c == nix::errno::Errno::ECONNRESET as i32 => {
                RequestError::BusGone
            }
            _ => RequestError::Io(e),
        };
        let late = |e: std::io::Error, what: &str| {
            RequestError::Io(std::io::Error::new(
                e.kind(),
                format!("the daemon did not answer {what} in time: it is stopped or overloaded; try again later"),
            ))
        };
        // The answers to earlier requests that timed out come first: read
        // and dropped, or the next request would take one of them for its
        // own (a subscription to one subsystem given the queue of another).
        // A subscription granted that late is ended at once: its caller
        // was told it failed.
        let mut unanswered = self.unanswered.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(earlier) = unanswered.front().cloned() {
            if !patient && !control::readable_now(fd.as_fd()) {
                control::send(fd.as_fd(), req, None).map_err(gone)?;
                unanswered.push_back(req.clone());
                return Err(late(std::io::ErrorKind::WouldBlock.into(), "an earlier request"));
            }
            match control::recv::<Reply>(fd.as_fd(), buf) {
                Ok(Received::Packet(r, _)) => {
                    unanswered.pop_front();
                    if let (Request::Subscribe { subsystem, .. }, Reply::Subscribed { queue, .. }) = (&earlier, &r) {
                        let undo = Request::Unsubscribe { subsystem: subsystem.clone(), queue: Some(*queue) };
                        control::send(fd.as_fd(), &undo, None).map_err(gone)?;
                        unanswered.push_back(undo);
                    }
                }
                Ok(Received::Closed) => return Err(RequestError::BusGone),
                Err(e) if is_timeout(&e) => return Err(late(e, "an earlier request")),
                // Read, but not an answer we can parse: it was that one.
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    unanswered.pop_front();
                }
                Err(e) => return Err(gone(e)),
            }
        }
        control::send(fd.as_fd(), req, None).map_err(gone)?;
        let answer = match control::recv::<Reply>(fd.as_fd(), buf) {
            Err(e) if is_timeout(&e) => {
                unanswered.push_back(req.clone());
                return Err(late(e, "this request"));
            }
            other => other.map_err(gone)?,
        };
        drop(unanswered);
        match answer {
            Received::Packet(r, _) => {
                if let (Request::Subscribe { subsystem, .. }, Reply::Subscribed { queue, .. }) = (req, &r) {
                    let mut subs = self.subs.lock().unwrap_or_else(|p| p.into_inner());
                    subs.push(ResumedSub { subsystem: subsystem.clone(), queue: *queue });
                }
                Ok(r)
            }
            Received::Closed => Err(RequestError::BusGone),
        }
    }

    /// Waits until the watcher has resumed (`true`) past `seen`, or the bus
    /// is gone or `deadline` passed (`false`).
    fn wait_resumed(&self, seen: u64, deadline: Instant) -> bool {
        while Instant::now() < deadline {
            // SYNC: link-resume — Acquire pairs with the watcher's Release
            // after it swapped the connection in.
            if self.resumes.load(Ordering::Acquire) != seen {
                return true;
            }
            if self.gone.load(Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// Whether the daemon that closed our connection was shut down on
    /// purpose (a `shutdown` request leaves the segment STOPPED; a crash or
    /// a signal leaves it RUNNING for the next daemon to adopt).
    fn stopped_on_purpose(&self) -> bool {
        // SAFETY: see `StateWord`: the mapping outlives the link's users.
        let state = unsafe { &*self.daemon_state.0 };
        // SYNC: daemon-stopped — pairs with the daemon's Release store.
        state.load(Ordering::Acquire) == bus_core::layout::DAEMON_STOPPED
    }

    /// Tries to resume with a daemon on the socket, once. `Ok(true)`:
    /// resumed; `Ok(false)`: nobody to resume with yet; `Err`: a daemon
    /// refused us (the bus is gone for us).
    ///
    /// Once the hello is sent, the answer is waited for until `deadline`
    /// (the end of the grace), not just the control timeout: a daemon that
    /// read the hello has given this connection our identity, and hanging
    /// up on it would read as our death, so that a slow (stopped,
    /// overloaded) daemon would reclaim a live client, freeing the slots it
    /// still uses. Only `stop` (the bus dropped) ends the wait earlier.
    fn try_resume(&self, deadline: Instant, stop: BorrowedFd<'_>) -> Result<bool, String> {
        // One try: a full listen queue is tried again with the rest.
        let fd = match control::connect(&self.socket, Instant::now()) {
            Ok(fd) => fd,
            Err(_) => return Ok(false),
        };
        match nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::PeerCredentials) {
            Ok(c) if crate::bus::trusted_daemon(c.uid(), &self.trusted) => {}
            Ok(c) => return Err(format!("the daemon now serving the socket runs as uid {}, not trusted", c.uid())),
            Err(_) => return Ok(false),
        }
        crate::bus::set_recv_timeout(&fd, self.timeout);
        // Under the lock: no request goes out on either connection while
        // the subscriptions are listed and the connections swapped.
        let mut guard = self.control.lock().unwrap_or_else(|p| p.into_inner());
        let subscriptions = self.subs.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let hello = Request::Hello {
            waits: true,
            name: Some(self.name.clone()),
            layout_version: bus_core::LAYOUT_VERSION,
            resume: Some(Resume {
                client: self.client,
                serial: self.serial,
                bus_generation: self.generation,
                subscriptions,
            }),
        };
        if control::send(fd.as_fd(), &hello, Some(self.seg_fd.as_fd())).is_err() {
            return Ok(false);
        }
        if !control::wait_readable(fd.as_fd(), Some(deadline), Some(stop)) {
            return Ok(false);
        }
        let mut buf = Vec::new();
        match control::recv::<Reply>(fd.as_fd(), &mut buf) {
            Ok(Received::Packet(Reply::Welcome { client, serial, quota, statistics, resume_grace_ms, .. }, _))
                if client == self.client && serial == self.serial =>
            {
                self.settings.resumed(quota, statistics, resume_grace_ms);
            }
            Ok(Received::Packet(Reply::Error { kind: ErrorKind::TooManyClients, .. }, _)) => return Ok(false),
            Ok(Received::Packet(Reply::Error { message, .. }, _)) => return Err(message),
            Ok(Received::Packet(other, _)) => return Err(format!("unexpected answer to a resumption: {other:?}")),
            // It died or is not ready yet: try again.
            Ok(Received::Closed) | Err(_) => return Ok(false),
        }
        crate::bus::unregister_control_fd(guard.0.as_raw_fd());
        crate::bus::register_control_fd(fd.as_raw_fd());
        self.control_raw.store(fd.as_raw_fd(), Ordering::Relaxed);
        guard.0 = fd;
        // A new connection owes us nothing.
        self.unanswered.lock().unwrap_or_else(|p| p.into_inner()).clear();
        drop(guard);
        self.publish_rights.lock().unwrap_or_else(|p| p.into_inner()).clear();
        // SYNC: link-resume — Release pairs with `wait_resumed`'s Acquire.
        self.resumes.fetch_add(1, Ordering::Release);
        Ok(true)
    }

    /// The watcher thread's loop: sleeps in `poll` on the control socket
    /// (asking for no events, so it is woken only by a hang-up or an error,
    /// never by answers other threads read) and on `stop`. On a hang-up it
    /// resumes with the next daemon within the grace, or marks the bus gone,
    /// which every call checks with one load.
    pub(crate) fn watch(self: Arc<Self>, stop: OwnedFd) {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        loop {
            // SAFETY: the descriptor is `control`'s; only this thread swaps
            // it (in `try_resume`), and `Inner::drop` joins this thread
            // before the connection is closed.
            let control = unsafe { BorrowedFd::borrow_raw(self.control_raw()) };
            let mut fds = [PollFd::new(control, PollFlags::empty()), PollFd::new(stop.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::NONE) {
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => {
                    // Cannot watch any more: take the bus for gone rather
                    // than leave callers unaware.
                    self.mark_gone();
                    return;
                }
                Ok(_) => {}
            }
            if fds[1].revents().is_some_and(|r| !r.is_empty()) {
                return;
            }
            let hung_up = fds[0]
                .revents()
                .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL));
            if !hung_up {
                continue;
            }
            if self.settings.grace().is_zero() || self.stopped_on_purpose() || !self.resume_within_grace(&stop) {
                self.mark_gone();
                return;
            }
        }
    }

    /// Retries the socket every [`RETRY_EVERY`] until a daemon takes us
    /// back (`true`), or the grace passes, a daemon refuses us, the bus is
    /// shut down on purpose, or `stop` is readable (`false`).
    fn resume_within_grace(&self, stop: &OwnedFd) -> bool {
        let deadline = Instant::now() + self.settings.grace();
        while Instant::now() < deadline {
            match self.try_resume(deadline, stop.as_fd()) {
                Ok(true) => return true,
                Ok(false) => {}
                // Refused (another bus instance, or our entry was
                // reclaimed): gone for us.
                Err(_) => return false,
            }
            if self.stopped_on_purpose() {
                return false;
            }
            let left = deadline.saturating_duration_since(Instant::now()).min(RETRY_EVERY);
            let mut fds = [nix::poll::PollFd::new(stop.as_fd(), nix::poll::PollFlags::POLLIN)];
            let ms = left.as_millis().min(u16::MAX as u128) as u16;
            if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)).is_ok_and(|n| n > 0) {
                return false;
            }
        }
        false
    }
}

/// Whether a control socket call ended on its receive timeout.
fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
}
