//! Target-side races (issue 16, item 4): an attacker who controls what DST holds must never
//! make `ringsync copy`, `ringsync mirror` or `ringsync send | ringsync receive` write, chmod,
//! chown, utime, set xattrs on, create, link, rename into or delete anything outside DST.
//!
//! Every run of ringsync here happens inside a *jail*: a scratch directory holding a copy of the
//! binary and its shared libraries, `/src` (SRC), `/dst` (DST), `/outside` (OUTSIDE, a sibling
//! of DST on the same filesystem) and an empty `/proc` (where the child bind-mounts the real
//! one, in its own mount namespace, for `/proc/self/fd`). The child `chroot`s into the jail
//! before `exec`, so a symlink to `/` planted in DST points at the jail's root: a ringsync that
//! follows it can only damage the jail, where the test sees it, never this machine. The
//! independent oracle is this file's own snapshot of the whole jail except DST and `/proc`
//! (path list, type, full `st_mode`, uid/gid, size, mtime and ctime to the nanosecond, inode
//! number, link count, symlink target, every xattr, and a SHA-256 of every file under
//! `/outside` and every other file below 64 KiB), taken before and after each run: any
//! difference (an entry added or removed anywhere, a changed attribute, even a no-op chmod,
//! which moves the ctime) is a write outside DST. OUTSIDE has the same names as SRC (other
//! content, modes, owners, times and xattrs), so a write through a swapped symlink lands on an
//! existing name as well as making new ones.
//!
//! Tests:
//!
//! 1. `race_swap_{copy,mirror,receive}`: per round, DST starts empty (one round in four) or
//!    holding an OLD version of SRC (changed and missing files, extra files and directories,
//!    type changes, other modes, times and xattrs: so copy replaces and mirror/receive delete,
//!    replace, chmod, utime and set xattrs). A racer thread loops `renameat2(RENAME_EXCHANGE)`
//!    between one directory V of DST (a child of the root, an intermediate or a leaf directory,
//!    or a directory SRC lacks, which mirror/receive delete) and a symlink next to it, `.zz-race`,
//!    pointing at OUTSIDE (absolute or relative, at OUTSIDE's root or its directory of the same
//!    name) or at `/`. The racer starts before the command and stops after it exited; its pace
//!    varies by round (flat out, yielding, sleeping 10-200 µs, or holding each state 0.5-5 ms,
//!    after an initial delay of 0-20 ms in half the rounds). When ringsync removed V or the
//!    symlink, the racer plants the symlink again (so the symlink also sits where ringsync is
//!    about to create V). Any exit code is accepted except a panic (101, or `panicked` on
//!    stderr) or death by a signal; the jail outside DST must be exactly as before. Each test
//!    prints a tally (exit codes, swaps done while the child was alive, replants) and fails
//!    unless the swaps really landed during the runs.
//! 2. `planted_symlinks_{copy,mirror,receive}`: deterministic cases, each on a fresh OLD DST:
//!    an intermediate directory, a leaf directory (relative target), a child of the root (to
//!    `/`) and two regular files (absolute and relative targets) replaced by symlinks to their
//!    OUTSIDE counterparts; ringsync's temporary names planted as symlinks to OUTSIDE before
//!    the child execs (its pid is known then; `RINGSYNC_TMP_SEQ=0` makes n start at 0, as a
//!    run otherwise starts at a random n): `.ringsync.<pid>.<n>.tmp` for n < 512 in every
//!    directory of DST, and for mirror `.ringsync-stage.<pid>`; for receive the holding
//!    directory `.ringsync-rcv.hold.<stream id>` (the stream's id from `ringsync dump --json`;
//!    receive's `.ringsync-rcv.<tag>.<n>` names take a random 48-bit tag and cannot be
//!    planted). Then DST itself given as a symlink to a directory of OUTSIDE: following the
//!    DST operand is the user's choice (rsync, `cp -a` and docs/copy.md do), so ringsync may
//!    write into that directory or refuse, but must change nothing else (and leave the symlink
//!    itself). Exit code sane (0, 1, 2, 3 or 5; no panic, no signal); a file planted as a
//!    symlink must, after exit 0, be a regular file with SRC's content.
//! 3. `outside_check_selftest`: the snapshot comparison reports a content change (same size,
//!    times put back), a mode change, an owner change, a time change, an added file, a removed
//!    file, an added and a changed xattr, a new entry beside DST; and does not report a change
//!    inside DST.
//!
//! Seeds: `RINGSYNC_RACE_SEED=N` (decimal or 0x hex) replays the trees and the racer's choices
//! (where a swap lands still depends on the machine); each test prints its seed.
//! `RINGSYNC_RACE_ROUNDS=N` sets the rounds of each race test (default 50). Root is required
//! (chroot, mount namespaces, owners): without it the tests print `SKIPPED` and pass, or fail
//! under `CI`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use rustix::fs::{AtFlags, Mode, OFlags};
use sha2::{Digest, Sha256};

use common::{bin, is_root, note, skip_or_fail};

/// How long one ringsync process may take before the test gives up on it.
const DEADLINE: Duration = Duration::from_secs(60);
/// A race test stops after this many failing rounds.
const MAX_FAILED_ROUNDS: usize = 4;
/// The racer's symlink, next to the directory it swaps.
const RACE_LINK: &str = ".zz-race";

/// The tests run one at a time: each racer spins a core, and the machine has few (run side by
/// side, the planted cases' 40,000 symlinks slowed the race rounds threefold).
static SERIAL: Mutex<()> = Mutex::new(());

// ---------------------------------------------------------------------------------------------
// Seeds and knobs
// ---------------------------------------------------------------------------------------------

