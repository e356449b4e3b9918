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
    /// Connections one sequential read of a large file may use (`segments=`;
    /// 1: one stream), see `segments.rs`.
    pub segments: usize,
    /// `spool_window=`: a sequential writer's spool keeps at most about this many
    /// bytes (the not-yet-acknowledged tail; see `uploader.rs`); None: every byte,
    /// as for any other written file.
    pub spool_window: Option<u64>,
}

/// Default `spool_window=`: 64 MiB.
pub const DEFAULT_SPOOL_WINDOW: u64 = 64 << 20;
/// Smallest window: all of it but 4 MiB is kept as the bytes that can be in
/// flight (socket buffers, TLS, a proxy) at any time.
pub const MIN_SPOOL_WINDOW: u64 = 16 << 20;

/// Parses `spool_window=`: a size (`256M`, `1G`, `65536`, suffixes K M G T,
/// powers of 1024), `0` or `all` (spool every byte).
pub fn parse_spool_window(v: &str) -> Option<Option<u64>> {
    let v = v.trim();
    if v.eq_ignore_ascii_case("all") {
        return Some(None);
    }
    let (num, mult) = match v.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return None,
            };
            (&v[..i], m)
        }
        _ => (v, 1),
    };
    let n: u64 = num.parse().ok()?;
    let bytes = n.checked_mul(mult)?;
    Some((bytes != 0).then(|| bytes.max(MIN_SPOOL_WINDOW)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_window_values() {
        assert_eq!(parse_spool_window("256M"), Some(Some(256 << 20)));
        assert_eq!(parse_spool_window("1g"), Some(Some(1 << 30)));
        assert_eq!(parse_spool_window("all"), Some(None));
        assert_eq!(parse_spool_window("0"), Some(None));
        assert_eq!(parse_spool_window("1K"), Some(Some(MIN_SPOOL_WINDOW)));
        assert_eq!(parse_spool_window("12x"), None);
        assert_eq!(parse_spool_window(""), None);
        assert_eq!(parse_spool_window("99999999999T"), None);
    }
}
