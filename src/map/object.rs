//! The durable map: LBA -> object location with per-object live counts.

use std::collections::BTreeMap;

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

/// The durable map: LBA -> [`ObjLoc`], plus per-object live-sector counts kept
/// exactly in step with it.
#[derive(Clone, Debug, Default)]
pub struct ObjectMap {
    map: ExtentMap<PackedLoc>,
    objects: BTreeMap<ObjSeq, ObjInfo>,
    scratch: Vec<Extent<PackedLoc>>,
    /// A clone's map: trims leave [`ObjLoc::ZERO`] markers instead of
    /// holes, since a hole reads through to the parent.
    markers: bool,
    /// The LBA ranges changed since tracking began or the last
    /// [`Self::take_changes`] (start -> end, disjoint, adjacent ones
    /// joined), if tracked: what a delta checkpoint must rewrite.
    changes: Option<BTreeMap<u64, u64>>,
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
        self.objects.entry(obj).or_default().data_sectors = data_sectors;
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
        self.objects.entry(loc.obj).or_default().live_sectors += len;
        self.scratch = displaced;
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
    }

    fn debit(&mut self, displaced: &[Extent<PackedLoc>]) {
        for d in displaced {
            let obj = ObjLoc::from(d.target).obj;
            if obj.0 == 0 {
                continue;
            }
            match self.objects.get_mut(&obj) {
                Some(info) => {
                    debug_assert!(info.live_sectors >= d.len, "live underflow in {obj}");
                    info.live_sectors = info.live_sectors.saturating_sub(d.len);
                }
                None => debug_assert!(false, "extent in unknown object {obj}"),
            }
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
        match self.objects.get_mut(&from.obj) {
            Some(info) => {
                debug_assert!(info.live_sectors >= moved, "live underflow in {}", from.obj);
                info.live_sectors = info.live_sectors.saturating_sub(moved);
            }
            None => debug_assert!(false, "extent in unknown object {}", from.obj),
        }
        debug_assert!(
            self.objects.contains_key(&to.obj),
            "move to unregistered object {}",
            to.obj
        );
        self.objects.entry(to.obj).or_default().live_sectors += moved;
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
    pub fn extents_in(&self, ranges: &[(Lba, u64)]) -> Vec<Extent<ObjLoc>> {
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

    /// Append to `out` the pieces covering `[lba, lba+len)`, as
    /// [`ExtentMap::lookup`].
    pub fn lookup(&self, lba: Lba, len: u64, out: &mut Vec<(Lba, u64, Option<ObjLoc>)>) {
        self.map
            .for_each_piece(lba, len, |s, l, t| out.push((s, l, t.map(ObjLoc::from))));
    }

    /// All objects, sorted by sequence number.
    pub fn objects(&self) -> impl Iterator<Item = (ObjSeq, ObjInfo)> + '_ {
        self.objects.iter().map(|(&k, &v)| (k, v))
    }

    /// One object's accounting.
    pub fn object(&self, obj: ObjSeq) -> Option<ObjInfo> {
        self.objects.get(&obj).copied()
    }

    /// Forget an object. Only for objects with no live sectors, or for GC once
    /// it has remapped the live data elsewhere: extents still pointing at a
    /// removed object make [`Self::check`] fail.
    pub fn remove_object(&mut self, obj: ObjSeq) -> Option<ObjInfo> {
        self.objects.remove(&obj)
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
    /// recomputed from the extents).
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

    /// Check that every extent references a known object and that each
    /// object's live count equals the sectors mapped to it.
    pub fn check(&self) -> Result<(), String> {
        let mut live: BTreeMap<ObjSeq, u64> = BTreeMap::new();
        for x in self.extents().filter(|x| !x.target.is_zero()) {
            if !self.objects.contains_key(&x.target.obj) {
                return Err(format!(
                    "extent at {} references unknown object {}",
                    x.lba, x.target.obj
                ));
            }
            *live.entry(x.target.obj).or_default() += x.len;
        }
        for (obj, info) in &self.objects {
            let counted = live.get(obj).copied().unwrap_or(0);
            if counted != info.live_sectors {
                return Err(format!(
                    "object {obj} records {} live sectors but its extents hold {counted}",
                    info.live_sectors
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
        let mut table = BTreeMap::new();
        for (obj, info) in objects {
            if table.insert(obj, info).is_some() {
                return Err(format!("object {obj} listed twice"));
            }
        }
        let mut live: BTreeMap<ObjSeq, u64> = BTreeMap::new();
        for x in self.map.iter().map(unpack) {
            if x.target.is_zero() {
                continue;
            }
            if !table.contains_key(&x.target.obj) {
                return Err(format!(
                    "extent at {} references unknown object {}",
                    x.lba, x.target.obj
                ));
            }
            *live.entry(x.target.obj).or_default() += x.len;
        }
        for (obj, info) in &table {
            let counted = live.get(obj).copied().unwrap_or(0);
            if counted != info.live_sectors {
                return Err(format!(
                    "object {obj} records {} live sectors but its extents hold {counted}",
                    info.live_sectors
                ));
            }
        }
        Ok(ObjectMap {
            map: self.map,
            objects: table,
            scratch: Vec::new(),
            markers: false,
            changes: None,
        })
    }
}
