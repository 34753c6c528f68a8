//! `iceoryx2-bench`: iceoryx2 publish/subscribe throughput on this machine,
//! measured the same way as shmbus's own cross-process throughput figures so
//! that the two can be compared.
//!
//! The parent process is the publisher; every subscriber is this same
//! executable started again with `ICEORYX2_BENCH_ROLE=subscriber` (its
//! parameters travel in further `ICEORYX2_BENCH_*` variables). A subscriber
//! prints one `RESULT ...` line on stdout, which the parent reads.
//!
//! Cases:
//! * `1to1`: one publisher (pinned to CPU 0) -> one subscriber (pinned to CPU 1).
//! * `1toN`: one publisher -> N subscribers, nobody pinned; every subscriber
//!   gets every message (pub/sub is broadcast).
//!
//! The service has safe overflow disabled and the publisher uses
//! `BackpressureStrategy::RetryUntilDelivered`: when a subscriber's buffer is
//! full the publisher waits, so nothing may be lost. Every subscriber checks
//! the sequence numbers and counts gaps as lost.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iceoryx2::port::update_connections::UpdateConnections;
use iceoryx2::prelude::*;

mod pingpong;

const ICEORYX2_VERSION: &str = "0.10.0";

const ROLE_ENV: &str = "ICEORYX2_BENCH_ROLE";
const SERVICE_ENV: &str = "ICEORYX2_BENCH_SERVICE";
const PIN_ENV: &str = "ICEORYX2_BENCH_PIN";
const WARMUP_ENV: &str = "ICEORYX2_BENCH_WARMUP_NS";
const DURATION_ENV: &str = "ICEORYX2_BENCH_DURATION_NS";
const BUFFER_ENV: &str = "ICEORYX2_BENCH_BUFFER";
const IDLE_ENV: &str = "ICEORYX2_BENCH_IDLE";

/// Sequence number of the end-of-stream message.
const SENTINEL: u64 = u64::MAX;

/// The publisher keeps sending this long after the measurement window ends,
/// so that every subscriber's window is full of traffic.
const TAIL_NS: u64 = 100_000_000;

/// The clock is read once every this many loop iterations.
const CLOCK_EVERY: u64 = 64;

/// The 64-byte payload: a sequence number, the publisher's start time
/// (CLOCK_MONOTONIC, shared by all processes of the machine), padding.
#[derive(Debug, Clone, Copy, ZeroCopySend)]
#[repr(C)]
struct Msg {
    seq: u64,
    t0_ns: u64,
    pad: [u8; 48],
}

const _: () = assert!(core::mem::size_of::<Msg>() == 64);

fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Pins the calling thread to `cpu`, or, with `None`, lets it run on every
/// online CPU (undoing a mask inherited from the parent).
fn set_affinity(cpu: Option<usize>) -> Result<(), String> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    match cpu {
        // SAFETY: CPU_SET writes inside `set` (libc's CPU_SET ignores indices past its size).
        Some(c) => unsafe { libc::CPU_SET(c, &mut set) },
        None => {
            // SAFETY: sysconf has no preconditions.
            let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
            for c in 0..n {
                // SAFETY: as above.
                unsafe { libc::CPU_SET(c, &mut set) };
            }
        }
    }
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 = this thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!("sched_setaffinity({cpu:?}): {}", std::io::Error::last_os_error()))
    }
}

fn env_u64(name: &str) -> u64 {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} not set")).parse().unwrap_or_else(|e| panic!("{name}: {e}"))
}

// ---------------------------------------------------------------------------
// Subscriber (child process)

