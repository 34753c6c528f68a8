//! The slot pool: who owns each slot, and the port operations that move slot
//! indices between the free ring, private caches, loans, queues and
//! receivers without losing one when a process dies at any instruction.
//!
//! ## Ownership
//!
//! Every slot header starts with `own = gen << 40 | state << 32 | low`:
//!
//! | state       | low                        | where the index is                            | next states |
//! |-------------|----------------------------|-----------------------------------------------|-------------|
//! | `Free`      | 0                          | in the free ring (or about to be)              | Cached (CAS) |
//! | `Cached`    | client                     | a publisher's private cache                    | Loaned, Free |
//! | `Loaned`    | client                     | a loan being written                           | Published, Cached |
//! | `Published` | `held << 16 \| queued`     | in the queues of the groups whose bit is set   | bits move (CAS) |
//!
//! A message goes to every group of its subsystem (see [`crate::routing`]):
//! group slot `k` of the subsystem is bit `k` of two 16-bit masks. `queued`
//! says the message waits in that group's queue (or is about to be pushed
//! there, or was popped and not yet claimed); `held` says a receiver of
//! that group has it. The publisher stores `Published` with the `queued`
//! bits of every group it sends to, then pushes the index onto each
//! group's queue. A receiver claims it by moving its group's bit from
//! `queued` to `held`, and releases it by clearing that bit. A slot whose
//! masks are both empty is free: whoever clears the last bit pushes the
//! index onto the free ring. One slot serves every group; nothing is copied.
//!
//! `gen` (24 bits) grows on every Free → Cached and on every roll-back of a
//! publish, so a stale view of a slot does not match a later life of it.
//!
//! ## Holder words
//!
//! Who holds a message for group `k` is not in the ownership word (16
//! groups, one client each, would not fit): it is in the slot's holder word
//! for `k` ([`Segment::holder`]), `gen << 40 | client + 1`. A receiver
//! claims in two steps: first it locks the holder word for this life of
//! the slot (a CAS from any word not naming this `gen`), then it moves its
//! bit in `own` (a CAS). Only the receiver that locked the holder word
//! moves the bit, so two receivers of one group that popped two entries of
//! one slot (a duplicate left by a crash repair) cannot both have it: the
//! second finds the holder word locked for this `gen` and skips the entry
//! (counted in `RingStats::skipped`). When a client dies, every holder word
//! that names it and this `gen` of a `Published` slot whose bit is set is
//! its: the daemon puts the message back into that group's queue only,
//! flagged redelivered for that group ([`crate::reclaim`]).
//!
//! ## Intents
//!
//! Each port (a publisher or subscriber, used by one thread at a time) has an
//! intent word in its client's table entry. Before it changes a slot's state
//! towards a ring or touches a ring, the port writes `op·ring·index` there;
//! after, it clears it. If the process dies in between, the daemon reads the
//! intent and completes the step ([`crate::reclaim`]): a publish (`Push` to
//! a subsystem) is completed by pushing the index onto every group queue
//! whose bit is still queued and unclaimed, or by freeing the slot if no
//! bit is left; a pop from a group queue whose message was not claimed is
//! undone by pushing the index back; a push onto the free ring is made.
//! When the index was in the ring after all, the extra entry is skipped
//! later. Slots in `Cached` or `Loaned` name their client, and held
//! messages their holder word, so the daemon finds them by a scan.

use crate::layout::{body_capacity, SlotHeader, BODY_OFFSET, FLAG_RAW, MAX_GROUPS, PATH_CAPACITY, SLOT_HEADER_SIZE};
use crate::queue::Ring;
use crate::segment::{Segment, SlotIndex};
use std::sync::atomic::{AtomicU64, Ordering};

pub use crate::ownership::{holder_lock, holder_of, Own, SlotState, GEN_MASK};

/// Free slots that must be back in the free ring before a release wakes a
/// publisher sleeping for one (the size of a publisher's cache refill).
pub const FREE_WAKE_BATCH: u64 = 32;

/// Most slot headers a ring operation prefetches ahead of its claims.
const PREFETCH_AHEAD: usize = 32;

/// Ring id of the free ring in an intent.
pub const RING_FREE: u32 = 0;

/// Ring id of queue (routing entry) `q` in an intent.
pub fn ring_of_queue(q: u32) -> u32 {
    q + 1
}

/// Intent operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum IntentOp {
    /// Moving an index onto the ring (for a subsystem: publishing to its
    /// groups' queues).
    Push = 1,
    /// Taking an index off the ring.
    Pop = 2,
}

/// A decoded intent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intent {
    /// The operation.
    pub op: IntentOp,
    /// [`RING_FREE`] or [`ring_of_queue`].
    pub ring: u32,
    /// The slot index (unchecked: it comes from the segment).
    pub index: u32,
}

impl Intent {
    /// Packs an intent word.
    pub fn pack(op: IntentOp, ring: u32, index: u32) -> u64 {
        (op as u64) << 56 | ((ring as u64) & 0xff_ffff) << 32 | index as u64
    }

    /// Unpacks one; `None` for "no intent" or an unknown op.
    pub fn unpack(w: u64) -> Option<Intent> {
        let op = match (w >> 56) as u8 {
            1 => IntentOp::Push,
            2 => IntentOp::Pop,
            _ => return None,
        };
        Some(Intent { op, ring: ((w >> 32) & 0xff_ffff) as u32, index: w as u32 })
    }
}

/// Where a message goes: its subsystem's routing entry, and the queue and
/// backpressure of each of its groups (resolved by the publisher from the
/// routing table, see [`crate::routing::RouteView::fanout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fanout {
    /// The subsystem's routing entry (its default group's queue).
    pub subsystem: u32,
    /// Group slots that receive (bit k: group slot k).
    pub mask: u16,
    /// Of those, the lossy ones.
    pub lossy: u16,
    /// Queue of each group slot (valid where `mask` has the bit).
    pub queues: [u16; MAX_GROUPS],
}

impl Fanout {
    /// Only the default group of entry `q` (a reply queue).
    pub fn single(q: u32) -> Fanout {
        let mut queues = [0; MAX_GROUPS];
        queues[0] = q as u16;
        Fanout { subsystem: q, mask: 1, lossy: 0, queues }
    }

    /// Number of groups.
    pub fn groups(&self) -> u32 {
        self.mask.count_ones()
    }

