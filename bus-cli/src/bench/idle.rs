//! What a receiver costs while nothing arrives: a child subscribes and
//! waits on an idle queue for a while, blocking or as a tokio task, and
//! reports the CPU time and the context switches of its whole process
//! (`getrusage`), so that a wait that wakes on a timer shows up as
//! switches, and one that spins as CPU time.

use super::link::{fresh_subsystem, Peer};
use bus_client::Bus;
use serde::Serialize;
use std::time::Duration;

/// This process's CPU time (user + system, µs) and context switches
/// (voluntary + involuntary) so far.
pub fn usage() -> (u64, u64) {
    let Ok(u) = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF) else {
        return (0, 0);
    };
    let us = |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
    (
        us(u.user_time()) + us(u.system_time()),
        (u.voluntary_context_switches() + u.involuntary_context_switches()) as u64,
    )
}

/// One idle wait.
#[derive(Debug, Clone, Serialize)]
pub struct Idle {
    /// `blocking` or `async`.
    pub receiver: &'static str,
    /// How long it waited.
    pub seconds: u64,
    /// CPU time its process used meanwhile, in microseconds.
    pub cpu_us: u64,
    /// Context switches of its process meanwhile.
    pub context_switches: u64,
}

/// Runs one idle child of each kind, for `seconds` each, one after the
/// other.
pub fn run(bus: &Bus, seconds: u64) -> std::io::Result<Vec<Idle>> {
    let mut v = Vec::new();
    for (receiver, flag) in [("async", " async=1"), ("blocking", "")] {
        let spec = format!("idle subsystem={} seconds={seconds}{flag}", fresh_subsystem("idle"));
        let mut peer = Peer::spawn(&spec, &[], Some(bus.socket_path()))?;
        let line = peer.line()?;
        let n: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
        let [cpu_us, context_switches] = n[..] else {
            return Err(std::io::Error::other(format!("bad report from the idle child: {line:?}")));
        };
        peer.finish()?;
        v.push(Idle { receiver, seconds, cpu_us, context_switches });
    }
    Ok(v)
}

/// Prints the results.
pub fn print(out: &mut dyn std::io::Write, v: &[Idle]) -> std::io::Result<()> {
    writeln!(out)?;
    writeln!(out, "{:<38} {:>8} {:>12} {:>18}", "a receiver on an idle queue", "for", "CPU time", "context switches")?;
    for i in v {
        let label = if i.receiver == "async" {
            "async receiver (tokio task, parked)"
        } else {
            "blocking receiver (futex, 50 ms slices)"
        };
        let d = Duration::from_micros(i.cpu_us);
        writeln!(out, "{label:<38} {:>6} s {:>9.3} ms {:>18}", i.seconds, d.as_secs_f64() * 1e3, i.context_switches)?;
    }
    Ok(())
}
