//! The receiver's file writer: threads that write DATA payloads into the temporary files and,
//! after a file's last write, set its attributes, while the receiving thread reads, checks and
//! hashes the next records. Writing was most of a receive's time when the receiving thread did
//! it (copying every byte into fresh page-cache pages); on threads of their own the writes
//! overlap the pipe reads, the CRCs and the BLAKE3 instead of following them.
//!
//! Files of [`DIRECT_MIN`] bytes or more are written with O_DIRECT where the filesystem takes
//! it: the data goes from the payload buffer to the device, not through fresh page-cache
//! pages (on this project's VMs buffered writes ran at ~460 MB/s, direct ones at ~1.6 GB/s),
//! and a checkpoint's sync has less to write back. Aligned pieces only (the payload buffers
//! are aligned; the last, partial block of a file is written padded with zeros and the size
//! set back); anything else, or a filesystem that refuses, is written through the cache.
//! btrfs takes O_DIRECT but, for files with data checksums, turns it into a buffered write and
//! a wait for its writeback (Linux 6.15, commit 968f19c5b1b7). That is still used there: it
//! recycles a few page-cache pages where buffered writes touch fresh ones, which a freshly
//! booted VM makes expensive (the mixed tree into a loop btrfs, 5 pairs: 2.38 s against
//! 3.56 s buffered on fresh memory; 2.18 s against 1.95 s once memory was recycled).
//!
//! Jobs run in the order they were queued, so a file's attributes (its mtime above all) are
//! set after its last write. A failed write or attribute change is reported once, here, and
//! marks the file failed and gives its space back (truncated to 0): it is then never placed
//! (see [`OutFile::failed`]) and never remembered for later hardlinks.
//!
//! Files are spread over [`LANES`] threads; all the jobs of one file go to the same one, in
//! order. Bounded: payload buffers in flight are limited to about [`BUFFERED_BYTES`] (at
//! least two); they come back to the receiving thread for reuse.
//!
//! Must not: publish anything (that is the publishing thread's, after a flush).

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use rustix::fs::OFlags;
use rustix::io::Errno;

use super::{Apply, Stop, Xattrs};
use crate::ring::aligned::{AlignedBuf, ALIGN};
use crate::stream;

/// Files at least this large are written with O_DIRECT where possible.
pub const DIRECT_MIN: u64 = 64 << 10;

/// [`OutFile`]'s O_DIRECT state.
const BUFFERED: u8 = 0;
const DIRECT: u8 = 1;
/// The filesystem refused O_DIRECT for this file: written through the cache from now on.
const REFUSED: u8 = 2;

/// Writing threads: direct writes wait for the device, so several keep it busy (and
/// buffered ones of small files spread over the cores).
const LANES: usize = 4;
/// Jobs queued per thread at most.
const QUEUED: usize = 8;
/// Payload bytes in flight (queued or being written) at most, about.
pub const BUFFERED_BYTES: usize = 32 << 20;

/// A file being written: its temporary file, and whether anything done to it failed.
pub(super) struct OutFile {
    pub fd: OwnedFd,
    pub rel: Vec<u8>,
    /// The writing thread all its jobs go to.
    lane: usize,
    /// Its size, as FILE said.
    size: u64,
    failed: AtomicBool,
    /// O_DIRECT on the descriptor (used by the writer thread only).
    direct: AtomicU8,
    /// A padded last block made the file longer than `size` (writer thread only).
    padded: AtomicBool,
    /// The end of the data written so far (writer thread only): the file is created empty
    /// and grows with its writes, and [`OutFile::trim`] sets the size FILE said.
    end: AtomicU64,
}

impl OutFile {
    /// `lane`: from [`Writer::lane`].
    pub fn new(fd: OwnedFd, rel: Vec<u8>, size: u64, lane: usize) -> OutFile {
        OutFile {
            fd,
            rel,
            lane,
            size,
            failed: AtomicBool::new(false),
            direct: AtomicU8::new(BUFFERED),
            padded: AtomicBool::new(false),
            end: AtomicU64::new(0),
        }
    }

