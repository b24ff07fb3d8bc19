//! Engine behaviour through the public Volume API.

mod common;

use std::path::Path;
use std::sync::Arc;

use lsvd::backend::{DirStore, FaultAction, FaultOp, FaultRule, FaultStore, MemStore, ObjectStore};
use lsvd::config::Config;
use lsvd::volume::image::{create_image, image_info};
use lsvd::volume::{ImageSpec, Volume, VolumeOptions};
use lsvd::ErrorKind;

use common::pattern;

fn config() -> Config {
    Config {
        backend_obj_bytes: 256 << 10,
        wlog_chunk_bytes: 64 << 10,
        wlog_bytes: 4 << 20,
        checkpoint_interval_objs: 3,
        flush_msec: 20,
        backend_write_window: 3,
        io_timeout_msec: 5000,
        ..Config::default()
    }
}

fn open(store: &Arc<dyn ObjectStore>, dir: &Path, c: &Config) -> lsvd::Result<Volume> {
    let mut c = c.clone();
    if c.rcache_dir == Config::default().rcache_dir {
        c.rcache_dir = dir.join("rcache");
        c.rcache_bytes = 4 << 20;
    }
    Volume::open(VolumeOptions {
        config: c,
        store: store.clone(),
        image: "img".into(),
        journal_path: dir.join("img.wlog"),
    })
}

fn setup(size: u64) -> (tempfile::TempDir, Arc<dyn ObjectStore>) {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
    create_image(store.as_ref(), "img", size).unwrap();
    (dir, store)
}

#[test]
fn write_read_close_reopen() {
    let (dir, store) = setup(8 << 20);
    let c = config();
    let v = open(&store, dir.path(), &c).unwrap();
    let mut model = vec![0u8; 8 << 20];
    for i in 0..300u64 {
        let off = (i * 7919 % 2000) * 4096;
        let len = 4096 * (1 + i as usize % 20);
        let len = len.min((8 << 20) - off as usize);
        let d = pattern(i, len);
        v.write(off, &d).unwrap();
        model[off as usize..off as usize + len].copy_from_slice(&d);
    }
    v.trim(4096 * 10, 4096 * 30).unwrap();
    model[4096 * 10..4096 * 40].fill(0);
    let mut buf = vec![0u8; 8 << 20];
    v.read(0, &mut buf).unwrap();
    assert!(buf == model, "read-your-writes");
    v.flush().unwrap();
    let st = v.stats();
    assert!(st.journal_syncs >= 1);
    v.close().unwrap();
    let v = open(&store, dir.path(), &c).unwrap();
    buf.fill(1);
    v.read(0, &mut buf).unwrap();
    assert!(buf == model, "after clean reopen");
    assert_eq!(v.stats().replayed, 0);
    v.close().unwrap();
    // Losing the journal after a clean close loses nothing.
    std::fs::remove_file(dir.path().join("img.wlog")).unwrap();
    let v = open(&store, dir.path(), &c).unwrap();
    v.read(0, &mut buf).unwrap();
    assert!(buf == model, "clean close put everything in the backend");
    v.close().unwrap();
    let info = image_info(store.as_ref(), &ImageSpec::parse("p/img").unwrap()).unwrap();
    assert!(info.clean);
    assert!(!info.checkpoints.is_empty());
}

#[test]
fn crash_keeps_acknowledged_writes() {
    let (dir, store) = setup(4 << 20);
    let c = config();
    let mut model = vec![0u8; 4 << 20];
    for round in 0..5u64 {
        let v = open(&store, dir.path(), &c).unwrap();
        let mut buf = vec![0u8; 4 << 20];
        v.read(0, &mut buf).unwrap();
        assert!(buf == model, "round {round}: recovered image differs");
        for i in 0..100u64 {
            let off = ((i * 31 + round * 7) % 1000) * 4096;
            let d = pattern(round * 1000 + i, 4096 * (1 + i as usize % 3));
            let end = (off as usize + d.len()).min(4 << 20);
            v.write(off, &d[..end - off as usize]).unwrap();
            model[off as usize..end].copy_from_slice(&d[..end - off as usize]);
        }
        v.crash();
    }
}

