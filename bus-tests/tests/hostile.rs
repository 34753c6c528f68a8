//! Hostile bytes (issue 7): while clients run, a `scribble` client writes
//! random words over one region of the live segment. Whatever it wrote, the
//! daemon must stay alive, answer `status` within 1 s and stop cleanly (on
//! `shutdown`, or SIGTERM) within 1 s; no client may die of a signal or
//! hang beyond its timeouts. Typed errors and `BusGone` are fine.
//!
//! One fresh daemon per round. `SHMBUS_HOSTILE_SEED` (default 1) picks the
//! seeds, `SHMBUS_HOSTILE_ROUNDS` (default 1) repeats the whole set of rounds
//! that many times with further seeds (a soak), `SHMBUS_HOSTILE_WORDS`
//! overrides the words written per round (300; 400 for `all`). Every round
//! prints one summary line, and all rounds run before the test reports what
//! failed.
//! For debugging: `SHMBUS_HOSTILE_REGION=R` runs only the rounds of region
//! `R`, `SHMBUS_HOSTILE_GDB=1` adds gdb's stacks of a hung process, and
//! `SHMBUS_HOSTILE_LOG=1` prints the daemon's log of every round.

mod common;
use common::*;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

const SCRIBBLE: &str = env!("CARGO_BIN_EXE_scribble");

/// A small bus, so that a few hundred words hit a good share of each
/// metadata region.
const SHAPE: &[&str] =
    &["--slots", "256", "--slot-size", "256", "--queue-capacity", "64", "--max-subsystems", "8", "--max-clients", "16"];

/// The longest the trust model allows for a status answer and for a stop.
const SECOND: Duration = Duration::from_secs(1);
/// How long a finite client may take beyond its own timeout before it
/// counts as hung (process exit, a liveness slice, a loaded 2-core machine).
const GRACE: Duration = Duration::from_millis(1500);
/// The `sub` peer's own deadline.
const SUB_TIMEOUT_MS: u64 = 1500;
/// The `sub` peer stops once nothing came for this long (after its first
/// message; its `timeout_ms` only bounds its waits, so while the publisher
/// keeps its queue non-empty it goes on receiving).
const SUB_IDLE_MS: u64 = 300;
/// The timeout of each request of `cpreq` and of `shmbus request`.
const REQUEST_TIMEOUT_MS: u64 = 500;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stop {
    Shutdown,
    Sigterm,
}

struct Round {
    region: &'static str,
    words: u64,
    seed: u64,
    stop: Stop,
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The rounds: every region once, then `all` with several seeds; the last
/// round stops the daemon with SIGTERM instead of `shutdown`.
fn rounds(seed: u64, passes: u64, words: Option<u64>) -> Vec<Round> {
    let mut out = Vec::new();
    for pass in 0..passes {
        let s = seed.wrapping_add(pass.wrapping_mul(1000));
        for (k, region) in
            ["header", "clients", "routing", "free_ring", "queues", "slot_headers"].into_iter().enumerate()
        {
            out.push(Round {
                region,
                words: words.unwrap_or(300),
                seed: s.wrapping_add(k as u64),
                stop: Stop::Shutdown,
            });
        }
        for k in 0..3 {
            out.push(Round {
                region: "all",
                words: words.unwrap_or(400),
                seed: s.wrapping_add(100 + k),
                stop: Stop::Shutdown,
            });
        }
        out.last_mut().expect("rounds").stop = Stop::Sigterm;
    }
    out
}

/// How a child ended, looked at without reaping it (so that [`Proc::wait`]
/// still collects it and its output).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peek {
    Running,
    Exited(i32),
    Signaled(Signal),
}

fn peek(p: &Proc) -> Peek {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::Pid(Pid::from_raw(p.pid())), flags) {
        Ok(WaitStatus::Exited(_, code)) => Peek::Exited(code),
        Ok(WaitStatus::Signaled(_, sig, _)) => Peek::Signaled(sig),
        _ => Peek::Running,
    }
}

