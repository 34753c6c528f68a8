//! The routing table: subsystem name → queue. Written only by the daemon
//! under a per-entry seqlock, read lock-free by publishers, who cache what
//! they resolved and revalidate it against `routes_version`.
//!
//! SYNC: route-seqlock. Writer: `seq` to odd (Relaxed), Release fence, field
//! stores (Relaxed), `seq` to even (Release), then `routes_version += 1`
//! (Release). Reader: `seq` (Acquire), field loads (Relaxed), Acquire fence,
//! `seq` again (Relaxed); equal and even means the fields are one version.

use crate::layout::{RouteEntry, ROUTE_ACTIVE, ROUTE_DURABLE, ROUTE_UNUSED, SUBSYSTEM_NAME_MAX};
use crate::path::{fnv1a, validate_subsystem};
use crate::segment::Segment;
use std::sync::atomic::{fence, Ordering};

/// A consistent copy of one routing entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteView {
    /// The entry (and queue) index.
    pub queue: u32,
    /// Name bytes (`name_len` used).
    name: [u8; SUBSYSTEM_NAME_MAX],
    name_len: u8,
    /// Connected subscriptions.
    pub subscribers: u32,
    /// Queued even without subscribers.
    pub durable: bool,
}

impl RouteView {
    /// The subsystem name.
    pub fn name(&self) -> &str {
        std::str::from_utf8(&self.name[..self.name_len as usize]).unwrap_or("")
    }

    /// Whether a message sent now would be queued.
    pub fn deliverable(&self) -> bool {
        self.subscribers > 0 || self.durable
    }
}

