//! `ringsync copy` and `ringsync mirror` through the durable file writer: with `--fsync end`
//! (the default) or `--fsync file`, regular files of 256 KiB or more are written with O_DIRECT
//! (4 KiB-aligned pieces of up to 4 MiB; the last partial block, and any piece that is not
//! aligned, written through the cache once the file's direct writes are done, turning O_DIRECT
//! off for the rest of the file),
//! not split over workers; `--fsync none`, btrfs targets and `--data-path cfr` keep the page
//! cache.
//!
//! - Every "DST is what SRC was" is decided by the independent oracle (`common::oracle`) on a
//!   scan of SRC taken before the copy, and by what this file wrote itself: every regular file
//!   is checked for its exact size, its bytes (regenerated here from the seeds it was made
//!   with), mode, mtime with nanoseconds and xattrs; sparse files for their holes (SEEK_DATA in
//!   DST) and allocated blocks against what their data needs.
//! - Which path a file took is checked from outside: after a durable copy to ext4 or xfs
//!   (4 KiB blocks), no page of a file of 256 KiB or more may be in DST's page cache (mincore),
//!   as O_DIRECT leaves none (but for the page holding an unaligned end of file, written
//!   through the cache); and the copy reads nothing back from the target (a padded last block
//!   truncated back made ext4 and xfs read it); after `--fsync none`, on btrfs and with
//!   `--data-path cfr`, such files must have pages cached.
//! - Trees: sizes straddling 4096, 256 KiB and 4 MiB, a file over 64 MiB, sparse files with holes
//!   at the start, middle and end (and one of many one-page runs), a hardlink, xattrs, an owner,
//!   modes, past mtimes with nanoseconds and future atimes.
//! - Targets: tmpfs, loop ext4, xfs and btrfs (SRC on a tmpfs); an ext4 with 1 KiB blocks holding
//!   SRC and DST (SEEK_DATA gives runs at offsets that are not 4096-aligned, so one file gets
//!   direct and buffered pieces); a ramfs, which refuses O_DIRECT at `fcntl`; an xfs with 16 KiB
//!   sectors, where direct writes aligned to 4 KiB only answer EINVAL. Engines uring, sync and
//!   the default; `--fsync end`, `file`, `none`; `--threads 1` and 2; a 1 MiB buffer pool;
//!   `--bwlimit`; `--data-path ring|cfr`. Single files copied to a new name, and `--json`'s byte
//!   count (padding is not data).
//! - `mirror` into an existing DST where big files grew, shrank (to unaligned sizes, and below
//!   the threshold), changed in place, turned sparse or dense.
//! - ENOSPC: a 64 MiB ext4 (and a 300 MiB xfs) as DST for more data than fits: exit 3, every
//!   failure named on stderr, every file under a final name exactly its source, no failed file
//!   under its name, nothing in DST that SRC lacks.
//!
//! Needs root (mounts). A missing prerequisite prints `SKIPPED: <reason>` and returns, unless
//! the `CI` environment variable is set (then the test fails).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use rustix::fs::SeekFrom;
use rustix::io::Errno;

use common::mount::LoopFs;
use common::oracle::{compare_scanned, scan_tree, show, Tree};
use common::procs::{run_ringsync, Ran};
use common::*;

/// A ringsync process still running after this long is killed (the test then fails).
const DEADLINE: Duration = Duration::from_secs(120);

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// file.rs `DIRECT_MIN_BYTES`: durable runs write files at least this large with O_DIRECT.
const DIRECT_MIN: u64 = 256 * KIB;

// ---------------------------------------------------------------------------------------------
// Mounts

/// Mount `kind` ("tmpfs", "ext4-1k", "ext4-64m", "xfs-300m", or a `LoopFs` type of 512 MiB), or
/// skip (fail under CI).
fn mount_kind(kind: &'static str) -> Option<LoopFs> {
    let fs = match kind {
        "tmpfs" => LoopFs::tmpfs("size=768m"),
        "ext4-1k" => LoopFs::with_mkfs("ext4", 512, &["-b", "1024"]),
        "ext4-64m" => LoopFs::with_mkfs("ext4", 64, &["-b", "4096"]),
        "xfs-300m" => LoopFs::new("xfs", 300),
        _ => LoopFs::new(kind, 512),
    };
    match fs {
        Ok(m) => Some(m),
        Err(why) => {
            skip_or_fail(&why);
            None
        }
    }
}

/// A ramfs mounted here (no image; it refuses O_DIRECT at `fcntl`, has no xattrs and calls
/// everything data for SEEK_DATA), unmounted on drop.
struct Ramfs {
    mnt: PathBuf,
    // Dropped after `Drop::drop` has unmounted.
    _tmp: tempfile::TempDir,
}

impl Ramfs {
    fn mount() -> Option<Ramfs> {
        if !is_root() {
            skip_or_fail("ramfs mount needs root");
            return None;
        }
        let tmp = scratch("ramfs");
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "ramfs", "ramfs"])
            .arg(&mnt)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Ramfs { mnt, _tmp: tmp }),
            Ok(o) => {
                skip_or_fail(&format!(
                    "mount -t ramfs failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
                None
            }
            Err(e) => {
                skip_or_fail(&format!("run mount: {e}"));
                None
            }
        }
    }
}

impl Drop for Ramfs {
    fn drop(&mut self) {
        for attempt in 0..20 {
            let out = std::process::Command::new("umount").arg(&self.mnt).output();
            if out.is_ok_and(|o| o.status.success()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50 * (attempt + 1)));
        }
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.mnt)
            .output();
    }
}

/// An xfs with 16 KiB blocks on a loop device with 16 KiB logical sectors (kernels with large
/// block sizes): O_DIRECT there wants 16 KiB alignment, so direct writes at 4 KiB-aligned
/// offsets, or padded to 4 KiB, answer EINVAL. Unmounted and detached on drop.
struct BigSectorXfs {
    mnt: PathBuf,
    dev: String,
    // Dropped after `Drop::drop` has unmounted.
    _tmp: tempfile::TempDir,
}

impl BigSectorXfs {
    const SECTOR: u64 = 16 * KIB;

    fn mount() -> Option<BigSectorXfs> {
        match BigSectorXfs::try_mount() {
            Ok(m) => Some(m),
            Err(why) => {
                skip_or_fail(&why);
                None
            }
        }
    }

    fn try_mount() -> Result<BigSectorXfs, String> {
        if !is_root() {
            return Err("loop device with 16 KiB sectors needs root".into());
        }
        for tool in ["losetup", "mkfs.xfs", "mount", "umount"] {
            if !have_tool(tool) {
                return Err(format!("{tool} not installed"));
            }
        }
        let run = |cmd: &mut std::process::Command| -> Result<String, String> {
            let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "{cmd:?} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        };
        let tmp = scratch("loop-xfs16k");
        let img = tmp.path().join("fs.img");
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&mnt).map_err(|e| format!("mkdir: {e}"))?;
        File::create(&img)
            .and_then(|f| f.set_len(512 * MIB))
            .map_err(|e| format!("create image: {e}"))?;
        let sector = BigSectorXfs::SECTOR.to_string();
        let dev = run(std::process::Command::new("losetup")
            .args(["-f", "--show", "--sector-size", &sector])
            .arg(&img))
        .map_err(|e| format!("a loop device with 16 KiB sectors (a kernel with large block sizes): {e}"))?;
        let m = BigSectorXfs {
            mnt,
            dev: dev.clone(),
            _tmp: tmp,
        };
        let lbs = std::fs::read_to_string(format!(
            "/sys/block/{}/queue/logical_block_size",
            dev.trim_start_matches("/dev/")
        ))
        .unwrap_or_default();
        if lbs.trim() != sector {
            return Err(format!("{dev}: logical block size {lbs:?}, not {sector}"));
        }
        let size = format!("size={sector}");
        run(std::process::Command::new("mkfs.xfs").args(["-q", "-f", "-s", &size, "-b", &size, &dev]))?;
        run(std::process::Command::new("mount").arg(&dev).arg(&m.mnt))
            .map_err(|e| format!("xfs with 16 KiB blocks (a kernel with large block sizes): {e}"))?;
        Ok(m)
    }
}

