//! The agent's side of the control channel.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use super::{ControlStats, CutReply, IO_TIMEOUT, Reply, Request};

/// The longest reply line accepted, in bytes (a reply is a few hundred).
const MAX_REPLY_LINE: usize = 64 << 10;

/// A connection to a target's control socket ([`super::find`]). One request at a time;
/// after an error the connection may be out of step: connect again.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to the control socket of a target.
    ///
    /// # Errors
    /// IO (no such socket, refused: the target is not running).
    pub fn connect(path: &Path) -> std::io::Result<Client> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Client {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// Seals the current log and opens the next one (exact cut).
    ///
    /// # Errors
    /// IO, a malformed reply, or the target's error (as [`std::io::Error::other`]).
    pub fn cut(&mut self) -> std::io::Result<CutReply> {
        self.call(&Request::Cut)
    }

    /// Appends consistency tag `tag` and writes it to the log.
    ///
    /// # Errors
    /// As [`cut`](Self::cut); the target refuses a tag once the log space cap is reached.
    pub fn mark(&mut self, tag: u64) -> std::io::Result<()> {
        self.call(&Request::Mark { tag })
    }

    /// Counters.
    ///
    /// # Errors
    /// As [`cut`](Self::cut).
    pub fn stats(&mut self) -> std::io::Result<ControlStats> {
        self.call(&Request::Stats)
    }

    fn call<T: serde::de::DeserializeOwned>(&mut self, request: &Request) -> std::io::Result<T> {
        let mut line = serde_json::to_vec(request).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        line.clear();
        let cap = u64::try_from(MAX_REPLY_LINE + 1).unwrap_or(u64::MAX);
        (&mut self.reader).take(cap).read_until(b'\n', &mut line)?;
        if line.pop() != Some(b'\n') {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the target closed the control connection (or sent an oversize reply)",
            ));
        }
        let reply: Reply<T> = serde_json::from_slice(&line).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("malformed reply from the target: {e}"),
            )
        })?;
        match reply {
            Reply::Ok(v) => Ok(v),
            Reply::Error(e) => Err(std::io::Error::other(e)),
        }
    }
}
