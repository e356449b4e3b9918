//! The spool: a file's local copy, on disk, while it is being written.
//!
//! Design: every write lands in a temporary file in `spool_dir` (never in RAM), so
//! writes at any offset, sparse files and truncation are plain file operations, and
//! a failed upload can be retried or kept.
//!
//! The long sequential append that copying programs do (cp, dd, tar, rsync) is the
//! one pattern written differently. Past the first [`DIRECT_AFTER`] bytes, data
//! appended at the end is gathered into aligned [`BLOCK`]-sized blocks that a writer
//! thread writes with `O_DIRECT`, bypassing the page cache: the copy is usually
//! deleted unread once the streamed upload succeeds, so putting it through the page
//! cache would only cost system time (allocating and filling fresh pages) that
//! competes with the upload's encryption for the CPU, and evict useful pages.
//! (tests/bench/results has the measurements.)
//!
//! A disk slower than the upload (a hard disk, an SD card) must not slow the upload
//! down to its speed: when [`DEPTH`] blocks are still queued for the writer thread,
//! the next full block is written through the page cache at once instead, and the
//! program goes on.
//!
//! Every other operation (a read, a write elsewhere, truncation, an upload from the
//! spool, keeping it after a failure) is a sync point: it first waits for the
//! writer thread and writes the partial block through the page cache, so the file
//! on disk is whole again, then proceeds as a plain file operation. Direct mode
//! resumes only after another [`BLOCK`] of appends, so a program that alternates
//! appends and reads does not start a thread per write. A write error of the writer
//! thread is returned by the next sync point (flush, fsync and close are sync
//! points). Where `O_DIRECT` is refused (tmpfs, some network filesystems) or fails,
//! the same blocks are written through the page cache.
//!
//! Memory: one staging block plus at most [`DEPTH`] blocks queued, per file being
//! appended to past [`DIRECT_AFTER`].

use super::error::{StoreError, StoreResult as Result};
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;
use std::time::Duration;
use tempfile::NamedTempFile;

use super::store::RemoteStore;

/// Size of a direct-written block.
pub const BLOCK: usize = 1 << 20;
/// Appends below this offset go through the page cache (small files never start
/// the writer thread).
pub const DIRECT_AFTER: u64 = BLOCK as u64;
/// Alignment of `O_DIRECT` buffers, offsets and lengths (covers 512 B and 4 KiB
/// logical blocks).
const ALIGN: usize = 4096;
/// Blocks queued for the writer thread before an append waits.
const DEPTH: usize = 2;

/// A file's local copy while it is being written.
pub struct Spool {
    file: NamedTempFile,
    /// Logical length, including bytes still staged or queued.
    len: u64,
    /// Kept on disk after a failed upload (not deleted when dropped).
    kept: bool,
    appender: Option<DirectAppender>,
    /// Where direct appends may start again after a sync point.
    direct_from: u64,
    /// `O_DIRECT` was refused here: never try again for this spool.
    direct_refused: bool,
    /// Tests: the writer thread sleeps this long before each block (a slow disk).
    writer_delay: Duration,
    /// The first local write error (errno, message): the file on disk may miss
    /// bytes that `len` counts, so every later operation fails with it.
    broken: Option<(i32, String)>,
    /// Bytes before this offset were dropped (holes punched): the server holds
    /// them as the partial upload of a bounded stream (see `uploader.rs`). The
    /// spool is not a whole copy while this is above 0: reads there fail and it
    /// cannot be uploaded.
    forgotten: u64,
    /// Appends go through the page cache (a bounded spool: its bytes are read
    /// back by a resumed upload from another handle at any time).
    buffered_only: bool,
    /// Tests: writes past this length fail with ENOSPC (a full disk).
    #[cfg(test)]
    pub capacity: Option<u64>,
}

impl Spool {
    pub fn new(dir: &Path) -> Result<Self> {
        let file = tempfile::Builder::new()
            .prefix("ftpsfs-spool-")
            .tempfile_in(dir)
            .map_err(|e| {
                StoreError::local(format!("creating a spool file in {}", dir.display()), e)
            })?;
        Ok(Spool::over(file, 0))
    }

