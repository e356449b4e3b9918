//! Segmented reads of one large file over several connections (`segments=N`).
//!
//! What: once a reader of a large file (at least `THRESHOLD`, size from the
//! listing) has shown a sequential pattern on the per-handle single stream (see
//! `prefetcher.rs`), the file ahead of it is read as consecutive byte ranges of
//! `RANGE` bytes, up to N of them at once, each on its own pooled connection
//! (`REST start` + `RETR`, the transfer stopped at the range's end: the store's
//! sink returns false and the RETR is aborted). The reader takes the ranges in
//! order: bytes reach it in file order only, whatever order the ranges finish in.
//!
//! Why: across the internet one TCP connection is often capped well below the
//! link (window × RTT, per-flow shaping); N connections give up to N times its
//! speed, as `lftp pget -n N` does, while a mounted file stays readable as a
//! stream (no temporary copy on disk).
//!
//! Memory: a range is never longer than `RANGE` (the last one, open-ended so that
//! a file grown since its listing is still read to its true end, is bounded by
//! its channel) and at most N ranges exist at a time: a new one starts only when
//! the reader has taken every byte of the oldest. So at most N × `RANGE` bytes
//! wait for the reader, plus the window of recent bytes kept for out-of-order
//! kernel reads (as in the single stream). A range that waits for the reader
//! holds no connection: it has its bytes and has given the connection back.
//!
//! Other work comes first: while an operation waits for a connection
//! (`is_contended`), no range beyond the one the reader needs is started, and a
//! range whose reader went quiet gives its connection back (like the single
//! stream) and continues later with REST.
//!
//! Faults: a range cut short (reset, EOF without close_notify, 421/426, timeout)
//! is resumed at the byte where it stopped with REST on a fresh connection, by
//! the range's own thread, up to `MAX_RESUMES` times in a row without progress;
//! then the range ends with the error, and a read that needs bytes past the
//! error fails (EIO, ETIMEDOUT): never a short read in the middle, never bytes
//! from another offset. A range that ends before its end without an error is the
//! true end of the file (it shrank since the listing): the reader gets the bytes
//! up to there as the end of the file, and later ranges are dropped.

use super::prefetcher::{resumable, CHUNK, KEEP_BEHIND, MAX_RESUMES, SKIP_AHEAD, YIELD_AFTER};
use super::store::RemoteStore;
use crate::error::{FtpError, Result};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

/// Files at least this large are read in segments (when `segments` > 1).
pub const THRESHOLD: u64 = 64 * 1024 * 1024;
/// Bytes of one range: each new RETR costs a few round trips, so a range must
/// be long enough to hide them; N of them are the memory bound.
pub const RANGE: u64 = 8 * 1024 * 1024;
/// Sequential bytes a handle reads on its single stream before segments start:
/// reading a file's header does not start N downloads.
pub const SEQ_PROOF: u64 = 2 * 1024 * 1024;
/// Segments unless `segments=` says otherwise.
pub const DEFAULT_SEGMENTS: usize = 4;
/// Pause before the n-th resume of a cut range: n times this.
const RESUME_PAUSE: Duration = Duration::from_millis(200);

enum Msg {
    Data(Vec<u8>),
    End(Result<()>),
}

/// One range being fetched (or fetched, waiting for the reader).
struct Range {
    start: u64,
    /// None: to the end of the file.
    end: Option<u64>,
    /// Bytes of this range the reader has taken from the channel.
    got: u64,
    rx: Receiver<Msg>,
    /// While the reader waits on this range: the file offset it needs bytes up to.
    needed: Arc<AtomicU64>,
    cancel: Arc<AtomicBool>,
}

