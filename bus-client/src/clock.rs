//! The send timestamp's clock: wall-clock nanoseconds since the Unix epoch
//! for every message sent, without a `clock_gettime` per message.
//!
//! `clock_gettime` costs 20–50 ns on the machines we measure on, and its
//! vDSO read of the time-stamp counter is ordered (`lfence; rdtsc`): it
//! waits for every earlier instruction of the send, loads of lines the
//! receivers hold included. In a profile of one publisher feeding four
//! groups it took 12 % of the publisher's time; counting instead made one
//! message per call 1.04–1.35× faster in five series of paired rounds
//! (4–5 % in the one whose run order alternated and whose unchanged rows
//! read 1.00×), within a noise of about ±10 % (BENCHMARKS.md, session 12).
//!
//! So a publisher reads the counter (`rdtsc`, unordered) and converts it
//! with a rate and an anchor:
//! - the rate, ns per tick, is measured against `CLOCK_MONOTONIC`, which
//!   runs at the wall clock's rate (NTP's frequency corrections included)
//!   but is never set: first over [`LEARN_NS`] of real readings, then again
//!   over every span between two anchors; the process keeps the latest for
//!   the publishers it starts later;
//! - the anchor is a `CLOCK_REALTIME` reading and the counter beside it
//!   (each clock read between two counter reads, the closest of three
//!   tries), taken again after a span of counter ticks that starts at twice
//!   the learning time and doubles up to [`MAX_SPAN_NS`].
//!
//! A timestamp is thus the wall clock's reading of at most [`MAX_SPAN_NS`]
//! ago plus the counter's count since, at the rate of the last span.
//! - While NTP's correction stays the same it is typically within tens of
//!   nanoseconds of `clock_gettime` (the test on a 2-vCPU KVM guest found
//!   counted stamps at most 0–10 ns outside the two `clock_gettime`
//!   readings around them); at worst, with an anchor whose three tries
//!   were all interrupted, about a microsecond.
//! - A change of NTP's correction puts a span off by the change over its
//!   length (500 ppm over 100 ms: 50 µs); the next span is measured at the
//!   new rate.
//! - After the wall clock is set (`date -s`), or a suspend, stamps are off
//!   until the next anchor, at most a span later; the rate is not measured
//!   across either (the wall clock and the monotonic one moved apart).
//! - The counter is read unordered: a stamp may be taken before loads
//!   still in flight have finished (in the send, where they hit the cache:
//!   nanoseconds).
//!
//! The counter is used only where the kernel itself keeps time with it
//! (the current clock source is `tsc`, which Linux chooses only for a
//! counter that runs at a constant rate, through idle states, in step on
//! every CPU), read once per process; elsewhere every read is
//! `clock_gettime`. A publisher also gives the counter up for good when
//! the counter stands still, shows a rate no counter has, or the real
//! clocks become slow to read (see [`SendClock::slow`]). A counter that
//! goes back costs one real reading and a new anchor.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// How long a publisher reads the real clock for to learn the counter's
/// rate.
pub(crate) const LEARN_NS: u64 = 10_000_000;
/// Longest span between two real readings.
pub(crate) const MAX_SPAN_NS: u64 = 100_000_000;
/// Real readings whose counter reads before and after them are further
/// apart than this are not used (an interrupt or a preemption came between
/// them). The two vDSO calls and three counter reads take 100–300 ticks;
/// at 1 GHz or more, 1 000 ticks bound an anchor's error to 0.5 µs.
const MAX_PAIR_TICKS: u64 = 1_000;

/// The rate learned in this process (ns per tick, fixed point with 32
/// fractional bits); 0 while unknown.
static RATE: AtomicU64 = AtomicU64::new(0);

/// Wall-clock time in nanoseconds since the Unix epoch (0 before it): one
/// vDSO call, without `SystemTime`'s conversions.
#[inline]
pub(crate) fn now_ns() -> u64 {
    read(nix::time::ClockId::CLOCK_REALTIME)
}

fn read(clock: nix::time::ClockId) -> u64 {
    match nix::time::clock_gettime(clock) {
        Ok(t) if t.tv_sec() >= 0 => t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64,
        _ => 0,
    }
}

