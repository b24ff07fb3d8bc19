//! [`DirStore`]: the embedded default object store, one directory per pool.
//!
//! Each object is a regular file named exactly as the object, directly in the
//! pool directory. Names starting with `.` are reserved for the store itself:
//!
//! * `.tmp.<object>.<pid>.<counter>`: an object being written by [`put`]; it
//!   is renamed over `<object>` once its data is durable. A crash can leave
//!   one behind; [`lock`] removes the leftovers of the objects it fences.
//! * `.lock.<name>`: the lock file of lock `<name>`, holding the owner string
//!   of the current holder (emptied at release). Only the removal of its
//!   image deletes it, while holding it; see [`lock`].
//!
//! [`put`]: ObjectStore::put
//! [`lock`]: ObjectStore::lock

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{check_object_name, ObjectStore, StoreLock};
use crate::error::{Error, ErrorKind, Result};
use crate::powercut::IoLog;

/// Prefix of temp files written by `put`.
const TMP_PREFIX: &str = ".tmp.";
/// Prefix of lock files.
const LOCK_PREFIX: &str = ".lock.";
/// The directory of a lock's shared holders' descriptions:
/// `.readers.<lock name>/<pid>.<n>`, one file per shared hold, written by
/// the holder after it took the flock and removed before it lets go (the
/// lock file itself names only the exclusive holder). Object names never
/// start with '.', so this never meets an object or another lock.
const READERS_PREFIX: &str = ".readers.";
/// Numbers this process's shared holds (the `<n>` above).
static READER_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Counter making temp file names unique within this process (shared by all
/// `DirStore`s, so two stores on one directory never collide).
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Temp file names of this process whose `put` is still in flight, so that
/// stale-temp cleanup in `lock` never deletes a live write of this process.
static TMP_IN_FLIGHT: Mutex<Option<HashSet<String>>> = Mutex::new(None);

fn in_flight() -> MutexGuard<'static, Option<HashSet<String>>> {
    TMP_IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner())
}

/// Registers a temp file name as in flight; unregisters on drop.
struct InFlight(String);

impl InFlight {
    fn new(name: String) -> InFlight {
        in_flight()
            .get_or_insert_with(HashSet::new)
            .insert(name.clone());
        InFlight(name)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(set) = in_flight().as_mut() {
            set.remove(&self.0);
        }
    }
}

/// An object store kept as files in one local directory.
pub struct DirStore {
    dir: PathBuf,
    /// The directory itself, opened once, for fsyncing renames and unlinks.
    dir_file: File,
    /// Test hook: the power-cut recorder (`crate::powercut`), which sees
    /// every file created, written and synced, every rename and unlink and
    /// every directory sync. `None` in production.
    io_log: Option<Arc<IoLog>>,
}

