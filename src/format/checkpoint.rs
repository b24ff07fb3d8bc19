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
//!
//! Version 2 is a **delta** checkpoint: the map of its base checkpoint
//! (named by `base`), with every range it lists replaced by the extents it
//! holds. The fields up to offset 88 are as in version 1 (version = 2,
//! "total extents" counts the delta's own extents), then:
//!
//! | off | size | field |
//! |----:|-----:|-------|
//! | 88  | 8    | base: sequence of the base checkpoint's piece 0 |
//! | 96  | 4    | base piece count |
//! | 100 | 4    | depth: deltas down to a full checkpoint, this one included (1..=[`MAX_DEPTH`]) |
//! | 104 | 8    | total ranges in all pieces |
//! | 112 | 8    | ranges in this piece, R |
//! | 120 | 24*N | objects (the whole table, piece 0 only), as in version 1 |
//! | ... | 16*R | ranges: LBA (8), length in sectors (8); ascending, disjoint |
//! | ... | 24*M | extents, as in version 1, each inside one of this piece's ranges |
//! | ... | 4    | crc32c of every preceding byte |

use super::{check_magic_versions, check_trailing_crc, Dec, Enc, FormatError};
use crate::units::{ImageUuid, JournalSeq, Lba, ObjSeq};

const MAGIC: &[u8; 8] = b"LSVDCKP1";
/// Format version of a full checkpoint.
pub const VERSION: u32 = 1;
/// Format version of a delta checkpoint.
pub const VERSION_DELTA: u32 = 2;
const WHAT: &str = "checkpoint";
const FIXED: usize = 88;
const FIXED_DELTA: usize = 120;
const ENTRY: usize = 24;
const RANGE: usize = 16;
/// Longest chain of deltas above a full checkpoint a piece may declare.
pub const MAX_DEPTH: u32 = 64;
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

/// An LBA range a delta checkpoint replaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CkptRange {
    /// First sector.
    pub lba: Lba,
    /// Length in sectors, > 0.
    pub len: u64,
}

impl CkptRange {
    /// One past the last sector.
    pub fn end(&self) -> u64 {
        self.lba.0 + self.len
    }
}

/// What makes a piece part of a delta checkpoint (version 2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delta {
    /// Piece 0 of the base checkpoint.
    pub base_seq: ObjSeq,
    /// The base checkpoint's piece count.
    pub base_pieces: u32,
    /// Deltas down to a full checkpoint, this one included (the base's
    /// depth + 1; a full checkpoint has depth 0).
    pub depth: u32,
    /// Ranges across all pieces.
    pub total_ranges: u64,
    /// Ranges of this piece, ascending and disjoint.
    pub ranges: Vec<CkptRange>,
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
    /// `Some` for a delta checkpoint (version 2).
    pub delta: Option<Delta>,
    /// Flags (offset 12, reserved and written 0 by builds before them,
    /// which skip it on read): [`FLAG_ROWS_COMPLETE`], meaningful in piece
    /// 0. Other bits are not interpreted.
    pub flags: u32,
}

/// Piece 0 flag: the object table names every object of the image at or
/// below `last_obj_seq` that is not deleted, except pieces of the
/// checkpoints listed with this one (rows with no live data stay until GC
/// has deleted their objects: crash-safety ordering 32). GC then finds
/// what to delete without listing the store. A build that drops such rows
/// writes the flag clear (every build before it wrote 0 here).
pub const FLAG_ROWS_COMPLETE: u32 = 1;

