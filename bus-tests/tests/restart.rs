//! Surviving a daemon restart (`resume-grace`): a daemon killed under load
//! is replaced, and its clients carry on without restarting; a client that
//! died meanwhile is reclaimed; `shutdown` still ends the bus at once; and
//! systemd's fd store hands the segment to the next daemon.

mod common;
use common::*;
use nix::sys::signal::Signal;
use std::collections::BTreeSet;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A daemon process on `socket` with `extra` flags, ready.
fn daemon(socket: &Path, extra: &[&str]) -> Proc {
    daemon_ready(socket, extra).0
}

/// [`daemon`], and its ready line.
fn daemon_ready(socket: &Path, extra: &[&str]) -> (Proc, String) {
    let mut cmd = Command::new(DAEMON);
    cmd.arg("--socket").arg(socket).args(extra).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut d = Proc::new(cmd.spawn().expect("start the daemon"));
    let line = d.wait_line("shmbusd: ready", Duration::from_secs(20));
    (d, line)
}

fn grace_flags(grace: &str) -> Vec<String> {
    vec!["--resume-grace".into(), grace.into(), "--slots".into(), "512".into()]
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn a_daemon_killed_under_load_is_replaced_and_its_clients_carry_on() {
    let dir = TempDir::new("restart");
    let socket = dir.0.join("bus.sock");
    let flags = grace_flags("10s");
    let first = daemon(&socket, &args(&flags));
    let done = dir.0.join("done");
    let stop = dir.0.join("stop");
    let mut sub = peer(&socket, &["cpsub", "subsystem=rs", &format!("done_file={}", done.display())]);
    sub.wait_line("subscribed", Duration::from_secs(10));
    let mut publisher = peer(
        &socket,
        &["cppub", "publisher=1", "path=rs://x", "count=1000", &format!("until_file={}", stop.display())],
    );
    publisher.wait_line("a 500", Duration::from_secs(20));

    // kill -9, and a new daemon a second later.
    first.signal(Signal::SIGKILL);
    let (_, _, _) = first.wait(Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(1));
    let t = Instant::now();
    let (second, ready) = daemon_ready(&socket, &args(&flags));
    eprintln!("the new daemon adopted the segment after {:?}", t.elapsed());
    // It adopted the segment, with both clients waiting to resume...
    assert!(ready.contains("resuming=2"), "{ready}");
    // ...and both resumed: same processes, same subscription.
    let pids = |s: &serde_json::Value| -> Vec<u64> {
        s["client_list"].as_array().unwrap().iter().map(|c| c["pid"].as_u64().unwrap()).collect()
    };
    assert!(
        eventually(Duration::from_secs(5), || {
            let ps = pids(&status(&socket));
            ps.contains(&(sub.pid() as u64)) && ps.contains(&(publisher.pid() as u64))
        })
        .is_some(),
        "the clients did not resume: {}",
        status(&socket)
    );
    // Lines printed before now are dropped: count only what comes next.
    let _ = publisher.count_lines("a ");
    let mut after = 0;
    assert!(
        eventually(Duration::from_secs(10), || {
            after += publisher.count_lines("a ");
            after > 2000
        })
        .is_some(),
        "the publisher did not carry on after the restart"
    );

    // A third client, new after the restart, works.
    let bus = bus_client::Bus::builder().socket(&socket).connect().expect("a new client connects");
    let s = bus.subscribe("third").unwrap();
    let mut p = bus.publisher().create().unwrap();
    p.send_bytes("third://hi", b"hello").unwrap();
    assert_eq!(s.recv_timeout(Duration::from_secs(5)).unwrap().body_bytes().unwrap(), b"hello");
    drop((s, p, bus));

    std::fs::write(&stop, b"").unwrap();
    let (st, out, err) = publisher.wait(Duration::from_secs(60));
    assert!(st.success(), "publisher: {err}");
    std::fs::write(&done, b"").unwrap();
    let (st, got, err) = sub.wait(Duration::from_secs(60));
    assert!(st.success(), "subscriber: {err}");
    let acked: BTreeSet<u64> = out.lines().filter_map(|l| l.strip_prefix("a ")).map(|n| n.parse().unwrap()).collect();
    let received: BTreeSet<u64> = got
        .lines()
        .filter_map(|l| l.strip_prefix("g 1 "))
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    let lost: Vec<_> = acked.difference(&received).take(10).collect();
    assert!(lost.is_empty(), "acknowledged but never delivered: {lost:?} (of {})", acked.len());
    assert!(acked.len() > 3000, "only {} messages went through", acked.len());
    assert_slots_back(&socket);
    // Only the status command itself is connected.
    let s = status(&socket);
    assert_eq!(s["clients"], 1, "{s}");
    second.signal(Signal::SIGTERM);
    let (st, _, err) = second.wait(Duration::from_secs(10));
    assert!(st.success(), "{err}");
}

#[test]
fn a_client_killed_while_the_daemon_was_away_is_reclaimed_and_its_messages_redelivered() {
    let dir = TempDir::new("restart-dead");
    let socket = dir.0.join("bus.sock");
    let flags = grace_flags("2s");
    let first = daemon(&socket, &args(&flags));
    let survivor = bus_client::Bus::builder().socket(&socket).connect().unwrap();
    let mut p = survivor.publisher().create().unwrap();
    let mut holder = peer(&socket, &["hold", "subsystem=h", "path=h://x", "loans=2", "hold=2"]);
    assert!(eventually(Duration::from_secs(10), || status(&socket)["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == "h" && s["subscribers"] == 1))
    .is_some());
    p.send_bytes("h://x", b"one").unwrap();
    p.send_bytes("h://x", b"two").unwrap();
    holder.wait_line("holding", Duration::from_secs(10));
    let sub = survivor.subscribe("h").unwrap();

    first.signal(Signal::SIGKILL);
    let _ = first.wait(Duration::from_secs(10));
    holder.signal(Signal::SIGKILL);
    let _ = holder.wait(Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    let _second = daemon(&socket, &args(&flags));

    // The holder's two messages come back to the group, flagged; its loans
    // and cache go back to the pool.
    let mut bodies = Vec::new();
    for _ in 0..2 {
        let m = sub.recv_timeout(Duration::from_secs(10)).expect("the dead holder's messages, redelivered");
        assert!(m.is_redelivered());
        bodies.push(m.body_bytes().unwrap().to_vec());
    }
    bodies.sort();
    assert_eq!(bodies, [b"one".to_vec(), b"two".to_vec()]);
    drop(p);
    assert_slots_back(&socket);
    // The survivor resumed its identity: still subscribed, still serving.
    // (The status command is a client too.)
    let s = status(&socket);
    assert_eq!(s["clients"], 2, "{s}");
    assert_eq!(s["client_list"][0]["subscriptions"], serde_json::json!(["h"]), "{s}");
    let mut p = survivor.publisher().create().unwrap();
    p.send_bytes("h://x", b"three").unwrap();
    assert_eq!(sub.recv_timeout(Duration::from_secs(5)).unwrap().body_bytes().unwrap(), b"three");
}

#[test]
fn a_client_reclaimed_while_stopped_leaves_alone_what_it_held_when_it_runs_again() {
    let dir = TempDir::new("restart-stopped-holder");
    let socket = dir.0.join("bus.sock");
    let flags = grace_flags("2s");
    let first = daemon(&socket, &args(&flags));
    let survivor = bus_client::Bus::builder().socket(&socket).connect().unwrap();
    let mut p = survivor.publisher().create().unwrap();
    // The holder lets its message go 2.5 s after taking it: by then it has
    // been stopped for longer than the grace, and reclaimed.
    let mut holder = peer(&socket, &["hold", "subsystem=h", "path=h://x", "hold=1", "for_ms=2500"]);
    let subscribed =
        || status(&socket)["subsystems"].as_array().unwrap().iter().any(|s| s["name"] == "h" && s["subscribers"] == 1);
    assert!(eventually(Duration::from_secs(10), subscribed).is_some());
    p.send_bytes("h://x", b"held").unwrap();
    holder.wait_line("holding", Duration::from_secs(10));
    // And one blocked in a receive when it is stopped.
    let mut waiter = peer(&socket, &["sub", "subsystem=w", "count=1", "timeout_ms=30000"]);
    waiter.wait_line("subscribed", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(200)); // asleep on the queue by now
    holder.signal(Signal::SIGSTOP);
    waiter.signal(Signal::SIGSTOP);
    first.signal(Signal::SIGKILL);
    let _ = first.wait(Duration::from_secs(10));
    let mut second = daemon(&socket, &args(&flags));
    let sub = survivor.subscribe("h").unwrap();
    let w = survivor.subscribe("w").unwrap();
    let reclaimed = second.saw_err_line(Duration::from_secs(20), |l| l.contains("did not resume within the grace"));
    assert!(reclaimed, "the stopped holder was not reclaimed");
    // Its message, redelivered, is the survivor's now.
    let m = sub.recv_timeout(Duration::from_secs(10)).expect("the stopped holder's message, redelivered");
    assert!(m.is_redelivered());
    // The holder runs again and drops its copy: that must not free the
    // slot the survivor reads.
    holder.signal(Signal::SIGCONT);
    holder.wait_line("released", Duration::from_secs(20));
    // The receiver that slept through it wakes to find its client
    // reclaimed: it takes nothing from the queue it no longer subscribes.
    p.send_bytes("w://x", b"for the survivor").unwrap();
    waiter.signal(Signal::SIGCONT);
    let (st, _, err) = waiter.wait(Duration::from_secs(20));
    assert!(!st.success(), "the reclaimed receiver received: {err}");
    assert_eq!(w.recv_timeout(Duration::from_secs(5)).unwrap().body_bytes().unwrap(), b"for the survivor");
    let s = status(&socket);
    assert_eq!(s["slots"]["held"], 1, "the survivor's message lost its slot: {s}");
    assert_eq!(s["counters"]["corruption"], 0, "{s}");
    // Slots in use elsewhere cannot take its place.
    for i in 0..600u32 {
        p.send_bytes("h://x", &i.to_le_bytes()).unwrap();
        drop(sub.recv_timeout(Duration::from_secs(10)).unwrap());
    }
    assert_eq!(m.body_bytes().unwrap(), b"held");
    drop(m);
    drop(holder);
    drop(p);
    assert_slots_back(&socket);
}

#[test]
fn shutdown_ends_the_bus_at_once_but_sigterm_leaves_it_to_the_next_daemon() {
    let dir = TempDir::new("restart-stop");
    let socket = dir.0.join("bus.sock");
    let flags = grace_flags("5s");
    let first = daemon(&socket, &args(&flags));
    let bus = bus_client::Bus::builder().socket(&socket).connect().unwrap();
    let sub = bus.subscribe("t").unwrap();
    let mut p = bus.publisher().create().unwrap();

    // SIGTERM (what `systemctl restart` sends): the clients wait, and the
    // next daemon takes them back, with what was queued.
    p.send_bytes("t://queued", b"before").unwrap();
    first.signal(Signal::SIGTERM);
    let (st, _, err) = first.wait(Duration::from_secs(10));
    assert!(st.success(), "{err}");
    p.send_bytes("t://meanwhile", b"while away").unwrap();
    let second = daemon(&socket, &args(&flags));
    for want in [&b"before"[..], b"while away"] {
        assert_eq!(sub.recv_timeout(Duration::from_secs(5)).unwrap().body_bytes().unwrap(), want);
    }
    // A control request made after the restart goes to the new daemon.
    assert_eq!(bus.status().unwrap().daemon_pid, second.pid() as u32);

    // `shutdown`: BusGone at once, nothing left for a next daemon.
    let (st, _, err) = run_to_end(Command::new(CLI).arg("shutdown").env("SHMBUS_SOCKET", &socket));
    assert!(st.success(), "{err}");
    let t = Instant::now();
    assert!(eventually(Duration::from_secs(2), || p.send_bytes("t://x", b"x").is_err()).is_some());
    assert!(t.elapsed() < Duration::from_secs(1), "BusGone took {:?}", t.elapsed());
    assert!(matches!(sub.recv_timeout(Duration::from_millis(10)), Err(bus_client::RecvError::BusGone)));
    let (st, _, _) = second.wait(Duration::from_secs(10));
    assert!(st.success());
    assert!(!PathBuf::from(format!("{}.segment", socket.display())).exists());
}

#[test]
fn a_segment_left_longer_ago_than_the_grace_is_not_waited_for() {
    let dir = TempDir::new("restart-stale");
    let socket = dir.0.join("bus.sock");
    let flags = grace_flags("1s");
    let first = daemon(&socket, &args(&flags));
    first.signal(Signal::SIGKILL);
    let _ = first.wait(Duration::from_secs(10));
    // No client is left to bring the segment back, and the grace (plus
    // the record's heartbeat slack) is long over: a new bus at once.
    std::thread::sleep(Duration::from_millis(3500));
    let t = Instant::now();
    let (_second, ready) = daemon_ready(&socket, &args(&flags));
    assert!(t.elapsed() < Duration::from_secs(2), "waited {:?} for nobody", t.elapsed());
    assert!(!ready.contains("resuming"), "{ready}");
    let bus = bus_client::Bus::builder().socket(&socket).connect().unwrap();
    assert!(bus.status().is_ok());
}

#[test]
fn a_daemon_that_had_no_clients_when_it_went_is_not_waited_for() {
    let dir = TempDir::new("restart-idle");
    let socket = dir.0.join("bus.sock");
    let flags = grace_flags("10s");
    for stop in [Signal::SIGTERM, Signal::SIGKILL] {
        let first = daemon(&socket, &args(&flags));
        // A client came and went: nobody is left to resume.
        let bus = bus_client::Bus::builder().socket(&socket).connect().unwrap();
        drop(bus.subscribe("t").unwrap());
        drop(bus);
        // Once the daemon has seen the disconnect, it marks itself idle.
        let idle = PathBuf::from(format!("{}.segment.idle", socket.display()));
        assert!(eventually(Duration::from_secs(10), || idle.exists()).is_some(), "never marked idle");
        first.signal(stop);
        let _ = first.wait(Duration::from_secs(10));
        let t = Instant::now();
        let (next, ready) = daemon_ready(&socket, &args(&flags));
        assert!(t.elapsed() < Duration::from_secs(3), "after {stop:?}, waited {:?} for nobody", t.elapsed());
        assert!(!ready.contains("resuming"), "{ready}");
        let bus = bus_client::Bus::builder().socket(&socket).connect().unwrap();
        assert!(bus.status().is_ok());
        drop(bus);
        assert!(eventually(Duration::from_secs(10), || idle.exists()).is_some(), "never marked idle");
        next.signal(Signal::SIGKILL);
        let _ = next.wait(Duration::from_secs(10));
    }
    // With a client still connected when the daemon is killed, the next
    // one waits for it, and it resumes.
    let first = daemon(&socket, &args(&flags));
    let bus = bus_client::Bus::builder().socket(&socket).connect().unwrap();
    let sub = bus.subscribe("kept").unwrap();
    first.signal(Signal::SIGKILL);
    let _ = first.wait(Duration::from_secs(10));
    let _next = daemon(&socket, &args(&flags));
    let mut p = bus.publisher().create().unwrap();
    let sent = eventually(Duration::from_secs(10), || p.send_bytes("kept://x", b"after").is_ok());
    assert!(sent.is_some(), "the client did not resume");
    let m = sub.recv_timeout(Duration::from_secs(5)).expect("the message after the restart");
    assert_eq!(m.body_bytes().unwrap(), b"after");
}

#[test]
fn silent_connections_while_a_daemon_waits_for_a_resumer_do_not_keep_it_out() {
    use std::os::unix::process::CommandExt;
    let dir = TempDir::new("restart-silent");
    let socket = dir.0.join("bus.sock");
    let mut flags = grace_flags("10s");
    flags.extend(["--max-clients".into(), "4".into()]);
    let first = daemon(&socket, &args(&flags));
    let bus = bus_client::Bus::builder().socket(&socket).connect().unwrap();
    let sub = bus.subscribe("kept").unwrap();
    first.signal(Signal::SIGKILL);
    let _ = first.wait(Duration::from_secs(10));
    // The next daemon may open few descriptors, and silent connections
    // arrive as it starts waiting for the client to bring the segment.
    let mut cmd = Command::new(DAEMON);
    cmd.arg("--socket").arg(&socket).args(args(&flags)).stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 30, 30)
                .map_err(std::io::Error::from)
        });
    }
    let mut second = Proc::new(cmd.spawn().unwrap());
    let mut silent = Vec::new();
    let t = Instant::now();
    while silent.len() < 25 && t.elapsed() < Duration::from_secs(5) {
        match bus_client::control::connect(&socket, Instant::now() + Duration::from_millis(100)) {
            Ok(fd) => silent.push(fd),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    assert_eq!(silent.len(), 25);
    // Before, they held every descriptor for the whole wait, the client's
    // connection stayed in the listen queue, and a new bus was started.
    let ready = second.wait_line("shmbusd: ready", Duration::from_secs(20));
    assert!(ready.contains("resuming=1"), "{ready}");
    let mut p = bus.publisher().create().unwrap();
    let sent = eventually(Duration::from_secs(10), || p.send_bytes("kept://x", b"after").is_ok());
    assert!(sent.is_some(), "the client did not resume");
    let m = sub.recv_timeout(Duration::from_secs(5)).expect("the message after the restart");
    assert_eq!(m.body_bytes().unwrap(), b"after");
    drop(silent);
}

#[test]
fn without_a_grace_a_killed_daemon_still_means_bus_gone_at_once() {
    let dir = TempDir::new("restart-none");
    let socket = dir.0.join("bus.sock");
    let first = daemon(&socket, &["--slots", "64"]);
    let bus = bus_client::Bus::builder().socket(&socket).connect().unwrap();
    let sub = bus.subscribe("t").unwrap();
    first.signal(Signal::SIGKILL);
    let t = Instant::now();
    assert!(matches!(sub.recv_timeout(Duration::from_secs(5)), Err(bus_client::RecvError::BusGone)));
    assert!(t.elapsed() < Duration::from_millis(500), "{:?}", t.elapsed());
}

/// The fd a datagram carried (SCM_RIGHTS), and its text.
fn recv_with_fd(sock: &std::os::unix::net::UnixDatagram) -> (String, Option<OwnedFd>) {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::FromRawFd;
    let mut buf = [0u8; 1024];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC).unwrap();
    let mut fd = None;
    for c in msg.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(fds) = c {
            // SAFETY: the kernel installed these descriptors for us.
            fd = fds.first().map(|&r| unsafe { OwnedFd::from_raw_fd(r) });
        }
    }
    let n = msg.bytes;
    (String::from_utf8_lossy(&buf[..n]).into_owned(), fd)
}

