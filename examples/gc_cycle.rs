//! GC cycle cost (victim selection + gathering the victims' extents, not the
//! object I/O) against map size, map heap bytes per extent, and checkpoint
//! load (`ObjectMap::from_parts`) time.
//!
//! `cargo run --release --example gc_cycle [EXTENTS...]` (default 1000000
//! 10000000). For each size it builds an `ObjectMap` from random 4 KiB
//! writes (8-sector aligned, over twice as many blocks as extents) into
//! 8 MiB objects until the map holds EXTENTS extents, so the oldest objects
//! are about half overwritten, as they would be without GC. It prints one
//! line per size:
//! `extents=… heap_bytes_per_extent=… index_ranges_per_extent=…
//! index_bytes_per_extent=… load_secs=… loaded_bytes_per_extent=…
//! cycle_ms=… cold_cycle_ms=… warm_cycle_ms=… select_ms=… scan_cycle_ms=… objects=…
//! victims=… victim_extents=… runs=… lookups=…`
//! (times as median/minimum of 5, `lookups` the map lookups of the first
//! indexed cycle) and a last line with the ratios of the largest to the
//! smallest size's cycle times, for the indexed gather GC uses (`cycle_ms`) and for the
//! full-map scan it replaced (`scan_cycle_ms`, kept here for comparison;
//! both produce the same runs, which is checked). The cycle is the default
//! configuration's (`gc_threshold` 60, 8 MiB budget, 64 KiB plugs); its
//! times are over 5 repetitions:
//! - `cycle_ms`: 5 consecutive cycles, each on the next victims (those of
//!   the earlier cycles are excluded, as GC excludes objects waiting for
//!   deletion), so each gathers extents it has not touched before;
//! - `cold_cycle_ms`: the first cycle 5 times, each after sweeping a
//!   128 MiB buffer (every cache cold, the map's upper levels included);
//! - `warm_cycle_ms`: the first cycle 5 times, no sweep (its extents stay
//!   in cache; at 10^6 extents the whole 24 MB map fits the 32 MB L3 here,
//!   at 10^7 it does not, so warm and cold figures differ by the memory
//!   hierarchy, not by the work done);
//! - `select_ms`: the victim selection alone (O(objects));
//! - `scan_cycle_ms`: the first cycle 5 times with the full-map scan.
//!
//! Heap bytes include the reverse index.

use std::collections::BTreeSet;
use std::time::Instant;

use lsvd::gc::select::{gather, select_victims, Gatherer, Run};
use lsvd::map::{ObjInfo, ObjLoc, ObjectMap};
use lsvd::units::{Lba, ObjSeq};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::live_bytes;

/// Data sectors per object (8 MiB, the default `backend_obj_bytes`).
const OBJ_SECTORS: u64 = 16384;
/// Sectors per write (4 KiB).
const WRITE: u64 = 8;
/// Default `gc_threshold`, percent.
const THRESHOLD: u32 = 60;
/// Default cycle budget: `gc_buffer_bytes` (16M) capped at
/// `backend_obj_bytes` (8M).
const BUDGET: u64 = 8 << 20;
/// Default `gc_plug_bytes` in sectors.
const PLUG: u64 = (64 << 10) / 512;
/// Extents per read-lock hold in the old full scan.
const SCAN_SLICE: usize = 4096;

fn build(extents: u64) -> ObjectMap {
    let mut rng = SmallRng::seed_from_u64(7);
    let blocks = extents * 2;
    let mut m = ObjectMap::new();
    let mut obj = 0u64;
    let mut off = OBJ_SECTORS;
    while (m.extent_count() as u64) < extents {
        if off == OBJ_SECTORS {
            obj += 1;
            off = 0;
            m.add_object(ObjSeq(obj), OBJ_SECTORS);
        }
        let lba = rng.gen_range(0..blocks) * WRITE;
        m.apply_write(
            Lba(lba),
            WRITE,
            ObjLoc {
                obj: ObjSeq(obj),
                offset: 8 + off as u32,
            },
        );
        off += WRITE;
    }
    m
}

/// The victims of a cycle; `done` (objects cleaned by earlier cycles, which
/// GC excludes while they wait for deletion) are skipped.
fn select(m: &ObjectMap, done: &BTreeSet<ObjSeq>) -> BTreeSet<ObjSeq> {
    let objects: Vec<(ObjSeq, ObjInfo)> = m.objects().collect();
    select_victims(&objects, THRESHOLD, BUDGET, |o| done.contains(&o))
        .into_iter()
        .collect()
}

/// The gather before the reverse index: every extent of the map, in slices.
fn scan_gather(m: &ObjectMap, victims: &BTreeSet<ObjSeq>) -> Vec<Run> {
    let mut g = Gatherer::new(victims, PLUG);
    let mut pos = Lba(0);
    loop {
        let slice = m.extents_from(pos, SCAN_SLICE);
        let Some(last) = slice.last() else { break };
        pos = Lba(last.end());
        for x in slice {
            g.feed(x);
        }
    }
    g.finish()
}

