//! The slot pool: who owns each slot, and the port operations that move slot
//! indices between the free ring, private caches, loans, queues and
//! receivers without losing one when a process dies at any instruction.
//!
//! ## Ownership
//!
//! Every slot header starts with `own = gen << 32 | state << 24 | who`:
//!
//! | state    | who       | where the index is                         | next states |
//! |----------|-----------|--------------------------------------------|-------------|
//! | `Free`   | 0         | in the free ring (or about to be)           | Cached (CAS) |
//! | `Cached` | client    | a publisher's private cache                 | Loaned, Free |
//! | `Loaned` | client    | a loan being written                        | Queued, Cached |
//! | `Queued` | queue `q` | in ring `q` (or about to be)                | Held (CAS) |
//! | `Held`   | client    | a received `Message` not yet dropped        | Free |
//!
//! `gen` grows on every Free → Cached, so a stale view of a slot never
//! matches a later life of it. Only two transitions can race (several
//! consumers may see the same index; the daemon may re-push an index), and
//! both are CASes: `Free → Cached` and `Queued(q) → Held`. A popped index
//! whose slot is not in the ring's state any more is a duplicate left by a
//! crash repair: the popper skips it (counted in `RingStats::skipped`).
//!
//! ## Intents
//!
//! Each port (a publisher or subscriber, used by one thread at a time) has an
//! intent word in its client's table entry. Before it changes a slot's state
//! towards a ring or touches a ring, the port writes `op·ring·index` there;
//! after, it clears it. If the process dies in between, the daemon reads the
//! intent and applies one rule ([`crate::reclaim`]): if the slot is in the
//! state of that ring, push the index onto that ring. That covers the index
//! being in flight in either direction (popped but not yet claimed, state
//! changed but not yet pushed); when the index was in the ring after all, the
//! extra entry is skipped later. Slots in `Cached`, `Loaned` or `Held` name
//! their client, so the daemon finds them by a scan.

use crate::layout::{body_capacity, SlotHeader, BODY_OFFSET, FLAG_RAW, PATH_CAPACITY, SLOT_HEADER_SIZE};
use crate::queue::Ring;
use crate::segment::{Segment, SlotIndex};
use std::sync::atomic::{AtomicU64, Ordering};

/// Slot states (see the module table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SlotState {
    /// In the free ring.
    Free = 0,
    /// In a publisher's private cache.
    Cached = 1,
    /// Being written.
    Loaned = 2,
    /// In a subsystem queue.
    Queued = 3,
    /// Received, not released.
    Held = 4,
}

/// A decoded `own` word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Own {
    /// Generation.
    pub gen: u32,
    /// State, or `None` if the byte is not a known state (corruption).
    pub state: Option<SlotState>,
    /// Client index or queue index, by state.
    pub who: u32,
}

impl Own {
    /// Packs an own word.
    pub fn pack(gen: u32, state: SlotState, who: u32) -> u64 {
        debug_assert!(who < 1 << 24);
        (gen as u64) << 32 | (state as u64) << 24 | (who & 0xff_ffff) as u64
    }

    /// Unpacks one.
    pub fn unpack(w: u64) -> Own {
        let state = match (w >> 24) as u8 {
            0 => Some(SlotState::Free),
            1 => Some(SlotState::Cached),
            2 => Some(SlotState::Loaned),
            3 => Some(SlotState::Queued),
            4 => Some(SlotState::Held),
            _ => None,
        };
        Own { gen: (w >> 32) as u32, state, who: (w & 0xff_ffff) as u32 }
    }
}

/// Free slots that must be back in the free ring before a release wakes a
/// publisher sleeping for one (the size of a publisher's cache refill).
pub const FREE_WAKE_BATCH: u64 = 32;

/// Ring id of the free ring in an intent.
pub const RING_FREE: u32 = 0;

/// Ring id of subsystem queue `q` in an intent.
pub fn ring_of_queue(q: u32) -> u32 {
    q + 1
}

