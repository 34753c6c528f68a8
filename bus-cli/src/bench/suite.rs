//! The default measurement suite of `shmbus bench`: what runs, in which
//! order (every round runs every measurement once, so the systems compared
//! alternate A B A B), and how results are summarized (medians, min–max,
//! and ratios taken pair by pair within a round, so both sides of a ratio
//! saw the same state of the machine).

use super::link::{OtherGroup, PingPong, Stream, Touch, Transport, Wait};
use super::probe;
use bus_client::Bus;
use serde::Serialize;
use std::io::Write;
use std::time::Duration;

/// What to measure and how long.
#[derive(Debug, Clone)]
pub struct Options {
    /// Body sizes for throughput (latency uses the smallest and largest).
    pub sizes: Vec<usize>,
    /// Length of each timed throughput run.
    pub duration: Duration,
    /// Rounds.
    pub reps: usize,
    /// CPUs to pin the two sides to.
    pub cpus: Option<(usize, usize)>,
    /// Round trips per latency run (busy-poll; sleeping runs do a quarter).
    pub round_trips: u64,
    /// Run the throughput measurements.
    pub throughput: bool,
    /// Run the fan-out and tap measurements (also part of `throughput`),
    /// with the 1 → 1 run they are compared with.
    pub fanout: bool,
    /// Run the latency measurements.
    pub latency: bool,
    /// Run the asynchronous receiver's measurements (tokio), with the
    /// blocking ones they are compared with.
    pub asynchronous: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            sizes: vec![8, 64, 4096],
            duration: Duration::from_millis(200),
            reps: 3,
            cpus: super::default_cpus(),
            round_trips: 20_000,
            throughput: true,
            fanout: false,
            latency: true,
            asynchronous: true,
        }
    }
}

/// One measurement's results over all rounds.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// Unique name, e.g. `throughput/shmbus/64/header`.
    pub name: String,
    /// `throughput` or `latency`.
    pub kind: &'static str,
    /// `shmbus`, `uds`, `pipe` or `futex`.
    pub transport: &'static str,
    /// Body bytes.
    pub body_bytes: usize,
    /// Throughput: how much of the body is touched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub touch: Option<Touch>,
    /// Latency: how the receiver waits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait: Option<Wait>,
    /// Publishers (1, or 4 for fan-in).
    pub publishers: u32,
    /// Messages per send and receive call (1: one at a time).
    pub batch: usize,
    /// Median over rounds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msgs_per_sec: Option<f64>,
    /// Min and max over rounds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msgs_per_sec_range: Option<(f64, f64)>,
    /// One-way latency percentiles, each the median over rounds.
    #[serde(flatten)]
    pub latency: Option<Percentiles>,
    /// Messages lost over all rounds (must be 0).
    pub lost: u64,
    /// Median cache-line hand-off measured just before each round's run.
    pub handoff_ns: f64,
    /// Every round.
    pub samples: Vec<Sample>,
}

/// One round of one measurement.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// Throughput of this round.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msgs_per_sec: Option<f64>,
    /// Latency percentiles of this round.
    #[serde(flatten)]
    pub latency: Option<Percentiles>,
    /// Lost in this round.
    pub lost: u64,
    /// The probe before it.
    pub handoff_ns: f64,
}

/// Latency percentiles in nanoseconds (`p50_ns`, `p99_ns`, `p999_ns` in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// 99.9th percentile.
    pub p999_ns: u64,
}

impl Percentiles {
    /// The percentiles of a histogram.
    pub fn of(h: &hdrhistogram::Histogram<u64>) -> Self {
        Percentiles {
            p50_ns: h.value_at_quantile(0.5),
            p99_ns: h.value_at_quantile(0.99),
            p999_ns: h.value_at_quantile(0.999),
        }
    }

    /// Each percentile's median over `rounds` (`None` if there are none).
    fn median_of(rounds: impl Iterator<Item = Percentiles> + Clone) -> Option<Percentiles> {
        Some(Percentiles {
            p50_ns: median(rounds.clone().map(|p| p.p50_ns).collect())?,
            p99_ns: median(rounds.clone().map(|p| p.p99_ns).collect())?,
            p999_ns: median(rounds.map(|p| p.p999_ns).collect())?,
        })
    }
}

