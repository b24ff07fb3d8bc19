//! Persistent read cache: one local O_DIRECT file per image holding 64 KiB
//! chunks of backend objects (layout in [`crate::format::rcache`]).
//!
//! Chunks are keyed by (object sequence, object-relative offset / 64 KiB)
//! of the owner image. Objects are immutable once put, so a cached chunk
//! can never be stale; recovery may delete objects above a gap and reuse
//! their sequences, so [`Cache::open`] drops every entry above the last
//! object recovery kept.
//!
//! Crash ordering (see also `docs/format.md`, "Read cache"):
//! 1. **Index after data.** A chunk's data is written (O_DIRECT) and the
//!    file fdatasynced before any index block naming it is written; the
//!    index blocks are then fdatasynced. A crash loses recent entries but a
//!    persisted entry never names unwritten data.
//! 2. **Invalidate before reuse.** An evicted slot's entry is cleared, and
//!    its index block written and fdatasynced, before new data lands in the
//!    slot, so a persisted entry never covers another key's bytes.
//!
//! The per-4 KiB-block crc (which mixes in the cache UUID, image UUID,
//! object, chunk and block number) is checked on every hit: a block that
//! fails is counted as corrupt, its entry dropped and the chunk refetched.
//!
//! Eviction is CLOCK (a reference bit per slot, in memory). The key index
//! is sharded 16 ways so concurrent readers rarely share a lock. Concurrent
//! misses on one chunk wait for a single backend fetch.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use tracing::{info, warn};

use crate::error::{Error, ErrorKind, Result};
use crate::format::rcache::{
    block_crc, decode_index_block, encode_index_block, CacheCounters, CacheSuper, IndexEntry,
    Layout, BLOCKS_PER_CHUNK, BLOCK_BYTES, CHUNK_BYTES, ENTRIES_PER_BLOCK,
};
use crate::io::{self, AlignedBuf};
use crate::units::{ImageUuid, ObjSeq};

#[cfg(test)]
mod tests;

const SHARDS: usize = 16;
/// Slots freed at once when the cache is full.
const EVICT_GROUP: usize = 64;
/// Index blocks read or written per I/O at open and format.
const INDEX_IO_BLOCKS: usize = 256;

/// (object, chunk number).
type Key = (ObjSeq, u32);

/// Reads `len` bytes of the object at a byte offset (fewer at its end).
pub type Fetch<'a> = &'a dyn Fn(u64, usize) -> Result<Vec<u8>>;

#[derive(Clone, Copy, Default)]
struct Slot {
    entry: IndexEntry,
    /// Bumped whenever the slot's entry is cleared: a reader that saw the
    /// same epoch before and after its read knows nothing rewrote the slot.
    epoch: u64,
    /// The slot's data is known durable (fdatasynced), so its entry may be
    /// written to the index.
    synced: bool,
    referenced: bool,
}

