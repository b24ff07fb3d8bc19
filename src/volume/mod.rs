//! The engine facade: an open image that many threads read and write.
//!
//! Byte offsets and lengths must be multiples of 512. Writes are durable in
//! the journal when acknowledged; FLUSH makes every earlier write durable
//! across a host crash (see `README.md`, "Consistency guarantees").
//!
//! Threads: callers (any number), the journal writer, the destager (applies
//! objects in order, writes checkpoints), `backend_write_window` put
//! workers, a flusher that closes batches older than `flush_msec`, the
//! read-cache writer (caches objects as they are put, evicts to keep the
//! cache's reserve of free slots, flushes the cache index every second;
//! readers never evict or fdatasync the cache), and (unless `no_gc`) the GC
//! thread (`src/gc/`, glue in `gchost.rs`).
//!
//! Reads are served from the open and in-flight batches, then through the
//! read cache (`src/cache/`), whose misses read whole 64 KiB chunks from the
//! backend.
//!
//! Waits: every wait (for the journal, the destager, a put, a condition on
//! the state) goes through [`crate::wait`] with a deadline and a cancel
//! flag. `Inner::cancel` is cancelled when the volume stops; GC's flag
//! (`Inner::gc_cancel`) is its child, cancelled on its own by `stop_gc`
//! (the first step of `close`) and when the server is fenced.
//!
//! Lock order (a lock may be taken while holding the ones above it, never
//! the other way round; locks on one line are never held together):
//! 1. `resize_lock` / `gc` - held for a whole resize / GC step, forced GC
//!    run, snapshot create or remove, *across I/O and waits* (puts, gets,
//!    deletes, waits for destage and checkpoints): deliberate, they
//!    serialise those operations. No thread holds both.
//! 2. `sb` / `state` / `durable` (RwLock) - never two of them at once.
//!    `sb` is held *across the superblock put* (deliberate: two rewrites
//!    never land in the opposite order; the put is bounded by
//!    `io_timeout_msec` and the caller's cancel flag). `state` and
//!    `durable` are never held across I/O or a wait (`room` waits on
//!    `state_cv`, which releases `state`); readers drop `state` before
//!    taking `durable` (see `Volume::read`).
//! 3. Leaves, which take no other volume lock: `spare_buffers` (under
//!    `state`, in `seal`), the journal's staging lock and channel (under
//!    `state`, in `journal_append`), `gc_dead` (under `durable` written,
//!    in `start_checkpoint`, or under `gc`), `session_ckpts`,
//!    `backend_error`, `flusher` (also under the journal's `space_wanted`
//!    lock, on the journal thread), the snapshot pins (`retention`), a GC
//!    object's `done`, the locks inside [`crate::wait`] (cancel flags and
//!    completion slots), and the read cache's own locks (its order:
//!    `flush_lock`, held across the cache file's writes and fdatasyncs,
//!    then `slots`, then one key shard; `inflight` and a fetch's result
//!    alone), which are taken under `gc` (GC reads) or under no volume lock.
//!
//! Completions (`Done`, [`Completion`]) may run under `state` (an append to
//! a failed journal, a flush of a stopped one): they must take no volume
//! lock. A clone's parent is another volume, whose locks are taken with
//! none of this one's held.

mod batch;
mod destage;
mod gchost;
pub mod image;
mod rcache;
mod readplan;
mod recovery;
pub mod scrub;
pub mod snapshot;
mod verify;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{unbounded, Sender};
use tracing::{info, warn};

use crate::backend::{ObjectStore, StoreLock};
use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::format::journal::RecordEntry;
use crate::format::object::OpKind;
use crate::format::superblock::{Superblock, FLAG_CLEAN};
use crate::journal::{Append, Done, Journal, JournalOptions, JournalShared, ReplayEntry};
use crate::map::{ExtentMap, ObjectMap};
use crate::units::{ImageUuid, JournalSeq, Lba, ObjSeq, SECTOR};
use crate::wait::{self, Cancel, Deadline};

use batch::{Batch, PendLoc};
use destage::{DestageMsg, Destager};
pub use image::ImageSpec;
pub use rcache::rcache_path;
pub use readplan::{ReadPlan, RemotePiece};
pub use snapshot::{clone_image, find_clones, FlattenReport, Parent};

/// Called once when an asynchronously submitted operation completes.
pub type Completion = Box<dyn FnOnce(Result<()>) + Send + 'static>;

/// Most operations in one data object.
const MAX_BATCH_OPS: usize = 65536;
/// Largest single trim/zero operation in sectors.
const MAX_DISCARD_SECTORS: u64 = 1 << 31;

/// Why a client's synchronous write, trim, write-zeroes or (without
/// `hard_flush`) flush has no deadline of its own.
const JOURNAL_BOUNDS: &str = "the journal acknowledges or fails every append and flush; \
     one waiting for journal space fails after io_timeout_msec, and only the journal \
     device's own I/O is unbounded";

/// Everything [`Volume::open`] needs.
pub struct VolumeOptions {
    /// Configuration (sizes, windows, intervals).
    pub config: Config,
    /// The pool's object store.
    pub store: Arc<dyn ObjectStore>,
    /// Image name within the pool (no pool prefix).
    pub image: String,
    /// Journal file or block device.
    pub journal_path: PathBuf,
    /// Test hook: record the journal's writes and fdatasyncs for the
    /// power-cut model (`crate::powercut`; give the same log to the
    /// store, `DirStore::with_io_log`). `None` in production.
    pub io_log: Option<Arc<crate::powercut::IoLog>>,
}

/// What [`Volume::resize`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Resized {
    /// Size before, in bytes.
    pub old_bytes: u64,
    /// Size now, in bytes (equal to `old_bytes`: nothing changed).
    pub new_bytes: u64,
}

impl Resized {
    /// Whether the size changed.
    pub fn changed(&self) -> bool {
        self.old_bytes != self.new_bytes
    }
}

