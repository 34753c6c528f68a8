//! Request/response. A [`Requester`] owns a private reply queue (a routing
//! entry named `_reply.<serial>.<n>`, which no user subsystem can be
//! called). A request carries that queue and a correlation id; the handler's
//! reply comes back zero-copy in a new slot. Replies are matched by
//! correlation id, so several requests may be in flight from several
//! threads at once; a reply that arrives after its requester gave up is
//! released, not leaked.

use crate::body::{fingerprint, Body};
use crate::bus::Bus;
use crate::error::{BodyError, RecvError, RequestError, SendError};
use crate::handler::kind;
use crate::publisher::Publisher;
use crate::subscriber::{HeldSlot, Subscriber};
use bus_core::layout::FLAG_ERROR;
use bus_core::SlotIndex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Why a request got no reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// The request could not be sent.
    #[error("the request was not sent: {0}")]
    Send(#[from] SendError),
    /// No reply within the timeout (the handler is slow, or died).
    #[error("no reply within {0:?}: the handler is slow or gone")]
    Timeout(Duration),
    /// The subsystem's router has no route for the request.
    #[error("no route for {path:?}: {message}")]
    NoRoute {
        /// The request's path.
        path: String,
        /// The router's message.
        message: String,
    },
    /// The handler returned an error.
    #[error("the handler failed: {0}")]
    Handler(String),
    /// The handler panicked (the service caught it and goes on).
    #[error("the handler panicked: {0}")]
    Panicked(String),
    /// The handler is on another host, and the bridge between cannot reach
    /// it (no host exports the subsystem now, or the link was lost while
    /// the request was out).
    #[error("the service is on another host that cannot be reached: {0}; check the bridges (shmbus-bridge) on both hosts and the link between them")]
    Unreachable(String),
    /// A [`crate::Pipeline`] already has its whole window of requests in
    /// flight.
    #[error("{window} requests are already in flight: take replies with Pipeline::next or Pipeline::wait before submitting more")]
    WindowFull {
        /// The pipeline's window.
        window: usize,
    },
    /// The [`crate::Pending`] is not in flight in this pipeline: its reply
    /// was taken already (or it timed out), or it came from another one.
    #[error("that request is not in flight here: its reply was already taken, it timed out, or it belongs to another pipeline")]
    NotInFlight,
    /// The daemon is gone.
    #[error("{}", crate::error::BUS_GONE)]
    BusGone,
    /// Waiting for the reply asynchronously failed (see
    /// [`RecvError::NoRuntime`] and [`RecvError::AsyncWait`]).
    #[error("{0}")]
    Wait(RecvError),
    /// Setting up the requester of [`Bus::request`] failed (this client's
    /// publishers and subscribers used up, a full routing table, an access
    /// rule): the daemon's or the library's own message says what.
    #[error("could not set up a requester: {0}")]
    Setup(String),
}

impl ReplyError {
    /// The kind and text an error reply carries for this error, so that
    /// its requester gets the same variant back
    /// ([`ReplyError::from_reply_parts`]): `NoRoute`, `Handler`,
    /// `Panicked`, `Unreachable`, `Timeout` and `Send(NoSubscriber)` keep
    /// theirs; any other is `Unreachable`, with its text. For bridges,
    /// which carry an error reply to another bus. The text stays readable
    /// (a reader of an older release shows it as a handler's error): a
    /// `Timeout` is `"NANOS ns: …"`, a `NoSubscriber` `"SUBSYSTEM: …"`.
    pub fn to_reply_parts(&self) -> (u64, String) {
        match self {
            ReplyError::NoRoute { message, .. } => (kind::NO_ROUTE, message.clone()),
            ReplyError::Handler(t) => (kind::HANDLER, t.clone()),
            ReplyError::Panicked(t) => (kind::PANIC, t.clone()),
            ReplyError::Unreachable(t) => (kind::UNREACHABLE, t.clone()),
            ReplyError::Timeout(d) => (kind::TIMEOUT, format!("{} ns: {self}", d.as_nanos())),
            ReplyError::Send(SendError::NoSubscriber { subsystem }) => {
                (kind::NO_SUBSCRIBER, format!("{subsystem}: {self}"))
            }
            other => (kind::UNREACHABLE, other.to_string()),
        }
    }

