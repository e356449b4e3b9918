//! Sequential read streaming with readahead, one per open file handle.
//!
//! Design: a read at an offset starts one download (`RETR`, with `REST` when the
//! offset is not 0) on a background thread, which pushes chunks into a bounded
//! channel: the channel's depth is the readahead, so the wire keeps running while
//! the kernel consumes, and memory stays bounded (per stream: `READAHEAD` bytes in
//! the channel, and the window below: `KEEP_BEHIND` behind the furthest read).
//! Reads are served from a window of recent bytes, kept as the chunks the thread
//! sent (no copy into one big buffer, no moving bytes when the window slides; a
//! chunk that falls behind goes back to the thread for reuse, so a stream does
//! not allocate per chunk), and copied once into the caller's buffer (the FUSE
//! adapter reuses one per thread). The kernel's readahead arrives
//! out of order from several FUSE threads, so a read behind the furthest one (up
//! to `KEEP_BEHIND`) or a little ahead of the stream (up to `SKIP_AHEAD`, discarded
//! from the stream) does not restart the transfer. Any other seek drops the stream
//! (its RETR is stopped with ABOR, which keeps the control connection) and starts a
//! new one at the new offset (EPSV, REST and RETR sent together): a random read
//! costs two round trips (the second carries the data connection's TLS handshake)
//! plus its bytes, never the whole file.
//!
//! A read returns all the bytes it asks for, or fewer only at the true end of the
//! file, or an error: never a short read in the middle, which the kernel would take
//! for the end of the file (and shrink its size). A download cut short (reset,
//! early EOF without the TLS close_notify, timeout, 421/426) is resumed where it
//! stopped with REST on a new data connection, up to `MAX_RESUMES` times in a row
//! without progress; then the read fails with the error. The stream's thread has a
//! silence limit (a third of `timeout=`, see `crate::deadline`): a connection that
//! died without a word is given up in time for the reader to resume.

use super::error::{StoreError, StoreResult as Result};
use super::segments::{Head, Progress, Segmented, RANGE, SEGMENT_BELOW, SEQ_PROOF, THRESHOLD};
use super::store::RemoteStore;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, RecvTimeoutError, Sender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

/// Bytes a stream may download ahead of the reader.
pub const READAHEAD: usize = 6 * 1024 * 1024;
/// Size of the chunks moved through the channel.
pub const CHUNK: usize = 256 * 1024;
/// Bytes kept behind the furthest read, for out-of-order kernel reads: the
/// kernel reads ahead in requests of up to 1 MiB (the mount's `READ_AHEAD_KB`)
/// served by several threads, and one can arrive after the next two or three.
pub const KEEP_BEHIND: u64 = 4 * 1024 * 1024;
/// A forward jump up to this far is read through instead of restarting.
pub const SKIP_AHEAD: u64 = 2 * 1024 * 1024;
/// A stream whose reader left it idle this long gives its connection to a waiter.
pub const YIELD_AFTER: Duration = Duration::from_millis(500);
/// Resumes of a cut download in a row (without progress in between) before a
/// read fails.
pub const MAX_RESUMES: u32 = 3;
/// Pause before the n-th resume: n times this.
const RESUME_PAUSE: Duration = Duration::from_millis(200);

enum Msg {
    Data(Vec<u8>),
    End(Result<()>),
}

struct Stream {
    rx: Receiver<Msg>,
    /// While the reader waits: the file offset it needs data up to (else 0). The
    /// thread sends what it has as soon as it reaches that offset instead of
    /// filling a whole chunk first (a 4 KiB read needs only 4 KiB).
    needed: Arc<AtomicU64>,
    /// Emptied chunks go back to the thread: no allocation per chunk.
    recycle: Sender<Vec<u8>>,
    cancel: Arc<AtomicBool>,
    /// Set by the thread when it gave its connection back to a waiting operation.
    yielded: Arc<AtomicBool>,
    /// Bytes [buf_start, buf_start + buf_len) of the file, in the chunks received.
    buf: VecDeque<Vec<u8>>,
    buf_start: u64,
    buf_len: u64,
    eof: bool,
    error: Option<StoreError>,
    /// What the thread received and how fast (whether segments would help).
    wire: Arc<Progress>,
}

