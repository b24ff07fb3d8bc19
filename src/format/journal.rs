//! Journal layouts: the journal superblock (two slots, blocks 0 and 1) and
//! records.
//!
//! The journal is a file or block device of `size` bytes in 4096-byte
//! blocks. Version 2 (written by this build): blocks 0 and 1 are the two
//! superblock slots, written alternately; records fill `[8192, size)`
//! circularly. Version 1 (read only, upgraded at open): block 0 is the only
//! superblock; records fill `[4096, size)`.
//!
//! Superblock slot (version 2), padded with zeros to 4096 bytes:
//!
//! | off | size | field |
//! |----:|-----:|-------|
//! | 0   | 8    | magic `LSVDJNL1` |
//! | 8   | 4    | version = 2 |
//! | 12  | 4    | block size = 4096 |
//! | 16  | 16   | UUID of the image this journal belongs to |
//! | 32  | 8    | generation (random at format; mixed into every record checksum) |
//! | 40  | 8    | journal size in bytes |
//! | 48  | 8    | replay start: byte offset of the oldest record still needed |
//! | 56  | 8    | replay start: journal sequence expected there |
//! | 64  | 8    | update sequence (the valid slot with the higher one wins) |
//! | 72  | 8    | epoch: of the session writing now; no record has a higher one |
//! | 80  | 8    | start epoch: the lowest epoch a record at the replay start may have |
//! | 88  | 4    | slot: the block (0 or 1) this copy belongs in |
//! | 92  | 4    | crc32c of bytes 0..92 |
//!
//! Version 1 has the fields up to the update sequence, then the crc32c of
//! bytes 0..72 at 72 (no epochs, one slot).
//!
//! Record (version 2): a header of `header_bytes` (a multiple of 4096)
//! followed by the data of its write entries, padded with zeros to a
//! multiple of 4096.
//!
//! | off | size | field |
//! |----:|-----:|-------|
//! | 0   | 4    | magic `LSJR` |
//! | 4   | 2    | version = 2 |
//! | 6   | 2    | kind: 1 = entries, 2 = wrap (continue at the record area's start) |
//! | 8   | 4    | header_bytes |
//! | 12  | 4    | data bytes (sum of write entry lengths) |
//! | 16  | 8    | journal sequence of the first entry (for wrap: the next sequence) |
//! | 24  | 4    | number of entries N |
//! | 28  | 4    | crc32c: seeded with the generation (8 bytes LE), over the header with this field zero, then the data |
//! | 32  | 8    | epoch of the session that wrote it |
//! | 40  | 16*N | entries: LBA (8), sectors (4), kind (1: write, 2: trim, 3: write-zeroes), 3 reserved |
//!
//! Version 1 records have no epoch: the entries start at 32.
//!
//! Entry i has journal sequence `first + i`. Because the generation seeds
//! the checksum, a record left by an earlier format of the same space never
//! validates; because replay demands consecutive sequences, a stale record
//! from an earlier lap never does either; because replay demands epochs
//! that never decrease along the chain (from the superblock's start epoch),
//! a record that followed a hole which an earlier open cut never validates
//! after the records a later session wrote over the hole.

use super::{crc, round_up, CrcSource, Dec, Enc, FormatError};
use crate::units::{Epoch, Generation, ImageUuid, JournalSeq, Lba, SECTOR};

use super::object::OpKind;

/// Journal block size: alignment of records and of O_DIRECT I/O.
pub const BLOCK: u64 = 4096;
/// Superblock slots of a version 2 journal (blocks 0 and 1).
pub const SLOTS: u64 = 2;
const SB_MAGIC: &[u8; 8] = b"LSVDJNL1";
/// Superblock format version written by this build.
pub const SB_VERSION: u32 = 2;
/// The superblock version of journals written by earlier builds (one slot,
/// records without epochs); read, replayed and then reformatted.
pub const SB_VERSION_LEGACY: u32 = 1;
/// Significant bytes of a version 2 superblock slot (crc included).
const SB_LEN: usize = 96;
/// Significant bytes of a version 1 superblock (crc included).
const SB_LEN_V1: usize = 76;
const SB_WHAT: &str = "journal superblock";
const REC_MAGIC: &[u8; 4] = b"LSJR";
/// Record format version written by this build.
pub const REC_VERSION: u16 = 2;
/// Record version of journals written by earlier builds.
pub const REC_VERSION_LEGACY: u16 = 1;
const REC_WHAT: &str = "journal record";
/// Fixed part of a record header (version 2).
pub const REC_FIXED: usize = 40;
/// Fixed part of a version 1 record header.
const REC_FIXED_V1: usize = 32;
/// Bytes per record entry.
pub const REC_ENTRY: usize = 16;