/// Intent operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum IntentOp {
    /// Moving an index onto the ring.
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

    /// Bytes available for the body after a path of `path_len` bytes.
    pub fn body_capacity(&self, path_len: usize) -> usize {
        body_capacity(self.size, path_len)
    }

    /// Longest path a slot of this bus holds (with an empty body).
    pub fn path_capacity(&self) -> usize {
        PATH_CAPACITY.min(self.size - BODY_OFFSET)
    }

    /// Writes the path at the end of the slot and records its length and the
    /// body offset. A path longer than [`SlotRef::path_capacity`] is an
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
        self.header.body_offset.store(BODY_OFFSET as u16, Ordering::Relaxed);
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
        std::str::from_utf8(bytes).map_err(|_| self.corrupt("path is not UTF-8"))
    }

    /// The body bytes, bounds-checked, 16-byte aligned.
    ///
    /// # Safety
    /// The caller owns the slot.
    pub unsafe fn body(&self) -> Result<&'a [u8], CorruptSlot> {
        let off = self.header.body_offset.load(Ordering::Relaxed) as usize;
        let len = self.header.body_len.load(Ordering::Relaxed) as usize;
        if off < SLOT_HEADER_SIZE || off % 16 != 0 || off > self.size || len > self.size - off {
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
        // Relaxed: the ring CAS that follows (SeqCst/AcqRel) orders it before
        // any effect a survivor could see; the daemon reads it only after the
        // process is gone (its socket EOF), when all its stores are visible.
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

    /// `Free → Cached` for an index just popped from the free ring; `None`
    /// for a duplicate or an out-of-range index.
    fn claim_free(&self, raw: u32) -> Option<SlotIndex> {
        let i = self.seg.slot_index(raw)?;
        let slot = self.seg.slot(i);
        let w = slot.header().own.load(Ordering::Relaxed);
        let own = Own::unpack(w);
        if own.state != Some(SlotState::Free) {
            return None;
        }
        let new = Own::pack(own.gen.wrapping_add(1), SlotState::Cached, self.client);
        // SYNC: slot-claim — AcqRel pairs with the Release of the releaser's
        // state store through the free ring and with any competing claim of
        // a duplicate entry.
        let claimed = slot.header().own.compare_exchange(w, new, Ordering::AcqRel, Ordering::Relaxed).is_ok();
        if claimed {
            crate::crash_point!(PoolCached);
        }
        claimed.then_some(i)
    }

    /// Stores `own` of a slot this port owns, publishing what the port wrote
    /// into the slot. SYNC: slot-handover — Release pairs with the AcqRel
    /// claim CAS of whoever takes the slot next, including a consumer that
    /// reaches it through a duplicate ring entry left by a crash repair
    /// (then the ring's own Release does not order our writes for it).
    #[inline]
    fn hand_over(&self, i: SlotIndex, state: SlotState, who: u32) -> u64 {
        let slot = self.seg.slot(i);
        let new = Own::pack(slot.own().gen, state, who);
        slot.header().own.store(new, Ordering::Release);
        new
    }

    /// Undoes a `Loaned → Queued(q)` whose push found the ring full. A CAS,
    /// not a store: a consumer may have claimed the slot meanwhile through a
    /// duplicate entry of it (a crash repair's), and then the message is
    /// delivered: `true` means it was rolled back and is still ours.
    fn roll_back(&self, i: SlotIndex, queued: u64) -> bool {
        crate::crash_point!(EnqueueRollback);
        let own = Own::unpack(queued);
        let loaned = Own::pack(own.gen, SlotState::Loaned, self.client);
        // SYNC: slot-claim — AcqRel pairs with a consumer's claim CAS; only
        // one of the two wins.
        self.seg.slot(i).header().own.compare_exchange(queued, loaned, Ordering::AcqRel, Ordering::Relaxed).is_ok()
    }

    /// Pushes loaned slots onto queue `q` in order (`Loaned → Queued(q)`),
    /// as many as fit; returns how many. The rest stay loaned. Does not ring
    /// the doorbell (see [`Port::notify`]): one ring covers the batch.
    pub fn enqueue_many(&self, q: u32, slots: &[SlotIndex]) -> usize {
        let ring = self.seg.queue(q).expect("queue index validated by the caller");
        let ring_id = ring_of_queue(q);
        // SlotIndex is a checked u32; the ring wants the raw values.
        let mut raw = [0u32; 64];
        let mut done = 0;
        for chunk in slots.chunks(raw.len()) {
            for (r, s) in raw.iter_mut().zip(chunk) {
                *r = s.get();
            }
            // The last slot marked Queued, and the word it was given.
            let mut marked: Option<(u32, u64)> = None;
            let n = ring.push_many(&raw[..chunk.len()], |i| {
                // The hook runs again for the same index after a lost cell
                // CAS: mark it once. A second store could overwrite a claim
                // that a consumer made meanwhile through a duplicate entry.
                if marked.is_some_and(|(m, _)| m == i) {
                    return;
                }
                self.set_intent(IntentOp::Push, ring_id, i);
                if let Some(slot) = self.seg.slot_index(i) {
                    marked = Some((i, self.hand_over(slot, SlotState::Queued, q)));
                    crate::crash_point!(EnqueueMarked);
                }
            });
            done += n;
            if n < chunk.len() {
                // The one whose state was set but whose push found the ring
                // full goes back to Loaned (the others were never touched),
                // unless a consumer took it through a duplicate entry.
                if let Some((_, queued)) = marked.filter(|&(i, _)| i == chunk[n].get()) {
                    if !self.roll_back(chunk[n], queued) {
                        done += 1;
                    }
                }
                break;
            }
        }
        self.clear_intent();
        done
    }

    /// Takes up to `max` messages of queue `q` (`Queued(q) → Held`), calling
    /// `f` for each right after it is claimed. Returns how many.
    pub fn dequeue_many(&self, q: u32, max: usize, f: impl FnMut(SlotIndex)) -> usize {
        self.dequeue_counted(q, max, f).0
    }

    /// [`Port::dequeue_many`], also returning how many entries were popped
    /// (taken plus skipped duplicates).
    fn dequeue_counted(&self, q: u32, max: usize, mut f: impl FnMut(SlotIndex)) -> (usize, usize) {
        let Some(ring) = self.seg.queue(q) else { return (0, 0) };
        let ring_id = ring_of_queue(q);
        let mut taken = 0;
        let mut skipped = 0;
        let popped = ring.pop_many(
            max,
            |i| self.set_intent(IntentOp::Pop, ring_id, i),
            |raw| match self.claim_queued(q, raw) {
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

    /// `Queued(q) → Held` for an index just popped from queue `q`; `None`
    /// for a duplicate or an out-of-range index.
    fn claim_queued(&self, q: u32, raw: u32) -> Option<SlotIndex> {
        let i = self.seg.slot_index(raw)?;
        let slot = self.seg.slot(i);
        let w = slot.header().own.load(Ordering::Relaxed);
        let own = Own::unpack(w);
        if own.state != Some(SlotState::Queued) || own.who != q {
            return None;
        }
        let new = Own::pack(own.gen, SlotState::Held, self.client);
        // SYNC: slot-claim — Acquire: the publisher's writes to the slot
        // (published by its ring CAS, and by its Release store of `Queued`,
        // SYNC: slot-handover) are visible; the CAS settles a race with a
        // duplicate entry.
        let claimed = slot.header().own.compare_exchange(w, new, Ordering::AcqRel, Ordering::Relaxed).is_ok();
        if claimed {
            crate::crash_point!(DequeueClaimed);
        }
        claimed.then_some(i)
    }

    /// Returns a slot this client owns (`Cached`, `Loaned` or `Held`) to the
    /// free ring and wakes a publisher waiting for one.
    pub fn give_free(&self, i: SlotIndex) {
        self.set_intent(IntentOp::Push, RING_FREE, i.get());
        self.hand_over(i, SlotState::Free, 0);
        crate::crash_point!(ReleaseMarked);
        let ring = self.seg.free_ring();
        // The free ring has twice as many cells as there are slots, so it
        // only fills up if duplicates pile up: then retry while a consumer
        // takes some. A ring that stays full that long is corrupt: the slot
        // is counted lost instead of spinning forever.
        if !push_bounded(&ring, i.get()) {
            self.seg.header().counters.slots_lost.fetch_add(1, Ordering::Relaxed);
        }
        self.clear_intent();
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

    /// Pushes a loaned slot onto queue `q` (`Loaned → Queued(q)`). On a full
    /// queue the slot stays loaned and `Err(Full)` comes back. Does not ring
    /// the doorbell (see [`Port::notify`]).
    pub fn enqueue(&self, q: u32, i: SlotIndex) -> Result<(), crate::queue::Full> {
        let ring = self.seg.queue(q).expect("queue index validated by the caller");
        self.set_intent(IntentOp::Push, ring_of_queue(q), i.get());
        let queued = self.hand_over(i, SlotState::Queued, q);
        crate::crash_point!(EnqueueMarked);
        let mut r = ring.push(i.get());
        if r.is_err() && !self.roll_back(i, queued) {
            r = Ok(()); // delivered through a duplicate entry after all
        }
        self.clear_intent();
        r
    }

    /// Wakes a consumer of queue `q` if one sleeps.
    pub fn notify(&self, q: u32) {
        if let Some(ring) = self.seg.queue(q) {
            ring.notify_items();
        }
    }

    /// Takes the next message of queue `q` (`Queued(q) → Held`). Duplicates
    /// and out-of-range indices are skipped. `None` when empty. An empty
    /// poll reads only the head cell: it never touches the producers' tail.
    pub fn dequeue(&self, q: u32) -> Option<SlotIndex> {
        loop {
            let mut got = None;
            let (_, popped) = self.dequeue_counted(q, 1, |i| got = Some(i));
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
    /// In queues.
    pub queued: u64,
    /// Received, not released.
    pub held: u64,
    /// Unknown state byte.
    pub corrupt: u64,
}

/// Counts every slot's state.
pub fn census(seg: &Segment) -> Census {
    let mut c = Census::default();
    for raw in 0..seg.params().slot_count {
        let i = seg.slot_index(raw).expect("in range");
        match seg.slot(i).own().state {
            Some(SlotState::Free) => c.free += 1,
            Some(SlotState::Cached) => c.cached += 1,
            Some(SlotState::Loaned) => c.loaned += 1,
            Some(SlotState::Queued) => c.queued += 1,
            Some(SlotState::Held) => c.held += 1,
            None => c.corrupt += 1,
        }
    }
    c
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
            &Shape { slot_count: 8, slot_size: 256, queue_capacity: 4, max_subsystems: 2, max_clients: 2 },
            "t",
            1,
        )
        .unwrap()
    }

    #[test]
    fn a_slot_travels_free_cached_loaned_queued_held_free() {
        let seg = seg();
        let p = Port::new(&seg, 0, 0).unwrap();
        let c = Port::new(&seg, 1, 0).unwrap();
        let i = p.take_free().unwrap();
        assert_eq!(seg.slot(i).own().state, Some(SlotState::Cached));
        p.mark_loaned(i);
        p.enqueue(1, i).unwrap();
        assert_eq!(seg.slot(i).own(), Own { gen: 1, state: Some(SlotState::Queued), who: 1 });
        assert_eq!(c.dequeue(0), None);
        assert_eq!(c.dequeue(1), Some(i));
        assert_eq!(seg.slot(i).own(), Own { gen: 1, state: Some(SlotState::Held), who: 1 });
        c.give_free(i);
        assert_eq!(census(&seg), Census { free: 8, ..Default::default() });
        assert_eq!(seg.port_intent(0, 0).unwrap().intent.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_duplicate_queue_entry_is_skipped_not_delivered_twice() {
        let seg = seg();
        let p = Port::new(&seg, 0, 0).unwrap();
        let i = p.take_free().unwrap();
        p.mark_loaned(i);
        p.enqueue(0, i).unwrap();
        seg.queue(0).unwrap().push(i.get()).unwrap(); // a repair's duplicate
        assert_eq!(p.dequeue(0), Some(i));
        assert_eq!(p.dequeue(0), None);
        assert_eq!(seg.queue(0).unwrap().header().stats.skipped.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn an_out_of_range_index_in_a_ring_is_skipped() {
        let seg = seg();
        seg.queue(0).unwrap().push(9999).unwrap();
        let p = Port::new(&seg, 0, 0).unwrap();
        assert_eq!(p.dequeue(0), None);
    }

    #[test]
    fn a_full_queue_leaves_the_slot_loaned() {
        let seg = seg();
        let p = Port::new(&seg, 0, 0).unwrap();
        let slots: Vec<_> = (0..5).map(|_| p.take_free().unwrap()).collect();
        for &i in &slots[..4] {
            p.mark_loaned(i);
            p.enqueue(0, i).unwrap();
        }
        p.mark_loaned(slots[4]);
        assert!(p.enqueue(0, slots[4]).is_err());
        assert_eq!(seg.slot(slots[4]).own().state, Some(SlotState::Loaned));
    }

    #[test]
    fn a_rollback_never_overwrites_a_claim_made_through_a_duplicate_entry() {
        let seg = seg();
        let p = Port::new(&seg, 0, 0).unwrap();
        let c = Port::new(&seg, 1, 0).unwrap();
        let i = p.take_free().unwrap();
        p.mark_loaned(i);
        // The publisher marked the slot queued, its push found the ring full,
        // and before it rolled back a consumer popped a duplicate entry of
        // the slot (a crash repair's) and claimed it.
        let queued = p.hand_over(i, SlotState::Queued, 0);
        seg.queue(0).unwrap().push(i.get()).unwrap();
        assert_eq!(c.dequeue(0), Some(i));
        assert!(!p.roll_back(i, queued), "the message was delivered: not ours any more");
        assert_eq!(seg.slot(i).own(), Own { gen: 1, state: Some(SlotState::Held), who: 1 });
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
        slot.header().body_offset.store(64, Ordering::Relaxed);
        slot.header().body_len.store(100_000, Ordering::Relaxed);
        // SAFETY: as above.
        assert!(unsafe { slot.body() }.is_err());
    }

    #[test]
    fn intents_round_trip() {
        let w = Intent::pack(IntentOp::Pop, 7, 42);
        assert_eq!(Intent::unpack(w), Some(Intent { op: IntentOp::Pop, ring: 7, index: 42 }));
        assert_eq!(Intent::unpack(0), None);
    }
}
