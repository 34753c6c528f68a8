//! Reclaim: what the daemon does with everything a dead client owned.
//!
//! Called after the client's control connection closed (the process exited
//! or was killed), so none of its threads will touch the segment again and
//! everything it stored is visible. In order:
//!
//! 1. Intents. For each port intent `op·ring·index` the client left: if slot
//!    `index` is in the state that means "belongs in that ring" (`Free` for
//!    the free ring, `Queued(q)` for queue `q`), push `index` onto that ring.
//!    If the index was in the ring after all, the extra entry is skipped by
//!    whoever pops it second (see [`crate::slot_pool`]).
//! 2. Slots. Every slot whose `own` names the client: `Cached` and `Loaned`
//!    go back to the free ring; `Held` goes back to the queue it was sent to,
//!    flagged redelivered (at-least-once). A held slot whose queue id is out
//!    of range is freed and counted as corrupt.
//! 3. Wake everyone sleeping on the rings that changed.
//!
//! The daemon's own pushes are counted in `RingStats::daemon_pushes`, so that
//! `sent` (tail minus daemon pushes) counts only what clients sent.

use crate::layout::FLAG_REDELIVERED;
use crate::segment::{Segment, SlotIndex};
use crate::slot_pool::{ring_of_queue, Intent, Own, SlotState, RING_FREE};
use std::sync::atomic::Ordering;

/// What a reclaim did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Intents found and repaired by a re-push.
    pub intents_repaired: u64,
    /// Slots returned to the free ring.
    pub freed: u64,
    /// Messages put back into their queue.
    pub redelivered: u64,
    /// Slots with a corrupt header, freed.
    pub corrupt: u64,
    /// (queue, slot) pairs that could not be requeued because the queue was
    /// full; the caller retries them with [`retry_requeue`].
    pub pending: Vec<(u32, SlotIndex)>,
    /// Intent words that cannot be right (unknown op, index out of range),
    /// or repairs impossible because a ring was corrupt.
    pub corrupt_words: u64,
}

