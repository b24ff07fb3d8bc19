//! One RAII buffer type that does all O_DIRECT alignment math.

use std::alloc::{alloc, alloc_zeroed, dealloc, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// Alignment of every buffer: the journal block size (also satisfies 512-byte
/// logical-block devices).
pub const ALIGN: usize = 4096;

/// A zero-initialised heap buffer aligned to [`ALIGN`], with a capacity
/// rounded up to a multiple of [`ALIGN`] and a settable length.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    cap: usize,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively (like Vec<u8>); no
// interior sharing, so moving it between threads is sound.
unsafe impl Send for AlignedBuf {}
// SAFETY: &AlignedBuf only gives shared read access to the bytes.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of length `len` (capacity rounded up to [`ALIGN`]).
    pub fn new(len: usize) -> AlignedBuf {
        let cap = len.max(1).div_ceil(ALIGN) * ALIGN;
        let layout = Layout::from_size_align(cap, ALIGN).expect("aligned layout");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, cap, len }
    }

    /// A copy of `data` (length `data.len()`), its capacity's padding
    /// zeroed. Unlike [`AlignedBuf::new`] followed by a copy, the bytes are
    /// written once (no memset of the part the copy overwrites).
    pub fn copy_of(data: &[u8]) -> AlignedBuf {
        let cap = data.len().max(1).div_ceil(ALIGN) * ALIGN;
        let layout = Layout::from_size_align(cap, ALIGN).expect("aligned layout");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        // SAFETY: `ptr` is valid for `cap` bytes, does not overlap `data`,
        // and every byte up to `cap` is initialised here (the copy, then
        // zeros), as `Deref` and `set_len` require.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), ptr.as_ptr(), data.len());
            std::ptr::write_bytes(ptr.as_ptr().add(data.len()), 0, cap - data.len());
        }
        AlignedBuf {
            ptr,
            cap,
            len: data.len(),
        }
    }

    /// The same buffer with its length set to `len` (see [`AlignedBuf::set_len`]).
    pub fn with_len(mut self, len: usize) -> AlignedBuf {
        self.set_len(len);
        self
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Set the length (must not exceed the capacity); new bytes keep
    /// whatever the buffer held (zero if never written).
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.cap,
            "AlignedBuf length {len} > capacity {}",
            self.cap
        );
        self.len = len;
    }

    /// Raw pointer for I/O submission. The buffer must outlive the I/O.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for cap >= len initialised (zeroed) bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for cap >= len initialised bytes and uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.cap, ALIGN).expect("aligned layout");
        // SAFETY: allocated in `new` with exactly this layout.
        unsafe { dealloc(self.ptr.as_ptr(), layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed() {
        let mut b = AlignedBuf::new(5000);
        assert_eq!(b.len(), 5000);
        assert_eq!(b.capacity(), 8192);
        assert_eq!(b.as_mut_ptr() as usize % ALIGN, 0);
        assert!(b.iter().all(|&x| x == 0));
        b[4999] = 7;
        b.set_len(8192);
        assert_eq!(b[4999], 7);
    }

    #[test]
    fn a_copy_is_aligned_and_its_padding_zero() {
        for n in [0usize, 1, 4095, 4096, 4097, 65536] {
            let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8 + 1).collect();
            let mut b = AlignedBuf::copy_of(&data);
            assert_eq!(&b[..], &data[..]);
            assert_eq!(b.as_mut_ptr() as usize % ALIGN, 0);
            assert_eq!(b.capacity(), n.max(1).div_ceil(ALIGN) * ALIGN);
            let cap = b.capacity();
            b.set_len(cap);
            assert!(b[n..].iter().all(|&x| x == 0), "padding of {n} bytes");
        }
    }
}
