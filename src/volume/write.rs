//! The write path: writes, trims, write-zeroes and FLUSH go into the open
//! batch and the overlay under the state lock and on to the journal; full
//! or old batches are sealed and handed to the destager (the flusher thread
//! seals old ones).

use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};
use crate::format::journal::RecordEntry;
use crate::format::object::OpKind;
use crate::format::{self, CRC_BLOCK};
use crate::io::Span;
use crate::journal::Append;
use crate::units::{JournalSeq, Lba, ObjSeq, SECTOR};
use crate::wait::{self, Deadline};

use super::batch::Batch;
use super::destage::DestageMsg;
use super::{Completion, Inner, State, Volume};

/// Most operations in one data object.
const MAX_BATCH_OPS: usize = 65536;
/// Largest single trim/zero operation in sectors.
const MAX_DISCARD_SECTORS: u64 = 1 << 31;

/// Why a client's synchronous write, trim, write-zeroes or (without
/// `hard_flush`) flush has no deadline of its own.
const JOURNAL_BOUNDS: &str = "the journal acknowledges or fails every append and flush; \
     one waiting for journal space fails after io_timeout_msec, and only the journal \
     device's own I/O is unbounded";

impl Inner {
    /// Sealed batches allowed to wait for the backend. Their data is also
    /// in the journal, so the journal's size is the real bound: writes back
    /// up until the journal is full, then throttle there. The memory this
    /// takes mirrors the journal (at most about `wlog_bytes`).
    pub(super) fn max_sealed(&self) -> usize {
        let journal_objs = (self.config.wlog_bytes / self.config.backend_obj_bytes) as usize;
        journal_objs.max(self.config.backend_write_window as usize + 2)
    }

