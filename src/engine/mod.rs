//! The copy engine: one worker thread pinned per core, each owning its ring and its share of the
//! buffer pool.
//!
//! Work is a tree of jobs (scan a directory, copy a file, copy a chunk of a big file). A worker
//! keeps up to `TASKS_PER_WORKER_MAX` jobs active at once as small state machines driven by ring
//! completions, so each core has many opens, statx calls, reads and writes in flight. New jobs go
//! on the worker's own stack (depth-first keeps few directories open); when the shared queue runs
//! low a worker moves its oldest jobs there for idle workers. The shared queue never holds more
//! than a few jobs per worker, so it is bounded by construction.
//!
//! Directories are finished (owner, xattrs, mode, times) when their last child is done, which is
//! tracked by a per-directory pending count, so read-only directories are filled first and
//! directory times are not disturbed afterwards. Hardlinks inside the copy are made with linkat
//! once the first path of the inode has been copied.
//!
//! Must not: contain `unsafe` (that is the ring's), or allocate data buffers outside the pool.

mod file;
mod plan;
mod scan;

pub use plan::{Action, LinkPlan, Plan, PlanDir, PlanItem};

use std::collections::{HashMap, VecDeque};
use std::ffi::{CStr, CString};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::config::{CopyConfig, DataPath, EngineChoice, Fsync, Reflink};
use crate::error::{EntryError, ErrorLog};
use crate::meta::{Meta, Preserve};
use crate::progress::{Counters, ProgressLine};
use crate::ring::{self, Backend, Completion, EngineKind, OpKind, RingConfig, Token};

/// Pool unit: the granule of buffer memory. A file of up to 64 KiB takes one unit, so small files
/// in flight pack into the first huge page or two of a pool instead of one 1 MiB unit each (a 1%
/// mirror of the mixed tree touched the whole 64 MiB pool to move 5 MB); big files take
/// contiguous runs of units, up to `OP_BYTES_MAX` an op (`ring::Pool::acquire`).
pub const POOL_UNIT_BYTES: usize = 64 << 10;
/// Largest single read or write. Measured on this VM (perf/): 4 MiB ops reach the same
/// throughput as 8 MiB with half the buffer per op.
pub const OP_BYTES_MAX: u64 = 4 << 20;
/// Reads (each followed by its write) in flight for one file task.
pub const OPS_PER_FILE_MAX: u32 = 4;
/// Files bigger than this are split into chunks of this size that any worker may copy.
pub const CHUNK_BYTES: u64 = 64 << 20;
/// `--data-path auto` copies files at least this big with copy_file_range. Below it the ring's
/// read+write is as fast (perf/), and stays within io_uring.
pub const CFR_MIN_BYTES: u64 = 1 << 20;
/// copy_file_range length per call: long enough to amortise the call, short enough that a
/// stopped run has little in flight.
pub const CFR_PIECE_BYTES: u64 = 16 << 20;
/// Active jobs per worker; with `OPS_PER_FILE_MAX` this bounds data ops in flight. Small files
/// are latency-bound (a creating open and a buffered write each go through an io-wq worker on
/// ext4): 128 rather than 64 took the 50,000 x 4 KiB copy to 0.75-0.82x of the time, warm and
/// cold, the mixed tree unchanged (perf/copy-tasks-20261205.md). Once the pool has 64 KiB units
/// (a small file no longer holds 1 MiB), the pool no longer caps files in flight below this.
pub const TASKS_PER_WORKER_MAX: usize = 128;
/// Statx calls one directory scan keeps in flight.
pub const STATX_PER_SCAN_MAX: u32 = 32;
/// Submission queue size. The completion queue (2x) has the ring's slots, which bound ops in
/// flight: reads and statx stay under `SOFT_IN_FLIGHT_MAX` (a write replaces the read it
/// follows), and each task adds at most two more (its two opens, or its two closes, or an
/// fsync): 768 + 2 x 128 = 1024.
pub const SQ_ENTRIES: u32 = 512;
/// Soft cap for reads and statx so opens/closes/fsyncs always find a slot.
pub const SOFT_IN_FLIGHT_MAX: usize = 2 * SQ_ENTRIES as usize - 2 * TASKS_PER_WORKER_MAX;

/// A directory whose children are being copied.
pub struct DirNode {
    parent: Option<Arc<DirNode>>,
    /// Relative to the source root, for messages.
    rel: PathBuf,
    src: Arc<OwnedFd>,
    dst: Arc<OwnedFd>,
    meta: Meta,
    /// New entries here inherit ACLs, so their xattrs are pruned to the source's.
    inherits_acl: bool,
    /// Group the kernel gives new entries here (the directory's if it is setgid).
    created_gid: u32,
    /// The scan itself plus every child job and hardlink waiter not yet finished.
    pending: AtomicUsize,
    /// Whether finishing puts the source directory's attributes on the target one: not for the
    /// root of a single-entry copy, whose directories are only where the entry lives.
    own_attrs: bool,
    /// A new directory made under a temporary name (`copy`): see [`Staged`].
    staged: Option<Staged>,
}

/// A directory this run creates is made under a temporary name in its parent, its entries
/// (files, links, symlinks, new subdirectories: themselves staged) are made at their final
/// names inside it, and it is renamed to its own name once every entry that is not a
/// directory is finished, and, under `--fsync end`, made durable by a batch's `syncfs`. So a
/// kill or a crash leaves at a final name nothing half-written, as a temporary name per file
/// would, for one rename per directory instead of one per file. Until it is published its
/// node holds one extra pending count, so its attributes, and its parent's, come after the
/// rename.
pub(crate) struct Staged {
    pub(crate) tmp: CString,
    pub(crate) name: CString,
    /// The scan plus every child that is not a directory, not yet finished.
    files_left: AtomicUsize,
    /// Bytes of its files, finished and not yet published (they count toward a batch).
    bytes: AtomicU64,
    /// Files written at their final names in it: with none, nothing waits for a `syncfs`.
    files: AtomicU64,
    /// Its `syncfs` failed (with this error): emptied once everything below it is finished,
    /// each entry removed reported, then published.
    discard: std::sync::OnceLock<Errno>,
}

impl Staged {
    fn new(tmp: CString, name: CString) -> Staged {
        Staged {
            tmp,
            name,
            files_left: AtomicUsize::new(1),
            bytes: AtomicU64::new(0),
            files: AtomicU64::new(0),
            discard: std::sync::OnceLock::new(),
        }
    }
}

