//! Publishing: [`Publisher`], and the typed states of a loan:
//! [`LoanUninit`] (slot claimed, path written, body not yet) → [`Loan`] (body written) →
//! sent. Dropping a loan at any state returns its slot.
//!
//! The steps of a send are `#[inline(always)]`, into the caller (the
//! rarer ones, `push_one`, `take_slot` and `revalidate`, stay out of line
//! and take the route by reference). A loan and its route move by value
//! from step to step. Out of line, in the builds measured (x86-64, rustc
//! 1.95), each move was a copy through the stack, written field by field
//! and read back with wider loads, which the store buffer cannot forward:
//! such a load waits until every older store is in the cache, the slot's
//! stores included, whose lines may still be on their way from the
//! receiver's CPU. Inlined, the moves stay in registers, and one message
//! per call ran 1.65x as fast (BENCHMARKS.md, session 17). A caller that
//! hands a loan through functions of its own that are not inlined brings
//! such copies back. Separately, a loan fetches the next cached slot's
//! lines for writing, so that the next message's stores find their lines
//! sooner (a further 1.15x).

use crate::body::{fingerprint, Body};
use crate::bus::Bus;
use crate::clock::SendClock;
use crate::error::{BatchError, RequestError, SendError};
use bus_core::layout::FLAG_RAW;
use bus_core::routing;
use bus_core::slot_pool::{Fanout, Port};
use bus_core::stats::Failure;
use bus_core::{Path, SlotIndex};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Slots a publisher takes from the free ring at a time into its private
/// cache (and at most keeps there).
const CACHE: usize = 32;

/// Messages of a batch pushed with one ring operation and one wake-up.
const BATCH_CHUNK: usize = 64;

/// Group slots of `old` whose group is not in `now` any more (or has
/// another queue).
fn bits_not_in(old: &Fanout, now: Option<&Fanout>) -> u16 {
    bus_core::slot_pool::bits(old.mask)
        .filter(|&k| now.is_none_or(|n| n.mask & (1 << k) == 0 || n.queues[k as usize] != old.queues[k as usize]))
        .fold(0, |m, k| m | 1 << k)
}

/// How a [`Publisher::push`] ended.
enum Pushed {
    /// Every group got the message (or a lossy group dropped its copy).
    Sent,
    /// No group got it: the slot is loaned to us again.
    Back(SendError),
    /// Some groups got it, the rest dropped their copies.
    Partly(SendError),
}

/// Where a loan goes: its groups' queues, the routing-table version they
/// were read at (a send re-reads them if the table changed since, so that
/// a loan kept a while never pushes into an entry that another group or
/// subsystem took over), and, for a reply pushed straight to one queue,
/// the serial of the requester's client (the queue must stay one of its
/// reply queues).
#[derive(Debug, Clone, Copy)]
struct Route {
    to: Fanout,
    version: u64,
    /// The serial's low 32 bits (replies are matched on its low 24).
    direct: Option<u32>,
}

/// A reply written and stamped, to be pushed by
/// [`Publisher::flush_deferred`] together with the others to its queue.
#[derive(Debug, Clone, Copy)]
struct Deferred {
    slot: SlotIndex,
    route: Route,
    subsystem_len: usize,
    /// The requester's connection serial: the queue must still be a reply
    /// queue of that client when the reply is pushed.
    serial: u64,
}

/// What a send does when the pool is exhausted or the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backpressure {
    /// Wait, up to the timeout, then fail with `Timeout`.
    Block(Duration),
    /// Fail at once with `PoolExhausted` or `QueueFull`.
    FailFast,
}

/// Builder for [`Publisher`].
pub struct PublisherBuilder {
    bus: Bus,
    backpressure: Backpressure,
}

impl PublisherBuilder {
    pub(crate) fn new(bus: Bus) -> Self {
        let t = bus.inner.send_timeout;
        PublisherBuilder { bus, backpressure: Backpressure::Block(t) }
    }

    /// Chooses blocking (the default, with the bus's send timeout) or
    /// fail-fast sends.
    pub fn backpressure(mut self, b: Backpressure) -> Self {
        self.backpressure = b;
        self
    }

    /// Creates the publisher.
    pub fn create(self) -> Result<Publisher, RequestError> {
        // A stopped daemon is `BusGone` here already, as for a subscribe,
        // not at the first send.
        self.bus.inner.alive()?;
        let port = self.bus.inner.claim_port()?;
        Ok(Publisher {
            bus: self.bus,
            port,
            cache: Vec::with_capacity(CACHE),
            routes: Vec::new(),
            routes_version: u64::MAX,
            backpressure: self.backpressure,
            next_id: 0,
            batch: Vec::with_capacity(BATCH_CHUNK),
            deferred: Vec::with_capacity(BATCH_CHUNK),
            deferred_dropped: 0,
            last: LastPath {
                path: String::with_capacity(bus_core::PATH_CAPACITY),
                to: Fanout::single(0),
                subsystem_len: 0,
                version: u64::MAX,
            },
            open_reply: None,
            stuck_reply: std::cell::Cell::new(None),
            clock: SendClock::new(),
        })
    }
}

impl Bus {
    /// A builder for a publisher.
    pub fn publisher(&self) -> PublisherBuilder {
        PublisherBuilder::new(self.clone())
    }
}

struct CachedRoute {
    name: String,
    /// `None`: no such subsystem, or no group receives now.
    to: Option<Fanout>,
    /// The subsystem's entry, if it has one (its failures are counted
    /// there).
    entry: Option<u32>,
}

/// Sends messages. One thread at a time (`Send`, not `Sync`); create one per
/// sending thread.
pub struct Publisher {
    bus: Bus,
    port: u32,
    cache: Vec<SlotIndex>,
    routes: Vec<CachedRoute>,
    routes_version: u64,
    backpressure: Backpressure,
    next_id: u64,
    /// Slots of the batch being sent (capacity kept: no allocation per batch).
    batch: Vec<SlotIndex>,
    /// Replies waiting for [`Publisher::flush_deferred`] (Loaned by us).
    deferred: Vec<Deferred>,
    /// Replies dropped by flushes that `Loan::defer` made on its own (a
    /// full chunk), reported by the next `flush_deferred`.
    deferred_dropped: usize,
    last: LastPath,
    /// The last reply queue found open, `(routes version, queue, serial)`:
    /// replying to it again costs one load while the table is unchanged.
    open_reply: Option<(u64, u32, u64)>,
    /// A reply queue found full with its head at this position (its
    /// requester not reading): replies to it are dropped at once until
    /// the head moves (see [`Publisher::wait_for_reply_room`]).
    stuck_reply: std::cell::Cell<Option<(u32, u64)>>,
    /// Reads the send timestamps.
    clock: SendClock,
}

