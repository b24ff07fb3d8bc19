//! The read path: the open and in-flight batches (the overlay), then the
//! durable map, whose extents are read through the read cache or from the
//! backend (`rcache.rs`, `verify.rs`), and a clone's parent for its holes.

use crate::error::{Error, ErrorKind, Result};
use crate::units::{Lba, ObjSeq, SECTOR};

use super::batch::PendLoc;
use super::{Inner, Volume};

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
}
