//! The control protocol between clients and `shmbusd`: one JSON object per
//! `SOCK_SEQPACKET` packet, request then reply. The reply to `hello` carries
//! the segment's memfd as SCM_RIGHTS ancillary data. The connection stays
//! open for the client's lifetime: its close is how the daemon learns that
//! the client is gone.

use serde::{Deserialize, Serialize};

/// Largest packet either side sends.
pub const MAX_PACKET: usize = 1 << 20;

/// A request from a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// First request: asks for a client entry and the segment.
    Hello {
        /// The client's [`bus_core::LAYOUT_VERSION`].
        layout_version: u32,
        /// Present when a client whose daemon died resumes its identity
        /// with the next daemon (the segment's memfd comes with it).
        #[serde(default)]
        resume: Option<Resume>,
        /// The client's name (see `BusBuilder::name`).
        #[serde(default)]
        name: Option<String>,
        /// The client understands [`Reply::Restarting`] before its
        /// welcome (clients built before it do not, and are sent none).
        #[serde(default)]
        waits: bool,
    },
    /// Start receiving a subsystem's messages, as a member of one of its
    /// groups.
    Subscribe {
        /// Subsystem name.
        subsystem: String,
        /// The group (`None`: the default group).
        #[serde(default)]
        group: Option<String>,
        /// A new group is lossy: a full queue drops its copy.
        #[serde(default)]
        lossy: bool,
        /// A tap: a new lossy group of this subscription alone, gone when
        /// it ends (`group` is ignored).
        #[serde(default)]
        tap: bool,
    },
    /// Stop (one subscription of this client).
    Unsubscribe {
        /// Subsystem name.
        subsystem: String,
        /// The queue the subscription was given.
        #[serde(default)]
        queue: Option<u32>,
    },
    /// May this client send to `subsystem`? (Asked once per connection
    /// for a subsystem whose routing entry is marked restricted.)
    MayPublish {
        /// Subsystem name.
        subsystem: String,
    },
    /// Ask for a [`Status`].
    Status,
    /// Ask the daemon to exit.
    Shutdown,
}

fn yes() -> bool {
    true
}

/// Who a resuming client was (see `Request::Hello`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    /// Its client entry.
    pub client: u32,
    /// Its serial.
    pub serial: u32,
    /// The segment's `bus_generation`.
    pub bus_generation: u64,
    /// The subscriptions it holds.
    pub subscriptions: Vec<ResumedSub>,
}

/// One subscription a resuming client holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumedSub {
    /// Its subsystem.
    pub subsystem: String,
    /// Its group's queue.
    pub queue: u32,
}

/// A reply from the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// To `hello`; the segment fd comes with it.
    Welcome {
        /// Client table index.
        client: u32,
        /// Bus-unique connection serial.
        serial: u32,
        /// Bus name.
        bus: String,
        /// The segment's shape as the daemon created it (its own copy): the
        /// client requires the segment's header to say the same, so that a
        /// header another process overwrote cannot hand it another layout.
        #[serde(default)]
        shape: Option<SegmentShape>,
        /// Slots this client may hold at once, loaned, cached and received
        /// together (`max-slots-per-client`; 0: no quota).
        #[serde(default)]
        quota: u32,
        /// How long clients wait for a new daemon after this one died, in
        /// milliseconds (0: they get `BusGone` at once).
        #[serde(default)]
        resume_grace_ms: u32,
        /// Whether clients keep statistics (the daemon's `statistics`).
        #[serde(default = "yes")]
        statistics: bool,
    },
    /// To `subscribe`.
    Subscribed {
        /// The group's queue.
        queue: u32,
        /// The subsystem's routing entry.
        #[serde(default)]
        subsystem: u32,
        /// The group's slot within the subsystem (0: the default group).
        #[serde(default)]
        slot: u32,
        /// The group's name.
        #[serde(default)]
        group: String,
    },
    /// To `unsubscribe`.
    Unsubscribed,
    /// To `may_publish`: yes (a no is an [`ErrorKind::PermissionDenied`]).
    MayPublish,
    /// To `status`.
    Status(Status),
    /// To `shutdown`.
    ShuttingDown,
    /// To `hello`, before its answer, from a daemon that waits for the
    /// clients of the daemon before it to resume (its `resume-grace`): the
    /// welcome comes once that wait ends, within `wait_ms` milliseconds.
    Restarting {
        /// The longest the daemon may still wait.
        wait_ms: u64,
    },
    /// The request failed.
    Error {
        /// Machine-readable kind.
        kind: ErrorKind,
        /// What went wrong and what to do.
        message: String,
    },
}