impl DirStore {
    /// Open the store in the existing directory `dir`.
    ///
    /// Fails with kind `NotFound` if `dir` does not exist and `InvalidInput`
    /// if it is not a directory.
    pub fn open(dir: &Path) -> Result<DirStore> {
        let meta = fs::metadata(dir)
            .map_err(|e| Error::io(format!("open store dir:{}", dir.display()), e))?;
        if !meta.is_dir() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("open store dir:{}: not a directory", dir.display()),
            ));
        }
        let dir_file = File::open(dir)
            .map_err(|e| Error::io(format!("open store dir:{}", dir.display()), e))?;
        Ok(DirStore {
            dir: dir.to_path_buf(),
            dir_file,
            io_log: None,
        })
    }

    /// Record every file and directory operation in `log` (the power-cut
    /// model of the tests; see `crate::powercut`).
    pub fn with_io_log(mut self, log: Arc<IoLog>) -> DirStore {
        self.io_log = Some(log);
        self
    }

    /// Create `dir` (and its parents) if needed, then [`open`](Self::open) it.
    pub fn create(dir: &Path) -> Result<DirStore> {
        fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("create store dir:{}", dir.display()), e))?;
        DirStore::open(dir)
    }

    /// The directory holding the objects.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Context for an error of operation `op` on object `name`.
    fn ctx(&self, op: &str, name: &str) -> String {
        format!("{op} {name} in dir:{}", self.dir.display())
    }

    fn check_name(&self, op: &str, name: &str) -> Result<()> {
        check_object_name(name).map_err(|why| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("{}: {why}", self.ctx(op, name)),
            )
        })
    }

    /// Make the directory's entries (renames, unlinks) durable.
    fn sync_dir(&self) -> io::Result<()> {
        let id = self.io_log.as_ref().map(|l| l.dir_sync_start());
        self.dir_file.sync_all()?;
        if let (Some(l), Some(id)) = (&self.io_log, id) {
            l.dir_sync_done(id);
        }
        Ok(())
    }

    /// Unlink `path` (named `fname` in the directory), telling the
    /// recorder first.
    fn unlink(&self, fname: &str, path: &Path) -> io::Result<()> {
        if let Some(l) = &self.io_log {
            l.unlink(fname);
        }
        fs::remove_file(path)
    }

    /// Write `data` to the temp file `tmp_path` and rename it to `path`.
    ///
    /// When every part is 512-byte aligned in memory and length (data
    /// objects built from aligned batch buffers), the file is written with
    /// O_DIRECT: no copy into the page cache, which costs more CPU than the
    /// rest of the write path. Other puts, and file systems that refuse
    /// O_DIRECT, use ordinary buffered writes.
    fn put_via_temp(
        &self,
        (tmp_name, tmp_path): (&str, &Path),
        (name, path): (&str, &Path),
        parts: &[&[u8]],
    ) -> io::Result<()> {
        let aligned = parts
            .iter()
            .all(|p| (p.as_ptr() as usize).is_multiple_of(512) && p.len().is_multiple_of(512));
        let open = |direct: bool| {
            let mut o = OpenOptions::new();
            o.write(true).create_new(true);
            if direct {
                std::os::unix::fs::OpenOptionsExt::custom_flags(&mut o, libc::O_DIRECT);
            }
            o.open(tmp_path)
        };
        let mut f = match open(aligned) {
            Err(e) if aligned && e.raw_os_error() == Some(libc::EINVAL) => {
                let _ = fs::remove_file(tmp_path);
                open(false)?
            }
            r => r?,
        };
        let log = self.io_log.as_deref();
        let ino = log.map(|l| l.file_created(tmp_name, tmp_path));
        // In slices of 1 MiB: one huge O_DIRECT write fills the device queue
        // and stalls latency-sensitive I/O (the journal) sharing the disk.
        let mut off = 0u64;
        for data in parts {
            for piece in data.chunks(1 << 20) {
                f.write_all(piece)?;
                if let (Some(l), Some(ino)) = (log, ino) {
                    l.file_write(ino, off, piece.len() as u64);
                }
                off += piece.len() as u64;
            }
        }
        // Crash ordering: the file's data must be durable before the rename
        // makes it visible under the object's name; otherwise a crash could
        // leave `<name>` pointing at a short or zero-filled file.
        let sync = log.zip(ino).map(|(l, ino)| l.file_sync_start(ino));
        f.sync_all()?;
        if let (Some(l), Some(id)) = (log, sync) {
            l.file_sync_done(id);
        }
        drop(f);
        // rename(2) atomically replaces any old object: a reader opens either
        // the old file or the new one, never a mix.
        if let Some(l) = log {
            l.rename(tmp_name, name);
        }
        fs::rename(tmp_path, path)?;
        // Crash ordering: the rename must be durable before we return Ok, as
        // the caller may then drop its own copy (e.g. trim its journal).
        self.sync_dir()
    }

    /// Remove leftover temp files of objects whose name starts with `prefix`
    /// (crash leftovers). Only files named `.tmp.<object>.<pid>.<counter>`
    /// are touched, and only when their writer is gone: either a dead process,
    /// or this process with no `put` of that file in flight. A temp file of a
    /// live other process is kept (it may be a write in progress).
    fn remove_stale_temps(&self, prefix: &str) -> io::Result<usize> {
        let me = std::process::id();
        let mut removed = 0;
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let Some(fname) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Some((object, pid)) = parse_temp_name(&fname) else {
                continue;
            };
            if !object.starts_with(prefix) || !entry.file_type()?.is_file() {
                continue;
            }
            let stale = if pid == me {
                !in_flight().as_ref().is_some_and(|set| set.contains(&fname))
            } else {
                !process_alive(pid)
            };
            if !stale {
                continue;
            }
            match self.unlink(&fname, &entry.path()) {
                Ok(()) => {
                    removed += 1;
                    tracing::info!(
                        store = %self.describe(),
                        file = %fname,
                        "removed stale temp file left by an interrupted put"
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        if removed > 0 {
            self.sync_dir()?;
        }
        Ok(removed)
    }
}

/// Split `.tmp.<object>.<pid>.<counter>` into the object name and the pid.
fn parse_temp_name(fname: &str) -> Option<(&str, u32)> {
    let rest = fname.strip_prefix(TMP_PREFIX)?;
    let (rest, counter) = rest.rsplit_once('.')?;
    let (object, pid) = rest.rsplit_once('.')?;
    counter.parse::<u64>().ok()?;
    let pid = pid.parse::<u32>().ok()?;
    check_object_name(object).ok()?;
    Some((object, pid))
}

/// The flock holders of inode `ino` of device `dev` on this host, from
/// `/proc/locks` (`N: FLOCK ADVISORY READ|WRITE PID MAJ:MIN:INO ...`, the
/// device numbers in hex; waiters' lines have `->` and are skipped): pid
/// and whether the hold is exclusive, one per open file description that
/// holds it. `None` if `/proc/locks` cannot be read.
fn flock_holders(dev: u64, ino: u64) -> Option<Vec<(u32, bool)>> {
    // /proc/locks is not a snapshot: while other flocks on the host come
    // and go, one listing can name an entry twice or skip one (review14
    // finding 4: measured on Linux 6.18 with two threads taking and
    // dropping flocks, even within one read(2) call; more often with small
    // reads, see `read_proc_locks`). So the listings (three, for a holder
    // one of them skipped) only say which processes to ask; each one's own
    // /proc/PID/fdinfo, listed under the inode's lock, says how it holds
    // the lock exactly. Where that cannot be read (another user's process
    // without privilege), the most any listing said.
    let reads = (0..3)
        .map(|_| flock_holders_once(dev, ino))
        .collect::<Option<Vec<_>>>()?;
    let mut pids: Vec<u32> = reads.iter().flatten().map(|(p, _)| *p).collect();
    pids.sort_unstable();
    pids.dedup();
    let mut held = Vec::new();
    for pid in pids {
        match holds_of_pid(pid, dev, ino) {
            Some(modes) => held.extend(modes.into_iter().map(|x| (pid, x))),
            None => {
                for mode in [false, true] {
                    let most = reads
                        .iter()
                        .map(|r| r.iter().filter(|h| **h == (pid, mode)).count())
                        .max()
                        .unwrap_or(0);
                    held.extend(std::iter::repeat_n((pid, mode), most));
                }
            }
        }
    }
    held.sort_unstable();
    Some(held)
}

/// How process `pid` holds flocks on inode `ino` of device `dev`: one
/// entry (exclusive or not) per open file of it that holds one, from
/// `/proc/PID/fdinfo/FD` (each lists the locks of its file, read under
/// the inode's own lock: exact). `None` if its descriptors cannot be read.
fn holds_of_pid(pid: u32, dev: u64, ino: u64) -> Option<Vec<bool>> {
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    let (major, minor) = dev_numbers(dev);
    let id = format!("{major:02x}:{minor:02x}:{ino}");
    let mut modes = Vec::new();
    for fd in fds {
        let Ok(fd) = fd else { continue };
        // The file the descriptor names (followed: the lock file itself).
        let Ok(meta) = fs::metadata(fd.path()) else {
            continue;
        };
        if meta.dev() != dev || meta.ino() != ino {
            continue;
        }
        let Ok(info) = fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        )) else {
            continue;
        };
        for line in info.lines() {
            let Some(lock) = line.strip_prefix("lock:") else {
                continue;
            };
            let f: Vec<&str> = lock.split_whitespace().collect();
            // `N: FLOCK ADVISORY READ|WRITE PID MAJ:MIN:INO ...`
            if f.len() >= 6 && f[1] == "FLOCK" && !f.contains(&"->") && same_id(f[5], &id) {
                modes.push(f[3] == "WRITE");
            }
        }
    }
    Some(modes)
}

