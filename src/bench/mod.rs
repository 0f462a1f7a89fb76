//! `ringsync bench`: how fast can this disk move data, and which copy path gets there?
//!
//! Makes its own test files in a fresh directory (one source and one target file of `--size`
//! per thread, incompressible data, laid out and synced before anything is timed), then runs
//! every combination of path × mode × block size × queue depth × threads that applies, each for
//! a warm-up and `--runtime` seconds. Per combination: MB/s (10^6 bytes per second), IOPS, CPU
//! seconds per GB (the whole process, io_uring worker threads included) and latency
//! percentiles per operation. Paths the filesystem or kernel cannot do get a row saying
//! "unsupported here" and why. Rows stream to stdout as they finish (or one JSON document with
//! `--json`); `--plot` draws throughput against block size. The directory is removed at the end
//! unless `--keep`. With `--files DIR` the files live in DIR itself and are reused by later runs
//! (src.N/dst.N of exactly `--size`; others are laid out), so that runs can be compared on the
//! same, settled files, and with other tools such as fio.
//!
//! Cold cache: as root, caches are dropped (`sync; echo 1 > /proc/sys/vm/drop_caches`) before
//! each combination; for every user, the test files' pages are dropped with
//! `POSIX_FADV_DONTNEED` at the start of every pass over them (see [`paths`]).
//!
//! Must not: touch anything outside its own directory (besides drop_caches as root).

pub mod paths;
pub mod plot;

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use serde::Serialize;

use crate::config::{BenchConfig, BenchMode, BenchPath};
use crate::error::exit;
use crate::progress::human_bytes;
use paths::{Failure, Lane, Spec};

/// One row of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub path: &'static str,
    pub mode: &'static str,
    /// Bytes per operation (None: not applicable, e.g. a whole-file clone).
    pub block_size: Option<u64>,
    /// Ops in flight per thread (None: the path has no queue).
    pub qd: Option<u32>,
    pub threads: u32,
    /// "ok", "unsupported", "skipped" or "error".
    pub status: &'static str,
    pub note: Option<String>,
    pub bytes: u64,
    pub seconds: f64,
    pub mb_s: f64,
    pub iops: f64,
    pub cpu_s_per_gb: f64,
    pub lat_us: Option<Latency>,
    /// I/O buffers of all threads (paths with a buffer pool), and the part of them in huge pages.
    pub buffer_bytes: Option<u64>,
    pub huge_page_bytes: Option<u64>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

#[derive(Debug, Serialize)]
struct Report<'a> {
    version: u32,
    dir: String,
    filesystem: &'a str,
    file_size: u64,
    runtime_s: f64,
    warmup_s: f64,
    cache: &'a str,
    /// Test files found in place (`--files`) and used as they were, not laid out by this run.
    reused_files: usize,
    results: &'a [Row],
    best: Vec<&'a Row>,
}

/// Filesystem name from statfs's magic number.
fn fs_name(magic: u64) -> &'static str {
    match magic as u32 {
        0xEF53 => "ext4",
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        0x0102_1994 => "tmpfs",
        0x2FC1_2FC1 => "zfs",
        0xF2F5_2010 => "f2fs",
        0x6969 => "nfs",
        0x794C_7630 => "overlayfs",
        0xFF53_4D42 => "cifs",
        0x6573_5546 => "fuse",
        _ => "unknown",
    }
}