fn parse_u64(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

fn seed_for(test: &str) -> u64 {
    let seed = match std::env::var("RINGSYNC_RACE_SEED") {
        Ok(v) => parse_u64(&v).unwrap_or_else(|| panic!("RINGSYNC_RACE_SEED={v:?} is not a number")),
        Err(_) => {
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            t ^ u64::from(std::process::id()).rotate_left(40) ^ fnv(0, test.as_bytes())
        }
    };
    note(&format!(
        "{test}: seed {seed:#x} (replay: RINGSYNC_RACE_SEED={seed:#x} cargo test --release --features failpoints --test race_e2e {test})"
    ));
    seed
}

fn rounds() -> usize {
    std::env::var("RINGSYNC_RACE_ROUNDS")
        .ok()
        .and_then(|v| parse_u64(&v))
        .map_or(50, |n| n as usize)
}

/// FNV-1a of `salt` and `b`: per-path decisions that do not depend on the order of generation.
fn fnv(salt: u64, b: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for &x in b {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^ (h >> 29)
}

// ---------------------------------------------------------------------------------------------
// The oracle: a snapshot of everything in the jail but DST and /proc
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    ino: u64,
    nlink: u64,
    target: Option<Vec<u8>>,
    hash: Option<[u8; 32]>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

type Snap = BTreeMap<Vec<u8>, Meta>;

fn lxattrs(p: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut names = vec![0u8; 4096];
    if rustix::fs::llistxattr(p, &mut names[..]) == Err(rustix::io::Errno::RANGE) {
        names.resize(65536, 0);
    }
    let n = match rustix::fs::llistxattr(p, &mut names[..]) {
        Ok(n) => n,
        Err(e) => panic!("llistxattr {}: {e}", p.display()),
    };
    for name in names[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let mut val = vec![0u8; 65536];
        let cname = CString::new(name).expect("xattr name");
        match rustix::fs::lgetxattr(p, cname.as_c_str(), &mut val[..]) {
            Ok(k) => {
                out.insert(name.to_vec(), val[..k].to_vec());
            }
            Err(e) => panic!("lgetxattr {} {}: {e}", p.display(), String::from_utf8_lossy(name)),
        }
    }
    out
}

fn sha256_file(p: &Path) -> [u8; 32] {
    let data = fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    Sha256::digest(&data).into()
}

fn excluded(rel: &[u8], exclude: &[&[u8]]) -> bool {
    exclude
        .iter()
        .any(|ex| rel == *ex || (rel.starts_with(ex) && rel.get(ex.len()) == Some(&b'/')))
}

/// Snapshot `root` (never following a symlink), leaving out the `exclude` paths and what is
/// below them. Files under a `hash_all` prefix are always hashed, others when below 64 KiB (a
/// content change moves mtime and ctime anyway).
fn snapshot(root: &Path, exclude: &[&[u8]], hash_all: &[&[u8]]) -> Snap {
    fn walk(root: &Path, rel: &[u8], exclude: &[&[u8]], hash_all: &[&[u8]], out: &mut Snap) {
        let p = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(OsStr::from_bytes(rel))
        };
        let m = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
        let ft = m.file_type();
        let hash = (ft.is_file() && (m.size() < 64 << 10 || hash_all.iter().any(|h| excluded(rel, &[h]))))
            .then(|| sha256_file(&p));
        let target = ft.is_symlink().then(|| {
            fs::read_link(&p)
                .expect("readlink")
                .into_os_string()
                .as_bytes()
                .to_vec()
        });
        out.insert(
            rel.to_vec(),
            Meta {
                mode: m.mode(),
                uid: m.uid(),
                gid: m.gid(),
                size: m.size(),
                mtime: (m.mtime(), m.mtime_nsec()),
                ctime: (m.ctime(), m.ctime_nsec()),
                ino: m.ino(),
                nlink: m.nlink(),
                target,
                hash,
                xattrs: lxattrs(&p),
            },
        );
        if ft.is_dir() {
            let mut names: Vec<Vec<u8>> = fs::read_dir(&p)
                .unwrap_or_else(|e| panic!("read_dir {}: {e}", p.display()))
                .map(|e| e.expect("dirent").file_name().as_bytes().to_vec())
                .collect();
            names.sort();
            for n in names {
                let mut r = rel.to_vec();
                if !r.is_empty() {
                    r.push(b'/');
                }
                r.extend_from_slice(&n);
                if !excluded(&r, exclude) {
                    walk(root, &r, exclude, hash_all, out);
                }
            }
        }
    }
    let mut out = Snap::new();
    walk(root, b"", exclude, hash_all, &mut out);
    out
}

fn shown(rel: &[u8]) -> String {
    if rel.is_empty() {
        "/ (the jail's root, DST's parent)".to_string()
    } else {
        format!("/{}", String::from_utf8_lossy(rel))
    }
}

/// Every difference between two snapshots, one line each (empty: unchanged).
fn snap_diff(before: &Snap, after: &Snap) -> Vec<String> {
    let mut d = Vec::new();
    for (p, a) in after {
        let Some(b) = before.get(p) else {
            let what = match a.mode & libc::S_IFMT {
                libc::S_IFDIR => "directory".to_string(),
                libc::S_IFLNK => format!(
                    "symlink -> {}",
                    String::from_utf8_lossy(a.target.as_deref().unwrap_or_default())
                ),
                _ => format!("file of {} bytes", a.size),
            };
            d.push(format!("NEW ENTRY {}: {what}, mode {:o}", shown(p), a.mode));
            continue;
        };
        let mut f = Vec::new();
        if a.mode != b.mode {
            f.push(format!("mode {:o} -> {:o}", b.mode, a.mode));
        }
        if (a.uid, a.gid) != (b.uid, b.gid) {
            f.push(format!("owner {}:{} -> {}:{}", b.uid, b.gid, a.uid, a.gid));
        }
        if a.size != b.size {
            f.push(format!("size {} -> {}", b.size, a.size));
        }
        if a.hash != b.hash {
            f.push("content changed".to_string());
        }
        if a.mtime != b.mtime {
            f.push(format!("mtime {:?} -> {:?}", b.mtime, a.mtime));
        }
        if a.ino != b.ino {
            f.push(format!("inode {} -> {} (replaced)", b.ino, a.ino));
        }
        if a.nlink != b.nlink {
            f.push(format!("link count {} -> {}", b.nlink, a.nlink));
        }
        if a.target != b.target {
            f.push("symlink target changed".to_string());
        }
        if a.xattrs != b.xattrs {
            let keys: BTreeSet<&Vec<u8>> = a.xattrs.keys().chain(b.xattrs.keys()).collect();
            for k in keys {
                if a.xattrs.get(k) != b.xattrs.get(k) {
                    f.push(format!(
                        "xattr {}: {:?} -> {:?}",
                        String::from_utf8_lossy(k),
                        b.xattrs.get(k).map(|v| String::from_utf8_lossy(v).into_owned()),
                        a.xattrs.get(k).map(|v| String::from_utf8_lossy(v).into_owned())
                    ));
                }
            }
        }
        if a.ctime != b.ctime && f.is_empty() {
            f.push(format!(
                "ctime {:?} -> {:?} (metadata written, e.g. a chmod/chown/utime/xattr to the same value)",
                b.ctime, a.ctime
            ));
        }
        if !f.is_empty() {
            d.push(format!("CHANGED {}: {}", shown(p), f.join(", ")));
        }
    }
    for p in before.keys() {
        if !after.contains_key(p) {
            d.push(format!("REMOVED {}", shown(p)));
        }
    }
    d
}

// ---------------------------------------------------------------------------------------------
// Trees: one layout, three variants (SRC, an OLD DST, OUTSIDE)
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    Src,
    Old,
    Outside,
}

struct FileSpec {
    rel: String,
    size: usize,
    mode: u32,
}

struct DirSpec {
    rel: String,
    mode: u32,
    leaf: bool,
}

struct Layout {
    seed: u64,
    dirs: Vec<DirSpec>,
    files: Vec<FileSpec>,
    symlinks: Vec<(String, String)>,
    /// (new name, existing file)
    hardlinks: Vec<(String, String)>,
}

fn layout(seed: u64) -> Layout {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x1a70_u64);
    let mut dirs = Vec::new();
    let dir_modes = [0o755, 0o700, 0o750, 0o775, 0o2755];
    for a in 0..4 {
        let ar = format!("a{a}");
        dirs.push(DirSpec {
            rel: ar.clone(),
            mode: 0o755,
            leaf: false,
        });
        for b in 0..rng.gen_range(2..4) {
            let br = format!("{ar}/b{b}");
            dirs.push(DirSpec {
                rel: br.clone(),
                mode: dir_modes[rng.gen_range(0..dir_modes.len())],
                leaf: false,
            });
            for c in 0..rng.gen_range(1..3) {
                let cr = format!("{br}/c{c}");
                let deeper = rng.gen_bool(0.4);
                // Some leaf directories are read-only: their metadata must come after their
                // children.
                let leaf_mode = if rng.gen_bool(0.2) {
                    0o555
                } else {
                    dir_modes[rng.gen_range(0..dir_modes.len())]
                };
                dirs.push(DirSpec {
                    rel: cr.clone(),
                    mode: if deeper { 0o755 } else { leaf_mode },
                    leaf: !deeper,
                });
                if deeper {
                    dirs.push(DirSpec {
                        rel: format!("{cr}/d0"),
                        mode: leaf_mode,
                        leaf: true,
                    });
                }
            }
        }
    }
    let file_modes = [0o644, 0o644, 0o600, 0o755, 0o444, 0o640, 0o4755, 0o2750, 0o1644];
    let mut files = Vec::new();
    let mut parents: Vec<String> = vec![String::new()];
    parents.extend(dirs.iter().map(|d| d.rel.clone()));
    for p in &parents {
        for i in 0..rng.gen_range(3..8) {
            let rel = if p.is_empty() {
                format!("f{i}")
            } else {
                format!("{p}/f{i}")
            };
            let size = match rng.gen_range(0..10) {
                0 => 0,
                1..=6 => rng.gen_range(1..8192),
                _ => rng.gen_range(8192..96 * 1024),
            };
            files.push(FileSpec {
                rel,
                size,
                mode: file_modes[rng.gen_range(0..file_modes.len())],
            });
        }
    }
    // A few big files (1-8 MiB).
    for _ in 0..3 {
        let k = rng.gen_range(0..files.len());
        files[k].size = rng.gen_range(1..=8) << 20;
        files[k].mode = 0o644;
    }
    let mut symlinks = Vec::new();
    for p in &parents {
        if rng.gen_bool(0.5) {
            let target = match rng.gen_range(0..4) {
                0 => "f0".to_string(),
                1 => "../f1".to_string(),
                2 => "/outside/f0".to_string(),
                _ => "does/not/exist".to_string(),
            };
            let rel = if p.is_empty() {
                "l0".to_string()
            } else {
                format!("{p}/l0")
            };
            symlinks.push((rel, target));
        }
    }
    let mut hardlinks = Vec::new();
    for k in 0..6 {
        let f = &files[rng.gen_range(0..files.len())];
        if f.size > 1 << 20 || hardlinks.iter().any(|(_, e): &(String, String)| *e == f.rel) {
            continue;
        }
        let p = &parents[rng.gen_range(0..parents.len())];
        let rel = if p.is_empty() {
            format!("h{k}")
        } else {
            format!("{p}/h{k}")
        };
        hardlinks.push((rel, f.rel.clone()));
    }
    Layout {
        seed,
        dirs,
        files,
        symlinks,
        hardlinks,
    }
}

