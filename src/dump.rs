//! `ringsync dump [FILE]`: one line per record, every CRC, the chain and END verified; a
//! defect is reported with its offset and sequence, and the last good checkpoint.
//!
//! Must not: write anything but its listing.

use std::io::Write;
use std::path::Path;

use crate::diff::escape;
use crate::stream::{Meta, Record, StreamHeader, PAYLOAD_BYTES_CAP};
use crate::stream_io::{ReadError, StreamReader};

/// Exit statuses of `dump`.
pub mod exit {
    pub const OK: i32 = 0;
    /// The stream is damaged, truncated or breaks a rule (or cannot be read).
    pub const BAD: i32 = 1;
}

use crate::stream::hex;

fn time((s, ns): (i64, u32)) -> String {
    format!("{s}.{ns:09}")
}

/// `key=value` fields of a record, in order; names escaped as `diff` escapes paths.
fn fields(r: &Record) -> Vec<(&'static str, String)> {
    let meta = |m: &Meta, out: &mut Vec<(&'static str, String)>| {
        out.push(("mode", format!("{:o}", m.mode)));
        out.push(("uid", m.uid.to_string()));
        out.push(("gid", m.gid.to_string()));
        out.push(("atime", time(m.atime)));
        out.push(("mtime", time(m.mtime)));
        if m.rdev != 0 {
            out.push(("rdev", format!("{:#x}", m.rdev)));
        }
    };
    let mut f = Vec::new();
    match r {
        Record::Estimate { bytes, entries } => {
            f.push(("bytes", bytes.to_string()));
            f.push(("entries", entries.to_string()));
        }
        Record::Special {
            parent,
            name,
            meta: m,
            link,
        } => {
            f.push(("parent", parent.to_string()));
            f.push(("name", escape(name)));
            if *link != 0 {
                f.push(("link", link.to_string()));
            }
            meta(m, &mut f);
        }
        Record::Dir {
            parent,
            name,
            meta: m,
        }
        | Record::Attrs {
            parent,
            name,
            meta: m,
        } => {
            f.push(("parent", parent.to_string()));
            f.push(("name", escape(name)));
            meta(m, &mut f);
        }
        Record::DirEnd { dir, meta: m } => {
            f.push(("dir", dir.to_string()));
            meta(m, &mut f);
        }
        Record::File {
            parent,
            name,
            meta: m,
            size,
            link,
        } => {
            f.push(("parent", parent.to_string()));
            f.push(("name", escape(name)));
            f.push(("size", size.to_string()));
            if *link != 0 {
                f.push(("link", link.to_string()));
            }
            meta(m, &mut f);
        }
        Record::Data { offset, data } => {
            f.push(("offset", offset.to_string()));
            f.push(("len", data.len().to_string()));
        }
        Record::FileEnd { hash } => f.push(("blake3", hex(hash))),
        Record::Symlink {
            parent,
            name,
            meta: m,
            link,
            target,
        } => {
            f.push(("parent", parent.to_string()));
            f.push(("name", escape(name)));
            if *link != 0 {
                f.push(("link", link.to_string()));
            }
            f.push(("target", escape(target)));
            meta(m, &mut f);
        }
        Record::Link { parent, name, link } => {
            f.push(("parent", parent.to_string()));
            f.push(("name", escape(name)));
            f.push(("link", link.to_string()));
        }
        Record::Xattr { name, value } => {
            f.push(("name", escape(name)));
            f.push(("len", value.len().to_string()));
        }
        Record::Rename {
            from_dir,
            from,
            to_dir,
            to,
        } => {
            f.push(("from_dir", from_dir.to_string()));
            f.push(("from", escape(from)));
            f.push(("to_dir", to_dir.to_string()));
            f.push(("to", escape(to)));
        }
        Record::Unlink { parent, name } => {
            f.push(("parent", parent.to_string()));
            f.push(("name", escape(name)));
        }
        Record::Skipped { parent, name, reason } => {
            f.push(("parent", parent.to_string()));
            f.push(("name", escape(name)));
            f.push(("reason", escape(reason)));
        }
        Record::Checkpoint { offset, chain } => {
            f.push(("offset", offset.to_string()));
            f.push(("chain", hex(chain)));
        }
        Record::End {
            records,
            bytes,
            chain,
        } => {
            f.push(("records", records.to_string()));
            f.push(("bytes", bytes.to_string()));
            f.push(("chain", hex(chain)));
        }
    }
    f
}

