//! Fixed, pre-allocated data buffers for one worker.
//!
//! A worker's share of `--memory` is carved into `unit_bytes` units at start-up, 4 KiB aligned
//! (O_DIRECT-safe), and registered with that worker's ring as a single fixed buffer when the kernel
//! allows it. `acquire` hands out a contiguous run of units as a [`Lease`]; when nothing is free it
//! returns `None`: that is backpressure, never a heap fallback.
//!
//! Pools of [`HUGE_MIN_BYTES`] or more are rounded up to whole 2 MiB huge pages, mapped 2 MiB
//! aligned and advised `MADV_HUGEPAGE`: a 1 MiB op then lies in one physically contiguous page,
//! so the block layer builds one segment for it instead of 256 (one request per op, not a
//! split at the device's segment limit). On this VM's virtio disk that doubled O_DIRECT 1 MiB
//! reads at queue depth 1 (perf/README.md). Where transparent huge pages are off, or none is
//! free, the kernel quietly backs the range with 4 KiB pages; [`Pool::huge_bytes`] tells which.
//!
//! A `Lease` is not `Clone` and can only be made here, so whoever holds it has the only access to
//! that byte range. While a lease sits inside an in-flight [`super::Op`] the kernel owns the bytes;
//! the op hands the lease back on completion.

use std::ptr::NonNull;

/// Alignment of every unit: the largest logical block size O_DIRECT asks for on common devices.
pub const ALIGN_BYTES: usize = 4096;

/// A transparent huge page (x86-64, arm64 with 4 KiB base pages).
pub const HUGE_PAGE_BYTES: usize = 2 << 20;

/// Pools at least this big are backed by huge pages (rounded up to whole ones): at most half of
/// such a pool's memory is rounding, and smaller pools (4 KiB metadata buffers, small-block
/// benchmarks) gain nothing from contiguity worth 2 MiB.
pub const HUGE_MIN_BYTES: usize = 1 << 20;

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
    /// One flag per unit: true = in use. Small (a few hundred units per worker at the default
    /// `--memory`), so a linear scan is cheaper than any cleverer structure.
    used: Vec<bool>,
    free_units: usize,
}

// SAFETY: the pool owns its allocation exclusively; moving it to another thread moves that
// ownership. Access to unit bytes is mediated by `Lease`s, which are themselves exclusive.
unsafe impl Send for Pool {}

impl Pool {
    /// Allocate `units` units of `unit_bytes` each (rounded up to `ALIGN_BYTES`; a pool of
    /// [`HUGE_MIN_BYTES`] or more also to whole huge pages).
    ///
    /// Panics when the memory cannot be mapped; [`Pool::try_new`] returns that error instead.
    pub fn new(units: usize, unit_bytes: usize) -> Pool {
        Pool::try_new(units, unit_bytes).unwrap_or_else(|e| panic!("{e}"))
    }

    /// As [`Pool::new`], but a mapping the kernel refuses (more than it will commit) is an error.
    pub fn try_new(units: usize, unit_bytes: usize) -> std::io::Result<Pool> {
        static NEXT_ID: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
        assert!(units > 0, "pool needs at least one unit");
        let len = Pool::bytes_for(units, unit_bytes);
        let unit_bytes = unit_bytes.div_ceil(ALIGN_BYTES) * ALIGN_BYTES;
        let base = map_pool(len, len >= HUGE_MIN_BYTES)?;
        Ok(Pool {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            base,
            pages: len / ALIGN_BYTES,
            unit_bytes,
            used: vec![false; units],
            free_units: units,
        })
    }

