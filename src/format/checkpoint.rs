//! Checkpoint: the durable extent map and per-object counts, in pieces.
//!
//! A checkpoint occupies consecutive object sequences `seq .. seq+count`,
//! one piece each, so a multi-TB map never needs one giant object. Piece 0
//! holds the object table; every piece holds a run of extents in LBA order.
//!
//! Piece layout (little endian), version 1:
//!
//! | off | size | field |
//! |----:|-----:|-------|
//! | 0   | 8    | magic `LSVDCKP1` |
//! | 8   | 4    | version = 1 |
//! | 12  | 4    | reserved, 0 |
//! | 16  | 16   | image UUID |
//! | 32  | 8    | checkpoint sequence (object sequence of piece 0) |
//! | 40  | 4    | piece index |
//! | 44  | 4    | piece count |
//! | 48  | 8    | last object sequence reflected (objects above are rolled forward) |
//! | 56  | 8    | highest journal sequence reflected |
//! | 64  | 8    | total extents in all pieces |
//! | 72  | 8    | object-table entries in this piece, N |
//! | 80  | 8    | extents in this piece, M |
//! | 88  | 24*N | objects: sequence (8), data sectors (8), live sectors (8) |
//! | ... | 24*M | extents: LBA (8), length in sectors (4), offset in sectors from the object start (4), object sequence (8) |
//! | ... | 4    | crc32c of every preceding byte |

use super::{check_magic_version, check_trailing_crc, Dec, Enc, FormatError};
use crate::units::{ImageUuid, JournalSeq, Lba, ObjSeq};

const MAGIC: &[u8; 8] = b"LSVDCKP1";
/// Format version this build writes and reads.
pub const VERSION: u32 = 1;
const WHAT: &str = "checkpoint";
const FIXED: usize = 88;
const ENTRY: usize = 24;
/// Extents per piece when splitting (about 24 MiB per piece).
pub const EXTENTS_PER_PIECE: usize = 1 << 20;

/// One extent of the durable map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CkptExtent {
    /// First sector.
    pub lba: Lba,
    /// Length in sectors.
    pub len: u32,
    /// Object holding the data.
    pub obj: ObjSeq,
    /// Offset in sectors from the start of the object.
    pub offset: u32,
}

/// One row of the object table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CkptObject {
    /// Object sequence.
    pub obj: ObjSeq,
    /// Sectors of write data in the object.
    pub data_sectors: u64,
    /// Sectors of it still mapped.
    pub live_sectors: u64,
}

/// One piece of a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointPiece {
    /// Image identity.
    pub uuid: ImageUuid,
    /// Object sequence of piece 0.
    pub ckpt_seq: ObjSeq,
    /// This piece's index.
    pub index: u32,
    /// Number of pieces.
    pub count: u32,
    /// Objects up to this sequence are reflected.
    pub last_obj_seq: ObjSeq,
    /// Highest journal sequence reflected.
    pub max_jseq: JournalSeq,
    /// Extents across all pieces.
    pub total_extents: u64,
    /// Object table (piece 0 only).
    pub objects: Vec<CkptObject>,
    /// Extents of this piece, in LBA order.
    pub extents: Vec<CkptExtent>,
}

impl CheckpointPiece {
    /// Encode.
    pub fn encode(&self) -> Vec<u8> {
        let mut e =
            Enc::with_capacity(FIXED + ENTRY * (self.objects.len() + self.extents.len()) + 4);
        e.bytes(MAGIC)
            .u32(VERSION)
            .u32(0)
            .bytes(&self.uuid.0)
            .u64(self.ckpt_seq.0)
            .u32(self.index)
            .u32(self.count)
            .u64(self.last_obj_seq.0)
            .u64(self.max_jseq.0)
            .u64(self.total_extents)
            .u64(self.objects.len() as u64)
            .u64(self.extents.len() as u64);
        for o in &self.objects {
            e.u64(o.obj.0).u64(o.data_sectors).u64(o.live_sectors);
        }
        for x in &self.extents {
            e.u64(x.lba.0).u32(x.len).u32(x.offset).u64(x.obj.0);
        }
        let c = super::crc(0, &e.buf);
        e.u32(c);
        e.buf
    }

    /// For fuzzing: rewrite the trailing crc after the piece's bytes were
    /// changed.
    #[doc(hidden)]
    pub fn reseal(buf: &mut [u8]) {
        super::reseal_trailing(buf, buf.len());
    }

