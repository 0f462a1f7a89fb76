//! End-to-end tests of `ringsync send` and `ringsync receive` against the contract in
//! docs/stream.md, sections 5 (trust) and 6 (send and receive).
//!
//! - Every "DST is what SRC was" is decided by the independent oracle (`common::oracle`) on a
//!   scan of SRC taken before the send, ignoring only the record xattr on DST's root
//!   (`common::mirror_cmp`). Where the contract says DST must differ from SRC
//!   (`--drop-privileged`, SKIPPED entries), the expectation is computed from the oracle's scan
//!   of SRC, never from ringsync's output.
//! - `send` and `receive` run as two processes connected by real pipes; where the stream is also
//!   wanted as a file, `tee FILE` sits between them (three processes, two pipes).
//! - `ringsync dump` is used only where a test is about the stream itself: that a saved stream
//!   verifies (or, damaged, does not), the target id in its HEADER line (compared with the
//!   record's `stream_target`), and which records a stream holds (SKIPPED, CHECKPOINT placement,
//!   the same records for an unchanged tree).
//! - After a refused (cut or damaged) stream, directory mtimes in DST are not compared: staging
//!   temporaries in a directory and removing them changes its mtime, and the contract promises
//!   the old entry under every final name and a dirty record, not untouched directory times.
//!
//! KNOWN GAP (see `hardlinked_symlinks_fifos_and_devices_keep_their_groups`): the stream format
//! can only name regular files for LINK records, so hardlink groups of symlinks, fifos and
//! device nodes (which `copy` and `mirror` preserve, and which `gen_tree` and the mutator
//! create) come out as separate inodes. That test asserts the groups strictly and fails on it;
//! the round-trip and generation tests drop exactly those differences (hardlink-group
//! differences of entries that are not regular files in SRC; every other attribute of those
//! entries is still compared) so that they keep catching everything else. Set
//! `RINGSYNC_STREAM_TEST_STRICT_LINKS=1` to compare those groups there too.
//!
//! Diagnostics knobs, to look past a known failure in the tests built on generated trees (unset,
//! the default, the generated trees are used as they are):
//! - `RINGSYNC_STREAM_TEST_NO_SPECIAL_XATTRS=1` removes the xattrs `gen_tree` puts on symlinks,
//!   fifos and device nodes (root: `trusted.on-special`); the failure is pinned by
//!   `xattrs_on_symlinks_fifos_and_devices_round_trip`.
//! - `RINGSYNC_STREAM_TEST_NO_DEFAULT_ACLS=1` removes the default ACL of `gen_tree`'s `acl`
//!   directory; the failure is pinned by
//!   `receive_into_existing_dst_does_not_keep_inherited_default_acls`.

mod common;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::mount::{mount_or_skip, snapshot_ro, subvolume_create};
use common::mutate::{self as mutator, stat_tree, Meta};
use common::oracle::{compare_scanned, scan_tree, show, Kind, Tree};
use common::procs::{err_file, read_back, wait_all, Ran};
use common::*;

/// A child still running after this long is killed (the test then fails).
const DEADLINE: Duration = Duration::from_secs(150);

// ---------------------------------------------------------------------------
// Running send and receive.

/// How ringsync is started: the binary itself, or through `setpriv` as another user.
#[derive(Clone)]
struct Who {
    argv: Vec<OsString>,
}

impl Who {
    fn me() -> Who {
        Who {
            argv: vec![bin().into()],
        }
    }

    /// As uid/gid 65534 with no supplementary groups, running `exe` (a copy of the binary the
    /// user can reach).
    fn nobody(exe: &Path) -> Who {
        Who {
            argv: vec![
                "setpriv".into(),
                "--reuid=65534".into(),
                "--regid=65534".into(),
                "--clear-groups".into(),
                exe.into(),
            ],
        }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.argv[0]);
        c.args(&self.argv[1..]);
        c
    }
}

struct Piped {
    send: Ran,
    recv: Ran,
}

/// `send SEND_EXTRA SRC | [tee SAVE |] receive RECV_EXTRA DST`, each a separate process connected
/// by pipes.
fn pipeline(
    ws: &Who,
    send_extra: &[&str],
    src: &Path,
    wr: &Who,
    recv_extra: &[&str],
    dst: &Path,
    save: Option<&Path>,
) -> Piped {
    let (sf, se) = err_file();
    let (rf, re) = err_file();
    let mut send = ws
        .cmd()
        .arg("send")
        .args(send_extra)
        .arg(src)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(se)
        .spawn()
        .expect("spawn send");
    let send_out = send.stdout.take().unwrap();
    let mut kids: Vec<(&str, Child)> = vec![("send", send)];
    let recv_in: Stdio = match save {
        Some(file) => {
            let mut tee = Command::new("tee")
                .arg(file)
                .stdin(Stdio::from(send_out))
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn tee");
            let o = tee.stdout.take().unwrap();
            kids.push(("tee", tee));
            Stdio::from(o)
        }
        None => Stdio::from(send_out),
    };
    let recv = wr
        .cmd()
        .arg("receive")
        .args(recv_extra)
        .arg(dst)
        .stdin(recv_in)
        .stdout(Stdio::null())
        .stderr(re)
        .spawn()
        .expect("spawn receive");
    kids.push(("receive", recv));
    let codes = wait_all(&mut kids, "send | receive", DEADLINE);
    if save.is_some() {
        assert_eq!(codes[1], Some(0), "tee failed");
    }
    Piped {
        send: Ran {
            code: codes[0],
            stderr: read_back(sf),
        },
        recv: Ran {
            code: *codes.last().unwrap(),
            stderr: read_back(rf),
        },
    }
}

/// Run one ringsync process (stdin from /dev/null unless `stdin_file`).
fn run_one(who: &Who, args: &[&OsStr], stdin_file: Option<&Path>) -> Ran {
    let (f, e) = err_file();
    let stdin = match stdin_file {
        Some(p) => Stdio::from(std::fs::File::open(p).expect("open stdin file")),
        None => Stdio::null(),
    };
    let c = who
        .cmd()
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::null())
        .stderr(e)
        .spawn()
        .expect("spawn ringsync");
    let mut kids = vec![("ringsync", c)];
    let codes = wait_all(&mut kids, &format!("ringsync {args:?}"), DEADLINE);
    Ran {
        code: codes[0],
        stderr: read_back(f),
    }
}

fn expect_code(r: &Ran, code: i32, what: &str) {
    assert!(!r.panicked(), "{}", r.describe(&format!("{what}: panicked")));
    assert_eq!(r.code, Some(code), "{}", r.describe(what));
}

