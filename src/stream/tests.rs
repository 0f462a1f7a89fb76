//! The codec against docs/stream.md: round trips, and every kind of damage a reader must catch.

use super::*;

const CAP: u32 = PAYLOAD_BYTES_CAP;

fn header(required: u64) -> StreamHeader {
    StreamHeader {
        minor: 0,
        required,
        optional: OPT_ESTIMATE,
        stream_id: [7; 16],
        base_id: [0; 16],
        target_id: [9; 16],
        max_payload: 1 << 16,
        created_s: 1_764_763_200,
        resume_offset: 0,
        header_bytes: HEADER_BYTES as u32,
    }
}

fn meta(mode: u32) -> Meta {
    Meta {
        mode,
        uid: 1000,
        gid: 100,
        atime: (1_700_000_000, 123),
        mtime: (-5, 999_999_999),
        rdev: 0,
    }
}

const DIR: u32 = libc::S_IFDIR | 0o755;
const REG: u32 = libc::S_IFREG | 0o644;
const LNK: u32 = libc::S_IFLNK | 0o777;
const FIFO: u32 = libc::S_IFIFO | 0o600;

/// A full stream using every record type a full stream may hold.
fn full_records() -> Vec<Record> {
    let data = b"hello, world".to_vec();
    vec![
        Record::Estimate {
            bytes: 12,
            entries: 5,
        },
        Record::Xattr {
            name: b"user.root".to_vec(),
            value: b"r".to_vec(),
        },
        Record::Dir {
            parent: 0,
            name: b"d".to_vec(),
            meta: meta(DIR),
        },
        Record::Xattr {
            name: b"user.k".to_vec(),
            value: vec![0, 1, 2],
        },
        Record::File {
            parent: 1,
            name: b"f".to_vec(),
            meta: meta(REG),
            size: 100,
            link: 1,
        },
        Record::Xattr {
            name: b"user.f".to_vec(),
            value: Vec::new(),
        },
        Record::Data {
            offset: 0,
            data: data.clone(),
        },
        Record::Checkpoint {
            offset: 0,
            chain: [0; 32],
        },
        Record::Data {
            offset: 90,
            data: data[..10].to_vec(),
        },
        Record::FileEnd { hash: [5; 32] },
        Record::Link {
            parent: 0,
            name: "żółw\n".as_bytes().to_vec(),
            link: 1,
        },
        Record::Symlink {
            parent: 1,
            name: b"l".to_vec(),
            meta: meta(LNK),
            link: 0,
            target: b"../f".to_vec(),
        },
        Record::Special {
            parent: 1,
            name: b"p".to_vec(),
            meta: meta(FIFO),
            link: 0,
        },
        Record::DirEnd {
            dir: 1,
            meta: meta(DIR),
        },
        Record::DirEnd {
            dir: 0,
            meta: meta(DIR),
        },
        Record::End {
            records: 0,
            bytes: 0,
            chain: [0; 32],
        },
    ]
}

fn encode(h: &StreamHeader, records: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut e = Encoder::new(h, &mut out);
    for r in records {
        e.push(r, &mut out);
    }
    out
}

fn full_stream() -> Vec<u8> {
    encode(&header(FEATURE_XATTRS), &full_records())
}

fn decode_err(bytes: &[u8]) -> StreamError {
    decode_all(bytes, CAP).expect_err("a damaged stream must not decode")
}

#[test]
fn round_trip_every_record_type() {
    let bytes = full_stream();
    assert_eq!(&bytes[..8], b"\x89RSY\r\n\x1a\n");
    let got = decode_all(&bytes, CAP).unwrap();
    let want = full_records();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        match (g, w) {
            // Filled in by the encoder: offsets and chains checked by the decoder itself.
            (Record::Checkpoint { .. }, Record::Checkpoint { .. })
            | (Record::End { .. }, Record::End { .. }) => {}
            _ => assert_eq!(g, w),
        }
    }
    let h = StreamHeader::decode(&bytes, CAP).unwrap();
    assert_eq!(h, header(FEATURE_XATTRS));
}

