//! Attributes: what `stat` shows (from the parent's listing, the open file's
//! unsent state, and the mount's own recent changes), and chmod/utimens/truncate.

use super::*;

/// chmod/utimens of an object that exists: a server's refusal (not implemented,
/// or vsftpd's "550 Could not set file modification time" on a directory) means
/// "not permitted", not "no such file".
fn refused_as_eperm(e: StoreError) -> Errno {
    if e.is_refusal() {
        log::debug!("refused: {e}");
        Errno(libc::EPERM)
    } else {
        Errno::from(e)
    }
}

impl FtpsFs {
    pub(super) fn make_attr(&self, ino: u64, e: &RemoteEntry) -> Attr {
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
    pub(super) fn dir_links(&self, dir: &str) -> u32 {
        self.cache
            .get(dir)
            .map_or(2, |l| 2u32.saturating_add(l.dirs()))
    }

    /// The mount changed `path` itself (mode, name, data): its ctime is now.
    pub(super) fn changed(&self, path: &str) {
        lock(&self.ctimes).put(path.to_string(), SystemTime::now());
    }

    /// The mount created, removed or renamed something in `dir` at `at`, a time
    /// taken before the request went out: its mtime is that, as on a local file
    /// system. The server's own time shows at the next listing; on the same clock
    /// it is never earlier, so the listing never moves the time back.
    pub(super) fn dir_changed(&self, dir: &str, at: SystemTime) {
        if self.inodes.existing(dir) == Some(ROOT_INO) {
            *lock(&self.root_mtime) = at;
        } else {
            self.update_entry(dir, |e| e.mtime = Some(at));
        }
        self.changed(dir);
    }

    pub(super) fn root_attr(&self) -> Attr {
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

    /// chmod / truncate / utimens; `handle` is the open handle they came
    /// through (fchmod, ftruncate, futimens), `None` for a path (chmod(2),
    /// truncate(2), utimensat(2)). A truncate of a file some handle holds with
    /// unsent data, or one through a handle of a file open for writing, is
    /// applied to its spool and uploaded by its close with the writes around
    /// it. A truncate by path of a file whose data is all sent (its writer
    /// closed it, the kernel's release still on its way) is uploaded before
    /// this returns.
    #[allow(clippy::too_many_arguments)]
    pub fn setattr(
        &self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        mtime: Option<SetTime>,
        handle: Option<u64>,
    ) -> FsResult<Attr> {
        if uid.is_some_and(|u| u != self.cfg.uid) || gid.is_some_and(|g| g != self.cfg.gid) {
            return Err(Errno(libc::EPERM));
        }
        if mode.is_some() || size.is_some() || mtime.is_some() {
            self.writable()?;
        }
        let path = self.path_of(ino)?;
        if let Some(size) = size {
            self.truncate(ino, &path, size, handle.is_some())?;
        }
        let state = lock(&self.files).get(&ino).cloned();
        // While data is unsent, the change is recorded in the same critical section
        // that sees it unsent: the upload applies it (an upload ending in between
        // cannot drop it).
        let deferred = |apply: &dyn Fn(&mut FileState)| -> bool {
            match &state {
                Some(s) => {
                    let mut st = s.lock();
                    let unsent = st.dirty && !st.gone;
                    if unsent {
                        apply(&mut st);
                    }
                    unsent
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

    /// Tests: utimens(2) by path, the time alone.
    #[cfg(test)]
    pub fn utimens(&self, ino: u64, t: SetTime) -> FsResult<Attr> {
        self.setattr(ino, None, None, None, None, Some(t), None)
    }

    /// utimens on the server. Where the server cannot set the time (vsftpd and
    /// pyftpdlib for directories, some servers for anything): a directory's time
    /// is skipped (logged once; `EPERM` with `strict_dir_times`), so `rsync -a`
    /// and `tar x` finish cleanly; "now" on an entry whose time is already now
    /// (`touch` of a file just written) changes nothing the server would not
    /// show; anything else is `EPERM`. See SEMANTICS.md.
    pub(super) fn set_mtime(&self, ino: u64, path: &str, set: SetTime) -> FsResult<()> {
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
            Err(e) if !e.is_refusal() => return Err(e.into()),
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

    pub(super) fn update_entry(&self, path: &str, f: impl FnOnce(&mut RemoteEntry)) {
        if let Some((dir, name)) = split(path) {
            self.cache.edit(dir, |l| l.update(name, f));
        }
    }

    /// The cached entry of `path`, without asking the server.
    pub(super) fn cached_entry(&self, path: &str) -> Option<RemoteEntry> {
        let (dir, name) = split(path)?;
        self.cache.get(dir)?.get(name)
    }

    /// See [`FtpsFs::setattr`]; `through_handle`: it came through an open handle.
    pub(super) fn truncate(
        &self,
        ino: u64,
        path: &str,
        size: u64,
        through_handle: bool,
    ) -> FsResult<()> {
        // Until the truncate is recorded on a live state or done on the server:
        // the last release may take the state away meanwhile.
        while !self.try_truncate(ino, path, size, through_handle)? {}
        Ok(())
    }

    /// One try of [`FtpsFs::truncate`]; false when the file's open state was
    /// taken away by its last release before the truncate could record itself.
    fn try_truncate(
        &self,
        ino: u64,
        path: &str,
        size: u64,
        through_handle: bool,
    ) -> FsResult<bool> {
        let existing = lock(&self.files).get(&ino).cloned();
        // Deferred to the next flush only when a writer holds a spool; a file open
        // just for reading is truncated on the server at once.
        let deferred = existing.filter(|s| {
            let st = s.lock();
            st.writers > 0 || st.spool.is_some() || st.dirty
        });
        match deferred {
            Some(state) => {
                let st = state.lock_idle()?;
                if st.gone {
                    drop(st);
                    self.forget_gone(ino, &state);
                    return Ok(false);
                }
                // By path, on a file whose data is all sent: nothing will upload
                // it soon (a writer's close may already be done), so this does.
                let upload_now = !through_handle && !st.dirty;
                if let Some(e) = st.failed {
                    return Err(Errno(e));
                }
                let mut st = if st.stream.as_ref().is_none_or(|s| s.pos() != size) {
                    self.make_whole(&state, st, path)?
                } else {
                    st
                };
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
                if result.is_ok() && upload_now {
                    // In the same critical section that made it dirty: a last
                    // release waits for this upload instead of taking the state.
                    return self.upload_locked(ino, &state, st).map(|()| true);
                }
                drop(state.settle(st, self.store.as_ref()));
                result.map(|()| true)
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
                let at = SystemTime::now();
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
                    e.mtime = Some(at);
                });
                Ok(true)
            }
        }
    }
}
