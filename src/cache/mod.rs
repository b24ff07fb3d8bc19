//! Persistent read cache: one local O_DIRECT file per image holding 64 KiB
//! chunks of backend objects (layout in [`crate::format::rcache`]).
//!
//! Chunks are keyed by (object sequence, object-relative offset / 64 KiB)
//! of the owner image. Objects are immutable once put, so a cached chunk
//! can never be stale, except that recovery may delete objects above a gap
//! and reuse their sequences. Two rules cover that:
//! - [`Cache::open`] drops every entry above the last object the recovery
//!   of this open kept (the file is in use while that recovery runs);
//! - the superblock records the image's journal generation of the attach
//!   that last used the file ([`Cache::set_journal_gen`]). An attach with
//!   another journal (another host, a wiped journal) changes the image's
//!   generation, and its recovery may have reused sequences this file
//!   holds: when the image's generation at open differs from the file's,
//!   [`Cache::open`] drops every entry.
//!
//! Not detected: on one host and one journal (so one generation), an open
//! with another `rcache_dir` whose recovery deletes objects above a gap,
//! then an open with this file again. Only the drop above the last object
//! applies then, which misses sequences already reused by the time the
//! file is used again.
//!
//! Crash ordering (see also `docs/format.md`, "Read cache"):
//! 1. **Index after data.** A chunk's data is written (O_DIRECT) and the
//!    file fdatasynced before any index block naming it is written; the
//!    index blocks are then fdatasynced. A crash loses recent entries but a
//!    persisted entry never names unwritten data.
//! 2. **Invalidate before reuse.** An evicted slot's entry is cleared, and
//!    its index block written and fdatasynced, before new data lands in the
//!    slot, so a persisted entry never covers another key's bytes. A flush
//!    that fails puts everything it took back (the slots stay unusable, the
//!    blocks stay dirty), so a slot whose on-disk entry may still name its
//!    old key is never handed out.
//!
//! The per-4 KiB-block crc (which mixes in the cache UUID, image UUID,
//! object, chunk and block number) is checked on every hit, for the blocks
//! read only: a block that fails is counted as corrupt, its entry dropped
//! and the chunk refetched.
//!
//! Hits take no global lock: the key index is sharded 64 ways behind
//! reader-writer locks, and each slot's entry is published seqlock-style
//! (per-slot atomics and an epoch that is odd while the entry changes). A
//! reader validates the epoch before and after its file read and checks the
//! crcs outside any lock; only a crc failure takes the slot lock, to clear
//! the slot. Hit buffers are per thread (or the caller's buffer itself when
//! it is aligned), so a hit allocates nothing.
//!
//! Eviction is CLOCK (a reference bit per slot), bounded per scan, and runs
//! off the read path: the `lsvd-rcache` thread ([`Cache::maintain`]) keeps a
//! reserve of free slots whose empty entries are already durable, refilled
//! when it falls below a low-water mark. A miss that finds no free slot is
//! served without being cached; it never waits for an fdatasync. (A cache
//! with no maintainer attached, as in library tests, evicts inline.)
//!
//! Concurrent misses on one chunk wait for a single backend fetch, also
//! when they are part of multi-chunk reads; a leader that fails or panics
//! hands its waiters an error and clears the flight.
//!
//! A failing cache file never fails a read: an I/O error on it is counted,
//! logged (rate-limited) and served from the backend; after
//! [`IO_ERRORS_OFF`] of them the cache is turned off for this open.
//!
//! The counters in the superblock are written only at format and by
//! [`Cache::flush`] (clean close), never on the read path. Block 0 is also
//! rewritten once per open by [`Cache::set_journal_gen`], with the counters
//! as they were persisted.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use tracing::{info, warn};

use crate::error::{Error, ErrorKind, Result};
use crate::format::rcache::{
    block_crc, block_crc_from_plain, decode_index_block, encode_index_block, CacheCounters,
    CacheSuper, IndexEntry, Layout, BLOCKS_PER_CHUNK, BLOCK_BYTES, CHUNK_BYTES, ENTRIES_PER_BLOCK,
};
use crate::io::{self, AlignedBuf};
use crate::units::{ImageUuid, ObjSeq};
use crate::wait::{self, Cancel, Deadline};

#[cfg(test)]
mod tests;

/// Key-index shards (each on its own cache lines).
const SHARDS: usize = 64;
/// Slots a CLOCK scan looks at, at most, per call.
const SCAN_CAP: usize = 8192;
/// Largest reserve of free (durably invalidated) slots.
const RESERVE_MAX: usize = 1024;
/// Index blocks read or written per I/O at open and format.
const INDEX_IO_BLOCKS: usize = 256;
/// Cache-file I/O errors after which the cache is off for this open.
pub const IO_ERRORS_OFF: u64 = 8;
/// Seconds between two warnings about cache-file I/O errors.
const WARN_EVERY_SECS: u64 = 10;

/// Fault injection ([`Cache::inject_faults`]): fail reads, writes, syncs.
pub const FAULT_READ: u8 = 1;
/// See [`FAULT_READ`].
pub const FAULT_WRITE: u8 = 2;
/// See [`FAULT_READ`].
pub const FAULT_SYNC: u8 = 4;

/// (object, chunk number).
type Key = (ObjSeq, u32);

/// Reads `len` bytes of the object at a byte offset (fewer at its end).
pub type Fetch<'a> = &'a dyn Fn(u64, usize) -> Result<Vec<u8>>;

/// A slot's entry, readable without a lock. Written only under the
/// `slots` mutex, seqlock-style: `epoch` is odd while the fields change and
/// moves on with every change, so a reader that sees the same even epoch
/// before and after its read knows nothing rewrote the slot meanwhile.
#[derive(Default)]
struct SlotMeta {
    epoch: AtomicU64,
    obj: AtomicU64,
    /// chunk << 32 | valid bytes (0: empty).
    chunk_len: AtomicU64,
    crcs: [AtomicU32; BLOCKS_PER_CHUNK],
    referenced: AtomicBool,
}

/// Slot bookkeeping of writers (under the `slots` mutex).
#[derive(Default)]
struct Slots {
    /// The slot's data is known durable (fdatasynced), so its entry may be
    /// written to the index.
    synced: Vec<bool>,
    hand: usize,
    /// Empty slots whose empty entry is durable in the index.
    free: Vec<u32>,
    /// Emptied slots whose index block is not yet rewritten: not reusable.
    pending_free: Vec<u32>,
    /// Index blocks that differ from the file.
    dirty: BTreeSet<u32>,
    /// Slots filled since the last flush, with their epoch.
    unsynced: Vec<(u32, u64)>,
}

/// Fetched chunks waiting for the maintainer to cache them (4 MiB).
const MAX_DEFERRED: usize = 64;

type FlightResult = Result<Arc<Vec<u8>>>;

#[derive(Default)]
struct Flight {
    result: Mutex<Option<FlightResult>>,
    cv: Condvar,
}

impl Flight {
    /// The leader's result. No deadline of its own (see the reason below);
    /// `cancel` ends the wait when the cache's volume stops.
    fn wait(&self, key: Key, cancel: &Cancel) -> FlightResult {
        let g = wait::wait_until(
            lock(&self.result),
            &self.cv,
            &format!(
                "read of object {} chunk {} (fetched by another reader)",
                key.0 .0, key.1
            ),
            cancel,
            Deadline::Unbounded(
                "as long as the leading reader's backend get, which the store bounds \
                 (rados_op_timeout_secs; a local read for the directory store); \
                 the leader publishes a result on every path, also when it fails or panics",
            ),
            |r| r.is_some(),
        )?;
        match g.as_ref() {
            Some(r) => dup(r),
            None => Err(Error::new(
                ErrorKind::Io,
                "read cache flight ended without a result",
            )),
        }
    }
}

fn dup(r: &FlightResult) -> FlightResult {
    match r {
        Ok(d) => Ok(d.clone()),
        Err(e) => Err(e.duplicate()),
    }
}

