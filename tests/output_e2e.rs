//! What `copy` and `mirror` show while they run and afterwards (docs/copy.md, "Seeing what
//! happens" and "Progress"), and the paths in `diff --json` (docs/mirror.md).
//!
//! - Progress is watched on a real pseudo-terminal: the pty pair comes from `rustix::pty`
//!   (`openpt`, `grantpt`, `unlockpt`, `ptsname`, then the slave is opened), its window size is
//!   set with `rustix::termios::tcsetwinsize`, the child's stderr is the slave (it also becomes
//!   the child's controlling terminal, as in a shell) and its stdout a pipe. The master side is
//!   read in a thread until the child has exited. The captured bytes are cut at `\r` and `\n`
//!   and ANSI escape sequences are removed (see [`segments`]); the figures in each piece are
//!   found with the patterns documented at [`figures`].
//! - `-v` and `--log-file` lines are checked against oracle scans of the trees
//!   (`common::oracle`), `mirror -v` also against what `ringsync diff` printed before it.
//! - `diff --json` paths are checked against the raw names the test created.
//!
//! This file needs rustix's `pty` and `termios` features, which the crate itself does not use:
//! `rustix = { version = "1", features = ["pty", "termios"] }` under `[dev-dependencies]`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::changes::{check, escape, expected, parse_text, DiffLine, Expect, ExpectOpts};
use common::mount::{mount_or_skip, snapshot_ro, subvolume_create};
use common::mutate as mutator;
use common::oracle::{scan_tree, Kind, Tree};
use common::*;
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps, CWD};

const MIB: u64 = 1 << 20;
/// A child still running after this long is killed (the test then fails on its status).
const DEADLINE: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------
// Running ringsync with stderr on a pipe or on a pseudo-terminal.

/// Where the child's stderr goes.
#[derive(Clone, Copy, Debug)]
enum ErrTo {
    Pipe,
    Tty { cols: u16, rows: u16 },
}

struct Run {
    what: String,
    code: Option<i32>,
    pid: u32,
    stdout: Vec<u8>,
    /// What came through the stderr pipe, or everything written on the terminal.
    stderr: Vec<u8>,
}

impl Run {
    fn describe(&self) -> String {
        let clip = |b: &[u8]| {
            let s = String::from_utf8_lossy(b).into_owned();
            if s.len() > 6000 {
                let mut i = s.len() - 6000;
                while !s.is_char_boundary(i) {
                    i += 1;
                }
                format!("...{}", &s[i..])
            } else {
                s
            }
        };
        format!(
            "{}: status {:?}\n--- stdout ---\n{}\n--- stderr (raw, escaped) ---\n{:?}",
            self.what,
            self.code,
            clip(&self.stdout),
            clip(&self.stderr)
        )
    }
}

/// A pty pair with the given window size: (master, slave).
fn open_pty(cols: u16, rows: u16) -> (OwnedFd, OwnedFd) {
    use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).expect("openpt");
    grantpt(&master).expect("grantpt");
    unlockpt(&master).expect("unlockpt");
    let name = ptsname(&master, Vec::new()).expect("ptsname");
    let slave = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .expect("open the pty slave");
    let ws = rustix::termios::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    rustix::termios::tcsetwinsize(&slave, ws).expect("tcsetwinsize");
    (master, slave)
}

/// Read the master side until every copy of the slave is closed (EIO).
fn spawn_reader(master: OwnedFd) -> (Arc<Mutex<Vec<u8>>>, mpsc::Receiver<()>) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut f = std::fs::File::from(master);
        let mut chunk = [0u8; 16384];
        loop {
            match f.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => b.lock().unwrap().extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // EIO once the slave is closed everywhere.
                Err(_) => break,
            }
        }
        let _ = tx.send(());
    });
    (buf, rx)
}

/// Run `cmd` to completion: stdin /dev/null, stdout a pipe, stderr per `err`.
fn launch(mut cmd: Command, err: ErrTo, what: &str) -> Run {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    cmd.env_remove("COLUMNS").env_remove("LINES");
    let mut master = None;
    match err {
        ErrTo::Pipe => {
            cmd.stderr(Stdio::piped());
        }
        ErrTo::Tty { cols, rows } => {
            let (m, s) = open_pty(cols, rows);
            cmd.stderr(Stdio::from(s));
            cmd.env("TERM", "xterm-256color");
            // SAFETY: the closure runs in the forked child before exec and only makes two
            // async-signal-safe system calls (setsid, ioctl TIOCSCTTY on fd 2, which is the pty
            // slave by then); it allocates nothing and takes no lock.
            unsafe {
                cmd.pre_exec(|| {
                    let _ = rustix::process::setsid();
                    let _ = rustix::process::ioctl_tiocsctty(std::io::stderr());
                    Ok(())
                });
            }
            master = Some(m);
        }
    }
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    // Our copy of the slave goes with the Command, so the master reads EIO once the child is gone.
    drop(cmd);
    let pid = child.id();
    let reader = master.map(spawn_reader);
    let (tx, rx) = mpsc::channel::<()>();
    let dog = std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(DEADLINE) {
            if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
        }
    });
    let out = child.wait_with_output().expect("wait for the child");
    drop(tx);
    let _ = dog.join();
    let stderr = match reader {
        Some((buf, done)) => {
            let _ = done.recv_timeout(Duration::from_secs(10));
            let b = buf.lock().unwrap().clone();
            b
        }
        None => out.stderr,
    };
    Run {
        what: what.to_string(),
        code: out.status.code(),
        pid,
        stdout: out.stdout,
        stderr,
    }
}

fn ringsync(sub: &str, extra: &[&str], a: &Path, b: &Path) -> Command {
    let mut c = Command::new(bin());
    c.arg(sub).args(extra).arg(a).arg(b);
    c
}

fn run_with(sub: &str, extra: &[&str], a: &Path, b: &Path, err: ErrTo) -> Run {
    let what = format!("ringsync {sub} {} ({err:?})", extra.join(" "));
    launch(ringsync(sub, extra, a, b), err, &what)
}

const TTY: ErrTo = ErrTo::Tty { cols: 120, rows: 40 };

// ---------------------------------------------------------------------------
// What a terminal shows.

/// How a piece of terminal output ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// A bare `\r`: the line is drawn over next.
    Cr,
    /// `\n` (or `\r\n`): a printed line.
    Nl,
    /// The end of the capture.
    Eof,
}

#[derive(Clone, Debug)]
struct Seg {
    text: String,
    end: End,
}

/// Remove ANSI escape sequences (CSI `ESC [ ... final`, OSC/DCS strings up to BEL or
/// `ESC \`, and other `ESC` sequences with their intermediate bytes) and C0 control bytes
/// other than `\r`, `\n` and TAB.
fn strip_ansi(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == 0x1b {
            match raw.get(i + 1) {
                Some(b'[') => {
                    i += 2;
                    while i < raw.len() && !(0x40..=0x7e).contains(&raw[i]) {
                        i += 1;
                    }
                    i += 1;
                }
                Some(b']' | b'P' | b'_' | b'^') => {
                    i += 2;
                    while i < raw.len() {
                        if raw[i] == 0x07 {
                            i += 1;
                            break;
                        }
                        if raw[i] == 0x1b && raw.get(i + 1) == Some(&b'\\') {
                            i += 2;
                            break;
                        }
                        i += 1;
                    }
                }
                Some(_) => {
                    i += 1;
                    while i < raw.len() && (0x20..=0x2f).contains(&raw[i]) {
                        i += 1;
                    }
                    i += 1;
                }
                None => i += 1,
            }
        } else {
            if b == b'\r' || b == b'\n' || b == b'\t' || (b >= 0x20 && b != 0x7f) {
                out.push(b);
            }
            i += 1;
        }
    }
    out
}

/// The captured output cut at `\r` and `\n` (`\r\n` counts as one line end), escapes removed.
fn segments(raw: &[u8]) -> Vec<Seg> {
    let s = strip_ansi(raw);
    let mut segs = Vec::new();
    let mut cur: Vec<u8> = Vec::new();
    let mut i = 0;
    let mut push = |cur: &mut Vec<u8>, end| {
        segs.push(Seg {
            text: String::from_utf8_lossy(cur).into_owned(),
            end,
        });
        cur.clear();
    };
    while i < s.len() {
        match s[i] {
            b'\r' if s.get(i + 1) == Some(&b'\n') => {
                push(&mut cur, End::Nl);
                i += 1;
            }
            b'\r' => push(&mut cur, End::Cr),
            b'\n' => push(&mut cur, End::Nl),
            c => cur.push(c),
        }
        i += 1;
    }
    if !cur.is_empty() {
        push(&mut cur, End::Eof);
    }
    segs
}

