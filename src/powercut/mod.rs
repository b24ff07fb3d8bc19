//! A model of a power cut, for tests: record every write and every flush
//! at the device seams (the journal, the directory store's files and
//! directory), then build a state a volatile write cache may leave.
//!
//! SIGKILL never produces these states: after a killed process every
//! write it issued still reaches the disk. After a power cut, any write not
//! covered by a completed flush may be lost or torn (at 4 KiB granularity),
//! in any order, and so may any directory change (create, rename, unlink)
//! not covered by a completed fsync of the directory. This is the method of
//! CrashMonkey and of dm-log-writes replays, in user space: [`IoLog`]
//! records, [`cut`] replays a random crash state.
//!
//! # What is recorded
//!
//! [`IoLog`] is given to a journal (`JournalOptions::io_log`, through
//! `VolumeOptions::io_log`) and to a [`crate::backend::DirStore`]
//! (`DirStore::with_io_log`). It appends events to `<dir>/events`, each
//! written before the I/O it announces is submitted (a write, a rename, an
//! unlink) or after it completed (a write's completion, a flush's
//! completion), from the thread doing the I/O, so the order of the log is
//! the order of cause and effect:
//!
//! - journal: a write (offset and data), its completion (marked durable
//!   for a write submitted with `RWF_DSYNC`), the start of an fdatasync and
//!   its completion, and the creation of the journal file (zero-filled and
//!   synced under a temporary name, then renamed);
//! - store files: a file created (its name; the file is also hard-linked to
//!   `<dir>/ino/<n>` so its content stays readable whatever happens to the
//!   name), each write to it (offset, length; the data is the file's), the
//!   start and completion of its fsync; a rename, an unlink, and the start
//!   and completion of an fsync of the directory. Lock files (`.lock.*`)
//!   are not part of the model.
//!
//! An fdatasync covers the writes whose completion was logged before it
//! started; an fsync of a file covers the writes to that file logged before
//! it started; an fsync of the directory covers the creates, renames and
//! unlinks logged before it started. An `RWF_DSYNC` journal write whose
//! completion was logged is durable by itself (it is a FUA write), and
//! makes no other write durable. A write whose completion was never
//! logged (in flight, failed, or the process died first) is never covered.
//!
//! The log is framed (length, crc32c) so a frame cut short by the kill is
//! recognised; the parser stops there. Its first frame names the format
//! (magic `LSVDPCUT`, version 1). It is a test artifact, never read by the
//! product.
//!
//! # What it does not model
//!
//! The read cache file (every cached block carries a crc checked on every
//! hit); the journal file's creation is taken as durable once logged (it is
//! synced and its directory fsynced before the journal is used).

pub mod cut;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// Name of the event log in a recording directory.
pub const EVENTS: &str = "events";
/// Directory (in a recording directory) of hard links to created files.
pub const INODES: &str = "ino";
const MAGIC: &[u8; 8] = b"LSVDPCUT";
const VERSION: u32 = 2;

