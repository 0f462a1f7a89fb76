//! Record headers and payloads (docs/stream.md, section 2).

use super::crc;

pub const RECORD_HEADER_BYTES: usize = 24;
pub const FLAG_MUST_UNDERSTAND: u16 = 1;
pub const NAME_BYTES_MAX: usize = 255;
/// Longest symlink target (PATH_MAX less the NUL).
pub const SYMLINK_BYTES_MAX: usize = 4095;
/// Longest xattr value Linux stores (XATTR_SIZE_MAX).
pub const XATTR_VALUE_BYTES_MAX: usize = 65536;
/// Longest reason a SKIPPED record gives.
pub const REASON_BYTES_MAX: usize = 1024;
const META_BYTES: usize = 44;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub rtype: u16,
    pub flags: u16,
    pub length: u32,
    pub seq: u64,
    pub payload_crc: u32,
}

impl RecordHeader {
    pub fn encode(&self) -> [u8; RECORD_HEADER_BYTES] {
        let mut b = [0u8; RECORD_HEADER_BYTES];
        b[0..2].copy_from_slice(&self.rtype.to_le_bytes());
        b[2..4].copy_from_slice(&self.flags.to_le_bytes());
        b[4..8].copy_from_slice(&self.length.to_le_bytes());
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..20].copy_from_slice(&self.payload_crc.to_le_bytes());
        let c = crc(&b[..20]);
        b[20..24].copy_from_slice(&c.to_le_bytes());
        b
    }

    /// Header CRC first, then the flags; the caller checks length and sequence.
    pub fn decode(b: &[u8; RECORD_HEADER_BYTES]) -> Result<RecordHeader, String> {
        let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
        if crc(&b[..20]) != u32_at(20) {
            return Err("record header CRC mismatch".into());
        }
        let flags = u16::from_le_bytes([b[2], b[3]]);
        if flags & !FLAG_MUST_UNDERSTAND != 0 {
            return Err(format!("unknown record flags {flags:#x}"));
        }
        Ok(RecordHeader {
            rtype: u16::from_le_bytes([b[0], b[1]]),
            flags,
            length: u32_at(4),
            seq: u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
            payload_crc: u32_at(16),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum RecordType {
    Estimate = 1,
    Dir = 2,
    DirEnd = 3,
    File = 4,
    Data = 5,
    FileEnd = 6,
    Symlink = 7,
    Special = 8,
    Link = 9,
    Xattr = 10,
    Attrs = 11,
    Rename = 12,
    Unlink = 13,
    Checkpoint = 14,
    End = 15,
    Skipped = 16,
}

impl RecordType {
    pub fn from_u16(v: u16) -> Option<RecordType> {
        use RecordType::*;
        Some(match v {
            1 => Estimate,
            2 => Dir,
            3 => DirEnd,
            4 => File,
            5 => Data,
            6 => FileEnd,
            7 => Symlink,
            8 => Special,
            9 => Link,
            10 => Xattr,
            11 => Attrs,
            12 => Rename,
            13 => Unlink,
            14 => Checkpoint,
            15 => End,
            16 => Skipped,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        use RecordType::*;
        match self {
            Estimate => "ESTIMATE",
            Dir => "DIR",
            DirEnd => "DIR_END",
            File => "FILE",
            Data => "DATA",
            FileEnd => "FILE_END",
            Symlink => "SYMLINK",
            Special => "SPECIAL",
            Link => "LINK",
            Xattr => "XATTR",
            Attrs => "ATTRS",
            Rename => "RENAME",
            Unlink => "UNLINK",
            Checkpoint => "CHECKPOINT",
            End => "END",
            Skipped => "SKIPPED",
        }
    }
}

/// The metadata of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: (i64, u32),
    pub mtime: (i64, u32),
    pub rdev: u64,
}

/// One decoded record. Names are single validated components.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Estimate {
        bytes: u64,
        entries: u64,
    },
    Dir {
        parent: u64,
        name: Vec<u8>,
        meta: Meta,
    },
    DirEnd {
        dir: u64,
        meta: Meta,
    },
    File {
        parent: u64,
        name: Vec<u8>,
        meta: Meta,
        size: u64,
        link: u64,
    },
    Data {
        offset: u64,
        data: Vec<u8>,
    },
    FileEnd {
        hash: [u8; 32],
    },
    Symlink {
        parent: u64,
        name: Vec<u8>,
        meta: Meta,
        /// Non-zero: names this inode for later LINK records (as FILE's `link`).
        link: u64,
        target: Vec<u8>,
    },
    Special {
        parent: u64,
        name: Vec<u8>,
        meta: Meta,
        link: u64,
    },
    Link {
        parent: u64,
        name: Vec<u8>,
        link: u64,
    },
    Xattr {
        name: Vec<u8>,
        value: Vec<u8>,
    },
    Attrs {
        parent: u64,
        name: Vec<u8>,
        meta: Meta,
    },
    Rename {
        from_dir: u64,
        from: Vec<u8>,
        to_dir: u64,
        to: Vec<u8>,
    },
    Unlink {
        parent: u64,
        name: Vec<u8>,
    },
    Checkpoint {
        offset: u64,
        chain: [u8; 32],
    },
    End {
        records: u64,
        bytes: u64,
        chain: [u8; 32],
    },
    /// The sender could not send this entry (unreadable, changed while read): the receiver
    /// keeps what it has under the name and reports the run as incomplete.
    Skipped {
        parent: u64,
        name: Vec<u8>,
        reason: Vec<u8>,
    },
}

/// Whether `name` is a valid single path component for a stream.
pub fn check_name(name: &[u8]) -> Result<(), String> {
    let shown = || crate::diff::escape(name);
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return Err(format!("name of {} bytes (1 to {NAME_BYTES_MAX})", name.len()));
    }
    if name == b"." || name == b".." {
        return Err(format!("name '{}' is not allowed", shown()));
    }
    if name.contains(&b'/') || name.contains(&0) {
        return Err(format!("name '{}' holds '/' or NUL", shown()));
    }
    Ok(())
}

fn mode_type(mode: u32) -> u32 {
    mode & libc::S_IFMT
}

/// A cursor over a payload: every read is bounded by what is left.
struct Take<'a> {
    b: &'a [u8],
}

