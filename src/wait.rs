//! Every wait in one shape: a [`Deadline`] and a [`Cancel`] flag, in one
//! helper, so that no caller can forget either (a wait without both is how
//! a close hangs).
//!
//! - [`pending`] makes a one-shot completion: the [`Fulfil`] side goes to
//!   whoever finishes the operation (as a plain callback with
//!   [`Fulfil::into_callback`]); [`Pending::wait`] waits for it.
//!   [`for_completion`] does both for the engine's `Done` callbacks.
//! - [`wait_until`] waits on a condition variable for a predicate of the
//!   state its mutex guards.
//! - [`retry`] repeats an operation with backoff (a put to the store) until
//!   it succeeds, fails for good, its deadline passes or it is cancelled.
//! - [`Cancel::sleep`] is a sleep that a cancel cuts short.
//!
//! Each wait returns the result once it is there (a finished operation wins
//! over a deadline or a cancel seen at the same time), an error of kind
//! [`ErrorKind::Timeout`] naming the operation once the deadline passes, or
//! the cancel's error (kind [`ErrorKind::Closed`] for a stop) within
//! [`TICK`] of the cancel. A completion dropped without being called (its
//! operation was abandoned) ends the wait at once with kind `Closed`.
//!
//! A deadline is either fixed ([`Deadline::After`]), or measured from the
//! last progress ([`Deadline::NoProgress`]: a close that drains a slow
//! backend keeps waiting while objects are applied), or deliberately absent
//! ([`Deadline::Unbounded`], whose text says what bounds the wait instead;
//! such a wait logs a warning once it has lasted [`LONG_WAIT`]).
//!
//! Waits that do not go through this module, and why:
//! - thread joins (`Volume::stop`, `stop_gc`, the journal's shutdown and the
//!   front ends' pools): each thread is cancelled first and every wait in it
//!   has a deadline or a cancel, so the join ends; a join is never
//!   abandoned, since a detached thread that can still put would write
//!   after the image's lock is released;
//! - work-queue receives and poll loops of long-lived threads (destage,
//!   put workers, journal writer, read-cache writer, the volume's flusher,
//!   NBD and ublk worker pools, the NBD accept loop, the control socket):
//!   they wait for work, not for an operation, and end when their queue
//!   closes or their stop flag is set;
//! - GC's rate-limit pause (`gc::Gc::pace`): sleeps of at most 50 ms that
//!   check `GcHost::should_stop` (GC's cancel flag) in between;
//! - the journal writer's `io_uring` submit-and-wait (device I/O cannot be
//!   cancelled; a full journal fails appends after `io_timeout_msec`);
//! - a ublk queue's async wait on its ring (`ublk::wake`): its completion
//!   is a `Signal` whose drop delivers an error, and the operations it waits
//!   for are bounded by the engine's own deadlines;
//! - NBD flow control (`Budget::acquire`) and the CLI's completion streams
//!   (import, bench): bounded by the engine operations they wait for;
//! - RADOS operations (`backend::rados`): their own deadline,
//!   `rados_op_timeout_secs`.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tracing::warn;

use crate::error::{Error, ErrorKind, Result};

/// Longest a wait sleeps before it looks at its cancel flag and deadline
/// again: a cancel is seen within this.
pub const TICK: Duration = Duration::from_millis(25);

/// An unbounded wait logs a warning once it has lasted this long.
pub const LONG_WAIT: Duration = Duration::from_secs(60);

/// Backoff of [`retry`]: first sleep and longest sleep.
const BACKOFF_FIRST: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// When a wait gives up.
#[derive(Clone, Copy)]
pub enum Deadline<'a> {
    /// This long after the wait starts.
    After(Duration),
    /// Once the progress counter has not changed for this long (it is read
    /// every [`TICK`]): a wait that is slow but moving is not cut short.
    NoProgress(Duration, &'a (dyn Fn() -> u64 + Sync)),
    /// Never, on purpose. The text says what bounds the wait instead; it is
    /// logged if the wait lasts [`LONG_WAIT`].
    Unbounded(&'static str),
}

/// The clock of one wait.
struct Clock<'a> {
    deadline: Deadline<'a>,
    start: Instant,
    mark: u64,
    since: Instant,
    warned: bool,
}

