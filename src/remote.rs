//! Mirrors to and from another machine through a remote shell: `ringsync mirror SRC
//! [user@]host:DST` (push) and `ringsync mirror [user@]host:SRC DST` (pull).
//!
//! The local side runs `ringsync serve` on the other machine through `-e/--rsh` (default
//! `ssh`), which carries its stdin and stdout; nothing listens on a port. A record stream
//! (docs/stream.md) flows over that channel, and its receiving end applies it exactly as
//! `receive` does: DST locked, marked dirty until the stream's END, extraneous entries deleted,
//! every file verified before it is placed, a resume token at each checkpoint.
//!
//! Protocol (docs/stream.md, section 8): `serve` first writes one greeting line,
//! `RINGSYNC-SERVE <protocol> <version>`. A receiving `serve` then writes one status line
//! (JSON: the resume token DST's record holds, if any) and reads a request line: a (resumed)
//! full stream follows, or it lists DST ([`crate::listing`]) and applies the incremental
//! stream the sender makes against that listing. A sending `serve` writes the stream (resumed
//! when the puller passed its token, or against the puller's listing of DST). The local side
//! reads at most [`LINE_MAX`] bytes per line before the stream, so a remote end that is not
//! ringsync is one clear error, not a hang or an allocation.
//!
//! Dropped links: the receiving end keeps what its last checkpoint published. A full stream's
//! token lets the next run resume it (the sender makes the same stream and skips the data
//! before the token); after a stream against a listing the next run lists DST again.
//! `--retries N` does that at once, after a back-off.
//!
//! Must not: put anything in the remote command line but the user's own arguments, each quoted
//! for the remote shell; trust the remote end's words beyond one bounded line.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crate::error::exit;
use crate::mirror::guard::Guard;
use crate::ring::EngineKind;
use crate::stream::ResumeToken;

/// The protocol this ringsync speaks (docs/stream.md, section 8).
pub const PROTOCOL: u32 = 3;
/// The greeting's first word.
pub const GREETING: &str = "RINGSYNC-SERVE";
/// The longest line read from the remote end before the stream.
pub const LINE_MAX: usize = 4096;

/// A remote path: `[user@]host:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// `user@host` or `host` (as given; IPv6 addresses without their brackets).
    pub host: String,
    pub path: PathBuf,
}

/// rsync's rule: a path is remote when a `:` comes before any `/`. `./a:b` and `/a:b` are
/// local; `host::module` (rsync's daemon) and an empty path (`host:`) are refused by the
/// caller.
pub fn parse(spec: &OsStr) -> Option<Remote> {
    let b = spec.as_bytes();
    // `user@` before a bracketed IPv6 address.
    let (user, b) = match b.iter().position(|&c| c == b'@' || c == b':' || c == b'/') {
        Some(i) if b[i] == b'@' && b[i + 1..].starts_with(b"[") => (&b[..=i], &b[i + 1..]),
        _ => (&b[..0], b),
    };
    let (host, rest) = if let Some(stripped) = b.strip_prefix(b"[") {
        let close = stripped.iter().position(|&c| c == b']')?;
        let after = &stripped[close + 1..];
        let rest = after.strip_prefix(b":")?;
        (&stripped[..close], rest)
    } else {
        let colon = b.iter().position(|&c| c == b':')?;
        if b[..colon].contains(&b'/') || colon == 0 {
            return None;
        }
        (&b[..colon], &b[colon + 1..])
    };
    if host.is_empty() {
        return None;
    }
    let host = std::str::from_utf8(&[user, host].concat()).ok()?.to_string();
    if host.starts_with('-') || host.ends_with('@') {
        return None;
    }
    // An empty path (`host:`) stays empty: the caller refuses it (it would be the remote
    // user's home directory, which a mirror would make equal to SRC).
    Some(Remote {
        host,
        path: PathBuf::from(OsStr::from_bytes(rest)),
    })
}

/// A word for a POSIX shell: single quotes, each `'` as `'\''`. Nothing inside is expanded.
pub fn quote(word: &[u8]) -> Vec<u8> {
    let mut q = Vec::with_capacity(word.len() + 2);
    q.push(b'\'');
    for &c in word {
        if c == b'\'' {
            q.extend_from_slice(b"'\\''");
        } else {
            q.push(c);
        }
    }
    q.push(b'\'');
    q
}

/// How to reach the other machine, and what to run there.
#[derive(Debug, Clone)]
pub struct RemoteOpts {
    /// `-e/--rsh`: the remote shell command (split like a shell does).
    pub rsh: String,
    /// `--remote-bin`: ringsync on the other machine.
    pub remote_bin: OsString,
    /// `--retries`: reconnect and resume this many times after a dropped link.
    pub retries: u32,
    pub quiet: bool,
    /// Make staged data durable before publishing it (the receiving end).
    pub fsync: bool,
    // The sending end, when it is this machine.
    pub engine: EngineKind,
    pub memory: u64,
    pub bwlimit: Option<u64>,
    pub progress: crate::progress::Mode,
    /// `--dry-run`: list what would change, change nothing.
    pub dry_run: bool,
    /// `--json`: the changes as NDJSON on stdout.
    pub json: bool,
    /// `-v`: the changes as lines on stdout.
    pub verbose: bool,
    /// `--atimes`: list changes of atime alone too.
    pub atimes: bool,
    pub log_file: Option<PathBuf>,
    /// Filters (the sending end applies them).
    pub filter_spec: crate::filter::FilterSpec,
    /// `copy`: a mirror that deletes nothing in DST (and so never resumes a full stream,
    /// which would).
    pub copy: bool,
    /// `--checksum`: file contents decide (hashed on both ends), not size and mtime.
    pub checksum: bool,
    /// `--prev`: the snapshot of SRC that DST was last made equal to, on SRC's machine.
    pub prev: Option<PathBuf>,
    /// `--compress`: the zstd level for the listing and the stream.
    pub compress: Option<i32>,
    /// `--timeout`: no data moved for this long is a dropped connection.
    pub timeout: Option<Duration>,
}

/// What a run shows and selects, made once from [`RemoteOpts`].
struct Shown {
    filter: std::sync::Arc<crate::filter::Filter>,
    report: crate::report::Reporter,
    wire: Wire,
    /// The current attempt's remote shell (a pidfd: never another process after it is
    /// reaped), for --timeout to stop.
    shell: std::sync::Mutex<Option<OwnedFd>>,
    /// --timeout stopped the current attempt's remote shell.
    timed_out: std::sync::atomic::AtomicBool,
}

/// What crossed the channel over all attempts of a run.
#[derive(Default)]
struct Wire {
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    /// File data the stream carried (whole files sent), where known.
    file_bytes: AtomicU64,
    file_bytes_known: std::sync::atomic::AtomicBool,
    /// Changes the sender sent (with a listing), where known.
    changes: AtomicU64,
    changes_known: std::sync::atomic::AtomicBool,
}

impl Wire {
    fn files(&self, bytes: u64) {
        self.file_bytes.fetch_add(bytes, Relaxed);
        self.file_bytes_known.store(true, Relaxed);
    }

    fn changes(&self, n: u64) {
        self.changes.fetch_add(n, Relaxed);
        self.changes_known.store(true, Relaxed);
    }
}

/// A reader or writer that counts the bytes through it (a reader paced by `limit`, too).
struct Counted<T> {
    inner: T,
    n: Arc<AtomicU64>,
    limit: Option<crate::bwlimit::Bucket>,
}

impl<T: Read> Read for Counted<T> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n.fetch_add(k as u64, Relaxed);
        if let Some(l) = &self.limit {
            l.take(k as u64);
        }
        Ok(k)
    }
}

impl<T: Write> Write for Counted<T> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n.fetch_add(k as u64, Relaxed);
        Ok(k)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The remote end's stdout, counted.
type RemoteOut = BufReader<Counted<std::process::ChildStdout>>;

impl RemoteOpts {
    /// Whether the changes are listed (on stdout, or in the log file).
    fn lists(&self) -> bool {
        self.dry_run || self.verbose || self.json || self.log_file.is_some()
    }
}

/// One side of a mirror.
pub enum Side {
    Local(PathBuf),
    Remote(Remote),
}

/// How one attempt ended.
enum Attempt {
    Done(i32),
    /// The sending end refused the resume token (SRC changed): try again with a full stream.
    ResumeRefused,
    /// The incremental stream from `--prev` was refused: try again with a listing.
    PrevRefused,
    /// The channel failed (the remote shell's exit status 255, or no greeting): retry.
    Dropped(String),
}

