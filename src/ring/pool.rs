//! Fixed, pre-allocated data buffers for one worker.
//!
//! A worker's share of `--memory` is carved into `unit_bytes` units at start-up, 4 KiB aligned
//! (O_DIRECT-safe), and registered with that worker's ring as a single fixed buffer when the kernel
//! allows it. `acquire` hands out a contiguous run of units as a [`Lease`]; when nothing is free it
//! returns `None`: that is backpressure, never a heap fallback.
//!
//! A `Lease` is not `Clone` and can only be made here, so whoever holds it has the only access to
//! that byte range. While a lease sits inside an in-flight [`super::Op`] the kernel owns the bytes;
//! the op hands the lease back on completion.

use std::ptr::NonNull;

/// Alignment of every unit: the largest logical block size O_DIRECT asks for on common devices.
pub const ALIGN_BYTES: usize = 4096;

#[repr(C, align(4096))]
#[allow(dead_code)] // only its size and alignment are used
struct Page([u8; ALIGN_BYTES]);

/// A contiguous run of pool units, exclusively owned by its holder.
#[derive(Debug)]
pub struct Lease {
    pool_id: usize,
    unit_first: u32,
    unit_count: u32,
    len_bytes: usize,
}

impl Lease {
    /// Usable length in bytes (`unit_count * unit_bytes`).
    pub fn len(&self) -> usize {
        self.len_bytes
    }

    /// Leases are never empty; provided for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.len_bytes == 0
    }

    /// Byte offset of this lease from the pool base (the registered buffer's base).
    pub(crate) fn offset_bytes(&self, unit_bytes: usize) -> usize {
        self.unit_first as usize * unit_bytes
    }
}

/// The buffers of one worker.
pub struct Pool {
    id: usize,
    base: NonNull<Page>,
    pages: usize,
    unit_bytes: usize,
    /// One flag per unit: true = in use. Small (≤ a few thousand units), so a linear first-fit
    /// scan is cheaper than any cleverer structure.
    used: Vec<bool>,
    free_units: usize,
}

// SAFETY: the pool owns its allocation exclusively; moving it to another thread moves that
// ownership. Access to unit bytes is mediated by `Lease`s, which are themselves exclusive.
unsafe impl Send for Pool {}

impl Pool {
    /// Allocate `units` units of `unit_bytes` each (rounded up to `ALIGN_BYTES`).
    pub fn new(units: usize, unit_bytes: usize) -> Pool {
        static NEXT_ID: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
        assert!(units > 0, "pool needs at least one unit");
        let unit_bytes = unit_bytes.div_ceil(ALIGN_BYTES) * ALIGN_BYTES;
        let pages = units * (unit_bytes / ALIGN_BYTES);
        // A private anonymous mapping: page-aligned, and zero pages are only materialised when
        // first touched, so untouched units cost no RSS. (The global allocator's aligned
        // `alloc_zeroed` memsets the whole block up front.)
        let len = pages * ALIGN_BYTES;
        let prot = rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE;
        // SAFETY: a fresh anonymous mapping aliases nothing; the result is checked below.
        let raw = unsafe {
            rustix::mm::mmap_anonymous(std::ptr::null_mut(), len, prot, rustix::mm::MapFlags::PRIVATE)
        };
        let raw = match raw {
            Ok(p) => p as *mut Page,
            Err(e) => panic!("cannot map {len} bytes of buffer pool: {e}"),
        };
        let base = NonNull::new(raw).expect("mmap returns a non-null address");
        Pool {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            base,
            pages,
            unit_bytes,
            used: vec![false; units],
            free_units: units,
        }
    }

    pub fn unit_bytes(&self) -> usize {
        self.unit_bytes
    }

    pub fn units(&self) -> usize {
        self.used.len()
    }

    pub fn free_units(&self) -> usize {
        self.free_units
    }

    pub fn len_bytes(&self) -> usize {
        self.pages * ALIGN_BYTES
    }

    pub(crate) fn base_ptr(&self) -> *mut u8 {
        self.base.as_ptr() as *mut u8
    }

