//! A record stream over any byte source: reads exactly each header and payload and hands them to
//! the codec's [`Decoder`](crate::stream::Decoder), which checks them before anything else is
//! read. One payload buffer, grown only to what a checked header allowed (at most the stream's
//! max payload), reused for every record; a DATA record's data is read into an aligned buffer
//! of its own (reused once given back), so a consumer can hand it to another thread, or write
//! it with O_DIRECT, without copying it.
//!
//! Must not: interpret records (that is the codec's) or allocate from an unchecked length.

use std::io::Read;

pub use crate::ring::aligned::AlignedBuf;

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

/// A record as [`StreamReader::next_item`] gives it.
pub enum Item {
    Record(Record),
    /// A DATA record (one whose data was elided by a resumed stream comes as a record).
    Data {
        offset: u64,
        data: AlignedBuf,
    },
}

/// Reads records one at a time.
pub struct StreamReader<R: Read> {
    src: R,
    decoder: Decoder,
    payload: Vec<u8>,
    /// Buffers for DATA payloads, given back by the consumer ([`StreamReader::recycle`]).
    spare: Vec<AlignedBuf>,
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
            spare: Vec::new(),
        })
    }

    /// Give back the buffer of a DATA record's data for a later one (its contents are not
    /// kept). Buffers not given back are simply not reused.
    pub fn recycle(&mut self, buf: AlignedBuf) {
        self.spare.push(buf);
    }

    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// As [`StreamReader::next_record`], but a DATA record's data comes in an aligned buffer
    /// of its own (give it back with [`StreamReader::recycle`]) instead of a copy.
    #[allow(clippy::type_complexity)]
    pub fn next_item(&mut self) -> Result<Option<(RecordHeader, u64, Option<Item>)>, ReadError> {
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
        if self.decoder.elided(&h) {
            // A resumed stream: this DATA lies before the resume offset; only its offset field
            // was sent.
            let mut off = [0u8; 8];
            if !read_exact_or_end(&mut self.src, &mut off).map_err(truncated)? {
                return Err(ReadError::Truncated { seq, at });
            }
            let (offset, _) = self
                .decoder
                .elided_payload(&h, &hb, off)
                .map_err(ReadError::Stream)?;
            return Ok(Some((
                h,
                at,
                Some(Item::Record(Record::Data {
                    offset,
                    data: Vec::new(),
                })),
            )));
        }
        if h.rtype == crate::stream::RecordType::Data as u16 && h.length >= 8 {
            // Its data goes into an aligned buffer of its own, which the consumer may keep.
            let mut off = [0u8; 8];
            let mut data = self.spare.pop().unwrap_or_default();
            // Bounded by the check just made: at most the stream's max payload.
            data.set_len(h.length as usize - 8);
            if !read_exact_or_end(&mut self.src, &mut off).map_err(truncated)?
                || !read_exact_or_end(&mut self.src, &mut data).map_err(truncated)? && !data.is_empty()
            {
                return Err(ReadError::Truncated { seq, at });
            }
            let offset = self
                .decoder
                .data_payload(&h, &hb, off, &data)
                .map_err(ReadError::Stream)?;
            return Ok(Some((h, at, Some(Item::Data { offset, data }))));
        }
        // Bounded by the check just made: at most the stream's max payload.
        self.payload.resize(h.length as usize, 0);
        if !read_exact_or_end(&mut self.src, &mut self.payload).map_err(truncated)? && h.length > 0 {
            return Err(ReadError::Truncated { seq, at });
        }
        let record = self
            .decoder
            .payload(&h, &hb, &self.payload)
            .map_err(ReadError::Stream)?;
        Ok(Some((h, at, record.map(Item::Record))))
    }

    /// The next record with its header and its offset in the stream; `None` after END.
    /// Records of unknown types the stream lets a reader skip come back as `None` records
    /// (`Some((header, offset, None))`).
    #[allow(clippy::type_complexity)]
    pub fn next_record(&mut self) -> Result<Option<(RecordHeader, u64, Option<Record>)>, ReadError> {
        Ok(self.next_item()?.map(|(h, at, item)| {
            let r = item.map(|i| match i {
                Item::Record(r) => r,
                Item::Data { offset, data } => {
                    let r = Record::Data {
                        offset,
                        data: data.to_vec(),
                    };
                    self.spare.push(data);
                    r
                }
            });
            (h, at, r)
        }))
    }
}

