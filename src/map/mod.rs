//! Extent maps: which sectors of the disk live where.
//!
//! [`ExtentMap`] maps LBA ranges to targets of any [`Target`] type (the
//! durable map uses [`ObjLoc`]; the in-memory overlay of not-yet-destaged
//! writes uses a journal location). [`ObjectMap`] is the durable map plus the
//! per-object live-sector accounting and the per-object reverse index (LBA
//! ranges that may map into each object, about 5 bytes each) that garbage
//! collection needs.
//!
//! # Representation
//!
//! Ten million extents must fit in at most 32 heap bytes each, so the map is
//! not a `BTreeMap` of extents (std's B-tree nodes are ~2/3 full on random
//! insertion, which costs about 50 bytes per 32-byte entry). Instead a
//! `BTreeMap` indexes *chunks*: fixed-capacity sorted arrays of [`CAP`]
//! packed entries stored as parallel arrays (`u32` start offset, `u32`
//! length, target).
//!
//! Each chunk is keyed by its *fence*: chunk `i` owns the start LBAs in
//! `[fence_i, fence_{i+1})`, and stores each start as a `u32` offset from its
//! fence. Only extent *starts* are partitioned; an extent may run past the
//! next fence. Fences move only when entries are shifted between neighbours,
//! so ordinary updates never re-key the index.
//!
//! A full chunk first lends entries to a neighbour with room and splits only
//! when both neighbours are full, and a chunk that shrinks below a quarter is
//! merged into a neighbour, which keeps chunks well filled (see
//! `examples/map_memory.rs` for measured figures). Appending past the last
//! entry of a full chunk starts a new chunk rather than splitting, so
//! sequentially built maps (checkpoint load, sequential writes) are ~100% full.
//!
//! An update touches the index O(log n) times and memmoves at most one chunk
//! per piece touched.

use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Unbounded};

use crate::units::Lba;

#[cfg(test)]
pub(crate) mod tests;

mod object;
mod reverse;
pub use object::{MapBuilder, ObjInfo, ObjLoc, ObjectMap};

/// Entries per chunk. 128 keeps a chunk (~2.5 KiB for the durable map) small
/// enough that inserting into one is a short memmove, and large enough that
/// per-chunk overhead (index entry, box) is about one byte per extent.
pub const CAP: usize = 128;

/// Longest extent stored as one entry; longer updates are stored as several.
const MAX_EXTENT: u64 = u32::MAX as u64;

/// Chunks are merged into a neighbour when they shrink below this.
const MIN_FILL: usize = CAP / 4;

/// What an extent points at.
pub trait Target: Copy + Eq + std::fmt::Debug {
    /// The target of the sector `sectors` further in (used when an extent is
    /// split or clipped).
    fn advance(self, sectors: u64) -> Self;
}

/// A run of `len` sectors starting at `lba`, mapped to `target` (which
/// describes sector `lba`; sector `lba + i` maps to `target.advance(i)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent<T> {
    /// First sector.
    pub lba: Lba,
    /// Length in sectors, greater than zero.
    pub len: u64,
    /// Where sector `lba` lives.
    pub target: T,
}

impl<T> Extent<T> {
    /// One past the last sector.
    pub fn end(&self) -> u64 {
        self.lba.0 + self.len
    }
}

/// The packed storage of one chunk: parallel arrays, the first `n` valid.
#[derive(Clone, Debug)]
struct Node<T> {
    offs: [u32; CAP],
    lens: [u32; CAP],
    targets: [T; CAP],
}

/// A sorted run of up to [`CAP`] entries; starts are offsets from the fence.
#[derive(Clone, Debug)]
struct Chunk<T> {
    n: usize,
    node: Box<Node<T>>,
}

impl<T: Target> Chunk<T> {
    /// An empty chunk. `fill` only initialises the unused target slots.
    fn new(fill: T) -> Self {
        Chunk {
            n: 0,
            node: Box::new(Node {
                offs: [0; CAP],
                lens: [0; CAP],
                targets: [fill; CAP],
            }),
        }
    }

    fn is_full(&self) -> bool {
        self.n == CAP
    }

