//! `shmbus`, the command line ([`main`]): inspect and use a bus, and
//! measure it (`shmbus bench`, see [`crate::bench`]).
//! Exit status: 0 success, 1 runtime error (one line on stderr), 2 usage.

use bus_client::{Bus, RecvError};
use bus_daemon::cli::BusArgs;
use clap::{Parser, Subcommand};
use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// `shmbus`: inspect and use a bus from the command line.
#[derive(Debug, Parser)]
#[command(name = "shmbus", version, about = "Inspect and use a shmbus bus")]
pub struct Cli {
    #[command(flatten)]
    bus: BusArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Slots, clients and subsystems of the bus.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Send one message (raw bytes) to PATH, e.g. api://users/123.
    Send {
        /// subsystem://route
        path: String,
        /// The body; read from stdin when absent.
        body: Option<String>,
        /// How long to wait for a free slot or queue space.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
        timeout: Duration,
    },
    /// Print the messages of SUBSYSTEM: path, a tab, the body (text, or hex).
    /// By default the listener joins the subsystem's default group (it
    /// shares messages with the other subscribers there); --group joins
    /// another consumer group, --tap sees every message without slowing
    /// anyone (a lossy group of its own, gone when the listener exits).
    Listen {
        /// The subsystem.
        subsystem: String,
        /// Join consumer group NAME (created if new; blocking).
        #[arg(long, value_name = "NAME", conflicts_with = "tap")]
        group: Option<String>,
        /// Listen through a tap: a lossy group of this listener alone.
        #[arg(long)]
        tap: bool,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// Exit after this long (an error if --count was not reached).
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        /// Also print id, trace id and flags.
        #[arg(long)]
        verbose: bool,
    },
    /// Send a request to PATH (raw bytes) and print the reply's body.
    Request {
        /// subsystem://route
        path: String,
        /// The body; read from stdin when absent.
        body: Option<String>,
        /// How long to wait for the reply.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
        timeout: Duration,
    },
    /// Ask the daemon to shut down.
    Shutdown,
    /// The bus live: per subsystem depth, rates, latency percentiles over
    /// the last interval, redeliveries and failures; per client slots and
    /// rates; the pool. Keys: q quit, c clients, s/←/→ sort column,
    /// r reverse.
    Top {
        /// Refresh interval.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
        interval: Duration,
        /// Print one frame as plain text (rates over one interval) and exit.
        #[arg(long)]
        once: bool,
    },
    /// Measure shmbus against a Unix socket, a pipe and a bare futex, each
    /// side in its own process. Uses the running daemon, or starts one.
    Bench {
        /// One JSON array of measurements on stdout.
        #[arg(long)]
        json: bool,
        /// Body sizes in bytes.
        #[arg(long, value_delimiter = ',', default_value = "8,64,4096")]
        sizes: Vec<usize>,
        /// Length of each timed throughput run.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "200ms")]
        duration: Duration,
        /// Rounds (each round runs every measurement once, interleaved).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// The two CPUs to pin the sides to, e.g. 0,1.
        #[arg(long, value_delimiter = ',')]
        cpus: Option<Vec<usize>>,
        /// Do not pin.
        #[arg(long, conflicts_with = "cpus")]
        no_pin: bool,
        /// Round trips per latency run.
        #[arg(long, default_value_t = 20_000)]
        round_trips: u64,
        /// Only throughput, only the fan-out to consumer groups and the
        /// taps (with the 1 → 1 run they are compared with; part of
        /// throughput), only latency, only the asynchronous (tokio)
        /// receiver against the blocking one (with the cost of an idle
        /// receiver of each kind, 10 s each; `--json` then prints
        /// `{"measurements": [...], "idle": [...]}`), or only the
        /// request/response measurements (not in the default suite).
        #[arg(long, value_parser = ["throughput", "fanout", "latency", "async", "requests"])]
        only: Option<String>,
    },
}

/// Entry point of `shmbus`.
pub fn main() -> ExitCode {
    crate::bench::peer_main_if_requested();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our stdout went away (`shmbus status | head`).
        Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) => {
            ExitCode::SUCCESS
        }
        Err(e) => bus_daemon::cli::fail(e),
    }
}

