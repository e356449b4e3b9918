//! The mount-wide settings of the filesystem logic (from the mount options).

use std::path::PathBuf;
use std::time::Duration;

/// Mount-wide settings of the filesystem logic.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// Remote directory shown as the mount's root.
    pub root: String,
    pub uid: u32,
    pub gid: u32,
    /// Bits removed from every mode shown.
    pub umask: u32,
    pub read_only: bool,
    /// How long listings (and kernel attributes) are trusted.
    pub cache_timeout: Duration,
    /// Most directory listings cached.
    pub cache_entries: usize,
    pub spool_dir: PathBuf,
    /// Upload straight to the final name instead of a temporary name + rename.
    pub inplace: bool,
    /// Threads listing subdirectories ahead of a tree walker (0: none).
    pub prefetch_workers: usize,
    /// The site (`user@host:port`) the write journal's records belong to.
    pub site: String,
    /// Each operation's deadline (`timeout=`): how long it may wait without
    /// progress (see `crate::deadline`).
    pub op_timeout: Duration,
    /// A directory time the server cannot set is an error (`EPERM`) instead of
    /// being skipped (logged once); see SEMANTICS.md.
    pub strict_dir_times: bool,
}
