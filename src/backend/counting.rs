//! [`CountingStore`]: a wrapper that counts the traffic to another store
//! (tests and benchmarks use it to check write amplification and read
//! traffic).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{ObjectStore, StoreLock};
use crate::error::Result;

/// Traffic counted by a [`CountingStore`]: operations that succeeded, and
/// apart those that failed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Successful puts.
    pub puts: u64,
    /// Bytes stored by successful puts.
    pub put_bytes: u64,
    /// Successful gets.
    pub gets: u64,
    /// Bytes returned by successful gets.
    pub get_bytes: u64,
    /// Successful deletes (including of missing objects).
    pub deletes: u64,
    /// Failed puts.
    pub put_errors: u64,
    /// Failed gets, except of missing objects (`NotFound` is an answer).
    pub get_errors: u64,
    /// Failed deletes.
    pub delete_errors: u64,
}

/// An [`ObjectStore`] that forwards to another one and counts the traffic.
pub struct CountingStore {
    inner: Arc<dyn ObjectStore>,
    puts: AtomicU64,
    put_bytes: AtomicU64,
    gets: AtomicU64,
    get_bytes: AtomicU64,
    deletes: AtomicU64,
    put_errors: AtomicU64,
    get_errors: AtomicU64,
    delete_errors: AtomicU64,
    /// Describe itself as the wrapped store (no `counting:` prefix).
    invisible: bool,
}

impl CountingStore {
    /// Wrap `inner`, with all counters at zero.
    pub fn new(inner: Arc<dyn ObjectStore>) -> CountingStore {
        CountingStore {
            inner,
            puts: AtomicU64::new(0),
            put_bytes: AtomicU64::new(0),
            gets: AtomicU64::new(0),
            get_bytes: AtomicU64::new(0),
            deletes: AtomicU64::new(0),
            put_errors: AtomicU64::new(0),
            get_errors: AtomicU64::new(0),
            delete_errors: AtomicU64::new(0),
            invisible: false,
        }
    }

    /// Wrap `inner` for a server's metrics: it describes itself as `inner`
    /// does, so error messages name the real store.
    pub fn invisible(inner: Arc<dyn ObjectStore>) -> CountingStore {
        CountingStore {
            invisible: true,
            ..CountingStore::new(inner)
        }
    }

    fn count<T>(&self, r: Result<T>, errors: &AtomicU64) -> Result<T> {
        if r.is_err() {
            errors.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// The counters now. Each counter is read atomically, the set is not.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            puts: self.puts.load(Ordering::Relaxed),
            put_bytes: self.put_bytes.load(Ordering::Relaxed),
            gets: self.gets.load(Ordering::Relaxed),
            get_bytes: self.get_bytes.load(Ordering::Relaxed),
            deletes: self.deletes.load(Ordering::Relaxed),
            put_errors: self.put_errors.load(Ordering::Relaxed),
            get_errors: self.get_errors.load(Ordering::Relaxed),
            delete_errors: self.delete_errors.load(Ordering::Relaxed),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }
}

impl ObjectStore for CountingStore {
    fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        self.count(self.inner.put(name, data), &self.put_errors)?;
        self.puts.fetch_add(1, Ordering::Relaxed);
        self.put_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn put_parts(&self, name: &str, parts: &[&[u8]]) -> Result<()> {
        // Forwarded, so a store that writes the parts without joining them
        // still does.
        self.count(self.inner.put_parts(name, parts), &self.put_errors)?;
        self.puts.fetch_add(1, Ordering::Relaxed);
        self.put_bytes.fetch_add(
            parts.iter().map(|p| p.len() as u64).sum(),
            Ordering::Relaxed,
        );
        Ok(())
    }

    fn get(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let data = self.inner.get(name, offset, len).inspect_err(|e| {
            if e.kind() != crate::error::ErrorKind::NotFound {
                self.get_errors.fetch_add(1, Ordering::Relaxed);
            }
        })?;
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.get_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(data)
    }

    fn stat(&self, name: &str) -> Result<Option<u64>> {
        self.inner.stat(name)
    }

    fn delete(&self, name: &str) -> Result<()> {
        self.count(self.inner.delete(name), &self.delete_errors)?;
        self.deletes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        self.inner.list(prefix)
    }

    fn lock(&self, name: &str, owner: &str) -> Result<Box<dyn StoreLock>> {
        self.inner.lock(name, owner)
    }

    fn lock_shared(&self, name: &str, owner: &str) -> Result<Box<dyn StoreLock>> {
        self.inner.lock_shared(name, owner)
    }

    fn lock_holders(&self, name: &str) -> Result<Vec<String>> {
        self.inner.lock_holders(name)
    }

    fn break_lock(&self, name: &str) -> Result<Vec<String>> {
        self.inner.break_lock(name)
    }

    fn break_lock_holders(&self, name: &str, which: &dyn Fn(&str) -> bool) -> Result<Vec<String>> {
        self.inner.break_lock_holders(name, which)
    }

    fn describe(&self) -> String {
        if self.invisible {
            self.inner.describe()
        } else {
            format!("counting:{}", self.inner.describe())
        }
    }
}
