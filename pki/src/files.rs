//! File IO for PKI directories: capped reads, PEM parsing, atomic writes with modes.
//!
//! Writes go to a temporary file in the same directory (created with the final mode, so a
//! private key is never readable by others, not even for a moment), are fsynced, renamed
//! over the final name, and the directory is fsynced: a crash leaves the old file or the
//! new one, never half of one.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::PkiError;

/// Largest PEM file we read. A CA bundle or chain is a few KiB; the cap keeps a wrong path
/// (a disk image, /dev/zero) from being read into memory.
pub(crate) const MAX_PEM_BYTES: u64 = 1 << 20;

/// Mode of private key files.
pub(crate) const KEY_MODE: u32 = 0o600;
/// Mode of certificate files.
pub(crate) const CERT_MODE: u32 = 0o644;

/// Reads a whole file of at most [`MAX_PEM_BYTES`].
pub(crate) fn read_capped(path: &Path) -> Result<Vec<u8>, PkiError> {
    let file = File::open(path).map_err(|e| PkiError::io(path, e))?;
    let mut buf = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| PkiError::io(path, e))?;
    if buf.len() as u64 > MAX_PEM_BYTES {
        return Err(PkiError::Pem {
            path: path.to_owned(),
            reason: format!("larger than {MAX_PEM_BYTES} bytes; not a PEM file"),
        });
    }
    Ok(buf)
}

/// Reads every CERTIFICATE block of a PEM file (at least one), checking each is X.509.
pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let bytes = read_capped(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, "certificate", &e))?;
    if certs.is_empty() {
        return Err(pem_error(path, "certificate", &pem::Error::NoItemsFound));
    }
    for (i, der) in certs.iter().enumerate() {
        x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::Cert {
            path: path.to_owned(),
            reason: format!("certificate #{} is not valid X.509: {e}", i + 1),
        })?;
    }
    Ok(certs)
}

/// Reads the private key (PKCS#8, SEC1 or PKCS#1 PEM) of a file.
pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, PkiError> {
    let bytes = read_capped(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| pem_error(path, "private key", &e))
}

fn pem_error(path: &Path, what: &str, e: &pem::Error) -> PkiError {
    let reason = match e {
        pem::Error::NoItemsFound => format!("no {what} PEM block found (not a PEM {what} file)"),
        other => format!("not a valid PEM {what} file: {other}"),
    };
    PkiError::Pem {
        path: path.to_owned(),
        reason,
    }
}

/// Creates `dir` (and parents) if missing; a new directory gets mode 0700.
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), PkiError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| PkiError::io(dir, e))
}

/// Fails with [`PkiError::Exists`] on the first of `paths` that exists, unless `force`.
pub(crate) fn check_absent(paths: &[PathBuf], force: bool) -> Result<(), PkiError> {
    if force {
        return Ok(());
    }
    for p in paths {
        match fs::symlink_metadata(p) {
            Ok(_) => return Err(PkiError::Exists { path: p.clone() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(PkiError::io(p, e)),
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename, fsync of the directory),
/// the file having `mode` from its creation.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map_or_else(|| "pki".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    // A leftover from a crashed run would keep its old mode under O_TRUNC: start afresh.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(PkiError::io(&tmp, e)),
    }
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(PkiError::io(&tmp, e));
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(PkiError::io(path, e));
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| PkiError::io(dir, e))
}
