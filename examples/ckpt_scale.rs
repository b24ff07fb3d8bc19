//! Checkpoint cost at scale: a full checkpoint against a delta after a
//! small change, and the open time and memory of an image whose map has
//! that many extents.
//!
//! `cargo run --release --example ckpt_scale [EXTENTS] [CHANGE_PERCENT]`
//! (default 10,000,000 extents, 1%). Step 5 runs in fresh processes of
//! this example (`ckpt_scale open DIR [full]`), so their peak RSS is the
//! open's own.
//!
//! 1. Builds the durable map (`ObjectMap`) of EXTENTS 4 KiB extents, 8 KiB
//!    apart (so none merge), in objects of 2,048 extents, and starts its
//!    change tracking, as an open does after loading a checkpoint.
//! 2. A full checkpoint, as the destager writes one: the map's extents
//!    copied out, split into pieces, encoded (`full_bytes`, `full_secs`).
//! 3. CHANGE_PERCENT of the extents rewritten by random 4 KiB writes into
//!    new objects (each write is a new extent somewhere in the map).
//! 4. A delta on the full one, as the destager writes it: the changed
//!    ranges taken, their extents, split and encoded (`delta_bytes`,
//!    `delta_secs`, `ratio` = delta / full bytes; the target is <= 0.05).
//! 5. The pieces are in a `DirStore` under a temporary directory, the
//!    delta (built on the full one) listed in the superblock; a fresh
//!    process times `Volume::open` (its recovery loads the chain) and
//!    reports its peak RSS (`open_secs`, `open_peak_rss_mib`); another does
//!    the same with only the full checkpoint listed (`open_full_*`).
//!
//! The encoding is the destager's (`split_into_pieces`,
//! `split_delta_into_pieces`, `CheckpointPiece::encode`); the put is not
//! timed (it is the store's). Prints one `key=value` line per figure.

use std::sync::Arc;
use std::time::Instant;

use lsvd::backend::{DirStore, ObjectStore};
use lsvd::config::Config;
use lsvd::format::checkpoint::{
    split_delta_into_pieces, split_into_pieces, CheckpointPiece, CkptExtent, CkptObject, CkptRange,
    DeltaBase, EXTENTS_PER_PIECE,
};
use lsvd::format::superblock::{CheckpointRef, INCOMPAT_DELTA_CKPT};
use lsvd::map::{Extent, ObjInfo, ObjLoc, ObjectMap};
use lsvd::units::{JournalSeq, Lba, ObjSeq};
use lsvd::volume::image::{create_image, object_name, read_superblock};
use lsvd::volume::{Volume, VolumeOptions};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const PER_OBJECT: u64 = 2048;

fn peak_rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .map_or(0.0, |k| k / 1024.0)
}

fn ckpt_extent(x: Extent<ObjLoc>) -> CkptExtent {
    CkptExtent {
        lba: x.lba,
        len: x.len as u32,
        obj: x.target.obj,
        offset: x.target.offset,
    }
}

fn table(map: &ObjectMap) -> Vec<CkptObject> {
    map.objects()
        .map(|(obj, i)| CkptObject {
            obj,
            data_sectors: i.data_sectors,
            live_sectors: i.live_sectors,
        })
        .collect()
}

fn put_all(store: &DirStore, pieces: &[CheckpointPiece]) -> u64 {
    let mut bytes = 0;
    for p in pieces {
        let b = p.encode();
        bytes += b.len() as u64;
        store
            .put(
                &object_name("img", ObjSeq(p.ckpt_seq.0 + u64::from(p.index))),
                &b,
            )
            .unwrap();
    }
    bytes
}

