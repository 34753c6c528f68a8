//! Prints every message sent to the `hello` subsystem. See README.md.

use bus_client::Bus;
use shmbus_examples::Greeting;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bus = Bus::connect()?;
    let sub = bus.subscribe("hello")?;
    println!("subscribed to hello:// on bus {:?}; waiting (Ctrl-C to stop)", bus.name());
    loop {
        let msg = sub.recv()?;
        let g = msg.body::<Greeting>()?;
        println!("{} from {:?}: greeting #{}", msg.path(), g.from.as_str(), g.n);
    }
}
