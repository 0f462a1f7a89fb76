//! `--bwlimit` end to end: a limited copy (and mirror) takes at least the time the limit
//! implies, clearly longer than an unlimited one, and still produces an exact copy (checked by
//! the independent oracle). Generous bounds only: the accuracy figures (±5 % average, 100 ms
//! windows) come from `tools/bwlimit-check.sh`, not from timed tests.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const MIB: u64 = 1 << 20;
/// Rate under test and the incompressible file that dominates the data.
const RATE: u64 = 8 * MIB;
const BIG: u64 = 16 * MIB;

fn write_random(path: &Path, len: u64, seed: u64) {
    // xorshift: incompressible enough for any filesystem, cheap, reproducible.
    let mut x = seed | 1;
    let mut f = std::fs::File::create(path).expect("create big file");
    let mut buf = vec![0u8; MIB as usize];
    let mut left = len;
    while left > 0 {
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).expect("write big file");
        left -= n as u64;
    }
}

fn source(tmp: &Path) -> std::path::PathBuf {
    let src = tmp.join("src");
    gen_tree(
        &src,
        7,
        &GenOpts {
            dirs: 10,
            files: 60,
            max_file: 256 << 10,
            ..GenOpts::default()
        },
    )
    .expect("gen_tree");
    write_random(&src.join("big.bin"), BIG, 42);
    src
}

fn timed(sub: &str, extra: &[&str], src: &Path, dst: &Path) -> Duration {
    let t = Instant::now();
    let out = run_sub(sub, extra, src, dst);
    let took = t.elapsed();
    assert_eq!(out.status.code(), Some(0), "{sub} {extra:?}\n{}", describe(&out));
    // The mirror's record xattr on DST's root is the one allowed difference.
    let cmp = if sub == "mirror" {
        mirror_cmp()
    } else {
        CompareOpts::default()
    };
    assert_trees_equal(src, dst, &cmp, sub);
    took
}

#[test]
fn limited_copies_take_the_time_the_limit_implies() {
    let tmp = scratch("bwlimit");
    let src = source(tmp.path());
    let rate = RATE.to_string();
    // At least the big file must pass through the bucket; its first 10 ms of rate are free.
    let floor = (BIG - RATE / 100) as f64 / RATE as f64;
    let unlimited = timed("copy", &["-q", "--fsync", "none"], &src, &tmp.path().join("free"));
    let mut failures = Vec::new();
    for (engine, data) in [
        ("uring", "ring"),
        ("uring", "cfr"),
        ("sync", "ring"),
        ("sync", "cfr"),
    ] {
        let dst = tmp.path().join(format!("dst-{engine}-{data}"));
        let args = [
            "-q",
            "--fsync",
            "none",
            "--engine",
            engine,
            "--data-path",
            data,
            "--bwlimit",
            &rate,
        ];
        let took = timed("copy", &args, &src, &dst).as_secs_f64();
        // Lower bound: the token bucket cannot be beaten. Upper bound: generous, for loaded CI.
        if took < 0.95 * floor || took > 4.0 * floor + 10.0 {
            failures.push(format!(
                "{engine}/{data}: {took:.2} s, expected about {floor:.2} s"
            ));
        }
        if took < unlimited.as_secs_f64() + 0.5 * floor {
            failures.push(format!(
                "{engine}/{data}: {took:.2} s is not clearly slower than unlimited ({:.2} s)",
                unlimited.as_secs_f64()
            ));
        }
        std::fs::remove_dir_all(&dst).ok();
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn limited_mirror_takes_the_time_the_limit_implies() {
    let tmp = scratch("bwlimit-mirror");
    let src = source(tmp.path());
    let floor = (BIG - RATE / 100) as f64 / RATE as f64;
    let rate = RATE.to_string();
    let dst = tmp.path().join("dst");
    let took = timed("mirror", &["-q", "--bwlimit", &rate], &src, &dst).as_secs_f64();
    assert!(
        took >= 0.95 * floor && took <= 4.0 * floor + 10.0,
        "mirror --bwlimit: {took:.2} s, expected about {floor:.2} s"
    );
    // A no-change rerun moves no data, so the limit costs it nothing.
    let again = timed("mirror", &["-q", "--bwlimit", &rate], &src, &dst).as_secs_f64();
    assert!(
        again < floor,
        "no-change mirror took {again:.2} s under the limit"
    );
}

#[test]
fn bad_rates_are_usage_errors() {
    let tmp = scratch("bwlimit-usage");
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).expect("mkdir");
    for bad in ["0", "fast", "12Q", "100"] {
        let out = run_copy(&["--bwlimit", bad], &src, &tmp.path().join("dst"));
        assert_eq!(out.status.code(), Some(2), "--bwlimit {bad}\n{}", describe(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("bwlimit") || err.contains(bad),
            "--bwlimit {bad}: {err}"
        );
        assert!(
            !tmp.path().join("dst").exists(),
            "--bwlimit {bad} created the target"
        );
    }
}