    /// The one group slot, if there is exactly one.
    pub fn only(&self) -> Option<u32> {
        self.mask.is_power_of_two().then(|| self.mask.trailing_zeros())
    }

    /// Group slots in push order: blocking groups first (a full one can
    /// still be waited for before anything is pushed), lossy ones last.
    fn order(&self) -> impl Iterator<Item = u32> + '_ {
        let block = self.mask & !self.lossy;
        let lossy = self.mask & self.lossy;
        bits(block).chain(bits(lossy))
    }
}

/// The set bits of `m`, lowest first (one step per set bit: this runs for
/// every message sent).
#[inline]
pub fn bits(mut m: u16) -> impl Iterator<Item = u32> {
    std::iter::from_fn(move || {
        if m == 0 {
            return None;
        }
        let k = m.trailing_zeros();
        m &= m - 1;
        Some(k)
    })
}

/// A group a receiver serves: its subsystem entry, its group slot, and its
/// queue (for the default group, the subsystem entry itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Group {
    /// The subsystem's routing entry.
    pub subsystem: u32,
    /// The group slot (bit) within the subsystem.
    pub slot: u32,
    /// The group's queue.
    pub queue: u32,
}

impl Group {
    /// The default group of entry `q`.
    pub fn default_of(q: u32) -> Group {
        Group { subsystem: q, slot: 0, queue: q }
    }
}

/// A slot corrupt in a way its reader can see (a length or offset out of
/// range, a path that is not UTF-8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("slot {index} is corrupt: {what}")]
pub struct CorruptSlot {
    /// The slot.
    pub index: u32,
    /// What is wrong.
    pub what: &'static str,
}

/// One slot of the segment.
#[derive(Clone, Copy)]
pub struct SlotRef<'a> {
    header: &'a SlotHeader,
    base: *mut u8,
    size: usize,
    index: SlotIndex,
}

impl<'a> SlotRef<'a> {
    pub(crate) fn new(header: &'a SlotHeader, base: *mut u8, size: usize, index: SlotIndex) -> Self {
        SlotRef { header, base, size, index }
    }

    /// The slot's header (atomics; safe to read at any time).
    pub fn header(&self) -> &'a SlotHeader {
        self.header
    }

    /// The slot's index.
    pub fn index(&self) -> SlotIndex {
        self.index
    }

    /// Decoded ownership word.
    pub fn own(&self) -> Own {
        // SYNC: slot-claim — Acquire pairs with the CAS or store that made
        // the current owner; a reader of other fields after checking the
        // owner sees what that owner wrote.
        Own::unpack(self.header.own.load(Ordering::Acquire))
    }

    /// Fetches, for writing, the lines a publisher writes first: the
    /// header, the first body line and the last line (where the path
    /// ends). Only a hint: touches no memory architecturally.
    #[inline]
    pub fn prefetch_for_write(&self) {
        crate::line::prefetch_for_write(self.header);
        crate::line::prefetch_for_write(self.base.wrapping_add(BODY_OFFSET));
        crate::line::prefetch_for_write(self.base.wrapping_add(self.size - 1));
    }

    /// Bytes available for the body after a path of `path_len` bytes.
    pub fn body_capacity(&self, path_len: usize) -> usize {
        body_capacity(self.size, path_len)
    }

    /// Longest path a slot of this bus holds (with an empty body).
    pub fn path_capacity(&self) -> usize {
        PATH_CAPACITY.min(self.size - BODY_OFFSET)
    }

    /// Writes the path at the end of the slot and records its length. A path longer than [`SlotRef::path_capacity`] is an
    /// error, and nothing is written.
    ///
    /// # Safety
    /// The caller owns the slot (state `Loaned` by its client): nobody else
    /// reads or writes the slot's bytes meanwhile.
    pub unsafe fn write_path(&self, path: &str) -> Result<(), crate::PathError> {
        let max = self.path_capacity();
        if path.len() > max {
            return Err(crate::PathError::TooLongForSlot { len: path.len(), max });
        }
        // SAFETY: the range [size - len, size) is inside the slot and after
        // the header (checked above), and the caller owns the slot.
        unsafe { std::ptr::copy_nonoverlapping(path.as_ptr(), self.base.add(self.size - path.len()), path.len()) };
        self.header.path_len.store(path.len() as u16, Ordering::Relaxed);
        Ok(())
    }

    /// The body area after a path of `path_len` bytes, 16-byte aligned.
    /// Slot memory is always initialized (the memfd is zero-filled when it
    /// is created, and bytes are only ever overwritten), so this is `u8`,
    /// not `MaybeUninit<u8>`: it holds the previous message's bytes.
    ///
    /// # Safety
    /// The caller owns the slot, and does not keep the slice past its
    /// ownership (the returned lifetime is bounded by the segment only).
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn body_area(&self, path_len: usize) -> &'a mut [u8] {
        let len = body_capacity(self.size, path_len);
        // SAFETY: [BODY_OFFSET, BODY_OFFSET + len) is inside the slot and
        // before the path; the caller owns the slot, so this is the only
        // reference to those bytes; the base is 64-aligned.
        unsafe { std::slice::from_raw_parts_mut(self.base.add(BODY_OFFSET), len) }
    }

    /// The path, bounds- and UTF-8-checked.
    ///
    /// # Safety
    /// The caller owns the slot (`Held` by its client, or `Loaned`).
    pub unsafe fn path(&self) -> Result<&'a str, CorruptSlot> {
        let len = self.header.path_len.load(Ordering::Relaxed) as usize;
        if len > PATH_CAPACITY || SLOT_HEADER_SIZE + len > self.size {
            return Err(self.corrupt("path length out of range"));
        }
        // SAFETY: [size - len, size) is in bounds (checked); the caller owns
        // the slot.
        let bytes = unsafe { std::slice::from_raw_parts(self.base.add(self.size - len), len) };
        // Paths are ASCII in practice, and `is_ascii` checks a word at a
        // time where `from_utf8` walks byte by byte (about 120 instructions
        // for a 12-byte path, read twice per request a service handles).
        if bytes.is_ascii() {
            // SAFETY: ASCII is valid UTF-8.
            return Ok(unsafe { std::str::from_utf8_unchecked(bytes) });
        }
        std::str::from_utf8(bytes).map_err(|_| self.corrupt("path is not UTF-8"))
    }

    /// The body bytes, bounds-checked, 16-byte aligned.
    ///
    /// # Safety
    /// The caller owns the slot.
    pub unsafe fn body(&self) -> Result<&'a [u8], CorruptSlot> {
        let off = BODY_OFFSET;
        let len = self.header.body_len.load(Ordering::Relaxed) as usize;
        if len > self.size - off {
            return Err(self.corrupt("body offset or length out of range"));
        }
        // SAFETY: in bounds (checked); the caller owns the slot.
        Ok(unsafe { std::slice::from_raw_parts(self.base.add(off), len) })
    }

    /// Whether the body is raw bytes.
    pub fn is_raw(&self) -> bool {
        self.header.flags.load(Ordering::Relaxed) & FLAG_RAW != 0
    }

    fn corrupt(&self, what: &'static str) -> CorruptSlot {
        CorruptSlot { index: self.index.get(), what }
    }
}

