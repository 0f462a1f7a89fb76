//! FUSE fault injection (issue 16, item 2): SRC is a FUSE filesystem served from a thread of
//! this test (`fuser`, mounted with mount(2) as root: no libfuse, no fusermount) that passes
//! every request through to a real backing directory, with attribute and entry TTL 0 (every
//! stat and lookup reaches it) and files opened `direct_io` (every read reaches it, at the
//! offset the reader asked for). Rules, set per case on one relative path, inject:
//!
//! - `ReadError { at }`: a read covering byte `at` fails with EIO;
//! - `ReaddirError`: reading the directory fails with EIO;
//! - `StatError`: lookup and getattr of the entry fail with EIO;
//! - `Delay(d)`: every read of the file is answered `d` later (from another thread, so the
//!   filesystem keeps serving);
//! - `Mutate { at, how }`: when a read first reaches byte `at`, the backing file is changed
//!   (grown, shrunk, unlinked, rewritten in place at the same size with its mtime put back, or
//!   a symlink renamed over it), then the read is served from the changed file;
//! - `SwapOnLookup { nth, .. }`: at the nth lookup of the name, before answering, a symlink
//!   pointing OUTSIDE SRC (to a file or directory with secret content) or a regular file from
//!   outside is renamed over the entry (or exchanged with it): the race between the walk's
//!   stat and the open.
//!
//! Each case runs one command — `copy` into an empty DST, `copy` into a DST holding an OLD
//! version of the tree, `mirror` into OLD (`--engine auto`, which applies a small plan with
//! pread, and `--engine uring`), `send | receive` into OLD — and then checks, by the
//! independent oracle (tests/common/oracle.rs) against the backing directory (the truth after
//! the run): every entry the fault does not concern is exact; the one concerned holds its OLD
//! version (untouched), nothing (where DST had nothing), or exactly its NEW version with NEW
//! metadata — never bytes of a mix (after a swap: each entry OLD, as walked, or NEW); the exit
//! status and a message naming the path say the run was incomplete; no temporary name is left;
//! a mirror or receive that reported an error does not mark DST clean (a vanished entry, exit
//! 5, is no error: docs/mirror.md), and deletes nothing under a directory whose walk failed;
//! secret content from outside SRC never appears in DST. Then the rules are cleared and the
//! same command run again must exit 0 and leave DST exact (convergence). The read error is
//! also injected with the file served through the page cache (kernel readahead) instead of
//! `direct_io`. The swap is tried at every lookup of the name the command makes (the walk's
//! stat, the open, a sender's surveys), as long as there is a next one.
//!
//! `fuse_fault_selftest` shows that the checks can fail (a mixed file, a stale one, a leaked
//! secret, a deletion under a failed directory, a wrong entry elsewhere are flagged) and that
//! the faults really reach a reader through the mount.
//!
//! Without /dev/fuse, without root, or when the mount fails, each test prints `SKIPPED:
//! <reason>` and passes, unless CI is set (then it fails).

mod common;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    FileAttr, FileType as FType, Filesystem, MountOption, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use rustix::fs::{AtFlags, Mode, OFlags, StatxFlags, Timespec, Timestamps};
use rustix::io::Errno;
use sha2::{Digest, Sha256};

use common::oracle::{compare_scanned, scan_tree, show, Entry};
use common::procs::{err_file, read_back, wait_all};
use common::*;

/// How long any one ringsync process may take before the test gives up on it.
const DEADLINE: Duration = Duration::from_secs(60);
/// Attribute and entry validity handed to the kernel: none, so that every stat and every
/// lookup reaches the filesystem and a change of the backing file is seen at once.
const TTL: Duration = Duration::ZERO;

const VICTIM: &[u8] = b"v/victim.bin";
const SLOW: &[u8] = b"v/slow.bin";
const VICTIM_SIZE: usize = 2 << 20;
/// Where the mutations and the read error strike: 1.25 MiB into the 2 MiB victim (not on a
/// MiB boundary, so inside a reader's op, whatever its size).
const STRIKE: u64 = 5 << 18;

// ---------------------------------------------------------------------------------------------
// The fault filesystem
// ---------------------------------------------------------------------------------------------

/// How a file is changed while it is being read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mutation {
    /// 256 KiB appended.
    Grow,
    /// Truncated to half of where the read struck.
    Shrink,
    /// Unlinked.
    Vanish,
    /// Every byte rewritten in place (same size), then atime and mtime put back: only the
    /// ctime tells.
    Rewrite,
    /// A symlink renamed over it.
    Symlink,
}

#[derive(Clone, Debug)]
enum Fault {
    ReadError {
        at: u64,
    },
    ReaddirError,
    StatError,
    Delay(Duration),
    Mutate {
        at: u64,
        how: Mutation,
    },
    /// At the `nth` lookup of the name: `with` (outside SRC, same filesystem) is renamed over
    /// the backing entry, or exchanged with it (`exchange`, for a directory).
    SwapOnLookup {
        nth: u32,
        with: PathBuf,
        exchange: bool,
    },
}

struct Rule {
    path: Vec<u8>,
    fault: Fault,
    /// A one-shot rule has struck.
    fired: bool,
    /// Lookups counted for `SwapOnLookup`.
    seen: u32,
}

#[derive(Default)]
struct Control {
    /// Files are opened through the page cache (kernel readahead decides the reads) instead
    /// of `direct_io`.
    cached: bool,
    rules: Vec<Rule>,
    /// What the filesystem did for paths with rules (and the faults it injected), for the
    /// failure messages.
    events: Vec<String>,
}

impl Control {
    fn note(&mut self, s: String) {
        if self.events.len() < 4000 {
            self.events.push(s);
        }
    }
}

type Ctl = Arc<Mutex<Control>>;

fn lock(c: &Ctl) -> MutexGuard<'_, Control> {
    c.lock().unwrap_or_else(|e| e.into_inner())
}

struct Node {
    /// O_PATH descriptor of the backing object (kept for the life of the mount, so its inode
    /// number cannot be reused while this node exists).
    fd: Arc<OwnedFd>,
    /// Relative path of the last lookup that found it (`.` for the root).
    path: Vec<u8>,
    symlink: bool,
}

struct OpenFile {
    file: Arc<File>,
    path: Vec<u8>,
}

struct OpenDir {
    entries: Vec<(u64, FType, OsString)>,
    path: Vec<u8>,
}

/// The filesystem. A node's FUSE number is its backing inode number (the root's is 1), so
/// hardlinks share a node and `st_ino` through the mount is the backing one; every node keeps
/// an O_PATH descriptor of its backing inode for the life of the mount, so that number cannot
/// be reused meanwhile, and an unlinked file still answers getattr (with nlink 0), as a local
/// filesystem does for an open file.
struct FaultFs {
    root: PathBuf,
    root_ino: u64,
    /// Scratch directory outside SRC on the backing filesystem (temporary symlinks).
    outside: PathBuf,
    nodes: HashMap<u64, Node>,
    files: HashMap<u64, OpenFile>,
    dirs: HashMap<u64, OpenDir>,
    next_fh: u64,
    ctl: Ctl,
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent == b"." {
        name.to_vec()
    } else {
        [parent, b"/", name].concat()
    }
}

fn systime(sec: i64, nsec: u32) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(u64::from(nsec))
    }
}

/// Attributes of a backing object (`ino` the backing inode number).
fn stat_fd(fd: &OwnedFd) -> Result<FileAttr, Errno> {
    let st = rustix::fs::statx(
        fd,
        c"",
        AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS,
    )?;
    let mode = u32::from(st.stx_mode);
    let kind = match mode & libc::S_IFMT {
        libc::S_IFDIR => FType::Directory,
        libc::S_IFLNK => FType::Symlink,
        libc::S_IFIFO => FType::NamedPipe,
        libc::S_IFCHR => FType::CharDevice,
        libc::S_IFBLK => FType::BlockDevice,
        libc::S_IFSOCK => FType::Socket,
        _ => FType::RegularFile,
    };
    Ok(FileAttr {
        ino: st.stx_ino,
        size: st.stx_size,
        blocks: st.stx_blocks,
        atime: systime(st.stx_atime.tv_sec, st.stx_atime.tv_nsec),
        mtime: systime(st.stx_mtime.tv_sec, st.stx_mtime.tv_nsec),
        ctime: systime(st.stx_ctime.tv_sec, st.stx_ctime.tv_nsec),
        crtime: UNIX_EPOCH,
        kind,
        perm: (mode & 0o7777) as u16,
        nlink: st.stx_nlink,
        uid: st.stx_uid,
        gid: st.stx_gid,
        rdev: 0,
        blksize: st.stx_blksize,
        flags: 0,
    })
}

fn proc_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Reopen an O_PATH descriptor for reading, without touching the atime.
fn reopen(fd: &OwnedFd, extra: OFlags) -> Result<OwnedFd, Errno> {
    let p = proc_path(fd);
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | extra;
    match rustix::fs::open(&p, flags | OFlags::NOATIME, Mode::empty()) {
        Err(Errno::PERM) => rustix::fs::open(&p, flags, Mode::empty()),
        r => r,
    }
}

fn fuse_type(t: rustix::fs::FileType) -> FType {
    use rustix::fs::FileType as T;
    match t {
        T::Directory => FType::Directory,
        T::Symlink => FType::Symlink,
        T::Fifo => FType::NamedPipe,
        T::CharacterDevice => FType::CharDevice,
        T::BlockDevice => FType::BlockDevice,
        T::Socket => FType::Socket,
        _ => FType::RegularFile,
    }
}