fn header_fields(h: &StreamHeader) -> Vec<(&'static str, String)> {
    let mut f = vec![
        ("version", format!("{}.{}", crate::stream::VERSION_MAJOR, h.minor)),
        ("stream", hex(&h.stream_id)),
        ("base", hex(&h.base_id)),
        ("target", hex(&h.target_id)),
        ("required", format!("{:#x}", h.required)),
        ("optional", format!("{:#x}", h.optional)),
        ("max_payload", h.max_payload.to_string()),
        ("created", h.created_s.to_string()),
    ];
    if h.required & crate::stream::FEATURE_RESUMED != 0 {
        f.push(("resume", h.resume_offset.to_string()));
    }
    f
}

fn line(
    out: &mut impl Write,
    json: bool,
    seq: u64,
    offset: u64,
    kind: &str,
    f: &[(&str, String)],
) -> std::io::Result<()> {
    if json {
        // The record's position is "at": "offset" is a field of DATA and CHECKPOINT.
        let mut v = serde_json::json!({"seq": seq, "at": offset, "type": kind});
        for (k, val) in f {
            v[*k] = val.clone().into();
        }
        writeln!(out, "{v}")
    } else {
        let kv: Vec<String> = f.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(out, "{seq}\t{offset}\t{kind}\t{}", kv.join(" "))
    }
}

/// `ringsync dump`: list and verify the stream in `file` (standard input for `None` or `-`).
pub fn dump(file: Option<&Path>, json: bool) -> i32 {
    let src: Box<dyn std::io::Read> = match file {
        Some(p) if p.as_os_str() != "-" => match std::fs::File::open(p) {
            Ok(f) => Box::new(std::io::BufReader::with_capacity(1 << 20, f)),
            Err(e) => {
                eprintln!("ringsync: dump: open {}: {e}", p.display());
                return exit::BAD;
            }
        },
        _ => Box::new(std::io::BufReader::with_capacity(
            1 << 20,
            std::io::stdin().lock(),
        )),
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    // `at`: stream offset of the record at fault.
    let fail = |e: &ReadError, at: u64, last: Option<(u64, u64)>| {
        let place = match e {
            ReadError::Stream(s) if s.seq > 0 => format!(" (at offset {at})"),
            _ => String::new(),
        };
        let good = match last {
            Some((offset, seq)) => format!("; last good checkpoint: record {seq} at offset {offset}"),
            None => "; no checkpoint verified".to_string(),
        };
        eprintln!("ringsync: dump: {e}{place}{good}");
        exit::BAD
    };
    let mut reader = match StreamReader::new(src, PAYLOAD_BYTES_CAP) {
        Ok(r) => r,
        Err(e) => return fail(&e, 0, None),
    };
    let h = reader.decoder().stream_header().clone();
    // A closed stdout (`| head`) ends the listing, not the verification's verdict.
    let mut listing = line(&mut out, json, 0, 0, "HEADER", &header_fields(&h)).is_ok();
    loop {
        match reader.next_record() {
            Ok(Some((hdr, offset, record))) => {
                if !listing {
                    continue;
                }
                let r = match &record {
                    Some(r) => line(
                        &mut out,
                        json,
                        hdr.seq,
                        offset,
                        r.record_type().name(),
                        &fields(r),
                    ),
                    None => line(
                        &mut out,
                        json,
                        hdr.seq,
                        offset,
                        "UNKNOWN",
                        &[("type", hdr.rtype.to_string()), ("len", hdr.length.to_string())],
                    ),
                };
                listing = r.is_ok();
            }
            Ok(None) => break,
            Err(e) => {
                let _ = out.flush();
                let d = reader.decoder();
                return fail(&e, d.offset(), d.last_checkpoint);
            }
        }
    }
    let _ = out.flush();
    let d = reader.decoder();
    eprintln!(
        "ringsync: dump: verified: {} records, {} bytes, every CRC and the chain to END",
        d.records(),
        d.offset()
    );
    exit::OK
}
