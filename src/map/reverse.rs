//! The reverse index of the durable map: for each object, the LBA ranges
//! that may still map into it, so that GC finds a victim's live extents
//! without scanning the whole map.
//!
//! The index is lazy: [`Ranges::record`] notes the range of every write or
//! move applied into the object (and every extent loaded from a checkpoint),
//! and nothing is removed when the range is overwritten. Whoever reads it
//! looks each range up in the map and keeps only the pieces still mapped
//! into the object. Stale ranges are bounded by re-deriving the ranges from
//! the map (see [`ObjectMap`](super::ObjectMap)'s compaction rule).
//!
//! Ranges are stored as a byte stream, about 5-6 bytes each: the start as a
//! zigzag varint delta from the previous range's start, then the length as
//! a varint. The last range is kept decoded so that the next one, when it
//! starts where it ends, extends it instead (a sequential writer records one
//! range per object, mirroring how the map merges such writes).

/// One object's recorded ranges.
#[derive(Clone, Debug, Default)]
pub(super) struct Ranges {
    /// Encoded ranges, in the order recorded.
    bytes: Vec<u8>,
    /// Start of the last encoded range (the base of the next delta).
    prev: u64,
    /// The last range, not yet encoded: `(start, len)`, `len` > 0 if any.
    open: (u64, u64),
    /// Ranges recorded (encoded ones and the open one).
    count: u32,
    /// Pieces displaced from the object since its ranges were last
    /// re-derived from the map (or since the first was recorded).
    pub(super) debits: u32,
    /// The object offset (sectors) the open range's data ends at: a range
    /// extends it only if its data continues there too, as the map merges.
    open_off: u64,
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(b: &[u8], at: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let byte = b[*at];
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return v;
        }
        shift += 7;
    }
}

impl Ranges {
    /// Note that `[lba, lba+len)` may map into the object, at object offset
    /// `off` (sectors). It extends the last range only where both the LBA
    /// and the offset continue it, as the map merges extents: found by
    /// review, pieces adjacent in LBA but not in offset (written in any
    /// order but ascending, or loaded from a checkpoint) made one range of
    /// all of them, which a rewrite eating it one piece at a time never
    /// split, so every re-derivation walked them all again (quadratic).
    pub(super) fn record(&mut self, lba: u64, len: u64, off: u64) {
        if len == 0 {
            return;
        }
        let (s, l) = self.open;
        if l > 0 && s + l == lba && self.open_off == off {
            self.open.1 += len;
            self.open_off += len;
            return;
        }
        self.seal();
        self.open = (lba, len);
        self.open_off = off + len;
        self.count += 1;
    }

    /// Encode the open range, so that nothing extends it any more.
    fn seal(&mut self) {
        let (s, l) = self.open;
        if l == 0 {
            return;
        }
        let delta = s.wrapping_sub(self.prev) as i64;
        put_varint(&mut self.bytes, ((delta << 1) ^ (delta >> 63)) as u64);
        put_varint(&mut self.bytes, l);
        self.prev = s;
        self.open = (0, 0);
    }

    /// End of the last range recorded, which the next range extends if it
    /// starts there.
    pub(super) fn open_end(&self) -> Option<u64> {
        (self.open.1 > 0).then(|| self.open.0 + self.open.1)
    }

    /// Give back spare capacity (once the object's ranges stop growing).
    pub(super) fn shrink(&mut self) {
        self.bytes.shrink_to_fit();
    }

    /// Number of ranges recorded.
    pub(super) fn len(&self) -> usize {
        self.count as usize
    }

    /// Heap bytes held.
    pub(super) fn heap_bytes(&self) -> usize {
        self.bytes.capacity()
    }

    /// Forget every range.
    pub(super) fn clear(&mut self) {
        *self = Ranges::default();
    }

    /// The ranges as `(start, len)`, in the order recorded.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let mut at = 0;
        let mut prev = 0u64;
        let encoded = std::iter::from_fn(move || {
            if at == self.bytes.len() {
                return None;
            }
            let z = get_varint(&self.bytes, &mut at);
            let delta = ((z >> 1) as i64) ^ -((z & 1) as i64);
            prev = prev.wrapping_add(delta as u64);
            let len = get_varint(&self.bytes, &mut at);
            Some((prev, len))
        });
        encoded.chain((self.open.1 > 0).then_some(self.open))
    }

    /// The ranges sorted and merged: disjoint, non-adjacent, ascending.
    /// Appended to `out`.
    pub(super) fn union_into(&self, out: &mut Vec<(u64, u64)>) {
        let from = out.len();
        out.extend(self.iter().map(|(s, l)| (s, s + l)));
        merge_tail(out, from);
    }
}

/// Sort and merge `v[from..]` (as `(start, end)` pairs) in place into
/// disjoint, non-adjacent intervals in ascending order.
pub(super) fn merge_tail(v: &mut Vec<(u64, u64)>, from: usize) {
    v[from..].sort_unstable();
    let mut w = from;
    for r in from..v.len() {
        let (s, e) = v[r];
        if w > from && s <= v[w - 1].1 {
            v[w - 1].1 = v[w - 1].1.max(e);
        } else {
            v[w] = (s, e);
            w += 1;
        }
    }
    v.truncate(w);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_round_trip_and_extend_contiguous_ones() {
        let mut r = Ranges::default();
        let input = [
            (100, 8),
            (108, 8), // extends the previous one
            (0, 1),
            (u64::MAX - 10, 10),
            (5, 3),
            (1 << 41, u64::from(u32::MAX)),
        ];
        for (s, l) in input {
            // Offsets continuing where the LBAs do: as the map merges.
            r.record(s, l, s);
        }
        r.record(7, 0, 7);
        let got: Vec<(u64, u64)> = r.iter().collect();
        assert_eq!(
            got,
            vec![
                (100, 16),
                (0, 1),
                (u64::MAX - 10, 10),
                (5, 3),
                (1 << 41, u64::from(u32::MAX))
            ]
        );
        assert_eq!(r.len(), 5);
        let mut u = vec![(1, 2)];
        r.union_into(&mut u);
        assert_eq!(
            u,
            vec![
                (1, 2),
                (0, 1),
                (5, 8),
                (100, 116),
                (1 << 41, (1 << 41) + u64::from(u32::MAX)),
                (u64::MAX - 10, u64::MAX)
            ]
        );
        r.clear();
        assert_eq!(r.iter().count(), 0);
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn merge_joins_overlapping_and_adjacent_intervals() {
        let mut v = vec![(9, 9), (10, 20), (0, 5), (5, 7), (15, 30), (40, 41)];
        merge_tail(&mut v, 1);
        assert_eq!(v, vec![(9, 9), (0, 7), (10, 30), (40, 41)]);
    }
}
