//! Open, recovery, `info` and `rm` find an image's objects below its
//! high-water mark (`IMAGE.hwm`), never by listing the pool (issue 16,
//! part 2): a store whose listings fail serves them all. `create` lists
//! the pool only until the pool marker (`lsvd:pool.flags`) says no older
//! build's removal left objects without a mark (ordering 33).
//! An image of a build before the mark is listed once, at its first
//! read-write open, which writes the mark and sets `INCOMPAT_HWM`.

mod common;

use std::path::Path;
use std::sync::Arc;

use lsvd::backend::{FaultAction, FaultOp, FaultRule, FaultStore, MemStore, ObjectStore};
use lsvd::config::Config;
use lsvd::format::hwm::{HighWater, STEP};
use lsvd::format::pool::{PoolMarker, FLAG_REMOVALS_MARKED, NAME as POOL_MARKER};
use lsvd::format::superblock::INCOMPAT_HWM;
use lsvd::units::ObjSeq;
use lsvd::volume::image::{
    create_image, hwm_name, image_info, object_name, parse_object_name, read_superblock,
    remove_image, ImageSpec,
};
use lsvd::volume::{Volume, VolumeOptions};
use lsvd::ErrorKind;

use common::pattern;

const SIZE: u64 = 4 << 20;

fn config() -> Config {
    Config {
        backend_obj_bytes: 64 << 10,
        wlog_chunk_bytes: 64 << 10,
        wlog_bytes: 16 << 20,
        checkpoint_interval_objs: 4,
        hard_flush: true,
        no_gc: true,
        ..common::small_config()
    }
}

fn open(store: &Arc<dyn ObjectStore>, dir: &Path, image: &str) -> lsvd::Result<Volume> {
    open_with(store, dir, image, config())
}

fn open_with(
    store: &Arc<dyn ObjectStore>,
    dir: &Path,
    image: &str,
    config: Config,
) -> lsvd::Result<Volume> {
    Volume::open(VolumeOptions {
        config,
        store: store.clone(),
        image: image.into(),
        journal_path: dir.join(format!("{image}.wlog")),
        io_log: None,
    })
}

/// A store over `mem` whose every listing fails.
fn unlistable(mem: &Arc<MemStore>) -> Arc<dyn ObjectStore> {
    let f = FaultStore::new(mem.clone(), 0);
    f.add_rule(FaultRule::new(
        FaultOp::List,
        FaultAction::Fail(ErrorKind::Io),
    ));
    Arc::new(f)
}

fn mark(mem: &MemStore, image: &str) -> u64 {
    let b = mem.get(&hwm_name(image), 0, 4096).unwrap();
    HighWater::decode(&b).unwrap().hwm
}

/// `n` 64 KiB writes (one object each at this object size).
fn fill(v: &Volume, model: &mut [u8], seed: u64, n: u64) {
    for i in 0..n {
        let off = ((i * 7 + seed) % (SIZE / (64 << 10))) * (64 << 10);
        let d = pattern(seed * 1000 + i, 64 << 10);
        v.write(off, &d).unwrap();
        model[off as usize..off as usize + d.len()].copy_from_slice(&d);
    }
}

fn assert_image(v: &Volume, model: &[u8], what: &str) {
    let mut buf = vec![0u8; model.len()];
    v.read(0, &mut buf).unwrap();
    assert!(buf == model, "{what}: the image differs from the model");
}

/// The image's object sequences in the store, ascending (a listing of
/// the memory store: the tests' view, not the engine's).
fn objects(mem: &MemStore, image: &str) -> Vec<u64> {
    let mut v: Vec<u64> = mem
        .list(&format!("{image}."))
        .unwrap()
        .iter()
        .filter_map(|n| parse_object_name(image, n))
        .map(|s| s.0)
        .collect();
    v.sort();
    v
}

fn highest(mem: &MemStore, image: &str) -> u64 {
    objects(mem, image).last().copied().unwrap_or(0)
}