#[test]
fn systemds_fd_store_hands_the_segment_to_the_next_daemon() {
    use std::os::unix::process::CommandExt;
    let dir = TempDir::new("restart-fdstore");
    let socket = dir.0.join("bus.sock");
    let notify = dir.0.join("notify.sock");
    let store = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    store.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let flags = grace_flags("5s");
    let mut cmd = Command::new(DAEMON);
    cmd.arg("--socket").arg(&socket).args(&flags).env("NOTIFY_SOCKET", &notify);
    let mut first = Proc::new(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap());
    first.wait_line("shmbusd: ready", Duration::from_secs(10));
    let mut segment = None;
    for _ in 0..4 {
        let (text, fd) = recv_with_fd(&store);
        if text.contains("FDSTORE=1") && text.contains("FDNAME=segment") {
            segment = fd;
            break;
        }
    }
    let segment = segment.expect("FDSTORE=1 came with the segment's fd");
    let bus = bus_client::Bus::builder().socket(&socket).connect().unwrap();
    let sub = bus.subscribe("s").unwrap();
    let mut p = bus.publisher().create().unwrap();
    p.send_bytes("s://x", b"kept").unwrap();

    first.signal(Signal::SIGKILL);
    let _ = first.wait(Duration::from_secs(10));
    // No record beside the socket: the fd store alone brings the segment.
    std::fs::remove_file(format!("{}.segment", socket.display())).unwrap();
    let raw = segment.as_raw_fd();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "LISTEN_PID=$$ exec \"$0\" \"$@\"", DAEMON, "--socket"])
        .arg(&socket)
        .args(&flags)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "segment")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec, only dup2 (async-signal-safe) on a
    // descriptor this process owns, onto fd 3 as sd_listen_fds expects.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut second = Proc::new(cmd.spawn().unwrap());
    let ready = second.wait_line("shmbusd: ready", Duration::from_secs(10));
    assert!(ready.contains("resuming=1"), "{ready}");
    assert_eq!(sub.recv_timeout(Duration::from_secs(10)).unwrap().body_bytes().unwrap(), b"kept");
    p.send_bytes("s://x", b"after").unwrap();
    assert_eq!(sub.recv_timeout(Duration::from_secs(5)).unwrap().body_bytes().unwrap(), b"after");
    assert!(eventually(Duration::from_secs(5), || bus.status().is_ok_and(|s| s.clients == 1)).is_some());
    drop((sub, p, bus));
}

