//! Bounded lock-free MPMC ring of `u32` slot indices: the subsystem queues and
//! the free list are both one of these.
//!
//! The algorithm is Dmitry Vyukov's bounded MPMC queue
//! (<https://www.1024cores.net/home/lock-free-algorithms/queues/bounded-mpmc-queue>)
//! with one change made for crash safety: a cell is one `AtomicU64` holding
//! `{seq: u32, index: u32}`, and both push and pop take the cell with a single
//! CAS on it (instead of a CAS on tail/head followed by a store to the cell).
//! Tail and head are then only hints. One state machine (`Ring::run`)
//! serves push, pop and their batch forms: from the hint it steps over
//! every position already done on its side — whoever did it, even a process
//! that died or was stopped before moving the hint — and moves the hint
//! forward at the end ("helping"). The consequence: a process killed or
//! stopped at any instruction never leaves a reserved-but-unpublished cell
//! that would stall the ring, nor a hint that others cannot get past. And
//! since the words come from shared memory, every operation is bounded
//! ([`Ring::step_budget`]): corrupt words end it as "full" or "empty",
//! counted in [`RingStats::stalls`], never as a spin without end.
//!
//! Cell states for position `p` (lap of `p` = `p / cap`), comparing `seq`
//! with `p` in wrapping 32-bit arithmetic:
//!
//! | `seq`         | meaning                                       |
//! |---------------|-----------------------------------------------|
//! | `p`           | empty, a producer at `p` may fill it          |
//! | `p + 1`       | full, a consumer at `p` may take it           |
//! | `p + cap`     | taken; empty for the producer at `p + cap`    |
//!
//! Orderings. SYNC: slot-published — the producer's cell CAS is `SeqCst`
//! (it is also the publish half of the doorbell protocol) and so has Release
//! semantics: everything written into the slot before it is visible to the
//! consumer whose Acquire load of the cell reads it. Tail and head moves are
//! `Relaxed`: they carry no data, and a stale value is detected through the
//! cell's `seq`.

use crate::doorbell::Doorbell;
use crate::line::Line;
use crate::sync::{AtomicU64, Ordering};

/// The header of one ring. `#[repr(C)]`; lives in the segment (see the
/// layout table in [`crate::layout`]), followed by its `cap` cells.
#[repr(C)]
#[derive(Debug)]
pub struct RingHeader {
    /// Next position to fill. Advanced by producers (and helpers); may lag
    /// the last filled cell by the number of producers that died between
    /// their cell CAS and their tail CAS. Never ahead of it.
    pub tail: Line<AtomicU64>,
    /// Next position to take. Same rules as `tail`, for consumers.
    pub head: Line<AtomicU64>,
    /// Consumers sleep here when the ring is empty.
    pub items: Line<Doorbell>,
    /// Producers sleep here when the ring is full.
    pub space: Line<Doorbell>,
    /// Statistics that are not positions (see [`RingStats`]).
    pub stats: Line<RingStats>,
}

/// Counters that let status tell client traffic apart from repair traffic.
#[repr(C)]
#[derive(Debug)]
pub struct RingStats {
    /// Entries pushed by the daemon (redeliveries and crash repairs). Written
    /// by the daemon only.
    pub daemon_pushes: AtomicU64,
    /// Entries popped and not delivered: skipped by a consumer because
    /// their slot was no longer in this ring's state (a duplicate left by a
    /// crash repair), or popped by the daemon when it drained a queue that
    /// nobody reads any more (a tap whose listener left, a reply queue
    /// whose requester is gone). Written by consumers and the daemon, only
    /// when that happens.
    pub skipped: AtomicU64,
    /// Messages redelivered into this ring after their receiver died.
    pub redelivered: AtomicU64,
    /// Operations that gave up after [`Ring::step_budget`] steps: the
    /// ring's words cannot be right (corruption). Written by anyone.
    pub stalls: AtomicU64,
    /// Copies dropped because this (lossy group's) ring was full. Written
    /// by publishers, only when that happens.
    pub dropped: AtomicU64,
}

/// Size in bytes of a [`RingHeader`].
pub const RING_HEADER_SIZE: usize = 5 * crate::line::LINE;
#[cfg(not(loom))]
const _: () = assert!(core::mem::size_of::<RingHeader>() == RING_HEADER_SIZE);

/// One cell: `seq << 32 | index`.
pub type Cell = AtomicU64;

#[inline]
fn pack(seq: u64, index: u32) -> u64 {
    ((seq as u32 as u64) << 32) | index as u64
}

