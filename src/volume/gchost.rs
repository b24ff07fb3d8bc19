//! The volume side of garbage collection: [`GcHost`] for [`Inner`], the
//! GC submit path (sequence allocated last), checkpoint facts for the
//! deletion rule, and the background GC thread.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use super::destage::{CkptFacts, DestageMsg, GcBatch};
use super::Inner;
use crate::catalog::image::{object_name, parse_object_name};
use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::format::gcobject::GcMove;
use crate::format::superblock::{CheckpointRef, INCOMPAT_GC};
use crate::gc::{Floor, GcHost, Retention};
use crate::io::AlignedBuf;
use crate::journal::Done;
use crate::map::{Extent, ObjInfo, ObjLoc};
use crate::units::{Lba, ObjSeq};

impl Inner {
    /// Wait for `f`'s completion under GC's cancel flag (set by `stop_gc`,
    /// by the volume stopping and when fenced), giving up once no object
    /// has been applied for `io_timeout_msec`. What GC gave up on stays
    /// queued in the destager (an allocated sequence must still be put).
    fn wait_gc(&self, what: &str, f: impl FnOnce(Done)) -> Result<()> {
        self.wait_backend(&format!("GC {what}"), &self.gc_cancel, f)
    }

    /// Write a checkpoint and wait until the superblock names it.
    pub(crate) fn checkpoint_wait(&self) -> Result<()> {
        self.wait_gc("checkpoint", |d| {
            if let Err(e) = self.destage_tx.send(DestageMsg::Checkpoint(Some(d))) {
                if let DestageMsg::Checkpoint(Some(d)) = e.0 {
                    d(Err(Error::new(ErrorKind::Closed, "volume stopped")));
                }
            }
        })
    }

    /// Set [`INCOMPAT_GC`] in the superblock (once) before the first GC
    /// object is put: an older binary would take a GC object or a hole
    /// below a checkpoint for the end of the log and delete everything
    /// above it. A checkpoint is listed first, so the refusal in recovery
    /// ("no usable checkpoint") never hits an image GC merely touched.
    fn ensure_gc_feature(&self) -> Result<()> {
        let (set, listed) = {
            let sb = self.sb.lock().unwrap_or_else(|e| e.into_inner());
            (sb.incompat & INCOMPAT_GC != 0, !sb.checkpoints.is_empty())
        };
        if set {
            return Ok(());
        }
        if !listed {
            self.checkpoint_wait()?;
        }
        self.write_superblock_until(&self.gc_cancel, |sb| sb.incompat |= INCOMPAT_GC)
    }

    /// Submit a fully built GC object and wait until it is applied.
    ///
    /// Crash-safety ordering 20: the sequence is allocated only here, after
    /// every read for the object succeeded. From the allocation on nothing
    /// can fail before the destager has the object, and its put is retried
    /// like a data put: an allocated sequence never stays a hole that would
    /// stall the apply of every later object.
    fn submit_gc_batch(&self, moves: Vec<GcMove>, data: AlignedBuf) -> Result<()> {
        if let Some(e) = self.fenced_error() {
            return Err(e);
        }
        self.ensure_gc_feature()?;
        // At most one GC object waits for the backend: one whose wait gave
        // up is still queued, and another would only pile up behind it.
        let prev = ObjSeq(self.gc_last_obj.load(Ordering::SeqCst));
        if prev.0 > self.applied_obj.load(Ordering::SeqCst) {
            self.wait_gc("wait for the previous GC object", |d| {
                // A stopped destager drops `d`: the wait ends (abandoned).
                let _ = self.destage_tx.send(DestageMsg::WaitApplied(prev, d));
            })?;
        }
        self.wait_gc("object", |d| {
            let mut st = self.lock_state();
            let seq = st.next_obj;
            st.next_obj = seq.next();
            self.gc_last_obj.store(seq.0, Ordering::SeqCst);
            crate::failpoint::hit("gc.seq_allocated");
            let g = Arc::new(GcBatch {
                seq,
                moves,
                data,
                done: std::sync::Mutex::new(Some(d)),
            });
            // Sent under the state lock, like `seal`, so the destager sees
            // sequences in allocation order.
            let _ = self.destage_tx.send(DestageMsg::Gc(g));
        })
    }

    /// Ordering 32: the row of an object GC deleted (or found gone) goes,
    /// after the delete is durable; a checkpoint that copied it before
    /// only makes a later GC try again. A row that has live data again
    /// cannot be (nothing maps into a dead object), but is kept if so.
    fn forget_row(&self, obj: ObjSeq) {
        let mut map = self.durable.write().unwrap_or_else(|e| e.into_inner());
        if map.object(obj).is_some_and(|i| i.live_sectors == 0) {
            map.remove_object(obj);
        }
    }