/// A daemon that reads a resumption's hello but answers it late (stopped,
/// overloaded) must not see the client hang up meanwhile: it has given
/// that connection the client's identity, and a hang-up would read as the
/// client's death, so that a live client would be reclaimed and the slots
/// it still uses freed under it. The client waits for the answer until its
/// grace ends, however short its control timeout. Here the "daemon" that
/// takes the hello is the test itself, which answers nothing for three
/// control timeouts, then goes away; the real next daemon then takes the
/// client back, which carries on with what was queued.
#[test]
fn a_client_waits_for_the_answer_to_its_resumption_past_its_control_timeout() {
    use bus_client::control::{self, Received};
    use bus_client::protocol::Request;
    use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};
    use std::os::fd::AsFd;

    let dir = TempDir::new("restart-slow");
    let socket_path = dir.0.join("bus.sock");
    let flags = grace_flags("20s");
    let first = daemon(&socket_path, &args(&flags));
    let bus =
        bus_client::Bus::builder().socket(&socket_path).connect_timeout(Duration::from_secs(1)).connect().unwrap();
    let sub = bus.subscribe("w").unwrap();
    let mut p = bus.publisher().create().unwrap();
    p.send_bytes("w://x", b"queued").unwrap();
    first.signal(Signal::SIGKILL);
    let _ = first.wait(Duration::from_secs(10));

    // The slow "daemon": a listener on the socket, which takes the hello.
    let _ = std::fs::remove_file(&socket_path);
    let listener = socket::socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None).unwrap();
    socket::bind(listener.as_raw_fd(), &UnixAddr::new(&socket_path).unwrap()).unwrap();
    socket::listen(&listener, socket::Backlog::new(16).unwrap()).unwrap();
    let accept = |within: Duration| -> Option<OwnedFd> {
        let mut fds = [nix::poll::PollFd::new(listener.as_fd(), nix::poll::PollFlags::POLLIN)];
        let ms = within.as_millis() as u16;
        if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)).ok()? == 0 {
            return None;
        }
        let raw = socket::accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC).ok()?;
        // SAFETY: accept4 returned a new descriptor that we now own.
        Some(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) })
    };
    let conn = accept(Duration::from_secs(10)).expect("the client comes back to resume");
    let mut buf = Vec::new();
    match control::recv::<Request>(conn.as_fd(), &mut buf).expect("its hello") {
        Received::Packet(Request::Hello { resume: Some(r), .. }, Some(_segment)) => {
            assert_eq!(r.subscriptions.len(), 1, "{:?}", r.subscriptions)
        }
        _ => panic!("expected a resumption's hello with the segment"),
    }
    // Three of its control timeouts: it must still be waiting on this
    // connection, not hung up, and not trying another.
    std::thread::sleep(Duration::from_secs(3));
    let mut byte = [0u8; 1];
    match socket::recv(conn.as_raw_fd(), &mut byte, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT) {
        Err(nix::errno::Errno::EAGAIN) => {}
        other => panic!("the client hung up on a daemon that had its hello, or sent more: {other:?}"),
    }
    assert!(accept(Duration::ZERO).is_none(), "the client gave up on the first daemon and tried again");

    // This "daemon" goes away; the real next one takes the client back.
    drop(conn);
    drop(listener);
    let _ = std::fs::remove_file(&socket_path);
    let second = daemon(&socket_path, &args(&flags));
    assert_eq!(sub.recv_timeout(Duration::from_secs(10)).unwrap().body_bytes().unwrap(), b"queued");
    p.send_bytes("w://x", b"after").unwrap();
    assert_eq!(sub.recv_timeout(Duration::from_secs(5)).unwrap().body_bytes().unwrap(), b"after");
    assert_eq!(bus.status().unwrap().daemon_pid, second.pid() as u32);
}

