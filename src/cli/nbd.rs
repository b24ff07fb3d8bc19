//! `serve-nbd`: serve an image over NBD (see [`crate::nbd`]) in the
//! foreground until SIGTERM, SIGINT or SIGHUP, then close it cleanly
//! (destage, checkpoint, mark clean), as `detach` does for a device.
//!
//! NBD has no authentication and no encryption, so listening anywhere but
//! on a loopback address or a unix socket needs `--allow-remote`.
//!
//! A server registers itself in the run directory (as ublk devices do, see
//! [`crate::ublk::registry`]): `<run dir>/nbd-<pid>.json` ([`NbdRecord`]),
//! written (temp file + rename) once it serves and removed when it exits,
//! so that `list`, `status` and `detach` find it. It is runtime state, not
//! a persistent format; a record whose process is gone (SIGKILL), or
//! whose pid now runs something other than `serve-nbd`, is ignored and
//! removed by the next reader.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use serde::{Deserialize, Serialize};

use super::device::{block_stop_signals, wait_signal};
use super::{open_volume, print_stdout, store_for};
use crate::config::Config;
use crate::error::{Error, ErrorKind};
use crate::nbd::{self, Export, Listener, ServeOptions};
use crate::ublk::registry;

/// A running `serve-nbd`, as recorded in the run directory.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NbdRecord {
    /// `POOL/IMAGE` or `POOL/IMAGE@SNAP`.
    pub image: String,
    /// Server process.
    pub pid: u32,
    /// The URI clients connect to (`nbd://HOST:PORT/NAME`,
    /// `nbd+unix:///NAME?socket=PATH`).
    pub address: String,
    /// Served read-only.
    pub read_only: bool,
    /// Server start, seconds since the epoch.
    pub started: u64,
}

fn record_path(pid: u32) -> PathBuf {
    registry::run_dir().join(format!("nbd-{pid}.json"))
}

/// The live NBD servers' records, by pid. Records of dead processes are
/// removed (best effort); unreadable ones are skipped with a warning.
pub fn nbd_records() -> Vec<NbdRecord> {
    let mut v = Vec::new();
    let Ok(rd) = std::fs::read_dir(registry::run_dir()) else {
        return v;
    };
    for ent in rd.flatten() {
        let name = ent.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with("nbd-") && name.ends_with(".json")) {
            continue;
        }
        match std::fs::read(ent.path())
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<NbdRecord>(&b).map_err(|e| e.to_string()))
        {
            Ok(r) if registry::server_alive(r.pid) && serves_nbd(r.pid) => v.push(r),
            Ok(r) => {
                tracing::info!("removing the record of dead NBD server pid {}", r.pid);
                let _ = std::fs::remove_file(ent.path());
            }
            Err(e) => tracing::warn!("ignoring {}: {e}", ent.path().display()),
        }
    }
    v.sort_by_key(|r| r.pid);
    v
}

/// Whether process `pid` runs `serve-nbd` (an lsvd-ublk process that
/// reuses a dead server's pid does not).
fn serves_nbd(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == b"serve-nbd"))
}

/// This server's record: written by [`Registered::save`], removed at drop.
struct Registered(Option<PathBuf>);