/// The last path sent and its resolution, valid while the routing table's
/// version is `version`.
struct LastPath {
    path: String,
    to: Fanout,
    subsystem_len: usize,
    version: u64,
}

impl Publisher {
    fn port(&self) -> Port<'_> {
        Port::new(&self.bus.inner.seg, self.bus.inner.client, self.port).expect("port index in range")
    }

    /// Serializes `value` with rkyv straight into a slot and sends it to
    /// `path`. Returns the message id.
    #[inline(always)]
    pub fn send<T: Body>(&mut self, path: &str, value: &T) -> Result<u64, SendError> {
        self.loan(path)?.write(value)?.send().map_err(|f| f.error)
    }

    /// Sends raw bytes (tools, text).
    #[inline(always)]
    pub fn send_bytes(&mut self, path: &str, body: &[u8]) -> Result<u64, SendError> {
        self.loan(path)?.write_bytes(body)?.send().map_err(|f| f.error)
    }

    /// Sends every item of `items` to `path`: each serialized in place into
    /// its own slot, then pushed together (one ring operation and at most
    /// one wake-up per 64 messages). Same guarantees as [`Publisher::send`]
    /// for each message; the messages of each run of 64 carry one timestamp.
    pub fn send_batch<T: Body>(&mut self, path: &str, items: &[T]) -> Result<usize, BatchError> {
        let fp = fingerprint::<T>();
        self.batch_inner(path, items.len(), |i, area| {
            let capacity = area.len();
            match rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(
                &items[i],
                rkyv::ser::writer::Buffer::from(area),
            ) {
                Ok(buf) => Ok((buf.len(), fp, 0)),
                Err(e) => Err(match archived_size(&items[i], capacity) {
                    Some(size) if size > capacity => SendError::BodyTooLarge { size, capacity },
                    _ => SendError::Serialize { detail: e.to_string() },
                }),
            }
        })
    }

    /// Sends `count` raw-byte messages to `path`, each written in place by
    /// `write(i, body)`, which returns the body's length. Batched like
    /// [`Publisher::send_batch`].
    pub fn send_batch_with(
        &mut self,
        path: &str,
        count: usize,
        mut write: impl FnMut(usize, &mut [u8]) -> usize,
    ) -> Result<usize, BatchError> {
        self.batch_inner(path, count, |i, area| {
            let capacity = area.len();
            match write(i, area) {
                len if len <= capacity => Ok((len, bus_core::fingerprint::RAW, FLAG_RAW)),
                len => Err(SendError::BodyTooLarge { size: len, capacity }),
            }
        })
    }

    /// The batch machinery: `write(i, body)` fills message `i` and returns
    /// (length, fingerprint, flags).
    fn batch_inner(
        &mut self,
        path: &str,
        count: usize,
        mut write: impl FnMut(usize, &mut [u8]) -> Result<(usize, u64, u16), SendError>,
    ) -> Result<usize, BatchError> {
        let fail = |sent, error| Err(BatchError { sent, error });
        let (mut route, subsystem_len) = match self.route_of(path) {
            Ok(r) => r,
            Err(e) => return fail(0, e),
        };
        let mut sent = 0;
        while sent < count {
            let n = (count - sent).min(BATCH_CHUNK);
            let ts = self.clock.now();
            self.batch.clear();
            for i in sent..sent + n {
                let slot = match self.take_slot(false) {
                    Ok(s) => s,
                    Err(e) => {
                        self.count_error(Some(route.to.subsystem), &e);
                        self.give_back_batch();
                        return fail(sent, e);
                    }
                };
                self.batch.push(slot);
                let id = self.next_message_id();
                let port = self.port();
                port.mark_loaned(slot);
                let s = port.segment().slot(slot);
                // SAFETY: the slot is Loaned by us through this port.
                if let Err(e) = unsafe { s.write_path(path) } {
                    self.give_back_batch();
                    return fail(sent, SendError::InvalidPath(e));
                }
                // SAFETY: as above; the area is ours until pushed.
                let area = unsafe { s.body_area(path.len()) };
                let (len, fp, flags) = match write(i, area) {
                    Ok(x) => x,
                    Err(e) => {
                        self.give_back_batch();
                        return fail(sent, e);
                    }
                };
                let h = s.header();
                h.queue.store(route.to.subsystem as u16, Ordering::Relaxed);
                h.body_len.store(len as u32, Ordering::Relaxed);
                h.fingerprint.store(fp, Ordering::Relaxed);
                h.flags.store(flags, Ordering::Relaxed);
                h.correlation_id.store(0, Ordering::Relaxed);
                h.reply_to.store(0, Ordering::Relaxed);
                h.id.store(id, Ordering::Relaxed);
                h.trace_id.store(id, Ordering::Relaxed);
                h.timestamp_ns.store(ts, Ordering::Relaxed);
            }
            let single = match self.revalidate(self.batch[0], &mut route, subsystem_len) {
                Ok(changed) => {
                    if changed {
                        for &slot in &self.batch {
                            let h = self.bus.inner.seg.slot(slot).header();
                            h.queue.store(route.to.subsystem as u16, Ordering::Relaxed);
                        }
                    }
                    route.to.only().is_some()
                }
                Err(e) => {
                    self.give_back_batch();
                    return fail(sent, e);
                }
            };
            if !single {
                // The callbacks that wrote the bodies may have run long:
                // checked again before anything is pushed.
                if let Err(e) = self.bus.inner.usable() {
                    if self.bus.inner.detached() {
                        self.batch.clear(); // not ours to give back
                    } else {
                        self.give_back_batch();
                    }
                    return fail(sent, e.into());
                }
                // Several groups: one message at a time, so that one intent
                // covers every slot whose push is incomplete.
                let batch = std::mem::take(&mut self.batch);
                for (j, &slot) in batch.iter().enumerate() {
                    let (e, partly) = match self.push(slot, &mut route, subsystem_len) {
                        Pushed::Sent => continue,
                        Pushed::Back(e) => (e, false),
                        // It reached some groups: it is sent.
                        Pushed::Partly(e) => (e, true),
                    };
                    let first_unsent = j + partly as usize;
                    self.batch = batch;
                    self.batch.drain(..first_unsent);
                    self.give_back_batch();
                    return fail(sent + first_unsent, e);
                }
                self.batch = batch;
                self.batch.clear();
            } else if let Err(e) = self.push_batch(&mut route, subsystem_len) {
                let (pushed, e) = e;
                self.batch.drain(..pushed);
                self.give_back_batch();
                return fail(sent + pushed, e);
            }
            sent += n;
            if sent < count {
                bus_core::crash_point!(BatchBetweenChunks);
            }
        }
        Ok(sent)
    }

    /// Pushes `self.batch` to the one group of `to` (one ring operation and
    /// one wake-up per chunk). A lossy group's queue takes what fits, and
    /// the rest are dropped (counted) and go back to the cache. On failure,
    /// how many were pushed and why the rest were not.
    fn push_batch(&mut self, route: &mut Route, subsystem_len: usize) -> Result<(), (usize, SendError)> {
        if let Err(e) = self.bus.inner.usable() {
            return Err((0, e.into()));
        }
        let to = route.to;
        let k = to.only().expect("one group");
        let queue = to.queues[k as usize] as u32;
        let n = self.batch.len();
        let mut pushed = 0;
        let deadline = match self.backpressure {
            Backpressure::Block(t) => Some(crate::bus::deadline_in(t)),
            Backpressure::FailFast => None,
        };
        loop {
            let port = self.port();
            // The lengths are read while the slots are still ours: once
            // pushed, a receiver may release one and another publisher
            // take it.
            let seg = &self.bus.inner.seg;
            let mut lens = [0u32; BATCH_CHUNK];
            if self.bus.inner.statistics() {
                for (l, &s) in lens.iter_mut().zip(&self.batch[pushed..]) {
                    *l = seg.slot(s).header().body_len.load(Ordering::Relaxed);
                }
            }
            let now = port.enqueue_many(&to, k, &self.batch[pushed..]);
            let bytes: u64 = lens[..now.min(BATCH_CHUNK)].iter().map(|&l| l as u64).sum();
            pushed += now;
            self.bus.inner.gave(now);
            self.count_sent(to.subsystem, now as u64, bytes);
            // One consumer per message: a batch of requests reaches as
            // many sleeping workers as it holds.
            port.notify_n(queue, now as u32);
            if pushed == n {
                return Ok(());
            }
            if to.lossy != 0 {
                port.count_dropped(queue, (n - pushed) as u64);
                self.batch.drain(..pushed);
                self.give_back_batch();
                return Ok(());
            }
            let waited = match deadline {
                None => Err(SendError::QueueFull { subsystem: self.subsystem_of(self.batch[pushed], subsystem_len) }),
                Some(d) => self.wait_for_space(queue, d, route.version),
            };
            if let Err(e) = waited {
                self.count_error(Some(to.subsystem), &e);
                return Err((pushed, e));
            }
            // The routing table changed while we waited: the rest go one by
            // one on the route as it is now.
            match self.revalidate(self.batch[pushed], route, subsystem_len) {
                Ok(false) => {}
                Ok(true) => {
                    for &slot in &self.batch[pushed..] {
                        let h = self.bus.inner.seg.slot(slot).header();
                        h.queue.store(route.to.subsystem as u16, Ordering::Relaxed);
                    }
                    while pushed < n {
                        match self.push(self.batch[pushed], route, subsystem_len) {
                            Pushed::Sent => pushed += 1,
                            Pushed::Back(e) => return Err((pushed, e)),
                            Pushed::Partly(e) => return Err((pushed + 1, e)),
                        }
                    }
                    return Ok(());
                }
                Err(e) => return Err((pushed, e)),
            }
        }
    }

    /// Waits until queue `queue` has room, up to `deadline`. Polls first
    /// only for room for a batch ([`SPACE_BATCH`] entries, at most a
    /// quarter of the queue, at least one), then sleeps
    /// until there is room for one: a consumer wakes waiting publishers once
    /// the queue is half empty, and a publisher looks again after each
    /// sleep slice. Polling for a single free entry instead would see each
    /// one that a slower consumer frees, send one message and poll again,
    /// taking a CPU for as long as the consumer is the slower side
    /// (measured with the bridge on 2 vCPUs: a fifth of the machine); a
    /// consumer fast enough to free a batch within the polls never lets
    /// the publisher sleep.
    ///
    /// Also returns (`Ok`) once the routing table is no longer at `version`,
    /// so that the caller looks at its route again: a group that left
    /// meanwhile drains its queue no more, and its copy is to be dropped,
    /// not waited for until the deadline.
    fn wait_for_space(&self, queue: u32, deadline: std::time::Instant, version: u64) -> Result<(), SendError> {
        let seg = &self.bus.inner.seg;
        let ring = seg.queue(queue).expect("resolved queue in range");
        // The whole send timeout, however many waits (one per routing
        // change) it was spent in.
        let timed_out = || SendError::Timeout {
            waited: match self.backpressure {
                Backpressure::Block(t) => t,
                _ => Duration::ZERO,
            },
            what: "space in the queue",
        };
        if std::time::Instant::now() >= deadline {
            return Err(timed_out());
        }
        // Room for min(32, a quarter of the queue), and at least one entry.
        let batch_room = ring.capacity() - SPACE_BATCH.min(ring.capacity() / 4).max(1);
        for _ in 0..SPACE_SPINS {
            if ring.len() <= batch_room || routing::version(seg) != version {
                return Ok(());
            }
            std::hint::spin_loop();
        }
        let port = self.port();
        let bell = port.sleeper(Some(queue), true).expect("resolved queue in range");
        // The sleep is in slices of at most `LIVENESS_SLICE`, after each of
        // which the routing table is looked at again.
        let room_or_change = || (ring.len() < ring.capacity() || routing::version(seg) != version).then_some(());
        match self.bus.inner.wait_on(&bell, || Some(deadline), (0, 1), room_or_change) {
            Ok(Some(())) if std::time::Instant::now() < deadline => Ok(()),
            Ok(_) => Err(timed_out()),
            Err(u) => Err(u.into()),
        }
    }

    /// For a reply whose queue is full: waits for room while the requester
    /// takes replies (its queue's head moves), up to the send timeout, but
    /// gives up after [`REPLY_PATIENCE`] without progress, and then at once
    /// for every later reply to that queue until its head moves. A
    /// requester that stopped reading (its queue full of replies nobody
    /// waits for) so costs its service one short wait, not a send timeout
    /// per reply. `QueueFull` when it gives up (the caller drops the reply
    /// as for a requester that is gone).
    fn wait_for_reply_room(&self, queue: u32, deadline: std::time::Instant, version: u64) -> Result<(), SendError> {
        let ring = self.bus.inner.seg.queue(queue).expect("resolved queue in range");
        let head = || ring.header().head.load(Ordering::Relaxed);
        let unread = || SendError::QueueFull { subsystem: "(reply queue)".into() };
        let before = head();
        if self.stuck_reply.get() == Some((queue, before)) {
            return Err(unread());
        }
        let now = std::time::Instant::now();
        if now >= deadline {
            return self.wait_for_space(queue, deadline, version); // its timeout
        }
        match self.wait_for_space(queue, deadline.min(now + REPLY_PATIENCE), version) {
            Err(SendError::Timeout { .. }) if now + REPLY_PATIENCE < deadline => {
                if head() == before {
                    self.stuck_reply.set(Some((queue, before)));
                    return Err(unread());
                }
                Ok(()) // it reads: look again (the caller loops)
            }
            other => other,
        }
    }

    /// Pushes the replies deferred by [`Loan::defer`]: each run of
    /// replies to one queue with one ring operation and one wake-up. A
    /// reply whose requester is gone meanwhile, or whose queue stays full
    /// past the send timeout, is dropped (its slot returns to the cache).
    /// Returns how many were dropped (since the last call).
    pub(crate) fn flush_deferred(&mut self) -> usize {
        if self.bus.inner.detached() {
            // The slots are the parent's, or were taken back with this
            // client (reclaimed while it could not run).
            self.deferred.clear();
            return 0;
        }
        let mut deferred = std::mem::take(&mut self.deferred);
        let mut dropped = std::mem::take(&mut self.deferred_dropped);
        let mut i = 0;
        while i < deferred.len() {
            let first = deferred[i];
            let run = deferred[i..]
                .iter()
                .take_while(|d| d.route.to.subsystem == first.route.to.subsystem && d.serial == first.serial)
                .count();
            self.batch.clear();
            self.batch.extend(deferred[i..i + run].iter().map(|d| d.slot));
            i += run;
            let mut route = first.route;
            // Checked again now, not only when the reply was deferred: the
            // requester may have died since, and its entry may be another
            // client's reply queue by now.
            let seg = &self.bus.inner.seg;
            let still_theirs = routing::read(seg, first.route.to.subsystem)
                .is_some_and(|v| v.subscribers > 0 && crate::handler::is_reply_queue_of(v.name(), first.serial));
            let pushed = match still_theirs.then(|| self.revalidate(first.slot, &mut route, first.subsystem_len)) {
                None => 0,
                Some(Ok(_)) => match self.push_batch(&mut route, first.subsystem_len) {
                    Ok(()) => run,
                    Err((pushed, _)) => pushed,
                },
                Some(Err(_)) => 0,
            };
            if pushed < run {
                dropped += run - pushed;
                self.batch.drain(..pushed);
                self.give_back_batch();
            }
        }
        self.batch.clear();
        deferred.clear();
        self.deferred = deferred;
        dropped
    }

    /// Returns the slots of an unsent batch to the cache.
    fn give_back_batch(&mut self) {
        let mut batch = std::mem::take(&mut self.batch);
        for slot in batch.drain(..) {
            self.give_back(slot);
        }
        self.batch = batch;
    }

    /// Claims a slot for a message to `path` and writes the path into it.
    ///
    /// The loan's steps are inlined into the caller. Keep a loan within
    /// one function where you can: handed through functions of your own
    /// that are not inlined, it is copied through memory at each hand-over,
    /// which can cost a fast publisher a third of its rate.
    #[inline(always)]
    pub fn loan(&mut self, path: &str) -> Result<LoanUninit<'_>, SendError> {
        let (route, subsystem_len) = self.route_of(path)?;
        self.loan_to(route, path, subsystem_len)
    }

    /// Takes a slot, marks it loaned, writes the path and the queue.
    #[inline(always)]
    fn loan_to(&mut self, route: Route, path: &str, subsystem_len: usize) -> Result<LoanUninit<'_>, SendError> {
        let slot = match self.take_slot(route.direct.is_some()) {
            Ok(s) => s,
            Err(e) => {
                self.count_error(Some(route.to.subsystem), &e);
                return Err(e);
            }
        };
        let port = self.port();
        // The next loan's lines, fetched while this one is written.
        if let Some(&next) = self.cache.last() {
            port.segment().slot(next).prefetch_for_write();
        }
        port.mark_loaned(slot);
        let s = port.segment().slot(slot);
        // SAFETY: the slot is Loaned by our client, through this port; nobody
        // else touches its bytes until we push it.
        if let Err(e) = unsafe { s.write_path(path) } {
            self.give_back(slot);
            return Err(SendError::InvalidPath(e));
        }
        bus_core::crash_point!(LoanPathWritten);
        s.header().queue.store(route.to.subsystem as u16, Ordering::Relaxed);
        Ok(LoanUninit { publisher: self, slot, route, path_len: path.len(), subsystem_len })
    }

    /// Whether [`crate::handler::reply_queue_open`] holds, remembered for
    /// the last queue found open until the routing table changes (every
    /// write to an entry, a requester's unsubscription too, bumps its
    /// version).
    pub(crate) fn reply_queue_open(&mut self, queue: u32, serial: u64) -> bool {
        let seg = &self.bus.inner.seg;
        // Read before the entry: a change made meanwhile bumps it after.
        let version = routing::version(seg);
        if self.open_reply == Some((version, queue, serial)) {
            return true;
        }
        let open = crate::handler::reply_queue_open(seg, queue, serial);
        self.open_reply = open.then_some((version, queue, serial));
        open
    }

    /// Claims a slot for a message pushed straight to queue `queue` (a
    /// reply), without routing. `path` must come from a received message
    /// (already valid).
    #[inline(always)]
    pub(crate) fn loan_direct(&mut self, queue: u32, serial: u64, path: &str) -> Result<LoanUninit<'_>, SendError> {
        // As `route_of` for other loans: a forked child must not take (and
        // write) a slot of its parent's cache, nor anyone a slot of a bus
        // that is gone.
        self.bus.inner.usable()?;
        if self.bus.inner.seg.queue(queue).is_none() || path.len() > bus_core::PATH_CAPACITY {
            return Err(SendError::NoSubscriber { subsystem: "(reply queue)".into() });
        }
        let subsystem_len = bus_core::path::separator(path).unwrap_or(0);
        let route = Route {
            to: Fanout::single(queue),
            version: routing::version(&self.bus.inner.seg),
            direct: Some(serial as u32),
        };
        self.loan_to(route, path, subsystem_len)
    }

    /// For a publisher that blocks ([`Backpressure::Block`], the default):
    /// how long its sends and loans wait from now on, for a free slot and
    /// then for room in a full queue (each). A fail-fast publisher stays
    /// fail-fast.
    pub fn set_send_timeout(&mut self, t: Duration) {
        if let Backpressure::Block(_) = self.backpressure {
            self.backpressure = Backpressure::Block(t);
        }
    }

    /// The bus this publisher sends on.
    pub(crate) fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Parses `path` and resolves its subsystem's queue; returns the queue
    /// and the subsystem's length. The last path is remembered: sending to
    /// it again costs one comparison while the routing table is unchanged.
    #[inline(always)]
    fn route_of(&mut self, path: &str) -> Result<(Route, usize), SendError> {
        self.bus.inner.usable()?;
        let seg = &self.bus.inner.seg;
        if routing::version(seg) == self.last.version && path == self.last.path {
            let route = Route { to: self.last.to, version: self.last.version, direct: None };
            return Ok((route, self.last.subsystem_len));
        }
        let p = Path::parse(path).map_err(SendError::InvalidPath)?;
        let version = routing::version(seg);
        let to = match self.resolve(p.subsystem()) {
            Ok(to) => to,
            Err(e) => {
                // Counted here, at the call, against the entry just read.
                if matches!(e, SendError::NoSubscriber { .. }) {
                    let entry = self.routes.iter().find(|r| r.name == p.subsystem()).and_then(|r| r.entry);
                    self.count_failure(entry, Failure::NoSubscriber);
                }
                return Err(e);
            }
        };
        self.last.path.clear();
        self.last.path.push_str(path); // capacity reserved: no allocation
        self.last.to = to;
        self.last.subsystem_len = p.subsystem().len();
        self.last.version = version;
        Ok((Route { to, version, direct: None }, self.last.subsystem_len))
    }

    fn resolve(&mut self, subsystem: &str) -> Result<Fanout, SendError> {
        let seg = &self.bus.inner.seg;
        let v = routing::version(seg);
        if v != self.routes_version {
            self.routes.clear();
            self.routes_version = v;
        }
        let found = match self.routes.iter().find(|r| r.name == subsystem) {
            Some(r) => r.to,
            None => {
                let view = routing::find(seg, subsystem);
                let restricted = view.as_ref().is_some_and(|v| v.flags & bus_core::layout::ROUTE_RESTRICTED != 0);
                let entry = view.map(|v| v.queue);
                let to = view.and_then(|v| v.fanout()).filter(|f| f.mask != 0);
                // Asked also when nobody receives (a subsystem without an
                // entry carries no flag), so that a refused publisher gets
                // `PermissionDenied` either way and cannot learn from
                // `NoSubscriber` whether anyone subscribes. Not cached as
                // a route when refused: the answer is cached per
                // connection.
                if restricted || to.is_none() {
                    self.bus.inner.may_publish(subsystem)?;
                }
                self.routes.push(CachedRoute { name: subsystem.to_owned(), to, entry });
                to
            }
        };
        // `fanout` checked every group's queue against the params.
        found.ok_or_else(|| SendError::NoSubscriber { subsystem: subsystem.to_owned() })
    }

    /// A slot for a loan: from the private cache, refilled from the free
    /// ring. A `reply` is taken even when this client holds its quota (one
    /// slot, counted): a service's replies are bounded by the requests it
    /// holds, one each, and a worker refused its reply's slot would leave
    /// its requester waiting in vain.
    fn take_slot(&mut self, reply: bool) -> Result<SlotIndex, SendError> {
        if let Some(i) = self.cache.pop() {
            return Ok(i);
        }
        let inner = &*self.bus.inner;
        let refill = |cache: &mut Vec<SlotIndex>, port: &Port<'_>| {
            // Under a quota, a cache refill takes at most an eighth of it,
            // so that idle publishers cannot hold the quota in their
            // caches while the client's receivers are refused.
            let cap = if inner.quota() == 0 { CACHE } else { (inner.quota() as usize / 8).max(1) };
            let mut want = (CACHE - cache.len()).min(cap).min(inner.allowance() as usize);
            if reply && cache.is_empty() {
                want = want.max(1);
            }
            inner.took(port.take_free_many(want, |i| cache.push(i)));
            cache.pop()
        };
        let port = Port::new(&inner.seg, inner.client, self.port).expect("port in range");
        if let Some(i) = refill(&mut self.cache, &port) {
            return Ok(i);
        }
        if inner.allowance() == 0 && !reply {
            return Err(SendError::QuotaExceeded { quota: inner.quota() });
        }
        let slots = self.bus.inner.seg.params().slot_count;
        match self.backpressure {
            Backpressure::FailFast => Err(SendError::PoolExhausted { slots }),
            Backpressure::Block(t) => {
                let bell = port.sleeper(None, false).expect("the free ring exists");
                let cache = &mut self.cache;
                match self.bus.inner.wait_on(
                    &bell,
                    || crate::bus::after(Some(t)),
                    (crate::bus::DEFAULT_SPINS, crate::bus::DEFAULT_POLL_PAUSE),
                    || refill(cache, &port),
                ) {
                    Ok(Some(i)) => Ok(i),
                    Ok(None) => Err(SendError::Timeout { waited: t, what: "a free slot" }),
                    Err(u) => Err(u.into()),
                }
            }
        }
    }

    /// The subsystem of the message in `slot` (we own it), for errors.
    fn subsystem_of(&self, slot: SlotIndex, subsystem_len: usize) -> String {
        // SAFETY: the slot is Loaned by us.
        let path = unsafe { self.bus.inner.seg.slot(slot).path() }.unwrap_or("");
        path.get(..subsystem_len).unwrap_or("").to_owned()
    }

    /// A bus-unique message id: the connection's serial, this port, and a
    /// counter of this publisher (no shared atomic on the hot path).
    fn next_message_id(&mut self) -> u64 {
        self.next_id = self.next_id.wrapping_add(1);
        (self.bus.inner.serial as u64) << 40 | (self.port as u64) << 35 | (self.next_id & ((1 << 35) - 1))
    }

    /// Re-reads the route of a loan whose routing-table version is out of
    /// date (a cheap check otherwise: one load). A reply's queue must still
    /// be a reply queue with its requester; another route is resolved again
    /// by its subsystem's name. `Ok(true)` if the groups changed.
    fn revalidate(&mut self, slot: SlotIndex, route: &mut Route, subsystem_len: usize) -> Result<bool, SendError> {
        let seg = &self.bus.inner.seg;
        let v = routing::version(seg);
        if v == route.version {
            return Ok(false);
        }
        if let Some(serial) = route.direct {
            match routing::read(seg, route.to.subsystem) {
                Some(view) if view.subscribers > 0 && crate::handler::is_reply_queue_of(view.name(), serial as u64) => {
                }
                _ => return Err(SendError::NoSubscriber { subsystem: "(reply queue)".into() }),
            }
            route.version = v;
            return Ok(false);
        }
        let name = self.subsystem_of(slot, subsystem_len);
        let to = self.resolve(&name)?;
        route.version = v;
        let changed = to != route.to;
        route.to = to;
        Ok(changed)
    }

    /// Sends loaned `slot` to every group of its route. When the first
    /// blocking group's queue is full, nothing is published: the send waits
    /// for room (the slot stays loaned, so that a publisher killed while
    /// waiting sends nothing), up to the send timeout, or fails at once
    /// (fail-fast): `Back` then says the slot is still ours. A blocking
    /// group full after others got the message is waited for in the same
    /// way; if it stays full, its copy is dropped and the message is sent to
    /// some groups only (`Partly`). Before each try the route is checked
    /// against the routing table, so that no push goes into an entry that
    /// changed hands.
    #[inline(always)]
    fn push(&mut self, slot: SlotIndex, route: &mut Route, subsystem_len: usize) -> Pushed {
        // Read while the slot is still ours, and only when counted.
        let len = if self.bus.inner.statistics() {
            self.bus.inner.seg.slot(slot).header().body_len.load(Ordering::Relaxed) as u64
        } else {
            0
        };
        let pushed = self.push_one(slot, route, subsystem_len);
        match &pushed {
            Pushed::Back(e) => self.count_error(Some(route.to.subsystem), e),
            Pushed::Sent | Pushed::Partly(_) => {
                self.bus.inner.gave(1); // the groups have it now
                self.count_sent(route.to.subsystem, 1, len);
                if let Pushed::Partly(e) = &pushed {
                    self.count_error(Some(route.to.subsystem), e);
                }
            }
        }
        pushed
    }

    /// Counts `n` messages of `bytes` body bytes sent to entry `entry`: in
    /// the entry's statistics, and in this port's record (one thread
    /// writes it: a plain load and store).
    fn count_sent(&self, entry: u32, n: u64, bytes: u64) {
        if !self.bus.inner.statistics() {
            return;
        }
        let seg = &self.bus.inner.seg;
        if let Some(s) = seg.entry_stats(entry) {
            s.send.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        if let Some(rec) = seg.port_intent(self.bus.inner.client, self.port) {
            rec.sent.store(rec.sent.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
        }
    }

    /// Counts a failed send in its subsystem's statistics (by kind; errors
    /// of the caller's making, such as a bad path, are not counted).
    fn count_error(&self, entry: Option<u32>, e: &SendError) {
        let kind = match e {
            // Counted where the route is resolved (see `route_of`): a loan
            // whose subsystem lost its last receiver meanwhile names an
            // entry that may be another's by now.
            SendError::QueueFull { .. } | SendError::PartlyDelivered { .. } => Failure::QueueFull,
            SendError::Timeout { what, .. } if what.contains("queue") => Failure::QueueFull,
            SendError::Timeout { .. } | SendError::PoolExhausted { .. } => Failure::PoolExhausted,
            SendError::QuotaExceeded { .. } => Failure::Quota,
            _ => return,
        };
        self.count_failure(entry, kind);
    }

    fn count_failure(&self, entry: Option<u32>, kind: Failure) {
        if !self.bus.inner.statistics() {
            return;
        }
        if let Some(s) = entry.and_then(|q| self.bus.inner.seg.entry_stats(q)) {
            s.send.failures[kind as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// [`Publisher::push`], without the quota's count.
    /// The caller has checked [`Inner::usable`](crate::bus::Inner::usable)
    /// since the slot was last written: `Loan::send` before its stamp, the
    /// batches before their pushes.
    fn push_one(&mut self, slot: SlotIndex, route: &mut Route, subsystem_len: usize) -> Pushed {
        bus_core::crash_point!(SendBeforePush);
        // The clock is read only once a queue was found full: a send that
        // goes through at once makes no clock call.
        let deadline = std::cell::OnceCell::new();
        let reply = route.direct.is_some();
        let wait = |me: &Self, queue: u32, version: u64| match me.backpressure {
            Backpressure::Block(t) if reply => {
                me.wait_for_reply_room(queue, *deadline.get_or_init(|| crate::bus::deadline_in(t)), version)
            }
            Backpressure::FailFast => Err(SendError::QueueFull { subsystem: me.subsystem_of(slot, subsystem_len) }),
            Backpressure::Block(t) => {
                me.wait_for_space(queue, *deadline.get_or_init(|| crate::bus::deadline_in(t)), version)
            }
        };
        loop {
            match self.revalidate(slot, route, subsystem_len) {
                Ok(true) => {
                    let h = self.bus.inner.seg.slot(slot).header();
                    h.queue.store(route.to.subsystem as u16, Ordering::Relaxed);
                }
                Ok(false) => {}
                Err(e) => return Pushed::Back(e),
            }
            // Borrowed, not copied: a copy of the fan-out through the
            // stack is a load the store buffer cannot forward (module doc).
            let to = &route.to;
            // The first blocking group's queue full: wait before publishing
            // (a publish taken back costs a generation of the slot).
            let block = to.mask & !to.lossy;
            if block != 0 {
                let q = to.queues[block.trailing_zeros() as usize] as u32;
                if self.bus.inner.seg.queue(q).is_some_and(|r| r.looks_full()) {
                    if let Err(e) = wait(self, q, route.version) {
                        return Pushed::Back(e);
                    }
                    continue;
                }
            }
            let port = self.port();
            let mut publishing = port.begin_publish(to, slot);
            if publishing.push() == 0 {
                return Pushed::Sent;
            }
            let queue = publishing.waiting_for().expect("a group is pending");
            if publishing.pushed() == 0 && publishing.roll_back() {
                drop(publishing);
                if let Err(e) = wait(self, queue, route.version) {
                    return Pushed::Back(e);
                }
                continue;
            }
            // Some groups have it (or one took it through a duplicate
            // entry): wait for the others; lossy ones never wait.
            let mut seen = route.version;
            loop {
                if publishing.push() == 0 {
                    return Pushed::Sent;
                }
                let queue = publishing.waiting_for().expect("a group is pending");
                let waited = wait(self, queue, seen);
                // Groups that left meanwhile get no copy: their entries may
                // be another group's or subsystem's by now.
                let seg = &self.bus.inner.seg;
                let v = routing::version(seg);
                if v != seen {
                    seen = v;
                    let now = routing::find(seg, &self.subsystem_of(slot, subsystem_len)).and_then(|v| v.fanout());
                    let gone = bits_not_in(to, now.as_ref());
                    publishing.give_up(gone);
                    if publishing.push() == 0 {
                        return Pushed::Sent; // the group waited for was one that left
                    }
                }
                if let Err(e) = waited {
                    // The wait was on one pending group; another may have
                    // made room meanwhile: one last push for every group
                    // still pending, so that only those still full lose
                    // their copy.
                    if !matches!(e, SendError::BusGone | SendError::Forked) && publishing.push() == 0 {
                        return Pushed::Sent;
                    }
                    // Read before the drop, which may free the slot.
                    let subsystem = self.subsystem_of(slot, subsystem_len);
                    publishing.abandon();
                    let delivered = publishing.pushed().count_ones();
                    return Pushed::Partly(match e {
                        SendError::BusGone | SendError::Forked => e,
                        _ => SendError::PartlyDelivered { subsystem, delivered, groups: to.groups() },
                    });
                }
            }
        }
    }

    /// Returns a slot we own (loaned) to the private cache, or to the free
    /// ring if the cache is full.
    fn give_back(&mut self, slot: SlotIndex) {
        let port = self.port();
        if self.cache.len() < CACHE {
            port.mark_cached(slot);
            self.cache.push(slot);
        } else {
            port.give_free(slot);
            self.bus.inner.gave(1);
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        if self.bus.inner.detached() {
            return; // the parent's slots and port, or taken back
        }
        let port = Port::new(&self.bus.inner.seg, self.bus.inner.client, self.port).expect("port in range");
        self.bus.inner.gave(self.deferred.len() + self.cache.len());
        for d in self.deferred.drain(..) {
            port.give_free(d.slot);
        }
        for slot in self.cache.drain(..) {
            port.give_free(slot);
        }
        self.bus.inner.release_port(self.port);
    }
}

/// A claimed slot with its path written; the body is not written yet.
pub struct LoanUninit<'a> {
    publisher: &'a mut Publisher,
    slot: SlotIndex,
    route: Route,
    path_len: usize,
    subsystem_len: usize,
}

impl<'a> LoanUninit<'a> {
    /// Bytes available for the body.
    pub fn capacity(&self) -> usize {
        self.publisher.bus.inner.seg.params().body_capacity(self.path_len)
    }

    /// Serializes `value` with rkyv directly into the slot.
    #[inline(always)]
    pub fn write<T: Body>(self, value: &T) -> Result<Loan<'a>, SendError> {
        // A forked child must not write into its parent's loaned slot.
        self.publisher.bus.inner.usable()?;
        let seg = &self.publisher.bus.inner.seg;
        // SAFETY: the slot is Loaned by us; the area is ours until sent.
        let area = unsafe { seg.slot(self.slot).body_area(self.path_len) };
        let capacity = area.len();
        match rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(value, rkyv::ser::writer::Buffer::from(area)) {
            Ok(buf) => {
                let len = buf.len();
                Ok(self.finish(len, fingerprint::<T>(), 0))
            }
            Err(e) => {
                // Off the hot path: measure the real size for the error.
                match archived_size(value, capacity) {
                    Some(size) if size > capacity => Err(SendError::BodyTooLarge { size, capacity }),
                    _ => Err(SendError::Serialize { detail: e.to_string() }),
                }
            }
        }
    }

    /// Copies raw bytes into the slot.
    #[inline(always)]
    pub fn write_bytes(mut self, body: &[u8]) -> Result<Loan<'a>, SendError> {
        self.publisher.bus.inner.usable()?;
        let capacity = self.capacity();
        if body.len() > capacity {
            return Err(SendError::BodyTooLarge { size: body.len(), capacity });
        }
        self.body_mut()[..body.len()].copy_from_slice(body);
        Ok(self.finish(body.len(), bus_core::fingerprint::RAW, FLAG_RAW))
    }

    /// The body area, to write raw bytes in place; then call
    /// [`LoanUninit::commit`]. It holds whatever the slot held before.
    #[inline(always)]
    pub fn body_mut(&mut self) -> &mut [u8] {
        let seg = &self.publisher.bus.inner.seg;
        // SAFETY: the slot is Loaned by us; the returned borrow is tied to
        // `&mut self`, so it ends before the loan is sent or dropped.
        unsafe { seg.slot(self.slot).body_area(self.path_len) }
    }

    /// Declares the first `len` bytes of [`LoanUninit::body_mut`] the body.
    #[inline(always)]
    pub fn commit(self, len: usize) -> Result<Loan<'a>, SendError> {
        self.publisher.bus.inner.usable()?;
        let capacity = self.capacity();
        if len > capacity {
            return Err(SendError::BodyTooLarge { size: len, capacity });
        }
        Ok(self.finish(len, bus_core::fingerprint::RAW, FLAG_RAW))
    }

    #[inline(always)]
    fn finish(self, len: usize, fp: u64, flags: u16) -> Loan<'a> {
        let h = self.publisher.bus.inner.seg.slot(self.slot).header();
        h.body_len.store(len as u32, Ordering::Relaxed);
        h.fingerprint.store(fp, Ordering::Relaxed);
        h.flags.store(flags, Ordering::Relaxed);
        h.trace_id.store(0, Ordering::Relaxed);
        h.correlation_id.store(0, Ordering::Relaxed);
        h.reply_to.store(0, Ordering::Relaxed);
        let me = std::mem::ManuallyDrop::new(self);
        // SAFETY: `me` is never used or dropped again; we move its fields out.
        let publisher = unsafe { std::ptr::read(&me.publisher) };
        Loan { publisher, slot: me.slot, route: me.route, subsystem_len: me.subsystem_len }
    }
}

