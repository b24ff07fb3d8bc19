//! Open, `info` and `rm` of one image in a crowded pool against the same
//! image alone in its pool (issue 16, part 2: no pool-wide listing on a
//! per-image path). Directory backend.
//!
//! `cargo run --release --example pool_scale [IMAGES] [OBJECTS_PER_IMAGE] [REPS]`
//! (default 1,000 images of 100 objects: 100,000 objects; 5 repetitions).
//!
//! 1. Two pools (`DirStore`s under a temporary directory): `empty` holds
//!    only the image `img`; `crowded` holds `img` and IMAGES other images'
//!    objects (small placeholder files named as their objects are, written
//!    directly: their content is never read).
//! 2. `img` is built the same way in both: created, 96 objects written
//!    (64 KiB objects), closed; then 16 more written and the volume
//!    dropped as in a crash, so the next open recovers.
//! 3. Timed, REPS times in each pool, interleaved: `Volume::open` (then a
//!    crash, untimed, so every open recovers the same way), `info`.
//!    Reported: the mean of each and `ratio` = crowded / empty (target for
//!    the open: <= 1.2).
//! 4. For comparison, the cost the mark avoids: the same open in the
//!    crowded pool of the image made old (no mark, `INCOMPAT_HWM` clear),
//!    which lists the pool once (`open_listing_secs`).
//! 5. The open of the image closed cleanly (nothing to replay), in each
//!    pool (`open_clean_*`).
//! 6. `rm` of `img` in each pool (`rm_secs`).
//!
//! Prints one `key=value` line per figure.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use lsvd::backend::{DirStore, ObjectStore};
use lsvd::config::Config;
use lsvd::format::superblock::INCOMPAT_HWM;
use lsvd::volume::image::{
    create_image, hwm_name, image_info, read_superblock, remove_image, ImageSpec,
};
use lsvd::volume::{Volume, VolumeOptions};

fn config() -> Config {
    Config {
        backend_obj_bytes: 64 << 10,
        wlog_chunk_bytes: 64 << 10,
        wlog_bytes: 16 << 20,
        checkpoint_interval_objs: 32,
        no_gc: true,
        ..Config::default()
    }
}

fn open(store: &Arc<dyn ObjectStore>, dir: &Path) -> Volume {
    Volume::open(VolumeOptions {
        config: config(),
        store: store.clone(),
        image: "img".into(),
        journal_path: dir.join("img.wlog"),
        io_log: None,
    })
    .unwrap_or_else(|e| panic!("open: {e:?}"))
}

fn write_objects(v: &Volume, n: u64, seed: u64) {
    for i in 0..n {
        let d: Vec<u8> = (0..64 << 10).map(|j| (i * 7 + j + seed) as u8).collect();
        v.write(((i * 13 + seed) % 256) * (64 << 10), &d).unwrap();
    }
    v.flush().unwrap();
}