/// The bench's own directory; removed on drop unless kept.
struct Workdir {
    path: PathBuf,
    keep: bool,
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Room for `bytes` of test files (and 16 MiB to spare) under `base`.
fn check_space(base: &Path, bytes: u64) -> Result<(), String> {
    let st = rustix::fs::statvfs(base).map_err(|e| format!("{}: statvfs: {e}", base.display()))?;
    let need = bytes + (16 << 20);
    let avail = st.f_bavail.saturating_mul(st.f_frsize);
    if avail < need {
        return Err(format!(
            "{}: not enough free space for the test files: need {}, {} available (lower --size or --threads)",
            base.display(),
            human_bytes(need as f64),
            human_bytes(avail as f64)
        ));
    }
    Ok(())
}

fn make_workdir(cfg: &BenchConfig) -> Result<Workdir, String> {
    if let Some(d) = &cfg.files {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: mkdir: {e}", d.display()))?;
        return Ok(Workdir {
            path: d.clone(),
            keep: true,
        });
    }
    let base = match &cfg.dir {
        Some(d) => d.clone(),
        None => std::env::current_dir().map_err(|e| format!("current directory: {e}"))?,
    };
    let lanes = *cfg.threads.iter().max().unwrap_or(&1) as u64;
    check_space(&base, cfg.size * lanes * 2)?;
    for n in 0..1000u32 {
        let mut name = OsString::from(format!("ringsync-bench.{}.{n}", std::process::id()));
        if n == 0 {
            name = OsString::from(format!("ringsync-bench.{}", std::process::id()));
        }
        let path = base.join(name);
        match std::fs::create_dir(&path) {
            Ok(()) => return Ok(Workdir { path, keep: cfg.keep }),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("{}: mkdir: {e}", path.display())),
        }
    }
    Err(format!("{}: no free name for the test directory", base.display()))
}

/// `--files`: whether `path` is a test file of this run's size, to be used as it is. Anything
/// else there that is not a regular file is an error; a regular file of another size is
/// removed, to be laid out again.
fn reusable(path: &Path, size: u64) -> Result<bool, String> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() && m.len() == size => Ok(true),
        Ok(m) if m.file_type().is_file() => std::fs::remove_file(path)
            .map(|()| false)
            .map_err(|e| format!("{}: remove (size {} is not --size): {e}", path.display(), m.len())),
        Ok(_) => Err(format!(
            "{}: not a regular file; --files DIR must hold test files only",
            path.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(format!("{}: stat: {e}", path.display())),
    }
}

/// Write `size` bytes of pattern to a new file and make it durable.
/// Held while a file is created in the bench directory, and by the interrupt handler from the
/// moment it starts removing the directory until the process exits: no file can appear in the
/// directory after (or while) it is removed.
static CREATE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn create_in_workdir(path: &Path) -> std::io::Result<std::fs::File> {
    let _g = CREATE.lock().unwrap_or_else(|e| e.into_inner());
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

fn lay_out(path: &Path, size: u64, seed: u64) -> Result<(), String> {
    let ctx = |op: &str, e: &dyn std::fmt::Display| format!("{}: {op}: {e}", path.display());
    let mut f = create_in_workdir(path).map_err(|e| ctx("create", &e))?;
    let mut buf = vec![0u8; 8 << 20];
    let mut left = size;
    let mut chunk = 0u64;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        paths::fill_pattern(&mut buf[..n], seed.wrapping_mul(1_000_003).wrapping_add(chunk));
        f.write_all(&buf[..n]).map_err(|e| ctx("write", &e))?;
        left -= n as u64;
        chunk += 1;
    }
    f.sync_all().map_err(|e| ctx("fsync", &e))?;
    rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).map_err(|e| ctx("fadvise", &e))?;
    Ok(())
}

fn open(path: &Path, write: bool, direct: bool) -> Result<Arc<OwnedFd>, Errno> {
    let mut flags = if write { OFlags::RDWR } else { OFlags::RDONLY } | OFlags::CLOEXEC;
    if direct {
        flags |= OFlags::DIRECT;
    }
    rustix::fs::open(path, flags, Mode::empty()).map(Arc::new)
}

/// Process CPU time (user + system, all threads).
fn cpu_time() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let tv = |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
            tv(u.user_time()) + tv(u.system_time())
        }
        Err(_) => Duration::ZERO,
    }
}

