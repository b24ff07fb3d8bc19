//! Delta checkpoints through the whole engine: what is written, what a
//! reopen loads (after a close, a crash, with the journal gone), what
//! happens when a delta or the checkpoint it is built on is corrupt, what
//! is retired, and what a snapshot names.

mod common;

use std::path::Path;
use std::sync::Arc;

use lsvd::backend::{MemStore, ObjectStore};
use lsvd::config::Config;
use lsvd::format::checkpoint::CheckpointPiece;
use lsvd::format::superblock::{CheckpointRef, INCOMPAT_DELTA_CKPT};
use lsvd::units::ObjSeq;
use lsvd::volume::image::{create_image, object_name, read_superblock};
use lsvd::volume::{Volume, VolumeOptions};
use lsvd::ErrorKind;

use common::pattern;

const SIZE: u64 = 4 << 20;

/// Small objects and a checkpoint every 2 of them, so a few hundred writes
/// make many checkpoints.
fn config(dir: &Path) -> Config {
    Config {
        backend_obj_bytes: 64 << 10,
        wlog_chunk_bytes: 64 << 10,
        wlog_bytes: 16 << 20,
        checkpoint_interval_objs: 2,
        backend_write_window: 2,
        hard_flush: true,
        no_gc: true,
        // Rows of dead objects dropped at every checkpoint, as before they
        // were kept for GC (ordering 32): at this scale (a checkpoint every
        // two 64 KiB objects) the rows of checkpoint pieces awaiting
        // deletion, which every delta's whole table carries, would outweigh
        // the map these tests compare deltas with.
        no_gc_dead_rows: 0,
        rcache_dir: dir.join("rcache"),
        rcache_bytes: 4 << 20,
        ..common::small_config()
    }
}

fn open(store: &Arc<dyn ObjectStore>, dir: &Path, c: &Config) -> lsvd::Result<Volume> {
    Volume::open(VolumeOptions {
        config: c.clone(),
        store: store.clone(),
        image: "img".into(),
        journal_path: dir.join("img.wlog"),
        io_log: None,
    })
}

fn setup() -> (tempfile::TempDir, Arc<MemStore>, Arc<dyn ObjectStore>) {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let mem = Arc::new(MemStore::new());
    let store: Arc<dyn ObjectStore> = mem.clone();
    create_image(store.as_ref(), "img", SIZE).unwrap();
    (dir, mem, store)
}

/// `n` scattered 4 KiB writes (seeded), applied to `model` too.
fn scribble(v: &Volume, model: &mut [u8], seed: u64, n: u64) {
    for i in 0..n {
        let off = ((i * 131 + seed * 977) % (SIZE / 4096)) * 4096;
        let d = pattern(seed * 10_000 + i, 4096);
        v.write(off, &d).unwrap();
        model[off as usize..off as usize + 4096].copy_from_slice(&d);
    }
}

fn assert_image(v: &Volume, model: &[u8], what: &str) {
    let mut buf = vec![0u8; model.len()];
    v.read(0, &mut buf).unwrap();
    assert!(buf == model, "{what}: the image differs from the model");
}

