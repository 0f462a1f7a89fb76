//! `ringsync send --from PREV SRC`: the records that take a receiver from PREV's state to
//! SRC's (docs/stream.md, section 2.3).
//!
//! The diff walk (`crate::diff::walk`, with renames where inode identity holds) says what
//! changed. The stream then has two parts, both depth first with names sorted bytewise:
//! 1. over PREV's tree, children before their directory: every renamed entry is taken to the
//!    holding directory (RENAME to [`stream::HOLD_DIR`] under a number), every deleted one is
//!    UNLINKed;
//! 2. over SRC's tree: renamed entries come back from the holding directory to their new
//!    names; created, modified and retyped entries are sent whole (as a full stream sends
//!    them; a new directory with everything in it); attribute changes of other entries are
//!    ATTRS; every directory on the way to a change is entered with DIR and its attributes
//!    set again at its DIR_END.
//!
//! Must not: write anything; follow a symlink in either tree.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

use rustix::fs::{FileType, Mode, OFlags};

use super::{fstatx, meta_of, open_entry, statx_at, Failure, Sender};
use crate::diff::{self, join, Kind, WalkOpts};
use crate::error::ErrorLog;
use crate::meta::Preserve;
use crate::ring::EngineKind;
use crate::stream::{self, Record};

/// What happens to an entry of PREV.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OldOp {
    /// Taken to the holding directory under this number.
    Hold(u64),
    Unlink,
}

/// What happens at a path of SRC.
#[derive(Default, Clone, Copy)]
struct NewOp {
    /// Brought back from the holding directory.
    from_hold: Option<u64>,
    /// Sent whole (created, content changed, another type, its hardlink group changed).
    whole: bool,
    /// Attributes changed.
    attrs: bool,
}

/// The changes from PREV to SRC, by path.
pub struct Plan {
    /// PREV, when it is a directory here (`None`: a listing of a tree elsewhere, compared
    /// without renames).
    prev: Option<std::path::PathBuf>,
    old_ops: HashMap<Vec<u8>, OldOp>,
    /// PREV: directory path → names below it to visit.
    old_children: BTreeMap<Vec<u8>, BTreeSet<Vec<u8>>>,
    /// PREV: directories with an entry taken to the holding directory somewhere below.
    hold_below: HashSet<Vec<u8>>,
    new_ops: HashMap<Vec<u8>, NewOp>,
    /// SRC: directory path → names below it to visit.
    new_children: BTreeMap<Vec<u8>, BTreeSet<Vec<u8>>>,
    /// Without PREV here: the listed attributes of directories that do not stay (entered
    /// when a file moves out of them).
    old_dirs: HashMap<Vec<u8>, crate::meta::Meta>,
    bytes: u64,
}

/// DIR of a directory that exists at the receiver; its id (the next one).
fn enter(s: &mut Sender, parent: u64, name: &[u8], meta: stream::Meta) -> Result<u64, Failure> {
    s.next_dir += 1;
    s.put(&Record::Dir {
        parent,
        name: name.to_vec(),
        meta,
    })?;
    Ok(s.next_dir)
}

fn parents(path: &[u8], mut f: impl FnMut(&[u8], &[u8])) {
    let mut p = path;
    while !p.is_empty() {
        let (parent, name) = diff::split(p);
        f(parent, name);
        p = parent;
    }
}

