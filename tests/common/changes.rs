//! The change set between two oracle scans, as `ringsync diff` (and
//! `mirror --dry-run`) must report it (docs/mirror.md), and a strict parser
//! and validator for that output (text and NDJSON).
//!
//! Computed independently of ringsync from [`Tree`] scans:
//! - only in OLD: `-`; only in NEW: `+` (so every entry of a deleted/created
//!   subtree is listed); both but of another type: `T`;
//! - `M`: regular file with other size or mtime (with `checksum`: other size
//!   or bytes), symlink with another target, device with another number;
//! - `A`: attributes only (mode, owner, mtime, atime, xattrs) -- also for
//!   directories, exactly when one of those differs;
//! - `L`: non-directory whose hardlink group (set of paths sharing its inode
//!   inside the tree) differs: required when it goes from unlinked to linked
//!   or back ("now linked with other paths, or no longer"), optional when it
//!   is linked before and after with other partners.
//!
//! Leniency, where the contract leaves room (besides `lenient_dir_times`): `L` may accompany a `+`, `M` or
//! `A` line when the group changed; `A` may accompany `M`; the hex digits of
//! `\xHH` escapes may be upper or lower case; the sort order may be bytewise
//! on raw paths or on escaped paths.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::oracle::{show, Entry, Kind, Tree};

/// One parsed line of `diff` output.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DiffLine {
    pub marker: char,
    /// Raw (unescaped) path; NEWPATH for renames.
    pub path: Vec<u8>,
    /// OLDPATH for renames.
    pub from: Option<Vec<u8>>,
    /// JSON only: the `type` field.
    pub typ: Option<String>,
    /// JSON only: the `attrs` field.
    pub attrs: Option<BTreeSet<String>>,
}

impl DiffLine {
    /// The text form (escaped, lower-case hex), for messages and set compares.
    pub fn text(&self) -> String {
        match &self.from {
            Some(f) => format!("{}\t{}\t{}", self.marker, escape(f), escape(&self.path)),
            None => format!("{}\t{}", self.marker, escape(&self.path)),
        }
    }
}

/// Escape a path as docs/mirror.md says: bytes that are not printable UTF-8
/// as `\xHH`, the backslash as `\\` (lower-case hex here).
pub fn escape(p: &[u8]) -> String {
    let mut out = String::new();
    for chunk in p.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else if c.is_control() {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "\\x{b:02x}");
                }
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// Inverse of [`escape`] (accepts either hex case).
pub fn unescape(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            match b.get(i + 1) {
                Some(b'\\') => {
                    out.push(b'\\');
                    i += 2;
                }
                Some(b'x') => {
                    let hex = s
                        .get(i + 2..i + 4)
                        .ok_or_else(|| format!("truncated \\x escape in {s:?}"))?;
                    let v = u8::from_str_radix(hex, 16).map_err(|_| format!("bad \\x escape in {s:?}"))?;
                    out.push(v);
                    i += 4;
                }
                _ => return Err(format!("bad escape (\\ not followed by \\ or x) in {s:?}")),
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Lower-case the hex digits of `\xHH` escapes.
pub fn normalize_hex(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '\\' {
            match chars.next() {
                Some('x') => {
                    out.push('x');
                    for _ in 0..2 {
                        if let Some(h) = chars.next() {
                            out.push(h.to_ascii_lowercase());
                        }
                    }
                }
                Some(o) => out.push(o),
                None => {}
            }
        }
    }
    out
}

/// A path in a JSON line (docs/mirror.md): the raw path as the string `key` when it is UTF-8
/// (`.` is the root), else its bytes in base64 under `key_b64`; never both.
fn json_path(v: &serde_json::Value, key: &str, line: &str) -> Result<Option<Vec<u8>>, String> {
    use base64::Engine as _;
    let b64_key = format!("{key}_b64");
    match (v.get(key), v.get(&b64_key)) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(format!("line {line:?}: both {key:?} and {b64_key:?}")),
        // The root is `.`, as in the text format.
        (Some(s), None) => match s.as_str() {
            Some(s) => Ok(Some(s.as_bytes().to_vec())),
            None => Err(format!("line {line:?}: {key:?} is not a string")),
        },
        (None, Some(b)) => {
            let raw = b
                .as_str()
                .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                .ok_or_else(|| format!("line {line:?}: {b64_key:?} is not base64"))?;
            if std::str::from_utf8(&raw).is_ok() {
                return Err(format!(
                    "line {line:?}: {b64_key:?} holds UTF-8; expected {key:?}"
                ));
            }
            Ok(Some(raw))
        }
    }
}

