//! Two buses bridged: what runs on two hosts, runnable on one.
//!
//! ```sh
//! cargo run --release --example bridged -- a     # host A: serves users, reads sensors
//! cargo run --release --example bridged -- b     # host B: sends sensor readings, asks users
//! ```
//!
//! Each side starts its own daemon (bus `bridge-a` or `bridge-b`) and a
//! bridge in this process. A exports `users` and `sensors` and listens on
//! `tcp/127.0.0.1:7447` (`a tcp/0.0.0.0:7447` to listen elsewhere); B
//! imports them and connects there (`b tcp/HOST_A:7447` for another host).
//! The programs on either side are ordinary bus clients: B's publisher and
//! requester do not know that `users` and `sensors` are served elsewhere.

use bus_bridge::config::Config;
use bus_client::{Bus, ReplyError, Router};
use shmbus_examples::{User, UserQuery};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let side = args.get(1).map(String::as_str).unwrap_or("");
    let endpoint = args.get(2).cloned().unwrap_or_else(|| "tcp/127.0.0.1:7447".into());
    match side {
        "a" => host_a(endpoint),
        "b" => host_b(endpoint),
        _ => Err(
            "say which host: `a` (serves users, reads sensors) or `b` (sends and asks), then optionally an endpoint"
                .into(),
        ),
    }
}

/// Starts the daemon of bus `name` in this process, and a bridge with
/// `setup` applied on a thread. Returns the bus socket and what keeps
/// them running.
fn start(
    name: &str,
    setup: impl FnOnce(&mut Config),
) -> Result<(bus_daemon::DaemonHandle, Bus), Box<dyn std::error::Error>> {
    let socket = bus_client::addr::socket_path(None, Some(name));
    let cfg = bus_daemon::FileConfig { bus: Some(name.into()), socket: Some(socket.clone()), ..Default::default() }
        .resolve()?;
    let daemon = bus_daemon::spawn(cfg)?;
    let mut bridge =
        Config { socket: Some(socket.clone()), scouting: false, stats_interval: Duration::ZERO, ..Config::default() };
    setup(&mut bridge);
    std::thread::spawn(move || {
        if let Err(e) = bus_bridge::run(bridge, Arc::new(AtomicBool::new(false))) {
            eprintln!("bridge: {e}");
            std::process::exit(1);
        }
    });
    Ok((daemon, Bus::builder().socket(&socket).connect()?))
}

fn host_a(endpoint: String) -> Result<(), Box<dyn std::error::Error>> {
    let (_daemon, bus) = start("bridge-a", |c| {
        c.listen = vec![endpoint.clone()];
        c.export = vec!["users".into(), "sensors".into()];
    })?;
    let router = Router::new("users")?.route("by-id/{id}", |ctx| {
        let id: u64 = ctx.param("id").unwrap_or("").parse().map_err(|_| "the id must be a number")?;
        let verbose = ctx.body::<UserQuery>()?.verbose;
        println!(
            "A: users://by-id/{id} asked (trace {:#x}, from another host: {})",
            ctx.trace_id(),
            ctx.message().is_remote()
        );
        Ok(ctx.reply(&User { id, name: format!("user-{id}"), verbose })?)
    })?;
    let _service = bus.serve(router).start()?;
    let sensors = bus.subscribe("sensors")?;
    println!("A: serving users and reading sensors; bridge listening on {endpoint}. Now run: cargo run --release --example bridged -- b");
    loop {
        let m = sensors.recv()?;
        let text = String::from_utf8_lossy(m.body_bytes()?).into_owned();
        println!("A: {} {text:?} (trace {:#x}, from another host: {})", m.path(), m.trace_id(), m.is_remote());
    }
}

fn host_b(endpoint: String) -> Result<(), Box<dyn std::error::Error>> {
    let (_daemon, bus) = start("bridge-b", |c| {
        c.connect = vec![endpoint.clone()];
        c.import = vec!["users".into(), "sensors".into()];
        // Readings sent before the link is up wait for it, not dropped.
        c.on_link_loss = bus_bridge::config::LinkLoss::Block;
    })?;
    let requester = bus.requester()?;
    let ask = |id: u64| {
        requester.request(&format!("users://by-id/{id}"), &UserQuery { verbose: true }, Duration::from_secs(5))
    };
    // The bridge links when host A's is up: until then a request is
    // refused at once, as `Unreachable`. (And until the bridge has started
    // here, nobody subscribes to `users` on this bus.)
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match ask(1) {
            Ok(_) => break,
            Err(ReplyError::Unreachable(why)) if Instant::now() < deadline => {
                println!("B: waiting for host A ({why})");
                std::thread::sleep(Duration::from_secs(1));
            }
            // The bridge (started on a thread) has not subscribed yet.
            Err(ReplyError::Send(bus_client::SendError::NoSubscriber { .. })) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let mut publisher = bus.publisher().create()?;
    for n in 0..5 {
        let id = publisher.send_bytes("sensors://imu/0", format!("reading {n}").as_bytes())?;
        println!("B: sent sensors://imu/0 reading {n} (trace {id:#x})");
    }
    for id in [42, 7] {
        let started = Instant::now();
        let reply = ask(id)?;
        let user = reply.body::<User>()?;
        println!(
            "B: users://by-id/{id} -> id {} name {:?} (trace {:#x}, {:?} round trip through both bridges)",
            user.id,
            user.name.as_str(),
            reply.trace_id(),
            started.elapsed()
        );
    }
    // A handler's error crosses as the same `ReplyError` variant.
    match requester.request("users://by-id/abc", &UserQuery { verbose: false }, Duration::from_secs(5)) {
        Err(e) => println!("B: users://by-id/abc -> error: {e}"),
        Ok(_) => println!("B: users://by-id/abc answered"),
    }
    std::thread::sleep(Duration::from_millis(200)); // let the readings leave
    Ok(())
}
