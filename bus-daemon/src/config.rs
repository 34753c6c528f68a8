//! Daemon configuration: a TOML file, overridden by command-line flags.
//!
//! ```toml
//! bus = "default"
//! socket = "/run/shmbus/default.sock"
//! slots = 4096
//! slot-size = 1024
//! queue-capacity = 1024
//! max-subsystems = 64
//! max-clients = 64
//! max-groups = 8        # groups per subsystem, its default group included
//! max-slots-per-client = 512  # loaned + cached + received at once (default: no quota)
//! socket-mode = "0660"
//! resume-grace = "5s"   # clients wait this long for a new daemon (default 0: BusGone)
//! metrics = "127.0.0.1:9464"  # Prometheus text at /metrics (default off)
//! statistics = true     # bytes, failures, latency, per-client counts (default on)
//! durable = ["audit"]   # queued even while nobody subscribes
//!
//! # Consumer groups that receive every message of their subsystem even
//! # while nobody subscribes to them (durable groups).
//! [[group]]
//! subsystem = "sensors"
//! name = "recorder"
//! lossy = false         # true: a full queue drops this group's copy
//!
//! # Who may connect, shut down, publish and subscribe: see `crate::access`.
//! [access]
//! allow = ["alice", "@shmbus"]
//! ```

use bus_core::Shape;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// What the file may hold (every key optional).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    /// Bus name.
    pub bus: Option<String>,
    /// Socket path.
    pub socket: Option<PathBuf>,
    /// Number of slots.
    pub slots: Option<u32>,
    /// Bytes per slot.
    pub slot_size: Option<u32>,
    /// Cells per queue.
    pub queue_capacity: Option<u32>,
    /// Subsystems.
    pub max_subsystems: Option<u32>,
    /// Clients.
    pub max_clients: Option<u32>,
    /// Groups per subsystem.
    pub max_groups: Option<u32>,
    /// Slots one client may hold at once (loaned, cached, received).
    pub max_slots_per_client: Option<u32>,
    /// Permissions of the socket file, octal.
    pub socket_mode: Option<String>,
    /// How long clients wait for a new daemon after this one died:
    /// `"5s"`, `"500ms"`, or a number of seconds.
    #[serde(default, deserialize_with = "text_or_number")]
    pub resume_grace: Option<String>,
    /// Where to serve Prometheus metrics, e.g. `"127.0.0.1:9464"`.
    pub metrics: Option<String>,
    /// Whether clients keep the per-subsystem statistics (bytes,
    /// failures, latency) and per-client counts (default true).
    pub statistics: Option<bool>,
    /// Subsystems whose messages are queued while nobody subscribes.
    #[serde(default)]
    pub durable: Vec<String>,
    /// Durable consumer groups.
    #[serde(default, rename = "group")]
    pub groups: Vec<GroupConfig>,
    /// Who may do what.
    pub access: Option<crate::access::AccessFile>,
}

/// A durable consumer group declared in the file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct GroupConfig {
    /// Its subsystem.
    pub subsystem: String,
    /// Its name.
    pub name: String,
    /// A full queue drops its copy instead of slowing publishers.
    #[serde(default)]
    pub lossy: bool,
}

/// The settings the daemon runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Bus name.
    pub bus: String,
    /// Socket path.
    pub socket: PathBuf,
    /// Segment shape.
    pub shape: Shape,
    /// Socket file permissions.
    pub socket_mode: u32,
    /// Durable subsystems.
    pub durable: Vec<String>,
    /// Durable groups.
    pub groups: Vec<GroupConfig>,
    /// Slots one client may hold at once (0: no quota).
    pub quota: u32,
    /// How long clients wait for a new daemon after this one died (zero:
    /// they get `BusGone` at once).
    pub resume_grace: std::time::Duration,
    /// Who may do what.
    pub access: crate::access::Policy,
    /// Where to serve Prometheus metrics (off when `None`).
    pub metrics: Option<std::net::SocketAddr>,
    /// Whether clients keep statistics (see [`FileConfig::statistics`]).
    pub statistics: bool,
}

