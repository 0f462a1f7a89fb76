//! Remote mirrors through a real sshd on 127.0.0.1 (`common::sshd`: its own host and user
//! keys, a high port): `ringsync mirror SRC user@127.0.0.1:DST` (push) and `ringsync mirror
//! user@127.0.0.1:SRC DST` (pull), as root and as an unprivileged user.
//!
//! - "DST is what SRC was" is decided by the independent oracle (`common::oracle`) on a scan
//!   of SRC taken before the run.
//! - Dropped links are made by killing the local `ssh` process (the remote shell) while the
//!   stream flows, after the receiving end stored a resume token: the run must exit 6, no file
//!   under a final name may differ from SRC's, and a rerun (or `--retries`) must converge.
//! - Errors: a missing remote binary, a remote that is not ringsync, one of another protocol
//!   version, an unwritable remote DST, a busy DST: one clear line each and their documented
//!   exit statuses (README, "Exit status").
//!
//! Needs root (sshd, a second user). A missing prerequisite prints `SKIPPED: <reason>` and
//! returns, unless the `CI` environment variable is set (then the test fails).

mod common;

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::oracle::{compare_scanned, scan_tree, Tree};
use common::sshd::Sshd;
use common::*;

/// `ringsync WORDS... -e RSH --remote-bin BIN` for the test sshd (stdin: nothing).
fn remote_cmd(s: &Sshd, words: &[&str]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args(words)
        .arg("-e")
        .arg(s.rsh())
        .arg("--remote-bin")
        .arg(s.remote_bin())
        .stdin(Stdio::null());
    cmd
}

/// Run `ringsync mirror -q -e RSH --remote-bin BIN EXTRA... SRC DST`.
fn mirror(s: &Sshd, extra: &[&OsStr], src: &OsStr, dst: &OsStr) -> Output {
    remote_cmd(s, &["mirror", "-q"])
        .args(extra)
        .arg(src)
        .arg(dst)
        .output()
        .expect("run ringsync mirror")
}

fn remote(user: &str, path: &Path) -> OsString {
    let mut s = OsString::from(format!("{user}@127.0.0.1:"));
    s.push(path);
    s
}

/// Run `ringsync mirror -e RSH --remote-bin FAKE EXTRA... FROM TO`, where FAKE is a shell
/// script (`body` after its shebang, the greeting line first) that the test sshd runs in place
/// of ringsync: a remote end that misbehaves on purpose.
fn with_fake_remote(s: &Sshd, name: &str, body: &str, extra: &[&str], from: &OsStr, to: &OsStr) -> Output {
    let fake = s.plain_dir().join(format!("{name}.sh"));
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\necho 'RINGSYNC-SERVE {} ringsync fake'\n{body}",
            ringsync::remote::PROTOCOL
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    Command::new(bin())
        .arg("mirror")
        .args(extra)
        .arg("-e")
        .arg(s.rsh())
        .arg("--remote-bin")
        .arg(&fake)
        .arg(from)
        .arg(to)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn diffs(before: &Tree, dst: &Path, opts: &CompareOpts) -> Vec<String> {
    let after = scan_tree(dst, true).unwrap();
    compare_scanned(before, &after, opts)
}

fn assert_exact(before: &Tree, dst: &Path, opts: &CompareOpts, what: &str) {
    let d = diffs(before, dst, opts);
    assert!(
        d.is_empty(),
        "{what}: DST differs from SRC:\n  {}",
        d.join("\n  ")
    );
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn tree(root: &Path, seed: u64, root_only: bool) {
    let opts = GenOpts {
        dirs: 12,
        files: 40,
        max_file: 256 << 10,
        // As the unprivileged user, the receiving end can make neither owners, devices nor
        // ACLs: the tree for that test has none (the comparison then skips owners).
        owners: root_only,
        specials: root_only,
        acls: root_only,
        ..GenOpts::default()
    };
    gen_tree(root, seed, &opts).unwrap();
}

fn need_root() -> bool {
    if !is_root() {
        skip_or_fail("remote mirror tests need root (sshd, a second user)");
        return false;
    }
    true
}

#[test]
fn push_then_pull_a_nasty_tree_as_root() {
    if !need_root() {
        return;
    }
    let Some(s) = Sshd::start_or_skip() else { return };
    let tmp = scratch("remote-root");
    let src = tmp.path().join("src");
    tree(&src, 0x7e_01, true);
    let before = scan_tree(&src, true).unwrap();
    let dst = tmp.path().join("dst");
    let o = mirror(&s, &[], src.as_os_str(), &remote(s.root_user(), &dst));
    assert_eq!(o.status.code(), Some(0), "push: {}", stderr(&o));
    assert_exact(&before, &dst, &mirror_cmp(), "push as root");

    // Changes in SRC, pushed again: DST follows (a deleted file goes, a new one comes).
    let gone = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_file())
        .expect("a file at SRC's top");
    std::fs::remove_file(&gone).unwrap();
    std::fs::write(src.join("new-after-first-push"), b"new\n").unwrap();
    let before2 = scan_tree(&src, true).unwrap();
    let o = mirror(&s, &[], src.as_os_str(), &remote(s.root_user(), &dst));
    assert_eq!(o.status.code(), Some(0), "second push: {}", stderr(&o));
    assert_exact(&before2, &dst, &mirror_cmp(), "second push as root");

    // Pull it back into a fresh directory.
    let back = tmp.path().join("back");
    let o = mirror(&s, &[], &remote(s.root_user(), &dst), back.as_os_str());
    assert_eq!(o.status.code(), Some(0), "pull: {}", stderr(&o));
    assert_exact(&before2, &back, &mirror_cmp(), "pull as root");
}

#[test]
fn push_and_pull_as_an_unprivileged_user() {
    if !need_root() {
        return;
    }
    let Some(s) = Sshd::start_or_skip() else { return };
    let tmp = scratch("remote-plain");
    // The unprivileged end reads SRC when pulling: every user may traverse the scratch dir.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let src = tmp.path().join("src");
    tree(&src, 0x7e_02, false);
    // The unprivileged end must be able to read SRC when pulling: make it world-readable.
    sh("chmod -R a+rX .", &src);
    let mut before = scan_tree(&src, true).unwrap();
    // An unprivileged receiving end holds the user.* xattrs only: trusted.* and security.*
    // need root (as with rsync -X run as a user).
    for e in before.entries.values_mut() {
        e.xattrs.retain(|k, _| k.starts_with(b"user."));
    }
    let dst = s.plain_dir().join("dst");
    let opts = CompareOpts {
        owner: false,
        ..mirror_cmp()
    };
    let o = mirror(&s, &[], src.as_os_str(), &remote(s.plain_user(), &dst));
    assert_eq!(
        o.status.code(),
        Some(0),
        "push as {}: {}",
        s.plain_user(),
        stderr(&o)
    );
    assert_exact(&before, &dst, &opts, "push as the unprivileged user");
    // Written by that user, not by root.
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&dst).unwrap());
    assert_ne!(uid, 0, "DST made by the unprivileged remote end belongs to root");

    // Again with nothing changed: the listing of a DST whose owners and root-only xattrs could
    // not be set must not make every entry travel again.
    let rsh = counting_rsh(&s, tmp.path());
    let o = mirror_via(&rsh, &s, src.as_os_str(), &remote(s.plain_user(), &dst));
    assert_eq!(o.status.code(), Some(0), "no-change push: {}", stderr(&o));
    let (sent, _) = wire(tmp.path());
    assert!(sent < 4096, "a push with nothing changed sent {sent} bytes");
    // A change, pushed: only it travels.
    std::fs::write(src.join("added-later"), vec![b'x'; 100_000]).unwrap();
    sh("chmod a+r added-later", &src);
    let mut now = scan_tree(&src, true).unwrap();
    for e in now.entries.values_mut() {
        e.xattrs.retain(|k, _| k.starts_with(b"user."));
    }
    let o = mirror_via(&rsh, &s, src.as_os_str(), &remote(s.plain_user(), &dst));
    assert_eq!(o.status.code(), Some(0), "second push: {}", stderr(&o));
    let (sent, _) = wire(tmp.path());
    assert!(
        sent < 100_000 + 8192,
        "a push of one new 100 kB file sent {sent} bytes"
    );
    assert_exact(&now, &dst, &opts, "second push as the unprivileged user");
    before = now;

    let back = tmp.path().join("back");
    let o = mirror(&s, &[], &remote(s.plain_user(), &src), back.as_os_str());
    assert_eq!(
        o.status.code(),
        Some(0),
        "pull from {}: {}",
        s.plain_user(),
        stderr(&o)
    );
    assert_exact(&before, &back, &opts, "pull as the unprivileged user");
}