impl DirNode {
    /// One more child that is not a directory (a file, a node, a hardlink waiter) to finish:
    /// released by [`Shared::child_done`].
    fn add_entry(&self) {
        self.pending.fetch_add(1, Ordering::AcqRel);
        if let Some(s) = &self.staged {
            s.files_left.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// One more subdirectory to finish: released by [`Shared::subdir_done`].
    fn add_subdir(&self) {
        self.pending.fetch_add(1, Ordering::AcqRel);
    }

    /// A file of `bytes` written at its final name in this directory, finished.
    fn file_written(&self, bytes: u64) {
        if let Some(s) = &self.staged {
            s.bytes.fetch_add(bytes, Ordering::Relaxed);
            s.files.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn child_rel(&self, name: &CString) -> PathBuf {
        use std::os::unix::ffi::OsStrExt;
        self.rel.join(std::ffi::OsStr::from_bytes(name.as_bytes()))
    }
}

pub enum Job {
    /// Scan a directory that is already open on both sides (the root).
    Scan(Arc<DirNode>),
    /// Create, open and scan a subdirectory.
    Dir {
        parent: Arc<DirNode>,
        name: CString,
        meta: Meta,
    },
    /// Copy a regular file (named `from` in the source directory, when that differs).
    File {
        parent: Arc<DirNode>,
        name: CString,
        meta: Meta,
        from: Option<CString>,
    },
    /// Copy the byte range `[start, end)` of a file already opened by another task.
    Chunk {
        ctx: Arc<file::FileCtx>,
        start: u64,
        end: u64,
    },
    /// Make a symlink, fifo or device node (replacing what is there), from `from` if given.
    Inline {
        parent: Arc<DirNode>,
        name: CString,
        meta: Meta,
        from: Option<CString>,
    },
    /// Put the source's owner, xattrs, mode and times on an existing non-directory.
    Attrs {
        parent: Arc<DirNode>,
        name: CString,
        meta: Meta,
    },
    /// Link `name` to an existing target entry `first` in directory `dir` (replacing).
    Link {
        parent: Arc<DirNode>,
        name: CString,
        dir: Arc<OwnedFd>,
        first: CString,
    },
}

/// A file written under a temporary name whose rename into place waits for its data to be
/// durable (`--fsync end`; see [`Shared::defer`]); or the first path of a hardlinked file,
/// written at its final name (a new name), whose other names, which may replace files the
/// target already had, wait for the same `syncfs`.
pub(crate) struct Deferred {
    pub(crate) parent: Arc<DirNode>,
    /// `None`: written at its final name; nothing to rename.
    pub(crate) tmp: Option<CString>,
    pub(crate) name: CString,
    pub(crate) marker: char,
    pub(crate) meta: Meta,
    /// `--verify`: what its reads hashed to.
    pub(crate) sums: Option<Vec<crate::verify::Piece>>,
    /// A staged directory (this node, made under `tmp` in `parent`) rather than a file.
    pub(crate) dir: Option<Arc<DirNode>>,
}

/// Files waiting for publication: a `syncfs` of the target, then their renames, once this many
/// wait (bounding the temporaries' extra space and this list), or when nothing else is left to
/// do (the end of most runs: one batch).
const DEFER_FILES_MAX: usize = 8192;
const DEFER_BYTES_MAX: u64 = 1 << 30;
/// With `--verify`, smaller batches: each published batch is read back while the next is
/// written, instead of the whole tree after the run.
const DEFER_BYTES_VERIFY: u64 = 128 << 20;

/// Whether written files wait for a batch's `syncfs` before they are renamed into place
/// ([`Shared::defer`]): under `--fsync end`, and under `--fsync none --verify` (which syncs
/// anyway, for its read-back: in batches the read-back overlaps the copy).
pub(crate) fn publishes_in_batches(cfg: &CopyConfig) -> bool {
    cfg.fsync == Fsync::End || (cfg.verify && cfg.fsync == Fsync::None)
}

/// Where a hardlinked inode stands.
enum Link {
    /// First path being copied; these (directory, name) pairs wait to be linked to it.
    Pending(Vec<(Arc<DirNode>, CString)>),
    /// Copied: link new paths to `name` in this target directory.
    Done(Arc<OwnedFd>, CString),
    Failed,
}

/// Jobs visible to every worker, plus the count of jobs not yet finished anywhere.
struct JobQueue {
    q: Mutex<VecDeque<Job>>,
    cv: Condvar,
    len: AtomicUsize,
    outstanding: AtomicUsize,
    abort: AtomicBool,
}

impl JobQueue {
    fn push(&self, job: Job) {
        let mut q = self.q.lock().expect("queue poisoned");
        q.push_back(job);
        self.len.store(q.len(), Ordering::Relaxed);
        self.cv.notify_one();
    }

    fn try_pop(&self) -> Option<Job> {
        if self.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut q = self.q.lock().expect("queue poisoned");
        let j = q.pop_front();
        self.len.store(q.len(), Ordering::Relaxed);
        j
    }

    /// Block until a job is shared or every job everywhere is finished (`None`).
    fn pop_blocking(&self) -> Option<Job> {
        let mut q = self.q.lock().expect("queue poisoned");
        loop {
            if self.abort.load(Ordering::Relaxed) {
                return None;
            }
            if let Some(j) = q.pop_front() {
                self.len.store(q.len(), Ordering::Relaxed);
                return Some(j);
            }
            if self.outstanding.load(Ordering::Acquire) == 0 {
                return None;
            }
            q = self.cv.wait(q).expect("queue poisoned");
        }
    }

    fn job_done(&self) {
        if self.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            let _q = self.q.lock().expect("queue poisoned");
            self.cv.notify_all();
        }
    }

    fn stop(&self) {
        self.abort.store(true, Ordering::Relaxed);
        let _q = self.q.lock().expect("queue poisoned");
        self.cv.notify_all();
    }
}

/// State shared by all workers for one run.
pub struct Shared {
    cfg: CopyConfig,
    queue: JobQueue,
    pub errors: ErrorLog,
    counters: Arc<[Counters]>,
    links: Mutex<HashMap<(u64, u64), Link>>,
    preserve: Preserve,
    /// Reflink still worth trying (auto mode turns it off at the first refusal).
    reflink_try: AtomicBool,
    /// copy_file_range still worth trying (turned off at the first refusal by the kernel).
    cfr_try: AtomicBool,
    xattr_warned: AtomicBool,
    tmp_seq: AtomicU64,
    /// Files removed unfinished because the run was interrupted.
    unfinished: AtomicU64,
    /// Device of the source root (`--one-file-system`).
    src_dev: u64,
    /// Directory scans queued or running: while any is, the totals still grow.
    scans_left: AtomicUsize,
    /// Per worker, the file it started last (only while a progress line shows them).
    current: Option<Vec<Mutex<String>>>,
    is_root: bool,
    /// Owner of entries this process creates.
    euid: u32,
    /// `--bwlimit`: every data write (ring or copy_file_range) takes its bytes from here first
    /// and is submitted at once after the wait. Reads are paced through the buffers: each one
    /// needs a buffer that only a finished write frees, and the pool is kept small.
    limiter: Option<crate::bwlimit::Bucket>,
    /// The target root, for `syncfs`.
    dst_root: Arc<OwnedFd>,
    /// Written files waiting to be renamed into place, and their bytes.
    deferred: Mutex<(Vec<Deferred>, u64)>,
    /// How many wait (read without the lock on every turn of a worker's loop).
    deferred_n: AtomicUsize,
    /// A `syncfs` before a publication failed: no later batch is trusted either (the error is
    /// reported once per descriptor, so a later `syncfs` succeeding proves nothing).
    sync_failed: Mutex<Option<Errno>>,
    /// `--verify`: the files written, to be read back after the final sync.
    verify: Option<Mutex<Vec<crate::verify::Item>>>,
    /// `--verify`: where files already made durable by a published batch's `syncfs` are read
    /// back during the run.
    verify_live: Option<crate::verify::Feed>,
    /// Publish deferred files once this many bytes wait.
    defer_bytes_max: u64,
}

impl Shared {
    fn src_path(&self, rel: &Path) -> PathBuf {
        self.cfg.src.join(rel)
    }

    fn dst_path(&self, rel: &Path) -> PathBuf {
        self.cfg.dst.join(rel)
    }

    /// A fresh temporary name for an entry written beside an existing one and renamed over it.
    /// Fixed length, so it fits wherever the final name (up to 255 bytes) fits.
    fn tmp_name(&self) -> CString {
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        CString::new(format!(".ringsync.{}.{n}.tmp", std::process::id())).expect("no NUL")
    }

    /// Say that `name` in `node` was made (`+`) or replaced (`M`, `T`), for `-v` and the log.
    fn note_change(&self, marker: char, node: &DirNode, name: &CStr) {
        if !self.listing_changes() {
            return;
        }
        use std::os::unix::ffi::OsStrExt;
        let rel = crate::diff::join(node.rel.as_os_str().as_bytes(), name.to_bytes());
        self.cfg.report.change(marker, &rel);
    }

    /// Whether change lines are being listed (so the type of a replaced entry is worth a statx).
    fn listing_changes(&self) -> bool {
        self.cfg.list_changes && self.cfg.report.wants_changes()
    }

    /// Whether the entries of directory `node` are copied too: not across a filesystem
    /// boundary under `-x`, nor below a directory the filter takes without its contents.
    fn descends(&self, node: &DirNode) -> bool {
        use std::os::unix::ffi::OsStrExt;
        let rel = node.rel.as_os_str().as_bytes();
        self.cfg.filter.descends(rel, node.meta.dev, self.src_dev)
    }

    /// A directory scan is queued (see `scans_left`).
    fn scan_queued(&self) {
        self.scans_left.fetch_add(1, Ordering::Relaxed);
    }

    /// A queued directory scan is over: done, failed, cancelled or not wanted.
    fn scan_done(&self) {
        self.scans_left.fetch_sub(1, Ordering::Relaxed);
    }

    /// What the progress line shows.
    fn snapshot(&self) -> crate::progress::Snapshot {
        let t = crate::progress::totals(&self.counters);
        crate::progress::Snapshot {
            scanning: self.scans_left.load(Ordering::Relaxed) > 0,
            activity: "copying",
            bytes_done: t.bytes + t.holes,
            bytes_total: t.bytes_found.saturating_sub(t.bytes_dropped),
            files_done: t.files,
            files_total: t.files_found.saturating_sub(t.files_dropped),
            entries: 0,
            wire: None,
            in_flight: self
                .current
                .iter()
                .flatten()
                .filter_map(|c| {
                    let c = c.lock().unwrap_or_else(|e| e.into_inner());
                    (!c.is_empty()).then(|| c.clone())
                })
                .collect(),
        }
    }

    fn new_job(&self) {
        self.queue.outstanding.fetch_add(1, Ordering::AcqRel);
    }

    fn warn_xattr_unsupported(&self, path: &Path) {
        if !self.xattr_warned.swap(true, Ordering::Relaxed) {
            self.errors.warn(format!(
                "{}: target filesystem does not support some xattrs; they were not copied (reported once)",
                path.display()
            ));
        }
    }

    /// Hold a written temporary file back from its final name until a `syncfs` has made its
    /// data durable: a crash (power loss, a filesystem shutdown) then leaves at that name the
    /// old version or the new one, never a renamed file whose data never reached the disk
    /// (ext4 with `noauto_da_alloc`, xfs). One `syncfs` per batch costs far less than an
    /// fsync per file. Until published, the file counts as a job still running and as a
    /// pending child of its directory (whose attributes come after the rename).
    fn defer(&self, d: Deferred) {
        self.new_job();
        let mut q = self.deferred.lock().expect("deferred poisoned");
        q.1 += d.meta.size;
        q.0.push(d);
        self.deferred_n.store(q.0.len(), Ordering::Release);
    }

    /// Take the files waiting for publication if the batch is full, or if `idle` (the caller
    /// has nothing to do) and every job not yet finished is one of them, or if `all`.
    fn take_deferred(&self, idle: bool, all: bool) -> Vec<Deferred> {
        if self.deferred_n.load(Ordering::Acquire) == 0 {
            return Vec::new();
        }
        let mut q = self.deferred.lock().expect("deferred poisoned");
        let full = q.0.len() >= DEFER_FILES_MAX || q.1 >= self.defer_bytes_max;
        let rest = idle && self.queue.outstanding.load(Ordering::Acquire) == q.0.len();
        if q.0.is_empty() || !(all || full || rest) {
            return Vec::new();
        }
        q.1 = 0;
        self.deferred_n.store(0, Ordering::Release);
        std::mem::take(&mut q.0)
    }

    /// A child of `node` that is not a directory (a file, a node, a hardlink waiter), or its
    /// scan, is finished: a staged directory whose last such child this was is published.
    fn child_done(&self, node: Arc<DirNode>) {
        if let Some(s) = &node.staged {
            if s.files_left.fetch_sub(1, Ordering::AcqRel) == 1 {
                self.publish_dir(&node, s);
            }
        }
        self.pending_done(node);
    }

    /// A subdirectory of `node` is finished (or failed, or was cancelled).
    fn subdir_done(&self, node: Arc<DirNode>) {
        self.pending_done(node);
    }

    /// Whether this run makes new directories under a temporary name ([`Staged`]): `copy` and
    /// a mirror's new subtrees, except under `--verify`, whose read-back goes by files
    /// published in batches.
    fn stages_dirs(&self) -> bool {
        (self.cfg.tmp_new || self.cfg.atomic) && !self.cfg.verify
    }

    /// Every entry of the staged directory `node` but its subdirectories is finished: rename
    /// it into place, after the next batch's `syncfs` where files wait for one.
    fn publish_dir(&self, node: &Arc<DirNode>, s: &Staged) {
        let parent = node.parent.clone().expect("a staged directory has a parent");
        // Without files written in it (only links, symlinks, nodes or subdirectories), there
        // is no data to wait for, as for a directory made at its name.
        if publishes_in_batches(&self.cfg) && s.files.load(Ordering::Relaxed) > 0 {
            let mut meta = node.meta;
            meta.size = s.bytes.load(Ordering::Relaxed);
            self.defer(Deferred {
                parent,
                tmp: Some(s.tmp.clone()),
                name: s.name.clone(),
                marker: '+',
                meta,
                sums: None,
                dir: Some(node.clone()),
            });
            return;
        }
        if let Err(e) = self.place_dir(&parent, s) {
            self.errors.report(e);
        }
        self.pending_done(node.clone());
    }

    /// Rename a staged directory to its name, which must still be free (RENAME_NOREPLACE, or
    /// a look first where the filesystem lacks it). If it is not, the copy stays under its
    /// temporary name and the error says where.
    fn place_dir(&self, parent: &DirNode, s: &Staged) -> Result<(), EntryError> {
        scan::rename_noreplace(&parent.dst, &s.tmp, &s.name).map_err(|e| {
            let kept = self.dst_path(&parent.child_rel(&s.tmp));
            let mut err = EntryError::new("rename", self.dst_path(&parent.child_rel(&s.name)), e);
            err.detail = Some(format!(
                "{}the copied directory stays at {}",
                if e == Errno::EXIST {
                    "something was made at this name during the copy; "
                } else {
                    ""
                },
                kept.display()
            ));
            err
        })
    }

    /// Remove everything in a staged directory whose `syncfs` failed with `e`, each entry
    /// removed reported. Returns whether it is empty now.
    fn empty_dir(&self, node: &DirNode, e: Errno) -> bool {
        let dir = &*node.dst;
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let listed = rustix::fs::openat(dir, c".", flags, Mode::empty()).and_then(|fd| {
            let mut names = Vec::new();
            let mut buf = vec![std::mem::MaybeUninit::<u8>::uninit(); 32 << 10];
            let mut it = rustix::fs::RawDir::new(&fd, &mut buf);
            while let Some(entry) = it.next() {
                let n = entry?.file_name().to_owned();
                if n.as_c_str() != c"." && n.as_c_str() != c".." {
                    names.push(n);
                }
            }
            Ok(names)
        });
        let Ok(names) = listed else { return false };
        let mut empty = true;
        for n in names {
            let path = self.dst_path(&node.child_rel(&n));
            match crate::remove::remove_tree(dir, &n, self.is_root) {
                Ok(()) => {
                    let mut err = EntryError::new("syncfs before rename", path, e);
                    err.detail = Some("not known to be durable: removed".into());
                    self.errors.report(err);
                }
                Err(r) => {
                    empty = false;
                    self.errors.report(EntryError::new("remove", path, r));
                }
            }
        }
        empty
    }

    /// One pending count of `node` is released; finish directories whose last one this was.
    fn pending_done(&self, node: Arc<DirNode>) {
        let mut node = node;
        loop {
            if node.pending.fetch_sub(1, Ordering::AcqRel) != 1 {
                return;
            }
            if !node.own_attrs {
                return;
            }
            let discarded = node.staged.as_ref().and_then(|s| Some((s, *s.discard.get()?)));
            if let (Some((s, e)), Some(parent)) = (discarded, &node.parent) {
                // Nothing below it is in flight any more: what it holds goes, and it takes its
                // name empty, as a directory whose files all failed (a mirror may have removed
                // what stood there); its attributes, then its parent's, come after.
                // If it cannot be emptied, it stays under its temporary name.
                if !self.empty_dir(&node, e) {
                    let mut err = EntryError::new("syncfs before rename", self.dst_path(&node.rel), e);
                    err.detail = Some(format!(
                        "not known to be durable: not published, left at {}",
                        self.dst_path(&parent.child_rel(&s.tmp)).display()
                    ));
                    self.errors.report(err);
                } else if let Err(e) = self.place_dir(parent, s) {
                    self.errors.report(e);
                }
            }
            if let Err((step, e)) = crate::meta::apply_fd(
                crate::meta::fd(&*node.src),
                crate::meta::fd(&*node.dst),
                &node.meta,
                self.preserve,
                // A reused or ACL-inheriting target directory may carry xattrs the source lacks.
                crate::meta::Created {
                    prune: true,
                    ..Default::default()
                },
            )
            .map(|x| {
                if x.unsupported {
                    self.warn_xattr_unsupported(&self.dst_path(&node.rel));
                }
            }) {
                self.errors
                    .report(EntryError::new(step.name(), self.dst_path(&node.rel), e));
            }
            match node.parent.clone() {
                Some(p) => node = p,
                None => return,
            }
        }
    }
}

/// Latency histograms of one worker, in nanoseconds.
pub struct Latencies {
    /// One histogram per `OpKind::ALL` entry, made at its first sample (most runs use a few
    /// kinds), 1 ns to 120 s at 2 significant digits (within 1%): ~32 KiB of counters each. At 3
    /// digits, ~240 KiB each, made up front for every kind in every worker, zeroing them was most
    /// of a small run's page faults.
    pub by_kind: Vec<Option<Histogram<u64>>>,
}

impl Latencies {
    fn new() -> Latencies {
        Latencies {
            by_kind: OpKind::ALL.iter().map(|_| None).collect(),
        }
    }

    fn histogram() -> Histogram<u64> {
        Histogram::new_with_bounds(1, 120_000_000_000, 2).expect("valid bounds")
    }

    fn record(&mut self, kind: OpKind, latency: Duration) {
        let i = OpKind::ALL.iter().position(|k| *k == kind).expect("known kind");
        let ns = (latency.as_nanos() as u64).clamp(1, 120_000_000_000);
        let h = self.by_kind[i].get_or_insert_with(Latencies::histogram);
        h.record(ns).expect("within bounds");
    }

    fn merge(&mut self, other: &Latencies) {
        for (a, b) in self.by_kind.iter_mut().zip(&other.by_kind) {
            if let Some(b) = b {
                a.get_or_insert_with(Latencies::histogram)
                    .add(b)
                    .expect("same bounds");
            }
        }
    }
}

/// What a finished run reports.
pub struct Outcome {
    pub totals: crate::progress::Totals,
    pub errors: u64,
    pub vanished: u64,
    pub warnings: u64,
    pub messages: Vec<String>,
    pub exit_code: i32,
    pub elapsed: Duration,
    pub engine: String,
    pub threads: usize,
    pub latencies: Latencies,
    /// The stop signal that ended the run early (its unfinished files removed), if any.
    pub interrupted: Option<i32>,
    /// Files that were being copied when the run was interrupted, removed.
    pub unfinished: u64,
    /// `--verify`: what was read back.
    pub verified: Option<crate::verify::Stats>,
}

/// A run that could not start or had to stop.
#[derive(Debug)]
pub struct Fatal(pub String);

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn fatal(op: &str, path: &Path, e: impl Into<std::io::Error>) -> Fatal {
    Fatal(format!("{op} {}: {}", path.display(), e.into()))
}

/// Decide the engine: `auto` probes io_uring once and says so if it has to fall back.
pub fn choose_engine(choice: EngineChoice, quiet: bool) -> Result<EngineKind, Fatal> {
    match choice {
        EngineChoice::Sync => Ok(EngineKind::Sync),
        EngineChoice::Uring => ring::probe_uring()
            .map(|()| EngineKind::Uring)
            .map_err(|e| Fatal(format!("io_uring unavailable: {e} (try --engine sync)"))),
        EngineChoice::Auto => match ring::probe_uring() {
            Ok(()) => Ok(EngineKind::Uring),
            Err(e) => {
                if !quiet {
                    eprintln!("ringsync: io_uring unavailable ({e}); using the sync engine");
                }
                Ok(EngineKind::Sync)
            }
        },
    }
}

/// Group that new entries in directory `dir` get: the directory's own when it is setgid.
fn created_gid(dir: &OwnedFd) -> u32 {
    match rustix::fs::fstat(dir) {
        Ok(st) if st.st_mode & libc::S_ISGID != 0 => st.st_gid,
        _ => rustix::process::getegid().as_raw(),
    }
}

/// Raise the open-file limit: deep trees and hardlink bookkeeping hold directory descriptors.
pub fn raise_nofile_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        lim.current = lim.maximum;
        let _ = setrlimit(Resource::Nofile, lim);
    }
}

/// Copy the contents of `cfg.src` into `cfg.dst`.
pub fn copy(cfg: CopyConfig) -> Result<Outcome, Fatal> {
    run(cfg, true, true, |shared, root| {
        Counters::add(&shared.counters[0].dirs, 1);
        shared.new_job();
        shared.scan_queued();
        shared.queue.push(Job::Scan(root));
    })
}

/// Carry out a mirror's plan: copies, attribute updates and links below `cfg.dst`, whose
/// directories (and the plan's) must already exist. Every file is written under a temporary
/// name and renamed into place.
pub fn apply(cfg: CopyConfig, plan: Plan) -> Result<Outcome, Fatal> {
    run(cfg, false, true, |shared, root| plan::seed(shared, root, plan))
}

/// Copy one entry: `from` in directory `cfg.src` to `name` in directory `cfg.dst` (which must
/// exist), replacing what is there; neither directory's attributes are touched.
pub fn copy_entry(cfg: CopyConfig, from: CString, name: CString, meta: Meta) -> Result<Outcome, Fatal> {
    let action = match meta.file_type() {
        rustix::fs::FileType::RegularFile => Action::Copy,
        rustix::fs::FileType::Directory => return Err(Fatal("copy_entry of a directory".into())),
        _ => Action::Inline,
    };
    let plan = Plan {
        dirs: vec![PlanDir {
            parent: 0,
            name: CString::default(),
            rel: PathBuf::new(),
        }],
        items: vec![PlanItem {
            dir: 0,
            name,
            meta,
            action,
            from: Some(from),
        }],
        links: Vec::new(),
    };
    run(cfg, false, false, |shared, root| plan::seed(shared, root, plan))
}

/// Set up the run, let `seed` queue the first jobs against the root node (whose pending count
/// starts at 1 and is the seed's to release), then run the workers until every job is done.
/// `whole_source`: the run walked all of SRC, so `--files-from` paths it did not find are
/// missing from SRC (reported).
fn run(
    cfg: CopyConfig,
    whole_source: bool,
    own_root_attrs: bool,
    seed: impl FnOnce(&Arc<Shared>, Arc<DirNode>),
) -> Result<Outcome, Fatal> {
    let start = Instant::now();
    raise_nofile_limit();
    let mut kind = choose_engine(cfg.engine, cfg.quiet)?;
    if kind == EngineKind::Uring && !ring::uring_reads_trusted(&cfg.src) {
        // io_uring reads of FUSE files can return wrong bytes as success (ring::uring_reads_trusted).
        if cfg.engine == EngineChoice::Uring && !cfg.quiet {
            eprintln!(
                "ringsync: warning: {} is on FUSE or holds a FUSE mount, where io_uring reads \
                 cannot be trusted (a read that fails in part can complete as a success with \
                 other bytes): using the sync engine",
                cfg.src.display()
            );
        }
        kind = EngineKind::Sync;
    }
    let threads = cfg.threads.max(1);

    let is_root = rustix::process::geteuid().is_root();
    let noatime = if is_root { OFlags::NOATIME } else { OFlags::empty() };
    let src_root = rustix::fs::open(
        &cfg.src,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | noatime,
        Mode::empty(),
    )
    .map_err(|e| fatal("open source directory", &cfg.src, e))?;
    let stx = rustix::fs::statx(
        &src_root,
        c"",
        rustix::fs::AtFlags::EMPTY_PATH,
        rustix::fs::StatxFlags::BASIC_STATS,
    )
    .map_err(|e| fatal("statx", &cfg.src, e))?;
    std::fs::create_dir_all(&cfg.dst).map_err(|e| fatal("create target directory", &cfg.dst, e))?;
    // Entries are created with their final permission bits where possible (saving a chmod per
    // file), so from here on the umask must not mask them. DST's own missing parents, made
    // just above, got the user's umask like `mkdir -p`.
    rustix::process::umask(Mode::empty());
    let dst_root = rustix::fs::open(
        &cfg.dst,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fatal("open target directory", &cfg.dst, e))?;
    let dst_root = Arc::new(dst_root);

    let counters: Arc<[Counters]> = (0..threads).map(|_| Counters::default()).collect();
    // Read-back waits for the device: more threads than cores keep it busy. Beside the copy
    // its buffers are small (the copy holds the pool); they grow for what is left at the end.
    let readers = crate::verify::readers(threads);
    let live = (cfg.verify && publishes_in_batches(&cfg)).then(|| {
        let buf = (cfg.memory_bytes as usize / readers / 4).clamp(256 << 10, 1 << 20);
        crate::verify::Live::start(readers, buf)
    });
    let progress_mode = crate::progress::mode(cfg.quiet || !cfg.progress, cfg.progress_forced);
    let shared = Arc::new(Shared {
        queue: JobQueue {
            q: Mutex::new(VecDeque::new()),
            cv: Condvar::new(),
            len: AtomicUsize::new(0),
            outstanding: AtomicUsize::new(0),
            abort: AtomicBool::new(false),
        },
        errors: ErrorLog::with_report(cfg.quiet, cfg.report.clone()),
        counters: counters.clone(),
        links: Mutex::new(HashMap::new()),
        preserve: Preserve {
            owner: is_root,
            all_xattrs: is_root,
        },
        // --verify hashes every byte read from the source: nothing moves without being read.
        reflink_try: AtomicBool::new(cfg.reflink != Reflink::Never && !cfg.verify),
        // copy_file_range clones on btrfs/xfs, so it is off when cloning is forbidden.
        cfr_try: AtomicBool::new(
            cfg.data_path != DataPath::Ring && cfg.reflink != Reflink::Never && !cfg.verify,
        ),
        xattr_warned: AtomicBool::new(false),
        // From a random point: a killed run's temporaries (a staged directory, say) must not
        // meet a later run's under the same pid (a container's pid 1), or that run's create
        // of the same name would fail.
        tmp_seq: AtomicU64::new(crate::failpoint::tmp_seq_start().unwrap_or(u64::from(random_u32()))),
        unfinished: AtomicU64::new(0),
        src_dev: Meta::from_statx(&stx).dev,
        scans_left: AtomicUsize::new(0),
        current: (progress_mode == crate::progress::Mode::Terminal)
            .then(|| (0..threads).map(|_| Mutex::new(String::new())).collect()),
        is_root,
        euid: rustix::process::geteuid().as_raw(),
        limiter: cfg.bwlimit.map(crate::bwlimit::Bucket::new),
        dst_root: dst_root.clone(),
        deferred: Mutex::new((Vec::new(), 0)),
        deferred_n: AtomicUsize::new(0),
        sync_failed: Mutex::new(None),
        verify: cfg.verify.then(|| Mutex::new(Vec::new())),
        verify_live: live.as_ref().map(|l| l.feed()),
        defer_bytes_max: if live.is_some() {
            DEFER_BYTES_VERIFY
        } else {
            DEFER_BYTES_MAX
        },
        cfg: cfg.clone(),
    });
    let shared_for_line = shared.clone();
    let root = Arc::new(DirNode {
        parent: None,
        rel: PathBuf::new(),
        src: Arc::new(src_root),
        dst: dst_root.clone(),
        meta: Meta::from_statx(&stx),
        inherits_acl: crate::meta::has_default_acl(crate::meta::fd(&*dst_root)),
        created_gid: created_gid(&dst_root),
        pending: AtomicUsize::new(1),
        own_attrs: own_root_attrs,
        staged: None,
    });
    seed(&shared, root);

    let progress = ProgressLine::start(progress_mode, move || shared_for_line.snapshot());
    // Under --bwlimit, buffers bound how far reads run ahead of the paced writes: keep that
    // lead near 100 ms of rate (at least two buffers per worker) instead of all of --memory.
    let memory_bytes = match cfg.bwlimit {
        Some(rate) => cfg
            .memory_bytes
            .min((rate / 10).max((2 * threads * POOL_UNIT_BYTES) as u64)),
        None => cfg.memory_bytes,
    };
    let units_total = (memory_bytes as usize / POOL_UNIT_BYTES).max(threads);
    // A pool of 1 MiB or more takes whole 2 MiB huge pages (ring::Pool::bytes_for): whole huge
    // pages' worth of units use all of them and stay within --memory; a share under one huge
    // page stays under 1 MiB, in small pages.
    let units = (units_total / threads).max(1);
    let per_huge = ring::pool::HUGE_PAGE_BYTES / POOL_UNIT_BYTES;
    let units = if units >= per_huge {
        units - units % per_huge
    } else {
        units.min(ring::pool::HUGE_MIN_BYTES / POOL_UNIT_BYTES - 1)
    };
    let ring_cfg = RingConfig {
        sq_entries: SQ_ENTRIES,
        pool_units: units,
        pool_unit_bytes: POOL_UNIT_BYTES,
        // Not registered: registering pins, and so touches, every page of the pool at start-up
        // (~14 ms for the default 64 MiB on this project's VMs: a one-file copy took 18.8 ms
        // against 4.3 ms plain), while a copy that moves little should touch little. Plain ops
        // measured the same on the 2 GiB file (0.99 s) and the mixed tree (0.71 s), 5 pairs.
        buffers: crate::ring::Buffers::Plain,
        async_reads: false,
    };
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut handles = Vec::with_capacity(threads);
    for id in 0..threads {
        let shared = shared.clone();
        let core = if cores.is_empty() {
            None
        } else {
            Some(cores[id % cores.len()])
        };
        handles.push(
            std::thread::Builder::new()
                .name(format!("ringsync-w{id}"))
                .spawn(move || -> Result<(Latencies, String), String> {
                    let _stop_on_panic = StopOnPanic(shared.clone());
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    let backend = ring::build(kind, ring_cfg).map_err(|e| {
                        shared.queue.stop();
                        format!("worker {id}: ring set-up failed: {e}")
                    })?;
                    let describe = backend.describe();
                    let mut w = Worker::new(id, shared.clone(), backend);
                    match w.run() {
                        Ok(()) => Ok((w.lat, describe)),
                        Err(e) => {
                            shared.queue.stop();
                            Err(format!("worker {id}: ring wait failed: {e}"))
                        }
                    }
                })
                .map_err(|e| Fatal(format!("spawn worker: {e}")))?,
        );
    }
    let mut lat = Latencies::new();
    let mut engine = String::new();
    let mut failure = None;
    for h in handles {
        match h.join() {
            Ok(Ok((l, d))) => {
                lat.merge(&l);
                engine = d;
            }
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some("a worker panicked".to_string()),
        }
    }
    progress.finish();
    // A run stopped by a failure leaves files unpublished: never at their final names. (A
    // hardlink's new first name stays, as copy's other new files do; its links are not made.)
    for d in shared.take_deferred(true, true) {
        match (&d.tmp, &d.dir) {
            (Some(tmp), Some(_)) => {
                let _ = crate::remove::remove_tree(&d.parent.dst, tmp, is_root);
            }
            (Some(tmp), None) => {
                let _ = rustix::fs::unlinkat(&*d.parent.dst, tmp.as_c_str(), rustix::fs::AtFlags::empty());
            }
            (None, _) => {}
        }
    }
    if let Some(e) = failure {
        return Err(Fatal(e));
    }
    let interrupted = crate::signals::interrupted();
    if whole_source && interrupted.is_none() {
        crate::filter::report_unseen(&cfg.filter, &cfg.src, &shared.errors);
    }
    // An interrupted run promises nothing about durability; flushing could take long.
    // --verify reads from the device, so what it reads must be there whatever --fsync says.
    if (cfg.fsync == Fsync::End || cfg.verify) && interrupted.is_none() {
        // After a failed syncfs a later one succeeding proves nothing (the error is reported
        // once): what this run wrote is not known to be durable.
        let earlier = *shared.sync_failed.lock().expect("sync_failed poisoned");
        earlier
            .map_or(Ok(()), Err)
            .and_then(|()| crate::failpoint::fail("syncfs", b""))
            .and_then(|()| rustix::fs::syncfs(&*dst_root))
            .map_err(|e| fatal("syncfs", &cfg.dst, e))?;
    }
    let verified = match (&shared.verify, interrupted) {
        (Some(items), None) => {
            let items = std::mem::take(&mut *items.lock().expect("verify poisoned"));
            let buf = (cfg.memory_bytes as usize / readers).min(OP_BYTES_MAX as usize);
            match live {
                // What no batch made durable was synced just above.
                Some(live) => {
                    live.push(items);
                    Some(live.finish(&shared.errors))
                }
                None => Some(crate::verify::verify(items, readers, buf, &shared.errors)),
            }
        }
        _ => {
            // Interrupted: nothing more is read back (the readers stop at their current file).
            if let Some(live) = live {
                live.abandon();
            }
            None
        }
    };
    let errors = &shared.errors;
    let exit_code = match interrupted {
        Some(_) => crate::error::exit::INTERRUPTED,
        None => errors.exit_code(),
    };
    Ok(Outcome {
        totals: crate::progress::totals(&counters),
        errors: errors.errors(),
        vanished: errors.vanished(),
        warnings: errors.warnings(),
        messages: errors.messages(),
        exit_code,
        elapsed: start.elapsed(),
        engine,
        threads,
        latencies: lat,
        interrupted,
        unfinished: shared.unfinished.load(Ordering::Relaxed),
        verified,
    })
}

/// A random number (0 if the kernel gives none).
fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    match rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()) {
        Ok(4) => u32::from_ne_bytes(b),
        _ => 0,
    }
}

