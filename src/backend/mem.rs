//! [`MemStore`]: an object store in memory, for tests.
//!
//! Same semantics as [`super::dir::DirStore`] (name checks, short reads,
//! sorted listing, lock conflicts within one process), nothing durable.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{check_object_name, ObjectStore, StoreLock};
use crate::error::{Error, ErrorKind, Result};

/// Numbers the stores of this process, for [`ObjectStore::describe`].
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Default)]
struct State {
    /// Objects; each is replaced whole by `put`, so readers holding the old
    /// `Arc` keep seeing the old content.
    objects: BTreeMap<String, Arc<Vec<u8>>>,
    /// Held locks: name -> owner.
    locks: BTreeMap<String, String>,
    /// Locks held shared: name -> their owners.
    shared_locks: BTreeMap<String, Vec<String>>,
}

type Shared = Arc<Mutex<State>>;

fn state(shared: &Shared) -> MutexGuard<'_, State> {
    // A panic while holding the lock cannot leave `State` half-updated (every
    // update is a single map operation), so a poisoned lock is still usable.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// An object store held in memory.
pub struct MemStore {
    id: u64,
    shared: Shared,
}

impl Default for MemStore {
    fn default() -> Self {
        MemStore::new()
    }
}

impl MemStore {
    /// An empty store.
    pub fn new() -> MemStore {
        MemStore {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            shared: Arc::new(Mutex::new(State::default())),
        }
    }

    /// Total size of all objects in bytes.
    pub fn total_bytes(&self) -> u64 {
        state(&self.shared)
            .objects
            .values()
            .map(|d| d.len() as u64)
            .sum()
    }

    /// Number of objects.
    pub fn object_count(&self) -> usize {
        state(&self.shared).objects.len()
    }

    fn ctx(&self, op: &str, name: &str) -> String {
        format!("{op} {name} in {}", self.describe())
    }

    fn check_name(&self, op: &str, name: &str) -> Result<()> {
        check_object_name(name).map_err(|why| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("{}: {why}", self.ctx(op, name)),
            )
        })
    }
}

impl ObjectStore for MemStore {
    fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        self.check_name("put", name)?;
        let data = Arc::new(data.to_vec());
        state(&self.shared).objects.insert(name.to_owned(), data);
        Ok(())
    }

    fn get(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.check_name("get", name)?;
        let data = state(&self.shared).objects.get(name).cloned();
        let Some(data) = data else {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("{}: no such object", self.ctx("get", name)),
            ));
        };
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let end = start.saturating_add(len).min(data.len());
        Ok(data[start..end].to_vec())
    }

    fn stat(&self, name: &str) -> Result<Option<u64>> {
        self.check_name("stat", name)?;
        Ok(state(&self.shared)
            .objects
            .get(name)
            .map(|d| d.len() as u64))
    }

    fn delete(&self, name: &str) -> Result<()> {
        self.check_name("delete", name)?;
        state(&self.shared).objects.remove(name);
        Ok(())
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let st = state(&self.shared);
        Ok(st
            .objects
            .range(prefix.to_owned()..)
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(prefix))
            .cloned()
            .collect())
    }

    fn lock(&self, name: &str, owner: &str) -> Result<Box<dyn StoreLock>> {
        self.check_name("lock", name)?;
        let mut st = state(&self.shared);
        if let Some(holder) = st.locks.get(name) {
            return Err(Error::new(
                ErrorKind::Locked,
                format!("{}: {name} is locked by {holder}", self.ctx("lock", name)),
            ));
        }
        if let Some(readers) = st.shared_locks.get(name) {
            return Err(Error::new(
                ErrorKind::Locked,
                format!(
                    "{}: {name} is held shared by {}",
                    self.ctx("lock", name),
                    readers.join(", ")
                ),
            ));
        }
        st.locks.insert(name.to_owned(), owner.to_owned());
        Ok(Box::new(MemLock {
            shared: Arc::clone(&self.shared),
            name: name.to_owned(),
            owner: owner.to_owned(),
            mode_shared: false,
        }))
    }

    fn lock_shared(&self, name: &str, owner: &str) -> Result<Box<dyn StoreLock>> {
        self.check_name("lock", name)?;
        let mut st = state(&self.shared);
        if let Some(holder) = st.locks.get(name) {
            return Err(Error::new(
                ErrorKind::Locked,
                format!("{}: {name} is locked by {holder}", self.ctx("lock", name)),
            ));
        }
        st.shared_locks
            .entry(name.to_owned())
            .or_default()
            .push(owner.to_owned());
        Ok(Box::new(MemLock {
            shared: Arc::clone(&self.shared),
            name: name.to_owned(),
            owner: owner.to_owned(),
            mode_shared: true,
        }))
    }

    fn lock_holders(&self, name: &str) -> Result<Vec<String>> {
        let st = state(&self.shared);
        Ok(st
            .locks
            .get(name)
            .into_iter()
            .chain(st.shared_locks.get(name).into_iter().flatten())
            .cloned()
            .collect())
    }

    fn describe(&self) -> String {
        format!("mem:{}", self.id)
    }
}

/// A held [`MemStore`] lock; removes itself from the held set on drop.
struct MemLock {
    shared: Shared,
    name: String,
    owner: String,
    /// Taken with `lock_shared`.
    mode_shared: bool,
}

impl StoreLock for MemLock {
    fn owner(&self) -> &str {
        &self.owner
    }
}

impl Drop for MemLock {
    fn drop(&mut self) {
        let mut st = state(&self.shared);
        if !self.mode_shared {
            st.locks.remove(&self.name);
        } else if let Some(readers) = st.shared_locks.get_mut(&self.name) {
            if let Some(i) = readers.iter().position(|r| *r == self.owner) {
                readers.swap_remove(i);
            }
            if readers.is_empty() {
                st.shared_locks.remove(&self.name);
            }
        }
    }
}
