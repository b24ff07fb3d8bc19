//! The write journal: a circular log on a file or block device, opened with
//! O_DIRECT and written through io_uring, with group commit.
//!
//! One state machine (`writer::Core`) owns the log; the journal thread
//! and any number of lanes ([`Lane`]: threads with their own ring, such as
//! the ublk queues) submit its I/O. Callers add their operations
//! ([`Append`]s, in journal-sequence order) to the record being filled, by
//! reference: the data stays in the caller's batch buffer ([`Span`]s) and
//! the record is written from there with `writev`, so write data is copied
//! once in user space (into the batch). A driver takes whole records
//! (group commit), keeps up to `depth`
//! records in flight and acknowledges them strictly in order, so an
//! acknowledged record never has a hole below it. A FLUSH (or a FUA write)
//! completes after every record up to it has completed *and* an fdatasync
//! issued after those completions has completed; or, for a FUA write whose
//! record was written with `RWF_DSYNC` while every record before it was
//! already durable, when that record completes (`Core::dsync_ok`).
//!
//! Space is reused once the volume reports (via [`JournalShared::release`])
//! that the backend durably holds the records' operations. The superblock's
//! replay start is persisted before any released space is overwritten.

mod lane;
mod replay;
mod staging;
mod writer;

pub use lane::{Lane, LaneGuard, RingLane};
pub use writer::Sub;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{unbounded, Sender};
use tracing::{info, warn};

use crate::error::{Error, ErrorKind, Result};
use crate::format::journal::{JournalSuper, RecordEntry, BLOCK, SB_VERSION, SLOTS};
use crate::format::object::OpKind;
use crate::io::{
    datasync, device_size, is_block_device, open_direct, read_exact_at, write_all_at, AlignedBuf,
    Span,
};
use crate::units::{Epoch, Generation, ImageUuid, JournalSeq, Lba};

/// Called once when a journal operation completes.
pub type Done = Box<dyn FnOnce(Result<()>) + Send + 'static>;

/// Journal parameters.
#[derive(Clone, Debug)]
pub struct JournalOptions {
    /// File or block device.
    pub path: PathBuf,
    /// Size of a journal file created here (block devices use their size).
    pub size: u64,
    /// Records in flight.
    pub depth: u32,
    /// Largest record data (group commit stops there; = `wlog_chunk_bytes`).
    pub max_record_data: u64,
    /// How long an append may wait for space before it fails.
    pub io_timeout: Duration,
    /// Test hook: record every write and fdatasync for the power-cut model
    /// (`crate::powercut`). `None` in production.
    pub io_log: Option<Arc<crate::powercut::IoLog>>,
    /// Accept a journal file on tmpfs or ramfs (`allow_tmpfs`, tests).
    pub allow_tmpfs: bool,
}

/// One operation found during replay.
#[derive(Debug)]
pub struct ReplayEntry<'a> {
    /// Its journal sequence.
    pub seq: JournalSeq,
    /// What it does.
    pub kind: OpKind,
    /// First sector.
    pub lba: Lba,
    /// Length in sectors.
    pub sectors: u32,
    /// Data (writes only; empty otherwise).
    pub data: &'a [u8],
}

/// A batch of operations to journal, with consecutive sequences.
pub struct Append<'a> {
    /// Sequence of the first entry.
    pub first_seq: JournalSeq,
    /// Entries (each at most `max_record_data` of data).
    pub entries: &'a [RecordEntry],
    /// Data of the write entries, one span per entry that has data, in
    /// entry order. Not copied: the record is written from the spans
    /// (`writev`) when they are aligned for O_DIRECT, or copied once into a
    /// record buffer by the driver that places the record when they are not.
    pub data: &'a [Span],
    /// Acknowledge only once durable across a host crash.
    pub fua: bool,
    /// Runs when the last entry is acknowledged.
    pub done: Option<Done>,
}

pub(crate) enum Msg {
    Flush {
        upto: JournalSeq,
        done: Done,
    },
    Wake,
    Shutdown {
        clean: bool,
        done: crossbeam_channel::Sender<Result<()>>,
    },
}