/// Whether `path` can run here, and if not, why (the "unsupported here" note).
fn probe(path: BenchPath, dir: &Path, src: &Path, fs: &str) -> Result<(), String> {
    let probe_file = dir.join("probe");
    let _ = std::fs::remove_file(&probe_file);
    let result = (|| -> Result<(), String> {
        let dst = create_in_workdir(&probe_file).map_err(|e| format!("create probe file: {e}"))?;
        let s = rustix::fs::open(src, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| format!("open source: {e}"))?;
        match path {
            BenchPath::UringVec | BenchPath::UringFixed => {
                crate::ring::probe_uring().map_err(|e| format!("io_uring: {e}"))
            }
            BenchPath::UringDirect => {
                crate::ring::probe_uring().map_err(|e| format!("io_uring: {e}"))?;
                open(src, false, true)
                    .map(drop)
                    .map_err(|e| format!("{fs} refuses O_DIRECT: {e}"))
            }
            BenchPath::Psync => Ok(()),
            BenchPath::Cfr => {
                let (mut a, mut b) = (0u64, 0u64);
                match rustix::fs::copy_file_range(&s, Some(&mut a), &dst, Some(&mut b), 4096) {
                    Ok(n) if n > 0 => Ok(()),
                    Ok(_) => Err("copy_file_range copied nothing".into()),
                    Err(e) => Err(format!("copy_file_range: {e}")),
                }
            }
            BenchPath::Splice => {
                let (r, w) = rustix::pipe::pipe().map_err(|e| format!("pipe: {e}"))?;
                let mut off = 0u64;
                let flags = rustix::pipe::SpliceFlags::empty();
                let n = rustix::pipe::splice(&s, Some(&mut off), &w, None, 4096, flags)
                    .map_err(|e| format!("splice from file: {e}"))?;
                let mut off = 0u64;
                rustix::pipe::splice(&r, None, &dst, Some(&mut off), n, flags)
                    .map(drop)
                    .map_err(|e| format!("splice to file: {e}"))
            }
            BenchPath::Reflink => rustix::fs::ioctl_ficlone(&dst, &s)
                .map_err(|e| format!("{fs} cannot clone extents (FICLONE: {e})")),
        }
    })();
    let _ = std::fs::remove_file(&probe_file);
    result
}

/// Every combination to run, in report order.
/// path, mode, block size, queue depth, threads.
type Combo = (BenchPath, BenchMode, Option<u64>, Option<u32>, u32);

fn combos(cfg: &BenchConfig) -> Vec<Combo> {
    let mut out = Vec::new();
    for &mode in &cfg.modes {
        for &path in &cfg.paths {
            if path.copy_only() && mode != BenchMode::Copy {
                continue;
            }
            for &threads in &cfg.threads {
                if path == BenchPath::Reflink {
                    out.push((path, mode, None, None, threads));
                    continue;
                }
                for &bs in &cfg.block_sizes {
                    if path.has_qd() {
                        for &qd in &cfg.qds {
                            out.push((path, mode, Some(bs), Some(qd), threads));
                        }
                    } else {
                        out.push((path, mode, Some(bs), None, threads));
                    }
                }
            }
        }
    }
    out
}

fn empty_row(path: BenchPath, mode: BenchMode, bs: Option<u64>, qd: Option<u32>, threads: u32) -> Row {
    Row {
        path: path.name(),
        mode: mode.name(),
        block_size: bs,
        qd,
        threads,
        status: "ok",
        note: None,
        bytes: 0,
        seconds: 0.0,
        mb_s: 0.0,
        iops: 0.0,
        cpu_s_per_gb: 0.0,
        lat_us: None,
        buffer_bytes: None,
        huge_page_bytes: None,
    }
}

/// How many of the combinations whose per-thread buffers reach `HUGE_MIN_BYTES` (bs × qd) got
/// them wholly in huge pages; None when no row has such buffers.
fn huge_page_line(rows: &[Row]) -> Option<String> {
    let eligible: Vec<&Row> = rows
        .iter()
        .filter(|r| r.status == "ok")
        .filter(|r| {
            r.buffer_bytes
                .is_some_and(|b| b / r.threads.max(1) as u64 >= crate::ring::HUGE_MIN_BYTES as u64)
        })
        .collect();
    if eligible.is_empty() {
        return None;
    }
    let whole = eligible
        .iter()
        .filter(|r| r.huge_page_bytes == r.buffer_bytes)
        .count();
    Some(format!(
        "buffers of {} or more per thread (bs x qd) are 2 MiB huge pages (THP): {whole} of {} such combinations got them all{}",
        human_bytes(crate::ring::HUGE_MIN_BYTES as f64),
        eligible.len(),
        if whole < eligible.len() { " (the rest partly or wholly 4 KiB pages: huge_page_bytes in --json)" } else { "" }
    ))
}