fn parse_path_field(field: &str, line: &str) -> Result<Vec<u8>, String> {
    let raw = unescape(field).map_err(|e| format!("line {line:?}: {e}"))?;
    if escape(&raw) != normalize_hex(field) {
        return Err(format!(
            "line {line:?}: path field {field:?} is not escaped as documented (expected {:?})",
            escape(&raw)
        ));
    }
    Ok(raw)
}

/// Parse text output: one `MARKER\tPATH` (or `R\tOLD\tNEW`) per line.
pub fn parse_text(stdout: &[u8]) -> Result<Vec<DiffLine>, Vec<String>> {
    let text = match std::str::from_utf8(stdout) {
        Ok(t) => t,
        Err(e) => return Err(vec![format!("diff output is not UTF-8 (unescaped bytes?): {e}")]),
    };
    let mut errs = Vec::new();
    let mut lines = Vec::new();
    if !text.is_empty() && !text.ends_with('\n') {
        errs.push("output does not end with a newline".to_string());
    }
    for line in text.lines() {
        if line.chars().any(|c| c != '\t' && c.is_control()) {
            errs.push(format!("line {line:?} contains a raw control character"));
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        let marker = match f[0] {
            "+" | "-" | "M" | "A" | "T" | "L" | "R" => f[0].chars().next().unwrap(),
            _ => {
                errs.push(format!("line {line:?}: unknown marker {:?}", f[0]));
                continue;
            }
        };
        let want_fields = if marker == 'R' { 3 } else { 2 };
        if f.len() != want_fields {
            errs.push(format!(
                "line {line:?}: {} TAB-separated fields, expected {want_fields}",
                f.len()
            ));
            continue;
        }
        let r = if marker == 'R' {
            parse_path_field(f[1], line).and_then(|from| {
                parse_path_field(f[2], line).map(|path| DiffLine {
                    marker,
                    path,
                    from: Some(from),
                    typ: None,
                    attrs: None,
                })
            })
        } else {
            parse_path_field(f[1], line).map(|path| DiffLine {
                marker,
                path,
                from: None,
                typ: None,
                attrs: None,
            })
        };
        match r {
            Ok(l) => lines.push(l),
            Err(e) => errs.push(e),
        }
    }
    if errs.is_empty() {
        Ok(lines)
    } else {
        Err(errs)
    }
}

/// Parse `--json` output (NDJSON).
pub fn parse_json(stdout: &[u8]) -> Result<Vec<DiffLine>, Vec<String>> {
    let text = match std::str::from_utf8(stdout) {
        Ok(t) => t,
        Err(e) => return Err(vec![format!("--json output is not UTF-8: {e}")]),
    };
    let mut errs = Vec::new();
    let mut lines = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                errs.push(format!("line {line:?} is not JSON: {e}"));
                continue;
            }
        };
        let marker = match v.get("change").and_then(|c| c.as_str()) {
            Some("created") => '+',
            Some("deleted") => '-',
            Some("modified") => 'M',
            Some("attrs") => 'A',
            Some("type") => 'T',
            Some("link") => 'L',
            Some("renamed") => 'R',
            other => {
                errs.push(format!("line {line:?}: bad \"change\" {other:?}"));
                continue;
            }
        };
        let path = match json_path(&v, "path", line) {
            Ok(Some(p)) => p,
            Ok(None) => {
                errs.push(format!("line {line:?}: no \"path\" nor \"path_b64\""));
                continue;
            }
            Err(e) => {
                errs.push(e);
                continue;
            }
        };
        let from = match (marker, json_path(&v, "from", line)) {
            ('R', Ok(Some(p))) => Some(p),
            ('R', Ok(None)) => {
                errs.push(format!("line {line:?}: renamed without \"from\""));
                continue;
            }
            (_, Err(e)) => {
                errs.push(e);
                continue;
            }
            _ => None,
        };
        let typ = v.get("type").and_then(|t| t.as_str()).map(str::to_string);
        match typ.as_deref() {
            Some("file" | "dir" | "symlink" | "fifo" | "char" | "block" | "socket") => {}
            other => errs.push(format!("line {line:?}: bad \"type\" {other:?}")),
        }
        let attrs = match v.get("attrs") {
            None => None,
            Some(serde_json::Value::Array(a)) => {
                let mut set = BTreeSet::new();
                for x in a {
                    match x.as_str() {
                        Some(s @ ("mode" | "owner" | "mtime" | "atime" | "xattrs")) => {
                            set.insert(s.to_string());
                        }
                        _ => errs.push(format!("line {line:?}: bad attrs element {x}")),
                    }
                }
                Some(set)
            }
            Some(o) => {
                errs.push(format!("line {line:?}: \"attrs\" is not an array: {o}"));
                None
            }
        };
        if marker == 'A' && attrs.is_none() {
            errs.push(format!("line {line:?}: attrs change without \"attrs\""));
        }
        lines.push(DiffLine {
            marker,
            path,
            from,
            typ,
            attrs,
        });
    }
    if errs.is_empty() {
        Ok(lines)
    } else {
        Err(errs)
    }
}

