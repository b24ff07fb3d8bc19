//! Heap bytes per extent of the extent maps, measured with a counting global
//! allocator.
//!
//! `cargo run --release --example map_memory [extents]` (default 10,000,000)
//! prints one `bytes_per_extent=<x>` line per structure and fill order.
//! Random order writes 1-8 sectors at random LBAs of a space 64 sectors per
//! extent wide until the extent count is reached; sequential order writes
//! 1-8 sectors at ascending LBAs, each target one sector past the previous
//! one's end so that neighbours do not merge.

use std::collections::BTreeMap;
use std::time::Instant;

use lsvd::map::{ExtentMap, ObjLoc, ObjectMap};
use lsvd::units::{Lba, ObjSeq};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::live_bytes;

/// Sectors per object in the simulated log (so offsets stay in range).
const OBJ_SECTORS: u32 = 1 << 16;

/// A stream of (lba, len, loc) writes in log order.
struct Writes {
    rng: SmallRng,
    random: bool,
    space: u64,
    next_lba: u64,
    obj: u64,
    offset: u32,
}

impl Writes {
    fn new(random: bool, extents: u64) -> Self {
        Writes {
            rng: SmallRng::seed_from_u64(42),
            random,
            space: extents * 64,
            next_lba: 0,
            obj: 1,
            offset: 0,
        }
    }
    fn next(&mut self) -> (u64, u64, ObjLoc, bool) {
        let len = self.rng.gen_range(1..=8u64);
        let lba = if self.random {
            self.rng.gen_range(0..self.space)
        } else {
            let l = self.next_lba;
            self.next_lba += len;
            l
        };
        let mut new_obj = false;
        if self.offset + 9 > OBJ_SECTORS {
            self.obj += 1;
            self.offset = 0;
            new_obj = true;
        }
        let loc = ObjLoc {
            obj: ObjSeq(self.obj),
            offset: self.offset,
        };
        self.offset += len as u32 + 1;
        (lba, len, loc, new_obj)
    }
}

fn report(what: &str, order: &str, extents: usize, bytes: usize, secs: f64, writes: u64) {
    println!(
        "{what} {order}: extents={extents} heap_bytes={bytes} bytes_per_extent={:.2} build={secs:.1}s ({:.2} M writes/s)",
        bytes as f64 / extents as f64,
        writes as f64 / secs / 1e6
    );
}

fn object_map(random: bool, target: u64) {
    let base = live_bytes();
    let t = Instant::now();
    let mut m = ObjectMap::new();
    let mut w = Writes::new(random, target);
    m.add_object(ObjSeq(1), u64::from(OBJ_SECTORS));
    let mut writes = 0;
    while (m.extent_count() as u64) < target {
        let (lba, len, loc, new_obj) = w.next();
        if new_obj {
            m.add_object(loc.obj, u64::from(OBJ_SECTORS));
        }
        m.apply_write(Lba(lba), len, loc);
        writes += 1;
    }
    let secs = t.elapsed().as_secs_f64();
    // The object table is part of the durable map, so it is counted too.
    let bytes = live_bytes() - base;
    let order = if random { "random" } else { "sequential" };
    report("ObjectMap", order, m.extent_count(), bytes, secs, writes);
}

fn extent_map(random: bool, target: u64) {
    let base = live_bytes();
    let t = Instant::now();
    let mut m: ExtentMap<ObjLoc> = ExtentMap::new();
    let mut w = Writes::new(random, target);
    let mut displaced = Vec::new();
    let mut writes = 0;
    while (m.len() as u64) < target {
        let (lba, len, loc, _) = w.next();
        displaced.clear();
        m.update(Lba(lba), len, loc, &mut displaced);
        writes += 1;
    }
    let secs = t.elapsed().as_secs_f64();
    let bytes = live_bytes() - base - displaced.capacity() * 32;
    let order = if random { "random" } else { "sequential" };
    report("ExtentMap<ObjLoc>", order, m.len(), bytes, secs, writes);
}

/// Baseline: std BTreeMap keyed by start LBA (inserts only, no overlap handling).
fn std_btree(random: bool, target: u64) {
    let base = live_bytes();
    let t = Instant::now();
    let mut m: BTreeMap<u64, (u32, ObjLoc)> = BTreeMap::new();
    let mut w = Writes::new(random, target);
    let mut writes = 0;
    while (m.len() as u64) < target {
        let (lba, len, loc, _) = w.next();
        m.insert(lba, (len as u32, loc));
        writes += 1;
    }
    let secs = t.elapsed().as_secs_f64();
    let bytes = live_bytes() - base;
    let order = if random { "random" } else { "sequential" };
    report(
        "std BTreeMap<u64,(u32,ObjLoc)>",
        order,
        m.len(),
        bytes,
        secs,
        writes,
    );
}

fn main() {
    let target: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("extent count"))
        .unwrap_or(10_000_000);
    for random in [true, false] {
        object_map(random, target);
        extent_map(random, target);
        std_btree(random, target);
    }
}
