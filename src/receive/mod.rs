//! `ringsync receive DST`: make DST what a record stream describes.
//!
//! The stream is hostile until proven otherwise. The codec checks every record (CRCs, bounds,
//! sequence, chain, structure) before this module sees it; this module then:
//! - resolves every name as one component beneath a held directory descriptor, never through a
//!   symlink (`openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`, an
//!   `O_NOFOLLOW` open where the kernel lacks it); a symlink or other non-directory found where
//!   a directory is to be is removed, never followed;
//! - writes file data only to temporary names it chooses itself (random, per run), checks the
//!   file's BLAKE3 at FILE_END, and queues the rename;
//! - publishes queued work (renames, hardlinks, directory attributes, deletion of extraneous
//!   entries) only at a CHECKPOINT or END whose chain hash verified, after making the staged
//!   data durable: what comes after the last good checkpoint of a damaged stream never
//!   reaches a final name;
//! - locks DST and marks it dirty as `mirror` does; the record notes the stream's target id
//!   when the stream was applied to END without errors.
//!
//! File data is written by the threads of [`writer`] (large files with O_DIRECT), while this
//! thread reads, checks and hashes the next records.
//!
//! Bounded: one payload buffer for records other than DATA (at most the stream's max payload,
//! 16 MiB), and DATA payloads on their way to the writing threads (about 32 MiB, at least two
//! payloads: [`writer::BUFFERED_BYTES`]); one descriptor per
//! open directory (at most 4096); the publication queue (at most [`PENDING_MAX`] entries);
//! names seen in each open directory kept as 64-bit keyed hashes, at most [`NAMES_MAX`] in all;
//! hardlink ids as names in a private directory inside DST (on disk, not in memory).
//!
//! Must not: write outside DST; publish unverified data; allocate from an unchecked length.

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString};
use std::hash::{BuildHasher, Hasher};
use std::io::{IsTerminal, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RawDir, RenameFlags, ResolveFlags};
use rustix::io::Errno;

use crate::diff::{escape, join};
use crate::error::exit;
use crate::mirror::guard::{self, Guard, LockError};
use crate::progress::{self, StreamCounts};
use crate::remove::remove_tree;
use crate::stream::{self, Record, ResumeToken, StreamHeader};
use crate::stream_io::{AlignedBuf, Item, ReadError, StreamReader};

mod writer;
use crate::verify::Piece;
use writer::{Finish, OutFile, Writer};

/// Entries queued for publication before a CHECKPOINT must come (a sender checkpoints every
/// 4096 entries).
pub const PENDING_MAX: usize = 1 << 16;
/// Names remembered in the open directories (a name made twice is refused; in directories
/// that existed before the stream they tell extraneous entries apart): 8-byte keyed hashes,
/// some 40 MiB at most.
pub const NAMES_MAX: usize = 1 << 21;
/// Xattr bytes one entry may carry.
pub const XATTR_BYTES_PER_ENTRY_MAX: usize = 4 << 20;
/// Xattr bytes of directories (open, or ended and not yet published) held at once.
pub const XATTR_BYTES_HELD_MAX: usize = 16 << 20;
/// `--verify`: each read-back thread's buffer (at most 32 threads).
const VERIFY_BUF_BYTES: usize = 1 << 20;
/// The largest max payload accepted (the format's cap).
const PAYLOAD_CAP: u32 = stream::PAYLOAD_BYTES_CAP;

pub struct ReceiveConfig {
    pub dst: PathBuf,
    /// `None`: standard input.
    pub input: Option<PathBuf>,
    pub drop_privileged: bool,
    /// Make staged data durable (syncfs) before each publication.
    pub fsync: bool,
    pub progress: progress::Mode,
    pub quiet: bool,
    /// Before an incremental stream, check that nothing changed DST since the last stream
    /// (a walk of DST). Only the fuzz harness turns it off: its DSTs are made moments before
    /// each input, and waiting for their ctimes to settle would slow it a hundredfold.
    pub check_dst_state: bool,
    /// A remote mirror's link bytes, for the progress line.
    pub wire: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// `--verify`: after the final sync, read back every file received and compare it with
    /// the XXH3-128 of each DATA record's bytes (src/verify.rs); a mismatch exits 8.
    pub verify: bool,
    /// A one-way stream (`ringsync receive`): after entries fail, a full stream's token stays
    /// at the last checkpoint before the first of them and is kept after END, to resume from
    /// there. Not for a remote mirror, whose next run lists DST and sends what is missing.
    pub one_way: bool,
}

type Xattrs = Vec<(CString, Vec<u8>)>;

/// A directory made (or found) and not yet ended.
struct OpenDir {
    fd: Arc<OwnedFd>,
    rel: Vec<u8>,
    /// Keyed hashes of the names the stream made here: a name made twice is refused when it
    /// comes, before anything is published (always `Some` here; a batch's DirDone holds
    /// `None` for a directory this run made, which has no extraneous entries).
    names: Option<HashSet<u64>>,
    xattrs: Xattrs,
    /// It has a default ACL: entries made in it inherit ACL xattrs, to be pruned.
    acl: bool,
    /// Made by this run and not yet published (under a temporary name, or inside such a
    /// directory): new directories in it can have their names at once.
    hidden: bool,
    /// Made by this run: nothing else is in it (no extraneous entries to delete).
    fresh: bool,
    /// Device and inode: what incremental records did to its names is kept by it.
    key: (u64, u64),
    /// Resuming an incremental stream: a directory before the resume offset that is not there
    /// any more (taken away or removed by the part already published). Its records are only
    /// followed; one after the offset refuses the stream.
    ghost: bool,
}

/// What an incremental stream's records before the next publication did to a name (they run
/// only then): a DIR of that name must not open what is there now.
enum Over {
    /// UNLINKed or taken to the holding directory: a DIR of that name makes a new one.
    Gone,
    /// Brought from the holding directory: the directory that will be there (`None`: not a
    /// directory).
    Incoming(Option<Arc<OwnedFd>>),
}

/// What the RENAME and UNLINK records of the batch being received, and of the one being
/// published, did to names (directory key → keyed hash of the name → what). Once a batch is
/// published the tree itself says it, and its notes go: at most two batches' worth
/// ([`PENDING_MAX`] records each) are kept.
#[derive(Default)]
struct Overlay {
    cur: HashMap<(u64, u64), HashMap<u64, Over>>,
    prev: HashMap<(u64, u64), HashMap<u64, Over>>,
}

impl Overlay {
    fn get(&self, dir: (u64, u64), name: u64) -> Option<&Over> {
        self.cur
            .get(&dir)
            .and_then(|m| m.get(&name))
            .or_else(|| self.prev.get(&dir).and_then(|m| m.get(&name)))
    }

    fn set(&mut self, dir: (u64, u64), name: u64, o: Over) {
        self.cur.entry(dir).or_default().insert(name, o);
    }

    /// The batch received so far was handed over for publication, and the one before it is
    /// published.
    fn rotate(&mut self) {
        self.prev = std::mem::take(&mut self.cur);
    }

    fn clear(&mut self) {
        self.cur.clear();
        self.prev.clear();
    }
}

/// Work done at the next verified CHECKPOINT or END, in stream order.
enum Pending {
    /// Incremental: move an entry to or from the holding directory.
    Move {
        from: Arc<OwnedFd>,
        from_name: CString,
        to: Arc<OwnedFd>,
        to_name: CString,
        /// Into the holding directory: the name there must be new.
        to_hold: bool,
        rel: Vec<u8>,
    },
    /// Incremental: remove an entry and all below it.
    Unlink {
        dir: Arc<OwnedFd>,
        name: CString,
        rel: Vec<u8>,
    },
    /// Incremental: set an existing entry's attributes (and exactly these xattrs).
    Attrs {
        dir: Arc<OwnedFd>,
        name: CString,
        meta: stream::Meta,
        xattrs: Xattrs,
        rel: Vec<u8>,
    },
    /// Rename a staged entry to its final name.
    Place {
        dir: Arc<OwnedFd>,
        temp: CString,
        name: CString,
        /// In a directory this run created: the name must be new.
        fresh: bool,
        rel: Vec<u8>,
        /// A received file: not placed if writing it failed (see [`OutFile::failed`]).
        file: Option<Arc<OutFile>>,
        /// `--verify`: the file's size and what its DATA records hashed to.
        check: Option<(u64, Vec<Piece>)>,
    },
    /// A directory's entries are all placed: delete extraneous ones, set its attributes.
    DirDone {
        fd: Arc<OwnedFd>,
        meta: stream::Meta,
        xattrs: Xattrs,
        names: Option<HashSet<u64>>,
        rel: Vec<u8>,
        root: bool,
    },
}

/// The file being received.
struct FileIn {
    dir: Arc<OwnedFd>,
    fresh: bool,
    name: CString,
    temp: CString,
    /// Written by the writer thread; once it failed, the file is received (to keep the
    /// stream in step) but not published.
    out: Arc<OutFile>,
    rel: Vec<u8>,
    meta: stream::Meta,
    size: u64,
    link: u64,
    xattrs: Xattrs,
    hasher: stream::FileHash,
    /// Made in a directory with a default ACL.
    acl: bool,
    /// `--verify`: each DATA record's offset, length and XXH3-128.
    pieces: Option<Vec<Piece>>,
}

/// A symlink or special file made under its temporary name, waiting for its XATTRs.
struct InlineIn {
    dir: Arc<OwnedFd>,
    fresh: bool,
    name: CString,
    temp: CString,
    rel: Vec<u8>,
    meta: stream::Meta,
    link: u64,
    xattrs: Xattrs,
    /// Made in a directory with a default ACL.
    acl: bool,
}

/// An ATTRS record waiting for its XATTRs.
struct AttrsIn {
    dir: Arc<OwnedFd>,
    name: CString,
    meta: stream::Meta,
    xattrs: Xattrs,
    rel: Vec<u8>,
}

/// What XATTR records attach to.
enum Last {
    Nothing,
    Root,
    Dir(u64),
    File,
    Inline(InlineIn),
    Attrs(AttrsIn),
}

/// Why the receive stopped.
enum Stop {
    /// The stream is damaged, breaks a rule or cannot be applied: nothing more is published.
    Stream(String),
    Interrupted(i32),
}

/// What setting attributes and publishing need: shared by the receiving thread and the
/// thread publishing the previous checkpoint's batch.
struct Apply {
    dst: PathBuf,
    root: Arc<OwnedFd>,
    fsync: bool,
    keys: std::collections::hash_map::RandomState,
    is_root_user: bool,
    drop_privileged: bool,
    errors: AtomicU64,
    guard: Guard,
    /// DST's record, written dirty at the start; tokens go in it.
    state: std::sync::Mutex<guard::Record>,
    /// Keep the resume token of each checkpoint in the record.
    tokens: bool,
    /// A full stream received on its own (not incremental, not for a remote mirror:
    /// [`ReceiveConfig::one_way`]): its token stops at the last checkpoint before the first
    /// failure, and is kept after END.
    full: bool,
    /// `--verify`: the files published, to be read back after the final sync.
    verify: Option<std::sync::Mutex<Vec<crate::verify::Item>>>,
    /// `--verify` with syncs: files published after a batch's `syncfs` are read back during
    /// the run, beside the next batches.
    verify_live: Option<crate::verify::Feed>,
}

