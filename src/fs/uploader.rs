//! Uploads: a file's spool (see `spool.rs`) to the server, and streaming uploads.
//!
//! Design: on flush/fsync/release the spool of a file is uploaded to a temporary
//! name in the same directory and renamed over the real name (RNFR/RNTO), so an
//! interrupted upload never replaces a good file with half of a new one, and a name
//! appears only with its complete content. New files go that way too: a `STOR` the
//! network held back, reaching the server after the mount gave its connection up,
//! can then only truncate a temporary name. `inplace` uploads every file straight
//! to its name; on a server that refuses rename (learnt at the first refusal) a new
//! file goes to its own name and a failed upload deletes what it wrote
//! (`Target::NewFile`), so the name is free again. A file written sequentially from
//! offset 0 (cp, dd, tar, rsync's temporary files) is also streamed to the server
//! while it is written ([`StreamUpload`]), so close() waits only for the tail; the
//! spool still gets every byte and is uploaded instead if the stream fails or the
//! writer seeks. If the upload fails, the error goes back to close()/fsync() and
//! the spool file is kept on disk, its path logged: nothing a program was told was
//! written is lost.
//!
//! Bounded spools (`spool_window=SIZE`, default 64 MiB; `all` or 0: off). A
//! sequential writer from offset 0 (tar, pg_dump, dd, a video) no longer needs as
//! much free disk as its file: once the stream has taken more than the window less
//! 5 MiB into its connection, the spool drops (punches holes over) the bytes
//! before `taken - (window - 5 MiB)`, in whole 1 MiB blocks; the writer is never
//! more than `WINDOW_SLACK` (4 MiB) ahead of the transfer, so the spool holds at
//! most the window at any time. Settled points:
//! - *What may be dropped*: only bytes the server holds. Bytes written into the
//!   data socket are not held until the server stores them; all but 5 MiB of the
//!   window (≥ 11 MiB; 59 MiB by default) is kept behind what was taken, which
//!   covers what can be in flight (socket buffers on both sides, TLS records, a
//!   proxy's queue: about 10 MiB through the test forwarder on loopback). A server that lost more than
//!   that (it crashed) is found out at the resume, which then fails: never a guess.
//! - *A cut* (lost connection, timeout): the upload thread asks SIZE of the
//!   temporary file and, when it holds every dropped byte, continues with
//!   `REST n` and `STOR` (REST STREAM servers; same bytes at the same offsets even if the cut
//!   transfer is still being written out), else `APPE` once two SIZEs a moment
//!   apart agree on exactly `n`, and only to resume the first transfer (a cut
//!   APPE session that has not noticed its cut can still append bytes after the
//!   client's SIZE; a second APPE would land after them, shifted, with the right
//!   final length: a second cut on such a server fails the file); the bytes from `n` are re-sent from the spool file
//!   (so a bounded spool is written through the page cache, readable from another
//!   handle at once), then the feed goes on. The server's SIZE after a resumed
//!   transfer must equal the program's length. Up to `MAX_RESUMES` cuts in a row.
//!   The writer waits (bounded by its deadline) while it is 4 MiB ahead of the
//!   transfer; it never drops unsent bytes. If resuming is impossible, the
//!   file fails with EIO at the next write/fsync/close (as after a local write
//!   error), the temporary upload is removed and the server keeps its old file.
//!   Before anything was dropped a failed stream falls back to the spool as
//!   before, so small files behave as with `spool_window=all`.
//! - *Out of sequence after a drop* (a seek back, a read of the dropped start, a
//!   truncation, a write after an fsync): the stream is finished up to the current
//!   length (the temporary file then holds exactly the program's bytes so far), the
//!   dropped start is fetched back from it (RETR) into the spool's hole, the
//!   temporary file removed, and the file goes on as a plain spooled file (it needs
//!   its full size on disk from then on). After an fsync the start comes back from
//!   the file itself. Finishing first (instead of fetching a partial upload) means
//!   the bytes fetched are the ones the server confirmed with its 226. Failure: EIO.
//! - *Crash*: a bounded spool cannot finish an upload, so before the first drop its
//!   journal record says `dropped`, durably; recovery then removes the partial
//!   upload and reports the data lost (the program never got a successful close).
//!   The stream goes to a temporary name like any upload; to the file's own name
//!   only with `inplace` or on a server that refuses rename, where the journal
//!   record is durable before the first byte, so that the next mount can tell a
//!   partial file left there by a crash from a complete one.

