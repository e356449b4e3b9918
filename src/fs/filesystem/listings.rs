//! Listings: directory entries from the cache, the server, a listing streaming in
//! (`dirstream.rs`), or files the mount created that the server does not show yet;
//! `opendir`/`readdir` over them.

use super::*;

/// Longest wait for a listing a prefetch worker has queued or is doing.
const PREFETCH_WAIT: Duration = Duration::from_secs(2);

impl FtpsFs {
    /// The listing of a directory, from the cache or the server.
    pub(super) fn listing(&self, dir: &str) -> FsResult<Arc<Entries>> {
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
    pub(super) fn wait_for_prefetch(&self, dir: &str) {
        if let Some(p) = &self.prefetch {
            // Queued or being listed by a prefetch worker: wait for it (bounded by
            // the operation's deadline).
            p.wait_for(dir, crate::deadline::bound(PREFETCH_WAIT));
        }
    }

    pub(super) fn entry(&self, path: &str) -> FsResult<RemoteEntry> {
        let (dir, name) = split(path).ok_or(Errno(libc::ENOENT))?;
        self.known(dir, name)?.ok_or(Errno(libc::ENOENT))
    }

    /// The entry `name` of `dir`: from its listing, or a file created through the
    /// mount that the server does not show yet (being written, or uploaded through
    /// a temporary name) and a fresh listing therefore lacks.
    pub(super) fn known(&self, dir: &str, name: &str) -> FsResult<Option<RemoteEntry>> {
        if let Some(e) = self.listing(dir)?.get(name) {
            return Ok(Some(e));
        }
        Ok(self.local_entry(&join(dir, name)))
    }

    /// The entry of a file created through the mount and not on the server yet.
    pub(super) fn local_entry(&self, path: &str) -> Option<RemoteEntry> {
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
    pub(super) fn local_entries_in(&self, dir: &str) -> Vec<RemoteEntry> {
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

    pub(super) fn dir_stream(&self, path: &str) -> FsResult<Arc<DirStream>> {
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
