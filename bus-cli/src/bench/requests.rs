//! Request/response measurements (`shmbus bench --only requests`): round
//! trip latency to a service in another process (sleeping and
//! busy-polling, one request in flight), request throughput with 1, 2 and 4
//! worker threads, pipelined requests (a window of 32 and of 128 in flight
//! from one thread), and in-process timings of the pieces the seed system's
//! plan measured (message creation, route matching among 100 routes, bytes
//! per message). The service runs on the second CPU, the requesters on the
//! first.

use super::link::{Peer, Transport, Wait};
use super::suite::Percentiles;
use bus_client::{Bus, Router};
use std::time::{Duration, Instant};

/// One result: a latency distribution, a rate, a time per operation, or a
/// size, with the cache-line hand-off measured before it (0 for in-process
/// timings, where no line crosses).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RequestMeasurement {
    /// e.g. `request/roundtrip/1worker`.
    pub name: String,
    /// Round-trip percentiles.
    #[serde(flatten)]
    pub latency: Option<Percentiles>,
    /// Requests (or operations) per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_sec: Option<f64>,
    /// Nanoseconds per operation (in-process timings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ns_per_op: Option<u64>,
    /// Bytes (the size figures).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Cache-line hand-off before the run.
    pub handoff_ns: f64,
    /// Busy round trips: the one-way busy latency p50 (64 B) measured
    /// right before them (the VM's state changes from minute to minute: a
    /// ratio to a one-way figure from another run says little).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oneway_p50_ns: Option<u64>,
    /// Busy round trips: their p50 over `oneway_p50_ns`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_to_oneway: Option<f64>,
}

impl RequestMeasurement {
    fn new(name: impl Into<String>, handoff_ns: f64) -> Self {
        RequestMeasurement {
            name: name.into(),
            latency: None,
            per_sec: None,
            ns_per_op: None,
            bytes: None,
            handoff_ns,
            oneway_p50_ns: None,
            ratio_to_oneway: None,
        }
    }
}

/// Polls before a waiting side sleeps, for the busy-polling runs: some
/// milliseconds, far longer than any wait between two requests there.
const BUSY: u32 = 1 << 20;

/// A service peer: `workers` threads, pinned to `cpu`, polling `spins`
/// times before sleeping, taking requests `batch` at a time.
fn serve_peer(
    bus: &Bus,
    subsystem: &str,
    workers: usize,
    cpu: Option<usize>,
    spins: Option<u32>,
    batch: usize,
) -> std::io::Result<Peer> {
    let cpu_s = cpu.map(|c| format!(" cpu={c}")).unwrap_or_default();
    let spins_s = spins.map(|n| format!(" spins={n}")).unwrap_or_default();
    let spec = format!("serve subsystem={subsystem} workers={workers} batch={batch}{cpu_s}{spins_s}");
    Peer::spawn(&spec, &[], Some(bus.socket_path()))
}