thread_local! {
    /// Failures reported on this thread: what a batch's publication failed itself, told apart
    /// from the next batch's, received meanwhile on other threads.
    static FAILS_HERE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The work of one verified checkpoint.
struct Batch {
    items: Vec<Pending>,
    /// The hardlink directory's name in DST's root (kept from deletion, removed with the root).
    links: Option<CString>,
    /// The holding directory's name in DST's root (incremental; removed with the root).
    hold: Option<CString>,
    /// Stored once the batch is published.
    token: Option<ResumeToken>,
    /// Entries so far were SKIPPED by the sender (failures are counted in `Apply::errors`).
    skipped: bool,
    /// Entries so far (this batch's included) failed when it was handed over.
    failed: bool,
}

struct Receiver<'a> {
    ap: Arc<Apply>,
    /// The thread publishing the previous batch, if any.
    publishing: Option<std::thread::JoinHandle<Result<(), String>>>,
    dirs: HashMap<u64, OpenDir>,
    next_dir: u64,
    file: Option<FileIn>,
    last: Last,
    pending: Vec<Pending>,
    names_total: usize,
    /// Bytes of directory xattrs held until their publication (see [`XATTR_BYTES_HELD_MAX`]).
    held_xattrs: usize,
    /// Random part of this run's temporary names.
    tag: String,
    counter: u64,
    links_dir: Option<(Arc<OwnedFd>, CString)>,
    /// Writes file data and sets received files' attributes.
    writer: Writer,
    /// Incremental: the holding directory (made at the first RENAME into it).
    hold: Option<(Arc<OwnedFd>, CString)>,
    /// Incremental: what records waiting for publication did to names, per directory.
    over: Overlay,
    /// The stream is incremental: existing entries not named are kept; no claims.
    incremental: bool,
    root_xattrs: Xattrs,
    root_fresh: bool,
    cfg: &'a ReceiveConfig,
    /// Resuming: records before the token's offset were applied by the interrupted run and
    /// are only followed (directories opened, names noted), not applied again.
    replay: Option<ResumeToken>,
    /// The stream's identity, for the tokens written at checkpoints.
    header: StreamHeader,
    skipped: u64,
    counts: Arc<StreamCounts>,
}

fn cname(b: &[u8]) -> CString {
    CString::new(b).expect("the codec refuses names with NUL")
}

/// Open directory `name` in `dir` for use as a parent, never through a symlink.
fn open_dir_beneath(dir: &OwnedFd, name: &CStr) -> Result<OwnedFd, Errno> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    match rustix::fs::openat2(dir, name, flags, Mode::empty(), resolve) {
        Err(Errno::NOSYS) => rustix::fs::openat(dir, name, flags, Mode::empty()),
        r => r,
    }
}

fn is_empty_dir(dir: &OwnedFd) -> Result<bool, Errno> {
    rustix::fs::seek(dir, rustix::fs::SeekFrom::Start(0))?;
    let mut buf = vec![std::mem::MaybeUninit::<u8>::uninit(); 4096];
    let mut it = RawDir::new(dir, &mut buf);
    while let Some(e) = it.next() {
        let e = e?;
        if e.file_name() != c"." && e.file_name() != c".." {
            return Ok(false);
        }
    }
    Ok(true)
}

impl Apply {
    fn shown(&self, rel: &[u8]) -> String {
        crate::diff::full(&self.dst, rel).display().to_string()
    }

    /// A per-entry failure: reported, counted, the run goes on.
    fn fail(&self, rel: &[u8], op: &str, e: impl std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        FAILS_HERE.with(|n| n.set(n.get() + 1));
        eprintln!("ringsync: receive: {}: {op}: {e}", self.shown(rel));
    }

    fn key(&self, name: &[u8]) -> u64 {
        let mut h = self.keys.build_hasher();
        h.write(name);
        h.finish()
    }

    fn privileged_ok(&self) -> bool {
        self.is_root_user && !self.drop_privileged
    }

    fn xattr_wanted(&self, name: &[u8]) -> bool {
        if name == crate::meta::RECORD_XATTR.to_bytes() {
            return false;
        }
        if self.drop_privileged {
            return name.starts_with(b"user.");
        }
        crate::meta::xattr_wanted(
            name,
            crate::meta::Preserve {
                owner: self.is_root_user,
                all_xattrs: self.is_root_user,
            },
        )
    }

    /// Permission bits to apply: without privilege, no setuid/setgid.
    fn perm(&self, m: &stream::Meta) -> u32 {
        let p = m.mode & 0o7777;
        if self.drop_privileged {
            p & !0o6000
        } else {
            p
        }
    }

    /// Owner, xattrs, mode, times on an open file or directory.
    fn apply_fd(&self, fd: &OwnedFd, m: &stream::Meta, xattrs: &Xattrs, prune: bool) -> Result<(), String> {
        if self.privileged_ok() {
            rustix::fs::fchown(
                fd,
                Some(rustix::fs::Uid::from_raw(m.uid)),
                Some(rustix::fs::Gid::from_raw(m.gid)),
            )
            .map_err(|e| format!("chown: {e}"))?;
        }
        if prune {
            self.prune_xattrs(fd, xattrs)?;
        }
        for (n, v) in xattrs {
            if self.xattr_wanted(n.as_bytes()) {
                rustix::fs::fsetxattr(fd, n, v, rustix::fs::XattrFlags::empty())
                    .map_err(|e| format!("setxattr {}: {e}", escape(n.as_bytes())))?;
            }
        }
        rustix::fs::fchmod(fd, Mode::from_raw_mode(self.perm(m))).map_err(|e| format!("chmod: {e}"))?;
        rustix::fs::futimens(fd, &times(m)).map_err(|e| format!("utimens: {e}"))?;
        Ok(())
    }

    /// Remove the xattrs an entry has that the stream does not give it: those of a directory
    /// that existed, or inherited from a parent's default ACL.
    fn prune_xattrs(&self, fd: &OwnedFd, keep: &Xattrs) -> Result<(), String> {
        let list = crate::meta::xattr_names_fd(fd.as_fd()).map_err(|e| format!("listxattr: {e}"))?;
        for n in list {
            if self.xattr_wanted(n.as_bytes()) && !keep.iter().any(|(k, _)| *k == n) {
                rustix::fs::fremovexattr(fd, &n)
                    .map_err(|e| format!("removexattr {}: {e}", escape(n.as_bytes())))?;
            }
        }
        Ok(())
    }

    fn prune_xattrs_at(&self, dir: &OwnedFd, name: &CStr, keep: &Xattrs) -> Result<(), String> {
        let all = crate::meta::Preserve {
            owner: true,
            all_xattrs: true,
        };
        let list = crate::meta::xattrs_at(dir.as_fd(), name, all).map_err(|e| format!("listxattr: {e}"))?;
        let path = crate::meta::proc_path(dir.as_fd(), name);
        for (n, _) in list {
            if self.xattr_wanted(n.as_bytes()) && !keep.iter().any(|(k, _)| *k == n) {
                rustix::fs::lremovexattr(path.as_c_str(), &n)
                    .map_err(|e| format!("removexattr {}: {e}", escape(n.as_bytes())))?;
            }
        }
        Ok(())
    }

