//! From a change set to the work that makes DST equal SRC.
//!
//! Two parts: steps the mirror does itself, in order, before any data moves (renames out to a
//! staging directory deepest first; deletes of whole subtrees; making directories and renaming
//! staged entries into place shallowest first), and an engine [`Plan`] for the rest (copies to
//! temporary names renamed into place, new subtrees, symlinks and nodes, attribute updates,
//! hardlinks), after which every touched directory gets its attributes, children first.

use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use rustix::fs::FileType;

use crate::diff::{join, split, Change, Diff, Kind, LinkGroups};
use crate::engine::{Action, LinkPlan, Plan, PlanDir, PlanItem};
use crate::meta::Meta;

/// A step done before the engine runs. Paths are relative to DST's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Move an entry out of the way into the staging directory, as entry number `k`.
    Stage { from: Vec<u8>, k: usize },
    /// Remove an entry and everything below it.
    Remove(Vec<u8>),
    /// Make an (owner-only, finished later) directory.
    Mkdir(Vec<u8>),
    /// Move staged entry `k` to its new path.
    Place { k: usize, to: Vec<u8> },
}

/// How many changes of each kind the plan carries out.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub created: u64,
    pub deleted: u64,
    pub modified: u64,
    pub attrs: u64,
    pub renamed: u64,
    pub relinked: u64,
}

pub struct Work {
    pub steps: Vec<Step>,
    pub plan: Plan,
    pub counts: Counts,
}

fn depth(p: &[u8]) -> usize {
    if p.is_empty() {
        0
    } else {
        p.iter().filter(|b| **b == b'/').count() + 1
    }
}

/// Proper ancestors of a relative path, nearest first.
fn ancestors(p: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut cur = p;
    std::iter::from_fn(move || {
        if cur.is_empty() {
            return None;
        }
        cur = split(cur).0;
        Some(cur)
    })
}

fn is_dir(m: &Option<Meta>) -> bool {
    m.is_some_and(|m| m.file_type() == FileType::Directory)
}

fn cname(b: &[u8]) -> CString {
    CString::new(b).expect("names have no NUL")
}

struct Dirs {
    dirs: Vec<PlanDir>,
    index: HashMap<Vec<u8>, usize>,
}

impl Dirs {
    fn new() -> Dirs {
        let mut index = HashMap::new();
        index.insert(Vec::new(), 0);
        Dirs {
            dirs: vec![PlanDir {
                parent: 0,
                name: CString::default(),
                rel: PathBuf::new(),
            }],
            index,
        }
    }

    /// The plan index of directory `rel`, adding it and its ancestors as needed.
    fn get(&mut self, rel: &[u8]) -> usize {
        if let Some(&i) = self.index.get(rel) {
            return i;
        }
        let (parent, name) = split(rel);
        let parent = self.get(parent);
        let i = self.dirs.len();
        self.dirs.push(PlanDir {
            parent,
            name: cname(name),
            rel: PathBuf::from(OsStr::from_bytes(rel)),
        });
        self.index.insert(rel.to_vec(), i);
        i
    }

    fn at(&mut self, path: &[u8]) -> (usize, CString) {
        let (parent, name) = split(path);
        (self.get(parent), cname(name))
    }
}

