//! The segment layout: the one place it is described.
//!
//! ```text
//!  offset 0          ┌──────────────────────────────┐
//!                    │ segment header (4096 B)      │ magic, version, params,
//!                    │                              │ daemon state, counters
//!  client_table      ├──────────────────────────────┤
//!                    │ client entry × max_clients   │ 128 B info + 32 port intents
//!  routing_table     ├──────────────────────────────┤
//!                    │ route entry × max_subsystems │ 128 B each, seqlocked
//!  free_ring         ├──────────────────────────────┤
//!                    │ ring header + free_capacity  │ free slot indices
//!                    │ cells                        │
//!  queues            ├──────────────────────────────┤
//!                    │ (ring header + queue_capacity│ one per subsystem entry
//!                    │ cells) × max_subsystems      │ (queue q ↔ route entry q)
//!  holders           ├──────────────────────────────┤
//!                    │ u64 × slot_count × max_groups│ who holds slot i for group k
//!  stats             ├──────────────────────────────┤
//!                    │ entry stats × max_subsystems │ bytes, failures, latency
//!  slots (page)      ├──────────────────────────────┤
//!                    │ slot × slot_count            │ 64 B header, path, body
//!  segment_size      └──────────────────────────────┘
//! ```
//!
//! | offset | size | field | writer | readers | invariant |
//! |---|---|---|---|---|---|
//! | 0 | 8 | `magic` | creator, once | openers | [`MAGIC`] |
//! | 8 | 4 | `version` | creator, last, Release | openers, Acquire | [`LAYOUT_VERSION`]; 0 while the creator is still writing |
//! | 16 | 240 | `params` ([`SegmentParams`]) | creator, before `version` | everyone (copied once at open) | equal to [`SegmentParams::compute`] of its own counts; `segment_size` ≤ mapping |
//! | 256 | 128 | `live` ([`LiveState`]) | daemon | clients, the next daemon | `daemon_state` ∈ {RUNNING, STOPPED}; `routes_version` only grows; `next_serial` above every serial handed out; `resume_grace_ms` the daemon's setting |
//! | 384 | 128 | `counters` ([`Counters`]) | daemon | status | monotonic |
//! | 512 | 3584 | reserved | — | — | zero |
//! | client_table + i·2176 | 128 | [`ClientInfo`] | daemon | daemon, status | `state` FREE/ACTIVE/RECLAIMING |
//! | … + 128 + p·64 | 64 | [`PortIntent`] p of client i | the thread owning port p of client i | daemon (reclaim only; `sent`, `received`: status) | `intent`: 0 or `op·ring·index` with index < slot_count, ring ≤ max_subsystems; `bell`: 0 or a [`crate::doorbell::Sleeper`] record; `sent` / `received`: the port's message counts (statistics) |
//! | routing_table + q·128 | 128 | [`RouteEntry`] q | daemon only (seqlock) | clients, lock-free | `name_len` ≤ 32; name valid per [`crate::path`]; a subsystem entry's `group_queues` name group entries of that subsystem, a group entry's `parent` names its subsystem entry and group slot |
//! | free_ring | 640 | [`RingHeader`](crate::queue::RingHeader) | everyone | everyone | see [`crate::queue`] |
//! | free_ring + 640 | 8·free_capacity | cells | everyone | everyone | `free_capacity` = 2·next_pow2(slot_count) |
//! | queues + q·queue_stride | 640 + 8·queue_capacity | ring of entry q (a subsystem's default group, or another group) | publishers push, subscribers pop | | `queue_capacity` a power of two |
//! | holders + (k·slot_count + i)·8 | 8 | holder word of slot i for group slot k | the consumer of group k that claims slot i (CAS) | daemon (reclaim) | 0, or `gen << 40 \| client + 1` (see [`crate::slot_pool`]) |
//! | stats + q·1280 | 128 | [`crate::stats::EntryStats`] of entry q: `bytes`, `failures` | publishers (Relaxed adds) | status, metrics | monotonic |
//! | stats + q·1280 + 128 | 1152 | … its latency `samples`, `sum_ns`, `max_ns`, histogram | receivers, one message in [`crate::stats::SAMPLE_EVERY`] | status, metrics | monotonic; bucket per [`crate::stats::bucket`] |
//! | slots + i·slot_size | 64 | [`SlotHeader`] of slot i | the owner of slot i (see `own`) | the next owner | `own` is the ownership record; `redelivered` bit k is set by the daemon only |
//! | slots + i·slot_size + 64 | body_len | body (64-byte aligned) | owner | receiver | 64 + `body_len` ≤ slot_size − `path_len` |
//! | slots + (i+1)·slot_size − path_len | path_len | path bytes, at the end of the slot | owner | receiver (only if it asks for the path) | `path_len` ≤ min([`PATH_CAPACITY`], slot_size − 64) |
//!
//! Any process that maps the segment can write any word of it. What the
//! daemon alone writes it also keeps to itself, and puts back when the
//! segment's copy differs (counted in [`Counters::corruption`], logged): the
//! header's `magic`, `version` and `params` and the `RUNNING` state
//! ([`crate::segment::Segment::repair_header`]), the routing table
//! ([`crate::routing::rewrite`]), and a client entry's words before the
//! entry is handed out again. Rings whose words cannot be right are
//! quarantined ([`crate::segment::Segment::ring_plausible`]).
//!
//! The body starts right after the header so that a small body shares the
//! header's neighbourhood (header + 64-byte body = two cache lines), and the
//! path sits at the end of the slot so that a receiver that does not look at
//! the path never pulls its cache line over.
//!
//! Ownership of a slot is the `own` word of its header, changed by CAS where
//! two parties may race for it (see [`crate::slot_pool`]). Nothing in the
//! segment is a pointer: regions are offsets from the segment start, slots
//! and queues are indices, and every value read back is bounds-checked
//! against the params this process validated when it opened the segment.