fn connect(b: &BusArgs, send_timeout: Duration) -> Result<Bus, Box<dyn std::error::Error>> {
    let mut builder = Bus::builder().send_timeout(send_timeout);
    if let Some(n) = &b.bus {
        builder = builder.bus(n.clone());
    }
    if let Some(s) = &b.socket {
        builder = builder.socket(s.clone());
    }
    Ok(builder.connect()?)
}

/// A control request (`status`, `shutdown`): through a [`Bus`], as every
/// client; but these need nothing of the segment, so when it does not open
/// (a faulty process overwrote its header) or reads as stopped while the
/// daemon still answers, the request goes over the control socket alone.
/// The daemon answers control requests whatever the segment holds.
fn control(
    b: &BusArgs,
    req: bus_client::protocol::Request,
) -> Result<bus_client::protocol::Reply, Box<dyn std::error::Error>> {
    use bus_client::protocol::{Reply, Request};
    use bus_client::{ConnectError, RequestError};
    let first: Box<dyn std::error::Error> = match connect(b, Duration::from_secs(5)) {
        Ok(bus) => {
            let r = match &req {
                Request::Shutdown => bus.shutdown_daemon().map(|()| Reply::ShuttingDown),
                _ => bus.status().map(Reply::Status),
            };
            match r {
                Err(RequestError::BusGone) => RequestError::BusGone.into(),
                r => return Ok(r?),
            }
        }
        Err(e) if e.downcast_ref::<ConnectError>().is_some_and(|e| matches!(e, ConnectError::Segment(_))) => e,
        Err(e) => return Err(e),
    };
    // The fallback's own failure would hide the real one: report the first.
    control_socket_only(b, req).map_err(|_| first)
}

