//! [`Requester::request_async`]: a request whose reply is awaited.
//!
//! Asynchronous requests of a requester share one reply queue of their own
//! (set up by the first), apart from the blocking requests' queue, so that
//! neither kind reads the other's replies. Whichever task polls first reads
//! every reply there is, keeps the others' in their entries and wakes their
//! tasks; the queue's doorbell is waited on through one io_uring wait (see
//! `super::waiter`), registered with the last task that polled. When a task
//! leaves (its reply taken, or its future dropped) while others still
//! wait, it wakes one of them, which registers itself in turn: the wait
//! never stays without a task to wake.

use super::waiter::Park;
use crate::body::Body;
use crate::error::{RecvError, SendError};
use crate::request::{Owner, ReplyError, Requester, Response};
use crate::subscriber::Subscriber;
use bus_core::SlotIndex;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// The asynchronous reply queue of one [`Requester`].
pub(crate) struct AsyncReplies {
    queue: u32,
    state: Mutex<State>,
}

struct State {
    // Field order: the waiter before the subscription.
    park: Park,
    sub: Subscriber,
    /// Requests in flight: the task to wake, and the reply once read.
    pending: HashMap<u64, Entry>,
}

/// What draining the queue needs of [`State`] (so that a sleeper may
/// borrow the subscription meanwhile).
struct StateView<'s> {
    sub: &'s Subscriber,
    pending: &'s mut HashMap<u64, Entry>,
}

impl StateView<'_> {
    /// Reads every queued reply: ours is returned, the others' are kept
    /// for their tasks (woken), late ones released.
    fn drain(&mut self, corr: u64, requester: &Requester) -> Result<Option<SlotIndex>, RecvError> {
        let mut mine = None;
        loop {
            let i = match self.sub.try_take() {
                Ok(Some(i)) => i,
                Ok(None) => break,
                // Ours, if read already, is returned; the error shows at
                // the next turn.
                Err(_) if mine.is_some() => break,
                Err(e) => return Err(e),
            };
            // A corrupt reply was released by `wrap`; skip it.
            let Ok(m) = self.sub.wrap(i) else { continue };
            let c = m.correlation_id();
            let slot = m.into_slot();
            match self.pending.get_mut(&c) {
                // A second reply to ours (a redelivered request answered
                // twice): released.
                _ if c == corr && mine.is_some() => requester.release(slot),
                _ if c == corr => mine = Some(slot),
                Some(e) if e.reply.is_none() => {
                    e.reply = Some(slot);
                    if let Some(w) = e.waker.take() {
                        w.wake();
                    }
                }
                // A late reply (its request timed out or was dropped), or
                // a duplicate: nobody takes it.
                _ => requester.release(slot),
            }
        }
        Ok(mine)
    }
}

impl Drop for State {
    fn drop(&mut self) {
        // A request future forgotten (`mem::forget`) while parked leaves
        // the wait armed: withdrawn with the requester.
        self.park.disarm(&self.sub);
    }
}

#[derive(Default)]
struct Entry {
    waker: Option<Waker>,
    reply: Option<SlotIndex>,
}

