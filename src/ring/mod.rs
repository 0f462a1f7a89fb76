//! The I/O submission layer: the only module with `unsafe`.
//!
//! Callers build an [`Op`] that *owns* everything the kernel will touch (path strings, the statx
//! buffer, a pool [`Lease`], an `Arc` of each file descriptor) and push it with a caller-chosen
//! token. The backend keeps the op until the kernel is done with it and hands it back inside the
//! [`Completion`], so buffer lifetime across submission is enforced by ownership rather than by
//! convention.
//!
//! Two backends implement [`Backend`]:
//! - [`uring::Uring`]: one io_uring per worker, batched submission (reads and writes of
//!   [`SOLO_BYTES`] or more alone), fixed (registered) buffers where registration succeeds,
//!   short reads/writes and EINTR/EAGAIN resubmitted internally;
//! - [`sync::Sync`]: performs each op as a plain syscall at push time (pread/pwrite, openat,
//!   statx…) and queues the completion. It is the fallback where io_uring is unavailable, and
//!   since the engine drives both through the same trait, both pass the same tests.
//!
//! Must not: know about files, trees or records; allocate per operation (the slot table and
//! completion vector are sized at start-up).

pub mod aligned;
pub mod btrfs;
#[cfg(feature = "failpoints")]
pub mod fault;
pub mod pool;
pub mod sync;
pub mod uring;
pub mod xattr;

use std::ffi::CString;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

pub use pool::{Lease, Pool, HUGE_MIN_BYTES};
pub use rustix::fs::{Mode, OFlags, Statx};
pub use rustix::io::Errno;

/// Caller-chosen identifier carried from push to completion.
pub type Token = u64;

/// One operation, owning every resource the kernel reads or writes while it is in flight.
#[derive(Debug)]
pub enum Op {
    /// `openat(dir, name, flags | O_CLOEXEC, mode)`; success yields [`Completion::opened`].
    OpenAt {
        dir: Arc<OwnedFd>,
        name: CString,
        flags: OFlags,
        mode: Mode,
    },
    /// `statx(dir, name, AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS | STATX_BTIME)` into `buf`.
    Statx {
        dir: Arc<OwnedFd>,
        name: CString,
        buf: Box<Statx>,
    },
    /// Read `len` bytes at `offset` into `buf`. Short reads are continued until `len` bytes or
    /// end of file; the result is the byte count actually read.
    Read {
        fd: Arc<OwnedFd>,
        buf: Lease,
        offset: u64,
        len: u32,
        done: u32,
    },
    /// Write `len` bytes from `buf` at `offset`; short writes are continued until all are written.
    Write {
        fd: Arc<OwnedFd>,
        buf: Lease,
        offset: u64,
        len: u32,
        done: u32,
    },
    /// `fsync(fd)`.
    Fsync { fd: Arc<OwnedFd> },
    /// `close(fd)`: the descriptor is consumed at push time, whatever the result.
    Close { fd: RawFd },
}

impl Op {
    pub fn read(fd: Arc<OwnedFd>, buf: Lease, offset: u64, len: u32) -> Op {
        assert!(len as usize <= buf.len(), "read longer than its buffer");
        Op::Read {
            fd,
            buf,
            offset,
            len,
            done: 0,
        }
    }

    pub fn write(fd: Arc<OwnedFd>, buf: Lease, offset: u64, len: u32) -> Op {
        assert!(len as usize <= buf.len(), "write longer than its buffer");
        Op::Write {
            fd,
            buf,
            offset,
            len,
            done: 0,
        }
    }

    /// A statx of `name` in `dir` with a fresh result buffer.
    pub fn statx(dir: Arc<OwnedFd>, name: CString) -> Op {
        // SAFETY: `struct statx` is plain integers (repr(C)); all-zero bytes are a valid value.
        let buf: Box<Statx> = Box::new(unsafe { std::mem::zeroed() });
        Op::Statx { dir, name, buf }
    }

    pub fn close(fd: OwnedFd) -> Op {
        Op::Close { fd: fd.into_raw_fd() }
    }

    pub fn kind(&self) -> OpKind {
        match self {
            Op::OpenAt { .. } => OpKind::Open,
            Op::Statx { .. } => OpKind::Statx,
            Op::Read { .. } => OpKind::Read,
            Op::Write { .. } => OpKind::Write,
            Op::Fsync { .. } => OpKind::Fsync,
            Op::Close { .. } => OpKind::Close,
        }
    }

    /// The lease inside a read or write, if any: how callers get their buffer back.
    pub fn into_lease(self) -> Option<Lease> {
        match self {
            Op::Read { buf, .. } | Op::Write { buf, .. } => Some(buf),
            _ => None,
        }
    }
}

/// Operation kinds, for latency histograms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Open,
    Statx,
    Read,
    Write,
    Fsync,
    Close,
}

impl OpKind {
    pub const ALL: [OpKind; 6] = [
        OpKind::Open,
        OpKind::Statx,
        OpKind::Read,
        OpKind::Write,
        OpKind::Fsync,
        OpKind::Close,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OpKind::Open => "open",
            OpKind::Statx => "statx",
            OpKind::Read => "read",
            OpKind::Write => "write",
            OpKind::Fsync => "fsync",
            OpKind::Close => "close",
        }
    }
}

/// A finished operation, with ownership of the op's resources returned.
#[derive(Debug)]
pub struct Completion {
    pub token: Token,
    /// Bytes transferred for read/write, 0 otherwise; or the errno.
    pub result: Result<u32, Errno>,
    pub op: Op,
    /// The new descriptor of a successful `OpenAt`.
    pub opened: Option<OwnedFd>,
    /// From push to completion, including time queued in the ring.
    pub latency: Duration,
}

