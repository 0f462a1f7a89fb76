//! Which entries a run takes: rsync's include/exclude rules, a `--files-from` list and
//! `--one-file-system`, decided per relative path in the walk (the copy engine's scan and the
//! diff walk both ask [`Filter::verdict`], so `copy`, `copy -n` and `mirror` see one tree).
//!
//! Rule semantics are rsync's (docs/copy.md, "Filters"): first matching rule wins; `*` and `?`
//! stop at `/`, `**` does not; a trailing `/` matches directories only; a leading `/` anchors at
//! the transfer root; other patterns match the end of the path on a component boundary;
//! `dir/***` matches `dir` and everything below it.
//!
//! Patterns are translated to regular expressions (the `regex` crate, bytes mode) rather than
//! handed to a glob crate: rsync's `**` matches across `/` anywhere (`**.bak`, `a**`), which
//! globset refuses, and rsync's `a/**/x` needs at least one directory between `a` and `x`,
//! where globset's also matches `a/x`. Both were checked against rsync 3.2.
//!
//! Must not: touch the filesystem, except reading the rule and list files in [`Filter::load`].

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use regex::bytes::RegexSet;

/// Where a rule came from, in command-line order (the CLI keeps `--include`, `--exclude`,
/// `--filter` and the `-from` files interleaved as given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleSource {
    Exclude(OsString),
    Include(OsString),
    /// `--filter RULE`: `- PAT`, `+ PAT`, `exclude PAT`, `include PAT`.
    Filter(OsString),
    ExcludeFrom(PathBuf),
    IncludeFrom(PathBuf),
}

/// Everything the command line says about selection, before any file is read.
#[derive(Debug, Clone, Default)]
pub struct FilterSpec {
    pub rules: Vec<RuleSource>,
    pub files_from: Option<PathBuf>,
    /// With `files_from`: descend into listed directories.
    pub recursive: bool,
    pub one_file_system: bool,
    /// `mirror --delete-excluded`.
    pub delete_excluded: bool,
}

/// What the walk does with an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not part of the transfer (and, in a mirror, protected from deletion unless
    /// `--delete-excluded`).
    Skip,
    /// Taken; for a directory, whether its entries are walked too.
    Take { descend: bool },
}

#[derive(Debug, Clone)]
struct Rule {
    include: bool,
    dir_only: bool,
}

/// An ordered list of include/exclude rules.
#[derive(Debug)]
pub struct Rules {
    rules: Vec<Rule>,
    set: RegexSet,
}

impl Rules {
    /// `(include, pattern)` pairs, in order.
    pub fn new(list: &[(bool, Vec<u8>)]) -> Result<Rules, String> {
        let mut rules = Vec::with_capacity(list.len());
        let mut regexes = Vec::with_capacity(list.len());
        for (include, pat) in list {
            let (re, dir_only) =
                rule_regex(pat).map_err(|e| format!("pattern '{}': {e}", String::from_utf8_lossy(pat)))?;
            regexes.push(re);
            rules.push(Rule {
                include: *include,
                dir_only,
            });
        }
        let set = regex::bytes::RegexSetBuilder::new(&regexes)
            .size_limit(64 << 20)
            .build()
            .map_err(|e| format!("filter patterns: {e}"))?;
        Ok(Rules { rules, set })
    }

    /// The first rule matching `path` (relative, `/`-separated): include (true) or exclude.
    pub fn decide(&self, path: &[u8], is_dir: bool) -> Option<bool> {
        let m = self.set.matches(path);
        m.iter()
            .map(|i| &self.rules[i])
            .find(|r| is_dir || !r.dir_only)
            .map(|r| r.include)
    }
}

