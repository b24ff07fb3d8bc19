//! Staging: callers copy their operations straight into record buffers, in
//! sequence order; the writer thread takes whole records from here.
//!
//! This is the group commit: while records are in flight, new operations
//! accumulate in the current record, which the writer takes as soon as it
//! may submit another. A record holds at most [`MAX_ENTRIES`] entries (so its
//! header is one block and its data starts at [`BLOCK`]) and at most
//! `max_data` bytes of data.

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::error::Error;
use crate::format::journal::{RecordEntry, BLOCK, REC_ENTRY, REC_FIXED};
use crate::io::AlignedBuf;
use crate::units::JournalSeq;

use super::Done;

/// Entries whose header fits one block.
pub(crate) const MAX_ENTRIES: usize = (BLOCK as usize - REC_FIXED) / REC_ENTRY;
/// Record buffers kept for reuse.
const POOL: usize = 16;

/// A record being filled or waiting for the writer.
pub(crate) struct Staged {
    /// Header block (written by the writer) followed by the data.
    pub buf: AlignedBuf,
    pub first_seq: JournalSeq,
    pub entries: Vec<RecordEntry>,
    pub data_len: usize,
    /// (FUA, completion) of each append whose last entry is in this record.
    pub acks: Vec<(bool, Done)>,
}

struct State {
    cur: Option<Staged>,
    ready: VecDeque<Staged>,
    pool: Vec<AlignedBuf>,
    failed: Option<Error>,
}

pub(crate) struct Staging {
    state: Mutex<State>,
    max_data: usize,
}

impl Staging {
    pub(crate) fn new(max_data: usize) -> Staging {
        Staging {
            state: Mutex::new(State {
                cur: None,
                ready: VecDeque::new(),
                pool: Vec::new(),
                failed: None,
            }),
            max_data,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Copy an append's entries in. Appends must arrive in sequence order.
    pub(crate) fn append(
        &self,
        first_seq: JournalSeq,
        entries: &[RecordEntry],
        data: &[u8],
        fua: bool,
        done: Option<Done>,
    ) {
        let mut st = self.lock();
        if let Some(e) = &st.failed {
            let e = e.duplicate();
            drop(st);
            if let Some(d) = done {
                d(Err(e));
            }
            return;
        }
        let mut off = 0usize;
        let mut seq = first_seq;
        for x in entries {
            let d = x.data_bytes() as usize;
            let full = st
                .cur
                .as_ref()
                .is_none_or(|c| c.entries.len() >= MAX_ENTRIES || c.data_len + d > self.max_data);
            if full {
                if let Some(c) = st.cur.take() {
                    st.ready.push_back(c);
                }
                let cap = BLOCK as usize + self.max_data.max(d);
                let buf = match st.pool.pop() {
                    Some(b) if b.capacity() >= cap => b,
                    _ => AlignedBuf::new(cap),
                };
                st.cur = Some(Staged {
                    buf: buf.with_len(cap),
                    first_seq: seq,
                    entries: Vec::with_capacity(64),
                    data_len: 0,
                    acks: Vec::new(),
                });
            }
            let Some(c) = st.cur.as_mut() else { return };
            let at = BLOCK as usize + c.data_len;
            c.buf[at..at + d].copy_from_slice(&data[off..off + d]);
            c.data_len += d;
            c.entries.push(*x);
            off += d;
            seq = seq.next();
        }
        if let (Some(c), Some(d)) = (st.cur.as_mut(), done) {
            c.acks.push((fua, d));
        }
    }

    /// The oldest record waiting, or the one being filled.
    pub(crate) fn take(&self) -> Option<Staged> {
        let mut st = self.lock();
        match st.ready.pop_front() {
            Some(r) => Some(r),
            None => st.cur.take().filter(|c| !c.entries.is_empty()),
        }
    }

    /// Put back a record the writer could not place yet (no space).
    pub(crate) fn unget(&self, r: Staged) {
        self.lock().ready.push_front(r);
    }

    /// Whether nothing waits.
    pub(crate) fn is_empty(&self) -> bool {
        let st = self.lock();
        st.ready.is_empty() && st.cur.as_ref().is_none_or(|c| c.entries.is_empty())
    }

    /// Return a record buffer for reuse.
    pub(crate) fn recycle(&self, buf: AlignedBuf) {
        let mut st = self.lock();
        if st.pool.len() < POOL && buf.capacity() >= BLOCK as usize + self.max_data {
            st.pool.push(buf);
        }
    }

    /// Fail everything waiting and every later append with `e`.
    pub(crate) fn fail(&self, e: &Error) {
        let victims: Vec<Staged> = {
            let mut st = self.lock();
            if st.failed.is_none() {
                st.failed = Some(e.duplicate());
            }
            let mut v: Vec<Staged> = st.ready.drain(..).collect();
            v.extend(st.cur.take());
            v
        };
        for r in victims {
            for (_, d) in r.acks {
                d(Err(e.duplicate()));
            }
        }
    }
}
