//! The io_uring backend: one ring per worker thread.
//!
//! Set-up tries `SINGLE_ISSUER | DEFER_TASKRUN` (completion work runs only when this thread asks,
//! which avoids task-work interrupts in the middle of a batch) and falls back to `COOP_TASKRUN`,
//! then to a plain ring, for older kernels. The worker's pool is registered as one fixed buffer;
//! when registration fails (RLIMIT_MEMLOCK for an unprivileged user, say) plain READ/WRITE are
//! used instead.
//!
//! In-flight ops live in a slot table sized at start-up. Completions are drained into the
//! caller's batch before any handler runs, so a handler never re-enters the ring.

use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Instant;

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use rustix::io::Errno;

use super::{raw, Backend, Buffers, Completion, Op, Pool, Token, IOV_PIECES, SOLO_BYTES};

struct Slot {
    token: Token,
    op: Op,
    start: Instant,
    /// The iovecs of a vectored transfer: they must stay put until the op completes, so they
    /// live in the slot (the slot table is never reallocated).
    iov: Iovecs,
}

/// The iovec array of one slot.
struct Iovecs([libc::iovec; IOV_PIECES]);

// SAFETY: the pointers inside point into the pool of the same `Uring`, which owns that memory
// and moves to another thread together with the slots; nothing is shared between threads.
unsafe impl Send for Iovecs {}

const NO_IOV: libc::iovec = libc::iovec {
    iov_base: std::ptr::null_mut(),
    iov_len: 0,
};

pub struct Uring {
    // Field order matters for drop: the ring (and with it every kernel reference to op memory)
    // goes before the slots and the pool.
    ring: IoUring<squeue::Entry, cqueue::Entry>,
    slots: Vec<Option<Slot>>,
    free_slots: Vec<u32>,
    in_flight: usize,
    /// This worker's buffers, registered with the ring as one fixed buffer when `fixed`.
    pool: Pool,
    fixed: bool,
    vectored: bool,
    setup: &'static str,
    /// Slots to resubmit after a reap (short transfers, EINTR/EAGAIN); kept to avoid allocating.
    again: Vec<u32>,
    /// See [`super::RingConfig::async_reads`].
    async_reads: bool,
}

impl Uring {
    pub fn new(sq_entries: u32, pool: Pool, buffers: Buffers, async_reads: bool) -> std::io::Result<Uring> {
        let (ring, setup) = build_ring(sq_entries)?;
        // Enough slots that every SQE and every CQE can be accounted for at once.
        let slot_count = ring.params().cq_entries() as usize;
        let iov = libc::iovec {
            iov_base: pool.base_ptr() as *mut libc::c_void,
            iov_len: pool.len_bytes(),
        };
        // SAFETY: the iovec covers the pool's allocation exactly; the pool outlives the ring (it is
        // a later field of `Uring` and the Drop impl drains all ops before anything is freed), so
        // the registered memory stays valid for as long as the kernel may use it.
        let fixed = buffers == Buffers::Fixed && unsafe { ring.submitter().register_buffers(&[iov]) }.is_ok();
        Ok(Uring {
            ring,
            slots: (0..slot_count).map(|_| None).collect(),
            free_slots: (0..slot_count as u32).rev().collect(),
            in_flight: 0,
            pool,
            fixed,
            vectored: buffers == Buffers::Vectored,
            setup,
            again: Vec::with_capacity(slot_count),
            async_reads,
        })
    }

