//! [`AsyncRouter`] and [`Bus::serve_async`]: request handlers that are
//! `async fn`s, served by a task on the caller's tokio runtime.
//!
//! One receiving task takes the subsystem's messages ([`AsyncSubscriber`])
//! and spawns a task per message that runs its handler, up to a limit of
//! handlers in flight. A handler gets the message as a [`Request`]: owned,
//! `Send + 'static`, still zero-copy (it holds the message's slot and reads
//! the body in place). Its replies and sends go through the service's
//! publisher (shared, under a lock held while a reply or a send is
//! written and pushed). Like any publisher's, a reply or send waits for a
//! free slot or for room in a full queue (up to the bus's send timeout),
//! on the runtime's thread: size the pool and the queues so that this is
//! rare.
//! Like the blocking service: a request whose handler returns without a
//! reply gets an empty one, a handler error or panic becomes an error reply,
//! and a route that matches nothing a "no route" reply.

use super::subscriber::AsyncSubscriber;
use crate::body::{fingerprint, Body};
use crate::bus::Bus;
use crate::error::{BodyError, RecvError, RequestError, SendError};
use crate::handler::{kind, reply_queue_open, unsent_reply, HandlerError};
use crate::publisher::Publisher;
use crate::router::RouteError;
use crate::service::ServiceStats;
use bus_core::SlotIndex;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// A boxed handler future.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send + 'static>>;

/// An asynchronous handler (see [`AsyncRouter::route`]).
pub type AsyncHandler = Box<dyn Fn(Request) -> HandlerFuture + Send + Sync + 'static>;

/// The routes of one subsystem, with `async` handlers.
pub struct AsyncRouter {
    subsystem: String,
    tree: matchit::Router<usize>,
    handlers: Vec<(String, AsyncHandler)>,
}

impl std::fmt::Debug for AsyncRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let routes: Vec<&str> = self.handlers.iter().map(|(p, _)| p.as_str()).collect();
        f.debug_struct("AsyncRouter").field("subsystem", &self.subsystem).field("routes", &routes).finish()
    }
}

impl AsyncRouter {
    /// An empty router for `subsystem`.
    pub fn new(subsystem: &str) -> Result<AsyncRouter, RouteError> {
        bus_core::path::validate_subsystem(subsystem).map_err(RouteError::InvalidSubsystem)?;
        Ok(AsyncRouter { subsystem: subsystem.to_owned(), tree: matchit::Router::new(), handlers: Vec::new() })
    }

    /// Registers `handler` for `pattern` (the patterns of
    /// [`crate::Router::route`]):
    ///
    /// ```no_run
    /// # fn f() -> Result<bus_client::AsyncRouter, bus_client::RouteError> {
    /// bus_client::AsyncRouter::new("users")?.route("by-id/{id}", |mut req| async move {
    ///     let id: u64 = req.param("id").unwrap_or("").parse().map_err(|_| "id must be a number")?;
    ///     tokio::time::sleep(std::time::Duration::from_millis(1)).await; // a database, say
    ///     req.reply_bytes(format!("user {id}").as_bytes())?;
    ///     Ok(())
    /// })
    /// # }
    /// ```
    pub fn route<F, Fut>(mut self, pattern: &str, handler: F) -> Result<AsyncRouter, RouteError>
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        crate::router::insert(&mut self.tree, pattern, self.handlers.len())?;
        self.handlers.push((pattern.to_owned(), Box::new(move |req| Box::pin(handler(req)) as HandlerFuture)));
        Ok(self)
    }

    /// The subsystem.
    pub fn subsystem(&self) -> &str {
        &self.subsystem
    }
}

/// Builds an asynchronous service (see [`Bus::serve_async`]).
#[must_use = "call .start() to serve"]
pub struct AsyncServeBuilder {
    bus: Bus,
    router: AsyncRouter,
    group: Option<String>,
    max_in_flight: usize,
}

impl std::fmt::Debug for AsyncServeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncServeBuilder").field("router", &self.router).field("group", &self.group).finish()
    }
}

