//! Handing an operation to another thread and waking the queue's ring when
//! it is done, with at most one wake-up for any number of completions.
//!
//! A ublk queue thread sleeps in `io_uring_enter` on its own ring, so a
//! result produced on another thread (the journal writer, a read worker)
//! must arrive as a completion on that ring. Each queue has one
//! [`Notifier`]: an eventfd, a `kicked` flag, and a task on the queue's
//! executor that keeps one `POLL_ADD` on the eventfd in flight on the queue
//! ring. Each tag owns a [`Waiter`]: a result slot and the waker of the
//! tag's task while it sleeps.
//!
//! A completion on another thread ([`Signal::fire`]):
//! 1. stores the result in the tag's slot and takes the task's waker, both
//!    under the slot's lock;
//! 2. wakes the task (this only queues it on the executor, which is safe
//!    from any thread; the queue thread runs it);
//! 3. kicks the notifier: only the first kick after the queue last woke up
//!    writes the eventfd (`kicked.swap(true)` was false).
//!
//! So the journal writer acknowledging a record of 32 writes costs one
//! eventfd write, one `POLL_ADD` completion and one eventfd read, not 32 of
//! each. On the queue thread, the poll's completion wakes the notifier task,
//! which reads the eventfd (clearing it) and then clears `kicked`, in that
//! order: cleared the other way round, a kick landing between the two would
//! leave the counter read away and `kicked` set, and no later completion
//! would ever write the eventfd again (a lost wake-up). A completion that
//! sees `kicked` still set after the read has its task queued before the
//! notifier's `swap(false)` (which synchronizes with its `swap(true)`), and
//! the executor runs every queued task after the notifier's, before the
//! ring sleeps again.
//!
//! A task whose result is already there when it waits never sleeps, and a
//! completion that finds no waker registered (the task has not waited yet)
//! does not kick: the task checks the slot, under the same lock, before it
//! registers.
//!
//! Results are tagged with a generation number: [`Waiter::arm`] starts a
//! new operation, and a late or duplicate signal from an earlier one (for
//! example a [`Signal`] dropped after its operation already failed) is
//! ignored, never taken for a later operation's result. `POLL_ADD` takes
//! no user buffer, so no memory is lent to the kernel.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Poll, Waker};

use io_uring::{opcode, types};
use libublk::uring_async::ublk_submit_sqe_async;
use libublk::UblkUringData;

use crate::error::{Error, ErrorKind, Result};

/// What a finished operation hands back.
pub enum Outcome {
    /// A write, trim, zero or flush: done or failed.
    Done(Result<()>),
    /// A read: the bytes, or the error.
    Read(Result<Vec<u8>>),
}

/// Failed polls in a row after which [`Notifier::run`] gives up.
const MAX_POLL_FAILURES: u32 = 8;

/// A tag's slot: the current generation, its outcome once posted, and the
/// task's waker while it sleeps.
#[derive(Default)]
struct Slot {
    generation: u64,
    outcome: Option<Outcome>,
    waker: Option<Waker>,
}

/// One tag's half, shared with the [`Signal`]s of its operations.
struct TagShared {
    slot: Mutex<Slot>,
    notify: Arc<NotifyShared>,
}

impl TagShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn post(&self, generation: u64, outcome: Outcome) {
        let waker = {
            let mut g = self.lock();
            if g.generation != generation {
                return;
            }
            g.outcome = Some(outcome);
            g.waker.take()
        };
        self.notify.completions.fetch_add(1, Ordering::Relaxed);
        // No waker: the task has not gone to sleep on this operation yet,
        // and finds the outcome when it waits.
        if let Some(w) = waker {
            w.wake();
            // On the queue's own thread (a journal completion reaped from
            // the queue ring, see `Lane`), the executor runs the woken task
            // before the ring sleeps again: no wake-up needed.
            if std::thread::current().id() != self.notify.owner {
                self.notify.kick();
            }
        }
    }
}

/// The queue's half, shared with every tag and signal of the queue.
struct NotifyShared {
    efd: OwnedFd,
    /// The queue thread (the one that made the notifier).
    owner: std::thread::ThreadId,
    /// An eventfd write is pending that the queue has not consumed yet.
    kicked: AtomicBool,
    /// The notifier's poll failed: waiters give up rather than sleep.
    failed: AtomicBool,
    /// Every tag's shared half, to wake them all if the poll fails (weak:
    /// each tag holds this struct, and the pair must not keep itself alive).
    tags: Mutex<Vec<Weak<TagShared>>>,
    /// Outcomes posted, and eventfd writes (wake-ups) they cost.
    completions: AtomicU64,
    kicks: AtomicU64,
}

