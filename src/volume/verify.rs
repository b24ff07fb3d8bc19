//! End-to-end data checksums on the read path (DESIGN point 11): every byte
//! of a data or GC object that comes back from the store is checked against
//! the chunk crcs in the object's header (format version 2, 64 KiB chunks
//! aligned to the read cache's) before it is served, cached or copied by GC.
//!
//! - [`Inner::fetch_verified`] is the one place object data is read from
//!   the store: a ranged read is widened to whole chunks, every chunk is
//!   checked, and only then are the asked bytes handed on (to the read
//!   cache, which caches them, or straight to the reader or GC).
//! - The crc table of an object comes from its header, kept in
//!   [`ChunkTables`] (bounded): filled when this session puts an object,
//!   and otherwise by reading the header at the object's first use.
//! - A bad chunk is an error of kind `Corrupt` (EIO at the block device and
//!   NBD), logged with the image, object, offset and the `corrupt_chunks`
//!   counter. Nothing of it reaches a reader, the cache or a GC object.
//! - Version-1 objects have one crc of the whole data area: ranged reads of
//!   them are served unverified, as before. What is *copied* into a new
//!   object (GC, `flatten`) never comes from such a read: it comes from a
//!   copy of the whole object read and checked against that crc
//!   ([`Inner::read_for_copy`]; the last few such copies are kept), so rot
//!   in an old object is never laundered into a new one with valid crcs,
//!   whenever it happened.
//!
//! Locks: `ChunkTables::map`, `loading`, `legacy` and `last_log` are
//! leaves, never held across I/O or while taking another lock. A per-object
//! mutex from `loading` is held across that object's header read (and
//! while taking the leaves).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::error;

use super::Inner;
use crate::catalog::image::object_name;
use crate::error::{Error, ErrorKind, Result};
use crate::format::chunks::{ChunkCrcs, ChunkError, DataCheck};
use crate::format::gcobject::{self, GcHeader};
use crate::format::object::{self, ObjectHeader, FIXED_BYTES};
use crate::units::{ObjSeq, SECTOR};

/// Crc tables kept in memory, at most (about 600 bytes each for an 8 MiB
/// object: 64 K objects of 8 MiB, 512 GiB of data, in about 40 MB).
pub(crate) const MAX_TABLES: usize = 65536;
/// The first bad chunks of an open are all logged; later ones at most once
/// per [`LOG_EVERY`] (the counter counts every one).
const LOG_FIRST: u64 = 16;
const LOG_EVERY: Duration = Duration::from_secs(1);
/// Verified whole copies of version-1 objects kept for copying out of
/// (GC reads the live extents of a few victims in LBA order, alternating
/// between them): at most this many objects' data in memory, only while
/// an image still has version-1 objects to copy from.
const LEGACY_COPIES: usize = 4;

/// How an object's data can be checked.
#[derive(Debug)]
pub(crate) enum ObjCheck {
    /// Version 2: one crc per 64 KiB chunk.
    Chunks(ChunkCrcs),
    /// Version 1: one crc of the whole data area, at `header_bytes`.
    Whole {
        header_bytes: u32,
        data_sectors: u32,
        crc: u32,
    },
}

impl ObjCheck {
    fn from_header(header_bytes: u32, data_sectors: u32, check: DataCheck) -> ObjCheck {
        match check {
            DataCheck::Chunks(t) => ObjCheck::Chunks(t),
            DataCheck::Whole(crc) => ObjCheck::Whole {
                header_bytes,
                data_sectors,
                crc,
            },
        }
    }
}

/// The crc tables of objects this open has read or written, and verified
/// whole copies of the version-1 objects copied out of last.
#[derive(Default)]
pub(crate) struct ChunkTables {
    map: Mutex<HashMap<ObjSeq, Arc<ObjCheck>>>,
    /// One header read per object at a time: concurrent first readers of
    /// an object wait on its entry's mutex for the first one's table.
    loading: Mutex<HashMap<ObjSeq, Arc<Mutex<()>>>>,
    legacy: Mutex<VecDeque<(ObjSeq, Arc<Vec<u8>>)>>,
    last_log: Mutex<Option<Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ChunkTables {
    fn get(&self, obj: ObjSeq) -> Option<Arc<ObjCheck>> {
        lock(&self.map).get(&obj).cloned()
    }

    /// Keep `t` for `obj`; when full, an arbitrary eighth of the tables is
    /// dropped first (they are read again from their headers if needed).
    pub(crate) fn insert(&self, obj: ObjSeq, t: ObjCheck) -> Arc<ObjCheck> {
        let t = Arc::new(t);
        let mut m = lock(&self.map);
        if m.len() >= MAX_TABLES {
            let drop: Vec<ObjSeq> = m.keys().take(MAX_TABLES / 8).copied().collect();
            for k in drop {
                m.remove(&k);
            }
        }
        m.insert(obj, t.clone());
        t
    }

    /// Forget `obj` (deleted).
    pub(crate) fn remove(&self, obj: ObjSeq) {
        lock(&self.map).remove(&obj);
        lock(&self.legacy).retain(|(o, _)| *o != obj);
    }

    /// Tables held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.map).len()
    }
}

