//! `shmbus-bridge`: carries chosen subsystems of a local shmbus bus to
//! other hosts over Zenoh, and theirs here.
//!
//! A bridge is an ordinary client of its local bus and a Zenoh session.
//! It **exports** local subsystems (other hosts may send messages and
//! requests to them) and **imports** subsystems served elsewhere (it
//! subscribes to them locally and forwards what local processes send).
//! Paths map to key expressions `PREFIX/SUBSYSTEM/ROUTE` (`shmbus` by
//! default); a message's fingerprint, raw marker, trace id, id and
//! redelivered flag travel as its attachment ([`wire`]). Zero copy ends at
//! the host: a message is copied once from its slot into Zenoh's buffer,
//! and once from Zenoh's into a slot on the far bus.
//!
//! One-way messages go with `CongestionControl::Block` at
//! `Priority::Data`; requests and replies at [`RPC_PRIORITY`], so a flood
//! of data never queues RPC behind it.

/// Records a hop of a traced benchmark message ([`hops`]); nothing is
/// compiled without the feature `bench`.
#[cfg(feature = "bench")]
macro_rules! hop {
    ($point:expr, $what:expr, $body:expr) => {
        if $crate::hops::on() {
            $crate::hops::hop($point, $what, $body)
        }
    };
}
#[cfg(not(feature = "bench"))]
macro_rules! hop {
    ($point:expr, $what:expr, $body:expr) => {};
}

pub mod cli;
pub mod config;
pub mod counters;
mod export;
#[cfg(feature = "bench")]
pub mod hops;
mod import;
pub mod wire;

use config::{Config, Mode};
use counters::{Counters, Snapshot};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use zenoh::qos::Priority;
use zenoh::Wait;

/// Priority of bridged requests and replies (data goes at
/// `Priority::Data`, two levels below).
pub const RPC_PRIORITY: Priority = Priority::InteractiveHigh;

/// Why the bridge could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// A setting is wrong.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The local bus refused or is not there.
    #[error("the local bus: {0}")]
    Connect(#[from] bus_client::ConnectError),
    /// A subscription or publisher on the local bus failed.
    #[error("the local bus: {0}")]
    Bus(#[from] bus_client::RequestError),
    /// Zenoh failed.
    #[error("zenoh: {0}")]
    Zenoh(String),
    /// The system failed.
    #[error("{0}")]
    Io(String),
    /// The bridge stopped on a fault after it started.
    #[error("{0}")]
    Stopped(String),
}

/// What every thread and callback of the bridge shares.
pub struct Shared {
    config: Config,
    session: zenoh::Session,
    counters: Counters,
    stop: Arc<AtomicBool>,
    fault: Mutex<Option<String>>,
}

impl Shared {
    /// Stops the bridge with `why` as its error.
    fn fail(&self, why: &str) {
        self.fault.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(|| why.to_owned());
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A line on stdout, `shmbus-bridge: WHAT`, for whoever runs the bridge
/// (as `shmbusd: ready`): `ready …`, `linked SUBSYSTEM` / `unlinked
/// SUBSYSTEM` as a host exporting an imported subsystem comes and goes, and
/// `stopped COUNTERS` at the end. Logs go to stderr.
pub fn event(what: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "shmbus-bridge: {what}");
    let _ = out.flush();
}

/// The Zenoh configuration the bridge's settings make.
pub fn zenoh_config(cfg: &Config) -> Result<zenoh::Config, BridgeError> {
    let mut z = zenoh::Config::default();
    let mut set = |key: &str, value: serde_json::Value| {
        z.insert_json5(key, &value.to_string()).map_err(|e| BridgeError::Zenoh(format!("setting {key}: {e}")))
    };
    set("mode", serde_json::json!(if cfg.mode == Mode::Peer { "peer" } else { "client" }))?;
    if !cfg.listen.is_empty() {
        set("listen/endpoints", serde_json::json!(cfg.listen))?;
    }
    if !cfg.connect.is_empty() {
        set("connect/endpoints", serde_json::json!(cfg.connect))?;
    }
    set("transport/link/tx/lease", serde_json::json!(cfg.lease.as_millis() as u64))?;
    if !cfg.scouting {
        set("scouting/multicast/enabled", serde_json::json!(false))?;
    }
    if cfg.mode == Mode::Client {
        // Start without the router, and keep trying: the link comes back
        // by itself, as in peer mode.
        set("connect/timeout_ms", serde_json::json!(-1))?;
        set("connect/exit_on_failure", serde_json::json!(false))?;
    }
    Ok(z)
}

/// Runs the bridge until `stop` is set (or a fault stops it); returns the
/// counters at the end.
pub fn run(cfg: Config, stop: Arc<AtomicBool>) -> Result<Snapshot, BridgeError> {
    cfg.validate()?;
    let mut builder = bus_client::Bus::builder().name(cfg.name.clone()).send_timeout(cfg.local_timeout);
    if let Some(b) = &cfg.bus {
        builder = builder.bus(b.clone());
    }
    if let Some(s) = &cfg.socket {
        builder = builder.socket(s.clone());
    }
    let bus = builder.connect()?;
    let session =
        zenoh::open(zenoh_config(&cfg)?).wait().map_err(|e| BridgeError::Zenoh(format!("opening a session: {e}")))?;
    let shared =
        Arc::new(Shared { config: cfg, session, counters: Counters::default(), stop, fault: Mutex::new(None) });
    let export = export::start(&bus, &shared)?;
    let import = import::start(&bus, &shared)?;
    let cfg = &shared.config;
    event(&format!(
        "ready on {} as zenoh {} (export: [{}], import: [{}], keys {}/…)",
        bus.socket_path().display(),
        shared.session.zid(),
        cfg.export.join(", "),
        cfg.import.join(", "),
        cfg.prefix
    ));
    let mut last = (Instant::now(), Snapshot::default());
    while !shared.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        if !bus.is_alive() {
            shared.fail("the local bus is gone (its daemon stopped): restart shmbusd, then the bridge");
        }
        let iv = cfg.stats_interval;
        if !iv.is_zero() && last.0.elapsed() >= iv {
            let now = shared.counters.snapshot();
            if now != last.1 {
                tracing::info!("{now}");
            }
            last = (Instant::now(), now);
        }
    }
    import.join();
    export.join();
    let end = shared.counters.snapshot();
    event(&format!("stopped {end}"));
    if let Err(e) = shared.session.close().wait() {
        tracing::warn!("closing the zenoh session: {e}");
    }
    let fault = shared.fault.lock().unwrap_or_else(|p| p.into_inner()).take();
    match fault {
        Some(why) => Err(BridgeError::Stopped(why)),
        None => Ok(end),
    }
}
