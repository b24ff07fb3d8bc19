//! The journal's state machine ([`Core`]: group commit, in-order
//! acknowledgement, fdatasync or `RWF_DSYNC` for FLUSH/FUA, circular space
//! management) and the journal thread that drives it on its own ring.
//!
//! The core owns no ring. A *driver* locks it, lets it place staged
//! records and an fdatasync ([`Core::pump`]), takes the submissions it
//! produced ([`Sub`]) and pushes them on its own io_uring; whichever driver
//! reaps a completion hands it back ([`Core::complete`]). The journal
//! thread is one driver (for appends from threads without a ring of their
//! own, and for space waits and timeouts); a ublk queue is another
//! ([`super::Lane`]), so its writes' records and its FLUSH's fdatasync go
//! out on the queue's own ring. Every decision is taken under the core's
//! lock, so the record chain, the durable frontier and the sync state are
//! one, whichever ring carries an I/O. Completions (`Done`) are collected
//! under the lock and run after it is released ([`CoreCell::with`]): a
//! completion may take volume locks, and the volume holds its state lock
//! while it appends.
//!
//! Positions are virtual (`v`): they only grow; the physical offset is
//! `data_start + v % data_size` (the record area starts after the two
//! superblock slots). A record never straddles the end: when it does not
//! fit, a wrap record is written and the record goes to the start.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use io_uring::{opcode, squeue, types, IoUring};
use tracing::{error, warn};

use super::staging::Staging;
use super::{write_super, Dev, Done, JournalOptions, JournalShared, Msg, WriterStart};
use crate::error::{Error, ErrorKind, Result};
use crate::format::journal::{JournalSuper, RecordHeader, RecordKind, BLOCK};
use crate::format::round_up;
use crate::io::{AlignedBuf, Span};
use crate::units::{Epoch, JournalSeq};

const FSYNC_ID: u64 = u64::MAX;

/// One journal I/O a driver must push on its ring: a record write or an
/// fdatasync. Its completion goes back through [`Core::complete`] with
/// [`Sub::id`] and the result.
pub struct Sub {
    sqe: squeue::Entry,
    id: u64,
}

impl Sub {
    /// Which I/O this is, for [`super::Lane::complete`].
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The submission entry (its user data is free for the driver).
    ///
    /// # Safety
    /// The entry names memory the journal owns (the record's header,
    /// padding and the batch buffers its data sits in). It stays allocated
    /// and unchanged until [`super::Lane::complete`] is called with this
    /// id; the caller must push the entry on a ring that it keeps alive,
    /// and report the completion, before the journal is dropped. The
    /// journal leaks, rather than frees, records whose completion was never
    /// reported.
    pub unsafe fn into_sqe(self) -> squeue::Entry {
        self.sqe
    }
}

struct Rec {
    id: u64,
    vpos: u64,
    first_seq: JournalSeq,
    entries: u64,
    /// Epoch of the session that wrote it.
    epoch: Epoch,
    done: bool,
    /// What its write reads from, until it completes.
    io: Option<RecIo>,
    acks: Vec<(bool, Done)>,
    /// Its id in the power-cut log, if one records.
    log_id: Option<u64>,
    /// Written with `RWF_DSYNC`, submitted when every record before it was
    /// already synced: once it completes, it and everything before it are
    /// durable without an fdatasync.
    dsync: bool,
}

/// The memory a record is written from.
enum RecIo {
    /// One buffer: the header, the data copied after it, zero padding.
    Copied(AlignedBuf),
    /// The header block, then the data straight from the batch buffers it
    /// sits in (`writev`), then `pad` bytes of [`ZERO_BLOCK`]: every span is
    /// aligned in memory and length as the journal's O_DIRECT needs.
    Vectored {
        head: AlignedBuf,
        segs: Vec<Span>,
        pad: usize,
        iov: IoVecs,
    },
}

/// A record's zero padding, written from here (never written to).
#[repr(C, align(4096))]
struct ZeroBlock([u8; BLOCK as usize]);
static ZERO_BLOCK: ZeroBlock = ZeroBlock([0; BLOCK as usize]);

/// The iovec array of a vectored record write.
struct IoVecs(Vec<libc::iovec>);

// SAFETY: the iovecs point into the header and spans owned by the same
// `RecIo`, which moves with them; they are only read (by the kernel).
unsafe impl Send for IoVecs {}

impl RecIo {
    /// Bytes the write covers.
    fn len(&self) -> usize {
        match self {
            RecIo::Copied(b) => b.len(),
            RecIo::Vectored {
                head, segs, pad, ..
            } => head.len() + segs.iter().map(|s| s.len()).sum::<usize>() + pad,
        }
    }

