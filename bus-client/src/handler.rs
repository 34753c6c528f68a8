//! What a [`crate::Router`] handler gets: the message, its route
//! parameters, and a way to reply and to send (both inheriting the trace id
//! of the message being handled).

use crate::body::Body;
use crate::error::{BodyError, SendError};
use crate::publisher::Publisher;
use crate::subscriber::Message;
use std::fmt;

/// Error reply kinds (stored in an error reply's fingerprint field).
pub(crate) mod kind {
    /// No route matched.
    pub const NO_ROUTE: u64 = 1;
    /// The handler returned an error.
    pub const HANDLER: u64 = 2;
    /// The handler panicked.
    pub const PANIC: u64 = 3;
    /// The handler is on another host that cannot be reached (a bridge's
    /// reply).
    pub const UNREACHABLE: u64 = 4;
    /// A bridge's reply: the far host's bus took the request and no reply
    /// came in time (the text is the timeout in nanoseconds).
    pub const TIMEOUT: u64 = 5;
    /// A bridge's reply: nothing serves the subsystem on the far host (the
    /// text is the subsystem).
    pub const NO_SUBSCRIBER: u64 = 6;
}

/// An error a handler returns; a requester receives its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError(String);

impl HandlerError {
    /// An error with this message.
    pub fn new(message: impl fmt::Display) -> Self {
        HandlerError(message.to_string())
    }

    /// Its message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HandlerError {}

impl From<BodyError> for HandlerError {
    fn from(e: BodyError) -> Self {
        HandlerError::new(e)
    }
}

impl From<SendError> for HandlerError {
    fn from(e: SendError) -> Self {
        HandlerError::new(e)
    }
}

impl From<&str> for HandlerError {
    fn from(e: &str) -> Self {
        HandlerError::new(e)
    }
}

impl From<String> for HandlerError {
    fn from(e: String) -> Self {
        HandlerError(e)
    }
}

/// Whether `name` is a requester's reply queue, `_reply.<serial>.<n>`, of
/// the client whose connection serial ends in the 24 bits `serial` (message
/// ids carry them: see `Publisher::next_message_id`). A request may only
/// have its reply pushed to a reply queue of its own client, never to a
/// user subsystem or to another client's replies.
pub(crate) fn is_reply_queue_of(name: &str, serial: u64) -> bool {
    let mut parts = name.split('.');
    parts.next() == Some("_reply")
        && parts.next().and_then(|s| s.parse::<u64>().ok()).is_some_and(|s| s & 0xff_ffff == serial & 0xff_ffff)
        && parts.next().is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        && parts.next().is_none()
}

/// Whether queue `queue` is a reply queue of client `serial` with its
/// requester still subscribed. A requester that died has no subscription
/// on its reply queue any more: its reply is dropped instead of left
/// there. A forged or stale `reply_to` (no reply queue of the request's own
/// client) gets nothing pushed either.
pub(crate) fn reply_queue_open(seg: &bus_core::Segment, queue: u32, serial: u64) -> bool {
    matches!(bus_core::routing::read(seg, queue), Some(v) if v.subscribers > 0 && is_reply_queue_of(v.name(), serial))
}

/// The message being handled and what a handler can do with it.
///
/// `'a` is the borrow of the [`Message`] guard (`&'a Message<'a>`), not of
/// its subscriber: what [`Context::message`], [`Context::body`],
/// [`Context::param`] and [`Context::params`] return may outlive the
/// `Context` but never the message, whose slot is released only once the
/// handler has returned and the borrow has ended. A handler
/// ([`crate::Handler`]) is generic over `'a`, so it cannot keep any of it:
///
/// ```no_run
/// use std::sync::Mutex;
/// static KEPT: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
/// let router = bus_client::Router::new("api")?.route("x", |ctx| {
///     KEPT.lock().unwrap().push(ctx.message().body_bytes()?.to_vec()); // a copy
///     Ok(())
/// })?;
/// # Ok::<(), bus_client::RouteError>(())
/// ```
///
/// ```compile_fail,E0521
/// use std::sync::Mutex;
/// static KEPT: Mutex<Vec<&'static [u8]>> = Mutex::new(Vec::new());
/// let router = bus_client::Router::new("api")?.route("x", |ctx| {
///     KEPT.lock().unwrap().push(ctx.message().body_bytes()?); // the slot itself
///     Ok(())
/// })?;
/// # Ok::<(), bus_client::RouteError>(())
/// ```
pub struct Context<'a, 'p> {
    // One lifetime for both: `Message` is covariant, so its subscriber's
    // lifetime shrinks to this borrow of the guard, and no slot bytes are
    // reachable through the subscriber's lifetime anyway (they borrow the
    // guard, `&self`). So every `'a` handed out here ends with this borrow.
    msg: &'a Message<'a>,
    params: matchit::Params<'a, 'a>,
    publisher: &'p mut Publisher,
    replied: bool,
    /// Why a reply could not be written (none went).
    failed_reply: Option<String>,
    /// Replies wait for the worker's [`Publisher::flush_deferred`] (a
    /// worker handling a batch of requests); otherwise they go at once.
    defer: bool,
}

impl<'a, 'p> Context<'a, 'p> {
    /// With `defer`, its reply waits for the worker's
    /// [`Publisher::flush_deferred`] (a batching worker's end of batch).
    pub(crate) fn new(
        msg: &'a Message<'a>,
        params: matchit::Params<'a, 'a>,
        publisher: &'p mut Publisher,
        defer: bool,
    ) -> Self {
        Context { msg, params, publisher, replied: false, failed_reply: None, defer }
    }

