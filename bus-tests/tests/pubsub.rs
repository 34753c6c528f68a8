//! Messages across real processes: one to one, many to one with ordering,
//! and a shared subsystem split between two subscriber processes.

mod common;
use common::*;
use std::collections::HashSet;
use std::time::Duration;

#[test]
fn a_message_sent_by_one_process_is_received_by_another() {
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256"]);
    let mut sub = bus.peer(&["sub", "subsystem=api", "count=3", "record=1", "timeout_ms=20000"]);
    sub.wait_line("subscribed", Duration::from_secs(10));
    let (st, out, err) =
        bus.peer(&["pub", "path=api://users/123", "publisher=7", "count=3"]).wait(Duration::from_secs(30));
    assert!(st.success(), "{err}");
    assert_eq!(out.trim(), "sent 3");
    let (st, out, err) = sub.wait(Duration::from_secs(30));
    assert!(st.success(), "{err}");
    assert!(out.contains("7 0 0\n7 1 0\n7 2 0\n"), "{out}");
    assert_eq!(summary(&out)["out_of_order"], 0);
}

#[test]
fn the_cli_sends_and_listens_with_path_and_body_on_one_line() {
    let bus = TestBus::start(&["--slots", "64", "--slot-size", "256"]);
    let listen = std::thread::scope(|s| {
        let h = s.spawn(|| bus.cli(&["listen", "api", "--count", "2", "--timeout", "20s"]));
        // Send only once the listener's subscription exists.
        eventually(Duration::from_secs(10), || bus.status()["subsystems"][0]["subscribers"] == 1)
            .expect("listener subscribed");
        let (st, _, err) = bus.cli(&["send", "api://users/123", "hello"]);
        assert!(st.success(), "{err}");
        let mut c = bus.command(CLI);
        c.args(["send", "api://bin"]).stdin(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&[0, 1, 0xff]).unwrap();
        let (st, _, err) = Proc::new(child).wait(Duration::from_secs(30));
        assert!(st.success(), "{err}");
        h.join().unwrap()
    });
    let (st, out, err) = listen;
    assert!(st.success(), "{err}");
    assert_eq!(out, "api://users/123\thello\napi://bin\t0001ff\n");
}

#[test]
fn four_publishers_times_100000_messages_arrive_exactly_once_in_order_per_publisher() {
    let bus = TestBus::start(&["--slots", "4096", "--slot-size", "256", "--queue-capacity", "1024"]);
    let n = 100_000;
    let mut sub = bus.peer(&["sub", "subsystem=seq", &format!("count={}", 4 * n), "timeout_ms=120000"]);
    sub.wait_line("subscribed", Duration::from_secs(10));
    let pubs: Vec<Proc> = (0..4)
        .map(|p| bus.peer(&["pub", "path=seq://numbers", &format!("publisher={p}"), &format!("count={n}")]))
        .collect();
    for p in pubs {
        let (st, out, err) = p.wait(Duration::from_secs(120));
        assert!(st.success(), "publisher failed: {err}");
        assert_eq!(out.trim(), format!("sent {n}"));
    }
    let (st, _, err) = sub.wait(Duration::from_secs(120));
    assert!(st.success(), "subscriber failed: {err}");
    // The subscriber checked order itself (out_of_order would be counted);
    // status confirms the totals and that nothing is left behind.
    let s = bus.status();
    let seq = &s["subsystems"].as_array().unwrap().iter().find(|x| x["name"] == "seq").unwrap().clone();
    assert_eq!(seq["sent"], 4 * n);
    assert_eq!(seq["delivered"], 4 * n);
    assert_eq!(seq["queue_depth"], 0);
}

