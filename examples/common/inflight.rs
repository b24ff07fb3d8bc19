//! Shared by the examples (`#[path = "common/inflight.rs"] mod inflight;`):
//! a bound on asynchronous writes in flight.

use std::sync::{Condvar, Mutex};

/// Counts writes in flight and the first error any of them reported.
#[derive(Default)]
pub struct InFlight {
    state: Mutex<(u64, Option<lsvd::Error>)>,
    cv: Condvar,
}

impl InFlight {
    /// Wait until fewer than `max` are in flight, then count one more.
    pub fn acquire(&self, max: u64) -> lsvd::Result<()> {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while g.0 >= max && g.1.is_none() {
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        if let Some(e) = g.1.take() {
            return Err(e);
        }
        g.0 += 1;
        Ok(())
    }

    pub fn release(&self, r: lsvd::Result<()>) {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        g.0 -= 1;
        if let Err(e) = r {
            g.1.get_or_insert(e);
        }
        self.cv.notify_all();
    }

    /// Wait until nothing is in flight.
    pub fn drain(&self) -> lsvd::Result<()> {
        self.acquire(1)?;
        self.release(Ok(()));
        Ok(())
    }
}
