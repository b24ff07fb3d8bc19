//! The test cluster of the RADOS tests: where it is, and a namespace per
//! test whose objects are removed when the test ends.

use std::path::PathBuf;
use std::time::Duration;

use lsvd::backend::rados::{ConnectOptions, RadosStore};
use lsvd::backend::ObjectStore;

pub const NO_CLUSTER: &str = "start the test cluster and export its environment: \
     scripts/ceph-test-cluster.sh start DIR && eval \"$(scripts/ceph-test-cluster.sh env DIR)\" \
     (scripts/test.sh does both)";

/// `$CEPH_CONF`; the test fails (never passes silently) without it.
pub fn ceph_conf() -> PathBuf {
    match std::env::var_os("CEPH_CONF") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => panic!("CEPH_CONF is not set: these tests need a Ceph cluster; {NO_CLUSTER}"),
    }
}

pub fn pool() -> String {
    std::env::var("LSVD_CEPH_POOL").unwrap_or_else(|_| "lsvd".into())
}

pub fn connect_opts(conf: PathBuf, id: &str, op_timeout_secs: u64) -> ConnectOptions {
    ConnectOptions {
        conf,
        id: id.into(),
        op_timeout: Duration::from_secs(op_timeout_secs),
    }
}

/// A RADOS namespace of one test; its objects are removed when dropped.
pub struct Namespace {
    pub name: String,
}

impl Namespace {
    pub fn new(tag: &str) -> Namespace {
        Namespace {
            name: format!("{tag}-{}-{:08x}", std::process::id(), rand::random::<u32>()),
        }
    }

    pub fn store(&self, op_timeout_secs: u64) -> RadosStore {
        RadosStore::connect(
            &connect_opts(ceph_conf(), "admin", op_timeout_secs),
            &pool(),
            &self.name,
            16,
        )
        .unwrap_or_else(|e| panic!("connect to the test cluster: {e:?}"))
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Best effort, and bounded (a short op timeout): a failed test may
        // have left the cluster unhealthy. Never panics (a panic while
        // unwinding would abort the whole test binary).
        let Some(conf) = std::env::var_os("CEPH_CONF").filter(|v| !v.is_empty()) else {
            return;
        };
        let Ok(store) = RadosStore::connect(
            &connect_opts(conf.into(), "admin", 10),
            &pool(),
            &self.name,
            16,
        ) else {
            return;
        };
        if let Ok(names) = store.list("") {
            for n in names {
                let _ = store.delete(&n);
            }
        }
    }
}

/// The `rados` CLI on the test cluster's pool and namespace `ns` (a
/// failure fails the test); arguments need not be UTF-8 (object names).
pub fn rados_cli<A: AsRef<std::ffi::OsStr>>(ns: &str, args: &[A]) -> std::process::Output {
    let out = std::process::Command::new("timeout")
        .arg("30")
        .arg("rados")
        .arg("-c")
        .arg(ceph_conf())
        .args(["-p", &pool(), "-N", ns])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rados {:?}: {}",
        args.iter().map(|a| a.as_ref()).collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
