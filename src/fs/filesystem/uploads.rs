//! Uploads of unsent data at flush/fsync/close and at shutdown: a stream's end or
//! the spool's upload, the journal record around it (see `uploader.rs`,
//! `journal.rs`), and the attributes that waited for it.

use super::*;

impl FtpsFs {
    /// Where the upload of a file goes: see `uploader` (through a temporary name
    /// unless `inplace` or the server refuses renames).
    pub(super) fn target(&self, is_new: bool) -> Target {
        if self.cfg.inplace {
            Target::InPlace
        } else if !self.renames_refused.load(Ordering::Relaxed) {
            // New files too: a name only ever holds a complete file, even when
            // a STOR the network held back reaches the server after the mount
            // gave its connection up (it can only truncate a temporary name).
            Target::Temp
        } else if is_new {
            // No rename: a failed upload removes what it wrote.
            Target::NewFile
        } else {
            Target::InPlace
        }
    }

    /// Uploads `len` bytes from `source` as `path`, journaling each remote name
    /// before it is written. A refused rename (a server or account without rename
    /// permission) is learnt for the mount, logged once, and the upload goes in
    /// place.
    pub(super) fn upload_spool(
        &self,
        source: &mut dyn FnMut() -> crate::fs::error::StoreResult<std::fs::File>,
        len: u64,
        path: &str,
        is_new: bool,
        mut record: Option<&mut Record>,
    ) -> crate::fs::error::StoreResult<()> {
        let mut target = self.target(is_new);
        loop {
            let mut before = |name: &str| -> crate::fs::error::StoreResult<()> {
                match (&self.journal, record.as_deref_mut()) {
                    (Some(j), Some(r)) => r
                        .uploading(j, Some(len), name)
                        .map_err(|e| StoreError::local("writing the journal", e)),
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

    pub(super) fn learn_renames_refused(&self, path: &str, e: &StoreError) {
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
    pub(super) fn upload_if_dirty(&self, ino: u64) -> FsResult<()> {
        loop {
            let state = lock(&self.files).get(&ino).cloned();
            let Some(state) = state else {
                return Ok(());
            };
            let st = state.lock_idle()?;
            if st.gone {
                // Its last release took it away meanwhile (clean, or with its
                // data kept and the error reported): look again.
                drop(st);
                self.forget_gone(ino, &state);
                continue;
            }
            return self.upload_locked(ino, &state, st);
        }
    }

    /// [`FtpsFs::upload_if_dirty`] on a state the caller holds idle.
    pub(super) fn upload_locked(
        &self,
        ino: u64,
        state: &OpenFile,
        st: MutexGuard<'_, FileState>,
    ) -> FsResult<()> {
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
        let mut st = self.ensure_spool(state, st, &path, false)?;
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
        let forgotten = st.spool.as_ref().map_or(0, Spool::forgotten);
        if forgotten > 0 && stream.is_none() {
            let errno = self.stream_lost(&mut st, &path, "its stream was abandoned");
            drop(state.settle(st, self.store.as_ref()));
            return Err(errno);
        }
        let mut record = st.record.take();
        let is_new = st.is_new;
        // The file's time is that of its last change, taken before the bytes
        // went out: the server's own time for them is never earlier, so its next
        // listing (whole seconds or minutes) never moves the time back.
        let modified = st.modified.unwrap_or_else(SystemTime::now);
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
                        self.learn_renames_refused(&path, &e);
                        if forgotten > 0 {
                            // The spool lacks the start: it cannot go in place.
                            return Err(e);
                        }
                    }
                    Err(e) if forgotten > 0 => return Err(e),
                    Err(e) => {
                        log::warn!("streamed upload of {path} failed ({e}); uploading the spool")
                    }
                }
            }
            let mut open = || {
                if forgotten > 0 {
                    // Never upload a spool with holes for its dropped start.
                    return Err(StoreError::Lost(format!(
                        "the first {forgotten} bytes of {path} are no longer kept locally"
                    )));
                }
                std::fs::File::open(&spool_path)
                    .map_err(|e| StoreError::local("reading the spool file", e))
            };
            self.upload_spool(&mut open, len, &path, is_new, record.as_mut())
        });
        if let Err(e) = uploaded {
            if forgotten > 0 {
                // The spool no longer has the start: nothing to keep or retry.
                drop(record);
                let why = format!("its streamed upload failed ({e})");
                let errno = self.stream_lost(&mut st, &path, &why);
                drop(state.settle(st, self.store.as_ref()));
                return Err(errno);
            }
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
        let uploaded_at = SystemTime::now();
        let (mut st, (set_mtime, result)) = state.unlocked(st, || {
            let mut set_mtime = None;
            let mut result = Ok(());
            if let Some(mode) = mode {
                if let Err(e) = self.store.chmod(&path, mode) {
                    log::warn!("chmod {path}: {e}");
                }
            }
            if let Some(t) = pending_mtime {
                match self.store.set_mtime(&path, t) {
                    Ok(()) => set_mtime = Some(t),
                    Err(e) => {
                        log::warn!("setting mtime of {path}: {e}");
                        if !e.is_not_implemented() {
                            result = Err(Errno::from(e));
                        }
                    }
                }
            }
            (set_mtime, result)
        });
        // What the server holds now, for a later crash's recovery to compare with:
        // its time is that of the upload (or the one set).
        st.base = Base::Present(
            len,
            set_mtime
                .unwrap_or(uploaded_at)
                .duration_since(SystemTime::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs()),
        );
        drop(st);
        let mtime = set_mtime.unwrap_or(modified);
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
        let mut result = if h.writable {
            self.upload_at_release(h.ino)
        } else {
            Ok(())
        };
        let mut last = None;
        let mut again = 0;
        loop {
            let Some(state) = lock(&self.files).get(&h.ino).cloned() else {
                break;
            };
            let mut st = state.lock();
            if st.gone {
                break; // not this handle's (it counts on its state): nothing to do
            }
            // A truncate or setattr that saw this handle may have left its change
            // to it after the upload above: the state leaves the map only clean.
            if st.handles == 1 && st.dirty && st.failed.is_none() && result.is_ok() && again < 3 {
                drop(st);
                again += 1;
                result = self.upload_at_release(h.ino);
                continue;
            }
            st.handles = st.handles.saturating_sub(1);
            if h.writable {
                st.writers = st.writers.saturating_sub(1);
            }
            if st.handles == 0 {
                // Gone first (an open that finds it so looks again), then out of
                // the map; the map's lock is never taken while waiting for a
                // state's.
                st.gone = true;
                drop(st);
                self.forget_gone(h.ino, &state);
                last = Some(state);
            }
            break;
        }
        if let Some(state) = last {
            let Ok(mut st) = state.lock_idle() else {
                // Out of time while another call uploads the file: that call keeps
                // (with its journal record) or frees what it holds, and the spool
                // file goes with the state; nothing is torn down under it.
                return result;
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

    /// The upload at a close. One lost to the network (a stall, a cut
    /// connection) is tried once more: the network may be back by now, and this
    /// is the last chance in this mount to put the file where it belongs (a new
    /// file's failed stream may have left a prefix under its name). Once more, on
    /// another connection (the failed one is dropped) and with a deadline of its
    /// own (the first try may have used this call's).
    fn upload_at_release(&self, ino: u64) -> FsResult<()> {
        match self.upload_if_dirty(ino) {
            Err(Errno(libc::EIO | libc::ETIMEDOUT)) => {
                let _deadline = crate::deadline::start(self.cfg.op_timeout);
                self.upload_if_dirty(ino)
            }
            other => other,
        }
    }

    /// Frees the spool of a file whose last handle is gone; data the server does
    /// not have is kept on disk with its journal record (for the next mount).
    pub(super) fn keep_unsent(&self, st: &mut FileState, why: &str) {
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
}
