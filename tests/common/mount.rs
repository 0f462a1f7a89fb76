//! Loop-mounted filesystems for tests (root only): the guard, plus btrfs
//! subvolume and snapshot helpers and read-only remounts.
//!
//! A missing prerequisite (not root, mkfs.* missing, no loop devices, mount
//! refused) is returned as `Err(reason)`; [`mount_or_skip`] turns that into
//! `SKIPPED: <reason>`, or a failure when the `CI` environment variable is set.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{have_tool, is_root, scratch, skip_or_fail};

/// A loop-mounted filesystem image in a scratch directory. Unmounted on drop,
/// also when the test panics.
pub struct LoopFs {
    mnt: PathBuf,
    pub fstype: &'static str,
    /// The image and the options it is mounted with (`None` for a tmpfs), for [`LoopFs::cycle`].
    img: Option<PathBuf>,
    mount_opts: String,
    // Dropped after `Drop::drop` has unmounted.
    _tmp: tempfile::TempDir,
}

impl LoopFs {
    /// Make and mount a fresh filesystem; `Err` is the reason to skip.
    pub fn new(fstype: &'static str, size_mib: u64) -> Result<LoopFs, String> {
        LoopFs::with_mkfs(fstype, size_mib, &[])
    }

    /// As [`LoopFs::new`], with more options for mkfs (e.g. `-b 1024`).
    pub fn with_mkfs(fstype: &'static str, size_mib: u64, mkfs_extra: &[&str]) -> Result<LoopFs, String> {
        LoopFs::with_options(fstype, size_mib, mkfs_extra, "")
    }

