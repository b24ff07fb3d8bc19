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
//! Files: `mod.rs` holds the types, this doc and the helpers every path
//! uses; `write.rs` the write path (writes, trims, FLUSH, batches, the
//! flusher thread); `read.rs` the read path; `lifecycle.rs` open (recovery
//! hand-off, replay, threads), resize, forced GC, close, stop and drop;
//! `superblock.rs` the superblock rewrite. The read cache glue is in
//! `rcache.rs`, checksums in `verify.rs`, the destager in `destage.rs`.
//! Images that are not open (create, remove, list, clone) are
//! [`crate::catalog`]'s, re-exported here as `image`, `clone_image` and
//! `find_clones`.
//!
//! # Lock hierarchy
//!
//! Levels from the top: a lock may be taken while holding locks of higher
//! levels, never the other way round. Locks on one level are never held
//! together. `Volume` itself has no lock (its threads and store lock are
//! touched only through `&mut self` in close, stop and drop); every lock
//! is in `Inner` or reached from it.
//!
//! 1. Operation locks, held *across I/O and waits* (puts, gets, deletes,
//!    waits for the journal, destage and checkpoints). Deliberate: they
//!    serialise these operations. Neither is taken by the destager, the
//!    put workers, the journal writer or the flusher, so waiting for those
//!    threads under it cannot deadlock. No thread holds both.
//!    - `resize_lock` (`Mutex<()>`): one [`Volume::resize`] at a time
//!      (`lifecycle.rs`), across the journaled tail trim (which waits for
//!      room on `state_cv`), the wait for its destage and the superblock
//!      put. Under it: `state`, `sb`.
//!    - `gc` (`Mutex<Gc>`): GC's state, held for a whole background step
//!      (`gchost::gc_thread`), a forced run ([`Volume::gc_now`]),
//!      `snapshot_create` and `snapshot_remove` (`snapshot.rs`). Under it:
//!      `sb` (GC's feature bit, snapshot lists), `state` (GC object
//!      sequence, `client_backlog`, the flush of a snapshot), `durable`
//!      (read), `session_ckpts`, `gc_dead`, `retention`, and GC's object
//!      reads (chunk tables, read cache).
//! 2. `chunk_crcs_lock` (`Mutex<()>`): a put worker sets
//!    `INCOMPAT_CHUNK_CRCS` once (`destage::ensure_chunk_crc_feature`),
//!    holding it across that superblock put. Taken with no other volume
//!    lock held; under it: `sb`.
//! 3. The core locks, never two of them at once:
//!    - `sb` (`Mutex<Superblock>`, with `sb_unsure`): the superblock as
//!      the store has it. Held *across the superblock put* and, after a
//!      failed one, the read-back and re-read gets (`superblock.rs`).
//!      Deliberate: two rewrites never land in the opposite order; the put
//!      is bounded by `io_timeout_msec` and the caller's cancel flag.
//!      Under it: only `put_bounded`'s fencing mark (`fenced`, GC's cancel
//!      flag).
//!    - `state` (`Mutex<State>`) with `state_cv`: the open and sealed
//!      batches, the overlay, the sequence counters, the journal handle,
//!      `closed`. Never held across I/O or a wait: `room` (`write.rs`)
//!      waits on `state_cv`, which releases it; the destager notifies
//!      `state_cv` after a sealed batch leaves (`destage::apply_data`,
//!      `state` already released), `stop` after closing. Under it:
//!      `spare_buffers` (`seal`), the destager's channel (`seal`, and a
//!      GC object's submission: sent under `state` so the destager sees
//!      sequences in allocation order), the journal's staging lock and
//!      channel (`journal_append`, `submit_flush`, `close_inner`).
//!    - `durable` (`RwLock<ObjectMap>`): the applied map. Written only by
//!      the destager, in slices (`apply_data`, `apply_gc`), and in
//!      `start_checkpoint`, which takes `gc_dead` under it. Read by
//!      readers after they dropped `state` (`read.rs`,
//!      `rcache::reread_moved`), by GC, `flatten` and the checkpoint.
//!      Never held across I/O, and never read-locked twice by one thread
//!      (std's `RwLock` may queue a second read behind a waiting writer).
//! 4. Leaves, which take no other lock of the volume:
//!    - `spare_buffers` (also the cache writer's, `rcache::cache_writer`),
//!      `gc_dead`, `session_ckpts` (the destager's
//!      `note_checkpoint`; `floor` and snapshot create under `gc`),
//!      `backend_error` (put workers; `room` after releasing `state`),
//!      the snapshot pins `retention` (`gc::SnapshotPins`, an `RwLock`),
//!      a GC object's `done` (`destage::GcBatch`), and the set-once
//!      `fenced` and `journal_shared`.
//!    - `flusher` (`Mutex<bool>` with its `Condvar`): taken by the flusher
//!      thread (released before it takes `state`), by `stop`, and under
//!      the journal's `space_wanted` lock by a journal driver (the journal
//!      thread, or a lane) placing records under the journal
//!      core's lock.
//!    - The chunk tables (`verify.rs`): `map`, `loading`, `legacy`,
//!      `last_log` are leaves; a per-object mutex from `loading` is held
//!      across that object's header get, taking only those leaves.
//!    - The journal's own: staging, `JournalShared::tx`, `space_wanted`
//!      (under which `flusher`). The journal core's lock
//!      (`journal::writer::CoreCell`) is taken only by its drivers, with
//!      no volume lock held (an append or flush under `state` touches only
//!      staging, the channel and a thread-local of the lane); under it:
//!      staging, `space_wanted`, the power-cut log. Its completions run
//!      after it is released.
//!    - The read cache's own (its order: `flush_lock`, held across the
//!      cache file's writes and fdatasyncs, then `slots`, then one key
//!      shard; `inflight`, `deferred` and a fetch's `result` with its
//!      `Condvar` alone), taken under `gc` (GC reads) or under no volume
//!      lock.
//!    - The locks inside [`crate::wait`]: cancel flags (a parent's, then
//!      each child's, one at a time) and completion slots.
//!
//! Completions (`Done`, [`Completion`]) may run under `state` (an append to
//! a failed journal, a flush of a stopped one): they must take no volume
//! lock. A clone's parent is another volume, whose locks are taken with
//! none of this one's held (`read.rs` reads through to it after dropping
//! `durable`).

