//! What a tree holds, compactly, for comparing two trees on different machines: the
//! receiving end of a remote mirror lists its DST, the sending end walks SRC the same way and
//! compares (docs/stream.md, section 8.3). The changes come out as the diff walk's
//! [`Change`]s, so an incremental stream is made from them as from a local diff.
//!
//! Per entry: path, type and mode, owner, size, mtime and atime (ns), device number, hardlink
//! group, and a digest of the xattrs the receiving end keeps. Not the root (its attributes
//! travel in every stream). Not symlink targets: reading one moves the link's atime (there is
//! no O_NOATIME for readlink), so, as in the diff walk, a link whose size (its target's length)
//! and mtime are equal is trusted, and one that differs is sent again (it is small).
//!
//! Encoding: `RSLIST1\n`, a flags byte, then the entries in bytewise order of their paths
//! (a directory before what is in it), each path as the number of bytes kept from the one
//! before plus the bytes added; numbers as LEB128. An empty path ends the entries; then their
//! count and a BLAKE3 of every byte before it. The digest's first 16 bytes are the base id
//! of the stream made against the listing.
//!
//! The listing is hostile input to whoever reads it: every length is bounded before anything
//! is allocated, every path is checked (components of 1-255 bytes, no NUL, never `.` or `..`,
//! order strictly increasing, every parent a directory listed before), and the count and
//! digest must match.
//!
//! Must not: write anything; follow a symlink.

use std::collections::HashMap;
use std::ffi::CString;
use std::io::{self, BufRead, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::FileType;
use rustix::io::Errno;

use crate::diff::{self, Change, Kind, WalkOpts};
use crate::error::ErrorLog;
use crate::filter::{Filter, Verdict};
use crate::meta::{self, Meta, Preserve};
use crate::ring::EngineKind;
use std::sync::Arc;

const MAGIC: &[u8; 8] = b"RSLIST1\n";
/// Flag: the receiving end runs as root, so owners and xattrs of every namespace count.
pub const FLAG_ROOT: u8 = 1;
/// Flag: `--checksum`: regular files carry the BLAKE3 of their content, and the content
/// decides (an mtime difference alone is then an attribute).
pub const FLAG_CHECKSUM: u8 = 2;
/// The longest path accepted (deeper than the kernel's PATH_MAX: trees are walked one
/// directory at a time).
pub const PATH_MAX: usize = 64 << 10;
/// The most path bytes all entries may hold together.
pub const PATH_BYTES_MAX: u64 = 1 << 30;
/// The most entries a listing may hold (some 1.5 GiB of memory at the reader).
pub const ENTRIES_MAX: u64 = 1 << 23;

const E_LINK: u8 = 1;
const E_XATTRS: u8 = 2;
const E_RDEV: u8 = 4;
const E_HASH: u8 = 8;

/// One entry of a tree.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the root, `/`-separated.
    pub path: Vec<u8>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: (i64, u32),
    pub atime: (i64, u32),
    pub rdev: u64,
    /// Hardlink group (the same number for the paths of one inode), 0 for none.
    pub link: u64,
    /// BLAKE3 (16 bytes) of the kept xattrs, all zero for none.
    pub xattrs: [u8; 16],
    /// With [`FLAG_CHECKSUM`]: a regular file's content BLAKE3 (`None`: it could not be read
    /// as a regular file, so it counts as changed).
    pub hash: Option<[u8; 32]>,
}

impl Entry {
    fn file_type(&self) -> FileType {
        FileType::from_raw_mode(self.mode)
    }
}

/// A decoded listing.
#[derive(Debug, Default)]
pub struct Listing {
    pub flags: u8,
    pub entries: Vec<Entry>,
    /// The first 16 bytes of its BLAKE3.
    pub id: [u8; 16],
}

impl Listing {
    /// The xattrs and owners that count: what the receiving end can set.
    pub fn preserve(&self) -> Preserve {
        preserve_for(self.flags)
    }
}

fn preserve_for(flags: u8) -> Preserve {
    let root = flags & FLAG_ROOT != 0;
    Preserve {
        owner: root,
        all_xattrs: root,
    }
}

/// The flags of a listing made by this process (root or not).
pub fn own_flags() -> u8 {
    if rustix::process::geteuid().is_root() {
        FLAG_ROOT
    } else {
        0
    }
}