    /// Wait until a batch can be added (bounded memory while the backend is
    /// slow), then return the locked state.
    pub(super) fn wait_for_room(&self) -> Result<MutexGuard<'_, State>> {
        self.room(true)
            .map(|st| st.expect("a blocking wait returns the state"))
    }

    /// The locked state once a batch can be added. With `wait == false`,
    /// `Ok(None)` instead of waiting when there is no room.
    pub(super) fn room(&self, wait: bool) -> Result<Option<MutexGuard<'_, State>>> {
        let max = self.max_sealed();
        let st = self.lock_state();
        let st = if st.closed || st.sealed.len() < max {
            st
        } else if !wait {
            return Ok(None);
        } else {
            // The destager frees room as objects are applied (and notifies
            // `state_cv`); a closing volume ends the wait as well.
            let r = wait::wait_until(
                st,
                &self.state_cv,
                &format!("image {}: room for new writes", self.image),
                &self.cancel,
                Deadline::After(self.io_timeout()),
                |st| st.closed || st.sealed.len() < max,
            );
            match r {
                Ok(st) => st,
                Err(e) if e.kind() == ErrorKind::Timeout => {
                    let waiting = self.lock_state().sealed.len();
                    let last = self.backend_error.lock().ok().and_then(|g| g.clone());
                    return Err(Error::new(
                        ErrorKind::Timeout,
                        format!(
                            "image {}: {waiting} objects waiting for the backend for {} ms (last backend error: {})",
                            self.image,
                            self.config.io_timeout_msec,
                            last.unwrap_or_else(|| "none, it is slow".into())
                        ),
                    ));
                }
                Err(e) => return Err(e),
            }
        };
        if st.closed {
            return Err(Error::new(
                ErrorKind::Closed,
                format!("image {} is closed", self.image),
            ));
        }
        Ok(Some(st))
    }

    /// Hand the operations just pushed (`first` up to the state's next
    /// sequence) to the journal; `done` is taken once they are appended.
    pub(super) fn journal_append(
        &self,
        st: &mut State,
        first: JournalSeq,
        entries: &[RecordEntry],
        data: &[Span],
        fua: bool,
        done: &mut Option<Completion>,
    ) -> Result<Option<JournalSeq>> {
        if let Some(e) = self.fenced_error() {
            return Err(e);
        }
        let last = JournalSeq(st.next_jseq.0 - 1);
        let Some(j) = st.journal.as_ref() else {
            return Err(Error::new(ErrorKind::Closed, "journal is not open"));
        };
        j.append(Append {
            first_seq: first,
            entries,
            data,
            fua,
            done: done.take(),
        });
        st.last_sent = last;
        Ok(Some(last))
    }

    /// `hard_flush`: close the open batch and return a completion that,
    /// once the journal is done, waits until every object up to it is
    /// applied in the backend before it runs `done`. So a FLUSH, or a FUA
    /// request just pushed, completes only when the backend holds it and
    /// everything before it.
    pub(super) fn then_in_backend(&self, st: &mut State, done: Completion) -> Completion {
        self.seal(st);
        let target = ObjSeq(st.next_obj.0 - 1);
        let tx = self.destage_tx.clone();
        Box::new(move |r: Result<()>| match r {
            Ok(()) => {
                if let Err(e) = tx.send(DestageMsg::WaitApplied(target, done)) {
                    if let DestageMsg::WaitApplied(_, d) = e.0 {
                        d(Err(Error::new(ErrorKind::Closed, "volume stopped")));
                    }
                }
            }
            Err(e) => done(Err(e)),
        })
    }

    /// A FUA request was just pushed: with `hard_flush` it completes only
    /// once the backend holds it, as a FLUSH does (see `then_in_backend`).
    pub(super) fn hard_fua(&self, st: &mut State, fua: bool, done: &mut Option<Completion>) {
        if !(fua && self.config.hard_flush) {
            return;
        }
        if let Some(d) = done.take() {
            *done = Some(self.then_in_backend(st, d));
        }
    }

    /// Close the open batch and hand it to the destager.
    pub(super) fn seal(&self, st: &mut State) {
        if st.open.is_empty() {
            return;
        }
        let id = st.next_batch_id;
        st.next_batch_id += 1;
        let cap = self.config.backend_obj_bytes as usize;
        let fresh = match self.spare_buffers.take() {
            Some(buf) => Batch::with_buffer(id, buf),
            None => Batch::new(id, cap),
        };
        let mut b = std::mem::replace(&mut st.open, fresh);
        self.open_aligned.store(true, Ordering::Relaxed);
        b.obj = st.next_obj;
        st.next_obj = st.next_obj.next();
        let b = Arc::new(b);
        st.sealed.insert(b.id, b.clone());
        let _ = self.destage_tx.send(DestageMsg::Batch(b));
    }

    /// Add one operation to the open batch and the overlay; returns the
    /// span holding a write's data, which the journal writes from.
    /// `blocks`: the crcs of `data`'s 4 KiB blocks, if taken (see
    /// [`Batch::push`]).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn push_op(
        &self,
        st: &mut State,
        seq: JournalSeq,
        kind: OpKind,
        lba: Lba,
        sectors: u32,
        data: &[u8],
        blocks: Option<&[u32]>,
    ) -> Option<Span> {
        let obj_bytes = self.config.backend_obj_bytes;
        if !st.open.is_empty()
            && (st.open.data_bytes() + data.len() as u64 > obj_bytes
                || st.open.ops.len() >= MAX_BATCH_OPS)
        {
            self.seal(st);
        }
        let (loc, span) = st.open.push(seq, kind, lba, sectors, data, blocks);
        let mut scratch = std::mem::take(&mut st.scratch);
        scratch.clear();
        st.overlay.update(lba, sectors as u64, loc, &mut scratch);
        st.scratch = scratch;
        st.next_jseq = seq.next();
        if st.open.data_bytes() >= obj_bytes {
            self.seal(st);
        }
        self.open_aligned.store(
            st.open.data_bytes().is_multiple_of(CRC_BLOCK as u64),
            Ordering::Relaxed,
        );
        span
    }

    /// Push a trim or write-zeroes of `[offset, offset+len)` (bytes) as
    /// operations of at most `MAX_DISCARD_SECTORS`; returns their journal
    /// entries. No range check: the caller has done it.
    pub(super) fn push_discard(
        &self,
        st: &mut State,
        offset: u64,
        len: u64,
        kind: OpKind,
    ) -> Vec<RecordEntry> {
        let mut entries = Vec::new();
        let mut lba = offset / SECTOR;
        let end = (offset + len) / SECTOR;
        while lba < end {
            let n = (end - lba).min(MAX_DISCARD_SECTORS);
            let seq = st.next_jseq;
            self.push_op(st, seq, kind, Lba(lba), n as u32, &[], None);
            entries.push(RecordEntry {
                lba: Lba(lba),
                sectors: n as u32,
                kind,
            });
            lba += n;
        }
        entries
    }
}

