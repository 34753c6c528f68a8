//! Every error a user can meet, against the real daemon binary: each is a
//! typed error with a message that says what to do, and nothing is lost.

mod common;
use bus_client::{Backpressure, BodyError, Bus, ConnectError, RecvError, RequestError, SendError};
use bus_tests::Seq;
use common::*;
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

#[derive(rkyv::Archive, rkyv::Serialize)]
struct Other {
    text: String,
}

#[test]
fn connecting_without_a_daemon_names_the_socket_tried() {
    let dir = TempDir::new("nodaemon");
    let socket = dir.0.join("none.sock");
    let err = Bus::builder().socket(&socket).connect().err().expect("no daemon");
    assert!(matches!(&err, ConnectError::NoDaemon { socket: s } if *s == socket), "{err}");
    assert!(err.to_string().contains(&socket.display().to_string()));
    assert!(err.to_string().contains("shmbusd"));
}

#[test]
fn an_empty_or_overlong_socket_path_is_named_as_the_problem() {
    let long = format!("/tmp/{}.sock", "x".repeat(200));
    for socket in ["", long.as_str()] {
        let err = Bus::builder().socket(socket).connect().err().expect("no such socket");
        match &err {
            ConnectError::Io { source, .. } => assert_eq!(source.kind(), std::io::ErrorKind::InvalidInput, "{err}"),
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("107 bytes"), "{err}");
    }
}

#[test]
fn malformed_paths_are_rejected_before_anything_is_sent() {
    let bus = TestBus::start(&["--slots", "16", "--slot-size", "256"]);
    let c = bus.connect();
    let mut p = c.publisher().create().unwrap();
    for bad in ["", "api/users", "://x", "API://x", "a b://x"] {
        let e = p.send_bytes(bad, b"x").unwrap_err();
        assert!(matches!(e, SendError::InvalidPath(_)), "{bad:?}: {e}");
    }
    assert_eq!(bus.status()["slots"]["loaned"], 0);
}

#[test]
fn a_path_longer_than_a_slot_holds_is_a_typed_error_that_returns_the_slot() {
    let bus = TestBus::start(&["--slots", "16", "--slot-size", "256"]);
    let c = bus.connect();
    let _sub = c.subscribe("api").unwrap();
    let path = format!("api://{}", "x".repeat(194)); // 200 bytes; a slot holds 192
    let mut p = c.publisher().create().unwrap();
    let e = p.send_bytes(&path, b"").unwrap_err();
    assert_eq!(e, SendError::InvalidPath(bus_core::PathError::TooLongForSlot { len: 200, max: 192 }));
    let items = [Other { text: "x".into() }];
    let e = p.send_batch(&path, &items).unwrap_err();
    assert_eq!(
        (e.sent, e.error),
        (0, SendError::InvalidPath(bus_core::PathError::TooLongForSlot { len: 200, max: 192 }))
    );
    drop(p);
    // The command line: a one-line error and exit status 1, not a panic.
    let (st, _, err) = bus.cli(&["send", &path, "hello"]);
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.contains("--slot-size") && !err.contains("panicked"), "{err}");
    let s = bus.status();
    assert_eq!((s["slots"]["loaned"].as_u64(), s["slots"]["free"].as_u64()), (Some(0), Some(16)), "{s}");
}

#[test]
fn an_oversized_body_reports_both_sizes_and_returns_the_slot() {
    let bus = TestBus::start(&["--slots", "16", "--slot-size", "256"]);
    let c = bus.connect();
    let _sub = c.subscribe("api").unwrap();
    let mut p = c.publisher().create().unwrap();
    let cap = c.body_capacity("api://x".len());
    assert_eq!(cap, 256 - 64 - "api://x".len());
    let e = p.send_bytes("api://x", &vec![0u8; cap + 1]).unwrap_err();
    assert_eq!(e, SendError::BodyTooLarge { size: cap + 1, capacity: cap });
    let e = p.send("api://x", &Other { text: "x".repeat(1000) }).unwrap_err();
    assert!(matches!(e, SendError::BodyTooLarge { size, capacity } if size > 1000 && capacity == cap), "{e}");
    assert!(e.to_string().contains("--slot-size"));
    p.send_bytes("api://x", &vec![7u8; cap]).expect("a body of exactly the capacity fits");
    drop(p);
    let s = bus.status();
    assert_eq!(s["slots"]["loaned"], 0);
    assert_eq!(s["slots"]["queued"], 1);
}

