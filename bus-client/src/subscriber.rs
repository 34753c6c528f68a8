//! Receiving: [`Subscriber`] and the [`Message`] guard that borrows a slot.

use crate::body::{fingerprint, Body};
use crate::bus::{after, unexpected, Bus};
use crate::error::{BodyError, RecvError, RequestError};
use crate::protocol::{Reply, Request};
use bus_core::layout::SlotHeader;
use bus_core::slot_pool::{CorruptSlot, Group, Port, SlotRef};
use bus_core::SlotIndex;
use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

impl Bus {
    /// Subscribes to `subsystem`'s default group: from now on, messages sent
    /// to `subsystem://…` are shared among the default group's subscribers,
    /// each going to one of them. Messages already queued for the group
    /// (sent while it had no subscriber, or put back after a subscriber
    /// died) are received first. Every other group of the subsystem gets
    /// its own copy of each message (see [`Bus::subscribe_group`]).
    pub fn subscribe(&self, subsystem: &str) -> Result<Subscriber, RequestError> {
        self.subscription(subsystem).create()
    }

    /// Subscribes to `subsystem` as a member of consumer group `group`
    /// (created on first use, blocking: a full queue slows publishers).
    /// Each group gets every message sent to the subsystem after the group
    /// came to exist; within a group each message goes to one subscriber.
    /// The group named `default` is the one [`Bus::subscribe`] joins.
    pub fn subscribe_group(&self, subsystem: &str, group: &str) -> Result<Subscriber, RequestError> {
        self.subscription(subsystem).group(group).create()
    }

    /// A builder for a subscription: its group, and whether a new group is
    /// lossy or a tap.
    pub fn subscription(&self, subsystem: &str) -> SubscriptionBuilder {
        SubscriptionBuilder {
            bus: self.clone(),
            subsystem: subsystem.to_owned(),
            group: None,
            lossy: false,
            tap: false,
        }
    }

    /// [`Bus::subscribe`] without the name check: for the reserved
    /// `_reply.` names of requesters (the daemon checks those itself).
    pub(crate) fn subscribe_unchecked(&self, subsystem: &str) -> Result<Subscriber, RequestError> {
        self.subscription(subsystem).create_unchecked()
    }
}

/// Builds a [`Subscriber`] (see [`Bus::subscription`]).
#[must_use = "call .create() to subscribe"]
pub struct SubscriptionBuilder {
    bus: Bus,
    subsystem: String,
    group: Option<String>,
    lossy: bool,
    tap: bool,
}

impl SubscriptionBuilder {
    /// Joins consumer group `name` (default: the subsystem's default group).
    pub fn group(mut self, name: &str) -> Self {
        self.group = Some(name.to_owned());
        self
    }

    /// If this subscription creates its group, the group is lossy: when its
    /// queue is full, publishers drop the group's copy (counted in `shmbus
    /// status`) instead of waiting. Asking for a lossy group that exists and
    /// is blocking is an error; a subscription that does not ask joins an
    /// existing group as it is.
    pub fn lossy(mut self, lossy: bool) -> Self {
        self.lossy = lossy;
        self
    }

    /// A tap: a lossy group of this subscriber alone, which disappears when
    /// it is dropped (its unread messages are freed). For monitors and
    /// recorders that must never slow production.
    pub fn tap(mut self) -> Self {
        self.tap = true;
        self
    }

    /// Subscribes.
    pub fn create(self) -> Result<Subscriber, RequestError> {
        bus_core::path::validate_subsystem(&self.subsystem).map_err(RequestError::InvalidName)?;
        if let Some(g) = &self.group {
            bus_core::path::validate_subsystem(g).map_err(RequestError::InvalidName)?;
        }
        self.create_unchecked()
    }

