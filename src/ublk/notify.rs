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
    let path = path.to_string_lossy().into_owned();
    let addr = if let Some(abs) = path.strip_prefix('@') {
        SocketAddr::from_abstract_name(abs.as_bytes())
    } else {
        SocketAddr::from_pathname(&path)
    };
    let r = addr.and_then(|a| {
        let s = UnixDatagram::unbound()?;
        s.send_to_addr(msg.as_bytes(), &a)
    });
    if let Err(e) = r {
        tracing::warn!("cannot notify systemd at {path}: {e}");
    }
}
