//! Every named crash point (`bus_core::crash::ALL`), in turn: (a) kill a
//! process there (SIGKILL) under load, and (b) stop one there (SIGSTOP) for
//! a second while the others must go on, then let it continue.
//!
//! The load: two publishers (single sends, loans, dropped loans, batches of
//! 8 and of 70) to a subsystem with four groups — the default group with
//! two subscribers, consumer group `g2` with two, and two slow taps (lossy,
//! so their queues overflow and drop) — each subscriber receiving singly
//! and in batches (one tap singly only), holding up to three messages, now
//! and then falling behind so that the queue fills up; a request/response
//! service and a requester. Which process is the victim
//! depends on the point: a publisher, a subscriber, the service, or — for
//! the points inside reclaim — the daemon itself, while it reclaims a killed
//! client that held loans and messages and one that died with an intent.
//!
//! After each run:
//! - while the victim was stopped, the other publishers and subscribers made
//!   progress and the daemon answered `status` within a second;
//! - no other client failed (a call that blocked beyond its timeout fails
//!   its process);
//! - every slot is accounted for (all free once every client is gone);
//! - every message whose send returned `Ok` was delivered at least once to
//!   each blocking group (the taps may drop);
//! - every duplicate delivery within a group is flagged redelivered.
//!
//! When the daemon itself is killed mid-reclaim, its segment goes with it:
//! then every client must get `BusGone` and exit, and a new daemon must
//! start on the same socket.
//!
//! The test prints how many points it covered. `SHMBUS_CRASH_SOAK=N` runs
//! every point N times, firing at a different hit each time.

mod common;
use bus_core::crash::{Point, ALL};
use common::{TempDir, DAEMON, PEER};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Messages each publisher sends.
const COUNT: u64 = 2_000;
/// How long a stopped victim stays stopped.
const STOP_FOR: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Victim {
    Publisher,
    Subscriber,
    Service,
    Daemon,
}

/// Who passes `p` in the workload, and at which hit to fire (late enough
/// that the load is running, early enough that every run reaches it).
fn plan(p: Point) -> (Victim, u64) {
    use Point::*;
    match p {
        RingPushBeforeCas | RingPushAfterCas | RingPushDone => (Victim::Publisher, 300),
        PoolCached | PoolLoaned | LoanPathWritten | SendBeforePush | EnqueueMarked | PublishPartly => {
            (Victim::Publisher, 300)
        }
        // A race (see GROUPS): the first time it happens the load is on.
        LossyDropped => (Victim::Publisher, 1),
        PoolUnloaned => (Victim::Publisher, 20),
        EnqueueRollback | BatchBetweenChunks => (Victim::Publisher, 2),
        RingPopBeforeCas | RingPopAfterCas | RingPopDone | ClaimLocked | DequeueClaimed | ReleaseMarked => {
            (Victim::Subscriber, 100)
        }
        DoorbellAnnounced | DoorbellBeforeRetire => (Victim::Subscriber, 3),
        ReplyBeforePush => (Victim::Service, 20),
        ReclaimIntent | ReclaimRequeue | ReclaimFree => (Victim::Daemon, 1),
    }
}

/// A process whose output lines are collected as they come.
struct Live {
    name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    err: Arc<Mutex<String>>,
    /// Set when stderr reached its end (all of it is in `err`).
    err_done: Arc<std::sync::atomic::AtomicBool>,
    status: Option<ExitStatus>,
}