fn piece(store: &Arc<dyn ObjectStore>, seq: ObjSeq) -> CheckpointPiece {
    let name = object_name("img", seq);
    let b = store.get(&name, 0, 64 << 20).unwrap();
    CheckpointPiece::decode(&b).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn is_delta(store: &Arc<dyn ObjectStore>, c: CheckpointRef) -> bool {
    piece(store, c.seq).delta.is_some()
}

fn corrupt(mem: &MemStore, seq: ObjSeq) {
    let name = object_name("img", seq);
    let mut b = mem.get(&name, 0, 64 << 20).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x40;
    mem.put(&name, &b).unwrap();
}

/// A built image: many checkpoints, the newest listed one a delta built on
/// the other listed one. The journal is removed, so only the backend
/// holds the image.
fn image_with_deltas() -> (
    tempfile::TempDir,
    Arc<MemStore>,
    Arc<dyn ObjectStore>,
    Vec<u8>,
) {
    let (dir, mem, store) = setup();
    let c = config(dir.path());
    let mut model = vec![0u8; SIZE as usize];
    let v = open(&store, dir.path(), &c).unwrap();
    // A full map first (every block written), then small changes.
    for off in (0..SIZE).step_by(64 << 10) {
        let d = pattern(off + 7, 64 << 10);
        v.write(off, &d).unwrap();
        model[off as usize..off as usize + d.len()].copy_from_slice(&d);
    }
    for round in 0..6 {
        scribble(&v, &mut model, round, 40);
        v.flush().unwrap();
    }
    let st = v.stats();
    assert!(st.checkpoints_delta >= 3, "{st:?}");
    assert!(st.checkpoints_full >= 1, "{st:?}");
    v.crash();
    // The newest listed checkpoint must be a delta on a delta, so that
    // base links exist (how many checkpoints the writes made depends on
    // timing, and every 8th is full): more sessions until it is (looked at
    // after each crash, when nothing can publish any more).
    for round in 6..40 {
        let sb = read_superblock(store.as_ref(), "img").unwrap();
        if sb.checkpoints.len() == 2 && is_delta(&store, sb.checkpoints[0]) && !sb.links.is_empty()
        {
            break;
        }
        let v = open(&store, dir.path(), &c).unwrap();
        scribble(&v, &mut model, round, 20);
        v.flush().unwrap();
        v.crash();
    }
    std::fs::remove_file(dir.path().join("img.wlog")).unwrap();
    let sb = read_superblock(store.as_ref(), "img").unwrap();
    assert_ne!(sb.incompat & INCOMPAT_DELTA_CKPT, 0);
    assert_eq!(sb.checkpoints.len(), 2, "{sb:?}");
    assert!(is_delta(&store, sb.checkpoints[0]), "{sb:?}");
    assert!(!sb.links.is_empty(), "{sb:?}");
    (dir, mem, store, model)
}

#[test]
fn deltas_are_small_and_a_reopen_loads_them() {
    let (dir, _mem, store, model) = image_with_deltas();
    let c = config(dir.path());
    let sb = read_superblock(store.as_ref(), "img").unwrap();
    // Whatever the newest is, every listed delta's chain is listed.
    for cand in &sb.checkpoints {
        let mut cur = *cand;
        while let Some(d) = piece(&store, cur.seq).delta {
            let base = CheckpointRef {
                seq: d.base_seq,
                pieces: d.base_pieces,
            };
            assert!(
                sb.checkpoints.contains(&base) || sb.links.contains(&base),
                "{base:?} not listed in {sb:?}"
            );
            cur = base;
        }
    }
    let v = open(&store, dir.path(), &c).unwrap();
    assert_image(&v, &model, "backend only, after a crash");
    // A delta holds what changed: far less than the full map. Every delta
    // listed now (each a few random 4 KiB blocks of changes) against the
    // extents alone of a full checkpoint of the map now (which only grew:
    // random 4 KiB writes split its 64 KiB extents).
    let mut model = model;
    for round in 10..14 {
        scribble(&v, &mut model, round, 8);
        v.flush().unwrap();
    }
    let bytes = |c: CheckpointRef| -> u64 {
        c.piece_seqs()
            .map(|s| store.stat(&object_name("img", s)).unwrap().unwrap())
            .sum()
    };
    // (The newest may be the full one that starts a chain: then the other
    // candidate ends the previous chain.) The chain's full checkpoint is
    // not the yardstick: it was taken when the map was smaller.
    let sb = read_superblock(store.as_ref(), "img").unwrap();
    let mut seen = 0;
    for cand in &sb.checkpoints {
        let mut deltas = vec![];
        let mut cur = *cand;
        while let Some(d) = piece(&store, cur.seq).delta {
            deltas.push(bytes(cur));
            cur = CheckpointRef {
                seq: d.base_seq,
                pieces: d.base_pieces,
            };
        }
        let full = 24 * v.stats().map_extents;
        assert!(
            deltas.iter().all(|&d| d * 2 < full),
            "deltas {deltas:?} bytes against {full} of extents in a full checkpoint"
        );
        seen += deltas.len();
    }
    assert!(seen > 0, "no delta listed: {sb:?}");
    v.close().unwrap();
    let v = open(&store, dir.path(), &c).unwrap();
    assert_image(&v, &model, "after a clean close");
    v.close().unwrap();
}

#[test]
fn a_corrupt_delta_falls_back_to_its_base_and_loses_nothing() {
    let (dir, mem, store, model) = image_with_deltas();
    let sb = read_superblock(store.as_ref(), "img").unwrap();
    let newest = sb.checkpoints[0];
    assert!(is_delta(&store, newest), "{sb:?}");
    corrupt(&mem, newest.seq);
    let v = open(&store, dir.path(), &config(dir.path())).unwrap();
    assert_image(&v, &model, "base + roll-forward");
    v.close().unwrap();
    let after = read_superblock(store.as_ref(), "img").unwrap();
    assert!(!after.checkpoints.contains(&newest), "{after:?}");
}

#[test]
fn a_corrupt_base_is_found_and_nothing_is_deleted() {
    let (dir, mem, store, model) = image_with_deltas();
    let c = config(dir.path());
    let sb = read_superblock(store.as_ref(), "img").unwrap();
    // The full checkpoint at the bottom of the newest's chain.
    let mut cur = sb.checkpoints[0];
    while let Some(d) = piece(&store, cur.seq).delta {
        cur = CheckpointRef {
            seq: d.base_seq,
            pieces: d.base_pieces,
        };
    }
    assert_ne!(cur, sb.checkpoints[0]);
    corrupt(&mem, cur.seq);
    let before = store.list("img.").unwrap();
    // Without GC every object is still there: the chain is unusable, and
    // recovery rolls forward from the first object.
    let v = open(&store, dir.path(), &c).unwrap();
    assert_image(&v, &model, "roll-forward from the first object");
    v.crash();
    let after = store.list("img.").unwrap();
    assert!(before.iter().all(|n| after.contains(n)), "nothing deleted");
    // With GC's feature bit set (objects below the checkpoints may be
    // gone), the same image is refused and nothing is deleted.
    let (dir2, mem2, store2, _) = image_with_deltas();
    let mut sb2 = read_superblock(store2.as_ref(), "img").unwrap();
    sb2.incompat |= lsvd::format::superblock::INCOMPAT_GC;
    sb2.update_seq += 1;
    store2.put("img", &sb2.encode()).unwrap();
    let mut cur = sb2.checkpoints[0];
    while let Some(d) = piece(&store2, cur.seq).delta {
        cur = CheckpointRef {
            seq: d.base_seq,
            pieces: d.base_pieces,
        };
    }
    corrupt(&mem2, cur.seq);
    let before = store2.list("img.").unwrap();
    let e = open(&store2, dir2.path(), &config(dir2.path()))
        .err()
        .expect("refused");
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains("no usable checkpoint"), "{e}");
    assert_eq!(store2.list("img.").unwrap(), before, "nothing deleted");
}

