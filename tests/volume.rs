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
    common::small_config()
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
        io_log: None,
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
        io_log: None,
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
        io_log: None,
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

/// The newer of two listed checkpoints has lost a piece. Recovery falls
/// back to the older one and rolls forward past the lost piece (it holds
/// no data: the superblock named it only once everything below it was
/// durable), so nothing above it is deleted and nothing is lost, also with
/// the journal gone.
#[test]
fn lost_piece_of_the_newest_checkpoint_deletes_nothing_above_it() {
    let (dir, store) = setup(4 << 20);
    let c = config();
    let mut model = vec![0u8; 4 << 20];
    let mut scribble = |v: &Volume, seed: u64, n: u64| {
        for i in 0..n {
            let off = ((i * 17 + seed * 5) % 1000) * 4096;
            let d = pattern(seed * 1000 + i, 8192);
            v.write(off, &d).unwrap();
            model[off as usize..off as usize + 8192].copy_from_slice(&d);
        }
    };
    for round in 0..2 {
        let v = open(&store, dir.path(), &c).unwrap();
        scribble(&v, round, 100);
        v.close().unwrap();
    }
    let spec = ImageSpec::parse("p/img").unwrap();
    let listed = image_info(store.as_ref(), &spec).unwrap().checkpoints;
    assert_eq!(listed.len(), 2, "{listed:?}");
    // Objects above the newest checkpoint, applied in the backend (FLUSH
    // waits for it), and no further checkpoint.
    let c3 = Config {
        hard_flush: true,
        checkpoint_interval_objs: 1000,
        ..c.clone()
    };
    let v = open(&store, dir.path(), &c3).unwrap();
    scribble(&v, 2, 200);
    v.flush().unwrap();
    v.crash();
    assert_eq!(
        image_info(store.as_ref(), &spec).unwrap().checkpoints,
        listed
    );
    let newest = format!("img.{:016x}", listed[0]);
    let above = store
        .list("img.")
        .unwrap()
        .into_iter()
        .filter(|n| *n > newest)
        .count();
    assert!(above >= 3, "{above} objects above the newest checkpoint");
    store.delete(&newest).unwrap();
    let mut before = store.list("img.").unwrap();
    std::fs::remove_file(dir.path().join("img.wlog")).unwrap();
    let v = open(&store, dir.path(), &c).unwrap();
    let mut buf = vec![0u8; 4 << 20];
    v.read(0, &mut buf).unwrap();
    assert!(
        buf == model,
        "older checkpoint + roll-forward past the lost piece"
    );
    v.crash();
    // Nothing deleted; the lost piece's sequence holds a tombstone now.
    before.push(newest);
    before.sort();
    let mut after = store.list("img.").unwrap();
    after.retain(|n| before.contains(n));
    assert_eq!(after, before, "no object may be deleted");
}

/// A checkpoint that does not load leaves the superblock's list at the open
/// that falls back past it. Listed, it would push the good fallback out at
/// the next publish (whose pieces are then tombstoned), and an image GC has
/// run on would be refused once the new checkpoint went bad too.
#[test]
fn unloadable_checkpoint_leaves_the_list_and_keeps_the_fallback() {
    let size = 4u64 << 20;
    let (dir, store) = setup(size);
    let c = Config {
        no_gc: true,
        gc_threshold: 90,
        // Checkpoints only where the test says (GC, close).
        checkpoint_interval_objs: 1000,
        ..config()
    };
    let spec = ImageSpec::parse("p/img").unwrap();
    let listed = || image_info(store.as_ref(), &spec).unwrap().checkpoints;
    let corrupt = |seq: u64| {
        let name = format!("img.{seq:016x}");
        let mut bytes = store.get(&name, 0, 1 << 30).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        store.put(&name, &bytes).unwrap();
    };
    let mut model = vec![0u8; size as usize];
    let mut scribble = |v: &Volume, seed: u64| {
        for i in 0..100u64 {
            let off = (i % 300) * 4096;
            let d = pattern(seed * 1000 + i, 4096);
            v.write(off, &d).unwrap();
            model[off as usize..off as usize + 4096].copy_from_slice(&d);
        }
    };
    let v = open(&store, dir.path(), &c).unwrap();
    for round in 0..3 {
        scribble(&v, round);
    }
    // GC has run: without a usable checkpoint the image is refused.
    v.gc_now().unwrap();
    v.close().unwrap();
    let first = listed();
    assert_eq!(first.len(), 2, "{first:?}");
    corrupt(first[0]);
    let v = open(&store, dir.path(), &c).unwrap();
    assert_eq!(
        listed(),
        [first[1]],
        "the unloadable checkpoint is unlisted"
    );
    scribble(&v, 3);
    v.close().unwrap();
    let second = listed();
    assert_eq!(second.len(), 2, "{second:?}");
    assert_eq!(second[1], first[1], "the good fallback stays listed");
    // The new checkpoint goes bad too: the fallback still opens the image.
    corrupt(second[0]);
    std::fs::remove_file(dir.path().join("img.wlog")).unwrap();
    let v = open(&store, dir.path(), &c).unwrap();
    let mut buf = vec![0u8; size as usize];
    v.read(0, &mut buf).unwrap();
    assert!(buf == model, "the fallback + roll-forward give the image");
    v.close().unwrap();
    assert!(!listed().contains(&second[0]), "{:?}", listed());
}

