//! A test client. `peer ROLE key=value…`, bus from `$SHMBUS_SOCKET`.
//!
//! - `pub path=P publisher=N count=C [trace=T]`: sends `Seq { N, 0..C }`
//!   (with trace id T if given), prints `sent C`.
//! - `sub subsystem=S count=C [timeout_ms=T] [until_idle_ms=I] [record=1]`:
//!   receives C messages (or until none came for I ms after the first), checks per-publisher order, prints `P S R` lines if record=1
//!   (R: 1 if flagged redelivered), then one JSON summary line. Exit 1 if C did not arrive in time.
//! - `hold subsystem=S path=P loans=L hold=H`: takes L loans (never sent)
//!   and receives H messages (never released), prints `holding`, sleeps.
//!
//! Every role that subscribes takes `group=G` (join consumer group G),
//! `tap=1` (subscribe through a tap) and `pause_us=U` (sleep U µs after
//! each message received).
//! - `churn path=P subsystem=S`: sends and receives forever (killed by
//!   the test at a random point).
//! - `busy op=OP subsystem=S`: calls OP (`send`, `loan`, `send_batch`,
//!   `try_recv`, `try_recv_batch`) in a tight loop, draining S with
//!   `try_recv` between sends, until OP fails; then prints
//!   `gone UNIX_NANOS ERROR` and exits 0. OP `recv` blocks in a receive on
//!   an empty queue; `blocked_send` sends without draining, so it ends up
//!   blocked on a full queue.
//! - `forkhold subsystem=S`: receives one message and holds it, forks a
//!   child that sleeps (fork without exec), prints `holding child=PID`.
//! - `cppub publisher=N path=P count=C [until_file=F]`: the crash-point workload's
//!   publisher: a mix of single sends, loans, dropped loans, batches of up
//!   to 8 and of 70 (more than one chunk), pausing now and then; prints
//!   `a SEQ` for every message whose send returned `Ok`, then `done`. With
//!   F, goes on after C messages until F exists.
//! - `cpsub subsystem=S done_file=F [group=G] [tap=1] [pause_us=U] [batch=B]`:
//!   the workload's subscriber, in the default group, consumer group G, or a
//!   tap of its own, sleeping U µs after each message received: receives
//!   one at a time and in batches of up to B (8; 1: one at a time only),
//!   keeps up to 3 messages held, pauses now
//!   and then; prints `g PUBLISHER SEQ REDELIVERED` for every message when it
//!   is received (before it is released). Exits once F exists and nothing
//!   came for 300 ms.
//! - `cpreq path=P done_file=F`: requests in a loop until F exists; any
//!   error is fine (its service may be the one killed), a hang is not.
//! - `aserve subsystem=S`: serves S with an `AsyncRouter` on a tokio
//!   runtime (routes `users/{id}`, `echo/{*rest}`, `big/{n}` (n bytes), `bigignored`, `slow/{ms}` (answers
//!   `slept`, or `slept, redelivered`), `fail`, `panic`, `silent`), prints
//!   `serving`.
//! - `req path=P [seq=K] [timeout_ms=T]`: one request with body
//!   `Seq { 0, K }`; prints `ok PUBLISHER SEQ TRACE` from its typed reply
//!   (`ok raw LEN TRACE` from a raw one), or `err VARIANT: TEXT in MS ms`.
//! - `traces subsystem=S count=N`: prints `trace PATH TRACE REMOTE` for N
//!   messages.
//! - `fork subsystem=S`: holds a received message, forks; the
//!   child tries each kind of call (each must fail with the fork error) and
//!   drops everything; the parent then checks that its own bus still works.