    /// The bytes as one buffer (for the power-cut log).
    fn gather(&self) -> Vec<u8> {
        match self {
            RecIo::Copied(b) => b.to_vec(),
            RecIo::Vectored {
                head, segs, pad, ..
            } => {
                let mut v = head.to_vec();
                for s in segs {
                    v.extend_from_slice(s);
                }
                v.resize(v.len() + pad, 0);
                v
            }
        }
    }
}

/// Whether `segs` can be written as they are with O_DIRECT, given the
/// journal's alignment `dio` (memory, length): each segment of a direct
/// write must start on the memory alignment and be a multiple of the
/// logical block size in length. Padding to 4096 is then a multiple too.
pub(super) fn direct_ok(segs: &[Span], dio: (usize, usize)) -> bool {
    segs.iter()
        .all(|s| (s.as_ptr() as usize).is_multiple_of(dio.0) && s.len().is_multiple_of(dio.1))
}

/// The journal's direct-I/O alignment (memory, length), from `statx`, or
/// 4096 for both when the kernel does not say (sound on 512-byte and 4 KiB
/// logical-block devices alike).
pub(super) fn journal_dio(file: &File) -> (usize, usize) {
    let ok = |a: usize| a.is_power_of_two() && a <= BLOCK as usize;
    match crate::io::dio_alignment(file) {
        Some((m, o)) if ok(m) && ok(o) => (m, o),
        _ => (BLOCK as usize, BLOCK as usize),
    }
}

impl Rec {
    /// Highest sequence it holds (first - 1 for a wrap record).
    fn last_seq(&self) -> JournalSeq {
        JournalSeq(self.first_seq.0 + self.entries - 1)
    }
}

pub(crate) struct Core {
    file: File,
    path: PathBuf,
    /// The superblock as durable in slot `slot`.
    sb: JournalSuper,
    /// Slot of the last superblock write; the next goes to the other one.
    slot: u32,
    data_start: u64,
    data_size: u64,
    persisted_start_v: u64,
    head_v: u64,
    /// First sequence of the next record (chain continuity).
    next_seq: JournalSeq,
    records: VecDeque<Rec>,
    next_id: u64,
    /// Id of the first record not yet known complete in order.
    durable_id: u64,
    durable_seq: JournalSeq,
    synced_seq: JournalSeq,
    fsync_inflight: Option<JournalSeq>,
    /// Record writes in flight, on every driver's ring.
    inflight_writes: usize,
    staging: Arc<Staging>,
    flushes: Vec<(JournalSeq, Done)>,
    depth: usize,
    io_timeout: Duration,
    shared: Arc<JournalShared>,
    failed: Option<Error>,
    blocked_since: Option<Instant>,
    last_space_request: Option<Instant>,
    /// Direct-I/O alignment (memory, length) of the journal file.
    dio: (usize, usize),
    /// Test hook: the power-cut recorder.
    io_log: Option<Arc<crate::powercut::IoLog>>,
    /// The power-cut log's id of the fdatasync in flight.
    fsync_log_id: Option<u64>,
    /// Submissions made under the current lock, for the driver holding it.
    subs: Vec<Sub>,
    /// Completions to run once the lock is released.
    out: Vec<(Done, Result<()>)>,
    /// Shut down: nothing more is placed.
    closed: bool,
    /// Pumping for a lane (`pump_lane`).
    lane_pump: bool,
    /// A lane's placement stopped at a replay-start move, left to the
    /// journal thread.
    deferred: bool,
}

/// The core behind its lock.
pub(crate) struct CoreCell(Mutex<Core>);

impl CoreCell {
    fn lock(&self) -> MutexGuard<'_, Core> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Run `f` on the locked core; then, with the lock released, run the
    /// completions it produced. Returns `f`'s result and the submissions
    /// it produced, which the caller must push on its ring.
    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut Core) -> T) -> (T, Vec<Sub>) {
        let (t, subs, out) = {
            let mut c = self.lock();
            let t = f(&mut c);
            (t, std::mem::take(&mut c.subs), std::mem::take(&mut c.out))
        };
        for (d, r) in out {
            d(r);
        }
        (t, subs)
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        if self.inflight_writes > 0 {
            // A driver never reported these completions: the kernel may
            // still read the memory, so leak it rather than free it.
            for r in self.records.iter_mut() {
                if let Some(b) = r.io.take() {
                    std::mem::forget(b);
                }
            }
        }
    }
}

