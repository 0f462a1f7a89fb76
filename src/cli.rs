//! Command-line parsing and validation into a typed [`CopyConfig`]. No I/O beyond reading the
//! number of online cores for the default thread count.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::filter::{FilterSpec, RuleSource};

use crate::config::{
    BenchConfig, BenchMode, BenchPath, CopyConfig, DataPath, DiffConfig, EngineChoice, Fsync, MirrorConfig,
    Reflink, Renames, MEMORY_BYTES_DEFAULT, MEMORY_BYTES_MIN,
};

const EXIT_CODES: &str =
    "Exit status (copy, mirror): 0 all copied; 1 fatal (nothing or not everything could start); \
2 usage; 3 partial transfer (some entries failed, each reported on stderr); 4 busy (mirror: \
another mirror holds the target's lock; nothing written); 5 complete except for source entries \
that vanished during the run; 8 --verify found a file whose bytes on the target differ from the \
source's. diff: 0 (1 with --exit-code and differences), 2 trouble.";

const COPY_HELP: &str = "Examples:
  ringsync copy /data /backup/data            # the contents of /data into /backup/data
  ringsync copy -n /data /backup/data         # what would be created (+) or replaced (M, T)
  ringsync copy --exclude '*.tmp' --exclude /cache/ -v /data /backup/data
  ringsync copy big.iso /mnt/usb/             # one file, into a directory
  ringsync copy --bwlimit 50MB/s --fsync file /data /mnt/nas/data

A trailing '/' on SRC changes nothing: SRC's contents always go into DST (rsync's 'SRC/').
Exit status: 0 done; 1 fatal; 2 usage (nothing created); 3 some entries failed; 5 source \
entries vanished; 8 --verify found a mismatch; 130 interrupted (unfinished files removed). Contract: docs/copy.md.";

const MIRROR_HELP: &str = "Examples:
  ringsync mirror /data /backup/data                  # make /backup/data equal /data
  ringsync mirror -n /data /backup/data               # list what would change, touch nothing
  ringsync mirror -v --log-file /var/log/ringsync.log /data /backup/data   # for cron
  ringsync mirror --exclude '*.o' --delete-excluded /src /backup/src
  ringsync mirror --prev /snap/monday /snap/tuesday /backup/data   # btrfs snapshots

Exit status: 0 DST equals SRC; 1 fatal; 2 usage; 3 some entries failed (DST stays marked \
dirty; the next run compares it in full); 4 busy (another mirror runs into DST); 5 source \
entries vanished; 8 --verify found a mismatch; 130 interrupted. Contract: docs/mirror.md and docs/copy.md.";

const CHECK_HELP: &str = "Every entry of both trees is compared: type, size, every byte of \
regular files (whatever their sizes and mtimes say), symlink targets, device numbers, mode, owner, \
mtime, the xattrs a copy carries, hardlink groups. Atimes are not compared (reading a tree moves \
them). The lines say what differs from DST to SRC, in the diff format ('+ PATH': SRC has it, \
DST does not; '- PATH': DST only; 'M', 'A', 'T', 'L' as in diff), which is what `ringsync mirror \
SRC DST` would change. Exit status: 0 DST equals SRC; 1 they differ; 2 trouble (an entry could \
not be read: said on stderr).

Examples:
  ringsync check /data /backup/data                   # after a copy or mirror: is it exact?
  ringsync check --json /data /backup/data | jq -r .path";

const DIFF_HELP: &str = "One line per change, sorted by path, TAB-separated: '+ PATH' created, \
'- PATH' deleted, 'M PATH' content (data, symlink target, device), 'A PATH' attributes only \
(atime alone only with --atimes), 'T PATH' type changed, 'L PATH' hardlink group changed, \
'R OLD NEW' renamed. Paths are relative ('.' is the root); non-printable and non-UTF-8 bytes \
and the backslash are escaped as \\xHH and \\\\; in --json, paths are JSON strings, or base64 \
under path_b64 when not UTF-8. Exit status: 0, or 1 with --exit-code when there are \
differences; 2 trouble.

Examples:
  ringsync diff /snap/monday /snap/tuesday            # what changed between two snapshots
  ringsync diff --exit-code /data /backup/data        # exit 1 when they differ (for scripts)
  ringsync diff --checksum /data /backup/data         # compare bytes, not size and mtime
  ringsync diff --json /a /b | jq -r 'select(.change==\"deleted\") | .path'";

const DUMP_HELP: &str = "Lines: SEQUENCE, OFFSET, TYPE, then key=value fields (names escaped as \
in diff); --json: one object per record, its position in the stream as \"at\". Exit status: 0 the stream verified to END; 1 damaged, truncated (the last good \
checkpoint is named) or unreadable; 2 usage.

Examples:
  ringsync dump backup.stream
  ringsync dump --json backup.stream | jq -r 'select(.type==\"FILE\") | .name'
  ringsync dump < backup.stream > /dev/null && echo intact";

const SEND_HELP: &str = "The stream goes to standard output (never to a terminal) or to -o FILE. \
Records come in a fixed order (names sorted in every directory), with a CHECKPOINT every 64 MiB \
or 4096 entries and END last. An entry that cannot be read (or a file that changed while it was \
read) is sent as SKIPPED: the receiver keeps what it has under that name. With --from PREV \
the stream holds only what changed from PREV to SRC (renames as renames on one filesystem or \
between btrfs snapshots); the receiver applies it only if the last stream it applied was of \
PREV, unchanged since: PREV and SRC should be snapshots. Exit status: 0; 1 fatal (the stream \
ends without END); 2 usage; 3 some entries skipped; 5 source entries vanished; 130 \
interrupted.

Examples:
  ringsync send /data | ringsync receive /backup/data
  btrfs subvolume snapshot -r /data /snap/mon && ringsync send /snap/mon | ringsync receive /backup/data
  btrfs subvolume snapshot -r /data /snap/tue && ringsync send --from /snap/mon /snap/tue | ringsync receive /backup/data
  ringsync send /data -o data.stream && ringsync dump data.stream > /dev/null
  ringsync send /data | ssh host ringsync receive /backup/data
  ringsync send --bwlimit 20M /data > /mnt/tape/data.stream";

