//! A small safe wrapper over the librados C API ([`super::ffi`]).
//!
//! Why our own: the `ceph` crate (3.2.5, last released 2021) lets an `IoCtx`
//! outlive its `Rados` (use after free from safe code), frees the cluster
//! twice after an explicit disconnect, sizes reads from a `Vec`'s capacity
//! and has no safe asynchronous API. Here the types rule those out:
//!
//! - [`Cluster`] and [`Pool`] share the C handles through `Arc`s; a pool
//!   handle keeps its cluster handle alive, and an operation in flight keeps
//!   its pool handle alive, so `rados_ioctx_destroy` and `rados_shutdown`
//!   run exactly once, after the last user, and never under an operation.
//!   There is no explicit `shutdown`/`disconnect` to call twice.
//! - Every buffer librados writes into asynchronously (a read's data, a
//!   stat's results) is owned by the operation's shared state, not borrowed
//!   from the caller, so a caller that gives up waiting (timeout) cannot
//!   free memory librados still uses. A put's data is only borrowed for the
//!   call that builds the operation: librados copies it there.
//! - Calls that cannot be bounded inside librados (connect, opening a pool,
//!   blocklisting) run on helper threads the caller stops waiting for at
//!   the op timeout ([`bounded`]); handles whose last user is a librados
//!   thread are released on a thread of ours. Such threads may still be
//!   inside librados when the process wants to exit: [`exit_process`] ends
//!   it without running librados' static destructors under them.
//! - librados starts threads when a handle is created; a process that forks
//!   must do so before (`attach` forks before it connects; see
//!   [`initialised`]).
//! - Reads pass the requested length and keep exactly the number of bytes
//!   librados reports.
//!
//! Asynchronous operations (`rados_aio_*`) complete through a callback that
//! records the result and wakes the waiter. The callers (destage threads,
//! read workers) wait with a deadline; ublk queue threads never call into
//! the store. A per-pool window bounds the operations in flight.

use std::cell::UnsafeCell;
use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int, c_void};
use std::path::PathBuf;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::ffi;
use crate::error::{Error, ErrorKind, Result};

/// The errno librados reports for a blocklisted (fenced) client.
pub const ESHUTDOWN: i32 = libc::ESHUTDOWN;

/// How to connect to a cluster.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// The ceph.conf to read (monitors, keyring, auth).
    pub conf: PathBuf,
    /// Client id without the `client.` prefix, e.g. `admin`.
    pub id: String,
    /// Timeout of every OSD and monitor operation, and of the connect.
    pub op_timeout: Duration,
}

/// Map a negative librados return value to our error kinds.
pub fn kind_of(errno: i32) -> ErrorKind {
    match errno {
        libc::ENOENT => ErrorKind::NotFound,
        libc::EEXIST => ErrorKind::AlreadyExists,
        libc::EBUSY => ErrorKind::Locked,
        libc::ETIMEDOUT => ErrorKind::Timeout,
        libc::ENOSPC | libc::EDQUOT => ErrorKind::NoSpace,
        ESHUTDOWN => ErrorKind::Fenced,
        // A client whose caps do not allow the operation (`osd 'allow r'`
        // writing, or taking a lock, which is a write).
        libc::EACCES | libc::EPERM | libc::EROFS => ErrorKind::PermissionDenied,
        _ => ErrorKind::Io,
    }
}

/// An error for librados return value `r` (negative errno) with `context`.
pub fn rados_error(r: i32, context: impl Into<String>) -> Error {
    let errno = -r;
    let mut context = context.into();
    if errno == ESHUTDOWN {
        context.push_str(
            " (this client is blocklisted: another server broke its lock and fenced it; \
             it can never write to the image again)",
        );
    }
    Error::with_source(
        kind_of(errno),
        context,
        std::io::Error::from_raw_os_error(errno),
    )
}

fn cstring(what: &str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("{what} '{}' contains NUL", s.escape_debug()),
        )
    })
}

/// The cluster handle; `rados_shutdown` when the last user drops it.
struct ClusterHandle {
    raw: ffi::rados_t,
}

// SAFETY: a librados cluster handle may be used from any thread and by many
// threads at once (librados locks internally); we never hand out the raw
// pointer beyond this module.
unsafe impl Send for ClusterHandle {}
// SAFETY: as above.
unsafe impl Sync for ClusterHandle {}

impl Drop for ClusterHandle {
    fn drop(&mut self) {
        // SAFETY: `raw` came from rados_create2 and this is its only release:
        // every Pool and in-flight operation holds an Arc on this handle, so
        // none is left when it drops.
        unsafe { ffi::rados_shutdown(self.raw) };
    }
}

/// The value of configuration option `key` of a cluster handle.
fn conf_get(h: &ClusterHandle, key: &str) -> Option<String> {
    let k = CString::new(key).ok()?;
    let mut len = 256usize;
    loop {
        let mut buf = vec![0u8; len];
        // SAFETY: live handle; buf is `len` bytes and its length is passed
        // with it; librados NUL-terminates what it writes within that.
        let r = unsafe { ffi::rados_conf_get(h.raw, k.as_ptr(), buf.as_mut_ptr().cast(), len) };
        if r == -libc::ENAMETOOLONG && len < 1 << 20 {
            len *= 4;
            continue;
        }
        if r < 0 {
            return None;
        }
        let end = buf.iter().position(|&c| c == 0).unwrap_or(buf.len());
        return Some(String::from_utf8_lossy(&buf[..end]).into_owned());
    }
}

/// How many of our threads may be inside librados on their own (helpers
/// of [`bounded`] and releases of [`release_elsewhere`]), with a condvar to
/// wait for none.
static LIBRADOS_THREADS: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

/// Whether this process ever created a librados handle (and so librados'
/// threads).
static INITIALISED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process has created a librados handle: it has librados'
/// threads then, and a fork would copy their locks held, not the threads
/// (a child that used librados could hang). `attach` forks its server
/// before anything connects, and refuses to fork after.
pub fn initialised() -> bool {
    INITIALISED.load(Ordering::Acquire)
}

/// Counts one of our threads as possibly inside librados while it lives.
struct InsideLibrados;

impl InsideLibrados {
    fn enter() -> InsideLibrados {
        *LIBRADOS_THREADS.0.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        InsideLibrados
    }
}

impl Drop for InsideLibrados {
    fn drop(&mut self) {
        let mut n = LIBRADOS_THREADS.0.lock().unwrap_or_else(|e| e.into_inner());
        *n -= 1;
        LIBRADOS_THREADS.1.notify_all();
    }
}

/// Wait at most `limit` until none of our helper threads is inside
/// librados; true if none is.
pub fn librados_threads_done(limit: Duration) -> bool {
    let g = LIBRADOS_THREADS.0.lock().unwrap_or_else(|e| e.into_inner());
    let (g, _) = LIBRADOS_THREADS
        .1
        .wait_timeout_while(g, limit, |n| *n > 0)
        .unwrap_or_else(|e| e.into_inner());
    *g == 0
}

