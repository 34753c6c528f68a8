//! Where a bridged round trip spends its time: a trace of each hop, for
//! the benchmark only (feature `bench`; without it the `hop!` calls in the
//! bridge compile to nothing).
//!
//! `bridge-bench bus-ping` stamps the send time (wall clock, nanoseconds,
//! which every process on the host reads alike) and a marker into the
//! first 16 bytes of each ping's body; the echo sends the body back as
//! it came. Every process on the way that has `HOPTRACE` in its
//! environment records, at each named point, how long ago that stamp was
//! taken, and every 2 000 records of a point prints the 10th, 50th and
//! 90th percentile of those 2 000 to standard error:
//!
//! ```text
//! hop 2-import-put ping n=4000 p10_us=21.9 p50_us=34.8 p90_us=74.2
//! ```
//!
//! `HOPS=1 bus-bridge/bench/run.sh` collects them from every log and
//! prints each point's median. Bodies without the marker (every other
//! message) are not recorded.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// The marker after the stamp.
const MARK: &[u8; 8] = b"HOPTRACE";
/// Records per printed window.
const WINDOW: usize = 2_000;

static ON: OnceLock<bool> = OnceLock::new();
static SEEN: Mutex<Option<HashMap<String, Vec<u64>>>> = Mutex::new(None);

/// Whether `HOPTRACE` is set (read once).
pub fn on() -> bool {
    *ON.get_or_init(|| std::env::var_os("HOPTRACE").is_some())
}

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Stamps `body` (at least 16 bytes) with the time now, when tracing is on.
pub fn stamp(body: &mut [u8]) {
    if on() && body.len() >= 16 {
        body[..8].copy_from_slice(&now_ns().to_le_bytes());
        body[8..16].copy_from_slice(MARK);
    }
}

/// Records, under `point` and `what`, how long ago `body` was stamped.
pub fn hop(point: &str, what: &str, body: &[u8]) {
    if !on() || body.len() < 16 || &body[8..16] != MARK {
        return;
    }
    let mut t = [0; 8];
    t.copy_from_slice(&body[..8]);
    let age = now_ns().saturating_sub(u64::from_le_bytes(t));
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    let label = format!("{point} {what}");
    let v = seen.get_or_insert_with(HashMap::new).entry(label).or_default();
    v.push(age);
    if v.len() % WINDOW == 0 {
        let mut w = v[v.len() - WINDOW..].to_vec();
        w.sort_unstable();
        let us = |q: usize| w[WINDOW * q / 100] as f64 / 1e3;
        eprintln!("hop {point} {what} n={} p10_us={:.1} p50_us={:.1} p90_us={:.1}", v.len(), us(10), us(50), us(90));
    }
}