/// Stops the whole run if a worker thread unwinds, so the others do not wait forever for jobs
/// that will never finish. (Stopping cannot fail, so this is safe to do in `Drop`.)
struct StopOnPanic(Arc<Shared>);

impl Drop for StopOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.queue.stop();
        }
    }
}

/// An active job on a worker. Tasks live in a slot table allocated at start-up, so the size
/// difference between variants costs nothing per task, while boxing would allocate per file.
#[allow(clippy::large_enum_variant)]
enum Task {
    Scan(scan::ScanTask),
    Copy(file::CopyTask),
}

/// What a task's step says about itself.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Waiting for its ops.
    Running,
    /// Wants buffers or ring room: call `pump` again after completions free some.
    Blocked,
    /// Finished; the job is done.
    Done,
}

pub struct Worker {
    id: usize,
    shared: Arc<Shared>,
    ring: Box<dyn Backend>,
    tasks: Vec<Option<Task>>,
    free_tasks: Vec<u32>,
    live_tasks: usize,
    blocked: VecDeque<u32>,
    /// This worker's own jobs: newest popped first (depth-first), oldest shared first.
    local: VecDeque<Job>,
    batch: Vec<Completion>,
    lat: Latencies,
}

fn token(task: u32, sub: u32) -> Token {
    ((task as u64) << 32) | sub as u64
}

