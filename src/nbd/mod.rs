//! The NBD export: serves an image to remote clients (QEMU, `nbdinfo`,
//! `nbdfuse`, `fio --ioengine=nbd`, the kernel's `nbd-client`) over TCP or
//! a unix socket. NBD has no authentication and no encryption here: anyone
//! who can reach the socket can read and write the image.
//!
//! [`proto`] holds the wire format, [`server`] the listener and the
//! connections. The server works on an [`Export`], a small trait that
//! [`Volume`] implements, so a read-only snapshot view can be served the
//! same way.

#[doc(hidden)]
pub mod mem;
pub mod proto;
pub mod server;

use crate::error::Result;
use crate::volume::{Completion, Extent, Volume};

pub use server::{serve, Limits, Listener, ServeOptions};

/// What the NBD server needs of an image. Offsets and lengths are bytes;
/// the server checks them against [`Export::size_bytes`] before calling,
/// and an export rejects misalignment (below [`Export::min_block`]) with
/// an `InvalidInput` error.
pub trait Export: Send + Sync + 'static {
    /// Size in bytes.
    fn size_bytes(&self) -> u64;
    /// Whether the export refuses writes (a snapshot view); the server can
    /// also be told to refuse them.
    fn read_only(&self) -> bool;
    /// Smallest unit of I/O (a power of two); advertised to clients.
    fn min_block(&self) -> u32;
    /// Whether a FLUSH (or FUA) on one connection makes the writes that
    /// any connection completed before it durable, which is what
    /// `NBD_FLAG_CAN_MULTI_CONN` promises.
    fn flush_covers_all_connections(&self) -> bool;
    /// Read `buf.len()` bytes at `offset`.
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
    /// Write; acknowledged once journaled.
    fn write(&self, offset: u64, data: &[u8]) -> Result<()>;
    /// Write that is durable when it returns.
    fn write_fua(&self, offset: u64, data: &[u8]) -> Result<()>;
    /// Make every earlier write durable.
    fn flush(&self) -> Result<()>;
    /// Discard a range (reads as zeros afterwards); with `fua`, durable
    /// when it returns.
    fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<()>;
    /// Zero a range; with `fua`, durable when it returns.
    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<()>;
    /// The allocation of `[offset, offset + len)` (aligned to
    /// [`Export::min_block`], inside the export) as consecutive runs, for
    /// `NBD_CMD_BLOCK_STATUS`. The default: all data.
    fn allocation(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let _ = offset;
        Ok(vec![Extent { len, data: true }])
    }
    /// Start a write without waiting: `data` is copied before this returns
    /// and `done` runs once the write is acknowledged. An error returned
    /// here means `done` was not called. The default waits.
    fn submit_write(&self, offset: u64, data: &[u8], fua: bool, done: Completion) -> Result<()> {
        let r = if fua {
            self.write_fua(offset, data)
        } else {
            self.write(offset, data)
        };
        done(r);
        Ok(())
    }
}

impl Export for Volume {
    fn size_bytes(&self) -> u64 {
        Volume::size_bytes(self)
    }

    fn read_only(&self) -> bool {
        // A snapshot view refuses writes itself.
        self.is_read_only()
    }

    fn min_block(&self) -> u32 {
        // `Volume` checks offsets and lengths against 512-byte sectors
        // (`Inner::check_range`).
        crate::units::SECTOR as u32
    }

    fn flush_covers_all_connections(&self) -> bool {
        // One `Volume` is shared by every connection. `Volume::submit_flush`
        // flushes the journal up to `last_sent`, the last sequence handed
        // to the journal by any thread (set under the state lock in
        // `journal_append`), and the journal's flush waits for every record
        // up to there with no hole below it, then fdatasyncs. A write whose
        // reply was sent on any connection had been submitted, so any later
        // FLUSH covers it; a FUA write's completion runs after the same
        // flush of everything up to its own sequence. Reads of any
        // connection see every acknowledged write (one map, one overlay).
        true
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        Volume::read(self, offset, buf)
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        Volume::write(self, offset, data)
    }

    fn write_fua(&self, offset: u64, data: &[u8]) -> Result<()> {
        Volume::write_fua(self, offset, data)
    }

    fn flush(&self) -> Result<()> {
        Volume::flush(self)
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<()> {
        if fua {
            Volume::trim_fua(self, offset, len)
        } else {
            Volume::trim(self, offset, len)
        }
    }

    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<()> {
        if fua {
            Volume::write_zeroes_fua(self, offset, len)
        } else {
            Volume::write_zeroes(self, offset, len)
        }
    }

    fn submit_write(&self, offset: u64, data: &[u8], fua: bool, done: Completion) -> Result<()> {
        Volume::submit_write(self, offset, data, fua, done).map(|_| ())
    }

    fn allocation(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        // Writes acknowledged but not destaged are data; a clone's holes
        // are what its parent holds; a snapshot view answers for itself.
        Volume::allocation(self, offset, len)
    }
}
