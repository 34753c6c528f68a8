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
                    &Request::Hello { layout_version: bus_core::LAYOUT_VERSION, resume: None, name: None },
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