#[test]
fn second_open_is_refused_and_bad_input_is_rejected() {
    let (dir, store) = setup(1 << 20);
    let c = config();
    let v = open(&store, dir.path(), &c).unwrap();
    let e = open(&store, dir.path(), &c).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Locked, "{e}");
    assert!(e.to_string().contains("already open"), "{e}");
    assert_eq!(
        v.write(100, &[0u8; 512]).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        v.write(0, &[0u8; 100]).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        v.write(1 << 20, &[0u8; 512]).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    let mut b = vec![0u8; 1024];
    assert_eq!(
        v.read((1 << 20) - 512, &mut b).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    assert_eq!(v.trim(0, 0).unwrap_err().kind(), ErrorKind::InvalidInput);
    v.close().unwrap();
    // Unknown image.
    let e = Volume::open(VolumeOptions {
        config: c.clone(),
        store: store.clone(),
        image: "nope".into(),
        journal_path: dir.path().join("nope.wlog"),
    })
    .err()
    .unwrap();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    // A journal of another image is refused.
    create_image(store.as_ref(), "other", 1 << 20).unwrap();
    let e = Volume::open(VolumeOptions {
        config: Config {
            rcache_dir: dir.path().join("rcache"),
            ..c
        },
        store: store.clone(),
        image: "other".into(),
        journal_path: dir.path().join("img.wlog"),
    })
    .err()
    .unwrap();
    assert_eq!(e.kind(), ErrorKind::Mismatch, "{e}");
}

#[test]
fn slow_and_failing_backend_backs_up_then_recovers() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let mem: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
    create_image(mem.as_ref(), "img", 4 << 20).unwrap();
    let fault = Arc::new(FaultStore::new(mem.clone(), 7));
    fault.add_rule(FaultRule::new(FaultOp::Put, FaultAction::Fail(ErrorKind::Io)).times(5));
    fault.add_rule(FaultRule::new(
        FaultOp::Put,
        FaultAction::DelayRandom {
            max: std::time::Duration::from_millis(20),
        },
    ));
    let store: Arc<dyn ObjectStore> = fault.clone();
    let c = config();
    let v = open(&store, dir.path(), &c).unwrap();
    let mut model = vec![0u8; 4 << 20];
    for i in 0..400u64 {
        let off = (i * 13 % 1000) * 4096;
        let d = pattern(i, 8192);
        v.write(off, &d).unwrap();
        model[off as usize..off as usize + 8192].copy_from_slice(&d);
    }
    v.close().unwrap();
    assert!(fault.counts().injected > 5);
    let v = open(&mem, dir.path(), &c).unwrap();
    let mut buf = vec![0u8; 4 << 20];
    v.read(0, &mut buf).unwrap();
    assert!(buf == model);
    v.close().unwrap();
}

#[test]
fn dir_store_end_to_end() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(DirStore::create(&dir.path().join("pool")).unwrap());
    create_image(store.as_ref(), "img", 2 << 20).unwrap();
    let c = config();
    let v = open(&store, dir.path(), &c).unwrap();
    let d = pattern(1, 1 << 20);
    v.write_fua(4096, &d).unwrap();
    v.close().unwrap();
    let v = open(&store, dir.path(), &c).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    v.read(4096, &mut buf).unwrap();
    assert!(buf == d);
    v.close().unwrap();
}

#[test]
fn corrupt_newest_checkpoint_falls_back_to_the_older_one() {
    let (dir, store) = setup(4 << 20);
    let c = config();
    let mut model = vec![0u8; 4 << 20];
    for round in 0..3u64 {
        let v = open(&store, dir.path(), &c).unwrap();
        for i in 0..50u64 {
            let off = ((i * 17 + round * 5) % 1000) * 4096;
            let d = pattern(round * 100 + i, 4096);
            v.write(off, &d).unwrap();
            model[off as usize..off as usize + 4096].copy_from_slice(&d);
        }
        v.close().unwrap();
    }
    let spec = ImageSpec::parse("p/img").unwrap();
    let info = image_info(store.as_ref(), &spec).unwrap();
    assert_eq!(info.checkpoints.len(), 2, "{info:?}");
    let newest = format!("img.{:016x}", info.checkpoints[0]);
    let mut bytes = store.get(&newest, 0, 1 << 30).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    store.put(&newest, &bytes).unwrap();
    // Also lose the journal: the backend alone must give the whole image.
    std::fs::remove_file(dir.path().join("img.wlog")).unwrap();
    let v = open(&store, dir.path(), &c).unwrap();
    let mut buf = vec![0u8; 4 << 20];
    v.read(0, &mut buf).unwrap();
    assert!(
        buf == model,
        "older checkpoint + roll-forward must give the image"
    );
    v.close().unwrap();
}

#[test]
fn corrupt_superblock_is_a_clear_error() {
    let (dir, store) = setup(1 << 20);
    let mut sb = store.get("img", 0, 4096).unwrap();
    sb[20] ^= 1;
    store.put("img", &sb).unwrap();
    let e = open(&store, dir.path(), &config()).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains("superblock"), "{e}");
}