/// Check PREV, take its state id, and diff it against SRC.
pub fn prepare(prev: &Path, src: &Path, engine: EngineKind, quiet: bool) -> Result<([u8; 16], Plan), String> {
    let fd = rustix::fs::open(
        prev,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("open: {e}"))?;
    let (_, base) = super::state_id(&fd);
    let base = base.ok_or(
        "it changed moments ago or could not be read in full: it must be the unchanged \
         directory whose stream the receiver applied last (a snapshot)",
    )?;
    // Compare what the stream carries (owners and every xattr the sender can read), whoever
    // runs it: a receiver as root applies them.
    let opts = WalkOpts {
        threads: diff::walk_threads(2),
        engine: diff::walk_engine(crate::config::EngineChoice::Auto, engine),
        checksum: false,
        renames: crate::mirror::inode_identity_holds(prev, src),
        // Every entry of a new directory is listed, so that hardlink groups reaching into one
        // are seen.
        expand: true,
        owner: true,
        preserve: Preserve {
            owner: true,
            all_xattrs: true,
        },
        changed_since: None,
        skip_new_sockets: true,
        filter: Default::default(),
        copy_view: false,
        seen: Default::default(),
        scope: None,
    };
    let errors = ErrorLog::new(quiet);
    let d = diff::walk(Some(prev), src, &opts, &errors).map_err(|e| e.to_string())?;
    if errors.errors() > 0 {
        return Err(format!(
            "{} entries could not be compared; send a full stream",
            errors.errors()
        ));
    }
    if let Some(s) = crate::signals::interrupted() {
        return Err(format!("stopped by {}", crate::signals::name(s)));
    }
    Ok((base, Plan::new(Some(prev.to_path_buf()), &d.changes)))
}

/// The plan of an incremental stream against a receiver's listing (`crate::listing`).
pub fn against(a: &crate::listing::Against) -> Plan {
    Plan::new(None, &a.changes)
}

impl Plan {
    fn new(prev: Option<std::path::PathBuf>, changes: &[diff::Change]) -> Plan {
        let d_changes = changes;
        let mut plan = Plan {
            prev,
            old_ops: HashMap::new(),
            old_children: BTreeMap::new(),
            hold_below: HashSet::new(),
            new_ops: HashMap::new(),
            new_children: BTreeMap::new(),
            old_dirs: HashMap::new(),
            bytes: 0,
        };
        let listing = plan.prev.is_none();
        // Holding names numbered in the order of the old paths: the same trees always give the
        // same stream (a resumed stream must), whatever order the walk found them in.
        let mut renames: Vec<(&[u8], &[u8])> = d_changes
            .iter()
            .filter(|c| c.kind == Kind::Renamed)
            .map(|c| (c.old_path.as_slice(), c.path.as_slice()))
            .collect();
        renames.sort_unstable();
        for (k, (old, new)) in renames.into_iter().enumerate() {
            let k = k as u64 + 1;
            plan.old_ops.insert(old.to_vec(), OldOp::Hold(k));
            let op = plan.new_ops.entry(new.to_vec()).or_default();
            op.from_hold = Some(k);
            // A file moved across machines (`crate::moves`): its attributes, xattrs included,
            // are set again (the listing has only their digest).
            op.attrs |= listing;
        }
        for c in d_changes {
            if c.path.is_empty() && c.old_path.is_empty() {
                // The root's attributes: its DIR_END always carries them.
                continue;
            }
            let sent_whole = |plan: &mut Plan| {
                if let Some(m) = &c.new {
                    if m.file_type() == FileType::RegularFile {
                        plan.bytes += m.size;
                    }
                }
            };
            if listing && matches!(c.kind, Kind::Deleted | Kind::Type) {
                if let Some(m) = c.old.filter(|m| m.file_type() == FileType::Directory) {
                    plan.old_dirs.insert(c.old_path.clone(), m);
                }
            }
            match c.kind {
                Kind::Renamed => {}
                Kind::Deleted => {
                    plan.old_ops.entry(c.old_path.clone()).or_insert(OldOp::Unlink);
                }
                Kind::Type => {
                    plan.old_ops.entry(c.old_path.clone()).or_insert(OldOp::Unlink);
                    plan.new_ops.entry(c.path.clone()).or_default().whole = true;
                    sent_whole(&mut plan);
                }
                Kind::Created | Kind::Modified | Kind::Link => {
                    plan.new_ops.entry(c.path.clone()).or_default().whole = true;
                    sent_whole(&mut plan);
                }
                Kind::Attrs => plan.new_ops.entry(c.path.clone()).or_default().attrs = true,
            }
        }
        for (p, op) in &plan.old_ops {
            let hold = matches!(op, OldOp::Hold(_));
            parents(p, |parent, name| {
                plan.old_children
                    .entry(parent.to_vec())
                    .or_default()
                    .insert(name.to_vec());
                if hold {
                    plan.hold_below.insert(parent.to_vec());
                }
            });
        }
        for p in plan.new_ops.keys() {
            parents(p, |parent, name| {
                plan.new_children
                    .entry(parent.to_vec())
                    .or_default()
                    .insert(name.to_vec());
            });
        }
        plan
    }

