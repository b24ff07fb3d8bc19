//! `lsvd-crash-test`: kill a process that is writing to a volume at random
//! moments and check that what the volume shows afterwards is a state the
//! contract allows (`/README.md`, "Consistency guarantees").
//!
//! The parent creates an image in a work directory, then for each
//! iteration spawns itself in `--child` mode, which opens the volume and
//! runs a seeded random workload (see [`child`]), logging every op before
//! submitting it and every completion (see [`oplog`]). After a random time
//! the parent sends SIGKILL, optionally deletes the journal or the newest
//! backend objects, reopens the volume itself, reads the whole image and
//! checks it (see [`verify`]) against the state it verified last time plus
//! the child's log. Every written sector is stamped (see [`stamp`]), so torn,
//! misplaced and stale sectors are recognised. The state accumulates over
//! iterations on the same image.
//!
//! # On RADOS
//!
//! `--backend rados` (in a binary built with `--features rados`) keeps the
//! image's objects in a Ceph pool instead of the work directory: the pool
//! named by `--rados-pool`, else `$LSVD_CEPH_POOL`, else `lsvd`, of the
//! cluster in `$CEPH_CONF` (else `/etc/ceph/ceph.conf`), in a namespace of
//! the run's own (`--rados-namespace`, default `crash-<pid>-<seed>`, which
//! must hold no objects at the start), so concurrent runs never see each
//! other's objects. The journal, read cache and child logs stay in the work
//! directory. A RADOS image lock outlives its killed holder, so the tester
//! breaks the killed child's lock (fencing its address first) after every
//! kill, before it touches the store, and again before each child starts.
//! `--lose-objects` and `--backend-delay` go through the
//! [`ObjectStore`] trait and work on both backends. A passing run deletes
//! every object of its namespace (unless `--keep`); a failing one keeps them
//! and prints where. Against the test cluster
//! (`scripts/ceph-test-cluster.sh`):
//!
//! ```text
//! eval "$(scripts/ceph-test-cluster.sh env DIR)"
//! lsvd-crash-test --backend rados --iterations 30 --seed 1
//! ```

pub mod child;
pub mod oplog;
pub mod stamp;
pub mod verify;

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::backend::{DirStore, FaultAction, FaultOp, FaultRule, FaultStore, ObjectStore};
use crate::config::{Config, ConfigLayer};
use crate::units::SECTOR;
use crate::volume::image::{create_image, parse_object_name};
use crate::volume::{Volume, VolumeOptions};
use oplog::RunLog;
use stamp::{parse_sector, splitmix64, Stamp};
use verify::{History, Promises};

/// Pool name inside the work directory.
const POOL: &str = "pool";
/// Image name.
const IMAGE: &str = "img";
/// How long the parent waits for a child to report the volume open.
const OPEN_TIMEOUT: Duration = Duration::from_secs(120);
/// Bytes read per `Volume::read` call when verifying.
const READ_CHUNK: usize = 1 << 20;

/// How `--wipe-journal` destroys the journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum WipeMode {
    /// Delete the journal file.
    Delete,
    /// Overwrite the whole journal file with zeros (superblock included).
    Zero,
    /// Overwrite everything after the journal superblock's two 4 KiB slots
    /// with zeros.
    Records,
}

/// Where the image's objects are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// A directory store inside the work directory.
    Dir,
    /// A namespace of a Ceph RADOS pool (needs `--features rados`).
    Rados,
}

/// The object store of a run, as the tester and its children open it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreSpec {
    /// `store/pool` inside the work directory.
    Dir,
    /// `namespace` of RADOS pool `pool` (cluster from `$CEPH_CONF`).
    Rados {
        /// Pool name.
        pool: String,
        /// The run's own namespace.
        namespace: String,
    },
}