/// End the process with `code`. A normal exit runs librados' static
/// destructors (C++ globals of libceph-common), which a helper thread of
/// ours still inside a connect, a blocklist or a handle's release would
/// then use: a crash or a hang at exit in place of the exit status. So
/// after waiting briefly for such threads, a process that still has one
/// flushes its output and leaves with `_exit`, which runs no destructors
/// (nothing of ours needs them: every file is synced and closed by then,
/// and librados keeps nothing that must be flushed). Returns only if no
/// such thread is left, for the caller's normal exit.
pub fn exit_process(code: u8) {
    if librados_threads_done(Duration::from_millis(500)) {
        return;
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: _exit ends the process at once; it is always safe to call.
    unsafe { libc::_exit(i32::from(code)) }
}

/// Run `f` on a helper thread named `name` and wait at most `limit` for
/// its result: `Some(value)`, or `None` if the limit passed first.
///
/// For librados calls that can block longer than the op timeout and cannot
/// be cancelled (connect, pool lookup, blocklist): the caller gets an
/// answer in time, the call itself goes on. The helper then drops the
/// result when `f` returns, on that helper thread (never a librados
/// thread), so whatever `f` returns must release itself on drop (a handle
/// type's Drop): a late pool handle is destroyed, a late cluster handle
/// shut down. If the result arrives just as the caller gives up, it may be
/// dropped on the caller's thread instead, which is just as sound.
fn bounded<T, F>(name: &str, limit: Duration, f: F) -> Result<Option<T>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    // Counted from before the thread starts, so that no exit can slip in
    // between; a thread that cannot start drops it with the closure.
    let inside = InsideLibrados::enter();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let _inside = inside;
            // A caller that gave up has dropped the receiver: the value
            // comes back in the error and is dropped here.
            let _ = tx.send(f());
        })
        .map_err(|e| Error::with_source(ErrorKind::Io, format!("cannot start thread {name}"), e))?;
    match rx.recv_timeout(limit) {
        Ok(v) => Ok(Some(v)),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Ok(None),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(Error::new(
            ErrorKind::Io,
            format!("thread {name} ended without a result"),
        )),
    }
}

/// Refuse a ceph.conf path that librados would not read as one file: it
/// splits its argument into a list of files at every `,` and `;`, and
/// expands `$` variables (`$cluster`, `$name`, ...) in each, so such a path
/// names other files (checked with librados 16.2: `/tmp/a,b/ceph.conf`
/// and `/tmp/x$cluster/ceph.conf` are not found, while spaces, tabs and `=`
/// are kept).
pub fn check_conf_path(path: &str) -> std::result::Result<(), String> {
    match path.chars().find(|c| matches!(c, ',' | ';' | '$')) {
        None => Ok(()),
        Some(c) => Err(format!(
            "ceph_conf {path:?} contains {c:?}: librados reads its conf path as a list of \
             files separated by ',' or ';' and expands '$' variables ($cluster, $name, ...), \
             so it would read other files than this one; use a path without ',', ';' or '$' \
             (a symlink to the file will do)"
        )),
    }
}

/// A connection to a Ceph cluster.
#[derive(Clone)]
pub struct Cluster {
    h: Arc<ClusterHandle>,
    op_timeout: Duration,
}

