//! Destage: sealed batches become data objects, put with a bounded window,
//! applied to the durable map strictly in sequence order; checkpoints are
//! written into the same sequence every `checkpoint_interval_objs` objects.
//!
//! Crash ordering, all in one place:
//! 1. An object is applied (map updated, journal space released) only when
//!    it *and every object with a lower sequence* is durable, so the journal
//!    never drops a record whose operation the backend could still lose to
//!    a roll-forward gap.
//! 2. Checkpoint pieces take sequences in the same stream, so objects after
//!    a checkpoint are not applied until the checkpoint is durable.
//! 3. The superblock names a checkpoint only after all its pieces are
//!    durable; a retired checkpoint is overwritten by a tombstone (never
//!    deleted) so the stream stays contiguous for a roll-forward from an
//!    older checkpoint.
//! 4. (17) A GC object's sequence is allocated only once the object is
//!    fully built in memory (`Inner::submit_gc`), so no GC failure can leave
//!    a sequence that is never put, which would stall every later apply.
//!    It is then put and applied in order like a data object; its moves are
//!    conditional, so client data written meanwhile is never overwritten.
//! 5. (18) Cleaned objects are deleted only when at or below the oldest
//!    listed checkpoint's `last_obj` and not referenced by its table (see
//!    `gc::select::deletable`): checkpoints drop rows with no live data, and
//!    the floor is recorded only after the superblock naming it is durable.
//! 6. (30) The superblock carries `INCOMPAT_CHUNK_CRCS` before the first
//!    data or GC object (format version 2) is put (`put_worker`,
//!    `Inner::ensure_chunk_crc_feature`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{select, Receiver, Sender};
use tracing::{debug, warn};

use super::batch::Batch;
use super::rcache::PutObject;
use super::Inner;
use crate::catalog::image::object_name;
use crate::error::{Error, ErrorKind, Result};
use crate::format::checkpoint::{
    split_delta_into_pieces, split_into_pieces, CkptExtent, CkptObject, CkptRange, DeltaBase,
    EXTENTS_PER_PIECE,
};
use crate::format::gcobject::{GcHeader, GcMove};
use crate::format::object::ObjectHeader;
use crate::format::superblock::{CheckpointRef, INCOMPAT_CHUNK_CRCS, INCOMPAT_DELTA_CKPT};
use crate::io::AlignedBuf;
use crate::journal::Done;
use crate::units::{JournalSeq, Lba, ObjSeq};
use crate::wait::{self, Cancel, Deadline};

fn ckpt_extent(x: crate::map::Extent<crate::map::ObjLoc>) -> CkptExtent {
    CkptExtent {
        lba: x.lba,
        len: x.len as u32,
        obj: x.target.obj,
        offset: x.target.offset,
    }
}

fn aligned_copy(b: &[u8]) -> AlignedBuf {
    let mut a = AlignedBuf::new(b.len());
    a.copy_from_slice(b);
    a
}

/// Bytes of a retired checkpoint piece's tombstone: magic + version.
pub(crate) const TOMBSTONE: &[u8] = b"LSVDCKP1\x01\x00\x00\x00";

/// A GC object, fully built, with its sequence assigned.
pub(crate) struct GcBatch {
    pub seq: ObjSeq,
    pub moves: Vec<GcMove>,
    pub data: AlignedBuf,
    /// Run once the object is applied.
    pub done: std::sync::Mutex<Option<Done>>,
}

pub(crate) enum DestageMsg {
    /// A sealed batch with its object sequence assigned.
    Batch(Arc<Batch>),
    /// A GC object with its sequence assigned.
    Gc(Arc<GcBatch>),
    /// Write a checkpoint now; `done` when the superblock names it.
    Checkpoint(Option<Done>),
    /// Like `Checkpoint`, but `done` at once if the newest listed checkpoint
    /// already reflects every applied object (clean close).
    CheckpointIfChanged(Done),
    /// Run `done` once every object up to `upto` is applied.
    WaitApplied(ObjSeq, Done),
    /// Stop. `clean`: everything queued is finished first.
    Stop,
}

/// A published checkpoint and what it is built on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CkptBase {
    pub ckpt: CheckpointRef,
    /// 0 for a full checkpoint, else the deltas down to the full one.
    pub depth: u32,
    /// The checkpoints it is built on, newest first (empty for a full one).
    pub links: Vec<CheckpointRef>,
}

/// A delta is written only while it holds at most this fraction of the
/// map's extents (ranges and extents counted alike): a chain then never
/// costs a load more than a few full maps.
const DELTA_MAX_DIVISOR: usize = 4;

/// What the oldest listed checkpoint must tell GC's deletion rule.
#[derive(Clone)]
pub(crate) struct CkptFacts {
    pub last_obj: ObjSeq,
    /// When its snapshot of the map was taken.
    pub taken: std::time::Instant,
    pub live: Arc<BTreeSet<ObjSeq>>,
    pub bytes: u64,
}