use super::error::{StoreError, StoreResult as Result};
use super::spool::Spool;
use super::store::{join, split, RemoteStore};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Read size when uploading a spool file.
const UPLOAD_BUF: usize = 256 * 1024;

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The temporary name an upload of `path` goes to before its rename.
pub fn temp_name(path: &str) -> String {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let (dir, name) = split(path).unwrap_or(("/", "file"));
    let short: String = name.chars().take(100).collect();
    join(
        dir,
        &format!(".{short}.ftpsfs-{}-{n}.part", std::process::id()),
    )
}

/// The name the probe of upload resuming uses, in its temporary form.
const PROBE_NAME: &str = "resume-probe";

/// The temporary name of the probe of upload resuming in the directory of `path`.
pub fn probe_name(path: &str) -> String {
    let dir = split(path).map_or("/", |(d, _)| d);
    temp_name(&join(dir, PROBE_NAME))
}

/// True for a path [`probe_name`] made (tests tell the probe from the files
/// under test with it).
#[cfg(test)]
pub fn is_probe(path: &str) -> bool {
    split(path).is_some_and(|(_, name)| name.starts_with(&format!(".{PROBE_NAME}.ftpsfs-")))
}

/// Whether the server resumes an interrupted upload: a 2-byte file at `name`,
/// then 2 more bytes sent as a resumed upload from offset 2 (REST + STOR, or
/// APPE: what a cut bounded stream would do), checked with SIZE; the file is
/// removed after. Any failure counts as "cannot" (spools then keep every byte).
pub fn probe_resume(store: &dyn RemoteStore, name: &str) -> bool {
    let result = store
        .write_file(name, &mut &b"ft"[..])
        .and_then(|_| store.resume_file(name, 2, &mut &b"ps"[..], true))
        .and_then(|_| store.size(name));
    if let Err(e) = store.delete(name) {
        log::debug!("removing the resume probe {name}: {e}");
    }
    match result {
        Ok(4) => true,
        Ok(n) => {
            log::info!("resume probe: the server holds {n} bytes instead of 4");
            false
        }
        Err(e) => {
            log::info!("resume probe: {e}");
            false
        }
    }
}

/// Where an upload writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A temporary name beside the file, renamed over it once complete.
    Temp,
    /// The file's own name, which was free: a failed upload deletes what it wrote.
    NewFile,
    /// The file's own name, left as the server has it after a failure (`inplace`).
    InPlace,
}

/// The remote name an upload of `path` with `target` writes first (a fresh
/// temporary name for `Temp`).
pub fn upload_name(path: &str, target: Target) -> String {
    match target {
        Target::Temp => temp_name(path),
        Target::NewFile | Target::InPlace => path.to_string(),
    }
}

/// Uploads the spool as the content of `path`. `before(name)` is called with the
/// remote name about to be written, before its first byte is sent (the journal
/// records it durably); an error there stops the upload.
pub fn upload(
    store: &dyn RemoteStore,
    spool: &mut Spool,
    path: &str,
    target: Target,
    before: &mut dyn FnMut(&str) -> Result<()>,
) -> Result<()> {
    let len = spool.len();
    let mut file = spool.reader()?;
    upload_from(store, &mut file, len, path, target, before)
}

