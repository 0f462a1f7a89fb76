//! `send | receive` through the receiver's file writer: four writing threads, O_DIRECT for
//! files of 64 KiB or more (aligned pieces only; the last partial block padded with zeros and
//! the file truncated back), the page cache for everything else, and a write failure that
//! marks the file failed (reported once, never placed under its final name, exit 3).
//!
//! - Every "DST is what SRC was" is decided by the independent oracle (`common::oracle`) on a
//!   scan of SRC taken before the send (`common::mirror_cmp`: everything but the record xattr
//!   on DST's root), plus the sizes this file wrote itself (sparse files end exactly where the
//!   test put their end, never rounded up to a block).
//! - Trees are made by hand here: file sizes straddling 4096 (the O_DIRECT alignment), 64 KiB
//!   (the O_DIRECT threshold) and 4 MiB (a DATA record), sparse files with holes at the start,
//!   middle and end, hardlinks, xattrs, modes, owners and past mtimes with nanoseconds.
//! - Filesystems: a tmpfs mounted here, loop-mounted ext4, xfs and btrfs (`common::mount`),
//!   and an ext4 with 1 KiB blocks (so that SEEK_DATA gives data runs at offsets that are not
//!   4096-aligned, and one file gets both direct and buffered pieces).
//! - ENOSPC: a 64 MiB ext4 as DST for more data than fits. Afterwards every regular file under
//!   a final name must be byte-identical to its source, and no name the receiver reported as
//!   failed may exist; leftover `.ringsync*` names are listed on stderr, not asserted.
//!
//! Needs root (mounts). A missing prerequisite prints `SKIPPED: <reason>` and returns, unless
//! the `CI` environment variable is set (then the test fails).

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};

use common::mount::{mount_or_skip, LoopFs};
use common::oracle::{compare_scanned, scan_tree, show, Tree};
use common::procs::{err_file, read_back, run_ringsync, wait_all, Ran};
use common::*;

/// A child still running after this long is killed (the test then fails).
const DEADLINE: Duration = Duration::from_secs(150);

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Mounts

