//! Crash consistency under a filesystem shutdown (issue 16, item 3): on a loop-mounted ext4
//! (mounted `noauto_da_alloc`, so that a missing fsync before a rename is not hidden by ext4's
//! allocate-on-rename heuristic) and a loop-mounted xfs, `copy --fsync end`, `mirror` and
//! `send | receive` are cut by a shutdown of DST's filesystem that does not flush the log
//! (`XFS_IOC_GOINGDOWN` / `EXT4_IOC_SHUTDOWN`, the same ioctl, with `NOLOGFLUSH`: what
//! `xfs_io -x -c shutdown` does, without `-f`): what the filesystem had not made durable is lost,
//! as at a power cut. The filesystem is then unmounted and mounted again (journal or log replay).
//!
//! The moment is drawn as in `tests/kill_e2e.rs`: uniformly in [0, D], D being how long an
//! unbroken run of the same size took (measured first, in the test); every fifth round instead
//! waits for the command to exit and shuts the filesystem down at once, so that the durability
//! claim is tried in every test. SRC lives on a tmpfs (never shut down; for xfs without ACLs,
//! which xfs also lists as `trusted.SGI_ACL_*` xattrs, and with symlink targets cut to 1000
//! bytes, xfs's limit being 1024). Every round first changes SRC (the shared mutator, plus new
//! content for most big files), so DST holds an OLD version of the tree and SRC a NEW one. After
//! the shutdown, the unmount and the mount:
//!
//! 1. every regular file at a final name in DST (no path component starting with `.ringsync.`,
//!    `.ringsync-stage.` or `.ringsync-rcv.`) has exactly the content of that path in OLD or in
//!    NEW (sha256 by the independent oracle's scan; an empty, zero-filled, truncated or mixed
//!    file is neither), for `copy` too, new paths included (docs/copy.md: every file is written
//!    under a temporary name and renamed after the `syncfs`);
//! 2. if the command had exited 0 (the durability claim of `--fsync end`, the default: one
//!    `syncfs` before exit 0; `receive` syncs before each publication and at its end), DST is
//!    exactly NEW by the oracle: `mirror` and `receive` `common::mirror_cmp()`, `copy` every path
//!    of SRC (extras allowed). This is the rule of the issue for an exit before the shutdown;
//!    it is held to an exit 0 after the shutdown landed too (exit 0 claims durability all the
//!    same; a `syncfs` on a shut-down filesystem fails), reported apart;
//! 3. (`mirror`, `receive`) the record on DST's root may say `clean` only over a DST that is
//!    exactly NEW, or exactly OLD with the record's bytes untouched (`dirty` is always allowed:
//!    a `clean` written after the final `syncfs` may be lost with the shutdown);
//! 4. rerunning the command on the mounted filesystem exits 0, DST equals SRC by the oracle,
//!    the record is `clean`, and no temporary or staging name is left. `copy` never deletes:
//!    its rerun must make every path of SRC exact (extras allowed), then a `mirror` must make DST
//!    exact with no `.ringsync*` name left.
//!
//! A process that panicked (on the I/O errors a shutdown brings) is a failure too; one still
//! running [`GRACE`] after the shutdown is killed. A DST that rule 4 finds not converged is
//! removed and made anew, so that every round starts from an exact OLD.
//!
//! `shutdown_check_selftest` shows that the checks can fail (a truncated, a half old and half new,
//! an empty and a zero-filled file are torn, a `clean` record over a half-done DST is refused, an exit 0 over a
//! DST that is not NEW is refused). `shutdown_loses_what_was_not_synced` shows that the shutdown
//! really loses what was not made durable, and that a rename without an fsync of the data before
//! it is caught by rule 1 on both filesystems: the harness is not one that flushes everything.
//!
//! A missing prerequisite (not root, mkfs.* missing, no loop devices, a mount refused) prints
//! `SKIPPED: <reason>` and returns, unless `CI` is set (then the test fails).
//!
//! Seeds: each test prints its seed (a fresh one per run); `RINGSYNC_SHUTDOWN_SEED=N` (decimal
//! or 0x hex) replays the trees, mutations and delays (where a shutdown lands still depends on
//! the machine). `RINGSYNC_SHUTDOWN_ROUNDS=N` changes the number of rounds (default 10).

mod common;

use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};

use common::mount::LoopFs;
use common::mutate as mutator;
use common::oracle::{compare_scanned, scan_tree, show};
use common::procs::{err_file, read_back};
use common::*;

/// How long any one ringsync process may take before the test gives up on it.
const DEADLINE: Duration = Duration::from_secs(60);
/// How long a process may go on after the shutdown before it is killed.
const GRACE: Duration = Duration::from_secs(10);
/// At most this many failing rounds are collected before a test stops early.
const MAX_FAILED_ROUNDS: usize = 4;
/// Size of the loop filesystems (sparse images).
const FS_MIB: u64 = 512;

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

