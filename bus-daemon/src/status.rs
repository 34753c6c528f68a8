//! Builds the [`Status`] the daemon reports.

use bus_client::protocol::{ClientStatus, Counters, SlotCounts, Status, SubsystemStatus};
use bus_core::segment::Segment;
use bus_core::{routing, slot_pool};
use std::sync::atomic::Ordering;

/// The counters of a routing entry's queue at the moment its current
/// subsystem took it over (entries are recycled), subtracted in status.
#[derive(Debug, Clone, Copy, Default)]
pub struct Baseline {
    sent: u64,
    delivered: u64,
    redelivered: u64,
    stalls: u64,
}

impl Baseline {
    /// Ring operations on the queue that gave up (corruption), since start.
    pub fn stalls(&self) -> u64 {
        self.stalls
    }

    /// The counters of queue `q` now.
    pub fn of(seg: &Segment, q: u32) -> Baseline {
        let Some(ring) = seg.queue(q) else { return Baseline::default() };
        let stats = &ring.header().stats;
        Baseline {
            sent: ring.pushed().saturating_sub(stats.daemon_pushes.load(Ordering::Relaxed)),
            delivered: ring.popped().saturating_sub(stats.skipped.load(Ordering::Relaxed)),
            redelivered: stats.redelivered.load(Ordering::Relaxed),
            stalls: stats.stalls.load(Ordering::Relaxed),
        }
    }
}

/// A snapshot of the bus. `clients` lists (id, pid, uid, subscriptions).
pub fn build(
    seg: &Segment,
    socket: &str,
    clients: Vec<ClientStatus>,
    baselines: &std::collections::BTreeMap<u32, Baseline>,
    quarantined: &std::collections::BTreeSet<u32>,
) -> Status {
    let p = seg.params();
    let census = slot_pool::census(seg);
    let mut subsystems = Vec::new();
    for q in 0..p.max_subsystems {
        let (Some(view), Some(ring)) = (routing::read_as_writer(seg, q), seg.queue(q)) else { continue };
        let now = Baseline::of(seg, q);
        let base = baselines.get(&q).copied().unwrap_or_default();
        subsystems.push(SubsystemStatus {
            name: view.name().to_owned(),
            queue_depth: ring.len(),
            subscribers: view.subscribers,
            durable: view.durable,
            sent: now.sent.saturating_sub(base.sent),
            delivered: now.delivered.saturating_sub(base.delivered),
            redelivered: now.redelivered.saturating_sub(base.redelivered),
            stalls: now.stalls.saturating_sub(base.stalls),
            quarantined: quarantined.contains(&q),
        });
    }
    let c = &seg.header().counters;
    Status {
        bus: p.bus_name(),
        socket: socket.to_owned(),
        daemon_pid: p.daemon_pid,
        slot_size: p.slot_size,
        queue_capacity: p.queue_capacity,
        slots: SlotCounts {
            total: p.slot_count as u64,
            free: census.free,
            cached: census.cached,
            loaned: census.loaned,
            queued: census.queued,
            held: census.held,
            corrupt: census.corrupt,
        },
        clients: clients.len() as u32,
        client_list: clients,
        subsystems,
        counters: Counters {
            clients_accepted: c.clients_accepted.load(Ordering::Relaxed),
            clients_reclaimed: c.clients_reclaimed.load(Ordering::Relaxed),
            slots_reclaimed: c.slots_reclaimed.load(Ordering::Relaxed),
            messages_redelivered: c.messages_redelivered.load(Ordering::Relaxed),
            corruption: c.corruption.load(Ordering::Relaxed),
            slots_lost: c.slots_lost.load(Ordering::Relaxed),
        },
    }
}