/// `ringsync mirror` with a remote side: push or pull, with retries.
pub fn mirror(o: &RemoteOpts, src: &Side, dst: &Side) -> i32 {
    let filter = match crate::filter::Filter::load(&o.filter_spec) {
        Ok(f) => std::sync::Arc::new(f),
        Err(e) => {
            eprintln!("ringsync: {e}");
            return exit::USAGE;
        }
    };
    // A pull sends its rules and --files-from list as one line: bounded.
    if matches!(src, Side::Remote(_)) && filter.is_active() {
        match filter.to_wire() {
            Ok(l) if l.len() < FILTER_LINE_MAX => {}
            Ok(l) => {
                eprintln!(
                    "ringsync: the filter rules and --files-from list come to {} bytes on the wire, more than a pull sends ({FILTER_LINE_MAX})",
                    l.len()
                );
                return exit::USAGE;
            }
            Err(e) => {
                eprintln!("ringsync: {e}");
                return exit::USAGE;
            }
        }
    }
    let report = match crate::report::Reporter::open(
        o.verbose || (o.dry_run && !o.json),
        o.verbose,
        o.log_file.as_deref(),
    ) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ringsync: {e}");
            return exit::USAGE;
        }
    };
    let shown = Shown {
        filter,
        report,
        wire: Wire::default(),
        shell: Default::default(),
        timed_out: Default::default(),
    };
    let t0 = std::time::Instant::now();
    let done = std::sync::atomic::AtomicBool::new(false);
    let code = std::thread::scope(|sc| {
        if let Some(t) = o.timeout {
            let (shown, done) = (&shown, &done);
            sc.spawn(move || watchdog(shown, t, done));
        }
        let code = mirror_with(o, &shown, src, dst);
        done.store(true, Relaxed);
        code
    });
    summary(o, &shown, code, t0.elapsed().as_secs_f64());
    shown.report.flush();
    code
}

/// --timeout: stop the remote shell when nothing has crossed the channel (either way) for
/// `limit`; the attempt then ends as a dropped connection.
fn watchdog(shown: &Shown, limit: Duration, done: &std::sync::atomic::AtomicBool) {
    let moved = || shown.wire.sent.load(Relaxed) + shown.wire.received.load(Relaxed);
    let tick = (limit / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let (mut last, mut since) = (moved(), std::time::Instant::now());
    while !done.load(Relaxed) {
        std::thread::sleep(tick);
        let now = moved();
        let shell = shown.shell.lock().expect("shell lock");
        if now != last || shell.is_none() {
            (last, since) = (now, std::time::Instant::now());
            continue;
        }
        if since.elapsed() >= limit {
            if let Some(fd) = shell.as_ref() {
                // A remote shell that exited (the run is finishing here) is not stopped: only
                // a running one that moved nothing for `limit`.
                use rustix::process::{waitid, WaitId, WaitIdOptions};
                let opts = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
                let running = matches!(waitid(WaitId::PidFd(fd.as_fd()), opts), Ok(None));
                if running && rustix::process::pidfd_send_signal(fd, rustix::process::Signal::KILL).is_ok() {
                    shown.timed_out.store(true, Relaxed);
                }
            }
            since = std::time::Instant::now();
        }
    }
}

/// The summary (`--json`: one JSON object on stdout; `-v`: one line): wire bytes each way
/// and the file bytes the stream carried, apart.
fn summary(o: &RemoteOpts, shown: &Shown, code: i32, secs: f64) {
    let w = &shown.wire;
    let known = |k: &std::sync::atomic::AtomicBool, v: &AtomicU64| k.load(Relaxed).then(|| v.load(Relaxed));
    let file_bytes = known(&w.file_bytes_known, &w.file_bytes);
    let changes = known(&w.changes_known, &w.changes);
    let (sent, received) = (w.sent.load(Relaxed), w.received.load(Relaxed));
    let what = if o.copy { "copy" } else { "mirror" };
    if o.json {
        let v = serde_json::json!({
            "command": what,
            "dry_run": o.dry_run,
            "exit_code": code,
            "elapsed_s": secs,
            "changes": changes,
            "file_bytes": file_bytes,
            "wire": { "sent": sent, "received": received },
        });
        println!("{v}");
    } else if o.verbose {
        let opt = |v: Option<u64>| v.map_or("?".to_string(), |v| v.to_string());
        shown.report.summary(
            &format!(
                "{what}: {} changes, {} file bytes; on the wire {sent} B sent, {received} B received; {secs:.2} s; exit {code}",
                opt(changes),
                opt(file_bytes)
            ),
            o.quiet,
        );
    }
}

fn mirror_with(o: &RemoteOpts, shown: &Shown, src: &Side, dst: &Side) -> i32 {
    if let Side::Local(s) = src {
        if !s.is_dir() {
            eprintln!(
                "ringsync: {}: {}: not a directory (with a remote side SRC is a directory)",
                if o.copy { "copy" } else { "mirror" },
                s.display()
            );
            return exit::FATAL;
        }
    }
    let mut tries = 0u32;
    let mut use_token = true;
    // --prev is of no use with filters (the incremental stream does not look at DST, so it
    // cannot see what they protect there), nor when the changes are to be listed (-v, --json).
    let mut use_prev = o.prev.is_some() && !o.dry_run && !o.lists() && !shown.filter.is_active();
    if o.prev.is_some() && !use_prev && !o.dry_run && !o.quiet {
        eprintln!(
            "ringsync: mirror: --prev is not used with filters, -v, --json or --log-file; comparing against DST's listing"
        );
    }
    loop {
        let attempt = match (src, dst) {
            (Side::Local(s), Side::Remote(r)) => push(o, shown, s, r, use_token, use_prev),
            (Side::Remote(r), Side::Local(d)) => pull(o, shown, r, d, use_token, use_prev),
            _ => {
                eprintln!("ringsync: mirror: one side must be local and the other remote");
                return exit::USAGE;
            }
        };
        // Ctrl-C reaches the remote shell too (one process group): its death is not a
        // dropped link to retry.
        if crate::signals::interrupted().is_some() {
            return exit::INTERRUPTED;
        }
        *shown.shell.lock().expect("shell lock") = None;
        let attempt = if shown.timed_out.swap(false, Relaxed) {
            let host = match (src, dst) {
                (Side::Remote(r), _) | (_, Side::Remote(r)) => r.host.as_str(),
                _ => "",
            };
            Attempt::Dropped(format!(
                "{host}: no data moved for {} s (--timeout)",
                o.timeout.map_or(0, |t| t.as_secs())
            ))
        } else {
            attempt
        };
        let attempt = match attempt {
            // After a dropped link, the interrupted run's remote end may still hold DST's
            // lock for a moment (it stops at the missing bytes, then publishes).
            Attempt::Done(exit::BUSY) if tries > 0 => {
                Attempt::Dropped("DST is still locked by the interrupted run".into())
            }
            a => a,
        };
        match attempt {
            Attempt::Done(code) => return code,
            Attempt::ResumeRefused if use_token => {
                if !o.quiet {
                    eprintln!("ringsync: mirror: the interrupted stream cannot be resumed (SRC changed since); sending a full stream");
                }
                use_token = false;
            }
            Attempt::ResumeRefused => return exit::FATAL,
            // (The attempt said why.)
            Attempt::PrevRefused if use_prev => use_prev = false,
            Attempt::PrevRefused => return exit::FATAL,
            Attempt::Dropped(why) if tries < o.retries => {
                tries += 1;
                let wait = Duration::from_secs((1u64 << (tries - 1).min(5)).min(30));
                eprintln!(
                    "ringsync: mirror: {why}; retry {tries} of {} in {} s (resuming)",
                    o.retries,
                    wait.as_secs()
                );
                std::thread::sleep(wait);
                if crate::signals::interrupted().is_some() {
                    return exit::INTERRUPTED;
                }
            }
            Attempt::Dropped(why) => {
                eprintln!(
                    "ringsync: mirror: {why}; rerun (or use --retries) to resume from the last checkpoint"
                );
                return exit::LINK;
            }
        }
    }
}

/// The remote shell's argv for `host`, running `words` (quoted here) there.
fn command(o: &RemoteOpts, host: &str, words: &[&[u8]]) -> Result<Command, String> {
    let argv = shlex::split(&o.rsh)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| format!("-e {:?}: not a command line", o.rsh))?;
    let mut remote = Vec::new();
    for (i, w) in std::iter::once(o.remote_bin.as_bytes())
        .chain(words.iter().copied())
        .enumerate()
    {
        if i > 0 {
            remote.push(b' ');
        }
        remote.extend_from_slice(&quote(w));
    }
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .arg(host)
        .arg(OsString::from_vec(remote))
        .stderr(Stdio::inherit());
    Ok(cmd)
}