/// Walk `root` into entries (sorted, the root itself left out), with `(dev, ino)` and the
/// statx result of each. Sockets are left out when `skip_sockets` (a sender cannot send them).
pub fn walk(
    root: &Path,
    flags: u8,
    engine: EngineKind,
    skip_sockets: bool,
    filter: Arc<Filter>,
    errors: &ErrorLog,
) -> Result<Vec<(Entry, Meta)>, String> {
    let preserve = preserve_for(flags);
    let opts = WalkOpts {
        threads: diff::walk_threads(2),
        engine: diff::walk_engine(crate::config::EngineChoice::Auto, engine),
        checksum: false,
        renames: false,
        expand: true,
        owner: preserve.owner,
        preserve,
        changed_since: None,
        skip_new_sockets: skip_sockets,
        filter,
        copy_view: false,
        seen: Default::default(),
        scope: None,
    };
    let d = diff::walk(None, root, &opts, errors).map_err(|e| e.to_string())?;
    if let Some(s) = crate::signals::interrupted() {
        return Err(format!("stopped by {}", crate::signals::name(s)));
    }
    let mut out: Vec<(Entry, Meta)> = d
        .changes
        .into_iter()
        .filter(|c| c.kind == Kind::Created && !c.path.is_empty())
        .filter_map(|c| {
            let m = c.new?;
            Some((
                Entry {
                    path: c.path,
                    mode: m.mode,
                    uid: m.uid,
                    gid: m.gid,
                    size: if m.file_type() == FileType::Directory {
                        0
                    } else {
                        m.size
                    },
                    mtime: (m.mtime.tv_sec, m.mtime.tv_nsec as u32),
                    atime: (m.atime.tv_sec, m.atime.tv_nsec as u32),
                    rdev: match m.file_type() {
                        FileType::CharacterDevice | FileType::BlockDevice => m.rdev,
                        _ => 0,
                    },
                    ..Default::default()
                },
                m,
            ))
        })
        .collect();
    // Hardlink groups, numbered in path order.
    out.sort_unstable_by(|a, b| a.0.path.cmp(&b.0.path));
    let mut groups: HashMap<(u64, u64), u64> = HashMap::new();
    for (e, m) in out.iter_mut() {
        if m.nlink > 1 && m.file_type() != FileType::Directory {
            let n = groups.len() as u64 + 1;
            e.link = *groups.entry((m.dev, m.ino)).or_insert(n);
        }
    }
    // Xattrs, each directory opened once.
    let root_fd = rustix::fs::open(
        root,
        diff::dir_flags(false) & !rustix::fs::OFlags::NOFOLLOW,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| format!("open {}: {e}", root.display()))?;
    let mut order: Vec<usize> = (0..out.len()).collect();
    order.sort_by(|&a, &b| diff::split(&out[a].0.path).0.cmp(diff::split(&out[b].0.path).0));
    // An entry (or directory) gone since the walk, or replaced by another type on the way, is
    // left out: it is not there to be copied (and a tree being changed is sent again).
    let gone_now = |e: rustix::io::Errno| matches!(e, Errno::NOENT | Errno::NOTDIR | Errno::LOOP);
    let mut gone = vec![false; out.len()];
    let mut dir: Option<(Vec<u8>, Option<OwnedFd>)> = None;
    for i in order {
        let (e, _) = &mut out[i];
        let (parent, name) = diff::split(&e.path);
        if dir.as_ref().is_none_or(|(p, _)| p.as_slice() != parent) {
            match diff::open_dir_path(&root_fd, parent, false) {
                Ok(fd) => dir = Some((parent.to_vec(), Some(fd))),
                Err(err) if gone_now(err) => dir = Some((parent.to_vec(), None)),
                Err(err) => return Err(format!("open {}: {err}", diff::full(root, parent).display())),
            }
        }
        let Some(fd) = &dir.as_ref().expect("opened").1 else {
            gone[i] = true;
            continue;
        };
        let n = CString::new(name).expect("names have no NUL");
        match meta::xattrs_at(meta::fd(fd), &n, preserve) {
            Ok(x) => e.xattrs = xattr_digest(&x),
            Err(err) if gone_now(err) => gone[i] = true,
            Err(err) => {
                return Err(format!(
                    "listxattr {}: {err}",
                    diff::full(root, &e.path).display()
                ))
            }
        }
        if flags & FLAG_CHECKSUM != 0 && e.file_type() == FileType::RegularFile {
            match content_hash(fd, &n) {
                Ok(h) => e.hash = h,
                Err(err) if gone_now(err) => gone[i] = true,
                Err(err) => return Err(format!("read {}: {err}", diff::full(root, &e.path).display())),
            }
        }
    }
    let mut k = 0;
    out.retain(|_| {
        k += 1;
        !gone[k - 1]
    });
    Ok(out)
}

