//! `copy` makes each new directory under a temporary name and renames it into place once the
//! entries in it (not its subdirectories) are finished (docs/copy.md). A reader watching DST
//! during the run therefore never finds a new directory at its final name without all of its
//! files, each complete.
//!
//! Oracle: the test's own record of what it wrote to SRC (names and bytes), compared with
//! what a second thread reads from DST while the copy runs, `--bwlimit` keeping the run long
//! enough to be watched; then the finished copy against SRC with the tree oracle.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use common::{assert_trees_equal, bin, scratch, CompareOpts};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

const DIRS: usize = 16;
const FILES: usize = 12;
const FILE_BYTES: usize = 24 << 10;

/// SRC: `dNN/fMM` and `dNN/sub/fMM` files of random bytes. Returns, per directory path
/// relative to SRC, its files' names and bytes.
fn make_src(src: &Path, seed: u64) -> BTreeMap<PathBuf, Vec<(String, Vec<u8>)>> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut want = BTreeMap::new();
    for d in 0..DIRS {
        for rel in [format!("d{d:02}"), format!("d{d:02}/sub")] {
            std::fs::create_dir_all(src.join(&rel)).unwrap();
            let mut files = Vec::new();
            for f in 0..FILES {
                let mut bytes = vec![0u8; FILE_BYTES + f * 1000];
                rng.fill_bytes(&mut bytes);
                let name = format!("f{f:02}");
                std::fs::write(src.join(&rel).join(&name), &bytes).unwrap();
                files.push((name, bytes));
            }
            want.insert(PathBuf::from(rel), files);
        }
    }
    want
}

/// What one look at DST found: directories at their final names, and those among them
/// lacking a file or holding one that is not SRC's.
#[derive(Default)]
struct Look {
    visible: usize,
    incomplete: Vec<String>,
}

fn look(dst: &Path, want: &BTreeMap<PathBuf, Vec<(String, Vec<u8>)>>) -> Look {
    let mut l = Look::default();
    for (rel, files) in want {
        // Only the final path: a temporary component is not the directory's name.
        if std::fs::symlink_metadata(dst.join(rel)).is_err() {
            continue;
        }
        l.visible += 1;
        for (name, bytes) in files {
            match std::fs::read(dst.join(rel).join(name)) {
                Ok(b) if &b == bytes => {}
                Ok(b) => l.incomplete.push(format!(
                    "{}/{name}: {} bytes, not SRC's {}",
                    rel.display(),
                    b.len(),
                    bytes.len()
                )),
                Err(e) => l.incomplete.push(format!("{}/{name}: {e}", rel.display())),
            }
        }
    }
    l
}

/// Copy SRC with `extra` options while another thread looks at DST as fast as it can. With
/// `appearing`, some looks must have found some directories published and not others.
fn watched_copy(extra: &[&str], appearing: bool) {
    let tmp = scratch("newdirs");
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    let want = make_src(&src, 0x5eed ^ extra.len() as u64);
    let total = want.len();
    let running = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (dst, want, running) = (dst.clone(), want.clone(), running.clone());
        std::thread::spawn(move || {
            let (mut looks, mut partial, mut bad) = (0usize, 0usize, Vec::new());
            while running.load(Ordering::Relaxed) {
                let l = look(&dst, &want);
                looks += 1;
                if l.visible > 0 && l.visible < want.len() {
                    partial += 1;
                }
                if !l.incomplete.is_empty() && bad.len() < 20 {
                    bad.extend(l.incomplete);
                }
            }
            (looks, partial, bad)
        })
    };
    let started = Instant::now();
    let out = Command::new(bin())
        .arg("copy")
        .args(extra)
        .arg(&src)
        .arg(&dst)
        .stdin(Stdio::null())
        .output()
        .expect("spawn ringsync");
    running.store(false, Ordering::Relaxed);
    let (looks, partial, bad) = watcher.join().expect("watcher");
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "copy {extra:?}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        bad.is_empty(),
        "copy {extra:?}: a new directory was at its final name without all its files:\n  {}",
        bad.join("\n  ")
    );
    // The run must have been watched while directories were appearing, or this proved nothing.
    assert!(
        !appearing || partial >= 3,
        "copy {extra:?} took {took:?}: only {partial} of {looks} looks saw some but not all of \
         the {total} directories: the run was too short to watch"
    );
    // The watcher's reads moved DST's atimes.
    let cmp = CompareOpts {
        atime: false,
        ..CompareOpts::default()
    };
    assert_trees_equal(&src, &dst, &cmp, &format!("copy {extra:?}"));
    let tree = common::oracle::scan_tree(&dst, false).expect("scan DST");
    let leftovers: Vec<_> = tree
        .entries
        .keys()
        .filter(|p| p.split(|&b| b == b'/').any(|c| c.starts_with(b".ringsync.")))
        .map(|p| common::oracle::show(p))
        .collect();
    assert!(leftovers.is_empty(), "temporaries left: {leftovers:?}");
    eprintln!("copy {extra:?}: {took:?}, {looks} looks, {partial} saw directories appearing");
}

/// Default (`--fsync end`): a directory waits for a batch's `syncfs` too; a tree this small
/// (~10 MB at 4 MB/s, ~2.5 s) is one batch, published at the end.
#[test]
fn new_directories_appear_with_all_their_files() {
    watched_copy(&["--quiet", "--bwlimit", "4M"], false);
}

/// `--fsync none`: published as soon as their files are finished.
#[test]
fn new_directories_appear_with_all_their_files_fsync_none() {
    watched_copy(&["--quiet", "--bwlimit", "4M", "--fsync", "none"], true);
}
