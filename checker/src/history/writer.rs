//! The history writer: the header at creation, records buffered in memory and appended on
//! [`HistoryWriter::flush`], the end record and an fsync on [`HistoryWriter::finish`].

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::format::{KIND_END, KIND_WRITE, encode_record};
use super::{HistoryHeader, HistoryRecord};
use crate::units::{RunId, UnixNs};
use crate::{Error, Result};

/// Writes one history file (format version 1 for one device, 2 for more; see
/// [`super::format`]).
pub struct HistoryWriter {
    file: File,
    path: PathBuf,
    run_id: RunId,
    version: u16,
    pending: Vec<u8>,
    written: u64,
}

impl HistoryWriter {
    /// Creates `path` (which must not exist: a history is never overwritten) with `header`.
    ///
    /// # Errors
    /// The file exists or cannot be created or written.
    pub fn create(path: &Path, header: &HistoryHeader) -> Result<Self> {
        let mut file = File::options()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(Error::io(path, "create history"))?;
        file.write_all(&header.encode())
            .map_err(Error::io(path, "write history header"))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            run_id: header.run_id,
            version: header.version(),
            pending: Vec::new(),
            written: 0,
        })
    }

    /// Buffers `r` (written by the next [`Self::flush`]). In a version-1 (single-device)
    /// history the device (always 0) and the dependency (always none) are not stored.
    pub fn push(&mut self, r: &HistoryRecord) {
        debug_assert!(
            self.version != 1 || (r.device == 0 && r.depends_on.is_none()),
            "a version-1 history has one device and no dependencies"
        );
        encode_record(self.version, self.run_id, r, KIND_WRITE, &mut self.pending);
        self.written += 1;
    }

    /// Writes the buffered records to the file (one `write`; no fsync).
    ///
    /// # Errors
    /// The write failed.
    pub fn flush(&mut self) -> Result<()> {
        if !self.pending.is_empty() {
            self.file
                .write_all(&self.pending)
                .map_err(Error::io(&self.path, "append to history"))?;
            self.pending.clear();
        }
        Ok(())
    }

    /// Writes the end record (the run stopped cleanly at `end`) and fsyncs.
    ///
    /// # Errors
    /// The write or fsync failed.
    pub fn finish(mut self, end: UnixNs) -> Result<u64> {
        let end_rec = HistoryRecord {
            seq: self.written,
            device: 0,
            block: 0,
            issue_ns: UnixNs(0),
            complete_ns: end,
            depends_on: None,
        };
        encode_record(
            self.version,
            self.run_id,
            &end_rec,
            KIND_END,
            &mut self.pending,
        );
        self.flush()?;
        self.file
            .sync_all()
            .map_err(Error::io(&self.path, "fsync history"))?;
        Ok(self.written)
    }
}