/// The time-stamp counter, unordered.
#[cfg(target_arch = "x86_64")]
#[inline]
fn ticks() -> u64 {
    // SAFETY: `rdtsc` is part of the x86-64 baseline, reads no memory and
    // has no preconditions (a process that disabled it with
    // `prctl(PR_SET_TSC)` gets SIGSEGV, not undefined behaviour).
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
fn ticks() -> u64 {
    0 // never called: `counter_usable` is false
}

/// Whether the counter can stand in for the real clock here (see the
/// module documentation). Asked once per process: if the kernel gives the
/// counter up later (its clock-source watchdog), counting goes on, its
/// rate measured span by span; where the new clock source is slow to read
/// (`hpet`, `acpi_pm`), [`SendClock::slow`] gives the counter up too, after
/// [`MAX_FAILED`] readings.
fn counter_usable() -> bool {
    static USABLE: OnceLock<bool> = OnceLock::new();
    *USABLE.get_or_init(|| {
        cfg!(target_arch = "x86_64")
            && std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
                .is_ok_and(|s| s.trim() == "tsc")
    })
}

/// Readings of the wall clock and the monotonic clock, each with the
/// counter at that moment (the middle of the counter reads around it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pair {
    real: u64,
    ticks: u64,
    mono: u64,
    mono_ticks: u64,
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
    /// Ticks from the anchor to the last counted stamp: a counter that does
    /// not move on from one stamp to the next is not counted with.
    last: u64,
    /// Real readings in a row that found no usable pair.
    failed: u32,
}

/// Real readings in a row without a usable pair after which the counter is
/// given up (each such reading costs three tries).
const MAX_FAILED: u32 = 8;
/// Wall-clock and monotonic time that moved apart by more than this between
/// two readings say that the wall clock was set, or that the machine was
/// suspended (the monotonic clock stops then; the counter may run on): the
/// counter's rate is not measured across that.
const APART_NS: u64 = 1_000_000;

/// Where a [`SendClock`] reads the time: the machine's clocks and counter,
/// or stand-ins in tests.
pub(crate) trait Source {
    /// Whether the counter may be used at all.
    fn usable(&self) -> bool;
    /// The wall clock (ns since the Unix epoch; 0 if it cannot be read).
    fn real(&self) -> u64;
    /// The monotonic clock (ns; 0 if it cannot be read).
    fn mono(&self) -> u64;
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
    fn mono(&self) -> u64 {
        read(nix::time::ClockId::CLOCK_MONOTONIC)
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
        SendClock { state: State::Start, last: 0, failed: 0 }
    }

    /// Now, in nanoseconds since the Unix epoch.
    #[inline]
    pub(crate) fn now(&mut self) -> u64 {
        self.now_from(&Machine)
    }

    /// [`SendClock::now`], reading `src`. Counted while the counter has
    /// moved on since the last stamp and is at most a span past the anchor;
    /// otherwise (a span over, a counter that went back or stood still) a
    /// real reading, which also takes a new anchor and measures the rate
    /// again (see [`SendClock::slow`] for when the counter is given up).
    #[inline]
    pub(crate) fn now_from(&mut self, src: &impl Source) -> u64 {
        if let State::Counting { anchor, rate, span } = self.state {
            let d = src.ticks().wrapping_sub(anchor.ticks);
            if d > self.last && d <= span {
                self.last = d;
                return anchor.real + scale(d, rate);
            }
        }
        self.slow(src)
    }

    /// A real reading with no usable pair; gives the counter up after
    /// [`MAX_FAILED`] in a row.
    fn failed(&mut self, src: &impl Source) -> u64 {
        self.failed += 1;
        if self.failed >= MAX_FAILED {
            self.state = State::Exact;
        }
        src.real()
    }