impl Stream {
    fn end(&self) -> u64 {
        self.buf_start + self.buf_len
    }

    fn push(&mut self, chunk: Vec<u8>) {
        self.buf_len += chunk.len() as u64;
        self.buf.push_back(chunk);
    }

    /// Appends bytes [from, to) of the file (within the window) to `out`.
    fn copy_out(&self, from: u64, to: u64, out: &mut Vec<u8>) {
        let mut at = self.buf_start;
        for chunk in &self.buf {
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

    /// Drops the whole chunks that end before `keep_from`, giving them back to
    /// the thread.
    fn trim(&mut self, keep_from: u64) {
        while let Some(front) = self.buf.front() {
            let len = front.len() as u64;
            if self.buf_start + len > keep_from {
                break;
            }
            if let Some(c) = self.buf.pop_front() {
                self.buf_start += len;
                self.buf_len -= len;
                if c.capacity() >= CHUNK {
                    let _ = self.recycle.send(c);
                }
            }
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// Counters, for tests and logs.
#[derive(Debug, Default, Clone, Copy)]
pub struct PrefetchStats {
    pub streams_started: u64,
    /// Times a sequential read went over to segments (`segments.rs`).
    pub segmented: u64,
}

pub struct Prefetcher {
    store: Arc<dyn RemoteStore>,
    path: String,
    stream: Option<Stream>,
    pub stats: PrefetchStats,
    /// The last read that failed: its offset, when, its errno and message. The
    /// kernel asks again at once for a page whose readahead failed; that second
    /// request gets the same answer instead of a second full deadline.
    failed: Option<(u64, std::time::Instant, i32, String)>,
    /// The file's size as listed and the segments allowed (`segments=`; 1: off).
    size: u64,
    segments: usize,
    /// Bytes per segment range (`segments::RANGE`; smaller in tests).
    range_len: u64,
    /// Where the current single stream's sequential reading began.
    seq_from: u64,
    /// Segments only while the single stream is slower than this (bytes/s).
    segment_below: f64,
    /// This stream was measured fast enough: no segments for it.
    declined: bool,
    seg: Option<Segmented>,
}

/// How long a failed read's answer is given again to a read at the same offset.
const REPEAT_FAILURE_FOR: Duration = Duration::from_millis(250);

impl Prefetcher {
    pub fn new(store: Arc<dyn RemoteStore>, path: String) -> Self {
        Prefetcher {
            store,
            path,
            stream: None,
            stats: PrefetchStats::default(),
            failed: None,
            size: 0,
            segments: 1,
            range_len: RANGE,
            seq_from: 0,
            segment_below: SEGMENT_BELOW,
            declined: false,
            seg: None,
        }
    }

    /// Reads a file of `size` bytes (as listed) over up to `segments` connections
    /// once it is read sequentially and large enough (see `segments.rs`).
    pub fn with_segments(mut self, size: u64, segments: usize) -> Self {
        self.size = size;
        self.segments = segments;
        self
    }

    /// Segments only while one stream brings less than `bytes_per_s` (default
    /// `SEGMENT_BELOW`).
    #[cfg(test)]
    pub fn segment_below(mut self, bytes_per_s: f64) -> Self {
        self.segment_below = bytes_per_s;
        self
    }

    /// Counters of the segmented read in progress, if any.
    #[cfg(test)]
    pub fn segment_stats(&self) -> Option<crate::fs::segments::SegmentStats> {
        self.seg.as_ref().map(|s| s.stats)
    }

    /// Goes over to segments when the single stream has been read sequentially
    /// for `SEQ_PROOF` bytes of a file large enough, with enough left to read.
    fn maybe_segment(&mut self, offset: u64) {
        if self.segments < 2 || self.size < THRESHOLD {
            return;
        }
        let Some(s) = self.stream.as_ref() else {
            return;
        };
        let sequential = offset >= self.seq_from + SEQ_PROOF
            && offset >= s.buf_start
            && offset <= s.end() + SKIP_AHEAD;
        if !sequential
            || self.declined
            || s.eof
            || s.error.is_some()
            || self.size < s.end() + 2 * self.range_len
        {
            return;
        }
        // Only where one connection is held back by its path.
        match s.wire.steady_rate() {
            None => return, // not measured yet: decide on a later read
            Some(r) if r < self.segment_below => {
                log::debug!("read {}: one stream brings {:.0} MB/s", self.path, r / 1e6);
            }
            r => {
                log::debug!(
                    "read {}: one stream brings {:.0} MB/s: no segments",
                    self.path,
                    r.unwrap_or(f64::INFINITY) / 1e6
                );
                self.declined = true;
                return;
            }
        }
        let Some(mut s) = self.stream.take() else {
            return;
        };
        s.cancel.store(true, Ordering::Relaxed);
        // What the stream has delivered stays: segments continue after it.
        while let Ok(Msg::Data(d)) = s.rx.try_recv() {
            s.push(d);
        }
        let head = Head {
            chunks: std::mem::take(&mut s.buf),
            start: s.buf_start,
            len: s.buf_len,
        };
        log::debug!(
            "read {} in segments from {}",
            self.path,
            head.start + head.len
        );
        self.stats.segmented += 1;
        self.seg = Some(Segmented::new(
            self.store.clone(),
            self.path.clone(),
            self.size,
            self.segments,
            self.range_len,
            head,
        ));
    }

    /// Starts a stream at `offset` for a reader that needs the bytes up to `need`
    /// (set before the thread exists: its first bytes may arrive before the reader
    /// gets to wait for them).
    fn start(&mut self, offset: u64, need: u64) {
        let (tx, rx) = sync_channel::<Msg>(READAHEAD / CHUNK);
        let (recycle, recycled) = channel::<Vec<u8>>();
        let cancel = Arc::new(AtomicBool::new(false));
        let yielded = Arc::new(AtomicBool::new(false));
        let needed = Arc::new(AtomicU64::new(need));
        let reader_needs = needed.clone();
        let wire = Arc::new(Progress::default());
        let started = std::time::Instant::now();
        let counter = wire.clone();
        let mut received = offset;
        let store = self.store.clone();
        let path = self.path.clone();
        let flag = cancel.clone();
        let gave_up = yielded.clone();
        self.stats.streams_started += 1;
        log::debug!("read stream {path} from {offset}");
        let quiet = crate::deadline::silence_limit_for_helpers();
        let spawned = std::thread::Builder::new()
            .name("ftpsfs-read".into())
            .spawn(move || {
                // A dead connection fails in time for the reader to resume.
                let _quiet = quiet.map(crate::deadline::limit_silence);
                let mut pending: Vec<u8> = Vec::with_capacity(CHUNK);
                let send = |msg: Msg| -> bool {
                    let mut msg = msg;
                    let mut waited = Duration::ZERO;
                    loop {
                        if flag.load(Ordering::Relaxed) {
                            return false;
                        }
                        match tx.try_send(msg) {
                            Ok(()) => return true,
                            Err(TrySendError::Disconnected(_)) => return false,
                            Err(TrySendError::Full(m)) => {
                                msg = m;
                                std::thread::sleep(Duration::from_millis(1));
                                waited += Duration::from_millis(1);
                                // The reader is idle and someone needs a connection.
                                if waited > YIELD_AFTER && store.is_contended() {
                                    gave_up.store(true, Ordering::Relaxed);
                                    return false;
                                }
                            }
                        }
                    }
                };
                let result = store.read_from(&path, offset, &mut |chunk: &[u8]| {
                    pending.extend_from_slice(chunk);
                    received += chunk.len() as u64;
                    counter.note(chunk.len() as u64, started);
                    let need = reader_needs.load(Ordering::Relaxed);
                    if pending.len() < CHUNK && need != 0 && received >= need {
                        // Early, for a waiting reader: a right-sized copy, so that
                        // the window's memory follows its bytes, not CHUNK-sized
                        // buffers holding a few KiB each.
                        let part = pending.clone();
                        pending.clear();
                        return send(Msg::Data(part));
                    }
                    if pending.len() >= CHUNK {
                        let next = match recycled.try_recv() {
                            Ok(mut b) => {
                                b.clear();
                                b
                            }
                            Err(_) => Vec::with_capacity(CHUNK),
                        };
                        let full = std::mem::replace(&mut pending, next);
                        return send(Msg::Data(full));
                    }
                    true
                });
                if gave_up.load(Ordering::Relaxed)
                    || (!pending.is_empty() && result.is_ok() && !send(Msg::Data(pending)))
                {
                    return;
                }
                send(Msg::End(result));
            });
        let stream = Stream {
            rx,
            needed,
            recycle,
            cancel,
            yielded,
            buf: VecDeque::new(),
            buf_start: offset,
            buf_len: 0,
            eof: false,
            error: None,
            wire,
        };
        self.stream = Some(stream);
        if let Err(e) = spawned {
            if let Some(s) = self.stream.as_mut() {
                s.error = Some(StoreError::local("starting a read thread", e));
            }
        }
    }

    /// Restarts the stream where it stopped (REST), keeping the window.
    fn resume(&mut self, want_end: u64) {
        let Some(s) = self.stream.as_mut() else {
            return;
        };
        let (start, len, end) = (s.buf_start, s.buf_len, s.end());
        let buf = std::mem::take(&mut s.buf);
        self.stream = None;
        self.start(end, want_end);
        if let Some(n) = self.stream.as_mut() {
            n.buf = buf;
            n.buf_start = start;
            n.buf_len = len;
        }
    }

    /// Reads up to `size` bytes at `offset`; fewer only at the end of the file.
    #[cfg(test)]
    pub fn read(&mut self, offset: u64, size: usize) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.read_into(offset, size, &mut out)?;
        Ok(out)
    }

    /// [`Prefetcher::read`] appending to `out` (a buffer the caller reuses).
    pub fn read_into(&mut self, offset: u64, size: usize, out: &mut Vec<u8>) -> Result<()> {
        if size == 0 {
            return Ok(());
        }
        if let Some((at, when, errno, msg)) = &self.failed {
            if *at == offset && when.elapsed() < REPEAT_FAILURE_FOR {
                return Err(StoreError::Local {
                    context: msg.clone(),
                    source: std::io::Error::from_raw_os_error(*errno),
                });
            }
        }
        let r = self.read_inner(offset, size, out);
        match &r {
            Err(e) => {
                let errno = match e.errno() {
                    0 => libc::EIO,
                    n => n,
                };
                self.failed = Some((offset, std::time::Instant::now(), errno, e.to_string()));
            }
            Ok(()) => self.failed = None,
        }
        r
    }

    fn read_inner(&mut self, offset: u64, size: usize, out: &mut Vec<u8>) -> Result<()> {
        if self.seg.is_none() {
            self.maybe_segment(offset);
        }
        if let Some(sg) = self.seg.as_mut() {
            if sg.covers(offset) {
                let r = sg.read_into(offset, size, out);
                if r.is_err() {
                    self.seg = None;
                }
                return r;
            }
            // A seek: back to one stream (segments again once it is sequential).
            self.seg = None;
        }
        let usable = match &self.stream {
            Some(s) => {
                offset >= s.buf_start
                    && (offset <= s.end() + SKIP_AHEAD || s.eof)
                    && !(s.error.is_some() && offset >= s.end())
            }
            None => false,
        };
        if !usable {
            self.stream = None;
            self.seq_from = offset;
            self.declined = false;
            self.start(offset, offset + size as u64);
        }
        let want_end = offset + size as u64;
        // Resumes of a cut download for this read, and where the last one started.
        let mut resumes = 0u32;
        let mut resumed_at = u64::MAX;
        loop {
            let Some(s) = self.stream.as_mut() else {
                return Err(StoreError::Failed("no read stream".into()));
            };
            if s.end() >= want_end || s.eof {
                break;
            }
            if s.error.is_some() {
                // Cut short: a read returns all its bytes or fails, never fewer
                // (the kernel would take a short read for the end of the file).
                let at = s.end();
                if resumed_at != at {
                    resumes = 0; // progress since the last resume
                }
                let Some(e) = s.error.take() else { break };
                if !e.is_resumable() || resumes >= MAX_RESUMES {
                    self.stream = None;
                    log::error!("reading {} at {at}: {e}; giving up", self.path);
                    return Err(e);
                }
                resumes += 1;
                resumed_at = at;
                log::warn!(
                    "reading {} at {at}: {e}; resuming there (attempt {resumes} of {MAX_RESUMES})",
                    self.path
                );
                std::thread::sleep(RESUME_PAUSE * resumes);
                self.resume(want_end);
                continue;
            }
            s.needed.store(want_end, Ordering::Relaxed);
            // Bounded by the operation's deadline; bytes arriving are progress.
            let msg = match crate::deadline::left() {
                None => s.rx.recv().map_err(|_| false),
                Some(left) => {
                    s.rx.recv_timeout(left)
                        .map_err(|e| e == RecvTimeoutError::Timeout)
                }
            };
            s.needed.store(0, Ordering::Relaxed);
            if msg.is_ok() {
                crate::deadline::progress();
            }
            let msg = match msg {
                Err(true) => {
                    // Out of time: the stream is dropped (its thread stops) and the
                    // read fails; the size shown does not change.
                    let e = StoreError::Timeout(format!(
                        "reading {} at {}: no data within the deadline (timeout=)",
                        self.path,
                        s.end()
                    ));
                    self.stream = None;
                    log::warn!("{e}");
                    return Err(e);
                }
                Ok(m) => Ok(m),
                Err(false) => Err(()),
            };
            match msg {
                Ok(Msg::Data(d)) => s.push(d),
                Ok(Msg::End(Ok(()))) => s.eof = true,
                Ok(Msg::End(Err(e))) => s.error = Some(e),
                Err(_) if s.yielded.load(Ordering::Relaxed) => {
                    // It gave its connection away while we were idle: go on from
                    // where it stopped, keeping the window.
                    self.resume(want_end);
                }
                Err(_) => s.error = Some(StoreError::Lost("read thread ended".into())),
            }
        }
        let Some(s) = self.stream.as_mut() else {
            return Err(StoreError::Failed("no read stream".into()));
        };
        if offset >= s.end() {
            return Ok(()); // at or past the true end of the file
        }
        s.copy_out(offset, want_end.min(s.end()), out);
        // Trim the window: keep KEEP_BEHIND bytes behind this read.
        s.trim(offset.saturating_sub(KEEP_BEHIND));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::memstore::MemStore;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn sequential_and_jittered_reads_use_one_stream() {
        let store = Arc::new(MemStore::new());
        let d = data(5 * 1024 * 1024 + 123);
        store.put("/f", &d);
        let mut p = Prefetcher::new(store.clone(), "/f".into());
        assert_eq!(p.read(0, 10).unwrap(), d[..10]);
        let mut off = 0u64;
        while (off as usize) < d.len() {
            // out of order by one block now and then
            let b = p.read(off + 131072, 131072).unwrap();
            let a = p.read(off, 131072).unwrap();
            let end = (off as usize + 131072).min(d.len());
            assert_eq!(a, d[off as usize..end]);
            if end < d.len() {
                let end2 = (off as usize + 262144).min(d.len());
                assert_eq!(b, d[end..end2]);
            }
            off += 262144;
        }
        assert!(p.read(d.len() as u64, 10).unwrap().is_empty());
        assert_eq!(p.stats.streams_started, 1);
    }

    /// The kernel's 1 MiB readahead requests, served by several FUSE threads, arrive
    /// out of order by up to three requests: one stream serves them all (a restart
    /// costs a round trip and, where the server reads its control connection only
    /// between chunks, a wait for its ABOR).
    #[test]
    fn readahead_requests_out_of_order_by_three_use_one_stream() {
        const MIB: u64 = 1024 * 1024;
        let store = Arc::new(MemStore::new());
        let d = data(12 * MIB as usize);
        store.put("/f", &d);
        let mut p = Prefetcher::new(store.clone(), "/f".into());
        // 3 after 6: 3 MiB behind the furthest read (seen: over 2 MiB).
        for k in [0u64, 1, 2, 4, 5, 6, 3, 7, 9, 10, 8, 11] {
            let r = p.read(k * MIB, MIB as usize).unwrap();
            let at = (k * MIB) as usize;
            assert!(r == d[at..at + MIB as usize], "wrong bytes at {k} MiB");
        }
        assert_eq!(p.stats.streams_started, 1);
    }

    #[test]
    fn random_reads_restart_at_the_offset() {
        let store = Arc::new(MemStore::new());
        let d = data(20 * 1024 * 1024);
        store.put("/f", &d);
        let mut p = Prefetcher::new(store.clone(), "/f".into());
        for off in [15_000_000u64, 100, 9_000_000, 19_999_000] {
            let r = p.read(off, 4096).unwrap();
            let end = (off as usize + 4096).min(d.len());
            assert_eq!(r, d[off as usize..end]);
        }
        assert_eq!(p.stats.streams_started, 4);
    }

    #[test]
    fn an_idle_stream_yields_its_connection_and_resumes() {
        let store = Arc::new(MemStore::new());
        let d = data(READAHEAD * 3);
        store.put("/f", &d);
        let mut p = Prefetcher::new(store.clone(), "/f".into());
        assert_eq!(p.read(0, 4096).unwrap(), d[..4096]);
        store.contended.store(true, Ordering::Relaxed);
        std::thread::sleep(YIELD_AFTER * 3);
        store.contended.store(false, Ordering::Relaxed);
        let mut off = 4096u64;
        while (off as usize) < d.len() {
            let r = p.read(off, 131072).unwrap();
            let end = (off as usize + 131072).min(d.len());
            assert_eq!(r, d[off as usize..end], "at {off}");
            off += r.len() as u64;
        }
        assert_eq!(p.stats.streams_started, 2, "one restart after yielding");
    }

    /// Sends the first 4 KiB of a file, then stalls (a slow link).
    struct Trickle(Vec<u8>);

    impl RemoteStore for Trickle {
        fn list(&self, _: &str) -> Result<Vec<crate::ftp::RemoteEntry>> {
            Ok(Vec::new())
        }
        fn read_from(&self, _: &str, off: u64, sink: &mut dyn FnMut(&[u8]) -> bool) -> Result<()> {
            let off = off as usize;
            if !sink(&self.0[off..off + 4096]) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_secs(3));
            sink(&self.0[off + 4096..]);
            Ok(())
        }
        fn write_file(&self, _: &str, _: &mut dyn std::io::BufRead) -> Result<u64> {
            Ok(0)
        }
        fn delete(&self, _: &str) -> Result<()> {
            Ok(())
        }
        fn mkdir(&self, _: &str) -> Result<()> {
            Ok(())
        }
        fn rmdir(&self, _: &str) -> Result<()> {
            Ok(())
        }
        fn rename(&self, _: &str, _: &str) -> Result<()> {
            Ok(())
        }
        fn chmod(&self, _: &str, _: u32) -> Result<()> {
            Ok(())
        }
        fn set_mtime(&self, _: &str, _: std::time::SystemTime) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_small_read_gets_its_bytes_without_waiting_for_a_whole_chunk() {
        let d = data(CHUNK * 4);
        let mut p = Prefetcher::new(Arc::new(Trickle(d.clone())), "/f".into());
        let t = std::time::Instant::now();
        assert_eq!(p.read(8192, 4096).unwrap(), d[8192..12288]);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }

    #[test]
    fn missing_file_is_an_error() {
        let store = Arc::new(MemStore::new());
        let mut p = Prefetcher::new(store, "/nope".into());
        let e = p.read(0, 10).unwrap_err();
        assert_eq!(e.errno(), libc::ENOENT);
    }
}
