//! End-to-end tests of `ringsync diff` against the contract in docs/mirror.md.
//!
//! Two kinds of checks:
//! - hand-built trees with known changes and the exact expected lines (lenient
//!   only on `A` lines for directories);
//! - generated trees (`gen_tree`), copied with `cp -a` and mutated with
//!   `common::mutate`, where the expected change set is computed from two
//!   oracle scans (`common::changes::expected`), independently of ringsync.

mod common;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::changes::{self, check, escape, expected, parse_json, parse_text, DiffLine, ExpectOpts};
use common::mount::{mount_or_skip, snapshot_ro, subvolume_create};
use common::mutate::{self as mutator, MutOpts};
use common::oracle::scan_tree;
use common::*;
use rustix::fs::{AtFlags, FileType, Gid, Mode, Timespec, Timestamps, Uid, XattrFlags, CWD};

// ---------------------------------------------------------------------------
// Hand-built trees.

#[derive(Clone, Debug)]
enum S {
    Dir,
    File(Vec<u8>),
    Sym(Vec<u8>),
    Fifo,
    Char(u32, u32),
    /// Hard link to another path of the spec (listed earlier).
    Link(Vec<u8>),
}

#[derive(Clone, Debug)]
struct E {
    path: Vec<u8>,
    s: S,
    mode: u32,
    owner: (u32, u32),
    mtime: (i64, u32),
    atime: (i64, u32),
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// One fixed atime in the future for the whole test run, so that nothing
/// that reads the trees bumps atimes (relatime).
fn fut() -> i64 {
    static T: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *T.get_or_init(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        now + 2 * 86_400
    })
}

fn e(path: &[u8], s: S) -> E {
    let mode = match s {
        S::Dir => 0o755,
        S::Sym(_) => 0o777,
        _ => 0o644,
    };
    E {
        path: path.to_vec(),
        s,
        mode,
        owner: (0, 0),
        mtime: (1_600_000_000, 123_456_789),
        atime: (fut(), 987_654_321),
        xattrs: Vec::new(),
    }
}
fn dir(p: &[u8]) -> E {
    e(p, S::Dir)
}
fn file(p: &[u8], data: &[u8]) -> E {
    e(p, S::File(data.to_vec()))
}
fn sym(p: &[u8], t: &[u8]) -> E {
    e(p, S::Sym(t.to_vec()))
}

fn set(spec: &mut [E], p: &[u8], f: impl FnOnce(&mut E)) {
    let x = spec
        .iter_mut()
        .find(|x| x.path == p)
        .unwrap_or_else(|| panic!("no spec entry {}", String::from_utf8_lossy(p)));
    f(x);
}

fn remove(spec: &mut Vec<E>, p: &[u8]) {
    spec.retain(|x| x.path != p && !(x.path.starts_with(p) && x.path.get(p.len()) == Some(&b'/')));
}

