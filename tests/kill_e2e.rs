//! SIGKILL at random moments (issue 16, item 5): `mirror`, `send | receive` and `copy` are
//! killed with SIGKILL at a delay drawn uniformly from [0, D], D being how long an unkilled run
//! of the same size took on this machine (measured first, in the test; for `receive` measured
//! again at every full rerun, an unkilled run of the same stream). Every round first changes SRC
//! (the shared mutator, plus new content for a few big files), so DST holds an OLD version of
//! the tree and SRC a NEW one; then, after the kill:
//!
//! 1. every regular file at a final name in DST (no path component starting with `.ringsync.`,
//!    `.ringsync-stage.` or `.ringsync-rcv.`) has exactly the content of that path in OLD or in
//!    NEW (sha256 by the independent oracle's scan; a truncated or mixed file is neither), for
//!    `copy` too, new paths included (docs/copy.md: every file is written under a temporary
//!    name; before 2026-12-04 new files were written at their final names and this failed);
//! 2. (`mirror`, `receive`) the record on DST's root (`user.ringsync.mirror`) says `dirty`
//!    unless the run got to its end: a run that exited 0 before the kill landed left it `clean`
//!    and DST exact; a killed run may have left it `clean` only if DST is exactly NEW (killed
//!    after the record was written) or exactly OLD with the record untouched (killed before its
//!    first write);
//! 3. (`mirror`, `receive`) DST's lock is free: `flock(LOCK_EX|LOCK_NB)` on DST's root succeeds
//!    at once, and the rerun (which locks DST too) does not exit 4;
//! 4. rerunning the same command (for `receive`: with every other token a kill left, `send
//!    --resume $(receive --token DST)`) exits 0, DST equals SRC by the oracle (`common::mirror_cmp`:
//!    everything but the record xattr on the root), the record is `clean`, and no temporary or
//!    staging name is left anywhere in DST. `copy` never deletes: its rerun must make every path
//!    of SRC exact (extras allowed), then a `mirror` must make DST exact with no `.ringsync*`
//!    name left.
//!
//! `receive` rounds kill the receiver, except every fourth, which kills the sender (a stream cut
//! under a live receiver: it must stop with exit 1, remove what it staged, and obey rules 1-3).
//! `mirror` rounds alternate `--engine auto` and `--engine uring`.
//!
//! `kill_check_selftest` shows that the checks can fail: a truncated file, a file half old and
//! half new and a truncated new file are reported as torn (temporaries are not), a held lock is
//! seen, and a `clean` record over a tree that is neither OLD nor NEW is refused.
//!
//! Seeds: each test prints its seed (a fresh one per run); `RINGSYNC_KILL_SEED=N` (decimal or
//! 0x hex) replays the trees, mutations and kill delays (where a kill lands still depends on the
//! machine). `RINGSYNC_KILL_ROUNDS=N` changes the number of kill rounds (default 20 per
//! command). A round whose run ends before its kill sets the delay range of the next rounds to
//! how long that run took.

mod common;

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};

use common::mutate as mutator;
use common::oracle::{compare_scanned, scan_tree, show};
use common::procs::{err_file, read_back, wait_all};
use common::*;

/// How long any one ringsync process may take before the test gives up on it.
const DEADLINE: Duration = Duration::from_secs(60);
/// At most this many failing rounds are collected before a test stops early.
const MAX_FAILED_ROUNDS: usize = 4;

// ---------------------------------------------------------------------------------------------
// Seeds and knobs
// ---------------------------------------------------------------------------------------------