impl NotifyShared {
    /// Make sure the queue ring wakes up: write the eventfd unless a write
    /// is already pending.
    fn kick(&self) {
        if self.kicked.swap(true, Ordering::AcqRel) {
            return;
        }
        self.kicks.fetch_add(1, Ordering::Relaxed);
        let one: u64 = 1;
        // SAFETY: `efd` is an open eventfd owned by `self`; we pass a valid
        // pointer to 8 readable bytes, as eventfd writes require.
        let r = unsafe {
            libc::write(
                self.efd.as_raw_fd(),
                (&one as *const u64).cast::<libc::c_void>(),
                8,
            )
        };
        if r != 8 {
            // Only possible if the counter would overflow (2^64 - 2 pending
            // signals): the queue is already due to wake up in that case.
            tracing::debug!("eventfd write returned {r}");
        }
    }

    /// The queue woke up on the eventfd: consume it, then allow the next
    /// kick (this order; see the module documentation).
    fn consume(&self) {
        let mut v: u64 = 0;
        // SAFETY: reading 8 bytes into a local u64 from our own
        // non-blocking eventfd; EAGAIN (nothing pending) is fine.
        unsafe {
            libc::read(
                self.efd.as_raw_fd(),
                (&mut v as *mut u64).cast::<libc::c_void>(),
                8,
            );
        }
        // Tests widen the window between the two steps, where a kick
        // arriving in between must not be lost (the reverse order fails
        // `racing_completions_are_never_lost` with it).
        #[cfg(test)]
        std::thread::sleep(std::time::Duration::from_micros(20));
        self.kicked.swap(false, Ordering::AcqRel);
    }

    /// The poll cannot be kept: wake every sleeping task, which then gives
    /// up with an error instead of sleeping for good.
    fn fail(&self) {
        self.failed.store(true, Ordering::Release);
        let tags = self.tags.lock().unwrap_or_else(|e| e.into_inner());
        for t in tags.iter().filter_map(Weak::upgrade) {
            // Taken out of the lock before waking.
            let waker = t.lock().waker.take();
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

/// One queue's wake-up channel; see the module documentation. Made on
/// the queue's thread: a completion posted on that thread itself wakes
/// its task without a kick.
pub struct Notifier {
    shared: Arc<NotifyShared>,
}

impl Notifier {
    /// A new notifier with its own non-blocking eventfd.
    pub fn new() -> std::io::Result<Notifier> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
        let efd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Notifier {
            shared: Arc::new(NotifyShared {
                efd,
                owner: std::thread::current().id(),
                kicked: AtomicBool::new(false),
                failed: AtomicBool::new(false),
                tags: Mutex::new(Vec::new()),
                completions: AtomicU64::new(0),
                kicks: AtomicU64::new(0),
            }),
        })
    }

    /// A waiter for one tag of this queue.
    pub fn waiter(&self) -> Waiter {
        let tag = Arc::new(TagShared {
            slot: Mutex::new(Slot::default()),
            notify: self.shared.clone(),
        });
        self.shared
            .tags
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(&tag));
        Waiter {
            shared: tag,
            generation: 0,
        }
    }

    /// Outcomes posted so far, and the eventfd writes they cost.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.shared.completions.load(Ordering::Relaxed),
            self.shared.kicks.load(Ordering::Relaxed),
        )
    }

    /// The queue's notifier task: keep a `POLL_ADD` on the eventfd in
    /// flight on the queue ring and consume each wake-up. A failed poll is
    /// polled again (and the eventfd consumed, in case it was readable);
    /// only after [`MAX_POLL_FAILURES`] failures in a row, or when the ring
    /// takes no more submissions, does it give up for good: then every
    /// waiter of the queue, now and later, gets an error instead of
    /// sleeping (its operation may still complete; it is no longer heard).
    pub async fn run(&self) {
        let fd = types::Fd(self.shared.efd.as_raw_fd());
        let mut failures = 0;
        loop {
            let sqe = opcode::PollAdd::new(fd, libc::POLLIN as u32).build();
            match ublk_submit_sqe_async(sqe, UblkUringData::Target as u64).await {
                Ok(r) if r >= 0 || r == -libc::EINTR || r == -libc::EAGAIN => failures = 0,
                Ok(r) => {
                    failures += 1;
                    tracing::warn!(
                        "poll on the queue ring failed ({failures} in a row): errno {}",
                        -r
                    );
                    if failures >= MAX_POLL_FAILURES {
                        break;
                    }
                }
                Err(e) => {
                    tracing::error!("cannot poll on the queue ring: {e}");
                    break;
                }
            }
            self.shared.consume();
        }
        tracing::error!("the queue ring can no longer be woken: its waiting requests fail");
        self.shared.fail();
    }

    /// The same loop as [`Notifier::run`], with a blocking `poll(2)` in
    /// place of the ring and the executor driven here (tests).
    #[cfg(test)]
    fn drive(&self, exe: &smol::LocalExecutor, done: impl Fn() -> bool) {
        while !done() {
            while exe.try_tick() {}
            if done() {
                break;
            }
            let mut p = libc::pollfd {
                fd: self.shared.efd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, for the duration of the call.
            let r = unsafe { libc::poll(&mut p, 1, 10_000) };
            assert!(r > 0, "no wake-up within 10 s (poll returned {r})");
            self.shared.consume();
        }
    }
}

