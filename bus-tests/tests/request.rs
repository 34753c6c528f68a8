//! Request/response through a router served by another process: typed and
//! raw replies, error replies, panics, timeouts with late replies released,
//! concurrent requests, worker pools, a responder that dies, trace ids.

mod common;
use bus_client::{ReplyError, Requester};
use bus_tests::Seq;
use common::*;
use nix::sys::signal::Signal;
use std::sync::Arc;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(10);

fn serving(bus: &TestBus, workers: u32) -> Proc {
    let mut p = bus.peer(&["serve", "subsystem=svc", &format!("workers={workers}")]);
    p.wait_line("serving", Duration::from_secs(10));
    p
}

#[test]
fn a_request_gets_the_handlers_typed_reply_with_route_parameters() {
    let bus = TestBus::start(&["--slots", "256", "--slot-size", "256"]);
    let _svc = serving(&bus, 1);
    let c = bus.connect();
    let r = c.requester().unwrap();
    let reply = r.request("svc://users/42", &Seq { publisher: 0, seq: 7 }, T).unwrap();
    let got = reply.body::<Seq>().unwrap();
    assert_eq!((got.publisher.to_native(), got.seq.to_native()), (42, 8));
    let echo = r.request_bytes("svc://echo/a/b", b"hello", T).unwrap();
    assert_eq!(echo.body_bytes().unwrap(), b"hello");
    // The convenience form, which sets up its own requester.
    let once = c.request("svc://users/5", &Seq { publisher: 0, seq: 1 }, T).unwrap();
    assert_eq!(once.body::<Seq>().unwrap().publisher, 5);
}

#[test]
fn requesters_made_and_dropped_in_a_loop_do_not_fill_the_routing_table() {
    // Eight entries: the service's subsystem, and few reply queues.
    let bus = TestBus::start(&["--slots", "256", "--slot-size", "256", "--max-subsystems", "8"]);
    let _svc = serving(&bus, 1);
    let c = bus.connect();
    for i in 0..300u32 {
        if i % 50 == 25 {
            // A reply that comes after its requester gave up, into a reply
            // queue the next requester may take over: released, not taken
            // for the next one's reply.
            let e = c.request("svc://slow/30", &Seq { publisher: 0, seq: 0 }, Duration::from_millis(5)).err().unwrap();
            assert_eq!(e, ReplyError::Timeout(Duration::from_millis(5)));
            std::thread::sleep(Duration::from_millis(40));
            continue;
        }
        let id = 1000 + i;
        let once = c.request(&format!("svc://users/{id}"), &Seq { publisher: 0, seq: i.into() }, T).unwrap();
        let got = once.body::<Seq>().unwrap();
        assert_eq!((got.publisher.to_native(), got.seq.to_native()), (id, u64::from(i) + 1), "request {i}");
        if i % 7 == 0 {
            let mut p = c.pipeline(4).unwrap();
            let t = p.submit_bytes("svc://echo/p", b"pipelined", T).unwrap();
            assert_eq!(p.wait(t).unwrap().body_bytes().unwrap(), b"pipelined");
        }
    }
    let s = bus.status();
    assert_eq!(s["slots"]["held"], 0, "{s}");
}

#[test]
fn a_reply_too_large_for_a_slot_comes_back_as_the_handlers_error_not_a_timeout() {
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256"]);
    let _svc = serving(&bus, 1);
    let c = bus.connect();
    let r = c.requester().unwrap();
    let t = Instant::now();
    let e = r.request_bytes("svc://big/10000", b"", T).err().expect("an error");
    assert!(matches!(e, ReplyError::Handler(ref m) if m.contains("10000")), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5), "answered, not timed out");
    assert_eq!(r.request_bytes("svc://big/10", b"", T).unwrap().body_bytes().unwrap(), [7u8; 10]);
    // A handler that ignored its failed reply: the failure is the answer.
    let e = r.request_bytes("svc://bigignored", b"", T).err().expect("an error");
    assert!(matches!(e, ReplyError::Handler(ref m) if m.contains("could not be sent")), "{e}");
}