/// Every object stays below the mark, which moves in steps; open after a
/// close and after a crash, info, and rm never list.
#[test]
fn the_image_lifecycle_never_lists_the_pool() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let mem = Arc::new(MemStore::new());
    let store = unlistable(&mem);
    // (The first `create` in a pool lists it once, then writes the pool
    // marker.)
    create_image(mem.as_ref(), "img", SIZE).unwrap();
    assert_eq!(mark(&mem, "img"), 1, "create writes the mark");
    assert_ne!(
        read_superblock(store.as_ref(), "img").unwrap().incompat & INCOMPAT_HWM,
        0
    );
    let mut model = vec![0u8; SIZE as usize];
    let v = open(&store, dir.path(), "img").unwrap();
    fill(&v, &mut model, 1, 3 * STEP);
    v.flush().unwrap();
    v.close().unwrap();
    let top = highest(&mem, "img");
    assert!(top >= 3 * STEP, "one object per write: {top}");
    let m = mark(&mem, "img");
    assert!(
        m > top && m <= top + 2 + STEP,
        "mark {m}, highest object {top}"
    );

    // A crash with objects in flight; reopened through the unlistable
    // store, the data is all there.
    let v = open(&store, dir.path(), "img").unwrap();
    fill(&v, &mut model, 2, 20);
    v.flush().unwrap();
    v.crash();
    assert!(highest(&mem, "img") < mark(&mem, "img"));
    let v = open(&store, dir.path(), "img").unwrap();
    assert_image(&v, &model, "after a crash");
    v.close().unwrap();

    let spec = ImageSpec {
        pool: "p".into(),
        image: "img".into(),
    };
    let info = image_info(store.as_ref(), &spec).unwrap();
    let listed: Vec<String> = mem
        .list("img.")
        .unwrap()
        .into_iter()
        .filter(|n| parse_object_name("img", n).is_some())
        .collect();
    assert_eq!(info.objects, listed.len() as u64, "info counts by probing");
    let bytes: u64 = listed.iter().map(|n| mem.stat(n).unwrap().unwrap()).sum();
    assert_eq!(info.stored_bytes, bytes);

    remove_image(store.as_ref(), "img", Some(&dir.path().join("img.wlog"))).unwrap();
    assert_eq!(
        mem.list("").unwrap(),
        vec![POOL_MARKER.to_string()],
        "rm removes it all (the pool's marker stays)"
    );
}

/// An image written by a build before the mark (no `INCOMPAT_HWM`, no
/// mark) is listed once, at its first read-write open, which writes the
/// mark and sets the bit; from then on it opens without listing. A lost
/// or foreign mark is found the same way.
#[test]
fn an_image_without_a_mark_is_listed_once_then_never() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let mem = Arc::new(MemStore::new());
    let store: Arc<dyn ObjectStore> = mem.clone();
    create_image(store.as_ref(), "img", SIZE).unwrap();
    let mut model = vec![0u8; SIZE as usize];
    let v = open(&store, dir.path(), "img").unwrap();
    fill(&v, &mut model, 3, 10);
    v.flush().unwrap();
    v.crash();
    // Made old: no bit, no mark.
    let mut sb = read_superblock(store.as_ref(), "img").unwrap();
    sb.incompat &= !INCOMPAT_HWM;
    mem.put("img", &sb.encode()).unwrap();
    mem.delete(&hwm_name("img")).unwrap();
    let unlisted = unlistable(&mem);
    let e = open(&unlisted, dir.path(), "img")
        .err()
        .expect("an old image is listed");
    assert_eq!(
        e.kind(),
        ErrorKind::Io,
        "an old image needs its one listing: {e}"
    );
    let v = open(&store, dir.path(), "img").unwrap();
    assert_image(&v, &model, "migrated");
    assert!(mark(&mem, "img") > highest(&mem, "img"));
    assert_ne!(
        read_superblock(store.as_ref(), "img").unwrap().incompat & INCOMPAT_HWM,
        0,
        "the open set the bit"
    );
    fill(&v, &mut model, 4, 5);
    v.flush().unwrap();
    v.crash();
    let v = open(&unlisted, dir.path(), "img").unwrap();
    assert_image(&v, &model, "after the migration, without listing");
    v.close().unwrap();

    // A mark of another image (the UUID differs) or a rotten one is not
    // trusted: the image is listed again and the mark rewritten.
    for bad in [
        HighWater {
            uuid: lsvd::units::ImageUuid([9; 16]),
            hwm: 1,
        }
        .encode(),
        b"junk".to_vec(),
    ] {
        mem.put(&hwm_name("img"), &bad).unwrap();
        let v = open(&store, dir.path(), "img").unwrap();
        assert_image(&v, &model, "with a bad mark");
        v.close().unwrap();
        assert!(mark(&mem, "img") > highest(&mem, "img"));
    }
}

