//! The filesystem under injected faults (see `faultstore.rs`): cut downloads and
//! uploads, refused renames, a full spool, shutdown with open writers, crashes and
//! the next mount's recovery. The invariant: every call that returned success told
//! the truth, and every name on the store holds its old or its complete new content.

use super::*;
use crate::fs::faultstore::FaultStore;
use std::sync::atomic::Ordering::SeqCst;

const SITE: &str = "test@memstore:21";

fn setup() -> (Arc<FaultStore>, FtpsFs, tempfile::TempDir) {
    let store = Arc::new(FaultStore::new());
    let spool = tempfile::tempdir().expect("tempdir");
    let fs = FtpsFs::new(store.clone(), config(spool.path()));
    (store, fs, spool)
}

pub(super) fn config(spool: &std::path::Path) -> FsConfig {
    FsConfig {
        root: "/".into(),
        uid: 1000,
        gid: 1000,
        umask: 0o022,
        read_only: false,
        cache_timeout: Duration::from_secs(60),
        cache_entries: 100,
        spool_dir: spool.to_path_buf(),
        inplace: false,
        prefetch_workers: 0,
        site: SITE.into(),
        op_timeout: Duration::from_secs(30),
        strict_dir_times: false,
        spool_window: None,
        segments: 1,
    }
}

pub(super) fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) >> 13) as u8 ^ seed)
        .collect()
}

fn open_name(fs: &FtpsFs, name: &str, flags: i32) -> (u64, u64) {
    let a = fs.lookup(ROOT_INO, name).expect("lookup");
    (a.ino, fs.open(a.ino, flags).expect("open"))
}

/// Regular files directly in the spool directory (spool copies).
fn spool_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn journal_records(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("journal"))
        .map(|r| {
            r.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "rec"))
                .count()
        })
        .unwrap_or(0)
}

pub(super) fn no_part_files(store: &FaultStore) {
    let paths = store.inner.paths();
    assert!(
        !paths.iter().any(|p| p.ends_with(".part")),
        "temporary upload left: {paths:?}"
    );
}

// ---- reads -------------------------------------------------------------------------

#[test]
fn a_cut_download_is_resumed_and_every_byte_read() {
    let (store, fs, _d) = setup();
    let data = pattern(5 << 20, 1);
    store.inner.put("/big", &data);
    // Every connection is cut after 700 KB: the read resumes each time.
    store.cut_reads_after.store(700_000, SeqCst);
    store.cut_reads_times.store(u32::MAX, SeqCst);
    let (ino, fh) = open_name(&fs, "big", libc::O_RDONLY);
    let mut got = Vec::new();
    while got.len() < data.len() + 1 {
        let r = fs.read(fh, got.len() as u64, 131_072).expect("read");
        if r.is_empty() {
            break;
        }
        assert!(
            r.len() == 131_072 || got.len() + r.len() == data.len(),
            "short read in the middle at {}",
            got.len()
        );
        got.extend_from_slice(&r);
    }
    assert!(got == data, "content differs");
    assert_eq!(fs.getattr(ino).unwrap().size, data.len() as u64);
    fs.release(fh).unwrap();
}

#[test]
fn a_download_that_cannot_resume_fails_instead_of_reading_short() {
    let (store, fs, _d) = setup();
    let data = pattern(2 << 20, 2);
    store.inner.put("/f", &data);
    store.cut_reads_after.store(100_000, SeqCst);
    store.cut_reads_times.store(1, SeqCst);
    // Every resume fails too.
    *store.fail_next.lock().unwrap() =
        vec!["read"; crate::fs::prefetcher::MAX_RESUMES as usize + 1];
    let (ino, fh) = open_name(&fs, "f", libc::O_RDONLY);
    let e = fs
        .read(fh, 0, 131_072)
        .expect_err("a short read would be a lie");
    assert_eq!(e, Errno(libc::EIO));
    // The size the mount reports is untouched. The same read at once gets the same
    // answer (the kernel asks again for a page whose readahead failed: no second
    // wait); a moment later the file reads, the connection working again.
    assert_eq!(fs.getattr(ino).unwrap().size, data.len() as u64);
    let t = std::time::Instant::now();
    assert_eq!(fs.read(fh, 0, 131_072), Err(Errno(libc::EIO)));
    assert!(t.elapsed() < Duration::from_millis(50));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(fs.read(fh, 0, 131_072).unwrap(), data[..131_072]);
    fs.release(fh).unwrap();
}

