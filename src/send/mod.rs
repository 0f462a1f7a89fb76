//! `ringsync send SRC`: the tree as a record stream (docs/stream.md) on stdout or into a file.
//!
//! One walk, depth first, names sorted bytewise in every directory, so the same tree always
//! gives the same records (resume depends on it). File data is read through the engine's ring
//! backend (io_uring or the pread fallback) into its bounded buffer pool, several reads in
//! flight per file, and written to the output straight from the pool buffers with their frames.
//! Holes are found with SEEK_DATA/SEEK_HOLE and not sent. A CHECKPOINT goes out between
//! entries every [`CHECKPOINT_BYTES`] of stream or [`CHECKPOINT_ENTRIES`] entries.
//!
//! An entry that cannot be read is sent as SKIPPED (the receiver keeps what it has under that
//! name and reports the run as incomplete); so is a file that changed while it was read
//! (size, mtime or ctime differ after the read): its staged copy is discarded by the receiver,
//! never published as a mix of two versions.
//!
//! Must not: write anything but the stream to its output; follow a symlink below SRC.

use std::collections::{HashMap, VecDeque};
use std::ffi::{CStr, CString};
use std::io::IsTerminal;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RawDir, SeekFrom, StatxFlags};
use rustix::io::Errno;

use crate::diff::{escape, join};
use crate::error::exit;
use crate::meta::{self, Preserve};
use crate::progress::{self, StreamCounts};
use crate::ring::{self, Backend, EngineKind, Op, RingConfig};
use crate::stream::{self, Encoder, Record, ResumeToken, StreamHeader};
use crate::stream_io::StreamWriter;

mod incremental;

/// File data per DATA record and per read.
pub const DATA_BYTES: usize = 4 << 20;
/// The max payload a sent stream declares: a full DATA record, or the largest XATTR.
pub const MAX_PAYLOAD: u32 = (DATA_BYTES + 4096) as u32;
/// Stream bytes between checkpoints.
pub const CHECKPOINT_BYTES: u64 = 64 << 20;
/// Entries between checkpoints (a receiver publishes what came at each one).
pub const CHECKPOINT_ENTRIES: u64 = 4096;
/// Reads in flight for one file.
const READS_IN_FLIGHT: usize = 8;
/// Pool unit of the sender's ring.
const UNIT_BYTES: usize = 1 << 20;

pub struct SendConfig {
    pub src: PathBuf,
    /// `None`: standard output.
    pub out: Option<PathBuf>,
    pub engine: EngineKind,
    /// Buffer pool bytes.
    pub memory: u64,
    pub bwlimit: Option<u64>,
    pub progress: progress::Mode,
    pub quiet: bool,
    /// Resume the stream a receiver's token names (docs/stream.md, section 7).
    pub resume: Option<ResumeToken>,
    /// Send the changes from this earlier state of SRC (an incremental stream).
    pub from: Option<PathBuf>,
    /// Send the changes from the tree this listing describes (a remote mirror's DST).
    pub listing: Option<crate::listing::Against>,
    /// Say nothing when the reader goes away (a remote mirror: the remote end says why).
    pub quiet_reader_gone: bool,
    /// A remote mirror's link bytes (both ways), shown on the progress line.
    pub wire: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// Add every byte written into the output to `wire` as it goes (what the link carries,
    /// which --timeout watches); not when a compressor in between counts its own output.
    pub wire_live: bool,
}

fn meta_of(m: &meta::Meta) -> stream::Meta {
    stream::Meta {
        mode: m.mode,
        uid: m.uid,
        gid: m.gid,
        atime: (m.atime.tv_sec, m.atime.tv_nsec as u32),
        mtime: (m.mtime.tv_sec, m.mtime.tv_nsec as u32),
        rdev: if matches!(m.file_type(), FileType::CharacterDevice | FileType::BlockDevice) {
            m.rdev
        } else {
            0
        },
    }
}

fn statx_at(dir: &OwnedFd, name: &CStr) -> Result<meta::Meta, Errno> {
    let s = rustix::fs::statx(
        dir,
        name,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS | StatxFlags::BTIME,
    )?;
    Ok(meta::Meta::from_statx(&s))
}

fn fstatx(fd: &OwnedFd) -> Result<meta::Meta, Errno> {
    let s = rustix::fs::statx(
        fd,
        c"",
        AtFlags::EMPTY_PATH,
        StatxFlags::BASIC_STATS | StatxFlags::BTIME,
    )?;
    Ok(meta::Meta::from_statx(&s))
}

