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

/// A scratch store, journal and cache directory with a config naming them,
/// for tests that run the `lsvd-ublk` binary.
pub struct CliEnv {
    /// Removed at drop.
    pub dir: tempfile::TempDir,
    /// The `--config` JSON.
    pub config: String,
}

impl CliEnv {
    /// A fresh directory under /tmp (ext4: the journal uses O_DIRECT).
    pub fn new() -> CliEnv {
        let dir = tempfile::Builder::new()
            .prefix("lsvd-cli-")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path().display();
        let config = format!(
            r#"{{"store_dir":"{d}/store","wlog_dir":"{d}/wlog","rcache_dir":"{d}/rcache","rcache_bytes":"8M","wlog_bytes":"64M","backend_obj_bytes":"1M","wlog_chunk_bytes":"1M"}}"#
        );
        CliEnv { dir, config }
    }

    /// A path in the scratch directory.
    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// `lsvd-ublk --config CONFIG ARGS...`, run in the scratch directory
    /// (so no stray ./lsvd.json is picked up), with its run directory
    /// (device and NBD server records) there too, not the host's.
    pub fn cmd(&self, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_lsvd-ublk"));
        c.current_dir(self.dir.path())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env("LSVD_RUN_DIR", self.dir.path().join("run"))
            .env_remove("LSVD_LOG");
        c
    }
}

/// A small engine configuration for integration tests: 256 KiB objects,
/// 64 KiB journal chunks, a 4 MiB journal, a checkpoint every 3 objects,
/// batches closed after 20 ms, 3 puts in flight, 5 s I/O timeout.
pub fn small_config() -> lsvd::config::Config {
    lsvd::config::Config {
        backend_obj_bytes: 256 << 10,
        wlog_chunk_bytes: 64 << 10,
        wlog_bytes: 4 << 20,
        checkpoint_interval_objs: 3,
        flush_msec: 20,
        backend_write_window: 3,
        io_timeout_msec: 5000,
        ..lsvd::config::Config::default()
    }
}