/// Deterministic bytes.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    SmallRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// Change the backing file `rel` (below `root`) as `how` says; `at` is where the read struck.
fn mutate(root: &Path, outside: &Path, rel: &[u8], how: Mutation, at: u64) -> std::io::Result<()> {
    let p = bpath(root, rel);
    match how {
        Mutation::Grow => {
            let f = std::fs::OpenOptions::new().write(true).open(&p)?;
            f.write_all_at(&pattern(0x6772_6f77, 256 << 10), f.metadata()?.len())?;
        }
        Mutation::Shrink => std::fs::OpenOptions::new()
            .write(true)
            .open(&p)?
            .set_len(at / 2)?,
        Mutation::Vanish => std::fs::remove_file(&p)?,
        Mutation::Rewrite => {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::symlink_metadata(&p)?;
            let new: Vec<u8> = std::fs::read(&p)?.iter().map(|b| !b).collect();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&p)?
                .write_all_at(&new, 0)?;
            let t = Timestamps {
                last_access: Timespec {
                    tv_sec: m.atime(),
                    tv_nsec: m.atime_nsec(),
                },
                last_modification: Timespec {
                    tv_sec: m.mtime(),
                    tv_nsec: m.mtime_nsec(),
                },
            };
            rustix::fs::utimensat(rustix::fs::CWD, &p, &t, AtFlags::SYMLINK_NOFOLLOW)?;
        }
        Mutation::Symlink => {
            let tmp = outside.join("mutation-link");
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink("swapped-in-during-the-read", &tmp)?;
            std::fs::rename(&tmp, &p)?;
        }
    }
    Ok(())
}

impl FaultFs {
    fn new(root: &Path, outside: &Path, ctl: Ctl) -> Result<FaultFs, String> {
        let fd = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| format!("open {}: {e}", root.display()))?;
        let attr = stat_fd(&fd).map_err(|e| format!("statx {}: {e}", root.display()))?;
        let mut nodes = HashMap::new();
        nodes.insert(
            fuser::FUSE_ROOT_ID,
            Node {
                fd: Arc::new(fd),
                path: b".".to_vec(),
                symlink: false,
            },
        );
        Ok(FaultFs {
            root: root.to_path_buf(),
            root_ino: attr.ino,
            outside: outside.to_path_buf(),
            nodes,
            files: HashMap::new(),
            dirs: HashMap::new(),
            next_fh: 1,
            ctl,
        })
    }

    fn node(&self, ino: u64) -> Result<&Node, i32> {
        self.nodes.get(&ino).ok_or(libc::ESTALE)
    }

    /// The rules on `path` that `pick` selects (cloned), and whether any rule names `path`.
    fn rules_on(&self, path: &[u8]) -> Vec<Fault> {
        lock(&self.ctl)
            .rules
            .iter()
            .filter(|r| r.path == path)
            .map(|r| r.fault.clone())
            .collect()
    }

    fn note(&self, path: &[u8], what: impl FnOnce() -> String) {
        let mut c = lock(&self.ctl);
        if c.rules.iter().any(|r| r.path == path) {
            let s = what();
            c.note(s);
        }
    }

    /// Look `name` up in `parent`: the node of what is there now.
    fn lookup_at(&mut self, parent: &OwnedFd, name: &OsStr, path: &[u8]) -> Result<FileAttr, Errno> {
        let fd = rustix::fs::openat(
            parent,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let mut attr = stat_fd(&fd)?;
        if attr.ino == self.root_ino || attr.ino == fuser::FUSE_ROOT_ID {
            // The root seen again (`..` of the top) or an inode numbered 1: not served.
            return Err(Errno::NOENT);
        }
        let node = self.nodes.entry(attr.ino).or_insert_with(|| Node {
            fd: Arc::new(fd),
            path: Vec::new(),
            symlink: attr.kind == FType::Symlink,
        });
        node.path = path.to_vec();
        // The node's own descriptor answers (the same inode: numbers are not reused while it
        // is held).
        attr = stat_fd(&node.fd)?;
        Ok(attr)
    }
}