/// Reclaims everything client `client` owned. See the module doc.
pub fn reclaim_client(seg: &Segment, client: u32) -> Report {
    let mut full = std::collections::BTreeSet::new();
    let mut report = Report::default();
    let counters = &seg.header().counters;
    let mut free_ring = FreeRing::new(seg);

    for port in 0..crate::layout::PORTS_PER_CLIENT as u32 {
        let Some(rec) = seg.port_intent(client, port) else { break };
        // SYNC: intent — pairs with the port's Release clear; the client is
        // gone, so this reads its last intent.
        // A port that died asleep: withdraw its announcement, so that
        // ringers stop paying a wake call for it.
        if let Some((ring, space)) = crate::doorbell::counted_on(rec.bell.swap(0, Ordering::Relaxed)) {
            let ring = if ring == RING_FREE { Some(seg.free_ring()) } else { seg.queue(ring - 1) };
            match ring {
                Some(r) if space => r.header().space.withdraw_dead(),
                Some(r) => r.header().items.withdraw_dead(),
                None => report.corrupt_words += 1,
            }
        }
        let word = rec.intent.swap(0, Ordering::AcqRel);
        let Some(intent) = Intent::unpack(word) else {
            if word != 0 {
                report.corrupt_words += 1;
            }
            continue;
        };
        let Some(i) = seg.slot_index(intent.index) else {
            report.corrupt_words += 1;
            continue;
        };
        crate::crash_point!(ReclaimIntent);
        let own = seg.slot(i).own();
        let ring = if intent.ring == RING_FREE {
            (own.state == Some(SlotState::Free)).then(|| seg.free_ring())
        } else {
            let q = intent.ring - 1;
            (own.state == Some(SlotState::Queued) && own.who == q).then(|| seg.queue(q)).flatten()
        };
        if let Some(ring) = ring {
            if ring.push(i.get()).is_ok() {
                ring.header().stats.daemon_pushes.fetch_add(1, Ordering::Relaxed);
                ring.notify_items();
                report.intents_repaired += 1;
            } else if intent.ring != RING_FREE {
                report.pending.push((intent.ring - 1, i));
            } else {
                // The free ring has room for every slot twice: full means
                // corrupt. The slot stays Free and out of circulation.
                report.corrupt_words += 1;
                counters.slots_lost.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    for raw in 0..seg.params().slot_count {
        let i = seg.slot_index(raw).expect("in range");
        let slot = seg.slot(i);
        // SYNC: slot-claim — Acquire pairs with the claiming CASes of the
        // dead client; the CASes below race only with consumers popping a
        // duplicate entry, which CAS the same word.
        let w = slot.header().own.load(Ordering::Acquire);
        let own = Own::unpack(w);
        if own.who != client {
            continue;
        }
        match own.state {
            Some(SlotState::Cached | SlotState::Loaned) => {
                free(seg, &mut free_ring, i, w, own.gen);
                report.freed += 1;
            }
            Some(SlotState::Held) => {
                let q = slot.header().queue.load(Ordering::Relaxed) as u32;
                if seg.queue(q).is_none() {
                    free(seg, &mut free_ring, i, w, own.gen);
                    report.corrupt += 1;
                    continue;
                }
                slot.header().flags.fetch_or(FLAG_REDELIVERED, Ordering::Relaxed);
                let queued = Own::pack(own.gen, SlotState::Queued, q);
                if slot.header().own.compare_exchange(w, queued, Ordering::AcqRel, Ordering::Relaxed).is_err() {
                    continue;
                }
                crate::crash_point!(ReclaimRequeue);
                report.redelivered += 1;
                // A queue that was full once in this reclaim gets the rest
                // as pending at once: each push into a full (or corrupt)
                // ring costs a try, and the daemon must stay responsive.
                if full.contains(&q) || !requeue(seg, q, i) {
                    full.insert(q);
                    report.pending.push((q, i));
                }
            }
            _ => {}
        }
    }
    seg.free_ring().notify_items();
    counters.slots_reclaimed.fetch_add(report.freed + report.corrupt, Ordering::Relaxed);
    counters.messages_redelivered.fetch_add(report.redelivered, Ordering::Relaxed);
    counters.intents_repaired.fetch_add(report.intents_repaired, Ordering::Relaxed);
    counters.corrupt_slots.fetch_add(report.corrupt, Ordering::Relaxed);
    counters.corruption.fetch_add(report.corrupt_words, Ordering::Relaxed);
    report
}

/// How long the daemon retries a push onto a free ring that looks full
/// before it concludes the ring is corrupt. The free ring has room for
/// every slot twice, so only duplicates piling up (consumers drain them
/// within microseconds) or overwritten words make it look full; the daemon,
/// single-threaded, must not wait for long: `slot_pool::push_bounded`'s
/// 1000 yields take seconds on a loaded machine, per slot.
const FREE_PUSH_PATIENCE: std::time::Duration = std::time::Duration::from_millis(1);

/// The free ring as the daemon pushes onto it during one reclaim or drain:
/// once a push found it full for [`FREE_PUSH_PATIENCE`], it is taken for
/// corrupt, and later pushes try only once each, so that one reclaim costs
/// at most one wait, however many slots it frees.
struct FreeRing<'a> {
    ring: crate::queue::Ring<'a>,
    broken: bool,
}

impl<'a> FreeRing<'a> {
    fn new(seg: &'a Segment) -> Self {
        FreeRing { ring: seg.free_ring(), broken: false }
    }

    /// Pushes `index`; `false` if the ring stayed full.
    fn push(&mut self, index: u32) -> bool {
        let mut since = None;
        for attempt in 0u32.. {
            let stalls = self.ring.header().stats.stalls.load(Ordering::Relaxed);
            if self.ring.push(index).is_ok() {
                return true;
            }
            if self.broken {
                return false;
            }
            if self.ring.header().stats.stalls.load(Ordering::Relaxed) != stalls {
                // The push gave up on words that cannot be right: no
                // amount of waiting helps, and each try costs a budget.
                break;
            }
            if attempt < 16 {
                std::hint::spin_loop();
                continue;
            }
            let t = *since.get_or_insert_with(std::time::Instant::now);
            if t.elapsed() >= FREE_PUSH_PATIENCE {
                break;
            }
            std::thread::yield_now();
        }
        self.broken = true;
        false
    }
}

fn free(seg: &Segment, free_ring: &mut FreeRing<'_>, i: SlotIndex, w: u64, gen: u32) {
    let slot = seg.slot(i);
    // SYNC: slot-claim — AcqRel pairs with a consumer's claim CAS of a
    // duplicate entry of this slot; only one of them wins.
    if slot
        .header()
        .own
        .compare_exchange(w, Own::pack(gen, SlotState::Free, 0), Ordering::AcqRel, Ordering::Relaxed)
        .is_ok()
    {
        crate::crash_point!(ReclaimFree);
        if free_ring.push(i.get()) {
            free_ring.ring.header().stats.daemon_pushes.fetch_add(1, Ordering::Relaxed);
        } else {
            // Only a corrupt free ring stays full (it has room for every
            // slot twice): the slot stays Free and out of circulation.
            let c = &seg.header().counters;
            c.slots_lost.fetch_add(1, Ordering::Relaxed);
            c.corruption.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn requeue(seg: &Segment, q: u32, i: SlotIndex) -> bool {
    let ring = seg.queue(q).expect("checked by the caller");
    if ring.push(i.get()).is_err() {
        return false;
    }
    ring.header().stats.daemon_pushes.fetch_add(1, Ordering::Relaxed);
    ring.header().stats.redelivered.fetch_add(1, Ordering::Relaxed);
    ring.notify_items();
    true
}

/// Retries requeues that found their queue full: at most
/// [`RETRIES_PER_CALL`] of them, and none into a queue already found full
/// in this call. Returns those still pending (oldest first).
pub fn retry_requeue(seg: &Segment, pending: Vec<(u32, SlotIndex)>) -> Vec<(u32, SlotIndex)> {
    let mut full = std::collections::BTreeSet::new();
    let mut tries = 0;
    pending
        .into_iter()
        .filter(|&(q, i)| {
            if full.contains(&q) || tries >= RETRIES_PER_CALL {
                return true;
            }
            tries += 1;
            let stuck = !requeue(seg, q, i);
            if stuck {
                full.insert(q);
            }
            stuck
        })
        .collect()
}

/// Pushes one [`retry_requeue`] call tries at most: a tick of the daemon's
/// loop stays short even with thousands of messages waiting for corrupt
/// queues.
pub const RETRIES_PER_CALL: usize = 64;

/// Empties queue `q`, returning its messages' slots to the free ring (the
/// daemon does this for a requester's reply queue once the requester is
/// gone: nobody will read what is left there). Returns how many. Takes at
/// most one ring's capacity of entries per call, so that a client that
/// keeps pushing cannot keep the daemon here.
pub fn drain_queue(seg: &Segment, q: u32) -> u64 {
    let Some(ring) = seg.queue(q) else { return 0 };
    let mut free_ring = FreeRing::new(seg);
    let mut freed = 0;
    for _ in 0..ring.capacity() {
        let Some(raw) = ring.pop() else { break };
        let Some(i) = seg.slot_index(raw) else { continue };
        // SYNC: slot-claim — as in `reclaim_client`.
        let w = seg.slot(i).header().own.load(Ordering::Acquire);
        let own = Own::unpack(w);
        if own.state == Some(SlotState::Queued) && own.who == q {
            free(seg, &mut free_ring, i, w, own.gen);
            freed += 1;
        }
    }
    seg.free_ring().notify_items();
    seg.header().counters.slots_reclaimed.fetch_add(freed, Ordering::Relaxed);
    freed
}

/// The ring id a queue has in intents (re-exported for the daemon's audit).
pub fn queue_ring_id(q: u32) -> u32 {
    ring_of_queue(q)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Shape;
    use crate::slot_pool::{census, Census, IntentOp, Port};

    fn seg() -> Segment {
        Segment::create(
            &Shape { slot_count: 8, slot_size: 256, queue_capacity: 8, max_subsystems: 2, max_clients: 2 },
            "t",
            1,
        )
        .unwrap()
    }

    #[test]
    fn cached_loaned_and_held_slots_of_a_dead_client_are_reclaimed() {
        let seg = seg();
        let dead = Port::new(&seg, 1, 0).unwrap();
        let live = Port::new(&seg, 0, 0).unwrap();
        let cached = dead.take_free().unwrap();
        let loaned = dead.take_free().unwrap();
        dead.mark_loaned(loaned);
        let sent = live.take_free().unwrap();
        live.mark_loaned(sent);
        seg.slot(sent).header().queue.store(1, Ordering::Relaxed);
        live.enqueue(1, sent).unwrap();
        assert_eq!(dead.dequeue(1), Some(sent));
        let _ = cached;

        let r = reclaim_client(&seg, 1);
        assert_eq!((r.freed, r.redelivered, r.corrupt), (2, 1, 0));
        assert!(r.pending.is_empty());
        // The redelivered message reaches the next subscriber, flagged.
        assert_eq!(live.dequeue(1), Some(sent));
        assert_ne!(seg.slot(sent).header().flags.load(Ordering::Relaxed) & FLAG_REDELIVERED, 0);
        live.give_free(sent);
        assert_eq!(census(&seg), Census { free: 8, ..Default::default() });
    }

    #[test]
    fn an_index_popped_but_not_claimed_by_a_dead_client_is_pushed_back() {
        let seg = seg();
        // The dead client popped slot 0 from the free ring (intent recorded)
        // and died before its claim CAS.
        let raw = seg.free_ring().pop().unwrap();
        seg.port_intent(1, 3).unwrap().intent.store(Intent::pack(IntentOp::Pop, RING_FREE, raw), Ordering::Relaxed);
        assert_eq!(seg.free_ring().len(), 7);
        let r = reclaim_client(&seg, 1);
        assert_eq!(r.intents_repaired, 1);
        assert_eq!(seg.free_ring().len(), 8);
    }

    #[test]
    fn a_message_marked_queued_but_never_pushed_by_a_dead_client_is_delivered() {
        let seg = seg();
        let dead = Port::new(&seg, 1, 0).unwrap();
        let i = dead.take_free().unwrap();
        // Simulate death between the state store and the ring push.
        seg.slot(i).header().own.store(Own::pack(1, SlotState::Queued, 0), Ordering::Relaxed);
        seg.port_intent(1, 0)
            .unwrap()
            .intent
            .store(Intent::pack(IntentOp::Push, ring_of_queue(0), i.get()), Ordering::Relaxed);
        reclaim_client(&seg, 1);
        let live = Port::new(&seg, 0, 0).unwrap();
        assert_eq!(live.dequeue(0), Some(i));
    }

    #[test]
    fn a_repair_of_an_index_that_was_in_the_ring_after_all_delivers_it_once() {
        let seg = seg();
        let dead = Port::new(&seg, 1, 0).unwrap();
        let i = dead.take_free().unwrap();
        dead.mark_loaned(i);
        dead.enqueue(0, i).unwrap();
        // Died right after the push, before clearing the intent.
        seg.port_intent(1, 0)
            .unwrap()
            .intent
            .store(Intent::pack(IntentOp::Push, ring_of_queue(0), i.get()), Ordering::Relaxed);
        reclaim_client(&seg, 1);
        let live = Port::new(&seg, 0, 0).unwrap();
        assert_eq!(live.dequeue(0), Some(i));
        assert_eq!(live.dequeue(0), None);
    }

    #[test]
    fn a_client_that_died_asleep_on_a_doorbell_no_longer_counts_as_a_waiter() {
        let seg = seg();
        let dead = Port::new(&seg, 1, 2).unwrap();
        let items = &seg.queue(1).unwrap().header().items;
        let space = &seg.queue(0).unwrap().header().space;
        // Announced on queue 1's items bell, and died before retiring.
        dead.sleeper(Some(1), false).unwrap().announce();
        assert_eq!(items.waiters(), 1);
        // A live port sleeps on queue 0's space bell meanwhile.
        let live = Port::new(&seg, 0, 0).unwrap();
        let s = live.sleeper(Some(0), true).unwrap();
        s.announce();
        reclaim_client(&seg, 1);
        assert_eq!(items.waiters(), 0);
        assert_eq!(space.waiters(), 1, "another client's announcement is untouched");
        s.retire();
        assert_eq!(space.waiters(), 0);
        // A record in a "maybe" state, or a corrupt one, changes nothing.
        seg.port_intent(1, 2).unwrap().bell.store(1, Ordering::Relaxed);
        reclaim_client(&seg, 1);
        assert_eq!(items.waiters(), 0);
    }

    #[test]
    fn a_free_ring_that_looks_full_costs_one_short_wait_per_reclaim_not_one_per_slot() {
        let seg = seg();
        let dead = Port::new(&seg, 1, 0).unwrap();
        let taken: Vec<_> = (0..6).map(|_| dead.take_free().unwrap()).collect();
        // A faulty process moved the tail hint laps ahead: every push now
        // finds a cell of an earlier lap, which reads as full.
        let tail = &seg.free_ring().header().tail;
        tail.store(tail.load(Ordering::Relaxed) + 16 * 100, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let r = reclaim_client(&seg, 1);
        assert!(started.elapsed() < FREE_PUSH_PATIENCE * 50, "took {:?}", started.elapsed());
        assert_eq!(r.freed, taken.len() as u64);
        let c = &seg.header().counters;
        assert_eq!(c.slots_lost.load(Ordering::Relaxed), taken.len() as u64);
        assert_eq!(c.corruption.load(Ordering::Relaxed), taken.len() as u64);
    }

    #[test]
    fn a_held_slot_with_a_corrupt_queue_id_is_freed_and_counted() {
        let seg = seg();
        let dead = Port::new(&seg, 1, 0).unwrap();
        let i = dead.take_free().unwrap();
        seg.slot(i).header().own.store(Own::pack(1, SlotState::Held, 1), Ordering::Relaxed);
        seg.slot(i).header().queue.store(999, Ordering::Relaxed);
        let r = reclaim_client(&seg, 1);
        assert_eq!(r.corrupt, 1);
        assert_eq!(census(&seg).free, 8);
    }
}
