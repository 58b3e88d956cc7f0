//! One daemon per store, state directory and control socket (issue 19, item 7): a daemon
//! takes an exclusive `flock` on `STORE/LOCK` (the server) or `STATE/LOCK` (the agent) before
//! it touches anything else, and on `SOCKET.lock` before it replaces a control socket, and
//! holds them until it exits. Two servers on one store would both open every replica and
//! both write `state.json` and `points.json`.
//!
//! `flock` rather than a pid file alone: the kernel drops the lock when the process dies,
//! however it dies, so a crash never leaves a lock to clean up by hand, and a recycled pid
//! cannot make a dead daemon look alive. The file holds the holder's pid, only so that the
//! refusal can name it. The file is never deleted (deleting a locked file would let a third
//! daemon lock a new file of the same name).

use std::fs::File;
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Why a lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error(
        "{} is locked by another sitrep daemon ({}): one {what} serves one daemon; stop that daemon first, or give this one another directory",
        path.display(),
        pid.map_or_else(|| "pid unknown".to_string(), |p| format!("pid {p}"))
    )]
    Held {
        /// The lock file.
        path: PathBuf,
        /// What it protects (`store`, `state directory`, `control socket`).
        what: &'static str,
        /// The holder's pid, as it wrote it.
        pid: Option<u32>,
    },
    /// The lock file cannot be opened or locked.
    #[error("{}: {source} (cannot lock the {what})", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// What it protects.
        what: &'static str,
        /// The cause.
        source: std::io::Error,
    },
}

/// An exclusive lock held until dropped (or the process ends).
#[derive(Debug)]
pub struct LockFile {
    _file: File,
    path: PathBuf,
}

impl LockFile {
    /// Takes the lock `path` (created 0600 if missing) without waiting, and writes this
    /// process's pid into it; `what` names what it protects, for the error.
    ///
    /// # Errors
    /// [`LockError::Held`] naming the holder's pid, or [`LockError::Io`].
    pub fn acquire(path: &Path, what: &'static str) -> Result<Self, LockError> {
        let io = |source| LockError::Io {
            path: path.to_path_buf(),
            what,
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(io)?;
        // SAFETY: flock on a descriptor this function owns and keeps open in the returned
        // value; no memory is passed to the kernel.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock {
                let pid = std::fs::read_to_string(path)
                    .ok()
                    .and_then(|s| s.trim().parse().ok());
                return Err(LockError::Held {
                    path: path.to_path_buf(),
                    what,
                    pid,
                });
            }
            return Err(io(e));
        }
        file.set_len(0).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(Self {
            _file: file,
            path: path.to_path_buf(),
        })
    }

    /// The lock file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_pid_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("LOCK");
        let first = LockFile::acquire(&path, "store").unwrap();
        let e = LockFile::acquire(&path, "store").unwrap_err();
        let pid = std::process::id();
        assert!(
            matches!(e, LockError::Held { pid: Some(p), .. } if p == pid),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(msg.contains(&format!("pid {pid}")), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        drop(first);
        let again = LockFile::acquire(&path, "store").unwrap();
        assert_eq!(again.path(), path);
    }
}