impl Drop for LoanUninit<'_> {
    fn drop(&mut self) {
        if self.publisher.bus.inner.detached() {
            return;
        }
        self.publisher.give_back(self.slot);
    }
}

/// A written message, ready to send.
pub struct Loan<'a> {
    publisher: &'a mut Publisher,
    slot: SlotIndex,
    route: Route,
    subsystem_len: usize,
}

/// A failed [`Loan::send`]: the error, and the loan back to retry or drop.
pub struct LoanSendError<'a> {
    /// What went wrong.
    pub error: SendError,
    /// The unsent message; `None` when it reached some of its subsystem's
    /// groups ([`SendError::PartlyDelivered`]).
    pub loan: Option<Loan<'a>>,
}

impl std::fmt::Debug for LoanSendError<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoanSendError").field("error", &self.error).finish_non_exhaustive()
    }
}

impl<'a> Loan<'a> {
    /// Marks the message as a request: replies go to queue `queue`, matched
    /// by `correlation`.
    #[inline(always)]
    pub(crate) fn request(self, queue: u32, correlation: u64) -> Self {
        let h = self.publisher.bus.inner.seg.slot(self.slot).header();
        h.reply_to.store(queue + 1, Ordering::Relaxed);
        h.correlation_id.store(correlation, Ordering::Relaxed);
        self
    }

