//! The read path: the open and in-flight batches (the overlay), then the
//! durable map, whose extents are read through the read cache or from the
//! backend (`rcache.rs`, `verify.rs`), and a clone's parent for its holes.
//!
//! A read runs in two halves, so that a ublk queue serves what it can on
//! its own thread ([`crate::ublk`]):
//!
//! 1. [`Volume::plan_read`] never does I/O. Under the state lock it copies
//!    what memory holds (the open batch and sealed batches not yet applied
//!    to the durable map), zeros and unwritten ranges straight into the
//!    caller's buffer; it then looks the rest up in the durable map and
//!    returns it as remote pieces (object ranges) and parent reads (a
//!    clone's holes).
//! 2. The caller serves remote pieces the read cache holds itself (the
//!    queue reads them with io_uring on its own ring,
//!    [`crate::cache::Cache::plan_hit`]) and drops them from the plan
//!    ([`ReadPlan::retain_remote`]).
//! 3. [`Volume::finish_read`] reads what is left (the cache's misses go to
//!    the backend, blocking) on any thread.
//!
//! [`Volume::read`] is the two halves back to back.
//!
//! Why the halves may run at different times: the plan copies the memory
//! pieces under the state lock and takes the map's answer for the rest
//! after it (as the one-piece read always did): a hole in the overlay means
//! every batch that wrote there is already applied to the durable map, so
//! the map holds that version or a newer one written concurrently with
//! this read. Objects never change once put, so a remote piece read later
//! returns the bytes the map named; an object garbage collection deleted
//! meanwhile is looked up again ([`Inner::reread_moved`]). A read that
//! overlaps a write in flight may see either version of each sector (the
//! block layer promises nothing more).

use super::batch::PendLoc;
use super::{Inner, Volume};
use crate::error::{Error, ErrorKind, Result};
use crate::units::{Lba, ObjSeq, SECTOR};

/// A range of a read that memory did not hold: `len` bytes of object `obj`
/// at object-relative byte `byte_off` (header included, as the map stores
/// offsets), for the caller's buffer at `at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemotePiece {
    /// Object sequence.
    pub obj: ObjSeq,
    /// Object-relative byte offset.
    pub byte_off: u64,
    /// Offset in the read's buffer.
    pub at: usize,
    /// Bytes.
    pub len: usize,
}

/// What a read still needs after [`Volume::plan_read`].
#[derive(Debug, Default)]
pub struct ReadPlan {
    /// The read's byte offset in the image.
    offset: u64,
    /// Object ranges to read.
    remote: Vec<RemotePiece>,
    /// A clone's holes: (byte offset in the parent, buffer offset, bytes).
    parent: Vec<(u64, usize, usize)>,
}

impl ReadPlan {
    /// Nothing left to read: the buffer is complete.
    pub fn is_done(&self) -> bool {
        self.remote.is_empty() && self.parent.is_empty()
    }

    /// The object ranges left.
    pub fn remote(&self) -> &[RemotePiece] {
        &self.remote
    }

    /// Keep only the object ranges for which `keep` is true (the caller
    /// served the others itself).
    pub fn retain_remote(&mut self, keep: impl FnMut(&RemotePiece) -> bool) {
        self.remote.retain(keep);
    }

    /// The buffer ranges (offset, bytes) that [`Volume::finish_read`]
    /// fills; every other byte of the buffer is final after the plan.
    pub fn pending_ranges(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.remote
            .iter()
            .map(|p| (p.at, p.len))
            .chain(self.parent.iter().map(|&(_, at, len)| (at, len)))
    }
}

impl Inner {
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
}

impl Volume {
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

    pub(super) fn read_mode(&self, offset: u64, buf: &mut [u8], copy: bool) -> Result<()> {
        let plan = self.plan_read(offset, buf)?;
        self.finish_read(plan, buf, copy)
    }

