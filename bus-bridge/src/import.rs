//! Imported subsystems: what local processes send to them goes to the host
//! that exports them. One thread per subsystem takes its messages off the
//! local queue: a one-way message becomes a Zenoh put (a run of them to one
//! key, queued already, one put: see [`Importer::forward_all`]), a request
//! a Zenoh get whose reply (or failure) comes back as the local reply.

use crate::config::LinkLoss;
use crate::counters::{add, bump, worth_logging, worth_logging_any};
use crate::wire::{self, Meta};
use crate::{BridgeError, Shared};
use bus_client::{Bus, Message, Publisher, RecvError, ReplyError, ReplyHandle, Subscriber};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use zenoh::bytes::ZBytes;
use zenoh::qos::{CongestionControl, Priority};
use zenoh::query::{ConsolidationMode, QueryTarget};
use zenoh::sample::Locality;
use zenoh::Wait;

/// Most routes with a Zenoh publisher of their own per subsystem; beyond,
/// messages go out through the session (undeclared key, same QoS).
const MAX_ROUTE_PUBLISHERS: usize = 1024;

/// How often a blocked subsystem (`on-link-loss = "block"`) looks again.
const BLOCKED_POLL: Duration = Duration::from_millis(20);

/// Polls of an imported subsystem's queue before its thread sleeps: a
/// tenth of a receiver's default. The bridge shares its CPUs with Zenoh's
/// own threads, which do the heavier part of each message; polling longer
/// takes their time (measured on 2 vCPUs: see BENCHMARKS.md).
const IMPORT_SPINS: u32 = 200;

/// Most one-way messages a blocked subsystem holds while it goes on
/// answering requests; beyond, they wait in the local queue (and requests
/// behind them too). Held messages are slots the bridge keeps from the
/// pool, so few.
const MAX_BACKLOG: usize = 64;

/// The running import side.
pub struct Import {
    threads: Vec<JoinHandle<()>>,
}

