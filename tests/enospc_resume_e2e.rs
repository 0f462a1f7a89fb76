//! ENOSPC, then resume (issue 16, item 6): DST's filesystem runs out of space part-way through a
//! run; once space is back, the rerun makes DST exact and does not copy again what the failed
//! run had completed. On a tmpfs, a loop-mounted ext4 (4 KiB blocks, no root reserve) and a
//! loop-mounted xfs, SRC on the scratch disk; files of 256 KiB or more, which the default
//! `--fsync end` writes with O_DIRECT, and small ones.
//!
//! How space runs out and comes back: DST's filesystem is made large, holds an OLD version of
//! the tree, and is then left with [`LEAVE_FREE`] bytes free for a NEW version that needs more
//! (a tmpfs is remounted with a smaller `size=`, an ext4 or xfs gets an fallocate'd ballast
//! file). After the failed run the tmpfs is grown again (`remount,size=`), the ballast deleted.
//!
//! What the failed run must leave (judged by the independent oracle, `common::oracle`: sha256
//! of the content, mode, owner, ns times, xattrs): exit 3 for `copy` and `mirror` (`receive`:
//! 3, or 1 when it had to stop), a "No space left on device" line, and no torn file: every
//! regular file at a final name (no component starting with `.ringsync`) is exactly its OLD or
//! its NEW version, or absent; nothing SRC and OLD both lack. Then, per command:
//!
//! - `mirror SRC DST`: the rerun exits 0, DST equals SRC (`common::mirror_cmp`), its record is
//!   `clean`, no `.ringsync*` name is left, and the file data it copied (`"bytes"` of its
//!   `--json` summary) is exactly the total size of the NEW files that were not already exact
//!   after the failure (by the oracle, not by the failed run's own report). Every file that
//!   was exact keeps its inode number: mirror replaces a file through a temporary name and a
//!   rename, so a file copied again would have a new one (an oracle of "not rewritten" that
//!   does not rely on ringsync's count).
//! - `send SRC | receive DST`: the documented recovery (docs/stream.md, section 7) — if
//!   `receive --token DST` prints a token, `send --resume TOKEN SRC | receive DST`, otherwise a
//!   full `send SRC | receive DST`. The rerun exits 0 (both sides), DST is exact and `clean`, no
//!   `.ringsync*` name is left, and it does not carry again the files the failed run published.
//!   The stream's file data is measured with a counting pipe between send and receive: a
//!   resumed stream is the full stream with the payload of every DATA record before the
//!   token's checkpoint left out (section 7: such a record keeps its header and offset field),
//!   so the data it carries is `counted - (full - D)`, where `full` is the size of a full
//!   stream of the same SRC and `D` the total size of SRC's regular files (the trees here have
//!   no holes and no hardlinks, so every byte of every file is one DATA byte). Where each file
//!   and checkpoint sits in the stream comes from `dump --json` of a saved full stream. A full
//!   stream's token stays at the last checkpoint before the first entry that failed, also after
//!   END: the token must be exactly there (none only when no checkpoint came before the first
//!   file not exact), and the data carried must equal `D` minus the sizes of the files the
//!   failed run published before that checkpoint (exact after the failure at an inode they did
//!   not have before it), each of which keeps its inode. Files published after the checkpoint
//!   are carried and written again: a one-way stream cannot ask for single files. The tree gets
//!   4200 empty files early (a checkpoint every 4096 entries) so that the run that reaches END
//!   with ENOSPC failures in its big files has a checkpoint before them.
//! - `receive` stopped by ENOSPC with a token: a stream fed to `receive` in two parts; once its
//!   first checkpoint was published (a token appeared), the test fills DST's filesystem to the
//!   last block (tmpfs: and its last inode, as a directory or file costs no block there) and
//!   feeds the rest: writes fail, then a directory or a temporary file cannot be made, which
//!   stops the receiver (exit 1) with the token of that checkpoint. Then the same rerun and
//!   checks as above; the resumed stream must carry exactly the files after the checkpoint.
//! - `copy SRC DST` rewrites every file by design, so no byte count: exit 3, no torn file, and a
//!   rerun after space is back exits 0 with DST exact and no `.ringsync*` name left.
//!
//! `byte_count_check_selftest` shows the checks can fail: a `copy` rerun (which copies every
//! file again) is flagged by the byte count and by the inode check; a failed receive without a
//! token though a checkpoint came before its first failure is flagged; a torn file is flagged;
//! a `mirror` rerun passes.
//!
//! Needs root (mounts). A missing prerequisite prints `SKIPPED: <reason>` and returns, unless
//! the `CI` environment variable is set (then the test fails).

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};

use common::mount::LoopFs;
use common::oracle::{compare_scanned, scan_tree, show, Entry, Tree};
use common::procs::{err_file, read_back, wait_all, Ran};
use common::*;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// Durable runs write files at least this large with O_DIRECT (file.rs `DIRECT_MIN_BYTES`).
const DIRECT_MIN: u64 = 256 * KIB;

/// A ringsync process still running after this long is killed (the test then fails).
const DEADLINE: Duration = Duration::from_secs(120);

/// Free space left on DST's filesystem for the NEW version (which needs about 40 MiB more).
const LEAVE_FREE: u64 = 16 * MIB;

/// The tmpfs: its size before it is shrunk for a run, and its inode limit.
const TMPFS_MIB: u64 = 256;
const TMPFS_INODES: u64 = 20_000;

// ---------------------------------------------------------------------------------------------
// DST's filesystem

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fs {
    Tmpfs,
    Ext4,
    Xfs,
}

impl Fs {
    fn name(self) -> &'static str {
        match self {
            Fs::Tmpfs => "tmpfs",
            Fs::Ext4 => "ext4",
            Fs::Xfs => "xfs",
        }
    }
}

/// A mounted filesystem for DST, whose free space the test takes away and gives back.
struct Target {
    fs: LoopFs,
    kind: Fs,
    /// Ballast files (at the filesystem's root, beside DST).
    ballast: Vec<PathBuf>,
}

