//! `bench`: client IOPS, latency and backend efficiency, modelled on
//! `rbd bench`.
//!
//! The volume is opened once and `--io-threads` operations of `--io-size`
//! bytes are kept in flight until `--io-total` bytes are done: for pure
//! writes, like `rbd bench`, one thread submits asynchronous writes
//! ([`Volume::submit_write`]); reads and mixes use that many threads issuing
//! synchronous [`Volume::write`]/[`Volume::read`] calls. The backend counters are the difference of
//! [`Volume::stats`] before and after the run (before close, so the final
//! destage at close is not counted); closing is timed separately and is not
//! part of the IOPS.
//!
//! CPU per operation is the process-wide user + system time
//! (`getrusage(RUSAGE_SELF)`) over the same measured phase divided by the
//! operations done: it counts every thread of the process, the engine's
//! background threads (journal, destage, checkpoint, GC, cache fill) as well
//! as the bench's own submitters, and, like the backend counters, not the
//! work left for `close`.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use clap::{Args, ValueEnum};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::{open_volume, parse_size_arg, parse_spec, store_for};
use crate::config::Config;
use crate::volume::{Volume, VolumeStats};

/// Which operations to issue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IoType {
    /// Writes only.
    Write,
    /// Reads only.
    Read,
    /// A mix; `--rw-mix-read` percent are reads.
    Rw,
}

/// Where the operations land.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IoPattern {
    /// Each thread walks its own contiguous region of the image.
    Seq,
    /// Uniformly random `--io-size`-aligned offsets in the whole image.
    Rand,
}

/// Arguments of `bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Image as POOL/IMAGE (must exist).
    pub image: String,
    /// Operations: write, read or rw.
    #[arg(long, value_enum)]
    pub io_type: IoType,
    /// Bytes per operation (a multiple of 512).
    #[arg(long, default_value = "4K", value_parser = parse_size_arg)]
    pub io_size: u64,
    /// seq or rand.
    #[arg(long, value_enum, default_value = "seq")]
    pub io_pattern: IoPattern,
    /// Operations in flight (the queue depth): asynchronous writes from one
    /// thread for `--io-type write`, else this many synchronous threads.
    #[arg(long, default_value_t = 16)]
    pub io_threads: u32,
    /// Total bytes to transfer.
    #[arg(long, default_value = "1G", value_parser = parse_size_arg)]
    pub io_total: u64,
    /// With `--io-type rw`: percentage of operations that are reads.
    #[arg(long, default_value_t = 70, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub rw_mix_read: u8,
    /// Seed for random offsets and the read/write mix (default: random).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Every write is FUA: durable when acknowledged, as an O_DSYNC or
    /// O_SYNC write reaches a disk (with `--io-threads 1`, fio's
    /// `--sync=1 --iodepth=1`).
    #[arg(long)]
    pub fua: bool,
    /// Print the summary as one JSON object (no per-second lines).
    #[arg(long)]
    pub json: bool,
}