/// Messages per call in the batched throughput runs.
pub const BATCH: usize = 32;

/// How long a fan-out receiver sleeps when its queue is empty, in the
/// fan-out run whose receivers sleep rather than yield.
pub const FANOUT_SLEEP_US: u64 = 50;

#[derive(Debug, Clone, Copy)]
enum Spec {
    Tput {
        t: Transport,
        size: usize,
        touch: Touch,
        batch: usize,
    },
    FanIn {
        size: usize,
    },
    /// One publisher sending one message per call, `groups` groups of one
    /// receiver each: the rate at which every receiver gets every message.
    /// A receiver takes what is queued, up to [`BATCH`] per call; when its
    /// queue is empty it yields the CPU (`idle_us` 0) or sleeps `idle_us`
    /// microseconds.
    FanOut {
        size: usize,
        groups: usize,
        idle_us: u64,
    },
    /// 1 → 1 with a tap attached (a lossy group whose receiver sleeps
    /// while its queue is empty and drains it in batches, or, `stopped`,
    /// whose receiver is stopped so that every copy is dropped): the main
    /// receiver's rate.
    Tap {
        size: usize,
        stopped: bool,
    },
    Lat {
        t: Transport,
        size: usize,
        wait: Wait,
    },
    /// 1 → 1, the receiver a tokio task (one message per call).
    AsyncTput {
        size: usize,
    },
    /// 1 → 1, one message per call, the receiver pausing `pauses` hints
    /// between empty polls (the opt-in idle strategy,
    /// `Subscriber::set_poll_pause`).
    Paused {
        size: usize,
        pauses: u32,
    },
}

/// Pause hints of the receiver in the [`Spec::Paused`] run.
pub const PAUSED_RECEIVER: u32 = 128;

impl Spec {
    fn name(&self) -> String {
        match *self {
            Spec::Tput { t, size, touch, batch: 1 } => format!("throughput/{}/{size}/{}", t.name(), touch_name(touch)),
            Spec::Tput { t, size, touch, batch } => {
                format!("throughput-batch{batch}/{}/{size}/{}", t.name(), touch_name(touch))
            }
            Spec::FanIn { size } => format!("throughput-4to1/shmbus/{size}"),
            Spec::FanOut { size, groups, idle_us: 0 } => format!("throughput-1to{groups}groups/shmbus/{size}"),
            Spec::FanOut { size, groups, idle_us } => {
                format!("throughput-1to{groups}groups-sleep{idle_us}us/shmbus/{size}")
            }
            Spec::Tap { size, stopped: false } => format!("throughput-with-tap/shmbus/{size}"),
            Spec::Tap { size, stopped: true } => format!("throughput-with-stopped-tap/shmbus/{size}"),
            Spec::Lat { t, size, wait } => format!("latency/{}/{size}/{}", t.name(), wait.name()),
            Spec::AsyncTput { size } => format!("throughput-async/shmbus/{size}/header"),
            Spec::Paused { size, pauses } => format!("throughput-paused{pauses}/shmbus/{size}/header"),
        }
    }
}

fn touch_name(t: Touch) -> &'static str {
    if t == Touch::Full {
        "full"
    } else {
        "header"
    }
}

