//! Staging: callers add their operations to records, in sequence order,
//! by reference (the data stays in their batch buffers as [`Span`]s); the
//! driver (the journal thread or a lane) takes whole records from here.
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
use crate::io::{AlignedBuf, Span};
use crate::units::JournalSeq;

use super::Done;

/// Entries whose header fits one block.
pub(crate) const MAX_ENTRIES: usize = (BLOCK as usize - REC_FIXED) / REC_ENTRY;
/// Record buffers kept for reuse.
const POOL: usize = 16;

/// A record being filled or waiting for the writer.
pub(crate) struct Staged {
    /// The data, in order; adjacent spans of one buffer are joined.
    pub segs: Vec<Span>,
    pub first_seq: JournalSeq,
    pub entries: Vec<RecordEntry>,
    pub data_len: usize,
    /// (FUA, completion) of each append whose last entry is in this record.
    pub acks: Vec<(bool, Done)>,
}

struct State {
    cur: Option<Staged>,
    ready: VecDeque<Staged>,
    /// Buffers for copied records, and header blocks for written-from-spans
    /// ones.
    pool: Vec<AlignedBuf>,
    heads: Vec<AlignedBuf>,
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
                heads: Vec::new(),
                failed: None,
            }),
            max_data,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Add an append's entries (`data` holds one span per entry with
    /// data). Appends must arrive in sequence order.
    pub(crate) fn append(
        &self,
        first_seq: JournalSeq,
        entries: &[RecordEntry],
        data: &[Span],
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
        let mut spans = data.iter();
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
                st.cur = Some(Staged {
                    segs: Vec::new(),
                    first_seq: seq,
                    entries: Vec::with_capacity(64),
                    data_len: 0,
                    acks: Vec::new(),
                });
            }
            let Some(c) = st.cur.as_mut() else { return };
            if d > 0 {
                let span = spans.next().expect("one span per entry with data");
                assert_eq!(span.len(), d, "span length matches its entry");
                match c.segs.last_mut() {
                    Some(last) if last.continued_by(span) => last.join(span),
                    _ => c.segs.push(span.clone()),
                }
            }
            c.data_len += d;
            c.entries.push(*x);
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

    /// A record buffer of at least `cap` bytes (the header block, and for
    /// a record that is copied, its data).
    pub(crate) fn buffer(&self, cap: usize) -> AlignedBuf {
        let found = {
            let mut st = self.lock();
            let pool = if cap <= BLOCK as usize {
                &mut st.heads
            } else {
                &mut st.pool
            };
            let i = pool.iter().position(|b| b.capacity() >= cap);
            i.map(|i| pool.swap_remove(i))
        };
        // A record buffer is always made full size, so that every pooled
        // one fits any record (a pool of small ones would turn big records
        // away and refuse their buffers back).
        let size = if cap <= BLOCK as usize {
            BLOCK as usize
        } else {
            cap.max(BLOCK as usize + self.max_data)
        };
        found.unwrap_or_else(|| AlignedBuf::new(size)).with_len(cap)
    }

    /// Return a record buffer for reuse.
    pub(crate) fn recycle(&self, buf: AlignedBuf) {
        let mut st = self.lock();
        let full = BLOCK as usize + self.max_data;
        let pool = if buf.capacity() == BLOCK as usize {
            &mut st.heads
        } else if buf.capacity() == full {
            &mut st.pool
        } else {
            return;
        };
        if pool.len() < POOL {
            pool.push(buf);
        }
    }

    /// Fail everything waiting and every later append with `e`.
    pub(crate) fn fail(&self, e: &Error) {
        for d in self.fail_take(e) {
            d(Err(e.duplicate()));
        }
    }

    /// Like [`Staging::fail`], but hand back the completions to run (with
    /// `e`) instead of running them: the caller holds a lock they must not
    /// run under.
    pub(crate) fn fail_take(&self, e: &Error) -> Vec<Done> {
        let victims: Vec<Staged> = {
            let mut st = self.lock();
            if st.failed.is_none() {
                st.failed = Some(e.duplicate());
            }
            let mut v: Vec<Staged> = st.ready.drain(..).collect();
            v.extend(st.cur.take());
            v
        };
        victims
            .into_iter()
            .flat_map(|r| r.acks.into_iter().map(|(_, d)| d))
            .collect()
    }
}
