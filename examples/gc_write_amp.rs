//! Write amplification and space expansion with background GC.
//!
//! `cargo run --example gc_write_amp [SIZE_MIB] [THRESHOLD] [RATE_MIB] [PLUG_KIB]`
//!
//! Creates an image of SIZE_MIB (default 256) in a `MemStore`, fills 80% of
//! it sequentially, then writes 4 KiB random overwrites (16 threads, inside
//! the filled part) totalling 3x the image size, with background GC at
//! THRESHOLD percent (default 60) and `gc_rate_bytes` RATE_MIB MiB/s
//! (default 32; 0 = unlimited) and `gc_plug_bytes` PLUG_KIB (default 64).
//! Prints one line:
//! write amplification = (data + GC + checkpoint bytes put) / client bytes,
//! with GC and checkpoint parts; space expansion = stored bytes / live bytes,
//! at the end and its maximum over the run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use lsvd::backend::{MemStore, ObjectStore};
use lsvd::config::Config;
use lsvd::volume::image::create_image;
use lsvd::volume::{Volume, VolumeOptions};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn stored(store: &MemStore) -> u64 {
    store
        .list("img.")
        .unwrap()
        .iter()
        .map(|n| store.stat(n).unwrap().unwrap_or(0))
        .sum()
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numeric arguments"))
        .collect();
    let size = args.first().copied().unwrap_or(256) << 20;
    let threshold = args.get(1).copied().unwrap_or(60) as u32;
    let rate = args.get(2).copied().unwrap_or(32) << 20;
    let plug = args.get(3).copied().unwrap_or(64) << 10;
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let store = Arc::new(MemStore::new());
    create_image(store.as_ref(), "img", size).unwrap();
    let config = Config {
        gc_threshold: threshold,
        gc_rate_bytes: rate,
        gc_plug_bytes: plug,
        wlog_bytes: 256 << 20,
        ..Config::default()
    };
    let vol = Arc::new(
        Volume::open(VolumeOptions {
            config,
            store: store.clone(),
            image: "img".into(),
            journal_path: dir.path().join("img.wlog"),
        })
        .unwrap(),
    );
    let fill = size / 10 * 8 / (1 << 20) * (1 << 20);
    let buf = vec![0x5au8; 1 << 20];
    for off in (0..fill).step_by(1 << 20) {
        vol.write(off, &buf).unwrap();
    }
    let base = vol.stats();
    let t0 = Instant::now();
    let total = 3 * size / 4096;
    let done = Arc::new(AtomicU64::new(0));
    let max_exp = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let (vol, done) = (vol.clone(), done.clone());
            std::thread::spawn(move || {
                let mut rng = SmallRng::seed_from_u64(t);
                let d = vec![t as u8; 4096];
                while done.fetch_add(1, Ordering::Relaxed) < total {
                    let off = rng.gen_range(0..fill / 4096) * 4096;
                    vol.write(off, &d).unwrap();
                }
            })
        })
        .collect();
    while done.load(Ordering::Relaxed) < total {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let e = stored(&store) * 1000 / fill;
        max_exp.fetch_max(e, Ordering::Relaxed);
    }
    for t in threads {
        t.join().unwrap();
    }
    vol.flush().unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let s = vol.stats();
    let client = (s.write_bytes - base.write_bytes) as f64;
    let data = (s.data_object_bytes - base.data_object_bytes) as f64;
    let gc = (s.gc_bytes - base.gc_bytes) as f64;
    let ck = (s.checkpoint_bytes - base.checkpoint_bytes) as f64;
    let end_exp = stored(&store) as f64 / fill as f64;
    println!(
        "size_mib={} threshold={threshold} rate_mib={} plug_kib={} secs={secs:.1} wa={:.3} (data {:.3} gc {:.3} ckpt {:.3}) \
         space_expansion_end={end_exp:.3} max={:.3} gc_objects={} gc_deleted={}",
        size >> 20,
        rate >> 20,
        plug >> 10,
        (data + gc + ck) / client,
        data / client,
        gc / client,
        ck / client,
        max_exp.load(Ordering::Relaxed) as f64 / 1000.0,
        s.gc_objects,
        s.gc_deleted
    );
    match Arc::try_unwrap(vol) {
        Ok(v) => v.close().unwrap(),
        Err(_) => panic!("volume still shared"),
    }
}