impl Cluster {
    /// Read `opts.conf`, set the timeouts and connect as `client.<id>`.
    pub fn connect(opts: &ConnectOptions) -> Result<Cluster> {
        let conf_s = opts.conf.to_str().ok_or_else(|| {
            Error::new(
                ErrorKind::Config,
                format!("ceph_conf {} is not valid UTF-8", opts.conf.display()),
            )
        })?;
        check_conf_path(conf_s).map_err(|why| Error::new(ErrorKind::Config, why))?;
        if !opts.conf.exists() {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "ceph configuration {} does not exist (set ceph_conf or CEPH_CONF)",
                    opts.conf.display()
                ),
            ));
        }
        let cluster_name = cstring("cluster name", "ceph")?;
        let name = cstring("ceph id", &format!("client.{}", opts.id))?;
        let mut raw: ffi::rados_t = ptr::null_mut();
        INITIALISED.store(true, Ordering::Release);
        // SAFETY: out-pointer to a local; the strings outlive the call.
        let r = unsafe { ffi::rados_create2(&mut raw, cluster_name.as_ptr(), name.as_ptr(), 0) };
        if r < 0 {
            return Err(rados_error(r, format!("rados create client.{}", opts.id)));
        }
        // From here the handle is released by Drop, also on errors below.
        let h = Arc::new(ClusterHandle { raw });
        let conf_c = cstring("ceph_conf", conf_s)?;
        // SAFETY: h.raw is a live, unconnected handle; conf_c outlives the call.
        let r = unsafe { ffi::rados_conf_read_file(h.raw, conf_c.as_ptr()) };
        if r < 0 {
            // Always a configuration problem (never "not found": callers
            // read NotFound from here as a missing pool).
            return Err(Error::with_source(
                ErrorKind::Config,
                format!("cannot read ceph configuration {}", opts.conf.display()),
                std::io::Error::from_raw_os_error(-r),
            ));
        }
        // Timeouts must be set before connecting: without them a dead OSD
        // or monitor would hang an operation for ever. They bound each
        // wait inside librados; the whole connect is bounded below.
        let secs = opts.op_timeout.as_secs().max(1).to_string();
        // Tests only: LSVD_TEST_CLIENT_MOUNT_TIMEOUT_SECS=N lets librados
        // try to connect for N seconds, as older versions do (up to 10
        // tries of client_mount_timeout each), to show that our bound, not
        // librados', ends the wait, and that the process then exits cleanly
        // with the helper still inside librados.
        let mount = std::env::var("LSVD_TEST_CLIENT_MOUNT_TIMEOUT_SECS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map_or_else(|| secs.clone(), |n| n.to_string());
        for (key, value) in [
            ("rados_osd_op_timeout", &secs),
            ("rados_mon_op_timeout", &secs),
            ("client_mount_timeout", &mount),
        ] {
            let k = cstring("option", key)?;
            let v = cstring("value", value)?;
            // SAFETY: live unconnected handle; strings outlive the call.
            let r = unsafe { ffi::rados_conf_set(h.raw, k.as_ptr(), v.as_ptr()) };
            if r < 0 {
                return Err(rados_error(r, format!("rados conf set {key}={value}")));
            }
        }
        // For the messages: which monitors we try (read before the connect,
        // which then owns the handle).
        let mons = match conf_get(&h, "mon_host") {
            Some(m) if !m.trim().is_empty() => format!("mon_host {m}"),
            _ => "the monitors (mon_host is not set in the conf)".to_owned(),
        };
        let what = format!(
            "cannot connect to ceph as client.{} with {}",
            opts.id,
            opts.conf.display()
        );
        let no_answer = |within: &str| {
            format!(
                "{what}: no monitor accepted us {within} ({mons}): check that these \
                 monitors are up and reachable from this host (address, port, firewall: \
                 'ceph -s' with the same conf), and that the keyring holds a key for \
                 client.{}",
                opts.id
            )
        };
        // The connect runs on a helper thread and we wait for it at most
        // the op timeout: librados bounds each of its waits, not the whole
        // connect (some versions retry the monitor handshake up to 10 times
        // for client_mount_timeout each; resolving a mon_host name is not
        // bounded at all).
        //
        // The helper owns the handle (the Arc moves into it; we keep no
        // clone) and gives it back with the result. If we give up first it
        // keeps it, and drops it, which runs rados_shutdown on that helper
        // thread, whenever rados_connect returns. That is sound because
        // nothing else can use the handle: no Cluster, Pool or operation
        // was made from it, and we read everything the messages need
        // (mon_host) before the connect started. rados_shutdown after a
        // connect that failed or succeeded late is what Drop always does.
        let connected = bounded("rados-connect", opts.op_timeout, move || {
            // SAFETY: live handle, configured above; no other thread uses
            // it while this call runs (see above).
            let r = unsafe { ffi::rados_connect(h.raw) };
            (r, h)
        })?;
        let Some((r, h)) = connected else {
            return Err(Error::with_source(
                ErrorKind::Timeout,
                no_answer(&format!("within {:?}", opts.op_timeout)),
                std::io::Error::from_raw_os_error(libc::ETIMEDOUT),
            ));
        };
        if r == -libc::ENOENT {
            // librados found no keyring file at all (it says so only in its
            // log): a configuration error that names the keyring, not
            // "not found", which callers read as a missing pool.
            let keyring = conf_get(&h, "keyring").unwrap_or_else(|| "(unknown)".into());
            return Err(Error::with_source(
                ErrorKind::Config,
                format!(
                    "cannot connect to ceph as client.{} with {}: no keyring found at \
                     {keyring} (check 'keyring' in the [client] section of the conf)",
                    opts.id,
                    opts.conf.display()
                ),
                std::io::Error::from_raw_os_error(libc::ENOENT),
            ));
        }
        if r == -libc::ETIMEDOUT {
            return Err(rados_error(r, no_answer("in time")));
        }
        if r < 0 {
            let why = match -r {
                libc::EACCES | libc::EPERM => " (authentication refused: wrong key or id?)",
                _ => "",
            };
            return Err(rados_error(r, format!("{what}{why}")));
        }
        Ok(Cluster {
            h,
            op_timeout: opts.op_timeout,
        })
    }

    /// Open pool `name` with at most `max_inflight` asynchronous operations
    /// in flight at once.
    pub fn pool(&self, name: &str, namespace: &str, max_inflight: usize) -> Result<Pool> {
        let name_c = cstring("pool name", name)?;
        // rados_ioctx_create waits for the latest OSD map (with no timeout
        // of its own) when the pool is not in the map it has: bounded by
        // the op timeout on a helper thread. A handle the helper gets after
        // we gave up is an IoCtxHandle there, destroyed when it drops.
        let cluster = self.h.clone();
        let created = bounded("rados-pool", self.op_timeout, move || {
            let mut io: ffi::rados_ioctx_t = ptr::null_mut();
            // SAFETY: connected handle (kept alive by `cluster`); the name
            // outlives the call; out-pointer to a local.
            let r = unsafe { ffi::rados_ioctx_create(cluster.raw, name_c.as_ptr(), &mut io) };
            if r < 0 {
                return Err(r);
            }
            let io = IoCtxHandle {
                raw: io,
                _cluster: cluster,
            };
            // An erasure-coded pool without overwrites takes only aligned
            // appends: a put of several parts is then one joined buffer.
            // (The flag can only be switched on later, never off, so what
            // we read now stays safe.)
            let mut req: c_int = 1;
            // SAFETY: live ioctx; out-pointer to a local.
            let r = unsafe { ffi::rados_ioctx_pool_requires_alignment2(io.raw, &mut req) };
            Ok((io, r < 0 || req != 0))
        })?;
        let (io, aligned_appends) = match created {
            Some(Ok((io, aligned))) => (Arc::new(io), aligned),
            Some(Err(r)) if -r == libc::ENOENT => {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("RADOS pool '{name}' does not exist"),
                ));
            }
            Some(Err(r)) => {
                return Err(rados_error(r, format!("cannot open RADOS pool '{name}'")));
            }
            None => {
                return Err(Error::with_source(
                    ErrorKind::Timeout,
                    format!(
                        "cannot open RADOS pool '{name}': no OSD map naming it within {:?} \
                         (check the pool name, 'ceph osd pool ls', and that the monitors \
                         are reachable and answering, 'ceph -s')",
                        self.op_timeout
                    ),
                    std::io::Error::from_raw_os_error(libc::ETIMEDOUT),
                ));
            }
        };
        let mut label = format!("rados:{name}");
        if !namespace.is_empty() {
            let ns = cstring("namespace", namespace)?;
            // SAFETY: the ioctx is live and not yet shared with any other
            // thread or operation; librados copies the string.
            unsafe { ffi::rados_ioctx_set_namespace(io.raw, ns.as_ptr()) };
            label = format!("rados:{name}/{namespace}");
        }
        Ok(Pool {
            io,
            name: name.to_owned(),
            label,
            window: Arc::new(Window {
                used: Mutex::new(0),
                cv: Condvar::new(),
                max: max_inflight.max(1),
            }),
            op_timeout: self.op_timeout,
            aligned_appends,
        })
    }

    /// This client's address(es) as the OSDs see it, e.g.
    /// `127.0.0.1:0/3180851234`.
    pub fn addrs(&self) -> Result<String> {
        let mut out: *mut c_char = ptr::null_mut();
        // SAFETY: connected handle; librados allocates *out, freed below.
        let r = unsafe { ffi::rados_getaddrs(self.h.raw, &mut out) };
        if r < 0 {
            return Err(rados_error(r, "rados getaddrs"));
        }
        if out.is_null() {
            return Ok(String::new());
        }
        // SAFETY: out is a NUL-terminated string from librados.
        let s = unsafe { CStr::from_ptr(out) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: out was allocated by librados for us and is freed once.
        unsafe { ffi::rados_buffer_free(out) };
        Ok(s)
    }

    /// Blocklist the exact client address `addr` (for the cluster's default
    /// time when `expire_secs` is 0) and wait until this client has the OSD
    /// map that says so: after this returns, our own operations carry a map
    /// epoch that makes every OSD refuse the fenced client.
    ///
    /// Bounded by the op timeout. On a timeout the blocklist may or may not
    /// have been applied; the caller must not go on as if it had.
    pub fn blocklist(&self, addr: &str, expire_secs: u32) -> Result<()> {
        let a = cstring("client address", addr)?;
        let cluster = self.h.clone();
        // rados_blocklist_add sends the monitor command (bounded by
        // rados_mon_op_timeout) and then itself waits for the latest OSD
        // map, which it does without a timeout: Ceph's
        // src/librados/RadosClient.cc, RadosClient::blocklist_add, ends with
        // "ensure we have the latest osd map epoch before proceeding":
        // `r = wait_for_latest_osdmap(); return r;` (Ceph 16). So no second
        // wait here, and the whole call is bounded on a helper thread.
        let done = bounded("rados-blocklist", self.op_timeout, move || {
            let mut bytes = a.into_bytes_with_nul();
            // SAFETY: connected handle (kept alive by `cluster`); the
            // address is a NUL-terminated buffer that outlives the call
            // (the C API takes a non-const pointer but does not write
            // through it).
            unsafe { ffi::rados_blocklist_add(cluster.raw, bytes.as_mut_ptr().cast(), expire_secs) }
        })?;
        match done {
            Some(r) if r < 0 => Err(rados_error(r, format!("cannot blocklist client {addr}"))),
            Some(_) => Ok(()),
            None => Err(Error::with_source(
                ErrorKind::Timeout,
                format!(
                    "cannot blocklist client {addr}: no answer from the monitors within {:?} \
                     (it may or may not be blocklisted now; nothing else was done): check \
                     that the monitors are reachable and answering ('ceph -s') and that \
                     this client may blocklist (mon caps 'profile rbd'), then retry",
                    self.op_timeout
                ),
                std::io::Error::from_raw_os_error(libc::ETIMEDOUT),
            )),
        }
    }
}

