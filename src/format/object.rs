//! Data object: a batch of journaled operations, in journal order.
//!
//! Header layout (little endian), version 1; the header is padded with zeros
//! to `header_bytes` (a multiple of 4096) and the write data follows:
//!
//! | off | size | field |
//! |----:|-----:|-------|
//! | 0   | 8    | magic `LSVDOBJ1` |
//! | 8   | 4    | version = 1 |
//! | 12  | 4    | header_bytes: header incl. padding; data starts here |
//! | 16  | 16   | image UUID |
//! | 32  | 8    | object sequence |
//! | 40  | 8    | lowest journal sequence contained |
//! | 48  | 8    | highest journal sequence contained |
//! | 56  | 4    | number of operations N (= highest - lowest + 1) |
//! | 60  | 4    | data sectors (512 B) after the header |
//! | 64  | 4    | crc32c of the data area |
//! | 68  | 4    | reserved, 0 |
//! | 72  | 24*N | operations in journal order: LBA (8), sectors (4), kind (1: write, 2: trim, 3: write-zeroes), 3 reserved, data offset in sectors from the data start (4, 0 unless write), reserved (4) |
//! | 72+24N | 4 | crc32c of bytes 0 .. 72+24N |
//!
//! Operation i carries journal sequence `lowest + i`. Applying the
//! operations in order yields the object's effect on the disk.

use super::{check_magic_version, crc, round_up, Dec, Enc, FormatError};
use crate::units::{ImageUuid, JournalSeq, Lba, ObjSeq, SECTOR};

const MAGIC: &[u8; 8] = b"LSVDOBJ1";
/// Format version this build writes and reads.
pub const VERSION: u32 = 1;
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
    /// crc32c of the data area.
    pub data_crc: u32,
    /// Header size including padding (data starts here), bytes.
    pub header_bytes: u32,
}

impl ObjectHeader {
    /// Highest journal sequence contained.
    pub fn last_jseq(&self) -> JournalSeq {
        JournalSeq(self.first_jseq.0 + self.ops.len() as u64 - 1)
    }

    /// Header size for `n_ops` operations, padded.
    pub fn header_bytes_for(n_ops: usize) -> u32 {
        round_up((FIXED_BYTES + OP_BYTES * n_ops + 4) as u64, HEADER_ALIGN) as u32
    }

    /// Header offset of the data area in sectors.
    pub fn data_start_sectors(&self) -> u32 {
        self.header_bytes / SECTOR as u32
    }

    /// Encode a complete object: header (with `header_bytes`, `data_sectors`
    /// and `data_crc` computed from `data`) followed by `data`.
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
        let header_bytes = Self::header_bytes_for(ops.len());
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
            .u32(crc(0, data))
            .u32(0);
        for op in ops {
            e.u64(op.lba.0)
                .u32(op.sectors)
                .u8(op.kind.code())
                .zeros(3)
                .u32(op.data_offset)
                .u32(0);
        }
        let c = crc(0, &e.buf);
        e.u32(c);
        e.pad_to(header_bytes as usize);
        e.buf
    }

    /// How many bytes of the object must be read to decode the header, given
    /// its first [`FIXED_BYTES`] or more. Errors if the prefix is not a header.
    pub fn needed_bytes(prefix: &[u8]) -> Result<usize, FormatError> {
        let mut d = Dec::new(WHAT, prefix);
        check_magic_version(&mut d, WHAT, MAGIC, VERSION)?;
        let hb = d.u32()?;
        if !(hb as u64).is_multiple_of(HEADER_ALIGN) || hb == 0 {
            return Err(d.invalid(format!("header size {hb} is not a multiple of 4096")));
        }
        d.skip(40)?;
        let n = d.u32()? as usize;
        let need = FIXED_BYTES + OP_BYTES * n + 4;
        if need > hb as usize {
            return Err(d.invalid(format!("{n} operations do not fit a {hb}-byte header")));
        }
        Ok(need)
    }

    /// Decode and validate a header from the start of an object (`buf` must
    /// hold at least [`ObjectHeader::needed_bytes`]).
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
        d.skip(12)?;
        let header_bytes = d.u32()?;
        let uuid = ImageUuid(d.array()?);
        let seq = ObjSeq(d.u64()?);
        let first = d.u64()?;
        let last = d.u64()?;
        let n = d.u32()? as usize;
        let data_sectors = d.u32()?;
        let data_crc = d.u32()?;
        d.skip(4)?;
        if seq.0 == 0 || first == 0 || n == 0 || first.checked_add(n as u64 - 1) != Some(last) {
            return Err(d.invalid(format!(
                "sequence fields inconsistent (object {}, journal {first}..={last}, {n} ops)",
                seq.0
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
        Ok(ObjectHeader {
            uuid,
            seq,
            first_jseq: JournalSeq(first),
            ops,
            data_sectors,
            data_crc,
            header_bytes,
        })
    }

    /// Verify the data area of a whole object against the header's crc.
    pub fn verify_data(&self, object: &[u8]) -> Result<(), FormatError> {
        let start = self.header_bytes as usize;
        let end = start + self.data_sectors as usize * SECTOR as usize;
        if object.len() < end {
            return Err(FormatError::Truncated {
                what: "data object",
                need: end,
                have: object.len(),
            });
        }
        let computed = crc(0, &object[start..end]);
        if computed != self.data_crc {
            return Err(FormatError::BadChecksum {
                what: "data object data",
                stored: self.data_crc,
                computed,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::testutil::{assert_rejects_corruption, golden};

    fn sample() -> Vec<u8> {
        let ops = [
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
        ];
        let data: Vec<u8> = (0..9 * 512).map(|i| (i % 251) as u8).collect();
        ObjectHeader::encode_object(
            ImageUuid([3; 16]),
            ObjSeq(42),
            JournalSeq(1000),
            &ops,
            &data,
        )
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
        h.verify_data(&obj).unwrap();
        assert_eq!(
            ObjectHeader::needed_bytes(&obj[..64 + 8]).unwrap(),
            72 + 4 * 24 + 4
        );
    }

    #[test]
    fn corrupt_input_is_rejected() {
        let obj = sample();
        let hlen = 72 + 4 * 24 + 4;
        assert_rejects_corruption(&obj[..hlen], ObjectHeader::decode, &[]);
        let h = ObjectHeader::decode(&obj).unwrap();
        let mut bad = obj.clone();
        bad[5000] ^= 1;
        assert!(h.verify_data(&bad).is_err());
        assert!(h.verify_data(&obj[..obj.len() - 1]).is_err());
    }

    #[test]
    fn golden_vector() {
        let g = golden("object-v1.bin", &sample());
        assert_eq!(ObjectHeader::decode(&g).unwrap().seq, ObjSeq(42));
    }
}