#[test]
fn retired_checkpoints_are_tombstoned_and_links_are_kept() {
    // Clean sessions only: a crash may leave the pieces of a checkpoint it
    // never published, unlisted and not tombstoned (roll-forward skips
    // them).
    let (dir, _mem, store) = setup();
    let c = config(dir.path());
    let mut model = vec![0u8; SIZE as usize];
    for session in 0..3 {
        let v = open(&store, dir.path(), &c).unwrap();
        for off in (0..SIZE).step_by(64 << 10) {
            v.write(off, &pattern(off + session, 64 << 10)).unwrap();
        }
        for round in 0..6 {
            scribble(&v, &mut model, session * 10 + round, 40);
            v.flush().unwrap();
        }
        assert!(v.stats().checkpoints_delta > 0);
        v.close().unwrap();
    }
    let sb = read_superblock(store.as_ref(), "img").unwrap();
    let kept: Vec<CheckpointRef> = sb.checkpoints.iter().chain(&sb.links).copied().collect();
    let in_kept = |s: ObjSeq| kept.iter().any(|c| c.piece_seqs().any(|p| p == s));
    let mut live_pieces = 0;
    for name in store.list("img.").unwrap() {
        let Some(seq) = lsvd::volume::image::parse_object_name("img", &name) else {
            continue;
        };
        let b = store.get(&name, 0, 64 << 20).unwrap();
        if !b.starts_with(b"LSVDCKP1") {
            continue;
        }
        if in_kept(seq) {
            CheckpointPiece::decode(&b).unwrap();
            live_pieces += 1;
        } else {
            assert_eq!(b.len(), 12, "{name}: an unlisted piece is a tombstone");
        }
    }
    assert_eq!(
        live_pieces,
        kept.iter().map(|c| c.pieces as usize).sum::<usize>()
    );
    drop(dir);
}