// ---- a full spool --------------------------------------------------------------------

#[test]
fn a_full_spool_fails_writes_and_close_and_the_server_keeps_the_old_file() {
    let (store, fs, d) = setup();
    let old = pattern(4096, 3);
    store.inner.put("/f", &old);
    let (ino, fh) = open_name(&fs, "f", libc::O_WRONLY | libc::O_TRUNC);
    fs.limit_spool(ino, 10_000);
    let chunk = pattern(4096, 4);
    assert!(fs.write(fh, 0, &chunk).is_ok());
    assert!(fs.write(fh, 4096, &chunk).is_ok());
    assert_eq!(fs.write(fh, 8192, &chunk), Err(Errno(libc::ENOSPC)));
    // Later writes fail too: what the program wrote has a hole.
    assert_eq!(fs.write(fh, 12288, b"x"), Err(Errno(libc::ENOSPC)));
    assert_eq!(fs.flush(fh), Err(Errno(libc::ENOSPC)));
    assert_eq!(fs.fsync(fh), Err(Errno(libc::ENOSPC)));
    let _ = fs.release(fh);
    assert_eq!(store.inner.get("/f").unwrap(), old, "old content kept");
    assert!(
        spool_files(d.path()).is_empty(),
        "the broken spool is freed"
    );
    assert_eq!(journal_records(d.path()), 0);
    no_part_files(&store);
    // The file works again afterwards.
    let (_, fh) = open_name(&fs, "f", libc::O_WRONLY | libc::O_TRUNC);
    fs.write(fh, 0, b"new").unwrap();
    fs.release(fh).unwrap();
    assert_eq!(store.inner.get("/f").unwrap(), b"new");
}

#[test]
fn a_full_spool_on_a_new_file_leaves_no_file() {
    let (store, fs, d) = setup();
    let (attr, fh) = fs.create(ROOT_INO, "n", 0o644, libc::O_WRONLY).unwrap();
    // Sequential from 0: a streamed upload to the name is under way.
    fs.write(fh, 0, &pattern(3000, 5)).unwrap();
    fs.limit_spool(attr.ino, 5000);
    assert_eq!(
        fs.write(fh, 3000, &pattern(3000, 6)),
        Err(Errno(libc::ENOSPC))
    );
    assert_eq!(fs.flush(fh), Err(Errno(libc::ENOSPC)));
    let _ = fs.release(fh);
    assert!(
        store.inner.get("/n").is_none(),
        "no partial file under the name"
    );
    assert_eq!(fs.lookup(ROOT_INO, "n"), Err(Errno(libc::ENOENT)));
    assert!(spool_files(d.path()).is_empty());
}

/// A new file's uploads are all cut until the program has closed it (a stall
/// that ends just then): its stream, the upload at close() and the first try at
/// the last release. The release tries once more, and the file arrives whole
/// (without that, a prefix stayed under the new name for the rest of the mount).
#[test]
fn the_last_release_tries_a_lost_upload_once_more() {
    let (store, fs, d) = setup();
    store.cut_uploads_after.store(1000, SeqCst);
    store.cut_uploads_times.store(3, SeqCst);
    let data = pattern(5000, 7);
    let (_, fh) = fs.create(ROOT_INO, "n", 0o644, libc::O_WRONLY).unwrap();
    fs.write(fh, 0, &data).unwrap();
    assert!(fs.flush(fh).is_err(), "close() reports the failed upload");
    assert_eq!(fs.release(fh), Ok(()));
    assert_eq!(store.inner.get("/n").as_deref(), Some(&data[..]));
    assert!(spool_files(d.path()).is_empty(), "nothing left to keep");
}

