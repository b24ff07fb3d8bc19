//! The durable map: LBA -> object location with per-object live counts.

use std::collections::{BTreeMap, BTreeSet};

use super::reverse::{merge_tail, Ranges};
use super::{Extent, ExtentMap, Target};
use crate::units::{Lba, ObjSeq};

/// Location of data in a backend object: object sequence number and offset in
/// sectors from the start of the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ObjLoc {
    /// The object.
    pub obj: ObjSeq,
    /// Sectors from the start of the object.
    pub offset: u32,
}

impl ObjLoc {
    /// The zero marker of a clone's map: the range reads as zeros and hides
    /// the parent (object sequence 0 never names an object).
    pub const ZERO: ObjLoc = ObjLoc {
        obj: ObjSeq(0),
        offset: 0,
    };

    /// Whether this is [`ObjLoc::ZERO`].
    pub fn is_zero(&self) -> bool {
        self.obj.0 == 0
    }
}

impl Target for ObjLoc {
    fn advance(self, sectors: u64) -> Self {
        if self.is_zero() {
            return self;
        }
        ObjLoc {
            obj: self.obj,
            offset: self.offset + sectors as u32,
        }
    }
}

/// [`ObjLoc`] packed into 12 bytes with 4-byte alignment (a plain `ObjLoc`
/// pads to 16), so the durable map stores 20 bytes per entry slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct PackedLoc {
    obj: [u32; 2],
    offset: u32,
}

impl From<ObjLoc> for PackedLoc {
    fn from(l: ObjLoc) -> Self {
        PackedLoc {
            obj: [l.obj.0 as u32, (l.obj.0 >> 32) as u32],
            offset: l.offset,
        }
    }
}

impl From<PackedLoc> for ObjLoc {
    fn from(p: PackedLoc) -> Self {
        ObjLoc {
            obj: ObjSeq(u64::from(p.obj[0]) | (u64::from(p.obj[1]) << 32)),
            offset: p.offset,
        }
    }
}

impl Target for PackedLoc {
    fn advance(self, sectors: u64) -> Self {
        if self.obj == [0, 0] {
            return self;
        }
        PackedLoc {
            obj: self.obj,
            offset: self.offset + sectors as u32,
        }
    }
}

fn unpack(x: Extent<PackedLoc>) -> Extent<ObjLoc> {
    Extent {
        lba: x.lba,
        len: x.len,
        target: x.target.into(),
    }
}

/// Per-object accounting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ObjInfo {
    /// Sectors of write data the object holds.
    pub data_sectors: u64,
    /// Sectors of that data still mapped.
    pub live_sectors: u64,
}

/// One row of the object table: the accounting and the reverse index.
#[derive(Clone, Debug, Default)]
struct ObjEntry {
    info: ObjInfo,
    /// LBA ranges that may map into the object (a superset of its extents).
    ranges: Ranges,
}

/// An object's recorded ranges are re-derived from the map once the pieces
/// displaced from it since the last time reach half its ranges plus this.
/// A displaced piece ends at most one recorded range (ranges extend like
/// the map merges), so at most about half of an object's ranges are stale:
/// it keeps at most about `2 * live extents + 2 * COMPACT_SLACK` ranges.
/// The re-derivation walks the pieces of the map inside the ranges, about
/// one per range (ranges extend only where the map would merge), paid for
/// by the displaced pieces that triggered it.
const COMPACT_SLACK: u32 = 16;

/// Whether an object with `ranges` recorded ranges and `debits` pieces
/// displaced since they were derived is due for re-derivation.
fn compaction_due(ranges: usize, debits: u32) -> bool {
    u64::from(debits) >= ranges as u64 / 2 + u64::from(COMPACT_SLACK)
}