    fn start(&self, fence: u64, i: usize) -> u64 {
        fence + u64::from(self.node.offs[i])
    }

    fn end(&self, fence: u64, i: usize) -> u64 {
        self.start(fence, i) + u64::from(self.node.lens[i])
    }

    fn get(&self, fence: u64, i: usize) -> Extent<T> {
        Extent {
            lba: Lba(self.start(fence, i)),
            len: u64::from(self.node.lens[i]),
            target: self.node.targets[i],
        }
    }

    /// Number of entries starting before `lba`.
    fn rank(&self, fence: u64, lba: u64) -> usize {
        if lba <= fence {
            return 0;
        }
        let q = lba - fence;
        self.node.offs[..self.n].partition_point(|&o| u64::from(o) < q)
    }

    /// Insert at index `i`; the caller guarantees room and order.
    fn insert_at(&mut self, i: usize, off: u64, len: u64, target: T) {
        debug_assert!(self.n < CAP && i <= self.n);
        debug_assert!(off <= u64::from(u32::MAX) && len <= MAX_EXTENT);
        let n = self.n;
        let node = &mut *self.node;
        node.offs.copy_within(i..n, i + 1);
        node.lens.copy_within(i..n, i + 1);
        node.targets.copy_within(i..n, i + 1);
        node.offs[i] = off as u32;
        node.lens[i] = len as u32;
        node.targets[i] = target;
        self.n += 1;
    }

    /// Delete entries `from..to`.
    fn delete(&mut self, from: usize, to: usize) {
        let n = self.n;
        let node = &mut *self.node;
        node.offs.copy_within(to..n, from);
        node.lens.copy_within(to..n, from);
        node.targets.copy_within(to..n, from);
        self.n -= to - from;
    }

    /// Append entries `from..to` of `src` (fenced at `src_fence`) to the end of
    /// `self` (fenced at `fence`). The caller checks room and offset range.
    fn append_from(&mut self, fence: u64, src: &Chunk<T>, src_fence: u64, from: usize, to: usize) {
        let k = to - from;
        debug_assert!(self.n + k <= CAP);
        let n = self.n;
        for j in 0..k {
            let off = src.start(src_fence, from + j) - fence;
            debug_assert!(off <= u64::from(u32::MAX));
            self.node.offs[n + j] = off as u32;
        }
        self.node.lens[n..n + k].copy_from_slice(&src.node.lens[from..to]);
        self.node.targets[n..n + k].copy_from_slice(&src.node.targets[from..to]);
        self.n += k;
    }

    /// Insert entries `from..to` of `src` (fenced at `src_fence`) before the
    /// entries of `self` (fenced at `fence`). The caller checks room and range.
    fn prepend_from(&mut self, fence: u64, src: &Chunk<T>, src_fence: u64, from: usize, to: usize) {
        let k = to - from;
        debug_assert!(self.n + k <= CAP);
        let n = self.n;
        let node = &mut *self.node;
        node.offs.copy_within(0..n, k);
        node.lens.copy_within(0..n, k);
        node.targets.copy_within(0..n, k);
        for j in 0..k {
            let off = src.start(src_fence, from + j) - fence;
            debug_assert!(off <= u64::from(u32::MAX));
            node.offs[j] = off as u32;
        }
        node.lens[..k].copy_from_slice(&src.node.lens[from..to]);
        node.targets[..k].copy_from_slice(&src.node.targets[from..to]);
        self.n += k;
    }

    /// Move the fence from `old` down to `new` (`new <= old`); offsets grow.
    /// The caller checks that the last entry stays within `u32` range.
    fn lower_fence(&mut self, old: u64, new: u64) {
        let d = (old - new) as u32;
        for o in &mut self.node.offs[..self.n] {
            *o += d;
        }
    }

    /// Move the fence from `old` up to `new`, which must not exceed the first start.
    fn raise_fence(&mut self, old: u64, new: u64) {
        let d = (new - old) as u32;
        for o in &mut self.node.offs[..self.n] {
            *o -= d;
        }
    }

