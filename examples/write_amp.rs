//! Write amplification, space expansion and client IOPS under garbage
//! collection.
//!
//! `cargo run --release --example write_amp [DIR] [SIZE_MIB] [MODES]`
//!
//! For each mode in MODES (comma separated; default `off,60,70`: GC off,
//! then `gc_threshold` 60 and 70), on a fresh image of SIZE_MIB (default
//! 1024) in a `DirStore` under DIR (default: a new temporary directory under
//! `/tmp`, removed at the end):
//!
//! 1. fills the first 80% of the image with 1 MiB sequential writes, then
//!    closes and reopens it (so the fill is all in the backend);
//! 2. writes 4 KiB random overwrites inside that 80%, totalling 3x the image
//!    size, 32 in flight, sampling the stored bytes (every object of the
//!    image, as `info` counts them) ten times along the way;
//! 3. flushes, waits up to `SETTLE_SECS` (default 60) for the collector to
//!    reach its steady state (stored bytes not shrinking over five 2 s
//!    samples), and samples once more.
//!
//! Prints one line per mode:
//! `mode=… iops=… wa=… wa_data=… wa_gc=… wa_ckpt=… space_max=… space_end=…`
//! where `wa` = (data + GC + checkpoint bytes put during step 2) / client
//! bytes of step 2, and `space_*` = stored bytes / live bytes (80% of the
//! image), the largest sample of step 2 and the one after step 3. The GC
//! mode also prints `iops_ratio_vs_off` when `off` ran first.
//!
//! Extra configuration JSON for every mode can be given in
//! `$LSVD_CONFIG_EXTRA` (for example `{"gc_rate_bytes": "64M"}`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lsvd::backend::{DirStore, ObjectStore};
use lsvd::config::{Config, ConfigLayer};
use lsvd::volume::image::create_image;
use lsvd::volume::{Volume, VolumeOptions, VolumeStats};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const IMAGE: &str = "img";
const MIB: u64 = 1 << 20;
const IN_FLIGHT: u64 = 32;
const BS: u64 = 4096;

#[path = "common/inflight.rs"]
mod inflight;
use inflight::InFlight;

type BoxError = Box<dyn std::error::Error>;

/// Bytes of every object of the image (superblock excluded), as `info`
/// counts them.
fn stored_bytes(store: &dyn ObjectStore) -> lsvd::Result<u64> {
    let mut total = 0;
    for name in store.list(&format!("{IMAGE}."))? {
        total += store.stat(&name)?.unwrap_or(0);
    }
    Ok(total)
}

fn write_async(vol: &Volume, inflight: &Arc<InFlight>, off: u64, data: &[u8]) -> lsvd::Result<()> {
    inflight.acquire(IN_FLIGHT)?;
    let f = inflight.clone();
    if let Err(e) = vol.submit_write(off, data, false, Box::new(move |r| f.release(r))) {
        inflight.release(Ok(()));
        return Err(e);
    }
    Ok(())
}

struct Outcome {
    iops: f64,
    wa: f64,
    wa_data: f64,
    wa_gc: f64,
    wa_ckpt: f64,
    space_max: f64,
    space_end: f64,
    gc_objects: u64,
    gc_deleted: u64,
}

fn put_bytes(s: &VolumeStats) -> (u64, u64, u64) {
    (s.data_object_bytes, s.gc_bytes, s.checkpoint_bytes)
}