    /// Every read that takes the real clock. The counter is given up for
    /// good (every stamp a `clock_gettime`) when it stands still across a
    /// reading, when the rate it shows is one no counter between 100 MHz
    /// and 10 GHz has, or when [`MAX_FAILED`] readings in a row find no
    /// pair (the real clock has become slow to read: not `tsc` any more).
    #[cold]
    fn slow(&mut self, src: &impl Source) -> u64 {
        if self.state == State::Exact {
            return src.real();
        }
        if self.state == State::Start && !src.usable() {
            self.state = State::Exact;
            return src.real();
        }
        if let State::Learning { first } = self.state {
            // One real reading per stamp, as without the counter, until
            // the learning time is over; then a pair.
            let now = src.real();
            if now.wrapping_sub(first.real) < LEARN_NS {
                return now;
            }
        }
        let p = match pair(src) {
            Ok(p) => p,
            Err(Unpaired::Stopped) => {
                self.state = State::Exact;
                return src.real();
            }
            Err(Unpaired::Slow) => return self.failed(src),
        };
        self.failed = 0;
        self.last = 0;
        match self.state {
            State::Exact => {}
            State::Start => {
                let rate = src.known_rate();
                self.state = if plausible(rate) {
                    State::Counting { anchor: p, rate, span: span_of(2 * LEARN_NS, rate) }
                } else {
                    State::Learning { first: p }
                };
            }
            State::Learning { first } => {
                if apart(first, p) {
                    // Set or suspended meanwhile: learn from here.
                    self.state = State::Learning { first: p };
                } else if p.mono.saturating_sub(first.mono) >= LEARN_NS / 2 {
                    match rate_between(first, p).filter(|&r| plausible(r)) {
                        Some(rate) => {
                            src.learned(rate);
                            self.state = State::Counting { anchor: p, rate, span: span_of(2 * LEARN_NS, rate) };
                        }
                        None => self.state = State::Exact,
                    }
                }
            }
            State::Counting { anchor, rate, span } => {
                let measured = if p.mono_ticks <= anchor.mono_ticks || apart(anchor, p) {
                    // Gone back (another CPU's counter, not quite in step),
                    // or the wall clock set, or a suspend: nothing to
                    // measure across; anchor again at the same rate.
                    Some(rate)
                } else if p.mono.saturating_sub(anchor.mono) < LEARN_NS {
                    // Too short to measure well (a counter just behind the
                    // anchor, caught up): keep the rate.
                    Some(rate)
                } else {
                    // The monotonic clock is never set: the rate over the
                    // span is the rate, for this clock and for the next
                    // ones the process starts.
                    let r = rate_between(anchor, p).filter(|&r| plausible(r));
                    if let Some(r) = r {
                        src.learned(r);
                    }
                    r
                };
                match measured {
                    Some(rate) => {
                        let span = span.saturating_mul(2).min(span_of(MAX_SPAN_NS, rate));
                        self.state = State::Counting { anchor: p, rate, span };
                    }
                    None => self.state = State::Exact,
                }
            }
        }
        p.real
    }
}

/// Whether the wall clock and the monotonic clock moved apart between two
/// readings (see [`APART_NS`]).
fn apart(a: Pair, b: Pair) -> bool {
    let real = b.real.wrapping_sub(a.real) as i64;
    let mono = b.mono.wrapping_sub(a.mono) as i64;
    real.abs_diff(mono) > APART_NS
}

/// Why [`pair`] found no pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unpaired {
    /// The counter read the same around the clock readings.
    Stopped,
    /// Every try took too long (or a clock could not be read).
    Slow,
}

/// Both clocks, each read between two counter reads: of three tries, the
/// one whose counter reads were closest together, if any was close enough.
fn pair(src: &impl Source) -> Result<Pair, Unpaired> {
    let mut best: Option<(u64, Pair)> = None;
    for _ in 0..3 {
        let t0 = src.ticks();
        let real = src.real();
        let t1 = src.ticks();
        let mono = src.mono();
        let t2 = src.ticks();
        if t2 == t0 {
            return Err(Unpaired::Stopped);
        }
        let width = t2.wrapping_sub(t0);
        if real != 0
            && mono != 0
            && t1 >= t0
            && t2 >= t1
            && width <= MAX_PAIR_TICKS
            && best.is_none_or(|(w, _)| width < w)
        {
            best = Some((width, Pair { real, ticks: t0 + (t1 - t0) / 2, mono, mono_ticks: t1 + (t2 - t1) / 2 }));
        }
    }
    best.map(|(_, p)| p).ok_or(Unpaired::Slow)
}

/// The monotonic clock's rate from `a` to `b` (ns per tick, 32 fractional
/// bits); `None` if either stood still or went back.
fn rate_between(a: Pair, b: Pair) -> Option<u64> {
    let (ns, ticks) = (b.mono.checked_sub(a.mono)?, b.mono_ticks.checked_sub(a.mono_ticks)?);
    if ns == 0 || ticks == 0 {
        return None;
    }
    u64::try_from(((ns as u128) << 32) / ticks as u128).ok()
}

/// A counter between 100 MHz and 10 GHz.
fn plausible(rate: u64) -> bool {
    ((1u64 << 32) / 10..=(1u64 << 32) * 10).contains(&rate)
}

/// `ticks` at `rate`, in ns (`ticks` < a span: no overflow).
#[inline]
fn scale(ticks: u64, rate: u64) -> u64 {
    ((ticks as u128 * rate as u128) >> 32) as u64
}