/// Runs the request measurements.
pub fn run(
    bus: &Bus,
    o: &super::suite::Options,
    progress: &mut dyn std::io::Write,
) -> std::io::Result<Vec<RequestMeasurement>> {
    let mut out = Vec::new();
    let subsystem = super::link::fresh_subsystem("svc");
    let path = format!("{subsystem}://echo/x");
    let child_cpu = o.cpus.map(|c| c.1);

    // Round trips, one requester thread, one worker: with the default
    // polling (both sides sleep when idle), then with both sides
    // busy-polling (one request in flight: its rate is 1 / round trip),
    // through a `Requester` (shareable between threads) and through a
    // one-thread `Pipeline` holding one request at a time.
    let cases = [
        ("request/roundtrip/1worker", None, false),
        ("request/roundtrip/1worker/busy", Some(BUSY), false),
        ("request/roundtrip/1worker/busy/pipeline", Some(BUSY), true),
    ];
    for (name, spins, pipelined) in cases {
        let handoff = super::probe::handoff_ns(o.cpus, 20_000);
        // The busy cases' yardstick, measured just before them.
        let oneway = match spins {
            Some(_) => Some(super::suite::one_way(bus, Transport::Shmbus, 64, Wait::Busy, child_cpu, o.round_trips)?),
            None => None,
        };
        let peer = serve_peer(bus, &subsystem, 1, child_cpu, spins, 1)?;
        let requester = bus.requester().map_err(std::io::Error::other)?;
        let mut pipeline = bus.pipeline(1).map_err(std::io::Error::other)?;
        if let Some(n) = spins {
            requester.set_spins(n);
            pipeline.set_spins(n);
        }
        let body = [7u8; 64];
        let mut ask = |body: &[u8]| -> std::io::Result<()> {
            if pipelined {
                let p = pipeline.submit_bytes(&path, body, Duration::from_secs(10)).map_err(std::io::Error::other)?;
                drop(pipeline.wait(p).map_err(std::io::Error::other)?);
            } else {
                drop(requester.request_bytes(&path, body, Duration::from_secs(10)).map_err(std::io::Error::other)?);
            }
            Ok(())
        };
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("bounds");
        let n = (o.round_trips / 4).max(200);
        let warm = n / 10;
        let mut start = Instant::now();
        for i in 0..n + warm {
            if i == warm {
                start = Instant::now();
            }
            let t = Instant::now();
            ask(&body)?;
            if i >= warm {
                let _ = h.record(t.elapsed().as_nanos() as u64);
            }
        }
        let rate = n as f64 / start.elapsed().as_secs_f64();
        drop(requester);
        drop(peer);
        let p = Percentiles::of(&h);
        let ratio = oneway.map(|w| p.p50_ns as f64 / w.p50_ns.max(1) as f64);
        let rt = RequestMeasurement {
            latency: Some(p),
            per_sec: Some(rate),
            oneway_p50_ns: oneway.map(|w| w.p50_ns),
            ratio_to_oneway: ratio,
            ..RequestMeasurement::new(name, handoff)
        };
        let vs = match (oneway, ratio) {
            (Some(w), Some(r)) => format!(" ({r:.2}x the one-way p50 of {} ns just before)", w.p50_ns),
            _ => String::new(),
        };
        writeln!(progress, "{}: p50 {} ns, p99 {} ns, {rate:.0} requests/s{vs}", rt.name, p.p50_ns, p.p99_ns)?;
        out.push(rt);
    }

    // Pipelined: one requester thread keeps `window` requests in flight to
    // one worker that takes them up to 32 at a time; both sides poll.
    for window in [32usize, 128] {
        let handoff = super::probe::handoff_ns(o.cpus, 20_000);
        let _peer = serve_peer(bus, &subsystem, 1, child_cpu, Some(BUSY), 32)?;
        let mut p = bus.pipeline(window).map_err(std::io::Error::other)?;
        p.set_spins(BUSY);
        let body = [3u8; 64];
        let mut run = |until: Instant| -> std::io::Result<u64> {
            let mut done = 0u64;
            loop {
                let now = Instant::now() < until;
                if now && p.in_flight() < p.window() {
                    p.submit_bytes(&path, &body, Duration::from_secs(10)).map_err(std::io::Error::other)?;
                    continue;
                }
                match p.next() {
                    Some((_, reply)) => {
                        drop(reply.map_err(std::io::Error::other)?);
                        done += 1;
                    }
                    None => return Ok(done),
                }
            }
        };
        run(Instant::now() + Duration::from_millis(50))?; // warm-up
        let start = Instant::now();
        let done = run(start + o.duration.max(Duration::from_millis(200)))?;
        let rate = done as f64 / start.elapsed().as_secs_f64();
        let name = format!("request/pipelined/window{window}/1worker");
        writeln!(progress, "{name}: {rate:.0} requests/s")?;
        out.push(RequestMeasurement { per_sec: Some(rate), ..RequestMeasurement::new(name, handoff) });
    }

    // Throughput with 1, 2, 4 workers, 4 requester threads, each with its
    // own requester (a shared one hands replies between its threads).
    for workers in [1usize, 2, 4] {
        let handoff = super::probe::handoff_ns(o.cpus, 20_000);
        let _peer = serve_peer(bus, &subsystem, workers, child_cpu, None, 1)?;
        let requesters: Vec<_> =
            (0..4).map(|_| bus.requester().map_err(std::io::Error::other)).collect::<Result<_, _>>()?;
        let start = Instant::now();
        let end = start + o.duration.max(Duration::from_millis(200));
        let threads: Vec<_> = requesters
            .into_iter()
            .map(|r| {
                let path = path.clone();
                std::thread::spawn(move || -> std::io::Result<u64> {
                    let mut k = 0;
                    while Instant::now() < end {
                        r.request_bytes(&path, &[1u8; 64], Duration::from_secs(10)).map_err(std::io::Error::other)?;
                        k += 1;
                    }
                    Ok(k)
                })
            })
            .collect();
        let mut total = 0;
        for t in threads {
            total += t.join().map_err(|_| std::io::Error::other("requester thread panicked"))??;
        }
        let rate = total as f64 / start.elapsed().as_secs_f64();
        writeln!(progress, "request/throughput/{workers}workers: {rate:.0} requests/s")?;
        out.push(RequestMeasurement {
            per_sec: Some(rate),
            ..RequestMeasurement::new(format!("request/throughput/{workers}workers"), handoff)
        });
    }

    out.extend(pieces(bus)?);
    Ok(out)
}

