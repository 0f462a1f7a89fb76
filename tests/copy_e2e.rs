//! End-to-end tests of the `ringsync` binary against the independent oracle.

mod common;

use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::oracle::{scan_tree, Tree};
use common::*;

const ENGINES: [&str; 2] = ["uring", "sync"];
const THREADS: [&str; 2] = ["1", "2"];
/// `ring`: data through pool buffers and the ring (chunked across workers for big files);
/// `cfr`: in-kernel copy_file_range. `auto` mixes the two by file size.
const DATA_PATHS: [&str; 2] = ["ring", "cfr"];

/// Copy `src` with every engine/thread combination and compare each result.
/// All combinations run before failing, so one report shows them all.
fn matrix(seed: u64, opts: &GenOpts) {
    let tmp = scratch(&format!("e2e-{seed}"));
    let src = tmp.path().join("src");
    gen_tree(&src, seed, opts).expect("gen_tree");
    let before = scan_tree(&src, true).expect("scan src");
    let cmp = CompareOpts::default();
    let mut failures = Vec::new();
    for engine in ENGINES {
        for (threads, data) in THREADS
            .iter()
            .flat_map(|t| DATA_PATHS.iter().map(move |d| (*t, *d)))
        {
            let what = format!("seed {seed:#x} --engine {engine} --threads {threads} --data-path {data}");
            let dst = tmp.path().join(format!("dst-{engine}-{threads}-{data}"));
            let args = [
                "--quiet",
                "--engine",
                engine,
                "--threads",
                threads,
                "--data-path",
                data,
            ];
            let out = run_copy(&args, &src, &dst);
            if out.status.code() != Some(0) {
                failures.push(format!("{what}: exit status not 0\n{}", describe(&out)));
            }
            let d = compare_trees(&src, &dst, &cmp);
            if !d.is_empty() {
                failures.push(format!(
                    "{what}: trees differ ({} differences):\n  {}",
                    d.len(),
                    d.iter().take(40).cloned().collect::<Vec<_>>().join("\n  ")
                ));
            }
            std::fs::remove_dir_all(&dst).ok();
        }
    }
    // The copier must not have modified the source (atimes included).
    let after = scan_tree(&src, true).expect("rescan src");
    let d = common::oracle::compare_scanned(&before, &after, &cmp);
    if !d.is_empty() {
        failures.push(format!(
            "source tree was modified by copying:\n  {}",
            d.join("\n  ")
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn e2e_seed_1() {
    matrix(1, &GenOpts::default());
}

#[test]
fn e2e_seed_2() {
    matrix(
        0xdead_beef,
        &GenOpts {
            dirs: 40,
            files: 200,
            max_file: 2 << 20,
            ..GenOpts::default()
        },
    );
}

#[test]
fn e2e_seed_3_big_file() {
    matrix(
        3,
        &GenOpts {
            files: 60,
            big: true,
            ..GenOpts::default()
        },
    );
}

/// Many small files and directories: stresses scheduling across threads.
#[test]
fn e2e_seed_4_many_small() {
    matrix(
        4,
        &GenOpts {
            dirs: 80,
            files: 800,
            max_file: 64 << 10,
            ..GenOpts::default()
        },
    );
}

fn json_u64(v: &serde_json::Value, key: &str) -> u64 {
    v.get(key)
        .unwrap_or_else(|| panic!("--json output lacks key {key:?}: {v}"))
        .as_u64()
        .unwrap_or_else(|| panic!("--json key {key:?} is not an unsigned integer: {v}"))
}

#[test]
fn json_output_parses_and_counts_are_plausible() {
    let tmp = scratch("json");
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    gen_tree(
        &src,
        7,
        &GenOpts {
            files: 80,
            ..GenOpts::default()
        },
    )
    .unwrap();
    let t: Tree = scan_tree(&src, false).unwrap();
    let out = run_copy(&["--json", "--threads", "2"], &src, &dst);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = String::from_utf8(out.stdout.clone()).expect("stdout is UTF-8");
    let v: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}):\n{stdout}"));
    assert!(v.is_object(), "not a JSON object: {v}");
    for key in [
        "bytes",
        "files",
        "dirs",
        "symlinks",
        "hardlinks",
        "specials",
        "skipped",
        "errors",
        "elapsed_s",
        "engine",
        "threads",
        "latency_us",
    ] {
        assert!(v.get(key).is_some(), "--json output lacks key {key:?}: {v}");
    }

    // Independent counts.
    let n_dirs = t.count(Kind::Dir) as u64; // includes the root
    let n_reg_names = t.count(Kind::File) as u64;
    let n_reg_inodes = t
        .entries
        .values()
        .filter(|e| e.kind == Kind::File)
        .map(|e| e.ino)
        .collect::<std::collections::BTreeSet<_>>()
        .len() as u64;
    let n_sym = t.count(Kind::Symlink) as u64;
    let n_special = (t.count(Kind::Fifo) + t.count(Kind::Char) + t.count(Kind::Block)) as u64;
    let non_dir_names = n_reg_names + n_sym + n_special;
    let (bytes_lo, bytes_hi) = size_bounds(&t);

    let dirs = json_u64(&v, "dirs");
    let files = json_u64(&v, "files");
    let symlinks = json_u64(&v, "symlinks");
    let hardlinks = json_u64(&v, "hardlinks");
    let specials = json_u64(&v, "specials");
    let bytes = json_u64(&v, "bytes");
    assert!(
        dirs == n_dirs || dirs + 1 == n_dirs,
        "dirs = {dirs}, tree has {n_dirs} directories including the root: {v}"
    );
    assert!(
        (n_reg_inodes..=n_reg_names).contains(&files),
        "files = {files}, tree has {n_reg_inodes} regular inodes / {n_reg_names} names: {v}"
    );
    assert_eq!(
        files + hardlinks + symlinks + specials,
        non_dir_names,
        "files+hardlinks+symlinks+specials must account for every non-directory name \
         ({n_reg_names} regular, {n_sym} symlink, {n_special} special names): {v}"
    );
    assert!(
        symlinks <= n_sym && symlinks + 1 >= n_sym,
        "symlinks = {symlinks}, tree has {n_sym}: {v}"
    );
    assert_eq!(specials, n_special, "specials: {v}");
    assert!(hardlinks > 0, "tree has hardlink groups but hardlinks = 0: {v}");
    assert!(
        (bytes_lo..=bytes_hi).contains(&bytes),
        "bytes = {bytes}, expected between {bytes_lo} (non-sparse unique data) and {bytes_hi} \
         (all regular names): {v}"
    );
    assert_eq!(json_u64(&v, "skipped"), 0, "{v}");
    assert_eq!(json_u64(&v, "errors"), 0, "{v}");
    assert_eq!(json_u64(&v, "threads"), 2, "{v}");
    // The value may carry details after the engine name.
    let engine = v["engine"].as_str().unwrap_or_default();
    assert!(
        engine.starts_with("uring") || engine.starts_with("sync"),
        "engine = {engine:?}: {v}"
    );
    let el = v["elapsed_s"].as_f64().expect("elapsed_s is a number");
    assert!((0.0..3600.0).contains(&el), "elapsed_s = {el}");
    assert_trees_equal(&src, &dst, &CompareOpts::default(), "--json copy");

    // The engine asked for is the engine reported.
    for e in ENGINES {
        let d = tmp.path().join(format!("dst-{e}"));
        let out = run_copy(&["--json", "--engine", e], &src, &d);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let got = v["engine"].as_str().unwrap_or_default();
        assert!(got.starts_with(e), "--engine {e} but engine = {got:?}: {v}");
    }
}

/// Options that must not change the result, and a second copy into an
/// already complete destination.
#[test]
fn options_and_recopy_keep_tree_identical() {
    let tmp = scratch("opts");
    let src = tmp.path().join("src");
    gen_tree(
        &src,
        11,
        &GenOpts {
            files: 60,
            ..GenOpts::default()
        },
    )
    .unwrap();
    let cmp = CompareOpts::default();
    let sets: [&[&str]; 7] = [
        &[],
        &["--data-path", "cfr", "--threads", "1"],
        &["--data-path", "ring", "--memory", "1M", "--engine", "sync"],
        &["--reflink", "never", "--fsync", "file"],
        &["--reflink", "auto", "--fsync", "end", "--memory", "64M"],
        &["--engine", "auto", "--threads", "3", "--fsync", "none"],
        &["--quiet", "--memory", "1M", "--threads", "2"],
    ];
    for (i, extra) in sets.iter().enumerate() {
        let dst = tmp.path().join(format!("dst{i}"));
        let out = run_copy(extra, &src, &dst);
        assert_eq!(
            out.status.code(),
            Some(0),
            "options {extra:?}: {}",
            describe(&out)
        );
        assert_trees_equal(&src, &dst, &cmp, &format!("options {extra:?}"));
        if i == 0 {
            // Copy again into the complete destination: still identical.
            let out = run_copy(&["--quiet"], &src, &dst);
            assert_eq!(out.status.code(), Some(0), "re-copy: {}", describe(&out));
            assert_trees_equal(&src, &dst, &cmp, "re-copy into complete destination");
        }
        std::fs::remove_dir_all(&dst).ok();
    }
}

#[test]
fn empty_source_dir_gets_root_metadata() {
    let tmp = scratch("emptysrc");
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    rustix::fs::setxattr(&src, "user.root", b"r", rustix::fs::XattrFlags::empty()).unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o2751)).unwrap();
    let t = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 4_000_000_000,
            tv_nsec: 123_456_789,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: 1_234_567_890,
            tv_nsec: 987_654_321,
        },
    };
    rustix::fs::utimensat(rustix::fs::CWD, &src, &t, rustix::fs::AtFlags::empty()).unwrap();
    let dst = tmp.path().join("dst");
    let out = run_copy(&["--quiet"], &src, &dst);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_trees_equal(&src, &dst, &CompareOpts::default(), "empty source");
}

