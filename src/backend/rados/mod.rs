//! [`RadosStore`]: objects in a Ceph RADOS pool (cargo feature `rados`).
//!
//! Each object of the store is one RADOS object of the same name in the
//! pool's default namespace. Data puts are single `write_full` operations
//! (atomic in RADOS: a reader sees the old or the new object), reads are
//! ranged reads, all asynchronous through [`client::Pool`] with a bounded
//! window and a deadline, so a dead OSD turns into an error after
//! `rados_op_timeout_secs`, never a hang.
//!
//! Locks (fencing): [`ObjectStore::lock`] takes the RADOS exclusive lock
//! `lsvd` on the image's superblock object, with a cookie naming host, pid
//! and image. RADOS locks outlive a crashed holder, so a lock left by a
//! dead server must be broken ([`ObjectStore::break_lock`]): the holder's
//! exact address is blocklisted first and the breaker waits for the OSD map
//! that carries the blocklist (both bounded by `rados_op_timeout_secs`), and
//! only then is the lock removed; the holders are listed again to make sure.
//! A lock whose holders librados reports ambiguously is not broken. A fenced
//! server that is in fact still running gets `ESHUTDOWN` for every later
//! operation, so it can never write to the image again.
//!
//! A RADOS lock creates its object if it does not exist, so a zero-length
//! superblock object is a lock left by `create` or `rm`, not an image (see
//! [`crate::volume::image`]).

pub mod client;
mod ffi;

use std::sync::Arc;

pub use client::{Cluster, ConnectOptions, Locker, Lockers, Pool};

use super::{check_object_name, ObjectStore, StoreLock};
use crate::error::{Error, ErrorKind, Result};

/// The name of the RADOS lock taken on an image's superblock object.
pub const LOCK_NAME: &str = "lsvd";

/// Separates the owner from the per-lock nonce in a lock cookie.
const COOKIE_SEP: &str = " #";

/// Reads longer than this are first clamped to the object's size.
const CLAMP_READ_ABOVE: usize = 16 << 20;

/// `OWNER (client.N at ADDR)` for a lock holder.
fn describe_locker(l: &Locker) -> String {
    let owner = l
        .cookie
        .rsplit_once(COOKIE_SEP)
        .map(|(o, _)| o)
        .unwrap_or(&l.cookie);
    format!("{owner} ({} at {})", l.client, l.addr)
}

/// A pool of a Ceph cluster as an [`ObjectStore`].
pub struct RadosStore {
    cluster: Cluster,
    pool: Pool,
}

impl RadosStore {
    /// Connect with `opts` and open `pool`, with at most `max_inflight`
    /// operations in flight.
    pub fn connect(
        opts: &ConnectOptions,
        pool: &str,
        namespace: &str,
        max_inflight: usize,
    ) -> Result<RadosStore> {
        let cluster = Cluster::connect(opts)?;
        let pool = cluster.pool(pool, namespace, max_inflight)?;
        Ok(RadosStore { cluster, pool })
    }

    /// The cluster connection (for fencing and tests).
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    fn check(&self, op: &str, name: &str) -> Result<()> {
        check_object_name(name).map_err(|why| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("{op} {name:?} in {}: {why}", self.pool.label()),
            )
        })
    }

    /// Who holds lock `name`, for a refusal: never an error of its own, so
    /// that a lock we could not take stays `Locked` (exit 5) also when its
    /// holders cannot be listed.
    fn describe_holders(&self, name: &str) -> String {
        match self.lock_holders(name) {
            Ok(h) if h.is_empty() => "a holder that has just gone".to_owned(),
            Ok(h) => h.join(", "),
            Err(e) => format!("holders that cannot be listed ({e})"),
        }
    }
}

/// A held RADOS lock; unlocked when dropped.
struct RadosLock {
    pool: Pool,
    oid: String,
    cookie: String,
    owner: String,
}

impl StoreLock for RadosLock {
    fn owner(&self) -> &str {
        &self.owner
    }
}