/// The summary `bench --json` prints.
#[derive(Debug, Serialize)]
pub struct BenchReport {
    /// Image benchmarked.
    pub image: String,
    /// write, read or rw.
    pub io_type: IoType,
    /// seq or rand.
    pub io_pattern: IoPattern,
    /// Bytes per operation.
    pub io_size: u64,
    /// Threads.
    pub io_threads: u32,
    /// Every write was FUA.
    pub fua: bool,
    /// Bytes requested.
    pub io_total: u64,
    /// Read percentage (rw only; 100 or 0 otherwise).
    pub rw_mix_read: u8,
    /// Seed used.
    pub seed: u64,
    /// Seconds from the first operation to the last completion.
    pub elapsed_secs: f64,
    /// Operations completed.
    pub ops: u64,
    /// Of which reads.
    pub read_ops: u64,
    /// Of which writes.
    pub write_ops: u64,
    /// Bytes transferred.
    pub bytes: u64,
    /// IOPS.
    pub ops_per_sec: f64,
    /// Throughput, bytes per second.
    pub bytes_per_sec: f64,
    /// Throughput, MB (10^6 bytes) per second.
    pub mb_per_sec: f64,
    /// Mean latency, microseconds.
    pub lat_avg_us: f64,
    /// Median latency, microseconds.
    pub lat_p50_us: u32,
    /// 99th percentile latency, microseconds.
    pub lat_p99_us: u32,
    /// Maximum latency, microseconds.
    pub lat_max_us: u32,
    /// User CPU seconds of the whole process during the run (all threads,
    /// background ones included; `close` excluded).
    pub cpu_user_secs: f64,
    /// System CPU seconds of the whole process during the run.
    pub cpu_sys_secs: f64,
    /// User + system CPU microseconds per operation (0 without operations).
    pub cpu_us_per_op: f64,
    /// Of which user.
    pub cpu_user_us_per_op: f64,
    /// Of which system.
    pub cpu_sys_us_per_op: f64,
    /// CPUs kept busy on average: CPU seconds / elapsed seconds.
    pub cpu_busy_cores: f64,
    /// Data objects put during the run.
    pub data_objects: u64,
    /// Bytes of those data objects.
    pub data_object_bytes: u64,
    /// Checkpoint pieces put during the run.
    pub checkpoint_pieces: u64,
    /// Bytes of those pieces.
    pub checkpoint_bytes: u64,
    /// GC objects put during the run.
    pub gc_objects: u64,
    /// Bytes of those GC objects.
    pub gc_bytes: u64,
    /// Objects GC deleted during the run.
    pub gc_deleted: u64,
    /// Backend puts: data objects + GC objects + checkpoint pieces.
    pub backend_puts: u64,
    /// Bytes of backend puts.
    pub backend_put_bytes: u64,
    /// Backend ranged gets for client reads.
    pub backend_reads: u64,
    /// Journal records written (group commits).
    pub journal_records: u64,
    /// Journal fdatasyncs.
    pub journal_syncs: u64,
    /// Journal records written with `RWF_DSYNC` (FUA writes that needed
    /// no fdatasync).
    pub journal_dsync_writes: u64,
    /// Read-cache hits (per 64 KiB chunk touched) during the run.
    pub cache_hits: u64,
    /// Read-cache misses (chunks fetched from the backend).
    pub cache_misses: u64,
    /// Read-cache evictions.
    pub cache_evictions: u64,
    /// Chunks written into the read cache.
    pub cache_inserts: u64,
    /// Corrupt read-cache blocks found (dropped and refetched).
    pub cache_corrupt: u64,
    /// Backend puts per 10,000 client writes (0 without writes).
    pub backend_puts_per_10k_writes: f64,
    /// Backend bytes put per client byte written (0 without writes).
    pub backend_bytes_per_client_byte: f64,
    /// Seconds `close` took (destage, checkpoint); not part of the rates.
    pub close_secs: f64,
}

/// What one worker thread did.
#[derive(Default)]
struct WorkerResult {
    /// Latency of every operation, microseconds.
    lat_us: Vec<u32>,
    /// Reads done.
    reads: u64,
    /// Writes done.
    writes: u64,
}

/// The fixed parameters every worker shares.
struct Plan<'a> {
    vol: &'a Volume,
    io_type: IoType,
    io_pattern: IoPattern,
    io_size: u64,
    /// Slots of `io_size` in the image.
    slots: u64,
    /// Operations in the whole run.
    total_ops: u64,
    /// Next operation number to claim.
    issued: AtomicU64,
    /// Operations completed (for the per-second lines).
    done: AtomicU64,
    /// Set on the first error.
    stop: AtomicBool,
    rw_mix_read: u8,
    /// Every write is FUA.
    fua: bool,
}

