//! Injected I/O errors (issue 16, item 1): `copy`, `mirror` and `send | receive`, each into a
//! DST that already holds an OLD version of the tree, with one failpoint rule
//! (`RINGSYNC_FAILPOINTS`, src/failpoint.rs; the binary must be built with
//! `--features failpoints`). Run: `cargo test --release --features failpoints --test failpoint_e2e`.
//!
//! Each case starts from a fresh DST made from OLD by the same command (unfaulted, no fsync),
//! runs the command from NEW with the rule, and decides with the independent oracle
//! (`common::oracle`; scans of OLD and NEW are DST's own before the run and SRC's):
//!
//! - **a named entry fails** (`OP:NAME=FAULT`): the entry holds exactly its OLD content and
//!   metadata (or is absent if OLD lacked it), every other entry is exactly NEW (`copy`:
//!   entries only OLD had stay as they were), no name of a temporary (`.ringsync.*`,
//!   `.ringsync-stage.*`, `.ringsync-rcv.*`) is left, no file at a final name is torn (neither
//!   its OLD nor its NEW bytes), the exit status is 3 (docs/copy.md, docs/mirror.md,
//!   docs/stream.md: "partial"), and the process that met the fault (for a fault on `send`'s
//!   side, both ends) printed exactly one line naming the entry, with the operation, and no
//!   other line but the documented summaries;
//! - **the op is retried or continued** (EINTR where the code retries it, a short count that a
//!   writer continues): exit 0, DST exactly NEW, nothing on stderr;
//! - **a fault at an arbitrary moment** (`write@3=EIO`, `*@N=EIO`, `write@N+=ENOSPC`: which
//!   entry fails is not known in advance): exit 3, every entry is exactly OLD or exactly NEW,
//!   and the entries that are not NEW are exactly the ones stderr names (`DST/PATH:` or
//!   `SRC/PATH:`), or lie below a named directory;
//! - **syncfs fails** (`--fsync end`, the default): no regular file written in the run is
//!   published under its final name (every file whose bytes changed holds exactly its OLD
//!   entry, a new one is absent; `copy` writes a file that did not exist at its final name
//!   directly, docs/copy.md, so there a new file may be NEW), no temporary is left, each
//!   unpublished file reported, and exit 1: a run whose syncfs failed once is not durable
//!   (the end-of-run syncfs does not retry and trust it; fatal), 1 for `receive` (the
//!   stream stops at the publication: "nothing after the last verified checkpoint was
//!   published");
//! - **fsync is not retried and then trusted**: `--fsync file` with `fsync:NAME@1=EIO` (only the
//!   first fsync of that file fails, so a retry would succeed) must still leave NAME OLD, exit 3.
//!
//! After every faulted run the same command without the rule must exit 0 and make DST exactly
//! NEW (`mirror` and `receive`: the record clean), with no temporary left.
//!
//! Op kinds a command never reaches (found by trying every kind on every command):
//!
//! - `receive` opens, stats, closes and writes its files with direct system calls, never
//!   through the ring, and syncs with `syncfs` only: `open`, `read`, `statx`, `close`, `fsync`
//!   and `cfr` never fire. Its xattrs are set with direct `fsetxattr`/`lsetxattr` calls, which are
//!   not instrumented: `xattr` never fires either. It reaches `write` (its direct writes),
//!   `rename` (placing a staged entry) and `syncfs`.
//! - `send` reads files through the ring, but opens and stats them directly: `open` and
//!   `statx` never fire, and its descriptors are not registered with a name, so only
//!   unnamed `read` rules (`read@N=...`) fire there. They are the `send` cases (the rule on
//!   the sending process; the receiver keeps the skipped entry's OLD version, both exit 3).
//! - `copy` creates a file that did not exist at its final name directly (no temporary), so
//!   `rename` on such a file never fires (it does for `mirror` and `receive`).
//! - `xattr` (`copy`, `mirror`) fires only where a file's xattrs are copied descriptor to
//!   descriptor (a file written anew); attributes updated in place (`mirror`, an entry with the
//!   same bytes and mtime) and those of symlinks and specials are set with `lsetxattr` through
//!   `/proc/self/fd` paths, which are not instrumented, so no rule reaches them.
//! - `cfr` only with `--fsync none` (or `--data-path cfr`) and files of 1 MiB or more; `fsync`
//!   only with `--fsync file`; `syncfs` only with `--fsync end` (`receive`: without
//!   `--no-fsync`).
//! - EINTR and EAGAIN injected into a ring op are seen by the engine as the op's result (the
//!   injection sits outside the backends, which resubmit such results themselves), so `copy`
//!   and `mirror` fail the entry like any other errno; `copy_file_range` and `receive`'s
//!   `pwrite` retry EINTR (and `copy_file_range` EAGAIN), so an `@1` rule there recovers. A
//!   `short` write is continued by `receive` (the file is complete) and refused by the engine.
//!
//! The xattr rule: `OP:SUBSTR` is documented (src/failpoint.rs) to match the entry's name, but
//! src/meta.rs matches an `xattr` rule against the xattr's name. The matrix's xattr target
//! (`fp-attr`, xattr `user.fp-attr.tag`) fires under either meaning; the separate test
//! `xattr_rule_matches_the_entry_name` holds the rule to the documented one.
//!
//! Type changes: `fp-dir/fp-type` is an empty directory in OLD and a file in NEW. When the file
//! fails, OLD's directory must still be there (`copy` and `receive` replace it only by the
//! rename of a complete file; a `mirror` moves a non-empty one aside once the file is complete
//! and removes it after the rename: `mirror_type_change_failure_keeps_old_directory`).
//!
//! `failpoint_check_selftest` shows that the checks fail on fabricated trees: a failed entry
//! half OLD and half NEW, published, or with half its metadata; another entry left OLD; a
//! temporary left; an entry not NEW that stderr does not name; a file published after a failed
//! syncfs; stderr naming the entry twice, never, or without the operation.
//!
//! Trees: a small generated nasty tree (odd names, hardlinks, symlinks, a sparse file, xattrs,
//! ACLs, fifos, devices, other owners; `common::gen`, minus three of its four sparse files and
//! its 1 and 2 MiB files, as every case hashes three trees) plus fixed targets, some of 256 KiB and more (O_DIRECT
//! under `--fsync end`) and of 1 MiB and more (copy_file_range under `--fsync none`); NEW is
//! OLD after a dozen random mutations (`common::mutate`) and new versions of the targets.
//! `RINGSYNC_FP_SEED=N` (decimal or 0x hex) changes the seed (default fixed, so a failure
//! replays). Without the `failpoints` feature every test says SKIPPED and passes, except under
//! CI (env `CI` set), where that is a failure.

mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

use common::mutate as mutator;
use common::oracle::{compare_scanned, scan_tree, show, Entry};
use common::procs::{err_file, read_back, wait_all};
use common::*;

/// How long one ringsync process may take (a hang, an endless retry, is a failure).
const DEADLINE: Duration = Duration::from_secs(60);
const DEFAULT_SEED: u64 = 0xfa11_9017;

// ---------------------------------------------------------------------------------------------
// Prerequisites
// ---------------------------------------------------------------------------------------------

/// Whether the binary has failpoints; otherwise SKIPPED (a failure under CI).
fn failpoints_built() -> bool {
    if cfg!(feature = "failpoints") {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("failpoint_e2e: built without --features failpoints under CI (CI is set): the tests would prove nothing");
    }
    note("SKIPPED: built without --features failpoints");
    false
}

/// Root (the generated trees hold other owners, devices, mode-0000 directories) and user
/// xattrs on the scratch filesystem (the mirror record, the targets' xattrs).
fn prerequisites_met(dir: &Path) -> bool {
    if !is_root() {
        skip_or_fail("needs root: the generated trees hold other owners, devices and mode-0000 directories");
        return false;
    }
    if let Err(e) = rustix::fs::setxattr(
        dir,
        "user.ringsync-test-probe",
        b"1",
        rustix::fs::XattrFlags::empty(),
    ) {
        skip_or_fail(&format!("no user xattrs on {} ({e})", dir.display()));
        return false;
    }
    true
}

