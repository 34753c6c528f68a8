//! A `users` service: a router with static, parameter and catch-all routes,
//! served by 2 worker threads. Run it, then `client` in another terminal
//! (see README.md).

use bus_client::{Bus, HandlerError, Router};
use shmbus_examples::{User, UserQuery};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bus = Bus::connect()?;
    let router = Router::new("users")?
        .route("list", |ctx| {
            let names = ["ada", "grace", "edsger"];
            Ok(ctx.reply_bytes(names.join(",").as_bytes())?)
        })?
        .route("by-id/{id}", |ctx| {
            let id: u64 = ctx.param("id").unwrap_or("").parse().map_err(|_| "the id must be a number")?;
            let query = ctx.body::<UserQuery>()?;
            if id == 0 {
                return Err(HandlerError::new("there is no user 0"));
            }
            // Tell the audit log; the message carries the request's trace id.
            let _ = ctx.send_bytes("audit://users/lookup", format!("looked up {id}").as_bytes());
            Ok(ctx.reply(&User { id, name: format!("user-{id}"), verbose: query.verbose })?)
        })?
        .route("files/{*path}", |ctx| {
            let path = ctx.param("path").unwrap_or("").to_owned();
            Ok(ctx.reply_bytes(format!("would serve {path}").as_bytes())?)
        })?;
    let service = bus.serve(router).workers(2).start()?;
    // Only now: the workers' subscriptions exist, requests will be served.
    println!("serving users:// on bus {:?} with 2 workers (Ctrl-C to stop)", bus.name());
    // The workers run until the bus ends them: say why, and exit 1.
    let why = service.join().err().map_or("the service had no workers".to_owned(), |e| e.to_string());
    eprintln!("service ended: {why}");
    std::process::exit(1)
}