/// State shared between the writer thread and the volume.
pub struct JournalShared {
    released: AtomicU64,
    used_bytes: AtomicU64,
    /// Bytes of the record area (set when the writer starts).
    pub(crate) capacity_bytes: AtomicU64,
    records: AtomicU64,
    /// Records whose data was copied into a record buffer (not block
    /// aligned) rather than written from the batch.
    copied: AtomicU64,
    syncs: AtomicU64,
    /// Records written with `RWF_DSYNC`: durable at completion, no
    /// fdatasync needed for the FUA writes they hold.
    dsync: AtomicU64,
    /// Records a lane left to the journal thread because the replay start
    /// had to move first.
    pub(crate) lane_deferrals: AtomicU64,
    space_wanted: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
    tx: Mutex<Option<Sender<Msg>>>,
}

impl Default for JournalShared {
    fn default() -> Self {
        JournalShared {
            released: AtomicU64::new(0),
            used_bytes: AtomicU64::new(0),
            capacity_bytes: AtomicU64::new(0),
            records: AtomicU64::new(0),
            copied: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            dsync: AtomicU64::new(0),
            lane_deferrals: AtomicU64::new(0),
            space_wanted: Mutex::new(None),
            tx: Mutex::new(None),
        }
    }
}

impl JournalShared {
    /// The backend durably holds every operation up to `seq`: their journal
    /// space may be reused.
    pub fn release(&self, seq: JournalSeq) {
        self.released.fetch_max(seq.0, Ordering::SeqCst);
        self.wake_writer();
    }

    /// Wake the journal thread (work a lane left to it).
    pub(crate) fn wake_writer(&self) {
        if let Ok(g) = self.tx.lock() {
            if let Some(tx) = g.as_ref() {
                let _ = tx.send(Msg::Wake);
            }
        }
    }

    /// Set the hook called when appends wait for space (the volume then
    /// closes its open batch early so destage can free space).
    pub fn set_space_wanted(&self, f: Box<dyn Fn() + Send + Sync>) {
        if let Ok(mut g) = self.space_wanted.lock() {
            *g = Some(f);
        }
    }

    pub(crate) fn want_space(&self) {
        if let Ok(g) = self.space_wanted.lock() {
            if let Some(f) = g.as_ref() {
                f();
            }
        }
    }

    /// Journal bytes holding records not yet released.
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::Relaxed)
    }
    /// Bytes of the journal's record area (what `used_bytes` can reach).
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes.load(Ordering::Relaxed)
    }
    /// Records written.
    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }
    /// Records written from a copy of their data (writes of partial
    /// blocks), not straight from the batch.
    pub fn copied_records(&self) -> u64 {
        self.copied.load(Ordering::Relaxed)
    }
    /// fdatasyncs completed.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }
    /// Records written with `RWF_DSYNC` (a FUA write after everything
    /// before it was synced: durable at completion, no fdatasync).
    pub fn dsync_records(&self) -> u64 {
        self.dsync.load(Ordering::Relaxed)
    }
}

/// Why the journal's content was not replayed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Discarded {
    /// Replayed normally.
    No,
    /// The file did not exist or was blank: a new journal was formatted.
    Blank,
    /// The journal belongs to an earlier attach (its generation differs
    /// from the one the image recorded).
    Stale,
    /// Its records do not continue the backend's sequence (objects lost).
    Gap {
        /// Last sequence in the backend.
        backend: JournalSeq,
        /// First sequence the journal could replay.
        journal: JournalSeq,
    },
}

/// What opening the journal found.
#[derive(Debug)]
pub struct OpenReport {
    /// The journal's generation (record it in the image superblock).
    pub generation: Generation,
    /// This session's epoch (every record it writes carries it).
    pub epoch: Epoch,
    /// The journal was written by an earlier build and was reformatted in
    /// the current layout (after its replayed entries were destaged).
    pub upgraded: bool,
    /// Next journal sequence to assign.
    pub next_seq: JournalSeq,
    /// Operations handed to the replay callback.
    pub replayed: u64,
    /// Whether and why the content was discarded.
    pub discarded: Discarded,
}

/// An open journal with its writer thread.
pub struct Journal {
    tx: Sender<Msg>,
    staging: Arc<staging::Staging>,
    thread: Option<JoinHandle<()>>,
    shared: Arc<JournalShared>,
    core: Arc<writer::CoreCell>,
}