fn split_token(t: Token) -> (u32, u32) {
    ((t >> 32) as u32, t as u32)
}

impl Worker {
    fn new(id: usize, shared: Arc<Shared>, ring: Box<dyn Backend>) -> Worker {
        Worker {
            id,
            shared,
            ring,
            tasks: (0..TASKS_PER_WORKER_MAX).map(|_| None).collect(),
            free_tasks: (0..TASKS_PER_WORKER_MAX as u32).rev().collect(),
            live_tasks: 0,
            blocked: VecDeque::with_capacity(TASKS_PER_WORKER_MAX),
            local: VecDeque::new(),
            batch: Vec::with_capacity(SQ_ENTRIES as usize * 2),
            lat: Latencies::new(),
        }
    }

    fn counters(&self) -> &Counters {
        &self.shared.counters[self.id]
    }

    /// Queue a new job: on this worker's stack, or shared when other workers may be idle.
    fn spawn(&mut self, job: Job) {
        self.shared.new_job();
        self.local.push_back(job);
    }

    /// Hand the oldest local jobs to the shared queue while it is short.
    fn share(&mut self) {
        let want = self.shared.cfg.threads;
        while self.local.len() > 1 && self.shared.queue.len.load(Ordering::Relaxed) < want {
            let job = self.local.pop_front().expect("len > 1");
            self.shared.queue.push(job);
        }
    }