/// Command line of `lsvd-crash-test`.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "lsvd-crash-test",
    about = "Kill a writer at random moments and verify the volume's crash guarantees"
)]
pub struct Args {
    /// Master seed (default: from the clock; printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Kill/verify iterations.
    #[arg(long, default_value_t = 100)]
    pub iterations: u32,
    /// Destroy the journal after every kill (only prefix consistency is
    /// then required).
    #[arg(long)]
    pub wipe_journal: bool,
    /// Destroy the journal after every K-th kill.
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub wipe_journal_every: u32,
    /// How the journal is destroyed.
    #[arg(long, value_enum, default_value = "delete")]
    pub wipe_mode: WipeMode,
    /// Delete the N highest-sequence backend objects after a kill (once GC
    /// has run: only objects above the oldest listed checkpoint).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub lose_objects: u32,
    /// Lose objects only after every K-th kill (default: every kill).
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub lose_objects_every: u32,
    /// Random delay of up to MS milliseconds before each backend put in the child.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub backend_delay: u64,
    /// Longest time a child runs before it is killed (ms).
    #[arg(long, default_value_t = 400)]
    pub max_run_ms: u64,
    /// Image size (e.g. 64M).
    #[arg(long, default_value = "64M")]
    pub size: String,
    /// Work directory (must be empty or missing; default: a fresh one under
    /// the temp dir). Must not be tmpfs: O_DIRECT alignment must be enforced.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Object store: `dir` (in the work directory) or `rados` (a namespace
    /// of its own in a Ceph pool; see `--rados-pool`, `$CEPH_CONF`).
    #[arg(long, value_enum, default_value = "dir")]
    pub backend: Backend,
    /// RADOS pool for `--backend rados` (default: `$LSVD_CEPH_POOL`, else
    /// `lsvd`).
    #[arg(long, value_name = "POOL")]
    pub rados_pool: Option<String>,
    /// RADOS namespace for `--backend rados`; it must hold no objects at the
    /// start (default: `crash-<pid>-<seed>`).
    #[arg(long, value_name = "NS")]
    pub rados_namespace: Option<String>,
    /// Extra configuration JSON, layered over the tester's own settings.
    #[arg(long)]
    pub config: Option<String>,
    /// Run the garbage collector aggressively in every child and reopen
    /// (`gc_threshold` 90, no rate limit, 10 ms idle sleep; `--config` is
    /// layered on top), and check that the store stays bounded.
    #[arg(long)]
    pub gc: bool,
    /// Make each child abort itself at the N-th hit of a failpoint
    /// (`NAME[:N]`, see `LSVD_FAILPOINT` in the README); a child that
    /// aborts there is expected, not a failure.
    #[arg(long, value_name = "NAME[:N]")]
    pub failpoint: Option<String>,
    /// Fail when the image's objects ever hold more than R times the image
    /// size after a verify (0: only report the largest; use with `--gc` and
    /// `--fresh-every 0` to check that collection keeps the store bounded).
    #[arg(long, value_name = "R", default_value_t = 0.0)]
    pub max_stored_ratio: f64,
    /// Do not require that acknowledged but unflushed ops survive a kill
    /// (the contract promises only flushed and FUA writes).
    #[arg(long)]
    pub ack_loss_ok: bool,
    /// Cut the power instead of only killing the child: the child records
    /// every journal write and fdatasync and every store file write, fsync,
    /// rename and unlink (`lsvd::powercut`); after the kill, every write
    /// and directory change no completed flush covered is kept, lost or
    /// torn at 4 KiB, in any order (the state a volatile write cache may
    /// leave). Only flushed and FUA writes must then survive. Directory
    /// store only.
    #[arg(long)]
    pub power_loss: bool,
    /// The child drives the journal from its own io_uring (a journal lane,
    /// as a ublk queue does) instead of through the journal thread.
    #[arg(long)]
    pub lane: bool,
    /// Start over with a new, empty image every N iterations (0: never).
    /// Without garbage collection the store only grows; this bounds the
    /// disk space a long run needs.
    #[arg(long, value_name = "N", default_value_t = 200)]
    pub fresh_every: u32,
    /// Keep the work directory on success.
    #[arg(long)]
    pub keep: bool,
    /// One summary line per 50 iterations instead of every iteration.
    #[arg(long)]
    pub quiet: bool,
    /// Internal: run as the child.
    #[arg(long, hide = true)]
    pub child: bool,
    /// Internal: the child's run id.
    #[arg(long, hide = true, default_value_t = 0)]
    pub run: u32,
    /// Internal: the child's workload seed.
    #[arg(long, hide = true, default_value_t = 0)]
    pub child_seed: u64,
    /// Internal: the child records its I/O for the power-cut model here.
    #[arg(long, hide = true)]
    pub power_log: Option<PathBuf>,
}

/// Where things live in the work directory.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The work directory.
    pub dir: PathBuf,
    /// Where the objects are.
    pub store: StoreSpec,
}

impl Layout {
    /// The store root (`store_dir`).
    pub fn store_root(&self) -> PathBuf {
        self.dir.join("store")
    }
    /// The pool directory holding the objects.
    pub fn pool_dir(&self) -> PathBuf {
        self.store_root().join(POOL)
    }
    /// The journal root (`wlog_dir`).
    pub fn wlog_root(&self) -> PathBuf {
        self.dir.join("wlog")
    }
    /// The journal file.
    pub fn journal(&self) -> PathBuf {
        self.wlog_root().join(POOL).join(format!("{IMAGE}.wlog"))
    }
    /// Child logs.
    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }
    /// The power-cut recording of iteration `iter` (`--power-loss`).
    pub fn power_rec(&self, iter: u32) -> PathBuf {
        self.dir.join("powercut").join(format!("run-{iter}"))
    }

    /// The tester's configuration: small objects, a small journal and short
    /// intervals so that short runs exercise destage, journal wrap and
    /// throttling, checkpoints and GC; `extra` (JSON) is layered on top.
    pub fn config(&self, extra: Option<&str>) -> Result<Config, String> {
        let mut base = serde_json::json!({
            "store_dir": self.store_root(),
            "wlog_dir": self.wlog_root(),
            "rcache_dir": self.dir.join("rcache"),
            "rcache_bytes": "16M",
            "wlog_bytes": "16M",
            "wlog_chunk_bytes": "2M",
            "backend_obj_bytes": "4M",
            "backend_write_window": 4,
            "checkpoint_interval_objs": 3,
            "flush_msec": 50,
        });
        if let StoreSpec::Rados { namespace, .. } = &self.store {
            base["backend"] = "rados".into();
            base["rados_namespace"] = namespace.as_str().into();
        }
        let mut layers = vec![ConfigLayer::Inline(base.to_string())];
        if let Some(e) = extra {
            layers.push(ConfigLayer::Inline(e.to_owned()));
        }
        Config::load_from(&layers).map_err(|e| format!("config: {e:?}"))
    }

    /// Open the object store (a new connection for RADOS: connect only in
    /// the process that uses it, never before a fork).
    pub fn open_store(&self, config: &Config) -> Result<Arc<dyn ObjectStore>, String> {
        match &self.store {
            StoreSpec::Dir => {
                let dir = DirStore::open(&self.pool_dir()).map_err(|e| format!("{e:?}"))?;
                Ok(Arc::new(dir))
            }
            #[cfg(feature = "rados")]
            StoreSpec::Rados { pool, .. } => crate::volume::image::open_store(config, pool, false)
                .map_err(|e| format!("open RADOS pool {pool}: {e}")),
            #[cfg(not(feature = "rados"))]
            StoreSpec::Rados { .. } => {
                let _ = config;
                Err(
                    "--backend rados: this binary is built without RADOS support (build it \
                     with `cargo build --release --features rados`)"
                        .to_owned(),
                )
            }
        }
    }

    /// Options to open the image on a store of its own; with `delay_ms > 0`
    /// every put first sleeps a random time up to that long.
    /// With `power_log`, the journal and the directory store record their
    /// I/O there for the power-cut model.
    pub fn volume_options(
        &self,
        extra: Option<&str>,
        delay_ms: u64,
        seed: u64,
        power_log: Option<&std::path::Path>,
    ) -> Result<VolumeOptions, String> {
        let config = self.config(extra)?;
        let Some(rec) = power_log else {
            let store = self.open_store(&config)?;
            return self.volume_options_on(store, config, delay_ms, seed);
        };
        if self.store != StoreSpec::Dir {
            return Err("the power-cut model covers the directory store only".to_owned());
        }
        let log = crate::powercut::IoLog::create(rec).map_err(|e| format!("{e:?}"))?;
        let dir = DirStore::open(&self.pool_dir())
            .map_err(|e| format!("{e:?}"))?
            .with_io_log(log.clone());
        let mut opts = self.volume_options_on(Arc::new(dir), config, delay_ms, seed)?;
        opts.io_log = Some(log);
        Ok(opts)
    }

    /// Options to open the image on `store` with `config`; see
    /// [`Layout::volume_options`].
    pub fn volume_options_on(
        &self,
        store: Arc<dyn ObjectStore>,
        config: Config,
        delay_ms: u64,
        seed: u64,
    ) -> Result<VolumeOptions, String> {
        let store: Arc<dyn ObjectStore> = if delay_ms > 0 {
            let f = FaultStore::new(store, seed);
            f.add_rule(FaultRule::new(
                FaultOp::Put,
                FaultAction::DelayRandom {
                    max: Duration::from_millis(delay_ms),
                },
            ));
            Arc::new(f)
        } else {
            store
        };
        Ok(VolumeOptions {
            config,
            store,
            image: IMAGE.to_owned(),
            journal_path: self.journal(),
            io_log: None,
        })
    }
}