mod batch;
mod destage;
mod gchost;
mod lifecycle;
mod rcache;
mod read;
mod recovery;
#[doc(hidden)]
pub use recovery::fuzz_recover;
pub mod scrub;
pub mod snapshot;
mod status;
mod superblock;
pub mod usage;
mod verify;
mod write;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;

use crate::backend::{ObjectStore, StoreLock};
use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::format::superblock::Superblock;
use crate::journal::{Done, Journal, JournalShared};
use crate::map::{ExtentMap, ObjectMap};
use crate::units::{ImageUuid, JournalSeq, ObjSeq, SECTOR};
use crate::wait::{self, Cancel, Deadline};

pub use crate::catalog::image;
use batch::{Batch, PendLoc};
use destage::DestageMsg;
pub use image::ImageSpec;
pub use rcache::rcache_path;
pub use read::{ReadPlan, RemotePiece};
pub use snapshot::{clone_image, find_clones, FlattenReport, Parent};
pub use status::Extent;

/// How a timeout waiting on the backend names its cause
/// (`Inner::with_backend_cause`).
const BACKEND_CAUSE: &str = "last backend error:";

/// Called once when an asynchronously submitted operation completes.
pub type Completion = Box<dyn FnOnce(Result<()>) + Send + 'static>;

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
    /// Journal records written with `RWF_DSYNC` (FUA writes that needed
    /// no fdatasync).
    pub journal_dsync_writes: u64,
    /// Data objects put to the backend.
    pub data_objects: u64,
    /// Bytes of data objects put.
    pub data_object_bytes: u64,
    /// Checkpoint pieces put.
    pub checkpoint_pieces: u64,
    /// Bytes of checkpoint pieces put.
    pub checkpoint_bytes: u64,
    /// Checkpoints written whole.
    pub checkpoints_full: u64,
    /// Checkpoints written as a delta on the previous one.
    pub checkpoints_delta: u64,
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

/// What is not yet in the backend, for live metrics ([`Volume::backlog`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Bytes of the journal's record area.
    pub journal_capacity_bytes: u64,
    /// Batches not yet applied (sealed ones, and the open one if it holds
    /// anything).
    pub pending_batches: u64,
    /// Client data bytes in those batches.
    pub pending_bytes: u64,
}

