//! Seeding the workers with a mirror's plan instead of one root scan.
//!
//! The plan names target directories (which exist by now: the mirror made or renamed them),
//! and per entry what to do. Each directory becomes a [`DirNode`] holding one count for itself
//! until seeding is done, so a directory is finished (owner, xattrs, mode, times) only after
//! every job below it, exactly as in a copy.

use std::ffi::{CStr, CString};
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, StatxFlags};

use super::{scan, source_error, DirNode, Job, Link, Shared, Worker};
use crate::error::EntryError;
use crate::meta::{self, Meta};
use crate::progress::Counters;

/// A directory the plan touches. `dirs[0]` is the root; parents come before children.
#[derive(Debug, Clone)]
pub struct PlanDir {
    pub parent: usize,
    pub name: CString,
    /// Relative path, for messages.
    pub rel: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Copy a regular file (temporary name, then rename over whatever is there).
    Copy,
    /// Create and copy a whole directory tree.
    Subtree,
    /// Make a symlink, fifo or device node.
    Inline,
    /// Only owner, xattrs, mode and times of an existing non-directory.
    Attrs,
}

#[derive(Debug, Clone)]
pub struct PlanItem {
    pub dir: usize,
    pub name: CString,
    pub meta: Meta,
    pub action: Action,
    /// The source entry's name when it differs from `name` (a single-entry copy).
    pub from: Option<CString>,
}

/// A hardlinked inode (source `meta.dev`, `meta.ino`).
#[derive(Debug, Clone)]
pub enum LinkPlan {
    /// Copy it at `first`, then link every other path to that copy.
    Rebuild {
        meta: Meta,
        first: (usize, CString),
        rest: Vec<(usize, CString)>,
    },
    /// The target already has this inode at `at`: link new paths (`add`, and any that a
    /// subtree copy finds) to it.
    Existing {
        meta: Meta,
        at: (usize, CString),
        add: Vec<(usize, CString)>,
    },
}

#[derive(Debug, Default)]
pub struct Plan {
    pub dirs: Vec<PlanDir>,
    pub items: Vec<PlanItem>,
    pub links: Vec<LinkPlan>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.dirs.len() <= 1 && self.items.is_empty() && self.links.is_empty()
    }
}

/// Open `name` below `parent` on both sides, as a node holding one count for itself.
fn open_node(shared: &Shared, parent: &Arc<DirNode>, d: &PlanDir) -> Result<Arc<DirNode>, EntryError> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let sflags = if shared.is_root {
        flags | OFlags::NOATIME
    } else {
        flags
    };
    let src = rustix::fs::openat(&*parent.src, d.name.as_c_str(), sflags, Mode::empty())
        .map_err(|e| source_error("open directory", shared.src_path(&d.rel), e))?;
    let dst = rustix::fs::openat(&*parent.dst, d.name.as_c_str(), flags, Mode::empty())
        .map_err(|e| EntryError::new("open directory", shared.dst_path(&d.rel), e))?;
    let stx = rustix::fs::statx(&src, c"", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS)
        .map_err(|e| source_error("statx", shared.src_path(&d.rel), e))?;
    if !shared.is_root {
        // A read-only target directory must take new entries until it is finished.
        let _ = rustix::fs::fchmod(&dst, Mode::from_raw_mode(0o700));
    }
    parent.add_subdir();
    Ok(Arc::new(DirNode {
        parent: Some(parent.clone()),
        rel: d.rel.clone(),
        inherits_acl: meta::has_default_acl(meta::fd(&dst)),
        created_gid: super::created_gid(&dst),
        src: Arc::new(src),
        dst: Arc::new(dst),
        meta: Meta::from_statx(&stx),
        pending: AtomicUsize::new(1),
        own_attrs: true,
        staged: None,
    }))
}