    /// Whether a chunk fenced at `fence` can hold a start at `lba`.
    fn fits(fence: u64, lba: u64) -> bool {
        lba >= fence && lba - fence <= u64::from(u32::MAX)
    }
}

/// A sorted, non-overlapping map from LBA ranges to targets.
#[derive(Clone, Debug)]
pub struct ExtentMap<T: Target> {
    chunks: BTreeMap<u64, Chunk<T>>,
    extents: usize,
    sectors: u64,
}

impl<T: Target> Default for ExtentMap<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// `lba + len`, panicking on overflow (a caller bug, never data dependent).
fn range_end(lba: Lba, len: u64) -> u64 {
    lba.0
        .checked_add(len)
        .unwrap_or_else(|| panic!("extent {lba}+{len} overflows the LBA space"))
}

impl<T: Target> ExtentMap<T> {
    /// An empty map.
    pub fn new() -> Self {
        ExtentMap {
            chunks: BTreeMap::new(),
            extents: 0,
            sectors: 0,
        }
    }

    /// Map `[lba, lba+len)` to `target` (which describes sector `lba`).
    ///
    /// Pieces previously mapped there are appended to `displaced`, clipped to
    /// the range with their targets advanced to the clip point, in LBA order.
    /// An extent that continues its left neighbour (same chunk, target equal
    /// to `left.target.advance(left.len)`) is merged into it.
    pub fn update(&mut self, lba: Lba, len: u64, target: T, displaced: &mut Vec<Extent<T>>) {
        let end = range_end(lba, len);
        if len <= MAX_EXTENT && self.update_in_chunk(lba.0, end, target, displaced) {
            return;
        }
        self.delete_range(lba.0, end, &mut |x| displaced.push(x));
        let mut s = lba.0;
        let mut t = target;
        while s < end {
            let l = (end - s).min(MAX_EXTENT);
            self.insert(s, l, t);
            s += l;
            t = t.advance(l);
        }
    }

    /// The common case of [`Self::update`]: everything it touches lies inside
    /// one chunk with room to spare, so the index is searched once. Returns
    /// false, having changed nothing, when the general path is needed.
    fn update_in_chunk(
        &mut self,
        s: u64,
        e: u64,
        target: T,
        displaced: &mut Vec<Extent<T>>,
    ) -> bool {
        let Some((&f, c)) = self.chunks.range_mut(..=s).next_back() else {
            return false;
        };
        if !Chunk::<T>::fits(f, e) {
            return false;
        }
        let r = c.rank(f, s);
        let to = c.rank(f, e);
        // r == 0: an extent of the previous chunk may reach s. to == n: an
        // extent of the next chunk may start before e.
        if r == 0 || to == c.n {
            return false;
        }
        let left = c.get(f, r - 1);
        let straddles = left.end() > s;
        let remainder = if straddles && left.end() > e {
            Some((left.end() - e, left.target.advance(e - left.lba.0)))
        } else if to > r && c.end(f, to - 1) > e {
            let x = c.get(f, to - 1);
            Some((x.end() - e, x.target.advance(e - x.lba.0)))
        } else {
            None
        };
        if c.n - (to - r) + 1 + usize::from(remainder.is_some()) > CAP {
            return false;
        }
        let mut dropped = 0;
        if straddles {
            let pe = left.end().min(e);
            displaced.push(Extent {
                lba: Lba(s),
                len: pe - s,
                target: left.target.advance(s - left.lba.0),
            });
            dropped += pe - s;
            c.node.lens[r - 1] = (s - left.lba.0) as u32;
        }
        for i in r..to {
            let x = c.get(f, i);
            let pe = x.end().min(e);
            displaced.push(Extent {
                lba: x.lba,
                len: pe - x.lba.0,
                target: x.target,
            });
            dropped += pe - x.lba.0;
        }
        c.delete(r, to);
        let mut added = 1;
        if let Some((rl, rt)) = remainder {
            c.insert_at(r, e - f, rl, rt);
            added += 1;
        }
        // Merge into the left neighbour when the target continues it.
        let p = r - 1;
        let pl = u64::from(c.node.lens[p]);
        if c.end(f, p) == s && pl + (e - s) <= MAX_EXTENT && c.node.targets[p].advance(pl) == target
        {
            c.node.lens[p] = (pl + e - s) as u32;
            added -= 1;
        } else {
            c.insert_at(r, s - f, e - s, target);
        }
        self.extents = self.extents + added - (to - r);
        self.sectors = self.sectors + (e - s) - dropped;
        if c.n < MIN_FILL {
            self.maybe_merge(f);
        }
        true
    }