/// One recorded event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A journal write of `data` at `off` is about to be submitted.
    JournalWrite {
        /// Write id.
        id: u64,
        /// Byte offset in the journal.
        off: u64,
        /// What is written.
        data: Vec<u8>,
    },
    /// Journal write `id` completed successfully.
    JournalWriteDone {
        /// Write id.
        id: u64,
    },
    /// Journal write `id`, submitted with `RWF_DSYNC`, completed
    /// successfully: it is durable by itself (a FUA write), whatever syncs
    /// follow. It makes no other write durable.
    JournalWriteDurable {
        /// Write id.
        id: u64,
    },
    /// An fdatasync of the journal is about to be submitted.
    JournalSyncStart {
        /// Sync id.
        id: u64,
    },
    /// Journal fdatasync `id` completed successfully.
    JournalSyncDone {
        /// Sync id.
        id: u64,
    },
    /// A new journal file of `size` zero bytes is in place and durable.
    JournalCreated {
        /// Its size in bytes.
        size: u64,
    },
    /// File `name` was created in the store directory as file `ino`.
    FileCreated {
        /// File id (its content is `ino/<ino>` in the recording directory).
        ino: u64,
        /// Its name in the store directory.
        name: String,
    },
    /// `len` bytes were written to file `ino` at `off`.
    FileWrite {
        /// File id.
        ino: u64,
        /// Byte offset.
        off: u64,
        /// Length.
        len: u64,
    },
    /// An fsync of file `ino` is about to start.
    FileSyncStart {
        /// File id.
        ino: u64,
        /// Sync id.
        id: u64,
    },
    /// File fsync `id` completed.
    FileSyncDone {
        /// Sync id.
        id: u64,
    },
    /// `from` is about to be renamed to `to` (replacing it).
    Rename {
        /// Old name.
        from: String,
        /// New name.
        to: String,
    },
    /// `name` is about to be unlinked.
    Unlink {
        /// The name.
        name: String,
    },
    /// An fsync of the store directory is about to start.
    DirSyncStart {
        /// Sync id.
        id: u64,
    },
    /// Directory fsync `id` completed.
    DirSyncDone {
        /// Sync id.
        id: u64,
    },
    /// A point the recorded program marked (a test's step `n` completed),
    /// so a cut at an earlier moment knows what had been acknowledged.
    Mark {
        /// The program's number for it.
        n: u64,
    },
}

impl Event {
    fn encode(&self, out: &mut Vec<u8>) {
        let u64s = |out: &mut Vec<u8>, v: &[u64]| {
            for x in v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
        let s = |out: &mut Vec<u8>, v: &str| {
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            out.extend_from_slice(v.as_bytes());
        };
        match self {
            Event::JournalWrite { id, off, data } => {
                out.push(1);
                u64s(out, &[*id, *off, data.len() as u64]);
                out.extend_from_slice(data);
            }
            Event::JournalWriteDone { id } => {
                out.push(2);
                u64s(out, &[*id]);
            }
            Event::JournalSyncStart { id } => {
                out.push(3);
                u64s(out, &[*id]);
            }
            Event::JournalSyncDone { id } => {
                out.push(4);
                u64s(out, &[*id]);
            }
            Event::JournalCreated { size } => {
                out.push(5);
                u64s(out, &[*size]);
            }
            Event::FileCreated { ino, name } => {
                out.push(6);
                u64s(out, &[*ino]);
                s(out, name);
            }
            Event::FileWrite { ino, off, len } => {
                out.push(7);
                u64s(out, &[*ino, *off, *len]);
            }
            Event::FileSyncStart { ino, id } => {
                out.push(8);
                u64s(out, &[*ino, *id]);
            }
            Event::FileSyncDone { id } => {
                out.push(9);
                u64s(out, &[*id]);
            }
            Event::Rename { from, to } => {
                out.push(10);
                s(out, from);
                s(out, to);
            }
            Event::Unlink { name } => {
                out.push(11);
                s(out, name);
            }
            Event::DirSyncStart { id } => {
                out.push(12);
                u64s(out, &[*id]);
            }
            Event::DirSyncDone { id } => {
                out.push(13);
                u64s(out, &[*id]);
            }
            Event::Mark { n } => {
                out.push(14);
                u64s(out, &[*n]);
            }
            Event::JournalWriteDurable { id } => {
                out.push(15);
                u64s(out, &[*id]);
            }
        }
    }

    fn decode(b: &[u8]) -> Option<Event> {
        let mut pos = 1usize;
        let mut u = || -> Option<u64> {
            let v = u64::from_le_bytes(b.get(pos..pos + 8)?.try_into().ok()?);
            pos += 8;
            Some(v)
        };
        let ev = match *b.first()? {
            1 => {
                let (id, off, len) = (u()?, u()?, u()? as usize);
                let data = b.get(25..25 + len)?.to_vec();
                Event::JournalWrite { id, off, data }
            }
            2 => Event::JournalWriteDone { id: u()? },
            3 => Event::JournalSyncStart { id: u()? },
            4 => Event::JournalSyncDone { id: u()? },
            5 => Event::JournalCreated { size: u()? },
            6 => {
                let ino = u()?;
                let (name, _) = string(b, 9)?;
                Event::FileCreated { ino, name }
            }
            7 => Event::FileWrite {
                ino: u()?,
                off: u()?,
                len: u()?,
            },
            8 => Event::FileSyncStart {
                ino: u()?,
                id: u()?,
            },
            9 => Event::FileSyncDone { id: u()? },
            10 => {
                let (from, at) = string(b, 1)?;
                let (to, _) = string(b, at)?;
                Event::Rename { from, to }
            }
            11 => Event::Unlink {
                name: string(b, 1)?.0,
            },
            12 => Event::DirSyncStart { id: u()? },
            13 => Event::DirSyncDone { id: u()? },
            14 => Event::Mark { n: u()? },
            15 => Event::JournalWriteDurable { id: u()? },
            _ => return None,
        };
        Some(ev)
    }
}

impl std::fmt::Display for Event {
    /// One line, data left out (for failure reports).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::JournalWrite { id, off, data } => {
                write!(f, "journal write #{id} at {off}, {} bytes", data.len())
            }
            Event::JournalWriteDone { id } => write!(f, "journal write #{id} done"),
            Event::JournalWriteDurable { id } => {
                write!(f, "journal write #{id} done, durable (RWF_DSYNC)")
            }
            Event::JournalSyncStart { id } => write!(f, "journal fdatasync #{id} starts"),
            Event::JournalSyncDone { id } => write!(f, "journal fdatasync #{id} done"),
            Event::JournalCreated { size } => write!(f, "journal created, {size} bytes"),
            Event::FileCreated { ino, name } => write!(f, "file #{ino} created as {name}"),
            Event::FileWrite { ino, off, len } => {
                write!(f, "file #{ino} written at {off}, {len} bytes")
            }
            Event::FileSyncStart { ino, id } => write!(f, "file #{ino} fsync #{id} starts"),
            Event::FileSyncDone { id } => write!(f, "file fsync #{id} done"),
            Event::Rename { from, to } => write!(f, "rename {from} -> {to}"),
            Event::Unlink { name } => write!(f, "unlink {name}"),
            Event::DirSyncStart { id } => write!(f, "directory fsync #{id} starts"),
            Event::DirSyncDone { id } => write!(f, "directory fsync #{id} done"),
            Event::Mark { n } => write!(f, "mark {n}"),
        }
    }
}

