//! Pipelined requests: a [`Pipeline`] is a requester owned by one thread,
//! with up to a window of requests in flight at once. [`Pipeline::submit`]
//! sends and returns a [`Pending`] at once; [`Pipeline::next`] hands over
//! replies as they arrive, and [`Pipeline::wait`] the reply to one request.
//!
//! Correlation goes through a slab of `window` entries: a request's
//! correlation id is its entry's index and the entry's generation, so a
//! reply finds its entry with one bounds-checked index, and a reply that
//! comes after its request timed out (the entry has moved on a generation)
//! is told apart and released. No hash map, no lock, no condition variable,
//! and no allocation per request once the pipeline exists.

use crate::body::Body;
use crate::bus::Bus;
use crate::error::{RecvError, RequestError, SendError};
use crate::publisher::Publisher;
use crate::request::{Owner, ReplyError, Response, REPLY_SPINS};
use crate::subscriber::Subscriber;
use bus_core::SlotIndex;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Longest a wait sleeps before it looks for requests whose time ran out
/// (requests with different timeouts need not expire in submission order).
const EXPIRY_CHECK: Duration = Duration::from_millis(10);

/// A request in flight in a [`Pipeline`]: its ticket for
/// [`Pipeline::wait`], and what [`Pipeline::next`] names a reply by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pending {
    /// The correlation id: generation in the high 32 bits, slab index in
    /// the low 32.
    id: u64,
    /// The pipeline's reply queue: a ticket of another pipeline is none
    /// of this one's.
    queue: u32,
}

impl Pending {
    fn new(index: u32, gen: u32, queue: u32) -> Self {
        Pending { id: (gen as u64) << 32 | index as u64, queue }
    }

    fn index(self) -> usize {
        self.id as u32 as usize
    }

    fn gen(self) -> u32 {
        (self.id >> 32) as u32
    }

    /// The request's correlation id (unique among this pipeline's requests
    /// in flight; reused, with a new generation, after it completes).
    pub fn id(self) -> u64 {
        self.id
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    Free,
    Waiting { deadline: Instant, timeout: Duration },
    Arrived(SlotIndex),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Bumped each time the entry is freed, or its request failed to go
    /// out (it may have reached a group all the same); never 0, so that no
    /// correlation id is 0 (a message that is no reply carries 0). Starts
    /// from a per-pipeline seed, so that a reply meant for another
    /// requester (a stale reply queue reused) is unlikely to match.
    gen: u32,
    state: State,
}

fn next_gen(gen: u32) -> u32 {
    gen.wrapping_add(1).max(1)
}

/// Sends requests and takes their replies with up to `window` in flight,
/// from one thread (`&mut self`). See the module documentation.
///
/// ```no_run
/// # use std::time::Duration;
/// # fn f(bus: &bus_client::Bus) -> Result<(), Box<dyn std::error::Error>> {
/// let mut p = bus.pipeline(64)?;
/// for i in 0..1000u32 {
///     if p.in_flight() == p.window() {
///         let (_pending, reply) = p.next().expect("requests in flight");
///         reply?; // a Response, read in place; dropping it releases it
///     }
///     p.submit_bytes("api://echo", &i.to_le_bytes(), Duration::from_secs(1))?;
/// }
/// while let Some((_pending, reply)) = p.next() {
///     reply?;
/// }
/// # Ok(())
/// # }
/// ```
pub struct Pipeline {
    bus: Bus,
    publisher: Publisher,
    replies: Subscriber,
    queue: u32,
    slab: Vec<Entry>,
    /// Indices of free entries.
    free: Vec<u32>,
    /// Indices of entries whose reply arrived, oldest first.
    arrived: VecDeque<u32>,
    /// Entries waiting or arrived.
    in_flight: usize,
}

impl Bus {
    /// A [`Pipeline`]: a requester for one thread with up to `window`
    /// requests in flight (1 to the bus's queue capacity, since its reply
    /// queue must hold every reply: up to half the queue capacity, leaving
    /// room for late replies). Has a reply queue of its own.
    pub fn pipeline(&self, window: usize) -> Result<Pipeline, RequestError> {
        // Half the queue: room for late and duplicate replies besides a
        // full window, so that a worker's reply never waits for space.
        let max = self.inner.seg.params().queue_capacity as usize / 2;
        if window == 0 || window > max {
            return Err(RequestError::InvalidWindow { window, max });
        }
        let replies = self.subscribe_unchecked(&self.reply_queue_name())?;
        replies.set_spins(REPLY_SPINS);
        let queue = replies.queue();
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32).rotate_left(16))
            .unwrap_or(0)
            ^ queue.rotate_left(8);
        let seed = seed.max(1);
        Ok(Pipeline {
            bus: self.clone(),
            publisher: self.publisher().create()?,
            replies,
            queue,
            slab: vec![Entry { gen: seed, state: State::Free }; window],
            free: (0..window as u32).rev().collect(),
            arrived: VecDeque::with_capacity(window),
            in_flight: 0,
        })
    }
}