impl Import {
    /// Waits for the subsystem threads (after the stop flag was set).
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Whether some other host exports a subsystem, kept current by Zenoh's
/// matching listeners: a remote subscriber (for messages) and a remote
/// queryable (for requests) of its keys.
struct Link {
    state: Arc<LinkState>,
    _listeners: (zenoh::matching::MatchingListener<()>, zenoh::matching::MatchingListener<()>),
}

struct LinkState {
    subsystem: String,
    /// Read on every message (without the lock).
    subscribers: AtomicBool,
    queryables: AtomicBool,
    known: Mutex<Known>,
}

/// What the listeners have said, and what was last reported.
#[derive(Default)]
struct Known {
    subscribers: Option<bool>,
    queryables: Option<bool>,
    /// What was last reported: linked (both up), or unlinked (both down,
    /// as at start, where nothing is reported).
    shown: bool,
}

#[derive(Clone, Copy)]
enum Side {
    Subscribers,
    Queryables,
}

impl LinkState {
    /// Records what a listener said (`initial`: what was read at start,
    /// which never overrides a listener's word) and reports `linked S` once
    /// both sides of an exporter are seen, `unlinked S` once neither is
    /// after a link (not in between: after `unlinked` a request fails fast,
    /// and after `linked` both work).
    fn set(&self, side: Side, up: bool, initial: bool) {
        let mut k = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let (slot, flag) = match side {
            Side::Subscribers => (&mut k.subscribers, &self.subscribers),
            Side::Queryables => (&mut k.queryables, &self.queryables),
        };
        if initial && slot.is_some() {
            return;
        }
        *slot = Some(up);
        flag.store(up, Ordering::Relaxed);
        let now = match (k.subscribers, k.queryables) {
            (Some(true), Some(true)) => true,
            (Some(false), Some(false)) => false,
            _ => return,
        };
        // Unlinked at start is no change to report: `unlinked S` says a
        // link was lost, and only one that was up can be.
        if k.shown == now {
            return;
        }
        k.shown = now;
        let name = &self.subsystem;
        if now {
            crate::event(&format!("linked {name}"));
            tracing::info!("{name}: a host that exports it is linked");
        } else {
            crate::event(&format!("unlinked {name}"));
            tracing::warn!("{name}: no host that exports it is linked now");
        }
    }
}

/// Subscribes to every imported subsystem and starts its thread.
pub fn start(bus: &Bus, shared: &Arc<Shared>) -> Result<Import, BridgeError> {
    let cfg = &shared.config;
    let mut import = Import { threads: Vec::new() };
    if cfg.import.is_empty() {
        return Ok(import);
    }
    for subsystem in &cfg.import {
        // Each subsystem's replies go through its own publisher: Zenoh's
        // callbacks for one never wait behind another's.
        let replier = Arc::new(Mutex::new(bus.publisher().create()?));
        let mut b = bus.subscription(subsystem);
        if let Some(g) = &cfg.import_group {
            b = b.group(g);
        }
        let sub = b.create()?;
        sub.set_spins(IMPORT_SPINS);
        let base = wire::key_of(&cfg.prefix, subsystem, "").map_err(BridgeError::Zenoh)?;
        let session = &shared.session;
        let zerr = |what: &str, e: zenoh::Error| BridgeError::Zenoh(format!("{what} {base}: {e}"));
        // Reserved at start: the subsystem's own publisher (its empty
        // route, and the link's state), and a querier for the same.
        let publisher = declare_publisher(session, base.clone()).map_err(|e| zerr("declaring a publisher on", e))?;
        let querier = session
            .declare_querier(base.clone())
            .allowed_destination(Locality::Remote)
            .priority(crate::RPC_PRIORITY)
            .congestion_control(CongestionControl::Block)
            .wait()
            .map_err(|e| zerr("declaring a querier on", e))?;
        let link = watch(subsystem, &publisher, &querier).map_err(|e| zerr("watching", e))?;
        let mut publishers = HashMap::new();
        publishers.insert(base, publisher);
        let worker = Importer {
            shared: shared.clone(),
            subsystem: subsystem.clone(),
            publishers,
            _querier: querier,
            link,
            replier,
            run: Run::default(),
        };
        let t = std::thread::Builder::new()
            .name(format!("import-{subsystem}"))
            .spawn(move || worker.run(&sub))
            .map_err(|e| BridgeError::Io(format!("starting the thread of {subsystem}: {e}")))?;
        import.threads.push(t);
    }
    Ok(import)
}

fn declare_publisher(session: &zenoh::Session, key: String) -> zenoh::Result<zenoh::pubsub::Publisher<'static>> {
    session
        .declare_publisher(key)
        .allowed_destination(Locality::Remote)
        .congestion_control(CongestionControl::Block)
        .priority(Priority::Data)
        .wait()
}

fn watch(
    subsystem: &str,
    publisher: &zenoh::pubsub::Publisher<'static>,
    querier: &zenoh::query::Querier<'static>,
) -> zenoh::Result<Link> {
    let state = Arc::new(LinkState {
        subsystem: subsystem.to_owned(),
        subscribers: AtomicBool::new(false),
        queryables: AtomicBool::new(false),
        known: Mutex::new(Known::default()),
    });
    // Listeners first, then the state now: no change falls in between.
    let st = state.clone();
    let l1 = publisher.matching_listener().callback(move |m| st.set(Side::Subscribers, m.matching(), false)).wait()?;
    let st = state.clone();
    let l2 = querier.matching_listener().callback(move |m| st.set(Side::Queryables, m.matching(), false)).wait()?;
    state.set(Side::Subscribers, publisher.matching_status().wait()?.matching(), true);
    state.set(Side::Queryables, querier.matching_status().wait()?.matching(), true);
    Ok(Link { state, _listeners: (l1, l2) })
}

/// A one-way message held until an exporter is linked.
struct Waiting<'m> {
    msg: Message<'m>,
    key: String,
    meta: Meta,
}

struct Importer {
    shared: Arc<Shared>,
    subsystem: String,
    /// Before the publisher and querier it listens to: fields drop in
    /// order, and a listener undeclared after its publisher logs an error.
    link: Link,
    publishers: HashMap<String, zenoh::pubsub::Publisher<'static>>,
    _querier: zenoh::query::Querier<'static>,
    replier: Arc<Mutex<Publisher>>,
    /// The run being gathered (its route and key kept between runs).
    run: Run,
}

