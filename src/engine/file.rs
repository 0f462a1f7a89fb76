//! Copying one regular file: a state machine driven by ring completions.
//!
//! open source + create target (both through the ring) → plan (reflink, holes, chunks) → reads
//! and writes at explicit offsets from pool buffers, up to `OPS_PER_FILE_MAX` in flight → owner,
//! xattrs, mode, times → optional fsync → close both (through the ring) → rename into place when
//! an existing entry is being replaced → link waiting hardlinks.
//!
//! Durable runs (`--fsync file|end`) write files of [`DIRECT_MIN_BYTES`] or more with O_DIRECT
//! through the ring instead of copy_file_range: the data goes from the pool buffer to the
//! device, not into fresh page-cache pages that the final sync then writes back (the 2 GiB
//! file on this project's VMs: 0.93 s direct against 1.45 s through the cache and a sync).
//! Such a file is not split over workers (see `plan`). Pieces are 4 KiB aligned (the pool's
//! buffers are; offsets are op-size multiples from block-aligned data segments); the piece
//! that holds the file's last, partial block stops at the block before it, and that block is
//! written through the cache once the file's other writes are done (padding it instead and
//! setting the size back made ext4 and xfs read the block back, a synchronous read per
//! file; turning O_DIRECT off while direct writes are queued makes them cached ones). An
//! unaligned data run (small-block filesystems) is held the same way. Where it refuses O_DIRECT
//! (at `fcntl`, or a write answers EINVAL) the file goes on through the cache. Only on ext4 and
//! xfs: btrfs turns direct writes to checksummed files into buffered ones and a wait for each,
//! and on network and FUSE filesystems a direct write is a synchronous round trip.
//!
//! A file bigger than `CHUNK_BYTES` is split: its other chunks go to the shared queue as jobs that
//! any worker runs against the same open descriptors, and whichever chunk finishes last does the
//! metadata and close. The target is created under its final name only when nothing was there; on
//! any failure it is removed, so no half-written file is left under a final name unreported.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rustix::fs::{AtFlags, Mode, OFlags, SeekFrom};
use rustix::io::Errno;

use super::{
    resolve_links, scan, source_error, DirNode, Job, Step, Worker, CFR_MIN_BYTES, CFR_PIECE_BYTES,
    CHUNK_BYTES, OPS_PER_FILE_MAX, OP_BYTES_MAX,
};
use crate::config::{DataPath, Fsync, Reflink};
use crate::error::EntryError;
use crate::meta::{self, Meta};
use crate::progress::Counters;
use crate::ring::{Completion, Lease, Op};

const SUB_OPEN_SRC: u32 = 0;
const SUB_OPEN_DST: u32 = 1;
const SUB_OPEN_TMP: u32 = 2;
const SUB_DATA: u32 = 3;
const SUB_FSYNC: u32 = 4;
const SUB_CLOSE_SRC: u32 = 5;
const SUB_CLOSE_DST: u32 = 6;
/// A data write submitted while the target had O_DIRECT (see `data_done`).
const SUB_DATA_DIRECT: u32 = 7;

/// A file whose descriptors are open, shared by the tasks copying its chunks.
pub struct FileCtx {
    parent: Arc<DirNode>,
    name: CString,
    marker: char,
    /// The source's name, when it differs from `name` (a single-entry copy).
    from: Option<CString>,
    meta: Meta,
    /// Written under this temporary name, renamed over `name` at the end.
    tmp: Option<CString>,
    fds: Mutex<Option<(Arc<OwnedFd>, Arc<OwnedFd>)>>,
    /// Data ranges `[start, end)`, in order; holes between them stay holes.
    segments: Vec<(u64, u64)>,
    chunks_left: AtomicUsize,
    error: Mutex<Option<EntryError>>,
    /// Set with `error`, so other chunks stop early (after ENOSPC, say).
    failed: AtomicBool,
    /// The target's descriptor has O_DIRECT (cleared for the last partial block, or if a
    /// write is refused). Such a file is never split, so one task reads and changes it.
    direct: AtomicBool,
    /// `--verify`: the XXH3-128 of every piece read from the source.
    sums: Option<Mutex<Vec<crate::verify::Piece>>>,
}

impl FileCtx {
    fn created_name(&self) -> &CString {
        self.tmp.as_ref().unwrap_or(&self.name)
    }
}

struct Opening {
    parent: Arc<DirNode>,
    name: CString,
    from: Option<CString>,
    /// The change marker: `+` created, `M`/`T` an entry there is being replaced.
    marker: char,
    meta: Meta,
    src: Option<OwnedFd>,
    dst: Option<OwnedFd>,
    tmp: Option<CString>,
    error: Option<EntryError>,
}

enum Phase {
    Open(Box<Opening>),
    Data,
    Sync,
    Close,
}

