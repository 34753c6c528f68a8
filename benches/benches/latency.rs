//! Cross-process one-way latency (round trip / 2): shmbus with a
//! busy-polling receiver and with a receiver sleeping on its futex, against
//! a bare shared-futex hand-off (the floor for the sleeping case), a Unix
//! socket and a pipe. Percentiles come from `shmbus bench` (HDR histogram);
//! criterion reports the mean and its spread.

use bus_cli::bench::link::{PingPong, Transport, Wait};
use criterion::Criterion;
use std::time::Duration;

fn latency(c: &mut Criterion) {
    let b = shmbus_benches::start(4096);
    let cpus = bus_cli::bench::default_cpus();
    if let Some((a, _)) = cpus {
        bus_cli::bench::pin(a);
    }
    let mut g = c.benchmark_group("latency_one_way");
    let mut cases = vec![(Transport::Futex, 8usize, Wait::Sleep)];
    for size in [8usize, 4096] {
        cases.extend([
            (Transport::Shmbus, size, Wait::Busy),
            (Transport::Shmbus, size, Wait::Sleep),
            (Transport::Uds, size, Wait::Sleep),
            (Transport::Pipe, size, Wait::Sleep),
        ]);
    }
    for (t, size, wait) in cases {
        let mut pp = PingPong::open(t, Some(&b.bus), size, wait, cpus.map(|c| c.1)).expect("open ping-pong");
        let name = format!("{}/{size}B/{}", t.name(), if wait == Wait::Busy { "busy" } else { "sleep" });
        let mut seq = 0u64;
        g.bench_function(name, |bench| {
            bench.iter_custom(|iters| {
                let mut total = 0;
                for _ in 0..iters {
                    seq += 1;
                    total += pp.round_trip(seq).expect("round trip");
                }
                Duration::from_nanos(total / 2)
            })
        });
        pp.close().expect("close");
    }
    g.finish();
}

fn main() {
    bus_cli::bench::peer_main_if_requested();
    let mut c = Criterion::default().configure_from_args();
    latency(&mut c);
    c.final_summary();
}
