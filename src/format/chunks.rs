//! Per-chunk data checksums of data and GC objects (format version 2).
//!
//! An object is cut into 64 KiB **chunks** at object-relative offsets
//! (header included): chunk *k* is the object bytes
//! `[k * 65536, (k + 1) * 65536)`, exactly the chunks the read cache keys
//! by, so a cache fill reads and verifies whole chunks and nothing more.
//! The header has its own crc, so the crc table lists only the chunks that
//! hold data, from chunk `header_bytes / 65536` to the one holding the last
//! data byte, and each crc covers the **data bytes** of its chunk only:
//! `[max(k * 65536, header_bytes), min((k + 1) * 65536, end))` where `end`
//! is `header_bytes + data bytes`, the object's length. Each crc is a plain
//! crc32c (initial value 0) of those bytes.
//!
//! An object with no data has an empty table.

use std::ops::Range;

/// Bytes per checksummed chunk: the read cache's chunk size.
pub const CHUNK_BYTES: u64 = 65536;

/// The chunk checksums of one object: which bytes each covers, and the crcs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkCrcs {
    header_bytes: u32,
    end: u64,
    crcs: Vec<u32>,
}

/// Why bytes of an object fail [`ChunkCrcs::verify`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// The bytes of a chunk do not match its crc.
    #[error("chunk at byte {offset} ({len} bytes) fails its checksum (stored {stored:#010x}, computed {computed:#010x})")]
    Mismatch {
        /// Object-relative offset of the chunk's first data byte.
        offset: u64,
        /// Data bytes in the chunk.
        len: u64,
        /// The crc in the header.
        stored: u32,
        /// The crc of the bytes read.
        computed: u32,
    },
    /// The bytes end inside a chunk the object should hold in full: the
    /// object is shorter than its header says.
    #[error("object ends at byte {have}, inside the chunk at byte {offset} (the header says the object is {end} bytes)")]
    Short {
        /// Object-relative offset of the chunk's first data byte.
        offset: u64,
        /// Where the bytes read end.
        have: u64,
        /// Where the object should end.
        end: u64,
    },
    /// The bytes start inside a chunk: only whole chunks can be verified
    /// (the caller should have read [`ChunkCrcs::covering`]).
    #[error(
        "bytes from {start} start inside the chunk at byte {offset}, which cannot be verified"
    )]
    Partial {
        /// Object-relative offset of the chunk's first data byte.
        offset: u64,
        /// Where the bytes given start.
        start: u64,
    },
}

impl ChunkError {
    /// Object-relative offset of the chunk at fault.
    pub fn offset(&self) -> u64 {
        match self {
            ChunkError::Mismatch { offset, .. }
            | ChunkError::Short { offset, .. }
            | ChunkError::Partial { offset, .. } => *offset,
        }
    }
}

/// How the data area of a data or GC object is checksummed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataCheck {
    /// Version 1: one crc32c of the whole data area. Only a read of the
    /// whole area can check it, so ranged reads are not verified.
    Whole(u32),
    /// Version 2: one crc32c per 64 KiB chunk.
    Chunks(ChunkCrcs),
}

impl DataCheck {
    /// Verify the data area of a whole `object` (header included, as
    /// stored) whose data of `data_sectors` starts at `header_bytes`.
    /// `what` names the object kind in errors.
    pub fn verify_object(
        &self,
        what: &'static str,
        header_bytes: u32,
        data_sectors: u32,
        object: &[u8],
    ) -> Result<(), super::FormatError> {
        let start = header_bytes as usize;
        let end = start + data_sectors as usize * crate::units::SECTOR as usize;
        if object.len() < end {
            return Err(super::FormatError::Truncated {
                what,
                need: end,
                have: object.len(),
            });
        }
        match self {
            DataCheck::Whole(stored) => {
                let computed = super::crc(0, &object[start..end]);
                if computed != *stored {
                    return Err(super::FormatError::BadChecksum {
                        what,
                        stored: *stored,
                        computed,
                    });
                }
            }
            DataCheck::Chunks(t) => {
                t.verify(0, &object[..end])
                    .map_err(|err| super::FormatError::BadChunk { what, err })?;
            }
        }
        Ok(())
    }
}