/// A socket whose listener accepts nothing (a daemon stopped, or wedged,
/// with its listen queue full) costs a client at most its timeouts: a
/// resuming client gives up when its grace ends, its bus can be dropped,
/// and a new connection fails with `Timeout` in its connect timeout,
/// instead of blocking in `connect` until the queue has room.
#[test]
fn a_listener_that_accepts_nothing_costs_a_client_only_its_timeouts() {
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};

    let dir = TempDir::new("restart-full");
    let socket_path = dir.0.join("bus.sock");
    let first = daemon(&socket_path, &args(&grace_flags("2s")));
    let bus =
        bus_client::Bus::builder().socket(&socket_path).connect_timeout(Duration::from_secs(1)).connect().unwrap();
    let _sub = bus.subscribe("w").unwrap();

    // The next "daemon" listens and never accepts; its queue is filled.
    let _ = std::fs::remove_file(&socket_path);
    let listener = socket::socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None).unwrap();
    socket::bind(listener.as_raw_fd(), &UnixAddr::new(&socket_path).unwrap()).unwrap();
    socket::listen(&listener, socket::Backlog::new(1).unwrap()).unwrap();
    let mut queued = Vec::new();
    loop {
        let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
        let s = socket::socket(AddressFamily::Unix, SockType::SeqPacket, flags, None).unwrap();
        match socket::connect(s.as_raw_fd(), &UnixAddr::new(&socket_path).unwrap()) {
            Ok(()) => queued.push(s),
            Err(nix::errno::Errno::EAGAIN) => break,
            Err(e) => panic!("filling the listen queue: {e}"),
        }
        assert!(queued.len() < 64, "the listen queue never filled");
    }

    first.signal(Signal::SIGKILL);
    let _ = first.wait(Duration::from_secs(10));
    let gone = eventually(Duration::from_secs(15), || !bus.is_alive());
    assert!(gone.is_some(), "the client was still waiting on a daemon that accepts nothing, past its 2 s grace");

    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(bus);
        let _ = tx.send(());
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("dropping the bus blocked");

    let started = Instant::now();
    let err = bus_client::Bus::builder()
        .socket(&socket_path)
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .map(drop)
        .expect_err("connected to a listener that accepts nothing");
    assert!(matches!(err, bus_client::ConnectError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3), "connecting took {:?}", started.elapsed());
    drop(queued);
}

