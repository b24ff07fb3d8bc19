//! Configuration: one flat serde tree, loaded in layers like the original
//! C++ LSVD.
//!
//! Layers, lowest precedence first:
//! 1. built-in defaults ([`Config::default`]),
//! 2. `/usr/local/etc/lsvd.json` (skipped if missing),
//! 3. `./lsvd.json` (skipped if missing),
//! 4. the `--config ARG` argument: inline JSON if it starts with `{`,
//!    otherwise a path to a JSON file that must exist.
//!
//! Layers are merged as `serde_json::Value`s (a later layer's keys replace
//! an earlier one's) and the result is deserialized once, then checked by
//! [`Config::validate`]. Before merging, every key of every layer is checked
//! on its own, so an unknown key or a bad value is reported with the key
//! and the file (or "inline JSON") it came from.
//!
//! Size keys accept a JSON number of bytes or a string such as `"8M"` or
//! `"2G"` (binary units, see [`crate::units::parse_size`]); they are always
//! written back as numbers.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, ErrorKind};
use crate::units::parse_size;
use crate::Result;

/// System-wide configuration file (layer 2).
pub const SYSTEM_CONFIG_PATH: &str = "/usr/local/etc/lsvd.json";
/// Configuration file in the current directory (layer 3).
pub const LOCAL_CONFIG_PATH: &str = "./lsvd.json";

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Sizes must be multiples of this (the O_DIRECT / page granularity).
const SIZE_ALIGN: u64 = 4096;

/// Which object store holds the image's objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Objects are files under `store_dir/<pool>/`.
    Dir,
    /// Objects live in a Ceph RADOS pool (cargo feature `rados`).
    Rados,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Dir => "dir",
            BackendKind::Rados => "rados",
        })
    }
}