#[test]
fn sending_to_a_subsystem_without_subscribers_is_an_error_unless_durable() {
    let bus = TestBus::start(&["--slots", "16", "--slot-size", "256", "--durable", "audit"]);
    let c = bus.connect();
    let mut p = c.publisher().create().unwrap();
    let e = p.send_bytes("nobody://x", b"x").unwrap_err();
    assert_eq!(e, SendError::NoSubscriber { subsystem: "nobody".into() });
    assert!(e.to_string().contains("durable"));
    p.send_bytes("audit://login", b"kept").expect("durable subsystems queue without subscribers");
    let sub = c.subscribe("audit").unwrap();
    let m = sub.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!((m.route(), m.body_bytes().unwrap()), ("login", &b"kept"[..]));
}

#[test]
fn messages_queued_when_the_last_subscriber_leaves_go_to_the_next_one() {
    let bus = TestBus::start(&["--slots", "16", "--slot-size", "256"]);
    let c = bus.connect();
    let sub = c.subscribe("jobs").unwrap();
    let mut p = c.publisher().create().unwrap();
    for seq in 0..3 {
        p.send("jobs://run", &Seq { publisher: 1, seq }).unwrap();
    }
    drop(sub);
    assert!(matches!(p.send_bytes("jobs://run", b"x"), Err(SendError::NoSubscriber { .. })));
    assert_eq!(bus.status()["subsystems"][0]["queue_depth"], 3);
    let sub = c.subscribe("jobs").unwrap();
    for seq in 0..3 {
        assert_eq!(sub.recv_timeout(Duration::from_secs(5)).unwrap().body::<Seq>().unwrap().seq, seq);
    }
}

#[test]
fn a_full_queue_fails_fast_or_times_out_and_keeps_the_queued_messages() {
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256", "--queue-capacity", "4"]);
    let c = Bus::builder().socket(bus.socket()).send_timeout(Duration::from_millis(300)).connect().unwrap();
    let sub = c.subscribe("q").unwrap();
    let mut fast = c.publisher().backpressure(Backpressure::FailFast).create().unwrap();
    for seq in 0..4 {
        fast.send("q://x", &Seq { publisher: 0, seq }).unwrap();
    }
    let e = fast.send("q://x", &Seq { publisher: 0, seq: 4 }).unwrap_err();
    assert_eq!(e, SendError::QueueFull { subsystem: "q".into() });
    let mut blocking = c.publisher().create().unwrap();
    let t = Instant::now();
    let e = blocking.send("q://x", &Seq { publisher: 0, seq: 4 }).unwrap_err();
    assert!(matches!(e, SendError::Timeout { what: "space in the queue", .. }), "{e}");
    assert!(t.elapsed() >= Duration::from_millis(300));
    for seq in 0..4 {
        assert_eq!(sub.try_recv().unwrap().unwrap().body::<Seq>().unwrap().seq, seq);
    }
    drop((fast, blocking));
    let s = bus.status();
    assert_eq!(s["slots"]["free"], 64, "{s}");
}

#[test]
fn a_blocked_send_proceeds_when_the_subscriber_makes_room() {
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256", "--queue-capacity", "2"]);
    let c = bus.connect();
    let sub = c.subscribe("q").unwrap();
    let c2 = c.clone();
    let sender = std::thread::spawn(move || {
        let mut p = c2.publisher().create().unwrap();
        for seq in 0..50 {
            p.send("q://x", &Seq { publisher: 0, seq }).unwrap();
        }
    });
    for seq in 0..50 {
        assert_eq!(sub.recv_timeout(Duration::from_secs(10)).unwrap().body::<Seq>().unwrap().seq, seq);
    }
    sender.join().unwrap();
}

