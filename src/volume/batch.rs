//! In-memory batches: operations journaled but not yet applied from a
//! durable backend object, and the overlay map that points into them.

use std::sync::Mutex;
use std::time::Instant;

use crate::format::object::{ObjOp, OpKind};
use crate::io::{AlignedBuf, AppendBuf, Span};
use crate::map::Target;
use crate::units::{JournalSeq, Lba, ObjSeq, SECTOR};

/// Where the newest version of a sector lives while it is not yet applied
/// from the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PendLoc {
    /// In batch `batch`, at `offset` sectors into its data.
    Data { batch: u64, offset: u32 },
    /// Zeroed (trim or write-zeroes) by an operation in `batch`.
    Zero { batch: u64 },
}

impl PendLoc {
    pub(crate) fn batch(self) -> u64 {
        match self {
            PendLoc::Data { batch, .. } | PendLoc::Zero { batch } => batch,
        }
    }
}

impl Target for PendLoc {
    fn advance(self, sectors: u64) -> Self {
        match self {
            PendLoc::Data { batch, offset } => PendLoc::Data {
                batch,
                offset: offset + sectors as u32,
            },
            z => z,
        }
    }
}

/// Data buffers of applied batches, kept (a few) for new batches, so a new
/// batch does not fault in and zero fresh pages on the write path. Shared
/// by the destager and the cache writer: whichever lets go of a batch last
/// gives its buffer back.
pub(crate) struct SpareBuffers {
    bufs: Mutex<Vec<AlignedBuf>>,
    /// Smaller buffers (none hold a whole object) are not kept.
    min_capacity: usize,
}

impl SpareBuffers {
    /// Most buffers kept.
    const KEEP: usize = 4;

    pub(crate) fn new(min_capacity: usize) -> SpareBuffers {
        SpareBuffers {
            bufs: Mutex::new(Vec::new()),
            min_capacity,
        }
    }

    /// A kept buffer, if any.
    pub(crate) fn take(&self) -> Option<AlignedBuf> {
        self.bufs.lock().ok().and_then(|mut v| v.pop())
    }

    /// Keep the buffer of a batch no one else holds, unless a journal
    /// record still being written holds part of it, it is too small, or
    /// enough are kept.
    pub(crate) fn put(&self, buf: AppendBuf) {
        let Some(buf) = buf.into_buf() else {
            return;
        };
        if buf.capacity() < self.min_capacity {
            return;
        }
        if let Ok(mut v) = self.bufs.lock() {
            if v.len() < Self::KEEP {
                v.push(buf);
            }
        }
    }

    /// Buffers kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.bufs.lock().unwrap().len()
    }
}

/// A batch of operations in journal order: becomes one data object.
pub(crate) struct Batch {
    pub id: u64,
    /// Object sequence, assigned when the batch is sealed.
    pub obj: ObjSeq,
    pub first_jseq: JournalSeq,
    pub last_jseq: JournalSeq,
    pub ops: Vec<ObjOp>,
    /// Write data, in an aligned buffer so the object can be written with
    /// O_DIRECT straight from it. Append-only: the journal writes its
    /// records from spans of it (the one user-space copy of write data is
    /// the one into this buffer).
    pub data: AppendBuf,
    pub created: Instant,
}

impl Batch {
    pub(crate) fn new(id: u64, capacity: usize) -> Batch {
        Batch::with_buffer(id, AlignedBuf::new(capacity))
    }

    /// A batch reusing `buf` (its old content is overwritten before use).
    pub(crate) fn with_buffer(id: u64, buf: AlignedBuf) -> Batch {
        Batch {
            id,
            obj: ObjSeq(0),
            first_jseq: JournalSeq(0),
            last_jseq: JournalSeq(0),
            ops: Vec::new(),
            data: AppendBuf::from_buf(buf),
            created: Instant::now(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Append an operation with sequence `seq` (consecutive with the last);
    /// returns where its data went and, for a write, the span holding it.
    /// `blocks`: the crc32c of each 4 KiB block of `data`, if the caller
    /// took them ([`AppendBuf::append_with_crcs`]).
    pub(crate) fn push(
        &mut self,
        seq: JournalSeq,
        kind: OpKind,
        lba: Lba,
        sectors: u32,
        data: &[u8],
        blocks: Option<&[u32]>,
    ) -> (PendLoc, Option<Span>) {
        if self.ops.is_empty() {
            self.first_jseq = seq;
            self.created = Instant::now();
        }
        debug_assert!(self.ops.is_empty() || seq.0 == self.last_jseq.0 + 1);
        self.last_jseq = seq;
        let offset = (self.data.len() as u64 / SECTOR) as u32;
        let (loc, span) = if kind == OpKind::Write {
            let at = self.data.append_with_crcs(data, blocks);
            let loc = PendLoc::Data {
                batch: self.id,
                offset,
            };
            (loc, Some(self.data.span(at, data.len())))
        } else {
            (PendLoc::Zero { batch: self.id }, None)
        };
        self.ops.push(ObjOp {
            lba,
            sectors,
            kind,
            data_offset: if kind == OpKind::Write { offset } else { 0 },
        });
        (loc, span)
    }

    /// Data bytes held.
    pub(crate) fn data_bytes(&self) -> u64 {
        self.data.len() as u64
    }

    /// Copy `len` bytes at `offset` sectors into `out`.
    pub(crate) fn copy_out(&self, offset: u32, out: &mut [u8]) {
        let start = offset as usize * SECTOR as usize;
        out.copy_from_slice(&self.data[start..start + out.len()]);
    }
}