/// A length-prefixed string at `at`; returns it and the position after it.
fn string(b: &[u8], at: usize) -> Option<(String, usize)> {
    let n = u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize;
    let s = std::str::from_utf8(b.get(at + 4..at + 4 + n)?).ok()?;
    Some((s.to_owned(), at + 4 + n))
}

/// Append-only recorder of the I/O at the journal and directory-store
/// seams (see the module doc). Cheap to clone through an `Arc`; every
/// method is safe to call from any thread.
pub struct IoLog {
    dir: PathBuf,
    file: Mutex<File>,
    next: AtomicU64,
}

impl std::fmt::Debug for IoLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IoLog({})", self.dir.display())
    }
}

impl IoLog {
    /// Start recording into directory `dir` (created; it must not hold an
    /// event log already).
    pub fn create(dir: &Path) -> Result<Arc<IoLog>> {
        let ctx = |what: &str, p: &Path, e| Error::io(format!("{what} {}", p.display()), e);
        std::fs::create_dir_all(dir.join(INODES))
            .map_err(|e| ctx("create power-cut log dir", dir, e))?;
        let path = dir.join(EVENTS);
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| ctx("create power-cut log", &path, e))?;
        let log = IoLog {
            dir: dir.to_path_buf(),
            file: Mutex::new(file),
            next: AtomicU64::new(1),
        };
        let mut head = MAGIC.to_vec();
        head.extend_from_slice(&VERSION.to_le_bytes());
        log.frame(&head);
        Ok(Arc::new(log))
    }

    /// The recording directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Append one frame: length (4), crc32c of the payload (4), payload, in
    /// one write(2). A recorder that cannot write stops the process: a
    /// test whose log silently lost events would prove nothing.
    fn frame(&self, payload: &[u8]) {
        let mut b = Vec::with_capacity(payload.len() + 8);
        b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        b.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
        b.extend_from_slice(payload);
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = f.write_all(&b) {
            eprintln!("power-cut log {}: {e}", self.dir.display());
            std::process::abort();
        }
    }

    fn push(&self, ev: Event) {
        let mut b = Vec::new();
        ev.encode(&mut b);
        self.frame(&b);
    }

    /// A journal write of `data` at `off` is about to be submitted; returns
    /// its id.
    pub fn journal_write(&self, off: u64, data: &[u8]) -> u64 {
        let id = self.id();
        self.push(Event::JournalWrite {
            id,
            off,
            data: data.to_vec(),
        });
        id
    }

    /// Journal write `id` completed successfully.
    pub fn journal_write_done(&self, id: u64) {
        self.push(Event::JournalWriteDone { id });
    }

    /// Journal write `id`, submitted with `RWF_DSYNC`, completed
    /// successfully: it is durable by itself.
    pub fn journal_write_durable(&self, id: u64) {
        self.push(Event::JournalWriteDurable { id });
    }

    /// An fdatasync of the journal is about to be submitted; returns its id.
    pub fn journal_sync_start(&self) -> u64 {
        let id = self.id();
        self.push(Event::JournalSyncStart { id });
        id
    }

    /// Journal fdatasync `id` completed successfully.
    pub fn journal_sync_done(&self, id: u64) {
        self.push(Event::JournalSyncDone { id });
    }

    /// A new, zero-filled journal file of `size` bytes is durable in place.
    pub fn journal_created(&self, size: u64) {
        self.push(Event::JournalCreated { size });
    }

    /// File `name` now exists at `path` (in the store directory): record it
    /// and keep its content readable under `ino/<id>`. Returns its id.
    pub fn file_created(&self, name: &str, path: &Path) -> u64 {
        let ino = self.id();
        let link = self.dir.join(INODES).join(ino.to_string());
        if let Err(e) = std::fs::hard_link(path, &link) {
            eprintln!(
                "power-cut log: link {} to {}: {e}",
                path.display(),
                link.display()
            );
            std::process::abort();
        }
        self.push(Event::FileCreated {
            ino,
            name: name.to_owned(),
        });
        ino
    }

    /// `len` bytes were written to file `ino` at `off`.
    pub fn file_write(&self, ino: u64, off: u64, len: u64) {
        self.push(Event::FileWrite { ino, off, len });
    }

    /// An fsync of file `ino` is about to start; returns its id.
    pub fn file_sync_start(&self, ino: u64) -> u64 {
        let id = self.id();
        self.push(Event::FileSyncStart { ino, id });
        id
    }

    /// File fsync `id` completed.
    pub fn file_sync_done(&self, id: u64) {
        self.push(Event::FileSyncDone { id });
    }

    /// `from` is about to be renamed over `to`.
    pub fn rename(&self, from: &str, to: &str) {
        self.push(Event::Rename {
            from: from.to_owned(),
            to: to.to_owned(),
        });
    }

    /// `name` is about to be unlinked.
    pub fn unlink(&self, name: &str) {
        self.push(Event::Unlink {
            name: name.to_owned(),
        });
    }

    /// An fsync of the store directory is about to start; returns its id.
    pub fn dir_sync_start(&self) -> u64 {
        let id = self.id();
        self.push(Event::DirSyncStart { id });
        id
    }

    /// Directory fsync `id` completed.
    pub fn dir_sync_done(&self, id: u64) {
        self.push(Event::DirSyncDone { id });
    }

    /// Mark a point of the recorded program (see [`Event::Mark`]).
    pub fn mark(&self, n: u64) {
        self.push(Event::Mark { n });
    }
}

