//! `sitrep protect BACKING`: a ublk disk named by its backing file instead of its device.
//!
//! The agent protects block devices. A ublk disk's device number (`/dev/ublkbN`) is the
//! kernel's choice, while its backing file is what the operator made (`sitrep disk add
//! --backing FILE`), so `protect` also accepts the backing of a disk a sitrep target serves
//! now and protects that disk's device, named after the backing by default.

use std::path::{Path, PathBuf};

/// What `protect` was given, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Protected {
    /// The block device to protect.
    pub device: String,
    /// The disk's default name, when the backing gave one (its file stem).
    pub name: Option<String>,
}

/// Resolves `arg`: a regular file must be the backing of a ublk disk served now (its
/// device is protected); anything else goes to the agent as given.
///
/// # Errors
/// `arg` is a regular file no sitrep ublk target serves.
pub(crate) fn resolve(arg: &str) -> anyhow::Result<Protected> {
    let given = Protected {
        device: arg.to_string(),
        name: None,
    };
    let path = Path::new(arg);
    if !std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
        return Ok(given);
    }
    let canonical = std::fs::canonicalize(path)?;
    let served: Vec<(PathBuf, PathBuf)> = ublk_target::devices::list()
        .into_iter()
        .map(|d| (d.target.backing, d.device))
        .collect();
    resolve_in(arg, &canonical, &served)
}

/// [`resolve`] of regular file `arg` (canonically `canonical`) among the `(backing, device)`
/// pairs served now.
fn resolve_in(
    arg: &str,
    canonical: &Path,
    served: &[(PathBuf, PathBuf)],
) -> anyhow::Result<Protected> {
    let Some((_, device)) = served.iter().find(|(b, _)| b == canonical) else {
        anyhow::bail!(
            "{arg} is a regular file, not a block device; if it is a ublk disk's backing, \
             serve it first (`sitrep disk add --backing {arg}`), then protect it again"
        );
    };
    Ok(Protected {
        device: device.display().to_string(),
        name: canonical
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_served_backing_resolves_to_its_device_and_names_the_disk() {
        let served = vec![
            (
                PathBuf::from("/srv/other.img"),
                PathBuf::from("/dev/ublkb0"),
            ),
            (PathBuf::from("/srv/db.img"), PathBuf::from("/dev/ublkb3")),
        ];
        let p = resolve_in("db.img", Path::new("/srv/db.img"), &served).unwrap();
        assert_eq!(p.device, "/dev/ublkb3");
        assert_eq!(p.name.as_deref(), Some("db"));
        let e = resolve_in("x.img", Path::new("/srv/x.img"), &served)
            .unwrap_err()
            .to_string();
        assert!(e.contains("sitrep disk add --backing x.img"), "{e}");
    }

    #[test]
    fn anything_but_a_regular_file_goes_to_the_agent_as_given() {
        assert_eq!(
            resolve("/dev/null").unwrap(),
            Protected {
                device: "/dev/null".into(),
                name: None
            }
        );
        assert_eq!(resolve("/no/such/dev").unwrap().device, "/no/such/dev");
    }
}
