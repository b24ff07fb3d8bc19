//! Bad input and faults against a real Ceph cluster (cargo feature `rados`):
//! every case must end in a clear error (its kind, and a message that
//! names what is wrong) or in recovery, never in a hang or a panic.
//!
//! 1. a pool that does not exist (library and CLI),
//! 2. a keyring that does not exist, and a client id without a key,
//! 3. monitors that cannot be reached, and monitors that never answer (this
//!    one needs no cluster and is not ignored),
//! 4. the OSD stopped while a volume is writing (and started again),
//! 5. a full cluster (and space coming back),
//!
//! and a regression test for stores dropped right after an operation
//! (which used to abort the process from a librados thread).
//!
//! The tests need the test cluster: `scripts/ceph-test-cluster.sh start DIR`
//! then `eval "$(scripts/ceph-test-cluster.sh env DIR)"`, which exports
//! `CEPH_CONF`, `LSVD_CEPH_POOL` and `LSVD_CEPH_DIR` (the OSD test stops and
//! starts the OSD with `scripts/ceph-test-cluster.sh osd-stop|osd-start DIR`;
//! the full-cluster test changes the cluster's full ratios and puts them
//! back). Run them with
//! `cargo test --features rados --test rados -- --ignored --nocapture`.
//! Without `CEPH_CONF` every test fails, saying so.
//!
//! Each test works in a random RADOS namespace of its own and removes its
//! objects at the end. The two tests that disturb the cluster (OSD stop,
//! full ratios) run alone: they take [`CLUSTER`] for writing, the others
//! for reading.
#![cfg(feature = "rados")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use common::pattern;
use common::rados::{ceph_conf, connect_opts, pool, rados_cli, Namespace, NO_CLUSTER};
use lsvd::backend::rados::RadosStore;
use lsvd::backend::ObjectStore;
use lsvd::config::{BackendKind, Config};
use lsvd::volume::image::{create_image, open_store};
use lsvd::volume::{Volume, VolumeOptions};
use lsvd::ErrorKind;

// ---------------------------------------------------------------------------
// The cluster under test.

/// Held for reading by tests that leave the cluster alone, for writing by
/// those that stop the OSD or fill the cluster.
static CLUSTER: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    CLUSTER.read().unwrap_or_else(|e| e.into_inner())
}

fn exclusive() -> RwLockWriteGuard<'static, ()> {
    CLUSTER.write().unwrap_or_else(|e| e.into_inner())
}

/// `$LSVD_CEPH_DIR`: the test cluster's directory (for osd-stop/osd-start).
fn cluster_dir() -> PathBuf {
    ceph_conf();
    match std::env::var_os("LSVD_CEPH_DIR") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => panic!(
            "LSVD_CEPH_DIR is not set: this test stops and starts the OSD of the test \
             cluster in that directory; {NO_CLUSTER}"
        ),
    }
}

fn cluster_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ceph-test-cluster.sh")
}

