use std::collections::BTreeMap;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::object::PackedLoc;
use super::*;
use crate::units::ObjSeq;

/// A test target: a batch number (for `remove_if`) and a sector offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tt {
    batch: u32,
    off: u64,
}

impl Target for Tt {
    fn advance(self, sectors: u64) -> Self {
        Tt {
            batch: self.batch,
            off: self.off + sectors,
        }
    }
}

/// The trivial model: one entry per mapped sector.
struct Oracle<T> {
    sectors: BTreeMap<u64, T>,
}

impl<T> Default for Oracle<T> {
    fn default() -> Self {
        Oracle {
            sectors: BTreeMap::new(),
        }
    }
}

impl<T: Target> Oracle<T> {
    fn take(&mut self, s: u64, e: u64) -> Vec<(u64, T)> {
        let keys: Vec<u64> = self.sectors.range(s..e).map(|(&k, _)| k).collect();
        keys.into_iter()
            .map(|k| (k, self.sectors.remove(&k).unwrap()))
            .collect()
    }
    fn update(&mut self, s: u64, len: u64, t: T) -> Vec<(u64, T)> {
        let old = self.take(s, s + len);
        for i in 0..len {
            self.sectors.insert(s + i, t.advance(i));
        }
        old
    }
    fn lookup(&self, s: u64, len: u64) -> Vec<(u64, Option<T>)> {
        (s..s + len)
            .map(|k| (k, self.sectors.get(&k).copied()))
            .collect()
    }
}

/// Expand pieces into per-sector pairs, checking they are contiguous from `s`.
fn expand<T: Target>(s: u64, pieces: &[(Lba, u64, Option<T>)]) -> Vec<(u64, Option<T>)> {
    let mut pos = s;
    let mut v = Vec::new();
    for &(l, n, t) in pieces {
        assert_eq!(l.0, pos, "pieces not contiguous: {pieces:?}");
        assert!(n > 0, "empty piece in {pieces:?}");
        for i in 0..n {
            v.push((l.0 + i, t.map(|t| t.advance(i))));
        }
        pos += n;
    }
    v
}

/// Expand displaced extents, checking they are sorted and disjoint.
fn expand_extents<T: Target>(xs: &[Extent<T>]) -> Vec<(u64, T)> {
    let mut v = Vec::new();
    let mut prev_end = 0;
    for x in xs {
        assert!(x.len > 0 && x.lba.0 >= prev_end, "unordered: {xs:?}");
        prev_end = x.end();
        for i in 0..x.len {
            v.push((x.lba.0 + i, x.target.advance(i)));
        }
    }
    v
}

fn check_against<T: Target>(m: &ExtentMap<T>, o: &Oracle<T>) {
    m.check_structure().unwrap();
    assert_eq!(m.mapped_sectors(), o.sectors.len() as u64);
    let all: Vec<(u64, T)> = expand_extents(&m.iter().collect::<Vec<_>>());
    let want: Vec<(u64, T)> = o.sectors.iter().map(|(&k, &t)| (k, t)).collect();
    assert_eq!(all, want);
}

/// Random operations on `m` and the oracle; `pick_lba` chooses where.
fn random_ops(seed: u64, ops: usize, mut pick_lba: impl FnMut(&mut SmallRng) -> u64, max_len: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut m: ExtentMap<Tt> = ExtentMap::new();
    let mut o: Oracle<Tt> = Oracle::default();
    let mut displaced = Vec::new();
    let mut out = Vec::new();
    for op in 0..ops {
        let s = pick_lba(&mut rng);
        let len = rng.gen_range(1..=max_len);
        match rng.gen_range(0..100) {
            0..=59 => {
                // Contiguous targets now and then so that merging happens.
                let t = Tt {
                    batch: rng.gen_range(0..4),
                    off: if rng.gen_bool(0.3) {
                        s
                    } else {
                        rng.gen_range(0..1 << 40)
                    },
                };
                displaced.clear();
                m.update(Lba(s), len, t, &mut displaced);
                let old = o.update(s, len, t);
                assert_eq!(expand_extents(&displaced), old, "op {op}: update {s}+{len}");
            }
            60..=74 => {
                displaced.clear();
                m.remove(Lba(s), len, &mut displaced);
                let old = o.take(s, s + len);
                assert_eq!(expand_extents(&displaced), old, "op {op}: remove {s}+{len}");
            }
            75..=84 => {
                let b = rng.gen_range(0..4);
                let n = m.remove_if(Lba(s), len, |t| t.batch == b);
                let keys: Vec<u64> = o
                    .sectors
                    .range(s..s + len)
                    .filter(|(_, t)| t.batch == b)
                    .map(|(&k, _)| k)
                    .collect();
                for k in &keys {
                    o.sectors.remove(k);
                }
                assert_eq!(n, keys.len() as u64, "op {op}: remove_if {s}+{len}");
            }
            _ => {
                out.clear();
                m.lookup(Lba(s), len, &mut out);
                assert_eq!(
                    expand(s, &out),
                    o.lookup(s, len),
                    "op {op}: lookup {s}+{len}"
                );
            }
        }
        check_against(&m, &o);
    }
}