fn parse_u64(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// The seed of one test: `RINGSYNC_KILL_SEED`, else a fresh one; printed either way.
fn seed_for(test: &str) -> u64 {
    let seed = match std::env::var("RINGSYNC_KILL_SEED") {
        Ok(v) => parse_u64(&v).unwrap_or_else(|| panic!("RINGSYNC_KILL_SEED={v:?} is not a number")),
        Err(_) => {
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            t ^ u64::from(std::process::id()).rotate_left(40) ^ test.len() as u64
        }
    };
    note(&format!(
        "{test}: seed {seed:#x} (replay: RINGSYNC_KILL_SEED={seed:#x} cargo test --release --test kill_e2e {test})"
    ));
    seed
}

fn rounds(default: usize) -> usize {
    std::env::var("RINGSYNC_KILL_ROUNDS")
        .ok()
        .and_then(|v| parse_u64(&v))
        .map_or(default, |n| n as usize)
}

// ---------------------------------------------------------------------------------------------
// The checks (pure functions of oracle scans, so that the self-test can feed them)
// ---------------------------------------------------------------------------------------------

/// A temporary or staging name of ringsync (any component): `.ringsync.<pid>.<n>.tmp` (copy,
/// mirror), `.ringsync-stage.<pid>` (mirror --prev), `.ringsync-rcv.<tag>.<n>` and
/// `.ringsync-rcv.hold.<id>` (receive).
fn is_temp(p: &[u8]) -> bool {
    p.split(|&b| b == b'/').any(|c| {
        c.starts_with(b".ringsync.") || c.starts_with(b".ringsync-stage.") || c.starts_with(b".ringsync-rcv.")
    })
}

/// What a scan of DST after a kill holds.
#[derive(Debug, Default)]
struct KillView {
    /// Regular files at final names that are neither the OLD nor the NEW version.
    torn: Vec<String>,
    /// Files (whose OLD and NEW differ) already NEW / still OLD.
    new: usize,
    old: usize,
    /// Entries under temporary names.
    temps: usize,
    /// Files not held to the rule (copy: paths OLD lacked).
    unchecked: usize,
}

/// Rule 1: every regular file at a final name of `dst` is the `old` or the `new` version of
/// its path. With `only_old_paths` (copy), paths that `old` lacks are not checked.
fn old_or_new(dst: &Tree, old: &Tree, new: &Tree, only_old_paths: bool) -> KillView {
    let mut v = KillView::default();
    for (p, e) in &dst.entries {
        if is_temp(p) {
            v.temps += 1;
            continue;
        }
        if e.kind != Kind::File {
            continue;
        }
        if only_old_paths && !old.entries.contains_key(p) {
            v.unchecked += 1;
            continue;
        }
        let version = |t: &Tree| {
            t.entries
                .get(p)
                .filter(|x| x.kind == Kind::File)
                .and_then(|x| x.hash)
        };
        let (o, n) = (version(old), version(new));
        if e.hash.is_some() && e.hash == n {
            v.new += usize::from(o != n);
        } else if e.hash.is_some() && e.hash == o {
            v.old += 1;
        } else {
            let size = |t: &Tree| {
                t.entries
                    .get(p)
                    .map(|x| format!("{:?} of {} bytes", x.kind, x.size))
                    .unwrap_or_else(|| "absent".into())
            };
            v.torn.push(format!(
                "{}: {} bytes, neither the OLD version ({}) nor the NEW one ({})",
                show(p),
                e.size,
                size(old),
                size(new)
            ));
        }
    }
    v
}

/// How the killed process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// It exited by itself (status) before the kill landed.
    Exited(i32),
    /// It did not get to its end: SIGKILL ended it (or, for `receive`, the sender was killed
    /// and the receiver stopped at the cut, exit 1).
    Stopped,
}

fn end_of(st: ExitStatus) -> End {
    match (st.code(), st.signal()) {
        (Some(c), _) => End::Exited(c),
        (None, Some(libc::SIGKILL)) => End::Stopped,
        other => panic!("unexpected end of a ringsync process: {other:?} ({st:?})"),
    }
}

/// Rule 2 on one observation: the record's state after the run, whether the record's bytes are
/// those from before the run, and whether DST equals OLD / NEW by the oracle.
fn record_verdict(
    end: End,
    state: Option<&str>,
    record_untouched: bool,
    eq_old: bool,
    eq_new: bool,
) -> Result<(), String> {
    match (end, state) {
        (End::Exited(0), Some("clean")) if eq_new => Ok(()),
        (End::Exited(0), Some("clean")) => Err("exited 0 with a clean record, but DST is not NEW".into()),
        (End::Exited(0), s) => Err(format!(
            "exited 0, but the record's state is {s:?}, not \"clean\""
        )),
        (End::Exited(c), _) => Err(format!("exited {c} by itself (expected 0 or the kill)")),
        (End::Stopped, Some("dirty")) => Ok(()),
        (End::Stopped, Some("clean")) if eq_new => Ok(()),
        (End::Stopped, Some("clean")) if eq_old && record_untouched => Ok(()),
        (End::Stopped, Some("clean")) => Err(format!(
            "stopped before its end, and the record says \"clean\" although DST is {} (record {})",
            if eq_old { "OLD" } else { "neither OLD nor NEW" },
            if record_untouched {
                "untouched"
            } else {
                "rewritten"
            }
        )),
        (End::Stopped, s) => Err(format!("stopped before its end, and the record's state is {s:?}")),
    }
}

/// Rule 3: nobody holds the flock on DST's root.
fn lock_free(dst: &Path) -> bool {
    use rustix::fs::{FlockOperation, Mode, OFlags};
    let fd = rustix::fs::open(
        dst,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap_or_else(|e| panic!("open {}: {e}", dst.display()));
    match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => true,
        Err(rustix::io::Errno::WOULDBLOCK) => false,
        Err(e) => panic!("flock {}: {e}", dst.display()),
    }
}

/// What the kill tests need, or a skip (a failure under CI): root (the generated trees hold
/// mode-0000 directories, other owners and device nodes) and user xattrs on the scratch
/// filesystem (the record, rule 2, is an xattr there).
fn prerequisites_met(scratch_dir: &Path) -> bool {
    if !is_root() {
        skip_or_fail("needs root: the generated trees hold mode-0000 directories, other owners and devices");
        return false;
    }
    let probe = rustix::fs::setxattr(
        scratch_dir,
        "user.ringsync-test-probe",
        b"1",
        rustix::fs::XattrFlags::empty(),
    );
    if let Err(e) = probe {
        skip_or_fail(&format!(
            "no user xattrs on {} ({e}): the mirror record would not be an xattr there",
            scratch_dir.display()
        ));
        return false;
    }
    true
}

fn record_state(dst: &Path) -> Option<String> {
    read_record_json(dst).and_then(|v| v.get("state").and_then(|s| s.as_str()).map(str::to_string))
}

fn scan(p: &Path, what: &str) -> Tree {
    scan_tree(p, true).unwrap_or_else(|e| panic!("{what}: scan {}: {e}", p.display()))
}

