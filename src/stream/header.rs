//! The 128-byte stream header (docs/stream.md, section 1).

use super::{crc, err, StreamError, PAYLOAD_BYTES_CAP};

/// `\x89RSY\r\n\x1a\n`: the high bit catches 7-bit transports, CR LF and LF catch newline
/// conversion either way, ^Z stops DOS `type`.
pub const MAGIC: [u8; 8] = *b"\x89RSY\r\n\x1a\n";
pub const HEADER_BYTES: usize = 128;
/// A later 1.x header may be longer; a reader skips what it does not know, up to this.
const HEADER_BYTES_MAX: u32 = 4096;
pub const VERSION_MAJOR: u16 = 1;
pub const VERSION_MINOR: u16 = 0;

/// Required feature: RENAME/UNLINK/ATTRS records; applies to a target at the base id.
pub const FEATURE_INCREMENTAL: u64 = 1 << 0;
/// Required feature: XATTR records occur.
pub const FEATURE_XATTRS: u64 = 1 << 1;
/// Required feature: a resumed stream (docs/stream.md, section 7): DATA records before
/// `resume_offset` carry only their offset field.
pub const FEATURE_RESUMED: u64 = 1 << 2;
const REQUIRED_KNOWN: u64 = FEATURE_INCREMENTAL | FEATURE_XATTRS | FEATURE_RESUMED;
/// Optional feature: an ESTIMATE record comes first.
pub const OPT_ESTIMATE: u64 = 1 << 0;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeader {
    pub minor: u16,
    pub required: u64,
    pub optional: u64,
    pub stream_id: [u8; 16],
    pub base_id: [u8; 16],
    pub target_id: [u8; 16],
    pub max_payload: u32,
    pub created_s: u64,
    /// With [`FEATURE_RESUMED`]: the stream offset this resumed stream sends data from (the
    /// offset of the CHECKPOINT the receiver's token names); zero otherwise.
    pub resume_offset: u64,
    /// Size of the header as read (a later 1.x may append fields); encoding writes 128.
    pub header_bytes: u32,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl StreamHeader {
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut b = [0u8; HEADER_BYTES];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&VERSION_MAJOR.to_le_bytes());
        b[10..12].copy_from_slice(&self.minor.to_le_bytes());
        b[12..16].copy_from_slice(&(HEADER_BYTES as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.required.to_le_bytes());
        b[24..32].copy_from_slice(&self.optional.to_le_bytes());
        b[32..48].copy_from_slice(&self.stream_id);
        b[48..64].copy_from_slice(&self.base_id);
        b[64..80].copy_from_slice(&self.target_id);
        b[80..84].copy_from_slice(&self.max_payload.to_le_bytes());
        b[84..92].copy_from_slice(&self.created_s.to_le_bytes());
        b[92..100].copy_from_slice(&self.resume_offset.to_le_bytes());
        let c = crc(&b[..124]);
        b[124..128].copy_from_slice(&c.to_le_bytes());
        b
    }

    /// Check and decode, in the documented order. `bytes` must hold the whole header (its size
    /// is at `bytes[12..16]`); `cap` is the largest max payload the reader accepts.
    pub fn decode(bytes: &[u8], cap: u32) -> Result<StreamHeader, StreamError> {
        let bad = |w: String| Err(err(0, w));
        if bytes.len() < MAGIC.len() {
            return bad(format!("truncated: {} of {HEADER_BYTES} bytes", bytes.len()));
        }
        if bytes[..8] != MAGIC {
            let hint = if bytes[1..4] == MAGIC[1..4] {
                " (it looks like a ringsync stream damaged by a text-mode transfer)"
            } else {
                ""
            };
            return bad(format!("not a ringsync stream: bad magic{hint}"));
        }
        if bytes.len() < HEADER_BYTES {
            return bad(format!("truncated: {} of {HEADER_BYTES} bytes", bytes.len()));
        }
        let size = u32_at(bytes, 12);
        if !(HEADER_BYTES as u32..=HEADER_BYTES_MAX).contains(&size) {
            return bad(format!(
                "header size {size} outside {HEADER_BYTES}..{HEADER_BYTES_MAX}"
            ));
        }
        let size = size as usize;
        if bytes.len() < size {
            return bad(format!("truncated: {} of {size} bytes", bytes.len()));
        }
        if crc(&bytes[..size - 4]) != u32_at(bytes, size - 4) {
            return bad("header CRC mismatch".into());
        }
        let major = u16_at(bytes, 8);
        let minor = u16_at(bytes, 10);
        if major != VERSION_MAJOR {
            return bad(format!(
                "stream format version {major}.{minor}; this ringsync reads {VERSION_MAJOR}.x"
            ));
        }
        let required = u64_at(bytes, 16);
        if required & !REQUIRED_KNOWN != 0 {
            return bad(format!(
                "required features {:#x} unknown to this ringsync (a newer sender)",
                required & !REQUIRED_KNOWN
            ));
        }
        let max_payload = u32_at(bytes, 80);
        if max_payload == 0 || max_payload > cap.min(PAYLOAD_BYTES_CAP) {
            return bad(format!(
                "max payload {max_payload} bytes; this reader accepts 1 to {}",
                cap.min(PAYLOAD_BYTES_CAP)
            ));
        }
        let resume_offset = u64_at(bytes, 92);
        if (required & FEATURE_RESUMED != 0) != (resume_offset != 0) {
            return bad("RESUMED feature and resume offset disagree".into());
        }
        if resume_offset != 0 && resume_offset < size as u64 {
            return bad(format!("resume offset {resume_offset} inside the header"));
        }
        if bytes[100..124].iter().any(|b| *b != 0) {
            return bad("reserved header bytes are not zero".into());
        }
        let id = |at: usize| -> [u8; 16] { bytes[at..at + 16].try_into().expect("16 bytes") };
        Ok(StreamHeader {
            minor,
            required,
            optional: u64_at(bytes, 24),
            stream_id: id(32),
            base_id: id(48),
            target_id: id(64),
            max_payload,
            created_s: u64_at(bytes, 84),
            resume_offset,
            header_bytes: size as u32,
        })
    }

    /// The header bytes the chain hash covers: those of the original stream, i.e. with the
    /// RESUMED bit clear, the resume offset zero and the CRC made again. A resumed stream and
    /// the stream it resumes have the same chain.
    pub fn chain_bytes(bytes: &[u8]) -> Vec<u8> {
        let mut b = bytes.to_vec();
        let size = b.len();
        let required = u64_at(&b, 16) & !FEATURE_RESUMED;
        b[16..24].copy_from_slice(&required.to_le_bytes());
        b[92..100].fill(0);
        let c = crc(&b[..size - 4]);
        b[size - 4..].copy_from_slice(&c.to_le_bytes());
        b
    }
}