/// [`upload`] of the first `len` bytes of `source` (a spool's bytes, read through
/// a handle of their own, so the spool itself stays free for its owner).
pub fn upload_from(
    store: &dyn RemoteStore,
    source: &mut std::fs::File,
    len: u64,
    path: &str,
    target: Target,
    before: &mut dyn FnMut(&str) -> Result<()>,
) -> Result<()> {
    let name = upload_name(path, target);
    before(&name)?;
    let mut reader = BufReader::with_capacity(UPLOAD_BUF, source.take(len));
    let stored = store
        .write_file(&name, &mut reader)
        .and_then(|n| check_len(n, len, path));
    if let Err(e) = stored {
        if target != Target::InPlace {
            let _ = store.delete(&name);
        }
        return Err(e);
    }
    if target == Target::Temp {
        return commit(store, &name, path);
    }
    Ok(())
}

/// No journal: for uploads that need no record (tests, recovery itself).
pub fn no_journal(_: &str) -> Result<()> {
    Ok(())
}

/// Renames an uploaded temporary file over `path`; removes it if that fails. The
/// file under `path` is never deleted first: if the rename is refused, the old
/// content stays and the caller still has the new one in its spool.
/// A refused rename comes back as [`StoreError::RenameRefused`].
pub fn commit(store: &dyn RemoteStore, tmp: &str, path: &str) -> Result<()> {
    if let Err(e) = store.rename(tmp, path) {
        let _ = store.delete(tmp);
        return Err(e.into_rename_refusal());
    }
    Ok(())
}

/// True when the server refused a rename (an account or a server without rename
/// permission), as opposed to a lost connection: uploads then go in place.
pub fn is_rename_refusal(e: &StoreError) -> bool {
    matches!(e, StoreError::RenameRefused { .. })
}

/// The queue between a writer and its streaming upload: at most `STREAM_DEPTH`
/// chunks; consumed buffers come back for reuse (no allocation per write).
#[derive(Default)]
struct FeedState {
    chunks: VecDeque<Vec<u8>>,
    spare: Vec<Vec<u8>>,
    /// The writer is done: the upload ends after the last chunk.
    closed: bool,
    /// The upload is abandoned: it fails instead of completing.
    aborted: bool,
    /// The upload thread stopped reading (it failed or ended).
    reader_gone: bool,
    /// Bounded stream: the spool may drop the bytes before this offset (the
    /// writer raises it, under this lock, before it punches; see the header).
    dropped: u64,
    /// The upload thread is resuming after a cut: nothing more is dropped until
    /// it has asked the server what it holds.
    resuming: bool,
    /// The stream gave its connection up (a quiet writer): it cannot resume.
    gave_up: bool,
}

#[derive(Default)]
struct Feed {
    state: Mutex<FeedState>,
    /// Bytes of the file the current transfer has taken into its connection
    /// (only grows between resumes).
    sent: AtomicU64,
    /// A chunk arrived, or the feed closed or aborted.
    filled: Condvar,
    /// A chunk was taken, or the reader is gone.
    drained: Condvar,
}

impl Feed {
    fn lock(&self) -> MutexGuard<'_, FeedState> {
        crate::sync::lock(&self.state)
    }
}

/// The upload thread's side of a [`Feed`]; an abandoned feed fails the read so
/// that the transfer is cut off rather than completed.
struct FeedReader {
    feed: Arc<Feed>,
    current: Vec<u8>,
    at: usize,
    /// File offset of `current[at]`: the next byte from the feed.
    next: u64,
    /// After a resume, the bytes between what the server holds and `next`,
    /// read back from the spool file first.
    replay: Option<Replay>,
    /// A bounded stream (see `Bounded`): it may resume, and may give its
    /// connection up only while nothing was dropped.
    bounded: bool,
    /// True while another operation waits for a connection: a stream whose writer
    /// has gone quiet then gives its connection up (the spool has every byte; the
    /// file is uploaded from it at close).
    contended: Box<dyn Fn() -> bool + Send>,
}

/// Bytes `pos..end` of the spool file, re-sent by a resumed upload.
struct Replay {
    file: std::fs::File,
    pos: u64,
    end: u64,
    buf: Vec<u8>,
    at: usize,
}