/// Kinds of daemon-side errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The client speaks another layout version.
    VersionMismatch,
    /// The client table is full.
    TooManyClients,
    /// The routing table is full.
    TooManySubsystems,
    /// A malformed name or request.
    Invalid,
    /// `hello` was not the first request, or came twice.
    Sequence,
    /// Not subscribed to that subsystem.
    NotSubscribed,
    /// The subsystem has as many groups as the bus allows.
    TooManyGroups,
    /// The group exists with another backpressure.
    GroupMismatch,
    /// The daemon's access policy does not allow it.
    PermissionDenied,
}

/// The bus as `shmbus status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Bus name.
    pub bus: String,
    /// Socket path.
    pub socket: String,
    /// Daemon pid.
    pub daemon_pid: u32,
    /// Bytes per slot.
    pub slot_size: u32,
    /// Cells per queue.
    pub queue_capacity: u32,
    /// Slot counts by state.
    pub slots: SlotCounts,
    /// Connected clients.
    pub clients: u32,
    /// Each connected client.
    pub client_list: Vec<ClientStatus>,
    /// Each known subsystem.
    pub subsystems: Vec<SubsystemStatus>,
    /// Bus-wide counters.
    pub counters: Counters,
    /// Whether clients keep statistics (the daemon's `statistics`): when
    /// false, bytes, latency, failures and per-client counts are not
    /// counted, and their zeros mean nothing.
    #[serde(default = "yes")]
    pub statistics: bool,
}

/// Slot counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotCounts {
    /// All slots.
    pub total: u64,
    /// In the free ring.
    pub free: u64,
    /// In publishers' private caches (free for them).
    pub cached: u64,
    /// Loaned, being written.
    pub loaned: u64,
    /// Waiting in queues.
    pub queued: u64,
    /// Received and not released.
    pub held: u64,
    /// With a state byte that is no known state (corruption).
    #[serde(default)]
    pub corrupt: u64,
}

/// What a client must find in the segment's header (see `Reply::Welcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentShape {
    /// Total bytes.
    pub segment_size: u64,
    /// The bus instance.
    pub bus_generation: u64,
    /// Slots.
    pub slot_count: u32,
    /// Bytes per slot.
    pub slot_size: u32,
    /// Cells per queue.
    pub queue_capacity: u32,
    /// Routing entries and queues.
    pub max_subsystems: u32,
    /// Client entries.
    pub max_clients: u32,
    /// Groups per subsystem.
    #[serde(default)]
    pub max_groups: u32,
}

impl SegmentShape {
    /// The shape of segment params `p`.
    pub fn of(p: &bus_core::layout::SegmentParams) -> SegmentShape {
        SegmentShape {
            segment_size: p.segment_size,
            bus_generation: p.bus_generation,
            slot_count: p.slot_count,
            slot_size: p.slot_size,
            queue_capacity: p.queue_capacity,
            max_subsystems: p.max_subsystems,
            max_clients: p.max_clients,
            max_groups: p.max_groups,
        }
    }
}

/// One connected client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientStatus {
    /// Client table index.
    pub id: u32,
    /// Peer pid.
    pub pid: u32,
    /// Peer uid.
    pub uid: u32,
    /// Its name (set by the program, else its executable's).
    #[serde(default)]
    pub name: String,
    /// Slots it holds: cached, loaned, and received (per group).
    #[serde(default)]
    pub slots: u64,
    /// Messages its publishers sent.
    #[serde(default)]
    pub sent: u64,
    /// Messages its subscribers received.
    #[serde(default)]
    pub received: u64,
    /// Subsystems it subscribes to.
    pub subscriptions: Vec<String>,
}

