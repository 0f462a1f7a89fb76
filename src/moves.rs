//! Moved files across machines (docs/stream.md, section 8.5): a regular file the receiving
//! end's listing holds at OLD, gone from SRC, whose content SRC now holds at NEW, a path the
//! listing lacks, travels as a RENAME instead of its data. Likewise a file whose size stayed
//! and whose mtime alone changed (touched, or rewritten with the same bytes) whose content is
//! the same on both ends gets its attributes, not its data.
//!
//! Inode numbers mean nothing across machines, so the content decides: OLD and NEW pair when
//! their size and mtime are equal and BLAKE3 of both copies agree. The sender hashes its NEW
//! files; the receiving end hashes the OLD ones it is asked for (one request line, one answer
//! line, after the listing); with `--checksum` the listing already holds both hashes. A file
//! with hardlinks on either side, or smaller than [`MIN_SIZE`], is sent as before.
//!
//! Must not: write anything; follow a symlink; hash anything but a regular file the receiving
//! end listed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::path::Path;

use base64::Engine as _;
use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};

use crate::diff::{self, Change, Kind};
use crate::listing::Entry;
use crate::meta::Meta;
use crate::stream::hex;

/// Smaller files are sent again: their data costs about what a RENAME and its hash do.
pub const MIN_SIZE: u64 = 512;
/// The most OLD paths one request names.
pub const MAX_ASK: usize = 1 << 16;
/// The longest request or answer line.
pub const LINE_MAX: usize = 16 << 20;
/// The most path bytes one request carries (base64 makes them 4/3 as long).
const PATH_BYTES_MAX: usize = 8 << 20;

type Key = (u64, i64, u32);

fn key(m: &Meta) -> Option<Key> {
    (m.file_type() == FileType::RegularFile && m.nlink == 1 && m.size >= MIN_SIZE).then_some((
        m.size,
        m.mtime.tv_sec,
        m.mtime.tv_nsec as u32,
    ))
}

/// A file whose size stayed and whose mtime changed: its content may not have (`touch`, a
/// rewrite of the same bytes, a copy that did not keep times).
fn same_size(c: &Change) -> bool {
    c.kind == Kind::Modified
        && matches!((&c.old, &c.new), (Some(o), Some(n))
            if o.size == n.size && key(o).is_some() && key(n).is_some())
}

/// The paths worth hashing: OLD paths (to ask the receiving end about) and NEW paths (for
/// the sender to hash): deleted and created files that share a size and mtime, and files
/// whose size stayed and mtime changed (at the same path on both sides).
pub fn candidates(changes: &[Change]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut created: HashMap<Key, Vec<&[u8]>> = HashMap::new();
    for c in changes.iter().filter(|c| c.kind == Kind::Created) {
        if let Some(k) = c.new.as_ref().and_then(key) {
            created.entry(k).or_default().push(&c.path);
        }
    }
    let mut old = Vec::new();
    let mut keys = HashSet::new();
    let mut bytes = 0;
    for c in changes.iter().filter(|c| c.kind == Kind::Deleted) {
        let Some(k) = c.old.as_ref().and_then(key) else {
            continue;
        };
        if !created.contains_key(&k) {
            continue;
        }
        if old.len() == MAX_ASK || bytes + c.old_path.len() > PATH_BYTES_MAX {
            break;
        }
        bytes += c.old_path.len();
        old.push(c.old_path.clone());
        keys.insert(k);
    }
    let mut new: Vec<Vec<u8>> = created
        .into_iter()
        .filter(|(k, _)| keys.contains(k))
        .flat_map(|(_, v)| v.into_iter().map(<[u8]>::to_vec))
        .collect();
    for c in changes.iter().filter(|c| same_size(c)) {
        if old.len() == MAX_ASK || bytes + c.path.len() > PATH_BYTES_MAX {
            break;
        }
        bytes += c.path.len();
        old.push(c.path.clone());
        new.push(c.path.clone());
    }
    new.sort_unstable();
    (old, new)
}

/// The attributes that differ between two metadata (for a file whose content is the same).
fn attr_bits(o: &Meta, n: &Meta) -> u8 {
    let mut attrs = 0;
    if o.mode != n.mode {
        attrs |= diff::attr::MODE;
    }
    if (o.uid, o.gid) != (n.uid, n.gid) {
        attrs |= diff::attr::OWNER;
    }
    if o.mtime != n.mtime {
        attrs |= diff::attr::MTIME;
    }
    if o.atime != n.atime {
        attrs |= diff::attr::ATIME;
    }
    attrs
}

