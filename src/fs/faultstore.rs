//! A failure-injecting [`RemoteStore`] over [`MemStore`], for the unit tests of the
//! filesystem: downloads cut after some bytes, uploads cut (leaving the partial
//! file a server keeps), refused renames, and failures of the next call of a kind.
//! The mount's probe of upload resuming (`uploader::probe_resume`) meets the
//! server's abilities (no resume, append only) but none of the faults aimed at
//! the files under test.

use super::error::{Refusal, StoreError, StoreResult as Result};
use super::memstore::MemStore;
use super::store::RemoteStore;
use super::uploader::is_probe;
use crate::ftp::RemoteEntry;
use std::io::BufRead;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

#[derive(Default)]
pub struct FaultStore {
    pub inner: MemStore,
    /// Downloads stop with a lost connection after this many bytes (0: off)...
    pub cut_reads_after: AtomicU64,
    /// ...this many more times (u32::MAX: always).
    pub cut_reads_times: AtomicU32,
    /// Uploads stop with a lost connection after this many bytes, leaving them on
    /// the server (0: off), this many more times.
    pub cut_uploads_after: AtomicU64,
    pub cut_uploads_times: AtomicU32,
    /// At a cut, the server keeps this many bytes fewer than it was sent (it
    /// lost what it had buffered: a crash of the server).
    pub cut_loses: AtomicU64,
    /// The server cannot resume uploads (no REST STREAM, APPE refused).
    pub no_resume: AtomicBool,
    /// Resumed uploads so far (REST+STOR or APPE).
    pub resumes: AtomicU32,
    /// The server has no REST STREAM: a resume appends (APPE) at the end of the
    /// file as it is when the transfer starts, and only where the client allows
    /// an append (`resume_file`'s `append`).
    pub append_only: AtomicBool,
    /// At the next cut, the server's old transfer still holds this many of the
    /// bytes it kept (a session that has not noticed the cut yet): they reach the
    /// file at their offsets only when the next resumed transfer starts, after
    /// the client's SIZE said they were not there.
    pub cut_late: AtomicU64,
    late: Mutex<Option<(String, u64, Vec<u8>)>>,
    /// A cut is a stall: the transfer hangs until the thread's deadline passes
    /// and fails with a timeout (a dead network path, not a reset).
    pub cut_stalls: AtomicBool,
    /// Bytes the server received in all uploads (to see what was sent twice).
    pub uploaded_bytes: AtomicU64,
    /// Every rename is refused (550), as on an account without rename permission.
    pub refuse_renames: AtomicBool,
    /// The next call whose name is listed fails with a lost connection.
    pub fail_next: Mutex<Vec<&'static str>>,
    /// Uploads take this long before they store anything (a slow link), ms.
    pub upload_delay_ms: AtomicU64,
    /// The resume probe's first upload takes this long (a loaded server), ms.
    pub probe_delay_ms: AtomicU64,
    /// Downloads send nothing for this long first (a stalled server), ms.
    pub read_stall_ms: AtomicU64,
    /// Every call whose name is listed is refused by the server (550), as by one
    /// that cannot do it or does not let this account: "list", "rmdir", "chmod",
    /// "set_mtime" (any path), "set_mtime_dir" (directories only).
    pub refuse: Mutex<Vec<&'static str>>,
    /// Every call whose name is listed is answered "not implemented" (502).
    pub unimplemented: Mutex<Vec<&'static str>>,
    /// A cut upload's STOR was held in the network: it reaches the server after
    /// the next upload has stored its bytes, and truncates the name it was for
    /// (its connection was given up, so no data follows), as a late STOR does.
    pub late_stor: AtomicBool,
    late_stor_name: Mutex<Option<String>>,
    /// A server's clock: listings carry whole seconds, and a change in a
    /// directory (a new file, mkdir, delete, rmdir, rename) sets its time.
    pub server_clock: AtomicBool,
    /// A change takes effect at once and its reply comes this long after (a
    /// slow final reply), ms.
    pub reply_delay_ms: AtomicU64,
    /// chmod calls, refused or not.
    pub chmods_tried: AtomicU32,
    /// The modes set by chmod, in order.
    pub chmods: Mutex<Vec<(String, u32)>>,
}

/// `t` cut to whole seconds, as MLSD and MDTM give it.
fn whole_seconds(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs)
}

fn lost(what: &str) -> StoreError {
    StoreError::Lost(format!("{what}: connection reset (injected)"))
}

impl FaultStore {
    pub fn new() -> Self {
        FaultStore {
            inner: MemStore::new(),
            ..Default::default()
        }
    }