/// `bench POOL/IMAGE ...`.
pub fn bench(config: &Config, args: &BenchArgs) -> anyhow::Result<()> {
    let spec = parse_spec(&args.image)?;
    if args.io_size == 0 || !args.io_size.is_multiple_of(512) {
        fail!(
            InvalidInput,
            "--io-size {} must be a positive multiple of 512",
            args.io_size
        );
    }
    if args.io_threads == 0 {
        fail!(InvalidInput, "--io-threads must be at least 1");
    }
    if args.io_total < args.io_size {
        fail!(
            InvalidInput,
            "--io-total {} is smaller than --io-size {}",
            args.io_total,
            args.io_size
        );
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    let rw_mix_read = match args.io_type {
        IoType::Read => 100,
        IoType::Write => 0,
        IoType::Rw => args.rw_mix_read,
    };

    let store = store_for(config, &spec.pool, false)?;
    let vol = open_volume(config, store, &spec)?;
    let size = vol.size_bytes();
    if args.io_size > size {
        // Close before bailing so the image is left clean.
        let closed = vol.close();
        closed.with_context(|| format!("cannot close image {spec}"))?;
        fail!(
            InvalidInput,
            "--io-size {} is larger than image {spec} ({size} bytes)",
            args.io_size
        );
    }

    let plan = Plan {
        vol: &vol,
        io_type: args.io_type,
        io_pattern: args.io_pattern,
        io_size: args.io_size,
        slots: size / args.io_size,
        total_ops: args.io_total / args.io_size,
        issued: AtomicU64::new(0),
        done: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        rw_mix_read,
        fua: args.fua,
    };
    let before = vol.stats();
    let cpu_before = CpuTimes::now();
    let run = run_workers(&plan, args.io_threads, seed, !args.json);
    let cpu_after = CpuTimes::now();
    let after = vol.stats();

    let close_start = Instant::now();
    let closed = vol
        .close()
        .with_context(|| format!("cannot close image {spec}"));
    let close_secs = close_start.elapsed().as_secs_f64();
    let (elapsed, results) = run?;
    closed?;
    let cpu = cpu_after?.since(cpu_before?);

    let report = summarize(
        args,
        &spec.to_string(),
        seed,
        rw_mix_read,
        elapsed,
        results,
        &stats_delta(&before, &after),
        cpu,
        close_secs,
    );
    let text = if args.json {
        serde_json::to_string(&report).context("cannot encode the bench report as JSON")?
    } else {
        format_report(&report)
    };
    super::print_stdout(&text)
}

/// Start the workers (and, if `progress`, a per-second reporter) and wait.
/// Returns the elapsed time and each worker's result.
fn run_workers(
    plan: &Plan<'_>,
    threads: u32,
    seed: u64,
    progress: bool,
) -> anyhow::Result<(Duration, Vec<WorkerResult>)> {
    let start = Instant::now();
    let (ticker_tx, ticker_rx) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        if progress {
            let done = &plan.done;
            let io_size = plan.io_size;
            std::thread::Builder::new()
                .name("bench-progress".into())
                .spawn_scoped(s, move || print_progress(done, io_size, start, &ticker_rx))
                .context("cannot start the progress thread")?;
        }
        let mut handles = Vec::new();
        // Pure writes: like `rbd bench`, one submitter keeps `threads`
        // operations in flight through the asynchronous API.
        let submitters = if plan.io_type == IoType::Write {
            1
        } else {
            threads
        };
        for t in 0..submitters {
            let h = std::thread::Builder::new()
                .name(format!("bench-{t}"))
                .spawn_scoped(s, move || {
                    let seed = seed.wrapping_add(u64::from(t));
                    let r = if submitters == 1 && plan.io_type == IoType::Write {
                        async_writer(plan, threads, seed)
                    } else {
                        worker(plan, t, threads, seed)
                    };
                    if r.is_err() {
                        plan.stop.store(true, Ordering::Relaxed);
                    }
                    r
                });
            match h {
                Ok(h) => handles.push(h),
                Err(e) => {
                    plan.stop.store(true, Ordering::Relaxed);
                    return Err(anyhow::Error::new(e).context("cannot start a bench thread"));
                }
            }
        }
        let mut results = Vec::new();
        let mut first_err = None;
        for h in handles {
            match h.join() {
                Ok(Ok(r)) => results.push(r),
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert(anyhow!("a bench thread panicked"));
                }
            }
        }
        let elapsed = start.elapsed();
        // Disconnecting stops the progress thread.
        drop(ticker_tx);
        match first_err {
            Some(e) => Err(e),
            None => Ok((elapsed, results)),
        }
    })
}