/// The seed of one test: `RINGSYNC_SHUTDOWN_SEED`, else a fresh one; printed either way.
fn seed_for(test: &str) -> u64 {
    let seed = match std::env::var("RINGSYNC_SHUTDOWN_SEED") {
        Ok(v) => parse_u64(&v).unwrap_or_else(|| panic!("RINGSYNC_SHUTDOWN_SEED={v:?} is not a number")),
        Err(_) => {
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            t ^ u64::from(std::process::id()).rotate_left(40) ^ (test.len() as u64).rotate_left(20)
        }
    };
    note(&format!(
        "{test}: seed {seed:#x} (replay: RINGSYNC_SHUTDOWN_SEED={seed:#x} cargo test --release --test shutdown_e2e {test})"
    ));
    seed
}

fn rounds() -> usize {
    std::env::var("RINGSYNC_SHUTDOWN_ROUNDS")
        .ok()
        .and_then(|v| parse_u64(&v))
        .map_or(10, |n| n as usize)
}

// ---------------------------------------------------------------------------------------------
// The shutdown
// ---------------------------------------------------------------------------------------------

/// `XFS_IOC_GOINGDOWN` = `EXT4_IOC_SHUTDOWN` = `_IOR('X', 125, __u32)`.
const IOC_GOINGDOWN: u32 = 0x8004_587D;
/// `XFS_FSOP_GOING_FLAGS_NOLOGFLUSH` = `EXT4_GOING_FLAGS_NOLOGFLUSH`: neither the data nor the
/// log (journal) is flushed, what was not durable is lost (a power cut).
const GOING_FLAGS_NOLOGFLUSH: u32 = 2;

/// Shut down the filesystem mounted at `mnt` without flushing anything (what
/// `xfs_io -x -c shutdown MNT` does, also on ext4).
fn shutdown(mnt: &Path) {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        mnt,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap_or_else(|e| panic!("open {}: {e}", mnt.display()));
    let flags: u32 = GOING_FLAGS_NOLOGFLUSH;
    // SAFETY: the ioctl reads one u32 through the pointer, which points at `flags`, alive on
    // this stack frame for the whole call; `fd` is an open descriptor owned here.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), IOC_GOINGDOWN as _, &flags as *const u32) };
    if r != 0 {
        panic!(
            "shutdown ioctl on {}: {}",
            mnt.display(),
            std::io::Error::last_os_error()
        );
    }
}

/// DST's filesystem: ext4 mounted `noauto_da_alloc`, or xfs; `None` when skipped.
fn target_fs(fstype: &'static str) -> Option<LoopFs> {
    let made = match fstype {
        "ext4" => LoopFs::with_options("ext4", FS_MIB, &["-b", "4096"], "noauto_da_alloc"),
        _ => LoopFs::with_options(fstype, FS_MIB, &[], ""),
    };
    match made {
        Ok(fs) => Some(fs),
        Err(reason) => {
            skip_or_fail(&reason);
            None
        }
    }
}

/// SRC's filesystem: a tmpfs (never shut down; its `syncfs` costs nothing).
fn source_fs() -> Option<LoopFs> {
    match LoopFs::tmpfs("size=512m") {
        Ok(fs) => Some(fs),
        Err(reason) => {
            skip_or_fail(&reason);
            None
        }
    }
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

/// What a scan of DST after a shutdown holds.
#[derive(Debug, Default)]
struct View {
    /// Regular files at final names that are neither the OLD nor the NEW version: described,
    /// and their paths.
    torn: Vec<String>,
    torn_paths: Vec<Vec<u8>>,
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
fn old_or_new(dst: &Tree, old: &Tree, new: &Tree, only_old_paths: bool) -> View {
    let mut v = View::default();
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
            v.torn_paths.push(p.clone());
            v.torn.push(format!(
                "{}: {} bytes{}, neither the OLD version ({}) nor the NEW one ({})",
                show(p),
                e.size,
                if e.blocks == 0 && e.size > 0 {
                    " (no blocks: a hole)"
                } else {
                    ""
                },
                size(old),
                size(new)
            ));
        }
    }
    v
}

/// Rule 2: after an exit 0, DST (`after`) is exactly NEW (`copy`: every path of NEW exact,
/// extras allowed). The differences, empty when it holds.
fn durable_verdict(after: &Tree, new: &Tree, copy: bool) -> Vec<String> {
    let opts = CompareOpts {
        allow_extra_in_b: copy,
        ..mirror_cmp()
    };
    compare_scanned(new, after, &opts)
}

/// Rule 3: the record's state after the shutdown, whether its bytes are those from before the
/// run, and whether DST equals OLD / NEW by the oracle.
fn record_verdict(
    state: Option<&str>,
    record_untouched: bool,
    eq_old: bool,
    eq_new: bool,
) -> Result<(), String> {
    match state {
        Some("dirty") => Ok(()),
        Some("clean") if eq_new => Ok(()),
        Some("clean") if eq_old && record_untouched => Ok(()),
        Some("clean") => Err(format!(
            "the record says \"clean\" although DST is {} (record {})",
            if eq_old { "OLD" } else { "neither OLD nor NEW" },
            if record_untouched {
                "untouched"
            } else {
                "rewritten"
            }
        )),
        s => Err(format!("the record's state is {s:?}")),
    }
}