impl Core {
    /// `dev` is the journal file or device and its path; `start` is the
    /// durable superblock (this session's epoch) and the chain it inherits.
    pub(crate) fn new_cell(
        dev: (File, PathBuf),
        start: WriterStart,
        opts: &JournalOptions,
        shared: Arc<JournalShared>,
        staging: Arc<Staging>,
    ) -> CoreCell {
        let (file, path) = dev;
        let WriterStart {
            sb,
            slot,
            records: scanned,
            head_v,
            persisted_start_v,
            next_seq,
        } = start;
        let data_start = sb.data_start();
        let data_size = sb.size - data_start;
        shared.capacity_bytes.store(data_size, Ordering::Relaxed);
        let depth = opts.depth.max(1) as usize;
        let mut records = VecDeque::new();
        let mut next_id = 1;
        for r in &scanned {
            records.push_back(Rec {
                id: next_id,
                vpos: r.vpos,
                first_seq: r.first_seq,
                entries: r.entries,
                epoch: r.epoch,
                done: true,
                io: None,
                acks: vec![],
                log_id: None,
                dsync: false,
            });
            next_id += 1;
        }
        let c = Core {
            dio: journal_dio(&file),
            file,
            path,
            sb,
            slot,
            data_start,
            data_size,
            persisted_start_v,
            head_v,
            next_seq,
            records,
            next_id,
            durable_id: next_id,
            durable_seq: JournalSeq(next_seq.0 - 1),
            synced_seq: JournalSeq(0),
            fsync_inflight: None,
            inflight_writes: 0,
            staging,
            flushes: Vec::new(),
            depth,
            io_timeout: opts.io_timeout,
            shared,
            failed: None,
            blocked_since: None,
            last_space_request: None,
            io_log: opts.io_log.clone(),
            fsync_log_id: None,
            subs: Vec::new(),
            out: Vec::new(),
            closed: false,
            lane_pump: false,
            deferred: false,
        };
        c.publish_usage();
        CoreCell(Mutex::new(c))
    }

    /// Place what can be placed: drop released records, submit staged
    /// records while depth and space allow, and the fdatasync a FLUSH or
    /// FUA write waits for. The submissions land in `subs` for the driver.
    pub(crate) fn pump(&mut self) {
        if self.closed {
            return;
        }
        self.pop_released();
        self.fill();
        self.maybe_fsync();
    }

    /// [`Core::pump`] for a lane: the same, except that a record needing
    /// the replay start moved first is left to the journal thread.
    pub(crate) fn pump_lane(&mut self) {
        self.lane_pump = true;
        self.pump();
        self.lane_pump = false;
    }

    /// A FLUSH covering every sequence up to `upto`.
    pub(crate) fn add_flush(&mut self, upto: JournalSeq, done: Done) {
        if let Some(e) = &self.failed {
            self.out.push((done, Err(e.duplicate())));
        } else if self.closed {
            self.out.push((
                done,
                Err(Error::new(ErrorKind::Closed, "journal is shut down")),
            ));
        } else if upto <= self.synced_seq {
            self.out.push((done, Ok(())));
        } else {
            self.flushes.push((upto, done));
        }
    }

    /// Whether any journal I/O is in flight, on any ring.
    pub(crate) fn busy(&self) -> bool {
        self.inflight_writes > 0 || self.fsync_inflight.is_some()
    }

    /// Whether a FLUSH or FUA write waits for an fdatasync that could be
    /// submitted now.
    fn sync_ready(&self) -> bool {
        self.fsync_inflight.is_none() && self.flushes.iter().any(|(u, _)| *u <= self.durable_seq)
    }

    fn phys(&self, v: u64) -> u64 {
        self.data_start + v % self.data_size
    }

    fn publish_usage(&self) {
        self.shared
            .used_bytes
            .store(self.head_v - self.tail_v(), Ordering::Relaxed);
    }

    fn tail_v(&self) -> u64 {
        self.records.front().map_or(self.head_v, |r| r.vpos)
    }

    /// Drop released, completed records from the front.
    fn pop_released(&mut self) {
        let released = JournalSeq(self.shared.released.load(Ordering::SeqCst));
        let mut popped = false;
        while let Some(r) = self.records.front() {
            if r.done && r.id < self.durable_id && r.last_seq() <= released {
                self.records.pop_front();
                popped = true;
            } else {
                break;
            }
        }
        if popped {
            self.publish_usage();
        }
    }