    /// The error an error reply of `kind` with `text` stands for, for a
    /// request to `path` (see [`ReplyError::to_reply_parts`]). A kind this
    /// release does not know is a handler's error with its text.
    pub fn from_reply_parts(kind: u64, text: String, path: &str) -> ReplyError {
        match kind {
            kind::NO_ROUTE => ReplyError::NoRoute { path: path.to_owned(), message: text },
            kind::PANIC => ReplyError::Panicked(text),
            kind::UNREACHABLE => ReplyError::Unreachable(text),
            // A text cut short by a tiny slot still gives the variant (the
            // timeout then reads 0).
            kind::TIMEOUT => {
                let nanos = text.split_once(" ns: ").and_then(|(n, _)| n.parse().ok());
                ReplyError::Timeout(Duration::from_nanos(nanos.unwrap_or(0)))
            }
            kind::NO_SUBSCRIBER => {
                let subsystem = text.split_once(": ").map_or(text.as_str(), |(s, _)| s).to_owned();
                ReplyError::Send(SendError::NoSubscriber { subsystem })
            }
            _ => ReplyError::Handler(text),
        }
    }
}

/// Why setting up a requester's reply queue failed, as a [`ReplyError`].
pub(crate) fn setup_failed(e: RequestError) -> ReplyError {
    match e {
        RequestError::BusGone => ReplyError::BusGone,
        RequestError::Forked => ReplyError::Send(SendError::Forked),
        e => ReplyError::Setup(e.to_string()),
    }
}

/// Default polls of the reply queue before a waiting requester sleeps:
/// under a microsecond. Measured on 2 vCPUs with 4 requester threads: 200
/// polls gave a round trip p50 of 1.2 us and ~40 k requests/s; sleeping at
/// once (0) gave 76 k requests/s but a p50 of 3.9 us; the receivers' default
/// (2000) gave 1.1 us but 9 k requests/s, its spinning taking the CPUs the
/// handlers needed. See [`Requester::set_spins`].
pub const REPLY_SPINS: u32 = 200;

/// Requesters made by this process so far (the high half of their
/// correlation ids).
static REQUESTERS: AtomicU64 = AtomicU64::new(1);

/// Who waits for which reply. Lists, not hash tables: they hold one entry
/// per thread waiting on this requester, which is few, and a scan of a
/// few words costs less than hashing.
struct Waiting {
    /// Correlation ids whose requesters still wait.
    pending: Vec<u64>,
    /// Replies that arrived for another waiting thread.
    arrived: Vec<(u64, SlotIndex)>,
    /// Whether a thread is currently reading the reply queue.
    polling: bool,
    /// Threads asleep on `Requester::arrived` (waiting for the poller):
    /// with none, a reply wakes nobody, and makes no system call (a
    /// condvar's notify is a futex wake whether or not anyone waits).
    sleepers: u32,
}

/// Sends requests and receives their replies. `Send + Sync`: share one
/// between threads (behind an `Arc`) or make one per thread. One request
/// in flight per calling thread; for many in flight from one thread, use a
/// [`crate::Pipeline`] (`Bus::pipeline`).
pub struct Requester {
    pub(crate) bus: Bus,
    pub(crate) publisher: Mutex<Publisher>,
    replies: Mutex<Subscriber>,
    waiting: Mutex<Waiting>,
    arrived: Condvar,
    /// A port of its own for releasing replies: the reply subscriber's is
    /// held by the polling thread for up to a time-slice.
    release_port: Mutex<u32>,
    pub(crate) queue: u32,
    pub(crate) next: AtomicU64,
    /// The reply queue of asynchronous requests, set up by the first.
    #[cfg(feature = "tokio")]
    pub(crate) replies_async: std::sync::OnceLock<crate::asynchronous::request::AsyncReplies>,
}

impl Drop for Requester {
    fn drop(&mut self) {
        let port = *self.release_port.get_mut().unwrap_or_else(|p| p.into_inner());
        self.bus.inner.release_port(port);
    }
}