/// The durable map: LBA -> [`ObjLoc`], plus per-object live-sector counts kept
/// exactly in step with it, plus a reverse index (per object, the LBA ranges
/// that may map into it) so that GC gathers a victim's extents without
/// scanning the whole map ([`Self::extents_of`]).
///
/// The reverse index lives in memory only: it is rebuilt from the extents
/// at load ([`Self::from_parts`]) and by the roll-forward's writes and
/// moves. It is lazy: each write or move applied into an object records its
/// range, overwrites remove nothing, and readers keep only the pieces still
/// mapped into the object. An object's ranges are dropped when it has no
/// live sector left or leaves the table, and re-derived from the map when
/// many may be stale (see `COMPACT_SLACK`).
#[derive(Clone, Debug, Default)]
pub struct ObjectMap {
    map: ExtentMap<PackedLoc>,
    objects: BTreeMap<ObjSeq, ObjEntry>,
    scratch: Vec<Extent<PackedLoc>>,
    /// Objects whose ranges may be due for re-derivation after the current
    /// change (filled by `debit`).
    due: Vec<ObjSeq>,
    /// The object whose ranges grew last: its spare capacity is given back
    /// when another object's ranges start growing.
    growing: Option<ObjSeq>,
    /// A clone's map: trims leave [`ObjLoc::ZERO`] markers instead of
    /// holes, since a hole reads through to the parent.
    markers: bool,
    /// The LBA ranges changed since tracking began or the last
    /// [`Self::take_changes`] (start -> end, disjoint, adjacent ones
    /// joined), if tracked: what a delta checkpoint must rewrite.
    changes: Option<BTreeMap<u64, u64>>,
    /// Pieces of the map every re-derivation so far walked (tests: its
    /// cost).
    #[cfg(test)]
    pub(super) compact_walked: u64,
}

impl ObjectMap {
    /// An empty map with no objects.
    pub fn new() -> Self {
        Self::default()
    }

    /// Register an object holding `data_sectors` of write data. Its live count
    /// starts at 0; writes applied with [`Self::apply_write`] add to it.
    /// Registering an object again replaces its `data_sectors` only.
    pub fn add_object(&mut self, obj: ObjSeq, data_sectors: u64) {
        self.objects.entry(obj).or_default().info.data_sectors = data_sectors;
    }

    /// Map `[lba, lba+len)` to `loc`, moving live sectors from the displaced
    /// objects to `loc.obj`. `loc.obj` should have been registered with
    /// [`Self::add_object`]; if not, it is registered with `data_sectors` 0
    /// (and debug builds panic, as that is a caller bug).
    pub fn apply_write(&mut self, lba: Lba, len: u64, loc: ObjLoc) {
        if len == 0 {
            return;
        }
        self.note_change(lba, len);
        let mut displaced = std::mem::take(&mut self.scratch);
        displaced.clear();
        self.map.update(lba, len, loc.into(), &mut displaced);
        self.debit(&displaced);
        debug_assert!(
            self.objects.contains_key(&loc.obj),
            "write to unregistered object {}",
            loc.obj
        );
        self.objects.entry(loc.obj).or_default().info.live_sectors += len;
        self.record(loc.obj, lba, len, loc.offset);
        self.scratch = displaced;
        self.compact_due();
    }

    /// Note in the reverse index that `[lba, lba+len)` may map into `obj`.
    fn record(&mut self, obj: ObjSeq, lba: Lba, len: u64, off: u32) {
        if obj.0 == 0 {
            return;
        }
        if self.growing != Some(obj) {
            if let Some(e) = self.growing.and_then(|g| self.objects.get_mut(&g)) {
                e.ranges.shrink();
            }
            self.growing = Some(obj);
        }
        if let Some(e) = self.objects.get_mut(&obj) {
            e.ranges.record(lba.0, len, u64::from(off));
        }
    }

    /// Re-derive the ranges of the objects `debit` found due.
    fn compact_due(&mut self) {
        while let Some(obj) = self.due.pop() {
            if self
                .objects
                .get(&obj)
                .is_some_and(|e| compaction_due(e.ranges.len(), e.ranges.debits))
            {
                self.compact(obj);
            }
        }
    }