impl Layout {
    fn h(&self, rel: &str, salt: u64) -> u64 {
        fnv(self.seed ^ salt, rel.as_bytes())
    }

    /// Whether `rel` exists in the OLD variant (a missing directory takes its subtree).
    fn old_has(&self, rel: &str) -> bool {
        let mut cur = String::new();
        for (i, c) in rel.split('/').enumerate() {
            if i > 0 {
                cur.push('/');
            }
            cur.push_str(c);
            let is_dir = self.dirs.iter().any(|d| d.rel == cur);
            let last = cur.len() == rel.len();
            if is_dir && self.dirs.iter().any(|d| d.rel == cur && d.leaf) && self.h(&cur, 7) % 7 == 0 {
                return false; // a leaf directory OLD lacks
            }
            if last && !is_dir && self.h(&cur, 3) % 10 == 0 {
                return false; // a file OLD lacks
            }
        }
        true
    }

    /// A leaf directory OLD has as a file, and a file OLD has as a directory (type changes).
    fn old_type_changed(&self, rel: &str) -> bool {
        self.h(rel, 11) % 13 == 0
    }
}

fn file_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    SmallRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

fn set_times(p: &Path, sec: i64, nsec: i64) {
    let t = rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    };
    let ts = rustix::fs::Timestamps {
        last_access: t,
        last_modification: t,
    };
    rustix::fs::utimensat(rustix::fs::CWD, p, &ts, AtFlags::SYMLINK_NOFOLLOW)
        .unwrap_or_else(|e| panic!("utimensat {}: {e}", p.display()));
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(p, name, value, rustix::fs::XattrFlags::empty())
        .unwrap_or_else(|e| panic!("lsetxattr {} {name}: {e}", p.display()));
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("lchown {}: {e}", p.display()));
}

/// Make `root` (an existing empty directory) the `v` variant of `l`.
fn build(root: &Path, l: &Layout, v: Variant) {
    let time_of = |rel: &str, salt: u64| {
        let h = l.h(rel, salt);
        (
            1_600_000_000 + (h % 10_000_000) as i64,
            ((h >> 24) % 1_000_000_000) as i64,
        )
    };
    let mut dirs_made: Vec<(String, u32)> = Vec::new();
    for d in &l.dirs {
        let p = root.join(&d.rel);
        if v == Variant::Old && !l.old_has(&d.rel) {
            continue;
        }
        if v == Variant::Old && !root.join(&d.rel).parent().is_some_and(|pp| pp.is_dir()) {
            continue;
        }
        if v == Variant::Old && d.leaf && l.old_type_changed(&d.rel) {
            fs::write(&p, b"OLD: a file where SRC has a directory\n").unwrap();
            continue;
        }
        fs::create_dir(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        let mode = match v {
            Variant::Src => d.mode,
            Variant::Old if l.h(&d.rel, 5) % 4 == 0 => 0o700,
            Variant::Old => d.mode,
            Variant::Outside => 0o751,
        };
        dirs_made.push((d.rel.clone(), mode));
    }
    for f in &l.files {
        let p = root.join(&f.rel);
        if !p
            .parent()
            .is_some_and(|pp| fs::symlink_metadata(pp).is_ok_and(|m| m.is_dir()))
        {
            continue;
        }
        let h = l.h(&f.rel, 3);
        if v == Variant::Old && !l.old_has(&f.rel) {
            continue;
        }
        if v == Variant::Old && l.old_type_changed(&f.rel) {
            fs::create_dir(&p).unwrap();
            fs::write(p.join("inner"), b"OLD: a directory where SRC has a file\n").unwrap();
            dirs_made.push((f.rel.clone(), 0o755));
            continue;
        }
        let (data, mode, mtime) = match v {
            Variant::Src => (file_bytes(h, f.size), f.mode, time_of(&f.rel, 1)),
            Variant::Old => {
                let differs = f.size > 1 << 20 || h % 10 <= 2;
                let data = if differs {
                    file_bytes(h ^ 0x01d, f.size / 3 + 5)
                } else {
                    file_bytes(h, f.size)
                };
                let mode = if h % 10 == 3 { f.mode ^ 0o044 } else { f.mode };
                let mtime = if h % 10 == 4 {
                    (time_of(&f.rel, 1).0 - 1000, 5)
                } else {
                    time_of(&f.rel, 1)
                };
                (data, mode, mtime)
            }
            Variant::Outside => {
                let line = format!("OUTSIDE {}\n", f.rel);
                (
                    line.repeat(1 + (h % 200) as usize).into_bytes(),
                    0o640,
                    time_of(&f.rel, 9),
                )
            }
        };
        fs::write(&p, &data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        match v {
            Variant::Outside => chown(&p, 4321, 4322),
            _ if h % 5 == 0 => chown(&p, 1000 + (h % 7) as u32, 2000 + (h % 5) as u32),
            _ => {}
        }
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        match v {
            Variant::Src if h % 6 == 0 => set_xattr(&p, "user.rs.tag", f.rel.as_bytes()),
            Variant::Old if h % 6 == 0 && h % 12 != 0 => set_xattr(&p, "user.rs.tag", b"old value"),
            Variant::Old if h % 6 == 1 => set_xattr(&p, "user.rs.stale", b"SRC lacks this"),
            Variant::Outside => {
                set_xattr(&p, "user.outside", f.rel.as_bytes());
                set_xattr(&p, "trusted.outside", b"root-only namespace");
            }
            _ => {}
        }
        set_times(&p, mtime.0, mtime.1);
    }
    for (rel, target) in &l.symlinks {
        let p = root.join(rel);
        if !p
            .parent()
            .is_some_and(|pp| fs::symlink_metadata(pp).is_ok_and(|m| m.is_dir()))
        {
            continue;
        }
        if v == Variant::Old && l.h(rel, 3) % 3 == 0 {
            continue;
        }
        let t = if v == Variant::Old && l.h(rel, 3) % 3 == 1 {
            "old-target"
        } else {
            target.as_str()
        };
        std::os::unix::fs::symlink(t, &p).unwrap();
        if v == Variant::Outside {
            chown(&p, 4321, 4322);
        }
        let (s, n) = time_of(rel, 2);
        set_times(&p, s, n);
    }
    for (rel, existing) in &l.hardlinks {
        let p = root.join(rel);
        let e = root.join(existing);
        if !fs::symlink_metadata(&e).is_ok_and(|m| m.is_file())
            || !p
                .parent()
                .is_some_and(|pp| fs::symlink_metadata(pp).is_ok_and(|m| m.is_dir()))
            || fs::symlink_metadata(&p).is_ok()
        {
            continue;
        }
        if v == Variant::Old && l.h(rel, 4) % 2 == 0 {
            continue;
        }
        fs::hard_link(&e, &p).unwrap();
    }
    match v {
        Variant::Old => {
            // Extras that mirror and receive delete: files, and whole directories.
            for (rel, _) in dirs_made.clone() {
                let h = l.h(&rel, 13);
                let p = root.join(&rel);
                if h % 3 == 0 {
                    fs::write(p.join(format!("zz_old{}", h % 10)), b"an extra file of OLD\n").unwrap();
                }
                if h % 5 == 0 {
                    let x = p.join("zz_olddir");
                    fs::create_dir_all(x.join("deeper/deepest")).unwrap();
                    for (i, d) in ["", "deeper", "deeper/deepest"].iter().enumerate() {
                        fs::write(x.join(d).join(format!("x{i}")), vec![b'x'; 100 * i + 3]).unwrap();
                    }
                    std::os::unix::fs::symlink("../..", x.join("deeper/up")).unwrap();
                    dirs_made.push((format!("{rel}/zz_olddir"), 0o755));
                }
            }
            fs::create_dir_all(root.join("zz_olddir/sub")).unwrap();
            fs::write(root.join("zz_olddir/sub/x"), b"x").unwrap();
            dirs_made.push(("zz_olddir".into(), 0o755));
        }
        Variant::Outside => {
            fs::write(root.join("SENTINEL"), b"nothing may touch this\n").unwrap();
            set_xattr(&root.join("SENTINEL"), "user.outside", b"sentinel");
        }
        Variant::Src => {}
    }
    // Directories last, deepest first.
    dirs_made.sort();
    for (rel, mode) in dirs_made.iter().rev() {
        let p = root.join(rel);
        let h = l.h(rel, 6);
        match v {
            Variant::Outside => {
                chown(&p, 4321, 4322);
                set_xattr(&p, "user.outside", rel.as_bytes());
            }
            Variant::Src if h % 4 == 0 => set_xattr(&p, "user.rs.dir", rel.as_bytes()),
            Variant::Old if h % 4 == 0 || h % 4 == 1 => set_xattr(&p, "user.rs.dir", b"old"),
            _ => {}
        }
        if v != Variant::Outside && h % 9 == 0 {
            chown(&p, 1001, 2002);
        }
        fs::set_permissions(&p, fs::Permissions::from_mode(*mode)).unwrap();
        let salt = if v == Variant::Old { 21 } else { 2 };
        let (s, n) = time_of(rel, salt);
        set_times(&p, s, n);
    }
    let (s, n) = time_of("", if v == Variant::Outside { 9 } else { 2 });
    if v == Variant::Outside {
        set_xattr(root, "user.outside", b"root");
    }
    set_times(root, s, n);
}

/// The directories of the tree at `root`, relative, not following symlinks.
fn dirs_of(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let p = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        for e in fs::read_dir(&p).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                let r = if rel.is_empty() {
                    e.file_name().to_string_lossy().into_owned()
                } else {
                    format!("{rel}/{}", e.file_name().to_string_lossy())
                };
                out.push(r.clone());
                stack.push(r);
            }
        }
    }
    out.sort();
    out
}

