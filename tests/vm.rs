//! Runs the QEMU guest harness, `scripts/vm-test.sh`, which boots a kernel
//! with ublk under TCG and runs the scenarios in `scripts/vm/scenarios/`
//! against the `lsvd-ublk` binary cargo built for this test. Ignored by
//! default (needs root, apt and minutes); `scripts/test.sh` runs it with
//! `cargo test --release --test vm -- --ignored --nocapture`.
//! `LSVD_VM_SCENARIOS=smoke,fs` limits the scenarios.

use std::path::PathBuf;
use std::process::Command;

#[test]
#[ignore = "boots a QEMU guest; run by scripts/test.sh"]
fn vm_scenarios() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new(root.join("scripts/vm-test.sh"));
    cmd.arg("--binary").arg(env!("CARGO_BIN_EXE_lsvd-ublk"));
    if let Ok(list) = std::env::var("LSVD_VM_SCENARIOS") {
        for name in list.split(',').filter(|s| !s.is_empty()) {
            cmd.arg("--scenario").arg(name);
        }
    }
    // The guest console and the summary stream straight to our output.
    let status = cmd.status().expect("cannot run scripts/vm-test.sh");
    assert!(status.success(), "vm-test.sh failed: {status}");
}
