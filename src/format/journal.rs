//! Journal layouts: the journal superblock (block 0) and records.
//!
//! The journal is a file or block device of `size` bytes in 4096-byte
//! blocks. Block 0 is the superblock; records fill `[4096, size)` circularly.
//!
//! Superblock (version 1), padded with zeros to 4096 bytes:
//!
//! | off | size | field |
//! |----:|-----:|-------|
//! | 0   | 8    | magic `LSVDJNL1` |
//! | 8   | 4    | version = 1 |
//! | 12  | 4    | block size = 4096 |
//! | 16  | 16   | UUID of the image this journal belongs to |
//! | 32  | 8    | generation (random at format; mixed into every record checksum) |
//! | 40  | 8    | journal size in bytes |
//! | 48  | 8    | replay start: byte offset of the oldest record still needed |
//! | 56  | 8    | replay start: journal sequence expected there |
//! | 64  | 8    | update sequence (bumped on every rewrite) |
//! | 72  | 4    | crc32c of bytes 0..72 |
//!
//! Record: a header of `header_bytes` (a multiple of 4096) followed by the
//! data of its write entries, padded with zeros to a multiple of 4096.
//!
//! | off | size | field |
//! |----:|-----:|-------|
//! | 0   | 4    | magic `LSJR` |
//! | 4   | 2    | version = 1 |
//! | 6   | 2    | kind: 1 = entries, 2 = wrap (continue at offset 4096) |
//! | 8   | 4    | header_bytes |
//! | 12  | 4    | data bytes (sum of write entry lengths) |
//! | 16  | 8    | journal sequence of the first entry (for wrap: the next sequence) |
//! | 24  | 4    | number of entries N |
//! | 28  | 4    | crc32c: seeded with the generation (8 bytes LE), over the header with this field zero, then the data |
//! | 32  | 16*N | entries: LBA (8), sectors (4), kind (1: write, 2: trim, 3: write-zeroes), 3 reserved |
//!
//! Entry i has journal sequence `first + i`. Because the generation seeds
//! the checksum, a record left by an earlier format of the same space never
//! validates; because replay demands consecutive sequences, a stale record
//! from an earlier lap never does either.

use super::{check_magic_version, crc, round_up, Dec, Enc, FormatError};
use crate::units::{Generation, ImageUuid, JournalSeq, Lba, SECTOR};

use super::object::OpKind;

/// Journal block size: alignment of records and of O_DIRECT I/O.
pub const BLOCK: u64 = 4096;
const SB_MAGIC: &[u8; 8] = b"LSVDJNL1";
/// Superblock format version.
pub const SB_VERSION: u32 = 1;
const SB_WHAT: &str = "journal superblock";
const REC_MAGIC: &[u8; 4] = b"LSJR";
/// Record format version.
pub const REC_VERSION: u16 = 1;
const REC_WHAT: &str = "journal record";
/// Fixed part of a record header.
pub const REC_FIXED: usize = 32;
/// Bytes per record entry.
pub const REC_ENTRY: usize = 16;

/// The journal superblock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalSuper {
    /// Image the journal belongs to.
    pub uuid: ImageUuid,
    /// Generation, mixed into record checksums.
    pub generation: Generation,
    /// Journal size in bytes.
    pub size: u64,
    /// Offset where replay starts.
    pub start_offset: u64,
    /// Sequence expected at `start_offset`.
    pub start_seq: JournalSeq,
    /// Bumped on every rewrite.
    pub update_seq: u64,
}

