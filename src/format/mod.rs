//! Pure persistent layouts: encode and decode, no I/O.
//!
//! Every structure carries a magic, a format version, a length, 64-bit
//! sequence numbers and a crc32c. `docs/format.md` documents each byte.
//! Decoders never panic on bad input: they return a [`FormatError`] naming
//! the structure and what is wrong.

pub mod checkpoint;
pub mod chunks;
pub mod gcobject;
pub mod hwm;
pub mod journal;
pub mod object;
pub mod pool;
pub mod rcache;
pub mod superblock;

use crate::error::{Error, ErrorKind};

/// Why a persistent structure failed to decode.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    /// Fewer bytes than the layout needs.
    #[error("{what}: truncated ({have} bytes, need {need})")]
    Truncated {
        /// Structure name.
        what: &'static str,
        /// Bytes required.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// Magic number mismatch: not this kind of structure.
    #[error("{what}: bad magic")]
    BadMagic {
        /// Structure name.
        what: &'static str,
    },
    /// A version this build does not understand.
    #[error("{what}: unsupported format version {version} (this build reads version {supported})")]
    UnsupportedVersion {
        /// Structure name.
        what: &'static str,
        /// Version found.
        version: u32,
        /// Version supported.
        supported: u32,
    },
    /// Unknown incompatible feature bits.
    #[error("{what}: unsupported feature bits {bits:#x}")]
    UnsupportedFeatures {
        /// Structure name.
        what: &'static str,
        /// The unknown bits.
        bits: u64,
    },
    /// Checksum mismatch.
    #[error("{what}: checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    BadChecksum {
        /// Structure name.
        what: &'static str,
        /// Stored crc.
        stored: u32,
        /// Computed crc.
        computed: u32,
    },
    /// A chunk of an object's data fails its checksum (or is cut short).
    #[error("{what}: {err}")]
    BadChunk {
        /// Structure name.
        what: &'static str,
        /// Which chunk and how.
        err: chunks::ChunkError,
    },
    /// A field holds an impossible value.
    #[error("{what}: {reason}")]
    Invalid {
        /// Structure name.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl From<FormatError> for Error {
    fn from(e: FormatError) -> Error {
        Error::with_source(ErrorKind::Corrupt, "decode failed", e)
    }
}

/// Sectors of the largest image (1 PiB, `catalog::image::MAX_IMAGE_BYTES`).
/// No extent of any persistent structure (journal entry, object operation,
/// GC move, checkpoint extent) may end beyond it: decoders refuse one that
/// does, so a record or header with a valid crc but an impossible address
/// never reaches the map, whose ranges must not overflow.
pub const MAX_SECTORS: u64 = 1 << 41;

/// Whether an object's data area (`data_sectors` after a `header_bytes`
/// header) ends within u32 sectors of its start, as map locations count.
pub(crate) fn data_area_fits(header_bytes: u32, data_sectors: u32) -> bool {
    u64::from(header_bytes) / crate::units::SECTOR + u64::from(data_sectors) <= u64::from(u32::MAX)
}

/// Whether `[lba, lba + sectors)` ends beyond [`MAX_SECTORS`].
pub(crate) fn beyond_max(lba: crate::units::Lba, sectors: u64) -> bool {
    lba.0 > MAX_SECTORS || sectors > MAX_SECTORS - lba.0
}

/// crc32c of `data` continuing from `crc`.
pub fn crc(crc: u32, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, data)
}

/// Bytes of the block whose crcs [`crc_concat`] joins fastest: the read
/// cache's block and the unit the destager computes crcs in.
pub const CRC_BLOCK: usize = 4096;