#[test]
fn random_ops_dense_small_writes() {
    // ~1000 extents in 4096 sectors: many chunks, lending, splits and merges.
    for seed in 0..4 {
        random_ops(seed, 4000, |r| r.gen_range(0..4096), 8);
    }
}

#[test]
fn random_ops_dense_mixed_lengths() {
    random_ops(7, 3000, |r| r.gen_range(0..4096), 300);
}

#[test]
fn random_ops_far_apart_lbas() {
    // Regions 3e9 sectors apart exceed a chunk's u32 offset range.
    for seed in 10..13 {
        random_ops(
            seed,
            3000,
            |r| r.gen_range(0..8u64) * 3_000_000_000 + r.gen_range(0..600),
            8,
        );
    }
}

#[test]
fn lookup_covers_holes_and_clips() {
    let mut m = ExtentMap::new();
    let mut d = Vec::new();
    m.update(Lba(10), 10, Tt { batch: 1, off: 100 }, &mut d);
    m.update(Lba(30), 5, Tt { batch: 2, off: 0 }, &mut d);
    assert!(d.is_empty());
    let mut out = Vec::new();
    m.lookup(Lba(15), 25, &mut out);
    assert_eq!(
        out,
        vec![
            (Lba(15), 5, Some(Tt { batch: 1, off: 105 })),
            (Lba(20), 10, None),
            (Lba(30), 5, Some(Tt { batch: 2, off: 0 })),
            (Lba(35), 5, None),
        ]
    );
    out.clear();
    m.lookup(Lba(0), 0, &mut out);
    assert!(out.is_empty());
}

#[test]
fn update_splits_and_reports_clipped_pieces() {
    let mut m = ExtentMap::new();
    let mut d = Vec::new();
    m.update(Lba(0), 100, Tt { batch: 0, off: 0 }, &mut d);
    m.update(Lba(40), 10, Tt { batch: 1, off: 0 }, &mut d);
    assert_eq!(
        d,
        vec![Extent {
            lba: Lba(40),
            len: 10,
            target: Tt { batch: 0, off: 40 }
        }]
    );
    assert_eq!(m.len(), 3);
    assert_eq!(m.mapped_sectors(), 100);
    let v: Vec<_> = m.iter().collect();
    assert_eq!(v[2].target, Tt { batch: 0, off: 50 });
}

#[test]
fn contiguous_targets_merge() {
    let mut m = ExtentMap::new();
    let mut d = Vec::new();
    for i in 0..10 {
        m.update(
            Lba(i * 8),
            8,
            Tt {
                batch: 0,
                off: i * 8,
            },
            &mut d,
        );
    }
    assert_eq!(m.len(), 1);
    m.update(
        Lba(80),
        8,
        Tt {
            batch: 0,
            off: 1000,
        },
        &mut d,
    );
    assert_eq!(m.len(), 2);
}

#[test]
fn huge_extents_are_stored_in_pieces() {
    let mut m = ExtentMap::new();
    let mut d = Vec::new();
    let len = 3 * (1u64 << 32) + 5;
    m.update(Lba(7), len, Tt { batch: 0, off: 0 }, &mut d);
    assert_eq!(m.mapped_sectors(), len);
    assert_eq!(m.len(), 4);
    m.check_structure().unwrap();
    let mut out = Vec::new();
    m.lookup(Lba(1 << 33), 2, &mut out);
    assert_eq!(
        out,
        vec![(
            Lba(1 << 33),
            2,
            Some(Tt {
                batch: 0,
                off: (1 << 33) - 7
            })
        )]
    );
    m.remove(Lba(0), u64::MAX, &mut d);
    assert_eq!(d.iter().map(|x| x.len).sum::<u64>(), len);
    assert!(m.is_empty());
    assert_eq!(m.mapped_sectors(), 0);
}

