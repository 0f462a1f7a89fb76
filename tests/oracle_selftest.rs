//! Self-tests for the oracle and the generator; they do not need ringsync.
//!
//! A generated tree (without the > PATH_MAX chain) is copied with GNU
//! `cp -a --preserve=all`, which must compare identical; then one mutation at
//! a time is applied to a fresh copy and the oracle must report exactly that
//! kind of difference. This proves the oracle can fail.

mod common;

use std::path::Path;
use std::process::Command;

use common::oracle::{scan_tree, show, Entry, Kind, Tree};
use common::*;
use rustix::fs::{AtFlags, Gid, Mode, Timespec, Timestamps, Uid, XattrFlags, CWD};

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

fn selftest_opts() -> GenOpts {
    GenOpts {
        dirs: 12,
        files: 50,
        deep: false,
        max_file: 1 << 20,
        ..GenOpts::default()
    }
}

fn parent_of(rel: &[u8]) -> Vec<u8> {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => rel[..i].to_vec(),
        None => b".".to_vec(),
    }
}

fn set_times(root: &Path, rel: &[u8], e: &Entry) {
    let ts = |t: (i64, u32)| Timespec {
        tv_sec: t.0,
        tv_nsec: t.1.into(),
    };
    let times = Timestamps {
        last_access: ts(e.atime),
        last_modification: ts(e.mtime),
    };
    let p = if rel == b"." {
        root.to_path_buf()
    } else {
        bpath(root, rel)
    };
    rustix::fs::utimensat(CWD, &p, &times, AtFlags::SYMLINK_NOFOLLOW).expect("utimensat");
}

/// Restore the times of `rel` and of its parent directory from `before`.
fn restore_times(root: &Path, before: &Tree, rel: &[u8]) {
    let parent = parent_of(rel);
    if before.entries.contains_key(rel) && bpath(root, rel).symlink_metadata().is_ok() {
        set_times(root, rel, &before.entries[rel]);
    }
    set_times(root, &parent, &before.entries[parent.as_slice()]);
}

fn pick(t: &Tree, f: impl Fn(&[u8], &Entry) -> bool) -> &[u8] {
    t.entries
        .iter()
        .find(|(p, e)| p.as_slice() != b"." && f(p, e))
        .map(|(p, _)| p.as_slice())
        .expect("no suitable entry for mutation")
}

#[derive(Debug, Clone, Copy)]
enum Mutation {
    ContentFlip,
    ModeChange,
    MtimeNs,
    AtimeNs,
    RootMtime,
    XattrValue,
    XattrAdded,
    SymlinkRetarget,
    BreakHardlink,
    FillHole,
    OwnerChange,
    ExtraEntry,
    MissingEntry,
    TypeChange,
    RdevChange,
    AclChange,
}

