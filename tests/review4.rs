//! Review 4 of 9b3113a (journal creation checks), da64752 (`import`
//! signals and stdin), d3c6902/84926ca (the pool marker) and ef4dd71
//! (`no_gc_dead_rows`). Each test here fails at the reviewed commit.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lsvd::backend::{MemStore, ObjectStore};
use lsvd::config::Config;
use lsvd::volume::image::{create_image, remove_image};
use lsvd::volume::{Volume, VolumeOptions};

mod common;

const SIZE: u64 = 4 << 20;

fn config() -> Config {
    Config {
        no_gc: true,
        no_rcache: true,
        // Nothing is sealed and destaged before the crash below: the
        // written data is only in the journal.
        flush_msec: 600_000,
        ..common::small_config()
    }
}

fn open(store: &Arc<MemStore>, config: Config, journal: &Path) -> lsvd::Result<Volume> {
    let store: Arc<dyn ObjectStore> = store.clone();
    Volume::open(VolumeOptions {
        config,
        store,
        image: "img".into(),
        journal_path: journal.to_path_buf(),
        io_log: None,
    })
}

/// Write `data` at 0, wait for the journal, and stop like a crash: the
/// write is acknowledged and only in the journal.
fn write_and_crash(store: &Arc<MemStore>, config: Config, journal: &Path, data: &[u8]) {
    let v = open(store, config, journal).unwrap();
    v.write(0, data).unwrap();
    v.flush().unwrap();
    v.crash();
}

fn read_back(v: &Volume, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    v.read(0, &mut buf).unwrap();
    buf
}

/// Finding R4-1 (medium). 9b3113a checks `wlog_dir` for tmpfs before it
/// looks whether the journal already exists, so an existing journal that
/// holds acknowledged writes (made by an earlier build, or with
/// `allow_tmpfs`) is refused at the next open: the image cannot be opened
/// to replay them, and the message tells the operator the journal "must be
/// on a persistent file system (set allow_tmpfs only for tests)" — moving
/// `wlog_dir` or deleting the file loses those writes. The check should
/// apply to a journal being created (an existing one: warn, and replay).
#[test]
fn an_existing_journal_on_tmpfs_is_replayed_not_refused() {
    let Ok(shm) = tempfile::tempdir_in("/dev/shm") else {
        eprintln!("no /dev/shm here: nothing to check");
        return;
    };
    let journal = shm.path().join("img.wlog");
    let mem = Arc::new(MemStore::new());
    create_image(mem.as_ref(), "img", SIZE).unwrap();
    let data = common::pattern(1, 64 << 10);
    let allowed = Config {
        allow_tmpfs: true,
        ..config()
    };
    // Before Linux 6.6 tmpfs has no O_DIRECT: nothing to check.
    match open(&mem, allowed.clone(), &journal) {
        Ok(v) => v.crash(),
        Err(e) => {
            eprintln!("no journal on tmpfs here ({e}): nothing to check");
            return;
        }
    }
    write_and_crash(&mem, allowed, &journal, &data);
    let v = open(&mem, config(), &journal).unwrap_or_else(|e| {
        panic!("the existing journal with acknowledged writes was refused: {e}")
    });
    assert!(read_back(&v, data.len()) == data, "replayed data differs");
    v.close().unwrap();
}

/// Finding R4-1, second case (low). The tmpfs check looks at the directory
/// that holds the journal's *name*, not at the journal: `wlog_dir` on
/// tmpfs (e.g. under /run) whose `<image>.wlog` is a symlink to a journal
/// on a persistent file system is refused, although nothing in it is
/// volatile (a symlink to a block device passes, as the README suggests).
#[test]
fn a_journal_symlinked_from_tmpfs_to_a_persistent_file_opens() {
    let Ok(shm) = tempfile::tempdir_in("/dev/shm") else {
        eprintln!("no /dev/shm here: nothing to check");
        return;
    };
    let disk = tempfile::tempdir_in("/tmp").unwrap();
    let real = disk.path().join("img.wlog");
    let mem = Arc::new(MemStore::new());
    create_image(mem.as_ref(), "img", SIZE).unwrap();
    let data = common::pattern(2, 64 << 10);
    write_and_crash(&mem, config(), &real, &data);
    let link = shm.path().join("img.wlog");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let v = open(&mem, config(), &link).unwrap_or_else(|e| {
        panic!("a journal on ext4 reached by a symlink in a tmpfs directory was refused: {e}")
    });
    assert!(read_back(&v, data.len()) == data, "replayed data differs");
    v.close().unwrap();
}