/// A daemon killed under a client (a listener of `kept`, in a process of
/// its own, stopped so that it cannot resume), and the next daemon, once it
/// waits for that client.
fn waiting_for_a_stopped_client(socket: &Path, flags: &[String]) -> (Proc, Proc) {
    let first = daemon(socket, &args(flags));
    let listener = listening(socket, "kept", None);
    listener.signal(Signal::SIGSTOP);
    first.signal(Signal::SIGKILL);
    let _ = first.wait(Duration::from_secs(10));
    let mut cmd = Command::new(DAEMON);
    cmd.arg("--socket").arg(socket).args(args(flags)).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut second = Proc::new(cmd.spawn().unwrap());
    let waiting = second.saw_err_line(Duration::from_secs(20), |l| l.contains("waiting for a client to bring it back"));
    assert!(waiting, "the second daemon never waited for the client");
    (listener, second)
}

#[test]
fn sigterm_while_waiting_for_a_resuming_client_stops_at_once_and_leaves_the_segment() {
    let dir = TempDir::new("restart-sigterm");
    let socket = dir.0.join("bus.sock");
    let flags = grace_flags("30s");
    let (listener, second) = waiting_for_a_stopped_client(&socket, &flags);
    let t0 = Instant::now();
    second.signal(Signal::SIGTERM);
    let (st, _, err) = second.wait(Duration::from_secs(10));
    assert!(t0.elapsed() < Duration::from_secs(3), "SIGTERM took {:?}: {err}", t0.elapsed());
    assert!(st.success(), "{err}");
    assert!(err.contains("stopped while waiting"), "{err}");
    assert!(!socket.exists(), "the socket is removed");
    // The segment was left for the next daemon: the client, let go, brings
    // it back there, and its subscription still receives.
    let mut cmd = Command::new(DAEMON);
    cmd.arg("--socket").arg(&socket).args(args(&flags)).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut third = Proc::new(cmd.spawn().unwrap());
    std::thread::sleep(Duration::from_millis(500));
    listener.signal(Signal::SIGCONT);
    let ready = third.wait_line("shmbusd: ready", Duration::from_secs(20));
    assert!(ready.contains("resuming=1"), "{ready}");
    let bus = bus_client::Bus::builder().socket(&socket).connect().unwrap();
    let mut p = bus.publisher().create().unwrap();
    let sent = eventually(Duration::from_secs(20), || p.send_bytes("kept://x", b"after").is_ok());
    assert!(sent.is_some(), "the listener did not resume on the third daemon");
    let (st, out, err) = listener.wait(Duration::from_secs(20));
    assert!(st.success() && out.contains("after"), "{out} {err}");
    drop(third);
}