/// glibc's major()/minor() of a dev_t.
fn dev_numbers(dev: u64) -> (u64, u64) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major, minor)
}

/// Whether `MAJ:MIN:INO` as the kernel prints it (hex device numbers)
/// names the same inode as `want` (from [`holds_of_pid`]).
fn same_id(got: &str, want: &str) -> bool {
    let parse = |s: &str| -> Option<(u64, u64, u64)> {
        let mut it = s.split(':');
        Some((
            u64::from_str_radix(it.next()?, 16).ok()?,
            u64::from_str_radix(it.next()?, 16).ok()?,
            it.next()?.parse().ok()?,
        ))
    };
    matches!((parse(got), parse(want)), (Some(a), Some(b)) if a == b)
}

/// `/proc/locks` in as few read(2) calls as the kernel allows: each call
/// is one consistent listing of up to a page (the seq_file restarts its
/// walk of the lock lists at every call, so `read_to_string`'s 32-byte
/// first read and small growing ones listed the same lock up to four times
/// in one text under churn: measured here, 18% of reads wrong; with one
/// large buffer, none in 30,000 of a short list).
fn read_proc_locks() -> Option<String> {
    let mut f = File::open("/proc/locks").ok()?;
    let mut buf = vec![0u8; 1 << 18];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        match f.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    buf.truncate(len);
    String::from_utf8(buf).ok()
}