impl Volume {
    /// Write and wait for the journal (not a FLUSH).
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.sync_submit("write", |d| {
            self.submit_write(offset, data, false, d).map(|_| ())
        })
    }

    /// Write with FUA: durable across a host crash when it returns (with
    /// `hard_flush`, also in the backend, so it survives losing the journal).
    pub fn write_fua(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.sync_submit("FUA write", |d| {
            self.submit_write(offset, data, true, d).map(|_| ())
        })
    }

    /// Submit `what` through `f` and sleep until the completion runs, the
    /// volume stops, or the completion is dropped without running. No
    /// deadline of its own ([`JOURNAL_BOUNDS`]). The waiter parks on a
    /// condition variable (`wait::Pending`): a spinning channel receive
    /// would burn the CPU the journal thread needs when many callers wait
    /// at once.
    pub(super) fn sync_submit(
        &self,
        what: &str,
        f: impl FnOnce(Completion) -> Result<()>,
    ) -> Result<()> {
        wait::for_completion(
            &format!("{what} to image {}", self.inner.image),
            &self.inner.cancel,
            Deadline::Unbounded(JOURNAL_BOUNDS),
            f,
        )
    }

    /// Submit a write without waiting; `done` runs when it is acknowledged.
    /// Writes submitted from one thread are ordered in submission order.
    /// Returns the journal sequence of its last chunk. If this returns an
    /// error, `done` is not called.
    pub fn submit_write(
        &self,
        offset: u64,
        data: &[u8],
        fua: bool,
        done: Completion,
    ) -> Result<JournalSeq> {
        self.submit_write_waiting(offset, data, fua, &mut Some(done))
    }

    /// Like [`Volume::submit_write`], but never waits for journal space:
    /// `Ok(None)` when there is none, and `done` is left in place for a
    /// later (blocking) attempt. Used by the ublk queue threads, which must
    /// not stall while the backend drains.
    pub fn try_submit_write(
        &self,
        offset: u64,
        data: &[u8],
        fua: bool,
        done: &mut Option<Completion>,
    ) -> Result<Option<JournalSeq>> {
        self.write_op(offset, data, fua, false, done)
    }

    /// Like [`Volume::submit_write`] (it waits for journal space, at most
    /// `io_timeout_msec`), but on error `done` is left in place, neither
    /// called nor dropped, so that the caller can complete it with that
    /// error: the ublk worker that takes a write [`Volume::try_submit_write`]
    /// found no room for, whose request must fail as what happened (a
    /// timeout), not as an abandoned operation.
    pub fn submit_write_waiting(
        &self,
        offset: u64,
        data: &[u8],
        fua: bool,
        done: &mut Option<Completion>,
    ) -> Result<JournalSeq> {
        self.write_op(offset, data, fua, true, done)
            .map(|s| s.expect("a blocking submit always submits"))
    }

    pub(super) fn write_op(
        &self,
        offset: u64,
        data: &[u8],
        fua: bool,
        wait: bool,
        done: &mut Option<Completion>,
    ) -> Result<Option<JournalSeq>> {
        let inner = &self.inner;
        inner.check_writable()?;
        inner.check_range("write", offset, data.len() as u64)?;
        let chunk = inner.config.wlog_chunk_bytes as usize;
        // The crc of each 4 KiB block, taken once here, outside the state
        // lock: the journal record's crc and the object's chunk crcs join
        // them instead of reading the data again (`AppendBuf`). Only for
        // whole blocks, and only while the open batch ends on a block
        // boundary (after a 512-byte write it does not until it is sealed,
        // and crcs taken then would be dropped).
        let blocks = (data.len().is_multiple_of(CRC_BLOCK)
            && chunk.is_multiple_of(CRC_BLOCK)
            && inner.open_aligned.load(Ordering::Relaxed))
        .then(|| format::block_crcs(data));
        let Some(mut st) = inner.room(wait)? else {
            return Ok(None);
        };
        // Again under the state lock: a shrink stores the smaller size and
        // journals the trim of the tail under this lock, so a write checked
        // against the old size cannot land after that trim.
        inner.check_range("write", offset, data.len() as u64)?;
        let first = st.next_jseq;
        let mut entries = Vec::with_capacity(data.len().div_ceil(chunk));
        let mut spans = Vec::with_capacity(entries.capacity());
        for (i, piece) in data.chunks(chunk).enumerate() {
            let lba = Lba(offset / SECTOR + (i * chunk) as u64 / SECTOR);
            let sectors = (piece.len() as u64 / SECTOR) as u32;
            let seq = st.next_jseq;
            let piece_blocks = blocks
                .as_deref()
                .map(|b| &b[i * chunk / CRC_BLOCK..][..piece.len() / CRC_BLOCK]);
            spans.extend(inner.push_op(
                &mut st,
                seq,
                OpKind::Write,
                lba,
                sectors,
                piece,
                piece_blocks,
            ));
            entries.push(RecordEntry {
                lba,
                sectors,
                kind: OpKind::Write,
            });
        }
        inner
            .stats
            .writes
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
        inner
            .stats
            .write_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        inner.hard_fua(&mut st, fua, done);
        inner.journal_append(&mut st, first, &entries, &spans, fua, done)
    }

    /// Discard a range (reads as zeros afterwards); journaled like a write.
    pub fn trim(&self, offset: u64, len: u64) -> Result<()> {
        self.sync_submit("trim", |d| {
            self.submit_discard(offset, len, false, false, d)
                .map(|_| ())
        })
    }

    /// Trim with FUA: durable across a host crash when it returns.
    pub fn trim_fua(&self, offset: u64, len: u64) -> Result<()> {
        self.sync_submit("FUA trim", |d| {
            self.submit_discard(offset, len, false, true, d).map(|_| ())
        })
    }

    /// Zero a range; journaled like a write.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.sync_submit("write-zeroes", |d| {
            self.submit_discard(offset, len, true, false, d).map(|_| ())
        })
    }

    /// Write-zeroes with FUA: durable across a host crash when it returns.
    pub fn write_zeroes_fua(&self, offset: u64, len: u64) -> Result<()> {
        self.sync_submit("FUA write-zeroes", |d| {
            self.submit_discard(offset, len, true, true, d).map(|_| ())
        })
    }

    /// Submit a trim (`zero = false`) or write-zeroes (`zero = true`).
    /// With `fua`, `done` runs only once it is durable across a host crash
    /// (and, with `hard_flush`, in the backend), as for a FUA write.
    pub fn submit_discard(
        &self,
        offset: u64,
        len: u64,
        zero: bool,
        fua: bool,
        done: Completion,
    ) -> Result<JournalSeq> {
        self.submit_discard_waiting(offset, len, zero, fua, &mut Some(done))
    }

    /// Like [`Volume::submit_discard`], but never waits for journal space
    /// (see [`Volume::try_submit_write`]).
    pub fn try_submit_discard(
        &self,
        offset: u64,
        len: u64,
        zero: bool,
        fua: bool,
        done: &mut Option<Completion>,
    ) -> Result<Option<JournalSeq>> {
        self.discard_op(offset, len, zero, fua, false, done)
    }

    /// Like [`Volume::submit_discard`], but on error `done` is left in
    /// place (see [`Volume::submit_write_waiting`]).
    pub fn submit_discard_waiting(
        &self,
        offset: u64,
        len: u64,
        zero: bool,
        fua: bool,
        done: &mut Option<Completion>,
    ) -> Result<JournalSeq> {
        self.discard_op(offset, len, zero, fua, true, done)
            .map(|s| s.expect("a blocking submit always submits"))
    }

    pub(super) fn discard_op(
        &self,
        offset: u64,
        len: u64,
        zero: bool,
        fua: bool,
        wait: bool,
        done: &mut Option<Completion>,
    ) -> Result<Option<JournalSeq>> {
        let inner = &self.inner;
        inner.check_writable()?;
        let what = if zero { "write-zeroes" } else { "trim" };
        inner.check_range(what, offset, len)?;
        let kind = if zero { OpKind::Zero } else { OpKind::Trim };
        let Some(mut st) = inner.room(wait)? else {
            return Ok(None);
        };
        // Again under the state lock, as in `write_op`.
        inner.check_range(what, offset, len)?;
        let first = st.next_jseq;
        let entries = inner.push_discard(&mut st, offset, len, kind);
        inner.hard_fua(&mut st, fua, done);
        inner.journal_append(&mut st, first, &entries, &[], fua, done)
    }

    /// FLUSH: every write submitted before it is durable when it returns.
    /// With `hard_flush` it also waits for the backend, and gives up once
    /// no object has been applied for `io_timeout_msec`.
    pub fn flush(&self) -> Result<()> {
        let inner = &self.inner;
        if inner.config.hard_flush && !inner.read_only {
            let progress = || inner.applied_obj.load(Ordering::SeqCst);
            return wait::for_completion(
                &format!("flush of image {} to the backend", inner.image),
                &inner.cancel,
                Deadline::NoProgress(inner.io_timeout(), &progress),
                |d| self.submit_flush(d),
            )
            .map_err(|e| inner.with_backend_cause(e));
        }
        self.sync_submit("flush", |d| self.submit_flush(d))
    }

    /// A driver for the journal on the caller's own io_uring (a ublk
    /// queue's): see [`crate::journal::Lane`]. `None` for a read-only or
    /// closed volume.
    pub fn journal_lane(&self) -> Option<crate::journal::Lane> {
        let st = self.inner.lock_state();
        st.journal.as_ref().map(|j| j.lane())
    }

    /// Submit a FLUSH covering every write submitted before it. With
    /// `hard_flush`, it also waits until the backend holds everything.
    pub fn submit_flush(&self, done: Completion) -> Result<()> {
        let inner = &self.inner;
        if inner.read_only {
            // Nothing to make durable: a snapshot never changes.
            done(Ok(()));
            return Ok(());
        }
        let mut st = inner.lock_state();
        if st.closed {
            return Err(Error::new(
                ErrorKind::Closed,
                format!("image {} is closed", inner.image),
            ));
        }
        if let Some(e) = inner.fenced_error() {
            return Err(e);
        }
        let upto = st.last_sent;
        let done: Completion = if inner.config.hard_flush {
            inner.then_in_backend(&mut st, done)
        } else {
            done
        };
        match st.journal.as_ref() {
            Some(j) => {
                j.flush(upto, done);
                Ok(())
            }
            None => Err(Error::new(ErrorKind::Closed, "journal is not open")),
        }
    }
}