impl Bus {
    /// A requester with its own reply queue.
    pub fn requester(&self) -> Result<Requester, RequestError> {
        let name = self.reply_queue_name();
        let replies = self.subscribe_unchecked(&name)?;
        replies.set_spins(REPLY_SPINS);
        let queue = replies.queue();
        let publisher = Mutex::new(self.publisher().create()?);
        let release_port = Mutex::new(self.inner.claim_port()?);
        Ok(Requester {
            bus: self.clone(),
            publisher,
            replies: Mutex::new(replies),
            waiting: Mutex::new(Waiting { pending: Vec::new(), arrived: Vec::new(), polling: false, sleepers: 0 }),
            arrived: Condvar::new(),
            release_port,
            queue,
            // Each requester of the process starts its correlation ids in a
            // range of its own: a late reply meant for an earlier requester
            // whose reply queue this one reuses never matches.
            next: AtomicU64::new(REQUESTERS.fetch_add(1, Ordering::Relaxed) << 32 | 1),
            #[cfg(feature = "tokio")]
            replies_async: std::sync::OnceLock::new(),
        })
    }

    /// A name for a new reply queue of this client: `_reply.SERIAL.N`
    /// (the daemon lets only the client with that serial subscribe to it),
    /// one whose earlier subscription ended if there is one, else a fresh
    /// one. Replies still addressed to an earlier user of the name carry
    /// correlation ids from another range (see `Requester::next`, and the
    /// pipelines' random generations), so they are released as late.
    pub(crate) fn reply_queue_name(&self) -> String {
        static N: AtomicU64 = AtomicU64::new(0);
        let reused = self.inner.free_reply_names.lock().unwrap_or_else(|p| p.into_inner()).pop();
        reused.unwrap_or_else(|| format!("_reply.{}.{}", self.inner.serial, N.fetch_add(1, Ordering::Relaxed)))
    }

    /// Sends `body` to `path` as a request and waits up to `timeout` for the
    /// handler's reply. Sets up a requester (a control round trip) for this
    /// one call: keep a [`Requester`] for repeated requests.
    pub fn request<T: Body>(&self, path: &str, body: &T, timeout: Duration) -> Result<Reply, ReplyError> {
        let r = self.requester().map_err(setup_failed)?;
        r.request(path, body, timeout).map(|reply| reply.detach())
    }
}

impl Requester {
    /// Sends `body` to `path` and waits up to `timeout` for the reply.
    pub fn request<T: Body>(&self, path: &str, body: &T, timeout: Duration) -> Result<Response<'_>, ReplyError> {
        self.exchange(path, timeout, |p, corr| {
            p.loan(path)?.write(body)?.request(self.queue, corr).send().map_err(|f| f.error)
        })
    }

    /// Sends a raw-byte request.
    pub fn request_bytes(&self, path: &str, body: &[u8], timeout: Duration) -> Result<Response<'_>, ReplyError> {
        self.exchange(path, timeout, |p, corr| {
            p.loan(path)?.write_bytes(body)?.request(self.queue, corr).send().map_err(|f| f.error)
        })
    }

    pub(crate) fn exchange(
        &self,
        _path: &str,
        timeout: Duration,
        send: impl FnOnce(&mut Publisher, u64) -> Result<u64, SendError>,
    ) -> Result<Response<'_>, ReplyError> {
        let corr = self.next.fetch_add(1, Ordering::Relaxed);
        let deadline = crate::bus::deadline_in(timeout);
        {
            let mut w = self.lock_waiting();
            self.release_late(&mut w);
            w.pending.push(corr);
        }
        let sent = {
            // The request's timeout covers the send too: waiting for a free
            // slot or for queue space never outlasts it. (The clock again
            // only if another thread's send held the publisher.)
            let (mut publisher, left) = match self.publisher.try_lock() {
                Ok(p) => (p, timeout),
                Err(std::sync::TryLockError::Poisoned(p)) => (p.into_inner(), timeout),
                Err(std::sync::TryLockError::WouldBlock) => {
                    let p = self.publisher.lock().unwrap_or_else(|p| p.into_inner());
                    (p, deadline.saturating_duration_since(Instant::now()))
                }
            };
            publisher.set_send_timeout(left.min(self.bus.inner.send_timeout));
            send(&mut publisher, corr)
        };
        if let Err(e) = sent {
            let mut w = self.lock_waiting();
            w.forget(corr);
            // Sent to some groups only (`PartlyDelivered`): a reply may have
            // come already, taken off the queue by another waiting thread.
            if let Some(slot) = w.take_arrived(corr) {
                self.release(slot);
            }
            drop(w);
            return Err(match e {
                SendError::BusGone => ReplyError::BusGone,
                // A request whose time ran out while it waited for a slot
                // or for room is `Send(Timeout)`, not `Timeout`: it was
                // never sent, which a caller of a request that must not
                // run twice needs to know.
                e => ReplyError::Send(e),
            });
        }
        let slot = self.wait_for(corr, deadline, timeout)?;
        // SAFETY: `wait_for` handed this reply's slot to us alone (it left
        // the queue and `arrived`), and this client holds it.
        unsafe { Response::of(Owner::Requester(self), slot, &self.bus.inner.seg) }
    }

    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Waiting {
    /// `corr` no longer waits.
    fn forget(&mut self, corr: u64) {
        if let Some(i) = self.pending.iter().position(|&c| c == corr) {
            self.pending.swap_remove(i);
        }
    }

    /// The reply to `corr`, if another thread took it off the queue.
    fn take_arrived(&mut self, corr: u64) -> Option<SlotIndex> {
        let i = self.arrived.iter().position(|&(c, _)| c == corr)?;
        Some(self.arrived.swap_remove(i).1)
    }
}