fn seed() -> u64 {
    match std::env::var("RINGSYNC_FP_SEED") {
        Ok(v) => {
            let v = v.trim();
            match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
                Some(h) => u64::from_str_radix(h, 16).ok(),
                None => v.parse().ok(),
            }
            .unwrap_or_else(|| panic!("RINGSYNC_FP_SEED={v:?} is not a number"))
        }
        Err(_) => DEFAULT_SEED,
    }
}

// ---------------------------------------------------------------------------------------------
// Trees
// ---------------------------------------------------------------------------------------------

/// Entries the rules name (each name is a substring of no other path in OLD or NEW).
const T_SMALL: &str = "fp-dir/fp-small";
/// 256 KiB and more, not a block multiple: O_DIRECT under `--fsync end`, with a cached tail.
const T_DIRECT: &str = "fp-dir/sub/fp-direct";
/// 1 MiB and more: O_DIRECT under `--fsync end`, copy_file_range under `--fsync none`.
const T_BIG: &str = "fp-dir/sub/fp-big";
/// New bytes and a new value of its xattr `user.fp-attr.tag`.
const T_ATTR: &str = "fp-attr";
/// Same bytes and mtime, new mode and xattr value: `mirror` updates it in place.
const T_META: &str = "fp-dir/fp-meta";
/// Only in NEW.
const T_NEW: &str = "fp-dir/fp-new";
/// An empty directory in OLD, a file in NEW.
const T_TYPE: &str = "fp-dir/fp-type";

/// (path, OLD size or absent, NEW size)
const TARGETS: &[(&str, Option<usize>, usize)] = &[
    (T_SMALL, Some(5_000), 7_001),
    (T_DIRECT, Some(300_000), 310_017),
    (T_BIG, Some(1_600_000), 1_500_001),
    (T_ATTR, Some(3_000), 3_100),
    (T_META, Some(4_096), 4_096),
    (T_NEW, None, 20_000),
    (T_TYPE, None, 10_000),
];

fn random_data(rng: &mut SmallRng, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rng.fill_bytes(&mut v);
    v
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(1_700_000_000)
}

fn set_times(p: &Path, mtime: i64, ns: u32) {
    let ts = |s: i64, n: u32| rustix::fs::Timespec {
        tv_sec: s,
        tv_nsec: n as _,
    };
    let t = rustix::fs::Timestamps {
        // The midnight after next: the same for every entry made in a test (unless it runs
        // across midnight), and in the future, so reads do not bump it (relatime).
        last_access: ts((now_secs() / 86_400 + 2) * 86_400, 5),
        last_modification: ts(mtime, ns),
    };
    rustix::fs::utimensat(rustix::fs::CWD, p, &t, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).expect("utimensat");
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    rustix::fs::setxattr(p, name, value, rustix::fs::XattrFlags::empty()).expect("setxattr");
}

/// Write the targets into OLD (`is_new` false) or NEW, with explicit, distinct mtimes (a
/// mirror trusts size and mtime; two writes in one clock tick would look equal).
fn put_targets(root: &Path, is_new: bool, rng: &mut SmallRng) {
    std::fs::create_dir_all(root.join("fp-dir/sub")).unwrap();
    let day = 86_400;
    let base = now_secs() - if is_new { 2 * day } else { 3 * day };
    let meta_bytes = random_data(&mut SmallRng::seed_from_u64(7), 4_096);
    for (i, (rel, old, new)) in TARGETS.iter().enumerate() {
        let p = root.join(rel);
        if *rel == T_TYPE && !is_new {
            std::fs::create_dir(&p).unwrap();
            set_times(&p, base + i as i64, 333);
            continue;
        }
        let size = if is_new { Some(*new) } else { *old };
        let Some(size) = size else { continue };
        if *rel == T_META {
            std::fs::write(&p, &meta_bytes).unwrap();
            let mode = if is_new { 0o600 } else { 0o644 };
            rustix::fs::chmod(&p, rustix::fs::Mode::from_raw_mode(mode)).unwrap();
            set_xattr(&p, "user.fp-meta.tag", if is_new { b"new value" } else { b"old" });
            set_times(&p, now_secs() - 4 * day, 777);
            continue;
        }
        std::fs::write(&p, random_data(rng, size)).unwrap();
        rustix::fs::chmod(&p, rustix::fs::Mode::from_raw_mode(0o640)).unwrap();
        if *rel == T_SMALL {
            // An xattr whose name does not hold the entry's (xattr_rule_matches_the_entry_name).
            set_xattr(&p, "user.plain", if is_new { b"new value" } else { b"old" });
        }
        if *rel == T_ATTR {
            set_xattr(&p, "user.fp-attr.tag", if is_new { b"new value" } else { b"old" });
        }
        set_times(&p, base + i as i64, if is_new { 222 } else { 111 });
    }
}

/// OLD and NEW trees under `root`. `copy_safe`: no mutation that puts a file where OLD had a
/// non-empty directory (`copy` does not delete: exit 3 by design, docs/copy.md).
fn make_trees(root: &Path, seed: u64, copy_safe: bool) -> (PathBuf, PathBuf) {
    let (old, new) = (root.join("old"), root.join("new"));
    let opts = GenOpts {
        dirs: 6,
        files: 30,
        big: false,
        deep: false,
        // Small (the oracle hashes every tree of every case): the targets bring the big files.
        max_file: 128 << 10,
        ..GenOpts::default()
    };
    // The same seed gives the same tree (times included).
    for t in [&old, &new] {
        let rep = gen_tree(t, seed, &opts).expect("generate a tree");
        // Every case hashes three trees: keep one sparse file (3 MiB, data at its start and
        // middle) of the four, and none of the 1 and 2 MiB files (the targets are big ones).
        let big = |p: &&Vec<u8>| {
            let name = p.rsplit(|&b| b == b'/').next().unwrap_or(p);
            name.starts_with(b"exact")
                && std::fs::symlink_metadata(bpath(t, p)).is_ok_and(|m| m.len() >= 1 << 20)
        };
        for p in rep.sparse.iter().skip(1).chain(rep.files.iter().filter(big)) {
            std::fs::remove_file(bpath(t, p)).unwrap_or_else(|e| panic!("remove {}: {e}", show(p)));
        }
    }
    let kinds = mutator::DEFAULT_KINDS
        .iter()
        .copied()
        .filter(|k| !copy_safe || *k != mutator::Mut::DirToFile)
        .collect();
    let mopts = mutator::MutOpts {
        kinds,
        max_new_file: 128 << 10,
        ..mutator::MutOpts::default()
    };
    mutator::mutate_with(&new, seed ^ 0x5eed, 12, &mopts).expect("mutate NEW");
    let mut rng = SmallRng::seed_from_u64(seed ^ 0xda7a);
    put_targets(&old, false, &mut rng);
    put_targets(&new, true, &mut rng);
    mutator::fix_atimes(&old, seed).unwrap();
    mutator::fix_atimes(&new, seed).unwrap();
    // Each rule's name must pick out its target alone.
    let (to, tn) = (scan(&old, "OLD"), scan(&new, "NEW"));
    for (rel, _, _) in TARGETS {
        let name = rel.rsplit('/').next().unwrap().as_bytes();
        let mut hits: Vec<String> = to
            .entries
            .keys()
            .chain(tn.entries.keys())
            .filter(|p| p.windows(name.len()).any(|w| w == name))
            .map(|p| show(p))
            .collect();
        hits.dedup();
        assert_eq!(hits, [rel.to_string()], "target name {rel} is not unique");
    }
    (old, new)
}

fn scan(p: &Path, what: &str) -> Tree {
    scan_tree(p, true).unwrap_or_else(|e| panic!("{what}: scan {}: {e}", p.display()))
}

// ---------------------------------------------------------------------------------------------
// The checks: pure functions of oracle scans and outputs (so the self-test can feed them)
// ---------------------------------------------------------------------------------------------