use crate::line::Line;
use crate::queue::RING_HEADER_SIZE;
use core::mem::{offset_of, size_of};
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64};

/// `"SHMBUS\0\0"` read as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"SHMBUS\0\0");
/// Bumped whenever any structure below, the slot header, or the rkyv major
/// version used for bodies changes (all processes on a bus must agree).
pub const LAYOUT_VERSION: u32 = 6;
/// Size of the segment header region.
pub const HEADER_SIZE: usize = 4096;
/// Port intent records per client (threads of one client that use the bus
/// at the same time, each through its own publisher or subscriber).
pub const PORTS_PER_CLIENT: usize = 32;
/// Size of the slot header at the start of every slot.
pub const SLOT_HEADER_SIZE: usize = 64;
/// Longest path (`subsystem://route`) a message can carry.
pub const PATH_CAPACITY: usize = 255;
/// Longest subsystem name.
pub const SUBSYSTEM_NAME_MAX: usize = 32;
/// Offset of the body within a slot: right after the header, so 64-byte
/// aligned (rkyv needs 16).
pub const BODY_OFFSET: usize = SLOT_HEADER_SIZE;
/// Most groups a subsystem can have (its default group included): the
/// width of the per-slot masks in the ownership word.
pub const MAX_GROUPS: usize = 16;

/// Limits that a configuration must respect (checked at create and open).
pub mod limits {
    /// Slot count range (indices must fit the ring's u32 and the free ring
    /// of twice the next power of two must fit 2^30 cells).
    pub const SLOTS: core::ops::RangeInclusive<u32> = 2..=(1 << 24);
    /// Slot size range, in bytes; also a multiple of 64.
    pub const SLOT_SIZE: core::ops::RangeInclusive<u32> = 128..=(16 << 20);
    /// Queue capacity range; also a power of two.
    pub const QUEUE_CAPACITY: core::ops::RangeInclusive<u32> = 2..=(1 << 20);
    /// Subsystems (routing entries and queues).
    pub const SUBSYSTEMS: core::ops::RangeInclusive<u32> = 1..=4096;
    /// Connected clients at once.
    pub const CLIENTS: core::ops::RangeInclusive<u32> = 1..=4096;
    /// Groups per subsystem, its default group included.
    pub const GROUPS: core::ops::RangeInclusive<u32> = 1..=super::MAX_GROUPS as u32;
    /// Largest segment, in bytes.
    pub const SEGMENT_MAX: u64 = 64 << 30;
}

