//! A record stream over any byte source: reads exactly each header and payload and hands them to
//! the codec's [`Decoder`](crate::stream::Decoder), which checks them before anything else is
//! read. One payload buffer, grown only to what a checked header allowed (at most the stream's
//! max payload), reused for every record.
//!
//! Must not: interpret records (that is the codec's) or allocate from an unchecked length.

use std::io::Read;

use crate::stream::{Decoder, Record, RecordHeader, StreamError, HEADER_BYTES, RECORD_HEADER_BYTES};

/// Why reading stopped.
#[derive(Debug)]
pub enum ReadError {
    /// The stream is damaged or breaks a rule.
    Stream(StreamError),
    /// The source ended before END (`at`: stream offset where it ended).
    Truncated {
        seq: u64,
        at: u64,
    },
    Io(std::io::Error),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Stream(e) => write!(f, "{e}"),
            ReadError::Truncated { seq, at } => {
                write!(
                    f,
                    "record {seq}: truncated: the stream ends at offset {at} before END"
                )
            }
            ReadError::Io(e) => write!(f, "read: {e}"),
        }
    }
}

/// Fill `buf` from `src`; `Ok(false)` when the source ended before the first byte, an error
/// when it ended part-way.
fn read_exact_or_end(src: &mut impl Read, buf: &mut [u8]) -> Result<bool, std::io::Error> {
    let mut got = 0;
    while got < buf.len() {
        match src.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Reads records one at a time.
pub struct StreamReader<R: Read> {
    src: R,
    decoder: Decoder,
    payload: Vec<u8>,
}

impl<R: Read> StreamReader<R> {
    /// Read and check the stream header; `cap` is the largest max payload accepted.
    pub fn new(mut src: R, cap: u32) -> Result<StreamReader<R>, ReadError> {
        let mut head = vec![0u8; HEADER_BYTES];
        let truncated = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => ReadError::Truncated { seq: 0, at: 0 },
            _ => ReadError::Io(e),
        };
        if !read_exact_or_end(&mut src, &mut head).map_err(truncated)? {
            return Err(ReadError::Truncated { seq: 0, at: 0 });
        }
        // A longer (later 1.x) header: its size was checked to be at most 4 KiB.
        let size = u32::from_le_bytes(head[12..16].try_into().expect("4 bytes")) as usize;
        if size > HEADER_BYTES && size <= 4096 && head[..8] == crate::stream::MAGIC {
            head.resize(size, 0);
            read_exact_or_end(&mut src, &mut head[HEADER_BYTES..]).map_err(truncated)?;
        }
        let decoder = Decoder::new(&head, cap).map_err(ReadError::Stream)?;
        Ok(StreamReader {
            src,
            decoder,
            payload: Vec::new(),
        })
    }

    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// The next record with its header and its offset in the stream; `None` after END.
    /// Records of unknown types the stream lets a reader skip come back as `None` records
    /// (`Some((header, offset, None))`).
    #[allow(clippy::type_complexity)]
    pub fn next_record(&mut self) -> Result<Option<(RecordHeader, u64, Option<Record>)>, ReadError> {
        if self.decoder.ended() {
            // Anything after END is a defect too.
            let mut one = [0u8; 1];
            return match read_exact_or_end(&mut self.src, &mut one) {
                Ok(false) => Ok(None),
                Ok(true) => Err(ReadError::Stream(crate::stream::StreamError {
                    seq: self.decoder.records() + 1,
                    what: "data after END".into(),
                })),
                Err(e) => Err(ReadError::Io(e)),
            };
        }
        let at = self.decoder.offset();
        let seq = self.decoder.records() + 1;
        let truncated = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => ReadError::Truncated { seq, at },
            _ => ReadError::Io(e),
        };
        let mut hb = [0u8; RECORD_HEADER_BYTES];
        if !read_exact_or_end(&mut self.src, &mut hb).map_err(truncated)? {
            return Err(ReadError::Truncated { seq, at });
        }
        let h = self.decoder.header(&hb).map_err(ReadError::Stream)?;
        // Bounded by the check just made: at most the stream's max payload.
        self.payload.resize(h.length as usize, 0);
        if !read_exact_or_end(&mut self.src, &mut self.payload).map_err(truncated)? && h.length > 0 {
            return Err(ReadError::Truncated { seq, at });
        }
        let record = self
            .decoder
            .payload(&h, &hb, &self.payload)
            .map_err(ReadError::Stream)?;
        Ok(Some((h, at, record)))
    }
}
