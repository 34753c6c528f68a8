//! The segment: one sealed memfd holding everything in [`crate::layout`].
//!
//! The daemon creates it ([`Segment::create`]) and hands its fd to each
//! accepted client, which maps it with [`Segment::open`]. Opening checks the
//! magic, waits for the version (SYNC: segment-ready, pairs with the creator's
//! Release store), copies the params out once and recomputes them from their
//! own counts: after that, every offset this process uses comes from its own
//! validated copy, never from the segment.

use crate::layout::*;
use crate::queue::{initial_cell, Ring, RingHeader};
use memmap2::{MmapOptions, MmapRaw};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a segment could not be created or opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SegmentError {
    /// A system call failed.
    #[error("{op} failed: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The configuration asks for a segment outside the limits.
    #[error("invalid bus shape: {0}")]
    Shape(#[from] ShapeError),
    /// The mapping is smaller than a segment header.
    #[error("segment is {len} bytes, too small to be a shmbus segment: the fd is not a shmbus segment")]
    TooSmall {
        /// Its length.
        len: u64,
    },
    /// Offset 0 does not hold the magic number.
    #[error("segment magic is {found:#018x}, expected {MAGIC:#018x}: the fd is not a shmbus segment")]
    BadMagic {
        /// What was found.
        found: u64,
    },
    /// The creator has not finished initializing it.
    #[error("segment is not initialized yet: retry, or restart the daemon if this persists")]
    NotReady,
    /// Built by a different layout version.
    #[error("segment layout version is {found}, this program speaks {expected}: run client and daemon from the same shmbus release")]
    VersionMismatch {
        /// The segment's version.
        found: u32,
        /// Ours.
        expected: u32,
    },
    /// The fd is not a memfd sealed against shrinking and growing: another
    /// process could truncate it under our mapping (a SIGBUS on access).
    #[error("the segment fd is not a sealed memfd (seals {seals:#x}): it did not come from shmbusd; check what serves the socket")]
    NotSealed {
        /// The seals found (`F_GET_SEALS`; -1 if it has none at all).
        seals: i32,
    },
    /// The params contradict each other or the mapping.
    #[error("segment header is inconsistent ({0}): the segment is corrupt; restart the daemon")]
    Inconsistent(&'static str),
}

fn io(op: &'static str) -> impl FnOnce(nix::errno::Errno) -> SegmentError {
    move |e| SegmentError::Io { op, source: std::io::Error::from(e) }
}

/// A mapped, validated segment.
pub struct Segment {
    map: MmapRaw,
    params: SegmentParams,
    fd: OwnedFd,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment").field("params", &self.params).finish_non_exhaustive()
    }
}

/// A slot index that has been checked against the slot count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotIndex(u32);

impl SlotIndex {
    /// The raw index.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl Segment {
    /// Creates and initializes a new segment as a sealed memfd.
    pub fn create(shape: &Shape, bus_name: &str, bus_generation: u64) -> Result<Segment, SegmentError> {
        let params = SegmentParams::compute(shape, bus_name, bus_generation, std::process::id())?;
        let fd = nix::sys::memfd::memfd_create(
            c"shmbus-segment",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC | nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING,
        )
        .map_err(io("memfd_create"))?;
        nix::unistd::ftruncate(&fd, params.segment_size as i64).map_err(io("ftruncate"))?;
        use nix::fcntl::{fcntl, FcntlArg, SealFlag};
        let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
        fcntl(&fd, FcntlArg::F_ADD_SEALS(seals)).map_err(io("sealing the memfd"))?;
        let map = map(&fd, params.segment_size)?;
        let seg = Segment { map, params, fd };
        seg.initialize();
        Ok(seg)
    }

    fn initialize(&self) {
        let p = &self.params;
        let hdr = self.base() as *mut SegmentHeader;
        // SAFETY: the mapping is at least `segment_size` ≥ HEADER_SIZE bytes,
        // page-aligned, freshly created and not yet shared with anyone, so
        // writing the params cannot race.
        unsafe { core::ptr::addr_of_mut!((*hdr).params).write(*p) };
        let h = self.header();
        h.magic.store(MAGIC, Ordering::Relaxed);
        for i in 0..p.free_capacity as u64 {
            self.free_cells()[i as usize].store(initial_cell(i), Ordering::Relaxed);
        }
        for q in 0..p.max_subsystems {
            for (i, c) in self.queue_cells(q).iter().enumerate() {
                c.store(initial_cell(i as u64), Ordering::Relaxed);
            }
        }
        let free = self.free_ring();
        for i in crate::free_order::initial_free_order(p.slot_count, p.slot_size) {
            free.push(i).expect("the free ring holds twice the slot count");
        }
        h.live.daemon_state.store(DAEMON_RUNNING, Ordering::Relaxed);
        // SYNC: segment-ready — pairs with the Acquire load in `open`; every
        // store above happens-before an opener's reads.
        h.version.store(LAYOUT_VERSION, Ordering::Release);
    }

    /// Maps and validates a segment received from the daemon.
    pub fn open(fd: OwnedFd) -> Result<Segment, SegmentError> {
        use nix::fcntl::{fcntl, FcntlArg, SealFlag};
        let need = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
        match fcntl(&fd, FcntlArg::F_GET_SEALS) {
            Ok(seals) if SealFlag::from_bits_truncate(seals).contains(need) => {}
            Ok(seals) => return Err(SegmentError::NotSealed { seals }),
            Err(_) => return Err(SegmentError::NotSealed { seals: -1 }),
        }
        let len = nix::sys::stat::fstat(&fd).map_err(io("fstat of the segment"))?.st_size as u64;
        if len < HEADER_SIZE as u64 {
            return Err(SegmentError::TooSmall { len });
        }
        let map = map(&fd, len)?;
        let base = map.as_mut_ptr();
        // SAFETY: the mapping is ≥ HEADER_SIZE bytes and page-aligned, so the
        // header (512 bytes, align 128) is in bounds and aligned; its atomics
        // tolerate concurrent writers.
        let h = unsafe { &*(base as *const SegmentHeader) };
        let magic = h.magic.load(Ordering::Relaxed);
        if magic != MAGIC {
            return Err(SegmentError::BadMagic { found: magic });
        }
        // SYNC: segment-ready — pairs with the Release store in `initialize`.
        let version = h.version.load(Ordering::Acquire);
        if version == 0 {
            return Err(SegmentError::NotReady);
        }
        if version != LAYOUT_VERSION {
            return Err(SegmentError::VersionMismatch { found: version, expected: LAYOUT_VERSION });
        }
        // SAFETY: in bounds (see above); a volatile copy because other
        // processes may (wrongly) write it: we validate the copy.
        let params = unsafe { core::ptr::addr_of!(h.params).read_volatile() };
        let name_len = (params.bus_name_len as usize).min(64);
        let name =
            std::str::from_utf8(&params.bus_name[..name_len]).map_err(|_| SegmentError::Inconsistent("bus name"))?;
        let expect = SegmentParams::compute(&params.shape(), name, params.bus_generation, params.daemon_pid)
            .map_err(|_| SegmentError::Inconsistent("shape out of range"))?;
        if expect != params {
            return Err(SegmentError::Inconsistent("offsets do not match the shape"));
        }
        if params.segment_size > len {
            return Err(SegmentError::Inconsistent("segment_size larger than the mapping"));
        }
        Ok(Segment { map, params, fd })
    }

    /// The validated params (this process's own copy).
    pub fn params(&self) -> &SegmentParams {
        &self.params
    }

    /// The memfd, to hand to clients.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn base(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// A reference to a `T` at `offset`. Every caller computes `offset` as
    /// a region's start plus an index it checked against that region's
    /// count, both from `self.params`: this process's own copy, equal to
    /// [`SegmentParams::compute`] of its counts (checked by `open`), which
    /// places every region, 128-aligned, inside `segment_size`, itself
    /// within the mapping. So the bounds hold by construction; they are
    /// asserted in debug builds only, because this runs several times per
    /// message (a release build checking them spent 14 % of the hot path's
    /// instructions there).
    #[inline]
    fn at<T>(&self, offset: u64) -> &T {
        debug_assert!(offset as usize + core::mem::size_of::<T>() <= self.params.segment_size as usize);
        debug_assert_eq!(offset as usize % core::mem::align_of::<T>(), 0);
        // SAFETY: in bounds and aligned (by construction, see above); every
        // `T` used here is a repr(C) struct of atomics (or plain data only
        // written before the segment was shared), valid for any bit
        // pattern, and the mapping lives as long as `self`.
        unsafe { &*(self.base().add(offset as usize) as *const T) }
    }

    /// `count` ring cells at `offset` (a ring's cells, placed as in [`Segment::at`]).
    #[inline]
    fn cells(&self, offset: u64, count: u32) -> &[AtomicU64] {
        debug_assert!(offset as usize + count as usize * 8 <= self.params.segment_size as usize);
        // SAFETY: in bounds (by construction, as in `at`), 8-aligned
        // (offsets are multiples of 128 plus the 640-byte ring header),
        // AtomicU64 is valid for any bits.
        unsafe { core::slice::from_raw_parts(self.base().add(offset as usize) as *const AtomicU64, count as usize) }
    }

    /// The segment header.
    pub fn header(&self) -> &SegmentHeader {
        self.at(0)
    }

    /// Creator only, while it serves: puts back what openers validate —
    /// magic, params and version — and the `RUNNING` state, from this
    /// process's own copy, if a
    /// faulty process overwrote them; without this, every later connect
    /// would fail (bad magic, inconsistent params) and every client would
    /// take the bus for stopped. Returns the names of the fields repaired
    /// (empty if none). The version is stored last (Release), as at
    /// creation: an opener that sees it sees the rest.
    pub fn repair_header(&self) -> Vec<&'static str> {
        let mut repaired = Vec::new();
        let h = self.header();
        if h.magic.load(Ordering::Relaxed) != MAGIC {
            h.magic.store(MAGIC, Ordering::Relaxed);
            repaired.push("magic");
        }
        let hdr = self.base() as *mut SegmentHeader;
        // SAFETY: the header is in bounds and aligned (see `open`). Other
        // processes may write these bytes (wrongly) at any time, so they are
        // copied with a volatile read, never referenced; every bit pattern
        // is a valid `SegmentParams` (integers and byte arrays).
        let found = unsafe { core::ptr::addr_of!((*hdr).params).read_volatile() };
        if found != self.params {
            // SAFETY: as above; a volatile write of our own validated copy.
            unsafe { core::ptr::addr_of_mut!((*hdr).params).write_volatile(self.params) };
            repaired.push("params");
        }
        if h.version.load(Ordering::Relaxed) != LAYOUT_VERSION || !repaired.is_empty() {
            if h.version.load(Ordering::Relaxed) != LAYOUT_VERSION {
                repaired.push("version");
            }
            // SYNC: segment-ready — as in `initialize`: pairs with the
            // Acquire load in `open`.
            h.version.store(LAYOUT_VERSION, Ordering::Release);
        }
        if h.live.daemon_state.load(Ordering::Relaxed) != DAEMON_RUNNING {
            // SYNC: daemon-stopped — Release, as the daemon's shutdown store.
            h.live.daemon_state.store(DAEMON_RUNNING, Ordering::Release);
            repaired.push("daemon_state");
        }
        repaired
    }

    /// Whether the daemon still runs (it sets STOPPED on a clean shutdown).
    pub fn daemon_running(&self) -> bool {
        // SYNC: daemon-stopped — pairs with the Release store in the
        // daemon's shutdown.
        self.header().live.daemon_state.load(Ordering::Acquire) == DAEMON_RUNNING
    }

    /// Client table entry `client` (None if out of range).
    pub fn client_info(&self, client: u32) -> Option<&ClientInfo> {
        (client < self.params.max_clients)
            .then(|| self.at(self.params.client_table + client as u64 * CLIENT_ENTRY_SIZE))
    }

    /// Intent record `port` of `client` (None if out of range).
    pub fn port_intent(&self, client: u32, port: u32) -> Option<&PortIntent> {
        if client >= self.params.max_clients || port as usize >= PORTS_PER_CLIENT {
            return None;
        }
        let off = self.params.client_table + client as u64 * CLIENT_ENTRY_SIZE + 128 + port as u64 * 64;
        Some(self.at(off))
    }

    /// Routing entry `q` (None if out of range).
    pub fn route(&self, q: u32) -> Option<&RouteEntry> {
        (q < self.params.max_subsystems).then(|| self.at(self.params.routing_table + q as u64 * ROUTE_ENTRY_SIZE))
    }

    fn free_cells(&self) -> &[AtomicU64] {
        self.cells(self.params.free_ring + crate::queue::RING_HEADER_SIZE as u64, self.params.free_capacity)
    }

    fn queue_cells(&self, q: u32) -> &[AtomicU64] {
        let off = self.params.queues + q as u64 * self.params.queue_stride + crate::queue::RING_HEADER_SIZE as u64;
        self.cells(off, self.params.queue_capacity)
    }

    /// The free-slot ring.
    pub fn free_ring(&self) -> Ring<'_> {
        // The free capacity (2·next_pow2(slot_count)) and the queue capacity
        // were checked by `SegmentParams::compute` when this process opened
        // or created the segment, and are this process's own copy.
        Ring::new_validated(self.at::<RingHeader>(self.params.free_ring), self.free_cells())
    }

    /// The queue of subsystem entry `q` (None if out of range).
    pub fn queue(&self, q: u32) -> Option<Ring<'_>> {
        if q >= self.params.max_subsystems {
            return None;
        }
        let hdr = self.at::<RingHeader>(self.params.queues + q as u64 * self.params.queue_stride);
        Some(Ring::new_validated(hdr, self.queue_cells(q)))
    }

    /// Daemon audit: whether the hints of the free ring (`queue: None`) or
    /// of queue `q`, and the cells they point at, hold values a healthy ring
    /// can hold, give or take a capacity and 1024 positions of concurrent
    /// progress between the loads. `false` means words that cannot be right
    /// (a faulty process wrote them): a ring operation stops for good at
    /// such a cell or hint, as if the ring were full or empty, without
    /// counting a stall. O(1): two hints and two cells. `true` for an
    /// out-of-range `q`.
    pub fn ring_plausible(&self, queue: Option<u32>) -> bool {
        let (header, cells) = match queue {
            None => (self.params.free_ring, self.free_cells()),
            Some(q) if q < self.params.max_subsystems => {
                (self.params.queues + q as u64 * self.params.queue_stride, self.queue_cells(q))
            }
            Some(_) => return true,
        };
        let h: &RingHeader = self.at(header);
        let cap = cells.len() as i64;
        let slack = 2 * cap + 1024;
        // Relaxed: a snapshot whose parts may be a few positions apart;
        // the slack covers that.
        let head = h.head.load(Ordering::Relaxed);
        let tail = h.tail.load(Ordering::Relaxed);
        // A healthy tail is at most a capacity ahead of the head, and the
        // head at most a capacity ahead of the tail (consumers pass cells
        // filled by producers that have not moved the tail yet).
        let gap = tail.wrapping_sub(head) as i64;
        // A cell at position `p` holds `p`, `p + 1`, `p + cap` or
        // `p - cap + 1` in its `seq` (see `crate::queue`), when hints lag.
        let near = |pos: u64| {
            let seq = (cells[(pos % cells.len() as u64) as usize].load(Ordering::Relaxed) >> 32) as u32;
            (seq.wrapping_sub(pos as u32) as i32).unsigned_abs() as i64 <= slack
        };
        // `unsigned_abs`: a garbage gap of exactly 2^63 has no i64 absolute
        // value (a debug build would panic).
        if gap.unsigned_abs() <= slack as u64 && near(tail) && near(head) {
            return true;
        }
        // A busy ring can move further than the slack while this thread
        // is preempted between the loads: if the hints moved meanwhile, the
        // snapshot says nothing (the next audit looks again); garbage stays
        // put.
        h.head.load(Ordering::Relaxed) != head || h.tail.load(Ordering::Relaxed) != tail
    }

    /// The statistics of routing entry `q` (None if out of range).
    pub fn entry_stats(&self, q: u32) -> Option<&crate::stats::EntryStats> {
        if q >= self.params.max_subsystems {
            return None;
        }
        Some(self.at(self.params.stats + q as u64 * crate::layout::ENTRY_STATS_SIZE))
    }

    /// The holder word of slot `i` for group slot `k` (None if `k` is out
    /// of range). See [`crate::slot_pool`].
    pub fn holder(&self, k: u32, i: SlotIndex) -> Option<&AtomicU64> {
        if k >= self.params.max_groups {
            return None;
        }
        // A `SlotIndex` is checked against the segment that made it; this
        // one compare keeps an index from another segment (a smaller one,
        // mapped after a reconnect) from reaching past this one.
        assert!(i.0 < self.params.slot_count, "slot index from another segment");
        let off = self.params.holders + (k as u64 * self.params.slot_count as u64 + i.0 as u64) * 8;
        Some(self.at(off))
    }

    /// Checks an index read from a ring or a header.
    pub fn slot_index(&self, raw: u32) -> Option<SlotIndex> {
        (raw < self.params.slot_count).then_some(SlotIndex(raw))
    }

    /// Slot `i`.
    pub fn slot(&self, i: SlotIndex) -> crate::slot_pool::SlotRef<'_> {
        // As in `holder`: the one check that `at` relies on.
        assert!(i.0 < self.params.slot_count, "slot index from another segment");
        let off = self.params.slots + i.0 as u64 * self.params.slot_size as u64;
        let header: &SlotHeader = self.at(off);
        // SAFETY: `i` < slot_count, so the whole slot [off, off + slot_size)
        // lies inside the segment (checked by `SegmentParams::compute`).
        let base = unsafe { self.base().add(off as usize) };
        crate::slot_pool::SlotRef::new(header, base, self.params.slot_size as usize, i)
    }
}

