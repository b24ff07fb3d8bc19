//! End-to-end tests of the `lsvd-ublk` command line: they run the built
//! binary against a dir-backend store in a temporary directory on ext4
//! (`/tmp`, not tmpfs, so O_DIRECT alignment is really enforced).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use rand::{Rng, SeedableRng};

mod common;

use common::CliEnv as Env;

impl Env {
    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Run and require success; returns stdout.
    fn ok(&self, args: &[&str]) -> Vec<u8> {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    fn ok_str(&self, args: &[&str]) -> String {
        String::from_utf8(self.ok(args)).unwrap()
    }

    /// A long read-only bench that holds `image` open (and so its lock);
    /// returns once the volume is open (its header line is out). Kill it.
    fn hold_open(&self, image: &str) -> std::process::Child {
        let mut child = self
            .cmd(&[
                "bench",
                image,
                "--io-type",
                "read",
                "--io-total",
                "1T",
                "--io-threads",
                "1",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(first.contains("OPS/SEC"), "{first}");
        child
    }

    /// Run and require failure (status 1) with every `needle` in stderr.
    fn fails(&self, args: &[&str], needles: &[&str]) -> String {
        self.fails_with(1, args, needles)
    }

    /// Run and require failure with exit status `code` (README "Exit
    /// status") and every `needle` in stderr.
    fn fails_with(&self, code: i32, args: &[&str], needles: &[&str]) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("lsvd-ublk: error: "),
            "{args:?}: {stderr}"
        );
        for n in needles {
            assert!(stderr.contains(n), "{args:?}: {n:?} not in: {stderr}");
        }
        stderr
    }
}

/// Input with random data, zero chunks and a tail that is not a multiple
/// of 4096 (or 512).
fn sparse_input(path: &Path) -> Vec<u8> {
    const M: usize = 1 << 20;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut data = vec![0u8; 5 * M + 1000];
    rng.fill(&mut data[..M]); // chunk 0: data
                              // chunk 1: a hole
    rng.fill(&mut data[2 * M..2 * M + M / 2]); // chunk 2: half data
                                               // chunk 3: a hole
    rng.fill(&mut data[4 * M + 4096..5 * M]); // chunk 4: data after 4K of zeros
    rng.fill(&mut data[5 * M..]); // 1000-byte tail
    std::fs::write(path, &data).unwrap();
    data
}

/// Exit statuses (README "Exit status").
const INVALID: i32 = 2;
const NOT_FOUND: i32 = 3;
const EXISTS: i32 = 4;
const BUSY: i32 = 5;

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

#[test]
fn create_ls_info_rm() {
    let env = Env::new();
    assert!(env.ok(&["create", "pool/disk", "--size", "64M"]).is_empty());
    env.ok(&["create", "pool/other", "--size", "8M"]);
    assert_eq!(env.ok_str(&["ls", "pool"]), "disk\nother\n");
    let names = json(&env.ok(&["ls", "pool", "--json"]));
    assert_eq!(names, serde_json::json!(["disk", "other"]));

    let text = env.ok_str(&["info", "pool/disk"]);
    assert!(text.contains("pool/disk"), "{text}");
    assert!(text.contains("64 MiB"), "{text}");
    let info = json(&env.ok(&["info", "pool/disk", "--json"]));
    assert_eq!(info["name"], "pool/disk");
    assert_eq!(info["size_bytes"], 64u64 << 20);
    assert_eq!(info["uuid"].as_str().unwrap().len(), 36);
    assert!(info["cache"].is_null(), "never opened: no read cache");

    assert!(env.ok(&["rm", "pool/disk"]).is_empty());
    assert_eq!(env.ok_str(&["ls", "pool"]), "other\n");
    // Nothing of it is left, its lock file included (issue 17, bug 5).
    let left: Vec<_> = std::fs::read_dir(env.path("store/pool"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("disk"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    env.fails_with(NOT_FOUND, &["info", "pool/disk"], &["pool/disk"]);
}

#[test]
fn import_export_round_trip() {
    let env = Env::new();
    let input = env.path("input.bin");
    let data = sparse_input(&input);
    let image_size = (data.len() as u64).div_ceil(4096) * 4096;

    env.ok(&["import", input.to_str().unwrap(), "pool/img"]);
    let info = json(&env.ok(&["info", "pool/img", "--json"]));
    assert_eq!(info["size_bytes"], image_size);
    assert_eq!(info["clean"], true);

    let mut expected = data.clone();
    expected.resize(image_size as usize, 0);

    // To a regular file: sparse, same bytes, length is the image size.
    let out = env.path("out.bin");
    env.ok(&["export", "pool/img", out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == expected, "export differs");

    // The image's read cache: <rcache_dir>/<pool>/<image>.rcache, shown by info.
    let info = json(&env.ok(&["info", "pool/img", "--json"]));
    let cache = &info["cache"];
    let path = env.path("rcache/pool/img.rcache");
    assert_eq!(cache["path"], path.to_str().unwrap(), "{info}");
    assert_eq!(cache["bytes"], 8u64 << 20);
    assert_eq!(cache["formatted"], true);
    assert_eq!(cache["owner_match"], true);
    assert!(cache["valid_chunks"].as_u64().unwrap() > 0, "{info}");
    assert!(cache["chunks"].as_u64().unwrap() >= cache["valid_chunks"].as_u64().unwrap());
    for k in ["hits", "misses", "evictions", "inserts", "corrupt"] {
        assert!(cache["counters"][k].is_u64(), "{k}: {info}");
    }
    let text = env.ok_str(&["info", "pool/img"]);
    assert!(text.contains("read cache"), "{text}");

    // Refuses to overwrite without --force, then does it with --force.
    env.fails_with(
        EXISTS,
        &["export", "pool/img", out.to_str().unwrap()],
        &["already exists", "--force"],
    );
    std::fs::write(&out, vec![0xAAu8; 8 << 20]).unwrap();
    env.ok(&["export", "pool/img", out.to_str().unwrap(), "--force"]);
    assert!(
        std::fs::read(&out).unwrap() == expected,
        "forced export differs"
    );

    // To stdout.
    let stdout = env.ok(&["export", "pool/img", "-"]);
    assert!(stdout == expected, "export to stdout differs");

    // --size larger than the file: the rest reads as zeros.
    env.ok(&[
        "import",
        input.to_str().unwrap(),
        "pool/big",
        "--size",
        "16M",
    ]);
    let stdout = env.ok(&["export", "pool/big", "-"]);
    expected.resize(16 << 20, 0);
    assert!(stdout == expected, "export of the larger import differs");
}

/// `export` to a regular file leaves a hole for every 4 KiB block that is
/// unmapped or all zeros, not only for whole zero 1 MiB chunks (issue 17,
/// item 10): checked with the file's allocated blocks and SEEK_HOLE.
#[test]
fn export_is_sparse_at_4k() {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let env = Env::new();
    const K4: usize = 4096;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    // 4 MiB: in the first 2 MiB every fourth 4K block holds data (the rest
    // are zeros the image maps, since import skips only zero 1M chunks);
    // then an unmapped 1M; then one block of data at the very end.
    let mut data = vec![0u8; 4 << 20];
    for b in (0..(2 << 20) / K4).step_by(4) {
        rng.fill(&mut data[b * K4..(b + 1) * K4]);
    }
    let last = data.len() - K4;
    rng.fill(&mut data[last..]);
    let input = env.path("in.bin");
    std::fs::write(&input, &data).unwrap();
    env.ok(&["import", input.to_str().unwrap(), "pool/img"]);
    let out = env.path("out.bin");
    env.ok(&["export", "pool/img", out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == data, "export differs");
    let data_blocks = (2 << 20) / K4 / 4 + 1;
    let allocated = std::fs::metadata(&out).unwrap().blocks() * 512;
    // ext4 may add a few blocks of its own (extent tree), never a whole
    // zero 4K block per data block.
    assert!(
        allocated <= (data_blocks * K4 + 16 * K4) as u64,
        "{allocated} bytes allocated for {data_blocks} data blocks"
    );
    let f = std::fs::File::open(&out).unwrap();
    // SAFETY: lseek on a descriptor we own.
    let hole = unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_HOLE) };
    assert_eq!(hole, K4 as i64, "the first hole starts after block 0");
    // SAFETY: as above.
    let next = unsafe { libc::lseek(f.as_raw_fd(), K4 as i64, libc::SEEK_DATA) };
    assert_eq!(next, 4 * K4 as i64, "block 4 is the next data");
    // Exported again to stdout: every byte in order.
    assert!(env.ok(&["export", "pool/img", "-"]) == data);
}

/// `import` does not create the image's journal at `wlog_bytes` (issue
/// 17, item 10): it writes through a small journal that it removes once
/// the image is closed clean, and the first attach after it formats a
/// journal of the configured size. Here `wlog_bytes` is 1G, which would be
/// zero-filled before the first byte before the change.
#[test]
fn import_leaves_no_journal_and_attach_makes_one() {
    let mut env = Env::new();
    let normal = env.config.clone();
    env.config = normal.replace(r#""wlog_bytes":"64M""#, r#""wlog_bytes":"1G""#);
    assert_ne!(env.config, normal);
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut data = vec![0u8; (6 << 20) + 4096];
    rng.fill(&mut data[..]);
    let input = env.path("in.bin");
    std::fs::write(&input, &data).unwrap();
    env.ok(&["import", input.to_str().unwrap(), "pool/img"]);
    let journal = env.path("wlog/pool/img.wlog");
    assert!(!journal.exists(), "import left its journal behind");
    assert!(!env.path("wlog/pool/img.wlog.creating").exists());
    let info = json(&env.ok(&["info", "pool/img", "--json"]));
    assert_eq!(info["clean"], true);
    // An attach (export opens the image read-write) with the normal
    // configuration: a journal of the configured size, and every byte.
    env.config = normal;
    assert!(env.ok(&["export", "pool/img", "-"]) == data);
    assert_eq!(std::fs::metadata(&journal).unwrap().len(), 64 << 20);
    assert!(env.ok(&["export", "pool/img", "-"]) == data);
}

#[test]
fn bench_reports_json() {
    let env = Env::new();
    env.ok(&["create", "pool/b", "--size", "32M"]);
    let r = json(&env.ok(&[
        "bench",
        "pool/b",
        "--io-type",
        "write",
        "--io-total",
        "4M",
        "--io-threads",
        "4",
        "--json",
    ]));
    assert_eq!(r["ops"], 1024);
    assert_eq!(r["write_ops"], 1024);
    assert_eq!(r["io_size"], 4096);
    assert!(r["ops_per_sec"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["lat_p99_us"].as_u64().unwrap() >= r["lat_p50_us"].as_u64().unwrap());
    assert!(r["journal_records"].as_u64().unwrap() > 0, "{r}");
    for key in [
        "elapsed_secs",
        "bytes_per_sec",
        "backend_puts",
        "backend_put_bytes",
        "journal_syncs",
        "journal_dsync_writes",
        "backend_puts_per_10k_writes",
        "backend_bytes_per_client_byte",
        "close_secs",
    ] {
        assert!(r[key].is_number(), "{key} missing: {r}");
    }

    let r = json(&env.ok(&[
        "bench",
        "pool/b",
        "--io-type",
        "rw",
        "--io-pattern",
        "rand",
        "--io-size",
        "8K",
        "--io-total",
        "4M",
        "--seed",
        "42",
        "--json",
    ]));
    assert_eq!(r["ops"], 512);
    assert_eq!(r["seed"], 42);
    assert!(r["read_ops"].as_u64().unwrap() > r["write_ops"].as_u64().unwrap());

    // The text form has the rbd-style summary.
    let text = env.ok_str(&["bench", "pool/b", "--io-type", "read", "--io-total", "1M"]);
    for word in ["elapsed", "ops/sec", "p50", "p99", "backend", "close"] {
        assert!(text.contains(word), "{word} not in: {text}");
    }

    // The image is closed cleanly afterwards.
    let info = json(&env.ok(&["info", "pool/b", "--json"]));
    assert_eq!(info["clean"], true);
}

#[test]
fn bad_input_is_refused_with_a_clear_message() {
    let env = Env::new();
    env.fails_with(INVALID, &["create", "pool/a", "--size", "0"], &["size 0"]);
    env.fails_with(
        INVALID,
        &["create", "pool/a", "--size", "1000"],
        &["size 1000 is not a multiple of 4096"],
    );
    env.fails_with(
        INVALID,
        &["create", "pool/a", "--size", "10P"],
        &["absurd", "1P"],
    );
    env.ok(&["create", "pool/a", "--size", "1M"]);
    env.fails_with(
        EXISTS,
        &["create", "pool/a", "--size", "1M"],
        &["pool/a", "exists"],
    );
    env.fails_with(NOT_FOUND, &["info", "pool/unknown"], &["pool/unknown"]);
    env.fails_with(
        INVALID,
        &["create", "badname", "--size", "1M"],
        &["badname", "POOL/IMAGE"],
    );

    let missing = env.path("no-such-file");
    env.fails_with(
        NOT_FOUND,
        &["import", missing.to_str().unwrap(), "pool/x"],
        &["no-such-file"],
    );
    // A failed import does not leave an image behind.
    assert_eq!(env.ok_str(&["ls", "pool"]), "a\n");

    let small = env.path("small");
    std::fs::write(&small, vec![1u8; 10_000]).unwrap();
    env.fails_with(
        INVALID,
        &["import", small.to_str().unwrap(), "pool/x", "--size", "4K"],
        &["--size 4096 is smaller"],
    );

    let existing = env.path("exists.bin");
    std::fs::write(&existing, b"keep me").unwrap();
    env.fails_with(
        EXISTS,
        &["export", "pool/a", existing.to_str().unwrap()],
        &["exists.bin", "--force"],
    );
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");

    let out = Command::new(env!("CARGO_BIN_EXE_lsvd-ublk"))
        .current_dir(env.dir.path())
        .args(["--config", r#"{"bogus_key": 1}"#, "ls", "pool"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(INVALID), "{stderr}");
    assert!(stderr.contains("bogus_key"), "{stderr}");
}

#[test]
fn rm_refuses_an_open_image() {
    let env = Env::new();
    env.ok(&["create", "pool/busy", "--size", "64M"]);
    // A long bench holds the image open; its header line appears once the
    // volume is open.
    let mut child = env.hold_open("pool/busy");
    let stderr = env.fails_with(BUSY, &["rm", "pool/busy"], &["pool/busy"]);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        stderr.contains("locked") || stderr.contains("open"),
        "{stderr}"
    );
    assert_eq!(env.ok_str(&["ls", "pool"]), "busy\n");
}

/// Issue 17, bug 3: a journal larger than its file system's free space is
/// refused before anything is written (no `.wlog.creating` filling the
/// disk, no "dropped without close" warning), and `rm` removes a
/// `.creating` file that a killed creation left.
#[test]
fn a_journal_that_does_not_fit_is_refused_and_rm_removes_a_partial_one() {
    let env = Env::new();
    env.ok(&["create", "pool/big", "--size", "64M"]);
    let huge = env
        .config
        .replace(r#""wlog_bytes":"64M""#, r#""wlog_bytes":"64T""#);
    assert_ne!(huge, env.config);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lsvd-ublk"))
        .current_dir(env.path(""))
        .args([
            "--config",
            &huge,
            "bench",
            "pool/big",
            "--io-type",
            "write",
            "--io-total",
            "1M",
        ])
        .env_remove("LSVD_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("wlog_bytes"), "{stderr}");
    assert!(stderr.contains("free"), "{stderr}");
    assert!(!stderr.contains("without close"), "{stderr}");
    let wlog = env.path("wlog/pool");
    let left: Vec<_> = std::fs::read_dir(&wlog)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in {}: {left:?}", wlog.display());

    // What a creation killed during its fill leaves.
    std::fs::create_dir_all(&wlog).unwrap();
    let creating = wlog.join("big.wlog.creating");
    std::fs::write(&creating, vec![0u8; 1 << 20]).unwrap();
    env.ok(&["rm", "pool/big"]);
    assert!(!creating.exists(), "rm left {}", creating.display());
}

/// `lock ls` names the holder of an open image; `lock break` of the dir
/// backend's lock (an flock of a live process) is refused, naming the
/// holder, and of a free lock is a no-op; `--id` is checked.
#[test]
fn lock_ls_and_break_on_the_dir_backend() {
    let env = Env::new();
    env.ok(&["create", "pool/held", "--size", "64M"]);
    assert_eq!(
        env.ok_str(&["lock", "ls", "pool/held"]),
        "pool/held: not locked\n"
    );
    assert_eq!(
        env.ok_str(&["lock", "break", "pool/held"]),
        "pool/held: not locked; nothing to break\n"
    );
    let mut child = env.hold_open("pool/held");
    let pid = format!("pid {}", child.id());
    let ls = env.ok_str(&["lock", "ls", "pool/held"]);
    let e = env.fails_with(
        BUSY,
        &["lock", "break", "pool/held"],
        &["live process", &pid],
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(ls.starts_with("pool/held: locked by host "), "{ls}");
    assert!(ls.contains(&pid) && ls.contains(" image "), "{ls}");
    assert!(e.contains("locked"), "{e}");
    // The holder died: its flock went with it.
    assert_eq!(
        env.ok_str(&["lock", "ls", "pool/held"]),
        "pool/held: not locked\n"
    );
    env.fails_with(
        NOT_FOUND,
        &["lock", "ls", "pool/nope"],
        &["nope", "does not exist"],
    );
    env.fails_with(
        INVALID,
        &["--id", "client.admin", "ls", "pool"],
        &["ceph_id", "client."],
    );
}

/// The device commands on a machine without the ublk driver (like this
/// project's hosts; the real device is tested in a QEMU guest by
/// `tests/vm.rs`), and against a private run directory.
#[test]
fn device_commands_fail_clearly_without_a_device() {
    let env = Env::new();
    env.ok(&["create", "p/dev", "--size", "16M"]);
    let run_dir = env.path("run");
    let run = |args: &[&str]| {
        env.cmd(args)
            .env("LSVD_RUN_DIR", &run_dir)
            .output()
            .unwrap()
    };
    // Nothing attached: an empty list, in both forms.
    let out = run(&["list", "--json"]);
    assert!(out.status.success());
    assert_eq!(json(&out.stdout), serde_json::json!([]));
    let out = run(&["list"]);
    assert!(out.status.success() && out.stdout.is_empty());
    // Detach and recover of something that is not ours name it.
    for args in [
        &["detach", "/dev/ublkb7"][..],
        &["detach", "p/dev"][..],
        &["recover", "p/dev"][..],
    ] {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            err.contains(args[1]) && (err.contains("lsvd-ublk list") || err.contains("ublk_drv")),
            "{args:?}: unclear error: {err}"
        );
    }
    // Attach: without the driver, the error names the module and the kernel
    // option; with it (a host that has ublk), a bad image is still refused.
    let out = run(&["attach", "p/nosuch"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    if Path::new("/dev/ublk-control").exists() {
        assert!(err.contains("nosuch"), "unclear error: {err}");
    } else {
        assert!(
            err.contains("modprobe ublk_drv") && err.contains("CONFIG_BLK_DEV_UBLK"),
            "unclear error: {err}"
        );
    }
    // Bad arguments are refused before anything else.
    let out = run(&["attach", "p/dev", "--logical-block-size", "1024"]);
    assert!(!out.status.success());
    let out = run(&["attach", "no-pool-here"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("POOL/IMAGE"), "{err}");
}

/// `gc` on a detached image cleans, deletes and reports (text and JSON)
/// without changing the image's contents; it refuses an open image.
#[test]
fn gc_cleans_a_detached_image_and_refuses_an_open_one() {
    let mut env = Env::new();
    // Background GC off: `export` reads while nothing else deletes.
    env.config = env
        .config
        .replace('}', r#","gc_threshold":90,"no_gc":true}"#);
    env.ok(&["create", "pool/img", "--size", "4M"]);
    env.ok(&[
        "bench",
        "pool/img",
        "--io-type",
        "write",
        "--io-pattern",
        "rand",
        "--io-total",
        "12M",
        "--io-threads",
        "2",
    ]);
    let before = env.ok(&["export", "pool/img", "-"]);
    let stored_before = json(&env.ok(&["info", "pool/img", "--json"]))["stored_bytes"]
        .as_u64()
        .unwrap();
    let r = json(&env.ok(&["gc", "pool/img", "--json"]));
    for key in [
        "objects_cleaned",
        "bytes_copied",
        "bytes_freed",
        "objects_deleted",
    ] {
        assert!(r[key].as_u64().unwrap() > 0, "{key}: {r}");
    }
    let info = json(&env.ok(&["info", "pool/img", "--json"]));
    assert_eq!(info["clean"], true);
    assert!(
        info["stored_bytes"].as_u64().unwrap() < stored_before,
        "{info} vs {stored_before}"
    );
    assert!(
        env.ok(&["export", "pool/img", "-"]) == before,
        "GC changed the image"
    );
    // Text form; nothing left to clean.
    let text = env.ok_str(&["gc", "pool/img"]);
    assert!(text.starts_with("image 'img': cleaned 0 objects"), "{text}");

    let mut child = env.hold_open("pool/img");
    let stderr = env.fails_with(BUSY, &["gc", "pool/img"], &["pool/img"]);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(stderr.contains("already open"), "{stderr}");
}

/// One `gc` of a detached image frees everything it can. The first half of
/// the image was overwritten, so the objects that held it are dead: the
/// first run frees them (it used to report 0 and leave them to a second
/// run, having only moved the checkpoint floor past them), and a second
/// run finds nothing more to free. The image reads back unchanged.
#[test]
fn one_gc_frees_what_an_overwrite_released() {
    let mut env = Env::new();
    env.config = env.config.replace('}', r#","no_gc":true}"#);
    let file = env.path("data.raw");
    std::fs::write(&file, common::pattern(7, 64 << 20)).unwrap();
    env.ok(&["import", file.to_str().unwrap(), "pool/img"]);
    env.ok(&[
        "bench",
        "pool/img",
        "--io-type",
        "write",
        "--io-pattern",
        "seq",
        "--io-size",
        "1M",
        "--io-total",
        "32M",
        "--io-threads",
        "1",
    ]);
    // No export (or anything else that opens the image) before the first
    // `gc`: its close would write a checkpoint and move the floor itself.
    let stored = || {
        json(&env.ok(&["info", "pool/img", "--json"]))["stored_bytes"]
            .as_u64()
            .unwrap()
    };
    let stored0 = stored();
    let r1 = json(&env.ok(&["gc", "pool/img", "--json"]));
    let freed = r1["bytes_freed"].as_u64().unwrap();
    assert!(
        freed >= 32 << 20,
        "the first run frees the old first half: {r1}"
    );
    assert!(r1["objects_deleted"].as_u64().unwrap() >= 32, "{r1}");
    let stored1 = stored();
    assert!(stored1 + (32 << 20) <= stored0, "{stored0} -> {stored1}");
    let r2 = json(&env.ok(&["gc", "pool/img", "--json"]));
    assert_eq!(r2["bytes_freed"], 0, "nothing left for a second run: {r2}");
    assert_eq!(r2["objects_deleted"], 0, "{r2}");
    assert_eq!(r2["objects_cleaned"], 0, "{r2}");
    // The image: the imported second half, and in the first half the
    // bench's blocks (each its own offset, then one random buffer).
    let img = env.ok(&["export", "pool/img", "-"]);
    let half = 32 << 20;
    assert!(
        img[half..] == common::pattern(7, 64 << 20)[half..],
        "second half"
    );
    for (k, block) in img[..half].chunks(1 << 20).enumerate() {
        let off = u64::from_le_bytes(block[..8].try_into().unwrap());
        assert_eq!(off, (k as u64) << 20, "block {k}");
        assert!(block[8..] == img[8..1 << 20], "block {k}");
    }
    // The deletion rule kept what the older listed checkpoint needs: with
    // the newest one corrupt, the image still reads back whole.
    let listed = json(&env.ok(&["info", "pool/img", "--json"]))["checkpoints"].clone();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    let newest = env.path(&format!(
        "store/pool/img.{:016x}",
        listed[0].as_u64().unwrap()
    ));
    let mut bytes = std::fs::read(&newest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&newest, bytes).unwrap();
    assert!(
        env.ok(&["export", "pool/img", "-"]) == img,
        "older checkpoint after gc"
    );
}

/// A `gc` killed (abort, like a power cut for the store) at each step of a
/// GC cycle: the image reads back unchanged afterwards, and a later `gc`
/// finishes the job.
#[test]
fn gc_killed_at_every_failpoint_keeps_the_image() {
    let mut env = Env::new();
    env.config = env.config.replace(
        '}',
        r#","gc_threshold":90,"no_gc":true,"backend_obj_bytes":"256K","wlog_chunk_bytes":"64K"}"#,
    );
    env.ok(&["create", "pool/img", "--size", "2M"]);
    let points: Vec<String> = lsvd::failpoint::POINTS
        .iter()
        .map(|p| p.to_string())
        .chain(["gc.delete.each:2".to_string()])
        .collect();
    for (i, point) in points.iter().enumerate() {
        let seed = (i + 1).to_string();
        env.ok(&[
            "bench",
            "pool/img",
            "--io-type",
            "write",
            "--io-pattern",
            "rand",
            "--io-total",
            "3M",
            "--io-threads",
            "2",
            "--seed",
            &seed,
        ]);
        let before = env.ok(&["export", "pool/img", "-"]);
        let out = env
            .cmd(&["gc", "pool/img"])
            .env("LSVD_FAILPOINT", point)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("failpoint"),
            "{point}: the failpoint did not fire: {stderr}"
        );
        assert!(
            env.ok(&["export", "pool/img", "-"]) == before,
            "{point}: image changed after a crash"
        );
        env.ok(&["gc", "pool/img"]);
        assert!(
            env.ok(&["export", "pool/img", "-"]) == before,
            "{point}: image changed after the next gc"
        );
    }
}

#[test]
fn snapshots_clones_and_flatten_from_the_command_line() {
    let env = Env::new();
    let data = env.path("data.bin");
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut bytes = vec![0u8; 3 << 20];
    rng.fill(&mut bytes[..]);
    std::fs::write(&data, bytes).unwrap();
    env.ok(&["import", data.to_str().unwrap(), "pool/base"]);
    let v1 = env.ok(&["export", "pool/base", "-"]);
    let out = env.ok_str(&["snap", "create", "pool/base@v1"]);
    assert!(out.contains("snapshot pool/base@v1 created"), "{out}");
    // Bad names and duplicates are refused by name.
    for (args, want) in [
        (vec!["snap", "create", "pool/base@v1"], "already exists"),
        (vec!["snap", "create", "pool/base"], "names no snapshot"),
        (vec!["snap", "create", "pool/base@a b"], "contains ' '"),
        (
            vec!["snap", "rm", "pool/base@nope"],
            "no snapshot 'nope' (snapshots: v1)",
        ),
        (vec!["snap", "create", "pool/nope@x"], "does not exist"),
        (
            vec!["clone", "pool/base@v1", "other/c"],
            "in its parent's pool",
        ),
        (
            vec!["clone", "pool/base@nope", "pool/c"],
            "no snapshot 'nope'",
        ),
        (vec!["flatten", "pool/base"], "is not a clone"),
    ] {
        let out = env.run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(want),
            "{args:?}: {err}"
        );
    }
    // Overwrite the base; the snapshot and a clone of it keep v1.
    env.ok(&[
        "bench",
        "pool/base",
        "--io-type",
        "write",
        "--io-total",
        "2M",
        "--seed",
        "5",
    ]);
    let later = env.ok(&["export", "pool/base", "-"]);
    assert!(later != v1);
    assert!(env.ok(&["export", "pool/base@v1", "-"]) == v1);
    env.ok(&["clone", "pool/base@v1", "pool/child"]);
    assert!(env.ok(&["export", "pool/child", "-"]) == v1);
    let info = env.ok_str(&["info", "pool/child"]);
    assert!(info.contains("parent base@v1"), "{info}");
    let ls = env.ok_str(&["snap", "ls", "pool/base"]);
    assert!(
        ls.starts_with("v1\t") && ls.contains("clones: child"),
        "{ls}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&env.ok_str(&["snap", "ls", "pool/base", "--json"])).unwrap();
    assert_eq!(json[0]["clones"][0], "child");
    // Writes to the clone never show in the base or the snapshot.
    env.ok(&[
        "bench",
        "pool/child",
        "--io-type",
        "write",
        "--io-total",
        "1M",
        "--seed",
        "9",
    ]);
    let child = env.ok(&["export", "pool/child", "-"]);
    assert!(child != v1);
    assert!(env.ok(&["export", "pool/base@v1", "-"]) == v1);
    assert!(env.ok(&["export", "pool/base", "-"]) == later);
    // Removal rules name the dependants.
    let out = env.run(&["snap", "rm", "pool/base@v1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("has clones: child"),
        "{err}"
    );
    let out = env.run(&["rm", "pool/base"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("has snapshots (v1)"),
        "{err}"
    );
    // An open image refuses a snapshot with a hint.
    let mut holder = env.hold_open("pool/base");
    let out = env.run(&["snap", "create", "pool/base@v2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("detach it first"),
        "{err}"
    );
    holder.kill().unwrap();
    holder.wait().unwrap();
    // A crash before the superblock names the snapshot: no snapshot, the
    // image is intact, and the next attempt works.
    let out = env
        .cmd(&["snap", "create", "pool/base@v2"])
        .env("LSVD_FAILPOINT", "snap.before_superblock")
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("failpoint"));
    assert!(!env.ok_str(&["snap", "ls", "pool/base"]).contains("v2"));
    assert!(env.ok(&["export", "pool/base", "-"]) == later);
    env.ok(&["snap", "create", "pool/base@v2"]);
    assert!(env.ok(&["export", "pool/base@v2", "-"]) == later);
    // A crash before flatten cuts the link: still a clone, same content;
    // flatten again finishes.
    let out = env
        .cmd(&["flatten", "pool/child"])
        .env("LSVD_FAILPOINT", "flatten.before_superblock")
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("failpoint"));
    assert!(env
        .ok_str(&["info", "pool/child"])
        .contains("parent base@v1"));
    assert!(env.ok(&["export", "pool/child", "-"]) == child);
    let out = env.ok_str(&["flatten", "pool/child"]);
    assert!(out.contains("flattened"), "{out}");
    assert!(!env.ok_str(&["info", "pool/child"]).contains("parent"));
    env.ok(&["snap", "rm", "pool/base@v1"]);
    env.ok(&["snap", "rm", "pool/base@v2"]);
    env.ok(&["gc", "pool/base"]);
    env.ok(&["rm", "pool/base"]);
    assert!(env.ok(&["export", "pool/child", "-"]) == child);
}

/// Run `env`'s binary with `LSVD_RUN_DIR` pointing into the scratch
/// directory (no host device records are seen).
fn run_isolated(env: &Env, args: &[&str]) -> Output {
    env.cmd(args)
        .env("LSVD_RUN_DIR", env.path("run"))
        .output()
        .unwrap()
}

fn ok_isolated(env: &Env, args: &[&str]) -> String {
    let out = run_isolated(env, args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Run and require failure with exit status `code` and every `needle` in
/// stderr.
fn fails_isolated(env: &Env, code: i32, args: &[&str], needles: &[&str]) -> String {
    let out = run_isolated(env, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "{args:?}: {n:?} not in: {stderr}");
    }
    stderr
}

fn size_of(env: &Env, image: &str) -> u64 {
    json(&env.ok(&["info", image, "--json"]))["size_bytes"]
        .as_u64()
        .unwrap()
}

/// `resize` of a detached image: grow (the new range reads as zeros), a
/// shrink refused without `--allow-shrink`, a shrink with it (the tail
/// reads as zeros once grown back), the same size as a no-op, bad sizes
/// refused; `info` shows each new size.
#[test]
fn resize_a_detached_image() {
    const M: usize = 1 << 20;
    let env = Env::new();
    let mut data = vec![0u8; 4 * M];
    rand::rngs::StdRng::seed_from_u64(11).fill(&mut data[..]);
    std::fs::write(env.path("in.raw"), &data).unwrap();
    env.ok(&["import", env.path("in.raw").to_str().unwrap(), "p/img"]);
    assert_eq!(size_of(&env, "p/img"), 4 << 20);

    let out = ok_isolated(&env, &["resize", "p/img", "--size", "8M"]);
    assert_eq!(
        out.trim(),
        "image p/img resized from 4 MiB (4194304 bytes) to 8 MiB (8388608 bytes)"
    );
    assert_eq!(size_of(&env, "p/img"), 8 << 20);
    assert!(env
        .ok_str(&["info", "p/img"])
        .contains("size 8 MiB (8388608 bytes)"));
    let mut model = data.clone();
    model.resize(8 * M, 0);
    assert!(env.ok(&["export", "p/img", "-"]) == model, "after grow");

    fails_isolated(
        &env,
        INVALID,
        &["resize", "p/img", "--size", "2M"],
        &["--allow-shrink", "8388608", "2097152", "p/img"],
    );
    assert_eq!(size_of(&env, "p/img"), 8 << 20);
    let out = ok_isolated(&env, &["resize", "p/img", "-s", "2M", "--allow-shrink"]);
    assert!(out.contains("resized from 8 MiB"), "{out}");
    assert_eq!(size_of(&env, "p/img"), 2 << 20);
    assert!(
        env.ok(&["export", "p/img", "-"]) == model[..2 * M],
        "after shrink"
    );
    let out = ok_isolated(&env, &["resize", "p/img", "-s", "2M"]);
    assert_eq!(
        out.trim(),
        "image p/img is already 2 MiB (2097152 bytes): nothing to do"
    );
    ok_isolated(&env, &["resize", "p/img", "-s", "4M"]);
    model[2 * M..].fill(0);
    assert!(
        env.ok(&["export", "p/img", "-"]) == model[..4 * M],
        "the discarded tail came back"
    );
    for (size, needle) in [
        ("0", "size 0"),
        ("1000", "not a multiple of 4096"),
        ("2P", "limit is 1P"),
        ("12X", "12X"),
    ] {
        // clap refuses 12X with its usage status, the same 2.
        fails_isolated(
            &env,
            INVALID,
            &["resize", "p/img", "--size", size],
            &[needle],
        );
    }
    fails_isolated(
        &env,
        NOT_FOUND,
        &["resize", "p/nosuch", "--size", "8M"],
        &["nosuch"],
    );
    // An open image (its lock held by another process) is refused.
    let mut child = env.hold_open("p/img");
    fails_isolated(
        &env,
        BUSY,
        &["resize", "p/img", "--size", "8M"],
        &["already open"],
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(size_of(&env, "p/img"), 4 << 20);
}

/// A `resize` killed (abort) at each step of ordering 26, shrinking and
/// growing: the image keeps its head, has the old or the new size, and a
/// repeated `resize` finishes the job with the discarded tail reading as
/// zeros.
#[test]
fn resize_killed_at_every_failpoint_keeps_the_image() {
    const M: usize = 1 << 20;
    let mut env = Env::new();
    env.config = env.config.replace(
        '}',
        r#","backend_obj_bytes":"256K","wlog_chunk_bytes":"64K"}"#,
    );
    let mut data = vec![0u8; 2 * M];
    rand::rngs::StdRng::seed_from_u64(12).fill(&mut data[..]);
    std::fs::write(env.path("in.raw"), &data).unwrap();
    env.ok(&["import", env.path("in.raw").to_str().unwrap(), "p/img"]);
    for point in lsvd::failpoint::RESIZE_POINTS {
        for (from, to, flag) in [(2 * M, M, "--allow-shrink"), (M, 2 * M, "--timeout=60")] {
            assert_eq!(size_of(&env, "p/img"), from as u64);
            let size = to.to_string();
            let out = env
                .cmd(&["resize", "p/img", "--size", &size, flag])
                .env("LSVD_RUN_DIR", env.path("run"))
                .env("LSVD_FAILPOINT", point)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success() && stderr.contains("failpoint"),
                "{point} {from}->{to}: the failpoint did not fire: {stderr}"
            );
            let now = size_of(&env, "p/img") as usize;
            let want = if *point == "resize.sb_written" {
                to
            } else {
                from
            };
            assert_eq!(now, want, "{point} {from}->{to}: size after the crash");
            let head = from.min(to);
            let image = env.ok(&["export", "p/img", "-"]);
            assert!(
                image[..head] == data[..head],
                "{point} {from}->{to}: head changed"
            );
            assert!(
                image[head..].iter().all(|&b| b == 0),
                "{point} {from}->{to}: the range beyond {head} is not zeros"
            );
            ok_isolated(&env, &["resize", "p/img", "--size", &size, flag]);
            assert_eq!(size_of(&env, "p/img"), to as u64);
        }
        // The tail was discarded for good.
        data[M..].fill(0);
        assert!(
            env.ok(&["export", "p/img", "-"]) == data,
            "{point}: at the end"
        );
    }
}

/// `resize` of an attached image goes to its server's control socket
/// (here a stand-in that answers one request, with a live lsvd-ublk
/// process as the recorded server) and prints the server's message; an
/// error reply, a missing socket and a dead server are clear errors.
#[test]
fn resize_an_attached_image_asks_its_server() {
    use std::io::Write;
    use std::os::unix::net::UnixListener;
    let env = Env::new();
    env.ok(&["create", "p/img", "--size", "4M"]);
    let run = env.path("run");
    std::fs::create_dir_all(&run).unwrap();
    // Any running lsvd-ublk process passes for the server.
    let mut server = env.hold_open("p/img");
    let record = |pid: u32| {
        let r = serde_json::json!({
            "dev_id": 7, "device": "/dev/ublkb7", "image": "p/img", "pid": pid,
            "queues": 1, "depth": 64, "logical_block": 512, "config": {}, "started": 0,
        });
        std::fs::write(run.join("ublkb7.json"), r.to_string()).unwrap();
    };
    record(server.id());
    fails_isolated(
        &env,
        1,
        &["resize", "p/img", "--size", "8M"],
        &["/dev/ublkb7", "no control socket", "detach"],
    );
    let answer = |reply: &'static str| {
        let listener = UnixListener::bind(run.join("ublkb7.sock")).unwrap();
        std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).unwrap();
            (&s).write_all(reply.as_bytes()).unwrap();
            line
        })
    };
    let t = answer(
        "{\"status\":\"resized\",\"old_size\":4194304,\"new_size\":8388608,\"device_size\":4194304,\"message\":\"resized; /dev/ublkb7 keeps its size\"}\n",
    );
    let out = ok_isolated(&env, &["resize", "p/img", "--size", "8M"]);
    assert_eq!(
        out.trim(),
        "image p/img resized; /dev/ublkb7 keeps its size"
    );
    assert_eq!(
        t.join().unwrap().trim(),
        r#"{"op":"resize","size":8388608,"allow_shrink":false}"#
    );
    std::fs::remove_file(run.join("ublkb7.sock")).unwrap();
    let t = answer("{\"status\":\"error\",\"error\":\"cannot shrink attached image p/img\"}\n");
    fails_isolated(
        &env,
        1,
        &["resize", "p/img", "--size", "2M", "--allow-shrink"],
        &["/dev/ublkb7", "cannot shrink attached image p/img"],
    );
    assert!(t.join().unwrap().contains(r#""allow_shrink":true"#));
    // The shrink check comes first, without asking the server.
    fails_isolated(
        &env,
        INVALID,
        &["resize", "p/img", "--size", "2M"],
        &["--allow-shrink"],
    );
    server.kill().unwrap();
    server.wait().unwrap();
    // A dead server: recover or detach --force first.
    fails_isolated(
        &env,
        1,
        &["resize", "p/img", "--size", "8M"],
        &["not running", "recover", "detach --force"],
    );
}

/// `scrub`: a clean image scrubs clean with counts; a byte flipped in a
/// data object, a GC object, a checkpoint piece and the superblock in turn
/// each makes it exit 1 naming the object.
#[test]
fn scrub_finds_a_flipped_byte_in_each_kind_of_object() {
    use lsvd::format::checkpoint::CheckpointPiece;
    use lsvd::format::gcobject::GcHeader;
    use lsvd::format::object::ObjectHeader;

    let mut env = Env::new();
    env.config = env
        .config
        .replace('}', r#","gc_threshold":90,"no_gc":true}"#);
    env.ok(&["create", "pool/img", "--size", "4M"]);
    env.ok(&[
        "bench",
        "pool/img",
        "--io-type",
        "write",
        "--io-pattern",
        "rand",
        "--io-total",
        "12M",
        "--io-threads",
        "2",
    ]);
    env.ok(&["gc", "pool/img"]);
    // Data objects written after the GC (which cleaned every one before).
    env.ok(&[
        "bench",
        "pool/img",
        "--io-type",
        "write",
        "--io-pattern",
        "seq",
        "--io-total",
        "2M",
        "--io-size",
        "64K",
    ]);
    let r = json(&env.ok(&["scrub", "pool/img", "--json"]));
    assert_eq!(r["bad"], serde_json::json!([]), "{r}");
    for key in [
        "objects",
        "bytes",
        "checkpoints",
        "checkpoint_pieces",
        "chunks",
    ] {
        assert!(r[key].as_u64().unwrap() > 0, "{key}: {r}");
    }
    assert_eq!(r["legacy_objects"], 0, "{r}");
    let text = env.ok_str(&["scrub", "pool/img"]);
    assert!(
        text.starts_with("image 'pool/img': ") && text.trim_end().ends_with("clean"),
        "{text}"
    );

    // The objects the newest checkpoint names, by kind.
    let dir = env.path("store/pool");
    let info = json(&env.ok(&["info", "pool/img", "--json"]));
    let ckpt = format!("img.{:016x}", info["checkpoints"][0].as_u64().unwrap());
    let piece = CheckpointPiece::decode(&std::fs::read(dir.join(&ckpt)).unwrap()).unwrap();
    let (mut data_obj, mut gc_obj) = (None, None);
    // (Rows with no live data name objects awaiting deletion: maybe gone.)
    for o in piece.objects.iter().filter(|o| o.live_sectors > 0) {
        let name = format!("img.{:016x}", o.obj.0);
        let bytes = std::fs::read(dir.join(&name)).unwrap();
        if let Ok(h) = ObjectHeader::decode(&bytes) {
            data_obj.get_or_insert((name, u64::from(h.header_bytes) + 1000));
        } else if let Ok(h) = GcHeader::decode(&bytes) {
            gc_obj.get_or_insert((name, u64::from(h.header_bytes) + 1000));
        }
    }
    let data_obj = data_obj.expect("a data object is still needed");
    let gc_obj = gc_obj.expect("GC wrote a GC object");
    let flip = |name: &str, off: u64| {
        let p = dir.join(name);
        let mut b = std::fs::read(&p).unwrap();
        b[off as usize] ^= 0x20;
        std::fs::write(&p, &b).unwrap();
    };
    let piece_mid = std::fs::metadata(dir.join(&ckpt)).unwrap().len() / 2;
    for (name, off, what) in [
        (data_obj.0.as_str(), data_obj.1, "fails its checksum"),
        (gc_obj.0.as_str(), gc_obj.1, "fails its checksum"),
        (ckpt.as_str(), piece_mid, "checkpoint: checksum mismatch"),
        ("img", 50, "superblock: checksum mismatch"),
    ] {
        flip(name, off);
        let out = env.run(&["scrub", "pool/img", "--json"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(
            stderr.contains(name) && stderr.contains(what),
            "{name}: {stderr}"
        );
        let r = json(&out.stdout);
        let bad = r["bad"].as_array().unwrap();
        assert_eq!(bad.len(), 1, "{name}: {r}");
        assert_eq!(bad[0]["object"], name, "{r}");
        if name != "img" {
            // A bad piece does not hide the rest of the image.
            assert!(r["objects"].as_u64().unwrap() > 0, "{r}");
        }
        flip(name, off);
    }
    env.ok(&["scrub", "pool/img"]);
}

/// `import -` reads stdin (it needs `--size`); an input longer than the
/// image fails and leaves no image.
#[test]
fn import_from_stdin() {
    use std::io::Write;
    let env = Env::new();
    let data = sparse_input(&env.path("in.raw"));
    env.fails_with(INVALID, &["import", "-", "pool/s"], &["needs --size"]);
    let mut child = env
        .cmd(&["import", "-", "pool/s", "--size", "8M"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut expected = data.clone();
    expected.resize(8 << 20, 0);
    assert!(
        env.ok(&["export", "pool/s", "-"]) == expected,
        "export of the stdin import differs"
    );
    let mut child = env
        .cmd(&["import", "-", "pool/t", "--size", "4M"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It stops reading at the error: the pipe may break under us.
    let _ = child.stdin.take().unwrap().write_all(&data);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(INVALID), "{stderr}");
    assert!(stderr.contains("longer than --size"), "{stderr}");
    assert!(
        stderr.contains("partly written image was removed"),
        "{stderr}"
    );
    assert_eq!(env.ok_str(&["ls", "pool"]), "s\n");
}

/// A Ctrl-C (SIGINT) during `import` removes the partly written image and
/// exits with 130, saying so; before, the process died where it was and
/// left an image that looked finished (issue 17, bug 1).
#[test]
fn an_interrupted_import_removes_its_image() {
    use std::io::Write;
    let env = Env::new();
    let mut child = env
        .cmd(&["import", "-", "pool/i", "--size", "64M"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&vec![0x5a; 3 << 20]).unwrap();
    // The image exists once `create` is done; give the writes a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !env.run(&["info", "pool/i"]).status.success() {
        assert!(std::time::Instant::now() < deadline, "no image appeared");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    // SAFETY: kill(2) with the child's pid, which has not been reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    // A Ctrl-C in a pipeline also ends the input.
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("import into pool/i was interrupted; the partly written image was removed"),
        "{stderr}"
    );
    assert_eq!(env.ok_str(&["ls", "pool"]), "");
    env.fails_with(NOT_FOUND, &["info", "pool/i"], &["does not exist"]);
    let left: Vec<_> = std::fs::read_dir(env.path("wlog").join("pool"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "journal files left: {left:?}");
    // Interrupted at once (before or right after `create`): no image.
    let mut child = env
        .cmd(&["import", "-", "pool/j", "--size", "64M"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert_eq!(env.ok_str(&["ls", "pool"]), "");
}

/// Start `serve-nbd ARGS...` and wait for its address line; returns the
/// server and its URI.
fn serve_nbd(env: &Env, args: &[&str]) -> (std::process::Child, String) {
    let mut all = vec!["serve-nbd"];
    all.extend_from_slice(args);
    let mut child = env
        .cmd(&all)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("nbd"), "serve-nbd printed no address");
    (child, line.trim().to_owned())
}

fn signal(child: &std::process::Child, sig: i32) {
    // SAFETY: kill(2) with our own child's pid, which has not been reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

/// `status` names who has an image or a snapshot of it open (here two
/// `serve-nbd`s, with pid, address and the image's lock), `list` shows NBD
/// servers beside devices, `info` names the holder instead of "will recover
/// on open", and `detach` of an image served over NBD says how to stop it
/// (issue 17, item 6).
#[test]
fn status_list_info_and_detach_name_nbd_servers() {
    let env = Env::new();
    env.ok(&["create", "p/img", "--size", "16M"]);
    env.ok(&["snap", "create", "p/img@s1"]);
    // Idle: nobody.
    let text = env.ok_str(&["status", "p/img"]);
    assert_eq!(
        text.trim(),
        "p/img: not open (no ublk device, NBD server or lock holder)"
    );
    let st = json(&env.ok(&["status", "p/img", "--json"]));
    assert_eq!(st["open"], false, "{st}");
    assert_eq!(st["holders"], serde_json::json!([]), "{st}");
    assert!(env.ok_str(&["info", "p/img"]).contains("\tclean yes\n"));
    assert_eq!(
        json(&env.ok(&["info", "p/img", "--json"]))["open_by"],
        serde_json::json!([])
    );

    // The image, served over TCP.
    let (mut img, uri) = serve_nbd(&env, &["p/img", "--listen", "127.0.0.1:0"]);
    let pid = img.id();
    let text = env.ok_str(&["status", "p/img"]);
    assert!(text.starts_with("p/img: open\n"), "{text}");
    assert!(
        text.contains(&format!("p/img: NBD server {uri} pid {pid} on host ")),
        "{text}"
    );
    assert!(text.contains("holds the lock"), "{text}");
    let st = json(&env.ok(&["status", "p/img", "--json"]));
    assert_eq!(st["open"], true);
    let h = &st["holders"][0];
    assert_eq!(st["holders"].as_array().unwrap().len(), 1, "{st}");
    assert_eq!(
        (&h["kind"], &h["target"], &h["pid"], &h["address"]),
        (
            &serde_json::json!("nbd"),
            &serde_json::json!("p/img"),
            &serde_json::json!(pid),
            &serde_json::json!(uri)
        ),
        "{st}"
    );
    assert!(h["since"].as_u64().unwrap() > 1_700_000_000, "{st}");
    let lock = h["lock"].as_str().unwrap();
    assert!(
        lock.contains(&format!("pid {pid} image "))
            && lock.contains(&format!("by serve-nbd at {uri} since ")),
        "{lock}"
    );
    // `info` names it instead of "will recover on open".
    let info = env.ok_str(&["info", "p/img"]);
    assert!(
        info.contains(&format!(
            "\tclean no (open by NBD server {uri} pid {pid} on host "
        )),
        "{info}"
    );
    assert!(!info.contains("will recover"), "{info}");
    let open_by = &json(&env.ok(&["info", "p/img", "--json"]))["open_by"];
    assert_eq!(open_by.as_array().unwrap().len(), 1, "{open_by}");
    assert!(
        open_by[0]
            .as_str()
            .unwrap()
            .contains(&format!("pid {pid} image ")),
        "{open_by}"
    );
    // `detach` says how to stop it (busy: README "Exit status").
    env.fails_with(
        5,
        &["detach", "p/img"],
        &[
            "not attached as a block device",
            &uri,
            &format!("`serve-nbd` pid {pid}"),
            &format!("kill -TERM {pid}"),
            "systemctl stop",
        ],
    );

    // Its snapshot, served read-only on a unix socket.
    let sock = env.path("s1.sock");
    let listen = format!("unix:{}", sock.display());
    let (mut snap, snap_uri) = serve_nbd(&env, &["p/img@s1", "--listen", &listen]);
    let snap_pid = snap.id();
    let text = env.ok_str(&["status", "p/img@s1"]);
    assert!(
        text.contains(&format!(
            "p/img@s1: NBD server {snap_uri} (read-only) pid {snap_pid} on host "
        )),
        "{text}"
    );
    assert!(!text.contains(&uri), "only the snapshot: {text}");
    let st = json(&env.ok(&["status", "p/img", "--json"]));
    let targets: Vec<_> = st["holders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["target"].as_str().unwrap(), h["pid"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        targets,
        vec![("p/img", pid as u64), ("p/img@s1", snap_pid as u64)],
        "{st}"
    );

    // `list`: both servers, with their addresses.
    let text = env.ok_str(&["list"]);
    assert!(text.starts_with("DEVICE "), "{text}");
    for (p, u) in [(pid, &uri), (snap_pid, &snap_uri)] {
        assert!(
            text.lines().any(|l| l.starts_with("nbd ")
                && l.contains(&format!(" {p} live "))
                && l.ends_with(u.as_str())),
            "{text}"
        );
    }
    let rows = json(&env.ok(&["list", "--json"]));
    assert_eq!(rows.as_array().unwrap().len(), 2, "{rows}");
    assert_eq!(rows[0]["kind"], "nbd");
    assert_eq!(rows[0]["image"], "p/img");
    assert_eq!(rows[0]["address"], uri.as_str());
    assert_eq!(rows[0]["state"], "live");
    assert!(rows[0]["device"].is_null());
    assert_eq!(rows[1]["image"], "p/img@s1");
    assert_eq!(rows[1]["flags"], serde_json::json!(["read-only"]));

    // SIGTERM closes cleanly and removes the record.
    signal(&img, libc::SIGTERM);
    assert!(img.wait().unwrap().success());
    signal(&snap, libc::SIGTERM);
    assert!(snap.wait().unwrap().success());
    let left: Vec<_> = std::fs::read_dir(env.path("run"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(env.ok_str(&["status", "p/img"]).contains("not open"));
    assert!(env.ok_str(&["list"]).is_empty());
    assert!(env.ok_str(&["info", "p/img"]).contains("\tclean yes\n"));
}

/// An NBD server killed with SIGKILL leaves its record behind: `list` and
/// `status` do not show it as live (and drop the record), and `info` says
/// the image will recover on open.
#[test]
fn a_killed_nbd_server_is_not_shown_as_live() {
    let env = Env::new();
    env.ok(&["create", "p/img", "--size", "16M"]);
    let (mut server, uri) = serve_nbd(&env, &["p/img", "--listen", "127.0.0.1:0"]);
    let record = env.path("run").join(format!("nbd-{}.json", server.id()));
    assert!(record.exists(), "no record of the server");
    let r = json(&std::fs::read(&record).unwrap());
    assert_eq!(
        (&r["image"], &r["address"]),
        (&"p/img".into(), &uri.clone().into())
    );
    assert!(env.ok_str(&["list"]).contains(&uri));
    signal(&server, libc::SIGKILL);
    server.wait().unwrap();
    assert!(record.exists(), "SIGKILL leaves the record");
    assert!(env.ok_str(&["list"]).is_empty());
    assert_eq!(json(&env.ok(&["list", "--json"])), serde_json::json!([]));
    assert!(!record.exists(), "the stale record was not dropped");
    let st = json(&env.ok(&["status", "p/img", "--json"]));
    assert_eq!(st["open"], false, "{st}");
    let info = env.ok_str(&["info", "p/img"]);
    assert!(
        info.contains("\tclean no (will recover on open)\n"),
        "{info}"
    );
    // A stale record whose pid is a process that is not ours (here this
    // test) is not a server either.
    std::fs::write(
        env.path("run").join(format!("nbd-{}.json", std::process::id())),
        format!(
            r#"{{"image":"p/img","pid":{},"address":"nbd://127.0.0.1:1/img","read_only":false,"started":0}}"#,
            std::process::id()
        ),
    )
    .unwrap();
    assert!(env.ok_str(&["status", "p/img"]).contains("not open"));
    env.fails_with(
        3,
        &["detach", "p/img"],
        &["is not a device attached by lsvd-ublk"],
    );
    // Nor is one whose pid an lsvd-ublk process that does not serve NBD
    // has reused (here a bench, which holds the image open: `status` shows
    // it by its lock, as a bench).
    let mut bench = env.hold_open("p/img");
    let fake = env.path("run").join(format!("nbd-{}.json", bench.id()));
    std::fs::write(
        &fake,
        format!(
            r#"{{"image":"p/img","pid":{},"address":"nbd://127.0.0.1:1/img","read_only":false,"started":0}}"#,
            bench.id()
        ),
    )
    .unwrap();
    assert!(env.ok_str(&["list"]).is_empty());
    let text = env.ok_str(&["status", "p/img"]);
    assert!(
        text.contains(&format!("p/img: bench pid {} on host ", bench.id()))
            && text.contains(", locked")
            && !text.contains("NBD"),
        "{text}"
    );
    bench.kill().unwrap();
    bench.wait().unwrap();
}

/// Issue 17, item 9: each kind of failure has its exit status (README
/// "Exit status"): 2 for a bad argument (as clap's usage errors), 3 for an
/// unknown pool, image or snapshot, 4 for one that already exists, 5 for
/// an image or snapshot that is busy, 1 for anything else.
#[test]
fn exit_statuses_name_the_kind_of_failure() {
    let env = Env::new();
    env.ok(&["create", "pool/img", "--size", "4M"]);
    env.ok(&["snap", "create", "pool/img@s"]);

    // Not found: pool, image, snapshot.
    env.fails_with(NOT_FOUND, &["ls", "nopool"], &["nopool"]);
    env.fails_with(NOT_FOUND, &["info", "pool/nosuch"], &["nosuch"]);
    env.fails_with(NOT_FOUND, &["rm", "pool/nosuch"], &["nosuch"]);
    env.fails_with(NOT_FOUND, &["snap", "rm", "pool/img@nosnap"], &["nosnap"]);
    env.fails_with(
        NOT_FOUND,
        &["clone", "pool/img@nosnap", "pool/c"],
        &["nosnap"],
    );
    // Already exists: image, snapshot, an image a clone would replace.
    env.fails_with(EXISTS, &["create", "pool/img", "--size", "4M"], &["exists"]);
    env.fails_with(EXISTS, &["snap", "create", "pool/img@s"], &["exists"]);
    env.fails_with(EXISTS, &["clone", "pool/img@s", "pool/img"], &["exists"]);
    // Invalid argument: sizes, names, configuration, clap's usage errors.
    env.fails_with(INVALID, &["create", "pool/x", "--size", "0"], &["size 0"]);
    env.fails_with(INVALID, &["create", "pool/x$", "--size", "4M"], &["'$'"]);
    env.fails_with(
        INVALID,
        &["snap", "create", "pool/img"],
        &["names no snapshot"],
    );
    let out = Command::new(env!("CARGO_BIN_EXE_lsvd-ublk"))
        .current_dir(env.dir.path())
        .args(["--config", r#"{"wlog_bytes": "0"}"#, "ls", "pool"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(INVALID));
    let out = env.run(&["create", "pool/x", "--size", "12X"]);
    assert_eq!(out.status.code(), Some(INVALID));

    // Busy: an image with snapshots, an open image (rm, create over it
    // is still "exists"), a snapshot being read.
    env.fails_with(BUSY, &["rm", "pool/img"], &["has snapshots (s)"]);
    let mut child = env.hold_open("pool/img");
    env.fails_with(BUSY, &["rm", "pool/img"], &["locked"]);
    env.fails_with(BUSY, &["snap", "rm", "pool/img@s"], &["detach it first"]);
    env.fails_with(EXISTS, &["create", "pool/img", "--size", "4M"], &["exists"]);
    child.kill().unwrap();
    child.wait().unwrap();
    // An export of the snapshot to a pipe nobody reads holds it open.
    let mut reader = env
        .cmd(&["export", "pool/img@s", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = reader.stdout.take().unwrap();
    let mut first = [0u8; 4096];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    env.fails_with(BUSY, &["snap", "rm", "pool/img@s"], &["is open", "export"]);
    drop(stdout);
    reader.wait().unwrap();

    // Anything else: 1 (a superblock that fails its checksum).
    env.ok(&["create", "pool/bad", "--size", "4M"]);
    let sb = env.path("store/pool/bad");
    let mut bytes = std::fs::read(&sb).unwrap();
    bytes[20] ^= 0xff;
    std::fs::write(&sb, bytes).unwrap();
    env.fails(&["info", "pool/bad"], &["pool/bad"]);
}

/// With `--json`, a failure is one JSON object line on stderr (kind, exit
/// status, the engine's error kind, message and causes) and nothing on
/// stdout; clap's usage errors too. Without it, the text form stays.
#[test]
fn json_errors_are_one_object_line_on_stderr() {
    let env = Env::new();
    env.ok(&["create", "pool/img", "--size", "4M"]);
    let error = |args: &[&str], code: i32| {
        let out = env.run(args);
        assert_eq!(out.status.code(), Some(code), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}: stdout not empty");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        json(stderr.as_bytes())["error"].clone()
    };
    let e = error(&["info", "pool/nosuch", "--json"], NOT_FOUND);
    assert_eq!(e["kind"], "not_found");
    assert_eq!(e["exit_code"], NOT_FOUND);
    assert_eq!(e["error_kind"], "not_found");
    assert_eq!(e["message"], "cannot read image pool/nosuch");
    let causes = e["causes"].as_array().unwrap();
    assert_eq!(causes.len(), 1, "{e}");
    assert!(causes[0]
        .as_str()
        .unwrap()
        .contains("'nosuch' does not exist"));

    let e = error(&["ls", "nopool", "--json"], NOT_FOUND);
    assert_eq!(e["message"], "cannot open pool 'nopool'");
    let e = error(&["snap", "ls", "pool/img$", "--json"], INVALID);
    assert_eq!(e["kind"], "invalid_argument");
    assert_eq!(e["error_kind"], "invalid_input");

    let mut child = env.hold_open("pool/img");
    let e = error(&["gc", "pool/img", "--json"], BUSY);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(e["kind"], "busy");
    assert_eq!(e["error_kind"], "locked");

    // A usage error clap finds: the same shape, status 2, no engine kind.
    let e = error(&["ls", "pool", "--json", "--bogus"], INVALID);
    assert_eq!(e["kind"], "invalid_argument");
    assert!(e["error_kind"].is_null());
    assert!(e["message"].as_str().unwrap().contains("--bogus"), "{e}");
    assert_eq!(e["causes"], serde_json::json!([]));

    // Without --json: text.
    let stderr = env.fails_with(NOT_FOUND, &["info", "pool/nosuch"], &["caused by: "]);
    assert!(!stderr.contains('{'), "{stderr}");
}

/// `lock ls --json`: the image and its holders (none, then the process
/// that has it open).
#[test]
fn lock_ls_json_lists_the_holders() {
    let env = Env::new();
    env.ok(&["create", "pool/held", "--size", "64M"]);
    let v = json(&env.ok(&["lock", "ls", "pool/held", "--json"]));
    assert_eq!(v, serde_json::json!({"image": "pool/held", "holders": []}));
    let mut child = env.hold_open("pool/held");
    let v = json(&env.ok(&["lock", "ls", "pool/held", "--json"]));
    let pid = format!("pid {}", child.id());
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(v["image"], "pool/held");
    let holders = v["holders"].as_array().unwrap();
    assert_eq!(holders.len(), 1, "{v}");
    assert!(holders[0].as_str().unwrap().contains(&pid), "{v}");
}

/// `ls pool | head -1`: a reader that closes stdout early is a normal end
/// (status 0, nothing on stderr). `export -` to such a reader stops with
/// 141, quietly, as a writer killed by SIGPIPE: its copy is incomplete.
#[test]
fn a_closed_stdout_is_a_normal_end() {
    let env = Env::new();
    env.ok(&["create", "pool/img", "--size", "4M"]);
    // Far more names than a pipe holds (64 KiB): copies of one superblock.
    let sb = env.path("store/pool/img");
    for i in 0..2000 {
        let name = format!("{}{i:04}", "n".repeat(90));
        std::fs::copy(&sb, env.path(&format!("store/pool/{name}"))).unwrap();
    }
    // Like `head -1`: read a block (less than the pipe holds, so the
    // writer is still writing), then close the pipe.
    let read_a_block_then_close = |args: &[&str]| {
        let mut child = env
            .cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut block = vec![0u8; 4096];
        let mut stdout = child.stdout.take().unwrap();
        std::io::Read::read_exact(&mut stdout, &mut block).unwrap();
        drop(stdout);
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (block, out.status.code(), stderr)
    };
    let (block, code, stderr) = read_a_block_then_close(&["ls", "pool"]);
    assert!(block.starts_with(b"img\nnnnn"));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    // The JSON array is one long line.
    let (block, code, stderr) = read_a_block_then_close(&["ls", "pool", "--json"]);
    assert!(block.starts_with(b"[\"img\",\"nnnn"));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");

    // export: the copy is incomplete; quietly 141.
    let (block, code, stderr) = read_a_block_then_close(&["export", "pool/img", "-"]);
    assert!(block.iter().all(|&b| b == 0));
    assert_eq!(code, Some(141), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    // The image was closed cleanly all the same.
    assert_eq!(
        json(&env.ok(&["info", "pool/img", "--json"]))["clean"],
        true
    );
}
