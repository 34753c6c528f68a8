//! The order in which a new segment's free ring holds its slots.
//!
//! The free ring is first-in first-out, and a publisher takes free slots
//! in the order they were released, which is the order they were sent: the
//! order a new segment starts with persists for as long as one publisher
//! feeds one receiver. Started in index order, consecutive messages go
//! through consecutive slots, one `slot_size` apart, and both CPUs walk
//! the pool as a stream.
//!
//! In that order, one message per call ran at 0.64–0.76× of the rate the
//! same pool reached once other traffic had scrambled its free ring (a
//! `shmbus bench` run's first round against a new daemon, and the
//! benchmark's peer roles, against the same after a round of traffic).
//! Our reading, which this VM's hidden counters cannot confirm: the
//! hardware prefetchers of each CPU follow the stream ahead of it, into
//! slots the other CPU is about to write, so that lines cross between the
//! CPUs that neither asked for. Scattering the whole pool instead cost a
//! big pool (262 144 slots) 0.4–0.9× (a slot per message on a page of its
//! own: translation misses), so the scattering stays within windows of
//! [`WINDOW_BYTES`], taken in index order (BENCHMARKS.md, session 18;
//! docs/design.md, "Slot layout").

/// Bytes of slots shuffled among themselves: about 64 pages of 4 KiB, which
/// the first-level data TLB of current x86 CPUs covers (a window whose slot
/// size does not divide it may touch one page more).
pub const WINDOW_BYTES: u64 = 256 << 10;

/// Every index in `0..slot_count` once: windows of [`WINDOW_BYTES`] of
/// slots in index order, each in a fixed pseudo-random order of its own
/// (the same for every segment of this shape).
pub fn initial_free_order(slot_count: u32, slot_size: u32) -> Vec<u32> {
    let window = (WINDOW_BYTES / u64::from(slot_size.max(1))).clamp(1, u64::from(slot_count.max(1))) as usize;
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut order: Vec<u32> = (0..slot_count).collect();
    for w in order.chunks_mut(window) {
        // Fisher–Yates.
        for i in (1..w.len()).rev() {
            let j = (rng.next() % (i as u64 + 1)) as usize;
            w.swap(i, j);
        }
    }
    order
}

/// Marsaglia's xorshift64: enough to break up strides, deterministic.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_slot_appears_once_and_stays_in_its_window() {
        // (slots, slot size, slots per window), the window worked out by hand.
        let shapes = [
            (2, 128, 2),
            (3, 16 << 20, 1),
            (1000, 192, 1000),
            (4096, 192, 1365),
            (4096, 1024, 256),
            (5000, 128, 2048),
            (70_000, 4160, 63),
            (1 << 20, 128, 2048),
        ];
        for (count, size, window) in shapes {
            let order = initial_free_order(count, size);
            assert_eq!(order.len(), count as usize, "{count} slots of {size}");
            let mut seen = vec![false; count as usize];
            for &i in &order {
                assert!(!std::mem::replace(&mut seen[i as usize], true), "{i} twice");
            }
            for (k, &i) in order.iter().enumerate() {
                assert_eq!(i as usize / window, k / window, "slot {i} at position {k} left its window");
            }
        }
    }

    #[test]
    fn consecutive_slots_are_rarely_neighbours_and_follow_no_stride() {
        // (slots, slot size, slots per window)
        for (count, size, window) in [(4096, 192, 1365), (4096, 1024, 256), (1 << 16, 128, 2048)] {
            let order = initial_free_order(count, size);
            let pairs = order.len() - 1;
            let neighbours = order.windows(2).filter(|p| p[0].abs_diff(p[1]) == 1).count();
            // A random order has about 2 neighbouring pairs per window; index order all of them.
            assert!(neighbours * 50 < pairs, "{count} of {size}: {neighbours} of {pairs} pairs are neighbours");
            let mut strides: Vec<i64> = order.windows(2).map(|p| p[1] as i64 - p[0] as i64).collect();
            strides.sort_unstable();
            strides.dedup();
            // A window of w shuffled slots has 2w - 1 possible strides; a random order
            // shows most of them, index order or a constant stride a handful.
            let possible = pairs.min(2 * window - 1);
            assert!(strides.len() * 4 > possible, "{count} of {size}: only {} distinct strides", strides.len());
        }
    }

    #[test]
    fn slots_bigger_than_a_window_keep_index_order() {
        let order = initial_free_order(8, 1 << 20);
        assert_eq!(order, (0..8).collect::<Vec<_>>());
    }
}
