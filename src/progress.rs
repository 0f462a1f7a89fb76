//! Per-worker counters, merged periodically for the progress line and at the end for the summary.
//! Workers only bump their own relaxed atomics: no message per I/O, no shared cache line.
//!
//! The progress line: a thread samples a [`Snapshot`] four times a second and draws one line
//! on stderr through `indicatif` (which owns the terminal handling: redraw, clear, rate
//! limit), composed here in priority order so it can be cut to the terminal's width: percent,
//! bytes done/total, files done/total, rate, elapsed, ETA, then files in flight. While the
//! source is still being scanned the totals grow, so the line says `scanning` and shows no
//! percentage or ETA. Off a terminal, `--progress` prints the same text as plain lines every
//! second (indicatif draws nothing off a terminal).

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
    /// Work discovered by the scan (or planned), for the totals and the ETA.
    pub bytes_found: AtomicU64,
    pub files_found: AtomicU64,
    /// Bytes of holes in sparse files: not copied, but done as far as progress goes.
    pub holes: AtomicU64,
    /// Files given up (failed or vanished): their bytes leave the total.
    pub bytes_dropped: AtomicU64,
    pub files_dropped: AtomicU64,
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
    pub holes: u64,
    pub bytes_dropped: u64,
    pub files_dropped: u64,
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
        t.holes += l(&c.holes);
        t.bytes_dropped += l(&c.bytes_dropped);
        t.files_dropped += l(&c.files_dropped);
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

/// What the progress line shows at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The totals still grow (the source is being scanned or compared).
    pub scanning: bool,
    /// What is going on, when there is no byte total yet (`comparing`, say).
    pub activity: &'static str,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub files_done: u64,
    pub files_total: u64,
    /// Entries looked at, while scanning with no byte figures (a mirror's compare).
    pub entries: u64,
    /// Files being copied right now (relative paths), for wide terminals.
    pub in_flight: Vec<String>,
    /// Bytes through a remote mirror's link (compressed, framed), beside the file bytes.
    pub wire: Option<u64>,
}

/// Where the progress line goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Off,
    /// Redrawn in place on the terminal.
    Terminal,
    /// `--progress` off a terminal: a plain line every second.
    Lines,
}

/// The mode for a run: on a terminal unless `-q`; off one only with `--progress`.
pub fn mode(quiet: bool, forced: bool) -> Mode {
    if quiet {
        Mode::Off
    } else if std::io::stderr().is_terminal() {
        Mode::Terminal
    } else if forced {
        Mode::Lines
    } else {
        Mode::Off
    }
}

const REFRESH_MS: u64 = 250;
const LINES_EVERY_MS: u64 = 1000;
/// The rate (and ETA) is measured over this much recent time, so it follows a change of pace.
const RATE_WINDOW_MS: u128 = 5000;

