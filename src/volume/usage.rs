//! Space use of one image and its snapshots in the store (`lsvd-ublk du`),
//! read without opening the image and without its lock.
//!
//! The figures come from the superblock, the newest usable listed
//! checkpoint (loaded as recovery would load it, nothing rolled forward)
//! and each snapshot's checkpoint, and from one `stat` per object sequence
//! below the image's high-water mark (as `info` counts its objects: the
//! pool is not listed). For an image attached elsewhere they are as of its
//! last checkpoint; objects put since are counted as stored but not as
//! garbage ([`Usage::uncheckpointed_bytes`]).
//!
//! Rows: the image (its head) and each snapshot. Every stored object is
//! charged to exactly one row, by when it was written, like `rbd du`
//! charges a snapshot with what changed since the snapshot before it: a
//! snapshot's checkpoint pieces and the objects after the previous
//! snapshot's last object up to its own go to the snapshot; the rest
//! (written after the last snapshot) to the image. So the rows' stored
//! bytes add up to what the image's objects take in the store.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use tracing::warn;

use super::recovery::{load_chain, load_checkpoint};
use crate::backend::ObjectStore;
use crate::catalog::image::{for_each_below, object_name, read_superblock, sequence_bound};
use crate::error::{ErrorKind, Result};
use crate::format::superblock::{CheckpointRef, SNAP_REMOVING};
use crate::map::ObjectMap;
use crate::units::{ObjSeq, SECTOR};

/// The columns of one row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    /// The image's (or, for a snapshot, the image's when it was taken)
    /// size in bytes.
    pub provisioned_bytes: u64,
    /// Bytes its map maps to data in the store: what it would read back
    /// as written (a clone's zero markers and what it reads through from
    /// its parent are not counted).
    pub written_bytes: u64,
    /// Bytes of the objects charged to the row (data, GC and checkpoint
    /// objects and tombstones), as the store reports their lengths.
    pub stored_bytes: u64,
    /// Of `stored_bytes`, what neither the image nor any of its snapshots
    /// needs: the data of an object that no map reads, and whole objects
    /// that hold nothing needed (cleaned and awaiting deletion, retired
    /// checkpoints, tombstones). GC reclaims it: an object once its live
    /// fraction falls below `gc_threshold`, a dead one at the next run.
    pub garbage_bytes: u64,
}

/// One snapshot's row.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SnapUsage {
    /// Snapshot name.
    pub snapshot: String,
    /// `snap rm` has begun and not finished.
    pub removing: bool,
    /// Its columns.
    #[serde(flatten)]
    pub usage: Usage,
}

/// An image's rows.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ImageUsage {
    /// Image name.
    pub image: String,
    /// The head's columns (objects written after the last snapshot).
    #[serde(flatten)]
    pub usage: Usage,
    /// Bytes of objects above the loaded checkpoint's last object: put
    /// after it (an image attached elsewhere, or one that has not been
    /// opened since a crash), counted in `stored_bytes` but not in
    /// `written_bytes` or `garbage_bytes`. 0 for an image closed cleanly.
    pub uncheckpointed_bytes: u64,
    /// The checkpoint the head's figures come from (its first object
    /// sequence), if any.
    pub checkpoint: Option<u64>,
    /// A clone's parent snapshot as `image@snap` (what it reads through to
    /// is counted in the parent's rows, never in the clone's).
    pub parent: Option<String>,
    /// Snapshots, oldest first.
    pub snapshots: Vec<SnapUsage>,
}

/// Per object: its data sectors (from any table naming it) and the
/// sectors some map reads, counted once however many maps read them.
#[derive(Default)]
struct Liveness {
    data_sectors: BTreeMap<u64, u64>,
    spans: Vec<(u64, u64, u64)>,
}

impl Liveness {
    /// Add one map: its table and its extents. Returns the sectors it maps
    /// to objects (zero markers left out).
    fn add(&mut self, map: &ObjectMap) -> u64 {
        for (obj, info) in map.objects() {
            let d = self.data_sectors.entry(obj.0).or_default();
            *d = (*d).max(info.data_sectors);
        }
        let mut written = 0;
        for x in map.extents() {
            if x.target.is_zero() {
                continue;
            }
            written += x.len;
            let off = u64::from(x.target.offset);
            self.spans.push((x.target.obj.0, off, off + x.len));
        }
        written
    }

