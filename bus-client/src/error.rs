//! Error types, one per operation. Every message says what went wrong and
//! what to do about it.

use bus_core::{PathError, SegmentError};
use std::path::PathBuf;
use std::time::Duration;

/// What every `BusGone` says: one text for the send, receive, request
/// and reply errors.
pub(crate) const BUS_GONE: &str =
    "the bus is gone (its daemon stopped, or a new daemon started a new bus in its place): reconnect, after starting shmbusd if none runs";

/// Why [`crate::Bus::connect`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// Nothing listens on the socket.
    #[error("no shmbus daemon at {}: start one with `shmbusd` (or pass --socket / set SHMBUS_SOCKET to the right path)", socket.display())]
    NoDaemon {
        /// The socket path tried.
        socket: PathBuf,
    },
    /// Something other than a socket is at the socket's path.
    #[error("{} is not a socket (nothing a shmbus daemon made): pass --socket / set SHMBUS_SOCKET to the daemon's socket", socket.display())]
    NotASocket {
        /// The path tried.
        socket: PathBuf,
    },
    /// The socket exists but we may not connect.
    #[error("permission denied on {}: run as a user allowed to use this bus (the daemon's --socket-mode, and its [access] rules)", socket.display())]
    PermissionDenied {
        /// The socket path tried.
        socket: PathBuf,
    },
    /// The daemon did not answer in time.
    #[error("the daemon at {} did not answer within {waited:?}: check that shmbusd is healthy", socket.display())]
    Timeout {
        /// The socket path.
        socket: PathBuf,
        /// How long we waited.
        waited: Duration,
    },
    /// The daemon is restarting: it waits for the clients of the daemon
    /// before it to come back before it serves new ones, and that wait
    /// outlasted this connect's timeout.
    #[error("the daemon at {} is restarting: it serves new clients once the previous daemon's clients are back, \
             or within {up_to:?}; gave up after {waited:?}: try again in a moment (a program can wait longer: \
             `Bus::builder().connect_timeout(…)`)", socket.display())]
    Restarting {
        /// The socket path.
        socket: PathBuf,
        /// How long we waited.
        waited: Duration,
        /// The longest the daemon said it might still wait, when it said so.
        up_to: Duration,
    },
    /// A system call failed.
    #[error("connecting to {}: {source}", socket.display())]
    Io {
        /// The socket path.
        socket: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The daemon refused (version, capacity).
    #[error("the daemon refused the connection: {message}")]
    Refused {
        /// Its message.
        message: String,
    },
    /// The daemon's access policy does not let this user on the bus.
    #[error("the daemon refused the connection: {message}")]
    NotAllowed {
        /// Its message (names the rule and what to change).
        message: String,
    },
    /// The process serving the socket runs as a user this client does not
    /// trust with its messages.
    #[error("the daemon at {} runs as uid {uid}, which this client does not trust (only root and its own uid by default): \
             if that is the right daemon, trust its uid with SHMBUS_DAEMON_UID={uid} or BusBuilder::trust_daemon_uid", socket.display())]
    UntrustedDaemon {
        /// The socket path.
        socket: PathBuf,
        /// The daemon's uid (`SO_PEERCRED`).
        uid: u32,
    },
    /// Client and daemon disagree on the layout version.
    #[error("the daemon speaks layout version {found}, this program {expected}: use client and daemon from the same shmbus release")]
    VersionMismatch {
        /// The daemon's.
        found: u32,
        /// Ours.
        expected: u32,
    },
    /// The daemon's answer made no sense.
    #[error("unexpected answer from the daemon: {detail}")]
    Protocol {
        /// What was wrong.
        detail: String,
    },
    /// The segment we were handed is not usable.
    #[error("the bus segment is unusable: {0}")]
    Segment(#[from] SegmentError),
}

/// Why a control request (subscribe, status, shutdown) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The daemon is gone.
    #[error("{}", crate::error::BUS_GONE)]
    BusGone,
    /// This process was forked from the one that connected: the child
    /// shares the parent's client identity and slots, so it may not use them.
    #[error("this Bus was connected by the parent process before a fork(): the child must call Bus::connect() itself")]
    Forked,
    /// The daemon's access policy does not allow it.
    #[error("{message}")]
    PermissionDenied {
        /// The daemon's message (names the rule and what to change).
        message: String,
    },
    /// The daemon answered with an error.
    #[error("{message}")]
    Daemon {
        /// Its kind.
        kind: crate::protocol::ErrorKind,
        /// Its message.
        message: String,
    },
    /// The name is not a valid subsystem (or group) name.
    #[error("invalid name: {}", bus_core::path::name_problem(.0))]
    InvalidName(PathError),
    /// A [`crate::Pipeline`] window of 0, or larger than a queue holds.
    #[error("a pipeline window of {window} is out of range: use 1 to {max} (half the bus's queue capacity: the reply queue also holds late replies)")]
    InvalidWindow {
        /// The window asked for.
        window: usize,
        /// The largest allowed.
        max: usize,
    },
    /// Every port of this client is in use.
    #[error("all {0} publishers/subscribers of this connection are in use: drop some, or open another Bus")]
    TooManyPorts(usize),
    /// A system call or the protocol failed.
    #[error("control connection failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Why a send failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The path is malformed.
    #[error("invalid path: {0}")]
    InvalidPath(PathError),
    /// The body does not fit the slot.
    #[error("body of {size} bytes does not fit the {capacity} bytes a slot has for it with this path: send less, or start the daemon with a larger --slot-size")]
    BodyTooLarge {
        /// The body's size.
        size: usize,
        /// Room in a slot.
        capacity: usize,
    },
    /// The daemon's access policy does not let this client send to the
    /// subsystem.
    #[error("{message}")]
    PermissionDenied {
        /// The daemon's message (names the subsystem, the rule, and what
        /// to change).
        message: String,
    },
    /// Nobody subscribes to the subsystem (and it is not durable).
    #[error(
        "no subscriber for subsystem \"{subsystem}\": start one, or declare the subsystem durable in the daemon config"
    )]
    NoSubscriber {
        /// The subsystem.
        subsystem: String,
    },
    /// The queue is full (fail-fast mode).
    #[error(
        "the queue of subsystem \"{subsystem}\" is full: its subscribers are behind; retry, or use blocking sends"
    )]
    QueueFull {
        /// The subsystem.
        subsystem: String,
    },
    /// The message reached some of the subsystem's groups, but a blocking
    /// group's queue stayed full until the send gave up (fail-fast, or the
    /// send timeout): those groups' copies are dropped, counted in their
    /// `dropped`. The message is sent; do not retry it unless duplicates
    /// for the other groups are acceptable.
    #[error(
        "sent to {delivered} of the {groups} groups of subsystem \"{subsystem}\": the others' queues stayed full, so their copies were dropped (shown as dropped in shmbus status); those groups are not keeping up"
    )]
    PartlyDelivered {
        /// The subsystem.
        subsystem: String,
        /// Groups that got the message.
        delivered: u32,
        /// Groups the message was for.
        groups: u32,
    },
    /// This client holds as many slots as the daemon's
    /// `max-slots-per-client` allows (loaned, cached and received together).
    #[error("this client holds its quota of {quota} slots (max-slots-per-client): release received messages, drop loans or publishers, or ask the operator for a larger quota")]
    QuotaExceeded {
        /// The quota.
        quota: u32,
    },
    /// No free slot (fail-fast mode).
    #[error("all {slots} slots are in use: receivers hold or have not yet taken them; retry, or start the daemon with more --slots")]
    PoolExhausted {
        /// Pool size.
        slots: u32,
    },
    /// Blocked longer than the send timeout.
    #[error(
        "send timed out after {waited:?} waiting for {what}: the receivers are not keeping up, or there are none \
         (a durable subsystem keeps its queue while nobody subscribes; `shmbus status` shows its depth and subscribers)"
    )]
    Timeout {
        /// How long.
        waited: Duration,
        /// A free slot or queue space.
        what: &'static str,
    },
    /// The daemon is gone.
    #[error("{}", crate::error::BUS_GONE)]
    BusGone,
    /// This process was forked from the one that connected: the child
    /// shares the parent's client identity and slots, so it may not use them.
    #[error("this Bus was connected by the parent process before a fork(): the child must call Bus::connect() itself")]
    Forked,
    /// The body could not be serialized.
    #[error("serializing the body failed: {detail}")]
    Serialize {
        /// rkyv's message.
        detail: String,
    },
    /// The request was answered already: it gets one reply. (A reply that
    /// could not be written, such as one too large, does not count: the
    /// handler may reply again.)
    #[error("this request was answered already: a request gets one reply; send anything more as messages")]
    AlreadyReplied,
    /// Asking the daemon (whether this client may send to a restricted
    /// subsystem) failed.
    #[error("asking the daemon failed: {detail}")]
    Protocol {
        /// What went wrong.
        detail: String,
    },
}