#[test]
fn an_exhausted_pool_fails_fast_and_recovers_when_messages_are_released() {
    let bus = TestBus::start(&["--slots", "8", "--slot-size", "256", "--queue-capacity", "16"]);
    let c = bus.connect();
    let sub = c.subscribe("p").unwrap();
    let mut p = c.publisher().backpressure(Backpressure::FailFast).create().unwrap();
    for _ in 0..8 {
        p.send_bytes("p://x", b"x").unwrap();
    }
    assert_eq!(p.send_bytes("p://x", b"x").unwrap_err(), SendError::PoolExhausted { slots: 8 });
    drop(sub.recv_timeout(Duration::from_secs(5)).unwrap());
    p.send_bytes("p://x", b"again").expect("a released slot is reused");
}

#[test]
fn reading_a_body_as_the_wrong_type_is_an_error_not_a_panic() {
    let bus = TestBus::start(&["--slots", "16", "--slot-size", "256"]);
    let c = bus.connect();
    let sub = c.subscribe("t").unwrap();
    let mut p = c.publisher().create().unwrap();
    p.send("t://x", &Seq { publisher: 1, seq: 2 }).unwrap();
    p.send_bytes("t://raw", b"bytes").unwrap();
    let m = sub.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(matches!(m.body::<Other>(), Err(BodyError::WrongType { .. })));
    assert_eq!(m.body::<Seq>().unwrap().seq, 2);
    let m = sub.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(matches!(m.body::<Seq>(), Err(BodyError::Raw { .. })));
    assert_eq!(m.body_bytes().unwrap(), b"bytes");
}

#[test]
fn receiving_with_nothing_queued_times_out_or_returns_none() {
    let bus = TestBus::start(&["--slots", "16", "--slot-size", "256"]);
    let c = bus.connect();
    let sub = c.subscribe("idle").unwrap();
    assert!(sub.try_recv().unwrap().is_none());
    let t = Instant::now();
    assert_eq!(
        sub.recv_timeout(Duration::from_millis(200)).unwrap_err(),
        RecvError::Timeout(Duration::from_millis(200))
    );
    assert!(t.elapsed() >= Duration::from_millis(200));
}

#[test]
fn a_batch_of_at_most_zero_messages_returns_at_once() {
    let bus = TestBus::start(&["--slots", "16"]);
    let c = bus.connect();
    let sub = c.subscribe("z").unwrap();
    c.publisher().create().unwrap().send_bytes("z://x", b"1").unwrap();
    let mut out = Vec::new();
    let t = Instant::now();
    // Bounded first, so that a regression fails rather than hangs.
    assert_eq!(sub.recv_batch(&mut out, 0, Some(Duration::from_secs(5))).unwrap(), 0);
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(sub.recv_batch(&mut out, 0, None).unwrap(), 0);
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(sub.recv_batch(&mut out, 8, Some(Duration::from_secs(5))).unwrap(), 1, "the message is still there");
}

#[test]
fn an_unsent_loan_dropped_returns_its_slot() {
    let bus = TestBus::start(&["--slots", "16", "--slot-size", "256"]);
    let c = bus.connect();
    let _sub = c.subscribe("l").unwrap();
    let mut p = c.publisher().create().unwrap();
    {
        let loan = p.loan("l://x").unwrap();
        assert_eq!(bus.status()["slots"]["loaned"], 1);
        drop(loan);
    }
    let loan = p.loan("l://x").unwrap().write_bytes(b"x").unwrap();
    drop(loan);
    assert_eq!(bus.status()["slots"]["loaned"], 0);
    drop(p);
    assert_eq!(bus.status()["slots"]["free"], 16);
}

#[test]
fn invalid_subscription_names_are_rejected() {
    let bus = TestBus::start(&["--slots", "16", "--slot-size", "256"]);
    let c = bus.connect();
    assert!(matches!(c.subscribe("Not Valid"), Err(RequestError::InvalidName(_))));
}

#[test]
fn a_full_routing_table_and_a_full_client_table_are_refused_with_the_limit_named() {
    let bus = TestBus::start(&["--slots", "16", "--slot-size", "256", "--max-subsystems", "1", "--max-clients", "2"]);
    let c = bus.connect();
    let _a = c.subscribe("a").unwrap();
    let e = c.subscribe("b").err().unwrap();
    assert!(e.to_string().contains("--max-subsystems"), "{e}");
    let _c2 = bus.connect();
    let e = Bus::builder().socket(bus.socket()).connect().err().unwrap();
    assert!(matches!(&e, ConnectError::Refused { message } if message.contains("--max-clients")), "{e}");
}

