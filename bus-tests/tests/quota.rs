//! `max-slots-per-client`: a client holding its quota of slots (loaned,
//! cached and received together) gets `QuotaExceeded`, and the other
//! clients are unaffected.

mod common;
use bus_client::{RecvError, SendError};
use common::*;
use std::time::Duration;

#[test]
fn a_receiver_at_its_quota_is_refused_and_the_others_go_on() {
    let bus = TestBus::start(&["--slots", "256", "--max-slots-per-client", "40"]);
    let hoarder = bus.connect();
    let other = bus.connect();
    let sender = bus.connect();
    let h = hoarder.subscribe("q").unwrap();
    let o = other.subscribe("q").unwrap();
    let mut p = sender.publisher().create().unwrap();
    for i in 0..100u32 {
        p.send_bytes("q://m", &i.to_le_bytes()).unwrap();
    }

    // The hoarder keeps what it takes: 40 messages, then a typed refusal
    // that names the quota, for every way of receiving.
    let mut held = Vec::new();
    for _ in 0..40 {
        held.push(h.try_recv().unwrap().expect("queued"));
    }
    assert_eq!(h.try_recv().err(), Some(RecvError::QuotaExceeded { quota: 40 }));
    assert_eq!(h.recv_timeout(Duration::from_millis(10)).err(), Some(RecvError::QuotaExceeded { quota: 40 }));
    let mut batch = Vec::new();
    assert_eq!(h.try_recv_batch(&mut batch, 8).err(), Some(RecvError::QuotaExceeded { quota: 40 }));
    let e = h.try_recv().unwrap_err().to_string();
    assert!(e.contains("quota of 40") && e.contains("max-slots-per-client"), "{e}");

    // The others are unaffected: the sender sends on, the other receiver
    // of the group takes the rest.
    for i in 100..150u32 {
        p.send_bytes("q://m", &i.to_le_bytes()).unwrap();
    }
    let mut rest = 0;
    while let Ok(m) = o.recv_timeout(Duration::from_millis(200)) {
        drop(m);
        rest += 1;
    }
    assert_eq!(rest, 110, "the other receiver got every message the hoarder did not take");

    // Releasing one makes room for one; a batch takes only what fits.
    drop(held.pop());
    p.send_bytes("q://m", b"more").unwrap();
    p.send_bytes("q://m", b"more").unwrap();
    assert_eq!(h.try_recv_batch(&mut batch, 8).unwrap(), 1);
    assert_eq!(h.try_recv().err(), Some(RecvError::QuotaExceeded { quota: 40 }));
    drop(batch);
    drop(held);
    assert!(h.recv_timeout(Duration::from_secs(5)).is_ok());
    drop((h, o, p));
    let st = bus.status();
    assert!(
        eventually(Duration::from_secs(5), || {
            let s = bus.status();
            s["slots"]["free"].as_u64().unwrap() + s["slots"]["cached"].as_u64().unwrap() == 256
        })
        .is_some(),
        "slots leaked: {st}"
    );
}

#[test]
fn publishers_share_their_clients_quota() {
    let bus = TestBus::start(&["--slots", "256", "--max-slots-per-client", "40"]);
    let client = bus.connect();
    let receiver = bus.connect();
    let sub = receiver.subscribe("q").unwrap();
    // A cache refill takes up to 32 slots: the first publisher's loan
    // caches 32 (one of them loaned), the second's the 8 left, and the
    // third's finds none.
    let mut a = client.publisher().create().unwrap();
    let mut b = client.publisher().create().unwrap();
    let mut c = client.publisher().create().unwrap();
    let la = a.loan("q://a").unwrap();
    let lb = b.loan("q://b").unwrap();
    let e = c.loan("q://c").err().expect("over the quota");
    assert_eq!(e, SendError::QuotaExceeded { quota: 40 });
    assert!(e.to_string().contains("max-slots-per-client"), "{e}");
    // A sent message is its receivers', no longer ours: one slot comes back
    // to the quota.
    lb.write_bytes(b"b").unwrap().send().unwrap();
    c.send_bytes("q://c", b"c").unwrap();
    // A loan dropped goes back to its publisher's cache: still ours.
    drop(la);
    let lc = c.loan("q://c").unwrap();
    assert_eq!(b.loan("q://b").err(), None, "b still has cached slots");
    drop(lc);
    // A dropped publisher returns its cache to the pool and to the quota.
    drop(a);
    for _ in 0..100 {
        c.send_bytes("q://c", b"c").unwrap();
        drop(sub.recv_timeout(Duration::from_secs(5)).unwrap());
    }
    // Another client is not limited by this one's quota.
    let other = bus.connect();
    let mut d = other.publisher().create().unwrap();
    for _ in 0..100 {
        d.send_bytes("q://d", b"d").unwrap();
        drop(sub.recv_timeout(Duration::from_secs(5)).unwrap());
    }
    let (st, out, err) = bus.cli(&["status"]);
    assert!(st.success(), "{err}");
    assert!(out.contains("slots"), "{out}");
}

#[test]
fn a_quota_out_of_range_is_a_config_error() {
    let dir = TempDir::new("quota-cfg");
    let socket = dir.0.join("bus.sock");
    let (st, _, err) = run_to_end(
        std::process::Command::new(DAEMON)
            .args(["--slots", "64", "--max-slots-per-client", "65", "--socket"])
            .arg(&socket),
    );
    assert_eq!(st.code(), Some(1));
    assert!(err.contains("max-slots-per-client"), "{err}");
}
