//! `ringsync bench` end to end: the set of rows a run must report (computed here from the
//! documented rules, not read back from the program), the sanity of every measured row, the
//! `best` summary, the SVG plot, the table layout, `--keep`, loop-mounted btrfs/xfs and tmpfs,
//! usage and set-up errors, and small-file combinations that must not hang.
//!
//! Runs are tiny (a few MiB per file, fractions of a second per combination) so the whole binary
//! stays well under a minute. Loop and tmpfs mounts need root: a missing prerequisite prints
//! `SKIPPED: <reason>` and returns, unless `CI` is set, in which case the test fails.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::mount::{mount_or_skip, LoopFs};
use common::*;
use serde_json::Value;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// No bench run in this file may take longer than this (a hang fails instead of blocking).
const RUN_LIMIT: Duration = Duration::from_secs(150);

const ALL_PATHS: [&str; 7] = [
    "uring-vec",
    "uring-fixed",
    "uring-direct",
    "psync",
    "cfr",
    "splice",
    "reflink",
];

// ---------------------------------------------------------------------------------------------
// Running the binary

struct BenchRun {
    out: Output,
    pid: u32,
    wall: Duration,
}

impl BenchRun {
    fn code(&self) -> Option<i32> {
        self.out.status.code()
    }
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    fn describe(&self) -> String {
        format!("pid {} wall {:.2?}\n{}", self.pid, self.wall, describe(&self.out))
    }
}

/// A `ringsync bench` started by this test, its output drained by two threads.
struct Running {
    child: std::process::Child,
    pid: u32,
    t0: Instant,
    what: String,
    ro: std::thread::JoinHandle<Vec<u8>>,
    re: std::thread::JoinHandle<Vec<u8>>,
}

/// Start `ringsync bench ARGS...` (optionally in `cwd`).
fn spawn_bench(args: &[OsString], cwd: Option<&Path>) -> Running {
    let mut cmd = Command::new(bin());
    cmd.arg("bench")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    default_signals(&mut cmd);
    let t0 = Instant::now();
    let mut child = cmd.spawn().expect("spawn ringsync bench");
    let pid = child.id();
    let mut so = child.stdout.take().expect("stdout pipe");
    let mut se = child.stderr.take().expect("stderr pipe");
    let ro = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let re = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    Running {
        child,
        pid,
        t0,
        what: format!("ringsync bench {args:?}"),
        ro,
        re,
    }
}

impl Running {
    /// Send `sig` to this run's process (and only to it).
    fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid as i32).expect("pid > 0");
        rustix::process::kill_process(pid, sig).expect("kill(2) our own child");
    }

    /// Wait for the exit; a run still going after [`RUN_LIMIT`] is killed and fails the test.
    fn finish(mut self) -> BenchRun {
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait for ringsync bench") {
                break s;
            }
            if self.t0.elapsed() > RUN_LIMIT {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let stdout = self.ro.join().unwrap_or_default();
                let stderr = self.re.join().unwrap_or_default();
                panic!(
                    "{} still running after {RUN_LIMIT:?} (killed, pid {}):\n\
                     --- stdout ---\n{}\n--- stderr ---\n{}",
                    self.what,
                    self.pid,
                    String::from_utf8_lossy(&stdout),
                    String::from_utf8_lossy(&stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let wall = self.t0.elapsed();
        let out = Output {
            status,
            stdout: self.ro.join().expect("stdout reader"),
            stderr: self.re.join().expect("stderr reader"),
        };
        BenchRun {
            out,
            pid: self.pid,
            wall,
        }
    }
}

/// `ringsync bench ARGS...` (optionally in `cwd`), killed and failed after [`RUN_LIMIT`].
fn bench(args: &[OsString], cwd: Option<&Path>) -> BenchRun {
    spawn_bench(args, cwd).finish()
}

/// `--dir DIR` followed by `extra`.
fn args_in(dir: &Path, extra: &[&str]) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec!["--dir".into(), dir.as_os_str().to_owned()];
    v.extend(extra.iter().map(OsString::from));
    v
}

/// Command-line words from one string ("--size 8M --json" -> ["--size", "8M", "--json"]).
fn words(line: &str) -> Vec<OsString> {
    line.split_whitespace().map(OsString::from).collect()
}

fn names_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.expect("dirent").file_name().to_string_lossy().into_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Independent probes of what the filesystem / kernel can do

/// Whether FICLONE works between two fresh files in `dir` (our own probe, not ringsync's).
fn ficlone_works(dir: &Path) -> bool {
    let a = dir.join(".probe-ficlone-a");
    let b = dir.join(".probe-ficlone-b");
    let ok = (|| -> std::io::Result<bool> {
        let mut fa = std::fs::File::create(&a)?;
        fa.write_all(&[0x5a; 4096])?;
        fa.sync_all()?;
        let fa = std::fs::File::open(&a)?;
        let fb = std::fs::File::create(&b)?;
        Ok(rustix::fs::ioctl_ficlone(&fb, &fa).is_ok())
    })()
    .unwrap_or(false);
    let _ = std::fs::remove_file(&a);
    let _ = std::fs::remove_file(&b);
    ok
}

/// Whether a file in `dir` can be opened with O_DIRECT and read 4 KiB aligned.
fn o_direct_works(dir: &Path) -> bool {
    use rustix::fs::{Mode, OFlags};
    let a = dir.join(".probe-odirect");
    let ok = (|| -> std::io::Result<bool> {
        let mut f = std::fs::File::create(&a)?;
        f.write_all(&[0xa5; 8192])?;
        f.sync_all()?;
        let fd = match rustix::fs::open(&a, OFlags::RDONLY | OFlags::DIRECT, Mode::empty()) {
            Ok(fd) => fd,
            Err(_) => return Ok(false),
        };
        // A 4 KiB-aligned buffer inside a bigger allocation.
        let mut buf = vec![0u8; 3 * 4096];
        let off = buf.as_ptr().align_offset(4096);
        let n = rustix::io::pread(&fd, &mut buf[off..off + 4096], 0);
        Ok(matches!(n, Ok(4096)))
    })()
    .unwrap_or(false);
    let _ = std::fs::remove_file(&a);
    ok
}

/// io_uring usable by this (root) process: `kernel.io_uring_disabled` is absent, 0 or 1.
fn uring_available() -> bool {
    match std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        Ok(s) => s.trim() != "2",
        Err(_) => true,
    }
}

/// Filesystem type of `dir` from statfs(2)'s magic number.
fn fs_magic_name(dir: &Path) -> &'static str {
    match rustix::fs::statfs(dir).map(|s| s.f_type as u64 as u32) {
        Ok(0xEF53) => "ext4",
        Ok(0x5846_5342) => "xfs",
        Ok(0x9123_683E) => "btrfs",
        Ok(0x0102_1994) => "tmpfs",
        _ => "other",
    }
}