/// The longest filter line (the rules of a pull, sent to the remote end).
pub const FILTER_LINE_MAX: usize = 16 << 20;

/// Read one line of at most [`LINE_MAX`] bytes; `None` at EOF or for a longer line.
fn line(r: &mut impl BufRead) -> std::io::Result<Option<String>> {
    line_max(r, LINE_MAX)
}

/// Read one line of at most `max` bytes; `None` at EOF or for a longer line.
fn line_max(r: &mut impl BufRead, max: usize) -> std::io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = r.take(max as u64).read_until(b'\n', &mut buf)?;
    if n == 0 || buf.last() != Some(&b'\n') {
        return Ok(None);
    }
    buf.pop();
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// Write a listing on `w` (one zstd frame at `level` with --compress) and flush.
fn put_listing(
    w: &mut impl Write,
    flags: u8,
    entries: &[crate::listing::Entry],
    level: Option<i32>,
) -> std::io::Result<[u8; 16]> {
    let id = match level {
        None => crate::listing::write(w, flags, entries)?,
        Some(l) => {
            let mut enc = zstd::stream::write::Encoder::new(&mut *w, l)?;
            let id = crate::listing::write(&mut enc, flags, entries)?;
            enc.finish()?;
            id
        }
    };
    w.flush()?;
    Ok(id)
}

/// Read a listing from `r` (one zstd frame when `compressed`).
fn get_listing(
    r: &mut impl BufRead,
    compressed: bool,
) -> Result<crate::listing::Listing, crate::listing::ReadError> {
    if !compressed {
        return crate::listing::read(r);
    }
    let d =
        crate::stream_io::decoder(r).map_err(|e| crate::listing::ReadError::from(format!("zstd: {e}")))?;
    let mut d = BufReader::new(d);
    let l = crate::listing::read(&mut d)?;
    // To the frame's end (its last block and checksum), which the listing's own end can
    // come before: what follows on the channel is plain again.
    match d.read(&mut [0u8; 1]) {
        Ok(0) => Ok(l),
        Ok(_) => Err("data after the listing in its zstd frame".into()),
        Err(e) => Err(format!("zstd: {e}").into()),
    }
}

/// Words for a serve command line: `--compress LEVEL`.
fn compress_words(o: &RemoteOpts) -> Vec<Vec<u8>> {
    match o.compress {
        Some(l) => vec![b"--compress".to_vec(), l.to_string().into_bytes()],
        None => Vec::new(),
    }
}

/// The sender's side of the hash round after a listing (`crate::moves`): one request line
/// on `w`; when it names paths, the answer line from `r`. `Err(true)`: the link failed.
fn ask_hashes(
    w: &mut impl Write,
    r: &mut impl BufRead,
    paths: &[Vec<u8>],
) -> Result<HashMap<Vec<u8>, [u8; 32]>, (bool, String)> {
    let req = crate::moves::request(paths);
    if w.write_all(req.as_bytes()).and_then(|_| w.flush()).is_err() {
        return Err((true, "the receiving end stopped before the hash request".into()));
    }
    if paths.is_empty() {
        return Ok(HashMap::new());
    }
    match line_max(r, crate::moves::LINE_MAX) {
        Ok(Some(l)) => crate::moves::parse_answer(&l, paths)
            .map_err(|e| (false, format!("the receiving end's content hashes: {e}"))),
        _ => Err((true, "the receiving end stopped before its content hashes".into())),
    }
}

/// The receiving end's side of the hash round: the request line from `r`, answered on `w`
/// for the files of `listed` (the listing just sent) below `root`.
fn answer_hashes(
    r: &mut impl BufRead,
    w: &mut impl Write,
    root: &Path,
    listed: &[crate::listing::Entry],
) -> Result<(), (bool, String)> {
    let req = match line_max(r, crate::moves::LINE_MAX) {
        Ok(Some(l)) => l,
        _ => return Err((true, "the sending end went away before its hash request".into())),
    };
    let asked = crate::moves::parse_request(&req)
        .map_err(|e| (false, format!("the sending end's hash request: {e}")))?;
    if asked.is_empty() {
        return Ok(());
    }
    let a = crate::moves::answer(root, listed, &asked);
    w.write_all(a.as_bytes()).and_then(|_| w.flush()).map_err(|_| {
        (
            true,
            "the sending end went away before the content hashes".to_string(),
        )
    })
}

/// What the remote shell's exit status says about a remote end that did not greet.
fn no_greeting(host: &str, o: &RemoteOpts, st: Option<ExitStatus>, said: Option<&str>) -> Attempt {
    let bin = String::from_utf8_lossy(o.remote_bin.as_bytes()).into_owned();
    use std::os::unix::process::ExitStatusExt;
    if let Some(sig) = st.and_then(|s| s.signal()) {
        // The remote shell itself was killed (here): the link, not the remote end.
        return Attempt::Dropped(format!(
            "{host}: the remote shell ({}) was killed by signal {sig}",
            o.rsh
        ));
    }
    match (st.and_then(|s| s.code()), said) {
        (Some(255), _) => Attempt::Dropped(format!(
            "{host}: the remote shell ({}) could not connect or was cut off (exit 255)",
            o.rsh
        )),
        (Some(127), _) => {
            eprintln!("ringsync: mirror: {host}: no {bin} there (the remote shell says: command not found); install ringsync or give --remote-bin PATH");
            Attempt::Done(exit::REMOTE)
        }
        (_, Some(l)) => {
            let l: String = l.chars().take(120).collect();
            eprintln!(
                "ringsync: mirror: {host}: {bin} is not a ringsync that serves mirrors (it said {l:?})"
            );
            Attempt::Done(exit::REMOTE)
        }
        (code, None) => {
            eprintln!(
                "ringsync: mirror: {host}: {bin} ended without a greeting (exit {}); see its message above",
                code.map_or("by a signal".into(), |c| c.to_string())
            );
            Attempt::Done(exit::REMOTE)
        }
    }
}

/// Check the greeting line: `RINGSYNC-SERVE 1 <version>`.
fn greeting(host: &str, l: &str) -> Result<(), String> {
    let mut w = l.split(' ');
    if w.next() != Some(GREETING) {
        return Err(l.to_string());
    }
    match w.next().and_then(|p| p.parse::<u32>().ok()) {
        Some(PROTOCOL) => Ok(()),
        Some(p) => {
            eprintln!(
                "ringsync: mirror: {host}: the remote ringsync ({}) speaks protocol {p}, this one ({}) speaks {PROTOCOL}; install the same version on both",
                w.collect::<Vec<_>>().join(" "),
                env!("CARGO_PKG_VERSION")
            );
            Err(String::new())
        }
        None => Err(l.to_string()),
    }
}

/// Start the remote end and read its greeting; the child and its stdout reader.
fn start(
    o: &RemoteOpts,
    shown: &Shown,
    r: &Remote,
    words: &[&[u8]],
    stdin: Stdio,
) -> Result<(Child, RemoteOut), Attempt> {
    let (child, out) = spawn(o, shown, r, words, stdin)?;
    greeted(o, r, child, out)
}

/// Start the remote shell (the connection is made while the caller goes on).
fn spawn(
    o: &RemoteOpts,
    shown: &Shown,
    r: &Remote,
    words: &[&[u8]],
    stdin: Stdio,
) -> Result<(Child, RemoteOut), Attempt> {
    let mut cmd = command(o, &r.host, words).map_err(|e| {
        eprintln!("ringsync: mirror: {e}");
        Attempt::Done(exit::USAGE)
    })?;
    let mut child = cmd.stdin(stdin).stdout(Stdio::piped()).spawn().map_err(|e| {
        eprintln!("ringsync: mirror: run the remote shell {:?}: {e}", o.rsh);
        Attempt::Done(exit::FATAL)
    })?;
    // For --timeout (a pidfd stays this child's even after it is reaped).
    *shown.shell.lock().expect("shell lock") = rustix::process::pidfd_open(
        rustix::process::Pid::from_child(&child),
        rustix::process::PidfdFlags::empty(),
    )
    .ok();
    let out = BufReader::with_capacity(
        1 << 20,
        Counted {
            inner: child.stdout.take().expect("piped"),
            n: shown.wire.received.clone(),
            // --bwlimit: what comes from the remote end is read at that pace (a pull's
            // stream; the serving end has no limit of its own).
            limit: o.bwlimit.map(crate::bwlimit::Bucket::new),
        },
    );
    Ok((child, out))
}