/// The names in a directory, sorted bytewise (the stream's order).
pub fn sorted_names(dir: &OwnedFd) -> Result<Vec<CString>, Errno> {
    // From the start, whoever read this descriptor before.
    rustix::fs::seek(dir, SeekFrom::Start(0))?;
    let mut names = Vec::new();
    let mut buf = vec![MaybeUninit::<u8>::uninit(); 64 << 10];
    let mut it = RawDir::new(dir, &mut buf);
    while let Some(e) = it.next() {
        let e = e?;
        let n = e.file_name();
        if n != c"." && n != c".." {
            names.push(n.to_owned());
        }
    }
    names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

fn open_flags(noatime: bool) -> OFlags {
    let f = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if noatime {
        f | OFlags::NOATIME
    } else {
        f
    }
}

/// Open `name` for reading without following a symlink and without touching its atime where
/// allowed (root, or the file's owner); O_NOATIME is refused with EPERM otherwise.
fn open_entry(dir: &OwnedFd, name: &CStr, extra: OFlags) -> Result<OwnedFd, Errno> {
    match rustix::fs::openat(dir, name, open_flags(true) | extra, Mode::empty()) {
        Err(Errno::PERM) => rustix::fs::openat(dir, name, open_flags(false) | extra, Mode::empty()),
        r => r,
    }
}

/// The next run of data at or after `pos` (`[start, end)`), from SEEK_DATA/SEEK_HOLE; the
/// whole rest when the file is not sparse or the filesystem cannot say.
fn next_data(fd: &OwnedFd, pos: u64, size: u64, sparse: bool) -> Option<(u64, u64)> {
    if pos >= size {
        return None;
    }
    if !sparse {
        return Some((pos, size));
    }
    let start = match rustix::fs::seek(fd, SeekFrom::Data(pos)) {
        Ok(s) => s,
        Err(Errno::NXIO) => return None,
        Err(_) => return Some((pos, size)),
    };
    if start >= size {
        return None;
    }
    let end = rustix::fs::seek(fd, SeekFrom::Hole(start)).unwrap_or(size);
    Some((start, end.min(size)))
}

/// A directory being walked.
struct Frame {
    fd: Arc<OwnedFd>,
    id: u64,
    rel: Vec<u8>,
    names: Vec<CString>,
    next: usize,
    meta: stream::Meta,
}

/// A hardlinked inode seen under its first name.
struct LinkSeen {
    id: u64,
    /// Names not yet seen.
    left: u32,
    /// Its content could not be sent: its other names are skipped too.
    skipped: bool,
}

enum Failure {
    /// Writing the stream failed: nothing more can be sent.
    Output(std::io::Error),
    Interrupted(i32),
    Fatal(String),
}

struct Sender<'a> {
    src: &'a Path,
    enc: Encoder,
    out: StreamWriter,
    ring: Box<dyn Backend>,
    links: HashMap<(u64, u64), LinkSeen>,
    next_link: u64,
    next_dir: u64,
    ckpt_offset: u64,
    ckpt_entries: u64,
    counts: Arc<StreamCounts>,
    errors: u64,
    vanished: u64,
    quiet: bool,
    preserve: Preserve,
    /// Resuming: data before the token's offset is not sent, and the stream must reach a
    /// CHECKPOINT at that offset with the token's chain hash.
    resume: Option<ResumeToken>,
}

