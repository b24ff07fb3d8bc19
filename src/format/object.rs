//! Data object: a batch of journaled operations, in journal order.
//!
//! Header layout (little endian), version 2; the header is padded with zeros
//! to `header_bytes` (a multiple of 4096) and the write data follows:
//!
//! | off | size | field |
//! |----:|-----:|-------|
//! | 0   | 8    | magic `LSVDOBJ1` |
//! | 8   | 4    | version = 2 (1: see below) |
//! | 12  | 4    | header_bytes: header incl. padding; data starts here |
//! | 16  | 16   | image UUID |
//! | 32  | 8    | object sequence |
//! | 40  | 8    | lowest journal sequence contained |
//! | 48  | 8    | highest journal sequence contained |
//! | 56  | 4    | number of operations N (= highest - lowest + 1) |
//! | 60  | 4    | data sectors (512 B) after the header |
//! | 64  | 4    | number of chunk crcs C (exactly [`ChunkCrcs::count`]) |
//! | 68  | 4    | reserved, 0 |
//! | 72  | 24*N | operations in journal order: LBA (8), sectors (4), kind (1: write, 2: trim, 3: write-zeroes), 3 reserved, data offset in sectors from the data start (4, 0 unless write), reserved (4) |
//! | 72+24N | 4*C | crc32c of the data in each 64 KiB chunk of the object, in order (see [`super::chunks`]) |
//! | 72+24N+4C | 4 | crc32c of bytes 0 .. 72+24N+4C |
//!
//! Version 1 (written before chunk checksums; still read) has one crc32c of
//! the whole data area at 64 and no chunk table: its header crc sits at
//! 72+24N. A ranged read of a version-1 object cannot be verified.
//!
//! Operation i carries journal sequence `lowest + i`. Applying the
//! operations in order yields the object's effect on the disk.

use super::chunks::{ChunkCrcs, DataCheck};
use super::{check_magic_versions, crc, round_up, Dec, Enc, FormatError};
use crate::units::{ImageUuid, JournalSeq, Lba, ObjSeq, SECTOR};

/// Magic at the start of every data object (both versions).
pub const MAGIC: &[u8; 8] = b"LSVDOBJ1";
/// Format version this build writes (it reads 1 too).
pub const VERSION: u32 = 2;
/// The first version, without chunk checksums.
pub const VERSION_1: u32 = 1;
const WHAT: &str = "data object header";
/// Fixed part of the header.
pub const FIXED_BYTES: usize = 72;
/// Bytes per operation entry.
pub const OP_BYTES: usize = 24;
/// Headers are padded to a multiple of this.
pub const HEADER_ALIGN: u64 = 4096;

/// Kind of a logged operation (shared by objects and journal records).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// Data written.
    Write,
    /// Range discarded (reads as zeros).
    Trim,
    /// Range zeroed (reads as zeros).
    Zero,
}

impl OpKind {
    /// The on-disk code.
    pub fn code(self) -> u8 {
        match self {
            OpKind::Write => 1,
            OpKind::Trim => 2,
            OpKind::Zero => 3,
        }
    }
    /// From the on-disk code.
    pub fn from_code(c: u8) -> Option<OpKind> {
        match c {
            1 => Some(OpKind::Write),
            2 => Some(OpKind::Trim),
            3 => Some(OpKind::Zero),
            _ => None,
        }
    }
}

/// One operation in an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjOp {
    /// First sector.
    pub lba: Lba,
    /// Length in sectors (> 0).
    pub sectors: u32,
    /// What it does.
    pub kind: OpKind,
    /// For writes: offset of its data in sectors from the start of the data area.
    pub data_offset: u32,
}

/// A decoded data-object header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectHeader {
    /// Image identity.
    pub uuid: ImageUuid,
    /// Object sequence.
    pub seq: ObjSeq,
    /// Journal sequence of the first operation.
    pub first_jseq: JournalSeq,
    /// Operations, in journal order.
    pub ops: Vec<ObjOp>,
    /// Sectors of write data.
    pub data_sectors: u32,
    /// The data checksums: per chunk (version 2) or whole (version 1).
    pub data_check: DataCheck,
    /// Header size including padding (data starts here), bytes.
    pub header_bytes: u32,
}

