//! What changed in a btrfs source since the last mirror, from the filesystem's own metadata:
//! the `btrfs subvolume find-new` approach, for mirrors that cost O(changes) instead of a walk
//! of both trees.
//!
//! Every change to an inode rewrites its inode item in the running transaction (data writes
//! through mtime/ctime, or when their extents land; chmod, chown, xattrs and renames through
//! ctime; a create, delete or rename through the parent directory's mtime), and
//! `BTRFS_IOC_TREE_SEARCH_V2` with a `min_transid` skips every leaf no later transaction wrote.
//! So the inode items (and file extent items) of generation G or later name every inode that
//! changed since G. Each is resolved to its path through its INODE_REF items, and the result is
//! a [`Scope`]: directories whose entries changed are listed in full, their unchanged ancestors
//! only look at the changed names, and everything else is not visited. In a listed directory a
//! name both sides have whose inode did not change is skipped, unless its directory entry is
//! new since G (each entry carries the transaction that made it): a directory moved or swapped
//! into a name holds unchanged inodes that DST has at other paths, so it is walked in full.
//! Files whose data extents were written, or that got a name, since G have their bytes
//! compared when size and mtime look unchanged (`Scope::data`).
//!
//! What makes the generation a proof ([`begin`]): `syncfs` first, so the tree holds every
//! change made so far (btrfs keeps inode item updates in memory until a commit, and data a
//! writer left in the page cache reaches its inode item when written out: a write within the
//! same clock tick as the last one does not touch mtime); then the subvolume's generation (its
//! last commit) is read and recorded. Whatever changes after that commit goes into a later
//! transaction, and the next run asks for items of a later generation, so a change racing with
//! this run is looked at again next time.
//!
//! Refused (the caller falls back to the full walk, [`Refusal`]): no CAP_SYS_ADMIN for the tree
//! search; another subvolume or a mount point inside SRC (their changes are not in this tree);
//! a path that cannot be resolved. A changed file with several links puts all its paths in the
//! scope; the mirror falls back to the full walk when the scoped walk met part of a hardlink
//! group (`diff::links_complete`). The subvolume itself must be the one recorded (id and UUID: a
//! snapshot put back in its place has another).
//!
//! Must not: write anything; say "unchanged" about an entry it cannot prove unchanged.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use crate::diff::{DirScope, Scope};
use crate::ring::btrfs::{self, Key, SubvolInfo};

/// btrfs's statfs magic.
const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;
/// Key types (`linux/btrfs_tree.h`).
const INODE_ITEM_KEY: u8 = 1;
const INODE_REF_KEY: u8 = 12;
const INODE_EXTREF_KEY: u8 = 13;
const DIR_INDEX_KEY: u8 = 96;
const EXTENT_DATA_KEY: u8 = 108;
const ROOT_REF_KEY: u8 = 156;
/// The root tree's id, and the first and last inode numbers of a subvolume (its root
/// directory is the first).
const ROOT_TREE_OBJECTID: u64 = 1;
const FIRST_FREE_OBJECTID: u64 = 256;
const LAST_FREE_OBJECTID: u64 = (-256i64) as u64;
/// `struct btrfs_inode_item`: its size and where the fields read here are.
const INODE_ITEM_BYTES: usize = 160;
const INODE_TRANSID_AT: usize = 8;
const INODE_MODE_AT: usize = 52;
/// `struct btrfs_dir_item`: location key (17 bytes), transid, data_len, name_len, type; then
/// the name.
const DIR_ITEM_TRANSID_AT: usize = 17;
const DIR_ITEM_NAME_LEN_AT: usize = 27;
const DIR_ITEM_BYTES: usize = 30;
/// Directory levels followed up to the subvolume root before giving up (a loop would be a
/// corrupt filesystem; PATH_MAX allows ~2048).
const DEPTH_MAX: usize = 4096;

/// What the record keeps: the subvolume DST was last made equal to, and at which generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// Subvolume UUID, hex.
    pub uuid: String,
    pub subvol: u64,
    /// The subvolume's generation (its last commit) when that run started, after a `syncfs`:
    /// items of a later generation are what changed since.
    pub generation: u64,
}

/// Why the shortcut was not taken (said in the log, then the full walk runs).
pub type Refusal = String;

/// A run's start on a btrfs SRC: its descriptor and the mark to record if the run ends clean.
pub struct Start {
    fd: OwnedFd,
    pub mark: Mark,
}