impl<'a> Clock<'a> {
    fn new(deadline: Deadline<'a>) -> Clock<'a> {
        let now = Instant::now();
        let mark = match deadline {
            Deadline::NoProgress(_, p) => p(),
            _ => 0,
        };
        Clock {
            deadline,
            start: now,
            mark,
            since: now,
            warned: false,
        }
    }

    /// How long to sleep before looking again, or the timeout error.
    fn next(&mut self, what: &str) -> Result<Duration> {
        let now = Instant::now();
        let (end, how) = match self.deadline {
            Deadline::After(limit) => (self.start + limit, ("not done after", limit)),
            Deadline::NoProgress(limit, progress) => {
                let p = progress();
                if p != self.mark {
                    self.mark = p;
                    self.since = now;
                }
                (self.since + limit, ("no progress for", limit))
            }
            Deadline::Unbounded(why) => {
                if !self.warned && now - self.start >= LONG_WAIT {
                    self.warned = true;
                    warn!(
                        "{what}: still waiting after {} s (no deadline: {why})",
                        LONG_WAIT.as_secs()
                    );
                }
                return Ok(TICK);
            }
        };
        if now >= end {
            return Err(Error::new(
                ErrorKind::Timeout,
                format!("{what}: {} {} ms", how.0, how.1.as_millis()),
            ));
        }
        Ok((end - now).min(TICK))
    }
}

/// A cancel flag. Cloning shares it; [`Cancel::child`] makes one that is
/// also cancelled with its parent (GC's flag is a child of its volume's).
/// The first cancel sets the error every wait under it returns; cancelling
/// again changes nothing.
#[derive(Clone)]
pub struct Cancel(Arc<Node>);

struct Node {
    state: Mutex<NodeState>,
    cv: Condvar,
    /// Kept alive by its children (the parent holds them weakly), so a
    /// cancel reaches a grandchild whose parent flag was dropped.
    _parent: Option<Arc<Node>>,
}

#[derive(Default)]
struct NodeState {
    reason: Option<(ErrorKind, String)>,
    children: Vec<Weak<Node>>,
}

impl Default for Cancel {
    fn default() -> Self {
        Cancel::new()
    }
}

impl std::fmt::Debug for Cancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Cancel")
            .field(&lock(&self.0.state).reason)
            .finish()
    }
}

impl Cancel {
    /// A flag not yet cancelled.
    pub fn new() -> Cancel {
        Cancel::with_parent(None)
    }

    fn with_parent(parent: Option<Arc<Node>>) -> Cancel {
        Cancel(Arc::new(Node {
            state: Mutex::new(NodeState::default()),
            cv: Condvar::new(),
            _parent: parent,
        }))
    }

    /// A flag cancelled with this one (at once, if this one already is),
    /// or on its own.
    pub fn child(&self) -> Cancel {
        let c = Cancel::with_parent(Some(self.0.clone()));
        // Registered and checked under the parent's lock, so a concurrent
        // `cancel` of the parent either sees the child or the child sees
        // the parent's reason.
        let reason = {
            let mut st = lock(&self.0.state);
            st.children.retain(|w| w.strong_count() > 0);
            st.children.push(Arc::downgrade(&c.0));
            st.reason.clone()
        };
        if let Some((kind, why)) = reason {
            c.cancel(kind, why);
        }
        c
    }

    /// Cancel every wait under this flag and its children: they fail with
    /// an error of `kind` saying `why`.
    pub fn cancel(&self, kind: ErrorKind, why: impl Into<String>) {
        let why = why.into();
        let children: Vec<Arc<Node>> = {
            let mut st = lock(&self.0.state);
            if st.reason.is_some() {
                return;
            }
            st.reason = Some((kind, why.clone()));
            self.0.cv.notify_all();
            st.children.iter().filter_map(Weak::upgrade).collect()
        };
        for c in children {
            Cancel(c).cancel(kind, why.clone());
        }
    }

