//! Extent map throughput: random small writes and lookups on a map of 1M extents.
//!
//! `cargo bench --bench map`. Heap per extent: `examples/map_memory.rs`.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use lsvd::map::{ExtentMap, ObjLoc, ObjectMap};
use lsvd::units::{Lba, ObjSeq};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const EXTENTS: u64 = 1_000_000;
const SPACE: u64 = EXTENTS * 64;
const OPS: u64 = 10_000;

fn loc(i: u64) -> ObjLoc {
    ObjLoc {
        obj: ObjSeq(1 + i / 4096),
        offset: ((i % 4096) * 16) as u32,
    }
}

/// An ObjectMap of about `EXTENTS` extents built from random 1-8 sector writes.
fn build() -> ObjectMap {
    let mut rng = SmallRng::seed_from_u64(1);
    let mut m = ObjectMap::new();
    let mut i = 0;
    while (m.extent_count() as u64) < EXTENTS {
        if i % 4096 == 0 {
            m.add_object(loc(i).obj, 1 << 16);
        }
        m.apply_write(Lba(rng.gen_range(0..SPACE)), rng.gen_range(1..=8), loc(i));
        i += 1;
    }
    m
}

fn bench(c: &mut Criterion) {
    let base = build();
    let mut g = c.benchmark_group("map");
    g.throughput(Throughput::Elements(OPS));

    g.bench_function("object_map_apply_write_random_1-8", |b| {
        // The map keeps its random character, so it is reused across
        // iterations rather than cloned.
        let mut rng = SmallRng::seed_from_u64(2);
        let mut m = base.clone();
        let mut next = 1u64 << 40;
        b.iter(|| {
            let obj = ObjSeq(next);
            next += 1;
            m.add_object(obj, 1 << 20);
            for i in 0..OPS {
                let at = Lba(rng.gen_range(0..SPACE));
                let l = ObjLoc {
                    obj,
                    offset: (i * 9) as u32,
                };
                m.apply_write(at, rng.gen_range(1..=8), l);
            }
        })
    });

    let mut em: ExtentMap<ObjLoc> = ExtentMap::new();
    let mut d = Vec::new();
    for x in base.extents() {
        em.update(x.lba, x.len, x.target, &mut d);
    }
    g.bench_function("extent_map_update_random_1-8", |b| {
        let mut rng = SmallRng::seed_from_u64(3);
        let mut i = 0;
        b.iter(|| {
            for _ in 0..OPS {
                d.clear();
                let at = Lba(rng.gen_range(0..SPACE));
                em.update(at, rng.gen_range(1..=8), loc(i * 7), &mut d);
                i += 1;
            }
        })
    });

    g.bench_function("object_map_lookup_random_8", |b| {
        let mut rng = SmallRng::seed_from_u64(4);
        let mut out = Vec::with_capacity(16);
        b.iter(|| {
            for _ in 0..OPS {
                out.clear();
                base.lookup(Lba(rng.gen_range(0..SPACE)), 8, &mut out);
                black_box(&out);
            }
        })
    });

    g.bench_function("object_map_lookup_random_256", |b| {
        let mut rng = SmallRng::seed_from_u64(5);
        let mut out = Vec::with_capacity(64);
        b.iter(|| {
            for _ in 0..OPS {
                out.clear();
                base.lookup(Lba(rng.gen_range(0..SPACE)), 256, &mut out);
                black_box(&out);
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