/// Where a stream goes: a file or a pipe. Small records are gathered in a buffer; file data is
/// written straight from the caller's buffer with its frame (one `writev`, no copy). Counts
/// wire bytes and applies `--bwlimit` to them. Never interprets what it writes.
pub struct StreamWriter {
    out: std::fs::File,
    buf: Vec<u8>,
    written: u64,
    limit: Option<crate::bwlimit::Bucket>,
    /// Every byte written is added here as it goes (a remote mirror's wire count).
    live: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
}

/// Buffered bytes that trigger a write.
const WRITE_BUF_BYTES: usize = 256 << 10;
/// Pipe capacity asked for (F_SETPIPE_SZ; the default 64 KiB costs a context switch per 64 KiB).
pub const PIPE_BYTES: usize = 8 << 20;

/// Raise a pipe's capacity; anything else (a file, a socket) is left alone.
pub fn raise_pipe(fd: std::os::fd::BorrowedFd) {
    let is_pipe = rustix::fs::fstat(fd)
        .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Fifo);
    if is_pipe {
        // Unprivileged users are capped by /proc/sys/fs/pipe-max-size (1 MiB by default).
        if rustix::pipe::fcntl_setpipe_size(fd, PIPE_BYTES).is_err() {
            let _ = rustix::pipe::fcntl_setpipe_size(fd, 1 << 20);
        }
    }
}

impl StreamWriter {
    pub fn new(out: std::fs::File, bwlimit: Option<u64>) -> StreamWriter {
        use std::os::fd::AsFd;
        raise_pipe(out.as_fd());
        StreamWriter {
            out,
            buf: Vec::with_capacity(WRITE_BUF_BYTES + 4096),
            written: 0,
            limit: bwlimit.map(crate::bwlimit::Bucket::new),
            live: None,
        }
    }

    /// Add every byte written to `live` too, as it goes.
    pub fn live(mut self, live: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>) -> StreamWriter {
        self.live = live;
        self
    }