/// A name of ringsync's temporaries or staging areas in any component.
fn is_temp(p: &[u8]) -> bool {
    p.split(|&b| b == b'/').any(|c| {
        c.starts_with(b".ringsync.") || c.starts_with(b".ringsync-stage.") || c.starts_with(b".ringsync-rcv.")
    })
}

/// What a faulted run left, with what it started from and what it was given.
struct View<'a> {
    /// DST before the run.
    old: &'a Tree,
    /// SRC of the run.
    new: &'a Tree,
    /// DST after the run.
    dst: &'a Tree,
    /// `copy` never deletes: an entry only OLD had is expected to stay as it was.
    copy: bool,
    /// A mirror that met an error reading SRC deletes nothing that run (rsync's rule, said on
    /// stderr): entries only OLD had may stay, exactly OLD.
    kept: bool,
    src_root: &'a Path,
    dst_root: &'a Path,
}

fn opts(copy: bool) -> CompareOpts {
    CompareOpts {
        allow_extra_in_b: copy,
        ..mirror_cmp()
    }
}

/// The oracle's differences of one entry (`None`: absent).
fn entry_diffs(p: &[u8], a: Option<&Entry>, b: Option<&Entry>) -> Vec<String> {
    let one = |e: Option<&Entry>| Tree {
        entries: e.map(|e| (p.to_vec(), e.clone())).into_iter().collect(),
    };
    compare_scanned(&one(a), &one(b), &mirror_cmp())
}

impl View<'_> {
    /// The version of `p` a complete run leaves (`copy`: what only OLD had stays).
    fn wanted(&self, p: &[u8]) -> Option<&Entry> {
        match self.new.entries.get(p) {
            Some(e) => Some(e),
            None if self.copy => self.old.entries.get(p),
            None => None,
        }
    }

    fn is_new(&self, p: &[u8]) -> bool {
        entry_diffs(p, self.wanted(p), self.dst.entries.get(p)).is_empty()
    }

    fn is_old(&self, p: &[u8]) -> bool {
        entry_diffs(p, self.old.entries.get(p), self.dst.entries.get(p)).is_empty()
    }

    /// Every path of OLD, NEW and DST (temporaries aside), root excluded.
    fn paths(&self) -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = self
            .old
            .entries
            .keys()
            .chain(self.new.entries.keys())
            .chain(self.dst.entries.keys())
            .filter(|p| p.as_slice() != b"." && !is_temp(p))
            .cloned()
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Names of temporaries left in DST (one line).
    fn temps(&self) -> Vec<String> {
        let t: Vec<String> = self
            .dst
            .entries
            .keys()
            .filter(|p| is_temp(p))
            .map(|p| show(p))
            .collect();
        if t.is_empty() {
            return Vec::new();
        }
        let more = if t.len() > 8 {
            format!(" and {} more", t.len() - 8)
        } else {
            String::new()
        };
        vec![format!(
            "{} temporaries left in DST: {}{more}",
            t.len(),
            t[..t.len().min(8)].join(", ")
        )]
    }

    /// Regular files at final names whose bytes are neither their OLD nor their NEW ones.
    fn torn(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (p, e) in &self.dst.entries {
            if e.kind != Kind::File || is_temp(p) {
                continue;
            }
            let hash = |t: &Tree| {
                t.entries
                    .get(p)
                    .filter(|x| x.kind == Kind::File)
                    .and_then(|x| x.hash)
            };
            if e.hash != hash(self.old) && e.hash != hash(self.new) {
                out.push(format!(
                    "{}: torn: {} bytes, neither its OLD nor its NEW bytes",
                    show(p),
                    e.size
                ));
            }
        }
        out
    }

    /// The named entry `target` failed: it is exactly OLD (or absent), all else exactly NEW.
    fn one_failed(&self, target: &str) -> Vec<String> {
        let t = target.as_bytes();
        let mut out: Vec<String> = entry_diffs(t, self.old.entries.get(t), self.dst.entries.get(t))
            .into_iter()
            .map(|d| format!("failed entry not exactly OLD: {d}"))
            .collect();
        if self.is_new(t) && !self.is_old(t) {
            out.push(format!("{target}: the failed entry was published (it is NEW)"));
        }
        let others = CompareOpts {
            ignore: vec![t.to_vec()],
            ..opts(self.copy)
        };
        // With `kept`, DST without the entries only OLD had that it kept exactly (checked by
        // `kept_are_old`): a kept path must not count as a partner of a NEW hardlink group.
        let dst_new = self.kept.then(|| Tree {
            entries: self
                .dst
                .entries
                .iter()
                .filter(|(p, _)| self.new.entries.contains_key(*p) || !self.kept_ok(p))
                .map(|(p, e)| (p.clone(), e.clone()))
                .collect(),
        });
        out.extend(
            compare_scanned(self.new, dst_new.as_ref().unwrap_or(self.dst), &others)
                .into_iter()
                .map(|d| format!("another entry is not NEW: {d}")),
        );
        out.extend(self.kept_are_old());
        out
    }

    /// An entry only OLD had, kept: exactly OLD, or another name of an inode DST has at a NEW
    /// path (a hardlink partner, whose inode's attributes are NEW's: a symlink's owner, say).
    fn kept_ok(&self, p: &[u8]) -> bool {
        if self.is_old(p) {
            return true;
        }
        let (Some(d), Some(o)) = (self.dst.entries.get(p), self.old.entries.get(p)) else {
            return false;
        };
        d.kind == o.kind
            && d.nlink > 1
            && self
                .new
                .entries
                .keys()
                .any(|q| self.dst.entries.get(q).is_some_and(|e| e.ino == d.ino))
    }

    /// With `kept`: every entry NEW lacks that DST still has is exactly OLD (or a partner of a
    /// NEW path's inode).
    fn kept_are_old(&self) -> Vec<String> {
        if !self.kept {
            return Vec::new();
        }
        self.dst
            .entries
            .keys()
            .filter(|p| !self.new.entries.contains_key(*p) && !is_temp(p) && !self.kept_ok(p))
            .map(|p| {
                format!(
                    "{}: kept (deletions skipped) but not exactly OLD: {}",
                    show(p),
                    entry_diffs(p, self.old.entries.get(p), self.dst.entries.get(p)).join("; ")
                )
            })
            .collect()
    }

    /// DST is exactly NEW (`copy`: plus what only OLD had).
    fn exactly_new(&self) -> Vec<String> {
        compare_scanned(self.new, self.dst, &opts(self.copy))
            .into_iter()
            .map(|d| format!("not NEW: {d}"))
            .collect()
    }

    /// Whether `stderr` names `p` (as `DST/p:` or `SRC/p:`, paths shown as `Path::display` does).
    fn named(&self, p: &[u8], stderr: &str) -> bool {
        let rel = String::from_utf8_lossy(p);
        [self.dst_root, self.src_root]
            .iter()
            .any(|r| stderr.contains(&format!("{}/{rel}:", r.display())))
    }

    /// A fault somewhere: every entry is exactly OLD or exactly NEW, and the entries that are
    /// not NEW are the ones `stderr` names, or lie below a named directory; none named is NEW
    /// (unless OLD and NEW are the same there).
    fn old_or_new_as_reported(&self, stderr: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut reported = 0;
        for p in self.paths() {
            let (is_new, is_old) = (self.is_new(&p), self.is_old(&p));
            // Not deleted: the run met an error reading SRC (said on stderr).
            let kept_here = self.kept && !self.new.entries.contains_key(&p) && self.kept_ok(&p);
            if !is_new && !is_old && !kept_here {
                let d = entry_diffs(&p, self.wanted(&p), self.dst.entries.get(&p));
                out.push(format!(
                    "{}: neither exactly OLD nor exactly NEW (against NEW: {})",
                    show(&p),
                    d.join("; ")
                ));
            }
            let named = self.named(&p, stderr);
            let covered = named
                || p.iter()
                    .enumerate()
                    .filter(|(_, &b)| b == b'/')
                    .any(|(i, _)| self.named(&p[..i], stderr));
            reported += usize::from(named);
            if !is_new && kept_here {
                continue;
            }
            if !is_new {
                if !covered {
                    out.push(format!("{}: not NEW, and stderr does not name it", show(&p)));
                }
            } else if named && !is_old {
                out.push(format!(
                    "{}: stderr reports a failure, but the entry is NEW (published anyway)",
                    show(&p)
                ));
            }
        }
        if reported == 0 {
            out.push("stderr names no entry of OLD or NEW: the fault did not take effect".into());
        }
        out
    }

    /// `syncfs` failed: no regular file written in the run is at its final name. A path where
    /// NEW has a file whose bytes OLD did not have holds exactly its OLD entry (absent when OLD
    /// had none: `copy` too writes new files under temporary names, docs/copy.md), unless it
    /// is a new name of a file DST already had (a hardlink: no data written).
    fn unpublished(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (p, n) in &self.new.entries {
            if n.kind != Kind::File {
                continue;
            }
            let o = self.old.entries.get(p);
            if o.is_some_and(|o| o.kind == Kind::File && o.hash == n.hash) {
                continue;
            }
            let d = self.dst.entries.get(p);
            // A new name linked to an inode DST already had, with its bytes: no data written.
            let linked = d.is_some_and(|d| {
                d.kind == Kind::File
                    && self
                        .old
                        .entries
                        .values()
                        .any(|e| e.kind == Kind::File && e.ino == d.ino && e.hash == d.hash)
            });
            if linked && self.is_new(p) {
                continue;
            }
            for diff in entry_diffs(p, o, d) {
                out.push(format!("written after a failed syncfs and not OLD: {diff}"));
            }
        }
        out
    }
}

