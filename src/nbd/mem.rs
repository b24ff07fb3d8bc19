//! An [`Export`] in memory, for tests and fuzzing of the server: like
//! `Volume`, it takes only I/O aligned to its 512-byte blocks and inside
//! its size.

use std::sync::Mutex;

use super::Export;
use crate::error::{Error, ErrorKind, Result};

/// What a [`MemExport`] does with a request the server should not have
/// passed it (misaligned, past the end, a write when read-only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misuse {
    /// Refuse it with `InvalidInput` (or `ReadOnly`), as `Volume` does.
    Refuse,
    /// Panic: the server's own checks must have kept it out (fuzzing).
    Panic,
}

/// A byte vector served as an export.
pub struct MemExport {
    data: Mutex<Vec<u8>>,
    read_only: bool,
    misuse: Misuse,
}

impl MemExport {
    /// `size` zero bytes.
    pub fn new(size: usize, read_only: bool, misuse: Misuse) -> MemExport {
        MemExport {
            data: Mutex::new(vec![0u8; size]),
            read_only,
            misuse,
        }
    }

    fn data(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn refuse(&self, kind: ErrorKind, what: String) -> Result<()> {
        assert!(self.misuse == Misuse::Refuse, "the server passed {what}");
        Err(Error::new(kind, what))
    }

    fn check(&self, offset: u64, len: u64) -> Result<()> {
        if !offset.is_multiple_of(512) || !len.is_multiple_of(512) {
            return self.refuse(
                ErrorKind::InvalidInput,
                format!("a misaligned request: {offset} + {len}"),
            );
        }
        if offset
            .checked_add(len)
            .is_none_or(|e| e > self.size_bytes())
        {
            return self.refuse(
                ErrorKind::InvalidInput,
                format!("a request past the end: {offset} + {len}"),
            );
        }
        if len == 0 {
            // As `Volume` may: an empty request is refused (not a misuse).
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "empty request".to_string(),
            ));
        }
        Ok(())
    }

    fn write_check(&self, offset: u64, len: u64) -> Result<()> {
        if self.read_only {
            return self.refuse(
                ErrorKind::ReadOnly,
                "a write to a read-only export".to_string(),
            );
        }
        self.check(offset, len)
    }
}

impl Export for MemExport {
    fn size_bytes(&self) -> u64 {
        self.data().len() as u64
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn min_block(&self) -> u32 {
        512
    }
    fn flush_covers_all_connections(&self) -> bool {
        true
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check(offset, buf.len() as u64)?;
        buf.copy_from_slice(&self.data()[offset as usize..][..buf.len()]);
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.write_check(offset, data.len() as u64)?;
        self.data()[offset as usize..][..data.len()].copy_from_slice(data);
        Ok(())
    }
    fn write_fua(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.write(offset, data)
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn trim(&self, offset: u64, len: u64, _fua: bool) -> Result<()> {
        self.write_zeroes(offset, len, false)
    }
    fn write_zeroes(&self, offset: u64, len: u64, _fua: bool) -> Result<()> {
        self.write_check(offset, len)?;
        self.data()[offset as usize..][..len as usize].fill(0);
        Ok(())
    }
}