impl ChunkCrcs {
    /// The chunk count `c` a header of format version 2 states, checked
    /// against what its header size and data sectors need (`d` names the
    /// structure in the error); 0 for version 1, which has none.
    pub(crate) fn checked_count(
        d: &super::Dec<'_>,
        v2: bool,
        c: usize,
        header_bytes: u32,
        data_sectors: u32,
    ) -> Result<usize, super::FormatError> {
        if !v2 {
            return Ok(0);
        }
        let want = Self::count(header_bytes, u64::from(data_sectors) * crate::units::SECTOR);
        if c != want {
            return Err(d.invalid(format!(
                "{c} chunk checksums for {data_sectors} data sectors after a {header_bytes}-byte header (expected {want})"
            )));
        }
        Ok(c)
    }

    /// Number of chunk crcs of an object whose data area of `data_bytes`
    /// starts at `header_bytes`.
    pub fn count(header_bytes: u32, data_bytes: u64) -> usize {
        if data_bytes == 0 {
            return 0;
        }
        let end = u64::from(header_bytes) + data_bytes;
        (end.div_ceil(CHUNK_BYTES) - u64::from(header_bytes) / CHUNK_BYTES) as usize
    }

    /// The most crcs `data_bytes` of data can need, wherever the data area
    /// starts (what an encoder reserves before it knows `header_bytes`).
    pub fn max_count(data_bytes: u64) -> usize {
        if data_bytes == 0 {
            0
        } else {
            (data_bytes.div_ceil(CHUNK_BYTES) + 1) as usize
        }
    }

    /// Compute the crcs of `data`, the data area starting at `header_bytes`.
    pub fn compute(header_bytes: u32, data: &[u8]) -> ChunkCrcs {
        Self::compute_with_blocks(header_bytes, data, None).0
    }

    /// [`ChunkCrcs::compute`], also returning the crcs of the data's
    /// [`super::CRC_BLOCK`]-byte blocks ([`super::block_crcs`]) the chunk
    /// crcs were joined from: one pass over the data gives both (the
    /// destager keeps the block crcs for the read cache). `known`: those
    /// block crcs, if the caller has them (a batch whose writes brought
    /// them), so that the data is not read at all; they must be right.
    pub fn compute_with_blocks(
        header_bytes: u32,
        data: &[u8],
        known: Option<Vec<u32>>,
    ) -> (ChunkCrcs, Vec<u32>) {
        let want = data.len().div_ceil(super::CRC_BLOCK);
        debug_assert!(
            known.as_ref().is_none_or(|b| b.len() == want),
            "known block crcs cover the data"
        );
        let blocks = known
            .filter(|b| b.len() == want)
            .unwrap_or_else(|| super::block_crcs(data));
        debug_assert_eq!(
            blocks,
            super::block_crcs(data),
            "known block crcs are right"
        );
        let t = Self::from_blocks(header_bytes, data.len() as u64, &blocks).unwrap_or_else(|| {
            // A header not block-aligned (no encoder makes one): each
            // chunk's bytes read again.
            let mut t = ChunkCrcs {
                header_bytes,
                end: u64::from(header_bytes) + data.len() as u64,
                crcs: Vec::new(),
            };
            for i in 0..Self::count(header_bytes, data.len() as u64) {
                let r = t.chunk_range(i);
                let d = &data[(r.start - u64::from(header_bytes)) as usize
                    ..(r.end - u64::from(header_bytes)) as usize];
                t.crcs.push(super::crc(0, d));
            }
            t
        });
        (t, blocks)
    }

    /// The crcs of a data area of `data_bytes` starting at `header_bytes`
    /// (a multiple of [`super::CRC_BLOCK`]), from the crcs of its
    /// [`super::CRC_BLOCK`]-byte blocks ([`super::block_crcs`]): chunk
    /// boundaries are block boundaries of the data area, so each chunk's
    /// crc joins those of its blocks ([`super::crc_concat`]) and no byte is
    /// read again. The destager keeps the block crcs for the read cache,
    /// whose block crcs follow from them the same way. `None` if
    /// `header_bytes` is not block-aligned or `blocks` does not cover
    /// `data_bytes`.
    fn from_blocks(header_bytes: u32, data_bytes: u64, blocks: &[u32]) -> Option<ChunkCrcs> {
        const B: u64 = super::CRC_BLOCK as u64;
        if !u64::from(header_bytes).is_multiple_of(B)
            || blocks.len() as u64 != data_bytes.div_ceil(B)
        {
            return None;
        }
        let hb = u64::from(header_bytes);
        let mut t = ChunkCrcs {
            header_bytes,
            end: hb + data_bytes,
            crcs: Vec::with_capacity(Self::count(header_bytes, data_bytes)),
        };
        for i in 0..Self::count(header_bytes, data_bytes) {
            let r = t.chunk_range(i);
            let (first, last) = ((r.start - hb) / B, (r.end - hb).div_ceil(B));
            let mut c = blocks[first as usize];
            for b in first + 1..last {
                let len = (r.end - hb - b * B).min(B) as usize;
                c = super::crc_concat(c, blocks[b as usize], len);
            }
            t.crcs.push(c);
        }
        Some(t)
    }