/// Objects above the first gap are below the mark, so recovery deletes
/// them without a listing (ordering 31 with 4).
#[test]
fn objects_above_a_gap_are_found_below_the_mark() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let mem = Arc::new(MemStore::new());
    let store = unlistable(&mem);
    // (The first `create` in a pool lists it once.)
    create_image(mem.as_ref(), "img", SIZE).unwrap();
    let mut model = vec![0u8; SIZE as usize];
    // No checkpoint: every object is rolled forward.
    let no_ckpt = Config {
        checkpoint_interval_objs: 1000,
        ..config()
    };
    let v = open_with(&store, dir.path(), "img", no_ckpt.clone()).unwrap();
    fill(&v, &mut model, 5, 12);
    v.flush().unwrap();
    v.crash();
    // Lose an object in the middle of the roll-forward (the journal too,
    // so nothing replays over it): everything above it must go.
    std::fs::remove_file(dir.path().join("img.wlog")).unwrap();
    let sb = read_superblock(store.as_ref(), "img").unwrap();
    let from = sb
        .checkpoints
        .first()
        .map_or(0, |c| c.seq.0 + c.pieces as u64);
    let top = highest(&mem, "img");
    assert!(top > from + 2, "objects to roll forward: {from}..={top}");
    let gap = top - 1;
    let above = mem
        .get(&object_name("img", ObjSeq(top)), 0, 64 << 20)
        .unwrap();
    mem.delete(&object_name("img", ObjSeq(gap))).unwrap();
    let v = open_with(&store, dir.path(), "img", no_ckpt).unwrap();
    v.crash();
    // Deleted (its sequence may since hold a new object, never the old).
    match mem.get(&object_name("img", ObjSeq(top)), 0, 64 << 20) {
        Ok(b) => assert!(b != above, "object {top} above the gap {gap} survived"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::NotFound, "{e}"),
    }
}

/// `create` refuses a name whose earlier image's removal was interrupted
/// (its mark remains); `rm` finishes that removal without listing.
#[test]
fn an_interrupted_removal_is_found_and_finished_without_listing() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let mem = Arc::new(MemStore::new());
    let store = unlistable(&mem);
    // (The first `create` in a pool lists it once.)
    create_image(mem.as_ref(), "img", SIZE).unwrap();
    let mut model = vec![0u8; SIZE as usize];
    let v = open(&store, dir.path(), "img").unwrap();
    fill(&v, &mut model, 6, 8);
    v.close().unwrap();
    // `rm` interrupted right after the superblock went.
    mem.delete("img").unwrap();
    let e = create_image(store.as_ref(), "img", SIZE).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    assert!(
        e.to_string().contains("`lsvd-ublk rm` of this image"),
        "{e}"
    );
    remove_image(store.as_ref(), "img", None).unwrap();
    assert_eq!(mem.list("").unwrap(), vec![POOL_MARKER.to_string()]);
    create_image(store.as_ref(), "img", SIZE).unwrap();
    // With no mark and no superblock, `rm` lists for an older build's
    // leftovers (a repair path) and finds nothing to remove.
    let e = remove_image(mem.as_ref(), "nope", None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}

// The review of the mark (commit 76cb0a9, by a helper): each of these
// failed there.

/// Turn `img` into what a build before the mark left: no bit, no mark.
/// The pool is one an older build used: no pool marker either.
fn make_old(mem: &MemStore, image: &str) {
    let mut sb = read_superblock(mem, image).unwrap();
    sb.incompat &= !INCOMPAT_HWM;
    mem.put(image, &sb.encode()).unwrap();
    mem.delete(&hwm_name(image)).unwrap();
    let _ = mem.delete(POOL_MARKER);
}

