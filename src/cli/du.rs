//! `du [POOL[/IMAGE]] [--json]`: space use per image and snapshot (store)
//! and per host (journal and read-cache files), with pool totals, like
//! `rbd du`. Read only: no image is opened or locked (see
//! [`crate::volume::usage`]). The columns are defined in the README.

use std::path::Path;

use anyhow::{bail, Context};

use super::{human_bytes, parse_spec, print_stdout, store_for};
use crate::config::{BackendKind, Config};
use crate::volume::image::{self, ImageSpec};
use crate::volume::usage::{image_usage, ImageUsage, Usage};

/// Arguments of `du`.
#[derive(Debug, clap::Args)]
pub struct DuArgs {
    /// POOL for every image in it, POOL/IMAGE for one (which lists nothing),
    /// or nothing for every pool (dir backend only).
    pub target: Option<String>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// This host's files of one row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct HostFiles {
    /// Bytes the image's journal file takes on this host's disk (0 if it
    /// has none here; always 0 for a snapshot).
    pub journal_bytes: u64,
    /// Bytes its read-cache file takes on this host's disk (a snapshot has
    /// its own, `<image>@<snap>.rcache`).
    pub cache_bytes: u64,
}

/// A snapshot's row.
#[derive(Debug, serde::Serialize)]
struct SnapRow {
    /// `pool/image@snap`.
    name: String,
    snapshot: String,
    removing: bool,
    #[serde(flatten)]
    usage: Usage,
    #[serde(flatten)]
    host: HostFiles,
}

/// An image's row and its snapshots'.
#[derive(Debug, serde::Serialize)]
struct ImageRow {
    /// `pool/image`.
    name: String,
    image: String,
    #[serde(flatten)]
    usage: Usage,
    #[serde(flatten)]
    host: HostFiles,
    uncheckpointed_bytes: u64,
    checkpoint: Option<u64>,
    parent: Option<String>,
    snapshots: Vec<SnapRow>,
}

/// A pool's rows and totals.
#[derive(Debug, serde::Serialize)]
struct PoolRows {
    pool: String,
    images: Vec<ImageRow>,
    total: Total,
}

/// A pool's totals: the logical columns (provisioned, written) add the
/// images' rows only (a snapshot's repeat its image's), the physical ones
/// add every row.
#[derive(Debug, Default, serde::Serialize)]
struct Total {
    #[serde(flatten)]
    usage: Usage,
    #[serde(flatten)]
    host: HostFiles,
}

/// Run `du`.
pub fn du(config: &Config, args: &DuArgs) -> anyhow::Result<()> {
    let pools = match args.target.as_deref() {
        Some(t) if t.contains('/') => {
            let spec = parse_spec(t)?;
            let store = store_for(config, &spec.pool, false)?;
            let row = image_row(config, store.as_ref(), &spec)?;
            vec![pool_rows(&spec.pool, vec![row])]
        }
        Some(pool) => vec![pool_du(config, pool)?],
        None => {
            if config.backend != BackendKind::Dir {
                bail!("name a pool: `du` of every pool needs the dir backend");
            }
            let mut names = Vec::new();
            let rd = match std::fs::read_dir(&config.store_dir) {
                Ok(rd) => Some(rd),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("cannot list the pools in {}", config.store_dir.display())
                    })
                }
            };
            for e in rd.into_iter().flatten() {
                let e = e.with_context(|| format!("cannot list {}", config.store_dir.display()))?;
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    if let Some(n) = e.file_name().to_str() {
                        if image::check_name("pool", n, n).is_ok() {
                            names.push(n.to_owned());
                        }
                    }
                }
            }
            names.sort();
            names
                .iter()
                .map(|p| pool_du(config, p))
                .collect::<anyhow::Result<_>>()?
        }
    };
    let text = if args.json {
        serde_json::to_string_pretty(&serde_json::json!({ "pools": pools }))
            .context("cannot encode du as JSON")?
    } else {
        format_table(&pools)
    };
    print_stdout(&text)
}

