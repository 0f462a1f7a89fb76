//! The steps a mirror does itself before the engine runs: staging renames, deleting subtrees,
//! making directories, placing staged entries. All relative to DST's root descriptor, one path
//! component at a time, never following a symlink.

use std::ffi::{CStr, CString};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RawDir};
use rustix::io::Errno;

use super::plan::Step;
use crate::diff::{full, join, open_dir_path, split};
use crate::error::{EntryError, ErrorLog};
use crate::filter::{Filter, Verdict};

fn cname(b: &[u8]) -> CString {
    CString::new(b).expect("names have no NUL")
}

/// Remove `name` in `dir` and, if it is a directory, everything below it. A missing entry is
/// fine (already gone).
pub fn remove_tree(dir: &OwnedFd, name: &CStr, is_root: bool) -> Result<(), Errno> {
    remove_below(dir, name, is_root, None).map(drop)
}

/// What a filtered removal keeps: entries the filter skips, at paths below DST's root.
#[derive(Clone, Copy)]
struct Keep<'a> {
    filter: &'a Filter,
    /// `name`'s path below DST's root.
    rel: &'a [u8],
}

/// [`remove_tree`], but with `keep` the entries the filter protects stay (a mirror never deletes
/// an excluded entry without `--delete-excluded`), and so does every directory holding one,
/// with its mode as it was. Returns whether anything was kept.
fn remove_below(dir: &OwnedFd, name: &CStr, is_root: bool, keep: Option<Keep>) -> Result<bool, Errno> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(false),
        Err(Errno::ISDIR) => {}
        Err(e) => return Err(e),
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, name, flags, Mode::empty())?;
    // Emptying a read-only directory needs write permission on it; a kept one gets its mode back.
    let mode = match is_root {
        true => None,
        false => {
            let m = rustix::fs::fstat(&fd)?.st_mode & 0o7777;
            (m & 0o700 != 0o700)
                .then(|| rustix::fs::fchmod(&fd, Mode::from_raw_mode(m | 0o700)).ok())
                .flatten()
                .map(|()| m)
        }
    };
    let mut names = Vec::new();
    {
        let mut buf = vec![MaybeUninit::<u8>::uninit(); 32 << 10];
        let mut it = RawDir::new(&fd, &mut buf);
        while let Some(e) = it.next() {
            let e = e?;
            let n = e.file_name();
            if n == c"." || n == c".." {
                continue;
            }
            let is_dir = match (keep, e.file_type()) {
                (None, _) => false,
                (Some(_), FileType::Unknown) => rustix::fs::statat(&fd, n, AtFlags::SYMLINK_NOFOLLOW)
                    .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory),
                (Some(_), t) => t == FileType::Directory,
            };
            names.push((n.to_owned(), is_dir));
        }
    }
    let mut kept = false;
    for (n, is_dir) in names {
        kept |= match keep {
            None => remove_below(&fd, &n, is_root, None)?,
            Some(k) => {
                let rel = join(k.rel, n.as_bytes());
                if k.filter.verdict(&rel, is_dir, false) == Verdict::Skip {
                    true
                } else {
                    let below = Keep { rel: &rel, ..k };
                    remove_below(&fd, &n, is_root, Some(below))?
                }
            }
        };
    }
    if kept {
        if let Some(m) = mode {
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(m))?;
        }
        return Ok(true);
    }
    drop(fd);
    match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Run `op` on directory `dir`; if that is refused for want of write permission there and we
/// are not root (a read-only directory of the source, mirrored), make it writable for the
/// owner, retry, and put its mode back (the plan sets its final attributes afterwards).
fn writable<T>(dir: &OwnedFd, is_root: bool, op: impl Fn() -> Result<T, Errno>) -> Result<T, Errno> {
    match op() {
        Err(Errno::ACCESS) if !is_root => {
            let mode = rustix::fs::fstat(dir)?.st_mode & 0o7777;
            rustix::fs::fchmod(dir, Mode::from_raw_mode(mode | 0o700))?;
            let r = op();
            let _ = rustix::fs::fchmod(dir, Mode::from_raw_mode(mode));
            r
        }
        r => r,
    }
}

/// Parent directory of `rel` below the root, and the last name.
fn parent_of(root: &OwnedFd, rel: &[u8]) -> Result<(OwnedFd, CString), Errno> {
    let (parent, name) = split(rel);
    Ok((open_dir_path(root, parent, false)?, cname(name)))
}

