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
    let bus = TestBus::start(&["--slots", "256", "--max-slots-per-client", "16"]);
    let client = bus.connect();
    let receiver = bus.connect();
    let sub = receiver.subscribe("q").unwrap();
    // Under a quota of 16 a cache refill takes at most 16/8 = 2 slots: each
    // publisher's first loan takes 2 (one loaned, one cached), so 8 loans
    // hold the whole quota, and a ninth publisher finds none.
    let mut ps: Vec<_> = (0..9).map(|_| client.publisher().create().unwrap()).collect();
    let (first, rest) = ps.split_at_mut(1);
    let (holding, last) = rest.split_at_mut(7);
    let l0 = first[0].loan("q://a").unwrap();
    let loans: Vec<_> = holding.iter_mut().map(|p| p.loan("q://b").unwrap()).collect();
    let e = last[0].loan("q://c").err().expect("over the quota");
    assert_eq!(e, SendError::QuotaExceeded { quota: 16 });
    assert!(e.to_string().contains("max-slots-per-client"), "{e}");
    // A sent message is its receivers', no longer ours: one slot comes back
    // to the quota.
    l0.write_bytes(b"a").unwrap().send().unwrap();
    last[0].send_bytes("q://c", b"c").unwrap();
    // Still at 15 of 16 (sends keep nothing): a loan fits.
    let held = last[0].loan("q://c").unwrap();
    drop(held);
    // Loans dropped go back to their publishers' caches (still ours);
    // dropped publishers return their caches to the pool and the quota.
    drop(loans);
    ps.truncate(1);
    for _ in 0..100 {
        ps[0].send_bytes("q://c", b"c").unwrap();
        drop(sub.recv_timeout(Duration::from_secs(5)).unwrap());
    }
    // A service under a quota keeps serving: its workers wait for slots
    // instead of giving up.
    let quota_bus = bus.connect();
    let router = bus_client::Router::new("svc")
        .unwrap()
        .route("echo", |ctx| {
            let body = ctx.message().body_bytes().map(<[u8]>::to_vec).unwrap_or_default();
            ctx.reply_bytes(&body)?;
            Ok(())
        })
        .unwrap();
    let svc = quota_bus.serve(router).workers(2).start().unwrap();
    let requester = receiver.requester().unwrap();
    for i in 0..200u32 {
        let r = requester.request_bytes("svc://echo", &i.to_le_bytes(), Duration::from_secs(5)).unwrap();
        assert_eq!(r.body_bytes().unwrap(), i.to_le_bytes());
    }
    svc.stop();
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

#[test]
fn a_service_whose_workers_hold_its_whole_quota_still_answers_every_request() {
    // Eight workers each hold a request, which is the client's whole quota,
    // before any replies: each reply's slot is taken all the same (one per
    // request held), so nothing is left for the requester to wait out.
    let bus = TestBus::start(&["--slots", "256", "--max-slots-per-client", "8"]);
    let service_bus = bus.connect();
    let held = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = held.clone();
    let router = bus_client::Router::new("qsvc")
        .unwrap()
        .route("echo", move |ctx| {
            let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            let round = n.div_ceil(8) * 8;
            let t0 = std::time::Instant::now();
            while counted.load(std::sync::atomic::Ordering::SeqCst) < round && t0.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(ctx.reply_bytes(ctx.message().body_bytes()?)?)
        })
        .unwrap();
    let svc = service_bus.serve(router).workers(8).start().unwrap();
    let asking = bus.connect();
    let mut p = asking.pipeline(16).unwrap();
    for round in 0..3u32 {
        for i in 0..8u32 {
            p.submit_bytes("qsvc://echo", &(round * 8 + i).to_le_bytes(), Duration::from_secs(10)).unwrap();
        }
        while p.in_flight() > 0 {
            let (_, reply) = p.next().unwrap();
            let reply = reply.unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!(reply.body_bytes().unwrap().len(), 4);
        }
    }
    assert_eq!(held.load(std::sync::atomic::Ordering::SeqCst), 24);
    assert_eq!(svc.stats().failed.load(std::sync::atomic::Ordering::Relaxed), 0);
    svc.stop();
    let s = bus.status();
    assert_eq!(s["slots"]["held"], 0, "{s}");
}