    /// A spool over `file`, which holds `len` bytes.
    fn over(file: NamedTempFile, len: u64) -> Self {
        Spool {
            file,
            len,
            kept: false,
            appender: None,
            direct_from: DIRECT_AFTER,
            direct_refused: false,
            writer_delay: Duration::ZERO,
            broken: None,
            forgotten: 0,
            buffered_only: false,
            #[cfg(test)]
            capacity: None,
        }
    }

    /// Fails when an earlier local write failed: the copy is incomplete.
    fn check(&self) -> Result<()> {
        match &self.broken {
            Some((errno, msg)) => Err(StoreError::local(
                msg.clone(),
                std::io::Error::from_raw_os_error(*errno),
            )),
            None => Ok(()),
        }
    }

    /// Records the first write error of `r` (see `broken`).
    fn note<T>(&mut self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            if self.broken.is_none() {
                let errno = e.errno();
                self.broken = Some((
                    if errno == 0 { libc::EIO } else { errno },
                    format!(
                        "spool {} is incomplete after: {e}",
                        self.file.path().display()
                    ),
                ));
            }
        }
        r
    }

    /// The spool file a crashed mount left at `path` (journal recovery). Deleted
    /// when discarded, unless kept.
    pub fn adopt(path: &Path) -> Result<Self> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| StoreError::local(format!("opening {}", path.display()), e))?;
        let len = f
            .metadata()
            .map_err(|e| StoreError::local(format!("reading {}", path.display()), e))?
            .len();
        let temp_path = tempfile::TempPath::try_from_path(path)
            .map_err(|e| StoreError::local(format!("adopting {}", path.display()), e))?;
        let file = NamedTempFile::from_parts(f, temp_path);
        Ok(Spool::over(file, len))
    }

    /// A spool holding the current remote content of `path`.
    pub fn fetch(dir: &Path, store: &dyn RemoteStore, path: &str) -> Result<Self> {
        let mut s = Spool::new(dir)?;
        let mut err = None;
        store.read_from(path, 0, &mut |chunk| {
            let at = s.len;
            match s.write_at(at, chunk) {
                Ok(()) => true,
                Err(e) => {
                    err = Some(e);
                    false
                }
            }
        })?;
        if let Some(e) = err {
            return Err(e);
        }
        s.sync()?;
        Ok(s)
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Bytes at the start that were dropped (see `forgotten`).
    pub fn forgotten(&self) -> u64 {
        self.forgotten
    }

    /// Appends go through the page cache from now on (a bounded stream reads the
    /// spool's tail back through another handle when it resumes).
    pub fn buffered_only(&mut self) -> Result<()> {
        self.buffered_only = true;
        self.sync()
    }

    /// Drops the bytes before `upto` (rounded down to a [`BLOCK`]) from the disk by
    /// punching a hole: only for bytes the server holds. An error (a filesystem
    /// without hole punching) leaves the bytes where they are.
    pub fn forget_before(&mut self, upto: u64) -> Result<()> {
        self.sync()?;
        let upto = upto.min(self.len) / BLOCK as u64 * BLOCK as u64;
        if upto <= self.forgotten {
            return Ok(());
        }
        let (start, len) = (
            self.forgotten as libc::off_t,
            (upto - self.forgotten) as libc::off_t,
        );
        use std::os::unix::io::AsRawFd;
        // SAFETY: fallocate on a descriptor this spool owns.
        let r = unsafe {
            libc::fallocate(
                self.file.as_file().as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                start,
                len,
            )
        };
        if r != 0 {
            return Err(StoreError::local(
                "dropping the uploaded part of the spool file",
                std::io::Error::last_os_error(),
            ));
        }
        self.forgotten = upto;
        Ok(())
    }

    /// The dropped bytes were written back (fetched from the server): the spool
    /// is a whole copy again.
    pub fn restored(&mut self) {
        self.forgotten = 0;
    }

    fn not_whole(&self) -> StoreError {
        StoreError::local(
            format!(
                "the first {} bytes of spool {} were dropped after their upload",
                self.forgotten,
                self.file.path().display()
            ),
            std::io::Error::from_raw_os_error(libc::EIO),
        )
    }

    /// Whether appends currently go to the direct writer (for tests).
    #[cfg(test)]
    pub fn is_direct(&self) -> bool {
        self.appender.is_some()
    }

    /// Blocks of the current direct run that went through the page cache because
    /// the disk was behind (for tests).
    #[cfg(test)]
    pub fn blocks_buffered(&self) -> u64 {
        self.appender.as_ref().map_or(0, |a| a.buffered_blocks)
    }

    /// Tests: makes the writer thread as slow as a slow disk.
    #[cfg(test)]
    fn slow_writer(&mut self, per_block: Duration) {
        self.writer_delay = per_block;
    }

    #[cfg(test)]
    pub fn read_at(&mut self, offset: u64, size: usize) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.read_into(offset, size, &mut buf)?;
        Ok(buf)
    }

    /// [`Spool::read_at`] appending to `out` (the caller's reused buffer).
    pub fn read_into(&mut self, offset: u64, size: usize, out: &mut Vec<u8>) -> Result<()> {
        self.check()?;
        if offset >= self.len {
            return Ok(());
        }
        if offset < self.forgotten {
            return Err(self.not_whole());
        }
        self.sync()?;
        let n = (size as u64).min(self.len - offset) as usize;
        let start = out.len();
        out.resize(start + n, 0);
        if let Err(e) = self.file.as_file().read_exact_at(&mut out[start..], offset) {
            out.truncate(start);
            return Err(StoreError::local("reading the spool file", e));
        }
        Ok(())
    }

    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.check()?;
        let r = self.write_unchecked(offset, data);
        self.note(r)
    }

    fn write_unchecked(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        #[cfg(test)]
        if self
            .capacity
            .is_some_and(|c| offset + data.len() as u64 > c)
        {
            return Err(StoreError::local(
                "writing the spool file",
                std::io::Error::from_raw_os_error(libc::ENOSPC),
            ));
        }
        if offset == self.len && self.append_direct(data)? {
            return Ok(());
        }
        self.sync()?;
        self.file
            .as_file()
            .write_all_at(data, offset)
            .map_err(|e| StoreError::local("writing the spool file", e))?;
        self.len = self.len.max(offset + data.len() as u64);
        Ok(())
    }

    /// Appends through the direct writer when this spool is in (or may enter)
    /// direct mode; false when the caller should write normally.
    fn append_direct(&mut self, data: &[u8]) -> Result<bool> {
        if self.appender.is_none() {
            if self.direct_refused
                || self.buffered_only
                || self.len < self.direct_from
                || data.is_empty()
            {
                return Ok(false);
            }
            let started = DirectAppender::start(
                self.file.path(),
                self.file.as_file(),
                self.len,
                self.writer_delay,
            );
            match started {
                Ok(a) => self.appender = Some(a),
                Err(e) => {
                    log::debug!(
                        "spool {}: O_DIRECT refused ({e}); writing through the page cache",
                        self.file.path().display()
                    );
                    self.direct_refused = true;
                    return Ok(false);
                }
            }
        }
        let Some(a) = self.appender.as_mut() else {
            return Ok(false);
        };
        a.append(data)?;
        self.len += data.len() as u64;
        Ok(true)
    }

    /// Sync point: the file on disk holds every byte written so far.
    pub fn sync(&mut self) -> Result<()> {
        self.check()?;
        let Some(a) = self.appender.take() else {
            return Ok(());
        };
        self.direct_from = self.len + BLOCK as u64;
        let r = a.finish(self.file.as_file());
        self.note(r)
    }

    pub fn set_len(&mut self, len: u64) -> Result<()> {
        self.sync()?;
        let r = self
            .file
            .as_file()
            .set_len(len)
            .map_err(|e| StoreError::local("truncating the spool file", e));
        self.note(r)?;
        self.len = len;
        self.forgotten = self.forgotten.min(len);
        Ok(())
    }

    /// Keeps the spool file on disk after a failed upload; returns its path.
    pub fn keep(&mut self) -> PathBuf {
        if let Err(e) = self.sync() {
            log::error!(
                "spool {}: could not write all of it: {e}",
                self.file.path().display()
            );
        }
        self.kept = true;
        self.file.path().to_path_buf()
    }

    /// The data reached the server after all: the spool may be deleted again.
    pub fn unkeep(&mut self) {
        self.kept = false;
    }

    pub fn is_kept(&self) -> bool {
        self.kept
    }

    /// A reader from offset 0, after a sync point; an error when bytes were
    /// dropped (see `forgotten`).
    pub fn reader(&mut self) -> Result<File> {
        self.sync()?;
        if self.forgotten > 0 {
            return Err(self.not_whole());
        }
        let mut f = self
            .file
            .reopen()
            .map_err(|e| StoreError::local("reopening the spool file", e))?;
        f.seek(SeekFrom::Start(0))
            .map_err(|e| StoreError::local("seeking the spool file", e))?;
        Ok(f)
    }

    /// Abandons the spool: deleted unless kept.
    pub fn discard(mut self) {
        if !self.kept {
            // Unread and about to be deleted: stop the writer without waiting.
            if let Some(a) = self.appender.take() {
                a.abandon();
            }
            return;
        }
        let p = self.keep();
        match self.file.keep() {
            Ok(_) => log::warn!("unsaved data of a failed upload kept in {}", p.display()),
            Err(e) => log::error!("could not keep spool file {}: {e}", p.display()),
        }
    }
}

