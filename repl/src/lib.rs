//! sitrep replication: a protected disk's changes travel from the primary's agent to the
//! secondary's server over mutual TLS, and are applied there to a replica, whole cycles at a
//! time.
//!
//! - [`primary`]: the agent side — protections, tracking, the initial copy, delta cycles;
//! - [`server`]: the secondary side — sessions, the store of replicas, staging and apply;
//! - [`store`]: one directory per replicated disk (state, replica, staged cycles), crash-safe;
//! - [`cycle`]: turning a sealed HRL log into the extents a cycle ships;
//! - [`devread`]: reading a device's data for the copy and the cycles (O_DIRECT, zero detection);
//! - [`control`]: the local control socket the CLI talks to (JSON lines);
//! - [`status`]: the documented `--json` schemas of `status` and `jobs`;
//! - [`net`]: TLS connect/accept and the handshake both sides share;
//! - [`listen`]: accept loops that back off on errors, connection caps, rate-limited warnings;
//! - [`lockfile`]: the exclusive lock that keeps two daemons off one store or state directory;
//! - [`backoff`]: the retry schedule (1, 2, 4, 8, 10 units, then every 30, with jitter);
//! - [`metrics`]: the Prometheus endpoint (`--metrics`), rendered from the status;
//! - [`digest`]: keyed 128-bit block digests at two levels (4 KiB, 1 MiB) for the checksum resync;
//! - [`modes`]: data at rest readable by root only (umask 077, 0700/0600 at start);
//! - [`ranges`]: `(offset, len)` range arithmetic and the resync's bounded windows.
//!
//! docs/architecture.md explains the design; docs/protocol.md the wire format.

pub mod backoff;
pub mod config;
pub mod control;
pub mod cycle;
pub mod devread;
pub mod digest;
pub mod listen;
pub mod lockfile;
pub mod metrics;
pub mod modes;
pub mod net;
pub mod points;
pub mod primary;
pub mod ranges;
pub mod server;
pub mod status;
pub mod store;
pub mod undo;

/// Nanoseconds since the Unix epoch, now.
#[must_use]
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Whether `name` is acceptable as a protected disk's name: 1–64 of `[A-Za-z0-9._-]`, not
/// starting with a dot (it names a directory on both sites).
#[must_use]
pub fn valid_disk_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Hex of a 16-byte id.
#[must_use]
pub fn hex16(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Longest peer-chosen text quoted in a log line or an error message, in characters.
pub const MAX_PEER_TEXT: usize = 1024;

/// Text a peer chose (a rejected disk name, a refusal's message), made safe to quote in a
/// log line or an operator's terminal: control characters escaped (a CR/LF cannot forge a
/// log line, an escape sequence cannot reach the terminal), at most [`MAX_PEER_TEXT`]
/// characters (then `…`).
#[must_use]
pub fn peer_text(s: &str) -> String {
    peer_text_max(s, MAX_PEER_TEXT)
}

/// [`peer_text`] with at most `max` characters kept.
#[must_use]
pub fn peer_text_max(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn peer_text_escapes_controls_and_caps_length() {
        assert_eq!(super::peer_text("disk-1"), "disk-1");
        assert_eq!(
            super::peer_text("x\r\nINFO forged\u{1b}[2J"),
            "x\\r\\nINFO forged\\u{1b}[2J"
        );
        let long = super::peer_text(&"a".repeat(10_000));
        assert_eq!(long.chars().count(), super::MAX_PEER_TEXT + 1);
        assert!(long.ends_with('…'));
    }
}