/// The crc32c of `A || B` from `crc32c(A)`, `crc32c(B)` and `len_b`, the
/// length of `B` (as `crc(a, B)` would give, without reading `B` again).
/// For `len_b == CRC_BLOCK` it is four table lookups: the operator that
/// appends that many zero bytes to a crc is linear over GF(2), so it is
/// tabulated once per byte of its input; other lengths take the general
/// (slower) combine of the crc32c crate.
pub fn crc_concat(a: u32, b: u32, len_b: usize) -> u32 {
    if len_b != CRC_BLOCK {
        return crc32c::crc32c_combine(a, b, len_b);
    }
    static TABLES: std::sync::OnceLock<[[u32; 256]; 4]> = std::sync::OnceLock::new();
    let t = TABLES.get_or_init(|| {
        // The operator's image of each input bit, then of each byte value.
        let bit: Vec<u32> = (0..32)
            .map(|i| crc32c::crc32c_combine(1 << i, 0, CRC_BLOCK))
            .collect();
        let mut t = [[0u32; 256]; 4];
        for (k, tk) in t.iter_mut().enumerate() {
            for (v, e) in tk.iter_mut().enumerate() {
                *e = (0..8)
                    .filter(|b| v & (1 << b) != 0)
                    .fold(0, |acc, b| acc ^ bit[8 * k + b]);
            }
        }
        t
    });
    let z = t[0][(a & 0xff) as usize]
        ^ t[1][((a >> 8) & 0xff) as usize]
        ^ t[2][((a >> 16) & 0xff) as usize]
        ^ t[3][(a >> 24) as usize];
    z ^ b
}

/// The crc32c of every [`CRC_BLOCK`]-byte block of `data` (the last one
/// may be shorter): one pass over the bytes, from which the crc of any run
/// of whole blocks follows by [`crc_concat`].
pub fn block_crcs(data: &[u8]) -> Vec<u32> {
    data.chunks(CRC_BLOCK).map(|b| crc(0, b)).collect()
}

/// Bytes a checksum runs over, which may know the crcs of their blocks
/// already (a batch span: the write path took them once, and the journal
/// record's crc joins them instead of reading the bytes again).
pub trait CrcSource {
    /// `crc(seed, bytes)`.
    fn crc_from(&self, seed: u32) -> u32;
    /// How many bytes.
    fn byte_len(&self) -> usize;
}

impl CrcSource for &[u8] {
    fn crc_from(&self, seed: u32) -> u32 {
        crc(seed, self)
    }
    fn byte_len(&self) -> usize {
        self.len()
    }
}

/// Little-endian writer into a growable buffer.
#[derive(Default)]
pub(crate) struct Enc {
    pub buf: Vec<u8>,
}

impl Enc {
    pub fn with_capacity(n: usize) -> Enc {
        Enc {
            buf: Vec::with_capacity(n),
        }
    }
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    pub fn zeros(&mut self, n: usize) -> &mut Self {
        self.buf.resize(self.buf.len() + n, 0);
        self
    }
    pub fn pad_to(&mut self, n: usize) -> &mut Self {
        if self.buf.len() < n {
            self.buf.resize(n, 0);
        }
        self
    }
    pub fn len(&self) -> usize {
        self.buf.len()
    }
}

/// Little-endian reader over a byte slice that reports truncation.
pub(crate) struct Dec<'a> {
    what: &'static str,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    pub fn new(what: &'static str, buf: &'a [u8]) -> Dec<'a> {
        Dec { what, buf, pos: 0 }
    }
    pub fn need(&self, n: usize) -> Result<(), FormatError> {
        if self.buf.len() < self.pos.saturating_add(n) {
            return Err(FormatError::Truncated {
                what: self.what,
                need: self.pos.saturating_add(n),
                have: self.buf.len(),
            });
        }
        Ok(())
    }
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        self.need(n)?;
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], FormatError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }
    pub fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.bytes(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, FormatError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub fn pos(&self) -> usize {
        self.pos
    }
    pub fn skip(&mut self, n: usize) -> Result<(), FormatError> {
        self.bytes(n).map(|_| ())
    }
    pub fn invalid(&self, reason: impl Into<String>) -> FormatError {
        FormatError::Invalid {
            what: self.what,
            reason: reason.into(),
        }
    }
}