fn run_mode(dir: &Path, size: u64, mode: &str, extra: Option<&str>) -> Result<Outcome, BoxError> {
    let root = dir.join(format!("mode-{mode}"));
    std::fs::create_dir_all(root.join("wlog"))?;
    let gc = match mode {
        "off" => r#"{"no_gc": true}"#.to_owned(),
        t => {
            let t: u32 = t
                .parse()
                .map_err(|_| format!("mode {t:?}: expected off or a gc_threshold"))?;
            format!(r#"{{"no_gc": false, "gc_threshold": {t}}}"#)
        }
    };
    let base = serde_json::json!({
        "store_dir": root.join("store"),
        "wlog_dir": root.join("wlog"),
        "rcache_dir": root.join("rcache"),
        "wlog_bytes": "512M",
    });
    let mut layers = vec![
        ConfigLayer::Inline(base.to_string()),
        ConfigLayer::Inline(gc),
    ];
    if let Some(e) = extra {
        layers.push(ConfigLayer::Inline(e.to_owned()));
    }
    let config = Config::load_from(&layers)?;
    let dstore = Arc::new(DirStore::create(&root.join("store"))?);
    create_image(&*dstore, IMAGE, size)?;
    let store: Arc<dyn ObjectStore> = dstore;
    let vol = Volume::open(VolumeOptions {
        config: config.clone(),
        store: store.clone(),
        image: IMAGE.into(),
        journal_path: root.join("wlog").join(format!("{IMAGE}.wlog")),
        io_log: None,
    })?;
    let live = size / 10 * 8 / BS * BS;
    let mut rng = SmallRng::seed_from_u64(7);
    let inflight = Arc::new(InFlight::default());

    // 1. Fill.
    let mut big = vec![0u8; MIB as usize];
    let mut off = 0;
    while off < live {
        let len = MIB.min(live - off);
        rng.fill(&mut big[..]);
        write_async(&vol, &inflight, off, &big[..len as usize])?;
        off += len;
    }
    inflight.drain()?;
    // Close and reopen: the fill's tail still in the journal would
    // otherwise be destaged during the overwrites and counted there.
    vol.close()?;
    let vol = Volume::open(VolumeOptions {
        config: config.clone(),
        store: store.clone(),
        image: IMAGE.into(),
        journal_path: root.join("wlog").join(format!("{IMAGE}.wlog")),
        io_log: None,
    })?;
    let before = vol.stats();

    // 2. Overwrites.
    let total = 3 * size;
    let n = total / BS;
    let mut block = vec![0u8; BS as usize];
    let mut space_max: f64 = 0.0;
    let t = Instant::now();
    for i in 0..n {
        let off = rng.gen_range(0..live / BS) * BS;
        rng.fill(&mut block[..16]);
        write_async(&vol, &inflight, off, &block)?;
        if (i + 1) % (n / 10).max(1) == 0 {
            let s = stored_bytes(&*store)? as f64 / live as f64;
            space_max = space_max.max(s);
        }
    }
    inflight.drain()?;
    vol.flush()?;
    let secs = t.elapsed().as_secs_f64();
    let after = vol.stats();

    // 3. Settle.
    let settle: u64 = std::env::var("SETTLE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let deadline = Instant::now() + Duration::from_secs(settle);
    let mut last = stored_bytes(&*store)?;
    let mut flat = 0;
    // Settled: no shrinking over five samples in a row.
    while mode != "off" && Instant::now() < deadline && flat < 5 {
        std::thread::sleep(Duration::from_secs(2));
        let now = stored_bytes(&*store)?;
        flat = if now >= last { flat + 1 } else { 0 };
        last = last.min(now);
    }
    let end = vol.stats();
    let space_end = stored_bytes(&*store)? as f64 / live as f64;
    space_max = space_max.max(space_end);
    vol.close()?;

    let client = (after.write_bytes - before.write_bytes) as f64;
    let (d0, g0, c0) = put_bytes(&before);
    // GC and checkpoints that ran while settling count as well: they are
    // the cost of the overwrites.
    let (d1, g1, c1) = put_bytes(&end);
    let (wa_data, wa_gc, wa_ckpt) = (
        (d1 - d0) as f64 / client,
        (g1 - g0) as f64 / client,
        (c1 - c0) as f64 / client,
    );
    Ok(Outcome {
        iops: n as f64 / secs,
        wa: wa_data + wa_gc + wa_ckpt,
        wa_data,
        wa_gc,
        wa_ckpt,
        space_max,
        space_end,
        gc_objects: end.gc_objects - before.gc_objects,
        gc_deleted: end.gc_deleted - before.gc_deleted,
    })
}

fn run(dir: &Path, size_mib: u64, modes: &str) -> Result<(), BoxError> {
    let extra = std::env::var("LSVD_CONFIG_EXTRA").ok();
    let mut off_iops = None;
    for mode in modes.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        let o = run_mode(dir, size_mib * MIB, mode, extra.as_deref())?;
        let mut line = format!(
            "mode={mode} iops={:.0} wa={:.3} wa_data={:.3} wa_gc={:.3} wa_ckpt={:.3} space_max={:.3} space_end={:.3} gc_objects={} gc_deleted={}",
            o.iops, o.wa, o.wa_data, o.wa_gc, o.wa_ckpt, o.space_max, o.space_end, o.gc_objects, o.gc_deleted
        );
        if mode == "off" {
            off_iops = Some(o.iops);
        } else if let Some(b) = off_iops {
            line.push_str(&format!(" iops_ratio_vs_off={:.3}", o.iops / b));
        }
        println!("{line}");
        std::fs::remove_dir_all(dir.join(format!("mode-{mode}")))?;
    }
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let dir_arg = args.next().filter(|s| !s.is_empty()).map(PathBuf::from);
    let size_mib: u64 = match args.next() {
        Some(s) => s.parse()?,
        None => 1024,
    };
    if size_mib < 64 {
        return Err("SIZE_MIB must be at least 64".into());
    }
    let modes = args.next().unwrap_or_else(|| "off,60,70".into());
    match dir_arg {
        Some(d) => {
            std::fs::create_dir_all(&d)?;
            run(&d, size_mib, &modes)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("lsvd-write-amp.")
                .tempdir_in("/tmp")?;
            run(t.path(), size_mib, &modes)
        }
    }
}