fn subscriber_main() -> Result<(), Box<dyn std::error::Error>> {
    let service_name = std::env::var(SERVICE_ENV)?;
    let pin = match std::env::var(PIN_ENV)?.as_str() {
        "none" => None,
        s => Some(s.parse::<usize>()?),
    };
    set_affinity(pin)?;
    let warmup_ns = env_u64(WARMUP_ENV);
    let duration_ns = env_u64(DURATION_ENV);
    let buffer = env_u64(BUFFER_ENV) as usize;
    let idle = std::env::var(IDLE_ENV).unwrap_or_default();
    let yield_when_empty = idle == "yield";
    // `sleep:US`: sleep US microseconds after an empty receive().
    let sleep_when_empty = idle.strip_prefix("sleep:").and_then(|u| u.parse::<u64>().ok()).map(Duration::from_micros);

    let node = NodeBuilder::new().create::<ipc::Service>()?;
    let service = node.service_builder(&service_name.as_str().try_into()?).publish_subscribe::<Msg>().open()?;
    let subscriber = service.subscriber_builder().buffer_size(buffer).create()?;

    let mut expected: u64 = 0; // next sequence number expected
    let mut received: u64 = 0; // every message but the sentinel
    let mut lost: u64 = 0; // sum of gaps
    let mut reordered: u64 = 0; // seq below the expected one (must never happen)
    let mut first_seq: Option<u64> = None;
    let mut window: Option<(u64, u64)> = None; // [start, end) in CLOCK_MONOTONIC ns
                                               // (time, received) at the first clock reading inside / after the window
    let mut at_start: Option<(u64, u64)> = None;
    let mut at_end: Option<(u64, u64)> = None;
    let mut iter: u64 = 0;
    let mut last_progress = Instant::now();
    let mut received_at_last_check: u64 = 0;

    // The loop ends with the sentinel, which carries the number of messages sent.
    let sent_total: u64 = loop {
        iter += 1;
        if let Some(sample) = subscriber.receive()? {
            let m: Msg = *sample.payload(); // read the whole body
            drop(sample);
            if m.seq == SENTINEL {
                break m.t0_ns;
            }
            if window.is_none() {
                let start = m.t0_ns + warmup_ns;
                window = Some((start, start + duration_ns));
                first_seq = Some(m.seq);
            }
            if m.seq > expected {
                lost += m.seq - expected;
            } else if m.seq < expected {
                reordered += 1;
            }
            expected = m.seq + 1;
            received += 1;
        } else if let Some(d) = sleep_when_empty {
            std::thread::sleep(d);
        } else if yield_when_empty {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
        if iter % CLOCK_EVERY == 0 {
            let t = now_ns();
            if let Some((start, end)) = window {
                if at_start.is_none() && t >= start {
                    at_start = Some((t, received));
                }
                if at_end.is_none() && t >= end {
                    at_end = Some((t, received));
                }
            }
            if received != received_at_last_check {
                received_at_last_check = received;
                last_progress = Instant::now();
            } else if iter % (CLOCK_EVERY * 1024) == 0 && last_progress.elapsed() > Duration::from_secs(30) {
                return Err("no message for 30 s".into());
            }
        }
    };
    if expected < sent_total {
        lost += sent_total - expected; // messages missing at the end of the stream
    }
    let (rate, window_ok) = match (at_start, at_end) {
        (Some((t1, n1)), Some((t2, n2))) if t2 > t1 => ((n2 - n1) as f64 * 1e9 / (t2 - t1) as f64, true),
        _ => (0.0, false),
    };
    println!(
        "RESULT msgs_per_sec={rate:.0} received={received} lost={lost} reordered={reordered} \
         first_seq={} sent={sent_total} window_ok={window_ok}",
        first_seq.unwrap_or(0)
    );
    std::io::stdout().flush()?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Publisher (parent process)

#[derive(Clone, Debug)]
struct Opts {
    rounds: usize,
    subs: usize,
    warmup_ns: u64,
    duration_ns: u64,
    buffer: usize,
    run_1to1: bool,
    run_1ton: bool,
    probe: bool,
    /// What subscribers do after an empty receive(): "spin", "yield"
    /// (sched_yield), or "sleep:US" (sleep US microseconds).
    sub_idle: String,
    /// Ping-pong latency at 8 B, 64 B and 4 KiB instead of throughput.
    latency: bool,
    /// Timed round trips per latency run.
    round_trips: usize,
}

fn usage() -> ! {
    eprintln!(
        "usage: iceoryx2-bench [--rounds R (5)] [--subs N (4)] [--duration-ms D (1000)] \
         [--warmup-ms W (200)] [--buffer B (1024)] [--only 1to1|1toN] [--no-probe] [--sub-idle spin|yield|sleep:US (spin)] \
         [--latency [--round-trips N (20000)]]"
    );
    std::process::exit(2)
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        rounds: 5,
        subs: 4,
        warmup_ns: 200_000_000,
        duration_ns: 1_000_000_000,
        buffer: 1024,
        run_1to1: true,
        run_1ton: true,
        probe: true,
        sub_idle: "spin".into(),
        latency: false,
        round_trips: 20_000,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| -> u64 {
            args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
                eprintln!("{name} needs a number");
                usage()
            })
        };
        match a.as_str() {
            "--rounds" => o.rounds = val("--rounds").max(1) as usize,
            "--subs" => o.subs = val("--subs").max(1) as usize,
            "--duration-ms" => o.duration_ns = val("--duration-ms").max(1) * 1_000_000,
            "--warmup-ms" => o.warmup_ns = val("--warmup-ms") * 1_000_000,
            "--buffer" => o.buffer = val("--buffer").max(1) as usize,
            "--no-probe" => o.probe = false,
            "--latency" => o.latency = true,
            "--round-trips" => o.round_trips = val("--round-trips").max(10) as usize,
            "--sub-idle" => match args.next().as_deref() {
                Some(v @ ("spin" | "yield")) => o.sub_idle = v.into(),
                Some(v) if v.strip_prefix("sleep:").is_some_and(|u| u.parse::<u64>().is_ok()) => o.sub_idle = v.into(),
                _ => usage(),
            },
            "--only" => match args.next().as_deref() {
                Some("1to1") => o.run_1ton = false,
                Some("1toN") | Some("1ton") => o.run_1to1 = false,
                _ => usage(),
            },
            "-h" | "--help" => usage(),
            _ => {
                eprintln!("unknown argument {a}");
                usage()
            }
        }
    }
    o
}

