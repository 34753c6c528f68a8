//! Serving a subsystem with a [`Router`]: `bus.serve(router).workers(n)`
//! starts n worker threads that share the queue of one group of the
//! subsystem (the default group, or `.group(name)`), each with its own
//! subscription and publisher. Handlers run concurrently; a handler
//! that panics is caught, its requester gets an error reply, and the worker
//! goes on. A request whose route matches nothing gets a typed "no route"
//! reply and is counted; a request whose handler sent no reply gets an
//! empty one, so that no requester waits for its timeout in vain.

use crate::bus::Bus;
use crate::error::{RecvError, RequestError};
use crate::handler::{kind, Context};
use crate::router::Router;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Builder for a [`Service`].
pub struct ServeBuilder {
    bus: Bus,
    router: Arc<Router>,
    workers: usize,
    group: Option<String>,
    spins: Option<u32>,
    batch: usize,
}

impl Bus {
    /// Serves `router`'s subsystem (see [`ServeBuilder::start`]).
    pub fn serve(&self, router: Router) -> ServeBuilder {
        ServeBuilder { bus: self.clone(), router: Arc::new(router), workers: 1, group: None, spins: None, batch: 1 }
    }
}

/// Counters of a running service.
#[derive(Debug, Default)]
pub struct ServiceStats {
    /// Messages handled (a handler ran and returned).
    pub handled: AtomicU64,
    /// Messages whose route matched nothing.
    pub unrouted: AtomicU64,
    /// Handlers that returned an error.
    pub failed: AtomicU64,
    /// Handlers that panicked.
    pub panicked: AtomicU64,
    /// Replies of a batching worker ([`ServeBuilder::batch`]) that could
    /// not be pushed at the end of their batch (the requester left, or its
    /// reply queue stayed full for the send timeout).
    pub replies_dropped: AtomicU64,
}

impl ServeBuilder {
    /// Worker threads sharing the queue (default 1).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }

    /// Serves consumer group `name` of the subsystem instead of its default
    /// group: the workers share that group's queue, and every other group
    /// still gets every message.
    pub fn group(mut self, name: &str) -> Self {
        self.group = Some(name.to_owned());
        self
    }

    /// How many times an idle worker polls its queue before it sleeps
    /// (default: the subscribers' [`crate::DEFAULT_SPINS`]). More gives
    /// lower latency to a service with a CPU of its own, at the cost of
    /// that CPU. At most 2^20 (some milliseconds), so that a stopped
    /// service's workers still notice within about 100 ms.
    pub fn spins(mut self, spins: u32) -> Self {
        self.spins = Some(spins.min(1 << 20));
        self
    }

    /// Lets each worker take up to `n` queued requests at once (1 to
    /// [`MAX_WORKER_BATCH`]; default 1), for services of fast handlers
    /// under heavy load, such as a pipelined requester's: a worker then
    /// runs its batch's handlers one after the other, pushes the replies of
    /// the batch to each requester with one ring operation and one
    /// wake-up when the batch is done, and only then releases the
    /// requests (a worker killed before that has them redelivered: their
    /// handlers may run twice, as for any redelivered message). The
    /// trade-offs: a handler's reply waits for the rest of its batch, and
    /// the requests of one batch do not run concurrently with each other.
    /// A worker starts each run of requests at one per batch, doubles
    /// while handlers take under 20 µs each, and drops back to one as soon
    /// as they do not.
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n.clamp(1, MAX_WORKER_BATCH);
        self
    }

    /// Subscribes every worker, then starts them. If either fails for one
    /// of them, none serves: the subscriptions made are dropped and the
    /// threads started are stopped before the error returns.
    pub fn start(self) -> Result<Service, RequestError> {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(ServiceStats::default());
        // Subscribe here, so that the service receives from the moment
        // `start` returns.
        let mut ends = Vec::with_capacity(self.workers);
        for _ in 0..self.workers {
            let mut sub = self.bus.subscription(self.router.subsystem());
            if let Some(g) = &self.group {
                sub = sub.group(g);
            }
            let sub = sub.create()?;
            if let Some(n) = self.spins {
                sub.set_spins(n);
            }
            ends.push((sub, self.bus.publisher().create()?));
        }
        let mut threads = Vec::new();
        for (w, (sub, publisher)) in ends.into_iter().enumerate() {
            let (router, halt, counts) = (self.router.clone(), stop.clone(), stats.clone());
            let batch = self.batch;
            let started = std::thread::Builder::new()
                .name(format!("shmbus-{}-{w}", self.router.subsystem()))
                .spawn(move || worker(sub, publisher, &router, &halt, &counts, batch));
            match started {
                Ok(t) => threads.push(t),
                Err(e) => {
                    // The rest of `ends` is dropped with the iterator.
                    stop.store(true, Ordering::Relaxed);
                    for t in threads {
                        let _ = t.join();
                    }
                    return Err(RequestError::Io(e));
                }
            }
        }
        Ok(Service { stop, threads, stats, forks: crate::bus::fork_count() })
    }
}

/// Handling time per request above which a batching worker goes back to
/// one request at a time: batches save ring operations worth tens of
/// nanoseconds, which a slow handler does not notice, while requests held
/// in a slow worker's batch wait for it although another worker (or
/// another process serving the group) may be idle.
const FAST_HANDLER: Duration = Duration::from_micros(20);

