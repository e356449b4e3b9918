//! The filesystem's logic, free of FUSE types so it can be unit-tested over an
//! in-memory store. The fuser adapter (`fuse_adapter.rs`) only translates.
//!
//! Metadata comes from directory listings (see `dircache.rs`; a directory being read
//! streams in through a `DirStream`, see `dirstream.rs`); reads stream through
//! a per-handle [`Prefetcher`]; writes go to a per-inode [`Spool`] uploaded on
//! flush/fsync/release (see `uploader.rs`). SEMANTICS.md states the guarantees.
//!
//! This file holds the state shared by every operation; the operations are in
//! `filesystem/`: `listings.rs` (lookups and readdir), `attributes.rs` (stat,
//! chmod, utimens, truncate), `namespace.rs` (mkdir, unlink, rmdir, rename),
//! `files.rs` (open, read, write) and `uploads.rs` (flush, fsync, close, shutdown).

use super::dircache::{DirCache, Entries};
use super::dirstream::DirStream;
use super::error::StoreError;
use super::inodes::{Inodes, ROOT_INO};
use super::journal::{self, Base, Journal, Record};
use super::listing_prefetcher::ListingPrefetcher;
use super::open_file::{FileState, OpenFile};
use super::prefetcher::Prefetcher;
use super::spool::Spool;
use super::store::{join, split, RemoteStore};
use super::uploader::{self, StreamUpload, Target};
use crate::ftp::entry::is_valid_name;
use crate::ftp::{EntryKind, RemoteEntry};
use crate::sync::lock;
use lru::LruCache;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

pub use super::error::{Errno, FsResult};

pub use super::attr::{Attr, FileType, SetTime};
pub use super::config::FsConfig;

/// What the mount knows of the server's resuming of uploads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResumeProbe {
    Unknown,
    Running,
    Resumes,
    Cannot,
}

struct FileHandle {
    ino: u64,
    append: bool,
    writable: bool,
    reader: Mutex<Option<Prefetcher>>,
}

/// One entry of a directory as `readdir` hands it out (for tests; the adapter
/// takes them one by one from [`FtpsFs::read_dir`]).
#[cfg(test)]
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: String,
    pub attr: Attr,
}

/// Listings in flight, by directory path (see `dirstream.rs`).
type InFlight = Arc<Mutex<HashMap<String, Arc<DirStream>>>>;

pub struct FtpsFs {
    store: Arc<dyn RemoteStore>,
    cfg: FsConfig,
    inodes: Inodes,
    cache: Arc<DirCache>,
    prefetch: Option<Arc<ListingPrefetcher>>,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    handles: Mutex<HashMap<u64, Arc<FileHandle>>>,
    /// Open directory handles: the directory's inode and its stream.
    dirs: Mutex<HashMap<u64, (u64, Arc<DirStream>)>>,
    listing_now: InFlight,
    next_fh: AtomicU64,
    /// None when the journal could not be opened (logged at mount).
    journal: Option<Journal>,
    /// The server refused a rename of an upload: replace files in place.
    renames_refused: AtomicBool,
    /// spool_dir refused to punch holes (logged once): spools keep every byte.
    punch_refused: AtomicBool,
    /// Whether the server resumes an upload (REST + STOR, or APPE): learnt once
    /// by a probe before a bounded stream first drops bytes (see `files.rs`).
    /// Until it says yes, spools keep every byte.
    resume_probe: Arc<Mutex<ResumeProbe>>,
    /// Signalled when the probe has its answer (writers wait on it at the window).
    resume_probe_done: Arc<std::sync::Condvar>,
    /// A directory time the server could not set was skipped (logged once).
    dir_times_skipped: AtomicBool,
    /// The server has no SITE CHMOD (a new directory keeps the server's mode).
    no_chmod: AtomicBool,
    /// The root's mtime: the mount's start, then its own last change in the root
    /// (the root has no listing entry of its own to carry one).
    root_mtime: Mutex<SystemTime>,
    /// Change times (ctime) the mount gave entries by chmod, rename or writing,
    /// by path; the server keeps none, so without one ctime is the mtime.
    ctimes: Mutex<LruCache<String, SystemTime>>,
}

