//! Statistics kept in the segment, cheap enough to stay on: per routing
//! entry, the bytes sent, send failures by kind, and a histogram of
//! send → receive latency.
//!
//! Costs on the hot path: a publisher adds a body's length to its
//! subsystem's `bytes` (one Relaxed add on a line only publishers of that
//! subsystem write; a batch adds once); a receiver times one message in
//! [`SAMPLE_EVERY`] (a clock read and four adds on a line only receivers
//! write). Failures are counted on the failure path only. Per-client
//! counts live in each port's record ([`crate::layout::PortIntent`]),
//! written by the port's one thread without a locked instruction.
//!
//! The histogram is log-linear, HDR style: [`SUB`] linear sub-buckets per
//! power of two, from 64 ns up; [`BUCKETS`] buckets reach about 1.75·2^37
//! ns (four minutes), and anything longer lands in the last.

use crate::line::Line;
use std::sync::atomic::{AtomicU64, Ordering};

/// One received message in this many is timed, per receiving port.
pub const SAMPLE_EVERY: u64 = 64;
/// Sub-buckets per power of two.
pub const SUB: usize = 4;
/// log2 of the smallest bucket's upper bound (64 ns).
const MIN_SHIFT: u32 = 6;
/// Histogram buckets.
pub const BUCKETS: usize = 128;

/// Kinds of send failures counted per subsystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No group receives.
    NoSubscriber = 0,
    /// A queue stayed full (fail-fast, a timeout, or a group's copy dropped).
    QueueFull = 1,
    /// No free slot.
    PoolExhausted = 2,
    /// The client's quota.
    Quota = 3,
}

/// The failure kinds, in index order, with their names.
pub const FAILURES: [(Failure, &str); 4] = [
    (Failure::NoSubscriber, "no_subscriber"),
    (Failure::QueueFull, "queue_full"),
    (Failure::PoolExhausted, "pool_exhausted"),
    (Failure::Quota, "quota"),
];

/// What publishers write.
#[repr(C)]
#[derive(Debug)]
pub struct SendStats {
    /// Body bytes of the messages sent to this subsystem.
    pub bytes: AtomicU64,
    /// Failed sends by [`Failure`].
    pub failures: [AtomicU64; 4],
}

/// What receivers write.
#[repr(C)]
#[derive(Debug)]
pub struct LatencyStats {
    /// Messages timed.
    pub samples: AtomicU64,
    /// Their latencies' sum, in nanoseconds.
    pub sum_ns: AtomicU64,
    /// The largest latency timed, in nanoseconds.
    pub max_ns: AtomicU64,
    /// Timed messages per bucket (see [`bucket`]).
    pub buckets: [AtomicU64; BUCKETS],
}

/// The statistics of one routing entry (a subsystem; a group's entry keeps
/// its own latency, and its bytes stay 0).
#[repr(C)]
#[derive(Debug)]
pub struct EntryStats {
    /// Written by publishers.
    pub send: Line<SendStats>,
    /// Written by receivers.
    pub latency: Line<LatencyStats>,
}

const _: () = assert!(core::mem::size_of::<EntryStats>() == 1280);

impl EntryStats {
    /// Zeroes every count (the daemon, when it gives the entry to another
    /// subsystem or group).
    pub fn reset(&self) {
        self.send.bytes.store(0, Ordering::Relaxed);
        for f in &self.send.failures {
            f.store(0, Ordering::Relaxed);
        }
        let l = &self.latency;
        for w in [&l.samples, &l.sum_ns, &l.max_ns].into_iter().chain(l.buckets.iter()) {
            w.store(0, Ordering::Relaxed);
        }
    }
}

/// The bucket of a latency of `ns` nanoseconds.
pub fn bucket(ns: u64) -> usize {
    let v = ns.max(1);
    let log = 63 - v.leading_zeros(); // floor(log2 v)
    if log < MIN_SHIFT {
        return 0;
    }
    // Sub-bucket: the SUB_BITS bits below the leading one.
    let sub = ((v >> (log - 2)) & (SUB as u64 - 1)) as usize;
    (((log - MIN_SHIFT) as usize) * SUB + sub + 1).min(BUCKETS - 1)
}