impl Sender<'_> {
    fn put(&mut self, r: &Record) -> Result<(), Failure> {
        self.enc.push(r, self.out.buf());
        self.check_resume()?;
        self.out.commit().map_err(Failure::Output)
    }

    /// Resuming: the stream went past the token's offset without a CHECKPOINT there.
    fn check_resume(&self) -> Result<(), Failure> {
        match &self.resume {
            Some(t) if self.enc.offset() > t.offset => Err(Failure::Fatal(format!(
                "--resume: offset {} of this stream is not a checkpoint: {} changed since the \
                 interrupted stream (or the token is from another source); send a full stream",
                t.offset,
                self.src.display()
            ))),
            _ => Ok(()),
        }
    }

    fn warn(&mut self, rel: &[u8], what: &str) {
        self.errors += 1;
        eprintln!(
            "ringsync: send: {}: {what}",
            crate::diff::full(self.src, rel).display()
        );
    }

    fn skip(&mut self, parent: u64, rel: &[u8], name: &CStr, reason: String) -> Result<(), Failure> {
        self.warn(
            rel,
            &format!("{reason} (skipped: the receiver keeps what it has)"),
        );
        let mut reason = reason.into_bytes();
        reason.retain(|b| *b != 0);
        reason.truncate(stream::REASON_BYTES_MAX);
        if reason.is_empty() {
            reason.push(b'?');
        }
        self.put(&Record::Skipped {
            parent,
            name: name.to_bytes().to_vec(),
            reason,
        })
    }

    fn xattrs(&mut self, dir: &OwnedFd, name: &CStr, rel: &[u8]) -> Result<(), Failure> {
        match meta::xattrs_at(dir.as_fd(), name, self.preserve) {
            Ok(list) => {
                for (n, v) in list {
                    if v.len() > stream::XATTR_VALUE_BYTES_MAX || n.as_bytes().len() > stream::NAME_BYTES_MAX
                    {
                        self.warn(
                            rel,
                            &format!("xattr {} too big for a stream, not sent", escape(n.as_bytes())),
                        );
                        continue;
                    }
                    self.put(&Record::Xattr {
                        name: n.as_bytes().to_vec(),
                        value: v,
                    })?;
                }
                Ok(())
            }
            Err(e) => {
                self.warn(rel, &format!("listxattr: {e}; xattrs not sent"));
                Ok(())
            }
        }
    }

    /// A CHECKPOINT, when enough has gone by since the last one. Called between entries only.
    fn maybe_checkpoint(&mut self) -> Result<(), Failure> {
        self.ckpt_entries += 1;
        if self.enc.offset() - self.ckpt_offset >= CHECKPOINT_BYTES || self.ckpt_entries >= CHECKPOINT_ENTRIES
        {
            self.checkpoint()?;
        }
        if let Some(s) = crate::signals::interrupted() {
            return Err(Failure::Interrupted(s));
        }
        Ok(())
    }

    fn checkpoint(&mut self) -> Result<(), Failure> {
        if let Some(t) = &self.resume {
            if self.enc.offset() == t.offset {
                if self.enc.chain() != t.chain {
                    return Err(Failure::Fatal(format!(
                        "--resume: {} changed since the interrupted stream (its records up to the \
                         token's checkpoint differ); send a full stream",
                        self.src.display()
                    )));
                }
                self.resume = None;
            }
        }
        self.put(&Record::Checkpoint {
            offset: 0,
            chain: [0; 32],
        })?;
        self.ckpt_offset = self.enc.offset();
        self.ckpt_entries = 0;
        Ok(())
    }

    fn run(&mut self, root: Arc<OwnedFd>) -> Result<(), Failure> {
        let root_meta =
            fstatx(&root).map_err(|e| Failure::Fatal(format!("statx {}: {e}", self.src.display())))?;
        self.xattrs(&root, c".", b"")?;
        let names = sorted_names(&root)
            .map_err(|e| Failure::Fatal(format!("read directory {}: {e}", self.src.display())))?;
        let mut stack = vec![Frame {
            fd: root,
            id: 0,
            rel: Vec::new(),
            names,
            next: 0,
            meta: meta_of(&root_meta),
        }];
        while let Some(top) = stack.last_mut() {
            if top.next == top.names.len() {
                let f = stack.pop().expect("non-empty");
                self.put(&Record::DirEnd {
                    dir: f.id,
                    meta: f.meta,
                })?;
                self.maybe_checkpoint()?;
                continue;
            }
            let name = std::mem::take(&mut top.names[top.next]);
            top.next += 1;
            let (dir, parent, rel) = (top.fd.clone(), top.id, join(&top.rel, name.as_bytes()));
            if let Some(frame) = self.entry(&dir, parent, &name, rel)? {
                stack.push(frame);
            }
            self.maybe_checkpoint()?;
        }
        Ok(())
    }

    /// Send one entry; a directory comes back as the frame to walk next.
    fn entry(
        &mut self,
        dir: &Arc<OwnedFd>,
        parent: u64,
        name: &CStr,
        rel: Vec<u8>,
    ) -> Result<Option<Frame>, Failure> {
        let m = match statx_at(dir, name) {
            Ok(m) => m,
            Err(Errno::NOENT) => {
                self.vanished += 1;
                return Ok(None);
            }
            Err(e) => {
                self.skip(parent, &rel, name, format!("statx: {e}"))?;
                return Ok(None);
            }
        };
        let sm = meta_of(&m);
        let bytes = name.to_bytes().to_vec();
        self.counts.entries.fetch_add(1, Ordering::Relaxed);
        match m.file_type() {
            FileType::Directory => {
                let fd = match open_entry(dir, name, OFlags::DIRECTORY) {
                    Ok(fd) => fd,
                    Err(e) => {
                        self.skip(parent, &rel, name, format!("open directory: {e}"))?;
                        return Ok(None);
                    }
                };
                if !same_inode(&fd, &m) {
                    self.skip(parent, &rel, name, "replaced while being read".into())?;
                    return Ok(None);
                }
                let names = match sorted_names(&fd) {
                    Ok(n) => n,
                    Err(e) => {
                        self.skip(parent, &rel, name, format!("read directory: {e}"))?;
                        return Ok(None);
                    }
                };
                self.next_dir += 1;
                self.put(&Record::Dir {
                    parent,
                    name: bytes,
                    meta: sm,
                })?;
                self.xattrs(dir, name, &rel)?;
                Ok(Some(Frame {
                    fd: Arc::new(fd),
                    id: self.next_dir,
                    rel,
                    names,
                    next: 0,
                    meta: sm,
                }))
            }
            FileType::RegularFile => {
                self.file(dir, parent, name, rel, &m)?;
                Ok(None)
            }
            FileType::Symlink => {
                if self.linked(parent, &rel, name, &m)? {
                    return Ok(None);
                }
                let target = match rustix::fs::readlinkat(dir, name, Vec::new()) {
                    Ok(t) => t.into_bytes(),
                    Err(e) => {
                        self.skip(parent, &rel, name, format!("readlink: {e}"))?;
                        return Ok(None);
                    }
                };
                if target.is_empty() || target.len() > stream::SYMLINK_BYTES_MAX {
                    self.skip(
                        parent,
                        &rel,
                        name,
                        format!("symlink target of {} bytes", target.len()),
                    )?;
                    return Ok(None);
                }
                let link = self.new_link(&m);
                self.put(&Record::Symlink {
                    parent,
                    name: bytes,
                    meta: sm,
                    link,
                    target,
                })?;
                self.xattrs(dir, name, &rel)?;
                Ok(None)
            }
            FileType::Fifo | FileType::CharacterDevice | FileType::BlockDevice => {
                if self.linked(parent, &rel, name, &m)? {
                    return Ok(None);
                }
                let link = self.new_link(&m);
                self.put(&Record::Special {
                    parent,
                    name: bytes,
                    meta: sm,
                    link,
                })?;
                self.xattrs(dir, name, &rel)?;
                Ok(None)
            }
            _ => {
                if !self.quiet {
                    eprintln!(
                        "ringsync: send: {}: socket skipped (sockets cannot be copied)",
                        crate::diff::full(self.src, &rel).display()
                    );
                }
                Ok(None)
            }
        }
    }

    /// A later name of a hardlinked inode already sent: sent as LINK (or SKIPPED, when the
    /// inode could not be sent). Returns whether it was.
    fn linked(&mut self, parent: u64, rel: &[u8], name: &CStr, m: &meta::Meta) -> Result<bool, Failure> {
        let key = (m.dev, m.ino);
        if m.nlink <= 1 {
            return Ok(false);
        }
        let Some(seen) = self.links.get_mut(&key) else {
            return Ok(false);
        };
        seen.left = seen.left.saturating_sub(1);
        let (id, skipped) = (seen.id, seen.skipped);
        if seen.left == 0 {
            self.links.remove(&key);
        }
        if skipped {
            self.skip(
                parent,
                rel,
                name,
                "another name of this file could not be sent".into(),
            )?;
        } else {
            self.put(&Record::Link {
                parent,
                name: name.to_bytes().to_vec(),
                link: id,
            })?;
        }
        Ok(true)
    }

    /// The link id for the first name of an inode with other names (0: it has none).
    fn new_link(&mut self, m: &meta::Meta) -> u64 {
        if m.nlink <= 1 {
            return 0;
        }
        self.next_link += 1;
        self.links.insert(
            (m.dev, m.ino),
            LinkSeen {
                id: self.next_link,
                left: m.nlink - 1,
                skipped: false,
            },
        );
        self.next_link
    }

    fn file(
        &mut self,
        dir: &Arc<OwnedFd>,
        parent: u64,
        name: &CStr,
        rel: Vec<u8>,
        m: &meta::Meta,
    ) -> Result<(), Failure> {
        let key = (m.dev, m.ino);
        if self.linked(parent, &rel, name, m)? {
            return Ok(());
        }
        let fd = match open_entry(dir, name, OFlags::empty()) {
            Ok(fd) => Arc::new(fd),
            Err(Errno::NOENT) => {
                self.vanished += 1;
                return Ok(());
            }
            Err(e) => return self.skip(parent, &rel, name, format!("open: {e}")),
        };
        if !same_inode(&fd, m) {
            return self.skip(parent, &rel, name, "replaced while being read".into());
        }
        let link = self.new_link(m);
        self.put(&Record::File {
            parent,
            name: name.to_bytes().to_vec(),
            meta: meta_of(m),
            size: m.size,
            link,
        })?;
        self.xattrs(dir, name, &rel)?;
        let mut hasher = stream::FileHash::new();
        let read = self.data(&fd, m, &mut hasher);
        let changed = match read {
            Ok(()) => match fstatx(&fd) {
                Ok(after) => (after.size != m.size || after.mtime != m.mtime || after.ctime != m.ctime)
                    .then(|| "changed while being read".to_string()),
                Err(e) => Some(format!("statx after reading: {e}")),
            },
            Err(ReadFail::Changed) => Some("changed while being read (it shrank)".into()),
            Err(ReadFail::Io(e)) => Some(format!("read: {e}")),
            Err(ReadFail::Out(f)) => return Err(f),
        };
        self.put(&Record::FileEnd {
            hash: hasher.finish(m.size),
        })?;
        if let Some(reason) = changed {
            if let Some(seen) = self.links.get_mut(&key) {
                seen.skipped = true;
            }
            return self.skip(parent, &rel, name, reason);
        }
        Ok(())
    }

    /// Read the file's data runs through the ring and send them as DATA records, hashing the
    /// data runs into the file hash `h`.
    fn data(&mut self, fd: &Arc<OwnedFd>, m: &meta::Meta, h: &mut stream::FileHash) -> Result<(), ReadFail> {
        let size = m.size;
        let sparse = m.maybe_sparse();
        let units = DATA_BYTES / UNIT_BYTES;
        // Reads pushed and not yet sent, in file order: (token, offset, len).
        let mut queue: VecDeque<(u64, u64, u32)> = VecDeque::new();
        let mut done: HashMap<u64, ring::Completion> = HashMap::new();
        let mut token = 0u64;
        let mut pos = 0u64; // next byte to request
        let mut run = next_data(fd, 0, size, sparse);
        let mut completions = Vec::new();
        loop {
            // Fill the window.
            while queue.len() < READS_IN_FLIGHT {
                let Some((start, end)) = run else { break };
                let from = pos.max(start);
                if from >= end {
                    run = next_data(fd, end, size, sparse);
                    continue;
                }
                let Some(lease) = self.ring.pool().acquire(units) else {
                    break;
                };
                let len = (end - from).min(DATA_BYTES as u64) as u32;
                token += 1;
                self.ring.push(token, Op::read(fd.clone(), lease, from, len));
                queue.push_back((token, from, len));
                pos = from + len as u64;
            }
            let Some(&(front, offset, len)) = queue.front() else {
                break;
            };
            while !done.contains_key(&front) {
                completions.clear();
                self.ring.wait(1, &mut completions).map_err(ReadFail::Io)?;
                for c in completions.drain(..) {
                    done.insert(c.token, c);
                }
            }
            queue.pop_front();
            let c = done.remove(&front).expect("present");
            let lease = c.op.into_lease().expect("a read holds a lease");
            let res = match c.result {
                Ok(n) if n == len => {
                    let data = &self.ring.pool().bytes(&lease)[..n as usize];
                    h.data(offset, data);
                    let at = self.enc.offset();
                    let frame = self.enc.data_frame(offset, data);
                    // The pool is the ring's; borrow the bytes again for the write.
                    let data = &self.ring.pool().bytes(&lease)[..n as usize];
                    let w = match &self.resume {
                        // Before the resume offset: the frame only (docs/stream.md, section 7).
                        Some(t) if at < t.offset => {
                            self.out.buf().extend_from_slice(&frame);
                            self.check_resume()
                                .and_then(|()| self.out.commit().map_err(Failure::Output))
                        }
                        _ => self.out.data(&frame, data).map_err(Failure::Output),
                    }
                    .map_err(ReadFail::Out);
                    self.counts.bytes.fetch_add(n as u64, Ordering::Relaxed);
                    w
                }
                Ok(_) => Err(ReadFail::Changed),
                Err(e) => Err(ReadFail::Io(e.into())),
            };
            self.ring.pool().release(lease);
            if let Err(e) = res {
                self.drain(&mut queue, &mut done);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Collect the reads still in flight after a failure, returning their buffers.
    fn drain(&mut self, queue: &mut VecDeque<(u64, u64, u32)>, done: &mut HashMap<u64, ring::Completion>) {
        let mut completions = Vec::new();
        while self.ring.in_flight() > 0 {
            completions.clear();
            if self.ring.wait(1, &mut completions).is_err() {
                break;
            }
            for c in completions.drain(..) {
                done.insert(c.token, c);
            }
        }
        queue.clear();
        for (_, c) in done.drain() {
            if let Some(l) = c.op.into_lease() {
                self.ring.pool().release(l);
            }
        }
    }
}

enum ReadFail {
    /// A read came back short: the file shrank.
    Changed,
    Io(std::io::Error),
    Out(Failure),
}

fn same_inode(fd: &OwnedFd, m: &meta::Meta) -> bool {
    fstatx(fd).is_ok_and(|n| n.dev == m.dev && n.ino == m.ino)
}

/// What a quick walk of a tree found: for ESTIMATE, and the tree's state id.
#[derive(Default)]
pub struct Survey {
    /// Regular-file bytes (each hardlinked inode once).
    pub bytes: u64,
    pub entries: u64,
    /// The newest ctime of any entry, the root included.
    pub newest: (i64, u32),
    /// Nothing could not be read.
    pub complete: bool,
    /// Sum (wrapping) of a mix of each entry's inode number, ctime, mtime, size and mode:
    /// any change alters some entry's ctime, and so this sum, even where the clock was set
    /// back and the new ctime is not the newest.
    pub digest: u64,
}

/// A 64-bit mix of an entry's identity and change times, for [`Survey::digest`].
fn entry_mix(m: &meta::Meta) -> u64 {
    let mut x = 0u64;
    for v in [
        m.ino,
        m.ctime.tv_sec as u64,
        m.ctime.tv_nsec as u64,
        m.mtime.tv_sec as u64,
        m.mtime.tv_nsec as u64,
        m.size,
        m.mode as u64,
    ] {
        // splitmix64 over the running value
        x = x.wrapping_add(v).wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x = z ^ (z >> 31);
    }
    x
}

/// A margin well above the kernel's timestamp granularity (a clock tick): an entry changed
/// after a survey began has a ctime newer than any ctime the survey saw, once every ctime
/// it saw is older than its start by this much.
const QUIET_NS: i128 = 100_000_000;

/// The state id of the tree at `root` (docs/stream.md, section 2.3): the identity of its root
/// (inode number and birth time) and what a survey of it saw: entries, bytes and the newest
/// ctime. Any change to the tree gives a newer ctime (the kernel sets it on every change, and
/// nothing can set it back), so the id stays the same exactly while the tree does, on any
/// filesystem. `None` when the tree changed too recently to tell (after waiting briefly for it
/// to settle) or could not be read in full: a stream of it cannot be the base of an
/// incremental one. Returns the survey too.
pub fn state_id(root: &OwnedFd) -> (Survey, Option<[u8; 16]>) {
    tree_id(root, true, true)
}

/// [`state_id`], or (`root_ctime` false) the same without the root's own ctime, which
/// changes when a receiver writes its record on the root: what a receiver takes of DST after
/// applying a stream, to find out later whether anything changed DST since. Without `settle`
/// the id is taken at once, however recent the newest ctime: a receiver holding DST's lock
/// takes it right after its own last change (what it cannot see then is a process writing
/// into DST behind the lock's back within the same clock tick).
pub fn tree_id(root: &OwnedFd, root_ctime: bool, settle: bool) -> (Survey, Option<[u8; 16]>) {
    // Listed without moving its atime where allowed (a receiver has just set it).
    let own = open_entry(root, c".", OFlags::DIRECTORY);
    let root = own.as_ref().unwrap_or(root);
    let now_ns = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128)
    };
    let ns = |t: (i64, u32)| t.0 as i128 * 1_000_000_000 + t.1 as i128;
    let mut tries = 0;
    loop {
        let start = now_ns();
        let sv = survey(root, root_ctime);
        let rm = fstatx(root);
        // A ctime in the future (a clock set back since) cannot be trusted to grow.
        let future = ns(sv.newest) > now_ns() + 1_000_000_000;
        let quiet = !future && (!settle || ns(sv.newest) < start - QUIET_NS);
        if let (true, true, Ok(rm)) = (quiet, sv.complete, &rm) {
            let mut h = blake3::Hasher::new();
            h.update(b"ringsync state id 1");
            h.update(&rm.ino.to_le_bytes());
            let bt = rm.btime.map_or((0, 0), |t| (t.tv_sec, t.tv_nsec as u32));
            h.update(&bt.0.to_le_bytes());
            h.update(&bt.1.to_le_bytes());
            h.update(&sv.newest.0.to_le_bytes());
            h.update(&sv.newest.1.to_le_bytes());
            h.update(&sv.entries.to_le_bytes());
            h.update(&sv.bytes.to_le_bytes());
            h.update(&sv.digest.to_le_bytes());
            if !root_ctime {
                // What the root's ctime would have told: entries made or removed in it.
                h.update(&rm.mtime.tv_sec.to_le_bytes());
                h.update(&(rm.mtime.tv_nsec as u32).to_le_bytes());
                h.update(&rm.mode.to_le_bytes());
                h.update(&rm.uid.to_le_bytes());
                h.update(&rm.gid.to_le_bytes());
            }
            let mut id = [0u8; 16];
            id.copy_from_slice(&h.finalize().as_bytes()[..16]);
            return (sv, Some(id));
        }
        tries += 1;
        if tries == 3 || !sv.complete || rm.is_err() || future {
            return (sv, None);
        }
        // Changed moments ago: wait until that is past the margin (at most a fifth of a
        // second: a ctime in the future is not waited for), then look again.
        let wait = (ns(sv.newest) + QUIET_NS - now_ns()).clamp(1_000_000, 200_000_000);
        std::thread::sleep(std::time::Duration::from_nanos(wait as u64));
    }
}

