//! loom models of the index ring and the doorbell protocol, on heap copies of
//! the same `#[repr(C)]` structs the segment holds. Run with
//! `RUSTFLAGS="--cfg loom" cargo test -p bus-core --test loom --release`.
#![cfg(loom)]

use bus_core::queue::OwnedRing;
use loom::sync::Arc;
use loom::thread;

/// Pops until `n` entries arrived, sleeping on the doorbell when empty; a
/// missed wake-up leaves this thread blocked forever, which loom reports
/// as a deadlock.
fn pop_blocking(r: &OwnedRing, n: usize) -> Vec<u32> {
    let ring = r.ring();
    let bell = &ring.header().items;
    let mut got = Vec::new();
    while got.len() < n {
        if let Some(i) = ring.pop() {
            got.push(i);
            continue;
        }
        let seen = bell.announce();
        if let Some(i) = ring.pop() {
            bell.retire();
            got.push(i);
            continue;
        }
        bell.sleep(seen, None);
    }
    got
}

#[test]
fn two_producers_one_sleeping_consumer_nothing_lost_nothing_duplicated_no_missed_wakeup() {
    loom::model(|| {
        let r = Arc::new(OwnedRing::new(2));
        let producers: Vec<_> = (0..2u32)
            .map(|p| {
                let r = r.clone();
                thread::spawn(move || {
                    let ring = r.ring();
                    ring.push(p).unwrap();
                    ring.notify_items();
                })
            })
            .collect();
        let mut got = pop_blocking(&r, 2);
        for h in producers {
            h.join().unwrap();
        }
        got.sort();
        assert_eq!(got, vec![0, 1]);
    });
}

#[test]
fn a_producer_that_laps_a_small_ring_keeps_fifo_order() {
    loom::model(|| {
        let r = Arc::new(OwnedRing::new(2));
        let r2 = r.clone();
        let producer = thread::spawn(move || {
            let ring = r2.ring();
            for i in 0..3u32 {
                while ring.push(i).is_err() {
                    loom::thread::yield_now();
                }
                ring.notify_items();
            }
        });
        let got = pop_blocking(&r, 3);
        producer.join().unwrap();
        assert_eq!(got, vec![0, 1, 2]);
    });
}

#[test]
fn two_consumers_share_entries_without_duplicates() {
    loom::model(|| {
        let r = Arc::new(OwnedRing::new(2));
        r.ring().push(7).unwrap();
        r.ring().push(8).unwrap();
        let consumers: Vec<_> = (0..2)
            .map(|_| {
                let r = r.clone();
                thread::spawn(move || r.ring().pop())
            })
            .collect();
        let mut got: Vec<u32> = consumers.into_iter().filter_map(|h| h.join().unwrap()).collect();
        got.sort();
        assert_eq!(got, vec![7, 8]);
        assert_eq!(r.ring().pop(), None);
    });
}

#[test]
fn two_sleeping_consumers_of_one_ring_are_both_woken() {
    loom::model(|| {
        let r = Arc::new(OwnedRing::new(2));
        let consumers: Vec<_> = (0..2)
            .map(|_| {
                let r = r.clone();
                thread::spawn(move || pop_blocking(&r, 1))
            })
            .collect();
        for p in 0..2u32 {
            let ring = r.ring();
            ring.push(p).unwrap();
            ring.notify_items();
        }
        let mut got: Vec<u32> = consumers.into_iter().flat_map(|h| h.join().unwrap()).collect();
        got.sort();
        assert_eq!(got, vec![0, 1]);
    });
}

#[test]
fn batch_pushes_and_pops_lapping_a_small_ring_keep_fifo_order() {
    loom::model(|| {
        let r = Arc::new(OwnedRing::new(2));
        let r2 = r.clone();
        let producer = thread::spawn(move || {
            let ring = r2.ring();
            let items = [0u32, 1, 2];
            let mut at = 0;
            while at < items.len() {
                at += ring.push_many(&items[at..], |_| {});
                loom::thread::yield_now();
            }
        });
        let ring = r.ring();
        let mut got = Vec::new();
        while got.len() < 3 {
            if ring.pop_many(2, |_| {}, |i| got.push(i)) == 0 {
                loom::thread::yield_now();
            }
        }
        producer.join().unwrap();
        assert_eq!(got, vec![0, 1, 2]);
    });
}

/// Pops until `n` entries arrived, yielding while the ring is empty.
fn pop_spinning(r: &OwnedRing, n: usize) -> Vec<u32> {
    let ring = r.ring();
    let mut got = Vec::new();
    while got.len() < n {
        match ring.pop() {
            Some(i) => got.push(i),
            None => thread::yield_now(),
        }
    }
    got
}

#[test]
fn a_producer_killed_between_its_cell_cas_and_its_tail_move_stops_nobody() {
    loom::model(|| {
        let r = Arc::new(OwnedRing::new(2));
        r.push_and_die(5);
        let r2 = r.clone();
        // Another producer pushes twice (lapping the cell the dead one left,
        // once a consumer took it) while a consumer takes all three.
        let producer = thread::spawn(move || {
            let ring = r2.ring();
            for i in [6, 7] {
                while ring.push(i).is_err() {
                    thread::yield_now();
                }
            }
        });
        let got = pop_spinning(&r, 3);
        producer.join().unwrap();
        assert_eq!(got, vec![5, 6, 7]);
        assert_eq!(r.ring().pop(), None);
    });
}

#[test]
fn a_consumer_killed_between_its_cell_cas_and_its_head_move_stops_nobody() {
    loom::model(|| {
        let r = Arc::new(OwnedRing::new(2));
        r.ring().push(4).unwrap();
        assert_eq!(r.pop_and_die(), 4);
        let r2 = r.clone();
        let producer = thread::spawn(move || {
            let ring = r2.ring();
            for i in [5, 6] {
                while ring.push(i).is_err() {
                    thread::yield_now();
                }
            }
        });
        let r3 = r.clone();
        let consumer = thread::spawn(move || pop_spinning(&r3, 2));
        producer.join().unwrap();
        assert_eq!(consumer.join().unwrap(), vec![5, 6]);
    });
}
