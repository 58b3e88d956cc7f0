//! Reading a log file: validate the header, then every record, streaming.
//!
//! A **sealed** log is fully durable: every byte up to the seal's end offset must validate,
//! whatever the [`RecoveryMode`]; anything else is [`Error::Corruption`].
//!
//! An **unsealed** log was open when its writer stopped. Its records are valid up to some
//! point, after which there may be a torn append. Only *tear-shaped* failures — a record
//! cut short by end of file, an impossible length, a crc mismatch, non-zero reserved
//! header bytes — count as a torn tail; a record that checksums correctly but makes no sense
//! (unknown kind, sequence gap, extent outside the disk) is corruption even there, because
//! no torn write produces it. With [`RecoveryMode::Strict`] a torn tail is
//! [`Error::TornTail`]; with [`RecoveryMode::TruncateTail`] reading stops before it and
//! [`LogReader::tail`] reports where and why. An unsealed log whose bytes after the last
//! valid record are all zero simply ends there ([`Tail::UnsealedClean`]): that is the
//! unwritten part of a preallocated log, not a tear.

use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Corrupt, Error, Result};
use crate::format::HEADER_SIZE;
use crate::format::header::{HeaderError, LogHeader, Seal, decode_header};
use crate::format::record::{RECORD_HEADER_SIZE, Record, decode_record, parse_record_header};
use crate::units::SeqNo;

/// What to do with a torn tail in an unsealed log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryMode {
    /// Fail with [`Error::TornTail`] (verification tools, shipping).
    #[default]
    Strict,
    /// Keep every record before the tear and report it in [`LogReader::tail`] (crash
    /// recovery of the writer).
    TruncateTail,
}

/// How a fully read log ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum Tail {
    /// Sealed, and every record up to the seal validated.
    Sealed,
    /// Not sealed, but the records end exactly at end of file (the writer stopped between
    /// batches): nothing was torn, but the log still was not closed cleanly.
    UnsealedClean,
    /// Not sealed, and the bytes from `offset` on do not form a valid record.
    Truncated {
        /// First byte not kept.
        offset: u64,
        /// Why the record there is invalid.
        #[serde(serialize_with = "ser_display")]
        cause: Corrupt,
    },
}

fn ser_display<S: serde::Serializer>(c: &Corrupt, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(c)
}

/// Streams and validates the records of one log file.
#[derive(Debug)]
pub struct LogReader {
    path: PathBuf,
    input: BufReader<File>,
    header: LogHeader,
    seal: Option<Seal>,
    mode: RecoveryMode,
    /// Where validated records stop: the seal's end, or the file length.
    limit: u64,
    pos: u64,
    next_seq: SeqNo,
    count: u64,
    tail: Option<Tail>,
    /// Set after an error: the reader's position is no longer trustworthy.
    failed: bool,
}

