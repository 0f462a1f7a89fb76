//! The filesystems mounted below a directory, from `/proc/self/mountinfo`: a mirror from btrfs
//! metadata refuses SRCs with any (their changes are not in that metadata), and io_uring reads
//! are not used where one is FUSE ([`crate::ring::uring_reads_trusted`]).

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A filesystem mounted strictly below a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Its mount point, absolute.
    pub point: Vec<u8>,
    /// Its type as mountinfo gives it (`ext4`, `fuse.sshfs`, `fuseblk`).
    pub fstype: Vec<u8>,
}

impl Mount {
    pub fn is_fuse(&self) -> bool {
        self.fstype == b"fuse" || self.fstype == b"fuseblk" || self.fstype.starts_with(b"fuse.")
    }
}

/// The mounts strictly below `dir` (an absolute path as the kernel shows it: canonical).
pub fn below(dir: &Path) -> std::io::Result<Vec<Mount>> {
    Ok(parse_below(
        &std::fs::read("/proc/self/mountinfo")?,
        dir.as_os_str().as_bytes(),
    ))
}

fn parse_below(info: &[u8], dir: &[u8]) -> Vec<Mount> {
    let mut out = Vec::new();
    for line in info.split(|b| *b == b'\n') {
        let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
        // Field 5 is the mount point, with space, tab, newline and backslash as \ooo; the
        // optional fields end at "-", then the type.
        let (Some(field), Some(dash)) = (fields.get(4), fields.iter().skip(6).position(|f| *f == b"-"))
        else {
            continue;
        };
        let point = unescape(field);
        let inside = point.len() > dir.len()
            && point.starts_with(dir)
            && (dir == b"/" || dir.ends_with(b"/") || point[dir.len()] == b'/');
        if inside {
            out.push(Mount {
                point,
                fstype: fields.get(6 + dash + 1).map(|t| unescape(t)).unwrap_or_default(),
            });
        }
    }
    out
}

fn unescape(f: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(f.len());
    let mut i = 0;
    while i < f.len() {
        let octal = f
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let (b'\\', Some(_)) = (f[i], octal) {
            let v = (f[i + 1] - b'0') as u32 * 64 + (f[i + 2] - b'0') as u32 * 8 + (f[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(f[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(br"/mnt/a\040b"), b"/mnt/a b");
        assert_eq!(unescape(br"/x\\"), br"/x\\");
    }

    #[test]
    fn finds_mounts_strictly_below_with_their_type() {
        let info = b"22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
36 22 0:30 / /srv/data rw shared:5 - xfs /dev/loop0 rw\n\
37 36 0:31 / /srv/data/my\\040disk rw,nosuid - fuse.sshfs host: rw,user_id=0\n\
38 22 0:32 / /srv/database rw - tmpfs tmpfs rw\n\
39 36 0:33 / /srv/data/sub/f rw master:2 shared:7 - fuseblk /dev/sdb1 rw\n";
        let got = parse_below(info, b"/srv/data");
        assert_eq!(
            got.iter()
                .map(|m| (m.point.as_slice(), m.fstype.as_slice()))
                .collect::<Vec<_>>(),
            vec![
                (&b"/srv/data/my disk"[..], &b"fuse.sshfs"[..]),
                (b"/srv/data/sub/f", b"fuseblk")
            ]
        );
        assert!(got.iter().all(Mount::is_fuse));
        // The root: everything but itself.
        assert_eq!(parse_below(info, b"/").len(), 4);
        assert!(parse_below(info, b"/srv/data/sub/f").is_empty());
    }
}
