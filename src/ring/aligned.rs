//! A growable byte buffer whose start and capacity are multiples of [`ALIGN`], so it can be
//! written with O_DIRECT (which needs the memory, the file offset and the length aligned to
//! the device's logical block size). Used where data arrives in buffers of its own (a
//! stream's DATA payloads) rather than in pool leases.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

/// Alignment of the start and capacity: the largest logical block size O_DIRECT asks for.
pub const ALIGN: usize = 4096;

/// Bytes `[0, len)` are initialized (zeroed when first reached, then whatever was written);
/// the capacity is a multiple of [`ALIGN`] and also initialized.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
}

// SAFETY: the buffer owns its allocation exclusively (no aliasing pointers), like a Vec<u8>.
unsafe impl Send for AlignedBuf {}

impl Default for AlignedBuf {
    fn default() -> Self {
        AlignedBuf {
            ptr: NonNull::dangling(),
            len: 0,
            cap: 0,
        }
    }
}

impl AlignedBuf {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Make the length `len`. Within the capacity the bytes keep their contents; past it the
    /// buffer starts again from a zeroed allocation (nothing is kept: callers fill it).
    pub fn set_len(&mut self, len: usize) {
        if len > self.cap {
            let cap = len.div_ceil(ALIGN) * ALIGN;
            let layout = Layout::from_size_align(cap, ALIGN).expect("size checked by the caller");
            // SAFETY: `layout` has a non-zero size (len > cap >= 0, rounded up to ALIGN).
            let p = unsafe { alloc::alloc_zeroed(layout) };
            let Some(p) = NonNull::new(p) else {
                alloc::handle_alloc_error(layout)
            };
            self.free();
            self.ptr = p;
            self.cap = cap;
        }
        self.len = len;
    }

    /// The bytes up to the length rounded up to [`ALIGN`], the ones past the length zeroed:
    /// what an O_DIRECT write of the last, partial block of a file needs.
    pub fn padded(&mut self) -> &[u8] {
        let end = self.len.div_ceil(ALIGN) * ALIGN;
        let len = self.len;
        let all = self.whole_mut();
        all[len..end].fill(0);
        &all[..end]
    }

    fn whole_mut(&mut self) -> &mut [u8] {
        if self.cap == 0 {
            return &mut [];
        }
        // SAFETY: `ptr` points to `cap` initialized bytes (allocated zeroed) owned by self,
        // and the &mut self borrow makes this the only reference to them.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.cap) }
    }

    fn free(&mut self) {
        if self.cap > 0 {
            let layout = Layout::from_size_align(self.cap, ALIGN).expect("allocated with it");
            // SAFETY: `ptr` was allocated by `alloc_zeroed` with exactly this layout and is
            // not used after this (the caller replaces or drops it).
            unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) };
            self.cap = 0;
            self.len = 0;
            self.ptr = NonNull::dangling();
        }
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr` points to `cap >= len` initialized bytes owned by self; the shared
        // borrow of self keeps them from being changed or freed meanwhile.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        let len = self.len;
        &mut self.whole_mut()[..len]
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        self.free();
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_grows_keeps_and_pads() {
        let mut b = AlignedBuf::default();
        assert!(b.is_empty());
        assert_eq!(&*b, &[] as &[u8]);
        b.set_len(5000);
        assert_eq!(b.as_ptr() as usize % ALIGN, 0);
        assert!(b.iter().all(|&x| x == 0));
        b.fill(7);
        b.set_len(10);
        assert_eq!(&*b, &[7u8; 10]);
        let p = b.padded();
        assert_eq!(p.len(), ALIGN);
        assert_eq!(&p[..10], &[7u8; 10]);
        assert!(p[10..].iter().all(|&x| x == 0));
        b.set_len(3 * ALIGN + 1);
        assert_eq!(b.as_ptr() as usize % ALIGN, 0);
        assert_eq!(b.len(), 3 * ALIGN + 1);
        assert_eq!(b.padded().len(), 4 * ALIGN);
        b.set_len(0);
        assert_eq!(b.padded().len(), 0);
    }
}