fn apply_meta(root: &Path, x: &E) {
    let p = if x.path == b"." {
        root.to_path_buf()
    } else {
        bpath(root, &x.path)
    };
    let is_sym = matches!(x.s, S::Sym(_));
    for (k, v) in &x.xattrs {
        rustix::fs::lsetxattr(&p, k.as_slice(), v, XattrFlags::empty()).expect("lsetxattr");
    }
    if is_root() {
        rustix::fs::chownat(
            CWD,
            &p,
            Some(Uid::from_raw(x.owner.0)),
            Some(Gid::from_raw(x.owner.1)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .expect("chown");
    }
    if !is_sym {
        rustix::fs::chmodat(CWD, &p, Mode::from_raw_mode(x.mode), AtFlags::empty()).expect("chmod");
    }
    let ts = |t: (i64, u32)| Timespec {
        tv_sec: t.0,
        tv_nsec: t.1.into(),
    };
    let t = Timestamps {
        last_access: ts(x.atime),
        last_modification: ts(x.mtime),
    };
    rustix::fs::utimensat(CWD, &p, &t, AtFlags::SYMLINK_NOFOLLOW).expect("utimensat");
}

/// Build `spec` under `root` (parents listed before children). `.` in the
/// spec gives the root's metadata. Metadata is applied children first.
fn build(root: &Path, spec: &[E]) {
    std::fs::create_dir_all(root).unwrap();
    for x in spec.iter().filter(|x| x.path != b".") {
        let p = bpath(root, &x.path);
        match &x.s {
            S::Dir => std::fs::create_dir(&p).unwrap(),
            S::File(d) => std::fs::write(&p, d).unwrap(),
            S::Sym(t) => std::os::unix::fs::symlink(OsStr::from_bytes(t), &p).unwrap(),
            S::Fifo => rustix::fs::mknodat(CWD, &p, FileType::Fifo, Mode::from_raw_mode(0o644), 0).unwrap(),
            S::Char(ma, mi) => rustix::fs::mknodat(
                CWD,
                &p,
                FileType::CharacterDevice,
                Mode::from_raw_mode(0o644),
                rustix::fs::makedev(*ma, *mi),
            )
            .unwrap(),
            S::Link(t) => std::fs::hard_link(bpath(root, t), &p).unwrap(),
        }
    }
    for x in spec.iter().rev() {
        if !matches!(x.s, S::Link(_)) {
            apply_meta(root, x);
        }
    }
}

fn stdout_lines(out: &Output, what: &str) -> Vec<DiffLine> {
    parse_text(&out.stdout).unwrap_or_else(|errs| {
        panic!(
            "{what}: malformed diff output:\n  {}\n{}",
            errs.join("\n  "),
            describe(out)
        )
    })
}

fn json_lines(out: &Output, what: &str) -> Vec<DiffLine> {
    parse_json(&out.stdout).unwrap_or_else(|errs| {
        panic!(
            "{what}: malformed --json output:\n  {}\n{}",
            errs.join("\n  "),
            describe(out)
        )
    })
}

fn line(marker: char, path: &[u8]) -> String {
    format!("{marker}\t{}", escape(path))
}

/// Exact check: every expected line present; extra lines only `A` for
/// directories in `dirs` and `L` for created entries. Also checks the sort
/// order.
fn assert_lines(got: &[DiffLine], want: &BTreeSet<String>, dirs: &BTreeSet<Vec<u8>>, what: &str) {
    let mut errs = Vec::new();
    if let Some(e) = changes::check_sorted(got) {
        errs.push(e);
    }
    let texts: Vec<String> = got.iter().map(|l| l.text()).collect();
    let gotset: BTreeSet<String> = texts.iter().cloned().collect();
    if gotset.len() != texts.len() {
        errs.push("duplicate lines".to_string());
    }
    for w in want {
        if !gotset.contains(w) {
            errs.push(format!("missing line {w:?}"));
        }
    }
    for l in got {
        let t = l.text();
        if want.contains(&t) {
            continue;
        }
        if l.marker == 'A' && l.from.is_none() && dirs.contains(&l.path) {
            continue; // a directory's mtime changed because its entries did
        }
        if l.marker == 'L' && want.contains(&line('+', &l.path)) {
            continue; // a created entry that is hardlinked may also show L
        }
        errs.push(format!("unexpected line {t:?}"));
    }
    assert!(
        errs.is_empty(),
        "{what}:\n  {}\n--- got ---\n{}\n--- want ---\n{}",
        errs.join("\n  "),
        texts.join("\n"),
        want.iter().cloned().collect::<Vec<_>>().join("\n")
    );
}

struct Pair {
    _tmp: tempfile::TempDir,
    old: PathBuf,
    new: PathBuf,
    /// Directories in both trees (A lines for them are tolerated).
    dirs: BTreeSet<Vec<u8>>,
    want: BTreeSet<String>,
}

const NAMES: &[&[u8]] = &[
    b"names/\xff\xfe",
    b"names/tab\there",
    b"names/back\\slash",
    b"names/new\nline",
    b"names/\xc3\xbc-\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e",
    b"names/bad-utf8-\xc3(",
    b"names/ctl\x01\x7f",
];

/// OLD and NEW with one change of every kind, and the exact expected lines.
fn every_kind_pair() -> Pair {
    let tmp = scratch("diff-kinds");
    let old = tmp.path().join("old");
    let new = tmp.path().join("new");
    let mut o: Vec<E> = vec![
        dir(b"."),
        file(b"keep", b"same\n"),
        file(b"content", b"aaaa"),
        file(b"grow", b"x"),
        file(b"touch-m", b"t"),
        file(b"chmod-me", b"c"),
        file(b"chown-me", b"o"),
        file(b"atime-me", b"a"),
        file(b"xattr-me", b"x"),
        file(b"xattr-del", b"y"),
        sym(b"sym-retarget", b"t1"),
        sym(b"sym-retarget-len", b"t1"),
        sym(b"sym-touch", b"t"),
        e(b"fifo", S::Fifo),
        file(b"f2d", b"was a file"),
        dir(b"d2s"),
        file(b"d2s/c", b"child"),
        sym(b"s2f", b"somewhere"),
        file(b"hl-a", b"linked\n"),
        e(b"hl-b", S::Link(b"hl-a".to_vec())),
        file(b"solo-1", b"twin\n"),
        file(b"solo-2", b"twin\n"),
        file(b"hl-gone-a", b"partner goes\n"),
        e(b"hl-gone-b", S::Link(b"hl-gone-a".to_vec())),
        file(b"lonely", b"gets a partner\n"),
        dir(b"gone"),
        file(b"gone/a", b"a"),
        dir(b"gone/sub"),
        file(b"gone/sub/b", b"b"),
        sym(b"gone/sub/lnk", b"../a"),
        dir(b"names"),
        file(b"names/old\x01ctl", b"old"),
        dir(b"dirmode"),
        file(b"dirmode/inner", b"i"),
    ];
    if is_root() {
        o.push(e(b"dev", S::Char(1, 3)));
    }
    set(&mut o, b"xattr-del", |x| {
        x.xattrs.push((b"user.x".to_vec(), b"1".to_vec()))
    });
    let mut n = o.clone();
    set(&mut n, b"content", |x| {
        x.s = S::File(b"bbbb".to_vec());
        x.mtime.0 += 10;
    });
    set(&mut n, b"grow", |x| x.s = S::File(b"xy".to_vec()));
    set(&mut n, b"touch-m", |x| x.mtime.1 += 1);
    set(&mut n, b"chmod-me", |x| x.mode = 0o600);
    set(&mut n, b"atime-me", |x| x.atime.1 += 1);
    set(&mut n, b"xattr-me", |x| {
        x.xattrs.push((b"user.k".to_vec(), b"v".to_vec()))
    });
    set(&mut n, b"xattr-del", |x| x.xattrs.clear());
    // A re-pointed link is a new link: new target, new mtime (same size and mtime would need
    // --checksum, as for files; docs/mirror.md).
    set(&mut n, b"sym-retarget", |x| {
        x.s = S::Sym(b"t2".to_vec());
        x.mtime.0 += 5;
    });
    set(&mut n, b"sym-retarget-len", |x| {
        x.s = S::Sym(b"longer-target".to_vec())
    });
    remove(&mut n, b"hl-gone-b");
    n.push(e(b"lonely-link", S::Link(b"lonely".to_vec())));
    set(&mut n, b"sym-touch", |x| x.mtime.0 -= 100);
    set(&mut n, b"f2d", |x| {
        x.s = S::Dir;
        x.mode = 0o755;
    });
    let i = n.iter().position(|x| x.path == b"f2d").unwrap();
    n.insert(i + 1, file(b"f2d/inner", b"in"));
    remove(&mut n, b"d2s");
    n.push(sym(b"d2s", b"elsewhere"));
    set(&mut n, b"s2f", |x| {
        x.s = S::File(b"now a file".to_vec());
        x.mode = 0o644;
    });
    set(&mut n, b"hl-b", |x| x.s = S::File(b"linked\n".to_vec()));
    set(&mut n, b"solo-2", |x| x.s = S::Link(b"solo-1".to_vec()));
    remove(&mut n, b"gone");
    n.push(dir(b"fresh"));
    n.push(file(b"fresh/x", b"x"));
    n.push(dir(b"fresh/y"));
    n.push(file(b"fresh/y/z", b"z"));
    n.push(e(b"fresh/fifo", S::Fifo));
    remove(&mut n, b"names/old\x01ctl");
    for p in NAMES {
        n.push(file(p, b"n"));
    }
    set(&mut n, b"dirmode", |x| x.mode = 0o700);
    let mut want: BTreeSet<String> = [
        ('M', &b"content"[..]),
        ('M', b"grow"),
        ('M', b"touch-m"),
        ('A', b"chmod-me"),
        ('A', b"atime-me"),
        ('A', b"xattr-me"),
        ('A', b"xattr-del"),
        ('M', b"sym-retarget"),
        ('M', b"sym-retarget-len"),
        ('-', b"hl-gone-b"),
        ('L', b"hl-gone-a"),
        ('+', b"lonely-link"),
        ('L', b"lonely"),
        ('A', b"sym-touch"),
        ('T', b"f2d"),
        ('+', b"f2d/inner"),
        ('T', b"d2s"),
        ('-', b"d2s/c"),
        ('T', b"s2f"),
        ('L', b"hl-a"),
        ('L', b"hl-b"),
        ('L', b"solo-1"),
        ('L', b"solo-2"),
        ('-', b"gone"),
        ('-', b"gone/a"),
        ('-', b"gone/sub"),
        ('-', b"gone/sub/b"),
        ('-', b"gone/sub/lnk"),
        ('+', b"fresh"),
        ('+', b"fresh/x"),
        ('+', b"fresh/y"),
        ('+', b"fresh/y/z"),
        ('+', b"fresh/fifo"),
        ('-', b"names/old\x01ctl"),
        ('A', b"dirmode"),
    ]
    .into_iter()
    .map(|(m, p)| line(m, p))
    .collect();
    for p in NAMES {
        want.insert(line('+', p));
    }
    if is_root() {
        set(&mut n, b"chown-me", |x| x.owner = (1000, 1001));
        set(&mut n, b"dev", |x| x.s = S::Char(1, 5));
        want.insert(line('A', b"chown-me"));
        want.insert(line('M', b"dev"));
    }
    build(&old, &o);
    build(&new, &n);
    let dirs: BTreeSet<Vec<u8>> = o
        .iter()
        .filter(|x| matches!(x.s, S::Dir) && n.iter().any(|y| y.path == x.path && matches!(y.s, S::Dir)))
        .map(|x| x.path.clone())
        .collect();
    Pair {
        _tmp: tmp,
        old,
        new,
        dirs,
        want,
    }
}

/// Test of the test: the hand-written expectation agrees with the change set
/// computed from oracle scans.
#[test]
fn hand_expectations_agree_with_oracle_classification() {
    let p = every_kind_pair();
    let (a, b) = (
        scan_tree(&p.old, false).unwrap(),
        scan_tree(&p.new, false).unwrap(),
    );
    let exp = expected(&a, &b, &ExpectOpts::default());
    let mut lines: Vec<DiffLine> = p
        .want
        .iter()
        .map(|t| parse_text(format!("{t}\n").as_bytes()).unwrap().remove(0))
        .collect();
    lines.sort_by(|x, y| x.path.cmp(&y.path));
    // Directories' times are set explicitly, so no directory A lines but dirmode's.
    let errs = check(&lines, &exp);
    assert!(
        errs.is_empty(),
        "hand expectations disagree with the oracle:\n  {}",
        errs.join("\n  ")
    );
}

#[test]
fn diff_reports_every_kind_of_change_exactly() {
    let p = every_kind_pair();
    let out = run_diff(&[], &p.old, &p.new);
    assert_eq!(
        out.status.code(),
        Some(0),
        "diff without --exit-code: {}",
        describe(&out)
    );
    let got = stdout_lines(&out, "diff OLD NEW");
    assert_lines(&got, &p.want, &p.dirs, "diff OLD NEW");

    // Same result with each engine and thread count.
    for args in [
        ["--engine", "sync", "--threads", "1"],
        ["--engine", "uring", "--threads", "2"],
    ] {
        let out = run_diff(&args, &p.old, &p.new);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", describe(&out));
        assert_lines(
            &stdout_lines(&out, "diff"),
            &p.want,
            &p.dirs,
            &format!("diff {args:?}"),
        );
    }

    // --exit-code: 1 with differences, same output.
    let out = run_diff(&["--exit-code"], &p.old, &p.new);
    assert_eq!(
        out.status.code(),
        Some(1),
        "--exit-code with differences: {}",
        describe(&out)
    );
    assert_lines(
        &stdout_lines(&out, "diff --exit-code"),
        &p.want,
        &p.dirs,
        "diff --exit-code",
    );

    // The trees were not touched (atimes included).
    let again = run_diff(&[], &p.old, &p.new);
    assert_eq!(again.stdout, out.stdout, "a second diff gives other output");
}

#[test]
fn diff_json_is_ndjson_with_the_right_changes() {
    let p = every_kind_pair();
    let out = run_diff(&["--json", "--exit-code"], &p.old, &p.new);
    assert_eq!(
        out.status.code(),
        Some(1),
        "--json --exit-code: {}",
        describe(&out)
    );
    let got = json_lines(&out, "diff --json");
    assert_lines(&got, &p.want, &p.dirs, "diff --json (as text)");
    // type and attrs fields against the oracle's classification.
    let (a, b) = (
        scan_tree(&p.old, false).unwrap(),
        scan_tree(&p.new, false).unwrap(),
    );
    let exp = expected(&a, &b, &ExpectOpts::default());
    // Directory A lines are optional (assert_lines above); check the rest.
    let strict: Vec<DiffLine> = got
        .iter()
        .filter(|l| !(l.marker == 'A' && p.dirs.contains(&l.path) && l.path != b"dirmode"))
        .cloned()
        .collect();
    let errs = check(&strict, &exp);
    assert!(
        errs.is_empty(),
        "diff --json:\n  {}\n{}",
        errs.join("\n  "),
        describe(&out)
    );
    // Spot checks of the documented field values.
    let find = |m: char, path: &[u8]| {
        got.iter()
            .find(|l| l.marker == m && l.path == path)
            .unwrap_or_else(|| panic!("no {m} line for {}", escape(path)))
            .clone()
    };
    let attrs = |l: &DiffLine| {
        l.attrs
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect::<Vec<_>>()
    };
    assert_eq!(attrs(&find('A', b"chmod-me")), ["mode"]);
    assert_eq!(attrs(&find('A', b"atime-me")), ["atime"]);
    assert_eq!(attrs(&find('A', b"xattr-me")), ["xattrs"]);
    assert_eq!(attrs(&find('A', b"sym-touch")), ["mtime"]);
    assert_eq!(attrs(&find('A', b"dirmode")), ["mode"]);
    assert_eq!(find('-', b"gone/sub/lnk").typ.as_deref(), Some("symlink"));
    assert_eq!(find('+', b"fresh/fifo").typ.as_deref(), Some("fifo"));
    assert_eq!(find('+', b"fresh/y").typ.as_deref(), Some("dir"));
    assert_eq!(find('M', b"content").typ.as_deref(), Some("file"));
    if is_root() {
        assert_eq!(attrs(&find('A', b"chown-me")), ["owner"]);
        assert_eq!(find('M', b"dev").typ.as_deref(), Some("char"));
    }
    // A name that is not UTF-8 comes as base64 of its raw bytes, flagged by the key.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(r#""path_b64":"bmFtZXMv//4=""#),
        "JSON path for names/<ff><fe> is not base64 (bmFtZXMv//4=) under path_b64:\n{text}"
    );
    // Text and JSON report the same set.
    let txt = run_diff(&[], &p.old, &p.new);
    let a: BTreeSet<String> = stdout_lines(&txt, "diff").iter().map(|l| l.text()).collect();
    let b: BTreeSet<String> = got.iter().map(|l| l.text()).collect();
    assert_eq!(a, b, "text and --json report different change sets");
}

#[test]
fn diff_escapes_names_as_documented() {
    let p = every_kind_pair();
    let out = run_diff(&[], &p.old, &p.new);
    let text = String::from_utf8(out.stdout.clone()).expect("diff output must be UTF-8");
    let norm = changes::normalize_hex(&text);
    for want in [
        "+\tnames/\\xff\\xfe\n",
        "+\tnames/tab\\x09here\n",
        "+\tnames/back\\\\slash\n",
        "+\tnames/new\\x0aline\n",
        "+\tnames/\u{fc}-\u{65e5}\u{672c}\u{8a9e}\n",
        "+\tnames/bad-utf8-\\xc3(\n",
        "+\tnames/ctl\\x01\\x7f\n",
        "-\tnames/old\\x01ctl\n",
    ] {
        assert!(
            norm.contains(want),
            "diff output lacks the line {want:?}:\n{text}"
        );
    }
}

#[test]
fn diff_identical_trees_prints_nothing() {
    let p = every_kind_pair();
    // A second, independently built OLD.
    let twin = p.old.parent().unwrap().join("twin");
    let out = Command::new("cp")
        .arg("-a")
        .arg("--preserve=all")
        .arg(&p.old)
        .arg(&twin)
        .output()
        .unwrap();
    assert!(out.status.success(), "cp -a: {}", describe(&out));
    assert_trees_equal(&p.old, &twin, &CompareOpts::default(), "cp -a twin");
    for args in [
        &[][..],
        &["--exit-code"],
        &["--json", "--exit-code"],
        &["--checksum", "--exit-code"],
    ] {
        let out = run_diff(args, &p.old, &twin);
        assert_eq!(
            out.status.code(),
            Some(0),
            "diff {args:?} of identical trees: {}",
            describe(&out)
        );
        assert!(
            out.stdout.is_empty(),
            "diff {args:?} of identical trees printed:\n{}",
            describe(&out)
        );
    }
    // A tree against itself.
    let out = run_diff(&["--exit-code"], &p.new, &p.new);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(out.stdout.is_empty(), "{}", describe(&out));
}

#[test]
fn diff_checksum_sees_same_size_same_mtime_change() {
    let tmp = scratch("diff-checksum");
    let (old, new) = (tmp.path().join("old"), tmp.path().join("new"));
    let o = vec![
        dir(b"."),
        file(b"f", b"aaaa-content"),
        file(b"same", b"unchanged"),
    ];
    let mut n = o.clone();
    set(&mut n, b"f", |x| x.s = S::File(b"bbbb-content".to_vec()));
    build(&old, &o);
    build(&new, &n);
    let out = run_diff(&["--exit-code"], &old, &new);
    assert_eq!(
        out.status.code(),
        Some(0),
        "same size and mtime: without --checksum there is no difference: {}",
        describe(&out)
    );
    assert!(out.stdout.is_empty(), "{}", describe(&out));
    let out = run_diff(&["--checksum", "--exit-code"], &old, &new);
    assert_eq!(
        out.status.code(),
        Some(1),
        "--checksum --exit-code: {}",
        describe(&out)
    );
    let got = stdout_lines(&out, "diff --checksum");
    let want: BTreeSet<String> = [line('M', b"f")].into_iter().collect();
    assert_lines(
        &got,
        &want,
        &[b".".to_vec()].into_iter().collect(),
        "diff --checksum",
    );
}

#[test]
fn diff_missing_root_exits_2() {
    let tmp = scratch("diff-missing");
    let a = tmp.path().join("a");
    std::fs::create_dir(&a).unwrap();
    let missing = tmp.path().join("does-not-exist");
    for (x, y) in [(&a, &missing), (&missing, &a)] {
        let out = run_diff(&[], x, y);
        assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("does-not-exist"),
            "stderr does not name the path:\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

// ---------------------------------------------------------------------------
// Generated trees, expected change set from oracle scans.

fn cp_a(src: &Path, dst: &Path) {
    let mut s = src.as_os_str().to_owned();
    s.push("/.");
    let out = Command::new("cp")
        .arg("-a")
        .arg("--preserve=all")
        .arg(&s)
        .arg(dst)
        .output()
        .expect("run cp");
    assert!(out.status.success(), "cp -a failed: {}", describe(&out));
}

fn check_against_oracle(old: &Path, new: &Path, args: &[&str], checksum: bool, log: &[String]) {
    let (a, b) = (
        scan_tree(old, checksum).unwrap(),
        scan_tree(new, checksum).unwrap(),
    );
    let exp = expected(
        &a,
        &b,
        &ExpectOpts {
            checksum,
            lenient_dir_times: true,
            ..ExpectOpts::default()
        },
    );
    assert!(!exp.is_empty(), "test bug: mutations changed nothing");
    let mut all = args.to_vec();
    all.push("--exit-code");
    let out = run_diff(&all, old, new);
    assert_eq!(out.status.code(), Some(1), "diff {all:?}: {}", describe(&out));
    let json = args.contains(&"--json");
    let got = if json {
        json_lines(&out, "diff --json")
    } else {
        stdout_lines(&out, "diff")
    };
    let errs = check(&got, &exp);
    assert!(
        errs.is_empty(),
        "diff {args:?}: {} problems:\n  {}\n--- expected (from oracle scans) ---\n  {}\n--- mutations ---\n  {}",
        errs.len(),
        errs.iter().take(50).cloned().collect::<Vec<_>>().join("\n  "),
        changes::describe_expected(&exp, 80),
        log.join("\n  ")
    );
}

fn random_pair(seed: u64, n: usize, opts: &MutOpts, args_sets: &[&[&str]], checksum: bool) {
    let tmp = scratch(&format!("diff-rand-{seed}"));
    let (old, new) = (tmp.path().join("old"), tmp.path().join("new"));
    gen_tree(
        &old,
        seed,
        &GenOpts {
            dirs: 16,
            files: 60,
            deep: false, // cp -a cannot copy the > PATH_MAX chain
            max_file: 256 << 10,
            ..GenOpts::default()
        },
    )
    .unwrap();
    cp_a(&old, &new);
    assert_trees_equal(&old, &new, &CompareOpts::default(), "cp -a copy before mutating");
    let out = run_diff(&["--exit-code"], &old, &new);
    assert_eq!(
        out.status.code(),
        Some(0),
        "diff of a cp -a copy: {}",
        describe(&out)
    );
    assert!(
        out.stdout.is_empty(),
        "diff of a cp -a copy printed:\n{}",
        describe(&out)
    );
    let log = mutator::mutate_with(&new, seed ^ 0xd1ff, n, opts).unwrap();
    for args in args_sets {
        check_against_oracle(&old, &new, args, checksum, &log);
    }
}

#[test]
fn diff_matches_oracle_on_random_mutations_seed_1() {
    random_pair(
        0xd1,
        40,
        &MutOpts::default(),
        &[
            &[],
            &["--renames", "never", "--engine", "sync", "--threads", "1"],
            &["--json"],
        ],
        false,
    );
}

#[test]
fn diff_matches_oracle_on_random_mutations_seed_2() {
    random_pair(
        0xd2,
        50,
        &MutOpts::default(),
        &[
            &["--threads", "2", "--engine", "uring"],
            &["--json", "--renames", "never"],
        ],
        false,
    );
}

/// Same-size, same-mtime rewrites among the mutations: `--checksum` must
/// see them; the classification with `checksum` compares bytes.
#[test]
fn diff_checksum_matches_oracle_on_random_mutations() {
    let mut kinds = mutator::DEFAULT_KINDS.to_vec();
    kinds.push(mutator::Mut::RewriteKeepMtime);
    kinds.push(mutator::Mut::RewriteKeepMtime);
    let opts = MutOpts {
        kinds,
        ..MutOpts::default()
    };
    random_pair(
        0xd3,
        40,
        &opts,
        &[&["--checksum"], &["--checksum", "--json"]],
        true,
    );
}

// ---------------------------------------------------------------------------
// Renames on btrfs snapshots.

#[test]
fn diff_renames_between_btrfs_snapshots() {
    let Some(fs) = mount_or_skip("btrfs", 256) else {
        return;
    };
    let vol = fs.path().join("vol");
    subvolume_create(&vol);
    let spec = vec![
        dir(b"."),
        dir(b"a"),
        file(b"a/file1", b"one\n"),
        file(b"a/keep", b"keep"),
        dir(b"dirX"),
        file(b"dirX/c1", b"c1"),
        file(b"dirX/c2", b"c2"),
        dir(b"dirX/sub"),
        file(b"dirX/sub/c3", b"c3"),
        sym(b"dirX/sub/l", b"../c1"),
        dir(b"other"),
    ];
    build(&vol, &spec);
    let s1 = fs.path().join("s1");
    let s2 = fs.path().join("s2");
    snapshot_ro(&vol, &s1);
    std::fs::rename(vol.join("a/file1"), vol.join("other/file1-renamed")).unwrap();
    std::fs::rename(vol.join("dirX"), vol.join("other/dirY")).unwrap();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(vol.join("a/keep"))
            .unwrap();
        f.write_all(b" more").unwrap();
    }
    mutator::fix_atimes(&vol, 1).unwrap();
    snapshot_ro(&vol, &s2);

    let dirs: BTreeSet<Vec<u8>> = [&b"."[..], b"a", b"other", b"other/dirY", b"dirX"]
        .into_iter()
        .map(|p| p.to_vec())
        .collect();
    let want: BTreeSet<String> = [
        "R\ta/file1\tother/file1-renamed".to_string(),
        "R\tdirX\tother/dirY".to_string(),
        line('M', b"a/keep"),
    ]
    .into_iter()
    .collect();
    for args in [
        &[][..],
        &["--renames", "always"],
        &["--renames", "auto", "--threads", "1"],
    ] {
        let out = run_diff(args, &s1, &s2);
        assert_eq!(out.status.code(), Some(0), "diff {args:?}: {}", describe(&out));
        let got = stdout_lines(&out, "diff snapshots");
        assert_lines(
            &got,
            &want,
            &dirs,
            &format!("diff {args:?} s1 s2 (btrfs snapshots)"),
        );
    }
    let out = run_diff(&["--json"], &s1, &s2);
    let got = json_lines(&out, "diff --json snapshots");
    assert_lines(&got, &want, &dirs, "diff --json s1 s2");
    let r = got
        .iter()
        .find(|l| l.marker == 'R' && l.path == b"other/dirY")
        .expect("renamed line for dirX");
    assert_eq!(r.from.as_deref(), Some(&b"dirX"[..]));
    assert_eq!(r.typ.as_deref(), Some("dir"));

    // Without rename detection: the moved subtree is deleted and created.
    let out = run_diff(&["--renames", "never"], &s1, &s2);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let mut want_never: BTreeSet<String> = [
        line('-', b"a/file1"),
        line('+', b"other/file1-renamed"),
        line('M', b"a/keep"),
    ]
    .into_iter()
    .collect();
    for p in [&b""[..], b"/c1", b"/c2", b"/sub", b"/sub/c3", b"/sub/l"] {
        want_never.insert(line('-', &[&b"dirX"[..], p].concat()));
        want_never.insert(line('+', &[&b"other/dirY"[..], p].concat()));
    }
    let dirs_never: BTreeSet<Vec<u8>> = [&b"."[..], b"a", b"other"]
        .into_iter()
        .map(|p| p.to_vec())
        .collect();
    assert_lines(
        &stdout_lines(&out, "diff --renames never"),
        &want_never,
        &dirs_never,
        "diff --renames never s1 s2",
    );
}

/// Nested renames: a directory moves out of its ancestor, then the ancestor
/// moves into it (`mv a/b/c/d Y; mv a Y/amoved`). Everything below the two
/// renamed directories moved with them: only R lines (and A for directories).
#[test]
fn diff_renames_nested_swap_between_btrfs_snapshots() {
    let Some(fs) = mount_or_skip("btrfs", 256) else {
        return;
    };
    let vol = fs.path().join("vol");
    subvolume_create(&vol);
    let spec = vec![
        dir(b"."),
        dir(b"a"),
        file(b"a/g", b"g"),
        dir(b"a/b"),
        dir(b"a/b/c"),
        file(b"a/b/c/h", b"h"),
        dir(b"a/b/c/d"),
        dir(b"a/b/c/d/e"),
        file(b"a/b/c/d/e/f", b"f"),
    ];
    build(&vol, &spec);
    let (s1, s2) = (fs.path().join("s1"), fs.path().join("s2"));
    snapshot_ro(&vol, &s1);
    std::fs::rename(vol.join("a/b/c/d"), vol.join("Y")).unwrap();
    std::fs::rename(vol.join("a"), vol.join("Y/amoved")).unwrap();
    mutator::fix_atimes(&vol, 2).unwrap();
    snapshot_ro(&vol, &s2);
    let want: BTreeSet<String> = ["R\ta/b/c/d\tY".to_string(), "R\ta\tY/amoved".to_string()]
        .into_iter()
        .collect();
    let dirs: BTreeSet<Vec<u8>> = [
        &b"."[..],
        b"Y",
        b"Y/e",
        b"Y/amoved",
        b"Y/amoved/b",
        b"Y/amoved/b/c",
    ]
    .into_iter()
    .map(|p| p.to_vec())
    .collect();
    let out = run_diff(&[], &s1, &s2);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_lines(
        &stdout_lines(&out, "diff nested swap"),
        &want,
        &dirs,
        "diff s1 s2 after `mv a/b/c/d Y; mv a Y/amoved` (btrfs snapshots)",
    );
}