/// Most bytes of a coalesced sample's frames: a run is sent when the next
/// message would take it past this. Under Zenoh's 64 KiB transport batch,
/// with room for the key and attachment, so that a sample is not cut into
/// fragments.
const MAX_COALESCED_BYTES: usize = 60 * 1024;

/// The run of one-way messages to one key being gathered
/// ([`Importer::forward_all`]); the messages themselves wait, held, in the
/// caller's `held`.
#[derive(Default)]
struct Run {
    /// The route of the last run and its key, kept between runs: a
    /// stream to one route computes its key once.
    route: String,
    key: Option<String>,
    /// Bytes their frames take (see `crate::wire`).
    bytes: usize,
}

impl Importer {
    fn run(mut self, sub: &Subscriber) {
        // One-way messages that wait for an exporter (`on-link-loss =
        // "block"`), in order, still held: not released until sent.
        let mut backlog: VecDeque<Waiting<'_>> = VecDeque::new();
        // Messages taken together (the first, and what was queued behind it).
        let mut taken: Vec<Message<'_>> = Vec::with_capacity(self.shared.config.coalesce);
        // Those of them in the run being gathered, released once it is sent.
        let mut held: Vec<Message<'_>> = Vec::with_capacity(self.shared.config.coalesce);
        while !self.shared.stop.load(Ordering::Relaxed) {
            // Send what waited, while an exporter is linked.
            while self.link.state.subscribers.load(Ordering::Relaxed) {
                let Some(w) = backlog.pop_front() else { break };
                match w.msg.body_bytes() {
                    Ok(body) => {
                        self.put(&w.key, ZBytes::from(body), wire::encode(&w.meta), 1);
                    }
                    Err(_) => {
                        bump(&self.shared.counters.unbridgeable);
                    }
                }
            }
            if backlog.len() >= MAX_BACKLOG {
                // Full: the rest stay in the local queue (whose publishers
                // meet its backpressure).
                std::thread::sleep(BLOCKED_POLL);
                continue;
            }
            let wait = if backlog.is_empty() { Duration::from_millis(200) } else { BLOCKED_POLL };
            match sub.recv_timeout(wait) {
                Ok(msg) => {
                    hop!("1-import-taken", &self.subsystem, msg.body_bytes().unwrap_or_default());
                    taken.push(msg);
                    let mut more = self.shared.config.coalesce - 1;
                    if self.shared.config.on_link_loss == LinkLoss::Block {
                        // Should the link go while they are sent, the rest
                        // join the backlog: not past its bound.
                        more = more.min(MAX_BACKLOG - 1);
                    }
                    if more > 0 && backlog.is_empty() {
                        // What is queued already goes with it; nothing is
                        // waited for. (An error here shows at the next
                        // receive.)
                        let _ = sub.try_recv_batch(&mut taken, more);
                    }
                    self.forward_all(&mut taken, &mut held, &mut backlog);
                }
                Err(RecvError::Timeout(_)) => {}
                Err(RecvError::BusGone) => {
                    self.shared.fail("the local bus is gone (its daemon stopped): restart shmbusd, then the bridge");
                    break;
                }
                Err(e) => {
                    tracing::warn!("{}: {e}", self.subsystem);
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        // Stopping with messages unsent: they stay held, and the daemon
        // puts them back into the queue (flagged redelivered) when this
        // process exits.
        for w in backlog {
            std::mem::forget(w.msg);
        }
    }

    /// Sends `msgs` on, in order, as [`Importer::forward`] does, except
    /// that one-way messages to one key in a row, while an exporter is
    /// linked and nothing waits for the link, go out as one sample (up to
    /// `coalesce` of them; see `crate::wire` for the format). A message of
    /// a run waits in `held` until the run is sent (its body is copied
    /// then), so that a bridge killed meanwhile leaves it to be
    /// redelivered.
    fn forward_all<'m>(
        &mut self,
        msgs: &mut Vec<Message<'m>>,
        held: &mut Vec<Message<'m>>,
        backlog: &mut VecDeque<Waiting<'m>>,
    ) {
        let mut run = std::mem::take(&mut self.run);
        let coalesce = self.shared.config.coalesce;
        for msg in msgs.drain(..) {
            let len = match msg.body_bytes() {
                Ok(b)
                    if coalesce > 1
                        && backlog.is_empty()
                        && !msg.is_remote()
                        && !msg.is_request()
                        && self.link.state.subscribers.load(Ordering::Relaxed) =>
                {
                    b.len()
                }
                _ => {
                    self.flush(&mut run, held, backlog);
                    if let Some(w) = self.forward(msg, !backlog.is_empty()) {
                        bump(&self.shared.counters.waited_for_link);
                        backlog.push_back(w);
                    }
                    continue;
                }
            };
            let full = held.len() >= coalesce || run.bytes + wire::FRAME_OVERHEAD + len > MAX_COALESCED_BYTES;
            if !held.is_empty() && (full || run.route != msg.route()) {
                self.flush(&mut run, held, backlog);
            }
            if run.key.is_none() || run.route != msg.route() {
                run.route.clear();
                run.route.push_str(msg.route());
                run.key = wire::key_of(&self.shared.config.prefix, &self.subsystem, msg.route()).ok();
            }
            if run.key.is_none() {
                // A route Zenoh cannot carry: counted and logged there.
                self.forward(msg, false);
                continue;
            }
            run.bytes += wire::FRAME_OVERHEAD + len;
            held.push(msg);
        }
        self.flush(&mut run, held, backlog);
        self.run = run;
    }

    /// Sends the run's messages, `held`, and releases them: one as a
    /// sample of its own (its body copied once, from its slot), more as a
    /// batch (each body copied once, into the batch). Should the link have
    /// gone since they joined the run, each takes the link-loss policy
    /// instead, as [`Importer::forward`] gives it: it waits in `backlog`,
    /// in order, or is dropped and counted.
    fn flush<'m>(&mut self, run: &mut Run, held: &mut Vec<Message<'m>>, backlog: &mut VecDeque<Waiting<'m>>) {
        let Some(key) = run.key.as_deref() else {
            // A message joins a run only once its key is known.
            debug_assert!(held.is_empty());
            return;
        };
        if !held.is_empty() && !self.link.state.subscribers.load(Ordering::Relaxed) {
            for msg in held.drain(..) {
                if let Some(w) = self.forward(msg, !backlog.is_empty()) {
                    bump(&self.shared.counters.waited_for_link);
                    backlog.push_back(w);
                }
            }
            run.bytes = 0;
            return;
        }
        let meta = |m: &Message<'_>| Meta { envelope: m.envelope(), id: m.id(), error: None };
        // Read when it joined the run, and held since; only a process that
        // overwrites the slot's header can make it unreadable now.
        let unreadable = || bump(&self.shared.counters.unbridgeable);
        match held.as_slice() {
            [] => return,
            [one] => match one.body_bytes() {
                Ok(body) => {
                    self.put(key, ZBytes::from(body), wire::encode(&meta(one)), 1);
                    hop!("2-import-put", &self.subsystem, body);
                }
                Err(_) => {
                    unreadable();
                }
            },
            all => {
                let mut payload = Vec::with_capacity(run.bytes);
                let mut n = 0u32;
                for m in all {
                    match m.body_bytes() {
                        Ok(body) => {
                            wire::push_frame(&mut payload, &meta(m), body);
                            n += 1;
                        }
                        Err(_) => {
                            unreadable();
                        }
                    }
                }
                if n > 0 && self.put(key, ZBytes::from(payload), wire::encode_batch(n), n as u64) {
                    bump(&self.shared.counters.batches_sent);
                }
            }
        }
        held.clear();
        run.bytes = 0;
    }

    /// Sends `msg` on, or hands it back to wait for the link (one-way, in
    /// block mode, with no exporter or with others waiting already).
    fn forward<'m>(&mut self, msg: Message<'m>, others_wait: bool) -> Option<Waiting<'m>> {
        let c = &self.shared.counters;
        if msg.is_remote() {
            // It came from another host, and is not sent on again. (With
            // an import group of its own, the subsystem's local receivers
            // in the other groups have it, and answer it if a request.)
            bump(&c.skipped_remote);
            return None;
        }
        let reply_to = msg.reply_handle();
        if msg.is_request() && reply_to.is_none() {
            return None; // its requester is gone already
        }
        let key = match wire::key_of(&self.shared.config.prefix, &self.subsystem, msg.route()) {
            Ok(k) => k,
            Err(why) => {
                let n = bump(&c.unbridgeable);
                if worth_logging(n) {
                    tracing::warn!("{}: not sent to another host ({n} so far): {why}", msg.path());
                }
                if let Some(to) = reply_to {
                    self.reply_error(&to, ReplyError::Unreachable(why));
                }
                return None;
            }
        };
        let meta = Meta { envelope: msg.envelope(), id: msg.id(), error: None };
        let body = match msg.body_bytes() {
            Ok(b) => b,
            Err(e) => {
                bump(&c.unbridgeable);
                if let Some(to) = reply_to {
                    self.reply_error(&to, ReplyError::Unreachable(format!("the request's body is unreadable: {e}")));
                }
                return None;
            }
        };
        if let Some(to) = reply_to {
            self.request(key, body, &meta, to);
            return None;
        }
        let linked = self.link.state.subscribers.load(Ordering::Relaxed);
        match self.shared.config.on_link_loss {
            LinkLoss::Block if others_wait || !linked => return Some(Waiting { msg, key, meta }),
            LinkLoss::Drop if !linked => {
                bump(&c.dropped_no_link);
                return None;
            }
            _ => {}
        }
        self.put(&key, ZBytes::from(body), wire::encode(&meta), 1);
        None
    }

    /// Puts one sample carrying `n` messages (`payload` is a body copied
    /// out of its slot, or a batch of them); `true` if Zenoh took it.
    fn put(&mut self, key: &str, payload: ZBytes, attachment: [u8; wire::LEN], n: u64) -> bool {
        let sent = match self.publishers.get(key) {
            Some(p) => p.put(payload).attachment(attachment).wait(),
            None if self.publishers.len() < MAX_ROUTE_PUBLISHERS => {
                match declare_publisher(&self.shared.session, key.to_owned()) {
                    Ok(p) => {
                        let r = p.put(payload).attachment(attachment).wait();
                        self.publishers.insert(key.to_owned(), p);
                        r
                    }
                    Err(e) => Err(e),
                }
            }
            None => self
                .shared
                .session
                .put(key.to_owned(), payload)
                .attachment(attachment)
                .allowed_destination(Locality::Remote)
                .congestion_control(CongestionControl::Block)
                .priority(Priority::Data)
                .wait(),
        };
        match sent {
            Ok(()) => {
                add(&self.shared.counters.sent, n);
                true
            }
            Err(e) => {
                let total = add(&self.shared.counters.send_failed, n);
                if worth_logging_any(total, n) {
                    tracing::warn!("{}: messages were not sent to another host ({total} so far): {e}", self.subsystem);
                }
                false
            }
        }
    }

    fn request(&self, key: String, body: &[u8], meta: &Meta, to: ReplyHandle) {
        let c = &self.shared.counters;
        if !self.link.state.queryables.load(Ordering::Relaxed) {
            bump(&c.unreachable);
            let why =
                format!("no host exports {} now (the link is down, or no bridge there exports it)", self.subsystem);
            self.reply_error(&to, ReplyError::Unreachable(why));
            return;
        }
        bump(&c.requests_sent);
        let mut pending = PendingReply {
            to: Some(to),
            shared: self.shared.clone(),
            replier: self.replier.clone(),
            subsystem: self.subsystem.clone(),
            since: std::time::Instant::now(),
        };
        let got = self
            .shared
            .session
            .get(key)
            .payload(ZBytes::from(body))
            .attachment(wire::encode(meta))
            .allowed_destination(Locality::Remote)
            .target(QueryTarget::BestMatching)
            .consolidation(ConsolidationMode::None)
            .priority(crate::RPC_PRIORITY)
            .congestion_control(CongestionControl::Block)
            .express(true)
            .timeout(self.shared.config.request_timeout)
            .callback_mut(move |reply| pending.answer(reply))
            .wait();
        if let Err(e) = got {
            // The callback was dropped with the builder: its requester has
            // its `Unreachable` already.
            tracing::warn!("{}: a request could not be sent to another host: {e}", self.subsystem);
        }
    }

    fn reply_error(&self, to: &ReplyHandle, e: ReplyError) {
        let mut p = self.replier.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = p.reply_error(to, &e) {
            tracing::warn!("a reply to {} was lost: {e}", to.path());
        }
    }
}

