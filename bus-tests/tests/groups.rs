//! Consumer groups across real processes: every group gets every message,
//! each message goes to one subscriber within a group, a stopped tap slows
//! nobody, a killed receiver's message goes back to its own group only, and
//! the CLI's `listen --group` / `--tap` and `status` show the groups.

mod common;
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// `(publisher, seq) -> (receipts, flagged receipts)`.
type Receipts = BTreeMap<(u32, u64), (u32, u32)>;

/// The [`Receipts`] in `sub record=1` output.
fn receipts(out: &str) -> Receipts {
    let mut r = Receipts::new();
    for l in out.lines().filter(|l| !l.starts_with('{') && *l != "subscribed") {
        let f: Vec<&str> = l.split(' ').collect();
        let e = r.entry((f[0].parse().unwrap(), f[1].parse().unwrap())).or_default();
        e.0 += 1;
        e.1 += (f.get(2) == Some(&"1")) as u32;
    }
    r
}

fn subsystem<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["subsystems"].as_array().unwrap().iter().find(|x| x["name"] == name).expect("the subsystem in status")
}

fn group<'a>(sub: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    sub["groups"].as_array().unwrap().iter().find(|g| g["name"] == name).expect("the group in status")
}

#[test]
fn three_groups_of_two_subscriber_processes_each_get_every_message_of_three_publishers() {
    let bus = TestBus::start(&["--slots", "1024", "--slot-size", "256", "--queue-capacity", "256"]);
    let groups = ["default", "logger", "recorder"];
    let n = 5_000u64;
    let mut subs = Vec::new();
    for g in groups {
        for _ in 0..2 {
            let group = format!("group={g}");
            let mut p =
                bus.peer(&["sub", "subsystem=sensors", &group, "until_idle_ms=2000", "record=1", "timeout_ms=90000"]);
            p.wait_line("subscribed", Duration::from_secs(10));
            subs.push((g, p));
        }
    }
    let s = bus.status();
    for g in groups {
        assert_eq!(group(subsystem(&s, "sensors"), g)["subscribers"], 2, "{s}");
    }
    let pubs: Vec<Proc> = (0..3)
        .map(|p| bus.peer(&["pub", "path=sensors://temp", &format!("publisher={p}"), &format!("count={n}")]))
        .collect();
    for p in pubs {
        let (st, out, err) = p.wait(Duration::from_secs(90));
        assert!(st.success(), "publisher failed: {err}");
        assert_eq!(out.trim(), format!("sent {n}"));
    }
    let mut per_group: BTreeMap<&str, Vec<Receipts>> = BTreeMap::new();
    for (g, p) in subs {
        let (st, out, err) = p.wait(Duration::from_secs(90));
        assert!(st.success(), "subscriber of {g} failed: {err}");
        per_group.entry(g).or_default().push(receipts(&out));
    }
    for (g, members) in &per_group {
        let (a, b) = (&members[0], &members[1]);
        assert!(!a.is_empty() && !b.is_empty(), "group {g}: one member got nothing ({} / {})", a.len(), b.len());
        let both: BTreeSet<_> = a.keys().filter(|k| b.contains_key(k)).collect();
        assert!(both.is_empty(), "group {g}: {} messages went to both members", both.len());
        assert_eq!(a.len() + b.len(), 3 * n as usize, "group {g}: messages lost");
        assert!(a.values().chain(b.values()).all(|&(all, _)| all == 1), "group {g}: duplicates without a crash");
    }
    let s = bus.status();
    let x = subsystem(&s, "sensors");
    assert_eq!(x["sent"], 3 * n, "{x}");
    for g in groups {
        assert_eq!(group(x, g)["delivered"], 3 * n, "{x}");
        assert_eq!(group(x, g)["dropped"], 0, "{x}");
    }
    assert_eq!(s["slots"]["free"], s["slots"]["total"], "every slot freed once every group released it");
}

