//! The child side of the measurements: this executable, started again with
//! `$SHMBUS_BENCH_PEER` holding `ROLE key=value…`.
//!
//! - `recv transport=T size=B touch=header|full [subsystem=S] [fd=N]`:
//!   receives a stream (`async=1`: as a tokio task); on FLUSH prints `ack RECEIVED LOST T_LAST_NS` and
//!   starts a new round; exits on STOP.
//! - `echo transport=T size=B [wait=busy|sleep|async] [subsystem=S reply=R] [fd=N | fds=R,W]`:
//!   sends every message straight back; exits on STOP.
//! - `send subsystem=S size=B id=I (duration_ms=D | count=N) [batch=K]`:
//!   publishes for D ms or N messages (the 4 → 1 measurement), `K` per
//!   call with `batch` (for profiling a batched stream), then a STOP, and
//!   prints `sent N`.
//!
//! - `idle subsystem=S seconds=N [async=1]`: waits N s on a queue nobody
//!   sends to, then prints `idle CPU_US CONTEXT_SWITCHES` (this process).
//!
//! Every role takes `cpu=C` to pin itself and prints `ready` once set up.

use super::link::{check, fill, mono_ns, parse_transport, send_seq, Touch, Transport, FLUSH, STOP};
use bus_client::Bus;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

/// Polls before a throughput receiver sleeps (a few milliseconds).
const RECEIVER_SPINS: u32 = 1 << 21;

fn kv<'a>(spec: &'a str, key: &str) -> Option<&'a str> {
    spec.split_whitespace().find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

fn inherited(raw: &str) -> std::io::Result<OwnedFd> {
    let fd: i32 = raw.parse().map_err(|_| std::io::Error::other(format!("bad fd {raw:?}")))?;
    // SAFETY: the parent made this descriptor inheritable for us and passed
    // its number; nothing else in this process owns it. If it is not open,
    // the check below fails and dropping it is a harmless EBADF.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    nix::fcntl::fcntl(&owned, nix::fcntl::FcntlArg::F_GETFD)?;
    Ok(owned)
}

/// Runs the role in `spec`; returns the exit code.
pub fn run(spec: &str) -> i32 {
    match run_inner(spec) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bench peer ({spec}): {e}");
            1
        }
    }
}