/// One subsystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubsystemStatus {
    /// Name.
    pub name: String,
    /// Entries in its queue.
    pub queue_depth: u64,
    /// Connected subscriptions.
    pub subscribers: u32,
    /// Queued even without subscribers.
    pub durable: bool,
    /// Messages sent to it by clients.
    pub sent: u64,
    /// Messages taken from its queue by subscribers.
    pub delivered: u64,
    /// Messages put back after their receiver died.
    pub redelivered: u64,
    /// Ring operations on its queue that gave up on words that cannot be
    /// right (see `bus_core::queue::Ring::step_budget`).
    #[serde(default)]
    pub stalls: u64,
    /// The daemon found its queue corrupt: logged, never given to another
    /// subsystem (restart the bus to clear it).
    #[serde(default)]
    pub quarantined: bool,
    /// Its groups, the default group first.
    #[serde(default)]
    pub groups: Vec<GroupStatus>,
    /// Body bytes sent to it.
    #[serde(default)]
    pub bytes: u64,
    /// Failed sends to it, by kind.
    #[serde(default)]
    pub failures: Failures,
    /// Send → receive latency of the messages timed (one in
    /// `bus_core::stats::SAMPLE_EVERY` per receiver), over all its groups,
    /// since its entry was created.
    #[serde(default)]
    pub latency: Latency,
}

/// Failed sends by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failures {
    /// No group received.
    pub no_subscriber: u64,
    /// A queue stayed full.
    pub queue_full: u64,
    /// No free slot.
    pub pool_exhausted: u64,
    /// The client's quota.
    pub quota: u64,
}

impl Failures {
    /// All kinds together.
    pub fn total(&self) -> u64 {
        // Read from the segment: any value, so saturating.
        self.no_subscriber
            .saturating_add(self.queue_full)
            .saturating_add(self.pool_exhausted)
            .saturating_add(self.quota)
    }
}

/// A latency histogram's summary, and its non-empty buckets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latency {
    /// Messages timed.
    pub samples: u64,
    /// Median, in nanoseconds (its bucket's upper bound).
    pub p50_ns: u64,
    /// 99th percentile, in nanoseconds.
    pub p99_ns: u64,
    /// Largest, in nanoseconds.
    pub max_ns: u64,
    /// Sum of all timed latencies, in nanoseconds.
    pub sum_ns: u64,
    /// `[bucket, count]` of every non-empty bucket (see
    /// `bus_core::stats::bucket` and `upper_bound`).
    pub buckets: Vec<[u64; 2]>,
}

impl Latency {
    /// The summary of histogram `h`.
    pub fn of(h: &bus_core::stats::Histogram) -> Latency {
        Latency {
            samples: h.samples,
            p50_ns: h.quantile(0.5),
            p99_ns: h.quantile(0.99),
            max_ns: h.max_ns,
            sum_ns: h.sum_ns,
            buckets: h.buckets.iter().enumerate().filter(|(_, &n)| n > 0).map(|(b, &n)| [b as u64, n]).collect(),
        }
    }

    /// The histogram back from its buckets.
    pub fn histogram(&self) -> bus_core::stats::Histogram {
        let mut h = bus_core::stats::Histogram {
            samples: self.samples,
            sum_ns: self.sum_ns,
            max_ns: self.max_ns,
            ..Default::default()
        };
        for &[b, n] in &self.buckets {
            if let Some(slot) = h.buckets.get_mut(b as usize) {
                *slot = n;
            }
        }
        h
    }
}

/// One group of a subsystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    /// Name (`default` for the default group).
    pub name: String,
    /// Entries in its queue.
    pub depth: u64,
    /// Connected subscriptions.
    pub subscribers: u32,
    /// `block` or `lossy`.
    pub backpressure: String,
    /// Receives even without subscribers (declared in the config).
    pub durable: bool,
    /// A tap: gone when its listener leaves.
    pub tap: bool,
    /// Messages taken from its queue by its subscribers.
    pub delivered: u64,
    /// Copies dropped because its queue was full (lossy groups).
    pub dropped: u64,
    /// Messages put back into its queue after their receiver died.
    pub redelivered: u64,
}

/// Bus-wide counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Clients accepted since the daemon started.
    pub clients_accepted: u64,
    /// Clients reclaimed after their connection closed.
    pub clients_reclaimed: u64,
    /// Slots returned by reclaim.
    pub slots_reclaimed: u64,
    /// Messages redelivered by reclaim.
    pub messages_redelivered: u64,
    /// Words found in the segment that cannot be right (see `shmbus status`).
    #[serde(default)]
    pub corruption: u64,
    /// Slots out of circulation because a corrupt ring could not take them.
    #[serde(default)]
    pub slots_lost: u64,
}
