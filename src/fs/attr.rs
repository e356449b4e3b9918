//! What `stat` shows of an entry, in the filesystem's own terms (the fuser
//! adapter converts it), and the time a utimens asks for.

use std::time::SystemTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileType {
    File,
    Dir,
    Symlink,
}

/// Attributes of a file as the kernel sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    pub kind: FileType,
    pub mtime: SystemTime,
    /// Last change of the entry itself (its data, mode or name); the server keeps
    /// no such time, so this is the mtime unless the mount changed it since.
    pub ctime: SystemTime,
    pub perm: u16,
    /// Links: 1 for a file (0 once unlinked while open), 2 + subdirectories for a
    /// directory whose listing is at hand (2 otherwise).
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
}

/// A new modification time asked for by utimens: a given time, or "now"
/// (`touch` without `-d`, `UTIME_NOW`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    Now,
    At(SystemTime),
}