pub struct CopyTask {
    phase: Phase,
    ctx: Option<Arc<FileCtx>>,
    src: Option<Arc<OwnedFd>>,
    dst: Option<Arc<OwnedFd>>,
    /// This task's byte range of the file.
    start: u64,
    end: u64,
    seg: usize,
    next: u64,
    in_flight: u32,
    failed: Option<EntryError>,
    /// Error found while finishing (metadata, fsync, close).
    final_error: Option<EntryError>,
    /// Move this task's bytes with copy_file_range instead of ring reads/writes.
    cfr: bool,
    /// Pieces read that O_DIRECT cannot take (buffer, offset, length), held until nothing of
    /// the file is in flight: turning O_DIRECT off earlier would also turn the direct writes
    /// queued before it into writes through the cache.
    parked: Vec<(Lease, u64, u32)>,
}

impl CopyTask {
    pub fn open(
        w: &mut Worker,
        slot: u32,
        parent: Arc<DirNode>,
        name: CString,
        meta: Meta,
        from: Option<CString>,
    ) -> CopyTask {
        let mut sflags = OFlags::RDONLY | OFlags::NOFOLLOW;
        if w.shared.is_root {
            // Reading must not change the source's atime (root may always ask for this).
            sflags |= OFlags::NOATIME;
        }
        let dflags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW;
        let create_mode = create_mode(&parent, &meta);
        // Copy and mirror write beside the final name from the start, except in a directory
        // made under a temporary name (nothing there is seen before it is renamed).
        let beside = (w.shared.cfg.atomic || w.shared.cfg.tmp_new) && parent.staged.is_none();
        let tmp = beside.then(|| w.shared.tmp_name());
        if let Some(current) = &w.shared.current {
            let rel = parent.child_rel(&name);
            *current[w.id].lock().unwrap_or_else(|e| e.into_inner()) = rel.to_string_lossy().into_owned();
        }
        let (dst_name, dst_sub) = match &tmp {
            Some(t) => (t.clone(), SUB_OPEN_TMP),
            None => (name.clone(), SUB_OPEN_DST),
        };
        w.ring.push(
            super::token(slot, SUB_OPEN_SRC),
            Op::OpenAt {
                dir: parent.src.clone(),
                name: from.clone().unwrap_or_else(|| name.clone()),
                flags: sflags,
                mode: Mode::empty(),
            },
        );
        w.ring.push(
            super::token(slot, dst_sub),
            Op::OpenAt {
                dir: parent.dst.clone(),
                name: dst_name,
                flags: dflags,
                mode: create_mode,
            },
        );
        CopyTask {
            phase: Phase::Open(Box::new(Opening {
                parent,
                name,
                from,
                marker: '+',
                meta,
                src: None,
                dst: None,
                tmp,
                error: None,
            })),
            ctx: None,
            src: None,
            dst: None,
            start: 0,
            end: 0,
            seg: 0,
            next: 0,
            in_flight: 2,
            failed: None,
            final_error: None,
            cfr: false,
            parked: Vec::new(),
        }
    }

    pub fn chunk(w: &Worker, ctx: Arc<FileCtx>, start: u64, end: u64) -> CopyTask {
        let ctx_size = ctx.meta.size;
        // Chain: whoever takes a chunk offers the next, so a file has at most one chunk job
        // waiting in the shared queue and that queue stays bounded however big the file is.
        share_next_chunk(w, &ctx, end);
        let (src, dst) = ctx
            .fds
            .lock()
            .expect("fds poisoned")
            .clone()
            .expect("chunk of an open file");
        CopyTask {
            phase: Phase::Data,
            ctx: Some(ctx),
            src: Some(src),
            dst: Some(dst),
            start,
            end,
            seg: 0,
            next: start,
            in_flight: 0,
            failed: None,
            final_error: None,
            cfr: use_cfr(w, ctx_size),
            parked: Vec::new(),
        }
    }

    pub fn pump(&mut self, w: &mut Worker, slot: u32) -> Step {
        match self.phase {
            Phase::Open(_) => Step::Running,
            Phase::Data => self.pump_data(w, slot),
            Phase::Sync | Phase::Close => Step::Running,
        }
    }

    pub fn complete(&mut self, w: &mut Worker, slot: u32, sub: u32, c: Completion) -> Step {
        self.in_flight -= 1;
        match sub {
            SUB_OPEN_SRC | SUB_OPEN_DST | SUB_OPEN_TMP => self.opened(w, slot, sub, c),
            SUB_DATA | SUB_DATA_DIRECT => self.data_done(w, slot, sub, c),
            SUB_FSYNC => {
                let result = c.result;
                drop(c.op); // its descriptor reference must go before `close`
                if let Err(e) = result {
                    let ctx = self.ctx.as_ref().expect("ctx");
                    self.final_error = Some(EntryError::new("fsync", dst_path(w, ctx), e));
                }
                self.close(w, slot)
            }
            SUB_CLOSE_SRC | SUB_CLOSE_DST => {
                if let Err(e) = c.result {
                    let ctx = self.ctx.as_ref().expect("ctx");
                    if self.final_error.is_none() {
                        self.final_error = Some(EntryError::new("close", dst_path(w, ctx), e));
                    }
                }
                if self.in_flight == 0 {
                    self.finish_file(w)
                } else {
                    Step::Running
                }
            }
            _ => unreachable!("unknown sub-token {sub}"),
        }
    }

