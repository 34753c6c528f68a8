//! Bounded lock-free MPMC ring of `u32` slot indices: the subsystem queues and
//! the free list are both one of these.
//!
//! The algorithm is Dmitry Vyukov's bounded MPMC queue
//! (<https://www.1024cores.net/home/lock-free-algorithms/queues/bounded-mpmc-queue>)
//! with one change made for crash safety: a cell is one `AtomicU64` holding
//! `{seq: u32, index: u32}`, and both push and pop take the cell with a single
//! CAS on it (instead of a CAS on tail/head followed by a store to the cell).
//! Tail and head are then only hints that anyone may advance by one
//! ("helping"). The consequence: a process killed at any instruction never
//! leaves a reserved-but-unpublished cell that would stall the ring; the worst
//! it leaves is a lagging tail or head, which the next operation repairs.
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
    /// Entries popped and then skipped because their slot was no longer in
    /// this ring's state (a duplicate left by a crash repair). Written by
    /// consumers, only when that happens.
    pub skipped: AtomicU64,
    /// Messages redelivered into this ring after their receiver died.
    pub redelivered: AtomicU64,
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
        assert!(cells.len() >= 2 && cells.len().is_power_of_two() && cells.len() <= 1 << 30);
        Ring { header, cells }
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

    /// Appends `index`. Fails with [`Full`] when every cell holds an entry.
    /// Does not ring the doorbell: call [`Ring::notify_items`] after (one
    /// call may cover several pushes).
    pub fn push(&self, index: u32) -> Result<(), Full> {
        let cap = self.capacity();
        let mut t = self.header.tail.load(Ordering::Relaxed);
        loop {
            let cell = self.cell(t);
            // SYNC: cell-free — pairs with the consumer's AcqRel claim CAS:
            // a cell is refilled only after its previous entry was taken.
            let c = cell.load(Ordering::Acquire);
            let diff = seq_of(c).wrapping_sub(t as u32) as i32;
            if diff == 0 {
                // SYNC: slot-published (and doorbell): SeqCst, see module doc.
                match cell.compare_exchange_weak(c, pack(t + 1, index), Ordering::SeqCst, Ordering::Relaxed) {
                    Ok(_) => {
                        let _ = self.header.tail.compare_exchange(t, t + 1, Ordering::Relaxed, Ordering::Relaxed);
                        return Ok(());
                    }
                    Err(_) => t = self.header.tail.load(Ordering::Relaxed),
                }
            } else if diff == 1 {
                // Filled at this lap by a producer that has not moved the
                // tail yet (or died before it could): help, then retry.
                let _ = self.header.tail.compare_exchange(t, t + 1, Ordering::Relaxed, Ordering::Relaxed);
                t = self.header.tail.load(Ordering::Relaxed);
            } else if diff < 0 {
                // The cell still holds the entry of the previous lap.
                debug_assert!(diff as i64 == 1 - cap as i64 || cap > i32::MAX as u64);
                return Err(Full);
            } else {
                // Our tail was stale: the cell is already in a later lap.
                t = self.header.tail.load(Ordering::Relaxed);
            }
            crate::sync::spin_hint();
        }
    }

    /// Takes the oldest entry, or `None` when the ring is empty.
    /// `before_claim(index)` runs before the claiming CAS of each candidate
    /// (the caller records its intent there; it may run for candidates that
    /// another consumer then takes). Does not ring the space doorbell: call
    /// [`Ring::notify_space`] after.
    #[inline]
    pub fn pop_with(&self, mut before_claim: impl FnMut(u32)) -> Option<u32> {
        let cap = self.capacity();
        let mut h = self.header.head.load(Ordering::Relaxed);
        loop {
            let cell = self.cell(h);
            // SYNC: slot-published — pairs with the producer's SeqCst cell
            // CAS. SeqCst (not just Acquire) because this load is the
            // sleeper's re-check in the doorbell protocol.
            let c = cell.load(Ordering::SeqCst);
            let diff = seq_of(c).wrapping_sub((h + 1) as u32) as i32;
            if diff == 0 {
                let index = c as u32;
                before_claim(index);
                // SYNC: cell-free — Release pairs with the Acquire load in
                // `push`; Acquire keeps our later slot reads after the claim.
                match cell.compare_exchange_weak(c, pack(h + cap, index), Ordering::AcqRel, Ordering::Relaxed) {
                    Ok(_) => {
                        let _ = self.header.head.compare_exchange(h, h + 1, Ordering::Relaxed, Ordering::Relaxed);
                        return Some(index);
                    }
                    Err(_) => h = self.header.head.load(Ordering::Relaxed),
                }
            } else if diff as i64 == cap as i64 - 1 {
                // Taken at this lap by a consumer that has not moved the head.
                let _ = self.header.head.compare_exchange(h, h + 1, Ordering::Relaxed, Ordering::Relaxed);
                h = self.header.head.load(Ordering::Relaxed);
            } else if diff < 0 {
                // seq == h: nothing published at this position yet.
                return None;
            } else {
                h = self.header.head.load(Ordering::Relaxed);
            }
            crate::sync::spin_hint();
        }
    }

    /// Appends as many of `indices` as fit, in order; returns how many.
    /// Each entry is still taken by its own cell CAS (so a crash leaves no
    /// reserved cell), but the tail moves once at the end, and consecutive
    /// cells share cache lines: the consumer gets 8 entries per line moved.
    /// `before(index)` runs before each claiming CAS.
    pub fn push_many(&self, indices: &[u32], mut before: impl FnMut(u32)) -> usize {
        let mut t = self.header.tail.load(Ordering::Relaxed);
        let mut done = 0;
        while done < indices.len() {
            let cell = self.cell(t);
            // SYNC: cell-free — as in `push`.
            let c = cell.load(Ordering::Acquire);
            let diff = seq_of(c).wrapping_sub(t as u32) as i32;
            if diff == 0 {
                let index = indices[done];
                before(index);
                // SYNC: slot-published (and doorbell) — as in `push`.
                match cell.compare_exchange_weak(c, pack(t + 1, index), Ordering::SeqCst, Ordering::Relaxed) {
                    Ok(_) => {
                        done += 1;
                        t += 1;
                    }
                    Err(_) => t = t.max(self.header.tail.load(Ordering::Relaxed)),
                }
            } else if diff == 1 {
                t += 1; // filled by someone else at this lap
            } else if diff < 0 {
                break; // full
            } else {
                t = t.max(self.header.tail.load(Ordering::Relaxed));
                crate::sync::spin_hint();
            }
        }
        self.advance(&self.header.tail, t);
        done
    }

    /// Takes up to `max` entries, oldest first, calling `got(index)` right
    /// after each is taken (before the next is tried); returns how many.
    /// The head moves once at the end. `before(index)` as in
    /// [`Ring::pop_with`].
    pub fn pop_many(&self, max: usize, mut before: impl FnMut(u32), mut got: impl FnMut(u32)) -> usize {
        let cap = self.capacity();
        let mut h = self.header.head.load(Ordering::Relaxed);
        let mut done = 0;
        while done < max {
            let cell = self.cell(h);
            // SYNC: slot-published — as in `pop_with` (SeqCst: doorbell re-check).
            let c = cell.load(Ordering::SeqCst);
            let diff = seq_of(c).wrapping_sub((h + 1) as u32) as i32;
            if diff == 0 {
                let index = c as u32;
                before(index);
                // SYNC: cell-free — as in `pop_with`.
                match cell.compare_exchange_weak(c, pack(h + cap, index), Ordering::AcqRel, Ordering::Relaxed) {
                    Ok(_) => {
                        done += 1;
                        h += 1;
                        got(index);
                    }
                    Err(_) => h = h.max(self.header.head.load(Ordering::Relaxed)),
                }
            } else if diff as i64 == cap as i64 - 1 {
                h += 1; // taken by someone else at this lap
            } else if diff < 0 {
                break; // empty
            } else {
                h = h.max(self.header.head.load(Ordering::Relaxed));
                crate::sync::spin_hint();
            }
        }
        self.advance(&self.header.head, h);
        done
    }

    /// Moves a tail or head hint forward to `to` (never back).
    fn advance(&self, hint: &AtomicU64, to: u64) {
        let mut cur = hint.load(Ordering::Relaxed);
        while cur < to {
            match hint.compare_exchange_weak(cur, to, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break,
                Err(x) => cur = x,
            }
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

    /// Number of entries, approximately (tail and head are read at different
    /// times and may lag by a few positions). Never more than the capacity.
    pub fn len(&self) -> u64 {
        let h = self.header.head.load(Ordering::Relaxed);
        let t = self.header.tail.load(Ordering::Relaxed);
        t.saturating_sub(h).min(self.capacity())
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
        for pos in h..h + self.capacity() {
            let c = self.cell(pos).load(Ordering::Acquire);
            if seq_of(c) == (pos + 1) as u32 {
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
    }
}
