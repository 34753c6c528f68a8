//! `shmbusd --metrics`: the Prometheus endpoint, scraped with curl while
//! traffic flows, agrees with what was sent; `shmbus status` carries the
//! same statistics.

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

fn scrape(addr: &str) -> String {
    let (st, out, err) =
        run_to_end(Command::new("curl").args(["-sS", "--max-time", "10", "-i"]).arg(format!("http://{addr}/metrics")));
    assert!(st.success(), "curl: {err}");
    out
}

/// The value of the sample line `name{labels}` (labels as printed).
fn value(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {sample} in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_scrape_agrees_with_the_traffic() {
    let bus = TestBus::start(&["--slots", "512", "--metrics", "127.0.0.1:0"]);
    let addr =
        bus.ready.split_whitespace().find_map(|w| w.strip_prefix("metrics=")).expect("the bound address").to_owned();
    let client = bus_client::Bus::builder().socket(bus.socket()).name("metrics-test").connect().unwrap();
    let sub = client.subscribe("m").unwrap();
    let mut p = client.publisher().create().unwrap();
    let body = [7u8; 100];
    for round in 0..4 {
        for _ in 0..250 {
            p.send_bytes("m://x", &body).unwrap();
            drop(sub.recv_timeout(Duration::from_secs(5)).unwrap());
        }
        // Scraped while traffic flows: each scrape sees the counts so far.
        let text = scrape(&addr);
        let sent = value(&text, "shmbus_messages_sent_total{subsystem=\"m\"}");
        assert_eq!(sent as u64, 250 * (round + 1), "{text}");
    }
    // Messages to a subsystem nobody receives are counted as failures.
    drop(sub);
    assert!(eventually(Duration::from_secs(5), || p.send_bytes("m://x", &body).is_err()).is_some());
    let text = scrape(&addr);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("Content-Type: application/openmetrics-text"), "{text}");
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    assert_eq!(value(&text, "shmbus_messages_sent_total{subsystem=\"m\"}"), 1000.0);
    assert_eq!(value(&text, "shmbus_messages_delivered_total{subsystem=\"m\"}"), 1000.0);
    assert_eq!(value(&text, "shmbus_bytes_sent_total{subsystem=\"m\"}"), 100_000.0);
    assert_eq!(value(&text, "shmbus_statistics_enabled"), 1.0);
    assert_eq!(value(&text, "shmbus_send_failures_total{subsystem=\"m\",kind=\"no_subscriber\"}"), 1.0, "{text}");
    // The histogram's buckets only grow with `le`, up to +Inf.
    let buckets: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("shmbus_latency_seconds_bucket{") && l.contains("subsystem=\"m\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(buckets.len() > 10 && buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    // Reply queues are no series of their own.
    assert!(!text.contains("_reply."), "{text}");
    // One message in 64 is timed: 1000 received, 15 timed.
    assert_eq!(value(&text, "shmbus_latency_seconds_count{subsystem=\"m\"}"), 15.0);
    assert_eq!(value(&text, "shmbus_latency_seconds_bucket{le=\"+Inf\",subsystem=\"m\"}"), 15.0);
    assert_eq!(value(&text, "shmbus_queue_depth{subsystem=\"m\",group=\"default\"}"), 0.0);
    let slots: f64 = ["free", "cached", "loaned", "queued", "held", "corrupt"]
        .iter()
        .map(|s| value(&text, &format!("shmbus_slots{{state=\"{s}\"}}")))
        .sum();
    assert_eq!(slots, 512.0);
    assert!(value(&text, "shmbus_clients") >= 1.0);

    // status --json carries the same, and the client's name and counts.
    let s = bus.status();
    let m = s["subsystems"].as_array().unwrap().iter().find(|x| x["name"] == "m").unwrap().clone();
    assert_eq!(m["bytes"], 100_000);
    assert_eq!(m["latency"]["samples"], 15);
    assert!(m["latency"]["p50_ns"].as_u64().unwrap() > 0);
    assert!(m["latency"]["p99_ns"].as_u64().unwrap() >= m["latency"]["p50_ns"].as_u64().unwrap());
    let me = s["client_list"].as_array().unwrap().iter().find(|c| c["name"] == "metrics-test").expect("named").clone();
    assert_eq!(me["sent"], 1000);
    assert_eq!(me["received"], 1000);
    let (st, out, _) = bus.cli(&["status"]);
    assert!(st.success());
    assert!(out.contains("p50") && out.contains("metrics-test"), "{out}");
    let (st, out, _) = run_to_end(
        Command::new("curl").args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"]).arg(format!("http://{addr}/other")),
    );
    assert!(st.success());
    assert_eq!(out.trim(), "404");
}

#[test]
fn a_bad_metrics_address_is_a_config_error() {
    let dir = TempDir::new("metrics-cfg");
    let (st, _, err) =
        run_to_end(Command::new(DAEMON).args(["--metrics", "localhost", "--socket"]).arg(dir.0.join("b.sock")));
    assert_eq!(st.code(), Some(1));
    assert!(err.contains("metrics") && err.contains("127.0.0.1:9464"), "{err}");
}

#[test]
fn a_metrics_port_in_use_stops_the_daemon_and_leaves_no_socket() {
    let dir = TempDir::new("metrics-busy");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let socket = dir.0.join("b.sock");
    let (st, _, err) = run_to_end(Command::new(DAEMON).args(["--metrics", &addr, "--socket"]).arg(&socket));
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.contains("serving metrics on"), "{err}");
    assert!(!socket.exists(), "the socket of a daemon that did not start is removed");
}