/// `ringsync dump FILE`: (exit code, stdout).
fn dump(stream: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(bin())
        .arg("dump")
        .arg(stream)
        .output()
        .expect("spawn dump");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The saved stream verifies (`dump` exits 0); returns the dump's lines.
fn dump_ok(stream: &Path, what: &str) -> String {
    let (code, out, err) = dump(stream);
    assert_eq!(
        code,
        Some(0),
        "{what}: dump of the saved stream does not verify:\n--- stderr ---\n{err}\n--- stdout (tail) ---\n{}",
        out.lines().rev().take(10).collect::<Vec<_>>().join("\n")
    );
    out
}

/// The record type of a dump line (third tab-separated field).
fn line_type(l: &str) -> &str {
    l.split('\t').nth(2).unwrap_or("")
}

/// `target=<hex>` of the HEADER line.
fn header_target(dump_out: &str, what: &str) -> String {
    let first = dump_out.lines().next().unwrap_or("");
    assert_eq!(line_type(first), "HEADER", "{what}: first dump line: {first:?}");
    first
        .split('\t')
        .nth(3)
        .unwrap_or("")
        .split(' ')
        .find_map(|f| f.strip_prefix("target="))
        .unwrap_or_else(|| panic!("{what}: no target= in the HEADER line {first:?}"))
        .to_string()
}

fn record_field(dst: &Path, key: &str) -> Option<String> {
    read_record_json(dst).and_then(|v| v.get(key).and_then(|s| s.as_str()).map(str::to_string))
}

/// The record on DST's root says clean, with `stream_target` equal to `target`.
fn assert_clean_for(dst: &Path, target: &str, what: &str) {
    let v = read_record_json(dst)
        .unwrap_or_else(|| panic!("{what}: no record xattr {RECORD_XATTR} on DST after a clean receive"));
    assert_eq!(
        v.get("state").and_then(|s| s.as_str()),
        Some("clean"),
        "{what}: record after a clean receive: {v}"
    );
    assert_eq!(
        v.get("stream_target").and_then(|s| s.as_str()),
        Some(target),
        "{what}: record's stream_target is not the stream's target id {target}: {v}"
    );
}

fn assert_dirty(dst: &Path, what: &str) {
    assert_eq!(
        record_field(dst, "state").as_deref(),
        Some("dirty"),
        "{what}: record should say dirty: {:?}",
        read_record_json(dst)
    );
}

fn fmt_diffs(d: &[String]) -> String {
    d.iter().take(60).cloned().collect::<Vec<_>>().join("\n  ")
}

/// Oracle differences between a scan of SRC and DST, minus the KNOWN GAP (module docs):
/// hardlink-group differences of entries that are not regular files in SRC.
fn diffs(src: &Tree, dst: &Path, opts: &CompareOpts) -> Vec<String> {
    let tb = match scan_tree(dst, true) {
        Ok(t) => t,
        Err(e) => return vec![format!("cannot scan DST {}: {e}", dst.display())],
    };
    without_gap(src, compare_scanned(src, &tb, opts))
}

/// `d` minus the KNOWN GAP differences (module docs) for SRC scan `src`.
fn without_gap(src: &Tree, d: Vec<String>) -> Vec<String> {
    let strict = std::env::var_os("RINGSYNC_STREAM_TEST_STRICT_LINKS").is_some();
    let gap: Vec<String> = src
        .entries
        .iter()
        .filter(|(_, e)| !strict && e.kind != Kind::File && e.kind != Kind::Dir && e.nlink > 1)
        .map(|(p, _)| format!("{}: hardlink group differs:", show(p)))
        .collect();
    d.into_iter()
        .filter(|d| !gap.iter().any(|g| d.starts_with(g.as_str())))
        .collect()
}

fn assert_equal(src: &Tree, dst: &Path, opts: &CompareOpts, what: &str, log: &[String]) {
    let d = diffs(src, dst, opts);
    assert!(
        d.is_empty(),
        "{what}: DST differs from SRC ({} differences):\n  {}\n--- mutations applied to SRC ---\n  {}",
        d.len(),
        fmt_diffs(&d),
        log.join("\n  ")
    );
}

/// SRC was not modified by reading it (atimes included).
fn assert_src_unchanged(before: &Tree, src: &Path, what: &str) {
    let after = scan_tree(src, true).unwrap();
    let d = compare_scanned(before, &after, &CompareOpts::default());
    assert!(d.is_empty(), "{what}: send modified SRC:\n  {}", fmt_diffs(&d));
}

/// `gen_tree`, then the diagnostics knob of the module docs.
fn gen_src(root: &Path, seed: u64, opts: &GenOpts) {
    gen_tree(root, seed, opts).unwrap();
    let specials = std::env::var_os("RINGSYNC_STREAM_TEST_NO_SPECIAL_XATTRS").is_some();
    let acls = std::env::var_os("RINGSYNC_STREAM_TEST_NO_DEFAULT_ACLS").is_some();
    if !specials && !acls {
        return;
    }
    let t = scan_tree(root, false).unwrap();
    let rootfd = rustix::fs::open(
        root,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    for (p, e) in &t.entries {
        const DEFAULT_ACL: &[u8] = b"system.posix_acl_default";
        if acls && e.kind == Kind::Dir && e.xattrs.contains_key(DEFAULT_ACL) {
            let dir = mutator::open_rel_dir(rootfd.as_fd(), p).unwrap();
            rustix::fs::fremovexattr(&dir, DEFAULT_ACL).unwrap();
        }
        if !specials || matches!(e.kind, Kind::File | Kind::Dir) || e.xattrs.is_empty() {
            continue;
        }
        // By descriptor (the deep chain is longer than PATH_MAX).
        let (parent, name) = mutator::parent_of(p);
        let dir = mutator::open_rel_dir(rootfd.as_fd(), &parent).unwrap();
        let mut path = format!("/proc/self/fd/{}/", std::os::fd::AsRawFd::as_raw_fd(&dir)).into_bytes();
        path.extend_from_slice(&name);
        for k in e.xattrs.keys() {
            // ENODATA: already removed through another name of a hardlinked symlink.
            match rustix::fs::lremovexattr(path.as_slice(), k.as_slice()) {
                Ok(()) | Err(rustix::io::Errno::NODATA) => {}
                Err(e) => panic!("removexattr {}: {e}", show(p)),
            }
        }
        // Removing an xattr changes only the ctime; the atime stays in the future.
    }
}

fn gen_opts() -> GenOpts {
    GenOpts {
        dirs: 16,
        files: 50,
        max_file: 512 << 10,
        ..GenOpts::default()
    }
}

/// Write `data` at `rel` below `root`, creating parents.
fn put(root: &Path, rel: &str, data: &[u8]) -> PathBuf {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, data).unwrap();
    p
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn lchown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

fn setx(p: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(p, name, value, rustix::fs::XattrFlags::empty())
        .unwrap_or_else(|e| panic!("setxattr {name} on {}: {e}", p.display()));
}

fn mknod(p: &Path, ft: rustix::fs::FileType, mode: u32, dev: u64) {
    rustix::fs::mknodat(rustix::fs::CWD, p, ft, rustix::fs::Mode::from_raw_mode(mode), dev)
        .unwrap_or_else(|e| panic!("mknod {}: {e}", p.display()));
    chmod_nofollow(p, mode);
}

fn chmod_nofollow(p: &Path, mode: u32) {
    rustix::fs::chmodat(
        rustix::fs::CWD,
        p,
        rustix::fs::Mode::from_raw_mode(mode),
        rustix::fs::AtFlags::empty(),
    )
    .unwrap();
}

/// A private copy of the binary in `dir` that uid 65534 can execute; `dir` made 0755.
fn nobody_exe(dir: &Path) -> PathBuf {
    chmod(dir, 0o755);
    let exe = dir.join("ringsync");
    std::fs::copy(bin(), &exe).unwrap();
    chmod(&exe, 0o755);
    exe
}

fn chown_r(p: &Path, uid: u32, gid: u32) {
    let st = Command::new("chown")
        .arg("-hR")
        .arg(format!("{uid}:{gid}"))
        .arg(p)
        .status()
        .expect("run chown");
    assert!(st.success(), "chown -hR {}", p.display());
}

// ---------------------------------------------------------------------------
// 1. Full round trips into an empty and a missing DST.

/// `send | receive` of `src` into `dst` (with `tee STREAM` between them when `stream` is given),
/// both exits 0, SRC not modified, oracle equality, a clean record. With a saved stream: it
/// verifies and the record's `stream_target` is the target id of its HEADER; returns the dump.
/// Without: `stream_target` is 32 hex digits.
fn round_trip(src: &Path, dst: &Path, engine: &str, stream: Option<&Path>, what: &str) -> String {
    let before = scan_tree(src, true).unwrap();
    let p = pipeline(
        &Who::me(),
        &["-q", "--engine", engine],
        src,
        &Who::me(),
        &["-q"],
        dst,
        stream,
    );
    expect_code(&p.send, 0, &format!("{what}: send"));
    expect_code(&p.recv, 0, &format!("{what}: receive"));
    assert_src_unchanged(&before, src, what);
    assert_equal(&before, dst, &mirror_cmp(), what, &[]);
    match stream {
        Some(stream) => {
            let d = dump_ok(stream, what);
            let target = header_target(&d, what);
            assert_clean_for(dst, &target, what);
            d
        }
        None => {
            assert_eq!(record_field(dst, "state").as_deref(), Some("clean"), "{what}");
            let t = record_field(dst, "stream_target").unwrap_or_default();
            assert!(
                t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()),
                "{what}: stream_target {t:?} is not 32 hex digits"
            );
            String::new()
        }
    }
}

/// Checkpoints never fall inside a file (between FILE and FILE_END).
fn check_checkpoints_outside_files(d: &str, what: &str) -> usize {
    let mut in_file = false;
    let mut n = 0;
    for l in d.lines() {
        match line_type(l) {
            "FILE" => in_file = true,
            "FILE_END" => in_file = false,
            "CHECKPOINT" => {
                n += 1;
                assert!(!in_file, "{what}: a CHECKPOINT inside a file: {l}");
            }
            _ => {}
        }
    }
    n
}

#[test]
fn round_trip_nasty_trees_into_empty_and_missing_dst() {
    let tmp = scratch("stream-rt");
    for (i, seed) in [0x5e01u64, 0x5e02].into_iter().enumerate() {
        let src = tmp.path().join(format!("src{i}"));
        gen_src(
            &src,
            seed,
            &GenOpts {
                big: i == 0,
                ..gen_opts()
            },
        );
        let mut streams = Vec::new();
        for engine in ["uring", "sync"] {
            // Empty DST (made by the test, mode 0700), send | tee | receive.
            let what = format!("seed {seed:#x} --engine {engine} empty DST");
            let dst = tmp.path().join(format!("dst-{i}-{engine}-empty"));
            std::fs::create_dir(&dst).unwrap();
            chmod(&dst, 0o700);
            let stream = tmp.path().join(format!("s-{i}-{engine}"));
            round_trip(&src, &dst, engine, Some(&stream), &what);
            streams.push(stream);
            // Missing DST (its parent exists), send | receive directly.
            let what = format!("seed {seed:#x} --engine {engine} missing DST");
            let dst = tmp.path().join(format!("dst-{i}-{engine}-missing"));
            round_trip(&src, &dst, engine, None, &what);
        }
        // send -o FILE, then receive -i FILE.
        let what = format!("seed {seed:#x} send -o / receive -i");
        let before = scan_tree(&src, true).unwrap();
        let file = tmp.path().join(format!("s-{i}-file"));
        let r = run_one(
            &Who::me(),
            &[
                "send".as_ref(),
                "-q".as_ref(),
                "-o".as_ref(),
                file.as_os_str(),
                src.as_os_str(),
            ],
            None,
        );
        expect_code(&r, 0, &format!("{what}: send -o"));
        let dst = tmp.path().join(format!("dst-{i}-file"));
        let r = run_one(
            &Who::me(),
            &[
                "receive".as_ref(),
                "-q".as_ref(),
                "-i".as_ref(),
                file.as_os_str(),
                dst.as_os_str(),
            ],
            None,
        );
        expect_code(&r, 0, &format!("{what}: receive -i"));
        assert_equal(&before, &dst, &mirror_cmp(), &what, &[]);
        let target = header_target(&dump_ok(&file, &what), &what);
        assert_clean_for(&dst, &target, &what);
        streams.push(file);
        // An unchanged tree always gives the same records (section 6), whatever the engine: the
        // stream id, the chain hashes and the creation time aside.
        let strip = |p: &Path| -> Vec<String> {
            dump_ok(p, &what)
                .lines()
                .filter(|l| !matches!(line_type(l), "HEADER" | "CHECKPOINT" | "END"))
                .map(str::to_string)
                .collect()
        };
        let first = strip(&streams[0]);
        for s in &streams[1..] {
            assert!(
                strip(s) == first,
                "seed {seed:#x}: {} and {} (sends of an unchanged SRC) hold different records",
                streams[0].display(),
                s.display()
            );
        }
        for s in streams {
            std::fs::remove_file(s).unwrap();
        }
    }
}

/// A tree with more than 4096 entries and a file larger than 64 MiB: the stream has
/// checkpoints (section 6), none inside a file, and still round-trips.
#[test]
fn round_trip_wide_tree_and_big_file_crosses_checkpoints() {
    let tmp = scratch("stream-wide");
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for d in 0..10 {
        let dir = src.join(format!("d{d:02}"));
        std::fs::create_dir(&dir).unwrap();
        for f in 0..520 {
            let data = if f % 7 == 0 {
                Vec::new()
            } else {
                format!("{d}/{f}\n").repeat(f % 13).into_bytes()
            };
            std::fs::write(dir.join(format!("f{f:04}")), data).unwrap();
        }
    }
    // 70 MiB of non-zero data (not sparse), written in pieces.
    {
        let mut f = std::fs::File::create(src.join("big-70M")).unwrap();
        let mut block = vec![0u8; 1 << 20];
        for i in 0..70u32 {
            for (j, b) in block.iter_mut().enumerate() {
                *b = (j as u32).wrapping_mul(2654435761).wrapping_add(i).to_le_bytes()[1] | 1;
            }
            f.write_all(&block).unwrap();
        }
    }
    put(&src, "zz-after-big", b"after the big file\n");
    freeze_atimes(&src);
    for engine in ["uring", "sync"] {
        let what = format!("wide tree --engine {engine}");
        let dst = if engine == "uring" {
            let d = tmp.path().join("dst-uring");
            std::fs::create_dir(&d).unwrap();
            d
        } else {
            tmp.path().join("dst-sync-missing")
        };
        let stream = tmp.path().join(format!("stream-{engine}"));
        let d = round_trip(&src, &dst, engine, Some(&stream), &what);
        let n = check_checkpoints_outside_files(&d, &what);
        // 5200 entries: at least one checkpoint after 4096 entries; 70 MiB: at least one after
        // 64 MiB of stream.
        assert!(
            n >= 2,
            "{what}: {n} CHECKPOINT records in a stream of 5200 entries and 70 MiB"
        );
        std::fs::remove_file(&stream).unwrap();
    }
}

// ---------------------------------------------------------------------------
// 2. Generations: mutate SRC, send | receive into the same DST.

fn generations(seed: u64, gens: u64) {
    let what0 = format!("seed {seed:#x}");
    let tmp = scratch(&format!("stream-gen-{seed}"));
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    let stream = tmp.path().join("stream");
    gen_src(&src, seed, &gen_opts());
    let mut fails: Vec<String> = Vec::new();
    for g in 0..=gens {
        let log = if g == 0 {
            Vec::new()
        } else {
            mutator::mutate(&src, seed.wrapping_mul(31).wrapping_add(g), 36).unwrap()
        };
        let what = format!("{what0} generation {g}");
        let before = scan_tree(&src, true).unwrap();
        let engine = if g % 2 == 0 { "uring" } else { "sync" };
        let mut send_args = vec!["-q", "--engine", engine];
        let mut recv_args = vec!["-q"];
        match g {
            1 => send_args = vec!["--progress", "--engine", engine],
            2 => send_args.extend(["--memory", "8M"]),
            3 => recv_args = vec!["--no-fsync", "--progress"],
            _ => {}
        }
        let p = pipeline(
            &Who::me(),
            &send_args,
            &src,
            &Who::me(),
            &recv_args,
            &dst,
            Some(&stream),
        );
        if p.send.code != Some(0) || p.send.panicked() {
            fails.push(p.send.describe(&format!("{what}: send")));
        }
        if p.recv.code != Some(0) || p.recv.panicked() {
            fails.push(p.recv.describe(&format!("{what}: receive")));
        }
        let d = compare_scanned(&before, &scan_tree(&src, true).unwrap(), &CompareOpts::default());
        if !d.is_empty() {
            fails.push(format!("{what}: send modified SRC:\n  {}", fmt_diffs(&d)));
        }
        let d = diffs(&before, &dst, &mirror_cmp());
        if !d.is_empty() {
            fails.push(format!(
                "{what}: DST differs from SRC ({} differences):\n  {}\n--- mutations ---\n  {}",
                d.len(),
                fmt_diffs(&d),
                log.join("\n  ")
            ));
            continue;
        }
        let (code, out, err) = dump(&stream);
        if code != Some(0) {
            fails.push(format!("{what}: dump of the stream: {code:?} {err}"));
            continue;
        }
        let target = header_target(&out, &what);
        let rec = read_record_json(&dst);
        let ok = rec.as_ref().is_some_and(|v| {
            v.get("state").and_then(|s| s.as_str()) == Some("clean")
                && v.get("stream_target").and_then(|s| s.as_str()) == Some(target.as_str())
        });
        if !ok {
            fails.push(format!(
                "{what}: record is not clean with stream_target {target}: {rec:?}"
            ));
        }
    }
    assert!(
        fails.is_empty(),
        "{what0}: {} problems:\n\n{}",
        fails.len(),
        fails.join("\n\n")
    );
}

#[test]
fn generations_of_mutations_converge_seed_a() {
    generations(0x6e01, 4);
}

#[test]
fn generations_of_mutations_converge_seed_b() {
    generations(0x6e02, 4);
}

/// DST full of junk where SRC has other things: extra files and directories, a symlink to an
/// outside directory where SRC has a directory, a file where SRC has a directory, a directory
/// where SRC has a symlink, read-only and mode-0000 directories, a file hardlinked to an outside
/// file, a file with SRC's size and mtime but other bytes. A full stream makes DST equal to SRC
/// and never touches anything outside.
#[test]
fn junk_dst_converges_and_outside_stays_untouched() {
    let tmp = scratch("stream-junk");
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    let outside = tmp.path().join("outside");
    gen_src(&src, 0x7a11, &gen_opts());

    // Outside: what the planted symlink and hardlink point to. It holds names SRC has in
    // "nasty names", so a receiver that followed the symlink would overwrite them.
    put(&outside, "-rf", b"outside -rf\n");
    put(&outside, "--help", b"outside --help\n");
    put(&outside, "keep", b"keep me\n");
    put(&outside, "linked", b"outside linked file\n");
    std::fs::create_dir(outside.join("sub")).unwrap();
    put(&outside, "sub/x", b"x\n");
    freeze_atimes(&outside);
    let outside_scan = scan_tree(&outside, true).unwrap();
    let outside_stat = stat_tree(&outside).unwrap();

    std::fs::create_dir(&dst).unwrap();
    chmod(&dst, 0o700);
    setx(&dst, "user.junk-on-root", b"junk");
    put(&dst, "junk-file", b"junk\n");
    put(&dst, "junk-dir/sub/f", b"junk\n");
    std::os::unix::fs::symlink(&outside, dst.join("nasty names")).unwrap();
    put(&dst, "empty", b"a file where SRC has a directory\n");
    put(&dst, "self-loop/inside", b"a directory where SRC has a symlink\n");
    put(&dst, "readonly-0555/stale", b"stale\n");
    put(&dst, "readonly-0555/sub/stale-sub", b"stale\n");
    put(&dst, "junk-ro/a", b"a\n");
    put(&dst, "junk-ro/locked/b", b"b\n");
    put(&dst, "locked-0000/junk", b"junk\n");
    chmod(&dst.join("junk-ro/locked"), 0o000);
    chmod(&dst.join("junk-ro"), 0o555);
    chmod(&dst.join("readonly-0555/sub"), 0o000);
    chmod(&dst.join("readonly-0555"), 0o555);
    chmod(&dst.join("locked-0000"), 0o000);
    // Where SRC has the "acl" directory: a fifo.
    mknod(&dst.join("acl"), rustix::fs::FileType::Fifo, 0o644, 0);
    // SRC's "-n" (7 bytes, "dash n\n") with the same size and mtime but other bytes.
    let src_n = std::fs::symlink_metadata(src.join("-n")).unwrap();
    put(&dst, "-n", b"DASH N\n");
    rustix::fs::utimensat(
        rustix::fs::CWD,
        dst.join("-n"),
        &rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: src_n.atime(),
                tv_nsec: src_n.atime_nsec(),
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: src_n.mtime(),
                tv_nsec: src_n.mtime_nsec(),
            },
        },
        rustix::fs::AtFlags::empty(),
    )
    .unwrap();
    // A file hardlinked to an outside file (SRC has a file of that name at the root).
    let long = format!("long-{}", "x".repeat(250));
    std::fs::hard_link(outside.join("linked"), dst.join(&long)).unwrap();

    let before = scan_tree(&src, true).unwrap();
    for run in 0..2 {
        let what = format!("junk DST, run {run}");
        let stream = tmp.path().join(format!("stream{run}"));
        let p = pipeline(
            &Who::me(),
            &["-q"],
            &src,
            &Who::me(),
            &["-q"],
            &dst,
            Some(&stream),
        );
        expect_code(&p.send, 0, &format!("{what}: send"));
        expect_code(&p.recv, 0, &format!("{what}: receive"));
        let d = compare_scanned(
            &outside_scan,
            &scan_tree(&outside, true).unwrap(),
            &CompareOpts::default(),
        );
        assert!(
            d.is_empty(),
            "{what}: the outside directory changed:\n  {}",
            fmt_diffs(&d)
        );
        let now = stat_tree(&outside).unwrap();
        let mut changed = Vec::new();
        for (p, m) in &outside_stat {
            let n: Option<&Meta> = now.get(p);
            // nlink of "linked" drops when DST's name goes: that is expected.
            if n.map(|n| (n.ino, n.mode, n.size, n.mtime, n.atime))
                != Some((m.ino, m.mode, m.size, m.mtime, m.atime))
            {
                changed.push(format!("{}: {m:?} -> {n:?}", show(p)));
            }
        }
        assert!(changed.is_empty(), "{what}: outside changed: {changed:?}");
        assert_eq!(
            std::fs::read(outside.join("linked")).unwrap(),
            b"outside linked file\n",
            "{what}: the outside file hardlinked from DST was written through"
        );
        assert_src_unchanged(&before, &src, &what);
        assert_equal(&before, &dst, &mirror_cmp(), &what, &[]);
        let target = header_target(&dump_ok(&stream, &what), &what);
        assert_clean_for(&dst, &target, &what);
    }
}

