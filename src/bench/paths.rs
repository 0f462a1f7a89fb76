//! The measurement loops of `ringsync bench`: one function per family of copy paths, each run
//! by one thread on its own pair of files until a deadline.
//!
//! Every loop goes sequentially through its file in `block`-sized operations and starts a new
//! pass at the end of the file. A pass ends once its last op is done, with `fdatasync` of the
//! target (so page cache absorption never counts as disk speed) and, in cold mode, both files'
//! pages dropped (`POSIX_FADV_DONTNEED`), so the next pass reads from the disk again; fio's
//! `--loops` with `end_fsync=1` and `invalidate=1` does the same. The time of those syncs is
//! inside the measurement. (Wrapping without draining left ops completed but unreaped behind the
//! synchronous fdatasync: p99 latencies of buffered writes at qd 32 read 0.4-1 s, fio's 11 ms.)
//!
//! Latency is per operation: one read or one write (read/write modes); in copy mode, one block
//! from the submission of its read to the completion of its write; one copy_file_range call;
//! one block through the pipe; one whole-file clone.
//!
//! Must not: decide what to run (mod.rs does), print, or use `unsafe` (io_uring goes through
//! [`crate::ring`]).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rustix::fs::Advice;
use rustix::io::Errno;

use crate::config::{BenchMode, BenchPath};
use crate::ring::{self, Buffers, EngineKind, Op, RingConfig};

/// One thread's files and its part of the combination.
pub struct Lane {
    pub src: Arc<OwnedFd>,
    pub dst: Arc<OwnedFd>,
    pub size: u64,
}

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub path: BenchPath,
    pub mode: BenchMode,
    pub block: u64,
    pub qd: u32,
    pub cold: bool,
    /// Operations completing before this instant are warm-up and not counted.
    pub measure_from: Instant,
    /// No operation is started at or after this instant.
    pub deadline: Instant,
    /// O_DIRECT files: no page cache to sync or drop.
    pub direct: bool,
}

/// One thread's measurements.
pub struct Tally {
    pub bytes: u64,
    pub ops: u64,
    /// Per-operation latency, nanoseconds.
    pub lat: Histogram<u64>,
    /// When this thread's last counted work (including the final sync) finished.
    pub end: Instant,
    /// The thread's I/O buffer pool (paths that have one): its bytes, and how many of them sit
    /// in huge pages at the end of the run.
    pub buffers: Option<BufferUse>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct BufferUse {
    pub bytes: u64,
    pub huge_bytes: u64,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            bytes: 0,
            ops: 0,
            lat: Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("valid bounds"),
            end: Instant::now(),
            buffers: None,
        }
    }

    fn count(&mut self, spec: &Spec, bytes: u64, latency: Duration, done_at: Instant) {
        if done_at < spec.measure_from {
            return;
        }
        self.bytes += bytes;
        self.ops += 1;
        let ns = (latency.as_nanos() as u64).clamp(1, 600_000_000_000);
        self.lat.record(ns).expect("clamped into bounds");
    }
}

/// A failure of the measured path, with the operation that failed.
#[derive(Debug)]
pub struct Failure {
    pub op: &'static str,
    pub errno: Errno,
}

fn fail(op: &'static str) -> impl Fn(Errno) -> Failure {
    move |errno| Failure { op, errno }
}

/// A transfer call that moved nothing on a file of known size: the file shrank or the kernel
/// misbehaves; either way the path cannot be measured.
fn progress(n: usize, op: &'static str) -> Result<usize, Failure> {
    if n == 0 {
        return Err(Failure { op, errno: Errno::IO });
    }
    Ok(n)
}

/// End of a pass: make written data durable, then (cold) drop both files from the cache.
fn end_pass(lane: &Lane, spec: &Spec) -> Result<(), Failure> {
    if spec.mode != BenchMode::Read && spec.path != BenchPath::Reflink {
        rustix::fs::fdatasync(&*lane.dst).map_err(fail("fdatasync"))?;
    }
    drop_cache(lane, spec)
}