/// Lines of the documented summaries that name no entry.
fn is_summary(line: &str) -> bool {
    line.contains("entries could not be applied")
        || line.contains("are not deleted from the target this run")
        || line.contains("entries could not be sent")
        || line.trim().is_empty()
}

/// The stderr of one process that met a fault on `target`: exactly one line names it and says
/// one of `ops`; every other line is a summary. `want` false: no line names it, none other.
fn report_lines(who: &str, stderr: &str, target: &str, ops: &[&str], want: bool) -> Vec<String> {
    let mut out = Vec::new();
    let naming: Vec<&str> = stderr.lines().filter(|l| l.contains(target)).collect();
    match (want, naming.as_slice()) {
        (true, [l]) if ops.iter().any(|o| l.contains(o)) => {}
        (true, [l]) => out.push(format!(
            "{who}: the line naming {target} does not say the operation ({ops:?}): {l:?}"
        )),
        (true, ls) => out.push(format!(
            "{who}: {} lines name {target} (want exactly one): {ls:?}",
            ls.len()
        )),
        (false, []) => {}
        (false, ls) => out.push(format!("{who}: lines name {target}, but it did not fail: {ls:?}")),
    }
    for l in stderr.lines() {
        if !l.contains(target) && !is_summary(l) {
            out.push(format!("{who}: unexpected stderr line: {l:?}"));
        }
    }
    out
}

/// Nothing but the documented summaries on a process's stderr.
fn quiet(who: &str, stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| !is_summary(l))
        .map(|l| format!("{who}: unexpected stderr line: {l:?}"))
        .collect()
}

fn exit_codes(got: &[Option<i32>], want: &[i32], who: &[&str]) -> Vec<String> {
    let want: Vec<Option<i32>> = want.iter().map(|c| Some(*c)).collect();
    if got == want.as_slice() {
        return Vec::new();
    }
    vec![format!("exit status of {who:?}: {got:?}, want {want:?}")]
}

// ---------------------------------------------------------------------------------------------
// Commands and cases
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmd {
    Copy,
    Mirror,
    /// `send | receive`, the rule on `receive`.
    Receive,
    /// `send | receive`, the rule on `send`.
    Send,
}

impl Cmd {
    fn is_pipe(self) -> bool {
        matches!(self, Cmd::Receive | Cmd::Send)
    }

    fn who(self) -> &'static [&'static str] {
        if self.is_pipe() {
            &["send", "receive"]
        } else if self == Cmd::Copy {
            &["copy"]
        } else {
            &["mirror"]
        }
    }
}

/// One process's result.
struct Ran {
    codes: Vec<Option<i32>>,
    /// stderr per process (`who` order).
    errs: Vec<String>,
}

impl Ran {
    fn all_err(&self) -> String {
        self.errs.join("\n")
    }

    fn show(&self, who: &[&str]) -> String {
        let mut s = format!("exit {:?}", self.codes);
        for (w, e) in who.iter().zip(&self.errs) {
            s.push_str(&format!("\n--- {w} stderr ---\n{}", tail(e)));
        }
        s
    }
}

fn tail(s: &str) -> &str {
    let mut i = s.len().saturating_sub(3000);
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

fn ringsync(args: &[OsString], rule: Option<&str>, stderr: Stdio) -> Command {
    let mut c = Command::new(bin());
    c.args(args).stderr(stderr).env_remove("RINGSYNC_FAILPOINTS");
    if let Some(r) = rule {
        c.env("RINGSYNC_FAILPOINTS", r);
    }
    c
}

fn os(v: &[&str]) -> Vec<OsString> {
    v.iter().map(OsString::from).collect()
}

/// Run `cmd` from `src` into `dst`; `rule` on the process the command names, `extra` its options.
fn run(cmd: Cmd, extra: &[&str], rule: Option<&str>, src: &Path, dst: &Path) -> Ran {
    if !cmd.is_pipe() {
        let mut a = os(&[if cmd == Cmd::Copy { "copy" } else { "mirror" }]);
        a.extend(os(extra));
        a.push(src.into());
        a.push(dst.into());
        let (f, e) = err_file();
        let c = ringsync(&a, rule, e)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn ringsync");
        let mut kids = vec![("ringsync", c)];
        let codes = wait_all(&mut kids, &format!("ringsync {a:?} ({rule:?})"), DEADLINE);
        return Ran {
            codes,
            errs: vec![read_back(f)],
        };
    }
    let (send_extra, recv_extra) = if cmd == Cmd::Send {
        (extra, &[][..])
    } else {
        (&[][..], extra)
    };
    let mut sa = os(&["send"]);
    sa.extend(os(send_extra));
    sa.push(src.into());
    let mut ra = os(&["receive"]);
    ra.extend(os(recv_extra));
    ra.push(dst.into());
    let (sf, se) = err_file();
    let (rf, re) = err_file();
    let mut send = ringsync(&sa, rule.filter(|_| cmd == Cmd::Send), se)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn send");
    let out = send.stdout.take().unwrap();
    let recv = ringsync(&ra, rule.filter(|_| cmd == Cmd::Receive), re)
        .stdin(Stdio::from(out))
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn receive");
    let mut kids = vec![("send", send), ("receive", recv)];
    let codes = wait_all(&mut kids, &format!("send | receive ({rule:?})"), DEADLINE);
    Ran {
        codes,
        errs: vec![read_back(sf), read_back(rf)],
    }
}

/// What a case expects.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// `target` fails, reported with one of `ops`; exit 3; the rest NEW.
    Fails {
        target: &'static str,
        ops: &'static [&'static str],
    },
    /// The op is retried or continued: exit 0, DST exactly NEW, nothing on stderr.
    Recovers,
    /// A fault at a moment, on an entry not known in advance: exit 3, each entry OLD or NEW
    /// as stderr says.
    Somewhere,
    /// A failed syncfs: nothing written is published; exit `code` (of the faulted process).
    Unpublished { code: i32 },
}

struct Case {
    cmd: Cmd,
    extra: &'static [&'static str],
    rule: &'static str,
    expect: Expect,
}

const fn case(cmd: Cmd, extra: &'static [&'static str], rule: &'static str, expect: Expect) -> Case {
    Case {
        cmd,
        extra,
        rule,
        expect,
    }
}

