//! Object stores: the backend that holds data objects, checkpoints and the
//! superblock of each image.
//!
//! Implementations: [`dir::DirStore`] (the embedded default),
//! [`mem::MemStore`] (tests) and [`fault::FaultStore`] (a wrapper that fails,
//! delays or drops chosen operations, for tests).

pub mod dir;
pub mod fault;
pub mod mem;

use crate::error::Result;

/// An exclusive lock held on a store; released when dropped.
pub trait StoreLock: Send + Sync {
    /// Who holds it (the `owner` string given to [`ObjectStore::lock`]).
    fn owner(&self) -> &str;
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
    /// `owner` describes the taker (host, pid, image UUID).
    fn lock(&self, name: &str, owner: &str) -> Result<Box<dyn StoreLock>>;

    /// A short description for messages, e.g. `dir:/var/lib/lsvd/store/pool`.
    fn describe(&self) -> String;
}