    /// The message.
    pub fn message(&self) -> &'a Message<'a> {
        self.msg
    }

    /// The route parameter `name` (`users/{id}` → `param("id")`).
    pub fn param(&self, name: &str) -> Option<&'a str> {
        self.params.get(name)
    }

    /// All route parameters, in order.
    pub fn params(&self) -> impl Iterator<Item = (&'a str, &'a str)> + '_ {
        self.params.iter()
    }

    /// The body as the archived `T`, validated in place. Borrows the
    /// message (for `'a`), not the `Context`.
    pub fn body<T: Body>(&self) -> Result<&'a T::Archived, BodyError> {
        // `self.msg` is `&'a Message`, so this borrows the message for `'a`
        // (and `Message::body` ties the bytes to that borrow).
        self.msg.body::<T>()
    }

    /// The trace id the handler's replies and sends carry.
    pub fn trace_id(&self) -> u64 {
        self.msg.trace_id()
    }

    /// Whether the sender waits for a reply.
    pub fn is_request(&self) -> bool {
        self.msg.is_request()
    }

    /// Whether a reply was sent.
    pub fn replied(&self) -> bool {
        self.replied
    }

    /// Replies with `value`, serialized in place into a new slot. A message
    /// that is not a request, or whose requester is gone or does not read
    /// its replies (its reply queue stays full: the reply is dropped and
    /// counted), gets nothing. A request gets one reply: a second is
    /// refused ([`SendError::AlreadyReplied`]).
    pub fn reply<T: Body>(&mut self, value: &T) -> Result<(), SendError> {
        self.reply_with(None, |loan| loan.write(value))
    }

    /// Replies with raw bytes.
    pub fn reply_bytes(&mut self, body: &[u8]) -> Result<(), SendError> {
        self.reply_with(None, |loan| loan.write_bytes(body))
    }

    /// Sends an error reply of `kind` with `text`.
    pub(crate) fn reply_error(&mut self, kind: u64, text: &str) -> Result<(), SendError> {
        let text = clip(text, self.publisher.bus().body_capacity(self.msg.path().len()));
        self.reply_with(Some(kind), |loan| loan.write_bytes(text.as_bytes()))
    }

    fn reply_with(
        &mut self,
        error: Option<u64>,
        write: impl for<'l> FnOnce(crate::LoanUninit<'l>) -> Result<crate::Loan<'l>, SendError>,
    ) -> Result<(), SendError> {
        let Some(queue) = self.msg.reply_queue() else { return Ok(()) };
        if self.replied {
            return Err(SendError::AlreadyReplied);
        }
        // A requester that died has no subscription on its reply queue
        // any more: drop the reply instead of leaving it there.
        let sender_serial = self.msg.id() >> 40;
        if !self.publisher.reply_queue_open(queue, sender_serial) {
            self.replied = true;
            return Ok(());
        }
        // A reply that cannot be written (a body too large for a slot, say)
        // leaves the request unanswered: the handler's error, its panic, or
        // that failure is what the service answers with.
        let (corr, trace, path) = (self.msg.correlation_id(), self.msg.trace_id(), self.msg.path());
        let written = self.publisher.loan_direct(queue, sender_serial, path).and_then(write);
        let loan = match written {
            Ok(loan) => loan.reply(corr, error).trace_id(trace),
            Err(e) => {
                self.failed_reply = Some(e.to_string());
                return Err(e);
            }
        };
        // From here the reply is on its way, whatever `send` says (a send
        // that fails may have pushed it all the same): never a second one.
        self.replied = true;
        bus_core::crash_point!(ReplyBeforePush);
        if self.defer {
            loan.defer(sender_serial);
            return Ok(());
        }
        loan.send().map(|_| ()).or_else(|f| dropped_if_unread(f.error))
    }

    /// The error text the service answers with when the handler's reply
    /// could not be written and the handler returned `Ok` all the same
    /// (instead of an empty reply).
    pub(crate) fn failed_reply(&self) -> Option<String> {
        self.failed_reply.as_deref().map(unsent_reply)
    }

    /// Sends `value` to `path`, carrying this message's trace id.
    pub fn send<T: Body>(&mut self, path: &str, value: &T) -> Result<u64, SendError> {
        let trace = self.trace_id();
        self.publisher.loan(path)?.write(value)?.trace_id(trace).send().map_err(|f| f.error)
    }

    /// Sends raw bytes to `path`, carrying this message's trace id.
    pub fn send_bytes(&mut self, path: &str, body: &[u8]) -> Result<u64, SendError> {
        let trace = self.trace_id();
        self.publisher.loan(path)?.write_bytes(body)?.trace_id(trace).send().map_err(|f| f.error)
    }
}