/// A truncate that arrives while the last release of a writer is still
/// uploading (close() returned, the kernel's release came after) saw the
/// writer and left the upload to it: the release uploads again, so the server
/// holds what the truncate said, every time.
#[test]
fn a_truncate_during_the_last_release_reaches_the_server() {
    for round in 0..10 {
        let (store, fs, _d) = setup();
        store.upload_delay_ms.store(100, SeqCst);
        let data = pattern(12_345, round);
        let (a, fh) = fs.create(ROOT_INO, "f", 0o644, libc::O_WRONLY).unwrap();
        fs.write(fh, 0, &data).unwrap();
        let truncated = std::thread::scope(|s| {
            let t = s.spawn(|| {
                std::thread::sleep(Duration::from_millis(30));
                fs.setattr(a.ino, None, None, None, Some(23_456), None, None)
            });
            assert_eq!(fs.release(fh), Ok(()));
            t.join().expect("truncate thread")
        });
        assert_eq!(truncated.map(|a| a.size), Ok(23_456), "round {round}");
        let mut want = data.clone();
        want.resize(23_456, 0);
        assert_eq!(
            store.inner.get("/f").map(|d| d.len()),
            Some(want.len()),
            "round {round}: the server holds what the truncate said"
        );
        assert_eq!(store.inner.get("/f"), Some(want));
        assert_eq!(fs.getattr(a.ino).map(|a| a.size), Ok(23_456));
    }
}

/// unlink of a new file while its first upload is on its way (a close on
/// another thread): the unlink waits for it and deletes what it created, so
/// the name is gone from the server when unlink returns 0.
#[test]
fn an_unlink_during_the_first_upload_leaves_no_file() {
    let (store, fs, _d) = setup();
    store.upload_delay_ms.store(200, SeqCst);
    let (_, fh) = fs.create(ROOT_INO, "n", 0o644, libc::O_WRONLY).unwrap();
    fs.write(fh, 0, &pattern(5000, 3)).unwrap();
    std::thread::scope(|s| {
        let closing = s.spawn(|| fs.flush(fh));
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(fs.unlink(ROOT_INO, "n"), Ok(()));
        let left = store.inner.get("/n").map(|d| d.len());
        assert_eq!(left, None, "gone when unlink returns");
        let _ = closing.join().expect("flush thread");
    });
    assert_eq!(fs.release(fh), Ok(()));
    let left = store.inner.get("/n").map(|d| d.len());
    assert_eq!(left, None, "and after the close");
}

/// A new file's first upload is cut, and its STOR, held in the network, reaches
/// the server only after the upload that replaced it: it truncates the name it
/// was for. Every upload goes to a temporary name, so that is never the file's:
/// the file keeps its complete content.
#[test]
fn a_late_stor_of_a_given_up_upload_never_truncates_the_file() {
    let (store, fs, _d) = setup();
    store.late_stor.store(true, SeqCst);
    store.cut_uploads_after.store(1000, SeqCst);
    store.cut_uploads_times.store(1, SeqCst);
    let data = pattern(5000, 9);
    let (_, fh) = fs.create(ROOT_INO, "n", 0o644, libc::O_WRONLY).unwrap();
    fs.write(fh, 0, &data).unwrap();
    let closed = fs.flush(fh);
    let released = fs.release(fh);
    assert!(
        closed.is_ok() || released.is_ok(),
        "{closed:?} {released:?}"
    );
    let got = store.inner.get("/n").unwrap_or_default();
    assert_eq!(got.len(), data.len(), "the file after the late STOR");
    assert!(got == data);
}

// ---- refused renames -------------------------------------------------------------------