impl AsyncReplies {
    fn new(requester: &Requester) -> Result<AsyncReplies, ReplyError> {
        let bus = &requester.bus;
        let sub = bus.subscribe_unchecked(&bus.reply_queue_name()).map_err(crate::request::setup_failed)?;
        Ok(AsyncReplies {
            queue: sub.queue(),
            state: Mutex::new(State { park: Park::default(), sub, pending: HashMap::new() }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    fn drain(&mut self, corr: u64, requester: &Requester) -> Result<Option<SlotIndex>, RecvError> {
        StateView { sub: &self.sub, pending: &mut self.pending }.drain(corr, requester)
    }

    /// Wakes one other waiting task, so that it registers itself with the
    /// wait in our place.
    fn hand_over(&mut self) {
        if let Some(w) = self.pending.values_mut().find_map(|e| e.waker.take()) {
            w.wake();
        }
    }

    /// Withdraws the wait when nobody waits any more.
    fn disarm_if_idle(&mut self) {
        if self.pending.is_empty() {
            self.park.disarm(&self.sub);
        }
    }

    /// Ends the wait of `corr` with `got`.
    fn finish(&mut self, corr: u64, got: Result<SlotIndex, RecvError>) -> Poll<Result<SlotIndex, RecvError>> {
        self.pending.remove(&corr);
        self.hand_over();
        self.disarm_if_idle();
        Poll::Ready(got)
    }

    /// The reply to `corr`, or the task parked until it may be there.
    fn poll_reply(
        &mut self,
        corr: u64,
        requester: &Requester,
        cx: &mut Context<'_>,
    ) -> Poll<Result<SlotIndex, RecvError>> {
        loop {
            // A completed wait first (no system call), so that a reply that
            // woke us is taken without cancelling the wait it ended.
            if let Err(e) = self.park.reap(&self.sub) {
                return self.finish(corr, Err(e));
            }
            if let Some(slot) = self.pending.get_mut(&corr).and_then(|e| e.reply.take()) {
                return self.finish(corr, Ok(slot));
            }
            match self.drain(corr, requester) {
                Ok(None) => {}
                got => return self.finish(corr, got.map(|s| s.expect("Some: matched above"))),
            }
            if let Some(e) = self.pending.get_mut(&corr) {
                e.waker = Some(cx.waker().clone());
            }
            self.park.refresh(&self.sub);
            if !self.park.armed() {
                // The protocol's re-check is the drain's last, empty dequeue.
                let mut view = StateView { sub: &self.sub, pending: &mut self.pending };
                match self.park.arm(&self.sub, || view.drain(corr, requester).transpose()) {
                    Ok(None) => {}
                    Ok(Some(got)) => return self.finish(corr, got),
                    Err(e) => return self.finish(corr, Err(e)),
                }
            }
            // Then look again (the loop reaps the completion).
            if let Err(e) = std::task::ready!(self.park.poll_ready(&self.sub, cx)) {
                return self.finish(corr, Err(e));
            }
        }
    }
}

impl Requester {
    /// Sends `body` to `path` as a request, at once, and returns a future
    /// that resolves to the reply, or to [`ReplyError::Timeout`] after
    /// `timeout` (a tokio timer: the runtime needs its time driver, as
    /// `#[tokio::main]` or `Builder::enable_all` give).
    ///
    /// Many requests may be in flight at once, from any number of tasks.
    /// Dropping the future abandons the request: a reply that comes later
    /// is released. The first asynchronous request of a requester sets up
    /// its asynchronous reply queue (one round trip to the daemon).
    ///
    /// Sending does not wait: with no free slot, or no room in the queue,
    /// the request fails at once (`ReplyError::Send(SendError::Timeout {
    /// .. })`, zero wait) rather than block the runtime's thread.
    pub fn request_async<T: Body>(&self, path: &str, body: &T, timeout: Duration) -> AsyncReply<'_> {
        self.submit_async(timeout, |p, queue, corr| {
            p.loan(path)?.write(body)?.request(queue, corr).send().map_err(|f| f.error)
        })
    }

    /// [`Requester::request_async`] with a raw-byte body.
    pub fn request_bytes_async(&self, path: &str, body: &[u8], timeout: Duration) -> AsyncReply<'_> {
        self.submit_async(timeout, |p, queue, corr| {
            p.loan(path)?.write_bytes(body)?.request(queue, corr).send().map_err(|f| f.error)
        })
    }

    fn async_replies(&self) -> Result<&AsyncReplies, ReplyError> {
        if let Some(r) = self.replies_async.get() {
            return Ok(r);
        }
        let made = AsyncReplies::new(self)?;
        // Two tasks may race here: the loser's queue is unsubscribed.
        let _ = self.replies_async.set(made);
        Ok(self.replies_async.get().expect("set above"))
    }

    fn submit_async(
        &self,
        timeout: Duration,
        send: impl FnOnce(&mut crate::Publisher, u32, u64) -> Result<u64, SendError>,
    ) -> AsyncReply<'_> {
        let deadline = tokio::time::Instant::from_std(crate::bus::deadline_in(timeout));
        let failed =
            |error| AsyncReply { requester: self, corr: None, error: Some(error), timeout, deadline, sleep: None };
        let replies = match self.async_replies() {
            Ok(r) => r,
            Err(e) => return failed(e),
        };
        let corr = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        replies.lock().pending.insert(corr, Entry::default());
        let sent = {
            let mut publisher = self.publisher.lock().unwrap_or_else(|p| p.into_inner());
            publisher.set_send_timeout(Duration::ZERO);
            let sent = send(&mut publisher, replies.queue, corr);
            publisher.set_send_timeout(self.bus.inner.send_timeout);
            sent
        };
        if let Err(e) = sent {
            replies.lock().pending.remove(&corr);
            return failed(match e {
                SendError::BusGone => ReplyError::BusGone,
                e => ReplyError::Send(e),
            });
        }
        AsyncReply { requester: self, corr: Some(corr), error: None, timeout, deadline, sleep: None }
    }
}

/// The future of [`Requester::request_async`]: the reply, read in place.
#[must_use = "the reply is read only when this is awaited"]
pub struct AsyncReply<'r> {
    requester: &'r Requester,
    /// The request in flight (`None` once done, or if it was not sent).
    corr: Option<u64>,
    /// Why it was not sent.
    error: Option<ReplyError>,
    timeout: Duration,
    deadline: tokio::time::Instant,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl std::fmt::Debug for AsyncReply<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncReply").field("corr", &self.corr).field("error", &self.error).finish_non_exhaustive()
    }
}