/// Print `SEC OPS OPS/SEC BYTES/SEC` once a second until `stop` disconnects.
fn print_progress(done: &AtomicU64, io_size: u64, start: Instant, stop: &mpsc::Receiver<()>) {
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "{:>5} {:>10} {:>12} {:>14}",
        "SEC", "OPS", "OPS/SEC", "BYTES/SEC"
    );
    let mut last_ops = 0u64;
    let mut last_t = start;
    let mut sec = 0u64;
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(Duration::from_secs(1)) {
        sec += 1;
        let now = Instant::now();
        let ops = done.load(Ordering::Relaxed);
        let dt = now.duration_since(last_t).as_secs_f64().max(1e-9);
        let rate = (ops - last_ops) as f64 / dt;
        let _ = writeln!(
            out,
            "{sec:>5} {ops:>10} {rate:>12.2} {:>14}",
            super::human_bytes((rate * io_size as f64) as u64) + "/s"
        );
        last_ops = ops;
        last_t = now;
    }
}

/// Pick the next offset for `plan` (seq: contiguous from `region_start`).
fn next_offset(plan: &Plan<'_>, rng: &mut SmallRng, region: (u64, u64), next_seq: &mut u64) -> u64 {
    let slot = match plan.io_pattern {
        IoPattern::Seq => {
            let s = (region.0 + *next_seq % region.1) % plan.slots;
            *next_seq += 1;
            s
        }
        IoPattern::Rand => rng.gen_range(0..plan.slots),
    };
    slot * plan.io_size
}

/// The write-only workload: one thread keeps `depth` writes in flight with
/// `Volume::submit_write`, recording each write's latency at completion.
fn async_writer(plan: &Plan<'_>, depth: u32, seed: u64) -> anyhow::Result<WorkerResult> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let io_size = plan.io_size;
    let mut buf = vec![0u8; io_size as usize];
    rng.fill(&mut buf[..]);
    let mut next_seq = 0u64;
    let (tx, rx) = crossbeam_channel::unbounded::<(Instant, crate::Result<()>)>();
    let mut res = WorkerResult {
        lat_us: Vec::with_capacity(plan.total_ops as usize),
        ..WorkerResult::default()
    };
    let mut inflight = 0u32;
    let mut first_err = None;
    loop {
        while first_err.is_none()
            && inflight < depth
            && !plan.stop.load(Ordering::Relaxed)
            && plan.issued.fetch_add(1, Ordering::Relaxed) < plan.total_ops
        {
            let off = next_offset(plan, &mut rng, (0, plan.slots), &mut next_seq);
            buf[..8].copy_from_slice(&off.to_le_bytes());
            let tx = tx.clone();
            let t0 = Instant::now();
            // submit_write copies the data before it returns.
            plan.vol
                .submit_write(
                    off,
                    &buf,
                    plan.fua,
                    Box::new(move |r| {
                        let _ = tx.send((t0, r));
                    }),
                )
                .with_context(|| format!("write of {io_size} bytes at offset {off} failed"))?;
            inflight += 1;
        }
        if inflight == 0 {
            break;
        }
        let Ok(first) = rx.recv() else { break };
        for (t0, r) in std::iter::once(first).chain(rx.try_iter()) {
            inflight -= 1;
            match r {
                Ok(()) => {
                    let us = t0.elapsed().as_micros();
                    res.lat_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                    res.writes += 1;
                    plan.done.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    plan.stop.store(true, Ordering::Relaxed);
                    first_err.get_or_insert(e);
                }
            }
        }
    }
    match first_err {
        Some(e) => Err(anyhow::Error::new(e).context("a write failed")),
        None => Ok(res),
    }
}

