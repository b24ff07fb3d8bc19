//! An append-only aligned buffer whose filled part can be lent out without
//! a copy: a batch's data buffer, from which the journal writes its records
//! (`writev`) while the batch keeps filling.

//!
//! It also keeps the crc32c of each whole [`CRC_BLOCK`] it was given with
//! the data (the write path takes them once, before the state lock), so
//! that the journal record's crc ([`Span`] is a [`CrcSource`]) and the
//! object's chunk crcs ([`AppendBuf::block_crcs`]) join them instead of
//! reading the bytes twice more. A block is known only if one append
//! filled it whole, starting at a block boundary, with its crc given;
//! every other block is read when its crc is needed.

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::AlignedBuf;
use crate::format::{crc, crc_concat, CrcSource, CRC_BLOCK};

/// A known block crc in [`Raw::crcs`]: this bit set, the crc below it.
const KNOWN: u64 = 1 << 32;

/// The allocation shared by an [`AppendBuf`] and its [`Span`]s.
struct Raw {
    /// Start of the allocation, taken once so that no `&mut` to the whole
    /// buffer is ever made again while spans exist.
    ptr: *mut u8,
    /// Owner of the memory; touched again only by [`AppendBuf::into_buf`],
    /// when nothing else holds the `Raw`.
    buf: AlignedBuf,
    /// One per [`CRC_BLOCK`] of the capacity: `KNOWN | crc` once the block
    /// is filled and its crc was given, else 0. Set once, by the append
    /// that fills the block (before any span covers it), and never changed,
    /// like the bytes. Relaxed is enough: a span or the buffer reaches
    /// another thread through a lock or a channel, after the append.
    crcs: Box<[AtomicU64]>,
}

impl Raw {
    fn known(&self, block: usize) -> Option<u32> {
        let v = self.crcs[block].load(Ordering::Relaxed);
        (v & KNOWN != 0).then_some(v as u32)
    }

    /// `crc(seed, bytes [off, off + len))`, joining known block crcs.
    fn crc_from(&self, seed: u32, off: usize, len: usize) -> u32 {
        // SAFETY: callers pass a filled range (see `Span`, `AppendBuf`).
        let bytes = unsafe { std::slice::from_raw_parts(self.ptr.add(off), len) };
        let mut c = seed;
        let mut pos = 0;
        while pos < len {
            let at = off + pos;
            if at.is_multiple_of(CRC_BLOCK) && len - pos >= CRC_BLOCK {
                if let Some(k) = self.known(at / CRC_BLOCK) {
                    c = crc_concat(c, k, CRC_BLOCK);
                    pos += CRC_BLOCK;
                    continue;
                }
            }
            // Read up to the next whole block with a known crc (or the
            // end), in one call: a run without known crcs (a batch off a
            // block boundary, replayed data) costs one pass, as before.
            let mut end = ((at / CRC_BLOCK + 1) * CRC_BLOCK - off).min(len);
            while len - end >= CRC_BLOCK && self.known((off + end) / CRC_BLOCK).is_none() {
                end += CRC_BLOCK;
            }
            let end = if len - end < CRC_BLOCK { len } else { end };
            c = crc(c, &bytes[pos..end]);
            pos = end;
        }
        c
    }
}

// SAFETY: bytes below an `AppendBuf`'s length are never written again (see
// `AppendBuf::append`), so every thread only reads them; the bytes being
// appended are written through the one `AppendBuf`, which needs `&mut`.
unsafe impl Send for Raw {}
// SAFETY: as above.
unsafe impl Sync for Raw {}

/// An aligned buffer written only at its end. Its filled prefix is
/// immutable, so ranges of it can be shared as [`Span`]s (kept alive by
/// reference counting) while more is appended.
pub struct AppendBuf {
    raw: Arc<Raw>,
    len: usize,
}

impl AppendBuf {
    /// An empty buffer with room for `cap` bytes.
    pub fn new(cap: usize) -> AppendBuf {
        AppendBuf::from_buf(AlignedBuf::new(cap))
    }

    /// An empty buffer reusing `buf`'s memory (its content is overwritten
    /// before it is read).
    pub fn from_buf(buf: AlignedBuf) -> AppendBuf {
        let cap = buf.capacity();
        let mut buf = buf.with_len(cap);
        let ptr = buf.as_mut_ptr();
        let crcs = (0..cap.div_ceil(CRC_BLOCK))
            .map(|_| AtomicU64::new(0))
            .collect();
        AppendBuf {
            raw: Arc::new(Raw { ptr, buf, crcs }),
            len: 0,
        }
    }

    /// Room in bytes before the next append reallocates.
    pub fn capacity(&self) -> usize {
        self.raw.buf.capacity()
    }

    /// Append `data`; returns the offset it went to. When it does not fit,
    /// the filled part moves to a bigger allocation; spans already lent keep
    /// the old one alive.
    pub fn append(&mut self, data: &[u8]) -> usize {
        self.append_with_crcs(data, None)
    }