impl JournalSuper {
    /// Encode to one 4096-byte block.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::with_capacity(BLOCK as usize);
        e.bytes(SB_MAGIC)
            .u32(SB_VERSION)
            .u32(BLOCK as u32)
            .bytes(&self.uuid.0)
            .u64(self.generation.0)
            .u64(self.size)
            .u64(self.start_offset)
            .u64(self.start_seq.0)
            .u64(self.update_seq);
        let c = crc(0, &e.buf);
        e.u32(c);
        e.pad_to(BLOCK as usize);
        e.buf
    }

    /// Whether a block is all zeros (a never-written or wiped journal).
    pub fn is_blank(block: &[u8]) -> bool {
        block.iter().all(|&b| b == 0)
    }

    /// Decode and validate.
    pub fn decode(buf: &[u8]) -> Result<JournalSuper, FormatError> {
        let mut d = Dec::new(SB_WHAT, buf);
        check_magic_version(&mut d, SB_WHAT, SB_MAGIC, SB_VERSION)?;
        d.need(76 - 12)?;
        super::check_trailing_crc(SB_WHAT, &buf[..76])?;
        let block = d.u32()?;
        if block as u64 != BLOCK {
            return Err(d.invalid(format!("block size {block}, expected {BLOCK}")));
        }
        let uuid = ImageUuid(d.array()?);
        let generation = Generation(d.u64()?);
        let size = d.u64()?;
        let start_offset = d.u64()?;
        let start_seq = JournalSeq(d.u64()?);
        let update_seq = d.u64()?;
        if size < 4 * BLOCK || !size.is_multiple_of(BLOCK) {
            return Err(d.invalid(format!(
                "size {size} is not a multiple of 4096 of at least 16 KiB"
            )));
        }
        if start_offset < BLOCK || start_offset > size || !start_offset.is_multiple_of(BLOCK) {
            return Err(d.invalid(format!("replay start {start_offset} outside the journal")));
        }
        Ok(JournalSuper {
            uuid,
            generation,
            size,
            start_offset,
            start_seq,
            update_seq,
        })
    }
}

/// One entry of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordEntry {
    /// First sector.
    pub lba: Lba,
    /// Sectors.
    pub sectors: u32,
    /// Operation.
    pub kind: OpKind,
}

impl RecordEntry {
    /// Bytes of data this entry carries in the record.
    pub fn data_bytes(&self) -> u64 {
        if self.kind == OpKind::Write {
            self.sectors as u64 * SECTOR
        } else {
            0
        }
    }
}

/// Record kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// Carries entries.
    Entries,
    /// Marks that the next record is at the start of the journal.
    Wrap,
}

/// A decoded record header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// Kind.
    pub kind: RecordKind,
    /// Header size in bytes (multiple of 4096).
    pub header_bytes: u32,
    /// Data bytes following the header (before padding).
    pub data_bytes: u32,
    /// Sequence of the first entry.
    pub first_seq: JournalSeq,
    /// Entries.
    pub entries: Vec<RecordEntry>,
    /// Stored checksum.
    pub crc: u32,
}

impl RecordHeader {
    /// Header size for `n` entries.
    pub fn header_bytes_for(n: usize) -> u32 {
        round_up((REC_FIXED + REC_ENTRY * n) as u64, BLOCK) as u32
    }

    /// Total on-disk size of the record (header + padded data).
    pub fn total_bytes(&self) -> u64 {
        self.header_bytes as u64 + round_up(self.data_bytes as u64, BLOCK)
    }

    /// Encode a record into `out` (which is cleared; its length becomes the
    /// record's total size): header, then the data of the write entries
    /// (`data` is their concatenation), then zero padding.
    pub fn encode_into(
        out: &mut Vec<u8>,
        generation: Generation,
        kind: RecordKind,
        first_seq: JournalSeq,
        entries: &[RecordEntry],
        data: &[u8],
    ) {
        let header_bytes = Self::header_bytes_for(entries.len()) as usize;
        let total = header_bytes + round_up(data.len() as u64, BLOCK) as usize;
        out.clear();
        out.resize(total, 0);
        out[header_bytes..header_bytes + data.len()].copy_from_slice(data);
        Self::encode_in_place(out, generation, kind, first_seq, entries, data.len());
    }