/// The whole configuration. See the module docs for how it is loaded and
/// [`describe_keys`] for a table of keys.
/// Largest `checkpoint_full_every`: a chain of deltas is at most 15 deep,
/// so the superblock's base links (two chains at most) fit its 64.
pub const MAX_FULL_EVERY: u32 = 16;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Object store kind: `"dir"` or `"rados"`.
    /// Default: `"dir"`.
    pub backend: BackendKind,
    /// Root of the dir backend; one subdirectory per pool.
    /// Default: `/var/lib/lsvd/store`.
    pub store_dir: PathBuf,
    /// Directory of journal files: `<wlog_dir>/<pool>/<image>.wlog`.
    /// Default: `/var/lib/lsvd/wlog`.
    pub wlog_dir: PathBuf,
    /// Size of each image's journal.
    /// Default: `1G`.
    #[serde(deserialize_with = "de_size")]
    pub wlog_bytes: u64,
    /// Largest atomic write; larger client writes are split.
    /// Default: `2M`.
    #[serde(deserialize_with = "de_size")]
    pub wlog_chunk_bytes: u64,
    /// Directory of read-cache files: `<rcache_dir>/<pool>/<image>.rcache`
    /// (a [`crate::volume::Volume`] opened directly uses
    /// `<rcache_dir>/<image>.rcache`).
    /// Default: `/var/lib/lsvd/rcache`.
    pub rcache_dir: PathBuf,
    /// Size of each image's read cache file (at least 128K: one 64 KiB
    /// chunk and its index).
    /// Default: `1G`.
    #[serde(deserialize_with = "de_size")]
    pub rcache_bytes: u64,
    /// If true, no read cache is used: every read that misses the
    /// in-memory batches goes to the backend (tests and benchmarks). An
    /// existing cache file of the image is removed at open.
    /// Default: `false`.
    pub no_rcache: bool,
    /// Target size of a backend data object.
    /// Default: `8M`.
    #[serde(deserialize_with = "de_size")]
    pub backend_obj_bytes: u64,
    /// Backend objects being written at once.
    /// Default: `8`.
    pub backend_write_window: u32,
    /// A checkpoint is written after this many data objects.
    /// Default: `100`.
    pub checkpoint_interval_objs: u64,
    /// At most this many checkpoints in a row are deltas on the previous
    /// one before a full checkpoint is written; 1 writes only full ones.
    /// Default: `8`.
    pub checkpoint_full_every: u32,
    /// A batch older than this (milliseconds) is written to the backend even
    /// if it is not full.
    /// Default: `2000`.
    pub flush_msec: u64,
    /// If true, FLUSH waits until the backend holds everything written
    /// before it (not just the journal), and so does a FUA write, trim or
    /// write-zeroes (for itself and everything before it; it closes its
    /// batch, so FUA on every write makes one object per write).
    /// Default: `false`.
    pub hard_flush: bool,
    /// Garbage collection cleans objects whose live fraction is below this
    /// percentage.
    /// Default: `60`.
    pub gc_threshold: u32,
    /// If true, garbage collection never runs in the background (a forced
    /// `lsvd-ublk gc` still runs).
    /// Default: `false`.
    pub no_gc: bool,
    /// With `no_gc`: rows of objects with no live data (objects awaiting
    /// deletion) kept in the object table and checkpoints for a later GC,
    /// at most this many. Past it they are all dropped, and the next
    /// session with GC lists the image's names once to find those objects
    /// (0: dropped at every checkpoint).
    /// Default: `1024`.
    pub no_gc_dead_rows: u64,
    /// Accept a journal or read cache on a memory-backed file system
    /// (tmpfs, ramfs), which a reboot empties: for tests only.
    /// Default: `false`.
    pub allow_tmpfs: bool,
    /// Local memory GC may use for data it copies (its temporary space): one
    /// GC object is built at a time, at most this large and at most
    /// `backend_obj_bytes`. Must be at least 64K.
    /// Default: `16M`.
    #[serde(deserialize_with = "de_size")]
    pub gc_buffer_bytes: u64,
    /// GC bytes read plus written per second; `0` means unlimited. Lifted
    /// while the objects hold more than 1.5x the live data (GC is behind).
    /// Default: `32M`.
    #[serde(deserialize_with = "de_size")]
    pub gc_rate_bytes: u64,
    /// GC also copies a fully mapped gap of at most this many bytes between
    /// two live extents it moves (defragmenting); a multiple of 4096, 0 off.
    /// Default: `64K`.
    #[serde(deserialize_with = "de_size")]
    pub gc_plug_bytes: u64,
    /// How long (ms) background GC sleeps when no object is below the
    /// threshold.
    /// Default: `1000`.
    pub gc_interval_msec: u64,
    /// Journal records in flight on the io_uring.
    /// Default: `4`.
    pub journal_depth: u32,
    /// How long (milliseconds) a write may wait for journal space, a
    /// superblock put be retried, or `close`, a `hard_flush` FLUSH, resize,
    /// snapshot and GC wait without the backend applying an object, before
    /// failing with an error.
    /// Default: `30000`.
    pub io_timeout_msec: u64,
    /// The ceph.conf read by the rados backend (monitors, keyring, auth).
    /// Default: unset (`null`): `$CEPH_CONF` if set, else `/etc/ceph/ceph.conf`.
    pub ceph_conf: Option<PathBuf>,
    /// Ceph client id, without the `client.` prefix (`--id` overrides it).
    /// Default: `admin`.
    pub ceph_id: String,
    /// Timeout (seconds) of every RADOS operation and of connecting; a dead
    /// OSD or monitor turns into an error after this long.
    /// Default: `30`.
    pub rados_op_timeout_secs: u64,
    /// RADOS operations in flight at once per open pool.
    /// Default: `32`.
    pub rados_max_inflight: u32,
    /// RADOS namespace within each pool holding the images (empty: the
    /// pool's default namespace).
    /// Default: `""`.
    pub rados_namespace: String,
    /// NBD server (`serve-nbd`): connections served at once. When every
    /// slot is taken, a new client takes the slot of the connection idle
    /// longest past `nbd_idle_timeout_secs`, or is closed at once.
    /// Default: `64`.
    pub nbd_max_connections: u32,
    /// NBD: seconds a client has to finish the handshake (option haggling
    /// up to `NBD_OPT_GO`); a client still negotiating then is closed.
    /// Default: `10`.
    pub nbd_negotiate_timeout_secs: u64,
    /// NBD: seconds after which a connection with no request in flight and
    /// none received counts as idle and may give its slot to a new client
    /// (idle connections are closed only when the slots are full; 0: never).
    /// Default: `300`.
    pub nbd_idle_timeout_secs: u64,
    /// NBD over TCP: seconds of silence before TCP keepalive probes start
    /// (then every 10 s, 6 probes): a peer that vanished without a FIN or
    /// RST is closed after about this plus 60 s (0: no keepalive).
    /// Default: `60`.
    pub nbd_keepalive_secs: u64,
    /// NBD: seconds a write's payload may take to arrive once its header
    /// has, and a reply to reach the client's socket; a client that sends
    /// or reads that slowly is closed.
    /// Default: `60`.
    pub nbd_transfer_timeout_secs: u64,
    /// NBD: bytes of request payloads one connection may hold (writes from
    /// before their payload is read until they are answered, read data
    /// until it is sent). A client over it is slowed down: its socket is
    /// not read. A single request always fits.
    /// Default: `64M`.
    #[serde(deserialize_with = "de_size")]
    pub nbd_conn_memory_bytes: u64,
    /// NBD: the same bound over all connections together.
    /// Default: `512M`.
    #[serde(deserialize_with = "de_size")]
    pub nbd_memory_bytes: u64,
    /// NBD: seconds a stopping server waits for clients to take their last
    /// replies before it closes their sockets (operations already handed
    /// to the image still finish, within `io_timeout_msec`).
    /// Default: `10`.
    pub nbd_shutdown_secs: u64,
    /// Where a server (`attach`, `recover`, `serve-nbd`) serves its live
    /// metrics (Prometheus text format, `GET /metrics`): `""` for a unix
    /// socket in the run directory (`<run dir>/ublkb<N>.metrics.sock`,
    /// `<run dir>/nbd-<pid>.metrics.sock`), `unix:PATH`, a loopback
    /// `IP:PORT`, or `off` (no metrics, and no timing on the I/O path).
    /// Default: `""`.
    pub metrics_listen: String,
}

/// A parsed `metrics_listen`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetricsListen {
    /// No metrics.
    Off,
    /// The server's default unix socket in the run directory.
    Default,
    /// This unix socket.
    Unix(PathBuf),
    /// This loopback TCP address.
    Tcp(std::net::SocketAddr),
}

