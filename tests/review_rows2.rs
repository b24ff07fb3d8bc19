//! Second review of the gc-rows change (ordering 32, piece 0's
//! `FLAG_ROWS_COMPLETE`): failing tests for objects that end up with no
//! row in the newest listed checkpoint's table while its flag says the rows
//! are complete (GC then never lists the store, so they leak for good).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lsvd::backend::{FaultAction, FaultOp, FaultRule, FaultStore, MemStore, ObjectStore};
use lsvd::config::Config;
use lsvd::format::checkpoint::{CheckpointPiece, FLAG_ROWS_COMPLETE};
use lsvd::format::superblock::CheckpointRef;
use lsvd::units::ObjSeq;
use lsvd::volume::image::{create_image, object_name, parse_object_name, read_superblock};
use lsvd::volume::{Volume, VolumeOptions};

use common::pattern;

/// Large enough that the few dead objects of these tests never make GC
/// ask for checkpoints of its own (`wants_checkpoints`: 1/12 of the size):
/// the publishes are exactly the ones the tests cause.
const SIZE: u64 = 64 << 20;

fn config(gc: bool) -> Config {
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
        gc_interval_msec: 20,
        gc_rate_bytes: 0,
        ..common::small_config()
    }
}

/// GC on, but only its first step (at open) runs within the test: it lists
/// the store when the loaded checkpoint's rows are not complete.
fn first_step_gc() -> Config {
    Config {
        gc_interval_msec: 600_000,
        ..config(true)
    }
}

fn open_with(store: &Arc<dyn ObjectStore>, dir: &Path, cfg: Config) -> Volume {
    Volume::open(VolumeOptions {
        config: cfg,
        store: store.clone(),
        image: "img".into(),
        journal_path: dir.join("img.wlog"),
        io_log: None,
    })
    .unwrap_or_else(|e| panic!("open: {e:?}"))
}

fn whole(mem: &MemStore, seq: ObjSeq) -> Option<Vec<u8>> {
    let name = object_name("img", seq);
    let n = mem.stat(&name).unwrap()?;
    Some(mem.get(&name, 0, n as usize).unwrap())
}

fn rows_flag(mem: &MemStore, c: CheckpointRef) -> bool {
    CheckpointPiece::decode(&whole(mem, c.seq).unwrap())
        .unwrap()
        .flags
        & FLAG_ROWS_COMPLETE
        != 0
}

fn objects(mem: &MemStore) -> Vec<u64> {
    mem.list("img.")
        .unwrap()
        .iter()
        .filter_map(|n| parse_object_name("img", n))
        .map(|s| s.0)
        .collect()
}

fn overwrite(v: &Volume, seed: u64, n: u64) {
    for i in 0..n {
        let d = pattern(seed * 1000 + i, 64 << 10);
        v.write(0, &d).unwrap();
    }
    v.flush().unwrap();
}

/// What the rows flag promises (ordering 32): every object of the image in
/// the store at or below the newest listed checkpoint's `last_obj` has a
/// row in its table, or is a piece of a listed checkpoint or base link.
/// Returns the objects that break it.
fn rowless(mem: &MemStore) -> Vec<u64> {
    let sb = read_superblock(mem, "img").unwrap();
    let newest = sb.checkpoints[0];
    let p0 = CheckpointPiece::decode(&whole(mem, newest.seq).unwrap()).unwrap();
    let rows: BTreeSet<u64> = p0.objects.iter().map(|o| o.obj.0).collect();
    let listed: BTreeSet<u64> = sb
        .checkpoints
        .iter()
        .chain(sb.links.iter())
        .flat_map(|c| c.piece_seqs())
        .map(|s: ObjSeq| s.0)
        .collect();
    objects(mem)
        .into_iter()
        .filter(|s| *s <= p0.last_obj_seq.0 && !rows.contains(s) && !listed.contains(s))
        .collect()
}