/// Check the magic and the version at the start of `d`.
pub(crate) fn check_magic_version(
    d: &mut Dec<'_>,
    what: &'static str,
    magic: &[u8; 8],
    supported: u32,
) -> Result<(), FormatError> {
    let m = d.bytes(8)?;
    if m != magic {
        return Err(FormatError::BadMagic { what });
    }
    let version = d.u32()?;
    if version != supported {
        return Err(FormatError::UnsupportedVersion {
            what,
            version,
            supported,
        });
    }
    Ok(())
}

/// Check the magic and the version at the start of `d`, accepting any of
/// `supported` (ascending); returns the version found. An unknown version
/// is named in the error, with the newest this build reads.
pub(crate) fn check_magic_versions(
    d: &mut Dec<'_>,
    what: &'static str,
    magic: &[u8; 8],
    supported: &[u32],
) -> Result<u32, FormatError> {
    let m = d.bytes(8)?;
    if m != magic {
        return Err(FormatError::BadMagic { what });
    }
    let version = d.u32()?;
    if !supported.contains(&version) {
        return Err(FormatError::UnsupportedVersion {
            what,
            version,
            supported: supported.last().copied().unwrap_or(0),
        });
    }
    Ok(version)
}

/// For fuzzing and corruption tests: store in the last 4 bytes of
/// `buf[..len]` the crc32c of the bytes before them, so that a decoder's
/// checksum gate passes and the checks behind it are reached. Does nothing
/// when `len` is below 4 or beyond `buf`. Each format's `reseal` finds its
/// own `len`.
#[doc(hidden)]
pub fn reseal_trailing(buf: &mut [u8], len: usize) {
    if (4..=buf.len()).contains(&len) {
        let c = crc(0, &buf[..len - 4]);
        buf[len - 4..len].copy_from_slice(&c.to_le_bytes());
    }
}

/// Verify a trailing crc32c stored in the last 4 bytes of `buf[..len]`.
pub(crate) fn check_trailing_crc(what: &'static str, buf: &[u8]) -> Result<(), FormatError> {
    if buf.len() < 4 {
        return Err(FormatError::Truncated {
            what,
            need: 4,
            have: buf.len(),
        });
    }
    let body = &buf[..buf.len() - 4];
    let mut s = [0u8; 4];
    s.copy_from_slice(&buf[buf.len() - 4..]);
    let stored = u32::from_le_bytes(s);
    let computed = crc(0, body);
    if stored != computed {
        return Err(FormatError::BadChecksum {
            what,
            stored,
            computed,
        });
    }
    Ok(())
}

/// Round `n` up to a multiple of `align` (a power of two).
pub const fn round_up(n: u64, align: u64) -> u64 {
    (n + align - 1) & !(align - 1)
}

#[cfg(test)]
pub(crate) mod testutil {
    /// The checked-in golden vector `tests/data/NAME`. It must equal what
    /// this build encodes, so a format change is a visible, deliberate act:
    /// run with `LSVD_BLESS=1` to rewrite the file after changing a format
    /// (and bump its version).
    pub fn golden(name: &str, encoded: &[u8]) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name);
        if std::env::var_os("LSVD_BLESS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, encoded).unwrap();
        }
        let golden = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("golden vector {}: {e}", path.display()));
        assert_eq!(golden, encoded, "encoding of {name} changed");
        golden
    }

    /// Feed every truncation and a set of bit flips of `good` to `decode`;
    /// none may panic, and every one must fail (flips in `ignore_flip` byte
    /// ranges, e.g. padding, are allowed to decode).
    pub fn assert_rejects_corruption<T>(
        good: &[u8],
        decode: impl Fn(&[u8]) -> Result<T, super::FormatError>,
        ignore_flip: &[std::ops::Range<usize>],
    ) {
        assert!(decode(good).is_ok(), "the good input must decode");
        for n in 0..good.len() {
            assert!(
                decode(&good[..n]).is_err(),
                "truncation to {n} bytes decoded"
            );
        }
        let step = (good.len() / 512).max(1);
        for i in (0..good.len()).step_by(step) {
            if ignore_flip.iter().any(|r| r.contains(&i)) {
                continue;
            }
            for bit in [0u8, 3, 7] {
                let mut bad = good.to_vec();
                bad[i] ^= 1 << bit;
                assert!(
                    decode(&bad).is_err(),
                    "bit {bit} of byte {i} flipped still decoded"
                );
            }
        }
    }
}

