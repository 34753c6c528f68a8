//! A hostile client: connects to the daemon like any client, then writes
//! pseudo-random words over one region of the live segment and exits.
//!
//! `scribble region=R words=N seed=S [spread_ms=T]` (or `scribble client=N`:
//! zeros over the state and serial of client entry N alone), bus from
//! `$SHMBUS_SOCKET`. `R` is one of `header`, `clients`, `routing`,
//! `free_ring`, `queues`, `slot_headers` (only the first 64 bytes of
//! slots), or `all` (each word goes to one of the others, chosen at
//! random). Words land at random 8-byte-aligned offsets of the region; the
//! sequence is a seeded xorshift, so a seed reproduces a run exactly (up to
//! the timing of the other processes). With `spread_ms` the writes are
//! spread over that long instead of made at once.
//!
//! The segment's params are read through `Segment::open` only to learn the
//! offsets; the writes go through a mapping of our own (`MAP_SHARED`, a
//! memmap2 `MmapRaw`: an `MmapMut` would hand out `&mut [u8]` over bytes that
//! other processes change, while a raw pointer makes no such claim), so
//! nothing in this process trusts what it writes. The control connection
//! stays open while we write; our exit closes it, and the daemon then
//! reclaims this client over whatever garbage we left. Prints
//! `scribbled N words region=R seed=S` and exits 0.

use bus_client::control::{self, Received};
use bus_client::protocol::{Reply, Request};
use bus_core::layout::{SegmentParams, CLIENT_ENTRY_SIZE, HEADER_SIZE, ROUTE_ENTRY_SIZE, SLOT_HEADER_SIZE};
use bus_core::queue::RING_HEADER_SIZE;
use bus_core::Segment;
use bus_tests::kv;
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The regions a run may target (`all` picks among these per word).
const REGIONS: [&str; 6] = ["header", "clients", "routing", "free_ring", "queues", "slot_headers"];