    /// Turn O_DIRECT on or off on the descriptor; false if the filesystem refuses it.
    fn set_direct(&self, on: bool) -> bool {
        let now = self.direct.load(Ordering::Relaxed);
        if now == REFUSED {
            return !on;
        }
        if (now == DIRECT) == on {
            return true;
        }
        let ok = rustix::fs::fcntl_getfl(&self.fd)
            .and_then(|f| {
                let f = if on {
                    f | OFlags::DIRECT
                } else {
                    f - OFlags::DIRECT
                };
                rustix::fs::fcntl_setfl(&self.fd, f)
            })
            .is_ok();
        let state = match (on, ok) {
            (true, true) => DIRECT,
            (true, false) => REFUSED,
            (false, _) => BUFFERED,
        };
        self.direct.store(state, Ordering::Relaxed);
        ok
    }

    /// Write one payload: directly if it can be, else through the page cache.
    fn write(&self, data: &mut AlignedBuf, offset: u64) -> Result<(), Errno> {
        let end = offset + data.len() as u64;
        self.end.fetch_max(end, Ordering::Relaxed);
        let aligned = offset % ALIGN as u64 == 0 && (data.len() % ALIGN == 0 || end == self.size);
        if self.size >= DIRECT_MIN && aligned && self.set_direct(true) {
            let padded = data.padded();
            match write_all_at(&self.fd, padded, offset) {
                Ok(()) => {
                    if padded.len() > data.len() {
                        self.padded.store(true, Ordering::Relaxed);
                    }
                    return Ok(());
                }
                // Not for this file after all (alignment the device wants, or the
                // filesystem): the whole piece again through the cache.
                Err(Errno::INVAL) => {
                    self.direct.store(REFUSED, Ordering::Relaxed);
                    let _ = rustix::fs::fcntl_getfl(&self.fd)
                        .and_then(|f| rustix::fs::fcntl_setfl(&self.fd, f - OFlags::DIRECT));
                }
                Err(e) => return Err(e),
            }
        } else {
            self.set_direct(false);
        }
        write_all_at(&self.fd, data, offset)
    }

    /// After the last write: the size FILE said, if a padded block went past it or the data
    /// ended before it (a hole at the end, or no data at all).
    fn trim(&self) -> Result<(), Errno> {
        if self.padded.load(Ordering::Relaxed) || self.end.load(Ordering::Relaxed) < self.size {
            rustix::fs::ftruncate(&self.fd, self.size)?;
        }
        Ok(())
    }

    /// A write or setting its attributes failed: the file must not be placed. Final once the
    /// writer was flushed after the file's [`Writer::finish`].
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    fn fail(&self) {
        self.failed.store(true, Ordering::Release);
    }
}

/// What [`Writer::finish`] does after a file's last write.
pub(super) struct Finish {
    pub meta: stream::Meta,
    pub xattrs: Xattrs,
    /// Made in a directory with a default ACL: inherited xattrs are pruned.
    pub acl: bool,
}

enum Job {
    Write {
        file: Arc<OutFile>,
        offset: u64,
        data: AlignedBuf,
    },
    Finish(Arc<OutFile>, Box<Finish>),
    Flush(SyncSender<()>),
}

/// One writing thread and its queue.
struct Lane {
    jobs: SyncSender<Job>,
    thread: JoinHandle<()>,
}

pub(super) struct Writer {
    lanes: Vec<Lane>,
    /// Payload buffers written and given back.
    back: Receiver<AlignedBuf>,
    /// The lane of the next file.
    next: usize,
    /// Payload buffers handed over and not given back yet, and how many may be.
    out: usize,
    out_max: usize,
    /// Jobs were queued since the last flush.
    busy: bool,
}

fn gone() -> Stop {
    Stop::Stream("the file writing thread stopped".into())
}

impl Writer {
    /// `max_payload`: the stream's; payload buffers in flight are bounded to about
    /// [`BUFFERED_BYTES`] (at least 2).
    pub fn start(ap: Arc<Apply>, max_payload: usize) -> Result<Writer, String> {
        let (give, back) = mpsc::channel();
        let mut lanes = Vec::new();
        for i in 0..LANES {
            let (jobs, rx) = mpsc::sync_channel::<Job>(QUEUED);
            let (ap, give) = (ap.clone(), give.clone());
            let thread = std::thread::Builder::new()
                .name(format!("ringsync-write{i}"))
                .spawn(move || run(&ap, rx, give))
                .map_err(|e| format!("start a file writing thread: {e}"))?;
            lanes.push(Lane { jobs, thread });
        }
        Ok(Writer {
            lanes,
            back,
            next: 0,
            out: 0,
            out_max: (BUFFERED_BYTES / max_payload.max(1)).max(2),
            busy: false,
        })
    }