#[test]
fn incremental_records_round_trip() {
    let records = vec![
        Record::Attrs {
            parent: 0,
            name: b"a".to_vec(),
            meta: meta(REG),
        },
        Record::Rename {
            from_dir: 0,
            from: b"a".to_vec(),
            to_dir: HOLD_DIR,
            to: b"1".to_vec(),
        },
        Record::Rename {
            from_dir: HOLD_DIR,
            from: b"1".to_vec(),
            to_dir: 0,
            to: b"b".to_vec(),
        },
        Record::Unlink {
            parent: 0,
            name: b"c".to_vec(),
        },
        Record::DirEnd {
            dir: 0,
            meta: meta(DIR),
        },
        Record::End {
            records: 0,
            bytes: 0,
            chain: [0; 32],
        },
    ];
    let got = decode_all(&encode(&header(FEATURE_INCREMENTAL), &records), CAP).unwrap();
    assert_eq!(got[..5], records[..5]);
    // The same records in a full stream are refused.
    let e = decode_err(&encode(&header(0), &records));
    assert!(e.what.contains("not incremental"), "{e}");
    // A RENAME has the holding directory on exactly one side.
    for (from_dir, to_dir) in [(0, 0), (HOLD_DIR, HOLD_DIR)] {
        let mut r = records.clone();
        r[1] = Record::Rename {
            from_dir,
            from: b"a".to_vec(),
            to_dir,
            to: b"b".to_vec(),
        };
        let e = decode_err(&encode(&header(FEATURE_INCREMENTAL), &r));
        assert!(e.what.contains("holding directory"), "{e}");
    }
    // The holding directory is for RENAME only.
    let mut r = records.clone();
    r[3] = Record::Unlink {
        parent: HOLD_DIR,
        name: b"c".to_vec(),
    };
    let e = decode_err(&encode(&header(FEATURE_INCREMENTAL), &r));
    assert!(e.what.contains("never made"), "{e}");
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = full_stream();
    for len in 0..bytes.len() {
        let e = decode_err(&bytes[..len]);
        assert!(
            e.what.contains("truncated") || e.what.contains("END missing"),
            "at {len}: {e}"
        );
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(decode_err(&longer).what.contains("after END"));
}

#[test]
fn every_single_bit_flip_is_caught() {
    let bytes = full_stream();
    for bit in 0..bytes.len() * 8 {
        let mut b = bytes.clone();
        b[bit / 8] ^= 1 << (bit % 8);
        assert!(decode_all(&b, CAP).is_err(), "flipping bit {bit} went unnoticed");
    }
}

#[test]
fn header_checks_in_order() {
    let good = header(0).encode();
    let with = |f: &dyn Fn(&mut [u8; HEADER_BYTES])| {
        let mut b = good;
        f(&mut b);
        // Re-seal the CRC so the field itself is what is checked.
        let c = crc(&b[..124]);
        b[124..].copy_from_slice(&c.to_le_bytes());
        StreamHeader::decode(&b, CAP)
    };
    // Text-mode damage: CR LF turned into LF.
    let mut text = good.to_vec();
    text.remove(4);
    let e = StreamHeader::decode(&text, CAP).unwrap_err();
    assert!(e.what.contains("text-mode"), "{e}");
    let e = StreamHeader::decode(b"#!/bin/sh\necho hello\n...........................................................................................................................", CAP)
        .unwrap_err();
    assert!(e.what.contains("bad magic"), "{e}");
    let mut b = good;
    b[40] ^= 1;
    assert!(StreamHeader::decode(&b, CAP).unwrap_err().what.contains("CRC"));
    // A zeroed CRC is a CRC like any other.
    let mut b = good;
    b[124..].fill(0);
    assert!(StreamHeader::decode(&b, CAP).unwrap_err().what.contains("CRC"));
    assert!(with(&|b| b[8] = 2).unwrap_err().what.contains("version 2.0"));
    assert!(with(&|b| b[16] = 1 << 5)
        .unwrap_err()
        .what
        .contains("required features"));
    assert!(
        with(&|b| b[24] = 0xff).is_ok(),
        "unknown optional features are ignored"
    );
    assert!(with(&|b| b[80..84].fill(0))
        .unwrap_err()
        .what
        .contains("max payload"));
    assert!(with(&|b| b[80..84].copy_from_slice(&(CAP + 1).to_le_bytes())).is_err());
    assert!(with(&|b| b[100] = 1).unwrap_err().what.contains("reserved"));
    assert!(with(&|b| b[12..16].copy_from_slice(&5000u32.to_le_bytes())).is_err());
    // A reader's own cap below the stream's max payload refuses it.
    assert!(StreamHeader::decode(&good, 4096).is_err());
}

#[test]
fn a_longer_minor_version_header_is_skipped_into() {
    // A 1.1 header of 160 bytes: its CRC at the end, the extra fields unknown to 1.0.
    let mut b = header(0).encode().to_vec();
    b.truncate(124);
    b[10] = 1;
    b[12..16].copy_from_slice(&160u32.to_le_bytes());
    b.extend_from_slice(&[0xab; 32]);
    let c = crc(&b);
    b.extend_from_slice(&c.to_le_bytes());
    let h = StreamHeader::decode(&b, CAP).unwrap();
    assert_eq!((h.minor, h.header_bytes), (1, 160));
}

/// A stream of `records` where record `k` (1-based) is replaced by raw parts.
fn with_raw(k: usize, rtype: u16, flags: u16, payload: &[u8]) -> Vec<u8> {
    let h = header(FEATURE_XATTRS);
    let mut out = Vec::new();
    let mut e = Encoder::new(&h, &mut out);
    for (i, r) in full_records().iter().enumerate() {
        if i + 1 == k {
            e.push_raw(rtype, flags, payload, &mut out);
        } else {
            e.push(r, &mut out);
        }
    }
    out
}

#[test]
fn record_header_damage() {
    let bytes = full_stream();
    let first = HEADER_BYTES;
    // Length 0xFFFFFFFF with a valid header CRC: refused before any payload is read.
    let mut b = bytes.clone();
    b[first + 4..first + 8].copy_from_slice(&u32::MAX.to_le_bytes());
    let c = crc(&b[first..first + 20]);
    b[first + 20..first + 24].copy_from_slice(&c.to_le_bytes());
    let e = decode_err(&b);
    assert!(e.what.contains("over the stream's max"), "{e}");
    // Zeroed CRC fields.
    let mut b = bytes.clone();
    b[first + 16..first + 24].fill(0);
    assert!(decode_err(&b).what.contains("CRC"));
    // Unknown flags.
    let mut b = bytes.clone();
    b[first + 2] = 2;
    let c = crc(&b[first..first + 20]);
    b[first + 20..first + 24].copy_from_slice(&c.to_le_bytes());
    assert!(decode_err(&b).what.contains("flags"));
}

#[test]
fn sequence_gap_duplicate_reorder_and_splice() {
    let bytes = full_stream();
    let records = decode_all(&bytes, CAP).unwrap();
    // Cut out record 3 (the DIR) whole: the next sequence is 4 where 3 is due.
    let offsets = record_offsets(&bytes);
    let mut gap = bytes[..offsets[2]].to_vec();
    gap.extend_from_slice(&bytes[offsets[3]..]);
    assert!(decode_err(&gap).what.contains("sequence 4 where 3"));
    // Record 2 twice.
    let mut dup = bytes[..offsets[2]].to_vec();
    dup.extend_from_slice(&bytes[offsets[1]..]);
    assert!(decode_err(&dup).what.contains("sequence 2 where 3"));
    // Records 3 and 4 swapped.
    let mut swap = bytes[..offsets[2]].to_vec();
    swap.extend_from_slice(&bytes[offsets[3]..offsets[4]]);
    swap.extend_from_slice(&bytes[offsets[2]..offsets[3]]);
    swap.extend_from_slice(&bytes[offsets[4]..]);
    assert!(decode_err(&swap).what.contains("sequence"));
    // A record from another stream with the same sequence number: the chain catches it.
    let mut other_h = header(FEATURE_XATTRS);
    other_h.stream_id = [8; 16];
    let mut recs = full_records();
    if let Record::Data { data, .. } = &mut recs[6] {
        data[0] ^= 0x20;
    }
    let other = encode(&other_h, &recs);
    let other_offsets = record_offsets(&other);
    let mut spliced = bytes[..offsets[6]].to_vec();
    spliced.extend_from_slice(&other[other_offsets[6]..other_offsets[7]]);
    spliced.extend_from_slice(&bytes[offsets[7]..]);
    let e = decode_err(&spliced);
    assert!(e.what.contains("chain"), "{e}");
    assert_eq!(records.len(), 16);
}

/// Offsets of each record in a stream (walking the length fields; the stream is trusted).
fn record_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut at = HEADER_BYTES;
    let mut out = Vec::new();
    while at < bytes.len() {
        out.push(at);
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        at += RECORD_HEADER_BYTES + len;
    }
    out
}

