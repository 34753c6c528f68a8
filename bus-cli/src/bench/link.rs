//! The transports measured, each with both sides: the parent's side here,
//! the child's side in [`super::peer`]. Every message starts with its
//! sequence number (8 bytes, little-endian); two reserved numbers end a
//! round ([`FLUSH`]: the child reports) or the child ([`STOP`]).
//!
//! - `shmbus`: a raw loan written in place, one message per send.
//! - `uds`: a Unix stream socketpair, one `write` per message, `read_exact`.
//! - `pipe`: the same over a pipe.
//! - `futex` (latency only): two words in a shared memfd, `FUTEX_WAIT` and
//!   `FUTEX_WAKE` between the two processes and nothing else.

use bus_client::{Bus, Publisher, Subscriber};
use serde::Serialize;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

/// Ends a round: the receiver reports what it got.
pub const FLUSH: u64 = u64::MAX - 1;
/// Ends the receiver.
pub const STOP: u64 = u64::MAX;

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// shmbus.
    Shmbus,
    /// Unix stream socket.
    Uds,
    /// Pipe.
    Pipe,
    /// Bare shared futex.
    Futex,
}

impl Transport {
    /// Its name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Shmbus => "shmbus",
            Transport::Uds => "uds",
            Transport::Pipe => "pipe",
            Transport::Futex => "futex",
        }
    }

    fn parse(s: &str) -> Option<Transport> {
        Some(match s {
            "shmbus" => Transport::Shmbus,
            "uds" => Transport::Uds,
            "pipe" => Transport::Pipe,
            "futex" => Transport::Futex,
            _ => return None,
        })
    }
}

/// How much of each body both sides touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Touch {
    /// Only the sequence number (shmbus: the rest of the body is not written
    /// or read; kernel transports copy it anyway).
    Header,
    /// Every byte written by the sender and read by the receiver.
    Full,
}

/// How the receiver waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Wait {
    /// Polls without sleeping.
    Busy,
    /// Sleeps in the kernel (futex, blocking read) until woken.
    Sleep,
    /// A tokio task on a current-thread runtime, parked on an io_uring
    /// futex wait until woken (shmbus only: `AsyncSubscriber`).
    Async,
}

impl Wait {
    /// `busy`, `sleep` or `async`.
    pub fn name(self) -> &'static str {
        match self {
            Wait::Busy => "busy",
            Wait::Sleep => "sleep",
            Wait::Async => "async",
        }
    }
}

/// A current-thread tokio runtime for the asynchronous sides.
pub fn async_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}

/// Monotonic clock in nanoseconds, comparable across processes.
pub fn mono_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// Fills a body: sequence number first, then (full touch) a byte pattern.
pub fn fill(body: &mut [u8], seq: u64, touch: Touch) {
    body[..8].copy_from_slice(&seq.to_le_bytes());
    if touch == Touch::Full {
        body[8..].fill(seq as u8);
    }
}