/// Read the remote end's greeting.
fn greeted(
    o: &RemoteOpts,
    r: &Remote,
    mut child: Child,
    mut out: RemoteOut,
) -> Result<(Child, RemoteOut), Attempt> {
    let first = line(&mut out).unwrap_or(None);
    match first.as_deref().map(|l| greeting(&r.host, l)) {
        Some(Ok(())) => Ok((child, out)),
        Some(Err(e)) if e.is_empty() => {
            let _ = child.kill();
            let _ = child.wait();
            Err(Attempt::Done(exit::REMOTE))
        }
        Some(Err(said)) => {
            // It said something else: stopped here (its status is then ours, not its own).
            let _ = child.kill();
            let _ = child.wait();
            Err(no_greeting(&r.host, o, None, Some(&said)))
        }
        None => {
            drop(out);
            let st = child.wait().ok();
            Err(no_greeting(&r.host, o, st, None))
        }
    }
}

/// The exit status of the remote shell, 255 meaning the channel failed.
fn remote_code(st: std::io::Result<ExitStatus>) -> i32 {
    st.ok().and_then(|s| s.code()).unwrap_or(255)
}

/// Print the changes (`-v`, `--dry-run`, `--json`, `--log-file`).
fn show(o: &RemoteOpts, shown: &Shown, changes: &mut [crate::diff::Change]) {
    if o.lists() {
        crate::diff::sort(changes);
        crate::mirror::print_changes(&crate::mirror::visible(changes, o.atimes), o.json, &shown.report);
    }
}

