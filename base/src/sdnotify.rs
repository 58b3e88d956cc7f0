//! systemd readiness notification (`Type=notify` units): one datagram `READY=1` to the socket
//! named by `NOTIFY_SOCKET`, sent once a daemon serves.
//!
//! The protocol is a single unix datagram of newline-separated `KEY=VALUE` lines to the path
//! in `NOTIFY_SOCKET`; a leading `@` names an abstract socket (Linux). Written with std's
//! `UnixDatagram` rather than a crate: it is a dozen lines and links nothing.
//!
//! Without `NOTIFY_SOCKET` (a terminal, a test, another service manager) nothing is sent.
//! A failure to notify is logged and otherwise ignored: the daemon serves either way, and
//! systemd reports the missing notification by the unit's start timeout.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The environment variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Tells systemd the daemon is ready (`READY=1`), if it runs under `Type=notify`.
///
/// Call it once the daemon accepts what it serves (control socket bound, listener up).
pub fn ready() {
    if let Some(socket) = std::env::var_os(NOTIFY_SOCKET) {
        match notify(&socket, "READY=1") {
            Ok(()) => tracing::debug!("told systemd: ready"),
            Err(e) => tracing::warn!("telling systemd the daemon is ready: {e}"),
        }
    }
}

/// Sends `state` (e.g. `READY=1`) to the notification socket `socket` (a path, or `@name`
/// for an abstract socket).
///
/// # Errors
/// An empty socket name, or the datagram could not be sent.
pub fn notify(socket: &OsStr, state: &str) -> io::Result<()> {
    let addr = address(socket)?;
    let sock = UnixDatagram::unbound()?;
    let n = sock.send_to_addr(state.as_bytes(), &addr)?;
    if n != state.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short write to the notification socket",
        ));
    }
    Ok(())
}

fn address(socket: &OsStr) -> io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    match socket.as_bytes() {
        [] => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "NOTIFY_SOCKET is empty",
        )),
        [b'@', name @ ..] => SocketAddr::from_abstract_name(name),
        _ => SocketAddr::from_pathname(socket),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_path_socket_receives_ready() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        notify(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn an_abstract_socket_receives_ready() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("sitrep-sdnotify-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
            .unwrap();
        notify(OsStr::new(&format!("@{name}")), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn no_socket_is_an_error_not_a_hang() {
        assert!(notify(OsStr::new(""), "READY=1").is_err());
        let dir = tempfile::tempdir().unwrap();
        assert!(notify(dir.path().join("absent").as_os_str(), "READY=1").is_err());
    }
}
