//! What the bridge has carried and dropped, counted from start and logged
//! every `stats-interval` while it changes, and once more at exit.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Counters, shared by the bridge's threads and Zenoh's callbacks.
        #[derive(Debug, Default)]
        pub struct Counters {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A copy of the counters at one moment.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct Snapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Counters {
            /// Reads every counter.
            pub fn snapshot(&self) -> Snapshot {
                Snapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }

        impl fmt::Display for Snapshot {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut sep = "";
                $(
                    write!(f, "{sep}{}={}", stringify!($name), self.$name)?;
                    sep = " ";
                )*
                let _ = sep;
                Ok(())
            }
        }
    };
}

counters! {
    /// Local one-way messages sent to other hosts.
    sent,
    /// Zenoh samples that carried several of them (`coalesce`).
    batches_sent,
    /// Local one-way messages dropped because no host exported their
    /// subsystem (`on-link-loss = "drop"`).
    dropped_no_link,
    /// Local one-way messages that waited for an exporter to be linked
    /// (`on-link-loss = "block"`) before they were sent.
    waited_for_link,
    /// Local one-way messages Zenoh refused to send (an error from `put`).
    send_failed,
    /// Local requests forwarded to other hosts.
    requests_sent,
    /// Local requests answered `Unreachable`: no host exported the
    /// subsystem, or the link went while the request was out.
    unreachable,
    /// Local requests answered `Timeout`: forwarded, but no reply came
    /// within `request-timeout` (the far service is slow, or the link hung).
    timed_out,
    /// Messages from other hosts handed to the local bus.
    received,
    /// Messages from other hosts the local bus did not take (no subscriber,
    /// or its queue stayed full for `local-timeout`).
    dropped_local,
    /// Requests from other hosts answered (with a reply or an error).
    requests_served,
    /// Requests from other hosts turned away: every request worker was
    /// busy and the backlog full.
    requests_refused,
    /// Local messages whose route cannot be a Zenoh key expression.
    unbridgeable,
    /// Local messages that had come from another host (not sent on again,
    /// so that bridges never loop a message).
    skipped_remote,
}

/// Adds one; returns the new count.
pub fn bump(c: &AtomicU64) -> u64 {
    add(c, 1)
}

/// Adds `n`; returns the new count.
pub fn add(c: &AtomicU64, n: u64) -> u64 {
    c.fetch_add(n, Ordering::Relaxed) + n
}

/// Whether a warning about the `n`th occurrence of something should be
/// logged: the 1st, 2nd, 4th, 8th, … (so a flood logs a few lines).
pub fn worth_logging(n: u64) -> bool {
    n.is_power_of_two()
}

/// [`worth_logging`] for `n` occurrences at once that took the count to
/// `total`: whether any of them is one to log.
pub fn worth_logging_any(total: u64, n: u64) -> bool {
    (total + 1 - n.min(total)..=total).any(worth_logging)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_at_once_log_when_they_pass_a_power_of_two() {
        assert!(worth_logging_any(1, 1) && worth_logging_any(5, 3) && worth_logging_any(32, 32));
        assert!(!worth_logging_any(7, 2) && !worth_logging_any(12, 3) && !worth_logging_any(9, 0));
    }
}