/// One port: a thread's handle on the pool, with its intent record.
/// Every method that changes slot ownership goes through here.
pub struct Port<'a> {
    seg: &'a Segment,
    client: u32,
    intent: &'a AtomicU64,
    bell: &'a AtomicU64,
}

impl<'a> Port<'a> {
    /// The port `port` of `client`. None if either is out of range.
    pub fn new(seg: &'a Segment, client: u32, port: u32) -> Option<Self> {
        let rec = seg.port_intent(client, port)?;
        Some(Port { seg, client, intent: &rec.intent, bell: &rec.bell })
    }

    /// A [`Sleeper`](crate::doorbell::Sleeper) for the `items` (or, with
    /// `space`, the `space`) doorbell of the free ring (`queue: None`) or of
    /// queue `q`, recording in this port's entry. `None` if `q` is out of
    /// range.
    pub fn sleeper(&self, queue: Option<u32>, space: bool) -> Option<crate::doorbell::Sleeper<'a>> {
        let (ring, id) = match queue {
            None => (self.seg.free_ring(), RING_FREE),
            Some(q) => (self.seg.queue(q)?, ring_of_queue(q)),
        };
        let header = ring.header();
        let bell = if space { &header.space.0 } else { &header.items.0 };
        Some(crate::doorbell::Sleeper::new(bell, self.bell, crate::doorbell::bell_id(id, space)))
    }

    /// The segment.
    pub fn segment(&self) -> &'a Segment {
        self.seg
    }

    #[inline]
    fn set_intent(&self, op: IntentOp, ring: u32, index: u32) {
        // Relaxed: the ring CAS or ownership store that follows
        // (SeqCst/AcqRel/Release) orders it before any effect a survivor
        // could see; the daemon reads it only after the process is gone (its
        // socket EOF), when all its stores are visible.
        self.intent.store(Intent::pack(op, ring, index), Ordering::Relaxed);
    }

    #[inline]
    fn clear_intent(&self) {
        // Release: the daemon must not see the intent cleared but miss the
        // state change or ring operation before it.
        self.intent.store(0, Ordering::Release);
    }

    /// Takes one free slot into this client's cache (`Free → Cached`).
    /// `None` when the free ring is empty.
    pub fn take_free(&self) -> Option<SlotIndex> {
        loop {
            let mut got = None;
            let (_, popped) = self.take_free_counted(1, |i| got = Some(i));
            // Popped but not taken: a duplicate was skipped; try again.
            if got.is_some() || popped == 0 {
                return got;
            }
        }
    }

    /// Takes up to `max` free slots into this client's cache with one pass
    /// over the free ring, calling `f` for each. Returns how many.
    pub fn take_free_many(&self, max: usize, f: impl FnMut(SlotIndex)) -> usize {
        self.take_free_counted(max, f).0
    }

    /// [`Port::take_free_many`], also returning how many entries were
    /// popped (taken plus skipped duplicates).
    fn take_free_counted(&self, max: usize, mut f: impl FnMut(SlotIndex)) -> (usize, usize) {
        let ring = self.seg.free_ring();
        // Each claim below is a CAS on a header line the last releaser
        // wrote: one miss per slot, and a locked instruction waits for its
        // own. Fetched together first, a cache refill of 32 costs a few
        // misses instead of 32 in a row.
        self.prefetch_headers(&ring, max);
        let mut taken = 0;
        let mut skipped = 0;
        let popped = ring.pop_many(
            max,
            |i| self.set_intent(IntentOp::Pop, RING_FREE, i),
            |raw| match self.claim_free(raw) {
                Some(i) => {
                    taken += 1;
                    f(i)
                }
                None => skipped += 1,
            },
        );
        self.clear_intent();
        if skipped > 0 {
            ring.header().stats.skipped.fetch_add(skipped, Ordering::Relaxed);
        }
        (taken, popped)
    }

    /// Prefetches, for writing, the header lines of the slots in the next
    /// `n` entries of `ring` (at most [`PREFETCH_AHEAD`]).
    #[inline]
    fn prefetch_headers(&self, ring: &Ring<'_>, n: usize) {
        ring.peek(n.min(PREFETCH_AHEAD), |raw| {
            if let Some(i) = self.seg.slot_index(raw) {
                crate::line::prefetch_for_write(self.seg.slot(i).header());
            }
        });
    }

    /// `Free → Cached` for an index just popped from the free ring; `None`
    /// for a duplicate or an out-of-range index.
    fn claim_free(&self, raw: u32) -> Option<SlotIndex> {
        let i = self.seg.slot_index(raw)?;
        let slot = self.seg.slot(i);
        let w = slot.header().own.load(Ordering::Relaxed);
        let own = Own::unpack(w);
        if !own.is_free() {
            return None;
        }
        let new = Own::pack(own.gen.wrapping_add(1), SlotState::Cached, self.client);
        // SYNC: slot-claim — AcqRel pairs with the Release of the last
        // releaser's CAS (every group's reads of the old message happen
        // before our writes) and with any competing claim of a duplicate
        // entry.
        let claimed = slot.header().own.compare_exchange(w, new, Ordering::AcqRel, Ordering::Relaxed).is_ok();
        if claimed {
            crate::crash_point!(PoolCached);
        }
        claimed.then_some(i)
    }

    /// Stores `word` into `own` of a slot this port owns, publishing what the
    /// port wrote into the slot. SYNC: slot-handover — Release pairs with the
    /// Acquire of the receiver's claim (and of `claim_free`), including a
    /// receiver that reaches the slot through a duplicate ring entry left by
    /// a crash repair (then the ring's own Release does not order our writes
    /// for it).
    #[inline]
    fn hand_over(&self, i: SlotIndex, word: u64) {
        self.seg.slot(i).header().own.store(word, Ordering::Release);
    }

    /// Starts sending loaned slot `i` to the groups of `to`: stores
    /// `Published` with their `queued` bits, under a publish intent. Then
    /// [`Publishing::push`] pushes it onto their queues. A lossy group whose
    /// queue looks full ([`Ring::looks_full`]) is left out at once, its copy
    /// dropped and counted, without touching its consumer's lines; if that
    /// leaves no group, the slot goes back to the free ring.
    #[inline]
    pub fn begin_publish<'p>(&'p self, to: &'p Fanout, i: SlotIndex) -> Publishing<'p, 'a> {
        let mut mask = to.mask;
        let mut dropped = 0;
        for k in bits(to.mask & to.lossy) {
            let q = to.queues[k as usize] as u32;
            if self.seg.queue(q).is_none_or(|r| r.looks_full()) {
                mask &= !(1 << k);
                dropped |= 1 << k;
            }
        }
        let slot = self.seg.slot(i);
        let gen = slot.own().gen;
        if mask == 0 {
            self.give_free(i);
            return Publishing {
                port: self,
                to,
                slot: i,
                gen,
                mask,
                pending: 0,
                pushed: 0,
                dropped,
                taken_back: false,
            };
        }
        self.set_intent(IntentOp::Push, ring_of_queue(to.subsystem), i.get());
        slot.header().redelivered.store(0, Ordering::Relaxed);
        self.hand_over(i, Own::published(gen, mask, 0));
        crate::crash_point!(EnqueueMarked);
        Publishing { port: self, to, slot: i, gen, mask, pending: mask, pushed: 0, dropped, taken_back: false }
    }

    /// Pushes loaned slots onto the queue of group slot `k` of `to`, in
    /// order, each marked `Published` for that group alone, as many as fit;
    /// returns how many. The rest stay loaned. For a subsystem with one
    /// group (a message for several groups goes through
    /// [`Port::begin_publish`], one at a time, so that one intent covers
    /// every slot whose push is incomplete). Does not ring the doorbell (see
    /// [`Port::notify`]): one ring covers the batch.
    pub fn enqueue_many(&self, to: &Fanout, k: u32, slots: &[SlotIndex]) -> usize {
        let queue = to.queues[k as usize] as u32;
        let ring = self.seg.queue(queue).expect("queue index validated by the caller");
        let ring_id = ring_of_queue(to.subsystem);
        let bit = 1u16 << k;
        // SlotIndex is a checked u32; the ring wants the raw values.
        let mut raw = [0u32; 64];
        let mut done = 0;
        for chunk in slots.chunks(raw.len()) {
            for (r, s) in raw.iter_mut().zip(chunk) {
                *r = s.get();
            }
            // The last slot marked Published, and the word it was given.
            let mut marked: Option<(u32, u64)> = None;
            let n = ring.push_many(&raw[..chunk.len()], |i| {
                // The hook runs again for the same index after a lost cell
                // CAS: mark it once. A second store could overwrite a claim
                // that a receiver made meanwhile through a duplicate entry.
                if marked.is_some_and(|(m, _)| m == i) {
                    return;
                }
                self.set_intent(IntentOp::Push, ring_id, i);
                if let Some(slot) = self.seg.slot_index(i) {
                    let s = self.seg.slot(slot);
                    s.header().redelivered.store(0, Ordering::Relaxed);
                    let word = Own::published(s.own().gen, bit, 0);
                    self.hand_over(slot, word);
                    marked = Some((i, word));
                    crate::crash_point!(EnqueueMarked);
                }
            });
            done += n;
            if n < chunk.len() {
                // The one whose state was set but whose push found the ring
                // full goes back to Loaned (the others were never touched),
                // unless a receiver took it through a duplicate entry.
                if let Some((_, word)) = marked.filter(|&(i, _)| i == chunk[n].get()) {
                    if !self.roll_back(chunk[n], word) {
                        done += 1;
                    }
                }
                break;
            }
        }
        self.clear_intent();
        done
    }

    /// Undoes a publish of which nothing was pushed: `Published` (exactly
    /// `word`) back to `Loaned`, with a new `gen`. A CAS, not a store: a
    /// receiver may have claimed the slot meanwhile through a duplicate
    /// entry of it (a crash repair's), and then the message is delivered:
    /// `true` means it was rolled back and is ours again.
    fn roll_back(&self, i: SlotIndex, word: u64) -> bool {
        crate::crash_point!(EnqueueRollback);
        crate::ownership::roll_back(&self.seg.slot(i).header().own, word, self.client)
    }

    /// Takes up to `max` messages of group `g` (its `queued` bit moves to
    /// `held`), calling `f` for each right after it is claimed. Returns how
    /// many.
    pub fn dequeue_many(&self, g: &Group, max: usize, f: impl FnMut(SlotIndex)) -> usize {
        self.dequeue_counted(g, max, f).0
    }

    /// [`Port::dequeue_many`], also returning how many entries were popped
    /// (taken plus skipped duplicates).
    fn dequeue_counted(&self, g: &Group, max: usize, mut f: impl FnMut(SlotIndex)) -> (usize, usize) {
        let Some(ring) = self.seg.queue(g.queue) else { return (0, 0) };
        let ring_id = ring_of_queue(g.queue);
        // The claims below CAS header lines the publisher wrote: fetch them
        // first. Only those this call will claim (as far as it can tell):
        // a line fetched for writing is taken from every other core, a
        // co-consumer's or another group's included.
        self.prefetch_headers(&ring, max);
        let mut taken = 0;
        let mut skipped = 0;
        let popped = ring.pop_many(
            max,
            |i| self.set_intent(IntentOp::Pop, ring_id, i),
            |raw| match self.claim(g, raw) {
                Some(i) => {
                    taken += 1;
                    f(i)
                }
                None => skipped += 1,
            },
        );
        self.clear_intent();
        if popped > 0 {
            ring.notify_space_when_half_empty();
        }
        if skipped > 0 {
            ring.header().stats.skipped.fetch_add(skipped, Ordering::Relaxed);
        }
        (taken, popped)
    }

    /// Claims an index just popped from group `g`'s queue: locks its holder
    /// word for this life of the slot, then moves the group's bit from
    /// `queued` to `held`. `None` for a duplicate, a stale or out-of-range
    /// index, or a message the publisher took back meanwhile.
    fn claim(&self, g: &Group, raw: u32) -> Option<SlotIndex> {
        let i = self.seg.slot_index(raw)?;
        let slot = self.seg.slot(i);
        let bit = 1u16 << g.slot;
        // SYNC: slot-handover — Acquire pairs with the publisher's Release
        // store of `Published`: its header and body writes are visible.
        let w = slot.header().own.load(Ordering::Acquire);
        let own = Own::unpack(w);
        if own.state != Some(SlotState::Published) || own.queued & bit == 0 {
            return None;
        }
        if slot.header().queue.load(Ordering::Relaxed) as u32 != g.subsystem {
            return None;
        }
        let holder = self.seg.holder(g.slot, i)?;
        if !crate::ownership::claim(&slot.header().own, holder, w, g.slot, self.client) {
            return None;
        }
        crate::crash_point!(DequeueClaimed);
        Some(i)
    }

    /// Releases a message this client holds for group slot `k`: clears its
    /// `held` bit; the group that clears the last bit returns the slot to
    /// the free ring and wakes a publisher waiting for one. A word that
    /// does not say this group holds the slot (overwritten by a faulty
    /// process) is left alone and counted as corruption.
    pub fn release(&self, i: SlotIndex, k: u32) {
        self.set_intent(IntentOp::Push, RING_FREE, i.get());
        let last = match crate::ownership::release(&self.seg.slot(i).header().own, k) {
            Some(last) => last,
            None => {
                self.seg.header().counters.corruption.fetch_add(1, Ordering::Relaxed);
                self.clear_intent();
                return;
            }
        };
        crate::crash_point!(ReleaseMarked);
        if last {
            self.push_free(i);
        }
        self.clear_intent();
    }

    /// Returns a slot this client owns (`Cached` or `Loaned`) to the free
    /// ring and wakes a publisher waiting for one.
    pub fn give_free(&self, i: SlotIndex) {
        self.set_intent(IntentOp::Push, RING_FREE, i.get());
        let gen = self.seg.slot(i).own().gen;
        self.hand_over(i, Own::pack(gen, SlotState::Free, 0));
        crate::crash_point!(ReleaseMarked);
        self.push_free(i);
        self.clear_intent();
    }

    /// Pushes free slot `i` onto the free ring (intent set by the caller).
    fn push_free(&self, i: SlotIndex) {
        let ring = self.seg.free_ring();
        // The free ring has twice as many cells as there are slots, so it
        // only fills up if duplicates pile up: then retry while a consumer
        // takes some. A ring that stays full that long is corrupt: the slot
        // is counted lost instead of spinning forever.
        if !push_bounded(&ring, i.get()) {
            self.seg.header().counters.slots_lost.fetch_add(1, Ordering::Relaxed);
        }
        // Publishers take free slots 32 at a time (their private cache): wake
        // one when a batch is there, not at every release.
        let batch = (self.seg.params().slot_count as u64 / 2).clamp(1, FREE_WAKE_BATCH);
        ring.notify_items_at_least(batch);
    }

    /// Marks a slot this client owns as loaned (`Cached → Loaned`).
    pub fn mark_loaned(&self, i: SlotIndex) {
        let slot = self.seg.slot(i);
        // Relaxed: the slot stays with this client; only the daemon reads it
        // back, after the client is gone.
        slot.header().own.store(Own::pack(slot.own().gen, SlotState::Loaned, self.client), Ordering::Relaxed);
        crate::crash_point!(PoolLoaned);
    }

    /// Puts a loaned slot back in the private cache (`Loaned → Cached`).
    pub fn mark_cached(&self, i: SlotIndex) {
        let slot = self.seg.slot(i);
        // Relaxed: as in `mark_loaned`.
        slot.header().own.store(Own::pack(slot.own().gen, SlotState::Cached, self.client), Ordering::Relaxed);
        crate::crash_point!(PoolUnloaned);
    }

    /// Counts `n` copies dropped by lossy group queue `q` (shown by status).
    pub fn count_dropped(&self, q: u32, n: u64) {
        if let Some(ring) = self.seg.queue(q) {
            ring.header().stats.dropped.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Wakes a consumer of queue `q` if one sleeps.
    pub fn notify(&self, q: u32) {
        if let Some(ring) = self.seg.queue(q) {
            ring.notify_items();
        }
    }

    /// Wakes up to `n` consumers of queue `q`, after pushing `n` entries.
    pub fn notify_n(&self, q: u32, n: u32) {
        if let Some(ring) = self.seg.queue(q) {
            ring.notify_items_n(n);
        }
    }

    /// Takes the next message of group `g`. Duplicates and out-of-range
    /// indices are skipped. `None` when empty. An empty poll reads only the
    /// head cell: it never touches the producers' tail.
    pub fn dequeue(&self, g: &Group) -> Option<SlotIndex> {
        loop {
            let mut got = None;
            let (_, popped) = self.dequeue_counted(g, 1, |i| got = Some(i));
            if got.is_some() || popped == 0 {
                return got;
            }
        }
    }

    /// This port's client index.
    pub fn client(&self) -> u32 {
        self.client
    }
}

/// A send in progress: the slot is `Published` for its groups, and the
/// port's intent names it, until this is dropped (which also wakes the
/// receivers of every queue pushed to). See [`Port::begin_publish`].
pub struct Publishing<'p, 'a> {
    port: &'p Port<'a>,
    to: &'p Fanout,
    slot: SlotIndex,
    gen: u32,
    /// Groups the slot was published to.
    mask: u16,
    /// Groups not pushed to yet.
    pending: u16,
    /// Groups pushed to.
    pushed: u16,
    /// Lossy groups whose copy was dropped (counted when this ends, unless
    /// the send was taken back).
    dropped: u16,
    /// Rolled back: nothing was sent.
    taken_back: bool,
}

impl Publishing<'_, '_> {
    /// Pushes the message onto every pending group's queue, in order
    /// (blocking groups first). A lossy group whose queue is full drops its
    /// copy (counted in its queue's `dropped`). A blocking group whose
    /// queue is full stays pending; if nothing was pushed yet, this stops
    /// there, so that the send can still be taken back
    /// ([`Publishing::roll_back`]). Returns the groups still pending.
    #[inline]
    pub fn push(&mut self) -> u16 {
        let seg = self.port.seg;
        if self.pending.is_power_of_two() && self.pushed == 0 && self.to.lossy & self.pending == 0 {
            // One blocking group (a subsystem's usual case): push, or stop.
            let k = self.pending.trailing_zeros();
            if let Some(ring) = seg.queue(self.to.queues[k as usize] as u32) {
                if ring.push(self.slot.get()).is_ok() {
                    self.pushed = self.pending;
                    self.pending = 0;
                }
                return self.pending;
            }
        }
        for k in self.to.order() {
            let bit = 1u16 << k;
            if self.pending & bit == 0 {
                continue;
            }
            let q = self.to.queues[k as usize] as u32;
            let Some(ring) = seg.queue(q) else {
                self.drop_copy(k);
                continue;
            };
            if ring.push(self.slot.get()).is_ok() {
                self.pending &= !bit;
                self.pushed |= bit;
                if self.pending != 0 {
                    crate::crash_point!(PublishPartly);
                }
            } else if self.to.lossy & bit != 0 {
                self.drop_copy(k);
            } else if self.pushed == 0 {
                break;
            }
        }
        self.pending
    }

    /// The queue of the first blocking group still pending, to wait on.
    pub fn waiting_for(&self) -> Option<u32> {
        self.to.order().find(|k| self.pending & (1 << k) != 0).map(|k| self.to.queues[k as usize] as u32)
    }

    /// Groups not pushed to yet.
    pub fn pending(&self) -> u16 {
        self.pending
    }

    /// Groups pushed to so far.
    pub fn pushed(&self) -> u16 {
        self.pushed
    }

    /// Lossy groups whose copy was dropped so far.
    pub fn dropped(&self) -> u16 {
        self.dropped
    }

    /// Takes the message back before anything was pushed: the slot is
    /// `Loaned` again (with a new `gen`). `false` if a receiver claimed it
    /// meanwhile through a duplicate entry (a crash repair's): then it is
    /// sent after all, to that group, and stays published.
    pub fn roll_back(&mut self) -> bool {
        debug_assert_eq!(self.pushed, 0);
        let word = Own::published(self.gen, self.mask, 0);
        if self.port.roll_back(self.slot, word) {
            self.pending = 0;
            self.taken_back = true;
            return true;
        }
        let now = self.port.seg.slot(self.slot).own();
        // Still our life (a receiver's claim does not change `gen`); if
        // not, every group has had it and released it.
        let queued =
            if now.gen == self.gen & GEN_MASK && now.state == Some(SlotState::Published) { now.queued } else { 0 };
        let taken = self.mask & !queued;
        self.pushed |= taken;
        self.pending &= !taken;
        false
    }

    /// Gives up on the pending groups of `mask` (groups that left): their
    /// copies are dropped.
    pub fn give_up(&mut self, mask: u16) {
        for k in bits(self.pending & mask) {
            self.drop_copy(k);
        }
    }

    /// Gives up on the groups still pending: their copies are dropped and
    /// counted.
    pub fn abandon(&mut self) {
        for k in bits(self.pending) {
            self.drop_copy(k);
        }
    }

    /// Clears group `k`'s `queued` bit (its copy is dropped); frees the
    /// slot if that was the last bit.
    fn drop_copy(&mut self, k: u32) {
        let bit = 1u16 << k;
        self.pending &= !bit;
        let own = &self.port.seg.slot(self.slot).header().own;
        let Some(last) = crate::ownership::drop_queued(own, k, self.gen) else {
            // Claimed through a duplicate entry meanwhile: delivered.
            self.pushed |= bit;
            return;
        };
        self.dropped |= bit;
        crate::crash_point!(LossyDropped);
        if last {
            // The publish intent still names the slot: a death here is
            // repaired by the daemon's free-ring push.
            self.port.push_free(self.slot);
        }
    }
}

impl Drop for Publishing<'_, '_> {
    fn drop(&mut self) {
        self.port.clear_intent();
        for k in bits(self.pushed) {
            self.port.notify(self.to.queues[k as usize] as u32);
        }
        if !self.taken_back {
            for k in bits(self.dropped) {
                self.port.count_dropped(self.to.queues[k as usize] as u32, 1);
            }
        }
    }
}

/// Pushes `index` onto the free ring `ring`, retrying a little if it is
/// full; `false` if it stayed full. The free ring has twice as many cells as
/// there are slots, so it is never full in a healthy bus, not even for a
/// moment: a failure means corrupt words, and the retries are few so that a
/// corrupt ring costs each caller little.
pub(crate) fn push_bounded(ring: &Ring<'_>, index: u32) -> bool {
    for _ in 0..3 {
        if ring.push(index).is_ok() {
            return true;
        }
        std::thread::yield_now();
    }
    false
}

/// Counts of slots by state (a snapshot, not atomic as a whole).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Census {
    /// In the free ring.
    pub free: u64,
    /// In publishers' private caches.
    pub cached: u64,
    /// Loaned, being written.
    pub loaned: u64,
    /// Sent and waiting in queues, held by no group yet.
    pub queued: u64,
    /// Held by a receiver of at least one group.
    pub held: u64,
    /// Unknown state byte.
    pub corrupt: u64,
}