fn drop_cache(lane: &Lane, spec: &Spec) -> Result<(), Failure> {
    if spec.cold && !spec.direct {
        rustix::fs::fadvise(&*lane.src, 0, None, Advice::DontNeed).map_err(fail("fadvise"))?;
        rustix::fs::fadvise(&*lane.dst, 0, None, Advice::DontNeed).map_err(fail("fadvise"))?;
    }
    Ok(())
}

/// Fill `buf` with bytes no filesystem can compress or deduplicate away.
pub fn fill_pattern(buf: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

/// Bytes per stamp: fio's scramble_buffers also makes every 512-byte sector unique.
const STAMP_EVERY: usize = 512;

/// Write-mode streams (one per ring_loop), so that two lanes never write the same sector.
static STREAMS: AtomicU64 = AtomicU64::new(1);

/// Make every sector of a write buffer unique before it goes out: its file offset, and a tag
/// for the stream and the pass, in the sector's first 16 bytes (the rest keeps the buffer's
/// random fill). Storage that deduplicates or recognises repeated blocks must not see the same
/// few buffers written over and over: on this project's VM disk, fio writing one unchanged
/// 1 MiB buffer (`--scramble_buffers=0`) ran 35-45 % faster than with its default scrambling.
pub fn stamp_sectors(buf: &mut [u8], offset: u64, tag: u64) {
    for (k, sector) in buf.chunks_mut(STAMP_EVERY).enumerate() {
        let mut head = [0u8; 16];
        head[..8].copy_from_slice(&(offset + (k * STAMP_EVERY) as u64).to_le_bytes());
        head[8..].copy_from_slice(&tag.to_le_bytes());
        let n = sector.len().min(head.len());
        sector[..n].copy_from_slice(&head[..n]);
    }
}

/// The io_uring paths and psync (the sync backend: one pread/pwrite at a time).
pub fn ring_loop(lane: &Lane, spec: &Spec) -> Result<Tally, Failure> {
    let (kind, buffers) = match spec.path {
        BenchPath::UringVec => (EngineKind::Uring, Buffers::Vectored),
        BenchPath::UringFixed | BenchPath::UringDirect => (EngineKind::Uring, Buffers::Fixed),
        _ => (EngineKind::Sync, Buffers::Plain),
    };
    let qd = if kind == EngineKind::Sync {
        1
    } else {
        spec.qd.max(1)
    } as usize;
    let cfg = RingConfig {
        sq_entries: (qd as u32).next_power_of_two().max(4),
        pool_units: qd,
        pool_unit_bytes: spec.block as usize,
        buffers,
        async_reads: false,
    };
    let mut ring = ring::build(kind, cfg).map_err(|e| Failure {
        op: "io_uring_setup",
        errno: Errno::from_io_error(&e).unwrap_or(Errno::IO),
    })?;
    // Buffers by index; the token of an op is its buffer's index.
    let mut bufs: Vec<Option<ring::Lease>> = Vec::with_capacity(qd);
    for i in 0..qd {
        let mut lease = ring.pool().acquire(1).expect("pool sized to qd");
        if spec.mode == BenchMode::Write {
            fill_pattern(ring.pool().bytes_mut(&mut lease), i as u64 + 1);
        }
        bufs.push(Some(lease));
    }
    let mut free: Vec<usize> = (0..qd).rev().collect();
    // Stream in the high half, pass in the low half of every write's stamp.
    let stream = STREAMS.fetch_add(1, Ordering::Relaxed) << 32;
    let mut pass = 0u64;
    let mut started = vec![Instant::now(); qd];
    let mut offsets = vec![0u64; qd];
    let mut tally = Tally::new();
    let mut batch = Vec::with_capacity(qd * 2);
    let mut next = 0u64;
    loop {
        let now = Instant::now();
        let issuing = now < spec.deadline;
        if issuing && next >= lane.size && ring.in_flight() == 0 {
            // Drain, then sync and drop the pass (as fio does with --loops and end_fsync): no op
            // waits behind the synchronous fdatasync, so latencies stay honest.
            end_pass(lane, spec)?;
            next = 0;
            pass += 1;
        }
        while issuing && next < lane.size {
            let Some(i) = free.pop() else { break };
            let len = (lane.size - next).min(spec.block) as u32;
            let mut lease = bufs[i].take().expect("free buffer");
            if spec.mode == BenchMode::Write {
                stamp_sectors(ring.pool().bytes_mut(&mut lease), next, stream | pass);
            }
            started[i] = Instant::now();
            offsets[i] = next;
            let op = match spec.mode {
                BenchMode::Write => Op::write(lane.dst.clone(), lease, next, len),
                _ => Op::read(lane.src.clone(), lease, next, len),
            };
            ring.push(i as u64, op);
            next += len as u64;
        }
        if ring.in_flight() == 0 {
            if !issuing {
                break;
            }
            continue;
        }
        ring.wait(1, &mut batch).map_err(|e| Failure {
            op: "io_uring_enter",
            errno: Errno::from_io_error(&e).unwrap_or(Errno::IO),
        })?;
        let done_at = Instant::now();
        for c in batch.drain(..) {
            let i = c.token as usize;
            let kind = c.op.kind();
            let n = c.result.map_err(fail(kind.name()))?;
            let lease = c.op.into_lease().expect("data op");
            if n == 0 {
                return Err(Failure {
                    op: kind.name(),
                    errno: Errno::IO,
                });
            }
            if spec.mode == BenchMode::Copy && kind == ring::OpKind::Read {
                ring.push(i as u64, Op::write(lane.dst.clone(), lease, offsets[i], n));
                continue;
            }
            let latency = match spec.mode {
                BenchMode::Copy => done_at - started[i],
                _ => c.latency,
            };
            tally.count(spec, n as u64, latency, done_at);
            bufs[i] = Some(lease);
            free.push(i);
        }
    }
    end_pass(lane, spec)?;
    tally.end = Instant::now();
    let pool = ring.pool();
    tally.buffers = Some(BufferUse {
        bytes: pool.len_bytes() as u64,
        huge_bytes: pool.huge_bytes().unwrap_or(0) as u64,
    });
    Ok(tally)
}

/// copy_file_range, `block` bytes per call.
pub fn cfr_loop(lane: &Lane, spec: &Spec) -> Result<Tally, Failure> {
    let mut tally = Tally::new();
    let mut next = 0u64;
    while Instant::now() < spec.deadline {
        if next >= lane.size {
            end_pass(lane, spec)?;
            next = 0;
        }
        let len = (lane.size - next).min(spec.block) as usize;
        let t = Instant::now();
        let (mut off_in, mut off_out) = (next, next);
        let n =
            rustix::fs::copy_file_range(&*lane.src, Some(&mut off_in), &*lane.dst, Some(&mut off_out), len)
                .map_err(fail("copy_file_range"))?;
        let n = progress(n, "copy_file_range")?;
        let done = Instant::now();
        tally.count(spec, n as u64, done - t, done);
        next += n as u64;
    }
    end_pass(lane, spec)?;
    tally.end = Instant::now();
    Ok(tally)
}

/// Pipe capacity used by the splice path for `block`: the block itself where the kernel allows
/// it (root may exceed /proc/sys/fs/pipe-max-size), else the largest size it grants.
fn pipe_for(block: u64) -> Result<(OwnedFd, OwnedFd, usize), Failure> {
    let (r, w) = rustix::pipe::pipe().map_err(fail("pipe"))?;
    let want = block.clamp(4096, 1 << 30) as usize;
    let cap = match rustix::pipe::fcntl_setpipe_size(&w, want) {
        Ok(n) => n,
        Err(_) => {
            let max = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .unwrap_or(1 << 20);
            rustix::pipe::fcntl_setpipe_size(&w, max.min(want)).unwrap_or(65536)
        }
    };
    Ok((r, w, cap))
}

/// splice file → pipe → file, `block` bytes per operation (in pipe-sized pieces).
pub fn splice_loop(lane: &Lane, spec: &Spec) -> Result<Tally, Failure> {
    use rustix::pipe::{splice, SpliceFlags};
    let (pr, pw, cap) = pipe_for(spec.block)?;
    let mut tally = Tally::new();
    let mut next = 0u64;
    while Instant::now() < spec.deadline {
        if next >= lane.size {
            end_pass(lane, spec)?;
            next = 0;
        }
        let len = (lane.size - next).min(spec.block);
        let t = Instant::now();
        let mut moved = 0u64;
        while moved < len {
            let piece = ((len - moved) as usize).min(cap);
            let mut off_in = next + moved;
            let n = splice(
                &*lane.src,
                Some(&mut off_in),
                pw.as_fd(),
                None,
                piece,
                SpliceFlags::MORE,
            )
            .map_err(fail("splice"))?;
            let n = progress(n, "splice")?;
            let mut off_out = next + moved;
            let mut left = n;
            while left > 0 {
                let m = splice(
                    pr.as_fd(),
                    None,
                    &*lane.dst,
                    Some(&mut off_out),
                    left,
                    SpliceFlags::MORE,
                )
                .map_err(fail("splice"))?;
                let m = progress(m, "splice")?;
                left -= m;
            }
            moved += n as u64;
        }
        let done = Instant::now();
        tally.count(spec, moved, done - t, done);
        next += moved;
    }
    end_pass(lane, spec)?;
    tally.end = Instant::now();
    Ok(tally)
}

/// FICLONE of the whole file per operation. Counts the file's size as moved, although no data
/// is copied: the report labels it.
pub fn reflink_loop(lane: &Lane, spec: &Spec) -> Result<Tally, Failure> {
    let mut tally = Tally::new();
    while Instant::now() < spec.deadline {
        let t = Instant::now();
        rustix::fs::ioctl_ficlone(&*lane.dst, &*lane.src).map_err(fail("ioctl(FICLONE)"))?;
        let done = Instant::now();
        tally.count(spec, lane.size, done - t, done);
    }
    tally.end = Instant::now();
    Ok(tally)
}

/// Run the loop of `spec.path`.
pub fn run(lane: &Lane, spec: &Spec) -> Result<Tally, Failure> {
    drop_cache(lane, spec)?;
    match spec.path {
        BenchPath::Cfr => cfr_loop(lane, spec),
        BenchPath::Splice => splice_loop(lane, spec),
        BenchPath::Reflink => reflink_loop(lane, spec),
        _ => ring_loop(lane, spec),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn stamps_make_every_sector_of_every_write_unique() {
        // The same random buffer written at 4 offsets in 3 passes of 2 streams, as ring_loop
        // would: no two 512-byte sectors may be equal.
        let mut fill = vec![0u8; 8192];
        fill_pattern(&mut fill, 7);
        let mut seen = HashSet::new();
        for stream in [1u64 << 32, 2 << 32] {
            for pass in 0..3u64 {
                for offset in [0u64, 8192, 16384, 24576] {
                    let mut buf = fill.clone();
                    stamp_sectors(&mut buf, offset, stream | pass);
                    for sector in buf.chunks(STAMP_EVERY) {
                        assert!(
                            seen.insert(sector.to_vec()),
                            "sector repeated: offset {offset} pass {pass}"
                        );
                    }
                }
            }
        }
        assert_eq!(seen.len(), 2 * 3 * 4 * 16);
    }

    #[test]
    fn stamps_fit_short_tails() {
        let mut buf = vec![0xAAu8; 512 + 5];
        stamp_sectors(&mut buf, 1 << 40, 9);
        assert_eq!(&buf[..8], &(1u64 << 40).to_le_bytes());
        assert_eq!(&buf[512..], &((1u64 << 40) + 512).to_le_bytes()[..5]);
        assert!(buf[16..512].iter().all(|&b| b == 0xAA));
    }
}