/// Run `scripts/ceph-test-cluster.sh CMD $LSVD_CEPH_DIR`; panics if it fails.
fn cluster_cmd(cmd: &str) {
    let out = Command::new("bash")
        .arg(cluster_script())
        .arg(cmd)
        .arg(cluster_dir())
        .output()
        .expect("run scripts/ceph-test-cluster.sh");
    assert!(
        out.status.success(),
        "ceph-test-cluster.sh {cmd} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `ceph` CLI against the test cluster, bounded in time.
fn ceph(args: &[&str]) -> std::result::Result<String, String> {
    let out = Command::new("timeout")
        .arg("30")
        .arg("ceph")
        .arg("-c")
        .arg(ceph_conf())
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ceph: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ceph {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn tempdir() -> tempfile::TempDir {
    // A real file system: the journal uses O_DIRECT.
    tempfile::Builder::new()
        .prefix("lsvd-rados-faults-")
        .tempdir_in("/tmp")
        .unwrap()
}

/// An engine configuration on the test cluster in namespace `ns`.
fn rados_config(ns: &str, dir: &Path) -> Config {
    Config {
        backend: BackendKind::Rados,
        ceph_conf: Some(ceph_conf()),
        rados_namespace: ns.into(),
        wlog_dir: dir.join("wlog"),
        store_dir: dir.join("unused-store"),
        rcache_dir: dir.join("unused-rcache"),
        ..Config::default()
    }
}

/// The CLI with `config` (inline JSON), in `dir`.
fn cli(dir: &Path, config: &serde_json::Value, args: &[&str]) -> (Output, Duration) {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_lsvd-ublk"))
        .current_dir(dir)
        .arg("--config")
        .arg(config.to_string())
        .args(args)
        .env_remove("LSVD_LOG")
        .output()
        .unwrap();
    (out, t.elapsed())
}

/// Require the CLI to have failed with exit status `code` (README "Exit
/// status": 2 a bad configuration, 3 not found, 1 anything else, a
/// timeout included), a clean error report (no panic) and every `needle`
/// in stderr.
fn cli_failed(code: i32, args: &[&str], out: &Output, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    assert!(
        stderr.starts_with("lsvd-ublk: error: "),
        "{args:?}: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "{args:?}: {n:?} not in: {stderr}");
    }
    stderr
}

// ---------------------------------------------------------------------------
// 1. Wrong pool.

#[test]
#[ignore = "needs a Ceph cluster: run through scripts/test.sh"]
fn wrong_pool_is_not_found_naming_the_pool() {
    let _g = shared();
    let ns = Namespace::new("faults-pool");
    let dir = tempdir();
    let bad = format!("no-such-pool-{:08x}", rand::random::<u32>());
    let config = rados_config(&ns.name, dir.path());

    // The store itself.
    let t = Instant::now();
    let e = RadosStore::connect(&connect_opts(ceph_conf(), "admin", 30), &bad, &ns.name, 4)
        .map(|_| ())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e:?}");
    assert!(
        e.to_string()
            .contains(&format!("RADOS pool '{bad}' does not exist")),
        "{e}"
    );

    // Through open_store, as the CLI and the device server open pools; with
    // create == true too: a RADOS pool is never created by us.
    for create in [false, true] {
        let e = open_store(&config, &bad, create).map(|_| ()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "create={create}: {e:?}");
        let m = e.to_string();
        assert!(
            m.contains(&format!("RADOS pool '{bad}' does not exist"))
                && m.contains(&format!("ceph osd pool create {bad}")),
            "create={create}: {m}"
        );
    }
    // No timeout was waited for: the pool's absence is in the OSD map.
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t.elapsed()
    );
    eprintln!("wrong pool: library errors in {:?}", t.elapsed());

    // Through the CLI binary.
    let cfg = serde_json::json!({
        "backend": "rados",
        "ceph_conf": ceph_conf(),
        "rados_namespace": ns.name,
        "wlog_dir": dir.path().join("wlog"),
    });
    let img = format!("{bad}/img");
    let input = dir.path().join("input");
    std::fs::write(&input, vec![7u8; 8192]).unwrap();
    let input = input.to_str().unwrap().to_owned();
    let output = dir.path().join("out").to_str().unwrap().to_owned();
    let cases: Vec<Vec<&str>> = vec![
        vec!["ls", &bad],
        vec!["create", &img, "--size", "1M"],
        vec!["info", &img],
        vec!["rm", &img],
        vec!["import", &input, &img],
        vec!["export", &img, &output],
        vec!["lock", "ls", &img],
        vec!["lock", "break", &img],
    ];
    for args in &cases {
        let (out, took) = cli(dir.path(), &cfg, args);
        cli_failed(
            3,
            args,
            &out,
            &[
                &format!("cannot open pool '{bad}'"),
                &format!("not found: RADOS pool '{bad}' does not exist"),
            ],
        );
        assert!(took < Duration::from_secs(30), "{args:?} took {took:?}");
        eprintln!("wrong pool: CLI {:?} failed cleanly in {took:?}", args[0]);
    }
}

// ---------------------------------------------------------------------------
// 2. Missing keyring; client id without a key.

/// A copy of the cluster's ceph.conf in `dir` with `f` applied to each line.
fn conf_copy(dir: &Path, name: &str, f: impl Fn(&str) -> String) -> PathBuf {
    let text = std::fs::read_to_string(ceph_conf()).unwrap();
    let out: String = text.lines().map(|l| f(l) + "\n").collect();
    let p = dir.join(name);
    std::fs::write(&p, out).unwrap();
    p
}

#[test]
#[ignore = "needs a Ceph cluster: run through scripts/test.sh"]
fn missing_keyring_fails_quickly_naming_it() {
    let _g = shared();
    let dir = tempdir();
    let missing = dir.path().join("no-such.keyring");
    // The [client] section's keyring (and any other) points to a missing file.
    let conf = conf_copy(dir.path(), "ceph.conf", |l| {
        if l.trim_start().starts_with("keyring") {
            format!("keyring = {}", missing.display())
        } else {
            l.to_owned()
        }
    });
    let op_timeout = 20;
    let t = Instant::now();
    let e = RadosStore::connect(
        &connect_opts(conf.clone(), "admin", op_timeout),
        &pool(),
        "",
        4,
    )
    .map(|_| ())
    .unwrap_err();
    let took = t.elapsed();
    eprintln!("missing keyring: {e} (after {took:?})");
    // Nothing to wait for: the keyring is read before any network I/O.
    assert!(
        took < Duration::from_secs(op_timeout),
        "a missing keyring must fail before the {op_timeout} s op timeout, took {took:?}: {e}"
    );
    assert_eq!(e.kind(), ErrorKind::Config, "{e:?}");
    let m = e.to_string();
    assert!(m.contains("keyring"), "{m}");
    assert!(m.contains(&missing.display().to_string()), "{m}");
    assert!(m.contains("client.admin"), "{m}");

    // The CLI says the same.
    let cfg = serde_json::json!({
        "backend": "rados",
        "ceph_conf": conf,
        "wlog_dir": dir.path().join("wlog"),
        "rados_op_timeout_secs": op_timeout,
    });
    let args = ["ls", &pool()];
    let (out, took) = cli(dir.path(), &cfg, &args);
    cli_failed(
        2,
        &args,
        &out,
        &["keyring", &missing.display().to_string(), "client.admin"],
    );
    assert!(took < Duration::from_secs(op_timeout), "took {took:?}");
}

#[test]
#[ignore = "needs a Ceph cluster: run through scripts/test.sh"]
fn client_id_without_a_key_fails_within_the_op_timeout() {
    let _g = shared();
    let dir = tempdir();
    let id = format!("lsvd-nokey-{:08x}", rand::random::<u32>());
    // The keyring exists but holds only client.admin's key: cephx cannot
    // even start, and the monitors keep refusing until the mount timeout.
    let op_timeout = 3;
    let t = Instant::now();
    let e = RadosStore::connect(&connect_opts(ceph_conf(), &id, op_timeout), &pool(), "", 4)
        .map(|_| ())
        .unwrap_err();
    let took = t.elapsed();
    eprintln!("client id without a key: {e} (after {took:?})");
    let bound = Duration::from_secs(2 * op_timeout + 5);
    assert!(took < bound, "took {took:?}, more than {bound:?}: {e}");
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e:?}");
    let m = e.to_string();
    assert!(m.contains(&format!("client.{id}")), "{m}");
    assert!(m.contains("keyring"), "{m}");

    // The CLI, with --id.
    let cfg = serde_json::json!({
        "backend": "rados",
        "ceph_conf": ceph_conf(),
        "wlog_dir": dir.path().join("wlog"),
        "rados_op_timeout_secs": op_timeout,
    });
    let args = ["--id", &id, "ls", &pool()];
    let (out, took) = cli(dir.path(), &cfg, &args);
    cli_failed(
        1,
        &args,
        &out,
        &["timed out", &format!("client.{id}"), "keyring"],
    );
    assert!(took < bound, "took {took:?}");
}

// ---------------------------------------------------------------------------
// 3. Unreachable monitors.

#[test]
#[ignore = "needs a Ceph cluster: run through scripts/test.sh"]
fn unreachable_monitors_time_out_in_bounded_time() {
    let _g = shared();
    let dir = tempdir();
    // Nothing listens on port 1: every connection attempt is refused and
    // the client keeps hunting for a monitor.
    let conf = conf_copy(dir.path(), "ceph.conf", |l| {
        if l.trim_start().starts_with("mon host") {
            "mon host = 127.0.0.1:1".to_owned()
        } else {
            l.to_owned()
        }
    });
    let op_timeout = 3;
    // The connect is bounded by the mount timeout (= the op timeout); the
    // margin is for the client's start and shutdown.
    let bound = Duration::from_secs(2 * op_timeout + 5);
    let t = Instant::now();
    let e = RadosStore::connect(
        &connect_opts(conf.clone(), "admin", op_timeout),
        &pool(),
        "",
        4,
    )
    .map(|_| ())
    .unwrap_err();
    let took = t.elapsed();
    eprintln!("unreachable monitors: {e} (after {took:?})");
    assert!(took < bound, "took {took:?}, more than {bound:?}: {e}");
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e:?}");
    let m = e.to_string();
    assert!(m.contains("monitor"), "{m}");
    assert!(m.contains(&conf.display().to_string()), "{m}");

    // The CLI, for a command that opens a volume and for one that does not.
    let cfg = serde_json::json!({
        "backend": "rados",
        "ceph_conf": conf,
        "wlog_dir": dir.path().join("wlog"),
        "rados_op_timeout_secs": op_timeout,
    });
    let img = format!("{}/img", pool());
    let bench = ["bench", &img, "--io-type", "write", "--io-total", "1M"];
    for args in [&["ls", &pool()][..], &["info", &img][..], &bench[..]] {
        let (out, took) = cli(dir.path(), &cfg, args);
        cli_failed(1, args, &out, &["timed out", "monitor"]);
        assert!(took < bound, "{args:?} took {took:?}");
        eprintln!(
            "unreachable monitors: CLI {:?} failed cleanly in {took:?}",
            args[0]
        );
    }
}