impl Bus {
    /// Serves `router` from tokio tasks: see [`AsyncServeBuilder::start`].
    pub fn serve_async(&self, router: AsyncRouter) -> AsyncServeBuilder {
        AsyncServeBuilder { bus: self.clone(), router, group: None, max_in_flight: 1024 }
    }
}

impl AsyncServeBuilder {
    /// Receive as a member of this group of the subsystem (default: its
    /// default group), sharing its requests with the group's other members.
    pub fn group(mut self, name: &str) -> Self {
        self.group = Some(name.to_owned());
        self
    }

    /// Most handlers running at once (default 1024). While that many run,
    /// no further request is taken: they wait in the queue (or go to other
    /// members of the group), and each holds no slot meanwhile.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// Subscribes and spawns the receiving task on the current tokio
    /// runtime. Must be called inside one (else an error says so).
    pub fn start(self) -> Result<AsyncService, RequestError> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(RequestError::Io(std::io::Error::other(RecvError::NoRuntime)));
        };
        // Where the receiving task could never wait (no io_uring, or a
        // runtime without IO), say so now rather than have it end at its
        // first wait.
        super::waiter::FutexWaiter::new(self.bus.inner.link.gone_event())
            .map_err(|e| RequestError::Io(std::io::Error::other(e)))?;
        let mut sub = self.bus.subscription(self.router.subsystem());
        if let Some(g) = &self.group {
            sub = sub.group(g);
        }
        let sub = sub.create()?;
        let group_slot = sub.group_slot();
        let shared = Arc::new(Shared {
            publisher: Mutex::new(self.bus.publisher().create()?),
            release_port: Mutex::new(self.bus.inner.claim_port()?),
            bus: self.bus,
            router: self.router,
            stats: ServiceStats::default(),
            group_slot,
        });
        let limit = Arc::new(tokio::sync::Semaphore::new(self.max_in_flight));
        let task = runtime.spawn(receive(sub.into_async(), shared.clone(), limit));
        Ok(AsyncService { task: Some(task), shared })
    }
}

/// What the receiving task and every handler share.
struct Shared {
    bus: Bus,
    router: AsyncRouter,
    publisher: Mutex<Publisher>,
    /// The port through which handlers release their requests' slots, from
    /// whatever thread they end on (one at a time: the lock).
    release_port: Mutex<u32>,
    stats: ServiceStats,
    /// The service's group slot (whose holder words its requests use).
    group_slot: u32,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let port = *self.release_port.get_mut().unwrap_or_else(|p| p.into_inner());
        self.bus.inner.release_port(port);
    }
}

