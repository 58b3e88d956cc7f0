//! Protected disks whose device is missing when the agent starts: resumed when it appears.
//!
//! The agent unit starts early in boot, before the local filesystems are mounted (so a clean
//! reboot leaves nothing untracked: `packaging/systemd/sitrep-agent.service`); a device that
//! comes up later — a ublk disk over a file on a filesystem mounted afterwards, an iSCSI or
//! multipath volume — is not there yet. Its protection stays on disk untouched and is
//! resumed when the device is there (its node exists and has a size: a loop device node
//! exists before anything is attached), checked every [`EVERY`]; until then the agent logs it
//! once. A protection removed meanwhile (`sitrep unprotect`) is dropped from the wait.

use std::sync::Arc;
use std::time::Duration;

use base::agent_state::Protection;

use crate::Agent;

/// How often a missing device is looked for.
const EVERY: Duration = Duration::from_secs(2);

/// Whether `device` is there to track: it exists and, if a block device, has a size (a loop
/// device node exists before anything is attached to it, with size 0). Anything else that
/// exists is left to the change source to accept or refuse.
pub(crate) fn present(device: &std::path::Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(device) {
        Ok(m) if m.file_type().is_block_device() => {
            tracker_bpf::DeviceInfo::probe(device).is_ok_and(|i| i.size > 0)
        }
        Ok(_) => true,
        Err(_) => false,
    }
}

impl Agent {
    /// Waits, in the background, for the devices of `waiting` to appear, and resumes each
    /// protection then.
    pub(crate) fn resume_when_present(self: &Arc<Self>, waiting: Vec<Protection>) {
        if waiting.is_empty() {
            return;
        }
        for p in &waiting {
            tracing::warn!(
                disk = %p.name,
                device = %p.device.display(),
                "device missing at start; its protection resumes when it appears"
            );
        }
        let agent = self.clone();
        tokio::spawn(async move {
            let mut waiting = waiting;
            while !waiting.is_empty() {
                tokio::time::sleep(EVERY).await;
                let mut still = Vec::new();
                for p in waiting {
                    let kept = Protection::load_all(&agent.opts.state)
                        .is_ok_and(|all| all.iter().any(|q| q.name == p.name));
                    if !kept {
                        continue;
                    }
                    if !present(&p.device) {
                        still.push(p);
                        continue;
                    }
                    let name = p.name.clone();
                    match tokio::task::block_in_place(|| agent.start_disk(p, false)) {
                        Ok(_) => {
                            tracing::info!(disk = %name, "device appeared; protection resumed")
                        }
                        Err(e) => tracing::error!("disk {name}: cannot resume protection: {e:#}"),
                    }
                }
                waiting = still;
            }
        });
    }
}
