//! systemd readiness notification (`sd_notify`) for `Type=notify` units,
//! without libsystemd: one datagram to `$NOTIFY_SOCKET`.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Send `msg` (e.g. `"READY=1\nSTATUS=serving /dev/ublkb0"`) if we run
/// under systemd; a no-op otherwise. Failures are logged, never fatal.
pub fn notify(msg: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = notify_to(&path.to_string_lossy(), msg) {
        tracing::warn!("cannot notify systemd at {}: {e}", path.to_string_lossy());
    }
}

/// Send `msg` to the notification socket `path` (`@name` for an abstract
/// socket, as systemd writes it).
pub fn notify_to(path: &str, msg: &str) -> std::io::Result<()> {
    let addr = if let Some(abs) = path.strip_prefix('@') {
        SocketAddr::from_abstract_name(abs.as_bytes())
    } else {
        SocketAddr::from_pathname(path)
    };
    let s = UnixDatagram::unbound()?;
    s.send_to_addr(msg.as_bytes(), &addr?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagram_reaches_path_and_abstract_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("notify");
        let rx = UnixDatagram::bind(&p).unwrap();
        notify_to(p.to_str().unwrap(), "READY=1\nSTATUS=serving").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving");

        let name = format!("lsvd-notify-test-{}", std::process::id());
        let abs = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&abs).unwrap();
        notify_to(&format!("@{name}"), "STOPPING=1").unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");

        assert!(notify_to(dir.path().join("nobody").to_str().unwrap(), "X=1").is_err());
    }
}