#[test]
fn a_refused_rename_never_deletes_the_old_file() {
    let (store, fs, _d) = setup();
    store.inner.put("/f", b"old content");
    store.inner.put("/g", b"other");
    store.refuse_renames.store(true, SeqCst);
    // Overwrite: learnt at the first refusal, then uploaded in place.
    let (_, fh) = open_name(&fs, "f", libc::O_WRONLY | libc::O_TRUNC);
    fs.write(fh, 0, b"new content").unwrap();
    assert_eq!(fs.flush(fh), Ok(()));
    fs.release(fh).unwrap();
    assert_eq!(store.inner.get("/f").unwrap(), b"new content");
    no_part_files(&store);
    // Append.
    let (_, fh) = open_name(&fs, "f", libc::O_WRONLY | libc::O_APPEND);
    fs.write(fh, 0, b"+more").unwrap();
    fs.release(fh).unwrap();
    assert_eq!(store.inner.get("/f").unwrap(), b"new content+more");
    // mv over an existing file: refused, and both files are still there.
    let e = fs.rename(ROOT_INO, "g", ROOT_INO, "f", false);
    assert!(e.is_err());
    assert_eq!(store.inner.get("/f").unwrap(), b"new content+more");
    assert_eq!(store.inner.get("/g").unwrap(), b"other");
}

#[test]
fn a_refused_rename_of_a_streamed_overwrite_keeps_the_data() {
    let (store, fs, _d) = setup();
    store.inner.put("/f", b"old");
    store.refuse_renames.store(true, SeqCst);
    let (_, fh) = open_name(&fs, "f", libc::O_WRONLY | libc::O_TRUNC);
    let data = pattern(3 << 20, 7);
    for (i, c) in data.chunks(128 << 10).enumerate() {
        fs.write(fh, (i * (128 << 10)) as u64, c).unwrap();
    }
    assert_eq!(fs.flush(fh), Ok(()));
    fs.release(fh).unwrap();
    assert!(store.inner.get("/f").unwrap() == data);
    no_part_files(&store);
}

// ---- uploads cut -------------------------------------------------------------------------

#[test]
fn a_cut_upload_fails_close_and_keeps_the_old_file() {
    let (store, fs, _d) = setup();
    store.inner.put("/f", b"old");
    store.cut_uploads_after.store(5, SeqCst);
    store.cut_uploads_times.store(2, SeqCst); // the stream, then the spool upload
    let (_, fh) = open_name(&fs, "f", libc::O_WRONLY | libc::O_TRUNC);
    fs.write(fh, 0, b"brand new content").unwrap();
    assert_eq!(fs.flush(fh), Err(Errno(libc::EIO)));
    assert_eq!(store.inner.get("/f").unwrap(), b"old");
    no_part_files(&store);
    // The connection is back: the next close uploads.
    assert_eq!(fs.flush(fh), Ok(()));
    fs.release(fh).unwrap();
    assert_eq!(store.inner.get("/f").unwrap(), b"brand new content");
}

// ---- chmod/utimens racing an upload ----------------------------------------------------

#[test]
fn chmod_and_utimens_racing_uploads_are_never_lost() {
    let (store, fs, _d) = setup();
    let fs = Arc::new(fs);
    let (attr, fh) = fs.create(ROOT_INO, "r", 0o644, libc::O_RDWR).unwrap();
    for round in 0..200u32 {
        fs.write(fh, 0, &round.to_le_bytes()).unwrap();
        let mode = 0o600 | ((round % 2) * 0o040);
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + u64::from(round));
        let uploader = {
            let fs = fs.clone();
            std::thread::spawn(move || fs.fsync(fh))
        };
        fs.setattr(
            attr.ino,
            Some(mode),
            None,
            None,
            None,
            Some(SetTime::At(t)),
            None,
        )
        .unwrap();
        uploader.join().unwrap().unwrap();
        fs.fsync(fh).unwrap();
        let e = store.inner.list("/").unwrap();
        let r = e.iter().find(|e| e.name == "r").unwrap();
        assert_eq!(r.mode, Some(mode), "round {round}: chmod lost");
        assert_eq!(
            store.inner.mtime("/r"),
            Some(t),
            "round {round}: utimens lost"
        );
    }
    fs.release(fh).unwrap();
}