    /// Build the SQE for the op in `slot`. Pointers refer to heap memory owned by the op (CString,
    /// Box<Statx>) or to the pool, so they stay valid while the op sits in the slot table.
    fn sqe(&mut self, slot: u32) -> squeue::Entry {
        let s = self.slots[slot as usize].as_mut().expect("slot in use");
        let entry = match &s.op {
            Op::OpenAt {
                dir,
                name,
                flags,
                mode,
            } => opcode::OpenAt::new(types::Fd(raw(dir)), name.as_ptr())
                .flags((flags.bits() | libc::O_CLOEXEC as u32) as i32)
                .mode(mode.bits())
                .build(),
            Op::Statx { dir, name, buf } => {
                // rustix's `Statx` is `#[repr(C)]` with the kernel's `struct statx` layout, which is
                // what io_uring's opaque `types::statx` stands for.
                let ptr = &**buf as *const rustix::fs::Statx as *mut types::statx;
                opcode::Statx::new(types::Fd(raw(dir)), name.as_ptr(), ptr)
                    .flags(libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT)
                    .mask(libc::STATX_BASIC_STATS | libc::STATX_BTIME)
                    .build()
            }
            Op::Read {
                fd,
                buf,
                offset,
                len,
                done,
            } => {
                let (ptr, n, off) = self.pool.tail(buf, *offset, *len, *done);
                if self.vectored {
                    let count = split_iov(&mut s.iov.0, ptr, n);
                    opcode::Readv::new(types::Fd(raw(fd)), s.iov.0.as_ptr(), count)
                        .offset(off)
                        .build()
                } else if self.fixed {
                    opcode::ReadFixed::new(types::Fd(raw(fd)), ptr, n, 0)
                        .offset(off)
                        .build()
                } else {
                    opcode::Read::new(types::Fd(raw(fd)), ptr, n).offset(off).build()
                }
                .flags(if self.async_reads && n >= SOLO_BYTES {
                    squeue::Flags::ASYNC
                } else {
                    squeue::Flags::empty()
                })
            }
            Op::Write {
                fd,
                buf,
                offset,
                len,
                done,
            } => {
                let (ptr, n, off) = self.pool.tail(buf, *offset, *len, *done);
                if self.vectored {
                    let count = split_iov(&mut s.iov.0, ptr, n);
                    opcode::Writev::new(types::Fd(raw(fd)), s.iov.0.as_ptr(), count)
                        .offset(off)
                        .build()
                } else if self.fixed {
                    opcode::WriteFixed::new(types::Fd(raw(fd)), ptr, n, 0)
                        .offset(off)
                        .build()
                } else {
                    opcode::Write::new(types::Fd(raw(fd)), ptr, n).offset(off).build()
                }
            }
            Op::Fsync { fd } => opcode::Fsync::new(types::Fd(raw(fd))).build(),
            Op::Close { fd } => opcode::Close::new(types::Fd(*fd)).build(),
        };
        entry.user_data(slot as u64)
    }

    fn enqueue(&mut self, slot: u32) {
        let entry = self.sqe(slot);
        let solo = match &self.slots[slot as usize].as_ref().expect("slot in use").op {
            Op::Read { len, done, .. } | Op::Write { len, done, .. } => len - done >= SOLO_BYTES,
            _ => false,
        };
        if solo && !self.ring.submission().is_empty() {
            // What is queued goes first, so that this op's enter carries it alone.
            let _ = self.ring.submit();
        }
        loop {
            // SAFETY: the entry's pointers refer to memory owned by the op in `slots[slot]` or to the
            // pool; both stay put until the completion for `slot` is reaped (ops are only removed
            // from the slot table in `reap`, and Drop drains before freeing).
            let pushed = unsafe { self.ring.submission().push(&entry) };
            if pushed.is_ok() {
                break;
            }
            // Submission queue full: hand what is queued to the kernel and retry.
            match self.ring.submit() {
                Ok(_) | Err(_) => {}
            }
        }
        if solo {
            // Errors leave the entry queued, for the next `wait` to submit again and report.
            let _ = self.ring.submit();
        }
    }