impl<'a> Take<'a> {
    fn bytes(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if self.b.len() < n {
            return Err(format!("payload too short for {what}"));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }

    fn u16(&mut self, what: &str) -> Result<u16, String> {
        Ok(u16::from_le_bytes(
            self.bytes(2, what)?.try_into().expect("2 bytes"),
        ))
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.bytes(4, what)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.bytes(8, what)?.try_into().expect("8 bytes"),
        ))
    }

    fn hash(&mut self, what: &str) -> Result<[u8; 32], String> {
        Ok(self.bytes(32, what)?.try_into().expect("32 bytes"))
    }

    fn name(&mut self) -> Result<Vec<u8>, String> {
        let n = self.u16("a name's length")? as usize;
        let name = self.bytes(n, "a name")?;
        check_name(name)?;
        Ok(name.to_vec())
    }

    fn bytes16(&mut self, what: &str, max: usize) -> Result<Vec<u8>, String> {
        let n = self.u16(what)? as usize;
        if n == 0 || n > max {
            return Err(format!("{what} of {n} bytes (1 to {max})"));
        }
        let b = self.bytes(n, what)?;
        if b.contains(&0) {
            return Err(format!("{what} holds NUL"));
        }
        Ok(b.to_vec())
    }

    fn time(&mut self, what: &str) -> Result<(i64, u32), String> {
        let s = self.u64(what)? as i64;
        let ns = self.u32(what)?;
        if ns >= 1_000_000_000 {
            return Err(format!("{what} nanoseconds {ns} out of range"));
        }
        Ok((s, ns))
    }

    fn meta(&mut self) -> Result<Meta, String> {
        Ok(Meta {
            mode: self.u32("mode")?,
            uid: self.u32("uid")?,
            gid: self.u32("gid")?,
            atime: self.time("atime")?,
            mtime: self.time("mtime")?,
            rdev: self.u64("rdev")?,
        })
    }

    fn done(self) -> Result<(), String> {
        match self.b.len() {
            0 => Ok(()),
            n => Err(format!("{n} bytes after the record's fields")),
        }
    }
}

fn put_name(out: &mut Vec<u8>, name: &[u8]) {
    check_name(name).unwrap_or_else(|e| panic!("encoding an invalid name: {e}"));
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    out.extend_from_slice(name);
}