/// Most change times remembered (see `FtpsFs::ctimes`).
const CTIMES_KEPT: usize = 4096;

fn name_ok(name: &str) -> FsResult<()> {
    if name.contains(['\r', '\n']) {
        return Err(Errno(libc::EINVAL));
    }
    if crate::names::byte_len(name) > crate::ftp::entry::MAX_NAME_LEN {
        return Err(Errno(libc::ENAMETOOLONG));
    }
    if !is_valid_name(name) {
        return Err(Errno(libc::EINVAL));
    }
    Ok(())
}

impl FtpsFs {
    pub fn new(store: Arc<dyn RemoteStore>, cfg: FsConfig) -> Self {
        let cache = Arc::new(DirCache::new(cfg.cache_entries, cfg.cache_timeout));
        let prefetch = (cfg.prefetch_workers > 0).then(|| {
            Arc::new(ListingPrefetcher::new(
                store.clone(),
                cache.clone(),
                cfg.prefetch_workers,
            ))
        });
        let journal = match Journal::open(&cfg.spool_dir, &cfg.site) {
            Ok(j) => Some(j),
            Err(e) => {
                log::error!(
                    "write journal in {}: {e}; a crash may leave files the next mount cannot clean up",
                    cfg.spool_dir.display()
                );
                None
            }
        };
        FtpsFs {
            journal,
            renames_refused: AtomicBool::new(false),
            punch_refused: AtomicBool::new(false),
            resume_probe: Arc::new(Mutex::new(ResumeProbe::Unknown)),
            resume_probe_done: Arc::new(std::sync::Condvar::new()),
            dir_times_skipped: AtomicBool::new(false),
            no_chmod: AtomicBool::new(false),
            root_mtime: Mutex::new(SystemTime::now()),
            ctimes: Mutex::new(LruCache::new(
                NonZeroUsize::new(CTIMES_KEPT).unwrap_or(NonZeroUsize::MIN),
            )),
            inodes: Inodes::new(&cfg.root),
            cache,
            prefetch,
            store,
            cfg,
            files: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            listing_now: Arc::default(),
            next_fh: AtomicU64::new(1),
        }
    }

    pub fn config(&self) -> &FsConfig {
        &self.cfg
    }

    /// A name about to be created on the server: valid, and one the server's
    /// charset can express.
    pub(super) fn new_name_ok(&self, name: &str) -> FsResult<()> {
        name_ok(name)?;
        Ok(self.store.check_name(name)?)
    }

    pub(super) fn writable(&self) -> FsResult<()> {
        if self.cfg.read_only {
            Err(Errno(libc::EROFS))
        } else {
            Ok(())
        }
    }

    pub(super) fn path_of(&self, ino: u64) -> FsResult<String> {
        match self.inodes.path(ino) {
            Some((p, false)) => Ok(p),
            _ => Err(Errno(libc::ENOENT)),
        }
    }

    /// Looks `name` up in `parent`; counts a kernel reference on success.
    pub fn lookup(&self, parent: u64, name: &str) -> FsResult<Attr> {
        name_ok(name).map_err(|e| {
            if e.0 == libc::EINVAL {
                Errno(libc::ENOENT)
            } else {
                e
            }
        })?;
        let path = join(&self.path_of(parent)?, name);
        let e = self.entry(&path)?;
        let ino = self.inodes.get_or_create(&path, true);
        Ok(self.make_attr(ino, &e))
    }

    pub fn forget(&self, ino: u64, n: u64) {
        self.inodes.forget(ino, n);
    }

    /// statfs: FTP has no way to ask; report a large, mostly free filesystem.
    pub fn statfs(&self) -> (u64, u64, u64, u64, u64, u32, u32) {
        let bsize = 4096u32;
        let blocks = (1u64 << 44) / u64::from(bsize); // 16 TiB
        let files = 1u64 << 32;
        (blocks, blocks, blocks, files, files, bsize, 255)
    }
}

mod attributes;
mod files;
mod listings;
mod namespace;
mod uploads;

#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod posix_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod window_tests;
