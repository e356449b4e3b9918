//! Segmented reads of one large file over several connections (`segments=N`).
//!
//! What: once a reader of a large file (at least `THRESHOLD`, size from the
//! listing) has shown a sequential pattern on the per-handle single stream (see
//! `prefetcher.rs`), and that stream is slow enough (`SEGMENT_BELOW`) that its
//! path rather than the CPU holds it back, the file ahead of it is read as consecutive byte ranges of
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
//! its channel) and at most N ranges exist at a time: a new one starts when the
//! reader has taken every byte of the oldest, or when the oldest has only its
//! last bytes to come (fewer than arrive while a new range starts, at most
//! `RANGE`/4). So at most N × `RANGE` (+ `RANGE`/4) bytes wait for the reader,
//! plus the window of recent bytes kept for out-of-order kernel reads (as in the
//! single stream). A range that waits for the reader holds no connection: it has
//! its bytes and has given the connection back.
//!
//! Speed: each range costs its round trips (REST+RETR, the data connection's TLS
//! handshake) before its first byte, and its ABOR after the last. The end is
//! handed to the reader before the ABOR, so the next range starts at once on
//! another pooled connection while this one finishes its ABOR; the next range
//! starts while the oldest still receives its last bytes (`Range::nearly_done`:
//! the bytes left arrive within the time a range has been taking to start), so
//! its round trips overlap them; and the first N ranges are 1/N, 2/N... of
//! `RANGE` long, so that ranges end, and their successors start, one at a time
//! rather than all together.
//!
//! Other work comes first: while an operation waits for a connection
//! (`is_contended`), no range beyond the one the reader needs is started, and a
//! range whose reader went quiet gives its connection back (like the single
//! stream) and continues later with REST.
//!
//! Faults: a range cut short (reset, EOF without close_notify, 421/426, timeout)
//! is resumed at the byte where it stopped with REST on a new data connection, by
//! the range's own thread, up to `MAX_RESUMES` times in a row without progress;
//! then the range ends with the error, and a read that needs bytes past the
//! error fails (EIO, ETIMEDOUT): never a short read in the middle, never bytes
//! from another offset. A range that ends before its end without an error is the
//! true end of the file (it shrank since the listing): the reader gets the bytes
//! up to there as the end of the file, and later ranges are dropped.

use super::error::{StoreError, StoreResult as Result};
use super::prefetcher::{CHUNK, KEEP_BEHIND, MAX_RESUMES, SKIP_AHEAD, YIELD_AFTER};
use super::store::RemoteStore;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Files at least this large are read in segments (when `segments` > 1).
pub const THRESHOLD: u64 = 64 * 1024 * 1024;
/// Bytes of one range: each new RETR costs a few round trips, so a range must
/// be long enough to hide them; N of them are the memory bound.
pub const RANGE: u64 = 8 * 1024 * 1024;
/// Sequential bytes a handle reads on its single stream before segments start:
/// reading a file's header does not start N downloads.
pub const SEQ_PROOF: u64 = 2 * 1024 * 1024;
/// Segments start only when the single stream brings less than this (bytes/s)
/// by the time the reader has read `SEQ_PROOF`: a connection that fast is not
/// held back by its path, and several would only add TLS and thread work (on
/// uncapped loopback, 4 segments read slower than one stream).
pub const SEGMENT_BELOW: f64 = 48e6;
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
    /// Bytes the thread has received, and when the first came (ns after
    /// `spawned`, 0: not yet): how long a new range takes to start, and how fast
    /// this one runs.
    progress: Arc<Progress>,
    spawned: Instant,
}

/// Bytes a transfer thread received, when the first came and when `MARK`
/// bytes had come (ns after the transfer started, 0: not yet).
#[derive(Default)]
pub(crate) struct Progress {
    received: AtomicU64,
    first_ns: AtomicU64,
    mark_ns: AtomicU64,
    last_ns: AtomicU64,
}

/// A stream's speed is measured after its first `MARK` bytes: the first ones
/// also carry its start (TCP, TLS, a server reading a cold disk).
const MARK: u64 = 1024 * 1024;