    /// Replace `obj`'s recorded ranges by its live extents, read from the
    /// map (contiguous ones as one range).
    fn compact(&mut self, obj: ObjSeq) {
        let Some(e) = self.objects.get_mut(&obj) else {
            return;
        };
        let mut iv = Vec::new();
        e.ranges.union_into(&mut iv);
        // (start, len, object offset at start): pieces join where both the
        // LBA and the offset continue, as the map merges.
        let mut runs: Vec<(u64, u64, u64)> = Vec::new();
        #[cfg(test)]
        let mut walked = 0u64;
        for (s, end) in iv {
            self.map.for_each_piece(Lba(s), end - s, |l, n, t| {
                #[cfg(test)]
                {
                    walked += 1;
                }
                let Some(t) = t.map(ObjLoc::from).filter(|t| t.obj == obj) else {
                    return;
                };
                let off = u64::from(t.offset);
                match runs.last_mut() {
                    Some(r) if r.0 + r.1 == l.0 && r.2 + r.1 == off => r.1 += n,
                    _ => runs.push((l.0, n, off)),
                }
            });
        }
        // The run ending where the last recorded range ended is recorded
        // last, so that a write continuing it (which the map merges into
        // it) still extends it: one displaced piece then still ends at most
        // one range.
        let last = e.ranges.open_end();
        let keep = runs.iter().position(|r| Some(r.0 + r.1) == last);
        let mut fresh = Ranges::default();
        for (i, &(s, n, off)) in runs.iter().enumerate() {
            if Some(i) != keep {
                fresh.record(s, n, off);
            }
        }
        if let Some(i) = keep {
            fresh.record(runs[i].0, runs[i].1, runs[i].2);
        }
        fresh.shrink();
        e.ranges = fresh;
        #[cfg(test)]
        {
            self.compact_walked += walked;
        }
    }

    /// Make trims leave zero markers (a clone's map), or holes (default).
    pub fn set_trim_markers(&mut self, on: bool) {
        self.markers = on;
    }

    /// Whether trims leave zero markers.
    pub fn trim_markers(&self) -> bool {
        self.markers
    }

    /// Unmap `[lba, lba+len)`, zero markers included, whatever
    /// [`Self::trim_markers`] says (for ranges beyond the end of the disk).
    pub fn unmap(&mut self, lba: Lba, len: u64) {
        self.note_change(lba, len);
        let mut displaced = std::mem::take(&mut self.scratch);
        displaced.clear();
        self.map.remove(lba, len, &mut displaced);
        self.debit(&displaced);
        self.scratch = displaced;
        self.compact_due();
    }

    /// Unmap `[lba, lba+len)` (trim). In a clone's map the range is mapped
    /// to [`ObjLoc::ZERO`] instead, so it no longer reads through.
    pub fn apply_trim(&mut self, lba: Lba, len: u64) {
        self.note_change(lba, len);
        let mut displaced = std::mem::take(&mut self.scratch);
        displaced.clear();
        if self.markers {
            self.map
                .update(lba, len, ObjLoc::ZERO.into(), &mut displaced);
        } else {
            self.map.remove(lba, len, &mut displaced);
        }
        self.debit(&displaced);
        self.scratch = displaced;
        self.compact_due();
    }

    fn debit(&mut self, displaced: &[Extent<PackedLoc>]) {
        for d in displaced {
            let obj = ObjLoc::from(d.target).obj;
            if obj.0 == 0 {
                continue;
            }
            self.debit_one(obj, d.len);
        }
    }

    /// `sectors` of one displaced piece leave `obj`: its live count drops,
    /// and its recorded ranges go once nothing maps into it, or become due
    /// for re-derivation once enough pieces left.
    fn debit_one(&mut self, obj: ObjSeq, sectors: u64) {
        match self.objects.get_mut(&obj) {
            Some(e) => {
                debug_assert!(e.info.live_sectors >= sectors, "live underflow in {obj}");
                e.info.live_sectors = e.info.live_sectors.saturating_sub(sectors);
                if e.info.live_sectors == 0 {
                    e.ranges.clear();
                } else {
                    e.ranges.debits = e.ranges.debits.saturating_add(1);
                    if compaction_due(e.ranges.len(), e.ranges.debits) {
                        self.due.push(obj);
                    }
                }
            }
            None => debug_assert!(false, "extent in unknown object {obj}"),
        }
    }

