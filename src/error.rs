//! Per-entry failures: each names the operation, the path and the errno, and is collected so the
//! run can go on and the exit status can say a partial transfer happened.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rustix::io::Errno;

/// Exit statuses, documented in the README and `--help`.
pub mod exit {
    /// Everything copied.
    pub const OK: i32 = 0;
    /// The run could not start or was aborted (bad SRC, cannot create DST, ring set-up failure).
    pub const FATAL: i32 = 1;
    /// Bad command line.
    pub const USAGE: i32 = 2;
    /// Partial transfer: some entries failed; each was reported on stderr.
    pub const PARTIAL: i32 = 3;
    /// Another run holds the target (mirror).
    pub const BUSY: i32 = 4;
    /// Complete except for source entries that vanished while the run was going.
    pub const VANISHED: i32 = 5;
    /// Remote mirror: the connection to the other machine failed or dropped (the remote
    /// shell's exit status 255, or the stream stopped early); a rerun resumes.
    pub const LINK: i32 = 6;
    /// Remote mirror: the other machine has no usable ringsync (not found, not ringsync, or
    /// another protocol version).
    pub const REMOTE: i32 = 7;
    /// `--verify`: a file read back from the target after the final sync differs from what was
    /// read from the source (each reported); it takes precedence over `PARTIAL`.
    pub const VERIFY: i32 = 8;
    /// Stopped by SIGINT, SIGTERM or SIGHUP (128 + SIGINT, as shells report it).
    pub const INTERRUPTED: i32 = 130;
}

/// The operation named by a `--verify` mismatch (its own exit status, [`exit::VERIFY`]).
pub const VERIFY_OP: &str = "verify";

/// Severity of a per-entry problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The entry is missing or wrong on the target.
    Error,
    /// The source entry disappeared during the run (not an error of ours).
    Vanished,
    /// Left unfinished because the run was interrupted (SIGINT and the like): neither printed
    /// nor counted, the interruption is reported once for the whole run.
    Interrupted,
}

#[derive(Debug, Clone)]
pub struct EntryError {
    pub op: &'static str,
    pub path: PathBuf,
    pub errno: Option<Errno>,
    pub detail: Option<String>,
    pub severity: Severity,
}

impl EntryError {
    pub fn new(op: &'static str, path: PathBuf, errno: Errno) -> EntryError {
        let severity = Severity::Error;
        EntryError {
            op,
            path,
            errno: Some(errno),
            detail: None,
            severity,
        }
    }

    pub fn msg(op: &'static str, path: PathBuf, detail: impl Into<String>) -> EntryError {
        EntryError {
            op,
            path,
            errno: None,
            detail: Some(detail.into()),
            severity: Severity::Error,
        }
    }

    pub fn interrupted(op: &'static str, path: PathBuf) -> EntryError {
        EntryError {
            op,
            path,
            errno: None,
            detail: Some("interrupted".into()),
            severity: Severity::Interrupted,
        }
    }

    pub fn vanished(op: &'static str, path: PathBuf) -> EntryError {
        EntryError {
            op,
            path,
            errno: Some(Errno::NOENT),
            detail: None,
            severity: Severity::Vanished,
        }
    }
}

impl fmt::Display for EntryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.severity == Severity::Vanished {
            return write!(f, "{}: source vanished during {}", self.path.display(), self.op);
        }
        write!(f, "{} {}: ", self.op, self.path.display())?;
        match (&self.errno, &self.detail) {
            (Some(e), Some(d)) => write!(f, "{} ({})", std::io::Error::from(*e), d),
            (Some(e), None) => write!(f, "{}", std::io::Error::from(*e)),
            (None, Some(d)) => write!(f, "{d}"),
            (None, None) => write!(f, "failed"),
        }
    }
}

/// How many messages are kept for the JSON summary; all are printed and counted.
const KEPT_MESSAGES_MAX: usize = 100;

/// Collects per-entry errors from all workers.
#[derive(Default)]
pub struct ErrorLog {
    errors: AtomicU64,
    vanished: AtomicU64,
    warnings: AtomicU64,
    /// Errors of the `verify` operation (counted in `errors` too).
    mismatches: AtomicU64,
    kept: Mutex<Vec<String>>,
    quiet_warnings: bool,
    /// `--log-file`: every message goes there too.
    report: Option<std::sync::Arc<crate::report::Reporter>>,
    /// A held log ([`ErrorLog::held`]): what would have been reported, in order.
    held: Option<Mutex<Vec<Held>>>,
}