fn specs(o: &Options, max_body: usize) -> Vec<Spec> {
    let mut v = Vec::new();
    let sizes: Vec<usize> = o.sizes.iter().copied().filter(|&s| s <= max_body).collect();
    if o.throughput {
        for &size in &sizes {
            v.push(Spec::Tput { t: Transport::Shmbus, size, touch: Touch::Header, batch: 1 });
            v.push(Spec::Tput { t: Transport::Shmbus, size, touch: Touch::Full, batch: 1 });
            v.push(Spec::Tput { t: Transport::Shmbus, size, touch: Touch::Header, batch: BATCH });
            v.push(Spec::Tput { t: Transport::Uds, size, touch: Touch::Full, batch: 1 });
            v.push(Spec::Tput { t: Transport::Pipe, size, touch: Touch::Full, batch: 1 });
        }
        if max_body >= 64 {
            v.push(Spec::FanIn { size: 64 });
            v.push(Spec::Paused { size: 64, pauses: PAUSED_RECEIVER });
        }
    } else if o.fanout && max_body >= 64 {
        v.push(Spec::Tput { t: Transport::Shmbus, size: 64, touch: Touch::Header, batch: 1 });
    }
    if (o.throughput || o.fanout) && max_body >= 64 {
        v.push(Spec::FanOut { size: 64, groups: 4, idle_us: 0 });
        v.push(Spec::FanOut { size: 64, groups: 4, idle_us: FANOUT_SLEEP_US });
        v.push(Spec::Tap { size: 64, stopped: false });
        v.push(Spec::Tap { size: 64, stopped: true });
    }
    if o.latency {
        let mut lat_sizes: Vec<usize> =
            [sizes.iter().min().copied(), sizes.iter().max().copied()].into_iter().flatten().collect();
        lat_sizes.dedup();
        for size in lat_sizes {
            v.push(Spec::Lat { t: Transport::Shmbus, size, wait: Wait::Busy });
            v.push(Spec::Lat { t: Transport::Shmbus, size, wait: Wait::Sleep });
            v.push(Spec::Lat { t: Transport::Uds, size, wait: Wait::Sleep });
            v.push(Spec::Lat { t: Transport::Pipe, size, wait: Wait::Sleep });
        }
        v.push(Spec::Lat { t: Transport::Futex, size: 8, wait: Wait::Sleep });
    }
    if o.asynchronous && bus_client::async_supported().is_ok() {
        // The asynchronous receiver at the smallest size, and what it is
        // compared with, if the other measurements do not have it.
        if let Some(&size) = sizes.iter().min() {
            if !o.throughput {
                v.push(Spec::Tput { t: Transport::Shmbus, size, touch: Touch::Header, batch: 1 });
            }
            v.push(Spec::AsyncTput { size });
            if !o.latency {
                v.push(Spec::Lat { t: Transport::Shmbus, size, wait: Wait::Sleep });
                v.push(Spec::Lat { t: Transport::Futex, size: 8, wait: Wait::Sleep });
            }
            v.push(Spec::Lat { t: Transport::Shmbus, size, wait: Wait::Async });
        }
    }
    v
}

/// Runs the suite against `bus`, reporting progress on `progress`.
pub fn run(bus: &Bus, o: &Options, progress: &mut dyn Write) -> std::io::Result<Vec<Measurement>> {
    let max_body = bus.body_capacity(48);
    let specs = specs(o, max_body);
    if let (true, Err(e)) = (o.asynchronous, bus_client::async_supported()) {
        writeln!(progress, "note: the asynchronous receiver is not measured here: {e}")?;
    }
    if o.sizes.iter().any(|&s| s > max_body) {
        writeln!(progress, "note: bodies over {max_body} bytes skipped (the bus's slots are too small for them)")?;
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); specs.len()];
    let total = specs.len() * o.reps;
    let mut done = 0;
    for rep in 0..o.reps {
        for (i, spec) in specs.iter().enumerate() {
            done += 1;
            let handoff = probe::handoff_ns(o.cpus, 20_000);
            let s = measure(bus, o, *spec, handoff)?;
            let shown = match (s.msgs_per_sec, s.latency) {
                (Some(r), _) => format!("{:.2} M msg/s", r / 1e6),
                (_, Some(p)) => format!("p50 {} ns", p.p50_ns),
                _ => String::new(),
            };
            writeln!(
                progress,
                "[{done}/{total}] round {} {}: {shown}, lost {} (cache-line hand-off {handoff:.0} ns)",
                rep + 1,
                spec.name(),
                s.lost
            )?;
            samples[i].push(s);
        }
    }
    Ok(specs.iter().zip(samples).map(|(spec, s)| summarize(*spec, s)).collect())
}

