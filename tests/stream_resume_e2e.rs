//! Kill and resume (issue 13, item 5): a receiver killed at seeded points of a stream keeps only
//! verified files under final names; `send --resume $(receive --token DST)` completes DST to an
//! exact replica (the independent oracle decides) and resends at most the data after the
//! token's checkpoint (bytes counted from `dump` of the full stream). Edited and forged tokens,
//! a resumed stream of another stream, and a source changed in between are refused.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// A tree whose stream has several checkpoints (every 4096 entries): a nasty generated part
/// (hardlinks, symlinks, sparse files, xattrs, odd names, a read-only directory), 9000 small
/// files, then big files.
fn make_src(root: &Path) {
    let opts = GenOpts {
        dirs: 12,
        files: 60,
        deep: false,
        ..GenOpts::default()
    };
    gen_tree(&root.join("gen"), 7, &opts).expect("generate");
    for d in 0..9 {
        let dir = root.join(format!("many{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..1000 {
            std::fs::write(
                dir.join(format!("f{f:04}")),
                format!("{d}/{f} {}", "x".repeat(f % 300)),
            )
            .unwrap();
        }
    }
    let big = root.join("zbig");
    std::fs::create_dir_all(&big).unwrap();
    for i in 0..3u8 {
        let data: Vec<u8> = (0..8u32 << 20)
            .map(|j| (j.wrapping_mul(2654435761) >> 13) as u8 ^ i)
            .collect();
        std::fs::write(big.join(format!("b{i}")), data).unwrap();
    }
    freeze_atimes(root);
}

fn send_to_file(extra: &[&str], src: &Path, out: &Path) -> std::process::Output {
    let mut args: Vec<&std::ffi::OsStr> = vec!["send".as_ref(), "-q".as_ref()];
    args.extend(extra.iter().map(|a| std::ffi::OsStr::new(*a)));
    args.extend([src.as_os_str(), "-o".as_ref(), out.as_os_str()]);
    run(&args)
}

fn receive_file(stream: &Path, dst: &Path) -> std::process::Output {
    run(&[
        "receive".as_ref(),
        "-q".as_ref(),
        "-i".as_ref(),
        stream.as_os_str(),
        dst.as_os_str(),
    ])
}

fn token(dst: &Path) -> Option<String> {
    let out = run(&["receive".as_ref(), "--token".as_ref(), dst.as_os_str()]);
    match out.status.code() {
        Some(0) => Some(String::from_utf8(out.stdout).unwrap().trim().to_string()),
        Some(1) => None,
        _ => panic!("receive --token: {}", describe(&out)),
    }
}

/// Offsets and data lengths of the DATA records of a stream, and the offsets of its
/// CHECKPOINTs, from `dump` (its text format is documented: SEQUENCE, OFFSET, TYPE,
/// key=value...).
fn data_records(stream: &Path) -> (Vec<(u64, u64)>, Vec<u64>) {
    let out = run(&["dump".as_ref(), stream.as_os_str()]);
    assert_eq!(out.status.code(), Some(0), "dump: {}", describe(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let checkpoints = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() > 2 && f[2] == "CHECKPOINT").then(|| f[1].parse().unwrap())
        })
        .collect();
    let datas = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() > 3 && f[2] == "DATA").then(|| {
                let len = f[3..]
                    .iter()
                    .flat_map(|kv| kv.split(' '))
                    .find_map(|kv| kv.strip_prefix("len="))
                    .expect("len=")
                    .parse()
                    .unwrap();
                (f[1].parse().unwrap(), len)
            })
        })
        .collect();
    (datas, checkpoints)
}

/// Every regular file under a final name in DST equals the file of that path in SRC (DST
/// started empty, so there is no old version); returns how many were checked.
fn only_verified_files(src: &Path, dst: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![std::path::PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(dst.join(&rel)) else {
            continue;
        };
        for e in rd {
            let e = e.unwrap();
            let name = e.file_name();
            let r = rel.join(&name);
            if name.to_string_lossy().starts_with(".ringsync-rcv.") {
                continue; // staged, not published
            }
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(r);
            } else if t.is_file() {
                let got = std::fs::read(dst.join(&r)).unwrap();
                let want =
                    std::fs::read(src.join(&r)).unwrap_or_else(|_| panic!("{} is not in SRC", r.display()));
                assert!(
                    got == want,
                    "{} is torn or wrong under its final name",
                    r.display()
                );
                n += 1;
            }
        }
    }
    n
}