/// A request out on Zenoh. The first reply goes back to the local
/// requester; if the query ends without one (no reply within the timeout,
/// or the link to the serving host went), dropping this answers
/// `Unreachable`.
struct PendingReply {
    to: Option<ReplyHandle>,
    shared: Arc<Shared>,
    replier: Arc<Mutex<Publisher>>,
    subsystem: String,
    /// When the request went out.
    since: std::time::Instant,
}

impl PendingReply {
    fn answer(&mut self, reply: zenoh::query::Reply) {
        let Some(to) = self.to.take() else { return }; // a second reply
        let mut p = self.replier.lock().unwrap_or_else(|p| p.into_inner());
        let sent = match reply.result() {
            Ok(sample) => {
                let meta = wire::decode(sample.attachment().map(|a| a.to_bytes()).as_deref());
                let body = sample.payload().to_bytes();
                match meta.error {
                    None => p.reply(&to, &meta.envelope, &body),
                    Some(kind) => {
                        let text = String::from_utf8_lossy(&body).into_owned();
                        let e = wire::reply_error(kind, text, to.path());
                        if matches!(e, ReplyError::Timeout(_)) {
                            bump(&self.shared.counters.timed_out);
                        }
                        p.reply_error(&to, &e)
                    }
                }
            }
            Err(e) => {
                // Zenoh's own error: the query timed out (the far host
                // may have run the request), or it failed before that.
                let text = String::from_utf8_lossy(&e.payload().to_bytes()).into_owned();
                let why = || format!("the far host answered with an error: {text}");
                p.reply_error(&to, &self.unanswered(why))
            }
        };
        if let Err(e) = sent {
            // The reply could not be written here (a body larger than this
            // bus's slots, say). The handler ran, as when a local handler's
            // reply does not fit: a handler error, short enough to fit
            // (an error reply is cut to the slot).
            let why = ReplyError::Handler(format!("its reply cannot be written here: {e}"));
            if let Err(e) = p.reply_error(&to, &why) {
                tracing::warn!("a reply to {} was lost: {e}", to.path());
            }
        }
    }