/// Finding A: GC's listing (`list_and_add_rows`, run once when the loaded
/// checkpoint's rows are not complete: an image of a `no_gc` session, such
/// as every CLI `snap`, `resize` and `gc` open, or of an older build) gives
/// a row to every object it finds except the pieces of the checkpoints
/// listed then, and marks the rows complete. The older listed candidate's
/// pieces (below the loaded checkpoint's `last_obj`, so no roll-forward
/// passes them, and their rows dropped by the `no_gc` checkpoint) get a
/// row only when a publish retires them, in memory. When that publish is
/// the session's last (the final checkpoint of `close`), no table ever
/// names them, yet the newest checkpoint says its rows are complete.
#[test]
fn pieces_listed_at_gcs_listing_have_a_row_after_they_retire() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let mem = Arc::new(MemStore::new());
    let store: Arc<dyn ObjectStore> = mem.clone();
    create_image(mem.as_ref(), "img", SIZE).unwrap();
    // A no_gc session: rows with no live data (pieces' rows included) are
    // dropped, the flag is clear.
    let v = open_with(&store, dir.path(), config(false));
    overwrite(&v, 1, 12);
    v.close().unwrap();
    let sb = read_superblock(mem.as_ref(), "img").unwrap();
    assert_eq!(sb.checkpoints.len(), 2, "{sb:?}");
    assert!(!rows_flag(mem.as_ref(), sb.checkpoints[0]));
    let older = sb.checkpoints[1];
    // GC on: its first step lists (the flag is clear) and adds rows.
    let v = open_with(&store, dir.path(), first_step_gc());
    std::thread::sleep(Duration::from_millis(1000));
    // One object: the final checkpoint of close is this session's only
    // publish; it retires `older`.
    overwrite(&v, 2, 1);
    v.close().unwrap();
    let sb = read_superblock(mem.as_ref(), "img").unwrap();
    assert!(
        !sb.checkpoints.contains(&older),
        "the close retired {older:?}: {sb:?}"
    );
    assert!(
        rows_flag(mem.as_ref(), sb.checkpoints[0]),
        "GC listed before the close's checkpoint (its flag is set)"
    );
    let bad = rowless(mem.as_ref());
    assert!(
        bad.is_empty(),
        "the rows flag is set, but objects {bad:x?} (pieces of {older:?}, listed when GC \
         listed) have no row in the newest listed checkpoint's table: GC never deletes them"
    );
}

