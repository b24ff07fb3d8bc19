//! Live metrics: cheap counters on the I/O path, a Prometheus text
//! exposition of them and of the engine's counters, and the small HTTP
//! responder every server (`attach`, `recover`, `serve-nbd`) runs them on
//! (`metrics_listen`; see `README.md`, "Metrics").
//!
//! - [`IoMetrics`]: per request type (read, write, flush, discard,
//!   write-zeroes) the requests answered, their bytes, the failed ones and a
//!   latency histogram with fixed power-of-two buckets. Recording is a few
//!   relaxed atomic adds into one of [`SHARDS`] cache-line-aligned shards,
//!   picked once per thread (a ublk queue thread, an NBD reply writer), so
//!   threads do not contend on one line. A front end with metrics off holds
//!   no `IoMetrics` and does not even read the clock.
//! - [`text`]: the exposition writer (format version 0.0.4) and a parser
//!   (`iostat` reads scrapes with it).
//! - [`http`]: the `GET /metrics` responder and its client.
//! - [`Source`]: everything a server exposes, gathered at scrape time from
//!   [`IoMetrics`], [`Volume::stats`], [`Volume::backlog`] and the store's
//!   [`CountingStore`].
//!
//! Layer: above [`crate::volume`] (it reads a volume's counters), below the
//! front ends, which record into [`IoMetrics`].

pub mod http;
pub mod text;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::backend::{CountingStore, ObjectStore};
use crate::config::MetricsListen;
use crate::error::Result;
use crate::volume::Volume;
use http::{Endpoint, MetricsServer};
use text::Writer;

/// A request type, as a front end sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// READ.
    Read = 0,
    /// WRITE (with or without FUA).
    Write = 1,
    /// FLUSH.
    Flush = 2,
    /// DISCARD (NBD TRIM).
    Discard = 3,
    /// WRITE_ZEROES.
    WriteZeroes = 4,
}

impl Op {
    /// Every type, in label order.
    pub const ALL: [Op; 5] = [Op::Read, Op::Write, Op::Flush, Op::Discard, Op::WriteZeroes];

    /// The `op` label's value.
    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Discard => "discard",
            Op::WriteZeroes => "write_zeroes",
        }
    }
}

/// Latency buckets: bucket `i` counts requests that took at most `2^i`
/// microseconds (1 us up to 2^25 us, about 33.5 s); one more counts the
/// rest (`+Inf`).
pub const BUCKETS: usize = 26;
/// Shards of [`IoMetrics`].
pub const SHARDS: usize = 16;

/// The bucket of a request that took `d`: the smallest `i` with
/// `d <= 2^i us` (microseconds rounded up), or [`BUCKETS`] for longer ones.
pub fn bucket_of(d: Duration) -> usize {
    let us = d.as_nanos().div_ceil(1000).min(u128::from(u64::MAX)) as u64;
    if us <= 1 {
        return 0;
    }
    ((64 - (us - 1).leading_zeros()) as usize).min(BUCKETS)
}

/// The upper bound of bucket `i` (`i < BUCKETS`) in seconds.
pub fn bucket_bound_secs(i: usize) -> f64 {
    (1u64 << i) as f64 / 1e6
}

#[derive(Default)]
struct OpCounters {
    count: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    sum_ns: AtomicU64,
    buckets: [AtomicU64; BUCKETS + 1],
}

/// One shard: a cache line (or more) of its own.
#[repr(align(128))]
#[derive(Default)]
struct Shard {
    ops: [OpCounters; 5],
}

/// Counters of one request type, summed over the shards.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpSnapshot {
    /// Requests answered.
    pub count: u64,
    /// Bytes of the requests answered without error (for discard and
    /// write-zeroes: the range's length).
    pub bytes: u64,
    /// Requests answered with an error.
    pub errors: u64,
    /// Total latency, nanoseconds.
    pub sum_ns: u64,
    /// Requests per bucket (not cumulative); the last is `+Inf`.
    pub buckets: [u64; BUCKETS + 1],
}

/// Per request type: count, bytes, errors and latency (see the module doc).
pub struct IoMetrics {
    shards: Box<[Shard]>,
}

impl Default for IoMetrics {
    fn default() -> Self {
        IoMetrics {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
        }
    }
}