    /// Unmap `[lba, lba+len)` (trim); removed pieces are appended to `displaced`.
    pub fn remove(&mut self, lba: Lba, len: u64, displaced: &mut Vec<Extent<T>>) {
        let end = range_end(lba, len);
        self.delete_range(lba.0, end, &mut |x| displaced.push(x));
    }

    /// Unmap only the pieces inside `[lba, lba+len)` whose target satisfies
    /// `pred`. `pred` sees each piece's target clipped to the range (advanced
    /// to the piece's first sector). Returns the number of sectors removed.
    pub fn remove_if(&mut self, lba: Lba, len: u64, mut pred: impl FnMut(&T) -> bool) -> u64 {
        // Gather the matching runs first (adjacent matching pieces coalesce),
        // then delete them; deleting while iterating would invalidate the walk.
        let mut runs: Vec<(u64, u64)> = Vec::new();
        self.for_each_piece(lba, len, |s, l, t| {
            if let Some(t) = t {
                if pred(&t) {
                    match runs.last_mut() {
                        Some(r) if r.1 == s.0 => r.1 += l,
                        _ => runs.push((s.0, s.0 + l)),
                    }
                }
            }
        });
        let mut removed = 0;
        for (s, e) in runs {
            self.delete_range(s, e, &mut |x| removed += x.len);
        }
        removed
    }

    /// Retarget the pieces inside `[lba, lba+len)` that still point exactly
    /// where `expect` says (sector `lba + i` at `expect.advance(i)`): each
    /// such piece now points at `new.advance(i)`. Other pieces, and holes,
    /// stay as they are. Returns the number of sectors retargeted. This is
    /// the conditional move GC relies on: data written since the copy was
    /// taken no longer matches `expect` and is never overwritten.
    pub fn replace_if(&mut self, lba: Lba, len: u64, expect: T, new: T) -> u64 {
        // Gather first, then update (updating would invalidate the walk).
        let mut runs: Vec<(u64, u64)> = Vec::new();
        self.for_each_piece(lba, len, |s, l, t| {
            if t == Some(expect.advance(s.0 - lba.0)) {
                match runs.last_mut() {
                    Some(r) if r.1 == s.0 => r.1 += l,
                    _ => runs.push((s.0, s.0 + l)),
                }
            }
        });
        let mut moved = 0;
        let mut displaced = Vec::new();
        for (s, e) in runs {
            displaced.clear();
            self.update(Lba(s), e - s, new.advance(s - lba.0), &mut displaced);
            moved += e - s;
        }
        moved
    }

