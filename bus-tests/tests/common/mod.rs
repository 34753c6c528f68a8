//! Harness of the multi-process tests: a real daemon process on a private
//! socket, peer processes, and waits that always have a deadline.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const DAEMON: &str = env!("CARGO_BIN_EXE_daemon");
pub const CLI: &str = env!("CARGO_BIN_EXE_cli");
pub const PEER: &str = env!("CARGO_BIN_EXE_peer");

/// A private directory for sockets, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "shmbus-test-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process, its output drained continuously (so it never blocks on
/// a full pipe), killed (SIGKILL) when dropped.
pub struct Proc {
    child: Option<Child>,
    lines: std::sync::Mutex<mpsc::Receiver<String>>,
    err_lines: std::sync::Mutex<mpsc::Receiver<String>>,
    out: Option<std::thread::JoinHandle<String>>,
    err: Option<std::thread::JoinHandle<String>>,
}

/// A thread that sends each line of `from` to `tx` and returns them all.
fn read_lines(from: impl std::io::Read + Send + 'static, tx: mpsc::Sender<String>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let (mut all, mut from, mut buf) = (String::new(), BufReader::new(from), Vec::new());
        // To the end of the stream, whatever it holds: a child must never
        // block on a full pipe because a line was not UTF-8.
        while from.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            let line = String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_owned();
            buf.clear();
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    })
}

impl Proc {
    pub fn new(mut child: Child) -> Proc {
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().map(|o| read_lines(o, tx));
        let (tx, err_lines) = mpsc::channel();
        let err = child.stderr.take().map(|e| read_lines(e, tx));
        let (lines, err_lines) = (std::sync::Mutex::new(lines), std::sync::Mutex::new(err_lines));
        Proc { child: Some(child), lines, err_lines, out, err }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// Sends `sig`.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
    }

    /// Waits for exit with a deadline; returns (status, all stdout, stderr).
    pub fn wait(mut self, timeout: Duration) -> (std::process::ExitStatus, String, String) {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("process {} did not exit within {timeout:?}", child.id());
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let out = self.out.take().map(|t| t.join().unwrap()).unwrap_or_default();
        let err = self.err.take().map(|t| t.join().unwrap()).unwrap_or_default();
        (status, out, err)
    }

    /// The first stdout line starting with `prefix` within `timeout` (lines
    /// before it are consumed), or why none came.
    fn next_line(&mut self, prefix: &str, timeout: Duration) -> Result<String, mpsc::RecvTimeoutError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.lines.lock().unwrap().recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(l) if l.starts_with(prefix) => return Ok(l),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// How many stdout lines starting with `prefix` came so far and were
    /// not consumed by a wait for a line (consumes them all).
    pub fn count_lines(&mut self, prefix: &str) -> usize {
        self.lines.lock().unwrap().try_iter().filter(|l| l.starts_with(prefix)).count()
    }

    /// How many stderr lines containing `text` came so far and were not
    /// consumed (consumes them all).
    pub fn count_err_lines(&mut self, text: &str) -> usize {
        self.err_lines.lock().unwrap().try_iter().filter(|l| l.contains(text)).count()
    }

