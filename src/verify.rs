//! `--verify` (issue 16, item 7): after the final sync, every file written is read back from
//! the target, its cached pages dropped first, and compared piece by piece with the XXH3-128
//! of what was read from the source while copying. A mismatch is an error of its own
//! ([`crate::error::VERIFY_OP`], exit status [`crate::error::exit::VERIFY`]), and the file's
//! mtime is set to the epoch so that the next `mirror` (size+mtime) rewrites it.
//!
//! Must not: trust the page cache (pages of a synced file are clean, so `POSIX_FADV_DONTNEED`
//! drops them and the reads come from the device), or hold more than one buffer per thread.

use std::collections::VecDeque;
use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::error::{EntryError, ErrorLog, VERIFY_OP};
use crate::ring::aligned::{AlignedBuf, ALIGN};

/// One read of the source: `len` bytes at `offset`, and their XXH3-128: a checksum against
/// accidents (a bad write path, a device returning other blocks), not against an adversary,
/// who could as well change the target after the check.
#[derive(Debug, Clone)]
pub struct Piece {
    pub offset: u64,
    pub len: u32,
    pub hash: u128,
}

impl Piece {
    pub fn of(offset: u64, data: &[u8]) -> Piece {
        Piece {
            offset,
            len: data.len() as u32,
            hash: xxhash_rust::xxh3::xxh3_128(data),
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

/// How many threads read back beside `cores` cores: reads wait for the device, and each
/// thread has one in flight. On the 2-core VM the mixed tree's read-back overlapped with the
/// copy took 1.55 s with 8, 1.24 s with 32 (the copy alone: 0.85 s; perf/verify-20261204.md).
pub fn readers(cores: usize) -> usize {
    (cores * 16).clamp(1, 32)
}

/// Read back and compare every item on `threads` threads (reads wait for the device: use more
/// than cores), each with a buffer of at most `buf_bytes`; mismatches and read errors are
/// reported into `errors`.
pub fn verify(items: Vec<Item>, threads: usize, buf_bytes: usize, errors: &ErrorLog) -> Stats {
    let threads = threads.max(1).min(items.len().max(1));
    let live = Live::start(threads, buf_bytes);
    live.push(items);
    live.finish(errors)
}

/// Read-back running beside the copy: files are handed over once a `syncfs` has made them
/// durable (a published batch), so that reading them back overlaps writing the next batch
/// instead of following the whole run. Errors are collected and reported at [`Live::finish`].
pub struct Live {
    shared: Arc<Queue>,
    readers: Vec<std::thread::JoinHandle<Vec<EntryError>>>,
    buf_bytes: usize,
}

/// Files waiting to be read back, whether more may come, and what was read.
#[derive(Default)]
struct Queue {
    items: Mutex<(VecDeque<Item>, bool)>,
    more: Condvar,
    files: AtomicU64,
    bytes: AtomicU64,
}

/// A handle to give files to a [`Live`] read-back from other threads.
#[derive(Clone)]
pub struct Feed(Arc<Queue>);

impl Feed {
    pub fn push(&self, items: impl IntoIterator<Item = Item>) {
        let mut q = self.0.items.lock().expect("verify queue poisoned");
        let before = q.0.len();
        q.0.extend(items);
        let added = q.0.len() - before;
        drop(q);
        match added {
            0 => {}
            1 => self.0.more.notify_one(),
            _ => self.0.more.notify_all(),
        }
    }
}

impl Live {
    /// Start `threads` readers (fewer if threads cannot be made: [`Live::finish`] reads too),
    /// each with a buffer of at most `buf_bytes`.
    pub fn start(threads: usize, buf_bytes: usize) -> Live {
        let shared = Arc::new(Queue::default());
        let buf_bytes = buf_bytes.clamp(ALIGN, crate::engine::OP_BYTES_MAX as usize) / ALIGN * ALIGN;
        let readers = (0..threads)
            .map_while(|i| {
                let q = shared.clone();
                std::thread::Builder::new()
                    .name(format!("verify-{i}"))
                    .spawn(move || read_queue(&q, buf_bytes))
                    .ok()
            })
            .collect();
        Live {
            shared,
            readers,
            buf_bytes,
        }
    }

    pub fn feed(&self) -> Feed {
        Feed(self.shared.clone())
    }

    pub fn push(&self, items: impl IntoIterator<Item = Item>) {
        self.feed().push(items)
    }

    /// Stop without reading what is left (an interrupted or failed run): each reader ends
    /// its file. (Dropping does the same.)
    pub fn abandon(self) {}

    /// No more files: read what is left (this thread too), wait for the readers, report.
    pub fn finish(mut self, errors: &ErrorLog) -> Stats {
        self.shared.items.lock().expect("verify queue poisoned").1 = true;
        self.shared.more.notify_all();
        for e in read_queue(&self.shared, self.buf_bytes) {
            errors.report(e);
        }
        for r in std::mem::take(&mut self.readers) {
            match r.join() {
                Ok(errs) => errs.into_iter().for_each(|e| errors.report(e)),
                Err(_) => errors.report(EntryError::msg(
                    VERIFY_OP,
                    PathBuf::new(),
                    "a read-back thread panicked",
                )),
            }
        }
        Stats {
            files: self.shared.files.load(Ordering::Relaxed),
            bytes: self.shared.bytes.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        {
            let mut q = self.shared.items.lock().unwrap_or_else(|p| p.into_inner());
            q.0.clear();
            q.1 = true;
        }
        self.shared.more.notify_all();
        for r in std::mem::take(&mut self.readers) {
            let _ = r.join();
        }
    }
}

/// One reader: take files until the queue is empty and closed.
fn read_queue(q: &Queue, buf_bytes: usize) -> Vec<EntryError> {
    let mut buf = AlignedBuf::default();
    let mut errors = Vec::new();
    loop {
        let item = {
            let mut g = q.items.lock().expect("verify queue poisoned");
            loop {
                if let Some(item) = g.0.pop_front() {
                    break item;
                }
                if g.1 {
                    return errors;
                }
                g = q.more.wait(g).expect("verify queue poisoned");
            }
        };
        if buf.is_empty() {
            // Allocated at the first file: a reader that never gets one costs no memory.
            buf.set_len(buf_bytes);
        }
        q.files.fetch_add(1, Ordering::Relaxed);
        match check(&item, &mut buf[..]) {
            Ok(n) => {
                q.bytes.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => errors.push(e),
        }
    }
}

fn check(item: &Item, buf: &mut [u8]) -> Result<u64, EntryError> {
    if crate::failpoint::hit("verify", item.name.as_bytes()).is_some() {
        // The test hook: a byte changed behind ringsync's back between write and verify.
        corrupt(item).map_err(|e| EntryError::new("failpoint", item.path.clone(), e))?;
    }
    // Every file whose pieces start at block boundaries (all but a few sparse ones) is read
    // with O_DIRECT, small ones too (one block-rounded read): from the device in one request,
    // without readahead, page-cache inserts and copies (the mixed tree's read-back beside the
    // copy: 1.55 s with only files of 256 KiB and more direct, 1.38 s with all).
    let direct = item.pieces.iter().all(|p| p.offset % ALIGN as u64 == 0);
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
        let mut h = xxhash_rust::xxh3::Xxh3::new();
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
        if at < end || h.digest128() != p.hash {
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