/// The leader of a single-flight fetch. Whatever happens to the leader
/// (an error, a panic in the fetch or the insert), dropping this publishes
/// a result to the waiters and removes the flight, so no reader of the
/// chunk waits forever.
struct Leader<'a> {
    cache: &'a Cache,
    key: Key,
    flight: Arc<Flight>,
    published: bool,
}

impl Leader<'_> {
    fn publish(&mut self, r: &FlightResult) {
        *lock(&self.flight.result) = Some(dup(r));
        self.published = true;
        self.flight.cv.notify_all();
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        if !self.published {
            self.publish(&Err(Error::new(
                ErrorKind::Io,
                format!(
                    "the backend read of object {} chunk {} was abandoned",
                    self.key.0, self.key.1
                ),
            )));
        }
        let mut m = lock(&self.cache.inflight);
        if m.get(&self.key)
            .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
        {
            m.remove(&self.key);
        }
    }
}

enum Join<'a> {
    Lead(Leader<'a>),
    Wait(Arc<Flight>),
}

/// A cache hit found but not yet read ([`Cache::plan_hit`]).
pub struct HitPlan {
    key: Key,
    slot: u32,
    epoch: u64,
    /// Valid bytes of the chunk.
    valid: usize,
    /// Blocks `b0..b1` of the chunk are read.
    b0: usize,
    b1: usize,
    crcs: [u32; BLOCKS_PER_CHUNK],
    /// Where in the cache file to read.
    pub file_off: u64,
    /// How many bytes to read there (whole blocks).
    pub nbytes: usize,
    /// Where the wanted bytes start within those read.
    skip: usize,
}

/// A counter bumped by many threads at once, striped over cache lines.
#[derive(Default)]
struct Striped([Padded; 16]);

#[derive(Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

impl Striped {
    fn add(&self, i: usize) {
        self.0[i % 16].0.fetch_add(1, Ordering::Relaxed);
    }
    fn get(&self) -> u64 {
        self.0.iter().map(|p| p.0.load(Ordering::Relaxed)).sum()
    }
}

#[derive(Default)]
struct Counters {
    hits: Striped,
    misses: AtomicU64,
    evictions: AtomicU64,
    inserts: AtomicU64,
    corrupt: AtomicU64,
    /// Cache-file I/O errors (not persisted).
    io_errors: AtomicU64,
    /// Misses not cached because no free slot was ready (not persisted).
    skipped: AtomicU64,
}

impl Counters {
    fn get(&self) -> CacheCounters {
        CacheCounters {
            hits: self.hits.get(),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            inserts: self.inserts.load(Ordering::Relaxed),
            corrupt: self.corrupt.load(Ordering::Relaxed),
        }
    }
}

thread_local! {
    /// Per-thread buffer of hits whose destination is not aligned.
    static HIT_BUF: RefCell<Option<AlignedBuf>> = const { RefCell::new(None) };
}

/// An open read-cache file.
pub struct Cache {
    path: PathBuf,
    file: File,
    image: ImageUuid,
    cache_uuid: [u8; 16],
    generation: u64,
    layout: Layout,
    shards: Vec<Shard>,
    meta: Vec<SlotMeta>,
    slots: Mutex<Slots>,
    flush_lock: Mutex<()>,
    inflight: Mutex<HashMap<Key, Arc<Flight>>>,
    /// Cancels readers waiting for another reader's fetch (the volume
    /// using the cache cancels it when it stops).
    cancel: Cancel,
    /// Free slots the maintainer keeps ready, and the level that wakes it.
    reserve: usize,
    low_water: usize,
    /// A maintainer thread ([`Cache::maintainer`]) refills the free list
    /// and writes the chunks readers fetched (`deferred`).
    background: AtomicBool,
    /// Chunks a reader fetched and verified, waiting for the maintainer to
    /// write them to the cache file, so that a miss returns without that
    /// write (at most [`MAX_DEFERRED`]; beyond, the reader writes it). A
    /// chunk leaves this list only after it is in the index, and readers
    /// that miss look here first, so a chunk fetched once is not fetched
    /// again while it waits.
    deferred: Mutex<Vec<(Key, Arc<Vec<u8>>)>>,
    wake_tx: Sender<()>,
    wake_rx: Receiver<()>,
    /// Off for this open after repeated I/O errors on the file.
    off: AtomicBool,
    faults: AtomicU8,
    started: Instant,
    last_warn: AtomicU64,
    /// The image journal generation the superblock records (or will, at
    /// the next superblock write).
    journal_gen: AtomicU64,
    /// Entries [`Cache::open`] dropped, by reason.
    open_drops: OpenDrops,
    /// Counters persisted before this open.
    base: CacheCounters,
    /// Counters of this open.
    counters: Counters,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One shard of the key index, alone on its cache lines (readers of
/// different shards do not bounce a line between them).
#[derive(Default)]
#[repr(align(128))]
struct Shard(RwLock<HashMap<Key, u32>>);

fn read_shard(m: &Shard) -> std::sync::RwLockReadGuard<'_, HashMap<Key, u32>> {
    m.0.read().unwrap_or_else(|e| e.into_inner())
}

fn write_shard(m: &Shard) -> std::sync::RwLockWriteGuard<'_, HashMap<Key, u32>> {
    m.0.write().unwrap_or_else(|e| e.into_inner())
}

/// Entries [`Cache::open`] dropped from a valid index, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenDrops {
    /// Above the last object recovery kept (sequences it may reuse), or
    /// duplicate or out-of-range entries.
    pub stale: u64,
    /// Every entry, because the image's journal generation differed from
    /// the file's (another attach may have reused their sequences).
    pub journal_gen: u64,
    /// The image's journal generation differed from the file's.
    pub journal_gen_changed: bool,
}

/// What `info` shows about an image's cache file (read without opening it
/// for writing). The counters are those persisted at the last clean close
/// (or format): they lag a running server until it closes the image.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CacheInfo {
    /// The file.
    pub path: String,
    /// File size in bytes.
    pub bytes: u64,
    /// The superblock decodes.
    pub formatted: bool,
    /// The file belongs to this image (it would be used, not discarded).
    pub owner_match: bool,
    /// Chunk slots.
    pub chunks: u64,
    /// Slots holding a chunk according to valid index blocks.
    pub valid_chunks: u64,
    /// Persisted counters (as of the last clean close).
    pub counters: CacheCounters,
}

impl Drop for Cache {
    fn drop(&mut self) {
        // The file's flock (taken in `open`) goes now, not when the last
        // copy of the descriptor closes: a child spawned meanwhile holds
        // one until its exec, and the next open would find the cache "in
        // use by another process".
        crate::io::release_flock(&self.file);
    }
}