    /// Whether a stderr line for which `f` holds comes within `timeout`
    /// (lines before it are consumed).
    pub fn saw_err_line(&mut self, timeout: Duration, mut f: impl FnMut(&str) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let lines = self.err_lines.lock().unwrap();
        while let Ok(l) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            if f(&l) {
                return true;
            }
        }
        false
    }

    /// Whether a stdout line starting with `prefix` comes within `timeout`.
    pub fn saw_line(&mut self, prefix: &str, timeout: Duration) -> bool {
        self.next_line(prefix, timeout).is_ok()
    }

    /// Waits for stdout lines starting with each of `prefixes`, in any
    /// order (one deadline for all).
    pub fn wait_lines(&mut self, prefixes: &[&str], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut left: Vec<&str> = prefixes.to_vec();
        while !left.is_empty() {
            let got = self.lines.lock().unwrap().recv_timeout(deadline.saturating_duration_since(Instant::now()));
            match got {
                Ok(l) => left.retain(|p| !l.starts_with(p)),
                Err(_) => panic!("no lines starting with {left:?} within {timeout:?}"),
            }
        }
    }

    /// Waits for a stdout line starting with `prefix` (deadline).
    pub fn wait_line(&mut self, prefix: &str, timeout: Duration) -> String {
        match self.next_line(prefix, timeout) {
            Ok(l) => l,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("no line starting with {prefix:?} within {timeout:?}"),
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("process exited before printing {prefix:?}"),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A daemon process on a private socket.
pub struct TestBus {
    pub daemon: Proc,
    /// The daemon's ready line.
    pub ready: String,
    pub socket: PathBuf,
    pub dir: TempDir,
}

impl TestBus {
    /// Starts `daemon` with `extra` flags and waits for its ready line.
    pub fn start(extra: &[&str]) -> TestBus {
        let dir = TempDir::new("bus");
        let socket = dir.0.join("bus.sock");
        let mut cmd = Command::new(DAEMON);
        // The tests read the daemon's info and warning lines.
        cmd.arg("--socket")
            .arg(&socket)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut daemon = Proc::new(cmd.spawn().expect("start the daemon"));
        let line = daemon.wait_line("shmbusd: ready", Duration::from_secs(10));
        assert!(line.contains(&socket.display().to_string()), "{line}");
        TestBus { daemon, ready: line, socket, dir }
    }

    /// A command with `SHMBUS_SOCKET` pointing at this bus.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SHMBUS_SOCKET", &self.socket).env_remove("SHMBUS_BUS").stdout(Stdio::piped()).stderr(Stdio::piped());
        c
    }

    /// Starts a peer with `args`.
    pub fn peer(&self, args: &[&str]) -> Proc {
        Proc::new(self.command(PEER).args(args).spawn().expect("start a peer"))
    }

    /// Runs the CLI to completion (deadline 30 s).
    pub fn cli(&self, args: &[&str]) -> (std::process::ExitStatus, String, String) {
        Proc::new(self.command(CLI).args(args).spawn().expect("start the cli")).wait(Duration::from_secs(30))
    }

    /// Connects a client in this process.
    pub fn connect(&self) -> bus_client::Bus {
        bus_client::Bus::builder()
            .socket(&self.socket)
            .send_timeout(Duration::from_secs(10))
            .connect()
            .expect("connect")
    }

    /// `shmbus status --json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        let (st, out, err) = self.cli(&["status", "--json"]);
        assert!(st.success(), "status failed: {err}");
        serde_json::from_str(&out).expect("status --json is JSON")
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

/// Runs `cmd` to completion (deadline 30 s), its output captured.
pub fn run_to_end(cmd: &mut Command) -> (std::process::ExitStatus, String, String) {
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start the command");
    Proc::new(child).wait(Duration::from_secs(30))
}

/// Polls `f` until it returns true or `timeout` passes; returns the time it took.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// The JSON summary line a `peer sub` prints last.
pub fn summary(stdout: &str) -> serde_json::Value {
    let line = stdout.lines().last().unwrap_or_else(|| panic!("no output from peer"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("bad summary {line:?}: {e}"))
}

/// A `peer` process on the bus at `socket`.
pub fn peer(socket: &Path, args: &[&str]) -> Proc {
    let mut cmd = Command::new(PEER);
    cmd.args(args).env("SHMBUS_SOCKET", socket).env_remove("SHMBUS_BUS").stdout(Stdio::piped()).stderr(Stdio::piped());
    Proc::new(cmd.spawn().expect("start a peer"))
}

/// `listen SUBSYSTEM --count 1` of the CLI on the bus at `socket`, in a
/// process of its own (as user `uid` through `setpriv`, if given), once
/// the subsystem shows in status (its client then holds the segment, as a
/// client to resume after a restart).
pub fn listening(socket: &Path, subsystem: &str, uid: Option<&str>) -> Proc {
    let mut cmd = match uid {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.args(["--reuid", uid, "--regid", uid, "--clear-groups", CLI]);
            c
        }
        None => Command::new(CLI),
    };
    let listener = Proc::new(
        cmd.args(["listen", subsystem, "--count", "1", "--timeout", "120s"])
            .env("SHMBUS_SOCKET", socket)
            .env_remove("SHMBUS_BUS")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let subscribed = eventually(Duration::from_secs(10), || {
        status(socket)["subsystems"].as_array().is_some_and(|s| s.iter().any(|x| x["name"] == subsystem))
    });
    assert!(subscribed.is_some(), "the listener never subscribed");
    listener
}

/// `status --json` of the bus at `socket`.
pub fn status(socket: &Path) -> serde_json::Value {
    let (st, out, err) = run_to_end(Command::new(CLI).args(["status", "--json"]).env("SHMBUS_SOCKET", socket));
    assert!(st.success(), "status failed: {err}");
    serde_json::from_str(&out).expect("status --json is JSON")
}

/// Every slot comes back free or cached (within 10 s), and none is corrupt.
pub fn assert_slots_back(socket: &Path) {
    let back = || {
        let s = status(socket);
        let n = |k: &str| s["slots"][k].as_u64().unwrap();
        n("free") + n("cached") == n("total") && n("corrupt") == 0
    };
    assert!(
        eventually(Duration::from_secs(10), back).is_some(),
        "slots not accounted for: {}",
        status(socket)["slots"]
    );
}