    /// Persist the replay start at the current tail so the space before it
    /// may be overwritten.
    fn persist_start(&mut self) -> Result<()> {
        let tail_v = self.tail_v();
        if tail_v == self.persisted_start_v {
            return Ok(());
        }
        let (seq, epoch) = self
            .records
            .front()
            .map_or((self.next_seq, self.sb.epoch), |r| (r.first_seq, r.epoch));
        let mut sb = self.sb.clone();
        sb.start_offset = self.phys(tail_v);
        sb.start_seq = seq;
        // The record at the new start (or, for an empty chain, the next
        // one this session writes) has exactly this epoch: a stale record
        // of an older session found there later never validates.
        sb.start_epoch = epoch;
        sb.update_seq += 1;
        // Crash ordering: the new start is durable (write + fdatasync)
        // before any record is written into the space it frees. It goes to
        // the other slot, so a torn write leaves the previous start, whose
        // space nothing has overwritten yet.
        let slot = 1 - self.slot;
        let dev = Dev {
            file: &self.file,
            path: &self.path,
            log: self.io_log.as_deref(),
        };
        write_super(&dev, &sb, slot)?;
        self.sb = sb;
        self.slot = slot;
        self.persisted_start_v = tail_v;
        Ok(())
    }

    /// Reserve `len` bytes at the head; returns the virtual position of the
    /// wrap needed first (if any) or None when there is no space.
    fn reserve(&mut self, len: u64) -> Option<(u64, Option<u64>)> {
        let p = self.phys(self.head_v);
        let wrap = if p + len > self.sb.size {
            Some(self.sb.size - p)
        } else {
            None
        };
        let need = len + wrap.unwrap_or(0);
        let fits = |w: &Core| w.data_size - (w.head_v - w.persisted_start_v) >= need;
        if !fits(self) {
            if self.data_size - (self.head_v - self.tail_v()) < need {
                return None;
            }
            if self.lane_pump {
                // The space is free but the replay start must move first
                // (a superblock write and fdatasync): not on a lane, whose
                // queue thread and every other driver would wait under the
                // lock. The journal thread does it and places the record.
                self.deferred = true;
                return None;
            }
            if let Err(e) = self.persist_start() {
                self.fail(e);
                return None;
            }
            if !fits(self) {
                return None;
            }
        }
        Some((self.head_v, wrap))
    }

    fn submit(&mut self, mut rec: Rec, phys: u64) {
        if let (Some(l), Some(io)) = (&self.io_log, rec.io.as_ref()) {
            rec.log_id = Some(l.journal_write(phys, &io.gather()));
        }
        let fd = types::Fd(self.file.as_raw_fd());
        let flags = if rec.dsync { libc::RWF_DSYNC } else { 0 };
        let sqe = match rec.io.as_ref().expect("record memory") {
            RecIo::Copied(buf) => opcode::Write::new(fd, buf.as_ptr(), buf.len() as u32)
                .offset(phys)
                .rw_flags(flags)
                .build(),
            RecIo::Vectored { iov, .. } => {
                opcode::Writev::new(fd, iov.0.as_ptr(), iov.0.len() as u32)
                    .offset(phys)
                    .rw_flags(flags)
                    .build()
            }
        };
        let id = rec.id;
        self.records.push_back(rec);
        // The buffers (and the iovec array naming them) are owned by the
        // record in `self.records` (spans keep their batch buffers
        // allocated and unchanged) and are neither freed nor reused until
        // this write's completion is reported (`complete`); see
        // `Sub::into_sqe`.
        self.subs.push(Sub { sqe, id });
        self.inflight_writes += 1;
        self.shared.records.fetch_add(1, Ordering::Relaxed);
    }

    /// Submit `io` as the record at the head, which then advances by
    /// `vlen` (the record's size, or for a wrap record the rest of the
    /// journal up to its end).
    fn place(
        &mut self,
        first_seq: JournalSeq,
        entries: u64,
        io: RecIo,
        acks: Vec<(bool, Done)>,
        vlen: u64,
        dsync: bool,
    ) {
        let id = self.next_id;
        self.next_id += 1;
        let phys = self.phys(self.head_v);
        let rec = Rec {
            id,
            vpos: self.head_v,
            first_seq,
            entries,
            epoch: self.sb.epoch,
            done: false,
            io: Some(io),
            acks,
            log_id: None,
            dsync,
        };
        self.head_v += vlen;
        self.submit(rec, phys);
    }