/// Files of 24 MiB each, so that the stream has checkpoints (every 64 MiB) to resume from.
fn big_tree(root: &Path, files: usize) {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0xd40b);
    std::fs::create_dir_all(root.join("d")).unwrap();
    for i in 0..files {
        let mut data = vec![0u8; 24 << 20];
        rng.fill_bytes(&mut data);
        std::fs::write(root.join(format!("d/f{i:02}")), &data).unwrap();
    }
    std::fs::write(root.join("small"), b"small\n").unwrap();
    freeze_atimes(root);
}

/// The `ssh` child of process `pid`, once it has one.
fn ssh_child(pid: u32) -> Option<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    for t in tasks.flatten() {
        let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        for k in kids.split_whitespace() {
            let comm = std::fs::read_to_string(format!("/proc/{k}/comm")).unwrap_or_default();
            if comm.trim() == "ssh" {
                return k.parse().ok();
            }
        }
    }
    None
}

/// Run a mirror from `src` to `dst` (one of them remote), and kill its ssh once `token_dir`
/// (DST, on this machine either way) holds a resume token: the receiving end published a
/// checkpoint. Returns the mirror's output.
fn mirror_and_cut(s: &Sshd, extra: &[&OsStr], src: &OsStr, dst: &OsStr, token_dir: &Path) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(["mirror", "-q", "-e"])
        .arg(s.rsh())
        .arg("--remote-bin")
        .arg(s.remote_bin());
    // Slow enough to cut in the middle: 60 MB/s.
    cmd.args(["--bwlimit", "60M"]).args(extra).arg(src).arg(dst);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child: Child = cmd.spawn().unwrap();
    let t0 = Instant::now();
    loop {
        let token = Command::new(bin())
            .args(["receive", "--token"])
            .arg(token_dir)
            .output()
            .unwrap();
        if token.status.success() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no resume token in DST after 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let ssh = ssh_child(child.id()).expect("the ssh process of the mirror");
    let _ = Command::new("kill").args(["-9", &ssh.to_string()]).status();
    child.wait_with_output().unwrap()
}

fn push_and_cut(s: &Sshd, extra: &[&OsStr], src: &Path, dst: &Path) -> Output {
    mirror_and_cut(s, extra, src.as_os_str(), &remote(s.root_user(), dst), dst)
}

/// No file under a final name in DST differs from SRC's (torn or old-but-wrong).
fn assert_no_torn_file(before: &Tree, dst: &Path, what: &str) {
    let t = scan_tree(dst, true).unwrap();
    for (p, e) in &t.entries {
        if p.starts_with(b".ringsync") || p.is_empty() {
            continue;
        }
        if let Some(s) = before.entries.get(p) {
            if e.kind == Kind::File && s.kind == Kind::File {
                assert_eq!(e.hash, s.hash, "{what}: {} is torn", String::from_utf8_lossy(p));
            }
        }
    }
}

#[test]
fn a_dropped_link_exits_6_and_the_rerun_resumes() {
    if !need_root() {
        return;
    }
    let Some(s) = Sshd::start_or_skip() else { return };
    let tmp = scratch("remote-drop");
    let src = tmp.path().join("src");
    big_tree(&src, 8);
    let before = scan_tree(&src, true).unwrap();
    let dst = tmp.path().join("dst");
    let o = push_and_cut(&s, &[], &src, &dst);
    assert_eq!(o.status.code(), Some(6), "cut push: {}", stderr(&o));
    assert!(stderr(&o).contains("rerun"), "{}", stderr(&o));
    assert_no_torn_file(&before, &dst, "after the cut");
    // The rerun (not quiet: it says where it resumed and how much it sent).
    let o = remote_cmd(&s, &["mirror"])
        .arg(&src)
        .arg(remote(s.root_user(), &dst))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "rerun: {}", stderr(&o));
    assert_exact(&before, &dst, &mirror_cmp(), "rerun after a dropped link");
    // Bytes sent again: at most what the full stream holds after the token's checkpoint, plus
    // the frames of the records before it (a resumed stream repeats those without data). The
    // full stream's size comes from a plain `send -o`.
    let err = stderr(&o);
    let (at, sent) = err
        .lines()
        .find_map(|l| {
            let rest = l.split_once("resumed the interrupted stream at its byte ")?.1;
            let (at, rest) = rest.split_once(": ")?;
            let sent = rest.split_once(" bytes sent this time")?.0;
            Some((at.parse::<u64>().ok()?, sent.parse::<u64>().ok()?))
        })
        .unwrap_or_else(|| panic!("the rerun did not resume: {err}"));
    let full = tmp.path().join("full.stream");
    let r = Command::new(bin())
        .args(["send", "-q", "-o"])
        .arg(&full)
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        r.status.success(),
        "send -o: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    let total = std::fs::metadata(&full).unwrap().len();
    note(&format!(
        "dropped link: resumed at byte {at} of a {total}-byte stream, sent {sent} bytes again ({} after the checkpoint)",
        total - at
    ));
    assert!(
        sent <= total - at + (1 << 20),
        "the rerun sent {sent} bytes; the stream after the checkpoint at {at} is {} bytes",
        total - at
    );

    // With --retries the same cut heals within the run.
    let dst2 = tmp.path().join("dst2");
    let retries = OsString::from("--retries");
    let two = OsString::from("2");
    let o = push_and_cut(&s, &[&retries, &two], &src, &dst2);
    assert_eq!(o.status.code(), Some(0), "push with --retries 2: {}", stderr(&o));
    assert!(stderr(&o).contains("retry 1 of 2"), "{}", stderr(&o));
    assert_exact(&before, &dst2, &mirror_cmp(), "--retries after a dropped link");
}

/// The same cut while pulling: the local receive stops at the missing bytes, exit 6, and
/// the rerun (the local DST's token passed to the remote sender) converges.
#[test]
fn a_dropped_link_while_pulling_exits_6_and_the_rerun_resumes() {
    if !need_root() {
        return;
    }
    let Some(s) = Sshd::start_or_skip() else { return };
    let tmp = scratch("remote-drop-pull");
    let src = tmp.path().join("src");
    big_tree(&src, 8);
    let before = scan_tree(&src, true).unwrap();
    let dst = tmp.path().join("dst");
    let from = remote(s.root_user(), &src);
    let o = mirror_and_cut(&s, &[], &from, dst.as_os_str(), &dst);
    assert_eq!(o.status.code(), Some(6), "cut pull: {}", stderr(&o));
    assert_no_torn_file(&before, &dst, "after the cut pull");
    let o = mirror(&s, &[], &from, dst.as_os_str());
    assert_eq!(o.status.code(), Some(0), "pull rerun: {}", stderr(&o));
    assert_exact(&before, &dst, &mirror_cmp(), "pull rerun after a dropped link");
}

#[test]
fn a_busy_dst_exits_4_and_is_left_alone() {
    if !need_root() {
        return;
    }
    let Some(s) = Sshd::start_or_skip() else { return };
    let tmp = scratch("remote-busy");
    let src = tmp.path().join("src");
    tree(&src, 0x7e_03, true);
    let dst = tmp.path().join("dst");
    // A receive holding DST's lock, waiting for a stream that does not come.
    let mut holder = Command::new(bin())
        .args(["receive", "-q"])
        .arg(&dst)
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !dst.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the holder did not make DST"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    let o = mirror(&s, &[], src.as_os_str(), &remote(s.root_user(), &dst));
    // And a pull into it (the busy DST on this side).
    let p = mirror(&s, &[], &remote(s.root_user(), &src), dst.as_os_str());
    drop(holder.stdin.take());
    let _ = holder.wait();
    assert_eq!(o.status.code(), Some(4), "push into a busy DST: {}", stderr(&o));
    assert!(stderr(&o).contains("busy"), "{}", stderr(&o));
    assert_eq!(p.status.code(), Some(4), "pull into a busy DST: {}", stderr(&p));
    assert!(stderr(&p).contains("busy"), "{}", stderr(&p));
    let left: Vec<_> = std::fs::read_dir(&dst)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| !n.as_encoded_bytes().starts_with(b".ringsync"))
        .collect();
    assert!(left.is_empty(), "the busy push wrote into DST: {left:?}");
}