#[inline]
fn seq_of(cell: u64) -> u32 {
    (cell >> 32) as u32
}

/// The later of two positions, in wrapping arithmetic (positions are 64-bit
/// counters; only garbage makes them wrap).
#[inline]
fn later(a: u64, b: u64) -> u64 {
    if (b.wrapping_sub(a) as i64) > 0 {
        b
    } else {
        a
    }
}

/// Which end of the ring an operation works on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Fills cells at the tail.
    Produce,
    /// Takes cells at the head.
    Consume,
}

/// Why a push failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// A ring as seen by one process: the header and its cells. The capacity is
/// `cells.len()`, which the opener computed from the validated segment
/// header; nothing read from the ring itself is used as a length.
#[derive(Clone, Copy)]
pub struct Ring<'a> {
    header: &'a RingHeader,
    cells: &'a [Cell],
}

impl<'a> Ring<'a> {
    /// Wraps a header and its cells. `cells.len()` must be a power of two
    /// of at least 2 (checked: a bad length is a layout bug, not input).
    pub fn new(header: &'a RingHeader, cells: &'a [Cell]) -> Self {
        assert!(Self::valid_capacity(cells.len()));
        Ring { header, cells }
    }

    /// [`Ring::new`] for a capacity the caller has validated already (the
    /// segment checks every ring's capacity once, when it is opened): no
    /// check on the hot path, where the segment hands out ring views for
    /// every message.
    #[inline]
    #[cfg_attr(loom, allow(dead_code))] // the segment, its only user, is not built under loom
    pub(crate) fn new_validated(header: &'a RingHeader, cells: &'a [Cell]) -> Self {
        debug_assert!(Self::valid_capacity(cells.len()));
        Ring { header, cells }
    }

    #[inline]
    fn valid_capacity(len: usize) -> bool {
        len >= 2 && len.is_power_of_two() && len <= 1 << 30
    }