impl Default for Config {
    fn default() -> Config {
        Config {
            backend: BackendKind::Dir,
            store_dir: PathBuf::from("/var/lib/lsvd/store"),
            wlog_dir: PathBuf::from("/var/lib/lsvd/wlog"),
            wlog_bytes: GIB,
            wlog_chunk_bytes: 2 * MIB,
            rcache_dir: PathBuf::from("/var/lib/lsvd/rcache"),
            rcache_bytes: GIB,
            no_rcache: false,
            backend_obj_bytes: 8 * MIB,
            backend_write_window: 8,
            checkpoint_interval_objs: 100,
            checkpoint_full_every: 8,
            flush_msec: 2000,
            hard_flush: false,
            gc_threshold: 60,
            no_gc: false,
            no_gc_dead_rows: 1024,
            allow_tmpfs: false,
            gc_buffer_bytes: 16 * MIB,
            gc_rate_bytes: 32 * MIB,
            gc_plug_bytes: 64 * KIB,
            gc_interval_msec: 1000,
            journal_depth: 4,
            io_timeout_msec: 30000,
            ceph_conf: None,
            ceph_id: "admin".to_owned(),
            rados_op_timeout_secs: 30,
            rados_max_inflight: 32,
            rados_namespace: String::new(),
            nbd_max_connections: 64,
            nbd_negotiate_timeout_secs: 10,
            nbd_idle_timeout_secs: 300,
            nbd_keepalive_secs: 60,
            nbd_transfer_timeout_secs: 60,
            nbd_conn_memory_bytes: 64 * MIB,
            nbd_memory_bytes: 512 * MIB,
            nbd_shutdown_secs: 10,
            metrics_listen: String::new(),
        }
    }
}

/// Every key as `(key, default, meaning)`, in declaration order, for the
/// README and `--help`. A test keeps it in step with [`Config`].
pub fn describe_keys() -> &'static [(&'static str, &'static str, &'static str)] {
    &[
        ("backend", "dir", "object store kind: \"dir\" or \"rados\""),
        (
            "store_dir",
            "/var/lib/lsvd/store",
            "root of the dir backend; one subdirectory per pool",
        ),
        (
            "wlog_dir",
            "/var/lib/lsvd/wlog",
            "journal files: <wlog_dir>/<pool>/<image>.wlog",
        ),
        ("wlog_bytes", "1G", "size of each image's journal"),
        (
            "wlog_chunk_bytes",
            "2M",
            "largest atomic write; larger writes are split",
        ),
        (
            "rcache_dir",
            "/var/lib/lsvd/rcache",
            "read-cache files: <rcache_dir>/<pool>/<image>.rcache",
        ),
        (
            "rcache_bytes",
            "1G",
            "size of each image's read-cache file (at least 128K)",
        ),
        ("no_rcache", "false", "use no read cache (tests, benchmarks)"),
        ("backend_obj_bytes", "8M", "target size of a backend data object"),
        (
            "backend_write_window",
            "8",
            "backend objects being written at once (1-256)",
        ),
        (
            "checkpoint_interval_objs",
            "100",
            "a checkpoint is written after this many data objects",
        ),
        (
            "checkpoint_full_every",
            "8",
            "every Nth checkpoint at most is full, the others hold only what changed (1-16; 1: all full)",
        ),
        (
            "flush_msec",
            "2000",
            "a batch older than this (ms) is written to the backend even if not full",
        ),
        (
            "hard_flush",
            "false",
            "FLUSH waits until the backend holds everything, not just the journal",
        ),
        (
            "gc_threshold",
            "60",
            "GC cleans objects whose live percentage is below this (1-99)",
        ),
        (
            "no_gc",
            "false",
            "never run garbage collection in the background (lsvd-ublk gc still can)",
        ),
        (
            "no_gc_dead_rows",
            "1024",
            "with no_gc, rows of dead objects kept for a later GC (0-16777216); past it they are dropped and that GC lists the image once",
        ),
        (
            "allow_tmpfs",
            "false",
            "accept wlog_dir or rcache_dir on tmpfs/ramfs (tests only: a reboot loses the journal's acknowledged writes)",
        ),
        (
            "gc_buffer_bytes",
            "16M",
            "local memory (temporary space) for data GC copies; at least 64K",
        ),
        (
            "gc_rate_bytes",
            "32M",
            "GC bytes read plus written per second (0: unlimited); lifted while objects hold more than 1.5x the live data",
        ),
        (
            "gc_plug_bytes",
            "64K",
            "GC also copies mapped gaps up to this size between live extents (multiple of 4096; 0: off)",
        ),
        (
            "gc_interval_msec",
            "1000",
            "how long (ms) GC sleeps when no object is below the threshold",
        ),
        (
            "journal_depth",
            "4",
            "journal records in flight on the io_uring (1-64)",
        ),
        (
            "io_timeout_msec",
            "30000",
            "how long (ms) a write may wait for journal space, a superblock put be retried, or close, a hard_flush FLUSH and GC see no backend progress, before failing",
        ),
        (
            "ceph_conf",
            "null",
            "ceph.conf of the rados backend; null: $CEPH_CONF if set, else /etc/ceph/ceph.conf",
        ),
        (
            "ceph_id",
            "admin",
            "Ceph client id without 'client.' (the --id option overrides it)",
        ),
        (
            "rados_op_timeout_secs",
            "30",
            "timeout (s) of every RADOS operation and of connecting (1-3600)",
        ),
        (
            "rados_max_inflight",
            "32",
            "RADOS operations in flight at once per open pool (1-1024)",
        ),
        (
            "rados_namespace",
            "\"\"",
            "RADOS namespace of the images within each pool (empty: the default namespace)",
        ),
        (
            "nbd_max_connections",
            "64",
            "NBD connections served at once (1-4096); when full, a new client takes the slot of the longest-idle one past nbd_idle_timeout_secs",
        ),
        (
            "nbd_negotiate_timeout_secs",
            "10",
            "seconds an NBD client has to finish the handshake (1-3600)",
        ),
        (
            "nbd_idle_timeout_secs",
            "300",
            "seconds without requests after which an NBD connection may give its slot to a new client (0: never)",
        ),
        (
            "nbd_keepalive_secs",
            "60",
            "NBD over TCP: idle seconds before keepalive probes (every 10 s, 6 probes); 0: off",
        ),
        (
            "nbd_transfer_timeout_secs",
            "60",
            "seconds a write's payload may take to arrive, and a reply to reach the client, before an NBD client is closed (1-3600)",
        ),
        (
            "nbd_conn_memory_bytes",
            "64M",
            "request payload bytes (writes and reads) one NBD connection may hold; over it, its socket is not read (at least 1M)",
        ),
        (
            "nbd_memory_bytes",
            "512M",
            "the same over all NBD connections (at least nbd_conn_memory_bytes)",
        ),
        (
            "nbd_shutdown_secs",
            "10",
            "seconds a stopping NBD server waits for clients to take their replies before closing them (1-3600)",
        ),
        (
            "metrics_listen",
            "\"\"",
            "where servers serve live metrics (GET /metrics): \"\" = unix socket in the run dir, unix:PATH, loopback IP:PORT, or off",
        ),
    ]
}