/// Delivers one operation's outcome to its [`Waiter`]. Dropping it without
/// calling [`Signal::fire`] delivers a `Closed` error, so a task can never
/// wait forever on an operation that was abandoned.
pub struct Signal {
    shared: Arc<TagShared>,
    generation: u64,
    fired: bool,
}

impl Signal {
    /// Deliver `outcome`.
    pub fn fire(mut self, outcome: Outcome) {
        self.fired = true;
        self.shared.post(self.generation, outcome);
    }
}

impl Drop for Signal {
    fn drop(&mut self) {
        if !self.fired {
            self.shared.post(
                self.generation,
                Outcome::Done(Err(Error::new(
                    ErrorKind::Closed,
                    "operation abandoned (volume stopping)",
                ))),
            );
        }
    }
}

/// One tag's wake-up channel; see the module documentation.
pub struct Waiter {
    shared: Arc<TagShared>,
    generation: u64,
}

impl Waiter {
    /// Start a new operation: returns the [`Signal`] its worker fires.
    pub fn arm(&mut self) -> Signal {
        self.generation += 1;
        {
            let mut g = self.shared.lock();
            g.generation = self.generation;
            g.outcome = None;
            g.waker = None;
        }
        Signal {
            shared: self.shared.clone(),
            generation: self.generation,
            fired: false,
        }
    }

