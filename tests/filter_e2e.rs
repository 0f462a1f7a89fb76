//! Filters (docs/copy.md, "Filters"): `--exclude`, `--include`, `--exclude-from`,
//! `--include-from`, `--filter`, `--files-from` (+ `-r`), `-x` and `--delete-excluded`,
//! checked against rsync as the oracle for which entries are selected.
//!
//! Mapping: `ringsync copy RULES SRC DST` is `rsync -aH RULES SRC/ DST/`, and
//! `ringsync mirror RULES SRC DST` is `rsync -aH --delete RULES SRC/ DST/` (rsync gets `-H`
//! because ringsync always keeps hardlinks, `--numeric-ids` and `-S` only to keep it exact
//! and fast). Both results are compared by the tree oracle (`common::oracle`): entry set,
//! types, modes, owners, mtimes, symlink targets, file content (sha256) and hardlink groups;
//! atime, xattrs and allocation (sparseness) are not compared, since rsync does not keep them
//! with these options.

mod common;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::oracle::{compare_scanned, scan_tree, Kind, Tree};
use common::*;

const RSYNC: &str = "/usr/bin/rsync";

// ---------------------------------------------------------------------------
// Running the two tools.

/// One command-line element of a row. Rules keep their order on both command lines.
#[derive(Clone, Debug)]
enum A {
    /// A flag given to both tools as is (`-r`, `-x`).
    Flag(&'static str),
    /// `--opt VALUE`: two arguments to ringsync, `--opt=VALUE` to rsync.
    Two(&'static str, String),
    /// `--opt=VALUE` to both tools.
    Eq(&'static str, String),
    /// Given to rsync only (`--from0`: ringsync detects NUL-separated lists itself).
    RsyncOnly(&'static str),
}

fn ringsync_args(args: &[A]) -> Vec<String> {
    let mut v = Vec::new();
    for a in args {
        match a {
            A::Flag(f) => v.push(f.to_string()),
            A::Two(o, val) => {
                v.push(o.to_string());
                v.push(val.clone());
            }
            A::Eq(o, val) => v.push(format!("{o}={val}")),
            A::RsyncOnly(_) => {}
        }
    }
    v
}

fn rsync_args(args: &[A]) -> Vec<String> {
    let mut v = Vec::new();
    for a in args {
        match a {
            A::Flag(f) | A::RsyncOnly(f) => v.push(f.to_string()),
            A::Two(o, val) | A::Eq(o, val) => v.push(format!("{o}={val}")),
        }
    }
    v
}

/// The ringsync command line of a row, readably (values in Rust string syntax).
fn render(args: &[A]) -> String {
    let mut v = Vec::new();
    for a in args {
        match a {
            A::Flag(f) => v.push(f.to_string()),
            A::Two(o, val) => v.push(format!("{o} {val:?}")),
            A::Eq(o, val) => v.push(format!("{o}={val:?}")),
            A::RsyncOnly(f) => v.push(format!("(rsync: {f})")),
        }
    }
    v.join(" ")
}

fn spawn_with_stdin(mut cmd: Command, stdin: Option<&[u8]>) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    if let Some(data) = stdin {
        let mut w = child.stdin.take().expect("stdin pipe");
        w.write_all(data).expect("write stdin");
    }
    child.wait_with_output().expect("wait")
}

/// `ringsync SUB ARGS SRC DST`, with `stdin` fed to it (else /dev/null).
fn ringsync(sub: &str, args: &[String], src: &Path, dst: &Path, stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(bin());
    cmd.arg(sub).args(args).arg(src).arg(dst);
    spawn_with_stdin(cmd, stdin)
}

/// `rsync -aH --numeric-ids -S [--delete] ARGS SRC/ DST/`.
fn rsync(delete: bool, args: &[String], src: &Path, dst: &Path, stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(RSYNC);
    cmd.args(["-aH", "--numeric-ids", "-S"]);
    if delete {
        cmd.arg("--delete");
    }
    cmd.args(args);
    cmd.arg(format!("{}/", src.display()));
    cmd.arg(format!("{}/", dst.display()));
    spawn_with_stdin(cmd, stdin)
}

fn rsync_ok(delete: bool, args: &[String], src: &Path, dst: &Path, stdin: Option<&[u8]>) {
    let out = rsync(delete, args, src, dst, stdin);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the oracle failed: rsync {args:?} {} {}: {}",
        src.display(),
        dst.display(),
        describe(&out)
    );
}

/// An exact clone of a prepared target (mirror pre-state), by `cp -a`.
fn clone_tree(from: &Path, to: &Path) {
    let out = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .expect("run cp");
    assert!(out.status.success(), "cp -a: {}", describe(&out));
}

fn have_rsync() -> bool {
    if Path::new(RSYNC).is_file() {
        return true;
    }
    skip_or_fail("rsync not installed");
    false
}

// ---------------------------------------------------------------------------
// Comparing.

fn cmp_opts(ignore_root: bool) -> CompareOpts {
    CompareOpts {
        atime: false,
        xattrs: false,
        sparse: false,
        // With --files-from the root's attributes are not rsync's business (rsync sets them
        // only when a listed path starts with "./"); everything below the root is compared.
        ignore: if ignore_root {
            vec![b".".to_vec()]
        } else {
            Vec::new()
        },
        ..CompareOpts::default()
    }
}

const LEGEND: &str = "(a = rsync's result, b = ringsync's: \"missing in target\" = rsync has it and \
ringsync not, \"extra in target\" = ringsync has it and rsync not, \"X vs Y\" = rsync's vs ringsync's)";

/// Compare rsync's result (`a`) with ringsync's (`b`). Directories that are no directory in
/// SRC (left in a mirror target because they hold protected entries) had their mtime set by
/// the deletions inside them at run time, so their mtime is not compared.
fn compare_results(rs: &Path, rg: &Path, src: &Tree, ignore_root: bool) -> Vec<String> {
    let ta = match scan_tree(rs, true) {
        Ok(t) => t,
        Err(e) => return vec![format!("cannot scan rsync's result {}: {e}", rs.display())],
    };
    let mut tb = match scan_tree(rg, true) {
        Ok(t) => t,
        Err(e) => return vec![format!("cannot scan ringsync's result {}: {e}", rg.display())],
    };
    for (p, eb) in tb.entries.iter_mut() {
        let src_dir = src.entries.get(p).map(|e| e.kind == Kind::Dir).unwrap_or(false);
        if eb.kind == Kind::Dir && !src_dir {
            if let Some(ea) = ta.entries.get(p) {
                if ea.kind == Kind::Dir {
                    eb.mtime = ea.mtime;
                }
            }
        }
    }
    compare_scanned(&ta, &tb, &cmp_opts(ignore_root))
}

fn fmt_diffs(d: &[String]) -> String {
    let mut s = d.iter().take(40).cloned().collect::<Vec<_>>().join("\n    ");
    if d.len() > 40 {
        s.push_str(&format!("\n    ... and {} more", d.len() - 40));
    }
    s
}

fn exists(root: &Path, rel: &str) -> bool {
    std::fs::symlink_metadata(root.join(rel)).is_ok()
}

// ---------------------------------------------------------------------------
// The fixture.

fn write_file(root: &Path, rel: &str, mode: u32) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    // Content unique per path, of varying length.
    let reps = 1 + rel.len() % 7;
    let data = format!("content of {rel:?}\n").repeat(reps * 13);
    std::fs::write(&p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mkdir(root: &Path, rel: &str, mode: u32) {
    let p = root.join(rel);
    std::fs::create_dir_all(&p).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Set the mtime of `paths` (relative to `root`; symlinks themselves) to `when`.
fn touch(root: &Path, paths: &[&str], when: &str) {
    let out = Command::new("touch")
        .args(["-h", "-d", when])
        .args(paths.iter().map(|p| root.join(p)))
        .output()
        .expect("run touch");
    assert!(out.status.success(), "touch: {}", describe(&out));
}

/// Set the mtime of every entry below `root` (root included; only directories if
/// `dirs_only`) to `when`.
fn touch_all(root: &Path, dirs_only: bool, when: &str) {
    let mut cmd = Command::new("find");
    cmd.arg(root);
    if dirs_only {
        cmd.args(["-type", "d"]);
    }
    let out = cmd
        .args(["-exec", "touch", "-h", "-d", when, "{}", "+"])
        .output()
        .expect("run find");
    assert!(out.status.success(), "find -exec touch: {}", describe(&out));
}

/// Every mtime below `root` to a fixed time in the past. Besides making directory times
/// that were not set visible, this keeps rsync (the oracle) exact: rsync 3.x does not set
/// a directory's mtime when it lies within the current second.
fn fixed_mtimes(root: &Path) {
    touch_all(root, false, "2021-03-04 05:06:07.123456789");
}

/// The source tree: same names at several depths, a file named `build`, wildcard
/// characters, a newline and spaces in names, empty directories, symlinks, a hardlink pair,
/// plus awkward names under `names/`.
fn build_fixture(src: &Path) {
    let files: &[(&str, u32)] = &[
        ("build/out.o", 0o644),
        ("build/log.txt", 0o600),
        ("build/tmp/t1.txt", 0o644),
        ("a/x", 0o644),
        ("a/main.c", 0o644),
        ("a/main.o", 0o755),
        ("a/b/util.c", 0o640),
        ("a/b/util.o", 0o644),
        ("a/b/notes.tmp", 0o644),
        ("a/b/keep.tmp", 0o644),
        ("a/b/build/deep.o", 0o644),
        ("a/b/build/deep.c", 0o644),
        ("a/b/x/inner.txt", 0o644),
        ("a/b/c/lib.c", 0o644),
        ("a/tmp/cache.c", 0o644),
        ("b/top.c", 0o644),
        ("b/top.h", 0o444),
        ("c/build", 0o755),
        ("c/cfile.c", 0o644),
        ("c/sub/b/sub.c", 0o644),
        ("c/sub/tmp/scratch.txt", 0o644),
        ("tmp/top.tmp", 0o644),
        ("main.c", 0o644),
        ("main.o", 0o644),
        ("keep.tmp", 0o644),
        ("with space.tmp", 0o644),
        ("weird [1].txt", 0o644),
        ("q?mark.c", 0o644),
        ("qxmark.c", 0o644),
        ("star*.o", 0o644),
        ("ab.txt", 0o644),
        ("bb.txt", 0o644),
        ("cc.txt", 0o644),
        ("readme.txt", 0o644),
        ("hard1.txt", 0o644),
        ("line\nbreak.c", 0o644),
    ];
    std::fs::create_dir(src).unwrap();
    for (rel, mode) in files {
        write_file(src, rel, *mode);
    }
    mkdir(src, "empty", 0o755);
    mkdir(src, "a/b/empty", 0o700);
    std::fs::hard_link(src.join("hard1.txt"), src.join("a/hard2.txt")).unwrap();
    symlink("a", src.join("link_to_a")).unwrap();
    symlink("main.c", src.join("link.c")).unwrap();
    symlink("nowhere", src.join("dangling.o")).unwrap();
    std::fs::set_permissions(src.join("a/b"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::fs::set_permissions(src.join("c/sub"), std::fs::Permissions::from_mode(0o711)).unwrap();
    // Awkward names (non-UTF-8 bytes, leading dashes, wildcard and escape characters,
    // control characters), a fifo and entries of other owners, under `names/`.
    let names: &[&[u8]] = &[
        b"-rf",
        b"--help",
        b"-",
        b"*",
        b"\\",
        b"back\\slash.c",
        b"tab\there.o",
        b" leading space.tmp",
        b"trailing space ",
        b".hidden.c",
        b"...",
        b"\xff\xfe\xfd",
        b"a\x80b\xc3(.c",
        "\u{fc}-\u{65e5}\u{672c}.c".as_bytes(),
        b"new\nline.o",
        b"[x]",
        b"?",
    ];
    mkdir(src, "names", 0o755);
    for (i, n) in names.iter().enumerate() {
        let p = src.join("names").join(OsStr::from_bytes(n));
        std::fs::write(&p, format!("awkward name {i}\n").repeat(i + 1)).unwrap();
        if i % 3 == 0 {
            std::os::unix::fs::lchown(&p, Some(1000 + i as u32), Some(2000)).unwrap();
        }
    }
    let long = "L".repeat(255);
    write_file(src, &format!("names/{long}"), 0o600);
    mkdir(src, &format!("names/{}", "d".repeat(255)), 0o755);
    write_file(src, &format!("names/{}/{long}", "d".repeat(255)), 0o644);
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.join("names/fifo.tmp"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .expect("mkfifo");
    fixed_mtimes(src);
}

/// Extraneous entries put into the mirror pre-state (files and symlinks).
const EXTRAS: &[&str] = &[
    "extra.o",
    "extra.txt",
    "extra.tmp",
    "x_extra.c",
    "q?extra.txt",
    "a/b/junk.o",
    "a/b/junk.c",
    "a/b/build/junk.txt",
    "a/b/x/extra",
    "build/new.txt",
    "tmp/extra.txt",
    "b/extra.c",
    "gone/keep.o",
    "gone/x.txt",
    "gone/sub/y.c",
    "gone2/z.txt",
    "newdir.o/f",
    "elink",
    "readme.txt/inner",
];

/// The mirror pre-state: a full copy of SRC, then extraneous entries (some matching a row's
/// rules, so protected, some not, so deleted), changed files, a removed file and a type
/// change (`readme.txt` is a directory in the target).
fn build_prestate(src: &Path, pre: &Path) {
    rsync_ok(false, &[], src, pre, None);
    std::fs::remove_file(pre.join("readme.txt")).unwrap();
    for rel in EXTRAS {
        if *rel == "elink" {
            symlink("nowhere", pre.join(rel)).unwrap();
        } else {
            write_file(pre, rel, 0o644);
        }
    }
    std::fs::write(pre.join("main.c"), "changed in the target\n").unwrap();
    std::fs::write(pre.join("a/b/util.o"), "changed in the target too\n").unwrap();
    std::fs::remove_file(pre.join("a/b/c/lib.c")).unwrap();
    // Fixed past times on what was made here (see `fixed_mtimes`); entries copied from SRC
    // keep SRC's times, so the mirror has unchanged files too.
    let when = "2022-05-06 07:08:09.987654321";
    touch(pre, EXTRAS, when);
    touch(pre, &["main.c", "a/b/util.o"], when);
    touch_all(pre, true, when);
}

// ---------------------------------------------------------------------------
// The table.

struct Row {
    name: &'static str,
    args: Vec<A>,
    /// Fed to both tools' standard input.
    stdin: Option<Vec<u8>>,
    /// Also run `mirror` / `rsync --delete` on the pre-state.
    mirror: bool,
    /// Also run the mirror with `--delete-excluded` on both sides.
    delete_excluded: bool,
    /// A `--files-from` row: the root's attributes are not compared.
    files_from: bool,
    /// Sanity of the oracle: paths rsync's copy must hold / must not hold.
    present: &'static [&'static str],
    absent: &'static [&'static str],
}

fn row(name: &'static str, args: Vec<A>) -> Row {
    Row {
        name,
        args,
        stdin: None,
        mirror: true,
        delete_excluded: false,
        files_from: false,
        present: &[],
        absent: &[],
    }
}

fn ex(p: &str) -> A {
    A::Two("--exclude", p.to_string())
}

fn inc(p: &str) -> A {
    A::Two("--include", p.to_string())
}

fn filter(r: &str) -> A {
    A::Two("--filter", r.to_string())
}

fn path_arg(opt: &'static str, p: &Path) -> A {
    A::Two(opt, p.to_str().expect("utf-8 scratch path").to_string())
}

fn rows(lists: &Path) -> Vec<Row> {
    let w = |name: &str, data: &[u8]| -> PathBuf {
        let p = lists.join(name);
        std::fs::write(&p, data).unwrap();
        p
    };
    let exclude_list = w(
        "exclude-list",
        b"# comment line\n; another comment\n\n*.o\n/build\n\nwith space.tmp\n",
    );
    let include_list = w("include-list", b"# C sources and every directory\n*.c\n\n;\n*/\n");
    let tmp_list = w("tmp-list", b"*.tmp\n");
    let ff_lines = w(
        "files-from-lines",
        b"a/b/util.c\nc/sub\n./keep.tmp\n/b/top.c\nwith space.tmp\nlink_to_a\n",
    );
    let ff_nul_data: &[u8] = b"weird [1].txt\0q?mark.c\0line\nbreak.c\0a/b/build/deep.o\0./a/x\0";
    let ff_nul = w("files-from-nul", ff_nul_data);
    let ff_rec = w("files-from-recursive", b"a/b\nc/build\nnames\n");

    let mut v = Vec::new();

    let mut r = row("anchored /build", vec![ex("/build")]);
    r.present = &["a/b/build/deep.o", "c/build", "a/b/build"];
    r.absent = &["build"];
    v.push(r);

    let mut r = row("unanchored basename *.o", vec![ex("*.o")]);
    r.delete_excluded = true;
    r.present = &["main.c", "a/main.c"];
    r.absent = &["main.o", "a/b/build/deep.o", "star*.o", "dangling.o"];
    v.push(r);

    let mut r = row("inner slash b/*.c at any depth", vec![ex("b/*.c")]);
    r.present = &["a/b/c/lib.c", "b/top.h", "a/main.c", "a/b/build/deep.c"];
    r.absent = &["b/top.c", "a/b/util.c", "c/sub/b/sub.c"];
    v.push(r);

    let mut r = row("** in the middle: a/**/x", vec![ex("a/**/x")]);
    r.present = &["a/x", "a/b/util.c", "a/b"];
    r.absent = &["a/b/x"];
    v.push(r);

    let mut r = row("leading **/: **/tmp", vec![ex("**/tmp")]);
    r.present = &["a/b/notes.tmp", "main.c", "build/log.txt"];
    r.absent = &["tmp", "a/tmp", "build/tmp", "c/sub/tmp"];
    v.push(r);

    let mut r = row(
        "*** anchored include, exclude the rest",
        vec![inc("/a/***"), ex("*")],
    );
    r.present = &["a", "a/b/x/inner.txt", "a/b/empty", "a/hard2.txt"];
    r.absent = &["b", "main.c", "c", "hard1.txt"];
    v.push(r);

    let mut r = row("*** unanchored: b/***", vec![ex("b/***")]);
    r.present = &["a/main.c", "c/sub/tmp/scratch.txt", "bb.txt", "c/build"];
    r.absent = &["b", "a/b", "c/sub/b"];
    v.push(r);

    let mut r = row("dir-only build/ (a file named build exists)", vec![ex("build/")]);
    r.delete_excluded = true;
    r.present = &["c/build", "a/b/util.c"];
    r.absent = &["build", "a/b/build"];
    v.push(r);

    let mut r = row(
        "include *.c and */ before exclude *",
        vec![inc("*.c"), inc("*/"), ex("*")],
    );
    r.present = &[
        "main.c",
        "a/b/c/lib.c",
        "a/b/empty",
        "empty",
        "link.c",
        "line\nbreak.c",
        "c/sub/b/sub.c",
    ];
    r.absent = &["main.o", "readme.txt", "link_to_a", "a/x", "c/build", "b/top.h"];
    v.push(r);

    let mut r = row(
        "gotcha: include *.c, exclude * (no */)",
        vec![inc("*.c"), ex("*")],
    );
    r.present = &["main.c", "q?mark.c", "link.c"];
    r.absent = &["a", "b", "empty", "readme.txt"];
    v.push(r);

    let mut r = row(
        "--filter '+ keep.tmp' before '- *.tmp' (two-argument form)",
        vec![filter("+ keep.tmp"), filter("- *.tmp")],
    );
    r.present = &["keep.tmp", "a/b/keep.tmp"];
    r.absent = &["with space.tmp", "a/b/notes.tmp", "tmp/top.tmp"];
    v.push(r);

    let mut r = row(
        "--filter=- *.tmp before --filter=+ keep.tmp (first match wins)",
        vec![
            A::Eq("--filter", "- *.tmp".into()),
            A::Eq("--filter", "+ keep.tmp".into()),
        ],
    );
    r.present = &["tmp", "a/b/util.c"];
    r.absent = &["keep.tmp", "a/b/keep.tmp", "a/b/notes.tmp"];
    v.push(r);

    let mut r = row(
        "--filter long forms: include PAT, exclude PAT",
        vec![filter("include notes.tmp"), filter("exclude *.tmp")],
    );
    r.present = &["a/b/notes.tmp"];
    r.absent = &["keep.tmp", "a/b/keep.tmp"];
    v.push(r);

    let mut r = row(
        "--exclude-from with comments and blank lines",
        vec![path_arg("--exclude-from", &exclude_list)],
    );
    r.present = &["a/b/build/deep.c", "keep.tmp", "a/main.c"];
    r.absent = &["main.o", "a/b/build/deep.o", "build", "with space.tmp"];
    v.push(r);

    let mut r = row(
        "--include-from (*.c, */) then --exclude *",
        vec![path_arg("--include-from", &include_list), ex("*")],
    );
    r.present = &["a/b/c/lib.c", "a/b/empty", "b/top.c"];
    r.absent = &["b/top.h", "readme.txt", "a/x"];
    v.push(r);

    let mut r = row(
        "interleaving: --filter, --exclude-from, --include in command-line order",
        vec![
            filter("+ notes.tmp"),
            path_arg("--exclude-from", &tmp_list),
            inc("keep.tmp"),
        ],
    );
    r.present = &["a/b/notes.tmp", "a/b/util.c"];
    r.absent = &["keep.tmp", "a/b/keep.tmp", "tmp/top.tmp"];
    v.push(r);

    let mut r = row("character class [ab]*", vec![ex("[ab]*")]);
    r.present = &["cc.txt", "c/cfile.c", "main.c", "c/sub"];
    r.absent = &["a", "b", "build", "ab.txt", "bb.txt", "c/build", "c/sub/b"];
    v.push(r);

    let mut r = row("negated class [!a-m]*.c", vec![ex("[!a-m]*.c")]);
    r.present = &[
        "main.c",
        "a/b/c/lib.c",
        "c/cfile.c",
        "line\nbreak.c",
        "a/b/build/deep.c",
    ];
    r.absent = &["q?mark.c", "qxmark.c", "a/b/util.c", "b/top.c", "c/sub/b/sub.c"];
    v.push(r);

    let mut r = row(
        "escaped wildcards and [^...]",
        vec![
            ex("q\\?*"),
            ex("*\\[1\\]*"),
            ex("star\\*.o"),
            ex("back\\\\slash*"),
            ex("[^a-z]*"),
        ],
    );
    r.present = &["qxmark.c", "main.o", "a/b/util.o", "names/tab\there.o"];
    r.absent = &[
        "q?mark.c",
        "weird [1].txt",
        "star*.o",
        "names/back\\slash.c",
        "names/-rf",
        "names/*",
        "names/?",
        "names/ leading space.tmp",
        "names/[x]",
    ];
    v.push(r);

    let mut r = row(
        "--exclude-from - (standard input)",
        vec![A::Two("--exclude-from", "-".into())],
    );
    r.stdin = Some(b"# from stdin\n*.tmp\n*.o\n".to_vec());
    r.present = &["main.c", "tmp"];
    r.absent = &["main.o", "keep.tmp", "a/b/notes.tmp"];
    v.push(r);

    let mut r = row(
        "--files-from, newline-separated (deep file, listed dir, ./ and / prefixes)",
        vec![path_arg("--files-from", &ff_lines)],
    );
    r.mirror = false;
    r.files_from = true;
    r.present = &[
        "a/b/util.c",
        "c/sub",
        "keep.tmp",
        "b/top.c",
        "with space.tmp",
        "link_to_a",
    ];
    r.absent = &["c/sub/b", "a/main.c", "b/top.h", "main.c", "a/b/util.o"];
    v.push(r);

    let mut r = row(
        "--files-from, NUL-separated",
        vec![path_arg("--files-from", &ff_nul), A::RsyncOnly("--from0")],
    );
    r.mirror = false;
    r.files_from = true;
    r.present = &[
        "weird [1].txt",
        "q?mark.c",
        "line\nbreak.c",
        "a/b/build/deep.o",
        "a/x",
    ];
    r.absent = &["a/b/build/deep.c", "main.c", "qxmark.c"];
    v.push(r);

    let mut r = row(
        "--files-from - (standard input, NUL-separated)",
        vec![A::Two("--files-from", "-".into()), A::RsyncOnly("--from0")],
    );
    r.stdin = Some(ff_nul_data.to_vec());
    r.mirror = false;
    r.files_from = true;
    r.present = &["line\nbreak.c", "a/b/build/deep.o"];
    r.absent = &["a/b/build/deep.c"];
    v.push(r);

    let mut r = row(
        "--files-from with -r",
        vec![path_arg("--files-from", &ff_rec), A::Flag("-r")],
    );
    r.mirror = false;
    r.files_from = true;
    r.present = &[
        "a/b/x/inner.txt",
        "a/b/build/deep.o",
        "c/build",
        "a/b/empty",
        "names/-rf",
    ];
    r.absent = &["a/main.c", "c/cfile.c", "main.c"];
    v.push(r);

    let mut r = row(
        "--files-from with -r and filters on top",
        vec![
            path_arg("--files-from", &ff_rec),
            A::Flag("-r"),
            ex("*.o"),
            ex("x/"),
        ],
    );
    r.mirror = false;
    r.files_from = true;
    r.present = &["a/b/util.c", "a/b/build/deep.c", "c/build"];
    r.absent = &["a/b/util.o", "a/b/x", "a/main.c"];
    v.push(r);

    v
}

// ---------------------------------------------------------------------------
// The test.

/// Runs every row with both tools and reports all mismatching rows at once.
#[test]
fn filters_select_what_rsync_selects() {
    if !have_rsync() {
        return;
    }
    let tmp = scratch("filters");
    let root = tmp.path();
    let src = root.join("src");
    build_fixture(&src);
    let pre = root.join("prestate");
    build_prestate(&src, &pre);
    let lists = root.join("lists");
    std::fs::create_dir(&lists).unwrap();
    let src_tree = scan_tree(&src, true).expect("scan src");
    let table = rows(&lists);
    assert!(table.len() >= 12);

    let mut failures: Vec<String> = Vec::new();
    for (i, r) in table.iter().enumerate() {
        let dir = root.join(format!("row{i:02}"));
        std::fs::create_dir(&dir).unwrap();
        let what = format!("row {i} {:?} (ringsync args: {})", r.name, render(&r.args));
        let rg_args = ringsync_args(&r.args);
        let rs_args = rsync_args(&r.args);
        let stdin = r.stdin.as_deref();

        // copy into a fresh DST.
        let (rs, rg) = (dir.join("rsync-copy"), dir.join("ringsync-copy"));
        rsync_ok(false, &rs_args, &src, &rs, stdin);
        let mut sanity = Vec::new();
        for p in r.present {
            if !exists(&rs, p) {
                sanity.push(format!("{p:?} should be in rsync's copy"));
            }
        }
        for p in r.absent {
            if exists(&rs, p) {
                sanity.push(format!("{p:?} should not be in rsync's copy"));
            }
        }
        let rs_tree = scan_tree(&rs, false).expect("scan rsync copy");
        if rs_tree.entries.len() >= src_tree.entries.len() {
            sanity.push("rsync's copy is not smaller than SRC: the rules select everything".into());
        }
        if !sanity.is_empty() {
            failures.push(format!(
                "{what}: the row's own expectations on rsync's copy do not hold (fix the test):\n    {}",
                sanity.join("\n    ")
            ));
        }
        let out = ringsync("copy", &rg_args, &src, &rg, stdin);
        if out.status.code() != Some(0) {
            failures.push(format!("{what}: copy: exit status not 0\n{}", describe(&out)));
        }
        if rg.exists() {
            let d = compare_results(&rs, &rg, &src_tree, r.files_from);
            if !d.is_empty() {
                failures.push(format!(
                    "{what}: copy: {} differences {LEGEND}:\n    {}",
                    d.len(),
                    fmt_diffs(&d)
                ));
            }
        } else {
            failures.push(format!("{what}: copy: DST {} was not created", rg.display()));
        }

        if !r.mirror {
            continue;
        }
        let mut modes: Vec<bool> = vec![false];
        if r.delete_excluded {
            modes.push(true);
        }
        let mut kept_by_plain: BTreeSet<&str> = BTreeSet::new();
        for de in modes {
            let tag = if de { "mirror --delete-excluded" } else { "mirror" };
            let mut rs_args = rs_args.clone();
            let mut rg_args = rg_args.clone();
            if de {
                rs_args.push("--delete-excluded".into());
                rg_args.push("--delete-excluded".into());
            }
            let suffix = if de { "-de" } else { "" };
            let (rs, rg) = (
                dir.join(format!("rsync-mirror{suffix}")),
                dir.join(format!("ringsync-mirror{suffix}")),
            );
            clone_tree(&pre, &rs);
            clone_tree(&pre, &rg);
            rsync_ok(true, &rs_args, &src, &rs, stdin);
            // Sanity: the pre-state's extraneous entries must be partly protected and partly
            // deleted by rsync, else the row does not test what it should.
            let kept: BTreeSet<&str> = EXTRAS.iter().copied().filter(|p| exists(&rs, p)).collect();
            if !de && (kept.is_empty() || kept.len() == EXTRAS.len()) {
                failures.push(format!(
                    "{what}: {tag}: rsync kept {} of the {} extraneous entries; the row should \
                     protect some and delete some (fix the test): kept {kept:?}",
                    kept.len(),
                    EXTRAS.len()
                ));
            }
            if de && !kept_by_plain.is_empty() && kept_by_plain.is_subset(&kept) {
                failures.push(format!(
                    "{what}: {tag}: rsync deleted none of the excluded extraneous entries \
                     {kept_by_plain:?} (fix the test)"
                ));
            }
            if !de {
                kept_by_plain = kept;
            }
            let out = ringsync("mirror", &rg_args, &src, &rg, stdin);
            if out.status.code() != Some(0) {
                failures.push(format!("{what}: {tag}: exit status not 0\n{}", describe(&out)));
            }
            let d = compare_results(&rs, &rg, &src_tree, false);
            if !d.is_empty() {
                failures.push(format!(
                    "{what}: {tag} onto a target holding extraneous entries: {} differences \
                     {LEGEND}:\n    {}",
                    d.len(),
                    fmt_diffs(&d)
                ));
            }
        }
        std::fs::remove_dir_all(&dir).ok();
    }
    // The source must be untouched (entry set, content, metadata but atime).
    let after = scan_tree(&src, true).expect("rescan src");
    let d = compare_scanned(&src_tree, &after, &cmp_opts(false));
    if !d.is_empty() {
        failures.push(format!("SRC was modified:\n    {}", fmt_diffs(&d)));
    }
    assert!(
        failures.is_empty(),
        "{} problems over {} filter rows:\n\n{}",
        failures.len(),
        table.len(),
        failures.join("\n\n")
    );
}

/// A `--files-from` list with a `..` component is a usage error: exit 2, DST not created.
#[test]
fn files_from_dotdot_is_refused_before_anything_is_created() {
    let tmp = scratch("filters-dotdot");
    let src = tmp.path().join("src");
    write_file(&src, "a/main.c", 0o644);
    write_file(&src, "b/top.c", 0o644);
    let lists: &[(&str, &[u8])] = &[
        ("inner", b"a/main.c\na/../b/top.c\n"),
        ("leading", b"a/main.c\n../src/b/top.c\n"),
        ("trailing", b"a/main.c\nb/..\n"),
        ("nul", b"a/main.c\0a/../b/top.c\0"),
    ];
    let mut failures = Vec::new();
    // Control: the same commands with a list without `..` succeed, so the refusals below are
    // about the `..` and not about the options.
    let good = tmp.path().join("list-good");
    std::fs::write(&good, b"a/main.c\nb/top.c\n").unwrap();
    for sub in ["copy", "mirror"] {
        let dst = tmp.path().join(format!("control-{sub}"));
        let args = vec!["--files-from".to_string(), good.to_str().unwrap().to_string()];
        let out = ringsync(sub, &args, &src, &dst, None);
        if out.status.code() != Some(0) || !exists(&dst, "a/main.c") || !exists(&dst, "b/top.c") {
            failures.push(format!(
                "control: {sub} {args:?} with a list without `..` did not copy a/main.c and b/top.c\n{}",
                describe(&out)
            ));
        }
    }
    for (name, data) in lists {
        let list = tmp.path().join(format!("list-{name}"));
        std::fs::write(&list, data).unwrap();
        for sub in ["copy", "mirror"] {
            for rec in [false, true] {
                let dst = tmp.path().join("dst");
                let mut args = vec!["--files-from".to_string(), list.to_str().unwrap().to_string()];
                if rec {
                    args.push("-r".into());
                }
                let out = ringsync(sub, &args, &src, &dst, None);
                let what = format!("{sub} {args:?} with list {:?}", String::from_utf8_lossy(data));
                if out.status.code() != Some(2) {
                    failures.push(format!("{what}: exit status not 2\n{}", describe(&out)));
                } else if out.stderr.is_empty() {
                    failures.push(format!("{what}: exit 2 without a message"));
                }
                if std::fs::symlink_metadata(&dst).is_ok() {
                    failures.push(format!("{what}: DST was created despite the refusal"));
                    std::fs::remove_dir_all(&dst).ok();
                    std::fs::remove_file(&dst).ok();
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// A listed path missing from SRC is reported (exit 3); the rest is copied as rsync does.
#[test]
fn files_from_missing_path_gives_exit_3_and_copies_the_rest() {
    if !have_rsync() {
        return;
    }
    let tmp = scratch("filters-missing");
    let src = tmp.path().join("src");
    write_file(&src, "a/b/main.c", 0o644);
    write_file(&src, "top.txt", 0o600);
    write_file(&src, "other.txt", 0o600);
    fixed_mtimes(&src);
    let list = tmp.path().join("list");
    std::fs::write(&list, b"a/b/main.c\nno-such-file.txt\ntop.txt\n").unwrap();
    let args = vec!["--files-from".to_string(), list.to_str().unwrap().to_string()];
    let rs = tmp.path().join("rsync");
    let out = rsync(
        false,
        &[format!("--files-from={}", list.display())],
        &src,
        &rs,
        None,
    );
    assert_eq!(out.status.code(), Some(23), "rsync: {}", describe(&out));
    assert!(exists(&rs, "a/b/main.c") && exists(&rs, "top.txt") && !exists(&rs, "other.txt"));
    let rg = tmp.path().join("ringsync");
    let out = ringsync("copy", &args, &src, &rg, None);
    assert_eq!(out.status.code(), Some(3), "copy {args:?}: {}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no-such-file.txt"),
        "copy {args:?}: the missing path is not named on stderr: {}",
        describe(&out)
    );
    let src_tree = scan_tree(&src, true).expect("scan src");
    let d = compare_results(&rs, &rg, &src_tree, true);
    assert!(d.is_empty(), "copy {args:?}: {LEGEND}:\n    {}", fmt_diffs(&d));
}

/// Unmounts on drop (also when the test panics).
struct TmpfsGuard(PathBuf);

impl Drop for TmpfsGuard {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            eprintln!("umount {} failed; trying a lazy unmount", self.0.display());
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// `-x`: a directory on another filesystem (a tmpfs mounted inside SRC) is created empty,
/// with its attributes, like `rsync -x`.
#[test]
fn one_file_system_creates_the_mount_point_empty() {
    if !is_root() {
        skip_or_fail("-x test needs root to mount a tmpfs");
        return;
    }
    if !have_rsync() {
        return;
    }
    let tmp = scratch("filters-x");
    let src = tmp.path().join("src");
    write_file(&src, "outside.txt", 0o644);
    write_file(&src, "d/f.c", 0o644);
    mkdir(&src, "mnt", 0o755);
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m,mode=0750", "tmpfs"])
        .arg(src.join("mnt"))
        .output()
        .expect("run mount");
    if !out.status.success() {
        skip_or_fail(&format!("mount -t tmpfs failed: {}", describe(&out)));
        return;
    }
    let _guard = TmpfsGuard(src.join("mnt"));
    write_file(&src, "mnt/inside.txt", 0o644);
    mkdir(&src, "mnt/sub", 0o755);
    write_file(&src, "mnt/sub/deeper.txt", 0o644);
    fixed_mtimes(&src);

    let rs = tmp.path().join("rsync");
    rsync_ok(false, &["-x".to_string()], &src, &rs, None);
    assert!(
        exists(&rs, "outside.txt") && exists(&rs, "d/f.c") && rs.join("mnt").is_dir(),
        "oracle sanity: rsync -x did not copy the rest or the mount point"
    );
    assert_eq!(
        std::fs::read_dir(rs.join("mnt")).unwrap().count(),
        0,
        "oracle sanity: rsync -x descended into the mount"
    );
    let rg = tmp.path().join("ringsync");
    let out = ringsync("copy", &["-x".to_string()], &src, &rg, None);
    assert_eq!(out.status.code(), Some(0), "copy -x: {}", describe(&out));
    let src_tree = scan_tree(&src, true).expect("scan src");
    let d = compare_results(&rs, &rg, &src_tree, false);
    assert!(d.is_empty(), "copy -x: {LEGEND}:\n    {}", fmt_diffs(&d));
    // Explicitly, in case both sides were wrong the same way.
    assert!(rg.join("mnt").is_dir(), "copy -x: mount point not created");
    assert_eq!(
        std::fs::read_dir(rg.join("mnt")).unwrap().count(),
        0,
        "copy -x: ringsync descended into the mounted tmpfs"
    );
}