/// One read of `/proc/locks` for [`flock_holders`].
fn flock_holders_once(dev: u64, ino: u64) -> Option<Vec<(u32, bool)>> {
    let text = read_proc_locks()?;
    let (major, minor) = dev_numbers(dev);
    let mut held = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || f[1] != "FLOCK" {
            continue;
        }
        let mut id = f[5].split(':');
        let (Some(ma), Some(mi), Some(i)) = (id.next(), id.next(), id.next()) else {
            continue;
        };
        let ok = u64::from_str_radix(ma, 16) == Ok(major)
            && u64::from_str_radix(mi, 16) == Ok(minor)
            && i.parse::<u64>() == Ok(ino);
        if let (true, Ok(pid)) = (ok, f[4].parse::<u32>()) {
            held.push((pid, f[3] == "WRITE"));
        }
    }
    held.sort_unstable();
    Some(held)
}

/// Whether process `pid` exists (on this host). Errs on the side of "alive".
fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 sends nothing; it only checks that the pid
    // exists. It takes no pointers.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

impl DirStore {
    /// Open lock `name`'s file and flock it (shared or exclusive, without
    /// waiting): the file, whether it existed before, and its path.
    ///
    /// A fresh open gives a fresh open file description, so a second lock
    /// taken in this same process conflicts too (flock is per description).
    /// The lock file is deleted only by the removal of its image (or
    /// snapshot), by the exclusive holder while it holds the flock
    /// (`release_and_remove`). A taker that opened the file before that
    /// unlink and locks it afterwards holds a lock on an unlinked inode,
    /// which would let two takers lock two different inodes under one name:
    /// so a taker checks, holding the flock, that the path still names the
    /// inode it locked, and otherwise opens the path again.
    fn open_locked(&self, name: &str, shared: bool) -> Result<(Flocked, bool, PathBuf)> {
        self.check_name("lock", name)?;
        let ctx = || self.ctx("lock", name);
        let path = self.dir.join(format!("{LOCK_PREFIX}{name}"));
        let mut attempts = 0;
        loop {
            // A shared holder writes nothing (the file names the exclusive
            // holder), so it opens an existing file read-only: flock needs
            // no write access, and a reader on a read-only file system or
            // without write permission still takes the lock. Creating the
            // file needs write access to the directory; without it the
            // error is `PermissionDenied` (see `Volume::open_snapshot`).
            let open = |create| {
                OpenOptions::new()
                    .read(true)
                    .write(!shared || create)
                    .create(create)
                    .truncate(false)
                    .open(&path)
            };
            let (file, existed) = match open(false) {
                Ok(f) => (f, true),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    (open(true).map_err(|e| Error::io(ctx(), e))?, false)
                }
                Err(e) => return Err(Error::io(ctx(), e)),
            };
            let mode = if shared { libc::LOCK_SH } else { libc::LOCK_EX };
            // SAFETY: flock takes a file descriptor owned by `file`, which
            // is open for the whole call; no memory is passed.
            let rc = unsafe { libc::flock(file.as_raw_fd(), mode | libc::LOCK_NB) };
            if rc != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    let mut holder = String::new();
                    // The exclusive holder writes its name right after
                    // locking; an empty file means we looked in between, or
                    // that the holders are shared ones, which write nothing.
                    let _ = (&file).read_to_string(&mut holder);
                    let holder = holder.trim();
                    let holder = if holder.is_empty() {
                        "<unknown> (or held shared by readers)"
                    } else {
                        holder
                    };
                    return Err(Error::new(
                        ErrorKind::Locked,
                        format!("{}: {name} is locked by {holder}", ctx()),
                    ));
                }
                return Err(Error::io(ctx(), e));
            }
            // Let go (LOCK_UN) wherever it is dropped from here: on an
            // error, on the retry below, or by the `DirLock` it becomes.
            let file = Flocked(file);
            let mine = file.metadata().map_err(|e| Error::io(ctx(), e))?;
            match fs::metadata(&path) {
                Ok(now) if now.ino() == mine.ino() && now.dev() == mine.dev() => {
                    return Ok((file, existed, path))
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(ctx(), e)),
            }
            // Removed (and perhaps re-created) under us: drop the stale
            // inode's lock (`file`, let go at the end of this iteration)
            // and take the path's.
            attempts += 1;
            if attempts >= 100 {
                return Err(Error::new(
                    ErrorKind::Locked,
                    format!("{}: the lock file keeps being removed", ctx()),
                ));
            }
        }
    }
}