    /// [`AppendBuf::append`], with `blocks[i]` the crc32c of `data`'s
    /// `i`-th [`CRC_BLOCK`] ([`crate::format::block_crcs`]; a short last
    /// one is not used). They are kept for the blocks this append fills
    /// whole, if it starts at a block boundary; they must be right: they
    /// are trusted, not checked.
    pub fn append_with_crcs(&mut self, data: &[u8], blocks: Option<&[u32]>) -> usize {
        let at = self.len;
        if at + data.len() > self.capacity() {
            let mut bigger = AppendBuf::new((at + data.len()).max(2 * self.capacity()));
            bigger.append(self);
            // The moved blocks keep the crcs they had (same block indices:
            // the move starts at 0); the others are read when needed.
            for (to, from) in bigger.raw.crcs.iter().zip(self.raw.crcs.iter()) {
                to.store(from.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            *self = bigger;
        }
        // SAFETY: `[at, at + data.len())` lies within the allocation (checked
        // above) and beyond `len`, so no `&[u8]` from `deref` or any `Span`
        // covers it; `&mut self` means no other append runs at once.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.raw.ptr.add(at), data.len());
        }
        self.len = at + data.len();
        if let Some(b) = blocks {
            if at.is_multiple_of(CRC_BLOCK) {
                let first = at / CRC_BLOCK;
                for (i, &c) in b.iter().enumerate().take(data.len() / CRC_BLOCK) {
                    self.raw.crcs[first + i].store(KNOWN | u64::from(c), Ordering::Relaxed);
                }
            }
        }
        at
    }

    /// The crc32c of each [`CRC_BLOCK`] of the filled part (the last may
    /// be shorter), as [`crate::format::block_crcs`] gives them: the known
    /// ones as given, the others read now.
    pub fn block_crcs(&self) -> Vec<u32> {
        (0..self.len.div_ceil(CRC_BLOCK))
            .map(|i| {
                let off = i * CRC_BLOCK;
                let n = CRC_BLOCK.min(self.len - off);
                match self.raw.known(i) {
                    Some(k) if n == CRC_BLOCK => k,
                    _ => crc(0, &self[off..off + n]),
                }
            })
            .collect()
    }

    /// How many of the filled part's whole blocks have a known crc (tests).
    #[cfg(test)]
    pub(crate) fn known_blocks(&self) -> usize {
        (0..self.len / CRC_BLOCK)
            .filter(|&i| self.raw.known(i).is_some())
            .count()
    }

    /// Share `[off, off + len)` of the filled part.
    pub fn span(&self, off: usize, len: usize) -> Span {
        assert!(
            len <= self.len && off <= self.len - len,
            "span {off}+{len} beyond the filled {} bytes",
            self.len
        );
        Span {
            raw: self.raw.clone(),
            off,
            len,
        }
    }

    /// The memory back for reuse, if no span still holds it.
    pub fn into_buf(self) -> Option<AlignedBuf> {
        Arc::try_unwrap(self.raw).ok().map(|r| r.buf)
    }
}

impl Deref for AppendBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the first `len` bytes are initialised and never written
        // again.
        unsafe { std::slice::from_raw_parts(self.raw.ptr, self.len) }
    }
}

/// An immutable range of an [`AppendBuf`], valid as long as it lives.
#[derive(Clone)]
pub struct Span {
    raw: Arc<Raw>,
    off: usize,
    len: usize,
}

impl Span {
    /// A span of its own over a copy of `data` (tests and callers whose
    /// data is not in a batch).
    pub fn copy_of(data: &[u8]) -> Span {
        let mut b = AppendBuf::new(data.len());
        b.append(data);
        b.span(0, data.len())
    }

    /// Whether `next` continues this span in the same memory.
    pub fn continued_by(&self, next: &Span) -> bool {
        Arc::ptr_eq(&self.raw, &next.raw) && self.off + self.len == next.off
    }

    /// This span extended by `next`, which must continue it.
    pub fn join(&mut self, next: &Span) {
        assert!(self.continued_by(next), "spans are not contiguous");
        self.len += next.len;
    }
}

impl CrcSource for Span {
    fn crc_from(&self, seed: u32) -> u32 {
        self.raw.crc_from(seed, self.off, self.len)
    }
    fn byte_len(&self) -> usize {
        self.len
    }
}