impl Live {
    fn spawn(name: &str, mut cmd: Command) -> Live {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(String::new()));
        let (out, l) = (child.stdout.take().unwrap(), lines.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                l.lock().unwrap().push(line);
            }
        });
        let (mut e_in, e) = (child.stderr.take().unwrap(), err.clone());
        let err_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = err_done.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = e_in.read(&mut buf) {
                if n == 0 {
                    break;
                }
                e.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
            done.store(true, std::sync::atomic::Ordering::Release);
        });
        Live { name: name.to_owned(), child, lines, err, err_done, status: None }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn count(&self, prefix: &str) -> usize {
        self.lines.lock().unwrap().iter().filter(|l| l.starts_with(prefix)).count()
    }

    fn has_line(&self, prefix: &str) -> bool {
        self.count(prefix) > 0
    }

    fn stderr(&self) -> String {
        self.err.lock().unwrap().clone()
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
    }

    /// The exit status, if it has exited.
    fn poll(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().unwrap();
        }
        self.status
    }

    fn wait(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(st) = self.poll() {
                // Its last words may still be in the pipe: wait for them
                // (bounded: a child it left behind may hold the pipe open).
                let until = Instant::now() + Duration::from_secs(1);
                while !self.err_done.load(std::sync::atomic::Ordering::Acquire) && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(2));
                }
                return Ok(st);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Err(format!("{} did not exit within {timeout:?}; stderr: {}", self.name, self.stderr()))
    }

    /// Whether the kernel shows the process stopped.
    fn is_stopped(&self) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // The state follows the parenthesised command name.
        stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('T'))
    }

    fn wait_line(&self, prefix: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.has_line(prefix) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Err(format!("{} printed no {prefix:?} within {timeout:?}; stderr: {}", self.name, self.stderr()))
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if self.poll().is_none() {
            self.signal(nix::sys::signal::Signal::SIGCONT);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

struct Bus {
    daemon: Live,
    socket: PathBuf,
    dir: TempDir,
}

impl Bus {
    fn start(dir: TempDir, crash: Option<String>) -> Result<Bus, String> {
        let socket = dir.0.join("bus.sock");
        let mut cmd = Command::new(DAEMON);
        cmd.arg("--socket").arg(&socket).args(["--slots", "512", "--slot-size", "256", "--queue-capacity", "16"]);
        match &crash {
            Some(c) => cmd.env("SHMBUS_CRASH_POINT", c),
            None => cmd.env_remove("SHMBUS_CRASH_POINT"),
        };
        let daemon = Live::spawn("daemon", cmd);
        daemon.wait_line("shmbusd: ready", Duration::from_secs(10))?;
        Ok(Bus { daemon, socket, dir })
    }

    fn peer(&self, name: &str, args: &[&str], crash: Option<&str>) -> Live {
        let mut cmd = Command::new(PEER);
        cmd.args(args).env("SHMBUS_SOCKET", &self.socket).env_remove("SHMBUS_BUS");
        match crash {
            Some(c) => cmd.env("SHMBUS_CRASH_POINT", c),
            None => cmd.env_remove("SHMBUS_CRASH_POINT"),
        };
        Live::spawn(name, cmd)
    }

    /// `shmbus status --json` through the library, timed.
    fn status(&self) -> Result<(bus_client::protocol::Status, Duration), String> {
        let started = Instant::now();
        let bus = bus_client::Bus::builder()
            .socket(&self.socket)
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .map_err(|e| format!("connect for status: {e}"))?;
        let s = bus.status().map_err(|e| format!("status: {e}"))?;
        Ok((s, started.elapsed()))
    }

    fn done_file(&self) -> PathBuf {
        self.dir.0.join("done")
    }
}

/// Waits until `f` holds, up to `timeout`.
fn until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Err(format!("timed out after {timeout:?} waiting for {what}"))
}

/// The workload's processes.
struct Load {
    publishers: Vec<(u32, Live)>,
    subscribers: Vec<Live>,
    service: Live,
    requester: Live,
    /// Daemon runs only: a client holding loans and messages, and one that
    /// stops itself with an intent recorded; both are killed to make the
    /// daemon reclaim.
    doomed: Vec<Live>,
}

fn start_load(bus: &Bus, victim: Option<(Victim, String)>, vs: usize) -> Result<Load, String> {
    let crash_for = |v: Victim| victim.as_ref().filter(|(w, _)| *w == v).map(|(_, c)| c.as_str());
    let done = bus.done_file();
    let done_arg = format!("done_file={}", done.display());
    let mut subscribers = Vec::new();
    for (i, extra) in GROUPS.iter().enumerate() {
        let crash = if i == vs { crash_for(Victim::Subscriber) } else { None };
        let mut args = vec!["cpsub", "subsystem=cp", &done_arg];
        args.extend(extra.iter());
        subscribers.push(bus.peer(&format!("subscriber {i}"), &args, crash));
    }
    for s in &subscribers {
        s.wait_line("subscribed", Duration::from_secs(10))?;
    }
    let service = bus.peer("service", &["serve", "subsystem=cpsvc", "workers=1"], crash_for(Victim::Service));
    service.wait_line("serving", Duration::from_secs(10))?;
    let requester = bus.peer("requester", &["cpreq", "path=cpsvc://echo/x", &done_arg], None);
    let mut doomed = Vec::new();
    if victim.as_ref().is_some_and(|(v, _)| *v == Victim::Daemon) {
        doomed.push(bus.peer("holder", &["hold", "subsystem=cp", "path=cp://x", "loans=2", "hold=2"], None));
        doomed.push(bus.peer(
            "intent holder",
            &["cppub", "publisher=9", "path=cp://x", "count=100000"],
            Some("enqueue-marked:stop:50"),
        ));
    }
    let count = format!("count={COUNT}");
    let until = format!("until_file={}", bus.dir.0.join("stop-publishing").display());
    let mut publishers = Vec::new();
    for id in [2u32, 1] {
        let crash = if id == 1 { crash_for(Victim::Publisher) } else { None };
        // The others' sends time out (and fail their process) well before
        // the victim's stop ends: a peer blocked by it cannot go unnoticed.
        // The victim itself may be stopped inside a send.
        let timeout = if crash.is_some() { "send_timeout_ms=5000" } else { "send_timeout_ms=900" };
        let args = ["cppub", &format!("publisher={id}"), "path=cp://x", &count, &until, timeout];
        publishers.push((id, bus.peer(&format!("publisher {id}"), &args, crash)));
    }
    Ok(Load { publishers, subscribers, service, requester, doomed })
}

/// The subscribers' groups: extra arguments of each, and which group it
/// is in (the first two share the default group).
///
/// Two slow taps. The first takes one message at a time, so that its full
/// queue frees one entry at a time, for which the two publishers race: a
/// copy is dropped at `lossy-dropped` only when the queue fills between a
/// publisher's check of it (`Port::begin_publish` leaves out a lossy group
/// whose queue is full already) and its push. The second takes batches,
/// as the other subscribers do.
const GROUPS: [&[&str]; 6] =
    [&[], &[], &["group=g2"], &["group=g2"], &["tap=1", "pause_us=300", "batch=1"], &["tap=1", "pause_us=300"]];

/// Which group subscriber `i` is in.
fn group_of(i: usize) -> usize {
    match i {
        0 | 1 => 0,
        2 | 3 => 1,
        i => i - 2,
    }
}

/// Whether subscriber `i` is in a lossy group (its copies may be dropped).
fn lossy(i: usize) -> bool {
    i >= 4
}

/// Which subscriber is the victim at point `p`: a member of the default
/// group, or for the steps of a group's claim and release, of `g2` (whose
/// other member must then get the victim's messages back).
fn victim_subscriber(p: Point) -> usize {
    match p {
        Point::ClaimLocked | Point::ReleaseMarked => 2,
        _ => 0,
    }
}

/// Lines of progress (acks and receipts) of every process but `victim`.
fn progress(load: &Load, victim: Victim, vs: usize) -> usize {
    let pubs: usize = load
        .publishers
        .iter()
        .filter(|(id, _)| !(victim == Victim::Publisher && *id == 1))
        .map(|(_, p)| p.count("a "))
        .sum();
    let subs: usize = load
        .subscribers
        .iter()
        .enumerate()
        .filter(|(i, _)| !(victim == Victim::Subscriber && *i == vs))
        .map(|(_, s)| s.count("g "))
        .sum();
    pubs + subs
}

/// Checks that every acknowledged message was received, and that every
/// receipt after the first of a message is flagged redelivered.
fn check_delivery(load: &Load) -> Result<(u64, u64), String> {
    // (group, publisher, seq) -> (all, flagged)
    let mut receipts: BTreeMap<(usize, u32, u64), (u32, u32)> = BTreeMap::new();
    for (i, s) in load.subscribers.iter().enumerate() {
        for l in s.lines.lock().unwrap().iter() {
            let mut f = l.split(' ');
            if f.next() != Some("g") {
                continue;
            }
            let p: u32 = f.next().unwrap().parse().unwrap();
            let n: u64 = f.next().unwrap().parse().unwrap();
            let r = f.next() == Some("1");
            let e = receipts.entry((group_of(i), p, n)).or_default();
            e.0 += 1;
            e.1 += r as u32;
        }
    }
    let mut acked = 0;
    for (id, p) in &load.publishers {
        for l in p.lines.lock().unwrap().iter() {
            if let Some(n) = l.strip_prefix("a ") {
                acked += 1;
                let n: u64 = n.parse().unwrap();
                for g in (0..load.subscribers.len()).filter(|&i| !lossy(i)).map(group_of) {
                    if !receipts.contains_key(&(g, *id, n)) {
                        return Err(format!(
                            "message {n} of publisher {id} was acknowledged but never delivered to group {g}"
                        ));
                    }
                }
            }
        }
    }
    // A message a killed subscriber still held (received, never released)
    // must have reached another subscriber, flagged redelivered.
    for (i, s) in load.subscribers.iter().enumerate().filter(|(_, s)| s.status.is_some_and(|st| st.signal().is_some()))
    {
        // Only its own group gets it back.
        let survivors: Vec<&Live> = (0..load.subscribers.len())
            .filter(|&j| j != i && group_of(j) == group_of(i))
            .map(|j| &load.subscribers[j])
            .filter(|s| s.status.is_none_or(|st| st.success()))
            .collect();
        let lines = s.lines.lock().unwrap();
        let released: std::collections::BTreeSet<&str> = lines.iter().filter_map(|l| l.strip_prefix("r ")).collect();
        for l in lines.iter() {
            let Some(g) = l.strip_prefix("g ") else { continue };
            let key = g.rsplit_once(' ').map_or(g, |x| x.0); // "P N"
            if released.contains(key) {
                continue;
            }
            let redelivered = format!("g {key} 1");
            if !survivors.iter().any(|o| o.lines.lock().unwrap().contains(&redelivered)) {
                return Err(format!("message {key} held by the killed {} was not redelivered, flagged", s.name));
            }
        }
    }
    let mut duplicates = 0;
    for ((g, p, n), (all, flagged)) in &receipts {
        if *all > 1 {
            duplicates += (*all - 1) as u64;
            if *flagged < *all - 1 {
                return Err(format!(
                    "message {n} of publisher {p} was delivered {all} times to group {g}, {flagged} flagged"
                ));
            }
        }
    }
    Ok((acked, duplicates))
}

/// One run: `point` fired at hit `n` of its victim, which is killed there
/// (`stop == false`) or stopped there for [`STOP_FOR`]. Returns a summary.
fn run(point: Point, n: u64, stop: bool) -> Result<String, String> {
    let (victim, _) = plan(point);
    let spec = format!("{}:{}:{n}", point.name(), if stop { "stop" } else { "kill" });
    let dir = TempDir::new("crash");
    let mut bus = Bus::start(dir, (victim == Victim::Daemon).then(|| spec.clone()))?;
    let vs = victim_subscriber(point);
    let mut load = start_load(&bus, Some((victim, spec.clone())), vs)?;

    if victim == Victim::Daemon {
        let holder = &load.doomed[0];
        holder.wait_line("holding", Duration::from_secs(20))?;
        let intent = &load.doomed[1];
        until(Duration::from_secs(20), "the intent holder to stop with an intent", || intent.is_stopped())?;
        for d in &load.doomed {
            d.signal(nix::sys::signal::Signal::SIGKILL);
        }
    }

    // Find the victim and wait for it to reach the point.
    let mut note = String::new();
    {
        let (target, name): (&mut Live, &str) = match victim {
            Victim::Publisher => (&mut load.publishers[1].1, "publisher 1"),
            Victim::Subscriber => (&mut load.subscribers[vs], "the victim subscriber"),
            Victim::Service => (&mut load.service, "service"),
            Victim::Daemon => (&mut bus.daemon, "daemon"),
        };
        if stop {
            until(Duration::from_secs(20), &format!("{name} to stop at {}", point.name()), || {
                target.is_stopped() || target.poll().is_some()
            })
            .map_err(|e| format!("{e}: the point was not reached"))?;
            if let Some(st) = target.poll() {
                return Err(format!("{name} exited ({st}) without reaching {}: {}", point.name(), target.stderr()));
            }
        } else {
            let st = target.wait(Duration::from_secs(20)).map_err(|e| format!("{e}: the point was not reached"))?;
            if st.signal() != Some(libc::SIGKILL) {
                return Err(format!("{name} ended with {st}, not at {}: {}", point.name(), target.stderr()));
            }
        }
    }

    if stop {
        // The others go on while the victim is stopped.
        let stopped_at = Instant::now();
        let before = progress(&load, victim, vs);
        if victim != Victim::Daemon {
            let (_, took) = bus.status()?;
            if took > Duration::from_secs(1) {
                return Err(format!("status took {took:?} while {victim:?} was stopped"));
            }
        }
        // Progress must go on through the whole stop, its second half
        // included: a peer that blocks on the stopped one gets stuck within
        // the first half.
        std::thread::sleep((STOP_FOR / 2).saturating_sub(stopped_at.elapsed()));
        let half = progress(&load, victim, vs);
        let publishing = load.publishers.iter().any(|(id, p)| {
            let is_victim = victim == Victim::Publisher && *id == 1;
            !is_victim && !p.has_line("done")
        });
        std::thread::sleep(STOP_FOR.saturating_sub(stopped_at.elapsed()));
        let after = progress(&load, victim, vs);
        if publishing && after == half {
            return Err(format!(
                "no progress in the second half of the stop of {victim:?} at {} ({before} -> {half} -> {after})",
                point.name()
            ));
        }
        note = format!("{} lines of progress during the stop ({} in its second half)", after - before, after - half);
        let target = match victim {
            Victim::Publisher => &load.publishers[1].1,
            Victim::Subscriber => &load.subscribers[vs],
            Victim::Service => &load.service,
            Victim::Daemon => &bus.daemon,
        };
        target.signal(nix::sys::signal::Signal::SIGCONT);
    }

    if victim == Victim::Daemon && !stop {
        // Its segment died with it: every client gets BusGone and exits.
        std::fs::write(bus.dir.0.join("stop-publishing"), b"").map_err(|e| format!("writing the stop file: {e}"))?;
        std::fs::write(bus.done_file(), b"").map_err(|e| format!("writing the done file: {e}"))?;
        let clients = load.publishers.iter_mut().map(|(_, p)| p).chain(&mut load.subscribers);
        for p in clients.chain([&mut load.service, &mut load.requester]) {
            let st = p.wait(Duration::from_secs(5))?;
            if !st.success() && !p.stderr().contains("the bus is gone") {
                return Err(format!("{} ended with {st}, not with BusGone: {}", p.name, p.stderr()));
            }
        }
        // A new daemon starts on the same socket.
        let dir = TempDir(bus.dir.0.clone());
        let socket = bus.socket.clone();
        std::mem::forget(bus.dir);
        drop(bus.daemon);
        let again = Bus::start(dir, None)?;
        if again.socket != socket {
            return Err("the new daemon is on another socket".into());
        }
        let (s, _) = again.status()?;
        return Ok(format!(
            "daemon killed mid-reclaim; clients got BusGone; a new daemon serves ({} slots)",
            s.slots.total
        ));
    }

    // Publishers finish (the killed one excepted), then the subscribers
    // drain, then the service and requester stop.
    std::fs::write(bus.dir.0.join("stop-publishing"), b"").map_err(|e| format!("writing the stop file: {e}"))?;
    for (id, p) in &mut load.publishers {
        if !stop && victim == Victim::Publisher && *id == 1 {
            continue;
        }
        let st = p.wait(Duration::from_secs(30))?;
        if !st.success() {
            return Err(format!("publisher {id} failed ({st}): {}", p.stderr()));
        }
    }
    std::fs::write(bus.done_file(), b"").map_err(|e| format!("writing the done file: {e}"))?;
    for (i, s) in load.subscribers.iter_mut().enumerate() {
        if !stop && victim == Victim::Subscriber && i == vs {
            continue;
        }
        let st = s.wait(Duration::from_secs(30))?;
        if !st.success() {
            return Err(format!("subscriber {i} failed ({st}): {}", s.stderr()));
        }
    }
    let st = load.requester.wait(Duration::from_secs(10))?;
    if !st.success() {
        return Err(format!("requester failed ({st}): {}", load.requester.stderr()));
    }
    let answered = load.requester.lines.lock().unwrap().iter().find_map(|l| {
        l.strip_prefix("requests ").and_then(|r| r.split(' ').next()).and_then(|n| n.parse::<u64>().ok())
    });
    if answered.unwrap_or(0) == 0 {
        return Err(format!("no request was answered: {:?}", load.requester.lines.lock().unwrap()));
    }
    if load.service.poll().is_none() {
        load.service.signal(nix::sys::signal::Signal::SIGKILL);
        load.service.wait(Duration::from_secs(5))?;
    }

    // Every slot is back once every client is gone: free, or queued in a
    // queue (a request whose service was killed holding it waits in the
    // service's queue for the next subscriber, by design), and the
    // workload's queue drained.
    let mut last = None;
    until(Duration::from_secs(10), "every slot to be accounted for", || match bus.status() {
        Ok((s, _)) => {
            let depth: u64 = s.subsystems.iter().map(|x| x.queue_depth).sum();
            let c = &s.slots;
            let ok = c.free + c.queued == c.total
                && c.queued == depth
                && s.subsystems.iter().filter(|x| x.name == "cp").all(|x| x.queue_depth == 0);
            last = Some(s);
            ok
        }
        Err(_) => false,
    })
    .map_err(|e| format!("{e}: {last:?}"))?;
    let s = last.expect("a status");
    let k = &s.counters;
    if k.corruption != 0 || k.slots_lost != 0 || s.slots.corrupt != 0 {
        return Err(format!("a healthy bus reported corruption: {k:?} {:?}", s.slots));
    }
    if let Some(x) = s.subsystems.iter().find(|x| x.stalls != 0 || x.quarantined) {
        return Err(format!("a healthy queue stalled or was quarantined: {x:?}"));
    }
    let (acked, duplicates) = check_delivery(&load)?;
    Ok(format!("{acked} acknowledged, all delivered, {duplicates} duplicates all flagged; {note}"))
}

#[test]
fn every_crash_point_killed_and_stopped_under_load_loses_and_blocks_nothing() {
    if !bus_core::crash::ENABLED {
        // `cargo test --release`: release builds never carry crash points.
        eprintln!("crash points are compiled out of this (release) build: run the tests in a debug build");
        return;
    }
    let rounds: u64 = std::env::var("SHMBUS_CRASH_SOAK").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let only = std::env::var("SHMBUS_CRASH_ONLY").ok();
    let started = Instant::now();
    let mut covered = 0;
    let mut failures = Vec::new();
    for round in 0..rounds {
        for &point in ALL {
            if only.as_deref().is_some_and(|o| o != point.name()) {
                continue;
            }
            let (victim, base) = plan(point);
            // The daemon passes its reclaim points only as often as the
            // killed clients give it cause to: once for the one intent,
            // twice for the two held messages and for the two loans.
            let most = match (victim, point) {
                (Victim::Daemon, Point::ReclaimIntent) => 1,
                (Victim::Daemon, _) => 2,
                _ => u64::MAX,
            };
            let n = (base + round * (base / 2 + 1)).min(most);
            for stop in [false, true] {
                let mode = if stop { "stop" } else { "kill" };
                let t = Instant::now();
                match run(point, n, stop) {
                    Ok(summary) => {
                        covered += 1;
                        eprintln!(
                            "ok   {:<24} {mode} at hit {n:<4} {:>6.2}s  {summary}",
                            point.name(),
                            t.elapsed().as_secs_f64()
                        );
                    }
                    Err(e) => {
                        eprintln!("FAIL {:<24} {mode} at hit {n:<4} {e}", point.name());
                        failures.push(format!("{} {mode}: {e}", point.name()));
                    }
                }
            }
        }
    }
    eprintln!(
        "crash points: {covered} runs passed of {} ({} points x kill/stop x {rounds} rounds) in {:.1}s",
        covered + failures.len(),
        ALL.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{} runs failed:\n{}", failures.len(), failures.join("\n"));
}