/// Replace each deleted OLD and created NEW of the same size and content hash by one
/// `Renamed` change (NEW's attributes are then set as for a changed entry), and make a
/// same-size file whose hash is the same on both sides an attribute change. Returns the
/// number of changes that no longer carry data.
pub fn pair(
    changes: &mut Vec<Change>,
    old: &HashMap<Vec<u8>, [u8; 32]>,
    new: &HashMap<Vec<u8>, [u8; 32]>,
) -> usize {
    let mut kept = 0;
    for c in changes.iter_mut().filter(|c| same_size(c)) {
        if let (Some(a), Some(b), Some(o), Some(n)) = (old.get(&c.path), new.get(&c.path), &c.old, &c.new) {
            if a == b {
                c.attrs = attr_bits(o, n);
                c.kind = Kind::Attrs;
                kept += 1;
            }
        }
    }
    let mut by_content: HashMap<(u64, [u8; 32]), VecDeque<usize>> = HashMap::new();
    for (i, c) in changes.iter().enumerate() {
        if c.kind != Kind::Deleted || c.old.as_ref().and_then(key).is_none() {
            continue;
        }
        if let (Some(h), Some(m)) = (old.get(&c.old_path), &c.old) {
            by_content.entry((m.size, *h)).or_default().push_back(i);
        }
    }
    let mut gone = HashSet::new();
    let mut moves = Vec::new();
    for (i, c) in changes.iter().enumerate() {
        if c.kind != Kind::Created || c.new.as_ref().and_then(key).is_none() {
            continue;
        }
        let (Some(h), Some(m)) = (new.get(&c.path), &c.new) else {
            continue;
        };
        let Some(j) = by_content.get_mut(&(m.size, *h)).and_then(VecDeque::pop_front) else {
            continue;
        };
        let o = &changes[j];
        let om = o.old.expect("a deleted change has its old metadata");
        let attrs = attr_bits(&om, m);
        gone.insert(i);
        gone.insert(j);
        moves.push(Change {
            kind: Kind::Renamed,
            path: c.path.clone(),
            old_path: o.old_path.clone(),
            old: Some(om),
            new: Some(*m),
            attrs,
        });
    }
    let n = kept + moves.len();
    let mut k = 0;
    changes.retain(|_| {
        k += 1;
        !gone.contains(&(k - 1))
    });
    changes.extend(moves);
    n
}

/// The request line for `paths` (OLD paths, base64).
pub fn request(paths: &[Vec<u8>]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let p: Vec<String> = paths.iter().map(|p| b64.encode(p)).collect();
    format!("{}\n", serde_json::json!({ "hash": p }))
}

/// The OLD paths a request line names, checked: at most [`MAX_ASK`], each a valid base64 path.
pub fn parse_request(line: &str) -> Result<Vec<Vec<u8>>, String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let list = v["hash"].as_array().ok_or("no \"hash\" list")?;
    if list.len() > MAX_ASK {
        return Err(format!("{} paths, more than {MAX_ASK}", list.len()));
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let paths: Vec<Vec<u8>> = list
        .iter()
        .map(|p| {
            p.as_str()
                .and_then(|s| b64.decode(s).ok())
                .ok_or_else(|| "a path that is not base64".to_string())
        })
        .collect::<Result<_, _>>()?;
    // Each file at most once: what the answer costs is then bounded by what DST holds.
    let mut seen = HashSet::new();
    if let Some(p) = paths.iter().find(|p| !seen.insert(p.as_slice())) {
        return Err(format!("'{}' asked for twice", String::from_utf8_lossy(p)));
    }
    Ok(paths)
}

/// The answer line: for each asked path, in order, the hex BLAKE3 of its content, or null
/// when it is not a regular file without hardlinks that `listed` holds, or cannot be read.
pub fn answer(root: &Path, listed: &[Entry], asked: &[Vec<u8>]) -> String {
    let root = open_dir(root).ok();
    let hashes: Vec<serde_json::Value> = asked
        .iter()
        .map(|p| {
            let ok = listed
                .binary_search_by(|e| e.path.as_slice().cmp(p))
                .ok()
                .map(|i| &listed[i])
                .is_some_and(|e| FileType::from_raw_mode(e.mode) == FileType::RegularFile && e.link == 0);
            match (ok, &root) {
                (true, Some(r)) => hash_beneath(r, p).map_or(serde_json::Value::Null, |h| hex(&h).into()),
                _ => serde_json::Value::Null,
            }
        })
        .collect();
    format!("{}\n", serde_json::json!({ "hashes": hashes }))
}

