//! The bridge's settings: a TOML file (`--config`) and flags, which win
//! over it. Checked whole before anything starts, so a mistake is one
//! error naming its field.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How the bridge joins Zenoh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// A peer: links directly with the other bridges it listens for or
    /// connects to.
    Peer,
    /// A client of a Zenoh router (`--connect` names it).
    Client,
}

/// What an importing bridge does with a one-way message while no host
/// exports its subsystem (the link is down, or the far bridge is not
/// running).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LinkLoss {
    /// Drop it and count it (`dropped_no_link`). Local publishers never
    /// slow down because of the link.
    Drop,
    /// Hold them, in order and unreleased, until an exporter is back (a
    /// killed bridge's go back to the local queue, flagged redelivered),
    /// answering requests meanwhile; past 64 held, stop taking messages of
    /// that subsystem, so that they (and requests behind them) wait in the
    /// local queue, whose publishers then meet its backpressure.
    Block,
}

/// Everything the bridge needs to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Bus name (`None`: `$SHMBUS_BUS`, then the default bus).
    pub bus: Option<String>,
    /// Control socket of the local bus (wins over `bus`).
    pub socket: Option<PathBuf>,
    /// The bridge's client name on the local bus.
    pub name: String,
    /// Peer or client.
    pub mode: Mode,
    /// Zenoh endpoints to listen on (`tcp/0.0.0.0:7447`).
    pub listen: Vec<String>,
    /// Zenoh endpoints to connect to.
    pub connect: Vec<String>,
    /// Whether Zenoh scouts for peers by multicast (Zenoh's
    /// default), besides the endpoints given.
    pub scouting: bool,
    /// First chunks of every key expression: `PREFIX/SUBSYSTEM/ROUTE`.
    pub prefix: String,
    /// Local subsystems other hosts may reach.
    pub export: Vec<String>,
    /// Subsystems served on other hosts, reachable from here.
    pub import: Vec<String>,
    /// The consumer group the bridge joins on imported subsystems (`None`:
    /// the default group).
    pub import_group: Option<String>,
    /// One-way messages while no host exports their subsystem.
    pub on_link_loss: LinkLoss,
    /// How long a bridged request may take, end to end.
    pub request_timeout: Duration,
    /// Longest wait to hand a message from another host to the local bus.
    pub local_timeout: Duration,
    /// Requests from other hosts handled at once.
    pub request_workers: usize,
    /// Zenoh's lease: a link that stays silent this long is taken for
    /// lost (a cut cable or a frozen host; a closed connection is seen at
    /// once).
    pub lease: Duration,
    /// How often the counters are logged (when they changed; 0: never).
    pub stats_interval: Duration,
    /// Most one-way messages to one key that go out as one Zenoh sample
    /// (1: each its own). Only messages already queued are joined: a
    /// message is never held back to wait for others.
    pub coalesce: usize,
}

/// Most messages per coalesced sample (`coalesce`).
pub const MAX_COALESCE: usize = 1024;

/// Zenoh closes a link whose `Block` message waited this long for room
/// (its `wait_before_close`, 5 s by default): the exporting side must hand
/// messages to the local bus faster than that, or drop them. A message
/// may wait `local-timeout` twice (for a slot, then for queue room).
const ZENOH_WAIT_BEFORE_CLOSE: Duration = Duration::from_secs(5);

impl Default for Config {
    fn default() -> Self {
        Config {
            bus: None,
            socket: None,
            name: "shmbus-bridge".into(),
            mode: Mode::Peer,
            listen: Vec::new(),
            connect: Vec::new(),
            scouting: true,
            prefix: "shmbus".into(),
            export: Vec::new(),
            import: Vec::new(),
            import_group: None,
            on_link_loss: LinkLoss::Drop,
            request_timeout: Duration::from_secs(10),
            local_timeout: Duration::from_secs(1),
            request_workers: 8,
            lease: Duration::from_secs(3),
            stats_interval: Duration::from_secs(10),
            coalesce: 32,
        }
    }
}