use bus_client::{Bus, Message};
use bus_tests::{kv, Seq};
use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let role = args.first().cloned().unwrap_or_default();
    let get = |k: &str| kv(&args, k);
    let num = |k: &str, d: u64| get(k).map(|v| v.parse().expect("number")).unwrap_or(d);
    let send_timeout = Duration::from_millis(num("send_timeout_ms", 30_000));
    if role == "hellos" {
        // `n` connections that each sent a plain hello and wait for their
        // welcome, held for `hold_ms` (as clients a daemon has not served
        // yet): no `Bus`, which would wait for its own welcome.
        return hellos(num("n", 1) as usize, Duration::from_millis(num("hold_ms", 10_000)));
    }
    let bus = match Bus::builder().send_timeout(send_timeout).connect() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("peer: {e}");
            return ExitCode::from(1);
        }
    };
    let mut out = std::io::stdout().lock();
    match role.as_str() {
        "pub" => {
            let path = get("path").expect("path=");
            let me = num("publisher", 0) as u32;
            let count = num("count", 1);
            let mut p = bus.publisher().create().expect("publisher");
            let trace = num("trace", 0);
            for seq in 0..count {
                let sent = p.loan(&path).and_then(|l| l.write(&Seq { publisher: me, seq })).and_then(|l| {
                    let l = if trace != 0 { l.trace_id(trace) } else { l };
                    l.send().map_err(|f| f.error)
                });
                if let Err(e) = sent {
                    eprintln!("peer pub {me}: message {seq}: {e}");
                    return ExitCode::from(1);
                }
            }
            writeln!(out, "sent {count}").unwrap();
        }
        "sub" => {
            let sub = subscribe(&bus, &get);
            let pause = Duration::from_micros(num("pause_us", 0));
            writeln!(out, "subscribed").unwrap();
            out.flush().unwrap();
            let count = num("count", u64::MAX);
            let idle = get("until_idle_ms").map(|v| Duration::from_millis(v.parse().expect("number")));
            let record = get("record").is_some();
            let deadline = Instant::now() + Duration::from_millis(num("timeout_ms", 60_000));
            let mut next: BTreeMap<u32, u64> = BTreeMap::new();
            let (mut received, mut out_of_order, mut redelivered) = (0u64, 0u64, 0u64);
            let mut ok = true;
            while received < count {
                let wait = deadline.saturating_duration_since(Instant::now());
                let msg = match sub.recv_timeout(idle.map_or(wait, |i| i.min(wait))) {
                    Ok(m) => m,
                    Err(bus_client::RecvError::Timeout(_)) if idle.is_some() && received > 0 => break,
                    Err(e) => {
                        eprintln!("peer sub: after {received}: {e}");
                        ok = false;
                        break;
                    }
                };
                let s = msg.body::<Seq>().expect("a Seq body");
                let (p, n) = (s.publisher.to_native(), s.seq.to_native());
                let e = next.entry(p).or_insert(0);
                if n != *e {
                    out_of_order += 1;
                }
                *e = n + 1;
                redelivered += msg.is_redelivered() as u64;
                if record {
                    writeln!(out, "{p} {n} {}", msg.is_redelivered() as u8).unwrap();
                }
                received += 1;
                std::thread::sleep(pause);
            }
            writeln!(
                out,
                "{{\"received\":{received},\"out_of_order\":{out_of_order},\"redelivered\":{redelivered},\"publishers\":{}}}",
                next.len()
            )
            .unwrap();
            if !ok {
                return ExitCode::from(1);
            }
        }
        "hold" => {
            let path = get("path").expect("path=");
            let sub = subscribe(&bus, &get);
            let mut publishers: Vec<_> =
                (0..num("loans", 0)).map(|_| bus.publisher().create().expect("publisher")).collect();
            let loans: Vec<_> = publishers.iter_mut().map(|p| p.loan(&path).expect("loan")).collect();
            let held: Vec<Message<'_>> = (0..num("hold", 0))
                .map(|_| sub.recv_timeout(Duration::from_secs(30)).expect("a message to hold"))
                .collect();
            writeln!(out, "holding {} loans, {} messages", loans.len(), held.len()).unwrap();
            out.flush().unwrap();
            // With `for_ms`, let them go after that long (of a clock that
            // runs on while the process is stopped).
            if let Some(ms) = get("for_ms").and_then(|v| v.parse().ok()) {
                std::thread::sleep(Duration::from_millis(ms));
                drop(held);
                drop(loans);
                writeln!(out, "released").unwrap();
                out.flush().unwrap();
            }
            std::thread::sleep(Duration::from_secs(600));
        }
        "churn" => {
            let path = get("path").expect("path=");
            let sub = bus.subscribe(&get("subsystem").expect("subsystem=")).expect("subscribe");
            let mut p = bus.publisher().create().expect("publisher");
            writeln!(out, "churning").unwrap();
            out.flush().unwrap();
            let mut seq = 0u64;
            let mut held = Vec::new();
            loop {
                let _ = p.send(&path, &Seq { publisher: std::process::id(), seq });
                seq += 1;
                if let Ok(Some(m)) = sub.try_recv() {
                    // Keep a few received messages alive at any time.
                    held.push(m);
                    if held.len() > 3 {
                        held.remove(0);
                    }
                }
            }
        }
        "serve" => {
            use bus_client::{HandlerError, Router};
            use std::sync::atomic::{AtomicUsize, Ordering};
            static IN_BARRIER: AtomicUsize = AtomicUsize::new(0);
            let subsystem = get("subsystem").expect("subsystem=");
            let router = Router::new(&subsystem)
                .expect("valid subsystem")
                .route("echo/{*rest}", |ctx| Ok(ctx.reply_bytes(ctx.message().body_bytes()?)?))
                .unwrap()
                .route("users/{id}", |ctx| {
                    let id: u32 = ctx.param("id").unwrap_or("").parse().map_err(|_| "id must be a number")?;
                    let asked = ctx.body::<Seq>()?.seq.to_native();
                    Ok(ctx.reply(&Seq { publisher: id, seq: asked + 1 })?)
                })
                .unwrap()
                .route("big/{n}", |ctx| {
                    let n: usize = ctx.param("n").unwrap_or("0").parse().unwrap_or(0);
                    Ok(ctx.reply_bytes(&vec![7u8; n])?)
                })
                .unwrap()
                .route("bigignored", |ctx| {
                    let _ = ctx.reply_bytes(&[7u8; 10_000]); // the failure ignored
                    Ok(())
                })
                .unwrap()
                .route("fail", |_| Err(HandlerError::new("nope")))
                .unwrap()
                .route("panic", |_| panic!("boom"))
                .unwrap()
                .route("slow/{ms}", |ctx| {
                    let ms: u64 = ctx.param("ms").unwrap_or("0").parse().unwrap_or(0);
                    std::thread::sleep(Duration::from_millis(ms));
                    Ok(ctx.reply_bytes(b"slept")?)
                })
                .unwrap()
                .route("forward/{*rest}", |ctx| {
                    ctx.send_bytes("traced://from-handler", b"forwarded")?;
                    Ok(ctx.reply_bytes(b"forwarded")?)
                })
                .unwrap()
                .route("barrier", |ctx| {
                    // Replies only once 3 handlers are in here at once:
                    // proves that workers run handlers concurrently.
                    IN_BARRIER.fetch_add(1, Ordering::SeqCst);
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while IN_BARRIER.load(Ordering::SeqCst) < 3 {
                        if Instant::now() > deadline {
                            return Err("handlers did not run concurrently".into());
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Ok(ctx.reply_bytes(b"together")?)
                })
                .unwrap();
            let service = bus
                .serve(router)
                .workers(num("workers", 1) as usize)
                .batch(num("batch", 1) as usize)
                .start()
                .expect("serve");
            writeln!(out, "serving").unwrap();
            out.flush().unwrap();
            if let Err(e) = service.join() {
                eprintln!("service ended: {e}");
            }
        }
        "aserve" => {
            // The asynchronous service (tokio): the routes of `serve` that
            // it needs, each handler an `async` block.
            use bus_client::{AsyncRouter, HandlerError};
            let subsystem = get("subsystem").expect("subsystem=");
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            let router = AsyncRouter::new(&subsystem)
                .expect("valid subsystem")
                .route("users/{id}", |mut req| async move {
                    let id: u32 = req.param("id").unwrap_or("").parse().map_err(|_| "id must be a number")?;
                    let asked = req.body::<Seq>()?.seq.to_native();
                    tokio::task::yield_now().await;
                    Ok(req.reply(&Seq { publisher: id, seq: asked + 1 })?)
                })
                .unwrap()
                .route("echo/{*rest}", |mut req| async move {
                    let body = req.body_bytes()?.to_vec();
                    Ok(req.reply_bytes(&body)?)
                })
                .unwrap()
                .route("slow/{ms}", |mut req| async move {
                    let ms: u64 = req.param("ms").unwrap_or("0").parse().unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    let answer: &[u8] = if req.is_redelivered() { b"slept, redelivered" } else { b"slept" };
                    Ok(req.reply_bytes(answer)?)
                })
                .unwrap()
                .route("big/{n}", |mut req| async move {
                    let n: usize = req.param("n").unwrap_or("0").parse().unwrap_or(0);
                    Ok(req.reply_bytes(&vec![7u8; n])?)
                })
                .unwrap()
                .route("bigignored", |mut req| async move {
                    let _ = req.reply_bytes(&[7u8; 10_000]); // the failure ignored
                    Ok(())
                })
                .unwrap()
                .route("fail", |_req| async move { Err(HandlerError::new("nope")) })
                .unwrap()
                .route("panic", |_req| async move { panic!("boom") })
                .unwrap()
                .route("silent", |_req| async move { Ok(()) })
                .unwrap();
            let _guard = rt.enter();
            let service = bus.serve_async(router).start().expect("serve");
            writeln!(out, "serving").unwrap();
            out.flush().unwrap();
            if let Err(e) = rt.block_on(service.join()) {
                eprintln!("service ended: {e}");
            }
        }
        "req" => {
            // One typed request (`Seq { 0, seq }`); prints `ok PUBLISHER
            // SEQ TRACE` from the reply, or `err VARIANT: TEXT` and the
            // milliseconds it took.
            let path = get("path").expect("path=");
            let timeout = Duration::from_millis(num("timeout_ms", 10_000));
            let requester = bus.requester().expect("requester");
            let started = Instant::now();
            match requester.request(&path, &Seq { publisher: 0, seq: num("seq", 0) }, timeout) {
                Ok(r) => match r.body::<Seq>() {
                    Ok(s) => {
                        writeln!(out, "ok {} {} {}", s.publisher.to_native(), s.seq.to_native(), r.trace_id()).unwrap()
                    }
                    Err(_) => {
                        writeln!(out, "ok raw {} {}", r.body_bytes().map_or(0, |b| b.len()), r.trace_id()).unwrap()
                    }
                },
                Err(e) => {
                    let variant = format!("{e:?}");
                    let variant = variant.split(['(', ' ', '{']).next().unwrap_or("");
                    writeln!(out, "err {variant}: {e} in {} ms", started.elapsed().as_millis()).unwrap();
                }
            };
        }
        "traces" => {
            // Prints `trace PATH TRACE_ID REMOTE` for each of count=N
            // messages of subsystem=S.
            let sub = subscribe(&bus, &get);
            writeln!(out, "subscribed").unwrap();
            out.flush().unwrap();
            for _ in 0..num("count", 1) {
                match sub.recv_timeout(Duration::from_millis(num("timeout_ms", 30_000))) {
                    Ok(m) => writeln!(out, "trace {} {} {}", m.path(), m.trace_id(), m.is_remote() as u8).unwrap(),
                    Err(e) => {
                        eprintln!("peer traces: {e}");
                        return ExitCode::from(1);
                    }
                }
                out.flush().unwrap();
            }
        }
        "busy" => {
            let subsystem = get("subsystem").expect("subsystem=");
            let op = get("op").expect("op=");
            let path = format!("{subsystem}://busy");
            let sub = bus.subscribe(&subsystem).expect("subscribe");
            let mut p = bus.publisher().create().expect("publisher");
            let mut batch = Vec::new();
            writeln!(out, "ready").unwrap();
            out.flush().unwrap();
            let mut seq = 0u64;
            let error = loop {
                seq += 1;
                let body = Seq { publisher: 0, seq };
                let r: Result<(), String> = match op.as_str() {
                    "send" => p.send(&path, &body).map(drop).map_err(|e| e.to_string()),
                    "loan" => p.loan(&path).map(drop).map_err(|e| e.to_string()),
                    "send_batch" => p.send_batch(&path, &[body]).map(drop).map_err(|e| e.to_string()),
                    "try_recv" => sub.try_recv().map(drop).map_err(|e| e.to_string()),
                    "recv" => sub.recv().map(drop).map_err(|e| e.to_string()),
                    "blocked_send" => p.send(&path, &body).map(drop).map_err(|e| e.to_string()),
                    "try_recv_batch" => {
                        let r = sub.try_recv_batch(&mut batch, 8).map(drop).map_err(|e| e.to_string());
                        batch.clear();
                        r
                    }
                    other => panic!("unknown op {other}"),
                };
                if let Err(e) = r {
                    break e;
                }
                // Keep the queue from filling; errors here are not the op's.
                if op != "blocked_send" {
                    while let Ok(Some(_)) = sub.try_recv() {}
                }
            };
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
            writeln!(out, "gone {now} {error}").unwrap();
        }
        "cppub" => {
            let path = get("path").expect("path=");
            let me = num("publisher", 0) as u32;
            let count = num("count", 1000);
            let until = get("until_file").map(std::path::PathBuf::from);
            let mut p = bus.publisher().create().expect("publisher");
            let mut seq = 0u64;
            let mut batch = Vec::with_capacity(70);
            while seq < count || until.as_ref().is_some_and(|f| !f.exists()) {
                let left = count.saturating_sub(seq).max(70);
                let fail = |e: &dyn std::fmt::Display| -> ExitCode {
                    eprintln!("peer cppub {me}: at {seq}: {e}");
                    ExitCode::from(1)
                };
                match seq % 16 {
                    5 => {
                        // A loan dropped unsent goes back to the cache.
                        drop(p.loan(&path));
                        let loan = match p.loan(&path) {
                            Ok(l) => l,
                            Err(e) => return fail(&e),
                        };
                        let loan = match loan.write(&Seq { publisher: me, seq }) {
                            Ok(l) => l,
                            Err(e) => return fail(&e),
                        };
                        if let Err(e) = loan.send() {
                            return fail(&e.error);
                        }
                        writeln!(out, "a {seq}").unwrap();
                        seq += 1;
                    }
                    9 | 13 => {
                        let n = if seq % 160 == 9 { 70 } else { 8 }.min(left);
                        batch.clear();
                        batch.extend((seq..seq + n).map(|s| Seq { publisher: me, seq: s }));
                        let sent = match p.send_batch(&path, &batch) {
                            Ok(n) => n as u64,
                            Err(e) => {
                                for s in seq..seq + e.sent as u64 {
                                    writeln!(out, "a {s}").unwrap();
                                }
                                return fail(&e.error);
                            }
                        };
                        for s in seq..seq + sent {
                            writeln!(out, "a {s}").unwrap();
                        }
                        seq += sent;
                    }
                    _ => {
                        if let Err(e) = p.send(&path, &Seq { publisher: me, seq }) {
                            return fail(&e);
                        }
                        writeln!(out, "a {seq}").unwrap();
                        seq += 1;
                    }
                }
                if seq % 400 < 2 {
                    // Let the subscribers run dry and go to sleep.
                    std::thread::sleep(Duration::from_millis(15));
                }
            }
            writeln!(out, "done").unwrap();
        }
        "cpsub" => {
            let pause = Duration::from_micros(num("pause_us", 0));
            let most = num("batch", 8).max(1) as usize;
            let sub = subscribe(&bus, &get);
            let done_file = std::path::PathBuf::from(get("done_file").expect("done_file="));
            writeln!(out, "subscribed").unwrap();
            let mut held = std::collections::VecDeque::new();
            let mut batch = Vec::with_capacity(8);
            let mut received = 0u64;
            let mut idle_since = Instant::now();
            let report = |out: &mut std::io::StdoutLock<'_>, m: &Message<'_>| {
                let s = m.body::<Seq>().expect("a Seq body");
                let (p, n) = (s.publisher.to_native(), s.seq.to_native());
                writeln!(out, "g {p} {n} {}", m.is_redelivered() as u8).unwrap();
                (p, n)
            };
            // Printed before the release: a process killed after this line
            // but before the release still holds the message (it is then
            // redelivered, and the duplicate is flagged).
            let release = |out: &mut std::io::StdoutLock<'_>, (p, n, m): (u32, u64, Message<'_>)| {
                writeln!(out, "r {p} {n}").unwrap();
                drop(m);
            };
            loop {
                let got = if received & 1 == 0 || most == 1 {
                    match sub.recv_timeout(Duration::from_millis(50)) {
                        Ok(m) => {
                            let (p, n) = report(&mut out, &m);
                            held.push_back((p, n, m));
                            1
                        }
                        Err(bus_client::RecvError::Timeout(_)) => 0,
                        Err(e) => {
                            eprintln!("peer cpsub: after {received}: {e}");
                            return ExitCode::from(1);
                        }
                    }
                } else {
                    match sub.recv_batch(&mut batch, most, Some(Duration::from_millis(50))) {
                        Ok(n) => {
                            for m in batch.drain(..) {
                                let (p, n) = report(&mut out, &m);
                                held.push_back((p, n, m));
                            }
                            n as u64
                        }
                        Err(bus_client::RecvError::Timeout(_)) => 0,
                        Err(e) => {
                            eprintln!("peer cpsub: after {received}: {e}");
                            return ExitCode::from(1);
                        }
                    }
                };
                while held.len() > 3 {
                    release(&mut out, held.pop_front().expect("not empty"));
                }
                if got > 0 {
                    std::thread::sleep(pause * got as u32);
                    if received / 700 != (received + got) / 700 {
                        // Fall behind for a moment: the queue fills up and
                        // the publishers block and roll back.
                        std::thread::sleep(Duration::from_millis(30));
                    }
                    received += got;
                    idle_since = Instant::now();
                } else {
                    while let Some(h) = held.pop_front() {
                        release(&mut out, h);
                    }
                    if done_file.exists() && idle_since.elapsed() > Duration::from_millis(300) {
                        break;
                    }
                }
            }
            writeln!(out, "received {received}").unwrap();
        }
        "cpreq" => {
            let path = get("path").expect("path=");
            let done_file = std::path::PathBuf::from(get("done_file").expect("done_file="));
            let requester = bus.requester().expect("requester");
            let (mut ok, mut failed) = (0u64, 0u64);
            while !done_file.exists() && bus.is_alive() {
                match requester.request_bytes(&path, b"ping", Duration::from_millis(500)) {
                    Ok(_) => ok += 1,
                    Err(_) => {
                        failed += 1;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
            writeln!(out, "requests {ok} ok {failed} failed").unwrap();
        }
        "forkhold" => {
            let subsystem = get("subsystem").expect("subsystem=");
            let sub = bus.subscribe(&subsystem).expect("subscribe");
            let mut p = bus.publisher().create().expect("publisher");
            p.send(&format!("{subsystem}://held"), &Seq { publisher: 1, seq: 1 }).expect("send");
            let held = sub.recv_timeout(Duration::from_secs(10)).expect("receive");
            drop(p);
            out.flush().unwrap();
            // SAFETY: the child only sleeps and exits.
            match unsafe { nix::unistd::fork() }.expect("fork") {
                nix::unistd::ForkResult::Child => {
                    std::thread::sleep(Duration::from_secs(60));
                    std::process::exit(0);
                }
                nix::unistd::ForkResult::Parent { child } => {
                    writeln!(out, "holding child={child}").unwrap();
                    out.flush().unwrap();
                    std::thread::sleep(Duration::from_secs(600));
                    drop(held);
                }
            }
        }
        "fork" => {
            let subsystem = get("subsystem").expect("subsystem=");
            let path = format!("{subsystem}://forked");
            let sub = bus.subscribe(&subsystem).expect("subscribe");
            let mut p = bus.publisher().create().expect("publisher");
            p.send(&path, &Seq { publisher: 1, seq: 1 }).expect("send");
            let held = sub.recv_timeout(Duration::from_secs(10)).expect("receive");
            out.flush().unwrap();
            // SAFETY: the child only runs this code and exits; it calls
            // async-signal-unsafe functions (allocation, printing), which
            // glibc supports after fork in practice; this is a test.
            match unsafe { nix::unistd::fork() }.expect("fork") {
                nix::unistd::ForkResult::Child => {
                    let mut lines = Vec::new();
                    lines.push(format!("child send: {:?}", p.send(&path, &Seq { publisher: 2, seq: 2 }).err()));
                    lines.push(format!("child loan: {:?}", p.loan(&path).err()));
                    lines.push(format!("child try_recv: {:?}", sub.try_recv().err()));
                    lines.push(format!("child recv: {:?}", sub.recv_timeout(Duration::from_millis(10)).err()));
                    lines.push(format!("child status: {:?}", bus.status().err()));
                    lines.push(format!("child subscribe: {:?}", bus.subscribe(&subsystem).err()));
                    lines.push(format!("child publisher: {:?}", bus.publisher().create().err()));
                    lines.push(format!("child alive: {}", bus.is_alive()));
                    // Dropping the parent's message, publisher, subscriber and
                    // bus here must leave the parent's slots alone.
                    drop(held);
                    drop(p);
                    drop(sub);
                    drop(bus);
                    for l in lines {
                        writeln!(out, "{l}").unwrap();
                    }
                    out.flush().unwrap();
                    std::process::exit(0);
                }
                nix::unistd::ForkResult::Parent { child } => {
                    let st = nix::sys::wait::waitpid(child, None).expect("wait for the child");
                    writeln!(out, "child exited: {st:?}").unwrap();
                    let s = bus.status().expect("status");
                    writeln!(out, "parent sees held={}", s.slots.held).unwrap();
                    assert_eq!(held.body::<Seq>().expect("still ours").seq.to_native(), 1);
                    drop(held);
                    p.send(&path, &Seq { publisher: 1, seq: 3 }).expect("parent send after the fork");
                    let m = sub.recv_timeout(Duration::from_secs(10)).expect("parent receive after the fork");
                    assert_eq!(m.body::<Seq>().unwrap().seq.to_native(), 3);
                    drop(m);
                    drop(p);
                    let s = bus.status().expect("status");
                    writeln!(out, "parent ok free={} total={}", s.slots.free, s.slots.total).unwrap();
                }
            }
        }
        other => {
            eprintln!("peer: unknown role {other:?}");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}

/// Subscribes to `subsystem=`, in `group=` or through a tap (`tap=1`).
fn subscribe(bus: &Bus, get: &dyn Fn(&str) -> Option<String>) -> bus_client::Subscriber {
    let mut builder = bus.subscription(&get("subsystem").expect("subsystem="));
    if let Some(g) = get("group") {
        builder = builder.group(&g);
    }
    if get("tap").as_deref() == Some("1") {
        builder = builder.tap();
    }
    builder.create().expect("subscribe")
}

/// The `hellos` role (see `main`).
fn hellos(n: usize, hold: Duration) -> ExitCode {
    use bus_client::control;
    use bus_client::protocol::Request;
    use std::os::fd::AsFd;
    let socket = std::env::var_os("SHMBUS_SOCKET").expect("SHMBUS_SOCKET");
    let hello = Request::Hello { layout_version: bus_core::LAYOUT_VERSION, resume: None, name: None, waits: false };
    let mut held = Vec::new();
    let until = std::time::Instant::now() + hold;
    while held.len() < n && std::time::Instant::now() < until {
        let deadline = std::time::Instant::now() + Duration::from_millis(200);
        match control::connect(std::path::Path::new(&socket), deadline) {
            Ok(fd) if control::send(fd.as_fd(), &hello, None).is_ok() => held.push(fd),
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    println!("holding {}", held.len());
    std::thread::sleep(until.saturating_duration_since(std::time::Instant::now()));
    ExitCode::SUCCESS
}
