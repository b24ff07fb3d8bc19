//! Which ranges of an image hold data: the allocation query behind
//! `export`'s holes and the NBD export's `base:allocation` block status.
//! No I/O: it reads the overlay (writes acknowledged but not yet in the
//! durable map) under the state lock, then the durable map, then a clone's
//! parent for its holes, as [`Volume::plan_read`] does, so a range that was
//! written but not destaged is data, and a trimmed or zeroed one is not.

use super::batch::PendLoc;
use super::Volume;
use crate::error::{Error, ErrorKind, Result};
use crate::units::{Lba, SECTOR};

/// A run of an image: `len` bytes that hold data, or that read as zeros
/// and take no space (unmapped, trimmed, zeroed: a hole).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Bytes (a multiple of 512).
    pub len: u64,
    /// Data (may still be zeros written as data); false: a hole.
    pub data: bool,
}

/// What one piece of the range is, before a clone's parent is asked.
#[derive(Clone, Copy)]
enum Piece {
    Data,
    Hole,
    /// A clone's hole below its parent's size: what the parent holds.
    Parent,
}

/// Append `len` bytes of `data` to `out`, merging with the last run.
fn push(out: &mut Vec<Extent>, len: u64, data: bool) {
    if len == 0 {
        return;
    }
    match out.last_mut() {
        Some(last) if last.data == data => last.len += len,
        _ => out.push(Extent { len, data }),
    }
}

impl Volume {
    /// The allocation of `[offset, offset + len)` (sector aligned, inside
    /// the image) as consecutive runs covering it, adjacent runs of the
    /// same kind merged. A range that changes concurrently may be reported
    /// as either version (as a read may see either).
    pub fn allocation(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let inner = &self.inner;
        inner.check_range("allocation query", offset, len)?;
        let lba = offset / SECTOR;
        let n = len / SECTOR;
        // (lba, sectors, what the overlay says; None: ask the durable map)
        let mut pend: Vec<(u64, u64, Option<Piece>)> = Vec::new();
        {
            let st = inner.lock_state();
            if st.closed && st.journal.is_none() {
                return Err(Error::new(
                    ErrorKind::Closed,
                    format!("image {} is closed", inner.image),
                ));
            }
            st.overlay.for_each_piece(Lba(lba), n, |plba, plen, t| {
                let p = match t {
                    // A batch already applied to the durable map: the map
                    // holds that version or a newer one (as for a read).
                    Some(PendLoc::Data { batch, .. })
                        if st.open.id != batch && !st.sealed.contains_key(&batch) =>
                    {
                        None
                    }
                    Some(PendLoc::Data { .. }) => Some(Piece::Data),
                    Some(PendLoc::Zero { .. }) => Some(Piece::Hole),
                    None => None,
                };
                pend.push((plba.0, plen, p));
            });
        }
        // The durable map after the state lock is released, and without
        // holding its lock while a parent is asked.
        let mut pieces: Vec<(u64, u64, Piece)> = Vec::with_capacity(pend.len());
        if pend.iter().any(|p| p.2.is_none()) {
            let map = inner.durable.read().unwrap_or_else(|e| e.into_inner());
            let parent_sectors = inner.live_parent().map_or(0, |p| p.sectors);
            let mut found = Vec::new();
            for &(plba, plen, p) in &pend {
                if let Some(p) = p {
                    pieces.push((plba, plen, p));
                    continue;
                }
                found.clear();
                map.lookup(Lba(plba), plen, &mut found);
                for &(mlba, mlen, loc) in &found {
                    match loc {
                        None if mlba.0 < parent_sectors => {
                            let through = mlen.min(parent_sectors - mlba.0);
                            pieces.push((mlba.0, through, Piece::Parent));
                            pieces.push((mlba.0 + through, mlen - through, Piece::Hole));
                        }
                        None => pieces.push((mlba.0, mlen, Piece::Hole)),
                        // A clone's zero marker.
                        Some(l) if l.is_zero() => pieces.push((mlba.0, mlen, Piece::Hole)),
                        Some(_) => pieces.push((mlba.0, mlen, Piece::Data)),
                    }
                }
            }
        } else {
            pieces.extend(
                pend.iter()
                    .map(|&(l, n, p)| (l, n, p.unwrap_or(Piece::Hole))),
            );
        }
        let mut out = Vec::new();
        for (plba, plen, p) in pieces {
            match p {
                Piece::Data => push(&mut out, plen * SECTOR, true),
                Piece::Hole => push(&mut out, plen * SECTOR, false),
                Piece::Parent => match inner.live_parent() {
                    Some(parent) => {
                        for e in parent.volume.allocation(plba * SECTOR, plen * SECTOR)? {
                            push(&mut out, e.len, e.data);
                        }
                    }
                    // Flattened meanwhile: the clone's own objects hold
                    // what the parent did; ask again.
                    None => {
                        for e in self.allocation(plba * SECTOR, plen * SECTOR)? {
                            push(&mut out, e.len, e.data);
                        }
                    }
                },
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::Extent;
    use crate::backend::{MemStore, ObjectStore};
    use crate::volume::test_open;

    fn runs(v: &[(u64, bool)]) -> Vec<Extent> {
        v.iter().map(|&(len, data)| Extent { len, data }).collect()
    }

    /// Writes still in the open batch (no age-based sealing here) are data
    /// and a trim inside them a hole; after a close and reopen the durable
    /// map gives the same answer.
    #[test]
    fn overlay_then_durable_map() {
        const K: u64 = 1024;
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
        crate::volume::image::create_image(store.as_ref(), "img", 4 << 20).unwrap();
        let v = test_open(dir.path(), store.clone(), true);
        assert_eq!(v.allocation(0, 4 << 20).unwrap(), runs(&[(4 << 20, false)]));
        v.write(64 * K, &vec![7u8; 64 * K as usize]).unwrap();
        v.trim(80 * K, 4 * K).unwrap();
        let want = runs(&[
            (64 * K, false),
            (16 * K, true),
            (4 * K, false),
            (44 * K, true),
            (896 * K, false),
        ]);
        assert_eq!(v.allocation(0, 1 << 20).unwrap(), want);
        // A range inside one run; a sub-range starting in a hole.
        assert_eq!(v.allocation(68 * K, 4 * K).unwrap(), runs(&[(4 * K, true)]));
        assert_eq!(
            v.allocation(60 * K, 8 * K).unwrap(),
            runs(&[(4 * K, false), (4 * K, true)])
        );
        // Misaligned or past the end: refused.
        assert!(v.allocation(100, 512).is_err());
        assert!(v.allocation(4 << 20, 512).is_err());
        v.close().unwrap();
        let v = test_open(dir.path(), store, true);
        assert_eq!(v.allocation(0, 1 << 20).unwrap(), want);
        v.close().unwrap();
    }
}