const RECEIVE_HELP: &str = "Safe with a stream from a stranger: every name is one component \
resolved beneath DST through held directory descriptors, never through a symlink; nothing \
is published before its checkpoint verified; file data goes to temporary names chosen here. \
As root, owners, devices and all xattrs are applied (an exact replica needs them): use \
--drop-privileged for a stream you do not trust. DST is locked (a second receive exits 4) \
and marked dirty until the stream was applied to END. Exit status: 0 DST is what the stream \
describes; 1 the stream was damaged, truncated or refused (nothing after its last good \
checkpoint was published), or DST could not be set up; 2 usage; 3 some entries could not be \
applied or were skipped by the sender; 4 busy; 130 interrupted. Format and trust model: \
docs/stream.md.

Examples:
  ringsync send /data | ringsync receive /backup/data
  ringsync receive -i data.stream /restore/data
  ssh host ringsync send /data | ringsync receive --drop-privileged /backup/data";

const COMPLETIONS_HELP: &str = "Examples:
  ringsync completions bash > /etc/bash_completion.d/ringsync
  ringsync completions zsh > \"${fpath[1]}/_ringsync\"
  ringsync completions fish > ~/.config/fish/completions/ringsync.fish";

const MAN_HELP: &str = "Examples:
  ringsync man --dir /usr/local/share/man/man1 && mandb -q   # then: man ringsync-copy
  ringsync man copy | man -l -
  ringsync man > ringsync.1";

#[derive(Parser, Debug)]
#[command(name = "ringsync", version, about = "Exact, parallel file-tree copies through per-core io_uring workers", after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Copy the contents of SRC into DST (created if missing): content, holes, mode, owner,
    /// ns times, symlinks, hardlinks, xattrs, fifos, devices. Same-named target entries are replaced.
    #[command(after_help = COPY_HELP)]
    Copy(CopyArgs),
    /// Make DST identical to SRC, doing only the needed work: changed files are written to a
    /// temporary name and renamed into place, extraneous entries deleted, attributes fixed.
    /// DST is locked while it runs and marked dirty until a run finishes without errors.
    #[command(after_help = MIRROR_HELP)]
    Mirror(MirrorArgs),
    /// Show what changed from OLD to NEW (one line per change, like `zfs diff`).
    #[command(after_help = DIFF_HELP)]
    Diff(DiffArgs),
    /// Check that DST equals SRC, reading every byte of both (like `rclone check`): print
    /// what differs in the diff format, exit 1 when anything does.
    #[command(after_help = CHECK_HELP)]
    Check(CheckArgs),
    /// Measure copy paths against a disk: io_uring (vectored, fixed buffers, O_DIRECT),
    /// pread/pwrite, copy_file_range, splice and reflink, across block sizes, queue depths and
    /// threads. Makes (and removes) its own test files.
    #[command(after_help = BENCH_HELP)]
    Bench(BenchArgs),
    /// Write SRC as a record stream (docs/stream.md) on stdout or into a file: every entry,
    /// its data (holes not sent), owner, mode, ns times, xattrs and hardlinks, checksummed.
    #[command(after_help = SEND_HELP)]
    Send(SendArgs),
    /// Make DST what a record stream describes (stdin, or -i FILE). A full stream into a
    /// non-empty DST behaves like mirror: extraneous entries are deleted; an incremental one
    /// (send --from) is applied only to the state it was made from. Files are written to
    /// temporary names and renamed into place only after their hash verified.
    #[command(after_help = RECEIVE_HELP)]
    Receive(ReceiveArgs),
    /// List and verify a record stream (docs/stream.md): one line per record; every CRC, the
    /// chain hash and END are checked, and a defect is reported with its offset and sequence.
    #[command(after_help = DUMP_HELP)]
    Dump {
        /// The stream [default: standard input].
        file: Option<PathBuf>,
        /// One JSON object per record.
        #[arg(long)]
        json: bool,
    },
    /// The other machine's end of a remote mirror, run by `mirror` through the remote shell
    /// (protocol: docs/stream.md, section 8). Not for use by hand.
    #[command(hide = true)]
    Serve {
        #[command(subcommand)]
        role: ServeRole,
    },
    /// Print a shell completion script on stdout.
    #[command(after_help = COMPLETIONS_HELP)]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) on stdout: ringsync(1), or a subcommand's
    /// (ringsync-copy(1), ...); --dir writes them all.
    #[command(after_help = MAN_HELP)]
    Man {
        /// The subcommand whose page to print (copy, mirror, diff, bench, ...).
        command: Option<String>,
        /// Write every page (ringsync.1, ringsync-copy.1, ...) into DIR instead.
        #[arg(long, value_name = "DIR", conflicts_with = "command")]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ServeRole {
    /// Greet, say DST's resume token, apply the stream on stdin to DST.
    Receive {
        dst: PathBuf,
        #[arg(long)]
        no_fsync: bool,
        #[arg(long, short)]
        quiet: bool,
    },
    /// Greet, then write SRC's listing on stdout (for a pull's --dry-run, -v, --json).
    List {
        src: PathBuf,
        /// The receiving end runs as root (owners and every xattr namespace count).
        #[arg(long)]
        root: bool,
        /// Hash every regular file's content into the listing.
        #[arg(long)]
        checksum: bool,
        /// Read the filter rules (one JSON line) from stdin first.
        #[arg(long)]
        filters: bool,
        /// Compress the listing (zstd at this level).
        #[arg(long, value_name = "LEVEL", value_parser = clap::value_parser!(i32).range(1..=19))]
        compress: Option<i32>,
        #[arg(long, short)]
        quiet: bool,
    },
    /// Greet, then write SRC's stream on stdout.
    Send {
        src: PathBuf,
        #[arg(long, value_name = "TOKEN")]
        resume: Option<String>,
        /// Read a listing of DST on stdin first and send only the differences.
        #[arg(long, conflicts_with = "resume")]
        listing: bool,
        /// Read the filter rules (one JSON line) from stdin first.
        #[arg(long, requires = "listing")]
        filters: bool,
        /// Delete nothing in DST (a copy).
        #[arg(long, requires = "listing")]
        no_delete: bool,
        /// The listing will say that the receiving end runs as root (SRC is walked for it
        /// while the listing comes; a listing that says otherwise is walked for again).
        #[arg(long, requires = "listing")]
        root: bool,
        /// The listing will carry content hashes (likewise).
        #[arg(long, requires = "listing")]
        checksum: bool,
        /// Take SRC's state id for the stream's target, as a full stream does (`--prev`).
        #[arg(long, requires = "listing")]
        state: bool,
        /// The incremental stream from PREV (a snapshot of SRC) when PREV's state id is ID,
        /// the state DST equals (`--prev` when pulling); a status line says whether it is.
        #[arg(long, value_name = "PREV", conflicts_with_all = ["resume", "listing"], requires = "expect")]
        from: Option<PathBuf>,
        #[arg(long, value_name = "ID", requires = "from")]
        expect: Option<String>,
        /// Compress the stream, and read the listing compressed (zstd at this level).
        #[arg(long, value_name = "LEVEL", value_parser = clap::value_parser!(i32).range(1..=19))]
        compress: Option<i32>,
        #[arg(long, short)]
        quiet: bool,
    },
}