impl Cache {
    /// Open (or create, or reformat) the cache file at `path` for `image`,
    /// `bytes` long. Entries for objects above `last_obj` are dropped:
    /// recovery may reuse those sequences for new objects. `journal_gen` is
    /// the image superblock's journal generation as read at this open
    /// (before this attach records its own): if the file records another
    /// one, the image was attached with another journal since the file was
    /// last used, and every entry is dropped. Either drop is durable before
    /// this returns.
    pub fn open(
        path: &Path,
        image: ImageUuid,
        bytes: u64,
        last_obj: ObjSeq,
        journal_gen: u64,
    ) -> Result<Cache> {
        let layout = Layout::for_size(bytes).ok_or_else(|| {
            Error::new(
                ErrorKind::Config,
                format!("rcache_bytes ({bytes}) is too small for one 64 KiB chunk and its index"),
            )
        })?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        }
        let existed = path.exists();
        let file = io::open_direct(path, true)?;
        // SAFETY: flock on an fd we own; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(Error::new(
                ErrorKind::Locked,
                format!("read cache {} is in use by another process", path.display()),
            ));
        }
        let size = io::device_size(&file, path)?;
        let mut sup = None;
        if !existed {
            info!(cache = %path.display(), "creating read cache");
        } else if size != bytes {
            warn!(cache = %path.display(), "read cache is {size} bytes, rcache_bytes is {bytes}: reformatting it");
        } else {
            let mut b = AlignedBuf::new(BLOCK_BYTES);
            io::read_exact_at(&file, &mut b, 0, path)?;
            match CacheSuper::decode(&b) {
                Err(e) => {
                    warn!(cache = %path.display(), "read cache superblock does not decode ({e}): reformatting it")
                }
                Ok(s) if s.owner != image => warn!(
                    cache = %path.display(),
                    "read cache belongs to image {}, not {image}: discarding it",
                    s.owner
                ),
                // A crash during a resize leaves a superblock of the old
                // size in a file of the new one: its index would name the
                // wrong slots.
                Ok(s) if s.layout != layout => warn!(
                    cache = %path.display(),
                    "read cache superblock describes a {}-byte file, the file is {size} bytes: reformatting it",
                    s.layout.file_bytes
                ),
                Ok(s) => sup = Some(s),
            }
        }
        let n = layout.nchunks as usize;
        let reserve = (n / 16).clamp(1, RESERVE_MAX);
        let (wake_tx, wake_rx) = crossbeam_channel::bounded(1);
        let mut cache = Cache {
            path: path.to_path_buf(),
            file,
            image,
            cache_uuid: [0; 16],
            generation: 0,
            layout,
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            meta: (0..n).map(|_| SlotMeta::default()).collect(),
            slots: Mutex::new(Slots::default()),
            flush_lock: Mutex::new(()),
            inflight: Mutex::new(HashMap::new()),
            cancel: Cancel::new(),
            reserve,
            low_water: (reserve / 2).max(1),
            background: AtomicBool::new(false),
            deferred: Mutex::new(Vec::new()),
            wake_tx,
            wake_rx,
            off: AtomicBool::new(false),
            faults: AtomicU8::new(0),
            started: Instant::now(),
            last_warn: AtomicU64::new(0),
            journal_gen: AtomicU64::new(journal_gen),
            open_drops: OpenDrops::default(),
            base: CacheCounters::default(),
            counters: Counters::default(),
        };
        match sup {
            Some(s) => cache.load(s, last_obj, journal_gen)?,
            None => cache.format()?,
        }
        Ok(cache)
    }

    /// Write an empty cache: index blocks of a new generation first, then
    /// the superblock naming that generation.
    fn format(&mut self) -> Result<()> {
        self.file
            .set_len(self.layout.file_bytes)
            .map_err(|e| Error::io(format!("resize {}", self.path.display()), e))?;
        self.cache_uuid = *uuid::Uuid::new_v4().as_bytes();
        // Random per format (not a counter): index blocks of an older
        // format carry another generation, and their crc another UUID.
        self.generation = u64::from_le_bytes(self.cache_uuid[..8].try_into().unwrap_or_default());
        let n = self.layout.nchunks as usize;
        {
            let mut s = lock(&self.slots);
            s.synced = vec![false; n];
            s.free = (0..n as u32).rev().collect();
        }
        let empty = [IndexEntry::default(); ENTRIES_PER_BLOCK];
        let blocks = self.layout.index_blocks as usize;
        let mut b0 = 0;
        while b0 < blocks {
            let k = (blocks - b0).min(INDEX_IO_BLOCKS);
            let mut buf = AlignedBuf::new(k * BLOCK_BYTES);
            for i in 0..k {
                let blk =
                    encode_index_block(&self.cache_uuid, self.generation, (b0 + i) as u32, &empty);
                buf[i * BLOCK_BYTES..(i + 1) * BLOCK_BYTES].copy_from_slice(&blk);
            }
            io::write_all_at(
                &self.file,
                &buf,
                self.layout.index_block_off(b0 as u32),
                &self.path,
            )?;
            b0 += k;
        }
        // The empty index is durable before a superblock names its
        // generation (a crash in between leaves the old superblock, whose
        // generation the new blocks do not match: all entries are dropped).
        io::datasync(&self.file, &self.path)?;
        self.write_super()?;
        io::datasync(&self.file, &self.path)
    }

    /// Load the index of a valid superblock of ours, dropping the entries
    /// above `last_obj`, or all of them if the file's journal generation is
    /// not `journal_gen` (the image's at this open).
    fn load(&mut self, s: CacheSuper, last_obj: ObjSeq, journal_gen: u64) -> Result<()> {
        // Another attach with another journal happened since this file was
        // last used: its recovery may have deleted objects above a gap and
        // reused their sequences for other data, which the crcs (over key
        // and data) cannot tell. Nothing here is trusted.
        let gen_changed = s.journal_gen != journal_gen;
        self.cache_uuid = s.cache_uuid;
        self.generation = s.generation;
        self.base = s.counters;
        let n = self.layout.nchunks as usize;
        let blocks = self.layout.index_blocks as usize;
        let mut slots = Slots {
            synced: vec![false; n],
            ..Slots::default()
        };
        let (mut bad, mut stale, mut gen_dropped, mut kept) = (0u64, 0u64, 0u64, 0u64);
        let mut b0 = 0;
        while b0 < blocks {
            let k = (blocks - b0).min(INDEX_IO_BLOCKS);
            let mut buf = AlignedBuf::new(k * BLOCK_BYTES);
            io::read_exact_at(
                &self.file,
                &mut buf,
                self.layout.index_block_off(b0 as u32),
                &self.path,
            )?;
            for i in 0..k {
                let no = (b0 + i) as u32;
                let raw = &buf[i * BLOCK_BYTES..(i + 1) * BLOCK_BYTES];
                let entries = match decode_index_block(raw, &self.cache_uuid, self.generation, no) {
                    Ok(e) => e,
                    Err(e) => {
                        // Only this block's entries are lost.
                        warn!(cache = %self.path.display(), block = no, "read cache index block is corrupt, dropping its entries: {e}");
                        bad += 1;
                        slots.dirty.insert(no);
                        continue;
                    }
                };
                for (j, e) in entries.into_iter().enumerate() {
                    let slot = no as usize * ENTRIES_PER_BLOCK + j;
                    if e.is_empty() {
                        continue;
                    }
                    if gen_changed {
                        gen_dropped += 1;
                        slots.dirty.insert(no);
                        continue;
                    }
                    let key = (e.obj, e.chunk);
                    let shard = &mut write_shard(&self.shards[shard_of(key)]);
                    if slot >= n || e.obj > last_obj || shard.contains_key(&key) {
                        stale += 1;
                        slots.dirty.insert(no);
                        continue;
                    }
                    shard.insert(key, slot as u32);
                    self.set_meta(slot as u32, &e);
                    slots.synced[slot] = true;
                    kept += 1;
                }
            }
            b0 += k;
        }
        slots.free = (0..n as u32)
            .rev()
            .filter(|&i| self.meta[i as usize].chunk_len.load(Ordering::Relaxed) as u32 == 0)
            .collect();
        self.counters.corrupt.fetch_add(bad, Ordering::Relaxed);
        self.open_drops = OpenDrops {
            stale,
            journal_gen: gen_dropped,
            journal_gen_changed: gen_changed,
        };
        if gen_changed {
            warn!(cache = %self.path.display(), cache_journal_gen = s.journal_gen, image_journal_gen = journal_gen, dropped = gen_dropped,
                "read cache was last used by an attach with another journal generation than the image records now (the image was attached with another journal since: another host, or a wiped journal), and that attach's recovery may have reused object sequences it holds: dropping all its entries");
        }
        let dirty = !slots.dirty.is_empty();
        *lock(&self.slots) = slots;
        info!(cache = %self.path.display(), chunks = kept, bad_index_blocks = bad, dropped = stale + gen_dropped, "read cache opened");
        if dirty {
            // The dropped entries are cleared on disk before any slot is
            // reused (the free list's slots are already empty on disk, or
            // in an undecodable block, which reads as empty), and before
            // `set_journal_gen` can record a generation under which they
            // would be trusted again. A failure fails the open.
            self.sync_index()?;
        }
        Ok(())
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Entries this open dropped from the index, by reason.
    pub fn open_drops(&self) -> OpenDrops {
        self.open_drops
    }

    /// The image journal generation the file records (or will record at
    /// its next superblock write).
    pub fn journal_gen(&self) -> u64 {
        self.journal_gen.load(Ordering::SeqCst)
    }

    /// Record `gen`, the image journal generation of this attach, in the
    /// superblock: one write and one fdatasync, with the counters as they
    /// were persisted (they still change only at format and clean close).
    /// Call it only once the image superblock records `gen` (crash-safety
    /// ordering 22, see `Volume::open`). On failure the file keeps the
    /// generation it had, which the next open finds differing from the
    /// image's: everything is dropped then, which is safe.
    pub fn set_journal_gen(&self, gen: u64) -> Result<()> {
        self.journal_gen.store(gen, Ordering::SeqCst);
        if self.is_off() {
            return Ok(());
        }
        let _g = lock(&self.flush_lock);
        let r = self.write_super_with(self.base).and_then(|()| self.sync());
        if let Err(e) = &r {
            self.io_error("superblock", e);
        }
        r
    }

    /// The cancel flag of readers waiting for another reader's fetch.
    pub fn cancel(&self) -> &Cancel {
        &self.cancel
    }

    /// Counters since this open.
    pub fn counters(&self) -> CacheCounters {
        self.counters.get()
    }

    /// Cache-file I/O errors since this open.
    pub fn io_errors(&self) -> u64 {
        self.counters.io_errors.load(Ordering::Relaxed)
    }

    /// Misses not cached because no free slot was ready.
    pub fn skipped_inserts(&self) -> u64 {
        self.counters.skipped.load(Ordering::Relaxed)
    }

    /// Whether the cache was turned off for this open (repeated I/O errors).
    pub fn is_off(&self) -> bool {
        self.off.load(Ordering::Relaxed)
    }

    /// Make the cache file's reads, writes or fdatasyncs fail with EIO
    /// (a mask of [`FAULT_READ`], [`FAULT_WRITE`], [`FAULT_SYNC`]; 0 to
    /// stop). For tests.
    #[doc(hidden)]
    pub fn inject_faults(&self, mask: u8) {
        self.faults.store(mask, Ordering::SeqCst);
    }

    /// Chunk slots in the file.
    pub fn chunks(&self) -> u32 {
        self.layout.nchunks
    }

    /// Chunks held now.
    pub fn valid_chunks(&self) -> usize {
        self.shards.iter().map(|s| read_shard(s).len()).sum()
    }

    fn fault(&self, bit: u8, what: &str, off: u64) -> Result<()> {
        if self.faults.load(Ordering::Relaxed) & bit != 0 {
            return Err(Error::io(
                format!("{what} {} at {off} (injected)", self.path.display()),
                std::io::Error::from_raw_os_error(libc::EIO),
            ));
        }
        Ok(())
    }

    fn pread(&self, buf: &mut [u8], off: u64) -> Result<()> {
        self.fault(FAULT_READ, "read", off)?;
        io::read_exact_at(&self.file, buf, off, &self.path)
    }

    fn pwrite(&self, buf: &[u8], off: u64) -> Result<()> {
        self.fault(FAULT_WRITE, "write", off)?;
        io::write_all_at(&self.file, buf, off, &self.path)
    }

    fn sync(&self) -> Result<()> {
        self.fault(FAULT_SYNC, "fdatasync", 0)?;
        io::datasync(&self.file, &self.path)
    }

    /// Count and (rate-limited) log an I/O error on the cache file; after
    /// [`IO_ERRORS_OFF`] of them the cache is off for this open.
    fn io_error(&self, what: &str, e: &Error) {
        let n = self.counters.io_errors.fetch_add(1, Ordering::Relaxed) + 1;
        let now = self.started.elapsed().as_secs() + WARN_EVERY_SECS;
        let last = self.last_warn.load(Ordering::Relaxed);
        if n == 1
            || (now >= last + WARN_EVERY_SECS
                && self
                    .last_warn
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok())
        {
            self.last_warn.store(now, Ordering::Relaxed);
            warn!(cache = %self.path.display(), errors = n, "read cache I/O error ({what}; served from the backend): {e}");
        }
        if n >= IO_ERRORS_OFF && !self.off.swap(true, Ordering::SeqCst) {
            warn!(cache = %self.path.display(), errors = n, "read cache turned off for this open after repeated I/O errors");
        }
    }

    /// Read `out.len()` bytes of object `obj` at `byte_off` (object-relative,
    /// header included), from the cache where it holds them and otherwise by
    /// fetching whole chunks with `fetch` (which are then cached). Errors
    /// of the cache file itself never fail the read.
    pub fn read(&self, obj: ObjSeq, byte_off: u64, out: &mut [u8], fetch: Fetch<'_>) -> Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        let end = byte_off + out.len() as u64;
        let chunk_of = |off: u64| {
            u32::try_from(off / CHUNK_BYTES).map_err(|_| {
                Error::new(
                    ErrorKind::InvalidInput,
                    format!("object offset {off} is beyond the cache's range"),
                )
            })
        };
        let first = chunk_of(byte_off)?;
        let last = chunk_of(end - 1)?;
        if self.is_off() {
            let data = fetch(byte_off, out.len())?;
            if data.len() < out.len() {
                return Err(short(
                    obj,
                    first,
                    data.len() + (byte_off % CHUNK_BYTES) as usize,
                    (byte_off % CHUNK_BYTES) as usize,
                    out.len(),
                ));
            }
            out.copy_from_slice(&data[..out.len()]);
            return Ok(());
        }
        if first == last {
            let within = (byte_off % CHUNK_BYTES) as usize;
            if self.try_hit((obj, first), within, out)
                || self.fill_from_deferred(obj, byte_off, out).is_some()
            {
                self.counters.hits.add(first as usize);
                return Ok(());
            }
            let len = out.len();
            return self.fill_misses(obj, &[(first, within, 0..len)], out, fetch);
        }
        // A multi-chunk read: hits first, then the misses (runs of missing
        // chunks with one backend get each, single flight per chunk).
        let mut missing = Vec::new();
        let mut pos = 0usize;
        while pos < out.len() {
            let off = byte_off + pos as u64;
            let chunk = chunk_of(off)?;
            let within = (off % CHUNK_BYTES) as usize;
            let n = (out.len() - pos).min(CHUNK_BYTES as usize - within);
            let r = pos..pos + n;
            if self.try_hit((obj, chunk), within, &mut out[r.clone()])
                || self
                    .fill_from_deferred(obj, off, &mut out[r.clone()])
                    .is_some()
            {
                self.counters.hits.add(chunk as usize);
            } else {
                missing.push((chunk, within, r));
            }
            pos += n;
        }
        self.fill_misses(obj, &missing, out, fetch)
    }

    /// Become the leader of the fetch of `key`, or join the one in flight.
    fn join(&self, key: Key) -> Join<'_> {
        let mut m = lock(&self.inflight);
        if let Some(f) = m.get(&key) {
            return Join::Wait(f.clone());
        }
        let f = Arc::new(Flight::default());
        m.insert(key, f.clone());
        Join::Lead(Leader {
            cache: self,
            key,
            flight: f,
            published: false,
        })
    }

    /// Serve the missing pieces `(chunk, offset in chunk, range of out)`
    /// (ascending chunks) from the backend: each chunk is fetched once
    /// however many readers miss on it at the same time (an error reaches
    /// every one of them); runs of chunks this reader leads share one get.
    fn fill_misses(
        &self,
        obj: ObjSeq,
        missing: &[(u32, usize, std::ops::Range<usize>)],
        out: &mut [u8],
        fetch: Fetch<'_>,
    ) -> Result<()> {
        let mut joins: Vec<Join<'_>> = missing.iter().map(|m| self.join((obj, m.0))).collect();
        let mut results: Vec<Option<FlightResult>> = missing.iter().map(|_| None).collect();
        // Every chunk we lead is fetched and published before we wait on
        // another reader's (two readers leading parts of each other's
        // ranges cannot wait on each other).
        let mut i = 0;
        while i < missing.len() {
            if !matches!(joins[i], Join::Lead(_)) {
                i += 1;
                continue;
            }
            let mut j = i + 1;
            while j < missing.len()
                && matches!(joins[j], Join::Lead(_))
                && missing[j].0 == missing[j - 1].0 + 1
            {
                j += 1;
            }
            let first = missing[i].0;
            let n = j - i;
            self.counters.misses.fetch_add(n as u64, Ordering::Relaxed);
            let per_chunk: Vec<FlightResult> =
                match fetch(first as u64 * CHUNK_BYTES, n * CHUNK_BYTES as usize) {
                    Ok(data) if n == 1 => vec![Ok(Arc::new(data))],
                    Ok(data) => missing[i..j]
                        .iter()
                        .map(|m| {
                            let at = (m.0 - first) as usize * CHUNK_BYTES as usize;
                            let end = (at + CHUNK_BYTES as usize).min(data.len());
                            Ok(Arc::new(data[at.min(data.len())..end].to_vec()))
                        })
                        .collect(),
                    // One bad chunk fails the whole run's get: it gets the
                    // error, and every other chunk of the run is fetched on
                    // its own, so that the good ones (and the readers that
                    // joined them) get their data. Any other error (a bad
                    // header, a short object, the store) is the whole run's.
                    Err(e) if n > 1 && e.bad_chunk().is_some() => {
                        let bad = e.bad_chunk().map(|off| off / CHUNK_BYTES);
                        missing[i..j]
                            .iter()
                            .map(|m| {
                                if bad == Some(u64::from(m.0)) {
                                    Err(e.duplicate())
                                } else {
                                    fetch(u64::from(m.0) * CHUNK_BYTES, CHUNK_BYTES as usize)
                                        .map(Arc::new)
                                }
                            })
                            .collect()
                    }
                    Err(e) => (i..j).map(|_| Err(e.duplicate())).collect(),
                };
            for (k, rk) in (i..j).zip(per_chunk) {
                if let Join::Lead(l) = &mut joins[k] {
                    l.publish(&rk);
                }
                results[k] = Some(rk);
            }
            i = j;
        }
        let mut err = None;
        for (k, (chunk, within, r)) in missing.iter().enumerate() {
            let res = match results[k].take() {
                Some(x) => x,
                None => match &joins[k] {
                    Join::Wait(f) => f.wait((obj, *chunk), &self.cancel),
                    Join::Lead(_) => unreachable!("every led chunk was published"),
                },
            };
            match res {
                Ok(d) => {
                    if d.len() < within + r.len() {
                        err.get_or_insert_with(|| short(obj, *chunk, d.len(), *within, r.len()));
                        continue;
                    }
                    out[r.clone()].copy_from_slice(&d[*within..within + r.len()]);
                    if matches!(joins[k], Join::Lead(_)) {
                        self.insert_soon((obj, *chunk), d);
                    }
                }
                Err(e) => {
                    err.get_or_insert(e);
                }
            }
        }
        // Dropping the leaders removes their flights (after the inserts or
        // their deferral, so a reader arriving meanwhile finds the result,
        // the deferred chunk or the entry).
        drop(joins);
        match err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Serve `out` from the cache if it holds the bytes and they verify.
    /// Takes no global lock; an I/O error on the file is a miss.
    fn try_hit(&self, key: Key, within: usize, out: &mut [u8]) -> bool {
        let Some(p) = self.lookup_hit(key, within, out.len()) else {
            return false;
        };
        // Straight into the caller's buffer when it is whole aligned
        // blocks; a miss overwrites it anyway.
        if p.skip == 0
            && out.len() == p.nbytes
            && (out.as_ptr() as usize).is_multiple_of(BLOCK_BYTES)
        {
            if let Err(e) = self.pread(out, p.file_off) {
                self.io_error("hit", &e);
                return false;
            }
            return self.check_hit(&p, out);
        }
        HIT_BUF.with(|b| {
            let mut b = b.borrow_mut();
            let buf = b.get_or_insert_with(|| AlignedBuf::new(CHUNK_BYTES as usize));
            let buf = &mut buf[..p.nbytes];
            if let Err(e) = self.pread(buf, p.file_off) {
                self.io_error("hit", &e);
                return false;
            }
            if !self.check_hit(&p, buf) {
                return false;
            }
            out.copy_from_slice(&buf[p.skip..p.skip + out.len()]);
            true
        })
    }

    /// Find the entry for `len` bytes at `within` of chunk `key`: where its
    /// blocks are in the file and the crcs they must have, as one
    /// consistent (seqlock) snapshot of the slot. No I/O, no global lock.
    fn lookup_hit(&self, key: Key, within: usize, len: usize) -> Option<HitPlan> {
        let slot = read_shard(&self.shards[shard_of(key)]).get(&key).copied()?;
        let m = &self.meta[slot as usize];
        let b0 = within / BLOCK_BYTES;
        let b1 = (within + len).div_ceil(BLOCK_BYTES);
        // Seqlock read of the entry.
        let epoch = m.epoch.load(Ordering::Acquire);
        if epoch & 1 == 1 {
            return None;
        }
        let obj = m.obj.load(Ordering::Relaxed);
        let cl = m.chunk_len.load(Ordering::Relaxed);
        let (chunk, valid) = ((cl >> 32) as u32, cl as u32 as usize);
        if valid == 0 || (ObjSeq(obj), chunk) != key || within + len > valid {
            return None;
        }
        let mut crcs = [0u32; BLOCKS_PER_CHUNK];
        for (b, c) in crcs.iter_mut().enumerate().take(b1).skip(b0) {
            *c = m.crcs[b].load(Ordering::Relaxed);
        }
        fence(Ordering::Acquire);
        if m.epoch.load(Ordering::Relaxed) != epoch {
            return None;
        }
        if !m.referenced.load(Ordering::Relaxed) {
            m.referenced.store(true, Ordering::Relaxed);
        }
        Some(HitPlan {
            key,
            slot,
            epoch,
            valid,
            b0,
            b1,
            crcs,
            file_off: self.layout.slot_off(slot) + (b0 * BLOCK_BYTES) as u64,
            nbytes: (b1 - b0) * BLOCK_BYTES,
            skip: within - b0 * BLOCK_BYTES,
        })
    }

    /// Whether `buf` (the `p.nbytes` read at `p.file_off`) is the entry
    /// `p` looked up: the slot was not rewritten before or during the read
    /// (the epoch is unchanged after it), and every block verifies. A block
    /// that fails drops the entry.
    fn check_hit(&self, p: &HitPlan, buf: &[u8]) -> bool {
        let m = &self.meta[p.slot as usize];
        let still = || {
            fence(Ordering::Acquire);
            m.epoch.load(Ordering::Relaxed) == p.epoch
        };
        if buf.len() < p.nbytes || !still() {
            return false;
        }
        for blk in p.b0..p.b1 {
            let valid = (p.valid - blk * BLOCK_BYTES).min(BLOCK_BYTES);
            let at = (blk - p.b0) * BLOCK_BYTES;
            let c = block_crc(
                &self.cache_uuid,
                self.image,
                p.key.0,
                p.key.1,
                blk as u32,
                &buf[at..at + valid],
            );
            if c != p.crcs[blk] {
                self.corrupt_block(p.key, p.slot, p.epoch, blk);
                return false;
            }
        }
        // Evicted (and maybe rewritten) while we checked: a miss.
        still()
    }

    /// A hit the caller reads itself (for example with an io_uring READ on
    /// its own ring, [`Cache::raw_fd`]) straight into its buffer: `len`
    /// bytes of object `obj` at `byte_off`, within one chunk, in whole
    /// aligned blocks. `None` when the cache does not hold them, or they
    /// are not whole blocks of one chunk, or the cache is off. The caller
    /// reads `nbytes` at `file_off` into a block-aligned buffer and passes
    /// the result to [`Cache::finish_hit`], which alone makes it a hit.
    pub fn plan_hit(&self, obj: ObjSeq, byte_off: u64, len: usize) -> Option<HitPlan> {
        if len == 0
            || self.is_off()
            || !byte_off.is_multiple_of(BLOCK_BYTES as u64)
            || !len.is_multiple_of(BLOCK_BYTES)
        {
            return None;
        }
        let chunk = u32::try_from(byte_off / CHUNK_BYTES).ok()?;
        let within = (byte_off % CHUNK_BYTES) as usize;
        if within + len > CHUNK_BYTES as usize {
            return None;
        }
        let p = self.lookup_hit((obj, chunk), within, len)?;
        debug_assert!(p.skip == 0 && p.nbytes == len);
        Some(p)
    }

    /// [`Cache::plan_hit`] for a range of any length: one plan per chunk
    /// the range touches, each with its part's offset in the range; `None`
    /// unless every part is a hit.
    pub fn plan_hits(
        &self,
        obj: ObjSeq,
        byte_off: u64,
        len: usize,
    ) -> Option<Vec<(usize, HitPlan)>> {
        let mut parts = Vec::new();
        let mut pos = 0usize;
        while pos < len {
            let off = byte_off + pos as u64;
            let n = (len - pos).min((CHUNK_BYTES - off % CHUNK_BYTES) as usize);
            parts.push((pos, self.plan_hit(obj, off, n)?));
            pos += n;
        }
        Some(parts)
    }

    /// The cache file's descriptor (opened with O_DIRECT) for the reads of
    /// [`Cache::plan_hit`]. Valid while the cache lives.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }

    /// Finish a hit of [`Cache::plan_hit`]: `read` is what the read of
    /// `p.nbytes` at `p.file_off` into `buf` returned (bytes, or a negative
    /// errno). True when `buf` now holds the data, verified; false is a miss
    /// (the caller reads the range another way), and an I/O error on the
    /// file is counted as one (a retry of the range through the cache that
    /// fails again counts again: each is a failed read of the file). Hits
    /// are counted by [`Cache::count_hit`].
    pub fn finish_hit(&self, p: &HitPlan, read: i32, buf: &[u8]) -> bool {
        let read = if self.faults.load(Ordering::Relaxed) & FAULT_READ != 0 {
            -libc::EIO
        } else {
            read
        };
        if read < 0 {
            let e = Error::io(
                format!("read {} at {}", self.path.display(), p.file_off),
                std::io::Error::from_raw_os_error(-read),
            );
            self.io_error("hit", &e);
            return false;
        }
        read as usize == p.nbytes && self.check_hit(p, &buf[..p.nbytes.min(buf.len())])
    }

    /// Count a hit of [`Cache::plan_hit`] that served its caller (after
    /// [`Cache::finish_hit`]; a part of a range the caller then reads
    /// another way anyway is not counted, as that read counts it).
    pub fn count_hit(&self, p: &HitPlan) {
        self.counters.hits.add(p.key.1 as usize);
    }

    /// Block `blk` of the chunk in `slot` (at `epoch`) failed its crc: drop
    /// the entry, unless the slot changed since (then the read raced a
    /// rewrite and is just a miss).
    fn corrupt_block(&self, key: Key, slot: u32, epoch: u64, blk: usize) {
        let mut s = lock(&self.slots);
        if self.meta[slot as usize].epoch.load(Ordering::Relaxed) != epoch {
            return;
        }
        warn!(cache = %self.path.display(), object = key.0 .0, chunk = key.1, block = blk,
            "read cache block fails its checksum: dropped and refetched");
        self.counters.corrupt.fetch_add(1, Ordering::Relaxed);
        {
            let mut shard = write_shard(&self.shards[shard_of(key)]);
            if shard.get(&key) == Some(&slot) {
                shard.remove(&key);
            }
        }
        self.clear_slot(&mut s, slot);
    }

    /// Publish `e` as the entry of `slot` (seqlock write; callers hold the
    /// `slots` mutex, or own the cache exclusively). Returns the new epoch.
    fn set_meta(&self, slot: u32, e: &IndexEntry) -> u64 {
        let m = &self.meta[slot as usize];
        let ep = m.epoch.load(Ordering::Relaxed);
        m.epoch.store(ep + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        m.obj.store(e.obj.0, Ordering::Relaxed);
        m.chunk_len
            .store(((e.chunk as u64) << 32) | e.len as u64, Ordering::Relaxed);
        for (a, c) in m.crcs.iter().zip(e.crcs) {
            a.store(c, Ordering::Relaxed);
        }
        m.epoch.store(ep + 2, Ordering::Release);
        ep + 2
    }

    /// The entry of `slot` (callers hold the `slots` mutex: no writer).
    fn entry(&self, slot: usize) -> IndexEntry {
        let m = &self.meta[slot];
        let cl = m.chunk_len.load(Ordering::Relaxed);
        let mut crcs = [0u32; BLOCKS_PER_CHUNK];
        for (c, a) in crcs.iter_mut().zip(&m.crcs) {
            *c = a.load(Ordering::Relaxed);
        }
        IndexEntry {
            obj: ObjSeq(m.obj.load(Ordering::Relaxed)),
            chunk: (cl >> 32) as u32,
            len: cl as u32,
            crcs,
        }
    }

    /// Empty `slot` in memory; it becomes reusable only after its index
    /// block is rewritten (rule 2).
    fn clear_slot(&self, s: &mut Slots, slot: u32) {
        self.set_meta(slot, &IndexEntry::default());
        self.meta[slot as usize]
            .referenced
            .store(false, Ordering::Relaxed);
        s.synced[slot as usize] = false;
        s.dirty.insert(slot / ENTRIES_PER_BLOCK as u32);
        s.pending_free.push(slot);
    }

    /// Cache a whole object as it was put: `head` followed by `data`, every
    /// chunk of it. Runs on the maintainer thread, so it may refill the free
    /// list itself. A chunk that lies within `head` or within `data` is
    /// written from there (no copy when it is block-aligned, as the
    /// destager's buffers are); only a chunk that straddles the two is put
    /// together in a buffer first. `blocks`, if given, are the plain crcs of
    /// `data`'s 4 KiB blocks (`format::block_crcs`), which the block crcs of
    /// the data are joined from instead of reading it again; the header's
    /// blocks are read.
    pub fn insert_object(
        &self,
        obj: ObjSeq,
        head: &[u8],
        data: &[u8],
        blocks: Option<&[u32]>,
    ) -> Result<()> {
        let h = head.len();
        let end = h + data.len();
        // The data's blocks are the cache's blocks only when the header is
        // whole blocks (every encoder pads it so).
        let blocks = blocks.filter(|b| {
            h.is_multiple_of(BLOCK_BYTES) && b.len() == data.len().div_ceil(BLOCK_BYTES)
        });
        // The data's block crcs are the cache's block crcs only with the
        // same block size.
        const _: () = assert!(BLOCK_BYTES == crate::format::CRC_BLOCK);
        let mut stitched: Option<AlignedBuf> = None;
        for (i, at) in (0..end).step_by(CHUNK_BYTES as usize).enumerate() {
            let to = (at + CHUNK_BYTES as usize).min(end);
            let chunk: &[u8] = if to <= h {
                &head[at..to]
            } else if at >= h {
                &data[at - h..to - h]
            } else {
                let b = stitched.get_or_insert_with(|| AlignedBuf::new(CHUNK_BYTES as usize));
                b[..h - at].copy_from_slice(&head[at..]);
                b[h - at..to - at].copy_from_slice(&data[..to - h]);
                &b[..to - at]
            };
            let plain = blocks.map(|b| {
                let mut p = [0u32; BLOCKS_PER_CHUNK];
                for (j, d) in chunk.chunks(BLOCK_BYTES).enumerate() {
                    let off = at + j * BLOCK_BYTES;
                    p[j] = if off >= h {
                        b[(off - h) / BLOCK_BYTES]
                    } else {
                        crate::format::crc(0, d)
                    };
                }
                p
            });
            self.insert_retrying((obj, i as u32), chunk, plain.as_ref());
        }
        Ok(())
    }

    /// Cache chunk `key`, fetched and verified by a reader: through the
    /// maintainer when there is one and its list has room, else now.
    fn insert_soon(&self, key: Key, data: Arc<Vec<u8>>) {
        if self.background.load(Ordering::SeqCst) {
            let mut d = lock(&self.deferred);
            if d.len() < MAX_DEFERRED {
                d.push((key, data));
                drop(d);
                let _ = self.wake_tx.try_send(());
                return;
            }
        }
        if !self.insert(key, &data, None) {
            self.counters.skipped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Insert on the maintainer thread: when no free slot is ready, refill
    /// the free list and try once more; only then is it counted skipped.
    fn insert_retrying(&self, key: Key, data: &[u8], plain: Option<&[u32; BLOCKS_PER_CHUNK]>) {
        if !self.insert(key, data, plain)
            && (self.is_off()
                || !{
                    self.maintain();
                    self.insert(key, data, plain)
                })
        {
            self.counters.skipped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Copy `out.len()` bytes of object `obj` at `byte_off` from chunks
    /// waiting in `deferred`, if they hold all of them (for the ublk
    /// queue, which otherwise serves only what the cache file holds);
    /// counted as hits.
    pub fn copy_deferred(&self, obj: ObjSeq, byte_off: u64, out: &mut [u8]) -> bool {
        let Some(chunks) = self.fill_from_deferred(obj, byte_off, out) else {
            return false;
        };
        for c in chunks {
            self.counters.hits.add(c as usize);
        }
        true
    }

    /// Fill `out` (object `obj` at `byte_off`) from chunks waiting in
    /// `deferred`; the chunks used, or `None` (and `out` partly written)
    /// unless they hold all of it. Not counted.
    fn fill_from_deferred(&self, obj: ObjSeq, byte_off: u64, out: &mut [u8]) -> Option<Vec<u32>> {
        let d = lock(&self.deferred);
        if d.is_empty() {
            return None;
        }
        let mut chunks = Vec::new();
        let mut pos = 0usize;
        while pos < out.len() {
            let off = byte_off + pos as u64;
            let chunk = u32::try_from(off / CHUNK_BYTES).ok()?;
            let within = (off % CHUNK_BYTES) as usize;
            let n = (out.len() - pos).min(CHUNK_BYTES as usize - within);
            let (_, data) = d.iter().find(|(k, _)| *k == (obj, chunk))?;
            if data.len() < within + n {
                return None;
            }
            out[pos..pos + n].copy_from_slice(&data[within..within + n]);
            chunks.push(chunk);
            pos += n;
        }
        Some(chunks)
    }

    /// Chunks fetched by readers and not yet written by the maintainer.
    pub fn pending_inserts(&self) -> usize {
        lock(&self.deferred).len()
    }

    /// Write the chunks readers fetched (the maintainer's part of
    /// `insert_soon`). Each leaves the list once it is in the index (or
    /// could not be cached), never before.
    pub fn insert_deferred(&self) {
        let todo: Vec<(Key, Arc<Vec<u8>>)> = lock(&self.deferred).clone();
        for (key, data) in &todo {
            self.insert_retrying(*key, data, None);
        }
        let mut d = lock(&self.deferred);
        d.retain(|(k, data)| !todo.iter().any(|(t, x)| t == k && Arc::ptr_eq(x, data)));
    }

    /// Cache chunk `key` (its first `data.len()` bytes; shorter than 64 KiB
    /// only at the object's end). A chunk already held is left alone.
    /// `plain`, if given, holds the plain crc32c of each 4 KiB block of
    /// `data`, from which the blocks' crcs are joined without reading them.
    /// Returns false if no free slot was ready (the chunk is not cached;
    /// the caller counts it skipped).
    fn insert(&self, key: Key, data: &[u8], plain: Option<&[u32; BLOCKS_PER_CHUNK]>) -> bool {
        if self.is_off()
            || data.is_empty()
            || data.len() as u64 > CHUNK_BYTES
            || !data.len().is_multiple_of(512)
        {
            return true;
        }
        if read_shard(&self.shards[shard_of(key)]).contains_key(&key) {
            return true;
        }
        let Some(slot) = self.take_slot() else {
            return false;
        };
        // O_DIRECT writes whole blocks from a block-aligned buffer: `data`
        // itself when it is that (a destaged object's chunks are), else a
        // copy padded with zeros.
        let copy;
        let io: &[u8] = if (data.as_ptr() as usize).is_multiple_of(BLOCK_BYTES)
            && data.len().is_multiple_of(BLOCK_BYTES)
        {
            data
        } else {
            let mut buf = AlignedBuf::copy_of(data);
            buf.set_len(data.len().div_ceil(BLOCK_BYTES) * BLOCK_BYTES);
            copy = buf;
            &copy
        };
        let mut crcs = [0u32; BLOCKS_PER_CHUNK];
        for (blk, d) in data.chunks(BLOCK_BYTES).enumerate() {
            crcs[blk] = match plain {
                Some(p) => block_crc_from_plain(
                    &self.cache_uuid,
                    self.image,
                    key.0,
                    key.1,
                    blk as u32,
                    p[blk],
                    d.len(),
                ),
                None => block_crc(&self.cache_uuid, self.image, key.0, key.1, blk as u32, d),
            };
        }
        // Rule 2: `take_slot` hands out only slots whose entry is empty in
        // the durable index, so these bytes are named by no persisted entry
        // until a flush has synced them (rule 1).
        if let Err(e) = self.pwrite(io, self.layout.slot_off(slot)) {
            lock(&self.slots).free.push(slot);
            self.io_error("insert", &e);
            return true;
        }
        {
            let mut shard = write_shard(&self.shards[shard_of(key)]);
            if shard.contains_key(&key) {
                drop(shard);
                // Another thread cached it meanwhile; the slot's durable
                // entry is still empty.
                lock(&self.slots).free.push(slot);
                return true;
            }
            shard.insert(key, slot);
        }
        let mut s = lock(&self.slots);
        let epoch = self.set_meta(
            slot,
            &IndexEntry {
                obj: key.0,
                chunk: key.1,
                len: data.len() as u32,
                crcs,
            },
        );
        self.meta[slot as usize]
            .referenced
            .store(true, Ordering::Relaxed);
        s.synced[slot as usize] = false;
        s.unsynced.push((slot, epoch));
        s.dirty.insert(slot / ENTRIES_PER_BLOCK as u32);
        self.counters.inserts.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Inserts not yet covered by a flush.
    pub fn unflushed(&self) -> usize {
        lock(&self.slots).unsynced.len()
    }

    /// A slot that is empty in the durable index, if one is ready. Never
    /// waits for an fdatasync when a maintainer is attached: it is woken
    /// when the free list runs low, and a miss without a slot is not cached.
    fn take_slot(&self) -> Option<u32> {
        for attempt in 0..2 {
            {
                let mut s = lock(&self.slots);
                if let Some(x) = s.free.pop() {
                    if s.free.len() < self.low_water {
                        self.wake();
                    }
                    return Some(x);
                }
            }
            if attempt == 1 || self.background.load(Ordering::Relaxed) {
                self.wake();
                return None;
            }
            // No maintainer (a bare cache, as in tests): refill inline.
            self.maintain();
        }
        None
    }

    fn wake(&self) {
        let _ = self.wake_tx.try_send(());
    }

    /// Attach a maintainer thread: from now on readers never evict or
    /// flush; they signal the returned channel when the free list runs low,
    /// and the maintainer calls [`Cache::maintain`].
    pub fn maintainer(&self) -> Receiver<()> {
        self.background.store(true, Ordering::SeqCst);
        self.wake_rx.clone()
    }

    /// Refill the reserve of free slots when it is below the low-water
    /// mark: evict (CLOCK, a bounded scan) and flush the invalidation
    /// (rule 2). Returns whether slots were freed.
    pub fn maintain(&self) -> bool {
        if self.is_off() {
            return false;
        }
        {
            let mut s = lock(&self.slots);
            if s.free.len() >= self.low_water {
                return false;
            }
            let have = s.free.len() + s.pending_free.len();
            if have < self.reserve {
                let want = self.reserve - have;
                self.evict(&mut s, want);
            }
            if s.pending_free.is_empty() {
                return false;
            }
        }
        // Rule 2: the evicted entries are cleared on disk before their
        // slots move to the free list.
        self.sync_index().is_ok()
    }

    /// CLOCK: empty up to `want` slots into `pending_free`, looking at no
    /// more than [`SCAN_CAP`] slots.
    fn evict(&self, s: &mut Slots, want: usize) {
        let n = self.meta.len();
        let mut freed = 0;
        for _ in 0..(2 * n).min(SCAN_CAP) {
            if freed == want {
                break;
            }
            let i = s.hand;
            s.hand = (s.hand + 1) % n;
            let m = &self.meta[i];
            if m.chunk_len.load(Ordering::Relaxed) as u32 == 0 {
                continue;
            }
            if m.referenced.swap(false, Ordering::Relaxed) {
                continue;
            }
            let e = self.entry(i);
            let key = (e.obj, e.chunk);
            {
                let mut shard = write_shard(&self.shards[shard_of(key)]);
                if shard.get(&key) == Some(&(i as u32)) {
                    shard.remove(&key);
                }
            }
            self.clear_slot(s, i as u32);
            freed += 1;
        }
        self.counters
            .evictions
            .fetch_add(freed as u64, Ordering::Relaxed);
    }

    /// Make the index match memory for every entry whose data is durable
    /// and release slots emptied before this flush. On failure nothing is
    /// lost: the entries, emptied slots and dirty blocks are put back for
    /// the next flush, and no emptied slot is released.
    pub fn sync_index(&self) -> Result<()> {
        if self.is_off() {
            return Ok(());
        }
        let _g = lock(&self.flush_lock);
        let (unsynced, pending) = {
            let mut s = lock(&self.slots);
            if s.dirty.is_empty() && s.unsynced.is_empty() && s.pending_free.is_empty() {
                return Ok(());
            }
            (
                std::mem::take(&mut s.unsynced),
                std::mem::take(&mut s.pending_free),
            )
        };
        let fail = |e: Error, unsynced: Vec<(u32, u64)>, pending: Vec<u32>, dirty: Vec<u32>| {
            let mut s = lock(&self.slots);
            s.unsynced.extend(unsynced);
            s.pending_free.extend(pending);
            s.dirty.extend(dirty);
            drop(s);
            self.io_error("index flush", &e);
            Err(e)
        };
        // Rule 1: the chunk data written so far is durable before any index
        // block naming it is written.
        if let Err(e) = self.sync() {
            return fail(e, unsynced, pending, Vec::new());
        }
        let blocks: Vec<(u32, Vec<u8>)> = {
            let mut s = lock(&self.slots);
            for (slot, epoch) in unsynced {
                let m = &self.meta[slot as usize];
                if m.epoch.load(Ordering::Relaxed) == epoch
                    && m.chunk_len.load(Ordering::Relaxed) as u32 != 0
                {
                    s.synced[slot as usize] = true;
                }
            }
            let dirty = std::mem::take(&mut s.dirty);
            let mut out = Vec::with_capacity(dirty.len());
            for b in dirty {
                let first = b as usize * ENTRIES_PER_BLOCK;
                let last = (first + ENTRIES_PER_BLOCK).min(self.meta.len());
                let mut still_dirty = false;
                let entries: Vec<IndexEntry> = (first..last)
                    .map(|i| {
                        let e = self.entry(i);
                        if s.synced[i] {
                            e
                        } else {
                            still_dirty |= !e.is_empty();
                            IndexEntry::default()
                        }
                    })
                    .collect();
                if still_dirty {
                    s.dirty.insert(b);
                }
                out.push((
                    b,
                    encode_index_block(&self.cache_uuid, self.generation, b, &entries),
                ));
            }
            out
        };
        let taken = || blocks.iter().map(|(b, _)| *b).collect::<Vec<_>>();
        let mut buf = AlignedBuf::new(BLOCK_BYTES);
        for (b, bytes) in &blocks {
            buf.copy_from_slice(bytes);
            if let Err(e) = self.pwrite(&buf, self.layout.index_block_off(*b)) {
                return fail(e, Vec::new(), pending, taken());
            }
        }
        if let Err(e) = self.sync() {
            return fail(e, Vec::new(), pending, taken());
        }
        // Rule 2: only now are the emptied slots' cleared entries durable.
        lock(&self.slots).free.extend(pending);
        Ok(())
    }

    /// A clean close's flush: the index ([`Cache::sync_index`]), then the
    /// counters in the superblock (written nowhere else but at format).
    pub fn flush(&self) -> Result<()> {
        self.sync_index()?;
        if self.is_off() {
            return Ok(());
        }
        let r = self.write_super().and_then(|()| self.sync());
        if let Err(e) = &r {
            self.io_error("superblock", e);
        }
        r
    }

    /// Write the superblock with the counters up to now.
    fn write_super(&self) -> Result<()> {
        let c = self.counters.get();
        let b = &self.base;
        self.write_super_with(CacheCounters {
            hits: b.hits + c.hits,
            misses: b.misses + c.misses,
            evictions: b.evictions + c.evictions,
            inserts: b.inserts + c.inserts,
            corrupt: b.corrupt + c.corrupt,
        })
    }

    fn write_super_with(&self, counters: CacheCounters) -> Result<()> {
        let sup = CacheSuper {
            cache_uuid: self.cache_uuid,
            owner: self.image,
            generation: self.generation,
            layout: self.layout,
            counters,
            journal_gen: self.journal_gen.load(Ordering::SeqCst),
        };
        let mut buf = AlignedBuf::new(BLOCK_BYTES);
        buf.copy_from_slice(&sup.encode());
        self.pwrite(&buf, 0)
    }

    /// Describe the cache file at `path` for `image` without changing it.
    /// `None` if there is no file.
    pub fn inspect(path: &Path, image: ImageUuid) -> Result<Option<CacheInfo>> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("open {}", path.display()), e)),
        };
        let bytes = io::device_size(&file, path)?;
        let mut info = CacheInfo {
            path: path.display().to_string(),
            bytes,
            formatted: false,
            owner_match: false,
            chunks: 0,
            valid_chunks: 0,
            counters: CacheCounters::default(),
        };
        let mut b = vec![0u8; BLOCK_BYTES];
        if bytes < BLOCK_BYTES as u64 {
            return Ok(Some(info));
        }
        io::read_exact_at(&file, &mut b, 0, path)?;
        let Ok(s) = CacheSuper::decode(&b) else {
            return Ok(Some(info));
        };
        if s.layout.file_bytes != bytes {
            return Ok(Some(info));
        }
        info.formatted = true;
        info.owner_match = s.owner == image;
        info.chunks = s.layout.nchunks as u64;
        info.counters = s.counters;
        for no in 0..s.layout.index_blocks {
            io::read_exact_at(&file, &mut b, s.layout.index_block_off(no), path)?;
            if let Ok(es) = decode_index_block(&b, &s.cache_uuid, s.generation, no) {
                info.valid_chunks += es.iter().filter(|e| !e.is_empty()).count() as u64;
            }
        }
        Ok(Some(info))
    }
}

/// The object ended before the bytes the map points at.
fn short(obj: ObjSeq, chunk: u32, have: usize, within: usize, need: usize) -> Error {
    let base = chunk as u64 * CHUNK_BYTES;
    Error::new(
        ErrorKind::Corrupt,
        format!(
            "object {obj} is shorter than its map says ({} bytes, need {need} at byte {})",
            base + have as u64,
            base + within as u64
        ),
    )
}

fn shard_of(key: Key) -> usize {
    let h = key.0 .0.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ (key.1 as u64).wrapping_mul(0xff51_afd7_ed55_8ccd);
    (h >> 58) as usize % SHARDS
}