/// Monitors that accept the connection and never answer: the connect ends
/// within the op timeout (librados bounds each wait, not the whole
/// connect), naming the monitor. Needs no cluster: a socket that never
/// writes is the monitor; runs in every `cargo test --features rados`.
#[test]
fn silent_monitors_time_out_within_the_op_timeout() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Accept every connection and keep it open, never writing.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming() {
            match c {
                Ok(c) => held.push(c),
                Err(_) => return,
            }
        }
    });
    let dir = tempdir();
    let conf = dir.path().join("ceph.conf");
    // No keyring: with cephx librados would stop at the missing keyring
    // before it ever talks to a monitor.
    std::fs::write(
        &conf,
        format!(
            "[global]\nmon_host = {addr}\nauth_client_required = none\n\
             auth_cluster_required = none\nauth_service_required = none\n"
        ),
    )
    .unwrap();
    let op_timeout = 2;
    let t = Instant::now();
    let e = RadosStore::connect(&connect_opts(conf.clone(), "admin", op_timeout), "p", "", 4)
        .map(|_| ())
        .unwrap_err();
    let took = t.elapsed();
    eprintln!("silent monitors: {e} (after {took:?})");
    let bound = Duration::from_secs(op_timeout + 3);
    assert!(took < bound, "took {took:?}, more than {bound:?}: {e}");
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e:?}");
    let m = e.to_string();
    assert!(m.contains(&addr.to_string()), "{m}");
    assert!(m.contains("monitor"), "{m}");
    assert!(m.contains(&conf.display().to_string()), "{m}");

    // A librados that goes on trying much longer than the op timeout (as
    // older versions do: 10 tries of client_mount_timeout): the CLI still
    // fails within the bound, and exits with its status although our
    // connect helper is still inside librados (no crash or hang in
    // librados' destructors at exit).
    let cfg = serde_json::json!({
        "backend": "rados",
        "ceph_conf": conf,
        "wlog_dir": dir.path().join("wlog"),
        "rados_op_timeout_secs": op_timeout,
    });
    let img = "p/img";
    for args in [&["ls", "p"][..], &["info", img][..]] {
        let t = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_lsvd-ublk"))
            .current_dir(dir.path())
            .arg("--config")
            .arg(cfg.to_string())
            .args(args)
            .env_remove("LSVD_LOG")
            .env("LSVD_TEST_CLIENT_MOUNT_TIMEOUT_SECS", "60")
            .output()
            .unwrap();
        let took = t.elapsed();
        eprintln!(
            "silent monitors, librados trying for 60 s: CLI {:?} exited {:?} in {took:?}",
            args[0], out.status
        );
        cli_failed(1, args, &out, &["timed out", "monitor", &addr.to_string()]);
        assert!(took < bound, "{args:?} took {took:?}");
    }
}

/// The test cluster's monitor, stopped with SIGSTOP (it keeps its sockets,
/// so connections succeed and nothing is ever answered) until dropped.
struct FrozenMon(u32);

impl FrozenMon {
    fn new() -> FrozenMon {
        let pidfile = cluster_dir().join("run/mon.a.pid");
        let pid: u32 = std::fs::read_to_string(&pidfile)
            .unwrap_or_else(|e| panic!("{}: {e}", pidfile.display()))
            .trim()
            .parse()
            .unwrap();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        assert!(
            String::from_utf8_lossy(&cmdline).contains("ceph-mon"),
            "pid {pid} of {} is not a ceph-mon",
            pidfile.display()
        );
        let st = Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill -STOP {pid}");
        FrozenMon(pid)
    }
}

impl Drop for FrozenMon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

/// With the monitor frozen, `lock break` (the blocklist and the OSD map
/// wait inside it) and opening a pool our OSD map does not name fail as
/// timeouts within the op timeout, saying what to check, and nothing is
/// broken without the fence; once the monitor answers again the break
/// works.
#[test]
#[ignore = "needs a Ceph cluster: run through scripts/test.sh"]
fn frozen_monitor_bounds_lock_break_and_pool_open() {
    let _g = exclusive();
    let ns = Namespace::new("frozen-mon");
    let op_timeout = 3;
    let holder = ns.store(30);
    let breaker = ns.store(op_timeout);
    let _held = holder.lock("img", "host h pid 1 image x").unwrap();
    let bound = Duration::from_secs(op_timeout + 3);
    {
        let _frozen = FrozenMon::new();
        let t = Instant::now();
        let e = breaker.break_lock("img").unwrap_err();
        let took = t.elapsed();
        eprintln!("frozen monitor: lock break: {e} (after {took:?})");
        assert!(took < bound, "took {took:?}, more than {bound:?}: {e}");
        assert_eq!(e.kind(), ErrorKind::Timeout, "{e:?}");
        let m = e.to_string();
        assert!(m.contains("blocklist") && m.contains("monitors"), "{m}");

        let t = Instant::now();
        let e = breaker
            .cluster()
            .pool("lsvd-no-such-pool", "", 4)
            .map(|_| ())
            .unwrap_err();
        let took = t.elapsed();
        eprintln!("frozen monitor: missing pool: {e} (after {took:?})");
        assert!(took < bound, "took {took:?}, more than {bound:?}: {e}");
        assert_eq!(e.kind(), ErrorKind::Timeout, "{e:?}");
        assert!(e.to_string().contains("pool name"), "{e}");
    }
    // Not broken without the fence: still held. A new client, as the
    // breaker's may still be hunting for the monitor.
    let after = ns.store(30);
    assert_eq!(after.lock_holders("img").unwrap().len(), 1);
    let broken = after.break_lock("img").unwrap();
    assert_eq!(broken.len(), 1, "{broken:?}");
    assert!(after.lock_holders("img").unwrap().is_empty());
}

