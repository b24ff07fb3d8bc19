//! Snapshots, clones and flatten through the public Volume API: content,
//! isolation, GC safety and removal rules.

mod common;

use std::path::Path;
use std::sync::Arc;

use lsvd::backend::{FaultAction, FaultOp, FaultRule, FaultStore, MemStore, ObjectStore};
use lsvd::config::Config;
use lsvd::volume::image::{create_image, read_superblock, remove_image};
use lsvd::volume::{clone_image, find_clones, Volume, VolumeOptions};
use lsvd::ErrorKind;

use common::pattern;

const SIZE: u64 = 8 << 20;

fn config(dir: &Path) -> Config {
    Config {
        no_gc: true,
        gc_threshold: 90,
        rcache_dir: dir.join("rcache"),
        rcache_bytes: 32 << 20,
        ..common::small_config()
    }
}

fn open(store: &Arc<dyn ObjectStore>, dir: &Path, image: &str) -> Volume {
    Volume::open(VolumeOptions {
        config: config(dir),
        store: store.clone(),
        image: image.into(),
        journal_path: dir.join(format!("{image}.wlog")),
        io_log: None,
    })
    .unwrap()
}

fn snap(store: &Arc<dyn ObjectStore>, dir: &Path, image: &str, s: &str) -> Volume {
    Volume::open_snapshot(config(dir), store.clone(), image, s).unwrap()
}

fn setup() -> (tempfile::TempDir, Arc<dyn ObjectStore>) {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
    create_image(store.as_ref(), "base", SIZE).unwrap();
    (dir, store)
}

/// A base image with 400 random writes and a snapshot `gold` of them:
/// (dir, store, the open base, its content).
fn gold_base() -> (tempfile::TempDir, Arc<dyn ObjectStore>, Volume, Vec<u8>) {
    let (dir, store) = setup();
    let base = open(&store, dir.path(), "base");
    let mut mb = vec![0u8; SIZE as usize];
    scribble(&base, &mut mb, 1, 400);
    base.snapshot_create("gold").unwrap();
    (dir, store, base, mb)
}

/// Write `n` random 4K..16K pieces of seed `seed` to `v` and `model`.
fn scribble(v: &Volume, model: &mut [u8], seed: u64, n: u64) {
    for i in 0..n {
        let blocks = (model.len() / 4096) as u64;
        let off = ((i * 7919 + seed * 104_729) % (blocks - 4)) * 4096;
        let len = 4096 * (1 + ((i + seed) as usize % 4));
        let d = pattern(seed * 100_000 + i, len);
        v.write(off, &d).unwrap();
        model[off as usize..off as usize + len].copy_from_slice(&d);
    }
}

fn assert_reads(v: &Volume, model: &[u8], what: &str) {
    let mut buf = vec![7u8; model.len()];
    v.read(0, &mut buf).unwrap();
    if buf != model {
        let i = buf.iter().zip(model).position(|(a, b)| a != b).unwrap();
        panic!("{what}: first difference at byte {i}");
    }
}

fn stored_bytes(store: &Arc<dyn ObjectStore>) -> u64 {
    store
        .list("")
        .unwrap()
        .iter()
        .map(|n| store.stat(n).unwrap().unwrap_or(0))
        .sum()
}