    fn refused(&self, op: &str) -> Result<()> {
        if crate::sync::lock(&self.unimplemented).contains(&op) {
            return Err(StoreError::refused(
                Refusal::NotImplemented,
                format!(
                    "server refused {}: 502 not implemented (injected)",
                    op.to_uppercase()
                ),
            ));
        }
        let refuse = crate::sync::lock(&self.refuse);
        if refuse.contains(&op) {
            return Err(StoreError::refused(
                Refusal::Denied,
                format!(
                    "server refused {}: 550 Permission denied (injected)",
                    op.to_uppercase()
                ),
            ));
        }
        Ok(())
    }

    fn take_failure(&self, op: &str) -> Result<()> {
        let mut next = crate::sync::lock(&self.fail_next);
        if let Some(i) = next.iter().position(|o| *o == op) {
            next.remove(i);
            return Err(lost(op));
        }
        Ok(())
    }

    /// After a change to `paths` that succeeded: with `server_clock`, their
    /// directories take the time of the change; with `reply_delay_ms`, the reply
    /// comes late.
    fn answer<T>(&self, paths: &[&str], r: Result<T>) -> Result<T> {
        if r.is_ok() && self.server_clock.load(Ordering::SeqCst) {
            let now = SystemTime::now();
            for (dir, _) in paths.iter().filter_map(|p| crate::fs::store::split(p)) {
                let _ = self.inner.set_mtime(dir, now);
            }
        }
        let delay = self.reply_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(std::time::Duration::from_millis(delay));
        }
        r
    }

    /// Takes one use of a "cut after N, so many times" fault; the N if it applies.
    fn take_cut(after: &AtomicU64, times: &AtomicU32) -> Option<u64> {
        let n = after.load(Ordering::SeqCst);
        if n == 0 {
            return None;
        }
        let t = times.load(Ordering::SeqCst);
        if t == 0 {
            return None;
        }
        if t != u32::MAX {
            times.store(t - 1, Ordering::SeqCst);
        }
        Some(n)
    }
}

impl FaultStore {
    /// An upload (from `offset`: a resumed one), cut as configured: the cut reads
    /// only what it keeps (a connection that drops mid-stream), stores that and
    /// fails.
    fn upload(&self, path: &str, offset: u64, data: &mut dyn BufRead) -> Result<u64> {
        // The mount's probe of upload resuming (`uploader::probe_resume`) meets the
        // server's abilities (`no_resume`, `append_only`) but not the faults aimed
        // at the file under test.
        let probe = is_probe(path);
        let cut = match probe {
            true => None,
            false => Self::take_cut(&self.cut_uploads_after, &self.cut_uploads_times),
        };
        let Some(limit) = cut else {
            let n = if offset == 0 {
                self.inner.write_file(path, data)?
            } else {
                let at = self.resume_point(path, offset)?;
                self.inner.resume_file(path, at, data, true)?
            };
            if !probe {
                self.uploaded_bytes.fetch_add(n, Ordering::SeqCst);
                if let Some(late) = crate::sync::lock(&self.late_stor_name).take() {
                    self.inner.put(&late, b"");
                }
            }
            return Ok(n);
        };
        if self.late_stor.load(Ordering::SeqCst) {
            *crate::sync::lock(&self.late_stor_name) = Some(path.to_string());
        }
        let mut got = Vec::new();
        while (got.len() as u64) < limit {
            let chunk = data
                .fill_buf()
                .map_err(|e| StoreError::local("reading the upload", e))?;
            if chunk.is_empty() {
                break;
            }
            let n = chunk.len().min((limit - got.len() as u64) as usize);
            got.extend_from_slice(&chunk[..n]);
            data.consume(n);
        }
        self.uploaded_bytes
            .fetch_add(got.len() as u64, Ordering::SeqCst);
        let lose = self.cut_loses.load(Ordering::SeqCst) as usize;
        got.truncate(got.len().saturating_sub(lose));
        let late = (self.cut_late.swap(0, Ordering::SeqCst) as usize).min(got.len());
        let held_back = got.split_off(got.len() - late);
        let start = if offset == 0 {
            self.inner.put(path, &got);
            0
        } else {
            let at = self.resume_point(path, offset)?;
            self.inner
                .resume_file(path, at, &mut std::io::Cursor::new(&got), true)?;
            at
        };
        if !held_back.is_empty() {
            *crate::sync::lock(&self.late) =
                Some((path.to_string(), start + got.len() as u64, held_back));
        }
        if self.cut_stalls.load(Ordering::SeqCst) {
            while !crate::deadline::expired() {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            return Err(StoreError::Timeout(
                "STOR: no progress (injected stall)".into(),
            ));
        }
        Err(lost("STOR"))
    }

    /// Like the FTP store, whose every wait consults the thread's deadline: an
    /// operation on a thread out of time fails at once.
    fn in_time(&self, what: &str) -> Result<()> {
        if crate::deadline::expired() {
            return Err(StoreError::Timeout(format!("{what}: deadline passed")));
        }
        Ok(())
    }

    /// Where a resumed transfer writes: `offset` (REST), or the end of the file
    /// (APPE on an `append_only` server).
    fn resume_point(&self, path: &str, offset: u64) -> Result<u64> {
        if self.append_only.load(Ordering::SeqCst) {
            return self.inner.size(path);
        }
        Ok(offset)
    }
}

impl RemoteStore for FaultStore {
    fn list(&self, dir: &str) -> Result<Vec<RemoteEntry>> {
        self.take_failure("list")?;
        self.refused("list")?;
        let mut entries = self.inner.list(dir)?;
        if self.server_clock.load(Ordering::SeqCst) {
            for e in &mut entries {
                e.mtime = e.mtime.map(whole_seconds);
            }
        }
        Ok(entries)
    }