impl Drop for Range {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// Counters, for tests and logs.
#[derive(Debug, Default, Clone, Copy)]
pub struct SegmentStats {
    pub ranges_started: u64,
    /// Most ranges that existed at once.
    pub most_at_once: usize,
}

/// The segmented read of one file from some offset on.
pub struct Segmented {
    store: Arc<dyn RemoteStore>,
    path: String,
    size: u64,
    segments: usize,
    range_len: u64,
    ranges: VecDeque<Range>,
    /// Where the next range starts; None once the open-ended last one exists.
    next_start: Option<u64>,
    /// Bytes [buf_start, buf_start + buf_len) of the file, in chunks.
    buf: VecDeque<Vec<u8>>,
    buf_start: u64,
    buf_len: u64,
    eof: bool,
    failed: bool,
    pub stats: SegmentStats,
}

/// A window of bytes already read ([`Segmented::new`] continues after it).
pub struct Head {
    pub chunks: VecDeque<Vec<u8>>,
    pub start: u64,
    pub len: u64,
}

impl Segmented {
    /// Segments of `range_len` bytes, `segments` at a time, for a file of `size`
    /// bytes (as listed), continuing after `head`.
    pub fn new(
        store: Arc<dyn RemoteStore>,
        path: String,
        size: u64,
        segments: usize,
        range_len: u64,
        head: Head,
    ) -> Self {
        Segmented {
            store,
            path,
            size,
            segments: segments.max(1),
            range_len: range_len.max(1),
            ranges: VecDeque::new(),
            next_start: Some(head.start + head.len),
            buf: head.chunks,
            buf_start: head.start,
            buf_len: head.len,
            eof: false,
            failed: false,
            stats: SegmentStats::default(),
        }
    }

    fn end(&self) -> u64 {
        self.buf_start + self.buf_len
    }

    /// Whether a read at `offset` continues this sequential read (a little behind
    /// or ahead of it, as the kernel's readahead arrives from several threads).
    pub fn covers(&self, offset: u64) -> bool {
        !self.failed && offset >= self.buf_start && (offset <= self.end() + SKIP_AHEAD || self.eof)
    }

    /// Starts ranges up to `segments` at a time; only the one the reader needs
    /// next while other operations wait for a connection.
    fn top_up(&mut self) {
        while self.ranges.len() < self.segments {
            let Some(start) = self.next_start else { break };
            if !self.ranges.is_empty() && self.store.is_contended() {
                break;
            }
            let end = start.saturating_add(self.range_len);
            let end = (end < self.size).then_some(end);
            self.next_start = end;
            self.ranges.push_back(spawn_range(
                self.store.clone(),
                self.path.clone(),
                start,
                end,
                self.range_len,
            ));
            self.stats.ranges_started += 1;
            self.stats.most_at_once = self.stats.most_at_once.max(self.ranges.len());
        }
    }

    /// Reads up to `size` bytes at `offset` (a covered offset) into `out`: all of
    /// them, fewer only at the true end of the file, or an error.
    pub fn read_into(&mut self, offset: u64, size: usize, out: &mut Vec<u8>) -> Result<()> {
        let r = self.fill(offset + size as u64);
        if r.is_err() {
            self.failed = true;
            self.ranges.clear();
            return r;
        }
        if offset < self.end() {
            let to = (offset + size as u64).min(self.end());
            copy_out(&self.buf, self.buf_start, offset, to, out);
        }
        self.trim(offset.saturating_sub(KEEP_BEHIND));
        Ok(())
    }

