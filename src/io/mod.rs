//! Low-level I/O: aligned buffers for O_DIRECT and file helpers.

mod aligned;
mod append;

pub use aligned::AlignedBuf;
pub use append::{AppendBuf, Span};

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use crate::error::{Error, Result};

/// The direct-I/O alignment `file` needs, as `(memory, offset and
/// length)` in bytes, from `statx(STATX_DIOALIGN)` (Linux 6.1+, for
/// regular files on file systems that report it; block devices from 6.11).
/// `None` when the kernel or file system does not say.
pub fn dio_alignment(file: &File) -> Option<(usize, usize)> {
    use std::os::fd::AsRawFd;
    // SAFETY: `statx` is plain old data, for which all zeros is valid.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: statx writes only into `st`, a local of the right type; the
    // empty path with AT_EMPTY_PATH names `file`'s open descriptor.
    let r = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut st,
        )
    };
    if r != 0 || st.stx_mask & libc::STATX_DIOALIGN == 0 {
        return None;
    }
    let (mem, off) = (
        st.stx_dio_mem_align as usize,
        st.stx_dio_offset_align as usize,
    );
    (mem > 0 && off > 0).then_some((mem, off))
}

/// Release the flock held through `file` now, not at its close. Crash
/// ordering does not depend on it; lock hand-over does: flock belongs to
/// the open file description, and a child this process spawns holds a copy
/// of every descriptor from its fork until its exec closes them
/// (close-on-exec), so a plain close while another thread spawns a process
/// (a `modprobe`, a test's CLI run) leaves the lock held for that window,
/// and a taker right after (the reader that lost the race with `snap rm`
/// removing the lock file, a second open of a read cache) finds it locked.
/// `LOCK_UN` acts on the description itself, which the copy shares, so
/// the lock is free when this returns. Best effort: an error here is one
/// the close that follows cannot make worse.
pub fn release_flock(file: &File) {
    if let Err(e) = file.unlock() {
        tracing::debug!("flock(LOCK_UN): {e}");
    }
}

/// Open `path` for reading and writing with O_DIRECT (and create it if
/// `create`). Fails with a clear message if the file system refuses O_DIRECT.
pub fn open_direct(path: &Path, create: bool) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::EINVAL) {
                Error::io(
                    format!(
                        "open {} with O_DIRECT (the file system does not support direct I/O)",
                        path.display()
                    ),
                    e,
                )
            } else {
                Error::io(format!("open {}", path.display()), e)
            }
        })
}

/// The name of a volatile (memory-backed) file system type, from
/// `statfs(2)`'s `f_type`: tmpfs and ramfs.
fn volatile_fs(f_type: i64) -> Option<&'static str> {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    match f_type {
        TMPFS_MAGIC => Some("tmpfs"),
        RAMFS_MAGIC => Some("ramfs"),
        _ => None,
    }
}

/// `statvfs(2)` of `dir`: (file system type from `statfs`, bytes free to
/// an unprivileged user).
fn fs_facts(dir: &Path) -> Result<(i64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|_| {
        Error::new(
            crate::error::ErrorKind::InvalidInput,
            format!("path {} contains NUL", dir.display()),
        )
    })?;
    // SAFETY: plain-data structs, fully written by the calls on success.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut vfs: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path; the out-pointers are valid.
    if unsafe { libc::statfs(c.as_ptr(), &mut fs) } != 0
        // SAFETY: as above.
        || unsafe { libc::statvfs(c.as_ptr(), &mut vfs) } != 0
    {
        return Err(Error::io(
            format!("statfs {}", dir.display()),
            std::io::Error::last_os_error(),
        ));
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs by target
    let f_type = fs.f_type as i64;
    Ok((f_type, vfs.f_bavail as u64 * vfs.f_frsize as u64))
}

/// Refuse a local file of `what` (`wlog_dir`, `rcache_dir`) in `dir` on a
/// memory-backed file system (tmpfs, ramfs), naming it, unless `allow`
/// (the `allow_tmpfs` key, for tests): a reboot would lose it.
pub fn check_not_volatile(dir: &Path, what: &str, allow: bool) -> Result<()> {
    if allow {
        return Ok(());
    }
    let (f_type, _) = fs_facts(dir)?;
    if let Some(name) = volatile_fs(f_type) {
        return Err(Error::new(
            crate::error::ErrorKind::Config,
            format!(
                "{what} {} is on {name}, which a reboot empties: the {} must be on a \
                 persistent file system (set allow_tmpfs only for tests)",
                dir.display(),
                if what == "wlog_dir" {
                    "journal holds acknowledged writes and"
                } else {
                    "read cache"
                }
            ),
        ));
    }
    Ok(())
}

/// Bytes free to an unprivileged user on the file system of `dir`.
pub fn free_bytes(dir: &Path) -> Result<u64> {
    fs_facts(dir).map(|(_, free)| free)
}

/// Size in bytes of a regular file or block device.
pub fn device_size(file: &File, path: &Path) -> Result<u64> {
    let md = file
        .metadata()
        .map_err(|e| Error::io(format!("stat {}", path.display()), e))?;
    if md.file_type().is_block_device() {
        let mut size: u64 = 0;
        // BLKGETSIZE64 = _IOR(0x12, 114, size_t)
        const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
        // SAFETY: the fd is open for the duration of the call and `size` is a
        // valid, writable u64 as BLKGETSIZE64 requires.
        let r = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(file),
                BLKGETSIZE64,
                &mut size as *mut u64,
            )
        };
        if r != 0 {
            return Err(Error::io(
                format!("BLKGETSIZE64 on {}", path.display()),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(size)
    } else {
        Ok(md.len())
    }
}

/// Whether `path` is a block device (following symlinks).
pub fn is_block_device(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false)
}

/// Positional read of exactly `buf.len()` bytes (O_DIRECT-safe when `buf`
/// and `offset` are aligned).
pub fn read_exact_at(file: &File, buf: &mut [u8], offset: u64, what: &Path) -> Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
        .map_err(|e| Error::io(format!("read {} at {offset}", what.display()), e))
}

/// Positional write of all of `buf`.
pub fn write_all_at(file: &File, buf: &[u8], offset: u64, what: &Path) -> Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
        .map_err(|e| Error::io(format!("write {} at {offset}", what.display()), e))
}

/// fdatasync.
pub fn datasync(file: &File, what: &Path) -> Result<()> {
    file.sync_data()
        .map_err(|e| Error::io(format!("fdatasync {}", what.display()), e))
}