    /// Submit staged records while depth and space allow.
    fn fill(&mut self) {
        while self.failed.is_none() && self.inflight_writes < self.depth {
            let Some(st) = self.staging.take() else {
                return;
            };
            let total = BLOCK + round_up(st.data_len as u64, BLOCK);
            let Some((_, wrap)) = self.reserve(total) else {
                self.staging.unget(st);
                if self.failed.is_some() {
                    return;
                }
                if std::mem::take(&mut self.deferred) {
                    self.shared.lane_deferrals.fetch_add(1, Ordering::Relaxed);
                    self.shared.wake_writer();
                    return;
                }
                if self.blocked_since.is_none() {
                    self.blocked_since = Some(Instant::now());
                }
                let ask = self
                    .last_space_request
                    .is_none_or(|t| t.elapsed() > Duration::from_millis(20));
                if ask {
                    self.last_space_request = Some(Instant::now());
                    self.shared.want_space();
                }
                return;
            };
            self.blocked_since = None;
            if st.first_seq != self.next_seq {
                self.fail(Error::new(
                    ErrorKind::Io,
                    format!(
                        "journal {}: internal error, record sequence {} where {} was expected",
                        self.path.display(),
                        st.first_seq,
                        self.next_seq
                    ),
                ));
                return;
            }
            if let Some(wrap_len) = wrap {
                let mut buf = self.staging.buffer(BLOCK as usize);
                RecordHeader::encode_in_place(
                    &mut buf,
                    self.sb.generation,
                    self.sb.epoch,
                    RecordKind::Wrap,
                    self.next_seq,
                    &[],
                    0,
                );
                self.place(
                    self.next_seq,
                    0,
                    RecIo::Copied(buf),
                    vec![],
                    wrap_len,
                    false,
                );
            }
            let n = st.entries.len();
            debug_assert_eq!(RecordHeader::header_bytes_for(n) as u64, BLOCK);
            let io = self.record_io(&st, total as usize);
            let dsync = wrap.is_none() && self.dsync_ok(&st.acks);
            self.next_seq = JournalSeq(st.first_seq.0 + n as u64);
            self.place(st.first_seq, n as u64, io, st.acks, total, dsync);
            self.publish_usage();
        }
    }

    /// Encode staged record `st` (`total` bytes on disk): written from its
    /// spans when they meet the journal's direct-I/O alignment, else copied
    /// once into a record buffer here, by the driver placing it (512-byte
    /// writes on a journal with 4 KiB blocks, or a kernel that does not
    /// report the alignment, so 4096 is assumed).
    fn record_io(&self, st: &super::staging::Staged, total: usize) -> RecIo {
        let (generation, epoch) = (self.sb.generation, self.sb.epoch);
        if direct_ok(&st.segs, self.dio) {
            let mut head = self.staging.buffer(BLOCK as usize);
            // The crc joins the block crcs the write path took where the
            // spans know them (`AppendBuf`), and reads the rest.
            RecordHeader::encode_header(
                &mut head,
                generation,
                epoch,
                RecordKind::Entries,
                st.first_seq,
                &st.entries,
                &st.segs,
            );
            let parts = st.segs.iter().map(|s| &s[..]);
            let pad = total - BLOCK as usize - st.data_len;
            let mut iov = Vec::with_capacity(st.segs.len() + 2);
            let zeros = &ZERO_BLOCK.0[..pad];
            for p in std::iter::once(&head[..]).chain(parts).chain([zeros]) {
                if !p.is_empty() {
                    iov.push(libc::iovec {
                        iov_base: p.as_ptr() as *mut libc::c_void,
                        iov_len: p.len(),
                    });
                }
            }
            return RecIo::Vectored {
                head,
                segs: st.segs.clone(),
                pad,
                iov: IoVecs(iov),
            };
        }
        self.shared.copied.fetch_add(1, Ordering::Relaxed);
        let mut buf = self.staging.buffer(total);
        let mut at = BLOCK as usize;
        for s in &st.segs {
            buf[at..at + s.len()].copy_from_slice(s);
            at += s.len();
        }
        buf[at..].fill(0);
        RecordHeader::encode_in_place(
            &mut buf,
            generation,
            epoch,
            RecordKind::Entries,
            st.first_seq,
            &st.entries,
            st.data_len,
        );
        RecIo::Copied(buf)
    }

    /// Whether the record about to be placed, holding `acks`, is written
    /// with `RWF_DSYNC`: it holds a FUA write, and every record before it
    /// completed and was covered by a completed fdatasync (or was itself
    /// such a write). Then the record's own completion makes the whole
    /// chain up to it durable, and its FUA writes are acknowledged without
    /// an fdatasync: one journal I/O on the writer's ring instead of a
    /// write, then an fdatasync after it completes. A wrap record placed
    /// just before it is still in flight, so it is refused then (the
    /// caller also checks): an unsynced wrap would break the chain replay
    /// follows.
    fn dsync_ok(&self, acks: &[(bool, Done)]) -> bool {
        acks.iter().any(|(fua, _)| *fua)
            && self.inflight_writes == 0
            && self.fsync_inflight.is_none()
            && self.durable_id == self.next_id
            && self.synced_seq.0 + 1 >= self.next_seq.0
    }