/// One worker: claim operation numbers until the run is done.
fn worker(plan: &Plan<'_>, t: u32, threads: u32, seed: u64) -> anyhow::Result<WorkerResult> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let io_size = plan.io_size;
    let mut buf = vec![0u8; io_size as usize];
    // Writes carry non-zero data so the engine cannot treat them as zeroes.
    rng.fill(&mut buf[..]);
    // seq: this thread's region of the image, in slots.
    let region = (plan.slots / u64::from(threads)).max(1);
    let region_start = (u64::from(t) * region) % plan.slots;
    let mut next_seq = 0u64;
    let mut res = WorkerResult {
        lat_us: Vec::with_capacity((plan.total_ops / u64::from(threads) + 1) as usize),
        ..WorkerResult::default()
    };
    while !plan.stop.load(Ordering::Relaxed) {
        if plan.issued.fetch_add(1, Ordering::Relaxed) >= plan.total_ops {
            break;
        }
        let slot = match plan.io_pattern {
            IoPattern::Seq => {
                let s = (region_start + next_seq % region) % plan.slots;
                next_seq += 1;
                s
            }
            IoPattern::Rand => rng.gen_range(0..plan.slots),
        };
        let off = slot * io_size;
        let is_read = match plan.io_type {
            IoType::Read => true,
            IoType::Write => false,
            IoType::Rw => rng.gen_range(0..100u8) < plan.rw_mix_read,
        };
        let t0 = Instant::now();
        if is_read {
            plan.vol
                .read(off, &mut buf)
                .with_context(|| format!("read of {io_size} bytes at offset {off} failed"))?;
            res.reads += 1;
        } else {
            // Vary the data a little so no two writes are identical.
            buf[..8].copy_from_slice(&off.to_le_bytes());
            let r = if plan.fua {
                plan.vol.write_fua(off, &buf)
            } else {
                plan.vol.write(off, &buf)
            };
            r.with_context(|| format!("write of {io_size} bytes at offset {off} failed"))?;
            res.writes += 1;
        }
        let us = t0.elapsed().as_micros();
        res.lat_us.push(u32::try_from(us).unwrap_or(u32::MAX));
        plan.done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(res)
}

/// CPU time used by the whole process (every thread), in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct CpuTimes {
    /// User time.
    user_us: u64,
    /// System time.
    sys_us: u64,
}

impl CpuTimes {
    /// The process's CPU time so far (`getrusage(RUSAGE_SELF)`).
    fn now() -> anyhow::Result<Self> {
        // SAFETY: rusage is plain old data; all-zero is a valid value.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `ru` is a valid, writable rusage that outlives the call.
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
            return Err(std::io::Error::last_os_error()).context("getrusage failed");
        }
        let us = |tv: libc::timeval| {
            let secs = u64::try_from(tv.tv_sec).unwrap_or(0);
            let usecs = u64::try_from(tv.tv_usec).unwrap_or(0);
            secs.saturating_mul(1_000_000).saturating_add(usecs)
        };
        Ok(Self {
            user_us: us(ru.ru_utime),
            sys_us: us(ru.ru_stime),
        })
    }

    /// `self - earlier`, field by field.
    fn since(self, earlier: Self) -> Self {
        Self {
            user_us: self.user_us.saturating_sub(earlier.user_us),
            sys_us: self.sys_us.saturating_sub(earlier.sys_us),
        }
    }
}

/// CPU cost of a run: what `bench` reports about CPU.
#[derive(Clone, Copy, Debug, PartialEq)]
struct CpuCost {
    user_secs: f64,
    sys_secs: f64,
    /// User + system microseconds per operation.
    us_per_op: f64,
    user_us_per_op: f64,
    sys_us_per_op: f64,
    /// CPU seconds per elapsed second.
    busy_cores: f64,
}

/// CPU cost of `ops` operations that used `used` CPU time in `elapsed`
/// (per-operation figures are 0 without operations).
fn cpu_cost(used: CpuTimes, ops: u64, elapsed: Duration) -> CpuCost {
    let per_op = |us: u64| {
        if ops == 0 {
            0.0
        } else {
            us as f64 / ops as f64
        }
    };
    let total = used.user_us + used.sys_us;
    CpuCost {
        user_secs: used.user_us as f64 / 1e6,
        sys_secs: used.sys_us as f64 / 1e6,
        us_per_op: per_op(total),
        user_us_per_op: per_op(used.user_us),
        sys_us_per_op: per_op(used.sys_us),
        busy_cores: total as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9),
    }
}

