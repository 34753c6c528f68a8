//! The send timestamp's clock: wall-clock nanoseconds since the Unix epoch
//! for every message sent, without a `clock_gettime` per message.
//!
//! `clock_gettime` costs 20–50 ns on the machines we measure on, and its
//! vDSO read of the time-stamp counter is ordered (`lfence; rdtsc`), so it
//! also waits for the send's earlier loads and stores to finish: in a
//! profile of one publisher feeding four groups it took 12 % of the
//! publisher's time, and reading the counter instead made one message per
//! call 1.13–1.27× faster (BENCHMARKS.md, session 12).
//!
//! So a publisher reads the counter (`rdtsc`, unordered) and converts it
//! with a rate and an anchor that it learns from the real clock:
//! - first it reads the real clock, beside the counter, for [`LEARN_NS`];
//!   the rate found is kept for the whole process, so later publishers skip
//!   this;
//! - then it extrapolates from the last anchor (a real reading and the
//!   counter beside it), and takes a new anchor after a span of counter
//!   ticks that starts at twice the learning time and doubles up to
//!   [`MAX_SPAN_NS`]. Each new anchor also refines the rate over the span,
//!   unless the refinement is off by more than [`MAX_DRIFT_PPM`] (the wall
//!   clock was set meanwhile: the anchor follows it, the rate stays).
//!
//! A timestamp is thus the real clock's reading of at most [`MAX_SPAN_NS`]
//! ago plus the counter's count since, at a rate measured over the last
//! span: within about a microsecond of `clock_gettime` while the wall
//! clock runs steadily, and after a step of the wall clock (`date -s`), off
//! by that step for at most [`MAX_SPAN_NS`].
//!
//! The counter is used only where the kernel itself keeps time with it
//! (the current clock source is `tsc`, which Linux chooses only for a
//! counter that runs at a constant rate, through sleep states, in step on
//! every CPU); elsewhere every read is `clock_gettime`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// How long a publisher reads the real clock for to learn the counter's
/// rate.
pub(crate) const LEARN_NS: u64 = 10_000_000;
/// Longest span between two real readings.
pub(crate) const MAX_SPAN_NS: u64 = 100_000_000;
/// A refined rate further than this (parts per million) from the one in use
/// means the wall clock was set, not that the counter's rate changed
/// (`adjtime` slews by 500 ppm at most).
pub(crate) const MAX_DRIFT_PPM: u64 = 1_000;
/// A real reading whose counter reads before and after it are further apart
/// than this is not used as an anchor (an interrupt or a preemption came
/// between them). A `clock_gettime` takes 100–200 ticks; at 1 GHz or more
/// this bounds a learned rate's error to 400 ppm, well inside
/// [`MAX_DRIFT_PPM`], so that the refinements are taken.
const MAX_PAIR_TICKS: u64 = 2_000;

/// The rate learned in this process (ns per tick, fixed point with 32
/// fractional bits); 0 while unknown.
static RATE: AtomicU64 = AtomicU64::new(0);

/// Wall-clock time in nanoseconds since the Unix epoch (0 before it): one
/// vDSO call, without `SystemTime`'s conversions.
#[inline]
pub(crate) fn now_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME) {
        Ok(t) if t.tv_sec() >= 0 => t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64,
        _ => 0,
    }
}

/// The time-stamp counter, unordered (it may be read a few instructions
/// early or late: nanoseconds).
#[cfg(target_arch = "x86_64")]
#[inline]
fn ticks() -> u64 {
    // SAFETY: `rdtsc` has no preconditions; `counter_usable` checked that
    // the kernel keeps time with it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
fn ticks() -> u64 {
    0 // never called: `counter_usable` is false
}

/// Whether the counter can stand in for the real clock here (see the
/// module documentation).
fn counter_usable() -> bool {
    static USABLE: OnceLock<bool> = OnceLock::new();
    *USABLE.get_or_init(|| {
        cfg!(target_arch = "x86_64")
            && std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
                .is_ok_and(|s| s.trim() == "tsc")
    })
}

/// A real reading and the counter at that moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pair {
    ns: u64,
    ticks: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not read yet.
    Start,
    /// Every read is the real clock.
    Exact,
    /// Learning the rate from real readings since `first`.
    Learning { first: Pair },
    /// Counting from `anchor` at `rate`; a new anchor after `span` ticks.
    Counting { anchor: Pair, rate: u64, span: u64 },
}