/// Remove `p` and everything below it (never following a symlink), whatever its modes.
fn clear(p: &Path) {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p).unwrap_or_else(|e| panic!("rm -r {}: {e}", p.display())),
        Ok(_) => fs::remove_file(p).unwrap(),
        Err(_) => {}
    }
}

// ---------------------------------------------------------------------------------------------
// The jail
// ---------------------------------------------------------------------------------------------

struct Jail {
    _tmp: tempfile::TempDir,
    /// Where the jail is, seen from the test.
    root: PathBuf,
    /// Scratch space outside the jail (stream files, child output).
    aside: PathBuf,
}

impl Jail {
    fn dst(&self) -> PathBuf {
        self.root.join("dst")
    }

    fn src(&self) -> PathBuf {
        self.root.join("src")
    }

    /// Snapshot of the jail but DST (and /proc, where the child mounts the real one).
    fn snap(&self) -> Snap {
        snapshot(&self.root, &[b"dst", b"proc"], &[b"outside"])
    }

    fn fresh_dst(&self) {
        clear(&self.dst());
        fs::create_dir(self.dst()).unwrap();
    }
}

/// The shared libraries `ldd` lists for the binary (with the loader).
fn libs_of(binary: &str) -> Result<Vec<PathBuf>, String> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| format!("ldd: {e}"))?;
    if !out.status.success() {
        return Err(format!("ldd {binary}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let mut libs = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        for w in line.split_whitespace() {
            if w.starts_with('/') {
                libs.push(PathBuf::from(w));
            }
        }
    }
    Ok(libs)
}

/// A jail with the binary, its libraries, SRC (built from `l`) and OUTSIDE; DST empty. `None`
/// (after printing why) when this machine cannot run one.
fn make_jail(tag: &str, l: &Layout) -> Option<Jail> {
    if !is_root() {
        skip_or_fail("needs root (chroot, a mount namespace, owners)");
        return None;
    }
    let libs = match libs_of(bin()) {
        Ok(l) => l,
        Err(e) => {
            skip_or_fail(&format!("cannot list the binary's libraries: {e}"));
            return None;
        }
    };
    let tmp = common::scratch(tag);
    let root = tmp.path().join("jail");
    let aside = tmp.path().join("aside");
    fs::create_dir(&root).unwrap();
    fs::create_dir(&aside).unwrap();
    fs::copy(bin(), root.join("ringsync")).expect("copy the binary into the jail");
    for lib in libs {
        let inside = root.join(lib.strip_prefix("/").unwrap());
        fs::create_dir_all(inside.parent().unwrap()).unwrap();
        fs::copy(&lib, &inside).unwrap_or_else(|e| panic!("copy {}: {e}", lib.display()));
    }
    for d in ["proc", "src", "outside", "dst"] {
        fs::create_dir(root.join(d)).unwrap();
    }
    build(&root.join("src"), l, Variant::Src);
    build(&root.join("outside"), l, Variant::Outside);
    let jail = Jail {
        _tmp: tmp,
        root,
        aside,
    };
    // Can a child run in it?
    let out = jailed(&jail.root, &["--version".into()], None)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output();
    match out {
        Ok(o) if o.status.success() => Some(jail),
        Ok(o) => {
            skip_or_fail(&format!(
                "ringsync does not run in a chroot here: {}",
                common::describe(&o)
            ));
            None
        }
        Err(e) => {
            skip_or_fail(&format!("cannot start a chrooted child: {e}"));
            None
        }
    }
}

