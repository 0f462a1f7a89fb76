//! ringsync: exact, bounded file-tree copies through per-core io_uring workers.
//!
//! Layers (each module's doc says its job and its must-nots):
//! - [`cli`]: arguments → typed [`config`];
//! - [`ring`]: the only `unsafe`: io_uring and sync backends, the buffer pool;
//! - [`engine`]: pinned workers, directory scans, file copy state machines;
//! - [`stream`]: the record stream's codec (docs/stream.md), no I/O; [`stream_io`] moves its
//!   bytes; [`send`] and [`receive`] make and apply streams; [`remote`] runs them through a
//!   remote shell (mirror to and from another machine);
//! - [`filter`]: which entries a run takes (rsync's include/exclude rules, `--files-from`, `-x`);
//! - [`meta`]: metadata read from statx and applied to targets;
//! - [`roots`]: SRC and DST checked before a run (overlap, single-entry sources);
//! - [`remove`]: removing an entry and everything below it, never following a symlink;
//! - [`error`], [`progress`], [`report`], [`summary`]: reporting.

#![deny(unsafe_op_in_unsafe_fn)]

/// `eprintln!` that cannot panic (it shadows std's in this crate): with stderr closed
/// (`ringsync mirror ... 2>&1 | head`), std's panics at the next message and stops a run
/// half-way, temporaries left behind. A message that cannot be written is dropped; the exit
/// status still says what happened.
macro_rules! eprintln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub mod bench;
pub mod bwlimit;
pub mod cli;
pub mod config;
pub mod copy;
pub mod diff;
pub mod dump;
pub mod engine;
pub mod error;
pub mod failpoint;
pub mod filter;
pub mod listing;
pub mod meta;
pub mod mirror;
pub mod mounts;
pub mod moves;
pub mod progress;
pub mod receive;
pub mod remote;
pub mod remove;
pub mod report;
pub mod ring;
pub mod roots;
pub mod send;
pub mod signals;
pub mod stream;
pub mod stream_io;
pub mod summary;
pub mod verify;