fn pack_name(name: &str) -> [u64; 4] {
    let mut bytes = [0u8; 32];
    bytes[..name.len()].copy_from_slice(name.as_bytes());
    core::array::from_fn(|i| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes")))
}

/// How many times a client reader retries an entry that is being written
/// (the daemon's write is a handful of stores, but the daemon may be
/// preempted in it): [`READER_SPINS`] spins, then yields, for at most
/// [`READER_PATIENCE`] in all.
const READER_TRIES: u32 = 2_000;
/// Retries that spin before a reader starts yielding.
const READER_SPINS: u32 = 64;
/// The most time a reader waits for entries to settle, whatever
/// [`READER_TRIES`] says, over one [`read`] or one whole [`find`]: on a
/// loaded machine one `yield_now` may give the CPU away for a whole
/// time-slice, and 2000 of them took 6 to 12 s in the hostile-bytes test
/// (an entry whose `seq` a faulty process left odd), inside a send whose
/// timeout was 500 ms.
const READER_PATIENCE: std::time::Duration = std::time::Duration::from_millis(10);

/// How long a reader may keep retrying entries found mid-write. One budget
/// covers every entry a lookup reads, so that many entries left mid-write
/// cannot add up.
struct Patience {
    /// Retries left.
    tries: u32,
    /// Retries made.
    used: u32,
    /// When the first yield was made (the clock is read only once spinning
    /// did not do).
    since: Option<std::time::Instant>,
}

impl Patience {
    /// A client's: [`READER_TRIES`] retries within [`READER_PATIENCE`].
    fn reader() -> Patience {
        Patience { tries: READER_TRIES - 1, used: 0, since: None }
    }

    /// The daemon's: no retry (it is the only writer).
    fn writer() -> Patience {
        Patience { tries: 0, used: 0, since: None }
    }

    /// Waits a little before one more look; `false` once patience is out.
    fn again(&mut self) -> bool {
        if self.tries == 0 {
            return false;
        }
        self.tries -= 1;
        self.used += 1;
        if self.used <= READER_SPINS {
            std::hint::spin_loop();
            return true;
        }
        let since = *self.since.get_or_insert_with(std::time::Instant::now);
        if since.elapsed() >= READER_PATIENCE {
            self.tries = 0;
            return false;
        }
        std::thread::yield_now();
        true
    }
}

/// Reads entry `q` consistently. `None` if unused, out of range, or its
/// contents are invalid (a corrupt entry is treated as absent), or if its
/// seqlock never settles (counted as corruption: a reader never waits on it
/// beyond `READER_PATIENCE`, 10 ms).
pub fn read(seg: &Segment, q: u32) -> Option<RouteView> {
    read_within(seg, q, &mut Patience::reader())
}

/// [`read`] for the daemon, the table's only writer: an entry it finds
/// mid-write was not left so by itself, so it is corrupt at once (counted;
/// the daemon's next write of the entry makes its seq even again).
pub fn read_as_writer(seg: &Segment, q: u32) -> Option<RouteView> {
    read_within(seg, q, &mut Patience::writer())
}

fn read_within(seg: &Segment, q: u32, patience: &mut Patience) -> Option<RouteView> {
    let e = seg.route(q)?;
    // Every entry gets one look, even when an earlier one used up the
    // patience; retries need patience left.
    let mut first = true;
    loop {
        if !std::mem::take(&mut first) && !patience.again() {
            seg.header().counters.corruption.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        // SYNC: route-seqlock — pairs with the writer's final Release store.
        let s1 = e.seq.load(Ordering::Acquire);
        if s1 & 1 == 1 {
            continue;
        }
        let state = e.state.load(Ordering::Relaxed);
        let len = e.name_len.load(Ordering::Relaxed) as usize;
        let words: [u64; 4] = core::array::from_fn(|i| e.name[i].load(Ordering::Relaxed));
        let subscribers = e.subscribers.load(Ordering::Relaxed);
        let flags = e.flags.load(Ordering::Relaxed);
        // SYNC: route-seqlock — keeps the field loads before the re-check.
        fence(Ordering::Acquire);
        if e.seq.load(Ordering::Relaxed) != s1 {
            continue;
        }
        if state != ROUTE_ACTIVE || len == 0 || len > SUBSYSTEM_NAME_MAX {
            return None;
        }
        let mut name = [0u8; SUBSYSTEM_NAME_MAX];
        for (i, w) in words.iter().enumerate() {
            name[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        let s = std::str::from_utf8(&name[..len]).ok()?;
        // User subsystems, or a requester's reply queue `_reply.<serial>.<n>`.
        let reply = s.strip_prefix('_').is_some_and(|r| r.starts_with("reply.") && validate_subsystem(r).is_ok());
        if !reply {
            validate_subsystem(s).ok()?;
        }
        return Some(RouteView {
            queue: q,
            name,
            name_len: len as u8,
            subscribers,
            durable: flags & ROUTE_DURABLE != 0,
        });
    }
}

/// Finds the entry of subsystem `name`.
pub fn find(seg: &Segment, name: &str) -> Option<RouteView> {
    find_with(seg, name, Patience::reader())
}

fn find_with(seg: &Segment, name: &str, mut patience: Patience) -> Option<RouteView> {
    let h = fnv1a(name.as_bytes());
    (0..seg.params().max_subsystems)
        .filter(|&q| seg.route(q).is_some_and(|e| e.hash.load(Ordering::Relaxed) == h))
        .filter_map(|q| read_within(seg, q, &mut patience))
        .find(|v| v.name() == name)
}

/// The current routes version (Acquire: pairs with [`write`]'s bump).
pub fn version(seg: &Segment) -> u64 {
    seg.header().live.routes_version.load(Ordering::Acquire)
}

/// The table has no unused entry left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the routing table is full ({max} subsystems): raise --max-subsystems")]
pub struct TableFull {
    /// Its size.
    pub max: u32,
}

/// Daemon only: finds or creates the entry of `name` (already validated).
/// When no entry is unused, an entry for which `recyclable(q)` holds is
/// taken over (the daemon decides: no subscriber, not durable, empty queue,
/// idle long enough). Returns the queue and whether it was newly assigned.
pub fn find_or_create(
    seg: &Segment,
    name: &str,
    durable: bool,
    recyclable: impl Fn(u32) -> bool,
) -> Result<(u32, bool), TableFull> {
    if let Some(v) = find_with(seg, name, Patience::writer()) {
        if durable && !v.durable {
            write(seg, v.queue, |e| e.flags.store(ROUTE_DURABLE, Ordering::Relaxed));
        }
        return Ok((v.queue, false));
    }
    let max = seg.params().max_subsystems;
    let q = (0..max)
        .find(|&q| seg.route(q).is_some_and(|e| e.state.load(Ordering::Relaxed) != ROUTE_ACTIVE))
        .or_else(|| (0..max).find(|&q| recyclable(q)))
        .ok_or(TableFull { max })?;
    let words = pack_name(name);
    write(seg, q, |e| {
        e.name_len.store(name.len() as u32, Ordering::Relaxed);
        for (slot, w) in e.name.iter().zip(words) {
            slot.store(w, Ordering::Relaxed);
        }
        e.hash.store(fnv1a(name.as_bytes()), Ordering::Relaxed);
        e.subscribers.store(0, Ordering::Relaxed);
        e.flags.store(if durable { ROUTE_DURABLE } else { 0 }, Ordering::Relaxed);
        e.state.store(ROUTE_ACTIVE, Ordering::Relaxed);
    });
    Ok((q, true))
}

/// Daemon only: sets the subscriber count of entry `q`.
pub fn set_subscribers(seg: &Segment, q: u32, n: u32) {
    write(seg, q, |e| e.subscribers.store(n, Ordering::Relaxed));
}

/// What the daemon last wrote into a routing entry (its own record, which
/// a faulty process cannot change): `None` for an entry never assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected<'a> {
    /// The subsystem.
    pub name: &'a str,
    /// Queued without subscribers.
    pub durable: bool,
    /// Connected subscriptions.
    pub subscribers: u32,
}

/// Daemon only: whether entry `q` holds exactly what the daemon wrote
/// (`expect`; `None`: never assigned, all zero), with its seqlock at rest.
/// The daemon is the only writer, so it reads its own words directly; any
/// difference was made by a faulty process. `true` for an out-of-range `q`.
pub fn matches(seg: &Segment, q: u32, expect: Option<Expected<'_>>) -> bool {
    let Some(e) = seg.route(q) else { return true };
    let (state, len, words, hash, flags, subscribers) = match expect {
        Some(x) => (
            ROUTE_ACTIVE,
            x.name.len() as u32,
            pack_name(x.name),
            fnv1a(x.name.as_bytes()),
            if x.durable { ROUTE_DURABLE } else { 0 },
            x.subscribers,
        ),
        None => (ROUTE_UNUSED, 0, [0; 4], 0, 0, 0),
    };
    e.seq.load(Ordering::Relaxed) & 1 == 0
        && e.state.load(Ordering::Relaxed) == state
        && e.name_len.load(Ordering::Relaxed) == len
        && e.name.iter().zip(words).all(|(w, x)| w.load(Ordering::Relaxed) == x)
        && e.hash.load(Ordering::Relaxed) == hash
        && e.flags.load(Ordering::Relaxed) == flags
        && e.subscribers.load(Ordering::Relaxed) == subscribers
        && e.reserved.load(Ordering::Relaxed) == 0
}

/// Daemon only: rewrites every field of entry `q` from the daemon's own
/// record (`None`: unused), in one seqlocked write (so readers see the old
/// or the new entry) that also bumps the routes version (so publishers drop
/// what they cached). How the daemon repairs an entry that [`matches()`]
/// found overwritten. `name` must be valid (the daemon validated it).
pub fn rewrite(seg: &Segment, q: u32, expect: Option<Expected<'_>>) {
    if seg.route(q).is_none() {
        return;
    }
    write(seg, q, |e| {
        let (state, name, durable, subscribers) = match expect {
            Some(x) => (ROUTE_ACTIVE, x.name, x.durable, x.subscribers),
            None => (ROUTE_UNUSED, "", false, 0),
        };
        e.name_len.store(name.len() as u32, Ordering::Relaxed);
        for (slot, w) in e.name.iter().zip(pack_name(name)) {
            slot.store(w, Ordering::Relaxed);
        }
        e.hash.store(if expect.is_some() { fnv1a(name.as_bytes()) } else { 0 }, Ordering::Relaxed);
        e.subscribers.store(subscribers, Ordering::Relaxed);
        e.flags.store(if durable { ROUTE_DURABLE } else { 0 }, Ordering::Relaxed);
        e.reserved.store(0, Ordering::Relaxed);
        e.state.store(state, Ordering::Relaxed);
    });
}

/// Daemon only: one seqlocked write of entry `q`, then the version bump.
fn write(seg: &Segment, q: u32, f: impl FnOnce(&RouteEntry)) {
    let e = seg.route(q).expect("daemon passes valid entries");
    let s = e.seq.load(Ordering::Relaxed);
    // Odd, and ahead of `s` even if a faulty process left `s` odd: the
    // final value is then two ahead of any even value a reader may have
    // seen before, never equal to it.
    let odd = s.wrapping_add(1) | 1;
    e.seq.store(odd, Ordering::Relaxed);
    // SYNC: route-seqlock — the odd seq is visible before any field store.
    fence(Ordering::Release);
    f(e);
    // SYNC: route-seqlock — pairs with the reader's first Acquire load.
    e.seq.store(odd.wrapping_add(1), Ordering::Release);
    // SYNC: routes-version — pairs with `version`'s Acquire load.
    seg.header().live.routes_version.fetch_add(1, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Shape;

    fn seg() -> Segment {
        Segment::create(
            &Shape { slot_count: 4, slot_size: 128, queue_capacity: 2, max_subsystems: 2, max_clients: 1 },
            "t",
            1,
        )
        .unwrap()
    }

    #[test]
    fn created_entries_are_found_by_name_and_bump_the_version() {
        let seg = seg();
        let v0 = version(&seg);
        assert!(find(&seg, "api").is_none());
        let (q, new) = find_or_create(&seg, "api", false, |_| false).unwrap();
        assert!(new);
        assert_eq!(find_or_create(&seg, "api", false, |_| false).unwrap(), (q, false));
        let v = find(&seg, "api").unwrap();
        assert_eq!((v.name(), v.subscribers, v.deliverable()), ("api", 0, false));
        set_subscribers(&seg, q, 2);
        assert!(find(&seg, "api").unwrap().deliverable());
        assert!(version(&seg) > v0);
    }

    #[test]
    fn a_full_table_is_an_error_naming_the_limit() {
        let seg = seg();
        find_or_create(&seg, "a", false, |_| false).unwrap();
        find_or_create(&seg, "b", true, |_| false).unwrap();
        assert!(find(&seg, "b").unwrap().deliverable());
        assert_eq!(find_or_create(&seg, "c", false, |_| false), Err(TableFull { max: 2 }));
        // An entry the daemon declares recyclable is taken over.
        let (q, new) = find_or_create(&seg, "c", false, |q| q == 0).unwrap();
        assert_eq!((q, new), (0, true));
        assert!(find(&seg, "a").is_none());
        assert_eq!(find(&seg, "c").unwrap().queue, 0);
    }

    #[test]
    fn an_entry_whose_seqlock_never_settles_reads_as_absent_and_is_counted() {
        let seg = seg();
        let (q, _) = find_or_create(&seg, "api", false, |_| false).unwrap();
        seg.route(q).unwrap().seq.store(7, Ordering::Relaxed); // odd, forever
        assert!(read(&seg, q).is_none());
        assert!(read_as_writer(&seg, q).is_none());
        assert_eq!(seg.header().counters.corruption.load(Ordering::Relaxed), 2);
        // The daemon's next write of the entry repairs it.
        set_subscribers(&seg, q, 1);
        assert_eq!(read(&seg, q).unwrap().subscribers, 1);
    }

    #[test]
    fn a_lookup_over_entries_that_never_settle_gives_up_within_its_patience() {
        let seg = seg();
        find_or_create(&seg, "api", false, |_| false).unwrap();
        find_or_create(&seg, "web", false, |_| false).unwrap();
        // Both entries claim the hash of "api" and are mid-write forever.
        for q in 0..2 {
            let e = seg.route(q).unwrap();
            e.hash.store(fnv1a(b"api"), Ordering::Relaxed);
            e.seq.store(9, Ordering::Relaxed);
        }
        // Keep both CPUs busy, so that yields give the CPU away.
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                });
            }
            let started = std::time::Instant::now();
            assert!(find(&seg, "api").is_none());
            let took = started.elapsed();
            stop.store(true, Ordering::Relaxed);
            assert!(took < READER_PATIENCE * 20, "took {took:?}");
        });
        assert_eq!(seg.header().counters.corruption.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn an_overwritten_entry_is_found_and_rewritten_from_the_daemons_record() {
        let seg = seg();
        let (q, _) = find_or_create(&seg, "api", true, |_| false).unwrap();
        set_subscribers(&seg, q, 2);
        let expect = Some(Expected { name: "api", durable: true, subscribers: 2 });
        assert!(matches(&seg, q, expect));
        assert!(matches(&seg, 1, None));
        // A faulty process: an odd seq and a wrong hash in one entry, a
        // plausible "api" in the unused one.
        let e = seg.route(q).unwrap();
        e.seq.fetch_add(1, Ordering::Relaxed);
        e.hash.store(5, Ordering::Relaxed);
        let other = seg.route(1).unwrap();
        other.state.store(ROUTE_ACTIVE, Ordering::Relaxed);
        assert!(!matches(&seg, q, expect));
        assert!(!matches(&seg, 1, None));
        let v0 = version(&seg);
        rewrite(&seg, q, expect);
        rewrite(&seg, 1, None);
        assert!(matches(&seg, q, expect) && matches(&seg, 1, None));
        assert!(version(&seg) > v0);
        let v = find(&seg, "api").unwrap();
        assert_eq!((v.queue, v.subscribers, v.durable), (q, 2, true));
        assert!(read(&seg, 1).is_none());
    }

    #[test]
    fn a_corrupt_entry_reads_as_absent() {
        let seg = seg();
        let (q, _) = find_or_create(&seg, "api", false, |_| false).unwrap();
        seg.route(q).unwrap().name_len.store(200, Ordering::Relaxed);
        assert!(read(&seg, q).is_none());
    }
}