/// Reads a body: returns the sequence number; with full touch, reads every
/// byte and checks the pattern (a torn body reads as a lost message).
pub fn check(body: &[u8], touch: Touch) -> Option<u64> {
    let seq = u64::from_le_bytes(body.get(..8)?.try_into().ok()?);
    if touch == Touch::Full && seq < FLUSH {
        // Every byte is read; 8 at a time, as a real consumer would.
        let word = u64::from_ne_bytes([seq as u8; 8]);
        let mut chunks = body[8..].chunks_exact(8);
        let words_ok = chunks.all(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes")) == word);
        if !words_ok || !chunks.remainder().iter().all(|&b| b == seq as u8) {
            return None;
        }
    }
    Some(seq)
}

/// The parent's end of a one-way stream of messages.
pub enum Sender {
    /// shmbus publisher.
    Shmbus(Box<Publisher>, String),
    /// A socket or pipe.
    Fd(std::fs::File),
}

impl Sender {
    /// Sends message `seq` of `size` bytes.
    pub fn send(&mut self, seq: u64, size: usize, touch: Touch, scratch: &mut [u8]) -> std::io::Result<()> {
        match self {
            Sender::Shmbus(p, path) => {
                let mut loan = p.loan(path).map_err(std::io::Error::other)?;
                fill(&mut loan.body_mut()[..size], seq, touch);
                let loan = loan.commit(size).map_err(std::io::Error::other)?;
                loan.send().map(|_| ()).map_err(|e| std::io::Error::other(e.error))
            }
            Sender::Fd(f) => {
                fill(&mut scratch[..size], seq, touch);
                f.write_all(&scratch[..size])
            }
        }
    }
}

/// A child process running a peer role, with a line channel back.
pub struct Peer {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Peer {
    /// Starts this executable as peer `spec` (see [`super::peer`]), passing
    /// `fds` by inheritance, and waits for its `ready` line.
    pub fn spawn(spec: &str, fds: &[&OwnedFd], socket: Option<&std::path::Path>) -> std::io::Result<Peer> {
        use nix::fcntl::{fcntl, FcntlArg, FdFlag};
        for fd in fds {
            fcntl(*fd, FcntlArg::F_SETFD(FdFlag::empty()))?;
        }
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.env(super::PEER_ENV, spec).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        if let Some(s) = socket {
            cmd.env(bus_client::addr::ENV_SOCKET, s);
        }
        let spawned = super::unpinned(|| cmd.spawn());
        for fd in fds {
            fcntl(*fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
        }
        let mut child = spawned?;
        let out = BufReader::new(child.stdout.take().expect("piped"));
        let mut p = Peer { child, out };
        let line = p.line()?;
        if line != "ready" {
            return Err(std::io::Error::other(format!("peer did not start: {line:?}")));
        }
        Ok(p)
    }

    /// Reads one line from the peer.
    pub fn line(&mut self) -> std::io::Result<String> {
        let mut l = String::new();
        if self.out.read_line(&mut l)? == 0 {
            return Err(std::io::Error::other("the peer exited"));
        }
        Ok(l.trim_end().to_owned())
    }

    /// Waits for the peer to exit (after STOP).
    pub fn finish(mut self) -> std::io::Result<()> {
        let st = self.child.wait()?;
        if st.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!("peer failed: {st}")))
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            std::thread::sleep(Duration::from_millis(50));
            if let Ok(None) = self.child.try_wait() {
                let _ = self.child.kill();
            }
            let _ = self.child.wait();
        }
    }
}

/// The subsystem a measurement of kind `tag` uses: one per kind and
/// benchmarking process (measurements of a kind run one after another, and
/// each ends with its queue drained).
pub fn fresh_subsystem(tag: &str) -> String {
    format!("bench-{tag}-{}", std::process::id())
}

/// A one-way stream to a receiving child: what the throughput measurements
/// and the criterion benches drive.
pub struct Stream {
    /// Our end.
    pub sender: Sender,
    peer: Peer,
    /// Receivers in other groups of the subsystem (shmbus only), each with
    /// whether it is a tap (lossy: its reports are not waited for).
    others: Vec<(Peer, bool)>,
    size: usize,
    touch: Touch,
    batch: usize,
    scratch: Vec<u8>,
}

/// What the receiver reported for one round.
#[derive(Debug, Clone, Copy)]
pub struct Round {
    /// Messages received.
    pub received: u64,
    /// Sequence numbers skipped or bodies torn.
    pub lost: u64,
    /// From just before the first send to the receipt of the last message.
    pub elapsed_ns: u64,
}

impl Stream {
    /// Opens a stream of `size`-byte messages over `t` to a child pinned to
    /// `cpu`. `bus` is needed for shmbus. With `batch` > 1 (shmbus only),
    /// both sides use the batch API, `batch` messages per call.
    pub fn open(
        t: Transport,
        bus: Option<&Bus>,
        size: usize,
        touch: Touch,
        cpu: Option<usize>,
        batch: usize,
    ) -> std::io::Result<Stream> {
        let main = OtherGroup { cpu, batch: Some(batch), ..Default::default() };
        Self::open_groups(t, bus, size, touch, batch, main, &[])
    }

