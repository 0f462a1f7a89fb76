//! Entry metadata: what a statx says about a source entry, and putting it on a target entry.
//!
//! Order matters and is the same for every kind of entry: owner first (chown clears setuid/setgid
//! and `security.capability`), then xattrs, then mode, then times (any earlier change would bump
//! them). Everything works relative to directory descriptors so paths longer than PATH_MAX work.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::{AtFlags, FileType, Mode, Statx, Timespec, Timestamps};
use rustix::io::Errno;

/// The parts of a statx the copy needs.
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub blocks: u64,
    pub nlink: u32,
    pub dev: u64,
    pub ino: u64,
    pub rdev: u64,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
    /// Birth time, where the filesystem reports one.
    pub btime: Option<Timespec>,
}

impl Meta {
    pub fn from_statx(s: &Statx) -> Meta {
        let ts = |t: &rustix::fs::StatxTimestamp| Timespec {
            tv_sec: t.tv_sec,
            tv_nsec: t.tv_nsec as _,
        };
        Meta {
            mode: s.stx_mode as u32,
            uid: s.stx_uid,
            gid: s.stx_gid,
            size: s.stx_size,
            blocks: s.stx_blocks,
            nlink: s.stx_nlink,
            dev: rustix::fs::makedev(s.stx_dev_major, s.stx_dev_minor),
            ino: s.stx_ino,
            rdev: rustix::fs::makedev(s.stx_rdev_major, s.stx_rdev_minor),
            atime: ts(&s.stx_atime),
            mtime: ts(&s.stx_mtime),
            ctime: ts(&s.stx_ctime),
            btime: (s.stx_mask & libc::STATX_BTIME != 0).then(|| ts(&s.stx_btime)),
        }
    }

    pub fn file_type(&self) -> FileType {
        FileType::from_raw_mode(self.mode as _)
    }

    /// Permission bits including setuid, setgid and sticky.
    pub fn perm(&self) -> Mode {
        Mode::from_raw_mode((self.mode & 0o7777) as _)
    }

    /// Whether the allocated size is below the apparent size: holes are likely.
    pub fn maybe_sparse(&self) -> bool {
        self.blocks.saturating_mul(512) < self.size
    }

    pub fn timestamps(&self) -> Timestamps {
        Timestamps {
            last_access: self.atime,
            last_modification: self.mtime,
        }
    }
}

/// Which metadata step failed, for error messages.
#[derive(Debug, Clone, Copy)]
pub enum MetaStep {
    Chown,
    Xattr,
    Chmod,
    Utimes,
}

impl MetaStep {
    pub fn name(self) -> &'static str {
        match self {
            MetaStep::Chown => "chown",
            MetaStep::Xattr => "setxattr",
            MetaStep::Chmod => "chmod",
            MetaStep::Utimes => "utimens",
        }
    }
}

/// What to preserve, decided once per run.
#[derive(Debug, Clone, Copy)]
pub struct Preserve {
    /// Owner and group: only root can give files away.
    pub owner: bool,
    /// All xattr namespaces (root) or only `user.*`.
    pub all_xattrs: bool,
}

/// Outcome of copying xattrs: an unsupported target is a warning, not a failure.
#[derive(Debug, Default)]
pub struct XattrOutcome {
    pub unsupported: bool,
}

/// Where `ringsync mirror` keeps its dirty marker and record, on the target root. It is never
/// copied, compared or pruned, so a mirror of a mirror target does not inherit it.
pub const RECORD_XATTR: &CStr = c"user.ringsync.mirror";

/// Non-root copies `user.*` and POSIX ACLs (an owner may set both); root copies everything.
pub fn xattr_wanted(name: &[u8], p: Preserve) -> bool {
    (p.all_xattrs || name.starts_with(b"user.") || name.starts_with(b"system.posix_acl_"))
        && name != RECORD_XATTR.to_bytes()
}

/// List, then fetch each value, growing buffers on ERANGE.
fn list_xattrs(list: impl Fn(&mut Vec<u8>) -> Result<usize, Errno>) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; 1024];
    loop {
        match list(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::RANGE) => {
                let len = buf.len() * 4;
                buf.resize(len, 0);
            }
            Err(e) => return Err(e),
        }
    }
}