    /// (bytes, entries) for ESTIMATE: what is sent whole, and the entries with changes.
    pub fn estimate(&self) -> (u64, u64) {
        (self.bytes, (self.old_ops.len() + self.new_ops.len()) as u64)
    }

    /// Send the incremental records (the root's XATTRs came before; the root's DIR_END is
    /// sent here).
    pub fn run(&self, s: &mut Sender, root: Arc<OwnedFd>) -> Result<(), Failure> {
        let prev = match &self.prev {
            Some(p) => Some(
                rustix::fs::open(
                    p,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| Failure::Fatal(format!("open {}: {e}", p.display())))?,
            ),
            None => None,
        };
        let root_meta =
            fstatx(&root).map_err(|e| Failure::Fatal(format!("statx {}: {e}", s.src.display())))?;
        s.xattrs(&root, c".", b"")?;
        self.old_dir(s, prev.as_ref(), Some(&root), 0, b"")?;
        self.new_dir(s, &root, 0, b"", false)?;
        s.put(&Record::DirEnd {
            dir: 0,
            meta: meta_of(&root_meta),
        })
    }

    /// Part 1 in PREV's directory `rel` (open as `fd`, id `id`); `src` is the same directory
    /// in SRC when it is there, whose attributes its DIR_END then carries. Without PREV here
    /// (a listing, no renames) a directory is entered only where it stays, so SRC's stands
    /// for it.
    fn old_dir(
        &self,
        s: &mut Sender,
        fd: Option<&OwnedFd>,
        src: Option<&OwnedFd>,
        id: u64,
        rel: &[u8],
    ) -> Result<(), Failure> {
        let Some(names) = self.old_children.get(rel) else {
            return Ok(());
        };
        for name in names {
            let p = join(rel, name);
            let op = self.old_ops.get(&p).copied();
            let n = CString::new(name.as_slice()).expect("names have no NUL");
            // Descend where something below changes, unless the directory goes as a whole
            // (UNLINK) and nothing below it is taken to the holding directory first.
            let descend = self.old_children.contains_key(&p)
                && (op != Some(OldOp::Unlink) || self.hold_below.contains(&p));
            if descend && fd.is_none() && (src.is_none() || op.is_some()) {
                // A listed directory that does not stay, with a file moving out of it: entered
                // with its listed attributes (it goes right after).
                let Some(m) = self.old_dirs.get(&p) else {
                    return Err(Failure::Fatal(format!(
                        "{}: a directory of the listing that is not in the plan",
                        diff::full(s.src, &p).display()
                    )));
                };
                let meta = meta_of(m);
                let cid = enter(s, id, name, meta)?;
                self.old_dir(s, None, None, cid, &p)?;
                s.put(&Record::DirEnd { dir: cid, meta })?;
                s.maybe_checkpoint()?;
            } else if descend {
                let (root, fd) = match fd {
                    Some(fd) => (self.prev.as_deref().expect("PREV open"), fd),
                    None => (
                        s.src,
                        src.expect("a listing's directories are entered where they stay"),
                    ),
                };
                let fail = |e| Failure::Fatal(format!("{}: {e}", diff::full(root, &p).display()));
                let m = statx_at(fd, &n).map_err(|e| fail(format!("statx: {e}")))?;
                if m.file_type() != FileType::Directory {
                    return Err(fail(
                        "not a directory any more (it changed since the comparison)".into(),
                    ));
                }
                let child = open_entry(fd, &n, OFlags::DIRECTORY).map_err(|e| fail(format!("open: {e}")))?;
                // The same directory in SRC, when it stays where it is.
                let src_child = match (op, src) {
                    (None, Some(sd)) => open_entry(sd, &n, OFlags::DIRECTORY).ok(),
                    _ => None,
                };
                let (meta, xdir) = match src_child
                    .as_ref()
                    .and_then(|_| src.map(|sd| (statx_at(sd, &n), sd)))
                {
                    Some((Ok(sm), sd)) if sm.file_type() == FileType::Directory => (meta_of(&sm), sd),
                    _ => (meta_of(&m), fd),
                };
                let cid = enter(s, id, name, meta)?;
                s.xattrs(xdir, &n, &p)?;
                let prev_child = self.prev.is_some().then_some(&child);
                self.old_dir(s, prev_child, src_child.as_ref(), cid, &p)?;
                s.put(&Record::DirEnd { dir: cid, meta })?;
                s.maybe_checkpoint()?;
            }
            match op {
                Some(OldOp::Hold(k)) => s.put(&Record::Rename {
                    from_dir: id,
                    from: name.clone(),
                    to_dir: stream::HOLD_DIR,
                    to: k.to_string().into_bytes(),
                })?,
                Some(OldOp::Unlink) => s.put(&Record::Unlink {
                    parent: id,
                    name: name.clone(),
                })?,
                None => continue,
            }
            s.maybe_checkpoint()?;
        }
        Ok(())
    }

