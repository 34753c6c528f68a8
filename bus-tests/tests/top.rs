//! `shmbus top` in a real terminal: run under tmux against a live bus with
//! traffic, driven with send-keys, read with capture-pane.

mod common;
use common::*;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A private tmux server, killed on drop.
struct Tmux(String);

impl Tmux {
    fn new() -> Tmux {
        Tmux(format!("shmbus-test-{}", std::process::id()))
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux").arg("-L").arg(&self.0).args(args).output().expect("tmux");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A session `name` of `w`×`h` running `shmbus top ARGS` on `socket`;
    /// the pane stays after it exits and shows its exit status.
    fn start(&self, name: &str, w: u16, h: u16, socket: &std::path::Path, args: &str) {
        let cmd = format!("SHMBUS_SOCKET='{}' '{CLI}' top {args}; echo EXIT=$?; sleep 60", socket.display());
        self.run(&["new-session", "-d", "-s", name, "-x", &w.to_string(), "-y", &h.to_string(), &cmd]);
    }

    fn screen(&self, name: &str) -> String {
        self.run(&["capture-pane", "-p", "-t", name])
    }

    fn keys(&self, name: &str, keys: &str) {
        self.run(&["send-keys", "-t", name, keys]);
    }

    /// Waits (10 s at most) for the screen to satisfy `f`.
    fn until(&self, name: &str, what: &str, f: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        let found = eventually(Duration::from_secs(10), || {
            last = self.screen(name);
            f(&last)
        });
        assert!(found.is_some(), "{what}; the screen:\n{last}");
        last
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.run(&["kill-server"]);
    }
}

#[test]
fn top_shows_the_bus_live_answers_its_keys_and_leaves_cleanly() {
    let bus = TestBus::start(&["--slots", "256"]);
    let client = bus_client::Bus::builder().socket(bus.socket()).name("top-traffic").connect().unwrap();
    let sub = client.subscribe("topsub").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = std::thread::spawn({
        let (client, stop) = (client.clone(), stop.clone());
        move || {
            let mut p = client.publisher().create().unwrap();
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..100 {
                    if p.send_bytes("topsub://x", b"0123456789").is_err() {
                        return;
                    }
                    if let Ok(m) = sub.recv_timeout(Duration::from_secs(1)) {
                        drop(m);
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    });
    let tmux = Tmux::new();
    tmux.start("main", 140, 40, bus.socket(), "--interval 300ms");
    // Subsystems with their rates and latency, the pool, the clients.
    let s = tmux.until("main", "no live frame with the subsystem and the traffic's client", |s| {
        s.contains("SUBSYSTEM") && s.contains("topsub") && s.contains("top-traffic") && s.contains("slots 256")
    });
    assert!(s.contains("P99") && s.contains("IN/S"), "{s}");
    let _ = s;
    tmux.until("main", "no rate shown while traffic flows", |s| {
        s.lines().find(|l| l.starts_with("topsub")).and_then(|l| l.split_whitespace().nth(2)).is_some_and(|r| r != "0")
    });

    // c hides the clients, and shows them again.
    tmux.keys("main", "c");
    tmux.until("main", "c did not hide the clients", |s| !s.contains("top-traffic") && s.contains("topsub"));
    tmux.keys("main", "c");
    tmux.until("main", "c did not show the clients again", |s| s.contains("top-traffic"));
    // s moves the sort to the next column (marked), r reverses it.
    tmux.keys("main", "s");
    tmux.until("main", "s did not sort by depth", |s| s.contains("DEPTH▼"));
    tmux.keys("main", "r");
    tmux.until("main", "r did not reverse the sort", |s| s.contains("DEPTH▲"));

    // A small terminal still gets a frame, with fewer columns; a tiny one a
    // clear message.
    // Ctrl-C quits too.
    tmux.start("ctrlc", 100, 20, bus.socket(), "--interval 300ms");
    tmux.until("ctrlc", "no frame", |s| s.contains("topsub"));
    tmux.keys("ctrlc", "C-c");
    tmux.until("ctrlc", "Ctrl-C did not quit", |s| s.contains("EXIT=0"));
    tmux.start("small", 50, 12, bus.socket(), "--interval 300ms");
    let s = tmux.until("small", "no frame on a small terminal", |s| s.contains("topsub"));
    assert!(!s.contains("REDELIV"), "{s}");
    tmux.start("tiny", 20, 4, bus.socket(), "--interval 300ms");
    tmux.until("tiny", "no message on a tiny terminal", |s| s.contains("too small"));

    // q quits cleanly.
    tmux.keys("small", "q");
    tmux.until("small", "q did not quit", |s| s.contains("EXIT=0"));

    // --once prints one frame as text.
    let (st, out, err) = bus.cli(&["top", "--once", "--interval", "300ms"]);
    assert!(st.success(), "{err}");
    assert!(out.contains("topsub") && out.contains("top-traffic") && out.contains("SUBSYSTEM"), "{out}");
    assert!(!out.contains("q quit"), "no key help in a snapshot: {out}");

    // The daemon goes away: top leaves, says why, restores the terminal.
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();
    bus.daemon.signal(nix::sys::signal::Signal::SIGKILL);
    let s = tmux.until("main", "top did not leave when the daemon went away", |s| s.contains("EXIT=1"));
    assert!(s.contains("went away") || s.contains("gone"), "{s}");
    assert!(!s.contains("SUBSYSTEM"), "the live screen was not cleared:\n{s}");
}