/// The gather GC does: the victims' extents through the reverse index,
/// and the gaps between them.
fn indexed_gather(m: &ObjectMap, victims: &BTreeSet<ObjSeq>) -> Vec<Run> {
    gather(
        victims,
        &BTreeSet::new(),
        PLUG,
        m.extents_of(victims),
        |l, n| m.extents_in(l, n),
    )
}

/// Map lookups the indexed gather makes: one per reverse-index range of
/// the victims, one per gap looked up.
fn lookups(m: &ObjectMap, victims: &BTreeSet<ObjSeq>) -> usize {
    let mut gaps = 0;
    gather(
        victims,
        &BTreeSet::new(),
        PLUG,
        m.extents_of(victims),
        |l, n| {
            gaps += 1;
            m.extents_in(l, n)
        },
    );
    m.reverse_ranges(victims).len() + gaps
}

/// Sweep `buf` (larger than the last-level cache), evicting everything else.
fn evict(buf: &mut [u64]) {
    for (i, w) in buf.iter_mut().enumerate() {
        *w = w.wrapping_add(i as u64);
    }
    std::hint::black_box(&buf);
}

/// Median (and minimum) of 5 timed runs, in ms.
fn median_ms(mut evict_buf: Option<&mut Vec<u64>>, mut f: impl FnMut()) -> (f64, f64) {
    let mut t: Vec<f64> = (0..5)
        .map(|_| {
            if let Some(b) = evict_buf.as_deref_mut() {
                evict(b);
            }
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(|a, b| a.total_cmp(b));
    (t[2], t[0])
}

fn main() {
    let sizes: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("EXTENTS must be a number"))
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1_000_000, 10_000_000]
    } else {
        sizes
    };
    let mut cycles = Vec::new();
    let mut sweep = vec![0u64; (128 << 20) / 8];
    for &n in &sizes {
        let base = live_bytes();
        let m = build(n);
        let heap = live_bytes() - base;
        let extents = m.extent_count();

        let xs: Vec<_> = m.extents().collect();
        let objs: Vec<_> = m.objects().collect();
        let before_load = live_bytes();
        let t0 = Instant::now();
        let loaded = ObjectMap::from_parts(xs.iter().copied(), objs.iter().copied())
            .expect("a consistent map loads");
        let load_secs = t0.elapsed().as_secs_f64();
        let loaded_heap = live_bytes() - before_load;
        drop(loaded);
        drop(xs);

        let victims = select(&m, &BTreeSet::new());
        let runs = scan_gather(&m, &victims);
        assert_eq!(indexed_gather(&m, &victims), runs, "both gathers agree");
        let (ranges, index_bytes) = m.reverse_index_size();
        let lookups = lookups(&m, &victims);
        let victim_extents = m
            .extents()
            .filter(|x| victims.contains(&x.target.obj))
            .count();
        let none = BTreeSet::new();
        let mut done = BTreeSet::new();
        let cycle = median_ms(None, || {
            let v = select(&m, &done);
            std::hint::black_box(indexed_gather(&m, &v));
            done.extend(v);
        });
        let cold = median_ms(Some(&mut sweep), || {
            let v = select(&m, &none);
            std::hint::black_box(indexed_gather(&m, &v));
        });
        let warm = median_ms(None, || {
            let v = select(&m, &none);
            std::hint::black_box(indexed_gather(&m, &v));
        });
        let select_ms = median_ms(None, || {
            std::hint::black_box(select(&m, &none));
        });
        let scan = median_ms(None, || {
            let v = select(&m, &none);
            std::hint::black_box(scan_gather(&m, &v));
        });
        println!(
            "extents={extents} heap_bytes_per_extent={:.2} index_ranges_per_extent={:.2} \
             index_bytes_per_extent={:.2} load_secs={load_secs:.2} \
             loaded_bytes_per_extent={:.2} cycle_ms={:.3}/{:.3} cold_cycle_ms={:.3}/{:.3} \
             warm_cycle_ms={:.3}/{:.3} select_ms={:.3} scan_cycle_ms={:.2}/{:.2} objects={} \
             victims={} victim_extents={victim_extents} runs={} lookups={lookups}",
            heap as f64 / extents as f64,
            ranges as f64 / extents as f64,
            index_bytes as f64 / extents as f64,
            loaded_heap as f64 / extents as f64,
            cycle.0,
            cycle.1,
            cold.0,
            cold.1,
            warm.0,
            warm.1,
            select_ms.0,
            scan.0,
            scan.1,
            objs.len(),
            victims.len(),
            runs.len(),
        );
        cycles.push((cycle, cold, warm, scan));
    }
    if let (Some(first), Some(last)) = (cycles.first(), cycles.last()) {
        println!(
            "cycle_ratio={:.2}/{:.2} cold_cycle_ratio={:.2}/{:.2} warm_cycle_ratio={:.2}/{:.2} \
             scan_cycle_ratio={:.2}/{:.2} (largest to smallest)",
            last.0 .0 / first.0 .0,
            last.0 .1 / first.0 .1,
            last.1 .0 / first.1 .0,
            last.1 .1 / first.1 .1,
            last.2 .0 / first.2 .0,
            last.2 .1 / first.2 .1,
            last.3 .0 / first.3 .0,
            last.3 .1 / first.3 .1
        );
    }
}