/// A pool handle; `rados_ioctx_destroy` when the last user drops it.
struct IoCtxHandle {
    raw: ffi::rados_ioctx_t,
    // Dropped after `raw` is destroyed (Drop runs before fields drop).
    _cluster: Arc<ClusterHandle>,
}

// SAFETY: librados I/O contexts are thread-safe for the operations we use
// (we never change the context's namespace, locator or snapshot).
unsafe impl Send for IoCtxHandle {}
// SAFETY: as above.
unsafe impl Sync for IoCtxHandle {}

impl Drop for IoCtxHandle {
    fn drop(&mut self) {
        // SAFETY: raw came from rados_ioctx_create; this is its only release,
        // and no operation is in flight (each holds an Arc on this handle).
        unsafe { ffi::rados_ioctx_destroy(self.raw) };
    }
}

/// Bounds the operations in flight on one pool.
struct Window {
    used: Mutex<usize>,
    cv: Condvar,
    max: usize,
}

/// One slot of a [`Window`], returned when the operation is really over
/// (its completion fired), not when a caller gave up waiting.
struct Permit(Arc<Window>);

impl Drop for Permit {
    fn drop(&mut self) {
        let mut used = self.0.used.lock().unwrap_or_else(|e| e.into_inner());
        *used -= 1;
        self.0.cv.notify_one();
    }
}

impl Window {
    fn acquire(self: &Arc<Self>, deadline: Instant) -> Option<Permit> {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        while *used >= self.max {
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            used = self
                .cv
                .wait_timeout(used, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *used += 1;
        Some(Permit(self.clone()))
    }
}

/// The shared state of one asynchronous operation: owned by the waiter and
/// by the completion callback (through a leaked `Arc` handed to librados).
struct Op {
    // Keeps the pool (and cluster) alive while librados may call back.
    _io: Arc<IoCtxHandle>,
    comp: AtomicPtr<c_void>,
    result: Mutex<Option<i32>>,
    cv: Condvar,
    // Buffers librados writes into until completion (a read's data, a
    // stat's size and time). Only librados touches them before completion;
    // only the waiter after it. A put's data is not here: librados copied
    // it at submission.
    buf: UnsafeCell<Vec<u8>>,
    size: UnsafeCell<u64>,
    mtime: UnsafeCell<libc::time_t>,
    // The write op of a put, released with the operation.
    write_op: AtomicPtr<c_void>,
    _permit: Permit,
}

// SAFETY: the UnsafeCell fields are written by librados only between
// submission and completion, and read by the waiter only after it has seen
// the result under `result`'s mutex (which the callback sets after librados
// finished with them); no two threads access them at once.
unsafe impl Send for Op {}
// SAFETY: as above.
unsafe impl Sync for Op {}

impl Drop for Op {
    fn drop(&mut self) {
        let w = self.write_op.load(Ordering::Acquire);
        if !w.is_null() {
            // SAFETY: w came from rados_create_write_op and is released once,
            // after the operation completed (or was never submitted).
            unsafe { ffi::rados_release_write_op(w) };
        }
        let c = self.comp.load(Ordering::Acquire);
        if !c.is_null() {
            // SAFETY: c came from rados_aio_create_completion2; the last
            // reference to the operation releases it once. librados keeps
            // its own reference while it runs the callback.
            unsafe { ffi::rados_aio_release(c) };
        }
    }
}

/// Completion callback: record the result and wake the waiter.
///
/// # Safety
/// `arg` is the `Arc<Op>` leaked for this completion by [`Pool::start`];
/// librados calls this exactly once.
unsafe extern "C" fn on_complete(c: ffi::rados_completion_t, arg: *mut c_void) {
    // SAFETY: per the contract above, this takes back the callback's reference.
    let op = unsafe { Arc::from_raw(arg as *const Op) };
    // SAFETY: c is the live completion this callback belongs to.
    let r = unsafe { ffi::rados_aio_get_return_value(c) };
    // Our own reference to the pool (and so the cluster) handle, so that
    // dropping the operation below never releases them here.
    let io = op._io.clone();
    {
        let mut g = op.result.lock().unwrap_or_else(|e| e.into_inner());
        *g = Some(r);
        op.cv.notify_all();
    }
    drop(op);
    // A waiter that gave up (timeout) may be gone and its caller may have
    // dropped every Pool and Cluster: then we hold the last reference
    // (a waiter that saw the result waits for this callback to return, see
    // `Pool::run`). Releasing it on this librados thread would run
    // rados_shutdown, which joins librados' threads, this one included, and
    // aborts the process ("Resource deadlock avoided"). Release it on a
    // thread of our own instead.
    if let Some(h) = Arc::into_inner(io) {
        release_elsewhere(h);
    }
}

/// Drop `h` (the last reference to a pool handle, and perhaps to its
/// cluster) on a new thread; if no thread can be started, leak it rather
/// than destroy it on a librados thread.
fn release_elsewhere(h: IoCtxHandle) {
    let slot = Arc::new(Mutex::new(Some(h)));
    let theirs = slot.clone();
    let inside = InsideLibrados::enter();
    let spawned = std::thread::Builder::new()
        .name("lsvd-rados-release".into())
        .spawn(move || {
            let _inside = inside;
            let h = theirs.lock().unwrap_or_else(|e| e.into_inner()).take();
            drop(h);
        });
    if spawned.is_err() {
        if let Some(h) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
            std::mem::forget(h);
        }
    }
}

/// An open pool: asynchronous object operations with a bounded window.
#[derive(Clone)]
pub struct Pool {
    io: Arc<IoCtxHandle>,
    name: String,
    /// `rados:POOL` or `rados:POOL/NAMESPACE`, for messages.
    label: String,
    window: Arc<Window>,
    op_timeout: Duration,
    /// The pool takes only stripe-aligned appends (erasure-coded without
    /// overwrites, or unknown): puts of several parts are joined first.
    aligned_appends: bool,
}

/// What an operation is, for building and naming it.
enum Kind<'a> {
    /// Replace the object with the concatenation of the parts. librados
    /// copies the data into its own buffer when the operation is built
    /// (`rados_write_op_write_full` appends it to a bufferlist), so the
    /// parts are only borrowed for the submission.
    WriteFull {
        parts: &'a [&'a [u8]],
    },
    Read {
        off: u64,
    },
    Stat,
    Remove,
}