    /// Encode a record in `buf` whose data (`data_len` bytes, the
    /// concatenated data of the write entries) already sits at
    /// `header_bytes_for(entries.len())`. Writes the header and checksum;
    /// `buf` must be at least header + data long and its header area zero or
    /// overwritable.
    pub fn encode_in_place(
        buf: &mut [u8],
        generation: Generation,
        kind: RecordKind,
        first_seq: JournalSeq,
        entries: &[RecordEntry],
        data_len: usize,
    ) {
        let header_bytes = Self::header_bytes_for(entries.len()) as usize;
        let mut e = Enc::with_capacity(REC_FIXED + REC_ENTRY * entries.len());
        e.bytes(REC_MAGIC)
            .u16(REC_VERSION)
            .u16(match kind {
                RecordKind::Entries => 1,
                RecordKind::Wrap => 2,
            })
            .u32(header_bytes as u32)
            .u32(data_len as u32)
            .u64(first_seq.0)
            .u32(entries.len() as u32)
            .u32(0);
        for x in entries {
            e.u64(x.lba.0).u32(x.sectors).u8(x.kind.code()).zeros(3);
        }
        buf[..e.len()].copy_from_slice(&e.buf);
        buf[e.len()..header_bytes].fill(0);
        let mut c = crc(0, &generation.0.to_le_bytes());
        c = crc(c, &buf[..header_bytes]);
        c = crc(c, &buf[header_bytes..header_bytes + data_len]);
        buf[28..32].copy_from_slice(&c.to_le_bytes());
    }

    /// Decode the header from the record's first block(s). `buf` must hold
    /// at least `header_bytes` (the first 4096 bytes tell how many; if fewer
    /// are present an error of kind `Truncated` says how many are needed).
    /// The checksum is checked separately with [`RecordHeader::verify`] once
    /// the data has been read.
    pub fn decode(buf: &[u8]) -> Result<RecordHeader, FormatError> {
        let mut d = Dec::new(REC_WHAT, buf);
        let m = d.bytes(4)?;
        if m != REC_MAGIC {
            return Err(FormatError::BadMagic { what: REC_WHAT });
        }
        let version = d.u16()?;
        if version != REC_VERSION {
            return Err(FormatError::UnsupportedVersion {
                what: REC_WHAT,
                version: version as u32,
                supported: REC_VERSION as u32,
            });
        }
        let kind = match d.u16()? {
            1 => RecordKind::Entries,
            2 => RecordKind::Wrap,
            k => return Err(d.invalid(format!("unknown record kind {k}"))),
        };
        let header_bytes = d.u32()?;
        let data_bytes = d.u32()?;
        let first_seq = JournalSeq(d.u64()?);
        let n = d.u32()? as usize;
        let crc = d.u32()?;
        if !(header_bytes as u64).is_multiple_of(BLOCK)
            || header_bytes == 0
            || (REC_FIXED + REC_ENTRY * n) as u64 > header_bytes as u64
        {
            return Err(d.invalid(format!("header size {header_bytes} for {n} entries")));
        }
        if !(data_bytes as u64).is_multiple_of(SECTOR) {
            return Err(d.invalid(format!("data size {data_bytes} is not sector aligned")));
        }
        d.need(header_bytes as usize - REC_FIXED)?;
        let mut entries = Vec::with_capacity(n);
        let mut sum = 0u64;
        for i in 0..n {
            let lba = Lba(d.u64()?);
            let sectors = d.u32()?;
            let code = d.u8()?;
            d.skip(3)?;
            let kind = OpKind::from_code(code)
                .ok_or_else(|| d.invalid(format!("entry {i}: unknown kind {code}")))?;
            if sectors == 0 {
                return Err(d.invalid(format!("entry {i}: zero length")));
            }
            let x = RecordEntry { lba, sectors, kind };
            sum += x.data_bytes();
            entries.push(x);
        }
        if sum != data_bytes as u64 {
            return Err(d.invalid(format!(
                "entries carry {sum} data bytes, header says {data_bytes}"
            )));
        }
        if kind == RecordKind::Wrap && (n != 0 || data_bytes != 0) {
            return Err(d.invalid("wrap record with entries"));
        }
        Ok(RecordHeader {
            kind,
            header_bytes,
            data_bytes,
            first_seq,
            entries,
            crc,
        })
    }