const fn fails(target: &'static str, ops: &'static [&'static str]) -> Expect {
    Expect::Fails { target, ops }
}

/// The exit statuses a case wants, per process.
fn wanted_codes(cmd: Cmd, code: i32) -> Vec<i32> {
    match cmd {
        Cmd::Copy | Cmd::Mirror => vec![code],
        Cmd::Receive => vec![0, code],
        // A skipped entry: both ends exit 3 (docs/stream.md).
        Cmd::Send => vec![code, code],
    }
}

/// The checks of one faulted run (everything but the rerun).
fn check_run(c: &Case, v: &View, ran: &Ran) -> Vec<String> {
    let mut out = v.temps();
    out.extend(v.torn());
    let who = c.cmd.who();
    for e in &ran.errs {
        if e.contains("panicked") {
            out.push("a process panicked".into());
        }
    }
    match c.expect {
        Expect::Fails { target, ops } => {
            out.extend(exit_codes(&ran.codes, &wanted_codes(c.cmd, 3), who));
            out.extend(v.one_failed(target));
            for (i, w) in who.iter().enumerate() {
                // The process that met the fault reports it; for a skip on send's side the
                // receiver says it kept the entry too.
                let want = !c.cmd.is_pipe() || c.cmd == Cmd::Send || *w == "receive";
                out.extend(report_lines(w, &ran.errs[i], target, ops, want));
            }
        }
        Expect::Recovers => {
            out.extend(exit_codes(&ran.codes, &wanted_codes(c.cmd, 0), who));
            out.extend(v.exactly_new());
            for (w, e) in who.iter().zip(&ran.errs) {
                out.extend(quiet(w, e));
            }
        }
        Expect::Somewhere => {
            out.extend(exit_codes(&ran.codes, &wanted_codes(c.cmd, 3), who));
            out.extend(v.old_or_new_as_reported(&ran.all_err()));
        }
        Expect::Unpublished { code } => {
            out.extend(exit_codes(&ran.codes, &wanted_codes(c.cmd, code), who));
            out.extend(v.unpublished());
            if !ran.all_err().contains("syncfs") {
                out.push("no line says that syncfs failed".into());
            }
            // copy and mirror go on and report each file they did not publish.
            if !c.cmd.is_pipe() {
                out.extend(v.old_or_new_as_reported(&ran.all_err()));
            }
        }
    }
    out
}

/// A test's trees and the cases run against them.
struct Bench {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    old: PathBuf,
    new: PathBuf,
    old_tree: Tree,
    new_tree: Tree,
    seed: u64,
}

impl Bench {
    fn new(tag: &str, copy_safe: bool) -> Option<Bench> {
        if !failpoints_built() {
            return None;
        }
        let tmp = scratch(&format!("fp-{tag}"));
        if !prerequisites_met(tmp.path()) {
            return None;
        }
        let seed = seed();
        note(&format!(
            "failpoint_e2e {tag}: seed {seed:#x} (RINGSYNC_FP_SEED={seed:#x} replays it)"
        ));
        let root = tmp.path().to_path_buf();
        let (old, new) = make_trees(&root, seed, copy_safe);
        let (old_tree, new_tree) = (scan(&old, "OLD"), scan(&new, "NEW"));
        Some(Bench {
            _tmp: tmp,
            root,
            old,
            new,
            old_tree,
            new_tree,
            seed,
        })
    }

    /// A fresh DST holding OLD, made by `cmd` itself (unfaulted, without syncs), and its scan.
    fn fresh_dst(&self, cmd: Cmd, i: usize) -> (PathBuf, Tree) {
        let dst = self.root.join(format!("dst{i}"));
        let ran = match cmd {
            Cmd::Copy | Cmd::Mirror => run(cmd, &["--fsync", "none"], None, &self.old, &dst),
            Cmd::Receive | Cmd::Send => run(Cmd::Receive, &["--no-fsync"], None, &self.old, &dst),
        };
        let want = if cmd.is_pipe() {
            vec![Some(0), Some(0)]
        } else {
            vec![Some(0)]
        };
        assert_eq!(
            ran.codes,
            want,
            "setup of DST from OLD ({cmd:?}): {}",
            ran.show(cmd.who())
        );
        let t = scan(&dst, "DST before the run");
        let d = compare_scanned(&self.old_tree, &t, &mirror_cmp());
        assert!(
            d.is_empty(),
            "setup of DST from OLD ({cmd:?}): DST differs from OLD:\n  {}",
            d.join("\n  ")
        );
        (dst, t)
    }

    /// Run every case (two at a time: most of a case is waiting for syncfs and the disk);
    /// returns the failures, each with its reproduction.
    fn run_cases(&self, test: &str, cases: &[Case]) -> Vec<String> {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let fails = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(c) = cases.get(i) else { break };
                    if let Some(f) = self.run_case(test, i, c) {
                        fails.lock().unwrap().push((i, f));
                    }
                });
            }
        });
        let mut fails = fails.into_inner().unwrap();
        fails.sort();
        fails.into_iter().map(|(_, f)| f).collect()
    }

    /// One case: a fresh DST holding OLD, the faulted run from NEW, its checks, the rerun.
    fn run_case(&self, test: &str, i: usize, c: &Case) -> Option<String> {
        let t0 = Instant::now();
        let (dst, old) = self.fresh_dst(c.cmd, i);
        let ran = run(c.cmd, c.extra, Some(c.rule), &self.new, &dst);
        let t_run = t0.elapsed();
        let after = scan(&dst, "DST after the faulted run");
        let view = View {
            old: &old,
            new: &self.new_tree,
            dst: &after,
            copy: c.cmd == Cmd::Copy,
            kept: ran.all_err().contains("are not deleted from the target this run"),
            src_root: &self.new,
            dst_root: &dst,
        };
        let mut f = check_run(c, &view, &ran);
        // The same command again, without the rule, converges.
        let again = run(c.cmd, c.extra, None, &self.new, &dst);
        let t = scan(&dst, "DST after the rerun");
        let rerun = View { dst: &t, ..view };
        let mut g = exit_codes(&again.codes, &wanted_codes(c.cmd, 0), c.cmd.who());
        g.extend(rerun.temps());
        g.extend(rerun.exactly_new());
        if c.cmd != Cmd::Copy {
            let state = read_record_json(&dst)
                .and_then(|v| v.get("state").and_then(|s| s.as_str()).map(String::from));
            if state.as_deref() != Some("clean") {
                g.push(format!("record state {state:?} after the rerun, want \"clean\""));
            }
        }
        let _ = std::fs::remove_dir_all(&dst);
        let what = format!(
            "{:?}{}{} with RINGSYNC_FAILPOINTS='{}'",
            c.cmd,
            if c.extra.is_empty() { "" } else { " " },
            c.extra.join(" "),
            c.rule
        );
        note(&format!(
            "  {what}: exit {:?}, {} problems; rerun {} problems ({:.0?}, to the faulted run's end {:.0?})",
            ran.codes,
            f.len(),
            g.len(),
            t0.elapsed(),
            t_run,
        ));
        if !g.is_empty() {
            f.push(format!(
                "the rerun without the rule did not converge:\n    {}\n    rerun: {}",
                g.join("\n    "),
                again.show(c.cmd.who()).replace('\n', "\n    ")
            ));
        }
        if f.is_empty() {
            return None;
        }
        Some(format!(
            "{what} ({:?}):\n  {}\n  run: {}\n  reproduce: RINGSYNC_FP_SEED={:#x} cargo test --release --features failpoints --test failpoint_e2e {test}",
            c.expect,
            f.iter().take(30).cloned().collect::<Vec<_>>().join("\n  "),
            ran.show(c.cmd.who()).replace('\n', "\n  "),
            self.seed
        ))
    }
}

fn finish(test: &str, started: Instant, n: usize, fails: &[String]) {
    note(&format!(
        "{test}: {n} cases in {:.1?}, {} failed",
        started.elapsed(),
        fails.len()
    ));
    assert!(
        fails.is_empty(),
        "{test}: {} of {n} cases failed:\n\n{}",
        fails.len(),
        fails.join("\n\n")
    );
}