/// A `BLOCK`-sized buffer aligned for `O_DIRECT`, without unsafe code: an
/// over-allocated Vec and the aligned window inside it.
struct AlignedBlock {
    raw: Vec<u8>,
    start: usize,
}

impl AlignedBlock {
    fn new() -> Self {
        let raw = vec![0u8; BLOCK + ALIGN];
        let start = raw.as_ptr().align_offset(ALIGN);
        AlignedBlock { raw, start }
    }

    fn bytes(&self) -> &[u8] {
        &self.raw[self.start..self.start + BLOCK]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + BLOCK]
    }
}

/// A full block on its way to the disk, or back to the appender for reuse.
struct Queued {
    offset: u64,
    block: AlignedBlock,
}

/// Gathers appended bytes into aligned blocks; a thread writes full ones with
/// `O_DIRECT` (or, where that fails, through the page cache).
struct DirectAppender {
    /// The spool through the page cache, for blocks the disk cannot take fast enough.
    buffered: File,
    /// Blocks written that way (for the log and tests).
    buffered_blocks: u64,
    staging: AlignedBlock,
    /// File offset of `staging`'s first byte (aligned).
    base: u64,
    filled: usize,
    to_writer: SyncSender<Queued>,
    /// Written blocks come back for reuse; an error ends the writer.
    from_writer: Receiver<std::result::Result<AlignedBlock, std::io::Error>>,
    in_flight: usize,
    spare: Vec<AlignedBlock>,
    worker: JoinHandle<()>,
}