impl ObjectHeader {
    /// Highest journal sequence contained.
    pub fn last_jseq(&self) -> JournalSeq {
        JournalSeq(self.first_jseq.0 + (self.ops.len() as u64 - 1))
    }

    /// Header size (padded) for `n_ops` operations and `data_bytes` of data:
    /// room for the chunk crcs however the data falls on chunks.
    pub fn header_bytes_for(n_ops: usize, data_bytes: u64) -> u32 {
        round_up(
            (FIXED_BYTES + OP_BYTES * n_ops + 4 * ChunkCrcs::max_count(data_bytes) + 4) as u64,
            HEADER_ALIGN,
        ) as u32
    }

    /// Header offset of the data area in sectors.
    pub fn data_start_sectors(&self) -> u32 {
        self.header_bytes / SECTOR as u32
    }

    /// The chunk crcs (version 2), or `None` (version 1).
    pub fn chunk_crcs(&self) -> Option<&ChunkCrcs> {
        match &self.data_check {
            DataCheck::Chunks(t) => Some(t),
            DataCheck::Whole(_) => None,
        }
    }

    /// Encode a complete object: header (with `header_bytes`, `data_sectors`
    /// and the chunk crcs computed from `data`) followed by `data`.
    pub fn encode_object(
        uuid: ImageUuid,
        seq: ObjSeq,
        first_jseq: JournalSeq,
        ops: &[ObjOp],
        data: &[u8],
    ) -> Vec<u8> {
        let mut v = Self::encode_header(uuid, seq, first_jseq, ops, data);
        v.extend_from_slice(data);
        v
    }

    /// Encode only the header (padded to `header_bytes`) of the object whose
    /// data area is `data`; the object is this followed by `data`.
    pub fn encode_header(
        uuid: ImageUuid,
        seq: ObjSeq,
        first_jseq: JournalSeq,
        ops: &[ObjOp],
        data: &[u8],
    ) -> Vec<u8> {
        Self::encode_header_and_crcs(uuid, seq, first_jseq, ops, data, None).0
    }

    /// [`ObjectHeader::encode_header`], also returning the chunk crcs it
    /// wrote (a reader of the object needs them) and the crcs of the data's
    /// 4 KiB blocks they were joined from (the read cache's come from them).
    /// `blocks`: those block crcs, if known (see
    /// [`ChunkCrcs::compute_with_blocks`]).
    pub fn encode_header_and_crcs(
        uuid: ImageUuid,
        seq: ObjSeq,
        first_jseq: JournalSeq,
        ops: &[ObjOp],
        data: &[u8],
        blocks: Option<Vec<u32>>,
    ) -> (Vec<u8>, ChunkCrcs, Vec<u32>) {
        let header_bytes = Self::header_bytes_for(ops.len(), data.len() as u64);
        let (chunks, blocks) = ChunkCrcs::compute_with_blocks(header_bytes, data, blocks);
        let mut e = Enc::with_capacity(header_bytes as usize);
        let last = first_jseq.0 + ops.len() as u64 - 1;
        e.bytes(MAGIC)
            .u32(VERSION)
            .u32(header_bytes)
            .bytes(&uuid.0)
            .u64(seq.0)
            .u64(first_jseq.0)
            .u64(last)
            .u32(ops.len() as u32)
            .u32((data.len() as u64 / SECTOR) as u32)
            .u32(chunks.crcs().len() as u32)
            .u32(0);
        encode_ops(&mut e, ops);
        for &c in chunks.crcs() {
            e.u32(c);
        }
        let c = crc(0, &e.buf);
        e.u32(c);
        e.pad_to(header_bytes as usize);
        (e.buf, chunks, blocks)
    }

