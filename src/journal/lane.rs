//! Lanes: journal drivers on their callers' own rings.
//!
//! A ublk queue thread sleeps in its own io_uring. Rather than hand its
//! writes to the journal thread (a wake-up there, and one back when they
//! are durable), it drives the journal itself: it [`Lane::enter`]s a lane
//! for as long as it serves, and after each round of requests it
//! [`Lane::pump`]s, which places the staged records (its own writes and
//! anyone else's, in sequence order: group commit) and the fdatasync a
//! FLUSH waits for, and hands back their submissions for the queue's
//! ring. The queue reports each completion with [`Lane::complete`]. The
//! acknowledgements of its own writes then run on its own thread, with no
//! wake-up at all.
//!
//! While a lane is entered on a thread, [`super::Journal::append`] from
//! that thread does not wake the journal thread, and
//! [`super::Journal::flush`] leaves its FLUSH for the lane's next pump (the
//! caller may hold the volume's state lock, which the journal's lock never
//! nests inside). So a thread that enters a lane must pump after every
//! round in which it appended or flushed; when the lane's guard is dropped,
//! what it still holds goes to the journal thread.
//!
//! Nothing about the log changes: records are placed, acknowledged and
//! synced by the one [`super::writer::Core`], under its lock, whichever
//! ring carries them.

use std::cell::RefCell;
use std::sync::Arc;

use crossbeam_channel::Sender;

use super::writer::{CoreCell, Sub};
use super::{Done, Msg};
use crate::units::JournalSeq;

struct Current {
    core: Arc<CoreCell>,
    flushes: Vec<(JournalSeq, Done)>,
}

thread_local! {
    static CURRENT: RefCell<Option<Current>> = const { RefCell::new(None) };
}

/// Whether this thread has entered a lane of journal `core`.
pub(super) fn is_current(core: &Arc<CoreCell>) -> bool {
    CURRENT.with(|c| {
        c.borrow()
            .as_ref()
            .is_some_and(|cur| Arc::ptr_eq(&cur.core, core))
    })
}

/// Keep a FLUSH for the lane entered on this thread, if it is one of
/// `core`; otherwise hand `done` back.
pub(super) fn defer_flush(core: &Arc<CoreCell>, upto: JournalSeq, done: Done) -> Option<Done> {
    CURRENT.with(|c| match c.borrow_mut().as_mut() {
        Some(cur) if Arc::ptr_eq(&cur.core, core) => {
            cur.flushes.push((upto, done));
            None
        }
        _ => Some(done),
    })
}

/// A journal driver for a thread with its own ring (see the module doc).
#[derive(Clone)]
pub struct Lane {
    core: Arc<CoreCell>,
    tx: Sender<Msg>,
}

/// While alive, the thread that made it drives its lane.
pub struct LaneGuard {
    tx: Sender<Msg>,
    /// The core this guard registered, if it did (the first lane entered
    /// on a thread; a later one, while that is alive, registers nothing).
    core: Option<Arc<CoreCell>>,
    // Not Send: it stands for this thread's registration.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Lane {
    pub(super) fn new(core: Arc<CoreCell>, tx: Sender<Msg>) -> Lane {
        Lane { core, tx }
    }

    /// Drive this lane from the current thread until the guard is
    /// dropped. A thread drives at most one lane: while one is entered,
    /// entering another (or the same again) registers nothing, so that
    /// journal's appends and FLUSHes from this thread still go to its
    /// journal thread, and only the first guard's drop ends the
    /// registration.
    pub fn enter(&self) -> LaneGuard {
        let registered = CURRENT.with(|c| {
            let mut c = c.borrow_mut();
            if c.is_some() {
                return false;
            }
            *c = Some(Current {
                core: self.core.clone(),
                flushes: Vec::new(),
            });
            true
        });
        LaneGuard {
            tx: self.tx.clone(),
            core: registered.then(|| self.core.clone()),
            _not_send: std::marker::PhantomData,
        }
    }