/// Finding 1. A build before the mark removed an image by deleting its
/// superblock and then its listed objects in name order (object 1 first),
/// and was interrupted: no mark, no object 1, objects 3.. remain. Before
/// 76cb0a9 `create` listed and refused the name; now its two stats (mark,
/// object 1) find nothing and it creates a new image over the leftovers,
/// which sit above the new image's mark, so its recovery never deletes
/// them. The new image then cannot be reopened after a clean close: the
/// roll-forward runs into the old image's object 3 and refuses the image as
/// corrupt (telling the user to delete objects "to give up its writes").
#[test]
fn create_over_an_old_builds_interrupted_rm_then_reopen() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let mem = Arc::new(MemStore::new());
    let store: Arc<dyn ObjectStore> = mem.clone();
    create_image(store.as_ref(), "img", SIZE).unwrap();
    let mut model = vec![0u8; SIZE as usize];
    let v = open(&store, dir.path(), "img").unwrap();
    fill(&v, &mut model, 1, 10);
    v.flush().unwrap();
    v.close().unwrap();
    make_old(&mem, "img");
    // The old `rm`: superblock, then objects in listing (name) order;
    // interrupted after two.
    mem.delete("img").unwrap();
    mem.delete(&object_name("img", ObjSeq(1))).unwrap();
    mem.delete(&object_name("img", ObjSeq(2))).unwrap();
    std::fs::remove_file(dir.path().join("img.wlog")).unwrap();
    let left = objects(&mem, "img");
    assert!(left.len() > 5, "leftovers {left:?}");

    // Refused, naming a leftover (as before 76cb0a9: create lists once);
    // `rm` finishes the removal (by a listing: there is no mark); then the
    // name is free, and a new image over it works.
    let e = create_image(store.as_ref(), "img", SIZE)
        .expect_err("create over an old build's leftovers");
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    remove_image(store.as_ref(), "img", None).unwrap();
    assert_eq!(
        objects(&mem, "img"),
        Vec::<u64>::new(),
        "rm finished the removal"
    );
    create_image(store.as_ref(), "img", SIZE).unwrap();
    let mut model = vec![0u8; SIZE as usize];
    let v = open(&store, dir.path(), "img").unwrap();
    fill(&v, &mut model, 2, 1);
    v.flush().unwrap();
    v.close().unwrap();
    let m = mark(&mem, "img");
    let stale_above: Vec<u64> = objects(&mem, "img")
        .into_iter()
        .filter(|s| *s >= m)
        .collect();
    let v = match open(&store, dir.path(), "img") {
        Ok(v) => v,
        Err(e) => panic!(
            "create accepted the name over an old build's leftovers {left:?} \
             (mark {m}, leftovers at or above it {stale_above:?}); the new image \
             cannot be reopened after a clean close: {e}"
        ),
    };
    let mut buf = vec![0u8; SIZE as usize];
    v.read(0, &mut buf).unwrap();
    assert!(buf == model, "the new image differs from what was written");
    v.close().unwrap();
}

/// Finding 2. Recovery's tombstone for a lost first piece of a listed
/// checkpoint (ordering 29) is put with `store.put`, bypassing
/// `ensure_hwm`. On the migration open of an image without a mark, the
/// bound comes from the listing, which does not include the lost piece's
/// sequence; the open then writes the mark from that bound, *below* the
/// tombstone it just put. Until the next object raises the mark, an object
/// sits at the mark (ordering 31 broken); a crash there and an `rm` leave
/// the tombstone behind, which `info` does not count either.
#[test]
fn a_recovery_tombstone_is_below_the_mark() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let mem = Arc::new(MemStore::new());
    let store: Arc<dyn ObjectStore> = mem.clone();
    create_image(store.as_ref(), "img", SIZE).unwrap();
    let mut model = vec![0u8; SIZE as usize];
    let v = open(&store, dir.path(), "img").unwrap();
    fill(&v, &mut model, 3, 10);
    v.flush().unwrap();
    v.close().unwrap();
    let sb = read_superblock(store.as_ref(), "img").unwrap();
    let newest = sb.checkpoints[0];
    let top = *objects(&mem, "img").last().unwrap();
    assert_eq!(
        (newest.seq.0, newest.pieces),
        (top, 1),
        "the close's checkpoint is the last object"
    );
    assert!(
        sb.checkpoints.len() > 1,
        "an older checkpoint to fall back on"
    );
    make_old(&mem, "img");
    // Its piece is lost.
    mem.delete(&object_name("img", newest.seq)).unwrap();

    let v = open(&store, dir.path(), "img").unwrap();
    let m = mark(&mem, "img");
    let objs = objects(&mem, "img");
    v.crash();
    let above: Vec<u64> = objs.iter().copied().filter(|s| *s >= m).collect();
    assert!(
        above.is_empty(),
        "objects at or above the mark {m} after the open: {above:?} (ordering 31)"
    );
    remove_image(store.as_ref(), "img", Some(&dir.path().join("img.wlog"))).unwrap();
    assert_eq!(
        mem.list("").unwrap(),
        Vec::<String>::new(),
        "rm leaves nothing behind"
    );
}

