//! GC object: live data copied out of cleaned objects, with where it came
//! from, so applying it moves only what still points at the source.
//!
//! Header layout (little endian), version 2; the header is padded with zeros
//! to `header_bytes` (a multiple of 4096) and the copied data follows:
//!
//! | off | size | field |
//! |----:|-----:|-------|
//! | 0   | 8    | magic `LSVDGCO1` |
//! | 8   | 4    | version = 2 (1: see below) |
//! | 12  | 4    | header_bytes: header incl. padding; data starts here |
//! | 16  | 16   | image UUID |
//! | 32  | 8    | object sequence |
//! | 40  | 4    | number of moves N (> 0) |
//! | 44  | 4    | data sectors (512 B) after the header |
//! | 48  | 4    | number of chunk crcs C (exactly [`ChunkCrcs::count`]) |
//! | 52  | 20   | reserved, 0 |
//! | 72  | 32*N | moves: LBA (8), sectors (4), data offset in sectors from the data start (4), source object sequence (8), source offset in sectors from the start of the source object (4), reserved (4) |
//! | 72+32N | 4*C | crc32c of the data in each 64 KiB chunk of the object, in order (see [`super::chunks`]) |
//! | 72+32N+4C | 4 | crc32c of bytes 0 .. 72+32N+4C |
//!
//! Version 1 (written before chunk checksums; still read) has one crc32c of
//! the whole data area at 48 and no chunk table: its header crc sits at
//! 72+32N.
//!
//! Applying a move maps `[lba, lba+sectors)` to this object only where the
//! map still points at exactly the source location (same object, same
//! offset): data written after the copy was taken is never overwritten.

use super::chunks::{ChunkCrcs, DataCheck};
use super::{check_magic_versions, crc, round_up, Dec, Enc, FormatError};
use crate::units::{ImageUuid, Lba, ObjSeq, SECTOR};

/// Magic at the start of every GC object (both versions).
pub const MAGIC: &[u8; 8] = b"LSVDGCO1";
/// Format version this build writes (it reads 1 too).
pub const VERSION: u32 = 2;
/// The first version, without chunk checksums.
pub const VERSION_1: u32 = 1;
const WHAT: &str = "GC object header";
/// Fixed part of the header.
pub const FIXED_BYTES: usize = 72;
/// Bytes per move entry.
pub const MOVE_BYTES: usize = 32;
/// Headers are padded to a multiple of this.
pub const HEADER_ALIGN: u64 = 4096;

/// One relocated run of live data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcMove {
    /// First sector on the disk.
    pub lba: Lba,
    /// Length in sectors (> 0).
    pub sectors: u32,
    /// Offset of the data in sectors from the start of the data area.
    pub data_offset: u32,
    /// The object the data was copied from.
    pub src_obj: ObjSeq,
    /// Offset of the data in the source object, in sectors from its start
    /// (as the map stores it).
    pub src_offset: u32,
}

/// A decoded GC object header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcHeader {
    /// Image identity.
    pub uuid: ImageUuid,
    /// Object sequence.
    pub seq: ObjSeq,
    /// Moves, in LBA order.
    pub moves: Vec<GcMove>,
    /// Sectors of data.
    pub data_sectors: u32,
    /// The data checksums: per chunk (version 2) or whole (version 1).
    pub data_check: DataCheck,
    /// Header size including padding (data starts here), bytes.
    pub header_bytes: u32,
}

impl GcHeader {
    /// Header size (padded) for `n` moves and `data_bytes` of data: room
    /// for the chunk crcs however the data falls on chunks.
    pub fn header_bytes_for(n: usize, data_bytes: u64) -> u32 {
        round_up(
            (FIXED_BYTES + MOVE_BYTES * n + 4 * ChunkCrcs::max_count(data_bytes) + 4) as u64,
            HEADER_ALIGN,
        ) as u32
    }

    /// Offset of the data area in sectors.
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

    /// Encode only the header (padded to `header_bytes`) of the GC object
    /// whose data area is `data`; the object is this followed by `data`.
    pub fn encode_header(uuid: ImageUuid, seq: ObjSeq, moves: &[GcMove], data: &[u8]) -> Vec<u8> {
        Self::encode_header_and_crcs(uuid, seq, moves, data).0
    }