    fn opened(&mut self, w: &mut Worker, slot: u32, sub: u32, c: Completion) -> Step {
        let Phase::Open(o) = &mut self.phase else {
            unreachable!("open completion outside open phase")
        };
        let rel = || o.parent.child_rel(&o.name);
        match (sub, c.result) {
            (SUB_OPEN_SRC, Ok(_)) => o.src = c.opened,
            (SUB_OPEN_SRC, Err(e)) => {
                o.error
                    .get_or_insert(source_error("open", w.shared.src_path(&rel()), e));
            }
            (SUB_OPEN_DST | SUB_OPEN_TMP, Ok(_)) => {
                if let Some(fd) = &c.opened {
                    // Rules name the entry, not its temporary name.
                    crate::failpoint::opened(std::os::fd::AsRawFd::as_raw_fd(fd), o.name.to_bytes());
                }
                o.dst = c.opened
            }
            (SUB_OPEN_DST, Err(Errno::EXIST)) => {
                // Something is there: write beside it and rename over it at the end.
                o.marker = match w.shared.listing_changes() {
                    true => scan::replaced_marker(&o.parent.dst, &o.name, rustix::fs::FileType::RegularFile),
                    false => 'M',
                };
                let tmp = w.shared.tmp_name();
                let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW;
                let op = Op::OpenAt {
                    dir: o.parent.dst.clone(),
                    name: tmp.clone(),
                    flags,
                    mode: create_mode(&o.parent, &o.meta),
                };
                o.tmp = Some(tmp);
                w.ring.push(super::token(slot, SUB_OPEN_TMP), op);
                self.in_flight += 1;
            }
            (_, Err(e)) => {
                o.error
                    .get_or_insert(EntryError::new("create", w.shared.dst_path(&rel()), e));
            }
            (_, Ok(_)) => unreachable!("open sub-token {sub}"),
        }
        if self.in_flight > 0 {
            return Step::Running;
        }
        let Phase::Open(o) = std::mem::replace(&mut self.phase, Phase::Data) else {
            unreachable!()
        };
        if let Some(err) = o.error {
            if o.dst.is_some() {
                let created = o.tmp.as_ref().unwrap_or(&o.name);
                let _ = rustix::fs::unlinkat(&*o.parent.dst, created.as_c_str(), AtFlags::empty());
            }
            w.report(err);
            drop_from_totals(w, &o.meta);
            resolve_links(w, &o.parent, &o.name, &o.meta, false);
            w.shared.child_done(o.parent);
            return Step::Done;
        }
        self.plan(w, slot, *o)
    }

    /// Decide how the data moves: reflink, which ranges hold data, how to split into chunks.
    fn plan(&mut self, w: &mut Worker, slot: u32, mut o: Opening) -> Step {
        let src = Arc::new(o.src.take().expect("opened"));
        let dst = Arc::new(o.dst.take().expect("opened"));
        let size = o.meta.size;
        let path = |o: &Opening| w.shared.dst_path(&o.parent.child_rel(&o.name));
        let mut error = None;
        let mut segments = Vec::new();
        let mut cloned = false;
        if size > 0 && w.shared.reflink_try.load(Ordering::Relaxed) {
            match rustix::fs::ioctl_ficlone(&*dst, &*src) {
                Ok(()) => {
                    cloned = true;
                    Counters::add(&w.counters().reflinked, 1);
                    Counters::add(&w.counters().bytes, size);
                }
                Err(e) if w.shared.cfg.reflink == Reflink::Always => {
                    error = Some(EntryError::new("reflink", path(&o), e));
                }
                // Auto: this filesystem pair cannot clone; stop asking for the rest of the run.
                Err(_) => w.shared.reflink_try.store(false, Ordering::Relaxed),
            }
        }
        if !cloned && error.is_none() && size > 0 {
            match data_segments(&src, &o.meta) {
                Ok(s) => segments = s,
                Err(e) => {
                    error = Some(EntryError::new(
                        "seek",
                        w.shared.src_path(&o.parent.child_rel(&o.name)),
                        e,
                    ))
                }
            }
            let data: u64 = segments.iter().map(|(s, e)| e - s).sum();
            Counters::add(&w.counters().holes, size.saturating_sub(data));
            let holes = segments.last().is_none_or(|&(_, end)| end < size) || segments.len() > 1;
            if error.is_none() && holes {
                // Sets the size so trailing holes exist; data ranges are written into it.
                if let Err(e) = rustix::fs::ftruncate(&*dst, size) {
                    error = Some(EntryError::new("truncate", path(&o), e));
                }
            }
        }
        let direct = !cloned && error.is_none() && try_direct(w, &dst, size);
        // copy_file_range of one file from several workers only contends on the target's inode
        // lock (measured: no faster than one worker), so only ring copies are split.
        let cfr = !cloned && !direct && use_cfr(w, size);
        // Nor are direct ones: two workers' direct writes at distant offsets of one file ran at
        // half the speed of one worker's (the 2 GiB file: 1.9 s against 0.85 s).
        let split = w.shared.cfg.threads > 1 && size > CHUNK_BYTES && !cloned && !cfr && !direct;
        let chunks = if split { size.div_ceil(CHUNK_BYTES) } else { 1 };
        let ctx = Arc::new(FileCtx {
            parent: o.parent,
            name: o.name,
            marker: o.marker,
            from: o.from,
            meta: o.meta,
            tmp: o.tmp,
            fds: Mutex::new(Some((src.clone(), dst.clone()))),
            segments,
            chunks_left: AtomicUsize::new(chunks as usize),
            failed: AtomicBool::new(error.is_some()),
            error: Mutex::new(error),
            direct: AtomicBool::new(direct),
            sums: w.shared.cfg.verify.then(|| Mutex::new(Vec::new())),
        });
        if chunks > 1 {
            share_next_chunk(w, &ctx, CHUNK_BYTES);
        }
        self.start = 0;
        self.end = if chunks > 1 { CHUNK_BYTES } else { size };
        self.next = 0;
        self.src = Some(src);
        self.dst = Some(dst);
        self.ctx = Some(ctx);
        self.cfr = cfr;
        if cloned {
            self.end = 0;
        }
        self.pump_data(w, slot)
    }

