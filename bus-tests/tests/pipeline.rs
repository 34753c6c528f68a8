//! Pipelined requests (`Bus::pipeline`) to a router served by another
//! process: many in flight from one thread, replies matched to their
//! requests, typed errors for a full window, a stale or foreign ticket and
//! a bad window, timeouts whose late replies are released, a request that
//! reached some groups only, and a batching worker killed with replies not
//! yet pushed.

mod common;
use bus_client::{Pending, ReplyError, RequestError, SendError};
use common::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(10);

fn serving(bus: &TestBus, workers: u32) -> Proc {
    serving_batches(bus, workers, 1)
}

/// A service whose workers take up to `batch` requests at once.
fn serving_batches(bus: &TestBus, workers: u32, batch: u32) -> Proc {
    let mut p = bus.peer(&["serve", "subsystem=svc", &format!("workers={workers}"), &format!("batch={batch}")]);
    p.wait_line("serving", Duration::from_secs(10));
    p
}

fn assert_no_slot_held(bus: &TestBus) {
    let settled = eventually(Duration::from_secs(5), || {
        let s = bus.status();
        s["slots"]["held"] == 0 && s["slots"]["queued"] == 0
    });
    assert!(settled.is_some(), "slots still held or queued: {}", bus.status());
}

#[test]
fn many_requests_in_flight_from_one_thread_each_get_their_own_reply() {
    let bus = TestBus::start(&["--slots", "512", "--slot-size", "256"]);
    let _svc = serving_batches(&bus, 1, 32);
    let c = bus.connect();
    let mut p = c.pipeline(64).unwrap();
    assert_eq!(p.window(), 64);
    let mut sent: HashMap<Pending, u32> = HashMap::new();
    let mut done = 0;
    for i in 0..2000u32 {
        if p.in_flight() == p.window() {
            let (pending, reply) = p.next().expect("requests in flight");
            let want = sent.remove(&pending).expect("a reply names a request in flight");
            assert_eq!(reply.unwrap().body_bytes().unwrap(), want.to_le_bytes());
            done += 1;
        }
        let pending = p.submit_bytes(&format!("svc://echo/{i}"), &i.to_le_bytes(), T).unwrap();
        assert!(sent.insert(pending, i).is_none(), "a ticket in flight twice");
    }
    // One waited for out of order: the others that arrive meanwhile are
    // kept for `next`.
    let (&last, &want) = sent.iter().max_by_key(|(_, &i)| i).unwrap();
    assert_eq!(p.wait(last).unwrap().body_bytes().unwrap(), want.to_le_bytes());
    sent.remove(&last);
    done += 1;
    while let Some((pending, reply)) = p.next() {
        let want = sent.remove(&pending).expect("a reply names a request in flight");
        assert_eq!(reply.unwrap().body_bytes().unwrap(), want.to_le_bytes());
        done += 1;
    }
    assert_eq!(done, 2000);
    assert!(sent.is_empty());
    assert_eq!(p.in_flight(), 0);
    // Handler errors come back as the request's outcome.
    let fail = p.submit_bytes("svc://fail", b"", T).unwrap();
    assert!(matches!(p.wait(fail), Err(ReplyError::Handler(m)) if m == "nope"));
    drop(p);
    assert_no_slot_held(&bus);
}

#[test]
fn a_full_window_a_stale_ticket_and_a_bad_window_are_typed_errors() {
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256", "--queue-capacity", "64"]);
    let _svc = serving(&bus, 1);
    let c = bus.connect();
    // Up to half the queue: the rest is room for late replies.
    for window in [0, 33, usize::MAX] {
        match c.pipeline(window) {
            Err(RequestError::InvalidWindow { window: w, max: 32 }) => assert_eq!(w, window),
            other => panic!("window {window}: expected InvalidWindow, got {:?}", other.err()),
        }
    }
    let mut p = c.pipeline(2).unwrap();
    let a = p.submit_bytes("svc://echo/a", b"a", T).unwrap();
    let b = p.submit_bytes("svc://echo/b", b"b", T).unwrap();
    let e = p.submit_bytes("svc://echo/c", b"c", T).unwrap_err();
    assert_eq!(e, ReplyError::WindowFull { window: 2 });
    assert!(e.to_string().contains("next"), "{e}");
    assert_eq!(p.wait(b).unwrap().body_bytes().unwrap(), b"b");
    assert_eq!(p.wait(b).err(), Some(ReplyError::NotInFlight));
    assert_eq!(p.wait(a).unwrap().body_bytes().unwrap(), b"a");
    // The entry is reused with a new generation: the old ticket stays stale.
    let a2 = p.submit_bytes("svc://echo/a2", b"a2", T).unwrap();
    assert_ne!(a, a2);
    assert_eq!(p.wait(a).err(), Some(ReplyError::NotInFlight));
    assert_eq!(p.wait(a2).unwrap().body_bytes().unwrap(), b"a2");
    // A ticket from another pipeline is no ticket here, even with a
    // request of this one in flight under the same slab entry.
    let mut other = c.pipeline(4).unwrap();
    let o = other.submit_bytes("svc://echo/o", b"o", T).unwrap();
    let mine = p.submit_bytes("svc://echo/m", b"m", T).unwrap();
    assert_eq!(p.wait(o).err(), Some(ReplyError::NotInFlight));
    assert_eq!(p.wait(mine).unwrap().body_bytes().unwrap(), b"m");
    assert_eq!(other.wait(o).unwrap().body_bytes().unwrap(), b"o");
    // Sending to nobody fails at submit, and takes no window room.
    assert!(matches!(p.submit_bytes("nobody://x", b"", T), Err(ReplyError::Send(_))));
    assert_eq!(p.in_flight(), 0);
}