#[test]
fn remote_errors_are_one_clear_line_with_their_exit_status() {
    if !need_root() {
        return;
    }
    let Some(s) = Sshd::start_or_skip() else { return };
    let tmp = scratch("remote-errors");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    let dst = remote(s.root_user(), &tmp.path().join("dst"));
    let run = |bin: &Path| {
        Command::new(common::bin())
            .args(["mirror", "-q", "-e"])
            .arg(s.rsh())
            .arg("--remote-bin")
            .arg(bin)
            .arg(&src)
            .arg(&dst)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let lines = |o: &Output| stderr(o).lines().filter(|l| l.starts_with("ringsync:")).count();

    // No such binary.
    let o = run(Path::new("/nonexistent/ringsync"));
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    assert!(stderr(&o).contains("--remote-bin"), "{}", stderr(&o));
    assert_eq!(lines(&o), 1, "{}", stderr(&o));

    // Not ringsync, and ringsync of another protocol (scripts every user can run).
    let fake = |name: &str, body: &str| -> PathBuf {
        let p = s.plain_dir().join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    };
    let o = run(&fake("not-ringsync", "echo hello from a shell; cat > /dev/null"));
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    assert!(stderr(&o).contains("not a ringsync"), "{}", stderr(&o));
    assert_eq!(lines(&o), 1, "{}", stderr(&o));
    let o = run(&fake(
        "other-version",
        "echo 'RINGSYNC-SERVE 99 ringsync 9.9.9'; cat > /dev/null",
    ));
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    assert!(stderr(&o).contains("protocol 99"), "{}", stderr(&o));
    assert_eq!(lines(&o), 1, "{}", stderr(&o));

    // An unwritable remote DST (the unprivileged user under root's private directory).
    let private = tmp.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let target = private.join("dst");
    let o = mirror(&s, &[], src.as_os_str(), &remote(s.plain_user(), &target));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&*target.to_string_lossy()),
        "the message names the remote DST: {}",
        stderr(&o)
    );
    assert_eq!(lines(&o), 1, "{}", stderr(&o));
    assert!(!target.exists());

    // `host:` alone (the remote home, which a mirror would empty of everything else): refused.
    let o = mirror(&s, &[], src.as_os_str(), OsStr::new("root@127.0.0.1:"));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("home directory"), "{}", stderr(&o));

    // A remote side with an option it does not support yet: refused, nothing run.
    let o = mirror(
        &s,
        &[OsStr::new("--threads"), OsStr::new("2")],
        src.as_os_str(),
        &dst,
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--threads"), "{}", stderr(&o));
    // --prev when pushing names a snapshot here, not on the remote host.
    let o = mirror(&s, &[OsStr::new("--prev"), &dst], src.as_os_str(), &dst);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--prev"), "{}", stderr(&o));
}

/// An rsh (for `-e`) that runs the test sshd's ssh and appends every byte going to the remote
/// end to `DIR/in`, every byte coming from it to `DIR/out`.
fn counting_rsh(s: &Sshd, dir: &Path) -> OsString {
    let script = dir.join("count-rsh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/bash\nset -o pipefail\ntee -a {d}/in | {rsh} \"$@\" | tee -a {d}/out\n",
            d = dir.display(),
            rsh = s.rsh()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script.into_os_string()
}

/// Bytes to and from the remote end since the last call (see [`counting_rsh`]).
fn wire(dir: &Path) -> (u64, u64) {
    let take = |n: &str| {
        let p = dir.join(n);
        let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        let _ = std::fs::remove_file(&p);
        len
    };
    (take("in"), take("out"))
}

fn mirror_via(rsh: &OsStr, s: &Sshd, src: &OsStr, dst: &OsStr) -> Output {
    Command::new(bin())
        .args(["mirror", "-q", "-e"])
        .arg(rsh)
        .arg("--remote-bin")
        .arg(s.remote_bin())
        .arg(src)
        .arg(dst)
        .stdin(Stdio::null())
        .output()
        .expect("run ringsync mirror")
}

/// File bytes a mirror from `old` to `new` must carry: files that are new, or whose content,
/// type or hardlink count changed (a file whose group changed is sent again).
fn changed_file_bytes(old: &Tree, new: &Tree) -> u64 {
    new.entries
        .iter()
        .filter(|(p, e)| {
            e.kind == Kind::File
                && old
                    .entries
                    .get(*p)
                    .is_none_or(|o| o.kind != Kind::File || o.hash != e.hash || o.nlink != e.nlink)
        })
        .map(|(_, e)| e.size)
        .sum()
}

#[test]
fn push_and_pull_follow_mutations_over_generations_sending_only_changes() {
    if !need_root() {
        return;
    }
    let Some(s) = Sshd::start_or_skip() else { return };
    let tmp = scratch("remote-generations");
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    let back = tmp.path().join("back");
    let seed = 0x6e_4e;
    gen_tree(
        &src,
        seed,
        &GenOpts {
            dirs: 16,
            files: 50,
            max_file: 512 << 10,
            ..GenOpts::default()
        },
    )
    .unwrap();
    let rsh = counting_rsh(&s, tmp.path());
    let to = remote(s.root_user(), &dst);
    let from = remote(s.root_user(), &src);
    let mut prev = scan_tree(&src, true).unwrap();
    let o = mirror_via(&rsh, &s, src.as_os_str(), &to);
    assert_eq!(o.status.code(), Some(0), "first push: {}", stderr(&o));
    assert_exact(&prev, &dst, &mirror_cmp(), "first push");
    let (full, _) = wire(tmp.path());
    let o = mirror_via(&rsh, &s, &from, back.as_os_str());
    assert_eq!(o.status.code(), Some(0), "first pull: {}", stderr(&o));
    assert_exact(&prev, &back, &mirror_cmp(), "first pull");
    wire(tmp.path());

    let mut fails = Vec::new();
    for round in 0..4u64 {
        let log = common::mutate::mutate(&src, seed * 31 + round, 36).unwrap();
        let now = scan_tree(&src, true).unwrap();
        let what = format!("round {round} (mutations:\n  {})", log.join("\n  "));
        let o = mirror_via(&rsh, &s, src.as_os_str(), &to);
        if o.status.code() != Some(0) {
            fails.push(format!("{what}: push: {}", stderr(&o)));
        }
        let d = diffs(&now, &dst, &mirror_cmp());
        if !d.is_empty() {
            fails.push(format!("{what}: push: DST differs:\n  {}", d.join("\n  ")));
        }
        // What went to the remote end: the changed files' bytes and some framing per changed
        // entry, far from the full stream.
        let (sent, listing) = wire(tmp.path());
        let changed = changed_file_bytes(&prev, &now);
        let entries = compare_scanned(&prev, &now, &mirror_cmp()).len() as u64;
        let bound = changed + changed / 10 + 1024 * entries + (16 << 10);
        eprintln!(
            "round {round}: pushed {sent} bytes for {changed} changed file bytes, {entries} differences (full stream {full}); listing {listing} bytes"
        );
        if sent > bound {
            fails.push(format!(
                "{what}: push sent {sent} bytes, more than {bound} ({changed} changed file bytes, {entries} differences; the full stream is {full})"
            ));
        }
        let o = mirror_via(&rsh, &s, &from, back.as_os_str());
        if o.status.code() != Some(0) {
            fails.push(format!("{what}: pull: {}", stderr(&o)));
        }
        let d = diffs(&now, &back, &mirror_cmp());
        if !d.is_empty() {
            fails.push(format!("{what}: pull: DST differs:\n  {}", d.join("\n  ")));
        }
        let (listing, got) = wire(tmp.path());
        if got > bound {
            fails.push(format!(
                "{what}: pull received {got} bytes, more than {bound} (listing sent: {listing} bytes)"
            ));
        }
        prev = now;
    }
    assert!(fails.is_empty(), "{}", fails.join("\n\n"));
    // Nothing changed: a few records travel, and nothing in DST changes.
    let o = mirror_via(&rsh, &s, src.as_os_str(), &to);
    assert_eq!(o.status.code(), Some(0), "no-change push: {}", stderr(&o));
    let (sent, _) = wire(tmp.path());
    assert!(sent < 4096, "a push with nothing changed sent {sent} bytes");
    assert_exact(&prev, &dst, &mirror_cmp(), "no-change push");
}

#[test]
fn a_link_dropped_during_a_push_of_changes_is_healed_by_a_rerun_that_sends_the_rest() {
    if !need_root() {
        return;
    }
    let Some(s) = Sshd::start_or_skip() else { return };
    let tmp = scratch("remote-drop-changes");
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    let files = 8;
    big_tree(&src, files);
    let old = scan_tree(&src, true).unwrap();
    let o = mirror(&s, &[], src.as_os_str(), &remote(s.root_user(), &dst));
    assert_eq!(o.status.code(), Some(0), "first push: {}", stderr(&o));
    // Every file rewritten: the next push sends them all, as changes against DST's listing.
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0x2e57);
    let mut heads = Vec::new();
    for i in 0..files {
        let mut data = vec![0u8; 24 << 20];
        rng.fill_bytes(&mut data);
        heads.push(data[..64].to_vec());
        std::fs::write(src.join(format!("d/f{i:02}")), &data).unwrap();
    }
    let new = scan_tree(&src, true).unwrap();
    let mut cmd = Command::new(bin());
    cmd.args(["mirror", "-q", "--bwlimit", "60M", "-e"])
        .arg(s.rsh())
        .arg("--remote-bin")
        .arg(s.remote_bin())
        .arg(&src)
        .arg(remote(s.root_user(), &dst))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    // Cut once a checkpoint published some of the new files.
    let published = || {
        (0..files)
            .filter(|i| {
                std::fs::read(dst.join(format!("d/f{i:02}")))
                    .map(|b| b.len() >= 64 && b[..64] == heads[*i][..])
                    .unwrap_or(false)
            })
            .count()
    };
    let t0 = Instant::now();
    while published() == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "nothing published after 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let ssh = ssh_child(child.id()).expect("the ssh process of the mirror");
    let _ = Command::new("kill").args(["-9", &ssh.to_string()]).status();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(6), "cut push: {}", stderr(&o));
    // Every file at its final name is the old or the new version, never a mix.
    let t = scan_tree(&dst, true).unwrap();
    for (p, e) in &t.entries {
        if let (Some(a), Some(b)) = (old.entries.get(p), new.entries.get(p)) {
            if e.kind == Kind::File {
                assert!(
                    e.hash == a.hash || e.hash == b.hash,
                    "{} is torn after the cut",
                    String::from_utf8_lossy(p)
                );
            }
        }
    }
    let done = published();
    // The rerun lists DST again: what was published is not sent again.
    let rsh = counting_rsh(&s, tmp.path());
    let o = mirror_via(&rsh, &s, src.as_os_str(), &remote(s.root_user(), &dst));
    assert_eq!(o.status.code(), Some(0), "rerun: {}", stderr(&o));
    assert_exact(&new, &dst, &mirror_cmp(), "rerun after a dropped link");
    let (sent, _) = wire(tmp.path());
    let left = (files - done) as u64 * (24 << 20);
    eprintln!(
        "{done} of {files} files were published before the cut; the rerun sent {sent} bytes for {left} left"
    );
    assert!(
        sent <= left + (64 << 10),
        "the rerun sent {sent} bytes, more than the {left} bytes of the files not published before the cut"
    );
}