/// SRC on btrfs: `syncfs`, then the subvolume's identity and generation. `None` when SRC is
/// not on btrfs or the kernel does not say.
pub fn begin(src: &Path) -> Option<Start> {
    let fd = rustix::fs::open(
        src,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .ok()?;
    if rustix::fs::fstatfs(&fd).ok()?.f_type != BTRFS_SUPER_MAGIC {
        return None;
    }
    rustix::fs::syncfs(&fd).ok()?;
    let info: SubvolInfo = btrfs::subvol_info(fd.as_fd()).ok()?;
    let mark = Mark {
        uuid: info.uuid.iter().map(|b| format!("{b:02x}")).collect(),
        subvol: info.id,
        generation: info.generation,
    };
    Some(Start { fd, mark })
}

/// One changed inode.
struct Changed {
    mode: u32,
}

impl Start {
    /// The scope of what changed under SRC since `prev` (a mark of this subvolume).
    pub fn scope(&self, src: &Path, prev: &Mark) -> Result<Scope, Refusal> {
        if prev.uuid != self.mark.uuid || prev.subvol != self.mark.subvol {
            return Err("SRC's subvolume is not the one DST was mirrored from".into());
        }
        if prev.generation > self.mark.generation || prev.generation == u64::MAX {
            return Err("SRC's subvolume generation went backwards".into());
        }
        let fd = self.fd.as_fd();
        let search_err = |e: Errno| -> Refusal {
            if e == Errno::PERM || e == Errno::ACCESS {
                "searching the subvolume's tree needs CAP_SYS_ADMIN".into()
            } else {
                format!("btrfs tree search: {e}")
            }
        };
        // Inodes whose item, or one of whose file extents, a transaction after `prev` wrote.
        let since = prev.generation + 1;
        let mut changed: HashMap<u64, Option<Changed>> = HashMap::new();
        // Inodes whose data was written since, or that got a name since.
        let mut data: HashSet<u64> = HashSet::new();
        // Directory entries made since: (directory, name).
        let mut bound: Vec<(u64, Vec<u8>)> = Vec::new();
        btrfs::tree_search(
            fd,
            0,
            Key {
                objectid: FIRST_FREE_OBJECTID,
                kind: 0,
                offset: 0,
            },
            Key {
                objectid: LAST_FREE_OBJECTID,
                kind: u8::MAX,
                offset: u64::MAX,
            },
            since,
            |item| match item.key.kind {
                INODE_ITEM_KEY => {
                    if let Some(c) = parse_inode(item.data) {
                        if le64(item.data, INODE_TRANSID_AT).unwrap_or(u64::MAX) >= since {
                            changed.insert(item.key.objectid, Some(c));
                        }
                    }
                }
                DIR_INDEX_KEY if le64(item.data, DIR_ITEM_TRANSID_AT).unwrap_or(u64::MAX) >= since => {
                    // The entry's location key starts with the inode it names.
                    if let Some(ino) = le64(item.data, 0) {
                        data.insert(ino);
                    }
                    let len = le16(item.data, DIR_ITEM_NAME_LEN_AT).unwrap_or(0) as usize;
                    match item.data.get(DIR_ITEM_BYTES..DIR_ITEM_BYTES + len) {
                        Some(name) => bound.push((item.key.objectid, name.to_vec())),
                        // Unparsable: an empty name, refused below.
                        None => bound.push((item.key.objectid, Vec::new())),
                    }
                }
                // `struct btrfs_file_extent_item` starts with its generation.
                EXTENT_DATA_KEY if le64(item.data, 0).unwrap_or(u64::MAX) >= since => {
                    changed.entry(item.key.objectid).or_insert(None);
                    data.insert(item.key.objectid);
                }
                _ => {}
            },
        )
        .map_err(search_err)?;
        let mut r = Resolver {
            fd,
            dirs: HashMap::new(),
        };
        let src_ino = rustix::fs::fstat(fd).map_err(|e| format!("fstat: {e}"))?.st_ino;
        let prefix = r.dir_path(src_ino)?;
        self.refuse_nested(&mut r, &prefix)?;
        refuse_mounts(src)?;
        let mut scope = Scope {
            inodes: changed.keys().copied().collect(),
            data,
            ..Default::default()
        };
        for (&ino, c) in &changed {
            let c = match c {
                Some(c) => Changed { mode: c.mode },
                None => match r.inode(ino)? {
                    Some(c) => c,
                    // Gone since: its directory changed too.
                    None => continue,
                },
            };
            let is_dir = c.mode & libc::S_IFMT == libc::S_IFDIR;
            if is_dir {
                let p = r.dir_path(ino)?;
                if let Some(rel) = under(&p, &prefix) {
                    scope.full(rel);
                }
                continue;
            }
            // Every link of it: its hardlink group is judged whole (and the mirror checks that
            // the walk met whole groups on both sides). No name: unlinked (an orphan still
            // open); its directory changed too.
            for (parent, name) in r.names(ino)? {
                let mut p = r.dir_path(parent)?;
                push_name(&mut p, &name);
                if let Some(rel) = under(&p, &prefix) {
                    scope.name(rel);
                }
            }
        }
        for (dir, name) in bound {
            if name.is_empty() {
                return Err(format!("directory inode {dir}: an entry does not parse"));
            }
            let mut p = r.dir_path(dir)?;
            push_name(&mut p, &name);
            if let Some(rel) = under(&p, &prefix) {
                if !rel.is_empty() {
                    scope.fresh.insert(rel.to_vec());
                    scope.name(rel);
                }
            }
        }
        Ok(scope)
    }

    /// Another subvolume under SRC: its changes are in its own tree.
    fn refuse_nested(&self, r: &mut Resolver<'_>, prefix: &[u8]) -> Result<(), Refusal> {
        let mut dirs = Vec::new();
        btrfs::tree_search(
            self.fd.as_fd(),
            ROOT_TREE_OBJECTID,
            Key {
                objectid: self.mark.subvol,
                kind: ROOT_REF_KEY,
                offset: 0,
            },
            Key {
                objectid: self.mark.subvol,
                kind: ROOT_REF_KEY,
                offset: u64::MAX,
            },
            0,
            // `struct btrfs_root_ref` starts with the directory holding the child subvolume.
            |item| dirs.push(le64(item.data, 0)),
        )
        .map_err(|e| format!("btrfs tree search (subvolumes): {e}"))?;
        for dir in dirs {
            let dir = dir.ok_or("a subvolume reference too short")?;
            let p = r.dir_path(dir)?;
            if under(&p, prefix).is_some() {
                return Err("SRC holds another subvolume".into());
            }
        }
        Ok(())
    }
}

/// `rel` of path `p` (both relative to the subvolume root) when `p` is `prefix` or below it.
fn under<'a>(p: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    if prefix.is_empty() {
        return Some(p);
    }
    let rest = p.strip_prefix(prefix)?;
    match rest.first() {
        None => Some(rest),
        Some(b'/') => Some(&rest[1..]),
        Some(_) => None,
    }
}

