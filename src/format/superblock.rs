//! Image superblock: the object named exactly like the image.
//!
//! Layout (little endian), version 1:
//!
//! | off | size | field |
//! |----:|-----:|-------|
//! | 0   | 8    | magic `LSVDSUP1` |
//! | 8   | 4    | version = 1 |
//! | 12  | 4    | total length in bytes, crc included |
//! | 16  | 16   | image UUID |
//! | 32  | 8    | image size in bytes (multiple of 4096) |
//! | 40  | 8    | incompatible feature bits: bit 0 [`INCOMPAT_GC`]; any other set bit is refused by name |
//! | 48  | 8    | update sequence (bumped on every rewrite) |
//! | 56  | 8    | creation time, seconds since the Unix epoch |
//! | 64  | 8    | generation of the journal last attached (0 = none) |
//! | 72  | 4    | flags (bit 0: closed cleanly) |
//! | 76  | 4    | number of checkpoints listed, N <= 4 |
//! | 80  | 16*N | checkpoints, newest first: first object sequence (8), piece count (4), reserved (4) |
//! | ... | 4    | crc32c of every preceding byte |

use super::{check_magic_version, check_trailing_crc, Dec, Enc, FormatError};
use crate::units::{Generation, ImageUuid, ObjSeq};

const MAGIC: &[u8; 8] = b"LSVDSUP1";
/// Format version this build writes and reads.
pub const VERSION: u32 = 1;
const WHAT: &str = "superblock";
/// Most checkpoints a superblock lists.
pub const MAX_CHECKPOINTS: usize = 4;
/// Flag: the image was closed cleanly.
pub const FLAG_CLEAN: u32 = 1;
/// Incompatible feature: garbage collection has run. GC objects
/// (`LSVDGCO1`) may exist, and object sequences below the listed
/// checkpoints may be missing (deleted after cleaning). A reader that does
/// not know this bit would treat a GC object or a hole as the end of the
/// log and delete everything above it, so it must refuse the image.
pub const INCOMPAT_GC: u64 = 1;
/// Every incompatible feature bit this build understands.
pub const KNOWN_INCOMPAT: u64 = INCOMPAT_GC;

/// A checkpoint reference: its first object sequence and piece count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointRef {
    /// Sequence of piece 0; pieces occupy `seq .. seq + pieces`.
    pub seq: ObjSeq,
    /// Number of pieces.
    pub pieces: u32,
}

/// The image superblock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// Image identity.
    pub uuid: ImageUuid,
    /// Size of the disk in bytes.
    pub size_bytes: u64,
    /// Bumped on every rewrite.
    pub update_seq: u64,
    /// Creation time (Unix seconds).
    pub created_unix: u64,
    /// Generation of the journal last attached; a journal with another
    /// generation is stale and never replayed.
    pub journal_gen: Generation,
    /// Flags ([`FLAG_CLEAN`]).
    pub flags: u32,
    /// Incompatible feature bits ([`INCOMPAT_GC`]).
    pub incompat: u64,
    /// Checkpoints, newest first.
    pub checkpoints: Vec<CheckpointRef>,
}

impl Superblock {
    /// Whether the image was closed cleanly.
    pub fn clean(&self) -> bool {
        self.flags & FLAG_CLEAN != 0
    }

    /// Encode to bytes.
    pub fn encode(&self) -> Vec<u8> {
        let n = self.checkpoints.len().min(MAX_CHECKPOINTS);
        let len = 80 + 16 * n + 4;
        let mut e = Enc::with_capacity(len);
        e.bytes(MAGIC)
            .u32(VERSION)
            .u32(len as u32)
            .bytes(&self.uuid.0)
            .u64(self.size_bytes)
            .u64(self.incompat)
            .u64(self.update_seq)
            .u64(self.created_unix)
            .u64(self.journal_gen.0)
            .u32(self.flags)
            .u32(n as u32);
        for c in &self.checkpoints[..n] {
            e.u64(c.seq.0).u32(c.pieces).u32(0);
        }
        let crc = super::crc(0, &e.buf);
        e.u32(crc);
        e.buf
    }