/// A reply whose requester does not read its reply queue (full, and
/// nothing taken for a while: see `Publisher::wait_for_reply_room`) is
/// dropped, as for a requester that is gone, and counted as a failure of
/// that queue (`shmbus status`); other send errors stand.
pub(crate) fn dropped_if_unread(e: SendError) -> Result<(), SendError> {
    match e {
        SendError::QueueFull { .. } => Ok(()),
        e => Err(e),
    }
}

/// The error reply for a request whose handler returned `Ok` after its
/// own reply failed (`why`): the sync and the asynchronous services alike.
pub(crate) fn unsent_reply(why: &str) -> String {
    format!("its reply could not be sent: {why}")
}

/// The longest start of `text` that fits in `room` bytes and ends on a
/// character boundary: an error text cut to fit a slot stays valid UTF-8.
pub(crate) fn clip(text: &str, room: usize) -> &str {
    let mut end = text.len().min(room);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::{clip, is_reply_queue_of};

    #[test]
    fn a_clipped_text_ends_on_a_character_boundary() {
        assert_eq!(clip("héllo", 2), "h"); // 'é' is bytes 1..3
        assert_eq!(clip("héllo", 3), "hé");
        assert_eq!(clip("héllo", 100), "héllo");
        assert_eq!(clip("€", 2), "");
    }

    #[test]
    fn only_a_reply_queue_of_the_senders_own_client_is_accepted() {
        assert!(is_reply_queue_of("_reply.7.0", 7));
        assert!(is_reply_queue_of("_reply.16777223.12", 7)); // the id keeps 24 bits
        assert!(!is_reply_queue_of("_reply.8.0", 7));
        assert!(!is_reply_queue_of("api", 7));
        assert!(!is_reply_queue_of("_reply.7", 7));
        assert!(!is_reply_queue_of("_reply.7.x", 7));
        assert!(!is_reply_queue_of("_reply.7.0.1", 7));
    }
}