/// Closes batches older than `flush_msec`, or at once when the journal asks
/// for space.
pub(super) fn flusher(inner: Arc<Inner>) {
    let age = Duration::from_millis(inner.config.flush_msec);
    let tick = (age / 4).clamp(Duration::from_millis(1), Duration::from_millis(100));
    loop {
        let wanted = {
            let (m, cv) = &inner.flusher;
            let g = m.lock().unwrap_or_else(|e| e.into_inner());
            let (mut g, _) = cv.wait_timeout(g, tick).unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut *g)
        };
        if inner.cancel.is_cancelled() {
            return;
        }
        let mut st = inner.lock_state();
        if !st.open.is_empty() && (wanted || st.open.created.elapsed() >= age) {
            inner.seal(&mut st);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::backend::{MemStore, ObjectStore};

    /// Which records the journal copies instead of writing them from the
    /// batch: none when the journal takes 512-byte alignment (what
    /// `statx` reports for most file systems on 512-byte-sector disks);
    /// with 4 KiB alignment, a 512-byte write and every later write of the
    /// same batch (the batch's fill point is then off a block boundary).
    #[test]
    fn records_are_copied_only_when_the_journal_alignment_requires_it() {
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
        crate::volume::image::create_image(store.as_ref(), "img", 4 << 20).unwrap();
        let journal_path = dir.path().join("img.wlog");
        let v = crate::volume::test_open(dir.path(), store, true);
        let js = v.inner.journal_shared.get().unwrap().clone();
        for i in 0..4u64 {
            v.write((1 << 20) + i * 4096, &[i as u8 + 1; 4096]).unwrap();
        }
        assert_eq!(js.copied_records(), 0, "whole blocks alone");
        v.write(0, &[0xAA; 512]).unwrap();
        for i in 0..8u64 {
            v.write(65536 + i * 4096, &[i as u8 + 10; 4096]).unwrap();
        }
        let file = std::fs::File::open(&journal_path).unwrap();
        let small = matches!(crate::io::dio_alignment(&file), Some((m, o)) if m <= 512 && o <= 512);
        let want = if small { 0 } else { 9 };
        assert_eq!(
            js.copied_records(),
            want,
            "alignment {:?}",
            crate::io::dio_alignment(&file)
        );
        for i in 0..8u64 {
            let mut b = vec![0; 4096];
            v.read(65536 + i * 4096, &mut b).unwrap();
            assert!(b.iter().all(|&x| x == i as u8 + 10));
        }
        v.close().unwrap();
    }

    /// The block crcs the write path takes reach the batch for whole,
    /// aligned blocks (a write split into journal chunks included), and the
    /// crcs joined from them are right: the journal's records replay after
    /// a crash, and the objects' chunks verify after a clean close.
    #[test]
    fn the_write_paths_block_crcs_serve_the_journal_and_the_objects() {
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(MemStore::new());
        crate::volume::image::create_image(store.as_ref(), "img", 4 << 20).unwrap();
        let pattern = |seed: u64, len: usize| -> Vec<u8> {
            (0..len)
                .map(|i| (seed as usize * 131 + i * 7 + i / 4096) as u8)
                .collect()
        };
        // (offset, data): a 128 KiB write (two 64 KiB journal chunks),
        // then 8 KiB ones, then a 512-byte one that leaves the batch off a
        // block boundary, then whole blocks again.
        let mut writes = vec![(1u64 << 20, pattern(1, 128 << 10))];
        for i in 0..8u64 {
            writes.push((i * 16384, pattern(10 + i, 8192)));
        }
        writes.push((2 << 20, pattern(30, 512)));
        writes.push((3 << 20, pattern(31, 8192)));
        let v = crate::volume::test_open(dir.path(), store.clone(), true);
        for (i, (off, d)) in writes.iter().enumerate() {
            v.write(*off, d).unwrap();
            if i == 8 {
                let st = v.inner.lock_state();
                assert_eq!(st.open.data.known_blocks(), 32 + 16);
            }
        }
        assert_eq!(
            v.inner.lock_state().open.data.known_blocks(),
            48,
            "blocks after the 512-byte write are read, not taken"
        );
        assert!(
            !v.inner
                .open_aligned
                .load(std::sync::atomic::Ordering::Relaxed),
            "no crcs are taken while the open batch is off a block boundary"
        );
        // 64 KiB more does not fit the 256 KiB batch: it is sealed, and the
        // next batch takes crcs again (from the write after the one that
        // found it misaligned).
        writes.push(((3 << 20) + 65536, pattern(32, 64 << 10)));
        writes.push(((3 << 20) + 2 * 65536, pattern(33, 8192)));
        for (off, d) in &writes[writes.len() - 2..] {
            v.write(*off, d).unwrap();
        }
        assert!(v
            .inner
            .open_aligned
            .load(std::sync::atomic::Ordering::Relaxed));
        assert_eq!(v.inner.lock_state().open.data.known_blocks(), 2);
        let check = |v: &crate::volume::Volume| {
            for (off, d) in &writes {
                let mut b = vec![0; d.len()];
                v.read(*off, &mut b).unwrap();
                assert!(b == *d, "data at {off}");
            }
        };
        v.crash();
        let v = crate::volume::test_open(dir.path(), store.clone(), true);
        check(&v);
        v.close().unwrap();
        let v = crate::volume::test_open(dir.path(), store, true);
        check(&v);
        assert!(
            v.inner
                .stats
                .chunks_verified
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
        );
        v.close().unwrap();
    }
}