/// Build the work for `diff` (OLD = what DST holds now, NEW = SRC). `staging` is the staging
/// directory's name in DST's root (used only when there are renames).
/// `dirs_last`: a directory that becomes a non-directory is not removed up front but replaced
/// by the engine once the new entry is complete (`engine::scan::rename_over`), so a failed
/// entry leaves the directory; not when filters protect entries (the removal must keep them).
pub fn build(diff: &Diff, staging: &[u8], dirs_last: bool) -> Work {
    let changes = &diff.changes;
    let mut steps = Vec::new();
    let mut counts = Counts::default();
    let mut dirs = Dirs::new();
    let mut items = Vec::new();

    // Renames: staged deepest first, placed shallowest first (with new directories).
    let renames: Vec<&Change> = changes.iter().filter(|c| c.kind == Kind::Renamed).collect();
    counts.renamed = renames.len() as u64;
    let mut staged: HashMap<&[u8], usize> = HashMap::new();
    let mut order: Vec<usize> = (0..renames.len()).collect();
    order.sort_by_key(|&k| std::cmp::Reverse(depth(&renames[k].old_path)));
    for &k in &order {
        steps.push(Step::Stage {
            from: renames[k].old_path.clone(),
            k,
        });
        staged.insert(&renames[k].old_path, k);
    }
    // Where an OLD path is once everything renamed has been staged.
    let staged_at = |old: &[u8]| -> Vec<u8> {
        let mut cut = old;
        let mut rest_start = old.len();
        loop {
            if let Some(&k) = staged.get(cut) {
                let mut p = join(staging, k.to_string().as_bytes());
                if rest_start < old.len() {
                    p = join(&p, &old[rest_start + 1..]);
                }
                return p;
            }
            if cut.is_empty() {
                return old.to_vec();
            }
            let parent = split(cut).0;
            rest_start = parent.len();
            cut = parent;
        }
    };
    let mut rename_parents: HashSet<&[u8]> = HashSet::new();
    for r in &renames {
        rename_parents.extend(ancestors(&r.path));
    }

    // Created directories: copied whole unless something is renamed into them.
    let mut by_depth: Vec<&Change> = changes.iter().collect();
    by_depth.sort_by_key(|c| depth(&c.path));
    let mut subtrees: HashSet<&[u8]> = HashSet::new();
    let covered = |subtrees: &HashSet<&[u8]>, p: &[u8]| ancestors(p).any(|a| subtrees.contains(a));
    let mut places: Vec<(usize, Step)> = Vec::new();
    for c in &by_depth {
        if !matches!(c.kind, Kind::Created | Kind::Type) || !is_dir(&c.new) || covered(&subtrees, &c.path) {
            continue;
        }
        if rename_parents.contains(c.path.as_slice()) {
            places.push((depth(&c.path), Step::Mkdir(c.path.clone())));
            dirs.get(&c.path);
        } else {
            let (dir, name) = dirs.at(&c.path);
            items.push(PlanItem {
                dir,
                name,
                meta: c.new.expect("created"),
                action: Action::Subtree,
                from: None,
            });
            subtrees.insert(&c.path);
        }
    }
    for r in &renames {
        places.push((
            depth(&r.path),
            Step::Place {
                k: 0,
                to: r.path.clone(),
            },
        ));
    }
    // Place steps carry their rename number.
    let rename_no: HashMap<&[u8], usize> = renames
        .iter()
        .enumerate()
        .map(|(k, r)| (r.path.as_slice(), k))
        .collect();
    for (_, s) in places.iter_mut() {
        if let Step::Place { k, to } = s {
            *k = rename_no[to.as_slice()];
        }
    }

    // Deletes: topmost only, at their post-staging location (an entry inside a renamed
    // directory is not covered by removing the directory it was renamed out of).
    let removes =
        |c: &Change| c.kind == Kind::Deleted || (c.kind == Kind::Type && (is_dir(&c.old) || is_dir(&c.new)));
    let removed_at: HashSet<Vec<u8>> = changes
        .iter()
        .filter(|c| removes(c))
        .map(|c| staged_at(&c.old_path))
        .collect();
    for c in changes {
        if !removes(c) {
            continue;
        }
        let at = staged_at(&c.old_path);
        if ancestors(&at).any(|a| removed_at.contains(a)) {
            continue;
        }
        if dirs_last && c.kind == Kind::Type && is_dir(&c.old) && !is_dir(&c.new) && at == c.path {
            continue;
        }
        steps.push(Step::Remove(at));
        if c.kind == Kind::Deleted {
            counts.deleted += 1;
            dirs.get(split(&c.path).0);
        }
    }
    places.sort_by_key(|(d, _)| *d);
    steps.extend(places.into_iter().map(|(_, s)| s));

    // Entries handled one by one; hardlinked ones go by group below.
    let in_links: HashSet<&[u8]> = diff.links.iter().map(|e| e.path.as_slice()).collect();
    for c in changes {
        if covered(&subtrees, &c.path) {
            continue;
        }
        let linked = in_links.contains(c.path.as_slice());
        match c.kind {
            Kind::Created | Kind::Type | Kind::Modified => {
                match c.kind {
                    Kind::Modified => counts.modified += 1,
                    _ => counts.created += 1,
                }
                let m = c.new.expect("new side");
                if m.file_type() == FileType::Directory {
                    // Created ones were planned above (subtree, or made and filled here).
                    if c.kind == Kind::Modified {
                        dirs.get(&c.path);
                    }
                    continue;
                }
                if linked {
                    continue;
                }
                let (dir, name) = dirs.at(&c.path);
                let action = if m.file_type() == FileType::RegularFile {
                    Action::Copy
                } else {
                    Action::Inline
                };
                items.push(PlanItem {
                    dir,
                    name,
                    meta: m,
                    action,
                    from: None,
                });
            }
            Kind::Attrs => {
                counts.attrs += 1;
                let m = c.new.expect("new side");
                if m.file_type() == FileType::Directory {
                    dirs.get(&c.path);
                } else if !linked {
                    let (dir, name) = dirs.at(&c.path);
                    items.push(PlanItem {
                        dir,
                        name,
                        meta: m,
                        action: Action::Attrs,
                        from: None,
                    });
                }
            }
            Kind::Renamed => {
                dirs.get(split(&c.path).0);
                if is_dir(&c.new) {
                    dirs.get(&c.path);
                }
            }
            Kind::Link => counts.relinked += 1,
            Kind::Deleted => {}
        }
    }

    // Hardlink groups (by source inode).
    let modified: HashSet<&[u8]> = changes
        .iter()
        .filter(|c| c.kind == Kind::Modified)
        .map(|c| c.path.as_slice())
        .collect();
    let attrs: HashSet<&[u8]> = changes
        .iter()
        .filter(|c| c.kind == Kind::Attrs)
        .map(|c| c.path.as_slice())
        .collect();
    let has_subtrees = !subtrees.is_empty();
    let groups = LinkGroups::new(&diff.links);
    let mut links = Vec::new();
    for members in groups.groups() {
        let members: Vec<usize> = members
            .iter()
            .copied()
            .filter(|&i| !covered(&subtrees, &diff.links[i].path))
            .collect();
        let Some(&first) = members.first() else { continue };
        let e = |i: usize| &diff.links[i];
        let meta = e(first).new_meta;
        let (kept, created): (Vec<usize>, Vec<usize>) = members.iter().partition(|&&i| e(i).old.is_some());
        let mut kept_paths: Vec<&[u8]> = kept.iter().map(|&i| e(i).path.as_slice()).collect();
        kept_paths.sort_unstable();
        // The kept paths already share one target inode, exactly they, with unchanged data.
        let intact = !kept.is_empty()
            && kept.iter().all(|&i| {
                let mut old: Vec<&[u8]> = groups
                    .old_group(i)
                    .iter()
                    .map(|&j| e(j).path.as_slice())
                    .collect();
                old.sort_unstable();
                old == kept_paths && !modified.contains(e(i).path.as_slice())
            });
        if intact {
            if kept.iter().any(|&i| attrs.contains(e(i).path.as_slice())) {
                let (dir, name) = dirs.at(&e(kept[0]).path);
                items.push(PlanItem {
                    dir,
                    name,
                    meta,
                    action: Action::Attrs,
                    from: None,
                });
            }
            if !created.is_empty() || has_subtrees {
                links.push(LinkPlan::Existing {
                    meta,
                    at: dirs.at(&e(kept[0]).path),
                    add: created.iter().map(|&i| dirs.at(&e(i).path)).collect(),
                });
            }
        } else {
            let first = kept.first().or(created.first()).copied().expect("non-empty");
            links.push(LinkPlan::Rebuild {
                meta: e(first).new_meta,
                first: dirs.at(&e(first).path),
                rest: members
                    .iter()
                    .filter(|&&i| i != first)
                    .map(|&i| dirs.at(&e(i).path))
                    .collect(),
            });
        }
    }

    Work {
        steps,
        plan: Plan {
            dirs: dirs.dirs,
            items,
            links,
        },
        counts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestors_nearest_first() {
        let a: Vec<&[u8]> = ancestors(b"a/b/c").collect();
        assert_eq!(a, vec![&b"a/b"[..], b"a", b""]);
        assert_eq!(ancestors(b"").count(), 0);
        assert_eq!(depth(b""), 0);
        assert_eq!(depth(b"a/b"), 2);
    }
}