/// A publisher's send clock (one thread: no synchronization).
#[derive(Debug)]
pub(crate) struct SendClock {
    state: State,
}

/// Where a [`SendClock`] reads the time: the real clock and the counter,
/// or stand-ins in tests.
pub(crate) trait Source {
    /// Whether the counter may be used at all.
    fn usable(&self) -> bool;
    /// The real clock (ns since the Unix epoch; 0 if it cannot be read).
    fn real(&self) -> u64;
    /// The counter.
    fn ticks(&self) -> u64;
    /// The rate learned in this process, 0 if none.
    fn known_rate(&self) -> u64;
    /// Keeps a learned rate for the process.
    fn learned(&self, rate: u64);
}

/// The machine's clocks.
pub(crate) struct Machine;

impl Source for Machine {
    fn usable(&self) -> bool {
        counter_usable()
    }
    #[inline]
    fn real(&self) -> u64 {
        now_ns()
    }
    #[inline]
    fn ticks(&self) -> u64 {
        ticks()
    }
    fn known_rate(&self) -> u64 {
        // Relaxed: a number; nothing else is published through it.
        RATE.load(Ordering::Relaxed)
    }
    fn learned(&self, rate: u64) {
        RATE.store(rate, Ordering::Relaxed);
    }
}

impl SendClock {
    pub(crate) const fn new() -> Self {
        SendClock { state: State::Start }
    }

    /// Now, in nanoseconds since the Unix epoch.
    #[inline]
    pub(crate) fn now(&mut self) -> u64 {
        self.now_from(&Machine)
    }

    /// [`SendClock::now`], reading `src`.
    #[inline]
    pub(crate) fn now_from(&mut self, src: &impl Source) -> u64 {
        if let State::Counting { anchor, rate, span } = self.state {
            let d = src.ticks().wrapping_sub(anchor.ticks);
            if d < span {
                return anchor.ns + scale(d, rate);
            }
        }
        self.slow(src)
    }

    /// Every read that takes the real clock.
    #[cold]
    fn slow(&mut self, src: &impl Source) -> u64 {
        match self.state {
            State::Exact => src.real(),
            State::Start => {
                if !src.usable() {
                    self.state = State::Exact;
                    return src.real();
                }
                let Some(p) = pair(src) else { return src.real() };
                let rate = src.known_rate();
                self.state = if plausible(rate) {
                    State::Counting { anchor: p, rate, span: span_of(2 * LEARN_NS, rate) }
                } else {
                    State::Learning { first: p }
                };
                p.ns
            }
            State::Learning { first } => {
                let Some(p) = pair(src) else { return src.real() };
                if p.ns.saturating_sub(first.ns) >= LEARN_NS {
                    match rate_between(first, p).filter(|&r| plausible(r)) {
                        Some(rate) => {
                            src.learned(rate);
                            self.state = State::Counting { anchor: p, rate, span: span_of(2 * LEARN_NS, rate) };
                        }
                        // The counter did not run as a clock would: the
                        // real clock from now on.
                        None => self.state = State::Exact,
                    }
                }
                p.ns
            }
            State::Counting { anchor, rate, span } => {
                // A span is over (or the counter went back: another CPU's,
                // not in step after all).
                let Some(p) = pair(src) else { return src.real() };
                let refined = rate_between(anchor, p).filter(|&r| r.abs_diff(rate) <= rate / 1_000_000 * MAX_DRIFT_PPM);
                let rate = refined.unwrap_or(rate);
                let span = (span.saturating_mul(2)).min(span_of(MAX_SPAN_NS, rate));
                self.state = State::Counting { anchor: p, rate, span };
                p.ns
            }
        }
    }
}