fn measure(bus: &Bus, o: &Options, spec: Spec, handoff_ns: f64) -> std::io::Result<Sample> {
    let child_cpu = o.cpus.map(|c| c.1);
    if let Some((a, _)) = o.cpus {
        super::pin(a);
    }
    let blank = Sample { msgs_per_sec: None, latency: None, lost: 0, handoff_ns };
    match spec {
        Spec::Tput { t, size, touch, batch } => {
            let mut s = Stream::open(t, Some(bus), size, touch, child_cpu, batch)?;
            s.round(2_000)?; // warm-up: page faults, caches, the child's first wake-up
            let r = s.round_for(o.duration)?;
            s.close()?;
            Ok(Sample { msgs_per_sec: Some(r.received as f64 * 1e9 / r.elapsed_ns as f64), lost: r.lost, ..blank })
        }
        Spec::FanIn { size } => {
            // Nobody pinned (the next measurement pins this thread again).
            super::unpin();
            fan_in(bus, o, size).map(|(rate, lost)| Sample { msgs_per_sec: Some(rate), lost, ..blank })
        }
        Spec::FanOut { size, groups, idle_us } => {
            // Four receivers and a publisher share two CPUs: busy-polling
            // receivers would take turns by time slice, so each takes what
            // is there (up to a batch per call) and, when its queue is
            // empty, yields the CPU or sleeps a little (iceoryx2's figures
            // in BENCHMARKS.md use the same receive loops, one sample per
            // call: it has no batch receive). Nobody is pinned, the
            // publisher included (as in iceoryx2's run), so that the
            // scheduler spreads them; the next measurement pins this thread
            // again. The publisher sends one message per call.
            super::unpin();
            let receiver = OtherGroup { poll_us: Some(idle_us), batch: Some(BATCH), ..Default::default() };
            let others = vec![receiver; groups - 1];
            let mut s = Stream::open_groups(Transport::Shmbus, Some(bus), size, Touch::Header, 1, receiver, &others)?;
            s.round(2_000)?;
            let r = s.round_for(o.duration)?;
            s.close()?;
            Ok(Sample { msgs_per_sec: Some(r.received as f64 * 1e9 / r.elapsed_ns as f64), lost: r.lost, ..blank })
        }
        Spec::Tap { size, stopped } => {
            // A tap as a monitor runs it: it looks every millisecond and
            // takes what is there in large batches, never asleep on the
            // doorbell (so publishers never pay a wake-up for it).
            let tap = OtherGroup { tap: true, cpu: None, batch: Some(256), poll_us: Some(1000), ..Default::default() };
            let main = OtherGroup { cpu: child_cpu, batch: Some(1), ..Default::default() };
            let mut s = Stream::open_groups(Transport::Shmbus, Some(bus), size, Touch::Header, 1, main, &[tap])?;
            if stopped {
                s.freeze_taps();
            }
            s.round(2_000)?;
            let r = s.round_for(o.duration)?;
            s.close()?;
            Ok(Sample { msgs_per_sec: Some(r.received as f64 * 1e9 / r.elapsed_ns as f64), lost: r.lost, ..blank })
        }
        Spec::Paused { size, pauses } => {
            let main = OtherGroup { cpu: child_cpu, batch: Some(1), pause: Some(pauses), ..Default::default() };
            let mut s = Stream::open_groups(Transport::Shmbus, Some(bus), size, Touch::Header, 1, main, &[])?;
            s.round(2_000)?;
            let r = s.round_for(o.duration)?;
            s.close()?;
            Ok(Sample { msgs_per_sec: Some(r.received as f64 * 1e9 / r.elapsed_ns as f64), lost: r.lost, ..blank })
        }
        Spec::AsyncTput { size } => {
            let main = OtherGroup { cpu: child_cpu, batch: Some(1), asynchronous: true, ..Default::default() };
            let mut s = Stream::open_groups(Transport::Shmbus, Some(bus), size, Touch::Header, 1, main, &[])?;
            s.round(2_000)?;
            let r = s.round_for(o.duration)?;
            s.close()?;
            Ok(Sample { msgs_per_sec: Some(r.received as f64 * 1e9 / r.elapsed_ns as f64), lost: r.lost, ..blank })
        }
        Spec::Lat { t, size, wait } => {
            let n = if wait == Wait::Busy { o.round_trips } else { (o.round_trips / 4).max(100) };
            Ok(Sample { latency: Some(one_way(bus, t, size, wait, child_cpu, n)?), ..blank })
        }
    }
}

