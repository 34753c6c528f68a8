//! Builds the [`Status`] the daemon reports.

use bus_client::protocol::{ClientStatus, Counters, SlotCounts, Status, SubsystemStatus};
use bus_core::segment::Segment;
use bus_core::{routing, slot_pool};
use std::sync::atomic::Ordering;

/// A snapshot of the bus. `clients` lists (id, pid, uid, subscriptions).
pub fn build(seg: &Segment, socket: &str, clients: Vec<ClientStatus>) -> Status {
    let p = seg.params();
    let census = slot_pool::census(seg);
    let mut subsystems = Vec::new();
    for q in 0..p.max_subsystems {
        let (Some(view), Some(ring)) = (routing::read(seg, q), seg.queue(q)) else { continue };
        let stats = &ring.header().stats;
        subsystems.push(SubsystemStatus {
            name: view.name().to_owned(),
            queue_depth: ring.len(),
            subscribers: view.subscribers,
            durable: view.durable,
            sent: ring.pushed().saturating_sub(stats.daemon_pushes.load(Ordering::Relaxed)),
            delivered: ring.popped().saturating_sub(stats.skipped.load(Ordering::Relaxed)),
            redelivered: stats.redelivered.load(Ordering::Relaxed),
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
        },
        clients: clients.len() as u32,
        client_list: clients,
        subsystems,
        counters: Counters {
            clients_accepted: c.clients_accepted.load(Ordering::Relaxed),
            clients_reclaimed: c.clients_reclaimed.load(Ordering::Relaxed),
            slots_reclaimed: c.slots_reclaimed.load(Ordering::Relaxed),
            messages_redelivered: c.messages_redelivered.load(Ordering::Relaxed),
        },
    }
}