    /// The table as decoded: `crcs` must have [`ChunkCrcs::count`] entries.
    pub fn from_parts(header_bytes: u32, data_bytes: u64, crcs: Vec<u32>) -> Option<ChunkCrcs> {
        (crcs.len() == Self::count(header_bytes, data_bytes)).then(|| ChunkCrcs {
            header_bytes,
            end: u64::from(header_bytes) + data_bytes,
            crcs,
        })
    }

    /// The crcs, in chunk order.
    pub fn crcs(&self) -> &[u32] {
        &self.crcs
    }

    /// The object's length: header plus data.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Object-relative byte range of the data that crc `i` covers.
    pub fn chunk_range(&self, i: usize) -> Range<u64> {
        let k = u64::from(self.header_bytes) / CHUNK_BYTES + i as u64;
        (k * CHUNK_BYTES).max(u64::from(self.header_bytes))..((k + 1) * CHUNK_BYTES).min(self.end)
    }

    /// Index of the crc covering object byte `off` (which must be in the
    /// data area).
    fn index_of(&self, off: u64) -> usize {
        (off / CHUNK_BYTES - u64::from(self.header_bytes) / CHUNK_BYTES) as usize
    }

    /// The object bytes to read so that `[off, off + len)` can be verified:
    /// that range widened to whole chunks (chunk boundaries, clipped to the
    /// object's end). Bytes of the header (below `header_bytes`) are not
    /// covered by the table and are left as asked.
    pub fn covering(&self, off: u64, len: u64) -> Range<u64> {
        let hb = u64::from(self.header_bytes);
        let want_end = off.saturating_add(len);
        let start = if off >= hb && off < self.end {
            self.chunk_range(self.index_of(off)).start.min(off)
        } else {
            off
        };
        let end = if want_end > hb && want_end <= self.end {
            self.chunk_range(self.index_of(want_end - 1))
                .end
                .max(want_end)
        } else {
            want_end
        };
        start..end
    }