    /// [`GcHeader::encode_header`], also returning the chunk crcs it wrote
    /// and the data's 4 KiB block crcs they were joined from.
    pub fn encode_header_and_crcs(
        uuid: ImageUuid,
        seq: ObjSeq,
        moves: &[GcMove],
        data: &[u8],
    ) -> (Vec<u8>, ChunkCrcs, Vec<u32>) {
        let header_bytes = Self::header_bytes_for(moves.len(), data.len() as u64);
        let (chunks, blocks) = ChunkCrcs::compute_with_blocks(header_bytes, data, None);
        let mut e = Enc::with_capacity(header_bytes as usize);
        e.bytes(MAGIC)
            .u32(VERSION)
            .u32(header_bytes)
            .bytes(&uuid.0)
            .u64(seq.0)
            .u32(moves.len() as u32)
            .u32((data.len() as u64 / SECTOR) as u32)
            .u32(chunks.crcs().len() as u32)
            .zeros(20);
        encode_moves(&mut e, moves);
        for &c in chunks.crcs() {
            e.u32(c);
        }
        let c = crc(0, &e.buf);
        e.u32(c);
        e.pad_to(header_bytes as usize);
        (e.buf, chunks, blocks)
    }

    /// Encode a complete GC object: header followed by `data`.
    pub fn encode_object(uuid: ImageUuid, seq: ObjSeq, moves: &[GcMove], data: &[u8]) -> Vec<u8> {
        let mut v = Self::encode_header(uuid, seq, moves, data);
        v.extend_from_slice(data);
        v
    }

    /// The version-1 encoding (one crc of the whole data area), as builds
    /// before chunk checksums wrote it: for tests that old objects still
    /// read.
    #[cfg(test)]
    pub(crate) fn encode_object_v1(
        uuid: ImageUuid,
        seq: ObjSeq,
        moves: &[GcMove],
        data: &[u8],
    ) -> Vec<u8> {
        let header_bytes = round_up(
            (FIXED_BYTES + MOVE_BYTES * moves.len() + 4) as u64,
            HEADER_ALIGN,
        ) as u32;
        let mut e = Enc::with_capacity(header_bytes as usize + data.len());
        e.bytes(MAGIC)
            .u32(VERSION_1)
            .u32(header_bytes)
            .bytes(&uuid.0)
            .u64(seq.0)
            .u32(moves.len() as u32)
            .u32((data.len() as u64 / SECTOR) as u32)
            .u32(crc(0, data))
            .zeros(20);
        encode_moves(&mut e, moves);
        let c = crc(0, &e.buf);
        e.u32(c);
        e.pad_to(header_bytes as usize);
        e.bytes(data);
        e.buf
    }

