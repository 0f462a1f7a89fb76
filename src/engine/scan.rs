//! Directory scan: getdents64 (io_uring has no getdents op), then statx of every entry batched
//! through the ring, then one job per subdirectory and regular file. Symlinks, fifos and device
//! nodes are made on the spot: each is a couple of syscalls with no data to move.

use std::ffi::{CStr, CString};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RawDir, StatxFlags};
use rustix::io::Errno;

use super::{resolve_links, source_error, DirNode, Job, Link, Step, Worker};
use crate::error::EntryError;
use crate::meta::{self, Meta};
use crate::progress::Counters;
use crate::ring::{Completion, Op};

/// getdents buffer: 64 KiB holds a few thousand entries per syscall.
const DIRENT_BUF_BYTES: usize = 64 << 10;

struct Entry {
    name: CString,
    meta: Option<Meta>,
}

pub struct ScanTask {
    node: Arc<DirNode>,
    entries: Vec<Entry>,
    next_statx: usize,
    in_flight: u32,
    listed: bool,
}

impl ScanTask {
    pub fn new(node: Arc<DirNode>) -> ScanTask {
        ScanTask {
            node,
            entries: Vec::new(),
            next_statx: 0,
            in_flight: 0,
            listed: false,
        }
    }

    fn list(&mut self) -> Result<(), Errno> {
        let mut buf = vec![MaybeUninit::<u8>::uninit(); DIRENT_BUF_BYTES];
        let mut dir = RawDir::new(&*self.node.src, &mut buf);
        while let Some(entry) = dir.next() {
            let entry = entry?;
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            self.entries.push(Entry {
                name: name.to_owned(),
                meta: None,
            });
        }
        Ok(())
    }

    pub fn pump(&mut self, w: &mut Worker, slot: u32) -> Step {
        if !self.listed {
            self.listed = true;
            // RawDir reads from the descriptor's current offset; a fresh open starts at 0.
            if let Err(e) = self.list() {
                w.report(source_error("getdents", w.shared.src_path(&self.node.rel), e));
                return self.finish(w);
            }
        }
        while self.next_statx < self.entries.len() && self.in_flight < super::STATX_PER_SCAN_MAX {
            if w.soft_room() == 0 {
                return Step::Blocked;
            }
            let i = self.next_statx;
            self.next_statx += 1;
            let op = Op::statx(self.node.src.clone(), self.entries[i].name.clone());
            w.ring.push(super::token(slot, i as u32), op);
            self.in_flight += 1;
        }
        if self.in_flight == 0 && self.next_statx == self.entries.len() {
            return self.process(w);
        }
        Step::Running
    }

    pub fn complete(&mut self, w: &mut Worker, slot: u32, sub: u32, c: Completion) -> Step {
        self.in_flight -= 1;
        let i = sub as usize;
        match (c.result, c.op) {
            (Ok(_), Op::Statx { buf, .. }) => self.entries[i].meta = Some(Meta::from_statx(&buf)),
            (Err(e), _) => {
                let path = w.shared.src_path(&self.node.child_rel(&self.entries[i].name));
                w.report(source_error("statx", path, e));
            }
            (Ok(_), _) => unreachable!("scan only submits statx"),
        }
        self.pump(w, slot)
    }

    /// All entries are statx'ed: create or queue each one (none once the run is interrupted).
    fn process(&mut self, w: &mut Worker) -> Step {
        let entries = std::mem::take(&mut self.entries);
        if crate::signals::interrupted().is_some() {
            return self.finish(w);
        }
        // Directories are queued first, so the files (popped first: a worker's own jobs go
        // newest first) are copied before the subtrees: a staged directory is published once
        // its own files are, not after its whole subtree.
        let (dirs, rest): (Vec<_>, Vec<_>) = entries
            .into_iter()
            .filter_map(|e| Some((e.name, e.meta?)))
            .partition(|(_, m)| m.file_type() == FileType::Directory);
        for (name, m) in dirs.into_iter().chain(rest) {
            handle_entry(w, &self.node, name, m);
        }
        self.finish(w)
    }

    fn finish(&mut self, w: &mut Worker) -> Step {
        w.shared.scan_done();
        w.shared.child_done(self.node.clone());
        Step::Done
    }
}

