//! Receiving: [`Subscriber`] and the [`Message`] guard that borrows a slot.

use crate::body::{fingerprint, Body};
use crate::bus::{unexpected, Bus};
use crate::error::{BodyError, RecvError, RequestError};
use crate::protocol::{Reply, Request};
use bus_core::layout::FLAG_REDELIVERED;
use bus_core::slot_pool::{CorruptSlot, Port, SlotRef};
use bus_core::SlotIndex;
use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

impl Bus {
    /// Subscribes to `subsystem`: from now on, messages sent to
    /// `subsystem://…` are shared among its subscribers, each going to one.
    /// Messages already queued for it (sent while it had no subscriber, or
    /// put back after a subscriber died) are received first.
    pub fn subscribe(&self, subsystem: &str) -> Result<Subscriber, RequestError> {
        bus_core::path::validate_subsystem(subsystem).map_err(RequestError::InvalidName)?;
        self.subscribe_unchecked(subsystem)
    }

    /// [`Bus::subscribe`] without the name check: for the reserved
    /// `_reply.` names of requesters (the daemon checks those itself).
    pub(crate) fn subscribe_unchecked(&self, subsystem: &str) -> Result<Subscriber, RequestError> {
        let port = self.inner.claim_port()?;
        let reply = self.inner.request(&Request::Subscribe { subsystem: subsystem.to_owned() });
        let queue = match reply {
            Ok(Reply::Subscribed { queue }) if self.inner.seg.queue(queue).is_some() => queue,
            other => {
                self.inner.release_port(port);
                return Err(match other {
                    Ok(r) => unexpected(r),
                    Err(e) => e,
                });
            }
        };
        Ok(Subscriber {
            bus: self.clone(),
            port,
            queue,
            subsystem: subsystem.to_owned(),
            spins: Cell::new(crate::bus::DEFAULT_SPINS),
            _not_sync: PhantomData,
        })
    }
}

/// Receives the messages of one subsystem. One thread at a time (`Send`,
/// not `Sync`); several subscribers (threads or processes) of one subsystem
/// share its queue.
pub struct Subscriber {
    bus: Bus,
    port: u32,
    queue: u32,
    subsystem: String,
    spins: Cell<u32>,
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

    /// Its queue.
    pub(crate) fn queue(&self) -> u32 {
        self.queue
    }

    /// How many times a blocking receive polls the queue before it sleeps on
    /// the futex (default [`crate::DEFAULT_SPINS`], a few microseconds). 0
    /// sleeps at once: least CPU, most wake-up latency.
    pub fn set_spins(&self, spins: u32) {
        self.spins.set(spins);
    }

    /// Waits for the next message, for as long as it takes.
    pub fn recv(&self) -> Result<Message<'_>, RecvError> {
        self.recv_within(None)
    }

    /// Waits for the next message for at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Message<'_>, RecvError> {
        self.recv_within(Some(timeout)).map_err(|e| match e {
            RecvError::Timeout(_) => RecvError::Timeout(timeout),
            e => e,
        })
    }

    /// The next message if one is queued. Makes no system call.
    pub fn try_recv(&self) -> Result<Option<Message<'_>>, RecvError> {
        match self.port().dequeue(self.queue) {
            Some(i) => self.wrap(i).map(Some),
            None if !self.bus.inner.seg.daemon_running() => Err(RecvError::BusGone),
            None => Ok(None),
        }
    }

    /// Waits (for at most `timeout`, `None`: as long as it takes) until at
    /// least one message is queued, then appends up to `max` queued
    /// messages to `out` with one ring operation; returns how many. Reuse
    /// `out` (clearing it releases the messages) and this allocates nothing.
    /// A message with a corrupt header is released and skipped.
    pub fn recv_batch<'a>(
        &'a self,
        out: &mut Vec<Message<'a>>,
        max: usize,
        timeout: Option<Duration>,
    ) -> Result<usize, RecvError> {
        let ring = self.bus.inner.seg.queue(self.queue).expect("queue in range");
        let r = self.bus.inner.wait_on(&ring.header().items, timeout, self.spins.get(), || {
            let n = self.take_batch(out, max);
            (n > 0).then_some(n)
        });
        match r {
            Ok(Some(n)) => Ok(n),
            Ok(None) => Err(RecvError::Timeout(timeout.unwrap_or_default())),
            Err(()) => Err(RecvError::BusGone),
        }
    }

    /// Appends up to `max` queued messages to `out` without waiting; returns
    /// how many (0 when the queue is empty). Makes no system call.
    pub fn try_recv_batch<'a>(&'a self, out: &mut Vec<Message<'a>>, max: usize) -> Result<usize, RecvError> {
        match self.take_batch(out, max) {
            0 if !self.bus.inner.seg.daemon_running() => Err(RecvError::BusGone),
            n => Ok(n),
        }
    }

    fn take_batch<'a>(&'a self, out: &mut Vec<Message<'a>>, max: usize) -> usize {
        let port = self.port();
        let mut n = 0;
        port.dequeue_many(self.queue, max, |slot| {
            // A corrupt message was released by `wrap`; skip it.
            if let Ok(m) = self.wrap(slot) {
                out.push(m);
                n += 1;
            }
        });
        n
    }

    fn recv_within(&self, timeout: Option<Duration>) -> Result<Message<'_>, RecvError> {
        let port = self.port();
        let ring = self.bus.inner.seg.queue(self.queue).expect("queue in range");
        match self.bus.inner.wait_on(&ring.header().items, timeout, self.spins.get(), || port.dequeue(self.queue)) {
            Ok(Some(i)) => self.wrap(i),
            Ok(None) => Err(RecvError::Timeout(Duration::ZERO)),
            Err(()) => Err(RecvError::BusGone),
        }
    }

    fn wrap(&self, slot: SlotIndex) -> Result<Message<'_>, RecvError> {
        let s = self.bus.inner.seg.slot(slot);
        // Only the length is checked here (it is on the header's line); the
        // path itself, at the end of the slot, is read when asked for.
        if s.header().path_len.load(Ordering::Relaxed) as usize > bus_core::PATH_CAPACITY {
            return Err(self.corrupt(slot, "path length out of range"));
        }
        Ok(Message { sub: self, slot: s, split: Cell::new(None) })
    }

    fn corrupt(&self, slot: SlotIndex, what: &'static str) -> RecvError {
        self.port().give_free(slot);
        RecvError::Corrupt(CorruptSlot { index: slot.get(), what })
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        // Best effort: if the daemon is gone there is nothing to undo.
        let _ = self.bus.inner.request(&Request::Unsubscribe { subsystem: self.subsystem.clone() });
        self.bus.inner.release_port(self.port);
    }
}