/// Finding 3. `rm` interrupted after the superblock went, and the mark
/// then rots (or is torn by a store that does not put atomically): `create`
/// refuses the name (it stats the mark) and `rm` refuses too (the mark does
/// not decode), with no way out but deleting objects by hand. Everywhere
/// else a rotten mark is not trusted and the image's names are listed
/// once; `rm`'s finishing path should do the same.
#[test]
fn rm_finishes_an_interrupted_removal_whose_mark_rotted() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let mem = Arc::new(MemStore::new());
    let store: Arc<dyn ObjectStore> = mem.clone();
    create_image(store.as_ref(), "img", SIZE).unwrap();
    let mut model = vec![0u8; SIZE as usize];
    let v = open(&store, dir.path(), "img").unwrap();
    fill(&v, &mut model, 4, 8);
    v.close().unwrap();
    mem.delete("img").unwrap();
    let mut b = mem.get(&hwm_name("img"), 0, 4096).unwrap();
    b[33] ^= 0xff;
    mem.put(&hwm_name("img"), &b).unwrap();
    let e = create_image(store.as_ref(), "img", SIZE).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    if let Err(e) = remove_image(store.as_ref(), "img", None) {
        panic!("create refuses the name and rm cannot finish the removal: {e}");
    }
    assert_eq!(mem.list("").unwrap(), vec![POOL_MARKER.to_string()]);
    create_image(store.as_ref(), "img", SIZE).unwrap();
}

// The pool marker (ordering 33): `create` lists a pool only until no
// older build's removal can have left objects without a mark.

fn marker(mem: &MemStore) -> Option<PoolMarker> {
    match mem.get(POOL_MARKER, 0, 4096) {
        Ok(b) => Some(PoolMarker::decode(&b).unwrap()),
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
            None
        }
    }
}

/// An older build's `rm` of `image`, interrupted after the superblock and
/// objects 1 and 2 went: leftovers with no mark.
fn old_interrupted_rm(mem: &MemStore, dir: &Path, image: &str) -> Vec<u64> {
    make_old(mem, image);
    mem.delete(image).unwrap();
    let _ = mem.delete(&object_name(image, ObjSeq(1)));
    let _ = mem.delete(&object_name(image, ObjSeq(2)));
    let _ = std::fs::remove_file(dir.join(format!("{image}.wlog")));
    let left = objects(mem, image);
    assert!(!left.is_empty(), "leftovers");
    left
}

fn written(store: &Arc<dyn ObjectStore>, dir: &Path, image: &str, seed: u64) {
    create_image(store.as_ref(), image, SIZE).unwrap();
    let mut model = vec![0u8; SIZE as usize];
    let v = open(store, dir, image).unwrap();
    fill(&v, &mut model, seed, 6);
    v.close().unwrap();
}

