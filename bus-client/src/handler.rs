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

/// The message being handled and what a handler can do with it.
pub struct Context<'a, 'p> {
    msg: &'a Message<'a>,
    params: matchit::Params<'a, 'a>,
    publisher: &'p mut Publisher,
    replied: bool,
}

impl<'a, 'p> Context<'a, 'p> {
    pub(crate) fn new(msg: &'a Message<'a>, params: matchit::Params<'a, 'a>, publisher: &'p mut Publisher) -> Self {
        Context { msg, params, publisher, replied: false }
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

    /// The body as the archived `T`, validated in place.
    pub fn body<T: Body>(&self) -> Result<&'a T::Archived, BodyError> {
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
    /// that is not a request, or whose requester is gone, gets nothing.
    pub fn reply<T: Body>(&mut self, value: &T) -> Result<(), SendError> {
        self.reply_with(None, |loan| loan.write(value))
    }

    /// Replies with raw bytes.
    pub fn reply_bytes(&mut self, body: &[u8]) -> Result<(), SendError> {
        self.reply_with(None, |loan| loan.write_bytes(body))
    }

    /// Sends an error reply of `kind` with `text`.
    pub(crate) fn reply_error(&mut self, kind: u64, text: &str) -> Result<(), SendError> {
        let text = &text.as_bytes()[..text.len().min(self.publisher.bus().body_capacity(self.msg.path().len()))];
        self.reply_with(Some(kind), |loan| loan.write_bytes(text))
    }

    fn reply_with(
        &mut self,
        error: Option<u64>,
        write: impl for<'l> FnOnce(crate::LoanUninit<'l>) -> Result<crate::Loan<'l>, SendError>,
    ) -> Result<(), SendError> {
        let Some(queue) = self.msg.reply_queue() else { return Ok(()) };
        if self.replied {
            return Ok(());
        }
        self.replied = true;
        // A requester that died has no subscription on its reply queue
        // any more: drop the reply instead of leaving it there.
        let seg = &self.publisher.bus().inner.seg;
        if bus_core::routing::read(seg, queue).is_none_or(|v| v.subscribers == 0) {
            return Ok(());
        }
        let (corr, trace, path) = (self.msg.correlation_id(), self.msg.trace_id(), self.msg.path());
        let loan = self.publisher.loan_direct(queue, path)?;
        let loan = write(loan)?.reply(corr, error).trace_id(trace);
        loan.send().map(|_| ()).map_err(|f| f.error)
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