enum Item {
    Data(Arc<Batch>),
    Gc(Arc<GcBatch>),
    Piece {
        ckpt: CheckpointRef,
        last: bool,
        waiters: Vec<Done>,
        facts: Option<CkptFacts>,
        /// On the last piece: what the checkpoint is built on, and what
        /// the previous newest one was built on if known (for the base
        /// links the superblock keeps).
        chain: Option<(CkptBase, Option<CkptBase>)>,
    },
}

pub(crate) struct Job {
    seq: ObjSeq,
    name: String,
    /// The object is `head` followed by the batch's data (if any).
    /// Aligned, so a store can write it with O_DIRECT.
    head: AlignedBuf,
    /// A data object's batch, with the crcs of its data's 4 KiB blocks
    /// (`format::block_crcs`) the chunk crcs were joined from. Once put, a
    /// data object is offered to the read cache, which joins its block
    /// crcs from these instead of reading the data again. GC objects and
    /// checkpoint pieces are not offered.
    batch: Option<(Arc<Batch>, Vec<u32>)>,
    gc: Option<Arc<GcBatch>>,
}

impl Inner {
    /// Set [`INCOMPAT_CHUNK_CRCS`] in the superblock (once) before the first
    /// version-2 data or GC object is put (ordering 30): a build that reads
    /// only version 1 would take such an object for the end of the log and
    /// delete everything above it, so it must refuse the image by name
    /// instead. `chunk_crcs_lock` is taken before the superblock lock and
    /// held across that one superblock put, so concurrent first puts write
    /// it once.
    pub(crate) fn ensure_chunk_crc_feature(&self) -> Result<()> {
        if self.chunk_crcs_marked.load(Ordering::Acquire) {
            return Ok(());
        }
        let _one = self
            .chunk_crcs_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let set =
            self.sb.lock().unwrap_or_else(|e| e.into_inner()).incompat & INCOMPAT_CHUNK_CRCS != 0;
        if !set {
            self.write_superblock(|sb| sb.incompat |= INCOMPAT_CHUNK_CRCS)?;
        }
        self.chunk_crcs_marked.store(true, Ordering::Release);
        Ok(())
    }

    /// Set [`INCOMPAT_DELTA_CKPT`] in the superblock (once) before the first
    /// delta checkpoint is put: a build without deltas would find no usable
    /// checkpoint and refuse, or roll forward from the first object; with
    /// the bit it refuses the image by name. Only the destager calls it.
    fn ensure_delta_feature(&self) -> Result<()> {
        if self.delta_marked.load(Ordering::Acquire) {
            return Ok(());
        }
        let set =
            self.sb.lock().unwrap_or_else(|e| e.into_inner()).incompat & INCOMPAT_DELTA_CKPT != 0;
        if !set {
            self.write_superblock(|sb| sb.incompat |= INCOMPAT_DELTA_CKPT)?;
        }
        self.delta_marked.store(true, Ordering::Release);
        Ok(())
    }

    /// Crash-safety ordering 31: before object `seq` is put, the durable
    /// high-water mark (`IMAGE.hwm`) is above it, so every object in the
    /// store stays below the mark and recovery finds them all by probing
    /// below it instead of listing the pool. The mark is raised
    /// [`crate::format::hwm::STEP`] past `seq`: one small put per that many
    /// objects. A failure is retried by the caller like a failed put.
    pub(crate) fn ensure_hwm(&self, seq: ObjSeq) -> Result<()> {
        if seq.0 < self.hwm.load(Ordering::Acquire) {
            return Ok(());
        }
        let _g = self.hwm_lock.lock().unwrap_or_else(|e| e.into_inner());
        if seq.0 < self.hwm.load(Ordering::Acquire) {
            return Ok(());
        }
        let hwm = seq.0.saturating_add(1 + crate::format::hwm::STEP);
        crate::catalog::image::write_hwm(self.store.as_ref(), &self.image, self.uuid, hwm)?;
        self.hwm.store(hwm, Ordering::Release);
        Ok(())
    }
}

/// Why a destage put (data, GC or checkpoint piece) is retried without a
/// deadline.
const DESTAGE_PUT: &str = "an object sequence that is never put would stall the apply of \
     every later object (orderings 1 and 4), so a destage put is retried until it lands; \
     the waits of writers, flushes, close and GC, and the destager's own give-up on \
     waiters (`expire_applied_waiters`), all io_timeout_msec, bound what callers see, \
     and a stopping volume cancels it";