/// Entry point of the `lsvd-crash-test` binary; returns the exit code
/// (0: all passed, 1: a violation, 2: setup or usage error).
pub fn main() -> i32 {
    let args = Args::parse();
    if args.child {
        let Some(dir) = args.dir.clone() else {
            eprintln!("--child needs --dir");
            return 2;
        };
        let store = match store_spec(&args, None) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{e}");
                return 2;
            }
        };
        return child::run(child::ChildArgs {
            layout: Layout { dir, store },
            config: args.config.clone(),
            run: args.run,
            seed: args.child_seed,
            backend_delay_ms: args.backend_delay,
            power_log: args.power_log.clone(),
            lane: args.lane,
        });
    }
    match Tester::new(args) {
        Ok(mut t) => t.run(),
        Err(e) => {
            eprintln!("lsvd-crash-test: {e}");
            2
        }
    }
}

/// The store named by the command line; `seed` makes the default RADOS
/// namespace (the child is always given one).
fn store_spec(args: &Args, seed: Option<u64>) -> Result<StoreSpec, String> {
    match args.backend {
        Backend::Dir => {
            if args.rados_pool.is_some() || args.rados_namespace.is_some() {
                return Err("--rados-pool and --rados-namespace need --backend rados".to_owned());
            }
            Ok(StoreSpec::Dir)
        }
        Backend::Rados => {
            let pool = args.rados_pool.clone().unwrap_or_else(|| {
                std::env::var("LSVD_CEPH_POOL")
                    .ok()
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| "lsvd".to_owned())
            });
            let namespace = match (&args.rados_namespace, seed) {
                (Some(ns), _) => ns.clone(),
                (None, Some(seed)) => format!("crash-{}-{seed}", std::process::id()),
                (None, None) => return Err("--backend rados needs --rados-namespace".to_owned()),
            };
            if namespace.is_empty() || namespace.contains('\0') {
                return Err(format!(
                    "--rados-namespace {namespace:?} is not a namespace"
                ));
            }
            Ok(StoreSpec::Rados { pool, namespace })
        }
    }
}

/// Counters over the whole test.
#[derive(Default)]
struct Totals {
    passed: u32,
    failed: u32,
    ops: u64,
    writes_verified: u64,
    sectors_verified: u64,
    flushes_done: u64,
    wipes: u32,
    objects_lost: u32,
    killed_in_open: u32,
    rolled_back: u64,
    /// Stale RADOS locks of killed children broken.
    locks_broken: u32,
    /// Time spent breaking them (fencing included).
    lock_break_time: Duration,
    /// Children that reported the volume open, and their time to do so.
    opens: u32,
    open_time: Duration,
    /// Children that aborted themselves at `--failpoint`.
    failpoint_aborts: u32,
    /// Largest stored bytes of the image seen after a verify.
    max_stored: u64,
    /// Power cuts made (`--power-loss`) and what they did, summed.
    cuts: u32,
    cut: crate::powercut::cut::CutReport,
}

/// The parent's state.
struct Tester {
    args: Args,
    layout: Layout,
    /// The work dir was made by us (delete it on success unless `--keep`).
    own_dir: bool,
    /// The tester's own connection to a RADOS store, reused for every
    /// reopen (`None` for the directory store, opened afresh each time).
    shared_store: Option<Arc<dyn ObjectStore>>,
    seed: u64,
    rng: SmallRng,
    /// The state verified after the previous iteration.
    expected: Vec<Stamp>,
    /// Every op that took effect so far; `expected` is its result.
    history: History,
    size: u64,
    totals: Totals,
}

/// What one iteration did (for its summary line and a failure report).
#[derive(Default)]
struct IterInfo {
    ran_ms: u64,
    killed_in_open: bool,
    wiped: bool,
    lost: Vec<String>,
    log: RunLog,
    child_status: String,
    /// What the power cut did (`--power-loss`).
    cut: Option<crate::powercut::cut::CutReport>,
}