impl CheckpointPiece {
    /// Encode.
    pub fn encode(&self) -> Vec<u8> {
        let (fixed, ranges) = match &self.delta {
            None => (FIXED, 0),
            Some(d) => (FIXED_DELTA, d.ranges.len()),
        };
        let mut e = Enc::with_capacity(
            fixed + ENTRY * (self.objects.len() + self.extents.len()) + RANGE * ranges + 4,
        );
        e.bytes(MAGIC)
            .u32(if self.delta.is_some() {
                VERSION_DELTA
            } else {
                VERSION
            })
            .u32(self.flags)
            .bytes(&self.uuid.0)
            .u64(self.ckpt_seq.0)
            .u32(self.index)
            .u32(self.count)
            .u64(self.last_obj_seq.0)
            .u64(self.max_jseq.0)
            .u64(self.total_extents)
            .u64(self.objects.len() as u64)
            .u64(self.extents.len() as u64);
        if let Some(d) = &self.delta {
            e.u64(d.base_seq.0)
                .u32(d.base_pieces)
                .u32(d.depth)
                .u64(d.total_ranges)
                .u64(d.ranges.len() as u64);
        }
        for o in &self.objects {
            e.u64(o.obj.0).u64(o.data_sectors).u64(o.live_sectors);
        }
        if let Some(d) = &self.delta {
            for r in &d.ranges {
                e.u64(r.lba.0).u64(r.len);
            }
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
        let version = check_magic_versions(&mut d, WHAT, MAGIC, &[VERSION, VERSION_DELTA])?;
        let flags = d.u32()?;
        let uuid = ImageUuid(d.array()?);
        let ckpt_seq = ObjSeq(d.u64()?);
        let index = d.u32()?;
        let count = d.u32()?;
        let last_obj_seq = ObjSeq(d.u64()?);
        let max_jseq = JournalSeq(d.u64()?);
        let total_extents = d.u64()?;
        let n = d.u64()?;
        let m = d.u64()?;
        let mut delta = None;
        let mut r = 0u64;
        let mut fixed = FIXED;
        if version == VERSION_DELTA {
            let base_seq = ObjSeq(d.u64()?);
            let base_pieces = d.u32()?;
            let depth = d.u32()?;
            let total_ranges = d.u64()?;
            r = d.u64()?;
            fixed = FIXED_DELTA;
            delta = Some((base_seq, base_pieces, depth, total_ranges));
        }
        let len =
            (n as u128 + m as u128) * ENTRY as u128 + r as u128 * RANGE as u128 + fixed as u128 + 4;
        if len != buf.len() as u128 {
            return Err(d.invalid(format!(
                "{n} objects, {r} ranges and {m} extents need {len} bytes, piece has {}",
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
        // An open numbers the next write `max_jseq + 1`.
        if max_jseq.0 == u64::MAX {
            return Err(d.invalid("journal sequence at the end of the sequence space"));
        }
        if let Some((base_seq, base_pieces, depth, total_ranges)) = delta {
            // The base lies wholly below this checkpoint (so a chain always
            // descends and ends), and the depth is bounded.
            let base_end = base_seq.0.checked_add(u64::from(base_pieces));
            if base_seq.0 == 0
                || base_pieces == 0
                || base_end.is_none_or(|e| e > ckpt_seq.0)
                || depth == 0
                || depth > MAX_DEPTH
                || total_ranges < r
            {
                return Err(d.invalid(format!(
                    "delta at sequence {} on base {} ({base_pieces} pieces), depth {depth}, \
                     {r} of {total_ranges} ranges",
                    ckpt_seq.0, base_seq.0
                )));
            }
        }
        let mut objects = Vec::with_capacity(n as usize);
        for _ in 0..n {
            objects.push(CkptObject {
                obj: ObjSeq(d.u64()?),
                data_sectors: d.u64()?,
                live_sectors: d.u64()?,
            });
        }
        let mut ranges = Vec::with_capacity(r as usize);
        let mut prev_end = 0u64;
        for _ in 0..r {
            let lba = Lba(d.u64()?);
            let len = d.u64()?;
            if len == 0 || super::beyond_max(lba, len) {
                return Err(d.invalid(format!("range {lba}+{len} empty or beyond any image")));
            }
            if !ranges.is_empty() && lba.0 < prev_end {
                return Err(d.invalid(format!(
                    "range at {lba} overlaps or precedes the previous one"
                )));
            }
            prev_end = lba.0 + len;
            ranges.push(CkptRange { lba, len });
        }
        let mut extents = Vec::with_capacity(m as usize);
        let mut in_range = 0usize;
        let mut prev_end = 0u64;
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
            if delta.is_some() {
                // Ascending, disjoint and inside this piece's ranges (which
                // are ascending too: one pass).
                if !extents.is_empty() && lba.0 < prev_end {
                    return Err(d.invalid(format!(
                        "extent at {lba} overlaps or precedes the previous one"
                    )));
                }
                while in_range < ranges.len() && ranges[in_range].end() <= lba.0 {
                    in_range += 1;
                }
                let inside = ranges
                    .get(in_range)
                    .is_some_and(|g| g.lba.0 <= lba.0 && lba.0 + u64::from(len) <= g.end());
                if !inside {
                    return Err(d.invalid(format!("extent {lba}+{len} outside the piece's ranges")));
                }
                prev_end = lba.0 + u64::from(len);
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
            delta: delta.map(|(base_seq, base_pieces, depth, total_ranges)| Delta {
                base_seq,
                base_pieces,
                depth,
                total_ranges,
                ranges,
            }),
            flags,
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
                delta: None,
                flags: 0,
            }
        })
        .collect()
}

/// What a delta checkpoint is written on top of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeltaBase {
    /// Piece 0 of the base checkpoint.
    pub seq: ObjSeq,
    /// Its piece count.
    pub pieces: u32,
    /// This delta's depth (the base's + 1).
    pub depth: u32,
}

/// Split a delta into pieces of at most `per_piece` entries (a range or an
/// extent each; piece 0 also holds the object table). `extents` are the
/// map's extents clipped to `ranges`, both ascending. A range whose extents
/// do not fit one piece is cut at an extent's start, so every piece holds
/// whole ranges and the extents inside them.
#[allow(clippy::too_many_arguments)]
pub fn split_delta_into_pieces(
    uuid: ImageUuid,
    ckpt_seq: ObjSeq,
    last_obj_seq: ObjSeq,
    max_jseq: JournalSeq,
    objects: Vec<CkptObject>,
    base: DeltaBase,
    ranges: &[CkptRange],
    extents: &[CkptExtent],
    per_piece: usize,
) -> Vec<CheckpointPiece> {
    let per_piece = per_piece.max(2);
    let mut pieces: Vec<(Vec<CkptRange>, Vec<CkptExtent>)> = vec![(vec![], vec![])];
    let mut x = 0usize;
    for r in ranges {
        let mut start = r.lba.0;
        loop {
            let from = x;
            let mut to = from;
            while to < extents.len() && extents[to].lba.0 < r.end() {
                to += 1;
            }
            let cur = pieces.last_mut().expect("one piece at least");
            let room = per_piece.saturating_sub(cur.0.len() + cur.1.len());
            if to - from < room {
                cur.0.push(CkptRange {
                    lba: Lba(start),
                    len: r.end() - start,
                });
                cur.1.extend_from_slice(&extents[from..to]);
                x = to;
                break;
            }
            if room < 2 {
                pieces.push((vec![], vec![]));
                continue;
            }
            // Cut the range before the first extent that does not fit: the
            // extents before it end at or below the cut.
            let take = room - 1;
            let cut = extents[from + take].lba.0;
            cur.0.push(CkptRange {
                lba: Lba(start),
                len: cut - start,
            });
            cur.1.extend_from_slice(&extents[from..from + take]);
            pieces.push((vec![], vec![]));
            start = cut;
            x = from + take;
        }
    }
    if pieces.len() > 1 && pieces.last().is_some_and(|p| p.0.is_empty()) {
        pieces.pop();
    }
    let count = pieces.len() as u32;
    let total_ranges = pieces.iter().map(|p| p.0.len() as u64).sum();
    let total_extents = extents.len() as u64;
    let mut objects = Some(objects);
    pieces
        .into_iter()
        .enumerate()
        .map(|(i, (piece_ranges, piece_extents))| CheckpointPiece {
            uuid,
            ckpt_seq,
            index: i as u32,
            count,
            last_obj_seq,
            max_jseq,
            total_extents,
            objects: objects.take().unwrap_or_default(),
            extents: piece_extents,
            delta: Some(Delta {
                base_seq: base.seq,
                base_pieces: base.pieces,
                depth: base.depth,
                total_ranges,
                ranges: piece_ranges,
            }),
            flags: 0,
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

    /// A checkpoint whose journal sequence is the last one there is would
    /// make an open number the next write past u64::MAX.
    #[test]
    fn journal_sequence_at_the_end_of_the_space_is_rejected() {
        let mut p = sample_pieces().remove(0);
        p.max_jseq = JournalSeq(u64::MAX - 1);
        assert_eq!(CheckpointPiece::decode(&p.encode()).unwrap(), p);
        p.max_jseq = JournalSeq(u64::MAX);
        let e = CheckpointPiece::decode(&p.encode()).unwrap_err();
        assert!(e.to_string().contains("end of the sequence space"), "{e}");
    }

    #[test]
    fn golden_vector() {
        let p = &sample_pieces()[0];
        let g = golden("checkpoint-v1.bin", &p.encode());
        assert_eq!(&CheckpointPiece::decode(&g).unwrap(), p);
    }

    fn delta_base() -> DeltaBase {
        DeltaBase {
            seq: ObjSeq(3),
            pieces: 3,
            depth: 1,
        }
    }

    /// Three ranges: one with two extents, one hole (no extent), one with
    /// three extents.
    fn delta_input() -> (Vec<CkptRange>, Vec<CkptExtent>) {
        let r = |lba, len| CkptRange { lba: Lba(lba), len };
        let x = |lba, len, obj, offset| CkptExtent {
            lba: Lba(lba),
            len,
            obj: ObjSeq(obj),
            offset,
        };
        (
            vec![r(0, 64), r(100, 8), r(200, 100)],
            vec![
                x(0, 8, 7, 8),
                x(16, 48, 8, 8),
                x(200, 8, 7, 16),
                x(220, 8, 8, 56),
                x(290, 10, 8, 64),
            ],
        )
    }

    fn sample_delta(per_piece: usize) -> Vec<CheckpointPiece> {
        let (ranges, extents) = delta_input();
        split_delta_into_pieces(
            ImageUuid([9; 16]),
            ObjSeq(10),
            ObjSeq(9),
            JournalSeq(99),
            vec![CkptObject {
                obj: ObjSeq(7),
                data_sectors: 64,
                live_sectors: 16,
            }],
            delta_base(),
            &ranges,
            &extents,
            per_piece,
        )
    }

    #[test]
    fn delta_round_trip_and_split_keeps_ranges_whole() {
        let (ranges, extents) = delta_input();
        for per_piece in [2, 3, 4, 5, 100] {
            let pieces = sample_delta(per_piece);
            let mut got_ranges: Vec<CkptRange> = vec![];
            let mut got_extents = vec![];
            for (i, p) in pieces.iter().enumerate() {
                assert_eq!(&CheckpointPiece::decode(&p.encode()).unwrap(), p);
                let d = p.delta.as_ref().unwrap();
                assert_eq!(p.index, i as u32);
                assert_eq!(p.count, pieces.len() as u32);
                assert_eq!(p.objects.len(), usize::from(i == 0));
                assert!(d.ranges.len() + p.extents.len() <= per_piece, "{per_piece}");
                assert_eq!(p.total_extents, extents.len() as u64);
                // Cut ranges join up again.
                for r in &d.ranges {
                    match got_ranges.last_mut() {
                        Some(last) if last.end() == r.lba.0 => last.len += r.len,
                        _ => got_ranges.push(*r),
                    }
                }
                got_extents.extend_from_slice(&p.extents);
            }
            let total: u64 = pieces
                .iter()
                .map(|p| p.delta.as_ref().unwrap().ranges.len() as u64)
                .sum();
            assert!(pieces
                .iter()
                .all(|p| p.delta.as_ref().unwrap().total_ranges == total));
            // Ranges 0..64 and 100..108 are adjacent to nothing, so the
            // joined list is exactly the input.
            assert_eq!(got_ranges, ranges, "{per_piece}");
            assert_eq!(got_extents, extents, "{per_piece}");
        }
    }

    #[test]
    fn an_empty_delta_is_one_piece() {
        let p = split_delta_into_pieces(
            ImageUuid([1; 16]),
            ObjSeq(6),
            ObjSeq(5),
            JournalSeq(0),
            vec![],
            delta_base(),
            &[],
            &[],
            10,
        );
        assert_eq!(p.len(), 1);
        assert_eq!(CheckpointPiece::decode(&p[0].encode()).unwrap(), p[0]);
    }

    #[test]
    fn corrupt_delta_is_rejected() {
        for p in sample_delta(3) {
            assert_rejects_corruption(&p.encode(), CheckpointPiece::decode, &[]);
        }
    }

    #[test]
    fn delta_fields_are_checked() {
        let good = &sample_delta(100)[0];
        let bad = |f: &dyn Fn(&mut CheckpointPiece)| {
            let mut p = good.clone();
            f(&mut p);
            let e = CheckpointPiece::decode(&p.encode()).unwrap_err();
            assert!(matches!(e, FormatError::Invalid { .. }), "{e}");
        };
        // The base must lie wholly below the delta.
        bad(&|p| p.delta.as_mut().unwrap().base_seq = ObjSeq(9));
        bad(&|p| p.delta.as_mut().unwrap().base_seq = ObjSeq(0));
        bad(&|p| p.delta.as_mut().unwrap().base_seq = ObjSeq(u64::MAX));
        bad(&|p| p.delta.as_mut().unwrap().base_pieces = 0);
        bad(&|p| p.delta.as_mut().unwrap().depth = 0);
        bad(&|p| p.delta.as_mut().unwrap().depth = MAX_DEPTH + 1);
        bad(&|p| p.delta.as_mut().unwrap().total_ranges = 1);
        // Ranges ascending, disjoint, non-empty; extents inside them.
        bad(&|p| p.delta.as_mut().unwrap().ranges.swap(0, 1));
        bad(&|p| p.delta.as_mut().unwrap().ranges[1].lba = Lba(60));
        bad(&|p| p.delta.as_mut().unwrap().ranges[1].len = 0);
        bad(&|p| p.extents[0].lba = Lba(64));
        bad(&|p| p.extents[1].len = 49);
        bad(&|p| p.extents.swap(0, 1));
        bad(&|p| p.extents[3].lba = Lba(204));
    }

    #[test]
    fn golden_vector_delta() {
        let p = &sample_delta(100)[0];
        let g = golden("checkpoint-v2.bin", &p.encode());
        assert_eq!(&CheckpointPiece::decode(&g).unwrap(), p);
    }
}
