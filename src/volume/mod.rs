//! The engine facade: an open image that many threads read and write.
//!
//! Byte offsets and lengths must be multiples of 512. Writes are durable in
//! the journal when acknowledged; FLUSH makes every earlier write durable
//! across a host crash (see `README.md`, "Consistency guarantees").

pub mod image;

use std::path::PathBuf;
use std::sync::Arc;

use crate::backend::ObjectStore;
use crate::config::Config;
use crate::error::Result;
use crate::units::{ImageUuid, JournalSeq};

pub use image::ImageSpec;

/// Called once when an asynchronously submitted operation completes.
pub type Completion = Box<dyn FnOnce(Result<()>) + Send + 'static>;

/// Everything [`Volume::open`] needs.
pub struct VolumeOptions {
    /// Configuration (sizes, windows, intervals).
    pub config: Config,
    /// The pool's object store.
    pub store: Arc<dyn ObjectStore>,
    /// Image name within the pool (no pool prefix).
    pub image: String,
    /// Journal file or block device.
    pub journal_path: PathBuf,
}

/// Counters for `info` and `bench`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VolumeStats {
    /// Client writes (chunks) journaled.
    pub writes: u64,
    /// Client bytes written.
    pub write_bytes: u64,
    /// Journal records written (group commits).
    pub journal_records: u64,
    /// Journal fdatasyncs.
    pub journal_syncs: u64,
    /// Data objects put to the backend.
    pub data_objects: u64,
    /// Bytes of data objects put.
    pub data_object_bytes: u64,
    /// Checkpoint pieces put.
    pub checkpoint_pieces: u64,
    /// Bytes of checkpoint pieces put.
    pub checkpoint_bytes: u64,
    /// Backend reads (ranged gets) for client reads.
    pub backend_reads: u64,
    /// Extents in the durable map.
    pub map_extents: u64,
    /// Journal operations replayed at open.
    pub replayed: u64,
    /// Journal bytes in use.
    pub journal_used_bytes: u64,
}

/// An open image.
pub struct Volume {
    _private: (),
}

impl Volume {
    /// Open an existing image: lock it, recover (checkpoint + roll-forward +
    /// journal replay) and start the background threads.
    pub fn open(opts: VolumeOptions) -> Result<Volume> {
        let _ = opts;
        todo!()
    }

    /// Disk size in bytes.
    pub fn size_bytes(&self) -> u64 {
        todo!()
    }

    /// Image identity.
    pub fn uuid(&self) -> ImageUuid {
        todo!()
    }

    /// Read `buf.len()` bytes at `offset`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let _ = (offset, buf);
        todo!()
    }

    /// Write and wait for the journal (not a FLUSH).
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        let _ = (offset, data);
        todo!()
    }

    /// Write with FUA: durable across a host crash when it returns.
    pub fn write_fua(&self, offset: u64, data: &[u8]) -> Result<()> {
        let _ = (offset, data);
        todo!()
    }

    /// Submit a write without waiting; `done` runs when it is acknowledged.
    /// Writes submitted from one thread are ordered in submission order.
    /// Returns the journal sequence of its last chunk.
    pub fn submit_write(
        &self,
        offset: u64,
        data: &[u8],
        fua: bool,
        done: Completion,
    ) -> Result<JournalSeq> {
        let _ = (offset, data, fua, done);
        todo!()
    }

    /// Discard a range (reads as zeros afterwards); journaled like a write.
    pub fn trim(&self, offset: u64, len: u64) -> Result<()> {
        let _ = (offset, len);
        todo!()
    }

    /// Zero a range; journaled like a write.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        let _ = (offset, len);
        todo!()
    }

    /// Submit a trim (`zero = false`) or write-zeroes (`zero = true`).
    pub fn submit_discard(
        &self,
        offset: u64,
        len: u64,
        zero: bool,
        done: Completion,
    ) -> Result<JournalSeq> {
        let _ = (offset, len, zero, done);
        todo!()
    }

    /// FLUSH: every write submitted before it is durable when it returns.
    pub fn flush(&self) -> Result<()> {
        todo!()
    }

    /// Submit a FLUSH covering every write submitted before it.
    pub fn submit_flush(&self, done: Completion) -> Result<()> {
        let _ = done;
        todo!()
    }

    /// Counters.
    pub fn stats(&self) -> VolumeStats {
        todo!()
    }

    /// Clean shutdown: destage everything, checkpoint, mark clean, unlock.
    pub fn close(self) -> Result<()> {
        todo!()
    }

    /// Test hook: stop like a killed process (no destage, no checkpoint, no
    /// clean mark); the lock is released.
    pub fn crash(self) {
        todo!()
    }
}