#[derive(Default)]
struct Counters {
    writes: AtomicU64,
    write_bytes: AtomicU64,
    data_objects: AtomicU64,
    data_object_bytes: AtomicU64,
    checkpoint_pieces: AtomicU64,
    checkpoint_bytes: AtomicU64,
    checkpoints_full: AtomicU64,
    checkpoints_delta: AtomicU64,
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
    /// Data buffers of applied batches, reused by new ones (shared with
    /// the cache writer).
    spare_buffers: Arc<batch::SpareBuffers>,
    /// Whether the open batch's data ends on a 4 KiB boundary, as of the
    /// last push (set under `state`, read without it): a write's block
    /// crcs are taken before the lock only when they can be kept
    /// (`write_op`). A stale value costs a wasted or a skipped pass, never
    /// a wrong crc.
    open_aligned: std::sync::atomic::AtomicBool,
    /// Set by [`Volume::set_disposable`]: the caller removes the image if
    /// this session fails (`import`), so errors do not promise that the
    /// journal keeps its writes.
    disposable: AtomicBool,
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
    /// tombstoned (one may be about to become a snapshot), and new ones
    /// are full (a snapshot names a full checkpoint).
    snap_hold: std::sync::atomic::AtomicU32,
    /// The newest listed checkpoint, if this session knows what it is built
    /// on: the next checkpoint may be a delta on it. The durable map tracks
    /// its changes since. Only the destager (and open, before it starts)
    /// touches it. `None`: the next checkpoint is full.
    ckpt_base: Mutex<Option<destage::CkptBase>>,
    /// The superblock carries `INCOMPAT_DELTA_CKPT`.
    delta_marked: AtomicBool,
    /// The durable high-water mark (`IMAGE.hwm`): every object put so far
    /// and every object in the store is below it. Raised by
    /// `Inner::ensure_hwm` before a put at or above it (ordering 31). 0 in
    /// a read-only view, which puts nothing.
    hwm: AtomicU64,
    /// Serializes raising the mark.
    hwm_lock: Mutex<()>,
    /// A clone's parent (a read-only snapshot view) and the size below
    /// which holes of this image read through to it.
    parent: Option<Parent>,
    /// Set by `flatten` once the link is cut: holes no longer read through.
    parent_cut: AtomicBool,
    /// GC state; held for a whole background step or forced run, so they
    /// never run at once.
    gc: Mutex<crate::gc::Gc>,
    /// The map's table names every object at or below the applied one that
    /// is not deleted, except listed checkpoints' pieces (ordering 32): the
    /// checkpoint recovery loaded says so (`FLAG_ROWS_COMPLETE`), or there
    /// was none (the roll-forward from object 1 gave every object a row),
    /// or GC's listing added the missing rows. Checkpoints copied after it
    /// is set say so in their piece 0.
    rows_complete: AtomicBool,
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
    /// backend error; other errors, and a timeout that already has them
    /// (the destager's, passed on by a wait), unchanged.
    fn with_backend_cause(&self, e: Error) -> Error {
        if e.kind() != ErrorKind::Timeout || e.context().contains(BACKEND_CAUSE) {
            return e;
        }
        let cause = self.backend_error.lock().ok().and_then(|g| g.clone());
        Error::new(
            ErrorKind::Timeout,
            format!(
                "image {}: {} ({BACKEND_CAUSE} {})",
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
    /// The durable high-water mark (0 in a read-only view).
    hwm: u64,
    /// The recovered table's rows are complete (ordering 32).
    rows_complete: bool,
    config: Config,
}

/// An open image.
pub struct Volume {
    inner: Arc<Inner>,
    threads: Vec<JoinHandle<()>>,
    /// The background GC thread, stopped before everything else.
    gc_thread: Option<JoinHandle<()>>,
    lock: Option<Box<dyn StoreLock>>,
    /// A snapshot view opened without its reader lock (no write access to
    /// the store, see [`Volume::open_snapshot`]): `snap rm` cannot see it,
    /// so a read of a deleted object says the snapshot may be gone.
    unlocked_reader: bool,
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
            ErrorKind::Timeout if !inner.disposable.load(Ordering::Relaxed) => Error::new(
                ErrorKind::Timeout,
                format!(
                    "{}; the journal keeps every write for the next open",
                    e.context()
                ),
            ),
            _ => e,
        })
}

impl Volume {
    /// Disk size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.inner.size_bytes.load(Ordering::SeqCst)
    }

    /// Say that the caller removes the image if this session fails (as
    /// `import` does): a failed close then does not say that the journal
    /// keeps every write for the next open, which there will not be.
    pub fn set_disposable(&self) {
        self.inner.disposable.store(true, Ordering::Relaxed);
    }

    /// Image name within its pool.
    pub fn name(&self) -> &str {
        &self.inner.image
    }

    /// Image identity.
    pub fn uuid(&self) -> ImageUuid {
        self.inner.uuid
    }

    /// What is not yet in the backend. Takes the state lock briefly (for
    /// a scrape, not for the I/O path).
    pub fn backlog(&self) -> Backlog {
        let capacity = self
            .inner
            .journal_shared
            .get()
            .map_or(0, |j| j.capacity_bytes());
        let st = self.inner.lock_state();
        let open = st.open.data_bytes();
        let sealed: u64 = st.sealed.values().map(|b| b.data_bytes()).sum();
        Backlog {
            journal_capacity_bytes: capacity,
            pending_batches: st.sealed.len() as u64 + u64::from(!st.open.ops.is_empty()),
            pending_bytes: open + sealed,
        }
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
            journal_dsync_writes: js.map_or(0, |j| j.dsync_records()),
            data_objects: s.data_objects.load(Ordering::Relaxed),
            data_object_bytes: s.data_object_bytes.load(Ordering::Relaxed),
            checkpoint_pieces: s.checkpoint_pieces.load(Ordering::Relaxed),
            checkpoint_bytes: s.checkpoint_bytes.load(Ordering::Relaxed),
            checkpoints_full: s.checkpoints_full.load(Ordering::Relaxed),
            checkpoints_delta: s.checkpoints_delta.load(Ordering::Relaxed),
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
}

/// A small volume for unit tests: 1 MiB read cache (or none), 4 MiB
/// journal `img.wlog`, 256 KiB objects, no age-based sealing, under `dir`.
#[cfg(test)]
pub(crate) fn test_open(
    dir: &std::path::Path,
    store: Arc<dyn ObjectStore>,
    no_rcache: bool,
) -> Volume {
    Volume::open(VolumeOptions {
        config: Config {
            rcache_dir: dir.join("rcache"),
            rcache_bytes: 1 << 20,
            no_rcache,
            flush_msec: 60_000,
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
