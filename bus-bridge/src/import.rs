//! Imported subsystems: what local processes send to them goes to the host
//! that exports them. One thread per subsystem takes its messages off the
//! local queue: a one-way message becomes a Zenoh put, a request a Zenoh
//! get whose reply (or failure) comes back as the local reply.

use crate::config::LinkLoss;
use crate::counters::{bump, worth_logging};
use crate::wire::{self, Meta};
use crate::{BridgeError, Shared};
use bus_client::{Bus, Message, Publisher, RecvError, ReplyError, ReplyHandle, Subscriber};
use std::collections::HashMap;
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
/// matching listeners.
struct Link {
    subscribers: Arc<AtomicBool>,
    queryables: Arc<AtomicBool>,
    _listeners: (zenoh::matching::MatchingListener<()>, zenoh::matching::MatchingListener<()>),
}

/// Subscribes to every imported subsystem and starts its thread.
pub fn start(bus: &Bus, shared: &Arc<Shared>) -> Result<Import, BridgeError> {
    let cfg = &shared.config;
    let mut import = Import { threads: Vec::new() };
    if cfg.import.is_empty() {
        return Ok(import);
    }
    let replier = Arc::new(Mutex::new(bus.publisher().create()?));
    for subsystem in &cfg.import {
        let mut b = bus.subscription(subsystem);
        if let Some(g) = &cfg.import_group {
            b = b.group(g);
        }
        let sub = b.create()?;
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
            replier: replier.clone(),
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
    let subscribers = Arc::new(AtomicBool::new(publisher.matching_status().wait()?.matching()));
    let queryables = Arc::new(AtomicBool::new(querier.matching_status().wait()?.matching()));
    let (s, name) = (subscribers.clone(), subsystem.to_owned());
    let l1 = publisher
        .matching_listener()
        .callback(move |m| {
            s.store(m.matching(), Ordering::Relaxed);
            if m.matching() {
                crate::event(&format!("linked {name}"));
                tracing::info!("{name}: a host that exports it is linked");
            } else {
                crate::event(&format!("unlinked {name}"));
                tracing::warn!("{name}: no host that exports it is linked now");
            }
        })
        .wait()?;
    let q = queryables.clone();
    let l2 = querier.matching_listener().callback(move |m| q.store(m.matching(), Ordering::Relaxed)).wait()?;
    Ok(Link { subscribers, queryables, _listeners: (l1, l2) })
}

struct Importer {
    shared: Arc<Shared>,
    subsystem: String,
    publishers: HashMap<String, zenoh::pubsub::Publisher<'static>>,
    _querier: zenoh::query::Querier<'static>,
    link: Link,
    replier: Arc<Mutex<Publisher>>,
}

impl Importer {
    fn run(mut self, sub: &Subscriber) {
        while !self.shared.stop.load(Ordering::Relaxed) {
            match sub.recv_timeout(Duration::from_millis(200)) {
                Ok(msg) => self.forward(msg),
                Err(RecvError::Timeout(_)) => {}
                Err(RecvError::BusGone) => {
                    tracing::error!("the local bus is gone (its daemon stopped)");
                    self.shared.fail("the local bus is gone (its daemon stopped): restart shmbusd, then the bridge");
                    return;
                }
                Err(e) => {
                    tracing::warn!("{}: {e}", self.subsystem);
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn forward(&mut self, msg: Message<'_>) {
        let c = &self.shared.counters;
        if msg.is_remote() {
            bump(&c.skipped_remote);
            return;
        }
        let reply_to = msg.reply_handle();
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
                return;
            }
        };
        let Ok(body) = msg.body_bytes() else { return };
        let meta = Meta { envelope: msg.envelope(), id: msg.id(), error: None };
        match reply_to {
            Some(to) => self.request(key, body, &meta, to),
            None => {
                if !self.link.subscribers.load(Ordering::Relaxed) {
                    match self.shared.config.on_link_loss {
                        LinkLoss::Drop => {
                            bump(&c.dropped_no_link);
                            return;
                        }
                        LinkLoss::Block => {
                            while !self.link.subscribers.load(Ordering::Relaxed) {
                                if self.shared.stop.load(Ordering::Relaxed) {
                                    // Still held, not sent: the daemon gives
                                    // it back to the queue when we exit.
                                    std::mem::forget(msg);
                                    return;
                                }
                                std::thread::sleep(BLOCKED_POLL);
                            }
                        }
                    }
                }
                self.put(key, body, &meta);
            }
        }
    }

    fn put(&mut self, key: String, body: &[u8], meta: &Meta) {
        let payload = ZBytes::from(body); // the one copy: slot → Zenoh's buffer
        let attachment = wire::encode(meta);
        let sent = match self.publishers.get(&key) {
            Some(p) => p.put(payload).attachment(attachment).wait(),
            None if self.publishers.len() < MAX_ROUTE_PUBLISHERS => {
                match declare_publisher(&self.shared.session, key.clone()) {
                    Ok(p) => {
                        let r = p.put(payload).attachment(attachment).wait();
                        self.publishers.insert(key, p);
                        r
                    }
                    Err(e) => Err(e),
                }
            }
            None => self
                .shared
                .session
                .put(key, payload)
                .attachment(attachment)
                .allowed_destination(Locality::Remote)
                .congestion_control(CongestionControl::Block)
                .priority(Priority::Data)
                .wait(),
        };
        match sent {
            Ok(()) => {
                bump(&self.shared.counters.sent);
            }
            Err(e) => {
                let n = bump(&self.shared.counters.dropped_no_link);
                if worth_logging(n) {
                    tracing::warn!("{}: a message was not sent to another host ({n} so far): {e}", self.subsystem);
                }
            }
        }
    }

    fn request(&self, key: String, body: &[u8], meta: &Meta, to: ReplyHandle) {
        let c = &self.shared.counters;
        if !self.link.queryables.load(Ordering::Relaxed) {
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
                        p.reply_error(&to, &wire::reply_error(kind, text, to.path()))
                    }
                }
            }
            Err(e) => {
                let text = String::from_utf8_lossy(&e.payload().to_bytes()).into_owned();
                p.reply_error(&to, &ReplyError::Unreachable(format!("the far host answered with an error: {text}")))
            }
        };
        if let Err(e) = sent {
            tracing::warn!("a reply to {} was lost: {e}", to.path());
        }
    }
}

impl Drop for PendingReply {
    fn drop(&mut self) {
        let Some(to) = self.to.take() else { return };
        bump(&self.shared.counters.unreachable);
        let why = format!(
            "no reply from the host that exports {} within {:?}: the link was lost, or its service is slow",
            self.subsystem, self.shared.config.request_timeout
        );
        let mut p = self.replier.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = p.reply_error(&to, &ReplyError::Unreachable(why)) {
            tracing::warn!("a reply to {} was lost: {e}", to.path());
        }
    }
}