impl Target {
    /// Mount a fresh one, or skip (fail under CI).
    fn mount(kind: Fs) -> Option<Target> {
        let fs = match kind {
            Fs::Tmpfs => LoopFs::tmpfs(&format!("size={TMPFS_MIB}m,nr_inodes={TMPFS_INODES}")),
            Fs::Ext4 => LoopFs::with_mkfs("ext4", 256, &["-b", "4096", "-m", "0"]),
            Fs::Xfs => LoopFs::new("xfs", 300),
        };
        match fs {
            Ok(fs) => Some(Target {
                fs,
                kind,
                ballast: Vec::new(),
            }),
            Err(why) => {
                skip_or_fail(&why);
                None
            }
        }
    }

    fn root(&self) -> &Path {
        self.fs.path()
    }

    fn avail(&self) -> u64 {
        let v = rustix::fs::statvfs(self.root()).expect("statvfs");
        v.f_bavail * v.f_frsize
    }

    /// Leave `free` bytes free: a tmpfs is remounted smaller, a loop filesystem gets ballast.
    fn leave_free(&mut self, free: u64) {
        match self.kind {
            Fs::Tmpfs => {
                let v = rustix::fs::statvfs(self.root()).expect("statvfs");
                let used = (v.f_blocks - v.f_bfree) * v.f_frsize;
                self.fs.remount(&format!("size={}k", (used + free).div_ceil(KIB)));
            }
            Fs::Ext4 | Fs::Xfs => {
                let avail = self.avail();
                assert!(
                    avail > free + 8 * MIB,
                    "{}: only {avail} bytes available, cannot leave {free} free",
                    self.kind.name()
                );
                if let Err(e) = self.ballast_file(avail - free) {
                    panic!("{}: fallocate ballast: {e}", self.kind.name());
                }
            }
        }
        note(&format!(
            "{}: {} KiB available for the run that must fail",
            self.kind.name(),
            self.avail() / KIB
        ));
    }

    /// One more fallocate'd ballast file of `len` bytes.
    fn ballast_file(&mut self, len: u64) -> Result<(), String> {
        let p = self.root().join(format!("ballast-{}", self.ballast.len()));
        let f = std::fs::File::create(&p).map_err(|e| format!("create {}: {e}", p.display()))?;
        self.ballast.push(p);
        rustix::fs::fallocate(f.as_fd(), rustix::fs::FallocateFlags::empty(), 0, len)
            .map_err(|e| format!("fallocate {len}: {e}"))
    }

    /// Take every free block (ballast in halving chunks down to one page), and on a tmpfs every
    /// free inode too (a directory or an empty file costs no block there).
    fn fill_up(&mut self) {
        let mut chunk = self.avail().max(4096);
        let mut tries = 0;
        while chunk >= 4096 && tries < 200 {
            tries += 1;
            match self.ballast_file(chunk) {
                Ok(()) => {}
                Err(e) if e.starts_with("create") => break,
                Err(_) => chunk /= 2,
            }
        }
        if self.kind == Fs::Tmpfs {
            let dir = self.root().join("ballast-inodes");
            std::fs::create_dir(&dir).expect("mkdir ballast-inodes");
            let mut made = 0u64;
            while made <= TMPFS_INODES {
                match std::fs::File::create(dir.join(made.to_string())) {
                    Ok(_) => made += 1,
                    Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                    Err(e) => panic!("tmpfs: make an inode: {e}"),
                }
            }
        }
        let v = rustix::fs::statvfs(self.root()).expect("statvfs");
        note(&format!(
            "{}: filled up: {} blocks, {} inodes free",
            self.kind.name(),
            v.f_bavail,
            v.f_favail
        ));
    }

