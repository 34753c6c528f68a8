//! Forwarding a message as it is: what a program that carries messages
//! between buses (the bridge, `shmbus-bridge`) needs beyond the typed API.
//! It reads a message's [`Envelope`] (fingerprint, raw marker, trace id,
//! redelivered and remote flags) and sends another message with the same
//! one; and it answers a request later, from any thread, through its
//! [`ReplyHandle`], after the request's slot is long released.

use crate::handler::reply_queue_open;
use crate::publisher::{Loan, Publisher};
use crate::request::{Requester, Response};
use crate::subscriber::Message;
use crate::{ReplyError, SendError};
use bus_core::layout::{SlotHeader, FLAG_RAW, FLAG_REDELIVERED, FLAG_REMOTE};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// What a message carries besides its path and body, so that a copy sent
/// on another bus reads the same: its receivers see the same type, the
/// same trace, and whether it may be a duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Envelope {
    /// The body's type fingerprint ([`crate::fingerprint`]; 0 for raw bytes).
    pub fingerprint: u64,
    /// The body is raw bytes, not an rkyv archive.
    pub raw: bool,
    /// The trace id (0: the copy starts a trace of its own).
    pub trace_id: u64,
    /// The message was redelivered (after a receiver died with it), so it
    /// may have been handled once already. A copy sent with this set reads
    /// as redelivered in every group that receives it.
    pub redelivered: bool,
    /// The message came from another host ([`Message::is_remote`]).
    pub remote: bool,
}

impl Envelope {
    pub(crate) fn of(h: &SlotHeader) -> Envelope {
        let flags = h.flags.load(Ordering::Relaxed);
        Envelope {
            fingerprint: h.fingerprint.load(Ordering::Relaxed),
            raw: flags & FLAG_RAW != 0,
            trace_id: h.trace_id.load(Ordering::Relaxed),
            redelivered: h.redelivered.load(Ordering::Relaxed) != 0 || flags & FLAG_REDELIVERED != 0,
            remote: flags & FLAG_REMOTE != 0,
        }
    }
}

/// The return address of a request: enough to reply to it later, from any
/// thread and through any [`Publisher`] of the same bus, after the request
/// itself was released ([`Publisher::reply`]). A reply to a requester that
/// has gone (or timed out and moved on) is dropped, as from a handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyHandle {
    queue: u32,
    /// The reply queue's exact name when the request was received: a
    /// queue recycled for another requester since (a new name) gets
    /// nothing.
    queue_name: String,
    serial: u64,
    correlation: u64,
    trace_id: u64,
    path: String,
}

impl ReplyHandle {
    /// Whether the requester still waits on the same reply queue.
    fn open(&self, seg: &bus_core::Segment) -> bool {
        reply_queue_open(seg, self.queue, self.serial)
            && bus_core::routing::read(seg, self.queue).is_some_and(|v| v.name() == self.queue_name)
    }

    /// The request's path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The request's trace id, which the reply carries.
    pub fn trace_id(&self) -> u64 {
        self.trace_id
    }
}

impl Message<'_> {
    /// The message's envelope, to send a copy of it that reads the same.
    pub fn envelope(&self) -> Envelope {
        let mut e = Envelope::of(self.header());
        e.redelivered = self.is_redelivered();
        e
    }

    /// Whether the message came from another host, through a bridge.
    pub fn is_remote(&self) -> bool {
        self.header().flags.load(Ordering::Relaxed) & FLAG_REMOTE != 0
    }

    /// The return address of a request (`None` if it is not one): reply
    /// through it later with [`Publisher::reply`].
    pub fn reply_handle(&self) -> Option<ReplyHandle> {
        let h = self.header();
        let queue = self.reply_queue()?;
        Some(ReplyHandle {
            queue,
            queue_name: bus_core::routing::read(self.segment(), queue)?.name().to_owned(),
            serial: h.id.load(Ordering::Relaxed) >> 40,
            correlation: h.correlation_id.load(Ordering::Relaxed),
            trace_id: h.trace_id.load(Ordering::Relaxed),
            path: self.path().to_owned(),
        })
    }
}

impl Loan<'_> {
    /// Gives the message `envelope`'s fingerprint, marker, trace id (unless
    /// 0) and flags, whatever the body was written as. The body must be
    /// what the envelope says (an archive of the type of that fingerprint,
    /// or raw bytes): receivers check the fingerprint and validate the
    /// archive, so a wrong one is a typed error there, never undefined
    /// behaviour.
    pub fn envelope(self, envelope: &Envelope) -> Self {
        let h = self.header();
        h.fingerprint.store(envelope.fingerprint, Ordering::Relaxed);
        let mut flags = h.flags.load(Ordering::Relaxed) & !(FLAG_RAW | FLAG_REMOTE | FLAG_REDELIVERED);
        for (on, bit) in
            [(envelope.raw, FLAG_RAW), (envelope.remote, FLAG_REMOTE), (envelope.redelivered, FLAG_REDELIVERED)]
        {
            if on {
                flags |= bit;
            }
        }
        h.flags.store(flags, Ordering::Relaxed);
        if envelope.trace_id != 0 {
            h.trace_id.store(envelope.trace_id, Ordering::Relaxed);
        }
        self
    }
}

impl Publisher {
    /// Replies to the request behind `to` with `body`, read as `envelope`
    /// says (its trace id is the request's, whatever the envelope's). `Ok`
    /// also when the requester is gone: then nothing is sent.
    pub fn reply(&mut self, to: &ReplyHandle, envelope: &Envelope, body: &[u8]) -> Result<(), SendError> {
        if !to.open(&self.bus().inner.seg) {
            return Ok(());
        }
        let envelope = Envelope { trace_id: to.trace_id, ..*envelope };
        let loan = self.loan_direct(to.queue, to.serial, &to.path)?.write_bytes(body)?;
        loan.envelope(&envelope).reply(to.correlation, None).send().map(|_| ()).map_err(|f| f.error)
    }

    /// Replies to the request behind `to` with `error`, which its requester
    /// receives as the same [`ReplyError`] variant (see
    /// [`ReplyError::to_reply_parts`]). `Ok` also when the requester is
    /// gone.
    pub fn reply_error(&mut self, to: &ReplyHandle, error: &ReplyError) -> Result<(), SendError> {
        if !to.open(&self.bus().inner.seg) {
            return Ok(());
        }
        let (kind, text) = error.to_reply_parts();
        let text = crate::handler::clip(&text, self.bus().body_capacity(to.path.len()));
        let loan = self.loan_direct(to.queue, to.serial, &to.path)?.write_bytes(text.as_bytes())?;
        loan.reply(to.correlation, Some(kind)).trace_id(to.trace_id).send().map(|_| ()).map_err(|f| f.error)
    }
}

impl Requester {
    /// Sends a request whose body is read as `envelope` says (a copy of
    /// another bus's request), and waits up to `timeout` for its reply.
    pub fn request_enveloped(
        &self,
        path: &str,
        body: &[u8],
        envelope: &Envelope,
        timeout: Duration,
    ) -> Result<Response<'_>, ReplyError> {
        self.exchange(path, timeout, |p, corr| {
            p.loan(path)?.write_bytes(body)?.envelope(envelope).request(self.queue, corr).send().map_err(|f| f.error)
        })
    }
}