/// The shard of this thread: assigned round robin at its first record.
fn my_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    MINE.with(|m| *m)
}

impl IoMetrics {
    /// Empty counters.
    pub fn new() -> IoMetrics {
        IoMetrics::default()
    }

    /// Record one answered request of type `op` of `bytes` bytes that took
    /// `took`; `ok`: answered without error.
    pub fn record(&self, op: Op, bytes: u64, took: Duration, ok: bool) {
        let c = &self.shards[my_shard()].ops[op as usize];
        c.count.fetch_add(1, Ordering::Relaxed);
        if ok {
            c.bytes.fetch_add(bytes, Ordering::Relaxed);
        } else {
            c.errors.fetch_add(1, Ordering::Relaxed);
        }
        let ns = took.as_nanos().min(u128::from(u64::MAX)) as u64;
        c.sum_ns.fetch_add(ns, Ordering::Relaxed);
        c.buckets[bucket_of(took)].fetch_add(1, Ordering::Relaxed);
    }

    /// The counters of `op` now. Each counter is read atomically, the set
    /// is not: a scrape during I/O may see a request in `count` and not yet
    /// in its bucket (never the other way round across scrapes).
    pub fn snapshot(&self, op: Op) -> OpSnapshot {
        let mut s = OpSnapshot::default();
        for sh in self.shards.iter() {
            let c = &sh.ops[op as usize];
            s.count += c.count.load(Ordering::Relaxed);
            s.bytes += c.bytes.load(Ordering::Relaxed);
            s.errors += c.errors.load(Ordering::Relaxed);
            s.sum_ns += c.sum_ns.load(Ordering::Relaxed);
            for (b, v) in s.buckets.iter_mut().zip(&c.buckets) {
                *b += v.load(Ordering::Relaxed);
            }
        }
        s
    }

    /// Write the `lsvd_io_*` families.
    pub fn render(&self, w: &mut Writer) {
        let snaps: Vec<(Op, OpSnapshot)> = Op::ALL.iter().map(|&o| (o, self.snapshot(o))).collect();
        let per_op = |w: &mut Writer, name: &str, help: &str, f: &dyn Fn(&OpSnapshot) -> u64| {
            w.family(name, "counter", help);
            for (o, s) in &snaps {
                w.sample(name, &[("op", o.name())], f(s) as f64);
            }
        };
        per_op(
            w,
            "lsvd_io_requests_total",
            "Requests answered by the front end, by type.",
            &|s| s.count,
        );
        per_op(
            w,
            "lsvd_io_bytes_total",
            "Bytes of requests answered without error, by type (discard and write-zeroes: the range).",
            &|s| s.bytes,
        );
        per_op(
            w,
            "lsvd_io_errors_total",
            "Requests answered with an error, by type.",
            &|s| s.errors,
        );
        let name = "lsvd_io_latency_seconds";
        w.family(
            name,
            "histogram",
            "Time from a request's arrival to its answer, by type.",
        );
        for (o, s) in &snaps {
            let mut cum = 0;
            for (i, b) in s.buckets.iter().enumerate() {
                cum += b;
                let le = if i < BUCKETS {
                    text::format_value(bucket_bound_secs(i))
                } else {
                    "+Inf".to_owned()
                };
                w.sample(
                    &format!("{name}_bucket"),
                    &[("op", o.name()), ("le", &le)],
                    cum as f64,
                );
            }
            w.sample(
                &format!("{name}_sum"),
                &[("op", o.name())],
                s.sum_ns as f64 / 1e9,
            );
            w.sample(&format!("{name}_count"), &[("op", o.name())], cum as f64);
        }
    }
}

impl std::fmt::Debug for IoMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoMetrics")
            .field("requests", &Op::ALL.map(|o| self.snapshot(o).count))
            .finish()
    }
}

/// A server's metrics, decided before its volume opens: where they are
/// served, and the counting wrapper of the store the volume is opened
/// through. `None` from [`Plan::new`] when `metrics_listen` is `off`.
#[derive(Clone)]
pub struct Plan {
    /// Where to listen.
    pub listen: MetricsListen,
    /// The backend counters.
    pub store: Arc<CountingStore>,
    /// The front end's request counters.
    pub io: Arc<IoMetrics>,
    /// Labels of `lsvd_server_info` known so far (the image).
    pub info: Vec<(String, String)>,
}