impl Journal {
    /// Open the journal at `opts.path` for image `uuid`, creating and
    /// formatting it if missing or blank, and replay it: every entry with a
    /// sequence above `backend_seq` goes to `on_entry`, in order. A journal
    /// whose generation differs from `image_gen` (when that is non-zero) is
    /// stale and is reformatted instead of replayed; so is one whose first
    /// replayable entry is not `backend_seq + 1`.
    ///
    /// A journal written by an earlier build (superblock version 1) is
    /// replayed, then `make_durable` must make every replayed entry durable
    /// in the backend before it is reformatted in the current layout.
    pub fn open(
        opts: &JournalOptions,
        uuid: ImageUuid,
        image_gen: Generation,
        backend_seq: JournalSeq,
        shared: Arc<JournalShared>,
        on_entry: &mut dyn FnMut(ReplayEntry<'_>) -> Result<()>,
        make_durable: &mut dyn FnMut() -> Result<()>,
    ) -> Result<(Journal, OpenReport)> {
        let path = &opts.path;
        let (file, size, created) = open_or_create(opts)?;
        let found = read_supers(&file, path)?;
        let mut discarded = Discarded::No;
        let (existing, slot, max_update) = match found {
            Supers::Blank { torn } => {
                if torn {
                    warn!(journal = %path.display(), "journal superblock torn before its first copy was complete: starting a new journal (no record can have been written under it)");
                } else if !created {
                    warn!(journal = %path.display(), "journal is blank: starting a new one (operations not yet in the backend, if any, are lost)");
                }
                discarded = Discarded::Blank;
                // The first copy goes to slot 0.
                (None, 1, 0)
            }
            Supers::Valid {
                sb,
                slot,
                max_update,
            } => {
                if sb.uuid != uuid {
                    return Err(Error::new(
                        ErrorKind::Mismatch,
                        format!(
                            "journal {} belongs to image {}, not to image {uuid}; move it away (or delete it if that image is gone)",
                            path.display(),
                            sb.uuid
                        ),
                    ));
                }
                if sb.size != size {
                    return Err(Error::new(
                        ErrorKind::Mismatch,
                        format!(
                            "journal {} was formatted for {} bytes but is {size} bytes",
                            path.display(),
                            sb.size
                        ),
                    ));
                }
                if image_gen.0 != 0 && sb.generation != image_gen {
                    warn!(journal = %path.display(), found = sb.generation.0, expected = image_gen.0,
                        "journal is from an earlier attach of this image: not replaying it");
                    discarded = Discarded::Stale;
                    (None, slot, max_update)
                } else {
                    (Some(sb), slot, max_update)
                }
            }
        };

        let mut replayed = 0u64;
        let replay = match existing {
            Some(sb) => {
                // First pass without side effects decides whether the chain
                // continues the backend; only then are entries handed over.
                let first = first_replayable(&file, path, &sb, backend_seq)?;
                // A chain that starts above the backend without any entry
                // to replay also means the backend lost objects.
                let first = first.or(if sb.start_seq > backend_seq.next() {
                    Some(sb.start_seq)
                } else {
                    None
                });
                match first {
                    Some(s) if s != backend_seq.next() => {
                        warn!(journal = %path.display(), backend = backend_seq.0, journal_first = s.0,
                            "journal does not continue the backend's sequence (backend objects lost?): not replaying it, to keep the image a prefix of the writes");
                        discarded = Discarded::Gap {
                            backend: backend_seq,
                            journal: s,
                        };
                        None
                    }
                    _ => {
                        let scan = replay::scan(&file, path, &sb, &mut |first, entries, data| {
                            for e in replay::entries_with_data(first, entries, data) {
                                if e.seq > backend_seq {
                                    replayed += 1;
                                    on_entry(e)?;
                                }
                            }
                            Ok(true)
                        })?;
                        info!(journal = %path.display(), replayed, records = scan.records.len(),
                            start = sb.start_offset, start_seq = sb.start_seq.0, epoch = sb.epoch.0,
                            next_seq = scan.next_seq.0, stop = %scan.stop_reason, "journal replayed");
                        Some((sb, scan))
                    }
                }
            }
            None => None,
        };

        let next_seq = match &replay {
            Some((_, scan)) if scan.next_seq > backend_seq => scan.next_seq,
            _ => backend_seq.next(),
        };
        let mut upgraded = false;
        let dev = Dev {
            file: &file,
            path,
            log: opts.io_log.as_deref(),
        };
        let start = match replay {
            Some((sb, scan)) if sb.version == SB_VERSION => {
                continue_chain(&dev, sb, scan, slot, max_update, next_seq)?
            }
            other => {
                if let Some((sb, _)) = &other {
                    // A journal of an earlier build (one slot, records
                    // without epochs). Crash-safety ordering: every entry
                    // it replayed is durable in the backend before it is
                    // reformatted; a crash before that replays it again.
                    info!(journal = %path.display(), version = sb.version,
                        "journal written by an earlier build: destaging what it replayed, then reformatting it");
                    make_durable()?;
                    upgraded = true;
                }
                format(&dev, uuid, size, slot, max_update, next_seq)?
            }
        };
        let report = OpenReport {
            generation: start.sb.generation,
            epoch: start.sb.epoch,
            next_seq,
            replayed,
            discarded,
            upgraded,
        };
        let (tx, rx) = unbounded();
        let staging = Arc::new(staging::Staging::new(
            opts.max_record_data.max(BLOCK) as usize
        ));
        let core = Arc::new(writer::Core::new_cell(
            (file, path.clone()),
            start,
            opts,
            shared.clone(),
            staging.clone(),
        ));
        let w = writer::Writer::new(core.clone(), opts.depth, path.clone())?;
        let thread = std::thread::Builder::new()
            .name("lsvd-journal".into())
            .spawn(move || w.run(rx))
            .map_err(|e| Error::io("spawn journal thread", e))?;
        if let Ok(mut g) = shared.tx.lock() {
            *g = Some(tx.clone());
        }
        Ok((
            Journal {
                tx,
                staging,
                thread: Some(thread),
                shared,
                core,
            },
            report,
        ))
    }

    /// Queue an append: its entries join the record being filled (group
    /// commit) before this returns; its data spans are kept, not copied,
    /// until that record's write completes. Appends must be queued in
    /// sequence order.
    pub fn append(&self, a: Append<'_>) {
        self.staging
            .append(a.first_seq, a.entries, a.data, a.fua, a.done);
        // On a lane's thread the lane submits it (`Lane::pump`), on its
        // own ring; otherwise the journal thread does.
        if !lane::is_current(&self.core) {
            let _ = self.tx.send(Msg::Wake);
        }
    }

    /// Queue a flush covering every sequence up to `upto`.
    pub fn flush(&self, upto: JournalSeq, done: Done) {
        // On a lane's thread the lane takes it at its next pump (not here:
        // the caller may hold the volume's state lock).
        let Some(done) = lane::defer_flush(&self.core, upto, done) else {
            return;
        };
        if let Err(e) = self.tx.send(Msg::Flush { upto, done }) {
            if let Msg::Flush { done, .. } = e.0 {
                done(Err(Error::new(ErrorKind::Closed, "journal is shut down")));
            }
        }
    }

    /// A driver for a thread with its own io_uring (a ublk queue): the
    /// records and fdatasyncs it pumps go out on that ring. See [`Lane`].
    pub fn lane(&self) -> Lane {
        Lane::new(self.core.clone(), self.tx.clone())
    }

    /// Shared counters and the release hook.
    pub fn shared(&self) -> &Arc<JournalShared> {
        &self.shared
    }

    /// Stop the writer. `clean`: queued appends are written, then the
    /// superblock's replay start moves to the oldest record not yet released
    /// (the head, after a clean close, so the chain is empty). Otherwise (a
    /// simulated crash) in-flight I/O is waited for and nothing else is
    /// written.
    pub fn shutdown(mut self, clean: bool) -> Result<()> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let r = if self.tx.send(Msg::Shutdown { clean, done: tx }).is_ok() {
            rx.recv()
                .unwrap_or_else(|_| Err(Error::new(ErrorKind::Closed, "journal thread died")))
        } else {
            Err(Error::new(ErrorKind::Closed, "journal thread died"))
        };
        if let Ok(mut g) = self.shared.tx.lock() {
            *g = None;
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Nothing may wait on a stopped journal.
        self.staging
            .fail(&Error::new(ErrorKind::Closed, "journal is shut down"));
        r
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let (tx, _rx) = crossbeam_channel::bounded(1);
            let _ = self.tx.send(Msg::Shutdown {
                clean: false,
                done: tx,
            });
            let _ = t.join();
        }
        self.staging
            .fail(&Error::new(ErrorKind::Closed, "journal is shut down"));
    }
}