const BENCH_HELP: &str = "Per combination: MB/s (10^6 bytes/s), IOPS, CPU seconds per GB \
(whole process) and latency p50/p99/p99.9/max per operation (copy: one block from its read's \
submission to its write's completion). Each pass over the files ends with fdatasync (timed) and, \
with the default cold cache, drops the files' pages (POSIX_FADV_DONTNEED; as root also \
drop_caches before each combination). Paths this filesystem or kernel cannot do are listed as \
'unsupported here'. Wider sweep: --modes read,write,copy --block-sizes 4K,64K,1M,8M \
--qd 1,8,32,128 --threads 1,2. Exit status: 0; 1 could not set up; 2 usage; 3 some combination \
failed; 130 interrupted (the test files are removed unless --keep).

Examples:
  ringsync bench --dir /mnt/disk                        # the default sweep, about 2 minutes
  ringsync bench --dir /mnt/disk --size 256M --runtime 2 --plot bench.svg
  ringsync bench --files /mnt/disk/bench --paths uring-direct,psync --qd 1,32
  ringsync bench --dir /mnt/disk --modes read,write,copy --block-sizes 4K,1M --json";

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchPathArg {
    UringVec,
    UringFixed,
    UringDirect,
    Psync,
    Cfr,
    Splice,
    Reflink,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchModeArg {
    Read,
    Write,
    Copy,
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Directory in which to make the test directory [default: the current directory].
    #[arg(long, conflicts_with = "files")]
    pub dir: Option<PathBuf>,
    /// Keep the test files in DIR itself and reuse them (as fio does): src.N and dst.N of
    /// exactly --size are used as they are; missing ones, and files of another size, are laid
    /// out (again); nothing is removed at the end. DIR must hold test files only: dst.N is
    /// overwritten.
    #[arg(long, value_name = "DIR")]
    pub files: Option<PathBuf>,
    /// Size of each test file (one source and one target file per thread).
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub size: u64,
    /// Keep the test files afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Copy paths to measure [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub paths: Vec<BenchPathArg>,
    /// read (source only), write (target only), copy (both).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "copy")]
    pub modes: Vec<BenchModeArg>,
    /// Bytes per operation.
    #[arg(long, value_delimiter = ',', default_value = "64K,1M", value_parser = parse_size)]
    pub block_sizes: Vec<u64>,
    /// Operations in flight per thread (io_uring paths).
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    pub qd: Vec<u32>,
    /// Thread counts to try, each thread on its own pair of files.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub threads: Vec<u32>,
    /// Measured seconds per combination.
    #[arg(long, default_value_t = 5.0)]
    pub runtime: f64,
    /// Warm-up seconds per combination, not measured [default: runtime/10, 0.1 to 1].
    #[arg(long)]
    pub warmup: Option<f64>,
    /// Cap on one combination's buffers (bs x qd x threads; 1 MiB or more per thread counts as whole 2 MiB huge pages); bigger ones are skipped.
    #[arg(long, default_value = "512M", value_parser = parse_size)]
    pub memory: u64,
    /// Leave the page cache alone between passes (default: cold cache).
    #[arg(long)]
    pub warm: bool,
    /// One JSON document on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also draw throughput against block size (one panel per path, a line per queue depth).
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// No notices on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

impl BenchArgs {
    pub fn validate(&self) -> Result<BenchConfig, String> {
        if self.memory < MEMORY_BYTES_MIN {
            return Err(format!("--memory must be at least {}M", MEMORY_BYTES_MIN >> 20));
        }
        if self.size < 4096 || self.size % 4096 != 0 {
            return Err("--size must be a multiple of 4K".into());
        }
        if !(self.runtime.is_finite() && self.runtime > 0.0 && self.runtime <= 3600.0) {
            return Err("--runtime must be between 0 and 3600 seconds".into());
        }
        let warmup = self.warmup.unwrap_or((self.runtime / 10.0).clamp(0.1, 1.0));
        if !(warmup.is_finite() && (0.0..=600.0).contains(&warmup)) {
            return Err("--warmup must be between 0 and 600 seconds".into());
        }
        if let Some(bs) = self.block_sizes.iter().find(|b| **b == 0 || **b > 1 << 30) {
            return Err(format!("--block-sizes: {bs} is outside 1 byte to 1G"));
        }
        if let Some(q) = self.qd.iter().find(|q| **q == 0 || **q > 4096) {
            return Err(format!("--qd: {q} is outside 1 to 4096"));
        }
        if let Some(t) = self.threads.iter().find(|t| **t == 0 || **t > 256) {
            return Err(format!("--threads: {t} is outside 1 to 256"));
        }
        let dedup = |mut v: Vec<u64>| {
            let mut seen = Vec::new();
            v.retain(|x| {
                let new = !seen.contains(x);
                seen.push(*x);
                new
            });
            v
        };
        let paths = if self.paths.is_empty() {
            BenchPath::ALL.to_vec()
        } else {
            BenchPath::ALL
                .into_iter()
                .filter(|p| self.paths.iter().any(|a| bench_path(*a) == *p))
                .collect()
        };
        Ok(BenchConfig {
            dir: self.dir.clone(),
            files: self.files.clone(),
            size: self.size,
            keep: self.keep || self.files.is_some(),
            paths,
            modes: BenchMode::ALL
                .into_iter()
                .filter(|m| {
                    self.modes.iter().any(|a| {
                        matches!(
                            (a, m),
                            (BenchModeArg::Read, BenchMode::Read)
                                | (BenchModeArg::Write, BenchMode::Write)
                                | (BenchModeArg::Copy, BenchMode::Copy)
                        )
                    })
                })
                .collect(),
            block_sizes: dedup(self.block_sizes.clone()),
            qds: dedup(self.qd.iter().map(|q| *q as u64).collect())
                .into_iter()
                .map(|q| q as u32)
                .collect(),
            threads: dedup(self.threads.iter().map(|t| *t as u64).collect())
                .into_iter()
                .map(|t| t as u32)
                .collect(),
            runtime: std::time::Duration::from_secs_f64(self.runtime),
            warmup: std::time::Duration::from_secs_f64(warmup),
            memory_bytes: self.memory,
            cold: !self.warm,
            json: self.json,
            plot: self.plot.clone(),
            quiet: self.quiet,
        })
    }
}

fn bench_path(a: BenchPathArg) -> BenchPath {
    match a {
        BenchPathArg::UringVec => BenchPath::UringVec,
        BenchPathArg::UringFixed => BenchPath::UringFixed,
        BenchPathArg::UringDirect => BenchPath::UringDirect,
        BenchPathArg::Psync => BenchPath::Psync,
        BenchPathArg::Cfr => BenchPath::Cfr,
        BenchPathArg::Splice => BenchPath::Splice,
        BenchPathArg::Reflink => BenchPath::Reflink,
    }
}

#[derive(clap::Args, Debug)]
pub struct CopyArgs {
    /// Source: a directory (its contents are copied; a trailing '/' changes nothing), or one
    /// file, symlink or special file.
    pub src: PathBuf,
    /// Target directory (created if missing); for a single-entry SRC, an existing directory to
    /// copy into, or the new name.
    pub dst: PathBuf,
    /// Print what would be created or replaced (diff format) and touch nothing.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// A symlink given as SRC is followed: what it points to is copied, under its name.
    #[arg(long = "dereference-src", short = 'L')]
    pub dereference_src: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub data: DataArgs,
}

/// How to reach the other machine (`[user@]host:PATH` sides).
#[derive(clap::Args, Debug, Default)]
pub struct RemoteArgs {
    /// The remote shell for a [user@]host:PATH side (split as a shell would: "ssh -p 2222").
    #[arg(
        long = "rsh",
        short = 'e',
        value_name = "CMD",
        default_value = "ssh",
        help_heading = "Remote"
    )]
    pub rsh: String,
    /// ringsync on the other machine: a name on its PATH, or a path.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "ringsync",
        help_heading = "Remote"
    )]
    pub remote_bin: OsString,
    /// After a dropped connection, reconnect and resume up to N times (waiting 1, 2, 4, ...
    /// up to 30 s between).
    #[arg(long, value_name = "N", default_value_t = 0, help_heading = "Remote")]
    pub retries: u32,
    /// Compress what crosses the link (zstd: the listing and the stream) for slow links;
    /// --bwlimit then counts compressed bytes.
    #[arg(long, short = 'z', help_heading = "Remote")]
    pub compress: bool,
    /// Take the connection as dropped when no data has moved for SECS seconds (exit 6, or
    /// a retry with --retries); 0: never. It must exceed the longest walk of SRC or DST
    /// (nothing moves while the remote end lists a large DST).
    #[arg(long, value_name = "SECS", default_value_t = 0, help_heading = "Remote")]
    pub timeout: u64,
    /// zstd level for --compress (1 fastest .. 19 smallest).
    #[arg(long, value_name = "N", default_value_t = crate::stream_io::COMPRESS_LEVEL,
          value_parser = clap::value_parser!(i32).range(1..=19), requires = "compress", help_heading = "Remote")]
    pub compress_level: i32,
}

