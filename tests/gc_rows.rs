//! GC finds what to delete without listing the store (issue 16, part 2):
//! rows with no live data stay in the checkpoint's object table until GC
//! has deleted their objects, so a crash does not forget them (ordering
//! 32; a checkpoint's piece 0 says so with `FLAG_ROWS_COMPLETE`). A store
//! whose listings fail serves background GC.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lsvd::backend::{FaultAction, FaultOp, FaultRule, FaultStore, MemStore, ObjectStore};
use lsvd::config::Config;
use lsvd::format::checkpoint::{CheckpointPiece, FLAG_ROWS_COMPLETE};
use lsvd::volume::image::{create_image, object_name, parse_object_name, read_superblock};
use lsvd::volume::{Volume, VolumeOptions};

use common::pattern;

const SIZE: u64 = 4 << 20;

fn config(gc: bool) -> Config {
    config_every(gc, 20)
}

fn config_every(gc: bool, gc_interval_msec: u64) -> Config {
    Config {
        backend_obj_bytes: 64 << 10,
        wlog_chunk_bytes: 64 << 10,
        wlog_bytes: 16 << 20,
        checkpoint_interval_objs: 4,
        hard_flush: true,
        no_gc: !gc,
        // Dead rows dropped at every no_gc checkpoint (the bound's
        // far side; `no_gc_keeps_few_dead_rows` covers the near one).
        no_gc_dead_rows: 0,
        gc_threshold: 90,
        gc_interval_msec,
        gc_rate_bytes: 0,
        ..common::small_config()
    }
}

fn open(store: &Arc<dyn ObjectStore>, dir: &Path, gc: bool) -> Volume {
    open_with(store, dir, config(gc))
}

fn open_with(store: &Arc<dyn ObjectStore>, dir: &Path, config: Config) -> Volume {
    Volume::open(VolumeOptions {
        config,
        store: store.clone(),
        image: "img".into(),
        journal_path: dir.join("img.wlog"),
        io_log: None,
    })
    .unwrap_or_else(|e| panic!("open: {e:?}"))
}

/// Whether the newest listed checkpoint's piece 0 says its rows are
/// complete.
fn newest_rows_complete(mem: &MemStore) -> bool {
    let sb = read_superblock(mem, "img").unwrap();
    let c = sb.checkpoints.first().expect("a listed checkpoint");
    let b = mem.get(&object_name("img", c.seq), 0, 64 << 20).unwrap();
    CheckpointPiece::decode(&b).unwrap().flags & FLAG_ROWS_COMPLETE != 0
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
    let mut model = vec![0u8; SIZE as usize];
    // GC on, but its next step a minute away: the dead objects stay, their
    // rows go into the checkpoints.
    let v = open_with(&store, dir.path(), config_every(true, 60_000));
    overwrite(&v, &mut model, 1, 24);
    assert!(newest_rows_complete(&mem));
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

/// A checkpoint whose rows are not complete (one of a `no_gc` session,
/// which drops dead rows, as builds before ordering 32 did) makes GC list
/// once, adding rows for what it finds; the next checkpoint says its rows
/// are complete, and from then on GC needs no listing.
#[test]
fn a_checkpoint_without_complete_rows_makes_gc_list_once() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let mem = Arc::new(MemStore::new());
    let store: Arc<dyn ObjectStore> = mem.clone();
    create_image(mem.as_ref(), "img", SIZE).unwrap();
    let mut model = vec![0u8; SIZE as usize];
    let v = open(&store, dir.path(), false);
    overwrite(&v, &mut model, 2, 16);
    v.close().unwrap();
    assert!(
        !newest_rows_complete(&mem),
        "a no_gc checkpoint drops dead rows"
    );
    // GC lists once (a listable store), then checkpoints say complete.
    let v = open_with(&store, dir.path(), config_every(true, 60_000));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seed = 3;
    while !newest_rows_complete(&mem) && Instant::now() < deadline {
        overwrite(&v, &mut model, seed, 4);
        seed += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        newest_rows_complete(&mem),
        "no checkpoint after GC's listing"
    );
    assert_image(&v, &model);
    v.crash();
    // From here no listing is needed: GC deletes through the rows.
    let before = objects(&mem).len();
    let v = open(&unlistable(&mem), dir.path(), true);
    let deadline = Instant::now() + Duration::from_secs(60);
    while objects(&mem).len() > before / 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        objects(&mem).len() <= before / 2,
        "GC deleted too little without listing: {before} before, {} after",
        objects(&mem).len()
    );
    assert_image(&v, &model);
    v.close().unwrap();
}

/// A short `no_gc` session (as the CLI's `snap create` and `resize` are)
/// keeps its few dead rows (`no_gc_dead_rows`, default 1024) and says its
/// rows are complete, so the next session's GC deletes those objects
/// without listing (the store's listings fail).
#[test]
fn no_gc_keeps_few_dead_rows() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let mem = Arc::new(MemStore::new());
    let store = unlistable(&mem);
    create_image(mem.as_ref(), "img", SIZE).unwrap();
    let mut model = vec![0u8; SIZE as usize];
    let v = open_with(
        &store,
        dir.path(),
        Config {
            no_gc_dead_rows: Config::default().no_gc_dead_rows,
            ..config(false)
        },
    );
    overwrite(&v, &mut model, 1, 24);
    v.close().unwrap();
    assert!(
        newest_rows_complete(&mem),
        "a no_gc checkpoint with 24 dead rows keeps them"
    );
    let before = objects(&mem).len();
    assert!(before >= 24, "{before} objects");
    let v = open(&store, dir.path(), true);
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
}