/// Finding R4-2 (medium; the journal removal predates 9b3113a, which
/// extends it to `.creating`). The journal path is
/// `<wlog_dir>/<pool>/<image>.wlog`, which does not name the store: two
/// stores (two `store_dir`s, or two RADOS namespaces or clusters, whose
/// pools have the same name) that share `wlog_dir` give same-named images
/// the same journal path. `Journal::open` guards against that (it refuses
/// a journal whose superblock names another image), but `rm` (and
/// `import`'s cleanup of a failed import, whose open fails on exactly that
/// refusal) deletes the file without looking whose it is: the other
/// image's acknowledged, not yet destaged writes are lost.
#[test]
fn rm_does_not_delete_another_images_journal() {
    let wlog = tempfile::tempdir_in("/tmp").unwrap();
    let journal = wlog.path().join("img.wlog");
    // Store B: image `img`, open, written, crashed: its writes are only in
    // the journal.
    let b = Arc::new(MemStore::new());
    create_image(b.as_ref(), "img", SIZE).unwrap();
    let data = common::pattern(3, 64 << 10);
    write_and_crash(&b, config(), &journal, &data);
    // Store A: another image of the same name, removed.
    let a = Arc::new(MemStore::new());
    create_image(a.as_ref(), "img", SIZE).unwrap();
    remove_image(a.as_ref(), "img", Some(&journal)).unwrap();
    let v = open(&b, config(), &journal).unwrap();
    let got = read_back(&v, data.len());
    v.close().unwrap();
    assert!(
        got == data,
        "rm of A's `img` deleted the journal of B's `img`: its acknowledged writes are gone"
    );
}

/// Finding R4-3 (medium). `import -` blocks SIGINT/SIGTERM/SIGHUP and
/// checks the stop flag between chunks, but reads stdin with a blocking
/// `read`: a signal while the producer is idle (a stalled `ssh ... |`, a
/// `kill -TERM` or systemd stop of the import alone, Ctrl-C in a shell
/// whose producer ignores SIGINT) is not acted on until more input or EOF
/// comes — the import hangs; a second signal then exits at once and leaves
/// the partly written image behind.
#[test]
fn a_signal_stops_an_import_waiting_on_stdin() {
    use std::io::Write;
    let env = common::CliEnv::new();
    let mut child = env
        .cmd(&["import", "-", "pool/h", "--size", "64M"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&vec![0x5a; 1 << 20]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !env
        .cmd(&["info", "pool/h"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
    {
        assert!(Instant::now() < deadline, "no image appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: kill(2) of our child, not reaped yet.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    // The producer stays quiet and keeps stdin open.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let Some(status) = status else {
        // Clean up our child (its id, not a pattern).
        let _ = child.kill();
        let _ = child.wait();
        drop(stdin);
        panic!("import did not act on SIGTERM within 20 s while stdin was idle");
    };
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(130), "{stderr}");
    let ls = env.cmd(&["ls", "pool"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&ls.stdout), "", "{stderr}");
}

/// Finding R4-4 (high; predates 9b3113a, which did not catch it). The
/// README suggests making `<wlog_dir>/<pool>/<image>.wlog` a symlink to a
/// block device. If the device node is missing when the image is opened
/// (a `/dev/disk/by-*` link udev has not made yet at boot), the symlink
/// dangles: `is_block_device` and `path.exists()` are false, so
/// `open_or_create` creates a new journal file in `wlog_dir` and renames it
/// over the symlink. The open succeeds with an empty journal and records
/// its new generation in the superblock: the acknowledged writes in the
/// device's journal are never replayed, and the symlink is gone. A
/// dangling symlink must be refused, naming its target.
#[test]
fn a_dangling_journal_symlink_is_refused_not_replaced() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    // Stands for the journal partition.
    let device = dir.path().join("dev-journal");
    let link = dir.path().join("img.wlog");
    std::os::unix::fs::symlink(&device, &link).unwrap();
    let mem = Arc::new(MemStore::new());
    create_image(mem.as_ref(), "img", SIZE).unwrap();
    let data = common::pattern(4, 64 << 10);
    // The first open, through the link, creates the journal... at the
    // link's name, not at the target (itself the same bug): so write
    // through the target directly, as a partition would be.
    write_and_crash(&mem, config(), &device, &data);
    // The device is absent at the next open.
    let away = dir.path().join("dev-journal.absent");
    std::fs::rename(&device, &away).unwrap();
    let r = open(&mem, config(), &link);
    let still_link = std::fs::symlink_metadata(&link)
        .map(|m| m.file_type().is_symlink())
        .unwrap_or(false);
    let opened = r.is_ok();
    if let Ok(v) = r {
        v.crash();
    }
    // The device comes back: are the acknowledged writes still there?
    std::fs::rename(&away, &device).unwrap();
    let v = open(&mem, config(), &device).unwrap();
    let got = read_back(&v, data.len());
    v.close().unwrap();
    assert!(
        !opened && still_link && got == data,
        "open with the journal's symlink dangling: opened {opened}, symlink kept {still_link}, \
         acknowledged writes back once the device returns {}",
        got == data
    );
}