#[test]
fn snapshots_keep_their_content_across_writes_crashes_and_gc() {
    let (dir, store) = setup();
    let d = dir.path();
    let v = open(&store, d, "base");
    let mut m0 = vec![0u8; SIZE as usize];
    scribble(&v, &mut m0, 1, 300);
    // Unflushed, unsynced writes are in the snapshot too: it covers every
    // acknowledged write.
    let s1 = v.snapshot_create("s1").unwrap();
    assert_eq!(s1.size_bytes, SIZE);
    let e = v.snapshot_create("s1").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    for bad in ["", "a/b", "a@b", &"x".repeat(97)] {
        let e = v.snapshot_create(bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{bad:?}: {e}");
    }
    let mut m1 = m0.clone();
    scribble(&v, &mut m1, 2, 300);
    v.trim(0, 256 << 10).unwrap();
    m1[..256 << 10].fill(0);
    v.snapshot_create("s2").unwrap();
    let mut m2 = m1.clone();
    scribble(&v, &mut m2, 3, 300);
    assert_reads(&snap(&store, d, "base", "s1"), &m0, "s1 while live");
    assert_reads(&snap(&store, d, "base", "s2"), &m1, "s2 while live");
    assert_reads(&v, &m2, "live image");
    // A snapshot is read-only.
    let s = snap(&store, d, "base", "s1");
    assert!(s.is_read_only());
    for e in [
        s.write(0, &[1u8; 4096]).unwrap_err(),
        s.trim(0, 4096).unwrap_err(),
        s.write_zeroes(0, 4096).unwrap_err(),
    ] {
        assert_eq!(e.kind(), ErrorKind::ReadOnly, "{e}");
    }
    s.flush().unwrap();
    s.close().unwrap();
    let e = Volume::open_snapshot(config(d), store.clone(), "base", "nope")
        .err()
        .expect("no such snapshot");
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains("s1, s2"), "{e}");
    // Crash, reopen: snapshots and pins come back from the superblock.
    v.flush().unwrap();
    v.crash();
    let v = open(&store, d, "base");
    assert_eq!(
        v.snapshots()
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["s1", "s2"]
    );
    assert!(v.pinned_objects().unwrap() > 0);
    // Overwrite everything twice and collect: the snapshots keep their data.
    let mut m3 = m2.clone();
    scribble(&v, &mut m3, 4, 600);
    scribble(&v, &mut m3, 5, 600);
    v.flush().unwrap();
    let r = v.gc_now().unwrap();
    assert!(r.objects_cleaned > 0, "{r:?}");
    v.gc_now().unwrap();
    assert_reads(&snap(&store, d, "base", "s1"), &m0, "s1 after GC");
    assert_reads(&snap(&store, d, "base", "s2"), &m1, "s2 after GC");
    assert_reads(&v, &m3, "live after GC");
    // Removing the snapshots frees their objects.
    let before = stored_bytes(&store);
    v.snapshot_remove("s1").unwrap();
    v.snapshot_remove("s2").unwrap();
    let e = v.snapshot_remove("s2").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert_eq!(v.pinned_objects(), Some(0));
    // Checkpoints advance GC's deletion floor past the old objects.
    for _ in 0..3 {
        scribble(&v, &mut m3, 6, 50);
        v.flush().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2100));
        v.gc_now().unwrap();
    }
    let after = stored_bytes(&store);
    assert!(
        after < before * 3 / 4,
        "stored bytes {before} with snapshots, {after} after removing them"
    );
    assert_reads(&v, &m3, "live after snapshot removal and GC");
    v.close().unwrap();
    let v = open(&store, d, "base");
    assert_reads(&v, &m3, "after reopen");
    v.close().unwrap();
}