impl Plan {
    /// A plan for serving `image` (`POOL/IMAGE[@SNAP]`) with its store
    /// `store`, unless `listen` is off. Open the volume through
    /// [`Plan::store`] (a [`CountingStore`] that describes itself as the
    /// real store).
    pub fn new(listen: MetricsListen, image: &str, store: Arc<dyn ObjectStore>) -> Option<Plan> {
        if listen == MetricsListen::Off {
            return None;
        }
        Some(Plan {
            listen,
            store: Arc::new(CountingStore::invisible(store)),
            io: Arc::new(IoMetrics::new()),
            info: vec![("image".to_owned(), image.to_owned())],
        })
    }

    /// Start serving `volume`'s metrics, with `info` added to the labels.
    /// The default socket is `default_socket`; if it cannot be bound (no
    /// run directory, say) that is a warning and `None`, while an address
    /// the configuration names is an error.
    pub fn start(
        &self,
        default_socket: &std::path::Path,
        volume: Weak<Volume>,
        info: &[(&str, &str)],
    ) -> Result<Option<MetricsServer>> {
        let mut labels = self.info.clone();
        labels.extend(info.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let source = Source {
            info: labels,
            io: self.io.clone(),
            volume,
            store: Some(self.store.clone()),
        };
        let render: http::Render = Arc::new(move || source.render());
        let (endpoint, default) = match &self.listen {
            MetricsListen::Off => return Ok(None),
            MetricsListen::Default => (Endpoint::Unix(default_socket.to_path_buf()), true),
            MetricsListen::Unix(p) => (Endpoint::Unix(p.clone()), false),
            MetricsListen::Tcp(a) => (Endpoint::Tcp(*a), false),
        };
        if default {
            if let Some(dir) = default_socket.parent() {
                if let Err(e) = std::fs::create_dir_all(dir) {
                    tracing::warn!(
                        "no metrics (cannot create {}: {e}); set metrics_listen to serve them elsewhere",
                        dir.display()
                    );
                    return Ok(None);
                }
            }
        }
        match MetricsServer::start(&endpoint, render) {
            Ok(s) => {
                tracing::info!("metrics at {}", s.endpoint());
                Ok(Some(s))
            }
            Err(e) if default => {
                tracing::warn!("no metrics: {e}; set metrics_listen to serve them elsewhere");
                Ok(None)
            }
            Err(e) => Err(e.prefixed("metrics_listen")),
        }
    }
}

/// What a server exposes: its identity, its front end's counters and its
/// volume's.
pub struct Source {
    /// Labels of `lsvd_server_info` (image, front end, device or address).
    pub info: Vec<(String, String)>,
    /// The front end's request counters.
    pub io: Arc<IoMetrics>,
    /// The volume; weak, so that a scrape never keeps it from closing.
    pub volume: Weak<Volume>,
    /// The counting wrapper the volume's store was opened through.
    pub store: Option<Arc<CountingStore>>,
}

impl Source {
    /// The whole exposition, as served at `GET /metrics`.
    pub fn render(&self) -> String {
        let mut w = Writer::default();
        w.family(
            "lsvd_server_info",
            "gauge",
            "The image this server serves, its front end and device or address (always 1).",
        );
        let labels: Vec<(&str, &str)> = self
            .info
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        w.sample("lsvd_server_info", &labels, 1.0);
        self.io.render(&mut w);
        if let Some(vol) = self.volume.upgrade() {
            render_volume(&mut w, &vol);
        }
        if let Some(store) = &self.store {
            render_store(&mut w, store);
        }
        w.finish()
    }
}

/// The volume's counters and gauges.
fn render_volume(w: &mut Writer, vol: &Volume) {
    let s = vol.stats();
    let b = vol.backlog();
    let counters: [(&str, u64, &str); 24] = [
        (
            "lsvd_volume_writes_total",
            s.writes,
            "Client write chunks journaled.",
        ),
        (
            "lsvd_volume_write_bytes_total",
            s.write_bytes,
            "Client bytes written.",
        ),
        (
            "lsvd_journal_records_total",
            s.journal_records,
            "Journal records written (group commits).",
        ),
        (
            "lsvd_journal_syncs_total",
            s.journal_syncs,
            "Journal fdatasyncs.",
        ),
        (
            "lsvd_journal_dsync_writes_total",
            s.journal_dsync_writes,
            "Journal records written with RWF_DSYNC.",
        ),
        (
            "lsvd_destage_objects_total",
            s.data_objects,
            "Data objects put to the backend.",
        ),
        (
            "lsvd_destage_bytes_total",
            s.data_object_bytes,
            "Bytes of data objects put.",
        ),
        (
            "lsvd_checkpoint_pieces_total",
            s.checkpoint_pieces,
            "Checkpoint pieces put.",
        ),
        (
            "lsvd_checkpoint_bytes_total",
            s.checkpoint_bytes,
            "Bytes of checkpoint pieces put.",
        ),
        (
            "lsvd_checkpoints_full_total",
            s.checkpoints_full,
            "Checkpoints written whole.",
        ),
        (
            "lsvd_checkpoints_delta_total",
            s.checkpoints_delta,
            "Checkpoints written as a delta.",
        ),
        (
            "lsvd_volume_backend_reads_total",
            s.backend_reads,
            "Backend reads for client reads.",
        ),
        (
            "lsvd_journal_replayed_total",
            s.replayed,
            "Journal operations replayed at open.",
        ),
        (
            "lsvd_cache_hits_total",
            s.cache_hits,
            "Read-cache hits (per 64 KiB chunk touched).",
        ),
        (
            "lsvd_cache_misses_total",
            s.cache_misses,
            "Read-cache misses (chunks fetched from the backend).",
        ),
        (
            "lsvd_cache_evictions_total",
            s.cache_evictions,
            "Read-cache chunks evicted.",
        ),
        (
            "lsvd_cache_inserts_total",
            s.cache_inserts,
            "Chunks written into the read cache.",
        ),
        (
            "lsvd_cache_corrupt_total",
            s.cache_corrupt,
            "Corrupt read-cache blocks dropped and refetched.",
        ),
        (
            "lsvd_chunks_verified_total",
            s.chunks_verified,
            "Object chunks read and verified against their crcs.",
        ),
        (
            "lsvd_chunks_corrupt_total",
            s.corrupt_chunks,
            "Object chunks or headers that failed their checksum.",
        ),
        (
            "lsvd_gc_objects_written_total",
            s.gc_objects,
            "Objects GC wrote (live data copied).",
        ),
        (
            "lsvd_gc_bytes_copied_total",
            s.gc_bytes,
            "Bytes of the objects GC wrote.",
        ),
        (
            "lsvd_gc_objects_deleted_total",
            s.gc_deleted,
            "Objects GC deleted.",
        ),
        (
            "lsvd_gc_bytes_freed_total",
            s.gc_freed_bytes,
            "Bytes of the objects GC deleted.",
        ),
    ];
    for (name, v, help) in counters {
        w.family(name, "counter", help);
        w.sample(name, &[], v as f64);
    }
    let gauges: [(&str, u64, &str); 6] = [
        (
            "lsvd_journal_used_bytes",
            s.journal_used_bytes,
            "Journal bytes holding records not yet in the backend.",
        ),
        (
            "lsvd_journal_capacity_bytes",
            b.journal_capacity_bytes,
            "Journal bytes available for records.",
        ),
        (
            "lsvd_destage_backlog_bytes",
            b.pending_bytes,
            "Client bytes not yet in the backend (open and sealed batches).",
        ),
        (
            "lsvd_destage_backlog_batches",
            b.pending_batches,
            "Batches not yet in the backend (the open one included if not empty).",
        ),
        (
            "lsvd_map_extents",
            s.map_extents,
            "Extents in the durable map.",
        ),
        (
            "lsvd_volume_size_bytes",
            vol.size_bytes(),
            "The image's size.",
        ),
    ];
    for (name, v, help) in gauges {
        w.family(name, "gauge", help);
        w.sample(name, &[], v as f64);
    }
}

/// The backend's operations, bytes and errors.
fn render_store(w: &mut Writer, store: &CountingStore) {
    let s = store.stats();
    let name = "lsvd_backend_requests_total";
    w.family(
        name,
        "counter",
        "Backend operations that succeeded, by type.",
    );
    for (op, v) in [("put", s.puts), ("get", s.gets), ("delete", s.deletes)] {
        w.sample(name, &[("op", op)], v as f64);
    }
    let name = "lsvd_backend_bytes_total";
    w.family(name, "counter", "Bytes put to and got from the backend.");
    for (op, v) in [("put", s.put_bytes), ("get", s.get_bytes)] {
        w.sample(name, &[("op", op)], v as f64);
    }
    let name = "lsvd_backend_errors_total";
    w.family(
        name,
        "counter",
        "Backend operations that failed, by type (a get of a missing object is not counted).",
    );
    for (op, v) in [
        ("put", s.put_errors),
        ("get", s.get_errors),
        ("delete", s.delete_errors),
    ] {
        w.sample(name, &[("op", op)], v as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two_microseconds() {
        let us = Duration::from_micros;
        assert_eq!(bucket_of(Duration::ZERO), 0);
        assert_eq!(bucket_of(Duration::from_nanos(999)), 0);
        assert_eq!(bucket_of(us(1)), 0);
        assert_eq!(bucket_of(Duration::from_nanos(1001)), 1);
        assert_eq!(bucket_of(us(2)), 1);
        assert_eq!(bucket_of(us(3)), 2);
        assert_eq!(bucket_of(us(4)), 2);
        assert_eq!(bucket_of(us(5)), 3);
        assert_eq!(bucket_of(us(1 << 25)), 25);
        assert_eq!(bucket_of(us((1 << 25) + 1)), BUCKETS);
        assert_eq!(bucket_of(Duration::from_secs(1 << 40)), BUCKETS);
        for i in 0..BUCKETS {
            let b = Duration::from_secs_f64(bucket_bound_secs(i));
            assert_eq!(bucket_of(b), i, "bound of bucket {i}");
        }
    }

    #[test]
    fn records_from_many_threads_sum_up() {
        let m = Arc::new(IoMetrics::new());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for i in 0..1000u64 {
                        m.record(
                            Op::Write,
                            4096,
                            Duration::from_micros(i % 50),
                            t != 0 || i % 10 != 0,
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = m.snapshot(Op::Write);
        assert_eq!(s.count, 8000);
        assert_eq!(s.errors, 100);
        assert_eq!(s.bytes, 7900 * 4096);
        assert_eq!(s.buckets.iter().sum::<u64>(), 8000);
        assert_eq!(m.snapshot(Op::Read), OpSnapshot::default());
    }

    /// The hot-path cost of metrics per request (two clock reads and a
    /// record): `cargo test --release --lib record_cost -- --ignored
    /// --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check: run by hand for the figure (README, Metrics)"]
    fn record_cost() {
        let m = IoMetrics::new();
        let n = 5_000_000u32;
        let t = std::time::Instant::now();
        for i in 0..n {
            let start = std::time::Instant::now();
            m.record(Op::Write, 4096, start.elapsed(), i % 1000 != 0);
        }
        let per = t.elapsed() / n;
        eprintln!("metrics cost per request: {per:?}");
        assert_eq!(m.snapshot(Op::Write).count, u64::from(n));
    }

    #[test]
    fn io_histogram_exposition_is_cumulative() {
        let m = IoMetrics::new();
        m.record(Op::Read, 512, Duration::from_micros(3), true);
        m.record(Op::Read, 512, Duration::from_secs(100), false);
        let mut w = Writer::default();
        m.render(&mut w);
        let t = w.finish();
        assert!(
            t.contains("lsvd_io_latency_seconds_bucket{op=\"read\",le=\"0.000004\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains("lsvd_io_latency_seconds_bucket{op=\"read\",le=\"+Inf\"} 2\n"),
            "{t}"
        );
        assert!(
            t.contains("lsvd_io_latency_seconds_count{op=\"read\"} 2\n"),
            "{t}"
        );
        assert!(t.contains("lsvd_io_errors_total{op=\"read\"} 1\n"), "{t}");
        assert!(t.contains("lsvd_io_bytes_total{op=\"read\"} 512\n"), "{t}");
        let samples = text::parse(&t).unwrap();
        assert!(samples
            .iter()
            .any(|s| s.name == "lsvd_io_latency_seconds_sum"
                && s.label("op") == Some("read")
                && (s.value - 100.000003).abs() < 1e-6));
    }
}