/// The sizes and offsets of a segment: written by the creator before the
/// version, copied out once by every opener, then never read from the
/// segment again (so a later write to it by a faulty process cannot move a
/// bounds check).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentParams {
    /// Total bytes of the segment.
    pub segment_size: u64,
    /// Distinguishes this bus instance from an earlier one of the same name.
    pub bus_generation: u64,
    /// Number of slots.
    pub slot_count: u32,
    /// Bytes per slot, header included; a multiple of 64.
    pub slot_size: u32,
    /// Cells per subsystem queue; a power of two.
    pub queue_capacity: u32,
    /// Cells of the free ring: 2·next_pow2(slot_count).
    pub free_capacity: u32,
    /// Routing entries and queues.
    pub max_subsystems: u32,
    /// Client table entries.
    pub max_clients: u32,
    /// [`PORTS_PER_CLIENT`].
    pub ports_per_client: u32,
    /// Pid of the daemon that created the segment.
    pub daemon_pid: u32,
    /// Offset of the client table.
    pub client_table: u64,
    /// Offset of the routing table.
    pub routing_table: u64,
    /// Offset of the free ring header.
    pub free_ring: u64,
    /// Offset of the first queue's ring header.
    pub queues: u64,
    /// Distance between two queues' ring headers.
    pub queue_stride: u64,
    /// Offset of slot 0.
    pub slots: u64,
    /// Offset of the holder words (`max_groups` arrays of `slot_count`).
    pub holders: u64,
    /// Bus name, UTF-8, `bus_name_len` bytes used.
    pub bus_name: [u8; 64],
    /// Bytes of `bus_name` in use.
    pub bus_name_len: u32,
    /// Groups per subsystem, its default group included (≤ [`MAX_GROUPS`]).
    pub max_groups: u32,
    /// Offset of the statistics region ([`crate::stats::EntryStats`] per
    /// routing entry).
    pub stats: u64,
    /// Reserved for growth; zero.
    pub reserved: [u32; 14],
}

const _: () = assert!(size_of::<SegmentParams>() == 240);

const fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

/// What the daemon's configuration decides about a segment's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Number of slots.
    pub slot_count: u32,
    /// Bytes per slot.
    pub slot_size: u32,
    /// Cells per subsystem queue.
    pub queue_capacity: u32,
    /// Subsystems.
    pub max_subsystems: u32,
    /// Clients.
    pub max_clients: u32,
    /// Groups per subsystem, its default group included.
    pub max_groups: u32,
}

/// A shape that violates a limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} = {value} is out of range: {rule}")]
pub struct ShapeError {
    /// The offending setting.
    pub field: &'static str,
    /// Its value.
    pub value: u64,
    /// What it must be.
    pub rule: &'static str,
}

impl Shape {
    /// Checks every limit in [`limits`].
    pub fn check(&self) -> Result<(), ShapeError> {
        let bad = |field, value: u32, rule| Err(ShapeError { field, value: value as u64, rule });
        if !limits::SLOTS.contains(&self.slot_count) {
            return bad("slots", self.slot_count, "between 2 and 16777216");
        }
        if !limits::SLOT_SIZE.contains(&self.slot_size) || self.slot_size % 64 != 0 {
            return bad("slot-size", self.slot_size, "a multiple of 64 between 128 and 16 MiB");
        }
        if !limits::QUEUE_CAPACITY.contains(&self.queue_capacity) || !self.queue_capacity.is_power_of_two() {
            return bad("queue-capacity", self.queue_capacity, "a power of two between 2 and 1048576");
        }
        if !limits::SUBSYSTEMS.contains(&self.max_subsystems) {
            return bad("max-subsystems", self.max_subsystems, "between 1 and 4096");
        }
        if !limits::CLIENTS.contains(&self.max_clients) {
            return bad("max-clients", self.max_clients, "between 1 and 4096");
        }
        if !limits::GROUPS.contains(&self.max_groups) {
            return bad("max-groups", self.max_groups, "between 1 and 16");
        }
        Ok(())
    }
}

/// Size of one client entry: info plus port intents.
pub const CLIENT_ENTRY_SIZE: u64 = (size_of::<ClientInfo>() + PORTS_PER_CLIENT * size_of::<PortIntent>()) as u64;
/// Size of one entry's statistics.
pub const ENTRY_STATS_SIZE: u64 = size_of::<crate::stats::EntryStats>() as u64;
/// Size of one routing entry.
pub const ROUTE_ENTRY_SIZE: u64 = size_of::<RouteEntry>() as u64;

