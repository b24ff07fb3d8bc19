//! Open (recovery hand-off, journal replay, threads), resize, forced GC,
//! close, stop and drop.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock};
use std::time::Duration;

use crossbeam_channel::unbounded;
use tracing::{info, warn};

use crate::catalog::image;
use crate::error::{Error, ErrorKind, Result};
use crate::format::object::OpKind;
use crate::format::superblock::FLAG_CLEAN;
use crate::journal::{Journal, JournalOptions, JournalShared, ReplayEntry};
use crate::map::{ExtentMap, ObjectMap};
use crate::units::{JournalSeq, Lba, ObjSeq, SECTOR};
use crate::wait::Cancel;

use super::batch::Batch;
use super::destage::{self, DestageMsg, Destager};
use super::write::flusher;
use super::{
    gchost, rcache, recovery, snapshot, verify, wait_done, Counters, Inner, InnerInit, Resized,
    State, Volume, VolumeOptions,
};

impl Inner {
    pub(super) fn build(i: InnerInit) -> Inner {
        let cap = i.config.backend_obj_bytes as usize;
        let cancel = Cancel::new();
        let crcs_marked = i.sb.incompat & crate::format::superblock::INCOMPAT_CHUNK_CRCS != 0;
        let delta_marked = i.sb.incompat & crate::format::superblock::INCOMPAT_DELTA_CKPT != 0;
        Inner {
            image: i.image,
            uuid: i.sb.uuid,
            size_bytes: AtomicU64::new(i.size_bytes),
            resize_lock: Mutex::new(()),
            store: i.store,
            state: Mutex::new(State {
                next_jseq: i.backend_jseq.next(),
                last_sent: i.backend_jseq,
                open: Batch::new(0, cap),
                sealed: BTreeMap::new(),
                overlay: ExtentMap::new(),
                next_batch_id: 1,
                next_obj: i.last_obj.next(),
                journal: None,
                closed: false,
                scratch: Vec::new(),
            }),
            state_cv: Condvar::new(),
            map_extents: AtomicU64::new(i.map.extent_count() as u64),
            durable: RwLock::new(i.map),
            sb: Mutex::new(i.sb),
            sb_unsure: AtomicBool::new(false),
            journal_shared: OnceLock::new(),
            applied_obj: AtomicU64::new(i.last_obj.0),
            backend_jseq: AtomicU64::new(i.backend_jseq.0),
            gc_cancel: cancel.child(),
            gc_last_obj: AtomicU64::new(0),
            cancel,
            backend_error: Mutex::new(None),
            fenced: std::sync::OnceLock::new(),
            stats: Counters::default(),
            destage_tx: i.destage_tx,
            flusher: (Mutex::new(false), Condvar::new()),
            spare_buffers: Arc::new(super::batch::SpareBuffers::new(cap)),
            open_aligned: std::sync::atomic::AtomicBool::new(true),
            disposable: AtomicBool::new(false),
            cache: i.cache,
            cache_tx: i.cache_tx,
            chunk_tables: verify::ChunkTables::default(),
            chunk_crcs_marked: AtomicBool::new(crcs_marked),
            chunk_crcs_lock: Mutex::new(()),
            session_ckpts: Mutex::new(Vec::new()),
            retention: i.pins,
            read_only: i.read_only,
            snap_hold: std::sync::atomic::AtomicU32::new(0),
            ckpt_base: Mutex::new(None),
            delta_marked: AtomicBool::new(delta_marked),
            hwm: AtomicU64::new(i.hwm),
            hwm_lock: Mutex::new(()),
            parent: i.parent,
            parent_cut: AtomicBool::new(false),
            gc: Mutex::new(crate::gc::Gc::new(i.config.gc_rate_bytes)),
            rows_complete: AtomicBool::new(i.rows_complete),
            config: i.config,
        }
    }
}