fn run_inner(spec: &str) -> std::io::Result<()> {
    // A peer given no CPU runs where its parent was allowed to
    // (`Peer::spawn` starts it unpinned).
    if let Some(c) = kv(spec, "cpu").and_then(|c| c.parse().ok()) {
        super::pin(c);
    }
    let role = spec.split_whitespace().next().unwrap_or("");
    let size: usize = kv(spec, "size").and_then(|s| s.parse().ok()).unwrap_or(8).max(8);
    let touch = if kv(spec, "touch") == Some("full") { Touch::Full } else { Touch::Header };
    let transport = kv(spec, "transport").and_then(parse_transport);
    let mut out = std::io::stdout().lock();
    let bus = || Bus::builder().send_timeout(Duration::from_secs(30)).connect().map_err(std::io::Error::other);
    match (role, transport) {
        ("recv", Some(Transport::Shmbus)) => {
            let bus = bus()?;
            let mut builder = bus.subscription(kv(spec, "subsystem").unwrap_or("bench"));
            if let Some(g) = kv(spec, "group") {
                builder = builder.group(g);
            }
            if kv(spec, "tap") == Some("1") {
                builder = builder.tap();
            }
            let sub = builder.create().map_err(std::io::Error::other)?;
            // A throughput receiver busy-polls while messages flow (as in the
            // reference figures of other buses): it spins for milliseconds
            // before it sleeps, so it sleeps only between rounds. With the
            // default few microseconds, a receiver that catches up sleeps,
            // and the ~40 us wake-up lets the queue fill. `spins=` overrides.
            sub.set_spins(kv(spec, "spins").and_then(|n| n.parse().ok()).unwrap_or(RECEIVER_SPINS));
            if let Some(n) = kv(spec, "pause").and_then(|n| n.parse().ok()) {
                sub.set_poll_pause(n);
            }
            writeln!(out, "ready")?;
            out.flush()?;
            let mut tally = Tally::default();
            if kv(spec, "async") == Some("1") {
                // As the loop at the end, as a tokio task.
                let spins = kv(spec, "spins").and_then(|n| n.parse().ok()).unwrap_or(RECEIVER_SPINS);
                let mut sub = sub.into_async();
                sub.set_spins(spins);
                return super::link::async_runtime()?.block_on(async {
                    loop {
                        let m = sub.recv().await.map_err(std::io::Error::other)?;
                        let seq = check(m.body_bytes().map_err(std::io::Error::other)?, touch);
                        drop(m);
                        if tally.see(seq, &mut out)? {
                            return Ok(());
                        }
                    }
                });
            }
            let batch: usize = kv(spec, "batch").and_then(|b| b.parse().ok()).unwrap_or(1);
            if let Some(poll) = kv(spec, "poll_us").and_then(|p| p.parse::<u64>().ok()) {
                // Never asleep on the doorbell (publishers never pay a
                // wake-up for it): a monitor looks every `poll` µs and takes
                // what is there; with `poll_us=0` it busy-polls, yielding
                // the CPU when its queue is empty (for more receivers than
                // CPUs).
                let mut msgs = Vec::with_capacity(batch);
                loop {
                    if sub.try_recv_batch(&mut msgs, batch).map_err(std::io::Error::other)? == 0 {
                        if poll == 0 {
                            std::thread::yield_now();
                        } else {
                            std::thread::sleep(Duration::from_micros(poll));
                        }
                    }
                    for m in msgs.drain(..) {
                        let seq = check(m.body_bytes().map_err(std::io::Error::other)?, touch);
                        drop(m);
                        if tally.see(seq, &mut out)? {
                            return Ok(());
                        }
                    }
                }
            }
            if batch > 1 {
                let mut msgs = Vec::with_capacity(batch);
                loop {
                    sub.recv_batch(&mut msgs, batch, Some(Duration::from_secs(60))).map_err(std::io::Error::other)?;
                    for m in msgs.drain(..) {
                        let seq = check(m.body_bytes().map_err(std::io::Error::other)?, touch);
                        drop(m);
                        if tally.see(seq, &mut out)? {
                            return Ok(());
                        }
                    }
                }
            }
            loop {
                let m = sub.recv_timeout(Duration::from_secs(60)).map_err(std::io::Error::other)?;
                let seq = check(m.body_bytes().map_err(std::io::Error::other)?, touch);
                drop(m);
                if tally.see(seq, &mut out)? {
                    return Ok(());
                }
            }
        }
        ("recv", Some(Transport::Uds | Transport::Pipe)) => {
            let mut f = std::fs::File::from(inherited(kv(spec, "fd").unwrap_or(""))?);
            writeln!(out, "ready")?;
            out.flush()?;
            let mut buf = vec![0u8; size];
            let mut tally = Tally::default();
            loop {
                f.read_exact(&mut buf)?;
                if tally.see(check(&buf, touch), &mut out)? {
                    return Ok(());
                }
            }
        }
        ("echo", Some(Transport::Shmbus)) => {
            let bus = bus()?;
            let sub = bus.subscribe(kv(spec, "subsystem").unwrap_or("ping")).map_err(std::io::Error::other)?;
            let busy = kv(spec, "wait").is_none_or(|w| w == "busy");
            if !busy {
                sub.set_spins(0);
            }
            let mut p = bus.publisher().create().map_err(std::io::Error::other)?;
            let reply = format!("{}://x", kv(spec, "reply").unwrap_or("pong"));
            writeln!(out, "ready")?;
            out.flush()?;
            if kv(spec, "wait") == Some("async") {
                let mut sub = sub.into_async();
                sub.set_spins(0);
                return super::link::async_runtime()?.block_on(async {
                    loop {
                        let m = sub.recv().await.map_err(std::io::Error::other)?;
                        let seq = check(m.body_bytes().map_err(std::io::Error::other)?, Touch::Header).unwrap_or(0);
                        drop(m);
                        if seq == STOP {
                            return Ok(());
                        }
                        send_seq(&mut p, &reply, seq, size)?;
                    }
                });
            }
            loop {
                let m = if busy {
                    match sub.try_recv().map_err(std::io::Error::other)? {
                        Some(m) => m,
                        None => {
                            std::hint::spin_loop();
                            continue;
                        }
                    }
                } else {
                    sub.recv_timeout(Duration::from_secs(60)).map_err(std::io::Error::other)?
                };
                let seq = check(m.body_bytes().map_err(std::io::Error::other)?, Touch::Header).unwrap_or(0);
                drop(m);
                if seq == STOP {
                    return Ok(());
                }
                send_seq(&mut p, &reply, seq, size)?;
            }
        }
        ("echo", Some(Transport::Uds | Transport::Pipe)) => {
            let fds: Vec<&str> = kv(spec, "fds").unwrap_or("").split(',').collect();
            let (mut rx, mut tx) = match fds.as_slice() {
                [one] => {
                    let f = std::fs::File::from(inherited(one)?);
                    (f.try_clone()?, f)
                }
                [r, w] => (std::fs::File::from(inherited(r)?), std::fs::File::from(inherited(w)?)),
                _ => return Err(std::io::Error::other("echo needs fds=")),
            };
            writeln!(out, "ready")?;
            out.flush()?;
            let mut buf = vec![0u8; size];
            loop {
                rx.read_exact(&mut buf)?;
                if check(&buf, Touch::Header) == Some(STOP) {
                    return Ok(());
                }
                tx.write_all(&buf)?;
            }
        }
        ("echo", Some(Transport::Futex)) => {
            let words = bus_core::futex::SharedWords::open(inherited(kv(spec, "fd").unwrap_or(""))?, 2)?;
            writeln!(out, "ready")?;
            out.flush()?;
            let mut seen = 0u32;
            loop {
                // SYNC: futex-baseline — pairs with the parent's Release
                // store of word 0; our store of word 1 pairs with its load.
                let v = words.word(0).load(std::sync::atomic::Ordering::Acquire);
                if v == seen {
                    bus_core::futex::wait(words.word(0), seen, Some(Duration::from_secs(60)));
                    continue;
                }
                if v == u32::MAX {
                    return Ok(());
                }
                seen = v;
                words.word(1).store(v, std::sync::atomic::Ordering::Release);
                bus_core::futex::wake(words.word(1), 1);
            }
        }
        ("send", _) => {
            let bus = bus()?;
            let mut p = bus.publisher().create().map_err(std::io::Error::other)?;
            let path = format!("{}://x", kv(spec, "subsystem").unwrap_or("bench"));
            let id: u64 = kv(spec, "id").and_then(|s| s.parse().ok()).unwrap_or(0);
            let ms: u64 = kv(spec, "duration_ms").and_then(|s| s.parse().ok()).unwrap_or(200);
            // With count=N: exactly N messages; else for duration_ms.
            let count: Option<u64> = kv(spec, "count").and_then(|s| s.parse().ok());
            writeln!(out, "ready")?;
            out.flush()?;
            // The parent starts all senders, then reads their `ready`; a few
            // ms of skew do not matter: it times first to last receipt.
            let end = mono_ns() + ms * 1_000_000;
            let mut n = 0u64;
            let batch: u64 = kv(spec, "batch").and_then(|b| b.parse().ok()).unwrap_or(1).max(1);
            while batch > 1 && count.map_or(mono_ns() < end, |c| n < c) {
                let k = count.map_or(batch, |c| (c - n).min(batch)) as usize;
                p.send_batch_with(&path, k, |i, body| {
                    fill(&mut body[..size], n + i as u64, Touch::Header);
                    body[8..16].copy_from_slice(&id.to_le_bytes());
                    size
                })
                .map_err(std::io::Error::other)?;
                n += k as u64;
            }
            while count.map_or(mono_ns() < end, |c| n < c) {
                for _ in 0..count.map_or(64, |c| (c - n).min(64)) {
                    let mut loan = p.loan(&path).map_err(std::io::Error::other)?;
                    let body = &mut loan.body_mut()[..size];
                    fill(body, n, Touch::Header);
                    body[8..16].copy_from_slice(&id.to_le_bytes());
                    loan.commit(size)
                        .map_err(std::io::Error::other)?
                        .send()
                        .map_err(|e| std::io::Error::other(e.error))?;
                    n += 1;
                }
            }
            let mut loan = p.loan(&path).map_err(std::io::Error::other)?;
            let body = &mut loan.body_mut()[..size];
            fill(body, STOP, Touch::Header);
            body[8..16].copy_from_slice(&id.to_le_bytes());
            loan.commit(size).map_err(std::io::Error::other)?.send().map_err(|e| std::io::Error::other(e.error))?;
            writeln!(out, "sent {n}")?;
            Ok(())
        }
        ("idle", _) => {
            // Subscribes, then waits for `seconds` on a queue nobody sends
            // to; prints what the wait cost this process: `idle CPU_US
            // CONTEXT_SWITCHES`.
            let bus = bus()?;
            let sub = bus.subscribe(kv(spec, "subsystem").unwrap_or("bench-idle")).map_err(std::io::Error::other)?;
            let secs: u64 = kv(spec, "seconds").and_then(|s| s.parse().ok()).unwrap_or(10);
            let asynchronous = kv(spec, "async") == Some("1");
            let rt = super::link::async_runtime()?;
            writeln!(out, "ready")?;
            out.flush()?;
            let before = super::idle::usage();
            let got = if asynchronous {
                let mut sub = sub.into_async();
                rt.block_on(async { tokio::time::timeout(Duration::from_secs(secs), sub.recv()).await.is_ok() })
            } else {
                sub.recv_timeout(Duration::from_secs(secs)).is_ok()
            };
            let after = super::idle::usage();
            if got {
                return Err(std::io::Error::other("a message arrived on the idle queue"));
            }
            writeln!(out, "idle {} {}", after.0 - before.0, after.1 - before.1)?;
            Ok(())
        }
        ("serve", _) => {
            // A service for the request measurements: echoes the body.
            let bus = bus()?;
            let subsystem = kv(spec, "subsystem").unwrap_or("bench-svc");
            let workers: usize = kv(spec, "workers").and_then(|w| w.parse().ok()).unwrap_or(1);
            let router = bus_client::Router::new(subsystem)
                .map_err(std::io::Error::other)?
                .route("echo/{*rest}", |ctx| Ok(ctx.reply_bytes(ctx.message().body_bytes()?)?))
                .map_err(std::io::Error::other)?;
            let mut serve = bus.serve(router).workers(workers);
            if let Some(n) = kv(spec, "spins").and_then(|n| n.parse().ok()) {
                serve = serve.spins(n);
            }
            if let Some(n) = kv(spec, "batch").and_then(|n| n.parse().ok()) {
                serve = serve.batch(n);
            }
            let service = serve.start().map_err(std::io::Error::other)?;
            writeln!(out, "ready")?;
            out.flush()?;
            service.join().map_err(std::io::Error::other)
        }
        _ => Err(std::io::Error::other(format!("unknown peer role {spec:?}"))),
    }
}

/// Counts a round: received, lost (gaps and torn bodies), and the time the
/// round ended.
#[derive(Default)]
struct Tally {
    next: u64,
    received: u64,
    lost: u64,
    last_ns: u64,
}

impl Tally {
    /// Accounts for one message; returns true on STOP.
    fn see(&mut self, seq: Option<u64>, out: &mut impl Write) -> std::io::Result<bool> {
        match seq {
            Some(STOP) => return Ok(true),
            Some(FLUSH) => {
                // FLUSH follows the round's last message at once: its
                // arrival time is the round's end (one clock read per round,
                // not one per message).
                self.last_ns = mono_ns();
                writeln!(out, "ack {} {} {}", self.received, self.lost, self.last_ns)?;
                out.flush()?;
                *self = Tally::default();
            }
            Some(s) => {
                self.received += 1;
                self.lost += s.saturating_sub(self.next);
                self.next = s + 1;
            }
            None => {
                self.lost += 1;
                self.next += 1;
            }
        }
        Ok(false)
    }
}