/// Entries, regular-file bytes and the newest ctime below `root` (and of it).
fn survey(root: &OwnedFd, root_ctime: bool) -> Survey {
    use std::sync::atomic::{AtomicBool, AtomicU64};
    use std::sync::{Condvar, Mutex};
    let newest0 = match fstatx(root) {
        Ok(m) if root_ctime => (m.ctime.tv_sec, m.ctime.tv_nsec as u32),
        _ => (0, 0),
    };
    let Ok(first) = open_entry(root, c".", OFlags::DIRECTORY) else {
        return Survey {
            bytes: 0,
            entries: 0,
            newest: newest0,
            complete: false,
            digest: 0,
        };
    };
    // Directories to list, and how many walkers are listing one (done when both are zero).
    let work = Mutex::new((vec![first], 0usize));
    let cv = Condvar::new();
    let (bytes, entries, digest) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let newest = Mutex::new(newest0);
    let complete = AtomicBool::new(true);
    let linked = Mutex::new(std::collections::HashSet::new());
    let walker = || {
        let mut buf = vec![MaybeUninit::<u8>::uninit(); 64 << 10];
        let mut mine = (0u64, 0u64, (0i64, 0u32), 0u64);
        loop {
            let dir = {
                let mut w = work.lock().expect("survey lock");
                loop {
                    if let Some(d) = w.0.pop() {
                        w.1 += 1;
                        break Some(d);
                    }
                    if w.1 == 0 {
                        break None;
                    }
                    w = cv.wait(w).expect("survey lock");
                }
            };
            let Some(dir) = dir else { break };
            let mut subdirs = Vec::new();
            let mut it = RawDir::new(&dir, &mut buf);
            while let Some(e) = it.next() {
                let Ok(e) = e else {
                    complete.store(false, Ordering::Relaxed);
                    break;
                };
                let n = e.file_name();
                if n == c"." || n == c".." {
                    continue;
                }
                let Ok(m) = statx_at(&dir, n) else {
                    complete.store(false, Ordering::Relaxed);
                    continue;
                };
                mine.1 += 1;
                mine.2 = mine.2.max((m.ctime.tv_sec, m.ctime.tv_nsec as u32));
                mine.3 = mine.3.wrapping_add(entry_mix(&m));
                match m.file_type() {
                    FileType::Directory => match open_entry(&dir, n, OFlags::DIRECTORY) {
                        Ok(fd) => subdirs.push(fd),
                        Err(_) => complete.store(false, Ordering::Relaxed),
                    },
                    FileType::RegularFile
                        if m.nlink <= 1 || linked.lock().expect("survey lock").insert((m.dev, m.ino)) =>
                    {
                        mine.0 += m.size
                    }
                    _ => {}
                }
            }
            let mut w = work.lock().expect("survey lock");
            w.0.extend(subdirs);
            w.1 -= 1;
            cv.notify_all();
        }
        bytes.fetch_add(mine.0, Ordering::Relaxed);
        entries.fetch_add(mine.1, Ordering::Relaxed);
        digest.fetch_add(mine.3, Ordering::Relaxed);
        let mut n = newest.lock().expect("survey lock");
        *n = (*n).max(mine.2);
    };
    // Cached statx calls are CPU work: one walker per core.
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(8);
    std::thread::scope(|sc| {
        for _ in 1..threads {
            sc.spawn(walker);
        }
        walker();
    });
    Survey {
        bytes: bytes.into_inner(),
        entries: entries.into_inner(),
        newest: newest.into_inner().expect("survey lock"),
        complete: complete.into_inner(),
        digest: digest.into_inner(),
    }
}