fn put_bytes16(out: &mut Vec<u8>, b: &[u8]) {
    assert!(
        !b.is_empty() && b.len() <= u16::MAX as usize,
        "bytes16 of {} bytes",
        b.len()
    );
    out.extend_from_slice(&(b.len() as u16).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_meta(out: &mut Vec<u8>, m: &Meta) {
    let start = out.len();
    out.extend_from_slice(&m.mode.to_le_bytes());
    out.extend_from_slice(&m.uid.to_le_bytes());
    out.extend_from_slice(&m.gid.to_le_bytes());
    for (s, ns) in [m.atime, m.mtime] {
        out.extend_from_slice(&s.to_le_bytes());
        out.extend_from_slice(&ns.to_le_bytes());
    }
    out.extend_from_slice(&m.rdev.to_le_bytes());
    debug_assert_eq!(out.len() - start, META_BYTES);
}

impl Record {
    pub fn record_type(&self) -> RecordType {
        match self {
            Record::Estimate { .. } => RecordType::Estimate,
            Record::Dir { .. } => RecordType::Dir,
            Record::DirEnd { .. } => RecordType::DirEnd,
            Record::File { .. } => RecordType::File,
            Record::Data { .. } => RecordType::Data,
            Record::FileEnd { .. } => RecordType::FileEnd,
            Record::Symlink { .. } => RecordType::Symlink,
            Record::Special { .. } => RecordType::Special,
            Record::Link { .. } => RecordType::Link,
            Record::Xattr { .. } => RecordType::Xattr,
            Record::Attrs { .. } => RecordType::Attrs,
            Record::Rename { .. } => RecordType::Rename,
            Record::Unlink { .. } => RecordType::Unlink,
            Record::Checkpoint { .. } => RecordType::Checkpoint,
            Record::End { .. } => RecordType::End,
            Record::Skipped { .. } => RecordType::Skipped,
        }
    }

    pub fn encode_payload(&self, out: &mut Vec<u8>) {
        let u64s =
            |out: &mut Vec<u8>, v: &[u64]| v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
        match self {
            Record::Estimate { bytes, entries } => u64s(out, &[*bytes, *entries]),
            Record::Special {
                parent,
                name,
                meta,
                link,
            } => {
                u64s(out, &[*parent]);
                put_name(out, name);
                put_meta(out, meta);
                u64s(out, &[*link]);
            }
            Record::Dir { parent, name, meta } | Record::Attrs { parent, name, meta } => {
                u64s(out, &[*parent]);
                put_name(out, name);
                put_meta(out, meta);
            }
            Record::DirEnd { dir, meta } => {
                u64s(out, &[*dir]);
                put_meta(out, meta);
            }
            Record::File {
                parent,
                name,
                meta,
                size,
                link,
            } => {
                u64s(out, &[*parent]);
                put_name(out, name);
                put_meta(out, meta);
                u64s(out, &[*size, *link]);
            }
            Record::Data { offset, data } => {
                u64s(out, &[*offset]);
                out.extend_from_slice(data);
            }
            Record::FileEnd { hash } => out.extend_from_slice(hash),
            Record::Symlink {
                parent,
                name,
                meta,
                link,
                target,
            } => {
                u64s(out, &[*parent]);
                put_name(out, name);
                put_meta(out, meta);
                u64s(out, &[*link]);
                put_bytes16(out, target);
            }
            Record::Link { parent, name, link } => {
                u64s(out, &[*parent]);
                put_name(out, name);
                u64s(out, &[*link]);
            }
            Record::Xattr { name, value } => {
                put_bytes16(out, name);
                out.extend_from_slice(&(value.len() as u32).to_le_bytes());
                out.extend_from_slice(value);
            }
            Record::Rename {
                from_dir,
                from,
                to_dir,
                to,
            } => {
                u64s(out, &[*from_dir]);
                put_name(out, from);
                u64s(out, &[*to_dir]);
                put_name(out, to);
            }
            Record::Unlink { parent, name } => {
                u64s(out, &[*parent]);
                put_name(out, name);
            }
            Record::Skipped { parent, name, reason } => {
                u64s(out, &[*parent]);
                put_name(out, name);
                put_bytes16(out, reason);
            }
            Record::Checkpoint { offset, chain } => {
                u64s(out, &[*offset]);
                out.extend_from_slice(chain);
            }
            Record::End {
                records,
                bytes,
                chain,
            } => {
                u64s(out, &[*records, *bytes]);
                out.extend_from_slice(chain);
            }
        }
    }

    /// Decode a payload of type `t`: every field bounded by the payload, names and lengths
    /// checked, no bytes left over.
    pub fn decode(t: RecordType, payload: &[u8]) -> Result<Record, String> {
        let mut p = Take { b: payload };
        let r = match t {
            RecordType::Estimate => Record::Estimate {
                bytes: p.u64("bytes")?,
                entries: p.u64("entries")?,
            },
            RecordType::Dir => Record::Dir {
                parent: p.u64("parent")?,
                name: p.name()?,
                meta: p.meta()?,
            },
            RecordType::DirEnd => Record::DirEnd {
                dir: p.u64("dir")?,
                meta: p.meta()?,
            },
            RecordType::File => Record::File {
                parent: p.u64("parent")?,
                name: p.name()?,
                meta: p.meta()?,
                size: p.u64("size")?,
                link: p.u64("link")?,
            },
            RecordType::Data => {
                let offset = p.u64("offset")?;
                let data = p.b.to_vec();
                p.b = &[];
                Record::Data { offset, data }
            }
            RecordType::FileEnd => Record::FileEnd {
                hash: p.hash("hash")?,
            },
            RecordType::Symlink => Record::Symlink {
                parent: p.u64("parent")?,
                name: p.name()?,
                meta: p.meta()?,
                link: p.u64("link")?,
                target: p.bytes16("symlink target", SYMLINK_BYTES_MAX)?,
            },
            RecordType::Special => Record::Special {
                parent: p.u64("parent")?,
                name: p.name()?,
                meta: p.meta()?,
                link: p.u64("link")?,
            },
            RecordType::Link => Record::Link {
                parent: p.u64("parent")?,
                name: p.name()?,
                link: p.u64("link")?,
            },
            RecordType::Xattr => {
                let name = p.bytes16("xattr name", NAME_BYTES_MAX)?;
                let n = p.u32("xattr value length")? as usize;
                if n > XATTR_VALUE_BYTES_MAX {
                    return Err(format!(
                        "xattr value of {n} bytes (at most {XATTR_VALUE_BYTES_MAX})"
                    ));
                }
                Record::Xattr {
                    name,
                    value: p.bytes(n, "xattr value")?.to_vec(),
                }
            }
            RecordType::Attrs => Record::Attrs {
                parent: p.u64("parent")?,
                name: p.name()?,
                meta: p.meta()?,
            },
            RecordType::Rename => Record::Rename {
                from_dir: p.u64("from dir")?,
                from: p.name()?,
                to_dir: p.u64("to dir")?,
                to: p.name()?,
            },
            RecordType::Unlink => Record::Unlink {
                parent: p.u64("parent")?,
                name: p.name()?,
            },
            RecordType::Skipped => Record::Skipped {
                parent: p.u64("parent")?,
                name: p.name()?,
                reason: p.bytes16("reason", REASON_BYTES_MAX)?,
            },
            RecordType::Checkpoint => Record::Checkpoint {
                offset: p.u64("offset")?,
                chain: p.hash("chain hash")?,
            },
            RecordType::End => Record::End {
                records: p.u64("records")?,
                bytes: p.u64("bytes")?,
                chain: p.hash("chain hash")?,
            },
        };
        p.done()?;
        // The entry types' modes must say what they are.
        let want = |meta: &Meta, types: &[u32], what: &str| -> Result<(), String> {
            match types.contains(&mode_type(meta.mode)) {
                true => Ok(()),
                false => Err(format!("{what} with mode {:o}", meta.mode)),
            }
        };
        match &r {
            Record::Dir { meta, .. } | Record::DirEnd { meta, .. } => want(meta, &[libc::S_IFDIR], "DIR")?,
            Record::File { meta, .. } => want(meta, &[libc::S_IFREG], "FILE")?,
            Record::Symlink { meta, .. } => want(meta, &[libc::S_IFLNK], "SYMLINK")?,
            Record::Special { meta, .. } => {
                want(meta, &[libc::S_IFIFO, libc::S_IFCHR, libc::S_IFBLK], "SPECIAL")?
            }
            _ => {}
        }
        Ok(r)
    }
}