struct SubResult {
    rate: f64,
    lost: u64,
    reordered: u64,
    first_seq: u64,
    window_ok: bool,
}

fn parse_result(out: &str) -> Option<SubResult> {
    let line = out.lines().find(|l| l.starts_with("RESULT "))?;
    let get = |k: &str| -> Option<&str> {
        line.split_whitespace().find_map(|kv| kv.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
    };
    Some(SubResult {
        rate: get("msgs_per_sec")?.parse().ok()?,
        lost: get("lost")?.parse().ok()?,
        reordered: get("reordered")?.parse().ok()?,
        first_seq: get("first_seq")?.parse().ok()?,
        window_ok: get("window_ok")? == "true",
    })
}

struct RoundResult {
    subs: Vec<SubResult>,
    pub_rate: f64,
}

/// Kills the children and exits if a round hangs (a dead subscriber would
/// block a RetryUntilDelivered publisher forever).
struct Watchdog {
    deadline_ns: Arc<AtomicU64>,
    pids: Arc<Mutex<Vec<i32>>>,
}

impl Watchdog {
    fn start() -> Watchdog {
        let deadline_ns = Arc::new(AtomicU64::new(u64::MAX));
        let pids: Arc<Mutex<Vec<i32>>> = Arc::new(Mutex::new(Vec::new()));
        let (d, p) = (deadline_ns.clone(), pids.clone());
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(200));
            if now_ns() > d.load(Ordering::Relaxed) {
                eprintln!("error: round timed out; killing subscribers");
                for &pid in p.lock().unwrap().iter() {
                    // SAFETY: plain kill(2) of our own child.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                std::process::exit(3);
            }
        });
        Watchdog { deadline_ns, pids }
    }
}