fn new_generation() -> Generation {
    loop {
        let g = rand::random::<u64>();
        if g != 0 {
            return Generation(g);
        }
    }
}

fn open_or_create(opts: &JournalOptions) -> Result<(File, u64, bool)> {
    let path = &opts.path;
    // A symlink whose target is missing (a journal partition whose device
    // node is not there yet) is never replaced by a new journal file: the
    // journal it names may hold acknowledged writes.
    let link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    if link && std::fs::metadata(path).is_err() {
        let target = std::fs::read_link(path).unwrap_or_default();
        return Err(Error::new(
            ErrorKind::Mismatch,
            format!(
                "journal {} is a symlink to {}, which does not exist (a journal device not \
                 there yet?): not replaced by a new journal",
                path.display(),
                target.display()
            ),
        ));
    }
    if is_block_device(path) {
        let file = open_direct(path, false)?;
        let size = device_size(&file, path)? / BLOCK * BLOCK;
        if size < 16 * BLOCK {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "journal device {} is too small ({size} bytes)",
                    path.display()
                ),
            ));
        }
        return Ok((file, size, false));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("create journal directory {}", dir.display()), e))?;
    if path.exists() {
        let file = open_direct(path, false)?;
        let len = device_size(&file, path)?;
        if len > 0 {
            // An existing journal is opened wherever it is (it may hold
            // acknowledged writes to replay); only a new one is refused on
            // tmpfs.
            if !link {
                if let Err(e) = crate::io::check_not_volatile(dir, "wlog_dir", opts.allow_tmpfs) {
                    warn!(journal = %path.display(), "opened to replay it, but move it: {e}");
                }
            }
            return Ok((file, len / BLOCK * BLOCK, false));
        }
        // An empty file holds nothing: replace it with a full journal.
    }
    crate::io::check_not_volatile(dir, "wlog_dir", opts.allow_tmpfs)?;
    // Crash-safety ordering: a new journal is zero-filled and synced under a
    // temporary name and only then renamed into place (and the directory
    // synced). A kill during the fill leaves only the temporary file, which
    // the next open replaces, never a short journal at `path`.
    // Zero-filling (rather than a sparse file) because writing into
    // allocated-but-unwritten extents costs an extent conversion per write,
    // halving the fdatasync rate.
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".creating");
    let tmp = std::path::PathBuf::from(tmp_name);
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("remove {}", tmp.display()), e)),
    }
    let size = opts.size / BLOCK * BLOCK;
    // Room first: a fill that runs out of space would fill the file
    // system before failing.
    let free = crate::io::free_bytes(dir)?;
    if free < size {
        return Err(Error::new(
            ErrorKind::NoSpace,
            format!(
                "journal {} needs {size} bytes (wlog_bytes), but its file system has {free} free; \
                 free space, lower wlog_bytes or choose another wlog_dir",
                path.display()
            ),
        ));
    }
    let file = open_direct(&tmp, true)?;
    // Whatever fails from here, the temporary file goes: it may be as large
    // as the journal.
    let fill = || -> Result<()> {
        // SAFETY: fallocate on a descriptor we own; no memory is passed.
        let r = unsafe {
            libc::fallocate(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
                0,
                size as libc::off_t,
            )
        };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            // A file system without fallocate still gets the zero fill.
            if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
                return Err(Error::io(
                    format!("allocate {size} bytes for {}", tmp.display()),
                    e,
                ));
            }
        }
        let chunk = AlignedBuf::new(1 << 20);
        let mut off = 0;
        while off < size {
            let n = (size - off).min(chunk.len() as u64) as usize;
            write_all_at(&file, &chunk[..n], off, &tmp)?;
            off += n as u64;
        }
        datasync(&file, &tmp)
    };
    if let Err(e) = fill() {
        drop(file);
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path)
        .map_err(|e| Error::io(format!("rename {} to {}", tmp.display(), path.display()), e))?;
    sync_parent(path);
    if let Some(l) = &opts.io_log {
        l.journal_created(size);
    }
    Ok((file, size, true))
}

fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// Write `sb` as the copy in slot `slot` (block `slot`) and fdatasync it.
/// Callers always write the slot that does not hold the copy they loaded or
/// last wrote, so a write torn by a power cut leaves the other, valid copy.
pub(crate) fn write_super(dev: &Dev<'_>, sb: &JournalSuper, slot: u32) -> Result<()> {
    let mut b = AlignedBuf::new(BLOCK as usize);
    b.copy_from_slice(&sb.encode(slot));
    let off = slot as u64 * BLOCK;
    let id = dev.log.map(|l| l.journal_write(off, &b));
    write_all_at(dev.file, &b, off, dev.path)?;
    if let (Some(l), Some(id)) = (dev.log, id) {
        l.journal_write_done(id);
    }
    let sync = dev.log.map(|l| l.journal_sync_start());
    datasync(dev.file, dev.path)?;
    if let (Some(l), Some(id)) = (dev.log, sync) {
        l.journal_sync_done(id);
    }
    Ok(())
}

/// The journal device as the superblock writers need it.
pub(crate) struct Dev<'a> {
    pub file: &'a File,
    pub path: &'a Path,
    pub log: Option<&'a crate::powercut::IoLog>,
}

/// What the superblock slots hold.
enum Supers {
    /// No valid copy, and none can have had records written under it: both
    /// slots blank, or one blank and the other torn (`torn`) by a power cut
    /// during the first write of a new journal.
    Blank { torn: bool },
    /// The valid copy with the highest update sequence, its slot, and the
    /// highest update sequence of any valid copy.
    Valid {
        sb: JournalSuper,
        slot: u32,
        max_update: u64,
    },
}

