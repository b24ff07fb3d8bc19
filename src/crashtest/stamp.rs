//! Sector stamps: every 512-byte sector a crash-test write covers says which
//! write of which run put it there, and carries a fill that depends on both,
//! so a torn, stale or misplaced sector is recognised.
//!
//! Layout of a stamped sector (little-endian):
//!
//! | off | size | field |
//! |----:|-----:|-------|
//! | 0   | 8    | magic [`MAGIC`] |
//! | 8   | 8    | LBA the sector was written to |
//! | 16  | 8    | `w`: op index within the run (1 is the first) |
//! | 24  | 8    | run id (the iteration, 1 is the first) |
//! | 32  | 480  | pseudo-random fill seeded from (LBA, w, run) |

use crate::units::SECTOR;

/// Magic at the start of every stamped sector.
pub const MAGIC: u64 = 0x4b4e_5453_4856_534c; // "LSVHSTNK" little-endian-ish
const SECTOR_BYTES: usize = SECTOR as usize;
const HEADER: usize = 32;

/// Who wrote a sector: run and op index, packed so that `0` means "zero
/// sector" (runs and op indices start at 1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Stamp(pub u64);

impl Stamp {
    /// The stamp of a zero (never written, trimmed or zeroed) sector.
    pub const ZERO: Stamp = Stamp(0);

    /// The stamp of op `w` of run `run`.
    pub fn new(run: u32, w: u32) -> Stamp {
        Stamp((u64::from(run) << 32) | u64::from(w))
    }

    /// The run id (0 for a zero sector).
    pub fn run(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The op index within its run (0 for a zero sector).
    pub fn w(self) -> u32 {
        self.0 as u32
    }

    /// True for a zero sector.
    pub fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl std::fmt::Display for Stamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_zero() {
            f.write_str("zero")
        } else {
            write!(f, "(run {}, w {})", self.run(), self.w())
        }
    }
}

/// splitmix64: a tiny, good-enough generator for fills and seeds.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn fill_seed(lba: u64, stamp: Stamp) -> u64 {
    let mut s = lba.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ stamp.0.rotate_left(17);
    splitmix64(&mut s)
}

/// Write the stamp of (`lba`, `stamp`) into `sector` (512 bytes).
pub fn fill_sector(sector: &mut [u8], lba: u64, stamp: Stamp) {
    sector[0..8].copy_from_slice(&MAGIC.to_le_bytes());
    sector[8..16].copy_from_slice(&lba.to_le_bytes());
    sector[16..24].copy_from_slice(&u64::from(stamp.w()).to_le_bytes());
    sector[24..32].copy_from_slice(&u64::from(stamp.run()).to_le_bytes());
    let mut s = fill_seed(lba, stamp);
    for chunk in sector[HEADER..SECTOR_BYTES].chunks_exact_mut(8) {
        chunk.copy_from_slice(&splitmix64(&mut s).to_le_bytes());
    }
}

/// A buffer for a write of `sectors` sectors at `lba`, every sector stamped.
pub fn stamped_buffer(lba: u64, sectors: u64, stamp: Stamp) -> Vec<u8> {
    let mut buf = vec![0u8; sectors as usize * SECTOR_BYTES];
    for (i, sector) in buf.chunks_exact_mut(SECTOR_BYTES).enumerate() {
        fill_sector(sector, lba + i as u64, stamp);
    }
    buf
}

/// Decode the sector read at `lba`: `Ok(Stamp::ZERO)` for all zeros, the
/// stamp for a valid stamped sector, otherwise a description of what is
/// wrong with it.
pub fn parse_sector(sector: &[u8], lba: u64) -> Result<Stamp, String> {
    if sector.iter().all(|&b| b == 0) {
        return Ok(Stamp::ZERO);
    }
    let word = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&sector[i * 8..i * 8 + 8]);
        u64::from_le_bytes(b)
    };
    let head = format!(
        "header words {:016x} {:016x} {:016x} {:016x}",
        word(0),
        word(1),
        word(2),
        word(3)
    );
    if word(0) != MAGIC {
        return Err(format!("no stamp magic (garbage or torn), {head}"));
    }
    let (w, run) = (word(2), word(3));
    if w == 0 || w > u64::from(u32::MAX) || run == 0 || run > u64::from(u32::MAX) {
        return Err(format!("invalid run/w in stamp, {head}"));
    }
    let stamp = Stamp::new(run as u32, w as u32);
    if word(1) != lba {
        return Err(format!(
            "misplaced sector: stamp {stamp} written for LBA {}, {head}",
            word(1)
        ));
    }
    let mut expect = [0u8; SECTOR_BYTES];
    fill_sector(&mut expect, lba, stamp);
    if let Some(pos) = (HEADER..SECTOR_BYTES).find(|&i| expect[i] != sector[i]) {
        return Err(format!(
            "stamp {stamp} with wrong fill from byte {pos} (torn sector), {head}"
        ));
    }
    Ok(stamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let buf = stamped_buffer(100, 8, Stamp::new(3, 77));
        for i in 0..8u64 {
            let s = &buf[i as usize * 512..(i as usize + 1) * 512];
            assert_eq!(parse_sector(s, 100 + i), Ok(Stamp::new(3, 77)));
        }
    }

    #[test]
    fn zero_sector() {
        assert_eq!(parse_sector(&[0u8; 512], 5), Ok(Stamp::ZERO));
    }

    #[test]
    fn detects_damage() {
        let mut buf = stamped_buffer(10, 1, Stamp::new(1, 2));
        assert!(parse_sector(&buf, 11).unwrap_err().contains("misplaced"));
        buf[300] ^= 1;
        assert!(parse_sector(&buf, 10).unwrap_err().contains("torn"));
        buf[0] ^= 1;
        assert!(parse_sector(&buf, 10).unwrap_err().contains("magic"));
    }

    #[test]
    fn stamp_packing() {
        let s = Stamp::new(7, 9);
        assert_eq!((s.run(), s.w()), (7, 9));
        assert!(!s.is_zero());
        assert_eq!(s.to_string(), "(run 7, w 9)");
    }
}