#[cfg(test)]
mod crc_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Joining crcs is reading the bytes again, for the fast block
        /// length and for any other (as the cache's last, short block).
        #[test]
        fn crc_concat_is_the_crc_of_the_concatenation(
            a in proptest::collection::vec(any::<u8>(), 0..100),
            b in proptest::collection::vec(any::<u8>(), 1..9000),
            seed in any::<u32>(),
            block in any::<bool>(),
        ) {
            let b = if block {
                let mut x = b.repeat(CRC_BLOCK / b.len() + 1);
                x.truncate(CRC_BLOCK);
                x
            } else {
                b
            };
            let whole = crc(crc(seed, &a), &b);
            prop_assert_eq!(crc_concat(crc(seed, &a), crc(0, &b), b.len()), whole);
        }

        /// The crc of a run of whole blocks from the blocks' crcs.
        #[test]
        fn block_crcs_fold_to_the_crc_of_the_run(
            data in proptest::collection::vec(any::<u8>(), 1..5 * CRC_BLOCK),
        ) {
            let blocks = block_crcs(&data);
            prop_assert_eq!(blocks.len(), data.len().div_ceil(CRC_BLOCK));
            let mut c = blocks[0];
            for (i, &b) in blocks.iter().enumerate().skip(1) {
                let len = (data.len() - i * CRC_BLOCK).min(CRC_BLOCK);
                c = crc_concat(c, b, len);
            }
            prop_assert_eq!(c, crc(0, &data));
        }
    }
}

#[cfg(test)]
mod reseal_tests {
    //! The fuzz targets (fuzz/) rewrite checksums with each format's
    //! `reseal` so that mutated bytes reach the checks behind the crc.
    //! Here: resealing a valid encoding changes nothing, and a changed byte
    //! resealed no longer fails on its checksum.
    use super::*;
    use crate::units::Generation;

    fn data(name: &str) -> Vec<u8> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    fn is_bad_checksum<T>(r: &Result<T, FormatError>) -> bool {
        matches!(r, Err(FormatError::BadChecksum { .. }))
    }

    /// `reseal` leaves `good` as it is; after flipping byte `at`, `decode`
    /// fails on the checksum, and after resealing it does not.
    fn check<T>(
        name: &str,
        at: usize,
        reseal: impl Fn(&mut [u8]),
        decode: impl Fn(&[u8]) -> Result<T, FormatError>,
    ) {
        let good = data(name);
        let mut b = good.clone();
        reseal(&mut b);
        assert_eq!(b, good, "{name}: resealing a valid encoding changed it");
        b[at] ^= 0x40;
        assert!(
            is_bad_checksum(&decode(&b)),
            "{name}: byte {at} is not under the crc"
        );
        reseal(&mut b);
        assert!(
            !is_bad_checksum(&decode(&b)),
            "{name}: resealed, still a bad checksum"
        );
    }

