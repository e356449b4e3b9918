//! The filesystem's logic, free of FUSE types so it can be unit-tested over an
//! in-memory store. The fuser adapter (`fuse_adapter.rs`) only translates.
//!
//! Metadata comes from directory listings (see `dircache.rs`; a directory being read
//! streams in through a `DirStream`, see `dirstream.rs`); reads stream through
//! a per-handle [`Prefetcher`]; writes go to a per-inode [`Spool`] uploaded on
//! flush/fsync/release (see `uploader.rs`). SEMANTICS.md states the guarantees.

use super::dircache::{DirCache, Entries};
use super::dirstream::DirStream;
use super::inodes::{Inodes, ROOT_INO};
use super::journal::{self, Base, Journal, Record};
use super::listing_prefetcher::ListingPrefetcher;
use super::open_file::{FileState, OpenFile};
use super::prefetcher::Prefetcher;
use super::spool::Spool;
use super::store::{join, split, RemoteStore};
use super::uploader::{self, StreamUpload, Target};
use crate::error::FtpError;
use crate::ftp::entry::is_valid_name;
use crate::ftp::{EntryKind, RemoteEntry};
use lru::LruCache;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// Longest wait for a listing a prefetch worker has queued or is doing.
const PREFETCH_WAIT: Duration = Duration::from_secs(2);

/// An errno to return to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl From<FtpError> for Errno {
    fn from(e: FtpError) -> Self {
        log::debug!("remote error: {e}");
        Errno(e.errno())
    }
}

pub type FsResult<T> = std::result::Result<T, Errno>;

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
    /// A directory time the server could not set was skipped (logged once).
    dir_times_skipped: AtomicBool,
    /// The root's mtime: the mount's start, then its own last change in the root
    /// (the root has no listing entry of its own to carry one).
    root_mtime: Mutex<SystemTime>,
    /// Change times (ctime) the mount gave entries by chmod, rename or writing,
    /// by path; the server keeps none, so without one ctime is the mtime.
    ctimes: Mutex<LruCache<String, SystemTime>>,
}

