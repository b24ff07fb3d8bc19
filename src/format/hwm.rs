//! The high-water mark of an image's object sequences (`IMAGE.hwm`).
//!
//! Every object of the image in the store (data, GC, checkpoint piece,
//! tombstone) has a sequence below `hwm`. The volume raises the mark,
//! durably, before it puts any object at or above it (crash-safety
//! ordering 31), in steps of [`STEP`] so that one small put covers many
//! objects. Open and recovery then find the image's objects by probing
//! sequences below the mark, never by listing the pool.
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 8  | magic `LSVDHWM1` |
//! | 8  | 4  | version (1) |
//! | 12 | 4  | reserved, 0 |
//! | 16 | 16 | image UUID |
//! | 32 | 8  | hwm: every object sequence of the image is below it (≥ 1) |
//! | 40 | 4  | crc32c of bytes 0..40 |
use super::{check_magic_version, check_trailing_crc, crc, Dec, Enc, FormatError};
use crate::units::ImageUuid;

const MAGIC: &[u8; 8] = b"LSVDHWM1";
/// Format version.
pub const VERSION: u32 = 1;
/// Encoded size in bytes.
pub const SIZE: usize = 44;
/// How far past the sequence that needs it the mark is raised: one put of
/// the mark per this many objects (a recovery after a crash probes at most
/// about this many sequences above the last object).
pub const STEP: u64 = 64;
const WHAT: &str = "high-water mark";

/// A decoded high-water mark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HighWater {
    /// The image it belongs to.
    pub uuid: ImageUuid,
    /// Every object sequence of the image is below this.
    pub hwm: u64,
}

impl HighWater {
    /// Encode (exactly [`SIZE`] bytes).
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::with_capacity(SIZE);
        e.bytes(MAGIC)
            .u32(VERSION)
            .u32(0)
            .bytes(&self.uuid.0)
            .u64(self.hwm);
        let c = crc(0, &e.buf);
        e.u32(c);
        e.buf
    }

    /// Decode and validate.
    pub fn decode(buf: &[u8]) -> Result<HighWater, FormatError> {
        let mut d = Dec::new(WHAT, buf);
        check_magic_version(&mut d, WHAT, MAGIC, VERSION)?;
        if buf.len() != SIZE {
            return Err(d.invalid(format!("{} bytes, expected {SIZE}", buf.len())));
        }
        check_trailing_crc(WHAT, buf)?;
        d.skip(4)?;
        let uuid = ImageUuid(d.array()?);
        let hwm = d.u64()?;
        if hwm == 0 {
            return Err(d.invalid("mark 0 (sequences start at 1)"));
        }
        Ok(HighWater { uuid, hwm })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::testutil::{assert_rejects_corruption, golden};

    fn sample() -> HighWater {
        HighWater {
            uuid: ImageUuid([7; 16]),
            hwm: 0x1234_5678,
        }
    }

    #[test]
    fn round_trip() {
        let h = sample();
        let b = h.encode();
        assert_eq!(b.len(), SIZE);
        assert_eq!(HighWater::decode(&b).unwrap(), h);
    }

    #[test]
    fn corrupt_input_is_rejected() {
        assert_rejects_corruption(&sample().encode(), HighWater::decode, &[]);
        let mut long = sample().encode();
        long.push(0);
        assert!(HighWater::decode(&long).is_err());
        let zero = HighWater { hwm: 0, ..sample() };
        let e = HighWater::decode(&zero.encode()).unwrap_err();
        assert!(e.to_string().contains("mark 0"), "{e}");
        let mut v = sample().encode();
        v[8] = 2;
        let e = HighWater::decode(&v).unwrap_err();
        assert!(
            e.to_string().contains("unsupported format version 2"),
            "{e}"
        );
    }

    #[test]
    fn golden_vector() {
        let g = golden("hwm-v1.bin", &sample().encode());
        assert_eq!(HighWater::decode(&g).unwrap(), sample());
    }
}