    /// Marks the message as the reply to `correlation`; `error` makes it an
    /// error reply of that kind.
    #[inline(always)]
    pub(crate) fn reply(self, correlation: u64, error: Option<u64>) -> Self {
        let h = self.publisher.bus.inner.seg.slot(self.slot).header();
        h.correlation_id.store(correlation, Ordering::Relaxed);
        if let Some(kind) = error {
            h.flags.fetch_or(bus_core::layout::FLAG_ERROR, Ordering::Relaxed);
            h.fingerprint.store(kind, Ordering::Relaxed);
        }
        self
    }

    /// The slot's header (atomics; this loan owns the slot).
    pub(crate) fn header(&self) -> &bus_core::layout::SlotHeader {
        self.publisher.bus.inner.seg.slot(self.slot).header()
    }

    /// Sets the trace id (default: the message's own id, starting a trace).
    #[inline(always)]
    pub fn trace_id(self, id: u64) -> Self {
        self.publisher.bus.inner.seg.slot(self.slot).header().trace_id.store(id, Ordering::Relaxed);
        self
    }

    /// Gives the message its id, trace id (unless set) and timestamp.
    #[inline(always)]
    fn stamp(publisher: &mut Publisher, slot: SlotIndex) -> u64 {
        let id = publisher.next_message_id();
        let h = publisher.bus.inner.seg.slot(slot).header();
        h.id.store(id, Ordering::Relaxed);
        if h.trace_id.load(Ordering::Relaxed) == 0 {
            h.trace_id.store(id, Ordering::Relaxed);
        }
        h.timestamp_ns.store(publisher.clock.now(), Ordering::Relaxed);
        id
    }