/// The largest latency bucket `b` holds, in nanoseconds (its upper bound).
pub fn upper_bound(b: usize) -> u64 {
    if b == 0 {
        return (1 << MIN_SHIFT) - 1;
    }
    let log = (b - 1) / SUB + MIN_SHIFT as usize;
    let sub = (b - 1) % SUB;
    if log >= 63 {
        return u64::MAX;
    }
    let base = 1u64 << log;
    base + (base / SUB as u64) * (sub as u64 + 1) - 1
}

impl LatencyStats {
    /// Records one timed message.
    #[inline]
    pub fn record(&self, ns: u64) {
        self.samples.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
        self.buckets[bucket(ns)].fetch_add(1, Ordering::Relaxed);
    }

    /// A copy of the counts (not atomic as a whole).
    pub fn snapshot(&self) -> Histogram {
        Histogram {
            samples: self.samples.load(Ordering::Relaxed),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
            max_ns: self.max_ns.load(Ordering::Relaxed),
            buckets: core::array::from_fn(|b| self.buckets[b].load(Ordering::Relaxed)),
        }
    }
}

/// A copy of a latency histogram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    /// Messages timed.
    pub samples: u64,
    /// Sum of their latencies (ns).
    pub sum_ns: u64,
    /// The largest (ns).
    pub max_ns: u64,
    /// Per bucket.
    pub buckets: [u64; BUCKETS],
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram { samples: 0, sum_ns: 0, max_ns: 0, buckets: [0; BUCKETS] }
    }
}

impl Histogram {
    /// What was recorded since `earlier` (a copy of the same histogram);
    /// `max_ns` becomes the upper bound of the highest bucket that grew.
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let buckets: [u64; BUCKETS] = core::array::from_fn(|b| self.buckets[b].saturating_sub(earlier.buckets[b]));
        let max_ns = buckets.iter().rposition(|&n| n > 0).map_or(0, |b| upper_bound(b).min(self.max_ns));
        Histogram {
            samples: self.samples.saturating_sub(earlier.samples),
            sum_ns: self.sum_ns.saturating_sub(earlier.sum_ns),
            max_ns,
            buckets,
        }
    }

    /// All buckets' counts together (saturating).
    pub fn total(&self) -> u64 {
        self.buckets.iter().fold(0u64, |t, &n| t.saturating_add(n))
    }

    /// The `q`-quantile (0 < q ≤ 1), as its bucket's upper bound (never
    /// above the largest value recorded); 0 without samples.
    pub fn quantile(&self, q: f64) -> u64 {
        // Counts read from the segment may be anything: saturating.
        let total = self.total();
        if total == 0 {
            return 0;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0u64;
        for (b, &n) in self.buckets.iter().enumerate() {
            seen = seen.saturating_add(n);
            if seen >= rank {
                return upper_bound(b).min(self.max_ns.max(1));
            }
        }
        self.max_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_log_linear_and_bounds_hold_their_values() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(63), 0);
        let mut last = 0;
        for ns in [64u64, 80, 96, 112, 127, 128, 1000, 1_000_000, 1 << 37] {
            let b = bucket(ns);
            assert!(b >= last, "{ns}");
            assert!(upper_bound(b) >= ns, "{ns} in bucket {b} bounded by {}", upper_bound(b));
            assert!(b == 0 || upper_bound(b - 1) < ns, "{ns} belongs to a lower bucket");
            last = b;
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        // 4 sub-buckets per power of two: within 25 %.
        let b = bucket(1000);
        assert!(upper_bound(b) <= 1250, "{}", upper_bound(b));
    }

    #[test]
    fn quantiles_and_intervals() {
        let l = LatencyStats {
            samples: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
            max_ns: AtomicU64::new(0),
            buckets: core::array::from_fn(|_| AtomicU64::new(0)),
        };
        for _ in 0..99 {
            l.record(1000);
        }
        let before = l.snapshot();
        l.record(50_000);
        let all = l.snapshot();
        assert_eq!(all.samples, 100);
        assert!((1000..=1250).contains(&all.quantile(0.5)));
        assert!((1000..=1250).contains(&all.quantile(0.99)));
        assert_eq!(all.quantile(1.0), 50_000);
        let last = all.since(&before);
        assert_eq!(last.samples, 1);
        assert_eq!(last.quantile(0.5), 50_000);
        assert_eq!(last.max_ns, 50_000);
        assert_eq!(Histogram::default().quantile(0.5), 0);
    }
}