/// Configuration of `--gc`: collect everything that is overwritten, at once.
pub const GC_CONFIG: &str =
    r#"{"no_gc": false, "gc_threshold": 90, "gc_rate_bytes": 0, "gc_interval_msec": 10}"#;

/// `base` with the keys of `over` put on top (both JSON objects).
fn merge_json(base: &str, over: Option<&str>) -> Result<String, String> {
    let mut b: serde_json::Value =
        serde_json::from_str(base).map_err(|e| format!("config {base}: {e}"))?;
    if let Some(o) = over {
        let o: serde_json::Value =
            serde_json::from_str(o).map_err(|e| format!("--config {o}: {e}"))?;
        let (Some(bm), Some(om)) = (b.as_object_mut(), o.as_object()) else {
            return Err(format!("--config {o}: expected a JSON object"));
        };
        for (k, v) in om {
            bm.insert(k.clone(), v.clone());
        }
    }
    Ok(b.to_string())
}

impl Tester {
    fn new(mut args: Args) -> Result<Tester, String> {
        if std::env::var_os(crate::failpoint::ENV).is_some() {
            return Err(format!(
                "{} is set: it would abort the tester itself; use --failpoint",
                crate::failpoint::ENV
            ));
        }
        if let Some(fp) = &args.failpoint {
            crate::failpoint::validate(fp).map_err(|e| format!("--failpoint: {e}"))?;
        }
        if args.gc {
            // The children get the merged configuration through --config.
            args.config = Some(merge_json(GC_CONFIG, args.config.as_deref())?);
        }
        let seed = args.seed.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
        let size = crate::units::parse_size(&args.size)
            .map_err(|e| format!("--size {}: {e}", args.size))?;
        if size == 0 || !size.is_multiple_of(4096) {
            return Err(format!("--size {size} must be a positive multiple of 4096"));
        }
        if args.max_run_ms < 10 {
            return Err("--max-run-ms must be at least 10".to_owned());
        }
        if args.power_loss && args.backend != Backend::Dir {
            return Err(
                "--power-loss models the journal and the directory store; it needs --backend dir"
                    .to_owned(),
            );
        }
        let (dir, own_dir) = match &args.dir {
            Some(d) => (d.clone(), false),
            None => (
                std::env::temp_dir().join(format!("lsvd-crash-{}-{seed}", std::process::id())),
                true,
            ),
        };
        if dir.starts_with("/dev/shm") {
            return Err(format!(
                "{}: tmpfs hides O_DIRECT alignment bugs; use a directory on a real file system",
                dir.display()
            ));
        }
        if let Ok(mut rd) = fs::read_dir(&dir) {
            if rd.next().is_some() {
                return Err(format!("work dir {} is not empty", dir.display()));
            }
        }
        let store = store_spec(&args, Some(seed))?;
        let layout = Layout { dir, store };
        // RADOS: reach the cluster and check the namespace before anything
        // is created on disk.
        let shared_store = match &layout.store {
            StoreSpec::Dir => None,
            StoreSpec::Rados { .. } => {
                let config = layout.config(args.config.as_deref())?;
                let store = layout.open_store(&config)?;
                // A namespace of the run's own: anything in it is someone
                // else's (or an earlier run's) and must not be mixed in.
                let there = store.list("").map_err(|e| format!("{e}"))?;
                if let Some(first) = there.first() {
                    return Err(format!(
                        "{} is not empty ({} objects, e.g. {first}); pick another \
                         --rados-namespace",
                        store.describe(),
                        there.len()
                    ));
                }
                Some(store)
            }
        };
        let mut dirs = vec![layout.logs()];
        if layout.store == StoreSpec::Dir {
            dirs.insert(0, layout.pool_dir());
        }
        for d in dirs {
            fs::create_dir_all(&d).map_err(|e| format!("create {}: {e}", d.display()))?;
        }
        if let Some(p) = layout.journal().parent() {
            fs::create_dir_all(p).map_err(|e| format!("create {}: {e}", p.display()))?;
        }
        // Fail early on a bad --config rather than in every child.
        let config = layout.config(args.config.as_deref())?;
        let store = match &shared_store {
            Some(s) => Arc::clone(s),
            None => layout.open_store(&config)?,
        };
        create_image(&*store, IMAGE, size).map_err(|e| format!("create image: {e:?}"))?;
        Ok(Tester {
            shared_store,
            rng: SmallRng::seed_from_u64(seed),
            expected: vec![Stamp::ZERO; (size / SECTOR) as usize],
            history: History::default(),
            args,
            layout,
            own_dir,
            seed,
            size,
            totals: Totals::default(),
        })
    }

    /// The store, as the tester uses it (verifying reopens, lost objects,
    /// fresh images).
    fn store(&self) -> Result<Arc<dyn ObjectStore>, String> {
        match &self.shared_store {
            Some(s) => Ok(Arc::clone(s)),
            None => {
                let config = self.layout.config(self.args.config.as_deref())?;
                self.layout.open_store(&config)
            }
        }
    }

    /// RADOS: break (fencing first) the image lock that a killed child
    /// left behind; a RADOS lock outlives its holder. Nothing to do for the
    /// directory store, whose lock dies with the process.
    fn break_stale_lock(&mut self) -> Result<(), String> {
        let Some(store) = self.shared_store.clone() else {
            return Ok(());
        };
        let t0 = Instant::now();
        let broken = store
            .break_lock(IMAGE)
            .map_err(|e| format!("break the killed child's lock: {e}"))?;
        if !broken.is_empty() {
            self.totals.locks_broken += broken.len() as u32;
            self.totals.lock_break_time += t0.elapsed();
        }
        Ok(())
    }