fn name_payload(parent: u64, name: &[u8], tail: &[u8]) -> Vec<u8> {
    let mut p = parent.to_le_bytes().to_vec();
    p.extend_from_slice(&(name.len() as u16).to_le_bytes());
    p.extend_from_slice(name);
    p.extend_from_slice(tail);
    p
}

fn meta_bytes(mode: u32) -> Vec<u8> {
    let mut p = Vec::new();
    Record::DirEnd {
        dir: 0,
        meta: meta(mode),
    }
    .encode_payload(&mut p);
    p[8..].to_vec()
}

#[test]
fn bad_names_are_refused() {
    let long = vec![b'a'; 256];
    for name in [&b""[..], b".", b"..", b"a/b", b"a\0b", &long] {
        // Record 3 is the DIR.
        let b = with_raw(
            3,
            RecordType::Dir as u16,
            0,
            &name_payload(0, name, &meta_bytes(DIR)),
        );
        let e = decode_err(&b);
        assert_eq!(e.seq, 3, "{e}");
        assert!(
            e.what.contains("name"),
            "{:?}: {e}",
            String::from_utf8_lossy(name)
        );
    }
    let ok = with_raw(
        3,
        RecordType::Dir as u16,
        0,
        &name_payload(0, &[b'a'; 255], &meta_bytes(DIR)),
    );
    assert!(decode_all(&ok, CAP).is_ok());
}