impl Inner {
    pub(super) fn replay_entry(&self, e: ReplayEntry<'_>) -> Result<()> {
        let (kind, sectors, data) = self.clip_replayed(&e);
        let mut st = self.wait_for_room()?;
        self.push_op(&mut st, e.seq, kind, e.lba, sectors, data, None);
        st.last_sent = e.seq;
        self.stats.replayed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Seal the open batch, wait until every object up to it is applied
    /// in the backend, then write a checkpoint and wait until the
    /// superblock names it. `what` names the step in a timeout error.
    pub(super) fn destage_and_checkpoint(&self, what: &str) -> Result<()> {
        self.destage_and_checkpoint_with(what, false)
    }

    /// Like [`Inner::destage_and_checkpoint`]; with `if_changed`, no new
    /// checkpoint when the newest listed one already reflects every applied
    /// object (a close after nothing changed, such as `export` or a `gc`
    /// that already checkpointed: a new one would only retire, and leave a
    /// tombstone of, a checkpoint that is as good).
    pub(super) fn destage_and_checkpoint_with(&self, what: &str, if_changed: bool) -> Result<()> {
        self.destage_all(what)?;
        wait_done(self, &format!("{what} checkpoint"), |d| {
            let _ = self.destage_tx.send(if if_changed {
                DestageMsg::CheckpointIfChanged(d)
            } else {
                DestageMsg::Checkpoint(Some(d))
            });
        })
    }

    /// Seal the open batch and wait until every object up to it is applied
    /// in the backend. `what` names the step in a timeout error.
    pub(super) fn destage_all(&self, what: &str) -> Result<()> {
        let target = {
            let mut st = self.lock_state();
            self.seal(&mut st);
            ObjSeq(st.next_obj.0 - 1)
        };
        wait_done(self, &format!("{what} destage"), |d| {
            let _ = self.destage_tx.send(DestageMsg::WaitApplied(target, d));
        })
    }

    /// What the journal replayed is durable in the backend (before a
    /// journal of an earlier build is reformatted).
    pub(super) fn destage_replayed(&self) -> Result<()> {
        self.destage_all("replayed journal")
    }

    /// A replayed journal entry, clipped to the disk's end. The resize
    /// ordering (26) mean no replayed entry should reach past the end (a
    /// shrink's tail trim is applied in the backend before the smaller size
    /// is written, so the writes it covers are never replayed); this is the
    /// safety net that keeps the map empty beyond the end whatever the
    /// journal holds. A write wholly beyond the end becomes a trim of its
    /// range (same sequence, no data); one that crosses the end keeps only
    /// its part below it. Trims beyond the end are harmless and kept.
    pub(super) fn clip_replayed<'a>(&self, e: &ReplayEntry<'a>) -> (OpKind, u32, &'a [u8]) {
        let end = self.size_bytes.load(Ordering::SeqCst) / SECTOR;
        if e.kind != OpKind::Write || e.lba.0 + e.sectors as u64 <= end {
            return (e.kind, e.sectors, e.data);
        }
        warn!(image = %self.image, seq = e.seq.0, lba = e.lba.0, sectors = e.sectors, end,
            "journal write reaches past the end of the disk: replayed clipped to the end");
        if e.lba.0 >= end {
            return (OpKind::Trim, e.sectors, &[]);
        }
        let keep = end - e.lba.0;
        (
            OpKind::Write,
            keep as u32,
            &e.data[..(keep * SECTOR) as usize],
        )
    }
}

/// Drop whatever the recovered map holds at or beyond the disk's end (the
/// safety net of ordering 26: a shrink applies the trim of its tail in the
/// backend before the smaller size is written, so nothing should be there).
/// In memory only; the next checkpoint persists it, and a roll-forward from
/// an older checkpoint clips again at the next open.
/// Returns whether it dropped anything.
fn clip_map_to_size(image: &str, map: &mut ObjectMap, size_bytes: u64) -> bool {
    let end = Lba(size_bytes / SECTOR);
    let beyond = map.extents_from(end, usize::MAX);
    if beyond.is_empty() {
        return false;
    }
    // A clone's zero markers beyond the end (its shrink trimmed the tail)
    // are expected; data is not.
    let data: Vec<_> = beyond.iter().filter(|x| !x.target.is_zero()).collect();
    if !data.is_empty() {
        let sectors: u64 = data.iter().map(|x| x.end() - x.lba.0.max(end.0)).sum();
        warn!(
            image,
            extents = data.len(),
            sectors,
            end = end.0,
            "the map holds data beyond the end of the disk: dropped"
        );
    }
    // Unmapped, not trimmed: in a clone's map a trim of the whole range
    // beyond the end would be one zero marker per 2^32 sectors.
    map.unmap(end, u64::MAX - end.0);
    true
}