fn run_test(test: &str, copy_safe: bool, cases: &[Case]) {
    let started = Instant::now();
    let Some(b) = Bench::new(test, copy_safe) else {
        return;
    };
    let fails = b.run_cases(test, cases);
    finish(test, started, cases.len(), &fails);
}

// ---------------------------------------------------------------------------------------------
// The matrix
// ---------------------------------------------------------------------------------------------

const COPY: Cmd = Cmd::Copy;
const MIRROR: Cmd = Cmd::Mirror;
const RECEIVE: Cmd = Cmd::Receive;
const SEND: Cmd = Cmd::Send;

const NONE: &[&str] = &[];
const FSYNC_FILE: &[&str] = &["--fsync", "file"];
const FSYNC_NONE: &[&str] = &["--fsync", "none"];
const URING: &[&str] = &["--engine", "uring"];
const SYNC: &[&str] = &["--engine", "sync"];

const OPEN: &[&str] = &["open", "create"];
const READ: &[&str] = &["read"];
const WRITE: &[&str] = &["write"];
const CLOSE: &[&str] = &["close"];
const STATX: &[&str] = &["statx"];
const RENAME: &[&str] = &["rename"];
const XATTR: &[&str] = &["xattr"];
const FSYNC: &[&str] = &["fsync"];
const CFR: &[&str] = &["copy_file_range"];

/// `copy` into a DST holding OLD: every op kind.
#[test]
fn copy_failpoints() {
    let cases = [
        case(COPY, NONE, "open:fp-small=EIO", fails(T_SMALL, OPEN)),
        case(COPY, NONE, "open:fp-new=EACCES", fails(T_NEW, OPEN)),
        case(COPY, NONE, "statx:fp-small=EIO", fails(T_SMALL, STATX)),
        case(COPY, NONE, "read:fp-small=EIO", fails(T_SMALL, READ)),
        case(COPY, NONE, "read:fp-direct=short", fails(T_DIRECT, READ)),
        case(COPY, NONE, "write:fp-small=EIO", fails(T_SMALL, WRITE)),
        case(COPY, NONE, "write:fp-direct=ENOSPC", fails(T_DIRECT, WRITE)),
        case(COPY, NONE, "write:fp-big=short", fails(T_BIG, WRITE)),
        case(COPY, NONE, "write:fp-new=EIO", fails(T_NEW, WRITE)),
        case(COPY, NONE, "write:fp-type=EIO", fails(T_TYPE, WRITE)),
        case(COPY, NONE, "write:fp-small@1=EINTR", fails(T_SMALL, WRITE)),
        case(COPY, NONE, "write:fp-direct@1=EAGAIN", fails(T_DIRECT, WRITE)),
        case(COPY, SYNC, "write:fp-big=EIO", fails(T_BIG, WRITE)),
        case(COPY, NONE, "close:fp-small=EIO", fails(T_SMALL, CLOSE)),
        case(COPY, NONE, "xattr:fp-attr=EIO", fails(T_ATTR, XATTR)),
        case(COPY, NONE, "rename:fp-direct=EIO", fails(T_DIRECT, RENAME)),
        // fsync is not retried and then trusted: only the first call fails.
        case(COPY, FSYNC_FILE, "fsync:fp-small@1=EIO", fails(T_SMALL, FSYNC)),
        case(COPY, FSYNC_FILE, "fsync:fp-direct=EIO", fails(T_DIRECT, FSYNC)),
        case(COPY, FSYNC_NONE, "cfr:fp-big=EIO", fails(T_BIG, CFR)),
        case(COPY, FSYNC_NONE, "cfr:fp-big=ENOSPC", fails(T_BIG, CFR)),
        case(COPY, FSYNC_NONE, "cfr:fp-big@1=EINTR", Expect::Recovers),
        case(COPY, FSYNC_NONE, "write:fp-direct=EIO", fails(T_DIRECT, WRITE)),
        // The syncfs before the renames fails; the one at the end succeeds (exit 3) or fails
        // too (fatal, exit 1).
        // The end-of-run syncfs fails too: after a failed syncfs a later one proves nothing.
        case(COPY, NONE, "syncfs@1=EIO", Expect::Unpublished { code: 1 }),
        case(COPY, NONE, "syncfs=EIO", Expect::Unpublished { code: 1 }),
        case(COPY, NONE, "write@3=EIO", Expect::Somewhere),
        case(COPY, NONE, "*@25=EIO", Expect::Somewhere),
        case(COPY, NONE, "write@6+=ENOSPC", Expect::Somewhere),
        case(COPY, NONE, "open:.ringsync@2=EIO", Expect::Somewhere),
    ];
    run_test("copy_failpoints", true, &cases);
}

/// `mirror` into a DST holding OLD: every op kind (`--engine auto` applies a plan this small on
/// the sync engine; a few cases on io_uring).
#[test]
fn mirror_failpoints() {
    let cases = [
        // The walk stats DST's entry first (@1), then SRC's (@2).
        case(MIRROR, NONE, "statx:fp-small@1=EIO", fails(T_SMALL, STATX)),
        case(MIRROR, NONE, "statx:fp-small@2=EIO", fails(T_SMALL, STATX)),
        case(MIRROR, NONE, "open:fp-small=EIO", fails(T_SMALL, OPEN)),
        case(MIRROR, NONE, "read:fp-direct=EIO", fails(T_DIRECT, READ)),
        case(MIRROR, NONE, "read:fp-small=short", fails(T_SMALL, READ)),
        case(MIRROR, NONE, "write:fp-small=EIO", fails(T_SMALL, WRITE)),
        case(MIRROR, NONE, "write:fp-big=ENOSPC", fails(T_BIG, WRITE)),
        case(MIRROR, NONE, "write:fp-direct=short", fails(T_DIRECT, WRITE)),
        case(MIRROR, NONE, "write:fp-new=EIO", fails(T_NEW, WRITE)),
        case(MIRROR, NONE, "write:fp-small@1=EINTR", fails(T_SMALL, WRITE)),
        case(MIRROR, NONE, "write:fp-small@1=EAGAIN", fails(T_SMALL, WRITE)),
        case(MIRROR, NONE, "close:fp-direct=EIO", fails(T_DIRECT, CLOSE)),
        case(MIRROR, NONE, "xattr:fp-attr=EIO", fails(T_ATTR, XATTR)),
        case(MIRROR, NONE, "rename:fp-small=EIO", fails(T_SMALL, RENAME)),
        case(MIRROR, NONE, "rename:fp-new=EIO", fails(T_NEW, RENAME)),
        case(MIRROR, FSYNC_FILE, "fsync:fp-small@1=EIO", fails(T_SMALL, FSYNC)),
        case(MIRROR, FSYNC_FILE, "fsync:fp-big@1=EIO", fails(T_BIG, FSYNC)),
        case(MIRROR, FSYNC_NONE, "cfr:fp-big=EIO", fails(T_BIG, CFR)),
        case(MIRROR, FSYNC_NONE, "cfr:fp-big@1=EAGAIN", Expect::Recovers),
        case(MIRROR, URING, "write:fp-direct=EIO", fails(T_DIRECT, WRITE)),
        case(MIRROR, URING, "read:fp-big=short", fails(T_BIG, READ)),
        case(MIRROR, URING, "open:fp-new=EIO", fails(T_NEW, OPEN)),
        case(MIRROR, URING, "close:fp-small=EIO", fails(T_SMALL, CLOSE)),
        case(MIRROR, NONE, "syncfs@1=EIO", Expect::Unpublished { code: 1 }),
        case(MIRROR, NONE, "syncfs=EIO", Expect::Unpublished { code: 1 }),
        case(MIRROR, NONE, "write@2=EIO", Expect::Somewhere),
        case(MIRROR, URING, "*@40=EIO", Expect::Somewhere),
        case(MIRROR, NONE, "write@4+=ENOSPC", Expect::Somewhere),
    ];
    run_test("mirror_failpoints", false, &cases);
}