    /// The version-1 encoding (one crc of the whole data area), as builds
    /// before chunk checksums wrote it: for tests that old objects still
    /// read.
    #[cfg(test)]
    pub(crate) fn encode_object_v1(
        uuid: ImageUuid,
        seq: ObjSeq,
        first_jseq: JournalSeq,
        ops: &[ObjOp],
        data: &[u8],
    ) -> Vec<u8> {
        let header_bytes = round_up(
            (FIXED_BYTES + OP_BYTES * ops.len() + 4) as u64,
            HEADER_ALIGN,
        ) as u32;
        let mut e = Enc::with_capacity(header_bytes as usize + data.len());
        let last = first_jseq.0 + ops.len() as u64 - 1;
        e.bytes(MAGIC)
            .u32(VERSION_1)
            .u32(header_bytes)
            .bytes(&uuid.0)
            .u64(seq.0)
            .u64(first_jseq.0)
            .u64(last)
            .u32(ops.len() as u32)
            .u32((data.len() as u64 / SECTOR) as u32)
            .u32(crc(0, data))
            .u32(0);
        encode_ops(&mut e, ops);
        let c = crc(0, &e.buf);
        e.u32(c);
        e.pad_to(header_bytes as usize);
        e.bytes(data);
        e.buf
    }

    /// How many bytes of the object must be read to decode the header, given
    /// its first [`FIXED_BYTES`] or more. Errors if the prefix is not a header.
    pub fn needed_bytes(prefix: &[u8]) -> Result<usize, FormatError> {
        let mut d = Dec::new(WHAT, prefix);
        let version = check_magic_versions(&mut d, WHAT, MAGIC, &[VERSION_1, VERSION])?;
        let hb = d.u32()?;
        if !(hb as u64).is_multiple_of(HEADER_ALIGN) || hb == 0 {
            return Err(d.invalid(format!("header size {hb} is not a multiple of 4096")));
        }
        d.skip(40)?;
        let n = d.u32()? as usize;
        let data_sectors = d.u32()?;
        let c = d.u32()? as usize;
        let c = ChunkCrcs::checked_count(&d, version != VERSION_1, c, hb, data_sectors)?;
        let need = (FIXED_BYTES + 4)
            .saturating_add(OP_BYTES.saturating_mul(n))
            .saturating_add(4 * c);
        if need > hb as usize {
            return Err(d.invalid(format!("{n} operations do not fit a {hb}-byte header")));
        }
        Ok(need)
    }

    /// For fuzzing: rewrite the header crc after the header's bytes were
    /// changed (where it is follows from the counts, as for a decode).
    #[doc(hidden)]
    pub fn reseal(buf: &mut [u8]) {
        if let Ok(need) = Self::needed_bytes(buf) {
            super::reseal_trailing(buf, need);
        }
    }