/// Counts every slot's state.
pub fn census(seg: &Segment) -> Census {
    let mut c = Census::default();
    for raw in 0..seg.params().slot_count {
        let i = seg.slot_index(raw).expect("in range");
        let own = seg.slot(i).own();
        match own.state {
            _ if own.is_free() => c.free += 1,
            Some(SlotState::Cached) => c.cached += 1,
            Some(SlotState::Loaned) => c.loaned += 1,
            Some(SlotState::Published) if own.held != 0 => c.held += 1,
            Some(SlotState::Published) => c.queued += 1,
            Some(SlotState::Free) | None => c.corrupt += 1,
        }
    }
    c
}

/// Slots each client holds (cached, loaned, or received and not yet
/// released, once per group that holds it), indexed by client entry: a
/// snapshot, as [`census`].
pub fn holdings(seg: &Segment) -> Vec<u64> {
    let p = seg.params();
    let mut by_client = vec![0u64; p.max_clients as usize];
    for raw in 0..p.slot_count {
        let i = seg.slot_index(raw).expect("in range");
        let own = seg.slot(i).own();
        match own.state {
            Some(SlotState::Cached) | Some(SlotState::Loaned) => {
                if let Some(n) = by_client.get_mut(own.who as usize) {
                    *n += 1;
                }
            }
            Some(SlotState::Published) if own.held != 0 => {
                for k in bits(own.held) {
                    let Some(word) = seg.holder(k, i) else { continue };
                    let w = word.load(Ordering::Relaxed);
                    // A holder word names the life it was locked for.
                    let client = (w as u32).wrapping_sub(1);
                    if w as u32 != 0 && crate::ownership::holder_lock(own.gen, client) == w {
                        if let Some(n) = by_client.get_mut(client as usize) {
                            *n += 1;
                        }
                    }
                }
            }
            _ => {}
        }
    }
    by_client
}

