//! The btrfs ioctls a mirror needs to ask a subvolume what changed since a generation
//! (`BTRFS_IOC_GET_SUBVOL_INFO`, `BTRFS_IOC_TREE_SEARCH_V2`), with the kernel's layouts from
//! `linux/btrfs.h`. Here because they need `unsafe`; what the items mean is the caller's
//! business ([`crate::mirror::changes`]).
//!
//! Must not: interpret items beyond their headers, or trust a length the kernel gave without
//! checking it against the buffer.

use std::os::fd::{AsRawFd, BorrowedFd};

use rustix::io::Errno;

const IOCTL_MAGIC: u32 = 0x94;
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

const fn ioc(dir: u32, nr: u32, size: usize) -> libc::c_ulong {
    ((dir << 30) | ((size as u32) << 16) | (IOCTL_MAGIC << 8) | nr) as libc::c_ulong
}

/// `struct btrfs_ioctl_timespec`.
#[repr(C)]
#[derive(Clone, Copy)]
struct IoctlTimespec {
    sec: u64,
    nsec: u32,
}

/// `struct btrfs_ioctl_get_subvol_info_args`.
#[repr(C)]
struct SubvolInfoArgs {
    treeid: u64,
    name: [u8; 256],
    parent_id: u64,
    dirid: u64,
    generation: u64,
    flags: u64,
    uuid: [u8; 16],
    parent_uuid: [u8; 16],
    received_uuid: [u8; 16],
    ctransid: u64,
    otransid: u64,
    stransid: u64,
    rtransid: u64,
    ctime: IoctlTimespec,
    otime: IoctlTimespec,
    stime: IoctlTimespec,
    rtime: IoctlTimespec,
    reserved: [u64; 8],
}
const _: () = assert!(std::mem::size_of::<SubvolInfoArgs>() == 504);
const IOC_GET_SUBVOL_INFO: libc::c_ulong = ioc(IOC_READ, 60, std::mem::size_of::<SubvolInfoArgs>());

/// `struct btrfs_ioctl_search_key`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SearchKeyRaw {
    tree_id: u64,
    min_objectid: u64,
    max_objectid: u64,
    min_offset: u64,
    max_offset: u64,
    min_transid: u64,
    max_transid: u64,
    min_type: u32,
    max_type: u32,
    nr_items: u32,
    unused: u32,
    unused1: u64,
    unused2: u64,
    unused3: u64,
    unused4: u64,
}
const _: () = assert!(std::mem::size_of::<SearchKeyRaw>() == 104);

/// `struct btrfs_ioctl_search_args_v2` without its flexible `buf`.
#[repr(C)]
#[derive(Clone, Copy)]
struct SearchArgsV2 {
    key: SearchKeyRaw,
    buf_size: u64,
}
const SEARCH_ARGS_BYTES: usize = std::mem::size_of::<SearchArgsV2>();
const _: () = assert!(SEARCH_ARGS_BYTES == 112);
const IOC_TREE_SEARCH_V2: libc::c_ulong = ioc(IOC_READ | IOC_WRITE, 17, SEARCH_ARGS_BYTES);

/// `struct btrfs_ioctl_search_header`.
const SEARCH_HEADER_BYTES: usize = 32;
/// Result buffer of one search call: many leaves' worth of items per call.
const SEARCH_BUF_BYTES: usize = 256 << 10;
/// The kernel refuses larger buffers (`BTRFS_IOC_TREE_SEARCH_V2`: 16 MiB).
const SEARCH_BUF_BYTES_MAX: usize = 16 << 20;

fn last_errno() -> Errno {
    Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO)
}

/// What `BTRFS_IOC_GET_SUBVOL_INFO` says about the subvolume holding a descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubvolInfo {
    /// The subvolume's id (its tree's objectid).
    pub id: u64,
    pub uuid: [u8; 16],
    /// The last transaction that changed the subvolume, as committed.
    pub generation: u64,
}

/// The subvolume `fd` is in (unprivileged; Linux 4.18).
pub fn subvol_info(fd: BorrowedFd<'_>) -> Result<SubvolInfo, Errno> {
    // SAFETY: the all-zero bit pattern is valid for this plain-integer struct.
    let mut args: SubvolInfoArgs = unsafe { std::mem::zeroed() };
    // SAFETY: the request's size is that of `args`, which the kernel fills and which outlives
    // the call; `fd` is a live descriptor.
    let r = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            IOC_GET_SUBVOL_INFO,
            &mut args as *mut SubvolInfoArgs,
        )
    };
    if r < 0 {
        return Err(last_errno());
    }
    Ok(SubvolInfo {
        id: args.treeid,
        uuid: args.uuid,
        generation: args.generation,
    })
}

/// A btrfs key (objectid, type, offset), ordered as the trees order them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub objectid: u64,
    pub kind: u8,
    pub offset: u64,
}

