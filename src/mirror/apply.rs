//! The steps a mirror does itself before the engine runs: staging renames, deleting subtrees,
//! making directories, placing staged entries. All relative to DST's root descriptor, one path
//! component at a time, never following a symlink.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::Mode;
use rustix::io::Errno;

use super::plan::Step;
use crate::diff::{full, join, open_dir_path, split};
use crate::error::{EntryError, ErrorLog};
use crate::filter::Filter;
use crate::remove::{remove_below, remove_tree, Keep};

fn cname(b: &[u8]) -> CString {
    CString::new(b).expect("names have no NUL")
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