    /// Decode and validate a header (version 1 or 2) from the start of an
    /// object (`buf` must hold at least [`ObjectHeader::needed_bytes`]).
    pub fn decode(buf: &[u8]) -> Result<ObjectHeader, FormatError> {
        let need = Self::needed_bytes(buf)?;
        if buf.len() < need {
            return Err(FormatError::Truncated {
                what: WHAT,
                need,
                have: buf.len(),
            });
        }
        super::check_trailing_crc(WHAT, &buf[..need])?;
        let mut d = Dec::new(WHAT, buf);
        d.skip(8)?;
        let version = d.u32()?;
        let header_bytes = d.u32()?;
        let uuid = ImageUuid(d.array()?);
        let seq = ObjSeq(d.u64()?);
        let first = d.u64()?;
        let last = d.u64()?;
        let n = d.u32()? as usize;
        let data_sectors = d.u32()?;
        let crc_or_count = d.u32()?;
        d.skip(4)?;
        if seq.0 == 0 || first == 0 || n == 0 || first.checked_add(n as u64 - 1) != Some(last) {
            return Err(d.invalid(format!(
                "sequence fields inconsistent (object {}, journal {first}..={last}, {n} ops)",
                seq.0
            )));
        }
        // The next write is numbered `last + 1` when the image opens.
        if last == u64::MAX || seq.0 == u64::MAX {
            return Err(d.invalid(format!(
                "sequence at the end of the sequence space (object {}, journal ..={last})",
                seq.0
            )));
        }
        // Map locations are u32 sectors from the object's start.
        if !super::data_area_fits(header_bytes, data_sectors) {
            return Err(d.invalid(format!(
                "{data_sectors} data sectors after a {header_bytes}-byte header end beyond \
                 32-bit sector offsets"
            )));
        }
        let mut ops = Vec::with_capacity(n);
        for i in 0..n {
            let lba = Lba(d.u64()?);
            let sectors = d.u32()?;
            let code = d.u8()?;
            d.skip(3)?;
            let data_offset = d.u32()?;
            d.skip(4)?;
            let kind = OpKind::from_code(code)
                .ok_or_else(|| d.invalid(format!("operation {i}: unknown kind {code}")))?;
            if sectors == 0 {
                return Err(d.invalid(format!("operation {i}: zero length")));
            }
            if super::beyond_max(lba, u64::from(sectors)) {
                return Err(d.invalid(format!("operation {i}: {lba}+{sectors} beyond any image")));
            }
            if kind == OpKind::Write && data_offset as u64 + sectors as u64 > data_sectors as u64 {
                return Err(d.invalid(format!("operation {i}: data beyond the data area")));
            }
            ops.push(ObjOp {
                lba,
                sectors,
                kind,
                data_offset,
            });
        }
        let data_check = if version == VERSION_1 {
            DataCheck::Whole(crc_or_count)
        } else {
            let crcs = (0..crc_or_count)
                .map(|_| d.u32())
                .collect::<Result<Vec<_>, _>>()?;
            let t = ChunkCrcs::from_parts(header_bytes, u64::from(data_sectors) * SECTOR, crcs)
                .ok_or_else(|| d.invalid("chunk checksum count does not match the data"))?;
            DataCheck::Chunks(t)
        };
        Ok(ObjectHeader {
            uuid,
            seq,
            first_jseq: JournalSeq(first),
            ops,
            data_sectors,
            data_check,
            header_bytes,
        })
    }

    /// Verify the data area of a whole object: every chunk crc (version 2)
    /// or the crc of the whole area (version 1).
    pub fn verify_data(&self, object: &[u8]) -> Result<(), FormatError> {
        self.data_check.verify_object(
            "data object data",
            self.header_bytes,
            self.data_sectors,
            object,
        )
    }
}

/// The operation entries of a header.
fn encode_ops(e: &mut Enc, ops: &[ObjOp]) {
    for op in ops {
        e.u64(op.lba.0)
            .u32(op.sectors)
            .u8(op.kind.code())
            .zeros(3)
            .u32(op.data_offset)
            .u32(0);
    }
}

#[cfg(test)]
mod tests {

    /// A header (crc valid) whose data area ends beyond what a 32-bit
    /// sector offset from the object's start can address: recovery's map
    /// locations (`header sectors + data offset`, u32) would wrap and point
    /// into the header. Found while writing the fuzz targets.
    #[test]
    fn an_object_beyond_32_bit_sector_offsets_is_rejected() {
        let mut b = sample_v1();
        // data sectors (offset 60) = u32::MAX; the first operation (a
        // write, at 72) has its data at u32::MAX - 8.
        b[60..64].copy_from_slice(&u32::MAX.to_le_bytes());
        let at = 72 + 16;
        b[at..at + 4].copy_from_slice(&(u32::MAX - 8).to_le_bytes());
        assert_eq!(
            u32::from_le_bytes(b[80..84].try_into().unwrap()),
            8,
            "op sectors"
        );
        ObjectHeader::reseal(&mut b);
        let e = ObjectHeader::decode(&b).unwrap_err();
        assert!(e.to_string().contains("32-bit"), "{e}");
    }
    use super::*;
    use crate::format::testutil::{assert_rejects_corruption, golden};