    fn create_unchecked(self) -> Result<Subscriber, RequestError> {
        let inner = &self.bus.inner;
        let port = inner.claim_port()?;
        let reply = inner.request(&Request::Subscribe {
            subsystem: self.subsystem.clone(),
            group: self.group.clone(),
            lossy: self.lossy,
            tap: self.tap,
        });
        let p = inner.seg.params();
        let (group, name) = match reply {
            Ok(Reply::Subscribed { queue, subsystem, slot, group })
                if inner.seg.queue(queue).is_some() && subsystem < p.max_subsystems && slot < p.max_groups =>
            {
                (Group { subsystem, slot, queue }, group)
            }
            other => {
                inner.release_port(port);
                return Err(match other {
                    Ok(r) => unexpected(r),
                    Err(e) => e,
                });
            }
        };
        Ok(Subscriber {
            bus: self.bus.clone(),
            port,
            group,
            group_name: name,
            spins: Cell::new(crate::bus::DEFAULT_SPINS),
            pause: Cell::new(crate::bus::DEFAULT_POLL_PAUSE),
            replies: self.subsystem.starts_with("_reply."),
            subsystem: self.subsystem,
            _not_sync: PhantomData,
        })
    }
}

/// Receives the messages of one subsystem, as a member of one of its groups.
/// One thread at a time (`Send`, not `Sync`); several subscribers (threads
/// or processes) of one group share its queue.
pub struct Subscriber {
    bus: Bus,
    port: u32,
    group: Group,
    group_name: String,
    subsystem: String,
    spins: Cell<u32>,
    /// Pause hints between two empty polls (see `set_poll_pause`).
    pause: Cell<u32>,
    /// A requester's reply queue (exempt from the quota check).
    replies: bool,
    _not_sync: PhantomData<Cell<()>>,
}