/// A report kept by a held log.
enum Held {
    Entry(EntryError),
    Warning(String),
}

impl ErrorLog {
    pub fn new(quiet_warnings: bool) -> ErrorLog {
        ErrorLog {
            quiet_warnings,
            ..Default::default()
        }
    }

    /// Messages also go to the reporter's log file.
    pub fn with_report(quiet_warnings: bool, report: std::sync::Arc<crate::report::Reporter>) -> ErrorLog {
        ErrorLog {
            quiet_warnings,
            report: Some(report),
            ..Default::default()
        }
    }

    /// A log that prints and counts nothing until [`ErrorLog::replay`]: for work whose result
    /// may be thrown away (a mirror's scoped walk that falls back to the full one).
    pub fn held() -> ErrorLog {
        ErrorLog {
            held: Some(Mutex::new(Vec::new())),
            ..Default::default()
        }
    }

    /// Report into `to` what this held log kept, in order.
    pub fn replay(self, to: &ErrorLog) {
        let held = self
            .held
            .map(|h| h.into_inner().unwrap_or_else(|e| e.into_inner()));
        for h in held.into_iter().flatten() {
            match h {
                Held::Entry(e) => to.report(e),
                Held::Warning(w) => to.warn(w),
            }
        }
    }

    pub fn report(&self, e: EntryError) {
        if let Some(h) = &self.held {
            h.lock().unwrap_or_else(|e| e.into_inner()).push(Held::Entry(e));
            return;
        }
        if e.op == VERIFY_OP && e.severity == Severity::Error {
            self.mismatches.fetch_add(1, Ordering::Relaxed);
        }
        match e.severity {
            Severity::Error => self.errors.fetch_add(1, Ordering::Relaxed),
            Severity::Vanished => self.vanished.fetch_add(1, Ordering::Relaxed),
            Severity::Interrupted => return,
        };
        let line = e.to_string();
        eprintln!("ringsync: {line}");
        if let Some(r) = &self.report {
            r.log_only(&format!("error: {line}"));
        }
        let mut kept = self.kept.lock().expect("error log poisoned");
        if kept.len() < KEPT_MESSAGES_MAX {
            kept.push(line);
        }
    }

    /// A note that does not make the run fail (skipped socket, xattrs unsupported on target).
    pub fn warn(&self, line: String) {
        if let Some(h) = &self.held {
            h.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Held::Warning(line));
            return;
        }
        self.warnings.fetch_add(1, Ordering::Relaxed);
        if !self.quiet_warnings {
            eprintln!("ringsync: warning: {line}");
        }
        if let Some(r) = &self.report {
            r.log_only(&format!("warning: {line}"));
        }
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    pub fn vanished(&self) -> u64 {
        self.vanished.load(Ordering::Relaxed)
    }

    pub fn warnings(&self) -> u64 {
        self.warnings.load(Ordering::Relaxed)
    }

    pub fn messages(&self) -> Vec<String> {
        self.kept.lock().expect("error log poisoned").clone()
    }

    pub fn exit_code(&self) -> i32 {
        if self.mismatches.load(Ordering::Relaxed) > 0 {
            exit::VERIFY
        } else if self.errors() > 0 {
            exit::PARTIAL
        } else if self.vanished() > 0 {
            exit::VANISHED
        } else {
            exit::OK
        }
    }
}

#[cfg(test)]
mod held_tests {
    use super::*;

    #[test]
    fn a_held_log_counts_nothing_until_replayed_then_counts_once() {
        let held = ErrorLog::held();
        held.report(EntryError::new("statx", PathBuf::from("/x"), Errno::ACCESS));
        held.report(EntryError::vanished("statx", PathBuf::from("/y")));
        held.warn("socket skipped".into());
        assert_eq!((held.errors(), held.vanished(), held.warnings()), (0, 0, 0));
        let log = ErrorLog::new(true);
        held.replay(&log);
        assert_eq!((log.errors(), log.vanished(), log.warnings()), (1, 1, 1));
        assert_eq!(log.messages().len(), 2);
        // A held log thrown away reports nothing anywhere.
        let dropped = ErrorLog::held();
        dropped.report(EntryError::new("statx", PathBuf::from("/z"), Errno::IO));
        drop(dropped);
        assert_eq!(log.errors(), 1);
    }
}