    /// Part 2 in SRC's directory `rel` (open as `fd`, id `id`). `all`: a directory sent
    /// whole: every entry in it is sent (those brought back from the holding directory
    /// excepted).
    fn new_dir(
        &self,
        s: &mut Sender,
        fd: &Arc<OwnedFd>,
        id: u64,
        rel: &[u8],
        all: bool,
    ) -> Result<(), Failure> {
        // A new directory of SRC: everything in it, as read now; but against a listing, what
        // the walk took (filters may have left entries out, and the walk lists every entry
        // of a new directory).
        let names: Vec<Vec<u8>> = if all && self.prev.is_some() {
            match super::sorted_names(fd) {
                Ok(n) => n.into_iter().map(|c| c.into_bytes()).collect(),
                Err(e) => {
                    return Err(Failure::Fatal(format!(
                        "read directory {}: {e}",
                        diff::full(s.src, rel).display()
                    )))
                }
            }
        } else {
            match self.new_children.get(rel) {
                Some(n) => n.iter().cloned().collect(),
                None => return Ok(()),
            }
        };
        for name in names {
            let p = join(rel, &name);
            let op = self.new_ops.get(&p).copied().unwrap_or_default();
            let n = CString::new(name.clone()).expect("names have no NUL");
            if let Some(k) = op.from_hold {
                s.put(&Record::Rename {
                    from_dir: stream::HOLD_DIR,
                    from: k.to_string().into_bytes(),
                    to_dir: id,
                    to: name.clone(),
                })?;
                s.counts
                    .entries
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let whole = op.whole || (all && op.from_hold.is_none());
            let m = match statx_at(fd, &n) {
                Ok(m) => m,
                Err(rustix::io::Errno::NOENT) => {
                    return Err(Failure::Fatal(format!(
                        "{}: vanished (SRC changed since the comparison); send again",
                        diff::full(s.src, &p).display()
                    )))
                }
                Err(e) => {
                    s.skip(id, &p, &n, format!("statx: {e}"))?;
                    continue;
                }
            };
            if m.file_type() == FileType::Directory {
                // Sent whole (new), or entered: the way to changes, or its own attributes.
                let Some(frame) = s.entry(fd, id, &n, p.clone())? else {
                    continue;
                };
                let sub_all = whole && op.from_hold.is_none();
                self.new_dir(s, &frame.fd, frame.id, &p, sub_all)?;
                s.put(&Record::DirEnd {
                    dir: frame.id,
                    meta: frame.meta,
                })?;
            } else if whole {
                s.entry(fd, id, &n, p.clone())?;
            } else if op.attrs {
                s.put(&Record::Attrs {
                    parent: id,
                    name: name.clone(),
                    meta: meta_of(&m),
                })?;
                s.xattrs(fd, &n, &p)?;
            }
            s.maybe_checkpoint()?;
        }
        Ok(())
    }
}