    /// Stamps a reply to a request of client `serial` and keeps it for
    /// [`Publisher::flush_deferred`] (called by the caller, or here once a
    /// chunk is full), so that the
    /// replies of a batch of requests to one requester take one ring
    /// operation and one wake-up. The slot stays Loaned until then: a
    /// worker killed before the flush loses the reply, and the request it
    /// still holds is redelivered.
    pub(crate) fn defer(self, serial: u64) -> u64 {
        debug_assert!(self.route.direct == Some(serial as u32), "only replies are deferred");
        let me = std::mem::ManuallyDrop::new(self);
        // SAFETY: `me` is not used or dropped again; its fields move out here.
        let publisher = unsafe { std::ptr::read(&me.publisher) };
        if publisher.bus.inner.detached() {
            return 0; // not ours any more: nothing is written into it
        }
        let id = Self::stamp(publisher, me.slot);
        let d = Deferred { slot: me.slot, route: me.route, subsystem_len: me.subsystem_len, serial };
        publisher.deferred.push(d);
        if publisher.deferred.len() >= BATCH_CHUNK {
            publisher.deferred_dropped = publisher.flush_deferred();
        }
        id
    }

    /// Sends the message; on failure hands the loan back.
    #[inline(always)]
    pub fn send(self) -> Result<u64, LoanSendError<'a>> {
        let me = std::mem::ManuallyDrop::new(self);
        // SAFETY: `me` is not used or dropped again; its fields move out here.
        let publisher = unsafe { std::ptr::read(&me.publisher) };
        let (slot, mut route, subsystem_len) = (me.slot, me.route, me.subsystem_len);
        // Again here, not only when the loan was made (the daemon may have
        // died since, or this may be a forked child sending its parent's
        // loan), and before the stamp writes into the slot: one reclaimed
        // meanwhile (this client stopped past a restart's grace) is
        // another's now. `push_one` relies on this check.
        if let Err(e) = publisher.bus.inner.usable() {
            return Err(LoanSendError { error: e.into(), loan: Some(Loan { publisher, slot, route, subsystem_len }) });
        }
        let id = Self::stamp(publisher, slot);
        match publisher.push(slot, &mut route, subsystem_len) {
            Pushed::Sent => Ok(id),
            Pushed::Back(error) => {
                Err(LoanSendError { error, loan: Some(Loan { publisher, slot, route, subsystem_len }) })
            }
            Pushed::Partly(error) => Err(LoanSendError { error, loan: None }),
        }
    }
}