/// Counters for `info` and `bench`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct VolumeStats {
    /// Client writes (chunks) journaled.
    pub writes: u64,
    /// Client bytes written.
    pub write_bytes: u64,
    /// Journal records written (group commits).
    pub journal_records: u64,
    /// Journal fdatasyncs.
    pub journal_syncs: u64,
    /// Data objects put to the backend.
    pub data_objects: u64,
    /// Bytes of data objects put.
    pub data_object_bytes: u64,
    /// Checkpoint pieces put.
    pub checkpoint_pieces: u64,
    /// Bytes of checkpoint pieces put.
    pub checkpoint_bytes: u64,
    /// Backend reads (ranged gets) for client reads.
    pub backend_reads: u64,
    /// Extents in the durable map.
    pub map_extents: u64,
    /// Journal operations replayed at open.
    pub replayed: u64,
    /// Journal bytes in use.
    pub journal_used_bytes: u64,
    /// Reads (per 64 KiB chunk touched) served from the read cache.
    pub cache_hits: u64,
    /// Chunks fetched from the backend because the cache lacked them.
    pub cache_misses: u64,
    /// Chunks evicted from the read cache to make room.
    pub cache_evictions: u64,
    /// Chunks written into the read cache (misses and destaged objects).
    pub cache_inserts: u64,
    /// Corrupt cache blocks or index blocks found, dropped and refetched.
    pub cache_corrupt: u64,
    /// Object chunks (64 KiB) read from the backend and verified against
    /// their crcs (format version 2 objects).
    pub chunks_verified: u64,
    /// Object chunks (or object headers) read from the backend that failed
    /// their checksum: each was an I/O error, never served, cached or
    /// copied by GC.
    pub corrupt_chunks: u64,
    /// GC objects put (and applied).
    pub gc_objects: u64,
    /// Bytes of GC objects put. Backend bytes written are
    /// `data_object_bytes + gc_bytes + checkpoint_bytes`.
    pub gc_bytes: u64,
    /// Objects GC deleted.
    pub gc_deleted: u64,
    /// Bytes of the objects GC deleted.
    pub gc_freed_bytes: u64,
}

#[derive(Default)]
struct Counters {
    writes: AtomicU64,
    write_bytes: AtomicU64,
    data_objects: AtomicU64,
    data_object_bytes: AtomicU64,
    checkpoint_pieces: AtomicU64,
    checkpoint_bytes: AtomicU64,
    backend_reads: AtomicU64,
    chunks_verified: AtomicU64,
    corrupt_chunks: AtomicU64,
    replayed: AtomicU64,
    gc_objects: AtomicU64,
    gc_bytes: AtomicU64,
    gc_deleted: AtomicU64,
    gc_freed_bytes: AtomicU64,
}

pub(crate) struct State {
    next_jseq: JournalSeq,
    /// Last sequence handed to the journal (a FLUSH covers up to here).
    last_sent: JournalSeq,
    open: Batch,
    sealed: BTreeMap<u64, Arc<Batch>>,
    overlay: ExtentMap<PendLoc>,
    next_batch_id: u64,
    next_obj: ObjSeq,
    journal: Option<Journal>,
    closed: bool,
    scratch: Vec<crate::map::Extent<PendLoc>>,
}

pub(crate) struct Inner {
    image: String,
    uuid: ImageUuid,
    /// The disk size, as `check_range` sees it. Changed only by
    /// [`Volume::resize`] (a shrink stores it under the state lock together
    /// with the trim of the tail; see ordering 26 there).
    size_bytes: AtomicU64,
    /// Held for a whole [`Volume::resize`], so two never interleave.
    resize_lock: Mutex<()>,
    config: Config,
    store: Arc<dyn ObjectStore>,
    state: Mutex<State>,
    state_cv: Condvar,
    durable: RwLock<ObjectMap>,
    /// The superblock as the store has it (see `write_superblock_with`).
    sb: Mutex<Superblock>,
    /// A put of the superblock failed since the last good rewrite: the
    /// store may hold it or the copy in `sb`. Read and written only under
    /// the `sb` lock.
    sb_unsure: AtomicBool,
    journal_shared: OnceLock<Arc<JournalShared>>,
    applied_obj: AtomicU64,
    backend_jseq: AtomicU64,
    map_extents: AtomicU64,
    /// Cancelled when the volume stops (`Volume::stop`): every wait and put
    /// retry of the volume observes it.
    cancel: Cancel,
    backend_error: Mutex<Option<String>>,
    /// Set when the backend refused a write because another server broke
    /// our lock and fenced us: nothing more of ours can ever land, so
    /// writes, flushes and destage fail at once instead of retrying.
    /// Set once; read lock-free on every write.
    fenced: std::sync::OnceLock<String>,
    stats: Counters,
    destage_tx: Sender<DestageMsg>,
    flusher: (Mutex<bool>, Condvar),
    /// Data buffers of applied batches, reused so a new batch does not
    /// fault in and zero fresh pages on the write path.
    spare_buffers: Mutex<Vec<crate::io::AlignedBuf>>,
    /// The read cache (`None` with `no_rcache`, or if it could not open).
    cache: Option<Arc<crate::cache::Cache>>,
    /// To the cache writer thread (objects as they are put).
    cache_tx: Option<crossbeam_channel::Sender<rcache::CacheMsg>>,
    /// The chunk crcs of objects read or written (`verify.rs`).
    chunk_tables: verify::ChunkTables,
    /// The superblock carries `INCOMPAT_CHUNK_CRCS` (set before the first
    /// version-2 object is put; see `destage::put_worker`).
    chunk_crcs_marked: AtomicBool,
    /// Held while that bit is being set (taken before `sb`).
    chunk_crcs_lock: Mutex<()>,
    /// Recent checkpoints published by this session (at most 16, oldest
    /// first), with what GC's deletion rule needs of them.
    /// See `gchost::note_checkpoint` and `GcHost::floor`.
    session_ckpts: Mutex<Vec<(crate::format::superblock::CheckpointRef, destage::CkptFacts)>>,
    /// The snapshot/clone hook GC consults before cleaning and deleting:
    /// the objects this image's snapshots need.
    retention: Arc<crate::gc::SnapshotPins>,
    /// A read-only view (a snapshot): no journal, no destage, no GC.
    read_only: bool,
    /// Non-zero while `snap create` runs: retired checkpoints are not
    /// tombstoned (one may be about to become a snapshot).
    snap_hold: std::sync::atomic::AtomicU32,
    /// A clone's parent (a read-only snapshot view) and the size below
    /// which holes of this image read through to it.
    parent: Option<Parent>,
    /// Set by `flatten` once the link is cut: holes no longer read through.
    parent_cut: AtomicBool,
    /// GC state; held for a whole background step or forced run, so they
    /// never run at once.
    gc: Mutex<crate::gc::Gc>,
    /// Objects with no live data that checkpoints dropped from the map, for
    /// GC to delete (bounded: GC drains it every cycle; without GC it is
    /// not filled).
    gc_dead: Mutex<Vec<(ObjSeq, u64)>>,
    /// GC's cancel flag, a child of `cancel`: cancelled on its own by
    /// `stop_gc` (close stops GC first, then drains) and when fenced. Every
    /// GC wait, sleep and superblock put observes it.
    gc_cancel: Cancel,
    /// The sequence of the last GC object submitted (0: none), so a GC
    /// object whose wait gave up is waited for before the next one.
    gc_last_obj: AtomicU64,
}