/// What we expect of each path in `dir`: None if it must run, Some(reason) if it cannot.
fn expected_support(dir: &Path) -> BTreeMap<&'static str, Option<&'static str>> {
    let uring = uring_available();
    let direct = o_direct_works(dir);
    let clone = ficlone_works(dir);
    ALL_PATHS
        .iter()
        .map(|&p| {
            let why = match p {
                "uring-vec" | "uring-fixed" if !uring => Some("io_uring disabled"),
                "uring-direct" if !uring => Some("io_uring disabled"),
                "uring-direct" if !direct => Some("no O_DIRECT"),
                "reflink" if !clone => Some("no FICLONE"),
                _ => None,
            };
            (p, why)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The report

type Key = (String, String, Option<u64>, Option<u64>, u64);

#[derive(Debug, Clone)]
struct Row {
    path: String,
    mode: String,
    bs: Option<u64>,
    qd: Option<u64>,
    threads: u64,
    status: String,
    note: Option<String>,
    bytes: u64,
    seconds: f64,
    mb_s: f64,
    iops: f64,
    cpu_s_per_gb: f64,
    lat: Option<[f64; 4]>,
    buffer_bytes: Option<u64>,
    huge_page_bytes: Option<u64>,
}

impl Row {
    fn key(&self) -> Key {
        (
            self.path.clone(),
            self.mode.clone(),
            self.bs,
            self.qd,
            self.threads,
        )
    }

    fn from_json(v: &Value) -> Row {
        let s = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("row field {k} is not a string: {v}"))
                .to_string()
        };
        let opt_u = |k: &str| {
            let x = v.get(k).unwrap_or_else(|| panic!("row has no field {k}: {v}"));
            if x.is_null() {
                None
            } else {
                Some(
                    x.as_u64()
                        .unwrap_or_else(|| panic!("row field {k} not an integer: {v}")),
                )
            }
        };
        let f = |k: &str| {
            v.get(k)
                .and_then(Value::as_f64)
                .unwrap_or_else(|| panic!("row field {k} is not a number: {v}"))
        };
        let lat = match v.get("lat_us") {
            Some(Value::Object(m)) => {
                let g = |k: &str| {
                    m.get(k)
                        .and_then(Value::as_f64)
                        .unwrap_or_else(|| panic!("lat_us.{k} missing: {v}"))
                };
                Some([g("p50"), g("p99"), g("p999"), g("max")])
            }
            Some(Value::Null) | None => None,
            Some(other) => panic!("lat_us is neither null nor an object: {other}"),
        };
        Row {
            path: s("path"),
            mode: s("mode"),
            bs: opt_u("block_size"),
            qd: opt_u("qd"),
            threads: opt_u("threads").unwrap_or_else(|| panic!("threads is null: {v}")),
            status: s("status"),
            note: v.get("note").and_then(Value::as_str).map(str::to_string),
            bytes: opt_u("bytes").unwrap_or_else(|| panic!("bytes is null: {v}")),
            seconds: f("seconds"),
            mb_s: f("mb_s"),
            iops: f("iops"),
            cpu_s_per_gb: f("cpu_s_per_gb"),
            lat,
            buffer_bytes: opt_u("buffer_bytes"),
            huge_page_bytes: opt_u("huge_page_bytes"),
        }
    }
}

struct Report {
    doc: Value,
    rows: Vec<Row>,
    best: Vec<Row>,
}

fn parse_report(run: &BenchRun) -> Report {
    let doc: Value = serde_json::from_slice(&run.out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{}", run.describe()));
    let rows = doc
        .get("results")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("no results array:\n{}", run.describe()))
        .iter()
        .map(Row::from_json)
        .collect();
    let best = doc
        .get("best")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("no best array:\n{}", run.describe()))
        .iter()
        .map(Row::from_json)
        .collect();
    Report { doc, rows, best }
}

/// The rows a run must have, from the documented rules: cfr/splice/reflink only copy; only the
/// uring-* paths have a queue depth; reflink has no block size.
fn expected_keys(paths: &[&str], modes: &[&str], bss: &[u64], qds: &[u64], threads: &[u64]) -> BTreeSet<Key> {
    let mut out = BTreeSet::new();
    for &p in paths {
        let copy_only = matches!(p, "cfr" | "splice" | "reflink");
        let has_qd = p.starts_with("uring-");
        for &m in modes {
            if copy_only && m != "copy" {
                continue;
            }
            for &t in threads {
                if p == "reflink" {
                    out.insert((p.into(), m.into(), None, None, t));
                    continue;
                }
                for &bs in bss {
                    if has_qd {
                        for &q in qds {
                            out.insert((p.into(), m.into(), Some(bs), Some(q), t));
                        }
                    } else {
                        out.insert((p.into(), m.into(), Some(bs), None, t));
                    }
                }
            }
        }
    }
    out
}

/// Exactly the expected rows, each once.
fn check_row_set(rows: &[Row], want: &BTreeSet<Key>, ctx: &str) {
    let mut seen = BTreeSet::new();
    for r in rows {
        assert!(seen.insert(r.key()), "{ctx}: duplicate row {:?}", r.key());
    }
    let extra: Vec<_> = seen.difference(want).collect();
    let missing: Vec<_> = want.difference(&seen).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "{ctx}: row set differs from the documented rules\n  extra: {extra:?}\n  missing: {missing:?}"
    );
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1e-12)
}

/// Sanity of one "ok" row. `file_size` gives the bytes per operation we can predict for the
/// ring, psync and splice paths (`min(bs, size)` when the size is a multiple of bs or smaller)
/// and for reflink (the whole file).
/// The documented pool rule: buffers of 1 MiB or more take whole 2 MiB huge pages.
fn in_huge_pages(bytes: u64) -> u64 {
    if bytes >= MIB {
        bytes.div_ceil(2 * MIB) * 2 * MIB
    } else {
        bytes
    }
}