#[test]
fn payload_fields_are_bounded() {
    // A name length running past the payload.
    let mut p = 0u64.to_le_bytes().to_vec();
    p.extend_from_slice(&u16::MAX.to_le_bytes());
    p.extend_from_slice(b"abc");
    assert!(decode_err(&with_raw(3, RecordType::Dir as u16, 0, &p))
        .what
        .contains("too short"));
    // Bytes left over after the fields.
    let mut p = name_payload(0, b"d", &meta_bytes(DIR));
    p.push(0);
    assert!(decode_err(&with_raw(3, RecordType::Dir as u16, 0, &p))
        .what
        .contains("after the record"));
    // An xattr value over 64 KiB, and one claiming more than the payload holds.
    let mut p = vec![6, 0];
    p.extend_from_slice(b"user.k");
    p.extend_from_slice(&(65537u32).to_le_bytes());
    assert!(decode_err(&with_raw(4, RecordType::Xattr as u16, 0, &p))
        .what
        .contains("xattr value"));
    let mut p = vec![6, 0];
    p.extend_from_slice(b"user.k");
    p.extend_from_slice(&(100u32).to_le_bytes());
    assert!(decode_err(&with_raw(4, RecordType::Xattr as u16, 0, &p))
        .what
        .contains("too short"));
    // Nanoseconds out of range; a DIR whose mode says file.
    let mut m = meta_bytes(DIR);
    m[20..24].copy_from_slice(&1_000_000_000u32.to_le_bytes());
    assert!(decode_err(&with_raw(
        3,
        RecordType::Dir as u16,
        0,
        &name_payload(0, b"d", &m)
    ))
    .what
    .contains("nanoseconds"));
    assert!(decode_err(&with_raw(
        3,
        RecordType::Dir as u16,
        0,
        &name_payload(0, b"d", &meta_bytes(REG))
    ))
    .what
    .contains("mode"));
    // Symlink target with a NUL.
    let mut tail = meta_bytes(LNK);
    tail.extend_from_slice(&0u64.to_le_bytes()); // link id
    tail.extend_from_slice(&3u16.to_le_bytes());
    tail.extend_from_slice(b"a\0b");
    assert!(decode_err(&with_raw(
        12,
        RecordType::Symlink as u16,
        0,
        &name_payload(1, b"l", &tail)
    ))
    .what
    .contains("NUL"));
}

