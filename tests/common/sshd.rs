//! A private sshd on 127.0.0.1 for tests that run ringsync over ssh (root only).
//!
//! Every [`Sshd`] is its own server: a fresh temporary directory with its own host key, its own
//! client key (authorized for root and for [`PLAIN_USER`]) and its own config, listening on
//! 127.0.0.1 at a free port >= 20000. The system's sshd, its config, `/etc/ssh` keys and
//! `~/.ssh` are never used or touched, so tests can run in parallel threads and processes.
//!
//! The harness creates the unprivileged login user [`PLAIN_USER`] (a system user with
//! `/bin/sh` as its shell) when it is missing, because `nobody` cannot log in; it also creates
//! `/run/sshd`, sshd's privilege separation directory, when missing.
//!
//! A missing prerequisite (not root, sshd/ssh/ssh-keygen/useradd missing, sshd not coming up)
//! is returned as `Err(reason)`; [`Sshd::start_or_skip`] turns that into `SKIPPED: <reason>`,
//! or a failure when the `CI` environment variable is set.

use std::cell::OnceCell;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{bin, is_root, skip_or_fail};

/// The unprivileged user the harness logs in as (created on first use).
pub const PLAIN_USER: &str = "ringsync-ssh-test";

/// The address sshd listens on and clients connect to.
pub const HOST: &str = "127.0.0.1";

/// How long one sshd may take to accept a login before `start` gives up on it.
const UP_DEADLINE: Duration = Duration::from_secs(10);

/// Ports tried when sshd loses the race for a port that was free when checked.
const PORT_ATTEMPTS: usize = 5;

/// A running private sshd. Dropping it kills and reaps sshd, then removes its directory.
///
/// With `setpriv` installed, sshd also gets SIGKILL when the thread that started it ends (so an
/// aborted test run leaves no sshd behind): keep an `Sshd` on the thread that started it, as a
/// test's local value, not in a static shared between tests.
pub struct Sshd {
    child: Child,
    port: u16,
    key: PathBuf,
    plain_uid: u32,
    /// The hard link or copy for `--remote-bin`, made on first use.
    remote_bin: OnceCell<PathBuf>,
    // Declared last, so that it is removed after `Drop::drop` has stopped sshd.
    tmp: tempfile::TempDir,
}