/// Mount `kind` ("tmpfs", "ext4-1k", "ext4-64m-4k", or a `LoopFs` type; 512 MiB unless the
/// name says otherwise), or skip (fail under CI).
fn mount_kind(kind: &'static str) -> Option<LoopFs> {
    let fs = match kind {
        "tmpfs" => LoopFs::tmpfs("size=512m"),
        "ext4-1k" => LoopFs::with_mkfs("ext4", 512, &["-b", "1024"]),
        "ext4-64m-4k" => LoopFs::with_mkfs("ext4", 64, &["-b", "4096"]),
        _ => return mount_or_skip(kind, 512),
    };
    match fs {
        Ok(m) => Some(m),
        Err(why) => {
            skip_or_fail(&why);
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running send and receive

/// `ringsync send -q SRC | ringsync receive -q RECV_EXTRA DST`, two processes and a pipe.
fn send_receive(src: &Path, recv_extra: &[&str], dst: &Path) -> (Ran, Ran) {
    let (sf, se) = err_file();
    let (rf, re) = err_file();
    let mut send = Command::new(bin())
        .args(["send", "-q"])
        .arg(src)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(se)
        .spawn()
        .expect("spawn send");
    let out = send.stdout.take().expect("send's stdout");
    let recv = Command::new(bin())
        .args(["receive", "-q"])
        .args(recv_extra)
        .arg(dst)
        .stdin(Stdio::from(out))
        .stdout(Stdio::null())
        .stderr(re)
        .spawn()
        .expect("spawn receive");
    let mut kids: Vec<(&str, Child)> = vec![("send", send), ("receive", recv)];
    let codes = wait_all(&mut kids, "send | receive", DEADLINE);
    (
        Ran {
            code: codes[0],
            stderr: read_back(sf),
        },
        Ran {
            code: codes[1],
            stderr: read_back(rf),
        },
    )
}

/// One ringsync process, stdin and stdout /dev/null.
fn ringsync(args: &[&OsStr]) -> Ran {
    run_ringsync(args, DEADLINE)
}

fn expect_ok(r: &Ran, what: &str) {
    assert!(!r.panicked(), "{}", r.describe(&format!("{what}: panicked")));
    assert_eq!(r.code, Some(0), "{}", r.describe(what));
}

// ---------------------------------------------------------------------------------------------
// Building source trees

/// What a builder made: every regular file name and the size it was given, and which of them
/// were made sparse.
#[derive(Default)]
struct Built {
    sizes: BTreeMap<String, u64>,
    sparse: Vec<String>,
}

fn random(rng: &mut SmallRng, n: u64) -> Vec<u8> {
    let mut v = vec![0u8; n as usize];
    rng.fill_bytes(&mut v);
    v
}

fn mkdirs(root: &Path, rel: &str) {
    std::fs::create_dir_all(root.join(rel)).unwrap_or_else(|e| panic!("mkdir {rel}: {e}"));
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

fn setx(p: &Path, name: &str, value: &[u8]) {
    rustix::fs::setxattr(p, name, value, rustix::fs::XattrFlags::empty())
        .unwrap_or_else(|e| panic!("setxattr {name} on {}: {e}", p.display()));
}

impl Built {
    /// A file of `size` random bytes.
    fn file(&mut self, rng: &mut SmallRng, root: &Path, rel: &str, size: u64, mode: u32) -> PathBuf {
        let p = root.join(rel);
        std::fs::write(&p, random(rng, size)).unwrap_or_else(|e| panic!("write {rel}: {e}"));
        chmod(&p, mode);
        self.sizes.insert(rel.to_string(), size);
        p
    }

    /// A sparse file of `size` bytes holding random data only at `runs` (offset, length),
    /// written with pwrite into a file made of holes.
    fn sparse(
        &mut self,
        rng: &mut SmallRng,
        root: &Path,
        rel: &str,
        size: u64,
        runs: &[(u64, u64)],
    ) -> PathBuf {
        let p = root.join(rel);
        let f = std::fs::File::create(&p).unwrap_or_else(|e| panic!("create {rel}: {e}"));
        f.set_len(size).unwrap();
        for &(off, len) in runs {
            assert!(off + len <= size, "{rel}: run past the end");
            f.write_all_at(&random(rng, len), off)
                .unwrap_or_else(|e| panic!("pwrite {rel} at {off}: {e}"));
        }
        drop(f);
        chmod(&p, 0o640);
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(
            m.len(),
            size,
            "{rel}: the test's own sparse file has the wrong size"
        );
        assert!(
            m.blocks() * 512 < size,
            "{rel}: not sparse on this filesystem ({} blocks for {size} bytes): the test would not test holes",
            m.blocks()
        );
        self.sizes.insert(rel.to_string(), size);
        self.sparse.push(rel.to_string());
        p
    }

    fn link(&mut self, root: &Path, from: &str, to: &str) {
        std::fs::hard_link(root.join(from), root.join(to)).unwrap_or_else(|e| panic!("link {to}: {e}"));
        let size = self.sizes[from];
        self.sizes.insert(to.to_string(), size);
    }
}

/// Sizes around 4096 (alignment), 64 KiB (the O_DIRECT threshold) and 4 MiB (a DATA record).
const BOUNDARY_SIZES: &[u64] = &[
    0,
    1,
    4095,
    4096,
    4097,
    65535,
    65536,
    65537,
    65536 + 4095,
    MIB - 1,
    MIB,
    4 * MIB - 1,
    4 * MIB,
    4 * MIB + 1,
    9 * MIB + 123,
];

/// The tree of test 1: boundary sizes, sparse files, hardlinks, xattrs, owners and past times.
fn build_boundary_tree(root: &Path, seed: u64) -> Built {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut b = Built::default();
    std::fs::create_dir(root).unwrap();
    for d in ["sizes", "sparse", "links/a", "links/z", "xattr", "secret"] {
        mkdirs(root, d);
    }
    let modes = [0o644, 0o600, 0o755, 0o640, 0o444, 0o2750];
    for (i, &size) in BOUNDARY_SIZES.iter().enumerate() {
        b.file(
            &mut rng,
            root,
            &format!("sizes/f{size:09}"),
            size,
            modes[i % modes.len()],
        );
    }
    // Sparse files.
    let sp = |b: &mut Built, rng: &mut SmallRng, name: &str, size: u64, runs: &[(u64, u64)]| {
        b.sparse(rng, root, &format!("sparse/{name}"), size, runs)
    };
    // Hole at the start, data to an end that is not block-aligned (a padded last block).
    sp(
        &mut b,
        &mut rng,
        "hole-start",
        3 * MIB + 100,
        &[(2 * MIB + 8192, MIB - 8192 + 100)],
    );
    // Hole in the middle.
    sp(
        &mut b,
        &mut rng,
        "hole-middle",
        6 * MIB + 333,
        &[(0, MIB), (5 * MIB, MIB + 333)],
    );
    // Hole at the end: the size is set, not written.
    let hole_end = sp(&mut b, &mut rng, "hole-end", 8 * MIB + 5, &[(0, 200_000)]);
    setx(&hole_end, "user.sparse", b"hole at the end");
    // A data run starting at an unaligned offset.
    sp(&mut b, &mut rng, "run-at-5000", 2 * MIB + 17, &[(5000, 70_000)]);
    // All hole.
    sp(&mut b, &mut rng, "all-hole", 10 * MIB + 7, &[]);
    // Only the last 10 bytes, just past the threshold: one padded block after a hole.
    sp(&mut b, &mut rng, "tail-only", 65536 + 4095, &[(65536 + 4085, 10)]);
    // Below the threshold.
    sp(&mut b, &mut rng, "small-sparse", 40_000, &[(30_000, 10)]);
    // Several short runs at odd offsets, and the very last byte.
    sp(
        &mut b,
        &mut rng,
        "several-runs",
        MIB + 1,
        &[(100_000, 1000), (300_001, 5000), (700_000, 3), (MIB, 1)],
    );
    // Hardlinks: a large file with 3 names, a small one with 2.
    let big = b.file(&mut rng, root, "links/big-1", 5 * MIB + 77, 0o644);
    setx(&big, "user.link", b"on every name");
    b.link(root, "links/big-1", "links/a/big-2");
    b.link(root, "links/big-1", "links/z/big-3");
    b.file(&mut rng, root, "links/small-1", 1000, 0o600);
    b.link(root, "links/small-1", "links/z/small-2");
    // Xattrs on a big file.
    let x = b.file(&mut rng, root, "xattr/big", 2 * MIB + 1, 0o640);
    setx(&x, "user.alpha", b"one");
    setx(&x, "user.bin", &random(&mut rng, 1500));
    setx(&x, "user.empty", b"");
    setx(&x, "trusted.t", b"root's");
    // Owners (root runs these tests), then the modes chown clears.
    let o = b.file(&mut rng, root, "secret/owned", 200_000, 0o644);
    std::os::unix::fs::chown(&o, Some(1234), Some(5678)).unwrap();
    chmod(&o, 0o4750);
    std::os::unix::fs::chown(root.join("secret"), Some(42), Some(43)).unwrap();
    chmod(&root.join("secret"), 0o711);
    set_past_times(root, &mut rng);
    b
}

/// Every entry (post-order, the root last): an mtime in the past with nanoseconds, and an atime
/// hours in the future (so that no read under `relatime` changes it).
fn set_past_times(root: &Path, rng: &mut SmallRng) {
    fn walk(p: &Path, rng: &mut SmallRng, now: i64) {
        let m = std::fs::symlink_metadata(p).expect("lstat");
        if m.is_dir() {
            let mut names: Vec<PathBuf> = std::fs::read_dir(p)
                .expect("read_dir")
                .map(|e| e.expect("dirent").path())
                .collect();
            names.sort();
            for n in names {
                walk(&n, rng, now);
            }
        }
        let t = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: now + rng.gen_range(3600..172_800),
                tv_nsec: rng.gen_range(0..1_000_000_000),
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: rng.gen_range(946_684_800..1_600_000_000),
                tv_nsec: rng.gen_range(0..1_000_000_000),
            },
        };
        rustix::fs::utimensat(rustix::fs::CWD, p, &t, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
            .expect("utimensat");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(1_700_000_000);
    walk(root, rng, now);
}

// ---------------------------------------------------------------------------------------------
// Checks

fn fmt_diffs(d: &[String]) -> String {
    d.iter().take(60).cloned().collect::<Vec<_>>().join("\n  ")
}

/// DST is SRC (the scan `before`), by the oracle; every file the builder made has exactly the
/// size the builder gave it, in DST as in SRC.
fn check_exact(before: &Tree, src: &Path, dst: &Path, built: &Built, what: &str) {
    let after = scan_tree(dst, true).unwrap_or_else(|e| panic!("{what}: scan DST: {e}"));
    let d = compare_scanned(before, &after, &mirror_cmp());
    assert!(
        d.is_empty(),
        "{what}: DST differs from SRC ({} differences):\n  {}",
        d.len(),
        fmt_diffs(&d)
    );
    let now = scan_tree(src, true).unwrap();
    let d = compare_scanned(before, &now, &CompareOpts::default());
    assert!(d.is_empty(), "{what}: send changed SRC:\n  {}", fmt_diffs(&d));
    for (rel, &size) in &built.sizes {
        let got = std::fs::symlink_metadata(dst.join(rel))
            .unwrap_or_else(|e| panic!("{what}: {rel} in DST: {e}"))
            .len();
        let kind = if built.sparse.contains(rel) { "sparse " } else { "" };
        assert_eq!(
            got, size,
            "{what}: {kind}file {rel}: st_size in DST is not the size it was made with"
        );
    }
}

/// `send SRC | receive [--no-fsync] DST` for a fresh (missing) DST of each kind; both exit 0
/// and DST is exact.
fn round_trips(fs: &LoopFs, src: &Path, built: &Built, fsname: &str) {
    for (extra, tag) in [(&[][..], "fsync"), (&["--no-fsync"][..], "no-fsync")] {
        let what = format!("{fsname}: send | receive {}", extra.join(" "));
        let dst = fs.path().join(format!("dst-{tag}"));
        let before = scan_tree(src, true).unwrap();
        let (s, r) = send_receive(src, extra, &dst);
        expect_ok(&s, &format!("{what}: send"));
        expect_ok(&r, &format!("{what}: receive"));
        check_exact(&before, src, &dst, built, &what);
    }
}

fn boundaries_on(kind: &'static str, seed: u64) {
    let Some(fs) = mount_kind(kind) else {
        return;
    };
    let src = fs.path().join("src");
    let built = build_boundary_tree(&src, seed);
    round_trips(&fs, &src, &built, kind);
}

// ---------------------------------------------------------------------------------------------
// 1. Boundary sizes, sparse files, hardlinks, xattrs and times on each filesystem

#[test]
fn tmpfs_boundary_sizes_sparse_links_xattrs_exact() {
    boundaries_on("tmpfs", 0xd1_0001);
}

#[test]
fn ext4_boundary_sizes_sparse_links_xattrs_exact() {
    boundaries_on("ext4", 0xd1_0002);
}

#[test]
fn xfs_boundary_sizes_sparse_links_xattrs_exact() {
    boundaries_on("xfs", 0xd1_0003);
}

#[test]
fn btrfs_boundary_sizes_sparse_links_xattrs_exact() {
    boundaries_on("btrfs", 0xd1_0004);
}

/// SRC on an ext4 with 1 KiB blocks: SEEK_DATA finds data runs at 1 KiB boundaries, so DATA
/// records start at offsets that are not 4096-aligned, and files of 64 KiB or more get aligned
/// pieces (direct) and unaligned ones (through the cache) in the same file, a few KiB apart.
/// DST is on the same filesystem.
#[test]
fn ext4_1k_blocks_mixed_direct_and_buffered_pieces_exact() {
    let Some(fs) = mount_kind("ext4-1k") else {
        return;
    };
    let root = fs.path().join("src");
    let mut rng = SmallRng::seed_from_u64(0xd1_0005);
    let mut b = Built::default();
    std::fs::create_dir(&root).unwrap();
    // Runs separated by 1-3 KiB holes at 1 KiB boundaries.
    for (i, size) in [300 * KIB + 5, 2 * MIB + 1024, 5 * MIB + 3072, 96 * KIB]
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
        // The last run reaches the end (an unaligned end after unaligned pieces).
        if let Some(last) = runs.last_mut() {
            last.1 = size - last.0;
        }
        b.sparse(&mut rng, &root, &format!("mixed-{i}"), size, &runs);
    }
    // A run beginning 1 KiB before a 4 MiB boundary and long enough for several records.
    b.sparse(
        &mut rng,
        &root,
        "long-run",
        13 * MIB + 9,
        &[(4 * MIB - KIB, 8 * MIB + 3)],
    );
    for &size in BOUNDARY_SIZES {
        b.file(&mut rng, &root, &format!("f{size:09}"), size, 0o644);
    }
    set_past_times(&root, &mut rng);
    // The premise: the stream has, in one file past the threshold, pieces a direct write takes
    // and pieces at offsets that are not 4096-aligned.
    let stream = fs.path().join("saved.stream");
    let s = ringsync(&[
        "send".as_ref(),
        "-q".as_ref(),
        "-o".as_ref(),
        stream.as_os_str(),
        root.as_os_str(),
    ]);
    expect_ok(&s, "send -o FILE");
    let files = data_pieces(&stream);
    std::fs::remove_file(&stream).unwrap();
    let mixed: Vec<&String> = files
        .iter()
        .filter(|(_, (size, pieces))| {
            *size >= DIRECT_MIN
                && pieces
                    .iter()
                    .any(|&(o, l)| o % 4096 == 0 && (l % 4096 == 0 || o + l == *size))
                && pieces.iter().any(|&(o, _)| o % 4096 != 0)
        })
        .map(|(name, _)| name)
        .collect();
    assert!(
        mixed.len() >= 3,
        "the stream should have files with both aligned and unaligned DATA pieces (SRC on 1 KiB blocks); \
         only {mixed:?} do: {files:?}"
    );
    round_trips(&fs, &root, &b, "ext4 (1 KiB blocks)");
}

/// `ringsync dump STREAM`: per FILE name, its size and its DATA pieces (offset, length).
fn data_pieces(stream: &Path) -> BTreeMap<String, (u64, Vec<(u64, u64)>)> {
    let out = Command::new(bin())
        .arg("dump")
        .arg(stream)
        .output()
        .expect("spawn dump");
    assert!(out.status.success(), "dump: {}", describe(&out));
    let field = |l: &str, key: &str| -> Option<String> {
        l.split('\t')
            .nth(3)?
            .split(' ')
            .find_map(|f| f.strip_prefix(key))
            .map(str::to_string)
    };
    let mut files = BTreeMap::new();
    let mut cur: Option<String> = None;
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        match l.split('\t').nth(2) {
            Some("FILE") => {
                let name = field(l, "name=").expect("FILE name");
                let size = field(l, "size=").and_then(|s| s.parse().ok()).expect("FILE size");
                files.insert(name.clone(), (size, Vec::new()));
                cur = Some(name);
            }
            Some("DATA") => {
                let o: u64 = field(l, "offset=")
                    .and_then(|s| s.parse().ok())
                    .expect("DATA offset");
                let n: u64 = field(l, "len=").and_then(|s| s.parse().ok()).expect("DATA len");
                let name = cur.as_ref().expect("DATA inside a FILE");
                files.get_mut(name).expect("FILE seen").1.push((o, n));
            }
            Some("FILE_END") => cur = None,
            _ => {}
        }
    }
    files
}

// ---------------------------------------------------------------------------------------------
// 2. ENOSPC

/// `(rel, rest)` of every line `ringsync: receive: <DST>/<rel>: <rest>` in `stderr`.
fn entry_failures(stderr: &str, dst: &Path) -> Vec<(String, String)> {
    let prefix = format!("ringsync: receive: {}/", dst.display());
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| rest.split_once(": "))
        .map(|(rel, rest)| (rel.to_string(), rest.to_string()))
        .collect()
}

/// Names in `t` (any depth) whose last component starts with `.ringsync`.
fn private_names(t: &Tree) -> Vec<String> {
    t.entries
        .keys()
        .filter(|p| {
            p.rsplit(|&c| c == b'/')
                .next()
                .is_some_and(|n| n.starts_with(b".ringsync"))
        })
        .map(|p| show(p))
        .collect()
}

fn in_private(p: &[u8]) -> bool {
    p.split(|&c| c == b'/').any(|c| c.starts_with(b".ringsync"))
}

/// What a receive that ran out of space left, checked against the scan of SRC `before`:
/// - exit non-zero, no panic, no signal;
/// - a `ringsync: receive: <DST>/<path>: <op>: No space left on device` line;
/// - every entry reported at most once;
/// - every regular file under a final name is the source's bytes, mode and mtime;
/// - no name reported failed is under its final name, and every file of SRC not under its
///   final name was reported;
/// - DST's record says dirty.
///
/// Returns the failures reported and the number of files placed; leftover private names go to
/// stderr.
fn check_after_enospc(before: &Tree, dst: &Path, r: &Ran, what: &str) -> (Vec<(String, String)>, usize) {
    note(&format!(
        "{what}: receive exit {:?}; its stderr:\n{}",
        r.code, r.stderr
    ));
    let fails = entry_failures(&r.stderr, dst);
    let mut per: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (rel, rest) in &fails {
        per.entry(rel.as_str()).or_default().push(rest.as_str());
    }
    let got = scan_tree(dst, true).unwrap();
    let placed = got
        .entries
        .iter()
        .filter(|(p, e)| !in_private(p) && e.kind == Kind::File)
        .count();
    let left = private_names(&got);
    note(&format!(
        "{what}: {placed} files placed, {} entries failed; private names left in DST: {}",
        per.len(),
        if left.is_empty() {
            "none".to_string()
        } else {
            left.join(", ")
        }
    ));

    assert!(
        !r.panicked(),
        "{}",
        r.describe(&format!("{what}: receive panicked"))
    );
    assert!(
        r.code.is_some() && r.code != Some(0) && r.code != Some(101),
        "{}",
        r.describe(&format!("{what}: expected a clean non-zero exit"))
    );
    assert!(
        fails
            .iter()
            .any(|(_, rest)| rest.contains("No space left on device")),
        "{}",
        r.describe(&format!(
            "{what}: no 'ringsync: receive: <DST>/<path>: <op>: No space left on device' line"
        ))
    );
    // Under every final name: the source's bytes and attributes.
    let mut bad = Vec::new();
    for (p, e) in &got.entries {
        if in_private(p) || e.kind != Kind::File {
            continue;
        }
        match before.entries.get(p) {
            None => bad.push(format!("{}: not in SRC", show(p))),
            Some(a) if a.kind != Kind::File => bad.push(format!("{}: not a file in SRC", show(p))),
            Some(a) => {
                if (a.size, a.hash) != (e.size, e.hash) {
                    bad.push(format!(
                        "{}: under its final name but not the source's bytes (size {} vs {}, sha256 {})",
                        show(p),
                        a.size,
                        e.size,
                        if a.hash == e.hash { "equal" } else { "differs" }
                    ));
                }
                if (a.perm, a.mtime) != (e.perm, e.mtime) {
                    bad.push(format!(
                        "{}: placed without its attributes (mode {:o} vs {:o}, mtime {:?} vs {:?})",
                        show(p),
                        a.perm,
                        e.perm,
                        a.mtime,
                        e.mtime
                    ));
                }
            }
        }
    }
    // A name reported failed is not placed ("keep a name for later hardlinks" still places
    // the file it names).
    for (rel, rest) in &fails {
        if !rest.starts_with("keep a name for later hardlinks") && got.entries.contains_key(rel.as_bytes()) {
            bad.push(format!(
                "{rel}: reported failed ({rest}) but present under its final name"
            ));
        }
    }
    // Every file of SRC is either placed or reported.
    for (p, a) in &before.entries {
        if a.kind == Kind::File && !got.entries.contains_key(p) && !per.contains_key(show(p).as_str()) {
            bad.push(format!("{}: neither received nor reported as failed", show(p)));
        }
    }
    assert!(
        bad.is_empty(),
        "{what}: after ENOSPC:\n  {}\n{}",
        bad.join("\n  "),
        r.describe("receive")
    );
    let twice: Vec<_> = per.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "{}",
        r.describe(&format!("{what}: entries reported more than once: {twice:?}"))
    );
    assert_eq!(
        read_record_json(dst)
            .and_then(|v| v.get("state").and_then(|s| s.as_str()).map(str::to_string))
            .as_deref(),
        Some("dirty"),
        "{what}: DST's record after an incomplete receive"
    );
    (fails, placed)
}