impl<'r> Future for AsyncReply<'r> {
    type Output = Result<Response<'r>, ReplyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(e) = this.error.take() {
            return Poll::Ready(Err(e));
        }
        let Some(corr) = this.corr else {
            return Poll::Ready(Err(ReplyError::NotInFlight));
        };
        let requester = this.requester;
        let replies = requester.replies_async.get().expect("set up when the request was sent");
        let got = replies.lock().poll_reply(corr, requester, cx);
        match got {
            Poll::Ready(got) => {
                this.corr = None;
                Poll::Ready(match got {
                    // SAFETY: `poll_reply` took this slot off our reply
                    // queue (or out of our entry) and handed it to us alone;
                    // this client holds it.
                    Ok(slot) => unsafe { Response::of(Owner::Requester(requester), slot, &requester.bus.inner.seg) },
                    Err(RecvError::BusGone) => Err(ReplyError::BusGone),
                    Err(RecvError::Forked) => Err(ReplyError::Send(SendError::Forked)),
                    Err(e) => Err(ReplyError::Wait(e)),
                })
            }
            Poll::Pending => {
                let deadline = this.deadline;
                let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.as_mut().poll(cx).is_ready() {
                    this.withdraw();
                    return Poll::Ready(Err(ReplyError::Timeout(this.timeout)));
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for AsyncReply<'_> {
    fn drop(&mut self) {
        self.withdraw();
    }
}

impl AsyncReply<'_> {
    /// Gives the request up: a reply already read is released, a later one
    /// will be.
    fn withdraw(&mut self) {
        let Some(corr) = self.corr.take() else { return };
        let Some(replies) = self.requester.replies_async.get() else { return };
        let mut state = replies.lock();
        if let Some(Entry { reply: Some(slot), .. }) = state.pending.remove(&corr) {
            self.requester.release(slot);
        }
        state.hand_over();
        state.disarm_if_idle();
    }
}