impl LogReader {
    /// Opens `path` and validates its header (and seal, if any).
    ///
    /// # Errors
    /// [`Error::NotALog`], [`Error::VersionMismatch`], [`Error::Corruption`] (truncated
    /// header, bad header crc or field, bad seal, seal past the end of file), or IO.
    pub fn open(path: &Path, mode: RecoveryMode) -> Result<Self> {
        // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever;
        // it changes nothing for the regular files accepted below.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| Error::io(path, "open", e))?;
        let meta = file.metadata().map_err(|e| Error::io(path, "stat", e))?;
        if !meta.is_file() {
            return Err(Error::io(
                path,
                "open",
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "not a regular file (a log is a file)",
                ),
            ));
        }
        let file_len = meta.len();
        let mut input = BufReader::with_capacity(256 << 10, file);
        let mut hdr = vec![0u8; HEADER_SIZE.min(usize::try_from(file_len).unwrap_or(HEADER_SIZE))];
        input
            .read_exact(&mut hdr)
            .map_err(|e| Error::io(path, "read header of", e))?;
        let corrupt = |offset, cause| Error::Corruption {
            path: path.to_owned(),
            offset,
            cause,
        };
        let (header, seal) = decode_header(&hdr).map_err(|e| match e {
            HeaderError::NotALog(found) => Error::NotALog {
                path: path.to_owned(),
                found,
            },
            HeaderError::Version(found) => Error::VersionMismatch {
                path: path.to_owned(),
                found,
                supported: crate::FORMAT_VERSION,
            },
            HeaderError::Corrupt(Corrupt::TruncatedHeader { .. }) => {
                corrupt(0, Corrupt::TruncatedHeader { len: file_len })
            }
            HeaderError::Corrupt(c) => corrupt(0, c),
        })?;
        let limit = match seal {
            Some(s) if s.end_offset > file_len => {
                return Err(corrupt(
                    crate::format::header::SEAL_OFFSET as u64,
                    Corrupt::SealPastEnd {
                        end: s.end_offset,
                        file_len,
                    },
                ));
            }
            Some(s) => s.end_offset,
            None => file_len,
        };
        Ok(Self {
            path: path.to_owned(),
            input,
            header,
            seal,
            mode,
            limit,
            pos: HEADER_SIZE as u64,
            next_seq: header.first_seq,
            count: 0,
            tail: None,
            failed: false,
        })
    }

    /// The validated header.
    #[must_use]
    pub fn header(&self) -> &LogHeader {
        &self.header
    }

    /// The seal, if the log was closed.
    #[must_use]
    pub fn seal(&self) -> Option<&Seal> {
        self.seal.as_ref()
    }

    /// The file being read.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How the log ended; `None` until the last record has been read.
    #[must_use]
    pub fn tail(&self) -> Option<&Tail> {
        self.tail.as_ref()
    }

    /// Offset one past the last record returned so far.
    #[must_use]
    pub fn valid_end(&self) -> u64 {
        self.pos
    }

    /// Sequence number the next record must have (after the last one: the successor log's
    /// first sequence number).
    #[must_use]
    pub fn next_seq(&self) -> SeqNo {
        self.next_seq
    }

    /// Records returned so far.
    #[must_use]
    pub fn records_read(&self) -> u64 {
        self.count
    }

    /// The next valid record, or `None` at the end of the log.
    ///
    /// # Errors
    /// [`Error::Corruption`], [`Error::TornTail`] (strict mode, unsealed log), or IO.
    pub fn next_record(&mut self) -> Result<Option<Record>> {
        if self.tail.is_some() || self.failed {
            return Ok(None);
        }
        let left = self.limit - self.pos;
        if left == 0 {
            return self.finish().map(|()| None);
        }
        match self.read_one(left) {
            Ok(rec) => Ok(Some(rec)),
            Err(cause) => {
                let r = self.fail(cause);
                self.failed = r.is_err();
                r.map(|()| None)
            }
        }
    }

    /// Reads and validates every remaining record.
    ///
    /// # Errors
    /// As [`LogReader::next_record`].
    pub fn read_all(&mut self) -> Result<Vec<Record>> {
        let mut v = Vec::new();
        while let Some(r) = self.next_record()? {
            v.push(r);
        }
        Ok(v)
    }

    fn read_one(&mut self, left: u64) -> Result<Record, ReadFail> {
        let mut hb = [0u8; RECORD_HEADER_SIZE];
        if left < RECORD_HEADER_SIZE as u64 {
            return Err(ReadFail::Bad(Corrupt::RecordTruncated {
                need: RECORD_HEADER_SIZE as u64,
                have: left,
            }));
        }
        self.input.read_exact(&mut hb).map_err(ReadFail::Io)?;
        let h = parse_record_header(&hb).map_err(ReadFail::Bad)?;
        let need = h.padded_len();
        if need > left {
            // Checked before allocating the payload: the length came from the file.
            return Err(ReadFail::Bad(Corrupt::RecordTruncated { need, have: left }));
        }
        let mut rest = vec![0u8; usize::try_from(need).unwrap_or(usize::MAX) - RECORD_HEADER_SIZE];
        self.input.read_exact(&mut rest).map_err(ReadFail::Io)?;
        let (payload, padding) = rest.split_at(h.payload_len());
        let rec = decode_record(&self.header.log_id, &hb, &h, payload, self.header.disk.size)
            .map_err(ReadFail::Bad)?;
        if padding.iter().any(|&b| b != 0) {
            return Err(ReadFail::Bad(Corrupt::NonZeroReserved));
        }
        if rec.seq != self.next_seq {
            return Err(ReadFail::Bad(Corrupt::SeqGap {
                expected: self.next_seq,
                found: rec.seq,
            }));
        }
        self.pos += need;
        self.next_seq = self.next_seq.next();
        self.count += 1;
        Ok(rec)
    }

    fn fail(&mut self, f: ReadFail) -> Result<()> {
        let cause = match f {
            ReadFail::Io(e) => return Err(Error::io(&self.path, "read", e)),
            ReadFail::Bad(c) => c,
        };
        let tear_shaped = matches!(
            cause,
            Corrupt::RecordTruncated { .. }
                | Corrupt::RecordLength { .. }
                | Corrupt::RecordCrc { .. }
                | Corrupt::NonZeroReserved
        );
        let offset = self.pos;
        if self.seal.is_some() || !tear_shaped {
            return Err(Error::Corruption {
                path: self.path.clone(),
                offset,
                cause,
            });
        }
        if self.rest_is_zero(offset)? {
            // A preallocated log's unwritten tail: the records simply end here.
            self.tail = Some(Tail::UnsealedClean);
            return Ok(());
        }
        match self.mode {
            RecoveryMode::Strict => Err(Error::TornTail {
                path: self.path.clone(),
                offset,
                cause,
            }),
            RecoveryMode::TruncateTail => {
                self.tail = Some(Tail::Truncated { offset, cause });
                Ok(())
            }
        }
    }

    /// Whether every byte from `offset` to the end of the file is zero.
    fn rest_is_zero(&self, offset: u64) -> Result<bool> {
        use std::os::unix::fs::FileExt;
        let f = self.input.get_ref();
        let mut buf = vec![0u8; 1 << 20];
        let mut at = offset;
        while at < self.limit {
            let want = usize::try_from((self.limit - at).min(buf.len() as u64)).unwrap_or(0);
            let n = f
                .read_at(&mut buf[..want], at)
                .map_err(|e| Error::io(&self.path, "read", e))?;
            if n == 0 {
                break;
            }
            if buf[..n].iter().any(|&b| b != 0) {
                return Ok(false);
            }
            at += n as u64;
        }
        Ok(true)
    }

    fn finish(&mut self) -> Result<()> {
        if let Some(s) = self.seal {
            let mismatch = if s.record_count != self.count {
                Some((s.record_count, self.count, "record_count"))
            } else if s.next_seq != self.next_seq {
                Some((s.next_seq.0, self.next_seq.0, "next_seq"))
            } else {
                None
            };
            if let Some((sealed, found, what)) = mismatch {
                self.failed = true;
                return Err(Error::Corruption {
                    path: self.path.clone(),
                    offset: crate::format::header::SEAL_OFFSET as u64,
                    cause: Corrupt::SealMismatch {
                        sealed,
                        found,
                        what,
                    },
                });
            }
            self.tail = Some(Tail::Sealed);
        } else {
            self.tail = Some(Tail::UnsealedClean);
        }
        Ok(())
    }
}

impl Iterator for LogReader {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().transpose()
    }
}

enum ReadFail {
    Io(std::io::Error),
    Bad(Corrupt),
}