/// In-process timings: route matching among 100 routes and message
/// creation; and the bytes a message costs.
fn pieces(bus: &Bus) -> std::io::Result<Vec<RequestMeasurement>> {
    let mut router = Router::new("bench").map_err(std::io::Error::other)?;
    for i in 0..50 {
        router = router.route(&format!("static/path{i}/list"), |_| Ok(())).map_err(std::io::Error::other)?;
        router = router.route(&format!("items{i}/{{id}}/detail"), |_| Ok(())).map_err(std::io::Error::other)?;
    }
    let per_op = |f: &mut dyn FnMut(u64)| {
        let n = 1_000_000u64;
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            for i in 0..n {
                f(i);
            }
            best = best.min(t.elapsed().as_nanos() as f64 / n as f64);
        }
        best
    };
    let routes: Vec<String> = (0..64).map(|i| format!("items{}/{}/detail", i % 50, 1000 + i)).collect();
    let statics: Vec<String> = (0..64).map(|i| format!("static/path{}/list", i % 50)).collect();
    let param_ns = per_op(&mut |i| {
        let m = router.at(std::hint::black_box(&routes[(i % 64) as usize]));
        std::hint::black_box(m.map(|(_, p)| p.len()));
    });
    let static_ns = per_op(&mut |i| {
        let m = router.at(std::hint::black_box(&statics[(i % 64) as usize]));
        std::hint::black_box(m.is_some());
    });
    let sub = bus.subscribe(&super::link::fresh_subsystem("create")).map_err(std::io::Error::other)?;
    let path = format!("{}://orders/1", sub.subsystem());
    let mut p = bus.publisher().create().map_err(std::io::Error::other)?;
    let create_ns = per_op(&mut |i| {
        let mut loan = p.loan(&path).expect("loan");
        loan.body_mut()[..8].copy_from_slice(&i.to_le_bytes());
        std::hint::black_box(loan.commit(64).expect("fits"));
    });
    let one = |name: &str, ns: f64| RequestMeasurement {
        per_sec: Some(1e9 / ns),
        ns_per_op: Some(ns.round() as u64),
        ..RequestMeasurement::new(name, 0.0)
    };
    let size = |name: &str, bytes: u64| RequestMeasurement { bytes: Some(bytes), ..RequestMeasurement::new(name, 0.0) };
    let slot = bus.slot_size() as u64;
    Ok(vec![
        one("route-match/100-routes/parameter", param_ns),
        one("route-match/100-routes/static", static_ns),
        one("message-creation/loan-write-64B", create_ns),
        size("bytes-per-message/slot", slot),
        size("bytes-per-message/header", bus_core::layout::SLOT_HEADER_SIZE as u64),
    ])
}