fn fmt_list(d: &[String]) -> String {
    let mut s = d.iter().take(40).cloned().collect::<Vec<_>>().join("\n  ");
    if d.len() > 40 {
        s.push_str(&format!("\n  ... and {} more", d.len() - 40));
    }
    s
}

fn temp_names(t: &Tree) -> Vec<String> {
    t.entries.keys().filter(|p| is_temp(p)).map(|p| show(p)).collect()
}

// ---------------------------------------------------------------------------------------------
// Trees
// ---------------------------------------------------------------------------------------------

fn random_data(rng: &mut SmallRng, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rng.fill_bytes(&mut v);
    v
}

/// Write `data` at `rel` in `root`: overwritten in place when a regular file is there,
/// otherwise made (whatever the mutations put at the name or its parent removed first).
fn put_file(root: &Path, rel: &[u8], data: &[u8]) {
    let p = bpath(root, rel);
    match std::fs::symlink_metadata(&p) {
        Ok(m) if m.is_file() => return mutator::overwrite_file(root, rel, data).unwrap(),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(&p).unwrap(),
        Ok(_) => std::fs::remove_file(&p).unwrap(),
        Err(_) => {}
    }
    let parent = p.parent().unwrap();
    if std::fs::symlink_metadata(parent).is_ok_and(|m| !m.is_dir()) {
        std::fs::remove_file(parent).unwrap();
    }
    std::fs::create_dir_all(parent).unwrap();
    std::fs::write(&p, data).unwrap();
}

/// The big files of SRC: how many, and the range of their sizes.
#[derive(Clone, Copy)]
struct BigOpts {
    count: usize,
    min: usize,
    max: usize,
}

/// SRC: a generated nasty tree (a few hundred entries: odd names, hardlinks, symlinks, sparse
/// files, xattrs, ACLs, specials, a path deeper than PATH_MAX) and big files that every round
/// rewrites, so that a run lasts long enough to be hit mid-way.
struct Src {
    bigs: Vec<Vec<u8>>,
    opts: BigOpts,
    /// Mutations to draw from.
    kinds: Vec<mutator::Mut>,
    /// Whether a big file that the mutations moved, deleted or replaced is made again (which
    /// may put a file where the last round's tree had a directory).
    remake: bool,
}

fn make_src(
    src: &Path,
    seed: u64,
    opts: BigOpts,
    kinds: Vec<mutator::Mut>,
    remake: bool,
    rng: &mut SmallRng,
) -> Src {
    gen_tree(
        src,
        seed,
        &GenOpts {
            dirs: 16,
            files: 120,
            max_file: 1 << 20,
            ..GenOpts::default()
        },
    )
    .expect("generate SRC");
    let bigs: Vec<Vec<u8>> = (0..opts.count)
        .map(|i| {
            if i % 2 == 0 {
                format!("big/big-{i}").into_bytes()
            } else {
                format!("big-{i}").into_bytes()
            }
        })
        .collect();
    for b in &bigs {
        let n = rng.gen_range(opts.min..opts.max);
        put_file(src, b, &random_data(rng, n));
    }
    mutator::fix_atimes(src, seed).unwrap();
    Src {
        bigs,
        opts,
        kinds,
        remake,
    }
}

/// One round of changes to SRC: a dozen random mutations, then new content for most big files
/// (some keep their size; one that the mutations moved, deleted or replaced is made again).
fn change_src(src: &Path, s: &Src, rng: &mut SmallRng, seed: u64) -> Vec<String> {
    let opts = mutator::MutOpts {
        kinds: s.kinds.clone(),
        ..mutator::MutOpts::default()
    };
    let mut log = mutator::mutate_with(src, seed, 12, &opts).expect("mutate SRC");
    for b in &s.bigs {
        if rng.gen_bool(0.25) {
            continue;
        }
        let n = match std::fs::symlink_metadata(bpath(src, b)) {
            Ok(m) if m.is_file() && rng.gen_bool(0.5) => m.len() as usize,
            Ok(m) if m.is_file() || s.remake => rng.gen_range(s.opts.min..s.opts.max),
            Err(_) if s.remake => rng.gen_range(s.opts.min..s.opts.max),
            _ => continue,
        };
        put_file(src, b, &random_data(rng, n));
        log.push(format!("rewrote {} ({n} bytes)", show(b)));
    }
    mutator::fix_atimes(src, seed).unwrap();
    log
}

const MIB: usize = 1 << 20;

/// Big files for `mirror` and `copy`: a round's run takes some 50-150 ms here.
const BIGS: BigOpts = BigOpts {
    count: 6,
    min: 2 * MIB,
    max: 8 * MIB,
};

/// Big files for `receive`: a full stream of more than 64 MiB, so it has a CHECKPOINT (a
/// publication) before its END.
const RECEIVE_BIGS: BigOpts = BigOpts {
    count: 10,
    min: 6 * MIB,
    max: 9 * MIB,
};

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