    /// GC move: where `[lba, lba+len)` still maps exactly to `from` (sector
    /// `lba + i` at `from.advance(i)`), map it to `to.advance(i)` instead,
    /// moving those live sectors from `from.obj` to `to.obj`. Pieces that
    /// were rewritten or trimmed since stay as they are. `to.obj` should be
    /// registered (as for [`Self::apply_write`]). Returns the sectors moved.
    pub fn apply_move(&mut self, lba: Lba, len: u64, from: ObjLoc, to: ObjLoc) -> u64 {
        if len == 0 || from.obj == to.obj {
            return 0;
        }
        let moved = self.map.replace_if(lba, len, from.into(), to.into());
        if moved == 0 {
            return 0;
        }
        self.note_change(lba, len);
        self.debit_one(from.obj, moved);
        debug_assert!(
            self.objects.contains_key(&to.obj),
            "move to unregistered object {}",
            to.obj
        );
        self.objects.entry(to.obj).or_default().info.live_sectors += moved;
        // The whole range: the pieces not moved are found stale later.
        self.record(to.obj, lba, len, to.offset);
        self.compact_due();
        moved
    }

    /// Record, from now on, the LBA ranges every change touches (see
    /// [`Self::take_changes`]), starting from none.
    pub fn track_changes(&mut self) {
        self.changes = Some(BTreeMap::new());
    }

    /// The ranges changed since tracking began or the last take, ascending,
    /// disjoint, adjacent ones joined and clipped to the largest image;
    /// recording goes on from none. `None` if changes are not tracked.
    pub fn take_changes(&mut self) -> Option<Vec<(Lba, u64)>> {
        let c = self.changes.as_mut()?;
        let max = crate::format::MAX_SECTORS;
        let out = std::mem::take(c)
            .into_iter()
            .filter(|&(s, _)| s < max)
            .map(|(s, e)| (Lba(s), e.min(max) - s))
            .collect();
        Some(out)
    }

    /// The extents inside `ranges` (ascending, disjoint), clipped to them,
    /// in LBA order: what a delta checkpoint holds for them.
    pub fn clipped_extents(&self, ranges: &[(Lba, u64)]) -> Vec<Extent<ObjLoc>> {
        let mut out = Vec::new();
        for &(lba, len) in ranges {
            self.map.for_each_piece(lba, len, |s, l, t| {
                if let Some(t) = t {
                    out.push(Extent {
                        lba: s,
                        len: l,
                        target: ObjLoc::from(t),
                    });
                }
            });
        }
        out
    }

    /// How many disjoint changed ranges are recorded (0 if not tracked).
    pub fn changed_ranges(&self) -> usize {
        self.changes.as_ref().map_or(0, |c| c.len())
    }

    fn note_change(&mut self, lba: Lba, len: u64) {
        let Some(c) = self.changes.as_mut() else {
            return;
        };
        if len == 0 {
            return;
        }
        let (mut s, mut e) = (lba.0, lba.0.saturating_add(len));
        if let Some((&ps, &pe)) = c.range(..=s).next_back() {
            if pe >= s {
                s = ps;
                e = e.max(pe);
                c.remove(&ps);
            }
        }
        while let Some((&ns, &ne)) = c.range(s..).next() {
            if ns > e {
                break;
            }
            e = e.max(ne);
            c.remove(&ns);
        }
        c.insert(s, e);
    }

    /// Up to `max` extents in LBA order, from the one containing `lba` (or
    /// the first after it). For scans in slices under a short lock.
    pub fn extents_from(&self, lba: Lba, max: usize) -> Vec<Extent<ObjLoc>> {
        self.map.iter_from(lba).take(max).map(unpack).collect()
    }

    /// Every extent mapped into one of `objs`, whole, in LBA order. Found
    /// through the reverse index: the cost is O(their recorded ranges, and
    /// the extents overlapping those), whatever the size of the map. In one
    /// go; [`Self::reverse_ranges`] and [`Self::extents_of_in`] do the same
    /// in slices.
    pub fn extents_of(&self, objs: &BTreeSet<ObjSeq>) -> Vec<Extent<ObjLoc>> {
        let mut out = Vec::new();
        self.extents_of_in(objs, &self.reverse_ranges(objs), &mut out);
        out
    }