/// A small tree of plain names (so that listed paths read as they are).
fn plain_tree(root: &Path) {
    for d in ["a", "a/deep", "b", "keep"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for (i, f) in [
        "a/one",
        "a/two.tmp",
        "a/deep/three",
        "b/four",
        "b/five.tmp",
        "keep/six",
        "top",
    ]
    .iter()
    .enumerate()
    {
        std::fs::write(root.join(f), vec![b'a' + i as u8; 1000 * (i + 1)]).unwrap();
    }
    std::os::unix::fs::symlink("a/one", root.join("link")).unwrap();
}

fn lines(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Paths the oracle finds different between SRC (`new`) and DST (`old`), as shown in change lines.
fn differing_paths(new: &Tree, old: &Tree) -> std::collections::BTreeSet<String> {
    let mut all: std::collections::BTreeSet<&Vec<u8>> = new.entries.keys().collect();
    all.extend(old.entries.keys());
    all.into_iter()
        .filter(|p| !p.is_empty() && p.as_slice() != b".")
        .filter(|p| {
            let (a, b) = (new.entries.get(*p), old.entries.get(*p));
            match (a, b) {
                (Some(a), Some(b)) => {
                    a.kind != b.kind
                        || a.hash != b.hash
                        || a.perm != b.perm
                        || a.mtime != b.mtime
                        || a.target != b.target
                        || a.xattrs != b.xattrs
                }
                _ => true,
            }
        })
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect()
}

/// `cp -a TARGET COPY`, then a local `mirror -q EXTRA SRC COPY`: what a local mirror with the
/// same options makes of TARGET (the oracle's scan of it).
fn local_result(target: &Path, copy: &Path, src: &Path, extra: &[&str]) -> Tree {
    let _ = std::fs::remove_dir_all(copy);
    let cp = Command::new("cp")
        .arg("-a")
        .arg(target)
        .arg(copy)
        .status()
        .unwrap();
    assert!(cp.success());
    let o = Command::new(bin())
        .args(["mirror", "-q"])
        .args(extra)
        .arg(src)
        .arg(copy)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "local mirror {extra:?}: {}", stderr(&o));
    scan_tree(copy, true).unwrap()
}

/// TARGET is what a local mirror made of its copy (not atimes: `cp -a` read the protected
/// files in TARGET, moving theirs).
fn assert_as_local(want: &Tree, target: &Path, what: &str) {
    let d = diffs(
        want,
        target,
        &CompareOpts {
            atime: false,
            ..mirror_cmp()
        },
    );
    assert!(
        d.is_empty(),
        "{what}: DST differs from a local mirror's result:\n  {}",
        d.join("\n  ")
    );
}

#[test]
fn dry_run_verbose_and_filters_work_remotely_as_locally() {
    if !need_root() {
        return;
    }
    let Some(s) = Sshd::start_or_skip() else { return };
    let tmp = scratch("remote-options");
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    let back = tmp.path().join("back");
    plain_tree(&src);
    let to = remote(s.root_user(), &dst);
    let from = remote(s.root_user(), &src);
    let o = mirror(&s, &[], src.as_os_str(), &to);
    assert_eq!(o.status.code(), Some(0), "push: {}", stderr(&o));
    let o = mirror(&s, &[], &from, back.as_os_str());
    assert_eq!(o.status.code(), Some(0), "pull: {}", stderr(&o));

    // Changes: new, rewritten, deleted, chmod, retyped.
    std::fs::write(src.join("a/new"), b"new").unwrap();
    std::fs::write(src.join("b/four"), b"rewritten, another size").unwrap();
    std::fs::remove_file(src.join("keep/six")).unwrap();
    std::fs::set_permissions(src.join("top"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::remove_file(src.join("link")).unwrap();
    std::fs::create_dir(src.join("link")).unwrap();
    let now = scan_tree(&src, true).unwrap();

    // --dry-run, push and pull: DST is left as it was, and every path the oracle finds
    // different is listed.
    for (what, from_, to_, target) in [
        ("push", src.as_os_str(), to.as_os_str(), &dst),
        ("pull", from.as_os_str(), back.as_os_str(), &back),
    ] {
        let before = scan_tree(target, true).unwrap();
        let o = remote_cmd(&s, &["mirror", "--dry-run"])
            .arg(from_)
            .arg(to_)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{what} --dry-run: {}", stderr(&o));
        // (Not atimes: the oracle's own readlink moves a symlink's.)
        let no_atime = CompareOpts {
            atime: false,
            ..CompareOpts::default()
        };
        let d = compare_scanned(&before, &scan_tree(target, true).unwrap(), &no_atime);
        assert!(
            d.is_empty(),
            "{what} --dry-run changed DST:\n  {}",
            d.join("\n  ")
        );
        let listed: std::collections::BTreeSet<String> = lines(&o)
            .iter()
            .filter_map(|l| l.split_once('\t').map(|(_, p)| p.to_string()))
            .collect();
        let want = differing_paths(&now, &before);
        let missing: Vec<&String> = want.difference(&listed).collect();
        assert!(
            missing.is_empty(),
            "{what} --dry-run does not list {missing:?}; it listed {listed:?}"
        );
        let extra: Vec<&String> = listed.difference(&want).collect();
        assert!(extra.is_empty(), "{what} --dry-run lists unchanged {extra:?}");
    }

    // -v: the same lines, and the run is made.
    let o = remote_cmd(&s, &["mirror", "-v"])
        .arg(&src)
        .arg(&to)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "push -v: {}", stderr(&o));
    assert!(
        lines(&o).iter().any(|l| l == "+\ta/new"),
        "push -v does not list a/new:\n{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert_exact(&now, &dst, &mirror_cmp(), "push -v");
    assert!(
        lines(&o)
            .last()
            .is_some_and(|l| l.starts_with("mirror: ") && l.contains(" B sent, ")),
        "push -v ends without its summary:\n{}",
        String::from_utf8_lossy(&o.stdout)
    );

    // --json: the change lines, then a summary with file bytes and wire bytes apart.
    std::fs::write(src.join("b/json"), vec![b'j'; 54_321]).unwrap();
    let o = remote_cmd(&s, &["mirror", "--json"])
        .arg(&src)
        .arg(&to)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "push --json: {}", stderr(&o));
    let last: serde_json::Value = serde_json::from_str(lines(&o).last().expect("a summary")).unwrap();
    assert_eq!(last["file_bytes"], 54_321, "{last}");
    let sent = last["wire"]["sent"].as_u64().unwrap();
    assert!((54_321..54_321 + 8192).contains(&sent), "{last}");
    assert!(last["wire"]["received"].as_u64().unwrap() > 0, "{last}");
    assert!(
        lines(&o).iter().any(|l| l.contains("\"path\":\"b/json\"")),
        "{:?}",
        lines(&o)
    );

    // Filters: a remote push leaves DST as a local mirror with the same filters leaves a copy
    // of DST (excluded entries in DST protected; --delete-excluded removes them).
    for extra in [
        &["--exclude", "*.tmp"][..],
        &["--exclude", "*.tmp", "--delete-excluded"][..],
    ] {
        std::fs::write(dst.join("a/only-in-dst.tmp"), b"dst's own").unwrap();
        std::fs::write(src.join("b/more.tmp"), b"excluded").unwrap();
        std::fs::write(src.join("b/more"), b"included").unwrap();
        let want = local_result(&dst, &tmp.path().join("local"), &src, extra);
        let ex: Vec<&OsStr> = extra.iter().map(OsStr::new).collect();
        let o = mirror(&s, &ex, src.as_os_str(), &to);
        assert_eq!(o.status.code(), Some(0), "push {extra:?}: {}", stderr(&o));
        assert_as_local(&want, &dst, &format!("push {extra:?}"));
        assert!(!dst.join("b/more.tmp").exists(), "an excluded file was sent");
    }

    // The same when pulling (the rules travel to the remote sending end), and a pull's dry
    // run through the filters lists what the pull then does.
    for extra in [
        &["--exclude", "*.tmp"][..],
        &["--exclude", "*.tmp", "--delete-excluded"][..],
    ] {
        std::fs::write(back.join("a/only-in-back.tmp"), b"back's own").unwrap();
        let want = local_result(&back, &tmp.path().join("local-pull"), &src, extra);
        let ex: Vec<&OsStr> = extra.iter().map(OsStr::new).collect();
        let mut dry = ex.clone();
        dry.push(OsStr::new("--dry-run"));
        let o = Command::new(bin())
            .arg("mirror")
            .args(&dry)
            .arg("-e")
            .arg(s.rsh())
            .arg("--remote-bin")
            .arg(s.remote_bin())
            .arg(&from)
            .arg(&back)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "pull {dry:?}: {}", stderr(&o));
        let listed = lines(&o);
        assert!(
            !listed.iter().any(|l| l.ends_with("b/more.tmp")),
            "pull {dry:?} lists an excluded file: {listed:?}"
        );
        assert_eq!(
            listed.iter().any(|l| l == "-\ta/only-in-back.tmp"),
            extra.contains(&"--delete-excluded"),
            "pull {dry:?}: {listed:?}"
        );
        let o = mirror(&s, &ex, &from, back.as_os_str());
        assert_eq!(o.status.code(), Some(0), "pull {extra:?}: {}", stderr(&o));
        assert_as_local(&want, &back, &format!("pull {extra:?}"));
    }
}

#[test]
fn links_cut_at_seeded_random_moments_never_tear_a_file_and_reruns_converge() {
    if !need_root() {
        return;
    }
    let Some(s) = Sshd::start_or_skip() else { return };
    let tmp = scratch("remote-random-cuts");
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    let files = 6;
    big_tree(&src, files);
    let mut versions = vec![scan_tree(&src, true).unwrap()];
    use rand::{Rng, RngCore, SeedableRng};
    for seed in [0xc071_u64, 0xc072, 0xc073, 0xc074] {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        // The first cut falls in the initial sync; later ones in pushes of changes (some files
        // rewritten, one removed, one added).
        if seed != 0xc071 {
            for i in 0..files {
                if rng.gen_bool(0.5) {
                    let mut data = vec![0u8; rng.gen_range(1..24) << 20];
                    rng.fill_bytes(&mut data);
                    std::fs::write(src.join(format!("d/f{i:02}")), &data).unwrap();
                }
            }
            let _ = std::fs::remove_file(src.join(format!("d/f{:02}", rng.gen_range(0..files))));
            std::fs::write(src.join(format!("d/new{seed:x}")), vec![7u8; 3 << 20]).unwrap();
            versions.push(scan_tree(&src, true).unwrap());
        }
        let mut cmd = Command::new(bin());
        cmd.args(["mirror", "-q", "--bwlimit", "80M", "-e"])
            .arg(s.rsh())
            .arg("--remote-bin")
            .arg(s.remote_bin())
            .arg(&src)
            .arg(remote(s.root_user(), &dst))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd.spawn().unwrap();
        let delay = Duration::from_millis(rng.gen_range(150..1500));
        std::thread::sleep(delay);
        if let Some(ssh) = ssh_child(child.id()) {
            let _ = Command::new("kill").args(["-9", &ssh.to_string()]).status();
        }
        let o = child.wait_with_output().unwrap();
        let code = o.status.code();
        assert!(
            code == Some(6) || code == Some(0),
            "seed {seed:#x}, cut after {delay:?}: exit {code:?}: {}",
            stderr(&o)
        );
        // The remote end stops by itself once it sees the link gone: wait for DST's lock.
        let t0 = Instant::now();
        while dst.exists()
            && !Command::new("flock")
                .args(["-n"])
                .arg(&dst)
                .arg("true")
                .status()
                .unwrap()
                .success()
        {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "seed {seed:#x}: DST still locked after 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Every file at a final name is one that SRC held at some point, whole.
        let t = scan_tree(&dst, true).unwrap();
        for (p, e) in &t.entries {
            if e.kind != Kind::File {
                continue;
            }
            assert!(
                versions.iter().any(|v| v
                    .entries
                    .get(p)
                    .is_some_and(|x| x.kind == Kind::File && x.hash == e.hash)),
                "seed {seed:#x}, cut after {delay:?}: {} is torn",
                String::from_utf8_lossy(p)
            );
        }
        let o = mirror(&s, &[], src.as_os_str(), &remote(s.root_user(), &dst));
        assert_eq!(o.status.code(), Some(0), "seed {seed:#x}: rerun: {}", stderr(&o));
        assert_exact(
            versions.last().unwrap(),
            &dst,
            &mirror_cmp(),
            &format!("seed {seed:#x}: rerun"),
        );
    }
}

#[test]
fn copy_with_a_remote_side_sends_changes_and_deletes_nothing() {
    if !need_root() {
        return;
    }
    let Some(s) = Sshd::start_or_skip() else { return };
    let tmp = scratch("remote-copy");
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    let back = tmp.path().join("back");
    plain_tree(&src);
    for d in [&dst, &back] {
        std::fs::create_dir_all(d.join("a")).unwrap();
        std::fs::write(d.join("a/theirs"), b"not in SRC").unwrap();
        std::fs::write(d.join("top"), b"an older top").unwrap();
    }
    let copy = |from: &OsStr, to: &OsStr, extra: &[&str]| {
        remote_cmd(&s, &["copy", "-q"])
            .args(extra)
            .arg(from)
            .arg(to)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let to = remote(s.root_user(), &dst);
    let from = remote(s.root_user(), &src);
    // A dry run lists no deletion and changes nothing.
    let o = remote_cmd(&s, &["copy", "--dry-run"])
        .arg(&src)
        .arg(&to)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "copy --dry-run: {}", stderr(&o));
    assert!(!lines(&o).iter().any(|l| l.starts_with('-')), "{:?}", lines(&o));
    assert!(lines(&o).iter().any(|l| l == "M\ttop"), "{:?}", lines(&o));
    assert_eq!(std::fs::read(dst.join("top")).unwrap(), b"an older top");
    // Scanned twice: the oracle's readlink moves the link's atime once (relatime).
    scan_tree(&src, true).unwrap();
    let want = scan_tree(&src, true).unwrap();
    let opts = CompareOpts {
        allow_extra_in_b: true,
        ..mirror_cmp()
    };
    for (what, f, t, target) in [
        ("push", src.as_os_str(), to.as_os_str(), &dst),
        ("pull", from.as_os_str(), back.as_os_str(), &back),
    ] {
        let o = copy(f, t, &[]);
        assert_eq!(o.status.code(), Some(0), "copy ({what}): {}", stderr(&o));
        assert_exact(&want, target, &opts, &format!("copy ({what})"));
        assert_eq!(
            std::fs::read(target.join("a/theirs")).unwrap(),
            b"not in SRC",
            "copy ({what}) deleted an entry SRC lacks"
        );
    }
    // A file given as SRC: one clear error.
    let o = copy(src.join("top").as_os_str(), &to, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("not a directory"), "{}", stderr(&o));
}

/// Rewrite `path` with other bytes of the same length, and give it back its mtime.
fn rewrite_keep_mtime(path: &Path) {
    let m = std::fs::metadata(path).unwrap();
    let mut data = std::fs::read(path).unwrap();
    for b in data.iter_mut() {
        *b = b.wrapping_add(1);
    }
    std::fs::write(path, &data).unwrap();
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(m.modified().unwrap()).unwrap();
}

#[test]
fn checksum_sends_same_size_same_mtime_edits_both_ways() {
    if !need_root() {
        return;
    }
    let Some(s) = Sshd::start_or_skip() else { return };
    let tmp = scratch("remote-checksum");
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    let back = tmp.path().join("back");
    plain_tree(&src);
    let to = remote(s.root_user(), &dst);
    let from = remote(s.root_user(), &src);
    for (f, t) in [
        (src.as_os_str(), to.as_os_str()),
        (from.as_os_str(), back.as_os_str()),
    ] {
        let o = mirror(&s, &[], f, t);
        assert_eq!(o.status.code(), Some(0), "first run: {}", stderr(&o));
    }
    rewrite_keep_mtime(&src.join("b/four"));
    scan_tree(&src, true).unwrap();
    let now = scan_tree(&src, true).unwrap();
    for (what, f, t, target) in [
        ("push", src.as_os_str(), to.as_os_str(), &dst),
        ("pull", from.as_os_str(), back.as_os_str(), &back),
    ] {
        // Size and mtime agree: without --checksum the edit is not seen (as locally).
        let o = mirror(&s, &[], f, t);
        assert_eq!(o.status.code(), Some(0), "{what}: {}", stderr(&o));
        assert!(
            !diffs(&now, target, &mirror_cmp()).is_empty(),
            "{what}: the same-size, same-mtime edit travelled without --checksum"
        );
        // --dry-run --checksum lists it; --checksum sends it.
        let o = mirror(&s, &[OsStr::new("--checksum"), OsStr::new("--dry-run")], f, t);
        assert_eq!(o.status.code(), Some(0), "{what} -c -n: {}", stderr(&o));
        let o2 = remote_cmd(&s, &["mirror", "--checksum", "--dry-run"])
            .arg(f)
            .arg(t)
            .output()
            .unwrap();
        assert_eq!(lines(&o2), vec!["M\tb/four".to_string()], "{what} -c -n");
        let o = mirror(&s, &[OsStr::new("--checksum")], f, t);
        assert_eq!(o.status.code(), Some(0), "{what} -c: {}", stderr(&o));
        assert_exact(&now, target, &mirror_cmp(), &format!("{what} --checksum"));
    }
}

#[test]
fn a_hostile_listing_from_the_remote_end_is_refused_and_nothing_is_sent() {
    if !need_root() {
        return;
    }
    let Some(s) = Sshd::start_or_skip() else { return };
    let tmp = scratch("remote-hostile-listing");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("secret"), b"must not travel").unwrap();
    // Listings a remote end could send: a path with `..`, one out of order, one whose parent
    // is not a directory, a truncated one. Each is written by the library's own encoder (which
    // trusts its input), so the digest is right and only the reader's checks stand between.
    let entry = |p: &str, mode: u32| ringsync::listing::Entry {
        path: p.as_bytes().to_vec(),
        mode,
        ..Default::default()
    };
    let cases: Vec<(&str, Vec<ringsync::listing::Entry>, usize)> = vec![
        (
            "dotdot",
            vec![entry("a", 0o40755), entry("a/../../etc", 0o40755)],
            0,
        ),
        ("order", vec![entry("b", 0o100644), entry("a", 0o100644)], 0),
        ("parent", vec![entry("f", 0o100644), entry("f/x", 0o100644)], 0),
        ("cut", vec![entry("a", 0o100644)], 7),
    ];
    for (name, entries, cut) in cases {
        let mut listing = Vec::new();
        ringsync::listing::write(&mut listing, 0, &entries).unwrap();
        listing.truncate(listing.len() - cut);
        let lpath = s.plain_dir().join(format!("{name}.listing"));
        std::fs::write(&lpath, &listing).unwrap();
        let o = push_to_a_fake_receiver(&s, &tmp.path().join("dst"), &src, name, &lpath, "");
        assert_refused_and_nothing_sent(&s, name, &o, &["DST's listing", "listing ends early"]);
    }
}

/// Push SRC to a fake receiving end that says its status, reads the request, sends the
/// listing at `listing`, does `then` (shell lines), closes its stdout and keeps whatever comes
/// after in `NAME.got`.
fn push_to_a_fake_receiver(
    s: &Sshd,
    dst: &Path,
    src: &Path,
    name: &str,
    listing: &Path,
    then: &str,
) -> Output {
    let got = s.plain_dir().join(format!("{name}.got"));
    let body = format!(
        "echo '{{\"token\":\"\"}}'\nhead -n 1 > /dev/null\ncat {}\n{then}exec >&- 2>&-\ncat > {}\n",
        listing.display(),
        got.display()
    );
    with_fake_remote(
        s,
        name,
        &body,
        &["-q"],
        src.as_os_str(),
        &remote(s.root_user(), dst),
    )
}

/// The run was refused with one line naming one of `why`, exit 7, and SRC's file (which
/// holds "must not travel") did not reach the fake remote end.
fn assert_refused_and_nothing_sent(s: &Sshd, name: &str, o: &Output, why: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(7), "{name}: {err}");
    assert!(why.iter().any(|w| err.contains(w)), "{name}: {err}");
    assert_eq!(
        err.lines().filter(|l| l.starts_with("ringsync:")).count(),
        1,
        "{name}: {err}"
    );
    let sent = std::fs::read(s.plain_dir().join(format!("{name}.got"))).unwrap_or_default();
    assert!(
        !sent.windows(15).any(|w| w == b"must not travel"),
        "{name}: SRC's data was sent to a remote end whose answers were refused"
    );
}