/// BLAKE3 of the content of `name` in `dir`; `None` when it is not a regular file any more.
pub(crate) fn content_hash(dir: &OwnedFd, name: &std::ffi::CStr) -> Result<Option<[u8; 32]>, Errno> {
    use rustix::fs::{Mode, OFlags};
    // Never follows a symlink, never blocks on a fifo swapped in; O_NOATIME where allowed.
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let fd = match rustix::fs::openat(dir, name, flags | OFlags::NOATIME, Mode::empty()) {
        Err(Errno::PERM) => rustix::fs::openat(dir, name, flags, Mode::empty())?,
        r => r?,
    };
    if FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode) != FileType::RegularFile {
        return Ok(None);
    }
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match rustix::io::read(&fd, &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                h.update(&buf[..n]);
            }
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(Some(*h.finalize().as_bytes()))
}

/// BLAKE3 (16 bytes) of sorted xattrs; all zero for none.
pub fn xattr_digest(x: &[(CString, Vec<u8>)]) -> [u8; 16] {
    let mut d = [0u8; 16];
    if x.is_empty() {
        return d;
    }
    let mut h = blake3::Hasher::new();
    for (n, v) in x {
        let n = n.as_bytes();
        h.update(&(n.len() as u64).to_le_bytes());
        h.update(n);
        h.update(&(v.len() as u64).to_le_bytes());
        h.update(v);
    }
    d.copy_from_slice(&h.finalize().as_bytes()[..16]);
    d
}

fn put_var(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Write `entries` (sorted by path) as a listing; its id.
pub fn write(out: &mut impl Write, flags: u8, entries: &[Entry]) -> io::Result<[u8; 16]> {
    let mut h = blake3::Hasher::new();
    let mut buf = Vec::with_capacity(64 << 10);
    buf.extend_from_slice(MAGIC);
    buf.push(flags);
    let mut prev: &[u8] = b"";
    let flush = |buf: &mut Vec<u8>, h: &mut blake3::Hasher, out: &mut dyn Write| -> io::Result<()> {
        h.update(buf);
        out.write_all(buf)?;
        buf.clear();
        Ok(())
    };
    for e in entries {
        let keep = prev.iter().zip(&e.path).take_while(|(a, b)| a == b).count();
        put_var(&mut buf, keep as u64);
        put_var(&mut buf, (e.path.len() - keep) as u64);
        buf.extend_from_slice(&e.path[keep..]);
        put_var(&mut buf, e.mode as u64);
        put_var(&mut buf, e.uid as u64);
        put_var(&mut buf, e.gid as u64);
        put_var(&mut buf, e.size);
        put_var(&mut buf, zigzag(e.mtime.0));
        put_var(&mut buf, e.mtime.1 as u64);
        put_var(&mut buf, zigzag(e.atime.0));
        put_var(&mut buf, e.atime.1 as u64);
        let f = (if e.link != 0 { E_LINK } else { 0 })
            | (if e.xattrs != [0; 16] { E_XATTRS } else { 0 })
            | (if e.rdev != 0 { E_RDEV } else { 0 })
            | (if e.hash.is_some() { E_HASH } else { 0 });
        buf.push(f);
        if e.link != 0 {
            put_var(&mut buf, e.link);
        }
        if e.xattrs != [0; 16] {
            buf.extend_from_slice(&e.xattrs);
        }
        if e.rdev != 0 {
            put_var(&mut buf, e.rdev);
        }
        if let Some(h) = &e.hash {
            buf.extend_from_slice(h);
        }
        prev = &e.path;
        if buf.len() >= 60 << 10 {
            flush(&mut buf, &mut h, out)?;
        }
    }
    put_var(&mut buf, 0);
    put_var(&mut buf, 0);
    put_var(&mut buf, entries.len() as u64);
    flush(&mut buf, &mut h, out)?;
    let digest = h.finalize();
    out.write_all(digest.as_bytes())?;
    out.flush()?;
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest.as_bytes()[..16]);
    Ok(id)
}

