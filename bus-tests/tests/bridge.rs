//! Two buses bridged over Zenoh on one machine: two daemons (two sockets)
//! stand for two hosts, each with a bridge, linked by TCP on 127.0.0.1.
//! Host A serves `users` (a router with a parameter route) and reads
//! `sensors`; host B reads `alerts`. Every program on either side is an
//! ordinary client that does not know there is another host.

mod common;
use common::*;
use nix::sys::signal::Signal;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

pub const BRIDGE: &str = env!("CARGO_BIN_EXE_bridge");

fn daemon(socket: &Path) -> Proc {
    let mut cmd = Command::new(DAEMON);
    // sensors is durable: queued messages outlive a bridge killed on B.
    cmd.arg("--socket")
        .arg(socket)
        .args(["--slots", "256", "--durable", "sensors"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut d = Proc::new(cmd.spawn().expect("start the daemon"));
    d.wait_line("shmbusd: ready", Duration::from_secs(20));
    d
}

/// A peer run to its end (within 30 s): its stdout.
fn run_peer(socket: &Path, args: &[&str]) -> String {
    let (st, out, err) = peer(socket, args).wait(Duration::from_secs(30));
    assert!(st.success(), "peer {args:?} failed: {err}");
    out
}

/// A TCP port free on 127.0.0.1 right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Host A's or B's bridge, started; `linked` names the subsystems whose
/// far exporter it must see before this returns.
fn bridge(socket: &Path, args: &[&str], linked: &[&str]) -> Proc {
    let mut cmd = Command::new(BRIDGE);
    cmd.arg("--socket").arg(socket).args(["--no-scouting", "--stats-interval", "200ms"]);
    if !args.contains(&"--request-timeout") {
        cmd.args(["--request-timeout", "12s"]);
    }
    if !args.contains(&"--local-timeout") {
        cmd.args(["--local-timeout", "2s"]);
    }
    cmd.args(args).env("RUST_LOG", "info,zenoh=warn").stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut b = Proc::new(cmd.spawn().expect("start a bridge"));
    let mut want = vec!["shmbus-bridge: ready".to_owned()];
    want.extend(linked.iter().map(|s| format!("shmbus-bridge: linked {s}")));
    b.wait_lines(&want.iter().map(String::as_str).collect::<Vec<_>>(), Duration::from_secs(20));
    b
}

struct Hosts {
    _dir: TempDir,
    a: PathBuf,
    b: PathBuf,
    port: u16,
    _daemons: (Proc, Proc),
}

impl Hosts {
    fn new(tag: &str) -> Hosts {
        let dir = TempDir::new(tag);
        let (a, b) = (dir.0.join("a.sock"), dir.0.join("b.sock"));
        let daemons = (daemon(&a), daemon(&b));
        Hosts { _dir: dir, a, b, port: free_port(), _daemons: daemons }
    }

    fn listen(&self) -> String {
        format!("tcp/127.0.0.1:{}", self.port)
    }

    /// A's bridge: exports users and sensors, imports alerts.
    fn bridge_a(&self, linked: &[&str]) -> Proc {
        let l = self.listen();
        bridge(&self.a, &["--listen", &l, "--export", "users", "sensors", "--import", "alerts"], linked)
    }

    /// B's bridge: imports users and sensors, exports alerts.
    fn bridge_b(&self, extra: &[&str], linked: &[&str]) -> Proc {
        let l = self.listen();
        let mut args = vec!["--connect", &l, "--import", "users", "sensors", "--export", "alerts"];
        args.extend_from_slice(extra);
        bridge(&self.b, &args, linked)
    }
}

/// Entries queued for `subsystem` on the bus at `socket` (0 if it has no
/// queue), from `shmbus status`.
fn queue_depth(socket: &Path, subsystem: &str) -> u64 {
    let st = status(socket);
    st["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == subsystem)
        .map_or(0, |x| x["queue_depth"].as_u64().unwrap_or(0))
}

fn summary_of(out: &str) -> serde_json::Value {
    serde_json::from_str(out.lines().last().expect("a summary line")).expect("JSON summary")
}

#[test]
fn messages_both_ways_and_requests_with_their_trace() {
    let h = Hosts::new("bridge-both-ways");
    let mut ba = h.bridge_a(&[]);
    let bb = h.bridge_b(&[], &["users", "sensors"]);
    ba.wait_line("shmbus-bridge: linked alerts", Duration::from_secs(20));

    // B → A: typed messages in order, none flagged redelivered.
    let mut sensors = peer(&h.a, &["sub", "subsystem=sensors", "count=2000", "timeout_ms=30000"]);
    sensors.wait_line("subscribed", Duration::from_secs(10));
    run_peer(&h.b, &["pub", "path=sensors://imu/0", "publisher=1", "count=2000"]);
    let (st, out, err) = sensors.wait(Duration::from_secs(30));
    assert!(st.success(), "A's subscriber: {err}");
    let s = summary_of(&out);
    assert_eq!(
        (s["received"].as_u64(), s["out_of_order"].as_u64(), s["redelivered"].as_u64()),
        (Some(2000), Some(0), Some(0))
    );

    // A one-way message keeps its trace id, and reads as from another host.
    let mut traced = peer(&h.a, &["traces", "subsystem=sensors", "count=1"]);
    traced.wait_line("subscribed", Duration::from_secs(10));
    run_peer(&h.b, &["pub", "path=sensors://imu/9", "publisher=3", "count=1", "trace=123456789"]);
    let (st, tout, _) = traced.wait(Duration::from_secs(10));
    assert!(st.success());
    assert!(tout.contains("trace sensors://imu/9 123456789 1"), "{tout}");

    // A → B.
    let mut alerts = peer(&h.b, &["sub", "subsystem=alerts", "count=300", "timeout_ms=30000"]);
    alerts.wait_line("subscribed", Duration::from_secs(10));
    run_peer(&h.a, &["pub", "path=alerts://disk/full", "publisher=2", "count=300"]);
    let (st, out, err) = alerts.wait(Duration::from_secs(30));
    assert!(st.success(), "B's subscriber: {err}");
    assert_eq!(summary_of(&out)["received"].as_u64(), Some(300));

    // B's requests to A's router: the parameter route, typed both ways.
    let mut service = peer(&h.a, &["serve", "subsystem=users", "workers=2"]);
    service.wait_line("serving", Duration::from_secs(10));
    let out = run_peer(&h.b, &["req", "path=users://users/42", "seq=7"]);
    let f: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(&f[..3], ["ok", "42", "8"], "{out}");
    // The handler's errors arrive as the same variants.
    assert!(run_peer(&h.b, &["req", "path=users://fail"]).starts_with("err Handler: the handler failed: nope"));
    assert!(run_peer(&h.b, &["req", "path=users://no/such/route"]).starts_with("err NoRoute"));
    // A route Zenoh cannot carry is refused at once, with the reason.
    let out = run_peer(&h.b, &["req", "path=users://a//b"]);
    assert!(out.starts_with("err Unreachable") && out.contains("empty chunk"), "{out}");

    // The trace id crosses: B's request → A's handler, which sends on with
    // it (to `traced` on A) → the reply back on B.
    let mut traced = peer(&h.a, &["traces", "subsystem=traced", "count=1"]);
    traced.wait_line("subscribed", Duration::from_secs(10));
    let out = run_peer(&h.b, &["req", "path=users://forward/x"]);
    let f: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(&f[..3], ["ok", "raw", "9"], "{out}"); // "forwarded"
    let (st, tout, _) = traced.wait(Duration::from_secs(10));
    assert!(st.success());
    let seen: Vec<&str> =
        tout.lines().find(|l| l.starts_with("trace ")).expect("a traced message").split(' ').collect();
    assert_eq!(seen[1], "traced://from-handler");
    assert_eq!(seen[2], f[3], "the trace id on A differs from the one B's reply carries");

    drop(service);
    for p in [&h.a, &h.b] {
        assert_slots_back(p);
    }
    ba.signal(Signal::SIGTERM);
    bb.signal(Signal::SIGTERM);
    let (st, out, err) = ba.wait(Duration::from_secs(20));
    assert!(st.success(), "A's bridge did not stop cleanly: {err}");
    assert!(out.contains(" received=2001 "), "{out}");
    let (st, out, err) = bb.wait(Duration::from_secs(20));
    assert!(st.success(), "B's bridge did not stop cleanly: {err}");
    assert!(out.contains(" sent=2001 ") && out.contains(" received=300 "), "{out}");
}

#[test]
fn a_cut_link_fails_requests_at_once_and_heals_by_itself() {
    let h = Hosts::new("bridge-faults");
    let ba = h.bridge_a(&[]);
    let mut bb = h.bridge_b(&[], &["users", "sensors"]);
    let mut service = peer(&h.a, &["serve", "subsystem=users", "workers=2"]);
    service.wait_line("serving", Duration::from_secs(10));
    assert!(run_peer(&h.b, &["req", "path=users://users/1"]).starts_with("ok 1 1 "));

    // A requester on B waits for a slow handler on A; A's bridge is killed
    // meanwhile: the requester gets a typed error at once, well inside
    // its own 20 s.
    let waiting = peer(&h.b, &["req", "path=users://slow/10000", "timeout_ms=20000"]);
    std::thread::sleep(Duration::from_millis(1000)); // the request reaches A's handler
    ba.signal(Signal::SIGKILL);
    let killed = std::time::Instant::now();
    drop(ba);
    let (st, out, err) = waiting.wait(Duration::from_secs(20));
    let took = killed.elapsed();
    assert!(st.success(), "{err}");
    assert!(out.starts_with("err Unreachable"), "{out}");
    // Well before the handler's 10 s: the requester heard of the loss, not
    // of a late reply (nor of its own timeout).
    assert!(took < Duration::from_secs(5), "the link loss took {took:?} to reach the requester: {out}");
    bb.wait_lines(&["shmbus-bridge: unlinked users", "shmbus-bridge: unlinked sensors"], Duration::from_secs(20));

    // While no host exports `users`, a request fails at once; a one-way
    // message is dropped and counted (the default policy).
    let out = run_peer(&h.b, &["req", "path=users://users/2"]);
    assert!(out.starts_with("err Unreachable") && out.contains("no host exports users"), "{out}");
    run_peer(&h.b, &["pub", "path=sensors://imu/0", "publisher=1", "count=5"]);
    std::thread::sleep(Duration::from_millis(500)); // a stats line with them

    // A's bridge held slots when it was killed: A's daemon took them back.
    assert_slots_back(&h.a);

    // A new bridge on A: B's links again by itself.
    let ba = h.bridge_a(&[]);
    bb.wait_lines(&["shmbus-bridge: linked users", "shmbus-bridge: linked sensors"], Duration::from_secs(30));
    assert!(run_peer(&h.b, &["req", "path=users://users/3"]).starts_with("ok 3 1 "));

    // B's bridge killed (its cached slots and its reply publisher's with
    // it): B's daemon takes every slot back, and a new bridge on B
    // carries on.
    let mut sensors = peer(&h.a, &["sub", "subsystem=sensors", "count=100", "timeout_ms=30000"]);
    sensors.wait_line("subscribed", Duration::from_secs(10));
    bb.signal(Signal::SIGKILL);
    let (_, out, err) = bb.wait(Duration::from_secs(10));
    assert!(!out.contains("shmbus-bridge: stopped"));
    assert!(err.contains(" dropped_no_link=5 "), "the 5 messages sent while unlinked were not counted: {err}");
    assert_slots_back(&h.b);
    let bb = h.bridge_b(&["--on-link-loss", "block"], &["users", "sensors"]);
    run_peer(&h.b, &["pub", "path=sensors://imu/0", "publisher=1", "count=100"]);
    let (st, out, err) = sensors.wait(Duration::from_secs(30));
    assert!(st.success(), "A's subscriber: {err}");
    assert_eq!(summary_of(&out)["received"].as_u64(), Some(100));
    drop(service);

    // With `--on-link-loss block`, messages sent while A's bridge is gone
    // wait on B, held by B's bridge. Killed with them, it loses none: B's
    // daemon puts them back (flagged redelivered), and the next bridge
    // sends them once A's is back. A's receiver sees them flagged, as on B.
    ba.signal(Signal::SIGTERM);
    let (st, _, err) = ba.wait(Duration::from_secs(20));
    assert!(st.success(), "{err}");
    let mut bb = bb;
    bb.wait_lines(&["shmbus-bridge: unlinked sensors", "shmbus-bridge: unlinked users"], Duration::from_secs(20));
    run_peer(&h.b, &["pub", "path=sensors://imu/0", "publisher=1", "count=50"]);
    // Requests still fail at once while messages wait.
    let out = run_peer(&h.b, &["req", "path=users://users/4"]);
    assert!(out.starts_with("err Unreachable") && out.contains("no host exports users"), "{out}");
    bb.signal(Signal::SIGKILL);
    bb.wait(Duration::from_secs(10));
    let bb = h.bridge_b(&["--on-link-loss", "block"], &[]);
    let mut sensors = peer(&h.a, &["sub", "subsystem=sensors", "count=50", "timeout_ms=30000", "record=1"]);
    sensors.wait_line("subscribed", Duration::from_secs(10));
    let ba = h.bridge_a(&[]);
    let (st, out, err) = sensors.wait(Duration::from_secs(30));
    assert!(st.success(), "A's subscriber after the link came back: {err}");
    // Every one of the 50 (redelivery does not keep their order).
    let seqs: std::collections::BTreeSet<u64> = out.lines().filter_map(|l| l.split(" ").nth(1)?.parse().ok()).collect();
    assert_eq!(seqs, (0..50).collect(), "{out}");
    let s = summary_of(&out);
    assert!(s["redelivered"].as_u64() > Some(0), "the messages B's killed bridge held are not flagged: {out}");

    for b in [ba, bb] {
        b.signal(Signal::SIGTERM);
        let (st, _, err) = b.wait(Duration::from_secs(20));
        assert!(st.success(), "{err}");
    }
    for p in [&h.a, &h.b] {
        assert_slots_back(p);
    }
}

#[test]
fn far_errors_keep_their_variant_a_far_timeout_is_a_timeout_and_no_service_is_no_subscriber() {
    let h = Hosts::new("bridge-far-errors");
    let l = h.listen();
    let ba = bridge(&h.a, &["--listen", &l, "--export", "users", "--request-timeout", "1s"], &[]);
    let mut bb = bridge(&h.b, &["--connect", &l, "--import", "users", "--request-timeout", "1s"], &["users"]);
    // Nothing serves `users` on A: the same error as on one host.
    let out = run_peer(&h.b, &["req", "path=users://users/1"]);
    assert!(out.starts_with("err Send: the request was not sent: no subscriber for subsystem \"users\""), "{out}");
    // A's service takes the request but does not answer within the
    // bridges' 1 s: `Timeout` (it may have run), not `Unreachable`.
    let mut service = peer(&h.a, &["serve", "subsystem=users", "workers=1"]);
    service.wait_line("serving", Duration::from_secs(10));
    let out = run_peer(&h.b, &["req", "path=users://slow/3000", "timeout_ms=20000"]);
    assert!(out.starts_with("err Timeout: no reply within 1s"), "{out}");
    let took: u64 = out.split(" in ").nth(1).and_then(|t| t.trim_end_matches(" ms\n").parse().ok()).unwrap();
    assert!((900..2900).contains(&took), "{out}");
    assert!(bb.saw_err_line(Duration::from_secs(5), |l| l.contains(" timed_out=1 ")), "not counted");
    drop(service);
    for b in [ba, bb] {
        b.signal(Signal::SIGTERM);
        let (st, _, err) = b.wait(Duration::from_secs(20));
        assert!(st.success(), "{err}");
    }
}

#[test]
fn dropped_messages_are_counted() {
    let h = Hosts::new("bridge-drops");
    let bb = h.bridge_b(&[], &[]); // no host A: nothing is linked
    run_peer(&h.b, &["pub", "path=sensors://imu/0", "publisher=1", "count=40"]);
    let out = run_peer(&h.b, &["req", "path=users://users/1"]);
    assert!(out.starts_with("err Unreachable"), "{out}");
    let drained = || queue_depth(&h.b, "sensors") == 0;
    assert!(eventually(Duration::from_secs(10), drained).is_some(), "the bridge did not take the messages");
    bb.signal(Signal::SIGTERM);
    let (st, out, err) = bb.wait(Duration::from_secs(20));
    assert!(st.success(), "{err}");
    assert!(out.contains(" dropped_no_link=40 ") && out.contains(" unreachable=1 "), "{out}");
    assert_slots_back(&h.b);
}

/// A bridge started before the host that exports its subsystems prints
/// nothing about them until the link comes up (`unlinked S` is for a link
/// lost, and a script that waits for "linked S" in the output must not
/// find it inside "unlinked S"); what is sent right after `linked S`
/// arrives, and a clean stop logs no error.
#[test]
fn a_bridge_started_first_announces_only_the_link_coming_up() {
    let h = Hosts::new("bridge-first");
    let mut bb = h.bridge_b(&[], &[]);
    let mut sensors = peer(&h.a, &["sub", "subsystem=sensors", "count=200", "timeout_ms=30000"]);
    sensors.wait_line("subscribed", Duration::from_secs(10));
    let ba = h.bridge_a(&[]);
    bb.wait_line("shmbus-bridge: linked sensors", Duration::from_secs(20));
    run_peer(&h.b, &["pub", "path=sensors://imu/0", "publisher=1", "count=200"]);
    let (st, out, err) = sensors.wait(Duration::from_secs(30));
    assert!(st.success(), "A's subscriber: {err}");
    assert_eq!(summary_of(&out)["received"].as_u64(), Some(200));
    bb.signal(Signal::SIGTERM);
    let (st, out, err) = bb.wait(Duration::from_secs(20));
    assert!(st.success(), "{err}");
    assert!(!out.contains("unlinked"), "B's bridge reported a link lost that it never had:\n{out}");
    assert!(out.contains(" sent=200 ") && out.contains(" dropped_no_link=0 "), "{out}");
    assert!(!err.contains("ERROR"), "B's bridge logged errors on a clean stop:\n{err}");
    drop(ba);
}

/// More distinct routes than the exporting bridge caches and declares
/// (256), each sent twice: every message arrives on the far host with its
/// own path, whether its key was cached, declared, or past the cap.
#[test]
fn every_route_keeps_its_path_past_the_exporters_key_cache() {
    const ROUTES: u32 = 300;
    let h = Hosts::new("bridge-keys");
    let _ba = h.bridge_a(&[]);
    let _bb = h.bridge_b(&[], &["sensors"]);
    let a = bus_client::Bus::builder().socket(&h.a).connect().expect("a client on A");
    let sub = a.subscribe("sensors").expect("subscribe on A");
    // Read while B sends: A's 256 slots hold fewer than are sent.
    let reader = std::thread::spawn(move || -> Result<std::collections::BTreeMap<u32, u32>, String> {
        let mut seen = std::collections::BTreeMap::new();
        for n in 0..2 * ROUTES {
            let msg = sub.recv_timeout(Duration::from_secs(20)).map_err(|e| format!("after {n} messages: {e}"))?;
            let body = String::from_utf8(msg.body_bytes().unwrap().to_vec()).unwrap();
            let i = body.split(' ').nth(1).unwrap().to_owned();
            if msg.path() != format!("sensors://key/{i}") {
                return Err(format!("body {body:?} came with path {}", msg.path()));
            }
            *seen.entry(i.parse::<u32>().unwrap()).or_insert(0) += 1;
        }
        drop(a);
        Ok(seen)
    });
    let b = bus_client::Bus::builder().socket(&h.b).connect().expect("a client on B");
    let mut p = b.publisher().create().expect("publisher on B");
    for round in 0..2 {
        for i in 0..ROUTES {
            p.send_bytes(&format!("sensors://key/{i}"), format!("{round} {i}").as_bytes()).expect("send on B");
        }
    }
    // The reader's own timeouts bound this join.
    let seen = reader.join().expect("the reader panicked").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(seen.len() as u32, ROUTES);
    assert!(seen.values().all(|&k| k == 2), "{seen:?}");
}

/// A burst sent faster than Zenoh takes single samples goes out coalesced
/// (several messages per sample, `batches_sent` counts them), in runs cut
/// wherever the route changes: on the far host every message arrives once,
/// with its own path, body and trace id, in the order sent.
#[test]
fn a_coalesced_burst_keeps_every_messages_path_trace_and_order() {
    const N: u64 = 5000;
    let h = Hosts::new("bridge-coalesce");
    let _ba = h.bridge_a(&[]);
    let bb = h.bridge_b(&[], &["sensors"]);
    // Runs of 7 on three routes in turn, and every 50th message alone on a
    // fourth: runs of one, and runs cut short by a route change.
    let route = |i: u64| if i % 50 == 49 { "odd".to_owned() } else { format!("imu/{}", (i / 7) % 3) };
    let a = bus_client::Bus::builder().socket(&h.a).connect().expect("a client on A");
    let sub = a.subscribe("sensors").expect("subscribe on A");
    let reader = std::thread::spawn(move || -> Result<(), String> {
        for n in 0..N {
            let msg = sub.recv_timeout(Duration::from_secs(20)).map_err(|e| format!("after {n} messages: {e}"))?;
            let i = u64::from_le_bytes(msg.body_bytes().unwrap().try_into().map_err(|_| "a body of 8 bytes")?);
            if i != n {
                return Err(format!("message {i} came where {n} was due"));
            }
            if msg.path() != format!("sensors://{}", route(i)) || msg.trace_id() != i + 1 {
                return Err(format!("message {i} came as {} with trace {}", msg.path(), msg.trace_id()));
            }
        }
        drop(a);
        Ok(())
    });
    let b = bus_client::Bus::builder().socket(&h.b).connect().expect("a client on B");
    let mut p = b.publisher().create().expect("publisher on B");
    for i in 0..N {
        let loan = p.loan(&format!("sensors://{}", route(i))).expect("a loan on B");
        loan.write_bytes(&i.to_le_bytes()).unwrap().trace_id(i + 1).send().expect("send on B");
    }
    // The reader's own timeouts bound this join.
    reader.join().expect("the reader panicked").unwrap_or_else(|e| panic!("{e}"));
    bb.signal(Signal::SIGTERM);
    let (st, out, err) = bb.wait(Duration::from_secs(20));
    assert!(st.success(), "{err}");
    let counter =
        |name: &str| out.split_whitespace().find_map(|w| w.strip_prefix(name)?.strip_prefix('=')?.parse::<u64>().ok());
    assert_eq!(counter("sent"), Some(N), "{out}");
    assert!(counter("batches_sent").is_some_and(|b| b > 0), "nothing was coalesced:\n{out}");
    assert_slots_back(&h.b);
}

/// A counter from a bridge's final summary line.
fn counter(out: &str, name: &str) -> Option<u64> {
    out.split_whitespace().find_map(|w| w.strip_prefix(name)?.strip_prefix('=')?.parse::<u64>().ok())
}

/// A request queued in the middle of a burst of one-way messages to the
/// same subsystem (B's bridge stopped while they queue, so that it takes
/// them together) cuts the run it falls in: it is answered, every message
/// of the burst arrives as well, and the rest went out coalesced (one
/// route: runs are per key).
#[test]
fn a_request_inside_a_burst_is_answered_and_the_burst_arrives_whole() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    const N: u64 = 200; // within B's 256 slots while its bridge is stopped
    let h = Hosts::new("bridge-burst-request");
    let _ba = h.bridge_a(&[]);
    let bb = h.bridge_b(&[], &["users"]);
    let a = bus_client::Bus::builder().socket(&h.a).connect().expect("a client on A");
    let seen = Arc::new(AtomicU64::new(0));
    let (s1, s2) = (seen.clone(), seen.clone());
    let router = bus_client::Router::new("users")
        .unwrap()
        .route("log", move |_| {
            s1.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
        .unwrap()
        .route("count", move |ctx| Ok(ctx.reply_bytes(&s2.load(Ordering::Relaxed).to_le_bytes())?))
        .unwrap();
    let service = a.serve(router).workers(1).start().expect("serve on A");
    let b = bus_client::Bus::builder().socket(&h.b).connect().expect("a client on B");
    let mut p = b.publisher().create().expect("publisher on B");
    let depth = || queue_depth(&h.b, "users");
    bb.signal(Signal::SIGSTOP);
    // Stopped for sure (a signal is delivered on the way back to user
    // space): then nothing takes from the queue while it fills.
    let stopped = || {
        std::fs::read_to_string(format!("/proc/{}/stat", bb.pid()))
            .is_ok_and(|st| st.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('T')))
    };
    assert!(eventually(Duration::from_secs(10), stopped).is_some(), "B's bridge did not stop");
    let base = depth();
    for i in 0..N / 2 {
        p.send_bytes("users://log", &i.to_le_bytes()).expect("send on B");
    }
    let asker = {
        let b = b.clone();
        std::thread::spawn(move || {
            let requester = b.requester().map_err(|e| e.to_string())?;
            let reply =
                requester.request_bytes("users://count", b"", Duration::from_secs(20)).map_err(|e| e.to_string())?;
            Ok::<_, String>(u64::from_le_bytes(reply.body_bytes().unwrap().try_into().expect("8 bytes")))
        })
    };
    let queued = eventually(Duration::from_secs(10), || depth() == base + N / 2 + 1);
    for i in N / 2..N {
        p.send_bytes("users://log", &i.to_le_bytes()).expect("send on B");
    }
    bb.signal(Signal::SIGCONT);
    assert!(queued.is_some(), "the request was not queued behind the first half (depth {})", depth());
    // The request's own timeout bounds this join.
    let answered = asker.join().expect("the requester panicked");
    // Requests go at a higher priority than data (and through another
    // thread on A), so the count says nothing about the order on B.
    assert!(answered.as_ref().is_ok_and(|&n| n <= N), "{answered:?}");
    let all = eventually(Duration::from_secs(20), || seen.load(Ordering::Relaxed) == N);
    assert!(all.is_some(), "{} of {N} messages arrived", seen.load(Ordering::Relaxed));
    bb.signal(Signal::SIGTERM);
    let (st, out, err) = bb.wait(Duration::from_secs(20));
    assert!(st.success(), "{err}");
    assert_eq!((counter(&out, "sent"), counter(&out, "requests_sent")), (Some(N), Some(1)), "{out}");
    assert!(counter(&out, "batches_sent").is_some_and(|n| n > 0), "nothing was coalesced:\n{out}");
    drop(service);
    drop(p);
    assert_slots_back(&h.b);
}

/// The far host's bus has no room for a burst (256 slots, its reader
/// stopped): each batch's sends share one `local-timeout`, the messages
/// that found no room are dropped and counted, none is delivered twice or
/// out of order, no slot is lost, and A's bridge carries what follows (to
/// a bridge started again on B).
#[test]
fn a_batch_meeting_a_full_bus_drops_the_rest_counted_and_leaks_nothing() {
    const N: u64 = 600;
    let h = Hosts::new("bridge-full");
    let l = h.listen();
    let mut ba = bridge(&h.a, &["--listen", &l, "--export", "users", "sensors", "--local-timeout", "300ms"], &[]);
    let bb = h.bridge_b(&[], &["sensors"]);
    let a = bus_client::Bus::builder().socket(&h.a).connect().expect("a client on A");
    let sub = a.subscribe("sensors").expect("subscribe on A"); // not read yet
    let b = bus_client::Bus::builder().socket(&h.b).connect().expect("a client on B");
    let mut p = b.publisher().create().expect("publisher on B");
    for i in 0..N {
        p.send_bytes("sensors://imu/0", &i.to_le_bytes()).expect("send on B");
    }
    let taken = || queue_depth(&h.b, "sensors") == 0;
    assert!(eventually(Duration::from_secs(60), taken).is_some(), "B's bridge did not take the burst");
    bb.signal(Signal::SIGTERM);
    let (st, out, err) = bb.wait(Duration::from_secs(60));
    assert!(st.success(), "{err}");
    assert_eq!(counter(&out, "sent"), Some(N), "{out}");
    // Once A's bridge has delivered or dropped every message (its counters,
    // logged every 200 ms), read what A took, in order.
    let done = |l: &str| counter(l, "received").unwrap_or(0) + counter(l, "dropped_local").unwrap_or(0) >= N;
    assert!(ba.saw_err_line(Duration::from_secs(120), done), "A's bridge did not account for the burst");
    let mut got = Vec::new();
    while let Ok(m) = sub.recv_timeout(Duration::from_secs(3)) {
        got.push(u64::from_le_bytes(m.body_bytes().unwrap().try_into().expect("8 bytes")));
    }
    assert!(got.windows(2).all(|w| w[0] < w[1]), "out of order or twice: {got:?}");
    assert!(!got.is_empty() && (got.len() as u64) < N, "{} of {N} delivered", got.len());
    // A's bridge still carries what comes next.
    let bb = h.bridge_b(&[], &["sensors"]);
    p.send_bytes("sensors://imu/0", &N.to_le_bytes()).expect("send on B");
    let m = sub.recv_timeout(Duration::from_secs(20)).expect("the message after the burst");
    assert_eq!(m.body_bytes().unwrap(), N.to_le_bytes());
    drop(m);
    ba.signal(Signal::SIGTERM);
    let (st, out, err) = ba.wait(Duration::from_secs(20));
    assert!(st.success(), "{err}");
    let (received, dropped) = (counter(&out, "received"), counter(&out, "dropped_local"));
    assert_eq!(received, Some(got.len() as u64 + 1), "{out}");
    assert_eq!(received.unwrap() + dropped.unwrap_or(0), N + 1, "{out}");
    drop(bb);
    drop(sub);
    drop(a);
    assert_slots_back(&h.a);
}

/// What a plain Zenoh program (not a bridge) puts to an exported key:
/// a sample without the bridge's attachment arrives as a raw message, a
/// well-formed batch as its messages, and a batch whose attachment or
/// frames cannot be right is dropped whole and counted, delivering none
/// of it.
#[test]
fn a_plain_zenoh_peer_gets_raw_messages_through_and_bad_batches_dropped_whole() {
    use bus_bridge::wire::{self, Meta};
    use zenoh::Wait;
    let h = Hosts::new("bridge-plain-zenoh");
    let ba = h.bridge_a(&[]);
    let a = bus_client::Bus::builder().socket(&h.a).connect().expect("a client on A");
    let sub = a.subscribe("sensors").expect("subscribe on A");
    let cfg = bus_bridge::config::Config { connect: vec![h.listen()], scouting: false, ..Default::default() };
    let z = zenoh::open(bus_bridge::zenoh_config(&cfg).expect("a Zenoh config")).wait().expect("a Zenoh session");
    let zp = z.declare_publisher("shmbus/sensors/imu/0").wait().expect("a Zenoh publisher");
    let matched = eventually(Duration::from_secs(20), || zp.matching_status().wait().is_ok_and(|m| m.matching()));
    assert!(matched.is_some(), "A's bridge never subscribed");
    let frame = |payload: &mut Vec<u8>, trace: u64, body: &[u8]| {
        let envelope = bus_client::Envelope { raw: true, trace_id: trace, ..Default::default() };
        wire::push_frame(payload, &Meta { envelope, id: 0, error: None }, body)
    };
    // A count that does not match the frames.
    let mut short = Vec::new();
    frame(&mut short, 1, b"lost 1");
    frame(&mut short, 2, b"lost 2");
    zp.put(short.clone()).attachment(wire::encode_batch(3).to_vec()).wait().unwrap();
    // A frame longer than what is left of the payload.
    let mut cut = short.clone();
    cut.truncate(short.len() - 1);
    zp.put(cut).attachment(wire::encode_batch(2).to_vec()).wait().unwrap();
    // A batch attachment with bytes that must be zero set.
    let mut att = wire::encode_batch(2);
    att[20] = 1;
    zp.put(short).attachment(att.to_vec()).wait().unwrap();
    // A good batch, then a sample with no attachment at all.
    let mut good = Vec::new();
    frame(&mut good, 11, b"first");
    frame(&mut good, 12, b"second");
    zp.put(good).attachment(wire::encode_batch(2).to_vec()).wait().unwrap();
    zp.put(b"plain".to_vec()).wait().unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        let m = sub.recv_timeout(Duration::from_secs(20)).expect("a message from the Zenoh peer");
        assert!(m.is_raw() && m.path() == "sensors://imu/0", "{m:?}");
        got.push((m.body_bytes().unwrap().to_vec(), m.trace_id()));
    }
    let bodies: Vec<&[u8]> = got.iter().map(|(b, _)| b.as_slice()).collect();
    assert_eq!(bodies, [&b"first"[..], b"second", b"plain"]);
    // A batch's frames keep their trace ids; the plain sample starts one.
    assert_eq!((got[0].1, got[1].1), (11, 12));
    assert!(got[2].1 != 0 && got[2].1 != 12, "{got:?}");
    assert!(matches!(sub.recv_timeout(Duration::from_millis(500)), Err(bus_client::RecvError::Timeout(_))));
    ba.signal(Signal::SIGTERM);
    let (st, out, err) = ba.wait(Duration::from_secs(20));
    assert!(st.success(), "{err}");
    assert_eq!((counter(&out, "received"), counter(&out, "unbridgeable")), (Some(3), Some(3)), "{out}");
    drop(zp);
    let _ = z.close().wait();
    drop(sub);
    drop(a);
    assert_slots_back(&h.a);
}