// ---------------------------------------------------------------------------
// 3. Sparse files.

#[test]
fn sparse_1gib_file_round_trips_small() {
    const GIB: u64 = 1 << 30;
    let tmp = scratch("stream-sparse");
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let mut data_bytes = 0u64;
    {
        let f = std::fs::File::create(src.join("sparse-1g")).unwrap();
        f.set_len(GIB).unwrap();
        use std::os::unix::fs::FileExt;
        for (off, len, fill) in [
            (0u64, 4096usize, 0x11u8),
            (12_345, 100, 0x22),
            (512 << 20, 65_536, 0x33),
            ((700 << 20) + 7, 3, 0x44),
            (GIB - 1, 1, 0x55),
        ] {
            let buf: Vec<u8> = (0..len).map(|i| fill ^ (i as u8)).map(|b| b | 1).collect();
            f.write_all_at(&buf, off).unwrap();
            data_bytes += len as u64;
        }
    }
    {
        // All hole, and data only at the end.
        let f = std::fs::File::create(src.join("all-hole-1g")).unwrap();
        f.set_len(GIB).unwrap();
        let f = std::fs::File::create(src.join("tail-only")).unwrap();
        f.set_len(256 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"tail", (256 << 20) - 4).unwrap();
        data_bytes += 4;
    }
    freeze_atimes(&src);
    let before = scan_tree(&src, true).unwrap();
    for engine in ["uring", "sync"] {
        let what = format!("sparse --engine {engine}");
        let dst = tmp.path().join(format!("dst-{engine}"));
        let stream = tmp.path().join(format!("stream-{engine}"));
        let p = pipeline(
            &Who::me(),
            &["-q", "--engine", engine],
            &src,
            &Who::me(),
            &["-q"],
            &dst,
            Some(&stream),
        );
        expect_code(&p.send, 0, &format!("{what}: send"));
        expect_code(&p.recv, 0, &format!("{what}: receive"));
        // The oracle: same content (sha256 over the whole 1 GiB), and DST sparse within its
        // slack of SRC's allocation.
        assert_equal(&before, &dst, &mirror_cmp(), &what, &[]);
        for name in ["sparse-1g", "all-hole-1g", "tail-only"] {
            let m = std::fs::metadata(dst.join(name)).unwrap();
            assert!(
                m.blocks() * 512 <= 2 << 20,
                "{what}: DST {name} has {} bytes allocated for {} bytes of data",
                m.blocks() * 512,
                data_bytes
            );
        }
        let size = std::fs::metadata(&stream).unwrap().len();
        assert!(
            size < data_bytes + (256 << 10),
            "{what}: the stream is {size} bytes for {data_bytes} bytes of data (holes were sent?)"
        );
        dump_ok(&stream, &what);
    }
}