    /// The header (doorbells, statistics).
    pub fn header(&self) -> &'a RingHeader {
        self.header
    }

    /// Capacity in entries.
    pub fn capacity(&self) -> u64 {
        self.cells.len() as u64
    }

    #[inline]
    fn cell(&self, pos: u64) -> &'a Cell {
        &self.cells[(pos & (self.capacity() - 1)) as usize]
    }

    /// Appends `index`. Fails with [`Full`] when every cell holds an entry
    /// (or the ring's words are corrupt, see [`Ring::step_budget`]).
    /// Does not ring the doorbell: call [`Ring::notify_items`] after (one
    /// call may cover several pushes).
    #[inline]
    pub fn push(&self, index: u32) -> Result<(), Full> {
        match self.run(Side::Produce, 1, |_| index, |_| {}, |_| {}) {
            1 => Ok(()),
            _ => Err(Full),
        }
    }

    /// Takes the oldest entry, or `None` when the ring is empty.
    /// `before_claim(index)` runs before the claiming CAS of each candidate
    /// (the caller records its intent there; it may run for candidates that
    /// another consumer then takes). Does not ring the space doorbell: call
    /// [`Ring::notify_space`] after.
    #[inline]
    pub fn pop_with(&self, before_claim: impl FnMut(u32)) -> Option<u32> {
        let mut got = None;
        self.run(Side::Consume, 1, |_| 0, before_claim, |i| got = Some(i));
        got
    }

    /// Appends as many of `indices` as fit, in order; returns how many.
    /// Each entry is still taken by its own cell CAS (so a crash leaves no
    /// reserved cell), but the tail moves once at the end, and consecutive
    /// cells share cache lines: the consumer gets 8 entries per line moved.
    /// `before(index)` runs before each claiming CAS.
    #[inline]
    pub fn push_many(&self, indices: &[u32], before: impl FnMut(u32)) -> usize {
        self.run(Side::Produce, indices.len(), |k| indices[k], before, |_| {})
    }

    /// Takes up to `max` entries, oldest first, calling `got(index)` right
    /// after each is taken (before the next is tried); returns how many.
    /// The head moves once at the end. `before(index)` as in
    /// [`Ring::pop_with`].
    #[inline]
    pub fn pop_many(&self, max: usize, before: impl FnMut(u32), got: impl FnMut(u32)) -> usize {
        self.run(Side::Consume, max, |_| 0, before, got)
    }

    /// Counts one step that claimed nothing; `false` (and a stall counted)
    /// once the operation has used up its [`Ring::step_budget`].
    #[inline]
    fn spend(&self, idle: &mut u64, max: usize) -> bool {
        *idle += 1;
        if *idle <= self.step_budget(max) {
            return true;
        }
        self.header.stats.stalls.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// Most steps that claim nothing (a pass, a lost race, a retry from a
    /// stale position) one operation of up to `n` entries may take before
    /// it gives up; its claims are bounded by `n` anyway. A healthy ring
    /// needs one pass per position a hint lags behind (about the capacity
    /// at most: positions are jumped to the hint when it is ahead), and one
    /// retry per CAS lost to a competitor (each loss is someone else's
    /// progress); the bound leaves room for thousands of those. Only words
    /// that cannot be right (or a competitor that wins thousands of races in
    /// a row) exhaust it: the operation then ends as if the ring were full
    /// or empty, and [`RingStats::stalls`] counts it, so no caller ever
    /// spins forever on shared state.
    pub fn step_budget(&self, n: usize) -> u64 {
        let n = (n as u64).min(self.capacity());
        // A hint lags the true position by at most what producers (or
        // consumers) have in flight, a batch of 64 each: 65 536 positions
        // is a thousand batches at once. Capped so that an operation on a
        // corrupt ring of millions of cells still ends within about 100 µs.
        (2 * self.capacity()).min(1 << 16) + 4 * n + 4096
    }

    /// The one state machine behind push, pop and their batch forms.
    ///
    /// From the position in the hint, each step classifies one cell (see
    /// the module table): `Take` — claim it with one CAS; `Passed` — this
    /// position is already done on this side (by a competitor, or by a
    /// process that died before moving the hint), so step past it; `Stop` —
    /// the ring is full (producer) or empty (consumer). A lost CAS reloads
    /// the hint. The hint is moved forward once at the end, to the position
    /// after the last one taken or passed: that is the help that repairs a
    /// hint left behind by a dead or preempted process, in every path.
    ///
    /// `entry(k)` is the index to push as the `k`th entry (producers);
    /// `before(index)` runs before each claiming CAS; `got(index)` after
    /// each successful claim. Returns the number of entries moved.
    #[inline(always)]
    fn run(
        &self,
        side: Side,
        max: usize,
        entry: impl FnMut(usize) -> u32,
        before: impl FnMut(u32),
        got: impl FnMut(u32),
    ) -> usize {
        let hint = match side {
            Side::Produce => &self.header.tail,
            Side::Consume => &self.header.head,
        };
        self.run_from(side, hint.load(Ordering::Relaxed), max, entry, before, got)
    }

    /// [`Ring::run`] from position `pos` (the hint, as just read; tests
    /// pass a stale one). Inlined into each caller, so that `side` and the
    /// hooks fold away: one source, four specialised copies.
    #[inline(always)]
    fn run_from(
        &self,
        side: Side,
        mut pos: u64,
        max: usize,
        mut entry: impl FnMut(usize) -> u32,
        mut before: impl FnMut(u32),
        mut got: impl FnMut(u32),
    ) -> usize {
        let cap = self.capacity();
        let hint = match side {
            Side::Produce => &self.header.tail,
            Side::Consume => &self.header.head,
        };
        let start = pos;
        let mut done = 0;
        // Steps that claimed nothing (passes, lost races, retries); only
        // those count against the budget, so the common path (a claim at
        // the first cell) pays nothing for it.
        let mut idle: u64 = 0;
        let mut moved = false;
        while done < max {
            let cell = self.cell(pos);
            let c = match side {
                // SYNC: cell-free — pairs with the consumer's AcqRel claim
                // CAS: a cell is refilled only after its entry was taken.
                Side::Produce => cell.load(Ordering::Acquire),
                // SYNC: slot-published — pairs with the producer's SeqCst
                // cell CAS. SeqCst (not just Acquire) because this load is
                // the sleeper's re-check in the doorbell protocol.
                Side::Consume => cell.load(Ordering::SeqCst),
            };
            // Positions wrap only after 2^64 operations, or when a hint was
            // overwritten with garbage: wrapping arithmetic, so that such a
            // word is no panic in a debug build either.
            let expect = match side {
                Side::Produce => pos,
                Side::Consume => pos.wrapping_add(1),
            };
            // Wrapping distance of the cell's seq from what this side
            // expects at `pos`: 0 is ours to take; ahead means this
            // position was already done on this side (filled: `pos + 1`,
            // or a later lap; taken: `pos + cap`, or a later lap); behind
            // means not yet ready (full for a producer: the previous lap's
            // entry is still there; empty for a consumer).
            let diff = seq_of(c).wrapping_sub(expect as u32) as i32;
            if diff > 0 {
                if !self.spend(&mut idle, max) {
                    break;
                }
                // Done already. If we were preempted while others went
                // round, the hint is far ahead of us: jump there instead of
                // walking (a walk of many laps would exhaust the budget).
                pos = later(pos.wrapping_add(1), hint.load(Ordering::Relaxed));
                moved = true;
                continue;
            }
            if diff < 0 {
                // Full or empty — unless our position is stale (we were
                // preempted for 2^31 positions, and the sign flipped): a
                // hint ahead of us says so.
                let h = hint.load(Ordering::Relaxed);
                if later(pos, h) != pos && self.spend(&mut idle, max) {
                    pos = h;
                    continue;
                }
                break;
            }
            let (new, index) = match side {
                Side::Produce => {
                    let index = entry(done);
                    (pack(pos.wrapping_add(1), index), index)
                }
                Side::Consume => (pack(pos.wrapping_add(cap), c as u32), c as u32),
            };
            before(index);
            let won = match side {
                Side::Produce => {
                    crate::crash_point!(RingPushBeforeCas);
                    // SYNC: slot-published (and doorbell): SeqCst, see the
                    // module doc.
                    cell.compare_exchange_weak(c, new, Ordering::SeqCst, Ordering::Relaxed).is_ok()
                }
                Side::Consume => {
                    crate::crash_point!(RingPopBeforeCas);
                    // SYNC: cell-free — Release pairs with the Acquire load
                    // of producers; Acquire keeps our slot reads after it.
                    cell.compare_exchange_weak(c, new, Ordering::AcqRel, Ordering::Relaxed).is_ok()
                }
            };
            if won {
                match side {
                    Side::Produce => crate::crash_point!(RingPushAfterCas),
                    Side::Consume => crate::crash_point!(RingPopAfterCas),
                }
                got(index);
                done += 1;
                pos = pos.wrapping_add(1);
                moved = true;
            } else {
                if !self.spend(&mut idle, max) {
                    break;
                }
                pos = later(pos, hint.load(Ordering::Relaxed));
                crate::sync::spin_hint();
            }
        }
        if moved {
            self.advance(hint, start, pos);
            match side {
                Side::Produce => crate::crash_point!(RingPushDone),
                Side::Consume => crate::crash_point!(RingPopDone),
            }
        }
        done
    }

    /// Moves a tail or head hint forward to `to` (never back). Each lost
    /// CAS means the hint moved forward; the tries are bounded all the same,
    /// against a peer that keeps writing garbage there (a hint left behind
    /// is repaired by the next operation).
    /// `start` is the hint as the operation read it: usually still there,
    /// so one CAS does it.
    #[inline(always)]
    fn advance(&self, hint: &AtomicU64, start: u64, to: u64) {
        let mut cur = match hint.compare_exchange(start, to, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(cur) => cur,
        };
        for _ in 0..64 {
            if later(cur, to) == cur {
                return;
            }
            match hint.compare_exchange_weak(cur, to, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(x) => cur = x,
            }
        }
    }

    /// Calls `f` with the index in each of the next `n` entries a consumer
    /// would take, oldest first, as far as they are filled; changes
    /// nothing. A look ahead, for prefetching: another consumer may take
    /// them first, so what `f` is given is a guess (and an index read from
    /// shared memory, to be checked before use).
    #[inline]
    pub fn peek(&self, n: usize, mut f: impl FnMut(u32)) {
        // Relaxed: a guess that the consumer's own claim re-checks.
        let head = self.header.head.load(Ordering::Relaxed);
        for k in 0..(n as u64).min(self.capacity()) {
            let pos = head.wrapping_add(k);
            let c = self.cell(pos).load(Ordering::Relaxed);
            if seq_of(c) != pos.wrapping_add(1) as u32 {
                return;
            }
            f(c as u32);
        }
    }

    /// [`Ring::pop_with`] without an intent hook.
    #[inline]
    pub fn pop(&self) -> Option<u32> {
        self.pop_with(|_| {})
    }

    /// Wakes one sleeping consumer if any announced itself.
    #[inline]
    pub fn notify_items(&self) {
        self.header.items.ring();
    }

    /// Wakes up to `n` sleeping consumers, after `n` entries were pushed
    /// at once.
    #[inline]
    pub fn notify_items_n(&self, n: u32) {
        self.header.items.ring_n(n);
    }

    /// Wakes one sleeping producer if any announced itself.
    #[inline]
    pub fn notify_space(&self) {
        self.header.space.ring();
    }

    /// After a pop: wakes the producers sleeping on a full ring, but only
    /// once it has drained to half its capacity. Waking them at every pop
    /// would cost a syscall per message while the ring stays nearly full;
    /// a producer also re-checks on its own every time-slice, so the worst
    /// a missed threshold costs is one slice.
    #[inline]
    pub fn notify_space_when_half_empty(&self) {
        if self.header.space.has_waiters() && self.len() <= self.capacity() / 2 {
            self.header.space.ring_all();
        }
    }

    /// After a push: wakes one consumer sleeping on this ring, but only once
    /// it holds at least `min` entries (used for the free ring, whose
    /// consumers take slots in batches).
    #[inline]
    pub fn notify_items_at_least(&self, min: u64) {
        if self.header.items.has_waiters() && self.len() >= min {
            self.header.items.ring_one();
        }
    }

    /// Whether a push would find the ring full now, judged from the
    /// producers' words alone (the tail hint and the cell there), so that a
    /// publisher can pass over a lossy group whose queue is full without
    /// pulling its consumer's cache lines. A hint: a lagging tail reads as
    /// not full, and the push itself then decides.
    #[inline]
    pub fn looks_full(&self) -> bool {
        let t = self.header.tail.load(Ordering::Relaxed);
        // Relaxed: a hint (see above).
        let seq = seq_of(self.cell(t).load(Ordering::Relaxed));
        (seq.wrapping_sub(t as u32) as i32) < 0
    }

    /// Number of entries, approximately (tail and head are read at different
    /// times and may lag by a few positions). Never more than the capacity.
    pub fn len(&self) -> u64 {
        let h = self.header.head.load(Ordering::Relaxed);
        let t = self.header.tail.load(Ordering::Relaxed);
        t.saturating_sub(h).min(self.capacity())
    }

    /// Whether any cell holds an entry, whatever the hints say: cell `i`
    /// is full at position `p ≡ i` exactly when its `seq` is `p + 1`, so
    /// when `seq ≡ i + 1 (mod cap)`. One pass over the cells (the daemon's
    /// check before it gives a queue to another subsystem).
    pub fn holds_entries(&self) -> bool {
        let mask = (self.capacity() - 1) as u32;
        self.cells.iter().enumerate().any(|(i, cell)| {
            // Relaxed: a snapshot; the caller also requires the queue idle
            // for a second.
            let seq = seq_of(cell.load(Ordering::Relaxed));
            seq.wrapping_sub(i as u32 + 1) & mask == 0
        })
    }

    /// Whether [`Ring::len`] is zero.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total positions pushed so far (the tail, a lower bound).
    pub fn pushed(&self) -> u64 {
        self.header.tail.load(Ordering::Relaxed)
    }

    /// Total positions popped so far (the head, a lower bound).
    pub fn popped(&self) -> u64 {
        self.header.head.load(Ordering::Relaxed)
    }

    /// Calls `f` with every index that is currently in a full cell. Only
    /// meaningful when nobody pushes or pops concurrently (tests, audits).
    pub fn for_each_queued(&self, mut f: impl FnMut(u32)) {
        // Audit only, on a quiescent ring: Acquire pairs with the last
        // producers' and consumers' cell CASes (SYNC: slot-published).
        let h = self.header.head.load(Ordering::Acquire);
        for k in 0..self.capacity() {
            let pos = h.wrapping_add(k);
            let c = self.cell(pos).load(Ordering::Acquire);
            if seq_of(c) == pos.wrapping_add(1) as u32 {
                f(c as u32);
            }
        }
    }
}