#[derive(Default)]
struct Slots {
    v: Vec<Slot>,
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

#[derive(Default)]
struct Flight {
    result: Mutex<Option<Result<Arc<Vec<u8>>>>>,
    cv: Condvar,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    inserts: AtomicU64,
    corrupt: AtomicU64,
}

impl Counters {
    fn get(&self) -> CacheCounters {
        CacheCounters {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            inserts: self.inserts.load(Ordering::Relaxed),
            corrupt: self.corrupt.load(Ordering::Relaxed),
        }
    }
}

/// An open read-cache file.
pub struct Cache {
    path: PathBuf,
    file: File,
    image: ImageUuid,
    cache_uuid: [u8; 16],
    generation: u64,
    layout: Layout,
    shards: Vec<Mutex<HashMap<Key, u32>>>,
    slots: Mutex<Slots>,
    flush_lock: Mutex<()>,
    inflight: Mutex<HashMap<Key, Arc<Flight>>>,
    /// Counters persisted before this open.
    base: CacheCounters,
    /// Counters of this open.
    counters: Counters,
    /// `counters` as last written to the superblock.
    written_counters: Mutex<CacheCounters>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What `info` shows about an image's cache file (read without opening it
/// for writing; the counters lag an attached server by one index flush).
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
    /// Persisted counters.
    pub counters: CacheCounters,
}

impl Cache {
    /// Open (or create, or reformat) the cache file at `path` for `image`,
    /// `bytes` long. Entries for objects above `last_obj` are dropped:
    /// recovery may reuse those sequences for new objects.
    pub fn open(path: &Path, image: ImageUuid, bytes: u64, last_obj: ObjSeq) -> Result<Cache> {
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
                Ok(s) => sup = Some(s),
            }
        }
        let mut cache = Cache {
            path: path.to_path_buf(),
            file,
            image,
            cache_uuid: [0; 16],
            generation: 0,
            layout,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            slots: Mutex::new(Slots::default()),
            flush_lock: Mutex::new(()),
            inflight: Mutex::new(HashMap::new()),
            base: CacheCounters::default(),
            counters: Counters::default(),
            written_counters: Mutex::new(CacheCounters::default()),
        };
        match sup {
            Some(s) => cache.load(s, last_obj)?,
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
        self.generation = u64::from_le_bytes(self.cache_uuid[..8].try_into().unwrap_or_default());
        let n = self.layout.nchunks as usize;
        {
            let mut s = lock(&self.slots);
            s.v = vec![Slot::default(); n];
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

    /// Load the index of a valid superblock of ours.
    fn load(&mut self, s: CacheSuper, last_obj: ObjSeq) -> Result<()> {
        self.cache_uuid = s.cache_uuid;
        self.generation = s.generation;
        self.base = s.counters;
        let n = self.layout.nchunks as usize;
        let blocks = self.layout.index_blocks as usize;
        let mut slots = Slots {
            v: vec![Slot::default(); n],
            ..Slots::default()
        };
        let (mut bad, mut stale, mut kept) = (0u64, 0u64, 0u64);
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
                    let key = (e.obj, e.chunk);
                    let shard = &mut lock(&self.shards[shard_of(key)]);
                    if slot >= n || e.obj > last_obj || shard.contains_key(&key) {
                        stale += 1;
                        slots.dirty.insert(no);
                        continue;
                    }
                    shard.insert(key, slot as u32);
                    slots.v[slot] = Slot {
                        entry: e,
                        epoch: 0,
                        synced: true,
                        referenced: false,
                    };
                    kept += 1;
                }
            }
            b0 += k;
        }
        slots.free = (0..n as u32)
            .rev()
            .filter(|&i| slots.v[i as usize].entry.is_empty())
            .collect();
        self.counters.corrupt.fetch_add(bad, Ordering::Relaxed);
        let dirty = !slots.dirty.is_empty();
        *lock(&self.slots) = slots;
        info!(cache = %self.path.display(), chunks = kept, bad_index_blocks = bad, dropped = stale, "read cache opened");
        if dirty {
            // The dropped entries are cleared on disk before any slot is
            // reused (the free list's slots are already empty on disk, or
            // in an undecodable block, which reads as empty).
            self.flush()?;
        }
        Ok(())
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Counters since this open.
    pub fn counters(&self) -> CacheCounters {
        self.counters.get()
    }

    /// Chunk slots in the file.
    pub fn chunks(&self) -> u32 {
        self.layout.nchunks
    }