    /// [`Stream::open`] with the receiver set up as `main` says (in the
    /// default group), and one more receiving child per entry of `others`
    /// (shmbus only), each in a group of its own (see [`OtherGroup`]):
    /// every message goes to every group. The sender sends `send_batch`
    /// messages per call; receivers whose `batch` is unset take as many.
    pub fn open_groups(
        t: Transport,
        bus: Option<&Bus>,
        size: usize,
        touch: Touch,
        send_batch: usize,
        main: OtherGroup,
        others: &[OtherGroup],
    ) -> std::io::Result<Stream> {
        let cpu = main.cpu;
        let receive_batch = main.batch.unwrap_or(send_batch);
        let batch = send_batch;
        let main_spins = main.spins.map(|n| format!(" spins={n}")).unwrap_or_default();
        let main_spins = main.poll_us.map(|n| format!(" poll_us={n}")).unwrap_or(main_spins);
        let main_spins = if main.asynchronous { format!("{main_spins} async=1") } else { main_spins };
        let main_spins = match main.pause {
            Some(n) => format!("{main_spins} pause={n}"),
            None => main_spins,
        };
        let size = size.max(8);
        let batch = if t == Transport::Shmbus { batch.max(1) } else { 1 };
        let touch_s = if touch == Touch::Full { "full" } else { "header" };
        let cpu_s = cpu.map(|c| format!(" cpu={c}")).unwrap_or_default();
        let mut others_started = Vec::new();
        let (sender, peer) = match t {
            Transport::Shmbus => {
                let bus = bus.ok_or_else(|| std::io::Error::other("shmbus needs a bus"))?;
                let subsystem = fresh_subsystem("tput");
                let spec = format!(
                    "recv transport=shmbus size={size} touch={touch_s} subsystem={subsystem} batch={receive_batch}{cpu_s}{main_spins}"
                );
                let peer = Peer::spawn(&spec, &[], Some(bus.socket_path()))?;
                for (i, o) in others.iter().enumerate() {
                    let member = if o.tap { " tap=1".to_owned() } else { format!(" group=g{i}") };
                    let spins = o.spins.map(|n| format!(" spins={n}")).unwrap_or_default();
                    let spins = o.poll_us.map(|n| format!(" poll_us={n}")).unwrap_or(spins);
                    let cpu = o.cpu.map(|c| format!(" cpu={c}")).unwrap_or_default();
                    let b = o.batch.unwrap_or(batch);
                    let spec = format!(
                        "recv transport=shmbus size={size} touch={touch_s} subsystem={subsystem} batch={b}{member}{spins}{cpu}"
                    );
                    others_started.push((Peer::spawn(&spec, &[], Some(bus.socket_path()))?, o.tap));
                }
                let p = bus.publisher().create().map_err(std::io::Error::other)?;
                (Sender::Shmbus(Box::new(p), format!("{subsystem}://x")), peer)
            }
            Transport::Uds | Transport::Pipe => {
                let (ours, theirs) = kernel_pair(t)?;
                let spec =
                    format!("recv transport={} size={size} touch={touch_s} fd={}{cpu_s}", t.name(), theirs.as_raw_fd());
                let peer = Peer::spawn(&spec, &[&theirs], None)?;
                (Sender::Fd(std::fs::File::from(ours)), peer)
            }
            Transport::Futex => return Err(std::io::Error::other("futex has no stream form")),
        };
        Ok(Stream { sender, peer, others: others_started, size, touch, batch, scratch: vec![0; size] })
    }

    /// Sends messages `from..to` (in batches if the stream has them).
    fn send_range(&mut self, from: u64, to: u64) -> std::io::Result<()> {
        let (size, touch) = (self.size, self.touch);
        match &mut self.sender {
            Sender::Shmbus(p, path) if self.batch > 1 => {
                let mut seq = from;
                while seq < to {
                    let k = (to - seq).min(self.batch as u64) as usize;
                    p.send_batch_with(path, k, |i, body| {
                        fill(&mut body[..size], seq + i as u64, touch);
                        size
                    })
                    .map_err(std::io::Error::other)?;
                    seq += k as u64;
                }
                Ok(())
            }
            _ => (from..to).try_for_each(|seq| self.sender.send(seq, size, touch, &mut self.scratch)),
        }
    }

    /// Sends `n` messages and a FLUSH; returns the receiver's report.
    pub fn round(&mut self, n: u64) -> std::io::Result<Round> {
        let t0 = mono_ns();
        self.send_range(0, n)?;
        self.flush_report(t0)
    }

    /// Sends messages until `d` has passed, then a FLUSH.
    pub fn round_for(&mut self, d: Duration) -> std::io::Result<Round> {
        let t0 = mono_ns();
        let end = t0 + d.as_nanos() as u64;
        let mut seq = 0;
        loop {
            self.send_range(seq, seq + 256)?;
            seq += 256;
            if mono_ns() >= end {
                break;
            }
        }
        self.flush_report(t0)
    }

    fn flush_report(&mut self, t0: u64) -> std::io::Result<Round> {
        self.sender.send(FLUSH, self.size, self.touch, &mut self.scratch)?;
        let line = self.peer.line()?;
        let mut round = parse_ack(&line, t0)?;
        // Every blocking group gets every message: the round is as fast as
        // its slowest receiver. Taps may drop, and are not waited for.
        for (peer, _) in self.others.iter_mut().filter(|(_, tap)| !tap) {
            let r = parse_ack(&peer.line()?, t0)?;
            round.received = round.received.min(r.received);
            round.lost += r.lost;
            round.elapsed_ns = round.elapsed_ns.max(r.elapsed_ns);
        }
        Ok(round)
    }