/// The journal superblock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalSuper {
    /// Format version: [`SB_VERSION`], or [`SB_VERSION_LEGACY`] as decoded
    /// from an earlier build's journal (never encoded).
    pub version: u32,
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
    /// Bumped on every rewrite; the valid slot with the higher one wins.
    pub update_seq: u64,
    /// Epoch of the session now writing (0 for version 1).
    pub epoch: Epoch,
    /// Lowest epoch the record at `start_offset` may carry (0 for version 1).
    pub start_epoch: Epoch,
}

impl JournalSuper {
    /// Byte offset where the record area starts: after the two slots (one
    /// block for version 1).
    pub fn data_start(&self) -> u64 {
        Self::data_start_of(self.version)
    }

    /// [`JournalSuper::data_start`] of a version.
    pub fn data_start_of(version: u32) -> u64 {
        if version == SB_VERSION_LEGACY {
            BLOCK
        } else {
            SLOTS * BLOCK
        }
    }

    /// Encode (always version 2) as the copy for slot `slot` (0 or 1), one
    /// 4096-byte block.
    pub fn encode(&self, slot: u32) -> Vec<u8> {
        debug_assert_eq!(self.version, SB_VERSION, "version 1 is never written");
        let mut e = self.encode_common(SB_VERSION);
        e.u64(self.epoch.0).u64(self.start_epoch.0).u32(slot);
        seal_block(e)
    }

    /// The fields both versions share, up to the update sequence.
    fn encode_common(&self, version: u32) -> Enc {
        let mut e = Enc::with_capacity(BLOCK as usize);
        e.bytes(SB_MAGIC)
            .u32(version)
            .u32(BLOCK as u32)
            .bytes(&self.uuid.0)
            .u64(self.generation.0)
            .u64(self.size)
            .u64(self.start_offset)
            .u64(self.start_seq.0)
            .u64(self.update_seq);
        e
    }

    /// Whether a block is all zeros (a never-written or wiped slot).
    pub fn is_blank(block: &[u8]) -> bool {
        block.iter().all(|&b| b == 0)
    }

    /// For fuzzing: rewrite the crc of a superblock block after its bytes
    /// were changed (the version says where it is).
    #[doc(hidden)]
    pub fn reseal(buf: &mut [u8]) {
        match buf
            .get(8..12)
            .map(|v| u32::from_le_bytes(v.try_into().expect("4 bytes")))
        {
            Some(SB_VERSION) => super::reseal_trailing(buf, SB_LEN),
            Some(SB_VERSION_LEGACY) => super::reseal_trailing(buf, SB_LEN_V1),
            _ => {}
        }
    }

