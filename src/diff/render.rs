//! Printing a change set: one TAB-separated line per change, or NDJSON.

use std::io::Write;

use rustix::fs::FileType;

use super::{attr, Change, Kind};

/// Printable UTF-8 passes through; the backslash becomes `\\`; control characters and bytes
/// that are not valid UTF-8 become `\xHH`. The result never contains TAB or newline.
pub fn escape(path: &[u8]) -> String {
    if path.is_empty() {
        return ".".to_string();
    }
    let mut out = String::with_capacity(path.len());
    for chunk in path.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => {
                    let mut b = [0u8; 4];
                    for byte in c.encode_utf8(&mut b).bytes() {
                        out.push_str(&format!("\\x{byte:02x}"));
                    }
                }
                c => out.push(c),
            }
        }
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

/// The one-character marker of a change kind.
pub fn marker(k: Kind) -> char {
    match k {
        Kind::Created => '+',
        Kind::Deleted => '-',
        Kind::Modified => 'M',
        Kind::Attrs => 'A',
        Kind::Type => 'T',
        Kind::Link => 'L',
        Kind::Renamed => 'R',
    }
}

/// The JSON name of a change kind.
pub fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Created => "created",
        Kind::Deleted => "deleted",
        Kind::Modified => "modified",
        Kind::Attrs => "attrs",
        Kind::Type => "type",
        Kind::Link => "link",
        Kind::Renamed => "renamed",
    }
}

pub fn type_name(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "file",
        FileType::Directory => "dir",
        FileType::Symlink => "symlink",
        FileType::Fifo => "fifo",
        FileType::CharacterDevice => "char",
        FileType::BlockDevice => "block",
        FileType::Socket => "socket",
        FileType::Unknown => "unknown",
    }
}

fn attr_names(bits: u8) -> Vec<&'static str> {
    [
        (attr::MODE, "mode"),
        (attr::OWNER, "owner"),
        (attr::MTIME, "mtime"),
        (attr::ATIME, "atime"),
        (attr::XATTRS, "xattrs"),
    ]
    .iter()
    .filter(|(b, _)| bits & b != 0)
    .map(|(_, n)| *n)
    .collect()
}

pub fn write_text_line(out: &mut impl Write, c: &Change) -> std::io::Result<()> {
    writeln!(out, "{}", text_line(c))
}

/// The text line of a change, without the newline.
pub fn text_line(c: &Change) -> String {
    if c.kind == Kind::Renamed {
        format!("R\t{}\t{}", escape(&c.old_path), escape(&c.path))
    } else {
        format!("{}\t{}", marker(c.kind), escape(&c.path))
    }
}

/// Put a path into a JSON object: as the string `key` when it is UTF-8 (JSON escapes what it
/// must), else as base64 of the raw bytes under `key_b64` (the name says which it is).
pub fn json_path(v: &mut serde_json::Value, key: &str, path: &[u8]) {
    use base64::Engine as _;
    let shown: &[u8] = if path.is_empty() { b"." } else { path };
    match std::str::from_utf8(shown) {
        Ok(s) => v[key] = s.into(),
        Err(_) => {
            v[format!("{key}_b64")] = base64::engine::general_purpose::STANDARD.encode(shown).into();
        }
    }
}

pub fn write_json_line(out: &mut impl Write, c: &Change) -> std::io::Result<()> {
    let mut v = serde_json::json!({
        "change": kind_name(c.kind),
    });
    json_path(&mut v, "path", &c.path);
    if let Some(m) = c.new.or(c.old) {
        v["type"] = type_name(m.file_type()).into();
    }
    if c.kind == Kind::Renamed {
        json_path(&mut v, "from", &c.old_path);
    }
    if c.kind == Kind::Attrs {
        v["attrs"] = attr_names(c.attrs).into();
    }
    writeln!(out, "{v}")
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn escapes() {
        assert_eq!(escape(b""), ".");
        assert_eq!(escape(b"a/b c"), "a/b c");
        assert_eq!(escape(b"tab\there"), "tab\\x09here");
        assert_eq!(escape(b"nl\n"), "nl\\x0a");
        assert_eq!(escape(b"back\\slash"), "back\\\\slash");
        assert_eq!(escape(b"bad\xff\xfe"), "bad\\xff\\xfe");
        assert_eq!(escape("żółw".as_bytes()), "żółw");
    }
}
