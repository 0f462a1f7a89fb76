//! The record stream's codec (docs/stream.md): the stream header, record framing, record
//! payloads, the chain hash, and the structural rules a stream must follow.
//!
//! Pure: encode into and decode from byte slices. No I/O, no filesystem (that is the sender's
//! and receiver's job, and the transport's). Every length read from a stream is checked
//! against a bound before anything is allocated for it; every decode error says what was wrong
//! and where (sequence number); nothing here panics on any input.

mod header;
mod record;
mod rules;
mod token;

pub use header::{
    StreamHeader, FEATURE_INCREMENTAL, FEATURE_RESUMED, FEATURE_XATTRS, HEADER_BYTES, MAGIC, OPT_ESTIMATE,
    VERSION_MAJOR, VERSION_MINOR,
};
pub use record::{
    Meta, Record, RecordHeader, RecordType, FLAG_MUST_UNDERSTAND, NAME_BYTES_MAX, REASON_BYTES_MAX,
    RECORD_HEADER_BYTES, SYMLINK_BYTES_MAX, XATTR_VALUE_BYTES_MAX,
};
pub use rules::{Rules, HOLD_DIR};
pub use token::ResumeToken;

/// Lowercase hex of `b` (ids and hashes in records, tokens and messages).
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Largest max-payload a stream may declare (and so the largest single allocation a reader
/// makes for one record): 16 MiB.
pub const PAYLOAD_BYTES_CAP: u32 = 1 << 24;

/// What is wrong with a stream, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamError {
    /// Sequence number of the record at fault (0: the stream header).
    pub seq: u64,
    pub what: String,
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.seq {
            0 => write!(f, "stream header: {}", self.what),
            s => write!(f, "record {s}: {}", self.what),
        }
    }
}

impl std::error::Error for StreamError {}

pub(crate) fn err(seq: u64, what: impl Into<String>) -> StreamError {
    StreamError {
        seq,
        what: what.into(),
    }
}

/// CRC-32 (IEEE, zlib's) of `b`.
pub fn crc(b: &[u8]) -> u32 {
    crc32fast::hash(b)
}

/// The FILE_END hash of a file (docs/stream.md, section 2.2): BLAKE3 over each DATA record's
/// offset and length (u64 LE each) and bytes, in order, then the file's size (u64 LE). Holes
/// are not hashed: the cost follows the data sent, not the size a stream claims (a file of
/// 2^62 bytes with one DATA record is hashed as fast as a small one).
pub struct FileHash(blake3::Hasher);

impl Default for FileHash {
    fn default() -> Self {
        FileHash::new()
    }
}

impl FileHash {
    pub fn new() -> FileHash {
        FileHash(blake3::Hasher::new())
    }