/// Defaults.
pub const DEFAULT_SHAPE: Shape = Shape {
    slot_count: 4096,
    slot_size: 1024,
    queue_capacity: 1024,
    max_subsystems: 64,
    max_clients: 64,
    max_groups: 8,
};

/// A configuration problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("invalid config file {}: {detail}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A value is out of range.
    #[error("{0}")]
    Invalid(String),
}

/// A setting written as a string or as a bare number (kept as text, so
/// that the one parser of the setting judges both and says what is wrong).
fn text_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct Text;
    impl serde::de::Visitor<'_> for Text {
        type Value = String;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a duration such as \"5s\", \"500ms\", \"2m\" or \"1h\", or a whole number of seconds")
        }
        fn visit_u64<E>(self, n: u64) -> Result<String, E> {
            Ok(n.to_string())
        }
        fn visit_i64<E>(self, n: i64) -> Result<String, E> {
            Ok(n.to_string())
        }
        fn visit_f64<E>(self, n: f64) -> Result<String, E> {
            Ok(n.to_string())
        }
        fn visit_str<E>(self, t: &str) -> Result<String, E> {
            Ok(t.to_owned())
        }
    }
    d.deserialize_any(Text).map(Some)
}

/// The longest `resume-grace`.
pub const MAX_RESUME_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

/// `"5s"`, `"250ms"`, `"2m"`, `"1h"`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let t = text.trim();
    let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = digits.parse().ok()?;
    let ms = match unit.trim() {
        "ms" => n,
        "" | "s" => n.checked_mul(1000)?,
        "m" | "min" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        _ => return None,
    };
    Some(std::time::Duration::from_millis(ms))
}

