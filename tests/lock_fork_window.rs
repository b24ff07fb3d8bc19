//! A flock the dir store lets go of is free at once, even while children
//! forked by other threads hold copies of its descriptor (until their
//! exec). Found by the review of 9bedd81 (flocks released with LOCK_UN, not
//! at the close): the retry of `DirStore::open_locked`, when the lock file
//! it locked was removed under it (the race with `rm`/`snap rm`'s
//! `release_and_remove`), still let the stale inode go by a plain close. A
//! child forked meanwhile kept that inode locked, and a second taker that
//! had opened the same inode before the unlink was told `Locked` (instead
//! of moving on to the path's new file) until the child's exec. Every
//! dir-store flock is now held through one type that unlocks on drop.
//!
//! This file holds one test only: it counts the flocks of this process in
//! /proc/locks, which other tests of the same binary would disturb.

use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lsvd::backend::{DirStore, ObjectStore};

/// The FLOCK entries of /proc/locks held by process `pid` on device `dev`:
/// (mode, inode).
fn flocks_of(pid: u32, dev: u64) -> Vec<(String, u64)> {
    let text = std::fs::read_to_string("/proc/locks").unwrap();
    let want = format!("{:02x}:{:02x}:", libc::major(dev), libc::minor(dev));
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // "N: FLOCK ADVISORY WRITE PID MAJ:MIN:INO 0 EOF" (waiters: "->").
        if f.len() < 6 || f[1] != "FLOCK" || f[4] != pid.to_string() {
            continue;
        }
        if let Some(ino) = f[5].strip_prefix(&want) {
            out.push((f[3].to_owned(), ino.parse().unwrap_or(0)));
        }
    }
    out
}

/// Lock takers racing a remover that unlinks the lock file while it holds
/// it (`release_and_remove`, as `rm` and `snap rm` do), while another
/// thread keeps forking children that stay between their fork and their
/// exec (here: an `_exit`) for `HOLD`. Once every lock is let go, no flock
/// of this process may remain on the store's files (the commit's claim:
/// "every flock the dir store [...] takes is free the moment its holder
/// lets go"). A taker that found its inode removed under it dropped that
/// inode's flock by closing it, so a child forked meanwhile still holds it.
#[test]
fn a_stale_lock_inode_a_taker_let_go_is_not_held_by_a_forked_child() {
    const HOLD: Duration = Duration::from_secs(3);
    const RACE: Duration = Duration::from_secs(4);
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let store = Arc::new(DirStore::open(dir.path()).unwrap());
    let dev = std::fs::metadata(dir.path()).unwrap().dev();
    let me = std::process::id();
    let stop = Arc::new(AtomicBool::new(false));
    let stale_seen = Arc::new(AtomicU64::new(0));

    // The forker: a child every 5 ms, each holding copies of every
    // descriptor of this process for HOLD (async-signal-safe calls only).
    let pids = Arc::new(Mutex::new(Vec::new()));
    let forker = {
        let (stop, pids) = (stop.clone(), pids.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                // SAFETY: the child calls only nanosleep and _exit.
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    let ts = libc::timespec {
                        tv_sec: HOLD.as_secs() as libc::time_t,
                        tv_nsec: 0,
                    };
                    // SAFETY: in the forked child, async-signal-safe calls
                    // only; `ts` is a local that outlives the call.
                    unsafe {
                        libc::nanosleep(&ts, std::ptr::null_mut());
                        libc::_exit(0);
                    }
                }
                assert!(pid > 0, "fork failed");
                pids.lock().unwrap().push(pid);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };

    let deadline = Instant::now() + RACE;
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let (s, stale_seen) = (store.clone(), stale_seen.clone());
            std::thread::spawn(move || {
                while Instant::now() < deadline {
                    match s.lock("img", "t") {
                        Ok(l) if t == 0 => l.release_and_remove(),
                        Ok(l) => drop(l),
                        Err(e) if e.kind() == lsvd::ErrorKind::Locked => {
                            if e.to_string().contains("<unknown>") {
                                // Locked by nobody named: an inode whose
                                // holder let it go (or one between its
                                // flock and its owner write).
                                stale_seen.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    // Every lock is let go now; children forked in the last HOLD are
    // still between their fork and their exec.
    let left = flocks_of(me, dev);
    let current = std::fs::metadata(dir.path().join(".lock.img"))
        .map(|m| m.ino())
        .ok();
    stop.store(true, Ordering::SeqCst);
    forker.join().unwrap();
    for pid in pids.lock().unwrap().drain(..) {
        // SAFETY: reaping a child of ours.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    }
    assert!(
        left.is_empty(),
        "flocks of this process still held after every holder let go \
         (by forked children's copies): {left:?}; the lock file's inode \
         now: {current:?}; takers told 'locked by <unknown>': {}",
        stale_seen.load(Ordering::Relaxed)
    );
}
