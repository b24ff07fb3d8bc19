//! The systemd unit template passes `systemd-analyze verify`.

use std::process::Command;

#[test]
fn unit_template_verifies() {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/lsvd-ublk@.service");
    let text = std::fs::read_to_string(src).expect("read the unit template");
    assert!(text.contains("Type=notify"), "the unit must be Type=notify");
    assert!(
        text.contains("Restart=on-failure"),
        "the unit must restart (and so recover) on failure"
    );
    // `verify` checks that ExecStart's binary exists: point it at the one
    // cargo just built, and give the template an instance.
    let bin = env!("CARGO_BIN_EXE_lsvd-ublk");
    let text = text.replace("/usr/local/bin/lsvd-ublk", bin);
    let dir = tempfile::tempdir().expect("temp dir");
    let unit = dir.path().join("lsvd-ublk@pool-img.service");
    std::fs::write(&unit, text).expect("write unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
        .arg(&unit)
        .output()
        .expect("systemd-analyze must be installed (package systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Lines about the host's own units are not ours to judge.
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("lsvd-ublk")).collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify failed ({}):\n{stderr}",
        out.status
    );
}
