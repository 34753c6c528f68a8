//! `shmbus-instr [N]`: the hot path's instruction count, for callgrind.
//!
//! Timing on these 2-vCPU VMs drifts with the cache-line hand-off state;
//! instruction counts do not. This program sends N 64-byte raw messages
//! and receives each with `try_recv`, one thread, one in-process daemon, so
//! that no cache line crosses CPUs and only the instructions differ between
//! two builds. Run it at two sizes under callgrind and take the difference,
//! which cancels the start-up:
//!
//! ```sh
//! cargo build --release -p shmbus-benches --bin shmbus-instr
//! for n in 20000 120000; do
//!   valgrind --tool=callgrind --callgrind-out-file=cg.$n target/release/shmbus-instr $n
//! done   # instructions per message = (Ir(120000) - Ir(20000)) / 100000
//! ```
//!
//! A further argument `nostats` turns the statistics off (the daemon's
//! `statistics = false`), to count what they cost; `batch` sends with
//! `send_batch_with` and receives with `try_recv_batch`, 32 at a time;
//! `groups=K` subscribes K groups (fan-out: every message goes to each,
//! and each receives it), so that the count is per message sent.
//! Sending and receiving run in two functions kept out of line, so that
//! `callgrind_annotate --inclusive=yes` shows each side's share
//! (`shmbus_instr::send_side`, `shmbus_instr::receive_side`).
//!
//! The daemon's thread is in the count too (its audit runs twice a second,
//! and the program runs slowly under callgrind): about 10 instructions per
//! message at these sizes.

use std::time::Duration;

fn main() {
    let n: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(200_000);
    let dir = std::env::temp_dir().join(format!("shmbus-instr-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let cfg = bus_daemon::Config {
        bus: "instr".into(),
        socket: dir.join("bus.sock"),
        shape: bus_daemon::config::DEFAULT_SHAPE,
        socket_mode: 0o600,
        durable: Vec::new(),
        groups: Vec::new(),
        quota: 0,
        resume_grace: std::time::Duration::ZERO,
        access: Default::default(),
        metrics: None,
        // `shmbus-instr N nostats`: the same with statistics off.
        statistics: !std::env::args().skip(2).any(|a| a == "nostats"),
    };
    let daemon = bus_daemon::spawn(cfg).expect("start the daemon");
    let bus = bus_client::Bus::builder()
        .socket(daemon.socket())
        .send_timeout(Duration::from_secs(5))
        .connect()
        .expect("connect");
    let groups: usize =
        std::env::args().skip(2).find_map(|a| a.strip_prefix("groups=").and_then(|k| k.parse().ok())).unwrap_or(1);
    let subs: Vec<bus_client::Subscriber> = (0..groups)
        .map(|k| {
            if k == 0 { bus.subscribe("instr") } else { bus.subscribe_group("instr", &format!("g{k}")) }
                .expect("subscribe")
        })
        .collect();
    let mut publisher = bus.publisher().create().expect("publisher");
    let batch = if std::env::args().skip(2).any(|a| a == "batch") { 32 } else { 1 };
    let mut held = Vec::with_capacity(batch);
    let mut bytes = 0u64;
    let mut sent = 0;
    while sent < n {
        let k = (n - sent).min(batch as u64) as usize;
        send_side(&mut publisher, k);
        sent += k as u64;
        for sub in &subs {
            bytes += receive_side(sub, &mut held, batch);
        }
    }
    assert_eq!(bytes, n * 64 * groups as u64, "every message came back to every group");
    drop(held);
    drop(publisher);
    drop(subs);
    drop(bus);
    daemon.stop().expect("stop the daemon");
    let _ = std::fs::remove_dir_all(&dir);
    println!("{n} messages");
}

/// Sends `k` 64-byte raw messages (one `send_bytes`, or one batch).
#[inline(never)]
fn send_side(publisher: &mut bus_client::Publisher, k: usize) {
    if k == 1 {
        publisher.send_bytes("instr://x", &[7u8; 64]).expect("send");
    } else {
        publisher
            .send_batch_with("instr://x", k, |_, body| {
                body[..64].fill(7);
                64
            })
            .expect("send a batch");
    }
}

/// Receives what is queued (one message, or up to `batch`), reads each
/// body's length, and releases them; returns the bytes seen.
#[inline(never)]
fn receive_side<'a>(sub: &'a bus_client::Subscriber, held: &mut Vec<bus_client::Message<'a>>, batch: usize) -> u64 {
    let mut bytes = 0;
    if batch == 1 {
        if let Some(m) = sub.try_recv().expect("receive") {
            bytes += m.body_bytes().expect("a body").len() as u64;
        }
    } else {
        sub.try_recv_batch(held, batch).expect("receive a batch");
        for m in held.drain(..) {
            bytes += m.body_bytes().expect("a body").len() as u64;
        }
    }
    bytes
}