/// `4K`, `1M`: block sizes as people write them.
pub fn short_size(n: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")];
    for (u, s) in UNITS {
        if n >= u && n % u == 0 {
            return format!("{}{s}", n / u);
        }
    }
    n.to_string()
}

struct Table {
    json: bool,
}

const HEADER: [(&str, usize); 13] = [
    ("path", 12),
    ("mode", 5),
    ("bs", 4),
    ("qd", 3),
    ("thr", 3),
    ("MB/s", 8),
    ("IOPS", 8),
    ("CPU s/GB", 8),
    ("p50 us", 8),
    ("p99 us", 8),
    ("p99.9 us", 8),
    ("max us", 9),
    ("note", 0),
];

impl Table {
    fn line(cells: &[String]) -> String {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let w = HEADER[i].1;
            if i < 2 {
                s.push_str(&format!("{c:<w$} "));
            } else if w > 0 {
                s.push_str(&format!("{c:>w$} "));
            } else {
                s.push_str(c);
            }
        }
        s.trim_end().to_string()
    }

    fn header(&self) {
        if !self.json {
            let cells: Vec<String> = HEADER.iter().map(|h| h.0.to_string()).collect();
            println!("{}", Table::line(&cells));
        }
    }

    fn row(&self, r: &Row) {
        if self.json {
            return;
        }
        let num = |v: f64, prec: usize| format!("{v:.prec$}");
        let dash = || "-".to_string();
        let mut cells = vec![
            r.path.to_string(),
            r.mode.to_string(),
            r.block_size.map(short_size).unwrap_or_else(dash),
            r.qd.map(|q| q.to_string()).unwrap_or_else(dash),
            r.threads.to_string(),
        ];
        if r.status == "ok" {
            let lat = r.lat_us.expect("ok rows have latencies");
            let us = |v: f64| if v < 100.0 { num(v, 1) } else { num(v, 0) };
            cells.extend([
                num(r.mb_s, 0),
                num(r.iops, 0),
                num(r.cpu_s_per_gb, 2),
                us(lat.p50),
                us(lat.p99),
                us(lat.p999),
                us(lat.max),
            ]);
            cells.push(r.note.clone().unwrap_or_default());
        } else {
            cells.extend((0..7).map(|_| dash()));
            let label = match r.status {
                "unsupported" => "unsupported here",
                s => s,
            };
            cells.push(match &r.note {
                Some(n) => format!("{label}: {n}"),
                None => label.to_string(),
            });
        }
        println!("{}", Table::line(&cells));
        let _ = std::io::stdout().flush();
    }
}

/// Root can drop the whole page cache; returns whether it worked.
fn drop_caches(dir: &Path) -> bool {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = rustix::fs::syncfs(&f);
    }
    std::fs::write("/proc/sys/vm/drop_caches", "1").is_ok()
}

