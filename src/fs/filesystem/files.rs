//! Open files: handles, reads through the per-handle prefetcher, writes into the
//! spool with a streaming upload for sequential writers (see `open_file.rs`).

use super::*;

impl FtpsFs {
    /// Gives the file a spool if it has none: empty when truncating or new, else
    /// the server's content, downloaded with the file marked busy and its lock
    /// released (see `open_file.rs`).
    pub(super) fn ensure_spool<'a>(
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
    pub(super) fn mark_dirty(&self, st: &mut FileState, path: &str) {
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
    pub(super) fn spool_failed(&self, st: &mut FileState, path: &str, e: StoreError) -> Errno {
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

    pub(super) fn new_handle(
        &self,
        ino: u64,
        path: &str,
        size: u64,
        writable: bool,
        append: bool,
    ) -> u64 {
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

    pub(super) fn state(&self, ino: u64) -> Arc<OpenFile> {
        lock(&self.files)
            .entry(ino)
            .or_insert_with(|| Arc::new(OpenFile::new()))
            .clone()
    }

    /// The file's state with one more handle on it (a writer's if `writable`).
    /// The last release marks a state `gone` under its lock before it takes it
    /// out of the map: a state found gone here is looked up again, so a new
    /// handle never joins a state on its way out. `first` runs on the state
    /// when this is its only handle.
    pub(super) fn hold(
        &self,
        ino: u64,
        writable: bool,
        first: impl FnOnce(&mut FileState),
    ) -> Arc<OpenFile> {
        loop {
            let state = self.state(ino);
            let mut st = state.lock();
            if st.gone {
                drop(st);
                self.forget_gone(ino, &state);
                continue;
            }
            if st.handles == 0 {
                first(&mut st);
            }
            st.handles += 1;
            if writable {
                st.writers += 1;
            }
            drop(st);
            return state;
        }
    }

    /// Gives back a handle taken by [`FtpsFs::hold`] for an open that failed;
    /// the state leaves the map if nothing else holds it.
    pub(super) fn unhold(&self, ino: u64, state: &Arc<OpenFile>, writable: bool) {
        let mut st = state.lock();
        st.handles = st.handles.saturating_sub(1);
        if writable {
            st.writers = st.writers.saturating_sub(1);
        }
        if st.handles == 0 && !st.dirty && !st.is_busy() && !st.gone {
            st.gone = true;
            self.keep_unsent(&mut st, "an open that failed");
            drop(st);
            self.forget_gone(ino, state);
        }
    }

    /// Takes a state marked `gone` out of the map, if it is still there. Its
    /// last release does so; whoever else finds it there first does it too,
    /// rather than wait for a state that has already left.
    pub(super) fn forget_gone(&self, ino: u64, state: &Arc<OpenFile>) {
        let mut files = lock(&self.files);
        if files.get(&ino).is_some_and(|s| Arc::ptr_eq(s, state)) {
            files.remove(&ino);
        }
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
        if !writable && flags & libc::O_TRUNC != 0 {
            // O_RDONLY | O_TRUNC empties the file on Linux (the kernel checked
            // the write permission); with atomic O_TRUNC it comes here whole.
            self.writable()?;
            self.truncate(ino, &path, 0, false)?;
        }
        let state = self.hold(ino, writable, |st| {
            if !st.dirty && !st.is_new {
                st.base = journal::base_of(Some(&entry));
            }
        });
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
                self.unhold(ino, &state, true);
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
        let state = self.hold(ino, true, |_| {});
        let at = {
            let mut st = match state.lock_idle() {
                Ok(st) => st,
                Err(e) => {
                    self.unhold(ino, &state, true);
                    return Err(e);
                }
            };
            st.is_new = true;
            st.base = Base::Absent;
            if st.spool.is_none() {
                match Spool::new(&self.cfg.spool_dir) {
                    Ok(sp) => st.spool = Some(sp),
                    Err(e) => {
                        drop(st);
                        self.unhold(ino, &state, true);
                        return Err(e.into());
                    }
                }
            }
            self.mark_dirty(&mut st, &path);
            let default = 0o666 & !self.cfg.umask;
            if mode & 0o7777 != default && mode & 0o7777 != 0o644 {
                st.pending_mode = Some(mode & 0o7777);
            }
            st.modified.unwrap_or_else(SystemTime::now)
        };
        let e = RemoteEntry {
            name: name.to_string(),
            kind: EntryKind::File,
            size: 0,
            mtime: Some(at),
            mode: Some(mode & 0o7777),
        };
        self.cache.edit(&dir, |l| {
            l.insert(name.to_string(), e.clone());
        });
        self.dir_changed(&dir, at);
        let fh = self.new_handle(ino, &path, 0, true, flags & libc::O_APPEND != 0);
        Ok((self.make_attr(ino, &e), fh))
    }

    pub(super) fn handle(&self, fh: u64) -> FsResult<Arc<FileHandle>> {
        lock(&self.handles)
            .get(&fh)
            .cloned()
            .ok_or(Errno(libc::EBADF))
    }

    /// [`FtpsFs::read_into`] into a new buffer (the unit tests' way to read).
    #[cfg(test)]
    pub fn read(&self, fh: u64, offset: u64, size: usize) -> FsResult<Vec<u8>> {
        let mut out = Vec::new();
        self.read_into(fh, offset, size, &mut out)?;
        Ok(out)
    }

    /// Reads up to `size` bytes at `offset`, appending them to `out`, a buffer the
    /// caller reuses (no allocation per read).
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
                if st.spool.as_ref().is_some_and(|sp| offset < sp.forgotten()) {
                    let (path, _) = self.inodes.path(h.ino).ok_or(Errno(libc::ENOENT))?;
                    st = match self.make_whole(&state, st, &path) {
                        Ok(st) => st,
                        Err(e) => {
                            drop(state.settle(state.lock(), self.store.as_ref()));
                            return Err(e);
                        }
                    };
                }
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
        let sp = st.spool.as_ref().ok_or(Errno(libc::EIO))?;
        let off = if h.append { sp.len() } else { offset };
        let streaming_here = st.stream.as_ref().is_some_and(|s| s.pos() == off);
        if sp.forgotten() > 0 && !streaming_here {
            st = match self.make_whole(&state, st, &path) {
                Ok(st) => st,
                Err(e) => {
                    drop(state.settle(state.lock(), self.store.as_ref()));
                    return Err(e);
                }
            };
        }
        let mut st = self.hold_window(&state, st, &path, off, data.len());
        let sp = st.spool.as_mut().ok_or(Errno(libc::EIO))?;
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
    pub(super) fn stream_write<'a>(
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
                let bounded = self.cfg.spool_window.and_then(|window| {
                    let sp = st.spool.as_mut()?;
                    sp.buffered_only().ok()?;
                    Some(uploader::Bounded {
                        spool: sp.path().to_path_buf(),
                        window,
                    })
                });
                // To a temporary name, renamed over the file's at close (the
                // file's own name only on a server without rename: `target`).
                let name = uploader::upload_name(path, target);
                // The journal knows the name before the server does.
                if let (Some(j), Some(r)) = (&self.journal, st.record.as_mut()) {
                    if let Err(e) = r.uploading(j, None, &name) {
                        log::warn!("journal record for {path}: {e}; not streaming it");
                        return st;
                    }
                }
                st.stream =
                    StreamUpload::start(self.store.clone(), &name, self.cfg.op_timeout, bounded);
            }
            None => return st,
        }
        let Some(mut stream) = st.stream.take() else {
            return st;
        };
        let (mut st, pushed) = file.unlocked(st, || stream.push(data));
        if !pushed {
            st.queue_abort(stream);
            if st.spool.as_ref().is_some_and(|sp| sp.forgotten() > 0) {
                self.stream_lost(&mut st, path, "the streamed upload failed or stalled");
            }
            return st;
        }
        // Half a window in: learn (once per mount, in the background) whether a
        // cut could be resumed, so that the answer is in before the first drop.
        if self
            .cfg
            .spool_window
            .is_some_and(|w| stream.is_bounded() && stream.pos() >= w / 2)
        {
            self.uploads_resume(path);
        }
        let droppable = stream.droppable();
        st.stream = Some(stream);
        self.drop_uploaded(&mut st, path, droppable);
        st
    }