fn push(o: &RemoteOpts, shown: &Shown, src: &Path, r: &Remote, use_token: bool, use_prev: bool) -> Attempt {
    let mut words: Vec<&[u8]> = vec![b"serve", b"receive"];
    if o.quiet {
        words.push(b"--quiet");
    }
    if !o.fsync {
        words.push(b"--no-fsync");
    }
    words.push(b"--");
    words.push(r.path.as_os_str().as_bytes());
    // SRC is walked while the remote shell connects and DST is listed (for the flags the
    // listing will most likely have: checked when it comes).
    let ahead =
        // (Not when --prev will most likely send the incremental stream without a listing.)
        (!use_prev).then(|| {
            crate::listing::Walked::ahead(
                src,
                guessed_flags(o, r),
                o.engine,
                shown.filter.clone(),
                o.quiet,
                note_states(o, shown),
            )
        });
    let (mut child, mut out) = match start(o, shown, r, &words, Stdio::piped()) {
        Ok(c) => c,
        Err(a) => return a,
    };
    // The status line: DST's resume token.
    let status = line(&mut out)
        .unwrap_or(None)
        .and_then(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .unwrap_or_default();
    let token = status["token"]
        .as_str()
        .filter(|t| !t.is_empty() && use_token)
        .and_then(|t| ResumeToken::decode(t).ok());
    let resumed = token.as_ref().map(|t| t.offset);
    // The request: resume the interrupted full stream, or list DST and send the differences
    // (a dry run: list DST only).
    let mut stdin = std::fs::File::from(OwnedFd::from(child.stdin.take().expect("piped")));
    // (Not with filters: the interrupted full stream carries all of SRC.)
    let token = token.filter(|_| !o.dry_run && !o.lists() && !o.copy && !shown.filter.is_active());
    let resumed = resumed.filter(|_| token.is_some());
    // --prev: when DST's record says it equals PREV's state, the incremental stream from PREV
    // (DST is not listed).
    let from = match (&o.prev, token.is_none() && use_prev) {
        (Some(p), true) => prev_matches(o, p, status["equals"].as_str()),
        _ => None,
    };
    let plan = match (&token, o.dry_run) {
        (_, true) => "list",
        (Some(_), _) => "full",
        (None, _) if from.is_some() => "full",
        (None, _) => "listing",
    };
    let request = format!(
        "{}\n",
        serde_json::json!({ "plan": plan, "checksum": o.checksum, "state": note_states(o, shown), "compress": o.compress })
    );
    shown.wire.sent.fetch_add(request.len() as u64, Relaxed);
    if stdin.write_all(request.as_bytes()).is_err() {
        drop(stdin);
        return ended_early(&r.host, child, "the remote end stopped before the request");
    }
    let listing = if token.is_none() && from.is_none() {
        match get_listing(&mut out, o.compress.is_some()) {
            Ok(l) => {
                let walked = match ahead {
                    Some(h) => h.join().expect("the walk does not panic"),
                    None => crate::listing::Walked::now(
                        src,
                        l.flags,
                        o.engine,
                        shown.filter.clone(),
                        o.quiet,
                        note_states(o, shown),
                    ),
                };
                // Moved files: the hash round (one request line, always, for a listing plan).
                let mut asked = false;
                let (mut lost, mut bad) = (None, None);
                let mut ask = |p: &[Vec<u8>]| {
                    asked = true;
                    let mut w = Counted {
                        inner: &mut stdin,
                        n: shown.wire.sent.clone(),
                        limit: None,
                    };
                    ask_hashes(&mut w, &mut out, p).map_err(|(link, e)| {
                        *if link { &mut lost } else { &mut bad } = Some(e.clone());
                        e
                    })
                };
                let moves = !o.dry_run && !o.copy;
                let (against, walk_errors) = crate::listing::against(
                    &l,
                    walked,
                    src,
                    o.engine,
                    shown.filter.clone(),
                    o.quiet,
                    if moves { Some(&mut ask) } else { None },
                );
                if !asked && !o.dry_run {
                    let mut w = Counted {
                        inner: &mut stdin,
                        n: shown.wire.sent.clone(),
                        limit: None,
                    };
                    if let Err((_, e)) = ask_hashes(&mut w, &mut out, &[]) {
                        lost = Some(e);
                    }
                }
                if let Some(e) = lost {
                    drop(stdin);
                    return ended_early(&r.host, child, &e);
                }
                if let Some(e) = bad {
                    eprintln!("ringsync: mirror: {}: {e}", r.host);
                    drop(stdin);
                    let _ = child.kill();
                    let _ = child.wait();
                    return Attempt::Done(exit::REMOTE);
                }
                let mut against = match against {
                    Ok(a) if walk_errors.errors() == 0 => a,
                    Ok(_) => {
                        eprintln!(
                            "ringsync: mirror: {} entries of {} could not be compared; nothing was changed",
                            walk_errors.errors(),
                            src.display()
                        );
                        drop(stdin);
                        let _ = child.kill();
                        let _ = child.wait();
                        return Attempt::Done(exit::PARTIAL);
                    }
                    Err(e) => {
                        eprintln!(
                            "ringsync: mirror: compare {} with DST's listing: {e}",
                            src.display()
                        );
                        drop(stdin);
                        let _ = child.kill();
                        let _ = child.wait();
                        return Attempt::Done(exit::FATAL);
                    }
                };
                if o.copy {
                    against.changes.retain(|c| c.kind != crate::diff::Kind::Deleted);
                }
                against.state = note_states(o, shown);
                // --files-from paths the walk did not find: reported, and the run is partial.
                let unseen = crate::error::ErrorLog::new(o.quiet);
                crate::filter::report_unseen(&shown.filter, src, &unseen);
                against.errors += unseen.errors();
                show(o, shown, &mut against.changes);
                shown
                    .wire
                    .changes(crate::mirror::visible(&against.changes, o.atimes).len() as u64);
                shown.wire.files(
                    against
                        .changes
                        .iter()
                        .filter(|c| {
                            use crate::diff::Kind::*;
                            matches!(c.kind, Created | Modified | Type | Link)
                        })
                        .filter_map(|c| {
                            c.new
                                .filter(|m| m.file_type() == rustix::fs::FileType::RegularFile)
                        })
                        .map(|m| m.size)
                        .sum(),
                );
                if o.dry_run {
                    drop(stdin);
                    let code = remote_code(child.wait());
                    return match code {
                        0 => Attempt::Done(if against.errors > 0 {
                            exit::PARTIAL
                        } else {
                            exit::OK
                        }),
                        255 => Attempt::Dropped(format!("{}: the connection dropped", r.host)),
                        c => Attempt::Done(c),
                    };
                }
                Some(against)
            }
            Err(e) if e.ends_early => {
                // The remote end stopped (busy, unwritable, link dropped): it said why.
                drop(stdin);
                return ended_early(&r.host, child, &e.to_string());
            }
            Err(e) => {
                eprintln!("ringsync: mirror: {}: DST's listing: {e}", r.host);
                let _ = child.kill();
                let _ = child.wait();
                return Attempt::Done(exit::REMOTE);
            }
        }
    } else {
        None
    };
    let protected = listing.as_ref().map_or(0, |a| a.errors);
    let cfg = crate::send::SendConfig {
        src: src.to_path_buf(),
        out: None,
        engine: o.engine,
        memory: o.memory,
        bwlimit: o.bwlimit,
        progress: o.progress,
        quiet: o.quiet,
        resume: token,
        from: from.clone(),
        listing,
        quiet_reader_gone: true,
        // Shown on the progress line; counted as it goes (--timeout watches it), unless
        // compressed (the compressing thread counts what the link carries).
        wire: Some(shown.wire.sent.clone()),
        wire_live: o.compress.is_none(),
    };
    let bytes = AtomicU64::new(0);
    let sent = match o.compress {
        None => crate::send::send_counted(&cfg, stdin, &bytes),
        // --compress: the stream goes through a zstd thread, which paces and counts the
        // compressed bytes.
        Some(level) => match crate::stream_io::compressor(stdin, level, o.bwlimit, shown.wire.sent.clone()) {
            Ok((pipe, t)) => {
                let cfg = crate::send::SendConfig { bwlimit: None, ..cfg };
                let sent = crate::send::send_counted(&cfg, pipe, &bytes);
                let _ = t.join();
                sent
            }
            Err(e) => {
                eprintln!("ringsync: mirror: start compressing: {e}");
                let _ = child.kill();
                let _ = child.wait();
                return Attempt::Done(exit::FATAL);
            }
        },
    };
    // The stream is out: the receiving end's last work (publishing, syncfs, its record) moves
    // nothing over the link, and is not a stall for --timeout.
    *shown.shell.lock().expect("shell lock") = None;
    // Whatever the remote end says after the stream (nothing, normally) is drained so it
    // never blocks on a full pipe.
    let _ = std::io::copy(&mut out, &mut std::io::sink());
    let remote = remote_code(child.wait());
    if let (Some(at), false, 0) = (resumed, o.quiet, remote) {
        eprintln!(
            "ringsync: mirror: resumed the interrupted stream at its byte {at}: {} bytes sent this time",
            bytes.load(Relaxed)
        );
    }
    match (sent, remote) {
        (0, 0) if protected > 0 => Attempt::Done(exit::PARTIAL),
        (s, 0) => Attempt::Done(s),
        (_, 255) => Attempt::Dropped(format!("{}: the connection dropped", r.host)),
        (exit::FATAL, _) if resumed.is_some() => Attempt::ResumeRefused,
        (exit::INTERRUPTED, _) => Attempt::Done(exit::INTERRUPTED),
        // The receiving end refused the incremental stream (DST changed since): it said why.
        (_, exit::FATAL) if from.is_some() => {
            if !o.quiet {
                eprintln!("ringsync: mirror: --prev: the incremental stream was refused; comparing against DST's listing");
            }
            Attempt::PrevRefused
        }
        // The remote end said why on stderr; its status is the run's.
        (_, code) => Attempt::Done(code),
    }
}

/// Whether this run notes the states a later `--prev` run relies on (SRC's state id as the
/// stream's target, DST's own state): with `--prev`, and not with filters (the stream then
/// carries part of SRC, so DST does not equal SRC's state).
fn note_states(o: &RemoteOpts, shown: &Shown) -> bool {
    o.prev.is_some() && !shown.filter.is_active()
}

/// Whether PREV's state id is `equals`, the state DST's record says DST equals; why not.
fn prev_is(prev: &Path, equals: Option<&str>) -> Result<(), String> {
    let fd = rustix::fs::open(
        prev,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| format!("open: {e}"))?;
    match (crate::send::state_id(&fd).1, equals) {
        (Some(id), Some(e)) if crate::stream::hex(&id) == e => Ok(()),
        (None, _) => Err("it changed moments ago or could not be read in full (a snapshot does not)".into()),
        (_, None) => Err(
            "DST's record names no state it equals (it was not made by a clean run with --prev, or changed since)"
                .into(),
        ),
        (Some(_), Some(_)) => Err("DST's record says it equals another state".into()),
    }
}

/// `--prev PREV` when pushing: PREV, when its state id is the one DST's record says DST
/// equals (`equals`, from the status line); otherwise `None`, and why (unless -q).
fn prev_matches(o: &RemoteOpts, prev: &Path, equals: Option<&str>) -> Option<PathBuf> {
    let Err(why) = prev_is(prev, equals) else {
        return Some(prev.to_path_buf());
    };
    if !o.quiet {
        eprintln!(
            "ringsync: mirror: --prev {}: {why}; comparing against DST's listing",
            prev.display()
        );
    }
    None
}

/// The remote end stopped before the stream (it said why on stderr, or the link dropped):
/// its exit status decides; `what` when it exited 0 all the same.
fn ended_early(host: &str, mut child: Child, what: &str) -> Attempt {
    match remote_code(child.wait()) {
        255 => Attempt::Dropped(format!("{host}: the connection dropped")),
        0 => {
            eprintln!("ringsync: mirror: {host}: {what}");
            Attempt::Done(exit::REMOTE)
        }
        code => Attempt::Done(code),
    }
}

fn receive_config(o: &RemoteOpts, shown: &Shown, dst: &Path) -> crate::receive::ReceiveConfig {
    crate::receive::ReceiveConfig {
        dst: dst.to_path_buf(),
        input: None,
        drop_privileged: false,
        fsync: o.fsync,
        progress: o.progress,
        quiet: o.quiet,
        check_dst_state: true,
        wire: Some(shown.wire.received.clone()),
        verify: false,
        one_way: false,
    }
}

fn pull(o: &RemoteOpts, shown: &Shown, r: &Remote, dst: &Path, use_token: bool, use_prev: bool) -> Attempt {
    if o.dry_run {
        return pull_dry_run(o, shown, r, dst);
    }
    let record = Guard::peek(dst);
    let token = if use_token && !o.lists() && !shown.filter.is_active() && !o.copy {
        record.as_ref().and_then(|rec| rec.resume.clone())
    } else {
        None
    };
    // --prev: the remote end sends the incremental stream from PREV when PREV's state is the
    // one DST's record says DST equals (it refuses otherwise, and this end lists DST).
    let equals = record
        .filter(|r| r.is_clean() && r.dst_state.is_some())
        .and_then(|r| r.stream_target)
        .filter(|_| use_prev && token.is_none());
    let prev = o.prev.as_ref().filter(|_| equals.is_some());
    if token.is_none() && prev.is_none() {
        if use_prev && !o.quiet {
            if let Some(p) = &o.prev {
                eprintln!(
                    "ringsync: mirror: --prev {}: DST's record names no state it equals (it was not made by a clean run with --prev, or changed since); comparing against DST's listing",
                    p.display()
                );
            }
        }
        return pull_listing(o, shown, r, dst);
    }
    let mut words: Vec<&[u8]> = vec![b"serve", b"send"];
    if o.quiet {
        words.push(b"--quiet");
    }
    if let Some(t) = &token {
        words.push(b"--resume");
        words.push(t.as_bytes());
    }
    if let (Some(p), Some(e)) = (prev, &equals) {
        words.push(b"--from");
        words.push(p.as_os_str().as_bytes());
        words.push(b"--expect");
        words.push(e.as_bytes());
    }
    let cw = compress_words(o);
    words.extend(cw.iter().map(Vec::as_slice));
    words.push(b"--");
    words.push(r.path.as_os_str().as_bytes());
    let (mut child, mut out) = match start(o, shown, r, &words, Stdio::null()) {
        Ok(c) => c,
        Err(a) => return a,
    };
    if let Some(p) = prev {
        // The status line: whether PREV is the state DST equals.
        let st = line(&mut out)
            .unwrap_or(None)
            .and_then(|l| serde_json::from_str::<serde_json::Value>(&l).ok());
        match st {
            Some(v) if v["from"].as_bool() == Some(true) => {}
            Some(v) => {
                if !o.quiet {
                    eprintln!(
                        "ringsync: mirror: --prev {}: {}; comparing against DST's listing",
                        p.display(),
                        v["why"]
                            .as_str()
                            .unwrap_or("refused")
                            .chars()
                            .take(400)
                            .collect::<String>()
                    );
                }
                let _ = child.wait();
                return Attempt::PrevRefused;
            }
            None => return ended_early(&r.host, child, "the remote end stopped before its status"),
        }
    }
    let cfg = receive_config(o, shown, dst);
    let _ = crate::signals::install(|_| {});
    let got = match o.compress {
        None => crate::receive::apply_stream(&mut out, &cfg),
        Some(_) => match crate::stream_io::decoder(&mut out) {
            Ok(d) => crate::receive::apply_stream(d, &cfg),
            Err(e) => {
                eprintln!("ringsync: mirror: zstd: {e}");
                exit::FATAL
            }
        },
    };
    match finish_pull(r, child, out, got, token.is_some()) {
        // This end refused the incremental stream (DST changed since): it said why.
        Attempt::Done(exit::FATAL) if prev.is_some() => {
            if !o.quiet {
                eprintln!("ringsync: mirror: --prev: the incremental stream was refused; comparing against DST's listing");
            }
            Attempt::PrevRefused
        }
        a => a,
    }
}

/// The filter line a pull sends to the remote end first, when filters are active.
fn filter_line(shown: &Shown) -> Option<String> {
    shown.filter.is_active().then(|| {
        shown
            .filter
            .to_wire()
            .expect("checked when the options were read")
    })
}

/// Write the filter line into the remote end's stdin (taken from `child`), which stays open
/// for what follows, or is closed.
fn send_filters(shown: &Shown, child: &mut Child, filters: Option<&str>) -> Option<Counted<std::fs::File>> {
    let mut stdin = Counted {
        inner: std::fs::File::from(OwnedFd::from(child.stdin.take()?)),
        n: shown.wire.sent.clone(),
        limit: None,
    };
    if let Some(f) = filters {
        // A remote end that stopped says why; its status decides.
        let _ = writeln!(stdin, "{f}");
    }
    Some(stdin)
}

/// The remote SRC's listing (`serve list`), made for a receiving end with `flags`.
fn remote_listing(
    o: &RemoteOpts,
    shown: &Shown,
    r: &Remote,
    flags: u8,
) -> Result<crate::listing::Listing, Attempt> {
    let filters = filter_line(shown);
    let mut words: Vec<&[u8]> = vec![b"serve", b"list"];
    words.extend(flag_words(flags));
    if filters.is_some() {
        words.push(b"--filters");
    }
    let cw = compress_words(o);
    words.extend(cw.iter().map(Vec::as_slice));
    words.push(b"--");
    words.push(r.path.as_os_str().as_bytes());
    let (mut child, mut out) = start(o, shown, r, &words, Stdio::piped())?;
    drop(send_filters(shown, &mut child, filters.as_deref()));
    match get_listing(&mut out, o.compress.is_some()) {
        Ok(l) => {
            drop(out);
            let mut child = child;
            let _ = child.wait();
            Ok(l)
        }
        Err(e) if e.ends_early => Err(ended_early(&r.host, child, &e.to_string())),
        Err(e) => {
            let mut child = child;
            eprintln!("ringsync: mirror: {}: SRC's listing: {e}", r.host);
            let _ = child.kill();
            let _ = child.wait();
            Err(Attempt::Done(exit::REMOTE))
        }
    }
}

/// The flags a push expects DST's listing to have: `--checksum`'s, and root's when the remote
/// user is root (named, or by default this user, as ssh's default is).
fn guessed_flags(o: &RemoteOpts, r: &Remote) -> u8 {
    let root = match r.host.rsplit_once('@') {
        Some((user, _)) => user == "root",
        None => rustix::process::geteuid().is_root(),
    };
    let mut f = if root { crate::listing::FLAG_ROOT } else { 0 };
    if o.checksum {
        f |= crate::listing::FLAG_CHECKSUM;
    }
    f
}

/// `--root`, `--checksum`: a listing's flags on a serve command line.
fn flag_words(flags: u8) -> Vec<&'static [u8]> {
    let mut w: Vec<&'static [u8]> = Vec::new();
    if flags & crate::listing::FLAG_ROOT != 0 {
        w.push(b"--root");
    }
    if flags & crate::listing::FLAG_CHECKSUM != 0 {
        w.push(b"--checksum");
    }
    w
}

