//! One daemon per socket path: a lock file beside the socket
//! (`SOCKET.lock`), held with `flock` for the daemon's whole life.
//!
//! The socket alone cannot decide it. Two daemons started at the same
//! instant may both find a stale socket (or one just bound and not yet
//! listening) refusing connections; each would remove it and bind its own,
//! and the loser would serve an unlinked socket, or both would adopt the
//! previous daemon's segment. The lock is taken before the socket is
//! looked at, so the second daemon stops with `AlreadyRunning` instead.
//!
//! The kernel drops the lock when the process dies, however it dies, so a
//! lock file left by a killed daemon is simply taken again. A daemon that
//! stops removes the file while it still holds the lock; a daemon that
//! locked a file removed meanwhile (its inode no longer at the path) lets
//! it go and tries again.

use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The lock, held until dropped (which removes the file).
#[derive(Debug)]
pub struct PathLock {
    file: Flock<File>,
    path: PathBuf,
}

/// Why the lock was not taken.
#[derive(Debug)]
pub enum LockError {
    /// Another process holds it.
    Held,
    /// The file at the lock's path is not a regular file of this user
    /// (in a shared sticky directory, another user may have put it there).
    Foreign(PathBuf),
    /// The lock file could not be opened or locked.
    Io(std::io::Error),
}

/// The lock file of `socket`.
pub fn lock_path(socket: &Path) -> PathBuf {
    let mut p = socket.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

impl PathLock {
    /// Takes the lock of `socket` without waiting.
    pub fn take(socket: &Path) -> Result<PathLock, LockError> {
        let path = lock_path(socket);
        // A few tries: each retry means another daemon removed the file we
        // had opened, between our open and our lock (it was stopping).
        for _ in 0..8 {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(LockError::Io)?;
            let md = file.metadata().map_err(LockError::Io)?;
            if !md.is_file() || md.uid() != nix::unistd::geteuid().as_raw() {
                return Err(LockError::Foreign(path));
            }
            let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(f) => f,
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Err(LockError::Held),
                Err((_, e)) => return Err(LockError::Io(e.into())),
            };
            if still_at(&path, &file) {
                return Ok(PathLock { file, path });
            }
            // Removed (or replaced) after we opened it: that one is no
            // longer the lock anybody else will take.
        }
        Err(LockError::Io(std::io::Error::other(format!("{} keeps being replaced", path.display()))))
    }
}

impl Drop for PathLock {
    fn drop(&mut self) {
        // Removed while still locked (the file closes after this), so that
        // no other daemon can hold a lock on a file that is gone from the
        // path: one that opened it before now finds it replaced, and tries
        // again.
        if still_at(&self.path, &self.file) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Whether the file at `path` is `file` (same device and inode).
fn still_at(path: &Path, file: &File) -> bool {
    match (std::fs::symlink_metadata(path), file.metadata()) {
        (Ok(m), Ok(ours)) => m.dev() == ours.dev() && m.ino() == ours.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_taker_is_refused_until_the_first_lets_go() {
        let dir = std::env::temp_dir().join(format!("shmbus-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("bus.sock");
        let first = PathLock::take(&sock).unwrap();
        assert!(matches!(PathLock::take(&sock), Err(LockError::Held)));
        drop(first);
        assert!(!lock_path(&sock).exists(), "a released lock removes its file");
        let again = PathLock::take(&sock).unwrap();
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