impl Drop for BigSectorXfs {
    fn drop(&mut self) {
        let mounted = || {
            std::fs::read_to_string("/proc/self/mounts")
                .is_ok_and(|m| m.contains(&*self.mnt.to_string_lossy()))
        };
        let umount = |lazy: bool| {
            let mut c = std::process::Command::new("umount");
            if lazy {
                c.arg("-l");
            }
            let _ = c.arg(&self.mnt).output();
        };
        for attempt in 0..20 {
            if !mounted() {
                break;
            }
            umount(false);
            std::thread::sleep(Duration::from_millis(50 * attempt));
        }
        if mounted() {
            umount(true);
        }
        // A device still busy is detached when its last user goes.
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.dev])
            .output();
    }
}

/// ramfs's statfs magic.
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// Whether `p` is on a ramfs (no xattrs, no SEEK_DATA holes to check).
fn on_ramfs(p: &Path) -> bool {
    rustix::fs::statfs(p).is_ok_and(|s| s.f_type == RAMFS_MAGIC)
}

// ---------------------------------------------------------------------------------------------
// Running ringsync

/// `ringsync SUB -q EXTRA... SRC DST`, stdin and stdout /dev/null.
fn ringsync(sub: &str, extra: &[&str], src: &Path, dst: &Path) -> Ran {
    let mut args: Vec<&OsStr> = vec![OsStr::new(sub), OsStr::new("-q")];
    args.extend(extra.iter().map(OsStr::new));
    args.push(src.as_os_str());
    args.push(dst.as_os_str());
    run_ringsync(&args, DEADLINE)
}

/// Exit 0 and no panic, or a description of what happened.
fn ran_ok(r: &Ran, what: &str) -> Result<(), String> {
    if r.panicked() || r.code != Some(0) {
        return Err(r.describe(&format!("{what}: expected exit 0 and no panic")));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// What the test made: every regular file's expected bytes and attributes

/// One regular file as made: `size` bytes, zeros except `runs` (offset, length, seed) whose bytes
/// come from `SmallRng::seed_from_u64(seed)`.
#[derive(Clone, Debug)]
struct Want {
    size: u64,
    runs: Vec<(u64, u64, u64)>,
    mode: u32,
    mtime: (i64, u32),
    xattrs: Vec<(String, Vec<u8>)>,
    sparse: bool,
}

fn run_bytes(seed: u64, len: u64) -> Vec<u8> {
    let mut v = vec![0u8; len as usize];
    SmallRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

impl Want {
    fn bytes(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.size as usize];
        for &(off, len, seed) in &self.runs {
            v[off as usize..(off + len) as usize].copy_from_slice(&run_bytes(seed, len));
        }
        v
    }

    /// The ranges without data, in order.
    fn holes(&self) -> Vec<(u64, u64)> {
        let mut holes = Vec::new();
        let mut pos = 0;
        for &(off, len, _) in &self.runs {
            if off > pos {
                holes.push((pos, off));
            }
            pos = pos.max(off + len);
        }
        if pos < self.size {
            holes.push((pos, self.size));
        }
        holes
    }

    /// Bytes a filesystem with blocks of `bs` bytes needs for the data runs.
    fn data_need(&self, bs: u64) -> u64 {
        let mut blocks = BTreeSet::new();
        for &(off, len, _) in &self.runs {
            if len > 0 {
                blocks.extend(off / bs..(off + len).div_ceil(bs));
            }
        }
        blocks.len() as u64 * bs
    }
}

#[derive(Default)]
struct Built {
    files: BTreeMap<String, Want>,
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(1_700_000_000)
}

/// An mtime in `secs` with nanoseconds, and an atime hours in the future (so that no read under
/// `relatime` changes it); returns the mtime.
fn set_times(p: &Path, rng: &mut SmallRng, secs: std::ops::Range<i64>) -> (i64, u32) {
    let mtime = (rng.gen_range(secs), rng.gen_range(1..1_000_000_000u32));
    let t = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: now_secs() + rng.gen_range(3600..172_800),
            tv_nsec: rng.gen_range(0..1_000_000_000),
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: mtime.0,
            tv_nsec: mtime.1 as _,
        },
    };
    rustix::fs::utimensat(rustix::fs::CWD, p, &t, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
        .unwrap_or_else(|e| panic!("utimensat {}: {e}", p.display()));
    mtime
}

/// mtimes of the first tree version; a second version draws from `MTIMES_V2`, so that every
/// rewritten file has another mtime than before.
const MTIMES_V1: std::ops::Range<i64> = 946_684_800..1_300_000_000;
const MTIMES_V2: std::ops::Range<i64> = 1_300_000_000..1_600_000_000;

fn mkdirs(root: &Path, rel: &str) {
    std::fs::create_dir_all(root.join(rel)).unwrap_or_else(|e| panic!("mkdir {rel}: {e}"));
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

impl Built {
    /// A file of `size` random bytes (any previous file of that name removed first), its mode
    /// and times set.
    fn file(&mut self, rng: &mut SmallRng, root: &Path, rel: &str, size: u64, mode: u32) -> PathBuf {
        self.make(rng, root, rel, size, &[(0, size)], mode, false)
    }

    /// A sparse file of `size` bytes with random data only at `runs` (offset, length), written
    /// with pwrite into a file made of holes; it must be sparse on SRC's filesystem.
    fn sparse(
        &mut self,
        rng: &mut SmallRng,
        root: &Path,
        rel: &str,
        size: u64,
        runs: &[(u64, u64)],
    ) -> PathBuf {
        self.make(rng, root, rel, size, runs, 0o640, true)
    }

    #[allow(clippy::too_many_arguments)]
    fn make(
        &mut self,
        rng: &mut SmallRng,
        root: &Path,
        rel: &str,
        size: u64,
        runs: &[(u64, u64)],
        mode: u32,
        sparse: bool,
    ) -> PathBuf {
        let p = root.join(rel);
        let _ = std::fs::remove_file(&p);
        let f = File::create(&p).unwrap_or_else(|e| panic!("create {rel}: {e}"));
        if sparse {
            f.set_len(size).unwrap();
        }
        let mut want_runs = Vec::new();
        for &(off, len) in runs {
            assert!(off + len <= size, "{rel}: run past the end");
            let seed = rng.next_u64();
            f.write_all_at(&run_bytes(seed, len), off)
                .unwrap_or_else(|e| panic!("pwrite {rel} at {off}: {e}"));
            want_runs.push((off, len, seed));
        }
        drop(f);
        chmod(&p, mode);
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.len(), size, "{rel}: the test's own file has the wrong size");
        if sparse {
            assert!(
                m.blocks() * 512 < size,
                "{rel}: not sparse on SRC's filesystem ({} blocks for {size} bytes): the test would not test holes",
                m.blocks()
            );
        }
        let secs = if self.files.contains_key(rel) {
            MTIMES_V2
        } else {
            MTIMES_V1
        };
        let mtime = set_times(&p, rng, secs);
        self.files.insert(
            rel.to_string(),
            Want {
                size,
                runs: want_runs,
                mode,
                mtime,
                xattrs: Vec::new(),
                sparse,
            },
        );
        p
    }

    fn setx(&mut self, root: &Path, rel: &str, name: &str, value: &[u8]) {
        rustix::fs::setxattr(root.join(rel), name, value, rustix::fs::XattrFlags::empty())
            .unwrap_or_else(|e| panic!("setxattr {name} on {rel}: {e}"));
        let w = self.files.get_mut(rel).expect("setx on a file made here");
        w.xattrs.retain(|(n, _)| n != name);
        w.xattrs.push((name.to_string(), value.to_vec()));
    }

    /// A second name for `from` (same inode: same bytes, mode, times, xattrs).
    fn link(&mut self, root: &Path, from: &str, to: &str) {
        std::fs::hard_link(root.join(from), root.join(to)).unwrap_or_else(|e| panic!("link {to}: {e}"));
        let w = self.files[from].clone();
        self.files.insert(to.to_string(), w);
    }

    fn total(&self) -> u64 {
        self.files.values().map(|w| w.size).sum()
    }
}

/// Every directory under `root` (post-order, `root` last): past mtimes, future atimes.
fn dir_times(root: &Path, rng: &mut SmallRng) {
    let mut names: Vec<PathBuf> = std::fs::read_dir(root)
        .expect("read_dir")
        .map(|e| e.expect("dirent").path())
        .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()))
        .collect();
    names.sort();
    for n in names {
        dir_times(&n, rng);
    }
    set_times(root, rng, MTIMES_V1);
}