    /// Wait on the queue's ring for the current operation's outcome.
    pub async fn wait(&self) -> Outcome {
        std::future::poll_fn(|cx| {
            let mut g = self.shared.lock();
            if g.generation == self.generation {
                if let Some(o) = g.outcome.take() {
                    g.waker = None;
                    return Poll::Ready(o);
                }
            }
            if self.shared.notify.failed.load(Ordering::Acquire) {
                g.waker = None;
                return Poll::Ready(Outcome::Done(Err(Error::new(
                    ErrorKind::Io,
                    "the queue ring can no longer be woken",
                ))));
            }
            g.waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    fn done_ok(o: &Outcome) -> bool {
        matches!(o, Outcome::Done(Ok(())))
    }

    /// Completions that arrive while the queue sleeps cost one eventfd
    /// write between them, however many there are.
    #[test]
    fn many_completions_while_the_queue_sleeps_wake_it_once() {
        let n = Notifier::new().unwrap();
        let exe = smol::LocalExecutor::new();
        let finished = Rc::new(Cell::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let mut w = n.waiter();
            let tx = tx.clone();
            let finished = finished.clone();
            tasks.push(exe.spawn(async move {
                tx.send(w.arm()).unwrap();
                assert!(done_ok(&w.wait().await));
                finished.set(finished.get() + 1);
            }));
        }
        drop(tx);
        // Every task runs up to its wait and sleeps.
        while exe.try_tick() {}
        let sigs: Vec<Signal> = rx.try_iter().collect();
        assert_eq!(sigs.len(), 32);
        // Another thread completes all 32 while the queue sleeps.
        std::thread::spawn(move || {
            for s in sigs {
                s.fire(Outcome::Done(Ok(())));
            }
        })
        .join()
        .unwrap();
        n.drive(&exe, || finished.get() == 32);
        assert_eq!(n.counts(), (32, 1), "32 completions, one wake-up");
    }

    /// An outcome posted before the task waits is taken without sleeping
    /// and without any wake-up.
    #[test]
    fn an_outcome_posted_before_the_wait_costs_no_wake_up() {
        let n = Notifier::new().unwrap();
        let mut w = n.waiter();
        let s = w.arm();
        s.fire(Outcome::Done(Ok(())));
        assert!(done_ok(&smol::block_on(w.wait())));
        assert_eq!(n.counts(), (1, 0));
    }

    /// A late signal of an earlier operation is never taken for the
    /// current one's outcome; a dropped signal reports an error.
    #[test]
    fn a_stale_signal_is_ignored_and_a_dropped_one_fails_its_operation() {
        let n = Notifier::new().unwrap();
        let mut w = n.waiter();
        let old = w.arm();
        let cur = w.arm();
        old.fire(Outcome::Done(Err(Error::new(ErrorKind::Io, "stale"))));
        cur.fire(Outcome::Done(Ok(())));
        assert!(done_ok(&smol::block_on(w.wait())));
        let dropped = w.arm();
        drop(dropped);
        match smol::block_on(w.wait()) {
            Outcome::Done(Err(e)) => assert_eq!(e.kind(), ErrorKind::Closed),
            _ => panic!("a dropped signal must fail its operation"),
        }
    }

    /// A queue's notifier and its tags free each other (no reference
    /// cycle keeps the eventfd open).
    #[test]
    fn a_finished_queue_frees_its_notifier() {
        let n = Notifier::new().unwrap();
        let weak = Arc::downgrade(&n.shared);
        let mut w = n.waiter();
        let s = w.arm();
        drop(w);
        drop(n);
        assert!(weak.upgrade().is_some(), "an unfired signal keeps it");
        s.fire(Outcome::Done(Ok(())));
        assert!(weak.upgrade().is_none(), "eventfd and tag slots leaked");
    }

    /// Once the notifier gave up, a sleeping waiter is woken with an error
    /// rather than left asleep, and so is a later one.
    #[test]
    fn a_notifier_that_gave_up_fails_its_waiters_instead_of_hanging() {
        let n = Notifier::new().unwrap();
        let exe = smol::LocalExecutor::new();
        let got = Rc::new(Cell::new(0));
        let mut w = n.waiter();
        let _sig = w.arm();
        let g = got.clone();
        let t = exe.spawn(async move {
            for _ in 0..2 {
                if let Outcome::Done(Err(e)) = w.wait().await {
                    assert_eq!(e.kind(), ErrorKind::Io);
                    g.set(g.get() + 1);
                }
            }
        });
        while exe.try_tick() {}
        assert_eq!(got.get(), 0, "asleep");
        n.shared.fail();
        while exe.try_tick() {}
        assert_eq!(got.get(), 2);
        assert!(t.is_finished());
    }

    /// Tags and completer threads racing for many rounds: every operation
    /// gets its own outcome, none is lost (the drive loop would time out),
    /// and wake-ups never exceed completions.
    #[test]
    fn racing_completions_are_never_lost() {
        const TAGS: usize = 16;
        const ROUNDS: u64 = 20_000;
        let n = Notifier::new().unwrap();
        let exe = smol::LocalExecutor::new();
        let finished = Rc::new(Cell::new(0usize));
        let (tx, rx) = crossbeam_channel::unbounded::<(Signal, u64)>();
        let completers: Vec<_> = (0..2)
            .map(|_| {
                let rx = rx.clone();
                std::thread::spawn(move || {
                    for (s, v) in rx.iter() {
                        let r = if v % 7 == 0 {
                            Err(Error::new(ErrorKind::Io, format!("{v}")))
                        } else {
                            Ok(())
                        };
                        s.fire(Outcome::Done(r));
                    }
                })
            })
            .collect();
        let mut tasks = Vec::new();
        for t in 0..TAGS {
            let mut w = n.waiter();
            let tx = tx.clone();
            let finished = finished.clone();
            tasks.push(exe.spawn(async move {
                for i in 0..ROUNDS {
                    let v = i * TAGS as u64 + t as u64;
                    tx.send((w.arm(), v)).unwrap();
                    match w.wait().await {
                        Outcome::Done(Ok(())) => assert_ne!(v % 7, 0, "op {v}"),
                        Outcome::Done(Err(e)) => {
                            assert_eq!(v % 7, 0, "op {v}: {e}");
                            assert!(e.to_string().contains(&v.to_string()), "op {v}: {e}");
                        }
                        Outcome::Read(_) => panic!("op {v}: a read outcome"),
                    }
                }
                finished.set(finished.get() + 1);
            }));
        }
        drop(tx);
        drop(rx);
        n.drive(&exe, || finished.get() == TAGS);
        for c in completers {
            c.join().unwrap();
        }
        let (completions, kicks) = n.counts();
        assert_eq!(completions, TAGS as u64 * ROUNDS);
        assert!(kicks <= completions, "{kicks} wake-ups for {completions}");
    }
}