/// Polls until `p` ended or `deadline`.
fn peek_until(p: &Proc, deadline: Instant) -> Peek {
    loop {
        let k = peek(p);
        if k != Peek::Running || Instant::now() >= deadline {
            return k;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The kernel stacks of a process's threads, for a report on a hang
/// (empty if not readable).
fn stack_of(pid: i32) -> String {
    let mut out = String::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let wchan = std::fs::read_to_string(t.path().join("wchan")).unwrap_or_default();
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        let state = stat.rsplit(')').next().and_then(|r| r.split_whitespace().next()).unwrap_or("?");
        out.push_str(&format!(
            "\n  thread {} {}: state {state} wchan {wchan}",
            t.file_name().to_string_lossy(),
            comm.trim()
        ));
    }
    if std::env::var_os("SHMBUS_HOSTILE_GDB").is_some() {
        // Opt-in: the user-space stacks too (needs gdb and ptrace rights).
        let bt = std::process::Command::new("gdb")
            .args(["-p", &pid.to_string(), "-batch", "-ex", "thread apply all bt"])
            .output();
        if let Ok(o) = bt {
            out.push_str(&String::from_utf8_lossy(&o.stdout));
        }
    }
    out
}

/// `shmbus status --json`, which must succeed within 1 s, CLI start-up
/// included; returns how long it took and the corruption counter. When it
/// is late, the daemon's stacks go into the failure.
fn status_check(bus: &TestBus, tag: &str, when: &str, failures: &mut Vec<String>) -> (Duration, Option<u64>) {
    let t = Instant::now();
    let cli = Proc::new(bus.command(CLI).args(["status", "--json"]).spawn().expect("start the cli"));
    let stack = if peek_until(&cli, t + SECOND) == Peek::Running { stack_of(bus.daemon.pid()) } else { String::new() };
    let (st, out, err) = cli.wait(Duration::from_secs(30));
    let took = t.elapsed();
    let corruption = if st.success() {
        serde_json::from_str::<serde_json::Value>(&out).ok().and_then(|s| s["counters"]["corruption"].as_u64())
    } else {
        failures.push(format!("{tag}: `shmbus status` {when} failed ({st}): {err}"));
        None
    };
    if took >= SECOND {
        failures.push(format!("{tag}: `shmbus status` {when} took {took:?}; the daemon:{stack}"));
    }
    (took, corruption)
}

/// A client of the round: its role, the process, and how long after it is
/// settled (the clients settled before it are gone by then) it should have
/// exited on its own (`None`: it runs until we kill it). Still running then
/// is a failure if `strict` (the time is its own timeout), else only noted.
struct Client {
    name: String,
    proc: Proc,
    exit_within: Option<Duration>,
    strict: bool,
}

/// What became of one client: `run` (still running, killed by us), `exit N`,
/// or a failure.
fn settle(c: Client, failures: &mut Vec<String>, notes: &mut Vec<String>, tag: &str) -> String {
    let Client { name, proc, exit_within, strict } = c;
    let exit_by = exit_within.map(|d| Instant::now() + d);
    let seen = match exit_by {
        Some(by) => peek_until(&proc, by),
        None => peek(&proc),
    };
    let late = exit_by.is_some() && seen == Peek::Running;
    let hung = late && strict;
    let stack = if late { stack_of(proc.pid()) } else { String::new() };
    if seen == Peek::Running {
        proc.signal(Signal::SIGKILL);
    }
    let (st, out, err) = proc.wait(Duration::from_secs(5));
    let outcome = match (seen, st.code(), st.signal()) {
        (Peek::Running, _, Some(9)) if !late => "run".to_owned(),
        (Peek::Running, _, Some(9)) if !hung => {
            notes.push(format!("  {name}: still running past its deadline (not a failure: see its role){stack}"));
            "late".to_owned()
        }
        (Peek::Running, _, Some(9)) => {
            failures.push(format!("{tag}: client {name} hung past its timeout{stack}\nstdout: {out}\nstderr: {err}"));
            "HUNG".to_owned()
        }
        (_, Some(code), _) => {
            if code != 0 {
                // The typed error (or panic message) it exited with.
                let why = err.lines().find(|l| l.contains("panicked") || l.starts_with("peer")).unwrap_or("");
                let why = err.lines().skip_while(|l| !l.contains("panicked")).nth(1).map_or(why, |next| next);
                notes.push(format!("  {name}: exit {code}: {why}"));
            }
            format!("exit {code}")
        }
        (_, _, sig) => {
            failures.push(format!("{tag}: client {name} died of signal {sig:?}\nstdout: {out}\nstderr: {err}"));
            format!("SIGNAL {sig:?}")
        }
    };
    format!("{name}={outcome}")
}

/// One round; returns its summary line, pushing what failed to `failures`.
fn round(r: &Round, failures: &mut Vec<String>) -> String {
    let tag = format!("region={} seed={}", r.region, r.seed);
    let mut notes = Vec::new();
    let bus = TestBus::start(SHAPE);
    let done_file = bus.dir.0.join("done");
    let done = done_file.display().to_string();
    let mut clients = Vec::new();
    let mut start = |name: &str, args: &[&str], ready: Option<&str>| {
        let mut proc = bus.peer(args);
        if let Some(line) = ready {
            proc.wait_line(line, Duration::from_secs(10));
        }
        clients.push(Client { name: name.to_owned(), proc, exit_within: None, strict: true });
    };
    start("churn1", &["churn", "path=hot://a", "subsystem=hot"], Some("churning"));
    start("churn2", &["churn", "path=hot://b", "subsystem=hot"], Some("churning"));
    let (sub_timeout, sub_idle) = (format!("timeout_ms={SUB_TIMEOUT_MS}"), format!("until_idle_ms={SUB_IDLE_MS}"));
    start("sub", &["sub", "subsystem=feed", &sub_timeout, &sub_idle], Some("subscribed"));
    start("pub", &["pub", "path=feed://x", "publisher=1", "count=100000000"], None);
    start("serve", &["serve", "subsystem=svc", "workers=2"], Some("serving"));
    start("cpreq", &["cpreq", "path=svc://echo/x", &format!("done_file={done}")], None);
    std::thread::sleep(Duration::from_millis(300));

    // One region at once; `all` spreads its words over 200 ms, so that
    // they land between the clients' operations too.
    let (words, seed) = (format!("words={}", r.words), format!("seed={}", r.seed));
    let spread = format!("spread_ms={}", if r.region == "all" { 200 } else { 0 });
    let args = [&format!("region={}", r.region), &words, &seed, &spread];
    let scribbler = Proc::new(bus.command(SCRIBBLE).args(args).spawn().expect("scribble"));
    let (st, out, err) = scribbler.wait(Duration::from_secs(10));
    assert!(st.success(), "{tag}: scribble failed: {out}{err}");
    std::thread::sleep(Duration::from_millis(500));

    // A request through the CLI: any answer or typed error, within its
    // timeouts (the CLI's send timeout is its request timeout: at most one
    // for the send, one for the reply).
    let t = Instant::now();
    let timeout = format!("{REQUEST_TIMEOUT_MS}ms");
    let args = ["request", "svc://echo/hi", "ping", "--timeout", &timeout];
    let cli = Proc::new(bus.command(CLI).args(args).spawn().expect("start the cli"));
    let bound = 2 * Duration::from_millis(REQUEST_TIMEOUT_MS) + GRACE;
    let stack = if peek_until(&cli, t + bound) == Peek::Running { stack_of(cli.pid()) } else { String::new() };
    let (st, _, err) = cli.wait(Duration::from_secs(30));
    let request_took = t.elapsed();
    if st.signal().is_some() {
        failures.push(format!("{tag}: `shmbus request` died of signal {:?}: {err}", st.signal()));
    }
    if request_took > bound {
        failures.push(format!("{tag}: `shmbus request` took {request_took:?}: {}{stack}", err.trim()));
    }
    let request = match st.code() {
        Some(0) => "ok".to_owned(),
        Some(c) => {
            notes.push(format!("  request: exit {c}: {}", err.trim()));
            format!("exit {c}")
        }
        None => "SIGNAL".to_owned(),
    };

    // (a) status within 1 s while the clients run.
    let (status_took, corruption) = status_check(&bus, &tag, "with clients", failures);
    // The routing table is small (8 entries) and only the daemon writes it:
    // hundreds of random words there always change what it wrote, and the
    // daemon must have noticed, counted and repaired that.
    if r.region == "routing" && corruption == Some(0) {
        failures.push(format!("{tag}: the routing table was scribbled over and status counted no corruption"));
    }

    // (b) no client died of a signal or hung past its timeout. The
    // publisher goes first (killed if still sending): the subscriber must
    // then stop within its idle time once the queue is drained.
    std::fs::write(&done_file, b"").expect("done file");
    clients.sort_by_key(|c| c.name != "pub");
    for c in &mut clients {
        match c.name.as_str() {
            "sub" => c.exit_within = Some(Duration::from_millis(SUB_IDLE_MS) + GRACE),
            // It stops after the request in flight. Its bound is not this
            // request's timeout, though: a request's send waits for a slot
            // or queue space up to the bus's send timeout (30 s in `peer`),
            // and a scribbled free ring or queue makes it wait that long.
            // So being late is only noted; `shmbus request` above, whose
            // send timeout is its request timeout, is held to its bound.
            "cpreq" => {
                c.exit_within = Some(Duration::from_millis(REQUEST_TIMEOUT_MS) + GRACE);
                c.strict = false;
            }
            _ => {}
        }
    }
    let outcomes: Vec<String> = clients.into_iter().map(|c| settle(c, failures, &mut notes, &tag)).collect();

    // (a) again, once the daemon has reclaimed the clients over the garbage.
    std::thread::sleep(Duration::from_millis(100));
    let (after_took, _) = status_check(&bus, &tag, "after the clients", failures);

    // (c) the daemon stops with status 0 within 1 s.
    let t = Instant::now();
    let stop_ack = match r.stop {
        Stop::Shutdown => {
            let (st, _, err) = bus.cli(&["shutdown"]);
            if !st.success() {
                failures.push(format!("{tag}: `shmbus shutdown` failed ({st}): {err}"));
            }
            if t.elapsed() >= SECOND {
                failures.push(format!("{tag}: `shmbus shutdown` took {:?}", t.elapsed()));
            }
            t.elapsed()
        }
        Stop::Sigterm => {
            bus.daemon.signal(Signal::SIGTERM);
            Duration::ZERO
        }
    };
    let TestBus { daemon, dir, .. } = bus;
    let acked = Instant::now();
    let gone = peek_until(&daemon, acked + SECOND);
    let stop_took = acked.elapsed();
    let mut stuck = String::new();
    if gone == Peek::Running && r.stop == Stop::Shutdown {
        // Not stopped by `shutdown`: does SIGTERM still work?
        daemon.signal(Signal::SIGTERM);
        if peek_until(&daemon, Instant::now() + SECOND) == Peek::Running {
            stuck = stack_of(daemon.pid());
            daemon.signal(Signal::SIGKILL);
            stuck.push_str("\n(not stopped by SIGTERM either: killed)");
        } else {
            stuck.push_str("(SIGTERM stopped it)");
        }
    } else if gone == Peek::Running {
        stuck = stack_of(daemon.pid());
        daemon.signal(Signal::SIGKILL);
    }
    let (st, _, log) = daemon.wait(Duration::from_secs(5));
    drop(dir);
    match gone {
        Peek::Exited(0) => {}
        Peek::Running => failures.push(format!("{tag}: the daemon did not stop within 1 s {stuck}\n{log}")),
        other => failures.push(format!("{tag}: the daemon ended with {other:?} ({st})\n{log}")),
    }
    if log.contains("panicked") {
        failures.push(format!("{tag}: the daemon panicked\n{log}"));
    }
    if std::env::var_os("SHMBUS_HOSTILE_LOG").is_some() {
        notes.push(format!("  daemon log:\n{log}"));
    }
    let errors = log.lines().filter(|l| l.contains("ERROR")).count();
    let warnings = log.lines().filter(|l| l.contains("WARN")).count();
    format!(
        "hostile {tag} words={} status={status_took:.0?},{after_took:.0?} stop={:?}:{stop_ack:.0?}+{stop_took:.0?} \
         request={request}/{request_took:.0?} corruption={} daemon_log={errors}E/{warnings}W clients: {}",
        r.words,
        r.stop,
        corruption.map_or("?".to_owned(), |c| c.to_string()),
        outcomes.join(" ")
    ) + &notes.iter().map(|n| format!("\n{n}")).collect::<String>()
}

#[test]
fn the_daemon_and_its_clients_survive_random_words_in_every_region() {
    let seed = env_u64("SHMBUS_HOSTILE_SEED", 1);
    let passes = env_u64("SHMBUS_HOSTILE_ROUNDS", 1).max(1);
    let words = std::env::var("SHMBUS_HOSTILE_WORDS").ok().and_then(|w| w.parse().ok());
    let mut failures = Vec::new();
    // Debugging aid: only the rounds of one region.
    let only = std::env::var("SHMBUS_HOSTILE_REGION").ok();
    for r in rounds(seed, passes, words).into_iter().filter(|r| only.as_deref().is_none_or(|o| o == r.region)) {
        let line = round(&r, &mut failures);
        println!("{line}");
    }
    assert!(failures.is_empty(), "{} failure(s):\n\n{}", failures.len(), failures.join("\n\n"));
}

#[test]
fn a_client_whose_entry_is_overwritten_is_put_back_by_the_daemon() {
    // A client that does not find its own state and serial in its entry
    // could have been reclaimed (stopped past a restart's grace); it can
    // tell by its connection, which the daemon closed then. A faulty
    // process that wrote the entry while the connection is open must not
    // cut the client off, nor make it keep its slots.
    let mut bus = TestBus::start(SHAPE);
    let c = bus.connect();
    let sub = c.subscribe("x").unwrap();
    let mut p = c.publisher().create().unwrap();
    p.send_bytes("x://a", b"before").unwrap();
    let held = sub.recv_timeout(Duration::from_secs(5)).unwrap();
    let s = bus.status();
    let me = s["client_list"].as_array().unwrap().iter().find(|x| x["pid"] == std::process::id()).expect("this client");
    let id = me["id"].as_u64().unwrap().to_string();
    let scribble = Proc::new(bus.command(SCRIBBLE).arg(format!("client={id}")).spawn().expect("scribble"));
    let (st, out, err) = scribble.wait(Duration::from_secs(10));
    assert!(st.success(), "{out}{err}");
    // At once, before any audit: the held message goes back, and sends go on.
    assert_eq!(held.body_bytes().unwrap(), b"before");
    drop(held);
    p.send_bytes("x://a", b"after").expect("a live client goes on");
    assert_eq!(sub.recv_timeout(Duration::from_secs(5)).unwrap().body_bytes().unwrap(), b"after");
    // The daemon puts the entry back, and counts it.
    assert!(bus.daemon.saw_err_line(Duration::from_secs(5), |l| l.contains("was overwritten")));
    let s = bus.status();
    assert!(s["counters"]["corruption"].as_u64() >= Some(1), "{s}");
    assert_eq!(s["slots"]["held"], 0, "the held message was not released: {s}");
}