/// The regex for one rsync pattern, and whether it matches directories only.
fn rule_regex(pat: &[u8]) -> Result<(String, bool), String> {
    if pat.is_empty() {
        return Err("empty pattern".into());
    }
    let mut p = pat;
    let mut dir_only = false;
    while p.len() > 1 && p.ends_with(b"/") {
        p = &p[..p.len() - 1];
        dir_only = true;
    }
    let anchored = p.first() == Some(&b'/');
    if anchored {
        p = &p[1..];
    }
    if p.is_empty() {
        return Err("a pattern of only '/' matches nothing".into());
    }
    // `dir/***`: the directory and everything below it.
    let (body, below) = match p.strip_suffix(b"/***") {
        Some(b) if !b.is_empty() => (b, true),
        _ => (p, false),
    };
    let mut re = String::from("(?s-u)^");
    // A leading `**/` also matches no directory at all (rsync: `**/tmp` takes a top-level
    // `tmp`; elsewhere `/**/` needs at least one).
    let (lead, body) = match body.strip_prefix(b"**/") {
        Some(rest) if !rest.is_empty() => (true, rest),
        _ => (false, body),
    };
    if !anchored || lead {
        // Any number of leading components: the pattern matches the end of the path on a
        // component boundary (and, without a `/` in it, the last component).
        re.push_str("(?:.*/)?");
    }
    if body.iter().any(|b| matches!(b, b'*' | b'?' | b'[')) {
        wildcard_regex(body, &mut re)?;
    } else {
        // rsync compares a pattern without wildcards as a plain string: a backslash in it is
        // a backslash.
        body.iter().for_each(|b| literal(*b, &mut re));
    }
    if below {
        re.push_str("(?:/.*)?");
    }
    re.push('$');
    Ok((re, dir_only))
}

/// Append the regex for wildmatch syntax: `*`, `**`, `?`, `[...]`, `\x`.
fn wildcard_regex(p: &[u8], re: &mut String) -> Result<(), String> {
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            b'*' => {
                let run = p[i..].iter().take_while(|b| **b == b'*').count();
                re.push_str(if run >= 2 { ".*" } else { "[^/]*" });
                i += run;
            }
            b'?' => {
                re.push_str("[^/]");
                i += 1;
            }
            b'[' => match class_regex(&p[i..]) {
                Some((class, used)) => {
                    re.push_str(&class);
                    i += used;
                }
                // No closing bracket: a literal `[`, as wildmatch takes it.
                None => {
                    literal(b'[', re);
                    i += 1;
                }
            },
            b'\\' if i + 1 < p.len() => {
                literal(p[i + 1], re);
                i += 2;
            }
            b => {
                literal(b, re);
                i += 1;
            }
        }
    }
    Ok(())
}

fn literal(b: u8, re: &mut String) {
    if b.is_ascii_alphanumeric() || b == b'_' {
        re.push(b as char);
    } else {
        re.push_str(&format!("\\x{b:02x}"));
    }
}

/// A bracket expression at the start of `p` (`[abc]`, `[!a-z]`, `[^x]`, `[]x]`, `[[:digit:]]`)
/// as a regex class, and the bytes it used; None when there is no closing `]`.
fn class_regex(p: &[u8]) -> Option<(String, usize)> {
    let mut i = 1;
    let mut out = String::from("[");
    if i < p.len() && (p[i] == b'!' || p[i] == b'^') {
        // A negated class never matches `/` (it stays within one component, as `?` does).
        out.push_str("^/");
        i += 1;
    }
    let mut first = true;
    loop {
        let b = *p.get(i)?;
        if b == b']' && !first {
            out.push(']');
            return Some((out, i + 1));
        }
        first = false;
        if b == b'[' && p.get(i + 1) == Some(&b':') {
            // A POSIX class, copied as the regex syntax has the same form.
            let end = p[i + 2..].windows(2).position(|w| w == b":]")?;
            let name = &p[i + 2..i + 2 + end];
            if name.iter().all(u8::is_ascii_alphabetic) {
                out.push_str("[:");
                out.push_str(std::str::from_utf8(name).ok()?);
                out.push_str(":]");
                i += 2 + end + 2;
                continue;
            }
        }
        let (c, used) = if b == b'\\' && i + 1 < p.len() {
            (p[i + 1], 2)
        } else {
            (b, 1)
        };
        out.push_str(&format!("\\x{c:02x}"));
        i += used;
        // A range `a-z` (a `-` before the closing `]` is literal).
        if p.get(i) == Some(&b'-') && p.get(i + 1).is_some_and(|n| *n != b']') {
            let (hi, used) = if p[i + 1] == b'\\' && i + 2 < p.len() {
                (p[i + 2], 3)
            } else {
                (p[i + 1], 2)
            };
            out.push_str(&format!("-\\x{hi:02x}"));
            i += used;
        }
    }
}