impl Inner {
    fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Record that the backend fenced us (see `fenced`).
    fn mark_fenced(&self, e: &Error) {
        if self.fenced.set(format!("{e}")).is_ok() {
            tracing::error!(image = %self.image, "this server was fenced; every later write fails: {e}");
        }
        // Nothing GC could write would land: its waits end now.
        self.gc_cancel.cancel(
            ErrorKind::Fenced,
            format!("image {} was fenced by another server: {e}", self.image),
        );
    }

    fn io_timeout(&self) -> Duration {
        Duration::from_millis(self.config.io_timeout_msec)
    }

    /// Start a background step with `start` (which hands its `Done` to the
    /// destager or the journal) and wait for it under `cancel`, giving up
    /// once no object has been applied for `io_timeout_msec` (progress
    /// resets the deadline: a slow backend that drains is waited for).
    fn wait_backend(&self, what: &str, cancel: &Cancel, start: impl FnOnce(Done)) -> Result<()> {
        let progress = || self.applied_obj.load(Ordering::SeqCst);
        wait::for_completion(
            what,
            cancel,
            Deadline::NoProgress(self.io_timeout(), &progress),
            |d| {
                start(d);
                Ok(())
            },
        )
        .map_err(|e| self.with_backend_cause(e))
    }

    /// A timeout waiting on the backend, with the image and the last
    /// backend error; other errors unchanged.
    fn with_backend_cause(&self, e: Error) -> Error {
        if e.kind() != ErrorKind::Timeout {
            return e;
        }
        let cause = self.backend_error.lock().ok().and_then(|g| g.clone());
        Error::new(
            ErrorKind::Timeout,
            format!(
                "image {}: {} (last backend error: {})",
                self.image,
                e.context(),
                cause.unwrap_or_else(|| "none".into())
            ),
        )
    }

    /// The error every operation gets once fenced, if we are.
    fn fenced_error(&self) -> Option<Error> {
        self.fenced.get().map(|why| {
            Error::new(
                ErrorKind::Fenced,
                format!(
                    "image {} was taken over by another server, which fenced this one \
                     (its writes are refused for good; detach it): {why}",
                    self.image
                ),
            )
        })
    }

    fn set_backend_error(&self, e: &Error) {
        if let Ok(mut g) = self.backend_error.lock() {
            *g = Some(format!("{e:?}"));
        }
    }

    fn clear_backend_error(&self) {
        if let Ok(mut g) = self.backend_error.lock() {
            *g = None;
        }
    }

    /// Sealed batches allowed to wait for the backend. Their data is also
    /// in the journal, so the journal's size is the real bound: writes back
    /// up until the journal is full, then throttle there. The memory this
    /// takes mirrors the journal (at most about `wlog_bytes`).
    fn max_sealed(&self) -> usize {
        let journal_objs = (self.config.wlog_bytes / self.config.backend_obj_bytes) as usize;
        journal_objs.max(self.config.backend_write_window as usize + 2)
    }