// ---------------------------------------------------------------------------
// 4. Hardlinks.

#[test]
fn hardlink_groups_of_files_are_preserved() {
    let tmp = scratch("stream-hl");
    let src = tmp.path().join("src");
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    // Five names across four directories; the first name in walk order is deep.
    let a = put(&src, "0/1/2/3/deep-first", &b"group one\n".repeat(1000));
    for n in ["a/one", "b/two", "b/c/three", "zz-five"] {
        std::fs::create_dir_all(src.join(n).parent().unwrap()).unwrap();
        std::fs::hard_link(&a, src.join(n)).unwrap();
    }
    // A pair in one directory, with xattrs and an odd mode.
    let p = put(&src, "d/p1", b"pair\n");
    setx(&p, "user.pair", b"value");
    chmod(&p, 0o640);
    std::fs::hard_link(&p, src.join("d/p2")).unwrap();
    // A sparse file, linked from two directories.
    let s = src.join("sp/sparse");
    std::fs::create_dir_all(s.parent().unwrap()).unwrap();
    {
        let f = std::fs::File::create(&s).unwrap();
        f.set_len(8 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"middle", 4 << 20).unwrap();
    }
    std::fs::create_dir_all(src.join("tq")).unwrap();
    std::fs::hard_link(&s, src.join("tq/sparse-link")).unwrap();
    // An empty file with three names.
    let e = put(&src, "e/empty", b"");
    std::fs::hard_link(&e, src.join("e/empty2")).unwrap();
    std::fs::hard_link(&e, src.join("empty3")).unwrap();
    // Linked to a name outside SRC only: a single name inside.
    let lone = put(&src, "lone", b"my other name is outside\n");
    std::fs::hard_link(&lone, other.join("outside-name")).unwrap();
    // Names with newlines and non-UTF-8 bytes.
    let odd = put(&src, "odd\nname", b"odd\n");
    std::fs::create_dir_all(src.join("x")).unwrap();
    std::fs::hard_link(&odd, bpath(&src, b"x/\xff\xfe link")).unwrap();
    freeze_atimes(&src);
    let before = scan_tree(&src, true).unwrap();
    assert!(
        before.hardlink_groups().len() >= 5,
        "fixture: {:?}",
        before.hardlink_groups()
    );

    for (i, engine) in ["uring", "sync"].into_iter().enumerate() {
        let what = format!("hardlinks --engine {engine}");
        let dst = tmp.path().join(format!("dst{i}"));
        if i == 1 {
            // DST already holds every name, as separate files with other content.
            for p in before
                .entries
                .keys()
                .filter(|p| before.entries[*p].kind == Kind::File)
            {
                let q = bpath(&dst, p);
                std::fs::create_dir_all(q.parent().unwrap()).unwrap();
                std::fs::write(&q, b"separate").unwrap();
            }
        }
        let stream = tmp.path().join(format!("stream{i}"));
        let p = pipeline(
            &Who::me(),
            &["-q", "--engine", engine],
            &src,
            &Who::me(),
            &["-q"],
            &dst,
            Some(&stream),
        );
        expect_code(&p.send, 0, &format!("{what}: send"));
        expect_code(&p.recv, 0, &format!("{what}: receive"));
        // Strict: no known-gap filter here (all groups are of regular files).
        let d = compare_trees(&src, &dst, &mirror_cmp());
        assert!(d.is_empty(), "{what}: DST differs:\n  {}", fmt_diffs(&d));
        // Same inode, spelled out for the five-name group.
        let ino = std::fs::metadata(dst.join("0/1/2/3/deep-first")).unwrap().ino();
        for n in ["a/one", "b/two", "b/c/three", "zz-five"] {
            assert_eq!(std::fs::metadata(dst.join(n)).unwrap().ino(), ino, "{what}: {n}");
        }
        assert_eq!(
            std::fs::metadata(dst.join("lone")).unwrap().nlink(),
            1,
            "{what}: lone"
        );
        let target = header_target(&dump_ok(&stream, &what), &what);
        assert_clean_for(&dst, &target, &what);
    }
}