    fn next_piece(&mut self) -> Option<(u64, u64)> {
        let ctx = self.ctx.as_ref().expect("ctx");
        if ctx.failed.load(Ordering::Relaxed) {
            // Another chunk of this file failed: the file will be removed; stop copying it.
            return None;
        }
        let segs = &ctx.segments;
        while self.seg < segs.len() {
            let (s, e) = segs[self.seg];
            let s = s.max(self.start).max(self.next);
            let e = e.min(self.end);
            if s < e {
                let mut len = (e - s).min(OP_BYTES_MAX);
                let end = s + len;
                if ctx.direct.load(Ordering::Relaxed)
                    && end % DIRECT_ALIGN != 0
                    && end - end % DIRECT_ALIGN > s
                {
                    // A partial last block: the aligned part first, direct; the block then
                    // follows through the cache (parked in `data_done`, see `write_parked`).
                    len -= end % DIRECT_ALIGN;
                }
                return Some((s, len));
            }
            if segs[self.seg].1 >= self.end {
                return None;
            }
            self.seg += 1;
        }
        None
    }

    /// Copy this task's remaining range in the kernel. Returns false (nothing copied) when the
    /// kernel refuses copy_file_range for this pair of files, so the ring path takes over.
    fn copy_in_kernel(&mut self, w: &mut Worker) -> bool {
        let (src, dst) = (self.src.clone().expect("open"), self.dst.clone().expect("open"));
        let mut first = true;
        while self.failed.is_none() {
            if self.stop_if_interrupted(w) {
                break;
            }
            let Some((offset, _)) = self.next_piece() else {
                break;
            };
            let seg_end = self.ctx.as_ref().expect("ctx").segments[self.seg].1.min(self.end);
            let mut len = (seg_end - offset).min(CFR_PIECE_BYTES);
            if let Some(limit) = &w.shared.limiter {
                len = len.min(limit.op_bytes());
                limit.take(len);
            }
            let (mut off_in, mut off_out) = (offset, offset);
            let res = crate::failpoint::fail("cfr", self.ctx.as_ref().expect("ctx").name.to_bytes())
                .and_then(|()| {
                    rustix::fs::copy_file_range(
                        &*src,
                        Some(&mut off_in),
                        &*dst,
                        Some(&mut off_out),
                        len as usize,
                    )
                });
            match res {
                // Some kernels and filesystems answer 0 instead of an error: use the ring.
                Ok(0) if first => {
                    w.shared.cfr_try.store(false, Ordering::Relaxed);
                    return false;
                }
                Ok(0) => {
                    let ctx = self.ctx.as_ref().expect("ctx");
                    let detail = format!("file shrank during copy: end of file at offset {offset}");
                    self.failed = Some(EntryError::msg("copy_file_range", src_path(w, ctx), detail));
                }
                Ok(n) => {
                    self.next = offset + n as u64;
                    Counters::add(&w.counters().bytes, n as u64);
                    first = false;
                }
                Err(Errno::INTR) | Err(Errno::AGAIN) => {}
                // Not supported for this pair (old kernel, other filesystems, special files).
                Err(Errno::XDEV | Errno::INVAL | Errno::OPNOTSUPP | Errno::NOSYS | Errno::BADF) if first => {
                    w.shared.cfr_try.store(false, Ordering::Relaxed);
                    return false;
                }
                Err(e) => {
                    let ctx = self.ctx.as_ref().expect("ctx");
                    self.failed = Some(EntryError::new("copy_file_range", dst_path(w, ctx), e));
                }
            }
        }
        true
    }