/// An `--include`/`--exclude` pattern: a leading `+ ` or `- ` says which it is (as in rsync).
fn pattern_rule(default_include: bool, pat: &[u8]) -> (bool, Vec<u8>) {
    match pat {
        [b'+', b' ', rest @ ..] => (true, rest.to_vec()),
        [b'-', b' ', rest @ ..] => (false, rest.to_vec()),
        _ => (default_include, pat.to_vec()),
    }
}

/// `--filter RULE`: `- PAT`, `+ PAT`, `exclude PAT`, `include PAT` (`_` may replace the space).
pub fn filter_rule(rule: &[u8]) -> Result<(bool, Vec<u8>), String> {
    let bad = || {
        format!(
            "unsupported filter rule '{}' (supported: '- PAT', '+ PAT', 'exclude PAT', 'include PAT')",
            String::from_utf8_lossy(rule)
        )
    };
    for (word, include) in [
        (&b"exclude"[..], false),
        (b"include", true),
        (b"-", false),
        (b"+", true),
    ] {
        if let Some([b' ' | b'_', pat @ ..]) = rule.strip_prefix(word) {
            if pat.is_empty() {
                return Err(bad());
            }
            return Ok((include, pat.to_vec()));
        }
    }
    Err(bad())
}

/// Lines of an `--exclude-from`/`--include-from` file: blank lines and lines starting with `#`
/// or `;` are skipped; `+ `/`- ` prefixes as for the options.
fn rule_file_lines(data: &[u8], default_include: bool) -> Vec<(bool, Vec<u8>)> {
    data.split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.is_empty() && !l.starts_with(b"#") && !l.starts_with(b";"))
        .map(|l| pattern_rule(default_include, l))
        .collect()
}

/// A `--files-from` list.
#[derive(Debug)]
pub struct FilesFrom {
    /// Listed path → its index in `seen`. `b""` is the root itself.
    listed: HashMap<Vec<u8>, usize>,
    /// Proper ancestors of listed paths (walked to reach them).
    implied: HashSet<Vec<u8>>,
    recursive: bool,
    /// Which listed paths the walk of SRC found.
    seen: Vec<AtomicBool>,
}

impl FilesFrom {
    /// Parse a list: NUL-separated when it holds a NUL byte, else one path per line.
    pub fn parse(data: &[u8], recursive: bool) -> Result<FilesFrom, String> {
        let sep = if data.contains(&0) { 0 } else { b'\n' };
        let mut listed = HashMap::new();
        let mut implied = HashSet::new();
        for raw in data.split(|b| *b == sep) {
            let raw = if sep == b'\n' {
                raw.strip_suffix(b"\r").unwrap_or(raw)
            } else {
                raw
            };
            if raw.is_empty() {
                continue;
            }
            let mut comps: Vec<&[u8]> = Vec::new();
            for c in raw.split(|b| *b == b'/') {
                match c {
                    b"" | b"." => {}
                    b".." => {
                        return Err(format!(
                            "'{}' has a '..' component: listed paths must stay inside SRC",
                            String::from_utf8_lossy(raw)
                        ))
                    }
                    c => comps.push(c),
                }
            }
            let path = comps.join(&b'/');
            for k in 1..comps.len() {
                implied.insert(comps[..k].join(&b'/'));
            }
            let n = listed.len();
            listed.entry(path).or_insert(n);
        }
        let seen = (0..listed.len()).map(|_| AtomicBool::new(false)).collect();
        Ok(FilesFrom {
            listed,
            implied,
            recursive,
            seen,
        })
    }