    /// Acknowledge the flushes every completed sync covers.
    fn complete_synced_flushes(&mut self) {
        let synced = self.synced_seq;
        let mut i = 0;
        while i < self.flushes.len() {
            if self.flushes[i].0 <= synced {
                let (_, d) = self.flushes.swap_remove(i);
                self.out.push((d, Ok(())));
            } else {
                i += 1;
            }
        }
    }

    fn maybe_fsync(&mut self) {
        if self.failed.is_some() || self.fsync_inflight.is_some() {
            return;
        }
        if !self.flushes.iter().any(|(u, _)| *u <= self.durable_seq) {
            return;
        }
        let sqe = opcode::Fsync::new(types::Fd(self.file.as_raw_fd()))
            .flags(types::FsyncFlags::DATASYNC)
            .build();
        // An fdatasync references no user memory.
        self.subs.push(Sub { sqe, id: FSYNC_ID });
        // Crash ordering: only records already completed are covered; an
        // fdatasync submitted after their completion makes them durable.
        self.fsync_inflight = Some(self.durable_seq);
        self.fsync_log_id = self.io_log.as_ref().map(|l| l.journal_sync_start());
    }

    /// The completion of submission `id` (a [`Sub`]) with result `res`,
    /// reaped by whichever driver's ring carried it.
    pub(crate) fn complete(&mut self, id: u64, res: i32) {
        if id == FSYNC_ID {
            let covered = self.fsync_inflight.take().unwrap_or(JournalSeq(0));
            if res < 0 {
                self.fail(Error::io(
                    format!("fdatasync journal {}", self.path.display()),
                    std::io::Error::from_raw_os_error(-res),
                ));
                return;
            }
            if let (Some(l), Some(id)) = (&self.io_log, self.fsync_log_id.take()) {
                l.journal_sync_done(id);
            }
            self.shared.syncs.fetch_add(1, Ordering::Relaxed);
            self.synced_seq = self.synced_seq.max(covered);
            self.complete_synced_flushes();
            return;
        }
        let Some(front) = self.records.front().map(|r| r.id) else {
            return;
        };
        let Some(rec) = id
            .checked_sub(front)
            .and_then(|i| self.records.get_mut(i as usize))
        else {
            return;
        };
        if rec.done {
            return;
        }
        rec.done = true;
        self.inflight_writes -= 1;
        let len = rec.io.as_ref().map_or(0, |b| b.len());
        let phys = self.data_start + rec.vpos % self.data_size;
        match rec.io.take() {
            Some(RecIo::Copied(b)) | Some(RecIo::Vectored { head: b, .. }) => {
                self.staging.recycle(b)
            }
            None => {}
        }
        if res >= 0 && res as usize == len {
            if let (Some(l), Some(id)) = (&self.io_log, rec.log_id) {
                if rec.dsync {
                    l.journal_write_durable(id);
                } else {
                    l.journal_write_done(id);
                }
            }
        } else {
            let e = if res < 0 {
                Error::io(
                    format!("write journal {} at {phys}", self.path.display()),
                    std::io::Error::from_raw_os_error(-res),
                )
            } else {
                Error::new(
                    ErrorKind::Io,
                    format!(
                        "short write to journal {} at {phys}: {res} of {len} bytes",
                        self.path.display()
                    ),
                )
            };
            self.fail(e);
        }
        self.advance_durable();
    }

    /// Acknowledge records that completed with everything before them.
    fn advance_durable(&mut self) {
        if self.failed.is_some() {
            return;
        }
        let Some(front) = self.records.front().map(|r| r.id) else {
            return;
        };
        while let Some(rec) = self.records.get_mut((self.durable_id - front) as usize) {
            if !rec.done {
                break;
            }
            if rec.entries > 0 {
                self.durable_seq = rec.last_seq();
            }
            let last = rec.last_seq();
            if rec.dsync {
                // Crash ordering: submitted only when everything before it
                // was synced (`dsync_ok`), and an RWF_DSYNC write is durable
                // when it completes, so the chain through `last` is.
                self.synced_seq = self.synced_seq.max(last);
                self.shared.dsync.fetch_add(1, Ordering::Relaxed);
            }
            for (fua, d) in rec.acks.drain(..) {
                if fua {
                    self.flushes.push((last, d));
                } else {
                    self.out.push((d, Ok(())));
                }
            }
            self.durable_id += 1;
        }
        self.complete_synced_flushes();
    }