    /// Verify the checksum of a whole record (`buf` starts at the header and
    /// holds at least `header_bytes + data_bytes`) under `generation`.
    pub fn verify(&self, buf: &[u8], generation: Generation) -> Result<(), FormatError> {
        let hb = self.header_bytes as usize;
        let end = hb + self.data_bytes as usize;
        if buf.len() < end {
            return Err(FormatError::Truncated {
                what: REC_WHAT,
                need: end,
                have: buf.len(),
            });
        }
        let mut c = crc(0, &generation.0.to_le_bytes());
        c = crc(c, &buf[..28]);
        c = crc(c, &[0u8; 4]);
        c = crc(c, &buf[32..hb]);
        c = crc(c, &buf[hb..end]);
        if c != self.crc {
            return Err(FormatError::BadChecksum {
                what: REC_WHAT,
                stored: self.crc,
                computed: c,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::testutil::{assert_rejects_corruption, golden};

    fn sb() -> JournalSuper {
        JournalSuper {
            uuid: ImageUuid([5; 16]),
            generation: Generation(0xdead_beef),
            size: 1 << 20,
            start_offset: 8192,
            start_seq: JournalSeq(17),
            update_seq: 4,
        }
    }

    fn record(gen: Generation) -> Vec<u8> {
        let entries = [
            RecordEntry {
                lba: Lba(16),
                sectors: 8,
                kind: OpKind::Write,
            },
            RecordEntry {
                lba: Lba(64),
                sectors: 128,
                kind: OpKind::Trim,
            },
            RecordEntry {
                lba: Lba(1),
                sectors: 1,
                kind: OpKind::Write,
            },
        ];
        let data: Vec<u8> = (0..9 * 512).map(|i| (i * 7 % 256) as u8).collect();
        let mut out = Vec::new();
        RecordHeader::encode_into(
            &mut out,
            gen,
            RecordKind::Entries,
            JournalSeq(17),
            &entries,
            &data,
        );
        out
    }

    fn decode_verified(buf: &[u8], gen: Generation) -> Result<RecordHeader, FormatError> {
        let h = RecordHeader::decode(buf)?;
        h.verify(buf, gen)?;
        Ok(h)
    }

    #[test]
    fn superblock_round_trip_and_corruption() {
        let b = sb().encode();
        assert_eq!(b.len(), 4096);
        assert_eq!(JournalSuper::decode(&b).unwrap(), sb());
        assert_rejects_corruption(&b[..76], JournalSuper::decode, &[]);
        assert!(JournalSuper::is_blank(&[0u8; 4096]));
        assert!(!JournalSuper::is_blank(&b));
    }

    #[test]
    fn record_round_trip() {
        let gen = Generation(99);
        let r = record(gen);
        assert_eq!(r.len(), 4096 + 8192);
        let h = decode_verified(&r, gen).unwrap();
        assert_eq!(h.first_seq, JournalSeq(17));
        assert_eq!(h.entries.len(), 3);
        assert_eq!(h.data_bytes, 9 * 512);
        assert_eq!(h.total_bytes(), r.len() as u64);
    }

    #[test]
    fn record_from_another_generation_never_validates() {
        let r = record(Generation(1));
        assert!(matches!(
            decode_verified(&r, Generation(2)),
            Err(FormatError::BadChecksum { .. })
        ));
    }

    #[test]
    fn corrupt_records_are_rejected() {
        let gen = Generation(99);
        let r = record(gen);
        let used = 4096 + 9 * 512;
        // Flips in the header padding are covered by the crc too; only the
        // record's trailing padding after the data is outside it.
        assert_rejects_corruption(&r[..used], |b| decode_verified(b, gen), &[]);
    }

    #[test]
    fn golden_vectors() {
        golden("journal-super-v1.bin", &sb().encode());
        let g = golden("journal-record-v1.bin", &record(Generation(99)));
        decode_verified(&g, Generation(99)).unwrap();
    }
}