    fn pump_data(&mut self, w: &mut Worker, slot: u32) -> Step {
        if self.cfr {
            self.cfr = false;
            if self.copy_in_kernel(w) {
                return self.chunk_done(w, slot);
            }
        }
        let mut blocked = false;
        self.stop_if_interrupted(w);
        while self.failed.is_none() && self.in_flight < OPS_PER_FILE_MAX {
            let Some((offset, mut len)) = self.next_piece() else {
                break;
            };
            if let Some(limit) = &w.shared.limiter {
                len = len.min(limit.op_bytes());
            }
            if w.soft_room() == 0 {
                blocked = true;
                break;
            }
            let pool = w.ring.pool();
            let Some(lease) = pool.acquire(pool.units_for(len)) else {
                blocked = true;
                break;
            };
            let len = len.min(lease.len() as u64) as u32;
            let src = self.src.clone().expect("open");
            w.ring
                .push(super::token(slot, SUB_DATA), Op::read(src, lease, offset, len));
            self.next = offset + len as u64;
            self.in_flight += 1;
        }
        if self.in_flight == 0 && !self.parked.is_empty() {
            self.write_parked(w, slot);
        }
        if self.in_flight > 0 {
            return Step::Running;
        }
        if blocked && self.failed.is_none() {
            return Step::Blocked;
        }
        self.chunk_done(w, slot)
    }

    /// Nothing of the file is in flight: turn O_DIRECT off and write the parked pieces through
    /// the cache (or give their buffers back, once the file failed).
    fn write_parked(&mut self, w: &mut Worker, slot: u32) {
        let ctx = self.ctx.clone().expect("ctx");
        let dst = self.dst.clone().expect("open");
        if ctx.direct.swap(false, Ordering::Relaxed) && !set_direct(&dst, false) {
            let e = EntryError::msg("fcntl", dst_path(w, &ctx), "cannot turn O_DIRECT off");
            self.failed.get_or_insert(e);
        }
        for (buf, offset, n) in std::mem::take(&mut self.parked) {
            if self.failed.is_some() || self.stop_if_interrupted(w) {
                w.ring.pool().release(buf);
                continue;
            }
            w.ring.push(
                super::token(slot, SUB_DATA),
                Op::write(dst.clone(), buf, offset, n),
            );
            self.in_flight += 1;
        }
    }

    /// Once the run is interrupted, this file fails (quietly) so it is removed, not finished.
    fn stop_if_interrupted(&mut self, w: &Worker) -> bool {
        if self.failed.is_none() && crate::signals::interrupted().is_some() {
            let ctx = self.ctx.as_ref().expect("ctx");
            self.failed = Some(EntryError::interrupted("copy", dst_path(w, ctx)));
        }
        self.failed.is_some()
    }

    fn data_done(&mut self, w: &mut Worker, slot: u32, sub: u32, c: Completion) -> Step {
        let ctx = self.ctx.clone().expect("ctx");
        // Take the buffer and drop the op's descriptor reference at once: `close` needs to be
        // the last holder to close through the ring and see the result.
        match c.op {
            Op::Read {
                buf, offset, len, fd, ..
            } => {
                drop(fd);
                match c.result {
                    Ok(_) if self.stop_if_interrupted(w) => w.ring.pool().release(buf),
                    Ok(n) if n == len => {
                        if let Some(sums) = &ctx.sums {
                            let piece =
                                crate::verify::Piece::of(offset, &w.ring.pool().bytes(&buf)[..n as usize]);
                            sums.lock().expect("sums poisoned").push(piece);
                        }
                        let dst = self.dst.clone().expect("open");
                        if let Some(limit) = &w.shared.limiter {
                            // Sleeping holds up only this worker; its ops in flight carry on.
                            limit.take(n as u64);
                        }
                        if ctx.direct.load(Ordering::Relaxed)
                            && (offset % DIRECT_ALIGN != 0 || n as u64 % DIRECT_ALIGN != 0)
                        {
                            self.parked.push((buf, offset, n));
                            return self.pump_data(w, slot);
                        }
                        let sub = if ctx.direct.load(Ordering::Relaxed) {
                            SUB_DATA_DIRECT
                        } else {
                            SUB_DATA
                        };
                        w.ring
                            .push(super::token(slot, sub), Op::write(dst, buf, offset, n));
                        if w.shared.limiter.is_some() {
                            // The tokens were granted for now, not for the next submission.
                            w.ring.submit();
                        }
                        self.in_flight += 1;
                    }
                    Ok(n) => {
                        w.ring.pool().release(buf);
                        let detail =
                            format!("file shrank during copy: {n} of {len} bytes at offset {offset}");
                        self.failed
                            .get_or_insert(EntryError::msg("read", src_path(w, &ctx), detail));
                    }
                    Err(e) => {
                        w.ring.pool().release(buf);
                        self.failed
                            .get_or_insert(source_error("read", src_path(w, &ctx), e));
                    }
                }
            }
            Op::Write {
                buf, fd, offset, len, ..
            } if sub == SUB_DATA_DIRECT && c.result == Err(Errno::INVAL) => {
                // The filesystem (or device) wants other alignment after all: this file goes
                // on through the cache, starting with this piece (and so does every other
                // piece submitted before this answer came: each is retried once, as a write
                // through the cache).
                if ctx.direct.swap(false, Ordering::Relaxed) && !set_direct(&fd, false) {
                    let e = EntryError::msg(
                        "fcntl",
                        dst_path(w, &ctx),
                        "O_DIRECT refused and cannot be turned off",
                    );
                    self.failed.get_or_insert(e);
                }
                if self.failed.is_none() && !self.stop_if_interrupted(w) {
                    w.ring
                        .push(super::token(slot, SUB_DATA), Op::write(fd, buf, offset, len));
                    self.in_flight += 1;
                } else {
                    w.ring.pool().release(buf);
                }
            }
            Op::Write {
                buf, fd, offset, len, ..
            } => {
                drop(fd);
                w.ring.pool().release(buf);
                match c.result {
                    Ok(n) if n == len => Counters::add(&w.counters().bytes, n as u64),
                    // The backends continue short writes, so this is never expected; if one
                    // ever comes through, the file is not complete and must not be published.
                    Ok(n) => {
                        let detail = format!("short write: {n} of {len} bytes at offset {offset}");
                        self.failed
                            .get_or_insert(EntryError::msg("write", dst_path(w, &ctx), detail));
                    }
                    Err(e) => {
                        let detail = EntryError::new("write", dst_path(w, &ctx), e);
                        self.failed.get_or_insert(detail);
                    }
                }
            }
            _ => unreachable!("data completion of a non-data op"),
        }
        self.pump_data(w, slot)
    }