/// A real reading between two counter reads close together, or `None`.
fn pair(src: &impl Source) -> Option<Pair> {
    for _ in 0..3 {
        let before = src.ticks();
        let ns = src.real();
        let after = src.ticks();
        if ns != 0 && after >= before && after - before <= MAX_PAIR_TICKS {
            return Some(Pair { ns, ticks: before + (after - before) / 2 });
        }
    }
    None
}

/// The rate from `a` to `b` (ns per tick, 32 fractional bits), if both ran
/// forward.
fn rate_between(a: Pair, b: Pair) -> Option<u64> {
    let (ns, ticks) = (b.ns.checked_sub(a.ns)?, b.ticks.checked_sub(a.ticks)?);
    if ns == 0 || ticks == 0 {
        return None;
    }
    u64::try_from(((ns as u128) << 32) / ticks as u128).ok()
}

/// A counter between 100 MHz and 10 GHz.
fn plausible(rate: u64) -> bool {
    ((1u64 << 32) / 10..=(1u64 << 32) * 10).contains(&rate)
}

/// `ticks` at `rate`, in ns.
#[inline]
fn scale(ticks: u64, rate: u64) -> u64 {
    ((ticks as u128 * rate as u128) >> 32) as u64
}

/// The ticks in `ns` at `rate`.
fn span_of(ns: u64, rate: u64) -> u64 {
    (((ns as u128) << 32) / rate.max(1) as u128).min(u64::MAX as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A machine whose counter runs at `ghz` and whose wall clock is the
    /// counter's time plus `offset` (a step of the wall clock changes it).
    struct Fake {
        tick: Cell<u64>,
        ghz: f64,
        offset: Cell<u64>,
        rate: Cell<u64>,
        real_reads: Cell<u64>,
    }

    impl Fake {
        fn new(ghz: f64) -> Fake {
            Fake {
                tick: Cell::new(1 << 40),
                ghz,
                offset: Cell::new(1_800_000_000_000_000_000),
                rate: Cell::new(0),
                real_reads: Cell::new(0),
            }
        }
        fn advance_ns(&self, ns: u64) {
            self.tick.set(self.tick.get() + (ns as f64 * self.ghz) as u64);
        }
        fn truth(&self) -> u64 {
            (self.tick.get() as f64 / self.ghz) as u64 + self.offset.get()
        }
    }

    impl Source for Fake {
        fn usable(&self) -> bool {
            true
        }
        fn real(&self) -> u64 {
            self.real_reads.set(self.real_reads.get() + 1);
            self.truth()
        }
        fn ticks(&self) -> u64 {
            self.tick.set(self.tick.get() + 3); // reading takes a little
            self.tick.get()
        }
        fn known_rate(&self) -> u64 {
            self.rate.get()
        }
        fn learned(&self, rate: u64) {
            self.rate.set(rate);
        }
    }

    #[test]
    fn counted_time_follows_the_real_clock_with_few_real_reads() {
        for ghz in [0.8, 2.596, 4.1] {
            let m = Fake::new(ghz);
            let mut c = SendClock::new();
            for _ in 0..200_000 {
                m.advance_ns(5_000); // a message every 5 µs, 1 s in all
                let t = c.now_from(&m);
                assert!(t.abs_diff(m.truth()) < 100, "{ghz} GHz: {t} against {}", m.truth());
            }
            // Learning: 10 ms of real reads (2 000 messages); then one per span.
            assert!(m.real_reads.get() < 2_100 + 3 * 20, "{ghz} GHz: {} real reads", m.real_reads.get());
            assert!(matches!(c.state, State::Counting { .. }));
        }
    }

    #[test]
    fn a_second_clock_in_the_process_skips_learning() {
        let m = Fake::new(2.0);
        let mut a = SendClock::new();
        while !matches!(a.state, State::Counting { .. }) {
            m.advance_ns(100_000);
            a.now_from(&m);
        }
        let mut b = SendClock::new();
        b.now_from(&m);
        assert!(matches!(b.state, State::Counting { .. }));
        m.advance_ns(1_000);
        assert!(b.now_from(&m).abs_diff(m.truth()) < 100);
    }

    #[test]
    fn a_step_of_the_wall_clock_is_followed_within_a_span_and_keeps_the_rate() {
        let m = Fake::new(3.0);
        let mut c = SendClock::new();
        for _ in 0..5_000 {
            m.advance_ns(100_000);
            c.now_from(&m);
        }
        let State::Counting { rate, .. } = c.state else { panic!("counting") };
        m.offset.set(m.offset.get() - 3_600_000_000_000); // set back an hour
        let mut caught_up = None;
        for n in 0..2_000u64 {
            m.advance_ns(100_000);
            if c.now_from(&m).abs_diff(m.truth()) < 100 {
                caught_up = Some(n * 100_000);
                break;
            }
        }
        let after = caught_up.expect("the step was followed");
        assert!(after <= MAX_SPAN_NS, "followed after {after} ns");
        let State::Counting { rate: now, .. } = c.state else { panic!("counting") };
        assert_eq!(now, rate, "a step is not taken for a new rate");
    }

    #[test]
    fn a_rare_sender_reads_the_real_clock_and_a_counter_that_goes_back_is_not_trusted() {
        let m = Fake::new(2.0);
        let mut c = SendClock::new();
        for _ in 0..100 {
            m.advance_ns(1_000_000);
            c.now_from(&m);
        }
        // Once a second: every read is past the span, so a real one.
        let before = m.real_reads.get();
        for _ in 0..5 {
            m.advance_ns(1_000_000_000);
            let reads = m.real_reads.get();
            assert!(c.now_from(&m).abs_diff(m.truth()) < 10);
            assert!(m.real_reads.get() > reads, "a real read");
        }
        assert!(m.real_reads.get() >= before + 5);
        // A counter that jumps back (d wraps to a huge count): a real read.
        m.tick.set(m.tick.get() - 1_000_000);
        let reads = m.real_reads.get();
        assert!(c.now_from(&m).abs_diff(m.truth()) < 10);
        assert!(m.real_reads.get() > reads, "a real read");
    }

    #[test]
    fn a_counter_that_does_not_run_leaves_the_real_clock() {
        struct Stuck(Fake);
        impl Source for Stuck {
            fn usable(&self) -> bool {
                true
            }
            fn real(&self) -> u64 {
                self.0.real()
            }
            fn ticks(&self) -> u64 {
                7
            }
            fn known_rate(&self) -> u64 {
                0
            }
            fn learned(&self, _: u64) {
                panic!("no rate from a stuck counter")
            }
        }
        let m = Stuck(Fake::new(1.0));
        let mut c = SendClock::new();
        for _ in 0..10_000 {
            m.0.advance_ns(10_000);
            assert_eq!(c.now_from(&m), m.0.truth());
        }
        assert_eq!(c.state, State::Exact);
    }

    #[test]
    fn the_machine_clock_agrees_with_clock_gettime() {
        let mut c = SendClock::new();
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(100) {
            let before = now_ns();
            let t = c.now();
            let after = now_ns();
            // Counted time may be off by the rate's error over a span (5 ns
            // when this was written): 20 µs is far beyond that, and far
            // below what a wrong rate or anchor gives.
            assert!(t + 20_000 >= before && t <= after + 20_000, "{before} <= {t} <= {after}");
        }
        let counting = matches!(c.state, State::Counting { .. });
        assert_eq!(counting, counter_usable(), "{:?}", c.state);
    }
}
