//! The portable backend: each op is a plain syscall performed at push time.
//!
//! Used where io_uring is unavailable (ENOSYS, seccomp EPERM, `kernel.io_uring_disabled`) or when
//! `--engine sync` asks for it. With one worker thread per core it is a thread-pool pread/pwrite
//! engine; the engine above cannot tell the difference except in timing.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::time::Instant;

use rustix::fs::{AtFlags, StatxFlags};
use rustix::io::Errno;

use super::{Backend, Completion, Op, Pool, Token};

pub struct Sync {
    pool: Pool,
    ready: VecDeque<Completion>,
}

impl Sync {
    pub fn new(pool: Pool) -> Sync {
        Sync {
            pool,
            ready: VecDeque::new(),
        }
    }

    fn perform(&mut self, op: &mut Op) -> (Result<u32, Errno>, Option<OwnedFd>) {
        match op {
            Op::OpenAt {
                dir,
                name,
                flags,
                mode,
            } => {
                match rustix::fs::openat(
                    &**dir,
                    name.as_c_str(),
                    *flags | rustix::fs::OFlags::CLOEXEC,
                    *mode,
                ) {
                    Ok(fd) => (Ok(0), Some(fd)),
                    Err(e) => (Err(e), None),
                }
            }
            Op::Statx { dir, name, buf } => {
                match rustix::fs::statx(
                    &**dir,
                    name.as_c_str(),
                    AtFlags::SYMLINK_NOFOLLOW,
                    StatxFlags::BASIC_STATS | StatxFlags::BTIME,
                ) {
                    Ok(stx) => {
                        **buf = stx;
                        (Ok(0), None)
                    }
                    Err(e) => (Err(e), None),
                }
            }
            Op::Read {
                fd,
                buf,
                offset,
                len,
                done,
            } => {
                while *done < *len {
                    // The op is ours and nothing is in flight: the safe accessor will do.
                    let dst = &mut self.pool.bytes_mut(buf)[*done as usize..*len as usize];
                    match rustix::io::pread(&**fd, dst, *offset + *done as u64) {
                        Ok(0) => break,
                        Ok(n) => *done += n as u32,
                        Err(Errno::INTR) | Err(Errno::AGAIN) => continue,
                        Err(e) => return (Err(e), None),
                    }
                }
                (Ok(*done), None)
            }
            Op::Write {
                fd,
                buf,
                offset,
                len,
                done,
            } => {
                while *done < *len {
                    let src = &self.pool.bytes(buf)[*done as usize..*len as usize];
                    match rustix::io::pwrite(&**fd, src, *offset + *done as u64) {
                        Ok(0) => return (Err(Errno::IO), None),
                        Ok(n) => *done += n as u32,
                        Err(Errno::INTR) | Err(Errno::AGAIN) => continue,
                        Err(e) => return (Err(e), None),
                    }
                }
                (Ok(*done), None)
            }
            Op::Fsync { fd } => (rustix::fs::fsync(&**fd).map(|()| 0), None),
            Op::Close { fd } => {
                // SAFETY: `Op::close` took the descriptor out of an `OwnedFd` with `into_raw_fd`,
                // so this op is its sole owner and closes it exactly once. libc is called rather
                // than rustix because close(2) errors are reported (NFS can return EIO here).
                let rc = unsafe { libc::close(*fd) };
                let res = if rc == 0 {
                    Ok(0)
                } else {
                    Err(Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO))
                };
                (res, None)
            }
        }
    }
}

impl Backend for Sync {
    fn describe(&self) -> String {
        "sync (pread/pwrite)".to_string()
    }

    fn push(&mut self, token: Token, mut op: Op) {
        let start = Instant::now();
        let (result, opened) = self.perform(&mut op);
        self.ready.push_back(Completion {
            token,
            result,
            op,
            opened,
            latency: start.elapsed(),
        });
    }

    fn wait(&mut self, _min_complete: usize, out: &mut Vec<Completion>) -> std::io::Result<()> {
        out.extend(self.ready.drain(..));
        Ok(())
    }

    fn submit(&mut self) {}

    fn in_flight(&self) -> usize {
        self.ready.len()
    }

    fn pool(&mut self) -> &mut Pool {
        &mut self.pool
    }
}
