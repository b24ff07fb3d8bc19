//! Runs the QEMU guest harness, `scripts/vm-test.sh`, which boots a kernel
//! with ublk under TCG and runs the scenarios in `scripts/vm/scenarios/`
//! against the `lsvd-ublk` binary cargo built for this test, once per guest
//! kernel: Debian's 6.12 backports kernel and the newest 7.x kernel the
//! Debian mirror has (UPDATE_SIZE: live resize), one after the other. Every
//! kernel runs even when an earlier one fails; the test fails if any does.
//! Ignored by default (needs root, apt and minutes); `scripts/test.sh` runs
//! it with `cargo test --release --test vm -- --ignored --nocapture`.
//!
//! `LSVD_VM_SCENARIOS=smoke,fs` limits the scenarios;
//! `LSVD_VM_KERNELS=7.3.4+deb13-amd64` (comma separated, each as
//! `vm-test.sh --kernel`) the kernels (default `6.12.95+deb12-amd64,7`).

use std::path::PathBuf;
use std::process::Command;

/// The guest kernels by default: what bookworm-backports ships (no
/// UPDATE_SIZE) and the newest 7.x (trixie-backports or sid).
const DEFAULT_KERNELS: &str = "6.12.95+deb12-amd64,7";

#[test]
#[ignore = "boots a QEMU guest; run by scripts/test.sh"]
fn vm_scenarios() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let kernels = std::env::var("LSVD_VM_KERNELS").unwrap_or_else(|_| DEFAULT_KERNELS.into());
    let kernels: Vec<&str> = kernels.split(',').filter(|s| !s.is_empty()).collect();
    assert!(!kernels.is_empty(), "LSVD_VM_KERNELS names no kernel");
    let mut failed = Vec::new();
    for kernel in &kernels {
        eprintln!("== vm test: guest kernel {kernel}");
        let mut cmd = Command::new(root.join("scripts/vm-test.sh"));
        cmd.arg("--kernel").arg(kernel);
        cmd.arg("--binary").arg(env!("CARGO_BIN_EXE_lsvd-ublk"));
        if let Ok(list) = std::env::var("LSVD_VM_SCENARIOS") {
            for name in list.split(',').filter(|s| !s.is_empty()) {
                cmd.arg("--scenario").arg(name);
            }
        }
        // The guest console and the summary stream straight to our output.
        let status = cmd.status().expect("cannot run scripts/vm-test.sh");
        if !status.success() {
            failed.push(format!("{kernel}: {status}"));
        }
    }
    assert!(
        failed.is_empty(),
        "vm-test.sh failed on {} of {} kernels: {}",
        failed.len(),
        kernels.len(),
        failed.join("; ")
    );
}