/// One source of configuration, for [`Config::load_from`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigLayer {
    /// A JSON file; skipped if it does not exist.
    File(PathBuf),
    /// A JSON file that must exist.
    RequiredFile(PathBuf),
    /// JSON text (from `--config '{...}'`).
    Inline(String),
}

impl ConfigLayer {
    /// The layer for a `--config ARG`: inline JSON if it starts with `{`
    /// (after trimming), otherwise a file that must exist.
    pub fn from_cli_arg(arg: &str) -> ConfigLayer {
        if arg.trim_start().starts_with('{') {
            ConfigLayer::Inline(arg.to_owned())
        } else {
            ConfigLayer::RequiredFile(PathBuf::from(arg))
        }
    }

    /// Where this layer came from, for error messages.
    fn origin(&self) -> String {
        match self {
            ConfigLayer::File(p) | ConfigLayer::RequiredFile(p) => p.display().to_string(),
            ConfigLayer::Inline(_) => "inline --config JSON".to_owned(),
        }
    }

    /// The layer's JSON text, or `None` for a missing optional file.
    fn read(&self) -> Result<Option<String>> {
        let (path, required) = match self {
            ConfigLayer::Inline(s) => return Ok(Some(s.clone())),
            ConfigLayer::File(p) => (p, false),
            ConfigLayer::RequiredFile(p) => (p, true),
        };
        match std::fs::read_to_string(path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(None),
            Err(e) => Err(Error::with_source(
                ErrorKind::Config,
                format!("cannot read config file {}", path.display()),
                e,
            )),
        }
    }
}

impl Config {
    /// Load the standard layers (see the module docs) with `cli_arg` as the
    /// `--config` argument, and validate the result.
    pub fn load(cli_arg: Option<&str>) -> Result<Config> {
        let mut layers = vec![
            ConfigLayer::File(PathBuf::from(SYSTEM_CONFIG_PATH)),
            ConfigLayer::File(PathBuf::from(LOCAL_CONFIG_PATH)),
        ];
        if let Some(arg) = cli_arg {
            layers.push(ConfigLayer::from_cli_arg(arg));
        }
        Config::load_from(&layers)
    }