impl Subscriber {
    fn port(&self) -> Port<'_> {
        Port::new(&self.bus.inner.seg, self.bus.inner.client, self.port).expect("port index in range")
    }

    /// The subsystem.
    pub fn subsystem(&self) -> &str {
        &self.subsystem
    }

    /// Its group's queue.
    pub(crate) fn queue(&self) -> u32 {
        self.group.queue
    }

    /// Its group's name (`default` for the default group).
    pub fn group(&self) -> &str {
        &self.group_name
    }

    /// How many times a blocking receive polls the queue before it sleeps on
    /// the futex (default [`crate::DEFAULT_SPINS`], a few microseconds). 0
    /// sleeps at once: least CPU, most wake-up latency.
    pub fn set_spins(&self, spins: u32) {
        self.spins.set(spins);
    }

    /// How many CPU pause hints (`std::hint::spin_loop`, tens of
    /// nanoseconds each) a blocking receive executes between two polls of
    /// an empty queue while it spins (default
    /// [`crate::DEFAULT_POLL_PAUSE`], 1). An idle strategy, as Aeron's
    /// back-off ones are: opt in when throughput matters more than the
    /// last microsecond of latency.
    ///
    /// - **What it buys.** A receiver that has caught up polls the very
    ///   queue entry its publisher fills next, and each poll takes that
    ///   cache line from the publisher's CPU. Polling less often lets the
    ///   publisher run on: one message per call went 1.16–1.56× as fast
    ///   with 128 pauses in our measurements, and about 2× in the VM's slow
    ///   state (BENCHMARKS.md, session 14).
    /// - **What it costs.** A message that arrives during a pause waits
    ///   for it, up to `pauses` hints later (128 is a few microseconds).
    ///   And the spinning before a sleep lasts `spins × pauses` hints (with
    ///   the default 2 000 spins and 128 pauses, about 7 ms of a busy CPU
    ///   each time the queue runs empty): lower [`Subscriber::set_spins`]
    ///   in proportion to keep it as short. Timeouts hold within the
    ///   spinning.
    ///
    /// Receives that find a message queued never pause, and
    /// [`Subscriber::try_recv`] never waits at all. An asynchronous
    /// receiver made from this subscription pauses the same way.
    pub fn set_poll_pause(&self, pauses: u32) {
        self.pause.set(pauses);
    }

    /// The pause set with [`Subscriber::set_poll_pause`].
    #[cfg(feature = "tokio")]
    pub(crate) fn poll_pause(&self) -> u32 {
        self.pause.get()
    }

    /// Waits for the next message, for as long as it takes.
    pub fn recv(&self) -> Result<Message<'_>, RecvError> {
        self.recv_within(None)
    }

    /// Waits for the next message for at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Message<'_>, RecvError> {
        if timeout.is_zero() {
            // No wait at all: one look, not the polls before a sleep.
            return self.try_recv()?.ok_or(RecvError::Timeout(timeout));
        }
        self.recv_within(Some(timeout)).map_err(|e| match e {
            RecvError::Timeout(_) => RecvError::Timeout(timeout),
            e => e,
        })
    }

    /// The next message if one is queued. Makes no system call.
    pub fn try_recv(&self) -> Result<Option<Message<'_>>, RecvError> {
        match self.try_take()? {
            Some(i) => self.wrap(i).map(Some),
            None => Ok(None),
        }
    }

    /// Waits (for at most `timeout`, `None`: as long as it takes) until at
    /// least one message is queued, then appends up to `max` queued
    /// messages to `out` with one ring operation; returns how many. Reuse
    /// `out` (clearing it releases the messages) and this allocates nothing.
    /// A message with a corrupt header is released and skipped. A `max`
    /// of 0 returns `Ok(0)` at once.
    pub fn recv_batch<'a>(
        &'a self,
        out: &mut Vec<Message<'a>>,
        max: usize,
        timeout: Option<Duration>,
    ) -> Result<usize, RecvError> {
        self.bus.inner.usable()?;
        self.may_take()?;
        if max == 0 {
            return Ok(0); // asked for nothing: nothing to wait for
        }
        let port = self.port();
        let bell = port.sleeper(Some(self.group.queue), false).expect("queue in range");
        let r = self.bus.inner.wait_on(
            &bell,
            || after(timeout),
            (self.spins.get(), self.pause.get()),
            || {
                let n = self.take_batch(out, max);
                (n > 0).then_some(n)
            },
        );
        match r {
            Ok(Some(n)) => Ok(n),
            Ok(None) => Err(RecvError::Timeout(timeout.unwrap_or_default())),
            Err(u) => Err(u.into()),
        }
    }

    /// Appends up to `max` queued messages to `out` without waiting; returns
    /// how many (0 when the queue is empty). Makes no system call.
    pub fn try_recv_batch<'a>(&'a self, out: &mut Vec<Message<'a>>, max: usize) -> Result<usize, RecvError> {
        self.bus.inner.usable()?;
        self.may_take()?;
        Ok(self.take_batch(out, max))
    }

    fn take_batch<'a>(&'a self, out: &mut Vec<Message<'a>>, max: usize) -> usize {
        let port = self.port();
        let mut n = 0;
        let max = if self.replies { max } else { max.min(self.bus.inner.allowance() as usize) };
        let start = out.len();
        port.dequeue_many(&self.group, max, |slot| {
            // A corrupt message was released by `wrap_uncounted`; skip it.
            if let Ok(m) = self.wrap_uncounted(slot) {
                out.push(m);
                n += 1;
            }
        });
        // Counted once for the batch: one look-up of the port's record.
        self.count_received(&out[start..]);
        n
    }

    fn recv_within(&self, timeout: Option<Duration>) -> Result<Message<'_>, RecvError> {
        self.recv_by(|| after(timeout))
    }

    /// Waits for the next message until the deadline that `deadline` gives
    /// (asked for only if none is queued: a receiver that keeps up reads
    /// no clock); `Timeout(0)` after it.
    pub(crate) fn recv_by(&self, deadline: impl FnOnce() -> Option<Instant>) -> Result<Message<'_>, RecvError> {
        self.bus.inner.usable()?;
        self.may_take()?;
        let port = self.port();
        let bell = port.sleeper(Some(self.group.queue), false).expect("queue in range");
        match self
            .bus
            .inner
            .wait_on(&bell, deadline, (self.spins.get(), self.pause.get()), || port.dequeue(&self.group))
        {
            Ok(Some(i)) => self.wrap(i),
            Ok(None) => Err(RecvError::Timeout(Duration::ZERO)),
            Err(u) => Err(u.into()),
        }
    }

    /// One attempt to take a message without waiting: its slot, still to
    /// be wrapped ([`Subscriber::try_recv`], and what the asynchronous
    /// receive polls with).
    #[inline]
    pub(crate) fn try_take(&self) -> Result<Option<SlotIndex>, RecvError> {
        self.bus.inner.usable()?;
        self.may_take()?;
        Ok(self.port().dequeue(&self.group))
    }

    /// The doorbell a receiver of this group sleeps on, recorded in this
    /// subscription's port.
    #[cfg(feature = "tokio")]
    pub(crate) fn sleeper(&self) -> bus_core::doorbell::Sleeper<'_> {
        self.port().sleeper(Some(self.group.queue), false).expect("queue in range")
    }

    /// Its group's slot in the subsystem (the bit of `redelivered`, and
    /// the holder words, of its messages).
    #[cfg(feature = "tokio")]
    pub(crate) fn group_slot(&self) -> u32 {
        self.group.slot
    }

    /// The bus.
    #[cfg(feature = "tokio")]
    pub(crate) fn bus(&self) -> &Bus {
        &self.bus
    }

    pub(crate) fn wrap(&self, slot: SlotIndex) -> Result<Message<'_>, RecvError> {
        let m = self.wrap_uncounted(slot)?;
        self.count_received(std::slice::from_ref(&m));
        Ok(m)
    }

    /// [`Subscriber::wrap`] without counting the message in the port's
    /// record (the caller counts what it took).
    fn wrap_uncounted(&self, slot: SlotIndex) -> Result<Message<'_>, RecvError> {
        let s = self.bus.inner.seg.slot(slot);
        // Only the length is checked here (it is on the header's line); the
        // path itself, at the end of the slot, is read when asked for.
        if s.header().path_len.load(Ordering::Relaxed) as usize > bus_core::PATH_CAPACITY {
            return Err(self.corrupt(slot, "path length out of range"));
        }
        // SAFETY: `slot` was just dequeued by our port, so this client holds
        // it; only the `Message` releases it (on drop), or hands it on
        // (`into_slot`), and neither leaves a borrow of the token behind.
        let slot = unsafe { HeldSlot::new(s) };
        self.bus.inner.took(1);
        Ok(Message { sub: self, slot, split: Cell::new(None) })
    }

    /// Counts received messages in this port's record (one thread writes
    /// it: a plain load and store), and times each whose count is a
    /// multiple of [`bus_core::stats::SAMPLE_EVERY`] from its send
    /// timestamp into its group's latency histogram.
    #[inline]
    fn count_received(&self, msgs: &[Message<'_>]) {
        if !self.bus.inner.statistics() || msgs.is_empty() {
            return;
        }
        let seg = &self.bus.inner.seg;
        let Some(rec) = seg.port_intent(self.bus.inner.client, self.port) else { return };
        let before = rec.received.load(Ordering::Relaxed);
        rec.received.store(before.wrapping_add(msgs.len() as u64), Ordering::Relaxed);
        // Message j of these is the (before + j + 1)th.
        let every = bus_core::stats::SAMPLE_EVERY;
        let mut j = (every - 1 - before % every) as usize;
        while let Some(m) = msgs.get(j) {
            let sent = m.header().timestamp_ns.load(Ordering::Relaxed);
            let now = crate::clock::now_ns();
            if let (Some(st), true) = (seg.entry_stats(self.group.queue), sent != 0 && now >= sent) {
                st.latency.record(now - sent);
            }
            j += every as usize;
        }
    }

    /// Wakes another sleeping subscriber of this group if messages are
    /// still queued (after taking a batch).
    pub(crate) fn wake_another_if_queued(&self) {
        if let Some(ring) = self.bus.inner.seg.queue(self.group.queue) {
            // The waiters first: with nobody asleep, the producers' tail
            // line is not read at all.
            if ring.header().items.has_waiters() && !ring.is_empty() {
                ring.notify_items();
            }
        }
    }

    /// This subscription's port.
    pub(crate) fn port_index(&self) -> u32 {
        self.port
    }

    /// Releases a message this subscription took and gave up as a bare
    /// slot ([`Message::into_slot`]).
    pub(crate) fn release(&self, slot: SlotIndex) {
        self.port().release(slot, self.group.slot);
        self.bus.inner.gave(1);
    }

    /// Fails if this client holds its quota of slots (see
    /// `Inner::allowance`). A reply queue is exempt: its replies answer
    /// this client's own requests, bounded by their windows, and refusing
    /// them would only turn them into timeouts.
    #[inline]
    fn may_take(&self) -> Result<(), RecvError> {
        if !self.replies && self.bus.inner.allowance() == 0 {
            return Err(RecvError::QuotaExceeded { quota: self.bus.inner.quota() });
        }
        Ok(())
    }

    fn corrupt(&self, slot: SlotIndex, what: &'static str) -> RecvError {
        self.port().release(slot, self.group.slot);
        RecvError::Corrupt(CorruptSlot { index: slot.get(), what })
    }
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("subsystem", &self.subsystem)
            .field("group", &self.group_name)
            .field("queue", &self.group.queue)
            .finish_non_exhaustive()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        if self.bus.inner.forked() {
            return; // the parent's subscription and connection, not ours
        }
        // Best effort, without waiting for a daemon that died to be
        // replaced (the next one is not told of this subscription), nor
        // behind answers a stopped daemon still owes.
        let done = self.bus.inner.link.request_or_leave(&Request::Unsubscribe {
            subsystem: self.subsystem.clone(),
            queue: Some(self.group.queue),
        });
        self.bus.inner.release_port(self.port);
        // A reply queue's name, once the daemon has taken this subscription
        // off it, may serve the client's next reply queue.
        if matches!(done, Ok(Reply::Unsubscribed)) && self.subsystem.starts_with("_reply.") {
            let mut free = self.bus.inner.free_reply_names.lock().unwrap_or_else(|p| p.into_inner());
            if free.len() < crate::bus::REPLY_NAMES_KEPT {
                free.push(std::mem::take(&mut self.subsystem));
            }
        }
    }
}