#[test]
fn clones_read_through_stay_isolated_and_follow_the_removal_rules() {
    let (dir, store, base, mut mb) = gold_base();
    let d = dir.path();
    let gold = mb.clone();
    // Clone creation writes two objects: the child's superblock and its
    // high-water mark.
    let objects = store.list("").unwrap().len();
    clone_image(store.as_ref(), "base", "gold", "child").unwrap();
    assert_eq!(store.list("").unwrap().len(), objects + 2);
    assert!(store.stat("child.hwm").unwrap().is_some());
    let e = clone_image(store.as_ref(), "base", "gold", "child").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    let e = clone_image(store.as_ref(), "base", "nope", "other").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    clone_image(store.as_ref(), "base", "gold", "child2").unwrap();

    let child = open(&store, d, "child");
    assert_reads(&child, &gold, "fresh clone");
    assert_eq!(child.parent_ref().unwrap().image, "base");
    // The base keeps changing; the clone does not see it.
    scribble(&base, &mut mb, 2, 200);
    let mut mc = gold.clone();
    scribble(&child, &mut mc, 3, 200);
    child.trim(1 << 20, 512 << 10).unwrap();
    mc[1 << 20..(1 << 20) + (512 << 10)].fill(0);
    child.write_zeroes(3 << 20, 64 << 10).unwrap();
    mc[3 << 20..(3 << 20) + (64 << 10)].fill(0);
    assert_reads(&child, &mc, "clone after writes and trims");
    assert_reads(&base, &mb, "base after clone writes");
    assert_reads(
        &snap(&store, d, "base", "gold"),
        &gold,
        "snapshot after clone writes",
    );
    // Trims survive destage, checkpoint and a crash: they still hide the parent.
    child.flush().unwrap();
    child.crash();
    let child = open(&store, d, "child");
    assert_reads(&child, &mc, "clone after crash");
    child.close().unwrap();
    let child = open(&store, d, "child");
    assert_reads(&child, &mc, "clone after close and reopen");
    // A clone of a snapshot of the clone: a chain of two.
    child.snapshot_create("c1").unwrap();
    clone_image(store.as_ref(), "child", "c1", "grandchild").unwrap();
    let g = open(&store, d, "grandchild");
    assert_reads(&g, &mc, "grandchild");
    let mut mg = mc.clone();
    scribble(&g, &mut mg, 4, 100);
    assert_reads(&g, &mg, "grandchild after writes");
    assert_reads(&child, &mc, "child after grandchild writes");
    g.close().unwrap();

    // Removal rules: a snapshot with clones, an image with snapshots.
    let e = base.snapshot_remove("gold").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InUse, "{e}");
    assert!(e.to_string().contains("child, child2"), "{e}");
    // The refused removal left no mark: new clones still work.
    clone_image(store.as_ref(), "base", "gold", "child3").unwrap();
    base.close().unwrap();
    let e = remove_image(store.as_ref(), "base", None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InUse, "{e}");
    assert!(
        e.to_string().contains("gold") && e.to_string().contains("child"),
        "{e}"
    );
    let uuid = lsvd::volume::image::read_superblock(store.as_ref(), "base")
        .unwrap()
        .uuid;
    assert_eq!(
        find_clones(store.as_ref(), "base", uuid).unwrap(),
        ["child", "child2", "child3"].map(|c| (c.to_string(), "gold".to_string()))
    );

    // Flatten: a clone with snapshots is refused, then the copy cuts the link.
    let e = child.flatten().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InUse, "{e}");
    let e = child.snapshot_remove("c1").unwrap_err();
    assert!(e.to_string().contains("grandchild"), "{e}");
    child.close().unwrap();
    remove_image(store.as_ref(), "grandchild", None).unwrap();
    let child = open(&store, d, "child");
    child.snapshot_remove("c1").unwrap();
    let r = child.flatten().unwrap();
    assert!(r.copied_bytes > 0, "{r:?}");
    assert!(child.parent_ref().is_none());
    assert_reads(&child, &mc, "flattened clone");
    // A flattened clone keeps the zero-marker feature bit.
    let sb = lsvd::volume::image::read_superblock(store.as_ref(), "child").unwrap();
    assert_ne!(
        sb.incompat & lsvd::format::superblock::INCOMPAT_ZERO_MARKERS,
        0
    );
    for c in ["child2", "child3"] {
        remove_image(store.as_ref(), c, None).unwrap();
    }
    // Now the snapshot and the base can go; the flattened clone stands
    // alone, also while it stays open.
    let base = open(&store, d, "base");
    base.snapshot_remove("gold").unwrap();
    base.close().unwrap();
    remove_image(store.as_ref(), "base", None).unwrap();
    assert_reads(&child, &mc, "open flattened clone without its base");
    child.close().unwrap();
    let child = open(&store, d, "child");
    assert_reads(&child, &mc, "flattened clone without its base");
    let e = child.flatten().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    child.close().unwrap();
}

#[test]
fn clone_of_a_snapshot_being_removed_is_refused() {
    let (dir, store) = setup();
    let d = dir.path();
    let base = open(&store, d, "base");
    base.write(0, &pattern(1, 4096)).unwrap();
    base.snapshot_create("s").unwrap();
    base.close().unwrap();
    // Mark the snapshot as being removed, as an interrupted `snap rm` would.
    let mut sb = lsvd::volume::image::read_superblock(store.as_ref(), "base").unwrap();
    sb.snapshots[0].flags |= lsvd::format::superblock::SNAP_REMOVING;
    store.put("base", &sb.encode()).unwrap();
    let e = clone_image(store.as_ref(), "base", "s", "c").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InUse, "{e}");
    assert!(lsvd::volume::image::read_superblock(store.as_ref(), "c").is_err());
    // The snapshot still reads, and `snap rm` finishes the removal.
    let mut buf = vec![0u8; 4096];
    snap(&store, d, "base", "s").read(0, &mut buf).unwrap();
    assert_eq!(buf, pattern(1, 4096));
    let base = open(&store, d, "base");
    base.snapshot_remove("s").unwrap();
    assert!(base.snapshots().is_empty());
    base.close().unwrap();
}

