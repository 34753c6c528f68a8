//! A tokio service that does two things at once on one runtime: it answers
//! the `users` requests of the `client` example (its handlers are `async`:
//! they await a pretend database), and it reads a stream of `sensors`
//! messages. Nothing spins and no timer polls while neither flows.
//!
//! ```sh
//! cargo run --release --bin shmbusd                    # 1: the daemon
//! cargo run --release --example tokio_service          # 2: this
//! cargo run --release --example client                 # 3: requests
//! cargo run --release --bin shmbus -- send sensors://temp/kitchen 21.5
//! ```

use bus_client::{AsyncRouter, Bus, HandlerError};
use shmbus_examples::{User, UserQuery};
use std::time::Duration;

/// Stands for a database lookup: an `.await` that takes a while, during
/// which the runtime serves other requests and the stream.
async fn lookup(id: u64) -> Option<String> {
    tokio::time::sleep(Duration::from_millis(2)).await;
    (id != 0).then(|| format!("user-{id}"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bus = Bus::connect()?;
    let router = AsyncRouter::new("users")?
        .route("list", |mut req| async move { Ok(req.reply_bytes(b"ada,grace,edsger")?) })?
        .route("by-id/{id}", |mut req| async move {
            let id: u64 = req.param("id").unwrap_or("").parse().map_err(|_| "the id must be a number")?;
            let verbose = req.body::<UserQuery>()?.verbose;
            let name = lookup(id).await.ok_or_else(|| HandlerError::new(format!("there is no user {id}")))?;
            let _ = req.send_bytes("audit://users/lookup", format!("looked up {id}").as_bytes());
            Ok(req.reply(&User { id, name, verbose })?)
        })?
        .route("files/{*path}", |mut req| async move {
            let text = format!("would serve {}", req.param("path").unwrap_or(""));
            Ok(req.reply_bytes(text.as_bytes())?)
        })?;
    let service = bus.serve_async(router).start()?;
    let mut sensors = bus.subscribe("sensors")?.into_async();
    println!("serving users:// and reading sensors:// on bus {:?} (Ctrl-C to stop)", bus.name());
    loop {
        tokio::select! {
            msg = sensors.recv() => {
                // The bus going away ends the program, saying why.
                let msg = msg.unwrap_or_else(|e| {
                    eprintln!("stopped: {e}");
                    std::process::exit(1)
                });
                println!("{} = {}", msg.path(), String::from_utf8_lossy(msg.body_bytes()?));
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    println!("handled {} requests", service.stats().handled.load(std::sync::atomic::Ordering::Relaxed));
    Ok(())
}