    /// The LBA ranges that may map into `objs`, as `(start, len)`: sorted,
    /// disjoint and not adjacent. Every extent mapped into one of `objs`
    /// lies inside one of them, now and after any later change that maps
    /// nothing new into `objs` (an object's extents only shrink once it is
    /// applied, so a GC cycle can look its victims' extents up in slices).
    pub fn reverse_ranges(&self, objs: &BTreeSet<ObjSeq>) -> Vec<(Lba, u64)> {
        let mut iv = Vec::new();
        for o in objs {
            if let Some(e) = self.objects.get(o) {
                e.ranges.union_into(&mut iv);
            }
        }
        merge_tail(&mut iv, 0);
        iv.into_iter().map(|(s, e)| (Lba(s), e - s)).collect()
    }

    /// Append to `out` the extents mapped into `objs` that lie inside
    /// `ranges` (a slice of [`Self::reverse_ranges`]), whole, in LBA order,
    /// skipping any that would not come strictly after `out`'s last.
    pub fn extents_of_in(
        &self,
        objs: &BTreeSet<ObjSeq>,
        ranges: &[(Lba, u64)],
        out: &mut Vec<Extent<ObjLoc>>,
    ) {
        for &(s, len) in ranges {
            self.map.for_each_overlapping(s, len, |x| {
                let x = unpack(x);
                // Each extent into `objs` lies inside one range (the index
                // covers it), so it is met once; the check keeps the output
                // strictly ordered all the same.
                if objs.contains(&x.target.obj) && out.last().is_none_or(|p| p.end() <= x.lba.0) {
                    out.push(x);
                }
            });
        }
    }

    /// Like [`Self::extents_of_in`] over all of `ranges`, but visiting at
    /// most `max` extents of the map per call (one merged range can span
    /// any number of other objects' extents): resumes at `pos` (range
    /// index, LBA; start with `(0, 0)`) and leaves it where the next call
    /// goes on. Returns true once every range is done. Between calls the
    /// map may change; the output stays whole extents in strictly
    /// ascending order.
    pub fn extents_of_bounded(
        &self,
        objs: &BTreeSet<ObjSeq>,
        ranges: &[(Lba, u64)],
        pos: &mut (usize, u64),
        max: usize,
        out: &mut Vec<Extent<ObjLoc>>,
    ) -> bool {
        let mut visited = 0usize;
        while let Some(&(s, len)) = ranges.get(pos.0) {
            let end = s.0.saturating_add(len);
            for x in self.map.iter_from(Lba(pos.1.max(s.0))) {
                if x.lba.0 >= end {
                    break;
                }
                if visited == max.max(1) {
                    pos.1 = x.lba.0;
                    return false;
                }
                visited += 1;
                let x = unpack(x);
                if objs.contains(&x.target.obj) && out.last().is_none_or(|p| p.end() <= x.lba.0) {
                    out.push(x);
                }
            }
            *pos = (pos.0 + 1, 0);
        }
        true
    }

    /// The extents overlapping `[lba, lba+len)`, whole, in LBA order.
    pub fn extents_in(&self, lba: Lba, len: u64) -> Vec<Extent<ObjLoc>> {
        let mut out = Vec::new();
        self.map
            .for_each_overlapping(lba, len, |x| out.push(unpack(x)));
        out
    }

    /// Ranges held by the reverse index, and their heap bytes.
    pub fn reverse_index_size(&self) -> (usize, usize) {
        self.objects.values().fold((0, 0), |(n, b), e| {
            (n + e.ranges.len(), b + e.ranges.heap_bytes())
        })
    }

    /// Append to `out` the pieces covering `[lba, lba+len)`, as
    /// [`ExtentMap::lookup`].
    pub fn lookup(&self, lba: Lba, len: u64, out: &mut Vec<(Lba, u64, Option<ObjLoc>)>) {
        self.map
            .for_each_piece(lba, len, |s, l, t| out.push((s, l, t.map(ObjLoc::from))));
    }