/// Read the events recorded in `dir`, up to the first frame that is cut
/// short or fails its crc (the recorder was killed while appending it; the
/// I/O it announced was not yet submitted). No log at all (the process died
/// before it started recording) is no events.
pub fn read_events(dir: &Path) -> Result<Vec<Event>> {
    let path = dir.join(EVENTS);
    let b = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Error::io(
                format!("read power-cut log {}", path.display()),
                e,
            ))
        }
    };
    let mut out = Vec::new();
    let mut pos = 0usize;
    let mut first = true;
    while let Some(head) = b.get(pos..pos + 8) {
        let len = u32::from_le_bytes(head[..4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(head[4..].try_into().unwrap_or_default());
        let Some(payload) = b.get(pos + 8..pos + 8 + len) else {
            break;
        };
        if crc32c::crc32c(payload) != crc {
            break;
        }
        pos += 8 + len;
        if first {
            first = false;
            if payload.get(..8) != Some(MAGIC.as_slice())
                || payload.get(8..12) != Some(VERSION.to_le_bytes().as_slice())
            {
                return Err(Error::new(
                    crate::error::ErrorKind::Corrupt,
                    format!("{}: not a version {VERSION} power-cut log", path.display()),
                ));
            }
            continue;
        }
        match Event::decode(payload) {
            Some(ev) => out.push(ev),
            None => {
                return Err(Error::new(
                    crate::error::ErrorKind::Corrupt,
                    format!("{}: undecodable event at byte {pos}", path.display()),
                ))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_and_a_cut_frame_ends_the_log() {
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        let d = dir.path().join("rec");
        let log = IoLog::create(&d).unwrap();
        let f = d.join("somefile");
        std::fs::write(&f, b"abc").unwrap();
        let w = log.journal_write(8192, &[7u8; 4096]);
        log.journal_write_done(w);
        let s = log.journal_sync_start();
        log.journal_sync_done(s);
        log.journal_created(1 << 20);
        let ino = log.file_created(".tmp.x", &f);
        log.file_write(ino, 0, 3);
        let fs = log.file_sync_start(ino);
        log.file_sync_done(fs);
        log.rename(".tmp.x", "x");
        log.unlink("y");
        let ds = log.dir_sync_start();
        log.dir_sync_done(ds);
        log.mark(7);
        log.journal_write_durable(w);
        let evs = read_events(&d).unwrap();
        assert_eq!(evs.len(), 15);
        assert_eq!(evs[13], Event::Mark { n: 7 });
        assert_eq!(evs[14], Event::JournalWriteDurable { id: w });
        assert_eq!(
            evs[0],
            Event::JournalWrite {
                id: w,
                off: 8192,
                data: vec![7u8; 4096]
            }
        );
        assert_eq!(
            evs[9],
            Event::Rename {
                from: ".tmp.x".into(),
                to: "x".into()
            }
        );
        assert_eq!(
            std::fs::read(d.join(INODES).join(ino.to_string())).unwrap(),
            b"abc"
        );
        // A frame cut short (the recorder was killed mid-append) ends it.
        let p = d.join(EVENTS);
        let whole = std::fs::read(&p).unwrap();
        std::fs::write(&p, &whole[..whole.len() - 3]).unwrap();
        assert_eq!(read_events(&d).unwrap().len(), 14);
        // So does a frame whose crc fails.
        let mut b = whole.clone();
        let at = b.len() - 2;
        b[at] ^= 1;
        std::fs::write(&p, &b).unwrap();
        assert_eq!(read_events(&d).unwrap().len(), 14);
        // Not a log at all.
        let mut other = 12u32.to_le_bytes().to_vec();
        other.extend_from_slice(&crc32c::crc32c(b"NOTALOG!\x01\0\0\0").to_le_bytes());
        other.extend_from_slice(b"NOTALOG!\x01\0\0\0");
        std::fs::write(&p, &other).unwrap();
        assert!(read_events(&d).is_err());
    }
}
