//! What both sites share: the wire session helpers, the status schema, the control socket,
//! the small-file layer, and the arithmetic both the agent and the server rely on. It links no
//! eBPF and holds no site's logic — the agent is `primary`, the server `secondary`.
//!
//! - [`net`]: TLS connect/accept and the handshake both sides share; the error classes of a session;
//! - [`listen`]: accept loops that back off on errors, connection caps, rate-limited warnings;
//! - [`control`]: the local control socket the CLI talks to (JSON lines), server and client;
//! - [`status`]: the documented `--json` schemas of `status`, `jobs` and the other reports;
//! - [`store_space`]: the server's store bytes, quota and retired-point counts;
//! - [`metrics`]: the Prometheus endpoint (`--metrics`), rendered from the status;
//! - [`points`]: recovery points as both sites and the CLI see them, retention;
//! - [`config`]: the agent's policy file;
//! - [`units`]: the one size/rate/duration grammar every flag and file uses;
//! - [`agent_state`]: the agent's state directory (`STATE/disks/NAME/protection.json`, logs),
//!   read by the server too when it adopts a reverse replication;
//! - [`digest`]: keyed 128-bit block digests at two levels (4 KiB, 1 MiB) for the checksum resync;
//! - [`ranges`]: `(offset, len)` range arithmetic and the resync's bounded windows;
//! - [`devread`]: reading a device's data (O_DIRECT, zero detection);
//! - [`files`]: whole small files written atomically and durably;
//! - [`mounts`]: where a block device is mounted;
//! - [`lockfile`]: the exclusive lock that keeps two daemons off one store or state directory;
//! - [`modes`]: data at rest readable by root only (umask 077, 0700/0600 at start);
//! - [`sdnotify`]: systemd readiness notification (`READY=1` to `NOTIFY_SOCKET`).
//!
//! docs/architecture.md explains the design; docs/protocol.md the wire format.

pub mod agent_state;
pub mod config;
pub mod control;
pub mod devread;
pub mod digest;
pub mod files;
pub mod listen;
pub mod lockfile;
pub mod metrics;
pub mod modes;
pub mod mounts;
pub mod net;
pub mod points;
pub mod ranges;
pub mod sdnotify;
pub mod status;
pub mod store_space;
pub mod units;

/// Locks `m`, recovering the data if a thread panicked while holding it (every structure
/// guarded here stays consistent between statements, so a panic elsewhere must not stop
/// the daemon).
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

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