#[test]
fn clones_share_the_base_snapshots_read_cache() {
    let (dir, store, base, mb) = gold_base();
    let d = dir.path();
    base.close().unwrap();
    let uuid = lsvd::volume::image::read_superblock(store.as_ref(), "base")
        .unwrap()
        .uuid;
    let shared = d.join("rcache").join("base@gold.rcache");
    let hits = || {
        lsvd::cache::Cache::inspect(&shared, uuid)
            .unwrap()
            .expect("the snapshot's cache file exists")
            .counters
            .hits
    };
    clone_image(store.as_ref(), "base", "gold", "a").unwrap();
    clone_image(store.as_ref(), "base", "gold", "b").unwrap();
    let a = open(&store, d, "a");
    assert_reads(&a, &mb, "clone a");
    a.close().unwrap();
    let after_a = hits();
    // The second clone's base reads hit the chunks the first one fetched:
    // no ranged get reaches the store.
    let counting = Arc::new(lsvd::backend::CountingStore::new(store.clone()));
    let cs: Arc<dyn ObjectStore> = counting.clone();
    let b = open(&cs, d, "b");
    let before = counting.stats();
    assert_reads(&b, &mb, "clone b");
    let after = counting.stats();
    assert_eq!(
        after.gets, before.gets,
        "clone b's base reads went to the store"
    );
    b.close().unwrap();
    assert!(
        hits() > after_a,
        "no shared-cache hits: {after_a} -> {}",
        hits()
    );
}

#[test]
fn resized_clones_and_snapshots_keep_their_sizes_and_content() {
    let (dir, store) = setup();
    let d = dir.path();
    let base = open(&store, d, "base");
    let mut mb = vec![0u8; SIZE as usize];
    scribble(&base, &mut mb, 1, 300);
    base.snapshot_create("small").unwrap();
    // The base grows; the old snapshot keeps its size, a new one the new.
    base.resize(2 * SIZE, false).unwrap();
    mb.resize(2 * SIZE as usize, 0);
    base.write(SIZE + 4096, &pattern(5, 4096)).unwrap();
    mb[(SIZE + 4096) as usize..(SIZE + 8192) as usize].copy_from_slice(&pattern(5, 4096));
    base.snapshot_create("big").unwrap();
    let small = snap(&store, d, "base", "small");
    assert_eq!(small.size_bytes(), SIZE);
    assert_reads(&small, &mb[..SIZE as usize], "small snapshot");
    let e = small.resize(SIZE / 2, true).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ReadOnly, "{e}");
    assert_reads(&snap(&store, d, "base", "big"), &mb, "big snapshot");
    base.close().unwrap();
    // A clone grown past its parent reads zeros there; one shrunk and grown
    // back reads zeros in the tail, not the parent's data.
    clone_image(store.as_ref(), "base", "small", "c").unwrap();
    let c = open(&store, d, "c");
    assert_eq!(c.size_bytes(), SIZE);
    c.resize(3 * SIZE, false).unwrap();
    let mut mc = mb[..SIZE as usize].to_vec();
    mc.resize(3 * SIZE as usize, 0);
    assert_reads(&c, &mc, "grown clone");
    c.resize(SIZE / 2, true).unwrap();
    c.resize(SIZE, false).unwrap();
    mc.truncate(SIZE as usize);
    mc[(SIZE / 2) as usize..].fill(0);
    assert_reads(&c, &mc, "clone shrunk and grown back");
    c.flush().unwrap();
    c.crash();
    let c = open(&store, d, "c");
    assert_reads(&c, &mc, "clone after crash");
    c.close().unwrap();
}

#[test]
fn snap_rm_refuses_when_a_superblock_cannot_be_read() {
    let (dir, store, base, _) = gold_base();
    // An image whose superblock does not decode might be a clone.
    store.put("junk", b"LSVDSUP1 not really").unwrap();
    let e = base.snapshot_remove("gold").unwrap_err();
    assert!(
        e.to_string().contains("cannot tell whether image junk"),
        "{e}"
    );
    assert_eq!(base.snapshots().len(), 1);
    assert_eq!(base.snapshots()[0].flags, 0, "the removal mark was left");
    store.delete("junk").unwrap();
    base.snapshot_remove("gold").unwrap();
    base.close().unwrap();
    drop(dir);
}

