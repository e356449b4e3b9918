//! Uploads that fail: the data is kept and the error reported.

use super::*;

#[test]
fn failed_upload_keeps_old_content_and_spool_then_retry_succeeds() {
    let (store, fs, spool) = setup();
    store.put("/doc.txt", b"old");
    let (_, fh) = open_name(&fs, "doc.txt", O_WRONLY | libc::O_TRUNC);
    fs.write(fh, 0, b"precious new data").unwrap();
    *store.fail_uploads_matching.lock().unwrap() = Some("doc.txt".into());
    assert_eq!(err(fs.flush(fh)), libc::EACCES);
    assert_eq!(
        store.get("/doc.txt").unwrap(),
        b"old",
        "old content unchanged"
    );
    no_part_files(&store);
    assert!(
        spool_files(&spool)
            .iter()
            .any(|c| c == b"precious new data"),
        "the written data is on disk in the spool dir"
    );
    // Still failing: fsync reports it too.
    assert_eq!(err(fs.fsync(fh)), libc::EACCES);
    *store.fail_uploads_matching.lock().unwrap() = None;
    fs.flush(fh).unwrap();
    assert_eq!(store.get("/doc.txt").unwrap(), b"precious new data");
    fs.release(fh).unwrap();
    assert_eq!(store.get("/doc.txt").unwrap(), b"precious new data");
    no_part_files(&store);
    assert_eq!(lookup(&fs, "doc.txt").size, 17);
}

#[test]
fn failed_upload_at_release_returns_the_error_and_keeps_the_spool() {
    let (store, fs, spool) = setup();
    store.put("/f.txt", b"old");
    *store.fail_uploads_matching.lock().unwrap() = Some("f.txt".into());
    let (_, fh) = open_name(&fs, "f.txt", O_WRONLY | libc::O_TRUNC);
    fs.write(fh, 0, b"unsaved").unwrap();
    assert_eq!(err(fs.release(fh)), libc::EACCES);
    assert_eq!(store.get("/f.txt").unwrap(), b"old");
    no_part_files(&store);
    assert!(
        spool_files(&spool).iter().any(|c| c == b"unsaved"),
        "spool kept after the handle is gone"
    );
}

#[test]
fn failed_upload_of_a_new_file_then_retry() {
    let (store, fs, spool) = setup();
    let (_, fh) = fs.create(ROOT_INO, "x-new", 0o644, O_WRONLY).unwrap();
    fs.write(fh, 0, b"content").unwrap();
    *store.fail_uploads_matching.lock().unwrap() = Some("x-new".into());
    assert_eq!(err(fs.flush(fh)), libc::EACCES);
    assert!(store.get("/x-new").is_none());
    assert!(spool_files(&spool).iter().any(|c| c == b"content"));
    *store.fail_uploads_matching.lock().unwrap() = None;
    fs.release(fh).unwrap();
    assert_eq!(store.get("/x-new").unwrap(), b"content");
    assert_eq!(store.paths(), vec!["/", "/x-new"]);
}

#[test]
fn failed_truncate_of_a_closed_file_is_reported() {
    let (store, fs, _d) = setup();
    store.put("/t", b"0123");
    let ino = lookup(&fs, "t").ino;
    *store.fail_uploads_matching.lock().unwrap() = Some("t".into());
    assert_eq!(
        err(fs.setattr(ino, None, None, None, Some(0), None, None)),
        libc::EACCES
    );
    assert_eq!(store.get("/t").unwrap(), b"0123");
    assert_eq!(lookup(&fs, "t").size, 4, "size unchanged in the cache");
}

#[test]

fn spool_file_is_removed_after_a_successful_retry() {
    let (store, fs, spool) = setup();
    let (_, fh) = fs.create(ROOT_INO, "x", 0o644, O_WRONLY).unwrap();
    fs.write(fh, 0, b"content").unwrap();
    *store.fail_uploads_matching.lock().unwrap() = Some("x".into());
    assert_eq!(err(fs.flush(fh)), libc::EACCES);
    *store.fail_uploads_matching.lock().unwrap() = None;
    fs.release(fh).unwrap();
    assert_eq!(store.get("/x").unwrap(), b"content");
    assert!(
        spool_files(&spool).is_empty(),
        "nothing left to keep once uploaded"
    );
}

#[test]

fn new_file_whose_upload_failed_is_not_shown_as_an_empty_file() {
    let (store, fs, _d) = setup();
    let (_, fh) = fs.create(ROOT_INO, "x", 0o644, O_WRONLY).unwrap();
    fs.write(fh, 0, b"content").unwrap();
    *store.fail_uploads_matching.lock().unwrap() = Some("x".into());
    assert_eq!(err(fs.release(fh)), libc::EACCES);
    assert_eq!(store.paths(), vec!["/"]);
    assert_eq!(err(fs.lookup(ROOT_INO, "x")), libc::ENOENT);
}

#[test]
fn a_failed_stream_is_retried_from_the_spool_and_reported() {
    let (store, fs, spool) = setup();
    // A new file's stream and spool upload both go to temporary names; the
    // server refuses both at their end and keeps half a file each time.
    *store.fail_uploads_matching.lock().unwrap() = Some(".u.".into());
    let (_, fh) = fs.create(ROOT_INO, "u", 0o644, libc::O_WRONLY).unwrap();
    fs.write(fh, 0, b"data").unwrap();
    assert_eq!(fs.flush(fh), Err(Errno(libc::EACCES)));
    assert!(store.get("/u").is_none(), "half file deleted");
    assert_eq!(store.uploads.load(std::sync::atomic::Ordering::Relaxed), 2);
    assert_eq!(spool_files(&spool).len(), 1, "spool kept");
    *store.fail_uploads_matching.lock().unwrap() = None;
    fs.release(fh).unwrap();
    assert_eq!(store.get("/u").unwrap(), b"data");
}