fn check_ok_row(r: &Row, runtime: f64, file_size: u64, ctx: &str) {
    let k = r.key();
    assert_eq!(r.status, "ok", "{ctx}: {k:?}");
    assert!(r.bytes > 0, "{ctx}: {k:?} ok with 0 bytes: {r:?}");
    assert!(r.seconds > 0.0, "{ctx}: {k:?} seconds not > 0: {r:?}");
    assert!(
        r.seconds >= runtime * 0.95 && r.seconds <= runtime + 20.0,
        "{ctx}: {k:?} measured {} s for --runtime {runtime}: {r:?}",
        r.seconds
    );
    let mb = r.bytes as f64 / r.seconds / 1e6;
    assert!(
        close(r.mb_s, mb, 0.01),
        "{ctx}: {k:?} mb_s {} but bytes/seconds/1e6 = {mb}",
        r.mb_s
    );
    assert!(r.iops > 0.0 && r.iops.is_finite(), "{ctx}: {k:?} iops {}", r.iops);
    assert!(
        r.cpu_s_per_gb.is_finite() && r.cpu_s_per_gb >= 0.0,
        "{ctx}: {k:?} cpu_s_per_gb {}",
        r.cpu_s_per_gb
    );
    let [p50, p99, p999, max] = r
        .lat
        .unwrap_or_else(|| panic!("{ctx}: {k:?} ok row without latencies"));
    assert!(
        p50 > 0.0 && p50 <= p99 && p99 <= p999 && p999 <= max && max.is_finite(),
        "{ctx}: {k:?} latency percentiles out of order: p50 {p50} p99 {p99} p99.9 {p999} max {max}"
    );
    // Buffer pools, per the documented rule: the ring and psync paths have one per thread of
    // qd (psync: 1) units of bs, 4 KiB aligned; 1 MiB or more is rounded up to whole 2 MiB huge
    // pages. The other paths move data without buffers of ours.
    let pool = match (r.path.as_str(), r.bs) {
        ("uring-vec" | "uring-fixed" | "uring-direct", Some(bs)) => {
            Some(bs.div_ceil(4096) * 4096 * r.qd.unwrap_or(1))
        }
        ("psync", Some(bs)) => Some(bs.div_ceil(4096) * 4096),
        _ => None,
    }
    .map(in_huge_pages);
    assert_eq!(
        r.buffer_bytes,
        pool.map(|b| b * r.threads),
        "{ctx}: {k:?} buffer_bytes: {r:?}"
    );
    match (r.buffer_bytes, r.huge_page_bytes) {
        (Some(b), Some(h)) => assert!(h <= b, "{ctx}: {k:?} more huge-page bytes than buffers: {r:?}"),
        (None, None) => {}
        _ => panic!("{ctx}: {k:?} buffer_bytes and huge_page_bytes must both be set or both null: {r:?}"),
    }
    // Bytes per operation, where the loop's op size is fixed.
    let per_op = match (r.path.as_str(), r.bs) {
        ("reflink", _) => Some(file_size),
        ("cfr", _) => None, // copy_file_range may return short counts
        (_, Some(bs)) if file_size % bs == 0 || file_size < bs => Some(bs.min(file_size)),
        _ => None,
    };
    if let Some(per_op) = per_op {
        let got = r.mb_s * 1e6 / r.iops;
        assert!(
            close(got, per_op as f64, 0.01),
            "{ctx}: {k:?} moves {got:.0} bytes per operation (mb_s/iops), expected {per_op}: {r:?}"
        );
    }
}

/// `best`: one entry per requested mode that has a candidate, each the fastest ok row of that
/// mode among paths that really move data (never reflink; not cfr where it can share extents).
fn check_best(rep: &Report, modes: &[&str], reflink_fs: bool, ctx: &str) {
    for b in &rep.best {
        assert_ne!(b.path, "reflink", "{ctx}: best names reflink: {b:?}");
        assert_eq!(b.status, "ok", "{ctx}: best names a non-ok row: {b:?}");
        if reflink_fs {
            assert_ne!(
                b.path, "cfr",
                "{ctx}: best names cfr on a reflink filesystem: {b:?}"
            );
        }
    }
    let mut best_modes = BTreeSet::new();
    for b in &rep.best {
        assert!(
            best_modes.insert(b.mode.clone()),
            "{ctx}: two best entries for mode {}",
            b.mode
        );
    }
    for &m in modes {
        let top = rep
            .rows
            .iter()
            .filter(|r| r.mode == m && r.status == "ok" && r.path != "reflink")
            .filter(|r| !(reflink_fs && r.path == "cfr"))
            .max_by(|a, b| a.mb_s.total_cmp(&b.mb_s));
        let got = rep.best.iter().find(|b| b.mode == m);
        match (top, got) {
            (None, None) => {}
            (Some(t), Some(g)) => {
                assert!(
                    g.mb_s == t.mb_s,
                    "{ctx}: best {m} is {:?} at {} MB/s, but {:?} did {} MB/s",
                    g.key(),
                    g.mb_s,
                    t.key(),
                    t.mb_s
                );
                let same = rep.rows.iter().find(|r| r.key() == g.key());
                assert!(
                    same.is_some_and(|r| r.mb_s == g.mb_s && r.bytes == g.bytes),
                    "{ctx}: best {m} {:?} is not one of the result rows",
                    g.key()
                );
            }
            (t, g) => panic!(
                "{ctx}: best for {m}: expected {:?}, got {:?}",
                t.map(Row::key),
                g.map(Row::key)
            ),
        }
    }
    for b in &rep.best {
        assert!(
            modes.contains(&b.mode.as_str()),
            "{ctx}: best for unrequested mode {}",
            b.mode
        );
    }
}