impl SegmentParams {
    /// The one function that places every region. The creator stores its
    /// result; an opener recomputes it from the stored counts and requires
    /// equality, so offsets cannot disagree with sizes.
    pub fn compute(shape: &Shape, bus_name: &str, bus_generation: u64, daemon_pid: u32) -> Result<Self, ShapeError> {
        shape.check()?;
        let free_capacity = (shape.slot_count.next_power_of_two() as u64 * 2) as u32;
        let client_table = HEADER_SIZE as u64;
        let routing_table = align_up(client_table + shape.max_clients as u64 * CLIENT_ENTRY_SIZE, 128);
        let free_ring = align_up(routing_table + shape.max_subsystems as u64 * ROUTE_ENTRY_SIZE, 128);
        let queues = align_up(free_ring + RING_HEADER_SIZE as u64 + free_capacity as u64 * 8, 128);
        let queue_stride = align_up(RING_HEADER_SIZE as u64 + shape.queue_capacity as u64 * 8, 128);
        let holders = align_up(queues + shape.max_subsystems as u64 * queue_stride, 128);
        let stats = align_up(holders + shape.max_groups as u64 * shape.slot_count as u64 * 8, 128);
        let slots = align_up(stats + shape.max_subsystems as u64 * ENTRY_STATS_SIZE, 4096);
        let segment_size = align_up(slots + shape.slot_count as u64 * shape.slot_size as u64, 4096);
        if segment_size > limits::SEGMENT_MAX {
            return Err(ShapeError {
                field: "segment size",
                value: segment_size,
                rule: "at most 64 GiB (fewer or smaller slots, shorter queues or fewer subsystems)",
            });
        }
        let mut name = [0u8; 64];
        let n = bus_name.len().min(64);
        name[..n].copy_from_slice(&bus_name.as_bytes()[..n]);
        Ok(SegmentParams {
            segment_size,
            bus_generation,
            slot_count: shape.slot_count,
            slot_size: shape.slot_size,
            queue_capacity: shape.queue_capacity,
            free_capacity,
            max_subsystems: shape.max_subsystems,
            max_clients: shape.max_clients,
            ports_per_client: PORTS_PER_CLIENT as u32,
            daemon_pid,
            client_table,
            routing_table,
            free_ring,
            queues,
            queue_stride,
            slots,
            holders,
            bus_name: name,
            bus_name_len: n as u32,
            max_groups: shape.max_groups,
            stats,
            reserved: [0; 14],
        })
    }

    /// The shape these params were computed from.
    pub fn shape(&self) -> Shape {
        Shape {
            slot_count: self.slot_count,
            slot_size: self.slot_size,
            queue_capacity: self.queue_capacity,
            max_subsystems: self.max_subsystems,
            max_clients: self.max_clients,
            max_groups: self.max_groups,
        }
    }

    /// The bus name (lossy if the segment holds invalid UTF-8).
    pub fn bus_name(&self) -> String {
        let n = (self.bus_name_len as usize).min(64);
        String::from_utf8_lossy(&self.bus_name[..n]).into_owned()
    }

    /// Largest body a slot can hold for a path of `path_len` bytes.
    pub fn body_capacity(&self, path_len: usize) -> usize {
        body_capacity(self.slot_size as usize, path_len)
    }
}

/// Largest body a slot of `slot_size` bytes holds beside a path of
/// `path_len` bytes (the path sits at the end of the slot).
pub const fn body_capacity(slot_size: usize, path_len: usize) -> usize {
    slot_size.saturating_sub(BODY_OFFSET + path_len)
}

/// The fixed start of the segment.
#[repr(C)]
pub struct SegmentHeader {
    /// [`MAGIC`].
    pub magic: AtomicU64,
    /// [`LAYOUT_VERSION`], stored last by the creator.
    pub version: AtomicU32,
    /// Zero.
    pub reserved0: u32,
    /// Shape and offsets (copied out at open).
    pub params: SegmentParams,
    /// What the daemon changes while running.
    pub live: Line<LiveState>,
    /// Bus-wide counters.
    pub counters: Line<Counters>,
}