    /// Stops (SIGSTOP) the tap receivers: from then on their queues fill
    /// and every copy for them is dropped.
    pub fn freeze_taps(&self) {
        for (p, _) in self.others.iter().filter(|(_, tap)| *tap) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p.child.id() as i32),
                nix::sys::signal::Signal::SIGSTOP,
            );
        }
    }

    /// Stops the receivers (a tap, whose STOP may have been dropped, is
    /// killed).
    pub fn close(mut self) -> std::io::Result<()> {
        self.sender.send(STOP, self.size, self.touch, &mut self.scratch)?;
        let Stream { sender, peer, others, .. } = self;
        drop(sender);
        for (p, tap) in others {
            if !tap {
                p.finish()?;
            }
        }
        peer.finish()
    }
}

/// A receiver in another group of a [`Stream`]'s subsystem.
#[derive(Debug, Clone, Copy, Default)]
pub struct OtherGroup {
    /// A tap (lossy) rather than a blocking group.
    pub tap: bool,
    /// Polls before it sleeps (default: the throughput receiver's).
    pub spins: Option<u32>,
    /// CPU to pin it to.
    pub cpu: Option<usize>,
    /// Messages per receive call (default: the stream's).
    pub batch: Option<usize>,
    /// Never sleep on the doorbell: look every this many µs instead.
    pub poll_us: Option<u64>,
    /// Receive as a tokio task (`AsyncSubscriber`, one message per call).
    pub asynchronous: bool,
    /// Pause hints between empty polls (`Subscriber::set_poll_pause`).
    pub pause: Option<u32>,
}

/// A receiver's `ack RECEIVED LOST T_LAST` line as a [`Round`] begun at `t0`.
fn parse_ack(line: &str, t0: u64) -> std::io::Result<Round> {
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    match (line.starts_with("ack"), v.as_slice()) {
        (true, [received, lost, t_last]) => {
            Ok(Round { received: *received, lost: *lost, elapsed_ns: t_last.saturating_sub(t0).max(1) })
        }
        _ => Err(std::io::Error::other(format!("bad report from the receiver: {line:?}"))),
    }
}

/// Our end and the child's end of a socketpair or pipe.
pub fn kernel_pair(t: Transport) -> std::io::Result<(OwnedFd, OwnedFd)> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    match t {
        Transport::Uds => Ok(socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC)?),
        Transport::Pipe => {
            let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
            Ok((w, r))
        }
        _ => Err(std::io::Error::other("not a kernel transport")),
    }
}

/// A ping-pong pair: the parent sends, the child echoes; what the latency
/// measurements drive.
pub enum PingPong {
    /// Over shmbus.
    Shmbus {
        /// To the child (boxed: a publisher is much larger than the other
        /// variants).
        publisher: Box<Publisher>,
        /// Its path.
        path: String,
        /// From the child.
        sub: Subscriber,
        /// Busy or sleeping.
        wait: Wait,
        /// Body size.
        size: usize,
        /// The child.
        peer: Peer,
    },
    /// Over shmbus, both sides receiving as tokio tasks (current-thread
    /// runtimes), parked until woken.
    ShmbusAsync {
        /// To the child.
        publisher: Box<Publisher>,
        /// Its path.
        path: String,
        /// From the child (boxed, as the publisher).
        sub: Box<bus_client::AsyncSubscriber>,
        /// Our runtime.
        rt: Box<tokio::runtime::Runtime>,
        /// Body size.
        size: usize,
        /// The child.
        peer: Peer,
    },
    /// Over a socketpair, or two pipes.
    Kernel {
        /// To the child.
        tx: std::fs::File,
        /// From the child.
        rx: std::fs::File,
        /// Body size.
        size: usize,
        /// Scratch.
        buf: Vec<u8>,
        /// The child.
        peer: Peer,
    },
    /// Bare futex words.
    Futex {
        /// Word 0: parent → child; word 1: child → parent.
        words: bus_core::futex::SharedWords,
        /// The child.
        peer: Peer,
    },
}

