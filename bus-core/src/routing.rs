//! The routing table: subsystem name → its groups' queues. Written only by
//! the daemon under a per-entry seqlock, read lock-free by publishers, who
//! cache what they resolved and revalidate it against `routes_version`.
//!
//! A subsystem entry is also the queue of the subsystem's default group
//! (group slot 0). Each other group of the subsystem (a consumer group, a
//! tap) has an entry of its own, of state [`ROUTE_GROUP`], whose queue it
//! is; the subsystem entry lists them by group slot, with the mask of the
//! groups a message sent now goes to and of those that are lossy. A
//! publisher reads that one entry ([`RouteView::fanout`]); a receiver knows
//! its group's slot and queue from its subscription.
//!
//! SYNC: route-seqlock. Writer: `seq` to odd (Relaxed), Release fence, field
//! stores (Relaxed), `seq` to even (Release), then `routes_version += 1`
//! (Release). Reader: `seq` (Acquire), field loads (Relaxed), Acquire fence,
//! `seq` again (Relaxed); equal and even means the fields are one version.

use crate::layout::{
    RouteEntry, MAX_GROUPS, ROUTE_ACTIVE, ROUTE_DURABLE, ROUTE_EPHEMERAL, ROUTE_GROUP, ROUTE_LOSSY, ROUTE_UNUSED,
    SUBSYSTEM_NAME_MAX,
};
use crate::path::{fnv1a, validate_subsystem};
use crate::segment::Segment;
use crate::slot_pool::Fanout;
use std::sync::atomic::{fence, Ordering};

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A subsystem (and its default group's queue), with its groups.
    Subsystem {
        /// Group slots a message sent now goes to (bit k: slot k).
        groups: u16,
        /// Of those, the lossy ones.
        lossy: u16,
        /// The queue of each group slot (slot 0: this entry).
        queues: [u16; MAX_GROUPS],
    },
    /// Group slot `slot` (≥ 1) of subsystem entry `subsystem`.
    Group {
        /// The subsystem's entry.
        subsystem: u32,
        /// The group's slot.
        slot: u32,
    },
}

/// A consistent copy of one routing entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteView {
    /// The entry (and queue) index.
    pub queue: u32,
    /// Name bytes (`name_len` used).
    name: [u8; SUBSYSTEM_NAME_MAX],
    name_len: u8,
    /// Connected subscriptions (of this entry's group).
    pub subscribers: u32,
    /// Queued even without subscribers.
    pub durable: bool,
    /// `ROUTE_*` flags.
    pub flags: u32,
    /// Subsystem or group.
    pub kind: Kind,
}

impl RouteView {
    /// The subsystem's (or group's) name.
    pub fn name(&self) -> &str {
        std::str::from_utf8(&self.name[..self.name_len as usize]).unwrap_or("")
    }

    /// Whether a message sent now would be queued for at least one group.
    pub fn deliverable(&self) -> bool {
        match self.kind {
            Kind::Subsystem { groups, .. } => groups != 0,
            Kind::Group { .. } => false,
        }
    }

