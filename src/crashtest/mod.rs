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

pub mod child;
pub mod oplog;
pub mod stamp;
pub mod verify;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::backend::{DirStore, FaultAction, FaultOp, FaultRule, FaultStore, ObjectStore};
use crate::config::{Config, ConfigLayer};
use crate::units::SECTOR;
use crate::volume::{image::create_image, Volume, VolumeOptions};
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
    /// Overwrite everything after the 4 KiB journal superblock with zeros.
    Records,
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
    /// Delete the N highest-sequence backend objects after a kill.
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
    /// Extra configuration JSON, layered over the tester's own settings.
    #[arg(long)]
    pub config: Option<String>,
    /// Do not require that acknowledged but unflushed ops survive a kill
    /// (the contract promises only flushed and FUA writes).
    #[arg(long)]
    pub ack_loss_ok: bool,
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
}

/// Where things live in the work directory.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The work directory.
    pub dir: PathBuf,
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

    /// The tester's configuration: small objects, a small journal and short
    /// intervals so that short runs exercise destage, journal wrap and
    /// throttling, checkpoints and GC; `extra` (JSON) is layered on top.
    pub fn config(&self, extra: Option<&str>) -> Result<Config, String> {
        let base = serde_json::json!({
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
        let mut layers = vec![ConfigLayer::Inline(base.to_string())];
        if let Some(e) = extra {
            layers.push(ConfigLayer::Inline(e.to_owned()));
        }
        Config::load_from(&layers).map_err(|e| format!("config: {e:?}"))
    }

    /// Options to open the image; with `delay_ms > 0` every put first
    /// sleeps a random time up to that long.
    pub fn volume_options(
        &self,
        extra: Option<&str>,
        delay_ms: u64,
        seed: u64,
    ) -> Result<VolumeOptions, String> {
        let config = self.config(extra)?;
        let dir = DirStore::open(&self.pool_dir()).map_err(|e| format!("{e:?}"))?;
        let store: Arc<dyn ObjectStore> = if delay_ms > 0 {
            let f = FaultStore::new(Arc::new(dir), seed);
            f.add_rule(FaultRule::new(
                FaultOp::Put,
                FaultAction::DelayRandom {
                    max: Duration::from_millis(delay_ms),
                },
            ));
            Arc::new(f)
        } else {
            Arc::new(dir)
        };
        Ok(VolumeOptions {
            config,
            store,
            image: IMAGE.to_owned(),
            journal_path: self.journal(),
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
        return child::run(child::ChildArgs {
            layout: Layout { dir },
            config: args.config.clone(),
            run: args.run,
            seed: args.child_seed,
            backend_delay_ms: args.backend_delay,
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
}

/// The parent's state.
struct Tester {
    args: Args,
    layout: Layout,
    /// The work dir was made by us (delete it on success unless `--keep`).
    own_dir: bool,
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
}

impl Tester {
    fn new(args: Args) -> Result<Tester, String> {
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
        let layout = Layout { dir };
        for d in [layout.pool_dir(), layout.logs()] {
            fs::create_dir_all(&d).map_err(|e| format!("create {}: {e}", d.display()))?;
        }
        if let Some(p) = layout.journal().parent() {
            fs::create_dir_all(p).map_err(|e| format!("create {}: {e}", p.display()))?;
        }
        // Fail early on a bad --config rather than in every child.
        layout.config(args.config.as_deref())?;
        let store = DirStore::open(&layout.pool_dir()).map_err(|e| format!("{e:?}"))?;
        create_image(&store, IMAGE, size).map_err(|e| format!("create image: {e:?}"))?;
        Ok(Tester {
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

    fn run(&mut self) -> i32 {
        println!(
            "lsvd-crash-test: seed {} iterations {} size {} dir {}",
            self.seed,
            self.args.iterations,
            self.size,
            self.layout.dir.display()
        );
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
        println!("{} passed, {} failed", t.passed, t.failed);
        if t.failed > 0 {
            println!("work dir kept: {}", self.layout.dir.display());
            return 1;
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

    /// Remove the image (objects and journal) and the child logs, create a
    /// new empty image, and expect zeros again.
    fn fresh_image(&mut self) -> Result<(), String> {
        let store = DirStore::open(&self.layout.pool_dir()).map_err(|e| format!("{e:?}"))?;
        crate::volume::image::remove_image(&store, IMAGE, Some(&self.layout.journal()))
            .map_err(|e| format!("remove image: {e:?}"))?;
        create_image(&store, IMAGE, self.size).map_err(|e| format!("create image: {e:?}"))?;
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
        if a.wipe_journal {
            v.push("--wipe-journal".into());
        }
        if a.wipe_journal_every > 0 {
            v.push(format!("--wipe-journal-every {}", a.wipe_journal_every));
        }
        if a.wipe_journal || a.wipe_journal_every > 0 {
            v.push(format!("--wipe-mode {:?}", a.wipe_mode).to_lowercase());
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
        if let Some(c) = &a.config {
            v.push(format!("--config '{c}'"));
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

        self.run_child(iter, child_seed, kill_in_open, run_ms, info)?;

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
            acked: !wipe && lose == 0 && !self.args.ack_loss_ok,
        };
        let opts = self
            .layout
            .volume_options(self.args.config.as_deref(), 0, 0)?;
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
        // The verified image is the base the next iteration is checked against.
        self.expected = found;
        self.history.commit(v.keep, iter, &info.log);
        if let Some(e) = info.log.errors.first() {
            return Err(format!("the child reported an error: {e}"));
        }
        if !info.child_status.is_empty() {
            return Err(format!("the child exited by itself: {}", info.child_status));
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
        if let Some(c) = &self.args.config {
            cmd.arg("--config").arg(c);
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
                    4096
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
        let dir = self.layout.pool_dir();
        let rd = fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let prefix = format!("{IMAGE}.");
        let mut objs: Vec<(u64, PathBuf, String)> = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(hex) = name.strip_prefix(&prefix) else {
                continue;
            };
            if hex.len() != 16 {
                continue;
            }
            if let Ok(seq) = u64::from_str_radix(hex, 16) {
                objs.push((seq, entry.path(), name));
            }
        }
        objs.sort();
        let mut lost = Vec::new();
        for (_, path, name) in objs.iter().rev().take(n as usize) {
            let kind = object_kind(path);
            fs::remove_file(path).map_err(|e| format!("lose {}: {e}", path.display()))?;
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
fn object_kind(path: &Path) -> &'static str {
    let mut magic = [0u8; 8];
    let ok = fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok();
    match (ok, &magic) {
        (true, b"LSVDOBJ1") => "data",
        (true, b"LSVDCKP1") => "checkpoint",
        _ => "?",
    }
}
