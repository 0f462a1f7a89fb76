//! `--verify` (issue 16, item 7): after the final sync, `copy` and `mirror` read back every file
//! they wrote and compare it with what they read from the source.
//!
//! - A clean run exits 0, the tree is exact by the oracle, and the `--json` summary says every
//!   regular inode written was read back, with exactly its data bytes (holes excluded), counted
//!   here independently with SEEK_DATA/SEEK_HOLE on the source.
//! - A byte changed on the target between the write and the read-back (the `verify` failpoint:
//!   ringsync flips a byte of that file on disk and keeps its mtime, as a change behind its back
//!   would) is caught: exit 8, one `verify` line naming the file, every other entry exact, the
//!   bad file's mtime set to the epoch, and a plain `mirror` afterwards repairs it. Needs the
//!   binary built with `--features failpoints` (the README's test command); without it the test
//!   says SKIPPED, and fails under CI.
//! - `send | receive --verify`: the same two checks for the receiver (its summary line gives
//!   the counts; a mismatch also leaves DST's record dirty).

mod common;

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use common::*;

fn tree_opts() -> GenOpts {
    GenOpts {
        files: 60,
        dirs: 8,
        big: false,
        deep: false,
        max_file: 3 << 20,
        ..GenOpts::default()
    }
}

/// Data bytes (holes excluded) of every regular inode under `root`, each inode once, and how
/// many inodes: by SEEK_DATA/SEEK_HOLE, independently of ringsync.
fn data_bytes(root: &Path) -> (u64, u64) {
    let mut seen = HashSet::new();
    let (mut files, mut bytes) = (0, 0);
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            let m = std::fs::symlink_metadata(&p).expect("lstat");
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() && seen.insert(m.ino()) {
                files += 1;
                let f = std::fs::File::open(&p).expect("open");
                let mut at = 0u64;
                loop {
                    let data = match rustix::fs::seek(&f, rustix::fs::SeekFrom::Data(at)) {
                        Ok(o) => o,
                        Err(rustix::io::Errno::NXIO) => break,
                        Err(e) => panic!("SEEK_DATA {}: {e}", p.display()),
                    };
                    let hole = rustix::fs::seek(&f, rustix::fs::SeekFrom::Hole(data)).expect("SEEK_HOLE");
                    bytes += hole - data;
                    at = hole;
                }
            }
        }
    }
    (files, bytes)
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("--json output: {e}\n{}", describe(out)))
}

fn cmp_opts() -> CompareOpts {
    mirror_cmp()
}

#[test]
fn verify_reads_back_every_file_written() {
    let tmp = scratch("verify");
    let src = tmp.path().join("src");
    gen_tree(&src, 0x7e51f1, &tree_opts()).expect("gen_tree");
    let (files, bytes) = data_bytes(&src);
    let dst = tmp.path().join("dst");
    let out = run_copy(&["--json", "--verify"], &src, &dst);
    assert_eq!(out.status.code(), Some(0), "copy --verify: {}", describe(&out));
    assert_trees_equal(&src, &dst, &CompareOpts::default(), "copy --verify");
    let v = &json(&out)["verified"];
    assert_eq!(v["files"].as_u64(), Some(files), "inodes read back: {v}");
    assert_eq!(v["bytes"].as_u64(), Some(bytes), "bytes read back: {v}");

    // A mirror reads back what it wrote, and only that.
    let changed = [b"verify-new-a".as_slice(), b"verify-new-b"];
    for (i, name) in changed.iter().enumerate() {
        std::fs::write(
            src.join(std::str::from_utf8(name).unwrap()),
            vec![i as u8 + 1; 70_000 * (i + 1)],
        )
        .unwrap();
    }
    let out = run_mirror(&["--json", "--verify"], &src, &dst);
    assert_eq!(out.status.code(), Some(0), "mirror --verify: {}", describe(&out));
    assert_trees_equal(&src, &dst, &cmp_opts(), "mirror --verify");
    let v = &json(&out)["verified"];
    assert_eq!(v["files"].as_u64(), Some(2), "mirror read back: {v}");
    assert_eq!(
        v["bytes"].as_u64(),
        Some(70_000 + 140_000),
        "mirror read back: {v}"
    );

    // Without --verify nothing is read back.
    let out = run_copy(&["--json"], &src, &tmp.path().join("plain"));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(json(&out)["verified"].is_null());
}

fn failpoints_or_skip() -> bool {
    if cfg!(feature = "failpoints") {
        return true;
    }
    skip_or_fail("verify_e2e: the binary is built without --features failpoints");
    false
}

/// Run `ringsync <sub> --verify` with the verify failpoint on `name`.
fn run_flipped(sub: &str, name: &str, src: &Path, dst: &Path) -> std::process::Output {
    Command::new(bin())
        .env("RINGSYNC_FAILPOINTS", format!("verify:{name}=EIO"))
        .args([sub, "--quiet", "--verify"])
        .arg(src)
        .arg(dst)
        .output()
        .expect("spawn ringsync")
}