/// Objects a snapshot keeps are not "waiting for deletion": background GC
/// does not keep writing checkpoints that can never free them.
#[test]
fn pinned_objects_do_not_make_gc_checkpoint_forever() {
    let (dir, store) = setup();
    let d = dir.path();
    let v = Volume::open(VolumeOptions {
        config: Config {
            no_gc: false,
            gc_interval_msec: 50,
            gc_rate_bytes: 0,
            ..config(d)
        },
        store: store.clone(),
        image: "base".into(),
        journal_path: d.join("base.wlog"),
        io_log: None,
    })
    .unwrap();
    let mut m = vec![0u8; SIZE as usize];
    scribble(&v, &mut m, 1, 600);
    v.snapshot_create("s").unwrap();
    // Overwrite everything: every object the snapshot keeps is dead now.
    for i in 0..(SIZE / (64 << 10)) {
        v.write(i * (64 << 10), &pattern(i, 64 << 10)).unwrap();
    }
    v.flush().unwrap();
    // Let GC settle, then watch it idle.
    std::thread::sleep(std::time::Duration::from_secs(8));
    let before = v.stats().checkpoint_pieces;
    std::thread::sleep(std::time::Duration::from_secs(8));
    let after = v.stats().checkpoint_pieces;
    assert!(
        after - before <= 2,
        "{} checkpoint pieces written in 8 s of idling",
        after - before
    );
    v.close().unwrap();
}

/// Snapshot names in `sb`, oldest first.
fn snap_names(snaps: &[lsvd::format::superblock::SnapshotRef]) -> Vec<String> {
    snaps.iter().map(|s| s.name.clone()).collect()
}

/// Make the next superblock put of `image` go through, and every later one
/// land in the store but fail (a RADOS `write_full` that timed out after
/// the OSD applied it).
fn land_then_fail_after_one(fault: &FaultStore, image: &str) {
    fault.add_rule(
        FaultRule::new(FaultOp::Put, FaultAction::Delay(std::time::Duration::ZERO))
            .named(image)
            .times(1),
    );
    fault.add_rule(
        FaultRule::new(FaultOp::Put, FaultAction::ApplyThenFail(ErrorKind::Timeout)).named(image),
    );
}

