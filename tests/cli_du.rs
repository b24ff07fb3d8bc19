//! `lsvd-ublk du` and the layout lines of `info`, run as the built binary
//! against a dir-backend store in a temporary directory (as tests/cli.rs).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Stdio;

mod common;

use common::CliEnv as Env;
use serde_json::Value;

const M: u64 = 1 << 20;

fn ok(env: &Env, args: &[&str]) -> Vec<u8> {
    let out = env.cmd(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

fn num(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no number {key} in {v}"))
}

/// `du POOL/IMAGE --json`: the one image's row.
fn du_image(env: &Env, image: &str) -> Value {
    let v = json(&ok(env, &["du", image, "--json"]));
    let pools = v["pools"].as_array().unwrap();
    assert_eq!(pools.len(), 1, "{v}");
    let images = pools[0]["images"].as_array().unwrap();
    assert_eq!(images.len(), 1, "{v}");
    images[0].clone()
}

fn stored_per_info(env: &Env, image: &str) -> u64 {
    num(&json(&ok(env, &["info", image, "--json"])), "stored_bytes")
}

/// Disk space of a local file (0 if missing), as `du` counts it.
fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}

/// An image file: 1 MiB of data, a 1 MiB hole, 2 MiB of data (`import`
/// skips the hole: 3 MiB written).
fn holey_input(env: &Env) -> std::path::PathBuf {
    let mut data = common::pattern(3, 4 << 20);
    data[M as usize..2 * M as usize].fill(0);
    let path = env.path("holey.raw");
    std::fs::write(&path, data).unwrap();
    path
}

fn no_gc_env() -> Env {
    let mut env = Env::new();
    env.config = env.config.replace('}', r#","no_gc":true}"#);
    env
}

#[test]
fn du_of_a_fresh_a_written_an_overwritten_and_a_collected_image() {
    let env = no_gc_env();
    ok(&env, &["create", "pool/fresh", "--size", "16M"]);
    let fresh = du_image(&env, "pool/fresh");
    assert_eq!(fresh["name"], "pool/fresh");
    assert_eq!(num(&fresh, "provisioned_bytes"), 16 * M);
    for key in [
        "written_bytes",
        "stored_bytes",
        "garbage_bytes",
        "journal_bytes",
        "cache_bytes",
        "uncheckpointed_bytes",
    ] {
        assert_eq!(num(&fresh, key), 0, "{key}: {fresh}");
    }
    assert!(fresh["checkpoint"].is_null(), "{fresh}");
    assert_eq!(fresh["snapshots"], serde_json::json!([]));

    let input = holey_input(&env);
    ok(&env, &["import", input.to_str().unwrap(), "pool/img"]);
    let u = du_image(&env, "pool/img");
    assert_eq!(num(&u, "provisioned_bytes"), 4 * M);
    assert_eq!(num(&u, "written_bytes"), 3 * M, "the hole is not written");
    assert_eq!(num(&u, "stored_bytes"), stored_per_info(&env, "pool/img"));
    assert!(num(&u, "stored_bytes") >= 3 * M, "{u}");
    assert_eq!(num(&u, "garbage_bytes"), 0, "nothing overwritten: {u}");
    assert_eq!(num(&u, "uncheckpointed_bytes"), 0, "closed cleanly: {u}");
    // Import removes its own journal once the image is closed clean.
    let journal = env.path("wlog/pool/img.wlog");
    assert!(!journal.exists());
    assert_eq!(num(&u, "journal_bytes"), 0, "{u}");
    assert_eq!(
        num(&u, "cache_bytes"),
        allocated(&env.path("rcache/pool/img.rcache"))
    );

    // Overwrite the first 2 MiB: the hole is filled, the first MiB of
    // data is dead.
    ok(
        &env,
        &[
            "bench",
            "pool/img",
            "--io-type",
            "write",
            "--io-pattern",
            "seq",
            "--io-size",
            "1M",
            "--io-total",
            "2M",
            "--io-threads",
            "1",
        ],
    );
    let u = du_image(&env, "pool/img");
    // The bench's open made the image's journal.
    assert!(allocated(&journal) > 0);
    assert_eq!(num(&u, "journal_bytes"), allocated(&journal));
    assert_eq!(num(&u, "written_bytes"), 4 * M, "{u}");
    assert_eq!(num(&u, "stored_bytes"), stored_per_info(&env, "pool/img"));
    let garbage = num(&u, "garbage_bytes");
    assert!(garbage >= M, "the overwritten MiB is garbage: {u}");
    assert!(garbage < num(&u, "stored_bytes"), "{u}");

    let r = json(&ok(&env, &["gc", "pool/img", "--json"]));
    assert!(num(&r, "bytes_freed") > 0, "{r}");
    let after = du_image(&env, "pool/img");
    assert_eq!(num(&after, "written_bytes"), 4 * M, "{after}");
    assert_eq!(
        num(&after, "stored_bytes"),
        stored_per_info(&env, "pool/img")
    );
    assert!(
        num(&after, "garbage_bytes") < garbage.min(M),
        "gc reclaimed the dead MiB: {garbage} -> {after}"
    );
    assert!(
        num(&after, "stored_bytes") < num(&u, "stored_bytes"),
        "{u} -> {after}"
    );

    // A missing image fails, naming it.
    let out = env.cmd(&["du", "pool/nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pool/nope"), "{stderr}");
}

#[test]
fn du_with_snapshots_clones_and_pool_totals() {
    let env = no_gc_env();
    let input = holey_input(&env);
    ok(&env, &["import", input.to_str().unwrap(), "pool/img"]);
    ok(&env, &["snap", "create", "pool/img@s1"]);
    ok(
        &env,
        &[
            "bench",
            "pool/img",
            "--io-type",
            "write",
            "--io-pattern",
            "seq",
            "--io-size",
            "1M",
            "--io-total",
            "1M",
            "--io-threads",
            "1",
        ],
    );
    ok(&env, &["clone", "pool/img@s1", "pool/child"]);
    ok(&env, &["create", "pool/other", "--size", "8M"]);

    let u = du_image(&env, "pool/img");
    assert_eq!(num(&u, "written_bytes"), 3 * M, "{u}");
    let snaps = u["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 1, "{u}");
    let s = &snaps[0];
    assert_eq!(s["name"], "pool/img@s1");
    assert_eq!(s["snapshot"], "s1");
    assert_eq!(s["removing"], false);
    assert_eq!(num(s, "provisioned_bytes"), 4 * M);
    assert_eq!(num(s, "written_bytes"), 3 * M, "{s}");
    assert_eq!(num(s, "journal_bytes"), 0);
    // The import's objects are the snapshot's, the bench's the image's;
    // together, every object of the image.
    assert!(num(s, "stored_bytes") >= 3 * M, "{u}");
    assert!(num(&u, "stored_bytes") >= M, "{u}");
    assert_eq!(
        num(&u, "stored_bytes") + num(s, "stored_bytes"),
        stored_per_info(&env, "pool/img")
    );
    // The overwritten MiB is the snapshot's, not garbage.
    assert!(
        num(&u, "garbage_bytes") + num(s, "garbage_bytes") < M,
        "{u}"
    );

    let child = du_image(&env, "pool/child");
    assert_eq!(child["parent"], "img@s1");
    assert_eq!(num(&child, "provisioned_bytes"), 4 * M);
    assert_eq!(num(&child, "written_bytes"), 0, "{child}");
    assert_eq!(num(&child, "stored_bytes"), 0, "{child}");

    // The pool: every image, the same figures, and totals that add up.
    let v = json(&ok(&env, &["du", "pool", "--json"]));
    let p = &v["pools"][0];
    assert_eq!(p["pool"], "pool");
    let images = p["images"].as_array().unwrap();
    let names: Vec<&str> = images
        .iter()
        .map(|i| i["image"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["child", "img", "other"]);
    assert_eq!(images[1], u, "per-image and pool forms agree");
    let t = &p["total"];
    for key in ["provisioned_bytes", "written_bytes"] {
        let sum: u64 = images.iter().map(|i| num(i, key)).sum();
        assert_eq!(num(t, key), sum, "{key}: images only");
    }
    assert_eq!(num(t, "provisioned_bytes"), 16 * M);
    for key in [
        "stored_bytes",
        "garbage_bytes",
        "journal_bytes",
        "cache_bytes",
    ] {
        let sum: u64 = images
            .iter()
            .flat_map(|i| std::iter::once(i).chain(i["snapshots"].as_array().unwrap()))
            .map(|r| num(r, key))
            .sum();
        assert_eq!(num(t, key), sum, "{key}: every row");
    }
    assert!(num(t, "journal_bytes") > 0, "{t}");

    // Every pool (dir backend): the same.
    let all = json(&ok(&env, &["du", "--json"]));
    assert_eq!(all["pools"][0], *p);

    // The table: snapshots before their image, one total line.
    let text = String::from_utf8(ok(&env, &["du", "pool"])).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let first: Vec<&str> = lines
        .iter()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(
        first,
        [
            "NAME",
            "pool/child",
            "pool/img@s1",
            "pool/img",
            "pool/other",
            "<TOTAL"
        ],
        "{text}"
    );
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        [
            "NAME",
            "PROVISIONED",
            "WRITTEN",
            "STORED",
            "GARBAGE",
            "JOURNAL",
            "CACHE"
        ]
    );
    assert!(lines[5].starts_with("<TOTAL pool>"), "{text}");
    assert!(lines[5].contains("16 MiB"), "{text}");
}

/// `du` takes no lock: it measures an image another process holds open.
#[test]
fn du_measures_an_image_held_open_elsewhere() {
    let env = no_gc_env();
    let input = holey_input(&env);
    ok(&env, &["import", input.to_str().unwrap(), "pool/img"]);
    let before = du_image(&env, "pool/img");
    let mut child = env
        .cmd(&[
            "bench",
            "pool/img",
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
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    assert!(first.contains("OPS/SEC"), "{first}");
    let out = env.cmd(&["du", "pool/img", "--json"]).output();
    child.kill().unwrap();
    child.wait().unwrap();
    let out = out.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let during = &json(&out.stdout)["pools"][0]["images"][0];
    for key in ["provisioned_bytes", "written_bytes", "stored_bytes"] {
        assert_eq!(during[key], before[key], "{key}");
    }
}

#[test]
fn info_shows_journal_object_size_format_and_features() {
    let env = Env::new();
    ok(&env, &["create", "pool/img", "--size", "8M"]);
    let info = json(&ok(&env, &["info", "pool/img", "--json"]));
    let journal = env.path("wlog/pool/img.wlog");
    assert_eq!(info["journal"]["path"], journal.to_str().unwrap());
    assert!(info["journal"]["bytes"].is_null(), "{info}");
    assert_eq!(num(&info, "object_bytes"), M, "backend_obj_bytes 1M");
    assert_eq!(num(&info, "format_version"), 1);
    assert_eq!(num(&info, "features"), 16);
    assert_eq!(
        info["feature_names"],
        serde_json::json!(["high-water-mark"])
    );
    let text = String::from_utf8(ok(&env, &["info", "pool/img"])).unwrap();
    assert!(
        text.contains(&format!(
            "\tjournal {} (none on this host)",
            journal.display()
        )),
        "{text}"
    );
    assert!(
        text.contains("\tobject size 1 MiB (1048576 bytes)"),
        "{text}"
    );
    assert!(text.contains("\tformat version 1\n"), "{text}");
    assert!(text.contains("\tfeatures 0x10 (high-water-mark)"), "{text}");

    // Written (the journal now exists) and snapshotted (version 2).
    ok(
        &env,
        &[
            "bench",
            "pool/img",
            "--io-type",
            "write",
            "--io-total",
            "1M",
            "--io-threads",
            "1",
        ],
    );
    ok(&env, &["snap", "create", "pool/img@s"]);
    let info = json(&ok(&env, &["info", "pool/img", "--json"]));
    let len = std::fs::metadata(&journal).unwrap().len();
    assert_eq!(len, 64 * M, "wlog_bytes 64M");
    assert_eq!(num(&info["journal"], "bytes"), len);
    assert_eq!(num(&info, "format_version"), 2);
    let text = String::from_utf8(ok(&env, &["info", "pool/img"])).unwrap();
    assert!(
        text.contains(&format!(
            "\tjournal {} (64 MiB, 67108864 bytes)",
            journal.display()
        )),
        "{text}"
    );
    assert!(text.contains("\tformat version 2\n"), "{text}");
    assert!(text.contains("high-water-mark"), "{text}");
}