/// Which entries a copy or mirror takes (rsync's rules; docs/copy.md, "Filters").
#[derive(clap::Args, Debug, Default)]
#[command(next_help_heading = "Filters")]
pub struct FilterArgs {
    /// Exclude entries matching PAT (rsync's pattern rules; first matching rule wins).
    #[arg(long, value_name = "PAT", allow_hyphen_values = true)]
    pub exclude: Vec<OsString>,
    /// Include entries matching PAT, even if a later rule excludes them.
    #[arg(long, value_name = "PAT", allow_hyphen_values = true)]
    pub include: Vec<OsString>,
    /// Exclude patterns from FILE, one per line ('-' reads standard input).
    #[arg(long, value_name = "FILE")]
    pub exclude_from: Vec<PathBuf>,
    /// Include patterns from FILE, one per line ('-' reads standard input).
    #[arg(long, value_name = "FILE")]
    pub include_from: Vec<PathBuf>,
    /// A rule: '- PAT' or 'exclude PAT', '+ PAT' or 'include PAT'.
    #[arg(long, value_name = "RULE", allow_hyphen_values = true)]
    pub filter: Vec<OsString>,
    /// Take only the paths listed in FILE (relative to SRC; newline- or NUL-separated).
    #[arg(long, value_name = "FILE")]
    pub files_from: Option<PathBuf>,
    /// With --files-from: also take everything below a listed directory.
    #[arg(short = 'r', long, requires = "files_from")]
    pub recursive: bool,
    /// Do not descend into directories on another filesystem (they are made, empty).
    #[arg(short = 'x', long)]
    pub one_file_system: bool,
}

