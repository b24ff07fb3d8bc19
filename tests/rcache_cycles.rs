//! 100 crash/restart cycles with a warm read cache, garbage collection
//! moving data underneath it, and random reads checked against a byte-array
//! oracle: not one stale or wrong byte.
//!
//! Each cycle writes a few random extents (acknowledged writes survive a
//! crash: the journal is intact), reads 300 random ranges from 16 threads
//! and compares them with the oracle, then crashes (odd cycles) or closes
//! (even cycles) and reopens with the same cache file. Every 10th cycle
//! also forces a GC pass, so cached chunks of cleaned objects are orphaned
//! and new GC objects are read through the cache. `LSVD_RCACHE_CYCLES`
//! overrides the cycle count (the test command runs the default).

mod common;

use std::path::Path;
use std::sync::Arc;

use lsvd::backend::{DirStore, ObjectStore};
use lsvd::config::Config;
use lsvd::volume::image::create_image;
use lsvd::volume::{Volume, VolumeOptions};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use common::pattern;

const SIZE: u64 = 16 << 20;

fn config(dir: &Path) -> Config {
    Config {
        store_dir: dir.join("store"),
        rcache_dir: dir.join("rcache"),
        // Smaller than the image: eviction happens too.
        rcache_bytes: 8 << 20,
        backend_obj_bytes: 512 << 10,
        wlog_chunk_bytes: 64 << 10,
        wlog_bytes: 8 << 20,
        checkpoint_interval_objs: 4,
        flush_msec: 20,
        backend_write_window: 4,
        io_timeout_msec: 10_000,
        no_gc: false,
        gc_threshold: 90,
        gc_rate_bytes: 0,
        gc_interval_msec: 20,
        ..Config::default()
    }
}

fn open(store: &Arc<dyn ObjectStore>, dir: &Path, c: &Config) -> Volume {
    Volume::open(VolumeOptions {
        config: c.clone(),
        store: store.clone(),
        image: "img".into(),
        journal_path: dir.join("img.wlog"),
        io_log: None,
    })
    .expect("open")
}

fn check_reads(v: &Arc<Volume>, oracle: &Arc<Vec<u8>>, seed: u64, cycle: u32) {
    std::thread::scope(|s| {
        for t in 0..16u64 {
            let (v, oracle) = (v.clone(), oracle.clone());
            s.spawn(move || {
                let mut rng = SmallRng::seed_from_u64(seed ^ (t << 32));
                let mut buf = vec![0u8; 64 << 10];
                for _ in 0..300 / 16 + 1 {
                    let len = rng.gen_range(1..=16u64) * 4096;
                    let off = rng.gen_range(0..(SIZE - len) / 4096) * 4096;
                    let b = &mut buf[..len as usize];
                    v.read(off, b).expect("read");
                    let want = &oracle[off as usize..(off + len) as usize];
                    if b != want {
                        let first = b.iter().zip(want).position(|(a, b)| a != b).unwrap();
                        panic!(
                            "cycle {cycle}: wrong bytes at {} (read of {len} at {off})",
                            off + first as u64
                        );
                    }
                }
            });
        }
    });
}

#[test]
fn warm_cache_survives_100_crash_restart_cycles() {
    let cycles: u32 = std::env::var("LSVD_RCACHE_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let c = config(dir.path());
    let store: Arc<dyn ObjectStore> = Arc::new(DirStore::create(&c.store_dir).unwrap());
    create_image(store.as_ref(), "img", SIZE).unwrap();
    let mut oracle = vec![0u8; SIZE as usize];
    let mut rng = SmallRng::seed_from_u64(0x5eed);

    // Fill the image once so most reads go to the backend or the cache.
    let v = open(&store, dir.path(), &c);
    for (i, off) in (0..SIZE).step_by(1 << 20).enumerate() {
        let d = pattern(i as u64, 1 << 20);
        v.write(off, &d).unwrap();
        oracle[off as usize..off as usize + d.len()].copy_from_slice(&d);
    }
    v.close().unwrap();

    let mut hits_after_reopen = 0u64;
    let mut gc_cleaned = 0u64;
    let mut oracle = Arc::new(oracle);
    for cycle in 1..=cycles {
        let v = Arc::new(open(&store, dir.path(), &c));
        // Reads right after the reopen: a warm cache must serve some.
        check_reads(&v, &oracle, rng.gen(), cycle);
        hits_after_reopen += v.stats().cache_hits;
        // Overwrite a few extents, some of them cached.
        let o = Arc::make_mut(&mut oracle);
        for w in 0..rng.gen_range(1..20u64) {
            let len = rng.gen_range(1..=32u64) * 4096;
            let off = rng.gen_range(0..(SIZE - len) / 4096) * 4096;
            let d = pattern(u64::from(cycle) << 20 | w, len as usize);
            v.write(off, &d).unwrap();
            o[off as usize..(off + len) as usize].copy_from_slice(&d);
        }
        if cycle % 10 == 0 {
            gc_cleaned += v.gc_now().expect("gc").objects_cleaned;
        }
        check_reads(&v, &oracle, rng.gen(), cycle);
        let v = Arc::into_inner(v).expect("no other reference");
        if cycle % 2 == 1 {
            v.crash();
        } else {
            v.close().unwrap();
        }
    }
    assert!(
        hits_after_reopen > 0,
        "the cache served nothing after any of {cycles} reopens"
    );
    assert!(
        cycles < 10 || gc_cleaned > 0,
        "GC never cleaned an object under the cache"
    );
    // The whole image, one last time.
    let v = open(&store, dir.path(), &c);
    let mut buf = vec![0u8; SIZE as usize];
    v.read(0, &mut buf).unwrap();
    assert!(buf[..] == oracle[..], "whole image after {cycles} cycles");
    let st = v.stats();
    assert_eq!(st.cache_corrupt, 0, "nothing on the cache file was corrupt");
    v.close().unwrap();
}