#[test]
fn a_new_client_during_the_resume_wait_is_told_the_daemon_is_restarting_and_served_when_it_ends() {
    let dir = TempDir::new("restart-newcomer");
    let socket = dir.0.join("bus.sock");
    let flags = grace_flags("30s");
    let (listener, mut second) = waiting_for_a_stopped_client(&socket, &flags);
    // A newcomer whose timeout ends before the wait: told why.
    let short = bus_client::Bus::builder().socket(&socket).connect_timeout(Duration::from_secs(3)).connect();
    match short {
        Err(e @ bus_client::ConnectError::Restarting { .. }) => {
            assert!(e.to_string().contains("is restarting"), "{e}");
        }
        Err(e) => panic!("expected Restarting, got {e:?}"),
        Ok(_) => panic!("served during the resume wait"),
    }
    // One that waits long enough is served once the old client is back.
    let s = socket.clone();
    let patient = std::thread::spawn(move || {
        bus_client::Bus::builder().socket(&s).connect_timeout(Duration::from_secs(60)).connect()
    });
    std::thread::sleep(Duration::from_millis(300));
    listener.signal(Signal::SIGCONT);
    let ready = second.wait_line("shmbusd: ready", Duration::from_secs(20));
    assert!(ready.contains("resuming=1"), "{ready}");
    let bus = patient.join().unwrap().expect("the patient newcomer is served once the daemon runs");
    let mut p = bus.publisher().create().unwrap();
    let sent = eventually(Duration::from_secs(20), || p.send_bytes("kept://x", b"after").is_ok());
    assert!(sent.is_some(), "the listener did not resume");
    let (st, out, err) = listener.wait(Duration::from_secs(20));
    assert!(st.success() && out.contains("after"), "{out} {err}");
}

