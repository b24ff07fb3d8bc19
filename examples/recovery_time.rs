//! Recovery time for a full journal.
//!
//! `cargo run --release --example recovery_time [DIR] [FILL_MIB]`
//!
//! 1. Creates a 4 GiB image in a `DirStore` under DIR (default: a new
//!    temporary directory under `/tmp`, removed at the end; also when DIR
//!    is empty).
//! 2. Opens it with `wlog_bytes` = FILL_MIB (default 1024) + 1/8 more,
//!    through a `FaultStore` that fails every data-object put, so nothing
//!    leaves the journal.
//! 3. Writes 4 KiB..1 MiB writes at random 4 KiB-aligned offsets, up to 64
//!    in flight, until the journal holds FILL_MIB, then FLUSHes and crashes.
//! 4. Times `Volume::open` on the plain `DirStore` (recovery, which replays
//!    the journal) and then `close()` (destage of everything replayed,
//!    checkpoint).
//!
//! Prints `fill_secs=…` for step 3 and one line
//! `recovery_secs=… replayed_ops=… journal_bytes=… gib_per_sec=… close_secs=…`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use lsvd::backend::{DirStore, FaultAction, FaultOp, FaultRule, FaultStore, ObjectStore};
use lsvd::config::Config;
use lsvd::volume::image::create_image;
use lsvd::volume::{Volume, VolumeOptions};
use lsvd::ErrorKind;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const IMAGE: &str = "img";
const IMAGE_BYTES: u64 = 4 << 30;
const MIB: u64 = 1 << 20;
/// Writes in flight while filling.
const IN_FLIGHT: u64 = 64;
/// Largest write.
const MAX_WRITE: u64 = MIB;

#[path = "common/inflight.rs"]
mod inflight;
use inflight::InFlight;

type BoxError = Box<dyn std::error::Error>;

fn options(config: &Config, store: Arc<dyn ObjectStore>, dir: &Path) -> VolumeOptions {
    VolumeOptions {
        config: config.clone(),
        store,
        image: IMAGE.into(),
        journal_path: dir.join("wlog").join(format!("{IMAGE}.wlog")),
        io_log: None,
    }
}

/// Steps 2 and 3: returns the client bytes written and the journal bytes in use.
fn fill(config: &Config, dir: &Path, fill_bytes: u64) -> Result<(u64, u64), BoxError> {
    let fault = FaultStore::new(Arc::new(DirStore::open(&dir.join("store"))?), 1);
    // Data objects are named `img.<seq>`; the superblock (`img`) must still
    // be written, or the open itself fails.
    fault.add_rule(
        FaultRule::new(FaultOp::Put, FaultAction::Fail(ErrorKind::Io))
            .matching(format!("{IMAGE}.")),
    );
    let vol = Volume::open(options(config, Arc::new(fault), dir))?;

    let mut rng = SmallRng::seed_from_u64(42);
    // Random data; each write takes a random 4 KiB-aligned slice of it.
    let mut pool = vec![0u8; (2 * MAX_WRITE) as usize];
    rng.fill(&mut pool[..]);
    let inflight = Arc::new(InFlight::default());
    let pending = Arc::new(AtomicU64::new(0));
    let mut client_bytes = 0u64;
    loop {
        // Bytes still on their way count as used, so the journal never
        // fills up (writes would block until io_timeout, then fail).
        let used = vol.stats().journal_used_bytes + pending.load(Ordering::SeqCst);
        if used + MAX_WRITE + 4096 > fill_bytes {
            break;
        }
        let len = rng.gen_range(1..=MAX_WRITE / 4096) * 4096;
        let off = rng.gen_range(0..(IMAGE_BYTES - len) / 4096) * 4096;
        let src = rng.gen_range(0..=(pool.len() as u64 - len) / 4096) * 4096;
        let mut data = pool[src as usize..(src + len) as usize].to_vec();
        data[..8].copy_from_slice(&off.to_le_bytes());
        inflight.acquire(IN_FLIGHT)?;
        // Record header and alignment included, roughly.
        let charge = len + 4096;
        pending.fetch_add(charge, Ordering::SeqCst);
        let (f, p) = (inflight.clone(), pending.clone());
        let done = Box::new(move |r: lsvd::Result<()>| {
            p.fetch_sub(charge, Ordering::SeqCst);
            f.release(r);
        });
        if let Err(e) = vol.submit_write(off, &data, false, done) {
            // `done` is not called when submit fails.
            pending.fetch_sub(charge, Ordering::SeqCst);
            inflight.release(Ok(()));
            return Err(e.into());
        }
        client_bytes += len;
    }
    inflight.drain()?;
    vol.flush()?;
    let st = vol.stats();
    if st.data_objects != 0 {
        return Err(format!("{} data objects left the journal", st.data_objects).into());
    }
    vol.crash();
    Ok((client_bytes, st.journal_used_bytes))
}

fn run(dir: &Path, fill_mib: u64) -> Result<(), BoxError> {
    let fill_bytes = fill_mib * MIB;
    let config = Config {
        store_dir: dir.join("store"),
        wlog_dir: dir.join("wlog"),
        rcache_dir: dir.join("rcache"),
        wlog_bytes: fill_bytes + fill_bytes / 8,
        ..Config::default()
    };
    std::fs::create_dir_all(dir.join("wlog"))?;
    create_image(&DirStore::create(&dir.join("store"))?, IMAGE, IMAGE_BYTES)?;

    let t = Instant::now();
    let (client_bytes, journal_bytes) = fill(&config, dir, fill_bytes)?;
    println!(
        "fill_secs={:.2} client_bytes={client_bytes} journal_bytes={journal_bytes} wlog_bytes={}",
        t.elapsed().as_secs_f64(),
        config.wlog_bytes
    );

    let store: Arc<dyn ObjectStore> = Arc::new(DirStore::open(&dir.join("store"))?);
    let t = Instant::now();
    let vol = Volume::open(options(&config, store, dir))?;
    let recovery = t.elapsed();
    let st = vol.stats();
    let t = Instant::now();
    vol.close()?;
    let close = t.elapsed();
    println!(
        "recovery_secs={:.3} replayed_ops={} journal_bytes={journal_bytes} gib_per_sec={:.2} close_secs={:.2} total_secs={:.2}",
        recovery.as_secs_f64(),
        st.replayed,
        journal_bytes as f64 / (1u64 << 30) as f64 / recovery.as_secs_f64().max(1e-9),
        close.as_secs_f64(),
        (recovery + close).as_secs_f64(),
    );
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let dir_arg = args.next().filter(|s| !s.is_empty()).map(PathBuf::from);
    let fill_mib: u64 = match args.next() {
        Some(s) => s.parse()?,
        None => 1024,
    };
    if fill_mib < 64 {
        return Err("FILL_MIB must be at least 64".into());
    }
    match dir_arg {
        Some(d) => {
            std::fs::create_dir_all(&d)?;
            run(&d, fill_mib)
        }
        None => {
            let tmp = tempfile::tempdir_in("/tmp")?;
            run(tmp.path(), fill_mib)
        }
    }
}