#[test]
fn sequential_fill_packs_chunks_full() {
    let mut m = ExtentMap::new();
    let mut d = Vec::new();
    let n = 10 * CAP as u64 + 3;
    for i in 0..n {
        m.update(
            Lba(i * 2),
            1,
            Tt {
                batch: 0,
                off: i * 7,
            },
            &mut d,
        );
    }
    assert_eq!(m.len() as u64, n);
    assert_eq!(m.chunks.len(), 11);
    // Descending order is served by lending to the left, not half splits.
    let mut m = ExtentMap::new();
    for i in (0..n).rev() {
        m.update(
            Lba(i * 2),
            1,
            Tt {
                batch: 0,
                off: i * 7,
            },
            &mut d,
        );
    }
    m.check_structure().unwrap();
    assert!(m.chunks.len() <= 22, "{} chunks", m.chunks.len());
}

#[test]
fn clear_empties() {
    let mut m = ExtentMap::new();
    let mut d = Vec::new();
    m.update(Lba(1), 1, Tt { batch: 0, off: 0 }, &mut d);
    m.clear();
    assert!(m.is_empty());
    assert_eq!(m.iter().count(), 0);
    assert_eq!(m.mapped_sectors(), 0);
}

fn loc(obj: u64, offset: u32) -> ObjLoc {
    ObjLoc {
        obj: ObjSeq(obj),
        offset,
    }
}

#[test]
fn packed_loc_round_trips() {
    for l in [loc(1, 0), loc(u64::MAX, u32::MAX), loc(0x1_0000_0002, 9)] {
        assert_eq!(ObjLoc::from(PackedLoc::from(l)), l);
    }
    assert_eq!(std::mem::size_of::<PackedLoc>(), 12);
}

#[test]
fn object_map_random_ops_keep_live_counts() {
    let mut rng = SmallRng::seed_from_u64(99);
    let mut m = ObjectMap::new();
    let mut o: Oracle<ObjLoc> = Oracle::default();
    let mut obj = 1u64;
    let mut offset = 0u32;
    m.add_object(ObjSeq(obj), 1 << 20);
    let mut out = Vec::new();
    for op in 0..4000 {
        let s = rng.gen_range(0..4096);
        let len = rng.gen_range(1..=16);
        match rng.gen_range(0..10) {
            0..=6 => {
                if rng.gen_bool(0.02) {
                    obj += 1;
                    offset = 0;
                    m.add_object(ObjSeq(obj), 1 << 20);
                }
                m.apply_write(Lba(s), len, loc(obj, offset));
                o.update(s, len, loc(obj, offset));
                offset += len as u32 + rng.gen_range(0..2);
            }
            7 => {
                m.apply_trim(Lba(s), len);
                o.take(s, s + len);
            }
            _ => {
                out.clear();
                m.lookup(Lba(s), len, &mut out);
                assert_eq!(expand(s, &out), o.lookup(s, len), "op {op}");
            }
        }
        m.check().unwrap_or_else(|e| panic!("op {op}: {e}"));
        assert_eq!(m.mapped_sectors(), o.sectors.len() as u64);
    }
    // Objects whose data is all overwritten can go.
    let dead: Vec<ObjSeq> = m
        .objects()
        .filter(|(_, i)| i.live_sectors == 0)
        .map(|(k, _)| k)
        .collect();
    for d in dead {
        assert!(m.remove_object(d).is_some());
    }
    m.check().unwrap();
    // And a checkpoint round trip reproduces the map.
    let back = ObjectMap::from_parts(m.extents(), m.objects()).unwrap();
    assert!(back.extents().eq(m.extents()));
    assert!(back.objects().eq(m.objects()));
    back.check().unwrap();
}

/// Rebuild through a [`MapBuilder`]: the base's extents, then every delta
/// (its ranges cleared, its extents put), then `m`'s table.
type Delta = (Vec<(Lba, u64)>, Vec<Extent<ObjLoc>>);

fn rebuild(base: &[Extent<ObjLoc>], deltas: &[Delta], m: &ObjectMap) -> ObjectMap {
    let mut b = MapBuilder::new();
    for x in base {
        b.push(*x).unwrap();
    }
    for (ranges, extents) in deltas {
        for &(lba, len) in ranges {
            b.clear_range(lba, len);
        }
        for x in extents {
            assert!(
                ranges
                    .iter()
                    .any(|&(l, n)| l.0 <= x.lba.0 && x.end() <= l.0 + n),
                "extent {x:?} outside its delta's ranges"
            );
            b.put(*x).unwrap();
        }
    }
    b.finish(m.objects()).unwrap()
}