/// Read both superblock slots and pick the valid copy with the higher
/// update sequence. Block 0 may hold a version 1 superblock of an earlier
/// build (then block 1 holds records, unless an upgrade wrote a version 2
/// copy there, which then wins by its higher update sequence).
fn read_supers(file: &File, path: &Path) -> Result<Supers> {
    let mut blocks = AlignedBuf::new((SLOTS * BLOCK) as usize);
    read_exact_at(file, &mut blocks, 0, path)?;
    let mut best: Option<(JournalSuper, u32)> = None;
    let mut errors = Vec::new();
    let mut blank = 0;
    for slot in 0..SLOTS as u32 {
        let b = &blocks[(slot as u64 * BLOCK) as usize..((slot as u64 + 1) * BLOCK) as usize];
        if JournalSuper::is_blank(b) {
            blank += 1;
            continue;
        }
        match JournalSuper::decode_slot(b, slot) {
            Ok(sb) => {
                if best
                    .as_ref()
                    .is_none_or(|(b, _)| sb.update_seq > b.update_seq)
                {
                    best = Some((sb, slot));
                }
            }
            Err(e) => errors.push((slot, e)),
        }
    }
    match best {
        Some((sb, slot)) => {
            for (s, e) in &errors {
                // A version 1 journal's block 1 holds records, not a copy.
                if sb.version == SB_VERSION {
                    warn!(journal = %path.display(), slot = s, "journal superblock copy is invalid (torn by a power cut?), using the other one: {e}");
                }
            }
            let max_update = sb.update_seq;
            Ok(Supers::Valid {
                sb,
                slot,
                max_update,
            })
        }
        None if blank == SLOTS as usize => Ok(Supers::Blank { torn: false }),
        // `format` writes both copies before any record, so one torn copy
        // beside a blank slot means no record was ever written under it.
        None if blank == 1 => Ok(Supers::Blank { torn: true }),
        None => {
            let (_, e) = errors.swap_remove(0);
            Err(Error::with_source(
                ErrorKind::Corrupt,
                format!(
                    "journal {} has no valid superblock copy (both slots are corrupt); if its image's data is safe in the backend, delete the file to start a new journal",
                    path.display()
                ),
                e,
            ))
        }
    }
}

/// The image a journal file belongs to, by its superblock: `None` if there
/// is no file, or it is no journal (too short, blank, or no valid
/// superblock copy). Read only; for `rm`, which must never delete another
/// image's journal.
pub(crate) fn owner(path: &Path) -> Result<Option<crate::units::ImageUuid>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("open journal {}", path.display()), e)),
    };
    let len = file
        .metadata()
        .map_err(|e| Error::io(format!("stat journal {}", path.display()), e))?
        .len();
    if len < SLOTS * BLOCK {
        return Ok(None);
    }
    match read_supers(&file, path) {
        Ok(Supers::Valid { sb, .. }) => Ok(Some(sb.uuid)),
        Ok(Supers::Blank { .. }) => Ok(None),
        Err(e) if e.kind() == ErrorKind::Corrupt => Ok(None),
        Err(e) => Err(e),
    }
}