/// The ENOSPC source, in the order the stream sends it: a directory of small files, a big
/// hardlinked file that fits (its links directory is made before the filesystem fills), big
/// files that fill it, small files between and after them at the top (no directory to make once
/// the filesystem is full: a failed mkdir stops a receive by design), the hardlinks' second
/// names.
/// Returns the builder's record and the names of the big files.
fn build_enospc_tree(root: &Path) -> (Built, Vec<String>) {
    let mut rng = SmallRng::seed_from_u64(0xd1_e05c);
    let mut b = Built::default();
    std::fs::create_dir(root).unwrap();
    mkdirs(root, "a-small");
    for i in 0..15 {
        let size = rng.gen_range(0..20_000u64);
        b.file(&mut rng, root, &format!("a-small/s{i:02}"), size, 0o644);
    }
    let mut big = Vec::new();
    let mut add_big = |b: &mut Built, rng: &mut SmallRng, name: &str, size: u64| {
        b.file(rng, root, name, size, 0o640);
        big.push(name.to_string());
    };
    add_big(&mut b, &mut rng, "b-link", 10 * MIB + 5);
    add_big(&mut b, &mut rng, "c-big", 20 * MIB + 3);
    add_big(&mut b, &mut rng, "d-big", 16 * MIB + 4096);
    add_big(&mut b, &mut rng, "e-big", 12 * MIB + 1);
    add_big(&mut b, &mut rng, "g-big", 8 * MIB + 4097);
    add_big(&mut b, &mut rng, "h-big", 14 * MIB);
    for (prefix, n) in [("f-small", 10), ("z-small", 10)] {
        for i in 0..n {
            let size = rng.gen_range(1..20_000u64);
            b.file(&mut rng, root, &format!("{prefix}-{i:02}"), size, 0o600);
        }
    }
    b.link(root, "b-link", "y-link");
    big.push("y-link".into());
    // A hardlinked file that does not fit (its first name fails after the links directory was
    // made for b-link): its later name must not become a link to a partial file.
    b.link(root, "e-big", "x-link");
    big.push("x-link".into());
    set_past_times(root, &mut rng);
    (b, big)
}

