//! Review of issue 18 (branch rev18): lock break and foreign holders on a
//! real cluster.
//!
//! Needs the test cluster (`scripts/ceph-test-cluster.sh start DIR`, then
//! `eval "$(scripts/ceph-test-cluster.sh env DIR)"`):
//! `cargo test --release --features rados --test review18 -- --ignored`.
#![cfg(feature = "rados")]

use std::process::Command;

mod common;

use common::rados::{ceph_conf, pool, rados_cli, Namespace};
use lsvd::backend::ObjectStore;
use lsvd::ErrorKind;

/// The change refuses to fence the holders of lock `lsvd` when it is held
/// shared with a tag lsvd never uses ("another tool holds it"), but an
/// exclusive hold with a foreign tag (lsvd's exclusive holds have the
/// empty tag) is fenced and broken like one of ours: `lock break` /
/// `attach --force` blocklists that other tool's client. Expected: the
/// same refusal (Locked, naming the tag), nothing blocklisted or broken.
#[test]
#[ignore = "needs a Ceph cluster"]
fn review18_exclusive_hold_with_a_foreign_tag_is_not_fenced() {
    let ns = Namespace::new("rev18-xtag");
    let store = ns.store(20);
    // Another tool takes lock `lsvd` on the image's object exclusively,
    // with its own tag (the rados CLI leaves it held when it exits).
    rados_cli(
        &ns.name,
        &[
            "lock",
            "get",
            "img",
            "lsvd",
            "--lock-type",
            "exclusive",
            "--lock-tag",
            "othertool",
            "--lock-cookie",
            "theirs",
        ],
    );
    let info = rados_cli(&ns.name, &["lock", "info", "img", "lsvd"]);
    let info = String::from_utf8_lossy(&info.stdout).into_owned();
    assert!(info.contains("othertool"), "{info}");
    let r = store.break_lock("img");
    // Clean up whatever happened (the CLI's client is gone anyway).
    let left = store.lock_holders("img").unwrap();
    if !left.is_empty() {
        let _ = Command::new("rados")
            .arg("-c")
            .arg(ceph_conf())
            .args([
                "-p",
                &pool(),
                "-N",
                &ns.name,
                "lock",
                "break",
                "img",
                "lsvd",
            ])
            .output();
    }
    let e = match r {
        Ok(broken) => panic!(
            "an exclusive hold tagged \"othertool\" (not lsvd's) was fenced and broken: \
             {broken:?} (lock info before: {info})"
        ),
        Err(e) => e,
    };
    assert_eq!(e.kind(), ErrorKind::Locked, "{e}");
    assert!(e.to_string().contains("othertool"), "{e}");
    assert_eq!(left.len(), 1, "{left:?}");
}