fn run_round(
    node: &Node<ipc::Service>,
    o: &Opts,
    case: &str,
    round: usize,
    n_subs: usize,
    pinned: bool,
    wd: &Watchdog,
) -> Result<RoundResult, Box<dyn std::error::Error>> {
    set_affinity(if pinned { Some(0) } else { None })?;
    let name = format!("shmbus-peers/iceoryx2-bench/{}/{case}/{round}", std::process::id());
    let service = node
        .service_builder(&name.as_str().try_into()?)
        .publish_subscribe::<Msg>()
        .enable_safe_overflow(false)
        .subscriber_max_buffer_size(o.buffer)
        .history_size(0)
        .max_publishers(1)
        .max_subscribers(n_subs)
        .create()?;
    let publisher =
        service.publisher_builder().backpressure_strategy(BackpressureStrategy::RetryUntilDelivered).create()?;

    wd.deadline_ns.store(now_ns() + 60_000_000_000, Ordering::Relaxed);
    let exe = std::env::current_exe()?;
    let mut children: Vec<Child> = Vec::new();
    for i in 0..n_subs {
        let pin = if pinned && i == 0 { "1".to_string() } else { "none".to_string() };
        let child = Command::new(&exe)
            .env(ROLE_ENV, "subscriber")
            .env(SERVICE_ENV, &name)
            .env(PIN_ENV, pin)
            .env(WARMUP_ENV, o.warmup_ns.to_string())
            .env(DURATION_ENV, o.duration_ns.to_string())
            .env(BUFFER_ENV, o.buffer.to_string())
            .env(IDLE_ENV, &o.sub_idle)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()?;
        wd.pids.lock().unwrap().push(child.id() as i32);
        children.push(child);
    }

    // Wait until every subscriber is connected, so that each one sees the stream from seq 0.
    let t = Instant::now();
    while service.dynamic_config().number_of_subscribers() < n_subs {
        for c in children.iter_mut() {
            if let Some(st) = c.try_wait()? {
                return Err(format!("subscriber exited before connecting: {st}").into());
            }
        }
        if t.elapsed() > Duration::from_secs(20) {
            return Err("subscribers did not connect within 20 s".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    publisher.update_connections()?;

    let t0 = now_ns();
    let win_start = t0 + o.warmup_ns;
    let win_end = win_start + o.duration_ns;
    let stop = win_end + TAIL_NS;
    let mut seq: u64 = 0;
    let (mut pub_start, mut pub_end): (Option<(u64, u64)>, Option<(u64, u64)>) = (None, None);
    loop {
        let sample = publisher.loan_uninit()?;
        let sample = sample.write_payload(Msg { seq, t0_ns: t0, pad: [seq as u8; 48] });
        let recipients = sample.send()?;
        if recipients != n_subs {
            return Err(format!("seq {seq} delivered to {recipients} of {n_subs} subscribers").into());
        }
        seq += 1;
        if seq % CLOCK_EVERY == 0 {
            let t = now_ns();
            if pub_start.is_none() && t >= win_start {
                pub_start = Some((t, seq));
            }
            if pub_end.is_none() && t >= win_end {
                pub_end = Some((t, seq));
            }
            if t >= stop {
                break;
            }
        }
    }
    // End of stream: the sentinel carries the number of messages sent.
    let sentinel = publisher.loan_uninit()?.write_payload(Msg { seq: SENTINEL, t0_ns: seq, pad: [0; 48] });
    sentinel.send()?;

    let mut subs = Vec::new();
    for c in children {
        let out = c.wait_with_output()?;
        if !out.status.success() {
            return Err(format!("subscriber failed: {}", out.status).into());
        }
        let text = String::from_utf8_lossy(&out.stdout);
        subs.push(parse_result(&text).ok_or_else(|| format!("bad subscriber output: {text:?}"))?);
    }
    wd.pids.lock().unwrap().clear();
    wd.deadline_ns.store(u64::MAX, Ordering::Relaxed);
    let pub_rate = match (pub_start, pub_end) {
        (Some((t1, n1)), Some((t2, n2))) if t2 > t1 => (n2 - n1) as f64 * 1e9 / (t2 - t1) as f64,
        _ => 0.0,
    };
    drop(publisher);
    drop(service);
    Ok(RoundResult { subs, pub_rate })
}

// ---------------------------------------------------------------------------
// Cache-line probe (context for the figures: on these 2-vCPU VMs the
// CPU-to-CPU hand-off time drifts, and every cross-process figure with it).

#[repr(align(128))]
struct Line(AtomicU64);

fn handoff_ns() -> f64 {
    const N: u64 = 200_000;
    let mut runs: Vec<f64> = (0..5)
        .map(|_| {
            let line = Arc::new(Line(AtomicU64::new(0)));
            let go = Arc::new(AtomicBool::new(false));
            let (l2, g2) = (line.clone(), go.clone());
            let echo = std::thread::spawn(move || {
                let _ = set_affinity(Some(1));
                g2.store(true, Ordering::Release);
                for i in 0..N {
                    while l2.0.load(Ordering::Acquire) != 2 * i + 1 {
                        std::hint::spin_loop();
                    }
                    l2.0.store(2 * i + 2, Ordering::Release);
                }
            });
            let ping = std::thread::spawn(move || {
                let _ = set_affinity(Some(0));
                while !go.load(Ordering::Acquire) {
                    std::hint::spin_loop();
                }
                let t = Instant::now();
                for i in 0..N {
                    line.0.store(2 * i + 1, Ordering::Release);
                    while line.0.load(Ordering::Acquire) != 2 * i + 2 {
                        std::hint::spin_loop();
                    }
                }
                t.elapsed().as_nanos() as f64 / (2 * N) as f64
            });
            echo.join().unwrap();
            ping.join().unwrap()
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[2]
}

// ---------------------------------------------------------------------------

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn check(sub: &SubResult, problems: &mut Vec<String>, what: &str) {
    if sub.lost != 0 || sub.reordered != 0 || sub.first_seq != 0 {
        problems.push(format!("{what}: lost={} reordered={} first_seq={}", sub.lost, sub.reordered, sub.first_seq));
    }
    if !sub.window_ok {
        problems.push(format!("{what}: measurement window not completed"));
    }
}

fn main() {
    if std::env::var(ROLE_ENV).as_deref() == Ok("echo") {
        set_log_level_from_env_or(LogLevel::Warn);
        if let Err(e) = pingpong::echo_main() {
            eprintln!("echo error: {e}");
            std::process::exit(1);
        }
        return;
    }
    if std::env::var(ROLE_ENV).as_deref() == Ok("subscriber") {
        set_log_level_from_env_or(LogLevel::Warn);
        if let Err(e) = subscriber_main() {
            eprintln!("subscriber error: {e}");
            std::process::exit(1);
        }
        return;
    }
    set_log_level_from_env_or(LogLevel::Warn);
    let o = parse_opts();
    let node = NodeBuilder::new().create::<ipc::Service>().unwrap_or_else(|e| {
        eprintln!("error: cannot create iceoryx2 node: {e:?}");
        std::process::exit(1)
    });
    let wd = Watchdog::start();
    if o.latency {
        if let Err(e) = pingpong::run(&node, o.rounds, o.round_trips, o.probe) {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
        return;
    }
    let n = o.subs;
    println!(
        "# iceoryx2 {ICEORYX2_VERSION} pub/sub, ipc::Service, payload 64 B (loan_uninit + write_payload + send; \
         subscriber copies the whole payload), subscribers poll receive() ({} when empty)",
        match o.sub_idle.as_str() {
            "yield" => "sched_yield".to_owned(),
            "spin" => "spin".to_owned(),
            s => format!("{} us sleep", s.trim_start_matches("sleep:")),
        }
    );
    println!(
        "# enable_safe_overflow=false backpressure=RetryUntilDelivered subscriber_buffer={} history=0 \
         warmup_ms={} duration_ms={} rounds={}",
        o.buffer,
        o.warmup_ns / 1_000_000,
        o.duration_ns / 1_000_000,
        o.rounds
    );
    println!("# 1to1: publisher pinned to CPU 0, subscriber to CPU 1; 1to{n}: nobody pinned");

    let mut problems: Vec<String> = Vec::new();
    // 1toN: per-round medians over subscribers, and every subscriber's rate of every round.
    let (mut r11, mut r1n_med, mut r1n_all) = (Vec::new(), Vec::new(), Vec::new());
    let mut lost_11 = 0u64;
    let mut lost_1n = 0u64;
    let mut probes = Vec::new();
    for round in 1..=o.rounds {
        let probe = if o.probe {
            let p = handoff_ns();
            probes.push(p);
            format!(" handoff_ns={p:.0}")
        } else {
            String::new()
        };
        if o.run_1to1 {
            match run_round(&node, &o, "1to1", round, 1, true, &wd) {
                Ok(r) => {
                    let s = &r.subs[0];
                    check(s, &mut problems, &format!("1to1 round {round}"));
                    lost_11 += s.lost;
                    r11.push(s.rate);
                    println!(
                        "1to1 round={round} msgs_per_sec={:.0} lost={} pub_msgs_per_sec={:.0}{probe}",
                        s.rate, s.lost, r.pub_rate
                    );
                }
                Err(e) => {
                    println!("1to1 round={round} error=\"{e}\"");
                    problems.push(format!("1to1 round {round}: {e}"));
                }
            }
        }
        if o.run_1ton {
            match run_round(&node, &o, "1toN", round, n, false, &wd) {
                Ok(r) => {
                    let rates: Vec<f64> = r.subs.iter().map(|s| s.rate).collect();
                    let lost: u64 = r.subs.iter().map(|s| s.lost).sum();
                    for (i, s) in r.subs.iter().enumerate() {
                        check(s, &mut problems, &format!("1to{n} round {round} subscriber {i}"));
                    }
                    let (mn, md, mx) = (
                        rates.iter().copied().fold(f64::INFINITY, f64::min),
                        median(&rates),
                        rates.iter().copied().fold(0.0, f64::max),
                    );
                    lost_1n += lost;
                    r1n_med.push(md);
                    r1n_all.extend_from_slice(&rates);
                    println!(
                        "1to{n} round={round} per_sub_median={md:.0} min={mn:.0} max={mx:.0} lost={lost} \
                         pub_msgs_per_sec={:.0}{probe}",
                        r.pub_rate
                    );
                }
                Err(e) => {
                    println!("1to{n} round={round} error=\"{e}\"");
                    problems.push(format!("1to{n} round {round}: {e}"));
                }
            }
        }
        std::io::stdout().flush().ok();
    }
    let probe = if probes.is_empty() { String::new() } else { format!(" handoff_ns={:.0}", median(&probes)) };
    if !r11.is_empty() {
        println!(
            "1to1 median rounds={} msgs_per_sec={:.0} min={:.0} max={:.0} lost={lost_11}{probe}",
            r11.len(),
            median(&r11),
            r11.iter().copied().fold(f64::INFINITY, f64::min),
            r11.iter().copied().fold(0.0, f64::max)
        );
    }
    if !r1n_med.is_empty() {
        println!(
            "1to{n} median rounds={} per_sub_median={:.0} min={:.0} max={:.0} lost={lost_1n}{probe}",
            r1n_med.len(),
            median(&r1n_med),
            r1n_all.iter().copied().fold(f64::INFINITY, f64::min),
            r1n_all.iter().copied().fold(0.0, f64::max)
        );
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("problem: {p}");
        }
        std::process::exit(1);
    }
}