    /// All objects, sorted by sequence number.
    pub fn objects(&self) -> impl Iterator<Item = (ObjSeq, ObjInfo)> + '_ {
        self.objects.iter().map(|(&k, v)| (k, v.info))
    }

    /// One object's accounting.
    pub fn object(&self, obj: ObjSeq) -> Option<ObjInfo> {
        self.objects.get(&obj).map(|e| e.info)
    }

    /// Forget an object. Only for objects with no live sectors, or for GC once
    /// it has remapped the live data elsewhere: extents still pointing at a
    /// removed object make [`Self::check`] fail. Its reverse index goes
    /// with it.
    pub fn remove_object(&mut self, obj: ObjSeq) -> Option<ObjInfo> {
        if self.growing == Some(obj) {
            self.growing = None;
        }
        self.objects.remove(&obj).map(|e| e.info)
    }

    /// All extents in LBA order.
    pub fn extents(&self) -> impl Iterator<Item = Extent<ObjLoc>> + '_ {
        self.map.iter().map(unpack)
    }

    /// Number of extents.
    pub fn extent_count(&self) -> usize {
        self.map.len()
    }

    /// Total mapped sectors.
    pub fn mapped_sectors(&self) -> u64 {
        self.map.mapped_sectors()
    }

    /// Rebuild from a checkpoint: extents (sorted, non-overlapping) and the
    /// object table. A corrupt checkpoint is refused, never loaded: the error
    /// names the first problem (empty, overlapping or unsorted extents, an
    /// unknown or duplicate object, or a live count that differs from the one
    /// recomputed from the extents). The reverse index is rebuilt from the
    /// extents, one range per run of adjacent extents of an object.
    pub fn from_parts(
        extents: impl IntoIterator<Item = Extent<ObjLoc>>,
        objects: impl IntoIterator<Item = (ObjSeq, ObjInfo)>,
    ) -> Result<ObjectMap, String> {
        let mut b = MapBuilder::new();
        for x in extents {
            b.push(x)?;
        }
        b.finish(objects)
    }

    /// Check that every extent references a known object, that each
    /// object's live count equals the sectors mapped to it, and that the
    /// reverse index covers every extent (its recorded ranges hold each
    /// extent mapped into the object), holds nothing for an object with no
    /// live sector, and has re-derived every object due for it.
    pub fn check(&self) -> Result<(), String> {
        let mut live: BTreeMap<ObjSeq, u64> = BTreeMap::new();
        let mut unions: BTreeMap<ObjSeq, Vec<(u64, u64)>> = BTreeMap::new();
        for (obj, e) in &self.objects {
            let n = e.ranges.iter().count();
            if n != e.ranges.len() {
                return Err(format!(
                    "object {obj} counts {} recorded ranges but holds {n}",
                    e.ranges.len()
                ));
            }
            if e.info.live_sectors == 0 && n > 0 {
                return Err(format!("object {obj} has no live sector but {n} ranges"));
            }
            if compaction_due(n, e.ranges.debits) {
                return Err(format!(
                    "object {obj} has {n} ranges and {} pieces displaced since: not re-derived",
                    e.ranges.debits
                ));
            }
            let mut u = Vec::new();
            e.ranges.union_into(&mut u);
            unions.insert(*obj, u);
        }
        for x in self.extents().filter(|x| !x.target.is_zero()) {
            let Some(u) = unions.get(&x.target.obj) else {
                return Err(format!(
                    "extent at {} references unknown object {}",
                    x.lba, x.target.obj
                ));
            };
            *live.entry(x.target.obj).or_default() += x.len;
            let i = u.partition_point(|&(s, _)| s <= x.lba.0);
            if i == 0 || u[i - 1].1 < x.end() {
                return Err(format!(
                    "extent at {}+{} into object {} is not in its reverse index",
                    x.lba, x.len, x.target.obj
                ));
            }
        }
        for (obj, e) in &self.objects {
            let counted = live.get(obj).copied().unwrap_or(0);
            if counted != e.info.live_sectors {
                return Err(format!(
                    "object {obj} records {} live sectors but its extents hold {counted}",
                    e.info.live_sectors
                ));
            }
        }
        #[cfg(test)]
        self.map.check_structure()?;
        Ok(())
    }
}

/// Builds an [`ObjectMap`] from a checkpoint chain: the extents of a full
/// checkpoint in LBA order ([`MapBuilder::push`]), then each delta's
/// ranges, cleared ([`MapBuilder::clear_range`]) and refilled with its
/// extents ([`MapBuilder::put`]), then the newest checkpoint's object
/// table ([`MapBuilder::finish`], which checks the result).
#[derive(Default)]
pub struct MapBuilder {
    map: ExtentMap<PackedLoc>,
    prev_end: u64,
    n: u64,
    scratch: Vec<Extent<PackedLoc>>,
}

