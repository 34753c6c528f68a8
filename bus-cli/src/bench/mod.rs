//! Cross-process measurements, shared by `shmbus bench` and the criterion
//! benches in `benches/`: the cache-line [`probe`], the transports
//! ([`link`]: shmbus, Unix socket, pipe, bare futex), the child side of each
//! ([`peer`]), the default [`suite`], and the [`idle`] cost of a receiver.
//!
//! Every measurement runs its two sides in separate processes: the child is
//! this same executable started again with [`PEER_ENV`] set, so any binary
//! that wants to measure calls [`peer_main_if_requested`] first thing in
//! `main`.

pub mod idle;
pub mod link;
pub mod peer;
pub mod probe;
pub mod requests;
pub mod suite;

/// Environment variable that makes a process a measurement peer.
pub const PEER_ENV: &str = "SHMBUS_BENCH_PEER";

/// If this process was started as a measurement peer, runs that role and
/// exits; otherwise returns.
pub fn peer_main_if_requested() {
    if let Ok(spec) = std::env::var(PEER_ENV) {
        std::process::exit(peer::run(&spec));
    }
}

/// Pins the calling thread to `cpu` (ignored if that fails, e.g. the CPU
/// does not exist).
pub fn pin(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

/// Lets the calling thread run on every CPU again: a process started by a
/// pinned thread inherits its pin, so a peer that is not to be pinned
/// calls this (else every unpinned peer would share the parent's CPU).
pub fn unpin() {
    let mut set = nix::sched::CpuSet::new();
    for cpu in 0..nix::sched::CpuSet::count() {
        let _ = set.set(cpu);
    }
    let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
}

/// The two CPUs to pin to by default: 0 and 1 when there are at least two.
pub fn default_cpus() -> Option<(usize, usize)> {
    (std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) >= 2).then_some((0, 1))
}
