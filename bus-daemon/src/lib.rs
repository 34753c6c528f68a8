//! bus-daemon: `shmbusd`, the service that owns a shmbus segment. The
//! binary is thin: the daemon is [`run`] (or [`spawn`] in-process, for
//! tests and demos), its command line [`cli::daemon_main`]. The `shmbus`
//! command line and the benchmark harness live in `bus-cli`.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod access;
pub mod cli;
pub mod config;
pub mod log_limit;
pub mod metrics;
pub mod path_lock;
pub mod reaper;
pub mod server;
pub mod status;

pub use config::{Config, FileConfig};
pub use server::{DaemonError, Server};

use std::os::fd::{AsFd, OwnedFd};

/// Binds, prints the ready line to stdout, notifies systemd, and serves
/// until SIGTERM/SIGINT or a shutdown request.
pub fn run(cfg: Config) -> Result<(), DaemonError> {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal};
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)
        .map_err(|e| DaemonError::Io { what: "blocking signals".into(), source: e.into() })?;
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| DaemonError::Io { what: "signalfd".into(), source: e.into() })?;
    notice_hangups()?;
    let mut server = match Server::bind_until(cfg, &[sfd.as_fd()]) {
        Err(DaemonError::StoppedWhileWaiting) => return Ok(()),
        other => other?,
    };
    // Under systemd with WatchdogSec=: ping at half the interval.
    let mut usec = 0;
    if sd_notify::watchdog_enabled(false, &mut usec) {
        server.set_watchdog(std::time::Duration::from_micros(usec));
    }
    announce(&server);
    let status = format!("serving bus {} on {}", server.config().bus, server.config().socket.display());
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&status)]);
    let r = server.serve(&[sfd.as_fd()]);
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    r
}

/// SIGHUP, which conventionally asks a daemon to reload its configuration
/// (and which a closing terminal sends), neither stops nor kills the
/// daemon: the configuration is read only at start. Each one is logged
/// with what to do instead, by a thread that waits for it on a signalfd.
/// Before, its default action ended the process at once and left the
/// socket behind.
fn notice_hangups() -> Result<(), DaemonError> {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal};
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGHUP);
    // Blocked here, before the server's threads exist, so that they inherit
    // the mask and the signal is only ever read from the signalfd.
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)
        .map_err(|e| DaemonError::Io { what: "blocking SIGHUP".into(), source: e.into() })?;
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC)
        .map_err(|e| DaemonError::Io { what: "signalfd for SIGHUP".into(), source: e.into() })?;
    std::thread::Builder::new()
        .name("shmbusd-sighup".into())
        .spawn(move || {
            while let Ok(Some(_)) | Err(nix::errno::Errno::EINTR) = sfd.read_signal() {
                tracing::warn!(
                    "SIGHUP ignored: the configuration is read only at start; restart the daemon to apply a change"
                );
            }
        })
        .map_err(|source| DaemonError::Io { what: "spawning the SIGHUP thread".into(), source })?;
    Ok(())
}

fn announce(server: &Server) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", server.ready_line());
    let _ = out.flush();
}

/// A daemon serving in a thread of this process.
pub struct DaemonHandle {
    stop: Option<OwnedFd>,
    thread: Option<std::thread::JoinHandle<Result<(), DaemonError>>>,
    socket: std::path::PathBuf,
}

/// Binds and serves in a background thread; ready to accept clients when
/// this returns.
pub fn spawn(cfg: Config) -> Result<DaemonHandle, DaemonError> {
    let socket = cfg.socket.clone();
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| DaemonError::Io { what: "pipe".into(), source: e.into() })?;
    let server = Server::bind(cfg)?;
    let thread = std::thread::Builder::new()
        .name("shmbusd".into())
        .spawn(move || server.serve(&[r.as_fd()]))
        .map_err(|source| DaemonError::Io { what: "spawning the daemon thread".into(), source })?;
    Ok(DaemonHandle { stop: Some(w), thread: Some(thread), socket })
}

impl DaemonHandle {
    /// The socket it serves.
    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// Stops it and waits.
    pub fn stop(mut self) -> Result<(), DaemonError> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<(), DaemonError> {
        if let Some(w) = self.stop.take() {
            let _ = nix::unistd::write(&w, b"x");
        }
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => {
                Err(DaemonError::Io { what: "daemon thread".into(), source: std::io::Error::other("panicked") })
            }
            None => Ok(()),
        }
    }
}

impl Drop for DaemonHandle {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}
