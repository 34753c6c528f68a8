//! The command line of `shmbusd` ([`daemon_main`]), and the bus arguments
//! that `shmbus` (crate `bus-cli`) shares with it.
//! Exit status: 0 success, 1 runtime error (one line on stderr), 2 usage.

use clap::{Args, Parser};
use std::path::PathBuf;
use std::process::ExitCode;

/// How to find the bus (shared by every command).
#[derive(Debug, Clone, Args)]
pub struct BusArgs {
    /// Bus name [env: SHMBUS_BUS; default: default].
    #[arg(long, global = true)]
    pub bus: Option<String>,
    /// Control socket path [env: SHMBUS_SOCKET].
    #[arg(long, global = true)]
    pub socket: Option<PathBuf>,
}

/// `shmbusd`: the shmbus daemon.
#[derive(Debug, Parser)]
#[command(
    name = "shmbusd",
    version,
    about = "The shmbus daemon: owns a bus's shared-memory segment and control socket"
)]
pub struct DaemonArgs {
    #[command(flatten)]
    bus: BusArgs,
    /// Number of message slots.
    #[arg(long)]
    slots: Option<u32>,
    /// Bytes per slot, header (64 B) and path included; a multiple of 64.
    #[arg(long)]
    slot_size: Option<u32>,
    /// Entries per subsystem queue; a power of two.
    #[arg(long)]
    queue_capacity: Option<u32>,
    /// Subsystems the routing table can hold.
    #[arg(long)]
    max_subsystems: Option<u32>,
    /// Clients that can be connected at once.
    #[arg(long)]
    max_clients: Option<u32>,
    /// Groups a subsystem can have, its default group included (1 to 16).
    #[arg(long)]
    max_groups: Option<u32>,
    /// Slots one client may hold at once: loaned, cached and received
    /// (default: no quota).
    #[arg(long)]
    max_slots_per_client: Option<u32>,
    /// Subsystem whose messages are queued while nobody subscribes (repeatable).
    #[arg(long = "durable")]
    durable: Vec<String>,
    /// How long clients wait for a new daemon after this one dies or is
    /// stopped by a signal: "5s", "500ms" (default 0: they get BusGone).
    #[arg(long, value_name = "DURATION")]
    resume_grace: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g.
    /// 127.0.0.1:9464 (default off).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// Clients keep no statistics (bytes, failures, latency histograms,
    /// per-client counts); see BENCHMARKS.md for what they cost.
    #[arg(long)]
    no_statistics: bool,
    /// Permissions of the socket file, octal (default 0660).
    #[arg(long)]
    socket_mode: Option<String>,
    /// TOML file with the same settings; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Only check this config file: print what it sets, or name the
    /// offending field (exit status 1), and exit.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    check_config: Option<PathBuf>,
}

/// Entry point of `shmbusd`.
pub fn daemon_main() -> ExitCode {
    let args = DaemonArgs::parse();
    if let Some(path) = &args.check_config {
        return check_config(path);
    }
    init_logging();
    let file = match &args.config {
        Some(p) => match crate::config::FileConfig::load(p) {
            Ok(f) => f,
            Err(e) => return fail(e),
        },
        None => Default::default(),
    };
    let flags = crate::config::FileConfig {
        bus: args.bus.bus,
        socket: args.bus.socket,
        slots: args.slots,
        slot_size: args.slot_size,
        queue_capacity: args.queue_capacity,
        max_subsystems: args.max_subsystems,
        max_clients: args.max_clients,
        max_groups: args.max_groups,
        max_slots_per_client: args.max_slots_per_client,
        socket_mode: args.socket_mode,
        resume_grace: args.resume_grace,
        metrics: args.metrics,
        statistics: args.no_statistics.then_some(false),
        durable: args.durable,
        groups: Vec::new(),
        access: None,
    };
    let cfg = match file.merge(flags).resolve() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    match crate::run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// `shmbusd --check-config FILE`: the file alone, flags and environment
/// aside (except `SHMBUS_SOCKET` / `SHMBUS_BUS` for what it leaves out).
fn check_config(path: &std::path::Path) -> ExitCode {
    let cfg = match crate::config::FileConfig::load(path).and_then(|f| f.resolve()) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    // Written through a fallible handle: a reader that stops early (`|
    // head -1`) ends the output, not the program with a panic.
    let print = |cfg: &crate::config::Config| -> std::io::Result<()> {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let s = &cfg.shape;
        writeln!(out, "{}: valid", path.display())?;
        writeln!(out, "  bus {} on {} (mode {:04o})", cfg.bus, cfg.socket.display(), cfg.socket_mode)?;
        writeln!(
            out,
            "  {} slots of {} bytes, queues of {}, up to {} subsystems, {} clients, {} groups per subsystem",
            s.slot_count, s.slot_size, s.queue_capacity, s.max_subsystems, s.max_clients, s.max_groups
        )?;
        if let Ok(p) = bus_core::layout::SegmentParams::compute(s, &cfg.bus, 0, 0) {
            writeln!(out, "  a segment of {} MiB, all of it written at start", p.segment_size.div_ceil(1 << 20))?;
        }
        if let Err(e) = crate::config::check_memory(s, &cfg.bus) {
            writeln!(out, "  warning: the daemon would not start now: {e}")?;
        }
        if !cfg.resume_grace.is_zero() {
            writeln!(out, "  clients wait {:?} for a new daemon after this one dies", cfg.resume_grace)?;
        }
        if let Some(m) = cfg.metrics {
            writeln!(out, "  metrics at http://{m}/metrics")?;
        }
        if cfg.quota > 0 {
            writeln!(out, "  at most {} slots per client", cfg.quota)?;
        }
        if !cfg.durable.is_empty() {
            writeln!(out, "  durable subsystems: {}", cfg.durable.join(", "))?;
        }
        let mut seen = std::collections::BTreeSet::new();
        for g in &cfg.groups {
            if !seen.insert((&g.subsystem, &g.name)) {
                writeln!(
                    out,
                    "  warning: group {} of {} is declared more than once: it is one group",
                    g.name, g.subsystem
                )?;
                continue;
            }
            writeln!(out, "  durable group {} of {}{}", g.name, g.subsystem, if g.lossy { " (lossy)" } else { "" })?;
        }
        writeln!(out, "  allow: {}", cfg.access.allow.listed())?;
        if cfg.access.allow.is_empty() {
            writeln!(out, "  warning: allow is empty: no client can connect, root and admins included")?;
        }
        writeln!(out, "  admin: {}", cfg.access.admin.listed())?;
        for (name, r) in &cfg.access.subsystems {
            let show =
                |r: &Option<crate::access::Rule>| r.as_ref().map_or("every allowed client".to_owned(), |r| r.listed());
            writeln!(out, "  subsystem {name}: publish {}, subscribe {}", show(&r.publish), show(&r.subscribe))?;
        }
        Ok(())
    };
    let _ = print(&cfg);
    ExitCode::SUCCESS
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

/// Prints `error: e` on stderr; exit status 1.
pub fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(1)
}
