//! A cap on how often one kind of warning is logged: a peer that can
//! trigger a warning at will (a refused user connecting in a loop) must not
//! be able to fill the log or the disk under it.

use std::time::{Duration, Instant};

/// At most [`LogLimit::PER_WINDOW`] log lines per [`LogLimit::WINDOW`]; the
/// rest are counted, and the count is logged once the next window opens.
#[derive(Debug)]
pub struct LogLimit {
    window_start: Instant,
    logged: u32,
    suppressed: u64,
}

impl Default for LogLimit {
    fn default() -> Self {
        LogLimit { window_start: Instant::now(), logged: 0, suppressed: 0 }
    }
}

impl LogLimit {
    /// Lines allowed per window.
    pub const PER_WINDOW: u32 = 10;
    /// The window.
    pub const WINDOW: Duration = Duration::from_secs(1);

    /// Whether to log one more line now. When a new window opens after
    /// lines were held back, `on_suppressed(n)` is called first with how
    /// many, so that the log still says they happened.
    pub fn allow(&mut self, now: Instant, on_suppressed: impl FnOnce(u64)) -> bool {
        self.flush(now, on_suppressed);
        if self.logged < Self::PER_WINDOW {
            self.logged += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    /// Once the window is over: reports the lines held back in it, if any
    /// (`on_suppressed(n)`), and opens a new one. Call it regularly as well
    /// (the daemon's audit does), so that a burst that stops is reported
    /// soon, not at the next line, hours later.
    pub fn flush(&mut self, now: Instant, on_suppressed: impl FnOnce(u64)) {
        if now.saturating_duration_since(self.window_start) < Self::WINDOW {
            return;
        }
        if self.suppressed > 0 {
            on_suppressed(self.suppressed);
        }
        self.window_start = now;
        self.logged = 0;
        self.suppressed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::LogLimit;

    #[test]
    fn a_burst_is_cut_to_the_window_and_what_was_held_back_is_reported() {
        let mut limit = LogLimit::default();
        let t0 = std::time::Instant::now();
        let mut reported = Vec::new();
        let allowed = (0..3000).filter(|_| limit.allow(t0, |n| reported.push(n))).count();
        assert_eq!(allowed, LogLimit::PER_WINDOW as usize);
        assert!(reported.is_empty());
        // The next window: the count of the held-back lines comes first.
        assert!(limit.allow(t0 + LogLimit::WINDOW, |n| reported.push(n)));
        assert_eq!(reported, [3000 - LogLimit::PER_WINDOW as u64]);
        // A quiet window reports nothing.
        assert!(limit.allow(t0 + 3 * LogLimit::WINDOW, |n| reported.push(n)));
        assert_eq!(reported.len(), 1);
        // A burst that stops is reported by the next flush after its
        // window, without waiting for another line.
        let t1 = t0 + 5 * LogLimit::WINDOW;
        let allowed = (0..20).filter(|_| limit.allow(t1, |n| reported.push(n))).count();
        assert_eq!(allowed, LogLimit::PER_WINDOW as usize);
        limit.flush(t1, |n| reported.push(n));
        assert_eq!(reported.len(), 1, "not before its window is over");
        limit.flush(t1 + LogLimit::WINDOW, |n| reported.push(n));
        assert_eq!(reported, [3000 - LogLimit::PER_WINDOW as u64, 20 - LogLimit::PER_WINDOW as u64]);
    }
}