/// A setting that is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for the bridge.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A field's value is wrong.
    #[error("{field}: {message}")]
    Invalid {
        /// The field (the TOML key and flag name).
        field: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
}

/// The TOML file's shape: every field optional, kebab-case.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FileConfig {
    bus: Option<String>,
    socket: Option<PathBuf>,
    name: Option<String>,
    mode: Option<Mode>,
    listen: Option<Vec<String>>,
    connect: Option<Vec<String>>,
    scouting: Option<bool>,
    prefix: Option<String>,
    export: Option<Vec<String>>,
    import: Option<Vec<String>>,
    import_group: Option<String>,
    on_link_loss: Option<LinkLoss>,
    #[serde(default, with = "humantime_opt")]
    request_timeout: Option<Duration>,
    #[serde(default, with = "humantime_opt")]
    local_timeout: Option<Duration>,
    request_workers: Option<usize>,
    #[serde(default, with = "humantime_opt")]
    lease: Option<Duration>,
    #[serde(default, with = "humantime_opt")]
    stats_interval: Option<Duration>,
    coalesce: Option<usize>,
}

mod humantime_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom)).transpose()
    }
}

impl FileConfig {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })
    }

    /// The file's settings over the defaults.
    pub fn into_config(self) -> Config {
        let d = Config::default();
        Config {
            bus: self.bus,
            socket: self.socket,
            name: self.name.unwrap_or(d.name),
            mode: self.mode.unwrap_or(d.mode),
            listen: self.listen.unwrap_or_default(),
            connect: self.connect.unwrap_or_default(),
            scouting: self.scouting.unwrap_or(d.scouting),
            prefix: self.prefix.unwrap_or(d.prefix),
            export: self.export.unwrap_or_default(),
            import: self.import.unwrap_or_default(),
            import_group: self.import_group,
            on_link_loss: self.on_link_loss.unwrap_or(d.on_link_loss),
            request_timeout: self.request_timeout.unwrap_or(d.request_timeout),
            local_timeout: self.local_timeout.unwrap_or(d.local_timeout),
            request_workers: self.request_workers.unwrap_or(d.request_workers),
            lease: self.lease.unwrap_or(d.lease),
            stats_interval: self.stats_interval.unwrap_or(d.stats_interval),
            coalesce: self.coalesce.unwrap_or(d.coalesce),
        }
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field, message: message.into() }
}

