//! Snapshots, clones and flatten.
//!
//! A snapshot is a checkpoint the superblock keeps by name: the image as of
//! every write acknowledged before `snap create`, in objects up to its
//! `last_obj`. Reading it loads that checkpoint into a read-only volume (no
//! journal, no lock). GC keeps every object the snapshot's table lists and
//! its pieces ([`crate::gc::SnapshotPins`]).
//!
//! A clone is an image whose superblock links to a parent snapshot. Its
//! own map starts empty; a hole reads through to the parent (below the
//! parent's size), and a trim leaves a zero marker ([`ObjLoc::ZERO`]) that
//! hides the parent. Clone creation writes one superblock: its time and
//! size do not depend on the parent's.
//!
//! Crash-safety orderings (numbers continue docs/format.md):
//! - (23) `snap create`: every acknowledged write is applied into durable
//!   objects and a checkpoint of that map is durable and listed before the
//!   superblock names the snapshot; retired checkpoint pieces are not
//!   tombstoned while a snapshot is being created, and the new snapshot's
//!   objects are pinned (under the GC lock) before GC can run again.
//! - (24) `snap rm` and `clone` race through the parent's superblock:
//!   `snap rm` first marks the snapshot as being removed (durable), then
//!   looks for clones; `clone` first writes the child's superblock, then
//!   re-reads the parent's and undoes itself if the snapshot is gone or
//!   being removed. With a linearizable store, either the removal sees the
//!   clone or the clone sees the mark, so no clone is ever left without
//!   its parent snapshot.
//! - (25) `flatten`: every byte copied from the parent is in durable objects
//!   named by a listed checkpoint before the superblock drops the link.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::{info, warn};

use super::{recovery, Inner, InnerInit, Volume};
use crate::backend::ObjectStore;
use crate::catalog::image::{self, read_superblock};
use crate::catalog::no_such_snapshot;
pub use crate::catalog::{clone_image, find_clones, MAX_CHAIN};
use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::format::superblock::{ParentRef, SnapshotRef, Superblock, MAX_SNAPSHOTS, SNAP_REMOVING};
use crate::gc::SnapshotPins;
use crate::units::{Lba, ObjSeq, SECTOR};

/// A clone's parent: a read-only view of the snapshot it was made from.
pub struct Parent {
    pub(crate) volume: Arc<Volume>,
    /// The parent's size in sectors: holes below it read through.
    pub(crate) sectors: u64,
}

/// What `flatten` did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FlattenReport {
    /// Bytes copied from the parent.
    pub copied_bytes: u64,
    /// Bytes of holes whose parent data was all zeros (nothing to copy).
    pub zero_bytes: u64,
}

/// The lock that the readers of snapshot `snap` of `image` (`serve-nbd`,
/// `attach` or `export` of `IMAGE@SNAP`) hold shared and its removal takes
/// exclusively: `lsvd:s.<image>@<snap>`. Its `:` is in no image name, so it
/// is no image, no image's object, and under no image's listing prefix
/// (`ls` skips it: it has a `.`); at most 7 + 96 + 1 + 96 = 200 bytes, an
/// object name's limit. On RADOS the lock lives on an empty object of that
/// name, which the removal deletes.
pub(crate) fn snapshot_lock_name(image: &str, snap: &str) -> String {
    format!("{}{snap}", image::snapshot_lock_prefix(image))
}

/// What ends the lock owner string of a `snap rm` (`host H pid P snap rm`),
/// the only exclusive holder of a snapshot's lock; a reader's ends
/// `reader of IMAGE@SNAP`. Names of hosts, images and snapshots hold no
/// space, so no reader's description contains it.
const SNAP_RM_OWNER: &str = " snap rm";

/// Whether a holder description of a snapshot's lock (as
/// [`ObjectStore::lock_holders`] gives it: the owner string, followed on
/// RADOS by ` (client.N at ADDR)`) is that of a `snap rm`.
pub(crate) fn is_snap_rm_holder(holder: &str) -> bool {
    holder.ends_with(SNAP_RM_OWNER) || holder.contains(&format!("{SNAP_RM_OWNER} ("))
}