fn get_value(get: impl Fn(&mut Vec<u8>) -> Result<usize, Errno>) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; 256];
    loop {
        match get(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::RANGE) if buf.len() < 1 << 20 => {
                let len = buf.len() * 8;
                buf.resize(len, 0);
            }
            Err(e) => return Err(e),
        }
    }
}

fn names(list: &[u8]) -> impl Iterator<Item = &CStr> {
    list.split_inclusive(|b| *b == 0)
        .filter_map(|n| CStr::from_bytes_with_nul(n).ok())
}

/// Remove copied-namespace xattrs present on the target but not in the source list: a new
/// entry inherits ACLs from a default ACL on its parent, which must go when the source has none.
fn prune_extra(
    src_list: &[u8],
    dst_list: Result<Vec<u8>, Errno>,
    p: Preserve,
    remove: impl Fn(&CStr) -> Result<(), Errno>,
) -> Result<(), Errno> {
    let dst_list = match dst_list {
        Ok(l) => l,
        Err(e) if unsupported(e) => return Ok(()),
        Err(e) => return Err(e),
    };
    for name in names(&dst_list) {
        if xattr_wanted(name.to_bytes(), p) && !names(src_list).any(|n| n == name) {
            match remove(name) {
                Ok(()) | Err(Errno::NODATA) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

fn unsupported(e: Errno) -> bool {
    e == Errno::NOTSUP || e == Errno::OPNOTSUPP
}

/// Copy xattrs between two open descriptors.
/// With `prune`, target xattrs the source lacks are removed (reused or ACL-inheriting targets).
pub fn copy_xattrs_fd(
    src: BorrowedFd,
    dst: BorrowedFd,
    p: Preserve,
    prune: bool,
) -> Result<XattrOutcome, Errno> {
    let list = match list_xattrs(|b| rustix::fs::flistxattr(src, &mut b[..])) {
        Ok(l) => l,
        Err(e) if unsupported(e) => return Ok(XattrOutcome::default()),
        Err(e) => return Err(e),
    };
    if prune {
        let dst_list = list_xattrs(|b| rustix::fs::flistxattr(dst, &mut b[..]));
        prune_extra(&list, dst_list, p, |n| rustix::fs::fremovexattr(dst, n))?;
    }
    let mut out = XattrOutcome::default();
    for name in names(&list) {
        if !xattr_wanted(name.to_bytes(), p) {
            continue;
        }
        let value = match get_value(|b| rustix::fs::fgetxattr(src, name, &mut b[..])) {
            Ok(v) => v,
            // Removed between list and get.
            Err(Errno::NODATA) => continue,
            Err(e) => return Err(e),
        };
        // A rule names the entry (its descriptor's name), not the attribute.
        let fault = crate::failpoint::hit_fd("xattr", std::os::fd::AsRawFd::as_raw_fd(&dst));
        let set = match fault {
            Some(crate::failpoint::Fault::Fail(e)) => Err(e),
            _ => rustix::fs::fsetxattr(dst, name, &value, rustix::fs::XattrFlags::empty()),
        };
        match set {
            Ok(()) => {}
            Err(e) if unsupported(e) => out.unsupported = true,
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Path through which an entry that cannot be opened (symlink, fifo, device) is reached for
/// the l*xattr calls, relative to its directory descriptor and so free of PATH_MAX.
pub fn proc_path(dir: BorrowedFd, name: &CStr) -> CString {
    use std::os::fd::AsRawFd;
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name.to_bytes());
    CString::new(p).expect("names have no NUL")
}

/// Copy xattrs of a non-openable entry (symlink, fifo, device) without following it.
pub fn copy_xattrs_at(
    src_dir: BorrowedFd,
    src_name: &CStr,
    dst_dir: BorrowedFd,
    name: &CStr,
    p: Preserve,
    prune: bool,
) -> Result<XattrOutcome, Errno> {
    let sp = proc_path(src_dir, src_name);
    let dp = proc_path(dst_dir, name);
    let list = match list_xattrs(|b| rustix::fs::llistxattr(sp.as_c_str(), &mut b[..])) {
        Ok(l) => l,
        Err(e) if unsupported(e) => return Ok(XattrOutcome::default()),
        Err(e) => return Err(e),
    };
    if prune {
        let dst_list = list_xattrs(|b| rustix::fs::llistxattr(dp.as_c_str(), &mut b[..]));
        prune_extra(&list, dst_list, p, |n| rustix::fs::lremovexattr(dp.as_c_str(), n))?;
    }
    let mut out = XattrOutcome::default();
    for xname in names(&list) {
        if !xattr_wanted(xname.to_bytes(), p) {
            continue;
        }
        let value = match get_value(|b| rustix::fs::lgetxattr(sp.as_c_str(), xname, &mut b[..])) {
            Ok(v) => v,
            Err(Errno::NODATA) => continue,
            Err(e) => return Err(e),
        };
        match rustix::fs::lsetxattr(dp.as_c_str(), xname, &value, rustix::fs::XattrFlags::empty()) {
            Ok(()) => {}
            Err(e) if unsupported(e) => out.unsupported = true,
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// What is known about a target entry ringsync just created, so that steps which would change
/// nothing are skipped (each is a syscall per file, which matters for many small files).
#[derive(Debug, Clone, Copy, Default)]
pub struct Created {
    /// Owner and group the kernel gave the new entry.
    pub owner: Option<(u32, u32)>,
    /// Permission bits it was created with, when no umask or inherited ACL changed them.
    pub perm: Option<u32>,
    /// It may carry xattrs the source lacks (reused entry, or ACLs inherited from its parent).
    pub prune: bool,
}

/// Permission bits to create a regular file with: its final bits when nothing will have to
/// change them afterwards (no setuid/setgid/sticky, which chown would clear; no inherited
/// ACL, which masks the mode), else owner-only until the metadata step.
pub fn create_perm(m: &Meta, inherits_acl: bool) -> Option<u32> {
    let perm = m.mode & 0o7777;
    (perm & 0o7000 == 0 && !inherits_acl).then_some(perm)
}

/// Apply owner, xattrs, mode and times to an open target (regular file or directory).
pub fn apply_fd(
    src: BorrowedFd,
    dst: BorrowedFd,
    m: &Meta,
    p: Preserve,
    created: Created,
) -> Result<XattrOutcome, (MetaStep, Errno)> {
    if p.owner && created.owner != Some((m.uid, m.gid)) {
        rustix::fs::fchown(
            dst,
            Some(rustix::fs::Uid::from_raw(m.uid)),
            Some(rustix::fs::Gid::from_raw(m.gid)),
        )
        .map_err(|e| (MetaStep::Chown, e))?;
    }
    let x = copy_xattrs_fd(src, dst, p, created.prune).map_err(|e| (MetaStep::Xattr, e))?;
    if created.perm != Some(m.mode & 0o7777) {
        rustix::fs::fchmod(dst, m.perm()).map_err(|e| (MetaStep::Chmod, e))?;
    }
    rustix::fs::futimens(dst, &m.timestamps()).map_err(|e| (MetaStep::Utimes, e))?;
    Ok(x)
}

/// Apply metadata to a symlink, fifo or device node by name (never following it).
pub fn apply_at(
    src_dir: BorrowedFd,
    src_name: &CStr,
    dst_dir: BorrowedFd,
    name: &CStr,
    m: &Meta,
    p: Preserve,
    prune: bool,
) -> Result<XattrOutcome, (MetaStep, Errno)> {
    if p.owner {
        rustix::fs::chownat(
            dst_dir,
            name,
            Some(rustix::fs::Uid::from_raw(m.uid)),
            Some(rustix::fs::Gid::from_raw(m.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| (MetaStep::Chown, e))?;
    }
    let x = copy_xattrs_at(src_dir, src_name, dst_dir, name, p, prune).map_err(|e| (MetaStep::Xattr, e))?;
    if m.file_type() != FileType::Symlink {
        // Symlink permissions are fixed at 0777 on Linux. chmodat would follow a symlink that
        // replaced the entry meanwhile (and change whatever it points to): pin the entry with
        // O_PATH|O_NOFOLLOW, check it is no symlink, and chmod the inode through /proc.
        chmod_nofollow(dst_dir, name, m.perm()).map_err(|e| (MetaStep::Chmod, e))?;
    }
    rustix::fs::utimensat(dst_dir, name, &m.timestamps(), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| (MetaStep::Utimes, e))?;
    Ok(x)
}

/// chmod `name` in `dir` without following it if it is a symlink (ELOOP then).
pub fn chmod_nofollow(dir: BorrowedFd, name: &CStr, mode: Mode) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    let fd = rustix::fs::openat(
        dir,
        name,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
        return Err(Errno::LOOP);
    }
    let p = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL");
    rustix::fs::chmod(p.as_c_str(), mode)
}

/// Borrow helper so callers holding `Arc<OwnedFd>` read naturally.
pub fn fd<T: AsFd>(t: &T) -> BorrowedFd<'_> {
    t.as_fd()
}

/// Whether new entries in this target directory inherit ACLs (it has a default ACL).
pub fn has_default_acl(dir: BorrowedFd) -> bool {
    let mut b = [0u8; 0];
    matches!(
        rustix::fs::fgetxattr(dir, c"system.posix_acl_default", &mut b[..]),
        Ok(_) | Err(Errno::RANGE)
    )
}

/// The names of the xattrs an open entry has (none where the filesystem takes none).
pub fn xattr_names_fd(fd: BorrowedFd) -> Result<Vec<CString>, Errno> {
    match list_xattrs(|b| rustix::fs::flistxattr(fd, &mut b[..])) {
        Ok(l) => Ok(names(&l).map(CStr::to_owned).collect()),
        Err(e) if unsupported(e) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The xattrs of `name` in `dir` that a copy carries (see [`xattr_wanted`]), sorted by name, for
/// comparing two entries. Never follows a symlink. A filesystem without xattrs has none.
pub fn xattrs_at(dir: BorrowedFd, name: &CStr, p: Preserve) -> Result<Vec<(CString, Vec<u8>)>, Errno> {
    match xattrs_at_fast(dir, name, p) {
        Err(Errno::NOSYS) => xattrs_at_path(dir, name, p),
        r => r,
    }
}

/// [`xattrs_at`] through `listxattrat`/`getxattrat` (Linux 6.13; `ENOSYS` before).
fn xattrs_at_fast(dir: BorrowedFd, name: &CStr, p: Preserve) -> Result<Vec<(CString, Vec<u8>)>, Errno> {
    use crate::ring::xattr::{get_at, list_at};
    wanted_xattrs(
        |b| list_at(dir, name, &mut b[..]),
        |x, b| get_at(dir, name, x, &mut b[..]),
        p,
    )
}

/// [`xattrs_at`] through the entry's /proc/self/fd path.
fn xattrs_at_path(dir: BorrowedFd, name: &CStr, p: Preserve) -> Result<Vec<(CString, Vec<u8>)>, Errno> {
    let path = proc_path(dir, name);
    wanted_xattrs(
        |b| rustix::fs::llistxattr(path.as_c_str(), &mut b[..]),
        |x, b| rustix::fs::lgetxattr(path.as_c_str(), x, &mut b[..]),
        p,
    )
}

/// The wanted xattrs, sorted, through a list and a get call.
fn wanted_xattrs(
    list: impl Fn(&mut Vec<u8>) -> Result<usize, Errno>,
    get: impl Fn(&CStr, &mut Vec<u8>) -> Result<usize, Errno>,
    p: Preserve,
) -> Result<Vec<(CString, Vec<u8>)>, Errno> {
    let list = match list_xattrs(list) {
        Ok(l) => l,
        Err(e) if unsupported(e) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for xname in names(&list) {
        if !xattr_wanted(xname.to_bytes(), p) {
            continue;
        }
        match get_value(|b| get(xname, b)) {
            Ok(v) => out.push((xname.to_owned(), v)),
            Err(Errno::NODATA) => {}
            Err(e) => return Err(e),
        }
    }
    out.sort();
    Ok(out)
}