/// One-way latency over `t`: `n` ping-pong round trips (after a tenth as
/// many to warm up) with an echoing child on `child_cpu`, each halved.
pub(crate) fn one_way(
    bus: &Bus,
    t: Transport,
    size: usize,
    wait: Wait,
    child_cpu: Option<usize>,
    n: u64,
) -> std::io::Result<Percentiles> {
    let mut pp = PingPong::open(t, Some(bus), size, wait, child_cpu)?;
    for seq in 0..(n / 10).max(10) {
        pp.round_trip(seq)?;
    }
    let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("bounds");
    for seq in 0..n {
        let rtt = pp.round_trip(seq + 1_000_000)?;
        let _ = h.record((rtt / 2).max(1));
    }
    pp.close()?;
    Ok(Percentiles::of(&h))
}

/// 4 publisher processes → this process as subscriber, for `o.duration`.
fn fan_in(bus: &Bus, o: &Options, size: usize) -> std::io::Result<(f64, u64)> {
    let subsystem = super::link::fresh_subsystem("fanin");
    let sub = bus.subscribe(&subsystem).map_err(std::io::Error::other)?;
    let r = super::link::fan_in(bus, &sub, &subsystem, 4, size, super::link::Amount::For(o.duration))?;
    Ok((r.received as f64 * 1e9 / r.elapsed_ns as f64, r.lost))
}

fn median<T: Copy + PartialOrd>(mut v: Vec<T>) -> Option<T> {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v.get(v.len() / 2).copied()
}

fn summarize(spec: Spec, samples: Vec<Sample>) -> Measurement {
    let (kind, transport, body_bytes, touch, wait, publishers) = match spec {
        Spec::Tput { t, size, touch, .. } => ("throughput", t.name(), size, Some(touch), None, 1),
        Spec::AsyncTput { size } | Spec::Paused { size, .. } => {
            ("throughput", "shmbus", size, Some(Touch::Header), None, 1)
        }
        Spec::FanIn { size } => ("throughput", "shmbus", size, Some(Touch::Header), None, 4),
        Spec::FanOut { size, .. } | Spec::Tap { size, .. } => {
            ("throughput", "shmbus", size, Some(Touch::Header), None, 1)
        }
        Spec::Lat { t, size, wait } => ("latency", t.name(), size, None, Some(wait), 1),
    };
    let rates: Vec<f64> = samples.iter().filter_map(|s| s.msgs_per_sec).collect();
    let range = (!rates.is_empty())
        .then(|| (rates.iter().copied().fold(f64::MAX, f64::min), rates.iter().copied().fold(0.0, f64::max)));
    Measurement {
        name: spec.name(),
        kind,
        transport,
        body_bytes,
        touch,
        wait,
        publishers,
        batch: match spec {
            Spec::Tput { batch, .. } => batch,
            _ => 1,
        },
        msgs_per_sec: median(rates),
        msgs_per_sec_range: range,
        latency: Percentiles::median_of(samples.iter().filter_map(|s| s.latency)),
        lost: samples.iter().map(|s| s.lost).sum(),
        handoff_ns: median(samples.iter().map(|s| s.handoff_ns).collect()).unwrap_or(0.0),
        samples,
    }
}

/// Median over rounds of `a / b`, pairing the rounds of two measurements.
pub fn paired_ratio(a: &Measurement, b: &Measurement, f: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
    median(a.samples.iter().zip(&b.samples).filter_map(|(x, y)| Some(f(x)? / f(y)?)).collect())
}

