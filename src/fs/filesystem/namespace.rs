//! The namespace: mkdir, unlink, rmdir, rename (with the fallbacks servers need)
//! and symlink (refused: FTP cannot make one).

use super::*;

impl FtpsFs {
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
        // Times of the mount's own changes are taken before the request goes
        // out: the server's time for the change is never earlier.
        let at = SystemTime::now();
        self.store.mkdir(&path)?;
        // The server's own mode for new directories is unknown (proftpd 0755,
        // vsftpd 0700 by default): set the requested one, unless the server has
        // shown it has no SITE CHMOD.
        let mode = mode & 0o7777;
        let mode = if self.no_chmod.load(Ordering::Relaxed) {
            None
        } else {
            match self.store.chmod(&path, mode) {
                Ok(()) => Some(mode),
                Err(e) => {
                    if e.is_not_implemented() {
                        self.no_chmod.store(true, Ordering::Relaxed);
                    }
                    log::debug!("mkdir {path}: mode {mode:o} not applied: {e}");
                    None
                }
            }
        };
        let e = RemoteEntry {
            name: name.to_string(),
            kind: EntryKind::Dir,
            size: 0,
            mtime: Some(at),
            mode,
        };
        self.cache.edit(&dir, |l| {
            l.insert(name.to_string(), e.clone());
        });
        // A new directory is empty: no need to ask.
        self.cache.put(&path, Vec::new());
        self.dir_changed(&dir, at);
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
        let at = SystemTime::now();
        match state {
            // The file open: once no upload of it runs (one in flight may be
            // creating it on the server), DELE with the file busy, so none starts
            // meanwhile; then nothing is left to upload. A file the server never
            // had needs no DELE; a refused DELE keeps the data unsent.
            Some(s) => {
                let st = s.lock_idle()?;
                let (mut st, deleted) = match st.is_new {
                    true => (st, Ok(())),
                    false => s.unlocked(st, || self.store.delete(&path)),
                };
                deleted?;
                st.abandon_stream();
                st.dirty = false;
                st.is_new = false;
                st.record = None;
                drop(s.settle(st, self.store.as_ref()));
            }
            None => self.store.delete(&path)?,
        }
        self.cache.edit(&dir, |l| {
            l.remove(name);
        });
        self.dir_changed(&dir, at);
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
        let at = SystemTime::now();
        if let Err(refused) = self.store.rmdir(&path) {
            if !refused.is_refusal() {
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
        self.dir_changed(&dir, at);
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
        let at = SystemTime::now();
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
        self.dir_changed(&dir, at);
        if newdir != dir {
            self.dir_changed(&newdir, at);
        }
        lock(&self.ctimes).pop(&from);
        self.changed(&to);
        Ok(())
    }

    /// For servers that refuse to rename over an existing file: the file at `to`
    /// is first moved aside (never deleted before `from` has taken its name), then
    /// removed; if any step is refused, everything is put back as it was and the
    /// rename fails with the server's first refusal.
    pub(super) fn rename_over_file(
        &self,
        from: &str,
        to: &str,
        first: StoreError,
    ) -> crate::fs::error::StoreResult<()> {
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
}