fn is_scanning(t: &str) -> bool {
    t.to_lowercase().contains("scanning")
}

/// A drawn progress line: one that is drawn over (ends with a bare `\r`, or is the last thing
/// on the screen), or any line that shows an ETA, a percentage or `scanning`.
fn is_progress(s: &Seg) -> bool {
    let t = s.text.trim();
    !t.is_empty()
        && (matches!(s.end, End::Cr | End::Eof) || t.contains("ETA") || t.contains('%') || is_scanning(t))
}

/// Printed lines that are not progress lines (messages, the summary).
fn printed_text(segs: &[Seg]) -> String {
    segs.iter()
        .filter(|s| !is_progress(s) && !s.text.trim().is_empty())
        .map(|s| s.text.trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------
// Figures in a progress line.

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Num(String),
    Word(String),
    Slash,
    Pct,
    Other(char),
}

fn tokens(s: &str) -> Vec<Tok> {
    let c: Vec<char> = s.chars().collect();
    let mut t = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let x = c[i];
        if x.is_ascii_digit() {
            let st = i;
            while i < c.len()
                && (c[i].is_ascii_digit()
                    || ((c[i] == ',' || c[i] == '.') && c.get(i + 1).is_some_and(|d| d.is_ascii_digit())))
            {
                i += 1;
            }
            t.push(Tok::Num(c[st..i].iter().collect()));
            continue;
        }
        if x.is_alphabetic() {
            let st = i;
            while i < c.len() && c[i].is_alphabetic() {
                i += 1;
            }
            t.push(Tok::Word(c[st..i].iter().collect()));
            continue;
        }
        match x {
            '/' => t.push(Tok::Slash),
            '%' => t.push(Tok::Pct),
            w if w.is_whitespace() => {}
            o => t.push(Tok::Other(o)),
        }
        i += 1;
    }
    t
}

/// A number as displayed: its value (times its unit) and half a step of its last digit, the
/// slack rounding may have taken.
#[derive(Clone, Copy, Debug)]
struct Shown {
    v: f64,
    slack: f64,
}

fn shown(num: &str, scale: f64) -> Shown {
    let clean: String = num.chars().filter(|c| *c != ',').collect();
    let decimals = clean.split_once('.').map(|(_, f)| f.len()).unwrap_or(0);
    Shown {
        v: clean.parse::<f64>().unwrap_or(f64::NAN) * scale,
        slack: 0.5 * 10f64.powi(-(decimals as i32)) * scale,
    }
}

/// `done` exceeds `total` by more than display rounding explains.
fn exceeds(done: Shown, total: Shown) -> bool {
    done.v - done.slack > total.v + total.slack + 1e-6
}

fn byte_unit(w: &str) -> Option<f64> {
    Some(match w {
        "B" | "b" | "byte" | "bytes" => 1.0,
        "K" | "k" | "KiB" | "kiB" => 1024.0,
        "M" | "MiB" => MIB as f64,
        "G" | "GiB" => (1u64 << 30) as f64,
        "T" | "TiB" => (1u64 << 40) as f64,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        _ => return None,
    })
}

fn count_unit(w: &str) -> Option<f64> {
    match w {
        "k" | "K" => Some(1e3),
        "M" => Some(1e6),
        _ => None,
    }
}

fn is_files_word(w: &str) -> bool {
    matches!(w.to_lowercase().as_str(), "file" | "files" | "entry" | "entries")
}

#[derive(Debug, Default)]
struct Figures {
    /// (done, total) in bytes.
    bytes: Vec<(Shown, Shown)>,
    /// (done, total) files.
    files: Vec<(Shown, Shown)>,
    /// Percentages shown.
    pcts: Vec<f64>,
}

/// The figures in one line. The format is not fixed by the contract; these patterns are tried
/// (as regexes; NUM = `\d[\d,]*(\.\d+)?`, SEP = `/` or the word `of`, spaces optional between
/// tokens):
///
/// - bytes: `NUM (UNIT)? SEP NUM UNIT` with UNIT one of `B bytes K KiB M MiB G GiB T TiB` (powers
///   of 1024) or `kB KB MB GB TB` (powers of 1000); a missing first unit is the second one's
///   (`12.3 MiB / 60.0 MiB`, `12.3/60.0 MiB`, `1.2 GiB of 3.0 GiB`). A rate (`40.0 MiB/s`)
///   does not match: a number must follow the separator.
/// - files: `NUM ([kKM])? SEP NUM ([kKM])? (files?|entries)` or `(files?|entries):? NUM SEP NUM`
///   (`123/4000 files`, `files 123/4000`, `1.2k/4.0k files`).
/// - percent: `NUM %`.
///
/// Each figure keeps the slack of its display rounding, so that `60.0 MiB / 60.0 MiB` is
/// equal, and `48.0 MiB / 24.7 MiB` or `50.0 MiB / 0 B` are not below.
fn figures(line: &str) -> Figures {
    let t = tokens(line);
    let mut f = Figures::default();
    let word = |i: usize| match t.get(i) {
        Some(Tok::Word(w)) => Some(w.as_str()),
        _ => None,
    };
    let num = |i: usize| match t.get(i) {
        Some(Tok::Num(n)) => Some(n.as_str()),
        _ => None,
    };
    for i in 0..t.len() {
        if let (Some(n), Some(Tok::Pct)) = (num(i), t.get(i + 1)) {
            f.pcts.push(shown(n, 1.0).v);
        }
        let sep = t[i] == Tok::Slash || matches!(word(i), Some("of"));
        if !sep || i == 0 {
            continue;
        }
        // Left: NUM or NUM WORD.
        let (ln, lu, lstart) = if let Some(n) = num(i - 1) {
            (n, None, i - 1)
        } else if let (Some(u), Some(n)) = (word(i - 1), i.checked_sub(2).and_then(num)) {
            (n, Some(u), i - 2)
        } else {
            continue;
        };
        // Right: NUM, NUM WORD, NUM WORD WORD.
        let Some(rn) = num(i + 1) else {
            continue;
        };
        let (w1, w2) = (word(i + 2), word(i + 3));
        let files_before = lstart
            .checked_sub(1)
            .and_then(|j| match t.get(j) {
                Some(Tok::Other(':')) => j.checked_sub(1).and_then(word),
                _ => word(j),
            })
            .is_some_and(is_files_word);
        // files
        let files_scale = match (w1, w2) {
            (Some(a), _) if is_files_word(a) => Some(1.0),
            (Some(a), Some(b)) if is_files_word(b) => count_unit(a),
            (None, _) | (Some(_), _) if files_before => w1.map_or(Some(1.0), count_unit),
            _ => None,
        };
        if let Some(rs) = files_scale {
            let ls = match lu {
                None => Some(rs),
                Some(u) => count_unit(u),
            };
            if let Some(ls) = ls {
                f.files.push((shown(ln, ls), shown(rn, rs)));
            }
            continue;
        }
        // bytes
        if let Some(rs) = w1.and_then(byte_unit) {
            let ls = match lu {
                None => Some(rs),
                Some(u) => byte_unit(u),
            };
            if let Some(ls) = ls {
                f.bytes.push((shown(ln, ls), shown(rn, rs)));
            }
        }
    }
    f
}

/// What the progress checks saw.
#[derive(Debug, Default)]
struct Seen {
    /// Drawn progress lines.
    drawn: usize,
    /// Lines with a percentage and an ETA.
    pct_eta: usize,
    byte_lines: usize,
    file_lines: usize,
    /// (done, total) bytes of lines past the scan (not saying `scanning`).
    post_scan_bytes: Vec<(Shown, Shown, String)>,
    /// Byte totals of lines that show a percentage.
    pct_totals: Vec<(Shown, String)>,
}

