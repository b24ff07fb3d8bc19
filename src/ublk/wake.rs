//! Handing an operation to another thread and waking the queue's ring when
//! it is done.
//!
//! A ublk queue thread sleeps in `io_uring_enter` on its own ring, so a
//! result produced on another thread (the journal writer, a read worker)
//! must arrive as a completion on that ring. Each tag owns a [`Waiter`]: an
//! eventfd plus a result slot. The other thread stores the result in the
//! slot and writes the eventfd; the tag's task has a `POLL_ADD` on the
//! eventfd in flight on the queue ring, so the kernel posts a completion and
//! the executor resumes the task. `POLL_ADD` takes no user buffer, so no
//! memory is lent to the kernel.
//!
//! Results are tagged with a generation number: [`Waiter::arm`] starts a
//! new operation, and a late or duplicate signal from an earlier one (for
//! example a [`Signal`] dropped after its operation already failed) only
//! causes a spurious wake-up, never a wrong result.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

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

struct Shared {
    efd: OwnedFd,
    slot: Mutex<(u64, Option<Outcome>)>,
}

impl Shared {
    fn post(&self, generation: u64, outcome: Outcome) {
        {
            let mut g = self.slot.lock().unwrap_or_else(|e| e.into_inner());
            if g.0 != generation {
                return;
            }
            g.1 = Some(outcome);
        }
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
            // signals): the task is already awake in that case.
            tracing::debug!("eventfd write returned {r}");
        }
    }
}

/// Delivers one operation's outcome to its [`Waiter`]. Dropping it without
/// calling [`Signal::fire`] delivers a `Closed` error, so a task can never
/// wait forever on an operation that was abandoned.
pub struct Signal {
    shared: Arc<Shared>,
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
    shared: Arc<Shared>,
    generation: u64,
}

impl Waiter {
    /// A new waiter with its own non-blocking eventfd.
    pub fn new() -> std::io::Result<Waiter> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
        let efd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Waiter {
            shared: Arc::new(Shared {
                efd,
                slot: Mutex::new((0, None)),
            }),
            generation: 0,
        })
    }

    /// Start a new operation: returns the [`Signal`] its worker fires.
    pub fn arm(&mut self) -> Signal {
        self.generation += 1;
        {
            let mut g = self.shared.slot.lock().unwrap_or_else(|e| e.into_inner());
            *g = (self.generation, None);
        }
        Signal {
            shared: self.shared.clone(),
            generation: self.generation,
            fired: false,
        }
    }

    fn take(&self) -> Option<Outcome> {
        let mut g = self.shared.slot.lock().unwrap_or_else(|e| e.into_inner());
        if g.0 == self.generation {
            g.1.take()
        } else {
            None
        }
    }

    fn drain_eventfd(&self) {
        let mut v: u64 = 0;
        // SAFETY: reading 8 bytes into a local u64 from our own
        // non-blocking eventfd; EAGAIN (nothing pending) is fine.
        unsafe {
            libc::read(
                self.shared.efd.as_raw_fd(),
                (&mut v as *mut u64).cast::<libc::c_void>(),
                8,
            );
        }
    }

    /// Wait on the queue's ring for the current operation's outcome.
    pub async fn wait(&self) -> Outcome {
        loop {
            if let Some(o) = self.take() {
                self.drain_eventfd();
                return o;
            }
            let sqe =
                opcode::PollAdd::new(types::Fd(self.shared.efd.as_raw_fd()), libc::POLLIN as u32)
                    .build();
            match ublk_submit_sqe_async(sqe, UblkUringData::Target as u64).await {
                Ok(r) if r >= 0 || r == -libc::EINTR || r == -libc::EAGAIN => {}
                Ok(r) => return ring_failure(r),
                Err(e) => {
                    tracing::error!("cannot wait on the queue ring: {e}");
                    return ring_failure(-libc::EIO);
                }
            }
            self.drain_eventfd();
        }
    }
}

fn ring_failure(r: i32) -> Outcome {
    Outcome::Done(Err(Error::new(
        ErrorKind::Io,
        format!("poll on the queue ring failed: errno {}", -r),
    )))
}