/// A directory in OLD that is a file in NEW: when the file fails, OLD's directory must still be
/// there (copy and receive replace it only by the rename of a complete file; a mirror moves it
/// aside then, and removes it once the file is in place). Failed before 2026-12-04's fix: the
/// mirror's plan removed the directory before the file was written.
#[test]
fn mirror_type_change_failure_keeps_old_directory() {
    let cases = [case(MIRROR, NONE, "write:fp-type=EIO", fails(T_TYPE, WRITE))];
    run_test("mirror_type_change_failure_keeps_old_directory", false, &cases);
}

/// `send | receive` into a DST holding OLD: the receiver's op kinds (`write`, `rename`,
/// `syncfs`), and the sender's (`read`, unnamed).
#[test]
fn stream_failpoints() {
    let cases = [
        case(RECEIVE, NONE, "write:fp-small=EIO", fails(T_SMALL, WRITE)),
        case(RECEIVE, NONE, "write:fp-direct=ENOSPC", fails(T_DIRECT, WRITE)),
        case(RECEIVE, NONE, "write:fp-big@1=EAGAIN", fails(T_BIG, WRITE)),
        case(RECEIVE, NONE, "write:fp-new=EIO", fails(T_NEW, WRITE)),
        case(RECEIVE, NONE, "write:fp-type=EIO", fails(T_TYPE, WRITE)),
        // pwrite's EINTR is retried; a short write is continued.
        case(RECEIVE, NONE, "write:fp-small@1=EINTR", Expect::Recovers),
        case(RECEIVE, NONE, "write:fp-big=short", Expect::Recovers),
        case(RECEIVE, NONE, "rename:fp-small=EIO", fails(T_SMALL, RENAME)),
        case(RECEIVE, NONE, "rename:fp-new=EIO", fails(T_NEW, RENAME)),
        case(RECEIVE, NONE, "syncfs@1=EIO", Expect::Unpublished { code: 1 }),
        case(RECEIVE, NONE, "write@2=EIO", Expect::Somewhere),
        case(RECEIVE, NONE, "write@3+=ENOSPC", Expect::Somewhere),
        case(SEND, NONE, "read@1=EIO", Expect::Somewhere),
        case(SEND, NONE, "read@3=short", Expect::Somewhere),
        case(SEND, URING, "read@2+=EIO", Expect::Somewhere),
    ];
    run_test("stream_failpoints", false, &cases);
}

/// `copy` over a DST holding `z/q`, whose source gained a new hardlink `a-new` (the group's
/// first path: the walk reaches the root's entries first) with new bytes. The new name is
/// written in place (copy may), but `z/q` must not be linked to that inode before a syncfs
/// made its data durable: with every syncfs failing, `z/q` keeps OLD's bytes. Failed before
/// 2026-12-04's fix (the soak's copy/ext4 shutdown rounds found `z/q` zero-filled): the link
/// replaced `z/q` at once.
#[test]
fn copy_hardlink_over_old_path_waits_for_syncfs() {
    if !failpoints_built() {
        return;
    }
    let tmp = scratch("fp-hardlink");
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    for d in [&src, &dst] {
        std::fs::create_dir_all(d.join("z")).unwrap();
    }
    let old: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    let new: Vec<u8> = (0..50_000u32).map(|i| (i % 241) as u8 ^ 0x5a).collect();
    std::fs::write(dst.join("z/q"), &old).unwrap();
    std::fs::write(src.join("z/q"), &new).unwrap();
    std::fs::hard_link(src.join("z/q"), src.join("a-new")).unwrap();
    // Big enough for the chunked O_DIRECT path too.
    let big_old = vec![7u8; 3 << 20];
    let mut big_new = vec![9u8; (3 << 20) + 12_345];
    big_new[100] = 1;
    std::fs::write(dst.join("z/big"), &big_old).unwrap();
    std::fs::write(src.join("z/big"), &big_new).unwrap();
    std::fs::hard_link(src.join("z/big"), src.join("a-big")).unwrap();
    let ran = run(Cmd::Copy, &[], Some("syncfs=EIO"), &src, &dst);
    let err = ran.all_err();
    assert_eq!(ran.codes, vec![Some(1)], "copy with every syncfs failing: {err}");
    assert!(
        std::fs::read(dst.join("z/q")).unwrap() == old,
        "z/q was replaced by a link to data no syncfs made durable:\n{err}"
    );
    assert!(
        std::fs::read(dst.join("z/big")).unwrap() == big_old,
        "z/big was replaced by a link to data no syncfs made durable:\n{err}"
    );
    // And without the fault the rerun links them.
    let ran = run(Cmd::Copy, &[], None, &src, &dst);
    assert_eq!(ran.codes, vec![Some(0)], "rerun: {}", ran.all_err());
    for (a, b, want) in [("a-new", "z/q", &new), ("a-big", "z/big", &big_new)] {
        let (ma, mb) = (
            std::fs::metadata(dst.join(a)).unwrap(),
            std::fs::metadata(dst.join(b)).unwrap(),
        );
        use std::os::unix::fs::MetadataExt;
        assert_eq!(ma.ino(), mb.ino(), "{a} and {b} are one inode after the rerun");
        assert!(
            std::fs::read(dst.join(b)).unwrap() == *want,
            "{b} is NEW after the rerun"
        );
    }
}

/// src/failpoint.rs: `OP:SUBSTR` matches "the entry's own name". An xattr rule naming the entry
/// (whose xattr names do not contain it) must fail that entry's copy.
#[test]
fn xattr_rule_matches_the_entry_name() {
    let started = Instant::now();
    let Some(b) = Bench::new("xattr-name", true) else {
        return;
    };
    // fp-small's only xattr is user.plain.
    let cases = [
        case(COPY, NONE, "xattr:fp-small=EIO", fails(T_SMALL, XATTR)),
        case(MIRROR, NONE, "xattr:fp-small=EIO", fails(T_SMALL, XATTR)),
    ];
    let fails = b.run_cases("xattr_rule_matches_the_entry_name", &cases);
    finish("xattr_rule_matches_the_entry_name", started, cases.len(), &fails);
}

// ---------------------------------------------------------------------------------------------
// Self-test
// ---------------------------------------------------------------------------------------------