    fn run(&mut self) -> std::io::Result<()> {
        loop {
            if self.shared.queue.abort.load(Ordering::Relaxed) {
                return Ok(());
            }
            // Interrupted: queued jobs are cancelled instead of started, live ones wind down.
            let stopping = crate::signals::interrupted().is_some();
            if !stopping {
                self.share();
            }
            while self.live_tasks < TASKS_PER_WORKER_MAX {
                let job = match self.local.pop_back() {
                    Some(j) => j,
                    None => match self.shared.queue.try_pop() {
                        Some(j) => j,
                        None => break,
                    },
                };
                if stopping {
                    self.cancel(job);
                } else {
                    self.start(job);
                }
            }
            let batch = self
                .shared
                .take_deferred(self.live_tasks == 0 && self.local.is_empty(), false);
            if !batch.is_empty() {
                self.publish(batch);
                continue;
            }
            if self.live_tasks == 0 {
                match self.shared.queue.pop_blocking() {
                    Some(job) if stopping => self.cancel(job),
                    Some(job) => self.start(job),
                    None => return Ok(()),
                }
                continue;
            }
            if self.ring.in_flight() == 0 {
                self.pump_blocked();
                assert!(
                    self.ring.in_flight() > 0 || self.live_tasks == 0 || !self.local.is_empty(),
                    "worker {} stalled with {} tasks and nothing in flight",
                    self.id,
                    self.live_tasks
                );
                continue;
            }
            let mut batch = std::mem::take(&mut self.batch);
            self.ring.wait(1, &mut batch)?;
            for c in batch.drain(..) {
                self.lat.record(c.op.kind(), c.latency);
                self.dispatch(c);
            }
            self.batch = batch;
            self.pump_blocked();
        }
    }