impl Inner {
    /// The checksums of object `obj`, from memory or its header (one get of
    /// 4 KiB, more only for a header that long). A missing object fails
    /// with `NotFound`; a header that is bad or belongs elsewhere with
    /// `Corrupt`.
    pub(crate) fn object_check(&self, obj: ObjSeq) -> Result<Arc<ObjCheck>> {
        if let Some(t) = self.chunk_tables.get(obj) {
            return Ok(t);
        }
        let tables = &self.chunk_tables;
        let slot = lock(&tables.loading).entry(obj).or_default().clone();
        let r = {
            let _one = lock(&slot);
            match tables.get(obj) {
                Some(t) => Ok(t),
                None => self.load_check(obj),
            }
        };
        lock(&tables.loading).remove(&obj);
        r
    }

    /// Read object `obj`'s header and keep its checksums.
    fn load_check(&self, obj: ObjSeq) -> Result<Arc<ObjCheck>> {
        let name = object_name(&self.image, obj);
        let first = self.store.get(&name, 0, 4096)?;
        let bad = |why: String| -> Error {
            self.note_corrupt(&name, 0, &why);
            Error::new(ErrorKind::Corrupt, format!("object {name}: {why}"))
        };
        let (uuid, seq, check) = if first.len() >= 8 && &first[..8] == gcobject::MAGIC {
            let need = GcHeader::needed_bytes(&first).map_err(|e| bad(e.to_string()))?;
            let buf = if need > first.len() {
                self.store.get(&name, 0, need)?
            } else {
                first
            };
            let h = GcHeader::decode(&buf).map_err(|e| bad(e.to_string()))?;
            let c = ObjCheck::from_header(h.header_bytes, h.data_sectors, h.data_check);
            (h.uuid, h.seq, c)
        } else if first.len() >= FIXED_BYTES && &first[..8] == object::MAGIC {
            let need = ObjectHeader::needed_bytes(&first).map_err(|e| bad(e.to_string()))?;
            let buf = if need > first.len() {
                self.store.get(&name, 0, need)?
            } else {
                first
            };
            let h = ObjectHeader::decode(&buf).map_err(|e| bad(e.to_string()))?;
            let c = ObjCheck::from_header(h.header_bytes, h.data_sectors, h.data_check);
            (h.uuid, h.seq, c)
        } else {
            return Err(bad("not a data or GC object".into()));
        };
        if uuid != self.uuid || seq != obj {
            return Err(bad(format!(
                "header names image {uuid} object {seq}, not this one"
            )));
        }
        Ok(self.chunk_tables.insert(obj, check))
    }