/// More data than a 64 MiB ext4 (4 KiB blocks) holds: the files that do not fit fail, each
/// reported once, none under its final name, exit 3; every file placed is exact. Then the same
/// SRC into a 512 MiB ext4 is exact, and a SRC without the big files that do not fit any more
/// converges in the same DST.
#[test]
fn enospc_fails_files_cleanly_and_a_rerun_converges() {
    let Some(small) = mount_kind("ext4-64m-4k") else {
        return;
    };
    let tmp = scratch("direct-enospc");
    let src = tmp.path().join("src");
    let (built, big) = build_enospc_tree(&src);
    let dst = small.path().join("dst");
    let before = scan_tree(&src, true).unwrap();
    let what = "send | receive into a 64 MiB ext4";
    let (s, r) = send_receive(&src, &[], &dst);
    assert!(!s.panicked(), "{}", s.describe(&format!("{what}: send panicked")));
    let (fails, placed) = check_after_enospc(&before, &dst, &r, what);
    assert!(
        placed > 0,
        "{what}: nothing was placed; the test expects the first files to fit"
    );
    assert!(
        fails
            .iter()
            .any(|(rel, rest)| rest.starts_with("write: ") && big.contains(rel)),
        "{}",
        r.describe(&format!("{what}: no write failure of a big file reported"))
    );
    // Per-entry failures only (no directory or temporary file had to be made once full).
    assert_eq!(
        r.code,
        Some(3),
        "{}",
        r.describe(&format!("{what}: failed writes are exit 3 (partial)"))
    );
    let summary = format!("ringsync: receive: {} entries could not be applied", fails.len());
    assert!(
        r.stderr.contains(&summary),
        "{}",
        r.describe(&format!("{what}: expected the summary {summary:?}"))
    );

    // The whole SRC into a new DST on a larger filesystem: exact.
    let Some(large) = mount_or_skip("ext4", 512) else {
        return;
    };
    let dst2 = large.path().join("dst");
    let what2 = "rerun into a new DST on a 512 MiB ext4";
    let (s, r) = send_receive(&src, &[], &dst2);
    expect_ok(&s, &format!("{what2}: send"));
    expect_ok(&r, &format!("{what2}: receive"));
    check_exact(&before, &src, &dst2, &built, what2);

    // Delete the big source files that do not fit beside what DST holds (a full stream writes
    // every file under a temporary name before the old ones go), then the same DST again. When
    // the failed run left less room than even the small files need, one more rerun is allowed:
    // the first may fail writes (ENOSPC only), and its END deletes the big files SRC lost.
    let vfs = rustix::fs::statvfs(small.path()).unwrap();
    let free = vfs.f_bavail * vfs.f_frsize;
    let small_total: u64 = built
        .sizes
        .iter()
        .filter(|(rel, _)| !big.contains(rel))
        .map(|(_, s)| s)
        .sum();
    let mut budget = free.saturating_sub(small_total + 4 * MIB);
    let mut kept = Vec::new();
    let mut by_size: Vec<(u64, &String)> = big
        .iter()
        .filter(|n| !matches!(n.as_str(), "x-link" | "y-link"))
        .map(|n| (built.sizes[n], n))
        .collect();
    by_size.sort();
    for (size, name) in by_size {
        if size + MIB <= budget {
            budget -= size + MIB;
            kept.push(name.clone());
        } else {
            std::fs::remove_file(src.join(name)).unwrap();
            for (first, later) in [("b-link", "y-link"), ("e-big", "x-link")] {
                if name == first {
                    std::fs::remove_file(src.join(later)).unwrap();
                }
            }
        }
    }
    let mut reduced = Built::default();
    for (rel, size) in &built.sizes {
        if src.join(rel).exists() {
            reduced.sizes.insert(rel.clone(), *size);
        }
    }
    let attempts = if free >= small_total + 4 * MIB { 1 } else { 2 };
    note(&format!(
        "{what}: {} MiB free after the failed run; the rerun into the same DST keeps the big files \
         {kept:?} ({attempts} attempt(s) allowed)",
        free >> 20
    ));
    let before3 = scan_tree(&src, true).unwrap();
    let what3 = "rerun of a reduced SRC into the same 64 MiB DST";
    for attempt in 1..=attempts {
        let (s, r) = send_receive(&src, &[], &dst);
        expect_ok(&s, &format!("{what3}: send"));
        if r.code == Some(0) || attempt == attempts {
            expect_ok(&r, &format!("{what3}: receive, attempt {attempt}"));
            break;
        }
        let fails = entry_failures(&r.stderr, &dst);
        assert!(
            !r.panicked()
                && r.code == Some(3)
                && !fails.is_empty()
                && fails
                    .iter()
                    .all(|(_, rest)| rest.contains("No space left on device")),
            "{}",
            r.describe(&format!(
                "{what3}: with {} MiB free, only failed writes (ENOSPC, exit 3) were expected",
                free >> 20
            ))
        );
        note(&format!(
            "{what3}: attempt {attempt}: {} writes failed for want of room",
            fails.len()
        ));
    }
    check_exact(&before3, &src, &dst, &reduced, what3);
}