    #[test]
    fn each_format_reseals_its_checksum() {
        use super::{checkpoint::CheckpointPiece, gcobject::GcHeader, object::ObjectHeader};
        use super::{journal::JournalSuper, rcache::CacheSuper, superblock::Superblock};
        for name in [
            "superblock-v1.bin",
            "superblock-v2.bin",
            "superblock-gc-v1.bin",
        ] {
            check(name, 20, Superblock::reseal, Superblock::decode);
        }
        for name in ["object-v1.bin", "object-v2.bin"] {
            check(name, 80, ObjectHeader::reseal, ObjectHeader::decode);
        }
        for name in ["gcobject-v1.bin", "gcobject-v2.bin"] {
            check(name, 80, GcHeader::reseal, GcHeader::decode);
        }
        check(
            "checkpoint-v1.bin",
            20,
            CheckpointPiece::reseal,
            CheckpointPiece::decode,
        );
        for name in ["journal-super-v1.bin", "journal-super-v2.bin"] {
            check(name, 20, JournalSuper::reseal, JournalSuper::decode);
        }
        check(
            "rcache-super-v2.bin",
            60,
            CacheSuper::reseal,
            CacheSuper::decode,
        );
        let uuid: [u8; 16] = data("rcache-super-v2.bin")[16..32].try_into().unwrap();
        check(
            "rcache-index-v1.bin",
            20,
            |b| rcache::reseal_index_block(b, &uuid),
            |b| rcache::decode_index_block(b, &uuid, 3, 7),
        );
    }

    /// A journal entry, an object operation, a GC move or a checkpoint
    /// extent that ends beyond the largest image is refused at decode,
    /// checksum valid or not: replay applied such an entry to the map,
    /// whose range check panicked (found by the replay fuzz target: an
    /// entry at LBA 2^64 - 232).
    #[test]
    fn extents_beyond_the_largest_image_are_refused() {
        use super::checkpoint::CheckpointPiece;
        use super::gcobject::GcHeader;
        use super::journal::RecordHeader;
        use super::object::ObjectHeader;
        let far = (u64::MAX - 232).to_le_bytes();
        let edge = (MAX_SECTORS - 8).to_le_bytes();
        let check =
            |name: &str, at: usize, decode: &dyn Fn(&mut Vec<u8>) -> Result<(), FormatError>| {
                for (lba, ok) in [(far, false), (edge, true)] {
                    let mut b = data(name);
                    b[at..at + 8].copy_from_slice(&lba);
                    let r = decode(&mut b);
                    let bad = matches!(&r, Err(e) if e.to_string().contains("beyond any image"));
                    assert_eq!(!bad, ok, "{name} lba {}: {r:?}", u64::from_le_bytes(lba));
                }
            };
        // The first entry / operation / move / extent starts at these
        // offsets in the golden vectors (their first LBA).
        check("journal-record-v2.bin", 40, &|b| {
            RecordHeader::decode(b).map(|_| ())
        });
        check("object-v2.bin", 72, &|b| {
            ObjectHeader::reseal(b);
            ObjectHeader::decode(b).map(|_| ())
        });
        check("gcobject-v2.bin", 72, &|b| {
            GcHeader::reseal(b);
            GcHeader::decode(b).map(|_| ())
        });
        let ck = data("checkpoint-v1.bin");
        let at = ck.len() - 4 - 24;
        check("checkpoint-v1.bin", at, &|b| {
            CheckpointPiece::reseal(b);
            CheckpointPiece::decode(b).map(|_| ())
        });
        assert_eq!(
            MAX_SECTORS,
            crate::catalog::image::MAX_IMAGE_BYTES / crate::units::SECTOR
        );
    }

    #[test]
    fn a_journal_record_reseals_under_its_generation() {
        use super::journal::RecordHeader;
        for name in ["journal-record-v1.bin", "journal-record-v2.bin"] {
            let good = data(name);
            let g = Generation(99);
            let mut b = good.clone();
            RecordHeader::reseal(&mut b, g);
            assert_eq!(b, good, "{name}");
            let h = RecordHeader::decode(&b).unwrap();
            b[h.header_bytes as usize] ^= 1;
            assert!(is_bad_checksum(&h.verify(&b, g)), "{name}");
            RecordHeader::reseal(&mut b, g);
            RecordHeader::decode(&b).unwrap().verify(&b, g).unwrap();
        }
    }
}
