//! Batches against the real daemon: send_batch / send_batch_with /
//! recv_batch keep the guarantees of single messages.

mod common;
use bus_client::{Backpressure, SendError};
use bus_tests::Seq;
use common::*;
use std::time::Duration;

#[test]
fn a_batch_arrives_complete_and_in_order() {
    let bus = TestBus::start(&["--slots", "512", "--slot-size", "256"]);
    let c = bus.connect();
    let sub = c.subscribe("b").unwrap();
    let mut p = c.publisher().create().unwrap();
    let items: Vec<Seq> = (0..300).map(|seq| Seq { publisher: 1, seq }).collect();
    assert_eq!(p.send_batch("b://x", &items).unwrap(), 300);
    let mut out = Vec::new();
    let mut seen = Vec::new();
    while seen.len() < 300 {
        sub.recv_batch(&mut out, 50, Some(Duration::from_secs(5))).unwrap();
        assert!(out.len() <= 50);
        seen.extend(out.iter().map(|m| m.body::<Seq>().unwrap().seq.to_native()));
        out.clear(); // releases the slots
    }
    assert_eq!(seen, (0..300).collect::<Vec<_>>());
    assert_eq!(sub.try_recv_batch(&mut out, 10).unwrap(), 0);
    drop(p);
    assert_eq!(bus.status()["slots"]["free"], 512);
}

#[test]
fn a_batch_larger_than_the_queue_blocks_until_the_subscriber_makes_room() {
    let bus = TestBus::start(&["--slots", "512", "--slot-size", "256", "--queue-capacity", "16"]);
    let c = bus.connect();
    let sub = c.subscribe("b").unwrap();
    let c2 = c.clone();
    let sender = std::thread::spawn(move || {
        let mut p = c2.publisher().create().unwrap();
        let items: Vec<Seq> = (0..1000).map(|seq| Seq { publisher: 1, seq }).collect();
        p.send_batch("b://x", &items).unwrap()
    });
    let mut out = Vec::new();
    let mut next = 0u64;
    while next < 1000 {
        sub.recv_batch(&mut out, 8, Some(Duration::from_secs(10))).unwrap();
        for m in out.drain(..) {
            assert_eq!(m.body::<Seq>().unwrap().seq, next);
            next += 1;
        }
    }
    assert_eq!(sender.join().unwrap(), 1000);
}

#[test]
fn a_fail_fast_batch_that_fills_the_queue_says_how_many_were_sent_and_keeps_no_slot() {
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256", "--queue-capacity", "8"]);
    let c = bus.connect();
    let sub = c.subscribe("b").unwrap();
    let mut p = c.publisher().backpressure(Backpressure::FailFast).create().unwrap();
    let items: Vec<Seq> = (0..20).map(|seq| Seq { publisher: 1, seq }).collect();
    let e = p.send_batch("b://x", &items).unwrap_err();
    assert_eq!(e.sent, 8);
    assert_eq!(e.error, SendError::QueueFull { subsystem: "b".into() });
    assert!(e.to_string().contains("after 8"));
    drop(p);
    let s = bus.status();
    assert_eq!((s["slots"]["loaned"].as_u64(), s["slots"]["queued"].as_u64()), (Some(0), Some(8)));
    for seq in 0..8 {
        assert_eq!(sub.try_recv().unwrap().unwrap().body::<Seq>().unwrap().seq, seq);
    }
}

#[test]
fn raw_batches_are_written_in_place_and_size_checked() {
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256"]);
    let c = bus.connect();
    let sub = c.subscribe("raw").unwrap();
    let mut p = c.publisher().create().unwrap();
    let n = p
        .send_batch_with("raw://x", 5, |i, body| {
            body[..3].copy_from_slice(&[i as u8; 3]);
            3
        })
        .unwrap();
    assert_eq!(n, 5);
    let mut out = Vec::new();
    assert_eq!(sub.recv_batch(&mut out, 10, Some(Duration::from_secs(5))).unwrap(), 5);
    for (i, m) in out.iter().enumerate() {
        assert_eq!(m.body_bytes().unwrap(), &[i as u8; 3]);
        assert_eq!(m.path(), "raw://x");
    }
    let e = p.send_batch_with("raw://x", 2, |_, body| body.len() + 1).unwrap_err();
    assert!(matches!(e.error, SendError::BodyTooLarge { .. }) && e.sent == 0, "{e}");
    assert!(matches!(p.send_batch_with("nobody://x", 1, |_, _| 0).unwrap_err().error, SendError::NoSubscriber { .. }));
}

#[test]
fn single_sends_can_be_received_in_batches_and_batches_one_by_one() {
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256"]);
    let c = bus.connect();
    let sub = c.subscribe("mix").unwrap();
    let mut p = c.publisher().create().unwrap();
    for seq in 0..5 {
        p.send("mix://x", &Seq { publisher: 0, seq }).unwrap();
    }
    let items: Vec<Seq> = (5..10).map(|seq| Seq { publisher: 0, seq }).collect();
    p.send_batch("mix://x", &items).unwrap();
    let mut out = Vec::new();
    assert_eq!(sub.try_recv_batch(&mut out, 7).unwrap(), 7);
    let mut seqs: Vec<u64> = out.iter().map(|m| m.body::<Seq>().unwrap().seq.to_native()).collect();
    out.clear();
    while let Some(m) = sub.try_recv().unwrap() {
        seqs.push(m.body::<Seq>().unwrap().seq.to_native());
    }
    assert_eq!(seqs, (0..10).collect::<Vec<_>>());
}
