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
    /// Subsystem whose messages are queued while nobody subscribes (repeatable).
    #[arg(long = "durable")]
    durable: Vec<String>,
    /// TOML file with the same settings; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
}

/// Entry point of `shmbusd`.
pub fn daemon_main() -> ExitCode {
    let args = DaemonArgs::parse();
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
        socket_mode: None,
        durable: args.durable,
        groups: Vec::new(),
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