impl DirectAppender {
    /// Starts at `len`: the staging block begins at the aligned offset below it,
    /// holding the bytes already in the file between the two.
    fn start(path: &Path, buffered: &File, len: u64, delay: Duration) -> std::io::Result<Self> {
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)?;
        let fallback = buffered.try_clone()?;
        let own_buffered = buffered.try_clone()?;
        let base = len - len % ALIGN as u64;
        let mut staging = AlignedBlock::new();
        let filled = (len - base) as usize;
        buffered.read_exact_at(&mut staging.bytes_mut()[..filled], base)?;
        let (to_writer, jobs) = sync_channel::<Queued>(DEPTH);
        let (done, from_writer) = sync_channel(DEPTH + 1);
        let worker = std::thread::Builder::new()
            .name("ftpsfs-spool".into())
            .spawn(move || write_blocks(direct, fallback, jobs, done, delay))?;
        Ok(DirectAppender {
            buffered: own_buffered,
            buffered_blocks: 0,
            staging,
            base,
            filled,
            to_writer,
            from_writer,
            in_flight: 0,
            spare: Vec::new(),
            worker,
        })
    }

    fn append(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let n = data.len().min(BLOCK - self.filled);
            self.staging.bytes_mut()[self.filled..self.filled + n].copy_from_slice(&data[..n]);
            self.filled += n;
            data = &data[n..];
            if self.filled == BLOCK {
                self.queue_full_block()?;
            }
        }
        Ok(())
    }

    fn queue_full_block(&mut self) -> Result<()> {
        // Reuse a written block when one is back.
        while let Ok(r) = self.from_writer.try_recv() {
            self.took_back(r)?;
        }
        let next = match self.spare.pop() {
            Some(b) => b,
            None if self.in_flight < DEPTH => AlignedBlock::new(),
            None => {
                // DEPTH blocks are still on their way to the disk: it is slower than
                // the writer (a hard disk, an SD card). This block goes through the
                // page cache instead of making the program wait for the disk.
                self.buffered
                    .write_all_at(self.staging.bytes(), self.base)
                    .map_err(|e| StoreError::local("writing the spool file", e))?;
                self.buffered_blocks += 1;
                self.base += BLOCK as u64;
                self.filled = 0;
                return Ok(());
            }
        };
        let full = std::mem::replace(&mut self.staging, next);
        self.to_writer
            .send(Queued {
                offset: self.base,
                block: full,
            })
            .map_err(|_| writer_gone())?;
        self.in_flight += 1;
        self.base += BLOCK as u64;
        self.filled = 0;
        Ok(())
    }

    fn took_back(&mut self, r: std::result::Result<AlignedBlock, std::io::Error>) -> Result<()> {
        self.in_flight -= 1;
        let block = r.map_err(|e| StoreError::local("writing the spool file", e))?;
        self.spare.push(block);
        Ok(())
    }

    /// Waits for every queued block, then writes the partial one through `file`.
    fn finish(self, file: &File) -> Result<()> {
        if self.buffered_blocks > 0 {
            log::debug!(
                "spool: {} block(s) went through the page cache, the disk being slower",
                self.buffered_blocks
            );
        }
        let DirectAppender {
            staging,
            base,
            filled,
            to_writer,
            from_writer,
            mut in_flight,
            worker,
            ..
        } = self;
        drop(to_writer);
        let mut first_err = None;
        while in_flight > 0 {
            match from_writer.recv() {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert(std::io::Error::other("spool writer ended early"));
                    break;
                }
            }
            in_flight -= 1;
        }
        let _ = worker.join();
        if let Some(e) = first_err {
            return Err(StoreError::local("writing the spool file", e));
        }
        file.write_all_at(&staging.bytes()[..filled], base)
            .map_err(|e| StoreError::local("writing the spool file", e))
    }

    /// Stops without waiting (the spool is being deleted).
    fn abandon(self) {
        drop(self.to_writer);
    }
}