#[test]
fn only_full_checkpoints_with_full_every_1_and_snapshots_name_full_ones() {
    let (dir, _mem, store) = setup();
    let c = Config {
        checkpoint_full_every: 1,
        ..config(dir.path())
    };
    let mut model = vec![0u8; SIZE as usize];
    let v = open(&store, dir.path(), &c).unwrap();
    for round in 0..4 {
        scribble(&v, &mut model, round, 40);
        v.flush().unwrap();
    }
    assert_eq!(v.stats().checkpoints_delta, 0);
    v.close().unwrap();
    let sb = read_superblock(store.as_ref(), "img").unwrap();
    assert_eq!(sb.incompat & INCOMPAT_DELTA_CKPT, 0, "{sb:?}");
    assert!(sb.links.is_empty());
    // With deltas on, a snapshot still names a full checkpoint, and reads
    // as the image did.
    let v = open(&store, dir.path(), &config(dir.path())).unwrap();
    for round in 4..8 {
        scribble(&v, &mut model, round, 40);
        v.flush().unwrap();
    }
    assert!(v.stats().checkpoints_delta > 0);
    let s = v.snapshot_create("s1").unwrap();
    assert!(!is_delta(&store, s.ckpt), "{s:?}");
    scribble(&v, &mut model.clone(), 9, 40);
    v.close().unwrap();
    let snap = Volume::open_snapshot(config(dir.path()), store.clone(), "img", "s1").unwrap();
    assert_image(&snap, &model, "the snapshot");
}

/// What recovery rolls forward past the loaded checkpoint is a change the
/// next delta must hold: with the journal gone and those objects below
/// the new checkpoint, nothing else brings their writes back.
#[test]
fn rolled_forward_writes_are_in_the_next_delta() {
    let (dir, _mem, store, mut model) = image_with_deltas();
    // Objects above the newest checkpoint, and no checkpoint after them.
    let quiet = Config {
        checkpoint_interval_objs: 1000,
        ..config(dir.path())
    };
    let v = open(&store, dir.path(), &quiet).unwrap();
    scribble(&v, &mut model, 50, 20);
    v.flush().unwrap();
    assert!(v.stats().data_objects >= 1);
    v.crash();
    let listed = read_superblock(store.as_ref(), "img").unwrap().checkpoints;
    // Recovery rolls them forward; the close's checkpoint, a delta, has
    // its last object past them (a chain of 16 at most: no full one comes
    // in between).
    let long_chain = Config {
        checkpoint_full_every: 16,
        ..config(dir.path())
    };
    let v = open(&store, dir.path(), &long_chain).unwrap();
    scribble(&v, &mut model, 51, 10);
    v.close().unwrap();
    let sb = read_superblock(store.as_ref(), "img").unwrap();
    assert!(!listed.contains(&sb.checkpoints[0]), "{sb:?}");
    assert!(is_delta(&store, sb.checkpoints[0]), "{sb:?}");
    std::fs::remove_file(dir.path().join("img.wlog")).unwrap();
    let v = open(&store, dir.path(), &config(dir.path())).unwrap();
    assert_image(&v, &model, "writes rolled forward once, then checkpointed");
    // The delta loaded (one missing those writes fails its table's live
    // counts, and recovery falls back past it, dropping it from the list).
    let now = read_superblock(store.as_ref(), "img").unwrap();
    assert_eq!(now.checkpoints[0], sb.checkpoints[0], "{now:?}");
    v.close().unwrap();
}