#[test]
fn a_client_of_another_layout_version_is_refused_naming_both_versions() {
    use bus_client::control;
    use bus_client::protocol::{ErrorKind, Reply, Request};
    use std::os::fd::AsFd;
    let bus = TestBus::start(&["--slots", "16", "--slot-size", "256"]);
    let fd = control::connect(bus.socket(), std::time::Instant::now() + Duration::from_secs(5)).unwrap();
    control::send(fd.as_fd(), &Request::Hello { layout_version: 999, resume: None, name: None, waits: false }, None)
        .unwrap();
    let mut buf = Vec::new();
    match control::recv::<Reply>(fd.as_fd(), &mut buf).unwrap() {
        control::Received::Packet(Reply::Error { kind: ErrorKind::VersionMismatch, message }, None) => {
            assert!(message.contains("999") && message.contains(&bus_core::LAYOUT_VERSION.to_string()), "{message}");
        }
        _ => panic!("expected a version mismatch"),
    }
}

#[test]
fn a_stopped_daemon_gives_bus_gone_to_blocked_receivers_and_to_senders() {
    let bus = TestBus::start(&["--slots", "16", "--slot-size", "256"]);
    let c = bus.connect();
    let sub = c.subscribe("s").unwrap();
    let mut p = c.publisher().create().unwrap();
    let (st, _, err) = bus.cli(&["shutdown"]);
    assert!(st.success(), "{err}");
    let t = Instant::now();
    assert_eq!(sub.recv_timeout(Duration::from_secs(10)).unwrap_err(), RecvError::BusGone);
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(p.send_bytes("s://x", b"x").unwrap_err(), SendError::BusGone);
    let TestBus { daemon, socket, dir: _dir, .. } = bus;
    let (st, _, _) = daemon.wait(Duration::from_secs(10));
    assert!(st.success());
    assert!(!socket.exists(), "the socket file is removed on shutdown");
}