/// Why a listing was refused.
#[derive(Debug)]
pub struct ReadError {
    pub msg: String,
    /// It ended before it was complete (the other end stopped, or the link dropped).
    pub ends_early: bool,
}

impl From<String> for ReadError {
    fn from(msg: String) -> ReadError {
        ReadError {
            msg,
            ends_early: false,
        }
    }
}

impl From<&str> for ReadError {
    fn from(msg: &str) -> ReadError {
        msg.to_string().into()
    }
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

fn read_exact(r: &mut impl io::Read, b: &mut [u8]) -> Result<(), ReadError> {
    r.read_exact(b).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => ReadError {
            msg: "the listing ends early".into(),
            ends_early: true,
        },
        _ => format!("read the listing: {e}").into(),
    })
}

/// Reads bytes and hashes them.
struct Hashing<'a, R> {
    r: &'a mut R,
    h: blake3::Hasher,
}

impl<R: BufRead> Hashing<'_, R> {
    fn byte(&mut self) -> Result<u8, ReadError> {
        let mut b = [0u8; 1];
        self.bytes(&mut b)?;
        Ok(b[0])
    }

    fn bytes(&mut self, b: &mut [u8]) -> Result<(), ReadError> {
        read_exact(self.r, b)?;
        self.h.update(b);
        Ok(())
    }

    fn var(&mut self) -> Result<u64, ReadError> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.byte()?;
            if i == 9 && b > 1 {
                return Err("a number in the listing is too large".into());
            }
            v |= ((b & 0x7f) as u64) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("a number in the listing is too long".into())
    }

    fn var_max(&mut self, max: u64, what: &str) -> Result<u64, ReadError> {
        let v = self.var()?;
        if v > max {
            return Err(format!("the listing's {what} ({v}) is larger than {max}").into());
        }
        Ok(v)
    }
}

/// Whether `path` is a relative path of valid names.
fn valid_path(path: &[u8]) -> bool {
    !path.is_empty()
        && path
            .split(|&b| b == b'/')
            .all(|c| !c.is_empty() && c.len() <= 255 && c != b"." && c != b".." && !c.contains(&0))
}