    /// Bounded stream: drops the spool's bytes before `upto` (the server holds
    /// them), after the journal record says, durably, that the spool is no longer
    /// a whole copy. A failure keeps the bytes (the spool just stays larger).
    fn drop_uploaded(&self, st: &mut FileState, path: &str, upto: u64) {
        let Some(forgotten) = st.spool.as_ref().map(Spool::forgotten) else {
            return;
        };
        if upto <= forgotten {
            return;
        }
        if !self.uploads_resume(path) {
            return;
        }
        if forgotten == 0 {
            if let (Some(j), Some(r)) = (&self.journal, st.record.as_mut()) {
                if let Err(e) = r.dropping(j) {
                    log::warn!("journal record for {path}: {e}; its spool keeps every byte");
                    return;
                }
            }
        }
        if let Some(sp) = st.spool.as_mut() {
            if let Err(e) = sp.forget_before(upto) {
                if !self.punch_refused.swap(true, Ordering::Relaxed) {
                    log::warn!(
                        "{e}: spool_dir cannot drop uploaded bytes; spools keep every byte \
                         (spool_window= has no effect)"
                    );
                }
            }
        }
    }

    /// A bounded stream failed after its spool dropped bytes: the file cannot be
    /// uploaded any more. Like a failed local write (see `spool_failed`): the
    /// error goes to every later write, fsync and close; the server keeps its
    /// previous content (the partial upload went to a temporary name, removed).
    pub(super) fn stream_lost(&self, st: &mut FileState, path: &str, why: &str) -> Errno {
        st.abandon_stream();
        let (written, dropped) = st
            .spool
            .as_ref()
            .map_or((0, 0), |sp| (sp.len(), sp.forgotten()));
        if let Some(sp) = st.spool.take() {
            sp.discard();
        }
        st.record = None;
        st.dirty = false;
        st.failed = Some(libc::EIO);
        log::error!(
            "writing {path}: {why}, and the first {dropped} of its {written} bytes are no longer \
             kept locally (spool_window=): the file cannot be uploaded; the server keeps its \
             previous content; close() and fsync() report EIO"
        );
        Errno(libc::EIO)
    }

