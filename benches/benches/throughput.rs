//! Cross-process throughput, one publisher process → one subscriber process,
//! shmbus against a Unix socket and a pipe, bodies of 8 B, 64 B and 4 KiB.
//! The receiving process is spawned once per benchmark, outside the timed
//! loop; each timed batch ends when the receiver has every message, and a
//! lost message fails the benchmark.

use bus_cli::bench::link::{Stream, Touch, Transport};
use criterion::{Criterion, Throughput};
use std::time::Duration;

fn throughput(c: &mut Criterion) {
    let b = shmbus_benches::start(4096);
    let cpus = bus_cli::bench::default_cpus();
    if let Some((a, _)) = cpus {
        bus_cli::bench::pin(a);
    }
    let mut g = c.benchmark_group("throughput_1to1");
    g.throughput(Throughput::Elements(1));
    for size in [8usize, 64, 4096] {
        for (t, touch, batch) in [
            (Transport::Shmbus, Touch::Header, 1),
            (Transport::Shmbus, Touch::Full, 1),
            (Transport::Shmbus, Touch::Header, 32),
            (Transport::Uds, Touch::Full, 1),
            (Transport::Pipe, Touch::Full, 1),
        ] {
            let kind = if touch == Touch::Full { "full" } else { "header" };
            let name = match batch {
                1 => format!("{}/{size}B/{kind}", t.name()),
                b => format!("{}/{size}B/{kind}/batch{b}", t.name()),
            };
            let mut s = Stream::open(t, Some(&b.bus), size, touch, cpus.map(|c| c.1), batch).expect("open stream");
            g.bench_function(name, |bench| {
                bench.iter_custom(|iters| {
                    let r = s.round(iters).expect("round");
                    assert_eq!(r.lost, 0, "messages lost");
                    Duration::from_nanos(r.elapsed_ns)
                })
            });
            s.close().expect("close stream");
        }
    }
    g.finish();
}

/// 4 publisher processes → 1 subscriber, 64 B. The senders are started for
/// each batch but not timed: a batch is timed from its first receipt to its
/// last.
fn fan_in(c: &mut Criterion) {
    use bus_cli::bench::link::{fan_in, Amount};
    let b = shmbus_benches::start(64);
    let subsystem = bus_cli::bench::link::fresh_subsystem("criterion-fanin");
    let sub = b.bus.subscribe(&subsystem).expect("subscribe");
    let mut g = c.benchmark_group("throughput_4to1");
    g.throughput(Throughput::Elements(1));
    g.bench_function("shmbus/64B", |bench| {
        bench.iter_custom(|iters| {
            let per = iters.div_ceil(4).max(1);
            let r = fan_in(&b.bus, &sub, &subsystem, 4, 64, Amount::Count(per)).expect("fan-in");
            assert_eq!(r.lost, 0, "messages lost");
            assert_eq!(r.received, 4 * per);
            // Scale to the iterations criterion asked for.
            Duration::from_nanos(r.elapsed_ns * iters / (4 * per))
        })
    });
    g.finish();
}

fn main() {
    bus_cli::bench::peer_main_if_requested();
    let mut c = Criterion::default().configure_from_args();
    throughput(&mut c);
    fan_in(&mut c);
    c.final_summary();
}