impl MapBuilder {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    fn check(&self, x: &Extent<ObjLoc>) -> Result<u64, String> {
        let n = self.n;
        if x.len == 0 {
            return Err(format!("extent #{n} at {} is empty", x.lba));
        }
        let end = x
            .lba
            .0
            .checked_add(x.len)
            .ok_or_else(|| format!("extent #{n} at {} overflows", x.lba))?;
        if u64::from(x.target.offset) + x.len > u64::from(u32::MAX) + 1 {
            return Err(format!("extent #{n} at {} runs past offset 2^32", x.lba));
        }
        Ok(end)
    }

    /// The next extent of a full checkpoint: after every extent pushed so
    /// far, non-empty, within offset 2^32.
    pub fn push(&mut self, x: Extent<ObjLoc>) -> Result<(), String> {
        let end = self.check(&x)?;
        if x.lba.0 < self.prev_end {
            return Err(format!(
                "extent #{} at {} overlaps or precedes the previous one (ending at {})",
                self.n, x.lba, self.prev_end
            ));
        }
        self.map.push_back(x.lba.0, x.len, x.target.into());
        self.prev_end = end;
        self.n += 1;
        Ok(())
    }

    /// Unmap `[lba, lba+len)`: a delta's range, before its extents.
    pub fn clear_range(&mut self, lba: Lba, len: u64) {
        self.scratch.clear();
        self.map.remove(lba, len, &mut self.scratch);
    }

    /// Map one extent of a delta (into a range it cleared: the caller
    /// checks that it lies inside one).
    pub fn put(&mut self, x: Extent<ObjLoc>) -> Result<(), String> {
        self.check(&x)?;
        self.scratch.clear();
        self.map
            .update(x.lba, x.len, x.target.into(), &mut self.scratch);
        self.n += 1;
        Ok(())
    }

    /// The map with `objects` as its table. A corrupt checkpoint is
    /// refused, never loaded: the error names the first problem (an
    /// unknown or duplicate object, or a live count that differs from the
    /// one recomputed from the extents).
    pub fn finish(
        self,
        objects: impl IntoIterator<Item = (ObjSeq, ObjInfo)>,
    ) -> Result<ObjectMap, String> {
        let mut table: BTreeMap<ObjSeq, ObjEntry> = BTreeMap::new();
        // The recorded live counts, checked against the recomputed ones.
        let mut expected: Vec<(ObjSeq, u64)> = Vec::new();
        for (obj, info) in objects {
            let row = ObjEntry {
                info: ObjInfo {
                    data_sectors: info.data_sectors,
                    live_sectors: 0,
                },
                ranges: Ranges::default(),
            };
            if table.insert(obj, row).is_some() {
                return Err(format!("object {obj} listed twice"));
            }
            expected.push((obj, info.live_sectors));
        }
        expected.sort_unstable();
        // The reverse index is rebuilt from the extents in LBA order, one
        // range per run of adjacent extents of an object.
        for x in self.map.iter().map(unpack) {
            if x.target.is_zero() {
                continue;
            }
            let Some(row) = table.get_mut(&x.target.obj) else {
                return Err(format!(
                    "extent at {} references unknown object {}",
                    x.lba, x.target.obj
                ));
            };
            row.info.live_sectors += x.len;
            row.ranges
                .record(x.lba.0, x.len, u64::from(x.target.offset));
        }
        for ((obj, row), (_, want)) in table.iter_mut().zip(expected) {
            if row.info.live_sectors != want {
                return Err(format!(
                    "object {obj} records {want} live sectors but its extents hold {}",
                    row.info.live_sectors
                ));
            }
            row.ranges.shrink();
        }
        Ok(ObjectMap {
            map: self.map,
            objects: table,
            scratch: Vec::new(),
            due: Vec::new(),
            growing: None,
            markers: false,
            changes: None,
            #[cfg(test)]
            compact_walked: 0,
        })
    }
}