fn meta_snapshot(p: &Path) -> (Vec<u8>, u32, i64, i64, u64) {
    let m = std::fs::symlink_metadata(p).unwrap();
    let data = if m.is_file() {
        std::fs::read(p).unwrap()
    } else {
        Vec::new()
    };
    (data, m.mode(), m.mtime(), m.mtime_nsec(), m.ino())
}

#[test]
fn copy_into_existing_dst_replaces_same_named_and_keeps_others() {
    let tmp = scratch("existing");
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::create_dir_all(dst.join("sub")).unwrap();
    std::fs::create_dir_all(dst.join("unrelated-dir")).unwrap();

    // Source.
    std::fs::write(src.join("same.txt"), b"new content\n").unwrap();
    std::fs::set_permissions(src.join("same.txt"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::write(src.join("shorter.txt"), b"short").unwrap();
    std::fs::write(src.join("longer.txt"), vec![b'L'; 300_000]).unwrap();
    std::os::unix::fs::symlink("new-target", src.join("link")).unwrap();
    std::os::unix::fs::symlink("now-a-symlink", src.join("was-file")).unwrap();
    std::fs::write(src.join("was-symlink"), b"now a file").unwrap();
    std::fs::write(src.join("sub/inner"), b"inner").unwrap();
    std::fs::write(src.join("hl"), b"replacement for hl").unwrap();

    // Pre-existing destination.
    std::fs::write(dst.join("same.txt"), vec![b'o'; 100_000]).unwrap();
    std::fs::set_permissions(dst.join("same.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    rustix::fs::setxattr(
        dst.join("same.txt"),
        "user.old",
        b"stale",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    std::fs::write(dst.join("shorter.txt"), vec![b'x'; 200_000]).unwrap();
    std::fs::write(dst.join("longer.txt"), b"tiny").unwrap();
    std::os::unix::fs::symlink("old-target", dst.join("link")).unwrap();
    std::fs::write(dst.join("was-file"), b"regular file").unwrap();
    std::os::unix::fs::symlink("old", dst.join("was-symlink")).unwrap();
    std::fs::write(dst.join("sub/unrelated"), b"keep sub/unrelated").unwrap();
    std::fs::write(dst.join("unrelated.txt"), b"keep unrelated").unwrap();
    std::fs::write(dst.join("unrelated-dir/x"), b"keep x").unwrap();
    std::fs::write(dst.join("hl"), b"keep me via the other link").unwrap();
    std::fs::hard_link(dst.join("hl"), dst.join("keep-hl")).unwrap();

    freeze_atimes(&src);
    freeze_atimes(&dst);
    let keep = [
        "sub/unrelated",
        "unrelated.txt",
        "unrelated-dir/x",
        "unrelated-dir",
        "keep-hl",
    ];
    let before: Vec<_> = keep.iter().map(|k| meta_snapshot(&dst.join(k))).collect();

    let out = run_copy(&["--quiet"], &src, &dst);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    for (k, b) in keep.iter().zip(&before) {
        let a = meta_snapshot(&dst.join(k));
        assert_eq!(&a, b, "unrelated destination entry {k} was changed");
    }
    assert_eq!(
        std::fs::read(dst.join("keep-hl")).unwrap(),
        b"keep me via the other link",
        "writing 'hl' in place clobbered its pre-existing hardlink 'keep-hl'"
    );
    let cmp = CompareOpts {
        allow_extra_in_b: true,
        ..CompareOpts::default()
    };
    assert_trees_equal(&src, &dst, &cmp, "copy into existing destination");
}

#[test]
fn source_socket_is_skipped_with_note() {
    let tmp = scratch("socket");
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("regular"), b"data").unwrap();
    let _l = std::os::unix::net::UnixListener::bind(src.join("the.socket")).unwrap();
    freeze_atimes(&src);
    let dst = tmp.path().join("dst");
    let out = run_copy(&["--json"], &src, &dst);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the.socket"),
        "stderr does not mention the skipped socket:\n{stderr}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad --json ({e}): {}", describe(&out)));
    assert_eq!(json_u64(&v, "skipped"), 1, "{v}");
    assert_eq!(json_u64(&v, "errors"), 0, "{v}");
    assert!(!dst.join("the.socket").exists());
    let cmp = CompareOpts {
        skip_sockets: true,
        ..CompareOpts::default()
    };
    assert_trees_equal(&src, &dst, &cmp, "tree with a socket");
}

#[test]
fn missing_src_exits_1_naming_path() {
    let tmp = scratch("missing");
    let src = tmp.path().join("no-such-source-dir");
    let dst = tmp.path().join("dst");
    let out = run_copy(&[], &src, &dst);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no-such-source-dir"),
        "stderr does not name the missing source:\n{stderr}"
    );
}