/// Queue the plan's jobs. Directories that cannot be opened are reported, and what lies below
/// them is skipped.
pub(super) fn seed(shared: &Arc<Shared>, root: Arc<DirNode>, plan: Plan) {
    let mut nodes: Vec<Option<Arc<DirNode>>> = Vec::with_capacity(plan.dirs.len().max(1));
    nodes.push(Some(root));
    for d in plan.dirs.iter().skip(1) {
        let node = match nodes[d.parent].clone() {
            Some(parent) => match open_node(shared, &parent, d) {
                Ok(n) => Some(n),
                Err(e) => {
                    shared.errors.report(e);
                    None
                }
            },
            None => None,
        };
        nodes.push(node);
    }
    let push = |node: &Arc<DirNode>, job: Job| {
        match job {
            Job::Dir { .. } => node.add_subdir(),
            _ => node.add_entry(),
        }
        shared.new_job();
        shared.queue.push(job);
    };
    // The plan's files are the totals of the progress line (new subtrees add theirs as they
    // are scanned).
    let c = &shared.counters[0];
    for item in &plan.items {
        match item.action {
            Action::Copy => {
                Counters::add(&c.files_found, 1);
                Counters::add(&c.bytes_found, item.meta.size);
            }
            Action::Inline | Action::Attrs | Action::Subtree => {}
        }
    }
    for l in &plan.links {
        if let LinkPlan::Rebuild { meta, .. } = l {
            if meta.file_type() == FileType::RegularFile {
                Counters::add(&c.files_found, 1);
                Counters::add(&c.bytes_found, meta.size);
            }
        }
    }
    for item in plan.items {
        let Some(node) = nodes[item.dir].clone() else {
            continue;
        };
        if item.action == Action::Subtree {
            shared.scan_queued();
        }
        let (parent, name, meta, from) = (node.clone(), item.name, item.meta, item.from);
        let job = match item.action {
            Action::Copy => Job::File {
                parent,
                name,
                meta,
                from,
            },
            Action::Subtree => Job::Dir { parent, name, meta },
            Action::Inline => Job::Inline {
                parent,
                name,
                meta,
                from,
            },
            Action::Attrs => Job::Attrs { parent, name, meta },
        };
        push(&node, job);
    }
    for l in plan.links {
        match l {
            LinkPlan::Rebuild { meta, first, rest } => {
                let Some(first_node) = nodes[first.0].clone() else {
                    continue;
                };
                let waiters: Vec<_> = rest
                    .into_iter()
                    .filter_map(|(d, name)| {
                        let n = nodes[d].clone()?;
                        n.add_entry();
                        Some((n, name))
                    })
                    .collect();
                shared
                    .links
                    .lock()
                    .expect("links poisoned")
                    .insert((meta.dev, meta.ino), Link::Pending(waiters));
                let (parent, name) = (first_node.clone(), first.1);
                let job = if meta.file_type() == FileType::RegularFile {
                    Job::File {
                        parent,
                        name,
                        meta,
                        from: None,
                    }
                } else {
                    Job::Inline {
                        parent,
                        name,
                        meta,
                        from: None,
                    }
                };
                push(&first_node, job);
            }
            LinkPlan::Existing { meta, at, add } => {
                let Some(at_node) = nodes[at.0].clone() else {
                    continue;
                };
                shared.links.lock().expect("links poisoned").insert(
                    (meta.dev, meta.ino),
                    Link::Done(at_node.dst.clone(), at.1.clone()),
                );
                for (d, name) in add {
                    let Some(node) = nodes[d].clone() else { continue };
                    let job = Job::Link {
                        parent: node.clone(),
                        name,
                        dir: at_node.dst.clone(),
                        first: at.1.clone(),
                    };
                    push(&node, job);
                }
            }
        }
    }
    // Release each directory's own count, deepest first.
    for node in nodes.into_iter().rev().flatten() {
        shared.child_done(node);
    }
}

/// A symlink, fifo or device node (`from` in the source directory), then its waiting
/// hardlinks.
pub(super) fn inline(w: &mut Worker, parent: &Arc<DirNode>, name: &CString, from: &CStr, m: &Meta) {
    let ok = scan::copy_inline(w, parent, name, from, m);
    super::resolve_links(w, parent, name, m, ok);
}

/// Owner, xattrs (extra ones pruned), mode and times onto an existing entry.
pub(super) fn attrs(w: &mut Worker, parent: &Arc<DirNode>, name: &CString, m: &Meta) {
    let (src, dst) = (meta::fd(&*parent.src), meta::fd(&*parent.dst));
    let path = || w.shared.dst_path(&parent.child_rel(name));
    match meta::apply_at(src, name, dst, name, m, w.shared.preserve, true) {
        Ok(x) => {
            if x.unsupported {
                w.shared.warn_xattr_unsupported(&path());
            }
        }
        Err((step, e)) => w.report(EntryError::new(step.name(), path(), e)),
    }
}