/// Initial value of cell `i` of an empty ring (the creator writes these).
pub fn initial_cell(i: u64) -> u64 {
    pack(i, 0)
}

/// A ring on the heap, for unit tests and loom models: the same `RingHeader`
/// and cells as in the segment.
#[cfg(any(test, loom))]
pub struct OwnedRing {
    header: Box<RingHeader>,
    cells: Box<[Cell]>,
}

#[cfg(any(test, loom))]
impl OwnedRing {
    /// An empty ring of `cap` cells.
    pub fn new(cap: usize) -> Self {
        let stats = || RingStats {
            daemon_pushes: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            redelivered: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        };
        #[cfg(not(loom))]
        let bell = Doorbell::zeroed;
        #[cfg(loom)]
        let bell = Doorbell::new;
        let header = Box::new(RingHeader {
            tail: Line(AtomicU64::new(0)),
            head: Line(AtomicU64::new(0)),
            items: Line(bell()),
            space: Line(bell()),
            stats: Line(stats()),
        });
        let cells = (0..cap as u64).map(|i| AtomicU64::new(initial_cell(i))).collect();
        OwnedRing { header, cells }
    }

    /// A view of it.
    pub fn ring(&self) -> Ring<'_> {
        Ring::new(&self.header, &self.cells)
    }

    /// Pushes `index` as a producer killed between its cell CAS and its
    /// tail move would: the cell at the tail is filled, the tail stays.
    /// Panics if that cell is not free (a test set-up error).
    pub fn push_and_die(&self, index: u32) {
        let ring = self.ring();
        let t = self.header.tail.load(Ordering::Relaxed);
        let c = ring.cell(t);
        let seen = c.load(Ordering::Acquire);
        assert_eq!(seq_of(seen), t as u32, "the cell at the tail is free");
        // SYNC: slot-published — as a producer's cell CAS.
        c.store(pack(t + 1, index), Ordering::SeqCst);
    }

    /// Pops as a consumer killed between its cell CAS and its head move
    /// would; returns the index taken. Panics on an empty ring.
    pub fn pop_and_die(&self) -> u32 {
        let ring = self.ring();
        let h = self.header.head.load(Ordering::Relaxed);
        let c = ring.cell(h);
        let seen = c.load(Ordering::Acquire);
        assert_eq!(seq_of(seen), (h + 1) as u32, "the cell at the head is full");
        // SYNC: cell-free — as a consumer's claim CAS.
        c.store(pack(h + self.cells.len() as u64, seen as u32), Ordering::SeqCst);
        seen as u32
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn push_then_pop_returns_entries_in_order() {
        let r = OwnedRing::new(4);
        let ring = r.ring();
        for i in 10..14 {
            ring.push(i).unwrap();
        }
        assert_eq!(ring.len(), 4);
        for i in 10..14 {
            assert_eq!(ring.pop(), Some(i));
        }
        assert_eq!(ring.pop(), None);
    }

    #[test]
    fn push_to_a_full_ring_fails_and_keeps_contents() {
        let r = OwnedRing::new(2);
        let ring = r.ring();
        ring.push(1).unwrap();
        ring.push(2).unwrap();
        assert_eq!(ring.push(3), Err(Full));
        assert_eq!(ring.pop(), Some(1));
        ring.push(3).unwrap();
        assert_eq!(ring.pop(), Some(2));
        assert_eq!(ring.pop(), Some(3));
    }

    #[test]
    fn ring_wraps_over_many_laps() {
        let r = OwnedRing::new(4);
        let ring = r.ring();
        for i in 0..10_000u32 {
            ring.push(i).unwrap();
            if i % 3 == 0 {
                ring.push(i + 1_000_000).unwrap();
                assert_eq!(ring.pop(), Some(i));
                assert_eq!(ring.pop(), Some(i + 1_000_000));
            } else {
                assert_eq!(ring.pop(), Some(i));
            }
        }
        assert!(ring.is_empty());
    }

    #[test]
    fn batches_push_and_pop_in_order_and_stop_at_full_and_empty() {
        let r = OwnedRing::new(8);
        let ring = r.ring();
        assert_eq!(ring.push_many(&[1, 2, 3, 4, 5], |_| {}), 5);
        assert_eq!(ring.push_many(&[6, 7, 8, 9, 10], |_| {}), 3);
        assert_eq!(ring.len(), 8);
        let mut got = Vec::new();
        assert_eq!(ring.pop_many(6, |_| {}, |i| got.push(i)), 6);
        assert_eq!(got, [1, 2, 3, 4, 5, 6]);
        ring.push(11).unwrap();
        got.clear();
        assert_eq!(ring.pop_many(10, |_| {}, |i| got.push(i)), 3);
        assert_eq!(got, [7, 8, 11]);
        assert!(ring.is_empty());
        // Single operations interleave with batches.
        ring.push(12).unwrap();
        assert_eq!(ring.push_many(&[13], |_| {}), 1);
        assert_eq!(ring.pop(), Some(12));
        assert_eq!(ring.pop(), Some(13));
    }

    #[test]
    fn concurrent_batch_producers_and_consumers_lose_and_duplicate_nothing() {
        use std::sync::atomic::{AtomicBool, AtomicU8, Ordering::*};
        let n: u32 = if cfg!(miri) { 64 } else { 40_000 };
        let r = OwnedRing::new(64);
        let done = AtomicBool::new(false);
        let seen: Vec<AtomicU8> = (0..2 * n).map(|_| AtomicU8::new(0)).collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        std::thread::scope(|s| {
            let consumers: Vec<_> = (0..2)
                .map(|_| {
                    let (ring, seen, done) = (r.ring(), &seen, &done);
                    s.spawn(move || loop {
                        let got = ring.pop_many(
                            7,
                            |_| {},
                            |i| {
                                seen[i as usize].fetch_add(1, Relaxed);
                            },
                        );
                        if got == 0
                            && done.load(Acquire)
                            && ring.pop_many(
                                7,
                                |_| {},
                                |i| {
                                    seen[i as usize].fetch_add(1, Relaxed);
                                },
                            ) == 0
                        {
                            return;
                        }
                        assert!(std::time::Instant::now() < deadline, "consumer timed out");
                    })
                })
                .collect();
            let producers: Vec<_> = (0..2u32)
                .map(|p| {
                    let ring = r.ring();
                    s.spawn(move || {
                        let all: Vec<u32> = (p * n..(p + 1) * n).collect();
                        let mut at = 0;
                        while at < all.len() {
                            at += ring.push_many(&all[at..(at + 5).min(all.len())], |_| {});
                            assert!(std::time::Instant::now() < deadline, "producer timed out");
                        }
                    })
                })
                .collect();
            producers.into_iter().for_each(|h| h.join().unwrap());
            done.store(true, Release);
            consumers.into_iter().for_each(|h| h.join().unwrap());
        });
        assert!(seen.iter().all(|c| c.load(Relaxed) == 1), "an entry was lost or duplicated");
        assert_eq!(r.header.stats.stalls.load(Relaxed), 0, "a healthy ring never stalls");
    }

    #[test]
    fn a_lagging_tail_left_by_a_dead_producer_is_repaired_by_the_next_push() {
        let r = OwnedRing::new(4);
        let ring = r.ring();
        ring.push(7).unwrap();
        // Simulate a producer that filled cell 1 and died before moving the tail.
        ring.cell(1).store(pack(2, 8), Ordering::SeqCst);
        ring.push(9).unwrap();
        assert_eq!(ring.pop(), Some(7));
        assert_eq!(ring.pop(), Some(8));
        assert_eq!(ring.pop(), Some(9));
    }

    #[test]
    fn a_lagging_head_left_by_a_dead_consumer_is_repaired_by_the_next_pop() {
        let r = OwnedRing::new(4);
        let ring = r.ring();
        ring.push(1).unwrap();
        ring.push(2).unwrap();
        // A consumer took cell 0 and died before moving the head.
        ring.cell(0).store(pack(4, 1), Ordering::SeqCst);
        assert_eq!(ring.pop(), Some(2));
        assert_eq!(ring.pop(), None);
    }

    #[test]
    fn a_push_after_a_dead_producers_entry_was_taken_does_not_wedge() {
        // A producer filled cell 0 and died before moving the tail; a
        // consumer then took that entry. The cell now reads "taken at lap
        // 0" while the tail still says 0.
        let r = OwnedRing::new(4);
        let ring = r.ring();
        ring.cell(0).store(pack(1, 5), Ordering::SeqCst);
        assert_eq!(ring.pop(), Some(5));
        ring.push(6).unwrap();
        assert_eq!(ring.push_many(&[7, 8], |_| {}), 2);
        assert_eq!(ring.pop(), Some(6));
        assert_eq!(ring.pop_many(4, |_| {}, |_| {}), 2);
        assert_eq!(ring.header.tail.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn a_pop_after_a_dead_consumers_cell_was_refilled_does_not_wedge() {
        // A consumer took cell 0 and died before moving the head; producers
        // then filled the ring's next lap into that cell.
        let r = OwnedRing::new(2);
        let ring = r.ring();
        ring.push(1).unwrap();
        ring.cell(0).store(pack(2, 1), Ordering::SeqCst); // taken, head still 0
        ring.push(2).unwrap();
        ring.push(3).unwrap(); // position 2 = cell 0, next lap
        assert_eq!(ring.pop(), Some(2));
        assert_eq!(ring.pop(), Some(3));
        assert_eq!(ring.pop(), None);
        ring.push(4).unwrap();
        let mut got = Vec::new();
        assert_eq!(ring.pop_many(4, |_| {}, |i| got.push(i)), 1);
        assert_eq!(got, [4]);
    }

    #[test]
    fn an_operation_far_behind_the_hint_jumps_to_it_instead_of_stalling() {
        // A producer and a consumer preempted (stale local positions) while
        // others went round the ring many times.
        let r = OwnedRing::new(4);
        let ring = r.ring();
        for i in 0..100_000u32 {
            ring.push(i).unwrap();
            assert_eq!(ring.pop(), Some(i));
        }
        let mut got = None;
        let stale = 3; // as if read before the 100 000 laps
        assert_eq!(ring.run_from(Side::Produce, stale, 1, |_| 7, |_| {}, |_| {}), 1, "the push jumped to the tail");
        ring.run_from(Side::Consume, stale, 1, |_| 0, |_| {}, |i| got = Some(i));
        assert_eq!(got, Some(7));
        assert_eq!(ring.header.stats.stalls.load(Ordering::Relaxed), 0);
        // A position 2^31 behind: the seq distance changes sign.
        ring.push(8).unwrap();
        let far = ring.header.head.load(Ordering::Relaxed).wrapping_sub(1 << 31);
        ring.run_from(Side::Consume, far, 1, |_| 0, |_| {}, |i| got = Some(i));
        assert_eq!(got, Some(8));
    }

    #[test]
    fn holds_entries_sees_an_entry_that_the_tail_does_not_count_yet() {
        let r = OwnedRing::new(4);
        let ring = r.ring();
        assert!(!ring.holds_entries());
        for i in 0..6 {
            ring.push(i).unwrap();
            ring.pop().unwrap();
        }
        assert!(!ring.holds_entries());
        // A producer filled position 6 (cell 2) and stopped before moving
        // the tail: the hints say empty, the cells do not.
        ring.cell(6).store(pack(7, 9), Ordering::SeqCst);
        assert!(ring.is_empty());
        assert!(ring.holds_entries());
        assert_eq!(ring.pop(), Some(9));
        assert!(!ring.holds_entries());
    }

    #[test]
    fn every_operation_on_a_corrupt_ring_returns_and_is_counted() {
        let r = OwnedRing::new(8);
        let ring = r.ring();
        // Every cell claims to be far ahead of any hint: each step passes.
        for i in 0..8 {
            ring.cell(i).store(pack(u32::MAX as u64 / 4, 3), Ordering::SeqCst);
        }
        ring.header.tail.store(u64::MAX / 2, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let _ = ring.push(1);
        let _ = ring.pop();
        let _ = ring.push_many(&[1, 2, 3], |_| {});
        let _ = ring.pop_many(3, |_| {}, |_| {});
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert!(ring.header.stats.stalls.load(Ordering::Relaxed) >= 1);
    }

    #[test]
    fn concurrent_producers_and_consumers_lose_and_duplicate_nothing() {
        use std::sync::atomic::{AtomicBool, AtomicU8, Ordering::*};
        use std::time::{Duration, Instant};
        let n: u32 = if cfg!(miri) { 200 } else { 50_000 };
        let r = OwnedRing::new(64);
        let producers_done = AtomicBool::new(false);
        let seen: Vec<AtomicU8> = (0..4 * n).map(|_| AtomicU8::new(0)).collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        std::thread::scope(|s| {
            let consumers: Vec<_> = (0..2)
                .map(|_| {
                    let (ring, seen, done) = (r.ring(), &seen, &producers_done);
                    s.spawn(move || loop {
                        match ring.pop() {
                            Some(i) => {
                                seen[i as usize].fetch_add(1, Relaxed);
                            }
                            None if done.load(Acquire) => return,
                            None => assert!(Instant::now() < deadline, "consumer timed out"),
                        }
                    })
                })
                .collect();
            let producers: Vec<_> = (0..4u32)
                .map(|p| {
                    let ring = r.ring();
                    s.spawn(move || {
                        for i in 0..n {
                            while ring.push(p * n + i).is_err() {
                                assert!(Instant::now() < deadline, "producer timed out");
                                std::hint::spin_loop();
                            }
                        }
                    })
                })
                .collect();
            producers.into_iter().for_each(|h| h.join().unwrap());
            producers_done.store(true, Release);
            consumers.into_iter().for_each(|h| h.join().unwrap());
        });
        assert!(seen.iter().all(|c| c.load(Relaxed) == 1), "an entry was lost or duplicated");
        assert_eq!(r.header.stats.stalls.load(Relaxed), 0, "a healthy ring never stalls");
    }
}