fn writer_gone() -> StoreError {
    StoreError::local(
        "writing the spool file",
        std::io::Error::other("spool writer thread ended"),
    )
}

/// The writer thread: writes each block at its offset, `O_DIRECT` first; after a
/// refusal, through the page cache. Sends each block back (or the error, then
/// stops taking work: the appender reports it at the next sync point).
fn write_blocks(
    direct: File,
    fallback: File,
    jobs: Receiver<Queued>,
    done: SyncSender<std::result::Result<AlignedBlock, std::io::Error>>,
    delay: Duration,
) {
    let mut use_direct = true;
    for q in jobs {
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let data = q.block.bytes();
        let mut r = if use_direct {
            direct.write_all_at(data, q.offset)
        } else {
            Err(std::io::Error::other("direct writes stopped"))
        };
        if r.is_err() {
            use_direct = false;
            r = fallback.write_all_at(data, q.offset);
        }
        let failed = r.is_err();
        if done.send(r.map(|()| q.block)).is_err() || failed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::memstore::MemStore;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
            .collect()
    }

    #[test]
    fn fetch_copies_the_remote_file() {
        let store = MemStore::new();
        let big = pattern(3 * BLOCK + 12_345, 1);
        store.put("/f", &big);
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::fetch(dir.path(), &store, "/f").unwrap();
        assert_eq!(s.len(), big.len() as u64);
        assert!(!s.is_direct(), "fetch ends with a sync point");
        assert_eq!(std::fs::read(s.path()).unwrap(), big);
        assert_eq!(
            s.read_at(big.len() as u64 - 10, 100).unwrap(),
            &big[big.len() - 10..]
        );
    }

    #[test]
    fn long_appends_go_direct_and_every_sync_point_sees_all_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::new(dir.path()).unwrap();
        // Odd-sized appends (tar's 10 KiB records) so blocks never line up with writes.
        let data = pattern(5 * BLOCK + 777, 2);
        let mut off = 0;
        let mut went_direct = false;
        for chunk in data.chunks(10_240) {
            s.write_at(off, chunk).unwrap();
            off += chunk.len() as u64;
            went_direct |= s.is_direct();
        }
        assert!(
            went_direct,
            "appends past DIRECT_AFTER use the direct writer"
        );
        assert_eq!(s.len(), data.len() as u64);
        // A read is a sync point: the file holds everything, staged tail included.
        assert_eq!(
            s.read_at(data.len() as u64 - 1000, 4096).unwrap(),
            &data[data.len() - 1000..]
        );
        assert!(!s.is_direct());
        assert_eq!(std::fs::read(s.path()).unwrap(), data);
    }

    #[test]
    fn direct_mode_resumes_after_a_block_and_keeps_earlier_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::new(dir.path()).unwrap();
        let mut all = pattern(2 * BLOCK + 100, 3);
        s.write_at(0, &all[..BLOCK]).unwrap();
        s.write_at(BLOCK as u64, &all[BLOCK..]).unwrap();
        assert!(s.is_direct());
        // A write elsewhere: sync point, then a plain write.
        s.write_at(10, b"middle").unwrap();
        all[10..16].copy_from_slice(b"middle");
        assert!(!s.is_direct());
        // Appends resume direct mode only a BLOCK later, starting from an unaligned end.
        let more = pattern(2 * BLOCK + 5, 4);
        let mut off = all.len() as u64;
        for chunk in more.chunks(65_536) {
            s.write_at(off, chunk).unwrap();
            off += chunk.len() as u64;
        }
        all.extend_from_slice(&more);
        assert!(s.is_direct(), "direct again after another BLOCK of appends");
        let mut r = s.reader().unwrap();
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut r, &mut got).unwrap();
        assert_eq!(got.len(), all.len());
        assert!(got == all, "content after direct, plain and direct again");
    }

    #[test]
    fn truncation_and_keep_are_sync_points() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::new(dir.path()).unwrap();
        let data = pattern(3 * BLOCK + 999, 5);
        s.write_at(0, &data[..BLOCK]).unwrap();
        s.write_at(BLOCK as u64, &data[BLOCK..]).unwrap();
        assert!(s.is_direct());
        s.set_len(BLOCK as u64 + 3).unwrap();
        assert_eq!(std::fs::read(s.path()).unwrap(), &data[..BLOCK + 3]);

        let mut s = Spool::new(dir.path()).unwrap();
        s.write_at(0, &data[..BLOCK]).unwrap();
        s.write_at(BLOCK as u64, &data[BLOCK..]).unwrap();
        assert!(s.is_direct());
        let kept = s.keep();
        assert_eq!(std::fs::read(&kept).unwrap(), data, "kept spool is whole");
        s.discard();
        assert!(kept.exists(), "kept spool stays");
        std::fs::remove_file(kept).unwrap();
    }

    #[test]
    fn a_slow_disk_does_not_hold_the_writer_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::new(dir.path()).unwrap();
        s.slow_writer(Duration::from_millis(300));
        let data = pattern(12 * BLOCK + 5, 7);
        let t = std::time::Instant::now();
        let mut off = 0;
        for chunk in data.chunks(BLOCK) {
            s.write_at(off, chunk).unwrap();
            off += chunk.len() as u64;
        }
        let took = t.elapsed();
        // The writer thread took at most a few blocks (300 ms each); the rest went
        // through the page cache without waiting for it.
        assert!(s.blocks_buffered() >= 6, "{} buffered", s.blocks_buffered());
        assert!(
            took < Duration::from_millis(2000),
            "appends waited for the disk: {took:?}"
        );
        s.sync().unwrap();
        assert!(
            std::fs::read(s.path()).unwrap() == data,
            "content whole after sync"
        );
    }

    #[test]
    fn small_files_never_start_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::new(dir.path()).unwrap();
        s.write_at(0, &pattern(BLOCK, 6)).unwrap();
        assert!(!s.is_direct());
        s.write_at(BLOCK as u64, b"x").unwrap();
        assert!(s.is_direct(), "the first append past DIRECT_AFTER does");
    }
}