    /// Load `layers` over the built-in defaults (later layers win) and
    /// validate the result.
    pub fn load_from(layers: &[ConfigLayer]) -> Result<Config> {
        let mut merged = Value::Object(Map::new());
        for layer in layers {
            let Some(text) = layer.read()? else {
                continue;
            };
            let value = parse_layer(&text, &layer.origin())?;
            merge(&mut merged, value);
        }
        let config: Config = serde_json::from_value(merged).map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!("merged configuration is invalid: {e}"),
            )
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Reject values that are out of range or contradict each other; the
    /// message names the key(s).
    pub fn validate(&self) -> Result<()> {
        if self.backend == BackendKind::Rados && !cfg!(feature = "rados") {
            return Err(cfg_err(
                "backend \"rados\" is not built into this binary (build it with \
                 `cargo build --release --features rados`)"
                    .to_owned(),
            ));
        }
        if self.ceph_id.is_empty()
            || self.ceph_id.starts_with("client.")
            || self
                .ceph_id
                .contains(|c: char| c.is_whitespace() || c == '\0')
        {
            return Err(cfg_err(format!(
                "ceph_id ({:?}) must be a non-empty client id without the 'client.' prefix",
                self.ceph_id
            )));
        }
        for (key, path) in [
            ("store_dir", &self.store_dir),
            ("wlog_dir", &self.wlog_dir),
            ("rcache_dir", &self.rcache_dir),
            ("ceph_conf", &self.ceph_conf_path()),
        ] {
            if path.to_str().is_none() {
                return Err(cfg_err(format!(
                    "{key} ({}) is not valid UTF-8",
                    path.display()
                )));
            }
        }
        for (key, v) in [
            ("wlog_bytes", self.wlog_bytes),
            ("wlog_chunk_bytes", self.wlog_chunk_bytes),
            ("backend_obj_bytes", self.backend_obj_bytes),
            ("rcache_bytes", self.rcache_bytes),
        ] {
            if v == 0 || !v.is_multiple_of(SIZE_ALIGN) {
                return Err(cfg_err(format!(
                    "{key} ({v}) must be a non-zero multiple of {SIZE_ALIGN}"
                )));
            }
        }
        range_check("wlog_chunk_bytes", self.wlog_chunk_bytes, 4 * KIB, 64 * MIB)?;
        range_check("rcache_bytes", self.rcache_bytes, 128 * KIB, u64::MAX)?;
        range_check("backend_obj_bytes", self.backend_obj_bytes, 64 * KIB, GIB)?;
        if self.wlog_chunk_bytes > self.backend_obj_bytes {
            return Err(cfg_err(format!(
                "wlog_chunk_bytes ({}) must not exceed backend_obj_bytes ({})",
                self.wlog_chunk_bytes, self.backend_obj_bytes
            )));
        }
        // The journal must hold several maximal records at once, or a burst
        // of large writes could wedge waiting for space it can never get.
        let min_wlog = self.wlog_chunk_bytes.saturating_mul(4).saturating_add(MIB);
        if self.wlog_bytes < min_wlog {
            return Err(cfg_err(format!(
                "wlog_bytes ({}) must be at least 4 * wlog_chunk_bytes + 1M ({min_wlog})",
                self.wlog_bytes
            )));
        }
        range_check(
            "backend_write_window",
            self.backend_write_window.into(),
            1,
            256,
        )?;
        range_check("journal_depth", self.journal_depth.into(), 1, 64)?;
        range_check("gc_threshold", self.gc_threshold.into(), 1, 99)?;
        range_check("gc_buffer_bytes", self.gc_buffer_bytes, 64 * KIB, 16 * GIB)?;
        if !self.gc_plug_bytes.is_multiple_of(4096) || self.gc_plug_bytes > 64 * MIB {
            return Err(cfg_err(format!(
                "gc_plug_bytes ({}) must be a multiple of 4096 and at most 64M",
                self.gc_plug_bytes
            )));
        }
        range_check("gc_interval_msec", self.gc_interval_msec, 1, 3_600_000)?;
        range_check(
            "checkpoint_interval_objs",
            self.checkpoint_interval_objs,
            1,
            u64::MAX,
        )?;
        range_check(
            "checkpoint_full_every",
            self.checkpoint_full_every.into(),
            1,
            MAX_FULL_EVERY.into(),
        )?;
        range_check("flush_msec", self.flush_msec, 1, u64::MAX)?;
        range_check("no_gc_dead_rows", self.no_gc_dead_rows, 0, 1 << 24)?;
        range_check("io_timeout_msec", self.io_timeout_msec, 100, u64::MAX)?;
        if self.rados_namespace.contains('\0') {
            return Err(cfg_err("rados_namespace contains NUL".to_owned()));
        }
        range_check("rados_op_timeout_secs", self.rados_op_timeout_secs, 1, 3600)?;
        range_check(
            "rados_max_inflight",
            self.rados_max_inflight.into(),
            1,
            1024,
        )?;
        range_check(
            "nbd_max_connections",
            self.nbd_max_connections.into(),
            1,
            4096,
        )?;
        range_check(
            "nbd_negotiate_timeout_secs",
            self.nbd_negotiate_timeout_secs,
            1,
            3600,
        )?;
        range_check(
            "nbd_idle_timeout_secs",
            self.nbd_idle_timeout_secs,
            0,
            86400 * 365,
        )?;
        range_check("nbd_keepalive_secs", self.nbd_keepalive_secs, 0, 32767)?;
        range_check(
            "nbd_transfer_timeout_secs",
            self.nbd_transfer_timeout_secs,
            1,
            3600,
        )?;
        range_check("nbd_shutdown_secs", self.nbd_shutdown_secs, 1, 3600)?;
        range_check(
            "nbd_conn_memory_bytes",
            self.nbd_conn_memory_bytes,
            MIB,
            64 * GIB,
        )?;
        if self.nbd_memory_bytes < self.nbd_conn_memory_bytes {
            return Err(cfg_err(format!(
                "nbd_memory_bytes ({}) must be at least nbd_conn_memory_bytes ({})",
                self.nbd_memory_bytes, self.nbd_conn_memory_bytes
            )));
        }
        range_check("nbd_memory_bytes", self.nbd_memory_bytes, MIB, 1 << 40)?;
        self.metrics_listen()?;
        Ok(())
    }

    /// `metrics_listen`, parsed. A TCP address must be a loopback IP
    /// literal and port: the metrics are unauthenticated.
    pub fn metrics_listen(&self) -> Result<MetricsListen> {
        let s = self.metrics_listen.as_str();
        match s {
            "" => return Ok(MetricsListen::Default),
            "off" => return Ok(MetricsListen::Off),
            _ => {}
        }
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() || path.contains('\0') {
                return Err(cfg_err(format!(
                    "metrics_listen ({s:?}) needs a socket path after unix:"
                )));
            }
            return Ok(MetricsListen::Unix(PathBuf::from(path)));
        }
        let addr: std::net::SocketAddr = s.parse().map_err(|_| {
            cfg_err(format!(
                "metrics_listen ({s:?}) must be \"\" (a unix socket in the run directory), \
                 \"off\", \"unix:PATH\" or a loopback IP:PORT such as 127.0.0.1:9477"
            ))
        })?;
        if !addr.ip().is_loopback() {
            return Err(cfg_err(format!(
                "metrics_listen ({s:?}) is not a loopback address: the metrics endpoint has no \
                 authentication, so it listens only on 127.0.0.0/8 or [::1] (or a unix socket)"
            )));
        }
        Ok(MetricsListen::Tcp(addr))
    }

    /// The ceph.conf to read: `ceph_conf` if set, else `$CEPH_CONF` if set
    /// and non-empty, else `/etc/ceph/ceph.conf` (like the `rbd` CLI).
    pub fn ceph_conf_path(&self) -> PathBuf {
        if let Some(p) = &self.ceph_conf {
            return p.clone();
        }
        match std::env::var_os("CEPH_CONF") {
            Some(v) if !v.is_empty() => PathBuf::from(v),
            _ => PathBuf::from("/etc/ceph/ceph.conf"),
        }
    }

    /// The configuration as pretty JSON (sizes as numbers of bytes); loading
    /// it back gives an equal `Config`.
    pub fn to_json_pretty(&self) -> String {
        // Serialization fails only for a non-UTF-8 path, which validate()
        // rejects; show the problem rather than panic if it happens anyway.
        serde_json::to_string_pretty(self)
            .unwrap_or_else(|e| format!("{{ \"error\": {:?} }}", e.to_string()))
    }
}