/// The flags of this end's listing.
fn own_flags(o: &RemoteOpts) -> u8 {
    crate::listing::own_flags()
        | if o.checksum {
            crate::listing::FLAG_CHECKSUM
        } else {
            0
        }
}

/// Local DST's entries (none when it does not exist yet).
fn local_entries(o: &RemoteOpts, dst: &Path, flags: u8) -> Result<Vec<crate::listing::Entry>, Attempt> {
    list_entries("mirror", dst, flags, o.engine, false, Default::default(), o.quiet)
        .map_err(|()| Attempt::Done(exit::FATAL))
}

/// The entries of `root` (none when it does not exist), for a listing; errors said with
/// `who` (`mirror`, `serve`).
fn list_entries(
    who: &str,
    root: &Path,
    flags: u8,
    engine: EngineKind,
    skip_sockets: bool,
    filter: Arc<crate::filter::Filter>,
    quiet: bool,
) -> Result<Vec<crate::listing::Entry>, ()> {
    if !root.exists() {
        return Ok(Vec::new());
    }
    let errors = crate::error::ErrorLog::new(quiet);
    match crate::listing::walk(root, flags, engine, skip_sockets, filter, &errors) {
        Ok(e) if errors.errors() == 0 => Ok(e.into_iter().map(|(e, _)| e).collect()),
        Ok(_) => {
            eprintln!(
                "ringsync: {who}: list {}: {} entries could not be read",
                root.display(),
                errors.errors()
            );
            Err(())
        }
        Err(e) => {
            eprintln!("ringsync: {who}: list {}: {e}", root.display());
            Err(())
        }
    }
}

/// What a pull changes in DST: the remote SRC's listing against DST's entries.
fn pull_changes(
    o: &RemoteOpts,
    shown: &Shown,
    r: &Remote,
    flags: u8,
    dst_entries: Vec<crate::listing::Entry>,
) -> Result<u64, Attempt> {
    let src = remote_listing(o, shown, r, flags)?;
    let old = crate::listing::Listing {
        flags,
        entries: dst_entries,
        id: [0; 16],
    };
    let new: Vec<(crate::listing::Entry, crate::meta::Meta)> = src
        .entries
        .into_iter()
        .map(|e| {
            let m = crate::listing::meta_of(&e);
            (e, m)
        })
        .collect();
    let errors = crate::error::ErrorLog::new(o.quiet);
    let mut changes = crate::listing::compare(&old, &new, &shown.filter, &errors);
    if o.copy {
        changes.retain(|c| c.kind != crate::diff::Kind::Deleted);
    }
    show(o, shown, &mut changes);
    shown
        .wire
        .changes(crate::mirror::visible(&changes, o.atimes).len() as u64);
    Ok(errors.errors())
}

/// `--dry-run` pull: SRC's listing compared with DST here; nothing is locked or written.
fn pull_dry_run(o: &RemoteOpts, shown: &Shown, r: &Remote, dst: &Path) -> Attempt {
    let flags = own_flags(o);
    let entries = match local_entries(o, dst, flags) {
        Ok(e) => e,
        Err(a) => return a,
    };
    match pull_changes(o, shown, r, flags, entries) {
        Ok(0) => Attempt::Done(exit::OK),
        Ok(_) => Attempt::Done(exit::PARTIAL),
        Err(a) => a,
    }
}