    /// Read `len` bytes of object `obj` at object-relative `off` from the
    /// store, verified: the read is widened to whole chunks and every chunk
    /// checked before the asked bytes are returned (fewer at the object's
    /// end, as the store returns them). Version-1 objects are read as
    /// asked, unverified.
    pub(crate) fn fetch_verified(&self, obj: ObjSeq, off: u64, len: usize) -> Result<Vec<u8>> {
        let check = self.object_check(obj)?;
        let name = || object_name(&self.image, obj);
        let t = match &*check {
            ObjCheck::Chunks(t) => t,
            ObjCheck::Whole { .. } => {
                let d = self.store.get(&name(), off, len)?;
                self.stats.backend_reads.fetch_add(1, Ordering::Relaxed);
                return Ok(d);
            }
        };
        let r = t.covering(off, len as u64);
        let mut d = self
            .store
            .get(&name(), r.start, (r.end - r.start) as usize)?;
        self.stats.backend_reads.fetch_add(1, Ordering::Relaxed);
        match t.verify(r.start, &d) {
            Ok(n) => {
                self.stats
                    .chunks_verified
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => return Err(self.bad_chunk(&name(), &e)),
        }
        let a = ((off - r.start) as usize).min(d.len());
        let b = (a + len).min(d.len());
        if a == 0 {
            d.truncate(b);
            Ok(d)
        } else {
            Ok(d[a..b].to_vec())
        }
    }

    /// Read `out.len()` bytes of object `obj` at object-relative
    /// `byte_off` for copying into a new object (GC, `flatten`): a
    /// version-2 object as every read (each chunk verified, through the
    /// read cache); a version-1 object from a copy of it read whole and
    /// checked against its data crc now or for a recent copy (never from a
    /// ranged read, which cannot be verified). A bad one is `Corrupt`.
    pub(crate) fn read_for_copy(&self, obj: ObjSeq, byte_off: u64, out: &mut [u8]) -> Result<()> {
        let check = self.object_check(obj)?;
        let ObjCheck::Whole {
            header_bytes,
            data_sectors,
            crc,
        } = *check
        else {
            return self.read_object_range(obj, byte_off, out);
        };
        let name = object_name(&self.image, obj);
        let kept = lock(&self.chunk_tables.legacy)
            .iter()
            .find(|(o, _)| *o == obj)
            .map(|(_, b)| b.clone());
        let bytes = match kept {
            Some(b) => b,
            None => {
                let end = u64::from(header_bytes) + u64::from(data_sectors) * SECTOR;
                let bytes = self.store.get(&name, 0, end as usize)?;
                self.stats.backend_reads.fetch_add(1, Ordering::Relaxed);
                DataCheck::Whole(crc)
                    .verify_object("data", header_bytes, data_sectors, &bytes)
                    .map_err(|e| {
                        self.note_corrupt(&name, u64::from(header_bytes), &e.to_string());
                        Error::new(
                            ErrorKind::Corrupt,
                            format!("object {name} (format version 1): {e}"),
                        )
                    })?;
                let bytes = Arc::new(bytes);
                let mut l = lock(&self.chunk_tables.legacy);
                if l.len() >= LEGACY_COPIES {
                    l.pop_back();
                }
                l.push_front((obj, bytes.clone()));
                bytes
            }
        };
        let a = byte_off as usize;
        match bytes.get(a..a + out.len()) {
            Some(src) => {
                out.copy_from_slice(src);
                Ok(())
            }
            None => Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "object {name} is shorter than its map says ({} bytes at byte {byte_off}, it has {})",
                    out.len(),
                    bytes.len()
                ),
            )),
        }
    }

    /// The error for a bad chunk of object `name` (counted and logged).
    fn bad_chunk(&self, name: &str, e: &ChunkError) -> Error {
        self.note_corrupt(name, e.offset(), &e.to_string());
        let err = Error::new(ErrorKind::Corrupt, format!("object {name}: {e}"));
        match e {
            // One chunk's bytes are bad: the others of a run may be good.
            ChunkError::Mismatch { offset, .. } => err.in_chunk(*offset),
            // The object ends early: every later chunk is short too.
            _ => err,
        }
    }

    /// Count a corrupt chunk (or header) and log it: the first ones always,
    /// then at most once a second.
    fn note_corrupt(&self, name: &str, offset: u64, why: &str) {
        let n = self.stats.corrupt_chunks.fetch_add(1, Ordering::Relaxed) + 1;
        let now = Instant::now();
        let mut last = lock(&self.chunk_tables.last_log);
        if n <= LOG_FIRST || last.is_none_or(|t| now.duration_since(t) >= LOG_EVERY) {
            *last = Some(now);
            drop(last);
            error!(image = %self.image, object = %name, offset, corrupt_chunks = n,
                "object data fails its checksum; not served, cached or copied: {why}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::backend::{MemStore, ObjectStore};
    use crate::config::Config;
    use crate::error::ErrorKind;
    use crate::format::gcobject::{self, GcHeader};
    use crate::format::object::{ObjOp, ObjectHeader, OpKind};
    use crate::format::superblock::{Superblock, INCOMPAT_CHUNK_CRCS};
    use crate::units::{JournalSeq, Lba, ObjSeq};
    use crate::volume::image::{create_image, object_name};
    use crate::volume::{Volume, VolumeOptions};

    fn bytes(seed: u8, n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u32).wrapping_mul(2654435761).rotate_left(seed as u32) as u8)
            .collect()
    }

    fn config(dir: &std::path::Path) -> Config {
        Config {
            no_gc: true,
            no_rcache: true,
            gc_threshold: 90,
            hard_flush: true,
            backend_obj_bytes: 256 << 10,
            wlog_chunk_bytes: 64 << 10,
            rcache_dir: dir.join("rcache"),
            wlog_bytes: 4 << 20,
            ..Config::default()
        }
    }

    fn incompat(store: &MemStore) -> u64 {
        Superblock::decode(&store.get("img", 0, 1 << 20).unwrap())
            .unwrap()
            .incompat
    }

    /// An image written by a build before chunk checksums (version-1
    /// objects): it opens and reads as before (ranged reads of a version-1
    /// object cannot be verified), the superblock gets no new bit until a
    /// version-2 object is put, and GC copies out of a version-1 object
    /// only after checking it whole, so a flipped bit is refused there too.
    #[test]
    fn version_1_objects_still_read_and_gc_checks_them_whole() {
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        let mem = Arc::new(MemStore::new());
        let store: Arc<dyn ObjectStore> = mem.clone();
        let uuid = create_image(store.as_ref(), "img", 8 << 20).unwrap();
        let write = |lba: u64, sectors: u32| ObjOp {
            lba: Lba(lba),
            sectors,
            kind: OpKind::Write,
            data_offset: 0,
        };
        let a = bytes(1, 256 << 10);
        let b = bytes(2, (256 << 10) - 4096);
        let o1 =
            ObjectHeader::encode_object_v1(uuid, ObjSeq(1), JournalSeq(1), &[write(0, 512)], &a);
        let o2 =
            ObjectHeader::encode_object_v1(uuid, ObjSeq(2), JournalSeq(2), &[write(8, 504)], &b);
        store.put(&object_name("img", ObjSeq(1)), &o1).unwrap();
        store.put(&object_name("img", ObjSeq(2)), &o2).unwrap();
        let mut model = a.clone();
        model[4096..].copy_from_slice(&b);
        let v = Volume::open(VolumeOptions {
            config: config(dir.path()),
            store: store.clone(),
            image: "img".into(),
            journal_path: dir.path().join("img.wlog"),
            io_log: None,
        })
        .unwrap();
        let mut buf = vec![0u8; 256 << 10];
        v.read(0, &mut buf).unwrap();
        assert!(buf == model, "version-1 objects read back");
        assert_eq!(v.stats().chunks_verified, 0);
        assert_eq!(incompat(&mem) & INCOMPAT_CHUNK_CRCS, 0, "nothing put yet");
        // A bit of the victim's live data rots.
        let name1 = object_name("img", ObjSeq(1));
        let mut bad = o1.clone();
        bad[4096 + 100] ^= 2;
        store.put(&name1, &bad).unwrap();
        // Ranged reads of a version-1 object are not verified (as before).
        let mut first = vec![0u8; 4096];
        v.read(0, &mut first).unwrap();
        assert_eq!(first[100], model[100] ^ 2);
        // GC checks the whole object first and refuses to copy it.
        let e = v.gc_now().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
        assert!(e.to_string().contains(&name1), "{e}");
        assert!(v.stats().corrupt_chunks > 0);
        for n in store.list("img.").unwrap() {
            let o = store.get(&n, 0, 1 << 24).unwrap();
            if o.len() >= 8 && &o[..8] == gcobject::MAGIC {
                let h = GcHeader::decode(&o).unwrap();
                assert!(h.moves.iter().all(|m| m.src_obj != ObjSeq(1)), "{n}");
            }
        }
        assert_eq!(incompat(&mem) & INCOMPAT_CHUNK_CRCS, 0, "still nothing put");
        v.close().unwrap();
        // Repaired: a new open cleans it into a version-2 GC object, and the
        // superblock says so before that object exists.
        store.put(&name1, &o1).unwrap();
        let v = Volume::open(VolumeOptions {
            config: config(dir.path()),
            store: store.clone(),
            image: "img".into(),
            journal_path: dir.path().join("img.wlog"),
            io_log: None,
        })
        .unwrap();
        let r = v.gc_now().unwrap();
        assert!(r.objects_cleaned > 0, "{r:?}");
        assert_ne!(incompat(&mem) & INCOMPAT_CHUNK_CRCS, 0);
        v.read(0, &mut buf).unwrap();
        assert!(buf == model, "after GC");
        assert!(
            v.stats().chunks_verified > 0,
            "reads of the GC object verified"
        );
        v.close().unwrap();
    }

    /// Tables of objects put by this open are known without a header read;
    /// others are read from the header once.
    #[test]
    fn tables_come_from_puts_or_one_header_read() {
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
        create_image(store.as_ref(), "img", 8 << 20).unwrap();
        let config = config(dir.path());
        let opts = || VolumeOptions {
            config: config.clone(),
            store: store.clone(),
            image: "img".into(),
            journal_path: dir.path().join("img.wlog"),
            io_log: None,
        };
        let v = Volume::open(opts()).unwrap();
        let data = bytes(3, 1 << 20);
        v.write(0, &data).unwrap();
        v.flush().unwrap();
        let n = v.inner.chunk_tables.len();
        assert!(n >= 4, "{n} tables after four objects");
        let reads = v.stats().backend_reads;
        let mut buf = vec![0u8; 4096];
        v.read(300 << 10, &mut buf).unwrap();
        assert_eq!(v.stats().backend_reads, reads + 1, "no header read");
        v.close().unwrap();
        let v = Volume::open(opts()).unwrap();
        assert_eq!(v.inner.chunk_tables.len(), 0);
        v.read(300 << 10, &mut buf).unwrap();
        v.read(304 << 10, &mut buf).unwrap();
        assert!(buf[..] == data[304 << 10..308 << 10]);
        assert_eq!(v.inner.chunk_tables.len(), 1);
        assert_eq!(v.stats().chunks_verified, 2);
        v.close().unwrap();
    }

    /// Found by review: a version-1 object checked whole once (here as a
    /// GC plug source) was trusted for the rest of the open; rot that
    /// landed afterwards was copied by a later GC run through unverified
    /// ranged reads into a version-2 GC object with valid chunk crcs, and
    /// served as good data. Now GC copies only from a verified whole copy:
    /// the read returns the original bytes or an error, never the rotten
    /// byte.
    #[test]
    fn later_rot_in_a_version_1_object_is_never_laundered_by_gc() {
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        let mem = Arc::new(MemStore::new());
        let store: Arc<dyn ObjectStore> = mem.clone();
        let uuid = create_image(store.as_ref(), "img", 8 << 20).unwrap();
        let op = |lba: u64, sectors: u32, kind: OpKind, data_offset: u32| ObjOp {
            lba: Lba(lba),
            sectors,
            kind,
            data_offset,
        };
        // X (object 1): LBA 0..2048, mostly live throughout.
        let a = bytes(1, 2048 * 512);
        let ox = ObjectHeader::encode_object_v1(
            uuid,
            ObjSeq(1),
            JournalSeq(1),
            &[op(0, 2048, OpKind::Write, 0)],
            &a,
        );
        // Y (object 2): LBA 0..64 and 72..136 live (X's 64..72 between
        // them is a plug), plus 2048 dead sectors: a victim.
        let b = bytes(2, 2176 * 512);
        let oy = ObjectHeader::encode_object_v1(
            uuid,
            ObjSeq(2),
            JournalSeq(2),
            &[
                op(0, 64, OpKind::Write, 0),
                op(72, 64, OpKind::Write, 64),
                op(2048, 2048, OpKind::Write, 128),
                op(2048, 2048, OpKind::Trim, 0),
            ],
            &b,
        );
        store.put(&object_name("img", ObjSeq(1)), &ox).unwrap();
        store.put(&object_name("img", ObjSeq(2)), &oy).unwrap();
        let mut model = a.clone();
        model[..64 * 512].copy_from_slice(&b[..64 * 512]);
        model[72 * 512..136 * 512].copy_from_slice(&b[64 * 512..128 * 512]);
        let c = Config {
            gc_threshold: 60,
            ..config(dir.path())
        };
        let v = Volume::open(VolumeOptions {
            config: c,
            store: store.clone(),
            image: "img".into(),
            journal_path: dir.path().join("img.wlog"),
            io_log: None,
        })
        .unwrap();
        // GC run 1 cleans Y, plugging with X's 64..72: X is checked whole.
        let r = v.gc_now().unwrap();
        assert!(r.objects_cleaned >= 1, "{r:?}");
        assert!(
            super::lock(&v.inner.chunk_tables.legacy)
                .iter()
                .any(|(o, _)| *o == ObjSeq(1)),
            "X checked whole (plug source)"
        );
        // Later in the same open, a bit of X's live data rots at rest.
        let hb = 4096usize;
        let name1 = object_name("img", ObjSeq(1));
        let mut rotten = mem.get(&name1, 0, 1 << 24).unwrap();
        rotten[hb + 1500 * 512 + 7] ^= 0x40;
        store.put(&name1, &rotten).unwrap();
        // Clients overwrite most of X: it becomes a victim.
        let w = bytes(3, (1100 - 136) * 512);
        v.write(136 * 512, &w).unwrap();
        v.flush().unwrap();
        model[136 * 512..1100 * 512].copy_from_slice(&w);
        // GC run 2 copies X's live data (ranged reads, never re-checked).
        let r2 = v.gc_now();
        let mut sector = vec![0u8; 512];
        let read = v.read(1500 * 512, &mut sector);
        let gc_copied_rot = mem.list("img.").unwrap().iter().any(|n| {
            let o = mem.get(n, 0, 1 << 24).unwrap();
            o.len() >= 8
                && &o[..8] == gcobject::MAGIC
                && GcHeader::decode(&o).unwrap().moves.iter().any(|m| {
                    m.src_obj == ObjSeq(1) && m.lba.0 <= 1500 && 1500 < m.lba.0 + m.sectors as u64
                })
        });
        eprintln!(
            "gc run 2: {r2:?}; read: {read:?}; corrupt_chunks {}; GC object holds X's LBA 1500: {gc_copied_rot}",
            v.stats().corrupt_chunks
        );
        match read {
            Err(e) => assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}"),
            Ok(()) => assert!(
                sector[..] == model[1500 * 512..1501 * 512],
                "rotten byte of a version-1 object laundered by GC into a version-2 GC object \
                 and served as verified data (gc run 2: {r2:?})"
            ),
        }
        v.close().unwrap();
    }

    /// Found by review: `flatten` copied a clone's parent data through
    /// ranged reads of the parent; a version-1 parent object (snapshot
    /// objects are pinned, so they stay version 1 after an upgrade) was
    /// read unverified and its rotten bytes written into the clone's new
    /// version-2 objects with valid chunk crcs. Now flatten reads for
    /// copying (a version-1 object checked whole) and refuses.
    #[test]
    fn flatten_refuses_rot_in_a_version_1_parent() {
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        let mem = Arc::new(MemStore::new());
        let store: Arc<dyn ObjectStore> = mem.clone();
        let uuid = create_image(store.as_ref(), "base", 8 << 20).unwrap();
        let a = bytes(5, 256 << 10);
        let o1 = ObjectHeader::encode_object_v1(
            uuid,
            ObjSeq(1),
            JournalSeq(1),
            &[ObjOp {
                lba: Lba(0),
                sectors: 512,
                kind: OpKind::Write,
                data_offset: 0,
            }],
            &a,
        );
        let name1 = object_name("base", ObjSeq(1));
        store.put(&name1, &o1).unwrap();
        let opts = |image: &str| VolumeOptions {
            config: config(dir.path()),
            store: store.clone(),
            image: image.into(),
            journal_path: dir.path().join(format!("{image}.wlog")),
            io_log: None,
        };
        let base = Volume::open(opts("base")).unwrap();
        base.snapshot_create("gold").unwrap();
        base.close().unwrap();
        crate::volume::clone_image(store.as_ref(), "base", "gold", "child").unwrap();
        // The parent's version-1 object rots at rest.
        let mut bad = o1.clone();
        bad[4096 + 100 * 512 + 3] ^= 0x20;
        store.put(&name1, &bad).unwrap();
        let child = Volume::open(opts("child")).unwrap();
        let f = child.flatten();
        let mut sector = vec![0u8; 512];
        let read = child.read(100 * 512, &mut sector);
        eprintln!(
            "flatten: {:?}; child read: {read:?}; child chunks_verified {}",
            f.as_ref().map(|r| r.copied_bytes),
            child.stats().chunks_verified
        );
        child.close().unwrap();
        assert!(
            f.is_err(),
            "flatten copied unverified version-1 parent bytes into version-2 objects"
        );
    }
}
