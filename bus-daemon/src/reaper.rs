//! Reclaiming after a client's connection closed: what it owned goes back
//! (see [`bus_core::reclaim`]), its subscriptions end, its table entry is
//! freed. Requeues that met a full queue are retried on every tick.

use bus_core::layout::{CLIENT_FREE, CLIENT_RECLAIMING};
use bus_core::reclaim;
use bus_core::segment::{Segment, SlotIndex};
use std::sync::atomic::Ordering;

/// Requeues waiting for queue space.
#[derive(Debug, Default)]
pub struct Reaper {
    pending: Vec<(u32, SlotIndex)>,
}

impl Reaper {
    /// Reclaims client `client` of `seg` (its connection is already closed).
    pub fn reap(&mut self, seg: &Segment, client: u32, pid: u32) {
        let Some(info) = seg.client_info(client) else { return };
        // SYNC: client-state — Release pairs with the Acquire in the accept
        // loop's search for a free entry (same thread today; kept for
        // anything else that reads the client table).
        info.state.store(CLIENT_RECLAIMING, Ordering::Release);
        let report = reclaim::reclaim_client(seg, client);
        tracing::info!(
            client,
            pid,
            freed = report.freed,
            redelivered = report.redelivered,
            repaired = report.intents_repaired,
            corrupt = report.corrupt,
            corrupt_words = report.corrupt_words,
            waiting = report.pending.len(),
            "client gone; reclaimed its slots"
        );
        self.pending.extend(report.pending);
        info.pid.store(0, Ordering::Relaxed);
        // SYNC: client-state — as above.
        info.state.store(CLIENT_FREE, Ordering::Release);
        seg.header().counters.clients_reclaimed.fetch_add(1, Ordering::Relaxed);
    }

    /// Retries pending requeues, each with one bounded push per tick. A
    /// queue taken for corrupt (quarantined) keeps its pending messages
    /// too: quarantine marks and logs, it never drops what may still be
    /// delivered, so a false alarm costs nothing.
    pub fn tick(&mut self, seg: &Segment) {
        if !self.pending.is_empty() {
            self.pending = reclaim::retry_requeue(seg, std::mem::take(&mut self.pending));
        }
    }

    /// Whether requeues into queue `q` are waiting.
    pub fn holds_for(&self, q: u32) -> bool {
        self.pending.iter().any(|&(p, _)| p == q)
    }

    /// Whether requeues are waiting (the daemon then ticks faster).
    pub fn busy(&self) -> bool {
        !self.pending.is_empty()
    }
}
