//! `ringsync check SRC DST`: every byte and every kept attribute compared, differences printed
//! in the diff format from DST to SRC, exit 0 equal / 1 different / 2 trouble.
//!
//! The expected lines come from what each test changed in DST (the test's own record of its
//! edits), not from ringsync: a copy made by `ringsync copy` must check equal; then one edit of
//! each kind is made behind ringsync's back and exactly its line must appear.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;

/// `check` output lines, sorted, with the exit status.
fn check(src: &Path, dst: &Path, extra: &[&str]) -> (Option<i32>, Vec<String>, String) {
    let out = run_sub("check", extra, src, dst);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "panic: {}", describe(&out));
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    (out.status.code(), lines, stderr)
}

/// Keep the mtime (and atime) of `p` across `f`: a same-size edit that size+mtime cannot see.
fn keeping_times(p: &Path, f: impl FnOnce()) {
    let m = std::fs::symlink_metadata(p).expect("lstat");
    f();
    let set = |t: std::time::SystemTime| t;
    let file = std::fs::File::options().write(true).open(p).expect("open");
    file.set_times(
        std::fs::FileTimes::new()
            .set_accessed(set(m.accessed().expect("atime")))
            .set_modified(set(m.modified().expect("mtime"))),
    )
    .expect("set times");
}

#[test]
fn check_of_a_fresh_copy_is_clean_then_each_edit_is_one_line() {
    let tmp = scratch("check");
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    std::fs::create_dir_all(src.join("d/e")).expect("mkdir");
    std::fs::write(src.join("same-size"), b"0123456789abcdef").expect("write");
    std::fs::write(src.join("d/mode"), b"mode").expect("write");
    std::fs::write(src.join("d/e/gone"), b"gone").expect("write");
    std::fs::write(src.join("big"), vec![7u8; 3 << 20]).expect("write");
    std::os::unix::fs::symlink("same-size", src.join("link")).expect("symlink");
    let o = run_copy(&[], &src, &dst);
    assert_eq!(o.status.code(), Some(0), "copy: {}", describe(&o));
    let (code, lines, err) = check(&src, &dst, &[]);
    assert_eq!(
        (code, lines.len()),
        (Some(0), 0),
        "a fresh copy checks equal: {lines:?} {err}"
    );

    // Same size, same mtime, one byte: size+mtime sees nothing, check must.
    let f = dst.join("same-size");
    keeping_times(&f, || {
        std::fs::write(&f, b"0123456789abcdeF").expect("rewrite");
    });
    let diff = run_sub("diff", &["--exit-code"], &dst, &src);
    assert_eq!(
        diff.status.code(),
        Some(0),
        "diff without -c trusts size+mtime: {}",
        describe(&diff)
    );
    // The last byte of a 3 MiB file (past the first read buffer).
    let b = dst.join("big");
    keeping_times(&b, || {
        let mut data = std::fs::read(&b).expect("read");
        *data.last_mut().expect("non-empty") = 8;
        std::fs::write(&b, data).expect("rewrite");
    });
    std::fs::set_permissions(dst.join("d/mode"), std::fs::Permissions::from_mode(0o600)).expect("chmod");
    // A directory's own times are set by copy; the edits below change d/e's, which the
    // expected lines account for.
    std::fs::remove_file(dst.join("d/e/gone")).expect("rm");
    std::fs::write(dst.join("d/e/extra"), b"extra").expect("write");
    let (code, lines, err) = check(&src, &dst, &[]);
    let want = vec![
        "+\td/e/gone".to_string(),
        "-\td/e/extra".to_string(),
        "A\td/e".to_string(),
        "A\td/mode".to_string(),
        "M\tbig".to_string(),
        "M\tsame-size".to_string(),
    ];
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(code, Some(1), "differences exit 1: {lines:?} {err}");
    assert_eq!(lines, want_sorted, "exactly the edits, from DST to SRC");

    // --json says the same.
    let (code, json, _) = check(&src, &dst, &["--json"]);
    assert_eq!(code, Some(1));
    assert_eq!(json.len(), want.len(), "{json:?}");
    for l in &json {
        let v: serde_json::Value = serde_json::from_str(l).expect("NDJSON");
        assert!(v["path"].is_string() && v["change"].is_string(), "{v}");
    }

    // A default mirror trusts size+mtime too: the two same-size edits stay, and check still
    // says so. `mirror --checksum` repairs them; check is clean again.
    let o = run_mirror(&[], &src, &dst);
    assert_eq!(o.status.code(), Some(0), "mirror: {}", describe(&o));
    let (code, lines, _) = check(&src, &dst, &[]);
    assert_eq!(
        (code, lines),
        (Some(1), vec!["M\tbig".to_string(), "M\tsame-size".to_string()]),
        "after a default mirror"
    );
    let o = run_mirror(&["--checksum"], &src, &dst);
    assert_eq!(o.status.code(), Some(0), "mirror: {}", describe(&o));
    let (code, lines, err) = check(&src, &dst, &[]);
    assert_eq!(
        (code, lines.len()),
        (Some(0), 0),
        "after the mirror: {lines:?} {err}"
    );
}

#[test]
fn check_with_a_missing_side_is_trouble() {
    let tmp = scratch("check-missing");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    let (code, _, err) = check(&src, &tmp.path().join("nope"), &[]);
    assert_eq!(code, Some(2), "a missing DST is trouble: {err}");
    assert!(
        err.contains("check") && err.contains("nope"),
        "names the command and the path: {err}"
    );
}

#[test]
fn check_lists_a_file_dst_lacks_inside_a_directory_both_have() {
    let tmp = scratch("check-lacks");
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    std::fs::create_dir_all(src.join("sub")).expect("mkdir");
    std::fs::write(src.join("sub/x"), b"x").expect("write");
    let o = run_copy(&[], &src, &dst);
    assert_eq!(o.status.code(), Some(0), "copy: {}", describe(&o));
    // Remove it and put the directory's times back: only the missing file differs.
    let m = std::fs::metadata(dst.join("sub")).expect("stat");
    std::fs::remove_file(dst.join("sub/x")).expect("rm");
    std::fs::File::open(dst.join("sub"))
        .expect("open dir")
        .set_times(
            std::fs::FileTimes::new()
                .set_accessed(m.accessed().expect("atime"))
                .set_modified(m.modified().expect("mtime")),
        )
        .expect("set times");
    let (code, lines, err) = check(&src, &dst, &[]);
    assert_eq!((code, lines), (Some(1), vec!["+\tsub/x".to_string()]), "{err}");
}