    /// Owner, xattrs, mode, times on a symlink or special file by name (never followed).
    fn apply_at(
        &self,
        dir: &OwnedFd,
        name: &CStr,
        m: &stream::Meta,
        xattrs: &Xattrs,
        prune: bool,
    ) -> Result<(), String> {
        if self.privileged_ok() {
            rustix::fs::chownat(
                dir,
                name,
                Some(rustix::fs::Uid::from_raw(m.uid)),
                Some(rustix::fs::Gid::from_raw(m.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| format!("chown: {e}"))?;
        }
        // l*setxattr through /proc/self/fd/DIR/NAME: the directory is the one held, the
        // entry itself is not followed (a symlink gets the xattr, not its target).
        if prune {
            self.prune_xattrs_at(dir, name, xattrs)?;
        }
        let wanted: Vec<_> = xattrs
            .iter()
            .filter(|(n, _)| self.xattr_wanted(n.as_bytes()))
            .collect();
        if !wanted.is_empty() {
            let path = crate::meta::proc_path(dir.as_fd(), name);
            for (n, v) in wanted {
                rustix::fs::lsetxattr(path.as_c_str(), n, v, rustix::fs::XattrFlags::empty())
                    .map_err(|e| format!("setxattr {}: {e}", escape(n.as_bytes())))?;
            }
        }
        if m.mode & libc::S_IFMT != libc::S_IFLNK {
            crate::meta::chmod_nofollow(dir.as_fd(), name, Mode::from_raw_mode(self.perm(m)))
                .map_err(|e| format!("chmod: {e}"))?;
        }
        rustix::fs::utimensat(dir, name, &times(m), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| format!("utimens: {e}"))?;
        Ok(())
    }
}

impl Apply {
    /// Make a batch's staged data durable, then do its work in stream order, then store its
    /// resume token.
    fn publish(&self, batch: Batch) -> Result<(), String> {
        if batch.items.is_empty() && batch.token.is_none() {
            return Ok(());
        }
        let fails_before = FAILS_HERE.with(|n| n.get());
        if self.fsync && !batch.items.is_empty() {
            let synced = crate::failpoint::fail("syncfs", b"").and_then(|()| rustix::fs::syncfs(&*self.root));
            if let Err(e) = synced {
                // Nothing of this batch is published, and what it staged goes.
                for p in batch.items {
                    if let Pending::Place { dir, temp, .. } = p {
                        let _ = remove_tree(&dir, &temp, false);
                    }
                }
                return Err(format!("syncfs {}: {e}", self.dst.display()));
            }
        }
        let mut items = batch.items.into_iter();
        while let Some(p) = items.next() {
            match p {
                Pending::Place {
                    dir,
                    temp,
                    name,
                    fresh,
                    rel,
                    file,
                    check,
                } => {
                    if file.is_some_and(|f| f.failed()) {
                        // Reported when it failed.
                        let _ = rustix::fs::unlinkat(&*dir, &temp, AtFlags::empty());
                        continue;
                    }
                    if let Err(e) = place(&dir, &temp, &name, fresh) {
                        let _ = remove_tree(&dir, &temp, false);
                        if fresh && e == Errno::EXIST {
                            // The stream breaks a rule: nothing more of it is published, and
                            // what it staged goes.
                            for rest in items {
                                if let Pending::Place { dir, temp, .. } = rest {
                                    let _ = remove_tree(&dir, &temp, false);
                                }
                            }
                            return Err(format!("{}: made twice", self.shown(&rel)));
                        }
                        self.fail(&rel, "rename into place", e);
                    } else if let (Some(v), Some((size, pieces))) = (&self.verify, check) {
                        let item = crate::verify::Item {
                            dir,
                            name,
                            path: self.dst.join(std::ffi::OsStr::from_bytes(&rel)),
                            size,
                            pieces,
                        };
                        // Durable already when the batch was synced (above).
                        match (&self.verify_live, self.fsync) {
                            (Some(live), true) => live.push([item]),
                            _ => v.lock().expect("verify poisoned").push(item),
                        }
                    }
                }
                Pending::Move {
                    from,
                    from_name,
                    to,
                    to_name,
                    to_hold,
                    rel,
                } => {
                    let r = if to_hold {
                        rustix::fs::renameat_with(&*from, &from_name, &*to, &to_name, RenameFlags::NOREPLACE)
                    } else {
                        move_over(&from, &from_name, &to, &to_name)
                    };
                    if let Err(e) = r {
                        self.fail(&rel, "rename", e);
                    }
                }
                Pending::Unlink { dir, name, rel } => match remove_tree(&dir, &name, false) {
                    // Gone already: what the stream wants.
                    Ok(()) => {}
                    Err(Errno::NOENT) => {}
                    Err(e) => self.fail(&rel, "delete", e),
                },
                Pending::Attrs {
                    dir,
                    name,
                    meta,
                    xattrs,
                    rel,
                } => {
                    if let Err(e) = self.attrs_at(&dir, &name, &meta, &xattrs) {
                        self.fail(&rel, "set attributes", e);
                    }
                }
                Pending::DirDone {
                    fd,
                    meta,
                    xattrs,
                    names,
                    rel,
                    root,
                } => {
                    if let Some(names) = &names {
                        self.delete_extraneous(&fd, names, &rel, batch.links.as_deref());
                    }
                    if root {
                        if let Some(l) = &batch.links {
                            self.remove_links_dir(l);
                        }
                        // What an incremental stream took away and did not bring back.
                        if let Some(h) = &batch.hold {
                            self.remove_private_dir(h, "remove the holding directory");
                        }
                    }
                    // Pruned: an existing directory's, or inherited from a default ACL.
                    if let Err(e) = self.apply_fd(&fd, &meta, &xattrs, true) {
                        self.fail(&rel, "set directory attributes", e);
                    }
                }
            }
        }
        // This batch or an earlier one had a failure (not the next batch, received meanwhile).
        let failed = batch.skipped || batch.failed || FAILS_HERE.with(|n| n.get()) != fails_before;
        // A full stream's token stays at the last checkpoint before its first failure:
        // resumed from there, everything after it is applied again (a full stream's
        // publications are idempotent), the entries that failed included, so a receive that
        // reached END with failures (ENOSPC) resumes instead of taking the whole stream
        // again. An incremental stream's resumption needs DST to be exactly what its token
        // says: the token moves on, and the failures are noted for the resumed run.
        if let Some(t) = batch.token.filter(|_| self.tokens && !(failed && self.full)) {
            let mut state = self.state.lock().expect("record lock");
            state.resume = Some(t.encode());
            if failed {
                state.incomplete = Some(true);
            }
            // Set when this run stops cleanly (see `stopped`).
            state.stopped = None;
            if let Err(e) = self.guard.write(&state) {
                // Not fatal: a later resume starts from an older token, or cannot.
                eprintln!("ringsync: receive: note the resume token: {e}");
            }
        }
        Ok(())
    }

    fn remove_links_dir(&self, name: &CStr) {
        self.remove_private_dir(name, "remove the hardlink directory");
    }

    fn remove_private_dir(&self, name: &CStr, what: &str) {
        match remove_tree(&self.root, name, true) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => self.fail(name.to_bytes(), what, e),
        }
    }

    /// An existing entry's attributes: a directory's on its descriptor (opened beneath
    /// `dir`), anything else's by name, never followed.
    fn attrs_at(&self, dir: &OwnedFd, name: &CStr, m: &stream::Meta, xattrs: &Xattrs) -> Result<(), String> {
        let st =
            rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| format!("stat: {e}"))?;
        let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        if is_dir != (m.mode & libc::S_IFMT == libc::S_IFDIR) {
            return Err("another type of entry is there".into());
        }
        if is_dir {
            let fd = open_dir_beneath(dir, name).map_err(|e| format!("open: {e}"))?;
            return self.apply_fd(&fd, m, xattrs, true);
        }
        self.apply_at(dir, name, m, xattrs, true)
    }

    /// Delete what a directory that existed before holds and the stream did not make (never
    /// the hardlink directory `links` in the root).
    fn delete_extraneous(&self, fd: &OwnedFd, names: &HashSet<u64>, rel: &[u8], links: Option<&CStr>) {
        let mut extra = Vec::new();
        // From the start: the descriptor may have been read before (the root's emptiness).
        if let Err(e) = rustix::fs::seek(fd, rustix::fs::SeekFrom::Start(0)) {
            self.fail(rel, "read directory", e);
            return;
        }
        let mut buf = vec![std::mem::MaybeUninit::<u8>::uninit(); 32 << 10];
        let mut it = RawDir::new(fd, &mut buf);
        while let Some(e) = it.next() {
            match e {
                Ok(e) => {
                    let n = e.file_name();
                    if n == c"." || n == c".." || names.contains(&self.key(n.to_bytes())) {
                        continue;
                    }
                    if rel.is_empty() && links == Some(n) {
                        continue;
                    }
                    extra.push(n.to_owned());
                }
                Err(e) => {
                    self.fail(rel, "read directory", e);
                    return;
                }
            }
        }
        for n in extra {
            if let Err(e) = remove_tree(fd, &n, false) {
                self.fail(&join(rel, n.as_bytes()), "delete", e);
            }
        }
    }
}