    /// Decode and validate the block read from slot `slot` (block 0 may
    /// also hold a version 1 superblock; block 1 only a version 2 copy).
    pub fn decode_slot(buf: &[u8], slot: u32) -> Result<JournalSuper, FormatError> {
        let mut d = Dec::new(SB_WHAT, buf);
        let m = d.bytes(8)?;
        if m != SB_MAGIC {
            return Err(FormatError::BadMagic { what: SB_WHAT });
        }
        let version = d.u32()?;
        let len = match version {
            SB_VERSION => SB_LEN,
            SB_VERSION_LEGACY if slot == 0 => SB_LEN_V1,
            _ => {
                return Err(FormatError::UnsupportedVersion {
                    what: SB_WHAT,
                    version,
                    supported: SB_VERSION,
                })
            }
        };
        d.need(len - 12)?;
        super::check_trailing_crc(SB_WHAT, &buf[..len])?;
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
        let (epoch, start_epoch) = if version == SB_VERSION {
            let epoch = Epoch(d.u64()?);
            let start_epoch = Epoch(d.u64()?);
            let found = d.u32()?;
            if found != slot {
                return Err(d.invalid(format!("copy for slot {found} found in slot {slot}")));
            }
            if epoch.0 == 0 || start_epoch > epoch {
                return Err(d.invalid(format!("start epoch {start_epoch} above epoch {epoch}")));
            }
            (epoch, start_epoch)
        } else {
            (Epoch(0), Epoch(0))
        };
        let data_start = Self::data_start_of(version);
        if size < data_start + 3 * BLOCK || !size.is_multiple_of(BLOCK) {
            return Err(d.invalid(format!(
                "size {size} is not a multiple of 4096 of at least {} KiB",
                (data_start + 3 * BLOCK) >> 10
            )));
        }
        if start_offset < data_start || start_offset > size || !start_offset.is_multiple_of(BLOCK) {
            return Err(d.invalid(format!("replay start {start_offset} outside the journal")));
        }
        Ok(JournalSuper {
            version,
            uuid,
            generation,
            size,
            start_offset,
            start_seq,
            update_seq,
            epoch,
            start_epoch,
        })
    }

    /// Decode block 0 (either version).
    pub fn decode(buf: &[u8]) -> Result<JournalSuper, FormatError> {
        Self::decode_slot(buf, 0)
    }
}

/// Append the crc of what `e` holds, pad to one block.
fn seal_block(mut e: Enc) -> Vec<u8> {
    let c = crc(0, &e.buf);
    e.u32(c);
    e.pad_to(BLOCK as usize);
    e.buf
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
    /// Marks that the next record is at the start of the record area.
    Wrap,
}