impl PingPong {
    /// Opens a ping-pong of `size`-byte messages over `t`.
    pub fn open(
        t: Transport,
        bus: Option<&Bus>,
        size: usize,
        wait: Wait,
        cpu: Option<usize>,
    ) -> std::io::Result<PingPong> {
        let size = size.max(8);
        let cpu_s = cpu.map(|c| format!(" cpu={c}")).unwrap_or_default();
        let wait_s = wait.name();
        match t {
            Transport::Shmbus => {
                let bus = bus.ok_or_else(|| std::io::Error::other("shmbus needs a bus"))?;
                let ping = fresh_subsystem("ping");
                let pong = fresh_subsystem("pong");
                let sub = bus.subscribe(&pong).map_err(std::io::Error::other)?;
                if wait == Wait::Sleep {
                    sub.set_spins(0);
                }
                let spec =
                    format!("echo transport=shmbus size={size} wait={wait_s} subsystem={ping} reply={pong}{cpu_s}");
                let peer = Peer::spawn(&spec, &[], Some(bus.socket_path()))?;
                let publisher = bus.publisher().create().map_err(std::io::Error::other)?;
                if wait == Wait::Async {
                    let mut sub = sub.into_async();
                    sub.set_spins(0);
                    return Ok(PingPong::ShmbusAsync {
                        publisher: Box::new(publisher),
                        path: format!("{ping}://x"),
                        sub: Box::new(sub),
                        rt: Box::new(async_runtime()?),
                        size,
                        peer,
                    });
                }
                Ok(PingPong::Shmbus {
                    publisher: Box::new(publisher),
                    path: format!("{ping}://x"),
                    sub,
                    wait,
                    size,
                    peer,
                })
            }
            Transport::Uds | Transport::Pipe => {
                let (tx, rx, child_fds) = if t == Transport::Uds {
                    let (ours, theirs) = kernel_pair(Transport::Uds)?;
                    let rx = ours.try_clone()?;
                    (ours, rx, vec![theirs])
                } else {
                    let (to_child_w, to_child_r) = kernel_pair(Transport::Pipe)?;
                    let (from_child_w, from_child_r) = kernel_pair(Transport::Pipe)?;
                    (to_child_w, from_child_r, vec![to_child_r, from_child_w])
                };
                let fds: Vec<String> = child_fds.iter().map(|f| f.as_raw_fd().to_string()).collect();
                let spec = format!("echo transport={} size={size} fds={}{cpu_s}", t.name(), fds.join(","));
                let refs: Vec<&OwnedFd> = child_fds.iter().collect();
                let peer = Peer::spawn(&spec, &refs, None)?;
                Ok(PingPong::Kernel { tx: tx.into(), rx: rx.into(), size, buf: vec![0; size], peer })
            }
            Transport::Futex => {
                let words = bus_core::futex::SharedWords::create(2)?;
                let fd = words.fd().try_clone_to_owned()?;
                let spec = format!("echo transport=futex fd={}{cpu_s}", fd.as_raw_fd());
                let peer = Peer::spawn(&spec, &[&fd], None)?;
                Ok(PingPong::Futex { words, peer })
            }
        }
    }

    /// One round trip carrying `seq`; returns its duration in nanoseconds.
    pub fn round_trip(&mut self, seq: u64) -> std::io::Result<u64> {
        let t = mono_ns();
        match self {
            PingPong::Shmbus { publisher, path, sub, wait, size, .. } => {
                send_seq(publisher, path, seq, *size)?;
                loop {
                    let m = match wait {
                        Wait::Busy => match sub.try_recv().map_err(std::io::Error::other)? {
                            Some(m) => m,
                            None => {
                                std::hint::spin_loop();
                                continue;
                            }
                        },
                        // (`Async` has a variant of its own.)
                        Wait::Sleep | Wait::Async => {
                            sub.recv_timeout(Duration::from_secs(10)).map_err(std::io::Error::other)?
                        }
                    };
                    if check(m.body_bytes().map_err(std::io::Error::other)?, Touch::Header) == Some(seq) {
                        break;
                    }
                }
            }
            PingPong::ShmbusAsync { publisher, path, sub, rt, size, .. } => {
                send_seq(publisher, path, seq, *size)?;
                rt.block_on(async {
                    loop {
                        let m = sub.recv().await.map_err(std::io::Error::other)?;
                        if check(m.body_bytes().map_err(std::io::Error::other)?, Touch::Header) == Some(seq) {
                            return Ok::<_, std::io::Error>(());
                        }
                    }
                })?;
            }
            PingPong::Kernel { tx, rx, size, buf, .. } => {
                fill(&mut buf[..*size], seq, Touch::Header);
                tx.write_all(&buf[..*size])?;
                rx.read_exact(&mut buf[..*size])?;
                if check(buf, Touch::Header) != Some(seq) {
                    return Err(std::io::Error::other("echo out of sequence"));
                }
            }
            PingPong::Futex { words, .. } => {
                let v = (seq as u32).wrapping_add(1);
                // SYNC: futex-baseline — Release/Acquire pair with the echo
                // peer's load of word 0 and its store of word 1.
                words.word(0).store(v, std::sync::atomic::Ordering::Release);
                bus_core::futex::wake(words.word(0), 1);
                loop {
                    let got = words.word(1).load(std::sync::atomic::Ordering::Acquire);
                    if got == v {
                        break;
                    }
                    bus_core::futex::wait(words.word(1), got, Some(Duration::from_secs(10)));
                }
            }
        }
        Ok(mono_ns() - t)
    }