impl Receiver<'_> {
    fn shown(&self, rel: &[u8]) -> String {
        self.ap.shown(rel)
    }

    fn fail(&self, rel: &[u8], op: &str, e: impl std::fmt::Display) {
        self.ap.fail(rel, op, e)
    }

    fn key(&self, name: &[u8]) -> u64 {
        self.ap.key(name)
    }

    fn dir(&self, id: u64) -> Result<&OpenDir, Stop> {
        // The codec checked the id is open; the map agrees unless making it failed.
        let d = self
            .dirs
            .get(&id)
            .ok_or_else(|| Stop::Stream(format!("directory {id} could not be made here")))?;
        if d.ghost && self.replay.is_none() {
            return Err(Stop::Stream(format!(
                "{}: not in DST, though the resumed stream goes on in it",
                self.shown(&d.rel)
            )));
        }
        Ok(d)
    }

    /// Note that the stream makes `name` in directory `id`; a second time is refused.
    fn claim(&mut self, id: u64, name: &[u8]) -> Result<(), Stop> {
        let k = self.key(name);
        let total = self.names_total;
        let d = self.dirs.get_mut(&id).expect("checked by dir()");
        if let Some(set) = &mut d.names {
            if total >= NAMES_MAX {
                return Err(Stop::Stream(format!(
                    "more than {NAMES_MAX} names in the directories open at once (a directory \
                     of more entries cannot be received yet)"
                )));
            }
            if !set.insert(k) {
                let rel = d.rel.clone();
                return Err(Stop::Stream(format!(
                    "'{}' made twice in {}",
                    escape(name),
                    self.shown(&rel)
                )));
            }
            self.names_total += 1;
        }
        Ok(())
    }

    fn queue(&mut self, p: Pending) -> Result<(), Stop> {
        if self.pending.len() >= PENDING_MAX {
            return Err(Stop::Stream(format!(
                "more than {PENDING_MAX} entries without a CHECKPOINT"
            )));
        }
        self.pending.push(p);
        Ok(())
    }

    /// A fresh temporary name in `dir`, created by `make` (which must fail with EEXIST when
    /// the name is taken).
    fn stage<T>(
        &mut self,
        dir: &OwnedFd,
        mut make: impl FnMut(&OwnedFd, &CStr) -> Result<T, Errno>,
    ) -> Result<(CString, T), Errno> {
        loop {
            self.counter += 1;
            let temp = CString::new(format!(".ringsync-rcv.{}.{}", self.tag, self.counter)).expect("no NUL");
            match make(dir, &temp) {
                Ok(t) => return Ok((temp, t)),
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The symlink or special file waiting for XATTRs is complete: apply its attributes and
    /// queue its placement.
    fn finish_last(&mut self) -> Result<(), Stop> {
        let last = std::mem::replace(&mut self.last, Last::Nothing);
        if let Last::Attrs(a) = last {
            return self.queue(Pending::Attrs {
                dir: a.dir,
                name: a.name,
                meta: a.meta,
                xattrs: a.xattrs,
                rel: a.rel,
            });
        }
        if let Last::Inline(i) = last {
            if let Err(e) = self.ap.apply_at(&i.dir, &i.temp, &i.meta, &i.xattrs, i.acl) {
                self.fail(&i.rel, "set attributes", e);
                let _ = rustix::fs::unlinkat(&*i.dir, &i.temp, AtFlags::empty());
                return Ok(());
            }
            if i.link != 0 {
                if let Err(e) = self.remember_link(&i.dir, &i.temp, i.link) {
                    return Err(Stop::Stream(format!(
                        "{}: link for later names: {e}",
                        self.shown(&i.rel)
                    )));
                }
            }
            self.queue(Pending::Place {
                dir: i.dir,
                temp: i.temp,
                name: i.name,
                fresh: i.fresh,
                rel: i.rel,
                file: None,
                check: None,
            })?;
        }
        Ok(())
    }

    /// Apply a record; `at` is its offset in the stream, `seq` its sequence number.
    fn record(&mut self, r: Record, at: u64, seq: u64) -> Result<(), Stop> {
        if let Some(t) = &self.replay {
            if at < t.offset {
                return self.replay_record(r);
            }
            // The first record at the resume offset is its CHECKPOINT (the decoder checked
            // that); its chain must be the one the interrupted run verified.
            let Record::Checkpoint { chain, .. } = &r else {
                return Err(Stop::Stream(
                    "the resumed stream has no CHECKPOINT at the token's offset".into(),
                ));
            };
            if *chain != t.chain || seq != t.seq {
                return Err(Stop::Stream(
                    "the resumed stream is not the interrupted one (its chain hash at the resume \
                     checkpoint differs: the source changed); send a full stream"
                        .into(),
                ));
            }
            self.replay = None;
            return Ok(());
        }
        // XATTRs go with the entry before them (the root's follow ESTIMATE); any other record
        // completes that entry (a CHECKPOINT publishes it: no XATTR may follow one).
        if !matches!(r, Record::Xattr { .. } | Record::Estimate { .. }) {
            self.finish_last()?;
        }
        match r {
            Record::Estimate { bytes, entries } => {
                self.counts.bytes_total.store(bytes, Ordering::Relaxed);
                self.counts.entries_total.store(entries, Ordering::Relaxed);
            }
            Record::Xattr { name, value } => self.add_xattr(name, value, false)?,
            Record::Dir {
                parent,
                name,
                meta: _,
            } => {
                self.dir(parent)?;
                self.claim(parent, &name)?;
                self.next_dir += 1;
                let id = self.next_dir;
                let p = self.dirs.get(&parent).expect("checked");
                let (pfd, fresh_parent, hidden_parent) = (p.fd.clone(), p.fresh, p.hidden);
                let rel = join(&p.rel, &name);
                let n = cname(&name);
                // Incremental: what records before it did to the name decides what it is.
                let (fd, fresh) = match self.over.get(p.key, self.ap.key(&name)) {
                    Some(Over::Incoming(Some(fd))) => (fd.clone(), false),
                    Some(_) => {
                        let (fd, fresh) =
                            self.make_dir(&pfd, &n, fresh_parent, hidden_parent, &rel, false)?;
                        (Arc::new(fd), fresh)
                    }
                    None => {
                        let (fd, fresh) = self.make_dir(&pfd, &n, fresh_parent, hidden_parent, &rel, true)?;
                        (Arc::new(fd), fresh)
                    }
                };
                self.dirs.insert(
                    id,
                    OpenDir {
                        acl: crate::meta::has_default_acl(fd.as_fd()),
                        hidden: fresh,
                        ghost: false,
                        key: dir_key(&fd)
                            .map_err(|e| Stop::Stream(format!("{}: stat: {e}", self.shown(&rel))))?,
                        fd,
                        rel,
                        names: (!self.incremental).then(HashSet::new),
                        xattrs: Vec::new(),
                        fresh,
                    },
                );
                self.counts.entries.fetch_add(1, Ordering::Relaxed);
                self.last = Last::Dir(id);
            }
            Record::DirEnd { dir, meta } => {
                self.dir(dir)?;
                let d = self
                    .dirs
                    .remove(&dir)
                    .ok_or_else(|| Stop::Stream(format!("directory {dir} could not be made here")))?;
                let root = dir == 0;
                let xattrs = if root {
                    std::mem::take(&mut self.root_xattrs)
                } else {
                    d.xattrs
                };
                if let Some(n) = &d.names {
                    self.names_total -= n.len();
                }
                self.queue(Pending::DirDone {
                    fd: d.fd,
                    meta,
                    xattrs,
                    names: if d.fresh { None } else { d.names },
                    rel: d.rel,
                    root,
                })?;
                self.last = Last::Nothing;
            }
            Record::File {
                parent,
                name,
                meta,
                size,
                link,
            } => {
                self.dir(parent)?;
                self.claim(parent, &name)?;
                let p = self.dirs.get(&parent).expect("checked");
                let (pfd, fresh, rel, acl) = (p.fd.clone(), p.fresh, join(&p.rel, &name), p.acl);
                let created = self.stage(&pfd, |d, t| {
                    rustix::fs::openat(
                        d,
                        t,
                        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o600),
                    )
                });
                let (temp, fd) = match created {
                    Ok(x) => {
                        crate::failpoint::opened(std::os::fd::AsRawFd::as_raw_fd(&x.1), &name);
                        x
                    }
                    Err(e) => {
                        return Err(Stop::Stream(format!(
                            "{}: create a temporary file: {e}",
                            self.shown(&rel)
                        )))
                    }
                };
                // Created empty: the writes grow it, and the writer sets the size last
                // (`OutFile::trim`). Written within a size set first, btrfs looks up its extent
                // maps for every buffered write (9% of a receive's time in a profile).
                self.file = Some(FileIn {
                    dir: pfd,
                    fresh,
                    name: cname(&name),
                    temp,
                    out: Arc::new(OutFile::new(fd, rel.clone(), size, self.writer.lane())),
                    rel,
                    meta,
                    size,
                    link,
                    xattrs: Vec::new(),
                    hasher: stream::FileHash::new(),
                    acl,
                    pieces: self.ap.verify.is_some().then(Vec::new),
                });
                self.last = Last::File;
            }
            Record::Data { offset, data } => {
                // Only a resumed stream's elided DATA comes as a record (and is replayed).
                let mut b = AlignedBuf::default();
                b.set_len(data.len());
                b.copy_from_slice(&data);
                self.data(offset, b)?
            }
            Record::FileEnd { hash } => self.file_end(hash)?,
            Record::Symlink {
                parent,
                name,
                meta,
                link,
                target,
            } => {
                let t = cname(&target);
                self.inline(parent, name, meta, link, |d, n| {
                    rustix::fs::symlinkat(t.as_c_str(), d, n)
                })?;
            }
            Record::Special {
                parent,
                name,
                meta,
                link,
            } => {
                let kind = meta.mode & libc::S_IFMT;
                let device = kind == libc::S_IFCHR || kind == libc::S_IFBLK;
                if device && !self.ap.privileged_ok() {
                    self.dir(parent)?;
                    self.claim(parent, &name)?;
                    let rel = join(&self.dir(parent)?.rel, &name);
                    let why = if self.cfg.drop_privileged {
                        "--drop-privileged"
                    } else {
                        "not running as root"
                    };
                    self.fail(&rel, "mknod", format!("device not made ({why})"));
                    return Ok(());
                }
                let ftype = FileType::from_raw_mode(kind);
                let dev = meta.rdev;
                self.inline(parent, name, meta, link, |d, n| {
                    rustix::fs::mknodat(d, n, ftype, Mode::from_raw_mode(0o600), dev)
                })?;
            }
            Record::Link { parent, name, link } => {
                self.dir(parent)?;
                self.claim(parent, &name)?;
                let p = self.dirs.get(&parent).expect("checked");
                let (pfd, fresh, rel) = (p.fd.clone(), p.fresh, join(&p.rel, &name));
                let id = CString::new(link.to_string()).expect("digits");
                let Some((links, _)) = &self.links_dir else {
                    self.fail(&rel, "link", "its first name could not be received");
                    return Ok(());
                };
                let links = links.clone();
                match self.stage(&pfd, |d, t| {
                    rustix::fs::linkat(&links, id.as_c_str(), d, t, AtFlags::empty())
                }) {
                    Ok((temp, ())) => self.queue(Pending::Place {
                        dir: pfd,
                        temp,
                        name: cname(&name),
                        fresh,
                        rel,
                        file: None,
                        check: None,
                    })?,
                    Err(Errno::NOENT) => self.fail(&rel, "link", "its first name could not be received"),
                    Err(e) => self.fail(&rel, "link", e),
                }
                self.counts.entries.fetch_add(1, Ordering::Relaxed);
            }
            Record::Skipped { parent, name, reason } => {
                self.dir(parent)?;
                let rel = join(&self.dir(parent)?.rel, &name);
                // Right after its FILE_END: the staged copy of a file that changed while the
                // sender read it is dropped, never published.
                if let Some(Pending::Place { name: n, dir, .. }) = self.pending.last() {
                    if n.as_bytes() == name.as_slice() && Arc::ptr_eq(dir, &self.dirs[&parent].fd) {
                        if let Some(Pending::Place { dir, temp, .. }) = self.pending.pop() {
                            let _ = rustix::fs::unlinkat(&*dir, &temp, AtFlags::empty());
                        }
                    } else {
                        self.claim(parent, &name)?;
                    }
                } else {
                    self.claim(parent, &name)?;
                }
                self.skipped += 1;
                eprintln!(
                    "ringsync: receive: {}: not sent ({}); what DST has there is kept",
                    self.shown(&rel),
                    escape(&reason)
                );
            }
            Record::Checkpoint { chain, .. } => {
                let token = self.token(at, seq, chain);
                self.publish(token, false)?;
            }
            Record::End { .. } => self.publish(None, true)?,
            Record::Attrs { parent, name, meta } => {
                let p = self.dir(parent)?;
                self.last = Last::Attrs(AttrsIn {
                    dir: p.fd.clone(),
                    rel: join(&p.rel, &name),
                    name: cname(&name),
                    meta,
                    xattrs: Vec::new(),
                });
                self.counts.entries.fetch_add(1, Ordering::Relaxed);
            }
            Record::Unlink { parent, name } => {
                let p = self.dir(parent)?;
                let (dir, key, rel) = (p.fd.clone(), p.key, join(&p.rel, &name));
                self.set_over(key, &name, Over::Gone);
                self.queue(Pending::Unlink {
                    dir,
                    name: cname(&name),
                    rel,
                })?;
            }
            Record::Rename {
                from_dir,
                from,
                to_dir,
                to,
            } => self.rename(from_dir, from, to_dir, to)?,
        }
        Ok(())
    }

    /// Note what a record waiting for publication does to `name` in the directory `key`.
    fn set_over(&mut self, key: (u64, u64), name: &[u8], o: Over) {
        let k = self.key(name);
        self.over.set(key, k, o);
    }

    /// The holding directory (made in DST's root at its first use).
    /// The holding directory's name: after the stream, so that a resumed run finds what the
    /// interrupted one took there.
    fn hold_name(&self) -> CString {
        CString::new(format!(".ringsync-rcv.hold.{}", hex(&self.header.stream_id))).expect("no NUL")
    }

    fn hold(&mut self) -> Result<(Arc<OwnedFd>, (u64, u64)), Stop> {
        if self.hold.is_none() {
            let name = self.hold_name();
            let root = self.ap.root.clone();
            let fail = |me: &Self, e: Errno| {
                Stop::Stream(format!("make the holding directory in {}: {e}", me.shown(b"")))
            };
            match rustix::fs::mkdirat(&*root, &name, Mode::from_raw_mode(0o700)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(fail(self, e)),
            }
            let fd = open_dir_beneath(&root, &name).map_err(|e| fail(self, e))?;
            self.hold = Some((Arc::new(fd), name));
        }
        let fd = self.hold.as_ref().expect("made").0.clone();
        let key = dir_key(&fd).map_err(|e| Stop::Stream(format!("stat the holding directory: {e}")))?;
        Ok((fd, key))
    }

    /// RENAME: take an entry to the holding directory, or bring one back to its new name
    /// (the rules checked that exactly one side is the holding directory).
    fn rename(&mut self, from_dir: u64, from: Vec<u8>, to_dir: u64, to: Vec<u8>) -> Result<(), Stop> {
        let (hold, hold_key) = self.hold()?;
        if to_dir == stream::HOLD_DIR {
            let p = self.dir(from_dir)?;
            let (pfd, key, rel) = (p.fd.clone(), p.key, join(&p.rel, &from));
            // The directory it is, for a DIR of its new name later (nothing is moved yet).
            // A name in the holding directory holds one entry at a time.
            let taken = match self.over.get(hold_key, self.ap.key(&to)) {
                Some(Over::Incoming(_)) => true,
                Some(Over::Gone) => false,
                None => rustix::fs::statat(&*hold, cname(&to), AtFlags::SYMLINK_NOFOLLOW).is_ok(),
            };
            if taken {
                return Err(Stop::Stream(format!(
                    "RENAME of {} to '{}' in the holding directory, which holds another entry \
                     under that name",
                    self.shown(&rel),
                    escape(&to)
                )));
            }
            let held = match self.over.get(key, self.ap.key(&from)) {
                Some(Over::Incoming(fd)) => fd.clone(),
                Some(Over::Gone) => None,
                None => held_dir(&pfd, &from)
                    .map_err(|e| Stop::Stream(format!("{}: open: {e}", self.shown(&rel))))?,
            };
            self.set_over(key, &from, Over::Gone);
            self.set_over(hold_key, &to, Over::Incoming(held));
            self.queue(Pending::Move {
                from: pfd,
                from_name: cname(&from),
                to: hold,
                to_name: cname(&to),
                to_hold: true,
                rel,
            })
        } else {
            let p = self.dir(to_dir)?;
            let (pfd, key, rel) = (p.fd.clone(), p.key, join(&p.rel, &to));
            let held = match self.over.get(hold_key, self.ap.key(&from)) {
                Some(Over::Incoming(fd)) => fd.clone(),
                Some(Over::Gone) => None,
                // Taken there by a batch already published.
                None => held_dir(&hold, &from).map_err(|e| {
                    Stop::Stream(format!("holding directory entry '{}': open: {e}", escape(&from)))
                })?,
            };
            self.set_over(hold_key, &from, Over::Gone);
            self.set_over(key, &to, Over::Incoming(held));
            self.counts.entries.fetch_add(1, Ordering::Relaxed);
            self.queue(Pending::Move {
                from: hold,
                from_name: cname(&from),
                to: pfd,
                to_name: cname(&to),
                to_hold: false,
                rel,
            })
        }
    }

    /// A record before the resume offset: the interrupted run applied it. Directories are
    /// opened (their names and xattrs noted: they end after the offset), names are noted so
    /// extraneous entries can be told apart, hardlink ids are pointed at the published names.
    fn replay_record(&mut self, r: Record) -> Result<(), Stop> {
        match r {
            // Directories' xattrs are set at their DIR_END, which comes after the offset.
            Record::Xattr { name, value } => return self.add_xattr(name, value, true),
            Record::Estimate { .. } | Record::Checkpoint { .. } => return Ok(()),
            Record::Dir { parent, name, .. } => {
                self.dir(parent)?;
                self.claim(parent, &name)?;
                self.next_dir += 1;
                let p = &self.dirs[&parent];
                let (pfd, rel, pghost) = (p.fd.clone(), join(&p.rel, &name), p.ghost);
                if self.incremental {
                    return self.replay_incremental_dir(pfd, pghost, &name, rel);
                }
                let (fd, _) = self.make_dir(&pfd, &cname(&name), false, false, &rel, true)?;
                self.dirs.insert(
                    self.next_dir,
                    OpenDir {
                        acl: crate::meta::has_default_acl(fd.as_fd()),
                        hidden: false,
                        ghost: false,
                        key: dir_key(&fd)
                            .map_err(|e| Stop::Stream(format!("{}: stat: {e}", self.shown(&rel))))?,
                        fd: Arc::new(fd),
                        rel,
                        names: Some(HashSet::new()),
                        xattrs: Vec::new(),
                        fresh: false,
                    },
                );
                self.last = Last::Dir(self.next_dir);
                return Ok(());
            }
            Record::DirEnd { dir, .. } => {
                if let Some(d) = self.dirs.remove(&dir) {
                    if let Some(n) = &d.names {
                        self.names_total -= n.len();
                    }
                }
            }
            Record::File {
                parent, name, link, ..
            }
            | Record::Symlink {
                parent, name, link, ..
            }
            | Record::Special {
                parent, name, link, ..
            } => {
                self.dir(parent)?;
                self.claim(parent, &name)?;
                if link != 0 && !self.dirs[&parent].ghost {
                    let p = &self.dirs[&parent];
                    let (pfd, rel) = (p.fd.clone(), join(&p.rel, &name));
                    // Its later names will fail and be reported if it is not there.
                    if let Err(e) = self.remember_link(&pfd, &cname(&name), link) {
                        if e != Errno::NOENT {
                            self.fail(&rel, "link for later names", e);
                        }
                    }
                }
            }
            Record::Skipped { parent, name, .. } => {
                self.dir(parent)?;
                self.claim(parent, &name)?;
                // Not applied then, not now: the run cannot end clean.
                self.skipped += 1;
            }
            Record::Link { parent, name, .. } => {
                self.dir(parent)?;
                self.claim(parent, &name)?;
            }
            // Applied by the interrupted run (the rules allow the last three in incremental
            // streams only); an ATTRS's XATTRs go with it.
            Record::Data { .. }
            | Record::FileEnd { .. }
            | Record::Attrs { .. }
            | Record::Rename { .. }
            | Record::Unlink { .. } => {}
            Record::End { .. } => {
                return Err(Stop::Stream("unexpected record before the resume offset".into()))
            }
        }
        self.last = Last::Nothing;
        Ok(())
    }

    /// Replaying an incremental stream, DIR: what the published part did is in the tree; a
    /// directory it took away or removed is a ghost, never made again.
    fn replay_incremental_dir(
        &mut self,
        pfd: Arc<OwnedFd>,
        pghost: bool,
        name: &[u8],
        rel: Vec<u8>,
    ) -> Result<(), Stop> {
        let fd = match pghost {
            true => None,
            false => match open_dir_beneath(&pfd, &cname(name)) {
                Ok(fd) => Some(Arc::new(fd)),
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP | Errno::XDEV) => None,
                Err(e) => return Err(Stop::Stream(format!("{}: open: {e}", self.shown(&rel)))),
            },
        };
        let ghost = fd.is_none();
        let key = match &fd {
            Some(fd) => dir_key(fd).map_err(|e| Stop::Stream(format!("{}: stat: {e}", self.shown(&rel))))?,
            None => (u64::MAX, self.next_dir),
        };
        self.dirs.insert(
            self.next_dir,
            OpenDir {
                acl: false,
                hidden: false,
                // A ghost's descriptor is never used (see `dir`).
                fd: fd.unwrap_or_else(|| self.ap.root.clone()),
                rel,
                names: None,
                xattrs: Vec::new(),
                fresh: false,
                key,
                ghost,
            },
        );
        self.last = Last::Dir(self.next_dir);
        Ok(())
    }

    /// Keep an XATTR for the entry it belongs to (when replaying, only a directory's or the
    /// root's: they are set at DIR_END). Bounded per entry, and for directories, whose xattrs
    /// wait for their DIR_END's publication, in all.
    fn add_xattr(&mut self, name: Vec<u8>, value: Vec<u8>, replay: bool) -> Result<(), Stop> {
        // Held until their publication: directories' and ATTRS'.
        let held = matches!(self.last, Last::Root | Last::Dir(_) | Last::Attrs(_));
        let list = match &mut self.last {
            Last::Root => &mut self.root_xattrs,
            Last::Dir(id) => &mut self.dirs.get_mut(id).expect("open").xattrs,
            _ if replay => return Ok(()),
            Last::File => &mut self.file.as_mut().expect("open").xattrs,
            Last::Inline(i) => &mut i.xattrs,
            Last::Attrs(a) => &mut a.xattrs,
            // Those of an entry that was not made (a failure already reported).
            Last::Nothing => return Ok(()),
        };
        let n = name.len() + value.len();
        let bytes: usize = list.iter().map(|(n, v)| n.as_bytes().len() + v.len()).sum();
        if bytes + n > XATTR_BYTES_PER_ENTRY_MAX {
            return Err(Stop::Stream(format!(
                "more than {} MiB of xattrs for one entry",
                XATTR_BYTES_PER_ENTRY_MAX >> 20
            )));
        }
        list.push((cname(&name), value));
        if held {
            self.held_xattrs += n;
            if self.held_xattrs > XATTR_BYTES_HELD_MAX {
                return Err(Stop::Stream(format!(
                    "more than {} MiB of directory xattrs waiting for their checkpoint",
                    XATTR_BYTES_HELD_MAX >> 20
                )));
            }
        }
        Ok(())
    }

    /// The resume token of the CHECKPOINT at `at`, stored once its batch is published (only
    /// between files: a token never points inside one).
    fn token(&self, at: u64, seq: u64, chain: [u8; 32]) -> Option<ResumeToken> {
        self.file.is_none().then_some(ResumeToken {
            stream_id: self.header.stream_id,
            target_id: self.header.target_id,
            created_s: self.header.created_s,
            offset: at,
            seq,
            chain,
        })
    }

    /// Directory `name` in `parent` for the stream's entries: the one there, if `parent`
    /// existed before and it is a directory (never through a symlink); else a new one. Inside
    /// a directory not yet published (`hidden`) the new one gets its name at once: nothing
    /// can see it yet. Elsewhere it is made under a temporary name and placed at the next
    /// verified checkpoint, replacing what had that name only then. Returns the directory
    /// and whether it is new (and so hidden).
    fn make_dir(
        &mut self,
        parent: &Arc<OwnedFd>,
        name: &CStr,
        parent_fresh: bool,
        parent_hidden: bool,
        rel: &[u8],
        open_existing: bool,
    ) -> Result<(OwnedFd, bool), Stop> {
        let fail = |me: &Self, e: Errno| Stop::Stream(format!("{}: make directory: {e}", me.shown(rel)));
        if parent_hidden {
            return match rustix::fs::mkdirat(&**parent, name, Mode::from_raw_mode(0o700)) {
                Ok(()) => Ok((open_dir_beneath(parent, name).map_err(|e| fail(self, e))?, true)),
                Err(Errno::EXIST) => Err(Stop::Stream(format!(
                    "'{}' made twice in {}",
                    escape(name.to_bytes()),
                    self.shown(&p_rel(rel))
                ))),
                Err(e) => Err(fail(self, e)),
            };
        }
        if !parent_fresh && open_existing {
            match open_dir_beneath(parent, name) {
                Ok(fd) => {
                    if !self.ap.is_root_user {
                        // Entries go in before its own mode is set (at its DIR_END).
                        let m = rustix::fs::fstat(&fd).map_err(|e| fail(self, e))?.st_mode & 0o7777;
                        if m & 0o700 != 0o700 {
                            rustix::fs::fchmod(&fd, Mode::from_raw_mode(m | 0o700))
                                .map_err(|e| fail(self, e))?;
                        }
                    }
                    return Ok((fd, false));
                }
                // Missing, a symlink (ELOOP, or EXDEV under RESOLVE_NO_SYMLINKS) or not a
                // directory: a new one, staged; what is there now stays until the checkpoint.
                Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR | Errno::XDEV) => {}
                Err(e) => return Err(fail(self, e)),
            }
        }
        let (temp, fd) = self
            .stage(parent, |d, t| {
                rustix::fs::mkdirat(d, t, Mode::from_raw_mode(0o700))?;
                open_dir_beneath(d, t)
            })
            .map_err(|e| fail(self, e))?;
        self.queue(Pending::Place {
            dir: parent.clone(),
            temp,
            name: name.to_owned(),
            // In a new directory the name must be new (a second DIR of it is refused then).
            fresh: parent_fresh,
            rel: rel.to_vec(),
            file: None,
            check: None,
        })?;
        Ok((fd, true))
    }

    /// Make a symlink or special file under a temporary name; attributes once its XATTRs came.
    fn inline(
        &mut self,
        parent: u64,
        name: Vec<u8>,
        meta: stream::Meta,
        link: u64,
        make: impl Fn(&OwnedFd, &CStr) -> Result<(), Errno>,
    ) -> Result<(), Stop> {
        self.dir(parent)?;
        self.claim(parent, &name)?;
        let p = self.dirs.get(&parent).expect("checked");
        let (pfd, fresh, rel, acl) = (p.fd.clone(), p.fresh, join(&p.rel, &name), p.acl);
        self.counts.entries.fetch_add(1, Ordering::Relaxed);
        match self.stage(&pfd, |d, t| make(d, t)) {
            Ok((temp, ())) => {
                self.last = Last::Inline(InlineIn {
                    dir: pfd,
                    fresh,
                    name: cname(&name),
                    temp,
                    rel,
                    meta,
                    link,
                    xattrs: Vec::new(),
                    acl,
                });
            }
            Err(e) => self.fail(&rel, "create", e),
        }
        Ok(())
    }

    /// A DATA record read into a buffer of its own.
    fn data_item(&mut self, offset: u64, data: AlignedBuf, at: u64, seq: u64) -> Result<(), Stop> {
        if self.replay.is_some() {
            return self.record(
                Record::Data {
                    offset,
                    data: Vec::new(),
                },
                at,
                seq,
            );
        }
        self.finish_last()?;
        self.data(offset, data)
    }

    fn data(&mut self, offset: u64, data: AlignedBuf) -> Result<(), Stop> {
        let Some(f) = self.file.as_mut() else {
            return Err(Stop::Stream("DATA for a file this receiver did not begin".into()));
        };
        f.hasher.data(offset, &data);
        if let Some(p) = &mut f.pieces {
            p.push(Piece::of(offset, &data));
        }
        self.counts.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        self.writer.write(&f.out, offset, data)
    }

    fn file_end(&mut self, hash: [u8; 32]) -> Result<(), Stop> {
        let Some(mut f) = self.file.take() else {
            return Err(Stop::Stream(
                "FILE_END for a file this receiver did not begin".into(),
            ));
        };
        self.counts.entries.fetch_add(1, Ordering::Relaxed);
        let (hasher, size) = (std::mem::take(&mut f.hasher), f.size);
        if hasher.finish(size) != hash {
            let _ = rustix::fs::unlinkat(&*f.dir, &f.temp, AtFlags::empty());
            return Err(Stop::Stream(format!(
                "{}: content hash mismatch (the data received is not what was sent)",
                self.shown(&f.rel)
            )));
        }
        let FileIn {
            dir,
            fresh,
            name,
            temp,
            rel,
            out,
            meta,
            xattrs,
            acl,
            link,
            pieces,
            ..
        } = f;
        self.writer.finish(&out, Finish { meta, xattrs, acl })?;
        if link != 0 {
            // Later LINK records need the whole file: wait for it (hardlinked files only).
            self.writer.flush()?;
            if out.failed() {
                let _ = rustix::fs::unlinkat(&*dir, &temp, AtFlags::empty());
                return Ok(());
            }
            if let Err(e) = self.remember_link(&dir, &temp, link) {
                let _ = rustix::fs::unlinkat(&*dir, &temp, AtFlags::empty());
                return Err(Stop::Stream(format!(
                    "{}: link for later names: {e}",
                    self.shown(&rel)
                )));
            }
        }
        self.queue(Pending::Place {
            dir,
            temp,
            name,
            fresh,
            rel,
            file: Some(out),
            check: pieces.map(|p| (size, p)),
        })
    }

    /// Keep a name for a file later LINK records refer to, in a private directory in DST.
    fn remember_link(&mut self, dir: &OwnedFd, name: &CStr, link: u64) -> Result<(), Errno> {
        self.links_dir()?;
        let (links, _) = self.links_dir.as_ref().expect("made");
        let id = CString::new(link.to_string()).expect("digits");
        rustix::fs::linkat(dir, name, links, id.as_c_str(), AtFlags::empty())
    }

    /// The private directory in DST's root that holds a name per hardlink id.
    fn links_dir(&mut self) -> Result<(), Errno> {
        if self.links_dir.is_none() {
            let root = self.ap.root.clone();
            let (name, fd) = self.stage(&root, |d, t| {
                rustix::fs::mkdirat(d, t, Mode::from_raw_mode(0o700))?;
                open_dir_beneath(d, t)
            })?;
            self.links_dir = Some((Arc::new(fd), name));
        }
        Ok(())
    }

    /// Wait for the previous batch's publication.
    fn published(&mut self) -> Result<(), Stop> {
        match self.publishing.take().map(|h| h.join()) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(Stop::Stream(e)),
            Some(Err(_)) => Err(Stop::Stream("the publishing thread failed".into())),
        }
    }

    /// Hand what came since the last checkpoint to a thread that makes it durable and puts it
    /// in place, while this one receives the next batch (one batch at a time); `wait`: do it
    /// now (END).
    fn publish(&mut self, token: Option<ResumeToken>, wait: bool) -> Result<(), Stop> {
        // Every file of the batch written, its attributes set, its failure known.
        self.writer.flush()?;
        self.published()?;
        // The batch before is published: the tree says what its records did.
        self.over.rotate();
        // What is handed over now becomes visible: directories made in the open ones from
        // now on are staged.
        for d in self.dirs.values_mut() {
            d.hidden = false;
        }
        for p in &self.pending {
            if let Pending::DirDone { xattrs, .. } | Pending::Attrs { xattrs, .. } = p {
                let n: usize = xattrs.iter().map(|(n, v)| n.as_bytes().len() + v.len()).sum();
                self.held_xattrs = self.held_xattrs.saturating_sub(n);
            }
        }
        let batch = Batch {
            items: std::mem::take(&mut self.pending),
            links: self.links_dir.as_ref().map(|(_, n)| n.clone()),
            // A resumed run may not have opened it: what the interrupted one made goes too.
            hold: self.incremental.then(|| self.hold_name()),
            token,
            skipped: self.skipped > 0,
            // Its files are written and the batch before is published: what failed so far.
            failed: self.ap.errors.load(Ordering::Relaxed) > 0,
        };
        let ap = self.ap.clone();
        if wait {
            return ap.publish(batch).map_err(Stop::Stream);
        }
        let h = std::thread::Builder::new()
            .name("ringsync-publish".into())
            .spawn(move || ap.publish(batch))
            .map_err(|e| Stop::Stream(format!("start a publishing thread: {e}")))?;
        self.publishing = Some(h);
        Ok(())
    }

    /// Remove what was staged and not published (the run stopped).
    /// Returns whether what was handed over for publication was published in full (else DST
    /// is not exactly what the last token says).
    fn discard(&mut self) -> bool {
        // What the last verified checkpoint handed over is published (its token stored).
        let mut whole = true;
        // Nothing is written into what is removed below after it is gone.
        self.writer.stop();
        if let Err(Stop::Stream(e)) = self.published() {
            eprintln!("ringsync: receive: {e}");
            whole = false;
        }
        if let Some(f) = self.file.take() {
            let _ = rustix::fs::unlinkat(&*f.dir, &f.temp, AtFlags::empty());
        }
        if let Last::Inline(i) = std::mem::replace(&mut self.last, Last::Nothing) {
            let _ = rustix::fs::unlinkat(&*i.dir, &i.temp, AtFlags::empty());
        }
        for p in std::mem::take(&mut self.pending) {
            if let Pending::Place { dir, temp, .. } = p {
                // A staged directory goes with what was staged in it.
                let _ = remove_tree(&dir, &temp, false);
            }
        }
        if let Some((fd, name)) = self.links_dir.take() {
            drop(fd);
            self.ap.remove_links_dir(&name);
        }
        // What an unfinished incremental stream took away and did not bring back waits for
        // its resumption; without a token to resume from it goes (DST stays dirty: the next
        // full stream or mirror puts it back).
        if let Some((fd, name)) = self.hold.take() {
            drop(fd);
            self.over.clear();
            if self.ap.state.lock().expect("record lock").resume.is_none() {
                self.ap.remove_private_dir(&name, "remove the holding directory");
            }
        }
        whole
    }
}