/// Prints the human table.
pub fn print_table(out: &mut dyn Write, ms: &[Measurement], o: &Options) -> std::io::Result<()> {
    let find = |name: String| ms.iter().find(|m| m.name == name);
    writeln!(
        out,
        "{} rounds; each run {:?}; sides pinned to CPUs {}",
        o.reps,
        o.duration,
        o.cpus.map(|(a, b)| format!("{a} and {b}")).unwrap_or_else(|| "(not pinned)".into())
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "{:<38} {:>6} {:>12} {:>21} {:>9} {:>8} {:>8} {:>5}",
        "throughput", "body", "median", "min-max", "hand-off", "vs uds", "vs pipe", "lost"
    )?;
    let rate = |s: &Sample| s.msgs_per_sec;
    for m in ms.iter().filter(|m| m.kind == "throughput") {
        let (vs_uds, vs_pipe) = if m.transport == "shmbus" && m.publishers == 1 {
            (
                find(format!("throughput/uds/{}/full", m.body_bytes)).and_then(|b| paired_ratio(m, b, rate)),
                find(format!("throughput/pipe/{}/full", m.body_bytes)).and_then(|b| paired_ratio(m, b, rate)),
            )
        } else {
            (None, None)
        };
        let label = match (m.transport, m.publishers, m.touch) {
            ("shmbus", 4, _) => "shmbus, 4 publishers -> 1".to_string(),
            _ if m.name.starts_with("throughput-async") => "shmbus, async receiver (tokio)".into(),
            _ if m.name.starts_with("throughput-paused") => format!("shmbus, receiver pausing {PAUSED_RECEIVER}"),
            _ if m.name.starts_with("throughput-1to4groups-sleep") => {
                format!("shmbus, 1 -> 4 groups, {FANOUT_SLEEP_US} us sleeps")
            }
            _ if m.name.starts_with("throughput-1to4groups") => "shmbus, 1 -> 4 groups (each gets all)".into(),
            _ if m.name.starts_with("throughput-with-tap") => "shmbus, 1 -> 1 with a tap draining".into(),
            _ if m.name.starts_with("throughput-with-stopped-tap") => "shmbus, 1 -> 1 with a stopped tap".into(),
            ("shmbus", _, _) if m.batch > 1 => format!("shmbus, batches of {} (header)", m.batch),
            ("shmbus", _, Some(Touch::Header)) => "shmbus (header touched)".to_string(),
            ("shmbus", _, _) => "shmbus (whole body written and read)".to_string(),
            (t, _, _) => format!("{t} (one write, one read per message)"),
        };
        let (lo, hi) = m.msgs_per_sec_range.unwrap_or((0.0, 0.0));
        writeln!(
            out,
            "{:<38} {:>4} B {:>8.2} M/s {:>10.2}-{:<6.2} M/s {:>6.0} ns {:>8} {:>8} {:>5}",
            label,
            m.body_bytes,
            m.msgs_per_sec.unwrap_or(0.0) / 1e6,
            lo / 1e6,
            hi / 1e6,
            m.handoff_ns,
            vs_uds.map(|r| format!("{r:.1}x")).unwrap_or_default(),
            vs_pipe.map(|r| format!("{r:.1}x")).unwrap_or_default(),
            m.lost
        )?;
    }
    // The asynchronous receiver against the blocking one, same rounds.
    for m in ms.iter().filter(|m| m.name.starts_with("throughput-async/")) {
        let blocking = find(format!("throughput/shmbus/{}/header", m.body_bytes));
        if let Some(r) = blocking.and_then(|b| paired_ratio(m, b, rate)) {
            writeln!(
                out,
                "  async receiver vs blocking receiver ({} B): {r:.2}x (median of paired rounds)",
                m.body_bytes
            )?;
        }
    }
    // Groups against the plain 1 -> 1 path of the same rounds.
    if let Some(one) = find("throughput/shmbus/64/header".into()) {
        for (name, what) in [
            ("throughput-with-tap/shmbus/64", "1 -> 1 with a tap draining, vs 1 -> 1 alone"),
            ("throughput-with-stopped-tap/shmbus/64", "1 -> 1 with a stopped tap, vs 1 -> 1 alone"),
            ("throughput-1to4groups/shmbus/64", "1 -> 4 groups per receiver, vs 1 -> 1"),
            (
                &format!("throughput-1to4groups-sleep{FANOUT_SLEEP_US}us/shmbus/64"),
                "1 -> 4 groups per receiver (sleeping), vs 1 -> 1",
            ),
            (
                &format!("throughput-paused{PAUSED_RECEIVER}/shmbus/64/header"),
                "receiver pausing between empty polls (opt-in), vs 1 -> 1",
            ),
        ] {
            if let Some(r) = find(name.into()).and_then(|m| paired_ratio(m, one, rate)) {
                writeln!(out, "  {what}: {r:.2}x (median of paired rounds)")?;
            }
        }
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<38} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "one-way latency (round trip / 2)", "body", "p50", "p99", "p99.9", "hand-off", "vs futex"
    )?;
    let futex = find("latency/futex/8/sleep".into());
    for m in ms.iter().filter(|m| m.kind == "latency") {
        let p = m.latency.unwrap_or(Percentiles { p50_ns: 0, p99_ns: 0, p999_ns: 0 });
        let label = match (m.transport, m.wait) {
            ("shmbus", Some(Wait::Busy)) => "shmbus, busy-polling receiver",
            ("shmbus", Some(Wait::Async)) => "shmbus, async receivers (tokio)",
            ("shmbus", _) => "shmbus, receiver sleeps (futex wake)",
            ("uds", _) => "uds, blocking read",
            ("pipe", _) => "pipe, blocking read",
            _ => "bare shared futex hand-off",
        };
        let vs = match (m.transport, m.wait, futex) {
            ("shmbus", Some(Wait::Sleep | Wait::Async), Some(f)) => {
                paired_ratio(m, f, |s| s.latency.map(|p| p.p50_ns as f64)).map(|r| format!("{r:.2}x"))
            }
            _ => None,
        };
        writeln!(
            out,
            "{:<38} {:>4} B {:>6} ns {:>6} ns {:>6} ns {:>6.0} ns {:>9}",
            label,
            m.body_bytes,
            p.p50_ns,
            p.p99_ns,
            p.p999_ns,
            m.handoff_ns,
            vs.unwrap_or_default()
        )?;
    }
    for m in ms.iter().filter(|m| m.kind == "latency" && m.wait == Some(Wait::Async)) {
        let blocking = find(format!("latency/shmbus/{}/sleep", m.body_bytes));
        let p50 = |s: &Sample| s.latency.map(|p| p.p50_ns as f64);
        if let Some(r) = blocking.and_then(|b| paired_ratio(m, b, p50)) {
            writeln!(
                out,
                "  async wake-up vs blocking futex wake-up ({} B), p50: {r:.2}x (median of paired rounds)",
                m.body_bytes
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(o: &Options) -> Vec<String> {
        specs(o, 4096).iter().map(Spec::name).collect()
    }

    #[test]
    fn fanout_alone_runs_the_groups_and_taps_with_their_one_to_one_baseline() {
        let o = Options { throughput: false, fanout: true, latency: false, asynchronous: false, ..Default::default() };
        assert_eq!(
            names(&o),
            [
                "throughput/shmbus/64/header",
                "throughput-1to4groups/shmbus/64",
                "throughput-1to4groups-sleep50us/shmbus/64",
                "throughput-with-tap/shmbus/64",
                "throughput-with-stopped-tap/shmbus/64",
            ]
        );
    }

    #[test]
    fn throughput_runs_the_fanout_once_and_no_name_repeats() {
        for fanout in [false, true] {
            let o = Options { fanout, ..Default::default() };
            let mut n = names(&o);
            assert_eq!(n.iter().filter(|x| x.starts_with("throughput-1to4groups")).count(), 2, "{n:?}");
            let all = n.len();
            n.sort();
            n.dedup();
            assert_eq!(n.len(), all, "a measurement runs twice");
        }
    }
}
