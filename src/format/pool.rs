//! The pool marker (object `lsvd:pool.flags`, one per pool or RADOS
//! namespace): facts about every image of the pool that let per-image
//! paths skip a pool-wide listing.
//!
//! Its one flag, [`FLAG_REMOVALS_MARKED`], says that no removal in the pool
//! left objects without their image's high-water mark: every image removed
//! since was removed by a build that deletes the mark last (ordering 31),
//! and a listing of the whole pool found no leftover of an older build's
//! interrupted removal. `create` then checks a name with two `stat`s (the
//! superblock and the mark) instead of listing the pool (on RADOS, every
//! object of every image). The name holds `:`, which no image name may, so
//! no image's objects or listing prefix (`IMAGE.`) ever match it.
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 8 | magic `LSVDPOOL` |
//! | 8  | 4 | version (1) |
//! | 12 | 4 | flags: bit 0 [`FLAG_REMOVALS_MARKED`]; other bits are not interpreted |
//! | 16 | 8 | written: seconds since the Unix epoch when it was written |
//! | 24 | 4 | crc32c of bytes 0..24 |
use super::{check_magic_version, check_trailing_crc, crc, Dec, Enc, FormatError};

const MAGIC: &[u8; 8] = b"LSVDPOOL";
/// Format version.
pub const VERSION: u32 = 1;
/// Encoded size in bytes.
pub const SIZE: usize = 28;
/// The marker's object name.
pub const NAME: &str = "lsvd:pool.flags";
/// No removal in the pool left objects without their image's mark.
pub const FLAG_REMOVALS_MARKED: u32 = 1;
const WHAT: &str = "pool marker";

/// A decoded pool marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolMarker {
    /// [`FLAG_REMOVALS_MARKED`] and bits of later builds.
    pub flags: u32,
    /// When it was written (seconds since the Unix epoch).
    pub written_unix: u64,
}

impl PoolMarker {
    /// Encode (exactly [`SIZE`] bytes).
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::with_capacity(SIZE);
        e.bytes(MAGIC)
            .u32(VERSION)
            .u32(self.flags)
            .u64(self.written_unix);
        let c = crc(0, &e.buf);
        e.u32(c);
        e.buf
    }

    /// Decode and validate.
    pub fn decode(buf: &[u8]) -> Result<PoolMarker, FormatError> {
        let mut d = Dec::new(WHAT, buf);
        check_magic_version(&mut d, WHAT, MAGIC, VERSION)?;
        if buf.len() != SIZE {
            return Err(d.invalid(format!("{} bytes, expected {SIZE}", buf.len())));
        }
        check_trailing_crc(WHAT, buf)?;
        let flags = d.u32()?;
        let written_unix = d.u64()?;
        Ok(PoolMarker {
            flags,
            written_unix,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::testutil::{assert_rejects_corruption, golden};

    fn sample() -> PoolMarker {
        PoolMarker {
            flags: FLAG_REMOVALS_MARKED,
            written_unix: 1_796_000_000,
        }
    }

    #[test]
    fn round_trip() {
        let p = sample();
        let b = p.encode();
        assert_eq!(b.len(), SIZE);
        assert_eq!(PoolMarker::decode(&b).unwrap(), p);
        let later = PoolMarker {
            flags: 0xffff_ffff,
            ..p
        };
        assert_eq!(PoolMarker::decode(&later.encode()).unwrap(), later);
    }

    #[test]
    fn corrupt_input_is_rejected() {
        assert_rejects_corruption(&sample().encode(), PoolMarker::decode, &[]);
        let mut long = sample().encode();
        long.push(0);
        assert!(PoolMarker::decode(&long).is_err());
        let mut v = sample().encode();
        v[8] = 2;
        let e = PoolMarker::decode(&v).unwrap_err();
        assert!(
            e.to_string().contains("unsupported format version 2"),
            "{e}"
        );
    }

    #[test]
    fn golden_vector() {
        let g = golden("pool-v1.bin", &sample().encode());
        assert_eq!(PoolMarker::decode(&g).unwrap(), sample());
    }

    #[test]
    fn its_name_is_no_images_and_matches_no_images_prefix() {
        assert!(crate::catalog::image::check_name("image", "lsvd:pool", "x").is_err());
        assert!(crate::backend::check_object_name(NAME).is_ok());
    }
}