#[test]
fn bad_usage_exits_2() {
    let tmp = scratch("usage");
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let dst = tmp.path().join("dst");
    let (s, d) = (src.as_os_str(), dst.as_os_str());
    let cases: Vec<Vec<&OsStr>> = vec![
        vec![],
        vec![OsStr::new("frobnicate")],
        vec![OsStr::new("copy")],
        vec![OsStr::new("copy"), s],
        vec![OsStr::new("copy"), OsStr::new("--no-such-flag"), s, d],
        vec![
            OsStr::new("copy"),
            OsStr::new("--engine"),
            OsStr::new("bogus"),
            s,
            d,
        ],
        vec![
            OsStr::new("copy"),
            OsStr::new("--threads"),
            OsStr::new("abc"),
            s,
            d,
        ],
        vec![
            OsStr::new("copy"),
            OsStr::new("--reflink"),
            OsStr::new("sometimes"),
            s,
            d,
        ],
        vec![
            OsStr::new("copy"),
            OsStr::new("--fsync"),
            OsStr::new("always"),
            s,
            d,
        ],
        vec![
            OsStr::new("copy"),
            OsStr::new("--memory"),
            OsStr::new("lots"),
            s,
            d,
        ],
        vec![OsStr::new("copy"), s, d, OsStr::new("extra-positional")],
    ];
    for args in cases {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(2), "args {args:?}: {}", describe(&out));
        assert!(!out.stderr.is_empty(), "args {args:?}: no usage message");
        assert!(
            !dst.exists(),
            "args {args:?}: destination created despite usage error"
        );
    }
}