#[test]
fn a_service_that_cannot_start_every_worker_starts_none_and_frees_what_it_took() {
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256"]);
    let c = bus.connect();
    let router = || bus_client::Router::new("many").unwrap().route("x", |_| Ok(())).unwrap();
    // Each worker takes a subscriber and a publisher of this client's 32.
    let e = c.serve(router()).workers(20).start().err().expect("too many for one client");
    assert!(e.to_string().contains("32"), "{e}");
    let s = bus.status();
    let many = s["subsystems"].as_array().unwrap().iter().find(|x| x["name"] == "many").cloned();
    assert!(many.is_none_or(|x| x["subscribers"] == 0), "{s}");
    // Every one of them is free again: 14 workers (28) and a requester (3) fit.
    let svc = c.serve(router()).workers(14).start().unwrap();
    let r = c.requester().unwrap();
    assert!(r.request_bytes("many://x", b"", T).is_ok());
    drop(svc);
}

#[test]
fn a_requester_that_cannot_be_made_gives_back_what_it_took_and_says_why() {
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256"]);
    let c = bus.connect();
    // 30 of this client's 32 publishers and subscribers: a requester needs 3.
    let held: Vec<_> = (0..30).map(|_| c.publisher().create().unwrap()).collect();
    for _ in 0..3 {
        assert!(c.requester().is_err());
    }
    let Err(e) = c.request("svc://x", &Seq { publisher: 0, seq: 0 }, T) else { panic!("no requester") };
    assert!(matches!(e, ReplyError::Setup(ref m) if m.contains("32")), "{e}");
    drop(held);
    let again: Vec<_> = (0..32).map(|_| c.publisher().create()).collect();
    assert!(again.iter().all(Result::is_ok), "all 32 are free again");
}

#[test]
fn no_route_handler_errors_and_panics_come_back_as_typed_errors_and_the_worker_survives() {
    let bus = TestBus::start(&["--slots", "256", "--slot-size", "256"]);
    let _svc = serving(&bus, 1);
    let c = bus.connect();
    let r = c.requester().unwrap();
    match r.request_bytes("svc://nothing/here", b"", T) {
        Err(ReplyError::NoRoute { path, message }) => {
            assert_eq!(path, "svc://nothing/here");
            assert!(message.contains("nothing/here"), "{message}");
        }
        other => panic!("expected NoRoute, got {:?}", other.map(|_| ())),
    }
    assert!(matches!(r.request_bytes("svc://fail", b"", T), Err(ReplyError::Handler(m)) if m == "nope"));
    assert!(matches!(r.request_bytes("svc://panic", b"", T), Err(ReplyError::Panicked(m)) if m == "boom"));
    assert!(matches!(r.request_bytes("svc://users/x", b"", T), Err(ReplyError::Handler(m)) if m.contains("number")));
    // The same single worker still answers.
    assert_eq!(r.request_bytes("svc://echo/x", b"still here", T).unwrap().body_bytes().unwrap(), b"still here");
}

#[test]
fn a_timed_out_request_gets_an_error_and_its_late_reply_is_released_not_leaked() {
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256"]);
    let _svc = serving(&bus, 1);
    let c = bus.connect();
    let r = c.requester().unwrap();
    let t0 = Instant::now();
    let e = r.request_bytes("svc://slow/400", b"", Duration::from_millis(100)).err().unwrap();
    assert_eq!(e, ReplyError::Timeout(Duration::from_millis(100)));
    assert!(t0.elapsed() < Duration::from_millis(400));
    std::thread::sleep(Duration::from_millis(500)); // the late reply arrives
                                                    // The next exchange reads past the late reply and releases it.
    assert_eq!(r.request_bytes("svc://echo/x", b"next", T).unwrap().body_bytes().unwrap(), b"next");
    let s = bus.status();
    assert_eq!(s["slots"]["held"], 0, "{s}");
    assert_eq!(s["slots"]["queued"], 0, "{s}");
}