// ---- stalls and deadlines ------------------------------------------------------------

#[test]
fn a_slow_upload_does_not_stall_other_operations() {
    let (store, fs, _d) = setup();
    let fs = Arc::new(fs);
    store.inner.put("/other", b"x");
    let (attr, fh) = fs.create(ROOT_INO, "big", 0o644, libc::O_WRONLY).unwrap();
    fs.write(fh, 100, b"out of order: only in the spool")
        .unwrap();
    fs.write(fh, 0, b"head").unwrap();
    store.upload_delay_ms.store(1500, SeqCst);
    let uploader = {
        let fs = fs.clone();
        std::thread::spawn(move || fs.flush(fh))
    };
    std::thread::sleep(Duration::from_millis(200));
    let t = std::time::Instant::now();
    assert_eq!(fs.getattr(attr.ino).unwrap().size, 131);
    fs.lookup(ROOT_INO, "other").unwrap();
    let (_, fh2) = fs.create(ROOT_INO, "new", 0o644, libc::O_WRONLY).unwrap();
    fs.write(fh2, 0, b"small").unwrap();
    let took = t.elapsed();
    assert!(
        took < Duration::from_millis(100),
        "stat/lookup/create took {took:?}"
    );
    // A write to the file being uploaded waits for the upload (its deadline allows).
    let _d = crate::deadline::start(Duration::from_secs(5));
    fs.write(fh, 4, b"!").unwrap();
    assert!(uploader.join().unwrap().is_ok());
    store.upload_delay_ms.store(0, SeqCst);
    fs.release(fh).unwrap();
    fs.release(fh2).unwrap();
    assert_eq!(&store.inner.get("/big").unwrap()[..5], b"head!");
}

#[test]
fn a_stalled_read_fails_at_the_deadline_and_works_afterwards() {
    let (store, fs, _d) = setup();
    let data = pattern(1 << 20, 9);
    store.inner.put("/f", &data);
    let (ino, fh) = open_name(&fs, "f", libc::O_RDONLY);
    store.read_stall_ms.store(3000, SeqCst);
    let t = std::time::Instant::now();
    {
        let _d = crate::deadline::start(Duration::from_millis(500));
        assert_eq!(fs.read(fh, 0, 4096), Err(Errno(libc::ETIMEDOUT)));
    }
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(fs.getattr(ino).unwrap().size, data.len() as u64);
    store.read_stall_ms.store(0, SeqCst);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(fs.read(fh, 0, 4096).unwrap(), data[..4096]);
    fs.release(fh).unwrap();
}

#[test]
fn a_write_waiting_for_a_busy_file_gives_up_at_its_deadline() {
    let (store, fs, _d) = setup();
    let fs = Arc::new(fs);
    let (_, fh) = fs.create(ROOT_INO, "f", 0o644, libc::O_WRONLY).unwrap();
    fs.write(fh, 10, b"x").unwrap();
    store.upload_delay_ms.store(2000, SeqCst);
    let uploader = {
        let fs = fs.clone();
        std::thread::spawn(move || fs.fsync(fh))
    };
    std::thread::sleep(Duration::from_millis(200));
    let t = std::time::Instant::now();
    {
        let _d = crate::deadline::start(Duration::from_millis(300));
        assert_eq!(fs.write(fh, 0, b"y"), Err(Errno(libc::ETIMEDOUT)));
    }
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "{:?}",
        t.elapsed()
    );
    uploader.join().unwrap().unwrap();
    store.upload_delay_ms.store(0, SeqCst);
    fs.release(fh).unwrap();
}