impl Pipeline {
    /// Requests in flight at most.
    pub fn window(&self) -> usize {
        self.slab.len()
    }

    /// Requests submitted whose outcome has not been taken yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// How many times a wait polls the reply queue before it sleeps
    /// (default [`REPLY_SPINS`]; see [`crate::Requester::set_spins`]).
    pub fn set_spins(&self, spins: u32) {
        self.replies.set_spins(spins);
    }

    /// Sends `body` to `path` as a request that must be answered within
    /// `timeout`, without waiting for the reply. Fails with
    /// [`ReplyError::WindowFull`] when `window` requests are in flight.
    pub fn submit<T: Body>(&mut self, path: &str, body: &T, timeout: Duration) -> Result<Pending, ReplyError> {
        let queue = self.queue;
        self.submit_with(timeout, |p, corr| p.loan(path)?.write(body)?.request(queue, corr).send().map_err(|f| f.error))
    }

    /// [`Pipeline::submit`] with a raw-byte body.
    pub fn submit_bytes(&mut self, path: &str, body: &[u8], timeout: Duration) -> Result<Pending, ReplyError> {
        let queue = self.queue;
        self.submit_with(timeout, |p, corr| {
            p.loan(path)?.write_bytes(body)?.request(queue, corr).send().map_err(|f| f.error)
        })
    }

    fn submit_with(
        &mut self,
        timeout: Duration,
        send: impl FnOnce(&mut Publisher, u64) -> Result<u64, SendError>,
    ) -> Result<Pending, ReplyError> {
        // A full window stays full until the caller takes outcomes with
        // `next` or `wait` (every request's outcome is reported, a timeout
        // too).
        let Some(&index) = self.free.last() else {
            return Err(ReplyError::WindowFull { window: self.window() });
        };
        let pending = Pending::new(index, self.slab[index as usize].gen, self.queue);
        let deadline = crate::bus::deadline_in(timeout);
        // The request's timeout covers the send too.
        self.publisher.set_send_timeout(timeout.min(self.bus.inner.send_timeout));
        match send(&mut self.publisher, pending.id) {
            Ok(_) => {
                self.free.pop();
                self.slab[index as usize].state = State::Waiting { deadline, timeout };
                self.in_flight += 1;
                Ok(pending)
            }
            Err(e) => {
                // Not sent, or sent to some groups only: the id is not
                // used again, so that a reply to a copy that did go out
                // finds no request (and is released).
                let e2 = &mut self.slab[index as usize];
                e2.gen = next_gen(e2.gen);
                // Never sent: `Send(Timeout)` when its time ran out
                // waiting for a slot or room (see `Requester::request`).
                Err(match e {
                    SendError::BusGone => ReplyError::BusGone,
                    e => ReplyError::Send(e),
                })
            }
        }
    }

    /// The next request to complete, with its outcome: its reply (read in
    /// place; drop it before the next call), or why there is none (its
    /// timeout passed, the handler failed, the bus is gone). Replies come
    /// in the order they arrive. `None` when nothing is in flight.
    #[allow(clippy::should_implement_trait)] // borrows self: not an Iterator
    pub fn next(&mut self) -> Option<(Pending, Result<Response<'_>, ReplyError>)> {
        loop {
            if let Some(index) = self.arrived.pop_front() {
                return Some(self.complete(index as usize));
            }
            if self.in_flight == 0 {
                return None;
            }
            // Replies already queued count as in time, however late the
            // caller comes for them: take them before judging deadlines.
            if self.take_replies(None).is_ok() && !self.arrived.is_empty() {
                continue;
            }
            let now = Instant::now();
            if let Some((pending, e)) = self.expire(now) {
                return Some((pending, Err(e)));
            }
            let first = self.earliest_deadline().unwrap_or(now);
            if let Err(gone) = self.take_replies((first > now).then_some(first)) {
                let index = self.slab.iter().position(|e| matches!(e.state, State::Waiting { .. }))?;
                let pending = self.free_entry(index);
                return Some((pending, Err(gone)));
            }
        }
    }