/// xorshift64* — small, seedable, good enough to scatter writes.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // Zero is xorshift's fixed point; mix the seed so that 0, 1, 2… differ.
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..n` (`n` > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Picks the byte offset (8-aligned) of the next word to overwrite in
/// `region`, or `None` for an unknown region name.
fn target(p: &SegmentParams, region: &str, rng: &mut Rng) -> Option<u64> {
    // A word at a random 8-byte boundary of [start, start + len).
    let mut within = |start: u64, len: u64| start + rng.below(len / 8) * 8;
    Some(match region {
        "header" => within(0, HEADER_SIZE as u64),
        "clients" => within(p.client_table, p.max_clients as u64 * CLIENT_ENTRY_SIZE),
        "routing" => within(p.routing_table, p.max_subsystems as u64 * ROUTE_ENTRY_SIZE),
        "free_ring" => within(p.free_ring, RING_HEADER_SIZE as u64 + p.free_capacity as u64 * 8),
        "queues" => within(p.queues, p.max_subsystems as u64 * p.queue_stride),
        "slot_headers" => {
            let slot = rng.below(p.slot_count as u64);
            p.slots + slot * p.slot_size as u64 + rng.below(SLOT_HEADER_SIZE as u64 / 8) * 8
        }
        "all" => {
            let r = REGIONS[rng.below(REGIONS.len() as u64) as usize];
            return target(p, r, rng);
        }
        _ => return None,
    })
}

/// The value to write over `old`: a mix of kinds, because purely random
/// words are rejected by the simplest checks, while plausible ones (small
/// numbers, a flipped bit, an off-by-one) reach deeper.
fn value(old: u64, rng: &mut Rng) -> u64 {
    match rng.below(6) {
        0 => rng.next(),
        1 => rng.below(64),
        2 => u64::MAX,
        3 => old ^ (1 << rng.below(64)),
        4 => old.wrapping_add(rng.below(5)).wrapping_sub(2),
        _ => 0,
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let region = kv(&args, "region").unwrap_or_else(|| "all".into());
    let words: u64 = kv(&args, "words").map_or(100, |v| v.parse().expect("words=N"));
    let seed: u64 = kv(&args, "seed").map_or(1, |v| v.parse().expect("seed=S"));
    let spread = Duration::from_millis(kv(&args, "spread_ms").map_or(0, |v| v.parse().expect("spread_ms=T")));

    // Connect as a client does: hello, then the welcome carries the memfd.
    let socket = bus_client::addr::socket_path(None, None);
    let conn = match control::connect(&socket, std::time::Instant::now() + Duration::from_secs(5)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("scribble: connecting to {}: {e}", socket.display());
            return ExitCode::from(1);
        }
    };
    let hello = Request::Hello { layout_version: bus_core::LAYOUT_VERSION, resume: None, name: None, waits: false };
    control::send(conn.as_fd(), &hello, None).expect("send hello");
    let mut buf = Vec::new();
    let fd = match control::recv::<Reply>(conn.as_fd(), &mut buf) {
        Ok(Received::Packet(Reply::Welcome { .. }, Some(fd))) => fd,
        Ok(Received::Packet(other, _)) => {
            eprintln!("scribble: expected a welcome with the segment, got {other:?}");
            return ExitCode::from(1);
        }
        Ok(Received::Closed) => {
            eprintln!("scribble: the daemon closed the connection");
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!("scribble: {e}");
            return ExitCode::from(1);
        }
    };
    let file = std::fs::File::from(fd.try_clone().expect("dup the segment fd"));
    let params = match Segment::open(fd) {
        Ok(seg) => *seg.params(),
        Err(e) => {
            // An earlier round may have scribbled the header already.
            eprintln!("scribble: the segment does not open ({e}): nothing to scribble on");
            return ExitCode::from(1);
        }
    };
    // A MAP_SHARED mapping of the memfd. Other processes change it at any
    // time, so this process never creates a reference to its bytes: every
    // access below is an atomic word at an aligned, in-bounds offset.
    let map = memmap2::MmapOptions::new().map_raw(&file).expect("map the segment");
    let len = (map.len() as u64).min(params.segment_size);

    // `client=N`: one word of zeros over the start of client entry N (its
    // state and serial), and nothing else.
    if let Some(c) = kv(&args, "client").map(|v| v.parse::<u64>().expect("client=N")) {
        let off = params.client_table + c * CLIENT_ENTRY_SIZE;
        assert!(c < params.max_clients as u64 && off + 8 <= len, "client {c} out of range");
        // SAFETY: as below: 8-aligned (entries are 128-aligned), in bounds.
        let word = unsafe { &*(map.as_mut_ptr().add(off as usize) as *const AtomicU64) };
        word.store(0, Ordering::Relaxed);
        println!("scribbled client entry {c}");
        return ExitCode::SUCCESS;
    }
    let mut rng = Rng::new(seed);
    let pause = spread / u32::try_from(words.max(1)).unwrap_or(u32::MAX);
    let mut written = 0u64;
    for _ in 0..words {
        let Some(off) = target(&params, &region, &mut rng) else {
            eprintln!("scribble: unknown region {region:?} (one of {REGIONS:?} or all)");
            return ExitCode::from(2);
        };
        if off + 8 > len {
            continue;
        }
        // SAFETY: `off` is 8-aligned (regions start at multiples of 128 and
        // words are 8-aligned within them) and `off + 8 <= len`, inside the
        // mapping, which lives until the end of `main`; an AtomicU64 is
        // valid for any bits and other processes only use atomics on it.
        let word = unsafe { &*(map.as_mut_ptr().add(off as usize) as *const AtomicU64) };
        let v = value(word.load(Ordering::Relaxed), &mut rng);
        word.store(v, Ordering::Relaxed);
        written += 1;
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
    println!("scribbled {written} words region={region} seed={seed}");
    drop(map);
    drop(conn);
    ExitCode::SUCCESS
}