    pub(crate) fn check_timeout(&mut self) {
        if let Some(t) = self.blocked_since {
            if t.elapsed() > self.io_timeout {
                let e = Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "journal {} full for {:?}: the backend is not taking objects (see earlier errors); failing I/O",
                        self.path.display(),
                        self.io_timeout
                    ),
                );
                error!("{e}");
                self.fail(e);
            }
        }
    }

    pub(crate) fn fail_pending(&mut self, e: &Error) {
        let victims = self.staging.fail_take(e);
        self.out
            .extend(victims.into_iter().map(|d| (d, Err(e.duplicate()))));
    }

    /// Enter the failed state: every waiter and every later request fails.
    pub(crate) fn fail(&mut self, e: Error) {
        if self.failed.is_none() {
            error!("journal failed: {e:?}");
        }
        self.fail_pending(&e);
        for r in self.records.iter_mut() {
            for (_, d) in r.acks.drain(..) {
                self.out.push((d, Err(e.duplicate())));
            }
        }
        for (_, d) in self.flushes.drain(..) {
            self.out.push((d, Err(e.duplicate())));
        }
        if self.failed.is_none() {
            self.failed = Some(e);
        }
    }

    /// Whether a clean shutdown may finish: nothing in flight, and nothing
    /// staged unless it can never be written.
    pub(crate) fn can_finish(&self, clean: bool) -> bool {
        !self.busy() && (self.staging.is_empty() || self.failed.is_some() || !clean)
    }

    /// Shut down: nothing more is placed by any driver. A clean finish
    /// persists the replay start at the oldest record not yet released.
    pub(crate) fn finish(&mut self, clean: bool) -> Result<()> {
        self.closed = true;
        for (_, d) in self.flushes.drain(..) {
            self.out.push((
                d,
                Err(Error::new(ErrorKind::Closed, "journal is shut down")),
            ));
        }
        if !clean {
            return Ok(());
        }
        if let Some(e) = &self.failed {
            return Err(e.duplicate());
        }
        self.pop_released();
        if !self.records.is_empty() {
            warn!(
                journal = %self.path.display(),
                records = self.records.len(),
                "journal closed with records not yet in the backend; they will be replayed"
            );
        }
        self.persist_start()
    }
}

/// The journal thread: a driver on its own ring for appends from threads
/// without one, FLUSHes sent to it, released space, space waits and
/// timeouts, and shutdown.
pub(crate) struct Writer {
    core: Arc<CoreCell>,
    ring: IoUring,
    /// This ring's submissions in flight.
    inflight: usize,
    path: PathBuf,
    shutdown: Option<(bool, crossbeam_channel::Sender<Result<()>>)>,
    /// When the shutdown was asked for.
    shutdown_since: Option<Instant>,
    /// Test hook: every batch of completions reaped on this ring is held
    /// this long first ([`DELAY_ENV`]).
    fault_delay: Option<Duration>,
}

/// Test hook (failpoint): `LSVD_FAULT_JOURNAL_DELAY_MS=N` holds every batch
/// of journal completions reaped by the journal's own ring N ms, a journal
/// device that is slow (the NBD server's and the engine's writes; a ublk
/// queue's own ring is not slowed). For tests of clients faster than the
/// journal.
pub const DELAY_ENV: &str = "LSVD_FAULT_JOURNAL_DELAY_MS";

fn fault_delay() -> Option<Duration> {
    let ms = std::env::var(DELAY_ENV).ok()?.parse::<u64>().ok()?;
    (ms > 0).then(|| {
        tracing::warn!(
            "{DELAY_ENV}={ms}: every journal completion is delayed by {ms} ms (test hook)"
        );
        Duration::from_millis(ms)
    })
}

/// How long a shutdown waits for journal I/O in flight on other drivers'
/// rings (a ublk queue waits for its own before it exits, so this only
/// bounds a lane that lost its ring).
const SHUTDOWN_WAIT: Duration = Duration::from_secs(60);

impl Writer {
    pub(crate) fn new(core: Arc<CoreCell>, depth: u32, path: PathBuf) -> Result<Writer> {
        // Room for `depth` records, a wrap record before each, and an
        // fdatasync.
        let ring = IoUring::new((depth.max(1) * 2 + 4).next_power_of_two())
            .map_err(|e| Error::io("create journal io_uring", e))?;
        Ok(Writer {
            core,
            ring,
            inflight: 0,
            path,
            shutdown: None,
            shutdown_since: None,
            fault_delay: fault_delay(),
        })
    }