/// The part of a reader's lock owner string that names process `pid` of
/// this host, for breaking the hold a dead local server left.
pub(crate) fn reader_owner_prefix(pid: u32) -> String {
    format!("{} reader of ", image::lock_owner_for(pid))
}

/// A reader that lost the race with `snap rm` (the snapshot was gone once
/// it held the lock) created the lock afresh (a file, or an empty RADOS
/// object): remove it, taking it exclusively (never waiting) and checking
/// that the snapshot is still gone, as `snap rm` does: deleted, then
/// released and unlinked while held. Best effort: another reader of the
/// same race holding it, or a snapshot of that name created meanwhile,
/// leaves it (space, never data; `rm` of the image removes it on RADOS).
fn remove_lock_of_gone_snapshot(
    store: &dyn ObjectStore,
    image: &str,
    snap: &str,
    lock_name: &str,
    owner: &str,
) {
    let Ok(lock) = store.lock(lock_name, owner) else {
        return;
    };
    match read_superblock(store, image) {
        Ok(sb) if sb.snapshot(snap).is_some() => return,
        Err(e) if e.kind() != ErrorKind::NotFound => return,
        _ => {}
    }
    if let Err(e) = store.delete(lock_name) {
        warn!(
            image,
            snapshot = snap,
            "remove the lock object of a removed snapshot: {e}"
        );
    }
    lock.release_and_remove();
}

fn check_snap_name(image: &str, name: &str) -> Result<()> {
    image::check_name("snapshot", name, &format!("{image}@{name}"))
}

/// Whether snapshot `name` can be added to `sb`: not there yet, and room
/// for one more.
fn can_add_snapshot(image: &str, sb: &Superblock, name: &str) -> Result<()> {
    if sb.snapshot(name).is_some() {
        return Err(Error::new(
            ErrorKind::AlreadyExists,
            format!("snapshot {image}@{name} already exists"),
        ));
    }
    if sb.snapshots.len() >= MAX_SNAPSHOTS {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("image {image} already has {MAX_SNAPSHOTS} snapshots, the most it can keep"),
        ));
    }
    Ok(())
}

/// Open the parent snapshot of a clone, checking it is the one the clone
/// was made from.
pub(crate) fn open_parent(
    config: &Config,
    store: &Arc<dyn ObjectStore>,
    sb: &Superblock,
    depth: usize,
) -> Result<Option<Parent>> {
    let Some(p) = &sb.parent else {
        return Ok(None);
    };
    if depth >= MAX_CHAIN {
        return Err(Error::new(
            ErrorKind::Corrupt,
            format!(
                "clone chain deeper than {MAX_CHAIN} images at {}@{}",
                p.image, p.snap
            ),
        ));
    }
    let what = format!("parent snapshot {}@{}", p.image, p.snap);
    let v = Volume::open_snapshot_at(config.clone(), store.clone(), &p.image, &p.snap, depth + 1)
        .map_err(|e| e.prefixed(what.clone()))?;
    let found = v.inner.sb_copy();
    let s = found.snapshot(&p.snap).cloned();
    if v.uuid() != p.uuid || s.as_ref().map(|s| s.ckpt) != Some(p.ckpt) {
        return Err(Error::new(
            ErrorKind::Mismatch,
            format!(
                "{what} is not the one this clone was made from (image {} checkpoint {}, found image {} checkpoint {:?})",
                p.uuid,
                p.ckpt.seq,
                v.uuid(),
                s.map(|s| s.ckpt.seq.0)
            ),
        ));
    }
    Ok(Some(Parent {
        volume: Arc::new(v),
        sectors: p.size_bytes / SECTOR,
    }))
}