/// A superblock put that fails may have landed. What landed is never
/// dropped by the next rewrite: the volume reads the superblock back at
/// once (and reports success if its put did land), and when it cannot, it
/// re-reads it before the next rewrite. Clone creation reads its put back
/// too.
#[test]
fn a_superblock_put_that_lands_but_fails_drops_no_snapshot() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let d = dir.path();
    let mem: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
    create_image(mem.as_ref(), "base", SIZE).unwrap();
    let fault = Arc::new(FaultStore::new(mem.clone(), 1));
    let store: Arc<dyn ObjectStore> = fault.clone();
    // Short enough that a superblock put failing for good gives up soon,
    // long enough that a loaded machine's checkpoint is not a timeout. No
    // background checkpoint ever: the fault rules below count superblock
    // puts, and on a loaded machine the destage of the writes before a
    // snapshot may still be running (and due a checkpoint) inside it.
    let c = Config {
        io_timeout_msec: 2000,
        checkpoint_interval_objs: 1 << 40,
        ..config(d)
    };
    let v = Volume::open(VolumeOptions {
        config: c.clone(),
        store: store.clone(),
        image: "base".into(),
        journal_path: d.join("base.wlog"),
        io_log: None,
    })
    .unwrap();
    let mut models = Vec::new();
    let mut m = vec![0u8; SIZE as usize];
    scribble(&v, &mut m, 1, 200);
    // From here on `snapshot_create` writes the superblock twice: its checkpoint, then the entry.
    v.snapshot_create("warm").unwrap();
    models.push(m.clone());

    // 1. The entry's put lands and fails; the read-back finds it.
    scribble(&v, &mut m, 2, 50);
    land_then_fail_after_one(&fault, "base");
    let r = v.snapshot_create("s1");
    fault.clear_rules();
    r.expect("the entry landed: the snapshot exists");
    models.push(m.clone());
    assert_eq!(snap_names(&v.snapshots()), ["warm", "s1"]);

    // 2. The entry's put lands and fails, and so does the read-back.
    scribble(&v, &mut m, 3, 50);
    land_then_fail_after_one(&fault, "base");
    fault.add_rule(FaultRule::fail(FaultOp::Get, ErrorKind::Io).named("base"));
    let e = v.snapshot_create("s2").unwrap_err();
    fault.clear_rules();
    models.push(m.clone());
    let stored = read_superblock(mem.as_ref(), "base").unwrap();
    assert_eq!(snap_names(&stored.snapshots), ["warm", "s1", "s2"], "{e}");
    // The volume looks at the store before it trusts its own copy again.
    let e = v.snapshot_create("s2").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    // Another rewrite keeps the entry that landed.
    scribble(&v, &mut m, 4, 50);
    v.snapshot_create("s3").unwrap();
    models.push(m.clone());
    let stored = read_superblock(mem.as_ref(), "base").unwrap();
    assert_eq!(snap_names(&stored.snapshots), ["warm", "s1", "s2", "s3"]);
    assert_eq!(
        v.snapshots(),
        stored.snapshots,
        "memory agrees with the store"
    );

    // 3. A clone whose superblock put lands and fails exists, linked.
    fault.add_rule(
        FaultRule::new(FaultOp::Put, FaultAction::ApplyThenFail(ErrorKind::Timeout)).named("kid"),
    );
    let r = clone_image(store.as_ref(), "base", "s2", "kid");
    fault.clear_rules();
    r.expect("the clone's superblock landed: the clone exists");
    assert_eq!(
        find_clones(mem.as_ref(), "base", v.uuid()).unwrap(),
        [("kid".to_string(), "s2".to_string())]
    );
    scribble(&v, &mut m, 5, 50);
    v.close().unwrap();

    let v = open(&mem, d, "base");
    assert_reads(&v, &m, "base after reopen");
    for (name, want) in ["warm", "s1", "s2", "s3"].iter().zip(&models) {
        assert_reads(&snap(&mem, d, "base", name), want, name);
    }
    let kid = open(&mem, d, "kid");
    assert_reads(&kid, &models[2], "clone of s2");
    kid.close().unwrap();
    v.close().unwrap();
}

/// Issue 17, bug 2: a snapshot being read (`serve-nbd`, `attach` or
/// `export` of `IMAGE@SNAP` open it with `Volume::open_snapshot`) cannot be
/// removed; two readers at once are fine; once they close, `snap rm`
/// works and leaves no lock behind (a lock file on the directory store).
#[test]
fn a_snapshot_being_read_cannot_be_removed() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    std::fs::create_dir(dir.path().join("store")).unwrap();
    let store: Arc<dyn ObjectStore> =
        Arc::new(lsvd::backend::DirStore::open(&dir.path().join("store")).unwrap());
    create_image(store.as_ref(), "base", SIZE).unwrap();
    let base = open(&store, dir.path(), "base");
    let mut model = vec![0u8; SIZE as usize];
    scribble(&base, &mut model, 3, 50);
    base.snapshot_create("gold").unwrap();
    scribble(&base, &mut model.clone(), 4, 50);

    let r1 = snap(&store, dir.path(), "base", "gold");
    let r2 = snap(&store, dir.path(), "base", "gold");
    let e = base.snapshot_remove("gold").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InUse, "{e}");
    assert!(e.to_string().contains("base@gold is open"), "{e}");
    drop(r1);
    assert_eq!(
        base.snapshot_remove("gold").unwrap_err().kind(),
        ErrorKind::InUse
    );
    // The refusals changed nothing: the reader still reads the snapshot.
    assert_reads(&r2, &model, "a reader of gold after two refused removals");
    drop(r2);
    assert_eq!(snap_names(&base.snapshots()), ["gold"]);

    base.snapshot_remove("gold").unwrap();
    assert!(base.snapshots().is_empty());
    let left: Vec<_> = std::fs::read_dir(dir.path().join("store"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("gold"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // A reader of a removed snapshot is told so, and leaves no lock.
    let e = Volume::open_snapshot(config(dir.path()), store.clone(), "base", "gold")
        .map(|_| ())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(std::fs::read_dir(dir.path().join("store"))
        .unwrap()
        .all(|e| !e.unwrap().file_name().to_string_lossy().contains("gold")));
    base.close().unwrap();
}
