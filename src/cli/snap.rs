//! `snap create|ls|rm`, `clone`, `flatten`, and opening `POOL/IMG[@SNAP]`.

use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;

use super::device::ask_attached;
use super::{human_bytes, open_volume, parse_spec, print_stdout, store_for, with_volume};
use crate::backend::ObjectStore;
use crate::config::Config;
use crate::error::ErrorKind;
use crate::ublk::control::Control;
use crate::volume::image;
use crate::volume::{clone_image, ImageSpec, Volume};
use std::time::Duration;

/// `snap` subcommands.
#[derive(Debug, Subcommand)]
pub enum SnapCommand {
    /// Take a snapshot of every write acknowledged so far (of an attached
    /// image through its server; an image open otherwise is refused).
    Create {
        /// Snapshot as POOL/IMAGE@SNAP.
        snap: String,
    },
    /// List an image's snapshots.
    Ls {
        /// Image as POOL/IMAGE.
        image: String,
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Remove a snapshot (refused, naming them, while clones depend on it);
    /// GC then frees what only it needed.
    #[command(alias = "remove")]
    Rm {
        /// Snapshot as POOL/IMAGE@SNAP.
        snap: String,
    },
}

/// Parse `POOL/IMAGE@SNAP` (`need`: the snapshot part is required) or
/// `POOL/IMAGE`.
pub fn parse_snap_spec(s: &str, need: bool) -> anyhow::Result<(ImageSpec, Option<String>)> {
    let (img, snap) = match s.split_once('@') {
        Some((i, n)) => (i, Some(n)),
        None => (s, None),
    };
    let spec = ImageSpec::parse(img).with_context(|| {
        format!(
            "bad name '{s}' (expected POOL/IMAGE{})",
            if need { "@SNAP" } else { "[@SNAP]" }
        )
    })?;
    if let Some(n) = snap {
        image::check_name("snapshot", n, s)
            .with_context(|| format!("bad snapshot name in '{s}'"))?;
    } else if need {
        fail!(
            InvalidInput,
            "'{s}' names no snapshot (expected POOL/IMAGE@SNAP)"
        );
    }
    Ok((spec, snap.map(str::to_string)))
}

/// Open a snapshot read-only (its read cache scoped per pool, as images').
pub fn open_snapshot(
    config: &Config,
    store: Arc<dyn ObjectStore>,
    spec: &ImageSpec,
    snap: &str,
) -> anyhow::Result<Volume> {
    let mut config = config.clone();
    config.rcache_dir = config.rcache_dir.join(&spec.pool);
    Volume::open_snapshot(config, store, &spec.image, snap)
        .with_context(|| format!("cannot open snapshot {spec}@{snap}"))
}

/// Open an image for a lifecycle change, saying what to do if it is attached.
fn open_detached(config: &Config, spec: &ImageSpec, what: &str) -> anyhow::Result<Volume> {
    let store = store_for(config, &spec.pool, false)?;
    let mut config = config.clone();
    config.no_gc = true;
    open_volume(&config, store, spec).map_err(|e| {
        let attached = e
            .chain()
            .filter_map(|c| c.downcast_ref::<crate::error::Error>())
            .any(|c| c.kind() == ErrorKind::Locked);
        if attached {
            e.context(format!(
                "cannot {what}: image {spec} is open elsewhere (attached or served); detach it first"
            ))
        } else {
            e
        }
    })
}

/// `snap ...`.
pub fn cmd_snap(config: &Config, cmd: &SnapCommand) -> anyhow::Result<()> {
    match cmd {
        SnapCommand::Create { snap } => {
            let (spec, name) = parse_snap_spec(snap, true)?;
            let name = name.unwrap_or_default();
            // An attached image: its server takes the snapshot.
            let req = Control::SnapCreate { name: name.clone() };
            let what = format!("snapshot image {spec}");
            if let Some(r) = ask_attached(&spec, &req, Duration::from_secs(600), &what) {
                let msg = r.with_context(|| format!("snap create {snap} failed"))?;
                return print_stdout(&format!("snapshot {spec}{msg}"));
            }
            let vol = open_detached(config, &spec, "take a snapshot")?;
            let s = with_volume(
                vol,
                &spec,
                |v| v.snapshot_create(&name),
                &format!("snap create {snap} failed"),
            )?;
            print_stdout(&format!(
                "snapshot {spec}@{} created ({}, up to object {})",
                s.name,
                human_bytes(s.size_bytes),
                s.last_obj.0
            ))
        }
        SnapCommand::Rm { snap } => {
            let (spec, name) = parse_snap_spec(snap, true)?;
            let name = name.unwrap_or_default();
            let req = Control::SnapRemove { name: name.clone() };
            let what = format!("remove snapshot {snap}");
            if let Some(r) = ask_attached(&spec, &req, Duration::from_secs(600), &what) {
                r.with_context(|| format!("snap rm {snap} failed"))?;
            } else {
                let vol = open_detached(config, &spec, "remove a snapshot")?;
                with_volume(
                    vol,
                    &spec,
                    |v| v.snapshot_remove(&name),
                    &format!("snap rm {snap} failed"),
                )?;
            }
            // Its read-cache file is no use to anyone now.
            let cache = config
                .rcache_dir
                .join(&spec.pool)
                .join(format!("{}@{name}.rcache", spec.image));
            let _ = std::fs::remove_file(cache);
            Ok(())
        }
        SnapCommand::Ls { image: img, json } => {
            let spec = parse_spec(img)?;
            let store = store_for(config, &spec.pool, false)?;
            let sb = image::read_superblock(store.as_ref(), &spec.image)
                .with_context(|| format!("cannot read image {spec}"))?;
            let list = image::snapshot_infos(store.as_ref(), &spec.image, &sb)
                .with_context(|| format!("cannot list the clones of {spec}"))?;
            let text = if *json {
                serde_json::to_string_pretty(&list).context("cannot encode snapshots as JSON")?
            } else {
                list.iter()
                    .map(|s| {
                        format!(
                            "{}\t{}\t{}{}",
                            s.name,
                            human_bytes(s.size_bytes),
                            super::format_unix_utc(s.created_unix),
                            if s.clones.is_empty() {
                                String::new()
                            } else {
                                format!("\tclones: {}", s.clones.join(", "))
                            }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            print_stdout(&text)
        }
    }
}

/// `clone POOL/IMAGE@SNAP POOL/CHILD`.
pub fn cmd_clone(config: &Config, from: &str, to: &str) -> anyhow::Result<()> {
    let (parent, snap) = parse_snap_spec(from, true)?;
    let snap = snap.unwrap_or_default();
    let child = parse_spec(to)?;
    if child.pool != parent.pool {
        fail!(
            InvalidInput,
            "a clone lives in its parent's pool: {to} is not in pool '{}'",
            parent.pool
        );
    }
    let store = store_for(config, &parent.pool, false)?;
    clone_image(store.as_ref(), &parent.image, &snap, &child.image)
        .with_context(|| format!("cannot clone {from} to {to}"))?;
    Ok(())
}

/// `flatten POOL/CHILD`.
pub fn cmd_flatten(config: &Config, image: &str) -> anyhow::Result<()> {
    let spec = parse_spec(image)?;
    let vol = open_detached(config, &spec, "flatten")?;
    let r = with_volume(
        vol,
        &spec,
        |v| v.flatten(),
        &format!("flatten {spec} failed"),
    )?;
    print_stdout(&format!(
        "image {spec} flattened: copied {} from its parent ({} of parent holes were zeros)",
        human_bytes(r.copied_bytes),
        human_bytes(r.zero_bytes)
    ))
}