    /// Whether it is cancelled.
    pub fn is_cancelled(&self) -> bool {
        lock(&self.0.state).reason.is_some()
    }

    /// `Err` naming `what` once cancelled.
    pub fn check(&self, what: &str) -> Result<()> {
        match &lock(&self.0.state).reason {
            Some((kind, why)) => Err(Error::new(*kind, format!("{what}: {why}"))),
            None => Ok(()),
        }
    }

    /// Sleep `d`, or less if cancelled meanwhile (then `Err`, as
    /// [`Cancel::check`]).
    pub fn sleep(&self, what: &str, d: Duration) -> Result<()> {
        let end = Instant::now() + d;
        let mut st = lock(&self.0.state);
        loop {
            if st.reason.is_some() {
                drop(st);
                return self.check(what);
            }
            let now = Instant::now();
            if now >= end {
                return Ok(());
            }
            st = self
                .0
                .cv
                .wait_timeout(st, end - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

enum Slot<T> {
    Waiting,
    Ready(T),
    Abandoned,
}

struct Shared<T> {
    slot: Mutex<Slot<T>>,
    cv: Condvar,
}

/// The finishing side of a [`pending`] completion. Dropping it without
/// [`Fulfil::fulfil`] tells the waiter the operation was abandoned.
pub struct Fulfil<T> {
    shared: Arc<Shared<T>>,
    sent: bool,
}

/// The waiting side of a [`pending`] completion.
pub struct Pending<T> {
    shared: Arc<Shared<T>>,
}

/// A one-shot completion: its finishing and its waiting side.
pub fn pending<T>() -> (Fulfil<T>, Pending<T>) {
    let shared = Arc::new(Shared {
        slot: Mutex::new(Slot::Waiting),
        cv: Condvar::new(),
    });
    (
        Fulfil {
            shared: shared.clone(),
            sent: false,
        },
        Pending { shared },
    )
}

impl<T> Fulfil<T> {
    /// Hand the result to the waiter (if it still waits).
    pub fn fulfil(mut self, v: T) {
        self.sent = true;
        *lock(&self.shared.slot) = Slot::Ready(v);
        self.shared.cv.notify_all();
    }
}

impl<T: Send + 'static> Fulfil<T> {
    /// As a callback (the engine's `Done` and `Completion` when `T` is
    /// `Result<()>`); dropped uncalled, it abandons the operation.
    pub fn into_callback(self) -> Box<dyn FnOnce(T) + Send + 'static> {
        Box::new(move |v| self.fulfil(v))
    }
}

impl<T> Drop for Fulfil<T> {
    fn drop(&mut self) {
        if self.sent {
            return;
        }
        let mut g = lock(&self.shared.slot);
        if matches!(*g, Slot::Waiting) {
            *g = Slot::Abandoned;
        }
        drop(g);
        self.shared.cv.notify_all();
    }
}

impl<T> Pending<T> {
    /// Wait for the result of `what`, until `deadline` or `cancel`.
    pub fn wait(self, what: &str, cancel: &Cancel, deadline: Deadline<'_>) -> Result<T> {
        let mut clock = Clock::new(deadline);
        let mut g = lock(&self.shared.slot);
        loop {
            match std::mem::replace(&mut *g, Slot::Waiting) {
                Slot::Ready(v) => return Ok(v),
                Slot::Abandoned => {
                    return Err(Error::new(
                        ErrorKind::Closed,
                        format!("{what}: abandoned before it completed (stopping)"),
                    ))
                }
                Slot::Waiting => {}
            }
            cancel.check(what)?;
            let d = clock.next(what)?;
            g = self
                .shared
                .cv
                .wait_timeout(g, d)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Start an operation with `start`, which hands the callback on (or fails,
/// and then the callback is dropped), and wait for the callback's result.
pub fn for_completion(
    what: &str,
    cancel: &Cancel,
    deadline: Deadline<'_>,
    start: impl FnOnce(Box<dyn FnOnce(Result<()>) + Send + 'static>) -> Result<()>,
) -> Result<()> {
    cancel.check(what)?;
    let (f, p) = pending::<Result<()>>();
    start(f.into_callback())?;
    p.wait(what, cancel, deadline)?
}

/// Wait on `cv` until `ready` holds for the state `guard` locks; returns
/// the guard with it holding.
pub fn wait_until<'g, S>(
    mut guard: MutexGuard<'g, S>,
    cv: &Condvar,
    what: &str,
    cancel: &Cancel,
    deadline: Deadline<'_>,
    mut ready: impl FnMut(&mut S) -> bool,
) -> Result<MutexGuard<'g, S>> {
    let mut clock = Clock::new(deadline);
    loop {
        if ready(&mut guard) {
            return Ok(guard);
        }
        cancel.check(what)?;
        let d = clock.next(what)?;
        guard = cv
            .wait_timeout(guard, d)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// Run `attempt` until it succeeds or fails with an error `is_final`
/// accepts; between attempts sleep with exponential backoff (10 ms doubling
/// to 2 s), calling `on_retry` first (to log). Gives up with the last
/// error once an attempt fails at or after the deadline (the last sleep is
/// cut to end at the deadline, so one attempt is made there), or once
/// `cancel` is set (a sleep is cut short by it).
pub fn retry<T>(
    what: &str,
    cancel: &Cancel,
    deadline: Deadline<'_>,
    mut attempt: impl FnMut() -> Result<T>,
    is_final: impl Fn(&Error) -> bool,
    mut on_retry: impl FnMut(&Error, Duration),
) -> Result<T> {
    let mut clock = Clock::new(deadline);
    let mut backoff = BACKOFF_FIRST;
    loop {
        let e = match attempt() {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if is_final(&e) || cancel.is_cancelled() || clock.next(what).is_err() {
            return Err(e);
        }
        on_retry(&e, backoff);
        let wake = Instant::now() + backoff;
        loop {
            let now = Instant::now();
            if now >= wake {
                break;
            }
            // At the deadline: one more attempt.
            let Ok(step) = clock.next(what) else { break };
            if cancel.sleep(what, step.min(wake - now)).is_err() {
                return Err(e);
            }
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::thread;

    fn after(ms: u64, f: impl FnOnce() + Send + 'static) -> thread::JoinHandle<()> {
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(ms));
            f();
        })
    }

    const FOREVER: Deadline<'static> = Deadline::Unbounded("test");

    #[test]
    fn returns_the_result_when_done() {
        let (f, p) = pending::<u32>();
        let t = after(50, move || f.fulfil(7));
        let c = Cancel::new();
        assert_eq!(
            p.wait("op", &c, Deadline::After(Duration::from_secs(10)))
                .unwrap(),
            7
        );
        t.join().unwrap();
        // Done before the wait starts, and a done operation wins over a
        // cancel and a passed deadline.
        let (f, p) = pending::<u32>();
        f.fulfil(8);
        c.cancel(ErrorKind::Closed, "stopping");
        assert_eq!(
            p.wait("op", &c, Deadline::After(Duration::ZERO)).unwrap(),
            8
        );
    }

    #[test]
    fn a_passed_deadline_is_a_timeout_naming_the_operation() {
        let (_f, p) = pending::<()>();
        let t0 = Instant::now();
        let e = p
            .wait(
                "final destage",
                &Cancel::new(),
                Deadline::After(Duration::from_millis(200)),
            )
            .unwrap_err();
        let took = t0.elapsed();
        assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
        assert!(e.to_string().contains("final destage"), "{e}");
        assert!(e.to_string().contains("200 ms"), "{e}");
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }

    #[test]
    fn progress_resets_the_deadline() {
        let n = Arc::new(AtomicU64::new(0));
        let (f, p) = pending::<()>();
        let n2 = n.clone();
        // Progress every 50 ms for 600 ms, then done: three times the limit.
        let t = thread::spawn(move || {
            for _ in 0..12 {
                thread::sleep(Duration::from_millis(50));
                n2.fetch_add(1, Ordering::SeqCst);
            }
            f.fulfil(());
        });
        let progress = || n.load(Ordering::SeqCst);
        let d = Deadline::NoProgress(Duration::from_millis(200), &progress);
        p.wait("drain", &Cancel::new(), d).unwrap();
        t.join().unwrap();
        // Progress that stops: a timeout one limit after the last of it.
        let n = Arc::new(AtomicU64::new(0));
        let n2 = n.clone();
        let (_f, p) = pending::<()>();
        let t = thread::spawn(move || {
            for _ in 0..6 {
                thread::sleep(Duration::from_millis(50));
                n2.fetch_add(1, Ordering::SeqCst);
            }
        });
        let progress = || n.load(Ordering::SeqCst);
        let t0 = Instant::now();
        let e = p
            .wait(
                "drain",
                &Cancel::new(),
                Deadline::NoProgress(Duration::from_millis(200), &progress),
            )
            .unwrap_err();
        let took = t0.elapsed();
        t.join().unwrap();
        assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
        assert!(e.to_string().contains("no progress for 200 ms"), "{e}");
        assert!(took >= Duration::from_millis(450), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
    }

    #[test]
    fn a_cancel_ends_the_wait_promptly() {
        let c = Cancel::new();
        let (_f, p) = pending::<()>();
        let c2 = c.clone();
        let t0 = Instant::now();
        let t = after(100, move || {
            c2.cancel(ErrorKind::Closed, "image x is stopping")
        });
        let e = p.wait("GC object", &c, FOREVER).unwrap_err();
        let took = t0.elapsed();
        t.join().unwrap();
        assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
        assert_eq!(
            e.to_string(),
            "volume closed: GC object: image x is stopping"
        );
        assert!(took < Duration::from_millis(100) + 4 * TICK, "{took:?}");
        // Already cancelled: at once, and the first reason stays.
        c.cancel(ErrorKind::Fenced, "later");
        let (_f, p) = pending::<()>();
        let e = p.wait("again", &c, FOREVER).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
    }

    #[test]
    fn an_abandoned_operation_ends_the_wait() {
        let (f, p) = pending::<()>();
        let t = after(50, move || drop(f));
        let e = p.wait("write", &Cancel::new(), FOREVER).unwrap_err();
        t.join().unwrap();
        assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
        assert!(e.to_string().contains("write"), "{e}");
        // A callback dropped uncalled, and a start that fails.
        let e = for_completion("flush", &Cancel::new(), FOREVER, |d| {
            drop(d);
            Ok(())
        })
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
        let e = for_completion("flush", &Cancel::new(), FOREVER, |_| {
            Err(Error::new(ErrorKind::ReadOnly, "no"))
        })
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ReadOnly, "{e}");
        // A callback's error is the wait's.
        let e = for_completion("flush", &Cancel::new(), FOREVER, |d| {
            d(Err(Error::new(ErrorKind::Io, "disk")));
            Ok(())
        })
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    }

    #[test]
    fn children_are_cancelled_with_their_parent_only() {
        let parent = Cancel::new();
        let a = parent.child();
        let b = parent.child();
        b.cancel(ErrorKind::Closed, "GC stopping");
        assert!(!parent.is_cancelled() && !a.is_cancelled() && b.is_cancelled());
        parent.cancel(ErrorKind::Closed, "volume stopping");
        assert!(a.is_cancelled());
        let e = a.check("x").unwrap_err();
        assert!(e.to_string().contains("volume stopping"), "{e}");
        // b keeps its own reason; a child made later starts cancelled.
        assert!(b.check("x").unwrap_err().to_string().contains("GC"));
        assert!(parent.child().is_cancelled());
        // A grandchild waiting is woken by the root.
        let root = Cancel::new();
        let leaf = root.child().child();
        let r2 = root.clone();
        let t = after(50, move || r2.cancel(ErrorKind::Closed, "stop"));
        let t0 = Instant::now();
        assert!(leaf.sleep("idle", Duration::from_secs(10)).is_err());
        assert!(t0.elapsed() < Duration::from_secs(1));
        t.join().unwrap();
    }

    #[test]
    fn sleep_runs_its_time_unless_cancelled() {
        let c = Cancel::new();
        let t0 = Instant::now();
        c.sleep("backoff", Duration::from_millis(60)).unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(60));
        let c2 = c.clone();
        let t = after(50, move || c2.cancel(ErrorKind::Closed, "stop"));
        let t0 = Instant::now();
        let e = c.sleep("backoff", Duration::from_secs(10)).unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(1));
        assert!(e.to_string().contains("backoff: stop"), "{e}");
        t.join().unwrap();
    }

    #[test]
    fn wait_until_sees_the_condition_a_deadline_and_a_cancel() {
        let state = Arc::new((Mutex::new(0u32), Condvar::new()));
        let s2 = state.clone();
        let t = after(50, move || {
            *s2.0.lock().unwrap() = 3;
            s2.1.notify_all();
        });
        let c = Cancel::new();
        let g = wait_until(
            state.0.lock().unwrap(),
            &state.1,
            "room",
            &c,
            Deadline::After(Duration::from_secs(10)),
            |n| *n == 3,
        )
        .unwrap();
        assert_eq!(*g, 3);
        drop(g);
        t.join().unwrap();
        let e = wait_until(
            state.0.lock().unwrap(),
            &state.1,
            "room",
            &c,
            Deadline::After(Duration::from_millis(100)),
            |n| *n == 4,
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
        assert!(e.to_string().contains("room"), "{e}");
        // No notify: the cancel alone is seen within a tick or so.
        let c2 = c.clone();
        let t = after(50, move || c2.cancel(ErrorKind::Closed, "stop"));
        let t0 = Instant::now();
        let e = wait_until(
            state.0.lock().unwrap(),
            &state.1,
            "room",
            &c,
            FOREVER,
            |n| *n == 4,
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
        assert!(t0.elapsed() < Duration::from_millis(50) + 4 * TICK);
        t.join().unwrap();
    }

    #[test]
    fn retry_backs_off_until_success_final_error_deadline_or_cancel() {
        let c = Cancel::new();
        // Succeeds at the third attempt, after two logged retries.
        let mut n = 0;
        let mut logged = vec![];
        let r = retry(
            "put x",
            &c,
            FOREVER,
            || {
                n += 1;
                if n < 3 {
                    Err(Error::new(ErrorKind::Io, "down"))
                } else {
                    Ok(n)
                }
            },
            |_| false,
            |_, b| logged.push(b),
        );
        assert_eq!(r.unwrap(), 3);
        assert_eq!(
            logged,
            [Duration::from_millis(10), Duration::from_millis(20)]
        );
        // A final error is not retried.
        let mut n = 0;
        let e = retry(
            "put x",
            &c,
            FOREVER,
            || -> Result<()> {
                n += 1;
                Err(Error::new(ErrorKind::Fenced, "fenced"))
            },
            |e| e.kind() == ErrorKind::Fenced,
            |_, _| {},
        )
        .unwrap_err();
        assert_eq!((e.kind(), n), (ErrorKind::Fenced, 1));
        // The deadline: the last error, in about the deadline.
        let t0 = Instant::now();
        let e = retry(
            "put x",
            &c,
            Deadline::After(Duration::from_millis(300)),
            || -> Result<()> { Err(Error::new(ErrorKind::NoSpace, "full")) },
            |_| false,
            |_, _| {},
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NoSpace, "{e}");
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(2),
            "{took:?}"
        );
        // A cancel cuts the longest backoff short.
        let c2 = c.clone();
        let t = after(2500, move || c2.cancel(ErrorKind::Closed, "stop"));
        let t0 = Instant::now();
        let mut attempts = 0;
        let e = retry(
            "put x",
            &c,
            FOREVER,
            || -> Result<()> {
                attempts += 1;
                Err(Error::new(ErrorKind::Io, "down"))
            },
            |_| false,
            |_, _| {},
        )
        .unwrap_err();
        let took = t0.elapsed();
        t.join().unwrap();
        assert_eq!(e.kind(), ErrorKind::Io, "{e}");
        assert!(took < Duration::from_millis(2500) + 4 * TICK, "{took:?}");
        assert!(attempts >= 8, "{attempts}");
    }
}