// ---------------------------------------------------------------------------
// Volumes under faults: shared helpers.

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
/// Size of every client write in the fault tests.
const WRITE: u64 = 64 * KIB;

/// A small journal (4 MiB) so that an outage fills it quickly, and short
/// RADOS op timeouts so that failed puts are retried often.
fn volume_config(ns: &str, dir: &Path, io_timeout_msec: u64) -> Config {
    Config {
        backend_obj_bytes: 256 * KIB,
        wlog_chunk_bytes: WRITE,
        wlog_bytes: 4 * MIB,
        checkpoint_interval_objs: 8,
        // Batches are sealed when full, not by age, in these tests: the
        // journal, not the count of half-empty batches, is what fills.
        flush_msec: 500,
        backend_write_window: 3,
        io_timeout_msec,
        rados_op_timeout_secs: 5,
        ..rados_config(ns, dir)
    }
}

fn open_volume(config: &Config, journal: &Path) -> lsvd::Result<Volume> {
    let store = open_store(config, &pool(), false)?;
    Volume::open(VolumeOptions {
        config: config.clone(),
        store,
        image: "img".into(),
        journal_path: journal.to_path_buf(),
        io_log: None,
    })
}

/// Write `count` chunks of WRITE bytes from `offset` (seeded by `seed`),
/// keeping `model` in step.
fn write_range(v: &Volume, model: &mut [u8], offset: u64, count: u64, seed: u64) {
    for i in 0..count {
        let off = offset + i * WRITE;
        let d = pattern(seed + i, WRITE as usize);
        v.write(off, &d)
            .unwrap_or_else(|e| panic!("write at {off}: {e:?}"));
        model[off as usize..(off + WRITE) as usize].copy_from_slice(&d);
    }
}

fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len());
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: data differs from what was written, first at byte {i} (sector {})",
            i / 512
        );
    }
}