/// Most change times remembered (see `FtpsFs::ctimes`).
const CTIMES_KEPT: usize = 4096;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// chmod/utimens of an object that exists: a server's refusal (not implemented,
/// or vsftpd's "550 Could not set file modification time" on a directory) means
/// "not permitted", not "no such file".
fn refused_as_eperm(e: FtpError) -> Errno {
    if e.reply_code().is_some() {
        log::debug!("refused: {e}");
        Errno(libc::EPERM)
    } else {
        Errno::from(e)
    }
}

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
            dir_times_skipped: AtomicBool::new(false),
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
    fn new_name_ok(&self, name: &str) -> FsResult<()> {
        name_ok(name)?;
        Ok(self.store.check_name(name)?)
    }

    fn writable(&self) -> FsResult<()> {
        if self.cfg.read_only {
            Err(Errno(libc::EROFS))
        } else {
            Ok(())
        }
    }

    fn path_of(&self, ino: u64) -> FsResult<String> {
        match self.inodes.path(ino) {
            Some((p, false)) => Ok(p),
            _ => Err(Errno(libc::ENOENT)),
        }
    }

    /// The listing of a directory, from the cache or the server.
    fn listing(&self, dir: &str) -> FsResult<Arc<Entries>> {
        if let Some(l) = self.cache.get(dir) {
            return Ok(l);
        }
        let streaming = lock(&self.listing_now).get(dir).cloned();
        if let Some(s) = streaming {
            // Being read by a program right now: wait for that listing.
            s.wait_done().map_err(Errno)?;
            if let Some(l) = self.cache.get(dir) {
                return Ok(l);
            }
        }
        self.wait_for_prefetch(dir);
        if let Some(l) = self.cache.get(dir) {
            return Ok(l);
        }
        Ok(self.cache.fill(dir, || self.store.list(dir))?)
    }

    /// A prefetch worker queued or listing `dir`: wait for it (bounded) rather
    /// than list it a second time.
    fn wait_for_prefetch(&self, dir: &str) {
        if let Some(p) = &self.prefetch {
            // Queued or being listed by a prefetch worker: wait for it (bounded by
            // the operation's deadline).
            p.wait_for(dir, crate::deadline::bound(PREFETCH_WAIT));
        }
    }

    fn entry(&self, path: &str) -> FsResult<RemoteEntry> {
        let (dir, name) = split(path).ok_or(Errno(libc::ENOENT))?;
        self.known(dir, name)?.ok_or(Errno(libc::ENOENT))
    }

    /// The entry `name` of `dir`: from its listing, or a file created through the
    /// mount that the server does not show yet (being written, or uploaded through
    /// a temporary name) and a fresh listing therefore lacks.
    fn known(&self, dir: &str, name: &str) -> FsResult<Option<RemoteEntry>> {
        if let Some(e) = self.listing(dir)?.get(name) {
            return Ok(Some(e));
        }
        Ok(self.local_entry(&join(dir, name)))
    }

    /// The entry of a file created through the mount and not on the server yet.
    fn local_entry(&self, path: &str) -> Option<RemoteEntry> {
        let ino = self.inodes.existing(path)?;
        let state = lock(&self.files).get(&ino).cloned()?;
        let st = state.lock();
        if !st.is_new {
            return None;
        }
        Some(RemoteEntry {
            name: split(path)?.1.to_string(),
            kind: EntryKind::File,
            size: st.spool.as_ref().map_or(0, Spool::len),
            mtime: Some(st.pending_mtime.unwrap_or_else(SystemTime::now)),
            mode: st.pending_mode,
        })
    }

    /// The files created through the mount in `dir` that are not on the server yet.
    fn local_entries_in(&self, dir: &str) -> Vec<RemoteEntry> {
        let inos: Vec<u64> = lock(&self.files).keys().copied().collect();
        inos.into_iter()
            .filter_map(|ino| match self.inodes.path(ino) {
                Some((p, false)) if split(&p).is_some_and(|(d, _)| d == dir) => {
                    self.local_entry(&p)
                }
                _ => None,
            })
            .collect()
    }

    fn make_attr(&self, ino: u64, e: &RemoteEntry) -> Attr {
        let (kind, default_mode) = match e.kind {
            EntryKind::Dir => (FileType::Dir, 0o755),
            EntryKind::File => (FileType::File, 0o644),
            EntryKind::Symlink(_) => (FileType::Symlink, 0o777),
        };
        let mtime = e.mtime.unwrap_or(SystemTime::UNIX_EPOCH);
        let mut attr = Attr {
            ino,
            size: e.size,
            kind,
            mtime,
            ctime: mtime,
            perm: ((e.mode.unwrap_or(default_mode) & !self.cfg.umask) & 0o7777) as u16,
            nlink: 1,
            uid: self.cfg.uid,
            gid: self.cfg.gid,
        };
        if let EntryKind::Symlink(Some(t)) = &e.kind {
            attr.size = t.len() as u64;
        }
        let path = self.inodes.path(ino).map(|(p, _)| p);
        if kind == FileType::Dir {
            attr.nlink = path.as_deref().map_or(2, |p| self.dir_links(p));
        }
        let state = lock(&self.files).get(&ino).cloned();
        if let Some(state) = state {
            let st = state.lock();
            if let Some(sp) = &st.spool {
                attr.size = sp.len();
            }
            if let Some(m) = st.pending_mtime.or(st.modified.filter(|_| st.dirty)) {
                attr.mtime = m;
            }
            if let Some(m) = st.pending_mode {
                attr.perm = ((m & !self.cfg.umask) & 0o7777) as u16;
            }
        }
        attr.ctime = attr.mtime;
        if let Some(c) = path.and_then(|p| lock(&self.ctimes).peek(&p).copied()) {
            attr.ctime = attr.ctime.max(c);
        }
        attr
    }

    /// 2 + the subdirectories of `dir` when its listing is cached, else 2 (what
    /// `find` and other tools take as "unknown").
    fn dir_links(&self, dir: &str) -> u32 {
        self.cache
            .get(dir)
            .map_or(2, |l| 2u32.saturating_add(l.dirs()))
    }

    /// The mount changed `path` itself (mode, name, data): its ctime is now.
    fn changed(&self, path: &str) {
        lock(&self.ctimes).put(path.to_string(), SystemTime::now());
    }

    /// The mount created, removed or renamed something in `dir`: its mtime and
    /// ctime are now, as on a local file system (the server's own time shows at
    /// the next listing).
    fn dir_changed(&self, dir: &str) {
        let now = SystemTime::now();
        if self.inodes.existing(dir) == Some(ROOT_INO) {
            *lock(&self.root_mtime) = now;
        } else {
            self.update_entry(dir, |e| e.mtime = Some(now));
        }
        self.changed(dir);
    }

    fn root_attr(&self) -> Attr {
        let mtime = *lock(&self.root_mtime);
        let root = self.path_of(ROOT_INO).unwrap_or_else(|_| "/".into());
        Attr {
            ino: ROOT_INO,
            size: 0,
            kind: FileType::Dir,
            mtime,
            ctime: mtime,
            perm: (0o755 & !self.cfg.umask) as u16,
            nlink: self.dir_links(&root),
            uid: self.cfg.uid,
            gid: self.cfg.gid,
        }
    }

    // ---- metadata ----------------------------------------------------------------

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

    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        if ino == ROOT_INO {
            return Ok(self.root_attr());
        }
        let (path, detached) = self.inodes.path(ino).ok_or(Errno(libc::ENOENT))?;
        if !detached {
            if let Ok(e) = self.entry(&path) {
                return Ok(self.make_attr(ino, &e));
            }
        }
        // Unlinked while open: describe it from its spool.
        let state = lock(&self.files).get(&ino).cloned();
        if let Some(state) = state {
            let st = state.lock();
            let mtime = st
                .pending_mtime
                .or(st.modified)
                .unwrap_or_else(SystemTime::now);
            return Ok(Attr {
                ino,
                size: st.spool.as_ref().map_or(0, Spool::len),
                kind: FileType::File,
                mtime,
                ctime: mtime,
                perm: (0o644 & !self.cfg.umask) as u16,
                nlink: 0,
                uid: self.cfg.uid,
                gid: self.cfg.gid,
            });
        }
        Err(Errno(libc::ENOENT))
    }

    pub fn readlink(&self, ino: u64) -> FsResult<String> {
        let e = self.entry(&self.path_of(ino)?)?;
        match e.kind {
            EntryKind::Symlink(Some(t)) => Ok(t),
            EntryKind::Symlink(None) => Err(Errno(libc::EIO)),
            _ => Err(Errno(libc::EINVAL)),
        }
    }

    /// Opens a directory for readdir; returns a handle. A cached listing is read
    /// from a copy; otherwise the listing starts streaming in (`dirstream.rs`).
    pub fn opendir(&self, ino: u64) -> FsResult<u64> {
        let path = self.path_of(ino)?;
        if ino != ROOT_INO && !matches!(self.entry(&path)?.kind, EntryKind::Dir) {
            return Err(Errno(libc::ENOTDIR));
        }
        let stream = self.dir_stream(&path)?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.dirs).insert(fh, (ino, stream));
        Ok(fh)
    }

    fn dir_stream(&self, path: &str) -> FsResult<Arc<DirStream>> {
        let cached = self.cache.get(path).or_else(|| {
            self.wait_for_prefetch(path);
            self.cache.get(path)
        });
        let local = self.local_entries_in(path);
        if let Some(mut l) = cached {
            queue_subdirs(self.prefetch.as_deref(), path, &l);
            if local.iter().any(|e| !l.contains_key(&e.name)) {
                let shown = Arc::make_mut(&mut l);
                for e in local {
                    if !shown.contains_key(&e.name) {
                        shown.insert(e.name.clone(), e);
                    }
                }
            }
            return Ok(DirStream::complete(l));
        }
        let mut now = lock(&self.listing_now);
        if let Some(s) = now.get(path) {
            return Ok(s.clone());
        }
        let stream = DirStream::filling();
        now.insert(path.to_string(), stream.clone());
        drop(now);
        let job = ListingJob {
            store: self.store.clone(),
            cache: self.cache.clone(),
            prefetch: self.prefetch.clone(),
            listing_now: self.listing_now.clone(),
            dir: path.to_string(),
            stream: stream.clone(),
            local,
        };
        let spawned = std::thread::Builder::new()
            .name("ftpsfs-readdir".into())
            .spawn({
                let job = job.clone();
                move || job.run()
            });
        if spawned.is_err() {
            job.run(); // no thread to spare: list it here
        }
        Ok(stream)
    }

    /// Hands the entries of directory handle `fh` from position `index` on to
    /// `add(name, attr, next_offset)` until it returns true (the reply is full);
    /// waits for the listing when it has not got that far. `plus` (readdirplus)
    /// counts a lookup for each entry handed out, as the kernel then holds one.
    pub fn read_dir(
        &self,
        fh: u64,
        index: usize,
        plus: bool,
        mut add: impl FnMut(&str, &Attr, u64) -> bool,
    ) -> FsResult<()> {
        let (ino, stream) = lock(&self.dirs)
            .get(&fh)
            .cloned()
            .ok_or(Errno(libc::EBADF))?;
        let dir = self.path_of(ino)?;
        stream
            .read_from(index, |i, e| {
                let child = join(&dir, &e.name);
                let cino = if plus {
                    self.inodes.get_or_create(&child, false)
                } else {
                    // The kernel holds no inode for a plain readdir entry.
                    self.inodes.number_of(&child)
                };
                if add(&e.name, &self.make_attr(cino, e), (i + 1) as u64) {
                    return true;
                }
                if plus {
                    self.inodes.get_or_create(&child, true);
                }
                false
            })
            .map_err(Errno)
    }

    /// Every entry of directory handle `fh` (waits for the whole listing).
    #[cfg(test)]
    pub fn dir_entries(&self, fh: u64) -> FsResult<Vec<DirEntry>> {
        let mut all = Vec::new();
        loop {
            let before = all.len();
            self.read_dir(fh, before, false, |name, attr, _| {
                all.push(DirEntry {
                    name: name.to_string(),
                    attr: *attr,
                });
                false
            })?;
            if all.len() == before {
                return Ok(all);
            }
        }
    }

    pub fn releasedir(&self, fh: u64) {
        lock(&self.dirs).remove(&fh);
    }

    // ---- namespace ---------------------------------------------------------------

    /// mkdir(2); `mode` is the requested mode with the caller's umask applied.
    /// Servers create directories with their own mode (usually 0755): any other
    /// is set with SITE CHMOD where the server allows it.
    pub fn mkdir(&self, parent: u64, name: &str, mode: u32) -> FsResult<Attr> {
        self.writable()?;
        self.new_name_ok(name)?;
        let dir = self.path_of(parent)?;
        let path = join(&dir, name);
        if self.known(&dir, name)?.is_some() {
            return Err(Errno(libc::EEXIST));
        }
        self.store.mkdir(&path)?;
        let mode = mode & 0o7777;
        let mode = if mode == 0o755 {
            None
        } else {
            match self.store.chmod(&path, mode) {
                Ok(()) => Some(mode),
                Err(e) => {
                    log::debug!("mkdir {path}: mode {mode:o} not applied: {e}");
                    None
                }
            }
        };
        let e = RemoteEntry {
            name: name.to_string(),
            kind: EntryKind::Dir,
            size: 0,
            mtime: Some(SystemTime::now()),
            mode,
        };
        self.cache.edit(&dir, |l| {
            l.insert(name.to_string(), e.clone());
        });
        // A new directory is empty: no need to ask.
        self.cache.put(&path, Vec::new());
        self.dir_changed(&dir);
        let ino = self.inodes.get_or_create(&path, true);
        Ok(self.make_attr(ino, &e))
    }

    pub fn unlink(&self, parent: u64, name: &str) -> FsResult<()> {
        self.writable()?;
        let dir = self.path_of(parent)?;
        let path = join(&dir, name);
        let e = self.entry(&path)?;
        if e.kind == EntryKind::Dir {
            return Err(Errno(libc::EISDIR));
        }
        let ino = self.inodes.get_or_create(&path, false);
        let state = lock(&self.files).get(&ino).cloned();
        let never_uploaded = state.as_ref().is_some_and(|s| s.lock().is_new);
        if !never_uploaded {
            self.store.delete(&path)?;
        }
        if let Some(s) = state {
            let mut st = s.lock_idle()?;
            st.abandon_stream();
            st.dirty = false; // unlinked: nothing to upload any more
            st.is_new = false;
            st.record = None;
            drop(s.settle(st, self.store.as_ref()));
        }
        self.cache.edit(&dir, |l| {
            l.remove(name);
        });
        self.dir_changed(&dir);
        lock(&self.ctimes).pop(&path);
        self.inodes.detach(&path);
        Ok(())
    }

    pub fn rmdir(&self, parent: u64, name: &str) -> FsResult<()> {
        self.writable()?;
        let dir = self.path_of(parent)?;
        let path = join(&dir, name);
        let e = self.entry(&path)?;
        if e.kind != EntryKind::Dir {
            return Err(Errno(libc::ENOTDIR));
        }
        // Files created here and not uploaded yet are only known to the mount.
        if !self.local_entries_in(&path).is_empty() {
            return Err(Errno(libc::ENOTEMPTY));
        }
        // RMD first: a directory the mount may not read can still be removed.
        if let Err(refused) = self.store.rmdir(&path) {
            if refused.reply_code().is_none() {
                return Err(refused.into());
            }
            // Servers word "not empty" differently (vsftpd: "Remove directory
            // operation failed"): ask the directory itself.
            return match self.store.list(&path) {
                Ok(l) if !l.is_empty() => Err(Errno(libc::ENOTEMPTY)),
                _ => Err(refused.into()),
            };
        }
        self.cache.edit(&dir, |l| {
            l.remove(name);
        });
        self.cache.invalidate_tree(&path);
        self.dir_changed(&dir);
        self.inodes.detach(&path);
        Ok(())
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &str,
        newparent: u64,
        newname: &str,
        noreplace: bool,
    ) -> FsResult<()> {
        self.writable()?;
        self.new_name_ok(newname)?;
        let dir = self.path_of(parent)?;
        let newdir = self.path_of(newparent)?;
        let from = join(&dir, name);
        let to = join(&newdir, newname);
        if from == to {
            return Ok(());
        }
        // Data written but not uploaded goes up first, under the old name, so that
        // the entry moved below carries its real size.
        let ino = self.inodes.get_or_create(&from, false);
        self.upload_if_dirty(ino)?;
        let src = self.entry(&from)?;
        let target = self.listing(&newdir)?.get(newname);
        if let Some(t) = &target {
            if noreplace {
                return Err(Errno(libc::EEXIST));
            }
            match (&src.kind, &t.kind) {
                (EntryKind::Dir, EntryKind::Dir) if !self.store.list(&to)?.is_empty() => {
                    return Err(Errno(libc::ENOTEMPTY));
                }
                (EntryKind::Dir, EntryKind::Dir) => {}
                (EntryKind::Dir, _) => return Err(Errno(libc::ENOTDIR)),
                (_, EntryKind::Dir) => return Err(Errno(libc::EISDIR)),
                _ => {}
            }
        }
        if src.kind == EntryKind::Dir && to.starts_with(&format!("{from}/")) {
            return Err(Errno(libc::EINVAL));
        }
        if let Err(e) = self.store.rename(&from, &to) {
            let replaced = match &target {
                Some(t) if t.kind != EntryKind::Dir => self.rename_over_file(&from, &to, e),
                Some(_) => self
                    .store
                    .rmdir(&to)
                    .and_then(|_| self.store.rename(&from, &to)),
                None => Err(e),
            };
            replaced?;
        }
        let mut moved = src.clone();
        moved.name = newname.to_string();
        self.cache.edit(&dir, |l| {
            l.remove(name);
        });
        self.cache.edit(&newdir, |l| {
            l.insert(newname.to_string(), moved);
        });
        if src.kind == EntryKind::Dir {
            self.cache.invalidate_tree(&from);
            self.cache.invalidate_tree(&to);
        }
        self.inodes.rename(&from, &to, src.kind == EntryKind::Dir);
        self.dir_changed(&dir);
        if newdir != dir {
            self.dir_changed(&newdir);
        }
        lock(&self.ctimes).pop(&from);
        self.changed(&to);
        Ok(())
    }

    /// For servers that refuse to rename over an existing file: the file at `to`
    /// is first moved aside (never deleted before `from` has taken its name), then
    /// removed; if any step is refused, everything is put back as it was and the
    /// rename fails with the server's first refusal.
    fn rename_over_file(&self, from: &str, to: &str, first: FtpError) -> crate::error::Result<()> {
        let aside = uploader::temp_name(to);
        if self.store.rename(to, &aside).is_err() {
            return Err(first);
        }
        if let Err(e) = self.store.rename(from, to) {
            if let Err(back) = self.store.rename(&aside, to) {
                log::error!("rename {from} -> {to} failed ({e}) and {to} could not be put back from {aside}: {back}");
            }
            return Err(first);
        }
        if let Err(e) = self.store.delete(&aside) {
            log::warn!("rename {from} -> {to}: the replaced file is left as {aside}: {e}");
        }
        Ok(())
    }

    pub fn symlink(&self) -> FsResult<Attr> {
        // FTP has no command to create a symbolic link.
        Err(Errno(libc::EPERM))
    }

    // ---- attributes ----------------------------------------------------------------

    /// chmod / truncate / utimens. `size` with an open handle is applied to its spool.
    pub fn setattr(
        &self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        mtime: Option<SetTime>,
    ) -> FsResult<Attr> {
        if uid.is_some_and(|u| u != self.cfg.uid) || gid.is_some_and(|g| g != self.cfg.gid) {
            return Err(Errno(libc::EPERM));
        }
        if mode.is_some() || size.is_some() || mtime.is_some() {
            self.writable()?;
        }
        let path = self.path_of(ino)?;
        if let Some(size) = size {
            self.truncate(ino, &path, size)?;
        }
        let state = lock(&self.files).get(&ino).cloned();
        // While data is unsent, the change is recorded in the same critical section
        // that sees it unsent: the upload applies it (an upload ending in between
        // cannot drop it).
        let deferred = |apply: &dyn Fn(&mut FileState)| -> bool {
            match &state {
                Some(s) => {
                    let mut st = s.lock();
                    if st.dirty {
                        apply(&mut st);
                    }
                    st.dirty
                }
                None => false,
            }
        };
        if let Some(mode) = mode {
            if !deferred(&|st| st.pending_mode = Some(mode)) {
                self.store.chmod(&path, mode).map_err(refused_as_eperm)?;
                self.update_entry(&path, |e| e.mode = Some(mode & 0o7777));
            }
            self.changed(&path);
        }
        match mtime {
            // Unsent data: the upload gives the file its time ("now" needs none).
            Some(SetTime::Now) if deferred(&|st| st.pending_mtime = None) => {}
            Some(SetTime::At(t)) if deferred(&|st| st.pending_mtime = Some(t)) => {}
            Some(set) => self.set_mtime(ino, &path, set)?,
            None => {}
        }
        self.getattr(ino)
    }

    /// utimens on the server. Where the server cannot set the time (vsftpd and
    /// pyftpdlib for directories, some servers for anything): a directory's time
    /// is skipped (logged once; `EPERM` with `strict_dir_times`), so `rsync -a`
    /// and `tar x` finish cleanly; "now" on an entry whose time is already now
    /// (`touch` of a file just written) changes nothing the server would not
    /// show; anything else is `EPERM`. See SEMANTICS.md.
    fn set_mtime(&self, ino: u64, path: &str, set: SetTime) -> FsResult<()> {
        let t = match set {
            SetTime::Now => SystemTime::now(),
            SetTime::At(t) => t,
        };
        let refusal = match self.store.set_mtime(path, t) {
            Ok(()) => {
                if ino == ROOT_INO {
                    *lock(&self.root_mtime) = t;
                }
                self.update_entry(path, |e| e.mtime = Some(t));
                return Ok(());
            }
            Err(e) if e.reply_code().is_none() => return Err(e.into()),
            Err(e) => e,
        };
        let attr = self.getattr(ino)?;
        if attr.kind == FileType::Dir && !self.cfg.strict_dir_times {
            if !self.dir_times_skipped.swap(true, Ordering::Relaxed) {
                log::warn!(
                    "the server cannot set directory times ({refusal}); they are skipped \
                     for this mount (-o strict_dir_times makes them errors)"
                );
            }
            return Ok(());
        }
        let apart = t
            .duration_since(attr.mtime)
            .unwrap_or_else(|e| e.duration());
        let fresh = apart <= Duration::from_secs(2);
        if set == SetTime::Now && fresh {
            log::debug!("{path}: touch right after a change, time kept ({refusal})");
            return Ok(());
        }
        Err(refused_as_eperm(refusal))
    }

    fn update_entry(&self, path: &str, f: impl FnOnce(&mut RemoteEntry)) {
        if let Some((dir, name)) = split(path) {
            self.cache.edit(dir, |l| l.update(name, f));
        }
    }

    /// The cached entry of `path`, without asking the server.
    fn cached_entry(&self, path: &str) -> Option<RemoteEntry> {
        let (dir, name) = split(path)?;
        self.cache.get(dir)?.get(name)
    }

    fn truncate(&self, ino: u64, path: &str, size: u64) -> FsResult<()> {
        let existing = lock(&self.files).get(&ino).cloned();
        // Deferred to the next flush only when a writer holds a spool; a file open
        // just for reading is truncated on the server at once.
        let deferred = existing.filter(|s| {
            let st = s.lock();
            st.writers > 0 || st.spool.is_some() || st.dirty
        });
        match deferred {
            Some(state) => {
                let mut st = state.lock_idle()?;
                if let Some(e) = st.failed {
                    return Err(Errno(e));
                }
                if st.stream.as_ref().is_some_and(|s| s.pos() != size) {
                    st.abandon_stream();
                }
                let mut st = self.ensure_spool(&state, st, path, size == 0)?;
                let r = match st.spool.as_mut() {
                    Some(sp) => sp.set_len(size),
                    None => Ok(()),
                };
                let result = match r {
                    Err(e) => Err(self.spool_failed(&mut st, path, e)),
                    Ok(()) => {
                        self.mark_dirty(&mut st, path);
                        Ok(())
                    }
                };
                drop(state.settle(st, self.store.as_ref()));
                result
            }
            None => {
                // Not open: apply and upload now.
                let mut spool = if size == 0 {
                    Spool::new(&self.cfg.spool_dir)?
                } else {
                    Spool::fetch(&self.cfg.spool_dir, self.store.as_ref(), path)?
                };
                spool.set_len(size)?;
                let mut record = self.journal.as_ref().map(|j| {
                    j.record(
                        spool.path(),
                        path,
                        journal::base_of(self.cached_entry(path).as_ref()),
                    )
                });
                let len = spool.len();
                let mut open = || spool.reader();
                let uploaded = self.upload_spool(&mut open, len, path, false, record.as_mut());
                if let Err(e) = uploaded {
                    let kept = spool.keep();
                    log::error!(
                        "truncate of {path} failed ({e}); data kept in {}",
                        kept.display()
                    );
                    spool.discard();
                    if let Some(r) = record {
                        r.keep();
                    }
                    return Err(e.into());
                }
                self.update_entry(path, |e| {
                    e.size = size;
                    e.mtime = Some(SystemTime::now());
                });
                Ok(())
            }
        }
    }

    // ---- files -------------------------------------------------------------------

    /// Gives the file a spool if it has none: empty when truncating or new, else
    /// the server's content, downloaded with the file marked busy and its lock
    /// released (see `open_file.rs`).
    fn ensure_spool<'a>(
        &self,
        file: &'a OpenFile,
        mut st: MutexGuard<'a, FileState>,
        path: &str,
        truncating: bool,
    ) -> FsResult<MutexGuard<'a, FileState>> {
        if st.spool.is_some() {
            return Ok(st);
        }
        if truncating || st.is_new {
            st.spool = Some(Spool::new(&self.cfg.spool_dir)?);
            return Ok(st);
        }
        let (mut st, fetched) = file.unlocked(st, || {
            Spool::fetch(&self.cfg.spool_dir, self.store.as_ref(), path)
        });
        let fetched = fetched?;
        if st.spool.is_none() {
            st.spool = Some(fetched);
        } else {
            fetched.discard();
        }
        Ok(st)
    }

    /// The file holds data the server does not have yet: journal it (see
    /// `journal.rs`) unless already journaled.
    /// Also the data's modification time: now, as for a local write (a time set
    /// before it is superseded).
    fn mark_dirty(&self, st: &mut FileState, path: &str) {
        st.dirty = true;
        st.modified = Some(SystemTime::now());
        st.pending_mtime = None;
        if st.record.is_some() {
            return;
        }
        let (Some(j), Some(sp)) = (&self.journal, &st.spool) else {
            return;
        };
        let mut r = j.record(sp.path(), path, st.base);
        if let Err(e) = r.write(j, false) {
            log::warn!("journal record for {path}: {e}");
        }
        st.record = Some(r);
    }

    /// A local write to the spool failed: the program's data is incomplete, so
    /// none of it may reach the server. Frees the spool (it must not keep filling
    /// the disk), abandons any upload under way and remembers the error for every
    /// later write, fsync and close of the file. The server keeps its content.
    fn spool_failed(&self, st: &mut FileState, path: &str, e: FtpError) -> Errno {
        let errno = match e.errno() {
            0 => libc::EIO,
            n => n,
        };
        st.abandon_stream();
        let written = st.spool.as_ref().map_or(0, Spool::len);
        if let Some(sp) = st.spool.take() {
            sp.discard();
        }
        st.record = None;
        st.dirty = false;
        st.failed = Some(errno);
        log::error!(
            "writing {path}: the local spool failed ({e}); the {written} bytes written since the last \
             upload are dropped and the server keeps its previous content; close() and fsync() \
             report the error"
        );
        Errno(errno)
    }

    fn new_handle(&self, ino: u64, path: &str, size: u64, writable: bool, append: bool) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let reader = Prefetcher::new(self.store.clone(), path.to_string())
            .with_segments(size, self.cfg.segments);
        let h = FileHandle {
            ino,
            append,
            writable,
            reader: Mutex::new(Some(reader)),
        };
        lock(&self.handles).insert(fh, Arc::new(h));
        fh
    }

    fn state(&self, ino: u64) -> Arc<OpenFile> {
        lock(&self.files)
            .entry(ino)
            .or_insert_with(|| Arc::new(OpenFile::new()))
            .clone()
    }

    /// open(2) of an existing file. `flags` are the open flags.
    pub fn open(&self, ino: u64, flags: i32) -> FsResult<u64> {
        let acc = flags & libc::O_ACCMODE;
        let writable = acc == libc::O_WRONLY || acc == libc::O_RDWR;
        if writable {
            self.writable()?;
        }
        let path = self.path_of(ino)?;
        let entry = self.entry(&path)?;
        if entry.kind == EntryKind::Dir {
            return Err(Errno(libc::EISDIR));
        }
        let state = self.state(ino);
        {
            let mut st = state.lock();
            if st.handles == 0 && !st.dirty && !st.is_new {
                st.base = journal::base_of(Some(&entry));
            }
            st.handles += 1;
            if writable {
                st.writers += 1;
            }
        }
        if writable && flags & libc::O_TRUNC != 0 {
            let truncated = state.lock_idle().and_then(|st| {
                if let Some(e) = st.failed {
                    return Err(Errno(e));
                }
                let mut st = self.ensure_spool(&state, st, &path, true)?;
                st.abandon_stream();
                st.stream_tried = false;
                let r = st.spool.as_mut().map_or(Ok(()), |s| s.set_len(0));
                let r = match r {
                    Err(e) => Err(self.spool_failed(&mut st, &path, e)),
                    Ok(()) => {
                        self.mark_dirty(&mut st, &path);
                        Ok(())
                    }
                };
                drop(state.settle(st, self.store.as_ref()));
                r
            });
            if let Err(e) = truncated {
                let mut st = state.lock();
                st.handles -= 1;
                st.writers -= 1;
                return Err(e);
            }
        }
        Ok(self.new_handle(
            ino,
            &path,
            entry.size,
            writable,
            flags & libc::O_APPEND != 0,
        ))
    }

    /// create(2): a new empty file, uploaded at the latest when closed.
    pub fn create(&self, parent: u64, name: &str, mode: u32, flags: i32) -> FsResult<(Attr, u64)> {
        self.writable()?;
        self.new_name_ok(name)?;
        let dir = self.path_of(parent)?;
        let path = join(&dir, name);
        if let Some(existing) = self.known(&dir, name)? {
            if flags & libc::O_EXCL != 0 {
                return Err(Errno(libc::EEXIST));
            }
            if existing.kind == EntryKind::Dir {
                return Err(Errno(libc::EISDIR));
            }
            // O_CREAT on an existing file keeps its content unless O_TRUNC says otherwise.
            let ino = self.inodes.get_or_create(&path, true);
            let fh = self.open(ino, flags)?;
            return Ok((self.getattr(ino)?, fh));
        }
        let ino = self.inodes.get_or_create(&path, true);
        let state = self.state(ino);
        {
            let mut st = state.lock_idle()?;
            st.handles += 1;
            st.writers += 1;
            st.is_new = true;
            st.base = Base::Absent;
            if st.spool.is_none() {
                match Spool::new(&self.cfg.spool_dir) {
                    Ok(sp) => st.spool = Some(sp),
                    Err(e) => {
                        st.handles -= 1;
                        st.writers -= 1;
                        return Err(e.into());
                    }
                }
            }
            self.mark_dirty(&mut st, &path);
            let default = 0o666 & !self.cfg.umask;
            if mode & 0o7777 != default && mode & 0o7777 != 0o644 {
                st.pending_mode = Some(mode & 0o7777);
            }
        }
        let e = RemoteEntry {
            name: name.to_string(),
            kind: EntryKind::File,
            size: 0,
            mtime: Some(SystemTime::now()),
            mode: Some(mode & 0o7777),
        };
        self.cache.edit(&dir, |l| {
            l.insert(name.to_string(), e.clone());
        });
        self.dir_changed(&dir);
        let fh = self.new_handle(ino, &path, 0, true, flags & libc::O_APPEND != 0);
        Ok((self.make_attr(ino, &e), fh))
    }

    fn handle(&self, fh: u64) -> FsResult<Arc<FileHandle>> {
        lock(&self.handles)
            .get(&fh)
            .cloned()
            .ok_or(Errno(libc::EBADF))
    }

    pub fn read(&self, fh: u64, offset: u64, size: usize) -> FsResult<Vec<u8>> {
        let mut out = Vec::new();
        self.read_into(fh, offset, size, &mut out)?;
        Ok(out)
    }

    /// [`FtpsFs::read`] appending to `out`, a buffer the caller reuses (no
    /// allocation per read).
    pub fn read_into(&self, fh: u64, offset: u64, size: usize, out: &mut Vec<u8>) -> FsResult<()> {
        let h = self.handle(fh)?;
        let state = lock(&self.files).get(&h.ino).cloned();
        if let Some(state) = state {
            let has_spool = {
                let st = state.lock();
                if let Some(e) = st.failed {
                    return Err(Errno(e));
                }
                st.spool.is_some()
            };
            if has_spool {
                let mut st = state.lock_idle()?;
                if let Some(sp) = st.spool.as_mut() {
                    return Ok(sp.read_into(offset, size, out)?);
                }
            }
        }
        let mut reader = lock(&h.reader);
        match reader.as_mut() {
            Some(p) => Ok(p.read_into(offset, size, out)?),
            None => Err(Errno(libc::EBADF)),
        }
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<usize> {
        let h = self.handle(fh)?;
        if !h.writable {
            return Err(Errno(libc::EBADF));
        }
        let (path, _) = self.inodes.path(h.ino).ok_or(Errno(libc::ENOENT))?;
        let state = self.state(h.ino);
        let st = state.lock_idle()?;
        if let Some(e) = st.failed {
            return Err(Errno(e));
        }
        let mut st = self.ensure_spool(&state, st, &path, false)?;
        let sp = st.spool.as_mut().ok_or(Errno(libc::EIO))?;
        let off = if h.append { sp.len() } else { offset };
        let was_empty = sp.is_empty();
        if let Err(e) = sp.write_at(off, data) {
            let errno = self.spool_failed(&mut st, &path, e);
            drop(state.settle(st, self.store.as_ref()));
            return Err(errno);
        }
        self.mark_dirty(&mut st, &path);
        let st = self.stream_write(&state, st, &path, off, was_empty, data);
        drop(state.settle(st, self.store.as_ref()));
        Ok(data.len())
    }

    /// Feeds the streaming upload of a sequential writer (see `StreamUpload`); any
    /// other write pattern abandons it and the spool is uploaded at flush instead.
    /// The push, which waits while the network is behind, runs with the file busy
    /// and unlocked.
    fn stream_write<'a>(
        &self,
        file: &'a OpenFile,
        mut st: MutexGuard<'a, FileState>,
        path: &str,
        off: u64,
        was_empty: bool,
        data: &[u8],
    ) -> MutexGuard<'a, FileState> {
        if self.cfg.inplace {
            return st;
        }
        let sequential = st.stream.as_ref().map(|s| s.pos() == off);
        match sequential {
            Some(true) => {}
            Some(false) => {
                st.abandon_stream();
                return st;
            }
            None if off == 0 && was_empty && !st.stream_tried => {
                st.stream_tried = true;
                let target = self.target(st.is_new);
                if target == Target::InPlace {
                    return st;
                }
                let name = uploader::upload_name(path, target);
                // The journal knows the name before the server does.
                if let (Some(j), Some(r)) = (&self.journal, st.record.as_mut()) {
                    if let Err(e) = r.uploading(j, None, &name) {
                        log::warn!("journal record for {path}: {e}; not streaming it");
                        return st;
                    }
                }
                st.stream = StreamUpload::start(self.store.clone(), &name, self.cfg.op_timeout);
            }
            None => return st,
        }
        let Some(mut stream) = st.stream.take() else {
            return st;
        };
        let (mut st, pushed) = file.unlocked(st, || stream.push(data));
        st.stream = Some(stream);
        if !pushed {
            st.abandon_stream();
        }
        st
    }

    /// Where the upload of a file goes: see `uploader` (new files straight to
    /// their name, others through a temporary name unless `inplace` or the server
    /// refuses renames).
    fn target(&self, is_new: bool) -> Target {
        if self.cfg.inplace {
            Target::InPlace
        } else if is_new {
            // Saves the rename's round trip; a failed upload removes what it wrote,
            // and the journal record is made durable first (for a machine crash).
            Target::NewFile
        } else if self.renames_refused.load(Ordering::Relaxed) {
            Target::InPlace
        } else {
            Target::Temp
        }
    }

    /// Uploads `len` bytes from `source` as `path`, journaling each remote name
    /// before it is written. A refused rename (a server or account without rename
    /// permission) is learnt for the mount, logged once, and the upload goes in
    /// place.
    fn upload_spool(
        &self,
        source: &mut dyn FnMut() -> crate::error::Result<std::fs::File>,
        len: u64,
        path: &str,
        is_new: bool,
        mut record: Option<&mut Record>,
    ) -> crate::error::Result<()> {
        let mut target = self.target(is_new);
        loop {
            let mut before = |name: &str| -> crate::error::Result<()> {
                match (&self.journal, record.as_deref_mut()) {
                    (Some(j), Some(r)) => r
                        .uploading(j, Some(len), name)
                        .map_err(|e| FtpError::io("writing the journal", e)),
                    _ => Ok(()),
                }
            };
            let mut from = source()?;
            let r = uploader::upload_from(
                self.store.as_ref(),
                &mut from,
                len,
                path,
                target,
                &mut before,
            );
            match r {
                Err(e) if target == Target::Temp && uploader::is_rename_refusal(&e) => {
                    self.learn_renames_refused(path, &e);
                    target = Target::InPlace;
                }
                other => return other,
            }
        }
    }

    fn learn_renames_refused(&self, path: &str, e: &FtpError) {
        if !self.renames_refused.swap(true, Ordering::Relaxed) {
            log::warn!(
                "the server refused to rename an upload over {path} ({e}); files are now \
                 replaced in place for the rest of this mount (not atomic: see SEMANTICS.md)"
            );
        }
    }

    /// Uploads the file's spool if it holds unsent data. The network part runs
    /// with the file busy and unlocked; errors go back to the caller (close,
    /// fsync) and the spool is kept on disk.
    fn upload_if_dirty(&self, ino: u64) -> FsResult<()> {
        let state = lock(&self.files).get(&ino).cloned();
        let Some(state) = state else {
            return Ok(());
        };
        let st = state.lock_idle()?;
        let mut st = state.settle(st, self.store.as_ref());
        if let Some(e) = st.failed {
            return Err(Errno(e));
        }
        if !st.dirty {
            return Ok(());
        }
        let (path, detached) = self.inodes.path(ino).ok_or(Errno(libc::ENOENT))?;
        if detached {
            st.abandon_stream();
            st.dirty = false;
            st.record = None;
            drop(state.settle(st, self.store.as_ref()));
            return Ok(());
        }
        let mut st = self.ensure_spool(&state, st, &path, false)?;
        // Everything the upload needs, taken under the lock: the spool's bytes
        // (synced; read through a handle of their own), the stream, the record.
        let (len, spool_path) = match st.spool.as_mut().map(|sp| sp.sync().map(|()| sp.len())) {
            Some(Ok(len)) => (len, st.spool.as_ref().map(|sp| sp.path().to_path_buf())),
            Some(Err(e)) => {
                let errno = self.spool_failed(&mut st, &path, e);
                drop(state.settle(st, self.store.as_ref()));
                return Err(errno);
            }
            None => return Err(Errno(libc::EIO)),
        };
        let Some(spool_path) = spool_path else {
            return Err(Errno(libc::EIO));
        };
        let stream = st.stream.take();
        let mut record = st.record.take();
        let is_new = st.is_new;
        let (mut st, uploaded) = state.unlocked(st, || {
            let store = self.store.as_ref();
            if let Some(stream) = stream {
                // The program has finished these bytes: say so before the rename.
                if let (Some(j), Some(r)) = (&self.journal, record.as_mut()) {
                    let partial = r.entry().partial.clone().unwrap_or_else(|| path.clone());
                    if let Err(e) = r.uploading(j, Some(len), &partial) {
                        log::warn!("journal record for {path}: {e}");
                    }
                }
                let done = stream.finish(store, len).and_then(|name| {
                    if name == path {
                        Ok(())
                    } else {
                        uploader::commit(store, &name, &path)
                    }
                });
                match done {
                    Ok(()) => return Ok(()),
                    Err(e) if uploader::is_rename_refusal(&e) => {
                        self.learn_renames_refused(&path, &e)
                    }
                    Err(e) => {
                        log::warn!("streamed upload of {path} failed ({e}); uploading the spool")
                    }
                }
            }
            let mut open = || {
                std::fs::File::open(&spool_path)
                    .map_err(|e| FtpError::io("reading the spool file", e))
            };
            self.upload_spool(&mut open, len, &path, is_new, record.as_mut())
        });
        if let Err(e) = uploaded {
            st.record = record;
            let kept = st.spool.as_mut().map(Spool::keep);
            log::error!(
                "upload of {path} failed: {e}; the data is kept in {}",
                kept.map_or_else(|| "(no spool)".into(), |k| k.display().to_string())
            );
            return Err(e.into());
        }
        // The server holds the complete file: the record is done.
        drop(record);
        if let Some(sp) = st.spool.as_mut() {
            if sp.is_kept() {
                log::info!("upload of {path} succeeded on retry; its spool copy is released");
                sp.unkeep();
            }
        }
        st.dirty = false;
        st.is_new = false;
        st.stream_tried = false;
        let mode = st.pending_mode.take();
        let pending_mtime = st.pending_mtime.take();
        // chmod and utimens that waited for the upload: network work, unlocked.
        let (mut st, (mtime, result)) = state.unlocked(st, || {
            let mut mtime = SystemTime::now();
            let mut result = Ok(());
            if let Some(mode) = mode {
                if let Err(e) = self.store.chmod(&path, mode) {
                    log::warn!("chmod {path}: {e}");
                }
            }
            if let Some(t) = pending_mtime {
                match self.store.set_mtime(&path, t) {
                    Ok(()) => mtime = t,
                    Err(e) => {
                        log::warn!("setting mtime of {path}: {e}");
                        if !e.is_not_implemented() {
                            result = Err(Errno::from(e));
                        }
                    }
                }
            }
            (mtime, result)
        });
        st.base = Base::Present(
            len,
            mtime
                .duration_since(SystemTime::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs()),
        );
        drop(st);
        self.update_entry(&path, |e| {
            e.size = len;
            e.mtime = Some(mtime);
            if let Some(m) = mode {
                e.mode = Some(m);
            }
        });
        result
    }

    pub fn flush(&self, fh: u64) -> FsResult<()> {
        let h = self.handle(fh)?;
        if !h.writable {
            return Ok(());
        }
        self.upload_if_dirty(h.ino)
    }

    pub fn fsync(&self, fh: u64) -> FsResult<()> {
        let h = self.handle(fh)?;
        self.upload_if_dirty(h.ino)
    }

    /// Last close of a handle: uploads what is left, then frees the spool (kept on
    /// disk, with its journal record, if the upload failed).
    pub fn release(&self, fh: u64) -> FsResult<()> {
        let Some(h) = lock(&self.handles).remove(&fh) else {
            return Err(Errno(libc::EBADF));
        };
        drop(lock(&h.reader).take());
        let result = if h.writable {
            self.upload_if_dirty(h.ino)
        } else {
            Ok(())
        };
        let mut last = None;
        {
            // Under the map's lock (memory only), so that an open of the same file
            // either finds this state before it goes or makes a new one.
            let mut files = lock(&self.files);
            if let Some(state) = files.get(&h.ino).cloned() {
                let mut st = state.lock();
                st.handles = st.handles.saturating_sub(1);
                if h.writable {
                    st.writers = st.writers.saturating_sub(1);
                }
                if st.handles == 0 {
                    files.remove(&h.ino);
                    drop(st);
                    last = Some(state);
                }
            }
        }
        if let Some(state) = last {
            let mut st = match state.lock_idle() {
                Ok(st) => st,
                Err(_) => state.lock(),
            };
            st.abandon_stream();
            if (st.dirty || st.failed.is_some()) && st.is_new {
                // Never reached the server: do not keep showing it as an empty file.
                if let Some(((dir, name), _)) = self
                    .inodes
                    .path(h.ino)
                    .as_ref()
                    .map(|(p, d)| (split(p).unwrap_or(("/", "")), d))
                {
                    self.cache.edit(dir, |l| {
                        l.remove(name);
                    });
                }
            }
            self.keep_unsent(&mut st, "closing with unsaved data");
            drop(state.settle(st, self.store.as_ref()));
        }
        result
    }

    /// Frees the spool of a file whose last handle is gone; data the server does
    /// not have is kept on disk with its journal record (for the next mount).
    fn keep_unsent(&self, st: &mut FileState, why: &str) {
        let record = st.record.take();
        if let Some(mut sp) = st.spool.take() {
            if st.dirty {
                let kept = sp.keep();
                log::error!("{why}: kept in {}", kept.display());
                sp.discard();
                if let Some(r) = record {
                    r.keep();
                }
            } else {
                sp.discard();
            }
        }
    }

    /// Uploads everything still pending of files no program has open for
    /// writing (unmount). A file still open for writing is not uploaded: its
    /// writer has not finished; see [`FtpsFs::shutdown`].
    pub fn flush_all(&self) -> FsResult<()> {
        let states: Vec<(u64, Arc<OpenFile>)> = lock(&self.files)
            .iter()
            .map(|(i, s)| (*i, s.clone()))
            .collect();
        let mut result = Ok(());
        for (ino, state) in states {
            let open_for_writing = {
                let st = state.lock();
                st.writers > 0 && st.dirty
            };
            if open_for_writing {
                continue;
            }
            if let Err(e) = self.upload_if_dirty(ino) {
                result = Err(e);
            }
        }
        result
    }

    /// The daemon stops: uploads what programs have closed ([`FtpsFs::flush_all`]),
    /// then keeps, with their journal records, the spools of files still open for
    /// writing; nothing of them is uploaded (the next mount reports them).
    pub fn shutdown(&self) -> FsResult<()> {
        let result = self.flush_all();
        let states: Vec<(u64, Arc<OpenFile>)> = lock(&self.files)
            .iter()
            .map(|(i, s)| (*i, s.clone()))
            .collect();
        for (ino, state) in states {
            let mut st = match state.lock_idle() {
                Ok(st) => st,
                Err(_) => state.lock(),
            };
            if !st.dirty {
                continue;
            }
            st.abandon_stream();
            let path = self.inodes.path(ino).map(|(p, _)| p).unwrap_or_default();
            self.keep_unsent(
                &mut st,
                &format!(
                    "stopping while {path} is still open for writing: not uploaded (the server \
                     keeps its previous content); its data"
                ),
            );
            st.dirty = false;
            drop(state.settle(st, self.store.as_ref()));
        }
        result
    }

    /// Tests: the daemon dies here (kill -9): nothing is cleaned up, its locks go.
    #[cfg(test)]
    pub fn crash(mut self) {
        if let Some(j) = self.journal.as_mut() {
            j.drop_owner_lock();
        }
        let files: Vec<_> = lock(&self.files).values().cloned().collect();
        for f in files {
            let mut st = f.lock();
            st.forget_streams();
            if let Some(sp) = st.spool.take() {
                std::mem::forget(sp);
            }
            if let Some(r) = st.record.take() {
                r.keep();
            }
        }
        std::mem::forget(self);
    }

    /// Tests: the spool of an open file fails writes past `bytes` (a full disk).
    #[cfg(test)]
    pub fn limit_spool(&self, ino: u64, bytes: u64) {
        if let Some(f) = lock(&self.files).get(&ino) {
            if let Some(sp) = f.lock().spool.as_mut() {
                sp.capacity = Some(bytes);
            }
        }
    }

    /// statfs: FTP has no way to ask; report a large, mostly free filesystem.
    pub fn statfs(&self) -> (u64, u64, u64, u64, u64, u32, u32) {
        let bsize = 4096u32;
        let blocks = (1u64 << 44) / u64::from(bsize); // 16 TiB
        let files = 1u64 << 32;
        (blocks, blocks, blocks, files, files, bsize, 255)
    }
}