impl ObjectStore for DirStore {
    fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        self.put_parts(name, &[data])
    }

    fn put_parts(&self, name: &str, parts: &[&[u8]]) -> Result<()> {
        self.check_name("put", name)?;
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp_name = format!("{TMP_PREFIX}{name}.{}.{n}", std::process::id());
        let tmp_path = self.dir.join(&tmp_name);
        let _in_flight = InFlight::new(tmp_name.clone());
        self.put_via_temp((&tmp_name, &tmp_path), (name, &self.dir.join(name)), parts)
            .map_err(|e| {
                // Best effort: after a successful rename this finds nothing.
                let _ = fs::remove_file(&tmp_path);
                Error::io(self.ctx("put", name), e)
            })
    }

    fn get(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.check_name("get", name)?;
        let ctx = || self.ctx("get", name);
        let f = File::open(self.dir.join(name)).map_err(|e| Error::io(ctx(), e))?;
        let size = f.metadata().map_err(|e| Error::io(ctx(), e))?.len();
        // Objects are replaced by rename, never modified in place, so the
        // size of the file we opened does not change under us.
        let want = size.saturating_sub(offset).min(len as u64) as usize;
        // pread straight into the vector's spare capacity, so each byte is
        // written once (a zeroed vector showed as memset in cold-read
        // profiles), in one call for the whole range unless it comes back
        // short.
        let mut buf: Vec<u8> = Vec::with_capacity(want);
        while buf.len() < want {
            let done = buf.len();
            // SAFETY: the destination is the vector's spare capacity,
            // `want - done` writable bytes; pread writes at most that many,
            // and only the `n` bytes it reports are then made part of the
            // vector.
            let n = unsafe {
                libc::pread(
                    f.as_raw_fd(),
                    buf.as_mut_ptr().add(done).cast(),
                    want - done,
                    (offset + done as u64) as libc::off_t,
                )
            };
            match n {
                0 => break,
                n if n > 0 => unsafe {
                    // SAFETY: pread initialised these `n` bytes.
                    buf.set_len(done + n as usize)
                },
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(Error::io(ctx(), e));
                    }
                }
            }
        }
        Ok(buf)
    }

    fn stat(&self, name: &str) -> Result<Option<u64>> {
        self.check_name("stat", name)?;
        match fs::metadata(self.dir.join(name)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(self.ctx("stat", name), e)),
        }
    }

    fn delete(&self, name: &str) -> Result<()> {
        self.check_name("delete", name)?;
        match self.unlink(name, &self.dir.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(self.ctx("delete", name), e)),
        }
        // Crash ordering: the unlink is durable before we report success.
        self.sync_dir()
            .map_err(|e| Error::io(self.ctx("delete", name), e))
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let ctx = || format!("list prefix '{prefix}' in dir:{}", self.dir.display());
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| Error::io(ctx(), e))? {
            let entry = entry.map_err(|e| Error::io(ctx(), e))?;
            // Non-UTF-8 names cannot be objects (we only create UTF-8 ones).
            let Ok(fname) = entry.file_name().into_string() else {
                continue;
            };
            if fname.starts_with('.') || !fname.starts_with(prefix) {
                continue;
            }
            if entry.file_type().map_err(|e| Error::io(ctx(), e))?.is_dir() {
                continue;
            }
            names.push(fname);
        }
        names.sort_unstable();
        Ok(names)
    }

    fn lock(&self, name: &str, owner: &str) -> Result<Box<dyn StoreLock>> {
        let ctx = || self.ctx("lock", name);
        let (mut file, existed, path) = self.open_locked(name, false)?;
        // The previous holder released the lock (its drop empties the file)
        // only after its last put returned: it left no temp file, and the
        // holder before it had its own leftovers removed by the lock after
        // it. Only a file that is new, or still names a holder (one that
        // died holding it), calls for the scan, which reads the whole pool
        // directory: an open of a cleanly closed image never lists the
        // pool. (A power cut that loses this file's last write can leave a
        // temp file unremoved: space, never data; the next lock after a
        // crash removes it.)
        let mut previous = Vec::new();
        let released = existed
            && file
                .read_to_end(&mut previous)
                .is_ok_and(|_| previous.is_empty());
        file.set_len(0).map_err(|e| Error::io(ctx(), e))?;
        file.write_all_at(owner.as_bytes(), 0)
            .map_err(|e| Error::io(ctx(), e))?;
        // Held exclusively, so nobody holds it shared: any description of a
        // shared holder left is one that died holding it. (Best effort: a
        // stale one is shown only while its pid holds the lock again.)
        self.remove_readers_dir(name);
        // We now fence the objects of `name`: any temp file of theirs whose
        // writer is gone is a crash leftover.
        if !released {
            self.remove_stale_temps(name)
                .map_err(|e| Error::io(format!("{}: removing stale temp files", ctx()), e))?;
        }
        Ok(Box::new(DirLock {
            file,
            owner: owner.to_owned(),
            path,
            shared: false,
            description: None,
        }))
    }

    fn lock_shared(&self, name: &str, owner: &str) -> Result<Box<dyn StoreLock>> {
        // Shared holders write nothing to the lock file (it names the
        // exclusive holder) and fence nothing: they only read. Each leaves
        // its description beside it, for `lock_holders`.
        let (file, _, path) = self.open_locked(name, true)?;
        let description = self.describe_reader(name, owner);
        Ok(Box::new(DirLock {
            file,
            owner: owner.to_owned(),
            path,
            shared: true,
            description,
        }))
    }

    fn lock_holders(&self, name: &str) -> Result<Vec<String>> {
        self.check_name("lock", name)?;
        let ctx = || self.ctx("list lock holders of", name);
        let path = self.dir.join(format!("{LOCK_PREFIX}{name}"));
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(ctx(), e)),
        };
        let meta = file.metadata().map_err(|e| Error::io(ctx(), e))?;
        let mut owner = String::new();
        let _ = file.read_to_string(&mut owner);
        let owner = owner.trim();
        // The holders of this inode's flocks, as the kernel lists them (a
        // shared holder writes nothing to the file, so only this sees it).
        if let Some(held) = flock_holders(meta.dev(), meta.ino()) {
            if !held.is_empty() {
                // /proc/locks lists this host's holders only: named by host
                // and pid, as the owner strings name them.
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|s| s.trim().to_owned())
                    .unwrap_or_else(|_| "unknown-host".into());
                // A shared holder is named by its description, matched by
                // pid (one per hold; a pid holding more than it left
                // descriptions for, e.g. on a read-only store, gets the
                // bare form).
                // (A pid's holds counted in /proc/locks can fall short of
                // its descriptions when a read skipped one: see
                // `flock_holders`; each description of a holding pid is a
                // hold.)
                let described = self.reader_descriptions(name);
                let mut out = Vec::new();
                let mut pids: Vec<(u32, bool)> = held.clone();
                pids.dedup();
                for (pid, exclusive) in pids {
                    let times = held.iter().filter(|h| **h == (pid, exclusive)).count();
                    if exclusive {
                        out.extend(std::iter::repeat_n(
                            match owner.is_empty() {
                                false => owner.to_owned(),
                                true => format!("host {host} pid {pid} (exclusive)"),
                            },
                            times,
                        ));
                        continue;
                    }
                    let mine: Vec<&String> = described
                        .iter()
                        .filter(|(p, _)| *p == pid)
                        .map(|(_, d)| d)
                        .collect();
                    out.extend(mine.iter().map(|d| (*d).clone()));
                    let bare = format!("host {host} pid {pid} (shared)");
                    out.extend(std::iter::repeat_n(bare, times.saturating_sub(mine.len())));
                }
                return Ok(out);
            }
        }
        // No entry (or no /proc/locks; or a file system whose device number
        // differs from the one it reports there): a shared probe fails only
        // while someone holds the lock exclusively (it could make a
        // concurrent taker see "locked" for an instant).
        // SAFETY: flock on a descriptor owned by `file`; no memory passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
        if rc == 0 {
            // Free. The probe goes at once (a spawned child's copy of the
            // descriptor would keep it until its exec).
            crate::io::release_flock(&file);
            return Ok(Vec::new());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(Error::io(ctx(), e));
        }
        Ok(vec![if owner.is_empty() {
            "<unknown>".to_owned()
        } else {
            owner.to_owned()
        }])
    }

    fn describe(&self) -> String {
        format!("dir:{}", self.dir.display())
    }
}

