//! Request/response measurements (`shmbus bench --only requests`): round
//! trip latency to a service in another process, request throughput with
//! 1, 2 and 4 worker threads, and in-process timings of the pieces the seed
//! system's plan measured (message creation, route matching among 100
//! routes, bytes per message).

use super::link::Peer;
use bus_client::{Bus, Router};
use std::time::{Duration, Instant};

/// One result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RequestMeasurement {
    /// e.g. `request/roundtrip/1worker`.
    pub name: String,
    /// Requests (or operations) per second, median over rounds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_sec: Option<f64>,
    /// Median, p99, p99.9 in nanoseconds (round trip, or per operation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_ns: Option<u64>,
    /// p99.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ns: Option<u64>,
    /// p99.9.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p999_ns: Option<u64>,
    /// Bytes (for the size figures).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Cache-line hand-off before the run.
    pub handoff_ns: f64,
}

fn serve_peer(bus: &Bus, workers: usize, cpu: Option<usize>) -> std::io::Result<Peer> {
    let cpu_s = cpu.map(|c| format!(" cpu={c}")).unwrap_or_default();
    let subsystem = super::link::fresh_subsystem("svc");
    let p =
        Peer::spawn(&format!("serve subsystem={subsystem} workers={workers}{cpu_s}"), &[], Some(bus.socket_path()))?;
    Ok(p)
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

    // Round trip, one requester thread, one worker.
    let handoff = super::probe::handoff_ns(o.cpus, 20_000);
    let peer = serve_peer(bus, 1, child_cpu)?;
    let requester = bus.requester().map_err(std::io::Error::other)?;
    let body = [7u8; 64];
    let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("bounds");
    let n = (o.round_trips / 4).max(200);
    for i in 0..n + n / 10 {
        let t = Instant::now();
        let r = requester.request_bytes(&path, &body, Duration::from_secs(10)).map_err(std::io::Error::other)?;
        drop(r);
        if i >= n / 10 {
            let _ = h.record(t.elapsed().as_nanos() as u64);
        }
    }
    drop(requester);
    drop(peer);
    let rt = RequestMeasurement {
        name: "request/roundtrip/1worker".into(),
        per_sec: None,
        p50_ns: Some(h.value_at_quantile(0.5)),
        p99_ns: Some(h.value_at_quantile(0.99)),
        p999_ns: Some(h.value_at_quantile(0.999)),
        bytes: None,
        handoff_ns: handoff,
    };
    writeln!(progress, "{}: p50 {} ns, p99 {} ns", rt.name, rt.p50_ns.unwrap_or(0), rt.p99_ns.unwrap_or(0))?;
    out.push(rt);

    // Throughput with 1, 2, 4 workers, 4 requester threads, each with its
    // own requester (a shared one hands replies between its threads).
    for workers in [1usize, 2, 4] {
        let handoff = super::probe::handoff_ns(o.cpus, 20_000);
        let _peer = serve_peer(bus, workers, None)?;
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
            name: format!("request/throughput/{workers}workers"),
            per_sec: Some(rate),
            p50_ns: None,
            p99_ns: None,
            p999_ns: None,
            bytes: None,
            handoff_ns: handoff,
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
        name: name.into(),
        per_sec: Some(1e9 / ns),
        p50_ns: Some(ns.round() as u64),
        p99_ns: None,
        p999_ns: None,
        bytes: None,
        handoff_ns: 0.0,
    };
    let slot = bus.slot_size() as u64;
    Ok(vec![
        one("route-match/100-routes/parameter", param_ns),
        one("route-match/100-routes/static", static_ns),
        one("message-creation/loan-write-64B", create_ns),
        RequestMeasurement {
            name: "bytes-per-message/slot".into(),
            per_sec: None,
            p50_ns: None,
            p99_ns: None,
            p999_ns: None,
            bytes: Some(slot),
            handoff_ns: 0.0,
        },
        RequestMeasurement {
            name: "bytes-per-message/header".into(),
            per_sec: None,
            p50_ns: None,
            p99_ns: None,
            p999_ns: None,
            bytes: Some(bus_core::layout::SLOT_HEADER_SIZE as u64),
            handoff_ns: 0.0,
        },
    ])
}