/// A pool at `root/name` holding `img` built as in step 2, and `images`
/// other images of `objects` objects each.
fn pool(
    root: &Path,
    name: &str,
    images: u64,
    objects: u64,
) -> (Arc<dyn ObjectStore>, std::path::PathBuf) {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..images {
        for s in 1..=objects {
            std::fs::write(dir.join(format!("other{i:04}.{s:016x}")), b"x").unwrap();
        }
        std::fs::write(dir.join(format!("other{i:04}")), b"x").unwrap();
    }
    let store: Arc<dyn ObjectStore> = Arc::new(DirStore::open(&dir).unwrap());
    let jdir = root.join(format!("{name}-journal"));
    std::fs::create_dir_all(&jdir).unwrap();
    create_image(store.as_ref(), "img", 16 << 20).unwrap();
    let v = open(&store, &jdir);
    write_objects(&v, 96, 1);
    v.close().unwrap();
    let v = open(&store, &jdir);
    write_objects(&v, 16, 2);
    v.crash();
    (store, jdir)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers: IMAGES OBJECTS_PER_IMAGE REPS"))
        .collect();
    let images = args.first().copied().unwrap_or(1000);
    let objects = args.get(1).copied().unwrap_or(100);
    let reps = args.get(2).copied().unwrap_or(5).max(1);
    let tmp = tempfile::tempdir_in(std::env::var("TMPDIR").unwrap_or("/tmp".into())).unwrap();
    let (empty, empty_j) = pool(tmp.path(), "empty", 0, 0);
    let (crowded, crowded_j) = pool(tmp.path(), "crowded", images, objects);
    println!(
        "images={images} objects_per_image={objects} pool_objects={}",
        images * (objects + 1)
    );
    let spec = ImageSpec {
        pool: "p".into(),
        image: "img".into(),
    };
    let (mut open_e, mut open_c, mut info_e, mut info_c) = (vec![], vec![], vec![], vec![]);
    for _ in 0..reps {
        for (store, j, opens, infos) in [
            (&empty, &empty_j, &mut open_e, &mut info_e),
            (&crowded, &crowded_j, &mut open_c, &mut info_c),
        ] {
            let t = Instant::now();
            let v = open(store, j);
            opens.push(t.elapsed().as_secs_f64());
            v.crash();
            let t = Instant::now();
            let i = image_info(store.as_ref(), &spec).unwrap();
            infos.push(t.elapsed().as_secs_f64());
            assert!(i.objects >= 96);
        }
    }
    println!(
        "open_empty_secs={:.4} open_crowded_secs={:.4} open_ratio={:.2}",
        mean(&open_e),
        mean(&open_c),
        mean(&open_c) / mean(&open_e)
    );
    println!(
        "info_empty_secs={:.4} info_crowded_secs={:.4} info_ratio={:.2}",
        mean(&info_e),
        mean(&info_c),
        mean(&info_c) / mean(&info_e)
    );
    // The image made old: the open lists the pool once (and writes the mark
    // again, so each repetition clears it first).
    let mut listing = vec![];
    for _ in 0..reps {
        let mut sb = read_superblock(crowded.as_ref(), "img").unwrap();
        sb.incompat &= !INCOMPAT_HWM;
        crowded.put("img", &sb.encode()).unwrap();
        crowded.delete(&hwm_name("img")).unwrap();
        let t = Instant::now();
        let v = open(&crowded, &crowded_j);
        listing.push(t.elapsed().as_secs_f64());
        v.crash();
    }
    println!(
        "open_listing_secs={:.4} listing_over_mark={:.2}",
        mean(&listing),
        mean(&listing) / mean(&open_c)
    );
    // A clean image: nothing to replay or destage at the open, so only the
    // open's own reads and probes (and its superblock write) are timed.
    for (store, j) in [(&empty, &empty_j), (&crowded, &crowded_j)] {
        open(store, j).close().unwrap();
    }
    let (mut clean_e, mut clean_c) = (vec![], vec![]);
    for _ in 0..reps {
        for (store, j, opens) in [
            (&empty, &empty_j, &mut clean_e),
            (&crowded, &crowded_j, &mut clean_c),
        ] {
            let t = Instant::now();
            let v = open(store, j);
            opens.push(t.elapsed().as_secs_f64());
            v.close().unwrap();
        }
    }
    println!(
        "open_clean_empty_secs={:.4} open_clean_crowded_secs={:.4} open_clean_ratio={:.2}",
        mean(&clean_e),
        mean(&clean_c),
        mean(&clean_c) / mean(&clean_e)
    );
    for (name, store, j) in [
        ("empty", &empty, &empty_j),
        ("crowded", &crowded, &crowded_j),
    ] {
        let t = Instant::now();
        remove_image(store.as_ref(), "img", Some(&j.join("img.wlog"))).unwrap();
        println!("rm_{name}_secs={:.4}", t.elapsed().as_secs_f64());
    }
}