/// Apply one mutation to `dst`; returns (expected keyword, path it concerns).
fn mutate(m: Mutation, dst: &Path, t: &Tree, rep: &GenReport) -> (&'static str, Vec<u8>) {
    let plain = |p: &[u8], e: &Entry| {
        e.kind == Kind::File && e.nlink == 1 && e.size > 100 && !e.is_sparse() && !p.contains(&b'\n')
    };
    match m {
        Mutation::ContentFlip => {
            let rel = pick(t, plain).to_vec();
            let path = bpath(dst, &rel);
            let mut data = std::fs::read(&path).unwrap();
            let i = data.len() / 2;
            data[i] ^= 0x01;
            std::fs::write(&path, &data).unwrap();
            restore_times(dst, t, &rel);
            ("content differs", rel)
        }
        Mutation::ModeChange => {
            let rel = pick(t, plain).to_vec();
            let e = &t.entries[&rel];
            rustix::fs::chmodat(
                CWD,
                bpath(dst, &rel),
                Mode::from_raw_mode(e.perm ^ 0o4000),
                AtFlags::empty(),
            )
            .unwrap();
            ("mode differs", rel)
        }
        Mutation::MtimeNs | Mutation::AtimeNs => {
            let rel = pick(t, plain).to_vec();
            let mut e = t.entries[&rel].clone();
            if matches!(m, Mutation::MtimeNs) {
                e.mtime.1 = (e.mtime.1 + 1) % 1_000_000_000;
            } else {
                e.atime.1 = (e.atime.1 + 1) % 1_000_000_000;
            }
            set_times(dst, &rel, &e);
            if matches!(m, Mutation::MtimeNs) {
                ("mtime differs", rel)
            } else {
                ("atime differs", rel)
            }
        }
        Mutation::RootMtime => {
            let mut e = t.entries[&b"."[..]].clone();
            e.mtime.0 -= 1;
            set_times(dst, b".", &e);
            ("mtime differs", b".".to_vec())
        }
        Mutation::XattrValue | Mutation::XattrAdded => {
            let rel = rep
                .xattr_files
                .iter()
                .find(|p| t.entries[p.as_slice()].nlink == 1)
                .expect("a file with xattrs")
                .clone();
            let e = &t.entries[&rel];
            let path = bpath(dst, &rel);
            if matches!(m, Mutation::XattrValue) {
                let (name, value) = e
                    .xattrs
                    .iter()
                    .find(|(k, _)| k.starts_with(b"user."))
                    .expect("user xattr");
                let mut v = value.clone();
                match v.first_mut() {
                    Some(b) => *b ^= 0x80,
                    None => v.push(0),
                }
                rustix::fs::setxattr(&path, name.as_slice(), &v, XattrFlags::empty()).unwrap();
            } else {
                rustix::fs::setxattr(&path, "user.mutated", b"", XattrFlags::empty()).unwrap();
            }
            ("xattrs differ", rel)
        }
        Mutation::SymlinkRetarget => {
            let rel = pick(t, |_, e| e.kind == Kind::Symlink && e.nlink == 1).to_vec();
            let e = &t.entries[&rel];
            let path = bpath(dst, &rel);
            std::fs::remove_file(&path).unwrap();
            std::os::unix::fs::symlink("retargeted", &path).unwrap();
            rustix::fs::chownat(
                CWD,
                &path,
                Some(Uid::from_raw(e.uid)),
                Some(Gid::from_raw(e.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .unwrap();
            for (k, v) in &e.xattrs {
                rustix::fs::lsetxattr(&path, k.as_slice(), v, XattrFlags::empty()).unwrap();
            }
            restore_times(dst, t, &rel);
            ("symlink target differs", rel)
        }
        Mutation::BreakHardlink => {
            let group = t
                .hardlink_groups()
                .into_iter()
                .find(|g| t.entries[&g[0]].kind == Kind::File)
                .expect("a hardlink group");
            let rel = group[1].clone();
            let path = bpath(dst, &rel);
            let mut tmp = path.as_os_str().to_owned();
            tmp.push(".tmp");
            let out = Command::new("cp")
                .args(["-a", "--preserve=all"])
                .arg(&path)
                .arg(&tmp)
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", describe(&out));
            std::fs::rename(&tmp, &path).unwrap();
            restore_times(dst, t, &rel);
            ("hardlink group differs", rel)
        }
        Mutation::FillHole => {
            // Layout 1: 8 MiB, hole over the first MiB.
            let rel = rep.sparse[1].clone();
            assert!(t.entries[&rel].is_sparse());
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(bpath(dst, &rel))
                .unwrap();
            rustix::io::pwrite(&f, &vec![0u8; 1 << 20], 0).unwrap();
            f.sync_all().unwrap();
            drop(f);
            restore_times(dst, t, &rel);
            ("sparse source", rel)
        }
        Mutation::OwnerChange => {
            let rel = pick(t, plain).to_vec();
            let e = &t.entries[&rel];
            let path = bpath(dst, &rel);
            rustix::fs::chownat(
                CWD,
                &path,
                Some(Uid::from_raw(e.uid.wrapping_add(1))),
                None,
                AtFlags::empty(),
            )
            .unwrap();
            // chown clears suid/sgid; put the mode back.
            rustix::fs::chmodat(CWD, &path, Mode::from_raw_mode(e.perm), AtFlags::empty()).unwrap();
            ("owner uid:gid differs", rel)
        }
        Mutation::ExtraEntry => {
            std::fs::write(dst.join("extra-entry"), b"x").unwrap();
            restore_times(dst, t, b"extra-entry");
            ("extra in target", b"extra-entry".to_vec())
        }
        Mutation::MissingEntry => {
            let rel = pick(t, plain).to_vec();
            std::fs::remove_file(bpath(dst, &rel)).unwrap();
            restore_times(dst, t, &rel);
            ("missing in target", rel)
        }
        Mutation::TypeChange => {
            let rel = pick(t, |_, e| e.kind == Kind::Symlink && e.nlink == 1).to_vec();
            let path = bpath(dst, &rel);
            std::fs::remove_file(&path).unwrap();
            std::fs::write(&path, b"").unwrap();
            restore_times(dst, t, &rel);
            ("file type differs", rel)
        }
        Mutation::RdevChange => {
            let rel = rep.devices[0].clone();
            let e = &t.entries[&rel];
            let path = bpath(dst, &rel);
            std::fs::remove_file(&path).unwrap();
            let ft = if e.kind == Kind::Block {
                rustix::fs::FileType::BlockDevice
            } else {
                rustix::fs::FileType::CharacterDevice
            };
            let dev = rustix::fs::makedev(e.rdev.0, e.rdev.1 + 1);
            rustix::fs::mknodat(CWD, &path, ft, Mode::from_raw_mode(e.perm), dev).unwrap();
            rustix::fs::chownat(
                CWD,
                &path,
                Some(Uid::from_raw(e.uid)),
                Some(Gid::from_raw(e.gid)),
                AtFlags::empty(),
            )
            .unwrap();
            rustix::fs::chmodat(CWD, &path, Mode::from_raw_mode(e.perm), AtFlags::empty()).unwrap();
            for (k, v) in &e.xattrs {
                rustix::fs::lsetxattr(&path, k.as_slice(), v, XattrFlags::empty()).unwrap();
            }
            restore_times(dst, t, &rel);
            ("rdev differs", rel)
        }
        Mutation::AclChange => {
            let rel = b"acl/with-access-acl".to_vec();
            let mut v = common::gen::sample_acl();
            // Named user 1000 -> 1001.
            v[4 + 8 + 4] = 0xe9;
            rustix::fs::setxattr(
                bpath(dst, &rel),
                "system.posix_acl_access",
                &v,
                XattrFlags::empty(),
            )
            .unwrap();
            ("xattrs differ", rel)
        }
    }
}

#[test]
fn oracle_accepts_cp_copy_and_detects_each_mutation() {
    let tmp = scratch("selftest");
    let src = tmp.path().join("src");
    let rep = gen_tree(&src, 0x5eed_0001, &selftest_opts()).expect("gen_tree");
    let before_src = scan_tree(&src, true).expect("scan src");
    let opts = CompareOpts::default();

    // Baseline: cp -a copy is identical.
    let base = tmp.path().join("base");
    cp_a(&src, &base);
    assert_trees_equal(&src, &base, &opts, "cp -a baseline");
    // The oracle scan must not have disturbed the source (atimes included).
    let after_src = scan_tree(&src, true).expect("rescan src");
    assert!(
        common::oracle::compare_scanned(&before_src, &after_src, &opts).is_empty(),
        "scanning/copying changed the source"
    );

    let mut muts = vec![
        Mutation::ContentFlip,
        Mutation::ModeChange,
        Mutation::MtimeNs,
        Mutation::AtimeNs,
        Mutation::RootMtime,
        Mutation::XattrValue,
        Mutation::XattrAdded,
        Mutation::SymlinkRetarget,
        Mutation::BreakHardlink,
        Mutation::FillHole,
        Mutation::ExtraEntry,
        Mutation::MissingEntry,
        Mutation::TypeChange,
        Mutation::AclChange,
    ];
    if is_root() {
        muts.push(Mutation::OwnerChange);
        if !rep.devices.is_empty() {
            muts.push(Mutation::RdevChange);
        }
    }
    for (i, m) in muts.into_iter().enumerate() {
        let dst = tmp.path().join(format!("m{i}"));
        cp_a(&src, &dst);
        let t = scan_tree(&dst, false).expect("scan copy");
        let (keyword, rel) = mutate(m, &dst, &t, &rep);
        let d = compare_trees(&src, &dst, &opts);
        assert!(!d.is_empty(), "{m:?}: oracle reported no difference");
        let shown = show(&rel);
        assert!(
            d.iter().all(|s| s.contains(keyword)),
            "{m:?}: expected only '{keyword}' differences, got:\n{}",
            d.join("\n")
        );
        assert!(
            d.iter().any(|s| s.starts_with(&format!("{shown}:"))),
            "{m:?}: no difference names {shown}; got:\n{}",
            d.join("\n")
        );
        std::fs::remove_dir_all(&dst).ok();
    }
}

#[test]
fn generator_is_deterministic_and_nasty() {
    let tmp = scratch("gen");
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    let c = tmp.path().join("c");
    let opts = GenOpts {
        files: 40,
        max_file: 1 << 20,
        ..GenOpts::default()
    };
    let rep = gen_tree(&a, 42, &opts).unwrap();
    gen_tree(&b, 42, &opts).unwrap();
    gen_tree(&c, 43, &opts).unwrap();

    // Same seed, same tree (atimes are relative to "now", so not compared).
    let same = CompareOpts {
        atime: false,
        ..CompareOpts::default()
    };
    let d = compare_trees(&a, &b, &same);
    assert!(d.is_empty(), "same seed differs:\n{}", d.join("\n"));
    assert!(
        !compare_trees(&a, &c, &same).is_empty(),
        "different seeds gave identical trees"
    );

    let t = scan_tree(&a, false).unwrap();
    // Deep chain beyond PATH_MAX is walkable by the oracle.
    let longest = t.entries.keys().map(|k| k.len()).max().unwrap();
    assert!(longest > 4096, "longest relative path only {longest} bytes");
    assert!(rep.longest_path > 4096);
    // Sparse files really are sparse here.
    for s in &rep.sparse {
        assert!(t.entries[s].is_sparse(), "{} is not sparse", show(s));
    }
    // Hardlink groups as reported.
    let mut groups = t.hardlink_groups();
    groups.iter_mut().for_each(|g| g.sort());
    for g in &rep.hardlink_groups {
        let mut g = g.clone();
        g.sort();
        assert!(
            groups.contains(&g),
            "hardlink group {:?} not found",
            g.iter().map(|p| show(p)).collect::<Vec<_>>()
        );
    }
    // Special names, kinds and modes present.
    let names: Vec<&[u8]> = t
        .entries
        .keys()
        .map(|k| k.rsplit(|&b| b == b'/').next().unwrap())
        .collect();
    for n in [&b"-rf"[..], b"new\nline", &[0xff, 0xfe, 0xfd], b" leading space"] {
        assert!(names.contains(&n), "missing name {}", show(n));
    }
    assert!(names.iter().any(|n| n.len() == 255));
    assert!(t.count(Kind::Symlink) >= 10);
    assert!(t.count(Kind::Fifo) >= 1);
    if is_root() {
        assert!(t.count(Kind::Char) >= 1 && t.count(Kind::Block) >= 1);
        assert!(t
            .entries
            .values()
            .any(|e| e.xattrs.keys().any(|k| k.starts_with(b"trusted."))));
    }
    for bits in [0o4000, 0o2000, 0o1000] {
        assert!(
            t.entries.values().any(|e| e.perm & bits != 0),
            "no entry with mode bit {bits:o}"
        );
    }
    assert!(t.entries.values().any(|e| e.kind == Kind::Dir && e.perm == 0o555));
    assert!(t
        .entries
        .values()
        .any(|e| e.mtime.1 != 0 && e.kind == Kind::Symlink));
    assert!(t
        .entries
        .values()
        .any(|e| e.xattrs.values().any(|v| v.is_empty())));
    assert!(t.entries[&b"acl/with-access-acl"[..]]
        .xattrs
        .contains_key(&b"system.posix_acl_access"[..]));
}
