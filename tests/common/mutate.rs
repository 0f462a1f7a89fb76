//! Seeded random mutations of a tree (for mirror/diff tests).
//!
//! Everything works relative to directory file descriptors, so trees from
//! [`gen_tree`](super::gen_tree) with a relative path longer than `PATH_MAX`
//! can be mutated. As root, read-only (0555/0000) directories and files are
//! written to anyway.
//!
//! After the mutations, every entry whose atime is not safely in the future
//! gets a future atime (mtime kept): with `relatime`, reading an entry whose
//! atime is not newer than its mtime/ctime bumps the atime, and a mirror
//! reading the source must not change it under the oracle's feet.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use rustix::fs::{
    AtFlags, FallocateFlags, FileType, Gid, Mode, OFlags, StatxFlags, Timespec, Timestamps, Uid, XattrFlags,
    CWD,
};
use rustix::io::Errno;

use super::oracle::{scan_tree, show, Kind, Tree};

/// One kind of mutation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mut {
    /// Overwrite a random region with different bytes; size kept, mtime changes.
    Rewrite,
    /// Like `Rewrite` but the old atime and mtime are restored afterwards:
    /// invisible to size+mtime trust (only for `--checksum` tests).
    RewriteKeepMtime,
    Append,
    Truncate,
    DeleteFile,
    DeleteTree,
    AddFile,
    AddDir,
    RenameFile,
    RenameDir,
    FileToDir,
    DirToFile,
    FileToSymlink,
    SymlinkToFile,
    Chmod,
    Chown,
    /// mtime and/or atime change only.
    Touch,
    RepointSymlink,
    AddHardlink,
    RemoveHardlinkPath,
    SetXattr,
    RemoveXattr,
    MakeSparse,
    PunchHole,
    NonUtf8Name,
}

/// Every kind used by default (all but [`Mut::RewriteKeepMtime`]).
pub const DEFAULT_KINDS: &[Mut] = &[
    Mut::Rewrite,
    Mut::Append,
    Mut::Truncate,
    Mut::DeleteFile,
    Mut::DeleteTree,
    Mut::AddFile,
    Mut::AddDir,
    Mut::RenameFile,
    Mut::RenameDir,
    Mut::FileToDir,
    Mut::DirToFile,
    Mut::FileToSymlink,
    Mut::SymlinkToFile,
    Mut::Chmod,
    Mut::Chown,
    Mut::Touch,
    Mut::RepointSymlink,
    Mut::AddHardlink,
    Mut::RemoveHardlinkPath,
    Mut::SetXattr,
    Mut::RemoveXattr,
    Mut::MakeSparse,
    Mut::PunchHole,
    Mut::NonUtf8Name,
];

#[derive(Clone, Debug)]
pub struct MutOpts {
    /// Kinds to draw from; each cycle of `kinds.len()` mutations uses every
    /// kind once, in a random order.
    pub kinds: Vec<Mut>,
    /// Largest new regular file (bytes) for AddFile & co.
    pub max_new_file: usize,
    /// Never delete, rename or replace more than this many entries at once
    /// (subtree size) -- keeps trees from being wiped out by a few mutations.
    pub max_subtree: usize,
}

impl Default for MutOpts {
    fn default() -> Self {
        MutOpts {
            kinds: DEFAULT_KINDS.to_vec(),
            max_new_file: 1 << 20,
            max_subtree: 60,
        }
    }
}

/// Apply `n` random mutations (default kinds) to the tree at `root`.
/// Returns a log, one line per mutation, starting with the kind's name.
pub fn mutate(root: &Path, seed: u64, n: usize) -> io::Result<Vec<String>> {
    mutate_with(root, seed, n, &MutOpts::default())
}

/// [`mutate`] with options.
pub fn mutate_with(root: &Path, seed: u64, n: usize, opts: &MutOpts) -> io::Result<Vec<String>> {
    let mut m = M::new(root, seed, opts.clone())?;
    let mut order: Vec<Mut> = Vec::new();
    for i in 0..n {
        if i % opts.kinds.len() == 0 {
            order = opts.kinds.clone();
            order.shuffle(&mut m.rng);
        }
        let want = order[i % opts.kinds.len()];
        let tree = scan_tree(root, false)?;
        // A kind without a candidate falls back to another kind.
        let mut done = m.apply(want, &tree)?;
        let mut tries = 0;
        while done.is_none() && tries < 20 {
            let k = *opts.kinds.choose(&mut m.rng).expect("no kinds");
            done = m.apply(k, &tree)?;
            tries += 1;
        }
        if done.is_none() {
            // Always possible.
            done = m.apply(Mut::AddFile, &tree)?;
        }
        m.log.push(done.expect("AddFile always applies"));
    }
    fix_atimes_rng(root, &mut m.rng)?;
    Ok(m.log)
}