    fn verdict(&self, path: &[u8], is_dir: bool, in_source: bool) -> Verdict {
        if let Some(&i) = self.listed.get(path) {
            if in_source {
                self.seen[i].store(true, Ordering::Relaxed);
            }
            let descend = is_dir && (self.recursive || self.implied.contains(path));
            return Verdict::Take { descend };
        }
        if self.implied.contains(path) {
            return Verdict::Take { descend: is_dir };
        }
        if self.recursive && self.listed.contains_key(&b""[..]) {
            return Verdict::Take { descend: is_dir };
        }
        if self.recursive {
            let mut cut = path;
            while let Some(i) = cut.iter().rposition(|b| *b == b'/') {
                cut = &cut[..i];
                if self.listed.contains_key(cut) {
                    return Verdict::Take { descend: is_dir };
                }
            }
        }
        Verdict::Skip
    }

    /// Listed paths the walk of SRC never found (sorted).
    pub fn unseen(&self) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = self
            .listed
            .iter()
            .filter(|(p, &i)| !p.is_empty() && !self.seen[i].load(Ordering::Relaxed))
            .map(|(p, _)| p.clone())
            .collect();
        out.sort();
        out
    }
}

/// The whole selection of a run. `Filter::default()` takes everything.
#[derive(Debug, Default)]
pub struct Filter {
    rules: Option<Rules>,
    files_from: Option<FilesFrom>,
    pub one_file_system: bool,
    pub delete_excluded: bool,
    /// A stable digest of everything that decides selection, for the mirror record; None when
    /// everything is taken.
    digest: Option<String>,
    /// The `(include, pattern)` rules, in order (for [`Filter::to_wire`]).
    list: Vec<(bool, Vec<u8>)>,
}

/// Largest rule or list file read (a list of ten million long paths fits): `--files-from
/// /dev/zero` must not take all memory.
const LIST_BYTES_MAX: u64 = 1 << 30;

fn read_input(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    let mut data = Vec::new();
    let res = if path.as_os_str() == "-" {
        std::io::stdin()
            .lock()
            .take(LIST_BYTES_MAX + 1)
            .read_to_end(&mut data)
            .map(drop)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(LIST_BYTES_MAX + 1).read_to_end(&mut data).map(drop))
    };
    res.map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if data.len() as u64 > LIST_BYTES_MAX {
        return Err(format!(
            "{what} {}: longer than {} GiB",
            path.display(),
            LIST_BYTES_MAX >> 30
        ));
    }
    Ok(data)
}

impl Filter {
    /// Whether a `--files-from` list decides what is taken.
    pub fn has_files_from(&self) -> bool {
        self.files_from.is_some()
    }

    /// Read the rule and list files the spec names and build the filter.
    pub fn load(spec: &FilterSpec) -> Result<Filter, String> {
        let stdin_uses = spec
            .rules
            .iter()
            .filter(|r| {
                matches!(r, RuleSource::ExcludeFrom(p) | RuleSource::IncludeFrom(p) if p.as_os_str() == "-")
            })
            .count()
            + spec
                .files_from
                .as_ref()
                .is_some_and(|p| p.as_os_str() == "-") as usize;
        if stdin_uses > 1 {
            return Err(
                "only one of --exclude-from, --include-from and --files-from can read standard input".into(),
            );
        }
        let mut list = Vec::new();
        for r in &spec.rules {
            match r {
                RuleSource::Exclude(p) => list.push(pattern_rule(false, p.as_bytes())),
                RuleSource::Include(p) => list.push(pattern_rule(true, p.as_bytes())),
                RuleSource::Filter(f) => list.push(filter_rule(f.as_bytes())?),
                RuleSource::ExcludeFrom(p) => {
                    list.extend(rule_file_lines(&read_input(p, "--exclude-from")?, false))
                }
                RuleSource::IncludeFrom(p) => {
                    list.extend(rule_file_lines(&read_input(p, "--include-from")?, true))
                }
            }
        }
        let files_from = match &spec.files_from {
            Some(p) => {
                let data = read_input(p, "--files-from")?;
                Some(
                    FilesFrom::parse(&data, spec.recursive)
                        .map_err(|e| format!("--files-from {}: {e}", p.display()))?,
                )
            }
            None => None,
        };
        Filter::build(list, files_from, spec.one_file_system, spec.delete_excluded)
    }