/// The checks every progress line must pass (done <= total, percentages <= 100, no percentage
/// or ETA while scanning); problems are appended.
fn check_progress(segs: &[Seg], problems: &mut Vec<String>) -> Seen {
    let mut seen = Seen::default();
    for s in segs {
        let t = s.text.trim();
        if t.is_empty() {
            continue;
        }
        let f = figures(t);
        for (d, tot) in &f.bytes {
            if exceeds(*d, *tot) {
                problems.push(format!("bytes done exceed the total: {t:?}"));
            }
        }
        for (d, tot) in &f.files {
            if exceeds(*d, *tot) {
                problems.push(format!("files done exceed the total: {t:?}"));
            }
        }
        for p in &f.pcts {
            if *p > 100.0 {
                problems.push(format!("a percentage above 100: {t:?}"));
            }
        }
        let scanning = is_scanning(t);
        if scanning && (t.contains('%') || t.contains("ETA")) {
            problems.push(format!(
                "a line that says scanning shows a percentage or an ETA: {t:?}"
            ));
        }
        if is_progress(s) {
            seen.drawn += 1;
        }
        if t.contains('%') && t.contains("ETA") {
            seen.pct_eta += 1;
        }
        if !f.bytes.is_empty() {
            seen.byte_lines += 1;
            if !scanning {
                seen.post_scan_bytes
                    .extend(f.bytes.iter().map(|(d, tot)| (*d, *tot, t.to_string())));
            }
            if t.contains('%') {
                seen.pct_totals
                    .extend(f.bytes.iter().map(|(_, tot)| (*tot, t.to_string())));
            }
        }
        if !f.files.is_empty() {
            seen.file_lines += 1;
        }
    }
    seen
}

fn show_segs(segs: &[Seg]) -> String {
    segs.iter()
        .filter(|s| !s.text.trim().is_empty())
        .map(|s| format!("{:?} {:?}", s.end, s.text))
        .collect::<Vec<_>>()
        .join("\n  ")
}

#[test]
fn figures_parser_self_test() {
    let f = figures("12.3 MiB / 60.0 MiB  123/4000 files  40.0 MiB/s  20%  ETA 1s");
    assert_eq!(f.bytes.len(), 1, "{f:?}");
    assert_eq!(f.files.len(), 1, "{f:?}");
    assert_eq!(f.pcts, vec![20.0]);
    assert!(!exceeds(f.bytes[0].0, f.bytes[0].1));
    assert_eq!(f.files[0].1.v, 4000.0);
    let f = figures("48.0 MiB / 24.7 MiB 125/3000 files ETA 0s");
    assert!(exceeds(f.bytes[0].0, f.bytes[0].1), "{f:?}");
    let f = figures("50.0 MiB / 0 B 0/0 files");
    assert!(exceeds(f.bytes[0].0, f.bytes[0].1), "{f:?}");
    assert!(!exceeds(f.files[0].0, f.files[0].1));
    let f = figures("files: 7/5 | 1.0 MiB of 1000.0 KiB | 2.0/3.5 GiB | 1.2k/4.0k files");
    assert_eq!(f.files.len(), 2, "{f:?}");
    assert!(exceeds(f.files[0].0, f.files[0].1));
    assert!(!exceeds(f.files[1].0, f.files[1].1));
    assert_eq!(f.bytes.len(), 2, "{f:?}");
    // 1.0 MiB (0.95..1.05 MiB) may be a rounded 0.97 MiB <= 1000 KiB: not a violation.
    assert!(!exceeds(f.bytes[0].0, f.bytes[0].1));
    assert_eq!(f.bytes[1].1.v, 3.5 * (1u64 << 30) as f64);
    let b: Vec<f64> = byte_figures("copied 4.1 MiB, bytes: 4,294,304; 12 B; Bytes=7")
        .iter()
        .map(|f| f.v)
        .collect();
    assert_eq!(b, vec![4.1 * MIB as f64, 4_294_304.0, 12.0, 7.0]);
    assert!(mentions_time_or_rate("in 0.5s") && mentions_time_or_rate("8.0 MiB/s"));
    assert!(mentions_time_or_rate("took 0:00:01") && !mentions_time_or_rate("4 files, 0 errors"));
    let s = segments(b"\x1b[2K\ra 1\x1b[0m\rb 2\r\n\x1b]0;title\x07c\x1b(B 3\n\rd");
    let got: Vec<(End, &str)> = s.iter().map(|s| (s.end, s.text.as_str())).collect();
    assert_eq!(
        got,
        vec![
            (End::Cr, ""),
            (End::Cr, "a 1"),
            (End::Nl, "b 2"),
            (End::Nl, "c 3"),
            (End::Cr, ""),
            (End::Eof, "d")
        ]
    );
}

// ---------------------------------------------------------------------------
// Trees.

/// Incompressible, reproducible data (xorshift).
fn write_random(path: &Path, len: u64, seed: u64) {
    let mut x = seed | 1;
    let mut f = std::fs::File::create(path).expect("create file");
    let mut buf = vec![0u8; MIB as usize];
    let mut left = len;
    while left > 0 {
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).expect("write file");
        left -= n as u64;
    }
}

/// `big/bigN` files of the given MiB sizes and `small/dNN/fNNNN` files of `size` bytes;
/// returns (data bytes, regular files).
fn data_tree(
    root: &Path,
    big_mib: &[u64],
    dirs: usize,
    per_dir: usize,
    size: usize,
    seed: u64,
) -> (u64, u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    std::fs::create_dir_all(root.join("big")).unwrap();
    let mut bytes = 0;
    let mut files = 0;
    for (i, m) in big_mib.iter().enumerate() {
        write_random(&root.join(format!("big/big{i}")), m * MIB, seed + i as u64);
        bytes += m * MIB;
        files += 1;
    }
    let mut buf = vec![0u8; size];
    for d in 0..dirs {
        let dir = root.join(format!("small/d{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for n in 0..per_dir {
            rng.fill_bytes(&mut buf);
            std::fs::write(dir.join(format!("f{n:04}")), &buf).unwrap();
            bytes += size as u64;
            files += 1;
        }
    }
    (bytes, files)
}

fn copy_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    // Data must go through the rate limit (no reflink); no syncfs at the end.
    let mut v = vec!["--reflink", "never", "--fsync", "none"];
    v.extend_from_slice(extra);
    v
}

// ---------------------------------------------------------------------------
// 1. Progress of `copy`.

#[test]
fn progress_on_a_terminal_shows_done_total_percent_and_eta() {
    let tmp = scratch("out-prog");
    let src = tmp.path().join("src");
    let (total, _) = data_tree(&src, &[20, 20, 20], 20, 100, 1000, 1);
    let run = run_with(
        "copy",
        &copy_args(&["--bwlimit", "40M"]),
        &src,
        &tmp.path().join("dst"),
        TTY,
    );
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let segs = segments(&run.stderr);
    let mut problems = Vec::new();
    let seen = check_progress(&segs, &mut problems);
    if seen.pct_eta == 0 {
        problems.push("no line shows a percentage and an ETA".into());
    }
    if seen.byte_lines == 0 {
        problems.push("no line shows bytes done / total (patterns: see `figures`)".into());
    }
    if seen.file_lines == 0 {
        problems.push("no line shows files done / total (patterns: see `figures`)".into());
    }
    // Once a percentage is shown the scan is over: the byte total is SRC's data.
    for (tot, line) in &seen.pct_totals {
        let slack = tot.slack + total as f64 * 0.005;
        if (tot.v - total as f64).abs() > slack {
            problems.push(format!(
                "byte total {:.0} is not SRC's {total} bytes of data: {line:?}",
                tot.v
            ));
        }
    }
    if run.stdout.contains(&b'\r') || String::from_utf8_lossy(&run.stdout).contains("ETA") {
        problems.push("progress on stdout".into());
    }
    assert!(
        problems.is_empty(),
        "copy on a terminal: {}\n--- lines seen ---\n  {}\n{}",
        problems.join("\n"),
        show_segs(&segs),
        run.describe()
    );
}

