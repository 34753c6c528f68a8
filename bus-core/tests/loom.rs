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

/// Two consumers of `r` that each take one entry, sleeping when empty.
fn two_sleeping_consumers(r: &Arc<OwnedRing>) -> Vec<thread::JoinHandle<Vec<u32>>> {
    (0..2)
        .map(|_| {
            let r = r.clone();
            thread::spawn(move || pop_blocking(&r, 1))
        })
        .collect()
}

/// What the consumers took, sorted.
fn taken(consumers: Vec<thread::JoinHandle<Vec<u32>>>) -> Vec<u32> {
    let mut got: Vec<u32> = consumers.into_iter().flat_map(|h| h.join().unwrap()).collect();
    got.sort();
    got
}

#[test]
fn two_sleeping_consumers_of_one_ring_are_both_woken() {
    loom::model(|| {
        let r = Arc::new(OwnedRing::new(2));
        let consumers = two_sleeping_consumers(&r);
        for p in 0..2u32 {
            let ring = r.ring();
            ring.push(p).unwrap();
            ring.notify_items();
        }
        assert_eq!(taken(consumers), vec![0, 1]);
    });
}

#[test]
fn a_batch_push_rung_once_for_its_size_wakes_both_sleeping_consumers() {
    // `ring_n` (a batch of requests for sleeping workers): one call after
    // both pushes must reach both sleepers, whichever of them announced
    // itself when.
    loom::model(|| {
        let r = Arc::new(OwnedRing::new(2));
        let consumers = two_sleeping_consumers(&r);
        let ring = r.ring();
        assert_eq!(ring.push_many(&[0, 1], |_| {}), 2);
        ring.notify_items_n(2);
        assert_eq!(taken(consumers), vec![0, 1]);
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

mod ownership {
    //! The slot ownership protocol of consumer groups (`bus_core::ownership`):
    //! claims, releases, a publisher's take-back and drop, racing.
    use bus_core::ownership::{claim, clear_stale, drop_queued, holder_lock, release, roll_back, Own, SlotState};
    use loom::sync::atomic::{AtomicU64, Ordering};
    use loom::sync::Arc;
    use loom::thread;

    struct Slot {
        own: AtomicU64,
        holders: [AtomicU64; 2],
    }

    fn slot(queued: u16, held: u16) -> Arc<Slot> {
        Arc::new(Slot {
            own: AtomicU64::new(Own::published(1, queued, held)),
            holders: [AtomicU64::new(0), AtomicU64::new(0)],
        })
    }

    /// Claims for group `k` as `client`, then releases: (claimed, freed).
    fn receive(s: &Slot, k: u32, client: u32) -> (bool, bool) {
        let w = s.own.load(Ordering::Acquire);
        if !claim(&s.own, &s.holders[k as usize], w, k, client) {
            return (false, false);
        }
        (true, release(&s.own, k).expect("held by us"))
    }

    #[test]
    fn two_groups_and_a_duplicate_receiver_each_group_claims_once_and_one_release_frees() {
        loom::model(|| {
            let s = slot(0b11, 0);
            let threads: Vec<_> = [(0, 0), (0, 1), (1, 2)]
                .into_iter()
                .map(|(k, client)| {
                    let s = s.clone();
                    thread::spawn(move || receive(&s, k, client))
                })
                .collect();
            let r: Vec<(bool, bool)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            assert!(r[0].0 ^ r[1].0, "group 0 claims exactly once: {r:?}");
            assert!(r[2].0, "group 1 claims");
            assert_eq!(r.iter().filter(|x| x.1).count(), 1, "exactly one release frees: {r:?}");
            assert!(Own::unpack(s.own.load(Ordering::Relaxed)).is_free());
        });
    }

    #[test]
    fn a_take_back_and_a_claim_through_a_duplicate_entry_never_both_win() {
        loom::model(|| {
            let s = slot(0b1, 0);
            let word = s.own.load(Ordering::Relaxed);
            let p = {
                let s = s.clone();
                thread::spawn(move || roll_back(&s.own, word, 7))
            };
            let w = s.own.load(Ordering::Acquire);
            let claimed = claim(&s.own, &s.holders[0], w, 0, 3);
            let taken_back = p.join().unwrap();
            assert!(claimed ^ taken_back, "claimed {claimed}, taken back {taken_back}");
            let o = Own::unpack(s.own.load(Ordering::Relaxed));
            if taken_back {
                assert_eq!((o.state, o.gen, o.who), (Some(SlotState::Loaned), 2, 7));
            } else {
                assert_eq!((o.state, o.held), (Some(SlotState::Published), 1));
            }
        });
    }

    #[test]
    fn a_dropped_copy_and_another_groups_release_free_the_slot_exactly_once() {
        loom::model(|| {
            // Group 0 holds it; group 1's copy is still queued.
            let s = slot(0b10, 0b01);
            let p = {
                let s = s.clone();
                thread::spawn(move || drop_queued(&s.own, 1, 1))
            };
            let released = release(&s.own, 0).expect("held");
            let dropped = p.join().unwrap().expect("still queued");
            assert!(released ^ dropped, "one of the two frees it: {released} {dropped}");
            assert!(Own::unpack(s.own.load(Ordering::Relaxed)).is_free());
        });
    }

    #[test]
    fn the_daemons_audit_clearing_an_old_lock_never_makes_a_claim_skip_its_entry() {
        loom::model(|| {
            // Life 1 of the slot; the holder word still names life 0's
            // receiver (a release leaves its lock in place).
            let s = slot(0b1, 0);
            s.holders[0].store(holder_lock(0, 4), Ordering::Relaxed);
            let audit = {
                let s = s.clone();
                thread::spawn(move || clear_stale(&s.own, &s.holders[0]))
            };
            let w = s.own.load(Ordering::Acquire);
            assert!(claim(&s.own, &s.holders[0], w, 0, 3), "the only entry of this life must be claimed");
            audit.join().unwrap();
            assert_eq!(Own::unpack(s.own.load(Ordering::Relaxed)).held, 1);
            assert_eq!(s.holders[0].load(Ordering::Relaxed), holder_lock(1, 3), "the audit left the live lock");
        });
    }

    #[test]
    fn a_receiver_with_a_stale_view_never_overwrites_a_later_lives_lock() {
        loom::model(|| {
            // Life 2 is locked by client 5; a receiver still holds a view
            // of life 1 (it loaded `own` before the slot moved on).
            let s = slot(0b1, 0);
            let stale = s.own.load(Ordering::Relaxed);
            s.own.store(Own::published(2, 0, 1), Ordering::Relaxed);
            s.holders[0].store(holder_lock(2, 5), Ordering::Relaxed);
            let t = {
                let s = s.clone();
                thread::spawn(move || claim(&s.own, &s.holders[0], stale, 0, 3))
            };
            assert!(!t.join().unwrap());
            assert_eq!(s.holders[0].load(Ordering::Relaxed), holder_lock(2, 5));
        });
    }
}
