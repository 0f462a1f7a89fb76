//! Failpoints: injected errors and short counts, for tests (issue 16). Compiled in only with the
//! `failpoints` cargo feature; without it every check is an inlined `None` and the environment
//! is never read, so a release build cannot be made to fail this way.
//!
//! Rules come from `RINGSYNC_FAILPOINTS`, separated by `;`:
//!
//! ```text
//! OP[:SUBSTR][@N[+]]=FAULT
//! ```
//!
//! - `OP`: `open`, `read`, `write`, `fsync`, `close`, `statx` (ring ops, and the same calls made
//!   directly: the walk's statx, receive's writes), `rename`, `xattr` (setting one on a
//!   target), `cfr` (copy_file_range), `syncfs`, `verify` (any fault: `--verify` first flips
//!   a byte of the target file on disk, as a change behind ringsync's back would), or `*`;
//! - `SUBSTR`: only names containing it (the entry's own name; for an op on a descriptor, the
//!   name it was opened by through the ring);
//! - `@N`: only the Nth matching call (from 1); `@N+`: that one and every later one; default:
//!   every matching call;
//! - `FAULT`: an errno (`EIO`, `ENOSPC`, `EINTR`, `EAGAIN`, `EACCES`, `EPERM`, `EROFS`,
//!   `EDQUOT`, `EFBIG`, `ENOENT`, `EBADF`, `EINVAL`) or `short` (a read or write moves half
//!   its bytes and reports that count, as a kernel may).
//!
//! A bad rule makes the first check print why and exit with status 2. The first matching rule
//! decides; every rule that matches counts the call.
//!
//! Must not: do anything when the feature is off.

use rustix::io::Errno;

/// What a matching rule does to the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Fail(Errno),
    /// Half the bytes, reported as a short count (reads and writes; others ignore it).
    Short,
}

#[cfg(feature = "failpoints")]
mod imp {
    use std::collections::HashMap;
    use std::os::fd::RawFd;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Mutex, OnceLock};

    use super::{Errno, Fault};

    struct Rule {
        op: String,
        substr: Option<Vec<u8>>,
        nth: Option<(u64, bool)>,
        fault: Fault,
        calls: AtomicU64,
    }

    fn errno(name: &str) -> Option<Errno> {
        Some(match name {
            "EIO" => Errno::IO,
            "ENOSPC" => Errno::NOSPC,
            "EINTR" => Errno::INTR,
            "EAGAIN" => Errno::AGAIN,
            "EACCES" => Errno::ACCESS,
            "EPERM" => Errno::PERM,
            "EROFS" => Errno::ROFS,
            "EDQUOT" => Errno::DQUOT,
            "EFBIG" => Errno::FBIG,
            "ENOENT" => Errno::NOENT,
            "EBADF" => Errno::BADF,
            "EINVAL" => Errno::INVAL,
            _ => return None,
        })
    }

    const OPS: [&str; 12] = [
        "open", "read", "write", "fsync", "close", "statx", "rename", "xattr", "cfr", "syncfs", "verify", "*",
    ];

    fn parse_rule(s: &str) -> Result<Rule, String> {
        let (lhs, fault) = s.split_once('=').ok_or("no '=FAULT'")?;
        let fault = match fault.trim() {
            "short" => Fault::Short,
            f => Fault::Fail(errno(f).ok_or_else(|| format!("unknown fault {f:?}"))?),
        };
        let (lhs, nth) = match lhs.rsplit_once('@') {
            Some((l, n)) => {
                let (n, on) = match n.strip_suffix('+') {
                    Some(n) => (n, true),
                    None => (n, false),
                };
                let n: u64 = n.parse().map_err(|_| format!("bad count {n:?}"))?;
                if n == 0 {
                    return Err("counts start at 1".into());
                }
                (l, Some((n, on)))
            }
            None => (lhs, None),
        };
        let (op, substr) = match lhs.split_once(':') {
            Some((o, p)) => (o, Some(p.as_bytes().to_vec())),
            None => (lhs, None),
        };
        let op = op.trim();
        if !OPS.contains(&op) {
            return Err(format!("unknown op {op:?} (one of {})", OPS.join(", ")));
        }
        Ok(Rule {
            op: op.to_string(),
            substr,
            nth,
            fault,
            calls: AtomicU64::new(0),
        })
    }

    fn rules() -> &'static [Rule] {
        static RULES: OnceLock<Vec<Rule>> = OnceLock::new();
        RULES.get_or_init(|| {
            let Ok(spec) = std::env::var("RINGSYNC_FAILPOINTS") else {
                return Vec::new();
            };
            let mut rules = Vec::new();
            for r in spec.split(';').map(str::trim).filter(|r| !r.is_empty()) {
                match parse_rule(r) {
                    Ok(rule) => rules.push(rule),
                    Err(e) => {
                        eprintln!("ringsync: RINGSYNC_FAILPOINTS: rule {r:?}: {e}");
                        std::process::exit(2);
                    }
                }
            }
            rules
        })
    }

    fn names() -> &'static Mutex<HashMap<RawFd, Vec<u8>>> {
        static NAMES: OnceLock<Mutex<HashMap<RawFd, Vec<u8>>>> = OnceLock::new();
        NAMES.get_or_init(Default::default)
    }

    pub fn active() -> bool {
        !rules().is_empty()
    }

    pub fn hit(op: &str, name: &[u8]) -> Option<Fault> {
        let mut out = None;
        for r in rules() {
            if r.op != "*" && r.op != op {
                continue;
            }
            if let Some(s) = &r.substr {
                if !name.windows(s.len().max(1)).any(|w| w == &s[..]) {
                    continue;
                }
            }
            let n = r.calls.fetch_add(1, Ordering::Relaxed) + 1;
            let fires = match r.nth {
                None => true,
                Some((k, true)) => n >= k,
                Some((k, false)) => n == k,
            };
            if fires && out.is_none() {
                out = Some(r.fault);
            }
        }
        out
    }

    pub fn hit_fd(op: &str, fd: RawFd) -> Option<Fault> {
        if !active() {
            return None;
        }
        let name = names()
            .lock()
            .expect("names")
            .get(&fd)
            .cloned()
            .unwrap_or_default();
        hit(op, &name)
    }

    pub fn opened(fd: RawFd, name: &[u8]) {
        if active() {
            names().lock().expect("names").insert(fd, name.to_vec());
        }
    }

    pub fn closing(fd: RawFd) {
        if active() {
            names().lock().expect("names").remove(&fd);
        }
    }
}