    /// Decode and validate.
    pub fn decode(buf: &[u8]) -> Result<Superblock, FormatError> {
        let mut d = Dec::new(WHAT, buf);
        check_magic_version(&mut d, WHAT, MAGIC, VERSION)?;
        let len = d.u32()? as usize;
        if !(84..=80 + 16 * MAX_CHECKPOINTS + 4).contains(&len) {
            return Err(d.invalid(format!("length {len} out of range")));
        }
        if buf.len() < len {
            return Err(FormatError::Truncated {
                what: WHAT,
                need: len,
                have: buf.len(),
            });
        }
        check_trailing_crc(WHAT, &buf[..len])?;
        let uuid = ImageUuid(d.array()?);
        let size_bytes = d.u64()?;
        let incompat = d.u64()?;
        if incompat & !KNOWN_INCOMPAT != 0 {
            return Err(FormatError::UnsupportedFeatures {
                what: WHAT,
                bits: incompat & !KNOWN_INCOMPAT,
            });
        }
        let update_seq = d.u64()?;
        let created_unix = d.u64()?;
        let journal_gen = Generation(d.u64()?);
        let flags = d.u32()?;
        let n = d.u32()? as usize;
        if n > MAX_CHECKPOINTS || len != 80 + 16 * n + 4 {
            return Err(d.invalid(format!("{n} checkpoints do not fit length {len}")));
        }
        let mut checkpoints = Vec::with_capacity(n);
        for _ in 0..n {
            let seq = ObjSeq(d.u64()?);
            let pieces = d.u32()?;
            d.skip(4)?;
            if seq.0 == 0 || pieces == 0 {
                return Err(d.invalid("checkpoint reference with zero sequence or pieces"));
            }
            checkpoints.push(CheckpointRef { seq, pieces });
        }
        if size_bytes == 0 || !size_bytes.is_multiple_of(4096) {
            return Err(d.invalid(format!(
                "image size {size_bytes} is not a positive multiple of 4096"
            )));
        }
        Ok(Superblock {
            uuid,
            size_bytes,
            update_seq,
            created_unix,
            journal_gen,
            flags,
            incompat,
            checkpoints,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::testutil::assert_rejects_corruption;

    pub(crate) fn sample() -> Superblock {
        Superblock {
            uuid: ImageUuid([7; 16]),
            size_bytes: 10 << 30,
            update_seq: 3,
            created_unix: 1_790_000_000,
            journal_gen: Generation(0x1234_5678_9abc),
            flags: FLAG_CLEAN,
            incompat: 0,
            checkpoints: vec![
                CheckpointRef {
                    seq: ObjSeq(101),
                    pieces: 2,
                },
                CheckpointRef {
                    seq: ObjSeq(50),
                    pieces: 1,
                },
            ],
        }
    }

    #[test]
    fn round_trip() {
        let sb = sample();
        assert_eq!(Superblock::decode(&sb.encode()).unwrap(), sb);
    }

    #[test]
    fn corrupt_input_is_rejected() {
        assert_rejects_corruption(&sample().encode(), Superblock::decode, &[]);
    }

    #[test]
    fn unknown_version_is_named() {
        let mut b = sample().encode();
        b[8] = 9;
        let e = Superblock::decode(&b).unwrap_err();
        assert!(
            e.to_string().contains("unsupported format version 9"),
            "{e}"
        );
    }

    #[test]
    fn golden_vector() {
        let golden = crate::format::testutil::golden("superblock-v1.bin", &sample().encode());
        assert_eq!(Superblock::decode(&golden).unwrap(), sample());
    }

    fn sample_gc() -> Superblock {
        Superblock {
            incompat: INCOMPAT_GC,
            ..sample()
        }
    }

    #[test]
    fn gc_feature_round_trips_and_has_a_golden_vector() {
        let sb = sample_gc();
        assert_eq!(Superblock::decode(&sb.encode()).unwrap(), sb);
        let golden = crate::format::testutil::golden("superblock-gc-v1.bin", &sb.encode());
        assert_eq!(Superblock::decode(&golden).unwrap(), sb);
        assert_rejects_corruption(&sb.encode(), Superblock::decode, &[]);
    }

    #[test]
    fn unknown_feature_bits_are_refused_by_name() {
        for bits in [2u64, 1 << 63, INCOMPAT_GC | 4] {
            let sb = Superblock {
                incompat: bits,
                ..sample()
            };
            let e = Superblock::decode(&sb.encode()).unwrap_err();
            assert_eq!(
                e,
                FormatError::UnsupportedFeatures {
                    what: WHAT,
                    bits: bits & !KNOWN_INCOMPAT
                }
            );
            assert!(e.to_string().contains("unsupported feature bits"), "{e}");
        }
    }
}