impl Key {
    pub const MAX: Key = Key {
        objectid: u64::MAX,
        kind: u8::MAX,
        offset: u64::MAX,
    };

    /// The next key in tree order, or none after the last.
    fn next(self) -> Option<Key> {
        if self.offset < u64::MAX {
            return Some(Key {
                offset: self.offset + 1,
                ..self
            });
        }
        if self.kind < u8::MAX {
            return Some(Key {
                kind: self.kind + 1,
                offset: 0,
                ..self
            });
        }
        (self.objectid < u64::MAX).then(|| Key {
            objectid: self.objectid + 1,
            kind: 0,
            offset: 0,
        })
    }
}

/// One item a search found: its key, the generation of the leaf it is in, its bytes.
pub struct Item<'a> {
    pub key: Key,
    /// The leaf's generation (not the item's: every item of a leaf a transaction touched
    /// carries it).
    pub leaf_transid: u64,
    pub data: &'a [u8],
}

/// Every item of tree `tree_id` (0: the subvolume of `fd`) with a key in `[min, max]` (tree
/// order) that sits in a leaf written in transaction `min_transid` or later, in key order,
/// handed to `each`. Needs CAP_SYS_ADMIN (EPERM otherwise).
pub fn tree_search(
    fd: BorrowedFd<'_>,
    tree_id: u64,
    min: Key,
    max: Key,
    min_transid: u64,
    mut each: impl FnMut(&Item<'_>),
) -> Result<(), Errno> {
    let mut buf_bytes = SEARCH_BUF_BYTES;
    // u64 words: the kernel's buffer is `__u64 buf[]` after the arguments.
    let mut words: Vec<u64> = vec![0; (SEARCH_ARGS_BYTES + buf_bytes) / 8];
    let mut from = min;
    loop {
        let args = SearchArgsV2 {
            key: SearchKeyRaw {
                tree_id,
                min_objectid: from.objectid,
                max_objectid: max.objectid,
                min_offset: from.offset,
                max_offset: max.offset,
                min_transid,
                max_transid: u64::MAX,
                min_type: from.kind as u32,
                max_type: max.kind as u32,
                nr_items: u32::MAX,
                ..Default::default()
            },
            buf_size: buf_bytes as u64,
        };
        // SAFETY: `words` holds at least SEARCH_ARGS_BYTES bytes, is 8-aligned, and
        // `SearchArgsV2` is plain integers.
        unsafe { std::ptr::write(words.as_mut_ptr() as *mut SearchArgsV2, args) };
        // SAFETY: the kernel reads the arguments and writes at most `buf_size` bytes after
        // them, all inside `words`, which outlives the call.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), IOC_TREE_SEARCH_V2, words.as_mut_ptr()) };
        // SAFETY: as above; the kernel wrote the (possibly updated) arguments back in place.
        let out: SearchArgsV2 = unsafe { std::ptr::read(words.as_ptr() as *const SearchArgsV2) };
        if r < 0 {
            let e = last_errno();
            // One item larger than the buffer: the kernel says how much it needs.
            let need = out.buf_size as usize;
            if e == Errno::OVERFLOW && need > buf_bytes && need <= SEARCH_BUF_BYTES_MAX {
                buf_bytes = need.next_multiple_of(8);
                words = vec![0; (SEARCH_ARGS_BYTES + buf_bytes) / 8];
                continue;
            }
            return Err(e);
        }
        let found = out.key.nr_items as usize;
        if found == 0 {
            return Ok(());
        }
        // SAFETY: `words` is initialised (zeroed, then written by the kernel) and u8 has no
        // alignment or validity requirements; the slice borrows `words` immutably.
        let bytes: &[u8] =
            unsafe { std::slice::from_raw_parts(words.as_ptr() as *const u8, words.len() * 8) };
        let items = &bytes[SEARCH_ARGS_BYTES..SEARCH_ARGS_BYTES + buf_bytes];
        let mut at = 0usize;
        let mut last = None;
        for _ in 0..found {
            let Some(h) = items.get(at..at + SEARCH_HEADER_BYTES) else {
                return Err(Errno::IO);
            };
            let u64_at = |i: usize| u64::from_ne_bytes(h[i..i + 8].try_into().expect("8 bytes"));
            let u32_at = |i: usize| u32::from_ne_bytes(h[i..i + 4].try_into().expect("4 bytes"));
            let leaf_transid = u64_at(0);
            let key = Key {
                objectid: u64_at(8),
                offset: u64_at(16),
                kind: u32_at(24).min(u8::MAX as u32) as u8,
            };
            let len = u32_at(28) as usize;
            let start = at + SEARCH_HEADER_BYTES;
            let Some(data) = items.get(start..start + len) else {
                return Err(Errno::IO);
            };
            each(&Item {
                key,
                leaf_transid,
                data,
            });
            at = start + len;
            last = Some(key);
        }
        match last.and_then(Key::next) {
            Some(k) if k <= max => from = k,
            _ => return Ok(()),
        }
    }
}
