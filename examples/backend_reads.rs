//! The backend's own 4 KiB ranged reads: the baseline for cold reads.
//!
//! `cargo run --release --example backend_reads -- CONFIG_JSON POOL/IMAGE [THREADS] [OPS]`
//!
//! Opens the object store the configuration names (as `lsvd-ublk` would),
//! lists the image's objects and issues OPS (default 131072) ranged gets of
//! 4 KiB at random 4 KiB-aligned offsets of random objects from THREADS
//! (default 32) threads, each thread one get at a time. Objects are
//! weighted by size. Prints `iops=… ops=… secs=… objects=…`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use lsvd::config::{Config, ConfigLayer};
use lsvd::volume::image::{open_store, parse_object_name};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

type BoxError = Box<dyn std::error::Error>;

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        return Err("usage: backend_reads CONFIG_JSON POOL/IMAGE [THREADS] [OPS]".into());
    }
    let config = Config::load_from(&[ConfigLayer::Inline(args[0].clone())])?;
    let (pool, image) = args[1]
        .split_once('/')
        .ok_or_else(|| format!("{}: expected POOL/IMAGE", args[1]))?;
    let threads: u64 = args.get(2).map_or(Ok(32), |s| s.parse())?;
    let ops: u64 = args.get(3).map_or(Ok(131_072), |s| s.parse())?;
    let store = open_store(&config, pool, false)?;
    // (name, 4K blocks), data objects and GC objects alike; checkpoints are
    // small and few.
    let mut objects = Vec::new();
    for name in store.list(&format!("{image}."))? {
        if parse_object_name(image, &name).is_some() {
            let blocks = store.stat(&name)?.unwrap_or(0) / 4096;
            if blocks > 0 {
                objects.push((name, blocks));
            }
        }
    }
    if objects.is_empty() {
        return Err(format!("{}: no objects to read", args[1]).into());
    }
    let total_blocks: u64 = objects.iter().map(|o| o.1).sum();
    let objects = Arc::new(objects);
    let left = Arc::new(AtomicU64::new(ops));
    let t = Instant::now();
    std::thread::scope(|s| -> Result<(), BoxError> {
        let mut hs = Vec::new();
        for i in 0..threads {
            let (store, objects, left) = (store.clone(), objects.clone(), left.clone());
            hs.push(s.spawn(move || -> lsvd::Result<()> {
                let mut rng = SmallRng::seed_from_u64(i);
                while left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
                {
                    let mut b = rng.gen_range(0..total_blocks);
                    let (name, _) = objects
                        .iter()
                        .find(|o| {
                            if b < o.1 {
                                true
                            } else {
                                b -= o.1;
                                false
                            }
                        })
                        .expect("block within the objects");
                    let got = store.get(name, b * 4096, 4096)?;
                    debug_assert_eq!(got.len(), 4096);
                }
                Ok(())
            }));
        }
        for h in hs {
            h.join().map_err(|_| "reader thread panicked")??;
        }
        Ok(())
    })?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "iops={:.0} ops={ops} secs={secs:.2} objects={}",
        ops as f64 / secs,
        objects.len()
    );
    Ok(())
}