/// Put worker: retries with backoff until the put succeeds, the store says
/// this server is fenced, or the volume stops (its cancel flag also cuts a
/// backoff sleep short).
pub(crate) fn put_worker(
    inner: Arc<Inner>,
    jobs: Receiver<Job>,
    done: Sender<(ObjSeq, Result<()>)>,
) {
    for job in jobs.iter() {
        let data: &[u8] = match (&job.batch, &job.gc) {
            (Some((b, _)), _) => &b.data,
            (None, Some(g)) => &g.data,
            (None, None) => &[],
        };
        let r = wait::retry(
            &format!("put {}", job.name),
            &inner.cancel,
            Deadline::Unbounded(DESTAGE_PUT),
            || {
                // Ordering 30: data and GC objects are format version 2,
                // and the superblock says so (INCOMPAT_CHUNK_CRCS) before
                // the first one is put, so a build that reads only version
                // 1 refuses the image instead of taking such an object for
                // the end of the log. A failure here is retried like a
                // failed put.
                if job.batch.is_some() || job.gc.is_some() {
                    inner.ensure_chunk_crc_feature()?;
                }
                inner.ensure_hwm(job.seq)?;
                inner.store.put_parts(&job.name, &[&job.head, data])
            },
            |e| e.kind() == ErrorKind::Fenced,
            |e, backoff| {
                warn!(object = %job.name, store = %inner.store.describe(), "put failed, retrying in {backoff:?}: {e:?}");
                inner.set_backend_error(e);
            },
        );
        if let Err(e) = &r {
            if e.kind() == ErrorKind::Fenced {
                inner.mark_fenced(e);
            }
        }
        let seq = job.seq;
        {
            // The job's parts (and its reference to the batch, unless the
            // cache writer takes it) go at the end of this block, before
            // the completion, so the destager can recycle the batch's
            // buffer.
            let Job {
                head, batch, gc, ..
            } = job;
            if r.is_ok() {
                inner.clear_backend_error();
                if let Some((batch, blocks)) = batch {
                    // Read-after-write hits: the object is durable and
                    // immutable now. Never waits (dropped when the cache
                    // writer is behind). The writer shares the header and
                    // the batch (no copy).
                    inner.offer_to_cache(
                        seq,
                        PutObject {
                            head,
                            batch,
                            blocks,
                        },
                    );
                }
                if gc.is_some() {
                    crate::failpoint::hit("gc.put_done");
                }
            }
        }
        if done.send((seq, r)).is_err() {
            return;
        }
    }
}

pub(crate) struct Destager {
    inner: Arc<Inner>,
    items: BTreeMap<u64, Item>,
    completed: std::collections::BTreeSet<u64>,
    queue: VecDeque<Job>,
    inflight: usize,
    window: usize,
    /// Every object up to this is applied.
    applied: ObjSeq,
    since_ckpt: u64,
    ckpt_running: bool,
    /// The newest checkpoint the superblock lists reflects every applied
    /// object: no data or GC object was applied after its map was taken.
    current: bool,
    ckpt_waiters: Vec<Done>,
    /// Who waits until an object is applied, and since when.
    applied_waiters: Vec<(ObjSeq, Done, Instant)>,
    /// When `applied` last moved (or the destager started).
    applied_at: Instant,
    jobs: Sender<Job>,
}

impl Destager {
    /// `current`: the newest listed checkpoint reflects `applied` (see the
    /// field).
    pub(crate) fn new(
        inner: Arc<Inner>,
        applied: ObjSeq,
        current: bool,
        jobs: Sender<Job>,
    ) -> Destager {
        let window = inner.config.backend_write_window.max(1) as usize;
        Destager {
            inner,
            items: BTreeMap::new(),
            completed: Default::default(),
            queue: VecDeque::new(),
            inflight: 0,
            window,
            applied,
            since_ckpt: 0,
            ckpt_running: false,
            current,
            ckpt_waiters: Vec::new(),
            applied_waiters: Vec::new(),
            applied_at: Instant::now(),
            jobs,
        }
    }

    pub(crate) fn run(mut self, rx: Receiver<DestageMsg>, done_rx: Receiver<(ObjSeq, Result<()>)>) {
        loop {
            // Only while someone waits for an object: a wake-up to give
            // up on them (`expire_applied_waiters`).
            let tick = if self.applied_waiters.is_empty() {
                crossbeam_channel::never()
            } else {
                crossbeam_channel::after(wait::TICK)
            };
            select! {
                recv(rx) -> m => match m {
                    Ok(DestageMsg::Stop) | Err(_) => break,
                    Ok(m) => self.handle(m),
                },
                recv(done_rx) -> d => match d {
                    Ok((seq, r)) => self.completed_put(seq, r),
                    Err(_) => break,
                },
                recv(tick) -> _ => {}
            }
            self.expire_applied_waiters(Instant::now());
            self.pump();
        }
        let e = Error::new(ErrorKind::Closed, "volume stopped");
        for d in self.ckpt_waiters.drain(..) {
            d(Err(e.duplicate()));
        }
        for (_, d, _) in self.applied_waiters.drain(..) {
            d(Err(e.duplicate()));
        }
    }