impl DirStore {
    fn readers_dir(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{READERS_PREFIX}{name}"))
    }

    /// Write a shared holder's description ([`READERS_PREFIX`]); its path,
    /// or `None` where it cannot be written (a reader without write access
    /// still holds the lock; `lock_holders` then names it by pid only).
    fn describe_reader(&self, name: &str, owner: &str) -> Option<PathBuf> {
        let dir = self.readers_dir(name);
        let n = READER_COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{}.{n}", std::process::id()));
        // An exclusive taker removes the directory (never while we hold the
        // flock); a write that still finds it gone makes it again.
        let mut r = Ok(());
        for _ in 0..16 {
            r = match fs::create_dir(&dir) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
                Err(e) => Err(e),
            }
            .and_then(|()| fs::write(&path, owner));
            if !matches!(&r, Err(e) if e.kind() == io::ErrorKind::NotFound) {
                break;
            }
        }
        match r {
            Ok(()) => Some(path),
            Err(e) => {
                tracing::debug!("no description of the shared hold of {name}: {e}");
                None
            }
        }
    }

    /// The descriptions shared holders of `name` left: (pid, description),
    /// oldest hold first. Stale ones (a holder that died) are matched only
    /// while a process with that pid holds the lock.
    fn reader_descriptions(&self, name: &str) -> Vec<(u32, String)> {
        let Ok(entries) = fs::read_dir(self.readers_dir(name)) else {
            return Vec::new();
        };
        let mut found: Vec<(u32, u64, String)> = entries
            .filter_map(|e| {
                let e = e.ok()?;
                let fname = e.file_name().into_string().ok()?;
                let (pid, n) = fname.split_once('.')?;
                let (pid, n) = (pid.parse().ok()?, n.parse().ok()?);
                let text = fs::read_to_string(e.path()).ok()?;
                let text = text.trim();
                (!text.is_empty()).then(|| (pid, n, text.to_owned()))
            })
            .collect();
        found.sort();
        found.into_iter().map(|(pid, _, d)| (pid, d)).collect()
    }

    /// Remove every shared holder's description of lock `name` (held
    /// exclusively, or being removed). Best effort.
    fn remove_readers_dir(&self, name: &str) {
        match fs::remove_dir_all(self.readers_dir(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("remove the reader descriptions of lock {name}: {e}"),
        }
    }
}