/// How the run ended, relative to the shutdown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// It had exited (this code) before the shutdown.
    Before(i32),
    /// It exited by itself after the shutdown (this code).
    After(i32),
    /// Still running [`GRACE`] after the shutdown: killed.
    Killed,
}

fn code_of(st: ExitStatus, what: &str) -> i32 {
    match (st.code(), st.signal()) {
        (Some(c), _) => c,
        other => panic!("{what}: unexpected end of a ringsync process: {other:?} ({st:?})"),
    }
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

/// What a torn file at `rel` in `dst` holds, in 4 KiB blocks, against the NEW version at `rel`
/// in `src` (OLD is gone by then): how many blocks are NEW's, all zero, or something else.
fn torn_detail(dst: &Path, src: &Path, rel: &[u8]) -> String {
    let (Ok(d), n) = (std::fs::read(bpath(dst, rel)), std::fs::read(bpath(src, rel))) else {
        return "unreadable".into();
    };
    let n = n.unwrap_or_default();
    let (mut same, mut zero, mut other) = (0, 0, 0);
    for (i, b) in d.chunks(4096).enumerate() {
        if n.get(i * 4096..(i * 4096 + b.len())) == Some(b) {
            same += 1;
        } else if b.iter().all(|&x| x == 0) {
            zero += 1;
        } else {
            other += 1;
        }
    }
    format!("of its 4 KiB blocks {same} are NEW's, {zero} are zeros (and not NEW's), {other} are neither")
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

const MIB: usize = 1 << 20;

/// Big files, rewritten by most rounds: a few MiB each (written with O_DIRECT by durable runs,
/// as are the generated files of 256 KiB or more).
const BIG_COUNT: usize = 4;
const BIG_MIN: usize = MIB;
const BIG_MAX: usize = 4 * MIB;

/// SRC: a generated nasty tree (a few hundred entries of mixed sizes up to 1 MiB: odd names,
/// hardlinks, symlinks, sparse files, xattrs, ACLs, specials, a path deeper than PATH_MAX) and
/// big files.
struct Src {
    bigs: Vec<Vec<u8>>,
    /// Mutations to draw from.
    kinds: Vec<mutator::Mut>,
    /// Whether a big file that the mutations moved, deleted or replaced is made again.
    remake: bool,
}

fn make_src(
    src: &Path,
    seed: u64,
    kinds: Vec<mutator::Mut>,
    remake: bool,
    acls: bool,
    rng: &mut SmallRng,
) -> Src {
    gen_tree(
        src,
        seed,
        &GenOpts {
            dirs: 16,
            files: 200,
            max_file: MIB,
            acls,
            ..GenOpts::default()
        },
    )
    .expect("generate SRC");
    let bigs: Vec<Vec<u8>> = (0..BIG_COUNT)
        .map(|i| {
            if i % 2 == 0 {
                format!("big/big-{i}").into_bytes()
            } else {
                format!("big-{i}").into_bytes()
            }
        })
        .collect();
    for b in &bigs {
        let n = rng.gen_range(BIG_MIN..BIG_MAX);
        put_file(src, b, &random_data(rng, n));
    }
    mutator::fix_atimes(src, seed).unwrap();
    Src { bigs, kinds, remake }
}

/// Symlinks whose target is longer than `max` bytes get a target cut to `max` (xfs takes at
/// most 1024 bytes; the generator cuts only where the filesystem it writes to refuses).
fn fit_symlinks(root: &Path, max: usize) {
    use std::os::fd::AsFd;
    let t = scan_tree(root, false).expect("scan SRC");
    let top = rustix::fs::open(
        root,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
        rustix::fs::Mode::empty(),
    )
    .expect("open SRC");
    for (p, e) in &t.entries {
        let Some(target) = e.target.as_ref().filter(|t| t.len() > max) else {
            continue;
        };
        let (parent, name) = mutator::parent_of(p);
        let dir = mutator::open_rel_dir(top.as_fd(), &parent).expect("open a directory of SRC");
        rustix::fs::unlinkat(&dir, name.as_slice(), rustix::fs::AtFlags::empty()).expect("unlink a symlink");
        rustix::fs::symlinkat(&target[..max], &dir, name.as_slice()).expect("make a symlink");
    }
}

/// One round of changes to SRC: a dozen random mutations, then new content for most big files.
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
            Ok(m) if m.is_file() || s.remake => rng.gen_range(BIG_MIN..BIG_MAX),
            Err(_) if s.remake => rng.gen_range(BIG_MIN..BIG_MAX),
            _ => continue,
        };
        put_file(src, b, &random_data(rng, n));
        log.push(format!("rewrote {} ({n} bytes)", show(b)));
    }
    mutator::fix_atimes(src, seed).unwrap();
    log
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

