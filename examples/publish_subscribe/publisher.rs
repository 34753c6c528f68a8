//! Sends a greeting to `hello://greetings/{n}` every 500 ms.
//! Run `subscriber` in another terminal first (see README.md).

use bus_client::Bus;
use shmbus_examples::Greeting;
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bus = Bus::connect()?;
    let mut publisher = bus.publisher().create()?;
    let from = format!("publisher pid {}", std::process::id());
    for n in 0..10 {
        let path = format!("hello://greetings/{n}");
        match publisher.send(&path, &Greeting { from: from.clone(), n }) {
            Ok(id) => println!("sent {path} (id {id:#x})"),
            Err(e) => eprintln!("not sent: {e}"),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}