/// A held [`DirStore`] lock: the open, flock-ed lock file.
struct DirLock {
    file: Flocked,
    owner: String,
    /// The lock file, `.lock.<name>`.
    path: PathBuf,
    /// Taken with `lock_shared` (then it never writes the file).
    shared: bool,
    /// A shared holder's description file, removed before the flock is
    /// released.
    description: Option<PathBuf>,
}

impl StoreLock for DirLock {
    fn owner(&self) -> &str {
        &self.owner
    }

    fn release_and_remove(self: Box<Self>) {
        if self.shared {
            // Others may hold it too.
            return;
        }
        // The shared holders' descriptions dead ones left, first: while the
        // path still names this inode, held exclusively, no reader can hold
        // it and write one (after the unlink a new reader could, in a
        // directory we would then remove: review14 finding 3).
        if let Some(readers) = readers_dir_of(&self.path) {
            match fs::remove_dir_all(&readers) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("remove {}: {e}", readers.display()),
            }
        }
        // Unlinked while held: a taker waiting on this inode finds, once it
        // holds it, that the path no longer names it, and takes the path's
        // (see `lock`).
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!("remove lock file {}: {e}", self.path.display());
            }
        }
    }
}

/// `.readers.<name>` beside lock file `.lock.<name>`.
fn readers_dir_of(lock_file: &Path) -> Option<PathBuf> {
    let fname = lock_file.file_name()?.to_str()?;
    let name = fname.strip_prefix(LOCK_PREFIX)?;
    Some(lock_file.with_file_name(format!("{READERS_PREFIX}{name}")))
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Clear the owner while still holding the lock (best effort), then
        // closing the file (dropping `file`) releases the flock. A shared
        // holder wrote nothing and may not be alone.
        if !self.shared {
            let _ = self.file.set_len(0);
        }
        // A shared holder's description goes while it still holds the lock.
        // Its directory stays (empty) until the lock is next taken
        // exclusively: removing it here when empty costs a mkdir and an
        // rmdir per hold, which starved exclusive takers in the race test
        // (review14 finding 2, left open).
        if let Some(d) = &self.description {
            let _ = fs::remove_file(d);
        }
        // Then `file` lets go of the flock (`Flocked`) and closes.
    }
}