    fn handle(&mut self, m: DestageMsg) {
        match m {
            DestageMsg::Batch(b) => {
                // The block crcs the writes brought (the rest read now):
                // the chunk crcs join them without reading the data again.
                let (head, crcs, blocks) = ObjectHeader::encode_header_and_crcs(
                    self.inner.uuid,
                    b.obj,
                    b.first_jseq,
                    &b.ops,
                    &b.data,
                    Some(b.data.block_crcs()),
                );
                // Reads of this object verify against these without
                // reading its header back.
                self.inner
                    .chunk_tables
                    .insert(b.obj, super::verify::ObjCheck::Chunks(crcs));
                self.queue.push_back(Job {
                    seq: b.obj,
                    name: object_name(&self.inner.image, b.obj),
                    head: aligned_copy(&head),
                    batch: Some((b.clone(), blocks)),
                    gc: None,
                });
                self.items.insert(b.obj.0, Item::Data(b));
            }
            DestageMsg::Gc(g) => {
                let (head, crcs, _) =
                    GcHeader::encode_header_and_crcs(self.inner.uuid, g.seq, &g.moves, &g.data);
                self.inner
                    .chunk_tables
                    .insert(g.seq, super::verify::ObjCheck::Chunks(crcs));
                self.queue.push_back(Job {
                    seq: g.seq,
                    name: object_name(&self.inner.image, g.seq),
                    head: aligned_copy(&head),
                    // Not offered to the cache: a GC object holds whatever live data its
                    // victims had, mostly data nobody has rewritten or read
                    // for a while; caching all of it would cost a cache
                    // write of every GC object and evict hot chunks. Moved
                    // data that is hot comes back on its next miss. (An
                    // earlier build offered a GC object's header alone,
                    // which only left a short, useless entry.)
                    batch: None,
                    gc: Some(g.clone()),
                });
                self.items.insert(g.seq.0, Item::Gc(g));
            }
            DestageMsg::CheckpointIfChanged(done) if self.current && !self.ckpt_running => {
                done(Ok(()));
            }
            DestageMsg::CheckpointIfChanged(done) => {
                self.handle(DestageMsg::Checkpoint(Some(done)))
            }
            DestageMsg::Checkpoint(done) => {
                if let Some(d) = done {
                    self.ckpt_waiters.push(d);
                }
                if !self.ckpt_running {
                    self.start_checkpoint();
                }
            }
            DestageMsg::WaitApplied(upto, done) => {
                if upto <= self.applied {
                    done(Ok(()));
                } else {
                    self.applied_waiters.push((upto, done, Instant::now()));
                    self.fail_waiters_if_fenced();
                }
            }
            DestageMsg::Stop => {}
        }
    }

    /// Fail whoever has waited for an object to be applied while none was
    /// for `io_timeout_msec` (the backend takes nothing): a wait that is
    /// slow but moving goes on. The objects stay queued and their puts are
    /// retried (`DESTAGE_PUT`); only the waiters give up. This bounds the
    /// waits that have no deadline of their own: a FLUSH, or a FUA
    /// request, with `hard_flush` from a ublk queue, which must fail with
    /// ETIMEDOUT rather than hang; the other waiters have their own
    /// deadline of the same length.
    fn expire_applied_waiters(&mut self, now: Instant) {
        let limit = self.inner.io_timeout();
        let mut i = 0;
        while i < self.applied_waiters.len() {
            let since = self.applied_waiters[i].2.max(self.applied_at);
            if now.saturating_duration_since(since) < limit {
                i += 1;
                continue;
            }
            let (upto, d, _) = self.applied_waiters.swap_remove(i);
            let e = Error::new(
                ErrorKind::Timeout,
                format!(
                    "wait for object {} in the backend: no object applied for {} ms",
                    upto.0,
                    limit.as_millis()
                ),
            );
            d(Err(self.inner.with_backend_cause(e)));
        }
    }

    /// Once fenced, no put of ours can land: fail whoever waits for one.
    fn fail_waiters_if_fenced(&mut self) {
        let Some(e) = self.inner.fenced_error() else {
            return;
        };
        for (_, d, _) in self.applied_waiters.drain(..) {
            d(Err(e.duplicate()));
        }
        for d in self.ckpt_waiters.drain(..) {
            d(Err(e.duplicate()));
        }
    }

    fn pump(&mut self) {
        while self.inflight < self.window {
            let Some(job) = self.queue.pop_front() else {
                break;
            };
            self.inflight += 1;
            if self.jobs.send(job).is_err() {
                break;
            }
        }
    }

