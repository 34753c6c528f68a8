//! The asynchronous API on tokio, against the real daemon and publishers in
//! other processes: receive, cancel safety under `tokio::select!`, streams,
//! requests in flight from many tasks, timeouts, a killed daemon noticed by
//! a parked task, and a parked wait that is dropped without stealing a
//! wake-up from a blocked receiver of the same group.

mod common;
use bus_client::{RecvError, ReplyError};
use bus_tests::Seq;
use common::*;
use futures_core::Stream;
use nix::sys::signal::Signal;
use std::pin::Pin;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Runs `f` on a fresh runtime, failing the test if it takes longer than
/// `T` (a bug must fail, not hang).
fn run<F: std::future::Future<Output = ()>>(f: F) {
    runtime().block_on(async { tokio::time::timeout(T, f).await.expect("the test timed out") });
}

#[test]
fn a_parked_task_receives_every_message_a_publisher_process_sends_in_order() {
    let bus = TestBus::start(&["--slots", "256"]);
    let c = bus.connect();
    let mut sub = c.subscribe("a").unwrap().into_async();
    run(async {
        // Parked first: nothing is queued yet.
        let nothing_yet = tokio::time::timeout(Duration::from_millis(100), sub.recv()).await.is_err();
        assert!(nothing_yet, "nothing was sent yet");
        let mut publisher = bus.peer(&["pub", "path=a://x", "count=5000"]);
        for want in 0..5000u64 {
            let msg = sub.recv().await.unwrap();
            assert_eq!(msg.body::<Seq>().unwrap().seq.to_native(), want);
        }
        publisher.wait_line("sent 5000", Duration::from_secs(10));
    });
}

#[test]
fn select_over_recv_and_a_timer_loses_no_message() {
    let bus = TestBus::start(&["--slots", "256"]);
    let c = bus.connect();
    let mut sub = c.subscribe("sel").unwrap().into_async();
    sub.set_spins(0); // park at once: every timer branch cancels a parked wait
    run(async {
        let mut publisher = None;
        let (mut got, mut ticks) = (0u64, 0u32);
        let mut tick = tokio::time::interval(Duration::from_micros(300));
        while got < 3000 {
            tokio::select! {
                msg = sub.recv() => {
                    let seq = msg.unwrap().body::<Seq>().unwrap().seq.to_native();
                    assert_eq!(seq, got, "a message was lost or reordered");
                    got += 1;
                }
                _ = tick.tick() => {
                    ticks += 1;
                    if ticks == 20 {
                        publisher = Some(bus.peer(&["pub", "path=sel://x", "count=3000"]));
                    }
                }
            }
        }
        assert!(ticks >= 20, "the timer branch ran {ticks} times");
        publisher.unwrap().wait_line("sent 3000", Duration::from_secs(10));
    });
    // Nothing is left over, nothing was taken twice.
    assert!(sub.try_recv().unwrap().is_none());
}

#[test]
fn a_stream_yields_what_the_closure_reads_and_ends_when_the_daemon_is_killed() {
    let bus = TestBus::start(&["--slots", "256"]);
    let c = bus.connect();
    let sub = c.subscribe("st").unwrap().into_async();
    let mut stream = sub.stream(|m| m.body::<Seq>().map(|s| s.seq.to_native()));
    run(async {
        let mut p = bus.peer(&["pub", "path=st://x", "count=100"]);
        for want in 0..100u64 {
            let got = std::future::poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)).await;
            assert_eq!(got.unwrap().unwrap().unwrap(), want);
        }
        p.wait_line("sent 100", Duration::from_secs(10));
        // Parked on an idle queue when the daemon dies: woken by the bus's
        // gone event, not by a timer.
        let next = std::future::poll_fn(|cx| Pin::new(&mut stream).poll_next(cx));
        tokio::pin!(next);
        let parked = tokio::time::timeout(Duration::from_millis(100), next.as_mut()).await.is_err();
        assert!(parked, "nothing was sent: the stream must be parked");
        let killed = Instant::now();
        bus.daemon.signal(Signal::SIGKILL);
        let got = next.await;
        assert!(matches!(got, Some(Err(RecvError::BusGone))), "{got:?}");
        assert!(killed.elapsed() < Duration::from_secs(5), "noticed after {:?}", killed.elapsed());
        let end = std::future::poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)).await;
        assert!(end.is_none(), "the stream ends after BusGone");
    });
}