/// Wait until the journal is empty: everything written is in the backend.
fn wait_destaged(v: &Volume, limit: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let s = v.stats();
        if s.journal_used_bytes == 0 {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < limit,
            "destage did not empty the journal in {limit:?}: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Open the image with a fresh, empty journal (nothing to replay: all that
/// is read comes from the backend, through a new connection) and compare
/// every byte with `model`.
fn verify_from_backend(config: &Config, model: &[u8]) {
    let dir = tempdir();
    let v = open_volume(config, &dir.path().join("fresh.wlog"))
        .unwrap_or_else(|e| panic!("reopen with a fresh journal: {e:?}"));
    assert_eq!(
        v.stats().replayed,
        0,
        "a fresh journal has nothing to replay"
    );
    let mut buf = vec![0u8; model.len()];
    v.read(0, &mut buf)
        .unwrap_or_else(|e| panic!("read back from the backend: {e:?}"));
    assert_same("read back from the backend", &buf, model);
    v.close()
        .unwrap_or_else(|e| panic!("close after verify: {e:?}"));
}

// ---------------------------------------------------------------------------
// 4. The OSD stops while a volume writes, and comes back.

/// Restarts the OSD when dropped if the test stopped it (also on failure).
struct OsdGuard {
    stopped: bool,
}

impl OsdGuard {
    fn stop(&mut self) -> Duration {
        let t = Instant::now();
        self.stopped = true;
        cluster_cmd("osd-stop");
        t.elapsed()
    }

    fn start(&mut self) -> Duration {
        let t = Instant::now();
        cluster_cmd("osd-start");
        self.stopped = false;
        t.elapsed()
    }
}

impl Drop for OsdGuard {
    fn drop(&mut self) {
        if self.stopped {
            eprintln!("restarting the OSD stopped by a failed test");
            if let Some(dir) = std::env::var_os("LSVD_CEPH_DIR") {
                let _ = Command::new("bash")
                    .arg(cluster_script())
                    .arg("osd-start")
                    .arg(dir)
                    .status();
            }
        }
    }
}

/// The contract while the only OSD is down (outage shorter than
/// `io_timeout_msec`):
/// - writes complete into the journal until it is full: at least half of
///   its size is accepted after the OSD stopped, and never more than all
///   of it (nothing is released while nothing reaches the backend);
/// - FLUSH succeeds (without `hard_flush` it covers the journal only);
/// - then writes wait (throttle) and do not fail;
/// - reads of data still in the journal are served, reads of data only in
///   the backend fail with `Timeout` after `rados_op_timeout_secs`, naming
///   the object, instead of hanging;
/// - when the OSD is back, destage resumes on its own, the waiting writes
///   complete, close succeeds and everything written is in the backend.
#[test]
#[ignore = "needs a Ceph cluster: run through scripts/test.sh"]
fn osd_stopped_mid_run_writes_wait_in_the_journal_and_nothing_is_lost() {
    let _g = exclusive();
    cluster_dir();
    let ns = Namespace::new("faults-osd");
    let dir = tempdir();
    let io_timeout = Duration::from_secs(90);
    let config = Config {
        // The data written before the outage must be only in the backend
        // (the read cache would hold it since its destage: read-after-write
        // hits), so the read while the OSD is down really goes to RADOS.
        no_rcache: true,
        ..volume_config(&ns.name, dir.path(), io_timeout.as_millis() as u64)
    };
    let store = open_store(&config, &pool(), false).unwrap();
    let size = 32 * MIB;
    create_image(store.as_ref(), "img", size).unwrap();
    let mut model = vec![0u8; size as usize];
    let v = open_volume(&config, &dir.path().join("img.wlog")).unwrap();
    let mut osd = OsdGuard { stopped: false };

    // Before: 2 MiB, flushed and destaged.
    write_range(&v, &mut model, 0, 2 * MIB / WRITE, 1);
    v.flush().unwrap();
    let took = wait_destaged(&v, Duration::from_secs(60));
    eprintln!("osd: 2 MiB written and destaged in {took:?}");

    let took = osd.stop();
    eprintln!("osd: stopped in {took:?}");
    let down = Instant::now();

    // Data only in the backend: a clear timeout, not a hang.
    let op_timeout = Duration::from_secs(config.rados_op_timeout_secs);
    let t = Instant::now();
    let mut buf = vec![0u8; (2 * MIB) as usize];
    let e = v.read(0, &mut buf).unwrap_err();
    let took = t.elapsed();
    eprintln!("osd: backend read while down: {e} (after {took:?})");
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e:?}");
    let m = e.to_string();
    assert!(
        m.contains("read of img") && m.contains("img.") && m.contains(&ns.name),
        "the error names the image, the object and the store: {m}"
    );
    let bound = op_timeout + Duration::from_secs(15);
    assert!(
        took < bound,
        "read failed after {took:?}, more than {bound:?}"
    );

    // Writes while down, from another thread; 3 journals' worth.
    let b0 = 4 * MIB;
    let count = 3 * config.wlog_bytes / WRITE;
    let progress = AtomicU64::new(0);
    let failure: Mutex<Option<String>> = Mutex::new(None);
    let slowest = Mutex::new(Duration::ZERO);
    let (stalled_at, restarted) = std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..count {
                let off = b0 + i * WRITE;
                let t = Instant::now();
                if let Err(e) = v.write(off, &pattern(1000 + i, WRITE as usize)) {
                    *failure.lock().unwrap() = Some(format!(
                        "write {i} at {off} failed after {:?}: {e:?}",
                        t.elapsed()
                    ));
                    return;
                }
                if (i + 1) % 16 == 0 {
                    if let Err(e) = v.flush() {
                        *failure.lock().unwrap() = Some(format!("flush after write {i}: {e:?}"));
                        return;
                    }
                }
                let mut sl = slowest.lock().unwrap();
                *sl = (*sl).max(t.elapsed());
                progress.store(i + 1, Ordering::SeqCst);
            }
        });
        // Wait for the writer to stall: no write completed for 3 s.
        let start = Instant::now();
        let mut last = (0, Instant::now());
        loop {
            std::thread::sleep(Duration::from_millis(100));
            if let Some(f) = failure.lock().unwrap().clone() {
                panic!("while the OSD is down: {f}");
            }
            let p = progress.load(Ordering::SeqCst);
            if p != last.0 {
                last = (p, Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(3) {
                break;
            }
            assert!(
                p < count,
                "all {count} writes ({} MiB) completed with the OSD down: the journal \
                 ({} MiB) should have throttled them",
                count * WRITE / MIB,
                config.wlog_bytes / MIB
            );
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "writes neither completed nor stalled in 60 s"
            );
        }
        let acked = progress.load(Ordering::SeqCst) * WRITE;
        eprintln!(
            "osd: {} KiB acknowledged with the OSD down, then writes waited; journal {:?}",
            acked / KIB,
            v.stats().journal_used_bytes
        );
        assert!(
            acked >= config.wlog_bytes / 2,
            "only {acked} bytes were accepted while the OSD was down: the journal \
             ({} bytes) should take at least half its size",
            config.wlog_bytes
        );
        assert!(
            acked <= config.wlog_bytes,
            "{acked} bytes acknowledged with the OSD down: more than the journal holds"
        );
        // What is still in the journal reads back without the OSD.
        let mut buf = vec![0u8; acked as usize];
        v.read(b0, &mut buf)
            .unwrap_or_else(|e| panic!("read of journaled data while the OSD is down: {e:?}"));
        for (i, c) in buf.chunks(WRITE as usize).enumerate() {
            assert_same(
                "journaled data while the OSD is down",
                c,
                &pattern(1000 + i as u64, WRITE as usize),
            );
        }

        // The OSD comes back: the waiting writes complete.
        let took = osd.start();
        eprintln!(
            "osd: started again in {took:?}, {:?} after it stopped",
            down.elapsed()
        );
        (acked, Instant::now())
    });
    if let Some(f) = failure.lock().unwrap().clone() {
        panic!("{f}");
    }
    assert_eq!(progress.load(Ordering::SeqCst), count);
    eprintln!(
        "osd: the remaining {} KiB were written {:?} after the restart; slowest write {:?}",
        (count * WRITE - stalled_at) / KIB,
        restarted.elapsed(),
        slowest.lock().unwrap()
    );
    for i in 0..count {
        let off = (b0 + i * WRITE) as usize;
        model[off..off + WRITE as usize].copy_from_slice(&pattern(1000 + i, WRITE as usize));
    }
    let t = Instant::now();
    v.flush().unwrap();
    v.close()
        .unwrap_or_else(|e| panic!("close after the outage: {e:?}"));
    eprintln!("osd: closed (destage drained) in {:?}", t.elapsed());
    let t = Instant::now();
    verify_from_backend(&config, &model);
    eprintln!(
        "osd: everything read back from the backend in {:?}",
        t.elapsed()
    );
}