fn handle_entry(w: &mut Worker, node: &Arc<DirNode>, name: CString, m: Meta) {
    let filter = &w.shared.cfg.filter;
    if filter.needs_paths() {
        use std::os::unix::ffi::OsStrExt;
        let rel = crate::diff::join(node.rel.as_os_str().as_bytes(), name.as_bytes());
        let is_dir = m.file_type() == FileType::Directory;
        if filter.verdict(&rel, is_dir, true) == crate::filter::Verdict::Skip {
            return;
        }
    }
    let c = w.counters();
    match m.file_type() {
        FileType::Directory => {
            node.add_subdir();
            w.shared.scan_queued();
            w.spawn(Job::Dir {
                parent: node.clone(),
                name,
                meta: m,
            });
        }
        FileType::RegularFile => {
            node.add_entry();
            if m.nlink > 1 && !register_link(w, node, &name, &m) {
                // A later path of an inode already seen: linked, or waiting for the first copy.
                return;
            }
            let c = w.counters();
            Counters::add(&c.files_found, 1);
            Counters::add(&c.bytes_found, m.size);
            w.spawn(Job::File {
                parent: node.clone(),
                name,
                meta: m,
                from: None,
            });
        }
        FileType::Symlink | FileType::Fifo | FileType::CharacterDevice | FileType::BlockDevice => {
            if m.nlink > 1 {
                // Hardlinked symlinks and nodes: the first path is made here, later ones linked.
                node.add_entry();
                if register_link(w, node, &name, &m) {
                    let ok = copy_inline(w, node, &name, &name, &m);
                    resolve_links(w, node, &name, &m, ok);
                    w.shared.child_done(node.clone());
                }
            } else {
                copy_inline(w, node, &name, &name, &m);
            }
        }
        FileType::Socket => {
            Counters::add(&c.skipped, 1);
            let path = w.shared.src_path(&node.child_rel(&name));
            w.shared.errors.warn(format!(
                "{}: socket skipped (sockets cannot be copied)",
                path.display()
            ));
        }
        FileType::Unknown => {
            let path = w.shared.src_path(&node.child_rel(&name));
            w.report(EntryError::msg("statx", path, "unknown file type"));
        }
    }
}

/// First sighting of a multiply-linked inode returns true (copy it). Later ones are linked now if
/// the first copy is finished, or parked until it is; their parent's pending count (already
/// raised by the caller) is released by whoever links them.
fn register_link(w: &mut Worker, node: &Arc<DirNode>, name: &CString, m: &Meta) -> bool {
    let mut links = w.shared.links.lock().expect("links poisoned");
    match links.get_mut(&(m.dev, m.ino)) {
        None => {
            links.insert((m.dev, m.ino), Link::Pending(Vec::new()));
            true
        }
        Some(Link::Pending(waiters)) => {
            waiters.push((node.clone(), name.clone()));
            false
        }
        Some(Link::Done(dir, first)) => {
            let (dir, first) = (dir.clone(), first.clone());
            drop(links);
            make_link(w, &dir, &first, node, name);
            w.shared.child_done(node.clone());
            false
        }
        Some(Link::Failed) => {
            drop(links);
            if crate::signals::interrupted().is_none() {
                let path = w.shared.dst_path(&node.child_rel(name));
                w.report(EntryError::msg(
                    "link",
                    path,
                    "the first path of this hardlinked file failed to copy",
                ));
            }
            w.shared.child_done(node.clone());
            false
        }
    }
}

/// linkat(first) as `name` in `node`, replacing an existing entry through a temporary name.
pub(super) fn make_link(w: &Worker, dir: &Arc<OwnedFd>, first: &CStr, node: &Arc<DirNode>, name: &CStr) {
    let mut marker = '+';
    let res = match rustix::fs::linkat(&**dir, first, &*node.dst, name, AtFlags::empty()) {
        Err(Errno::EXIST) => {
            if w.shared.listing_changes() {
                let new_type = rustix::fs::statat(&**dir, first, AtFlags::SYMLINK_NOFOLLOW)
                    .map(|st| FileType::from_raw_mode(st.st_mode))
                    .unwrap_or(FileType::RegularFile);
                marker = replaced_marker(&node.dst, name, new_type);
            }
            let tmp = w.shared.tmp_name();
            rustix::fs::linkat(&**dir, first, &*node.dst, &tmp, AtFlags::empty())
                .and_then(|()| rename_over(node, &tmp, name, w.shared.cfg.atomic))
        }
        r => r,
    };
    match res {
        Ok(()) => {
            Counters::add(&w.counters().hardlinks, 1);
            w.shared.note_change(marker, node, name);
        }
        Err(e) => {
            let path = w.shared.dst_path(&node.child_rel(&name.to_owned()));
            w.report(EntryError::new("link", path, e));
        }
    }
}