#[test]
fn full_store_throttles_then_fails_without_hanging() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let mem: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
    create_image(mem.as_ref(), "img", 8 << 20).unwrap();
    let fault = Arc::new(FaultStore::new(mem.clone(), 1));
    let store: Arc<dyn ObjectStore> = fault.clone();
    let c = Config {
        wlog_bytes: 2 << 20,
        io_timeout_msec: 700,
        ..config()
    };
    let v = open(&store, dir.path(), &c).unwrap();
    // From now on the store is full.
    fault.add_rule(FaultRule::new(
        FaultOp::Put,
        FaultAction::Fail(ErrorKind::NoSpace),
    ));
    let start = std::time::Instant::now();
    let mut err = None;
    for i in 0..2000u64 {
        if let Err(e) = v.write((i % 2000) * 4096, &pattern(i, 4096)) {
            err = Some(e);
            break;
        }
    }
    let e = err.expect("writes must fail once the journal is full");
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(start.elapsed() < std::time::Duration::from_secs(30));
    // close gives up instead of hanging; the journal keeps the data.
    let e = v.close().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
}

#[test]
fn unreachable_store_fails_open_clearly() {
    let (dir, store) = setup(1 << 20);
    let fault = Arc::new(FaultStore::new(store.clone(), 1));
    fault.add_rule(FaultRule::new(
        FaultOp::Get,
        FaultAction::Fail(ErrorKind::Io),
    ));
    let s: Arc<dyn ObjectStore> = fault;
    let e = open(&s, dir.path(), &config()).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    assert!(e.to_string().contains("img"), "{e}");
}

/// Once the backend says this server is fenced (another server broke its
/// lock; RADOS answers ESHUTDOWN), nothing is retried: writes, flushes and
/// close fail at once with kind `Fenced`, and nothing more reaches the store.
#[test]
fn fenced_server_fails_fast_and_writes_nothing_more() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let mem: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
    create_image(mem.as_ref(), "img", 4 << 20).unwrap();
    let fault = Arc::new(FaultStore::new(mem.clone(), 3));
    let store: Arc<dyn ObjectStore> = fault.clone();
    let c = Config {
        hard_flush: true,
        io_timeout_msec: 60_000,
        ..config()
    };
    let v = open(&store, dir.path(), &c).unwrap();
    v.write(0, &pattern(1, 65536)).unwrap();
    v.flush().unwrap();
    let before =
        lsvd::volume::image::image_info(mem.as_ref(), &ImageSpec::parse("p/img").unwrap()).unwrap();
    fault.add_rule(FaultRule::new(
        FaultOp::Put,
        FaultAction::Fail(ErrorKind::Fenced),
    ));
    let start = std::time::Instant::now();
    v.write(65536, &pattern(2, 65536)).unwrap();
    let e = v.flush().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Fenced, "{e}");
    assert!(e.to_string().contains("fenced"), "{e}");
    let e = v.write(0, &pattern(3, 4096)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Fenced, "{e}");
    let e = v.close().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Fenced, "{e}");
    // Far below io_timeout_msec: a fenced server does not retry.
    assert!(
        start.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    let after = image_info(mem.as_ref(), &ImageSpec::parse("p/img").unwrap()).unwrap();
    assert_eq!(before.objects, after.objects);
    assert_eq!(before.stored_bytes, after.stored_bytes);
}

fn stored_bytes(store: &Arc<dyn ObjectStore>) -> u64 {
    store
        .list("img.")
        .unwrap()
        .iter()
        .map(|n| store.stat(n).unwrap().unwrap_or(0))
        .sum()
}

