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

/// Run `lsvd-crash-test` with `args` (which must include `--iterations N`;
/// `LSVD_FAILPOINT` is never inherited), assert that it exited 0 with the
/// summary `N passed, 0 failed`, and return its stdout.
pub fn run_crash_tester(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lsvd-crash-test"))
        .args(args)
        .env_remove("LSVD_FAILPOINT")
        .output()
        .expect("run lsvd-crash-test");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "lsvd-crash-test {args:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let iterations: u64 = args
        .windows(2)
        .find(|w| w[0] == "--iterations")
        .and_then(|w| w[1].parse().ok())
        .expect("--iterations in args");
    assert!(
        stdout
            .lines()
            .any(|l| l == format!("{iterations} passed, 0 failed")),
        "no summary line in:\n{stdout}"
    );
    stdout
}
