//! Makes requests to the `users` service from another process.

use bus_client::{Bus, ReplyError};
use shmbus_examples::{User, UserQuery};
use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bus = Bus::connect()?;
    let requester = bus.requester()?;
    let t = Duration::from_secs(2);

    let list = requester.request_bytes("users://list", b"", t)?;
    println!("users://list -> {}", String::from_utf8_lossy(list.body_bytes()?));
    drop(list);

    let start = Instant::now();
    let reply = requester.request("users://by-id/42", &UserQuery { verbose: true }, t)?;
    let user = reply.body::<User>()?;
    println!("users://by-id/42 -> id {} name {:?} ({:?} round trip)", user.id, user.name.as_str(), start.elapsed());
    drop(reply);

    for path in ["users://by-id/0", "users://by-id/abc", "users://nothing"] {
        match requester.request(path, &UserQuery { verbose: false }, t) {
            Ok(_) => println!("{path} -> a reply"),
            Err(e @ (ReplyError::Handler(_) | ReplyError::NoRoute { .. })) => println!("{path} -> error: {e}"),
            Err(e) => return Err(e.into()),
        }
    }
    let files = requester.request_bytes("users://files/a/b.txt", b"", t)?;
    println!("users://files/a/b.txt -> {}", String::from_utf8_lossy(files.body_bytes()?));
    Ok(())
}