/// A directory's device and inode.
fn dir_key(fd: &OwnedFd) -> Result<(u64, u64), Errno> {
    let st = rustix::fs::fstat(fd)?;
    Ok((st.st_dev, st.st_ino))
}

/// The directory `name` in `dir` is, for a DIR of the name it is moved to (`None`: not a
/// directory, or not there: its move fails and is reported).
fn held_dir(dir: &OwnedFd, name: &[u8]) -> Result<Option<Arc<OwnedFd>>, Errno> {
    match open_dir_beneath(dir, &cname(name)) {
        Ok(fd) => Ok(Some(Arc::new(fd))),
        Err(Errno::NOTDIR | Errno::LOOP | Errno::XDEV | Errno::NOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn p_rel(rel: &[u8]) -> Vec<u8> {
    crate::diff::split(rel).0.to_vec()
}

fn times(m: &stream::Meta) -> rustix::fs::Timestamps {
    let ts = |(s, ns): (i64, u32)| rustix::fs::Timespec {
        tv_sec: s,
        tv_nsec: ns as _,
    };
    rustix::fs::Timestamps {
        last_access: ts(m.atime),
        last_modification: ts(m.mtime),
    }
}

/// Rename a staged entry to its final name. In a directory this run made, the name must be
/// new; elsewhere an entry there is replaced (a directory there is removed first).
fn place(dir: &OwnedFd, temp: &CStr, name: &CStr, fresh: bool) -> Result<(), Errno> {
    crate::failpoint::fail("rename", name.to_bytes())?;
    if fresh {
        return rustix::fs::renameat_with(dir, temp, dir, name, RenameFlags::NOREPLACE);
    }
    match rustix::fs::renameat(dir, temp, dir, name) {
        Err(Errno::ISDIR | Errno::NOTEMPTY | Errno::EXIST | Errno::NOTDIR) => {
            remove_tree(dir, name, false)?;
            rustix::fs::renameat(dir, temp, dir, name)
        }
        r => r,
    }
}

/// Move an entry out of the holding directory to its new name, replacing what is there (a
/// directory there is removed first).
fn move_over(from: &OwnedFd, from_name: &CStr, to: &OwnedFd, to_name: &CStr) -> Result<(), Errno> {
    match rustix::fs::renameat(from, from_name, to, to_name) {
        Err(Errno::ISDIR | Errno::NOTEMPTY | Errno::EXIST | Errno::NOTDIR) => {
            remove_tree(to, to_name, false)?;
            rustix::fs::renameat(from, from_name, to, to_name)
        }
        r => r,
    }
}

use crate::stream::hex;

/// Create DST if missing (its parent must exist), as copy does.
fn make_dst(dst: &Path) -> Result<PathBuf, String> {
    match std::fs::create_dir(dst) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("create {}: {e}", dst.display())),
    }
    let canon = std::fs::canonicalize(dst).map_err(|e| format!("{}: {e}", dst.display()))?;
    if !canon.is_dir() {
        return Err(format!("{}: not a directory", dst.display()));
    }
    Ok(canon)
}

/// Run `ringsync receive`; returns the exit status.
pub fn receive(cfg: &ReceiveConfig) -> i32 {
    let input: Box<dyn Read> = match &cfg.input {
        Some(p) => match std::fs::File::open(p) {
            Ok(f) => Box::new(f),
            Err(e) => {
                eprintln!("ringsync: receive: open {}: {e}", p.display());
                return exit::FATAL;
            }
        },
        None => {
            if std::io::stdin().is_terminal() {
                eprintln!("ringsync: receive: standard input is a terminal, not a stream; pipe one in (ringsync send SRC | ringsync receive DST) or use -i FILE");
                return exit::USAGE;
            }
            crate::stream_io::raise_pipe(std::io::stdin().as_fd());
            Box::new(std::io::stdin().lock())
        }
    };
    let _ = crate::signals::install(|_| {});
    apply_stream(std::io::BufReader::with_capacity(READ_BUF_BYTES, input), cfg)
}

/// Bytes read from the stream at a time (records are read out of this buffer).
const READ_BUF_BYTES: usize = 1 << 20;

/// Apply the stream `input` to `cfg.dst` (what `receive` does once its input is open; the
/// receive fuzz target calls it directly). Returns the exit status.
pub fn apply_stream(input: impl Read, cfg: &ReceiveConfig) -> i32 {
    match lock_dst(&cfg.dst) {
        Ok((dst, guard)) => apply_locked(input, cfg, &dst, guard, None, None),
        Err(code) => code,
    }
}

/// Make DST where it is missing and lock it (`receive`'s messages; the exit status when that
/// fails).
pub fn lock_dst(dst: &Path) -> Result<(PathBuf, Guard), i32> {
    let dst = match make_dst(dst) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("ringsync: receive: {e}");
            return Err(exit::FATAL);
        }
    };
    match Guard::lock(&dst) {
        Ok(g) => Ok((dst, g)),
        Err(LockError::Busy) => {
            eprintln!(
                "ringsync: receive: {} is busy: another mirror or receive runs into it",
                dst.display()
            );
            Err(exit::BUSY)
        }
        Err(LockError::Other(e)) => {
            eprintln!("ringsync: receive: {e}");
            Err(exit::FATAL)
        }
    }
}