#[test]
fn a_quiet_streaming_writer_gives_its_connection_up_when_others_wait() {
    let (store, fs, _d) = setup();
    let (_, fh) = fs.create(ROOT_INO, "log", 0o644, libc::O_WRONLY).unwrap();
    fs.write(fh, 0, b"first line\n").unwrap();
    // The writer goes quiet (a log kept open) while others wait for connections.
    store.inner.contended.store(true, SeqCst);
    let t = std::time::Instant::now();
    while store.inner.uploads.load(SeqCst) == 0 || t.elapsed() < Duration::from_millis(1200) {
        std::thread::sleep(Duration::from_millis(50));
        assert!(t.elapsed() < Duration::from_secs(5));
    }
    store.inner.contended.store(false, SeqCst);
    assert!(
        store.inner.get("/log").is_none(),
        "the stream stored nothing"
    );
    // The writer goes on; the file is complete at close.
    fs.write(fh, 11, b"second line\n").unwrap();
    fs.release(fh).unwrap();
    assert_eq!(
        store.inner.get("/log").unwrap(),
        b"first line\nsecond line\n"
    );
    assert_eq!(
        store.inner.uploads.load(SeqCst),
        2,
        "the stream gave up (without yielding it would have been the only upload)"
    );
}

#[test]
fn a_new_file_not_on_the_server_yet_is_found_after_the_listing_expires() {
    let store = Arc::new(FaultStore::new());
    let spool = tempfile::tempdir().unwrap();
    let mut cfg = config(spool.path());
    cfg.cache_timeout = Duration::ZERO; // every lookup lists again
    let fs = FtpsFs::new(store.clone(), cfg);
    store.inner.put("/other", b"x");
    let (attr, fh) = fs.create(ROOT_INO, "new", 0o644, libc::O_WRONLY).unwrap();
    fs.write(fh, 100, b"out of order: only local").unwrap();
    assert!(store.inner.get("/new").is_none());
    let found = fs.lookup(ROOT_INO, "new").unwrap();
    assert_eq!((found.ino, found.size), (attr.ino, 124));
    let dh = fs.opendir(ROOT_INO).unwrap();
    let mut names: Vec<String> = fs
        .dir_entries(dh)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    names.sort();
    assert_eq!(names, ["new", "other"]);
    fs.releasedir(dh);
    assert_eq!(
        fs.create(ROOT_INO, "new", 0o644, libc::O_WRONLY | libc::O_EXCL)
            .err(),
        Some(Errno(libc::EEXIST))
    );
    fs.release(fh).unwrap();
    assert_eq!(store.inner.get("/new").unwrap().len(), 124);
}

// ---- shutdown, crashes and recovery ------------------------------------------------------

#[test]
fn shutdown_keeps_a_file_still_open_for_writing_and_recovery_reports_it() {
    let (store, fs, d) = setup();
    store.inner.put("/f", b"old");
    let (_, fh) = open_name(&fs, "f", libc::O_WRONLY | libc::O_TRUNC);
    fs.write(fh, 0, b"half of what the program meant").unwrap();
    // A second file, closed: uploaded.
    let (_, fh2) = fs.create(ROOT_INO, "done", 0o644, libc::O_WRONLY).unwrap();
    fs.write(fh2, 0, b"complete").unwrap();
    fs.release(fh2).unwrap();
    fs.shutdown().unwrap();
    drop(fs);
    assert_eq!(store.inner.get("/f").unwrap(), b"old", "not uploaded");
    assert_eq!(store.inner.get("/done").unwrap(), b"complete");
    no_part_files(&store);
    assert_eq!(journal_records(d.path()), 1);
    let report = journal::recover(d.path(), SITE, store.as_ref());
    assert_eq!(report.len(), 1, "{report:?}");
    assert!(report[0].contains("/f: not uploaded"), "{report:?}");
    assert!(report[0].contains("had not finished"), "{report:?}");
    let kept = d.path().join("recovered");
    let files: Vec<_> = std::fs::read_dir(&kept).unwrap().flatten().collect();
    assert_eq!(files.len(), 1);
    assert_eq!(
        std::fs::read(files[0].path()).unwrap(),
        b"half of what the program meant"
    );
    assert_eq!(store.inner.get("/f").unwrap(), b"old");
    assert_eq!(journal_records(d.path()), 0);
    assert!(spool_files(d.path()).is_empty());
}