/// Daemon-written state that clients poll.
#[repr(C)]
#[derive(Debug)]
pub struct LiveState {
    /// [`DAEMON_RUNNING`] or [`DAEMON_STOPPED`]. A daemon that dies or is
    /// stopped by a signal leaves RUNNING: with a resume grace, its clients
    /// wait for the next daemon. Only a `shutdown` request leaves STOPPED.
    pub daemon_state: AtomicU32,
    /// How long clients wait for a new daemon after theirs died, in
    /// milliseconds (the `resume-grace` setting; 0: they get `BusGone`).
    pub resume_grace_ms: AtomicU32,
    /// Bumped (Release) after every routing-table change; publishers cache
    /// resolved routes and revalidate against it (Acquire).
    pub routes_version: AtomicU64,
    /// The serial the daemon hands out next: a daemon that adopts the
    /// segment continues from here, so that no serial (and no
    /// `_reply.<serial>` queue name) is handed out twice.
    pub next_serial: AtomicU32,
    /// Zero.
    pub reserved: u32,
}

/// The daemon is serving.
pub const DAEMON_RUNNING: u32 = 1;
/// The daemon has shut down; clients get `BusGone`.
pub const DAEMON_STOPPED: u32 = 2;

/// Bus-wide counters, written by the daemon.
#[repr(C)]
#[derive(Debug)]
pub struct Counters {
    /// Clients accepted since start.
    pub clients_accepted: AtomicU64,
    /// Clients reclaimed after their connection closed.
    pub clients_reclaimed: AtomicU64,
    /// Slots returned to the free ring by reclaim.
    pub slots_reclaimed: AtomicU64,
    /// Messages put back into their queue by reclaim.
    pub messages_redelivered: AtomicU64,
    /// Ring entries re-pushed from a dead client's intent.
    pub intents_repaired: AtomicU64,
    /// Slots whose header was found corrupt during reclaim and were freed.
    pub corrupt_slots: AtomicU64,
    /// Slots that could not be returned to the free ring because it stayed
    /// full (only a corrupt ring does): out of circulation until restart.
    pub slots_lost: AtomicU64,
    /// Words found that cannot be right (a torn seqlock that never settles,
    /// an out-of-range intent, a queue entry that cannot be pushed back);
    /// each is logged by the daemon and its entry quarantined.
    pub corruption: AtomicU64,
}

const _: () = assert!(offset_of!(SegmentHeader, magic) == 0);
const _: () = assert!(offset_of!(SegmentHeader, version) == 8);
const _: () = assert!(offset_of!(SegmentHeader, params) == 16);
const _: () = assert!(offset_of!(SegmentHeader, live) == 256);
const _: () = assert!(offset_of!(SegmentHeader, counters) == 384);
const _: () = assert!(size_of::<SegmentHeader>() == 512);
const _: () = assert!(size_of::<SegmentHeader>() <= HEADER_SIZE);

/// Client table entry, daemon-written part.
#[repr(C, align(128))]
#[derive(Debug)]
pub struct ClientInfo {
    /// [`CLIENT_FREE`], [`CLIENT_ACTIVE`] or [`CLIENT_RECLAIMING`].
    pub state: AtomicU32,
    /// Bus-unique serial of the connection using this entry (message ids
    /// start with it).
    pub serial: AtomicU32,
    /// Peer pid (SO_PEERCRED).
    pub pid: AtomicU32,
    /// Peer uid.
    pub uid: AtomicU32,
    /// Peer gid.
    pub gid: AtomicU32,
}

/// Entry unused.
pub const CLIENT_FREE: u32 = 0;
/// Entry belongs to a connected client.
pub const CLIENT_ACTIVE: u32 = 1;
/// The client's connection closed; the daemon is reclaiming.
pub const CLIENT_RECLAIMING: u32 = 2;

const _: () = assert!(size_of::<ClientInfo>() == 128);