/// Slot ownership as a type: a slot this client holds (dequeued by one of
/// its ports and not given back yet), and the only way to reach the slot's
/// path and body bytes. Every borrow it hands out takes the lifetime of
/// `&self`, that is of the guard owning the token ([`Message`],
/// [`crate::Response`]); the guard releases the slot only where no such
/// borrow can remain (in its own `Drop`, or after giving the token up), so
/// the compiler, not a comment, keeps slot bytes from outliving the hold.
/// `'s` is only the segment's lifetime: nothing read from the slot is ever
/// returned with it.
///
/// Neither `Clone` nor `Copy`: one token per hold.
pub(crate) struct HeldSlot<'s> {
    slot: SlotRef<'s>,
}

// SAFETY: the token only reads (shared byte slices, and the header's
// atomics) memory that stays mapped for all of `'s`, and nobody writes a
// slot while it is held. A hold belongs to the client (the process), not to
// a thread, so the token may move to and be read from any thread. (Without
// this `Response`, which owns one, would lose the `Send + Sync` it had when
// it kept a bare slot index.)
unsafe impl Send for HeldSlot<'_> {}
// SAFETY: as for `Send` above: shared access is read-only.
unsafe impl Sync for HeldSlot<'_> {}

impl<'s> HeldSlot<'s> {
    /// Takes the hold of `slot`.
    ///
    /// # Safety
    /// This client must hold `slot` (one of its ports dequeued it, or was
    /// handed it, and nobody released it) until the token's owner releases
    /// it, and the owner may release it only where no borrow of the token
    /// can remain: in the owner's `Drop`, or after taking the token apart.
    pub(crate) unsafe fn new(slot: SlotRef<'s>) -> Self {
        HeldSlot { slot }
    }