#[cfg(not(feature = "failpoints"))]
mod imp {
    use std::os::fd::RawFd;

    use super::Fault;

    #[inline(always)]
    pub fn active() -> bool {
        false
    }
    #[inline(always)]
    pub fn hit(_op: &str, _name: &[u8]) -> Option<Fault> {
        None
    }
    #[inline(always)]
    pub fn hit_fd(_op: &str, _fd: RawFd) -> Option<Fault> {
        None
    }
    #[inline(always)]
    pub fn opened(_fd: RawFd, _name: &[u8]) {}
    #[inline(always)]
    pub fn closing(_fd: RawFd) {}
}

/// Where temporary names start counting, when a test says (`RINGSYNC_TMP_SEQ`, with the
/// feature only): tests that plant entries at ringsync's temporary names need to know them;
/// a run otherwise starts at a random number.
pub fn tmp_seq_start() -> Option<u64> {
    if cfg!(feature = "failpoints") {
        std::env::var("RINGSYNC_TMP_SEQ").ok()?.parse().ok()
    } else {
        None
    }
}

/// Whether any rule is set (always false without the feature).
pub fn active() -> bool {
    imp::active()
}

/// The fault for a call of `op` on the entry `name`, if a rule says so.
#[inline]
pub fn hit(op: &str, name: &[u8]) -> Option<Fault> {
    imp::hit(op, name)
}

/// As [`hit`], for an op on a descriptor opened through the ring.
#[inline]
pub fn hit_fd(op: &str, fd: std::os::fd::RawFd) -> Option<Fault> {
    imp::hit_fd(op, fd)
}

/// The errno a rule injects into a call of `op` on `name` (a `short` rule does not apply).
#[inline]
pub fn fail(op: &str, name: &[u8]) -> Result<(), Errno> {
    match imp::hit(op, name) {
        Some(Fault::Fail(e)) => Err(e),
        _ => Ok(()),
    }
}

/// Remember the name a descriptor was opened by (for rules on ops on descriptors).
#[inline]
pub fn opened(fd: std::os::fd::RawFd, name: &[u8]) {
    imp::opened(fd, name)
}

/// Forget a descriptor about to be closed.
#[inline]
pub fn closing(fd: std::os::fd::RawFd) {
    imp::closing(fd)
}
