//! The target guard: an exclusive lock on DST while a mirror runs, and the record of what DST
//! equals (with a dirty mark while it is being changed).
//!
//! The lock is `flock(LOCK_EX|LOCK_NB)` on the DST root directory itself, so it needs nothing
//! inside or beside the tree and dies with the process. The record is the xattr
//! [`meta::RECORD_XATTR`] on the DST root (ringsync never copies, compares or prunes that name);
//! where the filesystem takes no user xattrs it is the file `.<DSTNAME>.ringsync-mirror` next to
//! DST, outside the tree.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags, StatxFlags};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use crate::meta;

/// What DST equals, as ringsync last left it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    pub version: u32,
    /// `dirty` from before the first write of a run until it finished without errors.
    pub state: String,
    /// The source DST was last made equal to (canonical path, escaped as in `diff`).
    pub source: Option<String>,
    pub source_ino: Option<u64>,
    /// Birth time of the source root `[sec, nsec]`: tells a new snapshot at an old path apart.
    pub source_btime: Option<(i64, i64)>,
    /// When that run started, `[sec, nsec]`: source entries whose ctime is older were compared
    /// by it and have not changed since.
    pub started: Option<(i64, i64)>,
    pub finished: Option<(i64, i64)>,
    /// Digest of the filters that run used (`filter::Filter::digest`); none without filters.
    /// A run with other filters trusts neither `--prev` nor the ctime shortcut.
    #[serde(default)]
    pub filter: Option<String>,
    /// The target id (hex) of the record stream `receive` last applied to END: DST equals
    /// that state of the sender's source. Cleared by anything else that changes DST.
    #[serde(default)]
    pub stream_target: Option<String>,
    /// DST's own state (hex of `send::tree_id`, without the root's ctime) when the stream
    /// named by `stream_target` was applied: an incremental stream is applied only while DST
    /// still has it (nothing changed DST since).
    #[serde(default)]
    pub dst_state: Option<String>,
    /// With `resume`: the receive that left the token stopped cleanly (a broken pipe, a
    /// damaged stream, a signal it caught), having removed what it had staged and not
    /// published. Not set when it was killed or crashed, possibly in the middle of a
    /// publication: an incremental stream cannot be resumed then.
    #[serde(default)]
    pub stopped: Option<bool>,
    /// With `resume`: a batch the interrupted receive published had entries it could not
    /// apply or that were not sent, so the resumed one cannot end clean.
    #[serde(default)]
    pub incomplete: Option<bool>,
    /// While a receive is unfinished: its resume token (`ringsync receive --token`).
    #[serde(default)]
    pub resume: Option<String>,
    /// SRC's btrfs subvolume and the generation it had when the run started (after a
    /// `syncfs`): what changed since is what `mirror::changes` finds.
    #[serde(default)]
    pub btrfs: Option<crate::mirror::changes::Mark>,
}

impl Record {
    pub fn is_clean(&self) -> bool {
        self.state == "clean"
    }

    /// Whether the record names this source.
    pub fn is_from(&self, id: &SourceId) -> bool {
        self.source.as_deref() == Some(id.path.as_str())
            && self.source_ino == Some(id.ino)
            && self.source_btime == id.btime
    }
}

/// A source root's identity: where it is and which inode (with birth time) it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceId {
    pub path: String,
    pub ino: u64,
    pub btime: Option<(i64, i64)>,
}

pub fn source_id(path: &Path) -> std::io::Result<SourceId> {
    let canon = std::fs::canonicalize(path)?;
    let stx = rustix::fs::statx(
        rustix::fs::CWD,
        &canon,
        AtFlags::empty(),
        StatxFlags::INO | StatxFlags::BTIME,
    )?;
    Ok(SourceId {
        path: crate::diff::escape(canon.as_os_str().as_bytes()),
        ino: stx.stx_ino,
        btime: (stx.stx_mask & libc::STATX_BTIME != 0)
            .then_some((stx.stx_btime.tv_sec, stx.stx_btime.tv_nsec as i64)),
    })
}

pub fn now() -> (i64, i64) {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() as i64, d.subsec_nanos() as i64)
}

pub enum LockError {
    /// Another process holds the lock.
    Busy,
    Other(String),
}

