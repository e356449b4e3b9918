//! Bounded spools (`spool_window=`, see `uploader.rs`): a sequential writer keeps
//! only a window of the file on disk; cuts resume where the server stopped; what
//! cannot be resumed fails with EIO and leaves the server's old file; writes out of
//! sequence fetch the dropped start back; a crash loses the unfinished file, and
//! recovery says so and leaves no partial upload.

use super::fault_tests::{journal_records, no_part_files, pattern};
use super::*;
use crate::fs::faultstore::FaultStore;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::Ordering::SeqCst;

const SITE: &str = "test@memstore:21";
const MIB: usize = 1 << 20;
const WINDOW: u64 = 16 << 20;

fn setup() -> (Arc<FaultStore>, FtpsFs, tempfile::TempDir) {
    let store = Arc::new(FaultStore::new());
    let spool = tempfile::tempdir().expect("tempdir");
    let mut cfg = super::fault_tests::config(spool.path());
    cfg.spool_window = Some(WINDOW);
    let fs = FtpsFs::new(store.clone(), cfg);
    (store, fs, spool)
}

/// Bytes the spool files take on disk (holes do not count).
fn spool_disk_use(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

/// Writes `data` in 1 MiB writes from offset 0; the first error, with its offset.
fn write_all(
    fs: &FtpsFs,
    fh: u64,
    data: &[u8],
    peak: &mut u64,
    dir: &std::path::Path,
) -> FsResult<()> {
    for (i, c) in data.chunks(MIB).enumerate() {
        fs.write(fh, (i * MIB) as u64, c)?;
        *peak = (*peak).max(spool_disk_use(dir));
    }
    Ok(())
}

fn open_existing(fs: &FtpsFs, name: &str) -> u64 {
    let a = fs.lookup(ROOT_INO, name).expect("lookup");
    fs.open(a.ino, libc::O_WRONLY | libc::O_TRUNC)
        .expect("open")
}

#[test]
fn a_sequential_writer_keeps_only_a_window_on_disk() {
    let (store, fs, d) = setup();
    store.inner.put("/f", b"old");
    let fh = open_existing(&fs, "f");
    let data = pattern(48 * MIB, 1);
    let mut peak = 0;
    write_all(&fs, fh, &data, &mut peak, d.path()).unwrap();
    fs.flush(fh).unwrap();
    fs.release(fh).unwrap();
    assert_eq!(store.inner.get("/f").unwrap(), data);
    assert!(
        peak <= WINDOW + 2 * MIB as u64,
        "spool used {peak} bytes on disk, window {WINDOW}"
    );
    no_part_files(&store);
    assert_eq!(journal_records(d.path()), 0);
    assert_eq!(spool_disk_use(d.path()), 0);
}

/// The probe that allows drops answers late (a loaded server): the writer waits
/// for it at the window instead of letting the spool grow past it.
#[test]
fn a_slow_resume_probe_does_not_let_the_spool_pass_the_window() {
    let (store, fs, d) = setup();
    store.probe_delay_ms.store(1500, SeqCst);
    store.inner.put("/f", b"old");
    let fh = open_existing(&fs, "f");
    let data = pattern(48 * MIB, 7);
    let mut peak = 0;
    let t = std::time::Instant::now();
    write_all(&fs, fh, &data, &mut peak, d.path()).unwrap();
    fs.flush(fh).unwrap();
    fs.release(fh).unwrap();
    assert!(
        t.elapsed() >= std::time::Duration::from_millis(1500),
        "waited for the probe"
    );
    assert_eq!(store.inner.get("/f").unwrap(), data);
    assert!(
        peak <= WINDOW + 2 * MIB as u64,
        "spool used {peak} bytes on disk, window {WINDOW}"
    );
    no_part_files(&store);
}

#[test]
fn a_new_file_streams_to_its_name_and_keeps_a_window() {
    let (store, fs, d) = setup();
    let (_, fh) = fs.create(ROOT_INO, "n", 0o644, libc::O_WRONLY).unwrap();
    let data = pattern(40 * MIB, 2);
    let mut peak = 0;
    write_all(&fs, fh, &data, &mut peak, d.path()).unwrap();
    fs.flush(fh).unwrap();
    fs.release(fh).unwrap();
    assert_eq!(store.inner.get("/n").unwrap(), data);
    assert!(peak <= WINDOW + 2 * MIB as u64, "peak {peak}");
    no_part_files(&store);
}

#[test]
fn a_cut_upload_resumes_where_the_server_stopped() {
    let (store, fs, d) = setup();
    store.inner.put("/f", b"old");
    store.cut_uploads_after.store(20 * MIB as u64, SeqCst);
    store.cut_uploads_times.store(1, SeqCst);
    let fh = open_existing(&fs, "f");
    let data = pattern(40 * MIB, 3);
    let mut peak = 0;
    write_all(&fs, fh, &data, &mut peak, d.path()).unwrap();
    fs.release(fh).unwrap();
    assert_eq!(store.inner.get("/f").unwrap(), data);
    assert_eq!(store.resumes.load(SeqCst), 1);
    assert_eq!(
        store.uploaded_bytes.load(SeqCst),
        data.len() as u64,
        "nothing sent twice"
    );
    assert!(peak <= WINDOW + 2 * MIB as u64, "peak {peak}");
    no_part_files(&store);
}

#[test]
fn a_server_that_cannot_resume_keeps_every_byte_and_a_cut_is_sent_again() {
    // proftpd as shipped: REST before STOR and APPE refused. The mount learns it
    // before the first drop, so the spool keeps the whole file and a cut upload
    // goes again from the start (where dropping would have lost the file).
    let (store, fs, d) = setup();
    store.inner.put("/f", b"old");
    store.no_resume.store(true, SeqCst);
    store.cut_uploads_after.store(20 * MIB as u64, SeqCst);
    store.cut_uploads_times.store(1, SeqCst);
    let fh = open_existing(&fs, "f");
    let data = pattern(40 * MIB, 4);
    let mut peak = 0;
    write_all(&fs, fh, &data, &mut peak, d.path()).expect("writes");
    assert!(
        peak >= data.len() as u64,
        "the spool kept every byte ({peak} on disk at most)"
    );
    fs.flush(fh)
        .expect("the cut upload is sent again from the spool");
    fs.release(fh).expect("release");
    assert_eq!(store.inner.get("/f").expect("on the server"), data);
    assert_eq!(store.resumes.load(SeqCst), 0, "nothing resumed");
    no_part_files(&store);
    assert_eq!(journal_records(d.path()), 0);
}

#[test]
fn a_server_that_lost_dropped_bytes_fails_the_file() {
    let (store, fs, _d) = setup();
    store.inner.put("/f", b"old");
    // The server kept 14 MiB fewer than it was sent: more than a window less 4 MiB.
    store.cut_loses.store(14 * MIB as u64, SeqCst);
    store.cut_uploads_after.store(30 * MIB as u64, SeqCst);
    store.cut_uploads_times.store(1, SeqCst);
    let fh = open_existing(&fs, "f");
    let data = pattern(40 * MIB, 5);
    let mut peak = 0;
    let r = write_all(&fs, fh, &data, &mut peak, _d.path()).and(fs.flush(fh));
    assert_eq!(r.unwrap_err().0, libc::EIO);
    let _ = fs.release(fh);
    assert_eq!(store.inner.get("/f").unwrap(), b"old");
    no_part_files(&store);
}

#[test]
fn a_write_out_of_sequence_fetches_the_dropped_start_back() {
    let (store, fs, d) = setup();
    let (attr, fh) = fs.create(ROOT_INO, "n", 0o644, libc::O_RDWR).unwrap();
    let mut data = pattern(40 * MIB, 6);
    let mut peak = 0;
    write_all(&fs, fh, &data, &mut peak, d.path()).unwrap();
    assert!(peak <= WINDOW + 2 * MIB as u64, "peak {peak}");
    // A header patched at the start (as zip or some muxers do), then a read.
    fs.write(fh, 100, b"HEADER").unwrap();
    data[100..106].copy_from_slice(b"HEADER");
    assert_eq!(fs.read(fh, 0, 4096).unwrap(), &data[..4096]);
    fs.release(fh).unwrap();
    assert_eq!(store.inner.get("/n").unwrap(), data);
    no_part_files(&store);
    assert_eq!(fs.getattr(attr.ino).unwrap().size, data.len() as u64);
}

#[test]
fn reading_the_dropped_start_fetches_it_back() {
    let (store, fs, d) = setup();
    let (_, fh) = fs.create(ROOT_INO, "n", 0o644, libc::O_RDWR).unwrap();
    let data = pattern(30 * MIB, 7);
    let mut peak = 0;
    write_all(&fs, fh, &data, &mut peak, d.path()).unwrap();
    assert_eq!(fs.read(fh, 5, 100).unwrap(), &data[5..105]);
    fs.release(fh).unwrap();
    assert_eq!(store.inner.get("/n").unwrap(), data);
    no_part_files(&store);
}

#[test]
fn fsync_in_the_middle_then_more_appends() {
    let (store, fs, d) = setup();
    let (_, fh) = fs.create(ROOT_INO, "n", 0o644, libc::O_WRONLY).unwrap();
    let data = pattern(40 * MIB, 8);
    let mut peak = 0;
    write_all(&fs, fh, &data[..24 * MIB], &mut peak, d.path()).unwrap();
    fs.fsync(fh).unwrap();
    assert_eq!(store.inner.get("/n").unwrap(), &data[..24 * MIB]);
    for (i, c) in data[24 * MIB..].chunks(MIB).enumerate() {
        fs.write(fh, (24 * MIB + i * MIB) as u64, c).unwrap();
    }
    fs.release(fh).unwrap();
    assert_eq!(store.inner.get("/n").unwrap(), data);
    no_part_files(&store);
}

#[test]
fn small_files_behave_as_before_a_cut_is_retried_from_the_spool() {
    let (store, fs, d) = setup();
    store.no_resume.store(true, SeqCst);
    store.cut_uploads_after.store(MIB as u64, SeqCst);
    store.cut_uploads_times.store(1, SeqCst);
    let (_, fh) = fs.create(ROOT_INO, "s", 0o644, libc::O_WRONLY).unwrap();
    let data = pattern(3 * MIB, 9);
    let mut peak = 0;
    write_all(&fs, fh, &data, &mut peak, d.path()).unwrap();
    fs.release(fh).unwrap();
    assert_eq!(store.inner.get("/s").unwrap(), data);
    no_part_files(&store);
}

#[test]
fn a_crash_during_a_bounded_stream_loses_the_file_and_recovery_says_so() {
    let (store, fs, d) = setup();
    store.inner.put("/f", b"old");
    let fh = open_existing(&fs, "f");
    let (_, fh2) = fs.create(ROOT_INO, "n", 0o644, libc::O_WRONLY).unwrap();
    let data = pattern(24 * MIB, 10);
    let mut peak = 0;
    write_all(&fs, fh, &data, &mut peak, d.path()).unwrap();
    write_all(&fs, fh2, &data, &mut peak, d.path()).unwrap();
    // The partial temporary uploads the crash leaves on the server.
    let parts: Vec<String> = std::fs::read_dir(d.path().join("journal"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("partial ").map(str::to_string))
        })
        .collect();
    assert_eq!(parts.len(), 2, "{parts:?}");
    fs.crash();
    for p in &parts {
        // The file that exists streams to a temporary name, the new one to its
        // own name: a crash leaves a prefix there until the next mount.
        assert!(
            p.ends_with(".part") || p == "/n",
            "unexpected partial upload {p}"
        );
        store.inner.put(p, &data[..10 * MIB]);
    }
    let report = journal::recover(d.path(), SITE, store.as_ref());
    assert_eq!(report.len(), 2, "{report:?}");
    for line in &report {
        assert!(line.contains("spool_window"), "{line}");
        assert!(line.contains("data is lost"), "{line}");
        assert!(line.contains("incomplete upload"), "{line}");
    }
    assert_eq!(store.inner.get("/f").unwrap(), b"old");
    assert!(store.inner.get("/n").is_none());
    no_part_files(&store);
    assert_eq!(journal_records(d.path()), 0);
    assert_eq!(spool_disk_use(d.path()), 0);
}