fn duration(secs: f64) -> String {
    let s = secs.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s / 60 % 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// The line's fields, most important first; `width` cuts it (None: no limit).
pub fn render(s: &Snapshot, elapsed: Duration, rate: f64, width: Option<usize>) -> String {
    let mut fields: Vec<String> = Vec::new();
    let bytes_total = s.bytes_total.max(s.bytes_done);
    let files_total = s.files_total.max(s.files_done);
    if s.scanning {
        fields.push("scanning".into());
        if s.bytes_total == 0 && s.files_total == 0 && !s.activity.is_empty() {
            fields.push(format!("{}: {} entries", s.activity, s.entries));
        } else {
            fields.push(format!(
                "{} / {} found so far",
                human_bytes(s.bytes_done as f64),
                human_bytes(bytes_total as f64)
            ));
            fields.push(format!("{}/{} files", s.files_done, files_total));
        }
        fields.push(format!("{}/s", human_bytes(rate)));
        fields.push(duration(elapsed.as_secs_f64()));
    } else {
        let pct = if bytes_total > 0 {
            s.bytes_done as f64 * 100.0 / bytes_total as f64
        } else if files_total > 0 {
            s.files_done as f64 * 100.0 / files_total as f64
        } else {
            100.0
        };
        let left = bytes_total - s.bytes_done;
        let eta = match (left, rate > 0.0) {
            (0, _) => "0s".to_string(),
            (_, true) => duration(left as f64 / rate),
            (_, false) => "-".to_string(),
        };
        fields.push(format!("{:>3.0}%", pct.floor().min(100.0)));
        fields.push(format!(
            "{} / {}",
            human_bytes(s.bytes_done as f64),
            human_bytes(bytes_total as f64)
        ));
        if let Some(w) = s.wire {
            fields.push(format!("wire {}", human_bytes(w as f64)));
        }
        fields.push(format!("{}/{} files", s.files_done, files_total));
        fields.push(format!("{}/s", human_bytes(rate)));
        fields.push(duration(elapsed.as_secs_f64()));
        fields.push(format!("ETA {eta}"));
    }
    let mut line = String::new();
    for f in &fields {
        let add = if line.is_empty() {
            f.clone()
        } else {
            format!("  {f}")
        };
        if width.is_some_and(|w| line.chars().count() + add.chars().count() > w) {
            return line;
        }
        line.push_str(&add);
    }
    // Files in flight fill what is left of a wide line.
    if let Some(w) = width {
        let room = w.saturating_sub(line.chars().count() + 2);
        if room >= 16 && !s.in_flight.is_empty() {
            let names = s.in_flight.join(", ");
            let cut: String = if names.chars().count() > room {
                let keep = room - 1;
                let skip = names.chars().count() - keep;
                std::iter::once('…').chain(names.chars().skip(skip)).collect()
            } else {
                names
            };
            line.push_str("  ");
            line.push_str(&cut);
        }
    }
    line
}

/// The terminal's width in columns (stderr), if it says.
fn term_width() -> Option<usize> {
    rustix::termios::tcgetwinsize(std::io::stderr())
        .ok()
        .map(|w| w.ws_col as usize)
        .filter(|w| *w > 0)
}

/// A thread drawing the progress line while the run goes.
pub struct ProgressLine {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl ProgressLine {
    /// Start drawing what `source` says; nothing at all in [`Mode::Off`].
    pub fn start(mode: Mode, source: impl Fn() -> Snapshot + Send + 'static) -> ProgressLine {
        let stop = Arc::new(AtomicBool::new(false));
        if mode == Mode::Off {
            return ProgressLine { stop, handle: None };
        }
        let stop2 = stop.clone();
        let handle = std::thread::Builder::new()
            .name("ringsync-progress".into())
            .spawn(move || draw(mode, &stop2, source))
            .ok();
        ProgressLine { stop, handle }
    }

    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

fn draw(mode: Mode, stop: &AtomicBool, source: impl Fn() -> Snapshot) {
    let start = Instant::now();
    // (time, bytes done) samples for the recent rate.
    let mut samples: std::collections::VecDeque<(Instant, u64)> = std::collections::VecDeque::new();
    let bar = (mode == Mode::Terminal).then(|| {
        let b = indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
        b.set_style(indicatif::ProgressStyle::with_template("{wide_msg}").expect("valid template"));
        b
    });
    let mut last_line = Instant::now();
    loop {
        let every = if mode == Mode::Lines {
            LINES_EVERY_MS
        } else {
            REFRESH_MS
        };
        std::thread::park_timeout(Duration::from_millis(every));
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let snap = source();
        let now = Instant::now();
        samples.push_back((now, snap.bytes_done));
        while samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t).as_millis() > RATE_WINDOW_MS)
            && samples.len() > 2
        {
            samples.pop_front();
        }
        let rate = match (samples.front(), samples.back()) {
            (Some((t0, b0)), Some((t1, b1))) if t1 > t0 => {
                b1.saturating_sub(*b0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        };
        let elapsed = start.elapsed();
        match &bar {
            Some(b) => {
                // indicatif's {wide_msg} cuts the line to the terminal too; cutting it here
                // first keeps the most important fields when it does.
                b.set_message(render(&snap, elapsed, rate, term_width()));
            }
            None => {
                if now.duration_since(last_line).as_millis() + 50 >= LINES_EVERY_MS as u128 {
                    last_line = now;
                    let line = render(&snap, elapsed, rate, None);
                    let _ = writeln!(std::io::stderr().lock(), "ringsync: progress: {line}");
                }
            }
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(done: u64, total: u64, scanning: bool) -> Snapshot {
        Snapshot {
            scanning,
            bytes_done: done,
            bytes_total: total,
            files_done: 3,
            files_total: 10,
            in_flight: vec!["dir/some-file-being-copied.bin".into()],
            ..Default::default()
        }
    }

    #[test]
    fn scanning_has_no_percent_nor_eta() {
        let l = render(&snap(1 << 20, 4 << 20, true), Duration::from_secs(3), 1e6, None);
        assert!(l.starts_with("scanning"), "{l}");
        assert!(!l.contains('%') && !l.contains("ETA"), "{l}");
    }

    #[test]
    fn copying_has_percent_eta_and_fits_the_width() {
        let s = snap(1 << 20, 4 << 20, false);
        let l = render(&s, Duration::from_secs(3), (1 << 20) as f64, None);
        assert!(l.contains(" 25%") && l.contains("ETA 3s"), "{l}");
        for w in [20, 40, 80, 200] {
            let l = render(&s, Duration::from_secs(3), 1e6, Some(w));
            assert!(l.chars().count() <= w, "{w}: {l}");
            assert!(l.contains('%'), "{w}: {l}");
        }
        assert!(render(&s, Duration::from_secs(3), 1e6, Some(200)).contains("some-file"));
    }

    #[test]
    fn a_remote_mirror_shows_wire_bytes_beside_file_bytes() {
        let s = Snapshot {
            wire: Some(3 << 20),
            ..snap(1 << 20, 4 << 20, false)
        };
        let l = render(&s, Duration::from_secs(3), 1e6, None);
        assert!(l.contains("1.0 MiB / 4.0 MiB  wire 3.0 MiB"), "{l}");
        let l = render(&snap(1 << 20, 4 << 20, false), Duration::from_secs(3), 1e6, None);
        assert!(!l.contains("wire"), "{l}");
    }

    #[test]
    fn done_never_shown_above_total() {
        let l = render(&snap(5 << 20, 4 << 20, false), Duration::from_secs(1), 1.0, None);
        assert!(l.contains("100%") && l.contains("5.0 MiB / 5.0 MiB"), "{l}");
    }
}

/// Bytes and entries a stream has moved, against the totals its ESTIMATE gave: what `send`
/// and `receive` show (both sides count the same way).
#[derive(Default)]
pub struct StreamCounts {
    pub bytes: AtomicU64,
    pub entries: AtomicU64,
    pub bytes_total: AtomicU64,
    pub entries_total: AtomicU64,
    /// A remote mirror's link bytes (both ways, all attempts), shown beside.
    pub wire: Option<Arc<AtomicU64>>,
}

impl StreamCounts {
    /// Draw these counts; `scanning` while no total is known yet.
    pub fn line(self: &Arc<Self>, mode: Mode) -> ProgressLine {
        let c = self.clone();
        ProgressLine::start(mode, move || {
            let entries_total = c.entries_total.load(Ordering::Relaxed);
            Snapshot {
                bytes_done: c.bytes.load(Ordering::Relaxed),
                bytes_total: c.bytes_total.load(Ordering::Relaxed),
                files_done: c.entries.load(Ordering::Relaxed),
                files_total: entries_total,
                scanning: entries_total == 0,
                activity: "counting",
                wire: c.wire.as_ref().map(|w| w.load(Ordering::Relaxed)),
                ..Default::default()
            }
        })
    }
}