    fn start(&mut self, job: Job) {
        let slot = self.free_tasks.pop().expect("caller checked live_tasks");
        self.live_tasks += 1;
        let task = match job {
            Job::Scan(node) => Task::Scan(scan::ScanTask::new(node)),
            Job::Dir { parent, name, meta } => match scan::open_child_dir(self, parent, name, meta) {
                Some(node) if self.shared.descends(&node) => Task::Scan(scan::ScanTask::new(node)),
                // Made (and finished: owner, mode, times) but not filled.
                Some(node) => {
                    self.shared.scan_done();
                    self.shared.child_done(node);
                    self.finish_slot(slot);
                    return;
                }
                None => {
                    self.shared.scan_done();
                    self.finish_slot(slot);
                    return;
                }
            },
            Job::File {
                parent,
                name,
                meta,
                from,
            } => Task::Copy(file::CopyTask::open(self, slot, parent, name, meta, from)),
            Job::Chunk { ctx, start, end } => Task::Copy(file::CopyTask::chunk(self, ctx, start, end)),
            Job::Inline {
                parent,
                name,
                meta,
                from,
            } => {
                plan::inline(self, &parent, &name, from.as_deref().unwrap_or(&name), &meta);
                self.shared.child_done(parent);
                self.finish_slot(slot);
                return;
            }
            Job::Attrs { parent, name, meta } => {
                plan::attrs(self, &parent, &name, &meta);
                self.shared.child_done(parent);
                self.finish_slot(slot);
                return;
            }
            Job::Link {
                parent,
                name,
                dir,
                first,
            } => {
                scan::make_link(self, &dir, &first, &parent, &name);
                self.shared.child_done(parent);
                self.finish_slot(slot);
                return;
            }
        };
        self.tasks[slot as usize] = Some(task);
        self.pump(slot);
    }