/// `after - before`, counter by counter (the gauges are taken from `after`).
fn stats_delta(before: &VolumeStats, after: &VolumeStats) -> VolumeStats {
    VolumeStats {
        writes: after.writes.saturating_sub(before.writes),
        write_bytes: after.write_bytes.saturating_sub(before.write_bytes),
        journal_records: after.journal_records.saturating_sub(before.journal_records),
        journal_syncs: after.journal_syncs.saturating_sub(before.journal_syncs),
        journal_dsync_writes: after
            .journal_dsync_writes
            .saturating_sub(before.journal_dsync_writes),
        data_objects: after.data_objects.saturating_sub(before.data_objects),
        data_object_bytes: after
            .data_object_bytes
            .saturating_sub(before.data_object_bytes),
        checkpoint_pieces: after
            .checkpoint_pieces
            .saturating_sub(before.checkpoint_pieces),
        checkpoint_bytes: after
            .checkpoint_bytes
            .saturating_sub(before.checkpoint_bytes),
        checkpoints_full: after
            .checkpoints_full
            .saturating_sub(before.checkpoints_full),
        checkpoints_delta: after
            .checkpoints_delta
            .saturating_sub(before.checkpoints_delta),
        backend_reads: after.backend_reads.saturating_sub(before.backend_reads),
        map_extents: after.map_extents,
        replayed: after.replayed,
        journal_used_bytes: after.journal_used_bytes,
        cache_hits: after.cache_hits.saturating_sub(before.cache_hits),
        cache_misses: after.cache_misses.saturating_sub(before.cache_misses),
        cache_evictions: after.cache_evictions.saturating_sub(before.cache_evictions),
        cache_inserts: after.cache_inserts.saturating_sub(before.cache_inserts),
        cache_corrupt: after.cache_corrupt.saturating_sub(before.cache_corrupt),
        chunks_verified: after.chunks_verified.saturating_sub(before.chunks_verified),
        corrupt_chunks: after.corrupt_chunks.saturating_sub(before.corrupt_chunks),
        gc_objects: after.gc_objects.saturating_sub(before.gc_objects),
        gc_bytes: after.gc_bytes.saturating_sub(before.gc_bytes),
        gc_deleted: after.gc_deleted.saturating_sub(before.gc_deleted),
        gc_freed_bytes: after.gc_freed_bytes.saturating_sub(before.gc_freed_bytes),
    }
}