fn map(fd: &OwnedFd, len: u64) -> Result<MmapRaw, SegmentError> {
    let file = File::from(fd.try_clone().map_err(|e| SegmentError::Io { op: "dup of the segment fd", source: e })?);
    MmapOptions::new()
        .len(len as usize)
        .populate()
        .map_raw(&file)
        .map_err(|e| SegmentError::Io { op: "mmap of the segment", source: e })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn small() -> Shape {
        Shape { slot_count: 16, slot_size: 256, queue_capacity: 8, max_subsystems: 4, max_clients: 4, max_groups: 4 }
    }

    #[test]
    fn a_created_segment_opens_with_the_same_params() {
        let seg = Segment::create(&small(), "unit", 7).unwrap();
        let fd = seg.fd().try_clone_to_owned().unwrap();
        let other = Segment::open(fd).unwrap();
        assert_eq!(other.params(), seg.params());
        assert_eq!(other.params().bus_name(), "unit");
        assert_eq!(other.free_ring().len(), 16);
        assert!(other.daemon_running());
    }

    #[test]
    fn a_new_segment_holds_every_slot_once_and_not_in_index_order() {
        let shape = Shape { slot_count: 4096, slot_size: 192, ..small() };
        let popped = |seg: &Segment| std::iter::from_fn(|| seg.free_ring().pop()).collect::<Vec<u32>>();
        let seg = Segment::create(&shape, "unit", 7).unwrap();
        let order = popped(&seg);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..4096).collect::<Vec<u32>>(), "every slot exactly once");
        assert_ne!(order, sorted, "not in index order (free_order.rs)");
        // The same order for every segment of this shape.
        assert_eq!(popped(&Segment::create(&shape, "other", 8).unwrap()), order);
    }

    #[test]
    fn a_wrong_version_is_rejected_naming_both_versions() {
        let seg = Segment::create(&small(), "unit", 7).unwrap();
        seg.header().version.store(LAYOUT_VERSION + 1, Ordering::Release);
        let err = Segment::open(seg.fd().try_clone_to_owned().unwrap()).unwrap_err();
        assert!(
            matches!(err, SegmentError::VersionMismatch { found, expected } if found == LAYOUT_VERSION + 1 && expected == LAYOUT_VERSION)
        );
        assert!(err.to_string().contains("same shmbus release"));
    }

    #[test]
    fn a_corrupt_header_is_rejected() {
        let seg = Segment::create(&small(), "unit", 7).unwrap();
        let hdr = seg.base() as *mut SegmentHeader;
        // SAFETY: test-only corruption of our own fresh mapping; nobody else maps it.
        unsafe { core::ptr::addr_of_mut!((*hdr).params.slots).write(64) };
        let err = Segment::open(seg.fd().try_clone_to_owned().unwrap()).unwrap_err();
        assert!(matches!(err, SegmentError::Inconsistent(_)), "{err}");
        seg.header().magic.store(1, Ordering::Relaxed);
        let err = Segment::open(seg.fd().try_clone_to_owned().unwrap()).unwrap_err();
        assert!(matches!(err, SegmentError::BadMagic { found: 1 }));
    }

    #[test]
    fn the_creator_repairs_an_overwritten_header_so_that_it_opens_again() {
        let seg = Segment::create(&small(), "unit", 7).unwrap();
        assert!(seg.repair_header().is_empty());
        let hdr = seg.base() as *mut SegmentHeader;
        // SAFETY: test-only corruption of our own fresh mapping; nobody else maps it.
        unsafe { core::ptr::addr_of_mut!((*hdr).params.queues).write(12) };
        seg.header().magic.store(3, Ordering::Relaxed);
        seg.header().version.store(0, Ordering::Relaxed);
        seg.header().live.daemon_state.store(77, Ordering::Relaxed);
        assert!(Segment::open(seg.fd().try_clone_to_owned().unwrap()).is_err());
        assert_eq!(seg.repair_header(), ["magic", "params", "version", "daemon_state"]);
        let other = Segment::open(seg.fd().try_clone_to_owned().unwrap()).unwrap();
        assert_eq!(other.params(), seg.params());
        assert!(other.daemon_running());
        assert!(seg.repair_header().is_empty());
    }

    #[test]
    fn ring_words_that_cannot_be_right_are_told_apart_from_a_busy_ring() {
        let seg = Segment::create(&small(), "unit", 7).unwrap();
        assert!(seg.ring_plausible(None) && seg.ring_plausible(Some(0)));
        // Busy, lapped rings are plausible.
        let q = seg.queue(1).unwrap();
        for i in 0..100 {
            q.push(i % 16).unwrap();
            q.pop().unwrap();
        }
        for i in 0..8 {
            q.push(i).unwrap();
        }
        assert!(seg.ring_plausible(Some(1)), "full, after 12 laps");
        // A hint moved far away, or a cell's seq, is not.
        let h = &seg.queue(2).unwrap().header().head;
        h.store(1 << 40, Ordering::Relaxed);
        assert!(!seg.ring_plausible(Some(2)));
        seg.queue_cells(3)[0].store(0x8000_0000_0000_0005, Ordering::Relaxed);
        assert!(!seg.ring_plausible(Some(3)));
        assert!(seg.ring_plausible(Some(99)));
    }

    #[test]
    fn a_file_that_is_not_a_segment_is_rejected() {
        use nix::fcntl::{fcntl, FcntlArg, SealFlag};
        use nix::sys::memfd::{memfd_create, MFdFlags};
        // Unsealed: another process could shrink it under the mapping.
        let fd = memfd_create(c"junk", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING).unwrap();
        nix::unistd::ftruncate(&fd, 1 << 20).unwrap();
        let dup = fd.try_clone().unwrap();
        assert!(matches!(Segment::open(dup), Err(SegmentError::NotSealed { seals: 0 })));
        // Sealed against shrinking only: still refused.
        fcntl(&fd, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK)).unwrap();
        assert!(matches!(Segment::open(fd), Err(SegmentError::NotSealed { .. })));
        // Not a memfd at all (no seals can exist).
        let file = std::fs::File::open("/proc/self/status").unwrap();
        assert!(matches!(Segment::open(file.into()), Err(SegmentError::NotSealed { seals: -1 })));
        // Sealed, but too small to be a segment.
        let fd = memfd_create(c"junk", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING).unwrap();
        nix::unistd::ftruncate(&fd, 100).unwrap();
        let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
        fcntl(&fd, FcntlArg::F_ADD_SEALS(seals)).unwrap();
        assert!(matches!(Segment::open(fd), Err(SegmentError::TooSmall { len: 100 })));
    }

    #[test]
    fn out_of_range_indices_are_refused() {
        let seg = Segment::create(&small(), "unit", 7).unwrap();
        assert!(seg.slot_index(16).is_none());
        assert!(seg.slot_index(u32::MAX).is_none());
        assert!(seg.queue(4).is_none());
        assert!(seg.route(4).is_none());
        assert!(seg.client_info(4).is_none());
        assert!(seg.port_intent(0, PORTS_PER_CLIENT as u32).is_none());
    }
}
