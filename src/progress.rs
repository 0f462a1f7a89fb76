//! Per-worker counters, merged periodically for the progress line and at the end for the summary.
//! Workers only bump their own relaxed atomics: no message per I/O, no shared cache line.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One worker's counters, padded to its own cache line.
#[derive(Default, Debug)]
#[repr(align(128))]
pub struct Counters {
    pub bytes: AtomicU64,
    pub files: AtomicU64,
    pub dirs: AtomicU64,
    pub symlinks: AtomicU64,
    pub hardlinks: AtomicU64,
    pub specials: AtomicU64,
    pub skipped: AtomicU64,
    pub reflinked: AtomicU64,
    /// Work discovered by the scan, for the ETA.
    pub bytes_found: AtomicU64,
    pub files_found: AtomicU64,
}

impl Counters {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// Sums over all workers.
#[derive(Default, Debug, Clone, Copy)]
pub struct Totals {
    pub bytes: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub specials: u64,
    pub skipped: u64,
    pub reflinked: u64,
    pub bytes_found: u64,
    pub files_found: u64,
}

pub fn totals(all: &[Counters]) -> Totals {
    let mut t = Totals::default();
    for c in all {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        t.bytes += l(&c.bytes);
        t.files += l(&c.files);
        t.dirs += l(&c.dirs);
        t.symlinks += l(&c.symlinks);
        t.hardlinks += l(&c.hardlinks);
        t.specials += l(&c.specials);
        t.skipped += l(&c.skipped);
        t.reflinked += l(&c.reflinked);
        t.bytes_found += l(&c.bytes_found);
        t.files_found += l(&c.files_found);
    }
    t
}

/// `1.5 GiB`-style sizes for humans.
pub fn human_bytes(n: f64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} {}", UNITS[i])
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// A thread drawing one status line on stderr while the run goes; off when stderr is not a
/// terminal or `--quiet` was given.
pub struct ProgressLine {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

const REFRESH_MS: u64 = 250;

impl ProgressLine {
    pub fn start(counters: Arc<[Counters]>, enabled: bool) -> ProgressLine {
        let stop = Arc::new(AtomicBool::new(false));
        if !enabled || !std::io::stderr().is_terminal() {
            return ProgressLine { stop, handle: None };
        }
        let stop2 = stop.clone();
        let handle = std::thread::spawn(move || {
            let start = Instant::now();
            let mut drew = false;
            while !stop2.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(REFRESH_MS));
                let t = totals(&counters);
                let secs = start.elapsed().as_secs_f64().max(1e-3);
                let rate = t.bytes as f64 / secs;
                let left = t.bytes_found.saturating_sub(t.bytes) as f64;
                let eta = if rate > 0.0 {
                    format!("{:.0}s", left / rate)
                } else {
                    "-".into()
                };
                let line = format!(
                    "\r{} / {}  {}/{} files  {}/s  ETA {}   ",
                    human_bytes(t.bytes as f64),
                    human_bytes(t.bytes_found as f64),
                    t.files,
                    t.files_found,
                    human_bytes(rate),
                    eta
                );
                let mut err = std::io::stderr().lock();
                let _ = err.write_all(line.as_bytes());
                let _ = err.flush();
                drew = true;
            }
            if drew {
                let _ = std::io::stderr().write_all(b"\r\x1b[K");
            }
        });
        ProgressLine {
            stop,
            handle: Some(handle),
        }
    }

    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