fn ringsync_cmd(args: &[OsString], stderr: Stdio) -> Command {
    let mut c = Command::new(bin());
    c.args(args).stdout(Stdio::null()).stderr(stderr);
    default_signals(&mut c);
    c
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn tail(s: &str) -> &str {
    let mut i = s.len().saturating_sub(3000);
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

/// One ringsync process of a kill round (`copy` or `mirror`), killed after `delay`.
/// Also how long the run took when it ended by itself before the kill: a full round's time,
/// which the next rounds' delays are drawn from (the calibration run is often slower than later
/// rounds, and a range too wide kills too few).
fn run_killed(args: &[OsString], delay: Duration) -> (End, String, Option<Duration>) {
    let (f, e) = err_file();
    let mut c = ringsync_cmd(args, e)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn ringsync");
    let t0 = Instant::now();
    loop {
        if let Some(st) = c.try_wait().expect("try_wait") {
            return (end_of(st), read_back(f), Some(t0.elapsed()));
        }
        let left = delay.saturating_sub(t0.elapsed());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(Duration::from_micros(200)));
    }
    let _ = c.kill();
    let st = c.wait().expect("wait");
    (end_of(st), read_back(f), None)
}

/// One ringsync process run to its end (bounded by DEADLINE): exit code and stderr.
fn run_to_end(args: &[OsString]) -> (Option<i32>, String) {
    let (f, e) = err_file();
    let c = ringsync_cmd(args, e)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn ringsync");
    let mut kids = vec![("ringsync", c)];
    let codes = wait_all(&mut kids, &format!("ringsync {args:?}"), DEADLINE);
    (codes[0], read_back(f))
}

/// `ringsync send [send_extra] SRC | ringsync receive -q DST`, started; returns (send, receive)
/// and their stderr files.
fn spawn_pipeline(
    send_extra: &[OsString],
    src: &Path,
    dst: &Path,
) -> (Child, Child, std::fs::File, std::fs::File) {
    let (sf, se) = err_file();
    let (rf, re) = err_file();
    let mut sargs = os(&["send", "-q"]);
    sargs.extend(send_extra.iter().cloned());
    sargs.push(src.into());
    let mut send = ringsync_cmd(&sargs, se)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn send");
    let out = send.stdout.take().unwrap();
    let rargs = vec!["receive".into(), "-q".into(), dst.into()];
    let recv = ringsync_cmd(&rargs, re)
        .stdin(Stdio::from(out))
        .spawn()
        .expect("spawn receive");
    (send, recv, sf, rf)
}

/// Wait for every child (killing all of them at DEADLINE, then panic): their exit statuses.
fn wait_statuses(kids: &mut [&mut Child], what: &str) -> Vec<ExitStatus> {
    let start = Instant::now();
    let mut st: Vec<Option<ExitStatus>> = vec![None; kids.len()];
    while st.iter().any(Option::is_none) {
        for (i, k) in kids.iter_mut().enumerate() {
            if st[i].is_none() {
                st[i] = k.try_wait().expect("try_wait");
            }
        }
        if start.elapsed() > DEADLINE {
            for k in kids.iter_mut() {
                let _ = k.kill();
                let _ = k.wait();
            }
            panic!("{what}: still running after {DEADLINE:?} (killed; statuses so far {st:?})");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    st.into_iter().map(Option::unwrap).collect()
}

/// `send | receive` run to its end: (send exit, receive exit, stderr of both).
fn pipeline_to_end(send_extra: &[OsString], src: &Path, dst: &Path) -> (Option<i32>, Option<i32>, String) {
    let (send, recv, sf, rf) = spawn_pipeline(send_extra, src, dst);
    let mut kids = vec![("send", send), ("receive", recv)];
    let codes = wait_all(&mut kids, "send | receive", DEADLINE);
    let err = format!(
        "--- send stderr ---\n{}\n--- receive stderr ---\n{}",
        tail(&read_back(sf)),
        tail(&read_back(rf))
    );
    (codes[0], codes[1], err)
}

fn token(dst: &Path) -> Option<String> {
    let out = Command::new(bin())
        .args(["receive".as_ref(), "--token".as_ref(), dst.as_os_str()])
        .output()
        .expect("spawn receive --token");
    match out.status.code() {
        Some(0) => Some(String::from_utf8_lossy(&out.stdout).trim().to_string()),
        Some(1) => None,
        _ => panic!("receive --token: {}", describe(&out)),
    }
}

/// Kill delays: uniform in [0, full].
fn delay_in(rng: &mut SmallRng, full: Duration) -> Duration {
    Duration::from_micros(rng.gen_range(0..=full.as_micros() as u64))
}

// ---------------------------------------------------------------------------------------------
// Shared bookkeeping of the kill tests
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Tally {
    fails: Vec<String>,
    failed_rounds: usize,
    /// Rounds whose process the kill ended (rather than its own exit).
    killed: usize,
    /// Killed rounds that left DST neither OLD nor NEW (the kill landed mid-write).
    mid_run: usize,
    /// Files seen NEW / still OLD after kills, temporaries left by kills.
    new: usize,
    old: usize,
    temps: usize,
}

impl Tally {
    fn round(&mut self, fails: Vec<String>) -> bool {
        if !fails.is_empty() {
            self.failed_rounds += 1;
            self.fails.extend(fails);
        }
        self.failed_rounds < MAX_FAILED_ROUNDS
    }

    fn finish(&self, test: &str, seed: u64, rounds: usize, started: Instant) {
        note(&format!(
            "{test}: {rounds} rounds in {:.1?}: {} killed ({} mid-write), {} files seen new, {} still old, \
             {} temporaries after kills",
            started.elapsed(),
            self.killed,
            self.mid_run,
            self.new,
            self.old,
            self.temps
        ));
        assert!(
            self.fails.is_empty(),
            "{test} (seed {seed:#x}, replay with RINGSYNC_KILL_SEED={seed:#x}): {} problems in {} rounds:\n\n{}",
            self.fails.len(),
            self.failed_rounds,
            self.fails.join("\n\n")
        );
        // Otherwise the test proved little about interrupted runs (with enough rounds to tell).
        assert!(
            rounds < 8 || self.killed * 4 >= rounds,
            "{test} (seed {seed:#x}): only {} of {rounds} runs were still going when the kill came",
            self.killed
        );
    }
}

/// The checks of a killed run that `mirror` and `receive` share (rules 1 to 3). `after` is the
/// scan of DST after the kill.
#[allow(clippy::too_many_arguments)]
fn check_killed(
    what: &str,
    end: End,
    dst: &Path,
    after: &Tree,
    old: &Tree,
    new: &Tree,
    record_before: &Option<Vec<u8>>,
    tally: &mut Tally,
) -> Vec<String> {
    let mut fails = Vec::new();
    let v = old_or_new(after, old, new, false);
    if !v.torn.is_empty() {
        fails.push(format!(
            "{what}: torn files at final names:\n  {}",
            fmt_list(&v.torn)
        ));
    }
    let eq_old = compare_scanned(old, after, &mirror_cmp()).is_empty();
    let eq_new = compare_scanned(new, after, &mirror_cmp()).is_empty();
    if end == End::Stopped {
        tally.killed += 1;
        tally.mid_run += usize::from(!eq_old && !eq_new);
    }
    tally.new += v.new;
    tally.old += v.old;
    tally.temps += v.temps;
    let state = record_state(dst);
    let untouched = read_record(dst) == *record_before;
    if let Err(e) = record_verdict(end, state.as_deref(), untouched, eq_old, eq_new) {
        fails.push(format!("{what}: record: {e}"));
    }
    if !lock_free(dst) {
        fails.push(format!(
            "{what}: DST's lock is still held after the process ended"
        ));
    }
    note(&format!(
        "{what}: {end:?}; {} new, {} old, {} temporaries; record {state:?}; DST {}",
        v.new,
        v.old,
        v.temps,
        if eq_new {
            "= NEW"
        } else if eq_old {
            "= OLD"
        } else {
            "mid-way"
        }
    ));
    fails
}

/// Rule 4 after a rerun: DST exact, clean, no temporaries. Returns DST's scan (OLD of the next
/// round).
fn check_converged(what: &str, dst: &Path, new: &Tree, fails: &mut Vec<String>, log: &[String]) -> Tree {
    let t = scan(dst, what);
    let temps = temp_names(&t);
    if !temps.is_empty() {
        fails.push(format!(
            "{what}: temporaries left in DST:\n  {}",
            fmt_list(&temps)
        ));
    }
    let d = compare_scanned(new, &t, &mirror_cmp());
    if !d.is_empty() {
        fails.push(format!(
            "{what}: DST differs from SRC ({} differences):\n  {}\n--- changes made to SRC this round ---\n  {}",
            d.len(),
            fmt_list(&d),
            log.join("\n  ")
        ));
    }
    let state = record_state(dst);
    if state.as_deref() != Some("clean") {
        fails.push(format!("{what}: record state {state:?} after a successful run"));
    }
    t
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

/// `ringsync mirror SRC DST` killed at random moments.
#[test]
fn mirror_sigkill_at_random_moments() {
    let test = "mirror_sigkill_at_random_moments";
    let started = Instant::now();
    let seed = seed_for(test);
    let n = rounds(20);
    let mut rng = SmallRng::seed_from_u64(seed);
    let tmp = scratch("kill-mirror");
    if !prerequisites_met(tmp.path()) {
        return;
    }
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    let s = make_src(&src, seed, BIGS, mutator::DEFAULT_KINDS.to_vec(), true, &mut rng);
    let args = |extra: &[&str]| {
        let mut a = os(&["mirror", "-q"]);
        a.extend(os(extra));
        a.push(src.clone().into());
        a.push(dst.clone().into());
        a
    };

    let (code, err) = run_to_end(&args(&[]));
    assert_eq!(code, Some(0), "first mirror: {err}");
    assert_trees_equal(&src, &dst, &mirror_cmp(), "first mirror");

    // Calibration: one round's changes, mirrored without a kill.
    change_src(&src, &s, &mut rng, seed ^ 0xca1);
    let t0 = Instant::now();
    let (code, err) = run_to_end(&args(&[]));
    let mut full = t0.elapsed();
    assert_eq!(code, Some(0), "calibration mirror: {err}");
    assert_trees_equal(&src, &dst, &mirror_cmp(), "calibration mirror");
    let mut old = scan(&dst, "calibration mirror");
    note(&format!("{test}: an unkilled round's mirror takes {full:.1?}"));

    let mut tally = Tally::default();
    for round in 0..n {
        let engine = ["--engine", if round % 2 == 0 { "auto" } else { "uring" }];
        let delay = delay_in(&mut rng, full);
        let what = format!(
            "round {round} (mirror --engine {}, kill after {delay:.1?} of {full:.1?})",
            engine[1]
        );
        let log = change_src(&src, &s, &mut rng, seed.wrapping_add(round as u64 + 1));
        let new = scan(&src, &what);
        let record_before = read_record(&dst);
        let (end, err, took) = run_killed(&args(&engine), delay);
        full = took.unwrap_or(full);
        let after = scan(&dst, &what);
        let mut fails = check_killed(&what, end, &dst, &after, &old, &new, &record_before, &mut tally);
        if err.contains("panicked") {
            fails.push(format!("{what}: the killed run panicked:\n{}", tail(&err)));
        }
        let (code, err) = run_to_end(&args(&engine));
        if code != Some(0) {
            fails.push(format!(
                "{what}: rerun exited {code:?} (4 = busy):\n{}",
                tail(&err)
            ));
        }
        old = check_converged(&format!("{what}, after the rerun"), &dst, &new, &mut fails, &log);
        if !tally.round(fails) {
            break;
        }
    }
    tally.finish(test, seed, n, started);
}

/// `ringsync send SRC | ringsync receive DST` killed at random moments: the receiver, or (every
/// fourth round) the sender, which cuts the stream under a live receiver.
#[test]
fn receive_sigkill_at_random_moments() {
    let test = "receive_sigkill_at_random_moments";
    let started = Instant::now();
    let seed = seed_for(test);
    let n = rounds(20);
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x07ec_e17e);
    let tmp = scratch("kill-receive");
    if !prerequisites_met(tmp.path()) {
        return;
    }
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    let s = make_src(
        &src,
        seed,
        RECEIVE_BIGS,
        mutator::DEFAULT_KINDS.to_vec(),
        true,
        &mut rng,
    );

    let (sc, rc, err) = pipeline_to_end(&[], &src, &dst);
    assert_eq!((sc, rc), (Some(0), Some(0)), "first send | receive:\n{err}");
    assert_trees_equal(&src, &dst, &mirror_cmp(), "first send | receive");

    change_src(&src, &s, &mut rng, seed ^ 0xca1);
    let t0 = Instant::now();
    let (sc, rc, err) = pipeline_to_end(&[], &src, &dst);
    let full = t0.elapsed();
    assert_eq!((sc, rc), (Some(0), Some(0)), "calibration send | receive:\n{err}");
    assert_trees_equal(&src, &dst, &mirror_cmp(), "calibration send | receive");
    let mut old = scan(&dst, "calibration send | receive");
    note(&format!(
        "{test}: an unkilled round's send | receive takes {full:.1?}"
    ));

    let mut tally = Tally::default();
    let (mut tokens, mut resumed) = (0, 0);
    let mut full = full;
    for round in 0..n {
        let kill_sender = round % 4 == 3;
        let delay = delay_in(&mut rng, full);
        let victim = if kill_sender { "send" } else { "receive" };
        let what = format!("round {round} (kill {victim} after {delay:.1?} of {full:.1?})");
        let log = change_src(&src, &s, &mut rng, seed.wrapping_add(round as u64 + 1));
        let new = scan(&src, &what);
        let record_before = read_record(&dst);
        let (mut send, mut recv, sf, rf) = spawn_pipeline(&[], &src, &dst);
        std::thread::sleep(delay);
        let _ = if kill_sender { send.kill() } else { recv.kill() };
        let st = wait_statuses(&mut [&mut send, &mut recv], &what);
        let (send_end, recv_end) = (end_of(st[0]), end_of(st[1]));
        let errs = format!(
            "--- send stderr ---\n{}\n--- receive stderr ---\n{}",
            tail(&read_back(sf)),
            tail(&read_back(rf))
        );
        let mut fails = Vec::new();
        // The receiver of a stream cut by the kill stops at the cut (exit 1).
        let end = match (kill_sender, send_end, recv_end) {
            (true, End::Stopped, End::Exited(1)) => End::Stopped,
            (_, _, e) => e,
        };
        if errs.contains("panicked") {
            fails.push(format!("{what}: a process panicked:\n{errs}"));
        }
        if kill_sender && send_end == End::Exited(0) && recv_end != End::Exited(0) {
            fails.push(format!(
                "{what}: send finished, receive ended {recv_end:?}:\n{errs}"
            ));
        }
        let after = scan(&dst, &what);
        // A receiver that stopped at the cut removed what it had staged (docs/stream.md).
        if recv_end == End::Exited(1) && !temp_names(&after).is_empty() {
            fails.push(format!(
                "{what}: the receiver stopped at the cut but left temporaries:\n  {}",
                fmt_list(&temp_names(&after))
            ));
        }
        fails.extend(check_killed(
            &what,
            end,
            &dst,
            &after,
            &old,
            &new,
            &record_before,
            &mut tally,
        ));
        // Every other token left by a kill is used to resume; a full stream follows the others.
        let tok = token(&dst);
        tokens += usize::from(tok.is_some());
        if tok.is_some() {
            note(&format!("{what}: a resume token was left"));
        }
        let resume = tok.filter(|_| tokens % 2 == 1);
        let extra = match &resume {
            Some(t) => vec![OsString::from("--resume"), OsString::from(t)],
            None => Vec::new(),
        };
        resumed += usize::from(resume.is_some());
        let t0 = Instant::now();
        let (sc, rc, err) = pipeline_to_end(&extra, &src, &dst);
        if resume.is_none() {
            // A full rerun is an unkilled run of the same stream: the next round's kills are
            // drawn against it (syncfs, and so a run's length, depends on what the other tests
            // write meanwhile).
            full = t0.elapsed();
        }
        if (sc, rc) != (Some(0), Some(0)) {
            fails.push(format!(
                "{what}: rerun ({}) exited send {sc:?}, receive {rc:?} (4 = busy):\n{err}",
                if resume.is_some() {
                    "send --resume TOKEN"
                } else {
                    "full stream"
                }
            ));
        }
        old = check_converged(&format!("{what}, after the rerun"), &dst, &new, &mut fails, &log);
        if !tally.round(fails) {
            break;
        }
    }
    note(&format!(
        "{test}: kills left {tokens} resume tokens; {resumed} reruns were resumed from one"
    ));
    tally.finish(test, seed, n, started);
}

/// `ringsync copy SRC DST` killed at random moments. Only what docs/copy.md promises: an entry
/// DST had is never torn (it is replaced through a temporary name), a rerun of `copy` makes every
/// path of SRC exact, and a `mirror` then removes the temporaries and extras.
#[test]
fn copy_sigkill_at_random_moments() {
    let test = "copy_sigkill_at_random_moments";
    let started = Instant::now();
    let seed = seed_for(test);
    let n = rounds(20);
    let mut rng = SmallRng::seed_from_u64(seed ^ 0xc0b7);
    let tmp = scratch("kill-copy");
    if !prerequisites_met(tmp.path()) {
        return;
    }
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    // No directory becomes a file (no DirToFile, big files not made again where they are
    // missing or not files): `copy` never deletes, so it cannot put a file where DST has a
    // non-empty directory (exit 3, "Directory not empty"), killed or not.
    let kinds = mutator::DEFAULT_KINDS
        .iter()
        .copied()
        .filter(|k| *k != mutator::Mut::DirToFile)
        .collect();
    let s = make_src(&src, seed, BIGS, kinds, false, &mut rng);
    let args = |sub: &str| {
        let mut a = os(&[sub, "-q"]);
        a.push(src.clone().into());
        a.push(dst.clone().into());
        a
    };
    let (code, err) = run_to_end(&args("copy"));
    assert_eq!(code, Some(0), "first copy: {err}");
    assert_trees_equal(&src, &dst, &CompareOpts::default(), "first copy");

    change_src(&src, &s, &mut rng, seed ^ 0xca1);
    let t0 = Instant::now();
    let (code, err) = run_to_end(&args("copy"));
    let mut full = t0.elapsed();
    assert_eq!(code, Some(0), "calibration copy: {err}");
    let (code, err) = run_to_end(&args("mirror"));
    assert_eq!(code, Some(0), "mirror after the calibration copy: {err}");
    assert_trees_equal(&src, &dst, &mirror_cmp(), "calibration copy and mirror");
    let mut old = scan(&dst, "calibration");
    note(&format!("{test}: an unkilled round's copy takes {full:.1?}"));

    let with_extras = CompareOpts {
        allow_extra_in_b: true,
        ..mirror_cmp()
    };
    let mut tally = Tally::default();
    for round in 0..n {
        let delay = delay_in(&mut rng, full);
        let what = format!("round {round} (copy, kill after {delay:.1?} of {full:.1?})");
        let log = change_src(&src, &s, &mut rng, seed.wrapping_add(round as u64 + 1));
        let new = scan(&src, &what);
        let (end, err, took) = run_killed(&args("copy"), delay);
        full = took.unwrap_or(full);
        let after = scan(&dst, &what);
        let v = old_or_new(&after, &old, &new, false);
        let mut fails = Vec::new();
        if !v.torn.is_empty() {
            fails.push(format!(
                "{what}: torn files at names DST had before:\n  {}",
                fmt_list(&v.torn)
            ));
        }
        match end {
            End::Stopped => {
                tally.killed += 1;
                tally.mid_run += usize::from(!compare_scanned(&old, &after, &mirror_cmp()).is_empty());
            }
            End::Exited(0) => {}
            End::Exited(c) => fails.push(format!("{what}: exited {c} by itself:\n{}", tail(&err))),
        }
        if err.contains("panicked") {
            fails.push(format!("{what}: the killed run panicked:\n{}", tail(&err)));
        }
        tally.new += v.new;
        tally.old += v.old;
        tally.temps += v.temps;
        note(&format!(
            "{what}: {end:?}; {} new, {} old, {} temporaries, {} files at new names not checked",
            v.new, v.old, v.temps, v.unchecked
        ));
        let (code, err) = run_to_end(&args("copy"));
        if code != Some(0) {
            fails.push(format!("{what}: copy rerun exited {code:?}:\n{}", tail(&err)));
        }
        let d = compare_scanned(&new, &scan(&dst, &what), &with_extras);
        if !d.is_empty() {
            fails.push(format!(
                "{what}: after the copy rerun, DST differs from SRC ({} differences):\n  {}\n--- changes made to SRC this round ---\n  {}",
                d.len(),
                fmt_list(&d),
                log.join("\n  ")
            ));
        }
        let (code, err) = run_to_end(&args("mirror"));
        if code != Some(0) {
            fails.push(format!(
                "{what}: mirror after the copy rerun exited {code:?}:\n{}",
                tail(&err)
            ));
        }
        old = check_converged(
            &format!("{what}, after copy and mirror"),
            &dst,
            &new,
            &mut fails,
            &log,
        );
        if !tally.round(fails) {
            break;
        }
    }
    tally.finish(test, seed, n, started);
}

/// The checks above can fail: fabricated OLD, NEW and DST trees with a truncated old file, a
/// file half new and half old, a truncated new file and a file of neither version; a held lock;
/// records that lie.
#[test]
fn kill_check_selftest() {
    let tmp = scratch("kill-selftest");
    let (o, nw, d) = (
        tmp.path().join("old"),
        tmp.path().join("new"),
        tmp.path().join("dst"),
    );
    for p in [&o, &nw, &d] {
        std::fs::create_dir_all(p.join("sub")).unwrap();
    }
    let mut rng = SmallRng::seed_from_u64(5);
    let a_old = random_data(&mut rng, 1 << 20);
    let a_new = random_data(&mut rng, 1 << 20);
    let b_old = random_data(&mut rng, 300_000);
    let b_new = random_data(&mut rng, 300_000);
    let f_new = random_data(&mut rng, 100_000);
    let w = |root: &Path, rel: &str, data: &[u8]| std::fs::write(root.join(rel), data).unwrap();
    w(&o, "a", &a_old);
    w(&nw, "a", &a_new);
    w(&o, "sub/b", &b_old);
    w(&nw, "sub/b", &b_new);
    w(&o, "c", b"c old");
    w(&nw, "c", b"c new");
    w(&o, "same", b"same");
    w(&nw, "same", b"same");
    w(&nw, "f", &f_new);
    // DST after a "kill": a truncated OLD a, b half NEW and half OLD, c NEW, same, a truncated
    // NEW f, a file of neither version, and temporaries (any content).
    w(&d, "a", &a_old[..a_old.len() / 2]);
    let mut mixed = b_new[..150_000].to_vec();
    mixed.extend_from_slice(&b_old[150_000..]);
    w(&d, "sub/b", &mixed);
    w(&d, "c", b"c new");
    w(&d, "same", b"same");
    w(&d, "f", &f_new[..4096]);
    w(&d, "stray", b"neither");
    w(&d, ".ringsync.123.0.tmp", &a_new[..10]);
    w(&d, "sub/.ringsync-rcv.abc.7", b"x");
    std::fs::create_dir_all(d.join(".ringsync-stage.99")).unwrap();
    w(&d, ".ringsync-stage.99/moved", b"y");
    let (to, tn, td) = (scan(&o, "old"), scan(&nw, "new"), scan(&d, "dst"));
    let torn_paths = |v: &KillView| {
        let mut p: Vec<String> = v
            .torn
            .iter()
            .map(|t| t.split(':').next().unwrap().to_string())
            .collect();
        p.sort();
        p
    };
    let v = old_or_new(&td, &to, &tn, false);
    assert_eq!(torn_paths(&v), ["a", "f", "stray", "sub/b"], "{v:?}");
    assert_eq!((v.new, v.temps), (1, 4), "{v:?}");
    let v = old_or_new(&td, &to, &tn, true);
    assert_eq!(torn_paths(&v), ["a", "sub/b"], "copy rule: {v:?}");
    assert_eq!(v.unchecked, 2, "copy rule: {v:?}");
    // NEW and OLD themselves pass.
    assert!(old_or_new(&tn, &to, &tn, false).torn.is_empty());
    assert!(old_or_new(&to, &to, &tn, false).torn.is_empty());

    assert!(is_temp(b".ringsync.1.2.tmp") && is_temp(b"x/.ringsync-rcv.hold.ab/y"));
    assert!(is_temp(b".ringsync-stage.4/z") && !is_temp(b"ringsync.tmp") && !is_temp(b"a/.ringsync-mirror"));

    assert!(lock_free(&d));
    let holder = std::fs::File::open(&d).unwrap();
    rustix::fs::flock(&holder, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
    assert!(!lock_free(&d), "a held lock was not seen");
    drop(holder);
    assert!(lock_free(&d));

    use End::{Exited, Stopped};
    let ok = |e, s, u, o, n| record_verdict(e, s, u, o, n).is_ok();
    assert!(ok(Stopped, Some("dirty"), false, false, false));
    assert!(ok(Stopped, Some("clean"), true, true, false));
    assert!(ok(Stopped, Some("clean"), false, false, true));
    assert!(ok(Exited(0), Some("clean"), false, false, true));
    assert!(
        !ok(Stopped, Some("clean"), false, false, false),
        "clean over a half-done DST"
    );
    assert!(
        !ok(Stopped, Some("clean"), false, true, false),
        "clean record rewritten over OLD"
    );
    assert!(
        !ok(Stopped, Some("clean"), true, false, false),
        "untouched clean record, DST changed"
    );
    assert!(!ok(Stopped, None, false, false, false), "no record");
    assert!(
        !ok(Exited(0), Some("dirty"), false, false, true),
        "dirty after exit 0"
    );
    assert!(
        !ok(Exited(0), Some("clean"), false, false, false),
        "exit 0, DST not NEW"
    );
    assert!(
        !ok(Exited(3), Some("dirty"), false, false, false),
        "exit 3 by itself"
    );
}