    /// This task's range is done (or failed). The last chunk of a file finishes the file.
    fn chunk_done(&mut self, w: &mut Worker, slot: u32) -> Step {
        let ctx = self.ctx.clone().expect("ctx");
        self.src = None;
        self.dst = None;
        if let Some(e) = self.failed.take() {
            ctx.error.lock().expect("poisoned").get_or_insert(e);
            ctx.failed.store(true, Ordering::Relaxed);
        }
        if ctx.chunks_left.fetch_sub(1, Ordering::AcqRel) != 1 {
            return Step::Done;
        }
        let (src, dst) = ctx.fds.lock().expect("poisoned").take().expect("fds taken once");
        self.final_error = ctx.error.lock().expect("poisoned").take();
        if self.final_error.is_none() {
            self.final_error = source_changed(&src, &ctx.meta).map(|why| match why {
                Changed::Replaced => EntryError::vanished("open", src_path(w, &ctx)),
                Changed::Modified(detail) => EntryError::msg("read", src_path(w, &ctx), detail),
            });
        }
        if self.final_error.is_none() {
            match meta::apply_fd(
                meta::fd(&*src),
                meta::fd(&*dst),
                &ctx.meta,
                w.shared.preserve,
                meta::Created {
                    owner: Some((w.shared.euid, ctx.parent.created_gid)),
                    perm: meta::create_perm(&ctx.meta, ctx.parent.inherits_acl),
                    prune: ctx.parent.inherits_acl,
                },
            ) {
                Ok(x) if x.unsupported => w.shared.warn_xattr_unsupported(&dst_path(w, &ctx)),
                Ok(_) => {}
                Err((step, e)) => self.final_error = Some(EntryError::new(step.name(), dst_path(w, &ctx), e)),
            }
        }
        self.src = Some(src);
        self.dst = Some(dst);
        if self.final_error.is_none() && w.shared.cfg.fsync == Fsync::File {
            self.phase = Phase::Sync;
            let fd = self.dst.clone().expect("open");
            w.ring.push(super::token(slot, SUB_FSYNC), Op::Fsync { fd });
            self.in_flight += 1;
            return Step::Running;
        }
        self.close(w, slot)
    }

    /// Close both descriptors through the ring. A descriptor still referenced elsewhere (a chunk
    /// op completion not yet dropped on another worker) is closed by its last holder instead.
    fn close(&mut self, w: &mut Worker, slot: u32) -> Step {
        self.phase = Phase::Close;
        for (fd, sub) in [(self.src.take(), SUB_CLOSE_SRC), (self.dst.take(), SUB_CLOSE_DST)] {
            if let Some(Ok(owned)) = fd.map(Arc::try_unwrap) {
                w.ring.push(super::token(slot, sub), Op::close(owned));
                self.in_flight += 1;
            }
        }
        if self.in_flight == 0 {
            return self.finish_file(w);
        }
        Step::Running
    }