/// `ckpt_scale open DIR [full]`: open the image in DIR's store (with only
/// the full checkpoint listed if `full`) and print the time and peak RSS.
fn open_mode(dir: &std::path::Path, full: bool) {
    let store = Arc::new(DirStore::open(&dir.join("store")).unwrap());
    if full {
        let mut sb = read_superblock(store.as_ref(), "img").unwrap();
        let full_ref = *sb.checkpoints.last().unwrap();
        sb.checkpoints = vec![full_ref];
        sb.update_seq += 1;
        store.put("img", &sb.encode()).unwrap();
        // What lies past the full checkpoint would be rolled forward: the
        // change's (empty) objects and the delta go first.
        let top = std::fs::read_to_string(dir.join("top")).unwrap();
        for o in full_ref.seq.0 + u64::from(full_ref.pieces)..=top.trim().parse().unwrap() {
            let _ = store.delete(&object_name("img", ObjSeq(o)));
        }
    }
    let c = Config {
        no_gc: true,
        no_rcache: true,
        wlog_bytes: 16 << 20,
        ..Config::default()
    };
    let _ = std::fs::remove_file(dir.join("img.wlog"));
    let before = peak_rss_mib();
    let t = Instant::now();
    let v = Volume::open(VolumeOptions {
        config: c,
        store,
        image: "img".into(),
        journal_path: dir.join("img.wlog"),
        io_log: None,
    })
    .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let what = if full { "open_full" } else { "open" };
    println!(
        "{what}_secs={secs:.2} {what}_peak_rss_mib={:.0} (before {before:.0}) {what}_extents={}",
        peak_rss_mib(),
        v.stats().map_extents
    );
    v.crash();
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("open") {
        open_mode(std::path::Path::new(&args[2]), args.get(3).is_some());
        return;
    }
    let n: u64 = args
        .get(1)
        .map_or(10_000_000, |a| a.parse().expect("EXTENTS"));
    let pct: f64 = args
        .get(2)
        .map_or(1.0, |a| a.parse().expect("CHANGE_PERCENT"));
    let objects = n.div_ceil(PER_OBJECT);
    println!("extents={n} change_percent={pct}");

    // 1. The map.
    let t = Instant::now();
    let extents = (0..n).map(|i| Extent {
        lba: Lba(16 * i),
        len: 8,
        target: ObjLoc {
            obj: ObjSeq(1 + i / PER_OBJECT),
            offset: 8 + 8 * (i % PER_OBJECT) as u32,
        },
    });
    let rows = (0..objects).map(|o| {
        let k = PER_OBJECT.min(n - o * PER_OBJECT);
        (
            ObjSeq(1 + o),
            ObjInfo {
                data_sectors: PER_OBJECT * 8,
                live_sectors: k * 8,
            },
        )
    });
    let mut map = ObjectMap::from_parts(extents, rows).unwrap();
    map.track_changes();
    println!("build_secs={:.2}", t.elapsed().as_secs_f64());
    let size_bytes = (16 * n * 512).next_multiple_of(4096);
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let store = DirStore::create(&dir.path().join("store")).unwrap();
    create_image(&store, "img", size_bytes).unwrap();
    let uuid = read_superblock(&store, "img").unwrap().uuid;

    // 2. A full checkpoint.
    let full_seq = ObjSeq(objects + 1);
    let t = Instant::now();
    let xs: Vec<CkptExtent> = map.extents().map(ckpt_extent).collect();
    let full = split_into_pieces(
        uuid,
        full_seq,
        ObjSeq(objects),
        JournalSeq(1),
        table(&map),
        &xs,
        EXTENTS_PER_PIECE,
    );
    drop(xs);
    let full_bytes: u64 = full.iter().map(|p| p.encode().len() as u64).sum();
    let full_secs = t.elapsed().as_secs_f64();
    println!(
        "full_bytes={full_bytes} full_pieces={} full_secs={full_secs:.2}",
        full.len()
    );
    put_all(&store, &full);
    let full_ref = CheckpointRef {
        seq: full_seq,
        pieces: full.len() as u32,
    };
    drop(full);
    // Nothing changed yet: the full checkpoint's map is the map.
    assert!(map.take_changes().unwrap().is_empty());

    // 3. Change pct% of the extents: random 4 KiB writes into new objects.
    let changes = ((n as f64) * pct / 100.0) as u64;
    let mut rng = SmallRng::seed_from_u64(1);
    let mut obj = full_seq.0 + full_ref.pieces as u64;
    let first_new = obj;
    let mut in_obj = 0u64;
    map.add_object(ObjSeq(obj), PER_OBJECT * 8);
    for _ in 0..changes {
        if in_obj == PER_OBJECT {
            obj += 1;
            in_obj = 0;
            map.add_object(ObjSeq(obj), PER_OBJECT * 8);
        }
        let lba = 8 * rng.gen_range(0..2 * n);
        map.apply_write(
            Lba(lba),
            8,
            ObjLoc {
                obj: ObjSeq(obj),
                offset: 8 + 8 * in_obj as u32,
            },
        );
        in_obj += 1;
    }
    let dead: Vec<ObjSeq> = map
        .objects()
        .filter(|(_, i)| i.live_sectors == 0)
        .map(|(o, _)| o)
        .collect();
    for o in dead {
        map.remove_object(o);
    }
    println!(
        "changed_writes={changes} new_objects={} map_extents={}",
        obj + 1 - first_new,
        map.extent_count()
    );

    // 4. The delta.
    let delta_seq = ObjSeq(obj + 1);
    let t = Instant::now();
    let ranges = map.take_changes().unwrap();
    let dx: Vec<CkptExtent> = map
        .clipped_extents(&ranges)
        .into_iter()
        .map(ckpt_extent)
        .collect();
    let ranges: Vec<CkptRange> = ranges
        .into_iter()
        .map(|(lba, len)| CkptRange { lba, len })
        .collect();
    let delta = split_delta_into_pieces(
        uuid,
        delta_seq,
        ObjSeq(obj),
        JournalSeq(2),
        table(&map),
        DeltaBase {
            seq: full_ref.seq,
            pieces: full_ref.pieces,
            depth: 1,
        },
        &ranges,
        &dx,
        EXTENTS_PER_PIECE,
    );
    let delta_bytes: u64 = delta.iter().map(|p| p.encode().len() as u64).sum();
    let delta_secs = t.elapsed().as_secs_f64();
    println!(
        "delta_bytes={delta_bytes} delta_ranges={} delta_extents={} delta_secs={delta_secs:.3} \
         ratio={:.4} time_ratio={:.4}",
        ranges.len(),
        dx.len(),
        delta_bytes as f64 / full_bytes as f64,
        delta_secs / full_secs
    );
    put_all(&store, &delta);
    let delta_ref = CheckpointRef {
        seq: delta_seq,
        pieces: delta.len() as u32,
    };
    drop((delta, dx, ranges));
    let mut sb = read_superblock(&store, "img").unwrap();
    sb.incompat |= INCOMPAT_DELTA_CKPT;
    sb.checkpoints = vec![delta_ref, full_ref];
    sb.update_seq += 1;
    store.put("img", &sb.encode()).unwrap();
    // The data objects the tables name exist (empty: an open reads none).
    for o in (1..=objects).chain(first_new..=obj) {
        store.put(&object_name("img", ObjSeq(o)), b"").unwrap();
    }
    std::fs::write(
        dir.path().join("top"),
        format!("{}", obj + delta_ref.pieces as u64),
    )
    .unwrap();
    println!("open_expected_extents={}", map.extent_count());
    drop(map);
    drop(store);

    // 5. Open, in fresh processes: the chain (full + delta), then the full
    // one alone.
    let me = std::env::current_exe().unwrap();
    for extra in [None, Some("full")] {
        let mut cmd = std::process::Command::new(&me);
        cmd.arg("open").arg(dir.path());
        if let Some(x) = extra {
            cmd.arg(x);
        }
        let st = cmd.status().unwrap();
        assert!(st.success(), "{cmd:?}: {st}");
    }
}