#[test]
fn a_declared_durable_subsystem_without_room_beside_an_adopted_table_waits_for_room_and_the_bus_survives() {
    let dir = TempDir::new("restart-no-room");
    let socket = dir.0.join("bus.sock");
    let mut flags = grace_flags("20s");
    flags.extend(["--max-subsystems".into(), "2".into()]);
    let first = daemon(&socket, &args(&flags));
    let bus = bus_client::Bus::builder().socket(&socket).connect().unwrap();
    let aa = bus.subscribe("aa").unwrap();
    let bb = bus.subscribe("bb").unwrap();
    first.signal(Signal::SIGKILL);
    let _ = first.wait(Duration::from_secs(10));
    // The next daemon's config declares one more subsystem than the
    // adopted table has room for: it serves anyway.
    flags.extend(["--durable".into(), "audit".into()]);
    let (mut second, ready) = daemon_ready(&socket, &args(&flags));
    assert!(ready.contains("resuming=1"), "{ready}");
    assert!(second.saw_err_line(Duration::from_secs(10), |l| l.contains("durable subsystem audit")));
    let mut p = bus.publisher().create().unwrap();
    p.send_bytes("aa://x", b"kept").expect("the client resumed on the same bus");
    assert_eq!(aa.recv_timeout(Duration::from_secs(5)).unwrap().body_bytes().unwrap(), b"kept");
    // Once an entry frees up, the declaration takes it.
    drop(bb);
    let declared =
        second.saw_err_line(Duration::from_secs(10), |l| l.contains("declared, now that the routing table has room"));
    assert!(declared, "audit was never declared");
    let s = status(&socket);
    let audit = s["subsystems"].as_array().unwrap().iter().find(|x| x["name"] == "audit").cloned();
    assert!(audit.is_some_and(|a| a["durable"] == true), "{s}");
    p.send_bytes("audit://x", b"queued").expect("durable: queued with no subscriber");
}

