//! The validated, typed configuration of a run. Built by `cli`, consumed by `engine`.

use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineChoice {
    /// io_uring, falling back to `Sync` (with one notice on stderr) where the kernel refuses.
    Auto,
    Uring,
    Sync,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reflink {
    /// Clone extents where the filesystem can (btrfs, xfs), copy data elsewhere.
    Auto,
    /// Clone or fail that file.
    Always,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    None,
    /// fsync each file before it is closed.
    File,
    /// One syncfs of the target filesystem at the end: durable when the command returns 0.
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPath {
    /// In-kernel copy_file_range for files of at least `CFR_MIN_BYTES`, ring reads/writes below.
    Auto,
    /// Reads and writes through the ring from pool buffers, for every file.
    Ring,
    /// copy_file_range for every file (falls back to the ring where the kernel refuses).
    Cfr,
}

#[derive(Debug, Clone)]
pub struct CopyConfig {
    pub src: PathBuf,
    pub dst: PathBuf,
    pub engine: EngineChoice,
    pub threads: usize,
    /// Total data-buffer memory across all workers.
    pub memory_bytes: u64,
    pub reflink: Reflink,
    pub fsync: Fsync,
    pub data_path: DataPath,
    pub progress: bool,
    pub quiet: bool,
    /// Write every file under a temporary name and rename it into place, even where nothing
    /// is in the way (mirror: a reader never sees a half-written file under a final name).
    pub atomic: bool,
    /// Write new files under a temporary name too, renamed into place (without replacing
    /// anything that appeared meanwhile) once complete (and, under `--fsync end`, durable):
    /// a kill or a crash never leaves a half-written file at a final name (copy).
    pub tmp_new: bool,
    /// `--bwlimit`: file data copied per second, all workers together (None: unlimited).
    pub bwlimit: Option<u64>,
    /// What the command line says about selection (filters, `--files-from`, `-x`).
    pub filter_spec: crate::filter::FilterSpec,
    /// The selection itself, built from `filter_spec` when the run starts (it reads files).
    pub filter: std::sync::Arc<crate::filter::Filter>,
    /// `-v`: one line per entry changed on stdout.
    pub verbose: bool,
    /// `--log-file`: entry lines, errors and the summary appended there.
    pub log_file: Option<PathBuf>,
    /// `--progress`: a progress line even off a terminal.
    pub progress_forced: bool,
    /// Where `-v` and `--log-file` lines go, opened when the run starts.
    pub report: std::sync::Arc<crate::report::Reporter>,
    /// The engine says what it creates and replaces (copy; a mirror lists its changes itself).
    pub list_changes: bool,
    /// `--verify`: read every file written back after the final sync and compare it with the
    /// hash of what was read from the source (src/verify.rs).
    pub verify: bool,
}

/// Default `--memory`. 256 MiB gained no throughput over 64 MiB, which still keeps eight 4 MiB
/// ops in flight per worker on a 2-core machine (perf/). (It was measured when the pool was
/// registered with the rings, which faulted in every page: 256 MiB cost 30 ms of start-up and 263
/// MiB RSS. `copy` and `mirror` no longer register it, and touch only the units they use.)
pub const MEMORY_BYTES_DEFAULT: u64 = 64 << 20;
/// Smallest `--memory` accepted: one pool unit per worker must fit.
pub const MEMORY_BYTES_MIN: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renames {
    /// On when both trees are on one filesystem, or both on btrfs (snapshots of one volume).
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone)]
pub struct DiffConfig {
    /// The command's name in messages (`diff`, `check`).
    pub command: &'static str,
    pub old: PathBuf,
    pub new: PathBuf,
    pub json: bool,
    pub exit_code: bool,
    pub checksum: bool,
    pub renames: Renames,
    pub threads: usize,
    pub engine: EngineChoice,
    pub quiet: bool,
    /// List changes of atime alone (hidden by default).
    pub atimes: bool,
}

#[derive(Debug, Clone)]
pub struct MirrorConfig {
    /// Source, target and the data options (the engine's part of the run).
    pub copy: CopyConfig,
    /// The snapshot DST was last mirrored from.
    pub prev: Option<PathBuf>,
    pub dry_run: bool,
    pub checksum: bool,
    pub json: bool,
    /// List changes of atime alone in `--dry-run` and `-v` output.
    pub atimes: bool,
    /// Never take the btrfs shortcut (`mirror::changes`).
    pub full_walk: bool,
}

/// A copy path `ringsync bench` can measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BenchPath {
    /// io_uring READV/WRITEV (each op gathered from several iovecs), buffered.
    UringVec,
    /// io_uring READ_FIXED/WRITE_FIXED from a registered pool, buffered.
    UringFixed,
    /// io_uring with fixed buffers on files opened O_DIRECT.
    UringDirect,
    /// pread/pwrite, one op at a time per thread.
    Psync,
    /// copy_file_range (in-kernel copy).
    Cfr,
    /// splice through a pipe.
    Splice,
    /// FICLONE: shares extents, copies no data.
    Reflink,
}

impl BenchPath {
    pub const ALL: [BenchPath; 7] = [
        BenchPath::UringVec,
        BenchPath::UringFixed,
        BenchPath::UringDirect,
        BenchPath::Psync,
        BenchPath::Cfr,
        BenchPath::Splice,
        BenchPath::Reflink,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BenchPath::UringVec => "uring-vec",
            BenchPath::UringFixed => "uring-fixed",
            BenchPath::UringDirect => "uring-direct",
            BenchPath::Psync => "psync",
            BenchPath::Cfr => "cfr",
            BenchPath::Splice => "splice",
            BenchPath::Reflink => "reflink",
        }
    }

    /// Only the io_uring paths keep more than one op in flight per thread.
    pub fn has_qd(self) -> bool {
        matches!(
            self,
            BenchPath::UringVec | BenchPath::UringFixed | BenchPath::UringDirect
        )
    }

    /// In-kernel paths move data file to file: they have no read-only or write-only mode.
    pub fn copy_only(self) -> bool {
        matches!(self, BenchPath::Cfr | BenchPath::Splice | BenchPath::Reflink)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BenchMode {
    Read,
    Write,
    Copy,
}

impl BenchMode {
    pub const ALL: [BenchMode; 3] = [BenchMode::Read, BenchMode::Write, BenchMode::Copy];

    pub fn name(self) -> &'static str {
        match self {
            BenchMode::Read => "read",
            BenchMode::Write => "write",
            BenchMode::Copy => "copy",
        }
    }
}

#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Where the test directory is made (None: the current directory).
    pub dir: Option<PathBuf>,
    /// `--files`: the test files live in this directory and are reused across runs.
    pub files: Option<PathBuf>,
    /// Bytes per test file (one source and one target file per thread).
    pub size: u64,
    pub keep: bool,
    pub paths: Vec<BenchPath>,
    pub modes: Vec<BenchMode>,
    pub block_sizes: Vec<u64>,
    pub qds: Vec<u32>,
    pub threads: Vec<u32>,
    /// Measured time per combination, after the warm-up.
    pub runtime: std::time::Duration,
    pub warmup: std::time::Duration,
    /// Cap on the data buffers of one combination (qd × block size × threads).
    pub memory_bytes: u64,
    /// Start every pass over the files with their pages dropped from the cache.
    pub cold: bool,
    pub json: bool,
    pub plot: Option<PathBuf>,
    pub quiet: bool,
}