/// Sizes around 4096 (alignment), 256 KiB (the O_DIRECT threshold), 4 MiB (a piece) and one
/// over 64 MiB (the chunk size over which page-cache copies are split over workers).
const BOUNDARY_SIZES: &[u64] = &[
    0,
    1,
    4095,
    4096,
    4097,
    DIRECT_MIN - 1,
    DIRECT_MIN,
    DIRECT_MIN + 1,
    4 * MIB - 1,
    4 * MIB,
    4 * MIB + 1,
    4 * MIB + 4097,
    70 * MIB + 123,
];

/// The tree of the filesystem tests: boundary sizes, sparse files, a hardlink, xattrs, an owner.
fn build_boundary_tree(root: &Path, seed: u64, sizes: &[u64]) -> Built {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut b = Built::default();
    std::fs::create_dir(root).unwrap();
    for d in ["sizes", "sparse", "links/sub", "xattr", "secret"] {
        mkdirs(root, d);
    }
    let modes = [0o644, 0o600, 0o755, 0o640, 0o444, 0o2750, 0o4755];
    for (i, &size) in sizes.iter().enumerate() {
        b.file(
            &mut rng,
            root,
            &format!("sizes/f{size:09}"),
            size,
            modes[i % modes.len()],
        );
    }
    let mut sp = |b: &mut Built, name: &str, size: u64, runs: &[(u64, u64)]| {
        b.sparse(&mut rng, root, &format!("sparse/{name}"), size, runs);
    };
    // Hole at the start, data to an end that is not block-aligned (a padded last block).
    sp(
        &mut b,
        "hole-start",
        3 * MIB + 100,
        &[(2 * MIB + 8192, MIB - 8192 + 100)],
    );
    // Hole in the middle.
    sp(
        &mut b,
        "hole-middle",
        6 * MIB + 333,
        &[(0, MIB), (5 * MIB, MIB + 333)],
    );
    // Hole at the end: the size is set, not written.
    sp(&mut b, "hole-end", 8 * MIB + 5, &[(0, 300_000)]);
    // Holes at the start, in the middle and at the end, data runs crossing 4 MiB.
    sp(
        &mut b,
        "holes-everywhere",
        9 * MIB + 4097,
        &[(MIB + 4096, 2 * MIB), (5 * MIB - 3, MIB + 6)],
    );
    // A data run at an unaligned offset.
    sp(&mut b, "run-at-5000", 2 * MIB + 17, &[(5000, 70_000)]);
    // All hole.
    sp(&mut b, "all-hole", 10 * MIB + 7, &[]);
    // Only the last 10 bytes, just past the threshold: one padded block after a hole.
    sp(&mut b, "tail-only", DIRECT_MIN + 4095, &[(DIRECT_MIN + 4085, 10)]);
    // Exactly the threshold, data in one page in the middle.
    sp(&mut b, "threshold", DIRECT_MIN, &[(100_000, 10)]);
    // Below the threshold.
    sp(&mut b, "small", 40_000, &[(30_000, 10)]);
    // Several short runs at odd offsets, and the very last byte.
    sp(
        &mut b,
        "several-runs",
        MIB + 1,
        &[(100_000, 1000), (300_001, 5000), (700_000, 3), (MIB, 1)],
    );
    // Many one-page runs, two pages apart: many pieces of one file under way at once.
    let many: Vec<(u64, u64)> = (1..340).map(|i| (i * 12 * KIB, 4 * KIB)).collect();
    sp(&mut b, "many-runs", 4 * MIB + 1, &many);
    b.setx(root, "sparse/hole-end", "user.sparse", b"hole at the end");
    // A hardlinked big file with an xattr.
    b.file(&mut rng, root, "links/big-1", 5 * MIB + 77, 0o644);
    b.setx(root, "links/big-1", "user.link", b"on both names");
    b.link(root, "links/big-1", "links/sub/big-2");
    // Xattrs on a big file.
    b.file(&mut rng, root, "xattr/big", 2 * MIB + 1, 0o640);
    // (Small enough for the one 1 KiB block an ext4 with 1 KiB blocks has for them.)
    let bin = run_bytes(rng.next_u64(), 600);
    b.setx(root, "xattr/big", "user.alpha", b"one");
    b.setx(root, "xattr/big", "user.bin", &bin);
    b.setx(root, "xattr/big", "user.empty", b"");
    b.setx(root, "xattr/big", "trusted.t", b"root's");
    // An owner (root runs these tests), then the mode chown clears.
    let o = b.file(&mut rng, root, "secret/owned", 300_000, 0o644);
    std::os::unix::fs::chown(&o, Some(1234), Some(5678)).unwrap();
    chmod(&o, 0o4750);
    b.files.get_mut("secret/owned").unwrap().mode = 0o4750;
    dir_times(root, &mut rng);
    b
}

// ---------------------------------------------------------------------------------------------
// Checks

fn fmt_list(d: &[String]) -> String {
    d.iter().take(60).cloned().collect::<Vec<_>>().join("\n  ")
}

/// Open for reading without touching the atime.
fn open_ro(p: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME | libc::O_NOFOLLOW)
        .open(p)
}

/// SEEK_DATA from `off`: the next data offset, or None when only hole follows.
fn next_data(f: &File, off: u64) -> Option<u64> {
    match rustix::fs::seek(f, SeekFrom::Data(off)) {
        Ok(d) => Some(d),
        Err(Errno::NXIO) => None,
        Err(e) => panic!("SEEK_DATA at {off}: {e}"),
    }
}