impl Replay {
    fn fill(&mut self) -> std::io::Result<&[u8]> {
        use std::os::unix::fs::FileExt;
        if self.at == self.buf.len() && self.pos < self.end {
            let n = (self.end - self.pos).min(UPLOAD_BUF as u64) as usize;
            self.buf.resize(n, 0);
            self.file.read_exact_at(&mut self.buf, self.pos)?;
            self.at = 0;
        }
        Ok(&self.buf[self.at..])
    }
}

impl BufRead for FeedReader {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        if self.replay.as_ref().is_some_and(|r| r.pos >= r.end) {
            self.replay = None;
        }
        if let Some(r) = self.replay.as_mut() {
            crate::deadline::progress();
            return r.fill();
        }
        if self.at == self.current.len() {
            let mut st = self.feed.lock();
            loop {
                if st.aborted {
                    return Err(std::io::Error::other("upload abandoned"));
                }
                if let Some(d) = st.chunks.pop_front() {
                    let done = std::mem::replace(&mut self.current, d);
                    st.spare.push(done);
                    self.at = 0;
                    break;
                }
                if st.closed {
                    return Ok(&[]);
                }
                let (guard, waited) = self
                    .feed
                    .filled
                    .wait_timeout(st, YIELD_AFTER)
                    .unwrap_or_else(|p| p.into_inner());
                st = guard;
                if waited.timed_out()
                    && st.chunks.is_empty()
                    && !st.closed
                    && (!self.bounded || st.dropped == 0)
                    && (self.contended)()
                {
                    st.gave_up = true;
                    return Err(std::io::Error::other(
                        "the writer is quiet and others need a connection: streaming given up",
                    ));
                }
            }
            drop(st);
            self.feed.drained.notify_all();
            // Waiting for the program to write is not a network stall.
            crate::deadline::progress();
        }
        Ok(&self.current[self.at..])
    }

    fn consume(&mut self, n: usize) {
        if let Some(r) = self.replay.as_mut() {
            let n = n.min(r.buf.len() - r.at);
            r.at += n;
            r.pos += n as u64;
            self.feed.sent.store(r.pos, Ordering::Release);
            self.feed.drained.notify_all();
            return;
        }
        let n = n.min(self.current.len() - self.at);
        self.at += n;
        self.next += n as u64;
        self.feed.sent.store(self.next, Ordering::Release);
        if self.bounded {
            self.feed.drained.notify_all();
        }
    }
}