    fn finish_file(&mut self, w: &mut Worker) -> Step {
        let ctx = self.ctx.take().expect("ctx");
        let mut error = self.final_error.take();
        let mut marker = ctx.marker;
        if error.is_none() {
            // Renamed into place only once its data is durable (`Shared::defer`). So is the
            // first path of a hardlinked file, when written at its final name: its other names
            // are linked once it is finished, and one may replace a file the target had.
            if super::publishes_in_batches(&w.shared.cfg) && (ctx.tmp.is_some() || ctx.meta.nlink > 1) {
                w.shared.defer(super::Deferred {
                    parent: ctx.parent.clone(),
                    tmp: ctx.tmp.clone(),
                    name: ctx.name.clone(),
                    marker: ctx.marker,
                    meta: ctx.meta,
                    sums: take_sums(&ctx),
                    dir: None,
                });
                return Step::Done;
            }
            match &ctx.tmp {
                Some(tmp) => match scan::place(w, &ctx.parent, tmp, &ctx.name, marker) {
                    Ok(m) => marker = m,
                    Err(e) => error = Some(EntryError::new("rename", dst_path(w, &ctx), e)),
                },
                None => ctx.parent.file_written(ctx.meta.size),
            }
        } else {
            // Never leave a partial file under a name we created.
            let _ = rustix::fs::unlinkat(&*ctx.parent.dst, ctx.created_name().as_c_str(), AtFlags::empty());
        }
        file_finished(
            w,
            &ctx.parent,
            &ctx.name,
            marker,
            &ctx.meta,
            take_sums(&ctx),
            error,
        );
        Step::Done
    }
}

/// How the source file differs from what the walk saw, checked once its bytes are copied.
enum Changed {
    /// Another file stood at the name when it was opened, or the file was unlinked since: the
    /// walk's one is gone.
    Replaced,
    /// Written to between the walk and the end of the copy.
    Modified(String),
}

/// Whether the file copied through `src` is still the one the walk saw, unchanged (device,
/// inode, size, mtime, ctime): what was read is then what the walk described, and the
/// metadata about to be put on the target (the walk's) fits it. A write during the copy moves
/// ctime, also when mtime is put back; comparing with the walk, not with the open, also
/// catches a change just before the open, whose new bytes must not get the old mtime (a later
/// size+mtime compare would never see them). As rsync and tar check, this costs one statx.
fn source_changed(src: &OwnedFd, walked: &Meta) -> Option<Changed> {
    let now = match rustix::fs::statx(src, c"", AtFlags::EMPTY_PATH, rustix::fs::StatxFlags::BASIC_STATS) {
        Ok(s) => Meta::from_statx(&s),
        Err(e) => return Some(Changed::Modified(format!("statx after the copy failed: {e}"))),
    };
    // Unlinked while being copied (its ctime moved for that): vanished, like a file whose
    // name is gone at the open.
    if (now.dev, now.ino) != (walked.dev, walked.ino) || now.nlink == 0 {
        return Some(Changed::Replaced);
    }
    let ts = |t: rustix::fs::Timespec| (t.tv_sec, t.tv_nsec);
    if now.size != walked.size || ts(now.mtime) != ts(walked.mtime) || ts(now.ctime) != ts(walked.ctime) {
        return Some(Changed::Modified(format!(
            "changed while being copied (size {} -> {}, mtime {}.{:09} -> {}.{:09}, ctime {}.{:09} -> \
             {}.{:09}): not published, a rerun copies it again",
            walked.size,
            now.size,
            walked.mtime.tv_sec,
            walked.mtime.tv_nsec,
            now.mtime.tv_sec,
            now.mtime.tv_nsec,
            walked.ctime.tv_sec,
            walked.ctime.tv_nsec,
            now.ctime.tv_sec,
            now.ctime.tv_nsec
        )));
    }
    None
}

fn take_sums(ctx: &FileCtx) -> Option<Vec<crate::verify::Piece>> {
    ctx.sums
        .as_ref()
        .map(|s| std::mem::take(&mut *s.lock().expect("sums poisoned")))
}

/// The end of a regular file's copy, once it is at its final name (`error` is `None`) or
/// removed: count or report it, link the rest of its hardlink group, finish its directory.
pub(super) fn file_finished(
    w: &mut Worker,
    parent: &Arc<DirNode>,
    name: &CString,
    marker: char,
    meta: &Meta,
    sums: Option<Vec<crate::verify::Piece>>,
    error: Option<EntryError>,
) {
    let ok = error.is_none();
    if let (Some(items), Some(pieces), true) = (&w.shared.verify, sums, ok) {
        let item = verify_item(w, parent, name, meta, pieces);
        items.lock().expect("verify poisoned").push(item);
    }
    match error {
        Some(e) => {
            if e.severity == crate::error::Severity::Interrupted {
                w.shared.unfinished.fetch_add(1, Ordering::Relaxed);
            }
            drop_from_totals(w, meta);
            w.report(e)
        }
        None => {
            Counters::add(&w.counters().files, 1);
            w.shared.note_change(marker, parent, name);
        }
    }
    resolve_links(w, parent, name, meta, ok);
    w.shared.child_done(parent.clone());
}

/// `--verify`: what to read back of a file at its final name.
pub(super) fn verify_item(
    w: &Worker,
    parent: &Arc<DirNode>,
    name: &CString,
    meta: &Meta,
    pieces: Vec<crate::verify::Piece>,
) -> crate::verify::Item {
    crate::verify::Item {
        dir: parent.dst.clone(),
        name: name.clone(),
        path: w.shared.dst_path(&parent.child_rel(name)),
        size: meta.size,
        pieces,
    }
}