/// What a worker drives: push ops, then wait for completions.
pub trait Backend: Send {
    /// `"uring"` or `"sync"`, plus whether fixed buffers are in use.
    fn describe(&self) -> String;
    /// Queue an op. Never fails: a full submission queue is flushed to the kernel first.
    fn push(&mut self, token: Token, op: Op);
    /// Submit what is queued and wait until at least `min_complete` completions are available
    /// (or none are in flight), appending them to `out`.
    fn wait(&mut self, min_complete: usize, out: &mut Vec<Completion>) -> std::io::Result<()>;
    /// Hand queued ops to the kernel now, without waiting for any (a no-op where push already
    /// performs the op). Errors are left for the next `wait` to report.
    fn submit(&mut self);
    /// Ops pushed and not yet returned through `wait`.
    fn in_flight(&self) -> usize;
    /// This worker's data buffers.
    fn pool(&mut self) -> &mut Pool;
}

/// Which backend a worker should build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    Uring,
    Sync,
}

/// How the io_uring backend hands data buffers to the kernel (the sync backend ignores it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Buffers {
    /// Register the pool and use READ_FIXED/WRITE_FIXED; plain READ/WRITE where registration
    /// is refused (RLIMIT_MEMLOCK).
    #[default]
    Fixed,
    /// Plain READ/WRITE: the kernel maps the user pages on every op.
    Plain,
    /// READV/WRITEV, each transfer gathered from [`IOV_PIECES`] equal iovecs (at least 4 KiB
    /// each): the path for ops spanning several buffers.
    Vectored,
}

/// Reads and writes of this many bytes or more go to the kernel alone, one `io_uring_enter`
/// each, as they are pushed; smaller ones are batched until the next `wait` or `submit`.
///
/// A batch of three or more SQEs is submitted under one block plug, which merges adjacent
/// sequential ops into one request of up to `max_sectors_kb`. For small ops that is the point of
/// batching (fio's 4 KiB direct writes at qd 32 move about twice as much batched). For ops of 1 MiB
/// it only makes requests bigger than the device needs, and slower where the device writes big
/// requests more slowly: on the virtio disk in perf/hugepages-20261122.md, 1 MiB direct writes
/// at qd 32 moved 1490-1645 MB/s batched (3.3 MiB requests) and 1964-2055 MB/s alone (1 MiB
/// requests). One extra syscall per MiB costs nothing measurable. fio without
/// `iodepth_batch_submit` submits every op this way.
pub const SOLO_BYTES: u32 = 1 << 20;

/// iovecs per op under [`Buffers::Vectored`].
pub const IOV_PIECES: usize = 4;

/// Sizing shared by both backends.
#[derive(Debug, Clone, Copy)]
pub struct RingConfig {
    /// Submission queue entries; the completion queue is twice this (kernel default).
    pub sq_entries: u32,
    pub pool_units: usize,
    pub pool_unit_bytes: usize,
    pub buffers: Buffers,
    /// io_uring: reads of [`SOLO_BYTES`] or more run on the kernel's io-wq workers
    /// (IOSQE_ASYNC) instead of inline in `io_uring_enter`, where a read of cached data does
    /// its whole copy on the submitting thread. For a thread with work of its own between
    /// reads: the sender hashes and writes the stream while the next reads copy on another
    /// core (`send big | cat` 1.44 → 1.15 s for a 2 GiB file, perf/stream-20261204.md).
    pub async_reads: bool,
}

/// `statfs` type of FUSE filesystems.
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// Whether io_uring reads of files below `path` can be trusted. Not on FUSE: on kernel 6.18
/// an `IORING_OP_READ` of a FUSE `direct_io` file whose server fails part of the request
/// completes with the full length, the rest of the buffer refilled from offset 0 (a plain
/// read(2) returns the short count): silent corruption, found by tests/fuse_fault_e2e.rs.
/// Callers read such files with pread instead (the sync engine). So also when a FUSE
/// filesystem is mounted anywhere below `path` (one read of mountinfo per run).
pub fn uring_reads_trusted(path: &std::path::Path) -> bool {
    if rustix::fs::statfs(path).is_ok_and(|s| s.f_type == FUSE_SUPER_MAGIC) {
        return false;
    }
    // Mount points are shown canonical; a path that cannot be resolved is not walked anyway.
    let below = std::fs::canonicalize(path).and_then(|p| crate::mounts::below(&p));
    !below.is_ok_and(|m| m.iter().any(crate::mounts::Mount::is_fuse))
}

/// Why io_uring could not be set up, for the one-line fallback notice.
pub fn probe_uring() -> Result<(), std::io::Error> {
    io_uring::IoUring::new(2).map(drop)
}

/// Build a backend for the calling thread (io_uring rings are created on the thread that will
/// submit to them, as SINGLE_ISSUER requires).
pub fn build(kind: EngineKind, cfg: RingConfig) -> std::io::Result<Box<dyn Backend>> {
    let pool = Pool::try_new(cfg.pool_units, cfg.pool_unit_bytes)?;
    let backend: Box<dyn Backend> = match kind {
        EngineKind::Uring => Box::new(uring::Uring::new(
            cfg.sq_entries,
            pool,
            cfg.buffers,
            cfg.async_reads,
        )?),
        EngineKind::Sync => Box::new(sync::Sync::new(pool)),
    };
    #[cfg(feature = "failpoints")]
    if crate::failpoint::active() {
        return Ok(Box::new(fault::Faulty::new(backend)));
    }
    Ok(backend)
}

fn raw(fd: &Arc<OwnedFd>) -> RawFd {
    fd.as_raw_fd()
}
