//! Appending records to the batch (with the space cap), and keeping a mapped log's pages
//! populated ahead of the appends.

use std::time::Instant;

use super::LogWriter;
#[cfg(doc)] // named in doc links only
use super::WriterConfig;
use crate::error::{Error, Result};
use crate::format::record::{
    RecordBody, RecordFlags, RecordKind, encode_extents_record, encode_record, encode_write_data,
    log_id_crc, validate_body, validate_extents_record,
};
use crate::mapped::Prefault;
use crate::units::{Extent, SeqNo};

impl LogWriter {
    /// Adds a record to the batch; returns its sequence number. It is durable only after
    /// the next [`commit`](Self::commit) (which this calls itself when the batch is full).
    ///
    /// # Errors
    /// [`Error::InvalidRecord`] (nothing appended), [`Error::Full`], or a commit's errors.
    pub fn append(&mut self, flags: RecordFlags, body: &RecordBody) -> Result<SeqNo> {
        self.append_at(flags, body, crate::now_unix_ns())
    }

    /// [`append`](Self::append) with the record's time (Unix ns) given by the caller — one
    /// clock read for a whole batch of records appended at the same moment.
    ///
    /// # Errors
    /// As [`append`](Self::append).
    pub fn append_at(
        &mut self,
        flags: RecordFlags,
        body: &RecordBody,
        unix_ns: u64,
    ) -> Result<SeqNo> {
        validate_body(body, flags, self.spec.disk.size).map_err(|reason| Error::InvalidRecord {
            disk_size: self.spec.disk.size,
            reason,
        })?;
        let exempt = matches!(body, RecordBody::TrackingGap { .. });
        let log_id = self.current_log_id()?;
        let start = self.batch.len();
        let seq = self.next_seq;
        encode_record(&log_id, seq, unix_ns, flags, body, &mut self.batch);
        self.admit(start, exempt)
    }

    /// Appends a change record of a list of extents — what a block interceptor logs for
    /// the I/Os of one turn (`Write`, `Discard`, `SecureErase` or `WriteZeroes`) — stamped
    /// `unix_ns`. The same record, byte for byte, as [`append_at`](Self::append_at) with the
    /// kind's body of that list, at a fraction of the cost: no body is built or dropped,
    /// and the log's id is not hashed again for every record.
    ///
    /// # Errors
    /// As [`append`](Self::append); [`Error::InvalidRecord`] for another kind, an empty or
    /// too long list.
    pub fn append_extents_at(
        &mut self,
        kind: RecordKind,
        flags: RecordFlags,
        extents: &[Extent],
        unix_ns: u64,
    ) -> Result<SeqNo> {
        validate_extents_record(kind, flags, extents, self.spec.disk.size).map_err(|reason| {
            Error::InvalidRecord {
                disk_size: self.spec.disk.size,
                reason,
            }
        })?;
        let log_id = self.current_log_id()?;
        let log_crc = match self.log_crc {
            Some((id, crc)) if id == log_id => crc,
            _ => {
                let crc = log_id_crc(&log_id);
                self.log_crc = Some((log_id, crc));
                crc
            }
        };
        let start = self.batch.len();
        let seq = self.next_seq;
        encode_extents_record(log_crc, seq, unix_ns, kind, flags, extents, &mut self.batch);
        self.admit(start, false)
    }

    /// Appends a journal-mode `WriteData` record without copying `data` first.
    ///
    /// # Errors
    /// As [`append`](Self::append); also if the log was not opened in journal mode.
    pub fn append_write_data(
        &mut self,
        flags: RecordFlags,
        offset: u64,
        data: &[u8],
    ) -> Result<SeqNo> {
        self.append_write_data_at(flags, offset, data, crate::now_unix_ns())
    }

    /// [`append_write_data`](Self::append_write_data) with the record's time given (see
    /// [`append_at`](Self::append_at)).
    ///
    /// # Errors
    /// As [`append_write_data`](Self::append_write_data).
    pub fn append_write_data_at(
        &mut self,
        flags: RecordFlags,
        offset: u64,
        data: &[u8],
        unix_ns: u64,
    ) -> Result<SeqNo> {
        if !self.spec.journal {
            return Err(Error::Config(
                "write data logged to a non-journal log".into(),
            ));
        }
        let disk_size = self.spec.disk.size;
        let invalid = |reason: String| Error::InvalidRecord { disk_size, reason };
        if data.len() > crate::format::MAX_PAYLOAD - 8 {
            return Err(invalid(format!(
                "{} bytes exceed the record cap",
                data.len()
            )));
        }
        crate::format::record::check_extent(offset, data.len() as u64, disk_size)
            .map_err(|c| invalid(c.to_string()))?;
        let log_id = self.current_log_id()?;
        let start = self.batch.len();
        let seq = self.next_seq;
        encode_write_data(&log_id, seq, unix_ns, flags, offset, data, &mut self.batch);
        self.admit(start, false)
    }

    /// Accepts (or, over the cap, rolls back) the record just encoded at `batch[start..]`.
    fn admit(&mut self, start: usize, cap_exempt: bool) -> Result<SeqNo> {
        let need = (self.batch.len() - start) as u64;
        if let (Some(cap), false) = (self.cfg.max_total_bytes, cap_exempt) {
            let total = self.total_bytes() - need;
            if total + need > cap {
                self.batch.truncate(start);
                return Err(Error::Full {
                    dir: self.dir.clone(),
                    total,
                    need,
                    cap,
                });
            }
        }
        let seq = self.next_seq;
        self.next_seq = seq.next();
        self.batch_records += 1;
        self.batch_since.get_or_insert_with(Instant::now);
        self.stats.records += 1;
        self.stats.bytes += need;
        if self.in_flight.is_none()
            && (self.batch.len() >= self.cfg.max_batch_bytes
                || self.batch_records >= self.cfg.max_batch_records)
        {
            self.commit()?;
        }
        Ok(seq)
    }

    /// Whether fewer than `low` bytes past the open log's end are populated in its mapping
    /// ([`WriterConfig::map`]) — time for a [`prefault`](Self::prefault). Cheap: two
    /// comparisons, for the appending thread to decide whether to ask for one.
    #[must_use]
    pub fn prefault_due(&self, low: usize) -> bool {
        self.in_flight.is_none() && self.current.as_ref().is_some_and(|c| c.prefault_due(low))
    }

    /// The stretch of the open log's mapping to populate so that `ahead` bytes past its end
    /// are; run it ([`Prefault::run`]) without holding the writer. `None` if the log is not
    /// mapped, a split commit holds it, or the stretch is already populated (or handed out).
    pub fn prefault(&mut self, ahead: usize) -> Option<Prefault> {
        if self.in_flight.is_some() {
            return None;
        }
        self.current.as_mut().and_then(|c| c.prefault(ahead))
    }
}