impl Volume {
    /// Open an existing image: lock it, recover (checkpoint + roll-forward +
    /// journal replay) and start the background threads.
    pub fn open(opts: VolumeOptions) -> Result<Volume> {
        let VolumeOptions {
            config,
            store,
            image,
            journal_path,
            io_log,
        } = opts;
        config.validate()?;
        // The lock's owner names host, pid and image UUID (read once before
        // locking, and again under the lock, which is the copy we trust).
        let uuid = image::read_superblock(store.as_ref(), &image)?.uuid;
        let owner = crate::catalog::owner::lock_owner_of(&format!("image {uuid}"));
        let lock = store.lock(&image, &owner).map_err(|e| {
            if e.kind() == ErrorKind::Locked {
                e.prefixed(format!("image {image} is already open"))
            } else {
                e
            }
        })?;
        let mut sb = match image::read_superblock(store.as_ref(), &image) {
            Ok(sb) => sb,
            Err(e) => {
                // Removed between the two reads: the lock file this open
                // may have created (directory store) goes, while held.
                if e.kind() == ErrorKind::NotFound {
                    lock.release_and_remove();
                }
                return Err(e);
            }
        };
        let mut rec = recovery::recover(store.as_ref(), &image, &sb)?;
        if let Some(written) = rec.superblock.take() {
            sb = written;
        }
        // Ordering 31: an image whose mark is not kept yet (or was lost)
        // gets it now, from recovery's listing, before any object is put;
        // the superblock says it is kept (INCOMPAT_HWM) with the journal
        // generation below, before any new write is accepted. A crash in
        // between lists once more at the next open.
        if !rec.bound.trusted {
            image::write_hwm(store.as_ref(), &image, sb.uuid, rec.bound.hwm)?;
        }
        sb.checkpoints = rec.checkpoints.clone();
        sb.links = rec.links.clone();
        let clipped = clip_map_to_size(&image, &mut rec.map, sb.size_bytes);
        // The newest listed checkpoint reflects the recovered map: it was
        // loaded, nothing was rolled forward past it, and nothing clipped.
        let ckpt_current = !rec.checkpoints.is_empty() && rec.rolled == 0 && !clipped;
        // Opened after recovery: entries above the last object it kept are
        // dropped, since those sequences will be reused. Opened with the
        // journal generation the image recorded before this attach: a file
        // last used under another one (an attach with another journal came
        // in between, whose recovery may have reused sequences the file
        // holds) drops everything.
        let cache = rcache::open_cache(&config, &image, sb.uuid, rec.last_obj, sb.journal_gen.0);
        let (cache_tx, cache_rx) = match &cache {
            Some(_) => {
                let (tx, rx) = crossbeam_channel::bounded(rcache::FILL_QUEUE);
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let (destage_tx, destage_rx) = unbounded();
        let parent = snapshot::open_parent(&config, &store, &sb, 0)?;
        let pins = snapshot::pins_for(store.as_ref(), &image, &sb);
        let inner = Arc::new(Inner::build(InnerInit {
            image: image.clone(),
            sb: sb.clone(),
            size_bytes: sb.size_bytes,
            map: rec.map,
            last_obj: rec.last_obj,
            backend_jseq: rec.backend_jseq,
            store: store.clone(),
            cache,
            cache_tx,
            destage_tx,
            read_only: false,
            parent,
            pins,
            hwm: rec.bound.hwm,
            rows_complete: rec.rows_complete,
            config,
        }));
        let mut vol = Volume {
            inner: inner.clone(),
            threads: Vec::new(),
            gc_thread: None,
            lock: Some(lock),
            unlocked_reader: false,
            stopped: false,
        };
        // The next checkpoint may be a delta on the one recovery loaded
        // (the map tracks every change since it was loaded).
        *inner.ckpt_base.lock().unwrap_or_else(|e| e.into_inner()) = rec
            .delta_base
            .take()
            .map(|(ckpt, depth, links)| super::destage::CkptBase { ckpt, depth, links });
        vol.spawn_threads(destage_rx, rec.last_obj, ckpt_current, cache_rx)?;
        vol.inner.note_listed_checkpoint(&sb);

        let shared = Arc::new(JournalShared::default());
        let _ = inner.journal_shared.set(shared.clone());
        let weak = Arc::downgrade(&inner);
        shared.set_space_wanted(Box::new(move || {
            if let Some(inner) = weak.upgrade() {
                let (m, cv) = &inner.flusher;
                if let Ok(mut g) = m.lock() {
                    *g = true;
                    cv.notify_all();
                }
            }
        }));
        let jopts = JournalOptions {
            path: journal_path,
            size: inner.config.wlog_bytes,
            depth: inner.config.journal_depth,
            max_record_data: inner.config.wlog_chunk_bytes,
            io_timeout: Duration::from_millis(inner.config.io_timeout_msec),
            io_log,
            allow_tmpfs: inner.config.allow_tmpfs,
        };
        let (journal, report) = match Journal::open(
            &jopts,
            sb.uuid,
            sb.journal_gen,
            rec.backend_jseq,
            shared,
            &mut |e| inner.replay_entry(e),
            &mut || inner.destage_replayed(),
        ) {
            Ok(j) => j,
            Err(e) => {
                // Nothing was accepted yet: stop the threads quietly (no
                // "dropped without close" warning for a failed open).
                vol.stop(false);
                return Err(e);
            }
        };
        {
            let mut st = inner.lock_state();
            st.next_jseq = report.next_seq;
            st.last_sent = JournalSeq(report.next_seq.0 - 1);
            st.journal = Some(journal);
        }
        // The superblock records the journal generation before any new
        // write is accepted, so a journal from another attach is never
        // replayed over this one's writes.
        inner.write_superblock(|sb| {
            sb.journal_gen = report.generation;
            sb.flags &= !FLAG_CLEAN;
            sb.incompat |= crate::format::superblock::INCOMPAT_HWM;
        })?;
        // Crash-safety ordering 22: the read cache records the new journal
        // generation only after the image superblock does (one write and
        // fdatasync of the cache superblock). A crash in between leaves the
        // cache with the generation this open started from, which the next
        // open finds differing from the image's: it drops every entry
        // (safe, only cold). A failure here is the same case.
        if let Some(c) = &inner.cache {
            if let Err(e) = c.set_journal_gen(report.generation.0) {
                warn!(image = %inner.image, cache = %c.path().display(),
                    "could not record the journal generation in the read cache (the next open drops its entries): {e}");
            }
        }
        info!(image = %inner.image, replayed = report.replayed, rolled = rec.rolled, deleted = rec.deleted,
            discarded = ?report.discarded, "image opened");
        if !inner.config.no_gc {
            let gi = inner.clone();
            vol.gc_thread = Some(
                std::thread::Builder::new()
                    .name("lsvd-gc".into())
                    .spawn(move || gchost::gc_thread(gi))
                    .map_err(|e| Error::io("spawn thread lsvd-gc", e))?,
            );
        }
        Ok(vol)
    }

    pub(super) fn spawn_threads(
        &mut self,
        destage_rx: crossbeam_channel::Receiver<DestageMsg>,
        applied: ObjSeq,
        ckpt_current: bool,
        cache_rx: Option<crossbeam_channel::Receiver<rcache::CacheMsg>>,
    ) -> Result<()> {
        let inner = &self.inner;
        let (jobs_tx, jobs_rx) =
            crossbeam_channel::bounded(inner.config.backend_write_window as usize);
        let (done_tx, done_rx) = unbounded();
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.to_string())
                .spawn(f)
                .map_err(|e| Error::io(format!("spawn thread {name}"), e))
        };
        for i in 0..inner.config.backend_write_window {
            let (inner, jobs_rx, done_tx) = (inner.clone(), jobs_rx.clone(), done_tx.clone());
            self.threads.push(spawn(
                &format!("lsvd-put-{i}"),
                Box::new(move || destage::put_worker(inner, jobs_rx, done_tx)),
            )?);
        }
        drop(done_tx);
        let d = Destager::new(inner.clone(), applied, ckpt_current, jobs_tx);
        self.threads.push(spawn(
            "lsvd-destage",
            Box::new(move || d.run(destage_rx, done_rx)),
        )?);
        let fi = inner.clone();
        self.threads
            .push(spawn("lsvd-flusher", Box::new(move || flusher(fi)))?);
        if let (Some(cache), Some(rx)) = (inner.cache.clone(), cache_rx) {
            let spare = inner.spare_buffers.clone();
            self.threads.push(spawn(
                "lsvd-rcache",
                Box::new(move || rcache::cache_writer(cache, rx, spare)),
            )?);
        }
        Ok(())
    }