    /// Take up to `units_wanted` contiguous units (at least one), or `None` if all are in use.
    pub fn acquire(&mut self, units_wanted: usize) -> Option<Lease> {
        if self.free_units == 0 {
            return None;
        }
        let units_wanted = units_wanted.clamp(1, self.used.len());
        let first = self.used.iter().position(|u| !u)?;
        let mut count = 1;
        while count < units_wanted && first + count < self.used.len() && !self.used[first + count] {
            count += 1;
        }
        for u in &mut self.used[first..first + count] {
            *u = true;
        }
        self.free_units -= count;
        Some(Lease {
            pool_id: self.id,
            unit_first: first as u32,
            unit_count: count as u32,
            len_bytes: count * self.unit_bytes,
        })
    }

    /// Units needed to hold `bytes`.
    pub fn units_for(&self, bytes: u64) -> usize {
        (bytes.div_ceil(self.unit_bytes as u64) as usize).max(1)
    }

    pub fn release(&mut self, lease: Lease) {
        assert_eq!(lease.pool_id, self.id, "lease returned to the wrong pool");
        let first = lease.unit_first as usize;
        for u in &mut self.used[first..first + lease.unit_count as usize] {
            debug_assert!(*u, "double release");
            *u = false;
        }
        self.free_units += lease.unit_count as usize;
    }

    /// Raw pointer to a lease's bytes, for building an SQE or a syscall.
    pub(crate) fn ptr(&self, lease: &Lease) -> *mut u8 {
        assert_eq!(lease.pool_id, self.id, "lease used with the wrong pool");
        // SAFETY: unit_first + unit_count lies within the allocation (checked at acquire), so the
        // offset stays inside the same allocated object.
        unsafe { self.base_ptr().add(lease.offset_bytes(self.unit_bytes)) }
    }

    /// Where the unfinished part of a transfer of `len` bytes at file `offset` stands after
    /// `done` bytes: (buffer pointer, bytes left, file offset).
    pub(crate) fn tail(&self, lease: &Lease, offset: u64, len: u32, done: u32) -> (*mut u8, u32, u64) {
        assert!(
            done < len && len as usize <= lease.len_bytes,
            "transfer outside its lease"
        );
        // SAFETY: `done < len <= lease.len()` (asserted), so the result stays inside the lease.
        let ptr = unsafe { self.ptr(lease).add(done as usize) };
        (ptr, len - done, offset + done as u64)
    }

    /// The bytes of a lease that is not in flight.
    pub fn bytes(&self, lease: &Lease) -> &[u8] {
        let ptr = self.ptr(lease);
        // SAFETY: the lease is the only handle to this range and, being borrowed here, is not
        // inside an in-flight op, so no one writes the range while the slice lives.
        unsafe { std::slice::from_raw_parts(ptr, lease.len_bytes) }
    }

    /// Mutable bytes of a lease that is not in flight.
    pub fn bytes_mut(&mut self, lease: &mut Lease) -> &mut [u8] {
        let ptr = self.ptr(lease);
        // SAFETY: as in `bytes`, and the `&mut Lease` proves exclusive use.
        unsafe { std::slice::from_raw_parts_mut(ptr, lease.len_bytes) }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: `base` is the start of our own mapping of exactly `pages` pages, and the backends
        // drain every in-flight op before dropping their pool. munmap cannot fail for a range we
        // mapped ourselves, so its result carries nothing to report.
        let _ = unsafe {
            rustix::mm::munmap(
                self.base.as_ptr() as *mut std::ffi::c_void,
                self.pages * ALIGN_BYTES,
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acquire_is_bounded_and_contiguous() {
        let mut pool = Pool::new(4, 1000);
        assert_eq!(pool.unit_bytes(), 4096);
        let a = pool.acquire(3).unwrap();
        assert_eq!(a.len(), 3 * 4096);
        let b = pool.acquire(3).unwrap();
        assert_eq!(b.len(), 4096, "only one unit left");
        assert!(pool.acquire(1).is_none(), "empty pool is backpressure");
        pool.release(a);
        let c = pool.acquire(2).unwrap();
        assert_eq!(c.len(), 2 * 4096);
        assert_eq!(pool.ptr(&c) as usize % ALIGN_BYTES, 0);
        pool.release(b);
        pool.release(c);
        assert_eq!(pool.free_units(), 4);
    }

    #[test]
    #[should_panic(expected = "wrong pool")]
    fn foreign_lease_is_refused() {
        let mut p1 = Pool::new(1, 4096);
        let mut p2 = Pool::new(1, 4096);
        let lease = p1.acquire(1).unwrap();
        p2.release(lease);
    }
}
