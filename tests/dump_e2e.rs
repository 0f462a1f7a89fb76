//! `ringsync dump` on streams made with the codec's encoder, whole and damaged.

mod common;

use std::process::{Command, Stdio};

use common::*;
use ringsync::stream::{
    Encoder, Meta, Record, StreamHeader, FEATURE_XATTRS, HEADER_BYTES, RECORD_HEADER_BYTES,
};

fn meta(mode: u32) -> Meta {
    Meta {
        mode,
        uid: 0,
        gid: 0,
        atime: (1_700_000_000, 5),
        mtime: (1_700_000_001, 6),
        rdev: 0,
    }
}

/// A small stream: a directory, a file in two DATA records with a checkpoint between them, a
/// symlink, the root's end. Returns the bytes and each record's offset.
fn stream() -> (Vec<u8>, Vec<usize>) {
    let h = StreamHeader {
        minor: 0,
        required: FEATURE_XATTRS,
        optional: 0,
        stream_id: [1; 16],
        base_id: [0; 16],
        target_id: [2; 16],
        max_payload: 1 << 20,
        created_s: 0,
        resume_offset: 0,
        header_bytes: HEADER_BYTES as u32,
    };
    let content = b"0123456789".repeat(100);
    let records = vec![
        Record::Dir {
            parent: 0,
            name: b"new\nline".to_vec(),
            meta: meta(libc::S_IFDIR | 0o755),
        },
        Record::File {
            parent: 1,
            name: b"f".to_vec(),
            meta: meta(libc::S_IFREG | 0o644),
            size: 1000,
            link: 0,
        },
        Record::Data {
            offset: 0,
            data: content[..500].to_vec(),
        },
        Record::Checkpoint {
            offset: 0,
            chain: [0; 32],
        },
        Record::Data {
            offset: 500,
            data: content[500..].to_vec(),
        },
        Record::FileEnd {
            hash: *blake3::hash(&content).as_bytes(),
        },
        Record::Symlink {
            parent: 1,
            name: b"l".to_vec(),
            meta: meta(libc::S_IFLNK | 0o777),
            link: 0,
            target: b"f".to_vec(),
        },
        Record::DirEnd {
            dir: 1,
            meta: meta(libc::S_IFDIR | 0o755),
        },
        Record::DirEnd {
            dir: 0,
            meta: meta(libc::S_IFDIR | 0o700),
        },
        Record::End {
            records: 0,
            bytes: 0,
            chain: [0; 32],
        },
    ];
    let mut out = Vec::new();
    let mut offsets = Vec::new();
    let mut e = Encoder::new(&h, &mut out);
    for r in &records {
        offsets.push(out.len());
        e.push(r, &mut out);
    }
    (out, offsets)
}

fn dump(args: &[&str], input: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut c = Command::new(bin())
        .arg("dump")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // dump may stop reading at a defect: a broken pipe here is fine.
    let _ = c.stdin.take().unwrap().write_all(input);
    c.wait_with_output().unwrap()
}

#[test]
fn a_whole_stream_is_listed_and_verified() {
    let (bytes, offsets) = stream();
    let out = dump(&[], &bytes);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), offsets.len() + 1, "{text}");
    let types: Vec<&str> = lines.iter().map(|l| l.split('\t').nth(2).unwrap()).collect();
    assert_eq!(
        types,
        [
            "HEADER",
            "DIR",
            "FILE",
            "DATA",
            "CHECKPOINT",
            "DATA",
            "FILE_END",
            "SYMLINK",
            "DIR_END",
            "DIR_END",
            "END"
        ]
    );
    for (l, off) in lines[1..].iter().zip(&offsets) {
        assert_eq!(l.split('\t').nth(1).unwrap(), off.to_string(), "{l}");
    }
    assert!(lines[1].contains("name=new\\x0aline"), "{}", lines[1]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("verified"));
    // The file form, and JSON.
    let tmp = scratch("dump");
    let f = tmp.path().join("s.stream");
    std::fs::write(&f, &bytes).unwrap();
    let out = Command::new(bin())
        .args(["dump", "--json"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let json = String::from_utf8(out.stdout).unwrap();
    let json: Vec<&str> = json.lines().collect();
    assert_eq!(json.len(), lines.len());
    for l in &json {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(v["seq"].is_u64() && v["type"].is_string(), "{l}");
    }
    // Every record's position, as the encoder put it, under "at" (a DATA record's own
    // "offset", its place in the file, does not hide it).
    for (l, off) in json[1..].iter().zip(&offsets) {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["at"].as_u64(), Some(*off as u64), "{l}");
        if v["type"] == "DATA" {
            assert!(v["offset"].is_string(), "{l}");
        }
    }
}

#[test]
fn truncation_names_the_last_good_checkpoint() {
    let (bytes, offsets) = stream();
    // At every record boundary, inside every record header, inside the stream header.
    let mut cuts: Vec<usize> = offsets
        .iter()
        .flat_map(|o| [*o, o + RECORD_HEADER_BYTES / 2])
        .collect();
    cuts.extend([0, 5, 100]);
    for cut in cuts {
        let out = dump(&[], &bytes[..cut]);
        assert_eq!(out.status.code(), Some(1), "cut at {cut}: {}", describe(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("truncated"), "cut at {cut}: {err}");
        // Record 4 (at offsets[3]) is the checkpoint; it verified once the cut is past it.
        if cut >= offsets[4] {
            assert!(
                err.contains("last good checkpoint: record 4"),
                "cut at {cut}: {err}"
            );
        } else {
            assert!(err.contains("no checkpoint"), "cut at {cut}: {err}");
        }
    }
}

#[test]
fn damage_is_reported_with_sequence_and_offset() {
    let (bytes, offsets) = stream();
    // A byte of the second DATA's payload: its CRC (record 5).
    let mut b = bytes.clone();
    b[offsets[4] + RECORD_HEADER_BYTES + 20] ^= 0x40;
    let out = dump(&[], &b);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("record 5: payload CRC mismatch") && err.contains(&format!("at offset {}", offsets[4])),
        "{err}"
    );
    // Not a stream at all; text-mode damage; trailing garbage.
    let out = dump(&[], b"hello, this is not a stream at all, but long enough to be read as one............................................................................................");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a ringsync stream"));
    let mut text = bytes.clone();
    text.remove(4);
    let out = dump(&[], &text);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("text-mode"),
        "{}",
        describe(&out)
    );
    let mut longer = bytes.clone();
    longer.extend_from_slice(b"junk");
    let out = dump(&[], &longer);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("after END"),
        "{}",
        describe(&out)
    );
}

#[test]
fn random_bit_flips_never_verify() {
    use rand::{Rng, SeedableRng};
    let (bytes, _) = stream();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0xb17);
    for _ in 0..200 {
        let bit = rng.gen_range(0..bytes.len() * 8);
        let mut b = bytes.clone();
        b[bit / 8] ^= 1 << (bit % 8);
        let out = dump(&[], &b);
        assert_eq!(
            out.status.code(),
            Some(1),
            "bit {bit} flipped: {}",
            describe(&out)
        );
    }
}