    /// How many bytes of the object must be read to decode the header, given
    /// its first [`FIXED_BYTES`] or more. Errors if the prefix is not a GC
    /// object header.
    pub fn needed_bytes(prefix: &[u8]) -> Result<usize, FormatError> {
        let mut d = Dec::new(WHAT, prefix);
        let version = check_magic_versions(&mut d, WHAT, MAGIC, &[VERSION_1, VERSION])?;
        let hb = d.u32()?;
        if !(hb as u64).is_multiple_of(HEADER_ALIGN) || hb == 0 {
            return Err(d.invalid(format!("header size {hb} is not a multiple of 4096")));
        }
        d.skip(24)?;
        let n = d.u32()? as usize;
        let data_sectors = d.u32()?;
        let c = d.u32()? as usize;
        let c = ChunkCrcs::checked_count(&d, version != VERSION_1, c, hb, data_sectors)?;
        let need = (FIXED_BYTES + 4)
            .saturating_add(MOVE_BYTES.saturating_mul(n))
            .saturating_add(4 * c);
        if need > hb as usize {
            return Err(d.invalid(format!("{n} moves do not fit a {hb}-byte header")));
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

    /// Decode and validate a header from the start of an object (`buf` must
    /// hold at least [`GcHeader::needed_bytes`]).
    pub fn decode(buf: &[u8]) -> Result<GcHeader, FormatError> {
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
        let n = d.u32()? as usize;
        let data_sectors = d.u32()?;
        let crc_or_count = d.u32()?;
        d.skip(20)?;
        if seq.0 == 0 || seq.0 == u64::MAX || n == 0 {
            return Err(d.invalid(format!("object {} with {n} moves", seq.0)));
        }
        // Map locations are u32 sectors from the object's start.
        if !super::data_area_fits(header_bytes, data_sectors) {
            return Err(d.invalid(format!(
                "{data_sectors} data sectors after a {header_bytes}-byte header end beyond \
                 32-bit sector offsets"
            )));
        }
        let mut moves = Vec::with_capacity(n);
        for i in 0..n {
            let lba = Lba(d.u64()?);
            let sectors = d.u32()?;
            let data_offset = d.u32()?;
            let src_obj = ObjSeq(d.u64()?);
            let src_offset = d.u32()?;
            d.skip(4)?;
            if sectors == 0 {
                return Err(d.invalid(format!("move {i}: zero length")));
            }
            if super::beyond_max(lba, u64::from(sectors)) {
                return Err(d.invalid(format!("move {i}: {lba}+{sectors} beyond any image")));
            }
            if data_offset as u64 + sectors as u64 > data_sectors as u64 {
                return Err(d.invalid(format!("move {i}: data beyond the data area")));
            }
            if src_obj.0 == 0 || src_obj >= seq {
                return Err(d.invalid(format!(
                    "move {i}: source object {} is not below object {}",
                    src_obj.0, seq.0
                )));
            }
            if src_offset as u64 + sectors as u64 > u64::from(u32::MAX) {
                return Err(d.invalid(format!("move {i}: source offset overflows")));
            }
            moves.push(GcMove {
                lba,
                sectors,
                data_offset,
                src_obj,
                src_offset,
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
        Ok(GcHeader {
            uuid,
            seq,
            moves,
            data_sectors,
            data_check,
            header_bytes,
        })
    }

    /// Verify the data area of a whole object: every chunk crc (version 2)
    /// or the crc of the whole area (version 1).
    pub fn verify_data(&self, object: &[u8]) -> Result<(), FormatError> {
        self.data_check.verify_object(
            "GC object data",
            self.header_bytes,
            self.data_sectors,
            object,
        )
    }
}

/// The move entries of a header.
fn encode_moves(e: &mut Enc, moves: &[GcMove]) {
    for m in moves {
        e.u64(m.lba.0)
            .u32(m.sectors)
            .u32(m.data_offset)
            .u64(m.src_obj.0)
            .u32(m.src_offset)
            .u32(0);
    }
}

#[cfg(test)]
mod tests {

    /// As for data objects: a data area beyond 32-bit sector offsets from
    /// the object's start is refused (map locations would wrap).
    #[test]
    fn a_gc_object_beyond_32_bit_sector_offsets_is_rejected() {
        let mut b = sample_v1();
        // data sectors (offset 44) = u32::MAX; the first move's data
        // offset (at 72 + 12) at u32::MAX - its sectors.
        b[44..48].copy_from_slice(&u32::MAX.to_le_bytes());
        let sectors = u32::from_le_bytes(b[80..84].try_into().unwrap());
        b[84..88].copy_from_slice(&(u32::MAX - sectors).to_le_bytes());
        GcHeader::reseal(&mut b);
        let e = GcHeader::decode(&b).unwrap_err();
        assert!(e.to_string().contains("32-bit"), "{e}");
    }
    use super::*;
    use crate::format::testutil::{assert_rejects_corruption, golden};

    fn moves() -> Vec<GcMove> {
        vec![
            GcMove {
                lba: Lba(8),
                sectors: 8,
                data_offset: 0,
                src_obj: ObjSeq(3),
                src_offset: 16,
            },
            GcMove {
                lba: Lba(16),
                sectors: 2,
                data_offset: 8,
                src_obj: ObjSeq(7),
                src_offset: 9,
            },
            GcMove {
                lba: Lba(4000),
                sectors: 1,
                data_offset: 10,
                src_obj: ObjSeq(3),
                src_offset: 8,
            },
        ]
    }

    fn sample_data() -> Vec<u8> {
        (0..11 * 512).map(|i| (i % 253) as u8).collect()
    }

    fn sample() -> Vec<u8> {
        GcHeader::encode_object(ImageUuid([5; 16]), ObjSeq(42), &moves(), &sample_data())
    }

    /// The sample as builds before chunk checksums wrote it.
    fn sample_v1() -> Vec<u8> {
        GcHeader::encode_object_v1(ImageUuid([5; 16]), ObjSeq(42), &moves(), &sample_data())
    }

    #[test]
    fn round_trip() {
        let obj = sample();
        let h = GcHeader::decode(&obj).unwrap();
        assert_eq!(h.seq, ObjSeq(42));
        assert_eq!(h.uuid, ImageUuid([5; 16]));
        assert_eq!(h.moves, moves());
        assert_eq!(h.header_bytes, 4096);
        assert_eq!(h.data_start_sectors(), 8);
        assert_eq!(h.data_sectors, 11);
        assert_eq!(h.chunk_crcs().unwrap().crcs(), &[crc(0, &sample_data())]);
        h.verify_data(&obj).unwrap();
        assert_eq!(
            GcHeader::needed_bytes(&obj[..72]).unwrap(),
            72 + 3 * 32 + 4 + 4
        );
    }

    #[test]
    fn chunk_crcs_find_a_flip_with_its_offset() {
        let data: Vec<u8> = (0..300 * 1024).map(|i| (i * 3 % 241) as u8).collect();
        let m = GcMove {
            sectors: 600,
            ..moves()[0]
        };
        let obj = GcHeader::encode_object(ImageUuid([5; 16]), ObjSeq(42), &[m], &data);
        let h = GcHeader::decode(&obj).unwrap();
        assert_eq!(h.chunk_crcs().unwrap().crcs().len(), 5);
        h.verify_data(&obj).unwrap();
        let mut bad = obj.clone();
        bad[65536 + 7] ^= 0x80;
        let e = h.verify_data(&bad).unwrap_err();
        assert!(e.to_string().contains("chunk at byte 65536"), "{e}");
    }

    #[test]
    fn version_1_objects_still_decode() {
        let obj = sample_v1();
        let h = GcHeader::decode(&obj).unwrap();
        assert_eq!(h.moves, moves());
        assert_eq!(h.data_check, DataCheck::Whole(crc(0, &sample_data())));
        h.verify_data(&obj).unwrap();
        let mut bad = obj.clone();
        bad[5000] ^= 1;
        assert!(h.verify_data(&bad).is_err());
        assert_rejects_corruption(&obj[..72 + 3 * 32 + 4], GcHeader::decode, &[]);
    }

    #[test]
    fn corrupt_input_is_rejected() {
        let obj = sample();
        let hlen = 72 + 3 * 32 + 4 + 4;
        assert_rejects_corruption(&obj[..hlen], GcHeader::decode, &[]);
        let h = GcHeader::decode(&obj).unwrap();
        let mut bad = obj.clone();
        bad[5000] ^= 1;
        assert!(h.verify_data(&bad).is_err());
        assert!(h.verify_data(&obj[..obj.len() - 1]).is_err());
        // A data object is not a GC object.
        let mut other = obj.clone();
        other[..8].copy_from_slice(b"LSVDOBJ1");
        assert_eq!(
            GcHeader::decode(&other).unwrap_err(),
            FormatError::BadMagic { what: WHAT }
        );
    }

    #[test]
    fn impossible_fields_are_refused_with_a_reason() {
        let data = vec![0u8; 11 * 512];
        for (m, why) in [
            (
                GcMove {
                    src_obj: ObjSeq(42),
                    ..moves()[0]
                },
                "not below",
            ),
            (
                GcMove {
                    sectors: 0,
                    ..moves()[0]
                },
                "zero length",
            ),
            (
                GcMove {
                    data_offset: 10,
                    ..moves()[0]
                },
                "beyond the data area",
            ),
        ] {
            let obj = GcHeader::encode_object(ImageUuid([5; 16]), ObjSeq(42), &[m], &data);
            let e = GcHeader::decode(&obj).unwrap_err();
            assert!(e.to_string().contains(why), "{e}");
        }
        let empty = GcHeader::encode_object(ImageUuid([5; 16]), ObjSeq(42), &[], &[]);
        assert!(GcHeader::decode(&empty).is_err());
        // The last object sequence there is: no object could follow it.
        let last = GcHeader::encode_object(ImageUuid([5; 16]), ObjSeq(u64::MAX), &moves(), &data);
        assert!(GcHeader::decode(&last)
            .unwrap_err()
            .to_string()
            .contains(&format!("object {}", u64::MAX)));
        let mut v = sample();
        v[8] = 3;
        assert!(GcHeader::decode(&v)
            .unwrap_err()
            .to_string()
            .contains("unsupported format version 3"));
        let mut v = sample();
        v[48] = 2;
        assert!(GcHeader::decode(&v)
            .unwrap_err()
            .to_string()
            .contains("2 chunk checksums"));
    }

    #[test]
    fn golden_vector() {
        let g = golden("gcobject-v2.bin", &sample());
        let h = GcHeader::decode(&g).unwrap();
        assert_eq!(h.moves, moves());
        h.verify_data(&g).unwrap();
    }

    #[test]
    fn golden_vector_v1() {
        // The old encoding is unchanged, and this build still reads it.
        let g = golden("gcobject-v1.bin", &sample_v1());
        let h = GcHeader::decode(&g).unwrap();
        assert_eq!(h.moves, moves());
        h.verify_data(&g).unwrap();
    }
}