/// `None` when the lines are sorted bytewise by path (raw or escaped; for
/// `R` lines by NEWPATH or by OLDPATH; the root `.` at its bytewise place or
/// first), else a message.
pub fn check_sorted(lines: &[DiffLine]) -> Option<String> {
    let keys = |use_from: bool, escaped: bool, root_first: bool| -> Vec<Vec<u8>> {
        lines
            .iter()
            .map(|l| {
                let p = if use_from {
                    l.from.as_ref().unwrap_or(&l.path)
                } else {
                    &l.path
                };
                if root_first && p == b"." {
                    Vec::new()
                } else if escaped {
                    escape(p).into_bytes()
                } else {
                    p.clone()
                }
            })
            .collect()
    };
    for use_from in [false, true] {
        for escaped in [false, true] {
            for root_first in [false, true] {
                let k = keys(use_from, escaped, root_first);
                if k.windows(2).all(|w| w[0] <= w[1]) {
                    return None;
                }
            }
        }
    }
    let k = keys(false, false, true);
    let i = k.windows(2).position(|w| w[0] > w[1]).unwrap_or(0);
    Some(format!(
        "output is not sorted by path: {:?} comes before {:?}",
        lines[i].text(),
        lines[i + 1].text()
    ))
}

pub fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::File => "file",
        Kind::Dir => "dir",
        Kind::Symlink => "symlink",
        Kind::Fifo => "fifo",
        Kind::Char => "char",
        Kind::Block => "block",
        Kind::Socket => "socket",
        Kind::Unknown => "unknown",
    }
}

/// What must (and may) be reported for one path.
#[derive(Clone, Debug, Default)]
pub struct Expect {
    pub required: BTreeSet<char>,
    pub allowed: BTreeSet<char>,
    /// Attribute names that differ (for `A` lines' JSON `attrs`).
    pub attrs: BTreeSet<&'static str>,
    pub old_kind: Option<Kind>,
    pub new_kind: Option<Kind>,
    /// Directory under `lenient_dir_times`: an `A` line is optional, and its
    /// JSON `attrs` need only include the differing mode/owner/xattrs.
    pub lenient: bool,
    /// Hardlink group (paths sharing the inode) in OLD and NEW, when it changed.
    pub link_groups: Option<(Vec<String>, Vec<String>)>,
    /// Hardlinked before and after, but with other partners: `L` optional.
    pub lenient_link: bool,
}

#[derive(Clone, Debug, Default)]
pub struct ExpectOpts {
    /// Compare bytes (needs scans with hashes) instead of size+mtime.
    pub checksum: bool,
    /// Xattr names ignored on the root (`.`).
    pub ignore_root_xattrs: Vec<Vec<u8>>,
    /// Directories (in both trees) whose only differences are mtime/atime
    /// may or may not show `A`, and `A` lines for unchanged directories are
    /// tolerated ("directories whose entries changed usually also show A").
    /// Mode/owner/xattr changes of directories still require `A`.
    pub lenient_dir_times: bool,
}

