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
//!   them are served unverified, as before. GC copies out of one only after
//!   reading it whole once and checking that crc
//!   ([`Inner::verify_legacy_once`]), so old objects are not laundered
//!   either.
//!
//! Locks: `ChunkTables::map`, `loading`, `legacy_ok` and `last_log` are
//! leaves, never held across I/O or while taking another lock. A per-object
//! mutex from `loading` is held across that object's header read (and
//! while taking the leaves).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::error;

use super::image::object_name;
use super::Inner;
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

/// The crc tables of objects this open has read or written, and the
/// version-1 objects already verified whole (for GC).
#[derive(Default)]
pub(crate) struct ChunkTables {
    map: Mutex<HashMap<ObjSeq, Arc<ObjCheck>>>,
    /// One header read per object at a time: concurrent first readers of
    /// an object wait on its entry's mutex for the first one's table.
    loading: Mutex<HashMap<ObjSeq, Arc<Mutex<()>>>>,
    legacy_ok: Mutex<HashSet<ObjSeq>>,
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
        lock(&self.legacy_ok).remove(&obj);
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

    /// For GC: a version-1 object is read whole once and its data crc
    /// checked before anything is copied out of it (a ranged read of it
    /// cannot be verified). Version-2 objects need nothing here: every
    /// read of them is verified.
    pub(crate) fn verify_legacy_once(&self, obj: ObjSeq) -> Result<()> {
        let check = self.object_check(obj)?;
        let ObjCheck::Whole {
            header_bytes,
            data_sectors,
            crc,
        } = *check
        else {
            return Ok(());
        };
        if lock(&self.chunk_tables.legacy_ok).contains(&obj) {
            return Ok(());
        }
        let name = object_name(&self.image, obj);
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
        let mut ok = lock(&self.chunk_tables.legacy_ok);
        if ok.len() >= MAX_TABLES {
            ok.clear();
        }
        ok.insert(obj);
        Ok(())
    }

    /// The error for a bad chunk of object `name` (counted and logged).
    fn bad_chunk(&self, name: &str, e: &ChunkError) -> Error {
        self.note_corrupt(name, e.offset(), &e.to_string());
        Error::new(ErrorKind::Corrupt, format!("object {name}: {e}"))
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
}