#[test]
fn a_stopped_tap_slows_nobody_and_counts_its_drops() {
    let bus = TestBus::start(&["--slots", "256", "--slot-size", "256", "--queue-capacity", "64"]);
    let n = 20_000u64;
    let mut main = bus.peer(&["sub", "subsystem=feed", &format!("count={n}"), "timeout_ms=60000"]);
    main.wait_line("subscribed", Duration::from_secs(10));
    let mut tap = bus.peer(&["sub", "subsystem=feed", "tap=1", "timeout_ms=60000"]);
    tap.wait_line("subscribed", Duration::from_secs(10));
    tap.signal(nix::sys::signal::Signal::SIGSTOP);
    // A short send timeout: a publisher that waited for the tap would fail.
    let (st, out, err) = bus
        .peer(&["pub", "path=feed://x", "publisher=1", &format!("count={n}"), "send_timeout_ms=2000"])
        .wait(Duration::from_secs(60));
    assert!(st.success(), "the publisher was held up by the stopped tap: {err}");
    assert_eq!(out.trim(), format!("sent {n}"));
    let (st, out, err) = main.wait(Duration::from_secs(60));
    assert!(st.success(), "{err}");
    assert_eq!(summary(&out)["received"], n);
    let s = bus.status();
    let x = subsystem(&s, "feed");
    let taps: Vec<_> = x["groups"].as_array().unwrap().iter().filter(|g| g["tap"] == true).collect();
    assert_eq!(taps.len(), 1, "{x}");
    assert_eq!(taps[0]["backpressure"], "lossy");
    assert_eq!(taps[0]["depth"], 64, "its queue is full");
    assert_eq!(taps[0]["dropped"], n - 64, "{x}");
    // The tap leaves: its group disappears and its slots are freed.
    tap.signal(nix::sys::signal::Signal::SIGKILL);
    let gone = eventually(Duration::from_secs(10), || {
        let s = bus.status();
        subsystem(&s, "feed")["groups"].as_array().unwrap().len() == 1 && s["slots"]["free"] == s["slots"]["total"]
    });
    assert!(gone.is_some(), "the tap's group and slots outlived it: {}", bus.status());
}

#[test]
fn a_receiver_killed_holding_a_message_gives_it_back_to_its_own_group_only() {
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256"]);
    let mut holder = bus.peer(&["hold", "subsystem=jobs", "group=a", "path=jobs://x", "hold=1"]);
    let mut other = bus.peer(&["sub", "subsystem=jobs", "group=b", "count=1", "record=1", "timeout_ms=20000"]);
    other.wait_line("subscribed", Duration::from_secs(10));
    assert!(eventually(Duration::from_secs(10), || group(subsystem(&bus.status(), "jobs"), "a")["subscribers"] == 1)
        .is_some());
    let (st, _, err) = bus.peer(&["pub", "path=jobs://x", "publisher=3", "count=1"]).wait(Duration::from_secs(20));
    assert!(st.success(), "{err}");
    holder.wait_line("holding", Duration::from_secs(20));
    let (st, out, err) = other.wait(Duration::from_secs(20));
    assert!(st.success(), "{err}");
    assert_eq!(receipts(&out)[&(3, 0)], (1, 0), "group b got it once, unflagged");
    holder.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = holder.wait(Duration::from_secs(10));
    let (st, out, err) = bus
        .peer(&["sub", "subsystem=jobs", "group=a", "count=1", "record=1", "timeout_ms=20000"])
        .wait(Duration::from_secs(30));
    assert!(st.success(), "{err}");
    assert_eq!(receipts(&out)[&(3, 0)], (1, 1), "group a gets it back, flagged redelivered");
    let s = bus.status();
    let x = subsystem(&s, "jobs");
    assert_eq!(group(x, "a")["redelivered"], 1, "{x}");
    assert_eq!(group(x, "b")["redelivered"], 0, "{x}");
    assert_eq!(group(x, "b")["depth"], 0, "group b is not sent it again: {x}");
}