    /// Verify `bytes`, the object bytes from `start`: every chunk whose
    /// data they touch must be whole in them and match its crc. Returns the
    /// number of chunks checked. Bytes outside the data area are not
    /// checked (the header has its own crc; past the end there is nothing).
    pub fn verify(&self, start: u64, bytes: &[u8]) -> Result<usize, ChunkError> {
        let stop = start + bytes.len() as u64;
        let hb = u64::from(self.header_bytes);
        let lo = start.max(hb);
        let hi = stop.min(self.end);
        if lo >= hi {
            return Ok(0);
        }
        let (first, last) = (self.index_of(lo), self.index_of(hi - 1));
        for i in first..=last {
            let r = self.chunk_range(i);
            if r.start < start {
                return Err(ChunkError::Partial {
                    offset: r.start,
                    start,
                });
            }
            if r.end > stop {
                return Err(ChunkError::Short {
                    offset: r.start,
                    have: stop,
                    end: self.end,
                });
            }
            let d = &bytes[(r.start - start) as usize..(r.end - start) as usize];
            let computed = super::crc(0, d);
            if computed != self.crcs[i] {
                return Err(ChunkError::Mismatch {
                    offset: r.start,
                    len: r.end - r.start,
                    stored: self.crcs[i],
                    computed,
                });
            }
        }
        Ok(last - first + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 253) as u8).collect()
    }

    proptest::proptest! {
        /// The crcs joined from block crcs are those of each chunk's bytes,
        /// wherever the block-aligned header ends and however long the data.
        #[test]
        fn chunk_crcs_from_block_crcs_are_the_chunks_crcs(
            hblocks in 1u32..40,
            sectors in 1usize..600,
            seed in proptest::prelude::any::<u8>(),
        ) {
            let hb = hblocks * 4096;
            let d: Vec<u8> = (0..sectors * 512).map(|i| (i * 7 + seed as usize) as u8).collect();
            let t = ChunkCrcs::compute(hb, &d);
            proptest::prop_assert_eq!(t.crcs().len(), ChunkCrcs::count(hb, d.len() as u64));
            for (i, &c) in t.crcs().iter().enumerate() {
                let r = t.chunk_range(i);
                let bytes = &d[(r.start - u64::from(hb)) as usize..(r.end - u64::from(hb)) as usize];
                proptest::prop_assert_eq!(c, crate::format::crc(0, bytes));
            }
        }
    }

    #[test]
    fn chunks_follow_object_offsets() {
        // Header 4096, data 200 KiB: chunks 0..=3, the first and last short.
        let d = data(200 << 10);
        let t = ChunkCrcs::compute(4096, &d);
        assert_eq!(t.crcs().len(), 4);
        assert_eq!(ChunkCrcs::count(4096, d.len() as u64), 4);
        assert!(ChunkCrcs::max_count(d.len() as u64) >= 4);
        assert_eq!(t.chunk_range(0), 4096..65536);
        assert_eq!(t.chunk_range(1), 65536..131072);
        assert_eq!(t.chunk_range(3), 196608..4096 + (200 << 10));
        assert_eq!(t.crcs()[0], crate::format::crc(0, &d[..65536 - 4096]));
        // A header of exactly one chunk: the data starts chunk 1.
        let t = ChunkCrcs::compute(65536, &d[..65536]);
        assert_eq!(t.crcs().len(), 1);
        assert_eq!(t.chunk_range(0), 65536..131072);
        // No data, no chunks.
        assert_eq!(ChunkCrcs::compute(4096, &[]).crcs().len(), 0);
        assert_eq!(ChunkCrcs::max_count(0), 0);
        assert!(ChunkCrcs::from_parts(4096, 512, vec![]).is_none());
        assert!(ChunkCrcs::from_parts(4096, 512, vec![1]).is_some());
    }

    #[test]
    fn covering_widens_to_whole_chunks() {
        let d = data(200 << 10);
        let t = ChunkCrcs::compute(4096, &d);
        let end = 4096 + (200 << 10) as u64;
        assert_eq!(t.covering(8192, 4096), 4096..65536);
        assert_eq!(t.covering(65536, 65536), 65536..131072);
        assert_eq!(t.covering(60000, 10000), 4096..131072);
        assert_eq!(t.covering(end - 512, 512), 196608..end);
        // Chunk-aligned asks stay as they are (the cache's fetches), even
        // past the end (the store returns what exists).
        assert_eq!(t.covering(196608, 65536), 196608..196608 + 65536);
        assert_eq!(t.covering(0, 65536), 0..65536);
    }

    #[test]
    fn verify_finds_flips_short_and_partial_reads() {
        let d = data(200 << 10);
        let t = ChunkCrcs::compute(4096, &d);
        let mut obj = vec![0u8; 4096];
        obj.extend_from_slice(&d);
        assert_eq!(t.verify(0, &obj), Ok(4));
        assert_eq!(t.verify(65536, &obj[65536..131072]), Ok(1));
        assert_eq!(t.verify(0, &obj[..4096]), Ok(0), "header only");
        let mut bad = obj.clone();
        bad[70000] ^= 0x10;
        let e = t.verify(0, &bad).unwrap_err();
        assert!(matches!(
            e,
            ChunkError::Mismatch {
                offset: 65536,
                len: 65536,
                ..
            }
        ));
        assert_eq!(e.offset(), 65536);
        assert!(e.to_string().contains("fails its checksum"), "{e}");
        // The other chunks still verify on their own.
        assert_eq!(t.verify(131072, &bad[131072..]), Ok(2));
        let e = t.verify(0, &obj[..obj.len() - 1]).unwrap_err();
        assert!(matches!(e, ChunkError::Short { offset: 196608, .. }), "{e}");
        let e = t.verify(8192, &obj[8192..65536]).unwrap_err();
        assert!(matches!(e, ChunkError::Partial { offset: 4096, .. }), "{e}");
    }
}