/// A holder of a RADOS lock, from `rados_list_lockers`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Locker {
    /// The client entity, e.g. `client.4127` (lossy if not UTF-8).
    pub client: String,
    /// The cookie it locked with (our cookies describe host, pid, image);
    /// may be empty (lossy if not UTF-8).
    pub cookie: String,
    /// Its exact address, e.g. `127.0.0.1:0/3180851234` (lossy if not
    /// UTF-8).
    pub addr: String,
    /// Client, cookie and address exactly as librados gave them: a break
    /// names the holder by these bytes, which need not be UTF-8.
    raw: [Vec<u8>; 3],
}

impl Locker {
    fn new(client: &[u8], cookie: &[u8], addr: &[u8]) -> Locker {
        let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        Locker {
            client: s(client),
            cookie: s(cookie),
            addr: s(addr),
            raw: [client.to_vec(), cookie.to_vec(), addr.to_vec()],
        }
    }

    /// Whether the address is valid UTF-8 (so `addr` is exact and can be
    /// blocklisted).
    pub fn addr_is_exact(&self) -> bool {
        std::str::from_utf8(&self.raw[2]).is_ok()
    }

    /// Whether `other` is the same hold: same client and cookie.
    pub fn same_hold(&self, other: &Locker) -> bool {
        self.raw[0] == other.raw[0] && self.raw[1] == other.raw[1]
    }
}

/// The holders of a RADOS lock and how it is held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lockers {
    /// Held exclusively (one holder) rather than shared.
    pub exclusive: bool,
    /// The lock's tag (every shared holder took it with this tag; our
    /// exclusive locks have none), lossy if not UTF-8.
    pub tag: String,
    /// The holders, in librados' order.
    pub holders: Vec<Locker>,
}

/// The most bytes we accept for each array of a `rados_list_lockers`
/// reply (thousands of holders of ~100-byte entries): a larger size is
/// refused before anything is allocated for it.
pub const LOCKERS_REPLY_MAX: usize = 1 << 20;

/// Split `bytes`, one of `rados_list_lockers`' arrays (its first `len`
/// bytes, as librados reports them), into exactly `count` NUL-terminated
/// entries, keeping empty ones. librados writes each entry followed by a
/// NUL, one after another (`_rados_list_lockers` in librados_c.cc), so
/// anything else means we cannot tell which entry is whose.
fn split_entries<'a>(
    what: &str,
    bytes: &'a [u8],
    count: usize,
) -> std::result::Result<Vec<&'a [u8]>, String> {
    if count == 0 {
        return if bytes.is_empty() {
            Ok(Vec::new())
        } else {
            Err(format!("no holders but {} bytes of {what}", bytes.len()))
        };
    }
    let Some((&0, body)) = bytes.split_last() else {
        return Err(format!(
            "the {what} ({} bytes) do not end with a NUL",
            bytes.len()
        ));
    };
    let entries: Vec<&[u8]> = body.split(|&c| c == 0).collect();
    if entries.len() != count {
        return Err(format!("{count} holders but {} {what}", entries.len()));
    }
    Ok(entries)
}

/// Parse a `rados_list_lockers` reply: it returned `count` and `exclusive`,
/// and the first reported bytes of its tag, clients, cookies and addresses
/// buffers are `tag`, `clients`, `cookies` and `addrs`. Every array must
/// hold exactly `count` entries (an empty cookie is one); an exclusive lock
/// at most one holder. Otherwise the holders cannot be paired with their
/// cookies and addresses unambiguously: the error says why.
pub fn parse_lockers(
    count: usize,
    exclusive: bool,
    tag: &[u8],
    clients: &[u8],
    cookies: &[u8],
    addrs: &[u8],
) -> std::result::Result<Lockers, String> {
    if exclusive && count > 1 {
        return Err(format!("an exclusive lock with {count} holders"));
    }
    let cs = split_entries("clients", clients, count)?;
    let ks = split_entries("cookies", cookies, count)?;
    let ads = split_entries("addresses", addrs, count)?;
    let tag_end = tag.iter().position(|&c| c == 0).unwrap_or(tag.len());
    Ok(Lockers {
        exclusive,
        tag: String::from_utf8_lossy(&tag[..tag_end]).into_owned(),
        holders: (0..count)
            .map(|i| Locker::new(cs[i], ks[i], ads[i]))
            .collect(),
    })
}

impl Pool {
    /// The pool name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `rados:POOL` or `rados:POOL/NAMESPACE`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Context for an error of `op` on `oid`.
    fn ctx(&self, op: &str, oid: &str) -> String {
        format!("{op} {oid} in {}", self.label)
    }

    /// How long a caller waits for an operation: the librados op timeout
    /// (after which librados itself fails the operation) plus a margin.
    fn wait_limit(&self) -> Duration {
        self.op_timeout + Duration::from_secs(10)
    }

