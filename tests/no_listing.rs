//! Open, recovery, `info` and `rm` find an image's objects below its
//! high-water mark (`IMAGE.hwm`), never by listing the pool (issue 16,
//! part 2): a store whose listings fail serves them all. (`create` lists
//! the image's names once, for leftovers of an older build's removal.)
//! An image of a build before the mark is listed once, at its first
//! read-write open, which writes the mark and sets `INCOMPAT_HWM`.

mod common;

use std::path::Path;
use std::sync::Arc;

use lsvd::backend::{FaultAction, FaultOp, FaultRule, FaultStore, MemStore, ObjectStore};
use lsvd::config::Config;
use lsvd::format::hwm::{HighWater, STEP};
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
    // (`create` lists the image's names once, for an older build's
    // leftovers.)
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
        Vec::<String>::new(),
        "rm removes it all"
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
    // (`create` lists the image's names once, for an older build's
    // leftovers.)
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
    // (`create` lists the image's names once, for an older build's
    // leftovers.)
    create_image(mem.as_ref(), "img", SIZE).unwrap();
    let mut model = vec![0u8; SIZE as usize];
    let v = open(&store, dir.path(), "img").unwrap();
    fill(&v, &mut model, 6, 8);
    v.close().unwrap();
    // `rm` interrupted right after the superblock went.
    mem.delete("img").unwrap();
    let e = create_image(mem.as_ref(), "img", SIZE).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    assert!(
        e.to_string().contains("`lsvd-ublk rm` of this image"),
        "{e}"
    );
    remove_image(store.as_ref(), "img", None).unwrap();
    assert_eq!(mem.list("").unwrap(), Vec::<String>::new());
    create_image(mem.as_ref(), "img", SIZE).unwrap();
    // With no mark and no superblock, `rm` lists for an older build's
    // leftovers (a repair path) and finds nothing to remove.
    let e = remove_image(mem.as_ref(), "nope", None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}

// The review of the mark (commit 76cb0a9, by a helper): each of these
// failed there.

/// Turn `img` into what a build before the mark left: no bit, no mark.
fn make_old(mem: &MemStore, image: &str) {
    let mut sb = read_superblock(mem, image).unwrap();
    sb.incompat &= !INCOMPAT_HWM;
    mem.put(image, &sb.encode()).unwrap();
    mem.delete(&hwm_name(image)).unwrap();
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
    assert_eq!(mem.list("").unwrap(), Vec::<String>::new());
    create_image(store.as_ref(), "img", SIZE).unwrap();
}