/// A lock file this process holds a flock on: let go with LOCK_UN when
/// dropped, before the close (see [`crate::io::release_flock`]: a child
/// spawned meanwhile holds a copy of the descriptor until its exec, and a
/// plain close would leave the lock held for that long).
struct Flocked(File);

impl std::ops::Deref for Flocked {
    type Target = File;
    fn deref(&self) -> &File {
        &self.0
    }
}

impl std::ops::DerefMut for Flocked {
    fn deref_mut(&mut self) -> &mut File {
        &mut self.0
    }
}

impl Drop for Flocked {
    fn drop(&mut self) {
        crate::io::release_flock(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lock file removed by its holder (`release_and_remove`, the end of
    /// an image's removal) while others take the same lock: never two
    /// holders at once, although a taker may open the file just before the
    /// unlink and lock its inode just after.
    #[test]
    fn a_removed_lock_file_never_gives_two_holders() {
        use std::sync::atomic::AtomicBool;
        use std::time::{Duration, Instant};
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        let s = Arc::new(DirStore::open(dir.path()).unwrap());
        let held = Arc::new(AtomicBool::new(false));
        // Until the remover has removed the file ROUNDS times (a deadline
        // only guards against a hang).
        const ROUNDS: u64 = 100;
        let deadline = Instant::now() + Duration::from_secs(60);
        let (taken, removed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let workers: Vec<_> = (0..3)
            .map(|t| {
                let (s, held, taken, removed) =
                    (s.clone(), held.clone(), taken.clone(), removed.clone());
                std::thread::spawn(move || {
                    while removed.load(Ordering::Relaxed) < ROUNDS && Instant::now() < deadline {
                        let Ok(l) = s.lock("img", "t") else {
                            std::thread::yield_now();
                            continue;
                        };
                        assert!(!held.swap(true, Ordering::SeqCst), "two holders at once");
                        taken.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_micros(50));
                        held.store(false, Ordering::SeqCst);
                        if t == 0 {
                            removed.fetch_add(1, Ordering::Relaxed);
                            l.release_and_remove();
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        let (taken, removed) = (
            taken.load(Ordering::Relaxed),
            removed.load(Ordering::Relaxed),
        );
        assert_eq!(removed, ROUNDS, "the remover did not finish in time");
        assert!(taken > removed, "only the remover took the lock: {taken}");
    }

    /// A get returns the bytes there are: short at the end, none past it,
    /// for any offset (a seek past the file system's largest file failed
    /// once), in one call for a big range.
    #[test]
    fn get_returns_what_there_is_for_any_offset() {
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        let s = DirStore::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..(5 << 20) + 10000).map(|i| (i % 251) as u8).collect();
        s.put("obj", &data).unwrap();
        assert_eq!(s.get("obj", 0, data.len() + 7).unwrap(), data);
        assert_eq!(s.get("obj", 9990, 100).unwrap(), &data[9990..10090]);
        let end = data.len() as u64;
        assert_eq!(
            s.get("obj", end - 10, 100).unwrap(),
            &data[data.len() - 10..]
        );
        assert!(s.get("obj", 0, 0).unwrap().is_empty());
        for off in [end, end + 1, 1u64 << 44, 1u64 << 62, u64::MAX] {
            assert!(s.get("obj", off, 4096).unwrap().is_empty(), "offset {off}");
        }
    }

    #[test]
    fn temp_names_parse() {
        assert_eq!(
            parse_temp_name(".tmp.img.0001.42.7"),
            Some(("img.0001", 42))
        );
        assert_eq!(parse_temp_name(".tmp.a.1.2"), Some(("a", 1)));
        assert_eq!(parse_temp_name(".tmp.a.x.2"), None);
        assert_eq!(parse_temp_name(".tmp.a.1.y"), None);
        assert_eq!(parse_temp_name(".tmp..1.2"), None);
        assert_eq!(parse_temp_name(".lock.a.1.2"), None);
        assert_eq!(parse_temp_name("img.1.2"), None);
    }

    #[test]
    fn own_pid_is_alive_and_huge_pid_is_not() {
        assert!(process_alive(std::process::id()));
        assert!(!process_alive(u32::MAX));
        assert!(!process_alive(999_999_999));
    }
}