/// `len` bytes that differ for every `seed` (no two files of the test share content).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut v = vec![0u8; len];
    rand::rngs::SmallRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

#[test]
fn moved_files_travel_as_renames_both_ways_and_only_equal_content_moves() {
    if !need_root() {
        return;
    }
    let Some(s) = Sshd::start_or_skip() else { return };
    let tmp = scratch("remote-moves");
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    let back = tmp.path().join("back");
    for d in ["a", "b", "c/deep"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
    }
    let files = [
        ("a/one", 300_000),
        ("a/two", 200_000),
        ("b/three", 400_000),
        ("c/deep/four", 250_000),
        ("c/five", 150_000),
        ("trap-old", 60_000),
    ];
    for (k, (p, len)) in files.iter().enumerate() {
        std::fs::write(src.join(p), noise(k as u64 + 1, *len)).unwrap();
    }
    let rsh = counting_rsh(&s, tmp.path());
    let to = remote(s.root_user(), &dst);
    let from = remote(s.root_user(), &src);
    for (f, t) in [
        (src.as_os_str(), to.as_os_str()),
        (from.as_os_str(), back.as_os_str()),
    ] {
        let o = mirror_via(&rsh, &s, f, t);
        assert_eq!(o.status.code(), Some(0), "first run: {}", stderr(&o));
    }
    wire(tmp.path());
    // Moves: within a directory, to another one (with a new mode), a whole directory
    // renamed; and a trap: a file deleted and another created with the same size and mtime
    // but other content (it must travel whole).
    std::fs::rename(src.join("a/one"), src.join("a/one-renamed")).unwrap();
    std::fs::rename(src.join("a/two"), src.join("b/two")).unwrap();
    std::fs::set_permissions(src.join("b/two"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(src.join("c"), src.join("c-moved")).unwrap();
    let mtime = std::fs::metadata(src.join("trap-old"))
        .unwrap()
        .modified()
        .unwrap();
    std::fs::remove_file(src.join("trap-old")).unwrap();
    std::fs::write(src.join("trap-new"), noise(99, 60_000)).unwrap();
    std::fs::File::options()
        .write(true)
        .open(src.join("trap-new"))
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    // A touched file (same bytes, new mtime) and a same-size rewrite (new bytes, new mtime).
    let later = |p: &Path| {
        let m = std::fs::metadata(p).unwrap().modified().unwrap();
        let f = std::fs::File::options().write(true).open(p).unwrap();
        f.set_modified(m + Duration::from_secs(7)).unwrap();
    };
    later(&src.join("b/three"));
    std::fs::write(src.join("a/one-renamed"), noise(98, 300_000)).unwrap();
    later(&src.join("a/one-renamed"));
    let now = scan_tree(&src, true).unwrap();
    // What must travel: the trap's 60,000 bytes and the rewrite's 300,000; the 600 kB moved
    // go as renames, the touched file's 400 kB as its attributes.
    let bound = 360_000 + (16 << 10);
    let o = mirror_via(&rsh, &s, src.as_os_str(), &to);
    assert_eq!(o.status.code(), Some(0), "push: {}", stderr(&o));
    assert_exact(&now, &dst, &mirror_cmp(), "push of moves");
    let (sent, _) = wire(tmp.path());
    assert!(
        sent <= bound,
        "the push of moves sent {sent} bytes, more than {bound}"
    );
    let o = mirror_via(&rsh, &s, &from, back.as_os_str());
    assert_eq!(o.status.code(), Some(0), "pull: {}", stderr(&o));
    assert_exact(&now, &back, &mirror_cmp(), "pull of moves");
    let (_, got) = wire(tmp.path());
    assert!(
        got <= bound,
        "the pull of moves received {got} bytes, more than {bound}"
    );
    // With --checksum the listing's hashes decide (no request round); -v shows the moves.
    std::fs::rename(src.join("b/three"), src.join("three-up")).unwrap();
    let now = scan_tree(&src, true).unwrap();
    let o = remote_cmd(&s, &["mirror", "-v", "--checksum"])
        .arg(&src)
        .arg(&to)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "push -c: {}", stderr(&o));
    assert_exact(&now, &dst, &mirror_cmp(), "push --checksum of a move");
    assert!(
        lines(&o).contains(&"R\tb/three\tthree-up".to_string()),
        "{:?}",
        lines(&o)
    );
    let o = remote_cmd(&s, &["mirror", "--json", "--checksum"])
        .arg(&from)
        .arg(&back)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "pull -c: {}", stderr(&o));
    assert_exact(&now, &back, &mirror_cmp(), "pull --checksum of a move");
    let last: serde_json::Value = serde_json::from_str(lines(&o).last().unwrap()).unwrap();
    assert!(last["wire"]["received"].as_u64().unwrap() < 16 << 10, "{last}");
}