/// Overwrite most of the image several times, then a forced GC: data stays
/// exact (through the map, after a crash, and with the newest checkpoint
/// corrupt so the older one plus roll-forward over GC objects is used),
/// cleaned objects are deleted, and the counters say so.
#[test]
fn gc_now_cleans_deletes_and_survives_crash_and_checkpoint_fallback() {
    let size = 8u64 << 20;
    let (dir, store) = setup(size);
    let c = Config {
        no_gc: true,
        gc_threshold: 90,
        gc_buffer_bytes: 128 << 10,
        // FLUSH waits for the backend: GC then sees every write applied.
        hard_flush: true,
        ..config()
    };
    let v = open(&store, dir.path(), &c).unwrap();
    let mut model = vec![0u8; size as usize];
    for round in 0..4u64 {
        for i in 0..200u64 {
            let off = ((i * 7919 + round * 31) % 1500) * 4096;
            let len = 4096 * (1 + (i as usize % 4));
            let d = pattern(round * 1000 + i, len);
            v.write(off, &d).unwrap();
            model[off as usize..off as usize + len].copy_from_slice(&d);
        }
    }
    v.trim(0, 64 * 4096).unwrap();
    model[..64 * 4096].fill(0);
    v.flush().unwrap();
    let before = stored_bytes(&store);
    let r = v.gc_now().unwrap();
    assert!(r.objects_cleaned > 0, "{r:?}");
    assert!(r.bytes_copied > 0, "{r:?}");
    assert!(r.objects_deleted > 0 && r.bytes_freed > 0, "{r:?}");
    let st = v.stats();
    assert!(st.gc_objects > 0 && st.gc_bytes > 0, "{st:?}");
    assert_eq!(st.gc_deleted, r.objects_deleted);
    assert_eq!(st.gc_freed_bytes, r.bytes_freed);
    let after = stored_bytes(&store);
    assert!(
        after < before,
        "stored bytes {before} before GC, {after} after"
    );
    let mut buf = vec![0u8; size as usize];
    v.read(0, &mut buf).unwrap();
    assert!(buf == model, "reads after GC");
    // A second run finds nothing more to clean.
    let r2 = v.gc_now().unwrap();
    assert_eq!(r2.objects_cleaned, 0, "{r2:?}");
    // More writes after GC, then a crash: roll-forward passes GC objects.
    for i in 0..100u64 {
        let off = (i * 13 % 1800) * 4096;
        let d = pattern(77_000 + i, 4096);
        v.write(off, &d).unwrap();
        model[off as usize..off as usize + 4096].copy_from_slice(&d);
    }
    v.flush().unwrap();
    v.crash();
    let v = open(&store, dir.path(), &c).unwrap();
    buf.fill(1);
    v.read(0, &mut buf).unwrap();
    assert!(buf == model, "after crash and reopen");
    v.close().unwrap();
    let spec = ImageSpec::parse("p/img").unwrap();
    let info = image_info(store.as_ref(), &spec).unwrap();
    assert_eq!(info.checkpoints.len(), 2, "{info:?}");
    // The newest checkpoint corrupt and the journal lost: the older
    // checkpoint and roll-forward still give the image, GC holes and all.
    let newest = format!("img.{:016x}", info.checkpoints[0]);
    let mut bytes = store.get(&newest, 0, 1 << 30).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    store.put(&newest, &bytes).unwrap();
    std::fs::remove_file(dir.path().join("img.wlog")).unwrap();
    let v = open(&store, dir.path(), &c).unwrap();
    buf.fill(1);
    v.read(0, &mut buf).unwrap();
    assert!(buf == model, "older checkpoint after GC");
    v.close().unwrap();
}

/// With every listed checkpoint unusable on an image GC has run on, open
/// refuses (Corrupt) and deletes nothing.
#[test]
fn gc_image_without_a_usable_checkpoint_is_refused_and_untouched() {
    let size = 4u64 << 20;
    let (dir, store) = setup(size);
    let c = Config {
        no_gc: true,
        gc_threshold: 90,
        ..config()
    };
    let v = open(&store, dir.path(), &c).unwrap();
    for round in 0..3u64 {
        for i in 0..100u64 {
            v.write((i % 300) * 4096, &pattern(round * 100 + i, 4096))
                .unwrap();
        }
    }
    v.gc_now().unwrap();
    v.close().unwrap();
    let spec = ImageSpec::parse("p/img").unwrap();
    let info = image_info(store.as_ref(), &spec).unwrap();
    for c in &info.checkpoints {
        let name = format!("img.{c:016x}");
        store.put(&name, b"garbage").unwrap();
    }
    let mut before = store.list("img").unwrap();
    before.sort();
    let e = open(&store, dir.path(), &c).err().expect("open must fail");
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains("garbage collected"), "{e}");
    let mut after = store.list("img").unwrap();
    after.sort();
    assert_eq!(before, after, "nothing may be deleted");
}

/// Background GC (no forced run) cleans on its own while writes go on.
#[test]
fn background_gc_runs_and_keeps_data() {
    let size = 4u64 << 20;
    let (dir, store) = setup(size);
    let c = Config {
        gc_threshold: 75,
        gc_interval_msec: 10,
        gc_rate_bytes: 8 << 20,
        ..config()
    };
    let v = open(&store, dir.path(), &c).unwrap();
    let mut model = vec![0u8; size as usize];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut i = 0u64;
    while v.stats().gc_deleted == 0 && std::time::Instant::now() < deadline {
        let off = (i * 7919 % 1000) * 4096;
        let d = pattern(i, 4096);
        v.write(off, &d).unwrap();
        model[off as usize..off as usize + 4096].copy_from_slice(&d);
        i += 1;
    }
    let st = v.stats();
    assert!(
        st.gc_objects > 0 && st.gc_deleted > 0,
        "{st:?} after {i} writes"
    );
    let mut buf = vec![0u8; size as usize];
    v.read(0, &mut buf).unwrap();
    assert!(buf == model);
    v.close().unwrap();
    let v = open(&store, dir.path(), &c).unwrap();
    v.read(0, &mut buf).unwrap();
    assert!(buf == model, "after reopen");
    v.close().unwrap();
}
