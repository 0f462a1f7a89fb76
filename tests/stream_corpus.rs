//! Replays the fuzz corpora (fuzz/corpus/decode and fuzz/corpus/receive, and any crash
//! artifacts in fuzz/artifacts/) through the same checks the fuzz targets run, so `cargo test`
//! keeps every input the fuzzer found interesting. `RINGSYNC_WRITE_SEEDS=1` (re)writes the seed
//! streams the corpora start from.

use std::path::Path;

use ringsync::stream::{
    check_fuzz_input, Encoder, Meta, Record, StreamHeader, FEATURE_INCREMENTAL, FEATURE_XATTRS, HEADER_BYTES,
};

fn meta(mode: u32) -> Meta {
    Meta {
        mode,
        uid: 1,
        gid: 2,
        atime: (3, 4),
        mtime: (5, 6),
        rdev: 0,
    }
}

/// Valid streams, full and incremental, using every record type.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let header = |required| StreamHeader {
        minor: 0,
        required,
        optional: 0,
        stream_id: [1; 16],
        base_id: [0; 16],
        target_id: [2; 16],
        max_payload: 4096,
        created_s: 0,
        resume_offset: 0,
        header_bytes: HEADER_BYTES as u32,
    };
    let dir = meta(libc::S_IFDIR | 0o755);
    let end = Record::End {
        records: 0,
        bytes: 0,
        chain: [0; 32],
    };
    let full = vec![
        Record::Estimate {
            bytes: 10,
            entries: 4,
        },
        Record::Dir {
            parent: 0,
            name: b"d".to_vec(),
            meta: dir,
        },
        Record::Xattr {
            name: b"user.a".to_vec(),
            value: b"v".to_vec(),
        },
        Record::File {
            parent: 1,
            name: b"f".to_vec(),
            meta: meta(libc::S_IFREG | 0o600),
            size: 10,
            link: 1,
        },
        Record::Data {
            offset: 2,
            data: b"abc".to_vec(),
        },
        Record::Checkpoint {
            offset: 0,
            chain: [0; 32],
        },
        Record::FileEnd { hash: [3; 32] },
        Record::Link {
            parent: 0,
            name: b"g".to_vec(),
            link: 1,
        },
        Record::Symlink {
            parent: 1,
            name: b"s".to_vec(),
            meta: meta(libc::S_IFLNK | 0o777),
            link: 0,
            target: b"../g".to_vec(),
        },
        Record::Special {
            parent: 1,
            name: b"p".to_vec(),
            meta: meta(libc::S_IFIFO | 0o644),
            link: 0,
        },
        Record::DirEnd { dir: 1, meta: dir },
        Record::DirEnd { dir: 0, meta: dir },
        end.clone(),
    ];
    let incremental = vec![
        Record::Attrs {
            parent: 0,
            name: b"a".to_vec(),
            meta: meta(libc::S_IFREG | 0o644),
        },
        Record::Rename {
            from_dir: 0,
            from: b"a".to_vec(),
            to_dir: ringsync::stream::HOLD_DIR,
            to: b"1".to_vec(),
        },
        Record::Rename {
            from_dir: ringsync::stream::HOLD_DIR,
            from: b"1".to_vec(),
            to_dir: 0,
            to: b"b".to_vec(),
        },
        Record::Unlink {
            parent: 0,
            name: b"c".to_vec(),
        },
        Record::DirEnd { dir: 0, meta: dir },
        end,
    ];
    let encode = |h: StreamHeader, records: &[Record]| {
        let mut out = Vec::new();
        let mut e = Encoder::new(&h, &mut out);
        for r in records {
            e.push(r, &mut out);
        }
        out
    };
    vec![
        ("seed-full", encode(header(FEATURE_XATTRS), &full)),
        (
            "seed-incremental",
            encode(header(FEATURE_INCREMENTAL), &incremental),
        ),
    ]
}

fn replay(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in entries {
        let p = e.unwrap().path();
        let data = std::fs::read(&p).unwrap();
        let r = std::panic::catch_unwind(|| check_fuzz_input(&data));
        assert!(r.is_ok(), "corpus input {} panics the decoder", p.display());
        n += 1;
    }
    n
}

#[test]
fn the_fuzz_corpus_replays_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let corpus = root.join("corpus/decode");
    if std::env::var_os("RINGSYNC_WRITE_SEEDS").is_some() {
        std::fs::create_dir_all(&corpus).unwrap();
        for (name, bytes) in seeds() {
            std::fs::write(corpus.join(name), bytes).unwrap();
        }
    }
    for (_, bytes) in seeds() {
        check_fuzz_input(&bytes);
        assert!(ringsync::stream::decode_all(&bytes, 1 << 20).is_ok());
    }
    let n = replay(&corpus) + replay(&root.join("artifacts/decode"));
    assert!(
        n >= 2,
        "the corpus in {} is missing (seeds alone are 2 files)",
        corpus.display()
    );
}

/// Streams `ringsync send` makes of a small tree holding every kind of entry.
fn receive_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("d/e")).unwrap();
    std::fs::write(src.join("d/f"), b"hello").unwrap();
    std::fs::write(src.join("d/e/g"), vec![7u8; 70_000]).unwrap();
    std::fs::hard_link(src.join("d/f"), src.join("h")).unwrap();
    std::os::unix::fs::symlink("d/f", src.join("s")).unwrap();
    let f = std::fs::File::create(src.join("sparse")).unwrap();
    f.set_len(1 << 20).unwrap();
    drop(f);
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringsync"))
        .arg("send")
        .arg("-q")
        .arg(&src)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "send: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut v: Vec<(&'static str, Vec<u8>)> = seeds();
    v.push(("seed-send", out.stdout));
    v
}

fn replay_receive(dir: &Path, scratch: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in entries {
        let p = e.unwrap().path();
        let data = std::fs::read(&p).unwrap();
        let r = std::panic::catch_unwind(|| ringsync::receive::check_fuzz_input(&data, scratch));
        assert!(
            r.is_ok(),
            "corpus input {} panics receive or escapes DST",
            p.display()
        );
        n += 1;
    }
    n
}

#[test]
fn the_receive_fuzz_corpus_replays_without_a_panic_or_an_escape() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let corpus = root.join("corpus/receive");
    let seeds = receive_seeds();
    if std::env::var_os("RINGSYNC_WRITE_SEEDS").is_some() {
        std::fs::create_dir_all(&corpus).unwrap();
        for (name, bytes) in &seeds {
            std::fs::write(corpus.join(name), bytes).unwrap();
        }
    }
    let scratch = tempfile::tempdir().unwrap();
    for (_, bytes) in &seeds {
        ringsync::receive::check_fuzz_input(bytes, scratch.path());
    }
    let n = replay_receive(&corpus, scratch.path())
        + replay_receive(&root.join("artifacts/receive"), scratch.path());
    assert!(
        n >= 3,
        "the corpus in {} is missing (seeds alone are 3 files)",
        corpus.display()
    );
}