impl FileConfig {
    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.to_owned(), detail: e.to_string() })
    }

    /// Overlays `over` (flags) on `self` (file).
    pub fn merge(self, over: FileConfig) -> FileConfig {
        FileConfig {
            bus: over.bus.or(self.bus),
            socket: over.socket.or(self.socket),
            slots: over.slots.or(self.slots),
            slot_size: over.slot_size.or(self.slot_size),
            queue_capacity: over.queue_capacity.or(self.queue_capacity),
            max_subsystems: over.max_subsystems.or(self.max_subsystems),
            max_clients: over.max_clients.or(self.max_clients),
            max_groups: over.max_groups.or(self.max_groups),
            max_slots_per_client: over.max_slots_per_client.or(self.max_slots_per_client),
            socket_mode: over.socket_mode.or(self.socket_mode),
            resume_grace: over.resume_grace.or(self.resume_grace),
            metrics: over.metrics.or(self.metrics),
            statistics: over.statistics.or(self.statistics),
            durable: if over.durable.is_empty() { self.durable } else { over.durable },
            groups: if over.groups.is_empty() { self.groups } else { over.groups },
            access: over.access.or(self.access),
        }
    }

    /// Fills in defaults (bus name and socket per [`bus_client::addr`]) and
    /// checks every value.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let bus = bus_client::addr::bus_name(self.bus.as_deref());
        if bus.is_empty() || bus.len() > 64 || bus.contains('/') || bus.contains(char::is_control) {
            return Err(ConfigError::Invalid(format!(
                "bus name {bus:?} must be 1 to 64 bytes without '/' or control characters"
            )));
        }
        let socket = bus_client::addr::socket_path(self.socket.as_deref(), Some(&bus));
        // A Unix socket address holds 108 bytes, its terminating NUL included.
        if socket.as_os_str().is_empty() || socket.as_os_str().len() > 107 {
            return Err(ConfigError::Invalid(format!(
                "socket {:?} is {} bytes: a Unix socket path must be 1 to 107 bytes, choose a shorter one",
                socket.display(),
                socket.as_os_str().len()
            )));
        }
        let shape = Shape {
            slot_count: self.slots.unwrap_or(DEFAULT_SHAPE.slot_count),
            slot_size: self.slot_size.unwrap_or(DEFAULT_SHAPE.slot_size),
            queue_capacity: self.queue_capacity.unwrap_or(DEFAULT_SHAPE.queue_capacity),
            max_subsystems: self.max_subsystems.unwrap_or(DEFAULT_SHAPE.max_subsystems),
            max_clients: self.max_clients.unwrap_or(DEFAULT_SHAPE.max_clients),
            max_groups: self.max_groups.unwrap_or(DEFAULT_SHAPE.max_groups),
        };
        // The whole layout, not just each count: the segment's size has a
        // limit of its own, which the daemon would otherwise meet only at
        // start (and `--check-config` never).
        bus_core::layout::SegmentParams::compute(&shape, &bus, 0, 0)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let mode = self.socket_mode.as_deref().unwrap_or("0660");
        let socket_mode = u32::from_str_radix(mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| ConfigError::Invalid(format!("socket-mode {mode:?} is not an octal mode like 0660")))?;
        for d in &self.durable {
            bus_core::path::validate_subsystem(d).map_err(|e| {
                ConfigError::Invalid(format!("durable subsystem {d:?}: {}", bus_core::path::name_problem(&e)))
            })?;
        }
        // Every declared subsystem takes a routing entry, and each declared
        // group one more: all must fit at start.
        let mut subsystems: std::collections::BTreeSet<&str> = self.durable.iter().map(String::as_str).collect();
        subsystems.extend(self.groups.iter().map(|g| g.subsystem.as_str()));
        let groups: std::collections::BTreeSet<(&str, &str)> =
            self.groups.iter().map(|g| (g.subsystem.as_str(), g.name.as_str())).collect();
        let entries = subsystems.len() + groups.len();
        if entries > shape.max_subsystems as usize {
            return Err(ConfigError::Invalid(format!(
                "the durable subsystems and groups need {entries} routing entries ({} subsystems, {} groups), but max-subsystems is {}: raise max-subsystems",
                subsystems.len(),
                groups.len(),
                shape.max_subsystems
            )));
        }
        for g in &self.groups {
            for (what, name) in [("subsystem", &g.subsystem), ("name", &g.name)] {
                bus_core::path::validate_subsystem(name).map_err(|e| {
                    ConfigError::Invalid(format!("group {what} {name:?}: {}", bus_core::path::name_problem(&e)))
                })?;
            }
            if self.groups.iter().any(|h| h.subsystem == g.subsystem && h.name == g.name && h.lossy != g.lossy) {
                return Err(ConfigError::Invalid(format!(
                    "group {:?} of {:?} is declared both lossy and blocking: declare it once",
                    g.name, g.subsystem
                )));
            }
            if g.name == "default" || g.name.starts_with("tap.") {
                return Err(ConfigError::Invalid(format!(
                    "group name {:?} is reserved (the default group, or taps): choose another",
                    g.name
                )));
            }
            let same = self
                .groups
                .iter()
                .filter(|h| h.subsystem == g.subsystem)
                .map(|h| &h.name)
                .collect::<std::collections::BTreeSet<_>>()
                .len();
            if same as u32 >= shape.max_groups {
                return Err(ConfigError::Invalid(format!(
                    "subsystem {:?} declares {same} groups besides its default group, but max-groups is {}: raise max-groups",
                    g.subsystem, shape.max_groups
                )));
            }
        }
        let quota = match self.max_slots_per_client {
            None => 0,
            Some(q) if (1..=shape.slot_count).contains(&q) => q,
            Some(q) => {
                return Err(ConfigError::Invalid(format!(
                    "max-slots-per-client is {q}: it must be between 1 and slots ({})",
                    shape.slot_count
                )))
            }
        };
        let resume_grace = match self.resume_grace.as_deref() {
            None => std::time::Duration::ZERO,
            Some(text) => match parse_duration(text) {
                Some(d) if d <= MAX_RESUME_GRACE => d,
                Some(_) => {
                    return Err(ConfigError::Invalid(format!(
                        "resume-grace {text:?} is longer than the longest grace, an hour (\"1h\"): choose a shorter one"
                    )))
                }
                None => {
                    return Err(ConfigError::Invalid(format!(
                        "resume-grace {text:?} is not a duration: write a whole number with a unit, like \"5s\", \"500ms\", \"2m\" or \"1h\""
                    )))
                }
            },
        };
        let metrics = match self.metrics.as_deref() {
            None | Some("") | Some("off") => None,
            Some(text) => Some(text.parse::<std::net::SocketAddr>().map_err(|_| {
                ConfigError::Invalid(format!(
                    "metrics {text:?} is not an address like \"127.0.0.1:9464\" (IP and port)"
                ))
            })?),
        };
        let access = self.access.unwrap_or_default().resolve().map_err(ConfigError::Invalid)?;
        Ok(Config {
            bus,
            socket,
            shape,
            socket_mode,
            durable: self.durable,
            groups: self.groups,
            quota,
            resume_grace,
            access,
            metrics,
            statistics: self.statistics.unwrap_or(true),
        })
    }
}

