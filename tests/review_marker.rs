//! Review (helper 35) of d3c6902 (the pool marker `lsvd:pool.flags`,
//! FLAG_REMOVALS_MARKED, ordering 33) and ef4dd71 (`no_gc_dead_rows`).
//! Each test here failed at the reviewed commit.

use std::sync::Arc;

use lsvd::backend::{MemStore, ObjectStore};
use lsvd::format::pool::{PoolMarker, FLAG_REMOVALS_MARKED, NAME as POOL_MARKER};
use lsvd::format::superblock::INCOMPAT_HWM;
use lsvd::volume::clone_image;
use lsvd::volume::image::{create_image, hwm_name, read_superblock};
use lsvd::ErrorKind;

const SIZE: u64 = 4 << 20;

fn marker(mem: &MemStore) -> Option<PoolMarker> {
    match mem.get(POOL_MARKER, 0, 4096) {
        Ok(b) => Some(PoolMarker::decode(&b).unwrap()),
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
            None
        }
    }
}

/// What a build before the mark left of `image`: no `INCOMPAT_HWM`, no
/// mark; the pool has no marker either.
fn make_old(mem: &MemStore, image: &str) {
    let mut sb = read_superblock(mem, image).unwrap();
    sb.incompat &= !INCOMPAT_HWM;
    mem.put(image, &sb.encode()).unwrap();
    mem.delete(&hwm_name(image)).unwrap();
    let _ = mem.delete(POOL_MARKER);
}

/// Finding M1 (low). docs/format.md, *Pool marker*: the marker is written
/// only if there is "no image of an older build, which that build might
/// still remove and be interrupted". The check only looks for names with
/// `X.<16 hex>` objects and no `X.hwm`, but an older build's `create`
/// (before 76cb0a9) put only the superblock: an image of an older build
/// that was never written — or an older build's clone, which is one
/// superblock — has no `X.<hex>` object, so the marker is written while an
/// image of an older build exists. Once that build writes it and is
/// interrupted removing it, its leftovers have no mark and no later
/// `create` of the name lists (the foreign-object / lost-write hazard the
/// marker exists to rule out).
#[test]
fn an_older_builds_image_without_objects_keeps_the_pool_listed() {
    let mem = Arc::new(MemStore::new());
    create_image(mem.as_ref(), "old", SIZE).unwrap();
    make_old(&mem, "old");
    assert!(mem.list("old.").unwrap().is_empty(), "superblock only");
    create_image(mem.as_ref(), "x", SIZE).unwrap();
    assert_eq!(
        marker(&mem),
        None,
        "the pool marker was written while image 'old' of an older build (no mark) exists"
    );
}

/// The same for an older build's clone (one superblock, no objects).
#[test]
fn an_older_builds_clone_keeps_the_pool_listed() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let mem = Arc::new(MemStore::new());
    let store: Arc<dyn ObjectStore> = mem.clone();
    create_image(mem.as_ref(), "base", SIZE).unwrap();
    let v = lsvd::volume::Volume::open(lsvd::volume::VolumeOptions {
        config: lsvd::config::Config {
            no_gc: true,
            ..lsvd::config::Config::default()
        },
        store: store.clone(),
        image: "base".into(),
        journal_path: dir.path().join("base.wlog"),
        io_log: None,
    })
    .unwrap();
    v.snapshot_create("gold").unwrap();
    v.close().unwrap();
    clone_image(mem.as_ref(), "base", "gold", "child").unwrap();
    make_old(&mem, "child");
    assert!(mem.list("child.").unwrap().is_empty(), "superblock only");
    // `base` keeps its mark: only the clone is of the older build.
    create_image(mem.as_ref(), "x", SIZE).unwrap();
    assert_eq!(
        marker(&mem),
        None,
        "the pool marker was written while clone 'child' of an older build (no mark) exists"
    );
}

/// Finding M2 (low). Another program's object whose name parses as
/// `X.<16 hex>` with a valid image name `X` — RBD's `rbd_id.<image name>`
/// for an RBD image named by 16 hex digits — is taken for an older build's
/// leftovers: the marker is never written (every `create` lists the whole
/// pool, the cost d3c6902 removes), and every `create` warns "objects of
/// removed images remain ... `lsvd-ublk rm POOL/rbd_id` finishes its
/// removal" — advice which, followed, deletes RBD's id object (that `rm`
/// deletes every `rbd_id.<16 hex>` it lists). An lsvd object can be told
/// apart by its content (every kind starts with an `LSVD` magic; a tombstone
/// is fixed bytes).
#[test]
fn a_foreign_object_named_like_an_image_object_does_not_keep_the_pool_listed() {
    let mem = Arc::new(MemStore::new());
    // RBD: `rbd_id.<name>` holds the image's id (a length-prefixed string).
    mem.put("rbd_id.0123456789abcdef", b"\x0c\x00\x00\x0010226b8b4567")
        .unwrap();
    create_image(mem.as_ref(), "a", SIZE).unwrap();
    let m = marker(&mem).expect("no pool marker: a foreign object keeps every create listing");
    assert_ne!(m.flags & FLAG_REMOVALS_MARKED, 0);
}