/// A batch send that stopped part-way: the first `sent` messages were
/// sent, the rest were not (their slots are back in the pool).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error} (after {sent} messages of the batch were sent)")]
pub struct BatchError {
    /// Messages sent before the failure.
    pub sent: usize,
    /// What stopped the batch.
    pub error: SendError,
}

/// Why a receive failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// Nothing arrived in time.
    #[error("no message within {0:?}")]
    Timeout(Duration),
    /// The daemon is gone.
    #[error("{}", crate::error::BUS_GONE)]
    BusGone,
    /// This process was forked from the one that connected: the child
    /// shares the parent's client identity and slots, so it may not use them.
    #[error("this Bus was connected by the parent process before a fork(): the child must call Bus::connect() itself")]
    Forked,
    /// This client holds as many slots as the daemon's
    /// `max-slots-per-client` allows: nothing is taken until it releases
    /// some.
    #[error("this client holds its quota of {quota} slots (max-slots-per-client): drop received messages (or loans, or publishers) before receiving more, or ask the operator for a larger quota")]
    QuotaExceeded {
        /// The quota.
        quota: u32,
    },
    /// The message's slot was corrupt; it was released and skipped.
    #[error("received a corrupt message ({0}); it was dropped: check the senders")]
    Corrupt(bus_core::slot_pool::CorruptSlot),
    /// An asynchronous receive was polled outside a tokio runtime (or one
    /// built without IO: `enable_io()`/`enable_all()`).
    #[error("the asynchronous API must run inside a tokio runtime with IO enabled (Builder::enable_all): start one, or use the blocking API")]
    NoRuntime,
    /// The kernel refused the asynchronous wait (io_uring with
    /// `IORING_OP_FUTEX_WAIT`).
    #[error("waiting asynchronously failed (os error {errno}): the asynchronous API needs Linux 6.7 or later with io_uring allowed (sysctl kernel.io_uring_disabled = 0, and no seccomp filter against io_uring_setup, as some container runtimes install); use the blocking API there")]
    AsyncWait {
        /// The errno the kernel returned.
        errno: i32,
    },
}