/// Run the steps in order; failures are reported (with the DST path and the operation) and
/// the run goes on. Returns how many steps failed.
pub fn run_steps(
    root: &OwnedFd,
    dst: &Path,
    staging: &[u8],
    steps: &[Step],
    filter: &Filter,
    errors: &ErrorLog,
) -> u64 {
    let is_root = rustix::process::geteuid().is_root();
    let protects = filter.needs_paths() && !filter.delete_excluded;
    let mut failed = 0;
    let mut fail = |op: &'static str, rel: &[u8], e: Errno| {
        failed += 1;
        errors.report(EntryError::new(op, full(dst, rel), e));
    };
    let staged = |k: usize| join(staging, k.to_string().as_bytes());
    let needs_staging = steps.iter().any(|s| matches!(s, Step::Stage { .. }));
    if needs_staging {
        if let Err(e) = rustix::fs::mkdirat(root, cname(staging).as_c_str(), Mode::from_raw_mode(0o700)) {
            if e != Errno::EXIST {
                fail("mkdir", staging, e);
                return failed;
            }
        }
    }
    let stage_fd = if needs_staging {
        match open_dir_path(root, staging, false) {
            Ok(fd) => Some(fd),
            Err(e) => {
                fail("open directory", staging, e);
                return failed;
            }
        }
    } else {
        None
    };
    for step in steps {
        match step {
            Step::Stage { from, k } => {
                let res = parent_of(root, from).and_then(|(pfd, name)| {
                    let sfd = stage_fd.as_ref().expect("staging open");
                    let to = cname(k.to_string().as_bytes());
                    writable(&pfd, is_root, || {
                        crate::failpoint::fail("rename", name.to_bytes())?;
                        rustix::fs::renameat(&pfd, name.as_c_str(), sfd, to.as_c_str())
                    })
                });
                if let Err(e) = res {
                    fail("rename", from, e);
                }
            }
            Step::Remove(rel) => {
                // Protected entries are looked for in DST's own paths. (Staged paths occur only
                // with --prev, which filters that protect anything turn off.)
                let keep = protects.then_some(Keep { filter, rel });
                let res = parent_of(root, rel).and_then(|(pfd, name)| {
                    writable(&pfd, is_root, || remove_below(&pfd, &name, is_root, keep))
                });
                match res {
                    Ok(false) | Err(Errno::NOENT) => {}
                    Ok(true) => errors.warn(format!(
                        "{}: not deleted: it holds entries the filters exclude (--delete-excluded \
                         deletes them)",
                        full(dst, rel).display()
                    )),
                    Err(e) => fail("remove", rel, e),
                }
            }
            Step::Mkdir(rel) => {
                let res = parent_of(root, rel).and_then(|(pfd, name)| {
                    writable(&pfd, is_root, || {
                        match rustix::fs::mkdirat(&pfd, name.as_c_str(), Mode::from_raw_mode(0o700)) {
                            Err(Errno::EXIST) => {
                                // Whatever is there is not in the source at this path.
                                remove_tree(&pfd, &name, is_root)?;
                                rustix::fs::mkdirat(&pfd, name.as_c_str(), Mode::from_raw_mode(0o700))
                            }
                            r => r,
                        }
                    })
                });
                if let Err(e) = res {
                    fail("mkdir", rel, e);
                }
            }
            Step::Place { k, to } => {
                let sfd = stage_fd.as_ref().expect("staging open");
                let from = cname(k.to_string().as_bytes());
                let res = parent_of(root, to).and_then(|(pfd, name)| {
                    writable(&pfd, is_root, || {
                        crate::failpoint::fail("rename", name.to_bytes())?;
                        match rustix::fs::renameat(sfd, from.as_c_str(), &pfd, name.as_c_str()) {
                            Err(Errno::EXIST | Errno::NOTEMPTY | Errno::ISDIR | Errno::NOTDIR) => {
                                remove_tree(&pfd, &name, is_root)?;
                                rustix::fs::renameat(sfd, from.as_c_str(), &pfd, name.as_c_str())
                            }
                            r => r,
                        }
                    })
                });
                if let Err(e) = res {
                    fail("rename", &staged(*k), e);
                }
            }
        }
    }
    if needs_staging {
        // Empty unless a step failed; what is left there is not in the source.
        if let Err(e) = remove_tree(root, cname(staging).as_c_str(), is_root) {
            fail("remove", staging, e);
        }
    }
    failed
}