/// The listing of DST a remote mirror's receiving end made under its lock.
#[derive(Clone, Copy)]
pub struct Listed {
    pub id: [u8; 16],
    /// Note DST's own state in its record at the end (`--prev`: a later run may then send an
    /// incremental stream instead of listing DST); a walk of DST, skipped otherwise.
    pub state: bool,
}

/// Apply a stream to `dst`, locked by `guard`. `listed`: the listing of DST this process made
/// under the same lock (a remote mirror): an incremental stream must have been made against
/// it, and no resume token is kept (a later run lists DST again instead).
/// `counts`: where to count (file bytes and entries applied), for a caller's summary.
pub fn apply_locked(
    input: impl Read,
    cfg: &ReceiveConfig,
    dst: &Path,
    guard: Guard,
    listed: Option<Listed>,
    counts: Option<Arc<StreamCounts>>,
) -> i32 {
    let dst = dst.to_path_buf();
    crate::engine::raise_nofile_limit();
    // Nothing is written to DST before the stream header checked out.
    let mut reader = match StreamReader::new(input, PAYLOAD_CAP) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ringsync: receive: {}", describe(&e));
            return exit::FATAL;
        }
    };
    let header: StreamHeader = reader.decoder().stream_header().clone();
    let incremental = header.required & stream::FEATURE_INCREMENTAL != 0;
    let root = match guard.root().try_clone() {
        Ok(fd) => Arc::new(fd),
        Err(e) => {
            eprintln!("ringsync: receive: {}: {e}", dst.display());
            return exit::FATAL;
        }
    };
    let mut record = guard.read().ok().flatten().unwrap_or_default();
    if incremental {
        let checked = match listed.map(|l| l.id) {
            Some(id) if header.required & stream::FEATURE_RESUMED != 0 => Err(format!(
                "a stream made against a listing is not resumed (the sender lists DST again), and this one resumes; the listing was {}",
                hex(&id)
            )),
            Some(id) if header.base_id != id => Err(format!(
                "it was made against the listing {}, and DST's listing is {}",
                hex(&header.base_id),
                hex(&id)
            )),
            Some(_) => Ok(()),
            None => check_base(&header, &record, cfg.check_dst_state.then_some(&*root)),
        };
        if let Err(e) = checked {
            eprintln!(
                "ringsync: receive: {}: refusing the incremental stream: {e}; nothing was changed",
                dst.display()
            );
            return exit::FATAL;
        }
    }
    let replay = if header.required & stream::FEATURE_RESUMED != 0 {
        let killed = incremental && record.stopped != Some(true);
        let changed = || {
            let now = crate::send::tree_id(&root, false, false).1.map(|id| hex(&id));
            now.is_none() || now != record.dst_state
        };
        match check_resumed(&header, record.resume.as_deref()).and_then(|t| {
            if killed {
                Err("the receive it continues did not stop cleanly (it was killed, or the machine went down), so what it had staged and partly published is unknown; an incremental stream cannot be resumed then: send a full stream".into())
            } else if incremental && changed() {
                Err("DST was changed since the receive it continues stopped; send a full stream".into())
            } else {
                Ok(t)
            }
        }) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!(
                    "ringsync: receive: {}: refusing the resumed stream: {e}",
                    dst.display()
                );
                return exit::FATAL;
            }
        }
    } else {
        None
    };
    record.version = 1;
    record.state = "dirty".into();
    record.stream_target = None;
    record.dst_state = None;
    record.stopped = None;
    // A resumed run also answers for what the interrupted one could not apply.
    let earlier_incomplete = replay.is_some() && record.incomplete == Some(true);
    if replay.is_none() {
        record.resume = None;
        record.incomplete = None;
    }
    if let Err(e) = guard.write(&record) {
        eprintln!("ringsync: receive: {e}");
        return exit::FATAL;
    }
    let root_fresh = replay.is_none() && !incremental && is_empty_dir(&root).unwrap_or(false);
    let tag = {
        let mut b = [0u8; 6];
        let _ = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
        hex(&b)
    };
    let counts = counts.unwrap_or_else(|| {
        Arc::new(StreamCounts {
            wire: cfg.wire.clone(),
            ..Default::default()
        })
    });
    let line = counts.line(cfg.progress);
    // Read-back waits for the device: more threads than cores keep it busy.
    let readers = crate::verify::readers(std::thread::available_parallelism().map_or(1, |n| n.get()));
    let live = (cfg.verify && cfg.fsync).then(|| crate::verify::Live::start(readers, VERIFY_BUF_BYTES));
    let ap = Arc::new(Apply {
        dst: dst.clone(),
        root: root.clone(),
        fsync: cfg.fsync,
        keys: Default::default(),
        is_root_user: rustix::process::geteuid().is_root(),
        drop_privileged: cfg.drop_privileged,
        errors: AtomicU64::new(0),
        guard,
        state: std::sync::Mutex::new(record),
        // A full stream is made again the same way, so it resumes; a stream against a listing
        // is not (the next run lists DST again).
        tokens: listed.is_none() || !incremental,
        full: !incremental && cfg.one_way,
        verify: cfg.verify.then(Default::default),
        verify_live: live.as_ref().map(|l| l.feed()),
    });
    let writer = match Writer::start(ap.clone(), header.max_payload as usize) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("ringsync: receive: {e}");
            return exit::FATAL;
        }
    };
    let mut rx = Receiver {
        ap: ap.clone(),
        publishing: None,
        dirs: HashMap::new(),
        next_dir: 0,
        file: None,
        // XATTRs before the first entry belong to the root.
        last: Last::Root,
        pending: Vec::new(),
        names_total: 0,
        held_xattrs: 0,
        tag,
        counter: 0,
        links_dir: None,
        writer,
        hold: None,
        over: Overlay::default(),
        incremental,
        root_xattrs: Vec::new(),
        root_fresh,
        cfg,
        replay,
        header: header.clone(),
        skipped: 0,
        counts,
    };
    let root_key = match dir_key(&root) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("ringsync: receive: stat {}: {e}", dst.display());
            return exit::FATAL;
        }
    };
    rx.dirs.insert(
        0,
        OpenDir {
            acl: crate::meta::has_default_acl(root.as_fd()),
            hidden: false,
            ghost: false,
            key: root_key,
            fd: root,
            rel: Vec::new(),
            names: (!incremental).then(HashSet::new),
            xattrs: Vec::new(),
            fresh: rx.root_fresh,
        },
    );
    let res = (|| -> Result<(), Stop> {
        loop {
            if let Some(s) = crate::signals::interrupted() {
                return Err(Stop::Interrupted(s));
            }
            rx.writer.reclaim(|b| reader.recycle(b))?;
            match reader.next_item() {
                Ok(Some((h, at, Some(Item::Record(r))))) => rx.record(r, at, h.seq)?,
                Ok(Some((h, at, Some(Item::Data { offset, data })))) => {
                    rx.data_item(offset, data, at, h.seq)?
                }
                Ok(Some((_, _, None))) => {}
                Ok(None) => return Ok(()),
                Err(e) => return Err(Stop::Stream(describe_at(&e, reader.decoder()))),
            }
        }
    })();
    line.finish();
    let res = res.and_then(|()| {
        rx.published()?;
        // --verify reads from the device: what it reads must be there, --no-fsync or not.
        if cfg.fsync || cfg.verify {
            crate::failpoint::fail("syncfs", b"")
                .and_then(|()| rustix::fs::syncfs(&*ap.root))
                .map_err(|e| Stop::Stream(format!("syncfs {}: {e}", dst.display())))?;
        }
        Ok(())
    });
    match res {
        Ok(()) => {
            let verified = ap.verify.as_ref().map(|v| {
                let items = std::mem::take(&mut *v.lock().expect("verify poisoned"));
                let log = crate::error::ErrorLog::new(cfg.quiet);
                let stats = match live {
                    Some(live) => {
                        live.push(items);
                        live.finish(&log)
                    }
                    None => crate::verify::verify(items, readers, VERIFY_BUF_BYTES, &log),
                };
                (stats, log.errors(), log.exit_code())
            });
            if let Some((stats, failed, _)) = verified {
                if !cfg.quiet {
                    eprintln!(
                        "ringsync: receive: verified {} files ({} bytes read back), {failed} failed",
                        stats.files, stats.bytes
                    );
                }
            }
            let verify_code = verified.map_or(exit::OK, |v| v.2);
            let (errors, skipped) = (ap.errors.load(Ordering::Relaxed), rx.skipped);
            if verify_code != exit::OK {
                // Not exact: the record stays dirty (a mirror or a full stream repairs it).
                let mut record = ap.state.lock().expect("record lock").clone();
                record.resume = None;
                record.incomplete = None;
                if let Err(e) = ap.guard.write(&record) {
                    eprintln!("ringsync: receive: {e}");
                }
                eprintln!(
                    "ringsync: receive: --verify found files on {} that differ from the stream; it stays marked dirty",
                    dst.display()
                );
                return verify_code;
            }
            let mut record = ap.state.lock().expect("record lock").clone();
            // A resumed run also answers for what the interrupted one published.
            let earlier = earlier_incomplete;
            record.incomplete = None;
            if errors == 0 && skipped == 0 && !earlier {
                record.state = "clean".into();
                record.source = None;
                record.source_ino = None;
                record.source_btime = None;
                record.filter = None;
                record.started = None;
                record.resume = None;
                record.finished = Some(guard::now());
                record.stream_target = Some(hex(&header.target_id));
                // DST's own state now: an incremental stream later checks nothing changed it.
                // (Not after a remote mirror's stream unless asked (--prev): its next run lists
                // DST again, and the walk would cost as much as the listing.)
                // A full stream's DST is noted always (the walk is small beside the stream).
                record.dst_state = match listed {
                    Some(l) if !l.state && incremental => None,
                    _ => crate::send::tree_id(&ap.root, false, false).1.map(|id| hex(&id)),
                };
                if let Err(e) = ap.guard.write(&record) {
                    eprintln!("ringsync: receive: {e}");
                    return exit::FATAL;
                }
                return exit::OK;
            }
            // Applied to the end, not exactly. A full stream resumes from the last checkpoint
            // before its first failure (its token stayed there); an incremental one cannot.
            if !ap.full {
                record.resume = None;
            }
            if let Err(e) = ap.guard.write(&record) {
                eprintln!("ringsync: receive: {e}");
            }
            let before = if earlier {
                " (the interrupted receive this one continued had such entries too)"
            } else {
                ""
            };
            let again = if record.resume.is_some() {
                "; once the cause is fixed, resume from before the first failure with: ringsync send --resume \"$(ringsync receive --token DST)\" SRC"
            } else {
                ""
            };
            eprintln!(
                "ringsync: receive: {errors} entries could not be applied, {skipped} were not sent{before}; {} stays marked dirty{again}",
                dst.display()
            );
            exit::PARTIAL
        }
        Err(stop) => {
            let whole = rx.discard();
            {
                // What was staged and not published is gone: the published part is exactly
                // what the token says, which an incremental stream's resumption needs; with
                // DST's state, to find out at the resumption whether anything changed it since.
                let mut state = ap.state.lock().expect("record lock");
                if state.resume.is_some() && whole {
                    state.stopped = Some(true);
                    state.dst_state = crate::send::tree_id(&ap.root, false, false).1.map(|id| hex(&id));
                    if let Err(e) = ap.guard.write(&state) {
                        eprintln!("ringsync: receive: {e}");
                    }
                }
            }
            let resumable = match &ap.state.lock().expect("record lock").resume {
                Some(_) => "; resume it with: ringsync send --resume \"$(ringsync receive --token DST)\" SRC",
                None => "",
            };
            match stop {
                Stop::Interrupted(s) => {
                    eprintln!(
                        "ringsync: receive: stopped by {}; what the last checkpoint published stays, {} is marked dirty{resumable}",
                        crate::signals::name(s),
                        dst.display()
                    );
                    exit::INTERRUPTED
                }
                Stop::Stream(m) => {
                    eprintln!("ringsync: receive: {m}");
                    eprintln!(
                        "ringsync: receive: stopped: nothing after the last verified checkpoint was published; {} is marked dirty{resumable}",
                        dst.display()
                    );
                    exit::FATAL
                }
            }
        }
    }
}