    /// Check a resize to `new_size` bytes without doing it: the size rules
    /// of `create` (positive multiple of 4096, at most 1 PiB), and a shrink
    /// only with `allow_shrink`.
    pub fn check_resize(&self, new_size: u64, allow_shrink: bool) -> Result<()> {
        self.inner.check_writable()?;
        image::check_image_size(new_size)
            .map_err(|e| e.prefixed(format!("cannot resize image {}", self.inner.image)))?;
        let old = self.size_bytes();
        if new_size < old && !allow_shrink {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "shrinking image {} from {old} to {new_size} bytes discards its last {} \
                     bytes; pass --allow-shrink (allow_shrink) to do it",
                    self.inner.image,
                    old - new_size
                ),
            ));
        }
        Ok(())
    }

    /// Change the disk size to `new_size` bytes (see [`Volume::check_resize`]
    /// for the rules; the same size changes nothing). The range that leaves
    /// or enters the disk is trimmed first, so a shrunk tail reads as zeros
    /// if the disk grows again, also after a crash at any point.
    ///
    /// Crash-safety ordering 26 (also `docs/format.md`):
    /// - Shrink: under the state lock, the smaller size takes effect for
    ///   new requests and a trim of the tail `[new, old)` is journaled (so
    ///   no write checked against the old size lands after the trim); then
    ///   the object holding that trim is durable and applied in the backend
    ///   (not only in the journal: a lost journal must not bring the tail
    ///   back); only then is the superblock with the smaller size written.
    ///   A crash before that leaves the old size with the tail possibly
    ///   zeroed; after it, the backend no longer maps the tail.
    /// - Grow: a trim of `[old, new)` (beyond the current end, so no client
    ///   request can touch it) is durable and applied in the backend first;
    ///   then the superblock with the bigger size is written; only then do
    ///   requests beyond the old end pass `check_range`. Whatever an earlier
    ///   shrink or crash left in that range is therefore never exposed.
    /// - Safety net at open: the recovered map and replayed journal writes
    ///   are clipped to the superblock's size (`clip_map_to_size`,
    ///   `Inner::clip_replayed`).
    ///
    /// On failure the superblock keeps the old size and so does the volume;
    /// after a failed shrink the tail may already read as zeros.
    pub fn resize(&self, new_size: u64, allow_shrink: bool) -> Result<Resized> {
        let inner = &self.inner;
        inner.check_writable()?;
        let _serial = inner.resize_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.check_resize(new_size, allow_shrink)?;
        let old = self.size_bytes();
        let done = Resized {
            old_bytes: old,
            new_bytes: new_size,
        };
        if new_size == old {
            return Ok(done);
        }
        let what = |e: Error| {
            e.prefixed(format!(
                "resize of image {} from {old} to {new_size} bytes (it keeps {old} bytes)",
                inner.image
            ))
        };
        let shrink = new_size < old;
        let (from, to) = if shrink {
            (new_size, old)
        } else {
            (old, new_size)
        };
        if let Err(e) = self.trim_durably(from, to, shrink.then_some(new_size)) {
            inner.size_bytes.store(old, Ordering::SeqCst);
            return Err(what(e));
        }
        if let Err(e) = inner.write_superblock(|sb| sb.size_bytes = new_size) {
            inner.size_bytes.store(old, Ordering::SeqCst);
            return Err(what(e));
        }
        crate::failpoint::hit("resize.sb_written");
        inner.size_bytes.store(new_size, Ordering::SeqCst);
        info!(image = %inner.image, old, new = new_size, "image resized");
        Ok(done)
    }

    /// Journal a trim of `[from, to)` (bytes; it may lie beyond the end)
    /// and wait until the object holding it is durable and applied in the
    /// backend. With `new_size`, that size takes effect under the same
    /// state lock as the trim is queued (a shrink; ordering 26).
    pub(super) fn trim_durably(&self, from: u64, to: u64, new_size: Option<u64>) -> Result<()> {
        let inner = &self.inner;
        let mut target = ObjSeq(0);
        self.sync_submit("resize trim", |d| {
            let mut st = inner.wait_for_room()?;
            if let Some(n) = new_size {
                inner.size_bytes.store(n, Ordering::SeqCst);
            }
            let first = st.next_jseq;
            let entries = inner.push_discard(&mut st, from, to - from, OpKind::Trim);
            inner.journal_append(&mut st, first, &entries, &[], false, &mut Some(d))?;
            inner.seal(&mut st);
            target = ObjSeq(st.next_obj.0 - 1);
            Ok(())
        })?;
        crate::failpoint::hit("resize.trim_journaled");
        wait_done(inner, "destage of the resize trim", |d| {
            let _ = inner.destage_tx.send(DestageMsg::WaitApplied(target, d));
        })?;
        crate::failpoint::hit("resize.trim_applied");
        Ok(())
    }

    /// Run garbage collection now, in the caller's thread, without a rate
    /// limit: clean every object below `gc_threshold`, checkpoint twice so
    /// no listed checkpoint needs the cleaned objects, then delete them and
    /// sweep orphans. Works with `no_gc` too. Waits for a background GC
    /// step in progress.
    pub fn gc_now(&self) -> Result<crate::gc::GcReport> {
        let inner = &self.inner;
        inner.check_writable()?;
        let mut g = inner.gc.lock().unwrap_or_else(|e| e.into_inner());
        g.run_now(inner.as_ref())
    }

    /// Stop the GC thread: its cancel flag ends every wait, sleep and
    /// superblock put of GC at once (a GC object whose put never succeeds
    /// included: that object stays queued for the destager), so the join
    /// does not wait for the backend. The join itself has no deadline: a
    /// GC thread left running could still delete or put after the lock is
    /// released.
    pub(super) fn stop_gc(&mut self) {
        self.inner.gc_cancel.cancel(
            ErrorKind::Closed,
            format!("GC of image {} is stopping", self.inner.image),
        );
        if let Some(t) = self.gc_thread.take() {
            let _ = t.join();
        }
    }

    /// Clean shutdown: destage everything, checkpoint, mark clean, unlock.
    pub fn close(mut self) -> Result<()> {
        if self.inner.read_only {
            self.stop(true);
            return Ok(());
        }
        let r = self.close_inner();
        self.stop(r.is_ok());
        r
    }

    pub(super) fn close_inner(&mut self) -> Result<()> {
        // 0. GC stops first: nothing of it is queued after the final
        //    destage and checkpoint below.
        self.stop_gc();
        let inner = self.inner.clone();
        let upto = {
            let mut st = inner.lock_state();
            st.closed = true;
            st.last_sent
        };
        // 1. Everything acknowledged is durable in the journal.
        wait_done(&inner, "journal flush", |d| {
            let st = inner.lock_state();
            match st.journal.as_ref() {
                Some(j) => j.flush(upto, d),
                None => d(Err(Error::new(ErrorKind::Closed, "journal is not open"))),
            }
        })?;
        // 2. Everything is in the backend, applied in order; 3. a
        //    checkpoint of the final map, named by the superblock (the
        //    newest listed one if it already is such a checkpoint).
        inner.destage_and_checkpoint_with("final", true)?;
        // 4. Marked clean only after the checkpoint is named.
        inner.write_superblock(|sb| sb.flags |= FLAG_CLEAN)?;
        // 5. The journal's chain is empty: its start moves to its head.
        let j = inner.lock_state().journal.take();
        if let Some(j) = j {
            j.shutdown(true)?;
        }
        Ok(())
    }

    /// Stop every thread. Without `clean`, like a killed process: nothing
    /// queued is written.
    pub(super) fn stop(&mut self, clean: bool) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        // Every wait and put retry of the volume ends now (GC's flag is a
        // child of this one).
        let why = format!("image {} is stopping", self.inner.image);
        self.inner.cancel.cancel(ErrorKind::Closed, why.clone());
        if let Some(c) = &self.inner.cache {
            c.cancel().cancel(ErrorKind::Closed, why);
        }
        // GC is stopped before the destager, so it never waits on it.
        self.stop_gc();
        let inner = &self.inner;
        let j = {
            let mut st = inner.lock_state();
            st.closed = true;
            st.journal.take()
        };
        if let Some(j) = j {
            let _ = j.shutdown(false);
        }
        let _ = inner.destage_tx.send(DestageMsg::Stop);
        // A clean close writes the cache index; a crash leaves it as the
        // last background flush did.
        inner.stop_cache_writer(clean);
        {
            let (m, cv) = &inner.flusher;
            if let Ok(mut g) = m.lock() {
                *g = true;
            }
            cv.notify_all();
        }
        inner.state_cv.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if !clean {
            info!(image = %inner.image, "volume stopped without a clean close");
        }
        self.lock = None;
    }

    /// Test hook: stop like a killed process (no destage, no checkpoint, no
    /// clean mark); the lock is released.
    pub fn crash(mut self) {
        self.stop(false);
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        if !self.stopped && self.inner.read_only {
            // Nothing to lose: a snapshot view only stops its cache writer.
            self.stop(true);
            return;
        }
        if !self.stopped {
            warn!(image = %self.inner.image, "volume dropped without close(): stopping like a crash; the journal keeps every acknowledged write");
            self.stop(false);
        }
    }
}