/// Run one combination on `lanes`.
fn measure(
    cfg: &BenchConfig,
    spec_of: impl Fn(Instant, Instant) -> Spec + Sync,
    lanes: &[Lane],
) -> Result<Row, Failure> {
    let n = lanes.len();
    let gate = Barrier::new(n + 1);
    let start: OnceLock<Instant> = OnceLock::new();
    // Threads are not pinned (fio's default too): the scheduler moves a thread that waits on
    // completions next to the CPU that takes the device's interrupt. Pinned to another core,
    // every completion is a cross-CPU wakeup; on this project's VM (one virtio queue, IRQ on
    // CPU 1) that made 1M O_DIRECT reads at qd 1 take 0.9 ms instead of 0.5 ms, in fio too
    // (`--cpus_allowed=0`: 1117-1165 MB/s; `=1`: 1785-2066 MB/s).
    let (results, cpu) = std::thread::scope(|s| {
        let handles: Vec<_> = lanes
            .iter()
            .map(|lane| {
                let (gate, start, spec_of) = (&gate, &start, &spec_of);
                s.spawn(move || {
                    gate.wait();
                    let t0 = *start.get().expect("set before the gate opens");
                    paths::run(lane, &spec_of(t0 + cfg.warmup, t0 + cfg.warmup + cfg.runtime))
                })
            })
            .collect();
        let t0 = Instant::now();
        start.set(t0).expect("set once");
        gate.wait();
        std::thread::sleep((t0 + cfg.warmup).saturating_duration_since(Instant::now()));
        let cpu0 = cpu_time();
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| h.join().expect("bench thread"))
            .collect();
        (results, cpu_time().saturating_sub(cpu0))
    });
    let t_measure = *start.get().expect("set") + cfg.warmup;
    let mut bytes = 0u64;
    let mut ops = 0u64;
    let mut end = t_measure;
    let mut lat: Histogram<u64> = Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("valid bounds");
    let mut buffers: Option<paths::BufferUse> = None;
    for r in results {
        let t = r?;
        bytes += t.bytes;
        ops += t.ops;
        end = end.max(t.end);
        lat.add(&t.lat).expect("same bounds");
        if let Some(b) = t.buffers {
            let sum = buffers.get_or_insert_with(Default::default);
            sum.bytes += b.bytes;
            sum.huge_bytes += b.huge_bytes;
        }
    }
    let secs = end.duration_since(t_measure).as_secs_f64().max(1e-9);
    let spec = spec_of(t_measure, t_measure);
    let mut row = empty_row(
        spec.path,
        spec.mode,
        (spec.path != BenchPath::Reflink).then_some(spec.block),
        spec.path.has_qd().then_some(spec.qd),
        n as u32,
    );
    row.bytes = bytes;
    row.buffer_bytes = buffers.map(|b| b.bytes);
    row.huge_page_bytes = buffers.map(|b| b.huge_bytes);
    row.seconds = secs;
    row.mb_s = bytes as f64 / secs / 1e6;
    row.iops = ops as f64 / secs;
    row.cpu_s_per_gb = if bytes > 0 {
        cpu.as_secs_f64() / (bytes as f64 / 1e9)
    } else {
        0.0
    };
    let us = |ns: u64| ns as f64 / 1000.0;
    row.lat_us = Some(Latency {
        p50: us(lat.value_at_quantile(0.5)),
        p99: us(lat.value_at_quantile(0.99)),
        p999: us(lat.value_at_quantile(0.999)),
        max: us(lat.max()),
    });
    if ops == 0 {
        row.status = "error";
        row.note = Some("no operation completed within the runtime".into());
    }
    Ok(row)
}

/// Run the benchmark; returns the exit status.
pub fn bench(cfg: &BenchConfig) -> i32 {
    match bench_inner(cfg) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ringsync bench: {e}");
            exit::FATAL
        }
    }
}