#[test]
fn requests_from_several_threads_get_their_own_replies() {
    let bus = TestBus::start(&["--slots", "512", "--slot-size", "256"]);
    let _svc = serving(&bus, 2);
    let c = bus.connect();
    let r = Arc::new(c.requester().unwrap());
    let threads: Vec<_> = (0..4u32)
        .map(|t| {
            let r: Arc<Requester> = r.clone();
            std::thread::spawn(move || {
                for i in 0..200u64 {
                    let reply = r.request(&format!("svc://users/{t}"), &Seq { publisher: t, seq: i }, T).unwrap();
                    let got = reply.body::<Seq>().unwrap();
                    assert_eq!((got.publisher.to_native(), got.seq.to_native()), (t, i + 1));
                }
            })
        })
        .collect();
    for h in threads {
        h.join().unwrap();
    }
}

#[test]
fn a_worker_pool_runs_handlers_concurrently() {
    let bus = TestBus::start(&["--slots", "256", "--slot-size", "256"]);
    let _svc = serving(&bus, 3);
    assert_eq!(bus.status()["subsystems"][0]["subscribers"], 3);
    let c = bus.connect();
    let r = Arc::new(c.requester().unwrap());
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let r = r.clone();
            std::thread::spawn(move || {
                r.request_bytes("svc://barrier", b"", T).map(|x| x.body_bytes().unwrap().to_vec())
            })
        })
        .collect();
    for h in threads {
        assert_eq!(h.join().unwrap().unwrap(), b"together");
    }
}