/// The hashes an answer line gives for `asked` (null ones left out).
pub fn parse_answer(line: &str, asked: &[Vec<u8>]) -> Result<HashMap<Vec<u8>, [u8; 32]>, String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let list = v["hashes"].as_array().ok_or("no \"hashes\" list")?;
    if list.len() != asked.len() {
        return Err(format!("{} hashes for {} paths", list.len(), asked.len()));
    }
    let mut out = HashMap::new();
    for (p, h) in asked.iter().zip(list) {
        match h {
            serde_json::Value::Null => {}
            serde_json::Value::String(s) => {
                out.insert(p.clone(), unhex(s).ok_or("a hash that is not 64 hex digits")?);
            }
            _ => return Err("a hash that is neither a string nor null".into()),
        }
    }
    Ok(out)
}

/// BLAKE3 of each of `paths` below `root` (those that cannot be read as regular files left out).
pub fn hash_all(root: &Path, paths: &[Vec<u8>]) -> HashMap<Vec<u8>, [u8; 32]> {
    let Ok(r) = open_dir(root) else {
        return HashMap::new();
    };
    paths
        .iter()
        .filter_map(|p| hash_beneath(&r, p).map(|h| (p.clone(), h)))
        .collect()
}

fn open_dir(p: &Path) -> rustix::io::Result<OwnedFd> {
    rustix::fs::open(
        p,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// The content hash of the regular file at `path` below `root`, resolved without following
/// any symlink or leaving `root`.
fn hash_beneath(root: &OwnedFd, path: &[u8]) -> Option<[u8; 32]> {
    let (parent, name) = diff::split(path);
    let name = CString::new(name).ok()?;
    let dir;
    let d = if parent.is_empty() {
        root
    } else {
        let p = CString::new(parent).ok()?;
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        dir = rustix::fs::openat2(root, &p, flags, Mode::empty(), resolve).ok()?;
        &dir
    };
    crate::listing::content_hash(d, &name).ok().flatten()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(std::str::from_utf8(&b[2 * i..2 * i + 2]).ok()?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(size: u64, mtime: i64, nlink: u32) -> Meta {
        Meta {
            mode: 0o100644,
            uid: 0,
            gid: 0,
            size,
            blocks: 0,
            nlink,
            dev: 0,
            ino: 0,
            rdev: 0,
            atime: rustix::fs::Timespec {
                tv_sec: 1,
                tv_nsec: 0,
            },
            mtime: rustix::fs::Timespec {
                tv_sec: mtime,
                tv_nsec: 0,
            },
            ctime: rustix::fs::Timespec {
                tv_sec: 1,
                tv_nsec: 0,
            },
            btime: None,
        }
    }

    fn ch(kind: Kind, path: &str, m: Meta) -> Change {
        let (old, new) = if kind == Kind::Deleted {
            (Some(m), None)
        } else {
            (None, Some(m))
        };
        Change {
            kind,
            path: path.into(),
            old_path: path.into(),
            old,
            new,
            attrs: 0,
        }
    }

    fn modified(path: &str, old: Meta, new: Meta) -> Change {
        Change {
            kind: Kind::Modified,
            path: path.into(),
            old_path: path.into(),
            old: Some(old),
            new: Some(new),
            attrs: 0,
        }
    }

    #[test]
    fn only_equal_content_pairs_and_each_old_file_once() {
        let mut changes = vec![
            ch(Kind::Deleted, "a", meta(1000, 5, 1)),
            ch(Kind::Deleted, "b", meta(1000, 5, 1)),
            ch(Kind::Deleted, "small", meta(10, 5, 1)),
            ch(Kind::Deleted, "linked", meta(1000, 5, 2)),
            ch(Kind::Created, "x", meta(1000, 5, 1)),
            ch(Kind::Created, "y", meta(1000, 5, 1)),
            ch(Kind::Created, "z", meta(1000, 5, 1)),
            ch(Kind::Created, "other", meta(2000, 5, 1)),
            modified("touched", meta(1000, 5, 1), meta(1000, 6, 1)),
            modified("rewritten", meta(1000, 5, 1), meta(1000, 6, 1)),
            modified("grown", meta(1000, 5, 1), meta(2000, 6, 1)),
        ];
        let (old, new) = candidates(&changes);
        let v = |s: &[&str]| s.iter().map(|p| p.as_bytes().to_vec()).collect::<Vec<_>>();
        assert_eq!(old, v(&["a", "b", "touched", "rewritten"]));
        assert_eq!(new, v(&["rewritten", "touched", "x", "y", "z"]));
        // x and z hold a's content; y differs (same size and mtime).
        // touched keeps its content, rewritten does not.
        let old_h = HashMap::from([
            (b"a".to_vec(), [1; 32]),
            (b"b".to_vec(), [2; 32]),
            (b"touched".to_vec(), [7; 32]),
            (b"rewritten".to_vec(), [8; 32]),
        ]);
        let new_h = HashMap::from([
            (b"x".to_vec(), [1; 32]),
            (b"y".to_vec(), [3; 32]),
            (b"z".to_vec(), [1; 32]),
            (b"touched".to_vec(), [7; 32]),
            (b"rewritten".to_vec(), [9; 32]),
        ]);
        assert_eq!(pair(&mut changes, &old_h, &new_h), 2);
        let got: Vec<(Kind, &[u8], &[u8])> = changes
            .iter()
            .map(|c| (c.kind, c.old_path.as_slice(), c.path.as_slice()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Kind::Deleted, &b"b"[..], &b"b"[..]),
                (Kind::Deleted, b"small", b"small"),
                (Kind::Deleted, b"linked", b"linked"),
                (Kind::Created, b"y", b"y"),
                (Kind::Created, b"z", b"z"),
                (Kind::Created, b"other", b"other"),
                (Kind::Attrs, b"touched", b"touched"),
                (Kind::Modified, b"rewritten", b"rewritten"),
                (Kind::Modified, b"grown", b"grown"),
                (Kind::Renamed, b"a", b"x"),
            ]
        );
    }

    #[test]
    fn the_answer_hashes_only_listed_regular_files_beneath_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::write(root.join("d/f"), b"content").unwrap();
        std::fs::write(root.join("unlisted"), b"content").unwrap();
        std::fs::write(t.path().join("outside"), b"content").unwrap();
        std::os::unix::fs::symlink("d", root.join("link")).unwrap();
        let e = |p: &str, mode| Entry {
            path: p.into(),
            mode,
            ..Default::default()
        };
        // As listed (sorted); "link/f" and "../outside" are listed as files by a lying lister.
        let listed = [
            e("../outside", 0o100644),
            e("d", 0o40755),
            e("d/f", 0o100644),
            e("link/f", 0o100644),
        ];
        let asked: Vec<Vec<u8>> = ["d/f", "d", "unlisted", "../outside", "link/f"]
            .iter()
            .map(|p| p.as_bytes().to_vec())
            .collect();
        let got = parse_answer(answer(&root, &listed, &asked).trim_end(), &asked).unwrap();
        let want = *blake3::hash(b"content").as_bytes();
        assert_eq!(got, HashMap::from([(b"d/f".to_vec(), want)]));
    }

    #[test]
    fn requests_and_answers_are_checked() {
        let asked = vec![b"d/f".to_vec(), vec![0xff, b'\n']];
        assert_eq!(parse_request(request(&asked).trim_end()).unwrap(), asked);
        assert!(parse_request("{\"hash\":[\"!!\"]}").is_err());
        // The same path twice (a way to make the other end hash one big file for ever).
        assert!(parse_request("{\"hash\":[\"YQ==\",\"Yg==\",\"YQ==\"]}").is_err());
        assert!(parse_request("[]").is_err());
        let line = format!("{{\"hashes\":[\"{}\",null]}}", "ab".repeat(32));
        let got = parse_answer(&line, &asked).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[&asked[0]], [0xab; 32]);
        assert!(parse_answer("{\"hashes\":[null]}", &asked).is_err());
        assert!(parse_answer("{\"hashes\":[\"zz\",null]}", &asked).is_err());
        assert!(parse_answer("{\"hashes\":[1,null]}", &asked).is_err());
    }
}
