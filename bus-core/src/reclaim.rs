//! Reclaim: what the daemon does with everything a dead client owned.
//!
//! Called after the client's control connection closed (the process exited
//! or was killed), so none of its threads will touch the segment again and
//! everything it stored is visible. In order:
//!
//! 1. Intents. For each port intent `op·ring·index` the client left:
//!    - a push or pop on the free ring: if slot `index` is free, push it
//!      onto the free ring;
//!    - a publish (`Push` to subsystem entry `s`): if the slot is still
//!      `Published` to `s`, push it onto the queue of every group whose
//!      `queued` bit is set and whose holder word is not locked for this
//!      life (the groups the publisher had not reached, and maybe some it
//!      had); if no bit is left, push it onto the free ring;
//!    - a pop from group queue `q`: if the slot still waits for that group
//!      and nobody locked it, push it back onto `q`.
//!
//!    If the index was in the ring after all, the extra entry is skipped by
//!    whoever pops it second (see [`crate::slot_pool`]).
//! 2. Slots. Every slot whose `own` names the client (`Cached`, `Loaned`)
//!    goes back to the free ring. Every group bit of a `Published` slot
//!    whose holder word names the client for this life goes back to that
//!    group's queue only: `held` → `queued`, flagged redelivered for that
//!    group (at-least-once); a bit still `queued` (locked, not yet claimed)
//!    just gets its entry back. The other groups are not touched. A bit
//!    whose group is gone (or whose subsystem entry is corrupt) is cleared,
//!    counted as corrupt, and the slot freed if it was the last.
//! 3. Wake everyone sleeping on the rings that changed.
//!
//! The daemon's own pushes are counted in `RingStats::daemon_pushes`, so that
//! `sent` (tail minus daemon pushes) counts only what clients sent.

use crate::routing::{self, Kind};
use crate::segment::{Segment, SlotIndex};
use crate::slot_pool::{bits, holder_of, ring_of_queue, Group, Intent, IntentOp, Own, SlotState, RING_FREE};
use std::sync::atomic::Ordering;

/// What a reclaim did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Intents found and repaired by a re-push.
    pub intents_repaired: u64,
    /// Slots returned to the free ring.
    pub freed: u64,
    /// Messages put back into a group's queue.
    pub redelivered: u64,
    /// Slots with a corrupt header, freed.
    pub corrupt: u64,
    /// Copies dropped: for a group that is gone, or for a lossy group whose
    /// queue was full.
    pub dropped: u64,
    /// (queue, slot) pairs that could not be requeued because the queue was
    /// full; the caller retries them with [`retry_requeue`].
    pub pending: Vec<(u32, SlotIndex)>,
    /// Intent words that cannot be right (unknown op, index out of range),
    /// or repairs impossible because a ring was corrupt.
    pub corrupt_words: u64,
}

/// The group whose queue is entry `q`.
pub fn group_of_queue(seg: &Segment, q: u32) -> Option<Group> {
    match routing::read_as_writer(seg, q)?.kind {
        Kind::Subsystem { .. } => Some(Group::default_of(q)),
        Kind::Group { subsystem, slot } => Some(Group { subsystem, slot, queue: q }),
    }
}

/// The queue of group slot `k` of subsystem entry `s`, as the routing
/// table says now. The subsystem entry lists every group that still has an
/// entry, receiving or not (see the daemon), so a bit whose slot has no
/// queue belongs to a group that is gone.
fn queue_of(seg: &Segment, s: u32, k: u32) -> Option<u32> {
    let Kind::Subsystem { queues, .. } = routing::read_as_writer(seg, s)?.kind else { return None };
    if k == 0 {
        return Some(s);
    }
    let q = *queues.get(k as usize)? as u32;
    // A group slot names a group entry of this subsystem and slot.
    match routing::read_as_writer(seg, q)?.kind {
        Kind::Group { subsystem, slot } if subsystem == s && slot == k => Some(q),
        _ => None,
    }
}