fn random_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    if rustix::rand::getrandom(&mut id, rustix::rand::GetRandomFlags::empty()).is_err() {
        // No getrandom: time and pid are unique enough for an id that is not a secret.
        let mut h = blake3::Hasher::new();
        h.update(&format!("{:?}{}", std::time::SystemTime::now(), std::process::id()).into_bytes());
        id.copy_from_slice(&h.finalize().as_bytes()[..16]);
    }
    id
}

/// Run `ringsync send`; returns the exit status.
pub fn send(cfg: &SendConfig) -> i32 {
    let out = match &cfg.out {
        Some(p) => match std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(p)
        {
            Ok(f) => f,
            Err(e) => {
                eprintln!("ringsync: send: create {}: {e}", p.display());
                return exit::FATAL;
            }
        },
        None => {
            if std::io::stdout().is_terminal() {
                eprintln!(
                    "ringsync: send: refusing to write a binary stream to a terminal; redirect it \
                     (ringsync send SRC > FILE, | ringsync receive DST) or use -o FILE"
                );
                return exit::USAGE;
            }
            let fd = std::io::stdout().as_fd().try_clone_to_owned();
            match fd {
                Ok(fd) => std::fs::File::from(fd),
                Err(e) => {
                    eprintln!("ringsync: send: standard output: {e}");
                    return exit::FATAL;
                }
            }
        }
    };
    send_to(cfg, out)
}

