//! Seeded generator of nasty file trees.
//!
//! Everything is created relative to directory file descriptors so that the
//! deep chain (relative path > 4096 bytes) works. Metadata is applied in the
//! order content, xattrs, chown, chmod, ACL, times; directory metadata is
//! applied last, children before parents (post-order).
//!
//! atimes are set 1 h to 2 days in the *future*: with `relatime` an access
//! only bumps atime when atime <= mtime, atime <= ctime or atime is older
//! than a day, so future atimes keep reads (by the copier or the oracle) from
//! changing them.

use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags, CWD};
use rustix::io::Errno;

#[derive(Clone, Debug)]
pub struct GenOpts {
    /// Number of random directories (besides the fixed ones).
    pub dirs: usize,
    /// Number of random regular files.
    pub files: usize,
    /// Add one file larger than 16 MiB.
    pub big: bool,
    /// Add a directory chain making a relative path longer than 4096 bytes.
    pub deep: bool,
    /// Fifos and (when root) char/block device nodes.
    pub specials: bool,
    /// POSIX ACLs (system.posix_acl_access / _default xattrs).
    pub acls: bool,
    /// Random uid/gid (only when root).
    pub owners: bool,
    /// Upper bound (bytes) for the random "large" file category.
    pub max_file: usize,
    /// Add a symlink with two hardlinked names.
    pub symlink_hardlinks: bool,
}

impl Default for GenOpts {
    fn default() -> Self {
        GenOpts {
            dirs: 24,
            files: 120,
            big: false,
            deep: true,
            specials: true,
            acls: true,
            owners: true,
            max_file: 4 << 20,
            symlink_hardlinks: std::env::var_os("RINGSYNC_TEST_NO_SYMLINK_HARDLINKS").is_none(),
        }
    }
}

/// What the generator made (relative byte paths).
#[derive(Clone, Debug, Default)]
pub struct GenReport {
    pub dirs: Vec<Vec<u8>>,
    /// All regular-file names (every hardlink name included).
    pub files: Vec<Vec<u8>>,
    pub sparse: Vec<Vec<u8>>,
    pub symlinks: Vec<Vec<u8>>,
    pub fifos: Vec<Vec<u8>>,
    pub devices: Vec<Vec<u8>>,
    pub hardlink_groups: Vec<Vec<Vec<u8>>>,
    /// Regular files carrying at least one user.* xattr.
    pub xattr_files: Vec<Vec<u8>>,
    /// Logical bytes of regular file data (each inode once).
    pub bytes: u64,
    /// Longest relative path created.
    pub longest_path: usize,
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

struct DirRec {
    fd: OwnedFd,
    rel: Vec<u8>,
    depth: usize,
    /// Final permission bits (applied in the post-order pass).
    mode: u32,
    owner: Option<(u32, u32)>,
    default_acl: bool,
}

struct G {
    rng: SmallRng,
    root: bool,
    opts: GenOpts,
    counter: u32,
    now: i64,
    big_ids: bool,
    dirs: Vec<DirRec>,
    rep: GenReport,
    /// (dir index, name) of single-link regular files usable for hardlinks.
    plain_files: Vec<(usize, Vec<u8>)>,
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        name.to_vec()
    } else {
        let mut p = parent.to_vec();
        p.push(b'/');
        p.extend_from_slice(name);
        p
    }
}

