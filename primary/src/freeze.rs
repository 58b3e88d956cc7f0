//! Quiescing a filesystem for an app-consistent point: freeze the mount of the protected
//! device, thaw when the guard drops (on every path, errors included).
//!
//! Both are done by a **child process** (`fsfreeze` from util-linux), never by the agent
//! itself: freezing writes the filesystem's dirty data and metadata back in the context of
//! the process that asks, and the tracker ignores the agent's own writes (its log writes).
//! Frozen from the agent, that writeback would go unrecorded — the replica would silently
//! lack it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn fsfreeze(op: &str, mount: &Path) -> std::io::Result<()> {
    let out = Command::new("fsfreeze").arg(op).arg(mount).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "fsfreeze {op} {}: {}",
            mount.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

pub use base::mounts::mount_point;

/// What quiesced the disk, and so how to release it.
#[derive(Debug)]
enum Kind {
    /// `fsfreeze` of this mount.
    Fs(PathBuf),
    /// The operator's pre-hook ran; this post-hook (if any) releases the application.
    Hooks(Option<String>),
}

/// A quiesced disk (a frozen filesystem, or an application stopped by the operator's
/// pre-hook); released on drop (thaw, or the post-hook).
#[derive(Debug)]
pub struct Frozen {
    kind: Kind,
    since: Instant,
}

fn hook(which: &str, cmd: &str) -> std::io::Result<()> {
    let out = Command::new("sh").arg("-c").arg(cmd).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "{which} `{cmd}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl Frozen {
    /// Freezes the filesystem mounted at `mount` (blocks new writes, flushes dirty data).
    ///
    /// # Errors
    /// The mount cannot be opened or the filesystem refused (already frozen, unsupported).
    pub fn new(mount: &Path) -> std::io::Result<Self> {
        fsfreeze("--freeze", mount)?;
        Ok(Self {
            kind: Kind::Fs(mount.to_path_buf()),
            since: Instant::now(),
        })
    }

    /// Runs the operator's pre-hook (`sh -c`, in a child process like everything that may
    /// make the kernel write); `post` runs when this is dropped.
    ///
    /// # Errors
    /// The pre-hook failed (then the post-hook is not run).
    pub fn hooks(pre: &str, post: Option<String>) -> std::io::Result<Self> {
        hook("pre-hook", pre)?;
        Ok(Self {
            kind: Kind::Hooks(post),
            since: Instant::now(),
        })
    }

    /// Leaves the filesystem frozen (or the application quiesced) for good: nothing is
    /// released on drop. A planned failover keeps the old primary quiesced this way.
    pub fn keep(mut self) {
        self.kind = Kind::Hooks(None);
    }

    /// How long it has been frozen.
    #[must_use]
    pub fn frozen_for(&self) -> std::time::Duration {
        self.since.elapsed()
    }

    /// Thaws now; returns how long the filesystem was frozen (ms).
    #[must_use]
    pub fn thaw(self) -> f64 {
        let ms = self.since.elapsed().as_secs_f64() * 1000.0;
        drop(self);
        ms
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let r = match &self.kind {
            Kind::Fs(m) => fsfreeze("--unfreeze", m),
            Kind::Hooks(Some(post)) => hook("post-hook", post),
            Kind::Hooks(None) => Ok(()),
        };
        if let Err(e) = r {
            tracing::error!("{e}");
        }
    }
}