fn ringsync_cmd(args: &[OsString], stderr: Stdio) -> Command {
    let mut c = Command::new(bin());
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
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

/// The command under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmd {
    Copy,
    Mirror,
    Receive,
}

/// One run of the command: the process whose exit is the command's (ringsync `copy` or
/// `mirror`, or `receive`), and `send` for `receive`.
struct Run {
    main: Child,
    main_err: std::fs::File,
    sender: Option<(Child, std::fs::File)>,
}

fn argv(sub: &str, src: &Path, dst: &Path) -> Vec<OsString> {
    let mut a = os(&[sub, "-q"]);
    a.push(src.into());
    a.push(dst.into());
    a
}

fn spawn(cmd: Cmd, src: &Path, dst: &Path) -> Run {
    match cmd {
        Cmd::Copy | Cmd::Mirror => {
            let sub = if cmd == Cmd::Copy { "copy" } else { "mirror" };
            let (f, e) = err_file();
            let main = ringsync_cmd(&argv(sub, src, dst), e)
                .spawn()
                .expect("spawn ringsync");
            Run {
                main,
                main_err: f,
                sender: None,
            }
        }
        Cmd::Receive => {
            let (sf, se) = err_file();
            let (rf, re) = err_file();
            let mut sargs = os(&["send", "-q"]);
            sargs.push(src.into());
            let mut send = ringsync_cmd(&sargs, se)
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn send");
            let out = send.stdout.take().unwrap();
            let rargs = vec!["receive".into(), "-q".into(), dst.into()];
            let recv = ringsync_cmd(&rargs, re)
                .stdin(Stdio::from(out))
                .spawn()
                .expect("spawn receive");
            Run {
                main: recv,
                main_err: rf,
                sender: Some((send, sf)),
            }
        }
    }
}

impl Run {
    /// Wait for every process, killing all of them after `limit`. The main process's exit
    /// status (`None`: killed at the limit), the sender's, and the stderr of both.
    fn finish(mut self, limit: Duration) -> (Option<ExitStatus>, Option<ExitStatus>, String) {
        let start = Instant::now();
        let mut st: [Option<ExitStatus>; 2] = [None, None];
        loop {
            if st[0].is_none() {
                st[0] = self.main.try_wait().expect("try_wait");
            }
            if let (None, Some((s, _))) = (st[1], self.sender.as_mut()) {
                st[1] = s.try_wait().expect("try_wait");
            }
            if st[0].is_some() && (st[1].is_some() || self.sender.is_none()) {
                break;
            }
            if start.elapsed() > limit {
                // Killed: a status of the kill's, not an exit of its own (`None`).
                let _ = self.main.kill();
                if st[0].is_none() {
                    let _ = self.main.wait();
                }
                if let Some((s, _)) = self.sender.as_mut() {
                    let _ = s.kill();
                    st[1] = st[1].or_else(|| s.wait().ok());
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut err = String::new();
        if let Some((_, f)) = self.sender {
            err.push_str(&format!("--- send stderr ---\n{}\n", tail(&read_back(f))));
        }
        err.push_str(&format!("--- stderr ---\n{}", tail(&read_back(self.main_err))));
        (st[0], st[1], err)
    }
}

/// The command run to its end (bounded by DEADLINE): `Err` describes an exit other than 0 (of
/// `receive` or `send` for the stream) and holds the stderr.
fn run_to_end(cmd: Cmd, src: &Path, dst: &Path) -> Result<(), String> {
    let r = spawn(cmd, src, dst);
    let has_sender = r.sender.is_some();
    let (main, send, err) = r.finish(DEADLINE);
    let main = main.unwrap_or_else(|| panic!("{cmd:?} still running after {DEADLINE:?}:\n{err}"));
    let send_ok = !has_sender || send.is_some_and(|s| s.code() == Some(0));
    match (main.code(), send_ok) {
        (Some(0), true) => Ok(()),
        (c, true) => Err(format!("{cmd:?} exited {c:?} (4 = busy):\n{err}")),
        (c, false) => Err(format!("receive exited {c:?}, send ended {send:?}:\n{err}")),
    }
}

/// Delays: uniform in [0, full].
fn delay_in(rng: &mut SmallRng, full: Duration) -> Duration {
    Duration::from_micros(rng.gen_range(0..=full.as_micros() as u64))
}

// ---------------------------------------------------------------------------------------------
// Bookkeeping
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Tally {
    fails: Vec<String>,
    failed_rounds: usize,
    /// Shutdowns that landed while the command was still running.
    mid_run: usize,
    /// ... of which left DST neither OLD nor NEW by the oracle.
    mid_tree: usize,
    /// Shutdowns after an exit 0 (rule 2 of the issue).
    after_exit0: usize,
    /// Runs that exited 0 after the shutdown landed (rule 2 held too).
    exit0_after: usize,
    /// Runs killed [`GRACE`] after the shutdown.
    killed: usize,
    /// Files seen NEW / still OLD, temporaries, after the shutdowns.
    new: usize,
    old: usize,
    temps: usize,
    /// Files found torn (rule 1) over all rounds.
    torn: usize,
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
            "{test}: {rounds} rounds in {:.1?}: {} shutdowns mid-run ({} left DST mid-way, {} killed after \
             the grace), {} after an exit 0, {} runs exited 0 after the shutdown; {} files seen new, {} still \
             old, {} temporaries, {} torn",
            started.elapsed(),
            self.mid_run,
            self.mid_tree,
            self.killed,
            self.after_exit0,
            self.exit0_after,
            self.new,
            self.old,
            self.temps,
            self.torn
        ));
        assert!(
            self.fails.is_empty(),
            "{test} (seed {seed:#x}, replay with RINGSYNC_SHUTDOWN_SEED={seed:#x}): {} problems in {} rounds:\n\n{}",
            self.fails.len(),
            self.failed_rounds,
            self.fails.join("\n\n")
        );
    }
}