/// The ticks in `ns` at `rate` (a plausible one: at most 10^10 per
/// second).
fn span_of(ns: u64, rate: u64) -> u64 {
    (((ns as u128) << 32) / rate.max(1) as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A machine whose counter runs at `ghz` ticks per ns of its clocks;
    /// the wall clock is the monotonic one plus `offset` (a step of the wall
    /// clock changes it), and NTP's correction is a change of `ghz`. Each
    /// counter read takes 3 ticks; with `slow_every` = n, every n-th takes
    /// 5 000 (an interrupt). A `frozen` counter does not move.
    struct Fake {
        ns: Cell<f64>,
        tick: Cell<f64>,
        ghz: Cell<f64>,
        offset: Cell<i64>,
        rate: Cell<u64>,
        real_reads: Cell<u64>,
        reads: Cell<u64>,
        slow_every: Cell<u64>,
        frozen: Cell<bool>,
    }

    impl Fake {
        fn new(ghz: f64) -> Fake {
            Fake {
                ns: Cell::new(1e12),
                tick: Cell::new((1u64 << 40) as f64),
                ghz: Cell::new(ghz),
                offset: Cell::new(1_800_000_000_000_000_000),
                rate: Cell::new(0),
                real_reads: Cell::new(0),
                reads: Cell::new(0),
                slow_every: Cell::new(0),
                frozen: Cell::new(false),
            }
        }
        fn advance_ns(&self, ns: f64) {
            self.ns.set(self.ns.get() + ns);
            if !self.frozen.get() {
                self.tick.set(self.tick.get() + ns * self.ghz.get());
            }
        }
        /// A suspend of `ns` during which the counter runs on: the wall
        /// clock moves, the monotonic clock does not.
        fn suspend(&self, ns: i64) {
            self.tick.set(self.tick.get() + ns as f64 * self.ghz.get());
            self.offset.set(self.offset.get() + ns);
        }
        fn truth(&self) -> u64 {
            (self.ns.get() as u64).wrapping_add_signed(self.offset.get())
        }
        /// The rate the clock would learn, in its fixed point.
        fn true_rate(&self) -> u64 {
            ((1u64 << 32) as f64 / self.ghz.get()) as u64
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
        fn mono(&self) -> u64 {
            self.ns.get() as u64
        }
        fn ticks(&self) -> u64 {
            self.reads.set(self.reads.get() + 1);
            let n = self.slow_every.get();
            let took = if n > 0 && self.reads.get() % n == 0 { 5_000.0 } else { 3.0 };
            self.advance_ns(took / self.ghz.get());
            self.tick.get() as u64
        }
        fn known_rate(&self) -> u64 {
            self.rate.get()
        }
        fn learned(&self, rate: u64) {
            self.rate.set(rate);
        }
    }

    /// Reads every `every_ns` for `for_ns`; the largest error seen after
    /// `settle_ns`.
    fn run(c: &mut SendClock, m: &Fake, every_ns: f64, for_ns: f64, settle_ns: f64) -> u64 {
        let (mut t, mut worst) = (0.0, 0);
        while t < for_ns {
            m.advance_ns(every_ns);
            t += every_ns;
            let err = c.now_from(m).abs_diff(m.truth());
            if t >= settle_ns {
                worst = worst.max(err);
            }
        }
        worst
    }

    fn rate_of(c: &SendClock) -> u64 {
        match c.state {
            State::Counting { rate, .. } => rate,
            s => panic!("not counting: {s:?}"),
        }
    }

    /// Parts per million between two rates.
    fn ppm(a: u64, b: u64) -> f64 {
        a.abs_diff(b) as f64 / b as f64 * 1e6
    }

    #[test]
    fn counted_time_follows_the_real_clock_with_few_real_reads() {
        for ghz in [0.8, 2.596, 4.1] {
            let m = Fake::new(ghz);
            let mut c = SendClock::new();
            // A message every 5 µs: 10 ms of learning, each stamp one real
            // reading (and the pairs at its start and end three), then 1 s
            // of counting.
            assert!(run(&mut c, &m, 5_000.0, LEARN_NS as f64 + 10_000.0, 0.0) < 50, "{ghz} GHz");
            let learning = m.real_reads.get();
            assert!((1_990..=2_010).contains(&learning), "{ghz} GHz: {learning} real reads");
            assert!(run(&mut c, &m, 5_000.0, 1e9, 0.0) < 50, "{ghz} GHz");
            // One anchor per span: 20, 40, 80, then every 100 ms.
            let counting = m.real_reads.get() - learning;
            assert!((3 * 11..=3 * 13).contains(&counting), "{ghz} GHz: {counting} real reads");
            assert!(ppm(rate_of(&c), m.true_rate()) < 1.0);
        }
    }

    #[test]
    fn a_second_clock_in_the_process_skips_learning() {
        let m = Fake::new(2.0);
        let mut a = SendClock::new();
        run(&mut a, &m, 100_000.0, 2.0 * LEARN_NS as f64, 0.0);
        let mut b = SendClock::new();
        b.now_from(&m);
        assert!(matches!(b.state, State::Counting { .. }));
        assert!(run(&mut b, &m, 1_000.0, 1e6, 0.0) < 50);
    }

    #[test]
    fn steps_of_the_wall_clock_are_followed_within_a_span_and_leave_the_rate() {
        for step in [-3_600_000_000_000i64, 3_600_000_000_000, -5_000_000, 5_000_000] {
            let m = Fake::new(3.0);
            let mut c = SendClock::new();
            run(&mut c, &m, 100_000.0, 5e8, 0.0);
            m.offset.set(m.offset.get() + step);
            // Off by the step until the next anchor, at most a span later;
            // exact from there on, at the same rate.
            assert!(run(&mut c, &m, 100_000.0, 5e8, MAX_SPAN_NS as f64 + 1e6) < 50, "step {step}");
            assert!(ppm(rate_of(&c), m.true_rate()) < 1.0, "step {step}");
        }
    }

    #[test]
    fn a_step_while_learning_does_not_spoil_the_rate() {
        let m = Fake::new(2.5);
        let mut c = SendClock::new();
        run(&mut c, &m, 100_000.0, 5e6, 0.0);
        m.offset.set(m.offset.get() - 5_000_000); // back 5 ms, mid-learning
        assert!(run(&mut c, &m, 100_000.0, 1e9, 2.0 * LEARN_NS as f64) < 50);
        assert!(ppm(m.rate.get(), m.true_rate()) < 10.0, "the process's rate");
    }

    #[test]
    fn a_changed_ntp_correction_is_followed_span_by_span() {
        // 500 ppm (adjtime's most) and 8.3 % (chrony's `maxslewrate`).
        for change in [1.0005, 1.083] {
            let m = Fake::new(2.0);
            let mut c = SendClock::new();
            run(&mut c, &m, 50_000.0, 5e8, 0.0);
            m.ghz.set(m.ghz.get() * change);
            // The first span after the change is off by up to the change
            // over its length; the next ones are measured at the new rate.
            let worst = run(&mut c, &m, 50_000.0, 1e9, 2.0 * MAX_SPAN_NS as f64 + 1e6);
            assert!(worst < 100, "change {change}: {worst} ns");
            assert!(ppm(rate_of(&c), m.true_rate()) < 1.0, "change {change}");
        }
    }

    #[test]
    fn interrupted_readings_are_not_taken_as_anchors() {
        let m = Fake::new(2.0);
        m.slow_every.set(5);
        let mut c = SendClock::new();
        // A real reading is returned as it was read, before the tries after
        // it (an interrupted one among them: 2.5 µs); counted stamps are
        // as good as without interruptions.
        assert!(run(&mut c, &m, 20_000.0, 1e9, 0.0) < 6_000);
        assert!(ppm(rate_of(&c), m.true_rate()) < 1.0);
    }

    #[test]
    fn clocks_that_stay_slow_to_read_end_the_counting() {
        let m = Fake::new(2.0);
        let mut c = SendClock::new();
        run(&mut c, &m, 100_000.0, 5e8, 0.0);
        // Every counter read now takes 5 000 ticks: no pair is ever usable.
        m.slow_every.set(1);
        for n in 0..MAX_FAILED + 2 {
            m.advance_ns(MAX_SPAN_NS as f64);
            let reads = m.real_reads.get();
            c.now_from(&m);
            assert!(m.real_reads.get() > reads, "reading {n} is a real one");
        }
        assert_eq!(c.state, State::Exact);
    }

    #[test]
    fn a_rare_sender_reads_the_real_clock_and_a_counter_that_goes_back_is_not_trusted() {
        let m = Fake::new(2.0);
        let mut c = SendClock::new();
        run(&mut c, &m, 1e6, 1e8, 0.0);
        // Once a second: every read is past the span, so a real one.
        for _ in 0..5 {
            m.advance_ns(1e9);
            let reads = m.real_reads.get();
            // The best of three readings: up to 9 counter reads ago.
            assert!(c.now_from(&m).abs_diff(m.truth()) < 50);
            assert!(m.real_reads.get() > reads, "a real read");
        }
        // A counter that jumps back, far or to just behind the anchor: one
        // real read, then counting again at the same rate.
        for back in [1e6, 0.0] {
            let rate = rate_of(&c);
            let State::Counting { anchor, .. } = c.state else { unreachable!() };
            let to = if back > 0.0 { m.tick.get() - back } else { anchor.ticks as f64 - 4.0 };
            m.tick.set(to);
            let reads = m.real_reads.get();
            assert!(c.now_from(&m).abs_diff(m.truth()) < 50);
            assert!(m.real_reads.get() > reads, "a real read");
            assert_eq!(rate_of(&c), rate, "counting again, at the same rate");
            let reads = m.real_reads.get();
            assert!(run(&mut c, &m, 1_000.0, 1e6, 0.0) < 50);
            assert_eq!(m.real_reads.get(), reads, "counted");
        }
    }

    #[test]
    fn a_suspend_is_followed_at_the_next_anchor_and_leaves_the_rate() {
        for (gap, learning) in
            [(50_000_000i64, false), (1_000_000_000, false), (60_000_000_000, false), (50_000_000, true)]
        {
            let m = Fake::new(3.0);
            let mut c = SendClock::new();
            run(&mut c, &m, 100_000.0, if learning { 5e6 } else { 1e9 }, 0.0);
            m.suspend(gap);
            assert!(run(&mut c, &m, 100_000.0, 1e9, MAX_SPAN_NS as f64 + 2.0 * LEARN_NS as f64 + 1e6) < 50, "{gap}");
            assert!(ppm(rate_of(&c), m.true_rate()) < 1.0, "{gap}");
            assert!(ppm(m.rate.get(), m.true_rate()) < 1.0, "{gap}: the process's rate");
        }
    }

    #[test]
    fn a_clock_started_later_takes_the_rate_of_the_latest_span() {
        let m = Fake::new(2.0);
        let mut a = SendClock::new();
        run(&mut a, &m, 50_000.0, 5e8, 0.0);
        m.ghz.set(m.ghz.get() * 1.0005);
        run(&mut a, &m, 50_000.0, 5e8, 0.0);
        let mut b = SendClock::new();
        assert!(run(&mut b, &m, 50_000.0, 2.0 * LEARN_NS as f64, 0.0) < 50);
    }

    #[test]
    fn a_counter_that_stands_still_leaves_the_real_clock() {
        // From the start, or frozen in the middle of a span.
        for freeze_after_ns in [0.0, 5.05e8] {
            let m = Fake::new(1.0);
            m.frozen.set(freeze_after_ns == 0.0);
            let mut c = SendClock::new();
            let mut t = 0.0;
            let mut exact_since = None;
            for _ in 0..100_000 {
                m.advance_ns(10_000.0);
                t += 10_000.0;
                if t >= freeze_after_ns {
                    m.frozen.set(true);
                }
                let now = c.now_from(&m);
                if t > freeze_after_ns {
                    assert!(now.abs_diff(m.truth()) < 50, "frozen {freeze_after_ns} ns in");
                }
                if c.state == State::Exact && exact_since.is_none() {
                    exact_since = Some(t);
                }
            }
            let since = exact_since.expect("the counter was given up");
            assert!(since <= freeze_after_ns + 2.0 * LEARN_NS as f64, "given up {since} ns in");
        }
    }

    #[test]
    fn the_machine_clock_agrees_with_clock_gettime() {
        let mut c = SendClock::new();
        let mut worst = 0;
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(300) {
            let before = now_ns();
            let t = c.now();
            let after = now_ns();
            let e = before.saturating_sub(t).max(t.saturating_sub(after));
            worst = worst.max(e);
            if std::env::var_os("CLOCKDBG").is_some() && e > 30 {
                eprintln!("{:?} e={e} width={}", start.elapsed(), after - before);
            }
        }
        // A counted stamp lies between the two real readings around it, up
        // to the anchor's and the rate's error: tens of ns. 20 µs is far
        // beyond that and far below a wrong rate's or anchor's error.
        assert!(worst < 20_000, "{worst} ns outside");
        let counting = matches!(c.state, State::Counting { .. });
        assert_eq!(counting, counter_usable(), "{:?}", c.state);
        eprintln!("counted stamps at most {worst} ns outside the clock_gettime readings around them");
    }
}
