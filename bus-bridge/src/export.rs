//! Exported subsystems: what other hosts send to them is delivered here.
//! A Zenoh subscriber hands each message to the local bus from Zenoh's own
//! receive thread (one copy, into the slot); a queryable hands requests to
//! a pool of workers, which make the local request and send the reply back.
//! Each key seen is declared once (see [`declare_keys`]), so that Zenoh
//! routes its samples from a cached route.

use crate::counters::{add, bump, worth_logging, worth_logging_any, Counters};
use crate::wire::{self, Kind, Meta};
use crate::{BridgeError, Shared};
use bus_client::{Bus, Publisher, SendError};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use zenoh::query::Query;
use zenoh::sample::Locality;
use zenoh::Wait;

/// Keys whose paths an exported subsystem keeps (and whose key
/// expressions it declares), at most.
const MAX_KEYS: usize = 256;

/// What the subscriber of one exported subsystem delivers with.
struct Delivery {
    publisher: Publisher,
    /// Key → bus path, for the keys seen.
    paths: HashMap<String, String>,
    /// Keys first seen, to [`declare_keys`].
    declare: std::sync::mpsc::Sender<String>,
}

/// Declares each key expression it is sent (once), and keeps the
/// declarations until the bridge stops. Zenoh keeps a cached route only
/// for a key it has a resource for, and the subscription is a wildcard:
/// without a declaration, every sample of a key is matched against every
/// subscription again.
fn declare_keys(shared: &Shared, keys: std::sync::mpsc::Receiver<String>) {
    let mut declared: HashMap<String, zenoh::key_expr::KeyExpr<'static>> = HashMap::new();
    while !shared.stop.load(Ordering::Relaxed) {
        let key = match keys.recv_timeout(Duration::from_millis(200)) {
            Ok(k) => k,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        if declared.contains_key(&key) || declared.len() >= MAX_KEYS {
            continue;
        }
        match shared.session.declare_keyexpr(key.clone()).wait() {
            Ok(k) => {
                declared.insert(key, k);
            }
            Err(e) => tracing::debug!("declaring {key}: {e}"),
        }
    }
}

/// Requests waiting for a worker, per worker.
const BACKLOG_PER_WORKER: usize = 16;

/// The running export side; dropping it undeclares everything.
pub struct Export {
    _subscribers: Vec<zenoh::pubsub::Subscriber<()>>,
    _queryables: Vec<zenoh::query::Queryable<()>>,
    workers: Vec<JoinHandle<()>>,
}

impl Export {
    /// Waits for the request workers (after the stop flag was set).
    pub fn join(self) {
        let Export { _subscribers, _queryables, workers } = self;
        drop((_subscribers, _queryables)); // no new queries
        for w in workers {
            let _ = w.join();
        }
    }
}

/// Declares a subscriber and a queryable per exported subsystem.
pub fn start(bus: &Bus, shared: &Arc<Shared>) -> Result<Export, BridgeError> {
    let cfg = &shared.config;
    let (tx, rx) = sync_channel::<Query>(cfg.request_workers * BACKLOG_PER_WORKER);
    let mut export = Export { _subscribers: Vec::new(), _queryables: Vec::new(), workers: Vec::new() };
    if cfg.export.is_empty() {
        return Ok(export);
    }
    let (declare, keys_seen) = std::sync::mpsc::channel::<String>();
    let s = shared.clone();
    let declarer = std::thread::Builder::new()
        .name("export-keys".into())
        .spawn(move || declare_keys(&s, keys_seen))
        .map_err(|e| BridgeError::Io(format!("starting the key declarer: {e}")))?;
    export.workers.push(declarer);
    for subsystem in &cfg.export {
        let keys = wire::subsystem_keys(&cfg.prefix, subsystem);
        let publisher = Mutex::new(Delivery {
            publisher: bus.publisher().create()?,
            paths: HashMap::new(),
            declare: declare.clone(),
        });
        let s = shared.clone();
        let sub = shared
            .session
            .declare_subscriber(&keys)
            .allowed_origin(Locality::Remote)
            .callback(move |sample| deliver(&s, &publisher, sample))
            .wait()
            .map_err(|e| BridgeError::Zenoh(format!("subscribing to {keys}: {e}")))?;
        export._subscribers.push(sub);
        let (tx, s) = (tx.clone(), shared.clone());
        let q = shared
            .session
            .declare_queryable(&keys)
            .allowed_origin(Locality::Remote)
            .callback(move |query| enqueue(&s, &tx, query))
            .wait()
            .map_err(|e| BridgeError::Zenoh(format!("declaring the queryable {keys}: {e}")))?;
        export._queryables.push(q);
    }
    let rx = Arc::new(Mutex::new(rx));
    let requester = Arc::new(bus.requester()?);
    for i in 0..cfg.request_workers {
        let (rx, s, r) = (rx.clone(), shared.clone(), requester.clone());
        let w = std::thread::Builder::new()
            .name(format!("export-req-{i}"))
            .spawn(move || serve(&s, &rx, &r))
            .map_err(|e| BridgeError::Io(format!("starting a request worker: {e}")))?;
        export.workers.push(w);
    }
    Ok(export)
}

/// A message from another host: onto the local bus, or dropped and counted
/// if the bus does not take it within `local-timeout` (so that Zenoh's
/// receive path never stalls long enough for the far side to close the
/// link: see `Config::local_timeout`).
fn deliver(shared: &Shared, delivery: &Mutex<Delivery>, sample: zenoh::sample::Sample) {
    let c: &Counters = &shared.counters;
    let mut d = delivery.lock().unwrap_or_else(|p| p.into_inner());
    let Delivery { publisher: p, paths, declare } = &mut *d;
    let key = sample.key_expr().as_str();
    let uncached;
    let path = match paths.get(key) {
        Some(path) => path.as_str(),
        None => {
            let Some(path) = wire::path_of(&shared.config.prefix, key) else {
                bump(&c.unbridgeable);
                return;
            };
            if paths.len() < MAX_KEYS {
                // Declared by another thread: a declaration may block, and
                // this is Zenoh's receive thread.
                let _ = declare.send(key.to_owned());
                paths.entry(key.to_owned()).or_insert(path).as_str()
            } else {
                // Past the cap, neither cached nor declared (so that keys in
                // rotation cost no more than before).
                uncached = path;
                uncached.as_str()
            }
        }
    };
    let attachment = sample.attachment().map(|a| a.to_bytes());
    let payload = sample.payload().to_bytes();
    let count = match wire::kind(attachment.as_deref()) {
        Kind::Single => {
            hop!("3-export-arrived", path, &payload);
            let _ = hand_over(c, p, path, &wire::decode(attachment.as_deref()), &payload);
            hop!("4-export-sent", path, &payload);
            return;
        }
        Kind::Batch(n) => n,
        Kind::BadBatch => return malformed(c, path, "its attachment cannot be right"),
    };
    // The whole batch is checked before any of it is delivered.
    if let Some(Err(why)) = wire::frames(&payload, count).find(Result::is_err) {
        return malformed(c, path, why);
    }
    // One sample waits for the local bus no longer than one message may
    // (`local-timeout` for a slot, then as long for room): each send gets
    // what is left of one `local-timeout` from the start, and once one
    // found no room in that time, or none is left, the rest are dropped
    // without a try.
    let local_timeout = shared.config.local_timeout;
    let deadline = Instant::now() + local_timeout;
    let mut taken = true;
    let mut dropped = 0u64;
    for (meta, body) in wire::frames(&payload, count).flatten() {
        let left = deadline.saturating_duration_since(Instant::now());
        if taken && !left.is_zero() {
            p.set_send_timeout(left);
            // Another failure (a body too large for this bus's slots, say)
            // is this message's alone.
            taken = !hand_over(c, p, path, &meta, body).is_err_and(|e| waited_in_vain(&e));
        } else {
            dropped += 1;
        }
    }
    p.set_send_timeout(local_timeout);
    if dropped > 0 {
        let n = add(&c.dropped_local, dropped);
        if worth_logging_any(n, dropped) {
            tracing::warn!(
                "{dropped} messages of a batch from another host to {path} were dropped: the local bus did not take them within {local_timeout:?} ({n} so far)"
            );
        }
    }
}

/// Counts and logs a batch from another host that cannot be read.
fn malformed(c: &Counters, path: &str, why: &str) {
    let n = bump(&c.unbridgeable);
    if worth_logging(n) {
        tracing::warn!("a batch from another host to {path} was dropped whole ({n} so far): {why}");
    }
}

/// Sends one message from another host to the local bus; the error (counted
/// and logged) if the bus did not take it.
fn hand_over(c: &Counters, p: &mut Publisher, path: &str, meta: &Meta, body: &[u8]) -> Result<(), SendError> {
    let sent = p
        .loan(path)
        .and_then(|l| l.write_bytes(body))
        .and_then(|l| l.envelope(&meta.envelope).send().map_err(|f| f.error));
    match sent {
        Ok(_) => {
            bump(&c.received);
            Ok(())
        }
        Err(e) => {
            let n = bump(&c.dropped_local);
            if worth_logging(n) {
                tracing::warn!("a message from another host to {path} was dropped ({n} so far): {e}");
            }
            Err(e)
        }
    }
}

/// Whether a send failed because the local bus had no room in time (a
/// slot, or room in a queue): the next would wait as long.
fn waited_in_vain(e: &SendError) -> bool {
    matches!(
        e,
        SendError::Timeout { .. }
            | SendError::QueueFull { .. }
            | SendError::PartlyDelivered { .. }
            | SendError::PoolExhausted { .. }
            | SendError::QuotaExceeded { .. }
    )
}

fn enqueue(shared: &Shared, tx: &SyncSender<Query>, query: Query) {
    match tx.try_send(query) {
        Ok(()) => {}
        Err(TrySendError::Full(query) | TrySendError::Disconnected(query)) => {
            let n = bump(&shared.counters.requests_refused);
            if worth_logging(n) {
                tracing::warn!("a request from another host was refused: every request worker is busy ({n} so far)");
            }
            let e = bus_client::ReplyError::Unreachable(format!(
                "the bridge of the serving host is overloaded: its {} request workers are busy; retry, or raise request-workers there",
                shared.config.request_workers
            ));
            answer(&query, Err(&e));
        }
    }
}

fn serve(shared: &Shared, rx: &Mutex<Receiver<Query>>, requester: &bus_client::Requester) {
    while !shared.stop.load(Ordering::Relaxed) {
        let got = rx.lock().unwrap_or_else(|p| p.into_inner()).recv_timeout(Duration::from_millis(200));
        let query = match got {
            Ok(q) => q,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let Some(path) = wire::path_of(&shared.config.prefix, query.key_expr().as_str()) else {
            bump(&shared.counters.unbridgeable);
            continue; // not a path: the far side's timeout answers it
        };
        let meta = wire::decode(query.attachment().map(|a| a.to_bytes()).as_deref());
        let body = query.payload().map(|p| p.to_bytes()).unwrap_or_default();
        let timeout = shared.config.request_timeout;
        match requester.request_enveloped(&path, &body, &meta.envelope, timeout) {
            Ok(response) => {
                let meta = Meta { envelope: response.envelope(), id: response.id(), error: None };
                answer(&query, Ok((&meta, response.body_bytes().unwrap_or_default())));
            }
            Err(e) => answer(&query, Err(&e)),
        }
        bump(&shared.counters.requests_served);
    }
}

/// Replies to a query: a body with its envelope, or an error the far
/// requester receives as the same `ReplyError` variant.
fn answer(query: &Query, reply: Result<(&Meta, &[u8]), &bus_client::ReplyError>) {
    let (meta, body) = match reply {
        Ok((m, b)) => (*m, zenoh::bytes::ZBytes::from(b)),
        Err(e) => {
            let (kind, text) = wire::error_of(e);
            (Meta { error: Some(kind), ..Meta::default() }, zenoh::bytes::ZBytes::from(text))
        }
    };
    let sent = query.reply(query.key_expr().clone(), body).attachment(wire::encode(&meta)).express(true).wait(); // (priority and congestion control: the query's, RPC_PRIORITY and Block)
    if let Err(e) = sent {
        tracing::warn!("a reply to another host was lost: {e}");
    }
}