/// `copy` and `mirror` preserve hardlink groups of symlinks, fifos and device nodes (README,
/// "What copy preserves"); `send` says it sends "hardlinks". A full receive must give the same
/// groups. (Fails today: the stream's LINK names only regular files; see the module docs.)
#[test]
fn hardlinked_symlinks_fifos_and_devices_keep_their_groups() {
    let tmp = scratch("stream-hl-special");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::os::unix::fs::symlink("some target", src.join("sym-a")).unwrap();
    std::fs::hard_link(src.join("sym-a"), src.join("sub/sym-b")).unwrap();
    mknod(&src.join("fifo-a"), rustix::fs::FileType::Fifo, 0o640, 0);
    std::fs::hard_link(src.join("fifo-a"), src.join("sub/fifo-b")).unwrap();
    if is_root() {
        mknod(
            &src.join("char-a"),
            rustix::fs::FileType::CharacterDevice,
            0o600,
            rustix::fs::makedev(1, 3),
        );
        std::fs::hard_link(src.join("char-a"), src.join("sub/char-b")).unwrap();
    }
    freeze_atimes(&src);
    let dst = tmp.path().join("dst");
    let p = pipeline(&Who::me(), &["-q"], &src, &Who::me(), &["-q"], &dst, None);
    expect_code(&p.send, 0, "send");
    expect_code(&p.recv, 0, "receive");
    assert_trees_equal(
        &src,
        &dst,
        &mirror_cmp(),
        "hardlinked symlinks, fifos and devices",
    );
}

/// As root, `receive` applies every xattr namespace (docs/stream.md section 5: "an exact
/// replica needs ... every xattr namespace (`trusted.*`, `security.*` ...), and `receive` applies
/// them all"); `copy` and `mirror` keep them on symlinks, fifos and device nodes too (`gen_tree`
/// puts `trusted.on-special` on some). A full receive must make those entries, xattrs included.
#[test]
fn xattrs_on_symlinks_fifos_and_devices_round_trip() {
    if !is_root() {
        skip_or_fail("xattrs on symlinks, fifos and devices: only trusted.*/security.* fit there (root)");
        return;
    }
    let tmp = scratch("stream-special-xattrs");
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::os::unix::fs::symlink("target", src.join("sym")).unwrap();
    mknod(&src.join("fifo"), rustix::fs::FileType::Fifo, 0o644, 0);
    mknod(
        &src.join("char"),
        rustix::fs::FileType::CharacterDevice,
        0o600,
        rustix::fs::makedev(1, 3),
    );
    mknod(
        &src.join("block"),
        rustix::fs::FileType::BlockDevice,
        0o600,
        rustix::fs::makedev(7, 200),
    );
    for n in ["sym", "fifo", "char", "block"] {
        setx(&src.join(n), "trusted.on-special", b"value");
    }
    put(&src, "plain", b"a plain file next to them\n");
    freeze_atimes(&src);
    let before = scan_tree(&src, true).unwrap();
    for pre in [false, true] {
        let what = if pre {
            "into a DST holding older entries of those names"
        } else {
            "into a new DST"
        };
        let dst = tmp.path().join(format!("dst-{pre}"));
        if pre {
            std::fs::create_dir(&dst).unwrap();
            std::os::unix::fs::symlink("old target", dst.join("sym")).unwrap();
            put(&dst, "fifo", b"old file");
            put(&dst, "char/x", b"old dir");
        }
        let stream = tmp.path().join(format!("stream-{pre}"));
        let p = pipeline(&Who::me(), &[], &src, &Who::me(), &[], &dst, Some(&stream));
        expect_code(&p.send, 0, &format!("{what}: send"));
        expect_code(&p.recv, 0, &format!("{what}: receive"));
        assert_equal(&before, &dst, &mirror_cmp(), what, &[]);
        let target = header_target(&dump_ok(&stream, what), what);
        assert_clean_for(&dst, &target, what);
    }
}

/// A full stream into a non-empty DST makes DST equal to the stream's tree (docs/stream.md
/// section 5). In a DST directory that already carries a default ACL (from an earlier receive),
/// every new entry the kernel creates inherits it; the stream's entries have no such ACL, so
/// DST must not keep one. (`mirror` gets this right; the first receive into an empty DST does
/// too, as the directory's ACL is set at its DIR_END, after its entries.)
#[test]
fn receive_into_existing_dst_does_not_keep_inherited_default_acls() {
    let tmp = scratch("stream-acl");
    let src = tmp.path().join("src");
    put(&src, "acl-dir/no-acl", b"a file without an ACL\n");
    std::fs::create_dir(src.join("acl-dir/subdir")).unwrap();
    put(&src, "acl-dir/with-acl", b"a file with an access ACL\n");
    chmod(&src.join("acl-dir/with-acl"), 0o640);
    setx(
        &src.join("acl-dir/with-acl"),
        "system.posix_acl_access",
        &common::gen::sample_acl(),
    );
    // The default ACL is set last, so the entries above did not inherit it.
    setx(
        &src.join("acl-dir"),
        "system.posix_acl_default",
        &common::gen::sample_acl(),
    );
    freeze_atimes(&src);
    let before = scan_tree(&src, true).unwrap();
    let dst = tmp.path().join("dst");
    for run in 0..3 {
        let what = format!("receive number {}", run + 1);
        if run == 2 {
            // SRC's file changes, so its new version is surely written anew.
            put(&src, "acl-dir/no-acl", b"a file without an ACL, version 2\n");
            freeze_atimes(&src);
        }
        let before = if run == 2 {
            scan_tree(&src, true).unwrap()
        } else {
            before.clone()
        };
        let p = pipeline(&Who::me(), &["-q"], &src, &Who::me(), &["-q"], &dst, None);
        expect_code(&p.send, 0, &format!("{what}: send"));
        expect_code(&p.recv, 0, &format!("{what}: receive"));
        assert_equal(&before, &dst, &mirror_cmp(), &what, &[]);
    }
}

// ---------------------------------------------------------------------------
// 5. Busy.

