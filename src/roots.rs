//! SRC and DST as the user named them, checked before a run creates anything: overlapping
//! trees, and what SRC is (a tree, or one entry copied like `cp -a`).
//!
//! Must not: create or change anything (a refused run leaves no trace).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::meta::Meta;

/// `(device, inode)` of every existing directory from `p` up to `/`, `p` first. A path that does
/// not exist yet contributes its nearest existing ancestor, which is where it would be made.
fn ancestry(p: &Path) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut cur: PathBuf = std::fs::canonicalize(p)
        .or_else(|_| std::path::absolute(p))
        .unwrap_or_else(|_| p.to_path_buf());
    loop {
        if let Ok(m) = std::fs::metadata(&cur) {
            out.push((m.dev(), m.ino()));
        }
        if !cur.pop() {
            return out;
        }
    }
}

/// Whether DST is SRC or inside it, or SRC inside DST, by directory identity (device and
/// inode), so bind mounts and symlinks are seen through. DST need not exist yet.
pub fn overlap(src: &Path, dst: &Path) -> bool {
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let Some(s) = id(src) else {
        return false;
    };
    // DST (or, when it does not exist yet, the ancestor it will be made in) at or below SRC.
    if ancestry(dst).contains(&s) {
        return true;
    }
    // SRC below DST.
    id(dst).is_some_and(|d| ancestry(src).contains(&d))
}

/// The usage error for overlapping trees, one line naming both paths.
pub fn refuse_overlap(command: &str, src: &Path, dst: &Path) -> Result<(), String> {
    if !overlap(src, dst) {
        return Ok(());
    }
    let why = match command {
        "mirror" => "the mirror would delete its own source",
        _ => "the copy would copy its own output, or overwrite its source",
    };
    Err(format!(
        "{command} {} into {}: source and target overlap (one is the other or inside it, \
         possibly through a bind mount or symlink); refusing, since {why}; nothing was created",
        src.display(),
        dst.display()
    ))
}

/// What SRC names. (Made once per run: the size of `Entry` costs nothing.)
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Source {
    /// A directory (or a symlink to one): its contents go into DST.
    Tree,
    /// One non-directory entry: `from` in directory `src_dir` is copied to `name` in the
    /// existing directory `dst_dir`.
    Entry {
        src_dir: PathBuf,
        from: CString,
        dst_dir: PathBuf,
        name: CString,
        meta: Meta,
    },
}

/// Parent directory and last component of a path (`.` for a bare name).
fn split_path(p: &Path) -> Option<(PathBuf, CString)> {
    let name = p.file_name()?;
    let parent = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Some((parent, CString::new(name.as_bytes()).ok()?))
}

/// Decide what SRC is, like `cp -a SRC DST`: a directory (or a symlink to one) is a tree;
/// anything else is one entry, copied into DST when DST is a directory, else to the name DST
/// (whose parent must exist). A symlink is the entry itself unless `deref` (`-L`), which takes
/// what it points to, under the link's name. SRC that cannot be examined is left to the tree
/// copy, which reports it.
pub fn resolve(src: &Path, dst: &Path, deref: bool) -> Result<Source, String> {
    let Ok(lmeta) = std::fs::symlink_metadata(src) else {
        return Ok(Source::Tree);
    };
    if std::fs::metadata(src).is_ok_and(|m| m.is_dir()) {
        return Ok(Source::Tree);
    }
    let Some((src_parent, src_name)) = split_path(src) else {
        return Err(format!("{}: cannot tell the name of this source", src.display()));
    };
    // What to read: the entry itself, or with -L what a symlink points to.
    let (src_dir, from) = if deref && lmeta.file_type().is_symlink() {
        let real = std::fs::canonicalize(src)
            .map_err(|e| format!("{}: cannot follow the symlink (-L): {e}", src.display()))?;
        split_path(&real).ok_or_else(|| format!("{}: cannot follow the symlink", src.display()))?
    } else {
        (src_parent, src_name.clone())
    };
    let (dst_dir, name) = if std::fs::metadata(dst).is_ok_and(|m| m.is_dir()) {
        (dst.to_path_buf(), src_name)
    } else {
        if dst.as_os_str().as_bytes().ends_with(b"/") {
            return Err(format!(
                "copy {} to {}: DST ends in '/' but is not a directory",
                src.display(),
                dst.display()
            ));
        }
        let (parent, name) =
            split_path(dst).ok_or_else(|| format!("{}: not a name to copy to", dst.display()))?;
        if !std::fs::metadata(&parent).is_ok_and(|m| m.is_dir()) {
            return Err(format!(
                "copy {} to {}: {} is not an existing directory",
                src.display(),
                dst.display(),
                parent.display()
            ));
        }
        (parent, name)
    };
    let stx = rustix::fs::statx(
        rustix::fs::CWD,
        src_dir.join(std::ffi::OsStr::from_bytes(from.as_bytes())),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        rustix::fs::StatxFlags::BASIC_STATS | rustix::fs::StatxFlags::BTIME,
    )
    .map_err(|e| format!("statx {}: {e}", src.display()))?;
    let meta = Meta::from_statx(&stx);
    let target = dst_dir.join(std::ffi::OsStr::from_bytes(name.as_bytes()));
    if let Ok(t) = std::fs::symlink_metadata(&target) {
        if (t.dev(), t.ino()) == (meta.dev, meta.ino) {
            return Err(format!(
                "copy {} to {}: they are the same file; nothing was done",
                src.display(),
                target.display()
            ));
        }
    }
    Ok(Source::Entry {
        src_dir,
        from,
        dst_dir,
        name,
        meta,
    })
}

#[cfg(test)]
mod tests {
    use super::overlap;

    #[test]
    fn nested_and_same_paths_overlap() {
        let t = tempfile::tempdir().unwrap();
        let s = t.path().join("s");
        std::fs::create_dir_all(s.join("inside")).unwrap();
        std::fs::create_dir(t.path().join("other")).unwrap();
        assert!(overlap(&s, &s));
        assert!(overlap(&s, &s.join("inside")));
        assert!(overlap(&s, &s.join("not/yet/made")));
        assert!(overlap(&s.join("inside"), &s));
        assert!(!overlap(&s, &t.path().join("other")));
        assert!(!overlap(&s, &t.path().join("new")));
        std::os::unix::fs::symlink(&s, t.path().join("link")).unwrap();
        assert!(overlap(&s, &t.path().join("link/x")));
    }
}
