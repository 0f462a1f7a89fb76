//! Removing a directory entry and everything below it, relative to an open directory, one
//! name at a time and never following a symlink: what `copy` does to an entry it replaces or a
//! staged directory it must empty, `mirror` to what SRC no longer has, `receive` to what a
//! stream deletes. Optionally keeping what a filter protects (a mirror deletes no excluded
//! entry without `--delete-excluded`).
//!
//! Must not: follow a symlink, or cross into anything but the named entry.

use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RawDir};
use rustix::io::Errno;

use crate::diff::join;
use crate::filter::{Filter, Verdict};

/// Remove `name` in `dir` and, if it is a directory, everything below it. A missing entry is
/// fine (already gone).
pub fn remove_tree(dir: &OwnedFd, name: &CStr, is_root: bool) -> Result<(), Errno> {
    remove_below(dir, name, is_root, None).map(drop)
}

/// What a filtered removal keeps: entries the filter skips, at paths below DST's root.
#[derive(Clone, Copy)]
pub struct Keep<'a> {
    pub filter: &'a Filter,
    /// `name`'s path below DST's root.
    pub rel: &'a [u8],
}

/// [`remove_tree`], but with `keep` the entries the filter protects stay (a mirror never deletes
/// an excluded entry without `--delete-excluded`), and so does every directory holding one,
/// with its mode as it was. Returns whether anything was kept.
pub fn remove_below(dir: &OwnedFd, name: &CStr, is_root: bool, keep: Option<Keep>) -> Result<bool, Errno> {
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
