//! `status POOL/IMAGE[@SNAP] [--json]`: who has an image, or any of its
//! snapshots, open.
//!
//! Two sources, merged: this host's run directory (ublk devices,
//! [`crate::ublk::registry`], and NBD servers, [`super::nbd::NbdRecord`]),
//! which knows devices, addresses and control sockets; and the store's
//! lock holders, which cover every host: the image's exclusive lock and
//! each snapshot's shared readers' lock (`lsvd:s.IMAGE@SNAP`), whose owner
//! strings name host, pid, role, address and time
//! ([`crate::catalog::owner`]). A lock holder that is one of this host's
//! recorded servers is shown once, with its lock. The dir store keeps
//! shared locks in the kernel only: its snapshot readers are seen through
//! the run directory, not the store.

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use super::{format_unix_utc, print_stdout, store_for};
use crate::catalog::owner::{this_host, LockOwner};
use crate::config::Config;
use crate::error::ErrorKind;
use crate::ublk::registry::{self, DevState};
use crate::volume::image;
use crate::volume::snapshot::snapshot_lock_name;

/// `status` arguments.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Image as POOL/IMAGE (with its snapshots), or POOL/IMAGE@SNAP.
    pub image: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One process that has the image or a snapshot of it open.
#[derive(Clone, Debug, Serialize)]
pub struct Holder {
    /// `ublk` (a block device), `nbd` (a `serve-nbd`), else the role its
    /// lock names (a command such as `gc` or `export`), or `unknown`.
    pub kind: String,
    /// What it has open: `POOL/IMAGE` or `POOL/IMAGE@SNAP`.
    pub target: String,
    /// Host (this host for run-directory records).
    pub host: Option<String>,
    /// Process id on that host.
    pub pid: Option<u32>,
    /// Since when, seconds since the epoch (server start, or when the lock
    /// was taken).
    pub since: Option<u64>,
    /// `live`, `quiesced` or `dead` for a ublk device (see `list`), `live`
    /// for an NBD server, `locked` for a holder known only by its lock.
    pub state: String,
    /// `/dev/ublkbN`.
    pub device: Option<String>,
    /// The URI an NBD server listens on.
    pub address: Option<String>,
    /// Whether an NBD server refuses writes.
    pub read_only: Option<bool>,
    /// The ublk server's control socket (live resize, snapshots).
    pub control_socket: Option<String>,
    /// The store's description of its lock, if it holds one.
    pub lock: Option<String>,
}

/// `status --json`.
#[derive(Debug, Serialize)]
struct Status {
    image: String,
    open: bool,
    holders: Vec<Holder>,
}

/// This host's recorded servers of `image` (`POOL/IMAGE`) and its
/// snapshots, or of one `target` only.
pub(super) fn local_holders(image: &str, only: Option<&str>) -> Vec<Holder> {
    let host = Some(this_host());
    let mine = |t: &str| match only {
        Some(o) => t == o,
        None => t == image || t.strip_prefix(image).is_some_and(|s| s.starts_with('@')),
    };
    let mut v = Vec::new();
    for r in registry::all().into_iter().filter(|r| mine(&r.image)) {
        let (state, _, _) = registry::status_of(&r);
        let sock = registry::control_path(r.dev_id);
        v.push(Holder {
            kind: "ublk".into(),
            target: r.image,
            host: host.clone(),
            pid: Some(r.pid),
            since: Some(r.started),
            state: state.as_str().into(),
            device: Some(r.device),
            address: None,
            read_only: None,
            control_socket: (state == DevState::Live && sock.exists())
                .then(|| sock.display().to_string()),
            lock: None,
        });
    }
    for r in super::nbd::nbd_records()
        .into_iter()
        .filter(|r| mine(&r.image))
    {
        v.push(Holder {
            kind: "nbd".into(),
            target: r.image,
            host: host.clone(),
            pid: Some(r.pid),
            since: Some(r.started),
            state: "live".into(),
            device: None,
            address: Some(r.address),
            read_only: Some(r.read_only),
            control_socket: None,
            lock: None,
        });
    }
    v
}

/// Merge the holders of lock `lock_name` (which guards `target`) into `v`.
fn merge_lock_holders(v: &mut Vec<Holder>, target: &str, holders: Vec<String>) {
    let here = this_host();
    for raw in holders {
        let o = LockOwner::parse(&raw);
        if let Some(h) = v.iter_mut().find(|h| {
            h.target == target
                && h.lock.is_none()
                && o.pid.is_some()
                && h.pid == o.pid
                && o.host.as_deref() == Some(here.as_str())
        }) {
            h.lock = Some(raw);
            continue;
        }
        if o.pid.is_none() && v.iter().any(|h| h.target == target) {
            // An owner the store cannot name (a dir store's lock file
            // between holders): one of the servers already listed.
            continue;
        }
        let kind = match o.role.as_deref() {
            Some("ublk") | Some("attach") | Some("recover") => "ublk",
            Some("serve-nbd") => "nbd",
            Some(r) => r,
            None => "unknown",
        };
        v.push(Holder {
            kind: kind.into(),
            target: target.into(),
            host: o.host,
            pid: o.pid,
            since: o.since,
            state: "locked".into(),
            device: None,
            address: o.address,
            read_only: None,
            control_socket: None,
            lock: Some(raw),
        });
    }
}