/// Most requests a batching worker takes at once.
pub const MAX_WORKER_BATCH: usize = 256;

fn worker(
    sub: crate::Subscriber,
    mut publisher: crate::Publisher,
    router: &Router,
    stop: &AtomicBool,
    stats: &ServiceStats,
    batch: usize,
) -> Option<RecvError> {
    let mut msgs = Vec::with_capacity(batch);
    // Starts at one request per batch, doubles while handlers are fast.
    let mut take = 1;
    while !stop.load(Ordering::Relaxed) {
        match sub.recv_batch(&mut msgs, take, Some(Duration::from_millis(100))) {
            Ok(_) => {}
            Err(RecvError::Timeout(_)) | Err(RecvError::Corrupt(_)) => continue,
            // This client holds its quota: the replies and requests in
            // flight free slots soon.
            Err(RecvError::QuotaExceeded { .. }) => {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            Err(e) => return Some(e), // the bus is gone
        }
        // More queued than this worker took: wake another sleeping worker
        // for them (each woken worker does the same, so a burst wakes as
        // many workers as it needs, not one).
        sub.wake_another_if_queued();
        let defer = batch > 1;
        // The clock only where batches are sized by it (a read is ~30 ns,
        // a tenth of a one-way message, on the VMs measured).
        let started = defer.then(std::time::Instant::now);
        for msg in &msgs {
            handle(msg, &mut publisher, router, stats, defer);
        }
        if let Some(started) = started {
            take = if started.elapsed() < FAST_HANDLER * msgs.len() as u32 { (take * 2).min(batch) } else { 1 };
            // The replies first (one ring operation and one wake-up per
            // requester), then the requests are released: a worker killed
            // before the flush has its requests redelivered, so no reply
            // is lost (one killed after it, but before the release, has
            // them redelivered too: those handlers run twice).
            let dropped = publisher.flush_deferred();
            stats.replies_dropped.fetch_add(dropped as u64, Ordering::Relaxed);
        }
        msgs.clear();
    }
    None
}

/// Runs the handler of one message, replying (deferred) as the service
/// promises: an error reply when there is no route, the handler fails or
/// panics, and an empty one when a request got none. With `defer`, the
/// replies wait for the worker's flush at the end of its batch.
fn handle(
    msg: &crate::Message<'_>,
    publisher: &mut crate::Publisher,
    router: &Router,
    stats: &ServiceStats,
    defer: bool,
) {
    let Some((handler, params)) = router.at(msg.route()) else {
        stats.unrouted.fetch_add(1, Ordering::Relaxed);
        let text = format!("no route matches {:?} in subsystem {:?}", msg.route(), router.subsystem());
        let _ = Context::new(msg, matchit::Params::new(), publisher, defer).reply_error(kind::NO_ROUTE, &text);
        return;
    };
    let mut ctx = Context::new(msg, params, publisher, defer);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(&mut ctx)));
    let _ = match outcome {
        Ok(Ok(())) => {
            stats.handled.fetch_add(1, Ordering::Relaxed);
            if ctx.is_request() && !ctx.replied() {
                match ctx.failed_reply() {
                    Some(text) => ctx.reply_error(kind::HANDLER, &text),
                    None => ctx.reply_bytes(b""),
                }
            } else {
                Ok(())
            }
        }
        Ok(Err(e)) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            ctx.reply_error(kind::HANDLER, e.message())
        }
        Err(panic) => {
            stats.panicked.fetch_add(1, Ordering::Relaxed);
            let text = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "handler panicked".into());
            ctx.reply_error(kind::PANIC, &text)
        }
    };
}

/// A running service; stops (and joins its workers) when dropped.
pub struct Service {
    stop: Arc<AtomicBool>,
    /// Each worker ends with `None` when stopped, or why the bus ended it.
    threads: Vec<std::thread::JoinHandle<Option<RecvError>>>,
    stats: Arc<ServiceStats>,
    /// `crate::bus::fork_count()` when started: in a forked child the
    /// worker threads do not exist, and must not be joined.
    forks: u64,
}

impl Service {
    /// Its counters.
    pub fn stats(&self) -> &ServiceStats {
        &self.stats
    }

    /// Stops the workers (within about 100 ms) and waits for them.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    /// Blocks until the workers end, which they do only when the bus ends
    /// them: returns why (`RecvError::BusGone` when the daemon went away),
    /// so that a program serving until then can exit with an error (and a
    /// service manager restart it). `Ok(())` only if the service had no
    /// workers. A worker that panicked outside a handler (handlers' panics
    /// are caught and answered) panics here. In a child forked after the
    /// service started, whose worker threads do not exist, it returns
    /// `Err(RecvError::Forked)` at once.
    pub fn join(mut self) -> Result<(), RecvError> {
        if self.forked() {
            return Err(RecvError::Forked);
        }
        let mut why = None;
        for t in self.threads.drain(..) {
            match t.join() {
                Ok(ended) => why = why.or(ended),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        why.map_or(Ok(()), Err)
    }

    /// Whether this process is a child forked after the service started:
    /// its worker threads do not exist there, and must not be joined.
    fn forked(&self) -> bool {
        crate::bus::fork_count() != self.forks
    }

    fn stop_inner(&mut self) {
        if self.forked() {
            std::mem::take(&mut self.threads).into_iter().for_each(std::mem::forget);
            return;
        }
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop_inner();
    }
}