    fn build(
        list: Vec<(bool, Vec<u8>)>,
        files_from: Option<FilesFrom>,
        one_file_system: bool,
        delete_excluded: bool,
    ) -> Result<Filter, String> {
        let active = !list.is_empty() || files_from.is_some() || one_file_system;
        let digest = active.then(|| {
            let mut h = blake3::Hasher::new();
            for (include, pat) in &list {
                h.update(if *include { b"+" } else { b"-" });
                h.update(&(pat.len() as u64).to_le_bytes());
                h.update(pat);
            }
            if let Some(ff) = &files_from {
                let mut paths: Vec<&Vec<u8>> = ff.listed.keys().collect();
                paths.sort();
                h.update(if ff.recursive { b"F+" } else { b"F-" });
                for p in paths {
                    h.update(&(p.len() as u64).to_le_bytes());
                    h.update(p);
                }
            }
            h.update(if one_file_system { b"x" } else { b"." });
            h.update(if delete_excluded { b"d" } else { b"." });
            h.finalize().to_hex()[..32].to_string()
        });
        Ok(Filter {
            rules: (!list.is_empty()).then(|| Rules::new(&list)).transpose()?,
            files_from,
            one_file_system,
            delete_excluded,
            digest,
            list,
        })
    }

    /// The filter as one JSON line for the other end of a remote mirror (the rules as
    /// resolved here: rule files were read on this machine). Not `--files-from`.
    pub fn to_wire(&self) -> Result<String, String> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        // The list as its paths (normalized; the root itself as "."), read back by
        // `FilesFrom::parse` at the other end, NUL-separated.
        let files_from = self.files_from.as_ref().map(|ff| {
            let mut paths: Vec<&Vec<u8>> = ff.listed.keys().collect();
            paths.sort();
            let paths: Vec<String> = paths
                .into_iter()
                .map(|p| b64.encode(if p.is_empty() { &b"."[..] } else { p }))
                .collect();
            serde_json::json!({ "recursive": ff.recursive, "paths": paths })
        });
        let rules: Vec<serde_json::Value> = self
            .list
            .iter()
            .map(|(inc, p)| {
                serde_json::json!([
                    if *inc { "+" } else { "-" },
                    base64::engine::general_purpose::STANDARD.encode(p)
                ])
            })
            .collect();
        Ok(serde_json::json!({
            "rules": rules,
            "one_file_system": self.one_file_system,
            "delete_excluded": self.delete_excluded,
            "files_from": files_from,
        })
        .to_string())
    }

    /// The filter [`Filter::to_wire`] wrote (from the other end: checked like any input).
    pub fn from_wire(line: &str) -> Result<Filter, String> {
        use base64::Engine as _;
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("filter rules: {e}"))?;
        let bad = || "filter rules: not the expected form".to_string();
        let mut list = Vec::new();
        for r in v["rules"].as_array().ok_or_else(bad)? {
            let include = match r[0].as_str() {
                Some("+") => true,
                Some("-") => false,
                _ => return Err(bad()),
            };
            let pat = base64::engine::general_purpose::STANDARD
                .decode(r[1].as_str().ok_or_else(bad)?)
                .map_err(|_| bad())?;
            list.push((include, pat));
        }
        let files_from = match &v["files_from"] {
            serde_json::Value::Null => None,
            ff => {
                let mut data = Vec::new();
                for p in ff["paths"].as_array().ok_or_else(bad)? {
                    let p = base64::engine::general_purpose::STANDARD
                        .decode(p.as_str().ok_or_else(bad)?)
                        .map_err(|_| bad())?;
                    if p.contains(&0) {
                        return Err(bad());
                    }
                    data.extend_from_slice(&p);
                    data.push(0);
                }
                let recursive = ff["recursive"].as_bool().ok_or_else(bad)?;
                Some(FilesFrom::parse(&data, recursive).map_err(|e| format!("--files-from: {e}"))?)
            }
        };
        Filter::build(
            list,
            files_from,
            v["one_file_system"].as_bool().ok_or_else(bad)?,
            v["delete_excluded"].as_bool().ok_or_else(bad)?,
        )
    }

    /// Whether any rule, list or `-x` narrows the transfer.
    pub fn is_active(&self) -> bool {
        self.digest.is_some()
    }

    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// Whether any include/exclude rule or list applies (`-x` alone needs no paths).
    pub fn needs_paths(&self) -> bool {
        self.rules.is_some() || self.files_from.is_some()
    }

    /// Verdict for the entry at `path` (relative to the transfer root, `/`-separated, not
    /// empty). `in_source`: the entry was found in SRC (a listed path counts as found).
    pub fn verdict(&self, path: &[u8], is_dir: bool, in_source: bool) -> Verdict {
        let by_list = match &self.files_from {
            Some(ff) => ff.verdict(path, is_dir, in_source),
            None => Verdict::Take { descend: is_dir },
        };
        if by_list == Verdict::Skip {
            return Verdict::Skip;
        }
        match self.rules.as_ref().and_then(|r| r.decide(path, is_dir)) {
            Some(false) => Verdict::Skip,
            _ => by_list,
        }
    }

    /// Whether the entries of the directory at `path` (on device `dev`; SRC's root is on
    /// `root_dev`) are walked: not across a filesystem boundary under `-x`, nor below a
    /// directory the filter takes without its contents.
    pub fn descends(&self, path: &[u8], dev: u64, root_dev: u64) -> bool {
        if self.one_file_system && dev != root_dev {
            return false;
        }
        !self.needs_paths() || self.verdict(path, true, false) == Verdict::Take { descend: true }
    }

    /// Listed `--files-from` paths that the walk of SRC did not find.
    pub fn unseen_listed(&self) -> Vec<Vec<u8>> {
        self.files_from
            .as_ref()
            .map(FilesFrom::unseen)
            .unwrap_or_default()
    }
}