#[test]
fn unknown_types_skip_unless_must_understand() {
    let skip = with_raw(1, 999, 0, b"whatever");
    let got = decode_all(&skip, CAP).unwrap();
    assert_eq!(got.len(), full_records().len() - 1);
    let e = decode_err(&with_raw(1, 999, FLAG_MUST_UNDERSTAND, b"whatever"));
    assert!(e.what.contains("must-understand"), "{e}");
}

/// The stream `records` with the header flags of `full_stream`, decoded.
fn check(records: Vec<Record>) -> Result<Vec<Record>, StreamError> {
    decode_all(&encode(&header(FEATURE_XATTRS), &records), CAP)
}

fn end() -> Record {
    Record::End {
        records: 0,
        bytes: 0,
        chain: [0; 32],
    }
}

fn root_end() -> Record {
    Record::DirEnd {
        dir: 0,
        meta: meta(DIR),
    }
}

fn file(parent: u64, name: &str, size: u64, link: u64) -> Record {
    Record::File {
        parent,
        name: name.as_bytes().to_vec(),
        meta: meta(REG),
        size,
        link,
    }
}

fn data(offset: u64, n: usize) -> Record {
    Record::Data {
        offset,
        data: vec![7; n],
    }
}

fn file_end() -> Record {
    Record::FileEnd { hash: [0; 32] }
}

#[test]
fn structural_rules() {
    let rule = |records: Vec<Record>| check(records).unwrap_err().what;
    // DATA outside a file, past the size, overlapping, overflowing.
    assert!(rule(vec![data(0, 1)]).contains("outside a file"));
    assert!(rule(vec![file(0, "f", 4, 0), data(2, 3)]).contains("past the file's size"));
    assert!(rule(vec![file(0, "f", 9, 0), data(0, 4), data(3, 2)]).contains("overlaps"));
    assert!(rule(vec![file(0, "f", 9, 0), data(u64::MAX - 1, 4)]).contains("overflows"));
    // An entry while a file is open; FILE_END without FILE.
    assert!(rule(vec![file(0, "f", 0, 0), file(0, "g", 0, 0)]).contains("FILE_END missing"));
    assert!(rule(vec![file_end()]).contains("without a FILE"));
    // Directories that were never made, or already ended; the root ended too early.
    assert!(rule(vec![file(3, "f", 0, 0)]).contains("never made"));
    let d = Record::Dir {
        parent: 0,
        name: b"d".to_vec(),
        meta: meta(DIR),
    };
    let d_end = Record::DirEnd {
        dir: 1,
        meta: meta(DIR),
    };
    assert!(rule(vec![d.clone(), d_end.clone(), file(1, "f", 0, 0)]).contains("already ended"));
    assert!(rule(vec![root_end(), file(0, "f", 0, 0)]).contains("after the root"));
    assert!(rule(vec![d, root_end(), end()]).contains("directory 1 was never ended"));
    // Links: to an id no finished file has; ids out of order.
    assert!(rule(vec![Record::Link {
        parent: 0,
        name: b"l".to_vec(),
        link: 1
    }])
    .contains("link id 1"));
    assert!(rule(vec![file(0, "f", 0, 2)]).contains("link id 2 where 1"));
    // XATTR not after an entry, and after a file's data.
    let x = Record::Xattr {
        name: b"user.x".to_vec(),
        value: vec![],
    };
    assert!(rule(vec![file(0, "f", 1, 0), data(0, 1), x.clone()]).contains("XATTR"));
    assert!(rule(vec![file(0, "f", 0, 0), file_end(), x]).contains("XATTR"));
    // Too many directories open at once (a chain 4096 deep below the root).
    let deep: Vec<Record> = (0..rules::OPEN_DIRS_MAX as u64)
        .map(|i| Record::Dir {
            parent: i,
            name: b"d".to_vec(),
            meta: meta(DIR),
        })
        .collect();
    assert!(rule(deep).contains("open at once"));
    // END with a directory never ended.
    assert!(rule(vec![end()]).contains("never ended"));
    // A good one.
    assert!(check(vec![
        file(0, "f", 5, 1),
        data(1, 2),
        data(3, 2),
        file_end(),
        root_end(),
        end()
    ])
    .is_ok());
}

