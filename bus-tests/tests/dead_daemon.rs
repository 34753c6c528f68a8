//! A daemon killed under load is noticed by every kind of call within
//! 100 ms. In a file of its own, so that no other test of the same binary
//! runs beside it: seven busy processes on two CPUs are load enough.

mod common;
use common::*;
use nix::sys::signal::Signal;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[test]
fn every_kind_of_call_busy_or_blocked_notices_a_killed_daemon_within_100_ms() {
    let bus = TestBus::start(&["--slots", "1024", "--slot-size", "256"]);
    let ops = ["send", "loan", "send_batch", "try_recv", "try_recv_batch", "recv", "blocked_send"];
    let mut peers: Vec<(&str, Proc)> =
        ops.iter().map(|op| (*op, bus.peer(&["busy", &format!("op={op}"), &format!("subsystem=busy-{op}")]))).collect();
    for (_, p) in &mut peers {
        p.wait_line("ready", Duration::from_secs(10));
    }
    // All of them at full speed, or blocked (the queue of `blocked_send`
    // fills in well under this).
    std::thread::sleep(Duration::from_millis(300));
    let killed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    bus.daemon.signal(Signal::SIGKILL);
    for (op, p) in peers {
        let (st, out, err) = p.wait(Duration::from_secs(10));
        assert!(st.success(), "{op}: {err}");
        let line = out.lines().find(|l| l.starts_with("gone ")).unwrap_or_else(|| panic!("{op}: {out} {err}"));
        let mut parts = line.splitn(3, ' ').skip(1);
        let at: u128 = parts.next().unwrap().parse().unwrap();
        let error = parts.next().unwrap();
        assert!(error.contains("the bus is gone"), "{op}: {error}");
        let after = Duration::from_nanos(at.saturating_sub(killed) as u64);
        assert!(after < Duration::from_millis(100), "{op} noticed the killed daemon only after {after:?}");
    }
}