fn push_name(p: &mut Vec<u8>, name: &[u8]) {
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
}

fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn parse_inode(b: &[u8]) -> Option<Changed> {
    if b.len() < INODE_ITEM_BYTES {
        return None;
    }
    Some(Changed {
        mode: le32(b, INODE_MODE_AT)?,
    })
}

/// Inode numbers to names and paths, through the subvolume's tree.
struct Resolver<'a> {
    fd: std::os::fd::BorrowedFd<'a>,
    /// Directory inode → path below the subvolume root.
    dirs: HashMap<u64, Vec<u8>>,
}

impl Resolver<'_> {
    /// The inode's item, or none when it is gone.
    fn inode(&self, ino: u64) -> Result<Option<Changed>, Refusal> {
        let mut found = None;
        btrfs::tree_search(
            self.fd,
            0,
            Key {
                objectid: ino,
                kind: INODE_ITEM_KEY,
                offset: 0,
            },
            Key {
                objectid: ino,
                kind: INODE_ITEM_KEY,
                offset: u64::MAX,
            },
            0,
            |item| found = parse_inode(item.data),
        )
        .map_err(|e| format!("btrfs tree search (inode {ino}): {e}"))?;
        Ok(found)
    }

    /// Every (parent directory, name) of inode `ino`.
    fn names(&self, ino: u64) -> Result<Vec<(u64, Vec<u8>)>, Refusal> {
        let mut names = Vec::new();
        let mut bad = false;
        btrfs::tree_search(
            self.fd,
            0,
            Key {
                objectid: ino,
                kind: INODE_REF_KEY,
                offset: 0,
            },
            Key {
                objectid: ino,
                kind: INODE_EXTREF_KEY,
                offset: u64::MAX,
            },
            0,
            |item| {
                let d = item.data;
                let mut at = 0;
                while at < d.len() {
                    // INODE_REF (key offset: the parent): index u64, name_len u16, name.
                    // INODE_EXTREF: parent u64, index u64, name_len u16, name.
                    let (parent, len_at) = if item.key.kind == INODE_REF_KEY {
                        (Some(item.key.offset), at + 8)
                    } else {
                        (le64(d, at), at + 16)
                    };
                    let (Some(parent), Some(len)) = (parent, le16(d, len_at)) else {
                        bad = true;
                        return;
                    };
                    let start = len_at + 2;
                    let Some(name) = d.get(start..start + len as usize) else {
                        bad = true;
                        return;
                    };
                    names.push((parent, name.to_vec()));
                    at = start + len as usize;
                }
            },
        )
        .map_err(|e| format!("btrfs tree search (names of inode {ino}): {e}"))?;
        if bad {
            return Err(format!("inode {ino}: a name reference does not parse"));
        }
        Ok(names)
    }

    /// The path of directory `ino` below the subvolume root (empty for the root).
    fn dir_path(&mut self, ino: u64) -> Result<Vec<u8>, Refusal> {
        let mut chain = Vec::new();
        let mut cur = ino;
        let mut base = loop {
            if cur == FIRST_FREE_OBJECTID {
                break Vec::new();
            }
            if let Some(p) = self.dirs.get(&cur) {
                break p.clone();
            }
            if chain.len() > DEPTH_MAX {
                return Err(format!("directory {ino}: deeper than {DEPTH_MAX} levels"));
            }
            let mut names = self.names(cur)?;
            if names.len() != 1 {
                return Err(format!("directory inode {cur} has {} names", names.len()));
            }
            let (parent, name) = names.pop().expect("one name");
            chain.push((cur, name));
            cur = parent;
        };
        while let Some((dir, name)) = chain.pop() {
            push_name(&mut base, &name);
            self.dirs.insert(dir, base.clone());
        }
        Ok(base)
    }
}

