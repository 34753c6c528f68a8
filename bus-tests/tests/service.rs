//! shmbusd under systemd: `Type=notify` (READY=1, STOPPING=1, a status
//! line) and the watchdog (WATCHDOG=1 at half of `WATCHDOG_USEC`), spoken to
//! a socket standing in for systemd's.

mod common;
use common::*;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Datagrams received on `sock` until one contains `want` (deadline 10 s).
fn until(sock: &UnixDatagram, want: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(deadline - Instant::now())).unwrap();
        let Ok(n) = sock.recv(&mut buf) else { break };
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        let done = text.lines().any(|l| l == want);
        seen.push(text);
        if done {
            return seen;
        }
    }
    panic!("no {want} from the daemon within 10 s; got {seen:?}");
}

#[test]
fn the_daemon_notifies_ready_pings_the_watchdog_and_notifies_stopping() {
    let dir = TempDir::new("notify");
    let notify = dir.0.join("notify.sock");
    let sock = UnixDatagram::bind(&notify).unwrap();
    let socket = dir.0.join("bus.sock");
    // As systemd starts it: WATCHDOG_PID names the daemon's own pid (the
    // shell's, which exec keeps).
    let daemon = Proc::new(
        Command::new("sh")
            .args(["-c", "WATCHDOG_PID=$$ exec \"$0\" --socket \"$1\"", DAEMON])
            .arg(&socket)
            .env("NOTIFY_SOCKET", &notify)
            .env("WATCHDOG_USEC", "200000")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let ready = until(&sock, "READY=1");
    let last = ready.last().unwrap();
    assert!(last.contains("STATUS=serving bus"), "{last}");
    // Ready means ready: a client connects at once.
    assert!(socket.exists());
    let bus = bus_client::Bus::builder().socket(&socket).connect().expect("connect once READY=1 is sent");
    // Two pings within a few intervals of 200 ms.
    let start = Instant::now();
    until(&sock, "WATCHDOG=1");
    until(&sock, "WATCHDOG=1");
    assert!(start.elapsed() < Duration::from_secs(2), "pings came {:?} apart", start.elapsed() / 2);
    drop(bus);
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    until(&sock, "STOPPING=1");
    let (st, _, err) = daemon.wait(Duration::from_secs(10));
    assert!(st.success(), "{err}");
}