impl Sshd {
    /// Start an sshd for this test: 127.0.0.1, a free port >= 20000, its own host key, a
    /// generated client key authorized for root and for the unprivileged test user
    /// [`PLAIN_USER`] (created if missing).
    ///
    /// `Err(reason)` when sshd/ssh/ssh-keygen are missing or it does not come up; the reason
    /// then includes sshd's log.
    pub fn start() -> Result<Sshd, String> {
        if !is_root() {
            return Err("a private sshd needs root (it switches to the users that log in)".into());
        }
        let sshd = find_tool("sshd").ok_or("sshd not installed (package openssh-server)")?;
        let keygen = find_tool("ssh-keygen").ok_or("ssh-keygen not installed (package openssh-client)")?;
        find_tool("ssh").ok_or("ssh not installed (package openssh-client)")?;
        let plain_uid = ensure_plain_user()?;
        ensure_privsep_dir()?;

        let tmp = make_tmp()?;
        let dir = tmp.path();
        let host_key = dir.join("host_ed25519");
        let key = dir.join("client_ed25519");
        keygen_ed25519(&keygen, &host_key)?;
        keygen_ed25519(&keygen, &key)?;
        if key.to_string_lossy().contains(char::is_whitespace) {
            // rsh() is one space-separated string; ringsync splits it into words.
            return Err(format!("client key path {} contains white space", key.display()));
        }

        // sshd reads authorized keys files as the user logging in: world-readable files in a
        // world-traversable directory (`StrictModes no`, as the owner is root, not the user).
        let pubkey =
            std::fs::read(key.with_extension("pub")).map_err(|e| format!("read client public key: {e}"))?;
        let auth = dir.join("authorized_keys");
        std::fs::create_dir(&auth).map_err(|e| format!("mkdir {}: {e}", auth.display()))?;
        set_mode(&auth, 0o755)?;
        for user in ["root", PLAIN_USER] {
            let f = auth.join(user);
            std::fs::write(&f, &pubkey).map_err(|e| format!("write {}: {e}", f.display()))?;
            set_mode(&f, 0o644)?;
        }

        let plain = dir.join("plain");
        std::fs::create_dir(&plain).map_err(|e| format!("mkdir {}: {e}", plain.display()))?;
        set_mode(&plain, 0o755)?;
        std::os::unix::fs::chown(&plain, Some(plain_uid), None)
            .map_err(|e| format!("chown {} to {PLAIN_USER}: {e}", plain.display()))?;

        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = pick_port()?;
            match launch(&sshd, dir, &host_key, port)? {
                Launch::Lost(why) => last = why,
                Launch::Up(child) => {
                    let s = Sshd {
                        child,
                        port,
                        key,
                        plain_uid,
                        remote_bin: OnceCell::new(),
                        tmp,
                    };
                    // Proves that this sshd (the only one with this client key) lets both users
                    // in and run a command, not just that something listens on the port.
                    return match s.wait_up() {
                        Ok(()) => Ok(s),
                        Err(why) => Err(format!("{why}\n--- sshd log ---\n{}", s.log())),
                    };
                }
            }
        }
        Err(format!(
            "sshd could not bind a port in {PORT_ATTEMPTS} attempts; last:\n{last}"
        ))
    }

    /// Like [`Sshd::start`], but on `Err` calls `skip_or_fail` and returns `None`.
    pub fn start_or_skip() -> Option<Sshd> {
        match Sshd::start() {
            Ok(s) => Some(s),
            Err(why) => {
                skip_or_fail(&format!("private sshd: {why}"));
                None
            }
        }
    }

    /// The value for ringsync's `-e/--rsh`: one string of words separated by single spaces
    /// (no word needs quoting). Besides the port, key and non-interactive options, `-F /dev/null`
    /// and `IdentitiesOnly=yes` keep root's own ssh config and agent keys out of the tests.
    pub fn rsh(&self) -> String {
        self.ssh_argv().join(" ")
    }

    /// The same as [`Sshd::rsh`], as an argv vector starting with `ssh` (for running ssh
    /// directly: append `user@127.0.0.1` and the command).
    pub fn ssh_argv(&self) -> Vec<String> {
        let mut v: Vec<String> = vec!["ssh".into(), "-F".into(), "/dev/null".into()];
        v.extend([
            "-p".into(),
            self.port.to_string(),
            "-i".into(),
            self.key.display().to_string(),
        ]);
        for o in [
            "BatchMode=yes",
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "IdentitiesOnly=yes",
            "LogLevel=ERROR",
        ] {
            v.extend(["-o".to_string(), o.to_string()]);
        }
        v
    }

    /// Run `ssh <argv> user@127.0.0.1 <remote...>` (stdin /dev/null) and collect its output.
    /// The remote words are joined by spaces and run by the user's shell, as ssh does.
    pub fn ssh(&self, user: &str, remote: &[&str]) -> Output {
        let argv = self.ssh_argv();
        Command::new(&argv[0])
            .args(&argv[1..])
            .arg(format!("{user}@{HOST}"))
            .args(remote)
            .stdin(Stdio::null())
            .output()
            .expect("spawn ssh")
    }

    /// `user@127.0.0.1:path`, a remote operand for ringsync.
    pub fn target(&self, user: &str, path: &Path) -> String {
        format!("{user}@{HOST}:{}", path.display())
    }

    /// The port sshd listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// "root".
    pub fn root_user(&self) -> &str {
        "root"
    }

    /// The unprivileged user's name, [`PLAIN_USER`].
    pub fn plain_user(&self) -> &str {
        PLAIN_USER
    }

    /// The unprivileged user's uid.
    pub fn plain_uid(&self) -> u32 {
        self.plain_uid
    }

    /// The ringsync binary under test at a path every user can execute (mode 0755, in a
    /// directory every user can traverse), for `--remote-bin`. The build directory need not be
    /// reachable by the unprivileged user, so this is a hard link or a copy in the temp dir.
    pub fn remote_bin(&self) -> PathBuf {
        self.remote_bin
            .get_or_init(|| {
                let dir = self.tmp.path().join("bin");
                let dst = dir.join("ringsync");
                link_or_copy_exe(Path::new(bin()), &dir, &dst)
                    .unwrap_or_else(|e| panic!("remote ringsync binary at {}: {e}", dst.display()));
                dst
            })
            .clone()
    }

    /// An empty directory (mode 0755) the unprivileged user owns, for remote targets written
    /// as that user. It goes with the `Sshd`.
    pub fn plain_dir(&self) -> PathBuf {
        self.tmp.path().join("plain")
    }

    /// sshd's log so far (its stderr at `LogLevel ERROR`), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("sshd.log")).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// Wait until both users can log in and run `true`. That needs a TCP connection, which
    /// is not probed separately: a bare connect-and-close makes sshd log a
    /// `kex_exchange_identification` error, noise in the log that failure messages show.
    fn wait_up(&self) -> Result<(), String> {
        let start = Instant::now();
        let mut last = String::new();
        let mut users = vec![self.root_user(), self.plain_user()];
        while start.elapsed() < UP_DEADLINE {
            let left = UP_DEADLINE
                .saturating_sub(start.elapsed())
                .max(Duration::from_secs(1));
            match self.try_login(users[0], left) {
                Ok(()) => {
                    users.remove(0);
                    if users.is_empty() {
                        return Ok(());
                    }
                }
                Err(e) => {
                    last = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        Err(format!(
            "sshd on {HOST}:{} did not let {} in within {UP_DEADLINE:?}: {last}",
            self.port, users[0]
        ))
    }

    /// `ssh user@127.0.0.1 true`, killed at `deadline`.
    fn try_login(&self, user: &str, deadline: Duration) -> Result<(), String> {
        let argv = self.ssh_argv();
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .args(["-o", "ConnectTimeout=5"])
            .arg(format!("{user}@{HOST}"))
            .arg("true");
        let out = run_with_deadline(cmd, deadline)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "ssh {user}@{HOST} true: {:?}: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // SIGKILL closes the listener's socket, but a connection child it forked just before
        // (e.g. for a connection a test made and closed) holds a copy until it gets to closing
        // it, a few milliseconds; until then new connections still complete. Wait for that,
        // so that the port is really closed once the `Sshd` is gone.
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5)
            && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The outcome of starting sshd on one port.
enum Launch {
    /// sshd runs (it may still be starting up).
    Up(Child),
    /// Another process took the port between the check and sshd's bind: try another.
    Lost(String),
}

/// Write the config for `port` and start `sshd -D -e -f CONFIG`, stderr to `sshd.log`.
fn launch(sshd: &Path, dir: &Path, host_key: &Path, port: u16) -> Result<Launch, String> {
    let config = dir.join("sshd_config");
    let log_path = dir.join("sshd.log");
    let text = format!(
        "# Private sshd of one test (tests/common/sshd.rs)\n\
         ListenAddress {HOST}\n\
         Port {port}\n\
         HostKey {host_key}\n\
         PidFile {pid}\n\
         AuthorizedKeysFile {auth}/%u\n\
         StrictModes no\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         UsePAM no\n\
         PermitRootLogin prohibit-password\n\
         AllowUsers root {PLAIN_USER}\n\
         PrintMotd no\n\
         PrintLastLog no\n\
         LogLevel ERROR\n",
        host_key = host_key.display(),
        pid = dir.join("sshd.pid").display(),
        auth = dir.join("authorized_keys").display(),
    );
    std::fs::write(&config, text).map_err(|e| format!("write {}: {e}", config.display()))?;
    let log = std::fs::File::create(&log_path).map_err(|e| format!("create {}: {e}", log_path.display()))?;

    let _ = std::fs::remove_file(dir.join("sshd.pid"));
    // sshd re-executes itself, so it must be started by absolute path.
    let mut cmd = match find_tool("setpriv") {
        Some(setpriv) => {
            let mut c = Command::new(setpriv);
            c.args(["--pdeathsig", "KILL", "--"]).arg(sshd);
            c
        }
        None => Command::new(sshd),
    };
    cmd.arg("-D").arg("-e").arg("-f").arg(&config);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", sshd.display()))?;

    // sshd writes its pid file once it listens; a failed bind ends it before that.
    let pid_file = dir.join("sshd.pid");
    let start = Instant::now();
    while start.elapsed() < UP_DEADLINE {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            if log.contains("Address already in use") || log.contains("Cannot bind") {
                return Ok(Launch::Lost(format!("port {port}: {log}")));
            }
            return Err(format!(
                "sshd exited at once ({status}) with config {}\n--- sshd log ---\n{log}",
                config.display()
            ));
        }
        if std::fs::read_to_string(&pid_file).is_ok_and(|s| s.ends_with('\n')) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(Launch::Up(child))
}

/// A port in 20000..60000 that is free right now (another process may still take it before
/// sshd binds; `start` then tries another). Within this process ports are handed out in turn
/// from a random start, so parallel tests do not pick the same one.
fn pick_port() -> Result<u16, String> {
    use rand::Rng;
    static NEXT: Mutex<Option<u16>> = Mutex::new(None);
    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..200 {
        let p = next.unwrap_or_else(|| rand::thread_rng().gen_range(20000..60000));
        *next = Some(if p + 1 >= 60000 { 20000 } else { p + 1 });
        if TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok() {
            return Ok(p);
        }
    }
    Err("no free port in 20000..60000 after 200 tries".into())
}

/// Make sure [`PLAIN_USER`] exists with a login shell; return its uid.
///
/// Tests in parallel threads and in other test processes may get here at once, and two
/// concurrent `useradd` runs are not safe (one can overwrite the other's entry after both
/// "succeed", leaving a uid that no longer exists), so an exclusive `flock` on a lock file in
/// /run serializes the check-and-create across threads and processes.
fn ensure_plain_user() -> Result<u32, String> {
    let lock_path = Path::new("/run/ringsync-ssh-test-user.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path)
        .map_err(|e| format!("open {}: {e}", lock_path.display()))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| format!("flock {}: {e}", lock_path.display()))?;
    let mut last = String::new();
    for _ in 0..20 {
        if let Some(uid) = lookup_uid(PLAIN_USER)? {
            unlock(PLAIN_USER)?;
            return Ok(uid);
        }
        // --password '*': no password can match, but the account is not "locked" ('!').
        let out = Command::new("useradd")
            .args([
                "--system",
                "--create-home",
                "--shell",
                "/bin/sh",
                "--password",
                "*",
                PLAIN_USER,
            ])
            .output()
            .map_err(|e| format!("run useradd (package passwd): {e}"))?;
        if out.status.success() {
            continue;
        }
        // 9: the name exists (made by something not taking our lock); others, e.g. 10 (cannot
        // lock /etc/passwd, held by an unrelated tool), are worth a retry too.
        last = format!(
            "useradd {PLAIN_USER}: {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(last)
    // The flock goes with `lock`.
}

/// Without PAM, sshd refuses even key logins to a "locked" account, one whose password field
/// starts with '!', which is `useradd`'s default. The user is this harness's own, so when
/// someone else created it that way, set the field to '*' (no password matches, not locked).
fn unlock(user: &str) -> Result<(), String> {
    let out = Command::new("getent")
        .args(["shadow", user])
        .output()
        .map_err(|e| format!("run getent: {e}"))?;
    let line = String::from_utf8_lossy(&out.stdout);
    if !line.split(':').nth(1).is_some_and(|p| p.starts_with('!')) {
        return Ok(());
    }
    let out = Command::new("usermod")
        .args(["--password", "*", user])
        .output()
        .map_err(|e| format!("run usermod: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{user}'s account is locked ('!' password, refused by sshd without PAM) and usermod -p '*' failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The uid of `user` from the passwd database, `None` when there is no such user.
fn lookup_uid(user: &str) -> Result<Option<u32>, String> {
    let out = Command::new("getent")
        .args(["passwd", user])
        .output()
        .map_err(|e| format!("run getent: {e}"))?;
    if out.status.code() == Some(2) {
        return Ok(None);
    }
    let line = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("getent passwd {user}: {:?}", out.status.code()));
    }
    let fields: Vec<&str> = line.trim_end().split(':').collect();
    if fields.len() < 7 {
        return Err(format!("getent passwd {user}: unexpected line {line:?}"));
    }
    if fields[6].ends_with("nologin") || fields[6].ends_with("false") {
        return Err(format!(
            "user {user} exists but cannot log in (shell {})",
            fields[6]
        ));
    }
    fields[2]
        .parse()
        .map(Some)
        .map_err(|e| format!("getent passwd {user}: uid {:?}: {e}", fields[2]))
}

/// `/run/sshd`, which sshd requires (privilege separation), root-owned and not group/world
/// writable. Normally made by the openssh-server service, which tests do not use.
fn ensure_privsep_dir() -> Result<(), String> {
    let d = Path::new("/run/sshd");
    match std::fs::create_dir(d) {
        Ok(()) => set_mode(d, 0o755),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("mkdir /run/sshd: {e}")),
    }
}

/// The temp dir: under /var/tmp (else /tmp), not `$TMPDIR`, which the unprivileged user may
/// not be able to reach; mode 0755 so that user can traverse it to `remote_bin` and
/// `plain_dir`. The name has no white space, as `rsh()` carries the key path unquoted.
fn make_tmp() -> Result<tempfile::TempDir, String> {
    let base = ["/var/tmp", "/tmp"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_dir())
        .ok_or("no /var/tmp or /tmp")?;
    let tmp = tempfile::Builder::new()
        .prefix("ringsync-sshd-")
        .tempdir_in(base)
        .map_err(|e| format!("create temp dir in {}: {e}", base.display()))?;
    set_mode(tmp.path(), 0o755)?;
    Ok(tmp)
}

/// A new ed25519 key pair without passphrase at `path` (private, 0600) and `path.pub`.
fn keygen_ed25519(keygen: &Path, path: &Path) -> Result<(), String> {
    let out = Command::new(keygen)
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "ringsync-test", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run ssh-keygen: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ssh-keygen -f {}: {:?}: {}",
            path.display(),
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    set_mode(path, 0o600)
}

/// Put the executable `src` at `dst` in a new directory `dir` (0755): a hard link when `src`
/// is already 0755 on the same filesystem, else a copy made 0755.
fn link_or_copy_exe(src: &Path, dir: &Path, dst: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    set_mode(dir, 0o755)?;
    let mode = std::fs::metadata(src)
        .map_err(|e| format!("stat {}: {e}", src.display()))?
        .permissions()
        .mode();
    if mode & 0o7777 == 0o755 && std::fs::hard_link(src, dst).is_ok() {
        return Ok(());
    }
    std::fs::copy(src, dst).map_err(|e| format!("copy {}: {e}", src.display()))?;
    set_mode(dst, 0o755)
}

fn set_mode(p: &Path, mode: u32) -> Result<(), String> {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {mode:o} {}: {e}", p.display()))
}

/// An executable by name on PATH or in /usr/sbin, /sbin (not on a plain user's PATH), as an
/// absolute path.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .filter(|d| d.is_absolute())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Run `cmd` (stdin /dev/null, output collected), killing it at `deadline`.
fn run_with_deadline(mut cmd: Command, deadline: Duration) -> Result<Output, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn {cmd:?}: {e}"))?;
    let start = Instant::now();
    loop {
        match child.try_wait() {
            // Output is a few lines at most, so the pipes cannot fill up while we poll.
            Ok(Some(_)) => return child.wait_with_output().map_err(|e| format!("{cmd:?}: {e}")),
            Ok(None) if start.elapsed() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{cmd:?} still running after {deadline:?} (killed)"));
            }
            Err(e) => return Err(format!("wait for {cmd:?}: {e}")),
        }
    }
}
