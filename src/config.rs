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
    /// `--bwlimit`: file data copied per second, all workers together (None: unlimited).
    pub bwlimit: Option<u64>,
}

/// Default `--memory`. The pool is registered with the rings, which pins (faults in) every page:
/// 256 MiB cost 30 ms of start-up and 263 MiB RSS for no throughput gain over 64 MiB, which still
/// keeps eight 4 MiB ops in flight per worker on a 2-core machine (perf/).
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
    pub old: PathBuf,
    pub new: PathBuf,
    pub json: bool,
    pub exit_code: bool,
    pub checksum: bool,
    pub renames: Renames,
    pub threads: usize,
    pub engine: EngineChoice,
    pub quiet: bool,
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
}