impl Requester {
    /// Waits for the reply to `corr`. One waiting thread at a time reads the
    /// reply queue and hands other threads' replies over through `arrived`.
    fn wait_for(&self, corr: u64, deadline: Instant, timeout: Duration) -> Result<SlotIndex, ReplyError> {
        let mut w = self.lock_waiting();
        // The clock is read only once a wait came back empty (or to sleep
        // while another thread polls): a reply that comes while the first
        // poll spins costs no clock call.
        // (A zero timeout is out at once, as a caller asking for no wait
        // expects.)
        let mut waited = timeout.is_zero();
        loop {
            if let Some(slot) = w.take_arrived(corr) {
                w.forget(corr);
                return Ok(slot);
            }
            if std::mem::replace(&mut waited, true) && Instant::now() >= deadline {
                w.forget(corr);
                return Err(ReplyError::Timeout(timeout));
            }
            if w.polling {
                let left = deadline.saturating_duration_since(Instant::now());
                w.sleepers += 1;
                w = self
                    .arrived
                    .wait_timeout(w, left.min(Duration::from_millis(10)))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                w.sleepers -= 1;
                continue;
            }
            w.polling = true;
            drop(w);
            let got = self.poll_reply(deadline);
            w = self.lock_waiting();
            w.polling = false;
            match got {
                Ok(Some((slot, c))) if c == corr => {
                    w.forget(corr);
                    self.wake_sleepers(&w);
                    return Ok(slot);
                }
                Ok(Some((slot, c))) if w.pending.contains(&c) => {
                    w.arrived.push((c, slot));
                }
                Ok(Some((slot, _))) => self.release(slot), // a late reply: nobody waits for it
                Ok(None) => {}
                Err(()) => {
                    w.forget(corr);
                    self.wake_sleepers(&w);
                    return Err(ReplyError::BusGone);
                }
            }
            self.wake_sleepers(&w);
        }
    }

    /// Releases the late replies queued while no request of ours waited
    /// (their requests timed out, or were sent with a zero timeout), and
    /// hands over any another thread waits for: a requester that keeps
    /// asking never lets them pile up in its reply queue (which would hold
    /// their slots, and turn away its services' replies once full). One
    /// empty poll when nothing is queued; skipped while another thread
    /// polls the queue (it releases them itself). Under the waiting lock
    /// `w`, which the new request's registration reuses.
    fn release_late(&self, w: &mut Waiting) {
        if w.polling {
            return;
        }
        // Never waits for the queue's lock while holding the waiting lock:
        // a poller takes the queue's lock without it.
        let Ok(sub) = self.replies.try_lock() else { return };
        let mut handed = false;
        while let Ok(Some(m)) = sub.try_recv() {
            let c = m.correlation_id();
            let slot = m.into_slot();
            if w.pending.contains(&c) {
                w.arrived.push((c, slot));
                handed = true;
            } else {
                self.release(slot);
            }
        }
        drop(sub);
        if handed {
            self.wake_sleepers(w);
        }
    }

    /// After a poll (under the waiting lock, which sleepers count under):
    /// lets the threads asleep for the poller look again, if there are any.
    fn wake_sleepers(&self, w: &Waiting) {
        if w.sleepers > 0 {
            self.arrived.notify_all();
        }
    }