    /// Stops the child.
    pub fn close(self) -> std::io::Result<()> {
        match self {
            PingPong::Shmbus { mut publisher, path, size, peer, .. }
            | PingPong::ShmbusAsync { mut publisher, path, size, peer, .. } => {
                send_seq(&mut publisher, &path, STOP, size)?;
                peer.finish()
            }
            PingPong::Kernel { mut tx, size, mut buf, peer, .. } => {
                fill(&mut buf[..size], STOP, Touch::Header);
                tx.write_all(&buf[..size])?;
                peer.finish()
            }
            PingPong::Futex { words, peer } => {
                // SYNC: futex-baseline — the stop value.
                words.word(0).store(u32::MAX, std::sync::atomic::Ordering::Release);
                bus_core::futex::wake(words.word(0), 1);
                peer.finish()
            }
        }
    }
}

/// Sends a `size`-byte shmbus message whose body starts with `seq`.
pub fn send_seq(p: &mut Publisher, path: &str, seq: u64, size: usize) -> std::io::Result<()> {
    let mut loan = p.loan(path).map_err(std::io::Error::other)?;
    fill(&mut loan.body_mut()[..size], seq, Touch::Header);
    let loan = loan.commit(size).map_err(std::io::Error::other)?;
    loan.send().map(|_| ()).map_err(|e| std::io::Error::other(e.error))
}

pub(crate) fn parse_transport(s: &str) -> Option<Transport> {
    Transport::parse(s)
}

/// How much each sender of a fan-in sends.
#[derive(Debug, Clone, Copy)]
pub enum Amount {
    /// Exactly this many messages.
    Count(u64),
    /// For this long.
    For(Duration),
}

/// What a fan-in run measured.
#[derive(Debug, Clone, Copy)]
pub struct FanIn {
    /// Messages received.
    pub received: u64,
    /// Sequence gaps.
    pub lost: u64,
    /// From the first receipt to the last.
    pub elapsed_ns: u64,
}

/// `publishers` sender processes → `sub` (subscribed to `subsystem`) in
/// this process: starts them, receives until each has sent its STOP, and
/// times from the first receipt to the last (process start is not timed).
pub fn fan_in(
    bus: &Bus,
    sub: &Subscriber,
    subsystem: &str,
    publishers: u64,
    size: usize,
    amount: Amount,
) -> std::io::Result<FanIn> {
    let size = size.max(16);
    let how = match amount {
        Amount::Count(n) => format!("count={n}"),
        Amount::For(d) => format!("duration_ms={}", d.as_millis().max(1)),
    };
    let peers: Vec<Peer> = (0..publishers)
        .map(|id| {
            Peer::spawn(&format!("send subsystem={subsystem} size={size} id={id} {how}"), &[], Some(bus.socket_path()))
        })
        .collect::<Result<_, _>>()?;
    let mut next = vec![0u64; publishers as usize];
    let (mut received, mut lost, mut stops) = (0u64, 0u64, 0);
    let (mut first, mut last) = (0u64, 0u64);
    while stops < publishers {
        let m = sub.recv_timeout(Duration::from_secs(30)).map_err(std::io::Error::other)?;
        let b = m.body_bytes().map_err(std::io::Error::other)?;
        let seq = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
        let id = (u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")) % publishers) as usize;
        if seq == STOP {
            stops += 1;
            continue;
        }
        last = mono_ns();
        if first == 0 {
            first = last;
        }
        received += 1;
        lost += seq.saturating_sub(next[id]);
        next[id] = seq + 1;
    }
    for p in peers {
        p.finish()?;
    }
    Ok(FanIn { received, lost, elapsed_ns: last.saturating_sub(first).max(1) })
}