    /// Live sectors per object: the union of every map's extents in it.
    fn live(mut self) -> (BTreeMap<u64, u64>, BTreeMap<u64, u64>) {
        self.spans.sort_unstable();
        let mut live: BTreeMap<u64, u64> = BTreeMap::new();
        let mut cur: Option<(u64, u64, u64)> = None;
        for (obj, start, end) in self.spans {
            match &mut cur {
                Some((o, _, e)) if *o == obj && start <= *e => *e = (*e).max(end),
                _ => {
                    if let Some((o, s, e)) = cur {
                        *live.entry(o).or_default() += e - s;
                    }
                    cur = Some((obj, start, end));
                }
            }
        }
        if let Some((o, s, e)) = cur {
            *live.entry(o).or_default() += e - s;
        }
        (self.data_sectors, live)
    }
}

/// Whether `seq` is a piece of checkpoint `c`.
fn in_ckpt(c: &CheckpointRef, seq: u64) -> bool {
    seq >= c.seq.0 && seq - c.seq.0 < u64::from(c.pieces)
}

/// Measure `image` (see the module doc). Fails if the image does not
/// exist, if its superblock, a snapshot's checkpoint or the high-water
/// mark cannot be read, or a `stat` fails. A listed checkpoint that is
/// missing or corrupt is skipped for the next older one, as recovery does.
pub fn image_usage(store: &dyn ObjectStore, image: &str) -> Result<ImageUsage> {
    let sb = read_superblock(store, image)?;
    let mut head: Option<(CheckpointRef, ObjectMap, ObjSeq)> = None;
    for c in &sb.checkpoints {
        match load_chain(store, image, &sb, *c) {
            Ok(l) => {
                head = Some((*c, l.map, l.last_obj));
                break;
            }
            Err(e) if matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::NotFound) => warn!(
                image,
                checkpoint = c.seq.0,
                "checkpoint unusable, trying an older one: {e}"
            ),
            Err(e) => return Err(e.prefixed(format!("image {image}: checkpoint {}", c.seq))),
        }
    }
    let mut maps = Liveness::default();
    let (checkpoint, head_written, head_last) = match &head {
        Some((c, map, last)) => (Some(c.seq.0), maps.add(map), last.0),
        None => (None, 0, 0),
    };
    drop(head);
    let mut snaps = Vec::new();
    for s in &sb.snapshots {
        let (map, _, _) = load_checkpoint(store, image, &sb, s.ckpt)
            .map_err(|e| e.prefixed(format!("snapshot {image}@{}", s.name)))?;
        snaps.push(SnapUsage {
            snapshot: s.name.clone(),
            removing: s.flags & SNAP_REMOVING != 0,
            usage: Usage {
                provisioned_bytes: s.size_bytes,
                written_bytes: maps.add(&map) * SECTOR,
                ..Usage::default()
            },
        });
    }
    let (data_sectors, live) = maps.live();
    // Pieces of the checkpoints the superblock lists: needed, not garbage.
    let listed: Vec<CheckpointRef> = sb
        .checkpoints
        .iter()
        .chain(&sb.links)
        .chain(sb.snapshots.iter().map(|s| &s.ckpt))
        .copied()
        .collect();
    let is_listed = |seq: u64| listed.iter().any(|c| in_ckpt(c, seq));
    let bound = sequence_bound(store, image, &sb)?;
    let found = Mutex::new(Vec::new());
    for_each_below(bound.hwm, |s| {
        if let Some(n) = store.stat(&object_name(image, s))? {
            found
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((s.0, n));
        }
        Ok(())
    })?;
    let found: BTreeSet<(u64, u64)> = found
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .collect();
    let mut usage = Usage {
        provisioned_bytes: sb.size_bytes,
        written_bytes: head_written * SECTOR,
        ..Usage::default()
    };
    let mut uncheckpointed_bytes = 0;
    for (seq, bytes) in found {
        let garbage = match live.get(&seq) {
            Some(&l) => (data_sectors
                .get(&seq)
                .copied()
                .unwrap_or(0)
                .saturating_sub(l)
                * SECTOR)
                .min(bytes),
            None if is_listed(seq) => 0,
            None if seq > head_last => {
                uncheckpointed_bytes += bytes;
                0
            }
            None => bytes,
        };
        // The row: the snapshot whose checkpoint this is a piece of, else
        // the oldest snapshot that reflects it, else the head.
        let row = sb
            .snapshots
            .iter()
            .position(|s| in_ckpt(&s.ckpt, seq))
            .or_else(|| sb.snapshots.iter().position(|s| seq <= s.last_obj.0));
        let u = match row {
            Some(i) => &mut snaps[i].usage,
            None => &mut usage,
        };
        u.stored_bytes += bytes;
        u.garbage_bytes += garbage;
    }
    Ok(ImageUsage {
        image: image.to_owned(),
        usage,
        uncheckpointed_bytes,
        checkpoint,
        parent: sb
            .parent
            .as_ref()
            .map(|p| format!("{}@{}", p.image, p.snap)),
        snapshots: snaps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{FaultAction, FaultOp, FaultRule, FaultStore, MemStore};
    use crate::config::Config;
    use crate::volume::{Volume, VolumeOptions};
    use std::sync::Arc;

    fn open(store: Arc<dyn ObjectStore>, dir: &std::path::Path) -> Volume {
        Volume::open(VolumeOptions {
            config: Config {
                no_gc: true,
                no_rcache: true,
                flush_msec: 20,
                wlog_bytes: 4 << 20,
                wlog_chunk_bytes: 64 << 10,
                backend_obj_bytes: 256 << 10,
                ..Config::default()
            },
            store,
            image: "img".into(),
            journal_path: dir.join("img.wlog"),
            io_log: None,
        })
        .unwrap()
    }

    /// Bytes of every object named `img.<seq>` in `store`.
    fn all_stored(store: &MemStore) -> u64 {
        store
            .list("img.")
            .unwrap()
            .iter()
            .filter(|n| crate::catalog::image::parse_object_name("img", n).is_some())
            .map(|n| store.stat(n).unwrap().unwrap())
            .sum()
    }

    /// Written, stored and garbage of a head and a snapshot, measured
    /// without listing the store (every `list` fails).
    #[test]
    fn rows_split_the_stored_bytes_and_garbage_is_what_no_map_reads() {
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        let mem = Arc::new(MemStore::new());
        crate::catalog::image::create_image(mem.as_ref(), "img", 4 << 20).unwrap();
        let fault = Arc::new(FaultStore::new(mem.clone(), 0));
        fault.add_rule(FaultRule::new(
            FaultOp::List,
            FaultAction::Fail(ErrorKind::Io),
        ));
        let fresh = image_usage(fault.as_ref(), "img").unwrap();
        assert_eq!(fresh.usage.provisioned_bytes, 4 << 20);
        assert_eq!(fresh.usage.written_bytes, 0);
        assert_eq!(fresh.usage.stored_bytes, 0);
        assert_eq!(fresh.checkpoint, None);

        let v = open(mem.clone(), dir.path());
        v.write(0, &vec![1u8; 1 << 20]).unwrap();
        v.close().unwrap();
        let u = image_usage(fault.as_ref(), "img").unwrap();
        assert_eq!(u.usage.written_bytes, 1 << 20);
        assert_eq!(u.usage.stored_bytes, all_stored(&mem));
        assert_eq!(u.usage.garbage_bytes, 0);
        assert_eq!(u.uncheckpointed_bytes, 0);

        // A: [0, 1M) above; B: [0, 512K); snapshot; C: [0, 256K). A's
        // first half is read by no map; B's first quarter is the
        // snapshot's.
        let v = open(mem.clone(), dir.path());
        v.write(0, &vec![2u8; 512 << 10]).unwrap();
        v.snapshot_create("s").unwrap();
        v.write(0, &vec![3u8; 256 << 10]).unwrap();
        v.close().unwrap();
        let u = image_usage(fault.as_ref(), "img").unwrap();
        assert_eq!(u.usage.written_bytes, 1 << 20);
        assert_eq!(u.snapshots.len(), 1);
        let s = &u.snapshots[0];
        assert_eq!(s.snapshot, "s");
        assert_eq!(s.usage.written_bytes, 1 << 20);
        assert_eq!(s.usage.provisioned_bytes, 4 << 20);
        assert_eq!(
            u.usage.stored_bytes + s.usage.stored_bytes,
            all_stored(&mem)
        );
        // C is the head's own; A and B are the snapshot's.
        assert!(u.usage.stored_bytes >= 256 << 10, "{u:?}");
        assert!(s.usage.stored_bytes >= 3 << 19, "{u:?}");
        let garbage = u.usage.garbage_bytes + s.usage.garbage_bytes;
        assert!(
            (512 << 10..(512 + 64) << 10).contains(&garbage),
            "A's dead half (and a few checkpoint pieces), not B's: {u:?}"
        );
    }

    #[test]
    fn live_sectors_are_counted_once_across_maps() {
        let l = Liveness {
            spans: vec![(5, 0, 8), (5, 4, 12), (5, 20, 24), (7, 0, 1), (5, 12, 16)],
            data_sectors: [(5, 32)].into(),
        };
        let (data, live) = l.live();
        assert_eq!(live.get(&5), Some(&20));
        assert_eq!(live.get(&7), Some(&1));
        assert_eq!(data.get(&5), Some(&32));
    }
}