    fn completed_put(&mut self, seq: ObjSeq, r: Result<()>) {
        self.inflight -= 1;
        if let Err(e) = r {
            // When stopping, or fenced: the object stays unapplied. Fenced,
            // nothing will ever be applied again: fail every waiter now.
            debug!(object = seq.0, "put abandoned: {e}");
            self.fail_waiters_if_fenced();
            return;
        }
        self.completed.insert(seq.0);
        while self.completed.remove(&self.applied.next().0) {
            let seq = self.applied.next();
            let item = self.items.remove(&seq.0);
            self.applied = seq;
            self.applied_at = Instant::now();
            // Ordering 32: every checkpoint piece gets a row
            // (no data) once durable, published or not, so the next table
            // names it; while listed (or pinned) the rule keeps it, and
            // once retired, or if its publish failed, GC deletes it without
            // listing.
            if matches!(item, Some(Item::Piece { .. })) {
                let mut map = self
                    .inner
                    .durable
                    .write()
                    .unwrap_or_else(|e| e.into_inner());
                if map.object(seq).is_none() {
                    map.add_object(seq, 0);
                }
            }
            match item {
                Some(Item::Data(b)) => {
                    self.apply_data(&b);
                    if let Ok(b) = Arc::try_unwrap(b) {
                        self.inner.spare_buffers.put(b.data);
                    }
                }
                Some(Item::Gc(g)) => self.apply_gc(&g),
                Some(Item::Piece {
                    ckpt,
                    last: true,
                    waiters,
                    facts,
                    chain,
                }) => self.checkpoint_durable(ckpt, waiters, facts, chain),
                Some(Item::Piece { .. }) | None => {}
            }
        }
        self.inner
            .applied_obj
            .store(self.applied.0, Ordering::SeqCst);
        let applied = self.applied;
        let mut i = 0;
        while i < self.applied_waiters.len() {
            if self.applied_waiters[i].0 <= applied {
                let (_, d, _) = self.applied_waiters.swap_remove(i);
                d(Ok(()));
            } else {
                i += 1;
            }
        }
        if !self.ckpt_running && self.since_ckpt >= self.inner.config.checkpoint_interval_objs {
            self.start_checkpoint();
        }
    }

    fn apply_data(&mut self, b: &Batch) {
        let header_bytes = ObjectHeader::header_bytes_for(b.ops.len(), b.data.len() as u64);
        let header_sectors = header_bytes / 512;
        // Applied in slices so readers and writers never wait long for a
        // lock. A half-applied object is invisible: every range it touches
        // is still in the overlay until the overlay entries go below.
        self.inner
            .durable
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .add_object(b.obj, b.data.len() as u64 / 512);
        for ops in b.ops.chunks(256) {
            let mut map = self
                .inner
                .durable
                .write()
                .unwrap_or_else(|e| e.into_inner());
            super::recovery::apply_op_list(&mut map, b.obj, header_sectors, ops);
            self.inner
                .map_extents
                .store(map.extent_count() as u64, Ordering::Relaxed);
        }
        // The durable map is updated before the overlay entries go, so a
        // reader never falls through to an older version. The batch leaves
        // `sealed` only after its last overlay entry is gone.
        for ops in b.ops.chunks(64) {
            let mut st = self.inner.lock_state();
            for op in ops {
                st.overlay
                    .remove_if(Lba(op.lba.0), op.sectors as u64, |t| t.batch() == b.id);
            }
        }
        self.inner.lock_state().sealed.remove(&b.id);
        self.inner.state_cv.notify_all();
        self.inner
            .backend_jseq
            .store(b.last_jseq.0, Ordering::SeqCst);
        self.inner
            .stats
            .data_objects
            .fetch_add(1, Ordering::Relaxed);
        self.inner.stats.data_object_bytes.fetch_add(
            u64::from(header_bytes) + b.data.len() as u64,
            Ordering::Relaxed,
        );
        // The backend now holds every operation up to b.last_jseq (and all
        // lower objects are applied): that journal space may be reused.
        if let Some(js) = self.inner.journal_shared.get() {
            js.release(b.last_jseq);
        }
        self.since_ckpt += 1;
        self.current = false;
    }

    /// Apply a GC object: its moves only retarget what still maps to their
    /// sources. Unlike data: no overlay, no journal sequence, no journal
    /// release.
    fn apply_gc(&mut self, g: &GcBatch) {
        let header_bytes = GcHeader::header_bytes_for(g.moves.len(), g.data.len() as u64);
        let header_sectors = header_bytes / 512;
        self.inner
            .durable
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .add_object(g.seq, g.data.len() as u64 / 512);
        for moves in g.moves.chunks(256) {
            let mut map = self
                .inner
                .durable
                .write()
                .unwrap_or_else(|e| e.into_inner());
            super::recovery::apply_move_list(&mut map, g.seq, header_sectors, moves);
            self.inner
                .map_extents
                .store(map.extent_count() as u64, Ordering::Relaxed);
        }
        let st = &self.inner.stats;
        st.gc_objects.fetch_add(1, Ordering::Relaxed);
        st.gc_bytes.fetch_add(
            u64::from(header_bytes) + g.data.len() as u64,
            Ordering::Relaxed,
        );
        self.since_ckpt += 1;
        self.current = false;
        let done = g.done.lock().ok().and_then(|mut d| d.take());
        if let Some(d) = done {
            d(Ok(()));
        }
    }