/// The receiving task: takes a request, spawns its handler, and so on,
/// until the bus is gone (or the service is stopped: the task is aborted
/// while it waits, which loses nothing, see [`AsyncSubscriber::recv`]).
async fn receive(
    mut sub: AsyncSubscriber,
    shared: Arc<Shared>,
    limit: Arc<tokio::sync::Semaphore>,
) -> Option<RecvError> {
    loop {
        let Ok(permit) = limit.clone().acquire_owned().await else { return None };
        let msg = match sub.recv().await {
            Ok(m) => m,
            Err(RecvError::Corrupt(_)) => continue,
            // The handlers in flight hold this client's quota: they end
            // soon. A wait the kernel refused now (out of memory, say) is
            // tried again.
            Err(RecvError::QuotaExceeded { .. }) | Err(RecvError::AsyncWait { .. }) => {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                continue;
            }
            Err(e) => return Some(e), // the bus is gone
        };
        let Some((handler, params)) = shared.router.tree.at(msg.route()).ok().map(|m| (*m.value, m.params)) else {
            shared.stats.unrouted.fetch_add(1, Ordering::Relaxed);
            let text = format!("no route matches {:?} in subsystem {:?}", msg.route(), shared.router.subsystem());
            let reply = ReplyTo::of(&msg);
            drop(msg); // released through the subscription's own port
            let _ = reply.send(&shared, Some(kind::NO_ROUTE), &text);
            continue;
        };
        let params = params.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        let reply = Arc::new(ReplyTo::of(&msg));
        let request =
            Request { shared: shared.clone(), slot: msg.into_inner().into_slot(), params, reply: reply.clone() };
        // The handler's call itself may panic too (before it returns its
        // future): caught like a panic while it runs.
        let made =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (shared.router.handlers[handler].1)(request)));
        let shared = shared.clone();
        // Made before the spawn: a task dropped before it first runs
        // answers too.
        let unfinished = Unfinished { reply: reply.clone(), shared: shared.clone(), armed: true };
        tokio::spawn(async move {
            let mut unfinished = unfinished; // the whole guard, not only its field
            let outcome = match made {
                Ok(future) => CatchUnwind(future).await,
                Err(panic) => Err(panic_text(&*panic)),
            };
            let _ = match outcome {
                Ok(Ok(())) => {
                    shared.stats.handled.fetch_add(1, Ordering::Relaxed);
                    // A request the handler did not answer gets an empty
                    // reply (sent only if none went yet), or, if its reply
                    // could not be written, why.
                    match reply.failed_reply() {
                        Some(e) => reply.send(&shared, Some(kind::HANDLER), &unsent_reply(&e)),
                        None => reply.send(&shared, None, ""),
                    }
                }
                Ok(Err(e)) => {
                    shared.stats.failed.fetch_add(1, Ordering::Relaxed);
                    reply.send(&shared, Some(kind::HANDLER), e.message())
                }
                Err(text) => {
                    shared.stats.panicked.fetch_add(1, Ordering::Relaxed);
                    reply.send(&shared, Some(kind::PANIC), &text)
                }
            };
            unfinished.armed = false;
            drop(permit);
        });
    }
}

/// Answers a request whose handler's task is dropped before it finished
/// (its runtime shut down, say): an error reply at once, instead of a
/// requester waiting out its timeout for a reply that cannot come. Sent
/// only if no reply went; disarmed when the task finishes.
struct Unfinished {
    reply: Arc<ReplyTo>,
    shared: Arc<Shared>,
    armed: bool,
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if self.armed {
            let why = "the service stopped before its handler finished (its runtime shut down): retry";
            let _ = self.reply.send(&self.shared, Some(kind::HANDLER), why);
        }
    }
}

/// Polls a handler's future, turning a panic into its message.
struct CatchUnwind(HandlerFuture);

impl Future for CatchUnwind {
    type Output = Result<Result<(), HandlerError>, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = &mut self.0;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(r)) => Poll::Ready(Ok(r)),
            Err(panic) => Poll::Ready(Err(panic_text(&*panic))),
        }
    }
}

/// A panic's message, as an error reply carries it.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "handler panicked".into())
}

/// Where a request's reply goes, copied out of its header when it was
/// received (so that the service can still reply after the handler
/// dropped the [`Request`]), and whether a reply went.
#[derive(Debug)]
struct ReplyTo {
    /// The reply queue (`None`: not a request).
    queue: Option<u32>,
    /// The requester's connection serial (24 bits, from the message id).
    serial: u64,
    correlation: u64,
    trace: u64,
    path: String,
    replied: std::sync::atomic::AtomicBool,
    /// Why a reply could not be written (none went).
    failed: Mutex<Option<String>>,
}

impl ReplyTo {
    fn of(msg: &crate::Message<'_>) -> ReplyTo {
        ReplyTo {
            queue: msg.reply_queue(),
            serial: msg.id() >> 40,
            correlation: msg.correlation_id(),
            trace: msg.trace_id(),
            path: msg.path().to_owned(),
            replied: std::sync::atomic::AtomicBool::new(false),
            failed: Mutex::new(None),
        }
    }