/// The contract when the OSD stays down longer than `io_timeout_msec`:
/// once the journal has been full for that long, the waiting write fails
/// with `Timeout` saying the backend is not taking objects, and so does
/// every later write and FLUSH (the journal stops taking I/O) - no hang.
/// Closing then fails the same way. Nothing acknowledged is lost: when the
/// OSD is back, opening the image again (after `lock break` if the lock
/// could not be released during the outage) replays the journal, and a
/// write that failed reads as either its old or its new data, never a mix.
#[test]
#[ignore = "needs a Ceph cluster: run through scripts/test.sh"]
fn osd_down_longer_than_io_timeout_fails_writes_clearly_and_loses_nothing_acknowledged() {
    let _g = exclusive();
    cluster_dir();
    let ns = Namespace::new("faults-osdlong");
    let dir = tempdir();
    let io_timeout = Duration::from_secs(3);
    let config = volume_config(&ns.name, dir.path(), io_timeout.as_millis() as u64);
    let store = open_store(&config, &pool(), false).unwrap();
    let size = 32 * MIB;
    create_image(store.as_ref(), "img", size).unwrap();
    let mut model = vec![0u8; size as usize];
    let journal = dir.path().join("img.wlog");
    let v = open_volume(&config, &journal).unwrap();
    let mut osd = OsdGuard { stopped: false };

    write_range(&v, &mut model, 0, MIB / WRITE, 1);
    v.flush().unwrap();
    wait_destaged(&v, Duration::from_secs(60));
    osd.stop();

    // Write until a write fails; it must, within the journal's size plus
    // io_timeout (and the op timeout of the puts being retried).
    let b0 = 4 * MIB;
    let count = 3 * config.wlog_bytes / WRITE;
    let bound =
        io_timeout + Duration::from_secs(config.rados_op_timeout_secs) + Duration::from_secs(10);
    let mut acked = 0;
    let mut failed = None;
    let down = Instant::now();
    for i in 0..count {
        let off = b0 + i * WRITE;
        let t = Instant::now();
        match v.write(off, &pattern(1000 + i, WRITE as usize)) {
            Ok(()) => acked = i + 1,
            Err(e) => {
                failed = Some((i, e, t.elapsed()));
                break;
            }
        }
    }
    let (first_failed, e, took) = failed.unwrap_or_else(|| {
        panic!(
            "all {count} writes succeeded with the OSD down for {:?}",
            down.elapsed()
        )
    });
    eprintln!(
        "osd-long: {} KiB acknowledged, then write {first_failed} failed after {took:?}: {e}",
        acked * WRITE / KIB
    );
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e:?}");
    let m = e.to_string();
    assert!(
        m.contains("backend"),
        "the error names the backend as the cause: {m}"
    );
    assert!(
        took < bound,
        "the write failed after {took:?}, more than {bound:?}"
    );
    assert!(
        acked * WRITE >= config.wlog_bytes / 2,
        "only {acked} writes were accepted"
    );

    // Later writes and FLUSH fail too: a write after waiting for room
    // (up to io_timeout again), a FLUSH at once.
    let t = Instant::now();
    let e2 = v
        .write(
            b0 + (first_failed + 1) * WRITE,
            &pattern(1000 + first_failed + 1, WRITE as usize),
        )
        .unwrap_err();
    eprintln!("osd-long: the next write failed in {:?}: {e2}", t.elapsed());
    assert_eq!(e2.kind(), ErrorKind::Timeout, "{e2:?}");
    assert!(e2.to_string().contains("backend"), "{e2}");
    assert!(t.elapsed() < bound, "took {:?}", t.elapsed());
    let t = Instant::now();
    let e3 = v.flush().unwrap_err();
    eprintln!("osd-long: flush failed in {:?}: {e3}", t.elapsed());
    assert_eq!(e3.kind(), ErrorKind::Timeout, "{e3:?}");
    assert!(t.elapsed() < bound, "took {:?}", t.elapsed());

    // The server gives up while the OSD is still down: close fails, saying
    // why, and stops the volume (the journal keeps every acknowledged write).
    let t = Instant::now();
    let e4 = v.close().unwrap_err();
    let took = t.elapsed();
    eprintln!("osd-long: close with the OSD down failed in {took:?}: {e4}");
    assert_eq!(e4.kind(), ErrorKind::Timeout, "{e4:?}");
    let close_bound = bound + Duration::from_secs(2 * config.rados_op_timeout_secs);
    assert!(
        took < close_bound,
        "close took {took:?}, more than {close_bound:?}"
    );
    osd.start();

    // Reopen with the same journal. The lock of the stopped volume may be
    // left behind (its unlock could not reach the OSD): then the open says
    // so and names the fix, and `lock break` clears it.
    let t = Instant::now();
    let v = match open_volume(&config, &journal) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("osd-long: reopen: {e}");
            assert_eq!(e.kind(), ErrorKind::Locked, "{e:?}");
            assert!(e.to_string().contains("lock break"), "{e}");
            let cfg = serde_json::to_value(&config).unwrap();
            let img = format!("{}/img", pool());
            let (out, _) = cli(dir.path(), &cfg, &["lock", "break", &img]);
            assert!(
                out.status.success(),
                "lock break: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            open_volume(&config, &journal)
                .unwrap_or_else(|e| panic!("reopen after lock break: {e:?}"))
        }
    };
    let replayed = v.stats().replayed;
    eprintln!(
        "osd-long: reopened in {:?}, {replayed} operations replayed",
        t.elapsed()
    );
    assert!(
        replayed > 0,
        "the acknowledged writes were only in the journal"
    );
    for i in 0..acked {
        let off = (b0 + i * WRITE) as usize;
        model[off..off + WRITE as usize].copy_from_slice(&pattern(1000 + i, WRITE as usize));
    }
    // The writes that failed (first_failed and the one after it) are each
    // old (zeros) or new, never a mix; take what is there into the model.
    for i in first_failed..first_failed + 2 {
        let off = b0 + i * WRITE;
        let mut got = vec![0u8; WRITE as usize];
        v.read(off, &mut got).unwrap();
        let new = pattern(1000 + i, WRITE as usize);
        assert!(
            got.iter().all(|&b| b == 0) || got == new,
            "failed write {i} at {off} reads as a mix of old and new data"
        );
        model[off as usize..(off + WRITE) as usize].copy_from_slice(&got);
    }
    let mut buf = vec![0u8; size as usize];
    v.read(0, &mut buf).unwrap();
    assert_same("after reopening with the journal", &buf, &model);
    v.close()
        .unwrap_or_else(|e| panic!("close after replay: {e:?}"));
    verify_from_backend(&config, &model);
}

// ---------------------------------------------------------------------------
// 5. A full cluster.
//
// Pool quotas (`ceph osd pool set-quota`) are not enforced on the test
// cluster: the monitor sets a pool's FULL_QUOTA flag from pool statistics
// that only a mgr aggregates, and the cluster has no mgr (`ceph osd pool
// get-quota` answers "no stats for pool"; puts past the quota succeed). The
// full ratios are different: each OSD compares its own use with the ratios
// in the OSD map and reports itself full to the monitor, which then marks
// the OSD and every pool on it full. So the test lowers the ratios below
// what the OSD already uses, and puts them back afterwards.