    fn run(&mut self) -> i32 {
        match &self.layout.store {
            StoreSpec::Dir => println!(
                "lsvd-crash-test: seed {} iterations {} size {} dir {}",
                self.seed,
                self.args.iterations,
                self.size,
                self.layout.dir.display()
            ),
            StoreSpec::Rados { .. } => println!(
                "lsvd-crash-test: seed {} iterations {} size {} dir {} store {}",
                self.seed,
                self.args.iterations,
                self.size,
                self.layout.dir.display(),
                self.store_label()
            ),
        }
        let started = Instant::now();
        for iter in 1..=self.args.iterations {
            let every = self.args.fresh_every;
            if every > 0 && iter > 1 && (iter - 1).is_multiple_of(every) {
                if let Err(e) = self.fresh_image() {
                    println!("cannot start a fresh image: {e}");
                    self.totals.failed += 1;
                    break;
                }
            }
            let mut info = IterInfo::default();
            match self.iteration(iter, &mut info) {
                Ok(line) => {
                    self.totals.passed += 1;
                    if !self.args.quiet || iter.is_multiple_of(50) || iter == self.args.iterations {
                        println!("{line}");
                    }
                }
                Err(report) => {
                    self.totals.failed += 1;
                    self.report_failure(iter, &info, &report);
                    break;
                }
            }
        }
        let t = &self.totals;
        println!(
            "totals: {} ops logged, {} writes verified, {} sectors verified, {} flushes completed, \
             {} journal wipes, {} objects lost, {} earlier ops rolled back, {} kills during open, {:.1}s",
            t.ops,
            t.writes_verified,
            t.sectors_verified,
            t.flushes_done,
            t.wipes,
            t.objects_lost,
            t.rolled_back,
            t.killed_in_open,
            started.elapsed().as_secs_f64()
        );
        if self.shared_store.is_some() {
            let avg_ms = |d: Duration, n: u32| d.as_secs_f64() * 1000.0 / f64::from(n.max(1));
            println!(
                "rados: {} stale locks of killed children broken ({:.0} ms each), children \
                 opened the volume in {:.0} ms, {:.0} ms per iteration",
                t.locks_broken,
                avg_ms(t.lock_break_time, t.locks_broken),
                avg_ms(t.open_time, t.opens),
                avg_ms(started.elapsed(), t.passed + t.failed)
            );
        }
        println!(
            "store: at most {:.1} MiB of objects after a verify ({:.2}x the image size)",
            t.max_stored as f64 / (1 << 20) as f64,
            t.max_stored as f64 / self.size as f64
        );
        if self.args.power_loss {
            println!("power cuts: {}: {}", t.cuts, t.cut.summary());
        }
        if self.args.failpoint.is_some() {
            println!(
                "failpoint {}: {} children aborted there",
                self.args.failpoint.as_deref().unwrap_or_default(),
                t.failpoint_aborts
            );
        }
        println!("{} passed, {} failed", t.passed, t.failed);
        if t.failed > 0 {
            println!("work dir kept: {}", self.layout.dir.display());
            if self.shared_store.is_some() {
                println!("objects kept: {}", self.store_label());
            }
            return 1;
        }
        if let Some(store) = &self.shared_store {
            if self.args.keep {
                println!("objects kept: {}", self.store_label());
            } else if let Err(e) = delete_all(&**store) {
                eprintln!("cannot delete the objects of {}: {e}", self.store_label());
            }
        }
        if self.own_dir && !self.args.keep {
            if let Err(e) = fs::remove_dir_all(&self.layout.dir) {
                eprintln!("cannot remove {}: {e}", self.layout.dir.display());
            }
        } else {
            println!("work dir kept: {}", self.layout.dir.display());
        }
        0
    }

    /// `rados:POOL/NAMESPACE` (or the pool directory).
    fn store_label(&self) -> String {
        match &self.layout.store {
            StoreSpec::Dir => self.layout.pool_dir().display().to_string(),
            StoreSpec::Rados { pool, namespace } => format!("rados:{pool}/{namespace}"),
        }
    }

    /// Remove the image (objects and journal) and the child logs, create a
    /// new empty image, and expect zeros again.
    fn fresh_image(&mut self) -> Result<(), String> {
        let store = self.store()?;
        crate::volume::image::remove_image(&*store, IMAGE, Some(&self.layout.journal()))
            .map_err(|e| format!("remove image: {e:?}"))?;
        create_image(&*store, IMAGE, self.size).map_err(|e| format!("create image: {e:?}"))?;
        let logs = self.layout.logs();
        let _ = fs::remove_dir_all(&logs);
        fs::create_dir_all(&logs).map_err(|e| format!("create {}: {e}", logs.display()))?;
        self.expected = vec![Stamp::ZERO; (self.size / SECTOR) as usize];
        self.history = History::default();
        Ok(())
    }

    fn report_failure(&self, iter: u32, info: &IterInfo, report: &str) {
        let l = &info.log;
        println!("FAILED iteration {iter} (master seed {})", self.seed);
        println!(
            "  child ran {} ms{}, {} ops logged, {} acked (max acked {}), flushes {} submitted {} done, \
             K (flushed through) {}, journal wiped: {}, objects lost: {:?}, child: {}",
            info.ran_ms,
            if info.killed_in_open { " (killed during open)" } else { "" },
            l.ops.len(),
            l.acked_count(),
            l.max_acked(),
            l.flushes.len(),
            l.flushes_done,
            l.flushed_through,
            info.wiped,
            info.lost,
            info.child_status
        );
        for e in &l.errors {
            println!("  child error: {e}");
        }
        if let Some(c) = &info.cut {
            println!("  power cut ({}): {}", c.mode, c.summary());
            println!(
                "  uncovered journal writes: {}",
                c.journal_detail.join(", ")
            );
            println!("  uncovered directory changes: {}", c.dir_detail.join(", "));
            println!(
                "  recording kept: {}",
                self.layout.power_rec(iter).display()
            );
        }
        for line in report.lines() {
            println!("  {line}");
        }
        println!(
            "  op log: {}",
            self.layout.logs().join(format!("run-{iter}.ops")).display()
        );
        println!(
            "  reproduce (timing-dependent): lsvd-crash-test --seed {} --iterations {iter} {}",
            self.seed,
            self.flag_summary()
        );
    }