/// Review: the server refuses the rename of a bounded stream's temporary upload
/// (an account without rename permission). The spool no longer has the start of
/// the file, so it must not be uploaded in place (its holes read as zeros): the
/// close fails with EIO and the server keeps the old file.
#[test]
fn a_refused_rename_after_a_drop_fails_instead_of_uploading_the_holes() {
    let (store, fs, d) = setup();
    store.inner.put("/f", b"old");
    store.refuse_renames.store(true, SeqCst);
    let fh = open_existing(&fs, "f");
    let data = pattern(40 * MIB, 11);
    let mut peak = 0;
    write_all(&fs, fh, &data, &mut peak, d.path()).unwrap();
    let closed = fs.flush(fh);
    let _ = fs.release(fh);
    let now = store.inner.get("/f").unwrap();
    assert!(
        now == b"old" || now == data,
        "the server holds neither the old nor the new file ({} bytes, zeros at the start: {})",
        now.len(),
        now[..4096].iter().all(|b| *b == 0)
    );
    if now == b"old" {
        assert_eq!(closed.unwrap_err().0, libc::EIO);
    }
    no_part_files(&store);
}

/// Review: a server without REST STREAM resumes with APPE. The session of a cut
/// transfer that has not noticed its cut still writes 1 MiB it held after the
/// client's SIZE (so SIZE lagged): the APPE lands after those bytes, shifted. If
/// that APPE transfer is cut too, a second APPE from the new SIZE must not
/// follow (its final length would match and hide the shift): EIO, old file kept.
#[test]
fn a_second_append_after_a_late_write_fails_instead_of_hiding_a_shift() {
    let (store, fs, d) = setup();
    store.inner.put("/f", b"old");
    store.append_only.store(true, SeqCst);
    store.cut_loses.store(2 * MIB as u64, SeqCst);
    store.cut_late.store(MIB as u64, SeqCst);
    store.cut_uploads_after.store(20 * MIB as u64, SeqCst);
    store.cut_uploads_times.store(2, SeqCst);
    let fh = open_existing(&fs, "f");
    let data = pattern(60 * MIB, 12);
    let mut peak = 0;
    let r = write_all(&fs, fh, &data, &mut peak, d.path()).and(fs.flush(fh));
    let _ = fs.release(fh);
    let now = store.inner.get("/f").unwrap();
    assert!(
        now == b"old" || now == data,
        "close: {r:?}; the server holds neither the old nor the new file ({} bytes)",
        now.len()
    );
    if now == b"old" {
        assert_eq!(r.unwrap_err().0, libc::EIO);
    }
    no_part_files(&store);
}