#[test]
fn the_cli_listens_in_a_group_and_through_a_tap_and_status_lists_the_groups() {
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256"]);
    std::thread::scope(|s| {
        let g = s.spawn(|| bus.cli(&["listen", "sensors", "--group", "logger", "--count", "2", "--timeout", "20s"]));
        let t = s.spawn(|| bus.cli(&["listen", "sensors", "--tap", "--count", "2", "--timeout", "20s"]));
        eventually(Duration::from_secs(10), || {
            let s = bus.status();
            let found = s["subsystems"].as_array().unwrap().iter().find(|x| x["name"] == "sensors").cloned();
            found.is_some_and(|x| x["groups"].as_array().is_some_and(|g| g.len() == 3))
        })
        .expect("both listeners subscribed");
        let (st, out, _) = bus.cli(&["status"]);
        assert!(st.success());
        assert!(out.contains("group logger") && out.contains("tap"), "{out}");
        for body in ["one", "two"] {
            let (st, _, err) = bus.cli(&["send", "sensors://t", body]);
            assert!(st.success(), "{err}");
        }
        for h in [g, t] {
            let (st, out, err) = h.join().unwrap();
            assert!(st.success(), "{err}");
            assert_eq!(out, "sensors://t\tone\nsensors://t\ttwo\n");
        }
    });
    // The tap left with its listener; the logger group stays (empty).
    let left = eventually(Duration::from_secs(10), || {
        let s = bus.status();
        let names: Vec<String> = subsystem(&s, "sensors")["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].as_str().unwrap().to_owned())
            .collect();
        names == ["default", "logger"]
    });
    assert!(left.is_some(), "{}", bus.status());
    // With no subscriber left, nothing receives: sending is an error.
    let (st, _, err) = bus.cli(&["send", "sensors://t", "three"]);
    assert!(!st.success() && err.contains("no subscriber"), "{err}");
}

#[test]
fn group_limits_and_kinds_are_typed_errors() {
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256", "--max-groups", "2"]);
    let b = bus.connect();
    let _a = b.subscribe_group("s", "a").unwrap();
    let e = b.subscribe_group("s", "b").unwrap_err();
    assert!(
        matches!(&e, bus_client::RequestError::Daemon { kind: bus_client::protocol::ErrorKind::TooManyGroups, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("max-groups"), "{e}");
    let e = b.subscription("s").group("a").lossy(true).create().unwrap_err();
    assert!(
        matches!(&e, bus_client::RequestError::Daemon { kind: bus_client::protocol::ErrorKind::GroupMismatch, .. }),
        "{e}"
    );
    // The default group is blocking: asking for it lossy is refused, not
    // quietly granted as blocking.
    for default in [None, Some("default")] {
        let mut s = b.subscription("s").lossy(true);
        if let Some(g) = default {
            s = s.group(g);
        }
        let Err(e) = s.create() else { panic!("a lossy default group") };
        assert!(
            matches!(&e, bus_client::RequestError::Daemon { kind: bus_client::protocol::ErrorKind::GroupMismatch, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("default group of \"s\" is blocking"), "{e}");
    }
    assert!(matches!(b.subscribe_group("s", "Bad Name"), Err(bus_client::RequestError::InvalidName(_))));
    let e = b.subscribe_group("s", "tap.1.1").unwrap_err();
    assert!(e.to_string().contains("reserved"), "{e}");
    // The default group is the one named "default".
    let d = b.subscribe_group("s", "default").unwrap();
    assert_eq!(d.group(), "default");
}

#[test]
fn a_group_whose_subscribers_left_gives_its_place_to_a_new_one_once_empty() {
    // Room for the default group and two more.
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256", "--max-groups", "3"]);
    let b = bus.connect();
    let mut p = b.publisher().create().unwrap();
    let g1 = b.subscribe_group("s", "g1").unwrap();
    p.send_bytes("s://x", b"kept").unwrap();
    drop(g1); // leaves its message queued for g1's next subscriber
    drop(b.subscribe_group("s", "g2").unwrap()); // leaves nothing
    let start = std::time::Instant::now();
    let mut g3 = None;
    eventually(Duration::from_secs(10), || {
        g3 = b.subscribe_group("s", "g3").ok();
        g3.is_some()
    })
    .expect("g3 takes the place of g2");
    assert!(start.elapsed() >= Duration::from_millis(900), "not before g2 was idle for a second");
    let s = bus.status();
    let names: Vec<&str> =
        subsystem(&s, "s")["groups"].as_array().unwrap().iter().map(|g| g["name"].as_str().unwrap()).collect();
    assert_eq!(names.iter().filter(|n| ["g1", "g2", "g3"].contains(n)).count(), 2, "{s}");
    assert!(names.contains(&"g1") && names.contains(&"g3"), "{s}");
    // g1 still holds its message, and its place: no fourth group.
    let e = b.subscribe_group("s", "g4").unwrap_err();
    assert!(e.to_string().contains("max-groups"), "{e}");
    let g1 = b.subscribe_group("s", "g1").unwrap();
    assert_eq!(g1.recv_timeout(Duration::from_secs(5)).unwrap().body_bytes().unwrap(), b"kept");
    drop(g3);
}

#[test]
fn a_durable_group_from_the_config_receives_while_nobody_subscribes() {
    let dir = TempDir::new("groups-config");
    let cfg = dir.0.join("bus.toml");
    std::fs::write(&cfg, "slots = 64\nslot-size = 256\n[[group]]\nsubsystem = \"audit\"\nname = \"archive\"\n")
        .unwrap();
    let bus = TestBus::start(&["--config", cfg.to_str().unwrap()]);
    let (st, out, err) = bus.peer(&["pub", "path=audit://x", "publisher=1", "count=5"]).wait(Duration::from_secs(20));
    assert!(st.success(), "{err}");
    assert_eq!(out.trim(), "sent 5");
    let s = bus.status();
    let g = group(subsystem(&s, "audit"), "archive");
    assert_eq!((g["depth"].as_u64(), g["durable"].as_bool()), (Some(5), Some(true)), "{g}");
    let (st, out, err) = bus
        .peer(&["sub", "subsystem=audit", "group=archive", "count=5", "timeout_ms=20000"])
        .wait(Duration::from_secs(30));
    assert!(st.success(), "{err}");
    assert_eq!(summary(&out)["received"], 5);
}

#[test]
fn a_worker_pool_serves_a_named_group_while_a_tap_sees_every_request() {
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256"]);
    let b = bus.connect();
    let router = bus_client::Router::new("api")
        .unwrap()
        .route("echo/{*rest}", |ctx| Ok(ctx.reply_bytes(ctx.message().body_bytes()?)?))
        .unwrap();
    let service = b.serve(router).workers(2).group("workers").start().unwrap();
    let tap = b.subscription("api").tap().create().unwrap();
    let s = bus.status();
    let api = subsystem(&s, "api");
    assert_eq!(group(api, "workers")["subscribers"], 2, "{api}");
    assert_eq!(group(api, "default")["subscribers"], 0, "{api}");
    let requester = b.requester().unwrap();
    let reply = requester.request_bytes("api://echo/x", b"hi", Duration::from_secs(10)).unwrap();
    assert_eq!(reply.body_bytes().unwrap(), b"hi");
    let seen = tap.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!((seen.path(), seen.body_bytes().unwrap()), ("api://echo/x", &b"hi"[..]));
    assert!(seen.is_request());
    drop(seen);
    drop(service);
}

#[test]
fn a_loan_kept_while_a_tap_comes_and_goes_is_sent_on_the_route_of_the_moment() {
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256"]);
    let b = bus.connect();
    let main = b.subscribe("feed").unwrap();
    let tap = b.subscription("feed").tap().create().unwrap();
    let mut p = b.publisher().create().unwrap();
    let loan = p.loan("feed://x").unwrap().write_bytes(b"kept").unwrap();
    // The tap leaves, and the daemon removes its group (after a second).
    drop(tap);
    let gone = eventually(Duration::from_secs(10), || {
        subsystem(&bus.status(), "feed")["groups"].as_array().unwrap().len() == 1
    });
    assert!(gone.is_some(), "{}", bus.status());
    loan.send().unwrap();
    let m = main.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(m.body_bytes().unwrap(), b"kept");
    drop(m);
    drop(p);
    let s = bus.status();
    assert_eq!(s["slots"]["free"], s["slots"]["total"], "no slot kept by the group that left: {}", s["slots"]);
}

#[test]
fn a_group_is_never_given_its_own_subsystems_entry_when_the_table_is_full() {
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256", "--max-subsystems", "2"]);
    let b = bus.connect();
    let _t = b.subscribe("t").unwrap();
    drop(b.subscribe("s").unwrap());
    // "s" is idle long enough to be recycled by another subsystem.
    std::thread::sleep(Duration::from_millis(1300));
    let e = b.subscribe_group("s", "g").unwrap_err();
    assert!(
        matches!(&e, bus_client::RequestError::Daemon { kind: bus_client::protocol::ErrorKind::TooManySubsystems, .. }),
        "{e}"
    );
    let s = bus.status();
    assert!(s["subsystems"].as_array().unwrap().iter().any(|x| x["name"] == "s"), "{s}");
}

#[test]
fn a_send_that_reaches_some_groups_but_not_a_full_one_says_so_and_counts_the_drop() {
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256", "--queue-capacity", "4"]);
    let b = bus.connect();
    let a = b.subscribe("p").unwrap();
    let _slow = b.subscribe_group("p", "slow").unwrap(); // never reads
    let mut p = b.publisher().backpressure(bus_client::Backpressure::FailFast).create().unwrap();
    for i in 0..4u8 {
        p.send_bytes("p://x", &[i]).unwrap();
        drop(a.try_recv().unwrap().expect("the default group gets it"));
    }
    // "slow" is full: the default group still gets the fifth message.
    let e = p.send_bytes("p://x", &[4]).unwrap_err();
    assert!(matches!(&e, bus_client::SendError::PartlyDelivered { delivered: 1, groups: 2, .. }), "{e}");
    assert_eq!(a.try_recv().unwrap().expect("delivered").body_bytes().unwrap(), &[4]);
    let s = bus.status();
    assert_eq!(group(subsystem(&s, "p"), "slow")["dropped"], 1, "{s}");
}

#[test]
fn a_group_that_makes_room_while_the_publisher_waits_for_another_gets_its_copy() {
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256", "--queue-capacity", "4"]);
    let b = bus.connect();
    let a = b.subscribe("p3").unwrap();
    let _slow = b.subscribe_group("p3", "slow").unwrap(); // never reads
    let fast = b.subscribe_group("p3", "fast").unwrap();
    // Long enough for the drain below on a loaded machine; the test takes
    // this long anyway (the wait is on "slow", which joined first and so
    // is the first pending group).
    let mut p = b.publisher().backpressure(bus_client::Backpressure::Block(Duration::from_secs(5))).create().unwrap();
    for i in 0..4u8 {
        p.send_bytes("p3://x", &[i]).unwrap();
        drop(a.try_recv().unwrap().expect("the default group gets it"));
    }
    // "slow" and "fast" are full. "fast" catches up while the publisher
    // waits for "slow" (the first of them): only "slow" loses the copy.
    let drain = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        for i in 0..4u8 {
            let m = fast.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(m.body_bytes().unwrap(), &[i]);
        }
        fast
    });
    let e = p.send_bytes("p3://x", &[4]).unwrap_err();
    assert!(matches!(&e, bus_client::SendError::PartlyDelivered { delivered: 2, groups: 3, .. }), "{e}");
    let fast = drain.join().unwrap();
    assert_eq!(fast.recv_timeout(Duration::from_secs(10)).unwrap().body_bytes().unwrap(), &[4]);
    let s = bus.status();
    assert_eq!(group(subsystem(&s, "p3"), "slow")["dropped"], 1, "{s}");
    assert_eq!(group(subsystem(&s, "p3"), "fast")["dropped"], 0, "{s}");
}

#[test]
fn a_group_that_leaves_with_a_full_queue_does_not_hold_up_the_publisher() {
    let bus = TestBus::start(&["--slots", "512", "--slot-size", "256", "--queue-capacity", "64"]);
    let c = bus.connect();
    // The default group keeps up (a thread that drains it); group `logger`
    // reads nothing, so its queue fills, and then its subscriber leaves.
    let main = c.subscribe("gz").unwrap();
    let logger = c.subscribe_group("gz", "logger").unwrap();
    let publisher_bus = bus.connect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut p = publisher_bus.publisher().create().unwrap();
            let mut slowest = Duration::ZERO;
            let mut errors = Vec::new();
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = std::time::Instant::now();
                if let Err(e) = p.send_bytes("gz://x", &i.to_le_bytes()) {
                    errors.push(e.to_string());
                }
                slowest = slowest.max(t.elapsed());
                i += 1;
            }
            (i, slowest, errors)
        })
    };
    // The logger's queue (64) fills, and the publisher blocks on it: the
    // default group gets those messages and then nothing.
    let mut got = 0u32;
    while main.recv_timeout(Duration::from_millis(500)).is_ok() {
        got += 1;
        assert!(got < 1_000, "the publisher never blocked on the logger's full queue");
    }
    assert!(got >= 60, "only {got} messages before the publisher blocked");
    drop(logger);
    // The default group goes on receiving at once, not after the send
    // timeout (5 s) of a send waiting for the group that left.
    let t = std::time::Instant::now();
    for _ in 0..2_000 {
        main.recv_timeout(Duration::from_secs(10)).expect("the default group keeps receiving");
    }
    let took = t.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    // Unblock a last send, if any, by draining.
    let drain = std::thread::spawn(move || while main.recv_timeout(Duration::from_millis(200)).is_ok() {});
    let (_, slowest, errors) = sender.join().unwrap();
    drain.join().unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    assert!(took < Duration::from_secs(3), "2 000 messages took {took:?} after the group left");
    assert!(slowest < Duration::from_secs(3), "a send took {slowest:?}");
}

