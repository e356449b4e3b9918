//! The small interface the filesystem needs from a remote site. The FTP pool
//! implements it for real mounts; [`super::memstore::MemStore`] for fast unit tests.
//! Paths are absolute remote paths (`/dir/name`).

use super::error::StoreResult as Result;
use crate::ftp::RemoteEntry;
use std::io::BufRead;
use std::time::SystemTime;

pub trait RemoteStore: Send + Sync + 'static {
    /// The entries of a directory (never `.` or `..`).
    fn list(&self, dir: &str) -> Result<Vec<RemoteEntry>>;

    /// The entries of `dir` handed to `sink` as they arrive; an error after some
    /// of them means the listing is incomplete.
    fn list_each(&self, dir: &str, sink: &mut dyn FnMut(RemoteEntry)) -> Result<()> {
        self.list(dir)?.into_iter().for_each(sink);
        Ok(())
    }

    /// Streams a file from `offset` into `sink` until the end of the file or until
    /// `sink` returns false (the transfer is then aborted).
    fn read_from(&self, path: &str, offset: u64, sink: &mut dyn FnMut(&[u8]) -> bool)
        -> Result<()>;

    /// Stores `data` as the whole content of `path` (replacing it); returns how
    /// many bytes were sent. A `BufRead`, so that the implementation sends the
    /// source's own buffers instead of copying them.
    fn write_file(&self, path: &str, data: &mut dyn BufRead) -> Result<u64>;

    /// The size of a file on the server (SIZE).
    fn size(&self, _path: &str) -> Result<u64> {
        Err(super::error::StoreError::refused(
            super::error::Refusal::NotImplemented,
            "SIZE is not available",
        ))
    }

    /// Continues an interrupted upload: `path` holds at least `offset` bytes of
    /// it; `data` (the bytes from `offset` on) is stored from there: `REST offset`
    /// and `STOR` where the server announces REST STREAM, else `APPE` when the
    /// file holds exactly `offset` bytes, if `append` allows it (see `uploader.rs`:
    /// never to resume a transfer that was itself an APPE). Returns how many bytes
    /// of `data` were sent.
    fn resume_file(
        &self,
        _path: &str,
        _offset: u64,
        _data: &mut dyn BufRead,
        _append: bool,
    ) -> Result<u64> {
        Err(super::error::StoreError::refused(
            super::error::Refusal::NotImplemented,
            "resuming an upload is not available",
        ))
    }

    fn delete(&self, path: &str) -> Result<()>;
    fn mkdir(&self, path: &str) -> Result<()>;
    fn rmdir(&self, path: &str) -> Result<()>;
    /// Renames `from` to `to`, replacing a file at `to` where the server allows it.
    fn rename(&self, from: &str, to: &str) -> Result<()>;
    fn chmod(&self, path: &str, mode: u32) -> Result<()>;
    fn set_mtime(&self, path: &str, mtime: SystemTime) -> Result<()>;

    /// Whether the server can be given `name` (a new name: create, mkdir, rename
    /// target); refused with `EILSEQ` where its charset (`encoding=`) cannot
    /// express it, before anything is written.
    fn check_name(&self, _name: &str) -> Result<()> {
        Ok(())
    }

    /// True when an operation waits for a connection: a stalled read stream should
    /// give its connection back (it restarts with REST when read again).
    fn is_contended(&self) -> bool {
        false
    }
}

pub use crate::ftp::entry::join;

/// Splits `/a/b/c` into (`/a/b`, `c`); the root has no parent.
pub fn split(path: &str) -> Option<(&str, &str)> {
    let i = path.rfind('/')?;
    let name = &path[i + 1..];
    if name.is_empty() {
        return None;
    }
    Some((if i == 0 { "/" } else { &path[..i] }, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(join("/a", "b c"), "/a/b c");
        assert_eq!(split("/a/b"), Some(("/a", "b")));
        assert_eq!(split("/a"), Some(("/", "a")));
        assert_eq!(split("/"), None);
    }
}