#[test]
fn checkpoints_check_offset_and_chain() {
    let bytes = full_stream();
    let mut d = Decoder::new(&bytes, CAP).unwrap();
    let mut at = HEADER_BYTES;
    while !d.ended() {
        let hb: [u8; RECORD_HEADER_BYTES] = bytes[at..at + RECORD_HEADER_BYTES].try_into().unwrap();
        let h = d.header(&hb).unwrap();
        let p = &bytes[at + RECORD_HEADER_BYTES..at + RECORD_HEADER_BYTES + h.length as usize];
        d.payload(&h, &hb, p).unwrap();
        at += RECORD_HEADER_BYTES + h.length as usize;
    }
    let (offset, seq) = d.last_checkpoint.expect("the stream has a checkpoint");
    assert_eq!(seq, 8);
    assert_eq!(offset as usize, record_offsets(&bytes)[7]);
    // A checkpoint naming the wrong offset (re-sealed CRCs: only the value is wrong).
    let mut b = bytes.clone();
    let at = record_offsets(&bytes)[7];
    b[at + 24] ^= 1;
    let c = crc(&b[at + 24..at + 24 + 40]);
    b[at + 16..at + 20].copy_from_slice(&c.to_le_bytes());
    let hc = crc(&b[at..at + 20]);
    b[at + 20..at + 24].copy_from_slice(&hc.to_le_bytes());
    assert!(decode_err(&b).what.contains("checkpoint says offset"));
}

#[test]
fn reseal_keeps_a_valid_stream_and_repairs_checksums_only() {
    let bytes = full_stream();
    assert_eq!(reseal(&bytes), bytes);
    // A changed DATA byte: the CRC (and chain) mismatch go away, the content change stays.
    let at = record_offsets(&bytes)[6] + RECORD_HEADER_BYTES + 8;
    let mut b = bytes.clone();
    b[at] ^= 1;
    assert!(decode_all(&b, CAP).is_err());
    let fixed = reseal(&b);
    assert_eq!(fixed[at], b[at]);
    assert!(decode_all(&fixed, CAP).is_ok());
    // A bad name is still refused once its checksums are right.
    let at = record_offsets(&bytes)[2] + RECORD_HEADER_BYTES + 10;
    let mut b = bytes.clone();
    b[at] = b'/';
    assert!(decode_all(&reseal(&b), CAP).unwrap_err().what.contains("name"));
}

#[test]
fn streamed_data_buffers_decode_as_in_memory_under_every_bit_flip() {
    // The reader takes DATA payloads in two parts (offset field, then the data into a buffer of
    // its own); it must accept and refuse exactly what the in-memory decoder does.
    let bytes = full_stream();
    check_decoders_agree(&bytes);
    for bit in 0..bytes.len() * 8 {
        let mut b = bytes.clone();
        b[bit / 8] ^= 1 << (bit % 8);
        check_decoders_agree(&b);
    }
    for len in 0..bytes.len() {
        check_decoders_agree(&bytes[..len]);
    }
}