    /// Give the space back: grow a tmpfs, delete the ballast of a loop filesystem (and wait
    /// until its space shows as free: xfs frees the blocks of unlinked inodes in the background).
    fn free(&mut self) {
        match self.kind {
            Fs::Tmpfs => self
                .fs
                .remount(&format!("size={}m,nr_inodes={}", 2 * TMPFS_MIB, 4 * TMPFS_INODES)),
            Fs::Ext4 | Fs::Xfs => {
                for p in self.ballast.drain(..) {
                    std::fs::remove_file(&p).unwrap_or_else(|e| panic!("remove {}: {e}", p.display()));
                }
                let root = std::fs::File::open(self.root()).expect("open the mount");
                rustix::fs::syncfs(root.as_fd()).expect("syncfs");
                let t0 = Instant::now();
                while self.avail() < 100 * MIB && t0.elapsed() < Duration::from_secs(10) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        note(&format!(
            "{}: space back: {} MiB available",
            self.kind.name(),
            self.avail() / MIB
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// Trees

/// Write `size` bytes of seeded random data at `rel` (parents made).
fn put(root: &Path, rel: &str, size: u64, seed: u64) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    let mut data = vec![0u8; size as usize];
    SmallRng::seed_from_u64(seed).fill_bytes(&mut data);
    std::fs::write(&p, &data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

fn seed_of(rel: &str, gen: u64) -> u64 {
    rel.bytes().fold(0xe05c_0000 ^ gen, |h, b| {
        h.wrapping_mul(0x100_0000_01b3) ^ u64::from(b)
    })
}

/// OLD: small files, big ones (O_DIRECT), files at the O_DIRECT threshold; about 16 MiB.
fn build_old(root: &Path) {
    std::fs::create_dir(root).unwrap();
    let mut rng = SmallRng::seed_from_u64(0x01d);
    for i in 0..12 {
        let rel = format!("a/s{i:02}");
        put(root, &rel, rng.gen_range(0..20_000), seed_of(&rel, 0));
    }
    for (rel, size) in [
        ("b1", 3 * MIB + 5),
        ("b2", 5 * MIB + 4096),
        ("b3", 2 * MIB + 1),
        ("b4", 4 * MIB),
    ] {
        put(root, rel, size, seed_of(rel, 0));
    }
    for i in 0..4u64 {
        let rel = format!("m/d{i}");
        put(root, &rel, DIRECT_MIN + i * 4096 + i * 7, seed_of(&rel, 0));
    }
    for i in 0..8 {
        let rel = format!("z/t{i:02}");
        put(root, &rel, rng.gen_range(1..20_000), seed_of(&rel, 0));
    }
    common::mutate::fix_atimes(root, 0x0a71).unwrap();
}

/// OLD to NEW: about 40 MiB of new data (files changed, grown, shrunk, new files and a new
/// directory); no file is removed.
fn change_to_new(root: &Path) {
    let mut rng = SmallRng::seed_from_u64(0x2e3);
    for rel in ["a/s03", "a/s07"] {
        put(root, rel, rng.gen_range(1..20_000), seed_of(rel, 1));
    }
    for (rel, size) in [
        ("b2", 9 * MIB + 7),
        ("b3", MIB + 4095),
        ("c1", 6 * MIB + 3),
        ("c2", 10 * MIB + 1),
        ("c3", 7 * MIB),
        ("m/d1", DIRECT_MIN + 1),
        ("m/d4", DIRECT_MIN - 1),
        ("n/u0", 5 * MIB + 11),
        ("n/u1", 700),
    ] {
        put(root, rel, size, seed_of(rel, 1));
    }
    for i in 8..16 {
        let rel = format!("z/t{i:02}");
        put(root, &rel, rng.gen_range(1..20_000), seed_of(&rel, 1));
    }
    common::mutate::fix_atimes(root, 0x0a71).unwrap();
}

/// For the stopped receive: two big files and 4200 small ones in `a` (the stream's first
/// checkpoint comes after 4096 entries, inside `a`), then big and small files and a directory
/// after it.
fn build_checkpointed(root: &Path) {
    std::fs::create_dir(root).unwrap();
    let mut rng = SmallRng::seed_from_u64(0xc4e);
    put(root, "a/big1", 3 * MIB + 5, 1);
    put(root, "a/big2", MIB + 3 * 4096, 2);
    for i in 0..4200u64 {
        put(root, &format!("a/f{i:04}"), rng.gen_range(0..200), 100 + i);
    }
    put(root, "c-big", 6 * MIB + 3, 3);
    put(root, "d-big", 4 * MIB + 1, 4);
    put(root, "e/big", 2 * MIB + 9, 5);
    for i in 0..5u64 {
        put(root, &format!("e/s{i}"), rng.gen_range(1..20_000), 10 + i);
    }
    put(root, "f-small", 999, 6);
    common::mutate::fix_atimes(root, 0x0a71).unwrap();
}

// ---------------------------------------------------------------------------------------------
// The oracle's view after the failure

/// A temporary or staging name of ringsync in any component.
fn is_temp(p: &[u8]) -> bool {
    p.split(|&b| b == b'/').any(|c| c.starts_with(b".ringsync"))
}

fn scan(p: &Path, what: &str) -> Tree {
    scan_tree(p, true).unwrap_or_else(|e| panic!("{what}: scan {}: {e}", p.display()))
}

fn temp_names(t: &Tree) -> Vec<String> {
    t.entries.keys().filter(|p| is_temp(p)).map(|p| show(p)).collect()
}

/// Whether `b` is exactly `a` by the oracle (content, size, mode, owner, times, xattrs).
fn entry_exact(p: &[u8], a: &Entry, b: &Entry) -> bool {
    let one = |e: &Entry| Tree {
        entries: [(p.to_vec(), e.clone())].into_iter().collect(),
    };
    compare_scanned(&one(a), &one(b), &mirror_cmp()).is_empty()
}

/// What a failed run left in DST, against OLD (what DST held before; `None`: DST was new) and
/// NEW (SRC).
#[derive(Debug, Default)]
struct AfterFail {
    /// NEW's regular files exact in DST: path -> DST's inode.
    exact: BTreeMap<Vec<u8>, u64>,
    /// NEW's regular files not exact in DST: path -> NEW's size.
    missing: BTreeMap<Vec<u8>, u64>,
    /// Files at final names that are neither OLD nor NEW.
    torn: Vec<String>,
    /// Entries at final names that neither OLD nor NEW has.
    extra: Vec<String>,
    temps: Vec<String>,
}

impl AfterFail {
    fn missing_bytes(&self) -> u64 {
        self.missing.values().sum()
    }
}

fn after_failure(dst: &Tree, old: Option<&Tree>, new: &Tree) -> AfterFail {
    let mut v = AfterFail::default();
    let file_hash = |t: Option<&Tree>, p: &[u8]| {
        t.and_then(|t| t.entries.get(p))
            .filter(|e| e.kind == Kind::File)
            .and_then(|e| e.hash)
    };
    for (p, e) in &dst.entries {
        if is_temp(p) {
            v.temps.push(show(p));
            continue;
        }
        let in_old = old.is_some_and(|o| o.entries.contains_key(p));
        if !in_old && !new.entries.contains_key(p) {
            v.extra
                .push(format!("{}: {:?} neither in OLD nor in NEW", show(p), e.kind));
            continue;
        }
        if e.kind != Kind::File {
            continue;
        }
        let (o, n) = (file_hash(old, p), file_hash(Some(new), p));
        if e.hash.is_none() || (e.hash != n && e.hash != o) {
            let size = |t: Option<&Tree>| {
                t.and_then(|t| t.entries.get(p))
                    .map(|x| format!("{:?} of {} bytes", x.kind, x.size))
                    .unwrap_or_else(|| "absent".into())
            };
            v.torn.push(format!(
                "{}: {} bytes at its final name, neither the OLD version ({}) nor the NEW one ({})",
                show(p),
                e.size,
                size(old),
                size(Some(new))
            ));
        }
    }
    for (p, a) in &new.entries {
        if a.kind != Kind::File {
            continue;
        }
        match dst.entries.get(p) {
            Some(b) if entry_exact(p, a, b) => {
                v.exact.insert(p.clone(), b.ino);
            }
            _ => {
                v.missing.insert(p.clone(), a.size);
            }
        }
    }
    v
}

/// The byte count: what the rerun copied must be what was not there yet.
fn bytes_verdict(what: &str, expected: u64, copied: u64) -> Option<String> {
    (expected != copied).then(|| {
        format!(
            "{what}: the rerun copied {copied} bytes of file data, but only {expected} bytes of files were \
             not already exact after the failure ({})",
            if copied > expected {
                "completed files were copied again"
            } else {
                "fewer than needed"
            }
        )
    })
}

/// Files that were not to be copied again must keep their inode (a copy is a new inode).
fn inodes_verdict(what: &str, keep: &BTreeMap<Vec<u8>, u64>, after: &Tree) -> Vec<String> {
    let moved: Vec<String> = keep
        .iter()
        .filter(|(p, ino)| after.entries.get(*p).map(|e| e.ino) != Some(**ino))
        .map(|(p, _)| show(p))
        .collect();
    if moved.is_empty() {
        return Vec::new();
    }
    vec![format!(
        "{what}: {} of the {} files that were exact before the rerun were written again (new inode): {}",
        moved.len(),
        keep.len(),
        list(&moved)
    )]
}

fn list(d: &[String]) -> String {
    let mut s = d.iter().take(30).cloned().collect::<Vec<_>>().join(", ");
    if d.len() > 30 {
        s.push_str(&format!(", ... and {} more", d.len() - 30));
    }
    s
}

/// Checks shared by every command's rerun: exit 0, DST exact, no temporaries.
fn converged(what: &str, r: &Ran, new: &Tree, dst: &Path, problems: &mut Vec<String>) -> Tree {
    if r.code != Some(0) || r.panicked() {
        problems.push(r.describe(&format!("{what}: expected exit 0")));
    }
    let got = scan(dst, what);
    let d = compare_scanned(new, &got, &mirror_cmp());
    if !d.is_empty() {
        problems.push(format!(
            "{what}: DST differs from SRC ({} differences): {}",
            d.len(),
            list(&d)
        ));
    }
    let temps = temp_names(&got);
    if !temps.is_empty() {
        problems.push(format!("{what}: temporaries left: {}", list(&temps)));
    }
    got
}

fn record_state(dst: &Path) -> Option<String> {
    read_record_json(dst).and_then(|v| v.get("state").and_then(|s| s.as_str()).map(str::to_string))
}

/// The checks of the failed run: the exit status, a "No space left on device" line, no panic,
/// no torn file, nothing unknown. `codes`: the acceptable exit statuses.
fn failed_cleanly(what: &str, r: &Ran, codes: &[i32], af: &AfterFail, problems: &mut Vec<String>) {
    if r.panicked() || !r.code.is_some_and(|c| codes.contains(&c)) {
        problems.push(r.describe(&format!("{what}: expected exit {codes:?}")));
    }
    if !r.stderr.contains("No space left on device") {
        problems.push(r.describe(&format!("{what}: no 'No space left on device' on stderr")));
    }
    if !af.torn.is_empty() {
        problems.push(format!("{what}: torn files: {}", list(&af.torn)));
    }
    if !af.extra.is_empty() {
        problems.push(format!("{what}: unknown entries: {}", list(&af.extra)));
    }
}

fn finish(what: &str, problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "{what}: {} problems:\n\n{}",
        problems.len(),
        problems.join("\n\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Processes

fn os(args: &[&str]) -> Vec<std::ffi::OsString> {
    args.iter().map(Into::into).collect()
}

/// Run ringsync to its end (or kill it at the deadline): its exit and stderr, and its stdout.
fn ringsync(args: &[std::ffi::OsString]) -> (Ran, String) {
    let (of, oe) = err_file();
    let (ef, ee) = err_file();
    let c = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(oe)
        .stderr(ee)
        .spawn()
        .expect("spawn ringsync");
    let code = wait_all(&mut [("ringsync", c)], &format!("ringsync {args:?}"), DEADLINE)[0];
    (
        Ran {
            code,
            stderr: read_back(ef),
        },
        read_back(of),
    )
}

fn sub(cmd: &str, extra: &[&str], src: &Path, dst: &Path) -> Vec<std::ffi::OsString> {
    let mut a = os(&[cmd]);
    a.extend(os(extra));
    a.push(src.into());
    a.push(dst.into());
    a
}

/// `"bytes"` of a `--json` summary.
fn json_bytes(what: &str, stdout: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{what}: --json output is not JSON ({e}): {stdout:?}"));
    v["bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("{what}: no \"bytes\" in {stdout}"))
}

/// `ringsync send <send_args>`, its stdout through a counting pipe into `receive -q DST` (or
/// nowhere): (send, receive, bytes that went through).
fn send_counted(send_args: &[std::ffi::OsString], dst: Option<&Path>) -> (Ran, Option<Ran>, u64) {
    let (sf, se) = err_file();
    let mut send = Command::new(bin())
        .arg("send")
        .args(send_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(se)
        .spawn()
        .expect("spawn send");
    let mut out = send.stdout.take().unwrap();
    let mut recv = dst.map(|d| {
        let (rf, re) = err_file();
        let c = Command::new(bin())
            .args(["receive", "-q"])
            .arg(d)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(re)
            .spawn()
            .expect("spawn receive");
        (rf, c)
    });
    let mut sink = recv.as_mut().map(|(_, c)| c.stdin.take().unwrap());
    let counter = std::thread::spawn(move || {
        let mut n = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match out.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => {
                    if let Some(s) = sink.as_mut() {
                        if s.write_all(&buf[..k]).is_err() {
                            break; // the receiver stopped; send sees EPIPE
                        }
                    }
                    n += k as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        n
    });
    let mut kids = vec![("send", send)];
    let mut rf = None;
    if let Some((f, c)) = recv {
        kids.push(("receive", c));
        rf = Some(f);
    }
    let codes = wait_all(&mut kids, "send | receive", DEADLINE);
    let n = counter.join().expect("counting thread");
    let s = Ran {
        code: codes[0],
        stderr: read_back(sf),
    };
    let r = rf.map(|f| Ran {
        code: codes[1],
        stderr: read_back(f),
    });
    (s, r, n)
}

fn token(dst: &Path) -> Option<String> {
    let out = Command::new(bin())
        .args(["receive".as_ref(), "--token".as_ref(), dst.as_os_str()])
        .output()
        .expect("spawn receive --token");
    match out.status.code() {
        Some(0) => Some(String::from_utf8_lossy(&out.stdout).trim().to_string()),
        Some(1) => None,
        _ => panic!("receive --token: {}", describe(&out)),
    }
}

/// Total size of the regular files of `t`; the trees here have no holes and no hardlinks, so
/// that is the file data of a full stream.
fn data_bytes(t: &Tree) -> u64 {
    let files: Vec<&Entry> = t.entries.values().filter(|e| e.kind == Kind::File).collect();
    assert!(
        files.iter().all(|e| !e.is_sparse() && e.nlink == 1),
        "the stream oracle needs a tree without holes and hardlinks"
    );
    files.iter().map(|e| e.size).sum()
}

// ---------------------------------------------------------------------------------------------
// mirror

fn mirror_enospc_resume(kind: Fs) {
    let Some(mut t) = Target::mount(kind) else {
        return;
    };
    let what = format!("mirror into {}", kind.name());
    let tmp = scratch("enospc-mirror");
    let src = tmp.path().join("src");
    let dst = t.root().join("dst");
    build_old(&src);
    let (r, _) = ringsync(&sub("mirror", &[], &src, &dst));
    assert_eq!(r.code, Some(0), "{}", r.describe(&format!("{what}: OLD")));
    let old = scan(&dst, &what);
    change_to_new(&src);
    let new = scan(&src, &what);
    t.leave_free(LEAVE_FREE);

    let mut problems = Vec::new();
    let (r1, out1) = ringsync(&sub("mirror", &["--json"], &src, &dst));
    let after = scan(&dst, &what);
    let af = after_failure(&after, Some(&old), &new);
    failed_cleanly(
        &format!("{what}: the run out of space"),
        &r1,
        &[3],
        &af,
        &mut problems,
    );
    let changed_done = af
        .exact
        .keys()
        .filter(|p| old.entries.get(*p).and_then(|e| e.hash) != new.entries[*p].hash)
        .count();
    note(&format!(
        "{what}: after ENOSPC (exit {:?}): {} files exact ({changed_done} of them changed ones), {} not \
         ({} bytes), {} temporaries; its own report: {} bytes",
        r1.code,
        af.exact.len(),
        af.missing.len(),
        af.missing_bytes(),
        af.temps.len(),
        serde_json::from_str::<serde_json::Value>(out1.trim()).map_or("?".into(), |v| v["bytes"].to_string())
    ));
    assert!(
        !af.missing.is_empty(),
        "{what}: everything fit; tune LEAVE_FREE\n{}",
        r1.describe("the failed run")
    );
    if changed_done == 0 {
        // Big files in flight together can take the space from every small one: then only
        // the unchanged files are exact, and the rerun must still not copy those.
        note(&format!(
            "{what}: this run completed no changed file before it failed (files in flight took the \
             space together); the byte count covers the unchanged files only"
        ));
    }

    t.free();
    let rw = format!("{what}: rerun with space back");
    let (r2, out2) = ringsync(&sub("mirror", &["--json"], &src, &dst));
    let got = converged(&rw, &r2, &new, &dst, &mut problems);
    if r2.code == Some(0) {
        let copied = json_bytes(&rw, &out2);
        let expected = af.missing_bytes();
        problems.extend(bytes_verdict(&rw, expected, copied));
        problems.extend(inodes_verdict(&rw, &af.exact, &got));
        let v: serde_json::Value = serde_json::from_str(out2.trim()).unwrap();
        let m = &v["mirror"];
        let (created, modified) = (m["created"].as_u64(), m["modified"].as_u64());
        let absent = af
            .missing
            .keys()
            .filter(|p| !after.entries.contains_key(*p))
            .count() as u64;
        let present = af.missing.len() as u64 - absent;
        if (created, modified) != (Some(absent), Some(present)) {
            problems.push(format!(
                "{rw}: its summary says created {created:?}, modified {modified:?}; the oracle saw {absent} \
                 files absent and {present} present but not exact after the failure"
            ));
        }
        note(&format!(
            "{rw}: bytes expected {expected}, copied {copied}; created {created:?}, modified {modified:?}"
        ));
        if record_state(&dst).as_deref() != Some("clean") {
            problems.push(format!("{rw}: record state {:?}", record_state(&dst)));
        }
    }
    finish(&what, problems);
}

#[test]
fn mirror_enospc_resume_tmpfs() {
    mirror_enospc_resume(Fs::Tmpfs);
}

#[test]
fn mirror_enospc_resume_ext4() {
    mirror_enospc_resume(Fs::Ext4);
}

#[test]
fn mirror_enospc_resume_xfs() {
    mirror_enospc_resume(Fs::Xfs);
}

// ---------------------------------------------------------------------------------------------
// copy

fn copy_enospc_rerun(kind: Fs) {
    let Some(mut t) = Target::mount(kind) else {
        return;
    };
    let what = format!("copy into {}", kind.name());
    let tmp = scratch("enospc-copy");
    let src = tmp.path().join("src");
    let dst = t.root().join("dst");
    build_old(&src);
    let (r, _) = ringsync(&sub("copy", &[], &src, &dst));
    assert_eq!(r.code, Some(0), "{}", r.describe(&format!("{what}: OLD")));
    let old = scan(&dst, &what);
    change_to_new(&src);
    let new = scan(&src, &what);
    t.leave_free(LEAVE_FREE);

    let mut problems = Vec::new();
    let (r1, _) = ringsync(&sub("copy", &[], &src, &dst));
    let after = scan(&dst, &what);
    let af = after_failure(&after, Some(&old), &new);
    failed_cleanly(
        &format!("{what}: the run out of space"),
        &r1,
        &[3],
        &af,
        &mut problems,
    );
    note(&format!(
        "{what}: after ENOSPC (exit {:?}): {} files exact, {} not, {} temporaries",
        r1.code,
        af.exact.len(),
        af.missing.len(),
        af.temps.len()
    ));
    t.free();
    let (r2, out2) = ringsync(&sub("copy", &["--json"], &src, &dst));
    converged(
        &format!("{what}: rerun with space back"),
        &r2,
        &new,
        &dst,
        &mut problems,
    );
    if r2.code == Some(0) {
        note(&format!(
            "{what}: rerun copied {} bytes (copy rewrites every file; not checked)",
            json_bytes(&what, &out2)
        ));
    }
    finish(&what, problems);
}

#[test]
fn copy_enospc_rerun_tmpfs() {
    copy_enospc_rerun(Fs::Tmpfs);
}

#[test]
fn copy_enospc_rerun_ext4() {
    copy_enospc_rerun(Fs::Ext4);
}

#[test]
fn copy_enospc_rerun_xfs() {
    copy_enospc_rerun(Fs::Xfs);
}

// ---------------------------------------------------------------------------------------------
// send | receive

/// Where each regular file's FILE record is in a stream, by path, and its CHECKPOINTs' offsets
/// (from `dump --json`: directory ids count up from 1 in order of DIR records, the root is 0).
struct StreamMap {
    /// The stream's size.
    size: u64,
    pos: BTreeMap<Vec<u8>, u64>,
    checkpoints: Vec<u64>,
}

fn stream_map(stream: &Path) -> StreamMap {
    let mut dirs: Vec<Vec<u8>> = vec![Vec::new()];
    let mut m = StreamMap {
        size: std::fs::metadata(stream).unwrap().len(),
        pos: BTreeMap::new(),
        checkpoints: Vec::new(),
    };
    for v in dump_json(stream) {
        let num = |k: &str| {
            v[k].as_u64()
                .or_else(|| v[k].as_str().and_then(|s| s.parse().ok()))
        };
        let path = || {
            let parent = &dirs[num("parent").expect("parent") as usize];
            let name = v["name"].as_str().expect("name").as_bytes();
            if parent.is_empty() {
                name.to_vec()
            } else {
                [parent.as_slice(), b"/", name].concat()
            }
        };
        match v["type"].as_str().unwrap_or("") {
            "DIR" => {
                let p = path();
                dirs.push(p);
            }
            "FILE" => {
                let p = path();
                m.pos.insert(p, num("at").unwrap());
            }
            "CHECKPOINT" => m.checkpoints.push(num("at").unwrap()),
            _ => {}
        }
    }
    m
}

/// Send SRC's full stream to a file; its map.
fn full_stream(src: &Path, file: &Path) -> StreamMap {
    let (s, _) = ringsync(&["send".into(), "-q".into(), "-o".into(), file.into(), src.into()]);
    assert_eq!(s.code, Some(0), "{}", s.describe("send -o"));
    stream_map(file)
}

/// The documented recovery after a failed receive, through a counting pipe, and its checks:
/// `before` is DST before the failed run (`None`: none), `map` a full stream of SRC: its size
/// and where its records are (docs/stream.md, section 7: a full stream's token stays
/// at the last checkpoint before the first entry that failed, and is kept after END; without a
/// checkpoint before the first failure there is no token and the rerun is the full stream).
fn stream_rerun(
    what: &str,
    src: &Path,
    dst: &Path,
    new: &Tree,
    before: Option<&Tree>,
    af: &AfterFail,
    map: &StreamMap,
) -> Vec<String> {
    let mut problems = Vec::new();
    // The files the failed run published: exact, at an inode DST did not have before.
    let published: BTreeMap<Vec<u8>, u64> = af
        .exact
        .iter()
        .filter(|(p, ino)| before.and_then(|b| b.entries.get(*p)).map(|e| e.ino) != Some(**ino))
        .map(|(p, ino)| (p.clone(), *ino))
        .collect();
    let tok = token(dst);
    // Where the token must be: the last checkpoint before the first file not exact.
    let first_missing = af.missing.keys().filter_map(|p| map.pos.get(p)).min().copied();
    let due: Vec<u64> = map
        .checkpoints
        .iter()
        .copied()
        .filter(|c| first_missing.is_none_or(|f| *c < f))
        .collect();
    let at = match &tok {
        Some(t) => match ringsync::stream::ResumeToken::decode(t) {
            Ok(t) => t.offset,
            Err(e) => {
                problems.push(format!("{what}: DST's token does not decode: {e}"));
                0
            }
        },
        None => 0,
    };
    match (&tok, due.last()) {
        (None, Some(c)) => problems.push(format!(
            "{what}: no token kept, though a checkpoint (at {c}) came before the first file not exact \
             (at {first_missing:?}): the rerun must carry the whole stream"
        )),
        (Some(_), last) if last != Some(&at) => problems.push(format!(
            "{what}: the token is at {at}; the last checkpoint before the first file not exact (at \
             {first_missing:?}) is at {last:?}"
        )),
        _ => {}
    }
    // Published before the token's checkpoint: neither carried nor written again.
    let kept: BTreeMap<Vec<u8>, u64> = published
        .iter()
        .filter(|(p, _)| map.pos.get(*p).is_some_and(|f| *f < at))
        .map(|(p, i)| (p.clone(), *i))
        .collect();
    let kept_bytes: u64 = kept.keys().map(|p| new.entries[p].size).sum();
    let mut args = os(&["-q"]);
    if let Some(t) = &tok {
        args.extend(os(&["--resume", t]));
    }
    args.push(src.into());
    let rw = format!(
        "{what}: rerun with space back ({})",
        if tok.is_some() {
            "send --resume TOKEN | receive"
        } else {
            "no token: a full send | receive"
        }
    );
    let (s, r, counted) = send_counted(&args, Some(dst));
    let r = r.unwrap();
    if s.code != Some(0) || s.panicked() {
        problems.push(s.describe(&format!("{rw}: send")));
    }
    let got = converged(&rw, &r, new, dst, &mut problems);
    let d = data_bytes(new);
    // Data carried: the stream minus what a full stream has besides file data.
    let carried = counted.saturating_sub(map.size - d);
    let expected = d - kept_bytes;
    note(&format!(
        "{rw}: the failed run published {} files ({} bytes) of {} ({d} bytes), {} of them ({kept_bytes} \
         bytes) before the token's checkpoint (at {at}; first file not exact at {first_missing:?}); \
         stream {counted} bytes (full: {}), file data carried {carried}, expected {expected}",
        published.len(),
        published.keys().map(|p| new.entries[p].size).sum::<u64>(),
        new.entries.values().filter(|e| e.kind == Kind::File).count(),
        kept.len(),
        map.size
    ));
    if r.code == Some(0) {
        problems.extend(bytes_verdict(&rw, expected, carried));
        problems.extend(inodes_verdict(&rw, &kept, &got));
        if record_state(dst).as_deref() != Some("clean") {
            problems.push(format!("{rw}: record state {:?}", record_state(dst)));
        }
        if token(dst).is_some() {
            problems.push(format!("{rw}: a token is left after a clean END"));
        }
    }
    problems
}

/// `send | receive` of NEW over OLD into a filesystem with too little room, then the recovery.
fn receive_enospc_resume(kind: Fs) {
    let Some(mut t) = Target::mount(kind) else {
        return;
    };
    let what = format!("send | receive into {}", kind.name());
    let tmp = scratch("enospc-receive");
    let src = tmp.path().join("src");
    let dst = t.root().join("dst");
    build_old(&src);
    // 4200 empty files early in the stream: a checkpoint (every 4096 entries) comes before the
    // big files that run out of space, so the failed run keeps a token to resume from.
    for i in 0..4200 {
        put(&src, &format!("a0/e{i:04}"), 0, 0);
    }
    common::mutate::fix_atimes(&src, 0x0a71).unwrap();
    let (s, r, _) = send_counted(&[OsStr::new("-q").into(), src.clone().into()], Some(&dst));
    let r = r.unwrap();
    assert_eq!(
        (s.code, r.code),
        (Some(0), Some(0)),
        "{}\n{}",
        s.describe(&format!("{what}: OLD: send")),
        r.describe("receive")
    );
    let old = scan(&dst, &what);
    change_to_new(&src);
    let new = scan(&src, &what);
    let full = full_stream(&src, &tmp.path().join("full.stream"));
    t.leave_free(LEAVE_FREE);

    let mut problems = Vec::new();
    let (s1, r1, _) = send_counted(&[OsStr::new("-q").into(), src.clone().into()], Some(&dst));
    let r1 = r1.unwrap();
    if s1.panicked() {
        problems.push(s1.describe(&format!("{what}: send panicked")));
    }
    let after = scan(&dst, &what);
    let af = after_failure(&after, Some(&old), &new);
    failed_cleanly(
        &format!("{what}: the receive out of space"),
        &r1,
        &[1, 3],
        &af,
        &mut problems,
    );
    note(&format!(
        "{what}: after ENOSPC (receive exit {:?}, send exit {:?}): {} files exact, {} not ({} bytes), \
         {} private names; token: {}",
        r1.code,
        s1.code,
        af.exact.len(),
        af.missing.len(),
        af.missing_bytes(),
        af.temps.len(),
        if token(&dst).is_some() { "yes" } else { "none" }
    ));
    assert!(
        !af.missing.is_empty(),
        "{what}: everything fit; tune LEAVE_FREE\n{}",
        r1.describe("the failed run")
    );
    t.free();
    problems.extend(stream_rerun(&what, &src, &dst, &new, Some(&old), &af, &full));
    finish(&what, problems);
}

#[test]
fn receive_enospc_resume_tmpfs() {
    receive_enospc_resume(Fs::Tmpfs);
}

#[test]
fn receive_enospc_resume_ext4() {
    receive_enospc_resume(Fs::Ext4);
}

#[test]
fn receive_enospc_resume_xfs() {
    receive_enospc_resume(Fs::Xfs);
}

/// Every record of a stream, from `dump --json` (one object per line).
fn dump_json(stream: &Path) -> Vec<serde_json::Value> {
    let out = Command::new(bin())
        .args(["dump", "--json"])
        .arg(stream)
        .output()
        .expect("spawn dump");
    assert_eq!(out.status.code(), Some(0), "dump --json: {}", describe(&out));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `(at, type, name, size)` of every record of a stream.
fn records(stream: &Path) -> Vec<(u64, String, String, u64)> {
    dump_json(stream)
        .iter()
        .map(|v| {
            let num = |k: &str| {
                v[k].as_u64()
                    .or_else(|| v[k].as_str().and_then(|s| s.parse().ok()))
                    .unwrap_or(0)
            };
            (
                num("at"),
                v["type"].as_str().unwrap_or("").to_string(),
                v["name"].as_str().unwrap_or("").to_string(),
                num("size"),
            )
        })
        .collect()
}

/// A receive into a fresh DST: once its first checkpoint is published, DST's filesystem is
/// filled up and the rest of the stream fed: the receiver stops with a token; then the space
/// comes back, and the resumed stream must carry exactly the files after the checkpoint.
fn receive_stopped_by_enospc_resumes(kind: Fs) {
    let Some(mut t) = Target::mount(kind) else {
        return;
    };
    let what = format!("receive stopped by ENOSPC on {}", kind.name());
    let tmp = scratch("enospc-token");
    let src = tmp.path().join("src");
    let dst = t.root().join("dst");
    build_checkpointed(&src);
    let new = scan(&src, &what);
    let stream = tmp.path().join("full.stream");
    let (s, _) = ringsync(&[
        "send".into(),
        "-q".into(),
        "-o".into(),
        stream.clone().into(),
        src.clone().into(),
    ]);
    assert_eq!(s.code, Some(0), "{}", s.describe(&format!("{what}: send -o")));
    let bytes = std::fs::read(&stream).unwrap();
    let recs = records(&stream);
    let checkpoint = recs
        .iter()
        .find(|r| r.1 == "CHECKPOINT")
        .map(|r| r.0)
        .expect("the stream has no CHECKPOINT: the tree is too small");
    // Cut at the first big file after the checkpoint: the small files between are staged.
    let cut = recs
        .iter()
        .find(|r| r.0 > checkpoint && r.1 == "FILE" && r.3 >= DIRECT_MIN)
        .map(|r| r.0)
        .expect("a big file after the first checkpoint") as usize;

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
    let t0 = Instant::now();
    while token(&dst).is_none() {
        if t0.elapsed() > Duration::from_secs(60) || recv.try_wait().unwrap().is_some() {
            let _ = recv.kill();
            let _ = recv.wait();
            panic!(
                "{what}: no token within 60 s of feeding the stream up to offset {cut} (checkpoint at \
                 {checkpoint}):\n{}",
                read_back(rf)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    t.fill_up();
    // A broken pipe means the receiver stopped already.
    let _ = input.write_all(&bytes[cut..]);
    drop(input);
    let code = wait_all(&mut [("receive", recv)], &what, DEADLINE)[0];
    let r1 = Ran {
        code,
        stderr: read_back(rf),
    };
    let mut problems = Vec::new();
    let after = scan(&dst, &what);
    let af = after_failure(&after, None, &new);
    failed_cleanly(
        &format!("{what}: the receive out of space"),
        &r1,
        &[1],
        &af,
        &mut problems,
    );
    note(&format!(
        "{what}: receive exit {:?}: {} files exact, {} not ({} bytes), {} private names; token: {}\n{}",
        r1.code,
        af.exact.len(),
        af.missing.len(),
        af.missing_bytes(),
        af.temps.len(),
        if token(&dst).is_some() { "yes" } else { "none" },
        r1.stderr.trim_end()
    ));
    if token(&dst).is_none() {
        problems.push(r1.describe(&format!("{what}: no token left")));
    }
    t.free();
    problems.extend(stream_rerun(
        &what,
        &src,
        &dst,
        &new,
        None,
        &af,
        &stream_map(&stream),
    ));
    finish(&what, problems);
}

#[test]
fn receive_stopped_by_enospc_resumes_tmpfs() {
    receive_stopped_by_enospc_resumes(Fs::Tmpfs);
}

#[test]
fn receive_stopped_by_enospc_resumes_ext4() {
    receive_stopped_by_enospc_resumes(Fs::Ext4);
}

#[test]
fn receive_stopped_by_enospc_resumes_xfs() {
    receive_stopped_by_enospc_resumes(Fs::Xfs);
}

// ---------------------------------------------------------------------------------------------
// The checks can fail

/// Without mounts: DST holds OLD, SRC is NEW (two files changed, one new); the unchanged files
/// are what a failed run would have completed. A `copy` rerun copies them again and is flagged
/// by the byte count and the inode check; a `mirror` rerun passes both. A failed receive that
/// kept no token though a checkpoint came before its first failure is flagged. A truncated file
/// is reported as torn.
#[test]
fn byte_count_check_selftest() {
    let tmp = scratch("enospc-selftest");
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    put(&src, "b1", MIB + 5, 1);
    put(&src, "a/s0", 3000, 2);
    put(&src, "a/s1", 4000, 3);
    common::mutate::fix_atimes(&src, 0x0a71).unwrap();
    let dsts: Vec<PathBuf> = (0..3).map(|i| tmp.path().join(format!("dst{i}"))).collect();
    for d in &dsts[..2] {
        let (r, _) = ringsync(&sub("mirror", &[], &src, d));
        assert_eq!(r.code, Some(0), "{}", r.describe("selftest: mirror OLD"));
    }
    let (s, r, _) = send_counted(&[OsStr::new("-q").into(), src.clone().into()], Some(&dsts[2]));
    assert_eq!(
        (s.code, r.map(|r| r.code)),
        (Some(0), Some(Some(0))),
        "selftest: send | receive OLD"
    );
    let old = scan(&dsts[0], "selftest");
    put(&src, "a/s1", 4100, 4);
    put(&src, "c", DIRECT_MIN + 5, 5);
    common::mutate::fix_atimes(&src, 0x0a71).unwrap();
    let new = scan(&src, "selftest");

    let after = scan(&dsts[0], "selftest");
    let af = after_failure(&after, Some(&old), &new);
    assert!(af.torn.is_empty() && af.extra.is_empty(), "selftest: {af:?}");
    assert_eq!(af.exact.len(), 2, "selftest: b1 and a/s0 are exact: {af:?}");
    let expected = af.missing_bytes();
    assert_eq!(expected, 4100 + DIRECT_MIN + 5);

    // A torn file: b1 cut short (its scan, as if truncated at a final name).
    let mut torn = after.clone();
    let e = torn.entries.get_mut(b"b1".as_slice()).unwrap();
    e.size -= 4096;
    e.hash = Some([0u8; 32]);
    let t = after_failure(&torn, Some(&old), &new);
    assert_eq!(t.torn.len(), 1, "selftest: a truncated b1 must be torn: {t:?}");
    assert!(t.missing.contains_key(b"b1".as_slice()));

    // copy copies every file again: flagged twice.
    let (r, out) = ringsync(&sub("copy", &["--json"], &src, &dsts[0]));
    assert_eq!(r.code, Some(0), "{}", r.describe("selftest: copy"));
    let mut p = Vec::new();
    let got = converged("selftest: copy", &r, &new, &dsts[0], &mut p);
    assert!(p.is_empty(), "selftest: copy converges: {p:?}");
    let copied = json_bytes("selftest: copy", &out);
    let b = bytes_verdict("selftest: copy", expected, copied);
    let i = inodes_verdict("selftest: copy", &af.exact, &got);
    assert!(
        b.is_some() && i.len() == 1,
        "selftest: a copy rerun (copied {copied} bytes, expected {expected}) must be flagged by the byte \
         count and the inode check: {b:?} {i:?}"
    );
    note(&format!(
        "selftest: flagged as it must be: {}; {}",
        b.unwrap(),
        i[0]
    ));

    // mirror copies only what differs: passes.
    let af1 = after_failure(&scan(&dsts[1], "selftest"), Some(&old), &new);
    let (r, out) = ringsync(&sub("mirror", &["--json"], &src, &dsts[1]));
    let mut p = Vec::new();
    let got = converged("selftest: mirror", &r, &new, &dsts[1], &mut p);
    p.extend(bytes_verdict(
        "selftest: mirror",
        af1.missing_bytes(),
        json_bytes("selftest: mirror", &out),
    ));
    p.extend(inodes_verdict("selftest: mirror", &af1.exact, &got));
    assert!(p.is_empty(), "selftest: a mirror rerun must pass: {p:?}");

    // A receive that "published" b1 and a/s0 into an empty DST and kept no token, though its
    // stream had a checkpoint after them (a made-up map): flagged, and the full stream it must
    // take then is not.
    let real = full_stream(&src, &tmp.path().join("full.stream"));
    let af2 = after_failure(&scan(&dsts[2], "selftest"), None, &new);
    let mut pos = real.pos.clone();
    for (p, at) in [(&b"b1"[..], 10), (b"a/s0", 20), (b"a/s1", 30), (b"c", 40)] {
        pos.insert(p.to_vec(), at);
    }
    let made_up = StreamMap {
        size: real.size,
        pos,
        checkpoints: vec![25],
    };
    let p = stream_rerun("selftest", &src, &dsts[2], &new, None, &af2, &made_up);
    assert!(
        p.len() == 1 && p[0].contains("no token kept, though a checkpoint"),
        "selftest: a failed receive without a token after a checkpoint must be flagged: {p:?}"
    );
}