    /// The first half of a read of `buf.len()` bytes at `offset` (module
    /// doc): fills `buf` from memory and returns what is left to read. No
    /// I/O; takes the state lock and the durable map's read lock briefly.
    pub fn plan_read(&self, offset: u64, buf: &mut [u8]) -> Result<ReadPlan> {
        let inner = &self.inner;
        inner.check_range("read", offset, buf.len() as u64)?;
        let lba = offset / SECTOR;
        let n = buf.len() as u64 / SECTOR;
        let mut plan = ReadPlan {
            offset,
            ..ReadPlan::default()
        };
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
        // object); see the module doc for why that is safe.
        if holes.is_empty() {
            return Ok(plan);
        }
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
                        // A clone's hole reads through to its parent below
                        // the parent's size.
                        Some(p) if plba.0 < p.sectors => {
                            let through = plen.min(p.sectors - plba.0);
                            let tb = (through * SECTOR) as usize;
                            plan.parent.push((plba.0 * SECTOR, b0, tb));
                            buf[b0 + tb..b0 + bytes].fill(0);
                        }
                        _ => buf[b0..b0 + bytes].fill(0),
                    },
                    // A clone's zero marker.
                    Some(l) if l.is_zero() => buf[b0..b0 + bytes].fill(0),
                    Some(l) => {
                        let byte_off = l.offset as u64 * SECTOR;
                        if let Some(last) = plan.remote.last_mut() {
                            if last.obj == l.obj
                                && last.byte_off + last.len as u64 == byte_off
                                && last.at + last.len == b0
                            {
                                last.len += bytes;
                                continue;
                            }
                        }
                        plan.remote.push(RemotePiece {
                            obj: l.obj,
                            byte_off,
                            at: b0,
                            len: bytes,
                        });
                    }
                }
            }
        }
        Ok(plan)
    }

    /// The second half of a read (module doc): read what `plan` left into
    /// the same buffer `plan_read` filled, through the read cache or from
    /// the backend (blocking), and a clone's holes from its parent. With
    /// `copy`, version-1 objects are read whole and checked
    /// ([`Volume::read_for_copy`]).
    pub fn finish_read(&self, plan: ReadPlan, buf: &mut [u8], copy: bool) -> Result<()> {
        let inner = &self.inner;
        let offset = plan.offset;
        let lba = offset / SECTOR;
        for p in plan.remote {
            let out = &mut buf[p.at..p.at + p.len];
            let r = if copy {
                inner.read_for_copy(p.obj, p.byte_off, out)
            } else {
                inner.read_object_range(p.obj, p.byte_off, out)
            };
            let r = match r {
                // Garbage collection may delete an object between our map
                // lookup and the read: look the range up again.
                Err(e) if e.kind() == ErrorKind::NotFound => inner.reread_moved(
                    Lba(lba + p.at as u64 / SECTOR),
                    p.len as u64 / SECTOR,
                    out,
                    p.obj,
                    e,
                ),
                r => r,
            };
            r.map_err(|e| {
                let e = e.prefixed(format!("read of {} at {offset}", inner.image));
                if e.kind() != ErrorKind::NotFound {
                    e
                } else if self.unlocked_reader {
                    // Nothing but a removal deletes a snapshot's objects.
                    Error::new(
                        ErrorKind::NotFound,
                        format!(
                            "{}: the snapshot was probably removed while read (this \
                             reader could not take its reader lock)",
                            e.duplicate().context()
                        ),
                    )
                } else {
                    // The map still points at the object after a fresh
                    // lookup (`reread_moved`), so GC did not move it: an
                    // object of an existing image is gone from the store.
                    // That is lost data, not a missing image (whose
                    // NotFound a caller may take as "no such image").
                    Error::new(
                        ErrorKind::Corrupt,
                        format!(
                            "{}: the object is missing from the store although the \
                             image's map points at it (lost or removed outside \
                             lsvd-ublk; `lsvd-ublk scrub` lists every such object)",
                            e.duplicate().context()
                        ),
                    )
                }
            })?;
        }
        for (poff, b0, bytes) in plan.parent {
            let out = &mut buf[b0..b0 + bytes];
            let r = match inner.live_parent() {
                Some(p) => p.volume.read_mode(poff, out, copy),
                // Flattened since the plan: every byte the parent held there
                // is now in this clone's own objects (flatten copies before
                // it cuts the link, and the parent may be removed after), so
                // the range is read again from this volume. (A clone's
                // offsets are its parent's.)
                None => self.read_mode(poff, out, copy),
            };
            r.map_err(|e| {
                e.prefixed(format!(
                    "read of {} at {offset} from its parent",
                    inner.image
                ))
            })?;
        }
        Ok(())
    }

    /// The image's read cache, if it has one (for reads served on the
    /// caller's own ring: [`crate::cache::Cache::plan_hit`]).
    pub fn read_cache(&self) -> Option<&std::sync::Arc<crate::cache::Cache>> {
        self.inner.cache.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::backend::{MemStore, ObjectStore};
    use crate::config::Config;
    use crate::io::AlignedBuf;
    use crate::volume::VolumeOptions;

    use crate::volume::test_open as open;

    fn pattern(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// The whole read done the way a ublk queue does it: plan, serve the
    /// cache's hits by a read of the cache file into the buffer (as the
    /// queue's io_uring READ does), then finish the rest.
    fn queue_read(v: &Volume, offset: u64, len: usize) -> (Vec<u8>, usize, usize) {
        let mut buf = AlignedBuf::new(len);
        let mut plan = v.plan_read(offset, &mut buf[..]).unwrap();
        let planned = plan.remote().len();
        let mut served = Vec::new();
        if let Some(c) = v.read_cache() {
            for p in plan.remote() {
                let Some(parts) = c.plan_hits(p.obj, p.byte_off, p.len) else {
                    continue;
                };
                let mut whole = true;
                for (at, h) in parts {
                    let out = &mut buf[p.at + at..p.at + at + h.nbytes];
                    let f = std::fs::File::open(c.path()).unwrap();
                    let r = crate::io::read_exact_at(&f, out, h.file_off, c.path());
                    let n = if r.is_ok() {
                        h.nbytes as i32
                    } else {
                        -libc::EIO
                    };
                    whole &= c.finish_hit(&h, n, out);
                }
                if whole {
                    served.push(*p);
                }
            }
        }
        plan.retain_remote(|p| !served.contains(p));
        v.finish_read(plan, &mut buf[..], false).unwrap();
        (buf[..].to_vec(), planned, served.len())
    }

    #[test]
    fn memory_serves_a_read_whole_and_the_rest_is_planned() {
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
        crate::volume::image::create_image(store.as_ref(), "img", 4 << 20).unwrap();
        let v = open(dir.path(), store.clone(), false);
        let a = pattern(1, 65536);
        v.write(0, &a).unwrap();
        v.write_zeroes(65536, 8192).unwrap();
        // In the open batch, zeros and never written: no I/O left.
        let mut buf = vec![0xffu8; 3 * 65536];
        let plan = v.plan_read(0, &mut buf).unwrap();
        assert!(plan.is_done());
        assert_eq!(plan.pending_ranges().count(), 0);
        assert_eq!(&buf[..65536], &a[..]);
        assert!(buf[65536..].iter().all(|&b| b == 0));
        v.close().unwrap();

        // After a reopen the data is in an object: planned as one remote
        // piece (the zeros and the unwritten tail are filled by the plan).
        // A cold cache (destage filled it).
        std::fs::remove_file(crate::volume::rcache_path(
            &dir.path().join("rcache"),
            "img",
        ))
        .unwrap();
        let v = open(dir.path(), store.clone(), false);
        let b = pattern(2, 4096);
        v.write(8192, &b).unwrap();
        let mut buf = vec![0xffu8; 3 * 65536];
        let plan = v.plan_read(0, &mut buf).unwrap();
        let ranges: Vec<_> = plan.pending_ranges().collect();
        assert_eq!(ranges, vec![(0, 8192), (12288, 65536 - 12288)]);
        assert_eq!(&buf[8192..12288], &b[..], "the new write, from memory");
        assert!(buf[65536..].iter().all(|&x| x == 0));
        let mut expect = a.clone();
        expect[8192..12288].copy_from_slice(&b);
        // Cold cache: every piece goes to finish_read (the backend).
        let inserts = v.stats().cache_inserts;
        let (got, planned, served) = queue_read(&v, 0, 65536);
        assert_eq!((planned, served), (2, 0));
        assert!(got == expect);
        // The cache's maintainer thread writes the fetched chunks.
        let cache = v.inner.cache.clone().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while cache.pending_inserts() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(v.stats().cache_inserts > inserts);
        // Now cached: the same pieces are served by cache-file reads, the
        // way a queue serves them, and the rest of the read is untouched.
        let (got, planned, served) = queue_read(&v, 0, 65536);
        assert_eq!((planned, served), (2, 2));
        assert!(got == expect);
        // Pieces not in whole 4 KiB blocks are not planned as ring hits
        // but still read.
        let (got, planned, served) = queue_read(&v, 1536, 2560);
        assert_eq!((planned, served), (1, 0));
        assert_eq!(&got[..], &expect[1536..4096]);
        // The one-call read is the same two halves.
        let mut one = vec![0u8; 65536];
        v.read(0, &mut one).unwrap();
        assert!(one == expect);
        v.close().unwrap();
    }

    /// A clone's read planned with parent reads, then the clone flattened
    /// and the parent snapshot's objects gone (removable after the cut):
    /// the rest of the read comes from the clone's own copy, not from the
    /// parent (an error) and not left unwritten (stale bytes).
    #[test]
    fn a_clone_read_planned_before_a_flatten_finishes_from_the_copy() {
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        let mem = Arc::new(MemStore::new());
        let store: Arc<dyn ObjectStore> = mem.clone();
        crate::volume::image::create_image(store.as_ref(), "img", 4 << 20).unwrap();
        let base = open(dir.path(), store.clone(), true);
        let a = pattern(3, 65536);
        base.write(0, &a).unwrap();
        base.snapshot_create("gold").unwrap();
        base.close().unwrap();
        crate::volume::clone_image(store.as_ref(), "img", "gold", "child").unwrap();
        let mut opts = VolumeOptions {
            config: Config {
                no_rcache: true,
                wlog_bytes: 4 << 20,
                wlog_chunk_bytes: 64 << 10,
                backend_obj_bytes: 256 << 10,
                ..Config::default()
            },
            store: store.clone(),
            image: "child".into(),
            journal_path: dir.path().join("child.wlog"),
            io_log: None,
        };
        opts.config.rcache_dir = dir.path().join("rcache");
        let child = Volume::open(opts).unwrap();
        let mut buf = vec![0xeeu8; 65536];
        let plan = child.plan_read(0, &mut buf).unwrap();
        assert_eq!(plan.pending_ranges().collect::<Vec<_>>(), vec![(0, 65536)]);
        child.flatten().unwrap();
        // The parent's data objects are gone (as after `snap rm` and GC).
        for n in mem.list("img.").unwrap() {
            if !n.ends_with(".super") && n != "img" {
                mem.delete(&n).unwrap();
            }
        }
        child.finish_read(plan, &mut buf, false).unwrap();
        assert!(buf == a);
        child.close().unwrap();
    }

    #[test]
    fn a_plan_out_of_range_is_an_error_and_no_rcache_has_no_cache() {
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
        crate::volume::image::create_image(store.as_ref(), "img", 1 << 20).unwrap();
        let v = open(dir.path(), store, true);
        let mut buf = vec![0u8; 8192];
        let e = v.plan_read((1 << 20) - 4096, &mut buf).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        assert!(v.read_cache().is_none(), "no_rcache");
        v.close().unwrap();
    }
}
