//! The shmbus demo: a publisher process sends 64-byte messages to a
//! subscriber process through a shmbusd, and the demo reports what went
//! through and how fast.
//!
//! `cargo run --release --example demo [COUNT]`
//!
//! It uses the daemon already serving its socket (`$SHMBUS_SOCKET`, else
//! the bus `demo` in the default runtime directory) or, if there is none,
//! hosts one in a thread of its own. Publisher and subscriber are this same
//! program started again with a role argument.

use bus_client::{Bus, ConnectError};
use shmbus_examples::Tick;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

const PATH: &str = "demo://ticks/live";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--subscriber") => subscriber(args[2].parse()?),
        Some("--publisher") => publisher(args[2].parse()?),
        other => {
            let count = other.map(str::parse).transpose()?.unwrap_or(2_000_000u64);
            orchestrate(count)
        }
    }
}

fn orchestrate(count: u64) -> Result<(), Box<dyn std::error::Error>> {
    let socket = bus_client::addr::socket_path(None, Some("demo"));
    let _daemon = match Bus::builder().socket(&socket).connect() {
        Ok(_) => {
            println!("using the shmbusd already serving {}", socket.display());
            None
        }
        Err(ConnectError::NoDaemon { .. }) => {
            let cfg = bus_daemon::FileConfig {
                bus: Some("demo".into()),
                socket: Some(socket.clone()),
                slots: Some(4096),
                slot_size: Some(256),
                queue_capacity: Some(1024),
                ..Default::default()
            }
            .resolve()?;
            let d = bus_daemon::spawn(cfg)?;
            println!("started shmbusd in this process on {} (4096 slots of 256 bytes)", socket.display());
            Some(d)
        }
        Err(e) => return Err(e.into()),
    };
    let exe = std::env::current_exe()?;
    let mut sub = Command::new(&exe)
        .args(["--subscriber", &count.to_string()])
        .env("SHMBUS_SOCKET", &socket)
        .stdout(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(sub.stdout.take().expect("piped")).lines();
    match lines.next() {
        Some(Ok(l)) if l == "ready" => {}
        other => return Err(format!("the subscriber did not start: {other:?}").into()),
    }
    println!("subscriber pid {} is listening on demo://", sub.id());
    let publisher = Command::new(&exe)
        .args(["--publisher", &count.to_string()])
        .env("SHMBUS_SOCKET", &socket)
        .stdout(Stdio::piped())
        .spawn()?;
    println!("publisher pid {} sends {count} messages with 64-byte bodies to {PATH}", publisher.id());
    let pub_out = publisher.wait_with_output()?;
    for l in lines.map_while(Result::ok) {
        println!("  {l}");
    }
    let status = sub.wait()?;
    print!("{}", String::from_utf8_lossy(&pub_out.stdout).lines().map(|l| format!("  {l}\n")).collect::<String>());
    if !status.success() || !pub_out.status.success() {
        return Err("the demo failed (see above)".into());
    }
    Ok(())
}

fn publisher(count: u64) -> Result<(), Box<dyn std::error::Error>> {
    let bus = Bus::connect()?;
    let mut p = bus.publisher().create()?;
    let start = Instant::now();
    for seq in 0..count {
        p.send(PATH, &Tick { seq, payload: [seq as u8; 56] })?;
    }
    let secs = start.elapsed().as_secs_f64();
    println!("publisher: sent {count} in {secs:.3} s");
    Ok(())
}

fn subscriber(count: u64) -> Result<(), Box<dyn std::error::Error>> {
    let bus = Bus::connect()?;
    let sub = bus.subscribe("demo")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    let mut start = None;
    let mut shown = Vec::new();
    let mut last_latency = 0;
    for expected in 0..count {
        let msg = sub.recv_timeout(Duration::from_secs(30))?;
        start.get_or_insert_with(Instant::now);
        let tick = msg.body::<Tick>()?;
        if tick.seq != expected || tick.payload[55] != expected as u8 {
            return Err(format!("message {expected} arrived as {} (lost or reordered)", tick.seq).into());
        }
        if expected < 3 {
            shown.push(format!("received {} seq={} body={} bytes", msg.path(), tick.seq, msg.body_bytes()?.len()));
        }
        if expected + 1 == count {
            last_latency = SystemTime::now().duration_since(msg.timestamp()).map(|d| d.as_nanos()).unwrap_or(0);
        }
    }
    let secs = start.map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0);
    for s in shown {
        writeln!(out, "{s}")?;
    }
    writeln!(out, "...")?;
    writeln!(out, "subscriber: received all {count} in order, every body validated")?;
    writeln!(
        out,
        "throughput: {:.2} M msg/s ({:.0} ns per message), last message {:.1} us after it was sent",
        count as f64 / secs / 1e6,
        secs * 1e9 / count as f64,
        last_latency as f64 / 1e3
    )?;
    Ok(())
}