impl Config {
    /// Checks every field; the first mistake is the error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.export.is_empty() && self.import.is_empty() {
            return Err(invalid(
                "export/import",
                "nothing to bridge: name at least one subsystem with --export (reachable from other hosts) or --import (served on another host)",
            ));
        }
        for (field, list) in [("export", &self.export), ("import", &self.import)] {
            for s in list {
                bus_core::path::validate_subsystem(s)
                    .map_err(|e| invalid(field, format!("{s:?} is not a subsystem name: {e}")))?;
                if list.iter().filter(|t| *t == s).count() > 1 {
                    return Err(invalid(field, format!("{s:?} is named twice")));
                }
            }
        }
        if self.import_group.is_none() {
            if let Some(s) = self.import.iter().find(|s| self.export.contains(s)) {
                return Err(invalid(
                    "import-group",
                    format!(
                        "{s:?} is both exported and imported: give the bridge a group of its own on it (import-group), so that it never takes messages from other hosts away from this host's receivers"
                    ),
                ));
            }
        }
        if let Some(g) = &self.import_group {
            bus_core::path::validate_subsystem(g).map_err(|e| {
                invalid("import-group", format!("{g:?} is not a group name: {}", bus_core::path::name_problem(&e)))
            })?;
        }
        crate::wire::check_prefix(&self.prefix).map_err(|m| invalid("prefix", m))?;
        for (field, list) in [("listen", &self.listen), ("connect", &self.connect)] {
            for e in list {
                if !e.starts_with("tcp/") {
                    return Err(invalid(
                        field,
                        format!("{e:?}: this bridge is built with Zenoh's TCP transport only; write tcp/HOST:PORT"),
                    ));
                }
            }
        }
        if self.mode == Mode::Client && self.connect.is_empty() && !self.scouting {
            return Err(invalid(
                "connect",
                "client mode needs a router: give --connect tcp/ROUTER:7447 (or turn scouting on)",
            ));
        }
        if self.request_timeout.is_zero() {
            return Err(invalid("request-timeout", "must be more than 0"));
        }
        if self.local_timeout.is_zero() || self.local_timeout.saturating_mul(2) >= ZENOH_WAIT_BEFORE_CLOSE {
            return Err(invalid(
                "local-timeout",
                format!(
                    "must be more than 0 and under {:?}: a message may wait twice that (for a slot, then for room), and Zenoh closes a link whose blocking sender waits {ZENOH_WAIT_BEFORE_CLOSE:?}",
                    ZENOH_WAIT_BEFORE_CLOSE / 2
                ),
            ));
        }
        if self.lease < Duration::from_millis(500) {
            return Err(invalid("lease", "must be at least 500ms (Zenoh sends 4 keep-alives per lease)"));
        }
        if self.request_workers == 0 || self.request_workers > 1024 {
            return Err(invalid("request-workers", "must be 1 to 1024"));
        }
        if self.coalesce == 0 || self.coalesce > MAX_COALESCE {
            return Err(invalid("coalesce", format!("must be 1 (no coalescing) to {MAX_COALESCE}")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let f: FileConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: "t".into(), message: e.to_string() })?;
        let c = f.into_config();
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn a_file_sets_every_field() {
        let c = parse(
            r#"
            socket = "/run/shmbus/a.sock"
            mode = "client"
            connect = ["tcp/10.0.0.1:7447"]
            export = ["users"]
            import = ["sensors", "logs"]
            import-group = "remote"
            on-link-loss = "block"
            request-timeout = "2s"
            local-timeout = "250ms"
            request-workers = 4
            stats-interval = "0s"
            coalesce = 8
            prefix = "site1/shmbus"
            "#,
        )
        .unwrap();
        assert_eq!(c.mode, Mode::Client);
        assert_eq!(c.import, ["sensors", "logs"]);
        assert_eq!(c.on_link_loss, LinkLoss::Block);
        assert_eq!(c.local_timeout, Duration::from_millis(250));
        assert_eq!(c.prefix, "site1/shmbus");
        assert!(c.stats_interval.is_zero());
        assert_eq!(c.coalesce, 8);
    }

    #[test]
    fn mistakes_name_their_field() {
        let field = |t: &str| match parse(t) {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(""), "export/import");
        assert_eq!(field("export = [\"Users\"]"), "export");
        assert_eq!(field("import = [\"a\", \"a\"]"), "import");
        assert_eq!(field("export = [\"a\"]\nprefix = \"x/*\""), "prefix");
        assert_eq!(field("export = [\"a\"]\nlisten = [\"udp/1.2.3.4:5\"]"), "listen");
        assert_eq!(field("export = [\"a\"]\nlocal-timeout = \"3s\""), "local-timeout");
        assert_eq!(field("export = [\"a\"]\nimport = [\"a\"]"), "import-group");
        assert!(parse("export = [\"a\"]\nimport = [\"a\"]\nimport-group = \"bridge\"").is_ok());
        assert_eq!(field("export = [\"a\"]\nrequest-workers = 0"), "request-workers");
        assert_eq!(field("export = [\"a\"]\ncoalesce = 0"), "coalesce");
        assert_eq!(field("export = [\"a\"]\ncoalesce = 100000"), "coalesce");
        assert!(matches!(parse("exports = [\"a\"]"), Err(ConfigError::Parse { .. })));
        assert!(matches!(parse("export = [\"a\"]\nrequest-timeout = \"soon\""), Err(ConfigError::Parse { .. })));
    }
}