/// Pull: list DST (locked from here to the end), send the listing, apply the differences.
fn pull_listing(o: &RemoteOpts, shown: &Shown, r: &Remote, dst: &Path) -> Attempt {
    let _ = crate::signals::install(|_| {});
    let (dst, guard) = match crate::receive::lock_dst(dst) {
        Ok(x) => x,
        Err(code) => return Attempt::Done(code),
    };
    let flags = own_flags(o);
    // -v, --json: what the remote end will send, from its listing of SRC (taken just before).
    let mut listed = None;
    if o.lists() {
        let entries = match local_entries(o, &dst, flags) {
            Ok(e) => e,
            Err(a) => return a,
        };
        if let Err(a) = pull_changes(o, shown, r, flags, entries.clone()) {
            return a;
        }
        listed = Some(entries);
    }
    let filters = filter_line(shown);
    // The remote end walks SRC while this one lists DST: it is told the listing's flags.
    let mut words: Vec<&[u8]> = vec![b"serve", b"send", b"--listing"];
    words.extend(flag_words(flags));
    if note_states(o, shown) {
        words.push(b"--state");
    }
    let cw = compress_words(o);
    words.extend(cw.iter().map(Vec::as_slice));
    if o.quiet {
        words.push(b"--quiet");
    }
    if filters.is_some() {
        words.push(b"--filters");
    }
    if o.copy {
        words.push(b"--no-delete");
    }
    words.push(b"--");
    words.push(r.path.as_os_str().as_bytes());
    // DST is listed while the remote shell connects.
    let (mut child, out) = match spawn(o, shown, r, &words, Stdio::piped()) {
        Ok(c) => c,
        Err(a) => return a,
    };
    let entries = match listed.map_or_else(|| local_entries(o, &dst, flags), Ok) {
        Ok(e) => e,
        Err(a) => {
            let _ = child.kill();
            let _ = child.wait();
            return a;
        }
    };
    let (mut child, out) = match greeted(o, r, child, out) {
        Ok(c) => c,
        Err(a) => return a,
    };
    let stdin = send_filters(shown, &mut child, filters.as_deref()).expect("piped");
    let mut w = std::io::BufWriter::with_capacity(1 << 16, stdin);
    let id = match put_listing(&mut w, flags, &entries, o.compress) {
        Ok(id) => id,
        Err(_) => return ended_early(&r.host, child, "the remote end stopped reading the listing"),
    };
    let Ok(mut stdin) = w.into_inner() else {
        return ended_early(&r.host, child, "the remote end stopped reading the listing");
    };
    let mut out = out;
    match answer_hashes(&mut out, &mut stdin, &dst, &entries) {
        Ok(()) => {}
        Err((true, e)) => return ended_early(&r.host, child, &e),
        Err((false, e)) => {
            eprintln!("ringsync: mirror: {}: {e}", r.host);
            let _ = child.kill();
            let _ = child.wait();
            return Attempt::Done(exit::REMOTE);
        }
    }
    drop(stdin);
    drop(entries);
    let cfg = receive_config(o, shown, &dst);
    let counts = Arc::new(crate::progress::StreamCounts {
        wire: cfg.wire.clone(),
        ..Default::default()
    });
    let listed = crate::receive::Listed {
        id,
        state: note_states(o, shown),
    };
    let got = match o.compress {
        None => crate::receive::apply_locked(&mut out, &cfg, &dst, guard, Some(listed), Some(counts.clone())),
        Some(_) => match crate::stream_io::decoder(&mut out) {
            Ok(d) => crate::receive::apply_locked(d, &cfg, &dst, guard, Some(listed), Some(counts.clone())),
            Err(e) => {
                eprintln!("ringsync: mirror: zstd: {e}");
                exit::FATAL
            }
        },
    };
    shown.wire.files(counts.bytes.load(Relaxed));
    finish_pull(r, child, out, got, false)
}

/// After a pull's stream: the remote end's status and the local one decide.
fn finish_pull(r: &Remote, mut child: Child, mut out: RemoteOut, got: i32, resumed: bool) -> Attempt {
    let remote = if matches!(got, exit::OK | exit::PARTIAL | exit::VANISHED) {
        let _ = std::io::copy(&mut out, &mut std::io::sink());
        remote_code(child.wait())
    } else {
        // The local end stopped early. A dropped link or a refused token ends the remote
        // shell by itself; otherwise (DST busy or unwritable here) the rest of the stream is
        // not wanted, and the remote end is stopped rather than read to its end.
        let t0 = std::time::Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(st)) => break st.code().unwrap_or(255),
                Ok(None) if t0.elapsed() < Duration::from_secs(2) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Attempt::Done(got);
                }
            }
        }
    };
    match (got, remote) {
        (g, 0) => Attempt::Done(g),
        (_, 255) => Attempt::Dropped(format!("{}: the connection dropped", r.host)),
        (exit::INTERRUPTED, _) => Attempt::Done(exit::INTERRUPTED),
        (_, exit::FATAL) if resumed => Attempt::ResumeRefused,
        (g, code) => Attempt::Done(if g != 0 { g } else { code }),
    }
}

/// `ringsync serve receive DST`: the greeting, DST's status; then the request: apply a
/// (resumed) full stream, or list DST first and apply the differences.
pub fn serve_receive(cfg: &crate::receive::ReceiveConfig, engine: EngineKind) -> i32 {
    let record = Guard::peek(&cfg.dst);
    let token = record.as_ref().and_then(|r| r.resume.clone()).unwrap_or_default();
    // The state DST equals, for an incremental stream (--prev): only a clean DST whose own
    // state was noted (receive checks it has not changed since).
    let equals = record
        .filter(|r| r.is_clean() && r.dst_state.is_some())
        .and_then(|r| r.stream_target);
    if greet(Some(&serde_json::json!({ "token": token, "equals": equals }))).is_err() {
        return exit::LINK;
    }
    let _ = crate::signals::install(|_| {});
    let mut si = std::io::stdin().lock();
    let req = match line(&mut si) {
        Ok(Some(l)) => l,
        _ => {
            eprintln!("ringsync: serve: the sending end went away before its request");
            return exit::LINK;
        }
    };
    let v = serde_json::from_str::<serde_json::Value>(&req).unwrap_or_default();
    let plan = v["plan"].as_str();
    let compress = v["compress"].as_i64().map(|l| l.clamp(1, 19) as i32);
    // --checksum: the listing carries each regular file's content hash.
    let flags = crate::listing::own_flags()
        | if v["checksum"].as_bool() == Some(true) {
            crate::listing::FLAG_CHECKSUM
        } else {
            0
        };
    match plan {
        Some("full") => match compress {
            None => crate::receive::apply_stream(si, cfg),
            Some(_) => match crate::stream_io::decoder(si) {
                Ok(d) => crate::receive::apply_stream(d, cfg),
                Err(e) => {
                    eprintln!("ringsync: serve: zstd: {e}");
                    exit::FATAL
                }
            },
        },
        // A dry run: DST as it is, not locked, not made.
        Some("list") => write_listing(
            &cfg.dst,
            flags,
            engine,
            cfg.quiet,
            false,
            Default::default(),
            compress,
        ),
        Some("listing") => {
            let (dst, guard) = match crate::receive::lock_dst(&cfg.dst) {
                Ok(x) => x,
                Err(code) => return code,
            };
            let Ok(entries) =
                list_entries("serve", &dst, flags, engine, false, Default::default(), cfg.quiet)
            else {
                return exit::FATAL;
            };
            let id = match put_listing(&mut std::io::stdout().lock(), flags, &entries, compress) {
                Ok(id) => id,
                Err(_) => return exit::LINK,
            };
            if let Err((link, e)) = answer_hashes(&mut si, &mut std::io::stdout().lock(), &dst, &entries) {
                eprintln!("ringsync: serve: {e}");
                return if link { exit::LINK } else { exit::FATAL };
            }
            drop(entries);
            let listed = crate::receive::Listed {
                id,
                state: v["state"].as_bool() == Some(true),
            };
            match compress {
                None => crate::receive::apply_locked(si, cfg, &dst, guard, Some(listed), None),
                Some(_) => match crate::stream_io::decoder(si) {
                    Ok(d) => crate::receive::apply_locked(d, cfg, &dst, guard, Some(listed), None),
                    Err(e) => {
                        eprintln!("ringsync: serve: zstd: {e}");
                        exit::FATAL
                    }
                },
            }
        }
        _ => {
            let req: String = req.chars().take(120).collect();
            eprintln!("ringsync: serve: unknown request {req:?}");
            exit::USAGE
        }
    }
}

/// The listing of `root` on stdout (none when it does not exist). `skip_sockets`: for a
/// sending end's tree.
fn write_listing(
    root: &Path,
    flags: u8,
    engine: EngineKind,
    quiet: bool,
    skip_sockets: bool,
    filter: std::sync::Arc<crate::filter::Filter>,
    compress: Option<i32>,
) -> i32 {
    let Ok(entries) = list_entries("serve", root, flags, engine, skip_sockets, filter, quiet) else {
        return exit::FATAL;
    };
    match put_listing(&mut std::io::stdout().lock(), flags, &entries, compress) {
        Ok(_) => exit::OK,
        Err(_) => exit::LINK,
    }
}

/// `ringsync serve list [--root] [--filters] SRC`: the greeting, then SRC's listing, made for
/// a receiving end that runs as root (`--root`) or not; with `--filters`, through the filter
/// line read from stdin first.
pub fn serve_list_src(
    src: &Path,
    root: bool,
    checksum: bool,
    filters: bool,
    compress: Option<i32>,
    engine: EngineKind,
    quiet: bool,
) -> i32 {
    if greet(None).is_err() {
        return exit::LINK;
    }
    let filter = match read_filters(filters) {
        Ok(f) => f,
        Err(code) => return code,
    };
    let flags = if root { crate::listing::FLAG_ROOT } else { 0 }
        | if checksum {
            crate::listing::FLAG_CHECKSUM
        } else {
            0
        };
    write_listing(src, flags, engine, quiet, true, filter, compress)
}