impl Registered {
    /// Write `r` (temp file + rename). A run directory we cannot write
    /// (not root) only costs `list` and `status` their view of us.
    fn save(r: &NbdRecord) -> Registered {
        let path = record_path(r.pid);
        let tmp = path.with_extension("json.tmp");
        let saved = std::fs::create_dir_all(registry::run_dir())
            .and_then(|()| std::fs::write(&tmp, serde_json::to_vec_pretty(r).unwrap_or_default()))
            .and_then(|()| std::fs::rename(&tmp, &path));
        match saved {
            Ok(()) => Registered(Some(path)),
            Err(e) => {
                tracing::warn!(
                    "cannot record this server in {} (`list` and `status` will not show it): {e}",
                    path.display()
                );
                let _ = std::fs::remove_file(&tmp);
                Registered(None)
            }
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// `serve-nbd` arguments.
#[derive(Debug, Args)]
pub struct ServeNbdArgs {
    /// Image as POOL/IMAGE.
    pub image: String,
    /// Where to listen: HOST:PORT for TCP, or unix:PATH for a unix socket.
    #[arg(
        long,
        value_name = "HOST:PORT|unix:PATH",
        default_value = "127.0.0.1:10809"
    )]
    pub listen: String,
    /// Refuse writes, trims and write-zeroes (clients see a read-only export).
    #[arg(long)]
    pub read_only: bool,
    /// Allow listening on a non-loopback address. NBD is unauthenticated
    /// and unencrypted: anyone who reaches the port can read and write the
    /// image.
    #[arg(long)]
    pub allow_remote: bool,
}

/// A parsed `--listen`.
#[derive(Debug, PartialEq, Eq)]
enum ListenAddr {
    Tcp(Vec<SocketAddr>),
    Unix(PathBuf),
}

fn parse_listen(s: &str, allow_remote: bool) -> anyhow::Result<ListenAddr> {
    if let Some(path) = s.strip_prefix("unix:") {
        if path.is_empty() {
            fail!(
                InvalidInput,
                "--listen unix: needs a path, e.g. unix:/run/lsvd-nbd.sock"
            );
        }
        return Ok(ListenAddr::Unix(PathBuf::from(path)));
    }
    let addrs: Vec<SocketAddr> = s
        .to_socket_addrs()
        .with_context(|| format!("bad --listen '{s}' (expected HOST:PORT or unix:PATH)"))?
        .collect();
    if addrs.is_empty() {
        fail!(InvalidInput, "--listen '{s}' resolves to no address");
    }
    if !allow_remote {
        if let Some(a) = addrs.iter().find(|a| !a.ip().is_loopback()) {
            fail!(
                InvalidInput,
                "refusing to listen on {a}: it is not a loopback address, and NBD has no \
                 authentication or encryption (anyone who reaches it can read and write the \
                 image); pass --allow-remote to serve it anyway"
            );
        }
    }
    Ok(ListenAddr::Tcp(addrs))
}

/// Removes the unix socket when serving ends (also on errors).
struct SocketFile(Option<PathBuf>);

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            if std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket()) {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// Bind a unix socket at `path`: refuse a path that exists and is not a
/// socket, or a socket a live server answers on; remove a stale socket.
fn bind_unix(path: &Path) -> anyhow::Result<UnixListener> {
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            fail!(
                AlreadyExists,
                "{} exists and is not a socket: refusing to replace it",
                path.display()
            );
        }
        if UnixStream::connect(path).is_ok() {
            fail!(
                InUse,
                "{} is in use: a server is listening on it",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))
}