/// Put a file written under `tmp` at `name`; returns its change marker. A mirror's plan knows
/// what is at `name` (`marker`), and replaces it. A copy that wrote there from the start
/// (`tmp_new`) does not know: a name still free takes it (`+`, without replacing anything
/// that appeared since: RENAME_NOREPLACE); a taken one is replaced (`M`, or `T` for another
/// type when changes are listed) as when the open had found it.
pub(super) fn place(
    w: &Worker,
    node: &DirNode,
    tmp: &CStr,
    name: &CStr,
    marker: char,
) -> Result<char, Errno> {
    let cfg = &w.shared.cfg;
    if cfg.atomic || !cfg.tmp_new || marker != '+' {
        return rename_over(node, tmp, name, cfg.atomic).map(|()| marker);
    }
    let dst = &*node.dst;
    match rename_noreplace(dst, tmp, name) {
        Ok(()) => Ok('+'),
        Err(Errno::EXIST) => {
            let marker = match w.shared.listing_changes() {
                true => replaced_marker(&node.dst, name, FileType::RegularFile),
                false => 'M',
            };
            rename_over(node, tmp, name, false).map(|()| marker)
        }
        Err(e) => {
            let _ = rustix::fs::unlinkat(dst, tmp, AtFlags::empty());
            Err(e)
        }
    }
}

/// Rename `tmp` to `name` in `dir` only if `name` is free (EEXIST if not): RENAME_NOREPLACE,
/// or where the filesystem lacks it (NFS, some FUSE filesystems) a look first, then a rename.
pub(super) fn rename_noreplace(dir: &OwnedFd, tmp: &CStr, name: &CStr) -> Result<(), Errno> {
    crate::failpoint::fail("rename", name.to_bytes())?;
    match rustix::fs::renameat_with(dir, tmp, dir, name, rustix::fs::RenameFlags::NOREPLACE) {
        Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
            match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Err(Errno::NOENT) => rustix::fs::renameat(dir, tmp, dir, name),
                _ => Err(Errno::EXIST),
            }
        }
        r => r,
    }
}

/// Rename `tmp` over `name` in the node's target directory; the temporary is removed on failure.
/// With `replace_dir` (a mirror), a non-empty directory at `name` is replaced too: moved aside,
/// the entry renamed in, then the directory's tree removed; so it stays if the entry fails.
pub(super) fn rename_over(node: &DirNode, tmp: &CStr, name: &CStr, replace_dir: bool) -> Result<(), Errno> {
    let dst = &*node.dst;
    crate::failpoint::fail("rename", name.to_bytes())
        .and_then(|()| rustix::fs::renameat(dst, tmp, dst, name))
        .or_else(|e| match e {
            // A directory stands there: an empty one is replaced (as rsync does); a non-empty one
            // only by a mirror (copy's is not ours to delete, and the error says so).
            Errno::ISDIR => match rustix::fs::unlinkat(dst, name, AtFlags::REMOVEDIR) {
                Ok(()) => rustix::fs::renameat(dst, tmp, dst, name),
                Err(Errno::NOTEMPTY | Errno::EXIST) if replace_dir => {
                    let mut aside = tmp.to_bytes().to_vec();
                    aside.extend_from_slice(b".old");
                    let aside = CString::new(aside).expect("no NUL");
                    rustix::fs::renameat(dst, name, dst, &aside)?;
                    match rustix::fs::renameat(dst, tmp, dst, name) {
                        Ok(()) => {
                            // Its removal failing leaves a temporary name the next mirror deletes.
                            let _ =
                                crate::remove::remove_tree(dst, &aside, rustix::process::geteuid().is_root());
                            Ok(())
                        }
                        Err(e) => {
                            let _ = rustix::fs::renameat(dst, &aside, dst, name);
                            Err(e)
                        }
                    }
                }
                Err(e) => Err(e),
            },
            e => Err(e),
        })
        .inspect_err(|_| {
            let _ = rustix::fs::unlinkat(dst, tmp, AtFlags::empty());
        })
}

