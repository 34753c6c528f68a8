//! A forked child cannot use its parent's connection nor hide its death,
//! and a "stopped" word that another process wrote ends no blocked call.
mod common;
use common::*;
use nix::sys::signal::Signal;
use std::time::Duration;

#[test]
fn a_forked_child_cannot_use_its_parents_bus_and_leaves_the_parents_slots_alone() {
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256"]);
    let (st, out, err) = bus.peer(&["fork", "subsystem=forks"]).wait(Duration::from_secs(30));
    assert!(st.success(), "{out}\n{err}");
    for call in ["send", "loan", "try_recv", "recv", "status", "subscribe", "publisher"] {
        let line = out.lines().find(|l| l.starts_with(&format!("child {call}:"))).unwrap_or_else(|| panic!("{out}"));
        assert!(line.contains("Forked"), "{line}");
    }
    assert!(out.contains("child alive: false"), "{out}");
    assert!(out.contains("parent sees held=1"), "the child released the parent's message: {out}");
    assert!(out.contains("parent ok free="), "{out}");
    // The peer exited: every slot is back, none released twice.
    let s = bus.status();
    assert_eq!(s["slots"]["free"], 64, "{s}");
    assert_eq!(s["slots"]["total"], 64);
}

#[test]
fn a_forked_child_does_not_keep_its_killed_parents_connection_alive() {
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256"]);
    let mut parent = bus.peer(&["forkhold", "subsystem=forkheld"]);
    let line = parent.wait_line("holding child=", Duration::from_secs(10));
    let child: i32 = line.trim_start_matches("holding child=").parse().unwrap();
    let child = nix::unistd::Pid::from_raw(child);
    assert_eq!(bus.status()["slots"]["held"], 1);
    parent.signal(Signal::SIGKILL);
    // The child still runs, with a copy of every descriptor but the control
    // socket: the daemon sees the parent's death and redelivers at once.
    let took = eventually(Duration::from_secs(5), || {
        let s = bus.status();
        s["slots"]["held"] == 0 && s["slots"]["queued"] == 1
    });
    let alive = nix::sys::signal::kill(child, None).is_ok();
    let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(child, None);
    assert!(alive, "the child was still running while the parent was reclaimed");
    let took = took.expect("the killed parent's held message was redelivered while its child lives");
    assert!(took < Duration::from_secs(1), "reclaim took {took:?}");
}

#[test]
fn a_stopped_word_written_by_another_process_does_not_make_blocked_callers_give_up() {
    use bus_client::control::{self, Received};
    use bus_client::protocol::{Reply, Request};
    use std::os::fd::AsFd;
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256"]);
    let mut blocked = bus.peer(&["busy", "op=recv", "subsystem=quiet"]);
    blocked.wait_line("ready", Duration::from_secs(10));
    // A faulty process on the bus writes "stopped" into the segment.
    let fd = control::connect(bus.socket(), std::time::Instant::now() + Duration::from_secs(5)).unwrap();
    control::send(
        fd.as_fd(),
        &Request::Hello { layout_version: bus_core::LAYOUT_VERSION, resume: None, name: None, waits: false },
        None,
    )
    .unwrap();
    let mut buf = Vec::new();
    let Ok(Received::Packet(Reply::Welcome { .. }, Some(seg_fd))) = control::recv::<Reply>(fd.as_fd(), &mut buf) else {
        panic!("no welcome with the segment")
    };
    let seg = bus_core::Segment::open(seg_fd).unwrap();
    seg.header().live.daemon_state.store(bus_core::layout::DAEMON_STOPPED, std::sync::atomic::Ordering::Release);
    // The blocked receiver keeps waiting: only the daemon's own hang-up
    // ends it, and the daemon puts its state back.
    assert!(
        !blocked.saw_line("gone ", Duration::from_millis(700)),
        "a blocked receiver gave up on a word another process wrote"
    );
    assert_eq!(bus.status()["slots"]["total"], 64, "the daemon still serves");
    // The real thing still ends it.
    bus.daemon.signal(Signal::SIGKILL);
    let (st, out, err) = blocked.wait(Duration::from_secs(5));
    assert!(st.success() && out.contains("gone "), "{out} {err}");
}
