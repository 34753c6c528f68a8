//! [`AsyncSubscriber`]: a subscriber whose receive is a future.

use super::waiter::Park;
use crate::error::RecvError;
use crate::subscriber::{Message, Subscriber};
use bus_core::SlotIndex;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Polls of the queue before a receive parks its task (a few
/// microseconds at most: a message that is about to arrive is taken
/// without a wake-up, and the runtime's thread is not held for longer).
pub const ASYNC_SPINS: u32 = 200;

/// A [`Subscriber`] for tokio tasks: [`AsyncSubscriber::recv`] is a future,
/// and [`AsyncSubscriber::stream`] a `Stream`.
///
/// While nothing arrives, the task is parked and nothing runs: no thread of
/// ours and no timer (the wait is an io_uring futex wait on the queue's
/// doorbell, which the runtime's reactor watches; see `docs/design.md`).
/// Publishers are unchanged: they make no system call while this receiver
/// is awake.
///
/// Made with [`Subscriber::into_async`]; the first receive that has to wait
/// must run inside a tokio runtime with IO enabled, and needs Linux 6.7 or
/// later (else [`RecvError::NoRuntime`] or [`RecvError::AsyncWait`];
/// [`crate::async_supported`] tells beforehand). It waits through the
/// reactor of the runtime it is polled on; polled on another runtime
/// later, it sets up its wait again there.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = bus_client::Bus::connect()?;
/// let mut sub = bus.subscribe("sensors")?.into_async();
/// loop {
///     tokio::select! {
///         msg = sub.recv() => println!("{}", msg?.path()),
///         _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => println!("quiet"),
///     }
/// }
/// # }
/// ```
pub struct AsyncSubscriber {
    // Field order: the waiter (and its io_uring wait on a word of the
    // segment) goes before the subscriber and its bus.
    park: Park,
    sub: Subscriber,
    spins: u32,
}

impl Subscriber {
    /// This subscription, received from asynchronously. Creating it makes
    /// no system call; the io_uring instance is set up by the first
    /// receive that waits.
    pub fn into_async(self) -> AsyncSubscriber {
        AsyncSubscriber { park: Park::default(), sub: self, spins: ASYNC_SPINS }
    }
}

impl std::fmt::Debug for AsyncSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncSubscriber").field("sub", &self.sub).field("park", &self.park).finish()
    }
}

impl AsyncSubscriber {
    /// The next message, as soon as one is queued.
    ///
    /// Cancel safe: a message is taken off the queue only in the poll that
    /// returns it, so dropping the future (a `tokio::select!` whose other
    /// branch won, a timeout) loses nothing; the message stays queued for
    /// the next receive. Dropping a parked future withdraws its wait.
    ///
    /// The message borrows the subscriber mutably: take the next one after
    /// dropping it. It is `Send`, so a task may hold it across an `.await`.
    pub fn recv(&mut self) -> Recv<'_> {
        Recv { sub: Some(self) }
    }

    /// The next message if one is queued, without waiting (no system call).
    pub fn try_recv(&mut self) -> Result<Option<AsyncMessage<'_>>, RecvError> {
        match self.sub.try_take()? {
            Some(i) => self.sub.wrap(i).map(|msg| Some(AsyncMessage { msg })),
            None => Ok(None),
        }
    }

    /// A `Stream` of what `f` makes of each message (a message lives only
    /// while `f` reads it, since it holds its slot): for example
    /// `sub.stream(|m| m.body_bytes().map(<[u8]>::to_vec))`. After
    /// [`RecvError::BusGone`], [`RecvError::Forked`],
    /// [`RecvError::NoRuntime`] or [`RecvError::AsyncWait`] the stream
    /// ends; other errors are yielded and it goes on.
    pub fn stream<T, F>(self, f: F) -> MessageStream<F>
    where
        F: FnMut(&Message<'_>) -> T,
    {
        MessageStream { sub: self, f, done: false }
    }

    /// The subscription (its subsystem, group, and blocking calls).
    pub fn subscriber(&self) -> &Subscriber {
        &self.sub
    }

    /// How many times a receive polls the queue before it parks (default
    /// [`ASYNC_SPINS`]). 0 parks at once. The pause between two polls is
    /// the subscription's (`self.subscriber().set_poll_pause(n)`): the
    /// polling holds the runtime's thread for `spins × pauses` hints each
    /// time the queue is found empty, so lower the spins as the pause grows.
    pub fn set_spins(&mut self, spins: u32) {
        self.spins = spins;
    }

    /// Takes a message's slot, or parks the task on the queue's doorbell.
    fn poll_take(&mut self, cx: &mut Context<'_>) -> Poll<Result<SlotIndex, RecvError>> {
        let some = |got: Result<Option<SlotIndex>, RecvError>| got.map(|i| i.expect("Some: matched"));
        loop {
            // A completed wait is taken first (the completion queue is read
            // in memory: no system call). Woken by a message, the task then
            // finds its wait over and takes the message without cancelling
            // anything: the cancel would cost system calls on the path of
            // every wake-up.
            self.park.reap(&self.sub)?;
            match self.sub.try_take() {
                Ok(None) => {}
                done => {
                    self.park.disarm(&self.sub);
                    return Poll::Ready(some(done));
                }
            }
            self.park.refresh(&self.sub);
            if !self.park.armed() {
                if let Some(got) = self.spin() {
                    return Poll::Ready(got);
                }
                let sub = &self.sub;
                let rechecked = self.park.arm(sub, || match sub.try_take() {
                    Ok(None) => None,
                    got => Some(some(got)),
                });
                match rechecked {
                    Ok(None) => {}
                    Ok(Some(got)) => return Poll::Ready(got),
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            // Then look again: the loop reaps the completion, and
            // `try_take` reports a bus found gone.
            std::task::ready!(self.park.poll_ready(&self.sub, cx))?;
        }
    }

    /// Polls the queue `spins` times, pausing as the subscription says
    /// between polls ([`Subscriber::set_poll_pause`]).
    fn spin(&self) -> Option<Result<SlotIndex, RecvError>> {
        let pause = self.sub.poll_pause();
        for _ in 0..self.spins {
            for _ in 0..pause {
                std::hint::spin_loop();
            }
            match self.sub.try_take() {
                Ok(None) => {}
                got => return Some(got.map(|i| i.expect("Some: matched above"))),
            }
        }
        None
    }

    /// Withdraws a wait in flight.
    fn disarm(&mut self) {
        self.park.disarm(&self.sub);
    }
}

impl Drop for AsyncSubscriber {
    fn drop(&mut self) {
        self.disarm();
    }
}

/// The future of [`AsyncSubscriber::recv`].
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct Recv<'a> {
    sub: Option<&'a mut AsyncSubscriber>,
}

impl<'a> Future for Recv<'a> {
    type Output = Result<AsyncMessage<'a>, RecvError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let sub = this.sub.as_mut().expect("Recv polled after it completed");
        match sub.poll_take(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(got) => {
                let sub: &'a mut AsyncSubscriber = this.sub.take().expect("checked above");
                Poll::Ready(got.and_then(|i| sub.sub.wrap(i)).map(|msg| AsyncMessage { msg }))
            }
        }
    }
}