/// One control request over the socket alone: hello (the segment fd that
/// comes with the welcome is closed unmapped), then `req`.
fn control_socket_only(
    b: &BusArgs,
    req: bus_client::protocol::Request,
) -> Result<bus_client::protocol::Reply, Box<dyn std::error::Error>> {
    use bus_client::control::{self, Received};
    use bus_client::protocol::{Reply, Request};
    use std::os::fd::AsFd;
    let socket = bus_client::addr::find_socket(b.socket.as_deref(), b.bus.as_deref());
    let fd = control::connect(&socket, std::time::Instant::now() + Duration::from_secs(5))?;
    let tv = nix::sys::time::TimeVal::new(5, 0);
    nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::ReceiveTimeout, &tv)?;
    let mut buf = Vec::new();
    let mut ask = |r: &Request| -> Result<Reply, Box<dyn std::error::Error>> {
        control::send(fd.as_fd(), r, None)?;
        let mut restarting = None;
        loop {
            let got = control::recv::<Reply>(fd.as_fd(), &mut buf);
            return match (got, restarting) {
                (Ok(Received::Packet(Reply::Restarting { wait_ms }, _)), _) => {
                    restarting = Some(wait_ms);
                    continue;
                }
                (Ok(Received::Packet(Reply::Error { message, .. }, _)), _) => Err(message.into()),
                (Ok(Received::Packet(reply, _)), _) => Ok(reply),
                (Ok(Received::Closed), _) => Err("the daemon closed the connection".into()),
                (Err(e), Some(ms)) if e.kind() == std::io::ErrorKind::WouldBlock => Err(format!(
                    "the daemon is restarting: it serves new clients once the previous daemon's clients are back, or within {}s; try again then",
                    ms.div_ceil(1000)
                )
                .into()),
                (Err(e), _) => Err(e.into()),
            };
        }
    };
    match ask(&Request::Hello { layout_version: bus_core::LAYOUT_VERSION, resume: None, name: None, waits: true })? {
        Reply::Welcome { .. } => ask(&req),
        other => Err(format!("unexpected answer from the daemon: {other:?}").into()),
    }
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Status { json } => {
            let s = match control(&cli.bus, bus_client::protocol::Request::Status)? {
                bus_client::protocol::Reply::Status(s) => s,
                other => return Err(format!("unexpected answer from the daemon: {other:?}").into()),
            };
            let mut out = std::io::stdout().lock();
            if json {
                serde_json::to_writer_pretty(&mut out, &s)?;
                writeln!(out)?;
            } else {
                print_status(&mut out, &s)?;
            }
            Ok(())
        }
        Command::Send { path, body, timeout } => {
            let bytes = body_or_stdin(body)?;
            let bus = connect(&cli.bus, timeout)?;
            let mut publisher = bus.publisher().create()?;
            publisher.send_bytes(&path, &bytes)?;
            Ok(())
        }
        Command::Listen { subsystem, group, tap, count, timeout, verbose } => {
            if let Some((name, _)) = subsystem.split_once("://") {
                return Err(match name {
                    "" => "listen takes a subsystem (the name before :// in a path), not a path".to_owned(),
                    _ => format!(
                        "listen takes a subsystem, not a path: `shmbus listen {name}` prints every message sent to {name}://…"
                    ),
                }
                .into());
            }
            let bus = connect(&cli.bus, Duration::from_secs(5))?;
            let mut builder = bus.subscription(&subsystem);
            if let Some(g) = &group {
                builder = builder.group(g);
            }
            if tap {
                builder = builder.tap();
            }
            let sub = builder.create()?;
            // A timeout beyond what the clock can hold waits for good.
            let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
            let mut out = std::io::stdout().lock();
            let mut n = 0u64;
            while count.is_none_or(|c| n < c) {
                let msg = match deadline {
                    Some(d) => match sub.recv_timeout(d.saturating_duration_since(Instant::now())) {
                        Ok(m) => m,
                        Err(RecvError::Timeout(_)) => {
                            return match count {
                                Some(c) => Err(format!("timed out after {n} of {c} messages").into()),
                                None => Ok(()),
                            }
                        }
                        Err(e) => return Err(e.into()),
                    },
                    None => sub.recv()?,
                };
                let body = msg.body_bytes()?;
                let mut line = String::new();
                if verbose {
                    line.push_str(&format!(
                        "id={:#x}\ttrace={:#x}\t{}",
                        msg.id(),
                        msg.trace_id(),
                        if msg.is_redelivered() { "redelivered\t" } else { "" }
                    ));
                }
                line.push_str(&format!("{}\t{}\n", msg.path(), render(body)));
                if let Err(e) = out.write_all(line.as_bytes()).and_then(|()| out.flush()) {
                    // Nobody took the message (the reader went away, as
                    // `listen | head -1`'s does): end without releasing it,
                    // so that the daemon gives it back to the group, flagged
                    // redelivered, as it does for any receiver that dies
                    // holding one. Releasing it would lose it.
                    std::mem::forget(msg);
                    if e.kind() == std::io::ErrorKind::BrokenPipe {
                        std::process::exit(0);
                    }
                    eprintln!("error: writing the message out: {e} (it goes back to the queue)");
                    std::process::exit(1);
                }
                n += 1;
            }
            Ok(())
        }
        Command::Request { path, body, timeout } => {
            let bytes = body_or_stdin(body)?;
            let bus = connect(&cli.bus, timeout)?;
            let requester = bus.requester()?;
            let reply = requester.request_bytes(&path, &bytes, timeout)?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", render(reply.body_bytes()?))?;
            Ok(())
        }
        Command::Top { interval, once } => {
            let bus = connect(&cli.bus, Duration::from_secs(5))?;
            crate::top::run(&bus, interval.max(Duration::from_millis(100)), once)
        }
        Command::Shutdown => match control(&cli.bus, bus_client::protocol::Request::Shutdown)? {
            bus_client::protocol::Reply::ShuttingDown => Ok(()),
            other => Err(format!("unexpected answer from the daemon: {other:?}").into()),
        },
        Command::Bench { json, sizes, duration, reps, cpus, no_pin, round_trips, only } => {
            let cpus = match cpus {
                _ if no_pin => None,
                Some(c) => Some(crate::bench::check_cpus(&c)?),
                None => crate::bench::default_cpus(),
            };
            let o = crate::bench::suite::Options {
                sizes,
                duration,
                reps: reps.max(1),
                cpus,
                round_trips,
                throughput: only.is_none() || only.as_deref() == Some("throughput"),
                fanout: only.as_deref() == Some("fanout"),
                latency: only.is_none() || only.as_deref() == Some("latency"),
                asynchronous: only.is_none() || only.as_deref() == Some("async"),
            };
            bench(&cli.bus, o, json, only.as_deref())
        }
    }
}

