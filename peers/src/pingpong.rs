//! `--latency`: iceoryx2 busy-poll ping-pong between two processes, the
//! counterpart of `shmbus bench --only latency` (busy-polling receiver).
//!
//! The parent (pinned to CPU 0) publishes a payload of 8, 64 or 4096 bytes
//! on a "ping" service; the child (this executable again, with
//! `ICEORYX2_BENCH_ROLE=echo`, pinned to CPU 1) busy-polls it and publishes
//! the same payload back on a "pong" service, which the parent busy-polls.
//! The parent times each round trip; one-way latency is half of it. Both
//! sides write their payload whole (`loan_uninit` + `write_payload`) and
//! read it whole (a copy out of the sample).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use iceoryx2::port::update_connections::UpdateConnections;
use iceoryx2::prelude::*;
use iceoryx2::service::port_factory::publish_subscribe::PortFactory as PubSub;

const SIZE_ENV: &str = "ICEORYX2_BENCH_SIZE";

/// A payload whose first word is the sequence number.
pub trait Payload: ZeroCopySend + Copy + core::fmt::Debug + 'static {
    fn with_seq(seq: u64) -> Self;
    fn seq(&self) -> u64;
}

macro_rules! payload {
    ($name:ident, $size:expr) => {
        #[derive(Debug, Clone, Copy, ZeroCopySend)]
        #[repr(C)]
        pub struct $name {
            seq: u64,
            pad: [u8; $size - 8],
        }
        const _: () = assert!(core::mem::size_of::<$name>() == $size);
        impl Payload for $name {
            fn with_seq(seq: u64) -> Self {
                $name { seq, pad: [seq as u8; $size - 8] }
            }
            fn seq(&self) -> u64 {
                self.seq
            }
        }
    };
}

payload!(P8, 8);
payload!(P64, 64);
payload!(P4096, 4096);

/// Sequence number that ends the echo.
const STOP: u64 = u64::MAX;

/// The ping and the pong service of one measurement.
type Pair<T> = (PubSub<ipc::Service, T, ()>, PubSub<ipc::Service, T, ()>);

fn services<T: Payload>(
    node: &Node<ipc::Service>,
    prefix: &str,
    create: bool,
) -> Result<Pair<T>, Box<dyn std::error::Error>> {
    let open = |suffix: &str| -> Result<PubSub<ipc::Service, T, ()>, Box<dyn std::error::Error>> {
        let name = format!("{prefix}/{suffix}");
        let b = node.service_builder(&name.as_str().try_into()?).publish_subscribe::<T>().history_size(0);
        Ok(if create { b.max_publishers(1).max_subscribers(1).create()? } else { b.open()? })
    };
    Ok((open("ping")?, open("pong")?))
}

/// The child: echoes every ping as a pong until the stop payload.
pub fn echo_main() -> Result<(), Box<dyn std::error::Error>> {
    crate::set_affinity(Some(1))?;
    let prefix = std::env::var(crate::SERVICE_ENV)?;
    match std::env::var(SIZE_ENV)?.as_str() {
        "8" => echo::<P8>(&prefix),
        "64" => echo::<P64>(&prefix),
        _ => echo::<P4096>(&prefix),
    }
}

fn echo<T: Payload>(prefix: &str) -> Result<(), Box<dyn std::error::Error>> {
    let node = NodeBuilder::new().create::<ipc::Service>()?;
    let (ping, pong) = services::<T>(&node, prefix, false)?;
    let sub = ping.subscriber_builder().create()?;
    let publisher = pong.publisher_builder().create()?;
    println!("ready");
    std::io::stdout().flush()?;
    loop {
        if let Some(sample) = sub.receive()? {
            let m: T = *sample.payload();
            drop(sample);
            publisher.loan_uninit()?.write_payload(m).send()?;
            if m.seq() == STOP {
                return Ok(());
            }
        } else {
            std::hint::spin_loop();
        }
    }
}

/// One measurement: `n` timed round trips after a warm-up; returns the
/// sorted one-way latencies (round trip / 2) in ns.
pub fn measure<T: Payload>(
    node: &Node<ipc::Service>,
    size: usize,
    n: usize,
) -> Result<Vec<u64>, Box<dyn std::error::Error>> {
    crate::set_affinity(Some(0))?;
    let prefix = format!("shmbus-peers/iceoryx2-bench/{}/pingpong/{size}/{}", std::process::id(), crate::now_ns());
    let (ping, pong) = services::<T>(node, &prefix, true)?;
    let publisher = ping.publisher_builder().create()?;
    let sub = pong.subscriber_builder().create()?;
    let mut child = Command::new(std::env::current_exe()?)
        .env(crate::ROLE_ENV, "echo")
        .env(crate::SERVICE_ENV, &prefix)
        .env(SIZE_ENV, size.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()?;
    let result = (|| -> Result<Vec<u64>, Box<dyn std::error::Error>> {
        let t = Instant::now();
        while ping.dynamic_config().number_of_subscribers() < 1 || pong.dynamic_config().number_of_publishers() < 1 {
            if t.elapsed() > Duration::from_secs(20) {
                return Err("the echo process did not connect within 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        publisher.update_connections()?;
        sub.update_connections()?;
        let warm = n / 10;
        let mut out = Vec::with_capacity(n);
        for seq in 0..(warm + n) as u64 {
            let t0 = Instant::now();
            publisher.loan_uninit()?.write_payload(T::with_seq(seq)).send()?;
            loop {
                if let Some(sample) = sub.receive()? {
                    let m: T = *sample.payload();
                    if m.seq() != seq {
                        return Err(format!("pong {} for ping {seq}", m.seq()).into());
                    }
                    break;
                }
                if t0.elapsed() > Duration::from_secs(10) {
                    return Err(format!("no pong for ping {seq} within 10 s").into());
                }
                std::hint::spin_loop();
            }
            if seq >= warm as u64 {
                out.push(t0.elapsed().as_nanos() as u64 / 2);
            }
        }
        Ok(out)
    })();
    let _ = publisher.loan_uninit().map(|s| s.write_payload(T::with_seq(STOP)).send());
    let waited = Instant::now();
    while child.try_wait()?.is_none() {
        if waited.elapsed() > Duration::from_secs(5) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.wait();
    let mut out = result?;
    out.sort_unstable();
    Ok(out)
}

/// Runs every size `rounds` times and prints one line per run.
pub fn run(node: &Node<ipc::Service>, rounds: usize, n: usize, probe: bool) -> Result<(), Box<dyn std::error::Error>> {
    println!(
        "# iceoryx2 {} ping-pong, busy-poll both sides, one-way = round trip / 2, {n} round trips per run",
        crate::ICEORYX2_VERSION
    );
    for round in 1..=rounds {
        for size in [8usize, 64, 4096] {
            let handoff = if probe { crate::handoff_ns() } else { f64::NAN };
            let v = match size {
                8 => measure::<P8>(node, size, n)?,
                64 => measure::<P64>(node, size, n)?,
                _ => measure::<P4096>(node, size, n)?,
            };
            let pct = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
            println!(
                "latency size={size} round={round} p50_ns={} p99_ns={} p999_ns={} handoff_ns={handoff:.0}",
                pct(0.5),
                pct(0.99),
                pct(0.999)
            );
        }
    }
    Ok(())
}