/// Rename (move) up to `k` of the directories with the most entries below
/// them (the root excluded) to new names, some into other directories.
pub fn rename_big_dirs(root: &Path, seed: u64, k: usize) -> io::Result<Vec<String>> {
    let mut m = M::new(root, seed, MutOpts::default())?;
    for _ in 0..k {
        let tree = scan_tree(root, false)?;
        let mut dirs: Vec<(usize, Vec<u8>)> = tree
            .entries
            .iter()
            .filter(|(p, e)| e.kind == Kind::Dir && p.as_slice() != b".")
            .map(|(p, _)| (subtree_size(&tree, p), p.clone()))
            .collect();
        dirs.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        // One of the three biggest, so that repeated calls vary.
        let top = dirs.len().min(3);
        if top == 0 {
            break;
        }
        let (_, dir) = dirs[m.rng.gen_range(0..top)].clone();
        let targets: Vec<Vec<u8>> = dir_paths(&tree)
            .into_iter()
            .filter(|t| !is_within(t, &dir))
            .collect();
        let to_parent = if m.rng.gen_bool(0.5) {
            parent_of(&dir).0
        } else {
            targets
                .choose(&mut m.rng)
                .cloned()
                .unwrap_or_else(|| b".".to_vec())
        };
        let line = m.rename_to(&dir, &to_parent, "RenameBigDir")?;
        m.log.push(line);
    }
    fix_atimes_rng(root, &mut m.rng)?;
    Ok(m.log)
}

/// Give every entry whose atime is not at least 10 minutes in the future an
/// atime 1 h to 1 day in the future (mtime kept).
pub fn fix_atimes(root: &Path, seed: u64) -> io::Result<()> {
    fix_atimes_rng(root, &mut SmallRng::seed_from_u64(seed))
}

/// Metadata of one entry as seen by [`stat_tree`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub ino: u64,
    pub mode: u32,
    pub nlink: u32,
    pub size: u64,
    pub ctime: (i64, u32),
    pub mtime: (i64, u32),
    pub atime: (i64, u32),
}

/// `statx` of every entry (root is `.`), including ctime and inode number,
/// walking by descriptor (deep paths work).
pub fn stat_tree(root: &Path) -> io::Result<BTreeMap<Vec<u8>, Meta>> {
    let fd = open_dir_at(CWD, root.as_os_str().as_encoded_bytes())?;
    let mut out = BTreeMap::new();
    out.insert(b".".to_vec(), statx_meta(fd.as_fd(), b"", AtFlags::EMPTY_PATH)?);
    fn walk(fd: &OwnedFd, rel: &[u8], out: &mut BTreeMap<Vec<u8>, Meta>) -> io::Result<()> {
        for name in list_dir(fd)? {
            let p = join(rel, &name);
            let m = statx_meta(fd.as_fd(), &name, AtFlags::SYMLINK_NOFOLLOW)?;
            out.insert(p.clone(), m);
            if FileType::from_raw_mode(m.mode) == FileType::Directory {
                let sub = open_dir_at(fd.as_fd(), &name)?;
                walk(&sub, &p, out)?;
            }
        }
        Ok(())
    }
    walk(&fd, b".", &mut out)?;
    Ok(out)
}

/// Number of entries at or below `dir` in `tree`.
pub fn subtree_size(tree: &Tree, dir: &[u8]) -> usize {
    tree.entries.keys().filter(|p| is_within(p, dir)).count()
}

/// `p == dir` or `p` is below `dir` (`.` contains everything).
pub fn is_within(p: &[u8], dir: &[u8]) -> bool {
    dir == b"." || p == dir || (p.starts_with(dir) && p.get(dir.len()) == Some(&b'/'))
}

/// (parent, name) of a relative path; the parent of a top-level entry is `.`.
pub fn parent_of(rel: &[u8]) -> (Vec<u8>, Vec<u8>) {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => (rel[..i].to_vec(), rel[i + 1..].to_vec()),
        None => (b".".to_vec(), rel.to_vec()),
    }
}

pub fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent == b"." {
        name.to_vec()
    } else {
        let mut p = parent.to_vec();
        p.push(b'/');
        p.extend_from_slice(name);
        p
    }
}

/// Open directory `rel` (relative, `.` = root) below the directory `root`,
/// one component at a time.
pub fn open_rel_dir(root: BorrowedFd<'_>, rel: &[u8]) -> io::Result<OwnedFd> {
    let mut cur = open_dir_at(root, b".")?;
    if rel == b"." {
        return Ok(cur);
    }
    for comp in rel.split(|&b| b == b'/') {
        cur = open_dir_at(cur.as_fd(), comp)?;
    }
    Ok(cur)
}

/// Remove `name` in `parent`, recursively if it is a directory.
pub fn remove_tree_at(parent: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let st = rustix::fs::statx(parent, name, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::TYPE)?;
    if FileType::from_raw_mode(u32::from(st.stx_mode)) == FileType::Directory {
        let fd = open_dir_at(parent, name)?;
        for n in list_dir(&fd)? {
            remove_tree_at(fd.as_fd(), &n)?;
        }
        drop(fd);
        rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)?;
    } else {
        rustix::fs::unlinkat(parent, name, AtFlags::empty())?;
    }
    Ok(())
}

/// Write `data` as the whole content of the existing file `rel` (truncating);
/// mtime becomes "now". Call [`fix_atimes`] afterwards.
pub fn overwrite_file(root: &Path, rel: &[u8], data: &[u8]) -> io::Result<()> {
    let rootfd = open_dir_at(CWD, root.as_os_str().as_encoded_bytes())?;
    let (parent, name) = parent_of(rel);
    let dir = open_rel_dir(rootfd.as_fd(), &parent)?;
    let fd = rustix::fs::openat(
        dir.as_fd(),
        name.as_slice(),
        OFlags::WRONLY | OFlags::TRUNC | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )?;
    let mut f = std::fs::File::from(fd);
    f.write_all(data)?;
    Ok(())
}

