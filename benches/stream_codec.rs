//! What the record stream's checksums cost: CRC-32 (crc32fast, the stream's) against CRC-32C
//! (crc32c, the alternative) and BLAKE3 (file hashes, the chain) at record-header, page and
//! 1 MiB sizes; then encoding and decoding a stream of 1 MiB DATA records (the codec's whole
//! per-byte cost) against a plain memcpy of the same bytes.
//!
//! Run: `cargo bench --bench stream_codec` (GB/s, medians of 5 rounds).

use std::time::Instant;

use ringsync::stream::{
    decode_all, Decoded, Decoder, Encoder, Meta, Record, StreamHeader, HEADER_BYTES, RECORD_HEADER_BYTES,
};

const ROUND_BYTES: usize = 512 << 20;
const ROUNDS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

fn gbps(bytes: usize, f: &mut dyn FnMut()) -> f64 {
    let rates = (0..ROUNDS)
        .map(|_| {
            let t = Instant::now();
            f();
            bytes as f64 / t.elapsed().as_secs_f64() / 1e9
        })
        .collect();
    median(rates)
}

fn main() {
    let buf: Vec<u8> = (0..(4usize << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    println!("checksum     piece      GB/s");
    for piece in [24usize, 4096, 1 << 20] {
        let n = ROUND_BYTES / 8 / piece;
        type Checksum<'a> = (&'a str, &'a dyn Fn(&[u8]) -> u32);
        let algos: [Checksum; 3] = [
            ("crc32fast", &|s| crc32fast::hash(s)),
            ("crc32c", &|s| crc32c::crc32c(s)),
            ("blake3", &|s| blake3::hash(s).as_bytes()[0] as u32),
        ];
        for (name, f) in algos {
            let mut acc = 0u32;
            let r = gbps(n * piece, &mut || {
                for i in 0..n {
                    let off = (i * piece) % (buf.len() - piece);
                    acc ^= f(&buf[off..off + piece]);
                }
            });
            println!("{name:<12} {piece:>8} B {r:8.2}   ({acc:x})");
        }
    }

    // A stream of 1 MiB DATA records, encoded and then decoded (CRCs, chain, rules, copies).
    let header = StreamHeader {
        minor: 0,
        required: 0,
        optional: 0,
        stream_id: [1; 16],
        base_id: [0; 16],
        target_id: [2; 16],
        max_payload: 2 << 20,
        created_s: 0,
        resume_offset: 0,
        header_bytes: HEADER_BYTES as u32,
    };
    let file_bytes = 256usize << 20;
    let mut stream = Vec::with_capacity(file_bytes + (1 << 20));
    let encode = |stream: &mut Vec<u8>| {
        stream.clear();
        let mut e = Encoder::new(&header, stream);
        let meta = Meta {
            mode: libc::S_IFREG | 0o644,
            ..Meta::default()
        };
        e.push(
            &Record::File {
                parent: 0,
                name: b"f".to_vec(),
                meta,
                size: file_bytes as u64,
                link: 0,
            },
            stream,
        );
        for off in (0..file_bytes).step_by(1 << 20) {
            let chunk = &buf[off % (3 << 20)..off % (3 << 20) + (1 << 20)];
            e.push_data(off as u64, chunk, stream);
        }
        e.push(&Record::FileEnd { hash: [0; 32] }, stream);
        let dir = Meta {
            mode: libc::S_IFDIR | 0o755,
            ..Meta::default()
        };
        e.push(&Record::DirEnd { dir: 0, meta: dir }, stream);
        e.push(
            &Record::End {
                records: 0,
                bytes: 0,
                chain: [0; 32],
            },
            stream,
        );
    };
    let enc = gbps(file_bytes, &mut || encode(&mut stream));
    // As a receiver reads: header, payload, DATA borrowed (no copy).
    let dec = gbps(file_bytes, &mut || {
        let mut d = Decoder::new(&stream, 2 << 20).expect("valid header");
        let mut at = HEADER_BYTES;
        let mut data = 0usize;
        while !d.ended() {
            let hb: [u8; RECORD_HEADER_BYTES] =
                stream[at..at + RECORD_HEADER_BYTES].try_into().expect("24 bytes");
            let h = d.header(&hb).expect("valid header");
            let end = at + RECORD_HEADER_BYTES + h.length as usize;
            if let Some(Decoded::Data { data: b, .. }) = d
                .payload_ref(&h, &hb, &stream[at + RECORD_HEADER_BYTES..end])
                .expect("valid")
            {
                data += b.len();
            }
            at = end;
        }
        assert_eq!(data, file_bytes);
    });
    let owned = gbps(file_bytes, &mut || {
        let n = decode_all(&stream, 2 << 20).expect("valid").len();
        assert!(n > 256);
    });
    let mut copy = vec![0u8; stream.len()];
    let cpy = gbps(file_bytes, &mut || copy.copy_from_slice(&stream));
    println!(
        "\nstream of 1 MiB DATA records: encode {enc:.2} GB/s, decode {dec:.2} GB/s (into owned records: \
         {owned:.2} GB/s; memcpy of it: {cpy:.2} GB/s)"
    );
}