    /// Submit one operation on `oid` and wait for its result. `buf` is the
    /// buffer a read fills (empty for the other kinds).
    fn run(&self, what: &str, oid: &str, kind: Kind, buf: Vec<u8>) -> Result<(i32, Arc<Op>)> {
        let deadline = Instant::now() + self.wait_limit();
        let ctx = || self.ctx(what, oid);
        let oid_c = cstring("object name", oid)?;
        let permit = self.window.acquire(deadline).ok_or_else(|| {
            Error::new(
                ErrorKind::Timeout,
                format!(
                    "{}: {} operations in flight made no progress for {:?}",
                    ctx(),
                    self.window.max,
                    self.wait_limit()
                ),
            )
        })?;
        let op = Arc::new(Op {
            _io: self.io.clone(),
            comp: AtomicPtr::new(ptr::null_mut()),
            result: Mutex::new(None),
            cv: Condvar::new(),
            buf: UnsafeCell::new(buf),
            size: UnsafeCell::new(0),
            mtime: UnsafeCell::new(0),
            write_op: AtomicPtr::new(ptr::null_mut()),
            _permit: permit,
        });
        let arg = Arc::into_raw(op.clone()) as *mut c_void;
        let mut comp: ffi::rados_completion_t = ptr::null_mut();
        // SAFETY: arg is a leaked Arc<Op> that on_complete takes back; the
        // out-pointer is a local.
        let r = unsafe { ffi::rados_aio_create_completion2(arg, Some(on_complete), &mut comp) };
        if r < 0 {
            // SAFETY: no completion exists, so no callback will take it back.
            drop(unsafe { Arc::from_raw(arg as *const Op) });
            return Err(rados_error(r, ctx()));
        }
        op.comp.store(comp, Ordering::Release);
        let io = self.io.raw;
        // Build a write op with `fill`, owned by `op` (released with it),
        // and submit it with `flags`.
        let write_op = |op: &Op, flags: c_int, fill: &dyn Fn(ffi::rados_write_op_t)| {
            // SAFETY: as for the submission block below; the write op is
            // stored in `op` and released once, after completion.
            unsafe {
                let w = ffi::rados_create_write_op();
                if w.is_null() {
                    return -libc::ENOMEM;
                }
                op.write_op.store(w, Ordering::Release);
                fill(w);
                ffi::rados_aio_write_op_operate(w, io, comp, oid_c.as_ptr(), ptr::null_mut(), flags)
            }
        };
        // SAFETY: io is live (op holds an Arc on it); oid_c outlives the
        // call (librados copies the name); a put's data is borrowed only
        // for the rados_write_op_write_full call, which copies it (Ceph's
        // src/librados/librados_c.cc: `bufferlist bl; bl.append(buffer,
        // len); ...->write_full(bl);`); the other buffers are owned by
        // `op`, which the callback's reference keeps alive until
        // completion, and are not touched by us until the result is seen.
        let r = unsafe {
            let b = &mut *op.buf.get();
            match kind {
                // A write op rather than rados_aio_write_full, for the
                // FULL_TRY flag: a full pool fails the put at once with
                // ENOSPC/EDQUOT (retried by destage) instead of parking it
                // inside librados until the op timeout.
                Kind::WriteFull { parts } => {
                    let aligned = self.aligned_appends;
                    write_op(&op, ffi::LIBRADOS_OPERATION_FULL_TRY, &|w| match parts {
                        [one] => ffi::rados_write_op_write_full(w, one.as_ptr().cast(), one.len()),
                        // Several parts (a data object's header and data):
                        // a write_full of the first and a write of each
                        // other at its offset, in one write op, which the
                        // OSD applies as one transaction (all or nothing),
                        // so readers see the whole object or the old one.
                        // librados copies each part at its call: none of
                        // ours is joined or kept.
                        [first, rest @ ..] if !aligned => {
                            ffi::rados_write_op_write_full(w, first.as_ptr().cast(), first.len());
                            let mut at = first.len() as u64;
                            for p in rest {
                                ffi::rados_write_op_write(w, p.as_ptr().cast(), p.len(), at);
                                at += p.len() as u64;
                            }
                        }
                        // A pool that takes only aligned appends refuses
                        // the writes at offsets: one joined buffer for the
                        // call only (librados copies it again).
                        _ => {
                            let joined = parts.concat();
                            ffi::rados_write_op_write_full(w, joined.as_ptr().cast(), joined.len())
                        }
                    })
                }
                Kind::Read { off } => ffi::rados_aio_read(
                    io,
                    oid_c.as_ptr(),
                    comp,
                    b.as_mut_ptr().cast(),
                    b.len(),
                    off,
                ),
                Kind::Stat => {
                    ffi::rados_aio_stat(io, oid_c.as_ptr(), comp, op.size.get(), op.mtime.get())
                }
                // FULL_FORCE: a removal frees space, so it must work on a
                // full pool too (rados rm --force-full does the same).
                Kind::Remove => write_op(&op, ffi::LIBRADOS_OPERATION_FULL_FORCE, &|w| {
                    ffi::rados_write_op_remove(w)
                }),
            }
        };
        if r < 0 {
            // SAFETY: submission failed, so librados will not call back;
            // take back the callback's reference.
            drop(unsafe { Arc::from_raw(arg as *const Op) });
            return Err(rados_error(r, ctx()));
        }
        let mut g = op.result.lock().unwrap_or_else(|e| e.into_inner());
        while g.is_none() {
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("{}: no reply in {:?}", ctx(), self.wait_limit()),
                ));
            }
            g = op
                .cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let r = g.unwrap_or(-libc::EIO);
        drop(g);
        // The callback has set the result; wait until it has returned too.
        // Its reference to the operation is gone then and ours is the last,
        // so a caller that drops the store right after this returns never
        // leaves the handles' release to the librados thread.
        // SAFETY: the completion is live (`op` owns it) and complete.
        unsafe { ffi::rados_aio_wait_for_complete_and_cb(op.comp.load(Ordering::Acquire)) };
        Ok((r, op))
    }

    /// Whether puts of several parts are joined into one buffer first (what
    /// a pool that takes only aligned appends needs). Tests set it to
    /// exercise that path on any pool.
    #[doc(hidden)]
    pub fn set_joined_puts(&mut self, joined: bool) {
        self.aligned_appends = joined;
    }

    /// Replace object `oid` with the concatenation of `parts` in one atomic
    /// write. The parts are borrowed: librados copies them when the
    /// operation is submitted, so nothing of ours is kept for the wait, and
    /// a caller that timed out may reuse its buffers at once.
    pub fn write_full(&self, oid: &str, parts: &[&[u8]]) -> Result<()> {
        let (r, _) = self.run("put", oid, Kind::WriteFull { parts }, Vec::new())?;
        if r < 0 {
            return Err(rados_error(r, self.ctx("put (write_full)", oid)));
        }
        Ok(())
    }

    /// Read up to `len` bytes at `off`; fewer if the object ends first.
    pub fn read(&self, oid: &str, off: u64, len: usize) -> Result<Vec<u8>> {
        if len == 0 {
            // A RADOS read of length 0 means "to the end of the object",
            // which would overrun the empty buffer: answer it here, after
            // checking that the object exists, like any other read.
            return match self.stat(oid)? {
                Some(_) => Ok(Vec::new()),
                None => Err(rados_error(-libc::ENOENT, self.ctx("get (read)", oid))),
            };
        }
        let (r, op) = self.run("get", oid, Kind::Read { off }, vec![0u8; len])?;
        if r < 0 {
            return Err(rados_error(r, self.ctx("get (read)", oid)));
        }
        // SAFETY: the operation completed (r was seen under the result
        // mutex), so librados no longer touches the buffer.
        let mut buf = std::mem::take(unsafe { &mut *op.buf.get() });
        buf.truncate((r as usize).min(len));
        Ok(buf)
    }

    /// Size of `oid`, `None` if it does not exist.
    pub fn stat(&self, oid: &str) -> Result<Option<u64>> {
        let (r, op) = self.run("stat", oid, Kind::Stat, Vec::new())?;
        if -r == libc::ENOENT {
            return Ok(None);
        }
        if r < 0 {
            return Err(rados_error(r, self.ctx("stat", oid)));
        }
        // SAFETY: completed, as in `read`.
        Ok(Some(unsafe { *op.size.get() }))
    }

    /// Remove `oid`; a missing object is not an error.
    pub fn remove(&self, oid: &str) -> Result<()> {
        let (r, _) = self.run("delete", oid, Kind::Remove, Vec::new())?;
        if r < 0 && -r != libc::ENOENT {
            return Err(rados_error(r, self.ctx("delete (remove)", oid)));
        }
        Ok(())
    }

    /// Every object name in the pool (default namespace), unsorted: the
    /// UTF-8 ones, and the others apart, exactly as librados gave them
    /// (never lossily, which would name an object that does not exist).
    pub fn list_all(&self) -> Result<(Vec<String>, Vec<Vec<u8>>)> {
        let mut ctx: ffi::rados_list_ctx_t = ptr::null_mut();
        // SAFETY: live ioctx; out-pointer to a local.
        let r = unsafe { ffi::rados_nobjects_list_open(self.io.raw, &mut ctx) };
        if r < 0 {
            return Err(rados_error(r, format!("list objects in {}", self.label)));
        }
        let (mut out, mut other) = (Vec::new(), Vec::new());
        let result = loop {
            let mut entry: *const c_char = ptr::null();
            // SAFETY: ctx is the open listing; entry is valid until the
            // next call, and we copy it before then.
            let r = unsafe {
                ffi::rados_nobjects_list_next(ctx, &mut entry, ptr::null_mut(), ptr::null_mut())
            };
            if r == -libc::ENOENT {
                break Ok(());
            }
            if r < 0 {
                break Err(rados_error(r, format!("list objects in {}", self.label)));
            }
            if !entry.is_null() {
                // SAFETY: NUL-terminated name owned by the listing.
                let name = unsafe { CStr::from_ptr(entry) }.to_bytes().to_vec();
                match String::from_utf8(name) {
                    Ok(n) => out.push(n),
                    Err(e) => other.push(e.into_bytes()),
                }
            }
        };
        // SAFETY: ctx was opened above and is closed once.
        unsafe { ffi::rados_nobjects_list_close(ctx) };
        result.map(|()| (out, other))
    }

    /// Take the exclusive lock `name` on `oid` (creating the object if it
    /// does not exist, as every RADOS lock does). Returns the librados
    /// return value: 0, or `-EBUSY`/`-EEXIST` if it is held.
    pub fn lock_exclusive(&self, oid: &str, name: &str, cookie: &str, desc: &str) -> Result<i32> {
        let (o, n, c, d) = (
            cstring("object name", oid)?,
            cstring("lock name", name)?,
            cstring("lock cookie", cookie)?,
            cstring("lock description", desc)?,
        );
        // SAFETY: live ioctx; strings outlive the (synchronous) call; a null
        // duration means the lock does not expire.
        let r = unsafe {
            ffi::rados_lock_exclusive(
                self.io.raw,
                o.as_ptr(),
                n.as_ptr(),
                c.as_ptr(),
                d.as_ptr(),
                ptr::null_mut(),
                0,
            )
        };
        if r < 0 && r != -libc::EBUSY && r != -libc::EEXIST {
            return Err(rados_error(r, self.ctx("lock", oid)));
        }
        Ok(r)
    }

    /// Take lock `name` on `oid` shared, with `tag` (every shared holder of
    /// a lock uses the same tag), creating the object if it does not exist.
    /// Returns the librados return value: 0, or `-EBUSY`/`-EEXIST` if it is
    /// held exclusively.
    pub fn lock_shared(
        &self,
        oid: &str,
        name: &str,
        cookie: &str,
        tag: &str,
        desc: &str,
    ) -> Result<i32> {
        let (o, n, c, t, d) = (
            cstring("object name", oid)?,
            cstring("lock name", name)?,
            cstring("lock cookie", cookie)?,
            cstring("lock tag", tag)?,
            cstring("lock description", desc)?,
        );
        // SAFETY: live ioctx; strings outlive the (synchronous) call; a null
        // duration means the lock does not expire.
        let r = unsafe {
            ffi::rados_lock_shared(
                self.io.raw,
                o.as_ptr(),
                n.as_ptr(),
                c.as_ptr(),
                t.as_ptr(),
                d.as_ptr(),
                ptr::null_mut(),
                0,
            )
        };
        if r < 0 && r != -libc::EBUSY && r != -libc::EEXIST {
            return Err(rados_error(r, self.ctx("lock shared", oid)));
        }
        Ok(r)
    }

    /// Release lock `name` on `oid` taken with `cookie`; a lock that is
    /// already gone (broken, or the object removed) is not an error.
    pub fn unlock(&self, oid: &str, name: &str, cookie: &str) -> Result<()> {
        let (o, n, c) = (
            cstring("object name", oid)?,
            cstring("lock name", name)?,
            cstring("lock cookie", cookie)?,
        );
        // SAFETY: live ioctx; strings outlive the call.
        let r = unsafe { ffi::rados_unlock(self.io.raw, o.as_ptr(), n.as_ptr(), c.as_ptr()) };
        if r < 0 && r != -libc::ENOENT {
            return Err(rados_error(r, self.ctx("unlock", oid)));
        }
        Ok(())
    }

    /// The holders of lock `name` on `oid`. An error if librados' reply
    /// cannot be paired unambiguously (see [`parse_lockers`]).
    pub fn lockers(&self, oid: &str, name: &str) -> Result<Lockers> {
        let (o, n) = (cstring("object name", oid)?, cstring("lock name", name)?);
        // Sizes of the tag, clients, cookies and addresses buffers.
        let mut caps = [256usize, 1024, 1024, 1024];
        // A holder list that grows between our calls each time, 4 times
        // over, is not one we can report anyway.
        for _ in 0..4 {
            let mut bufs = caps.map(|c| vec![0u8; c]);
            let mut lens = caps;
            let mut exclusive: c_int = 0;
            let [tag, clients, cookies, addrs] = &mut bufs;
            let [tl, cl, kl, al] = &mut lens;
            // SAFETY: live ioctx; every buffer is as long as the length
            // passed with it; librados writes at most that much and
            // reports the sizes it needs if they are too small.
            let r = unsafe {
                ffi::rados_list_lockers(
                    self.io.raw,
                    o.as_ptr(),
                    n.as_ptr(),
                    &mut exclusive,
                    tag.as_mut_ptr().cast(),
                    tl,
                    clients.as_mut_ptr().cast(),
                    cl,
                    cookies.as_mut_ptr().cast(),
                    kl,
                    addrs.as_mut_ptr().cast(),
                    al,
                )
            };
            if r == -(libc::ERANGE as isize) {
                let need = lens;
                if need.iter().any(|&l| l > LOCKERS_REPLY_MAX) {
                    return Err(Error::new(
                        ErrorKind::Io,
                        format!(
                            "{}: librados asks for {} bytes for one array of the reply, \
                             more than the {LOCKERS_REPLY_MAX} we accept",
                            self.ctx("list lockers of", oid),
                            need.iter().max().copied().unwrap_or(0)
                        ),
                    ));
                }
                if need.iter().zip(&caps).all(|(n, c)| n <= c) {
                    return Err(Error::new(
                        ErrorKind::Io,
                        format!(
                            "{}: librados reports a short buffer but no larger size",
                            self.ctx("list lockers of", oid)
                        ),
                    ));
                }
                for (c, n) in caps.iter_mut().zip(need) {
                    *c = (*c).max(n);
                }
                continue;
            }
            if r == -(libc::ENOENT as isize) {
                return Ok(Lockers {
                    exclusive: false,
                    tag: String::new(),
                    holders: Vec::new(),
                });
            }
            if r < 0 {
                return Err(rados_error(r as i32, self.ctx("list lockers of", oid)));
            }
            if lens.iter().zip(&caps).any(|(l, c)| l > c) {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!(
                        "{}: librados reports more bytes than the buffers hold",
                        self.ctx("list lockers of", oid)
                    ),
                ));
            }
            let part = |i: usize| &bufs[i][..lens[i]];
            return parse_lockers(
                r as usize,
                exclusive != 0,
                part(0),
                part(1),
                part(2),
                part(3),
            )
            .map_err(|why| {
                Error::new(
                    ErrorKind::Io,
                    format!(
                        "{}: the holders of lock {name} cannot be told apart ({why}); \
                         refusing to trust them (see 'rados -p {} lock info {oid} {name}')",
                        self.ctx("list lockers of", oid),
                        self.name
                    ),
                )
            });
        }
        Err(Error::new(
            ErrorKind::Io,
            format!(
                "{}: the holders kept changing while we read them; retry",
                self.ctx("list lockers of", oid)
            ),
        ))
    }

    /// Remove `locker`'s hold on lock `name` of `oid` (fence it first!).
    /// Returns false if librados found no such hold (`ENOENT`: released
    /// meanwhile, or not this client and cookie): list the holders again
    /// to know which.
    pub fn break_lock(&self, oid: &str, name: &str, locker: &Locker) -> Result<bool> {
        let bytes = |what: &str, b: &[u8]| {
            CString::new(b.to_vec()).map_err(|_| {
                Error::new(
                    ErrorKind::InvalidInput,
                    format!("lock {what} {:?} contains NUL", String::from_utf8_lossy(b)),
                )
            })
        };
        let (o, n, cl, ck) = (
            cstring("object name", oid)?,
            cstring("lock name", name)?,
            bytes("client", &locker.raw[0])?,
            bytes("cookie", &locker.raw[1])?,
        );
        // SAFETY: live ioctx; strings outlive the call.
        let r = unsafe {
            ffi::rados_break_lock(
                self.io.raw,
                o.as_ptr(),
                n.as_ptr(),
                cl.as_ptr(),
                ck.as_ptr(),
            )
        };
        if r == -libc::ENOENT {
            return Ok(false);
        }
        if r < 0 {
            return Err(rados_error(r, self.ctx("break lock of", oid)));
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(count: usize, excl: bool, c: &[u8], k: &[u8], a: &[u8]) -> Result<Lockers, String> {
        parse_lockers(count, excl, b"lsvd\0", c, k, a)
    }

    #[test]
    fn an_empty_cookie_keeps_each_holder_with_its_own_address() {
        // Two shared holders, the first with an empty cookie: the second
        // holder's cookie and address must stay the second's.
        let l = parse(
            2,
            false,
            b"client.1\0client.2\0",
            b"\0cookie-2\0",
            b"10.0.0.1:0/1\x0010.0.0.2:0/2\0",
        )
        .unwrap();
        assert!(!l.exclusive);
        assert_eq!(l.tag, "lsvd");
        let got: Vec<_> = l
            .holders
            .iter()
            .map(|h| (h.client.as_str(), h.cookie.as_str(), h.addr.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("client.1", "", "10.0.0.1:0/1"),
                ("client.2", "cookie-2", "10.0.0.2:0/2")
            ]
        );
        // Empty entries anywhere, even all of them, are entries.
        let l = parse(2, false, b"\0\0", b"\0\0", b"\0\0").unwrap();
        assert_eq!(l.holders.len(), 2);
        assert!(l.holders.iter().all(|h| h.cookie.is_empty()));
    }

    #[test]
    fn a_count_that_does_not_match_the_entries_is_refused() {
        // More holders than entries (what the old parser padded with
        // empty strings), and fewer.
        let e = parse(3, false, b"client.1\0client.2\0", b"a\0b\0", b"x\0y\0").unwrap_err();
        assert!(e.contains("3 holders but 2 clients"), "{e}");
        let e = parse(1, false, b"client.1\0client.2\0", b"a\0", b"x\0").unwrap_err();
        assert!(e.contains("1 holders but 2 clients"), "{e}");
        // One array short by one (an empty cookie lost): refused, never
        // shifted.
        let e = parse(2, false, b"c1\0c2\0", b"k2\0", b"a1\0a2\0").unwrap_err();
        assert!(e.contains("cookies"), "{e}");
        // Not NUL-terminated, or bytes with no holders.
        let e = parse(1, false, b"client.1", b"k\0", b"a\0").unwrap_err();
        assert!(e.contains("NUL"), "{e}");
        assert!(parse(0, false, b"client.1\0", b"", b"").is_err());
        assert!(parse(1, false, b"", b"", b"").is_err());
        // An exclusive lock has at most one holder.
        let e = parse(2, true, b"c1\0c2\0", b"k1\0k2\0", b"a1\0a2\0").unwrap_err();
        assert!(e.contains("exclusive"), "{e}");
        // No holders at all.
        let l = parse(0, true, b"", b"", b"").unwrap();
        assert!(l.holders.is_empty());
    }

    #[test]
    fn conf_paths_librados_would_split_or_expand_are_refused() {
        for ok in ["/etc/ceph/ceph.conf", "/tmp/a b/ceph.conf", "/x=y/\tc.conf"] {
            assert_eq!(check_conf_path(ok), Ok(()), "{ok}");
        }
        for (bad, c) in [
            ("/a,b.conf", ","),
            ("/a;b.conf", ";"),
            ("/$cluster.conf", "$"),
        ] {
            let e = check_conf_path(bad).unwrap_err();
            assert!(e.contains(&format!("contains '{c}'")), "{e}");
        }
    }

    #[test]
    fn non_utf8_entries_are_kept_exactly_for_the_break() {
        let l = parse(
            2,
            false,
            b"client.\xff1\0client.2\0",
            b"ck\xfe\0\0",
            b"10.0.0.1:0/1\0\xc3(\0",
        )
        .unwrap();
        let (a, b) = (&l.holders[0], &l.holders[1]);
        assert_eq!(a.client, "client.\u{fffd}1");
        assert_eq!(a.raw[0], b"client.\xff1");
        assert_eq!(a.raw[1], b"ck\xfe");
        assert!(a.addr_is_exact());
        assert_eq!(b.cookie, "");
        assert!(!b.addr_is_exact(), "{:?}", b.addr);
        // Same hold by exact bytes, not by the lossy strings.
        let c = parse(1, false, b"client.\xfe1\0", b"ck\xfe\0", b"x\0").unwrap();
        assert_eq!(c.holders[0].client, a.client);
        assert!(!c.holders[0].same_hold(a));
        assert!(a.same_hold(&l.holders[0]));
        // The tag ends at its NUL; a non-UTF-8 tag is shown lossily.
        let t = parse_lockers(0, false, b"t\xff\0junk", b"", b"", b"").unwrap();
        assert_eq!(t.tag, "t\u{fffd}");
    }

    #[test]
    fn bounded_gives_up_at_the_limit_and_the_late_result_is_dropped() {
        struct Flag(Arc<Mutex<bool>>);
        impl Drop for Flag {
            fn drop(&mut self) {
                *self.0.lock().unwrap() = true;
            }
        }
        let dropped = Arc::new(Mutex::new(false));
        let d = dropped.clone();
        let t = Instant::now();
        // The result comes after 3 s; the caller gives up at 100 ms, so
        // it must be back (with nothing) before the result exists.
        let r = bounded("test-bounded", Duration::from_millis(100), move || {
            std::thread::sleep(Duration::from_secs(3));
            Flag(d)
        })
        .unwrap();
        assert!(r.is_none());
        assert!(
            t.elapsed() >= Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
        assert!(!*dropped.lock().unwrap(), "gave up only after the result");
        // The helper is counted as inside librados until it has dropped
        // the late result: an exit now would leave with _exit.
        assert!(!librados_threads_done(Duration::from_millis(50)));
        assert!(
            librados_threads_done(Duration::from_secs(10)),
            "the helper never ended"
        );
        assert!(*dropped.lock().unwrap(), "counted done before the drop");
        // In time: the value itself.
        let v = bounded("test-bounded", Duration::from_secs(10), || 7).unwrap();
        assert_eq!(v, Some(7));
    }
}