    /// Takes bytes from the ranges, in order, until the window reaches `want_end`
    /// or the end of the file.
    fn fill(&mut self, want_end: u64) -> Result<()> {
        while self.end() < want_end && !self.eof {
            self.top_up();
            let Some(r) = self.ranges.front_mut() else {
                self.eof = true;
                break;
            };
            r.needed.store(want_end, Ordering::Relaxed);
            let msg = match crate::deadline::left() {
                None => r.rx.recv().map_err(|_| false),
                Some(left) => {
                    r.rx.recv_timeout(left)
                        .map_err(|e| e == RecvTimeoutError::Timeout)
                }
            };
            r.needed.store(0, Ordering::Relaxed);
            match msg {
                Ok(Msg::Data(d)) => {
                    crate::deadline::progress();
                    r.got += d.len() as u64;
                    self.buf_len += d.len() as u64;
                    self.buf.push_back(d);
                }
                Ok(Msg::End(Ok(()))) => {
                    let short = r.end.is_some_and(|e| r.start + r.got < e);
                    if short || r.end.is_none() {
                        // The true end of the file.
                        self.eof = true;
                        self.ranges.clear();
                        self.next_start = None;
                    } else {
                        self.ranges.pop_front();
                    }
                }
                Ok(Msg::End(Err(e))) => {
                    log::error!("reading {} at {}: {e}; giving up", self.path, self.end());
                    return Err(e);
                }
                Err(true) => {
                    return Err(FtpError::Timeout(format!(
                        "reading {}: no data within the deadline (timeout=)",
                        self.path
                    )))
                }
                Err(false) => return Err(FtpError::Closed("segment thread ended".into())),
            }
        }
        Ok(())
    }

    /// Drops the whole chunks that end before `keep_from`.
    fn trim(&mut self, keep_from: u64) {
        while let Some(front) = self.buf.front() {
            let len = front.len() as u64;
            if self.buf_start + len > keep_from {
                break;
            }
            self.buf.pop_front();
            self.buf_start += len;
            self.buf_len -= len;
        }
    }
}

/// Appends bytes [from, to) of the file to `out`, from `chunks` that start at
/// file offset `at`.
fn copy_out(chunks: &VecDeque<Vec<u8>>, mut at: u64, from: u64, to: u64, out: &mut Vec<u8>) {
    for chunk in chunks {
        let end = at + chunk.len() as u64;
        if end > from && at < to {
            let a = (from.max(at) - at) as usize;
            let b = (to.min(end) - at) as usize;
            out.extend_from_slice(&chunk[a..b]);
        }
        if end >= to {
            break;
        }
        at = end;
    }
}

enum Sent {
    Done,
    /// Cancelled, or the reader is gone.
    Stop,
    /// The reader was quiet and someone waits for a connection: the message is
    /// handed back, to be sent once the transfer has given its connection back.
    Held(Msg),
}

/// Sends `msg`, waiting while the channel is full; with `store`, gives up
/// (`Held`) after `YIELD_AFTER` of waiting while an operation waits for a
/// connection.
fn send(
    tx: &SyncSender<Msg>,
    msg: Msg,
    cancel: &AtomicBool,
    store: Option<&dyn RemoteStore>,
) -> Sent {
    let mut msg = msg;
    let mut waited = Duration::ZERO;
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Sent::Stop;
        }
        match tx.try_send(msg) {
            Ok(()) => return Sent::Done,
            Err(TrySendError::Disconnected(_)) => return Sent::Stop,
            Err(TrySendError::Full(m)) => {
                msg = m;
                std::thread::sleep(Duration::from_millis(1));
                waited += Duration::from_millis(1);
                if waited > YIELD_AFTER && store.is_some_and(|s| s.is_contended()) {
                    return Sent::Held(msg);
                }
            }
        }
    }
}

fn spawn_range(
    store: Arc<dyn RemoteStore>,
    path: String,
    start: u64,
    end: Option<u64>,
    range_len: u64,
) -> Range {
    // Room for a whole range in full chunks, the last partial one and the end:
    // a range never waits for its reader unless it is open-ended (a file that
    // grew) or sent small parts to a waiting reader (who is taking them).
    let depth = (range_len as usize).div_ceil(CHUNK) + 4;
    let (tx, rx) = sync_channel::<Msg>(depth);
    let needed = Arc::new(AtomicU64::new(0));
    let cancel = Arc::new(AtomicBool::new(false));
    let (n, c) = (needed.clone(), cancel.clone());
    log::debug!("read segment {path} [{start}, {end:?})");
    let spawned = std::thread::Builder::new()
        .name("ftpsfs-segment".into())
        .spawn(move || fetch_range(store.as_ref(), &path, start, end, &tx, &n, &c));
    let range = Range {
        start,
        end,
        got: 0,
        rx,
        needed,
        cancel,
    };
    if let Err(e) = spawned {
        // The thread (and its sender) is gone: the reader sees the channel closed.
        log::error!("starting a segment thread: {e}");
    }
    range
}