    /// The lane for a new file: its jobs all go there, in order.
    pub fn lane(&mut self) -> usize {
        self.next = (self.next + 1) % LANES;
        self.next
    }

    fn send(&mut self, lane: usize, job: Job) -> Result<(), Stop> {
        self.busy = true;
        self.lanes
            .get(lane)
            .ok_or_else(gone)?
            .jobs
            .send(job)
            .map_err(|_| gone())
    }

    /// Write `data` at `offset` of `file` (skipped once the file failed).
    pub fn write(&mut self, file: &Arc<OutFile>, offset: u64, data: AlignedBuf) -> Result<(), Stop> {
        self.out += 1;
        self.send(
            file.lane,
            Job::Write {
                file: file.clone(),
                offset,
                data,
            },
        )
    }

    /// After the file's last write: set its size back if padded, and its attributes.
    pub fn finish(&mut self, file: &Arc<OutFile>, f: Finish) -> Result<(), Stop> {
        self.send(file.lane, Job::Finish(file.clone(), Box::new(f)))
    }

    /// Wait until everything queued is done: every file finished so far has its final
    /// [`OutFile::failed`].
    pub fn flush(&mut self) -> Result<(), Stop> {
        if !self.busy {
            return Ok(());
        }
        let mut waits = Vec::new();
        for lane in 0..self.lanes.len() {
            let (tx, rx) = mpsc::sync_channel(1);
            self.send(lane, Job::Flush(tx))?;
            waits.push(rx);
        }
        for rx in waits {
            rx.recv().map_err(|_| gone())?;
        }
        self.busy = false;
        Ok(())
    }

    /// Payload buffers given back, for the next DATA records; waits for one while as many
    /// as allowed are in flight.
    pub fn reclaim(&mut self, mut keep: impl FnMut(AlignedBuf)) -> Result<(), Stop> {
        while self.out >= self.out_max {
            keep(self.back.recv().map_err(|_| gone())?);
            self.out -= 1;
        }
        while let Ok(b) = self.back.try_recv() {
            keep(b);
            self.out -= 1;
        }
        Ok(())
    }

    /// Finish what is queued and end the threads.
    pub fn stop(&mut self) {
        for lane in self.lanes.drain(..) {
            drop(lane.jobs);
            let _ = lane.thread.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(ap: &Apply, jobs: Receiver<Job>, give: mpsc::Sender<AlignedBuf>) {
    for job in jobs {
        match job {
            Job::Write {
                file,
                offset,
                mut data,
            } => {
                if !file.failed() {
                    if let Err(e) = file.write(&mut data, offset) {
                        file.fail();
                        ap.fail(&file.rel, "write", e);
                        // It is never placed: its space goes back now, for the files after it
                        // (its name goes at the next publication).
                        let _ = rustix::fs::ftruncate(&file.fd, 0);
                    }
                }
                let _ = give.send(data);
            }
            Job::Finish(file, f) => {
                if file.failed() {
                    continue;
                }
                if let Err(e) = file.trim() {
                    file.fail();
                    ap.fail(&file.rel, "set size", e);
                    continue;
                }
                if let Err(e) = ap.apply_fd(&file.fd, &f.meta, &f.xattrs, f.acl) {
                    file.fail();
                    ap.fail(&file.rel, "set attributes", e);
                }
            }
            Job::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

fn write_all_at(fd: &OwnedFd, mut data: &[u8], mut offset: u64) -> Result<(), Errno> {
    while !data.is_empty() {
        let fault = crate::failpoint::hit_fd("write", std::os::fd::AsRawFd::as_raw_fd(fd));
        let written = match fault {
            Some(crate::failpoint::Fault::Fail(e)) => Err(e),
            Some(crate::failpoint::Fault::Short) if data.len() > 1 => {
                rustix::io::pwrite(fd, &data[..data.len() / 2], offset)
            }
            _ => rustix::io::pwrite(fd, data, offset),
        };
        match written {
            Ok(0) => return Err(Errno::NOSPC),
            Ok(n) => {
                data = &data[n..];
                offset += n as u64;
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