/// Why a body could not be read as the requested type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// The sender wrote another type.
    #[error("body is not a {expected}: its type fingerprint is {found:#x}, {expected} has {expected_fp:#x}")]
    WrongType {
        /// The requested type.
        expected: &'static str,
        /// Its fingerprint.
        expected_fp: u64,
        /// The body's.
        found: u64,
    },
    /// The body is raw bytes.
    #[error("body is raw bytes, not an archived {expected}: read it with body_bytes()")]
    Raw {
        /// The requested type.
        expected: &'static str,
    },
    /// Validation failed.
    #[error("body failed validation as {expected}: {detail}")]
    Invalid {
        /// The requested type.
        expected: &'static str,
        /// bytecheck's message.
        detail: String,
    },
    /// The slot header is corrupt.
    #[error("{0}")]
    Corrupt(#[from] bus_core::slot_pool::CorruptSlot),
}

/// Why a [`crate::Bus`] can no longer be used (see `Inner::usable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unusable {
    /// The daemon stopped or died.
    Gone,
    /// We are a forked child of the process that connected.
    Forked,
}

impl From<Unusable> for RequestError {
    fn from(u: Unusable) -> Self {
        match u {
            Unusable::Gone => RequestError::BusGone,
            Unusable::Forked => RequestError::Forked,
        }
    }
}

impl From<Unusable> for SendError {
    fn from(u: Unusable) -> Self {
        match u {
            Unusable::Gone => SendError::BusGone,
            Unusable::Forked => SendError::Forked,
        }
    }
}

impl From<Unusable> for RecvError {
    fn from(u: Unusable) -> Self {
        match u {
            Unusable::Gone => RecvError::BusGone,
            Unusable::Forked => RecvError::Forked,
        }
    }
}