/// `serve-nbd POOL/IMAGE --listen ADDR`.
pub fn serve_nbd(config: &Config, args: &ServeNbdArgs) -> anyhow::Result<()> {
    let (spec, snap) = super::snap::parse_snap_spec(&args.image, false)?;
    // The export name: the image, or IMAGE@SNAP for a snapshot.
    let name = match &snap {
        Some(s) => format!("{}@{s}", spec.image),
        None => spec.image.clone(),
    };
    let listen = parse_listen(&args.listen, args.allow_remote)?;
    // Before any thread exists (the volume's, librados'), so that only the
    // main thread's `wait_signal` ever sees a stop signal.
    let set = block_stop_signals();
    let mut socket_file = SocketFile(None);
    let (listener, uri) = match &listen {
        ListenAddr::Tcp(addrs) => {
            let l = TcpListener::bind(&addrs[..]).map_err(|e| {
                let what = format!("cannot listen on {}", args.listen);
                if e.kind() == std::io::ErrorKind::AddrInUse {
                    // Busy, for the exit status.
                    anyhow::Error::new(Error::with_source(ErrorKind::InUse, what, e))
                } else {
                    anyhow::Error::new(e).context(what)
                }
            })?;
            let local = l
                .local_addr()
                .context("cannot read the listening address")?;
            (Listener::Tcp(l), format!("nbd://{local}/{name}"))
        }
        ListenAddr::Unix(path) => {
            let path = std::path::absolute(path)
                .with_context(|| format!("bad socket path {}", path.display()))?;
            let l = bind_unix(&path)?;
            socket_file.0 = Some(path.clone());
            (
                Listener::Unix(l),
                format!("nbd+unix:///{name}?socket={}", path.display()),
            )
        }
    };
    // The locks this server takes name it and its address (`status`).
    crate::catalog::owner::set_lock_role("serve-nbd", Some(&uri));
    let store = store_for(config, &spec.pool, false)?;
    // Live metrics (`metrics_listen`): the store is counted from the open on.
    let metrics = crate::metrics::Plan::new(
        config.metrics_listen()?,
        &format!("{}/{name}", spec.pool),
        store.clone(),
    );
    let store = match &metrics {
        Some(m) => m.store.clone() as Arc<dyn crate::backend::ObjectStore>,
        None => store,
    };
    // A snapshot is served read-only without the image's lock.
    let volume = Arc::new(match &snap {
        Some(s) => super::snap::open_snapshot(config, store, &spec, s)?,
        None => open_volume(config, store, &spec)?,
    });
    let read_only = args.read_only || volume.is_read_only();
    let opts = ServeOptions {
        aliases: vec![String::new(), format!("{}/{name}", spec.pool)],
        name,
        read_only,
        limits: nbd::server::Limits::from_config(config),
        metrics: metrics.as_ref().map(|m| m.io.clone()),
    };
    let spec = format!("{}/{}", spec.pool, opts.name);
    tracing::info!(
        "serving image {spec} over NBD at {uri}{}",
        if read_only { " (read-only)" } else { "" }
    );
    // Registered before the address is printed, so that whoever waits for
    // that line finds the record too.
    let registered = Registered::save(&NbdRecord {
        image: spec.clone(),
        pid: std::process::id(),
        address: uri.clone(),
        read_only,
        started: registry::now_secs(),
    });
    let started = metrics.as_ref().map(|m| {
        m.start(
            &super::iostat::nbd_socket(std::process::id()),
            Arc::downgrade(&volume),
            &[("frontend", "nbd"), ("address", &uri)],
        )
    });
    let metrics_server = match started.transpose() {
        Ok(s) => s.flatten(),
        Err(e) => {
            // A metrics address the configuration names cannot be served:
            // close the image cleanly, then fail.
            if let Ok(v) = Arc::try_unwrap(volume) {
                if let Err(c) = v.close() {
                    tracing::warn!("cannot close image {spec} cleanly: {c}");
                }
            }
            return Err(e).context("cannot serve the metrics");
        }
    };
    // The address, once clients can connect: scripts wait for this line.
    let printed = print_stdout(&uri);
    let served = match printed {
        Ok(()) => nbd::serve(
            volume.clone() as Arc<dyn Export>,
            listener,
            opts,
            move |d| wait_signal(&set, d),
        )
        .with_context(|| format!("serving image {spec} over NBD failed")),
        Err(e) => Err(e),
    };
    // No scrape may hold the volume while it closes.
    drop(metrics_server);
    // Every connection has ended: the volume is ours alone again.
    let closed = match Arc::try_unwrap(volume) {
        Ok(v) => v
            .close()
            .with_context(|| format!("cannot close image {spec} cleanly")),
        Err(_) => Err(anyhow::anyhow!(
            "image {spec} is still in use after the NBD server stopped; the journal keeps every write"
        )),
    };
    drop(registered);
    drop(socket_file);
    served?;
    closed?;
    tracing::info!("image {spec} closed cleanly");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen("unix:/tmp/x.sock", false).unwrap(),
            ListenAddr::Unix("/tmp/x.sock".into())
        );
        assert!(parse_listen("unix:", false).is_err());
        assert!(matches!(
            parse_listen("127.0.0.1:10809", false).unwrap(),
            ListenAddr::Tcp(_)
        ));
        assert!(matches!(
            parse_listen("[::1]:0", false).unwrap(),
            ListenAddr::Tcp(_)
        ));
        let m = parse_listen("0.0.0.0:10809", false)
            .unwrap_err()
            .to_string();
        assert!(
            m.contains("--allow-remote") && m.contains("authentication"),
            "{m}"
        );
        assert!(parse_listen("0.0.0.0:10809", true).is_ok());
        assert!(parse_listen("no-port", false).is_err());
    }
}