#[test]
fn a_requester_whose_responder_dies_gets_an_error_within_its_timeout() {
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256"]);
    let svc = serving(&bus, 1);
    let c = bus.connect();
    let r = Arc::new(c.requester().unwrap());
    let r2 = r.clone();
    let waiting = std::thread::spawn(move || {
        let t0 = Instant::now();
        (r2.request_bytes("svc://slow/5000", b"", Duration::from_secs(2)).err(), t0.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    svc.signal(Signal::SIGKILL);
    let (err, took) = waiting.join().unwrap();
    assert_eq!(err, Some(ReplyError::Timeout(Duration::from_secs(2))));
    assert!(took < Duration::from_secs(4), "took {took:?}");
    // With the responder gone, a new request fails at once.
    assert!(matches!(r.request_bytes("svc://echo/x", b"", T), Err(ReplyError::Send(_))));
}

#[test]
fn replies_and_messages_sent_by_a_handler_carry_the_requests_trace_id() {
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256"]);
    let _svc = serving(&bus, 1);
    let c = bus.connect();
    let traced = c.subscribe("traced").unwrap();
    let r = c.requester().unwrap();
    let reply = r.request_bytes("svc://forward/x", b"", T).unwrap();
    let forwarded = traced.recv_timeout(T).unwrap();
    assert_eq!(forwarded.body_bytes().unwrap(), b"forwarded");
    assert_ne!(reply.trace_id(), 0);
    assert_eq!(forwarded.trace_id(), reply.trace_id());
    assert_ne!(forwarded.id(), reply.id());
}

#[test]
fn the_cli_sends_a_request_and_prints_the_reply() {
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256"]);
    let _svc = serving(&bus, 1);
    let (st, out, err) = bus.cli(&["request", "svc://echo/cli", "ping", "--timeout", "5s"]);
    assert!(st.success(), "{err}");
    assert_eq!(out, "ping\n");
    let (st, _, err) = bus.cli(&["request", "svc://fail", "x"]);
    assert_eq!(st.code(), Some(1));
    assert!(err.contains("nope"), "{err}");
    // The two requesters are gone: their empty reply queues, until the
    // daemon recycles them, are counted in status, not listed.
    let (st, out, err) = bus.cli(&["status"]);
    assert!(st.success(), "{err}");
    assert!(!out.contains("_reply."), "{out}");
    assert!(out.contains("idle reply queues of departed requesters not shown"), "{out}");
    assert!(bus.status()["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"].as_str().unwrap().starts_with("_reply.")));
}

#[test]
fn handlers_still_run_concurrently_after_many_quick_requests() {
    // Workers that took thousands of fast requests must not have grown
    // batches that hold requests others could run: the barrier needs three
    // handlers in at once.
    let bus = TestBus::start(&["--slots", "512", "--slot-size", "256"]);
    let _svc = serving(&bus, 3);
    let c = bus.connect();
    let mut p = c.pipeline(32).unwrap();
    for i in 0..3000u32 {
        if p.in_flight() == p.window() {
            p.next().unwrap().1.unwrap();
        }
        p.submit_bytes("svc://echo/w", &i.to_le_bytes(), T).unwrap();
    }
    while let Some((_, r)) = p.next() {
        r.unwrap();
    }
    let t: Vec<_> = (0..3).map(|_| p.submit_bytes("svc://barrier", b"", T).unwrap()).collect();
    for x in t {
        assert_eq!(p.wait(x).unwrap().body_bytes().unwrap(), b"together");
    }
}

#[test]
fn a_reply_goes_out_when_the_handler_sends_it_not_when_the_handler_returns() {
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256"]);
    let c = bus.connect();
    let router = bus_client::Router::new("early")
        .unwrap()
        .route("job", |ctx| {
            ctx.reply_bytes(b"accepted")?;
            std::thread::sleep(Duration::from_millis(1000)); // the job itself
            Ok(())
        })
        .unwrap();
    let service = c.serve(router).start().unwrap();
    let r = c.requester().unwrap();
    let t0 = Instant::now();
    let reply = r.request_bytes("early://job", b"", Duration::from_millis(500)).unwrap();
    assert_eq!(reply.body_bytes().unwrap(), b"accepted");
    assert!(t0.elapsed() < Duration::from_millis(500));
    drop(reply);
    service.stop();
}

#[test]
fn a_second_reply_is_refused_and_a_long_error_text_is_cut_at_a_character() {
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256"]);
    let c = bus.connect();
    let second = Arc::new(std::sync::Mutex::new(None));
    let seen = second.clone();
    let router = bus_client::Router::new("once")
        .unwrap()
        .route("twice", move |ctx| {
            ctx.reply_bytes(b"first")?;
            *seen.lock().unwrap() = Some(ctx.reply_bytes(b"second"));
            Ok(())
        })
        .unwrap()
        .route("euro", |_| Err(bus_client::HandlerError::new("€".repeat(200))))
        .unwrap();
    let svc = c.serve(router).start().unwrap();
    let r = c.requester().unwrap();
    assert_eq!(r.request_bytes("once://twice", b"", T).unwrap().body_bytes().unwrap(), b"first");
    // The first reply may come back before the handler tried the second.
    assert!(eventually(T, || second.lock().unwrap().is_some()).is_some(), "the handler never tried a second reply");
    let refused = second.lock().unwrap().clone().unwrap();
    assert_eq!(refused, Err(bus_client::SendError::AlreadyReplied));
    // 256-byte slots leave 181 bytes beside "once://euro": not a multiple
    // of the 3 bytes of '€'; the text ends on its last whole character.
    let e = r.request_bytes("once://euro", b"", T).err().expect("the handler's error");
    let ReplyError::Handler(text) = e else { panic!("expected Handler, got {e:?}") };
    assert!(!text.contains('\u{FFFD}'), "{text}");
    assert_eq!(text, "€".repeat(c.body_capacity("once://euro".len()) / 3));
    drop(svc);
}

#[test]
fn late_replies_of_a_requester_that_stops_waiting_neither_pile_up_nor_stall_its_service() {
    // Small queues, so that a pile-up would fill the reply queue at once.
    let bus = TestBus::start(&["--slots", "256", "--slot-size", "256", "--queue-capacity", "16"]);
    let _svc = serving(&bus, 1);
    let idle = bus.connect();
    let r = idle.requester().unwrap();
    // Fire and forget: every reply comes late, to a requester that then
    // stops asking but stays connected.
    for i in 0..100u32 {
        match r.request_bytes("svc://echo/x", &i.to_le_bytes(), Duration::ZERO) {
            Err(ReplyError::Timeout(_)) => {}
            // Not sent (the service's queue full): fine for this test.
            Err(ReplyError::Send(bus_client::SendError::Timeout { .. })) => {}
            other => panic!("request {i}: {:?}", other.map(|_| ())),
        }
    }
    // Another client is still served promptly, again and again.
    let other = bus.connect();
    let o = other.requester().unwrap();
    for i in 0..40u32 {
        let t0 = Instant::now();
        let reply = o.request_bytes("svc://echo/y", &i.to_le_bytes(), Duration::from_secs(3));
        assert_eq!(reply.unwrap_or_else(|e| panic!("request {i}: {e}")).body_bytes().unwrap(), i.to_le_bytes());
        assert!(t0.elapsed() < Duration::from_secs(1), "request {i} took {:?}", t0.elapsed());
    }
    // What the idle requester's queue holds is bounded by its capacity, and
    // its next request releases it.
    drop(r.request_bytes("svc://echo/z", b"again", T).unwrap());
    let s = bus.status();
    assert!(s["slots"]["queued"].as_u64().unwrap() <= 1, "{s}");
    assert_eq!(s["slots"]["held"], 0, "{s}");
}

#[test]
fn a_request_that_could_not_be_sent_in_time_says_so_not_timeout() {
    let bus = TestBus::start(&["--slots", "256", "--slot-size", "256", "--queue-capacity", "16"]);
    let c = bus.connect();
    let (go_tx, go) = std::sync::mpsc::channel::<()>();
    let go = std::sync::Mutex::new(go);
    let router = bus_client::Router::new("stuck")
        .unwrap()
        .route("x", move |_| {
            let _ = go.lock().unwrap().recv_timeout(T);
            Ok(())
        })
        .unwrap();
    let svc = c.serve(router).start().unwrap();
    let r = Arc::new(c.requester().unwrap());
    // The worker holds one request; 16 more fill its queue (each sent,
    // then timed out waiting for its reply).
    let mut sent = 0;
    let mut refused = None;
    for _ in 0..40 {
        match r.request_bytes("stuck://x", b"", Duration::from_millis(20)) {
            Err(ReplyError::Timeout(_)) => sent += 1,
            Err(e @ ReplyError::Send(bus_client::SendError::Timeout { .. })) => {
                refused = Some(e);
                break;
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
    }
    let e = refused.expect("a request that found the queue full");
    assert!(e.to_string().contains("not sent"), "{e}");
    assert!((16..=18).contains(&sent), "{sent} requests were sent before the queue was full");
    for _ in 0..=sent {
        let _ = go_tx.send(());
    }
    drop(svc);
}

#[test]
fn a_service_whose_daemon_dies_ends_and_says_why() {
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256"]);
    let c = bus.connect();
    let router = bus_client::Router::new("svc").unwrap().route("x", |ctx| Ok(ctx.reply_bytes(b"")?)).unwrap();
    let service = c.serve(router).workers(2).start().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(service.join()).unwrap());
    bus.daemon.signal(Signal::SIGKILL);
    let ended = rx.recv_timeout(T).expect("the workers end when the daemon dies");
    assert!(matches!(ended, Err(bus_client::RecvError::BusGone)), "{ended:?}");
}
