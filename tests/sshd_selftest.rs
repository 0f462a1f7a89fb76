//! Self-tests for the private sshd harness (tests/common/sshd.rs).
//!
//! Each check compares with facts the harness does not report itself: the uid the remote
//! shell prints against the passwd database, the owner of a remotely created file as seen
//! locally, the version line of the remote binary, and the port refusing connections once the
//! harness is dropped.

mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::describe;
use common::sshd::{Sshd, HOST};

/// The remote command's stdout, which must have succeeded.
fn stdout_ok(out: &Output, what: &str) -> String {
    assert!(out.status.success(), "{what}: {}", describe(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `user`'s uid from `getent passwd`, independent of the harness.
fn passwd_uid(user: &str) -> u32 {
    let out = Command::new("getent")
        .args(["passwd", user])
        .output()
        .expect("spawn getent");
    let line = stdout_ok(&out, "getent passwd");
    let uid = line
        .split(':')
        .nth(2)
        .unwrap_or_else(|| panic!("passwd line {line:?}"));
    uid.parse()
        .unwrap_or_else(|e| panic!("uid {uid:?} in {line:?}: {e}"))
}

fn accepts(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Duration::from_secs(2),
    )
    .is_ok()
}

#[test]
fn root_login_runs_as_uid_0() {
    let Some(s) = Sshd::start_or_skip() else { return };
    assert!(s.port() >= 20000, "port {}", s.port());
    let out = s.ssh(s.root_user(), &["id", "-u"]);
    assert_eq!(
        stdout_ok(&out, "ssh root id -u").trim(),
        "0",
        "sshd log:\n{}",
        s.log()
    );
}

#[test]
fn rsh_string_is_the_argv_and_works() {
    let Some(s) = Sshd::start_or_skip() else { return };
    let rsh = s.rsh();
    assert!(
        !rsh.contains("  ") && !rsh.starts_with(' ') && !rsh.ends_with(' '),
        "{rsh:?}"
    );
    let words: Vec<String> = rsh.split(' ').map(String::from).collect();
    assert_eq!(words, s.ssh_argv());
    assert_eq!(words[0], "ssh");
    for want in [
        "BatchMode=yes",
        "StrictHostKeyChecking=no",
        "UserKnownHostsFile=/dev/null",
    ] {
        assert!(words.iter().any(|w| w == want), "{want} missing from {rsh:?}");
    }
    // Split the string the way a plain word-splitting --rsh would, and log in with it.
    let out = Command::new(&words[0])
        .args(&words[1..])
        .arg(format!("root@{HOST}"))
        .arg("echo ok")
        .stdin(Stdio::null())
        .output()
        .expect("spawn ssh");
    assert_eq!(stdout_ok(&out, "ssh via rsh()"), "ok\n");
}

#[test]
fn plain_user_is_unprivileged_and_owns_plain_dir() {
    let Some(s) = Sshd::start_or_skip() else { return };
    let uid = passwd_uid(s.plain_user());
    assert_ne!(uid, 0, "{} must not be root", s.plain_user());
    let out = s.ssh(s.plain_user(), &["id", "-u"]);
    assert_eq!(stdout_ok(&out, "ssh plain id -u").trim(), uid.to_string());

    let f = s.plain_dir().join("made-remotely");
    let out = s.ssh(s.plain_user(), &["touch", &f.display().to_string()]);
    stdout_ok(&out, "remote touch in plain_dir");
    let m = std::fs::symlink_metadata(&f).expect("the remotely touched file exists locally");
    assert_eq!(m.uid(), uid, "owner of {}", f.display());

    // And it really lacks root's rights: the plain dir's parent is root's and 0755.
    let parent = s.plain_dir().parent().expect("parent").join("denied");
    let out = s.ssh(s.plain_user(), &["touch", &parent.display().to_string()]);
    assert!(
        !out.status.success(),
        "plain user wrote into root's dir: {}",
        describe(&out)
    );
    assert!(!parent.exists());
}

#[test]
fn remote_bin_runs_as_plain_user() {
    let Some(s) = Sshd::start_or_skip() else { return };
    let rb = s.remote_bin();
    let out = s.ssh(s.plain_user(), &[&rb.display().to_string(), "--version"]);
    let text = stdout_ok(&out, "remote ringsync --version");
    assert!(
        text.lines().next().is_some_and(|l| l.starts_with("ringsync ")),
        "{text:?}"
    );
}

#[test]
fn two_servers_at_once_are_independent() {
    let Some(a) = Sshd::start_or_skip() else { return };
    let Some(b) = Sshd::start_or_skip() else { return };
    assert_ne!(a.port(), b.port());
    for s in [&a, &b] {
        let out = s.ssh(s.root_user(), &["id", "-u"]);
        assert_eq!(stdout_ok(&out, "ssh root id -u").trim(), "0", "port {}", s.port());
    }
    // Each server authorizes only its own client key: a's key at b's port is refused.
    let mut argv = a.ssh_argv();
    let p = argv.iter().position(|w| w == "-p").expect("-p in argv") + 1;
    argv[p] = b.port().to_string();
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .arg(format!("root@{HOST}"))
        .arg("true")
        .stdin(Stdio::null())
        .output()
        .expect("spawn ssh");
    assert!(!out.status.success(), "a's key got into b: {}", describe(&out));
}

#[test]
fn drop_stops_sshd_and_removes_its_dir() {
    let Some(s) = Sshd::start_or_skip() else { return };
    let port = s.port();
    let dir = s.plain_dir();
    let rb = s.remote_bin();
    assert!(accepts(port), "sshd should listen on {port}");
    drop(s);
    assert!(!accepts(port), "port {port} still accepts connections after drop");
    assert!(!dir.exists(), "{} still exists after drop", dir.display());
    assert!(!rb.exists(), "{} still exists after drop", rb.display());
}