#[test]
fn many_tasks_share_one_requester_and_each_gets_its_own_reply() {
    let bus = TestBus::start(&["--slots", "512", "--slot-size", "256"]);
    let mut svc = bus.peer(&["serve", "subsystem=svc", "workers=2"]);
    svc.wait_line("serving", Duration::from_secs(10));
    let c = bus.connect();
    let r = std::sync::Arc::new(c.requester().unwrap());
    run(async {
        let mut tasks = Vec::new();
        for t in 0..8u32 {
            let r = r.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..50u64 {
                    let id = t * 1000 + i as u32;
                    let reply =
                        r.request_async(&format!("svc://users/{id}"), &Seq { publisher: 0, seq: i }, T).await.unwrap();
                    let got = reply.body::<Seq>().unwrap();
                    assert_eq!((got.publisher.to_native(), got.seq.to_native()), (id, i + 1));
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // Error replies come back typed.
        let e = r.request_bytes_async("svc://fail", b"", T).await.err().expect("an error");
        assert!(matches!(e, ReplyError::Handler(ref m) if m == "nope"), "{e}");
        let e = r.request_bytes_async("svc://nothing", b"", T).await.err().expect("an error");
        assert!(matches!(e, ReplyError::NoRoute { .. }), "{e}");
        // A timeout, and its late reply released rather than handed to the
        // next request.
        let e = r.request_bytes_async("svc://slow/300", b"", Duration::from_millis(50)).await.err().expect("an error");
        assert!(matches!(e, ReplyError::Timeout(_)), "{e}");
        let echo = r.request_bytes_async("svc://echo/x", b"after", T).await.unwrap();
        assert_eq!(echo.body_bytes().unwrap(), b"after");
        // A dropped request (select! lost) is withdrawn the same way.
        tokio::select! {
            _ = r.request_bytes_async("svc://slow/200", b"", T) => panic!("the slow reply came first"),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let echo = r.request_bytes_async("svc://echo/y", b"last", T).await.unwrap();
        assert_eq!(echo.body_bytes().unwrap(), b"last");
    });
    drop(r);
    drop(c);
    assert_slots_back(bus.socket());
}

#[test]
fn a_dropped_parked_wait_does_not_keep_a_wake_up_from_a_blocked_receiver_of_the_group() {
    let bus = TestBus::start(&["--slots", "256"]);
    let c = bus.connect();
    let mut parked = c.subscribe_group("grp", "g").unwrap().into_async();
    parked.set_spins(0);
    let blocked = c.subscribe_group("grp", "g").unwrap();
    blocked.set_spins(0);
    let waiting = std::thread::spawn(move || {
        let mut got = Vec::new();
        for _ in 0..20 {
            let m = blocked.recv_timeout(Duration::from_secs(10)).expect("the blocked receiver is woken");
            got.push((m.body::<Seq>().unwrap().seq.to_native(), Instant::now()));
        }
        got
    });
    let rt = runtime();
    let mut p = c.publisher().create().unwrap();
    let mut sent = Vec::new();
    for seq in 0..20u64 {
        // Park the async receiver, then give up on it: its wait is
        // withdrawn, so the wake-up of the next message goes to the blocked
        // thread, not to the abandoned wait (which would leave the thread
        // asleep until its 50 ms liveness slice ends).
        rt.block_on(async {
            let r = tokio::time::timeout(Duration::from_millis(5), parked.recv()).await;
            assert!(r.is_err(), "the parked receiver took message {seq}");
        });
        sent.push(Instant::now());
        p.send("grp://x", &Seq { publisher: 0, seq }).unwrap();
        std::thread::sleep(Duration::from_millis(60));
    }
    let got = waiting.join().unwrap();
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), (0..20).collect::<Vec<_>>());
    // Woken at once, not at the end of a slice: a lost wake-up leaves a
    // message waiting for the rest of the blocked thread's 50 ms slice,
    // more than 30 ms for about 2 in 5 of them.
    let late: Vec<_> = got
        .iter()
        .zip(&sent)
        .map(|((_, at), s)| at.duration_since(*s))
        .filter(|d| *d > Duration::from_millis(30))
        .collect();
    assert!(late.len() <= 2, "{} of 20 messages reached the blocked receiver late: {late:?}", late.len());
}

#[test]
fn an_async_receive_outside_a_runtime_is_a_typed_error() {
    let bus = TestBus::start(&[]);
    let c = bus.connect();
    let mut sub = c.subscribe("x").unwrap().into_async();
    sub.set_spins(0);
    // Polled by hand, outside any runtime.
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut fut = sub.recv();
    let got = std::future::Future::poll(Pin::new(&mut fut), &mut cx);
    assert!(matches!(got, std::task::Poll::Ready(Err(RecvError::NoRuntime))), "{got:?}");
}

fn serving_async(bus: &TestBus) -> Proc {
    let mut p = bus.peer(&["aserve", "subsystem=asvc"]);
    p.wait_line("serving", Duration::from_secs(10));
    p
}

#[test]
fn an_async_reply_too_large_for_a_slot_is_the_handlers_error_not_a_cut_body() {
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256"]);
    let _svc = serving_async(&bus);
    let c = bus.connect();
    let r = c.requester().unwrap();
    let e = r.request_bytes("asvc://big/10000", b"", T).err().expect("an error, not a cut reply");
    assert!(matches!(e, ReplyError::Handler(ref m) if m.contains("10000")), "{e}");
    assert_eq!(r.request_bytes("asvc://big/10", b"", T).unwrap().body_bytes().unwrap(), [7u8; 10]);
    // A handler that ignored its failed reply: the failure is the answer.
    let e = r.request_bytes("asvc://bigignored", b"", T).err().expect("an error");
    assert!(matches!(e, ReplyError::Handler(ref m) if m.contains("could not be sent")), "{e}");
}

#[test]
fn an_async_service_in_another_process_answers_typed_raw_error_and_silent_requests() {
    let bus = TestBus::start(&["--slots", "512", "--slot-size", "256"]);
    let _svc = serving_async(&bus);
    let c = bus.connect();
    let r = c.requester().unwrap();
    let reply = r.request("asvc://users/42", &Seq { publisher: 0, seq: 7 }, T).unwrap();
    let got = reply.body::<Seq>().unwrap();
    assert_eq!((got.publisher.to_native(), got.seq.to_native()), (42, 8));
    drop(reply);
    assert_eq!(r.request_bytes("asvc://echo/a/b", b"hi", T).unwrap().body_bytes().unwrap(), b"hi");
    let e = r.request_bytes("asvc://fail", b"", T).err().expect("an error");
    assert!(matches!(e, ReplyError::Handler(ref m) if m == "nope"), "{e}");
    let e = r.request_bytes("asvc://panic", b"", T).err().expect("an error");
    assert!(matches!(e, ReplyError::Panicked(ref m) if m == "boom"), "{e}");
    let e = r.request_bytes("asvc://nothing/here", b"", T).err().expect("an error");
    assert!(matches!(e, ReplyError::NoRoute { .. }), "{e}");
    assert_eq!(r.request_bytes("asvc://silent", b"", T).unwrap().body_bytes().unwrap(), b"");
    // The service survived all of it.
    let id = r.request("asvc://users/5", &Seq { publisher: 0, seq: 1 }, T).unwrap();
    assert_eq!(id.body::<Seq>().unwrap().publisher.to_native(), 5);
}

#[test]
fn async_handlers_wait_concurrently_so_slow_ones_do_not_queue_behind_each_other() {
    let bus = TestBus::start(&["--slots", "512", "--slot-size", "256"]);
    let _svc = serving_async(&bus);
    let c = bus.connect();
    let r = c.requester().unwrap();
    run(async {
        let started = Instant::now();
        let replies: Vec<_> = (0..20).map(|_| r.request_bytes_async("asvc://slow/300", b"", T)).collect();
        for reply in replies {
            assert_eq!(reply.await.unwrap().body_bytes().unwrap(), b"slept");
        }
        // One at a time they would take 6 s.
        let took = started.elapsed();
        assert!(took < Duration::from_secs(3), "20 handlers of 300 ms took {took:?}");
    });
}

#[test]
fn a_killed_async_service_has_its_request_redelivered_to_the_next_one() {
    let bus = TestBus::start(&["--slots", "512", "--slot-size", "256"]);
    let first = serving_async(&bus);
    let c = bus.connect();
    let r = c.requester().unwrap();
    run(async {
        let reply = r.request_bytes_async("asvc://slow/1000", b"", T);
        // The handler holds the request while it sleeps; kill it then.
        tokio::time::sleep(Duration::from_millis(300)).await;
        first.signal(Signal::SIGKILL);
        let _second = serving_async(&bus);
        let got = reply.await.unwrap();
        assert_eq!(got.body_bytes().unwrap(), b"slept, redelivered");
    });
    drop(r);
    drop(c);
    assert_slots_back(bus.socket());
}

#[test]
fn control_requests_right_after_async_waits_on_the_same_thread_keep_their_answers_in_step() {
    // An io_uring completion is delivered to the thread that submitted the
    // wait as task work, which interrupts that thread's next blocking call:
    // a control request (subscribe, unsubscribe) must not lose its answer
    // to the interruption, or the next request reads it instead.
    let bus = TestBus::start(&["--slots", "256"]);
    let c = bus.connect();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for i in 0..200 {
        let mut sub = c.subscribe(&format!("eintr{}", i % 7)).unwrap().into_async();
        sub.set_spins(0);
        rt.block_on(async {
            let parked = tokio::time::timeout(Duration::from_micros(200), sub.recv()).await.is_err();
            assert!(parked);
        });
        drop(sub); // cancels the wait, closes the ring, unsubscribes
        let other = c.subscribe("eintr-other").unwrap_or_else(|e| panic!("round {i}: {e}"));
        drop(other);
    }
}

#[test]
fn a_subscriber_moves_from_a_dropped_runtime_to_another_and_a_stream_gives_it_back() {
    let bus = TestBus::start(&["--slots", "256"]);
    let c = bus.connect();
    let mut sub = c.subscribe("rt").unwrap().into_async();
    sub.set_spins(0);
    let mut p = c.publisher().create().unwrap();
    {
        // Parked once on a runtime that then goes away.
        let first = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        first.block_on(async {
            let parked = tokio::time::timeout(Duration::from_millis(50), sub.recv()).await.is_err();
            assert!(parked);
        });
    }
    run(async {
        let sending = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            p.send("rt://x", &Seq { publisher: 0, seq: 1 }).unwrap();
            p
        });
        // Parked on this runtime now, woken by the send.
        let msg = sub.recv().await.expect("received on the second runtime");
        assert_eq!(msg.body::<Seq>().unwrap().seq.to_native(), 1);
        drop(msg);
        let mut p = sending.await.unwrap();
        // A stream taken apart while parked gives its subscriber back with
        // the wait withdrawn: a blocking receive on it works.
        let mut stream = sub.stream(|m| m.path().to_owned());
        let parked = tokio::time::timeout(
            Duration::from_millis(50),
            std::future::poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)),
        )
        .await
        .is_err();
        assert!(parked);
        let back = stream.into_inner();
        p.send("rt://y", &Seq { publisher: 0, seq: 2 }).unwrap();
        let m = back.subscriber().recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(m.path(), "rt://y");
    });
}