/// A file given up leaves the progress totals (its bytes will never be done).
fn drop_from_totals(w: &Worker, m: &Meta) {
    Counters::add(&w.counters().files_dropped, 1);
    Counters::add(&w.counters().bytes_dropped, m.size);
}

/// Offer the chunk of `ctx` starting at `start` (if any is left) to all workers.
fn share_next_chunk(w: &Worker, ctx: &Arc<FileCtx>, start: u64) {
    let size = ctx.meta.size;
    if start >= size {
        return;
    }
    let job = Job::Chunk {
        ctx: ctx.clone(),
        start,
        end: (start + CHUNK_BYTES).min(size),
    };
    // Straight to the shared queue: the point is that an idle worker takes it.
    w.shared.new_job();
    w.shared.queue.push(job);
}

/// Mode for creating the target: its final bits where nothing will change them later (see
/// `meta::create_perm`), otherwise owner-only until the metadata step.
fn create_mode(parent: &DirNode, m: &Meta) -> Mode {
    Mode::from_raw_mode(meta::create_perm(m, parent.inherits_acl).unwrap_or(0o600) as _)
}

/// Files at least this large are written with O_DIRECT by durable runs (see the module's notes).
/// Chosen by measurement on the ~1 GiB mixed tree (default `copy`, 4 interleaved rounds,
/// medians): 2.2 s with none, 1.85 s from 8 MiB, 1.24 s from 1 MiB, 0.88 s from 256 KiB,
/// 0.92 s from 64 KiB, 0.95 s from 16 KiB.
pub const DIRECT_MIN_BYTES: u64 = 256 << 10;
/// The alignment O_DIRECT pieces keep (offsets, lengths, buffers).
const DIRECT_ALIGN: u64 = 4096;

/// statfs magic numbers of the filesystems that get O_DIRECT writes: ext4 (and ext2/3), xfs.
const DIRECT_FS: [i64; 2] = [0xef53, 0x5846_5342];

/// Set O_DIRECT on `dst` (a new, empty file of `size` bytes to be) when it is to be written
/// that way; whether it is.
fn try_direct(w: &Worker, dst: &OwnedFd, size: u64) -> bool {
    let cfg = &w.shared.cfg;
    if size < DIRECT_MIN_BYTES || cfg.fsync == Fsync::None || cfg.data_path == DataPath::Cfr {
        return false;
    }
    if !rustix::fs::fstatfs(dst).is_ok_and(|s| DIRECT_FS.contains(&s.f_type)) {
        return false;
    }
    set_direct(dst, true)
}

/// Turn O_DIRECT on or off on `fd`; false when the filesystem refuses.
fn set_direct(fd: &OwnedFd, on: bool) -> bool {
    rustix::fs::fcntl_getfl(fd)
        .and_then(|f| {
            let f = if on {
                f | OFlags::DIRECT
            } else {
                f - OFlags::DIRECT
            };
            rustix::fs::fcntl_setfl(fd, f)
        })
        .is_ok()
}

/// Whether a file of `size` bytes moves through copy_file_range.
fn use_cfr(w: &Worker, size: u64) -> bool {
    let sh = &w.shared;
    sh.cfr_try.load(Ordering::Relaxed) && (sh.cfg.data_path == DataPath::Cfr || size >= CFR_MIN_BYTES)
}

fn src_path(w: &Worker, ctx: &FileCtx) -> std::path::PathBuf {
    w.shared
        .src_path(&ctx.parent.child_rel(ctx.from.as_ref().unwrap_or(&ctx.name)))
}

fn dst_path(w: &Worker, ctx: &FileCtx) -> std::path::PathBuf {
    w.shared.dst_path(&ctx.parent.child_rel(&ctx.name))
}

/// Data ranges of a file. Only files whose allocation is below their size are probed with
/// SEEK_DATA/SEEK_HOLE; others are one range.
fn data_segments(src: &OwnedFd, m: &Meta) -> Result<Vec<(u64, u64)>, Errno> {
    if !m.maybe_sparse() {
        return Ok(vec![(0, m.size)]);
    }
    let mut segs = Vec::new();
    let mut pos = 0u64;
    while pos < m.size {
        let data = match rustix::fs::seek(src, SeekFrom::Data(pos)) {
            Ok(d) => d,
            // No data after pos: the rest is a hole.
            Err(Errno::NXIO) => break,
            // The filesystem cannot tell: copy everything.
            Err(Errno::INVAL) if segs.is_empty() => return Ok(vec![(0, m.size)]),
            Err(e) => return Err(e),
        };
        if data >= m.size {
            break;
        }
        let hole = match rustix::fs::seek(src, SeekFrom::Hole(data)) {
            Ok(h) => h.min(m.size),
            Err(e) => return Err(e),
        };
        segs.push((data, hole));
        pos = hole;
    }
    Ok(segs)
}
