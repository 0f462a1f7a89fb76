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
    pub progress: bool,
    pub quiet: bool,
}

/// Default `--memory`: enough for dozens of large reads in flight per core, small next to RAM.
pub const MEMORY_BYTES_DEFAULT: u64 = 256 << 20;
/// Smallest `--memory` accepted: one pool unit per worker must fit.
pub const MEMORY_BYTES_MIN: u64 = 1 << 20;
