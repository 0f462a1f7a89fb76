//! Xattrs of an entry named relative to a directory descriptor: `listxattrat` and `getxattrat`
//! (Linux 6.13). The plain `llistxattr` needs a path, and a path through
//! `/proc/self/fd/N/name` costs a /proc lookup per entry (a quarter of a no-change remote
//! mirror's CPU on 50,000 files). Where the kernel lacks them they say `ENOSYS` once and are
//! not tried again; the caller then takes the path.
//!
//! Must not: follow a symlink (AT_SYMLINK_NOFOLLOW always).

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::io::Errno;

/// The syscall numbers (the same on every architecture since they were added).
const SYS_GETXATTRAT: libc::c_long = 464;
const SYS_LISTXATTRAT: libc::c_long = 465;

/// The kernel said ENOSYS.
static MISSING: AtomicBool = AtomicBool::new(false);

/// `struct xattr_args` of the kernel's uapi.
#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

fn result(r: libc::c_long) -> Result<usize, Errno> {
    if r >= 0 {
        return Ok(r as usize);
    }
    let e = Errno::from_raw_os_error(
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    );
    if e == Errno::NOSYS {
        MISSING.store(true, Ordering::Relaxed);
    }
    Err(e)
}

/// The names of `name`'s xattrs in `dir` into `buf` (NUL-separated): the bytes written, or the
/// size needed with an empty `buf`. `Err(NOSYS)` where the kernel lacks the call.
pub fn list_at(dir: BorrowedFd, name: &CStr, buf: &mut [u8]) -> Result<usize, Errno> {
    if MISSING.load(Ordering::Relaxed) {
        return Err(Errno::NOSYS);
    }
    // SAFETY: `name` is NUL-terminated and outlives the call; the kernel writes at most
    // `buf.len()` bytes at `buf`, which is exclusively borrowed for the call.
    let r = unsafe {
        libc::syscall(
            SYS_LISTXATTRAT,
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    result(r)
}

/// The value of xattr `xname` of `name` in `dir` into `buf`: the bytes written, or the size
/// needed with an empty `buf`. `Err(NOSYS)` where the kernel lacks the call.
pub fn get_at(dir: BorrowedFd, name: &CStr, xname: &CStr, buf: &mut [u8]) -> Result<usize, Errno> {
    if MISSING.load(Ordering::Relaxed) {
        return Err(Errno::NOSYS);
    }
    let args = XattrArgs {
        value: buf.as_mut_ptr() as u64,
        size: buf.len().min(u32::MAX as usize) as u32,
        flags: 0,
    };
    // SAFETY: `name` and `xname` are NUL-terminated and outlive the call; `args` is a
    // `struct xattr_args` of the size passed, alive for the call, and its `value` points at
    // `buf`, of which the kernel writes at most `size` bytes (exclusively borrowed).
    let r = unsafe {
        libc::syscall(
            SYS_GETXATTRAT,
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
            xname.as_ptr(),
            &args as *const XattrArgs,
            std::mem::size_of::<XattrArgs>(),
        )
    };
    result(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_reads_what_the_path_calls_see_without_following_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        if rustix::fs::setxattr(&f, c"user.k", b"value", rustix::fs::XattrFlags::empty()).is_err() {
            eprintln!("SKIPPED: no user xattrs on the temporary directory's filesystem");
            return;
        }
        std::os::unix::fs::symlink("f", d.path().join("l")).unwrap();
        let dir = std::fs::File::open(d.path()).unwrap();
        let fd = std::os::fd::AsFd::as_fd(&dir);
        let mut buf = vec![0u8; 256];
        match list_at(fd, c"f", &mut buf) {
            Err(Errno::NOSYS) => {
                eprintln!("SKIPPED: this kernel has no listxattrat");
                return;
            }
            Ok(n) => assert_eq!(&buf[..n], b"user.k\0"),
            Err(e) => panic!("listxattrat: {e}"),
        }
        let n = get_at(fd, c"f", c"user.k", &mut buf).unwrap();
        assert_eq!(&buf[..n], b"value");
        assert_eq!(get_at(fd, c"f", c"user.k", &mut []).unwrap(), 5);
        assert_eq!(get_at(fd, c"f", c"user.k", &mut buf[..2]), Err(Errno::RANGE));
        // The symlink's own xattrs (none), not its target's.
        assert_eq!(list_at(fd, c"l", &mut buf).unwrap(), 0);
        assert_eq!(list_at(fd, c"missing", &mut buf), Err(Errno::NOENT));
    }
}