/// The pin set of `sb`'s snapshots: each one's checkpoint table and pieces.
/// A table that cannot be read pins everything (GC then deletes nothing).
pub(crate) fn pins_for(store: &dyn ObjectStore, image: &str, sb: &Superblock) -> Arc<SnapshotPins> {
    let pins = Arc::new(SnapshotPins::default());
    let (all, set) = pin_set(store, image, sb);
    pins.set(all, set);
    pins
}

fn pin_set(store: &dyn ObjectStore, image: &str, sb: &Superblock) -> (bool, BTreeSet<ObjSeq>) {
    let mut set = BTreeSet::new();
    for s in &sb.snapshots {
        set.extend(s.ckpt.piece_seqs());
        match recovery::checkpoint_table(store, image, sb, s.ckpt) {
            Ok((_, table)) => set.extend(table),
            Err(e) => {
                warn!(image, snapshot = %s.name, "cannot read the snapshot's checkpoint table; GC deletes nothing: {e:?}");
                return (true, set);
            }
        }
    }
    (false, set)
}

impl Inner {
    pub(crate) fn sb_copy(&self) -> Superblock {
        self.sb.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Volume {
    /// Open snapshot `snap` of `image` read-only: its checkpoint's map, no
    /// journal, not the image's lock (its objects are immutable and kept by
    /// GC while the snapshot exists), but the snapshot's lock shared
    /// ([`snapshot_lock_name`]), held until the view is closed, so that
    /// `snap rm` is refused while it is read (several readers at once are
    /// fine). Fails with `InUse` while the snapshot is being removed. See
    /// ordering (34).
    ///
    /// Reading needs no write access: where the store refuses the lock
    /// with `PermissionDenied` (a read-only file system or directory, a
    /// RADOS client with `osd 'allow r'` caps), the snapshot is opened
    /// without it, with a warning. `snap rm` by a writer then cannot see
    /// this reader; once the removal's GC deletes an object the view
    /// needs, reads of it fail with `NotFound` naming the object (and
    /// saying why), never with other data: object names are never reused
    /// within an image, and every object read is checked against the
    /// image's UUID and its chunk crcs.
    pub fn open_snapshot(
        config: Config,
        store: Arc<dyn ObjectStore>,
        image: &str,
        snap: &str,
    ) -> Result<Volume> {
        // A missing snapshot is reported before any lock is taken (a lock
        // on RADOS creates an object).
        let sb = read_superblock(store.as_ref(), image)?;
        if sb.snapshot(snap).is_none() {
            return Err(no_such_snapshot(image, &sb, snap));
        }
        let lock_name = snapshot_lock_name(image, snap);
        let owner = crate::catalog::owner::lock_owner_of(&format!("reader of {image}@{snap}"));
        let lock = match store.lock_shared(&lock_name, &owner) {
            Ok(l) => Some(l),
            Err(e) if e.kind() == ErrorKind::Locked => {
                return Err(Error::new(
                    ErrorKind::InUse,
                    format!(
                        "snapshot {image}@{snap} is being removed ({}); if that `snap rm` \
                         died, run it again, or `lsvd-ublk lock break POOL/{image}@{snap}`",
                        e.context()
                    ),
                ))
            }
            Err(e) if e.kind() == ErrorKind::PermissionDenied => {
                warn!(
                    image,
                    snapshot = snap,
                    "reading the snapshot without its reader lock, as {} refuses it \
                     ({e:?}): `snap rm` by a writer cannot see this reader, and once \
                     the snapshot's objects are deleted its reads fail",
                    store.describe()
                );
                None
            }
            Err(e) => return Err(e),
        };
        // Read again under the lock: a removal that finished in between
        // has taken it out of the superblock.
        let mut vol = match Self::open_snapshot_at(config, store.clone(), image, snap, 0) {
            Ok(v) => v,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if let Some(lock) = lock {
                    drop(lock);
                    remove_lock_of_gone_snapshot(store.as_ref(), image, snap, &lock_name, &owner);
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        vol.unlocked_reader = lock.is_none();
        vol.lock = lock;
        Ok(vol)
    }

    fn open_snapshot_at(
        config: Config,
        store: Arc<dyn ObjectStore>,
        image: &str,
        snap: &str,
        depth: usize,
    ) -> Result<Volume> {
        config.validate()?;
        let sb = read_superblock(store.as_ref(), image)?;
        let s = sb
            .snapshot(snap)
            .cloned()
            .ok_or_else(|| no_such_snapshot(image, &sb, snap))?;
        let (mut map, last_obj, jseq) =
            recovery::load_checkpoint(store.as_ref(), image, &sb, s.ckpt)
                .map_err(|e| e.prefixed(format!("snapshot {image}@{snap}")))?;
        map.set_trim_markers(sb.parent.is_some());
        let parent = open_parent(&config, &store, &sb, depth)?;
        // Its own cache file, `<image>@<snap>.rcache`, shared by every
        // clone of the snapshot that opens it (one process at a time): the
        // snapshot's objects never change and their sequences are never
        // reused, so its entries stay valid for good (generation 0).
        let cache =
            super::rcache::open_cache(&config, &format!("{image}@{snap}"), sb.uuid, s.last_obj, 0);
        let (cache_tx, cache_rx) = match &cache {
            Some(_) => {
                let (tx, rx) = crossbeam_channel::bounded(super::rcache::FILL_QUEUE);
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let (destage_tx, _) = crossbeam_channel::unbounded();
        let inner = Arc::new(Inner::build(InnerInit {
            image: image.to_string(),
            sb,
            size_bytes: s.size_bytes,
            map,
            last_obj,
            backend_jseq: jseq,
            store,
            cache,
            cache_tx,
            destage_tx,
            read_only: true,
            parent,
            pins: Arc::new(SnapshotPins::default()),
            hwm: 0,
            rows_complete: false,
            config,
        }));
        let mut vol = Volume {
            inner,
            threads: Vec::new(),
            gc_thread: None,
            lock: None,
            unlocked_reader: false,
            stopped: false,
        };
        if let (Some(c), Some(rx)) = (vol.inner.cache.clone(), cache_rx) {
            // A read-only view destages nothing: no buffers come back.
            let spare = vol.inner.spare_buffers.clone();
            vol.threads.push(
                std::thread::Builder::new()
                    .name("lsvd-rcache".into())
                    .spawn(move || super::rcache::cache_writer(c, rx, spare))
                    .map_err(|e| Error::io("spawn thread lsvd-rcache", e))?,
            );
        }
        info!(image, snapshot = snap, "snapshot opened read-only");
        Ok(vol)
    }

    /// True for a read-only snapshot view.
    pub fn is_read_only(&self) -> bool {
        self.inner.read_only
    }

    /// The image's snapshots, oldest first.
    pub fn snapshots(&self) -> Vec<SnapshotRef> {
        self.inner.sb_copy().snapshots
    }

    /// The parent link of a clone.
    pub fn parent_ref(&self) -> Option<ParentRef> {
        self.inner.sb_copy().parent
    }

    /// Objects kept for snapshots (`None`: all, a table was unreadable).
    pub fn pinned_objects(&self) -> Option<usize> {
        self.inner.retention.count()
    }

    /// Take snapshot `name`: every write acknowledged before this call is
    /// in it. See ordering (23).
    pub fn snapshot_create(&self, name: &str) -> Result<SnapshotRef> {
        let inner = &self.inner;
        inner.check_writable()?;
        check_snap_name(&inner.image, name)?;
        // No GC step (no clean, no delete) while the pin set changes.
        let _gc = inner.gc.lock().unwrap_or_else(|e| e.into_inner());
        // The store's list, if a superblock put failed (it may have landed).
        inner.refresh_superblock()?;
        can_add_snapshot(&inner.image, &inner.sb_copy(), name)?;
        inner.snap_hold.fetch_add(1, Ordering::SeqCst);
        let r = self.snapshot_checkpoint(name);
        inner.snap_hold.fetch_sub(1, Ordering::SeqCst);
        let s = r?;
        info!(image = %inner.image, snapshot = name, last_obj = s.last_obj.0, "snapshot created");
        Ok(s)
    }

    fn snapshot_checkpoint(&self, name: &str) -> Result<SnapshotRef> {
        let inner = &self.inner;
        self.flush_to_backend("snapshot")?;
        // The newest checkpoint noted (ours, or a later one that reflects
        // even more): listed and durable.
        let (ckpt, facts) = inner
            .session_ckpts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .map(|(c, f)| (*c, f.clone()))
            .ok_or_else(|| Error::new(ErrorKind::Io, "snapshot checkpoint was not recorded"))?;
        let snap = SnapshotRef {
            name: name.to_string(),
            ckpt,
            last_obj: facts.last_obj,
            size_bytes: self.size_bytes(),
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            flags: 0,
        };
        // Pinned before the superblock names it (GC is held off anyway).
        inner
            .retention
            .add(facts.live.iter().copied().chain(ckpt.piece_seqs()));
        crate::failpoint::hit("snap.before_superblock");
        inner.write_superblock_with(|sb| {
            can_add_snapshot(&inner.image, sb, name)?;
            sb.snapshots.push(snap.clone());
            Ok(())
        })?;
        Ok(snap)
    }

    /// Remove snapshot `name`. Fails, naming them, while clones depend on
    /// it. Its objects are freed by later GC cycles. See ordering (24).
    pub fn snapshot_remove(&self, name: &str) -> Result<()> {
        let inner = &self.inner;
        inner.check_writable()?;
        let mut gc = inner.gc.lock().unwrap_or_else(|e| e.into_inner());
        inner.refresh_superblock()?;
        let sb = inner.sb_copy();
        if sb.snapshot(name).is_none() {
            return Err(no_such_snapshot(&inner.image, &sb, name));
        }
        // Ordering 34: no reader may hold the snapshot (it would lose its
        // objects and its cache file), and none can start until the removal
        // ends.
        let lock_name = snapshot_lock_name(&inner.image, name);
        let owner = format!("{}{SNAP_RM_OWNER}", image::lock_owner());
        let refused = |e: Error| match e.kind() {
            ErrorKind::Locked => Error::new(
                ErrorKind::InUse,
                format!(
                    "snapshot {}@{name} is open{}: stop its readers first \
                     (a `serve-nbd` or `attach` of it, or an `export`)",
                    inner.image,
                    match inner.store.lock_holders(&lock_name) {
                        Ok(h) if !h.is_empty() => format!(" (by {})", h.join("; ")),
                        _ => String::new(),
                    }
                ),
            ),
            _ => e,
        };
        let lock = match inner.store.lock(&lock_name, &owner) {
            Err(e) if e.kind() == ErrorKind::Locked => {
                // A `snap rm` that died holding it (a RADOS lock outlives
                // its holder) is broken, fenced first: no `snap rm` of this
                // image can be live but ours, since each holds the image's
                // lock, which we hold. Readers are never broken here.
                let broken = inner
                    .store
                    .break_lock_holders(&lock_name, &is_snap_rm_holder)
                    .map_err(|b| b.prefixed(format!("snapshot {}@{name}", inner.image)))?;
                if broken.is_empty() {
                    return Err(refused(e));
                }
                for b in &broken {
                    warn!(image = %inner.image, snapshot = name, "broke the lock left by a dead snap rm: {b}");
                }
                inner.store.lock(&lock_name, &owner).map_err(refused)?
            }
            r => r.map_err(refused)?,
        };
        let mark = |on: bool| {
            inner.write_superblock(|sb| {
                for s in sb.snapshots.iter_mut().filter(|s| s.name == name) {
                    if on {
                        s.flags |= SNAP_REMOVING;
                    } else {
                        s.flags &= !SNAP_REMOVING;
                    }
                }
            })
        };
        mark(true)?;
        let clones = match find_clones(inner.store.as_ref(), &inner.image, inner.uuid) {
            Ok(c) => c
                .into_iter()
                .filter(|(_, s)| s == name)
                .map(|(c, _)| c)
                .collect::<Vec<_>>(),
            Err(e) => {
                let _ = mark(false);
                return Err(e.prefixed("cannot look for clones"));
            }
        };
        if !clones.is_empty() {
            mark(false)?;
            return Err(Error::new(
                ErrorKind::InUse,
                format!(
                    "snapshot {}@{name} has clones: {}; flatten or remove them first",
                    inner.image,
                    clones.join(", ")
                ),
            ));
        }
        inner.write_superblock(|sb| sb.snapshots.retain(|s| s.name != name))?;
        // The snapshot is gone: so is its lock (an empty object on RADOS, a
        // file on the directory store). A reader that took it meanwhile
        // finds no snapshot and lets go.
        if let Err(e) = inner.store.delete(&lock_name) {
            warn!(image = %inner.image, snapshot = name, "remove the snapshot's lock object: {e}");
        }
        lock.release_and_remove();
        let (all, set) = pin_set(inner.store.as_ref(), &inner.image, &inner.sb_copy());
        inner.retention.set(all, set);
        // What only this snapshot kept (its pieces, objects that died while
        // pinned) is found by a sweep of the store.
        gc.resweep();
        info!(image = %inner.image, snapshot = name, "snapshot removed");
        Ok(())
    }

    /// Copy from the parent everything this clone still reads through to,
    /// then cut the link. Only on an image opened exclusively (not
    /// attached): a client write racing the copy could be overwritten.
    /// See ordering (25).
    pub fn flatten(&self) -> Result<FlattenReport> {
        let inner = &self.inner;
        inner.check_writable()?;
        let Some(parent) = &inner.parent else {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("image {} is not a clone", inner.image),
            ));
        };
        inner.refresh_superblock()?;
        let sb = inner.sb_copy();
        if !sb.snapshots.is_empty() {
            return Err(Error::new(
                ErrorKind::InUse,
                format!(
                    "image {} has snapshots ({}) that read through to its parent; remove them before flattening",
                    inner.image,
                    sb.snapshots.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        // Everything written so far is in the durable map.
        self.flush_to_backend("flatten")?;
        const STEP: u64 = (1 << 20) / SECTOR;
        let end = parent.sectors.min(self.size_bytes() / SECTOR);
        let mut report = FlattenReport::default();
        let mut pieces = Vec::new();
        let mut buf = vec![0u8; (STEP * SECTOR) as usize];
        let mut lba = 0;
        while lba < end {
            let n = STEP.min(end - lba);
            pieces.clear();
            inner
                .durable
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .lookup(Lba(lba), n, &mut pieces);
            for &(plba, plen, loc) in &pieces {
                if loc.is_some() {
                    continue;
                }
                let b = &mut buf[..(plen * SECTOR) as usize];
                // Copied into this clone's new objects: a version-1 parent
                // object is checked whole first (never laundered).
                parent.volume.read_for_copy(plba.0 * SECTOR, b)?;
                if b.iter().all(|&x| x == 0) {
                    report.zero_bytes += b.len() as u64;
                } else {
                    self.write(plba.0 * SECTOR, b)?;
                    report.copied_bytes += b.len() as u64;
                }
            }
            lba += n;
        }
        // Ordering (25): copies durable in objects and a listed checkpoint
        // before the link goes.
        self.flush_to_backend("flatten")?;
        crate::failpoint::hit("flatten.before_superblock");
        inner.write_superblock(|sb| sb.parent = None)?;
        // No more reads through: the parent snapshot may be removed now.
        inner.parent_cut.store(true, Ordering::SeqCst);
        info!(image = %inner.image, copied = report.copied_bytes, "clone flattened");
        Ok(report)
    }

    /// FLUSH, then destage every batch and write a checkpoint naming it.
    fn flush_to_backend(&self, what: &str) -> Result<()> {
        self.flush()?;
        self.inner.destage_and_checkpoint(what)
    }
}