    /// The error for a request that got no reply from the far host: once
    /// the bridge's `request-timeout` has passed, `Timeout` (the far host
    /// may have taken it and run it, as a local service that does not
    /// answer in time), counted in `timed_out`; earlier (the query ended
    /// without a reply: the link went, or no host exports the subsystem
    /// now), `Unreachable` with `why()`, counted in `unreachable`.
    fn unanswered(&self, why: impl FnOnce() -> String) -> ReplyError {
        let timeout = self.shared.config.request_timeout;
        // Zenoh ends a query at its timeout, measured from a moment just
        // after `since`: a few milliseconds of slack for the clocks.
        if self.since.elapsed() + std::time::Duration::from_millis(5) >= timeout {
            bump(&self.shared.counters.timed_out);
            ReplyError::Timeout(timeout)
        } else {
            bump(&self.shared.counters.unreachable);
            ReplyError::Unreachable(why())
        }
    }
}

impl Drop for PendingReply {
    fn drop(&mut self) {
        let Some(to) = self.to.take() else { return };
        // Zenoh ends a query early when nothing can answer it (the link
        // went, or no host exports the subsystem now): say which it was.
        let waited = self.since.elapsed();
        let e = self.unanswered(|| {
            format!(
                "no reply from a host that exports {}: the query ended after {waited:.1?} without one (the link was lost, no host exports it now, or a bridge is stopping)",
                self.subsystem
            )
        });
        let mut p = self.replier.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = p.reply_error(&to, &e) {
            tracing::warn!("a reply to {} was lost: {e}", to.path());
        }
    }
}