    /// A header whose last journal sequence is u64::MAX had consistent
    /// fields and decoded; `last_jseq` then computed `first + n` first,
    /// which overflowed (a panic with overflow checks), and an open would
    /// have numbered the next write past u64::MAX. Found by the
    /// format_object fuzz target in CI. Such a header is now refused, and
    /// `last_jseq` does not overflow at the highest sequence accepted.
    #[test]
    fn sequences_at_the_top_of_the_sequence_space() {
        let with_last = |last: u64| {
            let mut b = sample_v1();
            let n = u64::from(u32::from_le_bytes(b[56..60].try_into().unwrap()));
            assert_eq!(n, sample_ops().len() as u64, "op count");
            b[40..48].copy_from_slice(&(last - (n - 1)).to_le_bytes());
            b[48..56].copy_from_slice(&last.to_le_bytes());
            ObjectHeader::reseal(&mut b);
            ObjectHeader::decode(&b)
        };
        let e = with_last(u64::MAX).unwrap_err();
        assert!(e.to_string().contains("end of the sequence space"), "{e}");
        let h = with_last(u64::MAX - 1).unwrap();
        assert_eq!(h.last_jseq(), JournalSeq(u64::MAX - 1));
        // The object sequence likewise.
        let mut b = sample_v1();
        b[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        ObjectHeader::reseal(&mut b);
        let e = ObjectHeader::decode(&b).unwrap_err();
        assert!(e.to_string().contains("end of the sequence space"), "{e}");
    }

    fn sample_ops() -> [ObjOp; 4] {
        [
            ObjOp {
                lba: Lba(8),
                sectors: 8,
                kind: OpKind::Write,
                data_offset: 0,
            },
            ObjOp {
                lba: Lba(100),
                sectors: 16,
                kind: OpKind::Trim,
                data_offset: 0,
            },
            ObjOp {
                lba: Lba(4),
                sectors: 1,
                kind: OpKind::Write,
                data_offset: 8,
            },
            ObjOp {
                lba: Lba(1000),
                sectors: 8,
                kind: OpKind::Zero,
                data_offset: 0,
            },
        ]
    }

    fn sample_data() -> Vec<u8> {
        (0..9 * 512).map(|i| (i % 251) as u8).collect()
    }

    fn sample() -> Vec<u8> {
        ObjectHeader::encode_object(
            ImageUuid([3; 16]),
            ObjSeq(42),
            JournalSeq(1000),
            &sample_ops(),
            &sample_data(),
        )
    }

    /// The sample as builds before chunk checksums wrote it.
    fn sample_v1() -> Vec<u8> {
        ObjectHeader::encode_object_v1(
            ImageUuid([3; 16]),
            ObjSeq(42),
            JournalSeq(1000),
            &sample_ops(),
            &sample_data(),
        )
    }

    /// A 300 KiB object: five chunks, the first one short.
    fn big_sample() -> Vec<u8> {
        let data: Vec<u8> = (0..600 * 512).map(|i| (i * 7 % 249) as u8).collect();
        let ops = [ObjOp {
            lba: Lba(0),
            sectors: 600,
            kind: OpKind::Write,
            data_offset: 0,
        }];
        ObjectHeader::encode_object(ImageUuid([3; 16]), ObjSeq(7), JournalSeq(1), &ops, &data)
    }

    #[test]
    fn round_trip() {
        let obj = sample();
        let h = ObjectHeader::decode(&obj).unwrap();
        assert_eq!(h.seq, ObjSeq(42));
        assert_eq!(h.first_jseq, JournalSeq(1000));
        assert_eq!(h.last_jseq(), JournalSeq(1003));
        assert_eq!(h.ops.len(), 4);
        assert_eq!(h.header_bytes, 4096);
        assert_eq!(h.data_sectors, 9);
        let t = h.chunk_crcs().expect("version 2 has chunk crcs");
        assert_eq!(t.crcs(), &[crc(0, &sample_data())]);
        h.verify_data(&obj).unwrap();
        assert_eq!(
            ObjectHeader::needed_bytes(&obj[..64 + 8]).unwrap(),
            72 + 4 * 24 + 4 + 4
        );
    }

    #[test]
    fn chunk_crcs_cover_every_data_chunk() {
        let obj = big_sample();
        let h = ObjectHeader::decode(&obj).unwrap();
        let t = h.chunk_crcs().unwrap();
        assert_eq!(t.crcs().len(), 5);
        assert_eq!(t.end(), obj.len() as u64);
        assert_eq!(t.verify(0, &obj), Ok(5));
        h.verify_data(&obj).unwrap();
        // A flipped bit in chunk 3 is found there, with its offset.
        let mut bad = obj.clone();
        bad[3 * 65536 + 100] ^= 4;
        let e = h.verify_data(&bad).unwrap_err();
        assert!(
            matches!(
                e,
                FormatError::BadChunk {
                    err: crate::format::chunks::ChunkError::Mismatch { offset: 196608, .. },
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("chunk at byte 196608"), "{e}");
        // A truncated object is short, not silently fine.
        assert!(h.verify_data(&obj[..obj.len() - 512]).is_err());
    }

    #[test]
    fn version_1_objects_still_decode() {
        let obj = sample_v1();
        let h = ObjectHeader::decode(&obj).unwrap();
        assert_eq!(h.seq, ObjSeq(42));
        assert_eq!(h.ops, sample_ops());
        assert_eq!(h.data_check, DataCheck::Whole(crc(0, &sample_data())));
        assert!(h.chunk_crcs().is_none());
        h.verify_data(&obj).unwrap();
        let mut bad = obj.clone();
        bad[5000] ^= 1;
        assert!(matches!(
            h.verify_data(&bad),
            Err(FormatError::BadChecksum { .. })
        ));
        assert_rejects_corruption(&obj[..72 + 4 * 24 + 4], ObjectHeader::decode, &[]);
    }

    #[test]
    fn corrupt_input_is_rejected() {
        let obj = sample();
        let hlen = 72 + 4 * 24 + 4 + 4;
        assert_rejects_corruption(&obj[..hlen], ObjectHeader::decode, &[]);
        let h = ObjectHeader::decode(&obj).unwrap();
        let mut bad = obj.clone();
        bad[5000] ^= 1;
        assert!(h.verify_data(&bad).is_err());
        assert!(h.verify_data(&obj[..obj.len() - 1]).is_err());
        let big = big_sample();
        let hlen = 72 + 24 + 5 * 4 + 4;
        assert_rejects_corruption(&big[..hlen], ObjectHeader::decode, &[]);
    }

    #[test]
    fn a_wrong_chunk_count_and_unknown_versions_are_named() {
        // A chunk count that does not fit the data is refused before the
        // crc is even looked for.
        let mut obj = sample();
        obj[64] = 2;
        let e = ObjectHeader::decode(&obj).unwrap_err();
        assert!(e.to_string().contains("2 chunk checksums"), "{e}");
        let mut v = sample();
        v[8] = 3;
        let e = ObjectHeader::decode(&v).unwrap_err();
        assert!(
            e.to_string()
                .contains("unsupported format version 3 (this build reads version 2)"),
            "{e}"
        );
    }

    #[test]
    fn golden_vector() {
        let g = golden("object-v2.bin", &sample());
        let h = ObjectHeader::decode(&g).unwrap();
        assert_eq!(h.seq, ObjSeq(42));
        h.verify_data(&g).unwrap();
    }

    #[test]
    fn golden_vector_v1() {
        // The old encoding is unchanged, and this build still reads it.
        let g = golden("object-v1.bin", &sample_v1());
        let h = ObjectHeader::decode(&g).unwrap();
        assert_eq!(h.seq, ObjSeq(42));
        h.verify_data(&g).unwrap();
    }
}