    /// Sends the reply (an error reply of `error` kind, if given) with the
    /// body `write` puts in, unless this is no request or a reply went
    /// already. A requester that is gone (no subscription on its reply
    /// queue) gets nothing.
    fn send_with(
        &self,
        shared: &Shared,
        error: Option<u64>,
        write: impl for<'l> FnOnce(crate::LoanUninit<'l>) -> Result<crate::Loan<'l>, SendError>,
    ) -> Result<(), SendError> {
        let Some(queue) = self.queue else { return Ok(()) };
        // Under the publisher's lock, so that a handler's reply and the
        // service's fallback after it never both go. A reply that could not
        // be written leaves room for the error reply.
        let mut p = shared.publisher.lock().unwrap_or_else(|p| p.into_inner());
        if self.replied.load(Ordering::Relaxed) {
            return Err(SendError::AlreadyReplied);
        }
        if !reply_queue_open(&shared.bus.inner.seg, queue, self.serial) {
            // Gone: nothing to answer, and nothing more to send.
            self.replied.store(true, Ordering::Relaxed);
            return Ok(());
        }
        let loan = match p.loan_direct(queue, self.serial, &self.path).and_then(write) {
            Ok(loan) => loan,
            Err(e) => {
                *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                return Err(e);
            }
        };
        // On its way, whatever `send` says (a failed send may have pushed
        // it all the same): never a second reply.
        self.replied.store(true, Ordering::Relaxed);
        let sent = loan.reply(self.correlation, error).trace_id(self.trace).send();
        sent.map(|_| ()).or_else(|f| crate::handler::dropped_if_unread(f.error))
    }

    /// Why the handler's reply could not be written, if it could not.
    /// (The text of its error reply is [`unsent_reply`]'s.)
    fn failed_reply(&self) -> Option<String> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A text reply, cut to what a slot holds at a character boundary
    /// (for error texts).
    fn send(&self, shared: &Shared, error: Option<u64>, text: &str) -> Result<(), SendError> {
        let text = crate::handler::clip(text, shared.bus.body_capacity(self.path.len()));
        self.send_with(shared, error, |loan| loan.write_bytes(text.as_bytes()))
    }
}

/// A message being handled by an [`AsyncRouter`] handler: owned (`Send +
/// 'static`, so it may be held across `.await`s), holding the message's
/// slot until dropped, the body read in place.
pub struct Request {
    shared: Arc<Shared>,
    slot: SlotIndex,
    params: Vec<(String, String)>,
    reply: Arc<ReplyTo>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request").field("path", &self.reply.path).field("params", &self.params).finish_non_exhaustive()
    }
}