    /// Place what can be placed (staged records, and the fdatasync a FLUSH
    /// waits for) and return the submissions: the caller pushes each on
    /// its ring and reports its completion with [`Lane::complete`].
    /// Completions that became due run before this returns.
    pub fn pump(&self) -> Vec<Sub> {
        let flushes = CURRENT.with(|c| match c.borrow_mut().as_mut() {
            Some(cur) if Arc::ptr_eq(&cur.core, &self.core) => std::mem::take(&mut cur.flushes),
            _ => Vec::new(),
        });
        self.core
            .with(|c| {
                for (upto, d) in flushes {
                    c.add_flush(upto, d);
                }
                c.pump_lane();
            })
            .1
    }

    /// Submission `id` completed with `res` (a byte count or -errno).
    /// Acknowledgements that became due run before this returns.
    pub fn complete(&self, id: u64, res: i32) {
        self.core.with(|c| c.complete(id, res));
    }
}

impl Drop for LaneGuard {
    fn drop(&mut self) {
        let cur = self.core.as_ref().and_then(|core| {
            CURRENT.with(|c| {
                let mut c = c.borrow_mut();
                if c.as_ref().is_some_and(|cur| Arc::ptr_eq(&cur.core, core)) {
                    c.take()
                } else {
                    None
                }
            })
        });
        if let Some(cur) = cur {
            for (upto, done) in cur.flushes {
                if let Err(e) = self.tx.send(Msg::Flush { upto, done }) {
                    if let Msg::Flush { done, .. } = e.0 {
                        done(Err(crate::error::Error::new(
                            crate::error::ErrorKind::Closed,
                            "journal is shut down",
                        )));
                    }
                }
            }
        }
        // Anything appended and not pumped is the journal thread's now.
        let _ = self.tx.send(Msg::Wake);
    }
}

/// A lane on an io_uring of its own, entered on the thread that makes it:
/// for tools and tests that drive the journal from plain threads the way a
/// ublk queue does from its queue ring.
pub struct RingLane {
    lane: Lane,
    ring: io_uring::IoUring,
    inflight: usize,
    _guard: LaneGuard,
}

impl RingLane {
    /// Enter `lane` on this thread with a ring of `entries` submissions.
    pub fn new(lane: &Lane, entries: u32) -> crate::error::Result<RingLane> {
        let ring = io_uring::IoUring::new(entries.max(8))
            .map_err(|e| crate::error::Error::io("create journal lane io_uring", e))?;
        Ok(RingLane {
            _guard: lane.enter(),
            lane: lane.clone(),
            ring,
            inflight: 0,
        })
    }

    /// Pump the lane, submit what it placed, and report completions;
    /// with `wait`, first wait for one when anything is in flight.
    pub fn run(&mut self, wait: bool) -> crate::error::Result<()> {
        let mut failed = None;
        for sub in self.lane.pump() {
            let id = sub.id();
            if failed.is_some() {
                // Never submitted: report it, so the journal fails it
                // instead of waiting for it for good.
                self.lane.complete(id, -libc::ECANCELED);
                continue;
            }
            // SAFETY: the ring lives in `self`, whose drop waits for every
            // submission's completion and reports it.
            let sqe = unsafe { sub.into_sqe() }.user_data(id);
            // SAFETY: as above.
            while unsafe { self.ring.submission().push(&sqe) }.is_err() {
                if let Err(e) = self.ring.submit() {
                    failed = Some(crate::error::Error::io("journal lane submit", e));
                    break;
                }
            }
            if failed.is_some() {
                self.lane.complete(id, -libc::ECANCELED);
            } else {
                self.inflight += 1;
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        let want = usize::from(wait && self.inflight > 0);
        match self.ring.submit_and_wait(want) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => return Err(crate::error::Error::io("journal lane submit", e)),
        }
        self.reap();
        Ok(())
    }

    /// Report every completion waiting on the ring.
    fn reap(&mut self) {
        let cqes: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        self.inflight -= cqes.len();
        for (id, res) in cqes {
            self.lane.complete(id, res);
        }
    }

    /// Submissions in flight on this ring.
    pub fn inflight(&self) -> usize {
        self.inflight
    }
}

impl Drop for RingLane {
    fn drop(&mut self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.inflight > 0 && std::time::Instant::now() < deadline {
            if self.ring.submit_and_wait(1).is_err() {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            self.reap();
        }
    }
}