    /// Make a batch of deferred files durable (one `syncfs` of the target), then rename each
    /// into place and finish it. If the `syncfs` fails, none is published: each temporary is
    /// removed and its file reported. An interrupted run renames without syncing (it promises
    /// no durability), as files not deferred are.
    fn publish(&mut self, batch: Vec<Deferred>) {
        let synced = if crate::signals::interrupted().is_some() {
            Ok(())
        } else {
            let mut failed = self.shared.sync_failed.lock().expect("sync_failed poisoned");
            match *failed {
                Some(e) => Err(e),
                None => crate::failpoint::fail("syncfs", b"")
                    .and_then(|()| rustix::fs::syncfs(&*self.shared.dst_root))
                    .inspect_err(|e| *failed = Some(*e)),
            }
        };
        // Read back at once under --verify only what a syncfs just made durable.
        let durable = synced.is_ok() && crate::signals::interrupted().is_none();
        for d in batch {
            if let Some(node) = &d.dir {
                self.publish_staged(node, synced);
                continue;
            }
            let path = || self.shared.dst_path(&d.parent.child_rel(&d.name));
            let mut marker = d.marker;
            let error = match (synced, &d.tmp) {
                (Ok(()), None) => None,
                (Ok(()), Some(tmp)) => match scan::place(self, &d.parent, tmp, &d.name, d.marker) {
                    Ok(m) => {
                        marker = m;
                        None
                    }
                    Err(e) => Some(EntryError::new("rename", path(), e)),
                },
                (Err(e), tmp) => {
                    // Not durable: removed, like any file that failed (a new name's file too).
                    let created = tmp.as_ref().unwrap_or(&d.name);
                    let _ = rustix::fs::unlinkat(
                        &*d.parent.dst,
                        created.as_c_str(),
                        rustix::fs::AtFlags::empty(),
                    );
                    Some(EntryError::new(
                        if tmp.is_some() {
                            "syncfs before rename"
                        } else {
                            "syncfs before linking"
                        },
                        path(),
                        e,
                    ))
                }
            };
            // Durable and at its final name: read back now, beside the next batches.
            let sums = match (&self.shared.verify_live, d.sums) {
                (Some(live), Some(pieces)) if durable && error.is_none() => {
                    live.push([file::verify_item(self, &d.parent, &d.name, &d.meta, pieces)]);
                    None
                }
                (_, sums) => sums,
            };
            file::file_finished(self, &d.parent, &d.name, marker, &d.meta, sums, error);
            self.shared.queue.job_done();
        }
    }