// ---------------------------------------------------------------------------

fn open_dir_at(dirfd: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dirfd,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )?)
}

fn list_dir(fd: &OwnedFd) -> io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    let mut dir = rustix::fs::Dir::read_from(fd)?;
    while let Some(ent) = dir.read() {
        let ent = ent?;
        let n = ent.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    names.sort();
    Ok(names)
}

fn statx_meta(dirfd: BorrowedFd<'_>, name: &[u8], flags: AtFlags) -> io::Result<Meta> {
    let st = rustix::fs::statx(dirfd, name, flags, StatxFlags::BASIC_STATS)?;
    Ok(Meta {
        ino: st.stx_ino,
        mode: u32::from(st.stx_mode),
        nlink: st.stx_nlink,
        size: st.stx_size,
        ctime: (st.stx_ctime.tv_sec, st.stx_ctime.tv_nsec),
        mtime: (st.stx_mtime.tv_sec, st.stx_mtime.tv_nsec),
        atime: (st.stx_atime.tv_sec, st.stx_atime.tv_nsec),
    })
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(1_700_000_000)
}

fn future_atime(rng: &mut SmallRng) -> Timespec {
    Timespec {
        tv_sec: now_secs() + rng.gen_range(3600..86_400),
        tv_nsec: rng.gen_range(0..1_000_000_000),
    }
}

fn fix_atimes_rng(root: &Path, rng: &mut SmallRng) -> io::Result<()> {
    let limit = now_secs() + 600;
    let fd = open_dir_at(CWD, root.as_os_str().as_encoded_bytes())?;
    fn walk(fd: &OwnedFd, limit: i64, rng: &mut SmallRng) -> io::Result<()> {
        for name in list_dir(fd)? {
            let m = statx_meta(fd.as_fd(), &name, AtFlags::SYMLINK_NOFOLLOW)?;
            if FileType::from_raw_mode(m.mode) == FileType::Directory {
                let sub = open_dir_at(fd.as_fd(), &name)?;
                walk(&sub, limit, rng)?;
            }
            // Re-stat: fixing children does not change a directory's times,
            // but keep this independent of that.
            let m = statx_meta(fd.as_fd(), &name, AtFlags::SYMLINK_NOFOLLOW)?;
            if m.atime.0 < limit {
                let t = Timestamps {
                    last_access: future_atime(rng),
                    last_modification: Timespec {
                        tv_sec: m.mtime.0,
                        tv_nsec: m.mtime.1.into(),
                    },
                };
                rustix::fs::utimensat(fd.as_fd(), name.as_slice(), &t, AtFlags::SYMLINK_NOFOLLOW)?;
            }
        }
        Ok(())
    }
    walk(&fd, limit, rng)?;
    let m = statx_meta(fd.as_fd(), b"", AtFlags::EMPTY_PATH)?;
    if m.atime.0 < limit {
        let t = Timestamps {
            last_access: future_atime(rng),
            last_modification: Timespec {
                tv_sec: m.mtime.0,
                tv_nsec: m.mtime.1.into(),
            },
        };
        rustix::fs::futimens(&fd, &t)?;
    }
    Ok(())
}

fn dir_paths(tree: &Tree) -> Vec<Vec<u8>> {
    tree.entries
        .iter()
        .filter(|(_, e)| e.kind == Kind::Dir)
        .map(|(p, _)| p.clone())
        .collect()
}

const FILE_MODES: &[u32] = &[
    0o644, 0o600, 0o755, 0o4755, 0o2755, 0o1644, 0o000, 0o400, 0o444, 0o640, 0o777, 0o111, 0o7777,
];
const DIR_MODES: &[u32] = &[0o755, 0o700, 0o750, 0o1777, 0o2755, 0o775, 0o711, 0o555, 0o000];
const IDS: &[u32] = &[0, 1, 2, 1000, 1001, 4242, 65534];

struct M {
    rootfd: OwnedFd,
    rng: SmallRng,
    seed: u64,
    opts: MutOpts,
    counter: u32,
    log: Vec<String>,
    root_user: bool,
}

impl M {
    fn new(root: &Path, seed: u64, opts: MutOpts) -> io::Result<M> {
        Ok(M {
            rootfd: open_dir_at(CWD, root.as_os_str().as_encoded_bytes())?,
            rng: SmallRng::seed_from_u64(seed ^ 0x6d75_7461_7465),
            seed,
            opts,
            counter: 0,
            log: Vec::new(),
            root_user: rustix::process::geteuid().is_root(),
        })
    }

    fn dir(&self, rel: &[u8]) -> io::Result<OwnedFd> {
        open_rel_dir(self.rootfd.as_fd(), rel)
    }