    /// Chunks held now.
    pub fn valid_chunks(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// Read `out.len()` bytes of object `obj` at `byte_off` (object-relative,
    /// header included), from the cache where it holds them and otherwise by
    /// fetching whole chunks with `fetch` (which are then cached).
    pub fn read(&self, obj: ObjSeq, byte_off: u64, out: &mut [u8], fetch: Fetch<'_>) -> Result<()> {
        // (chunk, offset in chunk, range in `out`) of each chunk touched.
        let mut pieces = Vec::new();
        let mut pos = 0usize;
        while pos < out.len() {
            let off = byte_off + pos as u64;
            let chunk = u32::try_from(off / CHUNK_BYTES).map_err(|_| {
                Error::new(
                    ErrorKind::InvalidInput,
                    format!("object offset {off} is beyond the cache's range"),
                )
            })?;
            let within = (off % CHUNK_BYTES) as usize;
            let n = (out.len() - pos).min(CHUNK_BYTES as usize - within);
            pieces.push((chunk, within, pos..pos + n));
            pos += n;
        }
        if pieces.len() == 1 {
            let (chunk, within, _) = pieces[0];
            return self.read_in_chunk((obj, chunk), within, out, fetch);
        }
        // A multi-chunk read: hits first, then each run of missing chunks
        // with one backend get (not one per chunk), cached chunk by chunk.
        let mut missing = Vec::new();
        for (chunk, within, r) in pieces {
            if self.try_hit((obj, chunk), within, &mut out[r.clone()])? {
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
            } else {
                missing.push((chunk, within, r));
            }
        }
        let mut i = 0;
        while i < missing.len() {
            let mut j = i + 1;
            while j < missing.len() && missing[j].0 == missing[j - 1].0 + 1 {
                j += 1;
            }
            if j - i == 1 {
                let (chunk, within, r) = missing[i].clone();
                self.read_in_chunk((obj, chunk), within, &mut out[r], fetch)?;
            } else {
                let first = missing[i].0;
                let n = j - i;
                let data = fetch(first as u64 * CHUNK_BYTES, n * CHUNK_BYTES as usize)?;
                self.counters.misses.fetch_add(n as u64, Ordering::Relaxed);
                for (chunk, within, r) in &missing[i..j] {
                    let at = (chunk - first) as usize * CHUNK_BYTES as usize;
                    let c = &data[at.min(data.len())..(at + CHUNK_BYTES as usize).min(data.len())];
                    if c.len() < within + r.len() {
                        return Err(short(obj, *chunk, c.len(), *within, r.len()));
                    }
                    out[r.clone()].copy_from_slice(&c[*within..within + r.len()]);
                    if let Err(e) = self.insert((obj, *chunk), c) {
                        warn!(cache = %self.path.display(), "read cache insert failed (the read is served anyway): {e}");
                    }
                }
            }
            i = j;
        }
        Ok(())
    }

    fn read_in_chunk(
        &self,
        key: Key,
        within: usize,
        out: &mut [u8],
        fetch: Fetch<'_>,
    ) -> Result<()> {
        if self.try_hit(key, within, out)? {
            self.counters.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let data = self.fetch_chunk(key, fetch)?;
        if data.len() < within + out.len() {
            return Err(short(key.0, key.1, data.len(), within, out.len()));
        }
        out.copy_from_slice(&data[within..within + out.len()]);
        Ok(())
    }

    /// Serve `out` from the cache if it holds the bytes and they verify.
    fn try_hit(&self, key: Key, within: usize, out: &mut [u8]) -> Result<bool> {
        let Some(slot) = lock(&self.shards[shard_of(key)]).get(&key).copied() else {
            return Ok(false);
        };
        let (entry, epoch) = {
            let mut s = lock(&self.slots);
            let sl = &mut s.v[slot as usize];
            if sl.entry.is_empty() || (sl.entry.obj, sl.entry.chunk) != key {
                return Ok(false);
            }
            sl.referenced = true;
            (sl.entry, sl.epoch)
        };
        if within + out.len() > entry.len as usize {
            return Ok(false);
        }
        let b0 = within / BLOCK_BYTES;
        let b1 = (within + out.len()).div_ceil(BLOCK_BYTES);
        let mut buf = AlignedBuf::new((b1 - b0) * BLOCK_BYTES);
        let off = self.layout.slot_off(slot) + (b0 * BLOCK_BYTES) as u64;
        io::read_exact_at(&self.file, &mut buf, off, &self.path)?;
        let mut s = lock(&self.slots);
        if s.v[slot as usize].epoch != epoch {
            // Evicted and maybe rewritten while we read: just a miss.
            return Ok(false);
        }
        for blk in b0..b1 {
            let valid = (entry.len as usize - blk * BLOCK_BYTES).min(BLOCK_BYTES);
            let at = (blk - b0) * BLOCK_BYTES;
            let data = &buf[at..at + valid];
            let c = block_crc(&self.cache_uuid, self.image, key.0, key.1, blk as u32, data);
            if c != entry.crcs[blk] {
                warn!(cache = %self.path.display(), object = key.0 .0, chunk = key.1, block = blk,
                    "read cache block fails its checksum: dropped and refetched");
                self.counters.corrupt.fetch_add(1, Ordering::Relaxed);
                self.clear_slot(&mut s, slot);
                drop(s);
                let mut shard = lock(&self.shards[shard_of(key)]);
                if shard.get(&key) == Some(&slot) {
                    shard.remove(&key);
                }
                return Ok(false);
            }
        }
        drop(s);
        let from = within - b0 * BLOCK_BYTES;
        out.copy_from_slice(&buf[from..from + out.len()]);
        Ok(true)
    }

    /// Empty `slot` in memory; it becomes reusable only after its index
    /// block is rewritten (rule 2).
    fn clear_slot(&self, s: &mut Slots, slot: u32) {
        let sl = &mut s.v[slot as usize];
        sl.entry = IndexEntry::default();
        sl.epoch += 1;
        sl.synced = false;
        sl.referenced = false;
        s.dirty.insert(slot / ENTRIES_PER_BLOCK as u32);
        s.pending_free.push(slot);
    }

    /// The whole chunk `key`, fetched once however many readers miss on it
    /// at the same time; an error reaches every one of them.
    fn fetch_chunk(&self, key: Key, fetch: Fetch<'_>) -> Result<Arc<Vec<u8>>> {
        let (flight, leader) = {
            let mut m = lock(&self.inflight);
            match m.get(&key) {
                Some(f) => (f.clone(), false),
                None => {
                    let f = Arc::new(Flight::default());
                    m.insert(key, f.clone());
                    (f, true)
                }
            }
        };
        if !leader {
            let mut g = lock(&flight.result);
            loop {
                if let Some(r) = g.as_ref() {
                    return match r {
                        Ok(d) => Ok(d.clone()),
                        Err(e) => Err(e.duplicate()),
                    };
                }
                g = flight.cv.wait(g).unwrap_or_else(|e| e.into_inner());
            }
        }
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        let r = fetch(key.1 as u64 * CHUNK_BYTES, CHUNK_BYTES as usize).map(Arc::new);
        {
            let mut g = lock(&flight.result);
            *g = Some(match &r {
                Ok(d) => Ok(d.clone()),
                Err(e) => Err(e.duplicate()),
            });
            flight.cv.notify_all();
        }
        if let Ok(d) = &r {
            if let Err(e) = self.insert(key, d) {
                warn!(cache = %self.path.display(), "read cache insert failed (the read is served anyway): {e}");
            }
        }
        lock(&self.inflight).remove(&key);
        r
    }

    /// Cache a whole object (as it was put): every chunk of `bytes`.
    pub fn insert_object(&self, obj: ObjSeq, bytes: &[u8]) -> Result<()> {
        for (i, c) in bytes.chunks(CHUNK_BYTES as usize).enumerate() {
            self.insert((obj, i as u32), c)?;
        }
        Ok(())
    }

    /// Cache chunk `key` (its first `data.len()` bytes; shorter than 64 KiB
    /// only at the object's end). A chunk already held is left alone.
    fn insert(&self, key: Key, data: &[u8]) -> Result<()> {
        if data.is_empty() || data.len() as u64 > CHUNK_BYTES || !data.len().is_multiple_of(512) {
            return Ok(());
        }
        if lock(&self.shards[shard_of(key)]).contains_key(&key) {
            return Ok(());
        }
        let slot = self.alloc_slot()?;
        let mut buf = AlignedBuf::new(data.len().div_ceil(BLOCK_BYTES) * BLOCK_BYTES);
        buf[..data.len()].copy_from_slice(data);
        let mut crcs = [0u32; BLOCKS_PER_CHUNK];
        for (blk, d) in data.chunks(BLOCK_BYTES).enumerate() {
            crcs[blk] = block_crc(&self.cache_uuid, self.image, key.0, key.1, blk as u32, d);
        }
        // Rule 2: `alloc_slot` hands out only slots whose entry is empty in
        // the durable index, so these bytes are named by no persisted entry
        // until a flush has synced them (rule 1).
        if let Err(e) = io::write_all_at(&self.file, &buf, self.layout.slot_off(slot), &self.path) {
            lock(&self.slots).free.push(slot);
            return Err(e);
        }
        {
            let mut shard = lock(&self.shards[shard_of(key)]);
            if shard.contains_key(&key) {
                drop(shard);
                // Another thread cached it meanwhile; the slot's durable
                // entry is still empty.
                lock(&self.slots).free.push(slot);
                return Ok(());
            }
            shard.insert(key, slot);
        }
        let mut s = lock(&self.slots);
        let sl = &mut s.v[slot as usize];
        sl.entry = IndexEntry {
            obj: key.0,
            chunk: key.1,
            len: data.len() as u32,
            crcs,
        };
        sl.synced = false;
        sl.referenced = true;
        let epoch = sl.epoch;
        s.unsynced.push((slot, epoch));
        s.dirty.insert(slot / ENTRIES_PER_BLOCK as u32);
        self.counters.inserts.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Inserts not yet covered by a flush.
    pub fn unflushed(&self) -> usize {
        lock(&self.slots).unsynced.len()
    }

    /// A slot that is empty in the durable index, evicting (CLOCK) and
    /// flushing the invalidation first when none is free.
    fn alloc_slot(&self) -> Result<u32> {
        for _ in 0..4 {
            {
                let mut s = lock(&self.slots);
                if let Some(x) = s.free.pop() {
                    return Ok(x);
                }
                if s.pending_free.is_empty() {
                    self.evict(&mut s);
                }
            }
            // Rule 2: the evicted entries are cleared on disk before their
            // slots move to the free list.
            self.flush()?;
        }
        Err(Error::new(
            ErrorKind::NoSpace,
            format!("read cache {}: no slot could be freed", self.path.display()),
        ))
    }

    /// CLOCK: empty up to [`EVICT_GROUP`] slots into `pending_free`.
    fn evict(&self, s: &mut Slots) {
        let n = s.v.len();
        let mut freed = 0;
        for _ in 0..2 * n {
            if freed == EVICT_GROUP {
                break;
            }
            let i = s.hand;
            s.hand = (s.hand + 1) % n;
            let sl = &mut s.v[i];
            if sl.entry.is_empty() {
                continue;
            }
            if sl.referenced {
                sl.referenced = false;
                continue;
            }
            let key = (sl.entry.obj, sl.entry.chunk);
            lock(&self.shards[shard_of(key)]).remove(&key);
            self.clear_slot(s, i as u32);
            freed += 1;
        }
        self.counters
            .evictions
            .fetch_add(freed as u64, Ordering::Relaxed);
    }

    /// Make the index match memory for every entry whose data is durable,
    /// release slots emptied before this flush, and persist the counters.
    pub fn flush(&self) -> Result<()> {
        let _g = lock(&self.flush_lock);
        let (unsynced, pending) = {
            let mut s = lock(&self.slots);
            if s.dirty.is_empty() && s.unsynced.is_empty() && s.pending_free.is_empty() {
                if self.counters.get() != *lock(&self.written_counters) {
                    // Only counters changed (hits): persist them alone.
                    drop(s);
                    self.write_super()?;
                    return io::datasync(&self.file, &self.path);
                }
                return Ok(());
            }
            (
                std::mem::take(&mut s.unsynced),
                std::mem::take(&mut s.pending_free),
            )
        };
        // Rule 1: the chunk data written so far is durable before any index
        // block naming it is written.
        io::datasync(&self.file, &self.path)?;
        let blocks: Vec<(u32, Vec<u8>)> = {
            let mut s = lock(&self.slots);
            for (slot, epoch) in unsynced {
                let sl = &mut s.v[slot as usize];
                if sl.epoch == epoch && !sl.entry.is_empty() {
                    sl.synced = true;
                }
            }
            let dirty = std::mem::take(&mut s.dirty);
            let mut out = Vec::with_capacity(dirty.len());
            for b in dirty {
                let first = b as usize * ENTRIES_PER_BLOCK;
                let last = (first + ENTRIES_PER_BLOCK).min(s.v.len());
                let mut still_dirty = false;
                let entries: Vec<IndexEntry> = s.v[first..last]
                    .iter()
                    .map(|sl| {
                        if sl.synced {
                            sl.entry
                        } else {
                            still_dirty |= !sl.entry.is_empty();
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
        let mut buf = AlignedBuf::new(BLOCK_BYTES);
        for (b, bytes) in blocks {
            buf.copy_from_slice(&bytes);
            io::write_all_at(&self.file, &buf, self.layout.index_block_off(b), &self.path)?;
        }
        self.write_super()?;
        io::datasync(&self.file, &self.path)?;
        // Rule 2: only now are the emptied slots' cleared entries durable.
        lock(&self.slots).free.extend(pending);
        Ok(())
    }

    fn write_super(&self) -> Result<()> {
        let c = self.counters.get();
        *lock(&self.written_counters) = c;
        let b = &self.base;
        let sup = CacheSuper {
            cache_uuid: self.cache_uuid,
            owner: self.image,
            generation: self.generation,
            layout: self.layout,
            counters: CacheCounters {
                hits: b.hits + c.hits,
                misses: b.misses + c.misses,
                evictions: b.evictions + c.evictions,
                inserts: b.inserts + c.inserts,
                corrupt: b.corrupt + c.corrupt,
            },
        };
        let mut buf = AlignedBuf::new(BLOCK_BYTES);
        buf.copy_from_slice(&sup.encode());
        io::write_all_at(&self.file, &buf, 0, &self.path)
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
    (h >> 59) as usize % SHARDS
}