    /// A staged directory's turn in a published batch: renamed into place if the `syncfs`
    /// made its files durable; else emptied (each entry reported) and renamed once nothing
    /// below it is in flight ([`Shared::pending_done`]).
    fn publish_staged(&mut self, node: &Arc<DirNode>, synced: Result<(), Errno>) {
        let s = node.staged.as_ref().expect("a staged directory");
        let parent = node.parent.as_ref().expect("a staged directory has a parent");
        match synced {
            Ok(()) => {
                if let Err(e) = self.shared.place_dir(parent, s) {
                    self.report(e);
                }
            }
            Err(e) => {
                let _ = s.discard.set(e);
            }
        }
        self.shared.pending_done(node.clone());
        self.shared.queue.job_done();
    }

    /// Drop a queued job of an interrupted run, releasing what it holds: its parent's pending
    /// count (so directories are still finished, modes and times restored), hardlink waiters
    /// (released unlinked), and a big file's chunk (run, so it fails at once and the last one
    /// closes and removes the file).
    fn cancel(&mut self, job: Job) {
        let parent = match job {
            Job::Chunk { .. } => return self.start(job),
            Job::Scan(node) => {
                self.shared.scan_done();
                node
            }
            Job::Dir { parent, .. } => {
                self.shared.scan_done();
                self.shared.subdir_done(parent);
                self.shared.queue.job_done();
                return;
            }
            // The first path of a hardlink group: its waiters are released unlinked.
            Job::File {
                parent, name, meta, ..
            }
            | Job::Inline {
                parent, name, meta, ..
            } => {
                resolve_links(self, &parent, &name, &meta, false);
                parent
            }
            Job::Attrs { parent, .. } | Job::Link { parent, .. } => parent,
        };
        self.shared.child_done(parent);
        self.shared.queue.job_done();
    }

    /// Let a task push what it can; park it if it is waiting for buffers or ring room.
    fn pump(&mut self, slot: u32) {
        let mut task = self.tasks[slot as usize].take().expect("live task");
        let step = match &mut task {
            Task::Scan(t) => t.pump(self, slot),
            Task::Copy(t) => t.pump(self, slot),
        };
        self.settle(slot, task, step);
    }

    fn dispatch(&mut self, c: Completion) {
        let (slot, sub) = split_token(c.token);
        let mut task = self.tasks[slot as usize]
            .take()
            .expect("completion for a live task");
        let step = match &mut task {
            Task::Scan(t) => t.complete(self, slot, sub, c),
            Task::Copy(t) => t.complete(self, slot, sub, c),
        };
        self.settle(slot, task, step);
    }

    fn settle(&mut self, slot: u32, task: Task, step: Step) {
        match step {
            Step::Running => self.tasks[slot as usize] = Some(task),
            Step::Blocked => {
                self.tasks[slot as usize] = Some(task);
                if !self.blocked.contains(&slot) {
                    self.blocked.push_back(slot);
                }
            }
            Step::Done => {
                drop(task);
                self.finish_slot(slot);
            }
        }
    }

    fn finish_slot(&mut self, slot: u32) {
        self.free_tasks.push(slot);
        self.live_tasks -= 1;
        self.shared.queue.job_done();
    }

    fn pump_blocked(&mut self) {
        for _ in 0..self.blocked.len() {
            let Some(slot) = self.blocked.pop_front() else {
                break;
            };
            if self.tasks[slot as usize].is_some() {
                self.pump(slot);
            }
        }
    }

    /// Room for reads and statx under the soft cap.
    fn soft_room(&self) -> usize {
        SOFT_IN_FLIGHT_MAX.saturating_sub(self.ring.in_flight())
    }

    fn report(&self, e: EntryError) {
        self.shared.errors.report(e);
    }
}

/// The first path of a hardlinked inode is finished (or failed): link or fail its waiters.
fn resolve_links(w: &mut Worker, parent: &Arc<DirNode>, name: &CString, meta: &Meta, ok: bool) {
    if meta.nlink <= 1 {
        return;
    }
    let state = if ok {
        Link::Done(parent.dst.clone(), name.clone())
    } else {
        Link::Failed
    };
    let previous = w
        .shared
        .links
        .lock()
        .expect("links poisoned")
        .insert((meta.dev, meta.ino), state);
    let Some(Link::Pending(waiters)) = previous else {
        return;
    };
    for (node, wname) in waiters {
        if ok {
            scan::make_link(w, &parent.dst, name, &node, &wname);
        } else if crate::signals::interrupted().is_none() {
            let path = w.shared.dst_path(&node.child_rel(&wname));
            w.report(EntryError::msg(
                "link",
                path,
                "the first path of this hardlinked file failed to copy",
            ));
        }
        w.shared.child_done(node);
    }
}

/// Map an errno on a source-side operation: ENOENT means the entry vanished mid-run.
fn source_error(op: &'static str, path: PathBuf, e: Errno) -> EntryError {
    if e == Errno::NOENT {
        EntryError::vanished(op, path)
    } else {
        EntryError::new(op, path, e)
    }
}