#[test]
fn statistics_off_keeps_the_counts_the_rings_keep_and_nothing_else() {
    let bus = TestBus::start(&["--slots", "128", "--no-statistics", "--metrics", "127.0.0.1:0"]);
    let client = bus.connect();
    let sub = client.subscribe("n").unwrap();
    let mut p = client.publisher().create().unwrap();
    for _ in 0..200 {
        p.send_bytes("n://x", b"0123456789").unwrap();
        drop(sub.recv_timeout(Duration::from_secs(5)).unwrap());
    }
    let s = bus.status();
    let n = s["subsystems"].as_array().unwrap().iter().find(|x| x["name"] == "n").unwrap().clone();
    assert_eq!(n["sent"], 200, "{n}");
    assert_eq!(n["bytes"], 0, "{n}");
    assert_eq!(n["latency"]["samples"], 0, "{n}");
    assert_eq!(s["statistics"], false, "{s}");
    // What nobody counted is not shown as a zero: `-` in status, no
    // series in the metrics (and a gauge that says why).
    let (st, text, err) = bus.cli(&["status"]);
    assert!(st.success(), "{err}");
    assert!(text.contains("statistics off"), "{text}");
    let row = text.lines().find(|l| l.trim_start().starts_with("n ")).unwrap_or_else(|| panic!("{text}"));
    assert!(!row.contains("0B") && row.split_whitespace().filter(|w| *w == "-").count() == 5, "{row}");
    let addr =
        bus.ready.split_whitespace().find_map(|w| w.strip_prefix("metrics=")).expect("the bound address").to_owned();
    let m = scrape(&addr);
    assert_eq!(value(&m, "shmbus_statistics_enabled"), 0.0, "{m}");
    assert_eq!(value(&m, "shmbus_messages_sent_total{subsystem=\"n\"}"), 200.0, "{m}");
    for absent in ["shmbus_bytes_sent_total{", "shmbus_send_failures_total{", "shmbus_latency_seconds_count{"] {
        assert!(!m.contains(absent), "{absent} in:\n{m}");
    }
}

/// Messages taken in batches are counted and sampled as singly taken ones:
/// every one in the receiver's count, and exactly one in 64 timed, whatever
/// the batch sizes (1 to 9, and one of 130 that holds two samples), and
/// whether the caller's vector held messages already. 768 messages: a
/// sample taken one message early or late would give 11 or 13, not 12.
#[test]
fn batches_are_counted_and_timed_like_single_receives() {
    let bus = TestBus::start(&["--slots", "512"]);
    let client = bus_client::Bus::builder().socket(bus.socket()).name("batch-counts").connect().unwrap();
    let sub = client.subscribe("b").unwrap();
    let mut p = client.publisher().create().unwrap();
    let mut sizes = vec![130usize];
    sizes.extend((1..=9).cycle().take(126));
    sizes.push(8);
    let mut held = Vec::new();
    let (mut sent, mut got) = (0u64, 0u64);
    for k in sizes {
        for _ in 0..k {
            p.send_bytes("b://x", &sent.to_le_bytes()).unwrap();
            sent += 1;
        }
        // Part of them, then the rest into the same vector.
        got += sub.recv_batch(&mut held, k / 2 + 1, Some(Duration::from_secs(5))).unwrap() as u64;
        while got < sent {
            got += sub.recv_batch(&mut held, k, Some(Duration::from_secs(5))).unwrap() as u64;
        }
        held.clear();
    }
    assert_eq!((got, sent), (768, 768));
    let s = bus.status();
    let m = s["subsystems"].as_array().unwrap().iter().find(|x| x["name"] == "b").unwrap().clone();
    assert_eq!(m["latency"]["samples"], 12, "{m}");
    let me = s["client_list"].as_array().unwrap().iter().find(|c| c["name"] == "batch-counts").expect("named").clone();
    assert_eq!(me["received"], 768, "{me}");
}

#[test]
fn at_most_four_scrapes_are_served_at_once_and_the_rest_get_503() {
    let bus = TestBus::start(&["--slots", "64", "--metrics", "127.0.0.1:0"]);
    let addr =
        bus.ready.split_whitespace().find_map(|w| w.strip_prefix("metrics=")).expect("the bound address").to_owned();
    // Four connections that never send their request each hold a scrape
    // (for up to the 2 s a request may take to arrive)...
    let idle: Vec<_> = (0..4).map(|_| std::net::TcpStream::connect(&addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    // ...so a fifth is answered 503 at once.
    let text = scrape(&addr);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    drop(idle);
    let served = eventually(Duration::from_secs(10), || scrape(&addr).starts_with("HTTP/1.1 200"));
    assert!(served.is_some(), "scrapes were not served again");
}