    /// Wait until a batch can be added (bounded memory while the backend is
    /// slow), then return the locked state.
    fn wait_for_room(&self) -> Result<MutexGuard<'_, State>> {
        self.room(true)
            .map(|st| st.expect("a blocking wait returns the state"))
    }

    /// The locked state once a batch can be added. With `wait == false`,
    /// `Ok(None)` instead of waiting when there is no room.
    fn room(&self, wait: bool) -> Result<Option<MutexGuard<'_, State>>> {
        let max = self.max_sealed();
        let st = self.lock_state();
        let st = if st.closed || st.sealed.len() < max {
            st
        } else if !wait {
            return Ok(None);
        } else {
            // The destager frees room as objects are applied (and notifies
            // `state_cv`); a closing volume ends the wait as well.
            let r = wait::wait_until(
                st,
                &self.state_cv,
                &format!("image {}: room for new writes", self.image),
                &self.cancel,
                Deadline::After(self.io_timeout()),
                |st| st.closed || st.sealed.len() < max,
            );
            match r {
                Ok(st) => st,
                Err(e) if e.kind() == ErrorKind::Timeout => {
                    let waiting = self.lock_state().sealed.len();
                    let last = self.backend_error.lock().ok().and_then(|g| g.clone());
                    return Err(Error::new(
                        ErrorKind::Timeout,
                        format!(
                            "image {}: {waiting} objects waiting for the backend for {} ms (last backend error: {})",
                            self.image,
                            self.config.io_timeout_msec,
                            last.unwrap_or_else(|| "none, it is slow".into())
                        ),
                    ));
                }
                Err(e) => return Err(e),
            }
        };
        if st.closed {
            return Err(Error::new(
                ErrorKind::Closed,
                format!("image {} is closed", self.image),
            ));
        }
        Ok(Some(st))
    }

    /// Hand the operations just pushed (`first` up to the state's next
    /// sequence) to the journal; `done` is taken once they are appended.
    fn journal_append(
        &self,
        st: &mut State,
        first: JournalSeq,
        entries: &[RecordEntry],
        data: &[u8],
        fua: bool,
        done: &mut Option<Completion>,
    ) -> Result<Option<JournalSeq>> {
        if let Some(e) = self.fenced_error() {
            return Err(e);
        }
        let last = JournalSeq(st.next_jseq.0 - 1);
        let Some(j) = st.journal.as_ref() else {
            return Err(Error::new(ErrorKind::Closed, "journal is not open"));
        };
        j.append(Append {
            first_seq: first,
            entries,
            data,
            fua,
            done: done.take(),
        });
        st.last_sent = last;
        Ok(Some(last))
    }

    /// `hard_flush`: close the open batch and return a completion that,
    /// once the journal is done, waits until every object up to it is
    /// applied in the backend before it runs `done`. So a FLUSH, or a FUA
    /// request just pushed, completes only when the backend holds it and
    /// everything before it.
    fn then_in_backend(&self, st: &mut State, done: Completion) -> Completion {
        self.seal(st);
        let target = ObjSeq(st.next_obj.0 - 1);
        let tx = self.destage_tx.clone();
        Box::new(move |r: Result<()>| match r {
            Ok(()) => {
                if let Err(e) = tx.send(DestageMsg::WaitApplied(target, done)) {
                    if let DestageMsg::WaitApplied(_, d) = e.0 {
                        d(Err(Error::new(ErrorKind::Closed, "volume stopped")));
                    }
                }
            }
            Err(e) => done(Err(e)),
        })
    }

    /// A FUA request was just pushed: with `hard_flush` it completes only
    /// once the backend holds it, as a FLUSH does (see `then_in_backend`).
    fn hard_fua(&self, st: &mut State, fua: bool, done: &mut Option<Completion>) {
        if !(fua && self.config.hard_flush) {
            return;
        }
        if let Some(d) = done.take() {
            *done = Some(self.then_in_backend(st, d));
        }
    }

    /// Keep an applied batch's buffer for reuse (a few at most).
    fn recycle(&self, buf: crate::io::AlignedBuf) {
        if buf.capacity() < self.config.backend_obj_bytes as usize {
            return;
        }
        if let Ok(mut v) = self.spare_buffers.lock() {
            if v.len() < 4 {
                v.push(buf);
            }
        }
    }

    /// Close the open batch and hand it to the destager.
    fn seal(&self, st: &mut State) {
        if st.open.is_empty() {
            return;
        }
        let id = st.next_batch_id;
        st.next_batch_id += 1;
        let cap = self.config.backend_obj_bytes as usize;
        let fresh = match self.spare_buffers.lock().ok().and_then(|mut v| v.pop()) {
            Some(buf) => Batch::with_buffer(id, buf),
            None => Batch::new(id, cap),
        };
        let mut b = std::mem::replace(&mut st.open, fresh);
        b.obj = st.next_obj;
        st.next_obj = st.next_obj.next();
        let b = Arc::new(b);
        st.sealed.insert(b.id, b.clone());
        let _ = self.destage_tx.send(DestageMsg::Batch(b));
    }

    /// Add one operation to the open batch and the overlay.
    fn push_op(
        &self,
        st: &mut State,
        seq: JournalSeq,
        kind: OpKind,
        lba: Lba,
        sectors: u32,
        data: &[u8],
    ) {
        let obj_bytes = self.config.backend_obj_bytes;
        if !st.open.is_empty()
            && (st.open.data_bytes() + data.len() as u64 > obj_bytes
                || st.open.ops.len() >= MAX_BATCH_OPS)
        {
            self.seal(st);
        }
        let loc = st.open.push(seq, kind, lba, sectors, data);
        let mut scratch = std::mem::take(&mut st.scratch);
        scratch.clear();
        st.overlay.update(lba, sectors as u64, loc, &mut scratch);
        st.scratch = scratch;
        st.next_jseq = seq.next();
        if st.open.data_bytes() >= obj_bytes {
            self.seal(st);
        }
    }

    /// Push a trim or write-zeroes of `[offset, offset+len)` (bytes) as
    /// operations of at most `MAX_DISCARD_SECTORS`; returns their journal
    /// entries. No range check: the caller has done it.
    fn push_discard(
        &self,
        st: &mut State,
        offset: u64,
        len: u64,
        kind: OpKind,
    ) -> Vec<RecordEntry> {
        let mut entries = Vec::new();
        let mut lba = offset / SECTOR;
        let end = (offset + len) / SECTOR;
        while lba < end {
            let n = (end - lba).min(MAX_DISCARD_SECTORS);
            let seq = st.next_jseq;
            self.push_op(st, seq, kind, Lba(lba), n as u32, &[]);
            entries.push(RecordEntry {
                lba: Lba(lba),
                sectors: n as u32,
                kind,
            });
            lba += n;
        }
        entries
    }

    fn replay_entry(&self, e: ReplayEntry<'_>) -> Result<()> {
        let (kind, sectors, data) = self.clip_replayed(&e);
        let mut st = self.wait_for_room()?;
        self.push_op(&mut st, e.seq, kind, e.lba, sectors, data);
        st.last_sent = e.seq;
        self.stats.replayed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Fill `out` for the hole `[lba, lba+sectors)` of the durable map:
    /// from a clone's parent below its size, zeros elsewhere.
    pub(crate) fn read_hole(&self, lba: Lba, sectors: u64, out: &mut [u8]) -> Result<()> {
        match self.live_parent() {
            Some(p) if lba.0 < p.sectors => {
                let n = sectors.min(p.sectors - lba.0);
                let (through, rest) = out.split_at_mut((n * SECTOR) as usize);
                rest.fill(0);
                p.volume.read(lba.0 * SECTOR, through)
            }
            _ => {
                out.fill(0);
                Ok(())
            }
        }
    }

    /// Seal the open batch, wait until every object up to it is applied
    /// in the backend, then write a checkpoint and wait until the
    /// superblock names it. `what` names the step in a timeout error.
    fn destage_and_checkpoint(&self, what: &str) -> Result<()> {
        self.destage_and_checkpoint_with(what, false)
    }

    /// Like [`Inner::destage_and_checkpoint`]; with `if_changed`, no new
    /// checkpoint when the newest listed one already reflects every applied
    /// object (a close after nothing changed, such as `export` or a `gc`
    /// that already checkpointed: a new one would only retire, and leave a
    /// tombstone of, a checkpoint that is as good).
    fn destage_and_checkpoint_with(&self, what: &str, if_changed: bool) -> Result<()> {
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
    fn destage_all(&self, what: &str) -> Result<()> {
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
    fn destage_replayed(&self) -> Result<()> {
        self.destage_all("replayed journal")
    }

    /// The parent holes read through to (none once `flatten` cut it).
    fn live_parent(&self) -> Option<&Parent> {
        if self.parent_cut.load(Ordering::Relaxed) {
            return None;
        }
        self.parent.as_ref()
    }

    fn check_writable(&self) -> Result<()> {
        if self.read_only {
            return Err(Error::new(
                ErrorKind::ReadOnly,
                format!("{} is a read-only snapshot", self.image),
            ));
        }
        Ok(())
    }

    /// A replayed journal entry, clipped to the disk's end. The resize
    /// ordering (26) mean no replayed entry should reach past the end (a
    /// shrink's tail trim is applied in the backend before the smaller size
    /// is written, so the writes it covers are never replayed); this is the
    /// safety net that keeps the map empty beyond the end whatever the
    /// journal holds. A write wholly beyond the end becomes a trim of its
    /// range (same sequence, no data); one that crosses the end keeps only
    /// its part below it. Trims beyond the end are harmless and kept.
    fn clip_replayed<'a>(&self, e: &ReplayEntry<'a>) -> (OpKind, u32, &'a [u8]) {
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

    fn check_range(&self, what: &str, offset: u64, len: u64) -> Result<()> {
        if !offset.is_multiple_of(SECTOR) || !len.is_multiple_of(SECTOR) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("{what} at {offset} of {len} bytes is not aligned to 512 bytes"),
            ));
        }
        if len == 0 {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("{what} at {offset}: zero length"),
            ));
        }
        let size = self.size_bytes.load(Ordering::SeqCst);
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "{what} at {offset} of {len} bytes runs past the end of the {size}-byte disk"
                ),
            ));
        }
        Ok(())
    }

    /// Change and rewrite the superblock. The lock is held across the put
    /// so two rewrites can never land in the opposite order; on failure the
    /// in-memory copy stays as the store has it (see
    /// [`Inner::write_superblock_with`]). The put is retried for at most
    /// `io_timeout_msec`, and given up when the volume stops.
    fn write_superblock(&self, f: impl FnOnce(&mut Superblock)) -> Result<()> {
        self.write_superblock_until(&self.cancel, f)
    }

    /// [`Inner::write_superblock`] under another cancel flag (GC's, so a
    /// GC stopping does not sit out the put's retries holding the lock).
    fn write_superblock_until(
        &self,
        cancel: &Cancel,
        f: impl FnOnce(&mut Superblock),
    ) -> Result<()> {
        self.write_superblock_with_until(cancel, |sb| {
            f(sb);
            Ok(())
        })
    }

    /// Like [`Inner::write_superblock`], with a change that may refuse
    /// (checked against the superblock as the store has it).
    pub(crate) fn write_superblock_with(
        &self,
        f: impl FnOnce(&mut Superblock) -> Result<()>,
    ) -> Result<()> {
        self.write_superblock_with_until(&self.cancel, f)
    }

    /// The rewrite itself.
    ///
    /// A put that fails may still have landed, or may land later (a RADOS
    /// `write_full` that timed out after the OSD applied it). Ordering 6
    /// therefore also says: after a failed put the superblock is read back
    /// at once. If the store holds what was written, the change took effect
    /// and this returns `Ok`. Otherwise the copy in memory is *unsure*, and
    /// the next rewrite starts from the superblock re-read from the store,
    /// never from memory, so a change that landed (a snapshot entry a
    /// clone may already link to) is never silently dropped.
    fn write_superblock_with_until(
        &self,
        cancel: &Cancel,
        f: impl FnOnce(&mut Superblock) -> Result<()>,
    ) -> Result<()> {
        let mut guard = self.sb.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh_superblock_locked(&mut guard)?;
        let mut sb = guard.clone();
        f(&mut sb)?;
        sb.update_seq += 1;
        let Err(e) = self.put_bounded(&self.image, &sb.encode(), cancel) else {
            *guard = sb;
            return Ok(());
        };
        let e = e.prefixed(format!("write superblock of {}", self.image));
        // A fenced put never lands (and a read would fail the same way).
        if e.kind() == ErrorKind::Fenced {
            return Err(e);
        }
        match image::read_superblock(self.store.as_ref(), &self.image) {
            Ok(stored) if stored == sb => {
                warn!(image = %self.image, update_seq = sb.update_seq,
                    "the superblock put reported an error but landed (read back): taken as done: {e}");
                *guard = sb;
                Ok(())
            }
            Ok(_) => {
                // Not landed yet; it may still land.
                self.sb_unsure.store(true, Ordering::SeqCst);
                Err(e)
            }
            Err(re) => {
                warn!(image = %self.image,
                    "cannot read the superblock back after a failed put (re-read before the next rewrite): {re}");
                self.sb_unsure.store(true, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    /// If a superblock put failed since the last good rewrite, take the
    /// store's superblock as the copy in memory (see
    /// [`Inner::write_superblock_with`]). The live disk size stays this
    /// volume's: a failed resize keeps (or went back to) it, and it is the
    /// size written next.
    fn refresh_superblock_locked(&self, cur: &mut Superblock) -> Result<()> {
        if !self.sb_unsure.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut stored = image::read_superblock(self.store.as_ref(), &self.image).map_err(|e| {
            e.prefixed(format!(
                "re-read superblock of {} after a failed write (nothing rewritten)",
                self.image
            ))
        })?;
        if stored.uuid != cur.uuid {
            return Err(Error::new(
                ErrorKind::Mismatch,
                format!(
                    "superblock of {} now names image {} (this volume is {}): nothing rewritten",
                    self.image, stored.uuid, cur.uuid
                ),
            ));
        }
        if stored != *cur {
            info!(image = %self.image, update_seq = stored.update_seq,
                "superblock re-read after a failed write: the store's copy is newer");
        }
        stored.size_bytes = cur.size_bytes;
        *cur = stored;
        self.sb_unsure.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Re-read the superblock now if a put of it failed since the last good
    /// rewrite (before a check against the copy in memory).
    pub(crate) fn refresh_superblock(&self) -> Result<()> {
        let mut guard = self.sb.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh_superblock_locked(&mut guard)
    }
}

/// What [`Inner::build`] needs.
struct InnerInit {
    image: String,
    sb: Superblock,
    size_bytes: u64,
    map: ObjectMap,
    last_obj: ObjSeq,
    backend_jseq: JournalSeq,
    store: Arc<dyn ObjectStore>,
    cache: Option<Arc<crate::cache::Cache>>,
    cache_tx: Option<crossbeam_channel::Sender<rcache::CacheMsg>>,
    destage_tx: Sender<DestageMsg>,
    read_only: bool,
    parent: Option<Parent>,
    pins: Arc<crate::gc::SnapshotPins>,
    config: Config,
}

impl Inner {
    fn build(i: InnerInit) -> Inner {
        let cap = i.config.backend_obj_bytes as usize;
        let cancel = Cancel::new();
        let crcs_marked = i.sb.incompat & crate::format::superblock::INCOMPAT_CHUNK_CRCS != 0;
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
            spare_buffers: Mutex::new(Vec::new()),
            cache: i.cache,
            cache_tx: i.cache_tx,
            chunk_tables: verify::ChunkTables::default(),
            chunk_crcs_marked: AtomicBool::new(crcs_marked),
            chunk_crcs_lock: Mutex::new(()),
            session_ckpts: Mutex::new(Vec::new()),
            retention: i.pins,
            read_only: i.read_only,
            snap_hold: std::sync::atomic::AtomicU32::new(0),
            parent: i.parent,
            parent_cut: AtomicBool::new(false),
            gc: Mutex::new(crate::gc::Gc::new(i.config.gc_rate_bytes)),
            gc_dead: Mutex::new(Vec::new()),
            config: i.config,
        }
    }
}

/// An open image.
pub struct Volume {
    inner: Arc<Inner>,
    threads: Vec<JoinHandle<()>>,
    /// The background GC thread, stopped before everything else.
    gc_thread: Option<JoinHandle<()>>,
    lock: Option<Box<dyn StoreLock>>,
    stopped: bool,
}

/// Wait for a background step of `close` (or of resize, snapshot and
/// flatten). It may take long while the backend drains, but it gives up
/// once no object has been applied for `io_timeout_msec`, or at once when
/// the volume stops: the journal still holds everything, so the next open
/// replays it.
fn wait_done(inner: &Inner, what: &str, f: impl FnOnce(Done)) -> Result<()> {
    inner
        .wait_backend(what, &inner.cancel, f)
        .map_err(|e| match e.kind() {
            ErrorKind::Timeout => Error::new(
                ErrorKind::Timeout,
                format!(
                    "{}; the journal keeps every write for the next open",
                    e.context()
                ),
            ),
            _ => e,
        })
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
        let owner = format!("{} image {uuid}", image::lock_owner());
        let lock = store.lock(&image, &owner).map_err(|e| {
            if e.kind() == ErrorKind::Locked {
                e.prefixed(format!("image {image} is already open"))
            } else {
                e
            }
        })?;
        let mut sb = image::read_superblock(store.as_ref(), &image)?;
        let mut rec = recovery::recover(store.as_ref(), &image, &sb)?;
        if let Some(written) = rec.superblock.take() {
            sb = written;
        }
        sb.checkpoints = rec.checkpoints.clone();
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
            config,
        }));
        let mut vol = Volume {
            inner: inner.clone(),
            threads: Vec::new(),
            gc_thread: None,
            lock: Some(lock),
            stopped: false,
        };
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
        };
        let (journal, report) = Journal::open(
            &jopts,
            sb.uuid,
            sb.journal_gen,
            rec.backend_jseq,
            shared,
            &mut |e| inner.replay_entry(e),
            &mut || inner.destage_replayed(),
        )?;
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

    fn spawn_threads(
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
            self.threads.push(spawn(
                "lsvd-rcache",
                Box::new(move || rcache::cache_writer(cache, rx)),
            )?);
        }
        Ok(())
    }

    /// Disk size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.inner.size_bytes.load(Ordering::SeqCst)
    }

    /// Image name within its pool.
    pub fn name(&self) -> &str {
        &self.inner.image
    }

    /// Image identity.
    pub fn uuid(&self) -> ImageUuid {
        self.inner.uuid
    }

    /// Read `buf.len()` bytes at `offset`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read_mode(offset, buf, false)
    }

    /// Read `buf.len()` bytes at `offset` to copy them into new objects
    /// (`flatten` reads its parent so): like [`Volume::read`], but data of
    /// a version-1 object comes from a copy of it read whole and checked
    /// against its data crc, never from an unverifiable ranged read
    /// (`Inner::read_for_copy`), so rot is never laundered into an object
    /// with valid chunk crcs.
    pub fn read_for_copy(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read_mode(offset, buf, true)
    }

    fn read_mode(&self, offset: u64, buf: &mut [u8], copy: bool) -> Result<()> {
        let inner = &self.inner;
        inner.check_range("read", offset, buf.len() as u64)?;
        let lba = offset / SECTOR;
        let n = buf.len() as u64 / SECTOR;
        // (object, offset in sectors, buffer offset, bytes)
        let mut remote: Vec<(ObjSeq, u64, usize, usize)> = Vec::new();
        // (byte offset in the parent, buffer offset, bytes)
        let mut parent_reads: Vec<(u64, usize, usize)> = Vec::new();
        let mut holes = Vec::new();
        {
            let st = inner.lock_state();
            if st.closed && st.journal.is_none() {
                return Err(Error::new(
                    ErrorKind::Closed,
                    format!("image {} is closed", inner.image),
                ));
            }
            st.overlay.for_each_piece(Lba(lba), n, |plba, plen, t| {
                let b0 = ((plba.0 - lba) * SECTOR) as usize;
                let b1 = b0 + (plen * SECTOR) as usize;
                match t {
                    Some(PendLoc::Data { batch, offset }) => {
                        let b = if st.open.id == batch {
                            Some(&st.open)
                        } else {
                            st.sealed.get(&batch).map(|b| b.as_ref())
                        };
                        match b {
                            Some(b) => b.copy_out(offset, &mut buf[b0..b1]),
                            None => holes.push((plba, plen, b0)),
                        }
                    }
                    Some(PendLoc::Zero { .. }) => buf[b0..b1].fill(0),
                    None => holes.push((plba, plen, b0)),
                }
            });
        }
        // The durable map is consulted after the state lock is released
        // (so a reader never holds up writers while the destager applies an
        // object). That is safe: a hole in the overlay means every batch
        // that wrote there is already applied to the durable map (it is
        // updated before overlay entries are removed), so the map now holds
        // that version or a newer one written concurrently with this read.
        {
            if !holes.is_empty() {
                let map = inner.durable.read().unwrap_or_else(|e| e.into_inner());
                let mut pieces = Vec::new();
                for (hlba, hlen, hoff) in holes {
                    pieces.clear();
                    map.lookup(hlba, hlen, &mut pieces);
                    for &(plba, plen, loc) in &pieces {
                        let b0 = hoff + ((plba.0 - hlba.0) * SECTOR) as usize;
                        let bytes = (plen * SECTOR) as usize;
                        match loc {
                            None => match inner.live_parent() {
                                // A clone's hole reads through to its
                                // parent below the parent's size.
                                Some(p) if plba.0 < p.sectors => {
                                    let through = plen.min(p.sectors - plba.0);
                                    let tb = (through * SECTOR) as usize;
                                    parent_reads.push((plba.0 * SECTOR, b0, tb));
                                    buf[b0 + tb..b0 + bytes].fill(0);
                                }
                                _ => buf[b0..b0 + bytes].fill(0),
                            },
                            // A clone's zero marker.
                            Some(l) if l.is_zero() => buf[b0..b0 + bytes].fill(0),
                            Some(l) => {
                                if let Some(last) = remote.last_mut() {
                                    if last.0 == l.obj
                                        && last.1 + (last.3 as u64 / SECTOR) == l.offset as u64
                                        && last.2 + last.3 == b0
                                    {
                                        last.3 += bytes;
                                        continue;
                                    }
                                }
                                remote.push((l.obj, l.offset as u64, b0, bytes));
                            }
                        }
                    }
                }
            }
        }
        for (obj, off, b0, bytes) in remote {
            let out = &mut buf[b0..b0 + bytes];
            let r = if copy {
                inner.read_for_copy(obj, off * SECTOR, out)
            } else {
                inner.read_object_range(obj, off * SECTOR, out)
            };
            let r = match r {
                // Garbage collection may delete an object between our map
                // lookup and the read: look the range up again.
                Err(e) if e.kind() == ErrorKind::NotFound => inner.reread_moved(
                    Lba(lba + b0 as u64 / SECTOR),
                    bytes as u64 / SECTOR,
                    out,
                    obj,
                    e,
                ),
                r => r,
            };
            r.map_err(|e| e.prefixed(format!("read of {} at {offset}", inner.image)))?;
        }
        if let Some(p) = inner.live_parent() {
            for (poff, b0, bytes) in parent_reads {
                p.volume
                    .read_mode(poff, &mut buf[b0..b0 + bytes], copy)
                    .map_err(|e| {
                        e.prefixed(format!(
                            "read of {} at {offset} from its parent",
                            inner.image
                        ))
                    })?;
            }
        }
        Ok(())
    }

    /// Write and wait for the journal (not a FLUSH).
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.sync_submit("write", |d| {
            self.submit_write(offset, data, false, d).map(|_| ())
        })
    }

    /// Write with FUA: durable across a host crash when it returns (with
    /// `hard_flush`, also in the backend, so it survives losing the journal).
    pub fn write_fua(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.sync_submit("FUA write", |d| {
            self.submit_write(offset, data, true, d).map(|_| ())
        })
    }

    /// Submit `what` through `f` and sleep until the completion runs, the
    /// volume stops, or the completion is dropped without running. No
    /// deadline of its own ([`JOURNAL_BOUNDS`]). The waiter parks on a
    /// condition variable (`wait::Pending`): a spinning channel receive
    /// would burn the CPU the journal thread needs when many callers wait
    /// at once.
    fn sync_submit(&self, what: &str, f: impl FnOnce(Completion) -> Result<()>) -> Result<()> {
        wait::for_completion(
            &format!("{what} to image {}", self.inner.image),
            &self.inner.cancel,
            Deadline::Unbounded(JOURNAL_BOUNDS),
            f,
        )
    }

    /// Submit a write without waiting; `done` runs when it is acknowledged.
    /// Writes submitted from one thread are ordered in submission order.
    /// Returns the journal sequence of its last chunk. If this returns an
    /// error, `done` is not called.
    pub fn submit_write(
        &self,
        offset: u64,
        data: &[u8],
        fua: bool,
        done: Completion,
    ) -> Result<JournalSeq> {
        let mut done = Some(done);
        self.write_op(offset, data, fua, true, &mut done)
            .map(|s| s.expect("a blocking submit always submits"))
    }

    /// Like [`Volume::submit_write`], but never waits for journal space:
    /// `Ok(None)` when there is none, and `done` is left in place for a
    /// later (blocking) attempt. Used by the ublk queue threads, which must
    /// not stall while the backend drains.
    pub fn try_submit_write(
        &self,
        offset: u64,
        data: &[u8],
        fua: bool,
        done: &mut Option<Completion>,
    ) -> Result<Option<JournalSeq>> {
        self.write_op(offset, data, fua, false, done)
    }

    fn write_op(
        &self,
        offset: u64,
        data: &[u8],
        fua: bool,
        wait: bool,
        done: &mut Option<Completion>,
    ) -> Result<Option<JournalSeq>> {
        let inner = &self.inner;
        inner.check_writable()?;
        inner.check_range("write", offset, data.len() as u64)?;
        let chunk = inner.config.wlog_chunk_bytes as usize;
        let Some(mut st) = inner.room(wait)? else {
            return Ok(None);
        };
        // Again under the state lock: a shrink stores the smaller size and
        // journals the trim of the tail under this lock, so a write checked
        // against the old size cannot land after that trim.
        inner.check_range("write", offset, data.len() as u64)?;
        let first = st.next_jseq;
        let mut entries = Vec::with_capacity(data.len().div_ceil(chunk));
        for (i, piece) in data.chunks(chunk).enumerate() {
            let lba = Lba(offset / SECTOR + (i * chunk) as u64 / SECTOR);
            let sectors = (piece.len() as u64 / SECTOR) as u32;
            let seq = st.next_jseq;
            inner.push_op(&mut st, seq, OpKind::Write, lba, sectors, piece);
            entries.push(RecordEntry {
                lba,
                sectors,
                kind: OpKind::Write,
            });
        }
        inner
            .stats
            .writes
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
        inner
            .stats
            .write_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        inner.hard_fua(&mut st, fua, done);
        inner.journal_append(&mut st, first, &entries, data, fua, done)
    }

    /// Discard a range (reads as zeros afterwards); journaled like a write.
    pub fn trim(&self, offset: u64, len: u64) -> Result<()> {
        self.sync_submit("trim", |d| {
            self.submit_discard(offset, len, false, false, d)
                .map(|_| ())
        })
    }

    /// Trim with FUA: durable across a host crash when it returns.
    pub fn trim_fua(&self, offset: u64, len: u64) -> Result<()> {
        self.sync_submit("FUA trim", |d| {
            self.submit_discard(offset, len, false, true, d).map(|_| ())
        })
    }

    /// Zero a range; journaled like a write.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.sync_submit("write-zeroes", |d| {
            self.submit_discard(offset, len, true, false, d).map(|_| ())
        })
    }

    /// Write-zeroes with FUA: durable across a host crash when it returns.
    pub fn write_zeroes_fua(&self, offset: u64, len: u64) -> Result<()> {
        self.sync_submit("FUA write-zeroes", |d| {
            self.submit_discard(offset, len, true, true, d).map(|_| ())
        })
    }

    /// Submit a trim (`zero = false`) or write-zeroes (`zero = true`).
    /// With `fua`, `done` runs only once it is durable across a host crash
    /// (and, with `hard_flush`, in the backend), as for a FUA write.
    pub fn submit_discard(
        &self,
        offset: u64,
        len: u64,
        zero: bool,
        fua: bool,
        done: Completion,
    ) -> Result<JournalSeq> {
        let mut done = Some(done);
        self.discard_op(offset, len, zero, fua, true, &mut done)
            .map(|s| s.expect("a blocking submit always submits"))
    }

    /// Like [`Volume::submit_discard`], but never waits for journal space
    /// (see [`Volume::try_submit_write`]).
    pub fn try_submit_discard(
        &self,
        offset: u64,
        len: u64,
        zero: bool,
        fua: bool,
        done: &mut Option<Completion>,
    ) -> Result<Option<JournalSeq>> {
        self.discard_op(offset, len, zero, fua, false, done)
    }

    fn discard_op(
        &self,
        offset: u64,
        len: u64,
        zero: bool,
        fua: bool,
        wait: bool,
        done: &mut Option<Completion>,
    ) -> Result<Option<JournalSeq>> {
        let inner = &self.inner;
        inner.check_writable()?;
        let what = if zero { "write-zeroes" } else { "trim" };
        inner.check_range(what, offset, len)?;
        let kind = if zero { OpKind::Zero } else { OpKind::Trim };
        let Some(mut st) = inner.room(wait)? else {
            return Ok(None);
        };
        // Again under the state lock, as in `write_op`.
        inner.check_range(what, offset, len)?;
        let first = st.next_jseq;
        let entries = inner.push_discard(&mut st, offset, len, kind);
        inner.hard_fua(&mut st, fua, done);
        inner.journal_append(&mut st, first, &entries, &[], fua, done)
    }

    /// FLUSH: every write submitted before it is durable when it returns.
    /// With `hard_flush` it also waits for the backend, and gives up once
    /// no object has been applied for `io_timeout_msec`.
    pub fn flush(&self) -> Result<()> {
        let inner = &self.inner;
        if inner.config.hard_flush && !inner.read_only {
            let progress = || inner.applied_obj.load(Ordering::SeqCst);
            return wait::for_completion(
                &format!("flush of image {} to the backend", inner.image),
                &inner.cancel,
                Deadline::NoProgress(inner.io_timeout(), &progress),
                |d| self.submit_flush(d),
            )
            .map_err(|e| inner.with_backend_cause(e));
        }
        self.sync_submit("flush", |d| self.submit_flush(d))
    }

    /// Submit a FLUSH covering every write submitted before it. With
    /// `hard_flush`, it also waits until the backend holds everything.
    pub fn submit_flush(&self, done: Completion) -> Result<()> {
        let inner = &self.inner;
        if inner.read_only {
            // Nothing to make durable: a snapshot never changes.
            done(Ok(()));
            return Ok(());
        }
        let mut st = inner.lock_state();
        if st.closed {
            return Err(Error::new(
                ErrorKind::Closed,
                format!("image {} is closed", inner.image),
            ));
        }
        if let Some(e) = inner.fenced_error() {
            return Err(e);
        }
        let upto = st.last_sent;
        let done: Completion = if inner.config.hard_flush {
            inner.then_in_backend(&mut st, done)
        } else {
            done
        };
        match st.journal.as_ref() {
            Some(j) => {
                j.flush(upto, done);
                Ok(())
            }
            None => Err(Error::new(ErrorKind::Closed, "journal is not open")),
        }
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
    fn trim_durably(&self, from: u64, to: u64, new_size: Option<u64>) -> Result<()> {
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

    /// Counters.
    pub fn stats(&self) -> VolumeStats {
        let s = &self.inner.stats;
        let js = self.inner.journal_shared.get();
        let cache = self
            .inner
            .cache
            .as_ref()
            .map(|c| c.counters())
            .unwrap_or_default();
        VolumeStats {
            writes: s.writes.load(Ordering::Relaxed),
            write_bytes: s.write_bytes.load(Ordering::Relaxed),
            journal_records: js.map_or(0, |j| j.records()),
            journal_syncs: js.map_or(0, |j| j.syncs()),
            data_objects: s.data_objects.load(Ordering::Relaxed),
            data_object_bytes: s.data_object_bytes.load(Ordering::Relaxed),
            checkpoint_pieces: s.checkpoint_pieces.load(Ordering::Relaxed),
            checkpoint_bytes: s.checkpoint_bytes.load(Ordering::Relaxed),
            backend_reads: s.backend_reads.load(Ordering::Relaxed),
            map_extents: self.inner.map_extents.load(Ordering::Relaxed),
            replayed: s.replayed.load(Ordering::Relaxed),
            journal_used_bytes: js.map_or(0, |j| j.used_bytes()),
            cache_hits: cache.hits,
            cache_misses: cache.misses,
            cache_evictions: cache.evictions,
            cache_inserts: cache.inserts,
            cache_corrupt: cache.corrupt,
            chunks_verified: s.chunks_verified.load(Ordering::Relaxed),
            corrupt_chunks: s.corrupt_chunks.load(Ordering::Relaxed),
            gc_objects: s.gc_objects.load(Ordering::Relaxed),
            gc_bytes: s.gc_bytes.load(Ordering::Relaxed),
            gc_deleted: s.gc_deleted.load(Ordering::Relaxed),
            gc_freed_bytes: s.gc_freed_bytes.load(Ordering::Relaxed),
        }
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
    fn stop_gc(&mut self) {
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

    fn close_inner(&mut self) -> Result<()> {
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
    fn stop(&mut self, clean: bool) {
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

/// Closes batches older than `flush_msec`, or at once when the journal asks
/// for space.
fn flusher(inner: Arc<Inner>) {
    let age = Duration::from_millis(inner.config.flush_msec);
    let tick = (age / 4).clamp(Duration::from_millis(1), Duration::from_millis(100));
    loop {
        let wanted = {
            let (m, cv) = &inner.flusher;
            let g = m.lock().unwrap_or_else(|e| e.into_inner());
            let (mut g, _) = cv.wait_timeout(g, tick).unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut *g)
        };
        if inner.cancel.is_cancelled() {
            return;
        }
        let mut st = inner.lock_state();
        if !st.open.is_empty() && (wanted || st.open.created.elapsed() >= age) {
            inner.seal(&mut st);
        }
    }
}
