//! The programs of the bridge benchmark (`bus-bridge/bench/run.sh` starts
//! them): the same workload over plain Zenoh between two processes, and
//! over two buses linked by two bridges. `bridge-bench ROLE [ARGS]`:
//!
//! - `zenoh-sink ENDPOINT N`: listens, counts N samples on `bench/**`
//!   (`$KEY/**` with `KEY` set), prints `rate MSGS_PER_S`.
//! - `zenoh-source ENDPOINT N SIZE`: connects, puts N samples of SIZE bytes
//!   to `bench/x` (`$KEY/x`) as fast as `CongestionControl::Block` lets it.
//!   With `KEY=shmbus/bench`, these two measure one side of a bridge alone.
//! - `zenoh-echo ENDPOINT`: listens; answers queries on `bench/rpc/**` with
//!   their payload, and puts every sample of `bench/ping` to `bench/pong`.
//! - `zenoh-ping ENDPOINT N SIZE` / `zenoh-get ENDPOINT N SIZE`: connects;
//!   N round trips through `zenoh-echo`, prints `p50_ns HALF_RTT` (ping) or
//!   `p50_ns RTT` (get).
//! - `bus-sink SOCKET N`, `bus-source SOCKET N SIZE`, `bus-echo SOCKET`,
//!   `bus-ping SOCKET N SIZE`, `bus-req SOCKET N SIZE`: the same on a bus
//!   (subsystems `bench`, `ping`, `pong`, `rpc`).
//! - With `HOPTRACE` set, `bus-ping` stamps each ping, and every process
//!   on its way records how long ago at each hop ([`bus_bridge::hops`]).
//! - `probe`: the cache-line hand-off between CPUs 0 and 1 right now
//!   (`shmbus bench`'s probe), printed beside every round.

use bus_client::Bus;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use zenoh::qos::CongestionControl;
use zenoh::Wait;

const WARMUP: usize = 1000;

fn session(endpoint: &str, listen: bool) -> zenoh::Session {
    let mut c = zenoh::Config::default();
    let ep = format!("[\"{endpoint}\"]");
    c.insert_json5(if listen { "listen/endpoints" } else { "connect/endpoints" }, &ep).expect("endpoint");
    c.insert_json5("scouting/multicast/enabled", "false").expect("scouting");
    zenoh::open(c).wait().expect("open a zenoh session")
}

fn bus(socket: &str) -> Bus {
    Bus::builder().socket(socket).name("bridge-bench").connect().expect("connect to the bus")
}

/// Polls before a bus client here sleeps (`Subscriber::set_spins`): `SPINS`
/// from the environment, else 200, the bridge's own. Four busy processes
/// share the machine's CPUs with Zenoh's threads here.
fn spins() -> u32 {
    std::env::var("SPINS").ok().and_then(|s| s.parse().ok()).unwrap_or(200)
}