/// The free ring and a queue as [`Ring`]s, for callers that need both.
pub fn rings(seg: &Segment, q: u32) -> Option<(Ring<'_>, Ring<'_>)> {
    Some((seg.free_ring(), seg.queue(q)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Shape;

    fn seg() -> Segment {
        Segment::create(
            &Shape {
                slot_count: 8,
                slot_size: 256,
                queue_capacity: 4,
                max_subsystems: 4,
                max_clients: 3,
                max_groups: 4,
            },
            "t",
            1,
        )
        .unwrap()
    }

    /// Subsystem entry 1 with groups in slots 0 (queue 1), 1 (queue 2) and
    /// 2 (queue 3, lossy when `lossy`).
    fn three_groups(lossy: bool) -> Fanout {
        let mut queues = [0; MAX_GROUPS];
        queues[..3].copy_from_slice(&[1, 2, 3]);
        Fanout { subsystem: 1, mask: 0b111, lossy: if lossy { 0b100 } else { 0 }, queues }
    }

    fn group(to: &Fanout, k: u32) -> Group {
        Group { subsystem: to.subsystem, slot: k, queue: to.queues[k as usize] as u32 }
    }

    #[test]
    fn a_path_reads_back_whether_ascii_or_not_and_bytes_that_are_not_utf8_are_corrupt() {
        let seg = seg();
        let s = seg.slot(seg.slot_index(0).unwrap());
        for path in ["api://users/123", "api://caf\u{e9}/\u{1f600}", "a://"] {
            // SAFETY: nobody else uses this segment.
            unsafe { s.write_path(path) }.unwrap();
            // SAFETY: as above.
            let back = unsafe { s.path() }.unwrap();
            assert_eq!(back, path);
        }
        // A faulty writer's bytes: an ASCII prefix, then a lone continuation byte.
        let bad = b"api://x\x80";
        // SAFETY: in bounds (the slot's last bytes), and nobody else uses it.
        unsafe { std::ptr::copy_nonoverlapping(bad.as_ptr(), s.base.add(s.size - bad.len()), bad.len()) };
        s.header().path_len.store(bad.len() as u16, Ordering::Relaxed);
        // SAFETY: as above.
        let back = unsafe { s.path() };
        assert!(back.is_err());
    }

    fn send(p: &Port<'_>, to: &Fanout) -> SlotIndex {
        let i = p.take_free().unwrap();
        p.mark_loaned(i);
        p.segment().slot(i).header().queue.store(to.subsystem as u16, Ordering::Relaxed);
        let mut publishing = p.begin_publish(to, i);
        assert_eq!(publishing.push(), 0);
        i
    }

    #[test]
    fn a_slot_travels_free_cached_loaned_published_held_free() {
        let seg = seg();
        let p = Port::new(&seg, 0, 0).unwrap();
        let c = Port::new(&seg, 1, 0).unwrap();
        let to = Fanout::single(1);
        let i = send(&p, &to);
        assert_eq!(Own::unpack(seg.slot(i).header().own.load(Ordering::Relaxed)).queued, 1);
        assert_eq!(c.dequeue(&Group::default_of(0)), None);
        assert_eq!(c.dequeue(&Group::default_of(1)), Some(i));
        let own = seg.slot(i).own();
        assert_eq!((own.state, own.queued, own.held), (Some(SlotState::Published), 0, 1));
        assert_eq!(holder_of(seg.holder(0, i).unwrap().load(Ordering::Relaxed), own.gen), Some(1));
        c.release(i, 0);
        assert_eq!(census(&seg), Census { free: 8, ..Default::default() });
        assert_eq!(seg.port_intent(0, 0).unwrap().intent.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn every_group_gets_the_one_slot_and_the_last_release_frees_it() {
        let seg = seg();
        let p = Port::new(&seg, 0, 0).unwrap();
        let to = three_groups(false);
        let i = send(&p, &to);
        let receivers: Vec<_> = (0..3).map(|c| Port::new(&seg, c, 1).unwrap()).collect();
        for (k, r) in receivers.iter().enumerate() {
            assert_eq!(r.dequeue(&group(&to, k as u32)), Some(i), "group {k}");
        }
        assert_eq!(seg.slot(i).own().held, 0b111);
        receivers[1].release(i, 1);
        receivers[0].release(i, 0);
        assert_eq!(census(&seg).held, 1);
        receivers[2].release(i, 2);
        assert_eq!(census(&seg), Census { free: 8, ..Default::default() });
    }

    #[test]
    fn a_duplicate_queue_entry_is_skipped_not_delivered_twice() {
        let seg = seg();
        let p = Port::new(&seg, 0, 0).unwrap();
        let to = Fanout::single(0);
        let i = send(&p, &to);
        seg.queue(0).unwrap().push(i.get()).unwrap(); // a repair's duplicate
        assert_eq!(p.dequeue(&Group::default_of(0)), Some(i));
        assert_eq!(p.dequeue(&Group::default_of(0)), None);
        assert_eq!(seg.queue(0).unwrap().header().stats.skipped.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_duplicate_popped_by_a_second_receiver_of_the_group_loses_the_holder_lock() {
        let seg = seg();
        let p = Port::new(&seg, 0, 0).unwrap();
        let to = Fanout::single(0);
        let i = send(&p, &to);
        // Receiver 2 popped a duplicate and locked the holder word, then
        // stalled before moving the bit; receiver 1 pops the real entry.
        let gen = seg.slot(i).own().gen;
        seg.holder(0, i).unwrap().store(holder_lock(gen, 2), Ordering::Relaxed);
        let r = Port::new(&seg, 1, 0).unwrap();
        assert_eq!(r.dequeue(&Group::default_of(0)), None);
        assert_eq!(seg.slot(i).own().queued, 1, "still queued: the locker owns this life");
    }

    #[test]
    fn an_out_of_range_index_in_a_ring_is_skipped() {
        let seg = seg();
        seg.queue(0).unwrap().push(9999).unwrap();
        let p = Port::new(&seg, 0, 0).unwrap();
        assert_eq!(p.dequeue(&Group::default_of(0)), None);
    }

    #[test]
    fn a_full_blocking_queue_leaves_the_send_pending_and_a_roll_back_returns_the_loan() {
        let seg = seg();
        let p = Port::new(&seg, 0, 0).unwrap();
        let to = Fanout::single(0);
        for _ in 0..4 {
            send(&p, &to);
        }
        let i = p.take_free().unwrap();
        p.mark_loaned(i);
        let gen = seg.slot(i).own().gen;
        let mut publishing = p.begin_publish(&to, i);
        assert_eq!(publishing.push(), 1);
        assert_eq!(publishing.waiting_for(), Some(0));
        assert!(publishing.roll_back());
        drop(publishing);
        let own = seg.slot(i).own();
        assert_eq!((own.state, own.gen), (Some(SlotState::Loaned), gen + 1));
    }

    #[test]
    fn a_full_lossy_queue_drops_only_that_groups_copy_and_counts_it() {
        let seg = seg();
        let p = Port::new(&seg, 0, 0).unwrap();
        let to = three_groups(true);
        // Fill the lossy group's queue (3) with other messages.
        let tap = Fanout { subsystem: 1, mask: 0b100, lossy: 0b100, queues: to.queues };
        for _ in 0..4 {
            send(&p, &tap);
        }
        let i = send(&p, &to);
        assert_eq!(seg.slot(i).own().queued, 0b011);
        assert_eq!(seg.queue(3).unwrap().header().stats.dropped.load(Ordering::Relaxed), 1);
        let r = Port::new(&seg, 1, 0).unwrap();
        assert_eq!(r.dequeue(&group(&to, 0)), Some(i));
        assert_eq!(r.dequeue(&group(&to, 1)), Some(i));
        r.release(i, 0);
        r.release(i, 1);
        assert!(seg.slot(i).own().is_free());
    }

    #[test]
    fn a_message_whose_every_copy_is_dropped_frees_its_slot() {
        let seg = seg();
        let p = Port::new(&seg, 0, 0).unwrap();
        let mut queues = [0; MAX_GROUPS];
        queues[0] = 2;
        let tap = Fanout { subsystem: 2, mask: 1, lossy: 1, queues };
        for _ in 0..4 {
            send(&p, &tap);
        }
        let free = census(&seg).free;
        send(&p, &tap);
        assert_eq!(census(&seg).free, free, "the fifth was dropped and its slot is free again");
    }

    #[test]
    fn a_rollback_never_overwrites_a_claim_made_through_a_duplicate_entry() {
        let seg = seg();
        let p = Port::new(&seg, 0, 0).unwrap();
        let c = Port::new(&seg, 1, 0).unwrap();
        let to = Fanout::single(0);
        let i = p.take_free().unwrap();
        p.mark_loaned(i);
        // The publisher marked the slot published, its push found the ring
        // full, and before it rolled back a receiver popped a duplicate
        // entry of the slot (a crash repair's) and claimed it.
        let mut publishing = p.begin_publish(&to, i);
        seg.queue(0).unwrap().push(i.get()).unwrap();
        assert_eq!(c.dequeue(&Group::default_of(0)), Some(i));
        assert!(!publishing.roll_back(), "the message was delivered: not ours any more");
        assert_eq!(publishing.pushed(), 1);
        drop(publishing);
        assert_eq!(seg.slot(i).own().held, 1);
    }

    #[test]
    fn a_path_longer_than_the_slot_holds_is_an_error_not_a_panic() {
        let seg = seg(); // 256-byte slots: 192 bytes for path and body
        let p = Port::new(&seg, 0, 0).unwrap();
        let i = p.take_free().unwrap();
        let slot = seg.slot(i);
        let long = format!("a://{}", "x".repeat(200));
        // SAFETY: the slot is Cached by our client.
        let e = unsafe { slot.write_path(&long) }.unwrap_err();
        assert_eq!(e, crate::PathError::TooLongForSlot { len: 204, max: 192 });
        // SAFETY: as above.
        unsafe { slot.write_path("a://b") }.unwrap();
    }

    #[test]
    fn corrupt_lengths_in_a_slot_header_are_errors() {
        let seg = seg();
        let p = Port::new(&seg, 0, 0).unwrap();
        let i = p.take_free().unwrap();
        let slot = seg.slot(i);
        slot.header().path_len.store(1000, Ordering::Relaxed);
        // SAFETY: we own the slot (Cached by client 0).
        assert!(unsafe { slot.path() }.is_err());
        slot.header().body_len.store(100_000, Ordering::Relaxed);
        // SAFETY: as above.
        assert!(unsafe { slot.body() }.is_err());
    }

    #[test]
    fn own_words_and_intents_round_trip() {
        let w = Intent::pack(IntentOp::Pop, 7, 42);
        assert_eq!(Intent::unpack(w), Some(Intent { op: IntentOp::Pop, ring: 7, index: 42 }));
        assert_eq!(Intent::unpack(0), None);
        let o = Own::unpack(Own::published(GEN_MASK, 0x8001, 0x4002));
        assert_eq!((o.gen, o.state, o.queued, o.held), (GEN_MASK, Some(SlotState::Published), 0x8001, 0x4002));
        assert!(Own::unpack(Own::published(5, 0, 0)).is_free());
        assert_eq!(holder_of(holder_lock(GEN_MASK + 3, 0), 2), Some(0));
        assert_eq!(holder_of(0, 0), None);
    }
}
