//! How every program finds a bus: `--socket`, else `$SHMBUS_SOCKET`, else
//! from the bus name (`--bus`, else `$SHMBUS_BUS`, else `default`) and the
//! runtime directory: `$XDG_RUNTIME_DIR/shmbus/NAME.sock`, else
//! `/run/shmbus/NAME.sock` for root, else `/tmp/shmbus-UID/NAME.sock`.

use std::path::{Path, PathBuf};

/// Environment variable naming the socket.
pub const ENV_SOCKET: &str = "SHMBUS_SOCKET";
/// Environment variable naming the bus.
pub const ENV_BUS: &str = "SHMBUS_BUS";
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

/// The directory that holds bus sockets by default.
pub fn runtime_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|s| !s.is_empty()) {
        return PathBuf::from(d).join("shmbus");
    }
    let uid = nix::unistd::getuid();
    if uid.is_root() {
        PathBuf::from("/run/shmbus")
    } else {
        PathBuf::from(format!("/tmp/shmbus-{uid}"))
    }
}