#[test]
fn clients_that_carry_over_take_the_next_daemons_quota_and_statistics_settings() {
    let dir = TempDir::new("restart-settings");
    let socket = dir.0.join("bus.sock");
    let mut first_flags = grace_flags("20s");
    first_flags.extend(["--max-slots-per-client".into(), "8".into(), "--no-statistics".into()]);
    let first = daemon(&socket, &args(&first_flags));
    let bus = bus_client::Bus::builder().socket(&socket).connect().unwrap();
    let sub = bus.subscribe("q").unwrap();
    let mut p = bus.publisher().create().unwrap();
    first.signal(Signal::SIGKILL);
    let _ = first.wait(Duration::from_secs(10));
    let mut second_flags = grace_flags("20s");
    second_flags.extend(["--max-slots-per-client".into(), "32".into()]);
    let (second, ready) = daemon_ready(&socket, &args(&second_flags));
    assert!(ready.contains("resuming=1"), "{ready}");
    // The client resumed (a control call waits for that) under the new
    // settings: it may hold 20 messages, beyond the old quota of 8, and
    // what it sends is counted now.
    let _other = bus.subscribe("other").expect("the client resumed");
    for i in 0..20u32 {
        p.send_bytes("q://m", &i.to_le_bytes()).unwrap();
    }
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(sub.recv_timeout(Duration::from_secs(5)).expect("within the new quota of 32"));
    }
    let s = status(&socket);
    let q = s["subsystems"].as_array().unwrap().iter().find(|x| x["name"] == "q").unwrap().clone();
    assert_eq!(q["bytes"], 80, "{q}");
    // A third daemon with no quota: the client holds 40 more, past 32.
    second.signal(Signal::SIGKILL);
    let _ = second.wait(Duration::from_secs(10));
    let (third, ready) = daemon_ready(&socket, &args(&grace_flags("20s")));
    assert!(ready.contains("resuming=1"), "{ready}");
    let _again = bus.subscribe("again").expect("the client resumed again");
    for i in 0..40u32 {
        p.send_bytes("q://m", &i.to_le_bytes()).unwrap();
        held.push(sub.recv_timeout(Duration::from_secs(5)).expect("no quota any more"));
    }
    drop(held);
    drop(third);
}

#[test]
fn a_takeover_restart_applies_the_new_configs_durable_and_lossy_declarations() {
    let dir = TempDir::new("restart-config");
    let socket = dir.0.join("bus.sock");
    let config = dir.0.join("shmbusd.toml");
    let start = |text: &str| {
        std::fs::write(&config, format!("resume-grace = \"20s\"\nslots = 512\n{text}")).unwrap();
        let mut cmd = Command::new(DAEMON);
        cmd.arg("--config").arg(&config).arg("--socket").arg(&socket);
        let mut d = Proc::new(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap());
        let ready = d.wait_line("shmbusd: ready", Duration::from_secs(20));
        (d, ready)
    };
    // Before: `keep` durable, and `billing` a group a client made.
    let (first, _) = start("durable = [\"keep\"]\n");
    let bus = bus_client::Bus::builder().socket(&socket).connect().unwrap();
    let billing = bus.subscribe_group("orders", "billing").unwrap();
    // Held for no one by the durable subsystem, so that its entry stays.
    bus.publisher().create().unwrap().send_bytes("keep://x", b"held").unwrap();
    first.signal(Signal::SIGKILL);
    let _ = first.wait(Duration::from_secs(10));
    // After: `keep` no longer durable, `billing` declared, and lossy.
    let (second, ready) = start("[[group]]\nsubsystem = \"orders\"\nname = \"billing\"\nlossy = true\n");
    assert!(ready.contains("resuming=1"), "{ready}");
    let _resumed = bus.subscribe("other").expect("the client resumed");
    let s = status(&socket);
    let entry = |name: &str| s["subsystems"].as_array().unwrap().iter().find(|x| x["name"] == name).cloned();
    // No longer durable; the message it held is kept for a subscriber.
    let keep = entry("keep").expect("listed");
    assert_eq!(keep["durable"], false, "{keep}");
    assert_eq!(keep["queue_depth"], 1, "{keep}");
    let orders = entry("orders").expect("orders listed");
    let group = orders["groups"].as_array().unwrap().iter().find(|g| g["name"] == "billing").unwrap().clone();
    assert_eq!(group["durable"], true, "{group}");
    assert_eq!(group["backpressure"], "lossy", "{group}");
    // The member goes on receiving, and the group keeps messages without
    // it now that it is durable.
    let mut p = bus.publisher().create().unwrap();
    p.send_bytes("orders://1", b"one").unwrap();
    assert!(billing.recv_timeout(Duration::from_secs(5)).is_ok());
    drop(billing);
    let kept = eventually(Duration::from_secs(10), || p.send_bytes("orders://2", b"two").is_ok());
    assert!(kept.is_some(), "a durable group takes messages without members");
    drop(second);
}
