//! Review 14 of c03ebae..HEAD (4e6b122 missing object -> Corrupt,
//! e781bac nvmf-export serialization, a08245a dir store reader
//! descriptions). Each finding's test failed on the reviewed code
//! (e8998ff) and passes since its fix, but finding 2's, still ignored.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lsvd::backend::{DirStore, ObjectStore};

const SNAP_LOCK: &str = "lsvd:s.img@snap";

fn dir_store(dir: &Path) -> Arc<DirStore> {
    std::fs::create_dir_all(dir.join("store")).unwrap();
    Arc::new(DirStore::open(&dir.join("store")).unwrap())
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("store"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// Finding 2 (cosmetic: a leftover per snapshot ever read). A shared hold
/// that ends cleanly removes its description file (`DirLock::drop`) but
/// never the `.readers.<lock>` directory it created, so every snapshot that
/// was ever read (`export`, `serve-nbd`, `attach` of `IMG@SNAP`) keeps an
/// empty directory in the pool until `snap rm`, beside the lock file. (A fix
/// must not let one reader's rmdir race another's create_dir + write: a
/// reader whose write then fails ENOENT should create the dir again.)
#[test]
#[ignore = "review14 finding 2 (open): removing the directory per hold (mkdir + rmdir) slowed the race test in review_locks from 2 s to 46-55 s; next: one .readers directory per pool"]
fn a_released_shared_hold_leaves_no_readers_directory() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let store = dir_store(dir.path());
    let r1 = store.lock_shared(SNAP_LOCK, "reader-1").unwrap();
    let r2 = store.lock_shared(SNAP_LOCK, "reader-2").unwrap();
    drop((r1, r2));
    let left: Vec<String> = entries(dir.path())
        .into_iter()
        .filter(|n| n.starts_with(".readers."))
        .collect();
    assert!(
        left.is_empty(),
        "left behind after every reader let go: {left:?}"
    );
}

/// Finding 3 (cosmetic, transient). `DirLock::release_and_remove` unlinks
/// the lock file first and removes `.readers.<lock>` after it: a shared
/// taker that arrives in between creates a fresh lock file, holds it, writes
/// its description, and then has it removed by the exclusive holder that
/// already let go of the path (or the remove fails ENOTEMPTY). The reader
/// then holds the lock but is named `host H pid P (shared)`. In the product
/// that reader is one of a snapshot `snap rm` just removed (it lets go), so
/// only `status`/`lock ls` in that window are affected; removing the
/// readers directory before the unlink closes it (nobody can take the
/// inode's flock while it is held exclusively).
#[test]
fn release_and_remove_never_removes_a_live_readers_description() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let store = dir_store(dir.path());
    let stop = Arc::new(AtomicBool::new(false));
    let lost = std::thread::scope(|s| {
        let (st, stop2) = (store.clone(), stop.clone());
        s.spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                if let Ok(x) = st.lock(SNAP_LOCK, "host h pid 1 snap rm") {
                    x.release_and_remove();
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut lost = None;
        while Instant::now() < deadline && lost.is_none() {
            let Ok(r) = store.lock_shared(SNAP_LOCK, "the reader") else {
                continue;
            };
            // Give a release_and_remove that unlinked just before our take
            // time to reach its removal of the readers directory.
            std::thread::sleep(Duration::from_micros(200));
            // Checked on disk, not through lock_holders (finding 4).
            let readers = dir.path().join(format!("store/.readers.{SNAP_LOCK}"));
            let mine: Vec<String> = std::fs::read_dir(&readers)
                .map(|d| {
                    d.map(|e| e.unwrap().file_name().into_string().unwrap())
                        .collect()
                })
                .unwrap_or_default();
            if mine.is_empty() {
                lost = Some(mine);
            }
            drop(r);
        }
        stop.store(true, Ordering::Relaxed);
        lost
    });
    assert!(
        lost.is_none(),
        "a reader holding the lock lost its description: .readers. holds {lost:?}"
    );
}

/// Finding 4 (pre-existing since 1cfd167, found here; wrong `status` /
/// `lock ls` / `snap rm` refusal text). `flock_holders` reads `/proc/locks`
/// with `read_to_string`, i.e. several read(2) calls (a 32-byte probe, then
/// growing ones); the kernel's seq_file takes the lock list's lock per
/// call only, so while other flocks on the host come and go an entry can
/// be listed twice or skipped. A lock held by two readers is then reported
/// with a third holder (`host H pid P (shared)`), or one missing; a single
/// shared holder skipped makes `lock_holders` fall back to its shared
/// probe, which succeeds, so `status` says "not open" while it is. Fix: one
/// read(2) into a buffer large enough (grow and re-read until a read
/// returns less than the buffer), or read twice until equal.
#[test]
fn lock_holders_is_exact_while_other_locks_churn() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let store = dir_store(dir.path());
    let other = tempfile::tempdir_in("/tmp").unwrap();
    let churn = dir_store(other.path());
    let r1 = store.lock_shared(SNAP_LOCK, "reader-1").unwrap();
    let r2 = store.lock_shared(SNAP_LOCK, "reader-2").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let bad = std::thread::scope(|s| {
        for t in 0..2 {
            let (c, stop) = (churn.clone(), stop.clone());
            s.spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let held: Vec<_> = (0..8)
                        .filter_map(|k| c.lock(&format!("l{t}.{}", (i + k) % 32), "x").ok())
                        .collect();
                    drop(held);
                    i += 1;
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut bad = None;
        while Instant::now() < deadline && bad.is_none() {
            let h = store.lock_holders(SNAP_LOCK).unwrap();
            if h != ["reader-1", "reader-2"] {
                bad = Some(h);
            }
        }
        stop.store(true, Ordering::Relaxed);
        bad
    });
    drop((r1, r2));
    assert!(
        bad.is_none(),
        "two readers hold the lock; lock_holders said {bad:?}"
    );
}
