//! The control socket: no client can hang the daemon with what it sends
//! there (garbage, a flood), and the daemon stops on SIGTERM meanwhile.

mod common;
use bus_client::control;
use bus_client::protocol::Request;
use common::*;
use nix::sys::signal::Signal;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

#[test]
fn garbage_and_floods_on_the_control_socket_hang_nothing() {
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256"]);
    // Stray bytes: the daemon drops that connection and serves the others.
    let fd = control::connect(bus.socket(), std::time::Instant::now() + Duration::from_secs(5)).unwrap();
    nix::sys::socket::send(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        b"\x00\xffnot json at all",
        nix::sys::socket::MsgFlags::empty(),
    )
    .unwrap();
    let mut buf = Vec::new();
    let closed = eventually(Duration::from_secs(2), || control::peer_closed(fd.as_fd()));
    assert!(closed.is_some(), "the daemon kept a connection that sent garbage");
    let _ = control::recv::<serde_json::Value>(fd.as_fd(), &mut buf);

    // Floods, from a few threads that never read an answer: the daemon
    // answers status meanwhile, and stops on SIGTERM within a second.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooders: Vec<_> = (0..3)
        .map(|i| {
            let (socket, stop) = (bus.socket().to_owned(), stop.clone());
            std::thread::spawn(move || {
                let Ok(fd) = control::connect(&socket, std::time::Instant::now() + Duration::from_secs(5)) else {
                    return;
                };
                let _ = control::send(
                    fd.as_fd(),
                    &Request::Hello {
                        layout_version: bus_core::LAYOUT_VERSION,
                        resume: None,
                        name: None,
                        waits: false,
                    },
                    None,
                );
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let req = if i == 0 {
                        Request::Status
                    } else {
                        Request::Subscribe { subsystem: format!("f{i}"), group: None, lossy: false, tap: false }
                    };
                    if control::send(fd.as_fd(), &req, None).is_err() {
                        break; // the daemon dropped a client that reads nothing
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let s = bus.status();
    assert!(started.elapsed() < Duration::from_secs(1), "status took {:?} under a flood", started.elapsed());
    assert_eq!(s["slots"]["total"], 64);
    bus.daemon.signal(Signal::SIGTERM);
    let stopped = Instant::now();
    let TestBus { daemon, dir, .. } = bus;
    let (st, _, err) = daemon.wait(Duration::from_secs(5));
    let took = stopped.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for f in flooders {
        f.join().unwrap();
    }
    drop(dir);
    assert!(st.success(), "{err}");
    assert!(took < Duration::from_secs(1), "the daemon took {took:?} to stop under a flood");
}

#[test]
fn an_answer_that_came_too_late_is_skipped_not_taken_by_the_next_request() {
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256"]);
    let c = bus_client::Bus::builder()
        .socket(bus.socket())
        .connect_timeout(Duration::from_millis(300))
        .connect()
        .expect("connect");
    // The daemon is stopped: the subscription's answer does not come in
    // time, and the call fails.
    bus.daemon.signal(Signal::SIGSTOP);
    let started = Instant::now();
    let late = c.subscribe("late");
    bus.daemon.signal(Signal::SIGCONT);
    let e = late.expect_err("no answer while the daemon was stopped");
    assert!(e.to_string().contains("did not answer this request in time"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5), "the timeout took {:?}", started.elapsed());
    // Running again, the daemon sends that answer now. The next request
    // must get its own: a subscription to `fresh` that receives `fresh`.
    std::thread::sleep(Duration::from_millis(100));
    let fresh = c.subscribe("fresh").expect("subscribe after the daemon is back");
    let mut p = c.publisher().create().unwrap();
    p.send_bytes("fresh://x", b"for fresh").unwrap();
    let m = fresh.recv_timeout(Duration::from_secs(5)).expect("the message sent to fresh");
    assert_eq!(m.path(), "fresh://x");
    assert_eq!(m.body_bytes().unwrap(), b"for fresh");
    drop(m);
    // The subscription the daemon granted late was ended: its caller was
    // told it failed, so nothing may hold `late`'s queue.
    let _ = c.status(); // one more request: the undo's answer is read
    let status = bus.status();
    let late_subscribers = status["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "late")
        .map_or(0, |s| s["subscribers"].as_u64().unwrap());
    assert_eq!(late_subscribers, 0, "{status}");
}

/// Open descriptors of process `pid`.
fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[test]
fn descriptors_sent_with_control_packets_are_all_closed() {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
    use std::os::fd::AsRawFd;
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256"]);
    let before = open_fds(bus.daemon.pid());
    let null = std::fs::File::open("/dev/null").unwrap();
    let many = [null.as_raw_fd(); 10];
    // Each packet carries ten descriptors (more than any request uses):
    // before, each left the daemon two it never closed. The last one
    // carries as many as a packet can (253), far more than the daemon's
    // buffer holds.
    let most = [null.as_raw_fd(); 253];
    for i in 0..101 {
        let many: &[i32] = if i == 100 { &most } else { &many };
        let fd = control::connect(bus.socket(), Instant::now() + Duration::from_secs(5)).unwrap();
        let body = serde_json::to_vec(&Request::Status).unwrap();
        let iov = [std::io::IoSlice::new(&body)];
        sendmsg::<UnixAddr>(fd.as_raw_fd(), &iov, &[ControlMessage::ScmRights(many)], MsgFlags::empty(), None).unwrap();
        // Read whatever the daemon answers (or its hang-up) before closing.
        let mut buf = Vec::new();
        let _ = control::recv::<serde_json::Value>(fd.as_fd(), &mut buf);
    }
    let settled = eventually(Duration::from_secs(5), || open_fds(bus.daemon.pid()) <= before + 2);
    assert!(settled.is_some(), "the daemon has {} descriptors open, {before} before", open_fds(bus.daemon.pid()));
    assert!(bus.connect().is_alive());
}

#[test]
fn connections_that_never_say_hello_do_not_hold_the_client_table() {
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256", "--max-clients", "4"]);
    let silent: Vec<_> =
        (0..4).map(|_| control::connect(bus.socket(), Instant::now() + Duration::from_secs(5)).unwrap()).collect();
    // The table is full of them for now; within the hello timeout (5 s)
    // and an audit, they are closed and a real client gets on.
    let got_on = eventually(Duration::from_secs(15), || {
        bus_client::Bus::builder().socket(bus.socket()).connect_timeout(Duration::from_secs(1)).connect().is_ok()
    });
    assert!(got_on.is_some(), "silent connections kept the client table full");
    for fd in &silent {
        assert!(control::peer_closed(fd.as_fd()), "a silent connection was left open");
    }
}

#[test]
fn dropping_subscribers_does_not_wait_for_a_stopped_daemon_one_timeout_each() {
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256"]);
    let c = bus_client::Bus::builder()
        .socket(bus.socket())
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .expect("connect");
    let subs: Vec<_> = (0..6).map(|i| c.subscribe(&format!("d{i}")).unwrap()).collect();
    bus.daemon.signal(Signal::SIGSTOP);
    assert!(c.subscribe("more").is_err(), "no answer from a stopped daemon");
    let started = Instant::now();
    drop(subs);
    let took = started.elapsed();
    bus.daemon.signal(Signal::SIGCONT);
    // Before, each drop waited a whole timeout behind the missing answer.
    assert!(took < Duration::from_millis(1500), "dropping six subscribers took {took:?}");
    // The daemon, running again, has every unsubscribe: no `d*` is left
    // with a subscriber once the owed answers are read.
    let _ = c.status();
    let status = bus.status();
    let left: Vec<_> = status["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["name"].as_str().is_some_and(|n| n.starts_with('d')) && s["subscribers"] != 0)
        .collect();
    assert!(left.is_empty(), "{status}");
}

#[test]
fn a_zero_or_huge_connect_timeout_neither_waits_forever_nor_panics() {
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256"]);
    // Huge: waits without a deadline where it must, and works.
    for t in [Duration::MAX, Duration::from_secs(i64::MAX as u64)] {
        let c = bus_client::Bus::builder().socket(bus.socket()).connect_timeout(t).connect().expect("connect");
        let s = c.subscribe("huge").expect("subscribe");
        drop(s);
    }
    // Zero, against a stopped daemon: a timeout, not a wait for as long as
    // the daemon is stopped.
    let c = bus_client::Bus::builder().socket(bus.socket()).connect_timeout(Duration::ZERO).connect();
    let c = match c {
        Ok(c) => c,
        // Zero may be too short for the welcome itself: a typed timeout.
        Err(e) => {
            assert!(matches!(e, bus_client::ConnectError::Timeout { .. }), "{e}");
            return;
        }
    };
    bus.daemon.signal(Signal::SIGSTOP);
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        let r = c.subscribe("zero").map(|_| ());
        let _ = tx.send(r.is_err());
    });
    let failed = rx.recv_timeout(Duration::from_secs(5));
    bus.daemon.signal(Signal::SIGCONT);
    assert_eq!(failed, Ok(true), "a zero timeout waited for the stopped daemon");
    t.join().unwrap();
}

/// A daemon on `socket` that may open at most `files` descriptors.
fn daemon_with_few_files(socket: &std::path::Path, files: u64) -> Proc {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(DAEMON);
    cmd.arg("--socket").arg(socket).args(["--slots", "64", "--slot-size", "256"]);
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, files, files)
                .map_err(std::io::Error::from)
        });
    }
    let mut daemon = Proc::new(cmd.spawn().unwrap());
    daemon.wait_line("shmbusd: ready", Duration::from_secs(10));
    daemon
}

#[test]
fn descriptors_a_daemon_short_of_room_took_from_a_packet_are_closed() {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
    use std::os::fd::AsRawFd;
    let dir = TempDir::new("ctrunc");
    let socket = dir.0.join("bus.sock");
    let daemon = daemon_with_few_files(&socket, 24);
    let pid = daemon.pid();
    let baseline = open_fds(pid);
    let connect = || control::connect(&socket, Instant::now() + Duration::from_secs(2)).unwrap();
    // Silent connections take every descriptor the daemon may open...
    let mut silent: Vec<_> = (baseline..24).map(|_| connect()).collect();
    assert!(eventually(Duration::from_secs(5), || open_fds(pid) >= 24).is_some(), "{}", open_fds(pid));
    // ...then three are let go, and one more connection takes one: two
    // left for the ten descriptors its packet carries. The kernel installs
    // two and drops the rest (MSG_CTRUNC).
    silent.truncate(silent.len() - 3);
    assert!(eventually(Duration::from_secs(5), || open_fds(pid) <= 21).is_some(), "{}", open_fds(pid));
    let sender = connect();
    let null = std::fs::File::open("/dev/null").unwrap();
    let body = serde_json::to_vec(&Request::Status).unwrap();
    let iov = [std::io::IoSlice::new(&body)];
    let many = [null.as_raw_fd(); 10];
    sendmsg::<UnixAddr>(sender.as_raw_fd(), &iov, &[ControlMessage::ScmRights(&many)], MsgFlags::empty(), None)
        .unwrap();
    let mut buf = Vec::new();
    let _ = control::recv::<serde_json::Value>(sender.as_fd(), &mut buf);
    drop(sender);
    drop(silent);
    // Every connection gone: the daemon is back to what it had.
    let back = eventually(Duration::from_secs(5), || open_fds(pid) <= baseline);
    assert!(back.is_some(), "{} descriptors open, {baseline} before", open_fds(pid));
}

#[test]
fn a_daemon_out_of_descriptors_waits_to_accept_instead_of_spinning() {
    let dir = TempDir::new("emfile");
    let socket = dir.0.join("bus.sock");
    let mut daemon = daemon_with_few_files(&socket, 20);
    // Connections (silent: each holds a descriptor of the daemon) until
    // the daemon can accept no more, and a few waiting in its queue.
    let conns: Vec<_> =
        (0..24).filter_map(|_| control::connect(&socket, Instant::now() + Duration::from_secs(2)).ok()).collect();
    assert!(conns.len() >= 20, "only {} connections queued", conns.len());
    // Its listener stays readable; before, each turn of its loop tried
    // again at once and logged the failure: thousands of lines a second.
    std::thread::sleep(Duration::from_millis(300));
    let before = daemon.count_err_lines("accept");
    std::thread::sleep(Duration::from_secs(1));
    let during = daemon.count_err_lines("accept");
    assert!(before >= 1, "the daemon never ran out of descriptors");
    assert!(during <= 10, "{during} lines about accept in one second");
    // Once the connections are gone, it accepts again.
    drop(conns);
    let back = eventually(Duration::from_secs(15), || {
        bus_client::Bus::builder().socket(&socket).connect_timeout(Duration::from_secs(1)).connect().is_ok()
    });
    assert!(back.is_some(), "the daemon did not accept again");
}