    pub fn data(&mut self, offset: u64, bytes: &[u8]) {
        self.0.update(&offset.to_le_bytes());
        self.0.update(&(bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    pub fn finish(mut self, size: u64) -> [u8; 32] {
        self.0.update(&size.to_le_bytes());
        *self.0.finalize().as_bytes()
    }
}

/// Add a record to the chain hash (docs/stream.md, section 3): a DATA record's header as it
/// is; for every other type the header with its two CRCs counted as zeros (they cover the
/// atime, see [`chain_payload`]), then the payload.
fn chain_record(chain: &mut blake3::Hasher, hb: &[u8; RECORD_HEADER_BYTES], payload: &[u8]) {
    let rtype = u16::from_le_bytes([hb[0], hb[1]]);
    if rtype == RecordType::Data as u16 {
        chain.update(hb);
        return;
    }
    chain.update(&hb[..16]);
    chain.update(&[0u8; 8]);
    chain_payload(chain, rtype, payload);
}

/// Add a record's payload to the chain hash, with the `atime` of its `meta` counted as zeros
/// (docs/stream.md, section 3): atimes are what other readers of the source change, and a
/// resumed stream must still have the chain of the stream it resumes. A payload too short to
/// hold its meta (a damaged one, refused anyway) is hashed as it is.
fn chain_payload(chain: &mut blake3::Hasher, rtype: u16, payload: &[u8]) {
    const ATIME: std::ops::Range<usize> = 12..24;
    let named = [
        RecordType::Dir,
        RecordType::File,
        RecordType::Symlink,
        RecordType::Special,
        RecordType::Attrs,
    ];
    let meta_at = if rtype == RecordType::DirEnd as u16 {
        Some(8)
    } else if named.iter().any(|t| *t as u16 == rtype) && payload.len() >= 10 {
        Some(10 + u16::from_le_bytes([payload[8], payload[9]]) as usize)
    } else {
        None
    };
    match meta_at {
        Some(m) if payload.len() >= m + ATIME.end => {
            chain.update(&payload[..m + ATIME.start]);
            chain.update(&[0u8; ATIME.end - ATIME.start]);
            chain.update(&payload[m + ATIME.end..]);
        }
        _ => {
            chain.update(payload);
        }
    }
}

/// Builds a stream: the header, then records with their sequence numbers, CRCs and the chain
/// hash kept for CHECKPOINT and END. Encoding cannot fail; what it is given must be valid
/// (names, lengths): those are programmer errors, and are asserted.
pub struct Encoder {
    seq: u64,
    chain: blake3::Hasher,
    offset: u64,
    max_payload: u32,
}

impl Encoder {
    /// Start a stream: `out` receives the header.
    pub fn new(header: &StreamHeader, out: &mut Vec<u8>) -> Encoder {
        let bytes = header.encode();
        let mut chain = blake3::Hasher::new();
        chain.update(&StreamHeader::chain_bytes(&bytes));
        out.extend_from_slice(&bytes);
        Encoder {
            seq: 0,
            chain,
            offset: HEADER_BYTES as u64,
            max_payload: header.max_payload,
        }
    }

    /// The chain hash of everything encoded so far.
    pub fn chain(&self) -> [u8; 32] {
        *self.chain.finalize().as_bytes()
    }

    /// Stream bytes encoded so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Records encoded so far.
    pub fn records(&self) -> u64 {
        self.seq
    }

    /// Append one record. CHECKPOINT and END are filled in here (offset, chain, counts):
    /// pass them with any values.
    pub fn push(&mut self, record: &Record, out: &mut Vec<u8>) {
        if let Record::Data { offset, data } = record {
            return self.push_data(*offset, data, out);
        }
        let filled;
        let record = match record {
            Record::Checkpoint { .. } => {
                filled = Record::Checkpoint {
                    offset: self.offset,
                    chain: self.chain(),
                };
                &filled
            }
            Record::End { .. } => {
                filled = Record::End {
                    records: self.seq,
                    bytes: self.offset,
                    chain: self.chain(),
                };
                &filled
            }
            r => r,
        };
        let mut payload = Vec::new();
        record.encode_payload(&mut payload);
        self.push_raw(record.record_type() as u16, 0, &payload, out);
    }

    /// Append a DATA record straight from the file's bytes (no intermediate copy).
    pub fn push_data(&mut self, offset: u64, data: &[u8], out: &mut Vec<u8>) {
        let frame = self.data_frame(offset, data);
        out.reserve(frame.len() + data.len());
        out.extend_from_slice(&frame);
        out.extend_from_slice(data);
    }

    /// Frame a DATA record of `data` at `offset` without copying the data: returns the record
    /// header and the offset field, to be written just before `data` itself.
    pub fn data_frame(&mut self, offset: u64, data: &[u8]) -> [u8; RECORD_HEADER_BYTES + 8] {
        let len = 8 + data.len();
        assert!(
            len <= self.max_payload as usize,
            "DATA of {len} bytes over the stream's max payload of {}",
            self.max_payload
        );
        let mut crc = crc32fast::Hasher::new();
        crc.update(&offset.to_le_bytes());
        crc.update(data);
        self.seq += 1;
        let h = RecordHeader {
            rtype: RecordType::Data as u16,
            flags: 0,
            length: len as u32,
            seq: self.seq,
            payload_crc: crc.finalize(),
        };
        let hb = h.encode();
        self.chain.update(&hb);
        self.offset += (RECORD_HEADER_BYTES + len) as u64;
        let mut f = [0u8; RECORD_HEADER_BYTES + 8];
        f[..RECORD_HEADER_BYTES].copy_from_slice(&hb);
        f[RECORD_HEADER_BYTES..].copy_from_slice(&offset.to_le_bytes());
        f
    }

    /// Append a record from its parts (tests craft unknown types and flags with it).
    pub fn push_raw(&mut self, rtype: u16, flags: u16, payload: &[u8], out: &mut Vec<u8>) {
        assert!(
            payload.len() <= self.max_payload as usize,
            "payload of {} bytes over the stream's max of {}",
            payload.len(),
            self.max_payload
        );
        self.seq += 1;
        let h = RecordHeader {
            rtype,
            flags,
            length: payload.len() as u32,
            seq: self.seq,
            payload_crc: crc(payload),
        };
        let hb = h.encode();
        chain_record(&mut self.chain, &hb, payload);
        out.extend_from_slice(&hb);
        out.extend_from_slice(payload);
        self.offset += (hb.len() + payload.len()) as u64;
    }
}

/// Checks a stream record by record, in the order docs/stream.md gives: header CRC, flags,
/// length bound, sequence, then (with the payload) its CRC, its decoding, the chain at
/// CHECKPOINT and END, and the structural rules. Holds no payload: the caller reads the
/// `length` bytes [`Decoder::header`] allowed into its own bounded buffer.
pub struct Decoder {
    header: StreamHeader,
    seq: u64,
    chain: blake3::Hasher,
    offset: u64,
    rules: Rules,
    ended: bool,
    /// Where the last verified CHECKPOINT was (its offset, its sequence).
    pub last_checkpoint: Option<(u64, u64)>,
}

impl Decoder {
    /// Check the stream header (`bytes` holds all of it: its size is at `bytes[12..16]`, at
    /// least [`HEADER_BYTES`]); `cap` is the largest max payload this reader accepts.
    pub fn new(bytes: &[u8], cap: u32) -> Result<Decoder, StreamError> {
        let header = StreamHeader::decode(bytes, cap)?;
        let size = header.header_bytes as usize;
        let mut chain = blake3::Hasher::new();
        chain.update(&StreamHeader::chain_bytes(&bytes[..size]));
        Ok(Decoder {
            rules: Rules::new(header.required & FEATURE_INCREMENTAL != 0),
            header,
            seq: 0,
            chain,
            offset: size as u64,
            ended: false,
            last_checkpoint: None,
        })
    }

    pub fn stream_header(&self) -> &StreamHeader {
        &self.header
    }

    /// Offset in the stream of the next record.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Records accepted so far.
    pub fn records(&self) -> u64 {
        self.seq
    }

    /// Whether END was accepted (the stream is complete and verified).
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Check a record header; on success the caller reads `length` payload bytes (at most the
    /// stream's max payload) and passes them to [`Decoder::payload`].
    pub fn header(&mut self, bytes: &[u8; RECORD_HEADER_BYTES]) -> Result<RecordHeader, StreamError> {
        let next = self.seq + 1;
        if self.ended {
            return Err(err(next, "data after END"));
        }
        let h = RecordHeader::decode(bytes).map_err(|w| err(next, w))?;
        if h.length > self.header.max_payload {
            return Err(err(
                next,
                format!(
                    "payload of {} bytes over the stream's max of {}",
                    h.length, self.header.max_payload
                ),
            ));
        }
        if h.seq != next {
            return Err(err(
                next,
                format!("sequence {} where {next} was due (a record lost, repeated, reordered or from another stream)", h.seq),
            ));
        }
        let resume = self.header.resume_offset;
        if resume != 0 {
            if self.offset == resume && h.rtype != RecordType::Checkpoint as u16 {
                return Err(err(
                    next,
                    format!("the resume offset {resume} is not a CHECKPOINT"),
                ));
            }
            if self.offset < resume && self.offset + (RECORD_HEADER_BYTES as u64) + h.length as u64 > resume {
                return Err(err(
                    next,
                    format!("the resume offset {resume} is not a record boundary"),
                ));
            }
        }
        Ok(h)
    }

    /// Check the payload of the record whose header [`Decoder::header`] accepted, and decode it.
    /// `None`: a record of an unknown type without MUST_UNDERSTAND, skipped.
    pub fn payload(
        &mut self,
        h: &RecordHeader,
        hb: &[u8; RECORD_HEADER_BYTES],
        payload: &[u8],
    ) -> Result<Option<Record>, StreamError> {
        Ok(match self.payload_ref(h, hb, payload)? {
            Some(Decoded::Data { offset, data }) => Some(Record::Data {
                offset,
                data: data.to_vec(),
            }),
            Some(Decoded::Record(r)) => Some(r),
            None => None,
        })
    }

    /// Whether the record whose header was just accepted is a DATA record a resumed stream
    /// sends without its data (it lies before the resume offset): only its 8-byte offset
    /// field follows the header.
    pub fn elided(&self, h: &RecordHeader) -> bool {
        h.rtype == RecordType::Data as u16
            && self.header.required & FEATURE_RESUMED != 0
            && self.offset < self.header.resume_offset
    }

    /// Accept an elided DATA record (see [`Decoder::elided`]) from its offset field: its
    /// position and length are checked as for a whole one; its payload CRC cannot be.
    /// Returns the offset and length of the data it stands for.
    pub fn elided_payload(
        &mut self,
        h: &RecordHeader,
        hb: &[u8; RECORD_HEADER_BYTES],
        offset_field: [u8; 8],
    ) -> Result<(u64, u64), StreamError> {
        let seq = h.seq;
        if seq != self.seq + 1 || !self.elided(h) {
            return Err(err(
                seq,
                "elided payload does not belong to the header just checked",
            ));
        }
        let len = (h.length as u64)
            .checked_sub(8)
            .ok_or_else(|| err(seq, "payload too short for offset"))?;
        let offset = u64::from_le_bytes(offset_field);
        self.rules.data(offset, len).map_err(|w| err(seq, w))?;
        self.chain.update(hb);
        self.seq = seq;
        self.offset += (RECORD_HEADER_BYTES + h.length as usize) as u64;
        if self.offset > self.header.resume_offset {
            return Err(err(seq, "an elided DATA record runs past the resume offset"));
        }
        Ok((offset, len))
    }

    /// As [`Decoder::payload`] for a DATA record whose payload was read in two parts, its
    /// offset field and its data (so the data can be read straight into a buffer of its
    /// own). Returns the offset.
    pub fn data_payload(
        &mut self,
        h: &RecordHeader,
        hb: &[u8; RECORD_HEADER_BYTES],
        offset_field: [u8; 8],
        data: &[u8],
    ) -> Result<u64, StreamError> {
        let seq = h.seq;
        if h.rtype != RecordType::Data as u16 || 8 + data.len() != h.length as usize || seq != self.seq + 1 {
            return Err(err(seq, "payload does not belong to the header just checked"));
        }
        let mut c = crc32fast::Hasher::new();
        c.update(&offset_field);
        c.update(data);
        if c.finalize() != h.payload_crc {
            return Err(err(seq, "payload CRC mismatch"));
        }
        self.accept_data(h, hb, offset_field, data.len())
    }

    /// A DATA record whose payload CRC verified: check its place in the file, advance.
    fn accept_data(
        &mut self,
        h: &RecordHeader,
        hb: &[u8; RECORD_HEADER_BYTES],
        offset_field: [u8; 8],
        len: usize,
    ) -> Result<u64, StreamError> {
        let offset = u64::from_le_bytes(offset_field);
        self.rules.data(offset, len as u64).map_err(|w| err(h.seq, w))?;
        self.chain.update(hb);
        self.seq = h.seq;
        self.offset += (RECORD_HEADER_BYTES + 8 + len) as u64;
        Ok(offset)
    }

    /// As [`Decoder::payload`], but DATA comes back as a view into `payload` (no copy).
    pub fn payload_ref<'a>(
        &mut self,
        h: &RecordHeader,
        hb: &[u8; RECORD_HEADER_BYTES],
        payload: &'a [u8],
    ) -> Result<Option<Decoded<'a>>, StreamError> {
        let seq = h.seq;
        if payload.len() != h.length as usize || seq != self.seq + 1 {
            return Err(err(seq, "payload does not belong to the header just checked"));
        }
        if crc(payload) != h.payload_crc {
            return Err(err(seq, "payload CRC mismatch"));
        }
        if h.rtype == RecordType::Data as u16 {
            let Some((off, data)) = payload.split_first_chunk::<8>() else {
                return Err(err(seq, "payload too short for offset"));
            };
            let offset = self.accept_data(h, hb, *off, data.len())?;
            return Ok(Some(Decoded::Data { offset, data }));
        }
        let record = match RecordType::from_u16(h.rtype) {
            Some(t) => Some(Record::decode(t, payload).map_err(|w| err(seq, w))?),
            None if h.flags & FLAG_MUST_UNDERSTAND != 0 => {
                return Err(err(
                    seq,
                    format!("unknown record type {} marked must-understand", h.rtype),
                ))
            }
            None => None,
        };
        match &record {
            Some(Record::Checkpoint { offset, chain }) => {
                if *offset != self.offset {
                    return Err(err(
                        seq,
                        format!("checkpoint says offset {offset}, it is at {}", self.offset),
                    ));
                }
                if *chain != *self.chain.finalize().as_bytes() {
                    return Err(err(seq, "chain hash mismatch at checkpoint: records before it were damaged, lost or reordered"));
                }
            }
            Some(Record::End {
                records,
                bytes,
                chain,
            }) => {
                if *records != self.seq || *bytes != self.offset {
                    return Err(err(
                        seq,
                        format!(
                            "END counts {records} records and {bytes} bytes, the stream had {} and {}",
                            self.seq, self.offset
                        ),
                    ));
                }
                if *chain != *self.chain.finalize().as_bytes() {
                    return Err(err(seq, "chain hash mismatch at END"));
                }
            }
            _ => {}
        }
        if let Some(r) = &record {
            self.rules.check(r).map_err(|w| err(seq, w))?;
        }
        chain_record(&mut self.chain, hb, payload);
        self.seq = seq;
        self.offset += (RECORD_HEADER_BYTES + payload.len()) as u64;
        match &record {
            Some(Record::Checkpoint { offset, .. }) => self.last_checkpoint = Some((*offset, seq)),
            Some(Record::End { .. }) => self.ended = true,
            _ => {}
        }
        Ok(record.map(Decoded::Record))
    }
}

/// A record as [`Decoder::payload_ref`] gives it: DATA borrowed from the payload buffer.
#[derive(Debug)]
pub enum Decoded<'a> {
    Data { offset: u64, data: &'a [u8] },
    Record(Record),
}

/// Decode a whole stream held in memory (dump, tests, fuzzing): every record, or the first
/// error. Truncation is an error too (`END` missing).
pub fn decode_all(bytes: &[u8], cap: u32) -> Result<Vec<Record>, StreamError> {
    if bytes.len() < HEADER_BYTES {
        return Err(err(
            0,
            format!(
                "truncated: {} bytes, the header alone is {HEADER_BYTES}",
                bytes.len()
            ),
        ));
    }
    let mut d = Decoder::new(bytes, cap)?;
    let mut at = d.stream_header().header_bytes as usize;
    let mut out = Vec::new();
    while !d.ended() {
        let Some(hb) = bytes.get(at..at + RECORD_HEADER_BYTES) else {
            let what = if at == bytes.len() {
                "truncated: END missing".to_string()
            } else {
                format!("truncated inside a record header at offset {at}")
            };
            return Err(err(d.records() + 1, what));
        };
        let hb: [u8; RECORD_HEADER_BYTES] = hb.try_into().expect("slice of header size");
        let h = d.header(&hb)?;
        let start = at + RECORD_HEADER_BYTES;
        let Some(payload) = bytes.get(start..start + h.length as usize) else {
            return Err(err(
                h.seq,
                format!("truncated inside the payload at offset {start}"),
            ));
        };
        if let Some(r) = d.payload(&h, &hb, payload)? {
            out.push(r);
        }
        at = start + h.length as usize;
    }
    if at != bytes.len() {
        return Err(err(d.records() + 1, "data after END"));
    }
    Ok(out)
}

/// What the decoder fuzz target (fuzz/) and its corpus replay (tests/stream_corpus.rs) run on
/// every input: decoding in memory and decoding through a reader must agree on success and on
/// the records; neither may panic. Small cap, so big claimed lengths are refused, not read.
pub fn check_fuzz_input(data: &[u8]) {
    check_decoders_agree(data);
    // The same bytes with every checksum made right, so the payload decoders and the rules are
    // reached too (random bytes almost never pass a CRC).
    check_decoders_agree(&reseal(data));
}

/// `data` with the header CRC, every record's payload and header CRCs, and the chain hash of
/// every CHECKPOINT and END recomputed, as far as the length fields let the records be found.
pub fn reseal(data: &[u8]) -> Vec<u8> {
    let mut b = data.to_vec();
    if b.len() < HEADER_BYTES
        || u32::from_le_bytes(b[12..16].try_into().expect("4 bytes")) != HEADER_BYTES as u32
    {
        return b;
    }
    let c = crc(&b[..124]);
    b[124..128].copy_from_slice(&c.to_le_bytes());
    let mut chain = blake3::Hasher::new();
    chain.update(&b[..HEADER_BYTES]);
    let mut at = HEADER_BYTES;
    while at + RECORD_HEADER_BYTES <= b.len() {
        let len = u32::from_le_bytes(b[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
        let start = at + RECORD_HEADER_BYTES;
        let Some(end) = start.checked_add(len).filter(|e| *e <= b.len()) else {
            break;
        };
        let rtype = u16::from_le_bytes([b[at], b[at + 1]]);
        let value = *chain.finalize().as_bytes();
        match rtype {
            t if t == RecordType::Checkpoint as u16 && len == 40 => b[start + 8..end].copy_from_slice(&value),
            t if t == RecordType::End as u16 && len == 48 => b[start + 16..end].copy_from_slice(&value),
            _ => {}
        }
        let pc = crc(&b[start..end]);
        b[at + 16..at + 20].copy_from_slice(&pc.to_le_bytes());
        let hc = crc(&b[at..at + 20]);
        b[at + 20..at + 24].copy_from_slice(&hc.to_le_bytes());
        let hb: [u8; RECORD_HEADER_BYTES] = b[at..start].try_into().expect("header size");
        chain_record(&mut chain, &hb, &b[start..end]);
        at = end;
    }
    b
}

fn check_decoders_agree(data: &[u8]) {
    const FUZZ_CAP: u32 = 1 << 20;
    let whole = decode_all(data, FUZZ_CAP);
    let mut read = Vec::new();
    let streamed = match crate::stream_io::StreamReader::new(data, FUZZ_CAP) {
        Ok(mut r) => loop {
            match r.next_record() {
                Ok(Some((_, _, Some(rec)))) => read.push(rec),
                Ok(Some((_, _, None))) => {}
                Ok(None) => break Ok(()),
                Err(e) => break Err(e.to_string()),
            }
        },
        Err(e) => Err(e.to_string()),
    };
    match (&whole, &streamed) {
        (Ok(records), Ok(())) => assert_eq!(records, &read, "in-memory and streamed decoding disagree"),
        (Err(_), Err(_)) => {}
        _ => panic!("in-memory {whole:?} and streamed {streamed:?} decoding disagree"),
    }
}

#[cfg(test)]
mod tests;