    /// The slot's index.
    pub(crate) fn index(&self) -> SlotIndex {
        self.slot.index()
    }

    /// The slot's header (atomics).
    pub(crate) fn header(&self) -> &SlotHeader {
        self.slot.header()
    }

    /// Whether the body is raw bytes.
    pub(crate) fn is_raw(&self) -> bool {
        self.slot.is_raw()
    }

    /// The path, in place, borrowed for as long as `self` is.
    pub(crate) fn path(&self) -> Result<&str, CorruptSlot> {
        // SAFETY: this client holds the slot (the contract of `new`), and the
        // `&str` borrows `self`, not `'s`: it ends before the guard that owns
        // this token can release the slot, so it never sees a reused slot.
        unsafe { self.slot.path() }
    }

    /// The body bytes, in place, borrowed for as long as `self` is.
    pub(crate) fn body(&self) -> Result<&[u8], CorruptSlot> {
        // SAFETY: this client holds the slot (the contract of `new`), and the
        // slice borrows `self`, not `'s`: it ends before the guard that owns
        // this token can release the slot, so it never sees a reused slot.
        unsafe { self.slot.body() }
    }
}

/// A received message. Holds its slot; dropping it releases the slot, which
/// may be reused for another message at once.
///
/// So everything read from the slot ([`path`](Message::path),
/// [`subsystem`](Message::subsystem), [`route`](Message::route),
/// [`body_bytes`](Message::body_bytes), [`body`](Message::body)) borrows the
/// `Message`, not the [`Subscriber`], and the compiler rejects any use of it
/// after the message is gone. Keep the message while you read its body, or
/// copy out what you keep:
///
/// ```no_run
/// fn handle(sub: &bus_client::Subscriber) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
///     let msg = sub.recv()?;
///     let body = msg.body_bytes()?; // borrows `msg`
///     let kept = body.to_vec(); // an owned copy outlives it
///     drop(msg); // releases the slot
///     Ok(kept)
/// }
/// ```
///
/// A body still in use when its message is dropped does not compile
/// (E0505, `msg` moved while borrowed):
///
/// ```compile_fail,E0505
/// fn handle(sub: &bus_client::Subscriber) -> Result<usize, Box<dyn std::error::Error>> {
///     let msg = sub.recv()?;
///     let body = msg.body_bytes()?;
///     drop(msg); // the slot is released and may be reused…
///     Ok(body.len()) // …so this would read another message's bytes
/// }
/// ```
///
/// In a batch receive each body borrows its message in `out`, so `out` can
/// be cleared (which releases the messages) only once no body is in use:
///
/// ```no_run
/// fn drain(sub: &bus_client::Subscriber) -> Result<usize, Box<dyn std::error::Error>> {
///     let mut out = Vec::new();
///     sub.recv_batch(&mut out, 64, None)?;
///     let first = out[0].body_bytes()?.len();
///     out.clear();
///     Ok(first)
/// }
/// ```
///
/// and otherwise does not compile (E0502, `out` borrowed mutably while
/// borrowed):
///
/// ```compile_fail,E0502
/// fn drain(sub: &bus_client::Subscriber) -> Result<usize, Box<dyn std::error::Error>> {
///     let mut out = Vec::new();
///     sub.recv_batch(&mut out, 64, None)?;
///     let first = out[0].body_bytes()?;
///     out.clear(); // releases the slots…
///     Ok(first.len()) // …so `first` would dangle
/// }
/// ```
pub struct Message<'a> {
    sub: &'a Subscriber,
    /// The slot, held until drop: the only way to its bytes.
    slot: HeldSlot<'a>,
    /// The offset of the path's `://`, found on first use (`Some(None)`:
    /// the path is not valid). Holds no borrow, so that `Message` stays
    /// covariant in `'a`.
    split: Cell<Option<Option<usize>>>,
}

