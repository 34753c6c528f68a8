//! `shmbusd --metrics ADDR`: the bus in the Prometheus / OpenMetrics text
//! format at `http://ADDR/metrics`, encoded with `prometheus-client`.
//!
//! A thread accepts scrapes one at a time. For each, it asks the daemon's
//! event loop for a fresh [`Status`] (a byte on a pipe the loop polls, and
//! a channel back), so a scrape shows the counters as they are, not as
//! they were at some earlier tick; then it encodes and answers. The loop
//! spends one status build per scrape.

use bus_client::protocol::Status;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::mpsc;
use std::time::Duration;

/// The event loop's end: a pipe to poll, and the scrapes waiting for a
/// status.
pub struct MetricsLink {
    /// Readable when a scrape waits.
    pub wake: OwnedFd,
    /// Where each waiting scrape wants its status.
    pub waiting: mpsc::Receiver<mpsc::Sender<Status>>,
}

/// Binds `addr` and starts the thread that serves it.
pub fn start(addr: SocketAddr) -> std::io::Result<(MetricsLink, SocketAddr)> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    let (wake_r, wake_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)?;
    let (ask, waiting) = mpsc::channel::<mpsc::Sender<Status>>();
    let wake_w = std::sync::Arc::new(wake_w);
    std::thread::Builder::new().name("shmbusd-metrics".into()).spawn(move || {
        // Each scrape in a thread of its own, a few at a time: a slow or
        // idle connection does not hold up the next scrape.
        let busy = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            if busy.load(std::sync::atomic::Ordering::Relaxed) >= MAX_SCRAPES {
                let _ = conn
                    .write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                continue;
            }
            busy.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (ask, wake_w, mine) = (ask.clone(), wake_w.clone(), busy.clone());
            let spawned = std::thread::Builder::new().name("shmbusd-scrape".into()).spawn(move || {
                let fetch = || -> Option<Status> {
                    let (tx, rx) = mpsc::channel();
                    ask.send(tx).ok()?;
                    let _ = nix::unistd::write(&*wake_w, b"m");
                    rx.recv_timeout(Duration::from_secs(5)).ok()
                };
                if let Err(e) = serve(conn, fetch) {
                    tracing::debug!("metrics scrape failed: {e}");
                }
                mine.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            });
            if spawned.is_err() {
                busy.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    })?;
    Ok((MetricsLink { wake: wake_r, waiting }, bound))
}

/// Scrapes served at once; more are answered 503 at once.
pub const MAX_SCRAPES: usize = 4;

/// Answers one HTTP request on `conn`; the request must arrive whole
/// within 2 s.
fn serve(mut conn: TcpStream, fetch: impl FnOnce() -> Option<Status>) -> std::io::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    conn.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut req = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "request too slow"));
        }
        conn.set_read_timeout(Some(left))?;
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        req.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&req);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (code, kind, body) = match (method, path) {
        ("GET", "/metrics") => match fetch() {
            Some(status) => ("200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8", encode(&status)),
            None => ("503 Service Unavailable", "text/plain", "the daemon did not answer\n".into()),
        },
        ("GET", "/") => ("200 OK", "text/plain", "shmbusd: metrics at /metrics\n".into()),
        ("GET", _) => ("404 Not Found", "text/plain", "not found: try /metrics\n".into()),
        _ => ("405 Method Not Allowed", "text/plain", "only GET\n".into()),
    };
    let head = format!(
        "HTTP/1.1 {code}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes())?;
    conn.write_all(body.as_bytes())?;
    conn.flush()
}

/// A histogram whose buckets are already counted (from the segment).
#[derive(Debug)]
struct ConstHistogram {
    sum: f64,
    count: u64,
    /// (upper bound in seconds, count in this bucket), +Inf last.
    buckets: Vec<(f64, u64)>,
}

