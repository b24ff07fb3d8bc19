//! Helpers shared by the integration tests. Each file under `tests/` is a
//! crate of its own that uses only some of them, hence `dead_code`.
#![allow(dead_code)]

#[cfg(feature = "rados")]
pub mod rados;

/// Deterministic pseudo-random bytes (xorshift) for `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