    /// The flags that shape the test, for the reproduction line.
    fn flag_summary(&self) -> String {
        let a = &self.args;
        let mut v = vec![format!("--size {} --max-run-ms {}", a.size, a.max_run_ms)];
        if let StoreSpec::Rados { pool, .. } = &self.layout.store {
            v.push(format!("--backend rados --rados-pool {pool}"));
        }
        if a.wipe_journal {
            v.push("--wipe-journal".into());
        }
        if a.wipe_journal_every > 0 {
            v.push(format!("--wipe-journal-every {}", a.wipe_journal_every));
        }
        if a.wipe_journal || a.wipe_journal_every > 0 {
            v.push(format!("--wipe-mode {:?}", a.wipe_mode).to_lowercase());
        }
        if a.lane {
            v.push("--lane".into());
        }
        if a.lose_objects > 0 {
            v.push(format!("--lose-objects {}", a.lose_objects));
        }
        if a.lose_objects_every > 0 {
            v.push(format!("--lose-objects-every {}", a.lose_objects_every));
        }
        if a.backend_delay > 0 {
            v.push(format!("--backend-delay {}", a.backend_delay));
        }
        if a.ack_loss_ok {
            v.push("--ack-loss-ok".into());
        }
        if a.max_stored_ratio > 0.0 {
            v.push(format!("--max-stored-ratio {}", a.max_stored_ratio));
        }
        if a.fresh_every != 200 {
            v.push(format!("--fresh-every {}", a.fresh_every));
        }
        if let Some(c) = &a.config {
            // With --gc this is already the merged configuration.
            v.push(format!("--config '{c}'"));
        }
        if a.gc {
            v.push("--gc".into());
        }
        if let Some(fp) = &a.failpoint {
            v.push(format!("--failpoint {fp}"));
        }
        v.join(" ")
    }

    /// One kill/verify cycle; returns its summary line or a violation report.
    fn iteration(&mut self, iter: u32, info: &mut IterInfo) -> Result<String, String> {
        let mut s = self.seed ^ u64::from(iter).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let child_seed = splitmix64(&mut s);
        let a = &self.args;
        let wipe = a.wipe_journal
            || (a.wipe_journal_every > 0 && iter.is_multiple_of(a.wipe_journal_every));
        let lose = if a.lose_objects == 0 {
            0
        } else if a.lose_objects_every == 0 || iter.is_multiple_of(a.lose_objects_every) {
            a.lose_objects
        } else {
            0
        };
        // One kill in eight lands while the child is still opening
        // (recovering) the volume.
        let kill_in_open = self.rng.gen_range(0..8u32) == 0;
        let run_ms = self.rng.gen_range(10..=self.args.max_run_ms);

        let mut extra_fp = false;
        let rec = self.layout.power_rec(iter);
        if self.args.power_loss {
            // What is durable now: the base the cut starts from.
            crate::powercut::cut::capture_baseline(
                &rec,
                &self.layout.journal(),
                &self.layout.pool_dir(),
            )
            .map_err(|e| format!("power-cut baseline: {e:?}"))?;
        }
        self.run_child(iter, child_seed, kill_in_open, run_ms, info)?;
        // The child is dead; on RADOS its lock is not: fence and break it
        // before anyone touches the store.
        self.break_stale_lock()?;
        if self.args.power_loss {
            // The power goes with the child: what no flush covered may be
            // lost or torn.
            let cut = crate::powercut::cut::apply(
                &rec,
                &self.layout.journal(),
                &self.layout.pool_dir(),
                &mut self.rng,
            )
            .map_err(|e| format!("power cut: {e:?}"))?;
            self.totals.cuts += 1;
            self.totals.cut.add(&cut);
            info.cut = Some(cut);
        }

        if wipe {
            self.wipe_journal()?;
            info.wiped = true;
            self.totals.wipes += 1;
        }
        if lose > 0 {
            info.lost = self.lose_objects(lose)?;
            self.totals.objects_lost += info.lost.len() as u32;
        }

        let promises = Promises {
            flushed: !wipe && lose == 0,
            // A power cut may lose what no flush covered.
            acked: !wipe && lose == 0 && !self.args.ack_loss_ok && !self.args.power_loss,
        };
        let config = self.layout.config(self.args.config.as_deref())?;
        let opts = self.layout.volume_options_on(self.store()?, config, 0, 0)?;
        let vol = Volume::open(opts).map_err(|e| format!("reopen after kill failed: {e:?}"))?;
        let result = self.verify_image(&vol, iter, &info.log, promises);
        // Alternate clean shutdown and crash so the next child recovers
        // from both.
        let closing = if iter.is_multiple_of(2) {
            vol.close().map_err(|e| format!("close failed: {e:?}"))
        } else {
            vol.crash();
            Ok(())
        };
        let (v, found) = result?;
        closing?;
        let stored = stored_bytes(&*self.store()?)?;
        self.totals.max_stored = self.totals.max_stored.max(stored);
        let ratio = stored as f64 / self.size as f64;
        if self.args.max_stored_ratio > 0.0 && ratio > self.args.max_stored_ratio {
            return Err(format!(
                "the image's objects hold {stored} bytes, {ratio:.2}x the image size \
                 (bound --max-stored-ratio {})",
                self.args.max_stored_ratio
            ));
        }
        // The verified image is the base the next iteration is checked against.
        self.expected = found;
        self.history.commit(v.keep, iter, &info.log);
        if let Some(e) = info.log.errors.first() {
            return Err(format!("the child reported an error: {e}"));
        }
        if !info.child_status.is_empty() {
            if !self.failpoint_abort(iter) {
                return Err(format!("the child exited by itself: {}", info.child_status));
            }
            self.totals.failpoint_aborts += 1;
            extra_fp = true;
        }
        self.totals.ops += info.log.ops.len() as u64;
        self.totals.writes_verified += info
            .log
            .ops
            .iter()
            .take(v.p_prime as usize)
            .filter(|o| o.kind == oplog::OpKind::Write)
            .count() as u64;
        self.totals.sectors_verified += v.stamped_sectors;
        self.totals.flushes_done += u64::from(info.log.flushes_done);
        if info.killed_in_open {
            self.totals.killed_in_open += 1;
        }
        let l = &info.log;
        let mut extra = String::new();
        if extra_fp {
            extra.push_str(" [aborted at the failpoint]");
        }
        if info.killed_in_open {
            extra.push_str(" [killed in open]");
        }
        if info.wiped {
            extra.push_str(" [journal wiped]");
        }
        if !info.lost.is_empty() {
            extra.push_str(&format!(" [lost {}]", info.lost.join(",")));
        }
        if v.rolled_back > 0 {
            extra.push_str(&format!(" [rolled back {} earlier ops]", v.rolled_back));
        }
        if let Some(c) = &info.cut {
            extra.push_str(&format!(
                " [power cut {}: journal writes lost {} torn {}, file writes lost {} torn {}, \
                 directory changes lost {}]",
                c.mode.split(' ').next().unwrap_or_default(),
                c.journal_dropped,
                c.journal_torn,
                c.file_dropped,
                c.file_torn,
                c.dir_dropped
            ));
            // Verified: the recording is no longer needed.
            let _ = fs::remove_dir_all(self.layout.power_rec(iter));
        }
        self.totals.rolled_back += v.rolled_back as u64;
        Ok(format!(
            "iter {iter}: ran {}ms, ops {} acked {} flushes {}/{} K={} | P={} P'={} stamped {} (run {}) ok{extra}",
            info.ran_ms,
            l.ops.len(),
            l.acked_count(),
            l.flushes_done,
            l.flushes.len(),
            l.flushed_through,
            v.p,
            v.p_prime,
            v.stamped_sectors,
            v.run_sectors,
        ))
    }

