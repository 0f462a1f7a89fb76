//! Independent tree-comparison oracle.
//!
//! Walks two trees relative to directory file descriptors (so paths longer
//! than `PATH_MAX` work) and reports every difference as a readable string
//! naming the relative path. It does not use the `ringsync` library.
//!
//! Sparse rule: when a source regular file is sparse (`st_blocks * 512 <
//! st_size`), the target must be sparse as well, within a slack of
//! [`SPARSE_SLACK_BASE_SECTORS`] (64 KiB) plus
//! [`SPARSE_SLACK_SECTORS_PER_MIB`] (16 fs blocks of 4 KiB = 64 KiB) per MiB
//! of data the source has allocated. The slack absorbs extent-tree blocks and
//! allocation-granularity differences; filling a 1 MiB hole exceeds it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, StatxFlags, CWD};
use rustix::io::Errno;
use sha2::{Digest, Sha256};

/// Base sparse slack, in 512-byte sectors (64 KiB).
pub const SPARSE_SLACK_BASE_SECTORS: u64 = 128;
/// Additional sparse slack per MiB of allocated source data, in 512-byte
/// sectors (16 blocks of 4 KiB).
pub const SPARSE_SLACK_SECTORS_PER_MIB: u64 = 128;

/// Which aspects the oracle compares.
#[derive(Clone, Debug)]
pub struct CompareOpts {
    /// Compare atime (ns) on all entries, including the root.
    pub atime: bool,
    /// Compare numeric uid/gid.
    pub owner: bool,
    /// Compare all xattrs (names and values).
    pub xattrs: bool,
    /// Enforce the sparse rule described in the module docs.
    pub sparse: bool,
    /// Entries that exist only in `b` are not reported (copy into an existing
    /// destination). Hardlink groups in `b` still include them.
    pub allow_extra_in_b: bool,
    /// Sockets in `a` are not expected in `b`.
    pub skip_sockets: bool,
    /// Relative paths (and their subtrees) that are ignored on both sides.
    pub ignore: Vec<Vec<u8>>,
    /// Xattr names that are ignored on the root directory (`.`) only, on both
    /// sides (e.g. `user.ringsync.mirror`, the mirror's record on DST's root).
    pub ignore_root_xattrs: Vec<Vec<u8>>,
}

