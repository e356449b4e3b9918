//! The state of a file open through the mount (or with data not yet uploaded):
//! its spool, its streaming upload, its journal record and pending attributes.
//!
//! Design: the rule "no lock is held across network I/O" lives here. The state's
//! mutex is only ever held for memory and local-disk work (spool reads and writes,
//! journal records), so `stat`, `getattr` and other files never wait for the
//! network. An operation that needs the network on behalf of the file (fetching
//! its current content, an upload, a stream's push or abort) marks the file
//! `busy`, lets go of the lock, does its I/O, then takes the lock again to publish
//! the result ([`OpenFile::unlocked`]). Operations that need the file's data
//! ([`OpenFile::lock_idle`]: writes, reads of the spool, uploads) wait while it is
//! busy, on a condition variable, at most until their deadline; attribute reads
//! never wait. Streams abandoned under the lock are queued in `to_abort` and
//! aborted (their partial upload deleted) by [`OpenFile::settle`] before anything
//! else uploads the file, so an abort never races an upload to the same name.
//!
//! The filesystem keeps one state per open file in a map. The last release marks
//! it `gone` under its lock, then takes it out of the map; it does so only once
//! the state is clean (a truncate or setattr that saw the writer and left the
//! upload to it is uploaded first). Whoever finds a gone state (in the map a
//! moment longer, or taken from it before) looks the file up again, so no change
//! lands on a state nobody will upload. The map's lock is never held while
//! waiting for a state's.

use super::filesystem::{Errno, FsResult};
use super::journal::{Base, Record};
use super::spool::Spool;
use super::store::RemoteStore;
use super::uploader::StreamUpload;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// What a write-opened file holds while open.
pub struct FileState {
    pub spool: Option<Spool>,
    /// The spool holds data the server does not have.
    pub dirty: bool,
    pub handles: usize,
    /// Handles open for writing.
    pub writers: usize,
    /// A time set by utimens while data was unsent, applied after the upload.
    pub pending_mtime: Option<SystemTime>,
    pub pending_mode: Option<u32>,
    /// When the mount last changed the data (shown as the mtime while unsent).
    pub modified: Option<SystemTime>,
    /// Created through the mount and not uploaded yet.
    pub is_new: bool,
    /// Upload running while the file is written sequentially from offset 0.
    pub stream: Option<StreamUpload>,
    /// A stream was tried since the last upload (not restarted after a seek).
    pub stream_tried: bool,
    /// A local write to the spool failed (errno): the data a program wrote is
    /// incomplete, so nothing of it is uploaded; every write, fsync and close of
    /// the file returns this until its last handle is closed.
    pub failed: Option<i32>,
    /// What the server had under the name when the unsent data began.
    pub base: Base,
    /// The journal record of the unsent data (see `journal.rs`).
    pub record: Option<Record>,
    /// The last release took this state out of the open files, clean (or with
    /// its data kept locally): whoever still holds it looks the file up again.
    pub gone: bool,
    /// Network work for this file runs outside the lock (see the module header).
    busy: bool,
    /// Abandoned streams whose partial uploads still have to be removed.
    to_abort: Vec<StreamUpload>,
}

impl FileState {
    /// Network work for the file runs now (its lock is let go meanwhile).
    pub fn is_busy(&self) -> bool {
        self.busy
    }

    /// Abandons the streaming upload: queued for [`OpenFile::settle`].
    pub fn abandon_stream(&mut self) {
        if let Some(s) = self.stream.take() {
            self.to_abort.push(s);
        }
    }

    /// Queues `stream` (taken out of `stream`) for [`OpenFile::settle`] to abort.
    pub fn queue_abort(&mut self, stream: StreamUpload) {
        self.to_abort.push(stream);
    }

    /// Tests (a crash): forgets the streams without touching the server.
    #[cfg(test)]
    pub fn forget_streams(&mut self) {
        if let Some(s) = self.stream.take() {
            std::mem::forget(s);
        }
        for s in self.to_abort.drain(..) {
            std::mem::forget(s);
        }
    }
}

/// One file's state and the condition variable its waiters sleep on.
pub struct OpenFile {
    state: Mutex<FileState>,
    /// The file stopped being busy.
    idle: Condvar,
}

/// Longest single wait for a busy file (the operation's deadline bounds the whole).
const IDLE_WAIT: Duration = Duration::from_secs(1);

impl Default for OpenFile {
    fn default() -> Self {
        Self::new()
    }
}

impl OpenFile {
    pub fn new() -> Self {
        OpenFile {
            state: Mutex::new(FileState {
                spool: None,
                dirty: false,
                handles: 0,
                writers: 0,
                pending_mtime: None,
                pending_mode: None,
                modified: None,
                is_new: false,
                stream: None,
                stream_tried: false,
                failed: None,
                base: Base::Absent,
                record: None,
                gone: false,
                busy: false,
                to_abort: Vec::new(),
            }),
            idle: Condvar::new(),
        }
    }

    /// The state, for memory-only work; never waits for the network.
    pub fn lock(&self) -> MutexGuard<'_, FileState> {
        crate::sync::lock(&self.state)
    }

    /// The state once no network work runs for the file; `ETIMEDOUT` when the
    /// operation's deadline passes first.
    pub fn lock_idle(&self) -> FsResult<MutexGuard<'_, FileState>> {
        let mut st = self.lock();
        while st.busy {
            if crate::deadline::expired() {
                return Err(Errno(libc::ETIMEDOUT));
            }
            st = self
                .idle
                .wait_timeout(st, crate::deadline::bound(IDLE_WAIT))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(st)
    }

    /// Runs `work` (network I/O) with the file marked busy and its lock released;
    /// returns the lock, taken again, and the work's result.
    pub fn unlocked<'a, T>(
        &'a self,
        mut st: MutexGuard<'a, FileState>,
        work: impl FnOnce() -> T,
    ) -> (MutexGuard<'a, FileState>, T) {
        st.busy = true;
        drop(st);
        let out = work();
        let mut st = self.lock();
        st.busy = false;
        self.idle.notify_all();
        (st, out)
    }

    /// Aborts the streams abandoned so far (deleting their partial uploads)
    /// outside the lock; returns the lock, idle and with nothing left to abort.
    pub fn settle<'a>(
        &'a self,
        mut st: MutexGuard<'a, FileState>,
        store: &dyn RemoteStore,
    ) -> MutexGuard<'a, FileState> {
        // Taken without waiting for the file to be idle (a caller out of time):
        // the aborts wait for the next caller that gets it idle.
        if st.busy {
            return st;
        }
        while !st.to_abort.is_empty() {
            let streams = std::mem::take(&mut st.to_abort);
            st = self
                .unlocked(st, || {
                    for s in streams {
                        s.abort(store);
                    }
                })
                .0;
        }
        st
    }
}