    /// Extents in LBA order from the one containing `lba` (or, if none, the
    /// first after it). The first may start before `lba`.
    pub fn iter_from(&self, lba: Lba) -> impl Iterator<Item = Extent<T>> + '_ {
        self.extents_from(lba.0)
            .skip_while(move |x| x.end() <= lba.0)
    }

    /// Call `f` for each extent overlapping `[lba, lba+len)`, whole (not
    /// clipped), in LBA order. Like [`Self::iter_from`] with a bound, but
    /// with one index search in the common case instead of two.
    pub fn for_each_overlapping(&self, lba: Lba, len: u64, mut f: impl FnMut(Extent<T>)) {
        let (s, e) = (lba.0, lba.0.saturating_add(len));
        if s >= e {
            return;
        }
        match self.chunks.range(..=s).next_back() {
            // The extent at or before `s` is in this chunk (so no earlier
            // chunk's extent can reach `s`).
            Some((&cf, c)) if c.rank(cf, s + 1) > 0 => {
                let from = c.rank(cf, s + 1) - 1;
                // Visit `x`; true once past the range.
                let mut visit = |x: Extent<T>| {
                    if x.lba.0 >= e {
                        return true;
                    }
                    if x.end() > s {
                        f(x);
                    }
                    false
                };
                // Later chunks are searched for only if this one runs out.
                if !(from..c.n).any(|i| visit(c.get(cf, i))) {
                    let _ = self
                        .chunks
                        .range((Excluded(cf), Unbounded))
                        .flat_map(|(&nf, nc)| (0..nc.n).map(move |i| nc.get(nf, i)))
                        .any(visit);
                }
            }
            _ => {
                for x in self.iter_from(lba) {
                    if x.lba.0 >= e {
                        break;
                    }
                    f(x);
                }
            }
        }
    }

    /// Append to `out` the pieces covering `[lba, lba+len)` in order, holes as
    /// `None`, clipped to the range: concatenated they cover it exactly.
    pub fn lookup(&self, lba: Lba, len: u64, out: &mut Vec<(Lba, u64, Option<T>)>) {
        self.for_each_piece(lba, len, |s, l, t| out.push((s, l, t)));
    }

    /// Call `f` for each piece covering `[lba, lba+len)`, as [`Self::lookup`].
    pub fn for_each_piece(&self, lba: Lba, len: u64, mut f: impl FnMut(Lba, u64, Option<T>)) {
        let end = range_end(lba, len);
        let mut pos = lba.0;
        if pos == end {
            return;
        }
        // Emit the pieces of `x`; true once the range is covered.
        let mut visit = |x: Extent<T>, pos: &mut u64| -> bool {
            let xs = x.lba.0;
            if xs >= end {
                return true;
            }
            let xe = x.end();
            if xe <= *pos {
                return false;
            }
            if xs > *pos {
                f(Lba(*pos), xs - *pos, None);
                *pos = xs;
            }
            let pe = xe.min(end);
            f(Lba(*pos), pe - *pos, Some(x.target.advance(*pos - xs)));
            *pos = pe;
            pe == end
        };
        // The result only says whether the walk stopped early; `pos` tells
        // whether a hole remains at the end.
        let _ = match self.chunks.range(..=pos).next_back() {
            // Fast path: the extent at or before `pos` is in this chunk, so
            // only later chunks need another index search.
            Some((&cf, c)) if c.rank(cf, pos + 1) > 0 => {
                let from = c.rank(cf, pos + 1) - 1;
                (from..c.n).any(|i| visit(c.get(cf, i), &mut pos))
                    || self
                        .chunks
                        .range((Excluded(cf), Unbounded))
                        .flat_map(|(&nf, nc)| (0..nc.n).map(move |i| nc.get(nf, i)))
                        .any(|x| visit(x, &mut pos))
            }
            _ => self.extents_from(pos).any(|x| visit(x, &mut pos)),
        };
        if pos < end {
            f(Lba(pos), end - pos, None);
        }
    }

    /// All extents in LBA order.
    pub fn iter(&self) -> impl Iterator<Item = Extent<T>> + '_ {
        self.chunks
            .iter()
            .flat_map(|(&f, c)| (0..c.n).map(move |i| c.get(f, i)))
    }

    /// Number of extents.
    pub fn len(&self) -> usize {
        self.extents
    }

    /// Whether nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.extents == 0
    }

    /// Unmap everything.
    pub fn clear(&mut self) {
        self.chunks.clear();
        self.extents = 0;
        self.sectors = 0;
    }

    /// Total mapped sectors.
    pub fn mapped_sectors(&self) -> u64 {
        self.sectors
    }

    /// Extents from the one containing `lba` (or, if none, the first after it).
    fn extents_from(&self, lba: u64) -> impl Iterator<Item = Extent<T>> + '_ {
        let (first, skip) = match self.chunks.range(..=lba).next_back() {
            None => (0, 0),
            Some((&f, c)) => {
                let r = c.rank(f, lba + 1); // entries starting at or before lba
                if r > 0 {
                    (f, r - 1)
                } else {
                    // The extent containing lba may start in an earlier chunk;
                    // chunks are never left empty, so it is the previous one's last.
                    match self.chunks.range(..f).next_back() {
                        Some((&pf, pc)) if pc.end(pf, pc.n - 1) > lba => (pf, pc.n - 1),
                        _ => (f, 0),
                    }
                }
            }
        };
        self.chunks.range(first..).flat_map(move |(&f, c)| {
            let from = if f == first { skip } else { 0 };
            (from..c.n).map(move |i| c.get(f, i))
        })
    }

    /// Delete every mapping inside `[s, e)`, reporting the removed pieces in
    /// LBA order.
    fn delete_range(&mut self, s: u64, e: u64, out: &mut dyn FnMut(Extent<T>)) {
        if s >= e || self.extents == 0 {
            return;
        }
        let mut remainder: Option<(u64, u64, T)> = None;
        let mut dropped = 0u64; // sectors taken out of storage
        let mut deleted = 0usize;
        let first_fence = self.chunks.range(..=s).next_back().map(|(&f, _)| f);

        // 1. An extent starting before s that reaches into the range is
        //    truncated (and, if it also runs past e, leaves a remainder).
        let left = match first_fence {
            Some(f) => {
                let c = &self.chunks[&f];
                let r = c.rank(f, s);
                if r > 0 {
                    Some((f, r - 1))
                } else {
                    self.chunks
                        .range(..f)
                        .next_back()
                        .map(|(&pf, pc)| (pf, pc.n - 1))
                }
            }
            None => None,
        };
        if let Some((f, i)) = left {
            let c = self.chunks.get_mut(&f).expect("chunk just found");
            let x = c.get(f, i);
            if x.end() > s {
                let pe = x.end().min(e);
                out(Extent {
                    lba: Lba(s),
                    len: pe - s,
                    target: x.target.advance(s - x.lba.0),
                });
                dropped += x.end() - s; // the remainder, if any, is re-inserted
                c.node.lens[i] = (s - x.lba.0) as u32;
                if x.end() > e {
                    remainder = Some((e, x.end() - e, x.target.advance(e - x.lba.0)));
                }
            }
        }

        // 2. Entries starting inside [s, e) are deleted; the last may leave a
        //    remainder past e.
        let mut emptied: Vec<u64> = Vec::new();
        let start_key = first_fence.unwrap_or(0);
        for (&f, c) in self.chunks.range_mut(start_key..) {
            if f >= e {
                break;
            }
            let n0 = c.n;
            let from = c.rank(f, s);
            let to = c.rank(f, e);
            for i in from..to {
                let x = c.get(f, i);
                let pe = x.end().min(e);
                out(Extent {
                    lba: x.lba,
                    len: pe - x.lba.0,
                    target: x.target,
                });
                dropped += x.len;
                if x.end() > e {
                    remainder = Some((e, x.end() - e, x.target.advance(e - x.lba.0)));
                }
            }
            if to > from {
                c.delete(from, to);
                deleted += to - from;
                if c.n == 0 {
                    emptied.push(f);
                }
            }
            if to < n0 {
                break; // an entry starting at or after e remains here
            }
        }
        self.extents -= deleted;
        self.sectors -= dropped;
        for f in &emptied {
            self.chunks.remove(f);
        }
        if deleted > 0 {
            if let Some(f) = self.chunks.range(..=s).next_back().map(|(&f, _)| f) {
                self.maybe_merge(f);
            }
        }
        if let Some((rs, rl, rt)) = remainder {
            self.insert(rs, rl, rt);
        }
    }

    /// Insert `[s, s+len)`, which must not overlap any extent.
    fn insert(&mut self, s: u64, len: u64, target: T) {
        debug_assert!(len > 0 && len <= MAX_EXTENT);
        self.extents += 1;
        self.sectors += len;
        loop {
            let Some((&f, c)) = self.chunks.range_mut(..=s).next_back() else {
                self.insert_before_first(s, len, target);
                return;
            };
            if !Chunk::<T>::fits(f, s) {
                self.split_at(f, s);
                continue;
            }
            let i = c.rank(f, s);
            if i > 0 {
                let p = i - 1;
                let pl = u64::from(c.node.lens[p]);
                if c.end(f, p) == s
                    && pl + len <= MAX_EXTENT
                    && c.node.targets[p].advance(pl) == target
                {
                    c.node.lens[p] = (pl + len) as u32;
                    self.extents -= 1;
                    return;
                }
            }
            if !c.is_full() {
                c.insert_at(i, s - f, len, target);
                return;
            }
            if self.make_room(f, i, s, len, target) {
                return;
            }
        }
    }

    /// Insert when no chunk's fence is at or below `s`.
    fn insert_before_first(&mut self, s: u64, len: u64, target: T) {
        if let Some((&f, c)) = self.chunks.iter_mut().next() {
            if !c.is_full() && Chunk::<T>::fits(s, c.start(f, c.n - 1)) {
                let mut c = self.chunks.remove(&f).expect("first chunk");
                c.lower_fence(f, s);
                c.insert_at(0, 0, len, target);
                self.chunks.insert(s, c);
                return;
            }
        }
        let mut c = Chunk::new(target);
        c.insert_at(0, 0, len, target);
        self.chunks.insert(s, c);
    }

    /// Chunk `f` is full and `s` belongs at index `i`. Either place the entry
    /// (returning true) or rearrange chunks so that a retry finds room.
    fn make_room(&mut self, f: u64, i: usize, s: u64, len: u64, target: T) -> bool {
        let right = self
            .chunks
            .range((Excluded(f), Unbounded))
            .next()
            .map(|(&rf, rc)| (rf, rc.n, rc.start(rf, rc.n - 1)));
        if i == CAP {
            // Appending past the end: start the right neighbour early if it
            // has room, otherwise open a new chunk (sequential fill stays full).
            if let Some((rf, rn, rlast)) = right {
                if rn < CAP && Chunk::<T>::fits(s, rlast) {
                    let mut rc = self.chunks.remove(&rf).expect("right chunk");
                    rc.lower_fence(rf, s);
                    rc.insert_at(0, 0, len, target);
                    self.chunks.insert(s, rc);
                    return true;
                }
            }
            let mut c = Chunk::new(target);
            c.insert_at(0, 0, len, target);
            self.chunks.insert(s, c);
            return true;
        }
        // Lend the first entries (those before i) to the left neighbour.
        if i > 0 {
            if let Some((&lf, lc)) = self.chunks.range_mut(..f).next_back() {
                let free = CAP - lc.n;
                let m = (free.div_ceil(2)).min(i);
                if m > 0 {
                    let c = &self.chunks[&f];
                    if Chunk::<T>::fits(lf, c.start(f, m - 1)) {
                        let mut c = self.chunks.remove(&f).expect("chunk");
                        let lc = self.chunks.get_mut(&lf).expect("left chunk");
                        lc.append_from(lf, &c, f, 0, m);
                        // If every entry before s moves, c's fence becomes s.
                        let nf = if m < i { c.start(f, m) } else { s };
                        c.delete(0, m);
                        c.raise_fence(f, nf);
                        self.chunks.insert(nf, c);
                        return false;
                    }
                }
            }
        }
        // Lend the last entries (those at or after i) to the right neighbour.
        if let Some((rf, rn, rlast)) = right {
            let free = CAP - rn;
            let m = free.div_ceil(2).min(CAP - i);
            if m > 0 {
                let c = &self.chunks[&f];
                let nf = c.start(f, CAP - m);
                if Chunk::<T>::fits(nf, rlast) {
                    let mut rc = self.chunks.remove(&rf).expect("right chunk");
                    let c = self.chunks.get_mut(&f).expect("chunk");
                    rc.lower_fence(rf, nf);
                    rc.prepend_from(nf, c, f, CAP - m, CAP);
                    c.delete(CAP - m, CAP);
                    self.chunks.insert(nf, rc);
                    return false;
                }
            }
        }
        // Both neighbours full (or out of offset range): split in half.
        self.split_at(f, self.chunks[&f].start(f, CAP / 2));
        false
    }

    /// Move the entries of chunk `f` starting at or after `at` into a new
    /// chunk fenced at `at` (which may start out empty only transiently: the
    /// caller inserts at `at` next).
    fn split_at(&mut self, f: u64, at: u64) {
        let c = self.chunks.get_mut(&f).expect("chunk");
        let from = c.rank(f, at);
        let mut nc = Chunk::new(c.node.targets[0]);
        nc.append_from(at, c, f, from, c.n);
        let n = c.n;
        c.delete(from, n);
        debug_assert!(c.n > 0 || nc.n > 0);
        if c.n == 0 {
            self.chunks.remove(&f);
        }
        self.chunks.insert(at, nc);
    }

    /// If chunk `f` is underfull, merge it with a neighbour.
    fn maybe_merge(&mut self, f: u64) {
        let n = self.chunks[&f].n;
        if n >= MIN_FILL {
            return;
        }
        // Into the left neighbour.
        if let Some((&lf, lc)) = self.chunks.range(..f).next_back() {
            let c = &self.chunks[&f];
            if lc.n + n <= CAP - MIN_FILL && Chunk::<T>::fits(lf, c.start(f, n - 1)) {
                let c = self.chunks.remove(&f).expect("chunk");
                let lc = self.chunks.get_mut(&lf).expect("left chunk");
                lc.append_from(lf, &c, f, 0, n);
                return;
            }
        }
        // Or take in the right neighbour.
        if let Some((&rf, rc)) = self.chunks.range((Excluded(f), Unbounded)).next() {
            if rc.n + n <= CAP - MIN_FILL && Chunk::<T>::fits(f, rc.start(rf, rc.n - 1)) {
                let rc = self.chunks.remove(&rf).expect("right chunk");
                let c = self.chunks.get_mut(&f).expect("chunk");
                c.append_from(f, &rc, rf, 0, rc.n);
            }
        }
    }

    /// Append an extent after every existing one (bulk load). The caller
    /// guarantees `s` is at or past the end of the last extent.
    fn push_back(&mut self, s: u64, len: u64, target: T) {
        let mut s = s;
        let mut len = len;
        let mut target = target;
        while len > 0 {
            let l = len.min(MAX_EXTENT);
            self.extents += 1;
            self.sectors += l;
            match self.chunks.iter_mut().next_back() {
                Some((&f, c)) if !c.is_full() && Chunk::<T>::fits(f, s) => {
                    c.insert_at(c.n, s - f, l, target)
                }
                _ => {
                    let mut c = Chunk::new(target);
                    c.insert_at(0, 0, l, target);
                    self.chunks.insert(s, c);
                }
            }
            s += l;
            len -= l;
            target = target.advance(l);
        }
    }

    /// Check the representation's invariants (tests only).
    #[cfg(test)]
    fn check_structure(&self) -> Result<(), String> {
        let mut prev_end = 0u64;
        let mut prev_fence: Option<u64> = None;
        let mut prev_start = 0u64;
        let (mut extents, mut sectors) = (0usize, 0u64);
        for (&f, c) in &self.chunks {
            if c.n == 0 {
                return Err(format!("empty chunk at fence {f}"));
            }
            if extents > 0 && prev_start >= f {
                return Err(format!("start {prev_start} is not below next fence {f}"));
            }
            prev_start = c.start(f, c.n - 1);
            if let Some(pf) = prev_fence {
                if pf >= f {
                    return Err(format!("fences out of order: {pf} then {f}"));
                }
            }
            prev_fence = Some(f);
            for i in 0..c.n {
                let x = c.get(f, i);
                if x.len == 0 {
                    return Err(format!("empty extent at {}", x.lba));
                }
                if x.lba.0 < prev_end {
                    return Err(format!(
                        "extent at {} overlaps previous end {prev_end}",
                        x.lba
                    ));
                }
                prev_end = x.end();
                extents += 1;
                sectors += x.len;
            }
        }
        if extents != self.extents || sectors != self.sectors {
            return Err(format!(
                "counters {}/{} differ from contents {extents}/{sectors}",
                self.extents, self.sectors
            ));
        }
        Ok(())
    }
}
