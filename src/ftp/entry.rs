//! One entry of a remote directory listing, as the FTP layer reports it.
//! Produced by the MLSD/MLST and LIST parsers; consumed by the remote store.

use std::time::SystemTime;

/// Joins a remote directory path and a name in it.
pub fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// What kind of object a listing line describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    /// A symbolic link; the target when the listing gave one (`name -> target`).
    Symlink(Option<String>),
}

/// A listed remote object. Names are validated: never empty, `.`, `..`, and never
/// contain `/`, NUL, CR or LF (see [`is_valid_name`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteEntry {
    pub name: String,
    pub kind: EntryKind,
    pub size: u64,
    /// Modification time (UTC) when the listing gave one.
    pub mtime: Option<SystemTime>,
    /// Permission bits (0o7777 at most) when the listing gave them.
    pub mode: Option<u32>,
}

#[cfg(test)]
impl RemoteEntry {
    /// A one-byte file without time or mode (unit tests).
    pub fn test_file(name: &str) -> Self {
        RemoteEntry {
            name: name.into(),
            kind: EntryKind::File,
            size: 1,
            mtime: None,
            mode: None,
        }
    }
}

/// Longest file name accepted from a server (bytes), as Linux's NAME_MAX.
pub const MAX_NAME_LEN: usize = 255;

/// True when `name` is acceptable as one path component coming from a server:
/// not empty, not `.` or `..`, no `/`, NUL, CR or LF (a name that cannot be sent
/// back in a command), at most [`MAX_NAME_LEN`] bytes.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && crate::names::byte_len(name) <= MAX_NAME_LEN
        && !name.contains(['/', '\0', '\r', '\n'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_hostile_names() {
        for bad in ["", ".", "..", "a/b", "/", "a\0b", "cr\rname", "lf\nname"] {
            assert!(!is_valid_name(bad), "{bad:?} accepted");
        }
        assert!(!is_valid_name(&"x".repeat(256)));
        for good in ["a", "a b", "...", ".hidden", "x".repeat(255).as_str()] {
            assert!(is_valid_name(good), "{good:?} rejected");
        }
    }
}