    /// As [`LoopFs::with_mkfs`], mounted with `-o loop,<mount_opts>` (e.g. `noauto_da_alloc`;
    /// `""` for none). [`LoopFs::cycle`] mounts it again with the same options.
    pub fn with_options(
        fstype: &'static str,
        size_mib: u64,
        mkfs_extra: &[&str],
        mount_opts: &str,
    ) -> Result<LoopFs, String> {
        if !is_root() {
            return Err(format!("{fstype} loop mount needs root"));
        }
        let mkfs = format!("mkfs.{fstype}");
        if !have_tool(&mkfs) {
            return Err(format!("{mkfs} not installed"));
        }
        if !have_tool("mount") || !have_tool("umount") {
            return Err("mount/umount not installed".into());
        }
        if fstype == "btrfs" && !have_tool("btrfs") {
            return Err("btrfs (btrfs-progs) not installed".into());
        }
        if !Path::new("/dev/loop-control").exists() {
            return Err("/dev/loop-control missing (no loop device support)".into());
        }
        let tmp = scratch(&format!("loop-{fstype}"));
        let img = tmp.path().join("fs.img");
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&mnt).map_err(|e| format!("mkdir mnt: {e}"))?;
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(size_mib << 20))
            .map_err(|e| format!("create image: {e}"))?;
        let force = if fstype == "ext4" { "-F" } else { "-f" };
        let out = Command::new(&mkfs)
            .args(["-q", force])
            .args(mkfs_extra)
            .arg(&img)
            .output()
            .map_err(|e| format!("run {mkfs}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{mkfs} {mkfs_extra:?} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        mount_loop(fstype, &img, &mnt, mount_opts)?;
        Ok(LoopFs {
            mnt,
            fstype,
            img: Some(img),
            mount_opts: mount_opts.to_string(),
            _tmp: tmp,
        })
    }

    /// Unmount (retrying while the filesystem is busy) and mount the image again with the same
    /// options: after a shutdown, this replays the journal as a reboot would. Panics on failure.
    pub fn cycle(&self) {
        if let Err(e) = self.umount_retrying() {
            panic!("umount {}: {e}", self.mnt.display());
        }
        let img = self.img.as_ref().expect("a tmpfs has no image to mount again");
        // The loop device of the mount is detached (autoclear) by the kernel after the umount,
        // asynchronously. `mount -o loop` reuses a loop device still bound to the image, which
        // the pending detach then takes away under the new mount: every access fails with EIO
        // (seen in the soak). Wait until the image is free.
        wait_image_detached(img);
        if let Err(e) = mount_loop(self.fstype, img, &self.mnt, &self.mount_opts) {
            panic!("mount {} again: {e}", self.mnt.display());
        }
    }

    /// A fresh tmpfs mounted with `opts` (e.g. `size=64m,ro`; no image); `Err` is the reason
    /// to skip.
    pub fn tmpfs(opts: &str) -> Result<LoopFs, String> {
        if !is_root() {
            return Err("tmpfs mount needs root".into());
        }
        if !have_tool("mount") || !have_tool("umount") {
            return Err("mount/umount not installed".into());
        }
        let tmp = scratch("tmpfs");
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&mnt).map_err(|e| format!("mkdir mnt: {e}"))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(&mnt)
            .output()
            .map_err(|e| format!("run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs -o {opts} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(LoopFs {
            mnt,
            fstype: "tmpfs",
            img: None,
            mount_opts: String::new(),
            _tmp: tmp,
        })
    }

    pub fn path(&self) -> &Path {
        &self.mnt
    }

    /// `mount -o remount,<opts>` (e.g. `ro`, `rw`); panics on failure.
    pub fn remount(&self, opts: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{opts}")])
            .arg(&self.mnt)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount -o remount,{opts} {} failed: {}",
            self.mnt.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `mount -t <fstype> -o loop[,<opts>] IMG MNT`; `Err` is the reason.
/// Until no loop device is bound to `img` (`losetup -j`), for at most about 10 s.
fn wait_image_detached(img: &Path) {
    for _ in 0..1000 {
        match Command::new("losetup").arg("-j").arg(img).output() {
            Ok(o) if o.status.success() && o.stdout.iter().all(|b| b.is_ascii_whitespace()) => return,
            Ok(o) if o.status.success() => std::thread::sleep(std::time::Duration::from_millis(10)),
            // No losetup: nothing to wait for that can be seen.
            _ => return,
        }
    }
    super::note(&format!(
        "{}: a loop device is still bound to it 10 s after the umount",
        img.display()
    ));
}

fn mount_loop(fstype: &str, img: &Path, mnt: &Path, opts: &str) -> Result<(), String> {
    let opts = match opts {
        "" => "loop".to_string(),
        o => format!("loop,{o}"),
    };
    let out = Command::new("mount")
        .args(["-t", fstype, "-o", &opts])
        .arg(img)
        .arg(mnt)
        .output()
        .map_err(|e| format!("run mount: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "mount -o {opts} ({fstype}) failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

impl LoopFs {
    /// `umount MNT`, retried for about 10 s while it fails (busy).
    fn umount_retrying(&self) -> Result<(), String> {
        // A filesystem can stay busy for a moment after the last process using it exited (a
        // btrfs transaction commit, a child being reaped): retry quietly. umount's own stderr is
        // captured so a retried "target is busy" is not printed into the test run.
        let mut last = String::new();
        for attempt in 0..20 {
            match Command::new("umount").arg(&self.mnt).output() {
                Ok(o) if o.status.success() => return Ok(()),
                Ok(o) => last = String::from_utf8_lossy(&o.stderr).trim().to_string(),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(std::time::Duration::from_millis(50 * (attempt + 1)));
        }
        Err(last)
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        // Busy for longer than the retries: fall back to a lazy unmount.
        let Err(last) = self.umount_retrying() else {
            return;
        };
        match Command::new("umount").arg("-l").arg(&self.mnt).output() {
            Ok(o) if o.status.success() => {}
            _ => super::note(&format!(
                "umount {} failed ({last}), and so did a lazy unmount",
                self.mnt.display()
            )),
        }
    }
}

/// Mount or skip (fail under CI).
pub fn mount_or_skip(fstype: &'static str, size_mib: u64) -> Option<LoopFs> {
    match LoopFs::new(fstype, size_mib) {
        Ok(fs) => Some(fs),
        Err(reason) => {
            skip_or_fail(&reason);
            None
        }
    }
}

fn btrfs(args: &[&std::ffi::OsStr]) {
    let out = Command::new("btrfs").args(args).output().expect("run btrfs");
    assert!(
        out.status.success(),
        "btrfs {:?} failed: {}{}",
        args,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `btrfs subvolume create PATH`
pub fn subvolume_create(path: &Path) {
    btrfs(&["subvolume".as_ref(), "create".as_ref(), path.as_os_str()]);
}

/// `btrfs subvolume snapshot -r SUBVOL SNAP` (read-only snapshot).
pub fn snapshot_ro(subvol: &Path, snap: &Path) {
    btrfs(&[
        "subvolume".as_ref(),
        "snapshot".as_ref(),
        "-r".as_ref(),
        subvol.as_os_str(),
        snap.as_os_str(),
    ]);
}
