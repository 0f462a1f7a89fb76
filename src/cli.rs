//! Command-line parsing and validation into a typed [`CopyConfig`]. No I/O beyond reading the
//! number of online cores for the default thread count.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{
    CopyConfig, DataPath, EngineChoice, Fsync, Reflink, MEMORY_BYTES_DEFAULT, MEMORY_BYTES_MIN,
};

const EXIT_CODES: &str =
    "Exit status: 0 all copied; 1 fatal (nothing or not everything could start); 2 usage; \
3 partial transfer (some entries failed, each reported on stderr); 5 complete except for source \
entries that vanished during the run.";

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
    Copy(CopyArgs),
}

#[derive(clap::Args, Debug)]
pub struct CopyArgs {
    /// Source directory.
    pub src: PathBuf,
    /// Target directory (created if missing).
    pub dst: PathBuf,
    /// I/O engine: io_uring, the portable pread/pwrite thread pool, or io_uring with fallback.
    #[arg(long, value_enum, default_value_t = EngineArg::Auto)]
    pub engine: EngineArg,
    /// Worker threads, one pinned per core [default: online cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Cap on data-buffer memory, bytes with optional K/M/G suffix (powers of 1024).
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
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress line and no warnings; errors are still printed.
    #[arg(long, short)]
    pub quiet: bool,
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

/// `4096`, `64K`, `256M`, `1G`, `1.5G` (binary multiples).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                'B' => 1,
                _ => return Err(format!("unknown size suffix in '{s}' (use K, M, G or T)")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 64M)"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("'{s}' is not a size (e.g. 64M)"));
    }
    let bytes = v * mult as f64;
    if bytes > u64::MAX as f64 {
        return Err(format!("'{s}' is too large"));
    }
    Ok(bytes as u64)
}

impl CopyArgs {
    pub fn validate(&self) -> Result<CopyConfig, String> {
        let threads = match self.threads {
            Some(0) => return Err("--threads must be at least 1".into()),
            Some(n) if n > 1024 => return Err("--threads must be at most 1024".into()),
            Some(n) => n,
            None => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        };
        if self.memory < MEMORY_BYTES_MIN {
            return Err(format!("--memory must be at least {}M", MEMORY_BYTES_MIN >> 20));
        }
        if matches!(self.data_path, DataPathArg::Cfr) && matches!(self.reflink, ReflinkArg::Never) {
            return Err(
                "--data-path cfr cannot honour --reflink never: copy_file_range clones extents on \
                        btrfs and xfs; use --data-path ring"
                    .into(),
            );
        }
        Ok(CopyConfig {
            src: self.src.clone(),
            dst: self.dst.clone(),
            engine: match self.engine {
                EngineArg::Auto => EngineChoice::Auto,
                EngineArg::Uring => EngineChoice::Uring,
                EngineArg::Sync => EngineChoice::Sync,
            },
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
    }
}