    /// A fresh name (unique in `dirfd`), sometimes with nasty bytes.
    fn fresh_name(&mut self, dirfd: BorrowedFd<'_>, nasty: bool) -> Vec<u8> {
        loop {
            self.counter += 1;
            let id = format!("m{:x}-{}", self.seed & 0xffff_ffff, self.counter);
            let pick = if nasty {
                self.rng.gen_range(0..4)
            } else {
                self.rng.gen_range(0..14)
            };
            let name: Vec<u8> = match pick {
                0 => {
                    let mut v = id.into_bytes();
                    v.extend_from_slice(&[0xff, 0x80, b'q', 0xc3]);
                    v
                }
                1 => {
                    let mut v = vec![0xfe, b'\n'];
                    v.extend_from_slice(id.as_bytes());
                    v.extend_from_slice(b"\ttab\\back\r");
                    v
                }
                2 => {
                    let mut v = format!("\u{fc}-{id}-").into_bytes();
                    v.push(0xe6); // truncated UTF-8 sequence
                    v
                }
                3 => format!("new\nline {id}").into_bytes(),
                4 => format!("-{id}").into_bytes(),
                5 => {
                    let mut v = id.into_bytes();
                    v.resize(200, b'n');
                    v
                }
                6 => format!(" {id} sp").into_bytes(),
                7 => format!("\u{65e5}\u{672c}-{id}").into_bytes(),
                _ => id.into_bytes(),
            };
            if rustix::fs::statx(
                dirfd,
                name.as_slice(),
                AtFlags::SYMLINK_NOFOLLOW,
                StatxFlags::TYPE,
            )
            .is_err()
            {
                return name;
            }
        }
    }