    /// Decode and validate one piece.
    pub fn decode(buf: &[u8]) -> Result<CheckpointPiece, FormatError> {
        let mut d = Dec::new(WHAT, buf);
        check_magic_version(&mut d, WHAT, MAGIC, VERSION)?;
        d.skip(4)?;
        let uuid = ImageUuid(d.array()?);
        let ckpt_seq = ObjSeq(d.u64()?);
        let index = d.u32()?;
        let count = d.u32()?;
        let last_obj_seq = ObjSeq(d.u64()?);
        let max_jseq = JournalSeq(d.u64()?);
        let total_extents = d.u64()?;
        let n = d.u64()?;
        let m = d.u64()?;
        let len = (n as u128 + m as u128) * ENTRY as u128 + FIXED as u128 + 4;
        if len != buf.len() as u128 {
            return Err(d.invalid(format!(
                "{n} objects and {m} extents need {len} bytes, piece has {}",
                buf.len()
            )));
        }
        check_trailing_crc(WHAT, buf)?;
        if count == 0 || index >= count || ckpt_seq.0 <= last_obj_seq.0 {
            return Err(d.invalid(format!(
                "piece {index} of {count} at sequence {} reflecting {}",
                ckpt_seq.0, last_obj_seq.0
            )));
        }
        let mut objects = Vec::with_capacity(n as usize);
        for _ in 0..n {
            objects.push(CkptObject {
                obj: ObjSeq(d.u64()?),
                data_sectors: d.u64()?,
                live_sectors: d.u64()?,
            });
        }
        let mut extents = Vec::with_capacity(m as usize);
        for _ in 0..m {
            let lba = Lba(d.u64()?);
            let len = d.u32()?;
            let offset = d.u32()?;
            let obj = ObjSeq(d.u64()?);
            if len == 0 {
                return Err(d.invalid("zero-length extent"));
            }
            if super::beyond_max(lba, u64::from(len)) {
                return Err(d.invalid(format!("extent {lba}+{len} beyond any image")));
            }
            extents.push(CkptExtent {
                lba,
                len,
                obj,
                offset,
            });
        }
        Ok(CheckpointPiece {
            uuid,
            ckpt_seq,
            index,
            count,
            last_obj_seq,
            max_jseq,
            total_extents,
            objects,
            extents,
        })
    }
}

/// Split a map into checkpoint pieces of at most `per_piece` extents.
pub fn split_into_pieces(
    uuid: ImageUuid,
    ckpt_seq: ObjSeq,
    last_obj_seq: ObjSeq,
    max_jseq: JournalSeq,
    objects: Vec<CkptObject>,
    extents: &[CkptExtent],
    per_piece: usize,
) -> Vec<CheckpointPiece> {
    let per_piece = per_piece.max(1);
    let count = extents.len().div_ceil(per_piece).max(1);
    let mut objects = Some(objects);
    (0..count)
        .map(|i| {
            let lo = i * per_piece;
            let hi = (lo + per_piece).min(extents.len());
            CheckpointPiece {
                uuid,
                ckpt_seq,
                index: i as u32,
                count: count as u32,
                last_obj_seq,
                max_jseq,
                total_extents: extents.len() as u64,
                objects: objects.take().unwrap_or_default(),
                extents: extents[lo..hi].to_vec(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::testutil::{assert_rejects_corruption, golden};

    fn sample_pieces() -> Vec<CheckpointPiece> {
        let extents: Vec<CkptExtent> = (0..5)
            .map(|i| CkptExtent {
                lba: Lba(i * 100),
                len: 8,
                obj: ObjSeq(1 + i % 2),
                offset: 8 + i as u32 * 8,
            })
            .collect();
        let objects = vec![
            CkptObject {
                obj: ObjSeq(1),
                data_sectors: 64,
                live_sectors: 24,
            },
            CkptObject {
                obj: ObjSeq(2),
                data_sectors: 64,
                live_sectors: 16,
            },
        ];
        split_into_pieces(
            ImageUuid([9; 16]),
            ObjSeq(3),
            ObjSeq(2),
            JournalSeq(77),
            objects,
            &extents,
            2,
        )
    }

    #[test]
    fn round_trip_and_split() {
        let pieces = sample_pieces();
        assert_eq!(pieces.len(), 3);
        assert_eq!(pieces[0].objects.len(), 2);
        assert!(pieces[1].objects.is_empty());
        assert_eq!(pieces[2].extents.len(), 1);
        for p in &pieces {
            assert_eq!(&CheckpointPiece::decode(&p.encode()).unwrap(), p);
        }
    }

    #[test]
    fn empty_map_is_one_piece() {
        let p = split_into_pieces(
            ImageUuid([1; 16]),
            ObjSeq(1),
            ObjSeq(0),
            JournalSeq(0),
            vec![],
            &[],
            10,
        );
        assert_eq!(p.len(), 1);
        assert_eq!(CheckpointPiece::decode(&p[0].encode()).unwrap(), p[0]);
    }

    #[test]
    fn corrupt_input_is_rejected() {
        for p in sample_pieces() {
            assert_rejects_corruption(&p.encode(), CheckpointPiece::decode, &[]);
        }
    }

    #[test]
    fn golden_vector() {
        let p = &sample_pieces()[0];
        let g = golden("checkpoint-v1.bin", &p.encode());
        assert_eq!(&CheckpointPiece::decode(&g).unwrap(), p);
    }
}