    /// Where a message sent to this subsystem now goes (`None` for a group
    /// entry).
    pub fn fanout(&self) -> Option<Fanout> {
        match self.kind {
            Kind::Subsystem { groups, lossy, queues } => {
                Some(Fanout { subsystem: self.queue, mask: groups, lossy: lossy & groups, queues })
            }
            Kind::Group { .. } => None,
        }
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
        let groups = e.groups.load(Ordering::Relaxed);
        let parent = e.parent.load(Ordering::Relaxed);
        let gq: [u32; MAX_GROUPS / 2] = core::array::from_fn(|i| e.group_queues[i].load(Ordering::Relaxed));
        // SYNC: route-seqlock — keeps the field loads before the re-check.
        fence(Ordering::Acquire);
        if e.seq.load(Ordering::Relaxed) != s1 {
            continue;
        }
        if len == 0 || len > SUBSYSTEM_NAME_MAX {
            return None;
        }
        let p = seg.params();
        let kind = match state {
            ROUTE_ACTIVE => {
                let queues: [u16; MAX_GROUPS] = core::array::from_fn(|k| (gq[k / 2] >> (16 * (k % 2))) as u16);
                let mask = groups as u16;
                // Every group slot in use names a queue in range; slot 0 is
                // the entry itself.
                let in_range = crate::slot_pool::bits(mask)
                    .all(|k| k < p.max_groups && (queues[k as usize] as u32) < p.max_subsystems);
                if !in_range || queues[0] as u32 != q || parent != 0 {
                    return None;
                }
                Kind::Subsystem { groups: mask, lossy: (groups >> 16) as u16, queues }
            }
            ROUTE_GROUP => {
                let (subsystem, slot) = ((parent & 0xffff).wrapping_sub(1), parent >> 16);
                if subsystem >= p.max_subsystems || slot == 0 || slot >= p.max_groups {
                    return None;
                }
                Kind::Group { subsystem, slot }
            }
            _ => return None,
        };
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
            flags,
            kind,
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
        .find(|v| v.name() == name && matches!(v.kind, Kind::Subsystem { .. }))
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

/// Daemon only: an entry for a new subsystem or group: an unused one, or
/// else one for which `recyclable(q)` holds (the daemon decides: no
/// subscriber, not durable, empty queue, idle long enough).
pub fn pick_entry(seg: &Segment, recyclable: impl Fn(u32) -> bool) -> Result<u32, TableFull> {
    let max = seg.params().max_subsystems;
    (0..max)
        .find(|&q| seg.route(q).is_some_and(|e| e.state.load(Ordering::Relaxed) == ROUTE_UNUSED))
        .or_else(|| (0..max).find(|&q| recyclable(q)))
        .ok_or(TableFull { max })
}

/// What the daemon last wrote into a routing entry (its own record, which
/// a faulty process cannot change): `None` for an entry never assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected<'a> {
    /// The subsystem or group.
    pub name: &'a str,
    /// `ROUTE_DURABLE`, `ROUTE_LOSSY`, `ROUTE_EPHEMERAL`.
    pub flags: u32,
    /// Connected subscriptions.
    pub subscribers: u32,
    /// Subsystem (with its groups) or group.
    pub kind: Kind,
}

/// The words of entry fields an [`Expected`] (or `None`) stands for:
/// state, groups, parent, group queues.
fn words_of(expect: Option<&Expected<'_>>, q: u32) -> (u32, u32, u32, [u32; MAX_GROUPS / 2]) {
    match expect.map(|x| x.kind) {
        None => (ROUTE_UNUSED, 0, 0, [0; MAX_GROUPS / 2]),
        Some(Kind::Subsystem { groups, lossy, mut queues }) => {
            queues[0] = q as u16;
            let gq = core::array::from_fn(|i| queues[2 * i] as u32 | (queues[2 * i + 1] as u32) << 16);
            (ROUTE_ACTIVE, groups as u32 | (lossy as u32) << 16, 0, gq)
        }
        Some(Kind::Group { subsystem, slot }) => (ROUTE_GROUP, 0, slot << 16 | (subsystem + 1), [0; MAX_GROUPS / 2]),
    }
}

/// Daemon only: whether entry `q` holds exactly what the daemon wrote
/// (`expect`; `None`: never assigned, all zero), with its seqlock at rest.
/// The daemon is the only writer, so it reads its own words directly; any
/// difference was made by a faulty process. `true` for an out-of-range `q`.
pub fn matches(seg: &Segment, q: u32, expect: Option<Expected<'_>>) -> bool {
    let Some(e) = seg.route(q) else { return true };
    let (name, flags, subscribers) = expect.map_or(("", 0, 0), |x| (x.name, x.flags, x.subscribers));
    let (state, groups, parent, gq) = words_of(expect.as_ref(), q);
    let hash = if expect.is_some() { fnv1a(name.as_bytes()) } else { 0 };
    e.seq.load(Ordering::Relaxed) & 1 == 0
        && e.state.load(Ordering::Relaxed) == state
        && e.name_len.load(Ordering::Relaxed) == name.len() as u32
        && e.name.iter().zip(pack_name(name)).all(|(w, x)| w.load(Ordering::Relaxed) == x)
        && e.hash.load(Ordering::Relaxed) == hash
        && e.flags.load(Ordering::Relaxed) == flags
        && e.subscribers.load(Ordering::Relaxed) == subscribers
        && e.reserved.load(Ordering::Relaxed) == 0
        && e.groups.load(Ordering::Relaxed) == groups
        && e.parent.load(Ordering::Relaxed) == parent
        && e.group_queues.iter().zip(gq).all(|(w, x)| w.load(Ordering::Relaxed) == x)
        && e.reserved2.iter().all(|w| w.load(Ordering::Relaxed) == 0)
}

/// Daemon only: writes every field of entry `q` from the daemon's own
/// record (`None`: unused), in one seqlocked write (so readers see the old
/// or the new entry) that also bumps the routes version (so publishers drop
/// what they cached). How the daemon assigns, updates and frees entries,
/// and how it repairs one that [`matches()`] found overwritten. `name` must
/// be valid (the daemon validated it).
pub fn rewrite(seg: &Segment, q: u32, expect: Option<Expected<'_>>) {
    if seg.route(q).is_none() {
        return;
    }
    let (name, flags, subscribers) = expect.map_or(("", 0, 0), |x| (x.name, x.flags, x.subscribers));
    let (state, groups, parent, gq) = words_of(expect.as_ref(), q);
    write(seg, q, |e| {
        e.name_len.store(name.len() as u32, Ordering::Relaxed);
        for (slot, w) in e.name.iter().zip(pack_name(name)) {
            slot.store(w, Ordering::Relaxed);
        }
        e.hash.store(if expect.is_some() { fnv1a(name.as_bytes()) } else { 0 }, Ordering::Relaxed);
        e.subscribers.store(subscribers, Ordering::Relaxed);
        e.flags.store(flags, Ordering::Relaxed);
        e.reserved.store(0, Ordering::Relaxed);
        e.groups.store(groups, Ordering::Relaxed);
        e.parent.store(parent, Ordering::Relaxed);
        for (w, x) in e.group_queues.iter().zip(gq) {
            w.store(x, Ordering::Relaxed);
        }
        for w in &e.reserved2 {
            w.store(0, Ordering::Relaxed);
        }
        e.state.store(state, Ordering::Relaxed);
    });
}

/// The `ROUTE_*` flags of a group.
pub fn group_flags(durable: bool, lossy: bool, ephemeral: bool) -> u32 {
    (if durable { ROUTE_DURABLE } else { 0 })
        | (if lossy { ROUTE_LOSSY } else { 0 })
        | (if ephemeral { ROUTE_EPHEMERAL } else { 0 })
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
            &Shape {
                slot_count: 4,
                slot_size: 128,
                queue_capacity: 2,
                max_subsystems: 3,
                max_clients: 1,
                max_groups: 4,
            },
            "t",
            1,
        )
        .unwrap()
    }

    fn subsystem(name: &str, groups: u16, subscribers: u32) -> Expected<'_> {
        Expected { name, flags: 0, subscribers, kind: Kind::Subsystem { groups, lossy: 0, queues: [0; MAX_GROUPS] } }
    }

    #[test]
    fn written_entries_are_found_by_name_and_bump_the_version() {
        let seg = seg();
        let v0 = version(&seg);
        assert!(find(&seg, "api").is_none());
        let q = pick_entry(&seg, |_| false).unwrap();
        rewrite(&seg, q, Some(subsystem("api", 0, 0)));
        let v = find(&seg, "api").unwrap();
        assert_eq!((v.name(), v.subscribers, v.deliverable()), ("api", 0, false));
        rewrite(&seg, q, Some(subsystem("api", 1, 2)));
        assert!(find(&seg, "api").unwrap().deliverable());
        assert_eq!(find(&seg, "api").unwrap().fanout(), Some(Fanout::single(q)));
        assert!(version(&seg) > v0);
    }

    #[test]
    fn a_subsystem_lists_its_groups_and_group_entries_are_not_found_by_name() {
        let seg = seg();
        let mut queues = [0; MAX_GROUPS];
        queues[2] = 1;
        let x = Expected {
            name: "sensors",
            flags: 0,
            subscribers: 1,
            kind: Kind::Subsystem { groups: 0b101, lossy: 0b100, queues },
        };
        rewrite(&seg, 0, Some(x));
        let g =
            Expected { name: "tap", flags: ROUTE_LOSSY, subscribers: 1, kind: Kind::Group { subsystem: 0, slot: 2 } };
        rewrite(&seg, 1, Some(g));
        assert!(matches(&seg, 0, Some(x)) && matches(&seg, 1, Some(g)));
        let f = find(&seg, "sensors").unwrap().fanout().unwrap();
        assert_eq!((f.mask, f.lossy, f.queues[0], f.queues[2]), (0b101, 0b100, 0, 1));
        assert!(find(&seg, "tap").is_none());
        assert_eq!(read(&seg, 1).unwrap().kind, Kind::Group { subsystem: 0, slot: 2 });
        // A group slot beyond max_groups, or a queue out of range: corrupt.
        seg.route(0).unwrap().groups.store(1 << 5, Ordering::Relaxed);
        assert!(read(&seg, 0).is_none());
    }

    #[test]
    fn a_full_table_is_an_error_naming_the_limit() {
        let seg = seg();
        for (q, n) in ["a", "b", "c"].iter().enumerate() {
            rewrite(&seg, q as u32, Some(subsystem(n, 0, 0)));
        }
        assert_eq!(pick_entry(&seg, |_| false), Err(TableFull { max: 3 }));
        // An entry the daemon declares recyclable is taken over.
        assert_eq!(pick_entry(&seg, |q| q == 1), Ok(1));
    }

    #[test]
    fn an_entry_whose_seqlock_never_settles_reads_as_absent_and_is_counted() {
        let seg = seg();
        rewrite(&seg, 0, Some(subsystem("api", 0, 0)));
        seg.route(0).unwrap().seq.store(7, Ordering::Relaxed); // odd, forever
        assert!(read(&seg, 0).is_none());
        assert!(read_as_writer(&seg, 0).is_none());
        assert_eq!(seg.header().counters.corruption.load(Ordering::Relaxed), 2);
        // The daemon's next write of the entry repairs it.
        rewrite(&seg, 0, Some(subsystem("api", 1, 1)));
        assert_eq!(read(&seg, 0).unwrap().subscribers, 1);
    }

    #[test]
    fn a_lookup_over_entries_that_never_settle_gives_up_within_its_patience() {
        let seg = seg();
        rewrite(&seg, 0, Some(subsystem("api", 0, 0)));
        rewrite(&seg, 1, Some(subsystem("web", 0, 0)));
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
        let expect = Some(Expected { flags: ROUTE_DURABLE, ..subsystem("api", 1, 2) });
        rewrite(&seg, 0, expect);
        assert!(matches(&seg, 0, expect));
        assert!(matches(&seg, 1, None));
        // A faulty process: an odd seq and a wrong hash in one entry, a
        // plausible "api" in the unused one.
        let e = seg.route(0).unwrap();
        e.seq.fetch_add(1, Ordering::Relaxed);
        e.hash.store(5, Ordering::Relaxed);
        let other = seg.route(1).unwrap();
        other.state.store(ROUTE_ACTIVE, Ordering::Relaxed);
        assert!(!matches(&seg, 0, expect));
        assert!(!matches(&seg, 1, None));
        let v0 = version(&seg);
        rewrite(&seg, 0, expect);
        rewrite(&seg, 1, None);
        assert!(matches(&seg, 0, expect) && matches(&seg, 1, None));
        assert!(version(&seg) > v0);
        let v = find(&seg, "api").unwrap();
        assert_eq!((v.queue, v.subscribers, v.durable), (0, 2, true));
        assert!(read(&seg, 1).is_none());
    }

    #[test]
    fn a_corrupt_entry_reads_as_absent() {
        let seg = seg();
        rewrite(&seg, 0, Some(subsystem("api", 0, 0)));
        seg.route(0).unwrap().name_len.store(200, Ordering::Relaxed);
        assert!(read(&seg, 0).is_none());
    }
}
