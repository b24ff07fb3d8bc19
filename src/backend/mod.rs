//! Object stores: the backend that holds data objects, checkpoints and the
//! superblock of each image.
//!
//! Implementations: [`dir::DirStore`] (the embedded default),
//! [`mem::MemStore`] (tests) and [`fault::FaultStore`] (a wrapper that fails,
//! delays or drops chosen operations, for tests) and
//! [`counting::CountingStore`] (a wrapper that counts traffic).
//!
//! Object names are checked the same way by every store, see
//! [`check_object_name`].

pub mod counting;
pub mod dir;
pub mod fault;
pub mod mem;
#[cfg(feature = "rados")]
pub mod rados;

pub use counting::{CountingStore, StoreStats};
pub use dir::DirStore;
pub use fault::{FaultAction, FaultCounts, FaultOp, FaultRule, FaultStore};
pub use mem::MemStore;

use crate::error::Result;

/// Longest object (or lock) name in bytes. Leaves room under the 255-byte
/// file name limit for the `.tmp.` / `.lock.` prefixes and the temp suffix
/// that [`dir::DirStore`] adds.
pub const MAX_OBJECT_NAME: usize = 200;

/// Check that `name` is a valid object or lock name: non-empty, at most
/// [`MAX_OBJECT_NAME`] bytes, no `/`, no NUL, and not starting with `.`
/// (names starting with `.` are reserved for a store's temp and lock files).
///
/// Returns what is wrong, for the caller to put into an error with context.
pub fn check_object_name(name: &str) -> std::result::Result<(), &'static str> {
    if name.is_empty() {
        return Err("object name is empty");
    }
    if name.len() > MAX_OBJECT_NAME {
        return Err("object name is longer than 200 bytes");
    }
    if name.contains('/') {
        return Err("object name contains '/'");
    }
    if name.contains('\0') {
        return Err("object name contains NUL");
    }
    if name.starts_with('.') {
        return Err("object name starts with '.' (reserved for temp and lock files)");
    }
    Ok(())
}

/// An exclusive lock held on a store; released when dropped.
pub trait StoreLock: Send + Sync {
    /// Who holds it (the `owner` string given to [`ObjectStore::lock`]).
    fn owner(&self) -> &str;

    /// Release the lock and remove what it lives in, as the last step of
    /// removing its image (the directory store's `.lock.<name>` file; a
    /// RADOS lock went with the superblock object). Best effort: a failure
    /// leaves only an empty lock file. The default just releases it.
    fn release_and_remove(self: Box<Self>) {}
}

/// A flat namespace of immutable-once-written objects (one pool).
///
/// Every method is synchronous and safe to call from many threads at once.
/// Errors carry the store, the object name and the operation.
pub trait ObjectStore: Send + Sync + 'static {
    /// Store `data` as object `name`, replacing any previous content
    /// atomically: a reader sees the old object or the new one, never a mix.
    /// The object is durable when this returns `Ok`.
    fn put(&self, name: &str, data: &[u8]) -> Result<()>;

    /// Store the concatenation of `parts` as object `name`, with the same
    /// guarantees as [`ObjectStore::put`]. Stores that can write the parts
    /// without first joining them override this.
    fn put_parts(&self, name: &str, parts: &[&[u8]]) -> Result<()> {
        self.put(name, &parts.concat())
    }

    /// Read up to `len` bytes of `name` starting at `offset`. Returns fewer
    /// bytes if the object ends first (none if `offset` is past the end).
    /// A missing object is an error of kind `NotFound`.
    fn get(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>>;

    /// The size of `name` in bytes, or `None` if it does not exist.
    fn stat(&self, name: &str) -> Result<Option<u64>>;

    /// Delete `name`; deleting a missing object succeeds.
    fn delete(&self, name: &str) -> Result<()>;

    /// The names that start with `prefix`, sorted ascending.
    fn list(&self, prefix: &str) -> Result<Vec<String>>;

    /// Take the exclusive lock `name` (one per image) for fencing. Fails with
    /// kind `Locked`, naming the current holder, if someone else holds it.
    /// `owner` describes the taker (host, pid, image UUID). A store may keep
    /// the lock on an object called `name` and create it, empty, if it does
    /// not exist (RADOS does: the lock lives on the superblock object).
    fn lock(&self, name: &str, owner: &str) -> Result<Box<dyn StoreLock>>;

    /// Take the lock `name` shared: any number of shared holders at once,
    /// and no exclusive holder while one remains ([`ObjectStore::lock`] of
    /// the same name then fails with kind `Locked`, and this fails while an
    /// exclusive holder has it). The readers of a snapshot hold one, so that
    /// its removal is refused while they read. The default takes it
    /// exclusively: stricter, one reader at a time.
    fn lock_shared(&self, name: &str, owner: &str) -> Result<Box<dyn StoreLock>> {
        self.lock(name, owner)
    }

    /// Who holds the lock `name`, one description each (host, pid, image
    /// and, where the store knows it, client and address). Stores whose
    /// locks are process-local report none.
    fn lock_holders(&self, _name: &str) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// Break the lock `name` held by someone else, fencing the holder first
    /// so that it can never write again; returns a description of each
    /// holder broken (none if the lock was free).
    ///
    /// Stores whose locks die with the holding process (directory, memory)
    /// cannot fence a live holder: they report a free lock as nothing to
    /// break and a held one as an error of kind `Locked`.
    fn break_lock(&self, name: &str) -> Result<Vec<String>> {
        match self.lock(name, "lock break probe") {
            Ok(_probe) => Ok(Vec::new()),
            Err(e) if e.kind() == crate::error::ErrorKind::Locked => Err(e.prefixed(format!(
                "{} cannot break a lock held by a live process (it is released when \
                 that process exits)",
                self.describe()
            ))),
            Err(e) => Err(e),
        }
    }

    /// Break only the holds of lock `name` whose description (as
    /// [`ObjectStore::lock_holders`] gives it) `which` accepts, fencing each
    /// such holder first as [`ObjectStore::break_lock`] does; the others
    /// keep theirs (the live readers beside a dead one on a shared lock).
    /// Returns a description of each hold broken (none if none matched).
    ///
    /// Stores whose locks die with the holding process (directory, memory)
    /// have no dead holders to break: a matching holder is a live process,
    /// an error of kind `Locked`; no match is nothing to break.
    fn break_lock_holders(&self, name: &str, which: &dyn Fn(&str) -> bool) -> Result<Vec<String>> {
        let live: Vec<String> = self
            .lock_holders(name)?
            .into_iter()
            .filter(|h| which(h))
            .collect();
        if live.is_empty() {
            return Ok(Vec::new());
        }
        Err(crate::error::Error::new(
            crate::error::ErrorKind::Locked,
            format!(
                "{name} in {} is held by {}: {} cannot break a lock held by a live \
                 process (it is released when that process exits)",
                self.describe(),
                live.join(", "),
                self.describe()
            ),
        ))
    }

    /// A short description for messages, e.g. `dir:/var/lib/lsvd/store/pool`.
    fn describe(&self) -> String;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_are_checked() {
        assert!(check_object_name("img.0000000000000001").is_ok());
        assert!(check_object_name(&"x".repeat(MAX_OBJECT_NAME)).is_ok());
        for bad in ["", "a/b", "a\0b", ".tmp.x", ".", ".."] {
            assert!(check_object_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_object_name(&"x".repeat(MAX_OBJECT_NAME + 1)).is_err());
    }
}
