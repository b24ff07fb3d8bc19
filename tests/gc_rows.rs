//! GC finds what to delete without listing the store (issue 16, part 2):
//! rows with no live data stay in the checkpoint's object table until GC
//! has deleted their objects, so a crash does not forget them (ordering
//! 32, `FLAG_ROWS`). A store whose listings fail serves background GC.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lsvd::backend::{FaultAction, FaultOp, FaultRule, FaultStore, MemStore, ObjectStore};
use lsvd::config::Config;
use lsvd::format::superblock::FLAG_ROWS;
use lsvd::volume::image::{create_image, parse_object_name, read_superblock};
use lsvd::volume::{Volume, VolumeOptions};

use common::pattern;

const SIZE: u64 = 4 << 20;

fn config(gc: bool) -> Config {
    Config {
        backend_obj_bytes: 64 << 10,
        wlog_chunk_bytes: 64 << 10,
        wlog_bytes: 16 << 20,
        checkpoint_interval_objs: 4,
        hard_flush: true,
        no_gc: !gc,
        gc_threshold: 90,
        gc_interval_msec: 20,
        gc_rate_bytes: 0,
        ..common::small_config()
    }
}

fn open(store: &Arc<dyn ObjectStore>, dir: &Path, gc: bool) -> Volume {
    Volume::open(VolumeOptions {
        config: config(gc),
        store: store.clone(),
        image: "img".into(),
        journal_path: dir.join("img.wlog"),
        io_log: None,
    })
    .unwrap_or_else(|e| panic!("open: {e:?}"))
}

fn unlistable(mem: &Arc<MemStore>) -> Arc<dyn ObjectStore> {
    let f = FaultStore::new(mem.clone(), 0);
    f.add_rule(FaultRule::new(
        FaultOp::List,
        FaultAction::Fail(lsvd::ErrorKind::Io),
    ));
    Arc::new(f)
}

fn objects(mem: &MemStore) -> Vec<u64> {
    mem.list("img.")
        .unwrap()
        .iter()
        .filter_map(|n| parse_object_name("img", n))
        .map(|s| s.0)
        .collect()
}

/// The same 64 KiB block written `n` times: every object but the last one
/// written dies.
fn overwrite(v: &Volume, model: &mut [u8], seed: u64, n: u64) {
    for i in 0..n {
        let d = pattern(seed * 1000 + i, 64 << 10);
        v.write(0, &d).unwrap();
        model[..d.len()].copy_from_slice(&d);
    }
    v.flush().unwrap();
}

fn assert_image(v: &Volume, model: &[u8]) {
    let mut buf = vec![0u8; model.len()];
    v.read(0, &mut buf).unwrap();
    assert!(buf == model, "the image differs from the model");
}

/// Dead objects whose rows a checkpoint persisted survive a crash in the
/// table, and background GC deletes them after the reopen without ever
/// listing (the store's listings fail). Without the rows (the old
/// behaviour: dropped at the checkpoint, remembered in memory only) they
/// would wait for a listing sweep that cannot happen here.
#[test]
fn dead_objects_are_deleted_after_a_crash_without_listing() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let mem = Arc::new(MemStore::new());
    let store = unlistable(&mem);
    create_image(mem.as_ref(), "img", SIZE).unwrap();
    assert_ne!(
        read_superblock(mem.as_ref(), "img").unwrap().flags & FLAG_ROWS,
        0
    );
    let mut model = vec![0u8; SIZE as usize];
    // No GC in the first session: the dead objects stay, their rows go
    // into the checkpoints.
    let v = open(&store, dir.path(), false);
    overwrite(&v, &mut model, 1, 24);
    v.crash();
    let before = objects(&mem).len();
    assert!(before >= 24, "{before} objects");
    let v = open(&store, dir.path(), true);
    assert_image(&v, &model);
    let deadline = Instant::now() + Duration::from_secs(60);
    while objects(&mem).len() > before / 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = objects(&mem).len();
    assert!(
        after <= before / 2,
        "GC deleted too little without listing: {before} objects before, {after} after"
    );
    assert_image(&v, &model);
    v.close().unwrap();
    let v = open(&store, dir.path(), false);
    assert_image(&v, &model);
    v.close().unwrap();
}

/// An image without `FLAG_ROWS` (an older build dropped its dead rows) is
/// listed once by GC, which adds rows for what it finds; the next
/// checkpoint sets the flag, and from then on GC needs no listing.
#[test]
fn an_image_without_complete_rows_is_listed_once() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let mem = Arc::new(MemStore::new());
    let store: Arc<dyn ObjectStore> = mem.clone();
    create_image(mem.as_ref(), "img", SIZE).unwrap();
    let mut model = vec![0u8; SIZE as usize];
    let v = open(&store, dir.path(), false);
    overwrite(&v, &mut model, 2, 16);
    v.close().unwrap();
    // Made old: no flag.
    let mut sb = read_superblock(mem.as_ref(), "img").unwrap();
    sb.flags &= !FLAG_ROWS;
    mem.put("img", &sb.encode()).unwrap();
    let v = open(&store, dir.path(), true);
    overwrite(&v, &mut model, 3, 8);
    // More writes, so more checkpoints are published after GC's sweep.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seed = 4;
    while read_superblock(mem.as_ref(), "img").unwrap().flags & FLAG_ROWS == 0
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
        overwrite(&v, &mut model, seed, 4);
        seed += 1;
    }
    assert_ne!(
        read_superblock(mem.as_ref(), "img").unwrap().flags & FLAG_ROWS,
        0,
        "a checkpoint after GC's listing sets the flag"
    );
    assert_image(&v, &model);
    v.close().unwrap();
}