    /// Move finished CQEs into `out`, resubmitting short transfers and EINTR/EAGAIN in place.
    fn reap(&mut self, out: &mut Vec<Completion>) {
        let mut again = std::mem::take(&mut self.again);
        {
            let cq = self.ring.completion();
            for cqe in cq {
                let slot = cqe.user_data() as u32;
                let res = cqe.result();
                let s = self.slots[slot as usize]
                    .as_mut()
                    .expect("completion for a free slot");
                // Retry interrupted ops, but never close(2): Linux has released the descriptor
                // even when close reports EINTR, and a retry could close a reused number.
                let is_close = matches!(s.op, Op::Close { .. });
                if (res == -libc::EINTR || res == -libc::EAGAIN) && !is_close {
                    again.push(slot);
                    continue;
                }
                if res >= 0 {
                    match &mut s.op {
                        Op::Read { len, done, .. } => {
                            *done += res as u32;
                            // 0 = end of file: complete with what was read.
                            if res > 0 && *done < *len {
                                again.push(slot);
                                continue;
                            }
                        }
                        Op::Write { len, done, .. } => {
                            if res == 0 {
                                // A zero-byte write would loop forever; report it.
                                let s = self.slots[slot as usize].take().expect("slot in use");
                                self.free_slots.push(slot);
                                self.in_flight -= 1;
                                out.push(Completion {
                                    token: s.token,
                                    result: Err(Errno::IO),
                                    op: s.op,
                                    opened: None,
                                    latency: s.start.elapsed(),
                                });
                                continue;
                            }
                            *done += res as u32;
                            if *done < *len {
                                again.push(slot);
                                continue;
                            }
                        }
                        _ => {}
                    }
                }
                let s = self.slots[slot as usize].take().expect("slot in use");
                self.free_slots.push(slot);
                self.in_flight -= 1;
                let (result, opened) = match (&s.op, res) {
                    (_, r) if r < 0 => (Err(Errno::from_raw_os_error(-r)), None),
                    (Op::OpenAt { .. }, fd) => {
                        // SAFETY: a successful IORING_OP_OPENAT returns a new descriptor that
                        // nothing else owns.
                        (Ok(0), Some(unsafe { OwnedFd::from_raw_fd(fd) }))
                    }
                    (Op::Read { done, .. } | Op::Write { done, .. }, _) => (Ok(*done), None),
                    _ => (Ok(0), None),
                };
                out.push(Completion {
                    token: s.token,
                    result,
                    op: s.op,
                    opened,
                    latency: s.start.elapsed(),
                });
            }
        }
        for slot in again.drain(..) {
            self.enqueue(slot);
        }
        self.again = again;
    }
}

/// Split `n` bytes at `ptr` into up to `IOV_PIECES` iovecs of at least 4 KiB (the last takes
/// the remainder); returns how many were used.
fn split_iov(iov: &mut [libc::iovec; IOV_PIECES], ptr: *mut u8, n: u32) -> u32 {
    let n = n as usize;
    let piece = (n / IOV_PIECES).max(4096).div_ceil(4096) * 4096;
    let mut used = 0;
    let mut at = 0;
    while at < n {
        let len = piece.min(n - at);
        iov[used] = libc::iovec {
            iov_base: ptr.wrapping_add(at) as *mut libc::c_void,
            iov_len: if used == IOV_PIECES - 1 { n - at } else { len },
        };
        at += iov[used].iov_len;
        used += 1;
    }
    used as u32
}

/// Applies one set of setup flags to a ring builder.
type SetupFn = fn(&mut io_uring::Builder);