#[test]
fn four_publishers_messages_are_in_order_per_publisher_as_reported_by_the_subscriber() {
    let bus = TestBus::start(&["--slots", "256", "--slot-size", "256", "--queue-capacity", "64"]);
    let n = 20_000;
    let sub = bus.peer(&["sub", "subsystem=seq", &format!("count={}", 4 * n), "timeout_ms=120000"]);
    // Publishers start right away; blocking sends wait for the subscription.
    assert!(eventually(Duration::from_secs(10), || bus.status()["subsystems"]
        .as_array()
        .is_some_and(|a| !a.is_empty()))
    .is_some());
    let pubs: Vec<Proc> =
        (0..4).map(|p| bus.peer(&["pub", "path=seq://x", &format!("publisher={p}"), &format!("count={n}")])).collect();
    for p in pubs {
        let (st, _, err) = p.wait(Duration::from_secs(120));
        assert!(st.success(), "{err}");
    }
    let (st, out, err) = sub.wait(Duration::from_secs(120));
    assert!(st.success(), "{err}");
    let s = summary(&out);
    assert_eq!(s["received"], 4 * n);
    assert_eq!(s["out_of_order"], 0, "{out}");
    assert_eq!(s["publishers"], 4);
}

#[test]
fn two_subscriber_processes_sharing_a_subsystem_receive_disjoint_sets_covering_everything() {
    let bus = TestBus::start(&["--slots", "1024", "--slot-size", "256"]);
    let n = 20_000u64;
    // Each subscriber receives until the queue has been quiet for 2 s.
    let subs: Vec<Proc> = (0..2)
        .map(|_| bus.peer(&["sub", "subsystem=work", "until_idle_ms=2000", "record=1", "timeout_ms=60000"]))
        .collect();
    assert!(eventually(Duration::from_secs(10), || bus.status()["subsystems"][0]["subscribers"] == 2).is_some());
    let (st, _, err) =
        bus.peer(&["pub", "path=work://job", "publisher=1", &format!("count={n}")]).wait(Duration::from_secs(60));
    assert!(st.success(), "{err}");
    let mut sets: Vec<HashSet<u64>> = Vec::new();
    for s in subs {
        let (st, out, err) = s.wait(Duration::from_secs(90));
        assert!(st.success(), "{err}");
        let got: HashSet<u64> = out
            .lines()
            .filter(|l| !l.starts_with('{') && *l != "subscribed")
            .map(|l| l.split(' ').nth(1).unwrap().parse().unwrap())
            .collect();
        sets.push(got);
    }
    assert!(sets[0].is_disjoint(&sets[1]), "a message went to both subscribers");
    assert_eq!(sets[0].len() + sets[1].len(), n as usize, "messages lost");
    assert!(
        !sets[0].is_empty() && !sets[1].is_empty(),
        "one subscriber got nothing: {} / {}",
        sets[0].len(),
        sets[1].len()
    );
}

#[test]
fn a_receiver_pausing_between_empty_polls_still_gets_everything_in_order_and_times_out() {
    let bus = TestBus::start(&["--slots", "256", "--slot-size", "256"]);
    let c = bus.connect();
    let sub = c.subscribe("paused").unwrap();
    // Nothing queued: the timeout holds within the spinning, which would
    // last seconds here (2 000 polls × 100 000 pauses).
    sub.set_poll_pause(100_000);
    let t = std::time::Instant::now();
    assert!(matches!(sub.recv_timeout(Duration::from_millis(10)), Err(bus_client::RecvError::Timeout(_))));
    assert!(t.elapsed() < Duration::from_millis(500), "{:?}", t.elapsed());
    sub.set_poll_pause(4096);
    sub.set_spins(8);
    let sender = {
        let socket = bus.socket().to_owned();
        std::thread::spawn(move || {
            let c = bus_client::Bus::builder().socket(socket).connect().unwrap();
            let mut p = c.publisher().create().unwrap();
            for i in 0u32..20_000 {
                p.send_bytes("paused://x", &i.to_le_bytes()).unwrap();
                if i % 1000 == 0 {
                    std::thread::sleep(Duration::from_millis(2)); // the receiver catches up and pauses
                }
            }
        })
    };
    for i in 0u32..20_000 {
        let m = sub.recv_timeout(Duration::from_secs(10)).expect("every message");
        assert_eq!(m.body_bytes().unwrap(), i.to_le_bytes());
    }
    sender.join().unwrap();
}