/// Read and check a listing.
pub fn read(r: &mut impl BufRead) -> Result<Listing, ReadError> {
    let mut magic = [0u8; 8];
    read_exact(r, &mut magic)?;
    if &magic != MAGIC {
        return Err("not a listing (bad magic)".into());
    }
    let mut h = Hashing {
        r,
        h: blake3::Hasher::new(),
    };
    h.h.update(MAGIC);
    let flags = h.byte()?;
    let mut l = Listing {
        flags,
        ..Default::default()
    };
    // Directories listed so far, to check each path's parent.
    let mut dirs: std::collections::HashSet<Vec<u8>> = Default::default();
    let mut path: Vec<u8> = Vec::new();
    let mut path_bytes = 0u64;
    loop {
        let keep = h.var_max(path.len() as u64, "kept path bytes")? as usize;
        let add = h.var_max(PATH_MAX as u64, "path length")? as usize;
        if keep == 0 && add == 0 {
            break;
        }
        if keep + add > PATH_MAX {
            return Err(format!("a path in the listing is longer than {PATH_MAX} bytes").into());
        }
        path_bytes += (keep + add) as u64;
        if path_bytes > PATH_BYTES_MAX {
            return Err(format!("the listing's paths hold more than {PATH_BYTES_MAX} bytes").into());
        }
        if l.entries.len() as u64 >= ENTRIES_MAX {
            return Err(format!("the listing has more than {ENTRIES_MAX} entries").into());
        }
        let mut next = path[..keep].to_vec();
        next.resize(keep + add, 0);
        h.bytes(&mut next[keep..])?;
        let shown = String::from_utf8_lossy(&next).into_owned();
        if !valid_path(&next) {
            return Err(format!("the listing holds an invalid path {shown:?}").into());
        }
        if next <= path {
            return Err(format!("the listing is out of order at {shown:?}").into());
        }
        let (parent, _) = diff::split(&next);
        if !parent.is_empty() && !dirs.contains(parent) {
            return Err(format!("the listing holds {shown:?} without its directory before it").into());
        }
        let mut e = Entry {
            mode: h.var_max(u32::MAX as u64, "mode")? as u32,
            uid: h.var_max(u32::MAX as u64, "uid")? as u32,
            gid: h.var_max(u32::MAX as u64, "gid")? as u32,
            size: h.var()?,
            ..Default::default()
        };
        e.mtime.0 = unzigzag(h.var()?);
        e.mtime.1 = h.var_max(999_999_999, "nanoseconds")? as u32;
        e.atime.0 = unzigzag(h.var()?);
        e.atime.1 = h.var_max(999_999_999, "nanoseconds")? as u32;
        let f = h.byte()?;
        if f & !(E_LINK | E_XATTRS | E_RDEV | E_HASH) != 0 {
            return Err(format!("unknown entry flags {f:#x} in the listing at {shown:?}").into());
        }
        if f & E_LINK != 0 {
            e.link = h.var_max(ENTRIES_MAX, "link group")?;
        }
        if f & E_XATTRS != 0 {
            h.bytes(&mut e.xattrs)?;
        }
        if f & E_RDEV != 0 {
            e.rdev = h.var()?;
        }
        if f & E_HASH != 0 {
            let mut d = [0u8; 32];
            h.bytes(&mut d)?;
            e.hash = Some(d);
        }
        let ft = e.file_type();
        match ft {
            FileType::Directory => {
                dirs.insert(next.clone());
            }
            FileType::Unknown => return Err(format!("unknown file type in the listing at {shown:?}").into()),
            _ => {}
        }
        if (ft == FileType::Directory && e.link != 0) || (ft != FileType::RegularFile && e.hash.is_some()) {
            return Err(format!("inconsistent entry in the listing at {shown:?}").into());
        }
        e.path = next.clone();
        path = next;
        l.entries.push(e);
    }
    let count = h.var()?;
    if count != l.entries.len() as u64 {
        return Err(format!(
            "the listing says it holds {count} entries and holds {}",
            l.entries.len()
        )
        .into());
    }
    let digest = h.h.finalize();
    let mut told = [0u8; 32];
    read_exact(h.r, &mut told)?;
    if &told != digest.as_bytes() {
        return Err("the listing's digest does not match (damaged in transit)".into());
    }
    l.id.copy_from_slice(&digest.as_bytes()[..16]);
    Ok(l)
}

/// SRC's entries walked for a listing's `flags` (sockets left out), with the walk's errors;
/// possibly walked while the listing was on its way (then checked against its flags).
pub struct Walked {
    flags: u8,
    entries: Result<Vec<(Entry, Meta)>, String>,
    pub errors: ErrorLog,
    /// With `state`: SRC's state id taken before the walk (the sender takes it again when it
    /// sends; a change in between leaves the stream without one).
    state_before: Option<[u8; 16]>,
}