    /// The memory a pool of `units` x `unit_bytes` takes: what memory caps must count.
    pub fn bytes_for(units: usize, unit_bytes: usize) -> usize {
        let len = units * unit_bytes.div_ceil(ALIGN_BYTES) * ALIGN_BYTES;
        if len >= HUGE_MIN_BYTES {
            len.div_ceil(HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES
        } else {
            len
        }
    }

    /// Bytes of this pool that sit in huge pages right now (from /proc/self/smaps: the
    /// AnonHugePages of the mapping that holds the pool, at most the pool's length); None when
    /// smaps cannot be read. Pages are only allocated when first touched (a fixed-buffer
    /// registration touches them all), so ask after that.
    pub fn huge_bytes(&self) -> Option<usize> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        huge_bytes_in(&smaps, self.base_ptr() as usize).map(|b| b.min(self.len_bytes()))
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
    ///
    /// The lowest free run that holds them all, else the longest free run (the lowest of equals):
    /// small leases pack at the bottom of the pool, so a run that moves little touches only the
    /// first pages of it, and a big request is not cut short by a one-unit hole below a long run.
    pub fn acquire(&mut self, units_wanted: usize) -> Option<Lease> {
        if self.free_units == 0 {
            return None;
        }
        let want = units_wanted.clamp(1, self.used.len());
        let (mut first, mut count) = (0, 0);
        let mut at = 0;
        while let Some(free) = self.used[at..].iter().position(|u| !u) {
            let start = at + free;
            let run = self.used[start..].iter().take(want).take_while(|u| !**u).count();
            if run > count {
                (first, count) = (start, run);
            }
            if run == want {
                break;
            }
            at = start + run;
        }
        if count == 0 {
            return None; // free_units says otherwise: never lease nothing
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

/// Map `len` bytes of private anonymous memory: page-aligned, and zero pages are only
/// materialised when first touched, so untouched units cost no RSS. (The global allocator's
/// aligned `alloc_zeroed` memsets the whole block up front.) With `huge`, `len` is a multiple
/// of `HUGE_PAGE_BYTES` and the mapping starts on a huge-page boundary, advised MADV_HUGEPAGE.
fn map_pool(len: usize, huge: bool) -> std::io::Result<NonNull<Page>> {
    use rustix::mm::{MapFlags, ProtFlags};
    let prot = ProtFlags::READ | ProtFlags::WRITE;
    // Over-map by one huge page, then unmap the unaligned head and the tail.
    let slack = if huge { HUGE_PAGE_BYTES } else { 0 };
    // SAFETY: a fresh anonymous mapping aliases nothing; the result is checked below.
    let raw =
        unsafe { rustix::mm::mmap_anonymous(std::ptr::null_mut(), len + slack, prot, MapFlags::PRIVATE) };
    let raw = match raw {
        Ok(p) => p as usize,
        Err(e) => {
            return Err(std::io::Error::new(
                std::io::Error::from(e).kind(),
                format!("cannot map {len} bytes of buffer pool: {e}"),
            ))
        }
    };
    let start = raw.next_multiple_of(slack.max(ALIGN_BYTES));
    let head = start - raw;
    let tail = slack - head;
    // SAFETY: [raw, start) and [start + len, raw + len + slack) lie inside the mapping just made
    // and nothing refers to them; both are page multiples (mmap returns page-aligned addresses
    // and slack, len are page multiples). A zero-length range is skipped.
    unsafe {
        if head > 0 {
            rustix::mm::munmap(raw as *mut std::ffi::c_void, head)
                .expect("unmap the head of our own mapping");
        }
        if tail > 0 {
            rustix::mm::munmap((start + len) as *mut std::ffi::c_void, tail)
                .expect("unmap the tail of our own mapping");
        }
        if huge {
            // Only advice: with THP off (EINVAL) the range keeps 4 KiB pages.
            let _ = rustix::mm::madvise(
                start as *mut std::ffi::c_void,
                len,
                rustix::mm::Advice::LinuxHugepage,
            );
        }
    }
    Ok(NonNull::new(start as *mut Page).expect("mmap returns a non-null address"))
}

/// AnonHugePages of the smaps entry whose range holds `addr`, in bytes.
fn huge_bytes_in(smaps: &str, addr: usize) -> Option<usize> {
    let mut inside = false;
    for line in smaps.lines() {
        let head = line.split_whitespace().next().unwrap_or("");
        if let Some((lo, hi)) = head.split_once('-') {
            if let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16)) {
                inside = lo <= addr && addr < hi;
                continue;
            }
        }
        if inside {
            if let Some(kb) = line.strip_prefix("AnonHugePages:") {
                return kb
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<usize>()
                    .ok()
                    .map(|k| k * 1024);
            }
        }
    }
    None
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

    /// Which units are in use, as a string ('#' used, '.' free): the oracle below is drawn by hand.
    fn map(pool: &Pool) -> String {
        pool.used.iter().map(|u| if *u { '#' } else { '.' }).collect()
    }

    #[test]
    fn acquire_takes_the_lowest_run_that_fits_else_the_longest() {
        let mut pool = Pool::new(12, 4096);
        let a: Vec<Lease> = (0..12).map(|_| pool.acquire(1).unwrap()).collect();
        assert_eq!(map(&pool), "############", "one-unit leases pack from the bottom");
        // Free units 1, 3-4 and 6-10: "#.#..#.....#".
        let mut a = a.into_iter().map(Some).collect::<Vec<_>>();
        for i in [1, 3, 4, 6, 7, 8, 9, 10] {
            pool.release(a[i].take().unwrap());
        }
        assert_eq!(map(&pool), "#.#..#.....#");
        let big = pool.acquire(4).unwrap();
        assert_eq!(
            (big.unit_first, big.len()),
            (6, 4 * 4096),
            "skips the holes below"
        );
        assert_eq!(map(&pool), "#.#..#####.#");
        let two = pool.acquire(2).unwrap();
        assert_eq!(two.unit_first, 3, "the lowest run that fits");
        let one = pool.acquire(1).unwrap();
        assert_eq!(one.unit_first, 1, "a small lease fills the lowest hole");
        assert_eq!(map(&pool), "##########.#");
        let short = pool.acquire(5).unwrap();
        assert_eq!(
            (short.unit_first, short.len()),
            (10, 4096),
            "nothing fits: the longest run"
        );
        assert!(pool.acquire(1).is_none());
        for l in [big, two, one, short].into_iter().chain(a.into_iter().flatten()) {
            pool.release(l);
        }
        assert_eq!(pool.free_units(), 12);
        // Longest of several short runs, the lowest of equals: "..#...#...#." wanting 4.
        let all = pool.acquire(12).unwrap();
        pool.release(all);
        let pins: Vec<Lease> = (0..12).map(|_| pool.acquire(1).unwrap()).collect();
        let mut keep = Vec::new();
        for (i, l) in pins.into_iter().enumerate() {
            if [2, 6, 10].contains(&i) {
                keep.push(l);
            } else {
                pool.release(l);
            }
        }
        assert_eq!(map(&pool), "..#...#...#.");
        let got = pool.acquire(4).unwrap();
        assert_eq!((got.unit_first, got.len()), (3, 3 * 4096));
        pool.release(got);
        for l in keep {
            pool.release(l);
        }
    }

    #[test]
    fn big_pools_are_whole_aligned_huge_pages() {
        let small = Pool::new(16, 4096);
        assert_eq!(small.len_bytes(), 16 * 4096, "below HUGE_MIN_BYTES: no rounding");
        for (units, unit) in [(1, 1 << 20), (3, 1 << 20), (32, 64 << 10), (5, 3 << 20)] {
            let pool = Pool::new(units, unit);
            let want = (units * unit).div_ceil(HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES;
            assert_eq!(pool.len_bytes(), want, "{units} x {unit}");
            assert_eq!(Pool::bytes_for(units, unit), want, "{units} x {unit}");
            assert_eq!(
                pool.base_ptr() as usize % HUGE_PAGE_BYTES,
                0,
                "{units} x {unit}: base"
            );
            assert_eq!(pool.units(), units);
        }
    }

    #[test]
    fn huge_pool_gets_huge_pages_when_thp_is_on() {
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
        if thp.is_empty() || thp.contains("[never]") {
            eprintln!("SKIP huge_pool_gets_huge_pages_when_thp_is_on: transparent huge pages are off here ({thp:?})");
            return;
        }
        let mut pool = Pool::new(4, 1 << 20);
        let mut lease = pool.acquire(4).unwrap();
        pool.bytes_mut(&mut lease).fill(1);
        let huge = pool.huge_bytes().expect("/proc/self/smaps");
        // The kernel may fall back to small pages when no 2 MiB block is free; on a machine with
        // free memory and THP on, at least one of the two huge pages must be there.
        assert!(huge >= HUGE_PAGE_BYTES, "AnonHugePages of the pool: {huge} bytes");
        assert!(huge <= pool.len_bytes());
        pool.release(lease);
    }

    #[test]
    fn smaps_entry_holding_an_address() {
        let smaps = "7f0000000000-7f0000400000 rw-p 00000000 00:00 0 \n\
                     Size:               4096 kB\n\
                     AnonHugePages:      2048 kB\n\
                     7f0000400000-7f0000600000 rw-p 00000000 00:00 0 \n\
                     AnonHugePages:         0 kB\n";
        assert_eq!(huge_bytes_in(smaps, 0x7f0000200000), Some(2 << 20));
        assert_eq!(huge_bytes_in(smaps, 0x7f0000400000), Some(0));
        assert_eq!(huge_bytes_in(smaps, 0x7f0000600000), None);
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