#[test]
fn an_async_second_reply_is_refused_and_a_long_error_text_is_cut_at_a_character() {
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256"]);
    let c = bus.connect();
    let second = std::sync::Arc::new(std::sync::Mutex::new(None));
    let seen = second.clone();
    let router = bus_client::AsyncRouter::new("aonce")
        .unwrap()
        .route("twice", move |mut req| {
            let seen = seen.clone();
            async move {
                req.reply_bytes(b"first")?;
                *seen.lock().unwrap() = Some(req.reply_bytes(b"second"));
                Ok(())
            }
        })
        .unwrap()
        .route("euros", |_req| async move { Err(bus_client::HandlerError::new("€".repeat(200))) })
        .unwrap();
    let rt = runtime();
    let _guard = rt.enter();
    let svc = c.serve_async(router).start().unwrap();
    let r = c.requester().unwrap();
    assert_eq!(r.request_bytes("aonce://twice", b"", T).unwrap().body_bytes().unwrap(), b"first");
    // The first reply may come back before the handler tried the second.
    assert!(eventually(T, || second.lock().unwrap().is_some()).is_some(), "the handler never tried a second reply");
    let refused = second.lock().unwrap().clone().unwrap();
    assert_eq!(refused, Err(bus_client::SendError::AlreadyReplied));
    let e = r.request_bytes("aonce://euros", b"", T).err().expect("the handler's error");
    let ReplyError::Handler(text) = e else { panic!("expected Handler, got {e:?}") };
    assert!(!text.contains('\u{FFFD}'), "{text}");
    assert_eq!(text, "€".repeat(c.body_capacity("aonce://euros".len()) / 3));
    drop(svc);
}