/// `send` into `out` (a file, a pipe, a remote shell's stdin).
pub fn send_to(cfg: &SendConfig, out: std::fs::File) -> i32 {
    send_counted(cfg, out, &std::sync::atomic::AtomicU64::new(0))
}

/// [`send_to`], leaving in `sent` the bytes written into `out` (a resumed stream's data before
/// its token is not among them).
pub fn send_counted(cfg: &SendConfig, out: std::fs::File, sent: &std::sync::atomic::AtomicU64) -> i32 {
    let root = match rustix::fs::open(
        &cfg.src,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => Arc::new(fd),
        Err(e) => {
            let what = if e == Errno::NOTDIR {
                "not a directory (send takes a directory)".to_string()
            } else {
                e.to_string()
            };
            eprintln!("ringsync: send: open {}: {what}", cfg.src.display());
            return exit::FATAL;
        }
    };
    let _ = crate::signals::install(|_| {});
    let counts = Arc::new(StreamCounts {
        wire: cfg.wire.clone(),
        ..Default::default()
    });
    let line = counts.line(cfg.progress);
    // SRC's state id: the stream's target, which an incremental stream or a resumption later
    // names. Not for a stream against a remote mirror's listing: its next run lists again
    // (and it is not resumed), and the walk would cost as much as the comparison; unless
    // asked (`--prev`).
    let against = cfg.listing.as_ref().filter(|a| !a.empty);
    let (sv, state) = match against {
        Some(a) if !a.state => (Survey::default(), None),
        // The id before the comparison's walk, if SRC still has it.
        Some(a) => {
            let (sv, id) = state_id(&root);
            (sv, id.filter(|id| Some(*id) == a.state_before))
        }
        None => state_id(&root),
    };
    let (mut est_bytes, mut est_entries) = (sv.bytes, sv.entries);
    if state.is_none() && cfg.resume.is_none() && against.is_none() && !cfg.quiet {
        eprintln!(
            "ringsync: send: {} is changing (or not all of it could be read), so this stream \
             cannot be the base of an incremental one (send --from)",
            cfg.src.display()
        );
    }
    // Incremental: the base's state, and what changed since.
    let mut plan = None;
    let mut base_id = [0; 16];
    if let Some(prev) = &cfg.from {
        match incremental::prepare(prev, &cfg.src, cfg.engine, cfg.quiet) {
            Ok((id, p)) => {
                base_id = id;
                (est_bytes, est_entries) = p.estimate();
                plan = Some(p);
            }
            Err(e) => {
                line.finish();
                eprintln!("ringsync: send: --from {}: {e}", prev.display());
                return exit::FATAL;
            }
        }
    } else if let Some(a) = against {
        // (Against an empty listing, a full stream: the same records, and resumable.)
        let p = incremental::against(a);
        base_id = a.id;
        (est_bytes, est_entries) = p.estimate();
        plan = Some(p);
    }
    // The pool (registered, so every page of it is touched now) sized to the data to send:
    // a stream of a few changes does not pay for 32 MiB.
    let units = (cfg.memory.min(est_bytes) as usize)
        .div_ceil(UNIT_BYTES)
        .clamp(DATA_BYTES / UNIT_BYTES, READS_IN_FLIGHT * DATA_BYTES / UNIT_BYTES);
    // io_uring reads of FUSE files can return wrong bytes as success (ring::uring_reads_trusted).
    let engine = match ring::uring_reads_trusted(&cfg.src) {
        true => cfg.engine,
        false => EngineKind::Sync,
    };
    let ring = match ring::build(
        engine,
        RingConfig {
            sq_entries: 32,
            pool_units: units,
            pool_unit_bytes: UNIT_BYTES,
            buffers: ring::Buffers::Fixed,
            // Its thread hashes and writes the stream: reads copy on another core.
            async_reads: true,
        },
    ) {
        Ok(r) => r,
        Err(e) => {
            line.finish();
            eprintln!("ringsync: send: set up the {:?} engine: {e}", cfg.engine);
            return exit::FATAL;
        }
    };
    counts.bytes_total.store(est_bytes, Ordering::Relaxed);
    counts.entries_total.store(est_entries.max(1), Ordering::Relaxed);
    let mut header = StreamHeader {
        minor: stream::VERSION_MINOR,
        required: stream::FEATURE_XATTRS
            | if plan.is_some() {
                stream::FEATURE_INCREMENTAL
            } else {
                0
            },
        optional: stream::OPT_ESTIMATE,
        stream_id: random_id(),
        base_id,
        target_id: state.unwrap_or_else(random_id),
        max_payload: MAX_PAYLOAD,
        created_s: crate::mirror::guard::now().0 as u64,
        resume_offset: 0,
        header_bytes: stream::HEADER_BYTES as u32,
    };
    if let Some(t) = &cfg.resume {
        // The interrupted stream's identity; its chain covers the header as it was then.
        header.stream_id = t.stream_id;
        header.target_id = t.target_id;
        header.created_s = t.created_s;
        header.required |= stream::FEATURE_RESUMED;
        header.resume_offset = t.offset;
    }
    let mut w = StreamWriter::new(out, cfg.bwlimit).live(cfg.wire.clone().filter(|_| cfg.wire_live));
    let enc = Encoder::new(&header, w.buf());
    let mut s = Sender {
        src: &cfg.src,
        enc,
        out: w,
        ring,
        links: HashMap::new(),
        next_link: 0,
        next_dir: 0,
        ckpt_offset: 0,
        ckpt_entries: 0,
        counts: counts.clone(),
        errors: 0,
        vanished: 0,
        quiet: cfg.quiet,
        preserve: Preserve {
            owner: true,
            all_xattrs: true,
        },
        resume: cfg.resume.clone(),
    };
    let res = s
        .put(&Record::Estimate {
            bytes: est_bytes,
            entries: est_entries,
        })
        .and_then(|()| match plan {
            Some(p) => p.run(&mut s, root),
            None => s.run(root),
        })
        .and_then(|()| match &s.resume {
            Some(t) => Err(Failure::Fatal(format!(
                "--resume: the stream ended before the token's offset {}: {} changed since the \
                 interrupted stream; send a full stream",
                t.offset,
                cfg.src.display()
            ))),
            None => Ok(()),
        })
        .and_then(|()| {
            s.put(&Record::End {
                records: 0,
                bytes: 0,
                chain: [0; 32],
            })
        });
    line.finish();
    let Sender {
        out,
        errors,
        vanished,
        ..
    } = s;
    sent.store(out.written(), Ordering::Relaxed);
    let flushed = match &res {
        Ok(()) => out.finish().map_err(Failure::Output),
        Err(_) => Ok(()),
    };
    match res.and(flushed) {
        Ok(()) if errors > 0 => {
            eprintln!("ringsync: send: {errors} entries could not be sent (SKIPPED in the stream); exit 3");
            exit::PARTIAL
        }
        Ok(()) if vanished > 0 => exit::VANISHED,
        Ok(()) => exit::OK,
        Err(Failure::Interrupted(sig)) => {
            eprintln!(
                "ringsync: send: stopped by {}; the stream ends without END",
                crate::signals::name(sig)
            );
            exit::INTERRUPTED
        }
        Err(Failure::Output(e)) => {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                eprintln!("ringsync: send: write the stream: {e}");
            } else if !cfg.quiet_reader_gone {
                eprintln!("ringsync: send: the reader of the stream went away (broken pipe)");
            }
            exit::FATAL
        }
        Err(Failure::Fatal(m)) => {
            eprintln!("ringsync: send: {m}");
            exit::FATAL
        }
    }
}