/// Wait until someone holds an exclusive flock on `dir`.
fn wait_locked(dir: &Path, what: &str) {
    let t = Instant::now();
    loop {
        if let Ok(fd) = rustix::fs::open(
            dir,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        ) {
            if rustix::fs::flock(fd.as_fd(), rustix::fs::FlockOperation::NonBlockingLockShared).is_err() {
                return;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{what}: the first receive never locked DST"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// stat_tree until two reads 300 ms apart agree.
fn quiescent(dst: &Path) -> BTreeMap<Vec<u8>, Meta> {
    let mut last = stat_tree(dst).unwrap();
    for _ in 0..60 {
        std::thread::sleep(Duration::from_millis(300));
        let now = stat_tree(dst).unwrap();
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("DST never stopped changing while the first receive waited for input");
}

#[test]
fn second_receive_into_a_busy_dst_exits_4_and_changes_nothing() {
    let tmp = scratch("stream-busy");
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    gen_src(
        &src,
        0xb5,
        &GenOpts {
            files: 40,
            deep: false,
            max_file: 128 << 10,
            ..GenOpts::default()
        },
    );
    // DST = SRC v1.
    let v1 = scan_tree(&src, true).unwrap();
    let p = pipeline(&Who::me(), &["-q"], &src, &Who::me(), &["-q"], &dst, None);
    expect_code(&p.send, 0, "v1 send");
    expect_code(&p.recv, 0, "v1 receive");
    assert_equal(&v1, &dst, &mirror_cmp(), "v1", &[]);
    // SRC v2, as a stream file.
    let log = mutator::mutate(&src, 0xb5, 20).unwrap();
    let v2 = scan_tree(&src, true).unwrap();
    let file = tmp.path().join("v2.stream");
    let r = run_one(
        &Who::me(),
        &[
            "send".as_ref(),
            "-q".as_ref(),
            "-o".as_ref(),
            file.as_os_str(),
            src.as_os_str(),
        ],
        None,
    );
    expect_code(&r, 0, "v2 send -o");
    let bytes = std::fs::read(&file).unwrap();
    let v2_target = header_target(&dump_ok(&file, "v2"), "v2");
    assert!(
        check_checkpoints_outside_files(&dump_ok(&file, "v2"), "v2") == 0,
        "fixture: the v2 stream should have no CHECKPOINT before END (a small tree)"
    );

    // First receive: the first part of the v2 stream on a pipe that stays open.
    let (af, ae) = err_file();
    let mut first = Command::new(bin())
        .args(["receive", "-q"])
        .arg(&dst)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(ae)
        .spawn()
        .unwrap();
    let mut pipe = first.stdin.take().unwrap();
    let prefix = (bytes.len() / 2).min(60_000);
    pipe.write_all(&bytes[..prefix]).unwrap();
    pipe.flush().unwrap();
    wait_locked(&dst, "busy");
    let before_stat = quiescent(&dst);
    let before_scan = scan_tree(&dst, true).unwrap();
    let rec = read_record(&dst);

    // Second receive: the whole v2 stream from a file.
    let t = Instant::now();
    let second = run_one(
        &Who::me(),
        &[
            "receive".as_ref(),
            "-i".as_ref(),
            file.as_os_str(),
            dst.as_os_str(),
        ],
        None,
    );
    let took = t.elapsed();
    expect_code(&second, 4, "second receive into a locked DST");
    assert!(took < Duration::from_secs(5), "busy exit took {took:?}");
    assert!(
        second.stderr.to_lowercase().contains("busy"),
        "{}",
        second.describe("stderr lacks \"busy\"")
    );
    let d = compare_scanned(
        &before_scan,
        &scan_tree(&dst, true).unwrap(),
        &CompareOpts::default(),
    );
    assert!(d.is_empty(), "busy receive modified DST:\n  {}", fmt_diffs(&d));
    assert_eq!(
        stat_tree(&dst).unwrap(),
        before_stat,
        "busy receive modified DST (stat)"
    );
    assert_eq!(read_record(&dst), rec, "busy receive changed the record");

    // The first receive sees its stream cut: exit 1, nothing published (no checkpoint had
    // verified), DST still v1, not recorded as v2.
    drop(pipe);
    let mut kids = vec![("first receive", first)];
    let codes = wait_all(&mut kids, "first receive", DEADLINE);
    let first = Ran {
        code: codes[0],
        stderr: read_back(af),
    };
    expect_code(&first, 1, "first receive, stream cut");
    // Documented allowance: staging temporaries in a directory and removing them again changes
    // the directory's mtime; the contract promises the old entry under every final name (and a
    // dirty record), so directory mtimes are not compared here. Everything else is.
    let t_dst = scan_tree(&dst, true).unwrap();
    let d: Vec<String> = without_gap(&v1, compare_scanned(&v1, &t_dst, &mirror_cmp()))
        .into_iter()
        .filter(|d| {
            !v1.entries
                .iter()
                .any(|(p, e)| e.kind == Kind::Dir && d.starts_with(&format!("{}: mtime differs:", show(p))))
        })
        .collect();
    assert!(
        d.is_empty(),
        "after the cut stream: DST is not v1 ({} differences):\n  {}",
        d.len(),
        fmt_diffs(&d)
    );
    assert_dirty(&dst, "after the cut stream");
    assert_ne!(
        record_field(&dst, "stream_target").as_deref(),
        Some(v2_target.as_str()),
        "a cut stream recorded DST as its target"
    );

    // A lock held by another process (as a `mirror` takes it: flock on DST's root) is busy too.
    let fd = rustix::fs::open(
        &dst,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    rustix::fs::flock(&fd, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
    let before_stat = stat_tree(&dst).unwrap();
    let r = run_one(
        &Who::me(),
        &[
            "receive".as_ref(),
            "-q".as_ref(),
            "-i".as_ref(),
            file.as_os_str(),
            dst.as_os_str(),
        ],
        None,
    );
    expect_code(&r, 4, "receive into a DST flock'ed by the test");
    assert_eq!(
        stat_tree(&dst).unwrap(),
        before_stat,
        "busy receive modified DST (stat)"
    );
    drop(fd);

    // And the whole stream then applies.
    let r = run_one(
        &Who::me(),
        &[
            "receive".as_ref(),
            "-q".as_ref(),
            "-i".as_ref(),
            file.as_os_str(),
            dst.as_os_str(),
        ],
        None,
    );
    expect_code(&r, 0, "v2 receive after the busy one");
    assert_equal(&v2, &dst, &mirror_cmp(), "v2", &log);
    assert_clean_for(&dst, &v2_target, "v2");
}

// ---------------------------------------------------------------------------
// 6. Terminals.

fn open_pty() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).expect("openpt");
    grantpt(&master).expect("grantpt");
    unlockpt(&master).expect("unlockpt");
    let name = ptsname(&master, Vec::new()).expect("ptsname");
    let slave = rustix::fs::open(
        name.as_c_str(),
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .expect("open the pty slave");
    (master, slave)
}

/// What is waiting on the pty master (non-blocking).
fn drain(master: &std::os::fd::OwnedFd) -> Vec<u8> {
    rustix::fs::fcntl_setfl(master, rustix::fs::OFlags::NONBLOCK).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = rustix::io::read(master, &mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

#[test]
fn send_to_a_terminal_and_receive_from_a_terminal_are_refused() {
    let tmp = scratch("stream-tty");
    let src = tmp.path().join("src");
    put(&src, "f", b"data that must not reach a terminal\n");
    // send with stdout a terminal.
    {
        let (master, slave) = open_pty();
        let (f, e) = err_file();
        let c = Command::new(bin())
            .arg("send")
            .arg(&src)
            .stdin(Stdio::null())
            .stdout(Stdio::from(slave))
            .stderr(e)
            .spawn()
            .unwrap();
        let mut kids = vec![("send", c)];
        let code = wait_all(&mut kids, "send to a terminal", DEADLINE)[0];
        let r = Ran {
            code,
            stderr: read_back(f),
        };
        expect_code(&r, 2, "send with stdout a terminal");
        let got = drain(&master);
        assert!(
            !got.windows(4).any(|w| w == b"\x89RSY"),
            "send wrote a stream to the terminal ({} bytes)",
            got.len()
        );
    }
    // receive with stdin a terminal.
    {
        let (_master, slave) = open_pty();
        let dst = tmp.path().join("dst");
        let (f, e) = err_file();
        let c = Command::new(bin())
            .arg("receive")
            .arg(&dst)
            .stdin(Stdio::from(slave))
            .stdout(Stdio::null())
            .stderr(e)
            .spawn()
            .unwrap();
        let mut kids = vec![("receive", c)];
        let code = wait_all(&mut kids, "receive from a terminal", DEADLINE)[0];
        let r = Ran {
            code,
            stderr: read_back(f),
        };
        expect_code(&r, 2, "receive with stdin a terminal");
        assert!(
            !dst.exists(),
            "a receive refused as a usage error (terminal on stdin) still created DST"
        );
    }
}

// ---------------------------------------------------------------------------
// 7. Without root.

/// Remove every xattr outside `user.` and `system.posix_acl_*` (the unprivileged user could not
/// read them) from every entry below `root`.
fn strip_privileged_xattrs(root: &Path) {
    let t = scan_tree(root, false).unwrap();
    for (p, e) in &t.entries {
        for k in e.xattrs.keys() {
            if !(k.starts_with(b"user.") || k.starts_with(b"system.posix_acl_")) {
                let path = if p == b"." {
                    root.to_path_buf()
                } else {
                    bpath(root, p)
                };
                match rustix::fs::lremovexattr(&path, k.as_slice()) {
                    // Gone already with another name of the same inode (a hardlink).
                    Ok(()) | Err(rustix::io::Errno::NODATA) => {}
                    Err(e) => panic!("{}: remove {}: {e}", path.display(), String::from_utf8_lossy(k)),
                }
            }
        }
    }
}

#[test]
fn round_trip_as_an_unprivileged_user() {
    let root = is_root();
    if root && !have_tool("setpriv") {
        skip_or_fail("setpriv (util-linux) is needed to run send and receive as uid 65534");
        return;
    }
    let tmp = scratch("stream-nobody");
    // As root: uid 65534 runs a private copy of the binary. Without root: this user.
    let who = if root {
        Who::nobody(&nobody_exe(tmp.path()))
    } else {
        Who::me()
    };
    let src = tmp.path().join("src");
    gen_tree(
        &src,
        0x7002,
        &GenOpts {
            deep: false,
            specials: false,
            owners: false,
            ..gen_opts()
        },
    )
    .unwrap();
    // Make it a tree the user owns and can read: owner 65534 everywhere (as root), no trusted.*
    // xattrs, owner-readable files and owner-listable directories; two fifos (no devices).
    mknod(&src.join("fifo-1"), rustix::fs::FileType::Fifo, 0o640, 0);
    mknod(&src.join("empty/fifo-2"), rustix::fs::FileType::Fifo, 0o600, 0);
    if root {
        strip_privileged_xattrs(&src);
        chown_r(&src, 65534, 65534);
    }
    let st = Command::new("chmod")
        .arg("-R")
        .arg("u+rwX")
        .arg(&src)
        .status()
        .expect("run chmod");
    assert!(st.success(), "chmod -R u+rwX");
    freeze_atimes(&src);
    let before = scan_tree(&src, true).unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let uid = rustix::process::geteuid().as_raw();
    let gid = rustix::process::getegid().as_raw();
    let (uid, gid) = if root { (65534, 65534) } else { (uid, gid) };
    lchown(&out, uid, gid);
    for engine in ["uring", "sync"] {
        let what = format!("as uid {uid} --engine {engine}");
        let dst = out.join(format!("dst-{engine}"));
        let stream = out.join(format!("stream-{engine}"));
        let p = pipeline(
            &who,
            &["-q", "--engine", engine],
            &src,
            &who,
            &["-q"],
            &dst,
            Some(&stream),
        );
        expect_code(&p.send, 0, &format!("{what}: send"));
        expect_code(&p.recv, 0, &format!("{what}: receive"));
        let cmp = CompareOpts {
            owner: false,
            ..mirror_cmp()
        };
        assert_src_unchanged(&before, &src, &what);
        assert_equal(&before, &dst, &cmp, &what, &[]);
        let m = std::fs::symlink_metadata(&dst).unwrap();
        assert_eq!((m.uid(), m.gid()), (uid, gid), "{what}: DST's owner");
        let target = header_target(&dump_ok(&stream, &what), &what);
        assert_clean_for(&dst, &target, &what);
    }
}

// ---------------------------------------------------------------------------
// 8. --drop-privileged.

/// A file capability: VFS_CAP_REVISION_2 with the effective flag, CAP_NET_BIND_SERVICE permitted.
fn cap_value() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&0x0200_0001u32.to_le_bytes());
    v.extend_from_slice(&(1u32 << 10).to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v
}

#[test]
fn drop_privileged_applies_no_owners_setid_devices_or_privileged_xattrs() {
    if !is_root() {
        skip_or_fail("--drop-privileged: the fixture (owners, devices, trusted.*) needs root");
        return;
    }
    let tmp = scratch("stream-drop");
    let src = tmp.path().join("src");
    let suid = put(&src, "bin/suid", b"#!/bin/sh\necho suid\n");
    chmod(&suid, 0o4755);
    let sgid = put(&src, "bin/sgid", b"sgid\n");
    chmod(&sgid, 0o2755);
    let both = put(&src, "bin/both", b"both\n");
    chmod(&both, 0o6711);
    let sticky = put(&src, "sticky-dir/f", b"in a sticky dir\n");
    chmod(sticky.parent().unwrap(), 0o1777);
    let sgid_dir = put(&src, "sgid-dir/inner", b"in a setgid dir\n");
    chmod(sgid_dir.parent().unwrap(), 0o2775);
    let owned = put(&src, "owned-1234", b"owned by 1234\n");
    lchown(&owned, 1234, 1234);
    let owned_dir = src.join("owned-dir");
    put(&src, "owned-dir/x", b"x\n");
    lchown(&owned_dir, 1234, 5678);
    std::os::unix::fs::symlink("owned-1234", src.join("owned-link")).unwrap();
    lchown(&src.join("owned-link"), 1234, 1234);
    mknod(
        &src.join("dev-char"),
        rustix::fs::FileType::CharacterDevice,
        0o666,
        rustix::fs::makedev(1, 3),
    );
    mknod(
        &src.join("owned-dir/dev-block"),
        rustix::fs::FileType::BlockDevice,
        0o600,
        rustix::fs::makedev(7, 200),
    );
    mknod(&src.join("fifo"), rustix::fs::FileType::Fifo, 0o644, 0);
    lchown(&src.join("fifo"), 1234, 1234);
    let tx = put(&src, "tx", b"trusted and user xattrs\n");
    setx(&tx, "trusted.x", b"secret");
    setx(&tx, "user.keep", b"kept");
    setx(&src.join("owned-dir"), "trusted.dir", b"t");
    setx(&src.join("owned-dir"), "user.dir", b"u");
    let capf = put(&src, "bin/cap", b"capable\n");
    chmod(&capf, 0o755);
    setx(&capf, "security.capability", &cap_value());
    let aclf = put(&src, "acl-file", b"acl\n");
    chmod(&aclf, 0o640);
    setx(&aclf, "system.posix_acl_access", &common::gen::sample_acl());
    freeze_atimes(&src);
    let before = scan_tree(&src, true).unwrap();

    // Control: without the flag, as root, the tree round-trips exactly.
    let dst0 = tmp.path().join("dst-exact");
    let p = pipeline(&Who::me(), &["-q"], &src, &Who::me(), &["-q"], &dst0, None);
    expect_code(&p.send, 0, "control send");
    expect_code(&p.recv, 0, "control receive");
    assert_equal(
        &before,
        &dst0,
        &mirror_cmp(),
        "control (no --drop-privileged)",
        &[],
    );

    // Expected DST: SRC's scan without devices, setuid/setgid bits, owners (root's), and
    // xattrs outside user.*.
    let mut exp = before.clone();
    exp.entries
        .retain(|_, e| !matches!(e.kind, Kind::Char | Kind::Block));
    for e in exp.entries.values_mut() {
        e.perm &= !0o6000;
        e.uid = 0;
        e.gid = 0;
        e.xattrs.retain(|k, _| k.starts_with(b"user."));
    }
    let dst = tmp.path().join("dst");
    let p = pipeline(
        &Who::me(),
        &["-q"],
        &src,
        &Who::me(),
        &["--drop-privileged"],
        &dst,
        None,
    );
    expect_code(&p.send, 0, "send");
    expect_code(
        &p.recv,
        3,
        "receive --drop-privileged (devices not made: incomplete)",
    );
    for dev in ["dev-char", "dev-block"] {
        assert!(
            p.recv.stderr.contains(dev),
            "{}",
            p.recv
                .describe(&format!("the device {dev} that was not made is not reported"))
        );
    }
    let d = compare_scanned(&exp, &scan_tree(&dst, true).unwrap(), &mirror_cmp());
    assert!(
        d.is_empty(),
        "--drop-privileged: DST is not SRC without owners, setid bits, devices and non-user \
         xattrs ({} differences):\n  {}",
        d.len(),
        fmt_diffs(&d)
    );
    assert_dirty(&dst, "--drop-privileged with devices dropped");
}

// ---------------------------------------------------------------------------
// 9. Unreadable entries: SKIPPED.

#[test]
fn unreadable_entries_are_skipped_and_dst_keeps_its_old_versions() {
    let root = is_root();
    if root && !have_tool("setpriv") {
        skip_or_fail("setpriv (util-linux) is needed to send as uid 65534");
        return;
    }
    let tmp = scratch("stream-skip");
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let who = if root {
        Who::nobody(&nobody_exe(tmp.path()))
    } else {
        Who::me()
    };
    let src = tmp.path().join("src");
    put(&src, "a/one", b"one, new\n");
    put(&src, "a/secret", b"new secret\n");
    put(&src, "a/z-after", b"after the secret\n");
    put(&src, "private/inside", b"private, new\n");
    put(&src, "zz", &vec![7u8; 300_000]);
    if root {
        chown_r(&src, 65534, 65534);
        lchown(&src.join("a/secret"), 0, 0);
        chmod(&src.join("a/secret"), 0o600);
        lchown(&src.join("private"), 0, 0);
        chmod(&src.join("private"), 0o700);
        lchown(&work, 65534, 65534);
    }
    freeze_atimes(&src);
    let before = scan_tree(&src, true).unwrap();
    // Without root, the sender is this user: the entries become unreadable only now (the
    // oracle's scan above needed to read them), and readable again at the end.
    struct Restore(Option<PathBuf>);
    impl Drop for Restore {
        fn drop(&mut self) {
            if let Some(src) = &self.0 {
                let _ =
                    std::fs::set_permissions(src.join("a/secret"), std::fs::Permissions::from_mode(0o644));
                let _ = std::fs::set_permissions(src.join("private"), std::fs::Permissions::from_mode(0o755));
            }
        }
    }
    let _restore = if root {
        Restore(None)
    } else {
        chmod(&src.join("a/secret"), 0o000);
        chmod(&src.join("private"), 0o000);
        Restore(Some(src.clone()))
    };

    let stream = work.join("stream");
    let r = run_one(
        &who,
        &[
            "send".as_ref(),
            "-o".as_ref(),
            stream.as_os_str(),
            src.as_os_str(),
        ],
        None,
    );
    expect_code(&r, 3, "send of a tree with unreadable entries");
    let d = dump_ok(&stream, "stream with SKIPPED records");
    for name in ["secret", "private"] {
        assert!(
            d.lines()
                .any(|l| line_type(l) == "SKIPPED" && l.contains(&format!("name={name} "))),
            "no SKIPPED record for {name}:\n{d}"
        );
    }

    // DST with old versions of everything.
    let dst = tmp.path().join("dst");
    put(&dst, "a/one", b"one, old\n");
    put(&dst, "a/secret", b"old secret\n");
    put(&dst, "private/old", b"private, old\n");
    put(&dst, "extra", b"extra\n");
    let old_secret_ino = std::fs::metadata(dst.join("a/secret")).unwrap().ino();
    let old_private = scan_tree(&dst.join("private"), true).unwrap();
    let r = run_one(
        &Who::me(),
        &[
            "receive".as_ref(),
            "-i".as_ref(),
            stream.as_os_str(),
            dst.as_os_str(),
        ],
        None,
    );
    expect_code(&r, 3, "receive of a stream with SKIPPED records");
    assert_eq!(
        std::fs::read(dst.join("a/secret")).unwrap(),
        b"old secret\n",
        "a/secret: DST's old version was not kept"
    );
    assert_eq!(
        std::fs::metadata(dst.join("a/secret")).unwrap().ino(),
        old_secret_ino,
        "a/secret was replaced"
    );
    let d = compare_scanned(
        &old_private,
        &scan_tree(&dst.join("private"), true).unwrap(),
        &CompareOpts::default(),
    );
    assert!(
        d.is_empty(),
        "private/: DST's old directory was not kept:\n  {}",
        fmt_diffs(&d)
    );
    let cmp = CompareOpts {
        ignore: vec![b"a/secret".to_vec(), b"private".to_vec()],
        ..mirror_cmp()
    };
    assert_equal(&before, &dst, &cmp, "the rest of DST after SKIPPED entries", &[]);
    assert_dirty(&dst, "after a receive with SKIPPED entries");

    // Into an empty DST: the skipped names are absent, the rest is there.
    let dst2 = tmp.path().join("dst2");
    let r = run_one(
        &Who::me(),
        &[
            "receive".as_ref(),
            "-q".as_ref(),
            "-i".as_ref(),
            stream.as_os_str(),
            dst2.as_os_str(),
        ],
        None,
    );
    expect_code(&r, 3, "receive of a stream with SKIPPED records into a new DST");
    assert!(!dst2.join("a/secret").exists() && !dst2.join("private").exists());
    assert_equal(&before, &dst2, &cmp, "new DST after SKIPPED entries", &[]);
    assert_dirty(&dst2, "new DST after SKIPPED entries");
}

// ---------------------------------------------------------------------------
// 10. btrfs.

#[test]
fn btrfs_subvolumes_round_trip_and_receive_into_btrfs() {
    let Some(fs) = mount_or_skip("btrfs", 768) else {
        return;
    };
    let vol = fs.path().join("vol");
    subvolume_create(&vol);
    gen_src(
        &vol,
        0xb7f5,
        &GenOpts {
            dirs: 12,
            files: 40,
            max_file: 512 << 10,
            ..GenOpts::default()
        },
    );
    // A nested subvolume with files (another st_dev below SRC).
    let inner = vol.join("inner-subvol");
    subvolume_create(&inner);
    put(&inner, "in/file", &b"inside a nested subvolume\n".repeat(100));
    put(&inner, "top", b"top\n");
    freeze_atimes(&inner);
    let snap = fs.path().join("snap");
    snapshot_ro(&vol, &snap);
    let ext = scratch("stream-btrfs-ext");
    let dst_sub = fs.path().join("dst-subvol");
    subvolume_create(&dst_sub);
    let cases: Vec<(&str, PathBuf, PathBuf)> = vec![
        ("live subvolume -> ext4 DST", vol.clone(), ext.path().join("dst")),
        (
            "live subvolume -> btrfs directory DST",
            vol.clone(),
            fs.path().join("dst-dir"),
        ),
        (
            "read-only snapshot -> btrfs subvolume DST",
            snap.clone(),
            dst_sub.clone(),
        ),
    ];
    for (what, src, dst) in &cases {
        let before = scan_tree(src, true).unwrap();
        // In a snapshot, a nested subvolume is an empty placeholder directory (inode 2) whose
        // times btrfs reports as "now" at every stat: its mtime cannot be compared. It must
        // still come out as an empty directory.
        let placeholder = src == &snap;
        let cmp = if placeholder {
            CompareOpts {
                ignore: vec![b"inner-subvol".to_vec()],
                ..mirror_cmp()
            }
        } else {
            mirror_cmp()
        };
        let stream = ext.path().join("stream");
        let p = pipeline(&Who::me(), &["-q"], src, &Who::me(), &["-q"], dst, Some(&stream));
        expect_code(&p.send, 0, &format!("{what}: send"));
        expect_code(&p.recv, 0, &format!("{what}: receive"));
        assert_equal(&before, dst, &cmp, what, &[]);
        if placeholder {
            let t = scan_tree(&dst.join("inner-subvol"), false).unwrap();
            assert_eq!(
                t.entries.len(),
                1,
                "{what}: the placeholder is not an empty directory"
            );
        }
        let target = header_target(&dump_ok(&stream, what), what);
        assert_clean_for(dst, &target, what);
    }
    // A generation into the btrfs DST: the nested subvolume deleted (the mutator's hardlinks
    // and renames cannot cross subvolumes), then random mutations.
    let out = Command::new("btrfs")
        .args(["subvolume", "delete"])
        .arg(&inner)
        .output()
        .unwrap();
    assert!(out.status.success(), "btrfs subvolume delete: {}", describe(&out));
    let log = mutator::mutate(&vol, 0xb7f6, 30).unwrap();
    let before = scan_tree(&vol, true).unwrap();
    let dst = fs.path().join("dst-dir");
    let p = pipeline(
        &Who::me(),
        &["-q", "--engine", "sync"],
        &vol,
        &Who::me(),
        &["-q"],
        &dst,
        None,
    );
    expect_code(&p.send, 0, "generation: send");
    expect_code(&p.recv, 0, "generation: receive");
    assert_equal(&before, &dst, &mirror_cmp(), "btrfs generation", &log);
    assert_eq!(record_field(&dst, "state").as_deref(), Some("clean"));
}

// ---------------------------------------------------------------------------
// Beyond the list: a damaged or cut stream publishes nothing; --bwlimit.

/// Byte offsets of the records of a given type, from the dump (second field).
fn offsets_of(d: &str, ty: &str) -> Vec<usize> {
    d.lines()
        .filter(|l| line_type(l) == ty)
        .map(|l| l.split('\t').nth(1).unwrap().parse().unwrap())
        .collect()
}

#[test]
fn damaged_or_cut_stream_is_refused_and_dst_keeps_its_old_entries() {
    let tmp = scratch("stream-damaged");
    let src = tmp.path().join("src");
    gen_src(
        &src,
        0xda,
        &GenOpts {
            files: 30,
            deep: false,
            max_file: 256 << 10,
            ..GenOpts::default()
        },
    );
    let dst = tmp.path().join("dst");
    let v1 = scan_tree(&src, true).unwrap();
    let p = pipeline(&Who::me(), &["-q"], &src, &Who::me(), &["-q"], &dst, None);
    expect_code(&p.send, 0, "v1 send");
    expect_code(&p.recv, 0, "v1 receive");
    assert_equal(&v1, &dst, &mirror_cmp(), "v1", &[]);
    let v1_target = record_field(&dst, "stream_target");
    let log = mutator::mutate(&src, 0xda, 30).unwrap();
    let v2 = scan_tree(&src, true).unwrap();
    let good = tmp.path().join("v2.stream");
    let r = run_one(
        &Who::me(),
        &[
            "send".as_ref(),
            "-q".as_ref(),
            "-o".as_ref(),
            good.as_os_str(),
            src.as_os_str(),
        ],
        None,
    );
    expect_code(&r, 0, "v2 send");
    let d = dump_ok(&good, "v2");
    assert_eq!(
        check_checkpoints_outside_files(&d, "v2"),
        0,
        "fixture: no CHECKPOINT before END"
    );
    let bytes = std::fs::read(&good).unwrap();
    let data = offsets_of(&d, "DATA");
    let end = *offsets_of(&d, "END").first().expect("END");
    assert!(data.len() > 3, "fixture: few DATA records");
    // One bit of file data flipped (its payload CRC no longer matches), one flipped in the END
    // record's chain, and the stream cut short at several places.
    let mut flipped = bytes.clone();
    flipped[data[data.len() / 2] + 24 + 8] ^= 0x10;
    let mut bad_end = bytes.clone();
    let n = bad_end.len();
    bad_end[n - 5] ^= 0x01;
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("a DATA bit flipped".into(), flipped),
        ("the END chain damaged".into(), bad_end),
    ];
    for cut in [200, bytes.len() / 3, end, bytes.len() - 1] {
        cases.push((
            format!("cut at byte {cut} of {}", bytes.len()),
            bytes[..cut].to_vec(),
        ));
    }
    for (what, stream) in &cases {
        let file = tmp.path().join("bad.stream");
        std::fs::write(&file, stream).unwrap();
        let r = run_one(
            &Who::me(),
            &["receive".as_ref(), "-q".as_ref(), dst.as_os_str()],
            Some(&file),
        );
        expect_code(&r, 1, what);
        // DST is still v1 (directory mtimes aside, as in the busy test: staging touches them).
        let t_dst = scan_tree(&dst, true).unwrap();
        let diffs: Vec<String> = without_gap(&v1, compare_scanned(&v1, &t_dst, &mirror_cmp()))
            .into_iter()
            .filter(|x| {
                !v1.entries.iter().any(|(p, e)| {
                    e.kind == Kind::Dir && x.starts_with(&format!("{}: mtime differs:", show(p)))
                })
            })
            .collect();
        assert!(
            diffs.is_empty(),
            "{what}: DST is not v1 after a refused stream ({} differences):\n  {}",
            diffs.len(),
            fmt_diffs(&diffs)
        );
        assert_ne!(
            record_field(&dst, "state").as_deref(),
            Some("clean"),
            "{what}: a refused stream left DST recorded clean"
        );
        let (code, _, _) = dump(&file);
        assert_eq!(code, Some(1), "{what}: dump of the damaged stream");
    }
    // The good stream then applies.
    let r = run_one(
        &Who::me(),
        &[
            "receive".as_ref(),
            "-q".as_ref(),
            "-i".as_ref(),
            good.as_os_str(),
            dst.as_os_str(),
        ],
        None,
    );
    expect_code(&r, 0, "v2 receive");
    assert_equal(&v2, &dst, &mirror_cmp(), "v2", &log);
    assert_ne!(record_field(&dst, "stream_target"), v1_target);
}

#[test]
fn bwlimit_slows_the_stream_and_it_still_round_trips() {
    let tmp = scratch("stream-bwlimit");
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    // 8 MiB of incompressible data.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut buf = vec![0u8; 8 << 20];
    for c in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes());
    }
    std::fs::write(src.join("random"), &buf).unwrap();
    put(&src, "small", b"small\n");
    freeze_atimes(&src);
    let before = scan_tree(&src, true).unwrap();
    let dst = tmp.path().join("dst");
    let t = Instant::now();
    let p = pipeline(
        &Who::me(),
        &["-q", "--bwlimit", "4M"],
        &src,
        &Who::me(),
        &["-q"],
        &dst,
        None,
    );
    let took = t.elapsed();
    expect_code(&p.send, 0, "send --bwlimit 4M");
    expect_code(&p.recv, 0, "receive");
    assert_equal(&before, &dst, &mirror_cmp(), "--bwlimit 4M", &[]);
    // 8 MiB at 4 MiB/s is 2 s; generous: at least 1.4 s.
    assert!(
        took >= Duration::from_millis(1400),
        "send --bwlimit 4M of 8 MiB took only {took:?}"
    );
}