/// Rule 4 after a rerun: DST exact, clean, no temporaries. Returns DST's scan (OLD of the next
/// round).
fn check_converged(what: &str, dst: &Path, new: &Tree, fails: &mut Vec<String>, log: &[String]) -> Tree {
    let before = fails.len();
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
    if fails.len() > before {
        // The next round needs an OLD that is exactly what SRC was: DST made anew.
        note(&format!(
            "{what}: did not converge; DST is made anew for the next round"
        ));
        std::fs::remove_dir_all(dst).unwrap_or_else(|e| panic!("remove {}: {e}", dst.display()));
        return Tree::default();
    }
    t
}

// ---------------------------------------------------------------------------------------------
// The rounds
// ---------------------------------------------------------------------------------------------

/// Rounds of `cmd` from a tmpfs SRC to DST on a loop `fstype`, each cut by a shutdown of DST's
/// filesystem, which is then mounted again and checked (rules 1 to 4 of the module docs).
fn shutdown_rounds(test: &str, fstype: &'static str, cmd: Cmd) {
    let started = Instant::now();
    let seed = seed_for(test);
    let n = rounds();
    let mut rng = SmallRng::seed_from_u64(seed);
    if !is_root() {
        skip_or_fail("needs root: loop mounts, and the generated trees hold other owners and devices");
        return;
    }
    let Some(fs) = target_fs(fstype) else {
        return;
    };
    let Some(srcfs) = source_fs() else {
        return;
    };
    let src = srcfs.path().join("src");
    let dst = fs.path().join("dst");
    let copy = cmd == Cmd::Copy;
    // `copy` never deletes, so it cannot put a file where DST has a non-empty directory (exit 3,
    // "Directory not empty"): no directory becomes a file for it (no DirToFile, big files not
    // made again where they are missing or not files).
    let kinds = mutator::DEFAULT_KINDS
        .iter()
        .copied()
        .filter(|k| !copy || *k != mutator::Mut::DirToFile)
        .collect();
    // xfs lists an ACL also as a trusted.SGI_ACL_* xattr, which SRC (a tmpfs) does not have;
    // and it takes symlink targets of at most 1024 bytes.
    let s = make_src(&src, seed, kinds, !copy, fstype != "xfs", &mut rng);
    if fstype == "xfs" {
        fit_symlinks(&src, 1000);
        mutator::fix_atimes(&src, seed).unwrap();
    }
    // `copy` rounds end with a `mirror` (which removes temporaries and extras).
    let settle = |what: &str| {
        if copy {
            if let Err(e) = run_to_end(Cmd::Mirror, &src, &dst) {
                panic!("{what}: mirror after the copy: {e}");
            }
        }
    };

    if let Err(e) = run_to_end(cmd, &src, &dst) {
        panic!("first run: {e}");
    }
    settle("first run");
    assert_trees_equal(&src, &dst, &mirror_cmp(), "first run");

    // Calibration: one round's changes, run without a shutdown.
    change_src(&src, &s, &mut rng, seed ^ 0xca1);
    let t0 = Instant::now();
    let res = run_to_end(cmd, &src, &dst);
    let full = t0.elapsed();
    if let Err(e) = res {
        panic!("calibration run: {e}");
    }
    settle("calibration");
    assert_trees_equal(&src, &dst, &mirror_cmp(), "calibration");
    let mut old = scan(&dst, "calibration");
    note(&format!(
        "{test}: an unbroken round's {cmd:?} takes {full:.1?} ({} entries in SRC)",
        old.entries.len()
    ));

    let mut tally = Tally::default();
    for round in 0..n {
        let at_exit = round % 5 == 4;
        let delay = delay_in(&mut rng, full);
        let mut what = if at_exit {
            format!("round {round} ({cmd:?} on {fstype}, shutdown at its exit)")
        } else {
            format!("round {round} ({cmd:?} on {fstype}, shutdown after {delay:.1?} of {full:.1?})")
        };
        let log = change_src(&src, &s, &mut rng, seed.wrapping_add(round as u64 + 1));
        let new = scan(&src, &what);
        let record_before = read_record(&dst);

        let mut run = spawn(cmd, &src, &dst);
        if at_exit {
            let t = Instant::now();
            while run.main.try_wait().expect("try_wait").is_none() {
                assert!(t.elapsed() < DEADLINE, "{what}: still running after {DEADLINE:?}");
                std::thread::sleep(Duration::from_micros(500));
            }
        } else {
            std::thread::sleep(delay);
        }
        // Whether it had exited before the shutdown: a status seen now (try_wait keeps it).
        let before = run.main.try_wait().expect("try_wait");
        shutdown(fs.path());
        let (status, send_status, err) = run.finish(GRACE);
        let end = match (before, status) {
            (Some(st), _) => End::Before(code_of(st, &what)),
            (None, Some(st)) => End::After(code_of(st, &what)),
            (None, None) => End::Killed,
        };
        fs.cycle();
        what.push_str(&format!(": {end:?}"));

        let mut fails = Vec::new();
        if err.contains("panicked") {
            fails.push(format!("{what}: a process panicked:\n{err}"));
        }
        if let End::Before(c) = end {
            if c != 0 {
                fails.push(format!(
                    "{what}: exited {c} by itself before the shutdown:\n{err}"
                ));
            }
            if cmd == Cmd::Receive && send_status.and_then(|s| s.code()) != Some(0) {
                fails.push(format!(
                    "{what}: receive exited before the shutdown, send ended {send_status:?}:\n{err}"
                ));
            }
        }
        let after = scan(&dst, &what);
        // Rule 1.
        let v = old_or_new(&after, &old, &new, false);
        if !v.torn.is_empty() {
            let described: Vec<String> = v
                .torn
                .iter()
                .zip(&v.torn_paths)
                .map(|(t, p)| format!("{t}; {}", torn_detail(&dst, &src, p)))
                .collect();
            fails.push(format!(
                "{what}: rule 1: torn files at final names after the shutdown and the mount:\n  {}",
                fmt_list(&described)
            ));
        }
        let eq_old = compare_scanned(&old, &after, &mirror_cmp()).is_empty();
        // (`copy`: every path of NEW exact, extras allowed.)
        let eq_new = durable_verdict(&after, &new, copy).is_empty();
        // Rule 2.
        let exit0 = matches!(end, End::Before(0) | End::After(0));
        if exit0 {
            let d = durable_verdict(&after, &new, copy);
            if !d.is_empty() {
                fails.push(format!(
                    "{what}: rule 2: {} exited 0 {} the shutdown, but DST is not NEW after the mount ({} differences):\n  {}",
                    if cmd == Cmd::Receive { "receive" } else { "the command" },
                    if end == End::Before(0) { "before" } else { "after" },
                    d.len(),
                    fmt_list(&d)
                ));
            }
        }
        // Rule 3.
        let state = record_state(&dst);
        if !copy {
            let untouched = read_record(&dst) == record_before;
            if let Err(e) = record_verdict(state.as_deref(), untouched, eq_old, eq_new) {
                fails.push(format!("{what}: rule 3: {e}"));
            }
        }
        tally.mid_run += usize::from(!matches!(end, End::Before(_)));
        tally.mid_tree += usize::from(!matches!(end, End::Before(_)) && !eq_old && !eq_new);
        tally.after_exit0 += usize::from(end == End::Before(0));
        tally.exit0_after += usize::from(end == End::After(0));
        tally.killed += usize::from(end == End::Killed);
        tally.new += v.new;
        tally.old += v.old;
        tally.temps += v.temps;
        tally.torn += v.torn.len();
        note(&format!(
            "{what}; {} new, {} old, {} torn, {} temporaries{}; record {state:?}; DST {}",
            v.new,
            v.old,
            v.torn.len(),
            v.temps,
            if copy {
                format!(", {} files at new names not checked", v.unchecked)
            } else {
                String::new()
            },
            if eq_new {
                "= NEW"
            } else if eq_old {
                "= OLD"
            } else {
                "mid-way"
            }
        ));

        // Rule 4.
        if let Err(e) = run_to_end(cmd, &src, &dst) {
            fails.push(format!("{what}: rule 4: the rerun: {e}"));
        }
        if copy {
            let d = compare_scanned(&new, &scan(&dst, &what), &durable_opts_copy());
            if !d.is_empty() {
                fails.push(format!(
                    "{what}: rule 4: after the copy rerun, DST differs from SRC ({} differences):\n  {}\n--- changes made to SRC this round ---\n  {}",
                    d.len(),
                    fmt_list(&d),
                    log.join("\n  ")
                ));
            }
            if let Err(e) = run_to_end(Cmd::Mirror, &src, &dst) {
                fails.push(format!("{what}: rule 4: mirror after the copy rerun: {e}"));
            }
        }
        old = check_converged(
            &format!("{what}, rule 4, after the rerun"),
            &dst,
            &new,
            &mut fails,
            &log,
        );
        if old.entries.is_empty() {
            if let Err(e) = run_to_end(cmd, &src, &dst) {
                panic!("{what}: making DST anew: {e}");
            }
            settle(&what);
            assert_trees_equal(&src, &dst, &mirror_cmp(), &format!("{what}: DST made anew"));
            old = scan(&dst, &what);
        }
        if !tally.round(fails) {
            break;
        }
    }
    tally.finish(test, seed, n, started);
}