/// `shmbus bench`: connects to the bus (or starts a daemon on a private
/// socket, with slots big enough for the largest size), runs the suite.
fn bench(
    b: &BusArgs,
    o: crate::bench::suite::Options,
    json: bool,
    only: Option<&str>,
) -> Result<(), Box<dyn std::error::Error>> {
    let requests = only == Some("requests");
    let mut err = std::io::stderr();
    let explicit = b.socket.is_some() || b.bus.is_some() || std::env::var_os(bus_client::addr::ENV_SOCKET).is_some();
    let (bus, _daemon) = match connect(b, Duration::from_secs(30)) {
        Ok(bus) => (bus, None),
        Err(e) if explicit => return Err(e),
        Err(_) => {
            // The request measurements send 64-byte bodies whatever
            // `--sizes` says: slots sized for 4 KiB would put each
            // message's header and path lines a page apart (and the
            // one-way latency they are compared with uses 64-byte slots).
            let largest = if requests { 64 } else { o.sizes.iter().copied().max().unwrap_or(64) };
            let slot_size = ((64 + 64 + largest).div_ceil(64) * 64) as u32;
            remove_stale_bench_sockets(&bus_client::addr::runtime_dir());
            let socket = bus_client::addr::runtime_dir().join(format!("bench-{}.sock", std::process::id()));
            let cfg = bus_daemon::config::FileConfig {
                bus: Some(format!("bench-{}", std::process::id())),
                socket: Some(socket.clone()),
                slots: Some(4096),
                slot_size: Some(slot_size),
                queue_capacity: Some(1024),
                ..Default::default()
            }
            .resolve()?;
            let d = bus_daemon::spawn(cfg)?;
            writeln!(
                err,
                "started a daemon for the benchmark on {} (4096 slots of {slot_size} bytes)",
                socket.display()
            )?;
            (Bus::builder().socket(&socket).send_timeout(Duration::from_secs(30)).connect()?, Some(d))
        }
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    writeln!(err, "machine: {n} CPUs, {cpu}")?;
    if requests {
        let ms = crate::bench::requests::run(&bus, &o, &mut err)?;
        let mut out = std::io::stdout().lock();
        if json {
            serde_json::to_writer_pretty(&mut out, &ms)?;
            writeln!(out)?;
        } else {
            for m in &ms {
                let v = match (m.latency, m.ns_per_op, m.per_sec, m.bytes) {
                    (_, _, _, Some(b)) => format!("{b} bytes"),
                    (Some(p), ..) => format!("p50 {} ns, p99 {} ns, p99.9 {} ns", p.p50_ns, p.p99_ns, p.p999_ns),
                    (_, Some(ns), Some(r), _) => format!("{ns} ns per operation ({r:.0}/s)"),
                    (_, _, Some(r), _) => format!("{r:.0} requests/s"),
                    _ => String::new(),
                };
                let hand =
                    if m.handoff_ns > 0.0 { format!("  (hand-off {:.0} ns)", m.handoff_ns) } else { String::new() };
                let vs = match (m.ratio_to_oneway, m.oneway_p50_ns) {
                    (Some(r), Some(w)) => format!("  {r:.2}x one-way ({w} ns, just before)"),
                    _ => String::new(),
                };
                writeln!(out, "{:<40} {v}{hand}{vs}", m.name)?;
            }
        }
        return Ok(());
    }
    let ms = crate::bench::suite::run(&bus, &o, &mut err)?;
    // `--only async` also measures what an idle receiver costs (10 s each).
    let idle = if only == Some("async") && bus_client::async_supported().is_ok() {
        writeln!(err, "a receiver of each kind waits 10 s on an idle queue…")?;
        crate::bench::idle::run(&bus, 10)?
    } else {
        Vec::new()
    };
    let mut out = std::io::stdout().lock();
    if json {
        if idle.is_empty() {
            serde_json::to_writer_pretty(&mut out, &ms)?;
        } else {
            serde_json::to_writer_pretty(&mut out, &serde_json::json!({ "measurements": ms, "idle": idle }))?;
        }
        writeln!(out)?;
        // The same run's table, for people, on stderr.
        writeln!(err)?;
        crate::bench::suite::print_table(&mut err, &ms, &o)?;
        crate::bench::idle::print(&mut err, &idle)?;
    } else {
        writeln!(out, "machine: {n} CPUs, {cpu}")?;
        crate::bench::suite::print_table(&mut out, &ms, &o)?;
        if !idle.is_empty() {
            crate::bench::idle::print(&mut out, &idle)?;
        }
    }
    let lost: u64 = ms.iter().map(|m| m.lost).sum();
    if lost > 0 {
        return Err(format!("{lost} messages were lost during the benchmark").into());
    }
    Ok(())
}

/// Removes the control sockets that earlier `shmbus bench` runs left
/// behind when they were interrupted (their daemon runs inside them, so a
/// signal ends it before it can remove its socket). Only a socket named
/// `bench-PID.sock` whose process no longer exists, owned by this user,
/// and that nobody listens on (a connection to it is refused, the same
/// test a daemon makes before it replaces a stale socket): never a live
/// run's, another user's, or a daemon's that was merely named so.
fn remove_stale_bench_sockets(dir: &std::path::Path) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let me = nix::unistd::getuid().as_raw();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) =
            name.to_str().and_then(|n| n.strip_prefix("bench-")?.strip_suffix(".sock")?.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let path = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if !meta.file_type().is_socket() || meta.uid() != me {
            continue;
        }
        if let Err(err) = std::os::unix::net::UnixStream::connect(&path) {
            // Only under the path's lock (no daemon is starting there),
            // which removes the lock file a killed daemon left as it is let
            // go.
            if err.kind() == std::io::ErrorKind::ConnectionRefused {
                if let Ok(lock) = bus_daemon::path_lock::PathLock::take(&path) {
                    let _ = std::fs::remove_file(&path);
                    drop(lock);
                }
            }
        }
    }
}