impl Default for CompareOpts {
    fn default() -> Self {
        CompareOpts {
            atime: true,
            owner: true,
            xattrs: true,
            sparse: true,
            allow_extra_in_b: false,
            skip_sockets: false,
            ignore: Vec::new(),
            ignore_root_xattrs: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Char,
    Block,
    Socket,
    Unknown,
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub kind: Kind,
    /// Permission bits including suid/sgid/sticky (`mode & 0o7777`).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// `st_blocks` (512-byte units).
    pub blocks: u64,
    pub nlink: u32,
    pub ino: u64,
    pub rdev: (u32, u32),
    pub mtime: (i64, u32),
    pub atime: (i64, u32),
    pub hash: Option<[u8; 32]>,
    pub target: Option<Vec<u8>>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Entry {
    pub fn is_sparse(&self) -> bool {
        self.kind == Kind::File && self.blocks * 512 < self.size
    }
}

/// A scanned tree: relative path (root is `.`) to entry.
#[derive(Clone, Debug, Default)]
pub struct Tree {
    pub entries: BTreeMap<Vec<u8>, Entry>,
}

impl Tree {
    /// Paths grouped by inode, for non-directories with more than one name
    /// inside the tree.
    pub fn hardlink_groups(&self) -> Vec<Vec<Vec<u8>>> {
        let mut by_ino: BTreeMap<u64, Vec<Vec<u8>>> = BTreeMap::new();
        for (p, e) in &self.entries {
            if e.kind != Kind::Dir && e.nlink > 1 {
                by_ino.entry(e.ino).or_default().push(p.clone());
            }
        }
        by_ino.into_values().filter(|g| g.len() > 1).collect()
    }

    pub fn count(&self, kind: Kind) -> usize {
        self.entries.values().filter(|e| e.kind == kind).count()
    }
}

/// Render a byte path readably (non-UTF-8 and control bytes escaped).
pub fn show(p: &[u8]) -> String {
    let s = p.escape_ascii().to_string();
    if s.len() > 300 {
        format!("{}...{} ({} bytes)", &s[..120], &s[s.len() - 120..], p.len())
    } else {
        s
    }
}

fn kind_of(mode: u32) -> Kind {
    match FileType::from_raw_mode(mode) {
        FileType::RegularFile => Kind::File,
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink,
        FileType::Fifo => Kind::Fifo,
        FileType::CharacterDevice => Kind::Char,
        FileType::BlockDevice => Kind::Block,
        FileType::Socket => Kind::Socket,
        _ => Kind::Unknown,
    }
}

/// Open with `O_NOATIME` when permitted, so the oracle never bumps atimes.
fn open_noatime(dirfd: BorrowedFd<'_>, name: &[u8], flags: OFlags) -> io::Result<OwnedFd> {
    let base = flags | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    match rustix::fs::openat(dirfd, name, base | OFlags::NOATIME, Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(Errno::PERM) => Ok(rustix::fs::openat(dirfd, name, base, Mode::empty())?),
        Err(e) => Err(e.into()),
    }
}

fn hash_fd(fd: OwnedFd) -> io::Result<[u8; 32]> {
    let mut f = std::fs::File::from(fd);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

fn unsupported(e: Errno) -> bool {
    e == Errno::NOTSUP || e == Errno::OPNOTSUPP || e == Errno::NODATA
}

type ListFn<'a> = &'a dyn Fn(&mut [u8]) -> rustix::io::Result<usize>;
type GetFn<'a> = &'a dyn Fn(&[u8], &mut [u8]) -> rustix::io::Result<usize>;

/// Xattr access for one object: list/get, each with a size query.
struct XattrOps<'a> {
    list_query: &'a dyn Fn() -> rustix::io::Result<usize>,
    list: ListFn<'a>,
    get_query: &'a dyn Fn(&[u8]) -> rustix::io::Result<usize>,
    get: GetFn<'a>,
}

/// Read all xattrs (names and values).
fn read_xattrs(ops: XattrOps<'_>) -> io::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let names = loop {
        let n = match (ops.list_query)() {
            Ok(n) => n,
            Err(e) if unsupported(e) => return Ok(out),
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return Ok(out);
        }
        let mut buf = vec![0u8; n];
        match (ops.list)(&mut buf) {
            Ok(m) => {
                buf.truncate(m);
                break buf;
            }
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let value = loop {
            let n = (ops.get_query)(name)?;
            if n == 0 {
                break Vec::new();
            }
            let mut buf = vec![0u8; n];
            match (ops.get)(name, &mut buf) {
                Ok(m) => {
                    buf.truncate(m);
                    break buf;
                }
                Err(Errno::RANGE) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        out.insert(name.to_vec(), value);
    }
    Ok(out)
}

fn xattrs_fd(fd: BorrowedFd<'_>) -> io::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    read_xattrs(XattrOps {
        list_query: &|| rustix::fs::flistxattr_query(fd),
        list: &|buf| rustix::fs::flistxattr(fd, buf),
        get_query: &|name| rustix::fs::fgetxattr_query(fd, name),
        get: &|name, buf| rustix::fs::fgetxattr(fd, name, buf),
    })
}

fn xattrs_at(dirfd: BorrowedFd<'_>, name: &[u8]) -> io::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut path = format!("/proc/self/fd/{}/", dirfd.as_raw_fd()).into_bytes();
    path.extend_from_slice(name);
    let p = path.as_slice();
    read_xattrs(XattrOps {
        list_query: &|| rustix::fs::llistxattr_query(p),
        list: &|buf| rustix::fs::llistxattr(p, buf),
        get_query: &|n| rustix::fs::lgetxattr_query(p, n),
        get: &|n, buf| rustix::fs::lgetxattr(p, n, buf),
    })
}

fn stat_entry(dirfd: BorrowedFd<'_>, name: &[u8], flags: AtFlags) -> io::Result<Entry> {
    let st = rustix::fs::statx(dirfd, name, flags, StatxFlags::BASIC_STATS)?;
    let mode = u32::from(st.stx_mode);
    Ok(Entry {
        kind: kind_of(mode),
        perm: mode & 0o7777,
        uid: st.stx_uid,
        gid: st.stx_gid,
        size: st.stx_size,
        blocks: st.stx_blocks,
        nlink: st.stx_nlink,
        ino: st.stx_ino,
        rdev: (st.stx_rdev_major, st.stx_rdev_minor),
        mtime: (st.stx_mtime.tv_sec, st.stx_mtime.tv_nsec),
        atime: (st.stx_atime.tv_sec, st.stx_atime.tv_nsec),
        hash: None,
        target: None,
        xattrs: BTreeMap::new(),
    })
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent == b"." {
        name.to_vec()
    } else {
        let mut p = parent.to_vec();
        p.push(b'/');
        p.extend_from_slice(name);
        p
    }
}

fn list_dir(fd: &OwnedFd) -> io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    let mut dir = rustix::fs::Dir::read_from(fd)?;
    while let Some(ent) = dir.read() {
        let ent = ent?;
        let n = ent.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    names.sort();
    Ok(names)
}

fn scan_dir(
    dirfd: &OwnedFd,
    rel: &[u8],
    want_hash: bool,
    out: &mut BTreeMap<Vec<u8>, Entry>,
) -> io::Result<()> {
    let ctx = |e: io::Error, what: &str, p: &[u8]| {
        io::Error::new(e.kind(), format!("oracle: {what} {}: {e}", show(p)))
    };
    for name in list_dir(dirfd).map_err(|e| ctx(e, "readdir", rel))? {
        let path = join(rel, &name);
        let mut ent = stat_entry(dirfd.as_fd(), &name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| ctx(e, "statx", &path))?;
        match ent.kind {
            Kind::File => {
                let fd =
                    open_noatime(dirfd.as_fd(), &name, OFlags::empty()).map_err(|e| ctx(e, "open", &path))?;
                ent.xattrs = xattrs_fd(fd.as_fd()).map_err(|e| ctx(e, "xattrs", &path))?;
                if want_hash {
                    ent.hash = Some(hash_fd(fd).map_err(|e| ctx(e, "read", &path))?);
                }
                out.insert(path, ent);
            }
            Kind::Dir => {
                let fd = open_noatime(dirfd.as_fd(), &name, OFlags::DIRECTORY)
                    .map_err(|e| ctx(e, "opendir", &path))?;
                ent.xattrs = xattrs_fd(fd.as_fd()).map_err(|e| ctx(e, "xattrs", &path))?;
                out.insert(path.clone(), ent);
                scan_dir(&fd, &path, want_hash, out)?;
            }
            _ => {
                if ent.kind == Kind::Symlink {
                    let t = rustix::fs::readlinkat(dirfd.as_fd(), name.as_slice(), Vec::new())
                        .map_err(|e| ctx(e.into(), "readlink", &path))?;
                    ent.target = Some(t.into_bytes());
                }
                ent.xattrs = xattrs_at(dirfd.as_fd(), &name).map_err(|e| ctx(e, "xattrs", &path))?;
                out.insert(path, ent);
            }
        }
    }
    Ok(())
}

/// Scan a whole tree. The root is recorded under the key `.`.
pub fn scan_tree(root: &Path, want_hash: bool) -> io::Result<Tree> {
    let fd = open_noatime(CWD, root.as_os_str().as_encoded_bytes(), OFlags::DIRECTORY)?;
    let mut ent = stat_entry(fd.as_fd(), b"", AtFlags::EMPTY_PATH)?;
    ent.xattrs = xattrs_fd(fd.as_fd())?;
    let mut entries = BTreeMap::new();
    entries.insert(b".".to_vec(), ent);
    scan_dir(&fd, b".", want_hash, &mut entries)?;
    Ok(Tree { entries })
}

fn ignored(p: &[u8], opts: &CompareOpts) -> bool {
    opts.ignore
        .iter()
        .any(|i| p == i.as_slice() || (p.starts_with(i) && p.get(i.len()) == Some(&b'/')))
}

fn fmt_time(t: (i64, u32)) -> String {
    format!("{}.{:09}", t.0, t.1)
}

fn fmt_xattrs(x: &BTreeMap<Vec<u8>, Vec<u8>>) -> String {
    let mut s = String::from("{");
    for (k, v) in x {
        let v = if v.len() > 40 {
            format!("<{} bytes>", v.len())
        } else {
            format!("{:?}", show(v))
        };
        let _ = write!(s, "{}={v}, ", show(k));
    }
    s.push('}');
    s
}

/// Compare one entry pair; pushes differences.
fn compare_entry(p: &[u8], a: &Entry, b: &Entry, opts: &CompareOpts, d: &mut Vec<String>) {
    let sp = show(p);
    if a.kind != b.kind {
        d.push(format!("{sp}: file type differs: {:?} vs {:?}", a.kind, b.kind));
        return;
    }
    if a.perm != b.perm {
        d.push(format!("{sp}: mode differs: {:04o} vs {:04o}", a.perm, b.perm));
    }
    if opts.owner && (a.uid, a.gid) != (b.uid, b.gid) {
        d.push(format!(
            "{sp}: owner uid:gid differs: {}:{} vs {}:{}",
            a.uid, a.gid, b.uid, b.gid
        ));
    }
    if a.mtime != b.mtime {
        d.push(format!(
            "{sp}: mtime differs: {} vs {}",
            fmt_time(a.mtime),
            fmt_time(b.mtime)
        ));
    }
    if opts.atime && a.atime != b.atime {
        d.push(format!(
            "{sp}: atime differs: {} vs {}",
            fmt_time(a.atime),
            fmt_time(b.atime)
        ));
    }
    if opts.xattrs {
        // On the root, drop the names in `ignore_root_xattrs` from both sides.
        let filtered = |x: &BTreeMap<Vec<u8>, Vec<u8>>| -> BTreeMap<Vec<u8>, Vec<u8>> {
            x.iter()
                .filter(|(k, _)| p != b"." || !opts.ignore_root_xattrs.iter().any(|i| i == *k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let (xa, xb) = (filtered(&a.xattrs), filtered(&b.xattrs));
        if xa != xb {
            d.push(format!(
                "{sp}: xattrs differ: {} vs {}",
                fmt_xattrs(&xa),
                fmt_xattrs(&xb)
            ));
        }
    }
    match a.kind {
        Kind::File => {
            if a.size != b.size {
                d.push(format!("{sp}: size differs: {} vs {}", a.size, b.size));
            }
            if a.hash != b.hash {
                d.push(format!("{sp}: content differs (sha256)"));
            }
            if opts.sparse && a.is_sparse() {
                let alloc_mib = (a.blocks * 512).div_ceil(1 << 20);
                let allowed = a.blocks + SPARSE_SLACK_BASE_SECTORS + SPARSE_SLACK_SECTORS_PER_MIB * alloc_mib;
                if b.blocks > allowed {
                    d.push(format!(
                        "{sp}: sparse source ({} sectors allocated for {} bytes) but target \
                         has {} sectors allocated (allowed <= {allowed})",
                        a.blocks, a.size, b.blocks
                    ));
                }
            }
        }
        Kind::Symlink if a.target != b.target => {
            d.push(format!(
                "{sp}: symlink target differs: {:?} vs {:?}",
                a.target.as_deref().map(show),
                b.target.as_deref().map(show)
            ));
        }
        Kind::Char | Kind::Block if a.rdev != b.rdev => {
            d.push(format!(
                "{sp}: rdev differs: {}:{} vs {}:{}",
                a.rdev.0, a.rdev.1, b.rdev.0, b.rdev.1
            ));
        }
        _ => {}
    }
}

/// Compare two scanned trees.
pub fn compare_scanned(ta: &Tree, tb: &Tree, opts: &CompareOpts) -> Vec<String> {
    let mut d = Vec::new();
    let skip_a = |p: &[u8], e: &Entry| ignored(p, opts) || (opts.skip_sockets && e.kind == Kind::Socket);
    for (p, ea) in &ta.entries {
        if skip_a(p, ea) {
            continue;
        }
        match tb.entries.get(p) {
            None => d.push(format!("{}: missing in target ({:?})", show(p), ea.kind)),
            Some(eb) => compare_entry(p, ea, eb, opts, &mut d),
        }
    }
    if !opts.allow_extra_in_b {
        for (p, eb) in &tb.entries {
            if ignored(p, opts) {
                continue;
            }
            if !ta.entries.contains_key(p) {
                d.push(format!("{}: extra in target ({:?})", show(p), eb.kind));
            }
        }
    }
    // Hardlink partition: for every path of `a`, the set of paths sharing its
    // inode must be identical in `b`.
    let group_map = |t: &Tree| {
        let mut m: BTreeMap<Vec<u8>, BTreeSet<Vec<u8>>> = BTreeMap::new();
        for g in t.hardlink_groups() {
            let set: BTreeSet<Vec<u8>> = g.iter().filter(|p| !ignored(p, opts)).cloned().collect();
            for p in g {
                m.insert(p, set.clone());
            }
        }
        m
    };
    let (ga, gb) = (group_map(ta), group_map(tb));
    for (p, ea) in &ta.entries {
        if ea.kind == Kind::Dir || skip_a(p, ea) || !tb.entries.contains_key(p) {
            continue;
        }
        let single: BTreeSet<Vec<u8>> = [p.clone()].into_iter().collect();
        let a_grp = ga.get(p).unwrap_or(&single);
        let b_grp = gb.get(p).unwrap_or(&single);
        if a_grp != b_grp {
            let f = |g: &BTreeSet<Vec<u8>>| g.iter().map(|x| show(x)).collect::<Vec<_>>();
            d.push(format!(
                "{}: hardlink group differs: {:?} vs {:?}",
                show(p),
                f(a_grp),
                f(b_grp)
            ));
        }
    }
    d
}

/// Compare tree `a` (source) with tree `b` (copy). Empty result = identical.
pub fn compare_trees(a: &Path, b: &Path, opts: &CompareOpts) -> Vec<String> {
    let ta = match scan_tree(a, true) {
        Ok(t) => t,
        Err(e) => return vec![format!("cannot scan source tree {}: {e}", a.display())],
    };
    let tb = match scan_tree(b, true) {
        Ok(t) => t,
        Err(e) => return vec![format!("cannot scan target tree {}: {e}", b.display())],
    };
    compare_scanned(&ta, &tb, opts)
}

/// Panic with a readable list if the trees differ.
pub fn assert_trees_equal(a: &Path, b: &Path, opts: &CompareOpts, what: &str) {
    let d = compare_trees(a, b, opts);
    if !d.is_empty() {
        let shown: Vec<&String> = d.iter().take(60).collect();
        panic!(
            "{what}: trees differ ({} differences; first {}):\n  {}",
            d.len(),
            shown.len(),
            shown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n  ")
        );
    }
}