/// One line of text for `h`.
fn describe(h: &Holder) -> String {
    let mut s = match h.kind.as_str() {
        "ublk" => format!("ublk device {}", h.device.as_deref().unwrap_or("?")),
        "nbd" => format!("NBD server {}", h.address.as_deref().unwrap_or("?")),
        k => format!(
            "{k}{}",
            h.address
                .as_deref()
                .map(|a| format!(" {a}"))
                .unwrap_or_default()
        ),
    };
    if h.read_only == Some(true) {
        s.push_str(" (read-only)");
    }
    if let Some(p) = h.pid {
        s.push_str(&format!(" pid {p}"));
    }
    if let Some(host) = &h.host {
        s.push_str(&format!(" on host {host}"));
    }
    if let Some(t) = h.since {
        s.push_str(&format!(" since {}", format_unix_utc(t)));
    }
    s.push_str(&format!(", {}", h.state));
    if let Some(c) = &h.control_socket {
        s.push_str(&format!(", control socket {c}"));
    }
    match (&h.lock, h.state.as_str()) {
        // Known by its lock only: what the store adds (RADOS: client and
        // address), or the whole string if it could not be read.
        (Some(l), "locked") => match LockOwner::parse(l) {
            LockOwner {
                pid: None,
                client: None,
                ..
            } => s.push_str(&format!(" ({l})")),
            LockOwner {
                client: Some(c), ..
            } => s.push_str(&format!(" ({c})")),
            _ => {}
        },
        (Some(_), _) => s.push_str(", holds the lock"),
        _ => {}
    }
    s
}

/// `info`'s clean line: `yes`, or `no` and why; either names who has the
/// image open, if anyone does.
pub(super) fn clean_text(info: &crate::volume::image::ImageInfo) -> String {
    if info.open_by.is_empty() {
        return if info.clean {
            "yes"
        } else {
            "no (will recover on open)"
        }
        .into();
    }
    let by: Vec<String> = info
        .open_by
        .iter()
        .map(|raw| {
            let mut v = Vec::new();
            merge_lock_holders(&mut v, &info.name, vec![raw.clone()]);
            match v.first() {
                Some(h) if h.pid.is_some() => describe(h).replacen(", locked", "", 1),
                _ => raw.clone(),
            }
        })
        .collect();
    format!(
        "{} (open by {})",
        if info.clean { "yes" } else { "no" },
        by.join("; ")
    )
}

/// `status POOL/IMAGE[@SNAP] [--json]`.
pub fn status(config: &Config, args: &StatusArgs) -> anyhow::Result<()> {
    let (spec, snap) = super::snap::parse_snap_spec(&args.image, false)?;
    let store = store_for(config, &spec.pool, false)?;
    let sb = image::read_superblock(store.as_ref(), &spec.image)
        .with_context(|| format!("cannot read image {spec}"))?;
    let name = spec.to_string();
    let only = snap.as_ref().map(|s| format!("{name}@{s}"));
    if let Some(s) = &snap {
        if sb.snapshot(s).is_none() {
            fail!(NotFound, "image {spec} has no snapshot '{s}'");
        }
    }
    let mut holders = local_holders(&name, only.as_deref());
    // The store's lock holders: the image's, then each snapshot's.
    let mut locks = Vec::new();
    if snap.is_none() {
        locks.push((name.clone(), spec.image.clone()));
    }
    for s in &sb.snapshots {
        if snap.as_ref().is_none_or(|want| *want == s.name) {
            locks.push((
                format!("{name}@{}", s.name),
                snapshot_lock_name(&spec.image, &s.name),
            ));
        }
    }
    for (target, lock_name) in locks {
        let found = match store.lock_holders(&lock_name) {
            Ok(h) => h,
            Err(e) if e.kind() == ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot list the lock holders of {target}"))
            }
        };
        merge_lock_holders(&mut holders, &target, found);
    }
    let shown = only.unwrap_or(name);
    if args.json {
        let st = Status {
            image: shown,
            open: !holders.is_empty(),
            holders,
        };
        return print_stdout(&serde_json::to_string_pretty(&st)?);
    }
    let mut text = if holders.is_empty() {
        format!("{shown}: not open (no ublk device, NBD server or lock holder)")
    } else {
        format!("{shown}: open")
    };
    for h in &holders {
        text.push_str(&format!("\n\t{}: {}", h.target, describe(h)));
    }
    print_stdout(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nbd(target: &str, pid: u32) -> Holder {
        Holder {
            kind: "nbd".into(),
            target: target.into(),
            host: Some(this_host()),
            pid: Some(pid),
            since: Some(1),
            state: "live".into(),
            device: None,
            address: Some("nbd://127.0.0.1:1/x".into()),
            read_only: Some(false),
            control_socket: None,
            lock: None,
        }
    }

    #[test]
    fn lock_holders_merge_with_local_servers() {
        let here = this_host();
        let mut v = vec![nbd("p/i", 10)];
        let mine = format!("host {here} pid 10 image u by serve-nbd since 5");
        let remote = "host far pid 10 image u by gc since 6 (client.4 at 1.2.3.4:0/1)".to_owned();
        merge_lock_holders(&mut v, "p/i", vec![mine.clone(), remote.clone()]);
        assert_eq!(v.len(), 2, "{v:?}");
        assert_eq!(v[0].lock.as_deref(), Some(mine.as_str()));
        assert_eq!(v[1].kind, "gc");
        assert_eq!(v[1].host.as_deref(), Some("far"));
        assert_eq!(v[1].since, Some(6));
        assert_eq!(v[1].state, "locked");
        // A nameless holder of a target a server already covers is that one.
        merge_lock_holders(&mut v, "p/i", vec!["<unknown>".into()]);
        assert_eq!(v.len(), 2);
        // Of another target, it is shown.
        merge_lock_holders(&mut v, "p/i@s", vec!["<unknown>".into()]);
        assert_eq!(v[2].kind, "unknown");
        assert!(
            describe(&v[1]).contains("gc pid 10 on host far"),
            "{}",
            describe(&v[1])
        );
    }
}