impl Walked {
    pub fn now(
        src: &Path,
        flags: u8,
        engine: EngineKind,
        filter: Arc<Filter>,
        quiet: bool,
        state: bool,
    ) -> Walked {
        let state_before = if state {
            rustix::fs::open(
                src,
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .ok()
            .and_then(|fd| crate::send::state_id(&fd).1)
        } else {
            None
        };
        let errors = ErrorLog::new(quiet);
        let entries = walk(src, flags, engine, true, filter, &errors);
        Walked {
            flags,
            entries,
            errors,
            state_before,
        }
    }

    /// Walk SRC on a thread, for a listing expected to have `flags` (a guess: the listing's
    /// own flags decide, and [`against`] walks again when they differ).
    pub fn ahead(
        src: &Path,
        flags: u8,
        engine: EngineKind,
        filter: Arc<Filter>,
        quiet: bool,
        state: bool,
    ) -> std::thread::JoinHandle<Walked> {
        let src = src.to_path_buf();
        std::thread::spawn(move || Walked::now(&src, flags, engine, filter, quiet, state))
    }
}

/// Asks the receiving end for the content hashes of its files at these paths.
pub type Ask<'a> = &'a mut dyn FnMut(&[Vec<u8>]) -> Result<HashMap<Vec<u8>, [u8; 32]>, String>;

/// What a sender compares with a receiver's listing: the listing's id and the changes.
pub struct Against {
    pub id: [u8; 16],
    /// The listing held no entry and no filter narrows SRC (a full stream does the same, and
    /// resumes).
    pub empty: bool,
    pub changes: Vec<Change>,
    /// Protected entries standing where SRC has another type (reported, left alone).
    pub errors: u64,
    /// Take SRC's state id for the stream's target, as a full stream does (`--prev`: a later
    /// run may send an incremental stream from this state); a walk, skipped otherwise.
    pub state: bool,
    /// SRC's state id before the comparison's walk: the target only if SRC still has it when
    /// the stream is sent (else what changed in between would be in the id, not the stream).
    pub state_before: Option<[u8; 16]>,
}

/// Compare SRC (walked through `filter`: `walked`, or walked again when it was walked for
/// other flags than the listing's) with the receiver's listing. Entries that could not be
/// read go to the returned log (the caller then changes nothing); entries the filter protects
/// and cannot leave alone are reported on their own and counted in [`Against::errors`].
///
/// `ask`: detect moved files (`crate::moves`): called once, with the deleted paths whose
/// content hashes the receiving end is to give (none with `--checksum`: the listing holds
/// them). `None`: no moves (a copy deletes nothing, a dry run asks nothing).
pub fn against(
    l: &Listing,
    walked: Walked,
    src: &Path,
    engine: EngineKind,
    filter: Arc<Filter>,
    quiet: bool,
    ask: Option<Ask<'_>>,
) -> (Result<Against, String>, ErrorLog) {
    let walked = if walked.flags == l.flags {
        walked
    } else {
        let state = walked.state_before.is_some();
        Walked::now(src, l.flags, engine, filter.clone(), quiet, state)
    };
    let r = against_walked(l, walked.entries, src, &filter, ask).map(|a| Against {
        state_before: walked.state_before,
        ..a
    });
    (r, walked.errors)
}

fn against_walked(
    l: &Listing,
    entries: Result<Vec<(Entry, Meta)>, String>,
    src: &Path,
    filter: &Filter,
    ask: Option<Ask<'_>>,
) -> Result<Against, String> {
    let entries = entries?;
    let protected = ErrorLog::new(false);
    let mut changes = compare(l, &entries, filter, &protected);
    if let Some(ask) = ask {
        if l.flags & FLAG_CHECKSUM != 0 {
            ask(&[])?;
            let hashes = |it: &mut dyn Iterator<Item = &Entry>| -> HashMap<Vec<u8>, [u8; 32]> {
                it.filter(|e| e.link == 0)
                    .filter_map(|e| e.hash.map(|h| (e.path.clone(), h)))
                    .collect()
            };
            let old = hashes(&mut l.entries.iter());
            let new = hashes(&mut entries.iter().map(|(e, _)| e));
            crate::moves::pair(&mut changes, &old, &new);
        } else {
            let (old, new) = crate::moves::candidates(&changes);
            let old = ask(&old)?;
            let new = if old.is_empty() {
                HashMap::new()
            } else {
                crate::moves::hash_all(src, &new)
            };
            crate::moves::pair(&mut changes, &old, &new);
        }
    }
    Ok(Against {
        id: l.id,
        // (A full stream carries all of SRC: not when filters narrow it.)
        empty: l.entries.is_empty() && !filter.is_active(),
        state_before: None,
        changes,
        errors: protected.errors(),
        state: false,
    })
}

/// The metadata an entry stands for (no inode: a hardlink group says `nlink` 2).
pub fn meta_of(e: &Entry) -> Meta {
    let ts = |t: (i64, u32)| rustix::fs::Timespec {
        tv_sec: t.0,
        tv_nsec: t.1 as _,
    };
    Meta {
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        size: e.size,
        blocks: 0,
        nlink: if e.link != 0 { 2 } else { 1 },
        dev: 0,
        ino: e.link,
        rdev: e.rdev,
        atime: ts(e.atime),
        mtime: ts(e.mtime),
        ctime: ts(e.mtime),
        btime: None,
    }
}

/// What changed from the listed tree (OLD) to `src` (NEW, from [`walk`] with the listing's
/// flags and `filter`): the diff walk's changes, every entry of created and deleted
/// directories listed. OLD entries the filter excludes are protected (left alone), unless it
/// deletes excluded entries; one standing where SRC has an entry of another type is reported
/// to `errors` and left alone.
pub fn compare(old: &Listing, src: &[(Entry, Meta)], filter: &Filter, errors: &ErrorLog) -> Vec<Change> {
    let owner = old.flags & FLAG_ROOT != 0;
    let checksum = old.flags & FLAG_CHECKSUM != 0;
    // Protected: excluded, or below an excluded directory (listed in order: parents first).
    let mut protected: std::collections::HashSet<&[u8]> = Default::default();
    if filter.needs_paths() && !filter.delete_excluded {
        for e in &old.entries {
            let (parent, _) = diff::split(&e.path);
            if protected.contains(parent)
                || filter.verdict(&e.path, e.file_type() == FileType::Directory, false) == Verdict::Skip
            {
                protected.insert(&e.path);
            }
        }
    }
    let by_path: HashMap<&[u8], &Entry> = old
        .entries
        .iter()
        .filter(|e| !protected.contains(e.path.as_slice()))
        .map(|e| (e.path.as_slice(), e))
        .collect();
    let mut old_groups: HashMap<u64, Vec<&[u8]>> = HashMap::new();
    for e in &old.entries {
        if e.link != 0 {
            old_groups.entry(e.link).or_default().push(&e.path);
        }
    }
    let mut new_groups: HashMap<u64, Vec<&[u8]>> = HashMap::new();
    for (e, _) in src {
        if e.link != 0 {
            new_groups.entry(e.link).or_default().push(&e.path);
        }
    }
    let change = |kind, path: &[u8], o: Option<&Entry>, m: &Meta, attrs| Change {
        kind,
        path: path.to_vec(),
        old_path: path.to_vec(),
        old: o.map(meta_of),
        new: Some(*m),
        attrs,
    };
    let mut out = Vec::new();
    let mut present: std::collections::HashSet<&[u8]> = Default::default();
    // SRC entries left out: where a protected entry stands, and below.
    let mut dropped: std::collections::HashSet<&[u8]> = Default::default();
    for (n, m) in src {
        present.insert(&n.path);
        let (parent, _) = diff::split(&n.path);
        if dropped.contains(parent) {
            dropped.insert(&n.path);
            continue;
        }
        if protected.contains(n.path.as_slice()) {
            dropped.insert(&n.path);
            {
                errors.report(crate::error::EntryError::msg(
                    "mirror",
                    std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&n.path)),
                    format!(
                        "an excluded entry stands where the source has a {}; left alone \
                         (--delete-excluded replaces it)",
                        diff::type_name(n.file_type())
                    ),
                ));
            }
            continue;
        }
        let Some(o) = by_path.get(n.path.as_slice()) else {
            out.push(change(Kind::Created, &n.path, None, m, 0));
            continue;
        };
        if o.mode & 0o170000 != n.mode & 0o170000 {
            out.push(change(Kind::Type, &n.path, Some(o), m, 0));
            continue;
        }
        let ft = n.file_type();
        let data = match ft {
            // With --checksum the content decides (a hash missing on either side: changed).
            FileType::RegularFile if checksum => o.size != n.size || o.hash.is_none() || o.hash != n.hash,
            FileType::RegularFile => o.size != n.size || o.mtime != n.mtime,
            FileType::Symlink => o.size != n.size || o.mtime != n.mtime,
            FileType::CharacterDevice | FileType::BlockDevice => o.rdev != n.rdev,
            _ => false,
        };
        if data {
            out.push(change(Kind::Modified, &n.path, Some(o), m, 0));
        } else {
            let mut bits = 0;
            if ft != FileType::Symlink && o.mode & 0o7777 != n.mode & 0o7777 {
                bits |= diff::attr::MODE;
            }
            if owner && (o.uid, o.gid) != (n.uid, n.gid) {
                bits |= diff::attr::OWNER;
            }
            if o.mtime != n.mtime {
                bits |= diff::attr::MTIME;
            }
            // A mirror sets atimes too (listed as changes only with --atimes).
            if o.atime != n.atime {
                bits |= diff::attr::ATIME;
            }
            if o.xattrs != n.xattrs {
                bits |= diff::attr::XATTRS;
            }
            if bits != 0 {
                out.push(change(Kind::Attrs, &n.path, Some(o), m, bits));
            }
        }
        // Hardlink groups: the paths sharing the inode on each side.
        if ft != FileType::Directory && (o.link != 0 || n.link != 0) {
            let mut was: Vec<&[u8]> = old_groups.get(&o.link).cloned().unwrap_or_else(|| vec![&o.path]);
            let mut now: Vec<&[u8]> = new_groups.get(&n.link).cloned().unwrap_or_else(|| vec![&n.path]);
            if o.link == 0 {
                was = vec![&o.path];
            }
            if n.link == 0 {
                now = vec![&n.path];
            }
            was.sort_unstable();
            now.sort_unstable();
            if was != now {
                out.push(change(Kind::Link, &n.path, Some(o), m, 0));
            }
        }
    }
    for o in &old.entries {
        if !present.contains(o.path.as_slice()) && !protected.contains(o.path.as_slice()) {
            out.push(Change {
                kind: Kind::Deleted,
                path: o.path.clone(),
                old_path: o.path.clone(),
                old: Some(meta_of(o)),
                new: None,
                attrs: 0,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, mode: u32) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            mode,
            uid: 1000,
            gid: 100,
            size: 5,
            mtime: (-3, 999_999_999),
            atime: (1 << 40, 1),
            ..Default::default()
        }
    }

    fn sample() -> Vec<Entry> {
        let mut v = vec![
            entry("a", 0o40755),
            entry("a.b", 0o100644),
            entry("a/b", 0o100600),
            entry("a/c", 0o120777),
            entry("z", 0o20644),
        ];
        v[2].link = 7;
        v[2].xattrs = [9; 16];
        v[2].hash = Some([3; 32]);
        v[4].rdev = 0x1234;
        v[1].size = u64::MAX;
        v[1].mtime = (i64::MIN, 0);
        v
    }

    #[test]
    fn a_listing_reads_back_as_written() {
        let v = sample();
        let mut b = Vec::new();
        let id = write(&mut b, FLAG_ROOT, &v).unwrap();
        let l = read(&mut &b[..]).unwrap();
        assert_eq!(l.entries, v);
        assert_eq!(l.flags, FLAG_ROOT);
        assert_eq!(l.id, id);
        assert_eq!(&blake3::hash(&b[..b.len() - 32]).as_bytes()[..16], &id);
    }

    #[test]
    fn damaged_listings_are_refused_without_panics() {
        let mut b = Vec::new();
        write(&mut b, 0, &sample()).unwrap();
        // Every truncation and every single-byte change is refused (the digest at least).
        for cut in 0..b.len() {
            assert!(read(&mut &b[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..b.len() {
            for x in [1u8, 0x80, 0xff] {
                let mut d = b.clone();
                d[i] ^= x;
                assert!(read(&mut &d[..]).is_err(), "byte {i} ^ {x:#x}");
            }
        }
    }

    #[test]
    fn bad_paths_and_orders_are_refused_even_with_a_good_digest() {
        let bad: [&[&str]; 7] = [
            &["a/../b"],
            &["./x"],
            &["/abs"],
            &["a//b"],
            &["b", "a"],
            &["a", "a"],
            &["d/x"],
        ];
        for paths in bad {
            let v: Vec<Entry> = paths.iter().map(|p| entry(p, 0o100644)).collect();
            let mut b = Vec::new();
            write(&mut b, 0, &v).unwrap();
            assert!(read(&mut &b[..]).is_err(), "{paths:?}");
        }
        // A file as a parent.
        let v = vec![entry("f", 0o100644), entry("f/x", 0o100644)];
        let mut b = Vec::new();
        write(&mut b, 0, &v).unwrap();
        assert!(read(&mut &b[..]).is_err());
    }

    #[test]
    fn random_bytes_after_the_magic_never_panic() {
        let mut seed = 0x9e3779b97f4a7c15u64;
        for _ in 0..20_000 {
            let mut b = MAGIC.to_vec();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let n = (seed % 64) as usize;
            for k in 0..n {
                b.push((seed >> (k % 8 * 8)) as u8 ^ k as u8);
            }
            assert!(read(&mut &b[..]).is_err());
        }
    }
}