impl Drop for Loan<'_> {
    fn drop(&mut self) {
        if self.publisher.bus.inner.detached() {
            return;
        }
        self.publisher.give_back(self.slot);
    }
}

/// Free queue entries a publisher blocked on a full queue polls for before
/// it sleeps (see `Publisher::wait_for_space`).
const SPACE_BATCH: u64 = 32;

/// How long a reply waits for room in a full reply queue whose requester
/// takes nothing meanwhile (see [`Publisher::wait_for_reply_room`]).
const REPLY_PATIENCE: Duration = Duration::from_millis(100);

/// Polls of a full queue before its publisher sleeps until a consumer has
/// emptied half of it (`Publisher::wait_for_space`). Few: each poll reads
/// the consumers' lines, and a publisher polling while its consumers wait
/// for its CPU only delays them. The receive default (2 000) here cost
/// 1 → 4 groups a quarter and 4 → 1 a third of their rate when all their
/// processes shared one CPU (1 → 1 nothing measurable); with two CPUs free
/// to all it was mixed (docs/design.md, BENCHMARKS.md, session 11).
const SPACE_SPINS: u32 = 32;

/// The archived size of `value`, found by serializing it into growing
/// 16-byte aligned heap buffers (used only to report `BodyTooLarge`).
fn archived_size<T: Body>(value: &T, at_least: usize) -> Option<usize> {
    let mut words = (at_least / 16 + 1) * 2;
    while words <= 1 << 26 {
        let mut buf: Vec<u128> = vec![0; words];
        // SAFETY: u128 has no padding and any bytes are valid u8s; the slice
        // covers exactly the vector's initialized memory.
        let bytes = unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr() as *mut u8, words * 16) };
        if let Ok(b) =
            rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(value, rkyv::ser::writer::Buffer::from(bytes))
        {
            return Some(b.len());
        }
        words *= 4;
    }
    None
}