/// One port's intent record: what ring operation the thread owning the port
/// is in the middle of. Written (Relaxed) by that thread before it changes a
/// slot's state or touches a ring, cleared after; read by the daemon only
/// after the client died. See [`crate::slot_pool`].
#[repr(C, align(64))]
#[derive(Debug)]
pub struct PortIntent {
    /// 0 (none) or `op << 56 | ring << 32 | index`.
    pub intent: AtomicU64,
    /// Messages this port sent (a publisher's), or received (a
    /// subscriber's): written by the port's one thread with a plain
    /// load and store, read by status.
    pub sent: AtomicU64,
    /// See `sent`.
    pub received: AtomicU64,
    /// 0 (awake) or the doorbell this port announced itself on, and how far
    /// (see [`crate::doorbell::Sleeper`]): the daemon withdraws a dead
    /// sleeper's announcement with it.
    pub bell: AtomicU64,
}

const _: () = assert!(size_of::<PortIntent>() == 64);
const _: () = assert!(CLIENT_ENTRY_SIZE == 2176);

/// Routing table entry: a subsystem, its subscribers and its queue (queue
/// `q` belongs to entry `q`). Written only by the daemon, under the seqlock
/// `seq` (odd while a write is in progress); read lock-free by clients.
/// Every field is atomic so that a reader racing the writer reads stale or
/// torn values (rejected by the seqlock check), never undefined behaviour.
#[repr(C, align(128))]
#[derive(Debug)]
pub struct RouteEntry {
    /// Seqlock sequence.
    pub seq: AtomicU32,
    /// [`ROUTE_UNUSED`] or [`ROUTE_ACTIVE`].
    pub state: AtomicU32,
    /// Connected subscriptions.
    pub subscribers: AtomicU32,
    /// [`ROUTE_DURABLE`].
    pub flags: AtomicU32,
    /// Bytes of `name` in use, ≤ [`SUBSYSTEM_NAME_MAX`].
    pub name_len: AtomicU32,
    /// Zero.
    pub reserved: AtomicU32,
    /// FNV-1a of the name.
    pub hash: AtomicU64,
    /// Name bytes, little-endian packed.
    pub name: [AtomicU64; 4],
    /// Subsystem entries: the groups a message sent now goes to, as a mask
    /// of group slots (low 16 bits; slot 0 is the default group, whose
    /// queue is this entry's), and which of them are lossy (high 16 bits).
    pub groups: AtomicU32,
    /// Group entries: `k << 16 | s + 1` for group slot `k` of subsystem
    /// entry `s`; 0 otherwise.
    pub parent: AtomicU32,
    /// Subsystem entries: the entry (and queue) of group slot `k` in the
    /// half-word `k % 2` of word `k / 2` (slot 0: the entry itself).
    pub group_queues: [AtomicU32; MAX_GROUPS / 2],
    /// Zero.
    pub reserved2: [AtomicU32; 6],
}

/// Entry unused.
pub const ROUTE_UNUSED: u32 = 0;
/// Entry names a subsystem (and is the queue of its default group).
pub const ROUTE_ACTIVE: u32 = 1;
/// Entry is a non-default group of a subsystem (`parent` names it); its
/// name is the group's.
pub const ROUTE_GROUP: u32 = 2;
/// Messages to this subsystem (group) are queued even with no subscriber.
pub const ROUTE_DURABLE: u32 = 1;
/// A group whose full queue drops its copy instead of slowing publishers.
pub const ROUTE_LOSSY: u32 = 2;
/// A group that exists only while it has subscribers (a tap): when the
/// last leaves, the daemon drains its queue and frees the entry.
pub const ROUTE_EPHEMERAL: u32 = 4;
/// A subsystem with a publish rule in the daemon's access policy: a client
/// asks the daemon once per connection whether it may send to it. (Every
/// client maps the segment read-write, so this stops mistakes, not a
/// hostile client: the trust domain is the bus.)
pub const ROUTE_RESTRICTED: u32 = 8;

const _: () = assert!(size_of::<RouteEntry>() == 128);
const _: () = assert!(offset_of!(RouteEntry, name) == 32);