    pub(crate) fn run(mut self, rx: Receiver<Msg>) {
        loop {
            let (sync_ready, blocked, busy) = self
                .core
                .with(|c| (c.sync_ready(), c.blocked_since.is_some(), c.busy()))
                .0;
            if self.inflight == 0 && !sync_ready {
                let wait = if blocked {
                    Duration::from_millis(5)
                } else if busy && self.shutdown.is_some() {
                    // Another driver's I/O: look again soon, to finish the
                    // shutdown once it completes.
                    Duration::from_millis(1)
                } else {
                    Duration::from_millis(500)
                };
                match rx.recv_timeout(wait) {
                    Ok(m) => self.handle(m),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => {
                        if self.shutdown.is_none() {
                            let (tx, _rx) = crossbeam_channel::bounded(1);
                            self.shutdown = Some((false, tx));
                            self.shutdown_since = Some(Instant::now());
                        }
                    }
                }
            }
            while let Ok(m) = rx.try_recv() {
                self.handle(m);
            }
            if let Some(since) = self.shutdown_since {
                // Only other drivers' I/O is given up on: this ring's own
                // is waited for below, as before lanes.
                if self.inflight == 0 && since.elapsed() > SHUTDOWN_WAIT {
                    // Another driver's I/O never came back (a lane whose
                    // ring went away): the core leaks its memory when
                    // dropped; the close fails instead of hanging.
                    let e = Error::new(
                        ErrorKind::Timeout,
                        format!(
                            "journal {}: I/O submitted on a queue's ring did not complete within {SHUTDOWN_WAIT:?}",
                            self.path.display()
                        ),
                    );
                    error!("{e}");
                    self.core.with(|c| c.fail(e.duplicate()));
                    if let Some((_, tx)) = self.shutdown.take() {
                        let _ = tx.send(Err(e));
                    }
                    return;
                }
            }
            let crash = matches!(self.shutdown, Some((false, _)));
            let clean = self.shutdown.as_ref().map(|(c, _)| *c);
            let (finish, subs) = self.core.with(|c| {
                if crash {
                    // Crash: nothing queued is written.
                    let e = Error::new(ErrorKind::Closed, "volume crashed (test)");
                    c.fail_pending(&e);
                }
                c.pump();
                c.check_timeout();
                match clean {
                    Some(clean) if c.can_finish(clean) => Some(c.finish(clean)),
                    _ => None,
                }
            });
            self.push(subs);
            if let Some(r) = finish {
                if let Some((_, tx)) = self.shutdown.take() {
                    let _ = tx.send(r);
                }
                return;
            }
            if self.inflight > 0 {
                if let Err(e) = self.ring.submit_and_wait(1) {
                    if e.raw_os_error() != Some(libc::EINTR) {
                        let e =
                            Error::io(format!("io_uring submit for {}", self.path.display()), e);
                        self.core.with(|c| c.fail(e));
                        self.abandon_ring();
                    }
                }
                self.reap();
            }
        }
    }

    fn handle(&mut self, m: Msg) {
        match m {
            Msg::Flush { upto, done } => {
                self.core.with(|c| c.add_flush(upto, done));
            }
            Msg::Wake => {}
            Msg::Shutdown { clean, done } => {
                self.shutdown = Some((clean, done));
                self.shutdown_since.get_or_insert_with(Instant::now);
            }
        }
    }

    /// Push the core's submissions on this ring.
    fn push(&mut self, subs: Vec<Sub>) {
        for sub in subs {
            let id = sub.id();
            // SAFETY: the ring is this thread's and outlives the I/O
            // (`abandon_ring` waits for completions before giving up, and
            // the core leaks what never completed), and every completion
            // is reported to the core (`reap`).
            let sqe = unsafe { sub.into_sqe() }.user_data(id);
            // SAFETY: as above.
            let mut pushed = unsafe { self.ring.submission().push(&sqe) }.is_ok();
            if !pushed {
                // The queue is sized for depth + wraps + fsync; flush it
                // and retry.
                let _ = self.ring.submit();
                // SAFETY: as above.
                pushed = unsafe { self.ring.submission().push(&sqe) }.is_ok();
            }
            if pushed {
                self.inflight += 1;
            } else {
                let e = Error::new(ErrorKind::Io, "journal io_uring submission queue full");
                // Never submitted: complete it as failed so the core does
                // not wait for it.
                self.core.with(|c| {
                    c.fail(e);
                    c.complete(id, -libc::EIO);
                });
            }
        }
    }

    fn reap(&mut self) {
        let cqes: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        if cqes.is_empty() {
            return;
        }
        if let Some(d) = self.fault_delay {
            std::thread::sleep(d);
        }
        self.inflight -= cqes.len();
        self.core.with(|c| {
            for (id, res) in cqes {
                c.complete(id, res);
            }
        });
    }

    /// After a submit error, wait (bounded) for whatever is still in the
    /// kernel so no buffer is freed under it (the core leaks the records
    /// of any still in flight when it is dropped).
    fn abandon_ring(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.inflight > 0 && Instant::now() < deadline {
            let _ = self.ring.submit_and_wait(1);
            self.reap();
        }
    }
}