impl Request {
    fn slot(&self) -> bus_core::slot_pool::SlotRef<'_> {
        self.shared.bus.inner.seg.slot(self.slot)
    }

    /// The whole path, `subsystem://route` (as received: a copy).
    pub fn path(&self) -> &str {
        &self.reply.path
    }

    /// The route (after `://`).
    pub fn route(&self) -> &str {
        self.reply.path.split_once("://").map_or("", |(_, r)| r)
    }

    /// The route parameter `name` (`users/{id}` → `param("id")`).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// All route parameters, in order.
    pub fn params(&self) -> impl Iterator<Item = (&str, &str)> {
        self.params.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The trace id its replies and sends carry.
    pub fn trace_id(&self) -> u64 {
        self.reply.trace
    }

    /// Whether the sender waits for a reply.
    pub fn is_request(&self) -> bool {
        self.reply.queue.is_some()
    }

    /// Whether it was put back into the queue after a receiver died with it.
    pub fn is_redelivered(&self) -> bool {
        let h = self.slot().header();
        h.redelivered.load(Ordering::Relaxed) & (1 << self.shared.group_slot) != 0
            || h.flags.load(Ordering::Relaxed) & bus_core::layout::FLAG_REDELIVERED != 0
    }

    /// The body's bytes, in place.
    pub fn body_bytes(&self) -> Result<&[u8], BodyError> {
        // SAFETY: this client holds the slot (dequeued by the service's
        // subscription and handed to this request alone), and releases it
        // only in `Drop`, after every borrow of `self` has ended.
        Ok(unsafe { self.slot().body() }?)
    }

    /// The body as the archived `T`, validated in place.
    pub fn body<T: Body>(&self) -> Result<&T::Archived, BodyError> {
        let expected = std::any::type_name::<T>();
        let slot = self.slot();
        if slot.is_raw() {
            return Err(BodyError::Raw { expected });
        }
        let found = slot.header().fingerprint.load(Ordering::Relaxed);
        let expected_fp = fingerprint::<T>();
        if found != expected_fp {
            return Err(BodyError::WrongType { expected, expected_fp, found });
        }
        rkyv::access::<T::Archived, rkyv::rancor::Error>(self.body_bytes()?)
            .map_err(|e| BodyError::Invalid { expected, detail: e.to_string() })
    }

    /// Replies with `value`, serialized in place into a new slot. A message
    /// that is not a request, or whose requester is gone, gets nothing; a
    /// second reply is refused ([`SendError::AlreadyReplied`]).
    pub fn reply<T: Body>(&mut self, value: &T) -> Result<(), SendError> {
        self.reply.send_with(&self.shared, None, |loan| loan.write(value))
    }

    /// Replies with raw bytes.
    pub fn reply_bytes(&mut self, body: &[u8]) -> Result<(), SendError> {
        // Whole or not at all: a body too large for a slot is an error
        // (`BodyTooLarge`), never cut (only the service's error texts are).
        self.reply.send_with(&self.shared, None, |loan| loan.write_bytes(body))
    }

    /// Sends `value` to `path`, carrying this message's trace id.
    pub fn send<T: Body>(&self, path: &str, value: &T) -> Result<u64, SendError> {
        let mut p = self.shared.publisher.lock().unwrap_or_else(|p| p.into_inner());
        let sent = p.loan(path)?.write(value)?.trace_id(self.reply.trace).send().map_err(|f| f.error);
        sent
    }

    /// Sends raw bytes to `path`, carrying this message's trace id.
    pub fn send_bytes(&self, path: &str, body: &[u8]) -> Result<u64, SendError> {
        let mut p = self.shared.publisher.lock().unwrap_or_else(|p| p.into_inner());
        let sent = p.loan(path)?.write_bytes(body)?.trace_id(self.reply.trace).send().map_err(|f| f.error);
        sent
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        let inner = &self.shared.bus.inner;
        if inner.detached() {
            return; // the parent's slot, or one the daemon took back
        }
        let port = self.shared.release_port.lock().unwrap_or_else(|p| p.into_inner());
        bus_core::slot_pool::Port::new(&inner.seg, inner.client, *port)
            .expect("port index in range")
            .release(self.slot, self.shared.group_slot);
        inner.gave(1);
    }
}

/// A running asynchronous service. Dropping it (or [`AsyncService::stop`])
/// stops taking requests; handlers already running finish.
#[derive(Debug)]
pub struct AsyncService {
    /// Ends with why the bus ended it (`None` if it stopped otherwise).
    task: Option<tokio::task::JoinHandle<Option<RecvError>>>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("router", &self.router).finish_non_exhaustive()
    }
}

impl AsyncService {
    /// Its counters.
    pub fn stats(&self) -> &ServiceStats {
        &self.shared.stats
    }

    /// Stops taking requests: the receiving task is aborted (at its next
    /// `.await`, so a request it took just before is still handled);
    /// handlers already running finish.
    pub fn stop(mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// Waits until the receiving task ends, which it does only when the
    /// bus ends it: returns why (`RecvError::BusGone` when the daemon went
    /// away), as [`crate::Service::join`] does. `Ok(())` if the task ended
    /// otherwise (its runtime shut down).
    pub async fn join(mut self) -> Result<(), RecvError> {
        let Some(t) = self.task.take() else { return Ok(()) };
        match t.await {
            Ok(Some(e)) => Err(e),
            Ok(None) => Ok(()),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Ok(()), // cancelled with its runtime
        }
    }
}

impl Drop for AsyncService {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}
