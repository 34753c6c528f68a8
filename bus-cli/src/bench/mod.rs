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

/// The CPUs this process was allowed before the first [`pin`] (the user's
/// own `taskset`, if any).
static ALLOWED: std::sync::OnceLock<nix::sched::CpuSet> = std::sync::OnceLock::new();

fn current_cpus() -> Option<nix::sched::CpuSet> {
    nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).ok()
}

/// Pins the calling thread to `cpu` (ignored if that fails, e.g. the CPU
/// does not exist).
pub fn pin(cpu: usize) {
    if let Some(allowed) = current_cpus() {
        ALLOWED.get_or_init(|| allowed);
    }
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

/// Lets the calling thread run on every CPU it was allowed before the first
/// [`pin`] again (nothing if it was never pinned).
pub fn unpin() {
    if let Some(allowed) = ALLOWED.get() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), allowed);
    }
}

/// Runs `f` (which starts a process) unpinned, then pins the calling thread
/// as it was: a process started by a pinned thread inherits its pin, and a
/// peer given no CPU must not share its parent's.
pub fn unpinned<T>(f: impl FnOnce() -> T) -> T {
    let was = current_cpus();
    unpin();
    let r = f();
    if let Some(was) = was {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &was);
    }
    r
}

/// The CPUs this process may run on, in order (before any [`pin`]).
fn allowed_cpus() -> Vec<usize> {
    let Some(set) = ALLOWED.get().copied().or_else(current_cpus) else { return Vec::new() };
    (0..nix::sched::CpuSet::count()).filter(|&c| set.is_set(c).unwrap_or(false)).collect()
}

/// The two CPUs to pin to by default: the first two this process may run
/// on, when there are at least two.
pub fn default_cpus() -> Option<(usize, usize)> {
    match allowed_cpus()[..] {
        [a, b, ..] => Some((a, b)),
        _ => None,
    }
}

/// Checks the CPUs given with `--cpus`: two, different, both ones this
/// process may run on (two sides pinned to one CPU would spin against
/// each other for as long as the scheduler lets them).
pub fn check_cpus(cpus: &[usize]) -> Result<(usize, usize), String> {
    let allowed = allowed_cpus();
    let list = allowed.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(",");
    match *cpus {
        [a, b] if a == b => {
            Err(format!("--cpus {a},{b}: the two sides need two different CPUs (this process may use {list})"))
        }
        [a, b] => match [a, b].into_iter().find(|c| !allowed.contains(c)) {
            Some(c) => Err(format!(
                "--cpus {a},{b}: CPU {c} is not one this process may use ({list}); pick two of those, or --no-pin"
            )),
            None => Ok((a, b)),
        },
        _ => Err(format!("--cpus takes two CPUs, as in --cpus 0,1 (this process may use {list})")),
    }
}