impl EncodeMetric for ConstHistogram {
    fn encode(&self, mut encoder: prometheus_client::encoding::MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The latency histogram of `l` with one bucket per power of two of
/// nanoseconds (the segment's four sub-buckets merged), in seconds.
fn histogram(l: &bus_client::protocol::Latency) -> ConstHistogram {
    let h = l.histogram();
    let per = bus_core::stats::SUB;
    let mut buckets = Vec::new();
    let mut b = 0;
    // The encoder adds the buckets up: counts read from the segment may be
    // anything, so the running total is kept from passing u64::MAX.
    let mut total = 0u64;
    while b < bus_core::stats::BUCKETS {
        let end = if b == 0 { 1 } else { (b + per).min(bus_core::stats::BUCKETS) };
        let n = h.buckets[b..end].iter().fold(0u64, |t, &n| t.saturating_add(n)).min(u64::MAX - total);
        total += n;
        let upper = bus_core::stats::upper_bound(end - 1);
        buckets.push(((upper + 1) as f64 / 1e9, n));
        b = end;
    }
    if let Some(last) = buckets.last_mut() {
        last.0 = f64::INFINITY;
    }
    ConstHistogram { sum: l.sum_ns as f64 / 1e9, count: total, buckets }
}

/// The whole bus in the OpenMetrics text format.
pub fn encode(s: &Status) -> String {
    // A requester's reply queues come and go with its connections: as
    // series they would grow without bound.
    let mut s = s.clone();
    s.subsystems.retain(|x| !x.name.starts_with("_reply."));
    let collector = Snapshot(s);
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(collector));
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

#[derive(Debug)]
struct Snapshot(Status);

type Labels = Vec<(&'static str, String)>;

/// A per-subsystem counter: its name, help, and where status keeps it.
type SubsystemCounter = (&'static str, &'static str, fn(&bus_client::protocol::SubsystemStatus) -> u64);

impl prometheus_client::collector::Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let sub = |name: &str| -> Labels { vec![("subsystem", name.to_owned())] };
        let counters: [SubsystemCounter; 4] = [
            ("shmbus_messages_sent", "Messages sent to a subsystem", |x| x.sent),
            ("shmbus_messages_delivered", "Messages taken by a subsystem's receivers", |x| x.delivered),
            ("shmbus_messages_redelivered", "Messages put back after their receiver died", |x| x.redelivered),
            ("shmbus_bytes_sent", "Body bytes sent to a subsystem", |x| x.bytes),
        ];
        let m = enc.encode_descriptor(
            "shmbus_statistics_enabled",
            "1 if clients count bytes, failures and latency (the daemon's statistics setting); under 0 those series are left out",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(s.statistics as i64).encode(m)?;
        // Without statistics nobody counts bytes: no series, not zeros.
        let counted = if s.statistics { &counters[..] } else { &counters[..3] };
        for &(name, help, get) in counted {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for x in &s.subsystems {
                ConstCounter::new(get(x)).encode(m.encode_family(&sub(&x.name))?)?;
            }
        }
        let mut m = enc.encode_descriptor("shmbus_send_failures", "Failed sends by kind", None, MetricType::Counter)?;
        for x in s.subsystems.iter().filter(|_| s.statistics) {
            let f = &x.failures;
            for (kind, n) in [
                ("no_subscriber", f.no_subscriber),
                ("queue_full", f.queue_full),
                ("pool_exhausted", f.pool_exhausted),
                ("quota", f.quota),
            ] {
                let labels: Labels = vec![("subsystem", x.name.clone()), ("kind", kind.to_owned())];
                ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
            }
        }
        let group_labels = |x: &bus_client::protocol::SubsystemStatus,
                            g: &bus_client::protocol::GroupStatus|
         -> Labels { vec![("subsystem", x.name.clone()), ("group", g.name.clone())] };
        let mut m = enc.encode_descriptor(
            "shmbus_queue_depth",
            "Messages waiting in a group's queue",
            None,
            MetricType::Gauge,
        )?;
        for x in &s.subsystems {
            for g in &x.groups {
                ConstGauge::new(g.depth as i64).encode(m.encode_family(&group_labels(x, g))?)?;
            }
        }
        let mut m = enc.encode_descriptor("shmbus_subscribers", "Subscriptions of a group", None, MetricType::Gauge)?;
        for x in &s.subsystems {
            for g in &x.groups {
                ConstGauge::new(g.subscribers as i64).encode(m.encode_family(&group_labels(x, g))?)?;
            }
        }
        let mut m = enc.encode_descriptor(
            "shmbus_messages_dropped",
            "Copies a lossy group dropped because its queue was full",
            None,
            MetricType::Counter,
        )?;
        for x in &s.subsystems {
            for g in &x.groups {
                ConstCounter::new(g.dropped).encode(m.encode_family(&group_labels(x, g))?)?;
            }
        }
        let mut m = enc.encode_descriptor(
            "shmbus_latency_seconds",
            "Send to receive latency of sampled messages (one in 64 per receiver)",
            None,
            MetricType::Histogram,
        )?;
        for x in s.subsystems.iter().filter(|_| s.statistics) {
            histogram(&x.latency).encode(m.encode_family(&sub(&x.name))?)?;
        }
        let mut m = enc.encode_descriptor("shmbus_slots", "Message slots by state", None, MetricType::Gauge)?;
        let c = &s.slots;
        for (state, n) in [
            ("free", c.free),
            ("cached", c.cached),
            ("loaned", c.loaned),
            ("queued", c.queued),
            ("held", c.held),
            ("corrupt", c.corrupt),
        ] {
            let labels: Labels = vec![("state", state.to_owned())];
            ConstGauge::new(n as i64).encode(m.encode_family(&labels)?)?;
        }
        let m = enc.encode_descriptor("shmbus_clients", "Connected clients", None, MetricType::Gauge)?;
        ConstGauge::new(s.clients as i64).encode(m)?;
        let k = &s.counters;
        for (name, help, n) in [
            ("shmbus_clients_accepted", "Clients accepted since the daemon started", k.clients_accepted),
            ("shmbus_clients_reclaimed", "Clients reclaimed after they went away", k.clients_reclaimed),
            ("shmbus_slots_reclaimed", "Slots returned by reclaims", k.slots_reclaimed),
            ("shmbus_reclaim_redeliveries", "Messages redelivered by reclaims", k.messages_redelivered),
            ("shmbus_corruption_events", "Words found in the segment that cannot be right", k.corruption),
            ("shmbus_slots_lost", "Slots out of circulation after corruption", k.slots_lost),
        ] {
            let m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(n).encode(m)?;
        }
        Ok(())
    }
}