    fn start_checkpoint(&mut self) {
        self.ckpt_running = true;
        self.since_ckpt = 0;
        let prev = self
            .inner
            .ckpt_base
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let cfg = &self.inner.config;
        // A snapshot names a full checkpoint (its pins and a clone's parent
        // link are one checkpoint's pieces, no chain).
        let snap = self.inner.snap_hold.load(Ordering::SeqCst) > 0;
        let may_delta = prev
            .as_ref()
            .filter(|b| !snap && b.depth + 1 < cfg.checkpoint_full_every);
        let mut rows_complete;
        let (objects, body) = {
            // Rows with no live data stay in the table until GC has deleted
            // their objects (ordering 32): after a crash the recovered
            // table still names every object that awaits deletion, so GC
            // finds them without listing the store. This runs on the
            // destager thread, so no apply interleaves.
            let mut map = self
                .inner
                .durable
                .write()
                .unwrap_or_else(|e| e.into_inner());
            // Read under the map's lock, which GC's `add_rows` holds while it
            // adds the rows a listing found and sets the flag: set here
            // means the copy below holds those rows.
            rows_complete = self.inner.rows_complete.load(Ordering::Acquire);
            if self.inner.config.no_gc {
                // Without GC nothing deletes them: a long session would
                // grow the table by a row per object it writes. Kept while
                // few (a short session, such as the CLI's `snap create` or
                // `resize`, then leaves the next GC nothing to list); past
                // `no_gc_dead_rows`, dropped, and this checkpoint does not
                // say its rows are complete (a later open with GC lists
                // once).
                let dead: Vec<ObjSeq> = map
                    .objects()
                    .filter(|(_, i)| i.live_sectors == 0)
                    .map(|(o, _)| o)
                    .collect();
                if dead.len() as u64 > self.inner.config.no_gc_dead_rows {
                    for o in dead {
                        map.remove_object(o);
                    }
                    self.inner.rows_complete.store(false, Ordering::Release);
                    rows_complete = false;
                }
            }
            // The changes since the base checkpoint's map was taken, taken
            // with this checkpoint's map (under the same lock): the next
            // delta holds what changes from here on.
            let changes = map.take_changes();
            let delta = match (may_delta, changes) {
                (Some(b), Some(ranges))
                    if ranges.len() <= map.extent_count() / DELTA_MAX_DIVISOR =>
                {
                    let extents = map.clipped_extents(&ranges);
                    (ranges.len() + extents.len() <= map.extent_count() / DELTA_MAX_DIVISOR)
                        .then_some((b.clone(), ranges, extents))
                }
                _ => None,
            };
            let objects: Vec<CkptObject> = map
                .objects()
                .map(|(obj, i)| CkptObject {
                    obj,
                    data_sectors: i.data_sectors,
                    live_sectors: i.live_sectors,
                })
                .collect();
            // `Some`: a delta's base, ranges and extents. `None`: a full
            // one, whose map is copied under the read lock below (only this
            // thread changes it).
            let body = delta.map(|(b, ranges, extents)| {
                (
                    b,
                    ranges
                        .into_iter()
                        .map(|(lba, len)| CkptRange { lba, len })
                        .collect::<Vec<_>>(),
                    extents.into_iter().map(ckpt_extent).collect::<Vec<_>>(),
                )
            });
            (objects, body)
        };
        // The delta feature is in the superblock before the first delta's
        // pieces are put; if it cannot be set, this one is full.
        let body = body.and_then(|d| match self.inner.ensure_delta_feature() {
            Ok(()) => Some(d),
            Err(e) => {
                warn!(image = %self.inner.image, "cannot mark the superblock for delta checkpoints, writing a full one: {e:?}");
                None
            }
        });
        let extents: Vec<CkptExtent> = match &body {
            Some(_) => vec![],
            None => {
                let map = self.inner.durable.read().unwrap_or_else(|e| e.into_inner());
                map.extents().map(ckpt_extent).collect()
            }
        };
        let live: BTreeSet<ObjSeq> = objects
            .iter()
            .filter(|o| o.live_sectors > 0)
            .map(|o| o.obj)
            .collect();
        let jseq = JournalSeq(self.inner.backend_jseq.load(Ordering::SeqCst));
        // Split first (with a placeholder sequence), then reserve exactly
        // as many sequences as there are pieces.
        let (mut pieces, base) = match body {
            Some((b, ranges, x)) => {
                let base = DeltaBase {
                    seq: b.ckpt.seq,
                    pieces: b.ckpt.pieces,
                    depth: b.depth + 1,
                };
                let pieces = split_delta_into_pieces(
                    self.inner.uuid,
                    ObjSeq(0),
                    self.applied,
                    jseq,
                    objects,
                    base,
                    &ranges,
                    &x,
                    EXTENTS_PER_PIECE,
                );
                let mut links = vec![b.ckpt];
                links.extend(b.links.iter().copied());
                (pieces, (b.depth + 1, links))
            }
            None => (
                split_into_pieces(
                    self.inner.uuid,
                    ObjSeq(0),
                    self.applied,
                    jseq,
                    objects,
                    &extents,
                    EXTENTS_PER_PIECE,
                ),
                (0, vec![]),
            ),
        };
        drop(extents);
        let ckpt_seq = {
            let mut st = self.inner.lock_state();
            let s = st.next_obj;
            st.next_obj = ObjSeq(s.0 + pieces.len() as u64);
            s
        };
        for p in &mut pieces {
            p.ckpt_seq = ckpt_seq;
        }
        if rows_complete {
            pieces[0].flags |= crate::format::checkpoint::FLAG_ROWS_COMPLETE;
        }
        let ckpt = CheckpointRef {
            seq: ckpt_seq,
            pieces: pieces.len() as u32,
        };
        if base.0 == 0 {
            &self.inner.stats.checkpoints_full
        } else {
            &self.inner.stats.checkpoints_delta
        }
        .fetch_add(1, Ordering::Relaxed);
        let mut chain = Some((
            CkptBase {
                ckpt,
                depth: base.0,
                links: base.1,
            },
            prev,
        ));
        let n = pieces.len();
        let mut facts = Some(CkptFacts {
            last_obj: self.applied,
            taken: std::time::Instant::now(),
            live: Arc::new(live),
            bytes: 0,
        });
        let mut total_bytes = 0u64;
        for (i, p) in pieces.into_iter().enumerate() {
            let seq = ObjSeq(ckpt_seq.0 + i as u64);
            let bytes = p.encode();
            total_bytes += bytes.len() as u64;
            self.inner
                .stats
                .checkpoint_pieces
                .fetch_add(1, Ordering::Relaxed);
            self.inner
                .stats
                .checkpoint_bytes
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            self.queue.push_back(Job {
                seq,
                name: object_name(&self.inner.image, seq),
                head: aligned_copy(&bytes),
                batch: None,
                gc: None,
            });
            let last = i + 1 == n;
            let waiters = if last {
                std::mem::take(&mut self.ckpt_waiters)
            } else {
                vec![]
            };
            self.items.insert(
                seq.0,
                Item::Piece {
                    ckpt,
                    last,
                    waiters,
                    facts: if last {
                        facts.take().map(|f| CkptFacts {
                            bytes: total_bytes,
                            ..f
                        })
                    } else {
                        None
                    },
                    chain: if last { chain.take() } else { None },
                },
            );
        }
    }