/// A mount point below SRC: what changes there is on another filesystem.
fn refuse_mounts(src: &Path) -> Result<(), Refusal> {
    let below = crate::mounts::below(src).map_err(|e| format!("read /proc/self/mountinfo: {e}"))?;
    match below.first() {
        Some(m) => Err(format!(
            "a filesystem is mounted inside SRC ({})",
            String::from_utf8_lossy(&m.point)
        )),
        None => Ok(()),
    }
}

/// For the scope: a directory whose own entries changed, and the names changed below others.
impl Scope {
    /// Directory `rel` is listed in full; its ancestors look at the way down to it.
    pub fn full(&mut self, rel: &[u8]) {
        self.dirs.insert(rel.to_vec(), DirScope::Full);
        self.ancestors(rel);
    }

    /// Entry `rel` is compared (its parent need not be listed).
    pub fn name(&mut self, rel: &[u8]) {
        self.ancestors(rel);
    }

    fn ancestors(&mut self, rel: &[u8]) {
        let mut child = rel;
        while !child.is_empty() {
            let (parent, name) = crate::diff::split(child);
            let entry = self
                .dirs
                .entry(parent.to_vec())
                .or_insert_with(|| DirScope::Names(HashSet::new()));
            match entry {
                DirScope::Full => {}
                DirScope::Names(names) => {
                    // Names from the tree never hold a NUL.
                    if let Ok(n) = CString::new(name) {
                        names.insert(n);
                    }
                }
            }
            child = parent;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_prefix() {
        assert_eq!(under(b"a/b", b""), Some(&b"a/b"[..]));
        assert_eq!(under(b"a/b", b"a"), Some(&b"b"[..]));
        assert_eq!(under(b"a", b"a"), Some(&b""[..]));
        assert_eq!(under(b"ab/c", b"a"), None);
        assert_eq!(under(b"b", b"a"), None);
    }

    #[test]
    fn scope_marks_the_way_down() {
        let mut s = Scope::default();
        s.name(b"a/b/f");
        s.full(b"a/c");
        s.name(b"a/c/g");
        assert!(matches!(s.dirs.get(&b""[..]), Some(DirScope::Names(n)) if n.len() == 1));
        assert!(matches!(s.dirs.get(&b"a"[..]), Some(DirScope::Names(n)) if n.len() == 2));
        assert!(matches!(s.dirs.get(&b"a/b"[..]), Some(DirScope::Names(n)) if n.len() == 1));
        assert!(matches!(s.dirs.get(&b"a/c"[..]), Some(DirScope::Full)));
    }
}
