//! The structural rules of a stream (docs/stream.md, end of section 2): what may follow what,
//! which ids may be used, where file data may go. Bounded: one byte per directory id, capped.

use super::record::Record;

/// Directory ids a stream may make (each DIR costs at least 79 stream bytes; this is 64 MiB of
/// state for 5 GiB of directory records, and no tree that fits a filesystem needs more).
pub const DIRS_MAX: u64 = 1 << 26;

/// Directories open (made, not yet ended) at once: a sender walking depth first has as many as
/// the tree is deep; a receiver holds a descriptor for each.
pub const OPEN_DIRS_MAX: usize = 4096;

/// The holding directory of an incremental stream (docs/stream.md, section 2.3): a RENAME
/// takes an entry there and brings it back to its new place. Always open in an incremental
/// stream, and usable by RENAME only.
pub const HOLD_DIR: u64 = u64::MAX;

const OPEN: u8 = 1;
const ENDED: u8 = 2;

struct OpenFile {
    size: u64,
    /// Data must come at or after this offset (ascending, no overlap).
    next: u64,
    data_seen: bool,
}

/// Tracks one stream's structure. [`Rules::check`] each decoded record in order.
pub struct Rules {
    incremental: bool,
    /// State of each directory id (index = id; 0 is the root, open from the start).
    dirs: Vec<u8>,
    file: Option<OpenFile>,
    /// Link ids made so far (FILE records with a non-zero link count up from 1).
    links: u64,
    /// XATTR may follow: the previous record was an entry record or an XATTR (and, for a
    /// file, no DATA yet).
    xattr_ok: bool,
    /// The root's DIR_END came: only CHECKPOINT and END may follow.
    root_done: bool,
    /// Directories open now, the root included.
    open: usize,
}

impl Rules {
    pub fn new(incremental: bool) -> Rules {
        Rules {
            incremental,
            dirs: vec![OPEN],
            file: None,
            links: 0,
            // XATTRs at the very start belong to the root.
            xattr_ok: true,
            root_done: false,
            open: 1,
        }
    }

    fn open_dir(&self, id: u64, what: &str) -> Result<(), String> {
        match self.dirs.get(id as usize) {
            Some(&OPEN) => Ok(()),
            Some(_) => Err(format!("{what}: directory {id} was already ended")),
            None => Err(format!("{what}: directory {id} was never made")),
        }
    }

    /// A DATA record of `len` bytes at `offset` (what [`Rules::check`] does for DATA, without
    /// the record).
    pub fn data(&mut self, offset: u64, len: u64) -> Result<(), String> {
        if self.root_done {
            return Err("DATA after the root directory was ended".into());
        }
        let Some(f) = &mut self.file else {
            return Err("DATA outside a file".into());
        };
        let end = offset.checked_add(len).ok_or("DATA offset + length overflows")?;
        if offset < f.next {
            return Err(format!(
                "DATA at {offset} overlaps or precedes earlier data (next free offset {})",
                f.next
            ));
        }
        if end > f.size {
            return Err(format!("DATA ends at {end}, past the file's size {}", f.size));
        }
        f.next = end;
        f.data_seen = true;
        self.xattr_ok = false;
        Ok(())
    }

    /// A FILE, SYMLINK or SPECIAL naming its inode with link id `link` (0: none): ids count
    /// up from 1 in order of appearance.
    fn new_link(&mut self, link: u64) -> Result<(), String> {
        if link != 0 {
            if link != self.links + 1 {
                return Err(format!("link id {link} where {} was due", self.links + 1));
            }
            self.links = link;
        }
        Ok(())
    }