#[test]
fn a_timed_out_request_completes_with_its_timeout_and_its_late_reply_is_released() {
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256"]);
    let _svc = serving(&bus, 1);
    let c = bus.connect();
    let mut p = c.pipeline(8).unwrap();
    let t0 = Instant::now();
    let slow = p.submit_bytes("svc://slow/400", b"", Duration::from_millis(100)).unwrap();
    let quick = p.submit_bytes("svc://echo/q", b"q", T).unwrap();
    // The one worker is busy with the slow one: its timeout comes first.
    let (first, outcome) = p.next().unwrap();
    assert_eq!(first, slow);
    assert_eq!(outcome.err(), Some(ReplyError::Timeout(Duration::from_millis(100))));
    assert!(t0.elapsed() < Duration::from_millis(400), "{:?}", t0.elapsed());
    // The late reply arrives before the quick one, and is released.
    let (second, outcome) = p.next().unwrap();
    assert_eq!(second, quick);
    assert_eq!(outcome.unwrap().body_bytes().unwrap(), b"q");
    assert!(p.next().is_none());
    assert_eq!(p.wait(slow).err(), Some(ReplyError::NotInFlight));
    assert_no_slot_held(&bus);
    // A reply that came in time counts, however late the caller asks.
    let late = p.submit_bytes("svc://echo/l", b"l", Duration::from_millis(100)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (got, outcome) = p.next().unwrap();
    assert_eq!(got, late);
    assert_eq!(outcome.unwrap().body_bytes().unwrap(), b"l");
}

#[test]
fn replies_taken_but_never_asked_for_are_released_with_the_pipeline() {
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256"]);
    let _svc = serving(&bus, 1);
    let c = bus.connect();
    let mut p = c.pipeline(8).unwrap();
    for body in [b"u", b"v", b"w"] {
        p.submit_bytes("svc://echo/x", body, T).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300)); // all three replies queued
    let (_, first) = p.next().unwrap(); // takes all three off the queue
    drop(first);
    assert_eq!(bus.status()["slots"]["held"], 2, "{}", bus.status());
    drop(p);
    assert_no_slot_held(&bus);
}

#[test]
fn a_request_that_reached_some_groups_only_does_not_leave_its_id_in_use() {
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256", "--queue-capacity", "8"]);
    let _svc = serving(&bus, 1);
    let c = bus.connect();
    // A second group that nobody reads: its queue fills up.
    let stalled = c.subscribe_group("svc", "stalled").unwrap();
    let mut p = c.pipeline(4).unwrap();
    for i in 0..8u8 {
        let x = p.submit_bytes("svc://echo/f", &[i], T).unwrap();
        assert_eq!(p.wait(x).unwrap().body_bytes().unwrap(), [i]);
    }
    // The service's group gets this one; the stalled group's queue is full.
    let e = p.submit_bytes("svc://echo/a", b"a", Duration::from_millis(200)).unwrap_err();
    assert!(matches!(e, ReplyError::Send(SendError::PartlyDelivered { .. })), "{e}");
    while let Ok(Some(_)) = stalled.try_recv() {}
    // The service's reply to it must not be taken for the next request's.
    std::thread::sleep(Duration::from_millis(100));
    let b = p.submit_bytes("svc://echo/b", b"b", T).unwrap();
    assert_eq!(p.wait(b).unwrap().body_bytes().unwrap(), b"b");
}

#[test]
fn a_batching_worker_killed_before_pushing_its_replies_has_its_requests_answered_by_another() {
    let bus = TestBus::start(&["--slots", "512", "--slot-size", "256"]);
    // The first service dies at its 20th reply, with replies of its batch
    // deferred (not pushed) and their requests still held: those must be
    // redelivered to the second service, not lost.
    let mut cmd = bus.command(PEER);
    cmd.args(["serve", "subsystem=svc", "workers=1", "batch=32"])
        .env("SHMBUS_CRASH_POINT", "reply-before-push:kill:20");
    let mut first = Proc::new(cmd.spawn().unwrap());
    first.wait_line("serving", Duration::from_secs(10));
    let c = bus.connect();
    let mut p = c.pipeline(64).unwrap();
    let pending: Vec<Pending> =
        (0..64u32).map(|i| p.submit_bytes("svc://echo/k", &i.to_le_bytes(), T).unwrap()).collect();
    let (status, _, _) = first.wait(Duration::from_secs(10));
    assert!(!status.success(), "the first service was to die at its 20th reply: {status:?}");
    let _second = serving_batches(&bus, 1, 32);
    let mut answered = 0;
    while let Some((done, reply)) = p.next() {
        let i = pending.iter().position(|&x| x == done).expect("a ticket of ours");
        assert_eq!(reply.expect("every request answered").body_bytes().unwrap(), (i as u32).to_le_bytes());
        answered += 1;
    }
    assert_eq!(answered, 64);
    drop(p);
    assert_no_slot_held(&bus);
}