fn cfg_err(msg: String) -> Error {
    Error::new(ErrorKind::Config, msg)
}

fn range_check(key: &str, v: u64, min: u64, max: u64) -> Result<()> {
    if v < min {
        return Err(cfg_err(format!("{key} ({v}) must be at least {min}")));
    }
    if v > max {
        return Err(cfg_err(format!("{key} ({v}) must be at most {max}")));
    }
    Ok(())
}

/// Parse one layer's text and check each key on its own, so errors name the
/// key and `origin`.
fn parse_layer(text: &str, origin: &str) -> Result<Value> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        Error::with_source(
            ErrorKind::Config,
            format!("invalid JSON in {origin}: {e}"),
            e,
        )
    })?;
    let Value::Object(map) = &value else {
        return Err(cfg_err(format!(
            "config in {origin} must be a JSON object, not {value}"
        )));
    };
    for (key, v) in map {
        if !describe_keys().iter().any(|(k, _, _)| k == key) {
            return Err(cfg_err(format!("unknown key \"{key}\" in {origin}")));
        }
        let mut one = Map::new();
        one.insert(key.clone(), v.clone());
        if let Err(e) = serde_json::from_value::<Config>(Value::Object(one)) {
            return Err(cfg_err(format!(
                "bad value for key \"{key}\" in {origin}: {e}"
            )));
        }
    }
    Ok(value)
}