impl FilterArgs {
    /// The selection, with the rules in command-line order (clap keeps each option's values
    /// apart; `matches` has their positions).
    pub fn spec(&self, matches: Option<&clap::ArgMatches>, delete_excluded: bool) -> FilterSpec {
        let mut rules: Vec<(usize, RuleSource)> = Vec::new();
        let mut take = |id: &str, make: &dyn Fn(usize) -> RuleSource, n: usize| {
            let idx: Vec<usize> = matches
                .and_then(|m| m.indices_of(id))
                .map(|i| i.collect())
                .unwrap_or_else(|| (0..n).collect());
            for (k, at) in idx.into_iter().enumerate().take(n) {
                rules.push((at, make(k)));
            }
        };
        take(
            "exclude",
            &|k| RuleSource::Exclude(self.exclude[k].clone()),
            self.exclude.len(),
        );
        take(
            "include",
            &|k| RuleSource::Include(self.include[k].clone()),
            self.include.len(),
        );
        take(
            "filter",
            &|k| RuleSource::Filter(self.filter[k].clone()),
            self.filter.len(),
        );
        take(
            "exclude_from",
            &|k| RuleSource::ExcludeFrom(self.exclude_from[k].clone()),
            self.exclude_from.len(),
        );
        take(
            "include_from",
            &|k| RuleSource::IncludeFrom(self.include_from[k].clone()),
            self.include_from.len(),
        );
        rules.sort_by_key(|(at, _)| *at);
        FilterSpec {
            rules: rules.into_iter().map(|(_, r)| r).collect(),
            files_from: self.files_from.clone(),
            recursive: self.recursive,
            one_file_system: self.one_file_system,
            delete_excluded,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct MirrorArgs {
    /// Source directory.
    pub src: PathBuf,
    /// Target directory (created if missing).
    pub dst: PathBuf,
    /// SNAP is the snapshot DST was last mirrored from: diff SNAP against SRC locally instead
    /// of scanning DST, applying renames as renames. Ignored (with a notice, falling back to a
    /// full compare) unless DST's record names SNAP and DST is clean. With a remote side SNAP
    /// is on SRC's machine, and DST is not listed when its record says it equals SNAP.
    #[arg(long, value_name = "SNAP")]
    pub prev: Option<PathBuf>,
    /// Print what would change (diff format) and touch nothing.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Compare file contents instead of trusting size and mtime.
    #[arg(long, short = 'c')]
    pub checksum: bool,
    /// Also delete excluded entries from DST (by default they are left alone).
    #[arg(long)]
    pub delete_excluded: bool,
    /// With --dry-run and -v: also list entries whose atime alone differs (they are fixed
    /// either way).
    #[arg(long)]
    pub atimes: bool,
    /// Walk and compare all of SRC and DST. By default, when SRC is a btrfs subvolume (run as
    /// root) and DST's record says which generation of it DST equals, only what btrfs says
    /// changed since is compared: a change made in DST behind the mirror's back is then not
    /// seen (docs/mirror.md).
    #[arg(long)]
    pub full_walk: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub data: DataArgs,
}

#[derive(clap::Args, Debug)]
pub struct DiffArgs {
    /// The earlier tree (e.g. the older snapshot).
    pub old: PathBuf,
    /// The later tree.
    pub new: PathBuf,
    /// NDJSON: one object per change.
    #[arg(long)]
    pub json: bool,
    /// Exit 1 when there are differences.
    #[arg(long)]
    pub exit_code: bool,
    /// Compare file contents instead of trusting size and mtime.
    #[arg(long, short = 'c')]
    pub checksum: bool,
    /// Detect renames by inode: auto = when OLD and NEW are on one filesystem or both on btrfs
    /// (snapshots of one subvolume).
    #[arg(long, value_enum, default_value_t = RenamesArg::Auto)]
    pub renames: RenamesArg,
    /// I/O engine for the statx calls.
    #[arg(long, value_enum, default_value_t = EngineArg::Auto)]
    pub engine: EngineArg,
    /// Walker threads [default: online cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// No warnings; errors are still printed.
    #[arg(long, short)]
    pub quiet: bool,
    /// Also list entries whose atime alone differs.
    #[arg(long)]
    pub atimes: bool,
}

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// The source (the reference).
    pub src: PathBuf,
    /// The copy to check.
    pub dst: PathBuf,
    /// NDJSON: one object per difference.
    #[arg(long)]
    pub json: bool,
    /// I/O engine for the statx calls.
    #[arg(long, value_enum, default_value_t = EngineArg::Auto)]
    pub engine: EngineArg,
    /// Walker threads [default: online cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// No warnings; errors are still printed.
    #[arg(long, short)]
    pub quiet: bool,
}

impl CheckArgs {
    /// A check is a diff from DST to SRC that reads every byte and exits 1 on differences.
    pub fn validate(&self) -> Result<DiffConfig, String> {
        Ok(DiffConfig {
            command: "check",
            old: self.dst.clone(),
            new: self.src.clone(),
            json: self.json,
            exit_code: true,
            checksum: true,
            renames: Renames::Never,
            threads: threads(self.threads)?,
            engine: engine(self.engine),
            quiet: self.quiet,
            atimes: false,
        })
    }
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum RenamesArg {
    Auto,
    Always,
    Never,
}

#[derive(clap::Args, Debug)]
pub struct SendArgs {
    /// The directory to send.
    pub src: PathBuf,
    /// Write the stream to FILE instead of standard output.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// I/O engine for reading files.
    #[arg(long, value_enum, default_value_t = EngineArg::Auto)]
    pub engine: EngineArg,
    /// Cap on read-buffer memory (same units as copy's --memory).
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    pub memory: u64,
    /// Limit the stream to RATE bytes per second (wire bytes; units as copy's --bwlimit).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub bwlimit: Option<u64>,
    /// No progress line or warnings; errors are still printed.
    #[arg(long, short)]
    pub quiet: bool,
    /// Show progress even when stderr is not a terminal (a plain line every second).
    #[arg(long)]
    pub progress: bool,
    /// Continue an interrupted stream from the receiver's token (`ringsync receive --token
    /// DST`): the same stream is made again, and data before the token's checkpoint is not
    /// sent. Refused when SRC changed since.
    #[arg(long, value_name = "TOKEN")]
    pub resume: Option<String>,
    /// Send an incremental stream from PREV to SRC: what changed since PREV (renames as
    /// renames where inode numbers identify files: one filesystem, or btrfs snapshots). PREV
    /// must be the unchanged directory whose stream the receiver last applied (a snapshot);
    /// the receiver refuses the stream otherwise. With --resume, give the same --from.
    #[arg(long, value_name = "PREV")]
    pub from: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct ReceiveArgs {
    /// The target directory (created if missing).
    pub dst: PathBuf,
    /// Read the stream from FILE instead of standard input.
    #[arg(long, short = 'i', value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Apply no owners, no setuid/setgid bits, no devices and only user.* xattrs: for a
    /// stream from someone you do not trust with root's powers.
    #[arg(long)]
    pub drop_privileged: bool,
    /// Print DST's resume token (left by an interrupted receive) and exit; exit 1 when none.
    #[arg(long)]
    pub token: bool,
    /// Do not make data durable before publishing it at each checkpoint (faster; a crash may
    /// then leave empty or torn files under final names).
    #[arg(long)]
    pub no_fsync: bool,
    /// No progress line or warnings; errors are still printed.
    #[arg(long, short)]
    pub quiet: bool,
    /// Show progress even when stderr is not a terminal (a plain line every second).
    #[arg(long)]
    pub progress: bool,
    /// After the final sync, read back every file received (its cached pages dropped first)
    /// and compare it with the BLAKE3 of each DATA record written; a mismatch exits 8 and
    /// DST stays marked dirty.
    #[arg(long)]
    pub verify: bool,
}

impl SendArgs {
    pub fn validate(&self) -> Result<crate::send::SendConfig, String> {
        check_memory(self.memory)?;
        let engine = crate::engine::choose_engine(engine(self.engine), self.quiet).map_err(|e| e.0)?;
        Ok(crate::send::SendConfig {
            src: self.src.clone(),
            out: self.output.clone(),
            engine,
            memory: self.memory,
            bwlimit: self.bwlimit,
            progress: crate::progress::mode(self.quiet, self.progress),
            quiet: self.quiet,
            from: self.from.clone(),
            listing: None,
            quiet_reader_gone: false,
            wire: None,
            wire_live: false,
            resume: self
                .resume
                .as_deref()
                .map(crate::stream::ResumeToken::decode)
                .transpose()
                .map_err(|e| format!("--resume: {e}"))?,
        })
    }
}

impl ReceiveArgs {
    pub fn validate(&self) -> Result<crate::receive::ReceiveConfig, String> {
        Ok(crate::receive::ReceiveConfig {
            dst: self.dst.clone(),
            input: self.input.clone(),
            drop_privileged: self.drop_privileged,
            fsync: !self.no_fsync,
            progress: crate::progress::mode(self.quiet, self.progress),
            quiet: self.quiet,
            check_dst_state: true,
            wire: None,
            verify: self.verify,
            one_way: true,
        })
    }
}

/// `--memory` bounds shared by every command with a buffer pool.
fn check_memory(memory: u64) -> Result<(), String> {
    if memory < MEMORY_BYTES_MIN {
        return Err(format!("--memory must be at least {}M", MEMORY_BYTES_MIN >> 20));
    }
    let ram = physical_memory_bytes();
    if memory > ram / 2 {
        return Err(format!(
            "--memory {}: more than half of this machine's memory ({} of {}); the buffer \
             pool is allocated and pinned up front, so this would starve the system \
             (the default, {}, is plenty: bigger pools do not copy faster)",
            crate::progress::human_bytes(memory as f64),
            crate::progress::human_bytes((ram / 2) as f64),
            crate::progress::human_bytes(ram as f64),
            crate::progress::human_bytes(MEMORY_BYTES_DEFAULT as f64),
        ));
    }
    Ok(())
}

/// Options of every command that moves data.
#[derive(clap::Args, Debug)]
pub struct DataArgs {
    /// I/O engine: io_uring, the portable pread/pwrite thread pool, or io_uring with fallback.
    #[arg(long, value_enum, default_value_t = EngineArg::Auto)]
    pub engine: EngineArg,
    /// Worker threads, one pinned per core [default: online cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Cap on data-buffer memory: K/M/G/KiB/MiB/GiB are powers of 1024, KB/MB/GB powers of
    /// 1000; at most half of physical memory.
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    pub memory: u64,
    /// Clone extents instead of copying data where the filesystem can (btrfs, xfs).
    #[arg(long, value_enum, default_value_t = ReflinkArg::Auto)]
    pub reflink: ReflinkArg,
    /// How data moves when not cloned: ring reads/writes from the buffer pool, in-kernel
    /// copy_file_range, or auto (copy_file_range for files of 1 MiB and more).
    #[arg(long, value_enum, default_value_t = DataPathArg::Auto)]
    pub data_path: DataPathArg,
    /// Durability: none; fsync each file; or one syncfs of the target at the end.
    #[arg(long, value_enum, default_value_t = FsyncArg::End)]
    pub fsync: FsyncArg,
    /// Limit file data copied to RATE bytes per second, all workers together (K/M/G and
    /// KiB/MiB/GiB are powers of 1024, KB/MB/GB powers of 1000: 50M = 50 MiB/s, 10MB/s =
    /// 10^7 B/s). Smooth: no 100 ms window goes much above RATE.
    /// Reflinked files move no data and are not limited.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub bwlimit: Option<u64>,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress line, summary or warnings; errors are still printed.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print one line per entry changed on stdout ('+' created, 'M' replaced, ...).
    #[arg(long, short)]
    pub verbose: bool,
    /// Append entry lines, errors and the summary to FILE, each stamped with UTC time and pid.
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// Show progress even when stderr is not a terminal (a plain line every second).
    #[arg(long)]
    pub progress: bool,
    /// After the final sync, read back every file written (its cached pages dropped first) and
    /// compare it with the BLAKE3 of what was read from the source; a mismatch exits 8. Every
    /// byte then passes through ringsync: no reflinks, no copy_file_range.
    #[arg(long)]
    pub verify: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum EngineArg {
    Auto,
    Uring,
    Sync,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum ReflinkArg {
    Auto,
    Always,
    Never,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum DataPathArg {
    Auto,
    Ring,
    Cfr,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum FsyncArg {
    None,
    File,
    End,
}

/// A size: a number (decimals allowed) and an optional case-insensitive suffix. `K`, `M`, `G`,
/// `T` and `KiB`, `MiB`, `GiB`, `TiB` are powers of 1024; `KB`, `MB`, `GB`, `TB` powers of 1000
/// (rsync's convention); `B` is bytes. `4096`, `64K`, `64MiB`, `64MB`, `1.5G`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (num, suffix) = (s[..split].trim_end(), &s[split..]);
    let mult: f64 = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024f64.powi(2),
        "g" | "gib" => 1024f64.powi(3),
        "t" | "tib" => 1024f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        _ => {
            return Err(format!(
                "unknown size suffix in '{s}' (K, M, G, T or KiB.. are powers of 1024; KB, MB, \
                 GB, TB powers of 1000)"
            ))
        }
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 64M)"))?;
    if !v.is_finite() || v < 0.0 || num.starts_with(['+', '-']) {
        return Err(format!("'{s}' is not a size (e.g. 64M)"));
    }
    let bytes = v * mult;
    if bytes >= u64::MAX as f64 {
        return Err(format!("'{s}' is too large"));
    }
    Ok(bytes.round() as u64)
}

/// `--bwlimit RATE`: a size per second (an optional `/s` after it), at least 1 KiB/s.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let s = s.strip_suffix("/s").or_else(|| s.strip_suffix("/S")).unwrap_or(s);
    let v = parse_size(s).map_err(|e| format!("{e}; RATE is bytes per second, e.g. 50M"))?;
    if v < 1024 {
        return Err(format!(
            "--bwlimit {s} is below the smallest rate, 1K (bytes per second)"
        ));
    }
    Ok(v)
}

/// Physical memory (sysinfo's total RAM), the bound for `--memory`.
fn physical_memory_bytes() -> u64 {
    let si = rustix::system::sysinfo();
    (si.totalram as u64).saturating_mul(si.mem_unit.max(1) as u64)
}

fn threads(t: Option<usize>) -> Result<usize, String> {
    match t {
        Some(0) => Err("--threads must be at least 1".into()),
        Some(n) if n > 1024 => Err("--threads must be at most 1024".into()),
        Some(n) => Ok(n),
        None => Ok(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)),
    }
}

fn engine(e: EngineArg) -> EngineChoice {
    match e {
        EngineArg::Auto => EngineChoice::Auto,
        EngineArg::Uring => EngineChoice::Uring,
        EngineArg::Sync => EngineChoice::Sync,
    }
}

impl CopyArgs {
    /// `matches`: this subcommand's matches, for the order of the filter rules.
    pub fn validate(&self, matches: Option<&clap::ArgMatches>) -> Result<CopyConfig, String> {
        let mut cfg = self.data.validate(&self.src, &self.dst)?;
        cfg.filter_spec = self.filter.spec(matches, false);
        Ok(cfg)
    }
}

impl MirrorArgs {
    /// `matches`: this subcommand's matches, for the order of the filter rules.
    pub fn validate(&self, matches: Option<&clap::ArgMatches>) -> Result<MirrorConfig, String> {
        let mut copy = self.data.validate(&self.src, &self.dst)?;
        copy.filter_spec = self.filter.spec(matches, self.delete_excluded);
        Ok(MirrorConfig {
            copy,
            prev: self.prev.clone(),
            dry_run: self.dry_run,
            checksum: self.checksum,
            json: self.data.json,
            atimes: self.atimes,
            full_walk: self.full_walk,
        })
    }
}

/// The options of a mirror or copy that matter with a remote side.
struct RemoteRun<'a> {
    src: &'a std::path::Path,
    dst: &'a std::path::Path,
    remote: &'a RemoteArgs,
    data: &'a DataArgs,
    filter: &'a FilterArgs,
    prev: Option<&'a std::path::Path>,
    checksum: bool,
    dry_run: bool,
    atimes: bool,
    delete_excluded: bool,
    copy: bool,
}

/// What [`MirrorArgs::remote`] and [`CopyArgs::remote`] return.
pub type RemoteRunOpts = (
    crate::remote::RemoteOpts,
    crate::remote::Side,
    crate::remote::Side,
);

impl RemoteRun<'_> {
    /// How to run it, or why not; `None` when both sides are local.
    fn opts(&self, matches: Option<&clap::ArgMatches>) -> Option<Result<RemoteRunOpts, String>> {
        use crate::remote::{parse, Side};
        let daemon = |p: &std::path::Path| {
            let b = p.as_os_str().as_encoded_bytes();
            b.windows(2)
                .position(|w| w == b"::")
                .is_some_and(|i| !b[..i].contains(&b'/'))
        };
        let (src, dst) = (parse(self.src.as_os_str()), parse(self.dst.as_os_str()));
        if src.is_none() && dst.is_none() {
            return None;
        }
        Some((|| {
            if daemon(self.src) || daemon(self.dst) {
                return Err("host::module (rsync's daemon) is not supported: use host:PATH, over ssh".into());
            }
            let side = |r: Option<crate::remote::Remote>, p: &std::path::Path| match r {
                Some(r) => Side::Remote(r),
                None => Side::Local(p.to_path_buf()),
            };
            if src.is_some() && dst.is_some() {
                return Err("SRC and DST are both remote: one side must be this machine".into());
            }
            if [&src, &dst]
                .into_iter()
                .flatten()
                .any(|r| r.path.as_os_str().is_empty())
            {
                return Err("host: with no path would be the remote home directory, which a mirror makes equal to SRC (deleting the rest): give the path (host:PATH, host:. for the home itself)".into());
            }
            let d = self.data;
            // --prev names a snapshot on SRC's machine: a local path when pushing, a path on
            // the remote host (`PATH` or `host:PATH`) when pulling.
            let prev = match (self.prev, &src) {
                (None, _) => None,
                (Some(p), None) => match parse(p.as_os_str()) {
                    Some(_) => {
                        return Err(format!(
                            "--prev {}: when pushing, the snapshot is on this machine (SRC's)",
                            p.display()
                        ))
                    }
                    None => Some(p.to_path_buf()),
                },
                (Some(p), Some(s)) => match parse(p.as_os_str()) {
                    Some(r) if r.host != s.host => {
                        return Err(format!(
                            "--prev {}: when pulling, the snapshot is on SRC's machine ({})",
                            p.display(),
                            s.host
                        ))
                    }
                    Some(r) => Some(r.path),
                    None => Some(p.to_path_buf()),
                },
            };
            let unsupported = [
                (d.threads.is_some(), "--threads"),
                (!matches!(d.reflink, ReflinkArg::Auto), "--reflink"),
                (!matches!(d.data_path, DataPathArg::Auto), "--data-path"),
                (matches!(d.fsync, FsyncArg::File), "--fsync file"),
                (d.verify, "--verify"),
            ];
            if let Some((_, name)) = unsupported.iter().find(|(on, _)| *on) {
                return Err(format!(
                    "{name} is not supported with a remote side yet (see docs/stream.md, section 8.4)"
                ));
            }
            check_memory(d.memory)?;
            let engine = crate::engine::choose_engine(engine(d.engine), d.quiet).map_err(|e| e.0)?;
            let opts = crate::remote::RemoteOpts {
                rsh: self.remote.rsh.clone(),
                remote_bin: self.remote.remote_bin.clone(),
                retries: self.remote.retries,
                quiet: d.quiet,
                fsync: !matches!(d.fsync, FsyncArg::None),
                engine,
                memory: d.memory,
                bwlimit: d.bwlimit,
                progress: crate::progress::mode(d.quiet, d.progress),
                dry_run: self.dry_run,
                json: d.json,
                verbose: d.verbose,
                atimes: self.atimes,
                log_file: d.log_file.clone(),
                filter_spec: self.filter.spec(matches, self.delete_excluded),
                copy: self.copy,
                checksum: self.checksum,
                prev,
                compress: self.remote.compress.then_some(self.remote.compress_level),
                timeout: (self.remote.timeout > 0)
                    .then(|| std::time::Duration::from_secs(self.remote.timeout)),
            };
            Ok((opts, side(src.clone(), self.src), side(dst.clone(), self.dst)))
        })())
    }
}

impl MirrorArgs {
    /// A mirror with a `[user@]host:PATH` side: how to run it, or why not. `None` when both
    /// sides are local.
    pub fn remote(&self, matches: Option<&clap::ArgMatches>) -> Option<Result<RemoteRunOpts, String>> {
        RemoteRun {
            src: &self.src,
            dst: &self.dst,
            remote: &self.remote,
            data: &self.data,
            filter: &self.filter,
            prev: self.prev.as_deref(),
            checksum: self.checksum,
            dry_run: self.dry_run,
            atimes: self.atimes,
            delete_excluded: self.delete_excluded,
            copy: false,
        }
        .opts(matches)
    }
}

impl CopyArgs {
    /// A copy with a `[user@]host:PATH` side (a mirror that deletes nothing): how to run it,
    /// or why not. `None` when both sides are local.
    pub fn remote(&self, matches: Option<&clap::ArgMatches>) -> Option<Result<RemoteRunOpts, String>> {
        let r = RemoteRun {
            src: &self.src,
            dst: &self.dst,
            remote: &self.remote,
            data: &self.data,
            filter: &self.filter,
            prev: None,
            checksum: false,
            dry_run: self.dry_run,
            atimes: false,
            delete_excluded: false,
            copy: true,
        }
        .opts(matches)?;
        Some(r.and_then(|o| {
            if self.dereference_src {
                return Err("-L/--dereference-src is not supported with a remote side yet".into());
            }
            Ok(o)
        }))
    }
}

impl DiffArgs {
    pub fn validate(&self) -> Result<DiffConfig, String> {
        Ok(DiffConfig {
            command: "diff",
            old: self.old.clone(),
            new: self.new.clone(),
            json: self.json,
            exit_code: self.exit_code,
            checksum: self.checksum,
            renames: match self.renames {
                RenamesArg::Auto => Renames::Auto,
                RenamesArg::Always => Renames::Always,
                RenamesArg::Never => Renames::Never,
            },
            threads: threads(self.threads)?,
            engine: engine(self.engine),
            quiet: self.quiet,
            atimes: self.atimes,
        })
    }
}

impl DataArgs {
    fn validate(&self, src: &std::path::Path, dst: &std::path::Path) -> Result<CopyConfig, String> {
        let threads = threads(self.threads)?;
        check_memory(self.memory)?;
        if matches!(self.data_path, DataPathArg::Cfr) && matches!(self.reflink, ReflinkArg::Never) {
            return Err(
                "--data-path cfr cannot honour --reflink never: copy_file_range clones extents on \
                        btrfs and xfs; use --data-path ring"
                    .into(),
            );
        }
        Ok(CopyConfig {
            src: src.to_path_buf(),
            dst: dst.to_path_buf(),
            engine: engine(self.engine),
            threads,
            memory_bytes: self.memory,
            reflink: match self.reflink {
                ReflinkArg::Auto => Reflink::Auto,
                ReflinkArg::Always => Reflink::Always,
                ReflinkArg::Never => Reflink::Never,
            },
            fsync: match self.fsync {
                FsyncArg::None => Fsync::None,
                FsyncArg::File => Fsync::File,
                FsyncArg::End => Fsync::End,
            },
            data_path: match self.data_path {
                DataPathArg::Auto => DataPath::Auto,
                DataPathArg::Ring => DataPath::Ring,
                DataPathArg::Cfr => DataPath::Cfr,
            },
            progress: !self.quiet,
            quiet: self.quiet,
            atomic: false,
            tmp_new: true,
            bwlimit: self.bwlimit,
            filter_spec: FilterSpec::default(),
            filter: Default::default(),
            verbose: self.verbose,
            log_file: self.log_file.clone(),
            progress_forced: self.progress,
            report: Default::default(),
            list_changes: true,
            verify: self.verify,
        })
    }
}

/// Default shown in help must match the constant.
const _: () = assert!(MEMORY_BYTES_DEFAULT == 64 << 20);

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("256m"), Ok(256 << 20));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("-1M").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("1e400").is_err());
    }

    #[test]
    fn size_suffixes_binary_and_decimal() {
        for s in ["64M", "64MiB", "64mib", "64 MiB", "67108864", "67108864B"] {
            assert_eq!(parse_size(s), Ok(64 << 20), "{s}");
        }
        for (s, v) in [
            ("64MB", 64_000_000u64),
            ("64mb", 64_000_000),
            ("1KB", 1000),
            ("2GB", 2_000_000_000),
        ] {
            assert_eq!(parse_size(s), Ok(v), "{s}");
        }
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("1TB"), Ok(1_000_000_000_000));
        assert!(parse_size("64MiBs").is_err());
        assert!(parse_size("64Mi").is_err());
    }

    #[test]
    fn rates() {
        use super::parse_rate;
        assert_eq!(parse_rate("50M"), Ok(50 << 20));
        assert_eq!(parse_rate("50M/s"), Ok(50 << 20));
        assert_eq!(parse_rate("1.5K"), Ok(1536));
        assert_eq!(parse_rate("10MB/s"), Ok(10_000_000));
        assert_eq!(parse_rate("10MiB/s"), Ok(10 << 20));
        assert!(parse_rate("100").is_err());
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
    }
}
