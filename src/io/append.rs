//! An append-only aligned buffer whose filled part can be lent out without
//! a copy: a batch's data buffer, from which the journal writes its records
//! (`writev`) while the batch keeps filling.

use std::ops::Deref;
use std::sync::Arc;

use super::AlignedBuf;

/// The allocation shared by an [`AppendBuf`] and its [`Span`]s.
struct Raw {
    /// Start of the allocation, taken once so that no `&mut` to the whole
    /// buffer is ever made again while spans exist.
    ptr: *mut u8,
    /// Owner of the memory; touched again only by [`AppendBuf::into_buf`],
    /// when nothing else holds the `Raw`.
    buf: AlignedBuf,
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
        AppendBuf {
            raw: Arc::new(Raw { ptr, buf }),
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
        let at = self.len;
        if at + data.len() > self.capacity() {
            let mut bigger = AppendBuf::new((at + data.len()).max(2 * self.capacity()));
            bigger.append(self);
            *self = bigger;
        }
        // SAFETY: `[at, at + data.len())` lies within the allocation (checked
        // above) and beyond `len`, so no `&[u8]` from `deref` or any `Span`
        // covers it; `&mut self` means no other append runs at once.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.raw.ptr.add(at), data.len());
        }
        self.len = at + data.len();
        at
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