impl Progress {
    /// Counts `n` bytes of a transfer started at `started`.
    pub(crate) fn note(&self, n: u64, started: Instant) {
        let before = self.received.fetch_add(n, Ordering::Relaxed);
        let now = || started.elapsed().as_nanos().clamp(1, u64::MAX as u128) as u64;
        if before == 0 && n > 0 {
            self.first_ns.store(now(), Ordering::Relaxed);
        }
        if before < MARK && before + n >= MARK {
            self.mark_ns.store(now(), Ordering::Relaxed);
        }
        if before >= MARK {
            self.last_ns.store(now(), Ordering::Relaxed);
        }
    }

    /// Bytes per second after the first `MARK` bytes, up to the last byte (a
    /// stream held back by its reader is not slow): None until `MARK` more came.
    pub(crate) fn steady_rate(&self) -> Option<f64> {
        let mark = self.mark_ns.load(Ordering::Relaxed);
        let last = self.last_ns.load(Ordering::Relaxed);
        let after = self.received.load(Ordering::Relaxed).saturating_sub(MARK);
        let flowing = last.saturating_sub(mark) as f64 / 1e9;
        (mark != 0 && after >= MARK && flowing > 0.0).then(|| after as f64 / flowing)
    }

    /// Bytes per second since the first byte of a transfer started at `started`.
    pub(crate) fn rate(&self, started: Instant) -> Option<f64> {
        let first = Duration::from_nanos(match self.first_ns.load(Ordering::Relaxed) {
            0 => return None,
            n => n,
        });
        let flowing = started.elapsed().saturating_sub(first).as_secs_f64();
        (flowing > 0.0).then(|| self.received.load(Ordering::Relaxed) as f64 / flowing)
    }
}

impl Range {
    /// Time from the start of this range to its first byte, once known.
    fn setup(&self) -> Option<Duration> {
        match self.progress.first_ns.load(Ordering::Relaxed) {
            0 => None,
            n => Some(Duration::from_nanos(n)),
        }
    }

    /// Whether this range's remaining bytes arrive sooner than a new range
    /// takes to start (`setup`): the next range may start now, so that its
    /// round trips overlap this one's last bytes instead of adding to them.
    fn nearly_done(&self, setup: Duration, cap: u64) -> bool {
        let (Some(end), Some(_)) = (self.end, self.setup()) else {
            return false;
        };
        let received = self.progress.received.load(Ordering::Relaxed);
        let Some(rate) = self.progress.rate(self.spawned) else {
            return false;
        };
        let lead = ((rate * setup.as_secs_f64() * 1.25) as u64).min(cap);
        (end - self.start).saturating_sub(received) <= lead
    }
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
    /// The last time a range took from its start to its first byte.
    setup: Option<Duration>,
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
            setup: None,
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

    /// Starts ranges up to `segments` at a time (one more while the oldest is
    /// nearly done, see [`Range::nearly_done`]); only the one the reader needs
    /// next while other operations wait for a connection.
    ///
    /// The first `segments` ranges are 1/N, 2/N, ... N/N of `range_len` long:
    /// started together, they end one after the other, so that later ranges
    /// start (and pay their round trips) one at a time, not all together.
    fn top_up(&mut self) {
        if let Some(s) = self.ranges.front().and_then(Range::setup) {
            self.setup = Some(s);
        }
        while let Some(start) = self.next_start {
            let room = self.ranges.len() < self.segments
                || (self.ranges.len() == self.segments
                    && self
                        .ranges
                        .front()
                        .zip(self.setup)
                        .is_some_and(|(r, s)| r.nearly_done(s, self.range_len / 4)));
            if !room || (!self.ranges.is_empty() && self.store.is_contended()) {
                break;
            }
            let n = self.segments as u64;
            let len = match self.stats.ranges_started {
                k if k < n => (self.range_len * (k + 1) / n).max(1),
                _ => self.range_len,
            };
            let end = start.saturating_add(len);
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
                    return Err(StoreError::Timeout(format!(
                        "reading {}: no data within the deadline (timeout=)",
                        self.path
                    )))
                }
                Err(false) => return Err(StoreError::Lost("segment thread ended".into())),
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
    let progress = Arc::new(Progress::default());
    let at = Instant::now();
    let (n, c, p) = (needed.clone(), cancel.clone(), progress.clone());
    log::debug!("read segment {path} [{start}, {end:?})");
    let quiet = crate::deadline::silence_limit_for_helpers();
    let spawned = std::thread::Builder::new()
        .name("ftpsfs-segment".into())
        .spawn(move || {
            // A dead connection fails in time for the range to resume.
            let _quiet = quiet.map(crate::deadline::limit_silence);
            let t = Thread {
                store: store.as_ref(),
                tx: &tx,
                needed: &n,
                cancel: &c,
                progress: &p,
                spawned: at,
            };
            fetch_range(&t, &path, start, end)
        });
    let range = Range {
        start,
        end,
        got: 0,
        rx,
        needed,
        cancel,
        progress,
        spawned: at,
    };
    if let Err(e) = spawned {
        // The thread (and its sender) is gone: the reader sees the channel closed.
        log::error!("starting a segment thread: {e}");
    }
    range
}

/// What the thread of a range shares with its reader.
struct Thread<'a> {
    store: &'a dyn RemoteStore,
    tx: &'a SyncSender<Msg>,
    needed: &'a AtomicU64,
    cancel: &'a AtomicBool,
    progress: &'a Progress,
    spawned: Instant,
}