/// A file that fails with ENOSPC does not keep the space it took from the files after it: a
/// 60 MiB file into a 64 MiB ext4 (no checkpoint before END: the stream is under 64 MiB), then
/// small files that fit once the failed file's data is gone. Only the big file fails. (The
/// receiver before the writer threads removed a failed file at its FILE_END; the writer finds
/// out later, and the failed file's temporary is removed at the next publication.)
///
/// The stream is fed in two parts, cut where the first small file starts (the cut found with
/// `dump --json`): the rest goes in once the receiver reported the big file's failure and the
/// space came back. Fed at once, small files on other writing threads may be written while the
/// big one still fills the disk, and fail too: that is a race of the test, not the property.
#[test]
fn enospc_a_failed_file_does_not_keep_its_space_from_later_files() {
    use std::io::Write;
    let Some(small) = mount_kind("ext4-64m-4k") else {
        return;
    };
    let tmp = scratch("direct-enospc-space");
    let src = tmp.path().join("src");
    let mut rng = SmallRng::seed_from_u64(0xd1_5ace);
    let mut b = Built::default();
    std::fs::create_dir(&src).unwrap();
    b.file(&mut rng, &src, "a-big", 60 * MIB, 0o644);
    for i in 0..5 {
        b.file(&mut rng, &src, &format!("b-small-{i}"), 1000 + i * 3000, 0o644);
    }
    set_past_times(&src, &mut rng);
    let before = scan_tree(&src, true).unwrap();
    let stream = tmp.path().join("s.stream");
    let s = ringsync(&[
        OsStr::new("send"),
        OsStr::new("-q"),
        OsStr::new("-o"),
        stream.as_os_str(),
        src.as_os_str(),
    ]);
    expect_ok(&s, "send -o");
    let out = Command::new(bin())
        .args(["dump", "--json"])
        .arg(&stream)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "dump --json");
    let cut = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["type"] == "FILE" && v["name"] == "b-small-0")
        .and_then(|v| v["at"].as_u64())
        .expect("the first small file's FILE record") as usize;
    let bytes = std::fs::read(&stream).unwrap();
    let dst = small.path().join("dst");
    let what = "send | receive of a 60 MiB file and small files into a 64 MiB ext4";
    let (rf, re) = err_file();
    let mut recv = Command::new(bin())
        .args(["receive", "-q"])
        .arg(&dst)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(re)
        .spawn()
        .expect("spawn receive");
    let mut input = recv.stdin.take().unwrap();
    input.write_all(&bytes[..cut]).unwrap();
    input.flush().unwrap();
    // The big file's failure on stderr (read without moving the shared offset), then its
    // space back.
    let t0 = std::time::Instant::now();
    let failed_big = || {
        let mut buf = vec![0u8; 64 << 10];
        let n = rf.read_at(&mut buf, 0).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).contains("a-big: write")
    };
    let freed = || rustix::fs::statvfs(small.path()).is_ok_and(|v| v.f_bavail * v.f_frsize > 40 * MIB);
    while !(failed_big() && freed()) {
        assert!(
            t0.elapsed() < Duration::from_secs(60) && recv.try_wait().unwrap().is_none(),
            "{what}: the receiver did not report the big file's failure and free its space"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    input.write_all(&bytes[cut..]).unwrap();
    drop(input);
    let mut kids: Vec<(&str, Child)> = vec![("receive", recv)];
    let code = wait_all(&mut kids, what, DEADLINE)[0];
    let r = Ran {
        code,
        stderr: read_back(rf),
    };
    let (fails, _) = check_after_enospc(&before, &dst, &r, what);
    let failed: Vec<&str> = fails.iter().map(|(rel, _)| rel.as_str()).collect();
    assert_eq!(
        failed,
        ["a-big"],
        "{}",
        r.describe(&format!(
            "{what}: only the big file should fail; the small ones fit once its data is dropped"
        ))
    );
    assert_eq!(r.code, Some(3), "{}", r.describe(&format!("{what}: exit")));
}

/// The first name of a hardlinked file fails with ENOSPC before the receiver made its links
/// directory (a hardlinked file more than a 64 MiB ext4 holds, first in the stream; a checkpoint
/// follows it, whose publication drops the failed file and frees the space). That is one failed
/// file: reported once, its later name reported as not received, the small files after it
/// placed, exit 3 — not a stopped stream.
#[test]
fn enospc_on_the_first_name_of_a_hardlinked_file_is_one_failed_entry() {
    let Some(small) = mount_kind("ext4-64m-4k") else {
        return;
    };
    let tmp = scratch("direct-enospc-link");
    let src = tmp.path().join("src");
    let mut rng = SmallRng::seed_from_u64(0xd1_11c);
    let mut b = Built::default();
    std::fs::create_dir(&src).unwrap();
    b.file(&mut rng, &src, "a-link", 72 * MIB + 3, 0o644);
    for i in 0..5 {
        b.file(&mut rng, &src, &format!("b-small-{i}"), 1000 + i * 3000, 0o644);
    }
    b.link(&src, "a-link", "z-link");
    set_past_times(&src, &mut rng);
    let before = scan_tree(&src, true).unwrap();
    let dst = small.path().join("dst");
    let what = "send | receive of a hardlinked 72 MiB file into a 64 MiB ext4";
    let (s, r) = send_receive(&src, &[], &dst);
    assert!(!s.panicked(), "{}", s.describe(&format!("{what}: send panicked")));
    // The checks of this run are judged after the rerun below (which needs this run's DST), so
    // that a failure here still shows what the rerun did.
    let first = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let (fails, _) = check_after_enospc(&before, &dst, &r, what);
        let failed: Vec<&str> = fails.iter().map(|(rel, _)| rel.as_str()).collect();
        assert_eq!(
            failed,
            ["a-link", "z-link"],
            "{}",
            r.describe(&format!(
                "{what}: exactly the hardlinked file's two names should fail (a-link: write, z-link: link)"
            ))
        );
        assert!(
            fails[0].1.starts_with("write: ") && fails[0].1.contains("No space left on device"),
            "{}",
            r.describe(&format!(
                "{what}: a-link should fail with 'write: No space left on device'"
            ))
        );
        assert_eq!(
            r.code,
            Some(3),
            "{}",
            r.describe(&format!("{what}: one failed file is exit 3 (partial)"))
        );
        for i in 0..5 {
            assert!(
                dst.join(format!("b-small-{i}")).is_file(),
                "{}",
                r.describe(&format!(
                    "{what}: b-small-{i} (after the failed file) was not placed"
                ))
            );
        }
    }));
    // Without the big file, a rerun into the same DST converges (nothing the failed run left
    // behind may keep it from fitting).
    std::fs::remove_file(src.join("a-link")).unwrap();
    std::fs::remove_file(src.join("z-link")).unwrap();
    let b: Built = Built {
        sizes: b
            .sizes
            .into_iter()
            .filter(|(n, _)| !n.ends_with("-link"))
            .collect(),
        sparse: Vec::new(),
    };
    let before2 = scan_tree(&src, true).unwrap();
    let what2 = "rerun without the big file into the same DST";
    let (s2, r2) = send_receive(&src, &[], &dst);
    note(&format!(
        "{what2}: receive exit {:?}; its stderr:\n{}",
        r2.code, r2.stderr
    ));
    if let Err(p) = first {
        std::panic::resume_unwind(p);
    }
    expect_ok(&s2, &format!("{what2}: send"));
    expect_ok(&r2, &format!("{what2}: receive"));
    check_exact(&before2, &src, &dst, &b, what2);
}