    /// Before anything but a sequential write at the end of a stream (a seek
    /// back, a read of dropped bytes, a truncation): a spool that dropped the
    /// uploaded start of the file is made whole again. The stream is finished up
    /// to the current length (the temporary file then holds exactly the
    /// program's bytes so far), the dropped part fetched back from it, and the
    /// temporary file removed; the file is then a plain spooled file. After an
    /// upload (fsync, or a close of another descriptor) the start comes back
    /// from the file itself, which holds exactly the spool's bytes. On failure
    /// the file fails with EIO and the server keeps its previous content.
    pub(super) fn make_whole<'a>(
        &self,
        file: &'a OpenFile,
        mut st: MutexGuard<'a, FileState>,
        path: &str,
    ) -> FsResult<MutexGuard<'a, FileState>> {
        let Some((forgotten, len, spool_path)) = st
            .spool
            .as_ref()
            .map(|sp| (sp.forgotten(), sp.len(), sp.path().to_path_buf()))
        else {
            return Ok(st);
        };
        if forgotten == 0 {
            return Ok(st);
        }
        let stream = st.stream.take();
        if stream.is_none() && st.dirty {
            // Dirty, dropped and no stream: nothing holds the start any more.
            return Err(self.stream_lost(&mut st, path, "its stream was abandoned"));
        }
        let path_owned = path.to_string();
        let (mut st, fetched) = file.unlocked(st, || {
            let store = self.store.as_ref();
            let (source, temp) = match stream {
                Some(s) => {
                    let tmp = s.finish(store, len)?;
                    let temp = tmp != path_owned;
                    (tmp, temp)
                }
                None => (path_owned.clone(), false),
            };
            let r = fetch_prefix(store, &source, &spool_path, forgotten);
            if temp {
                let _ = store.delete(&source);
            }
            r
        });
        match fetched {
            Ok(()) => {
                if let Some(sp) = st.spool.as_mut() {
                    sp.restored();
                }
                if let (Some(j), Some(r)) = (&self.journal, st.record.as_mut()) {
                    if let Err(e) = r.restored(j) {
                        log::warn!("journal record for {path}: {e}");
                    }
                }
                log::info!(
                    "{path}: written out of sequence after its first {forgotten} bytes were \
                     dropped from the spool; fetched them back, now spooled whole"
                );
                Ok(st)
            }
            Err(e) => {
                let why = format!("could not fetch back its uploaded start ({e})");
                Err(self.stream_lost(&mut st, path, &why))
            }
        }
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
}

/// Writes the first `len` bytes of the remote file `source` into the spool file
/// at `spool` (over its punched start).
fn fetch_prefix(
    store: &dyn RemoteStore,
    source: &str,
    spool: &std::path::Path,
    len: u64,
) -> crate::fs::error::StoreResult<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(spool)
        .map_err(|e| StoreError::local("opening the spool file", e))?;
    let mut at = 0u64;
    let mut err = None;
    let r = store.read_from(source, 0, &mut |chunk| {
        let n = (chunk.len() as u64).min(len - at) as usize;
        if let Err(e) = f.write_all_at(&chunk[..n], at) {
            err = Some(e);
            return false;
        }
        at += n as u64;
        at < len
    });
    if let Some(e) = err {
        return Err(StoreError::local("writing the spool file", e));
    }
    r?;
    if at < len {
        return Err(StoreError::Lost(format!(
            "{source} holds {at} bytes, fewer than the {len} needed"
        )));
    }
    Ok(())
}