/// The value at quantile `q` (0..=1) of sorted `v` (nearest rank), 0 if empty.
fn percentile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Merge the workers' results and compute the rates and ratios.
#[allow(clippy::too_many_arguments)]
fn summarize(
    args: &BenchArgs,
    image: &str,
    seed: u64,
    rw_mix_read: u8,
    elapsed: Duration,
    results: Vec<WorkerResult>,
    stats: &VolumeStats,
    cpu_used: CpuTimes,
    close_secs: f64,
) -> BenchReport {
    let mut lat: Vec<u32> = Vec::with_capacity(results.iter().map(|r| r.lat_us.len()).sum());
    let (mut read_ops, mut write_ops) = (0, 0);
    for r in results {
        lat.extend_from_slice(&r.lat_us);
        read_ops += r.reads;
        write_ops += r.writes;
    }
    lat.sort_unstable();
    let ops = read_ops + write_ops;
    let bytes = ops * args.io_size;
    let secs = elapsed.as_secs_f64().max(1e-9);
    let lat_avg_us = if lat.is_empty() {
        0.0
    } else {
        lat.iter().map(|&l| f64::from(l)).sum::<f64>() / lat.len() as f64
    };
    let backend_puts = stats.data_objects + stats.gc_objects + stats.checkpoint_pieces;
    let backend_put_bytes = stats.data_object_bytes + stats.gc_bytes + stats.checkpoint_bytes;
    let client_write_bytes = write_ops * args.io_size;
    let ratio = |num: f64, den: u64| if den == 0 { 0.0 } else { num / den as f64 };
    let cpu = cpu_cost(cpu_used, ops, elapsed);
    BenchReport {
        image: image.to_owned(),
        io_type: args.io_type,
        io_pattern: args.io_pattern,
        io_size: args.io_size,
        io_threads: args.io_threads,
        fua: args.fua,
        io_total: args.io_total,
        rw_mix_read,
        seed,
        elapsed_secs: secs,
        ops,
        read_ops,
        write_ops,
        bytes,
        ops_per_sec: ops as f64 / secs,
        bytes_per_sec: bytes as f64 / secs,
        mb_per_sec: bytes as f64 / secs / 1e6,
        lat_avg_us,
        lat_p50_us: percentile(&lat, 0.50),
        lat_p99_us: percentile(&lat, 0.99),
        lat_max_us: lat.last().copied().unwrap_or(0),
        cpu_user_secs: cpu.user_secs,
        cpu_sys_secs: cpu.sys_secs,
        cpu_us_per_op: cpu.us_per_op,
        cpu_user_us_per_op: cpu.user_us_per_op,
        cpu_sys_us_per_op: cpu.sys_us_per_op,
        cpu_busy_cores: cpu.busy_cores,
        data_objects: stats.data_objects,
        data_object_bytes: stats.data_object_bytes,
        checkpoint_pieces: stats.checkpoint_pieces,
        checkpoint_bytes: stats.checkpoint_bytes,
        gc_objects: stats.gc_objects,
        gc_bytes: stats.gc_bytes,
        gc_deleted: stats.gc_deleted,
        backend_puts,
        backend_put_bytes,
        backend_reads: stats.backend_reads,
        journal_records: stats.journal_records,
        journal_syncs: stats.journal_syncs,
        journal_dsync_writes: stats.journal_dsync_writes,
        cache_hits: stats.cache_hits,
        cache_misses: stats.cache_misses,
        cache_evictions: stats.cache_evictions,
        cache_inserts: stats.cache_inserts,
        cache_corrupt: stats.cache_corrupt,
        backend_puts_per_10k_writes: ratio(backend_puts as f64 * 10_000.0, write_ops),
        backend_bytes_per_client_byte: ratio(backend_put_bytes as f64, client_write_bytes),
        close_secs,
    }
}