/// A mount that has learnt the server refuses renames: a new file is then
/// written under its own name (a failed upload deletes what it wrote).
fn on_a_server_without_rename(store: &FaultStore, fs: &FtpsFs) {
    store.refuse_renames.store(true, SeqCst);
    let (_, fh) = fs.create(ROOT_INO, "w", 0o644, libc::O_WRONLY).unwrap();
    fs.write(fh, 0, b"warm-up").unwrap();
    fs.release(fh).unwrap();
}

#[test]
fn crash_while_streaming_a_new_file_leaves_no_partial_file_after_recovery() {
    let (store, fs, d) = setup();
    on_a_server_without_rename(&store, &fs);
    let (_, fh) = fs.create(ROOT_INO, "n", 0o644, libc::O_WRONLY).unwrap();
    let data = pattern(3 << 20, 8);
    fs.write(fh, 0, &data[..2 << 20]).unwrap();
    fs.crash();
    // What the server got of the stream before the daemon died.
    store.inner.put("/n", &data[..1 << 20]);
    // Another mount of the same spool directory and site.
    let report = journal::recover(d.path(), SITE, store.as_ref());
    assert_eq!(report.len(), 1, "{report:?}");
    assert!(
        report[0].contains("removed its incomplete upload"),
        "{report:?}"
    );
    assert!(
        store.inner.get("/n").is_none(),
        "partial file left under its name"
    );
    assert_eq!(journal_records(d.path()), 0);
}

#[test]
fn crash_after_close_finishes_the_upload_at_the_next_mount() {
    let (store, fs, d) = setup();
    store.inner.put("/f", b"old");
    let (_, fh) = open_name(&fs, "f", libc::O_WRONLY | libc::O_TRUNC);
    fs.write(fh, 100, b"written out of order").unwrap();
    fs.write(fh, 0, b"new").unwrap();
    // The upload to the temporary name is cut and its removal fails: the .part
    // stays, as after a crash mid-upload.
    store.cut_uploads_after.store(7, SeqCst);
    store.cut_uploads_times.store(1, SeqCst);
    *store.fail_next.lock().unwrap() = vec!["delete"];
    assert!(fs.flush(fh).is_err());
    fs.crash();
    assert_eq!(store.inner.get("/f").unwrap(), b"old");
    assert!(store.inner.paths().iter().any(|p| p.ends_with(".part")));
    let report = journal::recover(d.path(), SITE, store.as_ref());
    assert_eq!(report.len(), 1, "{report:?}");
    assert!(report[0].contains("finished the upload"), "{report:?}");
    let mut want = b"new".to_vec();
    want.resize(100, 0);
    want.extend_from_slice(b"written out of order");
    assert_eq!(store.inner.get("/f").unwrap(), want);
    no_part_files(&store);
    assert!(spool_files(d.path()).is_empty());
    assert_eq!(journal_records(d.path()), 0);
}

