//! App-consistent points on the agent: quiesce (a pre-hook, or `fsfreeze` of the filesystem
//! mounted from the device), cut the cycle that is read while quiesced, and hand it to the
//! cycle shipping (`sealed.rs`), which thaws and answers the request.

use std::path::Path;

use super::freeze;
use super::owner::{FrozenCycle, Owner, PointRequest};
use super::{Agent, DiskRt, lock};
use base::net::ReplError;

/// Freezes the filesystem mounted from `device` and cuts the cycle that will be read while it
/// stays frozen. Returns true if it cut (the caller ships the cycle), false if it answered
/// the request with an error instead.
pub(crate) fn freeze_and_cut(
    agent: &Agent,
    rt: &DiskRt,
    own: &mut Owner,
    device: &Path,
    req: PointRequest,
) -> Result<bool, ReplError> {
    let (name, pre, post) = {
        let p = lock(&rt.prot);
        (p.name.clone(), p.pre_hook.clone(), p.post_hook.clone())
    };
    let fail = |req: PointRequest, why: String| {
        let _ = req.reply.send(Err(format!("disk {name}: {why}")));
        Ok(false)
    };
    if let Some(pre) = pre {
        let quiesced = match freeze::Frozen::hooks(&pre, post) {
            Ok(q) => q,
            Err(e) => return fail(req, e.to_string()),
        };
        tracing::info!(disk = %name, "pre-hook ran for an app-consistent point");
        return cut_quiesced(agent, rt, own, req, quiesced, format!("pre-hook `{pre}`"));
    }
    let mount = match freeze::mount_point(device) {
        Ok(Some(m)) => m,
        Ok(None) => {
            return fail(
                req,
                format!(
                    "no filesystem is mounted from {} and no --pre-hook is set: nothing to quiesce",
                    device.display()
                ),
            );
        }
        Err(e) => return fail(req, format!("reading the mounts: {e}")),
    };
    let frozen = match freeze::Frozen::new(&mount) {
        Ok(f) => f,
        Err(e) => return fail(req, e.to_string()),
    };
    tracing::info!(disk = %name, mount = %mount.display(), "frozen for an app-consistent point");
    let label = format!("fsfreeze {}", mount.display());
    cut_quiesced(agent, rt, own, req, frozen, label)
}

/// Cuts the cycle to be read while the disk stays quiesced by `frozen`.
fn cut_quiesced(
    agent: &Agent,
    rt: &DiskRt,
    own: &mut Owner,
    req: PointRequest,
    frozen: freeze::Frozen,
    label: String,
) -> Result<bool, ReplError> {
    let seq = match agent.cut(rt) {
        Ok(s) => s,
        Err(e) => {
            drop(frozen);
            let name = lock(&rt.prot).name.clone();
            let _ = req.reply.send(Err(format!("disk {name}: {e}")));
            return Err(e);
        }
    };
    own.frozen = Some(FrozenCycle {
        seq,
        frozen: Some(frozen),
        label,
        freeze_ms: 0.0,
        max_freeze: req.max_freeze,
        reply: req.reply,
    });
    Ok(true)
}