/// The first `create` in an empty pool lists it and writes the marker;
/// every later `create` and `clone` needs no listing.
#[test]
fn create_lists_a_pool_once_then_never() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let mem = Arc::new(MemStore::new());
    let store = unlistable(&mem);
    let e = create_image(store.as_ref(), "a", SIZE).unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::Io,
        "no marker yet: the pool is listed: {e}"
    );
    written(&(mem.clone() as Arc<dyn ObjectStore>), dir.path(), "a", 1);
    let m = marker(&mem).expect("marker written");
    assert_ne!(m.flags & FLAG_REMOVALS_MARKED, 0);
    written(&store, dir.path(), "b", 2);
    written(&store, dir.path(), "c", 3);
    // An interrupted removal of this build is named by the mark.
    mem.delete("b").unwrap();
    let e = create_image(store.as_ref(), "b", SIZE).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    assert!(e.to_string().contains("b.hwm"), "{e}");
    remove_image(store.as_ref(), "b", Some(&dir.path().join("b.wlog"))).unwrap();
    assert_eq!(objects(&mem, "b"), Vec::<u64>::new());
    written(&store, dir.path(), "b", 4);
}

/// A pool with an image of an older build (objects, no mark) gets no
/// marker: that build may still remove it and be interrupted. Once the
/// image has its mark (its first read-write open here), the next `create`
/// writes the marker.
#[test]
fn an_older_builds_image_keeps_the_pool_listed_until_it_has_a_mark() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let mem = Arc::new(MemStore::new());
    let plain: Arc<dyn ObjectStore> = mem.clone();
    let store = unlistable(&mem);
    written(&plain, dir.path(), "old", 1);
    make_old(&mem, "old");
    create_image(plain.as_ref(), "x", SIZE).unwrap();
    assert_eq!(marker(&mem), None, "an unmarked image remains");
    let e = create_image(store.as_ref(), "y", SIZE).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io, "still listed: {e}");
    // Its first read-write open writes its mark.
    open(&plain, dir.path(), "old").unwrap().close().unwrap();
    create_image(plain.as_ref(), "y", SIZE).unwrap();
    assert!(marker(&mem).is_some());
    create_image(store.as_ref(), "z", SIZE).unwrap();
}

/// Leftovers of an older build's interrupted removal of another name keep
/// the pool listed (and are named in a warning) until `rm` finishes that
/// removal; of this name, they refuse it. A zero-length object of the name
/// (a RADOS lock placeholder) is no image.
#[test]
fn an_older_builds_leftovers_keep_the_pool_listed_until_removed() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let mem = Arc::new(MemStore::new());
    let plain: Arc<dyn ObjectStore> = mem.clone();
    written(&plain, dir.path(), "gone", 1);
    old_interrupted_rm(&mem, dir.path(), "gone");
    mem.put("gone", b"").unwrap();
    let e = create_image(plain.as_ref(), "gone", SIZE).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    assert!(e.to_string().contains("gone.0000"), "{e}");
    create_image(plain.as_ref(), "other", SIZE).unwrap();
    assert_eq!(marker(&mem), None, "leftovers of 'gone' remain");
    remove_image(plain.as_ref(), "gone", None).unwrap();
    assert_eq!(objects(&mem, "gone"), Vec::<u64>::new());
    create_image(plain.as_ref(), "gone", SIZE).unwrap();
    assert!(marker(&mem).is_some());
}

/// A rotten marker, or one without the flag, is no marker: the pool is
/// listed and the marker written again.
#[test]
fn a_rotten_marker_is_listed_past_and_rewritten() {
    let mem = Arc::new(MemStore::new());
    let store = unlistable(&mem);
    create_image(mem.as_ref(), "a", SIZE).unwrap();
    let good = mem.get(POOL_MARKER, 0, 4096).unwrap();
    let mut bad = good.clone();
    bad[20] ^= 1;
    mem.put(POOL_MARKER, &bad).unwrap();
    let e = create_image(store.as_ref(), "b", SIZE).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    let clear = PoolMarker {
        flags: 0,
        written_unix: 1,
    };
    mem.put(POOL_MARKER, &clear.encode()).unwrap();
    let e = create_image(store.as_ref(), "b", SIZE).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    create_image(mem.as_ref(), "b", SIZE).unwrap();
    assert_ne!(marker(&mem).unwrap().flags & FLAG_REMOVALS_MARKED, 0);
    create_image(store.as_ref(), "c", SIZE).unwrap();
}