#[test]
fn crash_after_close_with_a_changed_server_file_keeps_both() {
    let (store, fs, d) = setup();
    store.inner.put("/f", b"old");
    // The streamed upload and the spool upload both fail (set before the write:
    // the stream's thread starts with it).
    *store.fail_next.lock().unwrap() = vec!["write", "write"];
    let (_, fh) = open_name(&fs, "f", libc::O_WRONLY | libc::O_TRUNC);
    fs.write(fh, 0, b"ours").unwrap();
    assert!(fs.flush(fh).is_err());
    fs.crash();
    store.inner.put("/f", b"someone else's newer version");
    let report = journal::recover(d.path(), SITE, store.as_ref());
    assert!(report[0].contains("changed on the server"), "{report:?}");
    assert_eq!(
        store.inner.get("/f").unwrap(),
        b"someone else's newer version"
    );
    let sibling = store
        .inner
        .paths()
        .into_iter()
        .find(|p| p.starts_with("/f.ftpsfs-recovered-"))
        .expect("sibling");
    assert_eq!(store.inner.get(&sibling).unwrap(), b"ours");
}

#[test]
fn recovery_of_an_upload_that_had_completed_uploads_nothing_twice() {
    let (store, fs, d) = setup();
    store.inner.put("/f", b"old");
    *store.fail_next.lock().unwrap() = vec!["write", "write"];
    let (_, fh) = open_name(&fs, "f", libc::O_WRONLY | libc::O_TRUNC);
    fs.write(fh, 0, b"the new content").unwrap();
    assert!(fs.flush(fh).is_err());
    fs.crash();
    // As if the upload and its rename had gone through just before the crash.
    store.inner.put("/f", b"the new content");
    let uploads = store.inner.uploads.load(SeqCst);
    let report = journal::recover(d.path(), SITE, store.as_ref());
    assert!(report[0].contains("had completed"), "{report:?}");
    assert_eq!(store.inner.uploads.load(SeqCst), uploads, "uploaded again");
    assert_eq!(store.inner.paths(), vec!["/", "/f"], "no sibling");
    assert!(spool_files(d.path()).is_empty());
}

/// Rewrites the boot id of every record: the machine restarted since.
fn after_a_reboot(spool: &std::path::Path) {
    for e in std::fs::read_dir(spool.join("journal")).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "rec") {
            let t = std::fs::read_to_string(e.path()).unwrap();
            let t: Vec<String> = t
                .lines()
                .map(|l| {
                    if l.starts_with("boot ") {
                        "boot another-boot".to_string()
                    } else {
                        l.to_string()
                    }
                })
                .collect();
            std::fs::write(e.path(), t.join("\n") + "\n").unwrap();
        }
    }
}

#[test]
fn after_a_machine_crash_a_new_file_of_full_length_is_kept_and_a_shorter_one_removed() {
    for (on_server, kept) in [(&b"0123456789"[..], true), (&b"01234"[..], false)] {
        let (store, fs, d) = setup();
        on_a_server_without_rename(&store, &fs);
        *store.fail_next.lock().unwrap() = vec!["write", "write"];
        let (_, fh) = fs.create(ROOT_INO, "n", 0o644, libc::O_WRONLY).unwrap();
        fs.write(fh, 0, b"0123456789").unwrap();
        assert!(fs.flush(fh).is_err());
        fs.crash();
        store.inner.put("/n", on_server);
        after_a_reboot(d.path());
        let report = journal::recover(d.path(), SITE, store.as_ref());
        assert!(report[0].contains("machine restarted"), "{report:?}");
        assert_eq!(store.inner.get("/n").is_some(), kept, "{report:?}");
        assert_eq!(journal_records(d.path()), 0);
    }
}

#[test]
fn recovery_leaves_the_records_of_a_live_mount_alone() {
    let (store, fs, d) = setup();
    store.inner.put("/f", b"old");
    let (_, fh) = open_name(&fs, "f", libc::O_WRONLY | libc::O_TRUNC);
    fs.write(fh, 0, b"in progress").unwrap();
    // A second mount of the same site and spool directory starts meanwhile.
    let report = journal::recover(d.path(), SITE, store.as_ref());
    assert!(report.is_empty(), "{report:?}");
    fs.release(fh).unwrap();
    assert_eq!(store.inner.get("/f").unwrap(), b"in progress");
    assert_eq!(journal_records(d.path()), 0);
}