    /// All pieces of `ckpt` (and everything before them) are durable:
    /// name it in the superblock, retire the checkpoint that falls off.
    fn checkpoint_durable(
        &mut self,
        ckpt: CheckpointRef,
        waiters: Vec<Done>,
        facts: Option<CkptFacts>,
        chain: Option<(CkptBase, Option<CkptBase>)>,
    ) {
        self.ckpt_running = false;
        let (new, prev) = match chain {
            Some(c) => c,
            None => (
                CkptBase {
                    ckpt,
                    depth: 0,
                    links: vec![],
                },
                None,
            ),
        };
        let r = self.inner.publish_checkpoint(&new, prev.as_ref());
        // A delta on it needs the changes since its map was taken, which
        // the map tracks from then on. If the superblock may not name it,
        // the next checkpoint is full.
        *self
            .inner
            .ckpt_base
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = r.is_ok().then_some(new);
        if r.is_ok() {
            // Nothing applied since its map was taken: it reflects all.
            self.current = self.since_ckpt == 0;
        }
        if let (Ok(()), Some(f)) = (&r, facts) {
            // Recorded only once the superblock naming it is durable.
            self.inner.note_checkpoint(ckpt, f);
        }
        for d in waiters {
            d(match &r {
                Ok(()) => Ok(()),
                Err(e) => Err(e.duplicate()),
            });
        }
        if !self.ckpt_waiters.is_empty() {
            self.start_checkpoint();
        }
    }
}