/// The header at the start of every slot.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct SlotHeader {
    /// Ownership record `gen << 32 | state << 24 | who` (see
    /// [`crate::slot_pool`]). The only field anyone but the owner touches.
    pub own: AtomicU64,
    /// Subsystem queue the message was sent to (< max_subsystems).
    pub queue: AtomicU16,
    /// `FLAG_*` bits.
    pub flags: AtomicU16,
    /// Body length in bytes.
    pub body_len: AtomicU32,
    /// Path length in bytes (≤ [`PATH_CAPACITY`]).
    pub path_len: AtomicU16,
    /// Bit k: the message was put back into the queue of group slot k after
    /// that group's receiver died with it. Zeroed by the publisher, set by
    /// the daemon only.
    pub redelivered: AtomicU16,
    /// Queue index + 1 of the requester's reply queue (0: not a request).
    pub reply_to: AtomicU32,
    /// Type fingerprint of the body (0 for raw bytes).
    pub fingerprint: AtomicU64,
    /// Bus-unique message id.
    pub id: AtomicU64,
    /// Trace id (the id of the first message of the trace).
    pub trace_id: AtomicU64,
    /// Correlation id of a request/response pair (0: none).
    pub correlation_id: AtomicU64,
    /// Send time, nanoseconds since the Unix epoch.
    pub timestamp_ns: AtomicU64,
}

/// The body is raw bytes, not an rkyv archive.
pub const FLAG_RAW: u16 = 2;
/// The message is an error reply: the body is its text, and `fingerprint`
/// holds the kind (see `bus_client::ReplyError`).
pub const FLAG_ERROR: u16 = 4;
/// The message came from another host through a bridge (`shmbus-bridge`),
/// which never sends such a message on again (so two bridges importing
/// and exporting one subsystem do not loop it).
pub const FLAG_REMOTE: u16 = 8;
/// The message is a copy of one that was redelivered on the bus it came
/// from (through a bridge): it may have been handled once already.
/// Receivers see it as redelivered in every group. (The `redelivered`
/// word is the daemon's alone: publishing zeroes it.)
pub const FLAG_REDELIVERED: u16 = 16;

const _: () = assert!(size_of::<SlotHeader>() == SLOT_HEADER_SIZE);
const _: () = assert!(offset_of!(SlotHeader, queue) == 8);
const _: () = assert!(offset_of!(SlotHeader, body_len) == 12);
const _: () = assert!(offset_of!(SlotHeader, path_len) == 16);
const _: () = assert!(offset_of!(SlotHeader, reply_to) == 20);
const _: () = assert!(offset_of!(SlotHeader, fingerprint) == 24);
const _: () = assert!(offset_of!(SlotHeader, timestamp_ns) == 56);

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> Shape {
        Shape { slot_count: 1000, slot_size: 256, queue_capacity: 64, max_subsystems: 8, max_clients: 4, max_groups: 4 }
    }

    #[test]
    fn regions_are_aligned_ordered_and_inside_the_segment() {
        let p = SegmentParams::compute(&shape(), "t", 1, 2).unwrap();
        assert_eq!(p.free_capacity, 2048);
        let order = [p.client_table, p.routing_table, p.free_ring, p.queues, p.holders, p.slots, p.segment_size];
        assert!(order.windows(2).all(|w| w[0] < w[1]));
        assert!(order.iter().all(|o| o % 128 == 0));
        assert_eq!(p.slots % 4096, 0);
        assert!(p.slots + 1000 * 256 <= p.segment_size);
        assert!(p.queues + 8 * p.queue_stride <= p.holders);
        assert!(p.holders + 4 * 1000 * 8 <= p.slots);
    }

    #[test]
    fn out_of_range_shapes_are_rejected_with_the_field_named() {
        let e = SegmentParams::compute(&Shape { slot_size: 100, ..shape() }, "t", 1, 2).unwrap_err();
        assert_eq!(e.field, "slot-size");
        let e = SegmentParams::compute(&Shape { queue_capacity: 100, ..shape() }, "t", 1, 2).unwrap_err();
        assert_eq!(e.field, "queue-capacity");
        let e = SegmentParams::compute(&Shape { slot_count: 0, ..shape() }, "t", 1, 2).unwrap_err();
        assert_eq!(e.field, "slots");
    }

    #[test]
    fn the_body_fills_the_slot_between_header_and_path() {
        assert_eq!(body_capacity(256, 0), 192);
        assert_eq!(body_capacity(256, 17), 175);
        assert_eq!(body_capacity(128, PATH_CAPACITY), 0);
        assert_eq!(BODY_OFFSET % 16, 0);
    }
}