impl Read for FeedReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let avail = self.fill_buf()?;
        let n = buf.len().min(avail.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl Drop for FeedReader {
    fn drop(&mut self) {
        self.feed.lock().reader_gone = true;
        self.feed.drained.notify_all();
    }
}

/// Chunks a streaming upload may have in flight (memory bound: `STREAM_DEPTH`
/// writes of up to 1 MiB per file being streamed). A/B on loopback: 3 and 32 upload
/// as fast as 8, so the smallest that keeps the pipe full.
const STREAM_DEPTH: usize = 3;

/// An upload that runs while a program writes a file sequentially from offset 0,
/// so that close() only waits for the tail instead of the whole file. The spool
/// still gets every byte: if the stream fails, stalls past the writer's deadline
/// or the writer seeks, it is abandoned and the spool is uploaded as usual. The
/// upload thread has its own deadline (`timeout` without progress).
pub struct StreamUpload {
    feed: Arc<Feed>,
    pos: u64,
    /// Bounded: the window (`spool_window=`).
    window: Option<u64>,
    /// The name written: a temporary one, or the file's own for a new file.
    tmp: String,
    /// Taken by `abort` and `finish`.
    worker: Option<std::thread::JoinHandle<Result<u64>>>,
}

impl Drop for StreamUpload {
    /// Dropped without `abort` or `finish` (never on purpose): the upload fails
    /// rather than completes, and its thread ends.
    fn drop(&mut self) {
        if self.worker.is_some() {
            self.feed.lock().aborted = true;
            self.feed.filled.notify_all();
        }
    }
}

impl StreamUpload {
    /// Starts uploading to `name`: a temporary name beside the file
    /// (`Target::Temp`) or the name of a new file (`Target::NewFile`; `InPlace`
    /// files are not streamed: an abandoned stream deletes what it wrote).
    /// `bounded`: the stream resumes after a cut and lets the spool drop what the
    /// server holds (see the module header).
    pub fn start(
        store: Arc<dyn RemoteStore>,
        name: &str,
        timeout: Duration,
        bounded: Option<Bounded>,
    ) -> Option<Self> {
        let feed = Arc::new(Feed::default());
        let tmp = name.to_string();
        let name = tmp.clone();
        let theirs = feed.clone();
        let window = bounded.as_ref().map(|b| b.window);
        let worker = std::thread::Builder::new()
            .name("ftpsfs-upload".into())
            .spawn(move || {
                let _deadline = crate::deadline::start(timeout);
                let waiters = store.clone();
                let mut reader = FeedReader {
                    feed: theirs,
                    current: Vec::new(),
                    at: 0,
                    next: 0,
                    replay: None,
                    bounded: bounded.is_some(),
                    contended: Box::new(move || waiters.is_contended()),
                };
                match bounded {
                    None => store.write_file(&name, &mut reader),
                    Some(b) => upload_resuming(store.as_ref(), &name, &mut reader, &b),
                }
            })
            .ok()?;
        Some(StreamUpload {
            feed,
            pos: 0,
            window,
            tmp,
            worker: Some(worker),
        })
    }

    /// Bounded stream: how many bytes at the start of the file the spool may drop
    /// now (a multiple of the spool's block; 0 while none): those the transfer
    /// took into its connection more than a window less `WINDOW_SLACK` ago, which the server
    /// holds unless it lost them (a resume then finds out, and fails). Recorded
    /// under the feed's lock before the caller punches, so a resume sees it.
    pub fn droppable(&self) -> u64 {
        let Some(window) = self.window else {
            return 0;
        };
        let mut st = self.feed.lock();
        if st.resuming || st.gave_up || st.reader_gone || st.aborted {
            return st.dropped;
        }
        let sent = self.feed.sent.load(Ordering::Acquire).min(self.pos);
        let block = super::spool::BLOCK as u64;
        let d = sent.saturating_sub(window.saturating_sub(WINDOW_SLACK + block)) / block * block;
        if d > st.dropped {
            st.dropped = d;
        }
        st.dropped
    }

    /// True for a stream with a bounded spool (`spool_window=`).
    pub fn is_bounded(&self) -> bool {
        self.window.is_some()
    }

    /// Bytes streamed so far (the next sequential offset).
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// Sends the next bytes, waiting while `STREAM_DEPTH` chunks are queued (at
    /// most until the operation's deadline); false when the stream is broken or
    /// too slow (abandon it: the spool has the bytes).
    pub fn push(&mut self, data: &[u8]) -> bool {
        let mut st = self.feed.lock();
        let ahead = |st: &FeedState| {
            // Bounded: the writer stays within half a window of what the
            // transfer took (after a resume, until it has caught up again).
            self.window.is_some_and(|w| {
                !st.chunks.is_empty()
                    && self
                        .pos
                        .saturating_sub(self.feed.sent.load(Ordering::Acquire))
                        >= w / 2
            })
        };
        while st.chunks.len() >= STREAM_DEPTH || ahead(&st) {
            if st.reader_gone || st.aborted || crate::deadline::expired() {
                return false;
            }
            st = self
                .feed
                .drained
                .wait_timeout(st, crate::deadline::bound(PUSH_WAIT))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        if st.reader_gone || st.aborted {
            return false;
        }
        let mut buf = st.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(data);
        st.chunks.push_back(buf);
        drop(st);
        self.feed.filled.notify_all();
        self.pos += data.len() as u64;
        true
    }

    /// Abandons the stream and removes what it stored.
    pub fn abort(mut self, store: &dyn RemoteStore) {
        self.feed.lock().aborted = true;
        self.feed.filled.notify_all();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
        let _ = store.delete(&self.tmp);
    }

    /// Ends the stream; Ok(the name written) when the server has all `expected`
    /// bytes. The caller renames it over the file unless it is the file's own name.
    pub fn finish(mut self, store: &dyn RemoteStore, expected: u64) -> Result<String> {
        self.feed.lock().closed = true;
        self.feed.filled.notify_all();
        let stored = match self.worker.take().map(|w| w.join()) {
            Some(Ok(r)) => r,
            _ => Err(StoreError::Failed("upload thread panicked".into())),
        };
        match stored.and_then(|n| check_len(n, expected, &self.tmp)) {
            Ok(()) => Ok(std::mem::take(&mut self.tmp)),
            Err(e) => {
                let _ = store.delete(&self.tmp);
                Err(e)
            }
        }
    }
}

/// What a bounded stream needs: the spool file it re-sends from after a cut,
/// and the window (`spool_window=`).
pub struct Bounded {
    pub spool: std::path::PathBuf,
    pub window: u64,
}

/// The part of a bounded window not kept as the bytes that may be in flight: the
/// writer is never more than this ahead of the transfer (the queued chunks, the
/// one being sent); one more spool block goes to rounding drops down to blocks.
const WINDOW_SLACK: u64 = 4 << 20;

/// Cuts in a row (without a window's progress in between) a bounded stream
/// resumes after before it fails.
const MAX_RESUMES: u32 = 5;

/// The upload thread of a bounded stream: the transfer, resumed after a cut
/// where the server holds every dropped byte (SIZE of the partial file; REST +
/// STOR or APPE from there, re-sending the rest from the spool file). Returns
/// the bytes the server holds at the end.
fn upload_resuming(
    store: &dyn RemoteStore,
    name: &str,
    reader: &mut FeedReader,
    b: &Bounded,
) -> Result<u64> {
    let feed = reader.feed.clone();
    let mut at = 0u64;
    let mut failures = 0u32;
    let mut resumed = false;
    loop {
        let r = if at == 0 && failures == 0 {
            store.write_file(name, reader)
        } else {
            // APPE (servers without REST STREAM) only to resume the first STOR:
            // a cut APPE session that has not noticed its cut yet can still
            // append bytes it holds after the client's SIZE, and a second APPE
            // would then land after them, shifted (REST + STOR writes at explicit
            // offsets, where late bytes of an old session are the same bytes).
            let append = !resumed;
            resumed = true;
            store.resume_file(name, at, reader, append)
        };
        let e = match r {
            Ok(n) if failures == 0 && at == 0 => return Ok(n),
            Ok(n) => {
                // Resumed: the server's own count is the proof.
                let held = store.size(name)?;
                if held != at + n {
                    return Err(StoreError::Lost(format!(
                        "{name}: the server holds {held} bytes after a resumed upload of {}",
                        at + n
                    )));
                }
                return Ok(held);
            }
            Err(e) => e,
        };
        let sent = feed.sent.load(Ordering::Acquire);
        if sent >= at + b.window {
            failures = 0;
        }
        let (dropped, stop, closed) = {
            let mut st = feed.lock();
            st.resuming = true;
            (st.dropped, st.aborted || st.gave_up, st.closed)
        };
        failures += 1;
        if stop || !e.is_resumable() || failures > MAX_RESUMES {
            return Err(e);
        }
        log::info!("upload of {name} cut at {sent} bytes ({e}); resuming");
        // While the program is still writing, a fresh `timeout=` for the resume:
        // a cut found by a stall left this thread's deadline passed, and every
        // wait would fail at once (bounded by MAX_RESUMES; a writer waiting keeps
        // its own deadline). Once the program has closed the file, its close()
        // waits for this thread: no fresh deadline then, so close() returns
        // within its own `timeout=` (with an error if the stall outlasts it).
        if !closed {
            crate::deadline::progress();
        }
        let held = store.size(name)?;
        let next = reader.next;
        if held < dropped || held > next {
            return Err(StoreError::Lost(format!(
                "{name}: cut ({e}) and the server holds {held} bytes; cannot resume: \
                 {dropped} bytes are no longer kept locally (spool_window=)"
            )));
        }
        let file = std::fs::File::open(&b.spool)
            .map_err(|e| StoreError::local("reading the spool file", e))?;
        reader.replay = Some(Replay {
            file,
            pos: held,
            end: next,
            buf: Vec::new(),
            at: 0,
        });
        feed.sent.store(held, Ordering::Release);
        at = held;
        feed.lock().resuming = false;
    }
}

/// Longest single wait of a push for room in the queue (the deadline bounds the
/// whole).
const PUSH_WAIT: Duration = Duration::from_secs(1);

/// A stream whose writer sent nothing for this long gives its connection up when
/// another operation waits for one.
const YIELD_AFTER: Duration = Duration::from_millis(500);

fn check_len(sent: u64, expected: u64, path: &str) -> Result<()> {
    if sent != expected {
        return Err(StoreError::Lost(format!(
            "{path}: sent {sent} of {expected} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::memstore::MemStore;

    #[test]
    fn probe_names_are_told_from_files() {
        assert!(is_probe(&probe_name("/d/some file")));
        assert!(is_probe(&probe_name("/top")));
        assert!(!is_probe("/d/resume-probe"));
        assert!(!is_probe(&temp_name("/d/resume-probe.txt")));
        assert!(!is_probe(&temp_name("/d/file")));
    }

    #[test]
    fn upload_goes_through_a_temporary_name() {
        let store = MemStore::new();
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::new(dir.path()).unwrap();
        s.write_at(5, b"world").unwrap();
        s.write_at(0, b"hello").unwrap();
        upload(&store, &mut s, "/f", Target::Temp, &mut no_journal).unwrap();
        assert_eq!(store.get("/f").unwrap(), b"helloworld");
        assert_eq!(
            store.paths(),
            vec!["/".to_string(), "/f".to_string()],
            "no temp file left"
        );
    }

    #[test]
    fn failed_upload_leaves_the_old_file_and_no_temp() {
        let store = MemStore::new();
        store.put("/f", b"old");
        *store.fail_uploads_matching.lock().unwrap() = Some(".part".into());
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::new(dir.path()).unwrap();
        s.write_at(0, b"new").unwrap();
        let e = upload(&store, &mut s, "/f", Target::Temp, &mut no_journal).unwrap_err();
        assert_eq!(e.errno(), libc::EACCES);
        assert_eq!(store.get("/f").unwrap(), b"old");
        let kept = s.keep();
        s.discard();
        assert!(kept.exists(), "spool kept after failure");
    }

    #[test]
    fn new_files_go_straight_to_their_name_and_failures_free_it() {
        let store = MemStore::new();
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::new(dir.path()).unwrap();
        s.write_at(0, b"new file").unwrap();
        upload(&store, &mut s, "/n", Target::NewFile, &mut no_journal).unwrap();
        assert_eq!(store.get("/n").unwrap(), b"new file");
        assert_eq!(
            store.renames.load(Ordering::Relaxed),
            0,
            "no rename for a new file"
        );
        *store.fail_uploads_matching.lock().unwrap() = Some("/m".into());
        let e = upload(&store, &mut s, "/m", Target::NewFile, &mut no_journal).unwrap_err();
        assert_eq!(e.errno(), libc::EACCES);
        assert!(store.get("/m").is_none(), "half file removed after failure");
        // In place: a failure leaves what the server has.
        store.put("/m", b"old");
        let e = upload(&store, &mut s, "/m", Target::InPlace, &mut no_journal).unwrap_err();
        assert_eq!(e.errno(), libc::EACCES);
        assert!(store.get("/m").is_some());
    }
}
