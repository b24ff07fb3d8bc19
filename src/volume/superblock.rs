//! Rewriting the image superblock (held under the `sb` lock across the put).

use std::sync::atomic::Ordering;

use tracing::{info, warn};

use crate::catalog::image;
use crate::error::{Error, ErrorKind, Result};
use crate::format::superblock::Superblock;
use crate::wait::Cancel;

use super::Inner;

impl Inner {
    /// Change and rewrite the superblock. The lock is held across the put
    /// so two rewrites can never land in the opposite order; on failure the
    /// in-memory copy stays as the store has it (see
    /// [`Inner::write_superblock_with`]). The put is retried for at most
    /// `io_timeout_msec`, and given up when the volume stops.
    pub(super) fn write_superblock(&self, f: impl FnOnce(&mut Superblock)) -> Result<()> {
        self.write_superblock_until(&self.cancel, f)
    }

    /// [`Inner::write_superblock`] under another cancel flag (GC's, so a
    /// GC stopping does not sit out the put's retries holding the lock).
    pub(super) fn write_superblock_until(
        &self,
        cancel: &Cancel,
        f: impl FnOnce(&mut Superblock),
    ) -> Result<()> {
        self.write_superblock_with_until(cancel, |sb| {
            f(sb);
            Ok(())
        })
    }

    /// Like [`Inner::write_superblock`], with a change that may refuse
    /// (checked against the superblock as the store has it).
    pub(crate) fn write_superblock_with(
        &self,
        f: impl FnOnce(&mut Superblock) -> Result<()>,
    ) -> Result<()> {
        self.write_superblock_with_until(&self.cancel, f)
    }

    /// The rewrite itself.
    ///
    /// A put that fails may still have landed, or may land later (a RADOS
    /// `write_full` that timed out after the OSD applied it). Ordering 6
    /// therefore also says: after a failed put the superblock is read back
    /// at once. If the store holds what was written, the change took effect
    /// and this returns `Ok`. Otherwise the copy in memory is *unsure*, and
    /// the next rewrite starts from the superblock re-read from the store,
    /// never from memory, so a change that landed (a snapshot entry a
    /// clone may already link to) is never silently dropped.
    pub(super) fn write_superblock_with_until(
        &self,
        cancel: &Cancel,
        f: impl FnOnce(&mut Superblock) -> Result<()>,
    ) -> Result<()> {
        let mut guard = self.sb.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh_superblock_locked(&mut guard)?;
        let mut sb = guard.clone();
        f(&mut sb)?;
        sb.update_seq += 1;
        let Err(e) = self.put_bounded(&self.image, &sb.encode(), cancel) else {
            *guard = sb;
            return Ok(());
        };
        let e = e.prefixed(format!("write superblock of {}", self.image));
        // A fenced put never lands (and a read would fail the same way).
        if e.kind() == ErrorKind::Fenced {
            return Err(e);
        }
        match image::read_superblock(self.store.as_ref(), &self.image) {
            Ok(stored) if stored == sb => {
                warn!(image = %self.image, update_seq = sb.update_seq,
                    "the superblock put reported an error but landed (read back): taken as done: {e}");
                *guard = sb;
                Ok(())
            }
            Ok(_) => {
                // Not landed yet; it may still land.
                self.sb_unsure.store(true, Ordering::SeqCst);
                Err(e)
            }
            Err(re) => {
                warn!(image = %self.image,
                    "cannot read the superblock back after a failed put (re-read before the next rewrite): {re}");
                self.sb_unsure.store(true, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    /// If a superblock put failed since the last good rewrite, take the
    /// store's superblock as the copy in memory (see
    /// [`Inner::write_superblock_with`]). The live disk size stays this
    /// volume's: a failed resize keeps (or went back to) it, and it is the
    /// size written next.
    pub(super) fn refresh_superblock_locked(&self, cur: &mut Superblock) -> Result<()> {
        if !self.sb_unsure.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut stored = image::read_superblock(self.store.as_ref(), &self.image).map_err(|e| {
            e.prefixed(format!(
                "re-read superblock of {} after a failed write (nothing rewritten)",
                self.image
            ))
        })?;
        if stored.uuid != cur.uuid {
            return Err(Error::new(
                ErrorKind::Mismatch,
                format!(
                    "superblock of {} now names image {} (this volume is {}): nothing rewritten",
                    self.image, stored.uuid, cur.uuid
                ),
            ));
        }
        if stored != *cur {
            info!(image = %self.image, update_seq = stored.update_seq,
                "superblock re-read after a failed write: the store's copy is newer");
        }
        stored.size_bytes = cur.size_bytes;
        *cur = stored;
        self.sb_unsure.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Re-read the superblock now if a put of it failed since the last good
    /// rewrite (before a check against the copy in memory).
    pub(crate) fn refresh_superblock(&self) -> Result<()> {
        let mut guard = self.sb.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh_superblock_locked(&mut guard)
    }
}