/// The thread of one range: downloads [start, end) into `tx`, resuming cuts.
fn fetch_range(
    store: &dyn RemoteStore,
    path: &str,
    start: u64,
    end: Option<u64>,
    tx: &SyncSender<Msg>,
    needed: &AtomicU64,
    cancel: &AtomicBool,
) {
    let mut pos = start;
    let mut pending: Vec<u8> = Vec::new();
    let mut resumes = 0u32;
    let mut resumed_at = u64::MAX;
    loop {
        if cancel.load(Ordering::Relaxed) {
            return;
        }
        let mut held: Option<Msg> = None;
        let mut stopped = false;
        let r = store.read_from(path, pos, &mut |chunk: &[u8]| {
            let take = match end {
                Some(e) => chunk.len().min((e - pos) as usize),
                None => chunk.len(),
            };
            if pending.capacity() == 0 {
                pending.reserve_exact(CHUNK);
            }
            pending.extend_from_slice(&chunk[..take]);
            pos += take as u64;
            let done = end == Some(pos);
            let need = needed.load(Ordering::Relaxed);
            let msg = if pending.len() >= CHUNK || done {
                Msg::Data(std::mem::take(&mut pending))
            } else if need != 0 && pos >= need {
                // Early, for a waiting reader: a right-sized copy.
                let part = pending.clone();
                pending.clear();
                Msg::Data(part)
            } else {
                return true;
            };
            match send(tx, msg, cancel, Some(store)) {
                Sent::Done => !done,
                Sent::Stop => {
                    stopped = true;
                    false
                }
                Sent::Held(m) => {
                    held = Some(m);
                    false
                }
            }
        });
        if stopped || cancel.load(Ordering::Relaxed) {
            return;
        }
        if let Some(m) = held {
            // The connection is back in the pool: wait for the reader, then go
            // on from `pos` with REST.
            log::debug!("read segment {path} at {pos}: yielded its connection");
            if !matches!(send(tx, m, cancel, None), Sent::Done) {
                return;
            }
            continue;
        }
        if end == Some(pos) {
            // Complete (whatever the ABOR that ended the RETR answered).
            let _ = send(tx, Msg::End(Ok(())), cancel, None);
            return;
        }
        match r {
            Ok(()) => {
                // The end of the file.
                if !pending.is_empty()
                    && !matches!(
                        send(tx, Msg::Data(std::mem::take(&mut pending)), cancel, None),
                        Sent::Done
                    )
                {
                    return;
                }
                let _ = send(tx, Msg::End(Ok(())), cancel, None);
                return;
            }
            Err(e) => {
                if resumed_at != pos {
                    resumes = 0; // progress since the last resume
                }
                if !resumable(&e) || resumes >= MAX_RESUMES {
                    // The bytes before the error are good: the reader may use them.
                    if !pending.is_empty()
                        && !matches!(
                            send(tx, Msg::Data(std::mem::take(&mut pending)), cancel, None),
                            Sent::Done
                        )
                    {
                        return;
                    }
                    let _ = send(tx, Msg::End(Err(e)), cancel, None);
                    return;
                }
                resumes += 1;
                resumed_at = pos;
                log::warn!(
                    "reading {path} at {pos} (segment from {start}): {e}; resuming there \
                     (attempt {resumes} of {MAX_RESUMES})"
                );
                std::thread::sleep(RESUME_PAUSE * resumes);
            }
        }
    }
}