impl Filesystem for FaultFs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let (pfd, path) = match self.node(parent) {
            Ok(p) => (p.fd.clone(), join(&p.path, name.as_bytes())),
            Err(e) => return reply.error(e),
        };
        let mut swap = None;
        let mut fail = false;
        {
            let mut c = lock(&self.ctl);
            let mut named = false;
            for r in c.rules.iter_mut().filter(|r| r.path == path) {
                named = true;
                match &r.fault {
                    Fault::StatError => fail = true,
                    Fault::SwapOnLookup { nth, with, exchange } => {
                        r.seen += 1;
                        if !r.fired && r.seen == *nth {
                            r.fired = true;
                            swap = Some((with.clone(), *exchange));
                        }
                    }
                    _ => {}
                }
            }
            if named {
                c.note(format!(
                    "lookup {}{}",
                    show(&path),
                    if fail { ": EIO (injected)" } else { "" }
                ));
            }
        }
        if fail {
            return reply.error(libc::EIO);
        }
        if let Some((with, exchange)) = swap {
            let target = bpath(&self.root, &path);
            let res = if exchange {
                rustix::fs::renameat_with(
                    rustix::fs::CWD,
                    &with,
                    rustix::fs::CWD,
                    &target,
                    rustix::fs::RenameFlags::EXCHANGE,
                )
                .map_err(std::io::Error::from)
            } else {
                std::fs::rename(&with, &target)
            };
            lock(&self.ctl).note(format!(
                "swapped {} for {} before answering this lookup: {res:?}",
                show(&path),
                with.display()
            ));
        }
        match self.lookup_at(&pfd, name, &path) {
            Ok(attr) => reply.entry(&TTL, &attr, 0),
            Err(e) => reply.error(e.raw_os_error()),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        let node = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let path = node.path.clone();
        let fd = node.fd.clone();
        if self.rules_on(&path).iter().any(|f| matches!(f, Fault::StatError)) {
            self.note(&path, || format!("getattr {}: EIO (injected)", show(&path)));
            return reply.error(libc::EIO);
        }
        match stat_fd(&fd) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e.raw_os_error()),
        }
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        match self.node(ino) {
            Ok(n) => match rustix::fs::readlinkat(&*n.fd, c"", Vec::new()) {
                Ok(t) => reply.data(t.as_bytes()),
                Err(e) => reply.error(e.raw_os_error()),
            },
            Err(e) => reply.error(e),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        if flags & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(libc::EROFS);
        }
        let (fd, path) = match self.node(ino) {
            Ok(n) => (n.fd.clone(), n.path.clone()),
            Err(e) => return reply.error(e),
        };
        match reopen(&fd, OFlags::empty()) {
            Ok(f) => {
                let fh = self.next_fh;
                self.next_fh += 1;
                self.note(&path, || format!("open {}", show(&path)));
                self.files.insert(
                    fh,
                    OpenFile {
                        file: Arc::new(File::from(f)),
                        path,
                    },
                );
                let cached = lock(&self.ctl).cached;
                reply.opened(fh, if cached { 0 } else { fuser::consts::FOPEN_DIRECT_IO });
            }
            Err(e) => reply.error(e.raw_os_error()),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let Some(of) = self.files.get(&fh) else {
            return reply.error(libc::EBADF);
        };
        let (file, path) = (of.file.clone(), of.path.clone());
        let (off, len) = (offset as u64, u64::from(size));
        let (mut fail, mut delay, mut strike) = (false, None, None);
        {
            let mut c = lock(&self.ctl);
            let mut named = false;
            for r in c.rules.iter_mut().filter(|r| r.path == path) {
                named = true;
                match r.fault {
                    Fault::ReadError { at } if off <= at && at < off + len => fail = true,
                    Fault::Delay(d) => delay = Some(d),
                    Fault::Mutate { at, how } if !r.fired && off + len > at => {
                        r.fired = true;
                        strike = Some((how, at));
                    }
                    _ => {}
                }
            }
            if named {
                c.note(format!(
                    "read {} {off}+{len}{}",
                    show(&path),
                    if fail { ": EIO (injected)" } else { "" }
                ));
            }
        }
        if fail {
            return reply.error(libc::EIO);
        }
        if let Some((how, at)) = strike {
            let res = mutate(&self.root, &self.outside, &path, how, at);
            lock(&self.ctl).note(format!("mutated {} ({how:?}) at this read: {res:?}", show(&path)));
        }
        let serve = move || {
            let mut buf = vec![0u8; size as usize];
            let mut n = 0;
            while n < buf.len() {
                match file.read_at(&mut buf[n..], off + n as u64) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return reply.error(e.raw_os_error().unwrap_or(libc::EIO)),
                }
            }
            reply.data(&buf[..n]);
        };
        match delay {
            Some(d) => {
                std::thread::spawn(move || {
                    std::thread::sleep(d);
                    serve();
                });
            }
            None => serve(),
        }
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.files.remove(&fh);
        reply.ok();
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        let (fd, path) = match self.node(ino) {
            Ok(n) => (n.fd.clone(), n.path.clone()),
            Err(e) => return reply.error(e),
        };
        let dir = match reopen(&fd, OFlags::DIRECTORY) {
            Ok(d) => d,
            Err(e) => return reply.error(e.raw_os_error()),
        };
        let mut entries = vec![
            (ino, FType::Directory, OsString::from(".")),
            (ino, FType::Directory, OsString::from("..")),
        ];
        let mut it = match rustix::fs::Dir::read_from(&dir) {
            Ok(d) => d,
            Err(e) => return reply.error(e.raw_os_error()),
        };
        while let Some(e) = it.read() {
            match e {
                Ok(e) => {
                    let name = e.file_name().to_bytes();
                    if name != b"." && name != b".." {
                        entries.push((
                            e.ino(),
                            fuse_type(e.file_type()),
                            OsStr::from_bytes(name).to_os_string(),
                        ));
                    }
                }
                Err(e) => return reply.error(e.raw_os_error()),
            }
        }
        let fh = self.next_fh;
        self.next_fh += 1;
        self.note(&path, || format!("opendir {}", show(&path)));
        self.dirs.insert(fh, OpenDir { entries, path });
        reply.opened(fh, 0);
    }

    fn readdir(&mut self, _req: &Request<'_>, _ino: u64, fh: u64, offset: i64, mut reply: ReplyDirectory) {
        let Some(d) = self.dirs.get(&fh) else {
            return reply.error(libc::EBADF);
        };
        if self
            .rules_on(&d.path)
            .iter()
            .any(|f| matches!(f, Fault::ReaddirError))
        {
            let path = d.path.clone();
            self.note(&path, || format!("readdir {}: EIO (injected)", show(&path)));
            return reply.error(libc::EIO);
        }
        for (i, (ino, kind, name)) in d.entries.iter().enumerate().skip(offset.max(0) as usize) {
            if reply.add(*ino, (i + 1) as i64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&mut self, _req: &Request<'_>, _ino: u64, fh: u64, _flags: i32, reply: ReplyEmpty) {
        self.dirs.remove(&fh);
        reply.ok();
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        match rustix::fs::statvfs(&self.root) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(e.raw_os_error()),
        }
    }

    fn getxattr(&mut self, _req: &Request<'_>, ino: u64, name: &OsStr, size: u32, reply: ReplyXattr) {
        let n = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        if n.symlink {
            return reply.error(libc::ENODATA);
        }
        let mut buf = vec![0u8; if size == 0 { 1 << 16 } else { size as usize }];
        match rustix::fs::getxattr(proc_path(&n.fd).as_str(), name, &mut buf) {
            Ok(k) if size == 0 => reply.size(k as u32),
            Ok(k) => reply.data(&buf[..k]),
            Err(e) => reply.error(e.raw_os_error()),
        }
    }

    fn listxattr(&mut self, _req: &Request<'_>, ino: u64, size: u32, reply: ReplyXattr) {
        let n = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        if n.symlink {
            return if size == 0 { reply.size(0) } else { reply.data(&[]) };
        }
        let mut buf = vec![0u8; if size == 0 { 1 << 16 } else { size as usize }];
        match rustix::fs::listxattr(proc_path(&n.fd).as_str(), &mut buf) {
            Ok(k) if size == 0 => reply.size(k as u32),
            Ok(k) => reply.data(&buf[..k]),
            Err(e) => reply.error(e.raw_os_error()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The mount
// ---------------------------------------------------------------------------------------------

/// The fault filesystem mounted over a backing directory; unmounted on drop (lazily, so a
/// process still inside cannot make it hang), also when the test panics.
struct FuseSrc {
    mnt: PathBuf,
    session: Option<fuser::BackgroundSession>,
    ctl: Ctl,
}

impl FuseSrc {
    /// Mount; `Err` is the reason to skip.
    fn mount(back: &Path, outside: &Path, mnt: &Path) -> Result<FuseSrc, String> {
        if !Path::new("/dev/fuse").exists() {
            return Err("/dev/fuse is missing (no FUSE in this kernel or container)".into());
        }
        if !is_root() {
            return Err("needs root: the FUSE source is mounted with mount(2), without fusermount".into());
        }
        std::fs::create_dir_all(mnt).map_err(|e| format!("mkdir {}: {e}", mnt.display()))?;
        let ctl = Ctl::default();
        let fs = FaultFs::new(back, outside, ctl.clone())?;
        let back_ino = fs.root_ino;
        let opts = [
            MountOption::FSName("ringsync-fault".into()),
            MountOption::RO,
            MountOption::AllowOther,
            MountOption::DefaultPermissions,
        ];
        let session = fuser::spawn_mount2(fs, mnt, &opts)
            .map_err(|e| format!("FUSE mount on {}: {e}", mnt.display()))?;
        let me = FuseSrc {
            mnt: mnt.to_path_buf(),
            session: Some(session),
            ctl,
        };
        // It answers, and shows the backing root (a stat with a deadline: a dead server would
        // hang it).
        let (tx, rx) = std::sync::mpsc::channel();
        let m = mnt.to_path_buf();
        std::thread::spawn(move || {
            use std::os::unix::fs::MetadataExt;
            let _ = tx.send(std::fs::symlink_metadata(&m).map(|md| md.ino()));
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(ino)) if ino == back_ino => Ok(me),
            Ok(Ok(ino)) => Err(format!(
                "the FUSE mount shows inode {ino}, not the backing root's {back_ino}"
            )),
            Ok(Err(e)) => Err(format!("stat through the FUSE mount: {e}")),
            Err(_) => Err("the FUSE mount does not answer within 10 s".into()),
        }
    }

    fn set(&self, path: &[u8], fault: Fault) {
        lock(&self.ctl).rules.push(Rule {
            path: path.to_vec(),
            fault,
            fired: false,
            seen: 0,
        });
    }

    fn set_cached(&self, cached: bool) {
        lock(&self.ctl).cached = cached;
    }

    fn clear(&self) {
        lock(&self.ctl).rules.clear();
    }

    /// The most lookups a `SwapOnLookup` rule counted.
    fn lookups_seen(&self) -> u32 {
        lock(&self.ctl).rules.iter().map(|r| r.seen).max().unwrap_or(0)
    }

    /// Whether every one-shot rule struck.
    fn all_fired(&self) -> bool {
        lock(&self.ctl)
            .rules
            .iter()
            .filter(|r| matches!(r.fault, Fault::Mutate { .. } | Fault::SwapOnLookup { .. }))
            .all(|r| r.fired)
    }

    fn events(&self) -> String {
        let c = lock(&self.ctl);
        let n = c.events.len();
        let from = n.saturating_sub(40);
        let mut s = if from > 0 {
            format!("({from} earlier events not shown)\n")
        } else {
            String::new()
        };
        for e in &c.events[from..] {
            s.push_str("    ");
            s.push_str(e);
            s.push('\n');
        }
        s
    }
}

impl Drop for FuseSrc {
    fn drop(&mut self) {
        if let Ok(c) = std::ffi::CString::new(self.mnt.as_os_str().as_bytes()) {
            // SAFETY: `c` is a valid NUL-terminated path that outlives the call; umount2 only
            // reads it.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        if let Some(s) = self.session.take() {
            // Detached: the kernel ends the connection once nothing uses the mount, and the
            // serving thread returns. Waited for briefly (a process still inside would keep
            // it; it is left behind then).
            let t0 = Instant::now();
            while !s.guard.is_finished() && t0.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(5));
            }
            drop(s);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Trees
// ---------------------------------------------------------------------------------------------

fn set_mtime(p: &Path, t: (i64, u32)) {
    let ts = Timestamps {
        last_access: Timespec {
            tv_sec: t.0,
            tv_nsec: i64::from(t.1),
        },
        last_modification: Timespec {
            tv_sec: t.0,
            tv_nsec: i64::from(t.1),
        },
    };
    rustix::fs::utimensat(rustix::fs::CWD, p, &ts, AtFlags::SYMLINK_NOFOLLOW)
        .unwrap_or_else(|e| panic!("utimensat {}: {e}", p.display()));
}

fn put(root: &Path, rel: &str, data: &[u8], mode: u32, t: (i64, u32)) {
    use std::os::unix::fs::PermissionsExt;
    let p = root.join(rel);
    std::fs::write(&p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    set_mtime(&p, t);
}

fn mkdir(root: &Path, rel: &str) {
    std::fs::create_dir(root.join(rel)).unwrap_or_else(|e| panic!("mkdir {rel}: {e}"));
}

fn xattr(root: &Path, rel: &str, name: &str, value: &[u8]) {
    rustix::fs::setxattr(root.join(rel), name, value, rustix::fs::XattrFlags::empty())
        .unwrap_or_else(|e| panic!("setxattr {rel} {name}: {e}"));
}

/// The victim's bytes in the walked version (SRC) and the OLD one (DST).
fn victim_bytes(old: bool) -> Vec<u8> {
    if old {
        pattern(107, 1536 << 10)
    } else {
        pattern(7, VICTIM_SIZE)
    }
}

/// SRC (`old` false) or the OLD version DST holds (`old` true): most entries equal, three
/// files changed (content and mtime), and OLD has entries SRC lacks (at the top, in `sub`,
/// and a directory in `sub`).
fn build_tree(root: &Path, old: bool) {
    use std::os::unix::fs::PermissionsExt;
    let t = |i: i64| (1_600_000_000 + i * 1000, 123_456_000 + i as u32);
    let changed = |i: i64| if old { (1_500_000_000 + i * 1000, 7) } else { t(i) };
    std::fs::create_dir_all(root).expect("mkdir root");
    put(
        root,
        "top.txt",
        &pattern(if old { 101 } else { 1 }, if old { 8 << 10 } else { 12 << 10 }),
        0o644,
        changed(1),
    );
    xattr(root, "top.txt", "user.note", b"top");
    put(root, "empty", b"", 0o644, t(2));
    std::os::unix::fs::symlink("top.txt", root.join("link")).expect("symlink");
    set_mtime(&root.join("link"), t(3));
    std::os::unix::fs::symlink("no/such/target", root.join("dangling")).expect("symlink");
    set_mtime(&root.join("dangling"), t(4));
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("fifo"),
        rustix::fs::FileType::Fifo,
        Mode::from_raw_mode(0o640),
        0,
    )
    .expect("mkfifo");
    std::fs::set_permissions(root.join("fifo"), std::fs::Permissions::from_mode(0o640)).expect("chmod");
    set_mtime(&root.join("fifo"), t(5));
    put(root, "h1", &pattern(2, 100 << 10), 0o644, t(6));
    std::fs::hard_link(root.join("h1"), root.join("h2")).expect("link");
    put(root, "mode600.bin", &pattern(3, 64 << 10), 0o600, t(7));
    put(root, "big.bin", &pattern(10, 3 << 20), 0o644, t(8));
    mkdir(root, "sub");
    put(
        root,
        "sub/x.txt",
        &pattern(if old { 104 } else { 4 }, 5 << 10),
        0o644,
        changed(9),
    );
    put(root, "sub/y.bin", &pattern(5, 300 << 10), 0o644, t(10));
    mkdir(root, "sub/deep");
    put(root, "sub/deep/z.txt", &pattern(6, 1 << 10), 0o644, t(11));
    xattr(root, "sub/deep/z.txt", "user.z", b"1");
    mkdir(root, "v");
    put(root, "v/victim.bin", &victim_bytes(old), 0o644, changed(12));
    put(root, "v/slow.bin", &pattern(8, 256 << 10), 0o644, t(13));
    put(root, "v/neighbor.txt", &pattern(9, 3 << 10), 0o644, t(14));
    if old {
        put(root, "gone.txt", &pattern(201, 2 << 10), 0o644, t(30));
        put(root, "sub/extra_old.txt", &pattern(202, 2 << 10), 0o644, t(31));
        mkdir(root, "sub/olddir");
        put(root, "sub/olddir/f.txt", &pattern(203, 4 << 10), 0o644, t(32));
        set_mtime(&root.join("sub/olddir"), t(33));
    }
    for (rel, mode, i) in [
        ("sub/deep", 0o700, 20),
        ("sub", 0o750, 21),
        ("v", 0o755, 22),
        ("", 0o755, 23),
    ] {
        let p = root.join(rel);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod dir");
        set_mtime(&p, t(i));
    }
    freeze_atimes(root);
}

/// Outside SRC, on the same filesystem: secret content, the symlinks that are swapped in, and
/// an intruding regular file.
fn build_outside(out: &Path) -> Vec<[u8; 32]> {
    let mut secrets = Vec::new();
    let mut secret = |p: PathBuf, seed: u64, len: usize| {
        let mut data = b"SECRET outside SRC ".to_vec();
        data.extend(pattern(seed, len));
        std::fs::write(&p, &data).expect("write secret");
        secrets.push(Sha256::digest(&data).into());
    };
    std::fs::create_dir_all(out.join("secretdir/deep")).expect("mkdir");
    secret(out.join("secret.txt"), 900, 64 << 10);
    secret(out.join("secretdir/x.txt"), 901, 5 << 10);
    secret(out.join("secretdir/y.bin"), 902, 300 << 10);
    secret(out.join("secretdir/deep/z.txt"), 903, 1 << 10);
    std::os::unix::fs::symlink(out.join("secret.txt"), out.join("swap-link")).expect("symlink");
    std::os::unix::fs::symlink(out.join("secretdir"), out.join("swap-dir")).expect("symlink");
    put(
        out,
        "intruder.bin",
        &pattern(904, 700 << 10),
        0o644,
        (1_650_000_000, 42),
    );
    // What is swapped into SRC must not have its atime moved by being read (readlink has no
    // O_NOATIME): future atimes, as in SRC.
    freeze_atimes(out);
    secrets
}

// ---------------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmd {
    CopyEmpty,
    CopyOld,
    /// `--engine auto`: a small plan is applied on the sync engine (pread).
    Mirror,
    /// `--engine uring`: through the ring, like `copy` and `send`.
    MirrorUring,
    SendRecv,
}

const CMDS: [Cmd; 5] = [
    Cmd::CopyEmpty,
    Cmd::CopyOld,
    Cmd::Mirror,
    Cmd::MirrorUring,
    Cmd::SendRecv,
];

impl Cmd {
    fn name(self) -> &'static str {
        match self {
            Cmd::CopyEmpty => "copy into an empty DST",
            Cmd::CopyOld => "copy into DST holding OLD",
            Cmd::Mirror => "mirror into DST holding OLD",
            Cmd::MirrorUring => "mirror --engine uring into DST holding OLD",
            Cmd::SendRecv => "send | receive into DST holding OLD",
        }
    }

    fn shell(self) -> &'static str {
        match self {
            Cmd::CopyEmpty | Cmd::CopyOld => "ringsync copy -q MNT DST",
            Cmd::Mirror => "ringsync mirror -q MNT DST",
            Cmd::MirrorUring => "ringsync mirror -q --engine uring MNT DST",
            Cmd::SendRecv => "ringsync send -q MNT | ringsync receive -q DST",
        }
    }

    /// Never deletes: DST may keep entries SRC lacks.
    fn keeps_extras(self) -> bool {
        matches!(self, Cmd::CopyEmpty | Cmd::CopyOld)
    }

    /// Keeps the mirror record on DST's root.
    fn records(self) -> bool {
        matches!(self, Cmd::Mirror | Cmd::MirrorUring | Cmd::SendRecv)
    }
}

/// Exit codes (one, or send's and receive's) and the stderr of all.
#[derive(Debug)]
struct Outcome {
    codes: Vec<Option<i32>>,
    stderr: String,
}

fn ringsync_cmd(args: &[&OsStr], stderr: Stdio) -> Command {
    let mut c = Command::new(bin());
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    default_signals(&mut c);
    c
}

fn run_cmd(cmd: Cmd, src: &Path, dst: &Path) -> Outcome {
    let (src, dst) = (src.as_os_str(), dst.as_os_str());
    match cmd {
        Cmd::CopyEmpty | Cmd::CopyOld | Cmd::Mirror | Cmd::MirrorUring => {
            let mut args = match cmd {
                Cmd::Mirror => vec![OsStr::new("mirror"), OsStr::new("-q")],
                Cmd::MirrorUring => vec![
                    OsStr::new("mirror"),
                    OsStr::new("-q"),
                    OsStr::new("--engine"),
                    OsStr::new("uring"),
                ],
                _ => vec![OsStr::new("copy"), OsStr::new("-q")],
            };
            args.extend([src, dst]);
            let (f, e) = err_file();
            let c = ringsync_cmd(&args, e).spawn().expect("spawn ringsync");
            let codes = wait_all(&mut [("ringsync", c)], cmd.shell(), DEADLINE);
            Outcome {
                codes,
                stderr: read_back(f),
            }
        }
        Cmd::SendRecv => {
            let (sf, se) = err_file();
            let (rf, re) = err_file();
            let mut send = ringsync_cmd(&[OsStr::new("send"), OsStr::new("-q"), src], se)
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn send");
            let pipe = send.stdout.take().expect("send's stdout");
            let recv = ringsync_cmd(&[OsStr::new("receive"), OsStr::new("-q"), dst], re)
                .stdin(Stdio::from(pipe))
                .spawn()
                .expect("spawn receive");
            let codes = wait_all(&mut [("send", send), ("receive", recv)], cmd.shell(), DEADLINE);
            Outcome {
                codes,
                stderr: format!(
                    "--- send ---\n{}--- receive ---\n{}",
                    read_back(sf),
                    read_back(rf)
                ),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The checks (pure functions of oracle scans, so that the self-test can feed them)
// ---------------------------------------------------------------------------------------------

fn under(p: &[u8], focus: &[u8]) -> bool {
    p == focus || (p.starts_with(focus) && p.get(focus.len()) == Some(&b'/'))
}

/// The entries of `t` at `focus` and below it.
fn subtree(t: &Tree, focus: &[u8]) -> Tree {
    Tree {
        entries: t
            .entries
            .iter()
            .filter(|(p, _)| under(p, focus))
            .map(|(p, e)| (p.clone(), e.clone()))
            .collect(),
    }
}

/// `t` without the subtrees `cut` and without the entries `drop` (their own, not below them).
fn minus(t: &Tree, cut: &[&[u8]], drop: &[Vec<u8>]) -> Tree {
    Tree {
        entries: t
            .entries
            .iter()
            .filter(|(p, _)| !cut.iter().any(|c| under(p, c)) && !drop.iter().any(|d| d == *p))
            .map(|(p, e)| (p.clone(), e.clone()))
            .collect(),
    }
}

fn exact() -> CompareOpts {
    CompareOpts::default()
}

/// What an entry is, and which version's content it has.
fn describe_entry(e: Option<&Entry>, versions: &[(&str, &Tree)], p: &[u8]) -> String {
    let Some(e) = e else {
        return "absent".into();
    };
    let mut s = format!(
        "{:?}, {} bytes, mtime {}.{:09}",
        e.kind, e.size, e.mtime.0, e.mtime.1
    );
    if e.kind == Kind::File && !versions.is_empty() {
        let same: Vec<&str> = versions
            .iter()
            .filter(|(_, t)| {
                t.entries
                    .get(p)
                    .is_some_and(|x| x.kind == Kind::File && x.hash == e.hash)
            })
            .map(|(n, _)| *n)
            .collect();
        if same.is_empty() {
            s.push_str(", content of no version (a mix or a torn file)");
        } else {
            s.push_str(&format!(", content of {}", same.join("/")));
        }
    } else if let Some(t) = &e.target {
        s.push_str(&format!(" -> {}", show(t)));
    }
    s
}

fn describe_focus(t: &Tree, versions: &[(&str, &Tree)]) -> String {
    if t.entries.is_empty() {
        return "absent".into();
    }
    t.entries
        .iter()
        .map(|(p, e)| format!("{}: {}", show(p), describe_entry(Some(e), versions, p)))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The focus (a file or a subtree) in DST (`after`) is exactly as DST had it (`before`: OLD,
/// or absent), or exactly as SRC has it now (`new`), content and metadata.
fn focus_old_or_new(
    before: &Tree,
    walked: &Tree,
    new: &Tree,
    after: &Tree,
    focus: &[u8],
) -> Result<&'static str, String> {
    let (b, n, a) = (subtree(before, focus), subtree(new, focus), subtree(after, focus));
    if compare_scanned(&b, &a, &exact()).is_empty() {
        return Ok(if b.entries.is_empty() {
            "absent, as before"
        } else {
            "OLD"
        });
    }
    if compare_scanned(&n, &a, &exact()).is_empty() {
        return Ok(if n.entries.is_empty() {
            "absent, as in SRC now"
        } else {
            "NEW"
        });
    }
    let w = subtree(walked, focus);
    let versions = [("OLD", &b), ("WALKED", &w), ("NEW", &n)];
    Err(format!(
        "{} is neither OLD nor NEW. DST holds: {}. OLD: {}. WALKED (SRC at the walk): {}. NEW (SRC now): {}. \
         Differences from NEW: {}",
        show(focus),
        describe_focus(&a, &versions),
        describe_focus(&b, &[]),
        describe_focus(&w, &[]),
        describe_focus(&n, &[]),
        compare_scanned(&n, &a, &exact()).join("; ")
    ))
}

/// Every entry DST holds at or below `focus` is exactly (content and metadata) its OLD version
/// (as DST had it), the version the walk saw, or SRC's version now. With `partial` (the run
/// reported an error), a directory's times are not held to that: a partial run may have changed
/// the directory (a deletion in it) and stopped before setting them (docs/mirror.md: a rerun
/// converges).
fn focus_each_known(
    before: &Tree,
    walked: &Tree,
    new: &Tree,
    after: &Tree,
    focus: &[u8],
    partial: bool,
) -> Vec<String> {
    let one = |t: &Tree, p: &[u8]| Tree {
        entries: t
            .entries
            .get(p)
            .map(|e| (p.to_vec(), e.clone()))
            .into_iter()
            .collect(),
    };
    let mut bad = Vec::new();
    for p in subtree(after, focus).entries.keys() {
        let a = one(after, p);
        let ok = [before, walked, new].iter().any(|t| {
            let Some(v) = t.entries.get(p) else {
                return false;
            };
            let mut a = a.clone();
            if let Some(e) = a
                .entries
                .get_mut(p)
                .filter(|e| partial && e.kind == Kind::Dir && v.kind == Kind::Dir)
            {
                (e.mtime, e.atime) = (v.mtime, v.atime);
            }
            compare_scanned(&one(t, p), &a, &exact()).is_empty()
        });
        if !ok {
            let versions = [("OLD", before), ("WALKED", walked), ("NEW", new)];
            bad.push(format!(
                "{}: {} is none of OLD ({}), WALKED ({}), NEW ({}); differences from NEW: {}",
                show(p),
                describe_entry(after.entries.get(p), &versions, p),
                describe_entry(before.entries.get(p), &[], p),
                describe_entry(walked.entries.get(p), &[], p),
                describe_entry(new.entries.get(p), &[], p),
                compare_scanned(&one(new, p), &a, &exact()).join("; ")
            ));
        }
    }
    bad
}

/// Nothing DST had at or below `focus` was deleted or changed (the focus directory's own
/// attributes aside: they come from its stat, which may have worked).
fn focus_untouched(before: &Tree, after: &Tree, focus: &[u8]) -> Vec<String> {
    let own_dir = before.entries.get(focus).is_some_and(|e| e.kind == Kind::Dir);
    let drop: Vec<Vec<u8>> = if own_dir { vec![focus.to_vec()] } else { Vec::new() };
    let b = minus(&subtree(before, focus), &[], &drop);
    let a = minus(&subtree(after, focus), &[], &drop);
    let opts = CompareOpts {
        allow_extra_in_b: true,
        ..exact()
    };
    let mut d = compare_scanned(&b, &a, &opts);
    if own_dir && after.entries.get(focus).map(|e| e.kind) != Some(Kind::Dir) {
        d.push(format!(
            "{}: the directory itself is gone or replaced",
            show(focus)
        ));
    }
    d
}

/// Every entry the fault does not concern is exact: SRC now (`new`) against DST, without the
/// subtrees `cut` and the entries `loose` (whose own attributes changed in SRC after the walk).
fn others_exact(
    new: &Tree,
    after: &Tree,
    cut: &[&[u8]],
    loose: &[Vec<u8>],
    keeps_extras: bool,
) -> Vec<String> {
    let opts = CompareOpts {
        allow_extra_in_b: keeps_extras,
        ..mirror_cmp()
    };
    compare_scanned(&minus(new, cut, loose), &minus(after, cut, loose), &opts)
}

/// Regular files in DST whose content is a secret from outside SRC.
fn leaked(after: &Tree, secrets: &[[u8; 32]]) -> Vec<String> {
    after
        .entries
        .iter()
        .filter(|(_, e)| e.kind == Kind::File && e.hash.is_some_and(|h| secrets.contains(&h)))
        .map(|(p, _)| format!("{}: holds secret content from OUTSIDE SRC", show(p)))
        .collect()
}

/// Temporary names left in DST (a run that ended by itself must remove them all).
fn temps(after: &Tree) -> Vec<String> {
    after
        .entries
        .keys()
        .filter(|p| p.split(|&b| b == b'/').any(|c| c.starts_with(b".ringsync")))
        .map(|p| format!("{}: temporary name left in DST", show(p)))
        .collect()
}

/// Lines of `stderr` naming `focus`.
fn naming(stderr: &str, focus: &[u8]) -> Vec<String> {
    let f = String::from_utf8_lossy(focus).into_owned();
    stderr
        .lines()
        .filter(|l| l.contains(&f))
        .map(str::to_string)
        .collect()
}

fn record_state(dst: &Path) -> Option<String> {
    read_record_json(dst).and_then(|v| v["state"].as_str().map(str::to_string))
}

fn scan_or_empty(p: &Path) -> Tree {
    if p.exists() {
        scan_tree(p, true).unwrap_or_else(|e| panic!("oracle scan of {}: {e}", p.display()))
    } else {
        Tree::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------------------------

/// A fresh scratch directory with SRC (backing), OUTSIDE, DST (OLD or nothing) and the mount.
struct Fx {
    /// Declared first: unmounted before the scratch directory is removed.
    fs: FuseSrc,
    back: PathBuf,
    outside: PathBuf,
    dst: PathBuf,
    secrets: Vec<[u8; 32]>,
    _tmp: tempfile::TempDir,
}

fn fixture(tag: &str, cmd: Cmd) -> Result<Fx, String> {
    let tmp = scratch(&format!("fuse-{tag}"));
    let back = tmp.path().join("src");
    let outside = tmp.path().join("outside");
    let dst = tmp.path().join("dst");
    build_tree(&back, false);
    let secrets = build_outside(&outside);
    if cmd != Cmd::CopyEmpty {
        build_tree(&dst, true);
    }
    let fs = FuseSrc::mount(&back, &outside, &tmp.path().join("mnt"))?;
    Ok(Fx {
        fs,
        back,
        outside,
        dst,
        secrets,
        _tmp: tmp,
    })
}

/// Rules: (relative path, fault).
type Rules = Vec<(Vec<u8>, Fault)>;
/// Rules that need the fixture (paths outside SRC).
type Extra = Box<dyn Fn(&Fx) -> Rules>;

/// How the entry (or subtree) the fault concerns may end in DST.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Focus {
    /// Exactly OLD (or absent where DST had nothing), or exactly NEW: never a mix.
    OldOrNew,
    /// Each entry exactly OLD, as walked, or NEW (a swap: what was walked may be copied whole).
    EachKnown,
    /// Nothing DST had there deleted or changed (the walk failed there).
    Untouched,
    /// No fault: all exact.
    Exact,
}

struct Case {
    label: String,
    cmd: Cmd,
    /// Serve files through the page cache, not `direct_io`.
    cached: bool,
    rules: Rules,
    focus: Vec<u8>,
    how: Focus,
    /// Entries whose own attributes the fault changes in SRC after the walk (the parent of an
    /// entry unlinked or renamed over): not held to exactness by the faulty run.
    loose: Vec<Vec<u8>>,
    /// Allowed exit codes of copy, mirror or send; of receive.
    codes: &'static [i32],
    recv_codes: &'static [i32],
    /// A line of stderr must name the focus.
    report: bool,
}

/// What one case found: problems (failures) and observations.
#[derive(Default)]
struct Found {
    problems: Vec<String>,
    notes: Vec<String>,
    /// Lookups of the swapped name in the faulty run (`SwapOnLookup`).
    lookups: u32,
}

/// Run one case: the faulty run, its checks, then the rerun without faults and convergence.
/// `Err` is a reason to skip (the mount).
fn run_case(tag: &str, case: &Case, build_rules: &dyn Fn(&Fx) -> Rules) -> Result<Found, String> {
    let fx = fixture(tag, case.cmd)?;
    let mnt = fx.fs.mnt.clone();
    let mut rules = case.rules.clone();
    rules.extend(build_rules(&fx));
    fx.fs.set_cached(case.cached);
    let walked = scan_or_empty(&fx.back);
    let before = scan_or_empty(&fx.dst);
    for (p, f) in &rules {
        fx.fs.set(p, f.clone());
    }
    let t0 = Instant::now();
    let out = run_cmd(case.cmd, &mnt, &fx.dst);
    let took = t0.elapsed();
    let fired = fx.fs.all_fired();
    let lookups = fx.fs.lookups_seen();
    let events = fx.fs.events();
    fx.fs.clear();
    let new = scan_or_empty(&fx.back);
    let after = scan_or_empty(&fx.dst);
    let mut p = Vec::new();
    let mut notes = Vec::new();

    // Exit codes.
    let codes: Vec<i32> = out.codes.iter().map(|c| c.unwrap_or(-1)).collect();
    let allowed = |i: usize| if i == 0 { case.codes } else { case.recv_codes };
    for (i, c) in codes.iter().enumerate() {
        if !allowed(i).contains(c) {
            p.push(format!(
                "exit status {c} of {} (allowed: {:?})",
                if i == 0 { "the command" } else { "receive" },
                allowed(i)
            ));
        }
    }
    let clean_exit = codes.iter().all(|&c| c == 0);
    // The report.
    let named = naming(&out.stderr, &case.focus);
    if case.report && named.is_empty() {
        p.push(format!("no line of stderr names {}", show(&case.focus)));
    }
    if case.report && case.cmd != Cmd::SendRecv && named.len() > 1 {
        notes.push(format!(
            "{} lines name {}: {named:?}",
            named.len(),
            show(&case.focus)
        ));
    }
    if out.stderr.contains("panicked") {
        p.push("ringsync panicked".into());
    }
    // The focus.
    match case.how {
        Focus::OldOrNew => match focus_old_or_new(&before, &walked, &new, &after, &case.focus) {
            Ok(v) => notes.push(format!("exit {codes:?}, {} ended {v}", show(&case.focus))),
            Err(e) => p.push(e),
        },
        Focus::EachKnown => {
            p.extend(focus_each_known(
                &before,
                &walked,
                &new,
                &after,
                &case.focus,
                !clean_exit,
            ));
            let versions = [("OLD", &before), ("WALKED", &walked), ("NEW", &new)];
            let own = after.entries.get(case.focus.as_slice());
            notes.push(format!(
                "exit {codes:?}, {} ended {}; said: {:?}",
                show(&case.focus),
                describe_entry(own, &versions, &case.focus),
                named.first()
            ));
        }
        Focus::Untouched => {
            if case.cmd != Cmd::CopyEmpty {
                p.extend(focus_untouched(&before, &after, &case.focus));
            }
        }
        Focus::Exact => {}
    }
    // Everything else.
    let cut: Vec<&[u8]> = match case.how {
        Focus::Exact => vec![],
        _ => vec![&case.focus],
    };
    let mut loose = case.loose.clone();
    let gone = b"gone.txt".to_vec();
    if case.how == Focus::Untouched && matches!(case.cmd, Cmd::Mirror | Cmd::MirrorUring) {
        // An error walking SRC makes mirror delete nothing (rsync's rule), outside the failed
        // part too.
        if !after.entries.contains_key(&gone) {
            p.push("gone.txt (outside the failed part, SRC lacks it) deleted by a mirror whose walk of SRC failed".into());
        }
        loose.push(gone.clone());
    } else if case.how == Focus::Untouched && case.cmd.records() {
        // receive: outside the failed part, an entry SRC lacks: observed, not required.
        notes.push(format!(
            "gone.txt (outside the failed part, SRC lacks it) {} by the run that reported an error",
            if after.entries.contains_key(&gone) {
                "kept"
            } else {
                "deleted"
            }
        ));
        loose.push(gone);
    }
    // A mirror that met an error reading SRC deletes nothing that run (rsync's rule): entries
    // SRC lacks may stay until the rerun (which must converge).
    let extras_ok =
        case.cmd.keeps_extras() || (matches!(case.cmd, Cmd::Mirror | Cmd::MirrorUring) && !clean_exit);
    p.extend(others_exact(&new, &after, &cut, &loose, extras_ok));
    p.extend(leaked(&after, &fx.secrets));
    p.extend(temps(&after));
    if case.cmd.records() {
        let st = record_state(&fx.dst);
        if clean_exit && st.as_deref() != Some("clean") {
            p.push(format!("exit 0 but the record's state is {st:?}"));
        }
        // docs/mirror.md: a run without errors marks DST clean; a vanished source entry (exit 5)
        // is no error. An error (exit 3) must leave it dirty.
        let errors = codes.iter().any(|&c| c != 0 && c != 5);
        if errors && st.as_deref() == Some("clean") {
            p.push(format!("exit {codes:?} but the record says \"clean\""));
        }
        if !clean_exit && !errors && st.as_deref() == Some("clean") {
            notes.push(format!(
                "exit {codes:?} (vanished) and the record says \"clean\" (documented)"
            ));
        }
    }
    if !fired {
        notes.push("a one-shot rule never struck (fewer lookups or reads than it waits for)".into());
    }

    // The rerun, without faults: it must converge.
    let again = run_cmd(case.cmd, &mnt, &fx.dst);
    let new2 = scan_or_empty(&fx.back);
    let after2 = scan_or_empty(&fx.dst);
    let mut q = Vec::new();
    let codes2: Vec<i32> = again.codes.iter().map(|c| c.unwrap_or(-1)).collect();
    let dir_over = case.cmd.keeps_extras()
        && codes2 == [3]
        && again.stderr.contains("Directory not empty")
        && after2
            .entries
            .get(case.focus.as_slice())
            .is_some_and(|e| e.kind == Kind::Dir)
        && new2
            .entries
            .get(case.focus.as_slice())
            .is_some_and(|e| e.kind != Kind::Dir);
    if dir_over {
        // docs/copy.md: copy never deletes, so a non-empty directory where SRC now has a
        // non-directory stays (exit 3). A mirror then converges.
        notes.push(
            "copy rerun: directory where SRC has a symlink kept (documented); converged by mirror".into(),
        );
        let m = run_cmd(Cmd::Mirror, &mnt, &fx.dst);
        if m.codes != [Some(0)] {
            q.push(format!(
                "mirror after the copy rerun: exit {:?}\n{}",
                m.codes, m.stderr
            ));
        }
        q.extend(others_exact(&new2, &scan_or_empty(&fx.dst), &[], &[], false));
    } else {
        if codes2.iter().any(|&c| c != 0) {
            q.push(format!(
                "rerun exit {codes2:?}\n    rerun stderr: {}",
                again.stderr.trim()
            ));
        }
        q.extend(others_exact(&new2, &after2, &[], &[], case.cmd.keeps_extras()));
        q.extend(temps(&after2));
        if case.cmd.records() && record_state(&fx.dst).as_deref() != Some("clean") {
            q.push(format!("rerun: record state {:?}", record_state(&fx.dst)));
        }
    }
    let mut found = Found {
        lookups,
        problems: Vec::new(),
        notes: notes
            .into_iter()
            .map(|n| format!("[{}] {}: {n}", case.label, case.cmd.name()))
            .collect(),
    };
    if !p.is_empty() || !q.is_empty() {
        let rules_s: Vec<String> = rules
            .iter()
            .map(|(p, f)| format!("{f:?} on {}", show(p)))
            .collect();
        let mut s = format!(
            "[{}] {} (`{}`, rules: {}), exit {codes:?} after {took:?}:\n",
            case.label,
            case.cmd.name(),
            case.cmd.shell(),
            rules_s.join(", ")
        );
        for x in &p {
            s.push_str(&format!("  - {x}\n"));
        }
        for x in &q {
            s.push_str(&format!("  - after the rerun without faults: {x}\n"));
        }
        s.push_str(&format!(
            "  stderr:\n    {}\n",
            out.stderr.trim().replace('\n', "\n    ")
        ));
        s.push_str(&format!("  filesystem events:\n{events}"));
        found.problems.push(s);
    }
    Ok(found)
}

/// Run cases; print notes; panic with every problem. Returns false when skipped.
fn run_all(test: &str, cases: Vec<(Case, Extra)>) {
    let t0 = Instant::now();
    let mut problems = Vec::new();
    let n = cases.len();
    for (i, (case, extra)) in cases.into_iter().enumerate() {
        match run_case(&format!("{test}-{i}"), &case, &*extra) {
            Ok(f) => {
                for x in &f.notes {
                    println!("{x}");
                }
                problems.extend(f.problems);
            }
            Err(reason) => {
                skip_or_fail(&reason);
                return;
            }
        }
    }
    note(&format!(
        "{test}: {n} cases in {:.1?}, {} failing",
        t0.elapsed(),
        problems.len()
    ));
    if !problems.is_empty() {
        panic!(
            "{test}: {} of {n} cases failed:\n{}",
            problems.len(),
            problems.join("\n")
        );
    }
}

fn no_rules() -> Extra {
    Box::new(|_| Vec::new())
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// No fault: every command through the mount ends exact (the passthrough is faithful).
#[test]
fn fuse_clean_runs_exact() {
    let cases: Vec<(Case, Extra)> = CMDS
        .iter()
        .map(|&cmd| {
            let c = Case {
                label: "no fault".into(),
                cmd,
                cached: false,
                rules: vec![],
                focus: b".".to_vec(),
                how: Focus::Exact,
                loose: vec![],
                codes: &[0],
                recv_codes: &[0],
                report: false,
            };
            (c, no_rules())
        })
        .collect();
    run_all("fuse_clean_runs_exact", cases);
}

/// EIO from a read at 1.25 MiB of a 2 MiB file, the file served `direct_io` (the reads reach the
/// filesystem as asked) or through the page cache (readahead): not published (OLD kept, or
/// nothing), exit 3, a message naming it; everything else exact.
#[test]
fn fuse_read_error() {
    let mut cases: Vec<(Case, Extra)> = Vec::new();
    for cached in [false, true] {
        for cmd in CMDS {
            let c = Case {
                label: format!(
                    "read error (EIO) at 1.25 MiB, {}",
                    if cached { "page cache" } else { "direct_io" }
                ),
                cmd,
                cached,
                rules: vec![(VICTIM.to_vec(), Fault::ReadError { at: STRIKE })],
                focus: VICTIM.to_vec(),
                how: Focus::OldOrNew,
                loose: vec![],
                codes: &[3],
                recv_codes: &[3],
                report: true,
            };
            cases.push((c, no_rules()));
        }
    }
    run_all("fuse_read_error", cases);
}

/// A directory of SRC that cannot be read, one that cannot be looked up, a file that cannot be
/// stat'ed: nothing DST has there is deleted or changed, exit 3, not clean.
#[test]
fn fuse_walk_errors() {
    let mut cases: Vec<(Case, Extra)> = Vec::new();
    for (label, path, fault) in [
        ("readdir error (EIO) on sub", &b"sub"[..], Fault::ReaddirError),
        (
            "lookup/getattr error (EIO) on the directory sub",
            b"sub",
            Fault::StatError,
        ),
        (
            "lookup/getattr error (EIO) on the file sub/x.txt",
            b"sub/x.txt",
            Fault::StatError,
        ),
    ] {
        for cmd in CMDS {
            let c = Case {
                label: label.into(),
                cmd,
                cached: false,
                rules: vec![(path.to_vec(), fault.clone())],
                focus: path.to_vec(),
                how: Focus::Untouched,
                loose: vec![],
                codes: &[3],
                recv_codes: &[3],
                report: true,
            };
            cases.push((c, no_rules()));
        }
    }
    run_all("fuse_walk_errors", cases);
}

/// The file changes while it is read (the filesystem changes the backing file when a read
/// first reaches 1.25 MiB, then serves that read from the changed file): never published as a
/// mix; exit 3 or 5 with a message naming it; a rerun converges.
#[test]
fn fuse_mutate_while_read() {
    let mut cases: Vec<(Case, Extra)> = Vec::new();
    for how in [
        Mutation::Grow,
        Mutation::Shrink,
        Mutation::Vanish,
        Mutation::Rewrite,
        Mutation::Symlink,
    ] {
        for cmd in CMDS {
            let c = Case {
                label: format!("{how:?} while read, at 1.25 MiB"),
                cmd,
                cached: false,
                rules: vec![(VICTIM.to_vec(), Fault::Mutate { at: STRIKE, how })],
                focus: VICTIM.to_vec(),
                how: Focus::OldOrNew,
                loose: if matches!(how, Mutation::Vanish | Mutation::Symlink) {
                    vec![b"v".to_vec()]
                } else {
                    vec![]
                },
                codes: &[3, 5],
                recv_codes: &[0, 3],
                report: true,
            };
            cases.push((c, no_rules()));
        }
    }
    run_all("fuse_mutate_while_read", cases);
}

/// Between the walk and the open: at the nth lookup of the name (n = 1, 2, ... as long as the
/// command looks the name up again after it: the walk's stat, the open, a sender's surveys),
/// it is swapped for a symlink to a secret file outside SRC, a directory for a symlink to a
/// secret directory, or a file for a regular file from outside. No secret byte may reach DST,
/// and what is there is OLD, as walked, or NEW, never a mix.
#[test]
fn fuse_swap_before_open() {
    let test = "fuse_swap_before_open";
    let t0 = Instant::now();
    let (mut problems, mut n) = (Vec::new(), 0);
    for (label, path, with, exchange, parent) in [
        (
            "file swapped for a symlink to a secret outside SRC",
            VICTIM,
            "swap-link",
            false,
            &b"v"[..],
        ),
        (
            "directory sub swapped for a symlink to a secret directory",
            b"sub",
            "swap-dir",
            true,
            b".",
        ),
        (
            "file replaced by a regular file from outside",
            VICTIM,
            "intruder.bin",
            false,
            b"v",
        ),
    ] {
        for cmd in CMDS {
            let mut nth = 1u32;
            loop {
                let c = Case {
                    label: format!("{label}, at lookup #{nth}"),
                    cmd,
                    cached: false,
                    rules: vec![],
                    focus: path.to_vec(),
                    how: Focus::EachKnown,
                    loose: vec![parent.to_vec()],
                    codes: &[0, 3, 5],
                    recv_codes: &[0, 3],
                    report: false,
                };
                let p = path.to_vec();
                let extra = move |fx: &Fx| {
                    vec![(
                        p.clone(),
                        Fault::SwapOnLookup {
                            nth,
                            with: fx.outside.join(with),
                            exchange,
                        },
                    )]
                };
                let found = match run_case(&format!("{test}-{n}"), &c, &extra) {
                    Ok(f) => f,
                    Err(reason) => return skip_or_fail(&reason),
                };
                n += 1;
                for x in &found.notes {
                    println!("{x}");
                }
                problems.extend(found.problems);
                // Another lookup came after the swap: try the swap there too.
                if found.lookups <= nth || nth >= 8 {
                    break;
                }
                nth += 1;
            }
        }
    }
    note(&format!(
        "{test}: {n} cases in {:.1?}, {} failing",
        t0.elapsed(),
        problems.len()
    ));
    if !problems.is_empty() {
        panic!(
            "{test}: {} of {n} cases failed:\n{}",
            problems.len(),
            problems.join("\n")
        );
    }
}

/// Every read of one file answered 200 ms late: the run still ends exact.
#[test]
fn fuse_delay() {
    let cases: Vec<(Case, Extra)> = CMDS
        .iter()
        .map(|&cmd| {
            let c = Case {
                label: "200 ms per read".into(),
                cmd,
                cached: false,
                rules: vec![(SLOW.to_vec(), Fault::Delay(Duration::from_millis(200)))],
                focus: SLOW.to_vec(),
                how: Focus::Exact,
                loose: vec![],
                codes: &[0],
                recv_codes: &[0],
                report: false,
            };
            (c, no_rules())
        })
        .collect();
    run_all("fuse_delay", cases);
}

/// The checks can fail, and the faults reach a reader through the mount.
#[test]
fn fuse_fault_selftest() {
    let fx = match fixture("selftest", Cmd::CopyOld) {
        Ok(fx) => fx,
        Err(reason) => return skip_or_fail(&reason),
    };
    let mnt = fx.fs.mnt.clone();
    let m = |rel: &str| mnt.join(rel);
    let victim = m("v/victim.bin");
    let v1 = victim_bytes(false);

    // Passthrough: bytes, attributes, xattrs, symlinks, hardlinks.
    assert_eq!(std::fs::read(&victim).expect("read victim"), v1);
    {
        use std::os::unix::fs::MetadataExt;
        let (a, b) = (
            std::fs::metadata(m("h1")).unwrap(),
            std::fs::metadata(m("h2")).unwrap(),
        );
        assert_eq!((a.ino(), a.nlink()), (b.ino(), 2), "hardlinks through the mount");
        let back = std::fs::metadata(fx.back.join("top.txt")).unwrap();
        let through = std::fs::metadata(m("top.txt")).unwrap();
        assert_eq!(
            (
                back.mtime(),
                back.mtime_nsec(),
                back.atime_nsec(),
                back.ctime_nsec(),
                back.mode()
            ),
            (
                through.mtime(),
                through.mtime_nsec(),
                through.atime_nsec(),
                through.ctime_nsec(),
                through.mode()
            )
        );
    }
    assert_eq!(std::fs::read_link(m("link")).unwrap(), Path::new("top.txt"));
    let mut buf = [0u8; 16];
    let n = rustix::fs::getxattr(m("top.txt"), "user.note", &mut buf).expect("getxattr through the mount");
    assert_eq!(&buf[..n], b"top");

    // A read error at 1.25 MiB: bytes before it read, the read covering it fails.
    fx.fs.set(VICTIM, Fault::ReadError { at: STRIKE });
    let f = File::open(&victim).unwrap();
    let mut b = vec![0u8; 4096];
    assert!(f.read_at(&mut b, 0).is_ok());
    let e = f
        .read_at(&mut b, STRIKE)
        .expect_err("read at the strike must fail");
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    drop(f);
    fx.fs.clear();

    // Walk errors.
    fx.fs.set(b"sub", Fault::ReaddirError);
    let e = std::fs::read_dir(m("sub"))
        .and_then(|mut d| d.try_for_each(|x| x.map(drop)))
        .expect_err("readdir");
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    fx.fs.clear();
    fx.fs.set(b"sub/x.txt", Fault::StatError);
    let e = std::fs::symlink_metadata(m("sub/x.txt")).expect_err("stat");
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    fx.fs.clear();

    // A same-size rewrite at 1.25 MiB: the reader gets a mix; the backing file keeps its mtime.
    let mtime_before = std::fs::metadata(fx.back.join("v/victim.bin"))
        .unwrap()
        .modified()
        .unwrap();
    fx.fs.set(
        VICTIM,
        Fault::Mutate {
            at: STRIKE,
            how: Mutation::Rewrite,
        },
    );
    let got = std::fs::read(&victim).unwrap();
    fx.fs.clear();
    let now = std::fs::read(fx.back.join("v/victim.bin")).unwrap();
    assert_eq!(got.len(), v1.len());
    assert_ne!(got, v1, "the rewrite must show in the read");
    assert_ne!(got, now, "the read must be a mix of both versions");
    assert_eq!(got[..4096], v1[..4096]);
    assert_eq!(got[got.len() - 4096..], now[now.len() - 4096..]);
    assert_eq!(
        std::fs::metadata(fx.back.join("v/victim.bin"))
            .unwrap()
            .modified()
            .unwrap(),
        mtime_before
    );

    // A swap at the first lookup: the name is a symlink out of SRC.
    fx.fs.set(
        b"top.txt",
        Fault::SwapOnLookup {
            nth: 1,
            with: fx.outside.join("swap-link"),
            exchange: false,
        },
    );
    assert!(std::fs::symlink_metadata(m("top.txt"))
        .unwrap()
        .file_type()
        .is_symlink());
    fx.fs.clear();
    drop(fx);

    // The pure checks, fed made-up outcomes.
    let tmp = scratch("fuse-selftest-trees");
    let (src, old) = (tmp.path().join("src"), tmp.path().join("old"));
    build_tree(&src, false);
    build_tree(&old, true);
    let walked = scan_tree(&src, true).unwrap();
    let before = scan_tree(&old, true).unwrap();
    let with = |t: &Tree, p: &[u8], f: &dyn Fn(&mut Entry)| {
        let mut t = t.clone();
        f(t.entries.get_mut(p).expect("entry"));
        t
    };
    // OLD kept and NEW published pass; a mix, a stale (walked) copy of a grown file fail.
    assert_eq!(
        focus_old_or_new(&before, &walked, &walked, &before, VICTIM),
        Ok("OLD")
    );
    assert_eq!(
        focus_old_or_new(&before, &walked, &walked, &walked, VICTIM),
        Ok("NEW")
    );
    let mixed = with(&before, VICTIM, &|e| e.hash = Some([7; 32]));
    assert!(focus_old_or_new(&before, &walked, &walked, &mixed, VICTIM).is_err());
    let grown = with(&walked, VICTIM, &|e| {
        e.size += 1;
        e.hash = Some([8; 32]);
    });
    assert!(focus_old_or_new(&before, &walked, &grown, &walked, VICTIM).is_err());
    let new_bytes_old_mtime = with(&grown, VICTIM, &|e| e.mtime = walked.entries[VICTIM].mtime);
    let grown_later = with(&grown, VICTIM, &|e| e.mtime.0 += 1);
    assert!(focus_old_or_new(&before, &walked, &grown_later, &new_bytes_old_mtime, VICTIM).is_err());
    assert!(!focus_each_known(&before, &walked, &walked, &mixed, VICTIM, true).is_empty());
    assert!(focus_each_known(&before, &walked, &walked, &before, VICTIM, false).is_empty());
    let touched = with(&before, b"sub", &|e| e.mtime.0 += 1);
    assert!(!focus_each_known(&before, &walked, &walked, &touched, b"sub", false).is_empty());
    assert!(focus_each_known(&before, &walked, &walked, &touched, b"sub", true).is_empty());
    // A deletion or change under a failed directory.
    let mut deleted = before.clone();
    deleted.entries.remove(b"sub/extra_old.txt".as_slice());
    assert!(!focus_untouched(&before, &deleted, b"sub").is_empty());
    assert!(focus_untouched(&before, &before, b"sub").is_empty());
    let rewritten = with(&before, b"sub/x.txt", &|e| {
        e.hash = walked.entries[&b"sub/x.txt".to_vec()].hash
    });
    assert!(!focus_untouched(&before, &rewritten, b"sub/x.txt").is_empty());
    // Anything else wrong.
    let off = with(&walked, b"v/neighbor.txt", &|e| e.mtime.1 += 1);
    assert!(!others_exact(&walked, &off, &[VICTIM], &[], false).is_empty());
    assert!(others_exact(&walked, &walked, &[VICTIM], &[], false).is_empty());
    let secrets = build_outside(&tmp.path().join("outside"));
    let leak = with(&walked, b"sub/y.bin", &|e| e.hash = Some(secrets[2]));
    assert!(!leaked(&leak, &secrets).is_empty());
    assert!(leaked(&walked, &secrets).is_empty());
    let mut tmpname = walked.clone();
    let e = tmpname.entries[VICTIM].clone();
    tmpname.entries.insert(b"v/.ringsync.1.2.tmp".to_vec(), e);
    assert!(!temps(&tmpname).is_empty());
    assert_eq!(
        naming("a\nringsync: /m/v/victim.bin: read: EIO\nb", VICTIM).len(),
        1
    );
}

/// A FUSE filesystem mounted *below* SRC (SRC itself on a local filesystem), a read of the
/// victim failing in part at 1.25 MiB (`direct_io`): io_uring reads of FUSE files can complete
/// as a success with other bytes (kernel 6.18, see `ring::uring_reads_trusted`), so a copy,
/// a mirror through the ring and a send that read it through the ring published a corrupt file
/// with exit 0. The victim is never published as anything but its bytes (here: not at all),
/// the run exits 3 naming it, every other file is exact.
#[test]
fn fuse_mount_below_src_read_error() {
    let tmp = scratch("fuse-below");
    let back = tmp.path().join("back");
    let outside = tmp.path().join("outside");
    let src = tmp.path().join("src");
    build_tree(&back, false);
    build_outside(&outside);
    std::fs::create_dir_all(src.join("m")).unwrap();
    std::fs::write(src.join("local.txt"), b"on the local filesystem\n").unwrap();
    let fs = match FuseSrc::mount(&back, &outside, &src.join("m")) {
        Ok(fs) => fs,
        Err(why) => return skip_or_fail(&format!("fuse_mount_below_src_read_error: {why}")),
    };
    fs.set_cached(false);
    let victim = [&b"m/"[..], VICTIM].concat();
    let mut problems = Vec::new();
    for cmd in [Cmd::CopyEmpty, Cmd::MirrorUring, Cmd::SendRecv] {
        let dst = tmp.path().join(format!("dst-{cmd:?}"));
        fs.set(VICTIM, Fault::ReadError { at: STRIKE });
        let out = run_cmd(cmd, &src, &dst);
        let fired = fs.all_fired();
        fs.clear();
        let what = cmd.shell().replace("MNT", "SRC (FUSE mounted at SRC/m)");
        if !fired {
            problems.push(format!("{what}: the read error never struck"));
        }
        let codes: Vec<i32> = out.codes.iter().map(|c| c.unwrap_or(-1)).collect();
        if codes.iter().any(|&c| c != 3) {
            problems.push(format!("{what}: exit {codes:?}, expected 3\n{}", out.stderr));
        }
        if naming(&out.stderr, &victim).is_empty() {
            problems.push(format!("{what}: no line names {}\n{}", show(&victim), out.stderr));
        }
        let want = scan_or_empty(&src);
        let got = scan_or_empty(&dst);
        // The victim: absent (DST was empty), never other bytes.
        if let Some(e) = got.entries.get(&victim) {
            problems.push(format!(
                "{what}: {} was published: {}",
                show(&victim),
                describe_entry(Some(e), &[("SRC", &want)], &victim)
            ));
        }
        // The root aside: it carries the mirror record, and the walks move SRC's atime.
        let root = [b".".to_vec()];
        let diffs = compare_scanned(
            &minus(&want, &[&victim], &root),
            &minus(&got, &[&victim], &root),
            &exact(),
        );
        if !diffs.is_empty() {
            problems.push(format!("{what}: other entries differ: {diffs:?}"));
        }
    }
    drop(fs);
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}