/// Finding A with a snapshot, end to end: `snap create` without GC (the CLI
/// opens with `no_gc`), then a session with GC whose listing skips the
/// snapshot's pieces (listed then) and whose last publish retires the
/// snapshot's checkpoint. After `snap rm` the snapshot's pieces (a whole
/// map) are never deleted without a listing.
#[test]
fn a_snapshot_taken_without_gc_is_freed_after_snap_rm_without_listing() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let mem = Arc::new(MemStore::new());
    create_image(mem.as_ref(), "img", SIZE).unwrap();
    let plain: Arc<dyn ObjectStore> = mem.clone();
    let v = open_with(&plain, dir.path(), config(false));
    overwrite(&v, 1, 8);
    let snap = v.snapshot_create("a").unwrap();
    // One more object: the close's checkpoint lists the snapshot's as the
    // older candidate (below its `last_obj`, so no roll-forward passes
    // its pieces).
    overwrite(&v, 2, 1);
    v.close().unwrap();
    let sb = read_superblock(mem.as_ref(), "img").unwrap();
    assert_eq!(sb.checkpoints.get(1), Some(&snap.ckpt), "{sb:?}");
    assert!(!rows_flag(mem.as_ref(), sb.checkpoints[0]));
    // GC on: it lists at its first step; then one object, and the close's
    // checkpoint (the session's only publish) retires the snapshot's.
    let v = open_with(&plain, dir.path(), first_step_gc());
    std::thread::sleep(Duration::from_millis(1000));
    overwrite(&v, 3, 1);
    v.close().unwrap();
    let sb = read_superblock(mem.as_ref(), "img").unwrap();
    assert!(
        !sb.checkpoints.contains(&snap.ckpt) && !sb.links.contains(&snap.ckpt),
        "{sb:?}"
    );
    assert!(rows_flag(mem.as_ref(), sb.checkpoints[0]));
    let pieces: Vec<u64> = snap.ckpt.piece_seqs().map(|s| s.0).collect();
    // From here the image's objects cannot be listed (`snap rm` still
    // looks for clones with a listing of its own).
    let f = FaultStore::new(mem.clone(), 0);
    f.add_rule(
        FaultRule::new(FaultOp::List, FaultAction::Fail(lsvd::ErrorKind::Io)).matching("img."),
    );
    let store: Arc<dyn ObjectStore> = Arc::new(f);
    let v = open_with(&store, dir.path(), config(true));
    v.snapshot_remove("a").unwrap();
    let left = |mem: &MemStore| -> Vec<u64> {
        objects(mem)
            .into_iter()
            .filter(|s| pieces.contains(s))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seed = 10;
    while !left(mem.as_ref()).is_empty() && Instant::now() < deadline {
        overwrite(&v, seed, 4);
        seed += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let l = left(mem.as_ref());
    let bad = rowless(mem.as_ref());
    v.close().unwrap();
    assert!(
        l.is_empty(),
        "pieces {l:x?} of removed snapshot a's checkpoint are never deleted (no row, no \
         listing; rowless: {bad:x?})"
    );
}

/// GC's bytes copied within `secs` of an open with `gc_rate_bytes` =
/// 32 KiB/s, on an image with 32 half-live objects (victims: 1 MiB to copy)
/// and, if `snapshot`, 2 MiB of overwritten data a snapshot keeps.
fn gc_bytes_under_rate(snapshot: bool, secs: u64) -> u64 {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let mem = Arc::new(MemStore::new());
    let store: Arc<dyn ObjectStore> = mem.clone();
    create_image(mem.as_ref(), "img", SIZE).unwrap();
    let v = open_with(&store, dir.path(), first_step_gc());
    const K64: u64 = 64 << 10;
    // A: 2 MiB, then (snapshot) overwritten: 32 dead objects it keeps.
    for i in 0..32 {
        v.write(i * K64, &pattern(i, K64 as usize)).unwrap();
    }
    v.flush().unwrap();
    if snapshot {
        v.snapshot_create("s").unwrap();
        for i in 0..32 {
            v.write(i * K64, &pattern(100 + i, K64 as usize)).unwrap();
        }
        v.flush().unwrap();
    }
    // B: 32 objects at 2..4 MiB, every other 4 KiB overwritten: half live.
    for i in 0..32 {
        v.write((32 + i) * K64, &pattern(200 + i, K64 as usize))
            .unwrap();
    }
    v.flush().unwrap();
    for j in 0..256u64 {
        v.write(2 * (1 << 20) + j * 8192, &pattern(1000 + j, 4096))
            .unwrap();
    }
    v.flush().unwrap();
    v.close().unwrap();
    let v = open_with(
        &store,
        dir.path(),
        Config {
            gc_rate_bytes: 32 << 10,
            ..config(true)
        },
    );
    std::thread::sleep(Duration::from_secs(secs));
    let copied = v.stats().gc_bytes;
    v.close().unwrap();
    copied
}

/// Control for the test below: without a snapshot GC keeps to its rate.
#[test]
fn gc_keeps_its_rate_without_a_snapshot() {
    let copied = gc_bytes_under_rate(false, 4);
    assert!(
        copied < 512 << 10,
        "GC copied {copied} bytes in 4 s at 32 KiB/s"
    );
}

/// Finding B (performance): rows with no live data now stay in the table
/// until their objects are deleted, and a snapshot's objects are never
/// deleted while it exists. `Gc::cycle` sums `data_sectors` over every
/// row to decide whether GC has fallen behind (`behind`: stored > 1.5 ×
/// live), which lifts `gc_rate_bytes`. Data a snapshot keeps (GC cannot
/// free it) now counts as stored, so an image whose snapshot's data was
/// overwritten runs GC without its rate limit for as long as the snapshot
/// exists. Before the change such rows were dropped at the next checkpoint.
#[test]
fn gc_keeps_its_rate_while_a_snapshot_keeps_overwritten_data() {
    let copied = gc_bytes_under_rate(true, 4);
    assert!(
        copied < 512 << 10,
        "GC copied {copied} bytes in 4 s at 32 KiB/s: dead rows a snapshot pins count as \
         data GC is behind on, lifting the rate limit"
    );
}