    /// Did child `iter` abort itself at `--failpoint` (it says so on stderr
    /// just before it aborts)?
    fn failpoint_abort(&self, iter: u32) -> bool {
        let Some(fp) = &self.args.failpoint else {
            return false;
        };
        let name = fp.split(':').next().unwrap_or(fp);
        let err_path = self.layout.logs().join(format!("run-{iter}.stderr"));
        fs::read_to_string(err_path)
            .is_ok_and(|s| s.contains(&crate::failpoint::message_prefix(name)))
    }

    /// Spawn the child, let it run, kill it, and read its log into `info`.
    fn run_child(
        &mut self,
        iter: u32,
        child_seed: u64,
        kill_in_open: bool,
        run_ms: u64,
        info: &mut IterInfo,
    ) -> Result<(), String> {
        let logs = self.layout.logs();
        let log_path = logs.join(format!("run-{iter}.ops"));
        let err_path = logs.join(format!("run-{iter}.stderr"));
        let stdout =
            fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let stderr =
            fs::File::create(&err_path).map_err(|e| format!("{}: {e}", err_path.display()))?;
        // Nobody should hold the lock now (the reopen above released it),
        // but a child must never fail to open over a stale RADOS lock.
        self.break_stale_lock()?;
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let mut cmd = Command::new(exe);
        cmd.arg("--child")
            .arg("--dir")
            .arg(&self.layout.dir)
            .arg("--run")
            .arg(iter.to_string())
            .arg("--child-seed")
            .arg(child_seed.to_string())
            .arg("--backend-delay")
            .arg(self.args.backend_delay.to_string());
        if self.args.power_loss {
            cmd.arg("--power-log").arg(self.layout.power_rec(iter));
        }
        if self.args.lane {
            cmd.arg("--lane");
        }
        if let StoreSpec::Rados { pool, namespace } = &self.layout.store {
            cmd.arg("--backend")
                .arg("rados")
                .arg("--rados-pool")
                .arg(pool)
                .arg("--rados-namespace")
                .arg(namespace);
        }
        if let Some(c) = &self.args.config {
            cmd.arg("--config").arg(c);
        }
        if let Some(fp) = &self.args.failpoint {
            cmd.env(crate::failpoint::ENV, fp);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("spawn child: {e}"))?;
        let t0 = Instant::now();
        let mut exited = None;
        if kill_in_open {
            info.killed_in_open = true;
            std::thread::sleep(Duration::from_millis(run_ms / 4));
        } else {
            // Wait for `R`, then let it run.
            loop {
                if fs::read(&log_path).is_ok_and(|b| b.starts_with(b"R\n")) {
                    self.totals.opens += 1;
                    self.totals.open_time += t0.elapsed();
                    break;
                }
                if let Ok(Some(st)) = child.try_wait() {
                    exited = Some(st);
                    break;
                }
                if t0.elapsed() > OPEN_TIMEOUT {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            if exited.is_none() {
                std::thread::sleep(Duration::from_millis(run_ms));
            }
        }
        if exited.is_none() {
            exited = child.try_wait().ok().flatten();
        }
        if let Some(st) = exited {
            info.child_status = format!("{st}");
        } else {
            // SIGKILL: no destructors, no flush, nothing but what the
            // kernel already has.
            child.kill().map_err(|e| format!("kill child: {e}"))?;
        }
        let _ = child.wait();
        info.ran_ms = t0.elapsed().as_millis() as u64;
        let text = fs::read(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        info.log = RunLog::parse(&String::from_utf8_lossy(&text))?;
        if info.killed_in_open && info.log.ready {
            // It opened faster than we killed it: an ordinary kill.
            info.killed_in_open = false;
        }
        if !info.killed_in_open && !info.log.ready && info.child_status.is_empty() {
            let stderr = fs::read_to_string(&err_path).unwrap_or_default();
            return Err(format!(
                "the child did not open the volume within {OPEN_TIMEOUT:?}; stderr: {stderr}"
            ));
        }
        Ok(())
    }

    /// Destroy the journal as `--wipe-mode` says.
    fn wipe_journal(&self) -> Result<(), String> {
        let path = self.layout.journal();
        let ctx = |e: std::io::Error| format!("wipe journal {}: {e}", path.display());
        match self.args.wipe_mode {
            WipeMode::Delete => match fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(ctx(e)),
            },
            WipeMode::Zero | WipeMode::Records => {
                let Ok(meta) = fs::metadata(&path) else {
                    return Ok(());
                };
                let skip = if self.args.wipe_mode == WipeMode::Records {
                    crate::format::journal::SLOTS * crate::format::journal::BLOCK
                } else {
                    0
                };
                use std::os::unix::fs::FileExt;
                let f = fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(ctx)?;
                let zeros = vec![0u8; 1 << 20];
                let mut off = skip;
                while off < meta.len() {
                    let n = (meta.len() - off).min(zeros.len() as u64) as usize;
                    f.write_all_at(&zeros[..n], off).map_err(ctx)?;
                    off += n as u64;
                }
                f.sync_all().map_err(ctx)
            }
        }
    }

    /// Delete the `n` highest-sequence objects of the image; returns their
    /// names with their kind.
    fn lose_objects(&self, n: u32) -> Result<Vec<String>, String> {
        let store = self.store()?;
        let names = store
            .list(&format!("{IMAGE}."))
            .map_err(|e| format!("lose objects: {e}"))?;
        let mut objs: Vec<(u64, String)> = names
            .into_iter()
            .filter_map(|name| parse_object_name(IMAGE, &name).map(|seq| (seq.0, name)))
            .collect();
        objs.sort();
        let sb = crate::volume::image::read_superblock(&*store, IMAGE)
            .map_err(|e| format!("lose objects: read superblock: {e}"))?;
        if sb.incompat & crate::format::superblock::INCOMPAT_GC != 0 {
            // Once GC has run (it does by default, not only with --gc),
            // objects below the oldest listed checkpoint may be gone, so a
            // recovery that loses every listed checkpoint cannot roll
            // forward from object 1 and rightly refuses the image. Losing
            // the oldest listed checkpoint is losing puts acknowledged long
            // ago, not puts in flight: lose only objects above its pieces
            // (the newest checkpoint, and what follows, may still go).
            let floor = sb
                .checkpoints
                .iter()
                .map(|c| c.seq.0 + u64::from(c.pieces).saturating_sub(1))
                .min()
                .unwrap_or(0);
            objs.retain(|(seq, _)| *seq > floor);
        }
        let mut lost = Vec::new();
        for (_, name) in objs.iter().rev().take(n as usize) {
            let kind = object_kind(&*store, name);
            store
                .delete(name)
                .map_err(|e| format!("lose {name}: {e}"))?;
            lost.push(format!("{name}({kind})"));
        }
        Ok(lost)
    }

    /// Read the whole image, decode every sector and check it.
    fn verify_image(
        &self,
        vol: &Volume,
        iter: u32,
        log: &RunLog,
        promises: Promises,
    ) -> Result<(verify::Verified, Vec<Stamp>), String> {
        if vol.size_bytes() != self.size {
            return Err(format!(
                "volume size {} after reopen, created as {}",
                vol.size_bytes(),
                self.size
            ));
        }
        let mut found = Vec::with_capacity(self.expected.len());
        let mut buf = vec![0u8; READ_CHUNK];
        let mut off = 0u64;
        while off < self.size {
            let n = (self.size - off).min(READ_CHUNK as u64) as usize;
            vol.read(off, &mut buf[..n])
                .map_err(|e| format!("read at byte {off} failed: {e:?}"))?;
            for (i, sector) in buf[..n].chunks_exact(SECTOR as usize).enumerate() {
                let lba = off / SECTOR + i as u64;
                let stamp = parse_sector(sector, lba).map_err(|why| {
                    let exp = self.expected.get(lba as usize).copied().unwrap_or_default();
                    format!(
                        "sector {lba} torn/garbled: {why}\n  expected before this run: {exp}; \
                         K (flushed through) = {}, max acked = {}",
                        log.flushed_through,
                        log.max_acked()
                    )
                })?;
                found.push(stamp);
            }
            off += n as u64;
        }
        let v = verify::check(&self.expected, &self.history, &found, iter, log, promises)?;
        Ok((v, found))
    }
}

/// "data", "checkpoint" or "?" from an object's magic.
fn object_kind(store: &dyn ObjectStore, name: &str) -> &'static str {
    match store.get(name, 0, 8).as_deref() {
        Ok(b"LSVDOBJ1") => "data",
        Ok(b"LSVDCKP1") => "checkpoint",
        Ok(b"LSVDGCO1") => "gc",
        _ => "?",
    }
}

/// Bytes of the image's objects (superblock excluded), as `info` counts them.
fn stored_bytes(store: &dyn ObjectStore) -> Result<u64, String> {
    let mut total = 0;
    let names = store
        .list(&format!("{IMAGE}."))
        .map_err(|e| format!("list objects: {e}"))?;
    for name in names {
        if parse_object_name(IMAGE, &name).is_some() {
            total += store
                .stat(&name)
                .map_err(|e| format!("stat {name}: {e}"))?
                .unwrap_or(0);
        }
    }
    Ok(total)
}

/// Delete every object of `store` (a RADOS namespace of the run's own).
fn delete_all(store: &dyn ObjectStore) -> Result<(), String> {
    for name in store.list("").map_err(|e| format!("{e}"))? {
        store.delete(&name).map_err(|e| format!("{e}"))?;
    }
    Ok(())
}