    /// Takes one reply from the queue (waiting until `deadline`, at most
    /// 100 ms from when its polling found nothing): its slot and
    /// correlation id.
    fn poll_reply(&self, deadline: Instant) -> Result<Option<(SlotIndex, u64)>, ()> {
        let sub = self.replies.lock().unwrap_or_else(|p| p.into_inner());
        let got = sub.recv_by(|| Some(deadline.min(Instant::now() + Duration::from_millis(100))));
        match got {
            Ok(m) => {
                let c = m.correlation_id();
                Ok(Some((m.into_slot(), c)))
            }
            Err(RecvError::BusGone) => Err(()),
            Err(_) => Ok(None),
        }
    }

    pub(crate) fn release(&self, slot: SlotIndex) {
        if self.bus.inner.detached() {
            return; // the parent's slot, or one the daemon took back
        }
        let port = self.release_port.lock().unwrap_or_else(|p| p.into_inner());
        bus_core::slot_pool::Port::new(&self.bus.inner.seg, self.bus.inner.client, *port)
            .expect("port index in range")
            .release(slot, 0); // a reply queue has its default group only
        self.bus.inner.gave(1);
    }

    /// How many times a waiting request polls its reply queue before it
    /// sleeps (default [`REPLY_SPINS`]). More: lower latency while a reply
    /// is quick, but spinning threads take CPU from the handlers when there
    /// are more busy threads than CPUs. 0: sleep at once, best throughput
    /// with many concurrent requesters.
    pub fn set_spins(&self, spins: u32) {
        self.replies.lock().unwrap_or_else(|p| p.into_inner()).set_spins(spins);
    }

    /// The requester's reply queue.
    pub fn reply_queue(&self) -> u32 {
        self.queue
    }

    /// The bus.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }
}

/// A reply, read in place; dropping it releases its slot. What is read from
/// the slot borrows the `Response` (not the [`Requester`]), so it cannot be
/// used after the response is dropped:
///
/// ```no_run
/// # use std::time::Duration;
/// fn ask(req: &bus_client::Requester) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
///     let response = req.request_bytes("api://ping", b"", Duration::from_secs(1))?;
///     let body = response.body_bytes()?;
///     let kept = body.to_vec();
///     drop(response); // releases the slot
///     Ok(kept)
/// }
/// ```
///
/// A body still in use when its response is dropped does not compile
/// (E0505):
///
/// ```compile_fail,E0505
/// # use std::time::Duration;
/// fn ask(req: &bus_client::Requester) -> Result<usize, Box<dyn std::error::Error>> {
///     let response = req.request_bytes("api://ping", b"", Duration::from_secs(1))?;
///     let body = response.body_bytes()?;
///     drop(response); // the slot is released and may be reused…
///     Ok(body.len()) // …so this would read another message's bytes
/// }
/// ```
///
/// nor one read from a response dropped at once (E0716):
///
/// ```compile_fail,E0716
/// # use std::time::Duration;
/// fn ask(req: &bus_client::Requester) -> Result<usize, Box<dyn std::error::Error>> {
///     let body = req.request_bytes("api://ping", b"", Duration::from_secs(1))?.body_bytes()?;
///     Ok(body.len())
/// }
/// ```
///
/// [`Bus::request`] returns a [`Reply`] instead, an owned copy.
pub struct Response<'r> {
    owner: Owner<'r>,
    /// The reply's slot, held until drop: the only way to its bytes.
    slot: HeldSlot<'r>,
}

/// Who releases a [`Response`]'s slot: a shared [`Requester`] (through its
/// release port), or a [`crate::Pipeline`]: through its reply
/// subscription's port, which nothing else uses while the response lives
/// (the response borrows the pipeline mutably), on whatever thread it is
/// dropped.
#[derive(Clone, Copy)]
pub(crate) enum Owner<'r> {
    Requester(&'r Requester),
    Replies { bus: &'r Bus, port: u32 },
}

impl Owner<'_> {
    fn release(self, slot: SlotIndex) {
        match self {
            Owner::Requester(r) => r.release(slot),
            Owner::Replies { bus, port } => {
                if bus.inner.detached() {
                    return; // the parent's slot, or one the daemon took back
                }
                bus_core::slot_pool::Port::new(&bus.inner.seg, bus.inner.client, port)
                    .expect("port index in range")
                    .release(slot, 0); // a reply queue has its default group only
                bus.inner.gave(1);
            }
        }
    }
}

