//! Zero heap allocations per message in steady state, publisher side and
//! subscriber side, one-message and batch APIs. A counting global allocator
//! counts the allocations made by the measuring thread; the other side of
//! the bus is a real peer process.

mod common;
use bus_tests::Seq;
use common::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

struct Counting;

thread_local! {
    // const-initialized, no destructor: usable inside the allocator.
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

/// Every thread's allocations (for a test whose two sides are threads of
/// this process). The tests of this file take [`SERIAL`], so that no other
/// test's allocations fall into such a count.
static ALL_ALLOCS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only
// counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        ALL_ALLOCS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        ALL_ALLOCS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn allocations() -> u64 {
    ALLOCS.with(|c| c.get())
}

/// The counter sees this thread's allocations (else a zero proves nothing).
fn assert_counter_works() {
    let before = allocations();
    std::hint::black_box(vec![1u8; 16]);
    assert!(allocations() > before, "the counting allocator is not in use");
}

const WARM: u64 = 5_000;
const MEASURED: u64 = 50_000;

#[test]
fn publishing_allocates_nothing_per_message_single_and_batched() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    assert_counter_works();
    let bus = TestBus::start(&["--slots", "1024", "--slot-size", "256"]);
    let total = WARM + MEASURED + (WARM + MEASURED);
    let mut sub = bus.peer(&["sub", "subsystem=alloc", &format!("count={total}"), "timeout_ms=120000"]);
    sub.wait_line("subscribed", Duration::from_secs(10));
    let c = bus.connect();
    let mut p = c.publisher().create().unwrap();
    for seq in 0..WARM {
        p.send("alloc://x", &Seq { publisher: 0, seq }).unwrap();
    }
    let before = allocations();
    for seq in WARM..WARM + MEASURED {
        p.send("alloc://x", &Seq { publisher: 0, seq }).unwrap();
    }
    let single = allocations() - before;

    let items: Vec<Seq> = (0..32).map(|seq| Seq { publisher: 1, seq }).collect();
    let mut batch = items.clone();
    for k in 0..WARM / 32 {
        for (i, s) in batch.iter_mut().enumerate() {
            s.seq = k * 32 + i as u64;
        }
        p.send_batch("alloc://x", &batch).unwrap();
    }
    let sent_warm = (WARM / 32) * 32;
    let before = allocations();
    let rounds = MEASURED / 32;
    for k in 0..rounds {
        for (i, s) in batch.iter_mut().enumerate() {
            s.seq = sent_warm + k * 32 + i as u64;
        }
        p.send_batch("alloc://x", &batch).unwrap();
    }
    let batched = allocations() - before;
    // Top up so the peer's count is reached exactly.
    let sent = WARM + MEASURED + sent_warm + rounds * 32;
    for seq in 0..total - sent {
        p.send("alloc://x", &Seq { publisher: 2, seq }).unwrap();
    }
    drop(items);
    let (st, out, err) = sub.wait(Duration::from_secs(120));
    assert!(st.success(), "{err}");
    assert_eq!(summary(&out)["received"], total);
    assert_eq!(single, 0, "allocations in {MEASURED} single sends");
    assert_eq!(batched, 0, "allocations in {} batched sends", rounds * 32);
}

#[test]
fn receiving_allocates_nothing_per_message_single_and_batched() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    assert_counter_works();
    let bus = TestBus::start(&["--slots", "1024", "--slot-size", "256"]);
    let c = bus.connect();
    let sub = c.subscribe("alloc").unwrap();
    let n = 2 * (WARM + MEASURED);
    let publisher = bus.peer(&["pub", "path=alloc://x", "publisher=5", &format!("count={n}")]);
    let mut check = |m: &bus_client::Message<'_>| {
        std::hint::black_box(m.body::<Seq>().expect("a Seq").seq.to_native());
    };
    for _ in 0..WARM {
        check(&sub.recv_timeout(Duration::from_secs(30)).unwrap());
    }
    let before = allocations();
    for _ in 0..MEASURED {
        check(&sub.recv_timeout(Duration::from_secs(30)).unwrap());
    }
    let single = allocations() - before;

    let mut out = Vec::with_capacity(32);
    let mut got = 0;
    while got < WARM {
        got += sub.recv_batch(&mut out, 32, Some(Duration::from_secs(30))).unwrap() as u64;
        out.iter().for_each(&mut check);
        out.clear();
    }
    let before = allocations();
    let mut measured = 0;
    // The publisher sends 2 x (WARM + MEASURED); the single phase took half.
    while got < WARM + MEASURED {
        let k = sub.recv_batch(&mut out, 32, Some(Duration::from_secs(30))).unwrap() as u64;
        got += k;
        measured += k;
        out.iter().for_each(&mut check);
        out.clear();
    }
    let batched = allocations() - before;
    let (st, _, err) = publisher.wait(Duration::from_secs(60));
    assert!(st.success(), "{err}");
    assert_eq!(single, 0, "allocations in {MEASURED} single receives");
    assert_eq!(batched, 0, "allocations in {measured} batched receives");
}

#[test]
fn matching_a_route_among_100_allocates_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    assert_counter_works();
    let mut router = bus_client::Router::new("svc").unwrap();
    for i in 0..50 {
        router = router.route(&format!("static/path{i}/list"), |_| Ok(())).unwrap();
        router = router.route(&format!("items{i}/{{id}}/detail"), |_| Ok(())).unwrap();
    }
    let routes: Vec<String> = (0..100)
        .map(|i| if i % 2 == 0 { format!("static/path{}/list", i / 2) } else { format!("items{}/{i}/detail", i / 2) })
        .collect();
    let before = allocations();
    let mut params = 0;
    for i in 0..10_000 {
        let (_, p) = router.at(&routes[i % 100]).expect("a match");
        params += p.get("id").map_or(0, str::len);
    }
    assert!(params > 0);
    assert_eq!(allocations() - before, 0, "allocations in 10 000 route matches");
}

#[test]
fn pipelined_requests_allocate_nothing_per_request_on_either_side() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    assert_counter_works();
    let bus = TestBus::start(&["--slots", "1024", "--slot-size", "256"]);
    let c = bus.connect();
    // The service in this process (its worker a thread here), so that the
    // process-wide count covers requester and worker both.
    let router = bus_client::Router::new("allocsvc")
        .unwrap()
        .route("echo", |ctx| Ok(ctx.reply_bytes(ctx.message().body_bytes()?)?))
        .unwrap();
    let service = c.serve(router).start().unwrap();
    let mut p = c.pipeline(32).unwrap();
    let mut run = |n: u64| {
        for i in 0..n {
            if p.in_flight() == p.window() {
                let (_, reply) = p.next().unwrap();
                assert_eq!(reply.unwrap().body_bytes().unwrap().len(), 8);
            }
            p.submit_bytes("allocsvc://echo", &i.to_le_bytes(), Duration::from_secs(10)).unwrap();
        }
        while let Some((_, reply)) = p.next() {
            reply.unwrap();
        }
    };
    run(WARM);
    let before = ALL_ALLOCS.load(std::sync::atomic::Ordering::Relaxed);
    run(MEASURED);
    let during = ALL_ALLOCS.load(std::sync::atomic::Ordering::Relaxed) - before;
    drop(p);
    service.stop();
    // A few stray allocations of other threads (the connection's watcher)
    // may fall in the window; one per request would be 50 000.
    assert!(during < 10, "{during} allocations in {MEASURED} pipelined requests");
}