    fn wrote(&mut self, n: usize) {
        self.written += n as u64;
        if let Some(l) = &self.live {
            l.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The buffer records are encoded into; [`StreamWriter::commit`] after adding to it.
    pub fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Write the buffer out once it holds enough.
    pub fn commit(&mut self) -> std::io::Result<()> {
        if self.buf.len() >= WRITE_BUF_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Bytes handed to the output so far (wire bytes).
    pub fn written(&self) -> u64 {
        self.written + self.buf.len() as u64
    }

    fn pace(&self, n: usize) {
        if let Some(l) = &self.limit {
            l.take(n as u64);
        }
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        use std::io::Write;
        if self.buf.is_empty() {
            return Ok(());
        }
        self.pace(self.buf.len());
        self.out.write_all(&self.buf)?;
        self.wrote(self.buf.len());
        self.buf.clear();
        Ok(())
    }

    /// A DATA record: its frame, then `data` from where it lies.
    pub fn data(&mut self, frame: &[u8], data: &[u8]) -> std::io::Result<()> {
        if data.len() < 64 << 10 {
            self.buf.extend_from_slice(frame);
            self.buf.extend_from_slice(data);
            return self.commit();
        }
        self.buf.extend_from_slice(frame);
        let mut parts = [std::io::IoSlice::new(&self.buf), std::io::IoSlice::new(data)];
        let total = self.buf.len() + data.len();
        self.pace(total);
        let mut slices: &mut [std::io::IoSlice] = &mut parts;
        let mut left = total;
        while left > 0 {
            use std::io::Write;
            match self.out.write_vectored(slices) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    left -= n;
                    std::io::IoSlice::advance_slices(&mut slices, n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.wrote(total);
        self.buf.clear();
        Ok(())
    }

    /// Flush and, for a regular file, make it durable.
    pub fn finish(mut self) -> std::io::Result<()> {
        self.flush()?;
        let is_file = self.out.metadata().is_ok_and(|m| m.is_file());
        if is_file {
            self.out.sync_all()?;
        }
        Ok(())
    }
}

/// The zstd level `--compress` uses: measured on this machine (perf/remote-*.md), level 3
/// compresses text-like trees 3.5x at ~290 MB/s on one core and passes incompressible data
/// at ~1.7 GB/s; level 1 gains little speed for a worse ratio, 4 and up cost 2-6x the CPU.
pub const COMPRESS_LEVEL: i32 = 3;
/// The largest zstd window a decoder accepts (2^23 = 8 MiB; level 3 uses at most 2 MiB): a
/// frame from a remote end that asks for more is refused rather than allocated.
pub const COMPRESS_WINDOW_LOG_MAX: u32 = 23;

/// A zstd decoder over `r` for one frame, with [`COMPRESS_WINDOW_LOG_MAX`].
pub fn decoder<R: std::io::BufRead>(r: R) -> std::io::Result<zstd::stream::read::Decoder<'static, R>> {
    let mut d = zstd::stream::read::Decoder::with_buffer(r)?.single_frame();
    d.window_log_max(COMPRESS_WINDOW_LOG_MAX)?;
    Ok(d)
}

/// Compress what is written into the returned pipe into `out` (zstd, one frame) on a thread,
/// paced by `bwlimit` and counted in `wire` (the compressed bytes: what the link carries).
/// Drop the pipe's write end, then join the thread: it finishes the frame and closes `out`.
pub fn compressor(
    out: std::fs::File,
    level: i32,
    bwlimit: Option<u64>,
    wire: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> std::io::Result<(std::fs::File, std::thread::JoinHandle<std::io::Result<()>>)> {
    use std::os::fd::AsFd;
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    raise_pipe(w.as_fd());
    let mut r = std::fs::File::from(r);
    let t = std::thread::Builder::new()
        .name("compress".into())
        .spawn(move || {
            let paced = Paced {
                out,
                limit: bwlimit.map(crate::bwlimit::Bucket::new),
                wire,
            };
            let mut enc = zstd::stream::write::Encoder::new(paced, level)?;
            std::io::copy(&mut r, &mut enc)?;
            let mut paced = enc.finish()?;
            std::io::Write::flush(&mut paced)
        })?;
    Ok((std::fs::File::from(w), t))
}

/// A writer paced by a token bucket, counting what passes.
struct Paced {
    out: std::fs::File,
    limit: Option<crate::bwlimit::Bucket>,
    wire: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl std::io::Write for Paced {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(l) = &self.limit {
            l.take(buf.len() as u64);
        }
        let n = self.out.write(buf)?;
        self.wire
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod compress_tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn the_compressor_round_trips_through_a_pipe_and_counts_compressed_bytes() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        let wire = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (mut input, t) = compressor(std::fs::File::from(w), COMPRESS_LEVEL, None, wire.clone()).unwrap();
        let data: Vec<u8> = (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            decoder(std::io::BufReader::new(std::fs::File::from(r)))
                .unwrap()
                .read_to_end(&mut got)
                .unwrap();
            got
        });
        input.write_all(&data).unwrap();
        drop(input);
        t.join().unwrap().unwrap();
        assert_eq!(reader.join().unwrap(), data);
        let n = wire.load(std::sync::atomic::Ordering::Relaxed);
        assert!(n > 0 && n < data.len() as u64 / 4, "{n} compressed bytes");
    }

    #[test]
    fn a_frame_that_needs_a_larger_window_than_allowed_is_refused() {
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        enc.window_log(COMPRESS_WINDOW_LOG_MAX + 2).unwrap();
        enc.write_all(&vec![1u8; 64 << 10]).unwrap();
        let frame = enc.finish().unwrap();
        let mut got = Vec::new();
        let r = decoder(&frame[..]).unwrap().read_to_end(&mut got);
        assert!(r.is_err(), "decoded {} bytes", got.len());
        // (The frame itself is good: a decoder allowing the window reads it.)
        let mut d = zstd::stream::read::Decoder::new(&frame[..]).unwrap();
        d.window_log_max(COMPRESS_WINDOW_LOG_MAX + 2).unwrap();
        got.clear();
        d.read_to_end(&mut got).unwrap();
        assert_eq!(got.len(), 64 << 10);
    }
}
