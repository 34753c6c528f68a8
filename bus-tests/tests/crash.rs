//! Crash tests: clients SIGKILLed while they hold loans and received
//! messages, or at random points under load; the daemon must account for
//! every slot and redeliver what was received but not released.

mod common;
use bus_tests::Seq;
use common::*;
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

fn slots(s: &serde_json::Value, k: &str) -> u64 {
    s["slots"][k].as_u64().unwrap()
}

fn subsystem<'a>(s: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    s["subsystems"].as_array().unwrap().iter().find(|x| x["name"] == name).unwrap()
}

#[test]
fn a_killed_client_holding_loans_and_received_messages_is_reclaimed_within_a_second() {
    let bus = TestBus::start(&["--slots", "256", "--slot-size", "256"]);
    let mut holder = bus.peer(&["hold", "subsystem=work", "path=work://x", "loans=4", "hold=3"]);
    eventually(Duration::from_secs(10), || bus.status()["subsystems"][0]["subscribers"] == 1)
        .expect("holder subscribed");
    {
        let client = bus.connect();
        let mut p = client.publisher().create().unwrap();
        for seq in 0..5 {
            p.send("work://job", &Seq { publisher: 9, seq }).unwrap();
        }
    } // publisher and connection dropped: their cached slots are back
    holder.wait_line("holding 4 loans, 3 messages", Duration::from_secs(20));
    let before = bus.status();
    assert_eq!(slots(&before, "loaned"), 4);
    assert_eq!(slots(&before, "held"), 3);
    assert_eq!(slots(&before, "queued"), 2);

    holder.signal(Signal::SIGKILL);
    let killed = Instant::now();
    let took = eventually(Duration::from_secs(5), || {
        let s = bus.status();
        slots(&s, "free") + slots(&s, "queued") == slots(&s, "total")
    })
    .expect("every slot accounted for");
    let elapsed = killed.elapsed();
    assert!(elapsed < Duration::from_secs(1), "reclaim took {elapsed:?} (status polls took {took:?})");
    let after = bus.status();
    assert_eq!(slots(&after, "queued"), 5, "{after}");
    assert_eq!(subsystem(&after, "work")["redelivered"], 3);
    assert_eq!(subsystem(&after, "work")["subscribers"], 0);

    // The next subscriber gets all five, the three held ones flagged.
    let client = bus.connect();
    let sub = client.subscribe("work").unwrap();
    let mut seen = Vec::new();
    let mut redelivered = 0;
    for _ in 0..5 {
        let m = sub.recv_timeout(Duration::from_secs(10)).unwrap();
        redelivered += m.is_redelivered() as u32;
        seen.push(m.body::<Seq>().unwrap().seq.to_native());
    }
    seen.sort();
    assert_eq!(seen, vec![0, 1, 2, 3, 4]);
    assert_eq!(redelivered, 3);
    assert!(sub.try_recv().unwrap().is_none());
}

/// A tiny xorshift: the tests need varied kill points, not good randomness.
fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[test]
fn killing_clients_at_random_points_under_load_loses_no_slot() {
    let bus = TestBus::start(&["--slots", "512", "--slot-size", "256", "--queue-capacity", "256"]);
    let mut seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    eprintln!("seed {seed}");
    let rounds = 20;
    let mut live: Vec<Proc> = Vec::new();
    for _ in 0..rounds {
        while live.len() < 3 {
            let mut p = bus.peer(&["churn", "path=churn://x", "subsystem=churn"]);
            p.wait_line("churning", Duration::from_secs(10));
            live.push(p);
        }
        std::thread::sleep(Duration::from_millis(10 + rng(&mut seed) % 80));
        let victim = (rng(&mut seed) % live.len() as u64) as usize;
        let p = live.swap_remove(victim);
        p.signal(Signal::SIGKILL);
        drop(p);
    }
    for p in live.drain(..) {
        p.signal(Signal::SIGKILL);
    }
    // Only the status command itself is connected, and every slot is free
    // or queued for the next subscriber.
    eventually(Duration::from_secs(5), || {
        let s = bus.status();
        s["clients"] == 1 && slots(&s, "free") + slots(&s, "queued") == slots(&s, "total")
    })
    .unwrap_or_else(|| panic!("slots unaccounted for: {}", bus.status()));

    // Drain the queue; then every slot is free.
    let client = bus.connect();
    let sub = client.subscribe("churn").unwrap();
    let mut drained = 0;
    while let Some(m) = sub.try_recv().unwrap() {
        m.body::<Seq>().expect("every queued message is intact");
        drained += 1;
    }
    drop(sub);
    let s = bus.status();
    assert_eq!(slots(&s, "free"), slots(&s, "total"), "after draining {drained}: {s}");
    assert_eq!(subsystem(&s, "churn")["queue_depth"], 0);
}