/// An incremental stream applies only to the state it was made from: DST's record must be
/// clean and name the stream's base as the target of the last stream applied.
fn check_base(h: &StreamHeader, r: &guard::Record, root: Option<&OwnedFd>) -> Result<(), String> {
    if h.required & stream::FEATURE_RESUMED != 0 {
        // DST is dirty now: the token in its record (checked next) names the interrupted
        // stream, whose base was checked when it began.
        return Ok(());
    }
    let base = hex(&h.base_id);
    match r.stream_target.as_deref() {
        _ if r.state.is_empty() => Err(format!(
            "DST has no record of a stream applied to it, and this stream applies only to the state {base}"
        )),
        _ if !r.is_clean() => Err(
            "DST is marked dirty (a run into it did not finish), so it is not the state the stream applies to; send a full stream"
                .into(),
        ),
        Some(t) if t == base => {
            // And nothing changed DST since (a copy into it, an edit by hand).
            let Some(root) = root else { return Ok(()) };
            let now = crate::send::tree_id(root, false, false).1.map(|id| hex(&id));
            match (&r.dst_state, now) {
                (Some(was), Some(now)) if *was == now => Ok(()),
                (None, _) => Err("DST's record does not say what DST was like after the last stream (an older ringsync applied it); send a full stream".into()),
                _ => Err("DST was changed since the last stream was applied to it (its entries' ctimes say so), so it is not the state the stream applies to; send a full stream".into()),
            }
        }
        Some(t) => Err(format!(
            "the stream applies to the state {base}, and DST is the state {t}"
        )),
        None => Err(format!(
            "DST was last changed by a mirror or copy, not by a stream, and this stream applies only to the state {base}"
        )),
    }
}