fn build_ring(entries: u32) -> std::io::Result<(IoUring, &'static str)> {
    let attempts: [(&'static str, SetupFn); 3] = [
        ("single_issuer+defer_taskrun", |b| {
            b.setup_single_issuer().setup_defer_taskrun();
        }),
        ("coop_taskrun", |b| {
            b.setup_coop_taskrun();
        }),
        ("plain", |_| {}),
    ];
    let mut last = None;
    for (name, apply) in attempts {
        let mut b = IoUring::builder();
        apply(&mut b);
        match b.build(entries) {
            Ok(ring) => return Ok((ring, name)),
            // EINVAL: the kernel does not know a setup flag; try a simpler ring.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("at least one attempt"))
}

impl Backend for Uring {
    fn describe(&self) -> String {
        let buffers = if self.vectored {
            "vectored"
        } else if self.fixed {
            "fixed"
        } else {
            "plain"
        };
        format!("uring ({}, {buffers} buffers)", self.setup)
    }

    fn push(&mut self, token: Token, op: Op) {
        let slot = self
            .free_slots
            .pop()
            .expect("more ops in flight than ring slots: caller must bound in-flight ops");
        self.slots[slot as usize] = Some(Slot {
            token,
            op,
            start: Instant::now(),
            iov: Iovecs([NO_IOV; IOV_PIECES]),
        });
        self.in_flight += 1;
        self.enqueue(slot);
    }

    fn wait(&mut self, min_complete: usize, out: &mut Vec<Completion>) -> std::io::Result<()> {
        let before = out.len();
        loop {
            let want = if self.in_flight == 0 {
                0
            } else {
                min_complete.saturating_sub(out.len() - before)
            };
            match self.ring.submit_and_wait(want) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // EBUSY: the CQ overflowed; reaping below makes room.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => return Err(e),
            }
            self.reap(out);
            if out.len() - before >= min_complete || self.in_flight == 0 {
                return Ok(());
            }
        }
    }

    fn submit(&mut self) {
        let _ = self.ring.submit();
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn pool(&mut self) -> &mut Pool {
        &mut self.pool
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        // The kernel may still write into op memory or the pool: wait for everything in flight
        // before any of it is freed. Errors here leave nothing better to do than to stop waiting,
        // and then the memory is leaked rather than freed under the kernel's feet.
        let mut sink = Vec::new();
        while self.in_flight > 0 {
            if self.ring.submit_and_wait(1).is_err() && self.ring.completion().is_empty() {
                std::mem::forget(std::mem::replace(&mut self.pool, Pool::new(1, 4096)));
                std::mem::forget(std::mem::take(&mut self.slots));
                return;
            }
            self.reap(&mut sink);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;

    use super::*;

    /// Small reads wait in the submission queue for the next enter; a read of SOLO_BYTES goes
    /// to the kernel at push, after whatever was queued, in its own enter.
    #[test]
    fn big_ops_are_submitted_alone_at_push() {
        if let Err(e) = super::super::probe_uring() {
            eprintln!("SKIP big_ops_are_submitted_alone_at_push: io_uring unavailable here ({e})");
            return;
        }
        let mib = SOLO_BYTES as u64;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..3 * mib).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::File::create(&path).unwrap().write_all(&data).unwrap();
        let fd: Arc<OwnedFd> = Arc::new(std::fs::File::open(&path).unwrap().into());
        let mut u = Uring::new(8, Pool::new(4, mib as usize), Buffers::Plain, false).unwrap();
        // (token, offset, length): two small reads, one of SOLO_BYTES, one just under it.
        let ops = [
            (1, 0, 4096),
            (2, 4096, 4096),
            (3, mib, mib),
            (4, 2 * mib, mib - 4096),
        ];
        let mut queued = Vec::new();
        for (token, at, n) in ops {
            let lease = u.pool().acquire(1).unwrap();
            u.push(token, Op::read(fd.clone(), lease, at, n as u32));
            queued.push(u.ring.submission().len());
        }
        assert_eq!(queued, [1, 2, 0, 1], "SQ entries left queued after each push");
        let mut out = Vec::new();
        while u.in_flight() > 0 {
            u.wait(1, &mut out).unwrap();
        }
        out.sort_by_key(|c| c.token);
        assert_eq!(out.len(), ops.len());
        for (c, (token, at, n)) in out.into_iter().zip(ops) {
            assert_eq!((c.token, c.result), (token, Ok(n as u32)));
            let lease = c.op.into_lease().unwrap();
            let got = &u.pool().bytes(&lease)[..n as usize];
            assert!(got == &data[at as usize..(at + n) as usize], "data of op {token}");
        }
    }
}