#[test]
fn a_hostile_hash_answer_from_the_remote_end_is_refused_and_nothing_is_sent() {
    if !need_root() {
        return;
    }
    let Some(s) = Sshd::start_or_skip() else { return };
    let tmp = scratch("remote-hostile-hashes");
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    // A file the listing's deleted entry matches by size and mtime: the sender asks for its hash.
    let mut data = b"must not travel".to_vec();
    data.resize(4096, b'x');
    std::fs::write(src.join("new"), &data).unwrap();
    let mtime = std::fs::metadata(src.join("new")).unwrap().modified().unwrap();
    let since = mtime.duration_since(std::time::UNIX_EPOCH).unwrap();
    let listed = ringsync::listing::Entry {
        path: b"old".to_vec(),
        mode: 0o100644,
        size: 4096,
        mtime: (since.as_secs() as i64, since.subsec_nanos()),
        ..Default::default()
    };
    let mut listing = Vec::new();
    ringsync::listing::write(&mut listing, 0, &[listed]).unwrap();
    let lpath = s.plain_dir().join("hashes.listing");
    std::fs::write(&lpath, &listing).unwrap();
    for (name, answer) in [
        ("not-json", "{\"hashes\":"),
        ("wrong-count", "{\"hashes\":[null,null]}"),
        ("not-hex", "{\"hashes\":[\"zz\"]}"),
    ] {
        // The listing, then this answer to the hash request.
        let then = format!("head -n 1 > /dev/null\necho '{answer}'\n");
        let o = push_to_a_fake_receiver(&s, &tmp.path().join("dst"), &src, name, &lpath, &then);
        assert_refused_and_nothing_sent(&s, name, &o, &["content hashes"]);
    }
}