/// The chain below candidate `c` (its bases down to the full one).
fn chain_of(store: &Arc<dyn ObjectStore>, c: CheckpointRef) -> Vec<CheckpointRef> {
    let mut out = Vec::new();
    let mut cur = c;
    while let Some(d) = piece(store, cur.seq).delta {
        cur = CheckpointRef {
            seq: d.base_seq,
            pieces: d.base_pieces,
        };
        out.push(cur);
    }
    out
}

/// A base link every listed candidate is loaded through (so losing it
/// makes every candidate unusable).
fn shared_link(store: &Arc<dyn ObjectStore>) -> CheckpointRef {
    let sb = read_superblock(store.as_ref(), "img").unwrap();
    let chains: Vec<Vec<CheckpointRef>> =
        sb.checkpoints.iter().map(|c| chain_of(store, *c)).collect();
    *sb.links
        .iter()
        .find(|l| chains.iter().all(|ch| ch.contains(l)))
        .unwrap_or_else(|| panic!("no link shared by every candidate: {sb:?}"))
}

/// Found by review: a lost piece of a link makes both candidates unusable,
/// and the open rolls forward from object 1 (no GC). That roll-forward
/// treated only the candidates' pieces as never a gap (ordering 29): the
/// link's missing piece ended the log and every object above it was
/// deleted (with the journal gone, the writes were lost). A link's piece is
/// tombstoned and skipped like a failed candidate's.
#[test]
fn a_missing_link_piece_is_no_gap_for_the_roll_forward_from_object_1() {
    let (dir, mem, store, model) = image_with_deltas();
    let link = shared_link(&store);
    let lost = object_name("img", link.seq);
    mem.delete(&lost).unwrap();
    let before = store.list("img.").unwrap();
    let v = open(&store, dir.path(), &config(dir.path())).unwrap();
    let after = store.list("img.").unwrap();
    let gone: Vec<&String> = before.iter().filter(|n| !after.contains(n)).collect();
    assert!(
        gone.is_empty(),
        "recovery deleted {} objects above the lost link piece {lost}: {:?}...",
        gone.len(),
        &gone[..gone.len().min(5)]
    );
    assert_image(&v, &model, "rolled forward from the first object");
    v.close().unwrap();
}

/// Found by review: the same with a link piece that rotted into garbage
/// (not even the checkpoint magic left). It refused the whole open as a
/// corrupt object, although it holds no data; like a failed candidate's
/// piece it is tombstoned and skipped (ordering 29).
#[test]
fn a_rotten_link_piece_does_not_refuse_the_roll_forward_from_object_1() {
    let (dir, mem, store, model) = image_with_deltas();
    let link = shared_link(&store);
    let name = object_name("img", link.seq);
    let len = mem.get(&name, 0, 64 << 20).unwrap().len();
    mem.put(&name, &vec![0xa5u8; len]).unwrap();
    let v = open(&store, dir.path(), &config(dir.path()))
        .unwrap_or_else(|e| panic!("open refused over a rotten link piece {name}: {e}"));
    assert_image(&v, &model, "rolled forward from the first object");
    v.close().unwrap();
}