    pub fn check(&mut self, r: &Record) -> Result<(), String> {
        let t = r.record_type().name();
        let entry = matches!(
            r,
            Record::Dir { .. }
                | Record::File { .. }
                | Record::Symlink { .. }
                | Record::Special { .. }
                | Record::Link { .. }
                | Record::Attrs { .. }
                | Record::Rename { .. }
                | Record::Unlink { .. }
                | Record::DirEnd { .. }
                | Record::Skipped { .. }
        );
        if self.root_done && !matches!(r, Record::Checkpoint { .. } | Record::End { .. }) {
            return Err(format!("{t} after the root directory was ended"));
        }
        if self.file.is_some()
            && !matches!(
                r,
                Record::Data { .. }
                    | Record::FileEnd { .. }
                    | Record::Xattr { .. }
                    | Record::Checkpoint { .. }
            )
        {
            return Err(format!("{t} while a file is open (FILE_END missing)"));
        }
        if matches!(
            r,
            Record::Attrs { .. } | Record::Rename { .. } | Record::Unlink { .. }
        ) && !self.incremental
        {
            return Err(format!("{t} in a stream that is not incremental"));
        }
        let mut xattr_next = entry
            && !matches!(
                r,
                Record::Rename { .. }
                    | Record::Unlink { .. }
                    | Record::DirEnd { .. }
                    | Record::Link { .. }
                    | Record::Skipped { .. }
            );
        match r {
            Record::Estimate { .. } => xattr_next = self.xattr_ok,
            Record::Dir { parent, .. } => {
                self.open_dir(*parent, t)?;
                if self.dirs.len() as u64 >= DIRS_MAX {
                    return Err(format!("more than {DIRS_MAX} directories"));
                }
                if self.open >= OPEN_DIRS_MAX {
                    return Err(format!("more than {OPEN_DIRS_MAX} directories open at once"));
                }
                self.dirs.push(OPEN);
                self.open += 1;
            }
            Record::DirEnd { dir, .. } => {
                self.open_dir(*dir, t)?;
                self.dirs[*dir as usize] = ENDED;
                self.open -= 1;
                self.root_done = *dir == 0;
            }
            Record::File {
                parent, size, link, ..
            } => {
                self.open_dir(*parent, t)?;
                self.new_link(*link)?;
                self.file = Some(OpenFile {
                    size: *size,
                    next: 0,
                    data_seen: false,
                });
            }
            Record::Data { offset, data } => self.data(*offset, data.len() as u64)?,
            Record::FileEnd { .. } => {
                if self.file.take().is_none() {
                    return Err("FILE_END without a FILE".into());
                }
            }
            Record::Symlink { parent, link, .. } | Record::Special { parent, link, .. } => {
                self.open_dir(*parent, t)?;
                self.new_link(*link)?;
            }
            Record::Attrs { parent, .. } => {
                self.open_dir(*parent, t)?;
            }
            Record::Link { parent, link, .. } => {
                self.open_dir(*parent, t)?;
                if *link == 0 || *link > self.links {
                    return Err(format!("LINK to link id {link}, which no finished file has"));
                }
            }
            Record::Xattr { .. } => {
                let after_data = self.file.as_ref().is_some_and(|f| f.data_seen);
                if !self.xattr_ok || after_data {
                    return Err("XATTR not right after the entry it belongs to".into());
                }
                xattr_next = true;
            }
            Record::Rename { from_dir, to_dir, .. } => {
                // Exactly one side is the holding directory.
                match (*from_dir == HOLD_DIR, *to_dir == HOLD_DIR) {
                    (true, false) => self.open_dir(*to_dir, t)?,
                    (false, true) => self.open_dir(*from_dir, t)?,
                    _ => return Err("RENAME must take an entry to or from the holding directory".into()),
                }
            }
            Record::Unlink { parent, .. } | Record::Skipped { parent, .. } => self.open_dir(*parent, t)?,
            // Verified against the chain by the decoder. It ends the entry before it: no XATTR
            // follows a CHECKPOINT (a receiver publishes that entry there).
            Record::Checkpoint { .. } => xattr_next = false,
            Record::End { .. } => {
                if let Some(open) = self.dirs.iter().position(|s| *s == OPEN) {
                    return Err(format!("END while directory {open} was never ended"));
                }
            }
        }
        self.xattr_ok = xattr_next && !matches!(r, Record::Data { .. } | Record::FileEnd { .. });
        Ok(())
    }
}
