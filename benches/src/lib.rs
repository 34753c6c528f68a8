//! Helpers shared by the criterion benchmarks: a daemon on a private socket
//! for the duration of a benchmark binary.

use bus_client::Bus;
use std::time::Duration;

/// A daemon serving in this process, and a client of it.
pub struct BenchBus {
    /// The client.
    pub bus: Bus,
    _daemon: bus_daemon::DaemonHandle,
}

/// Starts a daemon whose slots hold bodies up to `max_body` bytes.
pub fn start(max_body: usize) -> BenchBus {
    let socket = std::env::temp_dir().join(format!("shmbus-criterion-{}.sock", std::process::id()));
    let slot_size = ((64 + 64 + max_body).div_ceil(64) * 64) as u32;
    let cfg = bus_daemon::FileConfig {
        bus: Some(format!("criterion-{}", std::process::id())),
        socket: Some(socket.clone()),
        slots: Some(4096),
        slot_size: Some(slot_size),
        queue_capacity: Some(1024),
        ..Default::default()
    }
    .resolve()
    .expect("valid bench config");
    let daemon = bus_daemon::spawn(cfg).expect("start a daemon for the benchmarks");
    let bus = Bus::builder().socket(&socket).send_timeout(Duration::from_secs(30)).connect().expect("connect");
    BenchBus { bus, _daemon: daemon }
}