    /// Waits for the reply to `pending` (others that arrive meanwhile are
    /// kept for [`Pipeline::next`] or a later `wait`).
    pub fn wait(&mut self, pending: Pending) -> Result<Response<'_>, ReplyError> {
        let index = pending.index();
        match self.slab.get(index) {
            Some(e) if pending.queue == self.queue && e.gen == pending.gen() && !matches!(e.state, State::Free) => {}
            _ => return Err(ReplyError::NotInFlight),
        }
        // The clock is read only after a wait came back empty: a reply
        // that comes while the receive still polls costs no clock call (a
        // deadline that passed before this call is seen after that poll).
        let mut waited = false;
        loop {
            match self.slab[index].state {
                State::Arrived(_) => {
                    if let Some(at) = self.arrived.iter().position(|&i| i as usize == index) {
                        self.arrived.remove(at);
                    }
                    return self.complete(index).1;
                }
                State::Waiting { deadline, timeout } => {
                    // (A zero timeout is judged at once, as the caller asked.)
                    if (std::mem::replace(&mut waited, true) || timeout.is_zero()) && Instant::now() >= deadline {
                        // Queued in time, taken late: still in time.
                        if let Err(gone) = self.take_replies(None) {
                            self.free_entry(index);
                            return Err(gone);
                        }
                        if matches!(self.slab[index].state, State::Arrived(_)) {
                            continue;
                        }
                        self.free_entry(index);
                        return Err(ReplyError::Timeout(timeout));
                    }
                    if let Err(gone) = self.take_replies(Some(deadline)) {
                        self.free_entry(index);
                        return Err(gone);
                    }
                }
                State::Free => unreachable!("checked above, and only this call frees it"),
            }
        }
    }

    /// Receives what replies are queued, waiting for the first until
    /// `until` (at most [`EXPIRY_CHECK`] from when its polling found
    /// nothing; `None`: not at all). Each goes to its entry; one for no
    /// entry in flight (late, or forged) is released.
    fn take_replies(&mut self, until: Option<Instant>) -> Result<(), ReplyError> {
        if self.bus.inner.forked() {
            return Err(ReplyError::Send(SendError::Forked));
        }
        let got = loop {
            let got = match until {
                None => self.replies.try_recv().and_then(|m| m.ok_or(RecvError::Timeout(Duration::ZERO))),
                Some(d) => self.replies.recv_by(|| Some(d.min(Instant::now() + EXPIRY_CHECK))),
            };
            // A corrupt message was released: the replies behind it count.
            if !matches!(got, Err(RecvError::Corrupt(_))) {
                break got;
            }
        };
        let first = match got {
            Ok(m) => m,
            Err(RecvError::BusGone) => return Err(ReplyError::BusGone),
            Err(RecvError::Forked) => return Err(ReplyError::Send(SendError::Forked)),
            Err(_) => return Ok(()), // nothing queued
        };
        let mut next = Some(first);
        while let Some(m) = next {
            let pending = Pending { id: m.correlation_id(), queue: self.queue };
            let slot = m.into_slot();
            match self.slab.get_mut(pending.index()) {
                Some(e) if e.gen == pending.gen() && matches!(e.state, State::Waiting { .. }) => {
                    e.state = State::Arrived(slot);
                    self.arrived.push_back(pending.index() as u32);
                }
                _ => self.replies.release(slot),
            }
            if self.arrived.len() >= self.slab.len() {
                break;
            }
            next = loop {
                match self.replies.try_recv() {
                    Ok(m) => break m,
                    // Released already; the replies behind it count.
                    Err(RecvError::Corrupt(_)) => continue,
                    Err(_) => break None,
                }
            };
        }
        Ok(())
    }

    /// Frees the first entry whose deadline passed (its late reply will be
    /// released) and returns it with its error.
    fn expire(&mut self, now: Instant) -> Option<(Pending, ReplyError)> {
        for index in 0..self.slab.len() {
            if let State::Waiting { deadline, timeout } = self.slab[index].state {
                if now >= deadline {
                    return Some((self.free_entry(index), ReplyError::Timeout(timeout)));
                }
            }
        }
        None
    }

    fn earliest_deadline(&self) -> Option<Instant> {
        self.slab
            .iter()
            .filter_map(|e| match e.state {
                State::Waiting { deadline, .. } => Some(deadline),
                _ => None,
            })
            .min()
    }

    /// Hands the arrived reply of entry `index` over as a [`Response`].
    fn complete(&mut self, index: usize) -> (Pending, Result<Response<'_>, ReplyError>) {
        if self.bus.inner.forked() {
            // The parent's reply: not ours to read or release.
            return (self.free_entry(index), Err(ReplyError::Send(SendError::Forked)));
        }
        let State::Arrived(slot) = self.slab[index].state else {
            unreachable!("only arrived entries are completed");
        };
        let pending = self.free_entry(index);
        let owner = Owner::Replies { bus: &self.bus, port: self.replies.port_index() };
        // SAFETY: the reply subscription dequeued `slot` and `take_replies`
        // put it in this entry only; the entry is free now, so nothing else
        // hands it out again.
        let response = unsafe { Response::of(owner, slot, &self.bus.inner.seg) };
        (pending, response)
    }

    /// Frees entry `index` (a new generation), returning the `Pending` it
    /// was.
    fn free_entry(&mut self, index: usize) -> Pending {
        let e = &mut self.slab[index];
        let pending = Pending::new(index as u32, e.gen, self.queue);
        e.gen = next_gen(e.gen);
        e.state = State::Free;
        self.free.push(index as u32);
        self.in_flight -= 1;
        pending
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if self.bus.inner.detached() {
            return; // the parent's slots, or taken back
        }
        for e in &self.slab {
            if let State::Arrived(slot) = e.state {
                self.replies.release(slot);
            }
        }
    }
}