fn groups(t: &Tree) -> BTreeMap<Vec<u8>, BTreeSet<Vec<u8>>> {
    let mut m = BTreeMap::new();
    for g in t.hardlink_groups() {
        let set: BTreeSet<Vec<u8>> = g.iter().cloned().collect();
        for p in g {
            m.insert(p, set.clone());
        }
    }
    m
}

fn attrs_differ(p: &[u8], a: &Entry, b: &Entry, o: &ExpectOpts) -> BTreeSet<&'static str> {
    let mut s = BTreeSet::new();
    if a.perm != b.perm {
        s.insert("mode");
    }
    if (a.uid, a.gid) != (b.uid, b.gid) {
        s.insert("owner");
    }
    if a.mtime != b.mtime {
        s.insert("mtime");
    }
    if a.atime != b.atime {
        s.insert("atime");
    }
    let filt = |x: &BTreeMap<Vec<u8>, Vec<u8>>| -> BTreeMap<Vec<u8>, Vec<u8>> {
        x.iter()
            .filter(|(k, _)| p != b"." || !o.ignore_root_xattrs.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    if filt(&a.xattrs) != filt(&b.xattrs) {
        s.insert("xattrs");
    }
    s
}

/// The expected change set from `old` to `new` (see the module docs).
/// Paths without any change are absent.
pub fn expected(old: &Tree, new: &Tree, o: &ExpectOpts) -> BTreeMap<Vec<u8>, Expect> {
    let (go, gn) = (groups(old), groups(new));
    let mut out = BTreeMap::new();
    let paths: BTreeSet<&Vec<u8>> = old.entries.keys().chain(new.entries.keys()).collect();
    for p in paths {
        let (a, b) = (old.entries.get(p), new.entries.get(p));
        let mut e = Expect {
            old_kind: a.map(|x| x.kind),
            new_kind: b.map(|x| x.kind),
            ..Expect::default()
        };
        match (a, b) {
            (Some(_), None) => {
                e.required.insert('-');
            }
            (None, Some(_)) => {
                e.required.insert('+');
                e.allowed.insert('L');
            }
            (Some(a), Some(b)) if a.kind != b.kind => {
                e.required.insert('T');
            }
            (Some(a), Some(b)) if a.kind == Kind::Dir && o.lenient_dir_times => {
                e.attrs = attrs_differ(p, a, b, o);
                e.lenient = true;
                e.allowed.insert('A');
                if e.attrs.iter().any(|x| !matches!(*x, "mtime" | "atime")) {
                    e.required.insert('A');
                }
            }
            (Some(a), Some(b)) => {
                let content = match a.kind {
                    Kind::File if o.checksum => a.size != b.size || a.hash != b.hash,
                    Kind::File => a.size != b.size || a.mtime != b.mtime,
                    Kind::Symlink => a.target != b.target,
                    Kind::Char | Kind::Block => a.rdev != b.rdev,
                    _ => false,
                };
                e.attrs = attrs_differ(p, a, b, o);
                let single: BTreeSet<Vec<u8>> = [p.clone()].into_iter().collect();
                let (ga, gb) = (go.get(p).unwrap_or(&single), gn.get(p).unwrap_or(&single));
                let link = a.kind != Kind::Dir && ga != gb;
                if link {
                    let f = |g: &BTreeSet<Vec<u8>>| g.iter().map(|x| show(x)).collect();
                    e.link_groups = Some((f(ga), f(gb)));
                }
                if content {
                    e.required.insert('M');
                    if !e.attrs.is_empty() {
                        e.allowed.insert('A');
                    }
                    if link {
                        e.allowed.insert('L');
                    }
                } else if !e.attrs.is_empty() {
                    e.required.insert('A');
                    if link {
                        e.allowed.insert('L');
                    }
                } else if link && (ga.len() == 1) != (gb.len() == 1) {
                    // "now linked with other paths, or no longer"
                    e.required.insert('L');
                } else if link {
                    // Linked before and after, with other partners: the
                    // contract's wording leaves L optional here.
                    e.allowed.insert('L');
                    e.lenient_link = true;
                }
            }
            (None, None) => unreachable!(),
        }
        if e.required.is_empty() && !e.lenient && !e.lenient_link {
            continue;
        }
        e.allowed.extend(e.required.iter().copied());
        out.insert(p.clone(), e);
    }
    out
}

/// Check parsed output against the expectation. JSON lines (with `typ`) are
/// also checked for their `type` and `attrs` fields. Renames are not
/// expected here. Returns the problems found.
pub fn check(lines: &[DiffLine], exp: &BTreeMap<Vec<u8>, Expect>) -> Vec<String> {
    let mut errs = Vec::new();
    if let Some(e) = check_sorted(lines) {
        errs.push(e);
    }
    let mut seen: BTreeMap<Vec<u8>, BTreeSet<char>> = BTreeMap::new();
    for l in lines {
        if l.marker == 'R' {
            errs.push(format!("unexpected rename line {:?}", l.text()));
            continue;
        }
        if !seen.entry(l.path.clone()).or_default().insert(l.marker) {
            errs.push(format!("duplicate line {:?}", l.text()));
        }
        let Some(e) = exp.get(&l.path) else {
            errs.push(format!("unexpected line {:?}: no change there", l.text()));
            continue;
        };
        if !e.allowed.contains(&l.marker) {
            errs.push(format!(
                "wrong line {:?}: expected {} (differing attrs {:?}, types {:?} -> {:?})",
                l.text(),
                e.required
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join("+"),
                e.attrs,
                e.old_kind,
                e.new_kind
            ));
            continue;
        }
        if let Some(t) = &l.typ {
            let ok: Vec<&str> = match l.marker {
                '-' => e.old_kind.map(kind_name).into_iter().collect(),
                'T' => e.old_kind.into_iter().chain(e.new_kind).map(kind_name).collect(),
                _ => e.new_kind.map(kind_name).into_iter().collect(),
            };
            if !ok.contains(&t.as_str()) {
                errs.push(format!(
                    "line {:?}: \"type\" {t:?}, expected one of {ok:?}",
                    l.text()
                ));
            }
        }
        if l.marker == 'A' {
            if let Some(a) = &l.attrs {
                let want: BTreeSet<String> = e.attrs.iter().map(|s| s.to_string()).collect();
                if e.lenient {
                    let must: BTreeSet<String> = want
                        .iter()
                        .filter(|x| !matches!(x.as_str(), "mtime" | "atime"))
                        .cloned()
                        .collect();
                    if !a.is_superset(&must) {
                        errs.push(format!(
                            "line {:?}: \"attrs\" {a:?} lacks some of {must:?}",
                            l.text()
                        ));
                    }
                } else if *a != want {
                    errs.push(format!("line {:?}: \"attrs\" {a:?}, expected {want:?}", l.text()));
                }
            }
        }
    }
    for (p, e) in exp {
        let got = seen.get(p).cloned().unwrap_or_default();
        for r in &e.required {
            if !got.contains(r) {
                let links = match &e.link_groups {
                    Some((a, b)) => format!(", hardlink group {a:?} -> {b:?}"),
                    None => String::new(),
                };
                errs.push(format!(
                    "missing line \"{r}\\t{}\" (differing attrs {:?}, types {:?} -> {:?}{links})",
                    escape(p),
                    e.attrs,
                    e.old_kind,
                    e.new_kind
                ));
            }
        }
    }
    errs
}

/// Short human summary of an expectation map (for failure messages).
pub fn describe_expected(exp: &BTreeMap<Vec<u8>, Expect>, max: usize) -> String {
    exp.iter()
        .filter(|(_, e)| !e.required.is_empty())
        .take(max)
        .map(|(p, e)| {
            format!(
                "{} {} {:?}",
                e.required.iter().collect::<String>(),
                show(p),
                e.attrs
            )
        })
        .collect::<Vec<_>>()
        .join("\n  ")
}