fn bench_inner(cfg: &BenchConfig) -> Result<i32, String> {
    // Fail before the sweep, not after it, when the plot cannot be written.
    let plot_file = match &cfg.plot {
        Some(p) => {
            Some(std::fs::File::create(p).map_err(|e| format!("{}: create plot file: {e}", p.display()))?)
        }
        None => None,
    };
    let work = make_workdir(cfg)?;
    let dir = work.path.clone();
    // Ctrl-C or SIGTERM must not leave gigabytes of test files behind. The handler runs on its
    // own thread (crate::signals), so it may remove the directory and exit while workers run.
    {
        let (dir, keep) = (dir.clone(), cfg.keep);
        let _ = crate::signals::install(move |_| {
            // Never released: nothing may be created from here on.
            let _g = CREATE.lock().unwrap_or_else(|e| e.into_inner());
            let what = if keep {
                format!("; test files kept in {}", dir.display())
            } else {
                match std::fs::remove_dir_all(&dir) {
                    Ok(()) => "; test files removed".to_string(),
                    Err(e) => format!("; could not remove {}: {e}", dir.display()),
                }
            };
            eprintln!("ringsync bench: interrupted{what}");
            std::process::exit(130);
        });
    }
    let fs = rustix::fs::statfs(&dir)
        .map(|s| fs_name(s.f_type as u64))
        .unwrap_or("unknown");
    let lanes_max = *cfg.threads.iter().max().unwrap_or(&1) as usize;
    let src_of = |i: usize| dir.join(format!("src.{i}"));
    let dst_of = |i: usize| dir.join(format!("dst.{i}"));
    // (file, seed) of every test file this run lays out; --files reuses what is in place.
    let mut todo = Vec::new();
    for i in 0..lanes_max {
        for (path, seed) in [(src_of(i), 2 * i as u64 + 1), (dst_of(i), 2 * i as u64 + 2)] {
            if cfg.files.is_none() || !reusable(&path, cfg.size)? {
                todo.push((path, seed));
            }
        }
    }
    let reused_files = 2 * lanes_max - todo.len();
    if cfg.files.is_some() {
        check_space(&dir, cfg.size * todo.len() as u64)?;
    }
    if !cfg.quiet {
        let reused = if reused_files > 0 {
            format!(", reusing {reused_files} in place")
        } else {
            String::new()
        };
        eprintln!(
            "ringsync bench: laying out {} files of {} in {} ({fs}){reused}",
            todo.len(),
            human_bytes(cfg.size as f64),
            dir.display()
        );
    }
    for (path, seed) in &todo {
        lay_out(path, cfg.size, *seed)?;
    }
    let root_drop = cfg.cold && rustix::process::geteuid().is_root() && drop_caches(&dir);
    let cache = match (cfg.cold, root_drop) {
        (false, _) => "warm (pages stay cached between passes)",
        (true, true) => "cold: drop_caches before each combination (root) + POSIX_FADV_DONTNEED of the test files every pass",
        (true, false) => "cold: POSIX_FADV_DONTNEED of the test files every pass (not root: no drop_caches)",
    };
    let table = Table { json: cfg.json };
    if !cfg.json {
        println!(
            "ringsync bench: {} ({fs}), {} per file, {} s per combination after {} s warm-up",
            dir.display(),
            human_bytes(cfg.size as f64),
            (cfg.runtime.as_secs_f64() * 1000.0).round() / 1000.0,
            (cfg.warmup.as_secs_f64() * 1000.0).round() / 1000.0
        );
        println!("cache: {cache}; MB/s = 10^6 bytes/s; copy latency = read submit to write done");
    }
    table.header();
    let mut support: Vec<(BenchPath, Result<(), String>)> = Vec::new();
    let mut rows: Vec<Row> = Vec::new();
    let reflink_ok = probe(BenchPath::Reflink, &dir, &src_of(0), fs).is_ok();
    let mut failed = false;
    for (path, mode, bs, qd, threads) in combos(cfg) {
        let supported = match support.iter().find(|(p, _)| *p == path) {
            Some((_, r)) => r.clone(),
            None => {
                let r = probe(path, &dir, &src_of(0), fs);
                support.push((path, r.clone()));
                r
            }
        };
        let mut row = empty_row(path, mode, bs, qd, threads);
        let block = bs.unwrap_or(cfg.size);
        let qd_v = qd.unwrap_or(1);
        let direct = path == BenchPath::UringDirect;
        // What the pools really take (see ring::Pool::bytes_for: whole huge pages from 1 MiB).
        let buffers = if path.has_qd() || path == BenchPath::Psync {
            crate::ring::Pool::bytes_for(qd_v as usize, block as usize) as u64 * threads as u64
        } else {
            0
        };
        if let Err(why) = supported {
            row.status = "unsupported";
            row.note = Some(why);
        } else if buffers > cfg.memory_bytes {
            row.status = "skipped";
            row.note = Some(format!(
                "needs {} of buffers (bs × qd × threads; 1 MiB or more per thread in whole 2 MiB huge pages) > --memory {}",
                human_bytes(buffers as f64),
                human_bytes(cfg.memory_bytes as f64)
            ));
        } else if direct && block % 4096 != 0 {
            row.status = "skipped";
            row.note = Some("O_DIRECT needs block sizes in multiples of 4K".into());
        } else {
            let opened: Result<Vec<Lane>, Errno> = (0..threads as usize)
                .map(|i| {
                    Ok(Lane {
                        src: open(&src_of(i), false, direct)?,
                        dst: open(&dst_of(i), true, direct)?,
                        size: cfg.size,
                    })
                })
                .collect();
            match opened {
                Err(e) => {
                    row.status = "error";
                    row.note = Some(format!("open: {e}"));
                }
                Ok(lanes) => {
                    if cfg.cold && root_drop {
                        drop_caches(&dir);
                    }
                    let spec_of = |from: Instant, deadline: Instant| Spec {
                        path,
                        mode,
                        block,
                        qd: qd_v,
                        cold: cfg.cold,
                        measure_from: from,
                        deadline,
                        direct,
                    };
                    match measure(cfg, spec_of, &lanes) {
                        Ok(mut r) => {
                            r.block_size = bs;
                            r.qd = qd;
                            if path == BenchPath::Reflink {
                                r.note = Some("shares extents, copies no data".into());
                            } else if path == BenchPath::Cfr && reflink_ok {
                                r.note = Some(format!("{fs} may share extents here instead of copying"));
                            }
                            row = r;
                        }
                        Err(f) => {
                            row.status = "error";
                            row.note = Some(format!("{}: {}", f.op, f.errno));
                        }
                    }
                }
            }
        }
        failed |= row.status == "error";
        table.row(&row);
        rows.push(row);
    }
    // Fastest per mode, among paths that really move data.
    let moves_data = |r: &Row| r.status == "ok" && r.path != "reflink" && !(r.path == "cfr" && reflink_ok);
    let mut best: Vec<&Row> = Vec::new();
    for mode in BenchMode::ALL {
        let top = rows
            .iter()
            .filter(|r| r.mode == mode.name() && moves_data(r))
            .max_by(|a, b| a.mb_s.total_cmp(&b.mb_s));
        if let Some(r) = top {
            best.push(r);
        }
    }
    let describe = |r: &Row| {
        let mut s = r.path.to_string();
        if let Some(bs) = r.block_size {
            s.push_str(&format!(", bs {}", short_size(bs)));
        }
        if let Some(q) = r.qd {
            s.push_str(&format!(", qd {q}"));
        }
        s.push_str(&format!(
            ", {} thread{}: {:.0} MB/s",
            r.threads,
            if r.threads == 1 { "" } else { "s" },
            r.mb_s
        ));
        s
    };
    let headline = best.iter().find(|r| r.mode == "copy").or(best.first()).map(|r| {
        let what = if r.mode == "copy" {
            "copy path".to_string()
        } else {
            format!("{} path", r.mode)
        };
        format!("fastest {what} on this disk: {}", describe(r))
    });
    if cfg.json {
        let report = Report {
            version: 1,
            dir: dir.display().to_string(),
            filesystem: fs,
            file_size: cfg.size,
            runtime_s: cfg.runtime.as_secs_f64(),
            warmup_s: cfg.warmup.as_secs_f64(),
            cache,
            reused_files,
            results: &rows,
            best: best.clone(),
        };
        let v = serde_json::to_string_pretty(&report).map_err(|e| format!("json: {e}"))?;
        println!("{v}");
    } else {
        if let Some(line) = huge_page_line(&rows) {
            println!("{line}");
        }
        for r in best.iter().filter(|r| r.mode != "copy") {
            println!("fastest {} path: {}", r.mode, describe(r));
        }
        match best.iter().find(|r| r.mode == "copy") {
            Some(r) => println!("fastest copy path on this disk: {}", describe(r)),
            None if best.is_empty() => println!("no combination completed"),
            None => {}
        }
    }
    if let Some(plot_path) = &cfg.plot {
        let points: Vec<plot::Point> = rows
            .iter()
            .filter(|r| r.status == "ok")
            .map(|r| plot::Point {
                path: r.path,
                mode: r.mode,
                block_size: r.block_size.unwrap_or(cfg.size),
                qd: r.qd.unwrap_or(1),
                threads: r.threads,
                mb_s: r.mb_s,
            })
            .collect();
        let title = format!(
            "ringsync bench: {} ({fs}), {} files, {}",
            dir.parent().unwrap_or(&dir).display(),
            human_bytes(cfg.size as f64),
            if cfg.cold { "cold cache" } else { "warm cache" }
        );
        let svg = plot::render_svg(&title, headline.as_deref(), &points)?;
        let mut f = plot_file.expect("created with --plot");
        f.write_all(svg.as_bytes())
            .map_err(|e| format!("{}: write plot: {e}", plot_path.display()))?;
    }
    if cfg.keep && !cfg.quiet {
        eprintln!("ringsync bench: test files kept in {}", dir.display());
    }
    Ok(if failed { exit::PARTIAL } else { exit::OK })
}