impl<'r> Response<'r> {
    /// The response holding reply `slot`, or the error it carries (then
    /// released).
    ///
    /// # Safety
    /// This client must hold `slot` (dequeued by `owner`'s client, not
    /// released, and handed to no other guard).
    pub(crate) unsafe fn of(owner: Owner<'r>, slot: SlotIndex, seg: &'r bus_core::Segment) -> Result<Self, ReplyError> {
        // SAFETY: the caller hands us the hold; only the `Response`
        // releases it, in its `Drop` or in `detach`.
        let slot = unsafe { HeldSlot::new(seg.slot(slot)) };
        let response = Response { owner, slot };
        response.check()?;
        Ok(response)
    }

    /// Turns an error reply into the error (releasing it).
    fn check(&self) -> Result<(), ReplyError> {
        let h = self.slot.header();
        if h.flags.load(Ordering::Relaxed) & FLAG_ERROR == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(self.body_bytes().unwrap_or(b"")).into_owned();
        let kind = h.fingerprint.load(Ordering::Relaxed);
        Err(ReplyError::from_reply_parts(kind, text, self.slot.path().unwrap_or("")))
    }

    /// The reply body's bytes, in place.
    pub fn body_bytes(&self) -> Result<&[u8], BodyError> {
        Ok(self.slot.body()?)
    }

    /// The reply body as the archived `T`, validated in place.
    pub fn body<T: Body>(&self) -> Result<&T::Archived, BodyError> {
        let h = self.slot.header();
        let expected = std::any::type_name::<T>();
        if h.flags.load(Ordering::Relaxed) & bus_core::layout::FLAG_RAW != 0 {
            return Err(BodyError::Raw { expected });
        }
        let found = h.fingerprint.load(Ordering::Relaxed);
        let expected_fp = fingerprint::<T>();
        if found != expected_fp {
            return Err(BodyError::WrongType { expected, expected_fp, found });
        }
        rkyv::access::<T::Archived, rkyv::rancor::Error>(self.body_bytes()?)
            .map_err(|e| BodyError::Invalid { expected, detail: e.to_string() })
    }

    /// The reply's trace id (the request's).
    pub fn trace_id(&self) -> u64 {
        self.slot.header().trace_id.load(Ordering::Relaxed)
    }

    /// The reply's fingerprint, marker and trace id, to forward it as it is
    /// (see [`crate::Envelope`]).
    pub fn envelope(&self) -> crate::Envelope {
        crate::Envelope::of(self.slot.header())
    }

    /// The reply's message id.
    pub fn id(&self) -> u64 {
        self.slot.header().id.load(Ordering::Relaxed)
    }

    fn detach(self) -> Reply {
        let me = std::mem::ManuallyDrop::new(self);
        let mut bytes = rkyv::util::AlignedVec::<16>::new();
        bytes.extend_from_slice(me.body_bytes().unwrap_or(b""));
        let raw = me.slot.is_raw();
        let fp = me.slot.header().fingerprint.load(Ordering::Relaxed);
        let trace = me.trace_id();
        me.owner.release(me.slot.index());
        Reply { bytes, raw, fingerprint: fp, trace_id: trace }
    }
}

impl Drop for Response<'_> {
    fn drop(&mut self) {
        self.owner.release(self.slot.index());
    }
}

/// A reply copied out of its slot (what [`Bus::request`] returns, since its
/// one-call requester is gone when it returns).
#[derive(Debug)]
pub struct Reply {
    bytes: rkyv::util::AlignedVec<16>,
    raw: bool,
    fingerprint: u64,
    trace_id: u64,
}

impl Reply {
    /// The body's bytes.
    pub fn body_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The trace id.
    pub fn trace_id(&self) -> u64 {
        self.trace_id
    }

    /// The body as `T`, deserialized from a validated archive.
    pub fn body<T: Body>(&self) -> Result<&T::Archived, BodyError> {
        let expected = std::any::type_name::<T>();
        if self.raw {
            return Err(BodyError::Raw { expected });
        }
        let expected_fp = fingerprint::<T>();
        if self.fingerprint != expected_fp {
            return Err(BodyError::WrongType { expected, expected_fp, found: self.fingerprint });
        }
        rkyv::access::<T::Archived, rkyv::rancor::Error>(&self.bytes)
            .map_err(|e| BodyError::Invalid { expected, detail: e.to_string() })
    }
}

#[cfg(test)]
mod tests {
    /// A `Response` owns its slot as a `HeldSlot` token now, not as a bare
    /// index: it must still move and be shared between threads as before.
    #[test]
    fn response_and_reply_stay_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<super::Response<'static>>();
        send_sync::<super::Reply>();
    }
}