/// Where the writer starts: the superblock as durable now, its slot, the
/// chain it inherits and the head.
pub(crate) struct WriterStart {
    pub sb: JournalSuper,
    pub slot: u32,
    pub records: Vec<replay::ScannedRecord>,
    pub head_v: u64,
    pub persisted_start_v: u64,
    pub next_seq: JournalSeq,
}

/// Format a new journal (new generation, epoch 1, an empty chain starting
/// at `next_seq`): write the new superblock to the slot other than `slot`,
/// then to `slot` too.
///
/// Crash ordering: both copies are durable before any record of the new
/// generation is written. Records of the old generation can never validate
/// under the new one. A write torn by a power cut leaves the other slot:
/// the old journal (found again and discarded again), or blank beside the
/// torn copy, which `read_supers` then knows to be a format that never
/// completed (no record can have been written under it). From here on at
/// most one slot is being written at a time, so one valid copy always
/// remains.
fn format(
    dev: &Dev<'_>,
    uuid: ImageUuid,
    size: u64,
    slot: u32,
    max_update: u64,
    next_seq: JournalSeq,
) -> Result<WriterStart> {
    let mut sb = JournalSuper {
        version: SB_VERSION,
        uuid,
        generation: new_generation(),
        size,
        start_offset: JournalSuper::data_start_of(SB_VERSION),
        start_seq: next_seq,
        update_seq: max_update + 1,
        epoch: Epoch(1),
        start_epoch: Epoch(1),
    };
    write_super(dev, &sb, 1 - slot)?;
    sb.update_seq += 1;
    write_super(dev, &sb, slot)?;
    Ok(WriterStart {
        sb,
        slot,
        records: Vec::new(),
        head_v: 0,
        persisted_start_v: 0,
        next_seq,
    })
}

/// Continue a replayed chain in a new epoch.
///
/// Crash-safety ordering (journal epochs, `docs/format.md`): the superblock
/// naming the new epoch is durable before any record of this session is
/// written, every record this session writes carries it, and replay
/// accepts along the chain only epochs that never decrease. So when replay
/// cut the chain at a hole (a record lost or torn by a power cut), the
/// records this session writes from the hole on can never be followed by a
/// record of the old chain that lay beyond the hole, whatever the record
/// sizes, wraps and reused sequences: its epoch is lower.
///
/// If the backend already holds the whole chain (the newest record was torn
/// after its object was written), the chain is re-based at the head in the
/// same superblock write: start at the head, `start_seq = next_seq`, start
/// epoch = the new epoch.
fn continue_chain(
    dev: &Dev<'_>,
    mut sb: JournalSuper,
    scan: replay::ScanResult,
    slot: u32,
    max_update: u64,
    next_seq: JournalSeq,
) -> Result<WriterStart> {
    let data_start = sb.data_start();
    let data_size = sb.size - data_start;
    sb.epoch = Epoch(sb.epoch.0.max(scan.last_epoch.0) + 1);
    sb.update_seq = max_update + 1;
    let mut start = WriterStart {
        sb: sb.clone(),
        slot: 1 - slot,
        records: scan.records,
        head_v: scan.head_v,
        persisted_start_v: scan.start_v,
        next_seq,
    };
    if scan.next_seq != next_seq {
        let head_phys = data_start + scan.head_v % data_size;
        sb.start_offset = head_phys;
        sb.start_seq = next_seq;
        sb.start_epoch = sb.epoch;
        start.sb = sb.clone();
        start.records.clear();
        start.head_v = head_phys - data_start;
        start.persisted_start_v = start.head_v;
    }
    write_super(dev, &sb, start.slot)?;
    Ok(start)
}

/// Sequence of the first entry the chain would replay above `backend_seq`,
/// found by a dry run of the scan (None: nothing to replay).
fn first_replayable(
    file: &File,
    path: &Path,
    sb: &JournalSuper,
    backend_seq: JournalSeq,
) -> Result<Option<JournalSeq>> {
    let mut first = None;
    replay::scan(file, path, sb, &mut |seq, entries, _| {
        let last = JournalSeq(seq.0.saturating_add(entries.len() as u64).saturating_sub(1));
        if first.is_none() && !entries.is_empty() && last > backend_seq {
            first = Some(if seq > backend_seq {
                seq
            } else {
                backend_seq.next()
            });
        }
        Ok(first.is_none())
    })?;
    Ok(first)
}

#[cfg(test)]
mod tests;