#[test]
fn a_killed_daemon_gives_bus_gone_and_a_new_daemon_replaces_its_stale_socket() {
    let bus = TestBus::start(&["--slots", "16", "--slot-size", "256"]);
    let c = bus.connect();
    let sub = c.subscribe("s").unwrap();
    bus.daemon.signal(Signal::SIGKILL);
    let t = Instant::now();
    assert_eq!(sub.recv_timeout(Duration::from_secs(10)).unwrap_err(), RecvError::BusGone);
    assert!(t.elapsed() < Duration::from_secs(2), "noticed after {:?}", t.elapsed());
    assert!(bus.socket().exists(), "a killed daemon leaves its socket file");
    // A new daemon on the same socket starts cleanly.
    let mut again = Proc::new(
        std::process::Command::new(DAEMON)
            .args(["--socket", bus.socket().to_str().unwrap(), "--slots", "16"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    again.wait_line("shmbusd: ready", Duration::from_secs(10));
    let c2 = Bus::builder().socket(bus.socket()).connect().unwrap();
    assert_eq!(c2.status().unwrap().slots.total, 16);
}

#[test]
fn a_second_daemon_on_the_same_socket_refuses_to_start() {
    let bus = TestBus::start(&["--slots", "16"]);
    let (st, _, err) =
        run_to_end(std::process::Command::new(DAEMON).args(["--socket", bus.socket().to_str().unwrap()]));
    assert_eq!(st.code(), Some(1));
    assert!(err.contains("already serving"), "{err}");
    assert!(bus.connect().is_alive(), "the first daemon still serves");
}

#[test]
fn daemons_started_together_on_one_path_leave_exactly_one_serving() {
    // A stale socket at the path (bound, then its listener gone): each
    // daemon sees it refuse connections and would take its place.
    let dir = TempDir::new("together");
    let socket = dir.0.join("bus.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    for round in 0..10 {
        let mut daemons: Vec<std::process::Child> = (0..12)
            .map(|_| {
                std::process::Command::new(DAEMON)
                    .args(["--socket", socket.to_str().unwrap(), "--slots", "16"])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        // Every loser exits at once; give a winner's twin every chance to
        // have bound too before counting.
        let exited = |d: &mut Vec<std::process::Child>| {
            d.iter_mut().map(|c| c.try_wait().unwrap().is_some() as usize).sum::<usize>()
        };
        eventually(Duration::from_secs(10), || exited(&mut daemons) >= 11).expect("the losers exit");
        std::thread::sleep(Duration::from_millis(300));
        let mut running = Vec::new();
        for mut d in daemons {
            match d.try_wait().unwrap() {
                Some(st) => {
                    let mut err = String::new();
                    std::io::Read::read_to_string(d.stderr.as_mut().unwrap(), &mut err).unwrap();
                    assert_eq!(st.code(), Some(1), "round {round}: {err}");
                    assert!(err.contains("already serving"), "round {round}: {err}");
                }
                None => running.push(d),
            }
        }
        assert_eq!(running.len(), 1, "round {round}: one daemon serves, and only one");
        let c = Bus::builder().socket(&socket).connect().expect("the one left serves the path");
        assert_eq!(c.status().unwrap().slots.total, 16);
        drop(c);
        // Killed, it leaves its socket and its lock file behind: the next
        // round starts from that.
        for mut d in running {
            d.kill().unwrap();
            d.wait().unwrap();
        }
    }
}

#[test]
fn a_daemon_never_removes_what_is_not_a_socket_at_its_socket_path() {
    let dir = TempDir::new("notsock");
    let file = dir.0.join("notes.txt");
    std::fs::write(&file, b"important").unwrap();
    let link = dir.0.join("link.sock");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let sub = dir.0.join("subdir");
    std::fs::create_dir(&sub).unwrap();
    for (path, what) in [(&file, "a regular file"), (&link, "a symbolic link"), (&sub, "a directory")] {
        let (st, _, err) = run_to_end(std::process::Command::new(DAEMON).args(["--socket", path.to_str().unwrap()]));
        assert_eq!(st.code(), Some(1), "{err}");
        assert!(err.contains("is not a socket") && err.contains(what), "{err}");
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"important");
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert!(sub.is_dir());
}

#[test]
fn sigterm_stops_the_daemon_cleanly() {
    let bus = TestBus::start(&["--slots", "16"]);
    bus.daemon.signal(Signal::SIGTERM);
    let TestBus { daemon, socket, dir: _dir, .. } = bus;
    let (st, _, err) = daemon.wait(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "{err}");
    assert!(!socket.exists());
}

#[test]
fn sighup_is_logged_and_ignored_and_the_daemon_goes_on_serving() {
    let mut bus = TestBus::start(&["--slots", "16"]);
    let listener = listening(&bus.socket, "hup", None);
    bus.daemon.signal(Signal::SIGHUP);
    let said = bus.daemon.saw_err_line(Duration::from_secs(10), |l| l.contains("SIGHUP ignored"));
    assert!(said, "the daemon did not log the SIGHUP");
    // Still serving: the client connected before the signal and a new one.
    let (st, _, err) = bus.cli(&["send", "hup://x", "after"]);
    assert_eq!(st.code(), Some(0), "{err}");
    let (st, out, err) = listener.wait(Duration::from_secs(20));
    assert_eq!(st.code(), Some(0), "{err}");
    assert!(out.contains("after"), "{out}");
    bus.daemon.signal(Signal::SIGTERM);
    let TestBus { daemon, socket, dir: _dir, .. } = bus;
    let (st, _, err) = daemon.wait(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "{err}");
    assert!(!socket.exists());
}

#[test]
fn the_cli_reports_errors_on_one_line_with_exit_status_1_and_usage_errors_with_2() {
    let bus = TestBus::start(&["--slots", "16"]);
    let (st, _, err) = bus.cli(&["send", "nosub://x", "hi"]);
    assert_eq!(st.code(), Some(1));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no subscriber"), "{err}");
    let (st, _, _) = bus.cli(&["frobnicate"]);
    assert_eq!(st.code(), Some(2));
    let (st, _, err) = bus.cli(&["listen", "x", "--count", "1", "--timeout", "100ms"]);
    assert_eq!(st.code(), Some(1));
    assert!(err.contains("timed out after 0 of 1"), "{err}");
    let (st, _, err) = bus.cli(&["--socket", "/nonexistent/x.sock", "status"]);
    assert_eq!(st.code(), Some(1));
    assert!(err.contains("/nonexistent/x.sock"), "{err}");
}

#[test]
fn the_cli_names_what_is_wrong_with_names_sockets_terminals_and_timeouts() {
    let bus = TestBus::start(&["--slots", "16"]);
    let (st, _, err) = bus.cli(&["listen", "f", "--group", "Bad Name", "--count", "1", "--timeout", "1s"]);
    assert_eq!(st.code(), Some(1));
    assert!(err.contains("invalid name") && err.contains('B') && !err.contains("path"), "{err}");
    let (st, _, err) = bus.cli(&["listen", "", "--count", "1", "--timeout", "1s"]);
    assert_eq!(st.code(), Some(1));
    assert!(err.contains("empty") && !err.contains("://"), "{err}");
    // A regular file where the socket should be: said so, not "start a daemon".
    let file = bus.dir.0.join("not-a-socket");
    std::fs::write(&file, b"x").unwrap();
    let (st, _, err) = bus.cli(&["--socket", file.to_str().unwrap(), "status"]);
    assert_eq!(st.code(), Some(1));
    assert!(err.contains("is not a socket"), "{err}");
    // `top` with its output in a pipe: an error that points to --once.
    let (st, _, err) = bus.cli(&["top"]);
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.contains("--once") && !err.contains("panicked"), "{err}");
    // A timeout beyond what the clock holds waits without one.
    std::thread::scope(|s| {
        let l = s.spawn(|| bus.cli(&["listen", "far", "--count", "1", "--timeout", "18446744073709551615s"]));
        let c = bus.connect();
        let mut p = c.publisher().create().unwrap();
        eventually(Duration::from_secs(10), || p.send_bytes("far://x", b"here").is_ok())
            .expect("the listener subscribed");
        let (st, out, err) = l.join().unwrap();
        assert!(st.success(), "{err}");
        assert!(out.contains("here"), "{out}");
    });
}

#[test]
fn a_listener_whose_reader_went_away_leaves_the_message_it_could_not_print_queued() {
    use std::io::BufRead;
    let bus = TestBus::start(&["--slots", "16"]);
    // `shmbus listen s | head -1`, by hand: read one line, then close the pipe.
    let mut child = bus.command(CLI).args(["listen", "s", "--timeout", "30s"]).spawn().unwrap();
    let c = bus.connect();
    let mut p = c.publisher().create().unwrap();
    eventually(Duration::from_secs(10), || p.send_bytes("s://x", b"first").is_ok()).expect("the listener subscribed");
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "s://x\tfirst\n");
    drop(out);
    p.send_bytes("s://x", b"second").unwrap();
    let t = Instant::now();
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "the listener did not end");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(st.success(), "{st:?}");
    // The second message was taken but never printed: it is given back.
    let sub = c.subscribe("s").unwrap();
    let m = sub.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(m.body_bytes().unwrap(), b"second");
    assert!(m.is_redelivered());
}

#[test]
fn status_json_has_the_documented_keys() {
    let bus = TestBus::start(&["--slots", "32", "--slot-size", "512"]);
    let c = bus.connect();
    let _sub = c.subscribe("api").unwrap();
    c.publisher().create().unwrap().send_bytes("api://x", b"1").unwrap();
    let s = bus.status();
    assert!(s["bus"].is_string());
    assert_eq!(s["slot_size"], 512);
    for k in ["total", "free", "cached", "loaned", "queued", "held", "corrupt"] {
        assert!(s["slots"][k].is_u64(), "slots.{k}");
    }
    for k in ["corruption", "slots_lost"] {
        assert_eq!(s["counters"][k], 0, "counters.{k} of a healthy bus");
    }
    assert_eq!(s["slots"]["total"], 32);
    assert!(s["clients"].as_u64().unwrap() >= 2);
    let api = &s["subsystems"][0];
    for k in
        ["name", "queue_depth", "subscribers", "durable", "sent", "delivered", "redelivered", "stalls", "quarantined"]
    {
        assert!(!api[k].is_null(), "subsystems[].{k}");
    }
    assert_eq!((api["stalls"].as_u64(), api["quarantined"].as_bool()), (Some(0), Some(false)));
    assert_eq!(
        (api["name"].as_str(), api["queue_depth"].as_u64(), api["sent"].as_u64()),
        (Some("api"), Some(1), Some(1))
    );
}

#[test]
fn an_idle_subsystem_with_an_empty_queue_gives_its_entry_to_a_new_one_after_a_second() {
    let bus = TestBus::start(&["--slots", "16", "--slot-size", "256", "--max-subsystems", "1"]);
    let c = bus.connect();
    let a = c.subscribe("a").unwrap();
    c.publisher().create().unwrap().send_bytes("a://x", b"1").unwrap();
    assert_eq!(a.try_recv().unwrap().unwrap().body_bytes().unwrap(), b"1");
    drop(a);
    // Just left: not yet recyclable.
    assert!(c.subscribe("b").err().unwrap().to_string().contains("--max-subsystems"));
    std::thread::sleep(Duration::from_millis(1100));
    let _b = c.subscribe("b").expect("the idle entry is recycled");
    let s = bus.status();
    assert_eq!(s["subsystems"].as_array().unwrap().len(), 1);
    assert_eq!(s["subsystems"][0]["name"], "b");
    assert_eq!(s["subsystems"][0]["sent"], 0, "counters start again for the new subsystem");
    assert!(matches!(c.publisher().create().unwrap().send_bytes("a://x", b"x"), Err(SendError::NoSubscriber { .. })));
}

#[test]
fn a_publisher_or_requester_made_after_the_daemon_died_is_bus_gone_at_once() {
    let bus = TestBus::start(&["--slots", "64"]);
    let c = bus.connect();
    bus.daemon.signal(nix::sys::signal::Signal::SIGKILL);
    let gone =
        eventually(Duration::from_secs(5), || matches!(c.publisher().create(), Err(bus_client::RequestError::BusGone)));
    assert!(gone.is_some(), "a new publisher on a dead bus was not BusGone");
    assert!(matches!(c.requester().err(), Some(bus_client::RequestError::BusGone)), "a new requester");
}

#[test]
fn a_send_timeout_reports_the_whole_wait_across_routing_changes() {
    let bus = TestBus::start(&["--slots", "256", "--queue-capacity", "16"]);
    let c = bus.connect();
    let _sub = c.subscribe("full").unwrap();
    let t = Duration::from_millis(800);
    let mut p = c.publisher().backpressure(Backpressure::Block(t)).create().unwrap();
    for _ in 0..16 {
        p.send_bytes("full://x", b"x").unwrap();
    }
    // The routing table changes while the send waits: each change wakes it
    // to look again, and it waits on.
    let other = bus.connect();
    let churn = std::thread::spawn(move || {
        for i in 0..5 {
            std::thread::sleep(Duration::from_millis(100));
            drop(other.subscribe(&format!("churn{i}")).unwrap());
        }
    });
    let t0 = Instant::now();
    let e = p.send_bytes("full://x", b"x").unwrap_err();
    churn.join().unwrap();
    assert!(t0.elapsed() >= t, "gave up after {:?}", t0.elapsed());
    assert_eq!(e, SendError::Timeout { waited: t, what: "space in the queue" });
}

#[test]
fn bench_takes_cpus_as_documented_and_refuses_ones_it_cannot_use() {
    // Refused before anything runs: two sides on one CPU, or on a CPU this
    // process may not use, would spin against each other without end.
    for (cpus, says) in [("0,0", "two different CPUs"), ("4096,4097", "CPU 4096 is not one"), ("0", "takes two CPUs")] {
        let (st, _, err) =
            run_to_end(std::process::Command::new(CLI).args(["bench", "--cpus", cpus, "--only", "latency"]));
        assert_eq!(st.code(), Some(1), "{cpus}: {err}");
        assert!(err.contains(says), "{cpus}: {err}");
    }
}