/// The data runs SEEK_DATA/SEEK_HOLE report for `f` of `size` bytes.
fn data_runs(f: &File, size: u64) -> Vec<(u64, u64)> {
    let mut runs = Vec::new();
    let mut pos = 0;
    while pos < size {
        let Some(d) = next_data(f, pos) else {
            break;
        };
        if d >= size {
            break;
        }
        let h = rustix::fs::seek(f, SeekFrom::Hole(d))
            .expect("SEEK_HOLE")
            .min(size);
        runs.push((d, h));
        pos = h;
    }
    runs
}

/// Bytes of the block size of the filesystem holding `p`.
fn block_size(p: &Path) -> u64 {
    rustix::fs::statvfs(p).expect("statvfs").f_bsize
}

/// One regular file of DST against what the test made: size, bytes, mode, mtime, xattrs; for a
/// sparse file, its holes and allocated blocks. Problems are pushed to `bad`.
fn check_file(p: &Path, rel: &str, w: &Want, bs: u64, bad: &mut Vec<String>) {
    let m = match std::fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(e) => {
            bad.push(format!("{rel}: {e}"));
            return;
        }
    };
    if !m.is_file() {
        bad.push(format!("{rel}: not a regular file"));
        return;
    }
    if m.len() != w.size {
        bad.push(format!("{rel}: size {} instead of {}", m.len(), w.size));
    }
    if m.mode() & 0o7777 != w.mode {
        bad.push(format!(
            "{rel}: mode {:o} instead of {:o}",
            m.mode() & 0o7777,
            w.mode
        ));
    }
    if (m.mtime(), m.mtime_nsec() as u32) != w.mtime {
        bad.push(format!(
            "{rel}: mtime {}.{:09} instead of {}.{:09}",
            m.mtime(),
            m.mtime_nsec(),
            w.mtime.0,
            w.mtime.1
        ));
    }
    let ramfs = on_ramfs(p);
    for (name, value) in w.xattrs.iter().filter(|_| !ramfs) {
        let mut buf = vec![0u8; 4096];
        match rustix::fs::lgetxattr(p, name.as_str(), &mut buf) {
            Ok(n) if buf[..n] == value[..] => {}
            Ok(n) => bad.push(format!("{rel}: xattr {name} is {:?}", show(&buf[..n]))),
            Err(e) => bad.push(format!("{rel}: xattr {name}: {e}")),
        }
    }
    let mut got = Vec::new();
    let f = match open_ro(p).and_then(|mut f| f.read_to_end(&mut got).map(|_| f)) {
        Ok(f) => f,
        Err(e) => {
            bad.push(format!("{rel}: read: {e}"));
            return;
        }
    };
    let want = w.bytes();
    if got != want {
        let at = got.iter().zip(&want).position(|(a, b)| a != b);
        bad.push(format!(
            "{rel}: bytes differ ({} bytes read, {} expected; first difference at {:?})",
            got.len(),
            want.len(),
            at.or(Some(got.len().min(want.len())))
        ));
    }
    if w.sparse && !ramfs {
        // Holes of 256 KiB or more stay holes (inside, away from block and extent edges).
        for (a, z) in w.holes() {
            let (a, z) = (a.next_multiple_of(64 * KIB), z / (64 * KIB) * (64 * KIB));
            if z >= a + DIRECT_MIN {
                if let Some(d) = next_data(&f, a).filter(|&d| d < z) {
                    bad.push(format!("{rel}: data at {d} inside the source's hole [{a}, {z})"));
                }
            }
        }
    }
    if w.sparse {
        let need = w.data_need(bs);
        let allowed = need + 64 * KIB + 64 * KIB * need.div_ceil(MIB);
        if m.blocks() * 512 > allowed {
            bad.push(format!(
                "{rel}: {} bytes allocated for {need} bytes of data (allowed {allowed}): holes were filled",
                m.blocks() * 512
            ));
        }
    }
}

/// DST is SRC: every file the builder made, checked against what it was made with, then the
/// oracle against the scan `before` (and SRC unchanged). Problems are pushed to `bad`.
///
/// The files are checked first: each is stat'ed before it is read, and reading a hole of a
/// ramfs file fills it. On ramfs the oracle (which reads every file) then does not judge
/// sparseness, nor xattrs (ramfs has none).
fn check_tree(
    before: &Tree,
    built: &Built,
    src: &Path,
    dst: &Path,
    cmp: &CompareOpts,
    what: &str,
    bad: &mut Vec<String>,
) {
    let bs = block_size(dst);
    let mut files = Vec::new();
    for (rel, w) in &built.files {
        check_file(&dst.join(rel), rel, w, bs, &mut files);
    }
    if !files.is_empty() {
        bad.push(format!(
            "{what}: files in DST not as made:\n  {}",
            fmt_list(&files)
        ));
    }
    let ramfs_cmp = CompareOpts {
        xattrs: false,
        sparse: false,
        ..cmp.clone()
    };
    let cmp = if on_ramfs(dst) { &ramfs_cmp } else { cmp };
    match scan_tree(dst, true) {
        Ok(after) => {
            let d = compare_scanned(before, &after, cmp);
            if !d.is_empty() {
                bad.push(format!(
                    "{what}: the oracle finds DST differs from SRC ({} differences):\n  {}",
                    d.len(),
                    fmt_list(&d)
                ));
            }
        }
        Err(e) => bad.push(format!("{what}: scan DST: {e}")),
    }
    let now = scan_tree(src, true).expect("scan SRC");
    let d = compare_scanned(before, &now, &CompareOpts::default());
    if !d.is_empty() {
        bad.push(format!("{what}: SRC changed:\n  {}", fmt_list(&d)));
    }
}

/// For each page of `p`, whether it is in the page cache (mincore of a mapping of the file).
fn cached_pages(p: &Path) -> Vec<bool> {
    let f = open_ro(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let len = f.metadata().unwrap().len() as usize;
    if len == 0 {
        return Vec::new();
    }
    // SAFETY: sysconf reads a constant of the system; no memory is passed.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    // SAFETY: a new read-only shared mapping of a file held open, at an address the kernel
    // chooses; nothing reads through it (mincore only looks up the page cache) and it is
    // unmapped below.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(
        addr,
        libc::MAP_FAILED,
        "mmap {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
    let mut vec = vec![0u8; len.div_ceil(page)];
    // SAFETY: `addr` is the page-aligned start of the `len`-byte mapping made above, and `vec`
    // has one byte per page of it, as mincore(2) requires.
    let rc = unsafe { libc::mincore(addr, len, vec.as_mut_ptr()) };
    let err = std::io::Error::last_os_error();
    // SAFETY: unmaps exactly the mapping made above, which nothing else refers to.
    unsafe { libc::munmap(addr, len) };
    assert_eq!(rc, 0, "mincore {}: {err}", p.display());
    vec.iter().map(|b| b & 1 == 1).collect()
}

/// Which way files of 256 KiB or more must have gone, as seen in DST's page cache right after
/// the run (before anything reads DST).
/// Direct: no page cached but the one holding an unaligned end of file.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Route {
    /// O_DIRECT: no page cached.
    Direct,
    /// Through the page cache: some page cached.
    Cached,
    /// Not checked (tmpfs is its page cache).
    Any,
}