fn p50(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn main() -> ExitCode {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| a.get(i).cloned().unwrap_or_default();
    let num = |i: usize| arg(i).parse::<usize>().expect("a number");
    match arg(0).as_str() {
        "zenoh-sink" => {
            // Counted in Zenoh's callback itself: the baseline pays for no
            // hand-off to another thread.
            use std::sync::atomic::{AtomicUsize, Ordering};
            let s = session(&arg(1), true);
            let n = num(2);
            let (tx, rx) = mpsc::sync_channel(2);
            let seen = AtomicUsize::new(0);
            let _sub = s
                .declare_subscriber(std::env::var("KEY").map_or("bench/**".into(), |k| format!("{k}/**")))
                .callback(move |_| {
                    let k = seen.fetch_add(1, Ordering::Relaxed) + 1;
                    if k == 1 || k == n {
                        let _ = tx.try_send(Instant::now());
                    }
                })
                .wait()
                .unwrap();
            println!("ready");
            let t0 = rx.recv().expect("first");
            let t1 = rx.recv_timeout(Duration::from_secs(60)).expect("the last sample");
            println!("rate {:.0}", (n - 1) as f64 / (t1 - t0).as_secs_f64());
        }
        "zenoh-source" => {
            let s = session(&arg(1), false);
            let key = std::env::var("KEY").map_or("bench/x".into(), |k| format!("{k}/x"));
            let p = s.declare_publisher(key).congestion_control(CongestionControl::Block).wait().unwrap();
            while !p.matching_status().wait().unwrap().matching() {
                std::thread::sleep(Duration::from_millis(10));
            }
            let body = vec![7u8; num(3)];
            for _ in 0..num(2) {
                p.put(body.as_slice()).wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(500)); // let the batch out
        }
        "zenoh-echo" => {
            let s = session(&arg(1), true);
            let _q = s
                .declare_queryable("bench/rpc/**")
                .callback(|q| {
                    let body = q.payload().map(|p| p.to_bytes().into_owned()).unwrap_or_default();
                    let _ = q.reply(q.key_expr().clone(), body).wait();
                })
                .wait()
                .unwrap();
            let pong = s.declare_publisher("bench/pong").congestion_control(CongestionControl::Block).wait().unwrap();
            let _sub = s
                .declare_subscriber("bench/ping")
                .callback(move |x| pong.put(x.payload().clone()).wait().unwrap())
                .wait();
            println!("ready");
            std::thread::sleep(Duration::from_secs(3600));
        }
        "zenoh-ping" => {
            let s = session(&arg(1), false);
            let (tx, rx) = mpsc::channel();
            let _sub = s
                .declare_subscriber("bench/pong")
                .callback(move |_| {
                    let _ = tx.send(Instant::now());
                })
                .wait()
                .unwrap();
            let p = s.declare_publisher("bench/ping").congestion_control(CongestionControl::Block).wait().unwrap();
            while !p.matching_status().wait().unwrap().matching() {
                std::thread::sleep(Duration::from_millis(10));
            }
            std::thread::sleep(Duration::from_millis(200));
            let body = vec![7u8; num(3)];
            let mut v = Vec::new();
            for i in 0..WARMUP + num(2) {
                let t = Instant::now();
                p.put(body.as_slice()).wait().unwrap();
                let back = rx.recv_timeout(Duration::from_secs(5)).expect("a pong");
                if i >= WARMUP {
                    v.push((back - t).as_nanos() as u64 / 2);
                }
            }
            println!("p50_ns {}", p50(v));
        }
        "zenoh-get" => {
            let s = session(&arg(1), false);
            std::thread::sleep(Duration::from_millis(500));
            let body = vec![7u8; num(3)];
            let mut v = Vec::new();
            for i in 0..WARMUP + num(2) {
                let t = Instant::now();
                let replies = s.get("bench/rpc/echo").payload(body.as_slice()).wait().unwrap();
                let r = replies.recv().expect("a reply");
                let dt = t.elapsed().as_nanos() as u64;
                assert!(r.result().is_ok());
                if i >= WARMUP {
                    v.push(dt);
                }
            }
            println!("p50_ns {}", p50(v));
        }
        "bus-sink" => {
            let b = bus(&arg(1));
            let sub = b.subscribe("bench").expect("subscribe");
            sub.set_spins(spins());
            println!("ready");
            let n = num(2);
            sub.recv().expect("first");
            let t0 = Instant::now();
            for _ in 1..n {
                sub.recv_timeout(Duration::from_secs(10)).expect("messages stopped coming");
            }
            println!("rate {:.0}", (n - 1) as f64 / t0.elapsed().as_secs_f64());
        }
        "bus-source" => {
            let b = bus(&arg(1));
            let mut p = b.publisher().create().expect("publisher");
            let body = vec![7u8; num(3)];
            for _ in 0..num(2) {
                p.send_bytes("bench://x", &body).expect("send");
            }
        }
        "bus-echo" => {
            let b = bus(&arg(1));
            let router = bus_client::Router::new("rpc")
                .unwrap()
                .route("echo", |ctx| Ok(ctx.reply_bytes(ctx.message().body_bytes()?)?))
                .unwrap();
            let _service = b.serve(router).start().expect("serve");
            let ping = b.subscribe("ping").expect("subscribe");
            ping.set_spins(spins());
            let mut pong = b.publisher().create().expect("publisher");
            println!("ready");
            loop {
                let m = ping.recv().expect("ping");
                bus_bridge::hops::hop("5-echo-received", "ping", m.body_bytes().unwrap_or_default());
                pong.send_bytes("pong://x", m.body_bytes().unwrap()).expect("pong");
            }
        }
        "bus-ping" => {
            let b = bus(&arg(1));
            let pong = b.subscribe("pong").expect("subscribe");
            pong.set_spins(spins());
            let mut p = b.publisher().create().expect("publisher");
            let mut body = vec![7u8; num(3)];
            let mut v = Vec::new();
            for i in 0..WARMUP + num(2) {
                let t = Instant::now();
                bus_bridge::hops::stamp(&mut body);
                p.send_bytes("ping://x", &body).expect("ping");
                let back = pong.recv_timeout(Duration::from_secs(5)).expect("a pong");
                bus_bridge::hops::hop("6-ping-back", "pong", back.body_bytes().unwrap_or_default());
                drop(back);
                if i >= WARMUP {
                    v.push(t.elapsed().as_nanos() as u64 / 2);
                }
            }
            println!("p50_ns {}", p50(v));
        }
        "bus-req" => {
            let b = bus(&arg(1));
            let r = b.requester().expect("requester");
            let body = vec![7u8; num(3)];
            let mut v = Vec::new();
            for i in 0..WARMUP + num(2) {
                let t = Instant::now();
                let reply = r.request_bytes("rpc://echo", &body, Duration::from_secs(5)).expect("a reply");
                let dt = t.elapsed().as_nanos() as u64;
                drop(reply);
                if i >= WARMUP {
                    v.push(dt);
                }
            }
            println!("p50_ns {}", p50(v));
        }
        "probe" => {
            println!("handoff_ns {:.0}", bus_cli::bench::probe::handoff_ns(Some((0, 1)), 20_000));
        }
        other => {
            eprintln!("bridge-bench: unknown role {other:?}; see the source's header");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