/// The base links a superblock keeps when it lists `list` (newest first):
/// what each listed delta is built on, minus the listed checkpoints
/// themselves, newest first, each once. `known` gives a listed
/// checkpoint's links; `None` (not known to this session) keeps `old`,
/// every link the superblock had (a superset is always safe: a link only
/// keeps pieces).
fn links_for(
    list: &[CheckpointRef],
    known: &[&CkptBase],
    old: &[CheckpointRef],
) -> Vec<CheckpointRef> {
    let mut out: Vec<CheckpointRef> = Vec::new();
    for c in list {
        match known.iter().find(|b| b.ckpt == *c) {
            Some(b) => out.extend(b.links.iter().copied()),
            None => out.extend(old.iter().copied()),
        }
    }
    out.retain(|c| !list.contains(c));
    out.sort_by_key(|c| std::cmp::Reverse(c.seq));
    out.dedup();
    out
}

impl Inner {
    /// Make the superblock name `new.ckpt` (newest first, keeping two, and
    /// the base links they are built on) and tombstone the pieces of every
    /// checkpoint that is neither listed nor a link any more. `prev`: what
    /// the newest listed checkpoint so far is built on, if known.
    pub(crate) fn publish_checkpoint(&self, new: &CkptBase, prev: Option<&CkptBase>) -> Result<()> {
        let ckpt = new.ckpt;
        let mut retired = Vec::new();
        self.write_superblock_with(|sb| {
            // A delta is named only while its base is still listed (as the
            // newest, which only this thread changes).
            if let Some(&base) = new.links.first() {
                if sb.checkpoints.first() != Some(&base) {
                    return Err(Error::new(
                        ErrorKind::Io,
                        format!(
                            "delta checkpoint {} is built on {}, but the superblock's newest \
                             is {:?}: not published (the next checkpoint is full)",
                            ckpt.seq,
                            base.seq,
                            sb.checkpoints.first().map(|c| c.seq.0)
                        ),
                    ));
                }
            }
            let mut list = vec![ckpt];
            list.extend(sb.checkpoints.iter().copied().filter(|c| c.seq != ckpt.seq));
            let dropped = list.split_off(2.min(list.len()));
            let known: Vec<&CkptBase> = std::iter::once(new).chain(prev).collect();
            let links = links_for(&list, &known, &sb.links);
            retired = dropped
                .into_iter()
                .chain(sb.links.iter().copied())
                .filter(|c| !list.contains(c) && !links.contains(c))
                .collect();
            retired.sort_by_key(|c: &CheckpointRef| c.seq);
            retired.dedup();
            sb.checkpoints = list;
            sb.links = links;
            Ok(())
        })?;
        crate::failpoint::hit("ckpt.published");
        // Ordering 32: a retired checkpoint's pieces get rows (no data, no
        // live data) before they can leave every listed table's reach, so
        // GC deletes them (tombstoned or, for a snapshot's, once it is
        // removed) without listing the store. The next checkpoint's table
        // names them; until then they are below the floor of none.
        {
            let mut map = self.durable.write().unwrap_or_else(|e| e.into_inner());
            for c in &retired {
                for s in c.piece_seqs() {
                    if map.object(s).is_none() {
                        map.add_object(s, 0);
                    }
                }
            }
        }
        for c in retired {
            // A snapshot's checkpoint (or, while `snap create` runs, one
            // that may become a snapshot's) keeps its pieces.
            if self.snap_hold.load(Ordering::SeqCst) > 0
                || crate::gc::Retention::pinned(self.retention.as_ref(), c.seq)
            {
                continue;
            }
            for s in c.seq.0..c.seq.0 + c.pieces as u64 {
                // A tombstone keeps the sequence contiguous (see module
                // docs). If it fails the old piece simply stays: it is still
                // a valid checkpoint object that roll-forward skips.
                let name = object_name(&self.image, ObjSeq(s));
                if let Err(e) = self.put_bounded(&name, TOMBSTONE, &self.cancel) {
                    warn!(object = %name, "could not tombstone a retired checkpoint piece (harmless): {e:?}");
                }
            }
        }
        Ok(())
    }

    /// Put with retries for at most `io_timeout_msec`, given up (with the
    /// last error) when `cancel` is set.
    pub(crate) fn put_bounded(&self, name: &str, data: &[u8], cancel: &Cancel) -> Result<()> {
        let r = wait::retry(
            &format!("put {name}"),
            cancel,
            Deadline::After(self.io_timeout()),
            || self.store.put(name, data),
            |e| e.kind() == ErrorKind::Fenced,
            |e, backoff| {
                warn!(object = %name, store = %self.store.describe(), "put failed, retrying in {backoff:?}: {e:?}");
            },
        );
        if let Err(e) = &r {
            if e.kind() == ErrorKind::Fenced {
                self.mark_fenced(e);
            }
        }
        r
    }
}