/// Report each `--files-from` path the walk of SRC (rooted at `src`) did not find.
pub fn report_unseen(filter: &Filter, src: &Path, errors: &crate::error::ErrorLog) {
    for p in filter.unseen_listed() {
        errors.report(crate::error::EntryError::msg(
            "files-from",
            src.join(std::ffi::OsStr::from_bytes(&p)),
            "listed, but not found in SRC",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_sent_to_the_other_end_decides_as_here() {
        let dir = tempfile::tempdir().unwrap();
        let rules_file = dir.path().join("rules");
        std::fs::write(&rules_file, "*.log\n# comment\n/top-only\n").unwrap();
        let spec = FilterSpec {
            rules: vec![
                RuleSource::Include("keep.tmp".into()),
                RuleSource::Exclude("*.tmp".into()),
                RuleSource::ExcludeFrom(rules_file),
                RuleSource::Filter("- cache/".into()),
            ],
            delete_excluded: true,
            ..Default::default()
        };
        let here = Filter::load(&spec).unwrap();
        let there = Filter::from_wire(&here.to_wire().unwrap()).unwrap();
        for (p, d) in [
            ("a.tmp", false),
            ("x/keep.tmp", false),
            ("x/a.log", false),
            ("top-only", false),
            ("x/top-only", false),
            ("cache", true),
            ("cache", false),
            ("x/cache", true),
            ("plain", false),
            ("d", true),
        ] {
            assert_eq!(
                here.verdict(p.as_bytes(), d, true),
                there.verdict(p.as_bytes(), d, true),
                "{p}"
            );
        }
        assert_eq!(here.digest(), there.digest());
        assert!(there.delete_excluded && !there.one_file_system);
        // What the other end sends is checked.
        for bad in [
            "",
            "{}",
            "not json",
            r#"{"rules":[["*","eA=="]],"one_file_system":false,"delete_excluded":false}"#,
            r#"{"rules":[["-","!!"]],"one_file_system":false,"delete_excluded":false}"#,
            r#"{"rules":[],"one_file_system":1,"delete_excluded":false}"#,
        ] {
            assert!(Filter::from_wire(bad).is_err(), "{bad}");
        }
        // A --files-from list travels too, and decides the same at the other end.
        let ff = dir.path().join("list");
        std::fs::write(&ff, "a/b\n./c//\nline\nbreak\n").unwrap();
        let with_list = Filter::load(&FilterSpec {
            files_from: Some(ff),
            ..Default::default()
        })
        .unwrap();
        let there = Filter::from_wire(&with_list.to_wire().unwrap()).unwrap();
        assert_eq!(there.digest(), with_list.digest());
        for (path, dir) in [
            ("a", true),
            ("a/b", false),
            ("a/x", false),
            ("c", true),
            ("c/d", false),
            ("line", false),
            ("z", false),
        ] {
            assert_eq!(
                there.verdict(path.as_bytes(), dir, false),
                with_list.verdict(path.as_bytes(), dir, false),
                "{path}"
            );
        }
        // A list from the other end is checked as a local one.
        use base64::Engine as _;
        let b = |p: &[u8]| base64::engine::general_purpose::STANDARD.encode(p);
        for bad in [b(b"../etc"), b(b"a/\0b")] {
            let line = format!(
                r#"{{"rules":[],"one_file_system":false,"delete_excluded":false,"files_from":{{"recursive":false,"paths":["{bad}"]}}}}"#
            );
            assert!(Filter::from_wire(&line).is_err(), "{line}");
        }
    }

    fn rules(list: &[(&str, bool)]) -> Rules {
        let l: Vec<(bool, Vec<u8>)> = list.iter().map(|(p, i)| (*i, p.as_bytes().to_vec())).collect();
        Rules::new(&l).unwrap()
    }

    fn excluded(pat: &str, path: &str, is_dir: bool) -> bool {
        rules(&[(pat, false)]).decide(path.as_bytes(), is_dir) == Some(false)
    }

    #[test]
    fn basename_anchored_and_inner_slash() {
        assert!(excluded("*.o", "a.o", false));
        assert!(excluded("*.o", "x/y/a.o", false));
        assert!(!excluded("*.o", "a.o/x", false));
        assert!(excluded("/build", "build", true));
        assert!(!excluded("/build", "x/build", true));
        assert!(excluded("b/*.c", "b/f.c", false));
        assert!(excluded("b/*.c", "a/b/f.c", false));
        assert!(!excluded("b/*.c", "ab/f.c", false));
        assert!(!excluded("b/*.c", "b/x/f.c", false));
    }

    #[test]
    fn double_star_like_rsync() {
        // Checked against rsync 3.2: a/**/x needs a directory between a and x.
        assert!(excluded("a/**/x", "a/b/x", true));
        assert!(excluded("a/**/x", "a/b/c/x", true));
        assert!(!excluded("a/**/x", "a/x", true));
        assert!(excluded("**.bak", "foo.bak", false));
        assert!(excluded("**.bak", "a/z.bak", false));
        assert!(excluded("a**", "a", true));
        assert!(excluded("a**", "a/b", false));
        assert!(!excluded("a**", "ca", false));
        assert!(excluded("**/tmp", "tmp", true));
        assert!(excluded("**/tmp", "a/b/tmp", true));
        assert!(!excluded("**/tmp", "atmp", true));
        assert!(excluded("dir/***", "dir", true));
        assert!(excluded("dir/***", "dir/x/y", false));
        assert!(!excluded("dir/***", "dirx", false));
    }

    #[test]
    fn dir_only_classes_and_escapes() {
        assert!(excluded("build/", "build", true));
        assert!(!excluded("build/", "build", false));
        assert!(excluded("*/x/", "a/b/x", true));
        assert!(excluded("[ab]*", "apple", false));
        assert!(!excluded("[ab]*", "cherry", false));
        assert!(excluded("[!ab]*", "cherry", false));
        assert!(!excluded("[!ab]*", "apple", false));
        assert!(excluded("f[0-9]", "f7", false));
        assert!(excluded("f[[:digit:]]", "f7", false));
        assert!(excluded("a\\b", "a\\b", false));
        assert!(excluded("q\\*", "q*", false));
        assert!(!excluded("q\\*", "qx", false));
        assert!(excluded("a?c", "abc", false));
        assert!(!excluded("a?c", "a/c", false));
        assert!(excluded("[x", "[x", false));
        assert!(excluded("sp ace", "d/sp ace", false));
    }

    #[test]
    fn first_match_wins_and_names_are_bytes() {
        let r = rules(&[("keep.tmp", true), ("*.tmp", false)]);
        assert_eq!(r.decide(b"keep.tmp", false), Some(true));
        assert_eq!(r.decide(b"x.tmp", false), Some(false));
        assert_eq!(r.decide(b"x.c", false), None);
        let r = Rules::new(&[(false, b"\xff*".to_vec())]).unwrap();
        assert_eq!(r.decide(b"d/\xff\xfe", false), Some(false));
        assert_eq!(r.decide(b"d/\nline", false), None);
        let r = rules(&[("*", false)]);
        assert_eq!(r.decide(b"new\nline", false), Some(false));
    }

    #[test]
    fn rule_spellings() {
        assert_eq!(filter_rule(b"- *.o").unwrap(), (false, b"*.o".to_vec()));
        assert_eq!(filter_rule(b"+ a b").unwrap(), (true, b"a b".to_vec()));
        assert_eq!(filter_rule(b"exclude x").unwrap(), (false, b"x".to_vec()));
        assert_eq!(filter_rule(b"include_x").unwrap(), (true, b"x".to_vec()));
        assert!(filter_rule(b"P x").is_err());
        assert!(filter_rule(b"-! x").is_err());
        assert!(filter_rule(b"- ").is_err());
        assert_eq!(pattern_rule(false, b"+ c"), (true, b"c".to_vec()));
        let lines = rule_file_lines(b"# c\n\n; c\n*.o\r\n+ keep\n", false);
        assert_eq!(lines, vec![(false, b"*.o".to_vec()), (true, b"keep".to_vec())]);
    }

    #[test]
    fn files_from_lists_implies_and_recurses() {
        let ff = FilesFrom::parse(b"./a/b/c\n/top\nd\n", false).unwrap();
        assert_eq!(ff.verdict(b"a", true, true), Verdict::Take { descend: true });
        assert_eq!(ff.verdict(b"a/b", true, true), Verdict::Take { descend: true });
        assert_eq!(
            ff.verdict(b"a/b/c", false, true),
            Verdict::Take { descend: false }
        );
        assert_eq!(ff.verdict(b"a/x", false, true), Verdict::Skip);
        assert_eq!(ff.verdict(b"d", true, true), Verdict::Take { descend: false });
        assert_eq!(ff.verdict(b"d/e", false, true), Verdict::Skip);
        assert_eq!(ff.unseen(), vec![b"top".to_vec()]);
        let ff = FilesFrom::parse(b"d\0a/b\0", true).unwrap();
        assert_eq!(
            ff.verdict(b"d/e/f", false, true),
            Verdict::Take { descend: false }
        );
        assert_eq!(ff.verdict(b"a", true, true), Verdict::Take { descend: true });
        assert_eq!(ff.verdict(b"a/c", false, true), Verdict::Skip);
        assert!(FilesFrom::parse(b"a/../b\n", false).is_err());
        let ff = FilesFrom::parse(b"./\n", true).unwrap();
        assert_eq!(ff.verdict(b"x/y", false, true), Verdict::Take { descend: false });
    }
}
