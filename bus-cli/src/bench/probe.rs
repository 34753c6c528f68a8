//! The cache-line probe: how long one cache line takes to travel between the
//! two CPUs the measurement runs on, measured right before it. On the 2-vCPU
//! VMs we build on, this drifts between ~30 ns ("near") and ~170 ns ("far")
//! every few tens of seconds, and every cross-process figure moves with it:
//! a result without its probe says little.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

#[repr(align(128))]
struct Padded(AtomicU64);

/// Median of 5 ping-pong runs of `round_trips` each between threads pinned
/// to `cpus.0` and `cpus.1`; returns one-way hand-off nanoseconds.
pub fn handoff_ns(cpus: Option<(usize, usize)>, round_trips: u64) -> f64 {
    let mut runs: Vec<f64> = (0..5).map(|_| one_run(cpus, round_trips)).collect();
    runs.sort_by(f64::total_cmp);
    runs[2]
}

fn one_run(cpus: Option<(usize, usize)>, n: u64) -> f64 {
    let line = Padded(AtomicU64::new(0));
    let line = &line;
    std::thread::scope(|s| {
        s.spawn(move || {
            if let Some((_, b)) = cpus {
                super::pin(b);
            }
            for i in 0..n {
                // SYNC: probe — Acquire/Release pair with the other thread.
                while line.0.load(Ordering::Acquire) != 2 * i + 1 {
                    std::hint::spin_loop();
                }
                line.0.store(2 * i + 2, Ordering::Release);
            }
        });
        if let Some((a, _)) = cpus {
            super::pin(a);
        }
        let t = Instant::now();
        for i in 0..n {
            // SYNC: probe — pairs with the other thread's Acquire load.
            line.0.store(2 * i + 1, Ordering::Release);
            while line.0.load(Ordering::Acquire) != 2 * i + 2 {
                std::hint::spin_loop();
            }
        }
        t.elapsed().as_nanos() as f64 / (2 * n) as f64
    })
}