impl Deref for Span {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: a span covers only filled bytes of its allocation (checked
        // in `AppendBuf::span`), which are never written again and stay
        // allocated while the span holds the `Raw`.
        unsafe { std::slice::from_raw_parts(self.raw.ptr.add(self.off), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_survive_growth_and_block_reuse() {
        let mut b = AppendBuf::new(4096);
        assert_eq!(b.append(&[1; 4096]), 0);
        let s = b.span(0, 4096);
        assert_eq!(s.as_ptr() as usize % super::super::aligned::ALIGN, 0);
        // Growing moves the buffer; the span keeps the old memory.
        assert_eq!(b.append(&[2; 512]), 4096);
        assert!(b.capacity() >= 8192);
        assert!(s.iter().all(|&x| x == 1));
        assert_eq!(&b[4096..], &[2; 512][..]);
        let t = b.span(4096, 512);
        let mut joined = b.span(0, 4096);
        assert!(joined.continued_by(&t));
        assert!(!s.continued_by(&t), "different memory");
        joined.join(&t);
        assert_eq!(joined.len(), 4608);
        // Lent memory is not handed back for reuse.
        assert!(b.into_buf().is_none());
        let mut c = AppendBuf::new(8192);
        c.append(&[3; 100]);
        assert!(c.into_buf().is_some());
    }

    /// Given block crcs are kept (trusted: a wrong one shows, which is how
    /// this proves they are used instead of read), only for blocks an
    /// append fills whole from a block boundary.
    #[test]
    fn given_block_crcs_are_kept_for_whole_aligned_blocks_only() {
        let mut b = AppendBuf::new(8 * CRC_BLOCK);
        let d: Vec<u8> = (0..2 * CRC_BLOCK).map(|i| (i % 253) as u8).collect();
        b.append_with_crcs(&d, Some(&[7, 8]));
        assert_eq!(b.known_blocks(), 2);
        // Misaligned from here: a 512-byte write, then whole blocks.
        b.append_with_crcs(&d[..512], Some(&[9]));
        b.append_with_crcs(&d, Some(&[10, 11]));
        assert_eq!(
            b.known_blocks(),
            2,
            "a block from an unaligned start is read"
        );
        let crcs = b.block_crcs();
        assert_eq!(&crcs[..2], &[7, 8]);
        assert_eq!(
            &crcs[2..],
            &crate::format::block_crcs(&b[2 * CRC_BLOCK..])[..]
        );
        // A span's crc joins the known ones: from the wrong crcs here.
        let s = b.span(0, 2 * CRC_BLOCK);
        let joined = crc_concat(crc_concat(5, 7, CRC_BLOCK), 8, CRC_BLOCK);
        assert_eq!(s.crc_from(5), joined);
        assert_ne!(s.crc_from(5), crc(5, &s), "the given crcs were used");

        // Growth keeps the known crcs (the wrong ones show again) and
        // reads nothing for the others.
        let mut g = AppendBuf::new(2 * CRC_BLOCK);
        g.append_with_crcs(&d, Some(&[7, 8]));
        g.append_with_crcs(&d[..CRC_BLOCK], Some(&[9]));
        assert!(g.capacity() > 2 * CRC_BLOCK);
        assert_eq!(g.known_blocks(), 3);
        assert_eq!(g.block_crcs(), vec![7, 8, 9]);
    }

    proptest::proptest! {
        /// With right crcs given for some appends, every block crc and every
        /// span's crc is the crc of the bytes, however the appends fall and
        /// when the buffer grows.
        #[test]
        fn block_and_span_crcs_are_those_of_the_bytes(
            appends in proptest::collection::vec((1usize..20, proptest::bool::ANY, proptest::num::u8::ANY), 1..12),
            spans in proptest::collection::vec((proptest::num::usize::ANY, proptest::num::usize::ANY, proptest::num::u32::ANY), 1..8),
            cap_blocks in 1usize..6,
        ) {
            let mut b = AppendBuf::new(cap_blocks * CRC_BLOCK);
            for (sectors, give, fill) in appends {
                // 512-byte units: whole blocks or not, aligned or not.
                let d: Vec<u8> = (0..sectors * 512).map(|i| fill.wrapping_add((i % 251) as u8)).collect();
                let blocks = crate::format::block_crcs(&d);
                b.append_with_crcs(&d, give.then_some(&blocks[..]));
            }
            proptest::prop_assert_eq!(b.block_crcs(), crate::format::block_crcs(&b));
            for (x, y, seed) in spans {
                let off = x % (b.len() + 1);
                let len = y % (b.len() - off + 1);
                let s = b.span(off, len);
                proptest::prop_assert_eq!(s.crc_from(seed), crc(seed, &s));
            }
        }
    }

    #[test]
    #[should_panic(expected = "beyond the filled")]
    fn a_span_past_the_filled_part_is_refused() {
        let mut b = AppendBuf::new(4096);
        b.append(&[0; 10]);
        let _ = b.span(8, 4);
    }

    #[test]
    #[should_panic(expected = "beyond the filled")]
    fn a_span_whose_end_wraps_is_refused() {
        let mut b = AppendBuf::new(4096);
        b.append(&[0; 10]);
        let _ = b.span(usize::MAX, 2);
    }
}