impl Message<'_> {
    fn parts(&self) -> Option<(&str, usize)> {
        let path = self.slot.path().ok()?;
        let split = match self.split.get() {
            Some(s) => s,
            None => {
                let s = bus_core::path::separator(path);
                self.split.set(Some(s));
                s
            }
        };
        Some((path, split?))
    }

    /// The whole path, `subsystem://route` (empty if a faulty sender wrote
    /// a path that is not valid). Borrows the message:
    ///
    /// ```no_run
    /// # fn f(sub: &bus_client::Subscriber) -> Result<(), bus_client::RecvError> {
    /// let msg = sub.recv()?;
    /// let path = msg.path();
    /// println!("{path}");
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// Not from a message dropped at once (E0716, temporary dropped while
    /// borrowed):
    ///
    /// ```compile_fail,E0716
    /// # fn f(sub: &bus_client::Subscriber) -> Result<(), bus_client::RecvError> {
    /// let path = sub.recv()?.path(); // the message is dropped at the `;`
    /// println!("{path}");
    /// # Ok(())
    /// # }
    /// ```
    pub fn path(&self) -> &str {
        self.parts().map_or("", |(p, _)| p)
    }

    /// The subsystem. Borrows the message:
    ///
    /// ```no_run
    /// # fn f(sub: &bus_client::Subscriber) -> Result<(), bus_client::RecvError> {
    /// let msg = sub.recv()?;
    /// let subsystem = msg.subsystem();
    /// println!("{subsystem}");
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// ```compile_fail,E0716
    /// # fn f(sub: &bus_client::Subscriber) -> Result<(), bus_client::RecvError> {
    /// let subsystem = sub.recv()?.subsystem(); // the message is dropped at the `;`
    /// println!("{subsystem}");
    /// # Ok(())
    /// # }
    /// ```
    pub fn subsystem(&self) -> &str {
        // `get`: a hostile peer may rewrite the path after the split was
        // found; then this is empty, never a panic.
        self.parts().and_then(|(p, s)| p.get(..s)).unwrap_or("")
    }

    /// The route (after `://`). Borrows the message:
    ///
    /// ```no_run
    /// # fn f(sub: &bus_client::Subscriber) -> Result<(), bus_client::RecvError> {
    /// let msg = sub.recv()?;
    /// let route = msg.route();
    /// println!("{route}");
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// ```compile_fail,E0716
    /// # fn f(sub: &bus_client::Subscriber) -> Result<(), bus_client::RecvError> {
    /// let route = sub.recv()?.route(); // the message is dropped at the `;`
    /// println!("{route}");
    /// # Ok(())
    /// # }
    /// ```
    pub fn route(&self) -> &str {
        self.parts().and_then(|(p, s)| p.get(s + 3..)).unwrap_or("")
    }

    /// Bus-unique message id.
    pub fn id(&self) -> u64 {
        self.slot.header().id.load(Ordering::Relaxed)
    }

    /// Trace id.
    pub fn trace_id(&self) -> u64 {
        self.slot.header().trace_id.load(Ordering::Relaxed)
    }

    /// When it was sent: the publisher's wall clock, counted from a real
    /// reading of at most 100 ms before (within tens of nanoseconds of
    /// `SystemTime::now()` at the send; after the wall clock was set, or a
    /// suspend, off for up to 100 ms). The messages of each run of 64 in a
    /// batch carry one.
    pub fn timestamp(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.slot.header().timestamp_ns.load(Ordering::Relaxed))
    }

    /// Whether it was put back into the queue after a receiver died with it
    /// (it may have been partly processed already), here or, for a message
    /// from another host, on the bus it came from.
    pub fn is_redelivered(&self) -> bool {
        let h = self.slot.header();
        h.redelivered.load(Ordering::Relaxed) & (1 << self.sub.group.slot) != 0
            || h.flags.load(Ordering::Relaxed) & bus_core::layout::FLAG_REDELIVERED != 0
    }

    /// Whether the body is raw bytes (not an rkyv archive).
    pub fn is_raw(&self) -> bool {
        self.slot.is_raw()
    }

    /// Whether the sender waits for a reply (see [`crate::Router`]).
    pub fn is_request(&self) -> bool {
        self.slot.header().reply_to.load(Ordering::Relaxed) != 0
    }

    /// The correlation id of a request or reply (0 otherwise).
    pub fn correlation_id(&self) -> u64 {
        self.slot.header().correlation_id.load(Ordering::Relaxed)
    }

    /// Keeps the slot held (not released on drop) and returns it; the caller
    /// releases it later through a port of the same client.
    pub(crate) fn into_slot(self) -> SlotIndex {
        let slot = self.slot.index();
        std::mem::forget(self);
        slot
    }

    /// The slot's header (atomics).
    pub(crate) fn header(&self) -> &SlotHeader {
        self.slot.header()
    }

    /// The segment the message is in.
    pub(crate) fn segment(&self) -> &bus_core::Segment {
        &self.sub.bus.inner.seg
    }

    /// The reply queue of a request, if it is one.
    pub(crate) fn reply_queue(&self) -> Option<u32> {
        self.slot.header().reply_to.load(Ordering::Relaxed).checked_sub(1)
    }

    /// The body's bytes, in place. Borrows the message:
    ///
    /// ```no_run
    /// # fn f(sub: &bus_client::Subscriber) -> Result<(), Box<dyn std::error::Error>> {
    /// let msg = sub.recv()?;
    /// let body = msg.body_bytes()?;
    /// println!("{} bytes", body.len());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// Not from a message dropped at once (E0716):
    ///
    /// ```compile_fail,E0716
    /// # fn f(sub: &bus_client::Subscriber) -> Result<(), Box<dyn std::error::Error>> {
    /// let body = sub.recv()?.body_bytes()?; // the message is dropped at the `;`
    /// println!("{} bytes", body.len());
    /// # Ok(())
    /// # }
    /// ```
    pub fn body_bytes(&self) -> Result<&[u8], BodyError> {
        Ok(self.slot.body()?)
    }

    /// The body as the archived `T`, validated in place. Borrows the
    /// message:
    ///
    /// ```no_run
    /// #[derive(rkyv::Archive, rkyv::Serialize)]
    /// struct User {
    ///     name: String,
    /// }
    ///
    /// fn f(sub: &bus_client::Subscriber) -> Result<(), Box<dyn std::error::Error>> {
    ///     let msg = sub.recv()?;
    ///     let user = msg.body::<User>()?;
    ///     println!("{}", user.name);
    ///     Ok(())
    /// }
    /// ```
    ///
    /// Not from a message dropped at once (E0716):
    ///
    /// ```compile_fail,E0716
    /// #[derive(rkyv::Archive, rkyv::Serialize)]
    /// struct User {
    ///     name: String,
    /// }
    ///
    /// fn f(sub: &bus_client::Subscriber) -> Result<(), Box<dyn std::error::Error>> {
    ///     let user = sub.recv()?.body::<User>()?; // the message is dropped at the `;`
    ///     println!("{}", user.name);
    ///     Ok(())
    /// }
    /// ```
    pub fn body<T: Body>(&self) -> Result<&T::Archived, BodyError> {
        let bytes = self.checked_type::<T>()?;
        rkyv::access::<T::Archived, rkyv::rancor::Error>(bytes)
            .map_err(|e| BodyError::Invalid { expected: std::any::type_name::<T>(), detail: e.to_string() })
    }

    /// The body as the archived `T` without validating the bytes (the type
    /// fingerprint is still checked). Borrows the message, as
    /// [`Message::body`] does.
    ///
    /// # Safety
    /// The sender must be trusted to have written a valid archive of `T`.
    pub unsafe fn body_unchecked<T: Body>(&self) -> Result<&T::Archived, BodyError> {
        let bytes = self.checked_type::<T>()?;
        // SAFETY: the caller vouches for the bytes; the fingerprint matched.
        Ok(unsafe { rkyv::access_unchecked::<T::Archived>(bytes) })
    }

    fn checked_type<T: Body>(&self) -> Result<&[u8], BodyError> {
        let expected = std::any::type_name::<T>();
        if self.is_raw() {
            return Err(BodyError::Raw { expected });
        }
        let found = self.slot.header().fingerprint.load(Ordering::Relaxed);
        let expected_fp = fingerprint::<T>();
        if found != expected_fp {
            return Err(BodyError::WrongType { expected, expected_fp, found });
        }
        self.body_bytes()
    }
}

impl std::fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message").field("path", &self.path()).field("id", &self.id()).finish_non_exhaustive()
    }
}

impl Drop for Message<'_> {
    fn drop(&mut self) {
        if self.sub.bus.inner.detached() {
            return; // the parent's slot, or one the daemon took back
        }
        self.sub.port().release(self.slot.index(), self.sub.group.slot);
        self.sub.bus.inner.gave(1);
    }
}