/// `cp -a FROM TO`, then a moment for the copy's ctimes to settle (a state id needs them
/// 0.1 s old).
fn snapshot(from: &Path, to: &Path) {
    let st = Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
    std::thread::sleep(Duration::from_millis(300));
}

#[test]
fn prev_sends_the_incremental_stream_without_listing_dst_and_falls_back_when_dst_changed() {
    if !need_root() {
        return;
    }
    let Some(s) = Sshd::start_or_skip() else { return };
    let tmp = scratch("remote-prev");
    let work = tmp.path().join("work");
    let dst = tmp.path().join("dst");
    let back = tmp.path().join("back");
    let seed = 0x9e_77;
    gen_tree(
        &work,
        seed,
        &GenOpts {
            dirs: 12,
            files: 120,
            max_file: 64 << 10,
            // Snapshots are made with `cp -a`, which stops at PATH_MAX.
            deep: false,
            ..GenOpts::default()
        },
    )
    .unwrap();
    let snap = |n: u32| tmp.path().join(format!("snap{n}"));
    snapshot(&work, &snap(1));
    let rsh = counting_rsh(&s, tmp.path());
    let run = |extra: &[&OsStr], from: &OsStr, to: &OsStr| {
        let o = Command::new(bin())
            .args(["mirror", "-e"])
            .arg(&rsh)
            .arg("--remote-bin")
            .arg(s.remote_bin())
            .args(extra)
            .arg(from)
            .arg(to)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{from:?} -> {to:?}: {}", stderr(&o));
        stderr(&o)
    };
    let to = remote(s.root_user(), &dst);
    let from = |n: u32| remote(s.root_user(), &snap(n));
    run(&[], snap(1).as_os_str(), &to);
    run(&[], &from(1), back.as_os_str());
    wire(tmp.path());
    for n in 2..=3u32 {
        let log = common::mutate::mutate(&work, seed + u64::from(n), 20).unwrap();
        snapshot(&work, &snap(n));
        let want = scan_tree(&snap(n), true).unwrap();
        let prev = snap(n - 1);
        let what = format!("--prev snap{} (mutations:\n  {})", n - 1, log.join("\n  "));
        // Push: DST equals snap(n-1); nothing is listed (the remote end sends only its
        // greeting and status line).
        let err = run(
            &[OsStr::new("--prev"), prev.as_os_str()],
            snap(n).as_os_str(),
            &to,
        );
        assert!(!err.contains("listing"), "{what}: push fell back: {err}");
        assert_exact(&want, &dst, &mirror_cmp(), &format!("push {what}"));
        let (_, got) = wire(tmp.path());
        assert!(got < 1024, "{what}: push received {got} bytes: was DST listed?");
        // Pull: the same from the remote snapshots; no listing is sent.
        let err = run(
            &[OsStr::new("--prev"), prev.as_os_str()],
            &from(n),
            back.as_os_str(),
        );
        assert!(!err.contains("listing"), "{what}: pull fell back: {err}");
        assert_exact(&want, &back, &mirror_cmp(), &format!("pull {what}"));
        let (sent, _) = wire(tmp.path());
        // (A listing of this tree is several kB.)
        assert!(sent < 1024, "{what}: pull sent {sent} bytes: was DST listed?");
    }
    // DST changed by hand since: the incremental stream is refused, the run lists DST and
    // still makes it exact. A --prev that is not DST's state: the same.
    std::fs::write(dst.join("by-hand"), b"x").unwrap();
    std::fs::write(back.join("by-hand"), b"x").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    common::mutate::mutate(&work, seed + 4, 20).unwrap();
    snapshot(&work, &snap(4));
    let want = scan_tree(&snap(4), true).unwrap();
    let err = run(
        &[OsStr::new("--prev"), snap(3).as_os_str()],
        snap(4).as_os_str(),
        &to,
    );
    assert!(err.contains("comparing against DST's listing"), "{err}");
    assert_exact(&want, &dst, &mirror_cmp(), "push after DST changed");
    let err = run(
        &[OsStr::new("--prev"), snap(2).as_os_str()],
        &from(4),
        back.as_os_str(),
    );
    assert!(err.contains("comparing against DST's listing"), "{err}");
    assert_exact(&want, &back, &mirror_cmp(), "pull with the wrong --prev");
    wire(tmp.path());
    // And the run after a fallback can use --prev again.
    common::mutate::mutate(&work, seed + 5, 20).unwrap();
    snapshot(&work, &snap(5));
    let want = scan_tree(&snap(5), true).unwrap();
    let err = run(
        &[OsStr::new("--prev"), snap(4).as_os_str()],
        snap(5).as_os_str(),
        &to,
    );
    assert!(!err.contains("listing"), "push after a fallback: {err}");
    assert_exact(&want, &dst, &mirror_cmp(), "push after a fallback");
    let (_, got) = wire(tmp.path());
    assert!(got < 1024, "push after a fallback received {got} bytes");
    // A pull whose own DST changed by hand: this end refuses the stream, lists DST, exact.
    std::fs::write(back.join("by-hand-2"), b"x").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let err = run(
        &[OsStr::new("--prev"), snap(4).as_os_str()],
        &from(5),
        back.as_os_str(),
    );
    assert!(err.contains("comparing against DST's listing"), "{err}");
    assert_exact(&want, &back, &mirror_cmp(), "pull after DST changed");
    // A filtered run with --prev notes no state (its DST is not all of SRC): the next --prev
    // run lists DST and brings what the filter left out.
    std::fs::write(work.join("left-out.tmp"), b"t").unwrap();
    snapshot(&work, &snap(6));
    let ex = [OsStr::new("--exclude"), OsStr::new("*.tmp")];
    run(
        &[ex[0], ex[1], OsStr::new("--prev"), snap(5).as_os_str()],
        snap(6).as_os_str(),
        &to,
    );
    assert!(!dst.join("left-out.tmp").exists());
    let want = scan_tree(&snap(6), true).unwrap();
    let err = run(
        &[OsStr::new("--prev"), snap(6).as_os_str()],
        snap(6).as_os_str(),
        &to,
    );
    assert!(err.contains("comparing against DST's listing"), "{err}");
    assert_exact(&want, &dst, &mirror_cmp(), "--prev after a filtered run");
}

/// List every directory below `root` once, as a sender's walk does, so that its atime (which
/// relatime moves on the first read after a change) stays put while the test runs.
fn settle_atimes(root: &Path) {
    for e in std::fs::read_dir(root).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            settle_atimes(&e.path());
        }
    }
}