    fn read_from(
        &self,
        path: &str,
        offset: u64,
        sink: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<()> {
        self.take_failure("read")?;
        let stall = self.read_stall_ms.load(Ordering::SeqCst);
        if stall > 0 {
            std::thread::sleep(std::time::Duration::from_millis(stall));
        }
        let Some(limit) = Self::take_cut(&self.cut_reads_after, &self.cut_reads_times) else {
            return self.inner.read_from(path, offset, sink);
        };
        let mut sent = 0u64;
        let mut cut = false;
        self.inner.read_from(path, offset, &mut |chunk| {
            let room = (limit - sent) as usize;
            if chunk.len() >= room {
                cut = true;
                if room > 0 {
                    sink(&chunk[..room]);
                }
                return false;
            }
            sent += chunk.len() as u64;
            sink(chunk)
        })?;
        if cut {
            return Err(lost("RETR"));
        }
        Ok(())
    }

    fn write_file(&self, path: &str, data: &mut dyn BufRead) -> Result<u64> {
        if is_probe(path) {
            let delay = self.probe_delay_ms.load(Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(delay));
            return self.upload(path, 0, data);
        }
        self.take_failure("write")?;
        let delay = self.upload_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(std::time::Duration::from_millis(delay));
        }
        let new_name = self.inner.get(path).is_none();
        let r = self.upload(path, 0, data);
        let created = [path];
        self.answer(if new_name { &created[..] } else { &[] }, r)
    }

    fn size(&self, path: &str) -> Result<u64> {
        if !is_probe(path) {
            self.take_failure("size")?;
        }
        self.in_time("SIZE")?;
        self.inner.size(path)
    }

    fn resume_file(
        &self,
        path: &str,
        offset: u64,
        data: &mut dyn BufRead,
        append: bool,
    ) -> Result<u64> {
        if !is_probe(path) {
            self.take_failure("resume")?;
        }
        self.in_time("REST")?;
        if self.append_only.load(Ordering::SeqCst) && !append {
            return Err(StoreError::refused(
                Refusal::NotImplemented,
                "no REST STREAM, and APPE not allowed here (injected)",
            ));
        }
        // The old transfer's late bytes land now, after the client's SIZE.
        if let Some((p, at, bytes)) = crate::sync::lock(&self.late).take() {
            if p == path {
                let _ = self
                    .inner
                    .resume_file(path, at, &mut std::io::Cursor::new(bytes), true);
            }
        }
        if self.no_resume.load(Ordering::SeqCst) {
            return Err(StoreError::refused(
                Refusal::NotImplemented,
                "502 REST not implemented (injected)",
            ));
        }
        if !is_probe(path) {
            self.resumes.fetch_add(1, Ordering::SeqCst);
        }
        self.upload(path, offset, data)
    }

    fn delete(&self, path: &str) -> Result<()> {
        self.take_failure("delete")?;
        self.answer(&[path], self.inner.delete(path))
    }

    fn mkdir(&self, path: &str) -> Result<()> {
        self.answer(&[path], self.inner.mkdir(path))
    }

    fn rmdir(&self, path: &str) -> Result<()> {
        self.refused("rmdir")?;
        self.answer(&[path], self.inner.rmdir(path))
    }

    fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.take_failure("rename")?;
        if self.refuse_renames.load(Ordering::SeqCst) {
            return Err(StoreError::refused(
                Refusal::Denied,
                "server refused RNFR: 550 Permission denied",
            ));
        }
        self.answer(&[from, to], self.inner.rename(from, to))
    }

    fn chmod(&self, path: &str, mode: u32) -> Result<()> {
        self.chmods_tried.fetch_add(1, Ordering::SeqCst);
        self.refused("chmod")?;
        crate::sync::lock(&self.chmods).push((path.to_string(), mode));
        self.inner.chmod(path, mode)
    }

    fn set_mtime(&self, path: &str, mtime: SystemTime) -> Result<()> {
        self.refused("set_mtime")?;
        if self.inner.is_dir(path) {
            self.refused("set_mtime_dir")?;
        }
        self.inner.set_mtime(path, mtime)
    }

    fn is_contended(&self) -> bool {
        self.inner.is_contended()
    }
}
