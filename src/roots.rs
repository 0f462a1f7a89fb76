//! SRC and DST as the user named them, checked before a run creates anything.
//!
//! Must not: create or change anything (a refused run leaves no trace).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

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