/// The property delta checkpoints rest on: a base map, with the ranges
/// changed since it replaced by their current extents, delta after delta,
/// is the current map. Writes, trims (with and without zero markers),
/// unmaps past an end and GC moves, with dead rows dropped as a
/// checkpoint does.
#[test]
fn a_chain_of_deltas_rebuilds_the_map() {
    for seed in 0..8u64 {
        let mut rng = SmallRng::seed_from_u64(1000 + seed);
        let mut m = ObjectMap::new();
        m.track_changes();
        let mut obj = 1u64;
        let mut offset = 0u32;
        m.add_object(ObjSeq(obj), 1 << 20);
        let mut base: Vec<Extent<ObjLoc>> = vec![];
        let mut deltas = vec![];
        for op in 0..3000 {
            let s = rng.gen_range(0..4096u64);
            let len = rng.gen_range(1..=24u64);
            match rng.gen_range(0..20) {
                0..=11 => {
                    if rng.gen_bool(0.03) {
                        obj += 1;
                        offset = 0;
                        m.add_object(ObjSeq(obj), 1 << 20);
                    }
                    m.apply_write(Lba(s), len, loc(obj, offset));
                    offset += len as u32;
                }
                12..=14 => m.apply_trim(Lba(s), len),
                15 => m.set_trim_markers(!m.trim_markers()),
                16 => m.unmap(Lba(4000 + s % 96), u64::MAX - 4000 - s % 96),
                _ => {
                    // A GC move of one extent into a new object.
                    if let Some(x) = m.extents_from(Lba(s), 1).pop() {
                        if !x.target.is_zero() {
                            obj += 1;
                            m.add_object(ObjSeq(obj), 1 << 20);
                            m.apply_move(x.lba, x.len, x.target, loc(obj, 0));
                            obj += 1;
                            offset = 0;
                            m.add_object(ObjSeq(obj), 1 << 20);
                        }
                    }
                }
            }
            if op % 150 == 149 {
                // A checkpoint: dead rows go, then the changes are taken.
                let dead: Vec<ObjSeq> = m
                    .objects()
                    .filter(|(_, i)| i.live_sectors == 0)
                    .map(|(k, _)| k)
                    .collect();
                for d in dead {
                    m.remove_object(d);
                }
                // The object being filled is registered again (as the
                // destager registers each object before its writes).
                m.add_object(ObjSeq(obj), 1 << 20);
                let ranges = m.take_changes().unwrap();
                assert_eq!(m.changed_ranges(), 0);
                assert!(ranges.windows(2).all(|w| w[0].0 .0 + w[0].1 < w[1].0 .0));
                let extents = m.clipped_extents(&ranges);
                if deltas.len() == 6 {
                    // A full one now and then.
                    base = m.extents().collect();
                    deltas.clear();
                } else {
                    deltas.push((ranges, extents));
                }
                let back = rebuild(&base, &deltas, &m);
                assert_eq!(
                    expand_extents(&back.extents().collect::<Vec<_>>()),
                    expand_extents(&m.extents().collect::<Vec<_>>()),
                    "seed {seed} op {op}"
                );
                back.check().unwrap();
            }
        }
    }
}

#[test]
fn changes_are_joined_clipped_and_untracked_by_default() {
    let mut m = ObjectMap::new();
    m.add_object(ObjSeq(1), 1 << 20);
    m.apply_write(Lba(0), 8, loc(1, 0));
    assert_eq!(m.take_changes(), None);
    m.track_changes();
    m.apply_write(Lba(10), 5, loc(1, 8));
    m.apply_write(Lba(30), 5, loc(1, 13));
    m.apply_trim(Lba(15), 5);
    m.apply_write(Lba(12), 2, loc(1, 18));
    m.unmap(Lba(100), u64::MAX - 100);
    // A move that moves nothing is no change.
    m.add_object(ObjSeq(2), 1 << 20);
    assert_eq!(m.apply_move(Lba(50), 4, loc(1, 0), loc(2, 0)), 0);
    assert_eq!(m.changed_ranges(), 3);
    assert_eq!(
        m.take_changes().unwrap(),
        vec![
            (Lba(10), 10),
            (Lba(30), 5),
            (Lba(100), crate::format::MAX_SECTORS - 100)
        ]
    );
    assert_eq!(m.take_changes().unwrap(), vec![]);
}

fn ext(lba: u64, len: u64, obj: u64, offset: u32) -> Extent<ObjLoc> {
    Extent {
        lba: Lba(lba),
        len,
        target: loc(obj, offset),
    }
}

fn info(data: u64, live: u64) -> ObjInfo {
    ObjInfo {
        data_sectors: data,
        live_sectors: live,
    }
}