fn check_path(dst: &Path, built: &Built, how: Route, what: &str, bad: &mut Vec<String>) {
    if how == Route::Any {
        return;
    }
    let mut wrong = Vec::new();
    for (rel, w) in &built.files {
        if w.size < DIRECT_MIN || w.runs.iter().all(|r| r.1 == 0) {
            continue;
        }
        let pages = cached_pages(&dst.join(rel));
        // The page holding an unaligned end of file: written through the page cache.
        let eof_page = (w.size % 4096 != 0).then_some((w.size / 4096) as usize);
        let cached = (0..pages.len())
            .filter(|&i| pages[i] && (how != Route::Direct || Some(i) != eof_page))
            .count();
        match how {
            Route::Direct if cached > 0 => wrong.push(format!(
                "{rel}: {cached} of {} pages in the page cache: not written with O_DIRECT",
                pages.len()
            )),
            Route::Cached if cached == 0 => wrong.push(format!(
                "{rel}: no page in the page cache: written with O_DIRECT where it must not be"
            )),
            _ => {}
        }
    }
    if !wrong.is_empty() {
        bad.push(format!(
            "{what}: files of 256 KiB or more did not take the expected path ({how:?}):\n  {}",
            fmt_list(&wrong)
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// 1.-3. Boundary sizes and sparse files, copied to each filesystem with each engine and mode

/// One run's options. `None` leaves the default (engine auto, fsync end, threads = cores).
struct Combo {
    engine: Option<&'static str>,
    fsync: Option<&'static str>,
    threads: Option<&'static str>,
    extra: &'static [&'static str],
}

impl Combo {
    fn args(&self) -> Vec<&'static str> {
        let mut a = Vec::new();
        for (flag, v) in [
            ("--engine", self.engine),
            ("--fsync", self.fsync),
            ("--threads", self.threads),
        ] {
            if let Some(v) = v {
                a.extend([flag, v]);
            }
        }
        a.extend(self.extra);
        a
    }

    /// Whether the run is durable and may use O_DIRECT.
    fn direct(&self) -> bool {
        self.fsync != Some("none") && !self.extra.contains(&"cfr")
    }
}

const fn combo(
    engine: Option<&'static str>,
    fsync: Option<&'static str>,
    threads: Option<&'static str>,
    extra: &'static [&'static str],
) -> Combo {
    Combo {
        engine,
        fsync,
        threads,
        extra,
    }
}

/// The defaults (uring, `--fsync end`), over two threads.
const DEFAULT_2: Combo = combo(None, None, Some("2"), &[]);
const URING_END_1: Combo = combo(Some("uring"), Some("end"), Some("1"), &[]);
const SYNC_END_2: Combo = combo(Some("sync"), Some("end"), Some("2"), &[]);
const SYNC_FILE_1: Combo = combo(Some("sync"), Some("file"), Some("1"), &[]);
const URING_FILE_2: Combo = combo(Some("uring"), Some("file"), Some("2"), &[]);
const URING_NONE_2: Combo = combo(Some("uring"), Some("none"), Some("2"), &[]);
const SYNC_NONE_1: Combo = combo(Some("sync"), Some("none"), Some("1"), &[]);
/// Page-cache ring copies split over workers (the path O_DIRECT files no longer take).
const RING_NONE_2: Combo = combo(Some("uring"), Some("none"), Some("2"), &["--data-path", "ring"]);
const CFR_END_2: Combo = combo(None, Some("end"), Some("2"), &["--data-path", "cfr"]);
/// One 1 MiB buffer per worker: pieces of 1 MiB, the last one padded inside its buffer.
const SMALL_POOL: Combo = combo(Some("uring"), Some("end"), Some("2"), &["--memory", "1M"]);
/// Pieces of the limiter's size (a multiple of 4096 below 4 MiB).
const BWLIMIT: Combo = combo(Some("sync"), Some("end"), Some("2"), &["--bwlimit", "400M"]);

/// Copy `src` (scanned as `before`) into a new DST under `target` with each combo; every check of
/// every run is collected, then the test fails with all of them.
fn copy_matrix(
    target: &Path,
    src: &Path,
    built: &Built,
    combos: &[Combo],
    direct_fs: Option<bool>,
    what: &str,
) {
    let before = scan_tree(src, true).expect("scan SRC");
    // The oracle's sparse rule assumes blocks of at most 4 KiB: on 16 KiB blocks a file of
    // one-page data runs 12 KiB apart cannot have a hole anywhere. `check_tree`'s own hole
    // checks use the target's block size.
    let cmp = CompareOpts {
        sparse: block_size(target) <= 4096,
        ..CompareOpts::default()
    };
    let mut bad = Vec::new();
    for (i, c) in combos.iter().enumerate() {
        let args = c.args();
        let run = format!("{what}: copy {}", args.join(" "));
        let dst = target.join(format!("dst-{i}"));
        let r = ringsync("copy", &args, src, &dst);
        if let Err(e) = ran_ok(&r, &run) {
            bad.push(e);
        }
        if dst.is_dir() {
            let how = match direct_fs {
                None => Route::Any,
                Some(true) if c.direct() => Route::Direct,
                Some(_) => Route::Cached,
            };
            check_path(&dst, built, how, &run, &mut bad);
            check_tree(&before, built, src, &dst, &cmp, &run, &mut bad);
            std::fs::remove_dir_all(&dst).unwrap_or_else(|e| panic!("{run}: remove DST: {e}"));
        } else {
            bad.push(format!("{run}: no DST made"));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n\n"));
}

/// The boundary tree on a tmpfs, copied to `kind` with `combos`. `direct_fs`: whether durable
/// runs must write big files with O_DIRECT there (None: not observable). Then `more`, given the
/// target, SRC and what was built.
fn copies_to(
    kind: &'static str,
    seed: u64,
    combos: &[Combo],
    direct_fs: Option<bool>,
    more: impl FnOnce(&Path, &Path, &Built),
) {
    let Some(srcfs) = mount_kind("tmpfs") else {
        return;
    };
    let (mut ram, mut disk, mut big) = (None, None, None);
    let target = match kind {
        "tmpfs" => srcfs.path(),
        "ramfs" => match Ramfs::mount() {
            Some(r) => &ram.insert(r).mnt,
            None => return,
        },
        "xfs-16k" => match BigSectorXfs::mount() {
            Some(r) => &big.insert(r).mnt,
            None => return,
        },
        _ => match mount_kind(kind) {
            Some(t) => disk.insert(t).path(),
            None => return,
        },
    };
    let src = srcfs.path().join("src");
    let built = build_boundary_tree(&src, seed, BOUNDARY_SIZES);
    copy_matrix(target, &src, &built, combos, direct_fs, kind);
    more(target, &src, &built);
}

/// Single files copied to a new name (direct, exact), and `--json`'s byte count for a directory
/// of plain files: exactly the sum of their sizes (the padding of last blocks is not data).
fn single_files_and_byte_count(target: &Path, src: &Path, built: &Built) {
    let mut bad = Vec::new();
    let one = |name: String, rel: &str| -> Built {
        let mut b = Built::default();
        b.files.insert(name, built.files[rel].clone());
        b
    };
    for (i, rel) in [
        "sizes/f004198401",
        "sizes/f000262145",
        "sparse/holes-everywhere",
        "xattr/big",
    ]
    .into_iter()
    .enumerate()
    {
        let dst = target.join(format!("single-{i}"));
        let what = format!("ext4: copy SRC/{rel} DST/single-{i}");
        let r = ringsync("copy", &[], &src.join(rel), &dst);
        if let Err(e) = ran_ok(&r, &what) {
            bad.push(e);
            continue;
        }
        check_path(
            target,
            &one(format!("single-{i}"), rel),
            Route::Direct,
            &what,
            &mut bad,
        );
        let mut files = Vec::new();
        check_file(&dst, rel, &built.files[rel], block_size(target), &mut files);
        if !files.is_empty() {
            bad.push(format!("{what}:\n  {}", fmt_list(&files)));
        }
    }
    let dst = target.join("json-dst");
    let out = run_copy(&["--json", "--threads", "2"], &src.join("sizes"), &dst);
    let (mut files, mut bytes) = (0u64, 0u64);
    for (rel, w) in &built.files {
        if rel.starts_with("sizes/") {
            files += 1;
            bytes += w.size;
        }
    }
    let what = "ext4: copy --json SRC/sizes";
    if out.status.code() != Some(0) {
        bad.push(format!("{what}: {}", describe(&out)));
    } else {
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{what}: stdout is not JSON ({e}): {}", describe(&out)));
        let got = (v["files"].as_u64(), v["bytes"].as_u64());
        if got != (Some(files), Some(bytes)) {
            bad.push(format!(
                "{what}: files and bytes {got:?} instead of ({files}, {bytes}) (the sizes' sum): {v}"
            ));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n\n"));
}

#[test]
fn tmpfs_boundary_sizes_and_sparse_files_exact() {
    copies_to(
        "tmpfs",
        0xc0_0001,
        &[DEFAULT_2, SYNC_FILE_1, URING_NONE_2],
        None,
        |_, _, _| {},
    );
}

/// ramfs refuses O_DIRECT when it is asked for (`fcntl`): durable copies go on through the page
/// cache, exact.
#[test]
fn ramfs_refusing_o_direct_boundary_sizes_and_sparse_files_exact() {
    copies_to("ramfs", 0xc0_0006, &[DEFAULT_2, SYNC_FILE_1], None, |_, _, _| {});
}

/// xfs with 16 KiB sectors and blocks: direct writes at 4 KiB-aligned offsets that are not
/// 16 KiB-aligned, and last blocks padded to 4 KiB, answer EINVAL. Each such file must go on
/// through the page cache (the piece rewritten unpadded) and come out exact, exit 0 — also when
/// several of its direct writes were under way when the first EINVAL came back (sparse files
/// with many data runs).
#[test]
fn xfs_16k_sectors_direct_writes_answered_einval_fall_back_exact() {
    copies_to(
        "xfs-16k",
        0xc0_0007,
        &[DEFAULT_2, SYNC_FILE_1],
        None,
        |_, _, _| {},
    );
}

#[test]
fn ext4_boundary_sizes_and_sparse_files_exact_and_direct() {
    copies_to(
        "ext4",
        0xc0_0002,
        &[
            DEFAULT_2,
            URING_END_1,
            SYNC_END_2,
            SYNC_FILE_1,
            URING_FILE_2,
            SMALL_POOL,
            BWLIMIT,
            URING_NONE_2,
            RING_NONE_2,
            CFR_END_2,
        ],
        Some(true),
        single_files_and_byte_count,
    );
}

#[test]
fn xfs_boundary_sizes_and_sparse_files_exact_and_direct() {
    copies_to(
        "xfs",
        0xc0_0003,
        &[DEFAULT_2, SYNC_FILE_1, URING_FILE_2, SYNC_NONE_1],
        Some(true),
        |_, _, _| {},
    );
}

/// btrfs targets never get O_DIRECT.
#[test]
fn btrfs_boundary_sizes_and_sparse_files_exact_and_cached() {
    copies_to(
        "btrfs",
        0xc0_0004,
        &[DEFAULT_2, SYNC_FILE_1, URING_NONE_2],
        Some(false),
        |_, _, _| {},
    );
}

/// SRC and DST on an ext4 with 1 KiB blocks: SEEK_DATA gives data runs at 1 KiB boundaries, so
/// files of 256 KiB or more have aligned pieces (direct) and pieces at offsets that are not
/// 4096-aligned (after which the file goes on through the page cache), a few KiB apart.
#[test]
fn ext4_1k_blocks_mixed_direct_and_buffered_pieces_exact() {
    let Some(fs) = mount_kind("ext4-1k") else {
        return;
    };
    let root = fs.path().join("src");
    let sizes: Vec<u64> = BOUNDARY_SIZES.iter().copied().filter(|&s| s < 64 * MIB).collect();
    let mut b = build_boundary_tree(&root, 0xc0_0005, &sizes);
    let mut rng = SmallRng::seed_from_u64(0xc0_0015);
    mkdirs(&root, "mixed");
    // 16 MiB of aligned data (four direct pieces), a 3 KiB hole, then data at an offset that is
    // not 4096-aligned to an unaligned end.
    b.sparse(
        &mut rng,
        &root,
        "mixed/aligned-then-not",
        17 * MIB + 3 * KIB + 1029,
        &[(0, 16 * MIB), (16 * MIB + 3 * KIB, MIB + 1029)],
    );
    // Runs separated by 1-3 KiB holes at 1 KiB boundaries.
    for (i, size) in [300 * KIB + 5, 2 * MIB + 1024, 5 * MIB + 3072]
        .into_iter()
        .enumerate()
    {
        let mut runs = Vec::new();
        let mut pos = rng.gen_range(0..4u64) * KIB;
        while pos < size {
            let len = (rng.gen_range(1..24u64) * KIB).min(size - pos);
            runs.push((pos, len));
            pos += len + rng.gen_range(1..4u64) * KIB;
        }
        if let Some(last) = runs.last_mut() {
            last.1 = size - last.0;
        }
        b.sparse(&mut rng, &root, &format!("mixed/runs-{i}"), size, &runs);
    }
    // A first run whose length is not a multiple of 4096 and that does not reach the end.
    b.sparse(
        &mut rng,
        &root,
        "mixed/unaligned-length",
        MIB + 300 * KIB + 7,
        &[(0, 600 * KIB + KIB), (MIB, 300 * KIB + 7)],
    );
    // A run beginning 1 KiB before a 4 MiB boundary, long enough for several pieces.
    b.sparse(
        &mut rng,
        &root,
        "mixed/long-run",
        13 * MIB + 9,
        &[(4 * MIB - KIB, 8 * MIB + 3)],
    );
    dir_times(&root, &mut rng);
    rustix::fs::syncfs(File::open(&root).unwrap()).unwrap();

    // The premise, seen with SEEK_DATA on SRC: files past the threshold with data runs starting
    // at 4096-aligned offsets and runs that do not.
    let mut mixed = Vec::new();
    for (rel, w) in &b.files {
        if !rel.starts_with("mixed/") {
            continue;
        }
        let f = open_ro(&root.join(rel)).unwrap();
        let runs = data_runs(&f, w.size);
        if w.size >= DIRECT_MIN
            && runs.iter().any(|r| r.0 % 4096 == 0)
            && runs.iter().any(|r| r.0 % 4096 != 0)
        {
            mixed.push(rel.clone());
        }
    }
    assert!(
        mixed.len() >= 3 && mixed.iter().any(|r| r == "mixed/aligned-then-not"),
        "SRC on 1 KiB blocks should give files with aligned and unaligned data runs; only {mixed:?} have them"
    );

    let before = scan_tree(&root, true).expect("scan SRC");
    let mut bad = Vec::new();
    for (i, c) in [DEFAULT_2, SYNC_FILE_1, SYNC_END_2, URING_NONE_2]
        .iter()
        .enumerate()
    {
        let args = c.args();
        let run = format!("ext4 (1 KiB blocks): copy {}", args.join(" "));
        let dst = fs.path().join(format!("dst-{i}"));
        let r = ringsync("copy", &args, &root, &dst);
        if let Err(e) = ran_ok(&r, &run) {
            bad.push(e);
        }
        if !dst.is_dir() {
            bad.push(format!("{run}: no DST made"));
            continue;
        }
        // With the sync engine each piece is written as its read completes, in order: the
        // first 16 MiB go direct before the unaligned run turns O_DIRECT off. (Pages of
        // partly written large folios are not reported by mincore here, so the buffered part is
        // not checked this way.)
        if c.engine == Some("sync") && c.direct() {
            let pages = cached_pages(&dst.join("mixed/aligned-then-not"));
            let cached = pages[..(16 * MIB / 4096) as usize].iter().filter(|&&c| c).count();
            if cached > 0 {
                bad.push(format!(
                    "{run}: mixed/aligned-then-not: {cached} pages of its aligned first 16 MiB in the \
                     page cache: not written with O_DIRECT"
                ));
            }
        }
        check_tree(&before, &b, &root, &dst, &CompareOpts::default(), &run, &mut bad);
        std::fs::remove_dir_all(&dst).unwrap();
    }
    assert!(bad.is_empty(), "{}", bad.join("\n\n"));
}

// ---------------------------------------------------------------------------------------------
// 4. mirror into an existing DST where big files changed

/// Version 1 of the mirror tree.
fn build_mirror_v1(root: &Path, rng: &mut SmallRng) -> Built {
    let mut b = Built::default();
    std::fs::create_dir(root).unwrap();
    mkdirs(root, "d");
    b.file(rng, root, "grow", MIB + 5, 0o644);
    b.file(rng, root, "shrink-unaligned", 6 * MIB, 0o644);
    b.file(rng, root, "shrink-below-threshold", 5 * MIB + 1, 0o600);
    b.file(rng, root, "grow-from-small", 10_000, 0o644);
    b.file(rng, root, "same-size", 4 * MIB + 4097, 0o644);
    b.sparse(rng, root, "sparse-to-dense", 8 * MIB + 5, &[(3 * MIB, 4096)]);
    b.file(rng, root, "dense-to-sparse", 3 * MIB + 100, 0o644);
    b.file(rng, root, "d/grow-past-64m", 60 * MIB + 3, 0o640);
    b.file(rng, root, "d/unchanged", 2 * MIB + 1, 0o644);
    b.setx(root, "d/unchanged", "user.keep", b"kept");
    b.file(rng, root, "d/unchanged-small", 4097, 0o644);
    b
}

/// Version 2: the same names, big files changed in size and content.
fn build_mirror_v2(root: &Path, b: &mut Built, rng: &mut SmallRng) {
    b.file(rng, root, "grow", 5 * MIB + 4097, 0o644);
    b.file(rng, root, "shrink-unaligned", DIRECT_MIN + 44 * KIB + 3, 0o644);
    b.file(rng, root, "shrink-below-threshold", 100_001, 0o600);
    b.file(rng, root, "grow-from-small", 4 * MIB + 1, 0o644);
    b.file(rng, root, "same-size", 4 * MIB + 4097, 0o755);
    b.file(rng, root, "sparse-to-dense", 8 * MIB + 5, 0o640);
    b.sparse(
        rng,
        root,
        "dense-to-sparse",
        3 * MIB + 100,
        &[(0, 4096), (3 * MIB - 4096, 4196)],
    );
    b.file(rng, root, "d/grow-past-64m", 70 * MIB + 123, 0o640);
    b.file(rng, root, "d/new", 300 * KIB + 1, 0o644);
    dir_times(root, rng);
}

/// `mirror` SRC DST, then SRC changes and `mirror` again, then once more with nothing to do;
/// each time DST is exact and the big files were written with O_DIRECT (ext4 DST).
#[test]
fn mirror_rewrites_changed_big_files_exactly() {
    let Some(srcfs) = mount_kind("tmpfs") else {
        return;
    };
    let Some(target) = mount_kind("ext4") else {
        return;
    };
    for (i, c) in [DEFAULT_2, SYNC_FILE_1].iter().enumerate() {
        let mut rng = SmallRng::seed_from_u64(0xc0_4000 + i as u64);
        let src = srcfs.path().join(format!("src-{i}"));
        let dst = target.path().join(format!("dst-{i}"));
        let args = c.args();
        let mut b = build_mirror_v1(&src, &mut rng);
        dir_times(&src, &mut rng);
        let mut bad = Vec::new();
        for round in [
            "into a missing DST",
            "after big files changed",
            "with nothing to do",
        ] {
            if round == "after big files changed" {
                build_mirror_v2(&src, &mut b, &mut rng);
            }
            let what = format!("mirror {} {round}", args.join(" "));
            let before = scan_tree(&src, true).expect("scan SRC");
            let r = ringsync("mirror", &args, &src, &dst);
            if let Err(e) = ran_ok(&r, &what) {
                bad.push(e);
            }
            check_path(&dst, &b, Route::Direct, &what, &mut bad);
            check_tree(&before, &b, &src, &dst, &mirror_cmp(), &what, &mut bad);
            assert!(bad.is_empty(), "{}", bad.join("\n\n"));
            // The checks read DST: out of the page cache again, for the next round's check.
            for rel in b.files.keys() {
                let f = open_ro(&dst.join(rel)).unwrap();
                rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
            }
        }
        std::fs::remove_dir_all(&dst).unwrap();
        std::fs::remove_dir_all(&src).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// 5. ENOSPC

/// More than a 64 MiB ext4 holds (`scale` times that): small files, big ones (one hardlinked), a
/// big sparse one.
fn build_enospc_tree(root: &Path, scale: u64) -> Built {
    let mut rng = SmallRng::seed_from_u64(0xc0_e05c);
    let mut b = Built::default();
    std::fs::create_dir(root).unwrap();
    mkdirs(root, "a-small");
    for i in 0..15 {
        let size = rng.gen_range(0..20_000u64);
        b.file(&mut rng, root, &format!("a-small/s{i:02}"), size, 0o644);
    }
    for (name, size) in [
        ("b-big", 10 * scale * MIB + 5),
        ("c-big", 20 * scale * MIB + 3),
        ("d-big", 16 * scale * MIB + 4096),
        ("e-big", 12 * scale * MIB + 1),
        ("g-big", 8 * scale * MIB + 4097),
        ("h-big", 14 * scale * MIB),
        ("i-mid", DIRECT_MIN + 1),
    ] {
        b.file(&mut rng, root, name, size, 0o640);
    }
    b.sparse(
        &mut rng,
        root,
        "f-sparse",
        30 * scale * MIB + 7,
        &[(MIB, 3 * scale * MIB + 5), (20 * scale * MIB, 2 * scale * MIB)],
    );
    for (prefix, n) in [("m-small", 10), ("z-small", 10)] {
        for i in 0..n {
            let size = rng.gen_range(1..20_000u64);
            b.file(&mut rng, root, &format!("{prefix}-{i:02}"), size, 0o600);
        }
    }
    b.link(root, "e-big", "x-link");
    dir_times(root, &mut rng);
    b
}

/// `(op, rel)` of every line `ringsync: <op> <DST>/<rel>: ...` on stderr, with the rest.
fn entry_failures(stderr: &str, dst: &Path) -> Vec<(String, String, String)> {
    let infix = format!(" {}/", dst.display());
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("ringsync: "))
        .filter_map(|l| l.split_once(infix.as_str()))
        .filter_map(|(op, rest)| {
            let (rel, rest) = rest.split_once(": ")?;
            Some((op.to_string(), rel.to_string(), rest.to_string()))
        })
        .collect()
}

/// Copies into a filesystem `kind` (fresh for each of `combos`) that cannot hold SRC: exit 3;
/// the failures named on stderr, each once, at least one "No space left on device"; every
/// regular file in DST is its source's bytes, mode and mtime; no file reported failed is there;
/// every file of SRC is either there or reported; DST holds nothing SRC lacks (no partial or
/// temporary file left).
fn enospc_into(kind: &'static str, scale: u64, combos: &[Combo]) {
    let Some(srcfs) = mount_kind("tmpfs") else {
        return;
    };
    let src = srcfs.path().join("src");
    let built = build_enospc_tree(&src, scale);
    let before = scan_tree(&src, true).expect("scan SRC");
    let mut bad = Vec::new();
    for c in combos {
        let Some(small) = mount_kind(kind) else {
            return;
        };
        let vfs = rustix::fs::statvfs(small.path()).unwrap();
        assert!(
            built.total() > vfs.f_blocks * vfs.f_frsize + 20 * MIB,
            "the ENOSPC tree must not fit in {kind}"
        );
        let args = c.args();
        let what = format!("copy {} into {kind}", args.join(" "));
        let dst = small.path().join("dst");
        let r = ringsync("copy", &args, &src, &dst);
        let fails = entry_failures(&r.stderr, &dst);
        let mut problems = Vec::new();
        if r.panicked() {
            problems.push("panicked".to_string());
        }
        if r.code != Some(3) {
            problems.push(format!("exit {:?}, not 3 (partial)", r.code));
        }
        if !fails.iter().any(|f| f.2.contains("No space left on device")) {
            problems.push(format!(
                "no 'ringsync: <op> {}/<path>: No space left on device' line",
                dst.display()
            ));
        }
        let mut per: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, rel, _) in &fails {
            *per.entry(rel.as_str()).or_default() += 1;
        }
        for (rel, n) in &per {
            if *n > 1 {
                problems.push(format!("{rel}: reported {n} times"));
            }
            if !before.entries.contains_key(rel.as_bytes()) {
                problems.push(format!("{rel}: reported, but no such entry in SRC"));
            }
        }
        match scan_tree(&dst, true) {
            Err(e) => problems.push(format!("scan DST: {e}")),
            Ok(got) => {
                for (p, e) in &got.entries {
                    let rel = show(p);
                    match before.entries.get(p) {
                        None => problems.push(format!("{rel}: in DST but not in SRC (left behind)")),
                        Some(a) if a.kind != e.kind => problems.push(format!("{rel}: of another type")),
                        Some(_) if e.kind != Kind::File => {}
                        Some(a) => {
                            if (a.size, a.hash) != (e.size, e.hash) {
                                problems.push(format!(
                                    "{rel}: under its final name but not its source's bytes (size {} vs {})",
                                    e.size, a.size
                                ));
                            }
                            if (a.perm, a.mtime) != (e.perm, e.mtime) {
                                problems.push(format!("{rel}: under its final name without its attributes"));
                            }
                            if per.contains_key(rel.as_str()) {
                                problems.push(format!("{rel}: reported failed but under its final name"));
                            }
                        }
                    }
                }
                for (p, a) in &before.entries {
                    let rel = show(p);
                    if a.kind == Kind::File && !got.entries.contains_key(p) && !per.contains_key(rel.as_str())
                    {
                        problems.push(format!("{rel}: neither copied nor reported as failed"));
                    }
                }
                let bs = block_size(&dst);
                for (rel, w) in &built.files {
                    if got.entries.contains_key(rel.as_bytes()) {
                        check_file(&dst.join(rel), rel, w, bs, &mut problems);
                    }
                }
            }
        }
        note(&format!(
            "{what}: exit {:?}, {} entries reported failed",
            r.code,
            per.len()
        ));
        if !problems.is_empty() {
            bad.push(format!(
                "{}\n  {}",
                r.describe(&format!("{what}: after ENOSPC")),
                fmt_list(&problems)
            ));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n\n"));
}

#[test]
fn enospc_on_a_64m_ext4_fails_files_cleanly_with_exit_3() {
    enospc_into("ext4-64m", 1, &[DEFAULT_2, SYNC_FILE_1, SMALL_POOL, URING_NONE_2]);
}

#[test]
fn enospc_on_a_300m_xfs_fails_files_cleanly_with_exit_3() {
    enospc_into("xfs-300m", 4, &[DEFAULT_2]);
}

/// Reads completed by the block device holding `p` (`/sys/dev/block/MAJ:MIN/stat`, field 1).
fn device_reads(p: &Path) -> u64 {
    let dev = std::fs::metadata(p).expect("stat").dev();
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    let stat =
        std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/stat")).expect("read device stat");
    stat.split_whitespace()
        .next()
        .and_then(|f| f.parse().ok())
        .expect("reads field")
}

/// Files just over the threshold with unaligned ends, copied durably to ext4 and xfs: the copy
/// reads nothing back from the target. (Padding the last block and setting the size back made
/// each filesystem read that block: one synchronous read per file, 20 s instead of 0.6 s for
/// 2000 such files on a target limited to 100 reads a second.)
#[test]
fn durable_copy_of_unaligned_files_reads_nothing_back_from_the_target() {
    const FILES: u64 = 300;
    let Some(srcfs) = mount_kind("tmpfs") else {
        return;
    };
    let src = srcfs.path().join("src");
    std::fs::create_dir(&src).expect("mkdir SRC");
    let mut rng = SmallRng::seed_from_u64(0xc0_0010);
    for i in 0..FILES {
        let mut data = vec![0u8; (DIRECT_MIN + 1 + i * 7) as usize];
        rng.fill_bytes(&mut data);
        std::fs::write(src.join(format!("f{i:04}")), &data).expect("write SRC file");
    }
    let before = scan_tree(&src, true).expect("scan SRC");
    for kind in ["ext4", "xfs"] {
        let Some(t) = mount_kind(kind) else {
            return;
        };
        let dst = t.path().join("dst");
        // Let the fresh filesystem's own metadata reads settle first.
        std::fs::create_dir(&dst).expect("mkdir DST");
        for i in 0..4 {
            std::fs::write(dst.join(format!("warm{i}")), b"x").expect("warm-up write");
        }
        let reads = device_reads(t.path());
        let r = ringsync("copy", &[], &src, &dst.join("c"));
        ran_ok(&r, &format!("{kind}: copy")).unwrap_or_else(|e| panic!("{e}"));
        let read_back = device_reads(t.path()) - reads;
        assert!(
            read_back < FILES / 10,
            "{kind}: a durable copy of {FILES} files with unaligned ends read {read_back} times from the target"
        );
        let after = scan_tree(&dst.join("c"), true).expect("scan DST");
        let diffs = compare_scanned(&before, &after, &CompareOpts::default());
        assert!(
            diffs.is_empty(),
            "{kind}: DST differs from SRC:\n{}",
            diffs.join("\n")
        );
    }
}