#[test]
fn memory_8m_copies_100mib_file() {
    let tmp = scratch("memory");
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let mut data = vec![0u8; (100 << 20) + 4097];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
    std::fs::write(src.join("hundred-mib"), &data).unwrap();
    drop(data);
    for i in 0..20 {
        std::fs::write(src.join(format!("small{i}")), vec![i as u8; i * 1000]).unwrap();
    }
    freeze_atimes(&src);
    for engine in ENGINES {
        let dst = tmp.path().join(format!("dst-{engine}"));
        let out = run_copy(
            // The ring data path: 100 MiB through an 8 MiB pool, chunked across both workers.
            &[
                "--quiet",
                "--memory",
                "8M",
                "--threads",
                "2",
                "--engine",
                engine,
                "--data-path",
                "ring",
            ],
            &src,
            &dst,
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "--engine {engine}: {}",
            describe(&out)
        );
        assert_trees_equal(
            &src,
            &dst,
            &CompareOpts::default(),
            &format!("--memory 8M --engine {engine}"),
        );
        std::fs::remove_dir_all(&dst).ok();
    }
}

#[test]
fn unreadable_source_file_gives_exit_3_and_copies_the_rest() {
    if !is_root() {
        skip_or_fail("needs root to build a tree with a file unreadable by 65534");
        return;
    }
    if !have_tool("setpriv") {
        skip_or_fail("setpriv not available (util-linux)");
        return;
    }
    let tmp = scratch("unreadable");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // Private copy of the binary, reachable by the unprivileged user.
    let exe = tmp.path().join("ringsync");
    std::fs::copy(bin(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();

    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("a/b")).unwrap();
    std::fs::create_dir_all(src.join("empty")).unwrap();
    std::fs::write(src.join("a/one"), b"one").unwrap();
    std::fs::write(src.join("a/b/two"), vec![7u8; 300_000]).unwrap();
    std::fs::write(src.join("a/secret"), b"top secret").unwrap();
    std::fs::write(src.join("zzz-after"), b"after").unwrap();
    std::fs::hard_link(src.join("a/one"), src.join("one-link")).unwrap();
    std::os::unix::fs::symlink("a/secret", src.join("to-secret")).unwrap();
    rustix::fs::setxattr(src.join("a/one"), "user.x", b"1", rustix::fs::XattrFlags::empty()).unwrap();
    let st = Command::new("chown")
        .args(["-hR", "65534:65534"])
        .arg(&src)
        .status()
        .unwrap();
    assert!(st.success());
    // The secret stays root-owned and private.
    std::os::unix::fs::chown(src.join("a/secret"), Some(0), Some(0)).unwrap();
    std::fs::set_permissions(src.join("a/secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    freeze_atimes(&src);
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    std::os::unix::fs::chown(&out_dir, Some(65534), Some(65534)).unwrap();
    let dst = out_dir.join("dst");

    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&exe)
        .arg("copy")
        .arg(&src)
        .arg(&dst)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("secret"),
        "stderr does not name the unreadable file:\n{stderr}"
    );
    assert!(
        stderr.to_lowercase().contains("permission denied"),
        "stderr does not give the cause (Permission denied):\n{stderr}"
    );
    let cmp = CompareOpts {
        ignore: vec![b"a/secret".to_vec()],
        ..CompareOpts::default()
    };
    assert_trees_equal(&src, &dst, &cmp, "partial copy (rest of tree)");
    if let Ok(data) = std::fs::read(dst.join("a/secret")) {
        assert_ne!(data, b"top secret", "unreadable file content leaked?");
    }
}

/// Regression: the target's descriptor was still referenced by the last write's completion when
/// the file was closed, so it was closed implicitly and a close(2) error (NFS, quotas) was lost.
/// Both descriptors of every file must now be closed through the ring, where errors are seen.
#[test]
fn regression_target_close_goes_through_ring_so_errors_are_seen() {
    let tmp = scratch("close-ring");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..50 {
        std::fs::write(src.join(format!("f{i}")), vec![i as u8; 1000 + i * 100]).unwrap();
    }
    for engine in ENGINES {
        let dst = tmp.path().join(format!("dst-{engine}"));
        let out = run_copy(&["--json", "--engine", engine, "--data-path", "ring"], &src, &dst);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let closes = v["latency_us"]["close"]["count"].as_u64().unwrap_or(0);
        assert_eq!(
            closes, 100,
            "--engine {engine}: expected 2 ring closes per file: {v}"
        );
    }
}

/// Regression: the process umask was cleared before DST's missing parents were created, which
/// left them world-writable (0777). They must be made like `mkdir -p` does, under the umask.
#[test]
fn regression_missing_dst_parents_respect_umask() {
    let tmp = scratch("umask");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    let dst = tmp.path().join("new/a/b");
    let status = Command::new("sh")
        .arg("-c")
        .arg("umask 022; exec \"$0\" copy --quiet \"$1\" \"$2\"")
        .arg(env!("CARGO_BIN_EXE_ringsync"))
        .arg(&src)
        .arg(&dst)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    for p in [tmp.path().join("new"), tmp.path().join("new/a")] {
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755, "{} has mode {mode:o}", p.display());
    }
}