impl Drop for RadosLock {
    fn drop(&mut self) {
        if let Err(e) = self.pool.unlock(&self.oid, LOCK_NAME, &self.cookie) {
            tracing::warn!(
                "cannot release lock on {}/{}: {e}",
                self.pool.name(),
                self.oid
            );
        }
    }
}

impl ObjectStore for RadosStore {
    fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        self.check("put", name)?;
        self.pool.write_full(name, &[data])
    }

    fn put_parts(&self, name: &str, parts: &[&[u8]]) -> Result<()> {
        self.check("put", name)?;
        // Borrowed: librados copies the data into its own buffer when the
        // operation is submitted and reads only that copy afterwards (also
        // after a caller that timed out has returned), so no copy of ours
        // is needed while the put is in flight.
        self.pool.write_full(name, parts)
    }

    fn get(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.check("get", name)?;
        // Never allocate more than the object can hold: clamp a large
        // request to what is there.
        let len = if len > CLAMP_READ_ABOVE {
            match self.pool.stat(name)? {
                Some(size) => len.min(size.saturating_sub(offset) as usize),
                None => len.min(CLAMP_READ_ABOVE),
            }
        } else {
            len
        };
        self.pool.read(name, offset, len)
    }

    fn stat(&self, name: &str) -> Result<Option<u64>> {
        self.check("stat", name)?;
        self.pool.stat(name)
    }

    fn delete(&self, name: &str) -> Result<()> {
        self.check("delete", name)?;
        self.pool.remove(name)
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let (names, other) = self.pool.list_all()?;
        let mut names: Vec<String> = names
            .into_iter()
            .filter(|n| n.starts_with(prefix))
            .collect();
        // Names that are not UTF-8 cannot be objects of ours (every name
        // we write is a &str), as the dir store skips such file names: left
        // out, and named (escaped) where they share the prefix.
        for n in other.iter().filter(|n| n.starts_with(prefix.as_bytes())) {
            tracing::warn!(
                "{}: skipping object \"{}\": its name is not UTF-8, so it is not one of ours",
                self.pool.label(),
                n.escape_ascii()
            );
        }
        names.sort();
        Ok(names)
    }

    fn lock(&self, name: &str, owner: &str) -> Result<Box<dyn StoreLock>> {
        self.check("lock", name)?;
        // The cookie names the taker and is unique per lock taken, so that
        // our unlock can never release someone else's hold.
        let cookie = format!("{owner}{COOKIE_SEP}{:016x}", rand::random::<u64>());
        let r = self.pool.lock_exclusive(name, LOCK_NAME, &cookie, owner)?;
        if r == 0 {
            return Ok(Box::new(RadosLock {
                pool: self.pool.clone(),
                oid: name.to_owned(),
                cookie,
                owner: owner.to_owned(),
            }));
        }
        Err(Error::new(
            ErrorKind::Locked,
            format!(
                "{} in {} is locked by {}; if that server is dead, run \
                 'lsvd-ublk lock break {}/{}' (it fences the holder first)",
                name,
                self.describe(),
                self.describe_holders(name),
                self.pool.name(),
                name
            ),
        ))
    }

    fn lock_shared(&self, name: &str, owner: &str) -> Result<Box<dyn StoreLock>> {
        self.check("lock", name)?;
        let cookie = format!("{owner}{COOKIE_SEP}{:016x}", rand::random::<u64>());
        let r = self
            .pool
            .lock_shared(name, LOCK_NAME, &cookie, LOCK_NAME, owner)?;
        if r == 0 {
            return Ok(Box::new(RadosLock {
                pool: self.pool.clone(),
                oid: name.to_owned(),
                cookie,
                owner: owner.to_owned(),
            }));
        }
        Err(Error::new(
            ErrorKind::Locked,
            format!(
                "{} in {} is locked by {}",
                name,
                self.describe(),
                self.describe_holders(name)
            ),
        ))
    }

    fn lock_holders(&self, name: &str) -> Result<Vec<String>> {
        self.check("list_lockers", name)?;
        Ok(self
            .pool
            .lockers(name, LOCK_NAME)?
            .holders
            .iter()
            .map(describe_locker)
            .collect())
    }

    fn break_lock(&self, name: &str) -> Result<Vec<String>> {
        self.break_lock_holders(name, &|_| true)
    }

    fn break_lock_holders(&self, name: &str, which: &dyn Fn(&str) -> bool) -> Result<Vec<String>> {
        self.check("break_lock", name)?;
        let mut broken = Vec::new();
        // An error if the holders cannot be paired with their cookies and
        // addresses unambiguously: fencing the wrong address would leave
        // the real holder writing.
        let lockers = self.pool.lockers(name, LOCK_NAME)?;
        // Our shared holds all use the tag LOCK_NAME, our exclusive ones
        // none (rados_lock_exclusive takes no tag).
        let our_tag = if lockers.exclusive { "" } else { LOCK_NAME };
        if !lockers.holders.is_empty() && lockers.tag != our_tag {
            return Err(Error::new(
                ErrorKind::Locked,
                format!(
                    "lock {LOCK_NAME} on {name} in {} is held {} with tag {:?}, which \
                     lsvd never uses for such a hold: another tool holds it ({}); not \
                     fencing its clients (release it with that tool, or 'rados lock break')",
                    self.pool.label(),
                    if lockers.exclusive {
                        "exclusively"
                    } else {
                        "shared"
                    },
                    lockers.tag,
                    lockers
                        .holders
                        .iter()
                        .map(describe_locker)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        // Each holder (one for an exclusive lock, any number for a shared
        // one) is broken on its own, by client and cookie: the holders
        // `which` does not accept keep their hold.
        for l in lockers.holders {
            if !which(&describe_locker(&l)) {
                continue;
            }
            // Fence first: once the holder's exact address is blocklisted
            // and our OSD map says so, it cannot write again, even if it is
            // alive. Only then is the lock removed.
            if l.addr.is_empty() || !l.addr_is_exact() {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!(
                        "lock holder {} of {name} has no address to fence ({:?})",
                        l.client, l.addr
                    ),
                ));
            }
            self.cluster.blocklist(&l.addr, 0)?;
            let removed = self.pool.break_lock(name, LOCK_NAME, &l)?;
            // Never report a hold broken that is still there (librados
            // answers ENOENT for a client and cookie it does not know).
            let after = self.pool.lockers(name, LOCK_NAME)?;
            if after.holders.iter().any(|h| h.same_hold(&l)) {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!(
                        "{} still holds lock {LOCK_NAME} on {name} in {} after the break \
                         ({}); its address {} is blocklisted, so it cannot write; \
                         check with 'rados -p {} lock info {name} {LOCK_NAME}'",
                        describe_locker(&l),
                        self.pool.label(),
                        if removed {
                            "librados said it was removed"
                        } else {
                            "librados found no such hold"
                        },
                        l.addr,
                        self.pool.name()
                    ),
                ));
            }
            if removed {
                tracing::warn!(
                    "broke lock on {}/{name} of {} at {} ({}) after blocklisting it",
                    self.pool.name(),
                    l.client,
                    l.addr,
                    l.cookie
                );
            } else {
                tracing::warn!(
                    "lock on {}/{name} of {} at {} ({}) was gone when we broke it; \
                     it is blocklisted anyway",
                    self.pool.name(),
                    l.client,
                    l.addr,
                    l.cookie
                );
            }
            broken.push(describe_locker(&l));
        }
        Ok(broken)
    }

    fn describe(&self) -> String {
        self.pool.label().to_owned()
    }
}

/// Open `pool` of the cluster configured in `config` as a shared store.
pub fn open(config: &crate::config::Config, pool: &str) -> Result<Arc<dyn ObjectStore>> {
    let opts = ConnectOptions {
        conf: config.ceph_conf_path(),
        id: config.ceph_id.clone(),
        op_timeout: std::time::Duration::from_secs(config.rados_op_timeout_secs),
    };
    let store = RadosStore::connect(
        &opts,
        pool,
        &config.rados_namespace,
        config.rados_max_inflight as usize,
    )?;
    Ok(Arc::new(store))
}