/// Every row: status as expected from our own probes ("unsupported" rows carry a note), ok
/// rows sane.
fn check_rows_against_support(
    rep: &Report,
    support: &BTreeMap<&'static str, Option<&'static str>>,
    runtime: f64,
    file_size: u64,
    ctx: &str,
) {
    for r in &rep.rows {
        let why = support[r.path.as_str()];
        match why {
            None => check_ok_row(r, runtime, file_size, ctx),
            Some(why) => {
                assert_eq!(
                    r.status,
                    "unsupported",
                    "{ctx}: {:?} should be unsupported here ({why}): {r:?}",
                    r.key()
                );
                assert!(
                    r.note.as_deref().is_some_and(|n| !n.trim().is_empty()),
                    "{ctx}: unsupported row {:?} without a note",
                    r.key()
                );
                assert_eq!(r.bytes, 0, "{ctx}: unsupported row {:?} moved bytes", r.key());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// SVG

/// A small well-formedness check: one root element, balanced tags, quoted attributes without
/// raw `<`, and only the XML entities or character references after `&`.
fn check_svg(svg: &str) -> Result<(), String> {
    let t = svg.trim();
    if !(t.starts_with("<svg") || t.starts_with("<?xml")) {
        return Err(format!(
            "does not start with <svg or <?xml: {:?}",
            &t[..t.len().min(80)]
        ));
    }
    if !t.ends_with("</svg>") {
        return Err(format!(
            "does not end with </svg>: {:?}",
            &t[t.len().saturating_sub(80)..]
        ));
    }
    for (i, _) in t.match_indices('&') {
        let rest = &t[i + 1..];
        let semi = rest.find(';').filter(|&n| n <= 10);
        let ok = semi.is_some_and(|n| {
            let e = &rest[..n];
            matches!(e, "amp" | "lt" | "gt" | "quot" | "apos")
                || (e.len() > 1 && e.starts_with('#') && e[1..].bytes().all(|b| b.is_ascii_digit()))
                || (e.len() > 2 && e.starts_with("#x") && e[2..].bytes().all(|b| b.is_ascii_hexdigit()))
        });
        if !ok {
            return Err(format!("raw '&' at byte {i}: {:?}", &t[i..t.len().min(i + 30)]));
        }
    }
    let b = t.as_bytes();
    let mut stack: Vec<String> = Vec::new();
    let mut roots = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'<' {
            if b[i] == b'>' && stack.is_empty() {
                return Err(format!("stray '>' outside the root at byte {i}"));
            }
            i += 1;
            continue;
        }
        if t[i..].starts_with("<?") {
            let end = t[i..].find("?>").ok_or("unterminated <?")?;
            i += end + 2;
            continue;
        }
        if t[i..].starts_with("<!--") {
            let end = t[i..].find("-->").ok_or("unterminated comment")?;
            i += end + 3;
            continue;
        }
        // Scan the tag up to its '>' outside quotes.
        let mut j = i + 1;
        let mut quote: Option<u8> = None;
        loop {
            if j >= b.len() {
                return Err(format!("unterminated tag at byte {i}"));
            }
            match (quote, b[j]) {
                (None, b'"' | b'\'') => quote = Some(b[j]),
                (Some(q), c) if c == q => quote = None,
                (Some(_), b'<') => return Err(format!("raw '<' in an attribute at byte {j}")),
                (None, b'<') => return Err(format!("'<' inside the tag starting at byte {i}")),
                (None, b'>') => break,
                _ => {}
            }
            j += 1;
        }
        let tag = &t[i + 1..j];
        if let Some(name) = tag.strip_prefix('/') {
            let name = name.trim();
            match stack.pop() {
                Some(open) if open == name => {}
                other => return Err(format!("</{name}> at byte {i} closes {other:?}")),
            }
        } else {
            let name: String = tag
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != '/')
                .collect();
            if name.is_empty() {
                return Err(format!("empty tag name at byte {i}"));
            }
            if stack.is_empty() {
                roots += 1;
                if roots > 1 {
                    return Err(format!("second root element <{name}> at byte {i}"));
                }
                if name != "svg" {
                    return Err(format!("root element is <{name}>, not <svg>"));
                }
            }
            if !tag.ends_with('/') {
                stack.push(name);
            }
        }
        i = j + 1;
    }
    if !stack.is_empty() {
        return Err(format!("unclosed elements at the end: {stack:?}"));
    }
    if roots != 1 {
        return Err("no root element".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// tmpfs mounts

/// A tmpfs mounted with `opts` in a scratch directory (unmounted on drop), or skip (fail
/// under CI).
fn tmpfs_or_skip(opts: &str) -> Option<LoopFs> {
    match LoopFs::tmpfs(opts) {
        Ok(t) => Some(t),
        Err(why) => {
            skip_or_fail(&why);
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. The full sweep, JSON + plot

#[test]
fn a_full_sweep_json_rows_best_plot_and_cleanup() {
    let tmp = scratch("bench-full");
    // Characters that must be escaped in the SVG title, which names this directory.
    let d = tmp.path().join("a&b<c>");
    std::fs::create_dir(&d).expect("mkdir D");
    let plot = d.join("p.svg");
    let support = expected_support(&d);
    let fs = fs_magic_name(&d);
    let mut args = args_in(
        &d,
        &[
            "--size",
            "8M",
            "--runtime",
            "0.3",
            "--warmup",
            "0.05",
            "--json",
            "--modes",
            "read,write,copy",
            "--block-sizes",
            "64K,1M",
            "--qd",
            "1,4",
            "--threads",
            "1,2",
            "--plot",
        ],
    );
    args.push(plot.as_os_str().to_owned());
    let run = bench(&args, None);
    eprintln!("full sweep: {:.1?}", run.wall);
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    let rep = parse_report(&run);
    let ctx = "full sweep";

    // Report header.
    assert_eq!(rep.doc["version"], 1, "{ctx}: version");
    assert_eq!(rep.doc["file_size"].as_u64(), Some(8 * MIB), "{ctx}: file_size");
    assert!(
        close(rep.doc["runtime_s"].as_f64().unwrap_or(0.0), 0.3, 1e-6),
        "{ctx}: runtime_s"
    );
    assert!(
        close(rep.doc["warmup_s"].as_f64().unwrap_or(0.0), 0.05, 1e-6),
        "{ctx}: warmup_s"
    );
    if fs != "other" {
        assert_eq!(rep.doc["filesystem"].as_str(), Some(fs), "{ctx}: filesystem");
    }
    let want_dir = d.join(format!("ringsync-bench.{}", run.pid));
    assert_eq!(
        rep.doc["dir"].as_str().map(PathBuf::from),
        Some(want_dir.clone()),
        "{ctx}: the test directory should be ringsync-bench.PID under --dir"
    );

    // Exactly the rows the rules give.
    let want = expected_keys(
        &ALL_PATHS,
        &["read", "write", "copy"],
        &[64 * KIB, MIB],
        &[1, 4],
        &[1, 2],
    );
    assert_eq!(want.len(), 94, "self-check of expected_keys");
    check_row_set(&rep.rows, &want, ctx);
    check_rows_against_support(&rep, &support, 0.3, 8 * MIB, ctx);
    if fs == "ext4" {
        for r in &rep.rows {
            if r.path == "reflink" {
                assert_eq!(r.status, "unsupported", "{ctx}: reflink on ext4: {r:?}");
            } else {
                assert_eq!(r.status, "ok", "{ctx}: {:?} on ext4: {r:?}", r.key());
            }
        }
    } else {
        eprintln!("NOTE: scratch is not ext4 ({fs}); statuses checked against our own probes");
    }
    check_best(
        &rep,
        &["read", "write", "copy"],
        support["reflink"].is_none(),
        ctx,
    );
    assert_eq!(rep.best.len(), 3, "{ctx}: one best per mode: {:?}", rep.best);

    // The plot.
    let svg =
        std::fs::read_to_string(&plot).unwrap_or_else(|e| panic!("{ctx}: read {}: {e}", plot.display()));
    assert!(svg.len() > 2000, "{ctx}: SVG is only {} bytes", svg.len());
    if let Err(e) = check_svg(&svg) {
        panic!("{ctx}: SVG is not well-formed: {e}");
    }
    assert!(
        svg.contains("a&amp;b&lt;c&gt;"),
        "{ctx}: SVG title should name the directory, XML-escaped"
    );
    let ok_paths: BTreeSet<&str> = rep
        .rows
        .iter()
        .filter(|r| r.status == "ok")
        .map(|r| r.path.as_str())
        .collect();
    for p in ok_paths {
        assert!(svg.contains(p), "{ctx}: SVG never mentions measured path {p}");
    }

    // Cleaned up: only the plot is left in D.
    assert!(!want_dir.exists(), "{ctx}: {} left behind", want_dir.display());
    assert_eq!(
        names_in(&d),
        BTreeSet::from(["p.svg".to_string()]),
        "{ctx}: D should contain only p.svg"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. --keep (and the default --dir: the current directory)

#[test]
fn keep_leaves_test_files_of_exact_size_in_cwd() {
    let tmp = scratch("bench-keep");
    let size = 8 * MIB;
    let args = words(
        "--keep --size 8M --paths psync --modes copy --block-sizes 1M --threads 1,2 \
         --runtime 0.1 --warmup 0 --json",
    );
    let run = bench(&args, Some(tmp.path()));
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    let rep = parse_report(&run);
    let want = expected_keys(&["psync"], &["copy"], &[MIB], &[], &[1, 2]);
    check_row_set(&rep.rows, &want, "--keep");
    for r in &rep.rows {
        check_ok_row(r, 0.1, size, "--keep");
    }
    let dir_name = format!("ringsync-bench.{}", run.pid);
    assert_eq!(
        names_in(tmp.path()),
        BTreeSet::from([dir_name.clone()]),
        "--keep without --dir: exactly the test directory in the current directory"
    );
    let dir = tmp.path().join(&dir_name);
    let names = names_in(&dir);
    for f in ["src.0", "dst.0", "src.1", "dst.1"] {
        assert!(
            names.contains(f),
            "--keep: {f} missing in {}: {names:?}",
            dir.display()
        );
        let len = std::fs::metadata(dir.join(f)).expect("stat").len();
        assert_eq!(len, size, "--keep: {f} is {len} bytes, --size is {size}");
    }
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("src.") || n.starts_with("dst.")),
        "--keep: unexpected files {names:?}"
    );
    // Distinct, non-trivial source data; the first block of each target was really copied.
    let head = |f: &str| {
        let mut v = vec![0u8; MIB as usize];
        std::fs::File::open(dir.join(f))
            .and_then(|mut h| h.read_exact(&mut v))
            .expect("read head");
        v
    };
    let (s0, s1) = (head("src.0"), head("src.1"));
    assert!(s0.iter().any(|&b| b != 0), "src.0 is all zeros");
    assert_ne!(s0, s1, "src.0 and src.1 hold the same data");
    assert_eq!(head("dst.0"), s0, "copy mode: dst.0's first block is not src.0's");
    assert_eq!(head("dst.1"), s1, "copy mode: dst.1's first block is not src.1's");
}

/// Write mode must not write the same data over and over: storage that deduplicates (or a host
/// that recognises repeated blocks) would report a speed no real copy reaches. After many passes
/// by every write path and two threads, no 512-byte sector may appear twice in the targets.
#[test]
fn write_mode_never_repeats_a_sector() {
    let tmp = scratch("bench-write-unique");
    let mut paths = vec!["psync"];
    if uring_available() {
        paths.extend(["uring-vec", "uring-fixed"]);
    } else {
        note("SKIPPED (partly): io_uring is disabled here; checking psync only");
    }
    let paths = paths.join(",");
    let args = words(&format!(
        "--keep --size 2M --paths {paths} --modes write --block-sizes 64K --qd 1,4 \
         --threads 1,2 --runtime 0.15 --warmup 0 --json"
    ));
    let run = bench(&args, Some(tmp.path()));
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    let rep = parse_report(&run);
    let passes: f64 = rep.rows.iter().map(|r| r.bytes as f64 / (2 * MIB) as f64).sum();
    assert!(
        passes >= 4.0,
        "too few passes over the files to tell ({passes:.1})"
    );
    let dir = tmp.path().join(format!("ringsync-bench.{}", run.pid));
    let data: Vec<Vec<u8>> = ["dst.0", "dst.1"]
        .iter()
        .map(|f| std::fs::read(dir.join(f)).expect("read target"))
        .collect();
    let mut seen = std::collections::HashMap::new();
    for (f, d) in data.iter().enumerate() {
        assert_eq!(d.len() as u64, 2 * MIB, "dst.{f} size");
        for (k, sector) in d.chunks(512).enumerate() {
            if let Some((f0, k0)) = seen.insert(sector, (f, k)) {
                panic!("dst.{f} sector {k} holds the same bytes as dst.{f0} sector {k0}");
            }
        }
    }
}

/// `--files DIR`: the files stay in DIR itself and a later run uses them as they are (same
/// inodes, same data); a file of another size is laid out again; anything but a regular file
/// there is refused without being followed; `--files` and `--dir` together are a usage error.
#[test]
fn files_dir_is_reused_and_never_followed() {
    use std::os::unix::fs::MetadataExt;
    let tmp = scratch("bench-files");
    let dir = tmp.path().join("t");
    let ino = |f: &str| std::fs::symlink_metadata(dir.join(f)).map(|m| m.ino()).ok();
    let cmd = |extra: &str| {
        let mut a = vec![OsString::from("--files"), dir.clone().into_os_string()];
        a.extend(words(&format!(
            "--size 2M --paths psync --modes read --block-sizes 1M --runtime 0.05 --warmup 0 --json {extra}"
        )));
        a
    };
    let first = bench(&cmd(""), None);
    assert_eq!(first.code(), Some(0), "{}", first.describe());
    assert_eq!(parse_report(&first).doc["reused_files"], 0);
    let (src, dst) = (
        ino("src.0").expect("src.0 kept"),
        ino("dst.0").expect("dst.0 kept"),
    );
    let data = std::fs::read(dir.join("src.0")).expect("read src.0");

    let second = bench(&cmd(""), None);
    assert_eq!(second.code(), Some(0), "{}", second.describe());
    assert_eq!(
        parse_report(&second).doc["reused_files"],
        2,
        "{}",
        second.describe()
    );
    assert_eq!(
        (ino("src.0"), ino("dst.0")),
        (Some(src), Some(dst)),
        "files replaced"
    );
    assert!(
        std::fs::read(dir.join("src.0")).expect("read") == data,
        "src.0 changed"
    );

    // A short src.0 is laid out again; a symlink named dst.1 is refused, its target untouched.
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("src.0"))
        .and_then(|f| f.set_len(4096))
        .expect("shorten src.0");
    let victim = tmp.path().join("victim");
    std::fs::write(&victim, b"keep me").expect("victim");
    std::os::unix::fs::symlink(&victim, dir.join("dst.1")).expect("symlink");
    let third = bench(&cmd("--threads 2"), None);
    assert_eq!(third.code(), Some(1), "{}", third.describe());
    assert!(
        third.stderr().contains("dst.1") && third.stderr().contains("not a regular file"),
        "error must name dst.1: {}",
        third.describe()
    );
    assert_eq!(std::fs::read(&victim).expect("victim"), b"keep me");
    std::fs::remove_file(dir.join("dst.1")).expect("rm symlink");
    let fourth = bench(&cmd("--threads 2"), None);
    assert_eq!(fourth.code(), Some(0), "{}", fourth.describe());
    assert_eq!(
        parse_report(&fourth).doc["reused_files"],
        1,
        "only dst.0 was in place"
    );
    assert_eq!(
        std::fs::metadata(dir.join("src.0")).expect("src.0").len(),
        2 * MIB
    );

    let mut both = cmd("");
    both.extend(words("--dir /tmp"));
    let clash = bench(&both, None);
    assert_eq!(clash.code(), Some(2), "{}", clash.describe());
    assert!(clash.stderr().contains("--files"), "{}", clash.describe());
}

// ---------------------------------------------------------------------------------------------
// 3. The table

/// Whitespace-separated tokens with their byte spans.
fn tokens(line: &str) -> Vec<(usize, usize, &str)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in line.char_indices() {
        match (c.is_whitespace(), start) {
            (false, None) => start = Some(i),
            (true, Some(s)) => {
                out.push((s, i, &line[s..i]));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, line.len(), &line[s..]));
    }
    out
}

#[test]
fn table_output_is_aligned_and_ends_with_fastest_copy_path() {
    let tmp = scratch("bench-table");
    let d = tmp.path();
    let support = expected_support(d);
    let run = bench(
        &args_in(
            d,
            &[
                "--size",
                "4M",
                "--modes",
                "copy",
                "--block-sizes",
                "64K,1M",
                "--qd",
                "2",
                "--runtime",
                "0.1",
                "--warmup",
                "0",
            ],
        ),
        None,
    );
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    let stdout = run.stdout();
    let lines: Vec<&str> = stdout.lines().collect();
    let cols = [
        "path", "mode", "bs", "qd", "thr", "MB/s", "IOPS", "CPU s/GB", "p50 us", "p99 us", "p99.9 us",
        "max us",
    ];
    let hi = lines
        .iter()
        .position(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            t.first() == Some(&"path") && t.get(1) == Some(&"mode") && l.contains("MB/s")
        })
        .unwrap_or_else(|| panic!("no header line:\n{stdout}"));
    let header = lines[hi];
    // Header column spans, found in order.
    let mut spans = Vec::new();
    let mut from = 0;
    for c in cols {
        let at = header[from..]
            .find(c)
            .map(|p| p + from)
            .unwrap_or_else(|| panic!("header lacks {c:?}: {header:?}"));
        spans.push((at, at + c.len()));
        from = at + c.len();
    }
    assert!(
        header[from..].trim() == "note",
        "header should end with 'note': {header:?}"
    );

    let want = expected_keys(&ALL_PATHS, &["copy"], &[64 * KIB, MIB], &[2], &[1]);
    let body = &lines[hi + 1..];
    assert!(body.len() >= 2, "too little after the header:\n{stdout}");
    let last = *body.last().expect("last line");
    assert!(
        last.starts_with("fastest copy path on this disk:"),
        "last line: {last:?}\n{stdout}"
    );
    // Before it, the huge-page line: the 1M rows of the four paths with buffer pools (bs x qd
    // = 2 MiB) qualify, the 64K ones (128 KiB) do not.
    let buffers = body[body.len() - 2];
    let counts: Vec<usize> = buffers
        .split_once("(THP):")
        .map_or("", |(_, tail)| tail)
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(
        buffers.starts_with("buffers of 1.0 MiB or more per thread")
            && counts.len() == 2
            && counts[0] <= counts[1]
            && (1..=4).contains(&counts[1]),
        "huge-page line: {buffers:?}\n{stdout}"
    );
    let rows = &body[..body.len() - 2];
    assert_eq!(rows.len(), want.len(), "one line per row expected:\n{stdout}");

    let short = |n: u64| {
        if n >= MIB {
            format!("{}M", n / MIB)
        } else {
            format!("{}K", n / KIB)
        }
    };
    let mut seen = BTreeSet::new();
    let mut best_mb = 0i64;
    for line in rows {
        let t = tokens(line);
        assert!(t.len() >= 12, "row with fewer than 12 cells: {line:?}");
        for (i, (&(hs, he), &(s, e, cell))) in spans.iter().zip(t.iter()).enumerate() {
            assert!(
                s == hs || e == he,
                "column {:?} misaligned: cell {cell:?} at {s}..{e}, header at {hs}..{he}\n{header}\n{line}",
                cols[i]
            );
        }
        let (path, mode, bs, qd, thr) = (t[0].2, t[1].2, t[2].2, t[3].2, t[4].2);
        let bs_v = [64 * KIB, MIB].into_iter().find(|&b| short(b) == bs);
        let key: Key = (
            path.into(),
            mode.into(),
            bs_v,
            qd.parse().ok(),
            thr.parse().expect("threads cell"),
        );
        assert!(bs_v.is_some() || bs == "-", "bs cell {bs:?}: {line:?}");
        assert!(seen.insert(key.clone()), "duplicate table row {key:?}");
        let note = line[t[11].1..].trim();
        match support[path] {
            None => {
                let mb: f64 = t[5]
                    .2
                    .parse()
                    .unwrap_or_else(|_| panic!("MB/s cell not a number: {line:?}"));
                assert!(mb >= 0.0, "{line:?}");
                for c in &t[5..12] {
                    assert!(
                        c.2.parse::<f64>().is_ok(),
                        "ok row with non-number {:?}: {line:?}",
                        c.2
                    );
                }
                if path != "reflink" {
                    best_mb = best_mb.max(mb as i64);
                }
            }
            Some(_) => {
                for c in &t[5..12] {
                    assert_eq!(c.2, "-", "unsupported row should show '-' cells: {line:?}");
                }
                assert!(
                    note.starts_with("unsupported here: ") && note.len() > "unsupported here: ".len(),
                    "unsupported row note: {line:?}"
                );
            }
        }
        if path == "reflink" && fs_magic_name(d) == "ext4" {
            assert!(line.contains("unsupported here"), "ext4 reflink line: {line:?}");
        }
    }
    assert_eq!(seen, want, "table rows differ from the documented rules");
    // The headline names the fastest copy row (MB/s as printed, rounded the same way).
    let headline_mb: i64 = last
        .trim_end()
        .strip_suffix("MB/s")
        .and_then(|s| s.trim_end().rsplit(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("headline does not end with 'N MB/s': {last:?}"));
    assert_eq!(
        headline_mb, best_mb,
        "headline is not the fastest copy row:\n{stdout}"
    );
    assert_eq!(names_in(d), BTreeSet::new(), "table run left files behind");
}

// ---------------------------------------------------------------------------------------------
// 4. Other filesystems

/// A small copy-mode sweep over every path on `dir`, checked against our own probes.
fn sweep_on(dir: &Path, expect_fs: &str, ctx: &str) -> Report {
    let support = expected_support(dir);
    let run = bench(
        &args_in(
            dir,
            &[
                "--size",
                "4M",
                "--modes",
                "read,write,copy",
                "--block-sizes",
                "64K,1M",
                "--qd",
                "2",
                "--runtime",
                "0.1",
                "--warmup",
                "0.02",
                "--json",
            ],
        ),
        None,
    );
    eprintln!("{ctx}: {:.1?}; our probes: {support:?}", run.wall);
    assert_eq!(run.code(), Some(0), "{ctx}: {}", run.describe());
    let rep = parse_report(&run);
    assert_eq!(
        rep.doc["filesystem"].as_str(),
        Some(expect_fs),
        "{ctx}: filesystem"
    );
    let want = expected_keys(
        &ALL_PATHS,
        &["read", "write", "copy"],
        &[64 * KIB, MIB],
        &[2],
        &[1],
    );
    check_row_set(&rep.rows, &want, ctx);
    check_rows_against_support(&rep, &support, 0.1, 4 * MIB, ctx);
    check_best(
        &rep,
        &["read", "write", "copy"],
        support["reflink"].is_none(),
        ctx,
    );
    for r in &rep.rows {
        eprintln!(
            "{ctx}: {:<12} {:<5} {:>8?} {:>4?} {:<11} {:>8.0} MB/s {}",
            r.path,
            r.mode,
            r.bs,
            r.qd,
            r.status,
            r.mb_s,
            r.note.as_deref().unwrap_or("")
        );
    }
    assert_eq!(
        names_in(dir)
            .iter()
            .filter(|n| n.starts_with("ringsync-bench"))
            .count(),
        0,
        "{ctx}: left behind"
    );
    rep
}

fn reflink_fs(fstype: &'static str, size_mib: u64) {
    let Some(fs) = mount_or_skip(fstype, size_mib) else {
        return;
    };
    let ctx = format!("{fstype} loop");
    assert!(
        ficlone_works(fs.path()),
        "{ctx}: our own FICLONE probe fails on a fresh {fstype}"
    );
    let rep = sweep_on(fs.path(), fstype, &ctx);
    let refl: Vec<&Row> = rep.rows.iter().filter(|r| r.path == "reflink").collect();
    assert_eq!(refl.len(), 1, "{ctx}");
    assert_eq!(
        refl[0].status, "ok",
        "{ctx}: reflink should run on {fstype}: {:?}",
        refl[0]
    );
    assert!(
        refl[0].bytes % (4 * MIB) == 0,
        "{ctx}: reflink counts whole files: {} bytes",
        refl[0].bytes
    );
    assert!(
        refl[0].note.as_deref().is_some_and(|n| !n.is_empty()),
        "{ctx}: reflink row should say it copies no data"
    );
    for r in &rep.rows {
        assert_eq!(r.status, "ok", "{ctx}: every path should run on {fstype}: {r:?}");
        if r.path == "cfr" {
            assert!(
                r.note.as_deref().is_some_and(|n| n.contains("share")),
                "{ctx}: cfr may clone on {fstype}; its row should say so (README): {r:?}"
            );
        }
    }
}

#[test]
fn btrfs_reflink_ok_and_every_path_runs() {
    reflink_fs("btrfs", 256);
}

#[test]
fn xfs_reflink_ok_and_every_path_runs() {
    reflink_fs("xfs", 512);
}

#[test]
fn tmpfs_support_matches_our_probes() {
    let Some(t) = tmpfs_or_skip("size=64m") else {
        return;
    };
    let ctx = "tmpfs";
    eprintln!(
        "tmpfs: O_DIRECT {}, FICLONE {}",
        if o_direct_works(t.path()) {
            "works"
        } else {
            "refused"
        },
        if ficlone_works(t.path()) {
            "works"
        } else {
            "refused"
        }
    );
    let rep = sweep_on(t.path(), "tmpfs", ctx);
    for r in &rep.rows {
        if r.status != "ok" {
            assert_eq!(r.status, "unsupported", "{ctx}: {r:?}");
            assert!(
                r.note.as_deref().is_some_and(|n| !n.trim().is_empty()),
                "{ctx}: {r:?}"
            );
        }
        if matches!(r.path.as_str(), "psync" | "cfr" | "splice") {
            assert_eq!(r.status, "ok", "{ctx}: {} must work on tmpfs: {r:?}", r.path);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Errors

#[test]
fn usage_errors_exit_2_naming_the_option() {
    let tmp = scratch("bench-usage");
    let d = tmp.path();
    let cases: [(&[&str], &str); 9] = [
        (&["--size", "0"], "--size"),
        (&["--size", "5000"], "--size"),
        (&["--qd", "0"], "--qd"),
        (&["--runtime", "0"], "--runtime"),
        (&["--runtime=-1"], "--runtime"),
        (&["--paths", "bogus"], "--paths"),
        (&["--modes", "sideways"], "--modes"),
        (&["--block-sizes", "0"], "--block-sizes"),
        (&["--threads", "0"], "--threads"),
    ];
    for (extra, opt) in cases {
        let mut a: Vec<&str> = vec!["--size", "4M", "--runtime", "0.05"];
        a.extend_from_slice(extra);
        let run = bench(&args_in(d, &a), None);
        assert_eq!(run.code(), Some(2), "{extra:?}: {}", run.describe());
        assert!(
            run.stderr().contains(opt),
            "{extra:?}: stderr should name {opt}: {}",
            run.describe()
        );
        assert!(
            run.wall < Duration::from_secs(10),
            "{extra:?}: usage error took {:?}",
            run.wall
        );
    }
    assert_eq!(
        names_in(d),
        BTreeSet::new(),
        "usage errors created files in --dir"
    );
}

#[test]
fn setup_errors_exit_1_naming_the_path() {
    let tmp = scratch("bench-setup");
    let common_args = ["--size", "4M", "--runtime", "0.05", "--paths", "psync"];

    let missing = tmp.path().join("does-not-exist");
    let run = bench(&args_in(&missing, &common_args), None);
    assert_eq!(run.code(), Some(1), "missing --dir: {}", run.describe());
    assert!(
        run.stderr().contains(&*missing.to_string_lossy()),
        "missing --dir: stderr should name it: {}",
        run.describe()
    );
    assert!(!missing.exists(), "missing --dir was created");

    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"not a directory").expect("write file");
    let run = bench(&args_in(&file, &common_args), None);
    assert_eq!(run.code(), Some(1), "--dir is a file: {}", run.describe());
    assert!(
        run.stderr().contains(&*file.to_string_lossy()),
        "--dir is a file: stderr should name it: {}",
        run.describe()
    );
    assert_eq!(std::fs::read(&file).expect("read file"), b"not a directory");

    // Unwritable: a read-only tmpfs (root ignores permission bits).
    if let Some(ro) = tmpfs_or_skip("size=64m,ro") {
        let run = bench(&args_in(ro.path(), &common_args), None);
        assert_eq!(run.code(), Some(1), "read-only --dir: {}", run.describe());
        assert!(
            run.stderr().contains(&*ro.path().to_string_lossy()),
            "read-only --dir: stderr should name it: {}",
            run.describe()
        );
    }
}

#[test]
fn not_enough_space_exits_1_and_leaves_nothing() {
    let Some(fs) = mount_or_skip("ext4", 32) else {
        return;
    };
    let before = names_in(fs.path());
    let run = bench(
        &args_in(
            fs.path(),
            &["--size", "64M", "--runtime", "0.05", "--paths", "psync"],
        ),
        None,
    );
    let err = run.stderr();
    assert_eq!(run.code(), Some(1), "no space: {}", run.describe());
    assert!(
        err.contains(&*fs.path().to_string_lossy()) && err.contains("space"),
        "no space: stderr should name the dir and 'space': {}",
        run.describe()
    );
    assert_eq!(names_in(fs.path()), before, "no space: files left behind");
    let used = rustix::fs::statvfs(fs.path()).expect("statvfs");
    assert!(used.f_bfree > 0, "no space: filesystem was filled");
}

#[test]
fn memory_cap_skips_uring_rows_with_a_note() {
    let tmp = scratch("bench-memory");
    let d = tmp.path();
    let support = expected_support(d);
    let run = bench(
        &args_in(
            d,
            &[
                "--memory",
                "3M",
                "--size",
                "6M",
                "--modes",
                "copy",
                "--block-sizes",
                "1M,3M",
                "--qd",
                "1,4",
                "--paths",
                "uring-vec,uring-fixed,uring-direct,psync",
                "--runtime",
                "0.1",
                "--warmup",
                "0",
                "--json",
            ],
        ),
        None,
    );
    assert_eq!(run.code(), Some(0), "--memory 3M: {}", run.describe());
    let rep = parse_report(&run);
    let paths = ["uring-vec", "uring-fixed", "uring-direct", "psync"];
    check_row_set(
        &rep.rows,
        &expected_keys(&paths, &["copy"], &[MIB, 3 * MIB], &[1, 4], &[1]),
        "--memory",
    );
    for r in &rep.rows {
        // Buffer pools of 1 MiB or more take whole 2 MiB huge pages: even 1M x qd 1 needs 2 MiB.
        let pool = r.bs.unwrap_or(0) * r.qd.unwrap_or(1);
        let need = in_huge_pages(pool) * r.threads;
        if support[r.path.as_str()].is_some() {
            assert_eq!(r.status, "unsupported", "--memory: {r:?}");
        } else if need > 3 * MIB {
            assert_eq!(
                r.status, "skipped",
                "--memory: {need} bytes of buffers > 3M: {r:?}"
            );
            assert!(
                r.note.as_deref().is_some_and(|n| n.contains("--memory")),
                "--memory: skipped row's note should mention --memory: {r:?}"
            );
            assert_eq!(r.bytes, 0, "--memory: skipped row moved data: {r:?}");
        } else {
            check_ok_row(r, 0.1, 6 * MIB, "--memory (fits)");
        }
    }
    // psync 3M: 3 MiB of buffers would fit, but they take two whole huge pages (4 MiB).
    let psync3 = rep
        .rows
        .iter()
        .find(|r| r.path == "psync" && r.bs == Some(3 * MIB))
        .expect("psync 3M row");
    assert_eq!(
        psync3.status, "skipped",
        "--memory 3M counts whole huge pages: {psync3:?}"
    );
    // ...and 1M at qd 1 (one 2 MiB page) runs wherever the path is supported.
    for r in rep
        .rows
        .iter()
        .filter(|r| r.bs == Some(MIB) && r.qd.unwrap_or(1) == 1)
    {
        if support[r.path.as_str()].is_none() {
            assert_eq!(r.status, "ok", "--memory 3M: {r:?}");
        }
    }
    check_best(&rep, &["copy"], support["reflink"].is_none(), "--memory");
}

// ---------------------------------------------------------------------------------------------
// 6. Must not hang

#[test]
fn file_smaller_than_one_block_finishes_quickly() {
    let tmp = scratch("bench-tiny");
    let d = tmp.path();
    let support = expected_support(d);
    let run = bench(
        &args_in(
            d,
            &[
                "--runtime",
                "0.2",
                "--size",
                "4K",
                "--block-sizes",
                "1M",
                "--modes",
                "read,write,copy",
                "--qd",
                "1,4",
                "--json",
            ],
        ),
        None,
    );
    eprintln!("4K file, 1M blocks: {:.1?}", run.wall);
    assert!(
        run.wall < Duration::from_secs(30),
        "took {:?}: {}",
        run.wall,
        run.describe()
    );
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    let rep = parse_report(&run);
    let want = expected_keys(&ALL_PATHS, &["read", "write", "copy"], &[MIB], &[1, 4], &[1]);
    check_row_set(&rep.rows, &want, "4K file");
    // check_ok_row also checks 4 KiB (the file), not 1 MiB, per operation.
    check_rows_against_support(&rep, &support, 0.2, 4 * KIB, "4K file");
    check_best(
        &rep,
        &["read", "write", "copy"],
        support["reflink"].is_none(),
        "4K file",
    );
    assert_eq!(names_in(d), BTreeSet::new(), "4K file: left behind");
}

// ---------------------------------------------------------------------------------------------
// 7. Interruption

/// Poll until `cond` holds (or fail after 20 s).
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn interrupted_ok(run: &BenchRun, ctx: &str) {
    use std::os::unix::process::ExitStatusExt;
    assert!(
        run.code().is_some_and(|c| c != 0) || run.out.status.signal().is_some(),
        "{ctx}: an interrupted run must not report success: {}",
        run.describe()
    );
}

/// SIGINT / SIGTERM while a combination is being measured: the test files go (unless --keep).
#[test]
fn interrupt_mid_measurement_removes_test_files_unless_keep() {
    use rustix::process::Signal;
    let cases = [
        (Signal::INT, false, "SIGINT"),
        (Signal::TERM, false, "SIGTERM"),
        (Signal::INT, true, "SIGINT --keep"),
    ];
    for (sig, keep, ctx) in cases {
        let tmp = scratch("bench-sig");
        let d = tmp.path();
        let mut a = vec![
            "--size",
            "4M",
            "--paths",
            "psync",
            "--modes",
            "copy",
            "--block-sizes",
            "1M",
            "--runtime",
            "20",
            "--warmup",
            "0",
        ];
        if keep {
            a.push("--keep");
        }
        let r = spawn_bench(&args_in(d, &a), None);
        let work = d.join(format!("ringsync-bench.{}", r.pid));
        // Both files laid out: the (20 s) measurement has begun or is about to.
        wait_for("the layout", || {
            std::fs::metadata(work.join("dst.0")).is_ok_and(|m| m.len() == 4 * MIB)
        });
        std::thread::sleep(Duration::from_millis(300));
        r.signal(sig);
        let run = r.finish();
        eprintln!("{ctx}: exit {:?} after {:.1?}", run.out.status, run.wall);
        interrupted_ok(&run, ctx);
        assert!(
            run.wall < Duration::from_secs(15),
            "{ctx}: did not stop promptly: {}",
            run.describe()
        );
        if keep {
            assert!(
                work.join("src.0").is_file(),
                "{ctx}: --keep lost the test files: {}",
                run.describe()
            );
        } else {
            assert_eq!(
                names_in(d),
                BTreeSet::new(),
                "{ctx}: test files left behind: {}",
                run.describe()
            );
        }
    }
}

/// SIGINT while hundreds of small test files are being laid out: nothing may be left behind,
/// and the run must not claim to have removed files it left.
#[test]
fn interrupt_during_layout_of_many_files_removes_everything() {
    use rustix::process::Signal;
    for attempt in 0..3 {
        let tmp = scratch("bench-sig-layout");
        let d = tmp.path();
        let r = spawn_bench(
            &args_in(
                d,
                &[
                    "--size",
                    "4K",
                    "--threads",
                    "200",
                    "--paths",
                    "psync",
                    "--modes",
                    "copy",
                    "--block-sizes",
                    "4K",
                    "--runtime",
                    "0.1",
                    "--warmup",
                    "0",
                ],
            ),
            None,
        );
        let work = d.join(format!("ringsync-bench.{}", r.pid));
        let target = 20 + 60 * attempt;
        wait_for("some test files", || {
            std::fs::read_dir(&work).is_ok_and(|it| it.count() >= target)
        });
        r.signal(Signal::INT);
        let run = r.finish();
        let ctx = format!("SIGINT after {target} of 400 files (attempt {attempt})");
        interrupted_ok(&run, &ctx);
        let left: Vec<String> = if work.exists() {
            names_in(&work).into_iter().collect()
        } else {
            Vec::new()
        };
        assert!(
            !work.exists(),
            "{ctx}: {} left behind with {} files ({:?}...); stderr says: {}",
            work.display(),
            left.len(),
            &left[..left.len().min(5)],
            run.stderr().trim()
        );
    }
}

#[test]
fn svg_checker_self_test() {
    assert!(check_svg("<svg a=\"1\"><text>a &amp; b</text><g/></svg>\n").is_ok());
    assert!(check_svg("<?xml version=\"1.0\"?>\n<svg><text>x</text></svg>").is_ok());
    assert!(check_svg("<svg><text>a & b</text></svg>").is_err());
    assert!(check_svg("<svg><text>a <c> b</text></svg>").is_err());
    assert!(check_svg("<svg><text>x</svg>").is_err());
    assert!(check_svg("<svg></svg><svg></svg>").is_err());
    assert!(check_svg("<svg a=\"<\"></svg>").is_err());
}