/// The cluster's (full, backfillfull, nearfull) ratios.
fn full_ratios() -> std::result::Result<(f64, f64, f64), String> {
    let out = ceph(&["osd", "dump", "--format", "json"])?;
    let v: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| format!("ceph osd dump: {e}: {out}"))?;
    let r = |k: &str| {
        v[k].as_f64()
            .ok_or_else(|| format!("no {k} in ceph osd dump: {out}"))
    };
    Ok((
        r("full_ratio")?,
        r("backfillfull_ratio")?,
        r("nearfull_ratio")?,
    ))
}

/// Set the ratios in an order that keeps nearfull <= backfillfull <= full
/// at every step (the monitor ignores ratios out of order). Never panics:
/// also used while unwinding.
fn set_full_ratios((full, backfill, near): (f64, f64, f64)) -> std::result::Result<(), String> {
    let (cur_full, _, _) = full_ratios()?;
    let steps = [
        ("set-nearfull-ratio", near),
        ("set-backfillfull-ratio", backfill),
        ("set-full-ratio", full),
    ];
    let mut order: Vec<_> = steps.iter().collect();
    if full > cur_full {
        order.reverse();
    }
    for (cmd, v) in order {
        ceph(&["osd", cmd, &v.to_string()])?;
    }
    Ok(())
}

/// Puts the cluster's full ratios back when dropped (also on failure).
struct FullGuard {
    saved: (f64, f64, f64),
    changed: bool,
}

impl FullGuard {
    fn fill(&mut self) {
        self.changed = true;
        // Far below what the OSD's bluestore already uses (a few MiB).
        set_full_ratios((0.00003, 0.00002, 0.00001)).unwrap();
    }

    fn restore(&mut self) {
        set_full_ratios(self.saved).unwrap();
        self.changed = false;
    }
}

impl Drop for FullGuard {
    fn drop(&mut self) {
        if self.changed {
            eprintln!(
                "restoring the full ratios {:?} after a failed test",
                self.saved
            );
            if let Err(e) = set_full_ratios(self.saved) {
                eprintln!("cannot restore the full ratios: {e}");
            }
        }
    }
}