#[test]
fn verify_catches_a_byte_changed_behind_its_back() {
    if !failpoints_or_skip() {
        return;
    }
    let tmp = scratch("verify-flip");
    let src = tmp.path().join("src");
    gen_tree(&src, 0xf11b, &tree_opts()).expect("gen_tree");
    // One small file (through the page cache) and one of 1 MiB (written with O_DIRECT).
    std::fs::write(src.join("flip-small"), b"0123456789".repeat(300)).unwrap();
    std::fs::write(
        src.join("flip-big"),
        (0..(1u32 << 20)).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    for (sub, name) in [
        ("copy", "flip-small"),
        ("copy", "flip-big"),
        ("mirror", "flip-small"),
        ("mirror", "flip-big"),
    ] {
        let what = format!("{sub} --verify, {name} flipped");
        let dst = tmp.path().join(format!("dst-{sub}-{name}"));
        if sub == "mirror" {
            // A mirror writes only what differs: start from a copy missing the file.
            let out = run_copy(&["--quiet"], &src, &dst);
            assert_eq!(out.status.code(), Some(0), "{what}: {}", describe(&out));
            std::fs::remove_file(dst.join(name)).unwrap();
        }
        let out = run_flipped(sub, name, &src, &dst);
        assert_eq!(out.status.code(), Some(8), "{what}: {}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        let path = dst.join(name);
        assert_eq!(lines.len(), 1, "{what}: one message expected:\n{stderr}");
        assert!(
            lines[0].contains("verify") && lines[0].contains(&*path.to_string_lossy()),
            "{what}: the message names the operation and the file: {}",
            lines[0]
        );
        let diffs = compare_trees(&src, &dst, &cmp_opts());
        let bad: Vec<&String> = diffs.iter().filter(|d| !d.starts_with(name)).collect();
        assert!(
            bad.is_empty(),
            "{what}: entries other than {name} differ: {bad:?}"
        );
        assert!(
            diffs.iter().any(|d| d.starts_with(name)),
            "{what}: the oracle sees no difference in {name}"
        );
        assert_eq!(
            std::fs::symlink_metadata(&path).unwrap().mtime(),
            0,
            "{what}: mtime not reset"
        );
        let out = run_mirror(&["--quiet"], &src, &dst);
        assert_eq!(out.status.code(), Some(0), "{what}: repair: {}", describe(&out));
        assert_trees_equal(
            &src,
            &dst,
            &cmp_opts(),
            &format!("{what}: after the repairing mirror"),
        );
    }
}

/// `ringsync send SRC | [RINGSYNC_FAILPOINTS=rule] ringsync receive [extra] DST`.
fn send_receive(src: &Path, dst: &Path, extra: &[&str], rule: Option<&str>) -> std::process::Output {
    use std::process::Stdio;
    let mut send = Command::new(bin())
        .args(["send", "--quiet"])
        .arg(src)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn send");
    let mut recv = Command::new(bin());
    recv.arg("receive")
        .args(extra)
        .arg(dst)
        .env_remove("RINGSYNC_FAILPOINTS");
    if let Some(r) = rule {
        recv.env("RINGSYNC_FAILPOINTS", r);
    }
    let out = recv
        .stdin(send.stdout.take().unwrap())
        .output()
        .expect("spawn receive");
    assert_eq!(send.wait().unwrap().code(), Some(0), "send");
    out
}

#[test]
fn receive_verify_reads_back_every_file_received() {
    let tmp = scratch("verify-recv");
    let src = tmp.path().join("src");
    gen_tree(&src, 0x7e51f2, &tree_opts()).expect("gen_tree");
    let (files, bytes) = data_bytes(&src);
    let dst = tmp.path().join("dst");
    let out = send_receive(&src, &dst, &["--verify"], None);
    assert_eq!(out.status.code(), Some(0), "receive --verify: {}", describe(&out));
    assert_trees_equal(&src, &dst, &cmp_opts(), "receive --verify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want = format!("verified {files} files ({bytes} bytes read back), 0 failed");
    assert!(
        stderr.contains(&want),
        "receive --verify: want {want:?} (SEEK_DATA count of SRC):\n{stderr}"
    );
    // Without --verify nothing is read back.
    let out = send_receive(&src, &tmp.path().join("plain"), &[], None);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("verified"));
}

#[test]
fn receive_verify_catches_a_byte_changed_behind_its_back() {
    if !failpoints_or_skip() {
        return;
    }
    let tmp = scratch("verify-recv-flip");
    let src = tmp.path().join("src");
    gen_tree(&src, 0xf11c, &tree_opts()).expect("gen_tree");
    std::fs::write(src.join("flip-small"), b"0123456789".repeat(300)).unwrap();
    std::fs::write(
        src.join("flip-big"),
        (0..(3u32 << 20)).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    for name in ["flip-small", "flip-big"] {
        let what = format!("send | receive --verify, {name} flipped");
        let dst = tmp.path().join(format!("dst-{name}"));
        let rule = format!("verify:{name}=EIO");
        let out = send_receive(&src, &dst, &["--quiet", "--verify"], Some(&rule));
        assert_eq!(out.status.code(), Some(8), "{what}: {}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let path = dst.join(name);
        let naming: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains(&*path.to_string_lossy()))
            .collect();
        assert!(
            naming.len() == 1 && naming[0].contains("verify"),
            "{what}: one line names the file and says verify:\n{stderr}"
        );
        let diffs = compare_trees(&src, &dst, &cmp_opts());
        let bad: Vec<&String> = diffs.iter().filter(|d| !d.starts_with(name)).collect();
        assert!(
            bad.is_empty(),
            "{what}: entries other than {name} differ: {bad:?}"
        );
        assert!(
            diffs.iter().any(|d| d.starts_with(name)),
            "{what}: the oracle sees no difference in {name}"
        );
        assert_eq!(
            std::fs::symlink_metadata(&path).unwrap().mtime(),
            0,
            "{what}: mtime not reset"
        );
        let state = read_record_json(&dst).map(|r| r["state"].clone());
        assert_eq!(
            state,
            Some(serde_json::json!("dirty")),
            "{what}: DST's record after a mismatch"
        );
        let out = run_mirror(&["--quiet"], &src, &dst);
        assert_eq!(out.status.code(), Some(0), "{what}: repair: {}", describe(&out));
        assert_trees_equal(
            &src,
            &dst,
            &cmp_opts(),
            &format!("{what}: after the repairing mirror"),
        );
    }
}

/// Under `--fsync end` files are published in batches (of 128 MiB with `--verify`), each read
/// back once its `syncfs` is done, while the next is written: a tree of several batches, over
/// a target holding other versions of the same names. A file read back before its rename
/// would be the old version (a mismatch); one read before its sync, from the cache.
#[test]
fn verify_reads_back_batches_during_the_run() {
    let tmp = scratch("verify-batches");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    // --fsync none --verify publishes in the same batches (it syncs for the read-back anyway).
    for fsync in ["end", "none"] {
        let dst = tmp.path().join(format!("dst-{fsync}"));
        std::fs::create_dir_all(dst.join("d")).unwrap();
        let big = |seed: u8| -> Vec<u8> {
            let mut x = seed as u32 | 1;
            (0..(40usize << 20) + 4097)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect()
        };
        for i in 0..5u8 {
            std::fs::write(src.join(format!("d/big{i}")), big(i + 1)).unwrap();
            std::fs::write(dst.join(format!("d/big{i}")), big(i + 101)).unwrap();
        }
        for i in 0..40 {
            std::fs::write(src.join(format!("s{i:02}")), vec![i as u8; 1000 + i * 4099]).unwrap();
            std::fs::write(dst.join(format!("s{i:02}")), vec![!i as u8; 1000 + i * 4099]).unwrap();
        }
        // Other versions, also by mtime (written in the same clock tick, they could share it).
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
        for e in std::fs::read_dir(&dst)
            .unwrap()
            .chain(std::fs::read_dir(dst.join("d")).unwrap())
        {
            let p = e.unwrap().path();
            if p.is_file() {
                std::fs::File::options()
                    .write(true)
                    .open(&p)
                    .unwrap()
                    .set_modified(old)
                    .unwrap();
            }
        }
        let (files, bytes) = data_bytes(&src);
        let out = run_mirror(&["--json", "--verify", "--fsync", fsync], &src, &dst);
        assert_eq!(
            out.status.code(),
            Some(0),
            "mirror --verify --fsync {fsync}: {}",
            describe(&out)
        );
        assert_trees_equal(
            &src,
            &dst,
            &cmp_opts(),
            &format!("mirror --verify --fsync {fsync} in batches"),
        );
        let v = &json(&out)["verified"];
        assert_eq!(
            v["files"].as_u64(),
            Some(files),
            "--fsync {fsync}: files read back: {v}"
        );
        assert_eq!(
            v["bytes"].as_u64(),
            Some(bytes),
            "--fsync {fsync}: bytes read back: {v}"
        );
    }

    if !failpoints_or_skip() {
        return;
    }
    // A byte changed in a file of the first batches: caught, one message, the rest exact.
    let dst2 = tmp.path().join("dst2");
    let out = run_flipped("copy", "big0", &src, &dst2);
    assert_eq!(
        out.status.code(),
        Some(8),
        "copy --verify, big0 flipped: {}",
        describe(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one message expected:\n{stderr}");
    assert!(
        stderr.contains(&*dst2.join("d/big0").to_string_lossy()),
        "{stderr}"
    );
    let diffs = compare_trees(&src, &dst2, &cmp_opts());
    assert!(
        diffs.iter().all(|d| d.starts_with("d/big0")) && !diffs.is_empty(),
        "only d/big0 differs: {diffs:?}"
    );
}