/// The text summary, `rbd bench` style.
fn format_report(r: &BenchReport) -> String {
    format!(
        "elapsed: {:.2} s  ops: {} (reads {}, writes {})  ops/sec: {:.2}  bytes/sec: {:.2} MB/s\n\
         latency: avg {:.0} us  p50 {} us  p99 {} us  max {} us\n\
         cpu: {:.1} us/op (user {:.1}, sys {:.1}), {:.2} cores busy \
         (whole process: background threads included, close excluded)\n\
         backend: puts {} ({} data objects + {} GC objects + {} checkpoint pieces), {} put; reads {}\n\
         journal: records {}  syncs {}  dsync writes {}\n\
         read cache: hits {}  misses {}  evictions {}  inserts {}  corrupt {}\n\
         efficiency: {:.2} backend puts per 10k writes, {:.3} backend bytes per client byte\n\
         close: {:.2} s (not included above)",
        r.elapsed_secs,
        r.ops,
        r.read_ops,
        r.write_ops,
        r.ops_per_sec,
        r.mb_per_sec,
        r.lat_avg_us,
        r.lat_p50_us,
        r.lat_p99_us,
        r.lat_max_us,
        r.cpu_us_per_op,
        r.cpu_user_us_per_op,
        r.cpu_sys_us_per_op,
        r.cpu_busy_cores,
        r.backend_puts,
        r.data_objects,
        r.gc_objects,
        r.checkpoint_pieces,
        super::human_bytes(r.backend_put_bytes),
        r.backend_reads,
        r.journal_records,
        r.journal_syncs,
        r.journal_dsync_writes,
        r.cache_hits,
        r.cache_misses,
        r.cache_evictions,
        r.cache_inserts,
        r.cache_corrupt,
        r.backend_puts_per_10k_writes,
        r.backend_bytes_per_client_byte,
        r.close_secs,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        assert_eq!(percentile(&[], 0.5), 0);
        assert_eq!(percentile(&[7], 0.99), 7);
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.50), 50);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&v, 1.0), 100);
    }

    #[test]
    fn summary_ratios() {
        let args = BenchArgs {
            image: "p/i".into(),
            io_type: IoType::Write,
            io_size: 4096,
            io_pattern: IoPattern::Rand,
            io_threads: 2,
            io_total: 8 * 4096,
            rw_mix_read: 70,
            seed: Some(1),
            fua: false,
            json: true,
        };
        let results = vec![
            WorkerResult {
                lat_us: vec![10, 30, 20, 40],
                reads: 0,
                writes: 4,
            },
            WorkerResult {
                lat_us: vec![50, 60, 70, 80],
                reads: 0,
                writes: 4,
            },
        ];
        let stats = VolumeStats {
            data_objects: 1,
            data_object_bytes: 8 * 4096,
            checkpoint_pieces: 1,
            checkpoint_bytes: 4096,
            ..VolumeStats::default()
        };
        let r = summarize(
            &args,
            "p/i",
            1,
            0,
            Duration::from_secs(2),
            results,
            &stats,
            CpuTimes {
                user_us: 3_000_000,
                sys_us: 1_000_000,
            },
            0.5,
        );
        assert_eq!(r.ops, 8);
        assert_eq!(r.ops_per_sec, 4.0);
        assert_eq!(r.lat_p50_us, 40);
        assert_eq!(r.lat_max_us, 80);
        assert_eq!(r.backend_puts, 2);
        assert_eq!(r.backend_puts_per_10k_writes, 2500.0);
        assert!((r.backend_bytes_per_client_byte - 9.0 / 8.0).abs() < 1e-9);
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["io_type"], "write");
        assert_eq!(v["close_secs"], 0.5);
        assert_eq!(r.cpu_us_per_op, 500_000.0);
        assert_eq!(v["cpu_us_per_op"], 500_000.0);
        assert_eq!(v["cpu_busy_cores"], 2.0);
        assert!(format_report(&r).contains("cpu: 500000.0 us/op (user 375000.0, sys 125000.0)"));
    }

    #[test]
    fn cpu_cost_divides_the_rusage_delta_by_the_ops() {
        let before = CpuTimes {
            user_us: 1_000_000,
            sys_us: 250_000,
        };
        let after = CpuTimes {
            user_us: 1_300_000,
            sys_us: 350_000,
        };
        let used = after.since(before);
        assert_eq!(
            used,
            CpuTimes {
                user_us: 300_000,
                sys_us: 100_000
            }
        );
        let c = cpu_cost(used, 20_000, Duration::from_millis(500));
        assert_eq!(c.user_secs, 0.3);
        assert_eq!(c.sys_secs, 0.1);
        assert_eq!(c.us_per_op, 20.0);
        assert_eq!(c.user_us_per_op, 15.0);
        assert_eq!(c.sys_us_per_op, 5.0);
        assert_eq!(c.busy_cores, 0.8);
        // No operations: no per-op cost, and no division by zero.
        let idle = cpu_cost(used, 0, Duration::ZERO);
        assert_eq!(idle.us_per_op, 0.0);
        assert_eq!(idle.user_us_per_op, 0.0);
        assert!(idle.busy_cores.is_finite());
        // A clock that went backwards (it cannot, but) gives 0, not a wrap.
        assert_eq!(before.since(after), CpuTimes::default());
    }

    #[test]
    fn cpu_times_now_is_monotonic() {
        let a = CpuTimes::now().unwrap();
        // Burn a little CPU so user time can advance.
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let b = CpuTimes::now().unwrap();
        assert!(b.user_us + b.sys_us >= a.user_us + a.sys_us);
    }
}