#[test]
fn from_parts_accepts_consistent_checkpoint() {
    let m = ObjectMap::from_parts(
        [ext(0, 8, 1, 0), ext(8, 8, 2, 0), ext(100, 4, 1, 8)],
        [
            (ObjSeq(1), info(16, 12)),
            (ObjSeq(2), info(8, 8)),
            (ObjSeq(3), info(8, 0)),
        ],
    )
    .unwrap();
    m.check().unwrap();
    assert_eq!(m.extent_count(), 3);
    assert_eq!(m.object(ObjSeq(3)), Some(info(8, 0)));
}

#[test]
fn from_parts_rejects_corruption() {
    let objs = || [(ObjSeq(1), info(16, 12)), (ObjSeq(2), info(8, 8))];
    type Case = (&'static str, Vec<Extent<ObjLoc>>, Vec<(ObjSeq, ObjInfo)>);
    let cases: Vec<Case> = vec![
        (
            "overlap",
            vec![ext(0, 8, 1, 0), ext(7, 8, 2, 0), ext(100, 4, 1, 8)],
            objs().to_vec(),
        ),
        (
            "unsorted",
            vec![ext(8, 8, 2, 0), ext(0, 8, 1, 0), ext(100, 4, 1, 8)],
            objs().to_vec(),
        ),
        (
            "unknown object",
            vec![ext(0, 8, 1, 0), ext(8, 8, 3, 0), ext(100, 4, 1, 8)],
            objs().to_vec(),
        ),
        (
            "live count",
            vec![ext(0, 8, 1, 0), ext(8, 8, 2, 0), ext(100, 3, 1, 8)],
            objs().to_vec(),
        ),
        (
            "live count of unreferenced object",
            vec![ext(0, 8, 1, 0), ext(8, 8, 2, 0), ext(100, 4, 1, 8)],
            vec![
                (ObjSeq(1), info(16, 12)),
                (ObjSeq(2), info(8, 8)),
                (ObjSeq(3), info(8, 1)),
            ],
        ),
        ("empty extent", vec![ext(0, 0, 1, 0)], objs().to_vec()),
        (
            "duplicate object",
            vec![],
            vec![(ObjSeq(1), info(16, 0)), (ObjSeq(1), info(16, 0))],
        ),
        (
            "overflow",
            vec![ext(u64::MAX - 1, 8, 1, 0)],
            objs().to_vec(),
        ),
    ];
    for (name, xs, os) in cases {
        assert!(ObjectMap::from_parts(xs, os).is_err(), "{name} accepted");
    }
}

#[test]
fn check_detects_removed_object_with_live_data() {
    let mut m = ObjectMap::new();
    m.add_object(ObjSeq(1), 8);
    m.apply_write(Lba(0), 8, loc(1, 0));
    m.remove_object(ObjSeq(1));
    assert!(m.check().is_err());
}

#[test]
fn replace_if_moves_only_pieces_still_at_the_expected_location() {
    let mut m: ExtentMap<Tt> = ExtentMap::new();
    let mut d = Vec::new();
    let t = |batch, off| Tt { batch, off };
    m.update(Lba(0), 100, t(1, 0), &mut d);
    m.update(Lba(20), 10, t(2, 0), &mut d); // rewritten since the copy
    m.update(Lba(50), 5, t(1, 99), &mut d); // same object, other offset
    m.remove(Lba(70), 5, &mut d);
    let moved = m.replace_if(Lba(10), 80, t(1, 10), t(9, 0));
    assert_eq!(moved, 80 - 10 - 5 - 5);
    let mut out = Vec::new();
    m.lookup(Lba(0), 100, &mut out);
    let got = expand(0, &out);
    for (lba, tgt) in got {
        let want = match lba {
            0..=9 | 90..=99 => Some(t(1, lba)),
            20..=29 => Some(t(2, lba - 20)),
            50..=54 => Some(t(1, 99 + lba - 50)),
            70..=74 => None,
            _ => Some(t(9, lba - 10)),
        };
        assert_eq!(tgt, want, "sector {lba}");
    }
}

/// `apply_move` equals "write `to` wherever the map still equals `from`"
/// on the oracle, and keeps the live counts exact.
#[test]
fn object_map_apply_move_matches_oracle() {
    for seed in 0..8 {
        let mut rng = SmallRng::seed_from_u64(1000 + seed);
        let mut m = ObjectMap::new();
        let mut o: Oracle<ObjLoc> = Oracle::default();
        let mut obj = 1u64;
        let mut offset = 0u32;
        m.add_object(ObjSeq(obj), 1 << 20);
        for op in 0..3000 {
            let s = rng.gen_range(0..2048);
            let len = rng.gen_range(1..=24);
            match rng.gen_range(0..10) {
                0..=4 => {
                    if rng.gen_bool(0.05) {
                        obj += 1;
                        offset = 0;
                        m.add_object(ObjSeq(obj), 1 << 20);
                    }
                    m.apply_write(Lba(s), len, loc(obj, offset));
                    o.update(s, len, loc(obj, offset));
                    offset += len as u32;
                }
                5 => {
                    m.apply_trim(Lba(s), len);
                    o.take(s, s + len);
                }
                _ => {
                    // A move whose expected source is taken from the map
                    // (usually) or made up (stale), then applied after
                    // an optional intervening write, as GC races clients.
                    let from = match o.sectors.get(&s) {
                        Some(&l) if rng.gen_bool(0.8) => l,
                        _ => loc(rng.gen_range(1..=obj), rng.gen_range(0..64)),
                    };
                    obj += 1;
                    let to = loc(obj, 8);
                    m.add_object(to.obj, len);
                    let mut want = 0;
                    for i in 0..len {
                        if o.sectors.get(&(s + i)) == Some(&from.advance(i)) {
                            o.sectors.insert(s + i, to.advance(i));
                            want += 1;
                        }
                    }
                    assert_eq!(m.apply_move(Lba(s), len, from, to), want, "op {op}");
                    offset = 0;
                    m.add_object(ObjSeq(obj + 1), 1 << 20);
                    obj += 1;
                }
            }
            if op % 50 == 0 {
                m.check()
                    .unwrap_or_else(|e| panic!("seed {seed} op {op}: {e}"));
            }
        }
        m.check().unwrap();
        let mut out = Vec::new();
        m.lookup(Lba(0), 2100, &mut out);
        assert_eq!(expand(0, &out), o.lookup(0, 2100), "seed {seed}");
        assert_eq!(m.mapped_sectors(), o.sectors.len() as u64);
    }
}

#[test]
fn extents_from_scans_in_slices() {
    let mut m = ObjectMap::new();
    m.add_object(ObjSeq(1), 1000);
    for i in 0..50u64 {
        m.apply_write(Lba(i * 10), 5, loc(1, i as u32 * 5));
    }
    let all: Vec<_> = m.extents().collect();
    let mut got = Vec::new();
    let mut pos = Lba(0);
    loop {
        let slice = m.extents_from(pos, 7);
        let Some(last) = slice.last() else { break };
        pos = Lba(last.end());
        got.extend(slice);
    }
    assert_eq!(got, all);
    // From the middle of an extent: that extent comes first.
    assert_eq!(m.extents_from(Lba(12), 1)[0].lba, Lba(10));
    assert_eq!(m.extents_from(Lba(16), 1)[0].lba, Lba(20));
    assert!(m.extents_from(Lba(10_000), 5).is_empty());
}

/// An [`ObjectMap`] after `ops` random changes over `[0, space)`, through
/// every path that changes it: writes into a stream of objects (some of
/// them rewriting their own ranges), trims (zero markers if `markers`),
/// GC moves of live pieces into new objects (some stale), unmapping a tail
/// beyond an end, and removing dead objects. Checked after each change.
pub(crate) fn random_object_map(seed: u64, ops: usize, space: u64, markers: bool) -> ObjectMap {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut m = ObjectMap::new();
    m.set_trim_markers(markers);
    let mut obj = 1u64;
    let mut offset = 0u32;
    m.add_object(ObjSeq(obj), 1 << 20);
    let mut out = Vec::new();
    for op in 0..ops {
        let s = rng.gen_range(0..space);
        let len = rng.gen_range(1..=16).min(space - s);
        match rng.gen_range(0..20) {
            0..=11 => {
                if rng.gen_bool(0.05) {
                    obj += 1;
                    offset = 0;
                    m.add_object(ObjSeq(obj), 1 << 20);
                }
                m.apply_write(Lba(s), len, loc(obj, offset));
                offset += len as u32 + rng.gen_range(0..2);
            }
            12..=13 => m.apply_trim(Lba(s), len),
            14..=17 => {
                out.clear();
                m.lookup(Lba(s), len, &mut out);
                let from = match out.first() {
                    Some(&(_, _, Some(l))) if !l.is_zero() && rng.gen_bool(0.8) => l,
                    _ => loc(rng.gen_range(1..=obj), rng.gen_range(0..64)),
                };
                let n = out.first().map_or(len, |p| p.1);
                obj += 1;
                m.add_object(ObjSeq(obj), n);
                m.apply_move(Lba(s), n, from, loc(obj, 8));
                obj += 1;
                offset = 0;
                m.add_object(ObjSeq(obj), 1 << 20);
            }
            18 => m.unmap(Lba(space - rng.gen_range(1..=8).min(space)), u64::MAX / 2),
            _ => {
                let dead: Vec<ObjSeq> = m
                    .objects()
                    .filter(|(o, i)| i.live_sectors == 0 && o.0 != obj)
                    .map(|(o, _)| o)
                    .collect();
                for d in dead {
                    m.remove_object(d);
                }
            }
        }
        m.check()
            .unwrap_or_else(|e| panic!("seed {seed} op {op}: {e}"));
    }
    m
}

#[test]
fn extents_of_finds_exactly_the_extents_of_the_objects() {
    for seed in 0..40 {
        let m = random_object_map(seed, 600, 512 + seed * 40, seed % 3 == 0);
        let objs: Vec<ObjSeq> = m.objects().map(|(o, _)| o).collect();
        let mut rng = SmallRng::seed_from_u64(seed);
        for _ in 0..10 {
            let set: std::collections::BTreeSet<ObjSeq> = (0..rng.gen_range(1..4))
                .map(|_| objs[rng.gen_range(0..objs.len())])
                .collect();
            let want: Vec<_> = m
                .extents()
                .filter(|x| set.contains(&x.target.obj))
                .collect();
            assert_eq!(m.extents_of(&set), want, "seed {seed} {set:?}");
        }
        // A checkpoint round trip rebuilds an index that passes the check.
        let back = ObjectMap::from_parts(m.extents(), m.objects()).unwrap();
        back.check().unwrap();
        for &o in &objs {
            let set = [o].into();
            assert_eq!(back.extents_of(&set), m.extents_of(&set), "seed {seed}");
        }
    }
}

#[test]
fn extents_in_returns_whole_overlapping_extents() {
    let mut m = ObjectMap::new();
    m.add_object(ObjSeq(1), 1000);
    for i in 0..10u64 {
        m.apply_write(Lba(i * 10), 5, loc(1, i as u32 * 5));
    }
    let got: Vec<u64> = m.extents_in(Lba(12), 20).iter().map(|x| x.lba.0).collect();
    assert_eq!(got, vec![10, 20, 30]);
    assert!(m.extents_in(Lba(15), 5).is_empty());
    assert_eq!(m.extents_in(Lba(95), u64::MAX).len(), 0);
    assert_eq!(m.extents_in(Lba(94), u64::MAX).len(), 1);
}

/// Stale ranges are bounded: an object's ranges are re-derived once many
/// of its pieces are displaced, and dropped when it has none left or
/// leaves the table.
#[test]
fn reverse_index_stays_bounded_and_goes_with_the_object() {
    let mut m = ObjectMap::new();
    m.add_object(ObjSeq(1), 1 << 20);
    m.add_object(ObjSeq(2), 1 << 20);
    // 1000 separate ranges into object 1.
    for i in 0..1000u64 {
        m.apply_write(Lba(i * 4), 2, loc(1, i as u32 * 2));
    }
    assert_eq!(m.reverse_index_size().0, 1000);
    // Overwrite 990 of them: at most about twice the 10 live extents stay.
    for i in 0..990u64 {
        m.apply_write(Lba(i * 4), 2, loc(2, i as u32 * 2));
        m.check().unwrap();
    }
    let obj1 = m.extents_of(&[ObjSeq(1)].into()).len();
    assert_eq!(obj1, 10);
    // Object 2's 990 writes are 4 sectors apart: 990 ranges, none stale.
    let ranges1 = m.reverse_index_size().0 - 990;
    assert!(ranges1 <= 2 * obj1 + 2 * 16, "{ranges1} ranges");
    // Nothing left in object 1: its ranges go at once.
    m.apply_trim(Lba(3960), 40);
    m.check().unwrap();
    assert_eq!(m.object(ObjSeq(1)).unwrap().live_sectors, 0);
    assert_eq!(m.reverse_index_size().0, 990);
    m.apply_trim(Lba(0), 4000);
    m.remove_object(ObjSeq(1));
    m.remove_object(ObjSeq(2));
    assert_eq!(m.reverse_index_size(), (0, 0));
    m.check().unwrap();
}

#[test]
fn sequential_writes_record_one_range() {
    let mut m = ObjectMap::new();
    m.add_object(ObjSeq(1), 1 << 20);
    for i in 0..1000u64 {
        m.apply_write(Lba(i * 8), 8, loc(1, i as u32 * 8));
    }
    assert_eq!(m.reverse_index_size().0, 1);
    m.check().unwrap();
}

/// After a re-derivation, a write continuing the object's last one still
/// extends its range (the map merges the two into one extent, and one
/// displaced piece must end at most one range).
#[test]
fn a_write_continuing_the_last_one_extends_its_range_after_a_compaction() {
    let n = 100u64;
    let mut compacted_last = 0;
    for j in 0..n - 1 {
        let mut m = ObjectMap::new();
        m.add_object(ObjSeq(1), 1 << 20);
        m.add_object(ObjSeq(2), 1 << 20);
        for i in 0..n {
            m.apply_write(Lba(i * 2), 1, loc(1, i as u32));
        }
        // Another object overwrites the top `j`.
        for i in (n - j..n).rev() {
            m.apply_write(Lba(i * 2), 1, loc(2, i as u32));
        }
        // Object 1 rewrites its lowest sector, then continues it.
        let before = m.reverse_index_size().0;
        m.apply_write(Lba(0), 1, loc(1, n as u32));
        if m.reverse_index_size().0 <= before {
            compacted_last += 1;
        }
        let ranges = m.reverse_index_size().0;
        m.apply_write(Lba(1), 1, loc(1, n as u32 + 1));
        assert_eq!(m.extents_of(&[ObjSeq(1)].into())[0].len, 2, "merged");
        assert_eq!(m.reverse_index_size().0, ranges, "j {j}");
        m.check().unwrap();
    }
    assert!(compacted_last > 0, "no case re-derived on the last write");
}

/// `for_each_overlapping` visits exactly the extents `iter_from` yields
/// before the range's end, across chunk boundaries and holes.
#[test]
fn for_each_overlapping_matches_a_bounded_iter_from() {
    let mut rng = SmallRng::seed_from_u64(5);
    let mut m: ExtentMap<Tt> = ExtentMap::new();
    let mut d = Vec::new();
    for i in 0..5000u32 {
        let s = rng.gen_range(0..40_000);
        let len = rng.gen_range(1..=20);
        if rng.gen_bool(0.2) {
            m.remove(Lba(s), len, &mut d);
        } else {
            m.update(Lba(s), len, Tt { batch: i, off: 0 }, &mut d);
        }
    }
    for _ in 0..2000 {
        let s = rng.gen_range(0..41_000);
        let len = rng.gen_range(0..300);
        let want: Vec<Extent<Tt>> = m
            .iter_from(Lba(s))
            .take_while(|x| x.lba.0 < s + len)
            .filter(|_| len > 0)
            .collect();
        let mut got = Vec::new();
        m.for_each_overlapping(Lba(s), len, |x| got.push(x));
        assert_eq!(got, want, "{s}+{len}");
    }
}

/// Found by review: the re-derivation walks every piece inside an
/// object's ranges. An object whose pieces are LBA-contiguous but not
/// offset-contiguous (written in any order but ascending, or loaded from a
/// checkpoint) re-derives to one range holding all its pieces; a rewrite
/// that eats it from one end displaces one piece per write and never
/// splits the run, so every 16 displacements re-walked all the remaining
/// pieces: O(pieces^2 / 32) map visits. Now a re-derivation also waits for
/// displacements of half the pieces the last one walked: the same rewrite
/// of an object written backwards walks about what one written forwards
/// does (counted, not timed).
#[test]
fn rederivation_cost_is_not_quadratic_in_an_objects_pieces() {
    fn walked(n: u64, backwards: bool) -> u64 {
        let mut m = ObjectMap::new();
        m.add_object(ObjSeq(1), n);
        m.add_object(ObjSeq(2), n);
        for i in 0..n {
            // Backwards: LBA n-1-i at offset i, so no two pieces merge.
            let lba = if backwards { n - 1 - i } else { i };
            m.apply_write(Lba(lba), 1, loc(1, i as u32));
        }
        let before = m.compact_walked;
        // A sequential rewrite in one-sector writes, from the bottom.
        for k in 0..n {
            m.apply_write(Lba(k), 1, loc(2, k as u32));
        }
        m.check().unwrap();
        m.compact_walked - before
    }
    let n = 1 << 14;
    let (fwd, bwd) = (walked(n, false), walked(n, true));
    assert!(
        bwd <= 4 * fwd.max(n),
        "rewriting {n} pieces walked {bwd} (written backwards) against {fwd} (forwards)"
    );
}