/// DST's root, locked for this process's lifetime (the lock goes with the descriptor).
pub struct Guard {
    root: OwnedFd,
    dst: PathBuf,
    /// Where the record goes when the root takes no user xattrs.
    side_file: Option<PathBuf>,
}

impl Guard {
    /// Lock the existing directory `dst` (canonical).
    pub fn lock(dst: &Path) -> Result<Guard, LockError> {
        let g = Guard::open(dst).map_err(LockError::Other)?;
        match rustix::fs::flock(&g.root, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(g),
            Err(Errno::WOULDBLOCK) => Err(LockError::Busy),
            Err(e) => Err(LockError::Other(format!("flock {}: {e}", dst.display()))),
        }
    }

    /// The record of `dst` without locking it (a dry run); unreadable reads as none.
    pub fn peek(dst: &Path) -> Option<Record> {
        Guard::open(dst).ok()?.read().ok()?
    }

    fn open(dst: &Path) -> Result<Guard, String> {
        let root = rustix::fs::open(
            dst,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| format!("open {}: {e}", dst.display()))?;
        let side_file = match (dst.parent(), dst.file_name()) {
            (Some(parent), Some(name)) => {
                let mut n = OsString::from(".");
                n.push(name);
                n.push(".ringsync-mirror");
                Some(parent.join(n))
            }
            _ => None,
        };
        Ok(Guard {
            root,
            dst: dst.to_path_buf(),
            side_file,
        })
    }

    pub fn root(&self) -> &OwnedFd {
        &self.root
    }

    /// The record, if any. One that cannot be parsed reads as dirty (trust nothing).
    pub fn read(&self) -> Result<Option<Record>, String> {
        let mut buf = vec![0u8; 4096];
        let mut got = rustix::fs::fgetxattr(&self.root, meta::RECORD_XATTR, &mut buf[..]);
        if got == Err(Errno::RANGE) {
            // Longer than usual (a long source path): ask for the size, then read it.
            let mut none = [0u8; 0];
            let len = rustix::fs::fgetxattr(&self.root, meta::RECORD_XATTR, &mut none[..])
                .map_err(|e| format!("read the mirror record of {}: {e}", self.dst.display()))?;
            buf.resize(len, 0);
            got = rustix::fs::fgetxattr(&self.root, meta::RECORD_XATTR, &mut buf[..]);
        }
        let raw = match got {
            Ok(n) => Some(buf[..n].to_vec()),
            Err(Errno::NODATA) => None,
            Err(Errno::NOTSUP) => match &self.side_file {
                Some(p) => match std::fs::read(p) {
                    Ok(b) => Some(b),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => return Err(format!("read {}: {e}", p.display())),
                },
                None => None,
            },
            Err(e) => return Err(format!("read the mirror record of {}: {e}", self.dst.display())),
        };
        Ok(raw.map(|b| {
            serde_json::from_slice(&b).unwrap_or_else(|_| Record {
                version: 1,
                state: "dirty".into(),
                ..Default::default()
            })
        }))
    }

    /// Store the record (xattr, else the side file, replaced atomically).
    pub fn write(&self, r: &Record) -> Result<(), String> {
        let v = serde_json::to_vec(r).expect("record serialises");
        match rustix::fs::fsetxattr(
            &self.root,
            meta::RECORD_XATTR,
            &v,
            rustix::fs::XattrFlags::empty(),
        ) {
            Ok(()) => return Ok(()),
            Err(Errno::NOTSUP) => {}
            Err(e) => return Err(format!("write the mirror record of {}: {e}", self.dst.display())),
        }
        let Some(p) = &self.side_file else {
            return Err(format!(
                "{} takes no xattrs and has no parent for the record file",
                self.dst.display()
            ));
        };
        let mut tmp = p.clone().into_os_string().into_vec();
        tmp.extend_from_slice(format!(".{}.tmp", std::process::id()).as_bytes());
        let tmp = PathBuf::from(OsString::from_vec(tmp));
        let _ = std::fs::remove_file(&tmp);
        // A fresh file (never through a symlink planted at the temporary name), then renamed.
        let res = (|| {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?;
            f.write_all(&v)?;
            f.sync_all()?;
            std::fs::rename(&tmp, p)
        })();
        res.map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("write {}: {e}", p.display())
        })
    }
}
