//! Newtypes for the units that cross module boundaries.
//!
//! A bare `u64` could be a sector, a byte offset or a sequence number; these
//! types make the compiler tell them apart.

use std::fmt;

/// Size of one sector (the unit of [`Lba`]) in bytes.
pub const SECTOR: u64 = 512;

macro_rules! newtype_u64 {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub u64);

        impl $name {
            /// The raw value.
            pub const fn get(self) -> u64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

newtype_u64!(
    /// A disk address in 512-byte sectors.
    Lba
);
newtype_u64!(
    /// A byte offset (into a disk, an object or a file).
    ByteOffset
);
newtype_u64!(
    /// Sequence number of a backend object (data or checkpoint); 1 is the first.
    ObjSeq
);
newtype_u64!(
    /// Sequence number of a journaled client operation; 1 is the first.
    JournalSeq
);
newtype_u64!(
    /// Journal generation: a random non-zero value drawn whenever a journal
    /// is formatted, so records left by an earlier incarnation never validate.
    Generation
);

newtype_u64!(
    /// Journal epoch: bumped (and made durable in the journal superblock)
    /// at every open before the first new record is written, and recorded
    /// in every record, so a record left after a hole that replay cut can
    /// never be taken for part of a later chain in the same generation.
    Epoch
);

impl Lba {
    /// Byte offset of this sector.
    pub const fn bytes(self) -> u64 {
        self.0 * SECTOR
    }
    /// The sector containing byte offset `b` (which must be sector aligned to be exact).
    pub const fn from_bytes(b: u64) -> Lba {
        Lba(b / SECTOR)
    }
}

impl ObjSeq {
    /// The next sequence number.
    pub const fn next(self) -> ObjSeq {
        ObjSeq(self.0 + 1)
    }
}

impl JournalSeq {
    /// The next sequence number.
    pub const fn next(self) -> JournalSeq {
        JournalSeq(self.0 + 1)
    }
}

/// A 128-bit image identity (random v4 UUID), stored as 16 raw bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ImageUuid(pub [u8; 16]);

impl ImageUuid {
    /// A fresh random identity.
    pub fn new_random() -> ImageUuid {
        ImageUuid(*uuid::Uuid::new_v4().as_bytes())
    }
}

impl fmt::Display for ImageUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", uuid::Uuid::from_bytes(self.0).hyphenated())
    }
}

/// Parse a size such as `4096`, `8M`, `2G`, `512K`, `1T` (binary units; an
/// optional trailing `B`/`iB` is accepted). Returns a message naming the problem.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty size".into());
    }
    let upper = t.to_ascii_uppercase();
    let body = upper
        .strip_suffix("IB")
        .or_else(|| upper.strip_suffix('B'))
        .unwrap_or(&upper);
    let (num, mult) = match body.chars().last() {
        Some('K') => (&body[..body.len() - 1], 1u64 << 10),
        Some('M') => (&body[..body.len() - 1], 1 << 20),
        Some('G') => (&body[..body.len() - 1], 1 << 30),
        Some('T') => (&body[..body.len() - 1], 1 << 40),
        Some('P') => (&body[..body.len() - 1], 1 << 50),
        _ => (body, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a size (examples: 4096, 512K, 8M, 2G)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size '{s}' overflows 64 bits"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("8M").unwrap(), 8 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("512k").unwrap(), 512 << 10);
        assert!(parse_size("").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999P").is_err());
    }
}