fn durable_opts_copy() -> CompareOpts {
    CompareOpts {
        allow_extra_in_b: true,
        ..mirror_cmp()
    }
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

#[test]
fn copy_ext4_shutdown_at_random_moments() {
    shutdown_rounds("copy_ext4_shutdown_at_random_moments", "ext4", Cmd::Copy);
}

#[test]
fn copy_xfs_shutdown_at_random_moments() {
    shutdown_rounds("copy_xfs_shutdown_at_random_moments", "xfs", Cmd::Copy);
}

#[test]
fn mirror_ext4_shutdown_at_random_moments() {
    shutdown_rounds("mirror_ext4_shutdown_at_random_moments", "ext4", Cmd::Mirror);
}

#[test]
fn mirror_xfs_shutdown_at_random_moments() {
    shutdown_rounds("mirror_xfs_shutdown_at_random_moments", "xfs", Cmd::Mirror);
}

#[test]
fn receive_ext4_shutdown_at_random_moments() {
    shutdown_rounds("receive_ext4_shutdown_at_random_moments", "ext4", Cmd::Receive);
}

#[test]
fn receive_xfs_shutdown_at_random_moments() {
    shutdown_rounds("receive_xfs_shutdown_at_random_moments", "xfs", Cmd::Receive);
}

/// The shutdown loses what was not made durable (it is a power cut, not a clean unmount): on
/// each filesystem, a synced file survives; a file written, renamed over a synced one without
/// an fsync of its data, and made part of a committed transaction (an fsync of another file
/// commits the journal, or forces the log, with the rename in it) is found torn by rule 1 (an
/// empty or unwritten file where OLD was); and a file only created is gone.
#[test]
fn shutdown_loses_what_was_not_synced() {
    if !is_root() {
        skip_or_fail("needs root: loop mounts");
        return;
    }
    for fstype in ["ext4", "xfs"] {
        let Some(fs) = target_fs(fstype) else {
            return;
        };
        let (old_t, new_t) = (fs.path().join("old"), fs.path().join("new"));
        let d = fs.path().join("dst");
        for p in [&old_t, &new_t, &d] {
            std::fs::create_dir_all(p).unwrap();
        }
        let mut rng = SmallRng::seed_from_u64(16);
        let a_old = random_data(&mut rng, 100_000);
        let a_new = random_data(&mut rng, 100_000);
        std::fs::write(old_t.join("a"), &a_old).unwrap();
        std::fs::write(new_t.join("a"), &a_new).unwrap();
        std::fs::write(d.join("a"), &a_old).unwrap();
        std::fs::write(d.join("kept"), b"synced").unwrap();
        std::fs::write(old_t.join("kept"), b"synced").unwrap();
        std::fs::write(new_t.join("kept"), b"synced").unwrap();
        let root = std::fs::File::open(fs.path()).unwrap();
        rustix::fs::syncfs(&root).unwrap();
        drop(root);
        // The new version of a, buffered, renamed into place with no fsync of its own.
        std::fs::write(d.join(".ringsync.1.0.tmp"), &a_new).unwrap();
        std::fs::rename(d.join(".ringsync.1.0.tmp"), d.join("a")).unwrap();
        // Another file's fsync: a commit with the rename in it (not a's data).
        let z = fs.path().join("z");
        std::fs::write(&z, b"z").unwrap();
        std::fs::File::open(&z).unwrap().sync_all().unwrap();
        std::fs::write(d.join("lost"), b"never synced").unwrap();
        shutdown(fs.path());
        assert!(
            std::fs::read(d.join("kept")).is_err(),
            "{fstype}: the shut-down filesystem still reads"
        );
        fs.cycle();
        let (to, tn, td) = (scan(&old_t, "old"), scan(&new_t, "new"), scan(&d, "dst"));
        assert_eq!(std::fs::read(d.join("kept")).unwrap(), b"synced", "{fstype}");
        assert!(
            !d.join("lost").exists(),
            "{fstype}: a file never synced survived the shutdown: it flushed the log"
        );
        let v = old_or_new(&td, &to, &tn, false);
        let torn: Vec<&str> = v.torn.iter().map(|t| t.split(':').next().unwrap()).collect();
        assert_eq!(
            torn,
            ["a"],
            "{fstype}: a file renamed into place without an fsync of its data and committed by \
             another fsync must be seen torn after the shutdown: {v:?}"
        );
        note(&format!("{fstype}: after the shutdown: {}", v.torn[0]));
    }
}

/// The checks above can fail: fabricated OLD, NEW and DST trees with a truncated old file, a
/// file half new and half old, an empty file, a truncated new file and a file of neither
/// version; records that lie; an exit 0 over a DST that is not NEW.
#[test]
fn shutdown_check_selftest() {
    let tmp = scratch("shutdown-selftest");
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
    w(&o, "e", &b_old);
    w(&nw, "e", &b_new);
    w(&o, "z", &b_old);
    w(&nw, "z", &b_new);
    w(&o, "same", b"same");
    w(&nw, "same", b"same");
    w(&nw, "f", &f_new);
    // DST after a "shutdown": a truncated OLD a, b half NEW and half OLD, c NEW, e empty (a
    // rename committed before the data), z of NEW's size but zeros (an unwritten extent), same,
    // a truncated NEW f, a file of neither version, and temporaries (any content).
    w(&d, "a", &a_old[..a_old.len() / 2]);
    let mut mixed = b_new[..150_000].to_vec();
    mixed.extend_from_slice(&b_old[150_000..]);
    w(&d, "sub/b", &mixed);
    w(&d, "c", b"c new");
    w(&d, "e", b"");
    std::fs::File::create(d.join("z"))
        .unwrap()
        .set_len(b_new.len() as u64)
        .unwrap();
    w(&d, "same", b"same");
    w(&d, "f", &f_new[..4096]);
    w(&d, "stray", b"neither");
    w(&d, ".ringsync.123.0.tmp", &a_new[..10]);
    w(&d, "sub/.ringsync-rcv.abc.7", b"x");
    std::fs::create_dir_all(d.join(".ringsync-stage.99")).unwrap();
    w(&d, ".ringsync-stage.99/moved", b"y");
    let (to, tn, td) = (scan(&o, "old"), scan(&nw, "new"), scan(&d, "dst"));
    let torn_paths = |v: &View| {
        let mut p: Vec<String> = v
            .torn
            .iter()
            .map(|t| t.split(':').next().unwrap().to_string())
            .collect();
        p.sort();
        p
    };
    let v = old_or_new(&td, &to, &tn, false);
    assert_eq!(torn_paths(&v), ["a", "e", "f", "stray", "sub/b", "z"], "{v:?}");
    assert_eq!((v.new, v.temps), (1, 4), "{v:?}");
    let v = old_or_new(&td, &to, &tn, true);
    assert_eq!(torn_paths(&v), ["a", "e", "sub/b", "z"], "copy rule: {v:?}");
    assert_eq!(v.unchecked, 2, "copy rule: {v:?}");
    // NEW and OLD themselves pass.
    assert!(old_or_new(&tn, &to, &tn, false).torn.is_empty());
    assert!(old_or_new(&to, &to, &tn, false).torn.is_empty());

    assert!(is_temp(b".ringsync.1.2.tmp") && is_temp(b"x/.ringsync-rcv.hold.ab/y"));
    assert!(is_temp(b".ringsync-stage.4/z") && !is_temp(b"ringsync.tmp") && !is_temp(b"a/.ringsync-mirror"));

    // Rule 2: NEW passes, OLD and the torn DST do not; copy allows extras but not a torn path.
    assert!(durable_verdict(&tn, &tn, false).is_empty());
    assert!(!durable_verdict(&to, &tn, false).is_empty(), "exit 0 over OLD");
    assert!(
        !durable_verdict(&td, &tn, false).is_empty(),
        "exit 0 over a torn DST"
    );
    assert!(
        !durable_verdict(&td, &tn, true).is_empty(),
        "copy: exit 0 over a torn DST"
    );
    let mut with_extra = tn.clone();
    let extra = tn.entries[b"c".as_slice()].clone();
    with_extra.entries.insert(b"only-in-dst".to_vec(), extra);
    assert!(
        durable_verdict(&with_extra, &tn, true).is_empty(),
        "copy: extras are allowed"
    );
    assert!(
        !durable_verdict(&with_extra, &tn, false).is_empty(),
        "mirror: an extra is not NEW"
    );

    // Rule 3.
    let ok = |s, u, o, n| record_verdict(s, u, o, n).is_ok();
    assert!(ok(Some("dirty"), false, false, false));
    assert!(ok(Some("clean"), true, true, false));
    assert!(ok(Some("clean"), false, false, true));
    assert!(
        !ok(Some("clean"), false, false, false),
        "clean over a half-done DST"
    );
    assert!(
        !ok(Some("clean"), false, true, false),
        "clean record rewritten over OLD"
    );
    assert!(
        !ok(Some("clean"), true, false, false),
        "untouched clean record, DST changed"
    );
    assert!(!ok(None, false, false, false), "no record");
}