/// FUA on a trim or write-zeroes makes it durable across a host crash
/// when it completes, like FUA on a write: it completes only after a
/// journal fdatasync, or after its record was written with RWF_DSYNC
/// once everything before it was synced (without FUA neither happens).
/// Also through the non-blocking submit the ublk queues use.
#[test]
fn fua_trim_and_write_zeroes_complete_after_a_journal_sync() {
    let (dir, store) = setup(1 << 20);
    let v = open(&store, dir.path(), &config()).unwrap();
    v.write(0, &pattern(1, 256 << 10)).unwrap();
    // Durability points: fdatasyncs and RWF_DSYNC record writes.
    let syncs = || {
        let s = v.stats();
        s.journal_syncs + s.journal_dsync_writes
    };
    let s0 = syncs();
    v.trim(0, 4096).unwrap();
    v.write_zeroes(4096, 4096).unwrap();
    assert_eq!(syncs(), s0, "no journal sync without FUA");
    v.trim_fua(8192, 4096).unwrap();
    let s1 = syncs();
    assert!(s1 > s0, "a FUA trim waits for a journal sync");
    v.write_zeroes_fua(3 * 4096, 4096).unwrap();
    let s2 = syncs();
    assert!(s2 > s1, "a FUA write-zeroes waits for a journal sync");
    for zero in [false, true] {
        let before = syncs();
        let (tx, rx) = std::sync::mpsc::channel();
        let mut done: Option<lsvd::volume::Completion> = Some(Box::new(move |r| {
            tx.send(r).unwrap();
        }));
        let off = if zero { 5 * 4096 } else { 4 * 4096 };
        let submitted = v
            .try_submit_discard(off, 4096, zero, true, &mut done)
            .unwrap();
        assert!(submitted.is_some() && done.is_none());
        rx.recv().unwrap().unwrap();
        assert!(syncs() > before, "zero {zero}: completed before a sync");
    }
    let mut buf = vec![1u8; 6 * 4096];
    v.read(0, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    v.close().unwrap();
}

/// With `hard_flush`, FUA means what FLUSH means there: a FUA write, trim
/// or write-zeroes returns only once the backend holds it (and everything
/// before it), so it survives the loss of the journal. Batches are never
/// closed by age here: only the FUA itself can have put them.
#[test]
fn hard_flush_fua_returns_once_the_backend_holds_it() {
    let (dir, store) = setup(1 << 20);
    let c = Config {
        hard_flush: true,
        flush_msec: 600_000,
        ..config()
    };
    let v = open(&store, dir.path(), &c).unwrap();
    let mut model = vec![0u8; 1 << 20];
    let d = pattern(1, 64 << 10);
    v.write(0, &d).unwrap();
    model[..64 << 10].copy_from_slice(&d);
    let d = pattern(2, 8192);
    v.write_fua(256 << 10, &d).unwrap();
    model[256 << 10..(256 << 10) + 8192].copy_from_slice(&d);
    v.crash();
    std::fs::remove_file(dir.path().join("img.wlog")).unwrap();
    let v = open(&store, dir.path(), &c).unwrap();
    let mut buf = vec![1u8; 1 << 20];
    v.read(0, &mut buf).unwrap();
    assert!(
        buf == model,
        "a FUA write (and what came before) is in the backend"
    );
    v.trim_fua(0, 4096).unwrap();
    v.write_zeroes_fua(256 << 10, 4096).unwrap();
    model[..4096].fill(0);
    model[256 << 10..(256 << 10) + 4096].fill(0);
    v.crash();
    std::fs::remove_file(dir.path().join("img.wlog")).unwrap();
    let v = open(&store, dir.path(), &c).unwrap();
    v.read(0, &mut buf).unwrap();
    assert!(
        buf == model,
        "a FUA trim and write-zeroes are in the backend"
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
    // Until GC has both copied (a GC object) and deleted: a deletion alone
    // can come first, of an object that died whole (a retired checkpoint
    // piece or a tombstone: its row stays until GC deletes it).
    let done = |st: &lsvd::volume::VolumeStats| st.gc_objects > 0 && st.gc_deleted > 0;
    while !done(&v.stats()) && std::time::Instant::now() < deadline {
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

/// Resize: read all of `v` and compare with `model` (which must have the
/// volume's size).
fn assert_reads(v: &Volume, model: &[u8], what: &str) {
    assert_eq!(v.size_bytes(), model.len() as u64, "{what}: size");
    let mut buf = vec![1u8; model.len()];
    v.read(0, &mut buf).unwrap();
    if buf != model {
        let first = buf.iter().zip(model).position(|(a, b)| a != b).unwrap();
        panic!("{what}: first difference at byte {first}");
    }
}

/// Grow: the new range reads as zeros, writes past the old end work, and
/// the new size and data survive close, crash and a lost journal.
#[test]
fn resize_grow_then_write_past_the_old_end() {
    let (dir, store) = setup(4 << 20);
    let c = config();
    let v = open(&store, dir.path(), &c).unwrap();
    let mut model = pattern(1, 4 << 20);
    v.write(0, &model).unwrap();
    // Beyond the end: refused before the grow.
    let e = v.write(4 << 20, &[7u8; 4096]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    let r = v.resize(8 << 20, false).unwrap();
    assert_eq!(
        (r.old_bytes, r.new_bytes, r.changed()),
        (4 << 20, 8 << 20, true)
    );
    model.resize(8 << 20, 0);
    assert_reads(&v, &model, "after grow");
    let d = pattern(2, 64 << 10);
    let off = (8 << 20) - (64 << 10) - 4096;
    v.write(off as u64, &d).unwrap();
    model[off..off + d.len()].copy_from_slice(&d);
    assert_reads(&v, &model, "after write past the old end");
    // The superblock has the new size before anything past the old end
    // was accepted: a crash keeps both.
    v.flush().unwrap();
    v.crash();
    let info = image_info(store.as_ref(), &ImageSpec::parse("p/img").unwrap()).unwrap();
    assert_eq!(info.size_bytes, 8 << 20);
    let v = open(&store, dir.path(), &c).unwrap();
    assert_reads(&v, &model, "after crash");
    v.close().unwrap();
    std::fs::remove_file(dir.path().join("img.wlog")).unwrap();
    let v = open(&store, dir.path(), &c).unwrap();
    assert_reads(&v, &model, "after close and a lost journal");
    v.close().unwrap();
}

/// Bad sizes and a shrink without `allow_shrink` are refused with clear
/// errors and change nothing; the same size is a no-op.
#[test]
fn resize_refuses_bad_sizes_and_an_unallowed_shrink() {
    let (dir, store) = setup(4 << 20);
    let v = open(&store, dir.path(), &config()).unwrap();
    for (size, needle) in [
        (0, "positive multiple of 4096"),
        (4 << 20 | 512, "positive multiple of 4096"),
        ((1 << 50) + 4096, "1 PiB"),
    ] {
        let e = v.resize(size, true).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        let m = e.to_string();
        assert!(m.contains(needle) && m.contains("resize image img"), "{m}");
    }
    let e = v.resize(2 << 20, false).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    let m = e.to_string();
    assert!(
        m.contains("--allow-shrink")
            && m.contains(&(4u64 << 20).to_string())
            && m.contains(&(2u64 << 20).to_string()),
        "{m}"
    );
    assert_eq!(v.size_bytes(), 4 << 20);
    let r = v.resize(4 << 20, false).unwrap();
    assert!(!r.changed(), "{r:?}");
    let before = store.get("img", 0, 4096).unwrap();
    let r = v.resize(4 << 20, true).unwrap();
    assert!(!r.changed(), "{r:?}");
    assert_eq!(
        store.get("img", 0, 4096).unwrap(),
        before,
        "a no-op rewrote the superblock"
    );
    v.close().unwrap();
    let info = image_info(store.as_ref(), &ImageSpec::parse("p/img").unwrap()).unwrap();
    assert_eq!(info.size_bytes, 4 << 20);
}

/// How a shrunk volume is left before it is grown again.
#[derive(Clone, Copy, Debug)]
enum AfterShrink {
    Nothing,
    Close,
    Crash,
    CrashAndLoseJournal,
    Gc,
    GcThenCrash,
}

/// Shrink discards the tail: after growing back, the tail reads as zeros
/// (the head is intact), in the same session, after close, after a crash,
/// after a crash that also loses the journal (the trim was in the backend
/// before the smaller size was written), and after GC.
#[test]
fn resize_shrink_discards_the_tail() {
    for how in [
        AfterShrink::Nothing,
        AfterShrink::Close,
        AfterShrink::Crash,
        AfterShrink::CrashAndLoseJournal,
        AfterShrink::Gc,
        AfterShrink::GcThenCrash,
    ] {
        let size = 2usize << 20;
        let small = 768usize << 10;
        let (dir, store) = setup(size as u64);
        let c = Config {
            no_gc: true,
            gc_threshold: 90,
            ..config()
        };
        let v = open(&store, dir.path(), &c).unwrap();
        let mut model = pattern(3, size);
        v.write(0, &model).unwrap();
        // Overwrite part of the head so GC has something to clean.
        for i in 0..16 {
            let d = pattern(100 + i, 16 << 10);
            let off = (i as usize * 7 % 48) * (16 << 10);
            v.write(off as u64, &d).unwrap();
            model[off..off + d.len()].copy_from_slice(&d);
        }
        // Acknowledged, not flushed: the shrink must order itself after it.
        let r = v.resize(small as u64, true).unwrap();
        assert_eq!(
            (r.old_bytes, r.new_bytes),
            (size as u64, small as u64),
            "{how:?}"
        );
        model.truncate(small);
        assert_reads(&v, &model, &format!("{how:?}: after shrink"));
        let mut b = vec![0u8; 4096];
        assert_eq!(
            v.read(small as u64, &mut b).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        assert_eq!(
            v.write(small as u64, &b).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        assert_eq!(
            v.trim(0, small as u64 + 4096).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        let info = image_info(store.as_ref(), &ImageSpec::parse("p/img").unwrap()).unwrap();
        assert_eq!(info.size_bytes, small as u64, "{how:?}: superblock");
        let v = match how {
            AfterShrink::Nothing => v,
            AfterShrink::Close => {
                v.close().unwrap();
                open(&store, dir.path(), &c).unwrap()
            }
            AfterShrink::Crash => {
                v.crash();
                open(&store, dir.path(), &c).unwrap()
            }
            AfterShrink::CrashAndLoseJournal => {
                v.crash();
                std::fs::remove_file(dir.path().join("img.wlog")).unwrap();
                open(&store, dir.path(), &c).unwrap()
            }
            AfterShrink::Gc | AfterShrink::GcThenCrash => {
                v.flush().unwrap();
                let r = v.gc_now().unwrap();
                assert!(r.objects_cleaned > 0, "{how:?}: {r:?}");
                if matches!(how, AfterShrink::GcThenCrash) {
                    v.crash();
                    open(&store, dir.path(), &c).unwrap()
                } else {
                    v
                }
            }
        };
        assert_reads(&v, &model, &format!("{how:?}: before the grow"));
        v.resize(size as u64, false).unwrap();
        model.resize(size, 0);
        assert_reads(&v, &model, &format!("{how:?}: grown back"));
        v.crash();
        let v = open(&store, dir.path(), &c).unwrap();
        assert_reads(&v, &model, &format!("{how:?}: grown back, crashed"));
        v.close().unwrap();
    }
}

/// A crash after each step of a shrink-grow cycle (tail written, shrunk,
/// grown, written again), each time reopened from the journal: every step
/// keeps what it acknowledged and the discarded tail never comes back.
#[test]
fn resize_crash_after_each_step() {
    let (dir, store) = setup(4 << 20);
    let c = config();
    let mut model = vec![0u8; 4 << 20];
    let v = open(&store, dir.path(), &c).unwrap();
    let tail = pattern(5, 1 << 20);
    v.write(3 << 20, &tail).unwrap();
    model[3 << 20..].copy_from_slice(&tail);
    v.flush().unwrap();
    v.crash();
    let v = open(&store, dir.path(), &c).unwrap();
    assert_reads(&v, &model, "tail written");
    v.resize(2 << 20, true).unwrap();
    model.truncate(2 << 20);
    v.crash();
    let v = open(&store, dir.path(), &c).unwrap();
    assert_reads(&v, &model, "shrunk");
    v.resize(6 << 20, false).unwrap();
    model.resize(6 << 20, 0);
    v.crash();
    let v = open(&store, dir.path(), &c).unwrap();
    assert_reads(&v, &model, "grown");
    let d = pattern(6, 2 << 20);
    v.write(4 << 20, &d).unwrap();
    model[4 << 20..].copy_from_slice(&d);
    v.flush().unwrap();
    v.crash();
    let v = open(&store, dir.path(), &c).unwrap();
    assert_reads(&v, &model, "written past the old end");
    v.close().unwrap();
}

/// The safety net at open: data beyond the superblock's size, in the
/// backend's map or in journal records (as a shrink that never trimmed,
/// or a lost trim, would leave) is never readable, and a later grow shows
/// zeros there.
#[test]
fn resize_open_clips_map_and_journal_beyond_the_end() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let mem: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
    create_image(mem.as_ref(), "img", 8 << 20).unwrap();
    let c = config();
    // In the backend: written and closed.
    let v = open(&mem, dir.path(), &c).unwrap();
    let all = pattern(7, 8 << 20);
    v.write(0, &all).unwrap();
    v.close().unwrap();
    // In the journal only: the backend refuses every data put, then a
    // crash.
    let fault = Arc::new(FaultStore::new(mem.clone(), 1));
    fault.add_rule(FaultRule::fail(FaultOp::Put, ErrorKind::Io).matching("img."));
    let faulty: Arc<dyn ObjectStore> = fault.clone();
    let v = open(&faulty, dir.path(), &c).unwrap();
    let late = pattern(8, 2 << 20);
    v.write(5 << 20, &late).unwrap();
    v.flush().unwrap();
    v.crash();
    // The superblock says 4 MiB: as if shrunk without a trim.
    let mut sb = lsvd::volume::image::read_superblock(mem.as_ref(), "img").unwrap();
    sb.size_bytes = 4 << 20;
    sb.update_seq += 1;
    mem.put("img", &sb.encode()).unwrap();
    let v = open(&mem, dir.path(), &c).unwrap();
    assert_eq!(
        v.stats().replayed,
        (2 << 20) / c.wlog_chunk_bytes,
        "the journal writes were replayed"
    );
    let mut model = all[..4 << 20].to_vec();
    assert_reads(&v, &model, "clipped");
    v.resize(8 << 20, false).unwrap();
    model.resize(8 << 20, 0);
    assert_reads(&v, &model, "grown over the clipped range");
    v.crash();
    let v = open(&mem, dir.path(), &c).unwrap();
    assert_reads(&v, &model, "grown, crashed");
    v.close().unwrap();
}

/// 42 writes of 64 KiB at distinct offsets, one object each, a checkpoint
/// every 4 objects; returns the model of the disk.
fn forty_two_objects(v: &Volume) -> Vec<u8> {
    const W: u64 = 64 << 10;
    let mut model = vec![0u8; 8 << 20];
    for i in 0..42u64 {
        let d = pattern(i + 1, W as usize);
        v.write(i * W, &d).unwrap();
        model[(i * W) as usize..((i + 1) * W) as usize].copy_from_slice(&d);
    }
    model
}

fn one_object_per_write() -> Config {
    Config {
        backend_obj_bytes: 64 << 10,
        wlog_chunk_bytes: 64 << 10,
        wlog_bytes: 32 << 20,
        checkpoint_interval_objs: 4,
        backend_write_window: 1,
        no_rcache: true,
        ..config()
    }
}

/// Flip one byte at `at` of object `seq` (bit rot at rest).
fn rot(store: &MemStore, seq: u64, at: usize) {
    let name = lsvd::volume::image::object_name("img", lsvd::units::ObjSeq(seq));
    let mut b = store.get(&name, 0, 64 << 20).unwrap();
    b[at] ^= 1;
    store.put(&name, &b).unwrap();
}

/// Found by review (ordering 29): the newest listed checkpoint is corrupt
/// and a data object between it and the older one is lost. The open that
/// falls back finds the gap there; if it deleted the objects
/// above it and reused their sequences (the journal replays into new
/// objects) before persisting the filtered checkpoint list, a crash before
/// that superblock write left the corrupt checkpoint listed over a
/// sequence that now held data, and the next recovery took that data
/// object for a lost piece and put a tombstone over it: flushed writes
/// gone. Now the filtered list is durable before anything is deleted, and
/// a data object at a failed piece's sequence is rolled forward, never
/// overwritten.
#[test]
fn fallback_open_that_dies_before_its_superblock_write_loses_nothing() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let mem = Arc::new(MemStore::new());
    let store: Arc<dyn ObjectStore> = mem.clone();
    create_image(store.as_ref(), "img", 8 << 20).unwrap();
    let c = one_object_per_write();
    let v = open(&store, dir.path(), &c).unwrap();
    let model = forty_two_objects(&v);
    v.flush().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    v.crash();
    let sb = lsvd::volume::image::read_superblock(store.as_ref(), "img").unwrap();
    assert_eq!(sb.checkpoints.len(), 2, "{:?}", sb.checkpoints);
    let (newest, older) = (sb.checkpoints[0], sb.checkpoints[1]);
    let g = older.seq.0 + older.pieces as u64;
    assert!(g < newest.seq.0);
    rot(&mem, newest.seq.0, 100);
    mem.delete(&lsvd::volume::image::object_name(
        "img",
        lsvd::units::ObjSeq(g),
    ))
    .unwrap();

    // The open that falls back dies at its first superblock write.
    let fault = Arc::new(FaultStore::new(store.clone(), 1));
    fault.add_rule(FaultRule::fail(FaultOp::Put, ErrorKind::Io).named("img"));
    let f: Arc<dyn ObjectStore> = fault.clone();
    let quick = Config {
        io_timeout_msec: 2000,
        checkpoint_interval_objs: 1000,
        ..c.clone()
    };
    assert!(open(&f, dir.path(), &quick).is_err());

    let v = open(&store, dir.path(), &c).unwrap();
    let mut img = vec![0u8; 8 << 20];
    v.read(0, &mut img).unwrap();
    v.close().unwrap();
    let lost: Vec<u64> = (0..42u64)
        .filter(|i| {
            let r = (i * (64 << 10)) as usize..((i + 1) * (64 << 10)) as usize;
            img[r.clone()] != model[r]
        })
        .collect();
    assert!(lost.is_empty(), "flushed writes lost: {lost:?}");
}

/// Found by review: any failure to load the newest listed checkpoint, a
/// transient store error included, made recovery roll forward from the
/// older one; one rotten object header between them then became a gap that
/// deleted every newer object (which a clean close had already taken out
/// of the journal). Now only a missing or corrupt checkpoint is unusable;
/// a store that does not answer fails the open and changes nothing.
#[test]
fn transient_error_loading_the_newest_checkpoint_fails_the_open_and_deletes_nothing() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let mem = Arc::new(MemStore::new());
    let store: Arc<dyn ObjectStore> = mem.clone();
    create_image(store.as_ref(), "img", 8 << 20).unwrap();
    // The two newest checkpoints must have data objects between them. A
    // background checkpoint that happens to run after the last destage
    // (a loaded machine) leaves none before the close's: so no background
    // checkpoints, and two sessions, each closed with its checkpoint.
    let c = Config {
        checkpoint_interval_objs: 1 << 40,
        ..one_object_per_write()
    };
    let v = open(&store, dir.path(), &c).unwrap();
    let first = forty_two_objects(&v);
    v.close().unwrap();
    let v = open(&store, dir.path(), &c).unwrap();
    let mut model = first.clone();
    for i in 0..21u64 {
        let d = pattern(100 + i, 64 << 10);
        v.write(i * (64 << 10), &d).unwrap();
        model[(i * (64 << 10)) as usize..((i + 1) * (64 << 10)) as usize].copy_from_slice(&d);
    }
    v.close().unwrap();
    let sb = lsvd::volume::image::read_superblock(store.as_ref(), "img").unwrap();
    let (newest, older) = (sb.checkpoints[0], sb.checkpoints[1]);
    let g = older.seq.0 + older.pieces as u64;
    assert!(g < newest.seq.0, "{:?}", sb.checkpoints);
    rot(&mem, g, 40);
    let objects = mem.list("img.").unwrap().len();

    let fault = Arc::new(FaultStore::new(store.clone(), 1));
    fault.add_rule(
        FaultRule::fail(FaultOp::Stat, ErrorKind::Io)
            .named(lsvd::volume::image::object_name("img", newest.seq))
            .times(1),
    );
    let f: Arc<dyn ObjectStore> = fault.clone();
    let e = open(&f, dir.path(), &c).err().expect("the open fails");
    assert_eq!(e.kind(), ErrorKind::Io, "{e:?}");
    assert!(e.to_string().contains("cannot read checkpoint"), "{e}");
    assert_eq!(mem.list("img.").unwrap().len(), objects, "nothing deleted");

    // The next open (the store answers) loads the newest checkpoint: only
    // the rotten object's range can fail to read.
    let v = open(&store, dir.path(), &c).unwrap();
    let good = (0..42u64)
        .filter(|i| {
            let mut b = vec![0u8; 64 << 10];
            let r = (i * (64 << 10)) as usize..((i + 1) * (64 << 10)) as usize;
            v.read(i * (64 << 10), &mut b).is_ok() && b[..] == model[r]
        })
        .count();
    v.close().unwrap();
    assert!(good >= 41, "{good} of 42 writes read back");
}

/// Bit rot in the header of an object the roll-forward must pass: the
/// open is refused naming it, and nothing is deleted (taking it for the end
/// of the log would delete every later object, acknowledged writes long
/// out of the journal). Deleting the object gives it up, and the next open
/// keeps the image as it was before that object.
#[test]
fn rotten_object_in_the_roll_forward_refuses_the_open_and_deletes_nothing() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let mem = Arc::new(MemStore::new());
    let store: Arc<dyn ObjectStore> = mem.clone();
    create_image(store.as_ref(), "img", 8 << 20).unwrap();
    // No checkpoint until the close: every object is rolled forward.
    let c = Config {
        checkpoint_interval_objs: 1000,
        ..one_object_per_write()
    };
    let v = open(&store, dir.path(), &c).unwrap();
    let model = forty_two_objects(&v);
    v.flush().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    v.crash();
    // The journal is gone too: only the objects hold the data.
    std::fs::remove_file(dir.path().join("img.wlog")).unwrap();
    let names = mem.list("img.").unwrap();
    assert!(names.len() >= 42, "{names:?}");
    rot(&mem, 20, 40);
    let e = open(&store, dir.path(), &c).err().expect("refused");
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("img.0000000000000014") && msg.contains("Nothing was deleted"),
        "{msg}"
    );
    assert_eq!(mem.list("img.").unwrap(), names, "nothing deleted");
    // The operator gives the object up: the image is what it was before it.
    mem.delete("img.0000000000000014").unwrap();
    let v = open(&store, dir.path(), &c).unwrap();
    let mut img = vec![0u8; 8 << 20];
    v.read(0, &mut img).unwrap();
    v.close().unwrap();
    let w = 64usize << 10;
    assert!(
        img[..19 * w] == model[..19 * w],
        "the writes before it are kept"
    );
    assert!(
        img[19 * w..].iter().all(|&b| b == 0),
        "a prefix: nothing after it"
    );
}

/// A closed image (no GC, no cache, hard_flush) with 2 MiB written at 0.
fn closed_image_with_data() -> (
    tempfile::TempDir,
    Arc<MemStore>,
    Arc<dyn ObjectStore>,
    Config,
) {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let mem = Arc::new(MemStore::new());
    let store: Arc<dyn ObjectStore> = mem.clone();
    create_image(store.as_ref(), "img", 8 << 20).unwrap();
    let c = Config {
        no_gc: true,
        no_rcache: true,
        hard_flush: true,
        ..config()
    };
    let v = open(&store, dir.path(), &c).unwrap();
    v.write(0, &pattern(1, 2 << 20)).unwrap();
    v.flush().unwrap();
    v.close().unwrap();
    (dir, mem, store, c)
}

/// Found by review: a GC object in the roll-forward whose header rotted
/// refused the open, and giving it up (deleting it) made the next open
/// delete every later data object. A GC object carries no writes of its
/// own and rule 21 keeps its sources while a roll-forward from a listed
/// checkpoint can meet it, so recovery now skips it (a tombstone keeps the
/// sequence) and loses nothing.
#[test]
fn rotten_gc_object_in_the_roll_forward_is_skipped_and_loses_nothing() {
    use lsvd::format::gcobject::{GcHeader, GcMove};
    use lsvd::format::object::ObjectHeader;
    use lsvd::units::{Lba, ObjSeq};
    use lsvd::volume::image::{object_name, parse_object_name, read_superblock};
    let (dir, mem, store, c) = closed_image_with_data();
    let sb = read_superblock(store.as_ref(), "img").unwrap();
    let top = mem
        .list("img.")
        .unwrap()
        .iter()
        .filter_map(|n| parse_object_name("img", n))
        .max()
        .unwrap();
    // Object 1 holds LBA 0: a GC object moving LBA 0..8 out of it.
    let b1 = mem.get(&object_name("img", ObjSeq(1)), 0, 1 << 24).unwrap();
    let h1 = ObjectHeader::decode(&b1).unwrap();
    assert_eq!(h1.ops[0].lba, Lba(0));
    let src_off = h1.header_bytes / 512 + h1.ops[0].data_offset;
    let data = b1[(src_off as usize) * 512..(src_off as usize + 8) * 512].to_vec();
    let g = ObjSeq(top.0 + 1);
    let gname = object_name("img", g);
    let gobj = GcHeader::encode_object(
        sb.uuid,
        g,
        &[GcMove {
            lba: Lba(0),
            sectors: 8,
            data_offset: 0,
            src_obj: ObjSeq(1),
            src_offset: src_off,
        }],
        &data,
    );
    mem.put(&gname, &gobj).unwrap();
    // An open rolls it forward; client writes follow it; no checkpoint.
    let c = Config {
        checkpoint_interval_objs: 1000,
        ..c
    };
    let v = open(&store, dir.path(), &c).unwrap();
    let later = pattern(9, 256 << 10);
    v.write(6 << 20, &later).unwrap();
    v.flush().unwrap();
    v.crash();
    // The journal has long moved on (emulated: it is gone), and the GC
    // object's header rots.
    std::fs::remove_file(dir.path().join("img.wlog")).unwrap();
    let mut rotten = mem.get(&gname, 0, 1 << 24).unwrap();
    rotten[40] ^= 1;
    mem.put(&gname, &rotten).unwrap();
    let v = open(&store, dir.path(), &c).expect("a rotten GC object is skipped");
    let mut back = vec![0u8; later.len()];
    v.read(6 << 20, &mut back).unwrap();
    let mut first = vec![0u8; 2 << 20];
    v.read(0, &mut first).unwrap();
    v.close().unwrap();
    assert!(first == pattern(1, 2 << 20), "LBA 0 reads from its source");
    assert!(back == later, "the writes after the GC object are kept");
    assert_eq!(
        &mem.get(&gname, 0, 8).unwrap()[..],
        b"LSVDCKP1",
        "a tombstone keeps the sequence"
    );
}

/// Found by review: a store that keeps failing to read a piece of the
/// newest checkpoint (a media error: RADOS answers EIO when every replica
/// fails its checksum) makes every open fail. The error names the pieces
/// and what to do; removing them makes the next open fall back to the
/// older listed checkpoint, with nothing lost.
#[test]
fn persistent_error_reading_the_newest_checkpoint_names_the_remedy() {
    let (dir, mem, store, c) = closed_image_with_data();
    let v = open(&store, dir.path(), &c).unwrap();
    v.write(4 << 20, &pattern(2, 64 << 10)).unwrap();
    v.close().unwrap();
    let sb = lsvd::volume::image::read_superblock(store.as_ref(), "img").unwrap();
    assert!(sb.checkpoints.len() >= 2, "{:?}", sb.checkpoints);
    let piece = lsvd::volume::image::object_name("img", sb.checkpoints[0].seq);
    let fault = Arc::new(FaultStore::new(mem.clone(), 1));
    fault.add_rule(FaultRule::fail(FaultOp::Get, ErrorKind::Io).named(piece.clone()));
    let f: Arc<dyn ObjectStore> = fault.clone();
    let e = open(&f, dir.path(), &c).err().expect("refused");
    let msg = e.to_string();
    assert!(
        msg.contains(&piece) && msg.contains("remove those pieces"),
        "{msg}"
    );
    // The operator removes the unreadable piece.
    mem.delete(&piece).unwrap();
    let v = open(&store, dir.path(), &c).unwrap();
    let mut a = vec![0u8; 2 << 20];
    v.read(0, &mut a).unwrap();
    let mut b = vec![0u8; 64 << 10];
    v.read(4 << 20, &mut b).unwrap();
    v.close().unwrap();
    assert!(a == pattern(1, 2 << 20) && b == pattern(2, 64 << 10));
}