/// The BODY argument's bytes, or stdin's when it is absent. Stdin is read
/// only up to one byte more than the largest slot any bus can have, so
/// that an endless input (`yes | shmbus send …`) is refused instead of
/// filling the memory.
fn body_or_stdin(body: Option<String>) -> std::io::Result<Vec<u8>> {
    match body {
        Some(b) => Ok(b.into_bytes()),
        None => read_body(std::io::stdin().lock()),
    }
}

/// At most [`BODY_READ_MAX`] bytes of `input`; an error if it holds more.
fn read_body(input: impl Read) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::new();
    input.take(BODY_READ_MAX as u64 + 1).read_to_end(&mut v)?;
    if v.len() > BODY_READ_MAX {
        return Err(std::io::Error::other(format!(
            "stdin holds more than {BODY_READ_MAX} bytes, more than the largest slot a bus can have: \
             send a smaller body (a bus's own limit, its slot size less the header and path, is in `shmbus status`)"
        )));
    }
    Ok(v)
}

/// The largest slot any bus can have: no body read from stdin can be
/// longer.
const BODY_READ_MAX: usize = *bus_core::layout::limits::SLOT_SIZE.end() as usize;

/// A body as text if it is UTF-8 without control characters, else hex.
pub fn render(body: &[u8]) -> String {
    match std::str::from_utf8(body) {
        Ok(s) if !s.chars().any(|c| c.is_control() && c != '\t') => s.to_owned(),
        _ => body.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

fn print_status(out: &mut impl Write, s: &bus_client::protocol::Status) -> std::io::Result<()> {
    writeln!(out, "bus        {} (daemon pid {}, socket {})", s.bus, s.daemon_pid, s.socket)?;
    writeln!(out, "slot size  {} bytes, queue capacity {}", s.slot_size, s.queue_capacity)?;
    let c = &s.slots;
    writeln!(
        out,
        "slots      {} total: {} free, {} cached, {} loaned, {} queued, {} held",
        c.total, c.free, c.cached, c.loaned, c.queued, c.held
    )?;
    let k = &s.counters;
    if k.corruption > 0 || k.slots_lost > 0 || c.corrupt > 0 {
        writeln!(
            out,
            "corruption {} bad words seen, {} slots with a bad state, {} slots lost: a process wrote garbage into the segment; restart the bus",
            k.corruption, c.corrupt, k.slots_lost
        )?;
    }
    if !s.statistics {
        writeln!(
            out,
            "statistics off (statistics = false, or --no-statistics): bytes, latency, failures and per-client counts are not kept"
        )?;
    }
    // A count nobody keeps is shown as `-`, not as a zero.
    let kept = |n: u64| if s.statistics { n.to_string() } else { "-".into() };
    writeln!(out, "clients    {}", s.clients)?;
    for cl in &s.client_list {
        writeln!(
            out,
            "  #{:<4} pid {:<8} uid {:<6} {:<16} slots {:<5} sent {:<10} received {:<10} {}",
            cl.id,
            cl.pid,
            cl.uid,
            cl.name,
            cl.slots,
            kept(cl.sent),
            kept(cl.received),
            cl.subscriptions.join(",")
        )?;
    }
    // A requester's reply queue outlives it until the daemon recycles the
    // entry: one that nobody reads and that holds nothing is noise here
    // (`--json` lists it).
    let idle_reply = |x: &&bus_client::protocol::SubsystemStatus| {
        x.name.starts_with("_reply.") && x.subscribers == 0 && x.queue_depth == 0 && !x.quarantined
    };
    let idle = s.subsystems.iter().filter(idle_reply).count();
    let shown: Vec<_> = s.subsystems.iter().filter(|x| !idle_reply(x)).collect();
    write!(out, "subsystems {}", shown.len())?;
    if idle > 0 {
        write!(out, " ({idle} idle reply queue{} of departed requesters not shown)", if idle == 1 { "" } else { "s" })?;
    }
    writeln!(out)?;
    if !shown.is_empty() {
        writeln!(
            out,
            "  {:<32} {:>8} {:>5} {:>12} {:>12} {:>11} {:>10} {:>8} {:>8} {:>8} {:>8}",
            "name", "depth", "subs", "sent", "delivered", "redelivered", "bytes", "p50", "p99", "max", "failed"
        )?;
    }
    for x in shown {
        let l = &x.latency;
        writeln!(
            out,
            "  {:<32} {:>8} {:>5} {:>12} {:>12} {:>11} {:>10} {:>8} {:>8} {:>8} {:>8}{}{}",
            x.name,
            x.queue_depth,
            x.subscribers,
            x.sent,
            x.delivered,
            x.redelivered,
            if s.statistics { fmt_bytes(x.bytes) } else { "-".into() },
            fmt_ns(l.samples, l.p50_ns),
            fmt_ns(l.samples, l.p99_ns),
            fmt_ns(l.samples, l.max_ns),
            kept(x.failures.total()),
            if x.durable { "  durable" } else { "" },
            if x.quarantined { "  QUARANTINED (corrupt queue)" } else { "" }
        )?;
        if x.groups.len() > 1 {
            for g in &x.groups {
                writeln!(
                    out,
                    "    group {:<24} {:>8} {:>5} {:>12} {:>12} {:>11}  {}{}{}  dropped {}",
                    g.name,
                    g.depth,
                    g.subscribers,
                    "",
                    g.delivered,
                    g.redelivered,
                    g.backpressure,
                    if g.durable { " durable" } else { "" },
                    if g.tap { " tap" } else { "" },
                    g.dropped
                )?;
            }
        }
    }
    Ok(())
}

/// A latency for people: `850ns`, `12.5µs`, `3.2ms`, `1.5s`; `-` without
/// samples.
pub fn fmt_ns(samples: u64, ns: u64) -> String {
    match ns {
        _ if samples == 0 => "-".into(),
        0..1_000 => format!("{ns}ns"),
        1_000..1_000_000 => format!("{:.1}µs", ns as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}ms", ns as f64 / 1e6),
        _ => format!("{:.1}s", ns as f64 / 1e9),
    }
}

/// A byte count for people: `512B`, `3.4K`, `12.0M`, `1.2G`.
pub fn fmt_bytes(b: u64) -> String {
    match b {
        0..1024 => format!("{b}B"),
        1024..1_048_576 => format!("{:.1}K", b as f64 / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.1}M", b as f64 / 1_048_576.0),
        _ => format!("{:.1}G", b as f64 / 1_073_741_824.0),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bench_takes_its_cpus_as_a_comma_separated_pair() {
        use clap::Parser;
        let cli = super::Cli::try_parse_from(["shmbus", "bench", "--cpus", "0,1"]).expect("the documented form");
        assert!(matches!(cli.command, super::Command::Bench { cpus: Some(ref c), .. } if c == &[0, 1]));
    }

    #[test]
    fn a_body_from_stdin_is_read_up_to_the_largest_slot_and_no_further() {
        use std::io::Read;
        let max = super::BODY_READ_MAX;
        assert_eq!(super::read_body(&b"hello"[..]).unwrap(), b"hello");
        assert_eq!(super::read_body(std::io::repeat(7).take(max as u64)).unwrap().len(), max);
        // An endless input ends in an error after max + 1 bytes, not in
        // an allocation without end.
        let e = super::read_body(std::io::repeat(7)).unwrap_err().to_string();
        assert!(e.contains("more than") && e.contains("smaller body"), "{e}");
    }

    #[test]
    fn text_bodies_print_as_text_and_others_as_hex() {
        assert_eq!(super::render(b"hello world"), "hello world");
        assert_eq!(super::render(&[0, 255]), "00ff");
        assert_eq!(super::render(b"a\nb"), "610a62");
    }

    #[test]
    fn only_sockets_of_ended_bench_runs_are_removed() {
        use std::os::unix::net::UnixListener;
        let dir = std::env::temp_dir().join(format!("shmbus-stale-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Pids of processes that have ended: they name no process (until reused).
        let dead = || {
            let mut child = std::process::Command::new("true").spawn().unwrap();
            let pid = child.id();
            child.wait().unwrap();
            pid
        };
        // A socket nobody listens on any more, as an interrupted run leaves it.
        let stale = |name: &str| drop(UnixListener::bind(dir.join(name)).unwrap());
        let (d1, d2, d3, d4) = (dead(), dead(), dead(), dead());
        stale(&format!("bench-{d1}.sock"));
        let _live = UnixListener::bind(dir.join(format!("bench-{d2}.sock"))).unwrap(); // a daemon so named
        std::fs::write(dir.join(format!("bench-{d3}.sock")), b"").unwrap(); // not a socket
        stale(&format!("bench-{}.sock", std::process::id()));
        stale("bench-1.sock"); // init: alive
        stale("default.sock");
        stale("bench-x.sock");
        stale(&format!("bench-{d4}.sock"));
        // Another user's, where this test may give it away (as root).
        let theirs = std::os::unix::fs::chown(dir.join(format!("bench-{d4}.sock")), Some(65534), None).is_ok();
        super::remove_stale_bench_sockets(&dir);
        let left = |name: String| dir.join(name).exists();
        let got = [
            left(format!("bench-{d1}.sock")),
            left(format!("bench-{d2}.sock")),
            left(format!("bench-{d3}.sock")),
            left(format!("bench-{}.sock", std::process::id())),
            left("bench-1.sock".into()),
            left("default.sock".into()),
            left("bench-x.sock".into()),
            left(format!("bench-{d4}.sock")),
        ];
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(got, [false, true, true, true, true, true, true, theirs]);
    }
}