/// Whether a new segment of `shape` fits in the memory the host has
/// available now. The daemon writes the whole segment at start: one bigger
/// than that would end in the kernel's out-of-memory killer, which may pick
/// other processes first. Checked before a segment is created, not when
/// one is adopted (its pages are in memory already), and not by
/// `resolve` (what is available changes; `--check-config` warns).
pub fn check_memory(shape: &Shape, bus: &str) -> Result<(), ConfigError> {
    let Ok(params) = bus_core::layout::SegmentParams::compute(shape, bus, 0, 0) else { return Ok(()) };
    match available_memory() {
        Some(free) if params.segment_size > free => Err(ConfigError::Invalid(format!(
            "the segment would take {} MiB, but this host has {} MiB of memory available \
             (MemAvailable plus Shmem in /proc/meminfo), and the daemon writes all of it at start: \
             use fewer or smaller slots, shorter queues (queue-capacity) or fewer subsystems",
            params.segment_size.div_ceil(1 << 20),
            free >> 20
        ))),
        _ => Ok(()),
    }
}

/// The memory a new segment may take, in bytes, if the kernel says:
/// `MemAvailable` plus `Shmem` from `/proc/meminfo`. Shared memory in use
/// counts as available because it may be the previous segment of this very
/// bus, which a restart that does not adopt it frees (a systemd fd store or
/// the clients of the old daemon may hold it for a while); on a host
/// without such a segment, `Shmem` is small. (In a container, these are the
/// host's figures, not the cgroup's limit.)
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = info.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok()?.checked_mul(1024)
    };
    field("MemAvailable:")?.checked_add(field("Shmem:").unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let file: FileConfig =
            toml::from_str("slots = 10\nslot-size = 256\ndurable = [\"audit\"]\nsocket = \"/tmp/x.sock\"").unwrap();
        let flags = FileConfig { slots: Some(20), ..Default::default() };
        let c = file.merge(flags).resolve().unwrap();
        assert_eq!(c.shape.slot_count, 20);
        assert_eq!(c.shape.slot_size, 256);
        assert_eq!(c.shape.queue_capacity, DEFAULT_SHAPE.queue_capacity);
        assert_eq!(c.durable, vec!["audit".to_string()]);
        assert_eq!(c.socket, PathBuf::from("/tmp/x.sock"));
        assert_eq!(c.socket_mode, 0o660);
    }

    #[test]
    fn bad_values_are_rejected_with_a_reason() {
        let e = FileConfig { slot_size: Some(100), ..Default::default() }.resolve().unwrap_err();
        assert!(e.to_string().contains("slot-size"), "{e}");
        let e = FileConfig { durable: vec!["Bad Name".into()], ..Default::default() }.resolve().unwrap_err();
        assert!(e.to_string().contains("durable"), "{e}");
        assert!(toml::from_str::<FileConfig>("slotz = 1").is_err());
        let e = FileConfig { resume_grace: Some("5 parsecs".into()), ..Default::default() }.resolve().unwrap_err();
        assert!(e.to_string().contains("resume-grace"), "{e}");
        let c = FileConfig { resume_grace: Some("1500ms".into()), ..Default::default() }.resolve().unwrap();
        assert_eq!(c.resume_grace, std::time::Duration::from_millis(1500));
        assert_eq!(parse_duration("2m"), Some(std::time::Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Some(std::time::Duration::from_secs(3)));
        let f: FileConfig = toml::from_str("resume-grace = 5").unwrap();
        assert_eq!(f.resolve().unwrap().resume_grace, std::time::Duration::from_secs(5));
        // A group declared once blocking and once lossy is refused by the
        // check, as the daemon would refuse to start with it.
        let twice =
            "[[group]]\nsubsystem = \"s\"\nname = \"g\"\n[[group]]\nsubsystem = \"s\"\nname = \"g\"\nlossy = true\n";
        let e = toml::from_str::<FileConfig>(twice).unwrap().resolve().unwrap_err();
        assert!(e.to_string().contains("declared both lossy and blocking"), "{e}");
        // Groups and durable subsystems must fit the routing table, and the
        // socket path a socket address.
        let many = "max-subsystems = 2\ndurable = [\"a\", \"b\"]\n[[group]]\nsubsystem = \"c\"\nname = \"rec\"\n";
        let e = toml::from_str::<FileConfig>(many).unwrap().resolve().unwrap_err();
        assert!(e.to_string().contains("need 4 routing entries"), "{e}");
        // A segment the host's free memory cannot hold (here 32 GiB of
        // queues) is refused before the daemon starts writing it.
        let huge = FileConfig { queue_capacity: Some(1 << 20), max_subsystems: Some(4096), ..Default::default() };
        let huge = huge.resolve().expect("valid as a configuration");
        match super::available_memory() {
            Some(free) if free < 32 << 30 => {
                let e = super::check_memory(&huge.shape, &huge.bus).unwrap_err().to_string();
                assert!(e.contains("MiB of memory available") && e.contains("shorter queues"), "{e}");
            }
            _ => {} // a host with that much free memory may start it
        }
        let small = FileConfig::default().resolve().unwrap();
        assert!(super::check_memory(&small.shape, &small.bus).is_ok());
        let long = FileConfig { socket: Some(format!("/tmp/{}.sock", "x".repeat(120)).into()), ..Default::default() };
        assert!(long.resolve().unwrap_err().to_string().contains("1 to 107 bytes"));
        // The same declaration twice is harmless, as the daemon takes it.
        let same = "[[group]]\nsubsystem = \"s\"\nname = \"g\"\n[[group]]\nsubsystem = \"s\"\nname = \"g\"\n";
        assert!(toml::from_str::<FileConfig>(same).unwrap().resolve().is_ok());
        // A group name is spoken of as a name, not as a subsystem.
        let bad = "[[group]]\nsubsystem = \"s\"\nname = \"Bad\"\n";
        let e = toml::from_str::<FileConfig>(bad).unwrap().resolve().unwrap_err();
        assert!(e.to_string().contains("group name \"Bad\": it has 'B'"), "{e}");
    }

    #[test]
    fn the_check_refuses_what_the_daemon_would_refuse_at_start() {
        // Every count within its limit, but 16 Mi slots of 16 KiB make a
        // segment of 256 GiB.
        let big = FileConfig { slots: Some(1 << 24), slot_size: Some(16384), ..Default::default() };
        let e = big.resolve().unwrap_err();
        assert!(e.to_string().contains("at most 64 GiB"), "{e}");
        for name in ["a\u{0}b", "line\nbreak"] {
            let e = FileConfig { bus: Some(name.into()), ..Default::default() }.resolve().unwrap_err();
            assert!(e.to_string().contains("control characters"), "{name:?}: {e}");
        }
    }

    #[test]
    fn a_grace_out_of_range_or_not_a_duration_says_which() {
        let grace = |toml_text: &str| toml::from_str::<FileConfig>(toml_text).unwrap().resolve();
        assert_eq!(grace("resume-grace = \"1h\"").unwrap().resume_grace, MAX_RESUME_GRACE);
        let e = grace("resume-grace = \"2h\"").unwrap_err().to_string();
        assert!(e.contains("longer than the longest grace"), "{e}");
        let e = grace("resume-grace = 7200").unwrap_err().to_string();
        assert!(e.contains("longer than the longest grace"), "{e}");
        for bad in ["-5", "1.5", "\"-5s\"", "\"soon\""] {
            let e = grace(&format!("resume-grace = {bad}")).unwrap_err().to_string();
            assert!(e.contains("is not a duration: write a whole number with a unit"), "{bad}: {e}");
        }
        let e = toml::from_str::<FileConfig>("resume-grace = true").unwrap_err().to_string();
        assert!(e.contains("a whole number of seconds"), "{e}");
    }
}