fn no_temporaries(dst: &Path) {
    let out = Command::new("find")
        .arg(dst)
        .arg("-name")
        .arg(".ringsync-rcv.*")
        .output()
        .unwrap();
    assert!(
        out.stdout.is_empty(),
        "temporaries left: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Feed `stream[..cut]` to a receiver, let it work on it, then SIGKILL it.
fn receive_killed(stream: &[u8], cut: usize, dst: &Path) {
    let mut child = Command::new(bin())
        .args(["receive", "-q"])
        .arg(dst)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // A broken pipe means the receiver already stopped (it may refuse nothing here: the bytes
    // are a valid prefix), which is fine.
    let _ = stdin.write_all(&stream[..cut]);
    // Let it apply what it was given (and publish the checkpoints it saw), then kill it.
    std::thread::sleep(Duration::from_millis(800));
    let _ = child.kill();
    let _ = child.wait();
    drop(stdin);
}

#[test]
fn kill_then_resume_converges_and_resends_only_after_the_checkpoint() {
    let tmp = scratch("resume");
    let src = tmp.path().join("src");
    make_src(&src);
    let full = tmp.path().join("full.stream");
    let out = send_to_file(&[], &src, &full);
    assert_eq!(out.status.code(), Some(0), "send: {}", describe(&out));
    let stream = std::fs::read(&full).unwrap();
    let (datas, checkpoints) = data_records(&full);
    assert!(
        checkpoints.len() >= 2,
        "the stream has {} checkpoints: the tree is too small",
        checkpoints.len()
    );
    let total_data: u64 = datas.iter().map(|d| d.1).sum();
    let mut resumed_runs = 0;
    for seed in 0..=4u64 {
        // Seed 0 cuts before the first checkpoint (nothing to resume: a full stream completes
        // it); the others at seeded points between the first checkpoint and the end.
        let first = checkpoints[0] as usize + 100;
        let cut = match seed {
            0 => checkpoints[0] as usize / 2,
            s => first + ((stream.len() - first) as u64 * (s * 29 % 97) / 100) as usize,
        };
        let dst = tmp.path().join(format!("dst{seed}"));
        receive_killed(&stream, cut, &dst);
        let checked = only_verified_files(&src, &dst);
        let state = read_record_json(&dst).and_then(|v| v["state"].as_str().map(String::from));
        assert_eq!(
            state.as_deref(),
            Some("dirty"),
            "seed {seed}: killed receive left the record {state:?}"
        );
        match token(&dst) {
            None => {
                // Killed before its first checkpoint: a full stream completes it.
                let out = receive_file(&full, &dst);
                assert_eq!(
                    out.status.code(),
                    Some(0),
                    "seed {seed}: full rerun: {}",
                    describe(&out)
                );
            }
            Some(t) => {
                let resumed = tmp.path().join(format!("resumed{seed}.stream"));
                let out = send_to_file(&["--resume", &t], &src, &resumed);
                assert_eq!(
                    out.status.code(),
                    Some(0),
                    "seed {seed}: send --resume: {}",
                    describe(&out)
                );
                // The token's offset: data before it is not sent again.
                let at = ringsync::stream::ResumeToken::decode(&t).unwrap().offset;
                let after: u64 = datas.iter().filter(|d| d.0 >= at).map(|d| d.1).sum();
                let resent = std::fs::metadata(&resumed).unwrap().len();
                let overhead = stream.len() as u64 - total_data; // every header and record
                assert!(
                    resent <= after + overhead,
                    "seed {seed}: resumed stream of {resent} bytes; data after the checkpoint is {after} (+ {overhead} of records)"
                );
                common::note(&format!(
                    "resume seed {seed}: cut at {cut} of {}, token at {at}, resumed stream {resent} bytes for {after} data bytes after the checkpoint ({} verified files were already in place)",
                    stream.len(),
                    checked
                ));
                let out = receive_file(&resumed, &dst);
                assert_eq!(
                    out.status.code(),
                    Some(0),
                    "seed {seed}: receive of the resumed stream: {}",
                    describe(&out)
                );
                assert!(token(&dst).is_none(), "seed {seed}: token left after a clean END");
                resumed_runs += 1;
            }
        }
        assert_trees_equal(&src, &dst, &mirror_cmp(), &format!("seed {seed} after resume"));
        no_temporaries(&dst);
        let state = read_record_json(&dst).and_then(|v| v["state"].as_str().map(String::from));
        assert_eq!(state.as_deref(), Some("clean"), "seed {seed}");
    }
    assert_eq!(
        resumed_runs, 4,
        "every kill after the first checkpoint must leave a token"
    );
}

#[test]
fn edited_forged_and_foreign_tokens_and_a_changed_source_are_refused() {
    let tmp = scratch("resume-refuse");
    let src = tmp.path().join("src");
    make_src(&src);
    let full = tmp.path().join("full.stream");
    assert_eq!(send_to_file(&[], &src, &full).status.code(), Some(0));
    let stream = std::fs::read(&full).unwrap();
    let dst = tmp.path().join("dst");
    receive_killed(&stream, stream.len() * 3 / 4, &dst);
    let t = token(&dst).expect("a token after three quarters of the stream");
    let tok = ringsync::stream::ResumeToken::decode(&t).unwrap();
    let before = common::oracle::scan_tree(&dst, true).unwrap();

    // An edited token: refused by its own checksum, before anything is sent.
    let mut edited = t.clone().into_bytes();
    let i = edited.len() / 2;
    edited[i] = if edited[i] == b'A' { b'B' } else { b'A' };
    let edited = String::from_utf8(edited).unwrap();
    let out = send_to_file(&["--resume", &edited], &src, &tmp.path().join("x.stream"));
    assert_eq!(out.status.code(), Some(2), "edited token: {}", describe(&out));

    // A forged token (valid checksum, another chain): the sender finds its own chain differs.
    let mut forged = tok.clone();
    forged.chain[0] ^= 1;
    let out = send_to_file(
        &["--resume", &forged.encode()],
        &src,
        &tmp.path().join("f.stream"),
    );
    assert_eq!(out.status.code(), Some(1), "forged chain: {}", describe(&out));
    // A token at an offset that is not a checkpoint.
    let mut moved = tok.clone();
    moved.offset += 1;
    let out = send_to_file(&["--resume", &moved.encode()], &src, &tmp.path().join("m.stream"));
    assert_eq!(out.status.code(), Some(1), "moved offset: {}", describe(&out));

    // A resumed stream of another stream (another receive's token, another stream id) is
    // refused by the receiver, and DST is left as it was.
    let full2 = tmp.path().join("full2.stream");
    assert_eq!(send_to_file(&[], &src, &full2).status.code(), Some(0));
    let dst2 = tmp.path().join("dst2");
    receive_killed(&std::fs::read(&full2).unwrap(), stream.len() * 3 / 4, &dst2);
    let t2 = token(&dst2).expect("a token for the second stream");
    let foreign = tmp.path().join("foreign.stream");
    assert_eq!(
        send_to_file(&["--resume", &t2], &src, &foreign).status.code(),
        Some(0)
    );
    let out = receive_file(&foreign, &dst);
    assert_eq!(
        out.status.code(),
        Some(1),
        "foreign resumed stream: {}",
        describe(&out)
    );
    let after = common::oracle::scan_tree(&dst, true).unwrap();
    let diffs = common::oracle::compare_scanned(&before, &after, &mirror_cmp());
    assert!(diffs.is_empty(), "a refused stream changed DST: {diffs:?}");

    // The source changed before the checkpoint: the sender refuses to resume.
    let first = src.join("many0/f0000");
    let mut perm = std::fs::metadata(&first).unwrap().permissions();
    perm.set_mode(0o600);
    std::fs::set_permissions(&first, perm).unwrap();
    std::fs::write(&first, b"changed").unwrap();
    let out = send_to_file(&["--resume", &t], &src, &tmp.path().join("c.stream"));
    assert_eq!(out.status.code(), Some(1), "changed source: {}", describe(&out));
    // A full stream still converges.
    let fresh = tmp.path().join("fresh.stream");
    assert_eq!(send_to_file(&[], &src, &fresh).status.code(), Some(0));
    let out = receive_file(&fresh, &dst);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_trees_equal(&src, &dst, &mirror_cmp(), "full stream after a refused resume");
    no_temporaries(&dst);
}

/// A receive that reaches END with an entry it could not apply (ENOSPC on one file's write,
/// by failpoint) keeps a full stream's token at the last checkpoint before that failure
/// (issue 16, item 6): `send --resume` then carries only what comes after it, the failed file
/// among it; files before the checkpoint are neither sent nor written again (same inode).
#[test]
fn a_receive_that_failed_entries_resumes_from_before_the_first_failure() {
    if !cfg!(feature = "failpoints") {
        skip_or_fail("stream_resume_e2e: the binary is built without --features failpoints");
        return;
    }
    let tmp = scratch("resume-failed");
    let src = tmp.path().join("src");
    make_src(&src);
    let failing = Path::new("zbig/b1");
    let full = tmp.path().join("full.stream");
    let out = send_to_file(&[], &src, &full);
    assert_eq!(out.status.code(), Some(0), "send: {}", describe(&out));
    let stream_len = std::fs::metadata(&full).unwrap().len();
    let (datas, checkpoints) = data_records(&full);
    let total_data: u64 = datas.iter().map(|d| d.1).sum();

    let dst = tmp.path().join("dst");
    let out = Command::new(bin())
        .env("RINGSYNC_FAILPOINTS", "write:b1=ENOSPC")
        .args(["receive", "-i"])
        .arg(&full)
        .arg(&dst)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "receive with b1 failing: {}",
        describe(&out)
    );
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert!(stderr.contains("send --resume"), "the way on is named: {stderr}");
    // By the oracle: everything but the failed file is exact.
    let diffs = compare_trees(&src, &dst, &mirror_cmp());
    assert!(
        !diffs.is_empty() && diffs.iter().all(|d| d.starts_with("zbig/b1")),
        "only {} differs: {diffs:?}",
        failing.display()
    );
    let state = read_record_json(&dst).and_then(|v| v["state"].as_str().map(String::from));
    assert_eq!(state.as_deref(), Some("dirty"));

    // The token: the last checkpoint before the failed file's data.
    let t = token(&dst).expect("a token is kept after END with a failed entry");
    let at = ringsync::stream::ResumeToken::decode(&t).unwrap().offset;
    let b1_data = first_data_offset(&full, "b1");
    let before: Vec<u64> = checkpoints.iter().copied().filter(|c| *c < b1_data).collect();
    assert!(
        !before.is_empty(),
        "no checkpoint before {}: the tree is too small",
        failing.display()
    );
    assert_eq!(
        Some(&at),
        before.last(),
        "the token is at the last checkpoint before the failure (checkpoints {checkpoints:?}, b1's data at {b1_data})"
    );
    // Files whose data came before the checkpoint keep their inode through the resumption.
    let kept: Vec<(std::path::PathBuf, u64)> = ["many0/f0000", "many1/f0500", "many2/f0999"]
        .iter()
        .map(|r| {
            use std::os::unix::fs::MetadataExt;
            (dst.join(r), std::fs::metadata(dst.join(r)).unwrap().ino())
        })
        .collect();

    let resumed = tmp.path().join("resumed.stream");
    let out = send_to_file(&["--resume", &t], &src, &resumed);
    assert_eq!(out.status.code(), Some(0), "send --resume: {}", describe(&out));
    let after: u64 = datas.iter().filter(|d| d.0 >= at).map(|d| d.1).sum();
    let resent = std::fs::metadata(&resumed).unwrap().len();
    let overhead = stream_len - total_data;
    assert!(
        resent <= after + overhead && resent < stream_len - (total_data - after) / 2,
        "resumed stream of {resent} bytes; data after the checkpoint is {after} (+ {overhead} of records), full {stream_len}"
    );
    common::note(&format!(
        "resume after a failed entry: token at {at} of {stream_len}, resumed stream {resent} bytes for {after} data bytes after it"
    ));
    let out = receive_file(&resumed, &dst);
    assert_eq!(
        out.status.code(),
        Some(0),
        "receive of the resumed stream: {}",
        describe(&out)
    );
    assert!(token(&dst).is_none(), "token left after a clean END");
    assert_trees_equal(&src, &dst, &mirror_cmp(), "after the resumption");
    no_temporaries(&dst);
    let state = read_record_json(&dst).and_then(|v| v["state"].as_str().map(String::from));
    assert_eq!(state.as_deref(), Some("clean"));
    for (p, ino) in kept {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().ino(),
            ino,
            "{} was written again",
            p.display()
        );
    }
}

/// The offset of the first DATA record of the file named `name` (from `dump`: its FILE record
/// names it; the DATA records after it are its data).
fn first_data_offset(stream: &Path, name: &str) -> u64 {
    let out = run(&["dump".as_ref(), stream.as_os_str()]);
    assert_eq!(out.status.code(), Some(0), "dump: {}", describe(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let mut in_file = false;
    for l in text.lines() {
        let f: Vec<&str> = l.split('\t').collect();
        if f.len() < 3 {
            continue;
        }
        if f[2] == "FILE" {
            in_file = f[3..]
                .iter()
                .flat_map(|kv| kv.split(' '))
                .any(|kv| kv == format!("name={name}"));
        } else if in_file && f[2] == "DATA" {
            return f[1].parse().unwrap();
        }
    }
    panic!("no DATA of a FILE named {name} in the dump");
}