#[test]
fn a_subsystems_delivered_count_does_not_go_back_when_a_tap_is_removed() {
    let bus = TestBus::start(&["--slots", "256", "--slot-size", "256"]);
    let c = bus.connect();
    let main = c.subscribe("cnt").unwrap();
    let tap = c.subscription("cnt").tap().create().unwrap();
    let mut p = c.publisher().create().unwrap();
    for i in 0u32..100 {
        p.send_bytes("cnt://x", &i.to_le_bytes()).unwrap();
        main.recv_timeout(Duration::from_secs(5)).unwrap();
        tap.recv_timeout(Duration::from_secs(5)).unwrap();
    }
    let subsystem = |s: &serde_json::Value| {
        s["subsystems"].as_array().unwrap().iter().find(|x| x["name"] == "cnt").cloned().expect("cnt in status")
    };
    let before = subsystem(&bus.status());
    assert_eq!(before["delivered"], 200, "{before}");
    drop(tap);
    // The tap's entry is removed once its listener is gone (a second later).
    let gone =
        eventually(Duration::from_secs(10), || subsystem(&bus.status())["groups"].as_array().unwrap().len() == 1);
    assert!(gone.is_some(), "the tap's entry was never removed");
    let after = subsystem(&bus.status());
    assert_eq!(after["delivered"], 200, "a counter went back: {after}");
}