/// Queues the subdirectories among `entries` (of `dir`) for listing ahead.
fn queue_subdirs(prefetch: Option<&ListingPrefetcher>, dir: &str, entries: &Entries) {
    if let Some(p) = prefetch {
        p.queue((0..entries.len()).filter_map(|i| match entries.kind_at(i) {
            Some((name, EntryKind::Dir)) => Some(join(dir, name)),
            _ => None,
        }));
    }
}

/// The listing of a directory a program is reading, run on a thread of its own.
#[derive(Clone)]
struct ListingJob {
    store: Arc<dyn RemoteStore>,
    cache: Arc<DirCache>,
    prefetch: Option<Arc<ListingPrefetcher>>,
    listing_now: InFlight,
    dir: String,
    stream: Arc<DirStream>,
    /// Files created through the mount in `dir` that the server may not show yet.
    local: Vec<RemoteEntry>,
}

impl ListingJob {
    fn run(self) {
        let ticket = self.cache.begin_fill(&self.dir);
        let listed = self
            .store
            .list_each(&self.dir, &mut |e| self.stream.push(e))
            .map_err(|e| {
                log::debug!("listing {}: {e}", self.dir);
                Errno::from(e).0
            });
        // Cache first, then wake the readers and waiting lookups, which look there.
        if listed.is_ok() {
            for e in &self.local {
                self.stream.push(e.clone()); // dropped if the server listed it
            }
            self.stream.input_complete(|all| {
                queue_subdirs(self.prefetch.as_deref(), &self.dir, &all);
                self.cache.finish_fill(ticket, all)
            });
        } else {
            self.cache.abandon_fill(ticket);
        }
        {
            // Gone from the in-flight list before it is marked done: a later opendir
            // finds the cache, or (after a failure) lists anew.
            let mut now = lock(&self.listing_now);
            if now
                .get(&self.dir)
                .is_some_and(|s| Arc::ptr_eq(s, &self.stream))
            {
                now.remove(&self.dir);
            }
        }
        self.stream.finish(listed);
    }
}

#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod posix_tests;
#[cfg(test)]
mod tests;