    /// At open: the oldest checkpoint the superblock lists is a valid floor
    /// for the deletion rule at once (ordering 21 needs only that it is
    /// listed and durable, not that this session wrote it), so an image
    /// that is reopened often is still collected. Its facts come from its
    /// piece 0; if that cannot be read, GC waits for this session's own
    /// checkpoints, as before.
    pub(crate) fn note_listed_checkpoint(&self, sb: &crate::format::superblock::Superblock) {
        let Some(&oldest) = sb.checkpoints.last() else {
            return;
        };
        match super::recovery::checkpoint_table(self.store.as_ref(), &self.image, sb, oldest) {
            Ok((last_obj, live)) => {
                let now = std::time::Instant::now();
                // No read of this open can be racing a delete yet.
                let taken = now.checked_sub(crate::gc::READ_GRACE).unwrap_or(now);
                self.note_checkpoint(
                    oldest,
                    super::destage::CkptFacts {
                        last_obj,
                        taken,
                        live: Arc::new(live),
                        bytes: 0,
                    },
                );
            }
            Err(e) => warn!(
                image = %self.image,
                checkpoint = oldest.seq.0,
                "cannot read the oldest listed checkpoint's table; GC deletes nothing until this session checkpoints: {e:?}"
            ),
        }
    }

    /// Record a checkpoint the superblock now names, for the deletion rule.
    /// Retired ones are kept a while: what was deletable under a checkpoint
    /// that was once the oldest listed stays deletable (see `floor`).
    pub(crate) fn note_checkpoint(&self, ckpt: CheckpointRef, facts: CkptFacts) {
        let mut v = self.session_ckpts.lock().unwrap_or_else(|e| e.into_inner());
        // Entries older than the newest one past the read grace are
        // dominated by it. When checkpoints come faster than the grace,
        // one entry just below the newest is dropped instead of growing the
        // list: the newest two (the listed ones) stay, and the older entries
        // still age into usable floors.
        if let Some(i) = v
            .iter()
            .rposition(|(_, f)| f.taken.elapsed() >= crate::gc::READ_GRACE)
        {
            v.drain(..i);
        }
        if v.len() >= 16 {
            let i = v.len() - 2;
            v.remove(i);
        }
        v.push((ckpt, facts));
    }
}

/// Extents of the map visited per read-lock hold while GC gathers its
/// victims' extents (the old full scan's slice).
const GATHER_SLICE: usize = 4096;

impl GcHost for Inner {
    fn config(&self) -> &Config {
        &self.config
    }