/// The filter line on stdin, when the local end said it sends one.
fn read_filters(filters: bool) -> Result<std::sync::Arc<crate::filter::Filter>, i32> {
    if !filters {
        return Ok(Default::default());
    }
    let line = match line_max(&mut std::io::stdin().lock(), FILTER_LINE_MAX) {
        Ok(Some(l)) => l,
        _ => {
            eprintln!(
                "ringsync: serve: no filter rules on standard input (or longer than {FILTER_LINE_MAX} bytes)"
            );
            return Err(exit::USAGE);
        }
    };
    crate::filter::Filter::from_wire(&line)
        .map(std::sync::Arc::new)
        .map_err(|e| {
            eprintln!("ringsync: serve: {e}");
            exit::USAGE
        })
}

/// `ringsync serve send SRC`: the greeting; with `listing`, the receiving end's listing of
/// DST on stdin; then the stream (of the differences) on stdout.
/// What `serve send` is asked for (besides the stream's own options).
pub struct ServeSend {
    /// Read a listing of DST first and send the differences.
    pub listing: bool,
    /// With `listing`: the flags the listing will have (`--root`, `--checksum`): SRC is walked
    /// for them while the listing comes (and again if it has others).
    pub listed: u8,
    pub filters: bool,
    pub no_delete: bool,
    /// With `listing`: take SRC's state id (`--prev`).
    pub state: bool,
    /// `--from PREV --expect ID`: the incremental stream from PREV, if PREV's state is ID.
    pub from: Option<(PathBuf, String)>,
    /// `--compress LEVEL`: the listing comes compressed, the stream goes so.
    pub compress: Option<i32>,
}

pub fn serve_send(a: ServeSend, mut cfg: crate::send::SendConfig) -> i32 {
    let ServeSend {
        listing,
        listed,
        filters,
        no_delete,
        state,
        from,
        compress,
    } = a;
    let mut partial = false;
    if greet(None).is_err() {
        return exit::LINK;
    }
    let filter = match read_filters(filters) {
        Ok(f) => f,
        Err(code) => return code,
    };
    if let Some((prev, expect)) = from {
        // A status line: the stream follows only when PREV is the state DST equals (the
        // puller lists DST otherwise).
        let why = prev_is(&prev, Some(&expect)).err();
        let st = serde_json::json!({ "from": why.is_none(), "why": why });
        let mut so = std::io::stdout().lock();
        if writeln!(so, "{st}").and_then(|_| so.flush()).is_err() {
            return exit::LINK;
        }
        if why.is_some() {
            return exit::OK;
        }
        cfg.from = Some(prev);
    }
    if listing {
        let ahead =
            crate::listing::Walked::ahead(&cfg.src, listed, cfg.engine, filter.clone(), cfg.quiet, state);
        let mut si = BufReader::with_capacity(1 << 16, std::io::stdin().lock());
        let l = match get_listing(&mut si, compress.is_some()) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("ringsync: serve: the receiving end's listing: {e}");
                return exit::FATAL;
            }
        };
        let walked = ahead.join().expect("the walk does not panic");
        let listed_filter = filter.clone();
        // Moved files: the hash round (one request line, always).
        let mut asked = false;
        let mut ask = |p: &[Vec<u8>]| {
            asked = true;
            ask_hashes(&mut std::io::stdout().lock(), &mut si, p).map_err(|(_, e)| e)
        };
        let (against, errors) = crate::listing::against(
            &l,
            walked,
            &cfg.src,
            cfg.engine,
            filter,
            cfg.quiet,
            if no_delete { None } else { Some(&mut ask) },
        );
        if !asked {
            if let Err((_, e)) = ask_hashes(&mut std::io::stdout().lock(), &mut si, &[]) {
                eprintln!("ringsync: serve: {e}");
                return exit::LINK;
            }
        }
        match against {
            Ok(mut a) if errors.errors() == 0 => {
                if no_delete {
                    a.changes.retain(|c| c.kind != crate::diff::Kind::Deleted);
                }
                a.state = state;
                // --files-from paths the walk did not find: reported, and the run is partial.
                let unseen = crate::error::ErrorLog::new(cfg.quiet);
                crate::filter::report_unseen(&listed_filter, &cfg.src, &unseen);
                partial = unseen.errors() > 0;
                cfg.listing = Some(a)
            }
            Ok(_) => {
                eprintln!(
                    "ringsync: serve: {} entries of {} could not be compared; nothing was changed",
                    errors.errors(),
                    cfg.src.display()
                );
                return exit::PARTIAL;
            }
            Err(e) => {
                eprintln!(
                    "ringsync: serve: compare {} with the receiving end's listing: {e}",
                    cfg.src.display()
                );
                return exit::FATAL;
            }
        }
    }
    let cfg = &cfg;
    let code = match std::io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => match compress {
            None => crate::send::send_to(cfg, std::fs::File::from(fd)),
            Some(level) => {
                let wire = Arc::new(AtomicU64::new(0));
                // (A serving end has no --bwlimit: the pulling end paces its reads.)
                match crate::stream_io::compressor(std::fs::File::from(fd), level, None, wire) {
                    Ok((pipe, t)) => {
                        let code = crate::send::send_to(cfg, pipe);
                        match t.join() {
                            Ok(Ok(())) => code,
                            _ if code != exit::OK => code,
                            _ => exit::LINK,
                        }
                    }
                    Err(e) => {
                        eprintln!("ringsync: serve: start compressing: {e}");
                        exit::FATAL
                    }
                }
            }
        },
        Err(e) => {
            eprintln!("ringsync: serve: standard output: {e}");
            exit::FATAL
        }
    };
    if code == exit::OK && partial {
        exit::PARTIAL
    } else {
        code
    }
}

/// The greeting line on stdout, then the status line when there is one.
fn greet(status: Option<&serde_json::Value>) -> std::io::Result<()> {
    let mut so = std::io::stdout().lock();
    writeln!(so, "{GREETING} {PROTOCOL} ringsync {}", env!("CARGO_PKG_VERSION"))?;
    if let Some(st) = status {
        writeln!(so, "{st}")?;
    }
    so.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Option<(String, String)> {
        parse(OsStr::new(s)).map(|r| (r.host, r.path.to_string_lossy().into_owned()))
    }

    #[test]
    fn remote_paths_follow_rsyncs_rule() {
        let r = |h: &str, p: &str| Some((h.to_string(), p.to_string()));
        assert_eq!(p("host:/data"), r("host", "/data"));
        assert_eq!(p("user@host:data/x"), r("user@host", "data/x"));
        assert_eq!(p("host:"), r("host", ""));
        assert_eq!(p("[::1]:/d"), r("::1", "/d"));
        assert_eq!(p("u@[::1]:/d"), r("u@::1", "/d"));
        assert_eq!(p("host:a:b"), r("host", "a:b"));
        // Local: a '/' before the first ':', no ':', an empty host, an option-like host.
        for local in [
            "/a:b",
            "./a:b",
            "a/b:c",
            "plain",
            ":x",
            "-oProxyCommand=x:y",
            "[::1]",
            "@:x",
            "u@[]:x",
        ] {
            assert_eq!(p(local), None, "{local}");
        }
    }

    #[test]
    fn quoting_leaves_nothing_for_the_shell_to_expand() {
        // Checked by a real sh: each quoted word comes back as itself.
        let words: [&[u8]; 6] = [
            b"plain",
            b"it's",
            b"$(touch /tmp/x) `y` ${z}",
            b"a b\tc\nd",
            b"*?[",
            b"\xff\xfe",
        ];
        for w in words {
            let mut script = b"printf %s ".to_vec();
            script.extend_from_slice(&quote(w));
            let out = Command::new("sh")
                .arg("-c")
                .arg(OsStr::from_bytes(&script))
                .output()
                .unwrap();
            assert_eq!(out.stdout, w, "{}", String::from_utf8_lossy(&script));
        }
    }

    #[test]
    fn a_long_or_unterminated_line_is_not_a_line() {
        let mut long = vec![b'x'; LINE_MAX + 10];
        long.push(b'\n');
        assert_eq!(line(&mut &long[..]).unwrap(), None);
        assert_eq!(line(&mut &b"no newline"[..]).unwrap(), None);
        assert_eq!(line(&mut &b"ok\nrest"[..]).unwrap().as_deref(), Some("ok"));
    }
}