/// A full cluster: puts fail at once with `NoSpace` naming the object
/// (FULL_TRY), reads still work; a volume keeps taking writes into its
/// journal (destage retries), and when space returns destage resumes and
/// nothing is lost.
#[test]
#[ignore = "needs a Ceph cluster: run through scripts/test.sh"]
fn full_cluster_puts_fail_with_no_space_and_destage_resumes_when_space_returns() {
    let _g = exclusive();
    let ns = Namespace::new("faults-full");
    let dir = tempdir();
    let raw = ns.store(5);
    let config = volume_config(&ns.name, dir.path(), 90_000);
    let store = open_store(&config, &pool(), false).unwrap();
    let size = 32 * MIB;
    create_image(store.as_ref(), "img", size).unwrap();
    let mut model = vec![0u8; size as usize];
    let v = open_volume(&config, &dir.path().join("img.wlog")).unwrap();
    write_range(&v, &mut model, 0, MIB / WRITE, 1);
    v.flush().unwrap();
    wait_destaged(&v, Duration::from_secs(60));
    raw.put("probe", b"before").unwrap();

    let mut full = FullGuard {
        saved: full_ratios().unwrap(),
        changed: false,
    };
    eprintln!("full: ratios were {:?}", full.saved);
    let t = Instant::now();
    full.fill();
    // The OSD notices on its next check (every few seconds). Each probe is
    // a new object: a full OSD still takes a write that does not grow the
    // pool (an object rewritten with as many bytes).
    let op_timeout = Duration::from_secs(5);
    let mut n = 0;
    let e = loop {
        let t1 = Instant::now();
        n += 1;
        match raw.put(&format!("probe-{n}"), b"while full") {
            Ok(()) => {}
            Err(e) => {
                let took = t1.elapsed();
                assert!(
                    took < op_timeout,
                    "a put on a full cluster must fail at once (FULL_TRY), not after \
                     {took:?}: {e:?}"
                );
                break e;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "puts still succeed 60 s after the full ratio was lowered"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "full: puts fail {:?} after lowering the ratios: {e}",
        t.elapsed()
    );
    assert_eq!(e.kind(), ErrorKind::NoSpace, "{e:?}");
    let m = e.to_string();
    assert!(
        m.contains(&format!("put (write_full) probe-{n} in rados:")) && m.contains(&ns.name),
        "the error names the operation, the object and the store: {m}"
    );
    let e = raw.put_parts("probe2", &[b"a", b"b"]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoSpace, "{e:?}");
    assert!(e.to_string().contains("probe2"), "{e}");
    // Reads still work.
    assert_eq!(raw.get("probe", 0, 100).unwrap(), b"before");
    assert_eq!(raw.stat("probe").unwrap(), Some(6));
    // Deletes free space, so they work on a full cluster too, promptly.
    let t = Instant::now();
    raw.delete("probe").unwrap();
    assert_eq!(raw.stat("probe").unwrap(), None);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    // The volume keeps taking writes (half a journal) while the cluster is
    // full; FLUSH succeeds (the journal holds them); nothing is destaged.
    let objects = v.stats().data_objects;
    let t = Instant::now();
    write_range(&v, &mut model, 4 * MIB, config.wlog_bytes / 2 / WRITE, 500);
    v.flush().unwrap();
    eprintln!(
        "full: {} KiB written and flushed into the journal in {:?}",
        config.wlog_bytes / 2 / KIB,
        t.elapsed()
    );
    std::thread::sleep(Duration::from_secs(2));
    let s = v.stats();
    assert_eq!(
        s.data_objects, objects,
        "an object was put while full: {s:?}"
    );
    assert!(s.journal_used_bytes >= config.wlog_bytes / 2, "{s:?}");
    // Both what is in the backend and what is only in the journal reads.
    let mut buf = vec![0u8; (8 * MIB) as usize];
    v.read(0, &mut buf).unwrap();
    assert_same("reads while full", &buf, &model[..buf.len()]);

    // Space returns: destage resumes by itself.
    let t = Instant::now();
    full.restore();
    let took = wait_destaged(&v, Duration::from_secs(60));
    eprintln!(
        "full: ratios restored; the journal was destaged {took:?} later ({:?} in all)",
        t.elapsed()
    );
    assert!(v.stats().data_objects > objects);
    raw.put("probe-after", b"after").unwrap();
    v.close()
        .unwrap_or_else(|e| panic!("close after the cluster was full: {e:?}"));
    verify_from_backend(&config, &model);
}

// ---------------------------------------------------------------------------
// Handles dropped right after an operation.

/// A store dropped just after its last operation returned: the completion
/// callback, which runs on a librados thread, must never be the one that
/// releases the cluster handle (`rados_shutdown` joins librados' own
/// threads, and from one of them it aborts the process with "Resource
/// deadlock avoided"). Many short-lived connections make the race likely.
#[test]
#[ignore = "needs a Ceph cluster: run through scripts/test.sh"]
fn stores_dropped_right_after_an_operation_do_not_abort_the_process() {
    let _g = shared();
    ceph_conf();
    let ns = Namespace::new("faults-drop");
    let rounds = std::env::var("LSVD_RADOS_DROP_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let t = Instant::now();
    std::thread::scope(|s| {
        for w in 0..2 {
            let ns = &ns;
            s.spawn(move || {
                for i in 0..rounds {
                    let store = ns.store(10);
                    let name = format!("obj-{w}-{i}");
                    store.put(&name, b"x").unwrap();
                    assert_eq!(store.stat(&name).unwrap(), Some(1));
                    store.delete(&name).unwrap();
                    // Dropped here, while the delete's callback may still be
                    // running on a librados thread.
                }
            });
        }
    });
    eprintln!(
        "drop: {} short-lived connections in {:?}",
        2 * rounds,
        t.elapsed()
    );
}

/// An object whose name is not UTF-8 (another tool's: every name we write
/// is a &str) is left out of listings, as the dir store leaves out such
/// file names, never listed lossily under a name that does not exist.
#[test]
#[ignore = "needs a Ceph cluster: run through scripts/test.sh"]
fn non_utf8_object_names_are_left_out_of_listings() {
    use std::os::unix::ffi::OsStrExt;
    let _g = shared();
    let ns = Namespace::new("nonutf8");
    let store = ns.store(10);
    store.put("img.0001", b"ours").unwrap();
    let dir = tempdir();
    let file = dir.path().join("data");
    std::fs::write(&file, b"theirs").unwrap();
    let odd = std::ffi::OsStr::from_bytes(b"img.\xff\xfe");
    rados_cli(&ns.name, &["put".as_ref(), odd, file.as_os_str()]);
    // It is there, as librados lists it.
    let ls = rados_cli(&ns.name, &["ls"]);
    assert!(
        ls.stdout.windows(6).any(|w| w == b"img.\xff\xfe"),
        "{:?}",
        String::from_utf8_lossy(&ls.stdout)
    );
    assert_eq!(store.list("img.").unwrap(), ["img.0001"]);
    assert_eq!(store.list("").unwrap(), ["img.0001"]);
    // Namespace's cleanup lists through the store: remove it here.
    rados_cli(&ns.name, &["rm".as_ref(), odd]);
}

/// A ceph.conf path librados would not read as one file (it splits at `,`
/// and `;` and expands `$` variables) is refused as a configuration error
/// naming the character, by the library and by the CLI (exit 2). Needs no
/// cluster: the path is checked before anything connects.
#[test]
fn a_conf_path_librados_would_split_or_expand_is_refused() {
    let dir = tempdir();
    for (sub, c) in [("a,b", ','), ("a;b", ';'), ("x$cluster", '$')] {
        let d = dir.path().join(sub);
        std::fs::create_dir_all(&d).unwrap();
        let conf = d.join("ceph.conf");
        std::fs::write(&conf, "[global]\nmon_host = 127.0.0.1:1\n").unwrap();
        let e = RadosStore::connect(&connect_opts(conf.clone(), "admin", 2), "p", "", 4)
            .map(|_| ())
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config, "{e:?}");
        let m = e.to_string();
        assert!(m.contains(&format!("contains {c:?}")), "{m}");
        assert!(m.contains(&conf.display().to_string()), "{m}");
        let cfg = serde_json::json!({
            "backend": "rados",
            "ceph_conf": conf,
            "wlog_dir": dir.path().join("wlog"),
            "rados_op_timeout_secs": 2,
        });
        let (out, _) = cli(dir.path(), &cfg, &["ls", "p"]);
        cli_failed(2, &["ls", "p"], &out, &[&format!("contains {c:?}")]);
    }
}

/// A put of several parts (a data object's header and data) is the exact
/// concatenation, whether the parts go as a write_full and writes at
/// offsets in one op (pools that take them) or joined into one buffer
/// (erasure-coded pools without overwrites; forced here, the test cluster
/// has no such pool), and replaces a longer object entirely.
#[test]
#[ignore = "needs a Ceph cluster: run through scripts/test.sh"]
fn puts_of_several_parts_are_one_exact_object_either_way() {
    let _g = shared();
    let ns = Namespace::new("parts");
    let store = ns.store(30);
    let head: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    let data: Vec<u8> = (0..(8u32 << 20)).map(|i| (i % 251) as u8).collect();
    let tail = b"tail".to_vec();
    for joined in [false, true] {
        let mut pool = store.pool().clone();
        pool.set_joined_puts(joined);
        let parts: [&[u8]; 4] = [&head, &data, b"", &tail];
        let want = parts.concat();
        // Over a longer object: nothing of it may stay.
        store.put("o", &vec![0xAA; want.len() + 12345]).unwrap();
        pool.write_full("o", &parts).unwrap();
        assert_eq!(
            store.stat("o").unwrap(),
            Some(want.len() as u64),
            "{joined}"
        );
        assert!(
            store.get("o", 0, want.len() + 1).unwrap() == want,
            "{joined}"
        );
        // An empty first part, and a single part.
        pool.write_full("o", &[b"", &tail]).unwrap();
        assert_eq!(store.get("o", 0, 100).unwrap(), tail, "{joined}");
        pool.write_full("o", &[&head]).unwrap();
        assert!(store.get("o", 0, 1 << 20).unwrap() == head, "{joined}");
    }
    // And through the store, as destage puts.
    store.put_parts("p", &[&head, &data]).unwrap();
    assert!(store.get("p", 0, 9 << 20).unwrap() == [&head[..], &data[..]].concat());
}
