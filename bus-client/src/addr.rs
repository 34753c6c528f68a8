//! How every program finds a bus: `--socket`, else `$SHMBUS_SOCKET`, else
//! from the bus name (`--bus`, else `$SHMBUS_BUS`, else `default`) and the
//! runtime directory: `$XDG_RUNTIME_DIR/shmbus/NAME.sock`, else
//! `/run/shmbus/NAME.sock` for root, else `/tmp/shmbus-UID/NAME.sock`.
//! A client that finds no bus there, but a system bus (a daemon run as a
//! service) at `/run/shmbus/NAME.sock`, uses that one ([`find_socket`]).

use std::path::{Path, PathBuf};

/// Environment variable naming the socket.
pub const ENV_SOCKET: &str = "SHMBUS_SOCKET";
/// Environment variable naming the bus.
pub const ENV_BUS: &str = "SHMBUS_BUS";
/// Environment variable: uids (comma-separated) whose daemons clients
/// trust, besides root and their own (see `BusBuilder::trust_daemon_uid`).
pub const ENV_DAEMON_UID: &str = "SHMBUS_DAEMON_UID";
/// The bus name used when none is given.
pub const DEFAULT_BUS: &str = "default";

/// The bus name: `explicit`, else `$SHMBUS_BUS`, else `default`.
pub fn bus_name(explicit: Option<&str>) -> String {
    explicit
        .map(str::to_owned)
        .or_else(|| std::env::var(ENV_BUS).ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| DEFAULT_BUS.to_owned())
}

/// The socket path for a bus (see the module doc for the order).
pub fn socket_path(explicit_socket: Option<&Path>, explicit_bus: Option<&str>) -> PathBuf {
    if let Some(p) = explicit_socket {
        return p.to_owned();
    }
    if let Some(p) = std::env::var_os(ENV_SOCKET).filter(|s| !s.is_empty()) {
        return PathBuf::from(p);
    }
    runtime_dir().join(format!("{}.sock", bus_name(explicit_bus)))
}

/// The directory of the system's buses (`shmbusd` run as a service).
pub const SYSTEM_DIR: &str = "/run/shmbus";

/// Where a client looks for a bus: [`socket_path`], unless nothing named the
/// socket, no bus listens there, and the system has a bus of that name in
/// [`SYSTEM_DIR`].
pub fn find_socket(explicit_socket: Option<&Path>, explicit_bus: Option<&str>) -> PathBuf {
    let own = socket_path(explicit_socket, explicit_bus);
    let named = explicit_socket.is_some() || std::env::var_os(ENV_SOCKET).is_some_and(|s| !s.is_empty());
    if named || own.exists() {
        return own;
    }
    let system = Path::new(SYSTEM_DIR).join(format!("{}.sock", bus_name(explicit_bus)));
    if system.exists() {
        system
    } else {
        own
    }
}

/// The directory that holds bus sockets by default.
pub fn runtime_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|s| !s.is_empty()) {
        return PathBuf::from(d).join("shmbus");
    }
    let uid = nix::unistd::getuid();
    if uid.is_root() {
        PathBuf::from(SYSTEM_DIR)
    } else {
        PathBuf::from(format!("/tmp/shmbus-{uid}"))
    }
}