/// `ringsync ARGS` chrooted into `jail` (with /proc bind-mounted in a private mount namespace).
/// With `gate` (write end, read end), the child writes its pid to the first and waits for a
/// byte on the second before it chroots and execs.
fn jailed(jail: &Path, args: &[OsString], gate: Option<(RawFd, RawFd)>) -> Command {
    let mut cmd = Command::new("/ringsync");
    cmd.args(args);
    // Temporary names count from here, so the planted ones are met (honoured with the
    // `failpoints` feature, as CI builds; without it names start at a random number).
    cmd.env("RINGSYNC_TMP_SEQ", "0");
    let jail_c = CString::new(jail.as_os_str().as_bytes()).unwrap();
    let proc_c = CString::new(jail.join("proc").as_os_str().as_bytes()).unwrap();
    // SAFETY: the closure runs in the forked child before exec and calls only async-signal-safe
    // system calls (getpid, write, read, unshare, mount, chroot, chdir) on memory it owns (the
    // CStrings moved in, stack variables); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if let Some((w, r)) = gate {
                let pid: i32 = libc::getpid();
                if libc::write(w, (&pid as *const i32).cast(), 4) != 4 {
                    return Err(std::io::Error::last_os_error());
                }
                let mut b = 0u8;
                if libc::read(r, (&mut b as *mut u8).cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::mount(
                c"/proc".as_ptr(),
                proc_c.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::chroot(jail_c.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

fn out_file(jail: &Jail, name: &str) -> (fs::File, PathBuf) {
    let p = jail.aside.join(name);
    (fs::File::create(&p).unwrap(), p)
}

/// Wait for `c` (at most DEADLINE; then it is killed, by its pid, and that is reported).
fn wait_deadline(c: &mut Child, what: &str) -> Result<ExitStatus, String> {
    let t = Instant::now();
    loop {
        if let Some(st) = c.try_wait().expect("try_wait") {
            return Ok(st);
        }
        if t.elapsed() > DEADLINE {
            let _ = c.kill();
            let _ = c.wait();
            return Err(format!("{what} took more than {DEADLINE:?} and was killed"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn status_str(st: &ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => format!("{st:?}"),
    }
}

/// A panic or death by a signal (the only unacceptable ends of a raced run).
fn bad_end(st: &ExitStatus, stderr: &str) -> Option<String> {
    if let Some(s) = st.signal() {
        return Some(format!("killed by signal {s}"));
    }
    if st.code() == Some(101) || stderr.contains("panicked") {
        return Some(format!("panicked ({})", status_str(st)));
    }
    None
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    let from = lines.len().saturating_sub(n);
    lines[from..].join("\n")
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Cmd {
    Copy,
    Mirror,
    Receive,
}

impl Cmd {
    fn name(self) -> &'static str {
        match self {
            Cmd::Copy => "copy",
            Cmd::Mirror => "mirror",
            Cmd::Receive => "receive",
        }
    }
}

/// What a finished run of the command under test left.
struct RunEnd {
    status: ExitStatus,
    stderr: String,
    /// The sender's end, for receive.
    sender: Option<ExitStatus>,
    command: String,
}

/// Start the command under test (for receive: a host-side `send` piped into a jailed
/// `receive`; `stream` instead feeds a stream file). `on_spawn` runs right after the child
/// under test exists.
fn run_cmd(
    jail: &Jail,
    cmd: Cmd,
    extra: &[&str],
    dst_arg: &str,
    stream: Option<&Path>,
    gate: Option<(RawFd, RawFd)>,
    on_spawn: &dyn Fn(),
) -> Result<RunEnd, String> {
    let (so, _) = out_file(jail, "stdout");
    let (se, se_path) = out_file(jail, "stderr");
    let mut args = vec![OsString::from(cmd.name())];
    args.extend(extra.iter().map(OsString::from));
    if cmd != Cmd::Receive {
        args.push("/src".into());
    }
    args.push(dst_arg.into());
    let command = format!(
        "{}{}",
        match (cmd, stream) {
            (Cmd::Receive, None) => format!("ringsync send {} | ", jail.src().display()),
            (Cmd::Receive, Some(s)) => format!("< {} ", s.display()),
            _ => String::new(),
        },
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let command =
        format!("chroot {} ringsync {command}", jail.root.display()).replace("ringsync ringsync", "ringsync");
    let mut sender = None;
    let mut c = jailed(&jail.root, &args, gate);
    c.stdout(so).stderr(se);
    if cmd == Cmd::Receive {
        match stream {
            Some(s) => {
                c.stdin(fs::File::open(s).unwrap());
            }
            None => {
                let (sse, _) = out_file(jail, "sender-stderr");
                let mut s = Command::new(bin())
                    .arg("send")
                    .arg(jail.src())
                    .stdout(Stdio::piped())
                    .stderr(sse)
                    .spawn()
                    .expect("spawn send");
                c.stdin(Stdio::from(s.stdout.take().unwrap()));
                sender = Some(s);
            }
        }
    } else {
        c.stdin(Stdio::null());
    }
    let mut child = c.spawn().map_err(|e| format!("spawn {command}: {e}"))?;
    drop(c);
    on_spawn();
    let st = wait_deadline(&mut child, &command);
    let sender_st = match sender.as_mut() {
        Some(s) => Some(wait_deadline(s, "ringsync send")?),
        None => None,
    };
    let status = st?;
    Ok(RunEnd {
        status,
        stderr: fs::read_to_string(&se_path).unwrap_or_default(),
        sender: sender_st,
        command,
    })
}

// ---------------------------------------------------------------------------------------------
// The racer
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Pace {
    FlatOut,
    Yield,
    SleepMicros(u64, u64),
    HoldMillis(u64, u64),
}

struct RacePlan {
    /// The directory swapped, relative to DST.
    victim: String,
    /// Where the symlink points (a path as the jailed child sees it).
    target: String,
    pace: Pace,
    initial_delay: Duration,
}

#[derive(Default)]
struct RaceCounts {
    swaps: AtomicU64,
    live_swaps: AtomicU64,
    replants: AtomicU64,
    errors: AtomicU64,
}

fn cstr(s: &str) -> CString {
    CString::new(s).unwrap()
}

/// Open the directory `rel` below `root`, one component at a time, following no symlink.
fn open_beneath(root: &OwnedFd, rel: &str) -> Option<OwnedFd> {
    let mut cur = rustix::io::fcntl_dupfd_cloexec(root, 0).ok()?;
    for c in rel.split('/').filter(|c| !c.is_empty()) {
        cur = rustix::fs::openat(
            &cur,
            cstr(c).as_c_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
    }
    Some(cur)
}

fn racer(
    dst_root: OwnedFd,
    plan: &RacePlan,
    stop: &AtomicBool,
    alive: &AtomicBool,
    counts: &RaceCounts,
    seed: u64,
) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let (parent, name) = match plan.victim.rsplit_once('/') {
        Some((p, n)) => (p.to_string(), n.to_string()),
        None => (String::new(), plan.victim.clone()),
    };
    let name_c = cstr(&name);
    let link_c = cstr(RACE_LINK);
    let target_c = cstr(&plan.target);
    let t0 = Instant::now();
    let mut pfd: Option<OwnedFd> = None;
    let mut iter = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if t0.elapsed() < plan.initial_delay {
            std::hint::spin_loop();
            continue;
        }
        iter += 1;
        if pfd.is_none() || iter % 256 == 0 {
            pfd = open_beneath(&dst_root, &parent);
            if let Some(p) = &pfd {
                // SAFETY: plain syscall on a valid descriptor and NUL-terminated strings.
                unsafe { libc::symlinkat(target_c.as_ptr(), p.as_raw_fd(), link_c.as_ptr()) };
            }
        }
        let Some(p) = &pfd else {
            std::thread::yield_now();
            continue;
        };
        // SAFETY: plain syscall on a valid descriptor and NUL-terminated strings.
        let r = unsafe {
            libc::renameat2(
                p.as_raw_fd(),
                name_c.as_ptr(),
                p.as_raw_fd(),
                link_c.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if r == 0 {
            counts.swaps.fetch_add(1, Ordering::Relaxed);
            if alive.load(Ordering::Relaxed) {
                counts.live_swaps.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            let e = std::io::Error::last_os_error().raw_os_error();
            if e == Some(libc::ENOENT) {
                // ringsync removed one of the two: plant the symlink where it is missing
                // (where the victim was, too: a symlink where ringsync makes a directory).
                for n in [&link_c, &name_c] {
                    // SAFETY: as above.
                    if unsafe { libc::symlinkat(target_c.as_ptr(), p.as_raw_fd(), n.as_ptr()) } == 0 {
                        counts.replants.fetch_add(1, Ordering::Relaxed);
                    }
                }
            } else {
                counts.errors.fetch_add(1, Ordering::Relaxed);
            }
            std::thread::yield_now();
        }
        match plan.pace {
            Pace::FlatOut => {}
            Pace::Yield => std::thread::yield_now(),
            Pace::SleepMicros(a, b) => std::thread::sleep(Duration::from_micros(rng.gen_range(a..=b))),
            Pace::HoldMillis(a, b) => {
                std::thread::sleep(Duration::from_micros(rng.gen_range(a * 1000..=b * 1000)))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Test 1: the swap racer
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Tally {
    rounds: usize,
    codes: BTreeMap<String, usize>,
    live_swaps: u64,
    swaps: u64,
    replants: u64,
    rounds_hit: usize,
    failures: Vec<String>,
    run_time: Duration,
    /// What the runs reported (`ringsync: OP ...: ERROR`, the path left out), and how often.
    errors: BTreeMap<String, usize>,
}

/// `ringsync: OP PATH: ERROR` lines, as `OP: ERROR`.
fn error_kinds(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("ringsync: "))
        .map(|l| {
            let op = l.split(' ').next().unwrap_or("");
            let err = l.rsplit(": ").next().unwrap_or("");
            format!("{op}: {err}")
        })
        .collect()
}

fn race(cmd: Cmd, test: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let seed = seed_for(test);
    let n_rounds = rounds();
    let l = layout(seed);
    let Some(jail) = make_jail(test, &l) else { return };
    let src_dirs = dirs_of(&jail.src());
    let mut t = Tally::default();
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed);
    for round in 0..n_rounds {
        jail.fresh_dst();
        let empty = rng.gen_range(0..4) == 0;
        if !empty {
            build(&jail.dst(), &l, Variant::Old);
        }
        // The victim: a child of the root, an intermediate or a leaf directory (of DST as it
        // is, or for an empty DST, of SRC: the racer waits for ringsync to make it), or for
        // mirror/receive sometimes a directory SRC lacks (deleted by the run).
        let have = if empty {
            src_dirs.clone()
        } else {
            dirs_of(&jail.dst())
        };
        let depth = |d: &String| d.matches('/').count();
        let is_leaf = |d: &String| !have.iter().any(|o| o.starts_with(&format!("{d}/")));
        let pick = |v: Vec<&String>, rng: &mut SmallRng| -> Option<String> {
            (!v.is_empty()).then(|| v[rng.gen_range(0..v.len())].clone())
        };
        let kind = rng.gen_range(0..if cmd == Cmd::Copy || empty { 3 } else { 4 });
        let victim = match kind {
            0 => pick(have.iter().filter(|d| depth(d) == 0).collect(), &mut rng),
            1 => pick(
                have.iter().filter(|d| depth(d) > 0 && !is_leaf(d)).collect(),
                &mut rng,
            ),
            2 => pick(
                have.iter().filter(|d| depth(d) > 0 && is_leaf(d)).collect(),
                &mut rng,
            ),
            _ => pick(
                have.iter().filter(|d| d.contains("zz_olddir")).collect(),
                &mut rng,
            ),
        }
        .unwrap_or_else(|| have[rng.gen_range(0..have.len())].clone());
        let ups = "../".repeat(depth(&victim) + 1);
        let outside_twin = jail.root.join("outside").join(&victim).is_dir();
        let target = match rng.gen_range(0..6) {
            0 => "/outside".to_string(),
            1 => format!("{ups}outside"),
            2 if outside_twin => format!("/outside/{victim}"),
            3 if outside_twin => format!("{ups}outside/{victim}"),
            4 => "/".to_string(),
            _ => format!("{ups}outside/a0"),
        };
        let pace = match rng.gen_range(0..4) {
            0 => Pace::FlatOut,
            1 => Pace::Yield,
            2 => Pace::SleepMicros(10, 200),
            _ => Pace::HoldMillis(0, 5),
        };
        let initial_delay = if rng.gen_bool(0.5) {
            Duration::from_micros(rng.gen_range(0..20_000))
        } else {
            Duration::ZERO
        };
        let plan = RacePlan {
            victim,
            target,
            pace,
            initial_delay,
        };
        let durable = rng.gen_range(0..3) == 0;
        let mut extra: Vec<&str> = Vec::new();
        match cmd {
            Cmd::Copy | Cmd::Mirror => {
                if !durable {
                    extra.extend(["--fsync", "none"]);
                }
                extra.extend(["--engine", ["auto", "uring", "sync"][rng.gen_range(0..3)]]);
                extra.push("-q");
            }
            Cmd::Receive => {
                if !durable {
                    extra.push("--no-fsync");
                }
                extra.push("-q");
            }
        }
        let before = jail.snap();
        let dst_fd = rustix::fs::open(
            jail.dst(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let stop = AtomicBool::new(false);
        let alive = AtomicBool::new(false);
        let counts = RaceCounts::default();
        let racer_seed = rng.next_u64();
        let t_run = Instant::now();
        let end = std::thread::scope(|s| {
            let h = s.spawn(|| racer(dst_fd, &plan, &stop, &alive, &counts, racer_seed));
            // The racer is running before the command starts.
            std::thread::sleep(Duration::from_millis(1));
            let end = run_cmd(&jail, cmd, &extra, "/dst", None, None, &|| {
                alive.store(true, Ordering::SeqCst)
            });
            alive.store(false, Ordering::SeqCst);
            stop.store(true, Ordering::SeqCst);
            h.join().expect("racer thread");
            end
        });
        t.run_time += t_run.elapsed();
        let live = counts.live_swaps.load(Ordering::Relaxed);
        t.rounds += 1;
        t.live_swaps += live;
        t.swaps += counts.swaps.load(Ordering::Relaxed);
        t.replants += counts.replants.load(Ordering::Relaxed);
        if live > 0 {
            t.rounds_hit += 1;
        }
        let after = jail.snap();
        let mut fails = snap_diff(&before, &after);
        let what = format!(
            "round {round}: DST {}, victim /dst/{} <-> /dst/{}{RACE_LINK} -> {}, pace {:?}, initial delay {:?}, {} swaps during the run",
            if empty { "empty" } else { "OLD" },
            plan.victim,
            plan.victim.rsplit_once('/').map_or(String::new(), |(p, _)| format!("{p}/")),
            plan.target,
            plan.pace,
            plan.initial_delay,
            live
        );
        match end {
            Ok(e) => {
                *t.codes.entry(status_str(&e.status)).or_default() += 1;
                for k in error_kinds(&e.stderr) {
                    *t.errors.entry(k).or_default() += 1;
                }
                if let Some(b) = bad_end(&e.status, &e.stderr) {
                    fails.push(format!("the run {b}"));
                }
                if let Some(s) = e.sender {
                    if let Some(b) = bad_end(&s, "") {
                        fails.push(format!("the sender {b}"));
                    }
                }
                if !fails.is_empty() {
                    t.failures.push(format!(
                        "{what}\n  command: {}\n  ended: {}\n  written outside DST / problems:\n    {}\n  stderr (tail):\n    {}",
                        e.command,
                        status_str(&e.status),
                        fails.iter().take(40).cloned().collect::<Vec<_>>().join("\n    "),
                        tail(&e.stderr, 12).replace('\n', "\n    ")
                    ));
                }
            }
            Err(e) => t
                .failures
                .push(format!("{what}\n  {e}\n    {}", fails.join("\n    "))),
        }
        if t.failures.len() >= MAX_FAILED_ROUNDS {
            break;
        }
    }
    let report = format!(
        "{test}: {} rounds in {:.1}s (runs {:.1}s), exit codes {:?}, swaps while the child was alive: {} (rounds with at least one: {}/{}), all swaps {}, replants {}, failing rounds {}; errors the runs reported: {:?}",
        t.rounds,
        started.elapsed().as_secs_f64(),
        t.run_time.as_secs_f64(),
        t.codes,
        t.live_swaps,
        t.rounds_hit,
        t.rounds,
        t.swaps,
        t.replants,
        t.failures.len(),
        t.errors
    );
    note(&report);
    assert!(
        t.failures.is_empty(),
        "{report}\n(seed {seed:#x}, replay with RINGSYNC_RACE_SEED={seed:#x})\n\n{}",
        t.failures.join("\n\n")
    );
    // The race must have hit the runs, or the test proves nothing.
    assert!(
        t.rounds == 0 || (t.rounds_hit * 10 >= t.rounds * 8 && t.live_swaps >= 20 * t.rounds as u64),
        "{report}: the racer did not swap often enough while ringsync ran (want >= 80% of rounds hit and >= 20 swaps a round)"
    );
}

#[test]
fn race_swap_copy() {
    race(Cmd::Copy, "race_swap_copy");
}

#[test]
fn race_swap_mirror() {
    race(Cmd::Mirror, "race_swap_mirror");
}

#[test]
fn race_swap_receive() {
    race(Cmd::Receive, "race_swap_receive");
}

// ---------------------------------------------------------------------------------------------
// Test 2: planted symlinks
// ---------------------------------------------------------------------------------------------

fn symlink(target: &str, at: &Path) {
    std::os::unix::fs::symlink(target, at).unwrap_or_else(|e| panic!("symlink {}: {e}", at.display()));
}

fn pipe() -> (OwnedFd, OwnedFd) {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).expect("pipe")
}

/// The stream id of a stream file (`ringsync dump --json`), hex.
fn stream_id(stream: &Path) -> Option<String> {
    let out = Command::new(bin())
        .arg("dump")
        .arg("--json")
        .arg(stream)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
            for k in ["stream_id", "stream"] {
                if let Some(s) = v.get(k).and_then(|x| x.as_str()) {
                    return Some(s.to_string());
                }
                if let Some(s) = v.get("header").and_then(|h| h.get(k)).and_then(|x| x.as_str()) {
                    return Some(s.to_string());
                }
            }
        }
    }
    None
}

fn planted(cmd: Cmd, test: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let seed = seed_for(test);
    let l = layout(seed);
    let Some(jail) = make_jail(test, &l) else { return };
    let stream = jail.aside.join("stream");
    if cmd == Cmd::Receive {
        let out = Command::new(bin())
            .arg("send")
            .arg(jail.src())
            .arg("-o")
            .arg(&stream)
            .output()
            .unwrap();
        assert!(out.status.success(), "send -o: {}", common::describe(&out));
    }
    let extra: Vec<&str> = match cmd {
        Cmd::Receive => vec!["--no-fsync"],
        _ => vec!["--fsync", "none"],
    };
    // The cases' victims, all present in OLD (so they are DST's before the plant).
    build(&jail.aside.join("probe").tap_mkdir(), &l, Variant::Old);
    let old_dirs = dirs_of(&jail.aside.join("probe"));
    let in_src_and_old = |d: &String| l.dirs.iter().any(|s| &s.rel == d);
    let intermediate = old_dirs
        .iter()
        .find(|d| {
            d.matches('/').count() == 1
                && in_src_and_old(d)
                && old_dirs.iter().any(|o| o.starts_with(&format!("{d}/")))
        })
        .cloned()
        .expect("an intermediate directory");
    let leaf = old_dirs
        .iter()
        .find(|d| {
            d.matches('/').count() >= 2 && in_src_and_old(d) && l.dirs.iter().any(|s| &s.rel == *d && s.leaf)
        })
        .cloned()
        .expect("a leaf directory");
    let files: Vec<String> = l
        .files
        .iter()
        .filter(|f| {
            f.rel.contains('/')
                && fs::symlink_metadata(jail.aside.join("probe").join(&f.rel)).is_ok_and(|m| m.is_file())
        })
        .map(|f| f.rel.clone())
        .take(2)
        .collect();
    assert_eq!(files.len(), 2, "two files of SRC that OLD has");
    clear(&jail.aside.join("probe"));

    let ups = |rel: &str| "../".repeat(rel.matches('/').count() + 1);
    let mut fails = Vec::new();
    let mut lines = Vec::new();
    let cases = [
        "intermediate directory -> /outside/<same>",
        "leaf directory -> ../../outside/<same> (relative)",
        "child of the root -> /",
        "regular files -> /outside/<same> and relative",
        "temporary names",
        "DST itself a symlink to a directory (made for it) in OUTSIDE",
    ];
    for (ci, case) in cases.iter().enumerate() {
        jail.fresh_dst();
        build(&jail.dst(), &l, Variant::Old);
        let dst = jail.dst();
        let mut dst_arg = "/dst".to_string();
        let mut exclude_more: Vec<Vec<u8>> = Vec::new();
        let mut gate_plant: Option<Box<dyn Fn(i32) -> usize>> = None;
        let mut file_checks: Vec<String> = Vec::new();
        match ci {
            0 => {
                clear(&dst.join(&intermediate));
                symlink(&format!("/outside/{intermediate}"), &dst.join(&intermediate));
            }
            1 => {
                clear(&dst.join(&leaf));
                symlink(&format!("{}outside/{leaf}", ups(&leaf)), &dst.join(&leaf));
            }
            2 => {
                clear(&dst.join("a1"));
                symlink("/", &dst.join("a1"));
            }
            3 => {
                clear(&dst.join(&files[0]));
                symlink(&format!("/outside/{}", files[0]), &dst.join(&files[0]));
                clear(&dst.join(&files[1]));
                symlink(
                    &format!("{}outside/{}", ups(&files[1]), files[1]),
                    &dst.join(&files[1]),
                );
                file_checks = files.clone();
            }
            4 => {
                let dirs = dirs_of(&dst);
                let dst2 = dst.clone();
                let cmd2 = cmd;
                gate_plant = Some(Box::new(move |pid: i32| {
                    let mut n = 0;
                    for d in std::iter::once(String::new()).chain(dirs.iter().cloned()) {
                        let at = if d.is_empty() { dst2.clone() } else { dst2.join(&d) };
                        if cmd2 == Cmd::Receive {
                            continue;
                        }
                        for k in 0..512 {
                            let t = if k % 2 == 0 { "/outside/f0" } else { "/outside/a0" };
                            symlink(t, &at.join(format!(".ringsync.{pid}.{k}.tmp")));
                            n += 1;
                        }
                    }
                    if cmd2 == Cmd::Mirror {
                        symlink("/outside", &dst2.join(format!(".ringsync-stage.{pid}")));
                        n += 1;
                    }
                    n
                }));
                if cmd == Cmd::Receive {
                    match stream_id(&stream) {
                        Some(id) => {
                            symlink("/outside", &dst.join(format!(".ringsync-rcv.hold.{id}")));
                            lines.push(format!("  (planted .ringsync-rcv.hold.{id} -> /outside)"));
                        }
                        None => fails.push(format!("{case}: no stream id in `ringsync dump --json` output")),
                    }
                }
            }
            _ => {
                // A directory of OUTSIDE made for this case (its other directories hold
                // hardlinks across them, whose link counts a run there would rightly change).
                fs::create_dir(jail.root.join("outside/zz_dst_target")).unwrap();
                symlink("/outside/zz_dst_target", &jail.root.join("dstlink"));
                dst_arg = "/dstlink".to_string();
                exclude_more.push(b"outside/zz_dst_target".to_vec());
            }
        }
        let mut ex: Vec<&[u8]> = vec![b"dst", b"proc"];
        ex.extend(exclude_more.iter().map(|v| v.as_slice()));
        let before = snapshot(&jail.root, &ex, &[b"outside"]);
        let stream_arg = (cmd == Cmd::Receive).then_some(stream.as_path());
        let end = if let Some(plant) = gate_plant {
            let (pid_r, pid_w) = pipe();
            let (go_r, go_w) = pipe();
            std::thread::scope(|s| {
                let gate = Some((pid_w.as_raw_fd(), go_r.as_raw_fd()));
                let (jail, extra, dst_arg) = (&jail, &extra, &dst_arg);
                let h = s.spawn(move || run_cmd(jail, cmd, extra, dst_arg, stream_arg, gate, &|| {}));
                let mut b = [0u8; 4];
                rustix::io::read(&pid_r, &mut b).expect("read the child's pid");
                let pid = i32::from_ne_bytes(b);
                let n = plant(pid);
                lines.push(format!("  (planted {n} temporary names for pid {pid})"));
                rustix::io::write(&go_w, b"g").expect("release the child");
                h.join().expect("run thread")
            })
        } else {
            run_cmd(&jail, cmd, &extra, &dst_arg, stream_arg, None, &|| {})
        };
        let after = snapshot(&jail.root, &ex, &[b"outside"]);
        let mut problems = snap_diff(&before, &after);
        match &end {
            Ok(e) => {
                lines.push(format!(
                    "  {case}: {}; {}",
                    status_str(&e.status),
                    e.stderr.lines().next().unwrap_or("(no stderr)")
                ));
                if let Some(b) = bad_end(&e.status, &e.stderr) {
                    problems.push(format!("the run {b}"));
                }
                if !matches!(e.status.code(), Some(0 | 1 | 2 | 3 | 5)) {
                    problems.push(format!("unexpected {}", status_str(&e.status)));
                }
                for f in &file_checks {
                    let p = dst.join(f);
                    let is_file = fs::symlink_metadata(&p).is_ok_and(|m| m.is_file());
                    if e.status.success() {
                        if !is_file {
                            problems.push(format!(
                                "exit 0 but /dst/{f} is not a regular file (the planted symlink stayed?)"
                            ));
                        } else if sha256_file(&p) != sha256_file(&jail.src().join(f)) {
                            problems.push(format!("exit 0 but /dst/{f} does not have SRC's content"));
                        }
                    } else if !is_file && !e.stderr.contains(f.rsplit('/').next().unwrap()) {
                        problems.push(format!("/dst/{f} was left a symlink and no error names it"));
                    }
                }
                if ci == 5 {
                    match fs::read_link(jail.root.join("dstlink")) {
                        Ok(t) if t == Path::new("/outside/zz_dst_target") => {}
                        other => problems.push(format!("the DST symlink /dstlink was changed: {other:?}")),
                    }
                }
                if !problems.is_empty() {
                    fails.push(format!(
                        "{case}:\n  command: {}\n  ended: {}\n  problems:\n    {}\n  stderr (tail):\n    {}",
                        e.command,
                        status_str(&e.status),
                        problems
                            .iter()
                            .take(40)
                            .cloned()
                            .collect::<Vec<_>>()
                            .join("\n    "),
                        tail(&e.stderr, 12).replace('\n', "\n    ")
                    ));
                }
            }
            Err(e) => fails.push(format!("{case}: {e}\n    {}", problems.join("\n    "))),
        }
        if ci == 5 {
            clear(&jail.root.join("dstlink"));
            clear(&jail.root.join("outside/zz_dst_target"));
        }
    }
    note(&format!("{test}:\n{}", lines.join("\n")));
    assert!(
        fails.is_empty(),
        "{test} (seed {seed:#x}):\n\n{}",
        fails.join("\n\n")
    );
}

trait TapMkdir {
    fn tap_mkdir(&self) -> PathBuf;
}

impl TapMkdir for PathBuf {
    fn tap_mkdir(&self) -> PathBuf {
        fs::create_dir_all(self).unwrap();
        self.clone()
    }
}

#[test]
fn planted_symlinks_copy() {
    planted(Cmd::Copy, "planted_symlinks_copy");
}

#[test]
fn planted_symlinks_mirror() {
    planted(Cmd::Mirror, "planted_symlinks_mirror");
}

#[test]
fn planted_symlinks_receive() {
    planted(Cmd::Receive, "planted_symlinks_receive");
}

// ---------------------------------------------------------------------------------------------
// Test 3: the outside check can fail
// ---------------------------------------------------------------------------------------------

#[test]
fn outside_check_selftest() {
    if !is_root() {
        skip_or_fail("needs root (owners, trusted xattrs)");
        return;
    }
    let l = layout(0x5e1f);
    let tmp = common::scratch("race-selftest");
    let root = tmp.path();
    for d in ["src", "outside", "dst", "proc"] {
        fs::create_dir(root.join(d)).unwrap();
    }
    build(&root.join("outside"), &l, Variant::Outside);
    build(&root.join("dst"), &l, Variant::Old);
    let snap = || snapshot(root, &[b"dst", b"proc"], &[b"outside"]);
    let f = l.files.iter().find(|f| f.rel.contains('/')).unwrap().rel.clone();
    let fp = root.join("outside").join(&f);
    let dir = root.join("outside/a0");
    type Change<'a> = (&'a str, Box<dyn Fn() + 'a>, &'a str);
    let changes: Vec<Change> = vec![
        (
            "content, same size, times put back",
            Box::new(|| {
                let m = fs::symlink_metadata(&fp).unwrap();
                let mut data = fs::read(&fp).unwrap();
                data[0] ^= 0x20;
                fs::write(&fp, &data).unwrap();
                set_times(&fp, m.mtime(), m.mtime_nsec());
            }),
            "content changed",
        ),
        (
            "mode",
            Box::new(|| fs::set_permissions(&fp, fs::Permissions::from_mode(0o600)).unwrap()),
            "mode",
        ),
        ("owner", Box::new(|| chown(&fp, 0, 0)), "owner"),
        ("mtime", Box::new(|| set_times(&dir, 1_234_567_890, 0)), "mtime"),
        (
            "an added file",
            Box::new(|| fs::write(dir.join("new-file"), b"x").unwrap()),
            "NEW ENTRY /outside/a0/new-file",
        ),
        (
            "a removed file",
            Box::new(|| fs::remove_file(root.join("outside/SENTINEL")).unwrap()),
            "REMOVED /outside/SENTINEL",
        ),
        (
            "an added xattr",
            Box::new(|| set_xattr(&dir, "user.added", b"1")),
            "xattr user.added",
        ),
        (
            "a changed xattr",
            Box::new(|| set_xattr(&fp, "user.outside", b"changed")),
            "xattr user.outside",
        ),
        (
            "a no-op chmod (ctime only)",
            Box::new(|| {
                let m = fs::symlink_metadata(&fp).unwrap();
                fs::set_permissions(&fp, fs::Permissions::from_mode(m.mode() & 0o7777)).unwrap();
            }),
            "ctime",
        ),
        (
            "a new entry beside DST",
            Box::new(|| fs::write(root.join(".dst.ringsync-mirror"), b"{}").unwrap()),
            "NEW ENTRY /.dst.ringsync-mirror",
        ),
    ];
    let mut missed = Vec::new();
    for (what, change, expect) in &changes {
        let before = snap();
        std::thread::sleep(Duration::from_millis(5));
        change();
        let d = snap_diff(&before, &snap());
        if !d.iter().any(|l| l.contains(expect)) {
            missed.push(format!("{what}: not reported as {expect:?} (got {d:?})"));
        }
    }
    // A change inside DST is not outside.
    let before = snap();
    fs::write(root.join("dst/new-in-dst"), b"x").unwrap();
    fs::set_permissions(root.join("dst/a0"), fs::Permissions::from_mode(0o711)).unwrap();
    let d = snap_diff(&before, &snap());
    if !d.is_empty() {
        missed.push(format!("changes inside DST reported as outside: {d:?}"));
    }
    assert!(
        missed.is_empty(),
        "the outside check missed:\n{}",
        missed.join("\n")
    );
}

/// The racer and the oracle together catch a writer that follows symlinks: a naive writer (in
/// this process, by path, `std::fs::write` and `chmod`) into DST's directory under the same
/// racer must be reported as writing outside DST. Otherwise a passing race test proves nothing.
#[test]
fn race_catches_a_naive_writer_selftest() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !is_root() {
        skip_or_fail("needs root (owners, trusted xattrs)");
        return;
    }
    let l = layout(0xa11e);
    let tmp = common::scratch("race-naive");
    let root = tmp.path().to_path_buf();
    for d in ["src", "outside", "dst", "proc"] {
        fs::create_dir(root.join(d)).unwrap();
    }
    build(&root.join("outside"), &l, Variant::Outside);
    build(&root.join("dst"), &l, Variant::Old);
    let victim = dirs_of(&root.join("dst"))
        .into_iter()
        .find(|d| d.matches('/').count() == 1 && root.join("outside").join(d).is_dir())
        .expect("a victim directory");
    // Relative: this process is not chrooted, the target must resolve in the scratch dir.
    let target = format!(
        "{}outside/{victim}",
        "../".repeat(victim.matches('/').count() + 1)
    );
    let plan = RacePlan {
        victim: victim.clone(),
        target,
        pace: Pace::Yield,
        initial_delay: Duration::ZERO,
    };
    let before = snapshot(&root, &[b"dst", b"proc"], &[b"outside"]);
    let dst_fd = rustix::fs::open(
        root.join("dst"),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap();
    let (stop, alive, counts) = (
        AtomicBool::new(false),
        AtomicBool::new(true),
        RaceCounts::default(),
    );
    let names: Vec<String> = l
        .files
        .iter()
        .filter_map(|f| f.rel.strip_prefix(&format!("{victim}/")))
        .filter(|n| !n.contains('/'))
        .map(String::from)
        .collect();
    std::thread::scope(|s| {
        let h = s.spawn(|| racer(dst_fd, &plan, &stop, &alive, &counts, 1));
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(200) {
            for n in &names {
                let p = root.join("dst").join(&victim).join(n);
                let _ = fs::write(&p, b"naive");
                let _ = fs::set_permissions(&p, fs::Permissions::from_mode(0o604));
            }
        }
        stop.store(true, Ordering::SeqCst);
        h.join().unwrap();
    });
    let d = snap_diff(&before, &snapshot(&root, &[b"dst", b"proc"], &[b"outside"]));
    note(&format!(
        "race_catches_a_naive_writer_selftest: {} swaps, {} differences outside DST, e.g. {:?}",
        counts.swaps.load(Ordering::Relaxed),
        d.len(),
        d.first()
    ));
    assert!(
        d.iter().any(|l| l.contains(&format!("/outside/{victim}/"))),
        "a naive writer under the racer was not caught writing into /outside/{victim}: {d:?}"
    );
}