#[test]
fn a_request_whose_handler_is_cut_off_by_a_runtime_shutdown_gets_an_error_at_once() {
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256"]);
    let c = bus.connect();
    let (started_tx, started) = std::sync::mpsc::channel::<()>();
    let started_tx = std::sync::Mutex::new(started_tx);
    let router = bus_client::AsyncRouter::new("cut")
        .unwrap()
        .route("hang", move |_req| {
            let _ = started_tx.lock().unwrap().send(());
            async move {
                tokio::time::sleep(Duration::from_secs(600)).await;
                Ok(())
            }
        })
        .unwrap();
    let rt = runtime();
    let svc = {
        let _guard = rt.enter();
        c.serve_async(router).start().unwrap()
    };
    let r = c.requester().unwrap();
    let asking = std::thread::spawn(move || {
        let t0 = Instant::now();
        (r.request_bytes("cut://hang", b"", T).map(|_| ()), t0.elapsed())
    });
    started.recv_timeout(T).expect("the handler started");
    drop(rt); // the handler's task is dropped, unfinished
    let (answer, waited) = asking.join().unwrap();
    let e = answer.expect_err("an error reply");
    assert!(matches!(e, ReplyError::Handler(ref m) if m.contains("stopped before")), "{e}");
    assert!(waited < Duration::from_secs(10), "answered after {waited:?}");
    drop(svc);
    let s = bus.status();
    assert_eq!(s["slots"]["held"], 0, "{s}");
}