/// Merge `over` into `base`: objects merge key by key (recursively), any
/// other value replaces what was there.
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// A size: a JSON number of bytes or a string such as `"8M"`.
fn de_size<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<u64, D::Error> {
    struct SizeVisitor;

    impl serde::de::Visitor<'_> for SizeVisitor {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a size in bytes or a string such as \"8M\" or \"2G\"")
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<u64, E> {
            Ok(v)
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom(format!("size {v} is negative")))
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<u64, E> {
            parse_size(v).map_err(E::custom)
        }
    }

    d.deserialize_any(SizeVisitor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::path::Path;

    fn inline(s: &str) -> Result<Config> {
        Config::load_from(&[ConfigLayer::Inline(s.to_owned())])
    }

    fn err_msg(r: Result<Config>) -> String {
        match r {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Config, "{e}");
                e.to_string()
            }
        }
    }

    fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        p
    }

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let d = Config::default();
        d.validate().unwrap();
        let json = d.to_json_pretty();
        assert_eq!(inline(&json).unwrap(), d);
        assert_eq!(Config::load_from(&[]).unwrap(), d);
        assert_eq!(inline("{}").unwrap(), d);
    }

    #[test]
    fn non_default_round_trips() {
        let c = Config {
            store_dir: "/tmp/s".into(),
            wlog_bytes: 64 * MIB,
            backend_obj_bytes: 4 * MIB,
            hard_flush: true,
            no_gc: true,
            no_rcache: true,
            gc_threshold: 75,
            gc_buffer_bytes: 4 * MIB,
            gc_rate_bytes: 0,
            gc_plug_bytes: 0,
            gc_interval_msec: 10,
            ..Config::default()
        };
        c.validate().unwrap();
        assert_eq!(inline(&c.to_json_pretty()).unwrap(), c);
    }

    #[test]
    fn sizes_accept_strings_and_numbers_and_serialize_as_numbers() {
        for key in [
            "wlog_bytes",
            "wlog_chunk_bytes",
            "rcache_bytes",
            "backend_obj_bytes",
            "gc_buffer_bytes",
            "gc_rate_bytes",
            "gc_plug_bytes",
        ] {
            // Keep the other sizes consistent with an 8M value in any field.
            let base = r#""wlog_bytes": "1G", "wlog_chunk_bytes": "1M", "backend_obj_bytes": "8M""#;
            let a = inline(&format!(r#"{{{base}, "{key}": "8M"}}"#)).unwrap();
            let b = inline(&format!(r#"{{{base}, "{key}": 8388608}}"#)).unwrap();
            assert_eq!(a, b, "{key}");
            let v: Value = serde_json::from_str(&a.to_json_pretty()).unwrap();
            assert_eq!(v[key], Value::from(8388608u64), "{key}");
        }
        let m = err_msg(inline(r#"{"rcache_bytes": "12X"}"#));
        assert!(m.contains("rcache_bytes") && m.contains("12X"), "{m}");
        let m = err_msg(inline(r#"{"rcache_bytes": -4096}"#));
        assert!(m.contains("rcache_bytes") && m.contains("negative"), "{m}");
        let m = err_msg(inline(r#"{"rcache_bytes": 1.5}"#));
        assert!(m.contains("rcache_bytes"), "{m}");
    }

    #[test]
    fn later_layers_win_and_missing_optional_files_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let sys = write_file(
            dir.path(),
            "sys.json",
            r#"{"flush_msec": 10, "gc_threshold": 50, "backend": "dir"}"#,
        );
        let local = write_file(dir.path(), "local.json", r#"{"gc_threshold": 70}"#);
        let missing = dir.path().join("missing.json");
        let c = Config::load_from(&[
            ConfigLayer::File(sys.clone()),
            ConfigLayer::File(missing.clone()),
            ConfigLayer::File(local.clone()),
            ConfigLayer::Inline(r#"{"journal_depth": 9}"#.into()),
        ])
        .unwrap();
        assert_eq!(c.flush_msec, 10);
        assert_eq!(c.gc_threshold, 70);
        assert_eq!(c.journal_depth, 9);
        assert_eq!(c.io_timeout_msec, Config::default().io_timeout_msec);

        // Order matters: the same files reversed give the earlier value.
        let c = Config::load_from(&[ConfigLayer::File(local), ConfigLayer::File(sys)]).unwrap();
        assert_eq!(c.gc_threshold, 50);

        // A required file that is missing is an error naming it.
        let m = err_msg(Config::load_from(&[ConfigLayer::RequiredFile(
            missing.clone(),
        )]));
        assert!(m.contains(&missing.display().to_string()), "{m}");
    }

    #[test]
    fn a_later_layer_can_fix_an_earlier_contradiction() {
        // Validation runs on the merged result, not per layer.
        let dir = tempfile::tempdir().unwrap();
        let a = write_file(dir.path(), "a.json", r#"{"wlog_bytes": "4M"}"#);
        let c = Config::load_from(&[
            ConfigLayer::File(a),
            ConfigLayer::Inline(r#"{"wlog_chunk_bytes": "512K"}"#.into()),
        ])
        .unwrap();
        assert_eq!(c.wlog_bytes, 4 * MIB);
        assert_eq!(c.wlog_chunk_bytes, 512 * KIB);
    }

    #[test]
    fn errors_name_key_and_origin() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_file(dir.path(), "lsvd.json", r#"{"foo": 1}"#);
        let m = err_msg(Config::load_from(&[ConfigLayer::File(p.clone())]));
        assert!(
            m.contains(&format!("unknown key \"foo\" in {}", p.display())),
            "{m}"
        );

        let p = write_file(dir.path(), "bad_type.json", r#"{"journal_depth": "x"}"#);
        let m = err_msg(Config::load_from(&[ConfigLayer::File(p.clone())]));
        assert!(
            m.contains("journal_depth") && m.contains(&p.display().to_string()),
            "{m}"
        );

        let p = write_file(dir.path(), "bad.json", "{\"no_gc\": tru");
        let m = err_msg(Config::load_from(&[ConfigLayer::File(p.clone())]));
        assert!(
            m.contains("invalid JSON") && m.contains(&p.display().to_string()),
            "{m}"
        );

        let m = err_msg(inline(r#"[1, 2]"#));
        assert!(m.contains("JSON object"), "{m}");
        let m = err_msg(inline(r#"{"backend": "s3"}"#));
        assert!(m.contains("backend") && m.contains("inline"), "{m}");
        let m = err_msg(inline(r#"{"journal_depth": 5000000000}"#));
        assert!(m.contains("journal_depth"), "{m}");
    }

    #[test]
    fn cli_arg_is_inline_json_or_a_required_path() {
        assert_eq!(
            ConfigLayer::from_cli_arg("  {\"no_gc\": true}"),
            ConfigLayer::Inline("  {\"no_gc\": true}".into())
        );
        assert_eq!(
            ConfigLayer::from_cli_arg("/etc/x.json"),
            ConfigLayer::RequiredFile("/etc/x.json".into())
        );
        let c = Config::load_from(&[ConfigLayer::from_cli_arg(
            " {\"no_gc\": true, \"rcache_bytes\": \"2G\"} ",
        )])
        .unwrap();
        assert!(c.no_gc);
        assert_eq!(c.rcache_bytes, 2 * GIB);

        let dir = tempfile::tempdir().unwrap();
        let p = write_file(dir.path(), "c.json", r#"{"hard_flush": true}"#);
        let c = Config::load_from(&[ConfigLayer::from_cli_arg(p.to_str().unwrap())]).unwrap();
        assert!(c.hard_flush);
        let missing = dir.path().join("nope.json");
        let m = err_msg(Config::load(Some(missing.to_str().unwrap())));
        assert!(m.contains("nope.json"), "{m}");
    }

    #[test]
    fn metrics_listen_forms() {
        let parse = |v: &str| {
            Config {
                metrics_listen: v.into(),
                ..Config::default()
            }
            .metrics_listen()
        };
        assert_eq!(parse("").unwrap(), MetricsListen::Default);
        assert_eq!(parse("off").unwrap(), MetricsListen::Off);
        assert_eq!(
            parse("unix:/tmp/m.sock").unwrap(),
            MetricsListen::Unix("/tmp/m.sock".into())
        );
        assert_eq!(
            parse("127.0.0.1:9477").unwrap(),
            MetricsListen::Tcp("127.0.0.1:9477".parse().unwrap())
        );
        assert!(matches!(parse("[::1]:0").unwrap(), MetricsListen::Tcp(_)));
        let m = parse("192.168.1.5:9477").unwrap_err().to_string();
        assert!(m.contains("not a loopback address"), "{m}");
    }

    #[test]
    fn each_validate_rule_names_its_key() {
        let cases: &[(&str, &str)] = &[
            (r#"{"ceph_id": ""}"#, "ceph_id"),
            (r#"{"ceph_id": "client.admin"}"#, "ceph_id"),
            (r#"{"metrics_listen": "0.0.0.0:9477"}"#, "metrics_listen"),
            (r#"{"metrics_listen": "localhost:9477"}"#, "metrics_listen"),
            (r#"{"metrics_listen": "unix:"}"#, "metrics_listen"),
            (r#"{"metrics_listen": "on"}"#, "metrics_listen"),
            (r#"{"rados_op_timeout_secs": 0}"#, "rados_op_timeout_secs"),
            (r#"{"rados_max_inflight": 0}"#, "rados_max_inflight"),
            (r#"{"rados_max_inflight": 1025}"#, "rados_max_inflight"),
            (r#"{"wlog_bytes": 0}"#, "wlog_bytes"),
            (r#"{"wlog_bytes": 1073741825}"#, "wlog_bytes"),
            (r#"{"wlog_chunk_bytes": 0}"#, "wlog_chunk_bytes"),
            (r#"{"wlog_chunk_bytes": 5000}"#, "wlog_chunk_bytes"),
            (r#"{"backend_obj_bytes": 0}"#, "backend_obj_bytes"),
            (r#"{"backend_obj_bytes": 10000}"#, "backend_obj_bytes"),
            (r#"{"rcache_bytes": 0}"#, "rcache_bytes"),
            (r#"{"rcache_bytes": 4097}"#, "rcache_bytes"),
            (r#"{"rcache_bytes": "64K"}"#, "rcache_bytes"),
            (
                r#"{"wlog_chunk_bytes": "16M", "backend_obj_bytes": "8M"}"#,
                "wlog_chunk_bytes",
            ),
            (
                r#"{"wlog_bytes": "8M", "wlog_chunk_bytes": "2M"}"#,
                "wlog_bytes",
            ),
            (r#"{"backend_obj_bytes": "2G"}"#, "backend_obj_bytes"),
            (
                r#"{"backend_obj_bytes": "32K", "wlog_chunk_bytes": "4K"}"#,
                "backend_obj_bytes",
            ),
            (
                r#"{"wlog_chunk_bytes": "128M", "backend_obj_bytes": "1G", "wlog_bytes": "1G"}"#,
                "wlog_chunk_bytes",
            ),
            (r#"{"backend_write_window": 0}"#, "backend_write_window"),
            (r#"{"backend_write_window": 257}"#, "backend_write_window"),
            (r#"{"journal_depth": 0}"#, "journal_depth"),
            (r#"{"journal_depth": 65}"#, "journal_depth"),
            (r#"{"gc_threshold": 0}"#, "gc_threshold"),
            (r#"{"gc_threshold": 100}"#, "gc_threshold"),
            (r#"{"gc_buffer_bytes": "32K"}"#, "gc_buffer_bytes"),
            (r#"{"gc_plug_bytes": 1000}"#, "gc_plug_bytes"),
            (r#"{"gc_plug_bytes": "128M"}"#, "gc_plug_bytes"),
            (r#"{"gc_interval_msec": 0}"#, "gc_interval_msec"),
            (r#"{"gc_rate_bytes": "1Q"}"#, "gc_rate_bytes"),
            (
                r#"{"checkpoint_interval_objs": 0}"#,
                "checkpoint_interval_objs",
            ),
            (r#"{"flush_msec": 0}"#, "flush_msec"),
            (r#"{"io_timeout_msec": 99}"#, "io_timeout_msec"),
        ];
        if !cfg!(feature = "rados") {
            let m = err_msg(inline(r#"{"backend": "rados"}"#));
            assert!(m.contains("backend \"rados\""), "{m}");
        }
        for (json, key) in cases {
            let m = err_msg(inline(json));
            assert!(m.contains(key), "{json}: {m}");
        }
        // The boundaries themselves are accepted.
        for json in [
            r#"{"wlog_chunk_bytes": "4K", "backend_obj_bytes": "64K", "wlog_bytes": "1040K"}"#,
            r#"{"wlog_chunk_bytes": "64M", "backend_obj_bytes": "1G", "wlog_bytes": "257M"}"#,
            r#"{"backend_write_window": 256, "journal_depth": 64, "gc_threshold": 99}"#,
            r#"{"backend_write_window": 1, "journal_depth": 1, "gc_threshold": 1}"#,
            r#"{"checkpoint_interval_objs": 1, "flush_msec": 1, "io_timeout_msec": 100}"#,
            r#"{"gc_buffer_bytes": "64K", "gc_rate_bytes": 0, "gc_plug_bytes": 0, "gc_interval_msec": 1}"#,
        ] {
            inline(json).unwrap_or_else(|e| panic!("{json}: {e}"));
        }
    }

    #[test]
    fn describe_keys_matches_config() {
        let v = serde_json::to_value(Config::default()).unwrap();
        let fields: Vec<&String> = v.as_object().unwrap().keys().collect();
        let keys: Vec<&str> = describe_keys().iter().map(|(k, _, _)| *k).collect();
        for f in &fields {
            assert!(keys.contains(&f.as_str()), "{f} missing from describe_keys");
        }
        assert_eq!(fields.len(), keys.len(), "describe_keys has extra keys");

        // Each listed default, read as a config value, is the real default.
        for (key, default, meaning) in describe_keys() {
            assert!(!meaning.is_empty(), "{key}");
            let value: Value =
                serde_json::from_str(default).unwrap_or_else(|_| Value::from(*default));
            let mut one = Map::new();
            one.insert((*key).to_owned(), value);
            let c: Config = serde_json::from_value(Value::Object(one))
                .unwrap_or_else(|e| panic!("{key} default {default:?}: {e}"));
            assert_eq!(
                c,
                Config::default(),
                "{key}: table default {default:?} is stale"
            );
        }
    }
}