/// The resume probe's answer, given when the probe thread ends however it ends.
struct ProbeAnswer {
    state: Arc<Mutex<ResumeProbe>>,
    done: Arc<std::sync::Condvar>,
    found: ResumeProbe,
}

impl Drop for ProbeAnswer {
    fn drop(&mut self) {
        *lock(&self.state) = self.found;
        self.done.notify_all();
    }
}

impl FtpsFs {
    /// True once the server has shown it resumes an upload; the first call starts
    /// the probe on a thread of its own (never under a file's lock) and says no
    /// until it is done. Dropping spooled bytes is only safe where a cut upload
    /// can be resumed: proftpd as shipped (no `AllowStoreRestart`) refuses REST
    /// before STOR and APPE alike, and there a spool must keep every byte so that a
    /// cut upload can be sent again from the start.
    pub(super) fn uploads_resume(&self, path: &str) -> bool {
        let mut probe = crate::sync::lock(&self.resume_probe);
        match *probe {
            ResumeProbe::Resumes => return true,
            ResumeProbe::Running | ResumeProbe::Cannot => return false,
            ResumeProbe::Unknown => *probe = ResumeProbe::Running,
        }
        drop(probe);
        let store = self.store.clone();
        let state = self.resume_probe.clone();
        let done = self.resume_probe_done.clone();
        let name = uploader::probe_name(path);
        let timeout = self.cfg.op_timeout;
        let spawned = std::thread::Builder::new()
            .name("ftpsfs-probe".into())
            .spawn(move || {
                let _deadline = crate::deadline::start(timeout);
                // Whatever happens to this thread (a panic too), the probe ends
                // with an answer and its waiters are woken: "cannot" unless shown.
                let mut answer = ProbeAnswer {
                    state,
                    done,
                    found: ResumeProbe::Cannot,
                };
                let found = if uploader::probe_resume(store.as_ref(), &name) {
                    ResumeProbe::Resumes
                } else {
                    ResumeProbe::Cannot
                };
                if found == ResumeProbe::Resumes {
                    log::info!("resume probe: the server resumes an interrupted upload");
                }
                if found == ResumeProbe::Cannot {
                    log::warn!(
                        "the server cannot resume an interrupted upload (REST before STOR and \
                         APPE refused: on proftpd, `AllowStoreRestart on`): spools keep every \
                         byte of a file (spool_window= has no effect)"
                    );
                }
                answer.found = found;
            });
        if spawned.is_err() {
            *crate::sync::lock(&self.resume_probe) = ResumeProbe::Unknown;
        }
        false
    }

    /// Waits while the resume probe runs, within the operation's deadline. A
    /// bounded stream's writer calls it when its spool would pass the window: its
    /// drops wait for the probe's answer, and the spool must not grow past the
    /// window meanwhile. (Past the deadline the write goes on: the spool then holds
    /// more than the window, as any spool does on a server that cannot resume.)
    fn await_resume_probe(&self) {
        let mut probe = lock(&self.resume_probe);
        while *probe == ResumeProbe::Running && !crate::deadline::expired() {
            let wait = crate::deadline::bound(Duration::from_millis(200));
            probe = match self.resume_probe_done.wait_timeout(probe, wait) {
                Ok((g, _)) => g,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    /// Bounded stream at `off`: before `len` more bytes go into a spool that would
    /// then hold more than the window, drops what the transfer took, first waiting
    /// (file busy, unlocked) for the resume probe that allows drops if it runs.
    fn hold_window<'a>(
        &self,
        file: &'a OpenFile,
        mut st: MutexGuard<'a, FileState>,
        path: &str,
        off: u64,
        len: usize,
    ) -> MutexGuard<'a, FileState> {
        let (Some(window), Some(sp), Some(stream)) =
            (self.cfg.spool_window, st.spool.as_ref(), st.stream.as_ref())
        else {
            return st;
        };
        if !stream.is_bounded()
            || stream.pos() != off
            || off + len as u64 <= sp.forgotten() + window
        {
            return st;
        }
        if *lock(&self.resume_probe) == ResumeProbe::Running {
            st = file.unlocked(st, || self.await_resume_probe()).0;
        }
        let droppable = st.stream.as_ref().map_or(0, StreamUpload::droppable);
        self.drop_uploaded(&mut st, path, droppable);
        st
    }
}