// ---------------------------------------------------------------------------------------------
// 3. A saved stream: send -o FILE, receive -i FILE

#[test]
fn tmpfs_saved_stream_many_small_and_some_large_files_exact() {
    let Some(fs) = mount_kind("tmpfs") else {
        return;
    };
    let mut rng = SmallRng::seed_from_u64(0xd1_0300);
    let src = fs.path().join("src");
    let mut b = Built::default();
    std::fs::create_dir(&src).unwrap();
    for d in 0..10 {
        mkdirs(&src, &format!("small/d{d}"));
    }
    for i in 0..300u64 {
        let size = match i % 10 {
            0 => 0,
            1 => 4096,
            _ => rng.gen_range(1..16_000u64),
        };
        b.file(&mut rng, &src, &format!("small/d{}/f{i:03}", i % 10), size, 0o644);
    }
    mkdirs(&src, "large");
    let fixed = [
        DIRECT_MIN,
        DIRECT_MIN + 1,
        3 * MIB,
        3 * MIB - 1,
        2 * DIRECT_MIN + 5,
    ];
    for i in 0..20usize {
        let size = fixed
            .get(i)
            .copied()
            .unwrap_or_else(|| rng.gen_range(DIRECT_MIN..=3 * MIB));
        b.file(&mut rng, &src, &format!("large/g{i:02}"), size, 0o600);
    }
    set_past_times(&src, &mut rng);
    let stream = fs.path().join("saved.stream");
    let before = scan_tree(&src, true).unwrap();
    let s = ringsync(&[
        "send".as_ref(),
        "-q".as_ref(),
        "-o".as_ref(),
        stream.as_os_str(),
        src.as_os_str(),
    ]);
    expect_ok(&s, "send -o FILE");
    let dst = fs.path().join("dst");
    for round in ["into a missing DST", "again into the same DST"] {
        let what = format!("receive -i FILE {round}");
        let r = ringsync(&[
            "receive".as_ref(),
            "-q".as_ref(),
            "-i".as_ref(),
            stream.as_os_str(),
            dst.as_os_str(),
        ]);
        expect_ok(&r, &what);
        check_exact(&before, &src, &dst, &b, &what);
    }
}

/// writer.rs `DIRECT_MIN`: files at least this large are written with O_DIRECT.
const DIRECT_MIN: u64 = 64 << 10;
