//! `shmbus-bridge`, the command line ([`main`]).

use crate::config::{Config, FileConfig, LinkLoss, Mode};
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Carries chosen subsystems of the local bus to other hosts over Zenoh.
/// Flags win over the --config file.
#[derive(Debug, Parser)]
#[command(name = "shmbus-bridge", version)]
struct Args {
    /// TOML file with the same settings as the flags (kebab-case keys).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Bus name [env: SHMBUS_BUS; default: default].
    #[arg(long)]
    bus: Option<String>,
    /// Control socket of the local bus [env: SHMBUS_SOCKET].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The bridge's client name on the local bus [default: shmbus-bridge].
    #[arg(long)]
    name: Option<String>,
    /// Zenoh mode: a peer of other bridges, or a client of a router.
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// Zenoh endpoints to listen on (tcp/HOST:PORT).
    #[arg(long, num_args = 1..)]
    listen: Vec<String>,
    /// Zenoh endpoints to connect to (tcp/HOST:PORT); retried until they
    /// answer, and again whenever the link is lost.
    #[arg(long, num_args = 1..)]
    connect: Vec<String>,
    /// No multicast scouting: find peers only through --listen/--connect
    /// (and the peers these know of).
    #[arg(long)]
    no_scouting: bool,
    /// First chunks of every key expression [default: shmbus].
    #[arg(long)]
    prefix: Option<String>,
    /// Local subsystems other hosts may send messages and requests to.
    #[arg(long, num_args = 1..)]
    export: Vec<String>,
    /// Subsystems served on other hosts: what local processes send to them
    /// goes there.
    #[arg(long, num_args = 1..)]
    import: Vec<String>,
    /// The consumer group the bridge joins on imported subsystems
    /// [default: the default group].
    #[arg(long)]
    import_group: Option<String>,
    /// One-way messages while no host exports their subsystem: drop (and
    /// count) or block (leave them queued here) [default: drop].
    #[arg(long, value_enum)]
    on_link_loss: Option<LinkLoss>,
    /// Longest a bridged request may take [default: 10s].
    #[arg(long, value_parser = humantime::parse_duration)]
    request_timeout: Option<Duration>,
    /// Longest wait to hand a message from another host to the local bus
    /// before dropping it [default: 1s].
    #[arg(long, value_parser = humantime::parse_duration)]
    local_timeout: Option<Duration>,
    /// Requests from other hosts handled at once [default: 8].
    #[arg(long)]
    request_workers: Option<usize>,
    /// A link silent this long is taken for lost [default: 3s].
    #[arg(long, value_parser = humantime::parse_duration)]
    lease: Option<Duration>,
    /// How often the counters are logged when they change; 0s: never
    /// [default: 10s].
    #[arg(long, value_parser = humantime::parse_duration)]
    stats_interval: Option<Duration>,
    /// Most one-way messages to one key sent as one Zenoh sample, when
    /// that many are queued already (none waits for the others). A plain
    /// Zenoh subscriber of the bridge's keys then gets batches of frames
    /// under bursts; 1: a sample per message, for such readers
    /// [default: 32].
    #[arg(long)]
    coalesce: Option<usize>,
}

impl Args {
    fn into_config(self) -> Result<Config, crate::config::ConfigError> {
        let mut c = match &self.config {
            Some(p) => FileConfig::load(p)?.into_config(),
            None => Config::default(),
        };
        macro_rules! over {
            ($($f:ident),*) => { $(if let Some(v) = self.$f { c.$f = v.into(); })* };
        }
        over!(
            name,
            mode,
            prefix,
            on_link_loss,
            request_timeout,
            local_timeout,
            request_workers,
            lease,
            stats_interval,
            coalesce
        );
        if self.bus.is_some() {
            c.bus = self.bus;
        }
        if self.socket.is_some() {
            c.socket = self.socket;
        }
        if self.import_group.is_some() {
            c.import_group = self.import_group;
        }
        for (flag, field) in [
            (self.listen, &mut c.listen),
            (self.connect, &mut c.connect),
            (self.export, &mut c.export),
            (self.import, &mut c.import),
        ] {
            if !flag.is_empty() {
                *field = flag;
            }
        }
        if self.no_scouting {
            c.scouting = false;
        }
        Ok(c)
    }
}

/// Entry point of `shmbus-bridge`.
pub fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,zenoh=warn".into());
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
    let config = match Args::parse().into_config().and_then(|c| c.validate().map(|()| c)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // SIGINT and SIGTERM stop the bridge cleanly: blocked here, before any
    // thread starts (Zenoh's inherit the mask), and taken by one thread.
    let mut signals = nix::sys::signal::SigSet::empty();
    signals.add(nix::sys::signal::Signal::SIGINT);
    signals.add(nix::sys::signal::Signal::SIGTERM);
    if let Err(e) = signals.thread_block() {
        eprintln!("error: blocking SIGINT/SIGTERM: {e}");
        return ExitCode::from(1);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        if signals.wait().is_ok() {
            flag.store(true, Ordering::Relaxed);
        }
    });
    match crate::run(config, stop) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