#[test]
fn compress_shrinks_the_wire_both_ways_and_bwlimit_paces_a_pull() {
    if !need_root() {
        return;
    }
    let Some(s) = Sshd::start_or_skip() else { return };
    let tmp = scratch("remote-compress");
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    let back = tmp.path().join("back");
    // Text-like files (compressible) and one of noise (not).
    std::fs::create_dir_all(src.join("text")).unwrap();
    let mut text_bytes = 0;
    for i in 0..40u64 {
        let body: String = (0..2000)
            .map(|l| format!("line {l} of file {i}: the quick brown fox jumps over the lazy dog\n"))
            .collect();
        text_bytes += body.len() as u64;
        std::fs::write(src.join(format!("text/f{i}.txt")), body).unwrap();
    }
    std::fs::write(src.join("noise"), noise(7, 1 << 20)).unwrap();
    let rsh = counting_rsh(&s, tmp.path());
    let run = |extra: &[&str], from: &OsStr, to: &OsStr| {
        let t0 = Instant::now();
        let o = Command::new(bin())
            .args(["mirror", "-q", "-e"])
            .arg(&rsh)
            .arg("--remote-bin")
            .arg(s.remote_bin())
            .args(extra)
            .arg(from)
            .arg(to)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{extra:?}: {}", stderr(&o));
        t0.elapsed()
    };
    settle_atimes(&src);
    let want = scan_tree(&src, true).unwrap();
    let to = remote(s.root_user(), &dst);
    let from = remote(s.root_user(), &src);
    let data = text_bytes + (1 << 20);
    run(&["-z"], src.as_os_str(), &to);
    assert_exact(&want, &dst, &mirror_cmp(), "push -z");
    let (sent, _) = wire(tmp.path());
    // The text shrinks many times (the noise does not): well under half of the data.
    assert!(
        sent < data / 2,
        "push -z sent {sent} bytes for {data} bytes of files"
    );
    run(&["-z", "--compress-level", "1"], &from, back.as_os_str());
    assert_exact(&want, &back, &mirror_cmp(), "pull -z");
    let (_, got) = wire(tmp.path());
    assert!(
        got < data / 2,
        "pull -z received {got} bytes for {data} bytes of files"
    );
    // Changes travel compressed too (the listing, the hash round, the stream).
    for i in 0..5 {
        std::fs::write(
            src.join(format!("text/f{i}.txt")),
            format!("rewritten {i}\n").repeat(5000),
        )
        .unwrap();
    }
    std::fs::rename(src.join("noise"), src.join("noise-moved")).unwrap();
    settle_atimes(&src);
    let want = scan_tree(&src, true).unwrap();
    run(&["-z"], src.as_os_str(), &to);
    assert_exact(&want, &dst, &mirror_cmp(), "push -z of changes");
    run(&["-z"], &from, back.as_os_str());
    assert_exact(&want, &back, &mirror_cmp(), "pull -z of changes");
    let (sent, got) = wire(tmp.path());
    assert!(
        sent + got < 64 << 10,
        "changes with -z: {sent} + {got} bytes on the wire"
    );
    // --bwlimit paces a pull (the pulling end reads at that pace): 1 MiB of noise at 256 KiB/s.
    let slow = tmp.path().join("slow");
    std::fs::create_dir(&slow).unwrap();
    std::fs::write(slow.join("noise"), noise(8, 1 << 20)).unwrap();
    // With --progress the line shows the wire bytes beside the file bytes.
    let t0 = Instant::now();
    let o = remote_cmd(&s, &["mirror", "--bwlimit", "256K", "--progress"])
        .arg(remote(s.root_user(), &slow))
        .arg(tmp.path().join("slow-back"))
        .output()
        .unwrap();
    let took = t0.elapsed();
    assert_eq!(o.status.code(), Some(0), "pull --bwlimit: {}", stderr(&o));
    assert!(
        took >= Duration::from_secs(3),
        "a 1 MiB pull at --bwlimit 256K took {took:?}"
    );
    assert!(
        stderr(&o)
            .lines()
            .any(|l| l.contains("progress:") && l.contains(" wire ")),
        "{}",
        stderr(&o)
    );
}

#[test]
fn timeout_takes_a_stalled_remote_end_for_a_dropped_link() {
    if !need_root() {
        return;
    }
    let Some(s) = Sshd::start_or_skip() else { return };
    let tmp = scratch("remote-timeout");
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), b"data").unwrap();
    // A remote end that greets (and, to a push, says its status) and then hangs with its
    // stdout open: without --timeout the run would wait for ever.
    let body = "[ \"$2\" = receive ] && echo '{\"token\":\"\"}'\nexec sleep 60\n";
    for (what, from, to) in [
        (
            "push",
            src.clone().into_os_string(),
            remote(s.root_user(), &tmp.path().join("dst")),
        ),
        (
            "pull",
            remote(s.root_user(), &src),
            tmp.path().join("back").into_os_string(),
        ),
    ] {
        let t0 = Instant::now();
        let o = with_fake_remote(&s, "stall", body, &["--timeout", "2"], &from, &to);
        let took = t0.elapsed();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(6), "{what}: {err}");
        assert!(err.contains("--timeout"), "{what}: {err}");
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_secs(20),
            "{what}: took {took:?}"
        );
    }
}

/// Every path below `root` (relative, sorted), and the content of each regular file.
fn paths_and_data(root: &Path) -> std::collections::BTreeMap<String, Option<Vec<u8>>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel.starts_with(".ringsync") {
                continue;
            }
            if e.file_type().unwrap().is_dir() {
                stack.push(p.clone());
                out.insert(rel, None);
            } else {
                out.insert(rel, Some(std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

#[test]
fn excluded_entries_never_travel_into_empty_or_new_directories_and_files_from_pulls() {
    if !need_root() {
        return;
    }
    let Some(s) = Sshd::start_or_skip() else { return };
    let tmp = scratch("remote-filtered-new");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    for (p, d) in [
        ("a.txt", "a"),
        ("b.tmp", "secret b"),
        ("sub/c.tmp", "secret c"),
        ("sub/d.txt", "d"),
    ] {
        std::fs::write(src.join(p), d).unwrap();
    }
    // What a mirror with --exclude '*.tmp' must leave, written out by hand.
    let want = |extra: &[(&str, Option<&str>)]| {
        let m: std::collections::BTreeMap<String, Option<Vec<u8>>> =
            [("a.txt", Some("a")), ("sub", None), ("sub/d.txt", Some("d"))]
                .iter()
                .chain(extra)
                .map(|(p, d)| (p.to_string(), d.map(|d| d.as_bytes().to_vec())))
                .collect();
        m
    };
    let ex = [OsStr::new("--exclude"), OsStr::new("*.tmp")];
    let dst = tmp.path().join("dst");
    let back = tmp.path().join("back");
    let to = remote(s.root_user(), &dst);
    let from = remote(s.root_user(), &src);
    // Into empty (missing) targets.
    for (what, f, t, target) in [
        ("push", src.as_os_str(), to.as_os_str(), &dst),
        ("pull", from.as_os_str(), back.as_os_str(), &back),
    ] {
        let o = mirror(&s, &ex, f, t);
        assert_eq!(o.status.code(), Some(0), "{what}: {}", stderr(&o));
        assert_eq!(paths_and_data(target), want(&[]), "{what} into an empty DST");
    }
    // A new directory holding excluded entries, deeper too.
    std::fs::create_dir_all(src.join("newd/deeper")).unwrap();
    for (p, d) in [
        ("newd/x.tmp", "secret x"),
        ("newd/y.txt", "y"),
        ("newd/deeper/z.tmp", "secret z"),
    ] {
        std::fs::write(src.join(p), d).unwrap();
    }
    let more = [("newd", None), ("newd/deeper", None), ("newd/y.txt", Some("y"))];
    for (what, f, t, target) in [
        ("push", src.as_os_str(), to.as_os_str(), &dst),
        ("pull", from.as_os_str(), back.as_os_str(), &back),
    ] {
        let o = mirror(&s, &ex, f, t);
        assert_eq!(o.status.code(), Some(0), "{what}: {}", stderr(&o));
        assert_eq!(paths_and_data(target), want(&more), "{what} of a new directory");
    }
    // --files-from when pulling (and pushing): only the listed paths (and the directories to
    // them); a listed path SRC lacks is reported and the run is partial (exit 3).
    let list = tmp.path().join("list");
    std::fs::write(&list, "a.txt\nnewd/y.txt\nnot-there\n").unwrap();
    let ff = [OsStr::new("--files-from"), list.as_os_str()];
    let listed: std::collections::BTreeMap<String, Option<Vec<u8>>> = [
        ("a.txt", Some(b"a".to_vec())),
        ("newd", None),
        ("newd/y.txt", Some(b"y".to_vec())),
    ]
    .into_iter()
    .map(|(p, d)| (p.to_string(), d))
    .collect();
    for (what, f, target) in [
        ("pull", from.clone(), tmp.path().join("ff-pull")),
        ("push", src.clone().into_os_string(), tmp.path().join("ff-push")),
    ] {
        let t = if what == "pull" {
            target.clone().into_os_string()
        } else {
            remote(s.root_user(), &target)
        };
        let o = mirror(&s, &ff, &f, &t);
        assert_eq!(o.status.code(), Some(3), "{what} --files-from: {}", stderr(&o));
        assert!(stderr(&o).contains("not-there"), "{what}: {}", stderr(&o));
        assert_eq!(paths_and_data(&target), listed, "{what} --files-from");
    }
}
