//! Regressions from the review of the filters, dry runs and mirror deletions (issue 12): each
//! test is named after the bug it pins. The oracle is the filesystem itself: what is still
//! there, with which bytes and mode.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;

fn mode_of(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// `--prev` never looks at DST, so under filters that protect DST entries it must not be used:
/// a protected file inside a directory the source renamed away was deleted with the staging
/// directory's contents.
#[test]
fn prev_is_not_trusted_when_filters_protect_dst_entries() {
    let tmp = scratch("prev-protect");
    let t = tmp.path();
    sh(
        "mkdir -p snap/a/sub src; echo f > snap/a/sub/f; echo k > snap/keep",
        t,
    );
    mirror_ok_quiet(&["--exclude", "*.log"], &t.join("snap"), &t.join("dst"));
    // The user's own file in DST, which the rule protects.
    sh(
        "echo mine > dst/a/sub/debug.log; cp -a snap/keep src/keep; mkdir -p src/b",
        t,
    );
    let out = run_mirror(
        &["--exclude", "*.log", "--prev", t.join("snap").to_str().unwrap()],
        &t.join("src"),
        &t.join("dst"),
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--prev") && err.contains("filters protect"),
        "no notice that --prev is not used: {}",
        describe(&out)
    );
    assert_eq!(
        std::fs::read(t.join("dst/a/sub/debug.log")).ok().as_deref(),
        Some(&b"mine\n"[..]),
        "the protected file was deleted"
    );
    assert!(
        !t.join("dst/a/sub/f").exists(),
        "an unprotected file SRC lacks was kept"
    );
    assert!(t.join("dst/b").is_dir() && t.join("dst/keep").is_file());
}

fn mirror_ok_quiet(extra: &[&str], src: &Path, dst: &Path) {
    let mut args = vec!["--quiet"];
    args.extend_from_slice(extra);
    let out = run_mirror(&args, src, dst);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}

/// A protected DST entry standing where SRC has an entry of another type was replaced (the
/// directory made over the protected file, or an empty protected directory removed for a file).
#[test]
fn protected_entry_of_another_type_is_left_alone_and_reported() {
    let tmp = scratch("protect-type");
    let t = tmp.path();
    // The photo idiom: directories and *.jpg only. DST has a file `2024` (not a directory, so
    // `*` excludes it: protected); SRC has a directory `2024`.
    sh(
        "mkdir -p src/2024 dst; echo j > src/2024/a.jpg; echo notes > dst/2024",
        t,
    );
    let rules = ["--include", "*/", "--include", "*.jpg", "--exclude", "*"];
    let out = run_mirror(&rules, &t.join("src"), &t.join("dst"));
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("excluded entry"),
        "{}",
        describe(&out)
    );
    assert_eq!(
        std::fs::read(t.join("dst/2024")).unwrap(),
        b"notes\n",
        "protected file replaced"
    );

    // A dir-only rule: DST's (empty) directory `cache` is protected; SRC has a file `cache`.
    sh("rm -rf src dst; mkdir -p src dst/cache; echo c > src/cache", t);
    let out = run_mirror(&["--exclude", "cache/"], &t.join("src"), &t.join("dst"));
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    assert!(
        t.join("dst/cache").is_dir(),
        "protected directory replaced by a file"
    );
    // --delete-excluded: replaced as any other entry.
    let out = run_mirror(
        &["--exclude", "cache/", "--delete-excluded"],
        &t.join("src"),
        &t.join("dst"),
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(std::fs::read(t.join("dst/cache")).unwrap(), b"c\n");
}

/// A DST-only directory kept because it holds protected entries got mode 0700 for good (run
/// as non-root), so it never matched again.
#[test]
fn kept_directory_keeps_its_mode_and_is_reported() {
    if !have_tool("setpriv") {
        skip_or_fail("setpriv (util-linux) is needed to run the mirror as a non-root user");
        return;
    }
    let tmp = scratch("protect-mode");
    let t = tmp.path();
    sh(
        "mkdir -p src dst/old; echo a > src/a; echo x > dst/old/x.log; echo y > dst/old/y; \
         chmod 555 dst/old; chown -R 65534:65534 src dst; chmod 777 .",
        t,
    );
    let as_nobody = |extra: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bin())
            .arg("mirror")
            .args(extra)
            .arg(t.join("src"))
            .arg(t.join("dst"))
            .output()
            .unwrap()
    };
    let out = as_nobody(&["--exclude", "*.log"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not deleted"),
        "a kept directory is not reported: {}",
        describe(&out)
    );
    assert!(t.join("dst/old/x.log").is_file(), "protected file deleted");
    assert!(!t.join("dst/old/y").exists(), "unprotected file kept");
    assert_eq!(
        mode_of(&t.join("dst/old")),
        0o555,
        "the kept directory's mode changed"
    );
    assert!(t.join("dst/a").is_file());
}

/// `copy -n` into a missing DST made a temporary directory to compare against (and failed
/// where the temporary directory cannot be written: here TMPDIR names no directory at all).
#[test]
fn dry_run_into_a_missing_target_creates_nothing_anywhere() {
    let tmp = scratch("dry-nothing");
    let t = tmp.path();
    sh("mkdir -p src/d; echo a > src/d/f", t);
    for sub in ["copy", "mirror"] {
        let out = Command::new(bin())
            .args([sub, "-n"])
            .arg(t.join("src"))
            .arg(t.join("dst"))
            .env("TMPDIR", t.join("no-such-dir"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{sub}: {}", describe(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("+\td/f"), "{sub}: {text}");
        assert!(!t.join("dst").exists(), "{sub} -n created DST");
        assert!(!t.join("no-such-dir").exists(), "{sub} -n created TMPDIR");
    }
}

/// `copy -n` hid a replacement when the entry in DST matched an exclude rule: copy protects
/// nothing in its target, so the dry run must say what copy does.
#[test]
fn copy_dry_run_shows_replacements_the_rules_would_hide() {
    let tmp = scratch("dry-type");
    let t = tmp.path();
    sh("mkdir -p src dst/build; echo b > src/build", t);
    let out = run_copy(&["-n", "--exclude", "build/"], &t.join("src"), &t.join("dst"));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "T\tbuild",
        "{}",
        describe(&out)
    );
    let out = run_copy(&["-q", "--exclude", "build/"], &t.join("src"), &t.join("dst"));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(std::fs::read(t.join("dst/build")).unwrap(), b"b\n");
}

/// `mirror` opened (created) its --log-file before refusing its arguments.
#[test]
fn refused_mirror_creates_no_log_file() {
    let tmp = scratch("log-refused");
    let t = tmp.path();
    sh("mkdir -p src/in; echo f > file", t);
    let log = t.join("run.log");
    for (src, dst) in [(t.join("file"), t.join("dst")), (t.join("src"), t.join("src/in"))] {
        let out = run_mirror(&["--log-file", log.to_str().unwrap()], &src, &dst);
        assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
        assert!(!log.exists(), "a refused mirror created its log file");
    }
}
