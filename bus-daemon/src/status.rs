//! Builds the [`Status`] the daemon reports.

use bus_client::protocol::{ClientStatus, Counters, GroupStatus, SlotCounts, Status, SubsystemStatus};
use bus_core::layout::{ROUTE_DURABLE, ROUTE_EPHEMERAL, ROUTE_LOSSY};
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
    dropped: u64,
}

impl Baseline {
    /// Ring operations on the queue that gave up (corruption), since start.
    pub fn stalls(&self) -> u64 {
        self.stalls
    }

    /// For an entry adopted from a previous daemon: its counters keep
    /// counting from the segment's start (the previous daemon's baseline is
    /// unknown), but stalls count from now (the audit quarantines on new
    /// ones).
    pub fn adopted(seg: &Segment, q: u32) -> Baseline {
        Baseline { stalls: Baseline::of(seg, q).stalls, ..Baseline::default() }
    }

    /// These counters less `base` (taken earlier of the same queue).
    pub fn since(&self, base: &Baseline) -> Baseline {
        Baseline {
            sent: self.sent.saturating_sub(base.sent),
            delivered: self.delivered.saturating_sub(base.delivered),
            redelivered: self.redelivered.saturating_sub(base.redelivered),
            stalls: self.stalls.saturating_sub(base.stalls),
            dropped: self.dropped.saturating_sub(base.dropped),
        }
    }

    /// Adds what `other` received (delivered and redelivered).
    pub fn add_received(&mut self, other: &Baseline) {
        self.delivered = self.delivered.saturating_add(other.delivered);
        self.redelivered = self.redelivered.saturating_add(other.redelivered);
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
            dropped: stats.dropped.load(Ordering::Relaxed),
        }
    }
}

/// A subsystem's entry and its other groups' (entry, name, flags), as the
/// daemon recorded them.
pub struct SubsystemLayout {
    /// The subsystem's entry (its default group's queue).
    pub entry: u32,
    /// Its other groups.
    pub groups: Vec<(u32, String, u32)>,
    /// What its groups that are gone had received (counted in its totals).
    pub departed: Baseline,
}

/// A snapshot of the bus. `clients` lists (id, pid, uid, subscriptions);
/// `statistics` is the daemon's setting (whether clients count).
pub fn build(
    seg: &Segment,
    socket: &str,
    clients: Vec<ClientStatus>,
    baselines: &std::collections::BTreeMap<u32, Baseline>,
    quarantined: &std::collections::BTreeSet<u32>,
    layout: &[SubsystemLayout],
    statistics: bool,
) -> Status {
    let p = seg.params();
    let census = slot_pool::census(seg);
    let mut subsystems = Vec::new();
    // Counters of entry `q` since its current owner took it over.
    let since = |q: u32| Baseline::of(seg, q).since(&baselines.get(&q).copied().unwrap_or_default());
    for sub in layout {
        let q = sub.entry;
        let (Some(view), Some(_)) = (routing::read_as_writer(seg, q), seg.queue(q)) else { continue };
        let default = (q, "default".to_owned(), view.flags);
        let mut groups = Vec::new();
        // Totals never go backwards: groups that are gone still count.
        let mut total = Baseline::default();
        total.add_received(&sub.departed);
        let mut latency = bus_core::stats::Histogram::default();
        let (mut depth, mut subscribers) = (0, 0);
        for (g, name, flags) in std::iter::once(&default).chain(&sub.groups) {
            let (Some(ring), Some(v)) = (seg.queue(*g), routing::read_as_writer(seg, *g)) else { continue };
            let c = since(*g);
            // Each message is pushed or dropped once per group that
            // existed when it was sent: the group that saw the most has
            // seen every message.
            // Words from the segment: any value, so saturating.
            total.sent = total.sent.max(c.sent.saturating_add(c.dropped));
            total.delivered = total.delivered.saturating_add(c.delivered);
            total.redelivered = total.redelivered.saturating_add(c.redelivered);
            total.stalls = total.stalls.max(c.stalls);
            depth += ring.len();
            subscribers += v.subscribers;
            if let Some(st) = seg.entry_stats(*g) {
                let h = st.latency.snapshot();
                // Words from the segment: any value, so saturating.
                latency.samples = latency.samples.saturating_add(h.samples);
                latency.sum_ns = latency.sum_ns.saturating_add(h.sum_ns);
                latency.max_ns = latency.max_ns.max(h.max_ns);
                for (t, n) in latency.buckets.iter_mut().zip(h.buckets) {
                    *t = t.saturating_add(n);
                }
            }
            groups.push(GroupStatus {
                name: name.clone(),
                depth: ring.len(),
                subscribers: v.subscribers,
                backpressure: if flags & ROUTE_LOSSY != 0 { "lossy" } else { "block" }.into(),
                durable: flags & ROUTE_DURABLE != 0,
                tap: flags & ROUTE_EPHEMERAL != 0,
                delivered: c.delivered,
                dropped: c.dropped,
                redelivered: c.redelivered,
            });
        }
        subsystems.push(SubsystemStatus {
            name: view.name().to_owned(),
            queue_depth: depth,
            subscribers,
            durable: view.durable,
            sent: total.sent,
            delivered: total.delivered,
            redelivered: total.redelivered,
            stalls: total.stalls,
            quarantined: std::iter::once(q).chain(sub.groups.iter().map(|g| g.0)).any(|g| quarantined.contains(&g)),
            groups,
            bytes: seg.entry_stats(q).map_or(0, |s| s.send.bytes.load(Ordering::Relaxed)),
            failures: seg.entry_stats(q).map_or_else(Default::default, |s| {
                let f = |k: bus_core::stats::Failure| s.send.failures[k as usize].load(Ordering::Relaxed);
                bus_client::protocol::Failures {
                    no_subscriber: f(bus_core::stats::Failure::NoSubscriber),
                    queue_full: f(bus_core::stats::Failure::QueueFull),
                    pool_exhausted: f(bus_core::stats::Failure::PoolExhausted),
                    quota: f(bus_core::stats::Failure::Quota),
                }
            }),
            latency: bus_client::protocol::Latency::of(&latency),
        });
    }
    let c = &seg.header().counters;
    Status {
        bus: p.bus_name(),
        socket: socket.to_owned(),
        daemon_pid: std::process::id(),
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
        statistics,
    }
}