/// `M` when the entry at `name` (about to be replaced) has the type `new_type`, else `T`.
pub(super) fn replaced_marker(dir: &OwnedFd, name: &CStr, new_type: FileType) -> char {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) != new_type => 'T',
        _ => 'M',
    }
}

/// Create an entry with `make(name)`; if the name is taken, make it under a temporary name and
/// rename it over the old one, so the old entry is replaced in one step.
/// Returns the change marker: `+` made where nothing was, `M`/`T` replaced (the type of what
/// was replaced is looked up only when changes are listed).
fn create_replacing(
    w: &Worker,
    node: &DirNode,
    name: &CStr,
    new_type: FileType,
    make: impl Fn(&CStr) -> Result<(), Errno>,
) -> Result<char, (&'static str, Errno)> {
    match make(name) {
        Ok(()) => Ok('+'),
        Err(Errno::EXIST) => {
            let marker = match w.shared.listing_changes() {
                true => replaced_marker(&node.dst, name, new_type),
                false => 'M',
            };
            let tmp = w.shared.tmp_name();
            make(&tmp).map_err(|e| ("create", e))?;
            rename_over(node, &tmp, name, w.shared.cfg.atomic).map_err(|e| ("rename", e))?;
            Ok(marker)
        }
        Err(e) => Err(("create", e)),
    }
}

/// Make a symlink, fifo or device node `name` from the source entry `from` and set its
/// metadata. Returns whether it was made.
pub(super) fn copy_inline(
    w: &mut Worker,
    node: &Arc<DirNode>,
    name: &CString,
    from: &CStr,
    m: &Meta,
) -> bool {
    if m.file_type() == FileType::Symlink {
        let target = match rustix::fs::readlinkat(&*node.src, from, Vec::new()) {
            Ok(t) => t,
            Err(e) => {
                w.report(source_error(
                    "readlink",
                    w.shared.src_path(&node.child_rel(name)),
                    e,
                ));
                return false;
            }
        };
        // readlink bumped the source's atime (relatime): copy the atime it has now.
        let mut m = *m;
        if let Ok(stx) = rustix::fs::statx(
            &*node.src,
            from,
            AtFlags::SYMLINK_NOFOLLOW,
            StatxFlags::BASIC_STATS,
        ) {
            if stx.stx_ino == m.ino {
                m.atime = Meta::from_statx(&stx).atime;
            }
        }
        let made = create_replacing(w, node, name, FileType::Symlink, |n| {
            rustix::fs::symlinkat(target.as_c_str(), &*node.dst, n)
        });
        finish_inline(w, node, name, from, &m, made, |c| &c.symlinks)
    } else {
        let made = create_replacing(w, node, name, m.file_type(), |n| {
            let perm = m.perm() & Mode::from_raw_mode(0o777);
            rustix::fs::mknodat(&*node.dst, n, m.file_type(), perm, m.rdev)
        });
        finish_inline(w, node, name, from, m, made, |c| &c.specials)
    }
}

