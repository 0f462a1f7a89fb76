//! Shared helpers for the integration tests: the independent tree oracle,
//! the seeded nasty-tree generator and small process/tempdir utilities.
#![allow(dead_code)]

pub mod changes;
pub mod gen;
pub mod mount;
pub mod mutate;
pub mod oracle;
pub mod procs;
pub mod sshd;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[allow(unused_imports)]
pub use gen::{gen_tree, is_root, GenOpts, GenReport};
#[allow(unused_imports)]
pub use oracle::{assert_trees_equal, compare_trees, CompareOpts, Kind, Tree};

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ringsync")
}

/// A unique scratch directory on a disk filesystem ($TMPDIR if set, else
/// /var/tmp), so that xattrs, sparse files and device nodes work.
pub fn scratch(tag: &str) -> tempfile::TempDir {
    let base = std::env::var_os("TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    tempfile::Builder::new()
        .prefix(&format!("ringsync-{tag}-"))
        .tempdir_in(base)
        .expect("create scratch dir")
}

/// Run `ringsync` with the given arguments.
pub fn run(args: &[&OsStr]) -> Output {
    Command::new(bin()).args(args).output().expect("spawn ringsync")
}

/// `ringsync copy <extra...> SRC DST`
pub fn run_copy(extra: &[&str], src: &Path, dst: &Path) -> Output {
    let mut args: Vec<&OsStr> = vec![OsStr::new("copy")];
    args.extend(extra.iter().map(OsStr::new));
    args.push(src.as_os_str());
    args.push(dst.as_os_str());
    run(&args)
}

pub fn describe(out: &Output) -> String {
    format!(
        "status: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        tail(&String::from_utf8_lossy(&out.stderr), 4000)
    )
}

fn tail(s: &str, n: usize) -> String {
    if s.len() <= n {
        return s.to_string();
    }
    let mut i = s.len() - n;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    format!("...{}", &s[i..])
}

/// Run a shell script (`sh -ec`) in `dir`; it must succeed.
pub fn sh(script: &str, dir: &Path) {
    let out = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("spawn sh");
    assert!(out.status.success(), "{script}: {}", describe(&out));
}

/// Byte path helper.
pub fn bpath(root: &Path, rel: &[u8]) -> PathBuf {
    root.join(OsStr::from_bytes(rel))
}

/// Whether an executable can be found on PATH.
pub fn have_tool(name: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|d| d.join(name).is_file())
}

/// A line on the real stderr, past the test harness's capture (which only takes `print!` and
/// `eprint!`), so it shows in a plain `cargo test` run, not only with `--nocapture`.
pub fn note(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// A missing prerequisite: skip with a clear line (visible in a plain run), or fail under CI.
pub fn skip_or_fail(reason: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("prerequisite missing under CI (CI is set, so this is a failure): {reason}");
    }
    let test = std::thread::current().name().unwrap_or("?").to_string();
    note(&format!("SKIPPED: {test}: {reason}"));
}

/// Sum of logical sizes over regular-file names (counting every link) and
/// over unique non-sparse inodes.
pub fn size_bounds(t: &Tree) -> (u64, u64) {
    let mut all = 0u64;
    let mut uniq = std::collections::BTreeMap::new();
    for e in t.entries.values() {
        if e.kind == Kind::File {
            all += e.size;
            if !e.is_sparse() {
                uniq.insert(e.ino, e.size);
            }
        }
    }
    (uniq.values().sum(), all)
}

/// Give every entry under `root` (root included) an atime one hour in the
/// future, keeping mtimes. With `relatime`, reading an entry whose atime is
/// not newer than its mtime/ctime bumps the atime; hand-built fixtures call
/// this after construction so that reads of the source do not change it.
pub fn freeze_atimes(root: &Path) {
    fn walk(p: &Path, atime: i64) {
        let m = std::fs::symlink_metadata(p).expect("lstat");
        if m.is_dir() {
            let mut names: Vec<_> = std::fs::read_dir(p)
                .expect("read_dir")
                .map(|e| e.expect("dirent").path())
                .collect();
            names.sort();
            for n in names {
                walk(&n, atime);
            }
        }
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(p).expect("lstat");
        let t = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: atime,
                tv_nsec: 123_456_789,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: m.mtime(),
                tv_nsec: m.mtime_nsec(),
            },
        };
        rustix::fs::utimensat(rustix::fs::CWD, p, &t, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
            .expect("utimensat");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(1_700_000_000);
    walk(root, now + 3600);
}

/// The mirror's record xattr on DST's root (docs/mirror.md).
pub const RECORD_XATTR: &str = "user.ringsync.mirror";

/// `ringsync <sub> <extra...> A B`
pub fn run_sub(sub: &str, extra: &[&str], a: &Path, b: &Path) -> Output {
    let mut args: Vec<&OsStr> = vec![OsStr::new(sub)];
    args.extend(extra.iter().map(OsStr::new));
    args.push(a.as_os_str());
    args.push(b.as_os_str());
    run(&args)
}

/// `ringsync mirror <extra...> SRC DST`
pub fn run_mirror(extra: &[&str], src: &Path, dst: &Path) -> Output {
    run_sub("mirror", extra, src, dst)
}

/// `ringsync diff --atimes <extra...> OLD NEW` (the oracle's change sets include atime-only
/// changes, which `diff` lists only on request).
pub fn run_diff(extra: &[&str], old: &Path, new: &Path) -> Output {
    let mut args = vec!["--atimes"];
    args.extend_from_slice(extra);
    run_sub("diff", &args, old, new)
}

/// Oracle options for SRC vs a mirrored DST: everything, except the record
/// xattr on the root.
pub fn mirror_cmp() -> CompareOpts {
    CompareOpts {
        ignore_root_xattrs: vec![RECORD_XATTR.as_bytes().to_vec()],
        ..CompareOpts::default()
    }
}

/// The raw value of the record xattr on `dst`, if any.
pub fn read_record(dst: &Path) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    match rustix::fs::getxattr(dst, RECORD_XATTR, &mut buf) {
        Ok(n) => {
            buf.truncate(n);
            Some(buf)
        }
        Err(_) => None,
    }
}

/// The record on `dst` parsed as JSON (panics if present but not JSON).
pub fn read_record_json(dst: &Path) -> Option<serde_json::Value> {
    read_record(dst).map(|v| {
        serde_json::from_slice(&v).unwrap_or_else(|e| {
            panic!(
                "record xattr {RECORD_XATTR} on {} is not JSON ({e}): {:?}",
                dst.display(),
                String::from_utf8_lossy(&v)
            )
        })
    })
}

/// Start the command with SIGINT, SIGTERM and SIGHUP at their defaults and none blocked: a
/// background job of a non-interactive shell (how CI may run the tests) inherits SIGINT
/// ignored, and a test that sends Ctrl-C must not depend on how it was started.
pub fn default_signals(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls `signal`,
    // `sigemptyset` and `sigprocmask`, which are async-signal-safe; it touches no memory of the
    // parent other than its own stack variable and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                if libc::signal(sig, libc::SIG_DFL) == libc::SIG_ERR {
                    return Err(std::io::Error::last_os_error());
                }
            }
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            if libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