fn acl_value(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for &(tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// An access ACL with named user 1000 and named group 2000.
pub fn sample_acl() -> Vec<u8> {
    const U: u32 = u32::MAX;
    acl_value(&[
        (0x01, 6, U),
        (0x02, 4, 1000),
        (0x04, 4, U),
        (0x08, 5, 2000),
        (0x10, 7, U),
        (0x20, 4, U),
    ])
}

impl G {
    fn name(&mut self, hint: &str) -> Vec<u8> {
        self.counter += 1;
        let id = format!("{hint}{}", self.counter);
        match self.rng.gen_range(0..100) {
            0..=49 => id.into_bytes(),
            50..=56 => format!(" {id} with spaces ").into_bytes(),
            57..=61 => format!("line\n{id}\nbreak").into_bytes(),
            62..=67 => {
                let mut v = id.into_bytes();
                v.extend_from_slice(&[0xff, 0xfe, 0x80, b'z', 0x01]);
                v
            }
            68..=72 => format!("-{id}").into_bytes(),
            73..=75 => format!("--{id}").into_bytes(),
            76..=80 => {
                let mut v = id.into_bytes();
                v.resize(255, b'L');
                v
            }
            81..=84 => format!(".{id}").into_bytes(),
            85..=89 => format!("ü-{id}-日本語").into_bytes(),
            90..=93 => format!("{id}\t\r*?[x]\\'\"$(x)").into_bytes(),
            _ => format!("{id}.tar.gz").into_bytes(),
        }
    }

    fn mtime(&mut self) -> Timespec {
        let sec = match self.rng.gen_range(0..20) {
            0 => -self.rng.gen_range(1..200_000_000i64), // before 1970
            1 => 0,
            // Recent, but strictly before the (future) atime so that relatime
            // never bumps the atime on read.
            2 => self.now - 86_400,
            _ => self.rng.gen_range(100_000_000..self.now - 86_400),
        };
        let nsec = match self.rng.gen_range(0..8) {
            0 => 0,
            1 => 999_999_999,
            _ => self.rng.gen_range(0..1_000_000_000),
        };
        Timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        }
    }

    fn times(&mut self) -> Timestamps {
        let last_modification = self.mtime();
        let last_access = Timespec {
            tv_sec: self.now + self.rng.gen_range(3600..172_800),
            tv_nsec: self.rng.gen_range(0..1_000_000_000),
        };
        Timestamps {
            last_access,
            last_modification,
        }
    }

    fn owner(&mut self) -> Option<(u32, u32)> {
        if !self.root || !self.opts.owners {
            return None;
        }
        let ids: &[u32] = if self.big_ids {
            &[0, 0, 0, 1, 2, 1000, 1001, 65534, 4242, 3_000_000_000]
        } else {
            &[0, 0, 0, 1, 2, 1000, 1001, 65534, 4242]
        };
        let u = ids[self.rng.gen_range(0..ids.len())];
        let g = ids[self.rng.gen_range(0..ids.len())];
        Some((u, g))
    }

    fn file_mode(&mut self) -> u32 {
        const MODES: &[u32] = &[
            0o644, 0o644, 0o644, 0o600, 0o755, 0o755, 0o4755, 0o2755, 0o6755, 0o1644, 0o000, 0o400, 0o444,
            0o640, 0o777, 0o111, 0o2644, 0o7777, 0o604,
        ];
        MODES[self.rng.gen_range(0..MODES.len())]
    }

    fn dir_mode(&mut self) -> u32 {
        const MODES: &[u32] = &[
            0o755, 0o755, 0o755, 0o700, 0o750, 0o1777, 0o2755, 0o775, 0o711, 0o3777,
        ];
        MODES[self.rng.gen_range(0..MODES.len())]
    }

    /// Random user.* (and trusted.* when root) xattrs; returns true if any
    /// user.* attribute was set.
    fn xattrs(&mut self, fd: BorrowedFd<'_>, prob: u32) -> io::Result<bool> {
        if self.rng.gen_range(0..100) >= prob {
            return Ok(false);
        }
        let n = self.rng.gen_range(1..=3);
        for i in 0..n {
            let name: Vec<u8> = match self.rng.gen_range(0..4) {
                0 => format!("user.k{i}").into_bytes(),
                1 => format!("user.with space {i}").into_bytes(),
                2 => {
                    let mut v = format!("user.bin{i}.").into_bytes();
                    v.extend_from_slice(&[0xff, 0x80, b'x']);
                    v
                }
                _ => format!("user.mime_type{i}").into_bytes(),
            };
            let value = self.xattr_value();
            rustix::fs::fsetxattr(fd, name.as_slice(), &value, XattrFlags::empty())?;
        }
        if self.root && (prob == 100 || self.rng.gen_bool(0.3)) {
            let value = self.xattr_value();
            rustix::fs::fsetxattr(fd, "trusted.ringsync-test", &value, XattrFlags::empty())?;
        }
        Ok(true)
    }

    fn xattr_value(&mut self) -> Vec<u8> {
        match self.rng.gen_range(0..5) {
            0 => Vec::new(),
            1 => vec![0, 1, 2, 0, 255, 0],
            2 => b"text/plain; charset=utf-8".to_vec(),
            3 => {
                let mut v = vec![0u8; self.rng.gen_range(100..1200)];
                self.rng.fill_bytes(&mut v);
                v
            }
            _ => b"\n".to_vec(),
        }
    }

    fn chown_fd(&mut self, fd: BorrowedFd<'_>, owner: Option<(u32, u32)>) -> io::Result<()> {
        if let Some((u, g)) = owner {
            rustix::fs::fchown(fd, Some(Uid::from_raw(u)), Some(Gid::from_raw(g)))?;
        }
        Ok(())
    }

    fn file_size(&mut self) -> usize {
        const MIB: usize = 1 << 20;
        let max = self.opts.max_file.max(8192);
        match self.rng.gen_range(0..100) {
            0..=14 => 0,
            15..=44 => self.rng.gen_range(1..=512),
            45..=69 => self.rng.gen_range(513..=max.min(65535)),
            70..=82 if max > 65536 => self.rng.gen_range(65536..=max.min(MIB)),
            83..=88 => 4096 * self.rng.gen_range(1..=(max / 4096).min(64)),
            89..=91 if max >= MIB => MIB * self.rng.gen_range(1..=(max / MIB).min(3)),
            92..=93 => 4096 * self.rng.gen_range(1..=(max / 4096 - 1).min(63)) + 1,
            _ if max > MIB => self.rng.gen_range(MIB..=max),
            _ => self.rng.gen_range(513..=max),
        }
    }

    fn content(&mut self, size: usize) -> Vec<u8> {
        let mut v = vec![0u8; size];
        match self.rng.gen_range(0..10) {
            0 => {} // zero-filled, but not sparse
            1 => {
                for (i, b) in v.iter_mut().enumerate() {
                    *b = (i % 251) as u8;
                }
            }
            _ => self.rng.fill_bytes(&mut v),
        }
        v
    }

    fn pick_dir(&mut self) -> usize {
        self.rng.gen_range(0..self.dirs.len())
    }

    fn new_dir(&mut self, parent: usize, name: Vec<u8>, mode: u32) -> io::Result<usize> {
        let pfd = self.dirs[parent].fd.as_fd();
        rustix::fs::mkdirat(pfd, name.as_slice(), Mode::from_raw_mode(0o700))?;
        let fd = rustix::fs::openat(
            pfd,
            name.as_slice(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )?;
        let rel = join(&self.dirs[parent].rel, &name);
        self.rep.longest_path = self.rep.longest_path.max(rel.len());
        self.rep.dirs.push(rel.clone());
        let owner = self.owner();
        let depth = self.dirs[parent].depth + 1;
        self.dirs.push(DirRec {
            fd,
            rel,
            depth,
            mode,
            owner,
            default_acl: false,
        });
        Ok(self.dirs.len() - 1)
    }

    /// Create a regular file with full metadata. Returns its relative path.
    fn new_file(&mut self, dir: usize, name: Vec<u8>, data: &[u8], mode: Option<u32>) -> io::Result<Vec<u8>> {
        let fd = rustix::fs::openat(
            self.dirs[dir].fd.as_fd(),
            name.as_slice(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        let mut f = std::fs::File::from(fd);
        f.write_all(data)?;
        let rel = join(&self.dirs[dir].rel, &name);
        self.finish_file(&f, dir, &rel, mode)?;
        self.rep.bytes += data.len() as u64;
        self.plain_files.push((dir, name));
        Ok(rel)
    }

    fn finish_file(
        &mut self,
        f: &std::fs::File,
        _dir: usize,
        rel: &[u8],
        mode: Option<u32>,
    ) -> io::Result<()> {
        let fd = f.as_fd();
        if self.xattrs(fd, 30)? {
            self.rep.xattr_files.push(rel.to_vec());
        }
        let owner = self.owner();
        self.chown_fd(fd, owner)?;
        let mode = mode.unwrap_or_else(|| self.file_mode());
        rustix::fs::fchmod(fd, Mode::from_raw_mode(mode))?;
        let t = self.times();
        rustix::fs::futimens(fd, &t)?;
        self.rep.longest_path = self.rep.longest_path.max(rel.len());
        self.rep.files.push(rel.to_vec());
        Ok(())
    }

    fn sparse_file(&mut self, dir: usize, name: Vec<u8>, layout: u32) -> io::Result<Vec<u8>> {
        let fd = rustix::fs::openat(
            self.dirs[dir].fd.as_fd(),
            name.as_slice(),
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        let size: u64 = match layout {
            0 => (3 << 20) + self.rng.gen_range(0..10_000),
            1 => 8 << 20,
            2 => (5 << 20) + 123,
            _ => (6 << 20) + self.rng.gen_range(0..(2 << 20)),
        };
        rustix::fs::ftruncate(&fd, size)?;
        let mut chunks: Vec<(u64, usize)> = Vec::new();
        match layout {
            // data at start and middle, hole at the end
            0 => {
                chunks.push((0, self.rng.gen_range(1..9000)));
                chunks.push((size / 2 + 1000, self.rng.gen_range(1..70_000)));
            }
            // data at the very end (last byte included), hole at start
            1 => {
                chunks.push((size - 5000, 5000));
                chunks.push((1 << 20, 4096));
            }
            // no data at all
            2 => {}
            // several unaligned pieces, one crossing a 1 MiB boundary
            _ => {
                chunks.push((12_345, 100));
                chunks.push(((2 << 20) - 50, 100));
                chunks.push((size - 1, 1));
                chunks.push((4 << 20, 65_536 * 3));
            }
        }
        for (off, len) in chunks {
            let data = self.content(len);
            let mut data = data;
            if data.iter().all(|&b| b == 0) {
                data.iter_mut().for_each(|b| *b = 0x5a);
            }
            rustix::io::pwrite(&fd, &data, off)?;
        }
        let f = std::fs::File::from(fd);
        let rel = join(&self.dirs[dir].rel, &name);
        self.finish_file(&f, dir, &rel, None)?;
        self.rep.bytes += size;
        self.rep.sparse.push(rel.clone());
        self.plain_files.push((dir, name));
        Ok(rel)
    }

    fn symlink(&mut self, dir: usize, name: Vec<u8>, target: &[u8]) -> io::Result<Vec<u8>> {
        let dfd = self.dirs[dir].fd.as_fd();
        match rustix::fs::symlinkat(target, dfd, name.as_slice()) {
            // XFS limits symlink targets to 1024 bytes.
            Err(Errno::NAMETOOLONG) if target.len() > 1000 => {
                rustix::fs::symlinkat(&target[..1000], dfd, name.as_slice())?
            }
            r => r?,
        }
        self.meta_at(dir, &name)?;
        let rel = join(&self.dirs[dir].rel, &name);
        self.rep.longest_path = self.rep.longest_path.max(rel.len());
        self.rep.symlinks.push(rel.clone());
        Ok(rel)
    }

    /// Owner, trusted xattr (root) and times for a non-regular, non-dir entry.
    fn meta_at(&mut self, dir: usize, name: &[u8]) -> io::Result<()> {
        let xattr = if self.root && self.rng.gen_bool(0.3) {
            Some(self.xattr_value())
        } else {
            None
        };
        let owner = self.owner();
        let t = self.times();
        let dfd = self.dirs[dir].fd.as_fd();
        if let Some(value) = xattr {
            let mut p = format!("/proc/self/fd/{}/", std::os::fd::AsRawFd::as_raw_fd(&dfd)).into_bytes();
            p.extend_from_slice(name);
            rustix::fs::lsetxattr(p.as_slice(), "trusted.on-special", &value, XattrFlags::empty())?;
        }
        if let Some((u, g)) = owner {
            rustix::fs::chownat(
                dfd,
                name,
                Some(Uid::from_raw(u)),
                Some(Gid::from_raw(g)),
                AtFlags::SYMLINK_NOFOLLOW,
            )?;
        }
        rustix::fs::utimensat(dfd, name, &t, AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(())
    }

    fn special(&mut self, dir: usize, name: Vec<u8>, ft: FileType, dev: u64) -> io::Result<bool> {
        const MODES: [u32; 5] = [0o644, 0o600, 0o666, 0o4644, 0o000];
        let mode = Mode::from_raw_mode(MODES[self.rng.gen_range(0..MODES.len())]);
        let dfd = self.dirs[dir].fd.as_fd();
        match rustix::fs::mknodat(dfd, name.as_slice(), ft, mode, dev) {
            Ok(()) => {}
            Err(Errno::PERM) if ft != FileType::Fifo => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        // mknod applies the umask; set the exact mode.
        rustix::fs::chmodat(dfd, name.as_slice(), mode, AtFlags::empty())?;
        self.meta_at(dir, &name)?;
        let rel = join(&self.dirs[dir].rel, &name);
        if ft == FileType::Fifo {
            self.rep.fifos.push(rel);
        } else {
            self.rep.devices.push(rel);
        }
        Ok(true)
    }

    fn hardlink(&mut self, from_dir: usize, from: &[u8], to_dir: usize, to: Vec<u8>) -> io::Result<Vec<u8>> {
        rustix::fs::linkat(
            self.dirs[from_dir].fd.as_fd(),
            from,
            self.dirs[to_dir].fd.as_fd(),
            to.as_slice(),
            AtFlags::empty(),
        )?;
        Ok(join(&self.dirs[to_dir].rel, &to))
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(1_700_000_000)
}

/// Generate a nasty tree under `root` (created if missing) from `seed`.
pub fn gen_tree(root: &Path, seed: u64, opts: &GenOpts) -> io::Result<GenReport> {
    std::fs::create_dir_all(root)?;
    let rootfd = rustix::fs::openat(
        CWD,
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let is_root = is_root();
    let mut g = G {
        rng: SmallRng::seed_from_u64(seed),
        root: is_root,
        opts: opts.clone(),
        counter: 0,
        // The next midnight (UTC): the same for every tree generated today, so a seed gives the
        // same tree twice (times derived from it included), and still later than the real
        // clock, so future atimes stay in the future.
        now: (now_secs() / 86_400 + 1) * 86_400,
        big_ids: false,
        dirs: Vec::new(),
        rep: GenReport::default(),
        plain_files: Vec::new(),
    };
    let root_owner = g.owner();
    let root_mode = g.dir_mode();
    g.dirs.push(DirRec {
        fd: rootfd,
        rel: Vec::new(),
        depth: 0,
        mode: root_mode,
        owner: root_owner,
        default_acl: false,
    });
    // Probe whether uids beyond 2^31 work here (user namespaces may not map them).
    if is_root {
        let probe: &[u8] = b".uid-probe";
        let r = rustix::fs::openat(
            g.dirs[0].fd.as_fd(),
            probe,
            OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        g.big_ids = rustix::fs::fchown(&r, Some(Uid::from_raw(3_000_000_000)), None).is_ok();
        drop(r);
        rustix::fs::unlinkat(g.dirs[0].fd.as_fd(), probe, AtFlags::empty())?;
    }

    // Random directory skeleton.
    for _ in 0..opts.dirs {
        let mut parent = g.pick_dir();
        while g.dirs[parent].depth >= 6 {
            parent = g.pick_dir();
        }
        let name = g.name("d");
        let mode = g.dir_mode();
        g.new_dir(parent, name, mode)?;
    }

    // Fixed nasty names (all in one directory and at the root).
    let nasty = g.new_dir(0, b"nasty names".to_vec(), 0o755)?;
    let mut long = b"long-".to_vec();
    long.resize(255, b'x');
    let fixed: Vec<Vec<u8>> = vec![
        b"-rf".to_vec(),
        b"--help".to_vec(),
        b"-".to_vec(),
        b"new\nline".to_vec(),
        b"\n".to_vec(),
        b" leading space".to_vec(),
        b"trailing space ".to_vec(),
        b"tab\there".to_vec(),
        vec![0xff, 0xfe, 0xfd],
        vec![b'a', 0x80, b'b', 0xc3, 0x28],
        b"...".to_vec(),
        b"*".to_vec(),
        b"\\".to_vec(),
        long.clone(),
    ];
    for n in &fixed {
        let len = g.rng.gen_range(0..3000);
        let data = g.content(len);
        g.new_file(nasty, n.clone(), &data, None)?;
    }
    let data = g.content(777);
    g.new_file(0, long, &data, Some(0o644))?;
    g.new_file(0, b"-n".to_vec(), b"dash n\n", Some(0o644))?;

    // Random regular files.
    for _ in 0..opts.files {
        let d = g.pick_dir();
        let name = g.name("f");
        let size = g.file_size();
        let data = g.content(size);
        g.new_file(d, name, &data, None)?;
    }
    // Exact multiples of 4 KiB and 1 MiB.
    for (i, size) in [4096usize, 8192, 1 << 20, 2 << 20, (1 << 20) - 1, (1 << 20) + 1]
        .into_iter()
        .enumerate()
    {
        let d = g.pick_dir();
        let data = g.content(size);
        g.new_file(d, format!("exact{i}-{size}").into_bytes(), &data, None)?;
    }
    if opts.big {
        let size = (17 << 20) + 4097;
        let data = g.content(size);
        let mut data = data;
        if data.iter().all(|&b| b == 0) {
            g.rng.fill_bytes(&mut data);
        }
        g.new_file(0, b"big-17M".to_vec(), &data, Some(0o644))?;
    }

    // Sparse files.
    for layout in 0..4 {
        let d = if layout == 0 { 0 } else { g.pick_dir() };
        let name = g.name("sparse");
        g.sparse_file(d, name, layout)?;
    }

    // Empty directories, nested empty directory.
    let e1 = g.new_dir(0, b"empty".to_vec(), 0o755)?;
    g.new_dir(e1, b"empty-inside".to_vec(), 0o700)?;
    for _ in 0..2 {
        let p = g.pick_dir();
        let name = g.name("empty");
        let mode = g.dir_mode();
        g.new_dir(p, name, mode)?;
    }

    // Read-only directories containing files, and a mode 0000 directory.
    for (nm, mode) in [
        (&b"readonly-0555"[..], 0o555u32),
        (b"readonly-0500", 0o500),
        (b"locked-0000", 0o000),
    ] {
        let d = g.new_dir(0, nm.to_vec(), mode)?;
        for i in 0..3 {
            let n = g.rng.gen_range(0..20_000);
            let data = g.content(n);
            g.new_file(d, format!("child{i}").into_bytes(), &data, Some(0o644))?;
        }
        let sub = g.new_dir(d, b"sub".to_vec(), 0o555)?;
        g.new_file(sub, b"leaf".to_vec(), b"leaf\n", Some(0o444))?;
    }

    // Symlinks.
    let some_file = g.rep.files[0].clone();
    let mut long_target = b"../".repeat(300);
    long_target.extend_from_slice(b"nowhere");
    let mut huge_target = b"x/".repeat(2040);
    huge_target.extend_from_slice(b"end"); // 4083 bytes, below PATH_MAX
    let mut weird_target = b"weird\ntarget ".to_vec();
    weird_target.extend_from_slice(&[0xff, 0x01, b' ']);
    let targets: Vec<Vec<u8>> = vec![
        some_file,
        b"../".to_vec(),
        b".".to_vec(),
        b"/etc/passwd".to_vec(),
        b"/nonexistent/dangling/target".to_vec(),
        b"dangling-relative".to_vec(),
        b"nasty names".to_vec(),
        b"empty/".to_vec(),
        long_target,
        huge_target,
        weird_target,
        b"-rf".to_vec(),
        b"self-loop".to_vec(),
    ];
    for (i, t) in targets.iter().enumerate() {
        let d = if i % 3 == 0 { 0 } else { g.pick_dir() };
        let name = if t == b"self-loop" && d == 0 {
            b"self-loop".to_vec()
        } else {
            g.name("sym")
        };
        g.symlink(d, name, t)?;
    }

    // Hardlink groups of 2-4 names across directories.
    for _ in 0..5 {
        if g.plain_files.is_empty() {
            break;
        }
        let i = g.rng.gen_range(0..g.plain_files.len());
        let (fd_dir, fname) = g.plain_files.swap_remove(i);
        let mut group = vec![join(&g.dirs[fd_dir].rel, &fname)];
        for _ in 0..g.rng.gen_range(1..=3) {
            let to = g.pick_dir();
            let name = g.name("hl");
            group.push(g.hardlink(fd_dir, &fname, to, name)?);
        }
        g.rep.files.extend(group[1..].iter().cloned());
        g.rep.hardlink_groups.push(group);
    }
    // A hardlinked symlink.
    if opts.symlink_hardlinks {
        let rel = g.symlink(0, b"hl-symlink-a".to_vec(), b"shared symlink target")?;
        let d = g.pick_dir();
        let name = g.name("hlsym");
        let rel2 = g.hardlink(0, b"hl-symlink-a", d, name)?;
        g.rep.symlinks.push(rel2.clone());
        g.rep.hardlink_groups.push(vec![rel, rel2]);
    }

    // Specials.
    if opts.specials {
        for _ in 0..3 {
            let d = g.pick_dir();
            let name = g.name("fifo");
            g.special(d, name, FileType::Fifo, 0)?;
        }
        if is_root {
            let devs = [
                (FileType::CharacterDevice, rustix::fs::makedev(1, 3)),
                (FileType::CharacterDevice, rustix::fs::makedev(511, 262_143)),
                (FileType::BlockDevice, rustix::fs::makedev(7, 200)),
            ];
            for (ft, dev) in devs {
                let d = g.pick_dir();
                let name = g.name("dev");
                g.special(d, name, ft, dev)?;
            }
        }
    }

    // POSIX ACLs.
    if opts.acls {
        let d = g.new_dir(0, b"acl".to_vec(), 0o750)?;
        g.dirs[d].default_acl = true;
        g.new_file(d, b"with-access-acl".to_vec(), b"acl\n", Some(0o640))?;
        let fd = rustix::fs::openat(
            g.dirs[d].fd.as_fd(),
            "with-access-acl",
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        rustix::fs::fsetxattr(&fd, "system.posix_acl_access", &sample_acl(), XattrFlags::empty())?;
        let t = g.times();
        rustix::fs::futimens(&fd, &t)?;
        g.new_file(d, b"no-acl".to_vec(), b"plain\n", Some(0o600))?;
    }

    // Deep chain: relative path longer than PATH_MAX.
    if opts.deep {
        let mut d = g.new_dir(0, b"deep".to_vec(), 0o755)?;
        let mut level = 0;
        while g.dirs[d].rel.len() < 4300 {
            let mut name = format!("level{level:03}-").into_bytes();
            name.resize(200, b'd');
            d = g.new_dir(d, name, 0o755)?;
            level += 1;
        }
        let data = g.content(100_000);
        g.new_file(d, b"deep-file".to_vec(), &data, Some(0o644))?;
        g.symlink(d, b"deep-symlink".to_vec(), b"deep-file")?;
        let rel = join(&g.dirs[d].rel, b"deep-file");
        let rel2 = g.hardlink(d, b"deep-file", 0, b"link-to-deep-file".to_vec())?;
        g.rep.files.push(rel2.clone());
        g.plain_files.retain(|(dd, n)| !(*dd == d && n == b"deep-file"));
        g.rep.hardlink_groups.push(vec![rel, rel2]);
        g.new_dir(d, b"deep-empty".to_vec(), 0o700)?;
    }

    // Directory metadata, children before parents.
    for i in (0..g.dirs.len()).rev() {
        let fd = g.dirs[i].fd.try_clone()?;
        let _ = g.xattrs(fd.as_fd(), if i == 0 { 100 } else { 25 })?;
        let owner = g.dirs[i].owner;
        g.chown_fd(fd.as_fd(), owner)?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(g.dirs[i].mode))?;
        if g.dirs[i].default_acl {
            rustix::fs::fsetxattr(
                &fd,
                "system.posix_acl_default",
                &sample_acl(),
                XattrFlags::empty(),
            )?;
            rustix::fs::fsetxattr(&fd, "system.posix_acl_access", &sample_acl(), XattrFlags::empty())?;
        }
        let t = g.times();
        rustix::fs::futimens(&fd, &t)?;
    }
    Ok(g.rep)
}