fn finish_inline(
    w: &mut Worker,
    node: &Arc<DirNode>,
    name: &CString,
    from: &CStr,
    m: &Meta,
    made: Result<char, (&'static str, Errno)>,
    counter: impl Fn(&Counters) -> &std::sync::atomic::AtomicU64,
) -> bool {
    let path = || w.shared.dst_path(&node.child_rel(name));
    let marker = match made {
        Ok(m) => m,
        Err((op, e)) => {
            w.report(EntryError::new(op, path(), e));
            return false;
        }
    };
    let (src, dst) = (meta::fd(&*node.src), meta::fd(&*node.dst));
    match meta::apply_at(src, from, dst, name, m, w.shared.preserve, node.inherits_acl) {
        Ok(x) => {
            if x.unsupported {
                w.shared.warn_xattr_unsupported(&path());
            }
            Counters::add(counter(w.counters()), 1);
            w.shared.note_change(marker, node, name);
            true
        }
        Err((step, e)) => {
            w.report(EntryError::new(step.name(), path(), e));
            false
        }
    }
}

/// Create (or reuse) and open a subdirectory on both sides. Returns `None` after reporting if it
/// cannot be done; the parent's pending count is then released here.
pub(super) fn open_child_dir(
    w: &mut Worker,
    parent: Arc<DirNode>,
    name: CString,
    meta: Meta,
) -> Option<Arc<DirNode>> {
    let rel = parent.child_rel(&name);
    let fail = |w: &mut Worker, e: EntryError| {
        w.report(e);
        w.shared.subdir_done(parent.clone());
        None
    };
    let dflags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    // Listing must not change the source's atime either (root may always ask for this).
    let sflags = if w.shared.is_root {
        dflags | OFlags::NOATIME
    } else {
        dflags
    };
    let src = match rustix::fs::openat(&*parent.src, name.as_c_str(), sflags, Mode::empty()) {
        Ok(fd) => fd,
        Err(e) => return fail(w, source_error("open directory", w.shared.src_path(&rel), e)),
    };
    // A name still free gets a staged directory (`Staged`): in a staged parent it is free.
    let free = || {
        parent.staged.is_some()
            || matches!(
                rustix::fs::statat(&*parent.dst, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW),
                Err(Errno::NOENT)
            )
    };
    if w.shared.stages_dirs() && free() {
        let tmp = w.shared.tmp_name();
        let made =
            rustix::fs::mkdirat(&*parent.dst, tmp.as_c_str(), Mode::from_raw_mode(0o700)).and_then(|()| {
                rustix::fs::openat(&*parent.dst, tmp.as_c_str(), dflags, Mode::empty()).inspect_err(|_| {
                    let _ = rustix::fs::unlinkat(&*parent.dst, tmp.as_c_str(), AtFlags::REMOVEDIR);
                })
            });
        let dst = match made {
            Ok(fd) => fd,
            Err(e) => return fail(w, EntryError::new("mkdir", w.shared.dst_path(&rel), e)),
        };
        w.shared.note_change('+', &parent, &name);
        let staged = Some(super::Staged::new(tmp, name));
        // Its publication holds one pending count (`Staged`).
        return Some(new_node(w, parent, rel, src, dst, meta, 2, staged));
    }
    // Owner-only until finished, so a read-only source directory can still be filled.
    let mkdir = || rustix::fs::mkdirat(&*parent.dst, name.as_c_str(), Mode::from_raw_mode(0o700));
    let mut marker = Some('+');
    let existed = match mkdir() {
        Ok(()) => false,
        Err(Errno::EXIST) => true,
        Err(e) => return fail(w, EntryError::new("mkdir", w.shared.dst_path(&rel), e)),
    };
    if existed {
        marker = None;
    }
    let open = || rustix::fs::openat(&*parent.dst, name.as_c_str(), dflags, Mode::empty());
    let mut opened = open();
    if matches!(opened, Err(Errno::NOTDIR) | Err(Errno::LOOP)) {
        // A non-directory stands where the source has a directory: replace it, as a file
        // replaces a file. (Nothing below it can be lost: it has nothing below it.)
        opened = rustix::fs::unlinkat(&*parent.dst, name.as_c_str(), AtFlags::empty())
            .and_then(|()| mkdir())
            .and_then(|()| open());
        marker = Some('T');
    }
    let existed = existed && marker.is_none();
    let dst = match opened {
        Ok(fd) => fd,
        Err(e) => return fail(w, EntryError::new("mkdir", w.shared.dst_path(&rel), e)),
    };
    if let Some(m) = marker {
        w.shared.note_change(m, &parent, &name);
    }
    if existed && !w.shared.is_root {
        // A reused directory may be read-only (a previous copy of a 0555 source): make it
        // writable until finished, as a new one is. If this fails, the creates inside it fail
        // and are reported one by one.
        let _ = rustix::fs::fchmod(&dst, Mode::from_raw_mode(0o700));
    }
    Some(new_node(w, parent, rel, src, dst, meta, 1, None))
}

/// The node of a subdirectory open on both sides, its scan counted in `pending`.
#[allow(clippy::too_many_arguments)]
fn new_node(
    w: &mut Worker,
    parent: Arc<DirNode>,
    rel: std::path::PathBuf,
    src: OwnedFd,
    dst: OwnedFd,
    meta: Meta,
    pending: usize,
    staged: Option<super::Staged>,
) -> Arc<DirNode> {
    Counters::add(&w.counters().dirs, 1);
    let inherits_acl = meta::has_default_acl(meta::fd(&dst));
    let created_gid = super::created_gid(&dst);
    Arc::new(DirNode {
        parent: Some(parent),
        rel,
        src: Arc::new(src),
        dst: Arc::new(dst),
        meta,
        inherits_acl,
        created_gid,
        pending: AtomicUsize::new(pending),
        own_attrs: true,
        staged,
    })
}
