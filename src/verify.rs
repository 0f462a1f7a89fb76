//! `--verify` (issue 16, item 7): after the final sync, every file written is read back from
//! the target, its cached pages dropped first, and compared piece by piece with the BLAKE3 of
//! what was read from the source while copying. A mismatch is an error of its own
//! ([`crate::error::VERIFY_OP`], exit status [`crate::error::exit::VERIFY`]), and the file's
//! mtime is set to the epoch so that the next `mirror` (size+mtime) rewrites it.
//!
//! Must not: trust the page cache (pages of a synced file are clean, so `POSIX_FADV_DONTNEED`
//! drops them and the reads come from the device), or hold more than one buffer per thread.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::error::{EntryError, ErrorLog, VERIFY_OP};
use crate::ring::aligned::{AlignedBuf, ALIGN};

/// One read of the source: `len` bytes at `offset`, and their BLAKE3.
#[derive(Debug, Clone)]
pub struct Piece {
    pub offset: u64,
    pub len: u32,
    pub hash: [u8; 32],
}

impl Piece {
    pub fn of(offset: u64, data: &[u8]) -> Piece {
        Piece {
            offset,
            len: data.len() as u32,
            hash: *blake3::hash(data).as_bytes(),
        }
    }
}

/// A file written by this run: where it is and what its pieces hashed to.
#[derive(Debug)]
pub struct Item {
    pub dir: Arc<OwnedFd>,
    pub name: CString,
    /// For messages.
    pub path: PathBuf,
    pub size: u64,
    pub pieces: Vec<Piece>,
}

/// What verification read.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub files: u64,
    pub bytes: u64,
}

/// Files this big whose pieces start at block boundaries are read back with O_DIRECT: from
/// the device in big requests, without the page cache's readahead steps (the 1 GiB mixed
/// tree's read-back took 2.6 s buffered on 2 threads).
const DIRECT_MIN_BYTES: u64 = 256 << 10;

/// Read back and compare every item on `threads` threads (reads wait for the device: use more
/// than cores), each with a buffer of at most `buf_bytes`; mismatches and read errors are
/// reported into `errors`.
pub fn verify(items: Vec<Item>, threads: usize, buf_bytes: usize, errors: &ErrorLog) -> Stats {
    let next = AtomicUsize::new(0);
    let bytes = AtomicU64::new(0);
    let buf_bytes = buf_bytes.clamp(ALIGN, crate::engine::OP_BYTES_MAX as usize) / ALIGN * ALIGN;
    std::thread::scope(|s| {
        for _ in 0..threads.max(1).min(items.len().max(1)) {
            s.spawn(|| {
                let mut buf = AlignedBuf::default();
                buf.set_len(buf_bytes);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    match check(item, &mut buf[..]) {
                        Ok(n) => {
                            bytes.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(e) => errors.report(e),
                    }
                }
            });
        }
    });
    Stats {
        files: items.len() as u64,
        bytes: bytes.load(Ordering::Relaxed),
    }
}

fn check(item: &Item, buf: &mut [u8]) -> Result<u64, EntryError> {
    if crate::failpoint::hit("verify", item.name.as_bytes()).is_some() {
        // The test hook: a byte changed behind ringsync's back between write and verify.
        corrupt(item).map_err(|e| EntryError::new("failpoint", item.path.clone(), e))?;
    }
    let direct = item.size >= DIRECT_MIN_BYTES && item.pieces.iter().all(|p| p.offset % ALIGN as u64 == 0);
    read_back(item, buf, direct)
}

fn read_back(item: &Item, buf: &mut [u8], direct: bool) -> Result<u64, EntryError> {
    let err = |e: Errno| EntryError::new(VERIFY_OP, item.path.clone(), e);
    // Reading must not move the atime the copy set (O_NOATIME needs the owner or root).
    let open = |flags| rustix::fs::openat(&*item.dir, item.name.as_c_str(), flags, Mode::empty());
    let mut flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if direct {
        flags |= OFlags::DIRECT;
    }
    let fd = match open(flags | OFlags::NOATIME) {
        Err(Errno::PERM) => open(flags),
        // No O_DIRECT here (tmpfs, some FUSE): through the cache.
        Err(Errno::INVAL) if direct => return read_back(item, buf, false),
        r => r,
    }
    .map_err(err)?;
    let st = rustix::fs::fstat(&fd).map_err(err)?;
    let mismatch = |what: String| {
        let _ = mark_stale(&fd);
        EntryError::msg(VERIFY_OP, item.path.clone(), what)
    };
    if st.st_size as u64 != item.size {
        return Err(mismatch(format!(
            "the target has {} bytes, the source had {} when read",
            st.st_size, item.size
        )));
    }
    // Clean after the sync: dropped, so what follows reads the device.
    rustix::fs::fadvise(&fd, 0, None, rustix::fs::Advice::DontNeed).map_err(err)?;
    let mut read = 0;
    for p in &item.pieces {
        let mut h = blake3::Hasher::new();
        let mut at = p.offset;
        let end = p.offset + p.len as u64;
        while at < end {
            // O_DIRECT reads whole blocks (from a block boundary: every step but the last at
            // the end of the file moves by whole blocks); only the piece's bytes are hashed.
            let left = (end - at) as usize;
            let want = if direct {
                left.div_ceil(ALIGN) * ALIGN
            } else {
                left
            }
            .min(buf.len());
            let n = match rustix::io::pread(&fd, &mut buf[..want], at) {
                Ok(0) => break,
                Ok(n) => n.min(left),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(err(e)),
            };
            h.update(&buf[..n]);
            at += n as u64;
        }
        read += at - p.offset;
        if at < end || h.finalize().as_bytes() != &p.hash {
            return Err(mismatch(format!(
                "the target's bytes {}..{end} differ from what was read from the source",
                p.offset
            )));
        }
    }
    Ok(read)
}

/// Make a mismatched file look changed to the next mirror (mtime at the epoch).
fn mark_stale(fd: &OwnedFd) -> Result<(), Errno> {
    let zero = rustix::fs::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let keep = rustix::fs::Timespec {
        tv_sec: 0,
        tv_nsec: rustix::fs::UTIME_OMIT,
    };
    rustix::fs::futimens(
        fd,
        &rustix::fs::Timestamps {
            last_access: keep,
            last_modification: zero,
        },
    )
}

/// Flip the first byte of the item's first piece on disk (the failpoint hook).
fn corrupt(item: &Item) -> Result<(), Errno> {
    let Some(p) = item.pieces.first() else {
        return Ok(());
    };
    let fd = rustix::fs::openat(
        &*item.dir,
        item.name.as_c_str(),
        OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    let mut b = [0u8; 1];
    rustix::io::pread(&fd, &mut b, p.offset)?;
    b[0] ^= 0xff;
    rustix::io::pwrite(&fd, &b, p.offset)?;
    rustix::fs::fsync(&fd)?;
    // Keep the mtime the copy gave it, as a change behind our back might.
    let _ = rustix::fs::futimens(
        &fd,
        &rustix::fs::Timestamps {
            last_access: st_time(st.st_atime, st.st_atime_nsec),
            last_modification: st_time(st.st_mtime, st.st_mtime_nsec),
        },
    );
    Ok(())
}

fn st_time(sec: impl Into<i64>, nsec: impl TryInto<i64>) -> rustix::fs::Timespec {
    rustix::fs::Timespec {
        tv_sec: sec.into(),
        tv_nsec: nsec.try_into().unwrap_or(0) as _,
    }
}