/// Every image of `pool` (one listing of the pool).
fn pool_du(config: &Config, pool: &str) -> anyhow::Result<PoolRows> {
    let store = store_for(config, pool, false)?;
    let names = image::list_images(store.as_ref())
        .with_context(|| format!("cannot list images in pool '{pool}'"))?;
    let mut rows = Vec::new();
    for name in names {
        let spec = ImageSpec {
            pool: pool.to_owned(),
            image: name,
        };
        rows.push(image_row(config, store.as_ref(), &spec)?);
    }
    Ok(pool_rows(pool, rows))
}

/// One image's rows: the store's figures and this host's files.
fn image_row(
    config: &Config,
    store: &dyn crate::backend::ObjectStore,
    spec: &ImageSpec,
) -> anyhow::Result<ImageRow> {
    let u: ImageUsage =
        image_usage(store, &spec.image).with_context(|| format!("cannot measure image {spec}"))?;
    let cache_dir = config.rcache_dir.join(&spec.pool);
    let snapshots = u
        .snapshots
        .into_iter()
        .map(|s| {
            Ok(SnapRow {
                name: format!("{spec}@{}", s.snapshot),
                host: HostFiles {
                    journal_bytes: 0,
                    cache_bytes: file_bytes(
                        &cache_dir.join(format!("{}@{}.rcache", spec.image, s.snapshot)),
                    )?,
                },
                snapshot: s.snapshot,
                removing: s.removing,
                usage: s.usage,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(ImageRow {
        name: spec.to_string(),
        image: spec.image.clone(),
        usage: u.usage,
        host: HostFiles {
            journal_bytes: file_bytes(&spec.journal_path(config))?,
            cache_bytes: file_bytes(&spec.rcache_path(config))?,
        },
        uncheckpointed_bytes: u.uncheckpointed_bytes,
        checkpoint: u.checkpoint,
        parent: u.parent,
        snapshots,
    })
}

/// Bytes a local file takes on disk (its allocated blocks; 0 if missing).
pub fn file_bytes(path: &Path) -> anyhow::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(m) => Ok(m.blocks() * 512),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e).with_context(|| format!("cannot stat {}", path.display())),
    }
}

fn pool_rows(pool: &str, images: Vec<ImageRow>) -> PoolRows {
    let mut t = Total::default();
    let mut add_physical = |u: &Usage, h: &HostFiles| {
        t.usage.stored_bytes += u.stored_bytes;
        t.usage.garbage_bytes += u.garbage_bytes;
        t.host.journal_bytes += h.journal_bytes;
        t.host.cache_bytes += h.cache_bytes;
    };
    for i in &images {
        add_physical(&i.usage, &i.host);
        for s in &i.snapshots {
            add_physical(&s.usage, &s.host);
        }
    }
    for i in &images {
        t.usage.provisioned_bytes += i.usage.provisioned_bytes;
        t.usage.written_bytes += i.usage.written_bytes;
    }
    PoolRows {
        pool: pool.to_owned(),
        images,
        total: t,
    }
}

/// The table: per image its snapshots (oldest first), then the image,
/// then one total line per pool.
fn format_table(pools: &[PoolRows]) -> String {
    let mut rows: Vec<[String; 7]> = vec![[
        "NAME".into(),
        "PROVISIONED".into(),
        "WRITTEN".into(),
        "STORED".into(),
        "GARBAGE".into(),
        "JOURNAL".into(),
        "CACHE".into(),
    ]];
    let row = |name: String, u: &Usage, h: &HostFiles| {
        [
            name,
            human_bytes(u.provisioned_bytes),
            human_bytes(u.written_bytes),
            human_bytes(u.stored_bytes),
            human_bytes(u.garbage_bytes),
            human_bytes(h.journal_bytes),
            human_bytes(h.cache_bytes),
        ]
    };
    for p in pools {
        for i in &p.images {
            for s in &i.snapshots {
                rows.push(row(s.name.clone(), &s.usage, &s.host));
            }
            rows.push(row(i.name.clone(), &i.usage, &i.host));
        }
        rows.push(row(
            format!("<TOTAL {}>", p.pool),
            &p.total.usage,
            &p.total.host,
        ));
    }
    let mut width = [0usize; 7];
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    rows.iter()
        .map(|r| {
            let mut line = format!("{:<w$}", r[0], w = width[0]);
            for (c, w) in r.iter().zip(width).skip(1) {
                line.push_str(&format!("  {c:>w$}"));
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}