/// The checks can fail: fabricated OLD, NEW and DST trees (a failed entry half updated, torn,
/// or published; another entry left OLD; a temporary left; a file published after a failed
/// syncfs) and stderr that names the entry twice, not at all, without the operation, or says
/// more.
#[test]
fn failpoint_check_selftest() {
    let tmp = scratch("fp-selftest");
    let root = tmp.path();
    let (o, n) = (root.join("old"), root.join("new"));
    let mut rng = SmallRng::seed_from_u64(11);
    let t_old = random_data(&mut rng, 300_000);
    let t_new = random_data(&mut rng, 300_000);
    let x_old = random_data(&mut rng, 5_000);
    let x_new = random_data(&mut rng, 6_000);
    let w = |root: &Path, rel: &str, data: &[u8], mtime: i64| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        set_times(&p, mtime, 0);
    };
    let build = |root: &Path, t: &[u8], x: &[u8], tm: i64, xm: i64, fresh: bool| {
        w(root, "d/t", t, tm);
        w(root, "x", x, xm);
        w(root, "same", b"same", 1_000_000);
        if fresh {
            w(root, "d/fresh", b"fresh", 2_000_000);
        }
        set_times(&root.join("d"), 3_000_000, 0);
        set_times(root, 3_000_000, 0);
    };
    build(&o, &t_old, &x_old, 100, 200, false);
    build(&n, &t_new, &x_new, 101, 201, true);
    let (to, tn) = (scan(&o, "old"), scan(&n, "new"));
    let dst_of = |name: &str, t: &[u8], tm: i64, x: &[u8], xm: i64, fresh: bool| -> (PathBuf, Tree) {
        let d = root.join(name);
        build(&d, t, x, tm, xm, fresh);
        let tree = scan(&d, name);
        (d, tree)
    };
    let view = |tree: &Tree, p: &Path| -> Vec<String> {
        let v = View {
            old: &to,
            new: &tn,
            dst: tree,
            copy: false,
            kept: false,
            src_root: &n,
            dst_root: p,
        };
        let mut out = v.one_failed("d/t");
        out.extend(v.temps());
        out.extend(v.torn());
        out
    };

    // The right result: t OLD, the rest NEW.
    let (good, tg) = dst_of("good", &t_old, 100, &x_new, 201, true);
    assert!(view(&tg, &good).is_empty(), "{:?}", view(&tg, &good));
    let gv = View {
        old: &to,
        new: &tn,
        dst: &tg,
        copy: false,
        kept: false,
        src_root: &n,
        dst_root: &good,
    };
    let line = format!(
        "ringsync: write {}/d/t: Input/output error (os error 5)\n",
        good.display()
    );
    assert!(report_lines("copy", &line, "d/t", WRITE, true).is_empty());
    assert!(
        gv.old_or_new_as_reported(&line).is_empty(),
        "{:?}",
        gv.old_or_new_as_reported(&line)
    );
    // After a failed syncfs, x (NEW) and d/fresh (new) would have been published; t is OLD.
    let f = gv.unpublished();
    assert!(
        f.iter().any(|s| s.contains("x:")) && f.iter().any(|s| s.contains("d/fresh")),
        "{f:?}"
    );
    assert!(!f.iter().any(|s| s.contains("d/t")), "{f:?}");

    // t half OLD, half NEW (same size, so only the bytes tell).
    let mut mixed = t_new[..150_000].to_vec();
    mixed.extend_from_slice(&t_old[150_000..]);
    let (p, t) = dst_of("mixed", &mixed, 100, &x_new, 201, true);
    let f = view(&t, &p);
    assert!(f.iter().any(|s| s.contains("content differs")), "{f:?}");
    assert!(f.iter().any(|s| s.contains("torn")), "{f:?}");
    // t published although it failed.
    let (p, t) = dst_of("published", &t_new, 101, &x_new, 201, true);
    let f = view(&t, &p);
    assert!(f.iter().any(|s| s.contains("was published")), "{f:?}");
    // t OLD bytes with NEW mtime (metadata half applied).
    let (p, t) = dst_of("halfmeta", &t_old, 101, &x_new, 201, true);
    let f = view(&t, &p);
    assert!(f.iter().any(|s| s.contains("mtime differs")), "{f:?}");
    // Another entry left OLD, a new one missing.
    let (p, t) = dst_of("other-old", &t_old, 100, &x_old, 200, false);
    let f = view(&t, &p);
    assert!(
        f.iter().any(|s| s.contains("another entry is not NEW: x:")),
        "{f:?}"
    );
    assert!(f.iter().any(|s| s.contains("d/fresh: missing")), "{f:?}");
    // A temporary left.
    let (p, _) = dst_of("temp", &t_old, 100, &x_new, 201, true);
    w(&p, "d/.ringsync.12.3.tmp", &t_new[..10], 5);
    let t = scan(&p, "temp");
    let f = view(&t, &p);
    assert!(
        f.iter()
            .any(|s| s.contains("1 temporaries left in DST: d/.ringsync.12.3.tmp")),
        "{f:?}"
    );

    // stderr: twice, never, without the operation, an unexpected line; a retried op reported.
    assert!(!report_lines("copy", &format!("{line}{line}"), "d/t", WRITE, true).is_empty());
    assert!(!report_lines("copy", "", "d/t", WRITE, true).is_empty());
    assert!(!report_lines("copy", &line, "d/t", FSYNC, true).is_empty());
    let extra = format!("{line}ringsync: something else went wrong\n");
    assert!(!report_lines("copy", &extra, "d/t", WRITE, true).is_empty());
    assert!(!report_lines("copy", &line, "d/t", WRITE, false).is_empty());
    let summary = format!("{line}ringsync: receive: 1 entries could not be applied, 0 were not sent; x\n");
    assert!(report_lines("receive", &summary, "d/t", WRITE, true).is_empty());

    // A fault somewhere: x left OLD but not named; t named but NEW; nothing failed at all.
    let (p, t) = dst_of("unnamed", &t_old, 100, &x_old, 200, true);
    let v = View {
        old: &to,
        new: &tn,
        dst: &t,
        copy: false,
        kept: false,
        src_root: &n,
        dst_root: &p,
    };
    let l = format!("ringsync: write {}/d/t: Input/output error\n", p.display());
    let f = v.old_or_new_as_reported(&l);
    assert!(
        f.iter()
            .any(|s| s.contains("x: not NEW, and stderr does not name it")),
        "{f:?}"
    );
    // Named through its directory: covered.
    let ld = format!(
        "ringsync: open {}/d: Input/output error\nringsync: read {}/x: EIO\n",
        n.display(),
        n.display()
    );
    assert!(
        v.old_or_new_as_reported(&ld).is_empty(),
        "{:?}",
        v.old_or_new_as_reported(&ld)
    );
    let (p, t) = dst_of("named-new", &t_new, 101, &x_new, 201, true);
    let v = View {
        old: &to,
        new: &tn,
        dst: &t,
        copy: false,
        kept: false,
        src_root: &n,
        dst_root: &p,
    };
    let l = format!("ringsync: write {}/d/t: Input/output error\n", p.display());
    let f = v.old_or_new_as_reported(&l);
    assert!(f.iter().any(|s| s.contains("published anyway")), "{f:?}");
    let f = v.old_or_new_as_reported("");
    assert!(f.iter().any(|s| s.contains("did not take effect")), "{f:?}");
    // A prefix of a name is not the name: "d/t" does not name "d/tt".
    assert!(!v.named(b"d/t", &format!("ringsync: x {}/d/tt: e", p.display())));
    // Torn entries are neither OLD nor NEW.
    let (p, t) = dst_of("torn", &mixed, 100, &x_new, 201, true);
    let v = View {
        old: &to,
        new: &tn,
        dst: &t,
        copy: false,
        kept: false,
        src_root: &n,
        dst_root: &p,
    };
    let l = format!("ringsync: write {}/d/t: Input/output error\n", p.display());
    let f = v.old_or_new_as_reported(&l);
    assert!(
        f.iter()
            .any(|s| s.contains("neither exactly OLD nor exactly NEW")),
        "{f:?}"
    );

    // After a failed syncfs: a changed file published, a new file published (copy too).
    let (p, t) = dst_of("synced", &t_old, 100, &x_new, 201, true);
    let v = View {
        old: &to,
        new: &tn,
        dst: &t,
        copy: false,
        kept: false,
        src_root: &n,
        dst_root: &p,
    };
    let f = v.unpublished();
    assert!(f.iter().any(|s| s.contains("x:")), "{f:?}");
    assert!(f.iter().any(|s| s.contains("d/fresh")), "{f:?}");
    let v = View { copy: true, ..v };
    let f = v.unpublished();
    assert!(
        f.iter().any(|s| s.contains("x:")) && f.iter().any(|s| s.contains("fresh")),
        "{f:?}"
    );
    let (p, t) = dst_of("unsynced", &t_old, 100, &x_old, 200, false);
    let v = View {
        old: &to,
        new: &tn,
        dst: &t,
        copy: false,
        kept: false,
        src_root: &n,
        dst_root: &p,
    };
    assert!(v.unpublished().is_empty(), "{:?}", v.unpublished());

    assert!(exit_codes(&[Some(3)], &[3], &["copy"]).is_empty());
    assert!(!exit_codes(&[Some(0)], &[3], &["copy"]).is_empty());
    assert!(!exit_codes(&[Some(0), Some(1)], &[0, 3], &["send", "receive"]).is_empty());
    assert!(is_temp(b"a/.ringsync-rcv.ab.1") && is_temp(b".ringsync.1.2.tmp") && !is_temp(b"ringsync.x"));
}