#[test]
fn progress_fits_a_narrow_terminal() {
    let tmp = scratch("out-narrow");
    let src = tmp.path().join("src");
    data_tree(&src, &[20, 20, 20], 20, 100, 1000, 2);
    let run = run_with(
        "copy",
        &copy_args(&["--bwlimit", "60M"]),
        &src,
        &tmp.path().join("dst"),
        ErrTo::Tty { cols: 40, rows: 40 },
    );
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let segs = segments(&run.stderr);
    let mut problems = Vec::new();
    let seen = check_progress(&segs, &mut problems);
    if seen.drawn == 0 {
        problems.push("no progress line drawn on a 40-column terminal".into());
    }
    for s in segs.iter().filter(|s| is_progress(s)) {
        let n = s.text.chars().count();
        if n > 40 {
            problems.push(format!(
                "drawn line of {n} characters on a 40-column terminal: {:?}",
                s.text
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "copy on a 40x40 terminal: {}\n--- lines seen ---\n  {}\n{}",
        problems.join("\n"),
        show_segs(&segs),
        run.describe()
    );
}

#[test]
fn no_progress_without_a_terminal() {
    let tmp = scratch("out-notty");
    let src = tmp.path().join("src");
    data_tree(&src, &[20, 20, 20], 10, 100, 1000, 3);
    let run = run_with(
        "copy",
        &copy_args(&["--bwlimit", "60M"]),
        &src,
        &tmp.path().join("dst"),
        ErrTo::Pipe,
    );
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        !err.contains('\r') && !err.contains('%') && !err.contains("ETA"),
        "progress output on stderr, which is not a terminal:\n{}",
        run.describe()
    );
}

#[test]
fn progress_option_prints_plain_lines_off_a_terminal() {
    let tmp = scratch("out-progopt");
    let src = tmp.path().join("src");
    data_tree(&src, &[20, 20, 20], 10, 100, 1000, 4);
    let run = run_with(
        "copy",
        &copy_args(&["--progress", "--bwlimit", "30M"]),
        &src,
        &tmp.path().join("dst"),
        ErrTo::Pipe,
    );
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let mut problems = Vec::new();
    if run.stderr.contains(&b'\r') || run.stderr.contains(&0x1b) {
        problems.push("--progress off a terminal redraws (\\r or escape sequences)".to_string());
    }
    let segs = segments(&run.stderr);
    let seen = check_progress(&segs, &mut problems);
    if seen.byte_lines + seen.file_lines == 0 {
        problems.push("--progress printed no progress line (no done/total figures)".into());
    }
    assert!(
        problems.is_empty(),
        "copy --progress, stderr a pipe: {}\n{}",
        problems.join("\n"),
        run.describe()
    );
}

#[test]
fn quiet_prints_nothing_even_on_a_terminal() {
    let tmp = scratch("out-quiet");
    let src = tmp.path().join("src");
    data_tree(&src, &[20, 20, 20], 10, 100, 1000, 5);
    let run = run_with(
        "copy",
        &copy_args(&["-q", "--bwlimit", "60M"]),
        &src,
        &tmp.path().join("dst"),
        TTY,
    );
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let shown = strip_ansi(&run.stderr);
    assert!(
        !shown.contains(&b'\r') && shown.iter().all(|b| b.is_ascii_whitespace()),
        "copy -q wrote on the terminal:\n{}",
        run.describe()
    );
    assert!(
        run.stdout.is_empty(),
        "copy -q wrote on stdout:\n{}",
        run.describe()
    );
}

// ---------------------------------------------------------------------------
// 2. Progress of `mirror`: totals cover the work.

#[test]
fn mirror_progress_totals_cover_the_changed_bytes() {
    let tmp = scratch("out-mprog");
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    data_tree(&src, &[16, 16, 16, 16], 10, 100, 1000, 6);
    let first = run_with("mirror", &copy_args(&["-q"]), &src, &dst, ErrTo::Pipe);
    assert_eq!(first.code, Some(0), "{}", first.describe());
    // About a third of the bytes change: one big file rewritten (same size, other mtime) and a
    // new directory of 8 x 1 MiB.
    write_random(&src.join("big/big1"), 16 * MIB, 0x5eed);
    std::fs::File::options()
        .write(true)
        .open(src.join("big/big1"))
        .unwrap()
        .set_modified(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        .unwrap();
    std::fs::create_dir(src.join("fresh")).unwrap();
    for i in 0..8 {
        write_random(&src.join(format!("fresh/n{i}")), MIB, 100 + i);
    }
    let changed = 24 * MIB;
    let run = run_with("mirror", &copy_args(&["--bwlimit", "16M"]), &src, &dst, TTY);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let segs = segments(&run.stderr);
    let mut problems = Vec::new();
    let seen = check_progress(&segs, &mut problems);
    if seen.post_scan_bytes.is_empty() {
        problems.push("no progress line with bytes done / total past the scan".into());
    }
    for (_, tot, line) in &seen.post_scan_bytes {
        if tot.v + tot.slack < changed as f64 {
            problems.push(format!(
                "byte total below the {changed} bytes that changed: {line:?}"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "mirror of a changed tree on a terminal: {}\n--- lines seen ---\n  {}\n{}",
        problems.join("\n"),
        show_segs(&segs),
        run.describe()
    );
}

// ---------------------------------------------------------------------------
// 3. -v

/// `-v` stdout: entry lines in the diff format, possibly followed by a summary block (the
/// contract does not say whether the `-v` summary goes to stdout or stderr). Returns the parsed
/// entry lines and the text after them.
fn verbose_output(stdout: &[u8], what: &str) -> (Vec<DiffLine>, String) {
    let lines: Vec<&[u8]> = stdout.split(|b| *b == b'\n').collect();
    let is_entry = |l: &[u8]| l.len() >= 2 && b"+-MATLR".contains(&l[0]) && l[1] == b'\t';
    let cut = lines.iter().rposition(|l| is_entry(l)).map_or(0, |i| i + 1);
    let (head, tail) = lines.split_at(cut);
    if let Some(bad) = head.iter().find(|l| !is_entry(l)) {
        panic!(
            "{what}: a line that is not in the diff format among the -v lines: {:?}\n{}",
            String::from_utf8_lossy(bad),
            String::from_utf8_lossy(stdout)
        );
    }
    let mut text = head.join(&b'\n');
    if !head.is_empty() {
        text.push(b'\n');
    }
    let parsed =
        parse_text(&text).unwrap_or_else(|e| panic!("{what}: malformed -v lines:\n  {}", e.join("\n  ")));
    (parsed, String::from_utf8_lossy(&tail.join(&b'\n')).into_owned())
}

/// Compare line sets; returns problems (missing, unexpected, duplicate lines).
fn compare_lines(got: &[DiffLine], want: &BTreeSet<String>, what: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for l in got {
        let t = l.text();
        if !seen.insert(t.clone()) {
            problems.push(format!("{what}: duplicate line {t:?}"));
        }
    }
    for t in seen.difference(want) {
        problems.push(format!("{what}: unexpected line {t:?}"));
    }
    for t in want.difference(&seen) {
        problems.push(format!("{what}: missing line {t:?}"));
    }
    problems
}

fn line(marker: char, path: &[u8]) -> String {
    format!("{marker}\t{}", escape(path))
}

fn fmt_problems(p: &[String]) -> String {
    let mut v: Vec<String> = p.iter().take(60).cloned().collect();
    if p.len() > 60 {
        v.push(format!("... and {} more", p.len() - 60));
    }
    v.join("\n  ")
}

#[test]
fn copy_verbose_lists_every_created_entry() {
    let tmp = scratch("out-v");
    let src = tmp.path().join("src");
    gen_tree(
        &src,
        0x0e1,
        &GenOpts {
            dirs: 12,
            files: 60,
            max_file: 256 << 10,
            ..GenOpts::default()
        },
    )
    .unwrap();
    let tsrc = scan_tree(&src, false).unwrap();
    let run = run_with("copy", &["-v"], &src, &tmp.path().join("dst"), ErrTo::Pipe);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let (got, trailer) = verbose_output(&run.stdout, "copy -v");
    let want: BTreeSet<String> = tsrc
        .entries
        .keys()
        .filter(|p| p.as_slice() != b".")
        .map(|p| line('+', p))
        .collect();
    let problems = compare_lines(&got, &want, "copy -v into a new DST");
    assert!(
        problems.is_empty(),
        "{} problems:\n  {}",
        problems.len(),
        fmt_problems(&problems)
    );
    // "Summary: at the end, on a terminal (stderr is a TTY), or with -v".
    let summary = format!("{trailer}\n{}", String::from_utf8_lossy(&run.stderr));
    assert!(
        summary.to_lowercase().contains("error"),
        "copy -v printed no summary (nothing mentions errors) after the entry lines or on \
         stderr:\n{}",
        run.describe()
    );
}

fn cp_a(src: &Path, dst: &Path) {
    let mut s = src.as_os_str().to_owned();
    s.push("/.");
    let out = Command::new("cp")
        .arg("-a")
        .arg("--preserve=all")
        .arg(&s)
        .arg(dst)
        .output()
        .expect("run cp");
    assert!(out.status.success(), "cp -a failed: {}", describe(&out));
}

fn within(p: &[u8], dir: &[u8]) -> bool {
    p == dir || (p.starts_with(dir) && p.get(dir.len()) == Some(&b'/'))
}

#[test]
fn copy_verbose_into_an_existing_dst_marks_replacements() {
    let tmp = scratch("out-vm");
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    gen_tree(
        &src,
        0x0e2,
        &GenOpts {
            dirs: 12,
            files: 60,
            max_file: 256 << 10,
            deep: false, // cp -a cannot copy the > PATH_MAX chain
            ..GenOpts::default()
        },
    )
    .unwrap();
    cp_a(&src, &dst);
    let tsrc = scan_tree(&src, false).unwrap();
    // Change DST: a file deleted, a file turned into an (empty) directory, a symlink turned into
    // a file, a subtree deleted, a directory turned into a file, an extra entry added.
    let short = |p: &&Vec<u8>| p.len() < 200 && p.as_slice() != b".";
    let files: Vec<&Vec<u8>> = tsrc
        .entries
        .iter()
        .filter(|(p, e)| e.kind == Kind::File && e.nlink == 1 && short(p))
        .map(|(p, _)| p)
        .collect();
    let syms: Vec<&Vec<u8>> = tsrc
        .entries
        .iter()
        .filter(|(p, e)| e.kind == Kind::Symlink && e.nlink == 1 && short(p))
        .map(|(p, _)| p)
        .collect();
    let dirs: Vec<&Vec<u8>> = tsrc
        .entries
        .iter()
        .filter(|(p, e)| e.kind == Kind::Dir && short(p))
        .filter(|(p, _)| tsrc.entries.keys().any(|q| q != *p && within(q, p)))
        .map(|(p, _)| p)
        .collect();
    assert!(
        files.len() >= 2 && !syms.is_empty() && dirs.len() >= 2,
        "test bug: the generated tree lacks candidates"
    );
    let d_del = dirs[0].clone();
    let d_file = dirs
        .iter()
        .find(|d| !within(d, &d_del) && !within(&d_del, d))
        .expect("two disjoint directories")
        .to_vec();
    let free = |p: &&&Vec<u8>| !within(p, &d_del) && !within(p, &d_file);
    let f: Vec<&&Vec<u8>> = files.iter().filter(free).collect();
    let s: Vec<&&Vec<u8>> = syms.iter().filter(free).collect();
    assert!(f.len() >= 2 && !s.is_empty(), "test bug: too few free candidates");
    let (f_del, f_dir, s_file) = (f[0].to_vec(), f[1].to_vec(), s[0].to_vec());
    std::fs::remove_file(bpath(&dst, &f_del)).unwrap();
    std::fs::remove_file(bpath(&dst, &f_dir)).unwrap();
    std::fs::create_dir(bpath(&dst, &f_dir)).unwrap();
    std::fs::remove_file(bpath(&dst, &s_file)).unwrap();
    std::fs::write(bpath(&dst, &s_file), b"a file where SRC has a symlink").unwrap();
    std::fs::remove_dir_all(bpath(&dst, &d_del)).unwrap();
    std::fs::remove_dir_all(bpath(&dst, &d_file)).unwrap();
    std::fs::write(bpath(&dst, &d_file), b"a file where SRC has a directory").unwrap();
    std::fs::write(dst.join("only-in-dst"), b"extra").unwrap();
    let tdst = scan_tree(&dst, false).unwrap();

    // Expected, from the two scans: nothing at a path -> +, same type -> M (directories: not
    // listed), other type -> T.
    let mut want = BTreeSet::new();
    for (p, e) in &tsrc.entries {
        if p.as_slice() == b"." {
            continue;
        }
        match tdst.entries.get(p) {
            None => want.insert(line('+', p)),
            Some(d) if d.kind != e.kind => want.insert(line('T', p)),
            Some(_) if e.kind == Kind::Dir => false,
            Some(_) => want.insert(line('M', p)),
        };
    }
    let run = run_with("copy", &["-v"], &src, &dst, ErrTo::Pipe);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let (got, _) = verbose_output(&run.stdout, "copy -v");
    let problems = compare_lines(&got, &want, "copy -v into an existing DST");
    assert!(
        problems.is_empty(),
        "{} problems (DST changes: deleted {}, {}; file->dir {}; symlink->file {}; dir->file {}):\n  {}",
        problems.len(),
        escape(&f_del),
        escape(&d_del),
        escape(&f_dir),
        escape(&s_file),
        escape(&d_file),
        fmt_problems(&problems)
    );
}

/// The oracle's change set without atime-only changes (not listed by default).
fn without_atime_only(mut exp: BTreeMap<Vec<u8>, Expect>) -> BTreeMap<Vec<u8>, Expect> {
    for e in exp.values_mut() {
        e.attrs.remove("atime");
        if !e.lenient && e.attrs.is_empty() {
            e.required.remove(&'A');
            e.allowed.remove(&'A');
        }
    }
    exp.retain(|_, e| !e.allowed.is_empty() || e.lenient || e.lenient_link);
    exp
}

#[test]
fn mirror_verbose_lists_what_diff_listed() {
    let tmp = scratch("out-mv");
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    gen_tree(
        &src,
        0x0e3,
        &GenOpts {
            dirs: 14,
            files: 60,
            max_file: 256 << 10,
            ..GenOpts::default()
        },
    )
    .unwrap();
    let first = run_with("mirror", &["-q"], &src, &dst, ErrTo::Pipe);
    assert_eq!(first.code, Some(0), "{}", first.describe());
    let log = mutator::mutate(&src, 0x0e3, 30).unwrap();
    // Also a few atime-only changes (neither diff nor mirror -v lists them by default).
    let (tdst, tsrc) = (scan_tree(&dst, false).unwrap(), scan_tree(&src, false).unwrap());
    let fut = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64 + 3 * 86_400;
    let same: Vec<&Vec<u8>> = tsrc
        .entries
        .iter()
        .filter(|(p, e)| {
            e.kind == Kind::File
                && e.nlink == 1
                && p.len() < 200
                && tdst.entries.get(*p).is_some_and(|d| {
                    d.kind == e.kind && d.size == e.size && d.mtime == e.mtime && d.atime == e.atime
                })
        })
        .map(|(p, _)| p)
        .take(3)
        .collect();
    assert!(!same.is_empty(), "test bug: no unchanged file left");
    for p in &same {
        let e = &tsrc.entries[*p];
        set_times(&bpath(&src, p), (e.mtime.0, e.mtime.1), (fut, 42));
    }
    let tsrc = scan_tree(&src, false).unwrap();
    let exp = without_atime_only(expected(
        &tdst,
        &tsrc,
        &ExpectOpts {
            checksum: false,
            ignore_root_xattrs: vec![RECORD_XATTR.as_bytes().to_vec()],
            lenient_dir_times: true,
        },
    ));
    let diff = run_with("diff", &["--renames", "never"], &dst, &src, ErrTo::Pipe);
    assert_eq!(diff.code, Some(0), "{}", diff.describe());
    let dlines =
        parse_text(&diff.stdout).unwrap_or_else(|e| panic!("diff output malformed:\n  {}", e.join("\n  ")));
    let run = run_with("mirror", &["-v"], &src, &dst, ErrTo::Pipe);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let (mut got, _) = verbose_output(&run.stdout, "mirror -v");
    let want: BTreeSet<String> = dlines.iter().map(|l| l.text()).collect();
    let mut problems = compare_lines(&got, &want, "mirror -v vs diff DST SRC");
    // And against the oracle (lines sorted first: -v prints them as they are done).
    got.sort_by(|a, b| a.path.cmp(&b.path).then(a.marker.cmp(&b.marker)));
    problems.extend(
        check(&got, &exp)
            .into_iter()
            .map(|e| format!("mirror -v vs oracle: {e}")),
    );
    // mirror still sets atimes: DST equals SRC, atimes included.
    problems.extend(
        compare_trees(&src, &dst, &mirror_cmp())
            .into_iter()
            .map(|d| format!("after mirror -v, DST differs from SRC: {d}")),
    );
    assert!(
        problems.is_empty(),
        "{} problems:\n  {}\n--- mutations ---\n  {}\n  atime only: {}",
        problems.len(),
        fmt_problems(&problems),
        log.join("\n  "),
        same.iter().map(|p| escape(p)).collect::<Vec<_>>().join(", ")
    );
}

// ---------------------------------------------------------------------------
// 4. --log-file

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

struct LogLine {
    ms: i64,
    pid: u32,
    text: String,
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ [PID] TEXT`
fn parse_log_line(l: &str) -> Result<LogLine, String> {
    let b = l.as_bytes();
    let digits = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = l.get(r)?;
        if s.bytes().all(|c| c.is_ascii_digit()) {
            s.parse().ok()
        } else {
            None
        }
    };
    let bad = || format!("not `YYYY-MM-DDTHH:MM:SS.mmmZ [PID] ...`: {l:?}");
    if b.len() < 28 {
        return Err(bad());
    }
    for (i, c) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (23, b'Z'),
    ] {
        if b[i] != c {
            return Err(bad());
        }
    }
    let f = |r| digits(r).ok_or_else(bad);
    let (y, mo, d, h, mi, s, ms) = (
        f(0..4)?,
        f(5..7)?,
        f(8..10)?,
        f(11..13)?,
        f(14..16)?,
        f(17..19)?,
        f(20..23)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return Err(bad());
    }
    let rest = &l[24..];
    let rest = rest.strip_prefix(" [").ok_or_else(bad)?;
    let (pid, text) = rest.split_once("] ").ok_or_else(bad)?;
    let pid: u32 = pid.parse().map_err(|_| bad())?;
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s;
    Ok(LogLine {
        ms: secs * 1000 + ms,
        pid,
        text: text.to_string(),
    })
}

#[test]
fn log_line_parser_self_test() {
    assert_eq!(days_from_civil(1970, 1, 1), 0);
    assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    let l = parse_log_line("2026-12-03T12:00:00.123Z [4242] +\tdir/file").unwrap();
    assert_eq!(
        (l.ms, l.pid, l.text.as_str()),
        (1_796_299_200_123, 4242, "+\tdir/file")
    );
    for bad in [
        "2026-12-03 12:00:00.123Z [4242] x",
        "2026-12-03T12:00:00.123 [4242] x",
        "2026-12-03T12:00:00Z [4242] x",
        "2026-12-03T12:00:00.123Z 4242 x",
        "+\tdir/file",
    ] {
        assert!(parse_log_line(bad).is_err(), "{bad:?} accepted");
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn is_entry_text(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() >= 2 && b"+-MATLR".contains(&b[0]) && b[1] == b'\t'
}

#[test]
fn log_file_appends_timestamped_entries_errors_and_summaries() {
    let tmp = scratch("out-log");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let src = tmp.path().join("src");
    let out = tmp.path().join("out");
    std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
    std::fs::create_dir_all(src.join("locked")).unwrap();
    std::fs::create_dir(&out).unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(src.join("a.txt"), vec![b'a'; 1000]).unwrap();
    write_random(&src.join("sub/b.bin"), 64 << 10, 9);
    std::fs::write(src.join("sub/deeper/c"), b"0123456789").unwrap();
    std::os::unix::fs::symlink("a.txt", src.join("link")).unwrap();
    std::fs::write(src.join("locked/secret.txt"), b"unreadable for the copier").unwrap();
    let root = is_root();
    if root {
        if !have_tool("setpriv") {
            skip_or_fail("setpriv (util-linux) is needed to run the copy as a non-root user");
            return;
        }
        // The copier runs as nobody; it owns the source, so owners need no privilege.
        for e in scan_tree(&src, false).unwrap().entries.keys() {
            let p = if e.as_slice() == b"." {
                src.clone()
            } else {
                bpath(&src, e)
            };
            rustix::fs::chownat(
                CWD,
                &p,
                Some(rustix::fs::Uid::from_raw(65534)),
                Some(rustix::fs::Gid::from_raw(65534)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .unwrap();
        }
    }
    let tsrc = scan_tree(&src, false).unwrap();
    // Mode 000: the copier (not root) cannot list it, so that entry fails.
    std::fs::set_permissions(src.join("locked"), std::fs::Permissions::from_mode(0o000)).unwrap();
    let dst = out.join("dst");
    let logf = out.join("copy.log");
    let failing = |p: &[u8]| within(p, b"locked");

    let mut runs = Vec::new();
    for round in 0..2 {
        let mut cmd = if root {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .arg(bin());
            c
        } else {
            Command::new(bin())
        };
        cmd.args(["copy", "-v", "--log-file"])
            .arg(&logf)
            .arg(&src)
            .arg(&dst);
        // The log is UTC whatever the local time zone (here UTC+05:30).
        cmd.env("TZ", "RST-5:30");
        let t0 = now_ms();
        let run = launch(
            cmd,
            ErrTo::Pipe,
            &format!("copy -v --log-file, run {}", round + 1),
        );
        let t1 = now_ms();
        runs.push((run, t0, t1));
    }
    std::fs::set_permissions(src.join("locked"), std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut problems = Vec::new();
    for (i, (run, _, _)) in runs.iter().enumerate() {
        if run.code != Some(3) {
            problems.push(format!(
                "run {}: exit status {:?}, expected 3 (partial)",
                i + 1,
                run.code
            ));
        }
        let err = String::from_utf8_lossy(&run.stderr);
        if !err
            .lines()
            .any(|l| l.starts_with("ringsync: ") && l.contains("locked"))
        {
            problems.push(format!(
                "run {}: no `ringsync: OP PATH: ERROR` line for locked",
                i + 1
            ));
        }
    }
    let text = std::fs::read(&logf).unwrap_or_else(|e| {
        panic!(
            "no log file {} ({e})\n{}\n{}",
            logf.display(),
            runs[0].0.describe(),
            runs[1].0.describe()
        )
    });
    let text = String::from_utf8(text).expect("the log file is UTF-8 (paths are escaped)");
    let mut parsed = Vec::new();
    for l in text.lines().filter(|l| !l.is_empty()) {
        match parse_log_line(l) {
            Ok(x) => parsed.push(x),
            Err(e) => problems.push(e),
        }
    }
    // Appended: all lines of run 1, then all of run 2.
    let pids: Vec<u32> = runs.iter().map(|(r, _, _)| r.pid).collect();
    let first_of_2 = parsed
        .iter()
        .position(|x| x.pid == pids[1])
        .unwrap_or(parsed.len());
    for (k, x) in parsed.iter().enumerate() {
        let want = if k < first_of_2 { pids[0] } else { pids[1] };
        if x.pid != want {
            problems.push(format!(
                "log line {k} has [{}], expected [{want}] (runs' pids {pids:?}; run 2 must append after run 1): {:?}",
                x.pid, x.text
            ));
        }
    }
    for (i, (run, t0, t1)) in runs.iter().enumerate() {
        let mine: Vec<&LogLine> = parsed.iter().filter(|x| x.pid == run.pid).collect();
        if mine.is_empty() {
            problems.push(format!("run {}: no log line with [{}]", i + 1, run.pid));
            continue;
        }
        for x in &mine {
            if x.ms < t0 - 1500 || x.ms > t1 + 1500 {
                problems.push(format!(
                    "run {}: timestamp not the UTC time of the run ({} ms off): {:?}",
                    i + 1,
                    if x.ms < *t0 { x.ms - t0 } else { x.ms - t1 },
                    x.text
                ));
                break;
            }
        }
        // The same entry lines as on stdout.
        let (vlines, _) = verbose_output(&run.stdout, &run.what);
        let on_stdout: BTreeSet<String> = vlines.iter().map(|l| l.text()).collect();
        let logged: BTreeSet<String> = mine
            .iter()
            .filter(|x| is_entry_text(&x.text))
            .map(|x| x.text.clone())
            .collect();
        if on_stdout != logged {
            problems.push(format!(
                "run {}: entry lines differ: only on stdout {:?}, only in the log {:?}",
                i + 1,
                on_stdout.difference(&logged).collect::<Vec<_>>(),
                logged.difference(&on_stdout).collect::<Vec<_>>()
            ));
        }
        // The entry lines are what was done (those at or under `locked` may vary).
        let want: BTreeSet<String> = tsrc
            .entries
            .iter()
            .filter(|(p, _)| p.as_slice() != b"." && !failing(p))
            .filter(|(_, e)| i == 0 || e.kind != Kind::Dir)
            .map(|(p, _)| line(if i == 0 { '+' } else { 'M' }, p))
            .collect();
        let got: BTreeSet<String> = logged
            .iter()
            .filter(|t| {
                let p = t.split('\t').nth(1).unwrap_or("");
                !failing(p.as_bytes())
            })
            .cloned()
            .collect();
        if got != want {
            problems.push(format!(
                "run {}: logged entries: missing {:?}, unexpected {:?}",
                i + 1,
                want.difference(&got).collect::<Vec<_>>(),
                got.difference(&want).collect::<Vec<_>>()
            ));
        }
        // An error line for the failing entry, and a summary.
        if !mine
            .iter()
            .any(|x| !is_entry_text(&x.text) && x.text.contains("locked"))
        {
            problems.push(format!("run {}: no error line about locked in the log", i + 1));
        }
        let err = String::from_utf8_lossy(&run.stderr);
        for e in err.lines().filter(|l| l.contains("locked")) {
            let msg = e.strip_prefix("ringsync: ").unwrap_or(e);
            if !mine.iter().any(|x| x.text.contains(msg)) {
                problems.push(format!("run {}: error message not in the log: {e:?}", i + 1));
            }
        }
        let summary: Vec<&str> = mine
            .iter()
            .filter(|x| !is_entry_text(&x.text) && !x.text.contains("locked"))
            .map(|x| x.text.as_str())
            .collect();
        if !summary.iter().any(|t| t.to_lowercase().contains("error")) {
            problems.push(format!(
                "run {}: no summary line (one mentioning errors) in the log; other lines: {summary:?}",
                i + 1
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n  {}\n--- log file ---\n{text}\n--- runs ---\n{}\n{}",
        problems.len(),
        fmt_problems(&problems),
        runs[0].0.describe(),
        runs[1].0.describe()
    );
}

// ---------------------------------------------------------------------------
// 5. Summary

/// Byte figures in a text, with their rounding slack: `NUM UNIT` (UNIT as in [`figures`]) or
/// `bytes:? NUM` / `bytes = NUM`.
fn byte_figures(text: &str) -> Vec<Shown> {
    let t = tokens(text);
    let mut v = Vec::new();
    for (i, x) in t.iter().enumerate() {
        match (x, t.get(i + 1), t.get(i + 2)) {
            (Tok::Num(n), Some(Tok::Word(u)), _) => {
                if let Some(s) = byte_unit(u) {
                    v.push(shown(n, s));
                }
            }
            (Tok::Word(w), Some(Tok::Num(n)), _) if w.eq_ignore_ascii_case("bytes") => v.push(shown(n, 1.0)),
            (Tok::Word(w), Some(Tok::Other(':' | '=')), Some(Tok::Num(n)))
                if w.eq_ignore_ascii_case("bytes") =>
            {
                v.push(shown(n, 1.0))
            }
            _ => {}
        }
    }
    v
}

fn mentions_time_or_rate(text: &str) -> bool {
    let l = text.to_lowercase();
    if l.contains("/s") || l.contains("elapsed") || l.contains("per second") {
        return true;
    }
    let t = tokens(&l);
    t.windows(2).any(|w| {
        matches!(w, [Tok::Num(_), Tok::Word(u)]
            if matches!(u.as_str(), "s" | "ms" | "sec" | "secs" | "second" | "seconds" | "min"))
    }) || t
        .windows(3)
        .any(|w| matches!(w, [Tok::Num(_), Tok::Other(':'), Tok::Num(_)]))
}

#[test]
fn summary_on_a_terminal_mentions_bytes_time_and_errors() {
    let tmp = scratch("out-sum");
    let src = tmp.path().join("src");
    let (total, _) = data_tree(&src, &[1, 1, 1, 1], 4, 25, 1000, 7);
    let run = run_with("copy", &copy_args(&[]), &src, &tmp.path().join("dst"), TTY);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let segs = segments(&run.stderr);
    let summary = printed_text(&segs);
    let mut problems = Vec::new();
    if !summary.to_lowercase().contains("error") {
        problems.push("the summary does not mention errors".to_string());
    }
    let figs = byte_figures(&summary);
    if !figs
        .iter()
        .any(|f| (f.v - total as f64).abs() <= f.slack + total as f64 * 0.01)
    {
        problems.push(format!(
            "the summary shows no byte figure equal to the {total} bytes copied (figures: {:?})",
            figs.iter().map(|f| f.v).collect::<Vec<_>>()
        ));
    }
    if !mentions_time_or_rate(&summary) {
        problems.push("the summary shows neither the elapsed time nor the rate".into());
    }
    assert!(
        problems.is_empty(),
        "copy on a terminal: {}\n--- summary (printed lines) ---\n{summary}\n{}",
        problems.join("\n"),
        run.describe()
    );
    assert!(
        run.stdout.is_empty(),
        "copy without -v wrote on stdout:\n{}",
        run.describe()
    );
}

#[test]
fn json_summary_is_one_object_and_no_human_summary() {
    let tmp = scratch("out-json");
    let src = tmp.path().join("src");
    data_tree(&src, &[1, 1], 4, 25, 1000, 8);
    let run = run_with(
        "copy",
        &copy_args(&["--json"]),
        &src,
        &tmp.path().join("dst"),
        TTY,
    );
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let values: Result<Vec<serde_json::Value>, _> = serde_json::Deserializer::from_slice(&run.stdout)
        .into_iter()
        .collect();
    match values {
        Ok(v) => assert!(
            v.len() == 1 && v[0].is_object(),
            "--json: stdout is not exactly one JSON object ({} values):\n{}",
            v.len(),
            run.describe()
        ),
        Err(e) => panic!("--json: stdout is not JSON ({e}):\n{}", run.describe()),
    }
    let printed = printed_text(&segments(&run.stderr));
    assert!(
        printed.trim().is_empty(),
        "--json on a terminal printed a human summary (or other lines) on stderr:\n{printed}\n{}",
        run.describe()
    );
}

// ---------------------------------------------------------------------------
// 6. JSON paths

/// Standard base64 (the URL-safe alphabet is accepted too); padding optional.
fn b64decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a') as u32 + 26,
            b'0'..=b'9' => (c - b'0') as u32 + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        })
    };
    let s = s.trim_end_matches('=').as_bytes();
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::new();
    for chunk in s.chunks(4) {
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= val(*c)? << (18 - 6 * i);
        }
        let n = chunk.len() - 1;
        for i in 0..n {
            out.push((acc >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

/// One NDJSON change with its paths as raw bytes: `path_b64`/`from_b64` when present, else
/// the bytes of the `path`/`from` strings.
#[derive(Debug)]
struct JChange {
    change: String,
    path: Vec<u8>,
    from: Option<Vec<u8>>,
    v: serde_json::Value,
}

fn json_field(v: &serde_json::Value, key: &str, line: &str) -> Result<Option<Vec<u8>>, String> {
    let b64 = format!("{key}_b64");
    match (v.get(key), v.get(&b64)) {
        (_, Some(b)) => {
            let s = b
                .as_str()
                .ok_or_else(|| format!("{b64} is not a string: {line}"))?;
            b64decode(s)
                .map(Some)
                .ok_or_else(|| format!("{b64} is not base64: {line}"))
        }
        (Some(p), None) => Ok(Some(
            p.as_str()
                .ok_or_else(|| format!("{key} is not a string: {line}"))?
                .as_bytes()
                .to_vec(),
        )),
        (None, None) => Ok(None),
    }
}

fn parse_changes(stdout: &[u8], what: &str) -> Vec<JChange> {
    let text = std::str::from_utf8(stdout).unwrap_or_else(|e| panic!("{what}: output not UTF-8: {e}"));
    let mut out = Vec::new();
    for l in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {l:?}"));
        let change = v
            .get("change")
            .and_then(|c| c.as_str())
            .unwrap_or_else(|| panic!("{what}: no \"change\": {l}"))
            .to_string();
        let path = json_field(&v, "path", l)
            .unwrap_or_else(|e| panic!("{what}: {e}"))
            .unwrap_or_else(|| panic!("{what}: no path: {l}"));
        let from = json_field(&v, "from", l).unwrap_or_else(|e| panic!("{what}: {e}"));
        out.push(JChange {
            change,
            path,
            from,
            v,
        });
    }
    out
}

#[test]
fn b64decode_self_test() {
    assert_eq!(b64decode("//4=").unwrap(), b"\xff\xfe");
    assert_eq!(b64decode("//4").unwrap(), b"\xff\xfe");
    assert_eq!(b64decode("aGVsbG8=").unwrap(), b"hello");
    assert_eq!(b64decode("").unwrap(), b"");
    assert!(b64decode("a").is_none());
}

/// (change, path, from) with raw paths.
type Key = (String, Vec<u8>, Option<Vec<u8>>);

fn key(c: &str, p: &[u8], f: Option<&[u8]>) -> Key {
    (c.to_string(), p.to_vec(), f.map(|f| f.to_vec()))
}

fn show_key(k: &Key) -> String {
    format!(
        "{} {}{}",
        k.0,
        escape(&k.1),
        k.2.as_ref()
            .map(|f| format!(" from {}", escape(f)))
            .unwrap_or_default()
    )
}

/// Check `diff --json` output: every line an object whose UTF-8 paths come back byte-exact in
/// `"path"`/`"from"` and whose non-UTF-8 paths come as base64 in `"path_b64"`/`"from_b64"`; the
/// changes are exactly `want`, besides lines `extra` allows.
fn json_path_problems(run: &Run, want: &BTreeSet<Key>, extra: impl Fn(&JChange) -> bool) -> Vec<String> {
    let what = &run.what;
    if run.code != Some(0) {
        return vec![run.describe()];
    }
    let mut problems = Vec::new();
    let got = parse_changes(&run.stdout, what);
    let mut gotkeys = BTreeSet::new();
    for c in &got {
        for (key, raw) in [("path", Some(&c.path)), ("from", c.from.as_ref())] {
            let Some(raw) = raw else { continue };
            match std::str::from_utf8(raw) {
                Ok(s) => {
                    if c.v.get(key).and_then(|x| x.as_str()) != Some(s) {
                        problems.push(format!(
                            "{what}: \"{key}\" is not the UTF-8 name {s:?} byte for byte: {}",
                            c.v
                        ));
                    }
                }
                Err(_) => {
                    if c.v.get(format!("{key}_b64")).is_none() {
                        problems.push(format!(
                            "{what}: the non-UTF-8 name {} has no \"{key}_b64\": {}",
                            escape(raw),
                            c.v
                        ));
                    }
                }
            }
        }
        let k = (c.change.clone(), c.path.clone(), c.from.clone());
        if !want.contains(&k) && extra(c) {
            continue;
        }
        gotkeys.insert(k);
    }
    for k in want.difference(&gotkeys) {
        problems.push(format!("{what}: missing {}", show_key(k)));
    }
    for k in gotkeys.difference(want) {
        problems.push(format!("{what}: unexpected {}", show_key(k)));
    }
    if !problems.is_empty() {
        problems.push(format!(
            "--- output ---\n{}",
            String::from_utf8_lossy(&run.stdout)
        ));
    }
    problems
}

#[test]
fn diff_json_paths_are_exact_strings_or_base64() {
    let tmp = scratch("out-jpath");
    let (old, new) = (tmp.path().join("old"), tmp.path().join("new"));
    std::fs::create_dir(&old).unwrap();
    std::fs::create_dir(&new).unwrap();
    let created: Vec<&[u8]> = vec![
        b"tab\tname",
        b"nl\nname",
        b"back\\slash",
        b"dq\"uote",
        "żółw".as_bytes(),
        b"\xff\xfe",
        b"d\xff",
        b"d\xff/\xc5\xbc\xc3\xb3\xc5\x82w",
    ];
    let deleted: Vec<&[u8]> = vec![b"gone\xfe\xff", b"gone\t\"\\\n"];
    for (root, names) in [(&new, &created), (&old, &deleted)] {
        for p in names.iter() {
            if p == b"d\xff" {
                std::fs::create_dir(bpath(root, p)).unwrap();
            } else {
                std::fs::write(bpath(root, p), p).unwrap();
            }
        }
        freeze_atimes(root);
    }
    let mut want: BTreeSet<Key> = created.iter().map(|p| key("created", p, None)).collect();
    want.extend(deleted.iter().map(|p| key("deleted", p, None)));
    let run = run_with("diff", &["--json"], &old, &new, ErrTo::Pipe);
    // The roots' mtimes differ.
    let problems = json_path_problems(&run, &want, |c| c.change == "attrs" && c.path == b".");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn diff_json_rename_paths_are_exact_strings_or_base64() {
    // Renames by inode identity need two snapshots of one tree: btrfs.
    let Some(fs) = mount_or_skip("btrfs", 256) else {
        return;
    };
    let vol = fs.path().join("vol");
    subvolume_create(&vol);
    let renames: Vec<(&[u8], &[u8])> = vec![
        (b"r-old\xff\xfe", "r-new-żółw".as_bytes()),
        (b"r-tab\there", b"r-new\xfe"),
        (b"rd\xfe", b"rd-\"q\\\n"),
    ];
    for (from, _) in &renames {
        if from.starts_with(b"rd") {
            std::fs::create_dir(bpath(&vol, from)).unwrap();
            std::fs::write(bpath(&vol, from).join("x"), b"inside").unwrap();
        } else {
            std::fs::write(bpath(&vol, from), from).unwrap();
        }
    }
    freeze_atimes(&vol);
    let (s1, s2) = (fs.path().join("s1"), fs.path().join("s2"));
    snapshot_ro(&vol, &s1);
    for (from, to) in &renames {
        std::fs::rename(bpath(&vol, from), bpath(&vol, to)).unwrap();
    }
    freeze_atimes(&vol);
    snapshot_ro(&vol, &s2);
    let want: BTreeSet<Key> = renames
        .iter()
        .map(|(from, to)| key("renamed", to, Some(from)))
        .collect();
    let news: BTreeSet<&[u8]> = renames.iter().map(|(_, to)| *to).collect();
    let run = run_with("diff", &["--json", "--renames", "always"], &s1, &s2, ErrTo::Pipe);
    // The root's times changed; "an M/A line for NEWPATH may follow" a rename.
    let problems = json_path_problems(&run, &want, |c| {
        (c.change == "attrs" && c.path == b".")
            || (matches!(c.change.as_str(), "attrs" | "modified") && news.contains(c.path.as_slice()))
    });
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------
// 7. atime-only changes

fn set_times(p: &Path, mtime: (i64, u32), atime: (i64, u32)) {
    let ts = |t: (i64, u32)| Timespec {
        tv_sec: t.0,
        tv_nsec: t.1.into(),
    };
    let t = Timestamps {
        last_access: ts(atime),
        last_modification: ts(mtime),
    };
    rustix::fs::utimensat(CWD, p, &t, AtFlags::SYMLINK_NOFOLLOW).expect("utimensat");
}

/// `d/`, `d/f`, `g`, `l -> g`, with fixed mtimes and (future) atimes, children first.
fn atime_tree(root: &Path, fut: i64) {
    std::fs::create_dir_all(root.join("d")).unwrap();
    std::fs::write(root.join("d/f"), b"data").unwrap();
    std::fs::write(root.join("g"), b"gg").unwrap();
    std::os::unix::fs::symlink("g", root.join("l")).unwrap();
    for p in ["d/f", "g", "l", "d", "."] {
        set_times(&root.join(p), (1_600_000_000, 5), (fut, 7));
    }
}

#[test]
fn diff_ignores_atime_only_changes_unless_asked() {
    let tmp = scratch("out-atime");
    let (old, new) = (tmp.path().join("old"), tmp.path().join("new"));
    let fut = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64 + 2 * 86_400;
    atime_tree(&old, fut);
    atime_tree(&new, fut);
    let changed = ["d", "d/f", "g", "l"];
    for p in changed {
        set_times(&new.join(p), (1_600_000_000, 5), (fut + 3600, 9));
    }
    // The oracle: the trees differ in atimes only.
    let (a, b): (Tree, Tree) = (scan_tree(&old, true).unwrap(), scan_tree(&new, true).unwrap());
    let no_atime = CompareOpts {
        atime: false,
        ..CompareOpts::default()
    };
    let d = common::oracle::compare_scanned(&a, &b, &no_atime);
    assert!(d.is_empty(), "test bug: trees differ beyond atimes: {d:?}");
    let d = common::oracle::compare_scanned(&a, &b, &CompareOpts::default());
    assert_eq!(d.len(), changed.len(), "test bug: atime differences: {d:?}");

    let run = run_with("diff", &[], &old, &new, ErrTo::Pipe);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert!(
        run.stdout.is_empty(),
        "diff lists atime-only changes by default:\n{}",
        run.describe()
    );
    let run = run_with("mirror", &["--dry-run"], &new, &old, ErrTo::Pipe);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert!(
        run.stdout.is_empty(),
        "mirror --dry-run lists atime-only changes:\n{}",
        run.describe()
    );

    let want: BTreeSet<String> = changed.iter().map(|p| line('A', p.as_bytes())).collect();
    let run = run_with("diff", &["--atimes"], &old, &new, ErrTo::Pipe);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let got = parse_text(&run.stdout)
        .unwrap_or_else(|e| panic!("diff --atimes output malformed: {e:?}\n{}", run.describe()));
    let problems = compare_lines(&got, &want, "diff --atimes");
    assert!(problems.is_empty(), "{}\n{}", problems.join("\n"), run.describe());
    let run = run_with("diff", &["--atimes", "--json"], &old, &new, ErrTo::Pipe);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let got = parse_changes(&run.stdout, &run.what);
    let mut paths = BTreeSet::new();
    for c in &got {
        assert_eq!(c.change, "attrs", "diff --atimes --json: {}", c.v);
        assert_eq!(
            c.v.get("attrs"),
            Some(&serde_json::json!(["atime"])),
            "diff --atimes --json: {}",
            c.v
        );
        paths.insert(String::from_utf8(c.path.clone()).unwrap());
    }
    let want: BTreeSet<String> = changed.iter().map(|p| p.to_string()).collect();
    assert_eq!(paths, want, "diff --atimes --json paths\n{}", run.describe());
}