    fn random_bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        if self.rng.gen_range(0..8) == 0 {
            for (i, b) in v.iter_mut().enumerate() {
                *b = (i % 253) as u8;
            }
        } else {
            self.rng.fill_bytes(&mut v);
        }
        v
    }

    fn new_size(&mut self) -> usize {
        let max = self.opts.max_new_file.max(4096);
        match self.rng.gen_range(0..10) {
            0 => 0,
            1..=4 => self.rng.gen_range(1..=4096),
            5..=7 => self.rng.gen_range(4097..=max.min(200_000)),
            _ => self.rng.gen_range(1..=max),
        }
    }

    /// A random mtime; the rng draws do not depend on the clock (so a seed
    /// gives the same mutations at any time).
    fn mtime(&mut self) -> Timespec {
        let now = now_secs();
        let sec = match self.rng.gen_range(0..6) {
            0 => -self.rng.gen_range(1..100_000_000i64),
            1 => now - 1,
            _ => now - 86_400 - self.rng.gen_range(0..1_000_000_000i64),
        };
        Timespec {
            tv_sec: sec,
            tv_nsec: self.rng.gen_range(0..1_000_000_000),
        }
    }

    fn owner(&mut self) -> Option<(u32, u32)> {
        if !self.root_user {
            return None;
        }
        Some((
            *IDS.choose(&mut self.rng).unwrap(),
            *IDS.choose(&mut self.rng).unwrap(),
        ))
    }

    /// Create a regular file with random content and metadata.
    fn create_file(&mut self, dirfd: BorrowedFd<'_>, name: &[u8], data: &[u8]) -> io::Result<()> {
        let fd = rustix::fs::openat(
            dirfd,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        let mut f = std::fs::File::from(fd);
        f.write_all(data)?;
        if self.rng.gen_bool(0.25) {
            let n = self.rng.gen_range(0..300);
            let v = self.random_bytes(n);
            rustix::fs::fsetxattr(&f, "user.new", &v, XattrFlags::empty())?;
        }
        if let Some((u, g)) = self.owner() {
            rustix::fs::fchown(&f, Some(Uid::from_raw(u)), Some(Gid::from_raw(g)))?;
        }
        let mode = *FILE_MODES.choose(&mut self.rng).unwrap();
        rustix::fs::fchmod(&f, Mode::from_raw_mode(mode))?;
        if self.rng.gen_bool(0.5) {
            let t = Timestamps {
                last_access: future_atime(&mut self.rng),
                last_modification: self.mtime(),
            };
            rustix::fs::futimens(&f, &t)?;
        }
        Ok(())
    }

    fn create_sparse(&mut self, dirfd: BorrowedFd<'_>, name: &[u8]) -> io::Result<u64> {
        let fd = rustix::fs::openat(
            dirfd,
            name,
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )?;
        let size: u64 = self.rng.gen_range((2u64 << 20)..(6 << 20));
        rustix::fs::ftruncate(&fd, size)?;
        for _ in 0..self.rng.gen_range(0..3) {
            let len = self.rng.gen_range(1..50_000usize);
            let off = self.rng.gen_range(0..size - len as u64);
            let mut data = self.random_bytes(len);
            data.iter_mut().filter(|b| **b == 0).for_each(|b| *b = 0x5a);
            rustix::io::pwrite(&fd, &data, off)?;
        }
        // Last byte is data sometimes (hole not at the end).
        if self.rng.gen_bool(0.3) {
            rustix::io::pwrite(&fd, b"E", size - 1)?;
        }
        Ok(size)
    }

    fn symlink_target(&mut self) -> Vec<u8> {
        match self.rng.gen_range(0..7) {
            0 => b"../".to_vec(),
            1 => b"/nonexistent/target".to_vec(),
            2 => {
                let mut v = b"weird\ttarget".to_vec();
                v.extend_from_slice(&[0xff, b'\n']);
                v
            }
            3 => b"x/".repeat(self.rng.gen_range(1..400)),
            4 => b".".to_vec(),
            _ => format!("target-{}-{}", self.seed, self.rng.gen::<u32>()).into_bytes(),
        }
    }

    /// Pick a random entry matching `f` (never the root unless `root_ok`).
    fn pick(&mut self, tree: &Tree, root_ok: bool, f: impl Fn(&[u8], Kind) -> bool) -> Option<Vec<u8>> {
        let c: Vec<&Vec<u8>> = tree
            .entries
            .iter()
            .filter(|(p, e)| (root_ok || p.as_slice() != b".") && f(p, e.kind))
            .map(|(p, _)| p)
            .collect();
        c.choose(&mut self.rng).map(|p| (*p).clone())
    }

    fn pick_dir(&mut self, tree: &Tree) -> Vec<u8> {
        self.pick(tree, true, |_, k| k == Kind::Dir)
            .expect("root is a dir")
    }

    fn open_file(&self, rel: &[u8], flags: OFlags) -> io::Result<OwnedFd> {
        let (parent, name) = parent_of(rel);
        let d = self.dir(&parent)?;
        Ok(rustix::fs::openat(
            d.as_fd(),
            name.as_slice(),
            flags | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )?)
    }

    /// Rename `from` into the directory `to_parent` under a fresh name.
    fn rename_to(&mut self, from: &[u8], to_parent: &[u8], what: &str) -> io::Result<String> {
        let (fp, fname) = parent_of(from);
        let fd = self.dir(&fp)?;
        let td = self.dir(to_parent)?;
        let nasty = self.rng.gen_bool(0.2);
        let newname = self.fresh_name(td.as_fd(), nasty);
        rustix::fs::renameat(fd.as_fd(), fname.as_slice(), td.as_fd(), newname.as_slice())?;
        Ok(format!(
            "{what} {} -> {}",
            show(from),
            show(&join(to_parent, &newname))
        ))
    }

    fn apply(&mut self, kind: Mut, tree: &Tree) -> io::Result<Option<String>> {
        let max_sub = self.opts.max_subtree;
        let small_dir = |t: &Tree, p: &[u8]| subtree_size(t, p) <= max_sub;
        let r = match kind {
            Mut::Rewrite | Mut::RewriteKeepMtime => {
                let Some(p) = self.pick(tree, false, |_, k| k == Kind::File) else {
                    return Ok(None);
                };
                let e = &tree.entries[&p];
                if e.size == 0 {
                    return Ok(None);
                }
                let (old_m, old_a) = (e.mtime, e.atime);
                let fd = self.open_file(&p, OFlags::RDWR)?;
                let len = self.rng.gen_range(1..=e.size.min(300_000));
                let off = self.rng.gen_range(0..=e.size - len);
                let mut buf = vec![0u8; len as usize];
                let mut f = std::fs::File::from(fd);
                std::io::Seek::seek(&mut f, io::SeekFrom::Start(off))?;
                f.read_exact(&mut buf)?;
                for b in buf.iter_mut() {
                    *b ^= self.rng.gen_range(1..=255u8);
                }
                rustix::io::pwrite(&f, &buf, off)?;
                if kind == Mut::RewriteKeepMtime {
                    let ts = |t: (i64, u32)| Timespec {
                        tv_sec: t.0,
                        tv_nsec: t.1.into(),
                    };
                    rustix::fs::futimens(
                        &f,
                        &Timestamps {
                            last_access: ts(old_a),
                            last_modification: ts(old_m),
                        },
                    )?;
                }
                format!("{kind:?} {} bytes {off}..{}", show(&p), off + len)
            }
            Mut::Append => {
                let Some(p) = self.pick(tree, false, |_, k| k == Kind::File) else {
                    return Ok(None);
                };
                let fd = self.open_file(&p, OFlags::WRONLY | OFlags::APPEND)?;
                let n = self.rng.gen_range(1..70_000);
                let data = self.random_bytes(n);
                std::fs::File::from(fd).write_all(&data)?;
                format!("Append {} +{n}", show(&p))
            }
            Mut::Truncate => {
                let Some(p) = self.pick(tree, false, |_, k| k == Kind::File) else {
                    return Ok(None);
                };
                let size = tree.entries[&p].size;
                let new = match self.rng.gen_range(0..4) {
                    0 => 0,
                    1 => size + self.rng.gen_range(1..3_000_000), // extends with a hole
                    _ if size > 1 => self.rng.gen_range(1..size),
                    _ => size + 10,
                };
                let fd = self.open_file(&p, OFlags::WRONLY)?;
                rustix::fs::ftruncate(&fd, new)?;
                format!("Truncate {} {size} -> {new}", show(&p))
            }
            Mut::DeleteFile => {
                let Some(p) = self.pick(tree, false, |_, k| k != Kind::Dir) else {
                    return Ok(None);
                };
                let (parent, name) = parent_of(&p);
                rustix::fs::unlinkat(self.dir(&parent)?.as_fd(), name.as_slice(), AtFlags::empty())?;
                format!("DeleteFile {}", show(&p))
            }
            Mut::DeleteTree | Mut::DirToFile => {
                let Some(p) = self.pick(tree, false, |p, k| k == Kind::Dir && small_dir(tree, p)) else {
                    return Ok(None);
                };
                let n = subtree_size(tree, &p);
                let (parent, name) = parent_of(&p);
                let pd = self.dir(&parent)?;
                remove_tree_at(pd.as_fd(), &name)?;
                if kind == Mut::DirToFile {
                    let size = self.new_size();
                    let data = self.random_bytes(size);
                    self.create_file(pd.as_fd(), &name, &data)?;
                    format!("DirToFile {} ({n} entries) -> file of {size} bytes", show(&p))
                } else {
                    format!("DeleteTree {} ({n} entries)", show(&p))
                }
            }
            Mut::AddFile | Mut::NonUtf8Name => {
                let d = self.pick_dir(tree);
                let dfd = self.dir(&d)?;
                let name = self.fresh_name(dfd.as_fd(), kind == Mut::NonUtf8Name);
                if kind == Mut::NonUtf8Name && self.rng.gen_bool(0.3) {
                    rustix::fs::mkdirat(dfd.as_fd(), name.as_slice(), Mode::from_raw_mode(0o755))?;
                    let sub = open_dir_at(dfd.as_fd(), &name)?;
                    let inner = self.fresh_name(sub.as_fd(), true);
                    self.create_file(sub.as_fd(), &inner, b"inside a non-UTF-8 dir\n")?;
                    format!("NonUtf8Name dir {}", show(&join(&d, &name)))
                } else {
                    let size = self.new_size();
                    let data = self.random_bytes(size);
                    self.create_file(dfd.as_fd(), &name, &data)?;
                    format!("{kind:?} {} ({size} bytes)", show(&join(&d, &name)))
                }
            }
            Mut::AddDir => {
                let d = self.pick_dir(tree);
                let dfd = self.dir(&d)?;
                let name = self.fresh_name(dfd.as_fd(), false);
                rustix::fs::mkdirat(dfd.as_fd(), name.as_slice(), Mode::from_raw_mode(0o700))?;
                let sub = open_dir_at(dfd.as_fd(), &name)?;
                let nfiles = self.rng.gen_range(0..5);
                for _ in 0..nfiles {
                    let n = self.fresh_name(sub.as_fd(), false);
                    let size = self.new_size().min(100_000);
                    let data = self.random_bytes(size);
                    self.create_file(sub.as_fd(), &n, &data)?;
                }
                if self.rng.gen_bool(0.5) {
                    let n = self.fresh_name(sub.as_fd(), false);
                    let t = self.symlink_target();
                    rustix::fs::symlinkat(t.as_slice(), sub.as_fd(), n.as_slice())?;
                }
                if self.rng.gen_bool(0.3) {
                    let n = self.fresh_name(sub.as_fd(), false);
                    rustix::fs::mknodat(
                        sub.as_fd(),
                        n.as_slice(),
                        FileType::Fifo,
                        Mode::from_raw_mode(0o640),
                        0,
                    )?;
                }
                if self.rng.gen_bool(0.5) {
                    let n = self.fresh_name(sub.as_fd(), false);
                    rustix::fs::mkdirat(sub.as_fd(), n.as_slice(), Mode::from_raw_mode(0o755))?;
                    let inner = open_dir_at(sub.as_fd(), &n)?;
                    self.create_file(inner.as_fd(), b"leaf", b"leaf\n")?;
                }
                if let Some((u, g)) = self.owner() {
                    rustix::fs::fchown(&sub, Some(Uid::from_raw(u)), Some(Gid::from_raw(g)))?;
                }
                let mode = *DIR_MODES.choose(&mut self.rng).unwrap();
                rustix::fs::fchmod(&sub, Mode::from_raw_mode(mode))?;
                let t = Timestamps {
                    last_access: future_atime(&mut self.rng),
                    last_modification: self.mtime(),
                };
                rustix::fs::futimens(&sub, &t)?;
                format!(
                    "AddDir {} ({nfiles} files, mode {mode:o})",
                    show(&join(&d, &name))
                )
            }
            Mut::RenameFile => {
                let Some(p) = self.pick(tree, false, |_, k| k != Kind::Dir) else {
                    return Ok(None);
                };
                // Sometimes onto an existing non-directory (replacing it).
                if self.rng.gen_bool(0.25) {
                    if let Some(q) = self.pick(tree, false, |q, k| k != Kind::Dir && q != p.as_slice()) {
                        let (fp, fname) = parent_of(&p);
                        let (tp, tname) = parent_of(&q);
                        rustix::fs::renameat(
                            self.dir(&fp)?.as_fd(),
                            fname.as_slice(),
                            self.dir(&tp)?.as_fd(),
                            tname.as_slice(),
                        )?;
                        return Ok(Some(format!("RenameFile {} over {}", show(&p), show(&q))));
                    }
                }
                let to = if self.rng.gen_bool(0.5) {
                    parent_of(&p).0
                } else {
                    self.pick_dir(tree)
                };
                self.rename_to(&p, &to, "RenameFile")?
            }
            Mut::RenameDir => {
                let Some(p) = self.pick(tree, false, |_, k| k == Kind::Dir) else {
                    return Ok(None);
                };
                let to = if self.rng.gen_bool(0.4) {
                    parent_of(&p).0
                } else {
                    let Some(t) = self.pick(tree, true, |t, k| k == Kind::Dir && !is_within(t, &p)) else {
                        return Ok(None);
                    };
                    t
                };
                self.rename_to(&p, &to, "RenameDir")?
            }
            Mut::FileToDir => {
                let Some(p) = self.pick(tree, false, |_, k| k != Kind::Dir) else {
                    return Ok(None);
                };
                let (parent, name) = parent_of(&p);
                let pd = self.dir(&parent)?;
                rustix::fs::unlinkat(pd.as_fd(), name.as_slice(), AtFlags::empty())?;
                rustix::fs::mkdirat(pd.as_fd(), name.as_slice(), Mode::from_raw_mode(0o755))?;
                let sub = open_dir_at(pd.as_fd(), &name)?;
                let size = self.new_size().min(50_000);
                let data = self.random_bytes(size);
                self.create_file(sub.as_fd(), b"was-a-file", &data)?;
                format!("FileToDir {} ({:?} -> dir)", show(&p), tree.entries[&p].kind)
            }
            Mut::FileToSymlink => {
                let Some(p) = self.pick(tree, false, |_, k| k == Kind::File) else {
                    return Ok(None);
                };
                let (parent, name) = parent_of(&p);
                let pd = self.dir(&parent)?;
                rustix::fs::unlinkat(pd.as_fd(), name.as_slice(), AtFlags::empty())?;
                let t = self.symlink_target();
                rustix::fs::symlinkat(t.as_slice(), pd.as_fd(), name.as_slice())?;
                format!("FileToSymlink {} -> {}", show(&p), show(&t))
            }
            Mut::SymlinkToFile => {
                let Some(p) = self.pick(tree, false, |_, k| k == Kind::Symlink) else {
                    return Ok(None);
                };
                let (parent, name) = parent_of(&p);
                let pd = self.dir(&parent)?;
                rustix::fs::unlinkat(pd.as_fd(), name.as_slice(), AtFlags::empty())?;
                let size = self.new_size();
                let data = self.random_bytes(size);
                self.create_file(pd.as_fd(), &name, &data)?;
                format!("SymlinkToFile {} ({size} bytes)", show(&p))
            }
            Mut::RepointSymlink => {
                let Some(p) = self.pick(tree, false, |_, k| k == Kind::Symlink) else {
                    return Ok(None);
                };
                let (parent, name) = parent_of(&p);
                let pd = self.dir(&parent)?;
                let tmp = self.fresh_name(pd.as_fd(), false);
                let t = self.symlink_target();
                rustix::fs::symlinkat(t.as_slice(), pd.as_fd(), tmp.as_slice())?;
                rustix::fs::renameat(pd.as_fd(), tmp.as_slice(), pd.as_fd(), name.as_slice())?;
                format!("RepointSymlink {} -> {}", show(&p), show(&t))
            }
            Mut::Chmod => {
                let Some(p) = self.pick(tree, true, |_, k| k != Kind::Symlink) else {
                    return Ok(None);
                };
                let e = &tree.entries[&p];
                let list = if e.kind == Kind::Dir {
                    DIR_MODES
                } else {
                    FILE_MODES
                };
                let mut mode = *list.choose(&mut self.rng).unwrap();
                if mode == e.perm {
                    mode ^= 0o010;
                }
                let (parent, name) = parent_of(&p);
                if p == b"." {
                    rustix::fs::fchmod(&self.rootfd, Mode::from_raw_mode(mode))?;
                } else {
                    rustix::fs::chmodat(
                        self.dir(&parent)?.as_fd(),
                        name.as_slice(),
                        Mode::from_raw_mode(mode),
                        AtFlags::empty(),
                    )?;
                }
                format!("Chmod {} {:o} -> {mode:o}", show(&p), e.perm)
            }
            Mut::Chown => {
                let Some((u, g)) = self.owner() else {
                    return Ok(None);
                };
                let Some(p) = self.pick(tree, true, |_, _| true) else {
                    return Ok(None);
                };
                let e = &tree.entries[&p];
                let (u, g) = if (u, g) == (e.uid, e.gid) {
                    (u ^ 1, g)
                } else {
                    (u, g)
                };
                if p == b"." {
                    rustix::fs::fchown(&self.rootfd, Some(Uid::from_raw(u)), Some(Gid::from_raw(g)))?;
                } else {
                    let (parent, name) = parent_of(&p);
                    rustix::fs::chownat(
                        self.dir(&parent)?.as_fd(),
                        name.as_slice(),
                        Some(Uid::from_raw(u)),
                        Some(Gid::from_raw(g)),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )?;
                }
                format!("Chown {} {}:{} -> {u}:{g}", show(&p), e.uid, e.gid)
            }
            Mut::Touch => {
                let Some(p) = self.pick(tree, true, |_, _| true) else {
                    return Ok(None);
                };
                let e = &tree.entries[&p];
                let variant = self.rng.gen_range(0..3);
                let keep_m = Timespec {
                    tv_sec: e.mtime.0,
                    tv_nsec: e.mtime.1.into(),
                };
                let t = Timestamps {
                    last_access: future_atime(&mut self.rng),
                    last_modification: if variant == 0 { keep_m } else { self.mtime() },
                };
                if p == b"." {
                    rustix::fs::futimens(&self.rootfd, &t)?;
                } else {
                    let (parent, name) = parent_of(&p);
                    rustix::fs::utimensat(
                        self.dir(&parent)?.as_fd(),
                        name.as_slice(),
                        &t,
                        AtFlags::SYMLINK_NOFOLLOW,
                    )?;
                }
                let what = if variant == 0 { "atime only" } else { "mtime+atime" };
                format!("Touch {} ({what})", show(&p))
            }
            Mut::AddHardlink => {
                let Some(p) = self.pick(tree, false, |_, k| k == Kind::File || k == Kind::Symlink) else {
                    return Ok(None);
                };
                let to = if self.rng.gen_bool(0.4) {
                    parent_of(&p).0
                } else {
                    self.pick_dir(tree)
                };
                let (fp, fname) = parent_of(&p);
                let td = self.dir(&to)?;
                let newname = self.fresh_name(td.as_fd(), false);
                rustix::fs::linkat(
                    self.dir(&fp)?.as_fd(),
                    fname.as_slice(),
                    td.as_fd(),
                    newname.as_slice(),
                    AtFlags::empty(),
                )?;
                format!("AddHardlink {} -> {}", show(&join(&to, &newname)), show(&p))
            }
            Mut::RemoveHardlinkPath => {
                // Sorted by path: hardlink_groups() is ordered by inode number.
                let mut groups = tree.hardlink_groups();
                groups.iter_mut().for_each(|g| g.sort());
                groups.sort();
                let Some(g) = groups.choose(&mut self.rng) else {
                    return Ok(None);
                };
                let p = g.choose(&mut self.rng).unwrap().clone();
                let (parent, name) = parent_of(&p);
                rustix::fs::unlinkat(self.dir(&parent)?.as_fd(), name.as_slice(), AtFlags::empty())?;
                format!("RemoveHardlinkPath {} (group of {})", show(&p), g.len())
            }
            Mut::SetXattr | Mut::RemoveXattr => {
                let user = |x: &BTreeMap<Vec<u8>, Vec<u8>>| -> BTreeSet<Vec<u8>> {
                    x.keys().filter(|k| k.starts_with(b"user.")).cloned().collect()
                };
                let remove = kind == Mut::RemoveXattr;
                let Some(p) = self.pick(tree, true, |p, k| {
                    (k == Kind::File || k == Kind::Dir)
                        && (!remove || !user(&tree.entries[p].xattrs).is_empty())
                }) else {
                    return Ok(None);
                };
                let e = &tree.entries[&p];
                let flags = if e.kind == Kind::Dir {
                    OFlags::RDONLY | OFlags::DIRECTORY
                } else {
                    OFlags::RDONLY
                };
                let fd = if p == b"." {
                    open_dir_at(self.rootfd.as_fd(), b".")?
                } else {
                    self.open_file(&p, flags)?
                };
                let existing: Vec<Vec<u8>> = user(&e.xattrs).into_iter().collect();
                if remove {
                    let name = existing.choose(&mut self.rng).unwrap().clone();
                    rustix::fs::fremovexattr(&fd, name.as_slice())?;
                    format!("RemoveXattr {} {}", show(&p), show(&name))
                } else {
                    let name: Vec<u8> = match self.rng.gen_range(0..3) {
                        0 if !existing.is_empty() => existing.choose(&mut self.rng).unwrap().clone(),
                        1 => {
                            let mut v = b"user.mut\xff".to_vec();
                            v.extend_from_slice(self.counter.to_string().as_bytes());
                            self.counter += 1;
                            v
                        }
                        _ => {
                            self.counter += 1;
                            format!("user.mut{}", self.counter).into_bytes()
                        }
                    };
                    let n = self.rng.gen_range(0..1500);
                    let value = self.random_bytes(n);
                    match rustix::fs::fsetxattr(&fd, name.as_slice(), &value, XattrFlags::empty()) {
                        Ok(()) => {}
                        // Out of xattr space on this inode: skip.
                        Err(Errno::NOSPC) | Err(Errno::TOOBIG) => return Ok(None),
                        Err(e) => return Err(e.into()),
                    }
                    format!("SetXattr {} {} ({n} bytes)", show(&p), show(&name))
                }
            }
            Mut::MakeSparse => {
                let d = self.pick_dir(tree);
                let dfd = self.dir(&d)?;
                let name = self.fresh_name(dfd.as_fd(), false);
                let size = self.create_sparse(dfd.as_fd(), &name)?;
                format!("MakeSparse {} ({size} bytes)", show(&join(&d, &name)))
            }
            Mut::PunchHole => {
                let Some(p) = self.pick(tree, false, |p, k| {
                    k == Kind::File && tree.entries[p].size >= 16 << 10
                }) else {
                    return Ok(None);
                };
                let size = tree.entries[&p].size;
                let (off, len) = if size >= 5 << 19 {
                    let len = self.rng.gen_range(1u64..=2) << 20;
                    let off = self.rng.gen_range(0..=(size - len) / 4096) * 4096;
                    (off, len)
                } else {
                    let blocks = size / 4096;
                    let off = self.rng.gen_range(0..blocks) * 4096;
                    (off, 4096 * self.rng.gen_range(1..=(blocks - off / 4096)))
                };
                let fd = self.open_file(&p, OFlags::WRONLY)?;
                rustix::fs::fallocate(
                    &fd,
                    FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                    off,
                    len,
                )?;
                format!("PunchHole {} {off}+{len} of {size}", show(&p))
            }
        };
        Ok(Some(r))
    }
}
