//! Copies on loop-mounted ext4, xfs and btrfs images (root only).
//!
//! A missing prerequisite (not root, mkfs.* missing, no loop devices, mount
//! refused) prints `SKIPPED: <reason>` and returns, unless the `CI`
//! environment variable is set, in which case the test fails.

mod common;

use std::process::Command;

use common::mount::{mount_or_skip, LoopFs};
use common::*;

fn loop_tree_opts() -> GenOpts {
    GenOpts {
        files: 70,
        big: true,
        max_file: 2 << 20,
        ..GenOpts::default()
    }
}

/// Generate a tree on the filesystem, copy it within the filesystem with each
/// engine and compare. With `expect_shared`, the big file's copy must report
/// shared extents (`filefrag -v`).
fn copy_within(fs: &LoopFs, seed: u64, reflink: &str, expect_shared: bool) {
    let src = fs.path().join("src");
    let rep = gen_tree(&src, seed, &loop_tree_opts()).expect("gen_tree on loop fs");
    assert!(!rep.sparse.is_empty());
    for engine in ["uring", "sync"] {
        let what = format!("{} --reflink {reflink} --engine {engine}", fs.fstype);
        let dst = fs.path().join(format!("dst-{engine}"));
        let out = run_copy(
            &[
                "--quiet",
                "--reflink",
                reflink,
                "--engine",
                engine,
                "--threads",
                "2",
            ],
            &src,
            &dst,
        );
        assert_eq!(out.status.code(), Some(0), "{what}: {}", describe(&out));
        assert_trees_equal(&src, &dst, &CompareOpts::default(), &what);
        if expect_shared && have_tool("filefrag") {
            let out = Command::new("filefrag")
                .arg("-v")
                .arg(dst.join("big-17M"))
                .output()
                .expect("run filefrag");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                text.contains("shared"),
                "{what}: big-17M copy has no shared extents, data was not reflinked:\n{text}"
            );
        }
    }
}

#[test]
fn ext4_copy_reflink_auto() {
    let Some(fs) = mount_or_skip("ext4", 512) else {
        return;
    };
    copy_within(&fs, 101, "auto", false);
}

#[test]
fn xfs_copy_reflink_auto() {
    let Some(fs) = mount_or_skip("xfs", 512) else {
        return;
    };
    copy_within(&fs, 102, "auto", false);
}

#[test]
fn xfs_copy_reflink_always_shares_data() {
    let Some(fs) = mount_or_skip("xfs", 512) else {
        return;
    };
    copy_within(&fs, 103, "always", true);
}

#[test]
fn btrfs_copy_reflink_auto() {
    let Some(fs) = mount_or_skip("btrfs", 512) else {
        return;
    };
    copy_within(&fs, 104, "auto", false);
}

#[test]
fn btrfs_copy_reflink_always_shares_data() {
    let Some(fs) = mount_or_skip("btrfs", 512) else {
        return;
    };
    copy_within(&fs, 105, "always", true);
}

#[test]
fn ext4_reflink_always_reports_errors() {
    let Some(fs) = mount_or_skip("ext4", 256) else {
        return;
    };
    let src = fs.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("data-file"), vec![0xabu8; 1 << 20]).unwrap();
    std::fs::write(src.join("small-file"), b"small").unwrap();
    for engine in ["uring", "sync"] {
        let dst = fs.path().join(format!("dst-{engine}"));
        let out = run_copy(&["--reflink", "always", "--engine", engine], &src, &dst);
        assert_eq!(
            out.status.code(),
            Some(3),
            "ext4 cannot reflink, so --reflink always must report errors (exit 3), \
             --engine {engine}: {}",
            describe(&out)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("data-file"),
            "--engine {engine}: stderr does not name the file that could not be reflinked:\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "panic: {stderr}");
    }
}

#[test]
fn enospc_on_tiny_ext4_is_reported_not_panicked() {
    let Some(fs) = mount_or_skip("ext4", 16) else {
        return;
    };
    // ~64 MiB of incompressible data on the scratch filesystem.
    let tmp = scratch("enospc-src");
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for i in 0..8 {
        let mut data = vec![0u8; 8 << 20];
        for chunk in data.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        std::fs::write(src.join(format!("blob{i}")), &data).unwrap();
    }
    for engine in ["uring", "sync"] {
        let dst = fs.path().join(format!("dst-{engine}"));
        let out = run_copy(&["--engine", engine], &src, &dst);
        let code = out.status.code();
        assert!(
            code.is_some() && code != Some(0) && code != Some(101),
            "--engine {engine}: expected a clean non-zero exit on ENOSPC: {}",
            describe(&out)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "--engine {engine}: panic: {stderr}");
        assert!(
            stderr.contains("No space left"),
            "--engine {engine}: stderr does not mention ENOSPC:\n{stderr}"
        );
        assert!(
            stderr.contains("blob") || stderr.contains(&*dst.to_string_lossy()),
            "--engine {engine}: stderr names no path:\n{stderr}"
        );
        std::fs::remove_dir_all(&dst).ok();
    }
}