/// An append-only server (no REST STREAM) with one cut: resumed with APPE.
#[test]
fn one_cut_on_an_append_only_server_is_resumed() {
    let (store, fs, d) = setup();
    store.inner.put("/f", b"old");
    store.append_only.store(true, SeqCst);
    store.cut_uploads_after.store(20 * MIB as u64, SeqCst);
    store.cut_uploads_times.store(1, SeqCst);
    let fh = open_existing(&fs, "f");
    let data = pattern(40 * MIB, 13);
    let mut peak = 0;
    write_all(&fs, fh, &data, &mut peak, d.path()).unwrap();
    fs.release(fh).unwrap();
    assert_eq!(store.inner.get("/f").unwrap(), data);
    assert_eq!(store.resumes.load(SeqCst), 1);
    no_part_files(&store);
}

/// Review: a cut that is a stall (a dead network path: the transfer times out)
/// while the writer has finished and waits in close(): the upload thread's
/// deadline has passed, so the resume must not run out of time before it starts
/// (SIZE, REST + STOR on a new connection).
#[test]
fn a_stall_after_the_program_closed_ends_close_by_its_deadline() {
    // The program has written everything and waits in close(); the transfer
    // stalls: close() returns within its deadline (twice `timeout=` at most: the
    // stall found, then the cleanup), with an error, and the server keeps the old
    // file (the start of the new one is no longer kept: the data is reported lost).
    let store = Arc::new(FaultStore::new());
    let spool = tempfile::tempdir().expect("tempdir");
    let mut cfg = super::fault_tests::config(spool.path());
    cfg.spool_window = Some(WINDOW);
    cfg.op_timeout = Duration::from_secs(1);
    let fs = FtpsFs::new(store.clone(), cfg);
    store.inner.put("/f", b"old");
    store.cut_stalls.store(true, SeqCst);
    store.cut_uploads_after.store(38 * MIB as u64, SeqCst);
    store.cut_uploads_times.store(1, SeqCst);
    let fh = open_existing(&fs, "f");
    let data = pattern(40 * MIB, 14);
    let mut peak = 0;
    let written = write_all(&fs, fh, &data, &mut peak, spool.path());
    let t = std::time::Instant::now();
    let closed = written.and_then(|()| fs.flush(fh));
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "close took {:?}",
        t.elapsed()
    );
    let kept = store.inner.get("/f").unwrap();
    match closed {
        Ok(()) => assert_eq!(kept, data, "a successful close means the whole file"),
        Err(_) => assert_eq!(kept, b"old", "a failed close keeps the old file"),
    }
    let _ = fs.release(fh);
    no_part_files(&store);
}