    fn size_bytes(&self) -> u64 {
        self.size_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn objects(&self) -> Vec<(ObjSeq, ObjInfo)> {
        self.durable
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .objects()
            .collect()
    }

    fn extents_of(&self, objs: &BTreeSet<ObjSeq>) -> Vec<Extent<ObjLoc>> {
        // In slices, each under a short read lock (writers, and the client
        // reads queued behind them, never wait for a whole gather). The
        // ranges read first still cover the victims' extents later: nothing
        // new is mapped into an object once it is applied (one still being
        // applied is gathered as far as it was, as the old scan did; what
        // it gains later is not moved, and it stays until no checkpoint
        // lists it live).
        let ranges = self
            .durable
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .reverse_ranges(objs);
        // Each hold visits at most GATHER_SLICE extents of the map, as the
        // old scan's slices did: one range (victims' ranges join when
        // adjacent) can span any number of other objects' extents.
        let mut out = Vec::new();
        let mut pos = (0, 0);
        while !self
            .durable
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .extents_of_bounded(objs, &ranges, &mut pos, GATHER_SLICE, &mut out)
        {}
        out
    }

    fn extents_in(&self, lba: Lba, len: u64) -> Vec<Extent<ObjLoc>> {
        self.durable
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .extents_in(lba, len)
    }

    fn read_object_range(&self, obj: ObjSeq, byte_off: u64, out: &mut [u8]) -> Result<()> {
        // Never copy unverified bytes into a GC object: a version-1 source
        // is copied from a verified whole copy (every read of a version-2
        // one is verified).
        self.read_for_copy(obj, byte_off, out)
    }

    fn submit_gc(&self, moves: Vec<GcMove>, data: AlignedBuf) -> Result<()> {
        self.submit_gc_batch(moves, data)
    }

    fn checkpoint(&self) -> Result<()> {
        self.checkpoint_wait()
    }

    fn floor(&self, min_age: Duration) -> Option<Floor> {
        // The superblock as durable (the in-memory copy changes only after
        // its put succeeded or was read back from the store); its oldest
        // checkpoint is the fallback that recovery could use. After a put
        // that failed the store may list a newer pair: this older floor is
        // then still valid, only more conservative.
        let (candidates, links) = {
            let sb = self.sb.lock().unwrap_or_else(|e| e.into_inner());
            (sb.checkpoints.clone(), sb.links.clone())
        };
        // Any checkpoint of this session at or below the oldest listed one
        // was the oldest listed at some time. What the rule allowed under it
        // stays allowed under every later oldest one: its `last_obj` is
        // lower and live counts of old objects never rise. So the newest
        // such checkpoint old enough for `min_age` is a valid floor.
        let oldest = *candidates.last()?;
        let v = self.session_ckpts.lock().unwrap_or_else(|e| e.into_inner());
        let (_, f) = v
            .iter()
            .rev()
            .find(|(c, f)| c.seq <= oldest.seq && f.taken.elapsed() >= min_age)?;
        // Base links are kept like the candidates: a listed delta is
        // loaded through them.
        let listed = candidates.into_iter().chain(links).collect();
        Some(Floor {
            last_obj: f.last_obj,
            live: f.live.clone(),
            listed,
        })
    }

    fn list_objects(&self) -> Result<Vec<ObjSeq>> {
        Ok(self
            .store
            .list(&format!("{}.", self.image))?
            .iter()
            .filter_map(|n| parse_object_name(&self.image, n))
            .collect())
    }

    fn delete_object(&self, obj: ObjSeq) -> Result<Option<u64>> {
        let name = object_name(&self.image, obj);
        let Some(size) = self.store.stat(&name)? else {
            self.forget_row(obj);
            return Ok(None);
        };
        // A hole below a checkpoint must never meet a recovery that would
        // roll forward from object 1 (ordering 21): the bit goes first.
        self.ensure_gc_feature()?;
        match self.store.delete(&name) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {
                self.forget_row(obj);
                return Ok(None);
            }
            Err(e) => {
                if e.kind() == ErrorKind::Fenced {
                    self.mark_fenced(&e);
                }
                return Err(e.prefixed(format!("GC delete of {name}")));
            }
        }
        self.forget_row(obj);
        self.chunk_tables.remove(obj);
        self.stats.gc_deleted.fetch_add(1, Ordering::Relaxed);
        self.stats.gc_freed_bytes.fetch_add(size, Ordering::Relaxed);
        Ok(Some(size))
    }

    fn retention(&self) -> &dyn Retention {
        self.retention.as_ref()
    }

    fn should_stop(&self) -> bool {
        // The volume's cancel and fencing both cancel GC's flag too.
        self.gc_cancel.is_cancelled() || self.fenced.get().is_some()
    }

    fn client_backlog(&self) -> bool {
        if self.lock_state().sealed.len() > 1 {
            return true;
        }
        self.journal_shared
            .get()
            .is_some_and(|j| j.used_bytes() > self.config.wlog_bytes / 2)
    }

    fn applied_obj(&self) -> ObjSeq {
        ObjSeq(self.applied_obj.load(Ordering::SeqCst))
    }

    fn rows_complete(&self) -> bool {
        self.rows_complete.load(Ordering::Acquire)
    }

    fn add_rows(&self, objs: &[(ObjSeq, u64)]) {
        let mut map = self.durable.write().unwrap_or_else(|e| e.into_inner());
        for &(o, sectors) in objs {
            if map.object(o).is_none() {
                map.add_object(o, sectors);
            }
        }
        // Under the map's lock, as the checkpoint reads it with the table
        // it copies: a no_gc checkpoint that drops rows (and clears the
        // flag) cannot fall between the rows added here and the flag set
        // (review 4).
        self.rows_complete.store(true, Ordering::Release);
        drop(map);
    }

    fn last_checkpoint_bytes(&self) -> u64 {
        self.session_ckpts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .map_or(0, |(_, f)| f.bytes)
    }
}

/// The background GC thread of an open volume.
pub(crate) fn gc_thread(inner: Arc<Inner>) {
    let idle = Duration::from_millis(inner.config.gc_interval_msec);
    loop {
        if inner.should_stop() {
            return;
        }
        let worked = {
            let mut g = inner.gc.lock().unwrap_or_else(|e| e.into_inner());
            match g.background_step(inner.as_ref()) {
                Ok(w) => w,
                Err(e) => {
                    if !inner.should_stop() {
                        warn!(image = %inner.image, "GC step failed (retried later): {e:?}");
                    }
                    false
                }
            }
        };
        if worked {
            continue;
        }
        if inner.gc_cancel.sleep("GC idle", idle).is_err() {
            return;
        }
    }
}