/// The thread of one range: downloads [start, end) into `tx`, resuming cuts.
fn fetch_range(t: &Thread, path: &str, start: u64, end: Option<u64>) {
    let Thread {
        store,
        tx,
        needed,
        cancel,
        progress,
        spawned,
    } = *t;
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
        let from = pos;
        let mut sink = |chunk: &[u8]| {
            let take = match end {
                Some(e) => chunk.len().min((e - pos) as usize),
                None => chunk.len(),
            };
            if pending.capacity() == 0 {
                pending.reserve_exact(CHUNK);
            }
            pending.extend_from_slice(&chunk[..take]);
            pos += take as u64;
            progress.note(take as u64, spawned);
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
                // Complete: the reader may go on while the transfer is stopped.
                Sent::Done if done => {
                    let _ = send(tx, Msg::End(Ok(())), cancel, None);
                    false
                }
                Sent::Done => true,
                Sent::Stop => {
                    stopped = true;
                    false
                }
                Sent::Held(m) => {
                    held = Some(m);
                    false
                }
            }
        };
        let r = store.read_from(path, from, &mut sink);
        if stopped || cancel.load(Ordering::Relaxed) || end == Some(pos) {
            // Stopped, or complete (its end sent, whatever the stop answered).
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
                if !e.is_resumable() || resumes >= MAX_RESUMES {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::faultstore::FaultStore;
    use crate::fs::memstore::MemStore;
    use crate::fs::prefetcher::Prefetcher;
    use crate::ftp::RemoteEntry;
    use std::sync::atomic::AtomicU64;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| ((i * 7 + i / 65536) % 251) as u8).collect()
    }

    fn empty_head(at: u64) -> Head {
        Head {
            chunks: VecDeque::new(),
            start: at,
            len: 0,
        }
    }

    /// A store over a [`MemStore`] that counts the bytes it hands out, and makes
    /// the transfers that start at an even multiple of `slow_every` slow, so that
    /// ranges finish out of order.
    struct Wrap {
        inner: MemStore,
        handed: AtomicU64,
        slow_every: u64,
        /// Every transfer fails (lost connection) when it reaches this offset.
        broken_at: u64,
        /// ...or is refused (550) when it starts past it.
        refuse_past: u64,
        /// Where each transfer started.
        starts: std::sync::Mutex<Vec<u64>>,
        /// Pause after each 64 KiB chunk (a capped link), µs.
        pace_us: AtomicU64,
        /// Transfers that start at or past this offset send nothing for 2 s.
        stall_from: AtomicU64,
    }

    impl Wrap {
        fn new(d: &[u8]) -> Arc<Wrap> {
            Self::with(d, 0, u64::MAX, u64::MAX)
        }
        fn with(d: &[u8], slow_every: u64, broken_at: u64, refuse_past: u64) -> Arc<Wrap> {
            let inner = MemStore::new();
            inner.put("/f", d);
            Arc::new(Wrap {
                inner,
                handed: AtomicU64::new(0),
                slow_every,
                broken_at,
                refuse_past,
                starts: Default::default(),
                pace_us: AtomicU64::new(0),
                stall_from: AtomicU64::new(u64::MAX),
            })
        }
    }

    impl RemoteStore for Wrap {
        fn list(&self, d: &str) -> Result<Vec<RemoteEntry>> {
            self.inner.list(d)
        }
        fn read_from(&self, p: &str, off: u64, sink: &mut dyn FnMut(&[u8]) -> bool) -> Result<()> {
            if let Ok(mut s) = self.starts.lock() {
                s.push(off);
            }
            if off > self.refuse_past {
                return Err(crate::fs::error::StoreError::refused(
                    crate::fs::error::Refusal::NotFound,
                    "server refused RETR: 550 gone (injected)",
                ));
            }
            if off >= self.stall_from.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(2));
            }
            if self.slow_every != 0 && off % (2 * self.slow_every) == 0 {
                std::thread::sleep(Duration::from_millis(60));
            }
            let mut at = off;
            let mut broke = false;
            self.inner.read_from(p, off, &mut |c| {
                let c = if at + c.len() as u64 > self.broken_at {
                    broke = true;
                    &c[..(self.broken_at.saturating_sub(at)) as usize]
                } else {
                    c
                };
                self.handed.fetch_add(c.len() as u64, Ordering::SeqCst);
                match self.pace_us.load(Ordering::Relaxed) {
                    0 => {}
                    us => std::thread::sleep(Duration::from_micros(us)),
                }
                at += c.len() as u64;
                !broke && sink(c)
            })?;
            if broke {
                return Err(StoreError::Lost("connection reset (injected)".into()));
            }
            Ok(())
        }
        fn write_file(&self, p: &str, d: &mut dyn std::io::BufRead) -> Result<u64> {
            self.inner.write_file(p, d)
        }
        fn delete(&self, p: &str) -> Result<()> {
            self.inner.delete(p)
        }
        fn mkdir(&self, p: &str) -> Result<()> {
            self.inner.mkdir(p)
        }
        fn rmdir(&self, p: &str) -> Result<()> {
            self.inner.rmdir(p)
        }
        fn rename(&self, a: &str, b: &str) -> Result<()> {
            self.inner.rename(a, b)
        }
        fn chmod(&self, p: &str, m: u32) -> Result<()> {
            self.inner.chmod(p, m)
        }
        fn set_mtime(&self, p: &str, t: std::time::SystemTime) -> Result<()> {
            self.inner.set_mtime(p, t)
        }
        fn is_contended(&self) -> bool {
            self.inner.is_contended()
        }
    }

    /// Reads the whole file in `bs` reads, each out of order with the next now
    /// and then (as kernel readahead from several threads), checking every byte.
    fn read_all(sg: &mut Segmented, d: &[u8], from: u64, bs: usize) {
        let mut off = from;
        while (off as usize) < d.len() {
            let mut b = Vec::new();
            let mut a = Vec::new();
            sg.read_into(off + bs as u64, bs, &mut b).unwrap();
            sg.read_into(off, bs, &mut a).unwrap();
            let end = (off as usize + bs).min(d.len());
            assert_eq!(a, d[off as usize..end], "at {off}");
            let end2 = (off as usize + 2 * bs).min(d.len());
            assert_eq!(b, d[end.min(end2)..end2], "at {}", off + bs as u64);
            off += 2 * bs as u64;
        }
        let mut tail = Vec::new();
        sg.read_into(d.len() as u64, 4096, &mut tail).unwrap();
        assert!(tail.is_empty(), "bytes past the end");
    }

    /// Ranges a file of `size` bytes is read in: the first `n` are 1/n, 2/n...
    /// of `r` long, the others `r`.
    fn ranges_for(size: u64, n: u64, r: u64) -> u64 {
        let mut at = 0;
        let mut k = 0;
        while at < size {
            at += if k < n { r * (k + 1) / n } else { r };
            k += 1;
        }
        k
    }

    #[test]
    fn ranges_are_handed_over_in_order_though_they_finish_out_of_order() {
        const R: u64 = 100_000; // not a multiple of the store's chunks
        let d = data(3 * 1024 * 1024 + 777);
        let store = Wrap::with(&d, R, u64::MAX, u64::MAX);
        let mut sg = Segmented::new(
            store.clone(),
            "/f".into(),
            d.len() as u64,
            4,
            R,
            empty_head(0),
        );
        read_all(&mut sg, &d, 0, 128 * 1024);
        assert_eq!(sg.stats.ranges_started, ranges_for(d.len() as u64, 4, R));
        assert!((4..=5).contains(&sg.stats.most_at_once), "{:?}", sg.stats);
    }

    #[test]
    fn at_most_n_ranges_of_bytes_wait_for_the_reader() {
        const R: u64 = 256 * 1024;
        const N: usize = 3;
        let d = data(16 * 1024 * 1024);
        let store = Wrap::new(&d);
        let mut sg = Segmented::new(
            store.clone(),
            "/f".into(),
            d.len() as u64,
            N,
            R,
            empty_head(0),
        );
        // The store hands out 64 KiB chunks: a range may take one past its end;
        // one more range may start while the oldest has its last R/4 to come.
        let bound = N as u64 * (R + 64 * 1024) + R / 4 + 64 * 1024;
        let mut off = 0u64;
        while (off as usize) < d.len() {
            let mut out = Vec::new();
            sg.read_into(off, 4096, &mut out).unwrap();
            assert_eq!(out, d[off as usize..off as usize + 4096]);
            // A slow reader: everything that can be fetched ahead is, by now.
            std::thread::sleep(Duration::from_millis(if off == 0 { 300 } else { 2 }));
            let ahead = store.handed.load(Ordering::SeqCst) - off;
            assert!(
                ahead <= bound,
                "{ahead} bytes fetched ahead of the reader at {off}"
            );
            off += 1024 * 1024 + 4096;
        }
        assert!(
            store.handed.load(Ordering::SeqCst) >= 3 * R,
            "nothing was read ahead"
        );
    }

    #[test]
    fn a_cut_range_resumes_where_it_stopped() {
        const R: u64 = 300_000;
        let d = data(4 * 1024 * 1024 + 5);
        let store = Arc::new(FaultStore::new());
        store.inner.put("/f", &d);
        // The first transfers are cut after 20 000 bytes each (several ranges,
        // and resumes of them).
        store.cut_reads_after.store(20_000, Ordering::SeqCst);
        store.cut_reads_times.store(6, Ordering::SeqCst);
        let mut sg = Segmented::new(
            store.clone(),
            "/f".into(),
            d.len() as u64,
            4,
            R,
            empty_head(0),
        );
        read_all(&mut sg, &d, 0, 64 * 1024);
        let ranges = ranges_for(d.len() as u64, 4, R) as usize;
        assert_eq!(
            store.inner.reads.load(Ordering::SeqCst),
            ranges + 6,
            "each cut resumed once"
        );
    }

    #[test]
    fn a_range_that_cannot_resume_fails_the_read_never_short() {
        const R: u64 = 256 * 1024;
        let d = data(4 * 1024 * 1024);
        let broken_at = 1_500_000u64;
        let store = Wrap::with(&d, 0, broken_at, u64::MAX);
        let mut sg = Segmented::new(
            store.clone(),
            "/f".into(),
            d.len() as u64,
            4,
            R,
            empty_head(0),
        );
        let mut off = 0u64;
        let err = loop {
            let mut out = Vec::new();
            match sg.read_into(off, 128 * 1024, &mut out) {
                Ok(()) => {
                    assert_eq!(out.len(), 128 * 1024, "a short read at {off}");
                    assert_eq!(out, d[off as usize..off as usize + out.len()]);
                    off += out.len() as u64;
                }
                Err(e) => break e,
            }
        };
        assert!(
            off <= broken_at && off + 128 * 1024 > broken_at,
            "failed at {off}"
        );
        assert!(e_is_io(&err), "{err}");
        // Not covered any more: the caller goes back to one stream.
        assert!(!sg.covers(off));
    }

    fn e_is_io(e: &StoreError) -> bool {
        e.is_resumable()
    }

    #[test]
    fn a_refused_resume_is_an_error_not_an_end_of_file() {
        const R: u64 = 256 * 1024;
        let d = data(2 * 1024 * 1024);
        // Ranges after the first are refused (the file went away).
        let store = Wrap::with(&d, 0, u64::MAX, 0);
        let mut sg = Segmented::new(
            store.clone(),
            "/f".into(),
            d.len() as u64,
            4,
            R,
            empty_head(0),
        );
        let mut out = Vec::new();
        sg.read_into(0, 4096, &mut out).unwrap();
        assert_eq!(out, d[..4096]);
        let e = sg.read_into(R - 100, 4096, &mut Vec::new()).unwrap_err();
        assert_eq!(e.errno(), libc::ENOENT, "{e}");
    }

    #[test]
    fn a_file_shorter_than_listed_ends_where_it_ends() {
        const R: u64 = 256 * 1024;
        let d = data(1_000_000);
        let store = Wrap::new(&d);
        // Listed as 2 MiB: ranges past the true end come back empty.
        let mut sg = Segmented::new(store, "/f".into(), 2 << 20, 4, R, empty_head(0));
        read_all(&mut sg, &d, 0, 128 * 1024);
    }

    #[test]
    fn a_file_longer_than_listed_is_read_to_its_true_end() {
        const R: u64 = 256 * 1024;
        let d = data(3_000_000);
        let store = Wrap::new(&d);
        let mut sg = Segmented::new(store, "/f".into(), 1 << 20, 4, R, empty_head(0));
        read_all(&mut sg, &d, 0, 128 * 1024);
    }

    #[test]
    fn ranges_ahead_wait_while_others_need_a_connection() {
        const R: u64 = 256 * 1024;
        let d = data(4 * 1024 * 1024);
        let store = Wrap::new(&d);
        store.inner.contended.store(true, Ordering::SeqCst);
        let mut sg = Segmented::new(
            store.clone(),
            "/f".into(),
            d.len() as u64,
            4,
            R,
            empty_head(0),
        );
        let mut off = 0u64;
        while off < 2 * R {
            let mut out = Vec::new();
            sg.read_into(off, 64 * 1024, &mut out).unwrap();
            assert_eq!(out, d[off as usize..off as usize + out.len()]);
            off += out.len() as u64;
        }
        assert_eq!(
            sg.stats.most_at_once, 1,
            "ranges ahead started though contended"
        );
        store.inner.contended.store(false, Ordering::SeqCst);
        read_all(&mut sg, &d, off, 64 * 1024);
        assert!((4..=5).contains(&sg.stats.most_at_once), "{:?}", sg.stats);
    }

    #[test]
    fn a_continued_head_is_kept_and_segments_follow_it() {
        const R: u64 = 200_000;
        let d = data(2_000_000);
        let head = Head {
            chunks: VecDeque::from(vec![d[1000..5000].to_vec(), d[5000..70_000].to_vec()]),
            start: 1000,
            len: 69_000,
        };
        let store = Wrap::new(&d);
        let mut sg = Segmented::new(store.clone(), "/f".into(), d.len() as u64, 4, R, head);
        let mut out = Vec::new();
        sg.read_into(2000, 100_000, &mut out).unwrap();
        assert_eq!(out, d[2000..102_000]);
        assert!(!sg.covers(999));
        read_all(&mut sg, &d, 102_000, 64 * 1024);
        // Nothing before the head's end was downloaded again.
        let starts = store.starts.lock().unwrap().clone();
        assert_eq!(starts.iter().min(), Some(&70_000), "{starts:?}");
    }

    #[test]
    fn prefetcher_goes_over_to_segments_only_for_large_sequential_reads() {
        let d = data(THRESHOLD as usize + 3 * RANGE as usize + 12345);
        let store = Arc::new(MemStore::new());
        store.put("/big", &d);
        store.put("/small", &d[..THRESHOLD as usize - 1]);
        // Large and sequential: segments after SEQ_PROOF bytes.
        let mut p = Prefetcher::new(store.clone(), "/big".into())
            .with_segments(d.len() as u64, 4)
            .segment_below(f64::INFINITY);
        let mut off = 0u64;
        while off < THRESHOLD + 2 * RANGE {
            let r = p.read(off, 128 * 1024).unwrap();
            assert_eq!(r, d[off as usize..off as usize + r.len()], "at {off}");
            off += r.len() as u64;
            if off > SEQ_PROOF + 128 * 1024 {
                assert_eq!(p.stats.segmented, 1, "at {off}");
            }
        }
        let st = p.segment_stats().expect("segmented");
        assert!((4..=5).contains(&st.most_at_once), "{st:?}");
        // A seek far away: one stream again, segments once sequential again.
        let far = 5 * RANGE + 3;
        let r = p.read(far, 4096).unwrap();
        assert_eq!(r, d[far as usize..far as usize + 4096]);
        assert!(p.segment_stats().is_none());
        let mut off = far + 4096;
        while off < far + 2 * SEQ_PROOF {
            let r = p.read(off, 128 * 1024).unwrap();
            assert_eq!(r, d[off as usize..off as usize + r.len()], "at {off}");
            off += r.len() as u64;
        }
        assert_eq!(p.stats.segmented, 2);
        // Random reads in a large file stay single streams.
        let mut p = Prefetcher::new(store.clone(), "/big".into())
            .with_segments(d.len() as u64, 4)
            .segment_below(f64::INFINITY);
        for off in [40_000_000u64, 100, 9_000_000, 60_000_000, 30_000_000] {
            let r = p.read(off, 4096).unwrap();
            assert_eq!(r, d[off as usize..off as usize + 4096]);
        }
        assert_eq!(p.stats.segmented, 0);
        // Small files and segments=1: never.
        for (path, size, n) in [("/small", THRESHOLD - 1, 4), ("/big", d.len() as u64, 1)] {
            let mut p = Prefetcher::new(store.clone(), path.into())
                .with_segments(size, n)
                .segment_below(f64::INFINITY);
            let mut off = 0u64;
            while off < 3 * SEQ_PROOF {
                off += p.read(off, 128 * 1024).unwrap().len() as u64;
            }
            assert_eq!(p.stats.segmented, 0, "{path} {n}");
        }
    }

    #[test]
    fn segments_only_where_one_stream_is_slow() {
        let d = data(THRESHOLD as usize + 4 * RANGE as usize);
        let read = |store: Arc<Wrap>| {
            let mut p = Prefetcher::new(store, "/f".into()).with_segments(d.len() as u64, 4);
            let mut off = 0u64;
            while off < 2 * SEQ_PROOF {
                let r = p.read(off, 128 * 1024).unwrap();
                assert_eq!(r, d[off as usize..off as usize + r.len()], "at {off}");
                off += r.len() as u64;
            }
            p.stats.segmented
        };
        // In memory: far faster than SEGMENT_BELOW, one stream is best.
        assert_eq!(read(Wrap::new(&d)), 0, "segments for a fast stream");
        // 64 KiB every 5 ms: about 13 MB/s, a capped connection.
        let slow = Wrap::new(&d);
        slow.pace_us.store(5000, Ordering::Relaxed);
        assert_eq!(read(slow), 1, "no segments for a slow stream");
    }

    #[test]
    fn a_stalled_range_times_out_never_short() {
        const R: u64 = 256 * 1024;
        let d = data(4 * 1024 * 1024);
        let store = Wrap::new(&d);
        // Ranges from the third on (the first two are R/4 and R/2 long) stall,
        // as behind a middlebox that holds the data.
        store.stall_from.store(R / 4 + R / 2, Ordering::Relaxed);
        let mut sg = Segmented::new(
            store.clone(),
            "/f".into(),
            d.len() as u64,
            4,
            R,
            empty_head(0),
        );
        let mut off = 0u64;
        let t = Instant::now();
        let err = loop {
            let _op = crate::deadline::start(Duration::from_millis(300));
            let mut out = Vec::new();
            match sg.read_into(off, 64 * 1024, &mut out) {
                Ok(()) => {
                    assert_eq!(out, d[off as usize..off as usize + 64 * 1024], "at {off}");
                    off += out.len() as u64;
                }
                Err(e) => break e,
            }
        };
        assert_eq!(err.errno(), libc::ETIMEDOUT, "{err}");
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t.elapsed()
        );
        // Failed where the stalled range begins, not before, with nothing short.
        assert_eq!(off, R / 4 + R / 2);
        assert!(!sg.covers(off));
    }
}