/// A received message. Borrows its slot; dropping it releases the slot.
pub struct Message<'a> {
    sub: &'a Subscriber,
    slot: SlotRef<'a>,
    /// The offset of the path's `://`, found on first use (`Some(None)`:
    /// the path is not valid). Holds no borrow, so that `Message` stays
    /// covariant in `'a`.
    split: Cell<Option<Option<usize>>>,
}

impl<'a> Message<'a> {
    fn parts(&self) -> Option<(&'a str, usize)> {
        // SAFETY: the slot is Held by us for as long as this guard lives.
        let path = unsafe { self.slot.path() }.ok()?;
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
    /// a path that is not valid).
    pub fn path(&self) -> &'a str {
        self.parts().map_or("", |(p, _)| p)
    }

    /// The subsystem.
    pub fn subsystem(&self) -> &'a str {
        self.parts().map_or("", |(p, s)| &p[..s])
    }

    /// The route (after `://`).
    pub fn route(&self) -> &'a str {
        self.parts().map_or("", |(p, s)| &p[s + 3..])
    }

    /// Bus-unique message id.
    pub fn id(&self) -> u64 {
        self.slot.header().id.load(Ordering::Relaxed)
    }

    /// Trace id.
    pub fn trace_id(&self) -> u64 {
        self.slot.header().trace_id.load(Ordering::Relaxed)
    }

    /// When it was sent.
    pub fn timestamp(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.slot.header().timestamp_ns.load(Ordering::Relaxed))
    }

    /// Whether it was put back into the queue after a receiver died with it
    /// (it may have been partly processed already).
    pub fn is_redelivered(&self) -> bool {
        self.slot.header().flags.load(Ordering::Relaxed) & FLAG_REDELIVERED != 0
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

    /// The reply queue of a request, if it is one.
    pub(crate) fn reply_queue(&self) -> Option<u32> {
        self.slot.header().reply_to.load(Ordering::Relaxed).checked_sub(1)
    }

    /// The body's bytes, in place.
    pub fn body_bytes(&self) -> Result<&'a [u8], BodyError> {
        // SAFETY: the slot is Held by us for as long as this guard lives.
        Ok(unsafe { self.slot.body() }?)
    }

    /// The body as the archived `T`, validated in place.
    pub fn body<T: Body>(&self) -> Result<&'a T::Archived, BodyError> {
        let bytes = self.checked_type::<T>()?;
        rkyv::access::<T::Archived, rkyv::rancor::Error>(bytes)
            .map_err(|e| BodyError::Invalid { expected: std::any::type_name::<T>(), detail: e.to_string() })
    }

    /// The body as the archived `T` without validating the bytes (the type
    /// fingerprint is still checked).
    ///
    /// # Safety
    /// The sender must be trusted to have written a valid archive of `T`.
    pub unsafe fn body_unchecked<T: Body>(&self) -> Result<&'a T::Archived, BodyError> {
        let bytes = self.checked_type::<T>()?;
        // SAFETY: the caller vouches for the bytes; the fingerprint matched.
        Ok(unsafe { rkyv::access_unchecked::<T::Archived>(bytes) })
    }

    fn checked_type<T: Body>(&self) -> Result<&'a [u8], BodyError> {
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
        self.sub.port().give_free(self.slot.index());
    }
}