/// A decoded record header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// Format version ([`REC_VERSION`] or [`REC_VERSION_LEGACY`]).
    pub version: u16,
    /// Kind.
    pub kind: RecordKind,
    /// Header size in bytes (multiple of 4096).
    pub header_bytes: u32,
    /// Data bytes following the header (before padding).
    pub data_bytes: u32,
    /// Sequence of the first entry.
    pub first_seq: JournalSeq,
    /// Epoch of the session that wrote it (0 for version 1).
    pub epoch: Epoch,
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
        epoch: Epoch,
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
        Self::encode_in_place(out, generation, epoch, kind, first_seq, entries, data.len());
    }

    /// Encode a record in `buf` whose data (`data_len` bytes, the
    /// concatenated data of the write entries) already sits at
    /// `header_bytes_for(entries.len())`. Writes the header and checksum;
    /// `buf` must be at least header + data long and its header area zero or
    /// overwritable.
    pub fn encode_in_place(
        buf: &mut [u8],
        generation: Generation,
        epoch: Epoch,
        kind: RecordKind,
        first_seq: JournalSeq,
        entries: &[RecordEntry],
        data_len: usize,
    ) {
        encode_record(
            buf,
            REC_VERSION,
            generation,
            epoch,
            kind,
            first_seq,
            entries,
            data_len,
        );
    }

    /// Write a record's header block in `head` (exactly the header bytes
    /// for `entries`), with a checksum over it and the record's data, given
    /// as `parts` in order: for a record written with `writev` from buffers
    /// that are not after its header in memory.
    #[allow(clippy::too_many_arguments)]
    pub fn encode_header<P: CrcSource>(
        head: &mut [u8],
        generation: Generation,
        epoch: Epoch,
        kind: RecordKind,
        first_seq: JournalSeq,
        entries: &[RecordEntry],
        parts: &[P],
    ) {
        let data_len = parts.iter().map(|p| p.byte_len()).sum();
        let hb = encode_head(head, REC_VERSION, epoch, kind, first_seq, entries, data_len);
        seal_record(&mut head[..hb], generation, parts);
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
        let fixed = match version {
            REC_VERSION => REC_FIXED,
            REC_VERSION_LEGACY => REC_FIXED_V1,
            _ => {
                return Err(FormatError::UnsupportedVersion {
                    what: REC_WHAT,
                    version: version as u32,
                    supported: REC_VERSION as u32,
                })
            }
        };
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
        let epoch = if version == REC_VERSION {
            Epoch(d.u64()?)
        } else {
            Epoch(0)
        };
        if !(header_bytes as u64).is_multiple_of(BLOCK)
            || header_bytes == 0
            || (fixed as u64).saturating_add((REC_ENTRY as u64).saturating_mul(n as u64))
                > header_bytes as u64
        {
            return Err(d.invalid(format!("header size {header_bytes} for {n} entries")));
        }
        if !(data_bytes as u64).is_multiple_of(SECTOR) {
            return Err(d.invalid(format!("data size {data_bytes} is not sector aligned")));
        }
        d.need(header_bytes as usize - fixed)?;
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
            if super::beyond_max(lba, u64::from(sectors)) {
                return Err(d.invalid(format!("entry {i}: {lba}+{sectors} beyond any image")));
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
            version,
            kind,
            header_bytes,
            data_bytes,
            first_seq,
            epoch,
            entries,
            crc,
        })
    }

    /// For fuzzing: rewrite the crc of a record (header and data, under
    /// `generation`) after its bytes were changed, where the header decodes
    /// and the record fits `buf`.
    #[doc(hidden)]
    pub fn reseal(buf: &mut [u8], generation: Generation) {
        let Ok(h) = RecordHeader::decode(buf) else {
            return;
        };
        let hb = h.header_bytes as usize;
        let Some(end) = hb.checked_add(h.data_bytes as usize) else {
            return;
        };
        if buf.len() < end {
            return;
        }
        let (head, rest) = buf.split_at_mut(hb);
        head[28..32].fill(0);
        seal_record(head, generation, &[&rest[..end - hb]]);
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

/// Write a record header of `version` (and its checksum) in `buf`, whose
/// data already sits after the header.
#[allow(clippy::too_many_arguments)]
fn encode_record(
    buf: &mut [u8],
    version: u16,
    generation: Generation,
    epoch: Epoch,
    kind: RecordKind,
    first_seq: JournalSeq,
    entries: &[RecordEntry],
    data_len: usize,
) {
    let header_bytes = encode_head(buf, version, epoch, kind, first_seq, entries, data_len);
    let (head, data) = buf.split_at_mut(header_bytes);
    seal_record(head, generation, &[&data[..data_len]]);
}

/// Write a record header of `version` without its checksum in `buf`;
/// returns its length in bytes (whole blocks).
fn encode_head(
    buf: &mut [u8],
    version: u16,
    epoch: Epoch,
    kind: RecordKind,
    first_seq: JournalSeq,
    entries: &[RecordEntry],
    data_len: usize,
) -> usize {
    let fixed = if version == REC_VERSION {
        REC_FIXED
    } else {
        REC_FIXED_V1
    };
    let header_bytes = round_up((fixed + REC_ENTRY * entries.len()) as u64, BLOCK) as usize;
    let mut e = Enc::with_capacity(fixed + REC_ENTRY * entries.len());
    e.bytes(REC_MAGIC)
        .u16(version)
        .u16(match kind {
            RecordKind::Entries => 1,
            RecordKind::Wrap => 2,
        })
        .u32(header_bytes as u32)
        .u32(data_len as u32)
        .u64(first_seq.0)
        .u32(entries.len() as u32)
        .u32(0);
    if version == REC_VERSION {
        e.u64(epoch.0);
    }
    for x in entries {
        e.u64(x.lba.0).u32(x.sectors).u8(x.kind.code()).zeros(3);
    }
    buf[..e.len()].copy_from_slice(&e.buf);
    buf[e.len()..header_bytes].fill(0);
    header_bytes
}

/// Put the checksum in a record's encoded header `head` (its header bytes),
/// computed over it and the record's data `parts`, in order (a part that
/// knows its blocks' crcs joins them without reading its bytes).
fn seal_record<P: CrcSource>(head: &mut [u8], generation: Generation, parts: &[P]) {
    let mut c = crc(0, &generation.0.to_le_bytes());
    c = crc(c, head);
    for p in parts {
        c = p.crc_from(c);
    }
    head[28..32].copy_from_slice(&c.to_le_bytes());
}

/// Encoders of the version 1 layouts that earlier builds wrote, for tests
/// of the upgrade path (this build never writes them).
#[cfg(test)]
pub(crate) mod legacy {
    use super::*;

    /// A version 1 superblock block (the fields up to `update_seq`).
    pub(crate) fn encode_super_v1(sb: &JournalSuper) -> Vec<u8> {
        seal_block(sb.encode_common(SB_VERSION_LEGACY))
    }

    /// A version 1 record (entries from byte 32, no epoch).
    pub(crate) fn encode_record_v1(
        out: &mut Vec<u8>,
        generation: Generation,
        kind: RecordKind,
        first_seq: JournalSeq,
        entries: &[RecordEntry],
        data: &[u8],
    ) {
        let header_bytes =
            round_up((REC_FIXED_V1 + REC_ENTRY * entries.len()) as u64, BLOCK) as usize;
        let total = header_bytes + round_up(data.len() as u64, BLOCK) as usize;
        out.clear();
        out.resize(total, 0);
        out[header_bytes..header_bytes + data.len()].copy_from_slice(data);
        encode_record(
            out,
            REC_VERSION_LEGACY,
            generation,
            Epoch(0),
            kind,
            first_seq,
            entries,
            data.len(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::legacy::{encode_record_v1, encode_super_v1};
    use super::*;
    use crate::format::testutil::{assert_rejects_corruption, golden};

    fn sb() -> JournalSuper {
        JournalSuper {
            version: SB_VERSION,
            uuid: ImageUuid([5; 16]),
            generation: Generation(0xdead_beef),
            size: 1 << 20,
            start_offset: 8192,
            start_seq: JournalSeq(17),
            update_seq: 4,
            epoch: Epoch(3),
            start_epoch: Epoch(2),
        }
    }

    fn sb_v1() -> JournalSuper {
        JournalSuper {
            version: SB_VERSION_LEGACY,
            epoch: Epoch(0),
            start_epoch: Epoch(0),
            ..sb()
        }
    }

    fn entries() -> [RecordEntry; 3] {
        [
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
        ]
    }

    fn data() -> Vec<u8> {
        (0..9 * 512).map(|i| (i * 7 % 256) as u8).collect()
    }

    fn record(gen: Generation) -> Vec<u8> {
        let mut out = Vec::new();
        RecordHeader::encode_into(
            &mut out,
            gen,
            Epoch(6),
            RecordKind::Entries,
            JournalSeq(17),
            &entries(),
            &data(),
        );
        out
    }

    fn record_v1(gen: Generation) -> Vec<u8> {
        let mut out = Vec::new();
        encode_record_v1(
            &mut out,
            gen,
            RecordKind::Entries,
            JournalSeq(17),
            &entries(),
            &data(),
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
        for slot in [0, 1] {
            let b = sb().encode(slot);
            assert_eq!(b.len(), 4096);
            assert_eq!(JournalSuper::decode_slot(&b, slot).unwrap(), sb());
            assert_rejects_corruption(&b[..SB_LEN], |x| JournalSuper::decode_slot(x, slot), &[]);
            // A copy in the wrong block is refused.
            let e = JournalSuper::decode_slot(&b, 1 - slot).unwrap_err();
            assert!(e.to_string().contains("found in slot"), "{e}");
        }
        assert!(JournalSuper::is_blank(&[0u8; 4096]));
        assert!(!JournalSuper::is_blank(&sb().encode(0)));
        assert_eq!(sb().data_start(), 8192);
    }

    #[test]
    fn superblock_refuses_impossible_epochs_and_unknown_versions() {
        let mut s = sb();
        s.start_epoch = Epoch(4);
        let e = JournalSuper::decode_slot(&s.encode(0), 0).unwrap_err();
        assert!(e.to_string().contains("start epoch"), "{e}");
        s.start_epoch = Epoch(0);
        s.epoch = Epoch(0);
        assert!(JournalSuper::decode_slot(&s.encode(0), 0).is_err());
        // A start inside the slots.
        let mut s = sb();
        s.start_offset = 4096;
        let e = JournalSuper::decode_slot(&s.encode(0), 0).unwrap_err();
        assert!(e.to_string().contains("outside the journal"), "{e}");
        // Version 3 is refused by name.
        let mut b = sb().encode(0);
        b[8..12].copy_from_slice(&3u32.to_le_bytes());
        let e = JournalSuper::decode_slot(&b, 0).unwrap_err();
        assert!(
            matches!(e, FormatError::UnsupportedVersion { version: 3, .. }),
            "{e}"
        );
    }

    #[test]
    fn legacy_superblock_decodes_in_block_zero_only() {
        let b = encode_super_v1(&sb_v1());
        assert_eq!(JournalSuper::decode(&b).unwrap(), sb_v1());
        assert_eq!(sb_v1().data_start(), 4096);
        assert_rejects_corruption(&b[..SB_LEN_V1], JournalSuper::decode, &[]);
        assert!(matches!(
            JournalSuper::decode_slot(&b, 1),
            Err(FormatError::UnsupportedVersion { version: 1, .. })
        ));
    }

    #[test]
    fn record_round_trip() {
        let gen = Generation(99);
        let r = record(gen);
        assert_eq!(r.len(), 4096 + 8192);
        let h = decode_verified(&r, gen).unwrap();
        assert_eq!(h.version, REC_VERSION);
        assert_eq!(h.first_seq, JournalSeq(17));
        assert_eq!(h.epoch, Epoch(6));
        assert_eq!(h.entries.len(), 3);
        assert_eq!(h.data_bytes, 9 * 512);
        assert_eq!(h.total_bytes(), r.len() as u64);
        // Version 1 records still decode, with epoch 0.
        let h = decode_verified(&record_v1(gen), gen).unwrap();
        assert_eq!((h.version, h.epoch), (REC_VERSION_LEGACY, Epoch(0)));
        assert_eq!(h.entries, entries());
    }

    #[test]
    fn a_header_sealed_over_separate_parts_is_the_contiguous_record() {
        let gen = Generation(99);
        let r = record(gen);
        let d = data();
        let mut head = vec![0xAAu8; 4096];
        let parts: [&[u8]; 3] = [&d[..512], &d[512..3000], &d[3000..]];
        RecordHeader::encode_header(
            &mut head,
            gen,
            Epoch(6),
            RecordKind::Entries,
            JournalSeq(17),
            &entries(),
            &parts,
        );
        assert_eq!(&head[..], &r[..4096]);
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
    fn epoch_is_covered_by_the_checksum() {
        let gen = Generation(5);
        let mut r = record(gen);
        r[32] ^= 1;
        let h = RecordHeader::decode(&r).unwrap();
        assert_eq!(h.epoch, Epoch(7));
        assert!(matches!(
            h.verify(&r, gen),
            Err(FormatError::BadChecksum { .. })
        ));
    }

    #[test]
    fn corrupt_records_are_rejected() {
        let gen = Generation(99);
        let used = 4096 + 9 * 512;
        // Flips in the header padding are covered by the crc too; only the
        // record's trailing padding after the data is outside it.
        assert_rejects_corruption(&record(gen)[..used], |b| decode_verified(b, gen), &[]);
        assert_rejects_corruption(&record_v1(gen)[..used], |b| decode_verified(b, gen), &[]);
    }

    #[test]
    fn golden_vectors() {
        golden("journal-super-v2.bin", &sb().encode(1));
        let g = golden("journal-record-v2.bin", &record(Generation(99)));
        decode_verified(&g, Generation(99)).unwrap();
        // The layouts earlier builds wrote still decode.
        let g = golden("journal-super-v1.bin", &encode_super_v1(&sb_v1()));
        assert_eq!(JournalSuper::decode(&g).unwrap(), sb_v1());
        let g = golden("journal-record-v1.bin", &record_v1(Generation(99)));
        decode_verified(&g, Generation(99)).unwrap();
    }
}