impl Drop for Recv<'_> {
    fn drop(&mut self) {
        if let Some(sub) = self.sub.take() {
            sub.disarm();
        }
    }
}

/// A message received by an [`AsyncSubscriber`]: a [`Message`] (through
/// `Deref`) that may cross threads with its task.
pub struct AsyncMessage<'a> {
    msg: Message<'a>,
}

// SAFETY: a `Message` is not `Send` because it refers to its `Subscriber`,
// whose port records one thread at a time may write (releasing the slot on
// drop writes them). This message was made from `&'a mut AsyncSubscriber`
// and keeps that exclusive borrow for its whole life: no other code can
// reach the subscriber meanwhile, so whichever thread holds the message is
// the only one using the subscriber, as `Send` of the subscriber itself
// allows.
unsafe impl Send for AsyncMessage<'_> {}

impl<'a> AsyncMessage<'a> {
    /// The message itself.
    pub(crate) fn into_inner(self) -> Message<'a> {
        self.msg
    }
}

impl<'a> std::ops::Deref for AsyncMessage<'a> {
    type Target = Message<'a>;

    fn deref(&self) -> &Message<'a> {
        &self.msg
    }
}

impl std::fmt::Debug for AsyncMessage<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.msg.fmt(f)
    }
}

/// The `Stream` of [`AsyncSubscriber::stream`].
pub struct MessageStream<F> {
    sub: AsyncSubscriber,
    f: F,
    done: bool,
}

impl<F> std::fmt::Debug for MessageStream<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageStream").field("sub", &self.sub).field("done", &self.done).finish()
    }
}

impl<F> MessageStream<F> {
    /// The subscriber back (a parked wait, if any, is withdrawn first).
    pub fn into_inner(mut self) -> AsyncSubscriber {
        self.sub.disarm();
        self.sub
    }
}

impl<T, F> futures_core::Stream for MessageStream<F>
where
    F: FnMut(&Message<'_>) -> T + Unpin,
{
    type Item = Result<T, RecvError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match this.sub.poll_take(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => {
                // Nothing would change at the next poll: the end.
                this.done = matches!(
                    e,
                    RecvError::BusGone | RecvError::Forked | RecvError::NoRuntime | RecvError::AsyncWait { .. }
                );
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Ok(i)) => Poll::Ready(Some(this.sub.sub.wrap(i).map(|m| (this.f)(&m)))),
        }
    }
}

impl<T, F> futures_core::FusedStream for MessageStream<F>
where
    F: FnMut(&Message<'_>) -> T + Unpin,
{
    fn is_terminated(&self) -> bool {
        self.done
    }
}
