//! What a run tells the user besides the progress line: `-v` lines (one per entry changed, in
//! the `diff` format) on stdout, the `--log-file` (the same lines, every error message and the
//! summary, each stamped with UTC time and the process id), and the human summary.
//!
//! Must not: decide anything about the run. Output that cannot be written (a closed stdout, a
//! full disk under the log) is dropped, never fatal.

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Stdout, Write};
use std::path::Path;
use std::sync::Mutex;

/// Where lines go. `Reporter::default()` prints nothing.
#[derive(Default)]
pub struct Reporter {
    /// `-v`: change lines on stdout.
    out: Option<Mutex<BufWriter<Stdout>>>,
    /// `--log-file`.
    log: Option<Mutex<BufWriter<File>>>,
    /// `-v` was asked for: the summary follows the lines on stdout (a dry run prints its lines
    /// without `-v`, and keeps stdout to them).
    summary_on_stdout: bool,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter")
            .field("verbose", &self.out.is_some())
            .field("log", &self.log.is_some())
            .finish()
    }
}

impl Reporter {
    /// `lines`: print change lines on stdout; `verbose`: so did the user ask (`-v`);
    /// `log_file`: append everything there too.
    pub fn open(lines: bool, verbose: bool, log_file: Option<&Path>) -> Result<Reporter, String> {
        let log = match log_file {
            Some(p) => {
                let f = std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(p)
                    .map_err(|e| format!("--log-file {}: {e}", p.display()))?;
                Some(Mutex::new(BufWriter::new(f)))
            }
            None => None,
        };
        Ok(Reporter {
            out: lines.then(|| Mutex::new(BufWriter::new(std::io::stdout()))),
            log,
            summary_on_stdout: lines && verbose,
        })
    }

    /// Whether change lines are wanted at all (so callers can skip building them).
    pub fn wants_changes(&self) -> bool {
        self.out.is_some() || self.log.is_some()
    }

    pub fn verbose(&self) -> bool {
        self.out.is_some()
    }

    /// One change: `marker` (`+`, `-`, `M`, `A`, `T`, `L`) and the relative path, escaped as
    /// `diff` escapes it.
    pub fn change(&self, marker: char, path: &[u8]) {
        if !self.wants_changes() {
            return;
        }
        self.line(&format!("{marker}\t{}", crate::diff::escape(path)));
    }

    /// A line in the diff format (a rename has two paths), to stdout under `-v` and the log.
    pub fn line(&self, line: &str) {
        if let Some(out) = &self.out {
            let mut o = out.lock().unwrap_or_else(|e| e.into_inner());
            let _ = writeln!(o, "{line}");
        }
        self.log_only(line);
    }

    /// A line for the log only (error messages, which go to stderr by themselves).
    pub fn log_only(&self, line: &str) {
        if let Some(log) = &self.log {
            let stamp = utc_stamp(std::time::SystemTime::now());
            let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
            let _ = writeln!(l, "{stamp} [{}] {line}", std::process::id());
        }
    }

    /// The human summary: on stdout after the `-v` lines, else on stderr when it is a
    /// terminal; always in the log.
    pub fn summary(&self, line: &str, quiet: bool) {
        if !quiet {
            match &self.out {
                Some(out) if self.summary_on_stdout => {
                    let mut o = out.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = writeln!(o, "{line}");
                }
                _ if std::io::stderr().is_terminal() => {
                    // After whatever stdout holds, when both are the terminal.
                    self.flush();
                    eprintln!("{line}");
                }
                _ => {}
            }
        }
        self.log_only(line);
    }

    /// Write out what is buffered.
    pub fn flush(&self) {
        if let Some(out) = &self.out {
            let _ = out.lock().unwrap_or_else(|e| e.into_inner()).flush();
        }
        if let Some(log) = &self.log {
            let _ = log.lock().unwrap_or_else(|e| e.into_inner()).flush();
        }
    }
}

/// `2026-12-03T12:00:00.123Z`.
pub fn utc_stamp(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `1.5 GiB in 3.21 s (478.2 MiB/s)`.
pub fn bytes_in(bytes: u64, secs: f64) -> String {
    let rate = if secs > 0.0 { bytes as f64 / secs } else { 0.0 };
    format!(
        "{} in {secs:.2} s ({}/s)",
        crate::progress::human_bytes(bytes as f64),
        crate::progress::human_bytes(rate)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // date -u -d @1764763200.123 +%FT%T → 2025-12-03T12:00:00
        let t = UNIX_EPOCH + Duration::from_millis(1_764_763_200_123);
        assert_eq!(utc_stamp(t), "2025-12-03T12:00:00.123Z");
        // A leap day.
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(utc_stamp(t), "2000-02-29T00:00:00.000Z");
    }
}