/// Reclaims everything client `client` owned. See the module doc.
pub fn reclaim_client(seg: &Segment, client: u32) -> Report {
    let mut full = std::collections::BTreeSet::new();
    let mut report = Report::default();
    let counters = &seg.header().counters;
    let mut free_ring = FreeRing::new(seg);
    let mut woken_dead = Vec::new();

    for port in 0..crate::layout::PORTS_PER_CLIENT as u32 {
        let Some(rec) = seg.port_intent(client, port) else { break };
        // SYNC: intent — pairs with the port's Release clear; the client is
        // gone, so this reads its last intent.
        // A port that died asleep: withdraw its announcement, so that
        // ringers stop paying a wake call for it.
        if let Some((ring, space)) = crate::doorbell::counted_on(rec.bell.swap(0, Ordering::Relaxed)) {
            let queue = ring.checked_sub(1).filter(|_| ring != RING_FREE);
            let ring = if ring == RING_FREE { Some(seg.free_ring()) } else { seg.queue(ring - 1) };
            match ring {
                Some(r) if space => r.header().space.withdraw_dead(),
                Some(r) => {
                    r.header().items.withdraw_dead();
                    // It may have been woken and died before taking the
                    // wake-up (see the end of this function).
                    woken_dead.push(queue);
                }
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
        // SYNC: slot-claim — Acquire pairs with the stores and CASes of the
        // dead client and of live ones.
        let w = seg.slot(i).header().own.load(Ordering::Acquire);
        let own = Own::unpack(w);
        if intent.ring == RING_FREE {
            if own.is_free() {
                if free_ring.push(i.get()) {
                    free_ring.ring.header().stats.daemon_pushes.fetch_add(1, Ordering::Relaxed);
                    report.intents_repaired += 1;
                } else {
                    // The free ring has room for every slot twice: full means
                    // corrupt. The slot stays free and out of circulation.
                    report.corrupt_words += 1;
                    counters.slots_lost.fetch_add(1, Ordering::Relaxed);
                }
            }
            continue;
        }
        let q = intent.ring - 1;
        if own.state != Some(SlotState::Published) {
            continue;
        }
        let s = seg.slot(i).header().queue.load(Ordering::Relaxed) as u32;
        // The groups this intent may leave without their entry.
        let (subsystem, groups) = match intent.op {
            IntentOp::Push => (q, own.queued),
            IntentOp::Pop => match group_of_queue(seg, q) {
                Some(g) => (g.subsystem, own.queued & (1 << g.slot)),
                None => continue,
            },
        };
        if s != subsystem {
            continue;
        }
        if intent.op == IntentOp::Push && own.queued | own.held == 0 {
            // Its last copy was dropped; the free-ring push was not made.
            if free_ring.push(i.get()) {
                report.intents_repaired += 1;
            }
            continue;
        }
        for k in bits(groups) {
            let locked = seg.holder(k, i).map(|h| holder_of(h.load(Ordering::Relaxed), own.gen));
            if locked != Some(None) {
                continue; // claimed (the scan below handles a dead holder)
            }
            match queue_of(seg, s, k) {
                Some(target) => {
                    if requeue(seg, &mut free_ring, &mut full, &mut report, (target, i, k), false) {
                        report.intents_repaired += 1;
                    }
                }
                None => {
                    report.dropped += 1;
                    clear_bit(seg, &mut free_ring, i, k);
                }
            }
        }
    }

    for raw in 0..seg.params().slot_count {
        let i = seg.slot_index(raw).expect("in range");
        let slot = seg.slot(i);
        // SYNC: slot-claim — Acquire pairs with the claiming CASes of the
        // dead client; the CASes below race only with live receivers and
        // publishers, which CAS the same word.
        let w = slot.header().own.load(Ordering::Acquire);
        let own = Own::unpack(w);
        match own.state {
            Some(SlotState::Cached | SlotState::Loaned) if own.who == client => {
                free(seg, &mut free_ring, i, w, own.gen);
                report.freed += 1;
            }
            Some(SlotState::Published) => {
                for k in bits(own.queued | own.held) {
                    let Some(holder) = seg.holder(k, i) else { continue };
                    let h = holder.load(Ordering::Relaxed);
                    if holder_of(h, own.gen) != Some(client) {
                        continue;
                    }
                    let s = slot.header().queue.load(Ordering::Relaxed) as u32;
                    let Some(target) = queue_of(seg, s, k) else {
                        if s >= seg.params().max_subsystems {
                            report.corrupt += 1;
                        } else {
                            report.dropped += 1;
                        }
                        clear_bit(seg, &mut free_ring, i, k);
                        continue;
                    };
                    let redeliver = own.held & (1 << k) != 0;
                    if redeliver && !unhold(seg, i, own.gen, k) {
                        continue;
                    }
                    // SYNC: holder-lock — AcqRel pairs with receivers' lock
                    // CASes: after this, the next receiver may lock it.
                    let _ = holder.compare_exchange(h, 0, Ordering::AcqRel, Ordering::Relaxed);
                    crate::crash_point!(ReclaimRequeue);
                    requeue(seg, &mut free_ring, &mut full, &mut report, (target, i, k), redeliver);
                }
            }
            _ => {}
        }
    }
    seg.free_ring().notify_items();
    // A dead client may have left a queue's bell with `pending` set (woken,
    // and killed before it took the wake-up: its record still says
    // counted, so its queue is in `woken_dead`), or an item pushed without
    // the ring that follows (killed between the two: the queue is not
    // empty). A blocked thread re-checks each liveness slice; an
    // asynchronous waiter parks without a timer and would wait for the
    // next message. So the sleepers of those queues are woken once: each
    // re-checks and sleeps again (taking the wake-up clears `pending`).
    for q in 0..seg.params().max_subsystems {
        if let Some(ring) = seg.queue(q) {
            let bell = &ring.header().items;
            if bell.has_waiters() && (woken_dead.contains(&Some(q)) || !ring.is_empty()) {
                bell.ring_all();
            }
        }
    }
    counters.slots_reclaimed.fetch_add(report.freed + report.corrupt, Ordering::Relaxed);
    counters.messages_redelivered.fetch_add(report.redelivered, Ordering::Relaxed);
    counters.intents_repaired.fetch_add(report.intents_repaired, Ordering::Relaxed);
    counters.corrupt_slots.fetch_add(report.corrupt, Ordering::Relaxed);
    counters.corruption.fetch_add(report.corrupt_words, Ordering::Relaxed);
    report
}

/// Pushes slot `i` back onto `target`, the queue of its group slot `k`;
/// `true` if pushed. A queue that was full once in this reclaim gets the
/// rest as pending at once (each push into a full, or corrupt, ring costs a
/// try, and the daemon must stay responsive), except a lossy group's: a
/// lossy group never holds anything up, not even a repair, and its copy is
/// dropped.
fn requeue(
    seg: &Segment,
    free_ring: &mut FreeRing<'_>,
    full: &mut std::collections::BTreeSet<u32>,
    report: &mut Report,
    (target, i, k): (u32, SlotIndex, u32),
    redeliver: bool,
) -> bool {
    if !full.contains(&target) && push_entry(seg, target, i, redeliver) {
        report.redelivered += redeliver as u64;
        return true;
    }
    if is_lossy(seg, target) {
        report.dropped += 1;
        count_dropped(seg, target);
        clear_bit(seg, free_ring, i, k);
    } else {
        full.insert(target);
        report.pending.push((target, i));
        // Redelivered all the same, once the queue has room (see
        // `retry_requeue`, which pushes it uncounted): counted now, in the
        // bus's count and the group's alike. (A lossy group's copy above is
        // dropped, and counted as that.)
        if redeliver {
            report.redelivered += 1;
            if let Some(ring) = seg.queue(target) {
                ring.header().stats.redelivered.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    false
}

/// Whether entry `q` is a lossy group.
fn is_lossy(seg: &Segment, q: u32) -> bool {
    routing::read_as_writer(seg, q).is_some_and(|v| v.flags & crate::layout::ROUTE_LOSSY != 0)
}

/// Counts a copy dropped for queue `q`'s group.
fn count_dropped(seg: &Segment, q: u32) {
    if let Some(ring) = seg.queue(q) {
        ring.header().stats.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// Moves group `k`'s bit of slot `i` (life `gen`) from `held` back to
/// `queued`, and flags the message redelivered for that group. `false` if
/// the word changed under us so that it no longer says so.
fn unhold(seg: &Segment, i: SlotIndex, gen: u32, k: u32) -> bool {
    let slot = seg.slot(i);
    slot.header().redelivered.fetch_or(1 << k, Ordering::Relaxed);
    crate::ownership::unhold(&slot.header().own, k, gen)
}

/// Clears group `k`'s bit (queued or held) of slot `i`, and frees the slot
/// if it was the last.
fn clear_bit(seg: &Segment, free_ring: &mut FreeRing<'_>, i: SlotIndex, k: u32) {
    if crate::ownership::clear(&seg.slot(i).header().own, k) == Some(true) {
        push_free(seg, free_ring, i);
    }
}

/// Pushes freed slot `i` onto the free ring, or counts it lost.
fn push_free(seg: &Segment, free_ring: &mut FreeRing<'_>, i: SlotIndex) {
    if free_ring.push(i.get()) {
        free_ring.ring.header().stats.daemon_pushes.fetch_add(1, Ordering::Relaxed);
    } else {
        // Only a corrupt free ring stays full (it has room for every slot
        // twice): the slot stays free and out of circulation.
        let c = &seg.header().counters;
        c.slots_lost.fetch_add(1, Ordering::Relaxed);
        c.corruption.fetch_add(1, Ordering::Relaxed);
    }
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
    // SYNC: slot-claim — AcqRel pairs with a publisher's claim CAS of a
    // duplicate free entry of this slot; only one of them wins.
    if slot
        .header()
        .own
        .compare_exchange(w, Own::pack(gen, SlotState::Free, 0), Ordering::AcqRel, Ordering::Relaxed)
        .is_ok()
    {
        crate::crash_point!(ReclaimFree);
        push_free(seg, free_ring, i);
    }
}

/// Pushes slot `i` onto queue `q` for the daemon; `false` if the ring is
/// full.
fn push_entry(seg: &Segment, q: u32, i: SlotIndex, redelivered: bool) -> bool {
    let Some(ring) = seg.queue(q) else { return false };
    if ring.push(i.get()).is_err() {
        return false;
    }
    ring.header().stats.daemon_pushes.fetch_add(1, Ordering::Relaxed);
    if redelivered {
        ring.header().stats.redelivered.fetch_add(1, Ordering::Relaxed);
    }
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
            let stuck = !push_entry(seg, q, i, false);
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

/// Empties the queue of group `g`, dropping that group's copy of each
/// message in it (the slot is freed when no other group still has it).
/// The daemon does this for a requester's reply queue once the requester is
/// gone, and for a tap once its listener left: nobody will read what is
/// left there. Returns how many copies. Takes at most one ring's capacity
/// of entries per call, so that a client that keeps pushing cannot keep the
/// daemon here.
pub fn drain_queue(seg: &Segment, g: &Group) -> u64 {
    let Some(ring) = seg.queue(g.queue) else { return 0 };
    let mut free_ring = FreeRing::new(seg);
    let mut drained = 0;
    let mut popped = 0;
    for _ in 0..ring.capacity() {
        let Some(raw) = ring.pop() else { break };
        popped += 1;
        let Some(i) = seg.slot_index(raw) else { continue };
        let slot = seg.slot(i);
        // SYNC: slot-claim — as in `reclaim_client`.
        let own = slot.own();
        let locked = seg.holder(g.slot, i).map(|h| holder_of(h.load(Ordering::Relaxed), own.gen));
        if own.state == Some(SlotState::Published)
            && own.queued & (1 << g.slot) != 0
            && slot.header().queue.load(Ordering::Relaxed) as u32 == g.subsystem
            && locked == Some(None)
        {
            clear_bit(seg, &mut free_ring, i, g.slot);
            drained += 1;
        }
    }
    seg.free_ring().notify_items();
    seg.header().counters.slots_reclaimed.fetch_add(drained, Ordering::Relaxed);
    // What the daemon popped here reached no receiver: not delivered
    // (status counts `popped - skipped`). Not `dropped` either: that counts
    // copies never pushed, and status adds it to what was pushed.
    ring.header().stats.skipped.fetch_add(popped, Ordering::Relaxed);
    drained
}

/// Drops group `g`'s copy of every message that still has its bit (the
/// group is gone: its queue is empty and it has had no subscriber for a
/// while, so such a bit is left by a publish that raced the group's
/// removal), freeing slots whose last bit it was. A scan of every slot
/// header; the daemon runs it when it removes a group. Returns how many.
pub fn clear_group(seg: &Segment, g: &Group) -> u64 {
    let mut free_ring = FreeRing::new(seg);
    let mut cleared = 0;
    for raw in 0..seg.params().slot_count {
        let i = seg.slot_index(raw).expect("in range");
        let slot = seg.slot(i);
        let own = slot.own();
        if own.state == Some(SlotState::Published)
            && (own.queued | own.held) & (1 << g.slot) != 0
            && slot.header().queue.load(Ordering::Relaxed) as u32 == g.subsystem
        {
            clear_bit(seg, &mut free_ring, i, g.slot);
            cleared += 1;
        }
    }
    seg.free_ring().notify_items();
    cleared
}

/// Clears holder words left locked for a life of their slot that is over
/// (the slot's `gen` moved on), `count` words from word `from` on (words
/// are numbered group slot by group slot, `slot_count` each). Returns where
/// the next call starts (wrapping) and how many were cleared. The daemon's
/// audit runs it a chunk at a time, so that no lock outlives the 2^24 lives
/// after which its `gen` would match the slot's again (see
/// [`crate::slot_pool`]). A word whose slot still is in that life is left:
/// its holder has the message, or is between its two claim steps.
pub fn clear_stale_holders(seg: &Segment, from: u64, count: u64) -> (u64, u64) {
    let p = seg.params();
    let total = p.max_groups as u64 * p.slot_count as u64;
    let mut at = from % total;
    let mut cleared = 0;
    for _ in 0..count.min(total) {
        let (k, raw) = ((at / p.slot_count as u64) as u32, (at % p.slot_count as u64) as u32);
        at = (at + 1) % total;
        let Some(i) = seg.slot_index(raw) else { continue };
        let Some(h) = seg.holder(k, i) else { continue };
        if crate::ownership::clear_stale(&seg.slot(i).header().own, h) {
            cleared += 1;
        }
    }
    (at, cleared)
}

/// The ring id a queue has in intents (re-exported for the daemon's audit).
pub fn queue_ring_id(q: u32) -> u32 {
    ring_of_queue(q)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{Shape, MAX_GROUPS};
    use crate::routing::Expected;
    use crate::slot_pool::{census, holder_lock, Census, Port};

    fn seg() -> Segment {
        let seg = Segment::create(
            &Shape {
                slot_count: 8,
                slot_size: 256,
                queue_capacity: 8,
                max_subsystems: 4,
                max_clients: 3,
                max_groups: 4,
            },
            "t",
            1,
        )
        .unwrap();
        // Subsystem 0 with one group; subsystem 1 with groups in slots 0
        // (queue 1), 1 (queue 2) and 2 (queue 3).
        let mut queues = [0; MAX_GROUPS];
        routing::rewrite(
            &seg,
            0,
            Some(Expected {
                name: "a",
                flags: 0,
                subscribers: 1,
                kind: Kind::Subsystem { groups: 1, lossy: 0, queues },
            }),
        );
        queues[1] = 2;
        queues[2] = 3;
        let kind = Kind::Subsystem { groups: 0b111, lossy: 0, queues };
        routing::rewrite(&seg, 1, Some(Expected { name: "b", flags: 0, subscribers: 1, kind }));
        for (q, k) in [(2, 1), (3, 2)] {
            let kind = Kind::Group { subsystem: 1, slot: k };
            routing::rewrite(&seg, q, Some(Expected { name: "g", flags: 0, subscribers: 1, kind }));
        }
        seg
    }

    fn fanout(seg: &Segment, s: u32) -> crate::slot_pool::Fanout {
        routing::read(seg, s).unwrap().fanout().unwrap()
    }

    /// Takes a slot and loans it for a message to subsystem `s`.
    fn loaned(p: &Port<'_>, s: u32) -> SlotIndex {
        let i = p.take_free().unwrap();
        p.mark_loaned(i);
        p.segment().slot(i).header().queue.store(s as u16, Ordering::Relaxed);
        i
    }

    /// Takes, loans and publishes a slot to subsystem `s`, pushing to
    /// `push_to` of its groups only (as if the publisher died there), with
    /// its intent left set when it pushed to fewer than all.
    fn publish(p: &Port<'_>, s: u32, all: bool) -> SlotIndex {
        let to = fanout(p.segment(), s);
        let i = loaned(p, s);
        let mut publishing = p.begin_publish(&to, i);
        if all {
            assert_eq!(publishing.push(), 0);
        } else {
            std::mem::forget(publishing); // died before any push
        }
        i
    }

    #[test]
    fn cached_loaned_and_held_slots_of_a_dead_client_are_reclaimed() {
        let seg = seg();
        let dead = Port::new(&seg, 1, 0).unwrap();
        let live = Port::new(&seg, 0, 0).unwrap();
        let _cached = dead.take_free().unwrap();
        let loaned = dead.take_free().unwrap();
        dead.mark_loaned(loaned);
        let sent = publish(&live, 0, true);
        assert_eq!(dead.dequeue(&Group::default_of(0)), Some(sent));

        let r = reclaim_client(&seg, 1);
        assert_eq!((r.freed, r.redelivered, r.corrupt), (2, 1, 0));
        assert!(r.pending.is_empty());
        // The redelivered message reaches the next subscriber, flagged.
        assert_eq!(live.dequeue(&Group::default_of(0)), Some(sent));
        assert_eq!(seg.slot(sent).header().redelivered.load(Ordering::Relaxed), 1);
        live.release(sent, 0);
        assert_eq!(census(&seg), Census { free: 8, ..Default::default() });
    }

    #[test]
    fn an_index_popped_but_not_claimed_by_a_dead_client_is_pushed_back() {
        let seg = seg();
        // The dead client popped a slot from the free ring (intent recorded)
        // and died before its claim CAS.
        let raw = seg.free_ring().pop().unwrap();
        seg.port_intent(1, 3).unwrap().intent.store(Intent::pack(IntentOp::Pop, RING_FREE, raw), Ordering::Relaxed);
        assert_eq!(seg.free_ring().len(), 7);
        let r = reclaim_client(&seg, 1);
        assert_eq!(r.intents_repaired, 1);
        assert_eq!(seg.free_ring().len(), 8);
    }

    #[test]
    fn a_message_published_but_never_pushed_by_a_dead_client_reaches_every_group() {
        let seg = seg();
        let dead = Port::new(&seg, 1, 0).unwrap();
        let i = publish(&dead, 1, false);
        reclaim_client(&seg, 1);
        let live = Port::new(&seg, 0, 0).unwrap();
        let to = fanout(&seg, 1);
        for k in 0..3 {
            let g = Group { subsystem: 1, slot: k, queue: to.queues[k as usize] as u32 };
            assert_eq!(live.dequeue(&g), Some(i), "group {k}");
            assert_eq!(live.dequeue(&g), None, "group {k}: once");
        }
    }

    #[test]
    fn a_publisher_killed_between_two_groups_has_its_push_completed_once_per_group() {
        let seg = seg();
        let dead = Port::new(&seg, 1, 0).unwrap();
        let to = fanout(&seg, 1);
        let i = loaned(&dead, 1);
        let publishing = dead.begin_publish(&to, i);
        // It pushed to group 0 only; group 0's receiver already has it.
        seg.queue(1).unwrap().push(i.get()).unwrap();
        std::mem::forget(publishing);
        let live = Port::new(&seg, 0, 0).unwrap();
        let g0 = Group::default_of(1);
        assert_eq!(live.dequeue(&g0), Some(i));
        let r = reclaim_client(&seg, 1);
        assert_eq!(r.intents_repaired, 2);
        for k in 1..3 {
            let g = Group { subsystem: 1, slot: k, queue: to.queues[k as usize] as u32 };
            assert_eq!(live.dequeue(&g), Some(i), "group {k}");
            live.release(i, k);
        }
        assert_eq!(live.dequeue(&g0), None, "group 0 is not sent it again");
        live.release(i, 0);
        assert_eq!(census(&seg), Census { free: 8, ..Default::default() });
    }

    #[test]
    fn a_publisher_killed_after_dropping_the_last_copy_has_its_slot_freed_once() {
        let seg = seg();
        let dead = Port::new(&seg, 1, 0).unwrap();
        let to = fanout(&seg, 1);
        let i = loaned(&dead, 1);
        let publishing = dead.begin_publish(&to, i);
        // It dropped every group's copy (lossy groups whose queues were
        // full, or groups it gave up on), the last one too, and died at
        // `lossy-dropped` before its free-ring push. (The order of the
        // steps in `Publishing::drop_copy` is the crash-point test's.)
        let gen = seg.slot(i).own().gen;
        let own = &seg.slot(i).header().own;
        let last: Vec<_> = (0..3).map(|k| crate::ownership::drop_queued(own, k, gen)).collect();
        assert_eq!(last, [Some(false), Some(false), Some(true)]);
        std::mem::forget(publishing);
        assert_eq!(seg.free_ring().len(), 7);

        let r = reclaim_client(&seg, 1);
        assert_eq!((r.intents_repaired, r.freed, r.dropped), (1, 0, 0));
        assert_eq!(seg.free_ring().len(), 8, "the slot is back in the free ring, once");
        assert_eq!(census(&seg), Census { free: 8, ..Default::default() });
        for q in 0..4 {
            assert_eq!(seg.queue(q).unwrap().len(), 0, "queue {q}: no group gets a dropped copy");
        }
        // A second reclaim of the same client finds nothing to do.
        let again = reclaim_client(&seg, 1);
        assert_eq!((again.intents_repaired, again.freed), (0, 0));
        assert_eq!(seg.free_ring().len(), 8);
    }

    #[test]
    fn a_receiver_killed_holding_a_message_gives_it_back_to_its_group_only() {
        let seg = seg();
        let live = Port::new(&seg, 0, 0).unwrap();
        let dead = Port::new(&seg, 1, 0).unwrap();
        let to = fanout(&seg, 1);
        let i = publish(&live, 1, true);
        let g = |k: u32| Group { subsystem: 1, slot: k, queue: to.queues[k as usize] as u32 };
        assert_eq!(live.dequeue(&g(0)), Some(i));
        assert_eq!(dead.dequeue(&g(1)), Some(i));
        let r = reclaim_client(&seg, 1);
        assert_eq!(r.redelivered, 1);
        assert_eq!(seg.slot(i).header().redelivered.load(Ordering::Relaxed), 0b010);
        assert_eq!(seg.queue(1).unwrap().len(), 0, "group 0 is untouched");
        assert_eq!(live.dequeue(&g(1)), Some(i));
        assert_eq!(live.dequeue(&g(2)), Some(i));
        for k in 0..3 {
            live.release(i, k);
        }
        assert_eq!(census(&seg), Census { free: 8, ..Default::default() });
    }

    #[test]
    fn a_redelivery_into_a_full_queue_waits_and_is_counted_once_in_its_group() {
        let seg = seg();
        let live = Port::new(&seg, 0, 0).unwrap();
        let dead = Port::new(&seg, 1, 0).unwrap();
        let to = fanout(&seg, 1);
        let i = publish(&live, 1, true);
        let g1 = Group { subsystem: 1, slot: 1, queue: to.queues[1] as u32 };
        assert_eq!(dead.dequeue(&g1), Some(i));
        let ring = seg.queue(g1.queue).unwrap();
        while ring.push(i.get()).is_ok() {} // full (of duplicates, skipped when taken)
        let r = reclaim_client(&seg, 1);
        assert_eq!((r.redelivered, r.pending.len()), (1, 1));
        assert_eq!(ring.header().stats.redelivered.load(Ordering::Relaxed), 1, "counted while it waits");
        while ring.pop().is_some() {}
        assert!(retry_requeue(&seg, r.pending).is_empty());
        assert_eq!(ring.header().stats.redelivered.load(Ordering::Relaxed), 1, "not again when pushed");
        assert_eq!(live.dequeue(&g1), Some(i));
    }

    #[test]
    fn a_receiver_killed_after_locking_but_before_claiming_gives_the_entry_back_unflagged() {
        let seg = seg();
        let live = Port::new(&seg, 0, 0).unwrap();
        let i = publish(&live, 0, true);
        // Client 1 popped the entry and locked the holder word, then died.
        assert_eq!(seg.queue(0).unwrap().pop(), Some(i.get()));
        let gen = seg.slot(i).own().gen;
        seg.holder(0, i).unwrap().store(holder_lock(gen, 1), Ordering::Relaxed);
        let ring = ring_of_queue(0);
        seg.port_intent(1, 0).unwrap().intent.store(Intent::pack(IntentOp::Pop, ring, i.get()), Ordering::Relaxed);
        reclaim_client(&seg, 1);
        assert_eq!(live.dequeue(&Group::default_of(0)), Some(i));
        assert_eq!(seg.slot(i).header().redelivered.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_repair_of_an_index_that_was_in_the_ring_after_all_delivers_it_once() {
        let seg = seg();
        let dead = Port::new(&seg, 1, 0).unwrap();
        let i = publish(&dead, 0, true);
        // Died right after the push, before clearing the intent.
        seg.port_intent(1, 0)
            .unwrap()
            .intent
            .store(Intent::pack(IntentOp::Push, ring_of_queue(0), i.get()), Ordering::Relaxed);
        reclaim_client(&seg, 1);
        let live = Port::new(&seg, 0, 0).unwrap();
        assert_eq!(live.dequeue(&Group::default_of(0)), Some(i));
        assert_eq!(live.dequeue(&Group::default_of(0)), None);
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
    fn a_held_slot_with_a_corrupt_subsystem_id_is_freed_and_counted() {
        let seg = seg();
        let live = Port::new(&seg, 0, 0).unwrap();
        let dead = Port::new(&seg, 1, 0).unwrap();
        let i = publish(&live, 0, true);
        assert_eq!(dead.dequeue(&Group::default_of(0)), Some(i));
        seg.slot(i).header().queue.store(999, Ordering::Relaxed);
        let r = reclaim_client(&seg, 1);
        assert_eq!(r.corrupt, 1);
        assert_eq!(census(&seg).free, 8);
    }

    #[test]
    fn holder_words_of_lives_that_are_over_are_cleared_and_current_ones_kept() {
        let seg = seg();
        let live = Port::new(&seg, 0, 0).unwrap();
        let i = publish(&live, 0, true);
        assert_eq!(live.dequeue(&Group::default_of(0)), Some(i));
        // Held now: its lock stays.
        assert_eq!(clear_stale_holders(&seg, 0, u64::MAX).1, 0);
        live.release(i, 0);
        // Released and freed: the next life of the slot starts.
        while live.take_free().unwrap() != i {}
        let (next, cleared) = clear_stale_holders(&seg, 0, u64::MAX);
        assert_eq!((next, cleared), (0, 1));
        assert_eq!(seg.holder(0, i).unwrap().load(Ordering::Relaxed), 0);
    }

    #[test]
    fn draining_a_groups_queue_drops_only_that_groups_copies() {
        let seg = seg();
        let live = Port::new(&seg, 0, 0).unwrap();
        let to = fanout(&seg, 1);
        let i = publish(&live, 1, true);
        let g2 = Group { subsystem: 1, slot: 2, queue: to.queues[2] as u32 };
        assert_eq!(drain_queue(&seg, &g2), 1);
        assert_eq!(seg.slot(i).own().queued, 0b011);
        // The copy reached nobody: popped, but counted as not delivered
        // (status shows `popped - skipped`); it was pushed, so it is not
        // a dropped copy.
        let stats = &seg.queue(g2.queue).unwrap().header().stats;
        assert_eq!(seg.queue(g2.queue).unwrap().popped(), 1);
        assert_eq!(stats.skipped.load(Ordering::Relaxed), 1);
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 0);
        for k in 0..2 {
            let g = Group { subsystem: 1, slot: k, queue: to.queues[k as usize] as u32 };
            assert_eq!(live.dequeue(&g), Some(i));
            live.release(i, k);
        }
        assert_eq!(census(&seg).free, 8);
    }
}