/// The token a resumed stream must match: the one DST's record holds, same stream, same
/// target, same start, resuming at its offset.
fn check_resumed(h: &StreamHeader, stored: Option<&str>) -> Result<ResumeToken, String> {
    let stored = stored.ok_or("DST holds no resume token (no interrupted receive to resume)")?;
    let t = ResumeToken::decode(stored).map_err(|e| format!("DST's own token: {e}"))?;
    if t.stream_id != h.stream_id || t.target_id != h.target_id || t.created_s != h.created_s {
        return Err("it resumes another stream than the one DST's token names".into());
    }
    if t.offset != h.resume_offset {
        return Err(format!(
            "it resumes at offset {}, DST's token is at {}",
            h.resume_offset, t.offset
        ));
    }
    Ok(t)
}

/// `ringsync receive --token DST`: print the resume token of an interrupted receive.
pub fn print_token(dst: &Path) -> i32 {
    match Guard::peek(dst).and_then(|r| r.resume) {
        Some(t) => {
            println!("{t}");
            exit::OK
        }
        None => {
            eprintln!(
                "ringsync: receive: {}: no resume token (no interrupted receive)",
                dst.display()
            );
            exit::FATAL
        }
    }
}

fn describe(e: &ReadError) -> String {
    match e {
        ReadError::Truncated { seq: 0, .. } => "the stream is empty or shorter than its header".into(),
        e => format!("{e}"),
    }
}

/// A read error with where the stream last verified.
fn describe_at(e: &ReadError, d: &stream::Decoder) -> String {
    let at = match d.last_checkpoint {
        Some((off, seq)) => format!("the last good checkpoint is record {seq} at offset {off}"),
        None => "no checkpoint verified".into(),
    };
    format!("{}; {at}", describe(e))
}

/// A DST for an incremental fuzz input: a few entries (one a symlink to the outside
/// directory) and a clean record naming the stream's base, so the records reach the
/// incremental receiver.
fn fuzz_base(dst: &Path, input: &[u8]) {
    let Ok(h) = StreamHeader::decode(input, PAYLOAD_CAP) else {
        return;
    };
    if h.required & stream::FEATURE_INCREMENTAL == 0 {
        return;
    }
    std::fs::create_dir_all(dst.join("a/b")).expect("make a/b");
    std::fs::write(dst.join("a/f"), b"base").expect("write a/f");
    std::fs::write(dst.join("top"), b"top").expect("write top");
    std::os::unix::fs::symlink("../outside", dst.join("link")).expect("symlink");
    let Ok(g) = Guard::lock(dst) else {
        panic!("lock {}", dst.display());
    };
    let r = guard::Record {
        version: 1,
        state: "clean".into(),
        stream_target: Some(hex(&h.base_id)),
        ..Default::default()
    };
    g.write(&r).expect("write the record");
}

/// What the receive fuzz target (fuzz/) and its corpus replay (tests/stream_corpus.rs) run on
/// every input: `data`, and `data` with every checksum made right (so the records reach the
/// receiver's rules), applied to a fresh DST inside `scratch`, next to a directory `outside`
/// that must stay as it was. Panics (a finding) when anything but DST and its record file
/// appears in `scratch`, or `outside` changes.
pub fn check_fuzz_input(data: &[u8], scratch: &Path) {
    let outside = scratch.join("outside");
    let marker = outside.join("keep");
    if !marker.exists() {
        std::fs::create_dir_all(&outside).expect("make the outside directory");
        std::fs::write(&marker, b"untouched").expect("write the marker");
    }
    let dst = scratch.join("dst");
    for input in [data.to_vec(), stream::reseal(data)] {
        if dst.exists() {
            let _ = std::process::Command::new("chmod")
                .arg("-R")
                .arg("u+rwx")
                .arg(&dst)
                .status();
            std::fs::remove_dir_all(&dst).expect("clean DST");
        }
        std::fs::create_dir(&dst).expect("make DST");
        fuzz_base(&dst, &input);
        let cfg = ReceiveConfig {
            dst: dst.clone(),
            input: None,
            drop_privileged: true,
            fsync: false,
            progress: progress::Mode::Off,
            quiet: true,
            check_dst_state: false,
            wire: None,
            verify: false,
            one_way: true,
        };
        let _ = apply_stream(&input[..], &cfg);
        let names: Vec<_> = std::fs::read_dir(scratch)
            .expect("list scratch")
            .map(|e| e.expect("entry").file_name())
            .collect();
        for n in &names {
            let n = n.to_string_lossy();
            assert!(
                n == "dst" || n == "outside" || n == ".dst.ringsync-mirror",
                "receive wrote {n} outside DST"
            );
        }
        let outside_names: Vec<_> = std::fs::read_dir(&outside).expect("list outside").collect();
        assert_eq!(outside_names.len(), 1, "receive wrote into the outside directory");
        assert_eq!(std::fs::read(&marker).expect("read marker"), b"untouched");
    }
}
