//! Unit tests of the filesystem logic over the in-memory store.

use super::*;
use crate::fs::memstore::MemStore;

pub(crate) fn setup() -> (Arc<MemStore>, FtpsFs, tempfile::TempDir) {
    let store = Arc::new(MemStore::new());
    let spool = tempfile::tempdir().expect("tempdir");
    let cfg = super::fault_tests::config(spool.path());
    let fs = FtpsFs::new(store.clone(), cfg);
    (store, fs, spool)
}

#[test]
fn create_write_close_uploads() {
    let (store, fs, _d) = setup();
    let (attr, fh) = fs.create(ROOT_INO, "a.txt", 0o644, libc::O_WRONLY).unwrap();
    assert_eq!(attr.size, 0);
    fs.write(fh, 0, b"hello").unwrap();
    assert_eq!(fs.getattr(attr.ino).unwrap().size, 5);
    assert!(store.get("/a.txt").is_none(), "not uploaded before close");
    fs.flush(fh).unwrap();
    fs.release(fh).unwrap();
    assert_eq!(store.get("/a.txt").unwrap(), b"hello");
    assert_eq!(store.paths(), vec!["/", "/a.txt"]);
}

// ---- helpers -----------------------------------------------------------------------

const O_RDONLY: i32 = libc::O_RDONLY;
const O_WRONLY: i32 = libc::O_WRONLY;
const O_RDWR: i32 = libc::O_RDWR;

fn err<T: std::fmt::Debug>(r: FsResult<T>) -> i32 {
    r.expect_err("expected an error").0
}

fn lookup(fs: &FtpsFs, name: &str) -> Attr {
    fs.lookup(ROOT_INO, name)
        .unwrap_or_else(|e| panic!("lookup {name}: {e:?}"))
}

/// Creates `name` in `parent` through the mount with `data`, closing it.
fn write_new(fs: &FtpsFs, parent: u64, name: &str, data: &[u8]) -> u64 {
    let (attr, fh) = fs.create(parent, name, 0o644, O_WRONLY).unwrap();
    if !data.is_empty() {
        assert_eq!(fs.write(fh, 0, data).unwrap(), data.len());
    }
    fs.flush(fh).unwrap();
    fs.release(fh).unwrap();
    attr.ino
}

/// Opens `name` (in the root), returning (ino, fh).
fn open_name(fs: &FtpsFs, name: &str, flags: i32) -> (u64, u64) {
    let ino = lookup(fs, name).ino;
    (ino, fs.open(ino, flags).unwrap())
}

/// Reads a whole file through a handle, in `chunk`-sized reads.
fn read_all(fs: &FtpsFs, fh: u64, chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = fs.read(fh, out.len() as u64, chunk).unwrap();
        if b.is_empty() {
            return out;
        }
        out.extend_from_slice(&b);
    }
}

/// Contents of the regular files in the spool directory.
fn spool_files(dir: &tempfile::TempDir) -> Vec<Vec<u8>> {
    std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| std::fs::read(p).unwrap())
        .collect()
}

fn no_part_files(store: &MemStore) {
    let paths = store.paths();
    assert!(
        !paths.iter().any(|p| p.ends_with(".part")),
        "temporary upload left behind: {paths:?}"
    );
}

fn remote_mode(store: &MemStore, dir: &str, name: &str) -> Option<u32> {
    store
        .list(dir)
        .unwrap()
        .into_iter()
        .find(|e| e.name == name)
        .and_then(|e| e.mode)
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

fn with_timeout(store: &Arc<MemStore>, base: &FtpsFs, timeout: Duration) -> FtpsFs {
    let mut cfg = base.config().clone();
    cfg.cache_timeout = timeout;
    FtpsFs::new(store.clone(), cfg)
}

fn read_only_fs(store: &Arc<MemStore>, base: &FtpsFs) -> FtpsFs {
    let mut cfg = base.config().clone();
    cfg.read_only = true;
    FtpsFs::new(store.clone(), cfg)
}

const T1: u64 = 1_000_000_000;

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

// ---- writing -----------------------------------------------------------------------

#[test]
fn create_uploads_only_on_flush_and_leaves_no_part_file() {
    let (store, fs, spool) = setup();
    let (attr, fh) = fs.create(ROOT_INO, "new.bin", 0o644, O_WRONLY).unwrap();
    fs.write(fh, 0, b"abc").unwrap();
    fs.write(fh, 3, b"def").unwrap();
    // (The streamed upload may have started: its file appears only when it ends.)
    assert!(
        store.get("/new.bin").is_none(),
        "nothing uploaded before flush"
    );
    assert_eq!(fs.getattr(attr.ino).unwrap().size, 6);
    fs.flush(fh).unwrap();
    assert_eq!(store.get("/new.bin").unwrap(), b"abcdef");
    no_part_files(&store);
    fs.release(fh).unwrap();
    assert_eq!(store.get("/new.bin").unwrap(), b"abcdef");
    assert_eq!(
        store.uploads.load(Ordering::Relaxed),
        1,
        "release after a clean flush does not re-upload"
    );
    assert_eq!(store.paths(), vec!["/", "/new.bin"]);
    assert!(
        spool_files(&spool).is_empty(),
        "spool removed after a successful upload"
    );
}

#[test]
fn release_without_flush_uploads() {
    let (store, fs, _d) = setup();
    let (_, fh) = fs.create(ROOT_INO, "f", 0o644, O_WRONLY).unwrap();
    fs.write(fh, 0, b"data").unwrap();
    fs.release(fh).unwrap();
    assert_eq!(store.get("/f").unwrap(), b"data");
    no_part_files(&store);
}

#[test]
fn create_empty_file_uploads_empty_file() {
    let (store, fs, _d) = setup();
    write_new(&fs, ROOT_INO, "empty", b"");
    assert_eq!(store.get("/empty").unwrap(), b"");
}

#[test]
fn fsync_uploads_and_later_writes_upload_again() {
    let (store, fs, _d) = setup();
    let (_, fh) = fs.create(ROOT_INO, "log", 0o644, O_WRONLY).unwrap();
    fs.write(fh, 0, b"one").unwrap();
    fs.fsync(fh).unwrap();
    assert_eq!(store.get("/log").unwrap(), b"one");
    fs.write(fh, 3, b"two").unwrap();
    assert_eq!(
        store.get("/log").unwrap(),
        b"one",
        "not before the next flush"
    );
    fs.release(fh).unwrap();
    assert_eq!(store.get("/log").unwrap(), b"onetwo");
    no_part_files(&store);
}

#[test]
fn open_trunc_replaces_content() {
    let (store, fs, _d) = setup();
    store.put("/f", b"old content that is long");
    let (ino, fh) = open_name(&fs, "f", O_WRONLY | libc::O_TRUNC);
    assert_eq!(fs.getattr(ino).unwrap().size, 0, "truncated at open");
    fs.write(fh, 0, b"new").unwrap();
    assert_eq!(
        store.get("/f").unwrap(),
        b"old content that is long",
        "remote unchanged until flush"
    );
    fs.flush(fh).unwrap();
    fs.release(fh).unwrap();
    assert_eq!(store.get("/f").unwrap(), b"new");
    assert_eq!(lookup(&fs, "f").size, 3);
    no_part_files(&store);
}

#[test]
fn write_in_the_middle_keeps_the_rest() {
    // dd conv=notrunc
    let (store, fs, _d) = setup();
    store.put("/f", b"0123456789");
    let (ino, fh) = open_name(&fs, "f", O_WRONLY);
    fs.write(fh, 3, b"abc").unwrap();
    assert_eq!(fs.getattr(ino).unwrap().size, 10);
    fs.flush(fh).unwrap();
    fs.release(fh).unwrap();
    assert_eq!(store.get("/f").unwrap(), b"012abc6789");
    assert_eq!(lookup(&fs, "f").size, 10);
}

#[test]
fn append_writes_at_the_end_regardless_of_offset() {
    let (store, fs, _d) = setup();
    store.put("/log", b"line1\n");
    let (ino, fh) = open_name(&fs, "log", O_WRONLY | libc::O_APPEND);
    fs.write(fh, 0, b"line2\n").unwrap();
    fs.write(fh, 2, b"line3\n").unwrap();
    assert_eq!(fs.getattr(ino).unwrap().size, 18);
    fs.release(fh).unwrap();
    assert_eq!(store.get("/log").unwrap(), b"line1\nline2\nline3\n");
}

#[test]
fn append_on_a_created_file() {
    let (store, fs, _d) = setup();
    let (_, fh) = fs
        .create(ROOT_INO, "a", 0o644, O_WRONLY | libc::O_APPEND)
        .unwrap();
    fs.write(fh, 0, b"x").unwrap();
    fs.write(fh, 0, b"y").unwrap();
    fs.release(fh).unwrap();
    assert_eq!(store.get("/a").unwrap(), b"xy");
}

#[test]
fn rdwr_reads_its_own_writes() {
    let (store, fs, _d) = setup();
    store.put("/f", b"hello world");
    let (_, fh) = open_name(&fs, "f", O_RDWR);
    assert_eq!(fs.read(fh, 0, 5).unwrap(), b"hello");
    fs.write(fh, 6, b"WORLD").unwrap();
    assert_eq!(fs.read(fh, 0, 100).unwrap(), b"hello WORLD");
    fs.write(fh, 11, b"!!").unwrap();
    assert_eq!(fs.read(fh, 9, 100).unwrap(), b"LD!!");
    assert_eq!(store.get("/f").unwrap(), b"hello world");
    fs.release(fh).unwrap();
    assert_eq!(store.get("/f").unwrap(), b"hello WORLD!!");
}

#[test]
fn read_through_a_second_handle_sees_unflushed_writes() {
    let (store, fs, _d) = setup();
    store.put("/f", b"aaaa");
    let (ino, w) = open_name(&fs, "f", O_WRONLY);
    let r = fs.open(ino, O_RDONLY).unwrap();
    fs.write(w, 0, b"bb").unwrap();
    assert_eq!(fs.read(r, 0, 10).unwrap(), b"bbaa");
    fs.release(w).unwrap();
    fs.release(r).unwrap();
    assert_eq!(store.get("/f").unwrap(), b"bbaa");
}

#[test]
fn sparse_write_fills_with_zeros() {
    let (store, fs, _d) = setup();
    let (attr, fh) = fs.create(ROOT_INO, "sparse", 0o644, O_RDWR).unwrap();
    fs.write(fh, 0, b"ab").unwrap();
    fs.write(fh, 10, b"cd").unwrap();
    assert_eq!(fs.getattr(attr.ino).unwrap().size, 12);
    assert_eq!(fs.read(fh, 0, 100).unwrap(), b"ab\0\0\0\0\0\0\0\0cd");
    fs.release(fh).unwrap();
    assert_eq!(store.get("/sparse").unwrap(), b"ab\0\0\0\0\0\0\0\0cd");
}

#[test]
fn sparse_write_beyond_the_end_of_an_existing_file() {
    let (store, fs, _d) = setup();
    store.put("/f", b"xyz");
    let (_, fh) = open_name(&fs, "f", O_WRONLY);
    fs.write(fh, 6, b"!").unwrap();
    fs.release(fh).unwrap();
    assert_eq!(store.get("/f").unwrap(), b"xyz\0\0\0!");
}

#[test]
fn write_on_a_read_only_handle_is_ebadf() {
    let (store, fs, _d) = setup();
    store.put("/f", b"abc");
    let (_, fh) = open_name(&fs, "f", O_RDONLY);
    assert_eq!(err(fs.write(fh, 0, b"x")), libc::EBADF);
    fs.release(fh).unwrap();
    assert_eq!(store.get("/f").unwrap(), b"abc");
    assert_eq!(store.uploads.load(Ordering::Relaxed), 0);
}

#[test]
fn read_only_open_and_close_never_uploads() {
    let (store, fs, _d) = setup();
    store.put("/f", b"abc");
    let (_, fh) = open_name(&fs, "f", O_RDONLY);
    assert_eq!(fs.read(fh, 0, 10).unwrap(), b"abc");
    fs.flush(fh).unwrap();
    fs.release(fh).unwrap();
    assert_eq!(store.uploads.load(Ordering::Relaxed), 0);
}

#[test]
fn unknown_handles_are_ebadf() {
    let (_store, fs, _d) = setup();
    assert_eq!(err(fs.read(999, 0, 1)), libc::EBADF);
    assert_eq!(err(fs.write(999, 0, b"x")), libc::EBADF);
    assert_eq!(err(fs.flush(999)), libc::EBADF);
    assert_eq!(err(fs.release(999)), libc::EBADF);
    assert_eq!(err(fs.dir_entries(999)), libc::EBADF);
}

#[test]

fn create_with_o_creat_on_an_existing_file_without_o_trunc_keeps_content() {
    // open(O_WRONLY|O_CREAT|O_APPEND) (`echo >> f`) reaching create() for a file that
    // exists (kernel negative dentry, listing refreshed since): POSIX keeps the data.
    let (store, fs, _d) = setup();
    store.put("/f", b"hello ");
    let (_, fh) = fs
        .create(ROOT_INO, "f", 0o644, O_WRONLY | libc::O_APPEND)
        .unwrap();
    fs.write(fh, 0, b"world").unwrap();
    fs.release(fh).unwrap();
    assert_eq!(store.get("/f").unwrap(), b"hello world");
}

#[test]
fn create_excl_on_an_existing_file_is_eexist() {
    let (store, fs, _d) = setup();
    store.put("/f", b"keep");
    store.put_dir("/d");
    assert_eq!(
        err(fs.create(ROOT_INO, "f", 0o644, O_WRONLY | libc::O_EXCL)),
        libc::EEXIST
    );
    assert_eq!(err(fs.create(ROOT_INO, "d", 0o644, O_WRONLY)), libc::EISDIR);
    assert_eq!(store.get("/f").unwrap(), b"keep");
}

#[test]
fn create_in_a_subdirectory() {
    let (store, fs, _d) = setup();
    let d = fs.mkdir(ROOT_INO, "sub", 0o755).unwrap();
    write_new(&fs, d.ino, "inner.txt", b"inside");
    assert_eq!(store.get("/sub/inner.txt").unwrap(), b"inside");
    assert_eq!(fs.lookup(d.ino, "inner.txt").unwrap().size, 6);
    no_part_files(&store);
}

#[test]
fn create_with_a_non_default_mode_is_chmodded_after_upload() {
    let (store, fs, _d) = setup();
    let (attr, fh) = fs.create(ROOT_INO, "secret", 0o600, O_WRONLY).unwrap();
    assert_eq!(attr.perm, 0o600);
    fs.write(fh, 0, b"s").unwrap();
    fs.release(fh).unwrap();
    assert_eq!(remote_mode(&store, "/", "secret"), Some(0o600));
    assert_eq!(lookup(&fs, "secret").perm, 0o600);
}

#[test]
fn unlink_of_an_open_never_uploaded_file_uploads_nothing() {
    let (store, fs, _d) = setup();
    let (attr, fh) = fs.create(ROOT_INO, "tmp", 0o644, O_RDWR).unwrap();
    fs.write(fh, 0, b"scratch").unwrap();
    fs.unlink(ROOT_INO, "tmp").unwrap();
    assert_eq!(err(fs.lookup(ROOT_INO, "tmp")), libc::ENOENT);
    assert_eq!(
        fs.read(fh, 0, 100).unwrap(),
        b"scratch",
        "still readable through its handle"
    );
    assert_eq!(fs.getattr(attr.ino).unwrap().size, 7);
    fs.release(fh).unwrap();
    assert_eq!(store.paths(), vec!["/"]);
}

// ---- truncate --------------------------------------------------------------------

#[test]
fn truncate_closed_file_uploads_at_once() {
    let (store, fs, _d) = setup();
    store.put("/z", b"0123456789");
    store.put("/s", b"0123456789");
    store.put("/g", b"0123");
    let z = lookup(&fs, "z").ino;
    let s = lookup(&fs, "s").ino;
    let g = lookup(&fs, "g").ino;
    assert_eq!(
        fs.setattr(z, None, None, None, Some(0), None).unwrap().size,
        0
    );
    assert_eq!(store.get("/z").unwrap(), b"");
    assert_eq!(
        fs.setattr(s, None, None, None, Some(4), None).unwrap().size,
        4
    );
    assert_eq!(store.get("/s").unwrap(), b"0123");
    assert_eq!(
        fs.setattr(g, None, None, None, Some(8), None).unwrap().size,
        8
    );
    assert_eq!(store.get("/g").unwrap(), b"0123\0\0\0\0");
    assert_eq!(lookup(&fs, "z").size, 0);
    assert_eq!(lookup(&fs, "s").size, 4);
    assert_eq!(lookup(&fs, "g").size, 8);
    no_part_files(&store);
}

#[test]
fn truncate_open_file_applies_at_flush() {
    for (size, expect) in [
        (0u64, &b""[..]),
        (4, &b"0123"[..]),
        (12, &b"0123456789\0\0"[..]),
    ] {
        let (store, fs, _d) = setup();
        store.put("/f", b"0123456789");
        let (ino, fh) = open_name(&fs, "f", O_RDWR);
        assert_eq!(
            fs.setattr(ino, None, None, None, Some(size), None)
                .unwrap()
                .size,
            size
        );
        assert_eq!(
            store.get("/f").unwrap(),
            b"0123456789",
            "not before flush (size {size})"
        );
        assert_eq!(fs.read(fh, 0, 100).unwrap(), expect);
        fs.flush(fh).unwrap();
        assert_eq!(store.get("/f").unwrap(), expect, "size {size}");
        fs.release(fh).unwrap();
        assert_eq!(store.get("/f").unwrap(), expect);
        assert_eq!(lookup(&fs, "f").size, size);
    }
}

#[test]
fn truncate_then_write_while_open() {
    let (store, fs, _d) = setup();
    store.put("/f", b"0123456789");
    let (ino, fh) = open_name(&fs, "f", O_WRONLY);
    fs.setattr(ino, None, None, None, Some(0), None).unwrap();
    fs.write(fh, 0, b"ab").unwrap();
    fs.release(fh).unwrap();
    assert_eq!(store.get("/f").unwrap(), b"ab");
}

#[test]

fn truncate_by_path_while_open_read_only_reaches_the_server() {
    // `truncate -s 0 f` while another program only reads f.
    let (store, fs, _d) = setup();
    store.put("/f", b"0123456789");
    let (ino, fh) = open_name(&fs, "f", O_RDONLY);
    fs.setattr(ino, None, None, None, Some(2), None).unwrap();
    fs.flush(fh).unwrap();
    fs.release(fh).unwrap();
    assert_eq!(
        store.get("/f").unwrap(),
        b"01",
        "the truncation must not be lost"
    );
}

// ---- other attributes -----------------------------------------------------------

#[test]
fn setattr_mtime_on_a_closed_file_sets_it_remotely() {
    let (store, fs, _d) = setup();
    store.put("/f", b"x");
    let ino = lookup(&fs, "f").ino;
    let a = fs
        .setattr(ino, None, None, None, None, Some(SetTime::At(at(T1))))
        .unwrap();
    assert_eq!(a.mtime, at(T1));
    assert_eq!(store.mtime("/f"), Some(at(T1)));
    assert_eq!(lookup(&fs, "f").mtime, at(T1));
    assert_eq!(store.uploads.load(Ordering::Relaxed), 0);
}

#[test]
fn setattr_mtime_on_a_directory() {
    let (store, fs, _d) = setup();
    let d = fs.mkdir(ROOT_INO, "d", 0o755).unwrap();
    fs.setattr(d.ino, None, None, None, None, Some(SetTime::At(at(T1))))
        .unwrap();
    assert_eq!(store.mtime("/d"), Some(at(T1)));
}

#[test]
fn cp_p_mtime_is_applied_after_upload() {
    let (store, fs, _d) = setup();
    let (attr, fh) = fs.create(ROOT_INO, "copy", 0o644, O_WRONLY).unwrap();
    fs.write(fh, 0, b"payload").unwrap();
    let a = fs
        .setattr(attr.ino, None, None, None, None, Some(SetTime::At(at(T1))))
        .unwrap();
    assert_eq!(a.mtime, at(T1), "pending mtime shown");
    assert!(store.get("/copy").is_none());
    fs.flush(fh).unwrap();
    fs.release(fh).unwrap();
    assert_eq!(store.get("/copy").unwrap(), b"payload");
    assert_eq!(store.mtime("/copy"), Some(at(T1)));
    assert_eq!(lookup(&fs, "copy").mtime, at(T1));
}

#[test]
fn mtime_set_after_close_sticks() {
    let (store, fs, _d) = setup();
    let ino = write_new(&fs, ROOT_INO, "f", b"abc");
    fs.setattr(ino, None, None, None, None, Some(SetTime::At(at(T1))))
        .unwrap();
    assert_eq!(store.mtime("/f"), Some(at(T1)));
    assert_eq!(fs.getattr(ino).unwrap().mtime, at(T1));
}

#[test]
fn setattr_mode_chmods_remotely() {
    let (store, fs, _d) = setup();
    store.put("/f", b"x");
    let ino = lookup(&fs, "f").ino;
    let a = fs
        .setattr(ino, Some(0o600), None, None, None, None)
        .unwrap();
    assert_eq!(a.perm, 0o600);
    assert_eq!(remote_mode(&store, "/", "f"), Some(0o600));
    assert_eq!(fs.getattr(ino).unwrap().perm, 0o600);
}

#[test]
fn setattr_mode_on_an_open_dirty_file_is_applied_after_upload() {
    let (store, fs, _d) = setup();
    let (attr, fh) = fs.create(ROOT_INO, "run.sh", 0o644, O_WRONLY).unwrap();
    fs.write(fh, 0, b"#!/bin/sh\n").unwrap();
    assert_eq!(
        fs.setattr(attr.ino, Some(0o755), None, None, None, None)
            .unwrap()
            .perm,
        0o755
    );
    fs.release(fh).unwrap();
    assert_eq!(store.get("/run.sh").unwrap(), b"#!/bin/sh\n");
    assert_eq!(remote_mode(&store, "/", "run.sh"), Some(0o755));
    assert_eq!(lookup(&fs, "run.sh").perm, 0o755);
}

#[test]
fn chown_to_another_id_is_eperm_to_the_same_is_ok() {
    let (store, fs, _d) = setup();
    store.put("/f", b"x");
    let ino = lookup(&fs, "f").ino;
    assert_eq!(
        err(fs.setattr(ino, None, Some(0), None, None, None)),
        libc::EPERM
    );
    assert_eq!(
        err(fs.setattr(ino, None, None, Some(0), None, None)),
        libc::EPERM
    );
    assert_eq!(
        err(fs.setattr(ino, None, Some(1000), Some(5), None, None)),
        libc::EPERM
    );
    let a = fs
        .setattr(ino, None, Some(1000), Some(1000), None, None)
        .unwrap();
    assert_eq!((a.uid, a.gid), (1000, 1000));
    assert_eq!(store.get("/f").unwrap(), b"x");
}

// ---- upload failures ---------------------------------------------------------------

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
        err(fs.setattr(ino, None, None, None, Some(0), None)),
        libc::EACCES
    );
    assert_eq!(store.get("/t").unwrap(), b"0123");
    assert_eq!(lookup(&fs, "t").size, 4, "size unchanged in the cache");
}

// ---- namespace ---------------------------------------------------------------------

#[test]
fn mkdir_then_lookup_and_existing_name_is_eexist() {
    let (store, fs, _d) = setup();
    let a = fs.mkdir(ROOT_INO, "dir", 0o755).unwrap();
    assert_eq!(a.kind, FileType::Dir);
    assert_eq!(store.paths(), vec!["/", "/dir"]);
    let l = lookup(&fs, "dir");
    assert_eq!((l.ino, l.kind), (a.ino, FileType::Dir));
    assert_eq!(err(fs.mkdir(ROOT_INO, "dir", 0o755)), libc::EEXIST);
    store.put("/file", b"x");
    let fs2 = with_timeout(&store, &fs, Duration::from_secs(60));
    assert_eq!(err(fs2.mkdir(ROOT_INO, "file", 0o755)), libc::EEXIST);
    let sub = fs.mkdir(a.ino, "sub", 0o755).unwrap();
    assert_eq!(fs.lookup(a.ino, "sub").unwrap().ino, sub.ino);
    assert!(store.paths().contains(&"/dir/sub".to_string()));
}

#[test]
fn mkdir_in_an_uncached_directory_that_already_has_the_name() {
    // Another client created it since: the server's refusal maps to EEXIST.
    let (store, fs, _d) = setup();
    assert_eq!(err(fs.lookup(ROOT_INO, "d")), libc::ENOENT);
    store.put_dir("/d");
    assert_eq!(err(fs.mkdir(ROOT_INO, "d", 0o755)), libc::EEXIST);
}

#[test]
fn rmdir_refuses_non_empty_and_files() {
    let (store, fs, _d) = setup();
    store.put_dir("/d");
    store.put("/d/f", b"x");
    store.put("/file", b"x");
    lookup(&fs, "d");
    assert_eq!(err(fs.rmdir(ROOT_INO, "d")), libc::ENOTEMPTY);
    assert!(store.paths().contains(&"/d".to_string()));
    assert_eq!(lookup(&fs, "d").kind, FileType::Dir);
    assert_eq!(err(fs.rmdir(ROOT_INO, "file")), libc::ENOTDIR);
    assert_eq!(err(fs.rmdir(ROOT_INO, "missing")), libc::ENOENT);
    assert!(store.get("/file").is_some());
}

#[test]
fn rmdir_of_an_empty_directory() {
    let (store, fs, _d) = setup();
    fs.mkdir(ROOT_INO, "d", 0o755).unwrap();
    fs.rmdir(ROOT_INO, "d").unwrap();
    assert_eq!(store.paths(), vec!["/"]);
    assert_eq!(err(fs.lookup(ROOT_INO, "d")), libc::ENOENT);
}

#[test]
fn rmdir_of_a_directory_emptied_through_the_mount() {
    let (store, fs, _d) = setup();
    let d = fs.mkdir(ROOT_INO, "d", 0o755).unwrap();
    write_new(&fs, d.ino, "f", b"x");
    assert_eq!(err(fs.rmdir(ROOT_INO, "d")), libc::ENOTEMPTY);
    fs.unlink(d.ino, "f").unwrap();
    fs.rmdir(ROOT_INO, "d").unwrap();
    assert_eq!(store.paths(), vec!["/"]);
}

#[test]
fn unlink_errors_and_success() {
    let (store, fs, _d) = setup();
    store.put_dir("/d");
    store.put("/f", b"x");
    assert_eq!(err(fs.unlink(ROOT_INO, "d")), libc::EISDIR);
    assert_eq!(err(fs.unlink(ROOT_INO, "missing")), libc::ENOENT);
    fs.unlink(ROOT_INO, "f").unwrap();
    assert_eq!(store.paths(), vec!["/", "/d"]);
    assert_eq!(err(fs.lookup(ROOT_INO, "f")), libc::ENOENT);
    assert_eq!(err(fs.unlink(ROOT_INO, "f")), libc::ENOENT);
}

#[test]
fn rename_a_file() {
    let (store, fs, _d) = setup();
    store.put("/a", b"A");
    let ino = lookup(&fs, "a").ino;
    fs.rename(ROOT_INO, "a", ROOT_INO, "b", false).unwrap();
    assert_eq!(store.paths(), vec!["/", "/b"]);
    assert_eq!(store.get("/b").unwrap(), b"A");
    assert_eq!(err(fs.lookup(ROOT_INO, "a")), libc::ENOENT);
    assert_eq!(lookup(&fs, "b").size, 1);
    assert_eq!(
        fs.getattr(ino).unwrap().size,
        1,
        "the inode follows the rename"
    );
}

#[test]
fn rename_into_another_directory() {
    let (store, fs, _d) = setup();
    store.put("/a", b"A");
    let d = fs.mkdir(ROOT_INO, "d", 0o755).unwrap();
    lookup(&fs, "a");
    fs.rename(ROOT_INO, "a", d.ino, "a2", false).unwrap();
    assert_eq!(store.get("/d/a2").unwrap(), b"A");
    assert_eq!(fs.lookup(d.ino, "a2").unwrap().size, 1);
    assert_eq!(err(fs.lookup(ROOT_INO, "a")), libc::ENOENT);
}

#[test]
fn rename_over_an_existing_file_replaces_it() {
    let (store, fs, _d) = setup();
    store.put("/a", b"new");
    store.put("/b", b"old old");
    let b_old = lookup(&fs, "b").ino;
    fs.rename(ROOT_INO, "a", ROOT_INO, "b", false).unwrap();
    assert_eq!(store.paths(), vec!["/", "/b"]);
    assert_eq!(store.get("/b").unwrap(), b"new");
    assert_eq!(lookup(&fs, "b").size, 3);
    assert_eq!(err(fs.lookup(ROOT_INO, "a")), libc::ENOENT);
    assert_eq!(
        err(fs.getattr(b_old)),
        libc::ENOENT,
        "the replaced file's inode is gone"
    );
}

#[test]
fn rename_noreplace_onto_an_existing_name_is_eexist() {
    let (store, fs, _d) = setup();
    store.put("/a", b"A");
    store.put("/b", b"B");
    assert_eq!(
        err(fs.rename(ROOT_INO, "a", ROOT_INO, "b", true)),
        libc::EEXIST
    );
    assert_eq!(store.get("/a").unwrap(), b"A");
    assert_eq!(store.get("/b").unwrap(), b"B");
    fs.rename(ROOT_INO, "a", ROOT_INO, "c", true).unwrap();
    assert_eq!(store.get("/c").unwrap(), b"A");
}

#[test]
fn rename_errors() {
    let (store, fs, _d) = setup();
    store.put("/f", b"F");
    store.put_dir("/d");
    store.put_dir("/full");
    store.put("/full/x", b"x");
    assert_eq!(
        err(fs.rename(ROOT_INO, "missing", ROOT_INO, "z", false)),
        libc::ENOENT
    );
    assert_eq!(
        err(fs.rename(ROOT_INO, "f", ROOT_INO, "d", false)),
        libc::EISDIR
    );
    assert_eq!(
        err(fs.rename(ROOT_INO, "d", ROOT_INO, "f", false)),
        libc::ENOTDIR
    );
    assert_eq!(
        err(fs.rename(ROOT_INO, "d", ROOT_INO, "full", false)),
        libc::ENOTEMPTY
    );
    let d = lookup(&fs, "d").ino;
    assert_eq!(
        err(fs.rename(ROOT_INO, "d", d, "inside", false)),
        libc::EINVAL
    );
    assert_eq!(
        err(fs.rename(ROOT_INO, "f", ROOT_INO, "bad\nname", false)),
        libc::EINVAL
    );
    assert_eq!(store.paths(), vec!["/", "/d", "/f", "/full", "/full/x"]);
    fs.rename(ROOT_INO, "f", ROOT_INO, "f", false).unwrap();
    assert_eq!(store.get("/f").unwrap(), b"F");
}

#[test]
fn rename_a_directory_with_children() {
    let (store, fs, _d) = setup();
    store.put_dir("/src");
    store.put_dir("/src/sub");
    store.put("/src/a", b"aa");
    store.put("/src/sub/b", b"bbb");
    let src = lookup(&fs, "src").ino;
    let a = fs.lookup(src, "a").unwrap().ino;
    let sub = fs.lookup(src, "sub").unwrap().ino;
    assert_eq!(fs.lookup(sub, "b").unwrap().size, 3);
    fs.rename(ROOT_INO, "src", ROOT_INO, "dst", false).unwrap();
    assert_eq!(
        store.paths(),
        vec!["/", "/dst", "/dst/a", "/dst/sub", "/dst/sub/b"]
    );
    assert_eq!(err(fs.lookup(ROOT_INO, "src")), libc::ENOENT);
    let dst = lookup(&fs, "dst");
    assert_eq!(dst.kind, FileType::Dir);
    assert_eq!(dst.ino, src, "the directory keeps its inode");
    assert_eq!(fs.lookup(dst.ino, "a").unwrap().ino, a);
    assert_eq!(fs.lookup(dst.ino, "a").unwrap().size, 2);
    let sub2 = fs.lookup(dst.ino, "sub").unwrap();
    assert_eq!(sub2.ino, sub);
    assert_eq!(fs.lookup(sub2.ino, "b").unwrap().size, 3);
    // readdir of the moved directory
    let fh = fs.opendir(dst.ino).unwrap();
    let names: Vec<String> = fs
        .dir_entries(fh)
        .unwrap()
        .iter()
        .map(|e| e.name.clone())
        .collect();
    assert_eq!(names, vec!["a", "sub"]);
    fs.releasedir(fh);
    // Opening a file through the moved path reads it.
    let fh = fs.open(a, O_RDONLY).unwrap();
    assert_eq!(fs.read(fh, 0, 10).unwrap(), b"aa");
    fs.release(fh).unwrap();
}

#[test]
fn rename_an_open_dirty_file_rsync_pattern() {
    let (store, fs, _d) = setup();
    store.put("/target", b"old version");
    lookup(&fs, "target");
    let (attr, fh) = fs.create(ROOT_INO, ".target.XyZ", 0o644, O_WRONLY).unwrap();
    fs.write(fh, 0, b"new version!").unwrap();
    fs.rename(ROOT_INO, ".target.XyZ", ROOT_INO, "target", false)
        .unwrap();
    fs.release(fh).unwrap();
    assert_eq!(store.get("/target").unwrap(), b"new version!");
    assert_eq!(store.paths(), vec!["/", "/target"]);
    assert_eq!(store.get("/.target.XyZ"), None);
    assert_eq!(attr.size, 0);
    // (The size shown by stat after the close: see the next test.)
}

#[test]

fn rename_an_open_dirty_file_then_stat_after_close() {
    // After the rename and the close, stat of the new name shows the written size.
    let (store, fs, _d) = setup();
    let (_, fh) = fs.create(ROOT_INO, ".tmp", 0o644, O_WRONLY).unwrap();
    fs.write(fh, 0, b"0123456789").unwrap();
    fs.rename(ROOT_INO, ".tmp", ROOT_INO, "final", false)
        .unwrap();
    fs.release(fh).unwrap();
    assert_eq!(store.get("/final").unwrap(), b"0123456789");
    assert_eq!(lookup(&fs, "final").size, 10);
}

#[test]
fn rename_an_open_file_and_keep_writing() {
    let (store, fs, _d) = setup();
    let (_, fh) = fs.create(ROOT_INO, "a", 0o644, O_WRONLY).unwrap();
    fs.write(fh, 0, b"12").unwrap();
    fs.rename(ROOT_INO, "a", ROOT_INO, "b", false).unwrap();
    fs.write(fh, 2, b"34").unwrap();
    fs.release(fh).unwrap();
    assert_eq!(store.get("/b").unwrap(), b"1234");
    assert!(store.get("/a").is_none());
    no_part_files(&store);
}

// ---- cache coherence --------------------------------------------------------------

#[test]
fn written_file_shows_its_new_size() {
    let (store, fs, _d) = setup();
    store.put("/f", b"short");
    let ino = lookup(&fs, "f").ino;
    assert_eq!(fs.getattr(ino).unwrap().size, 5);
    let fh = fs.open(ino, O_WRONLY | libc::O_TRUNC).unwrap();
    fs.write(fh, 0, b"a much longer content").unwrap();
    assert_eq!(fs.getattr(ino).unwrap().size, 21, "while open");
    assert_eq!(lookup(&fs, "f").size, 21, "lookup while open");
    fs.release(fh).unwrap();
    assert_eq!(fs.getattr(ino).unwrap().size, 21, "after close");
    assert_eq!(lookup(&fs, "f").size, 21);
    let dh = fs.opendir(ROOT_INO).unwrap();
    let e = fs.dir_entries(dh).unwrap();
    assert_eq!(e.iter().find(|e| e.name == "f").unwrap().attr.size, 21);
    fs.releasedir(dh);
}

#[test]
fn deleted_file_is_enoent_right_after() {
    let (store, fs, _d) = setup();
    store.put("/f", b"x");
    let ino = lookup(&fs, "f").ino;
    fs.unlink(ROOT_INO, "f").unwrap();
    assert_eq!(err(fs.lookup(ROOT_INO, "f")), libc::ENOENT);
    assert_eq!(err(fs.getattr(ino)), libc::ENOENT);
    let dh = fs.opendir(ROOT_INO).unwrap();
    assert!(fs.dir_entries(dh).unwrap().is_empty());
}

#[test]
fn negative_lookup_then_create_then_lookup() {
    let (store, fs, _d) = setup();
    assert_eq!(err(fs.lookup(ROOT_INO, "f")), libc::ENOENT);
    let (attr, fh) = fs.create(ROOT_INO, "f", 0o644, O_WRONLY).unwrap();
    assert_eq!(lookup(&fs, "f").ino, attr.ino, "visible while still open");
    fs.write(fh, 0, b"abc").unwrap();
    fs.release(fh).unwrap();
    let a = lookup(&fs, "f");
    assert_eq!((a.ino, a.size, a.kind), (attr.ino, 3, FileType::File));
    assert_eq!(store.get("/f").unwrap(), b"abc");
    // Same for mkdir.
    assert_eq!(err(fs.lookup(ROOT_INO, "d")), libc::ENOENT);
    fs.mkdir(ROOT_INO, "d", 0o755).unwrap();
    assert_eq!(lookup(&fs, "d").kind, FileType::Dir);
}

#[test]
fn listings_are_cached_and_expire() {
    let (store, fs0, _d) = setup();
    let fs = with_timeout(&store, &fs0, Duration::from_millis(100));
    store.put("/a", b"1");
    store.put("/b", b"22");
    store.put("/c", b"333");
    let before = store.lists.load(Ordering::Relaxed);
    for _ in 0..5 {
        assert_eq!(lookup(&fs, "a").size, 1);
        assert_eq!(lookup(&fs, "b").size, 2);
        assert_eq!(lookup(&fs, "c").size, 3);
        assert_eq!(err(fs.lookup(ROOT_INO, "missing")), libc::ENOENT);
    }
    assert_eq!(
        store.lists.load(Ordering::Relaxed) - before,
        1,
        "one listing for many lookups"
    );
    store.put("/late", b"late");
    assert_eq!(
        err(fs.lookup(ROOT_INO, "late")),
        libc::ENOENT,
        "not visible while cached"
    );
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(lookup(&fs, "late").size, 4, "visible after cache_timeout");
    assert_eq!(store.lists.load(Ordering::Relaxed) - before, 2);
}

#[test]
fn long_cache_timeout_hides_external_changes() {
    let (store, fs, _d) = setup();
    assert_eq!(err(fs.lookup(ROOT_INO, "ext")), libc::ENOENT);
    store.put("/ext", b"external");
    assert_eq!(err(fs.lookup(ROOT_INO, "ext")), libc::ENOENT);
    assert_eq!(store.lists.load(Ordering::Relaxed), 1);
}

#[test]
fn external_change_of_size_is_seen_after_expiry() {
    let (store, fs0, _d) = setup();
    let fs = with_timeout(&store, &fs0, Duration::from_millis(100));
    store.put("/f", b"1");
    let ino = lookup(&fs, "f").ino;
    store.put("/f", b"12345");
    assert_eq!(fs.getattr(ino).unwrap().size, 1);
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(fs.getattr(ino).unwrap().size, 5);
    let fh = fs.open(ino, O_RDONLY).unwrap();
    assert_eq!(read_all(&fs, fh, 4096), b"12345");
    fs.release(fh).unwrap();
}

// ---- readdir -----------------------------------------------------------------------

#[test]
fn readdir_lists_every_entry_with_kind_and_size() {
    let (store, fs, _d) = setup();
    store.put("/zeta", b"zz");
    store.put("/alpha", b"a");
    store.put_dir("/mid");
    store.put("/mid/inner", b"not listed at the root");
    write_new(&fs, ROOT_INO, "beta", b"bbbb");
    let dh = fs.opendir(ROOT_INO).unwrap();
    let entries = fs.dir_entries(dh).unwrap();
    // In the server's order, entries created through the mount after them.
    let mut got: Vec<(String, FileType, u64)> = entries
        .iter()
        .map(|e| (e.name.clone(), e.attr.kind, e.attr.size))
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        vec![
            ("alpha".to_string(), FileType::File, 1),
            ("beta".to_string(), FileType::File, 4),
            ("mid".to_string(), FileType::Dir, 0),
            ("zeta".to_string(), FileType::File, 2),
        ]
    );
    // Inode numbers match lookup's.
    for e in entries.iter() {
        assert_eq!(lookup(&fs, &e.name).ino, e.attr.ino, "{}", e.name);
    }
    fs.releasedir(dh);
    assert_eq!(err(fs.dir_entries(dh)), libc::EBADF);
    let mid = lookup(&fs, "mid").ino;
    let dh = fs.opendir(mid).unwrap();
    let names: Vec<String> = fs
        .dir_entries(dh)
        .unwrap()
        .iter()
        .map(|e| e.name.clone())
        .collect();
    assert_eq!(names, vec!["inner"]);
    fs.releasedir(dh);
}

#[test]
fn opendir_of_a_file_is_enotdir_and_open_of_a_dir_is_eisdir() {
    let (store, fs, _d) = setup();
    store.put("/f", b"x");
    store.put_dir("/d");
    let f = lookup(&fs, "f").ino;
    let d = lookup(&fs, "d").ino;
    assert_eq!(err(fs.opendir(f)), libc::ENOTDIR);
    assert_eq!(err(fs.open(d, O_RDONLY)), libc::EISDIR);
    assert_eq!(err(fs.opendir(987_654)), libc::ENOENT);
}

#[test]
fn readdir_shows_open_files_with_their_current_size() {
    let (_store, fs, _d) = setup();
    let (_, fh) = fs.create(ROOT_INO, "growing", 0o644, O_WRONLY).unwrap();
    fs.write(fh, 0, &[1u8; 100]).unwrap();
    let dh = fs.opendir(ROOT_INO).unwrap();
    let e = fs.dir_entries(dh).unwrap();
    assert_eq!(e.len(), 1);
    assert_eq!((e[0].name.as_str(), e[0].attr.size), ("growing", 100));
    fs.release(fh).unwrap();
}

// ---- read-only mounts --------------------------------------------------------------

#[test]
fn read_only_mount_refuses_changes_with_erofs() {
    let (store, fs0, _d) = setup();
    store.put("/f", b"x");
    store.put_dir("/d");
    let fs = read_only_fs(&store, &fs0);
    let f = lookup(&fs, "f").ino;
    assert_eq!(err(fs.create(ROOT_INO, "n", 0o644, O_WRONLY)), libc::EROFS);
    assert_eq!(err(fs.mkdir(ROOT_INO, "n", 0o755)), libc::EROFS);
    assert_eq!(err(fs.unlink(ROOT_INO, "f")), libc::EROFS);
    assert_eq!(err(fs.rmdir(ROOT_INO, "d")), libc::EROFS);
    assert_eq!(
        err(fs.rename(ROOT_INO, "f", ROOT_INO, "g", false)),
        libc::EROFS
    );
    assert_eq!(err(fs.open(f, O_WRONLY)), libc::EROFS);
    assert_eq!(err(fs.open(f, O_RDWR)), libc::EROFS);
    assert_eq!(err(fs.open(f, O_WRONLY | libc::O_TRUNC)), libc::EROFS);
    assert_eq!(
        err(fs.setattr(f, None, None, None, Some(0), None)),
        libc::EROFS
    );
    assert_eq!(
        err(fs.setattr(f, Some(0o600), None, None, None, None)),
        libc::EROFS
    );
    assert_eq!(
        err(fs.setattr(f, None, None, None, None, Some(SetTime::At(at(T1))))),
        libc::EROFS
    );
    // Reading still works.
    let fh = fs.open(f, O_RDONLY).unwrap();
    assert_eq!(fs.read(fh, 0, 10).unwrap(), b"x");
    fs.release(fh).unwrap();
    assert_eq!(store.paths(), vec!["/", "/d", "/f"]);
    assert_eq!(store.get("/f").unwrap(), b"x");
    assert_eq!(store.uploads.load(Ordering::Relaxed), 0);
}

// ---- inodes --------------------------------------------------------------------------

#[test]
fn inode_numbers_are_stable() {
    let (store, fs, _d) = setup();
    store.put("/f", b"x");
    store.put_dir("/d");
    store.put("/d/g", b"y");
    let f1 = lookup(&fs, "f").ino;
    let f2 = lookup(&fs, "f").ino;
    assert_eq!(f1, f2);
    assert_ne!(f1, ROOT_INO);
    let d = lookup(&fs, "d").ino;
    assert_ne!(d, f1);
    let g = fs.lookup(d, "g").unwrap().ino;
    assert!(![ROOT_INO, f1, d].contains(&g));
    fs.forget(f1, 2);
    assert_eq!(err(fs.getattr(f1)), libc::ENOENT, "forgotten");
    assert_eq!(
        lookup(&fs, "f").ino,
        f1,
        "same number after forget and lookup"
    );
    fs.forget(g, 1);
    assert_eq!(fs.lookup(d, "g").unwrap().ino, g);
    assert_eq!(fs.getattr(ROOT_INO).unwrap().kind, FileType::Dir);
}

#[test]
fn inode_numbers_survive_a_new_mount() {
    let (store, fs, _d) = setup();
    store.put("/f", b"x");
    let a = lookup(&fs, "f").ino;
    let fs2 = with_timeout(&store, &fs, Duration::from_secs(60));
    assert_eq!(lookup(&fs2, "f").ino, a);
}

// ---- reading -------------------------------------------------------------------------

#[test]
fn large_sequential_read_uses_one_stream() {
    let (store, fs, _d) = setup();
    let data = pattern(3 * 1024 * 1024 + 17);
    store.put("/big", &data);
    let (ino, fh) = open_name(&fs, "big", O_RDONLY);
    assert_eq!(fs.getattr(ino).unwrap().size, data.len() as u64);
    let got = read_all(&fs, fh, 128 * 1024);
    assert_eq!(got.len(), data.len());
    assert!(got == data, "content differs");
    assert_eq!(store.reads.load(Ordering::Relaxed), 1, "one RETR stream");
    assert!(fs.read(fh, data.len() as u64 + 10, 10).unwrap().is_empty());
    fs.release(fh).unwrap();
    assert_eq!(store.uploads.load(Ordering::Relaxed), 0);
}

#[test]
fn read_of_a_file_removed_remotely_is_enoent() {
    let (store, fs, _d) = setup();
    store.put("/f", b"x");
    let (_, fh) = open_name(&fs, "f", O_RDONLY);
    let fs_other = with_timeout(&store, &fs, Duration::from_secs(60));
    fs_other.unlink(ROOT_INO, "f").unwrap();
    assert_eq!(err(fs.read(fh, 0, 10)), libc::ENOENT);
    fs.release(fh).unwrap();
}

#[test]
fn readlink_of_a_file_is_einval_and_symlink_is_eperm() {
    let (store, fs, _d) = setup();
    store.put("/f", b"x");
    let f = lookup(&fs, "f").ino;
    assert_eq!(err(fs.readlink(f)), libc::EINVAL);
    assert_eq!(err(fs.symlink()), libc::EPERM);
}

// ---- names ---------------------------------------------------------------------------

#[test]
fn invalid_names_are_refused() {
    let (store, fs, _d) = setup();
    assert_eq!(
        err(fs.create(ROOT_INO, "bad\nname", 0o644, O_WRONLY)),
        libc::EINVAL
    );
    assert_eq!(
        err(fs.create(ROOT_INO, "bad\rname", 0o644, O_WRONLY)),
        libc::EINVAL
    );
    assert_eq!(err(fs.mkdir(ROOT_INO, "bad\nname", 0o755)), libc::EINVAL);
    assert_eq!(
        err(fs.create(ROOT_INO, &"n".repeat(256), 0o644, O_WRONLY)),
        libc::ENAMETOOLONG
    );
    assert_eq!(err(fs.lookup(ROOT_INO, "bad\nname")), libc::ENOENT);
    write_new(&fs, ROOT_INO, &"n".repeat(255), b"ok");
    assert_eq!(store.paths().len(), 2);
    assert!(store.paths().iter().all(|p| !p.contains('\n')));
}

#[test]
fn open_trunc_and_close_without_writing_empties_the_file() {
    let (store, fs, _d) = setup();
    store.put("/f", b"abc");
    let (_, fh) = open_name(&fs, "f", O_WRONLY | libc::O_TRUNC);
    fs.flush(fh).unwrap();
    fs.release(fh).unwrap();
    assert_eq!(store.get("/f").unwrap(), b"");
    assert_eq!(lookup(&fs, "f").size, 0);
}

#[test]
fn rename_the_directory_of_an_open_dirty_file() {
    let (store, fs, _d) = setup();
    let d = fs.mkdir(ROOT_INO, "d", 0o755).unwrap();
    let (_, fh) = fs.create(d.ino, "f", 0o644, O_WRONLY).unwrap();
    fs.write(fh, 0, b"moved").unwrap();
    fs.rename(ROOT_INO, "d", ROOT_INO, "e", false).unwrap();
    fs.release(fh).unwrap();
    assert_eq!(store.get("/e/f").unwrap(), b"moved");
    assert_eq!(store.paths(), vec!["/", "/e", "/e/f"]);
    assert_eq!(fs.lookup(d.ino, "f").unwrap().size, 5);
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

fn setup_with(f: impl FnOnce(&mut FsConfig)) -> (Arc<MemStore>, FtpsFs, tempfile::TempDir) {
    let (store, fs, dir) = setup();
    let mut cfg = fs.config().clone();
    f(&mut cfg);
    (store.clone(), FtpsFs::new(store, cfg), dir)
}

#[test]
fn subdirectories_are_listed_ahead_of_the_walker() {
    let (store, fs, _d) = setup_with(|c| c.prefetch_workers = 3);
    for i in 0..20 {
        store.put_dir(&format!("/d{i}"));
        store.put(&format!("/d{i}/f"), b"x");
    }
    let fh = fs.opendir(ROOT_INO).unwrap();
    fs.releasedir(fh);
    let t0 = std::time::Instant::now();
    while store.lists.load(std::sync::atomic::Ordering::Relaxed) < 21 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "subdirectories not prefetched"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(50));
    for i in 0..20 {
        let d = fs.lookup(ROOT_INO, &format!("d{i}")).unwrap();
        assert_eq!(fs.lookup(d.ino, "f").unwrap().size, 1);
    }
    assert_eq!(
        store.lists.load(std::sync::atomic::Ordering::Relaxed),
        21,
        "each directory listed once"
    );
}

#[test]
fn sequential_writes_are_streamed_and_seeks_fall_back_to_the_spool() {
    let (store, fs, _d) = setup();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let (_, fh) = fs.create(ROOT_INO, "s", 0o644, libc::O_WRONLY).unwrap();
    for (i, chunk) in data.chunks(131072).enumerate() {
        fs.write(fh, (i * 131072) as u64, chunk).unwrap();
    }
    fs.flush(fh).unwrap();
    fs.release(fh).unwrap();
    assert_eq!(store.get("/s").unwrap(), data);
    assert_eq!(
        store.uploads.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "one streamed upload"
    );
    assert_eq!(
        store.renames.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "a new file goes straight to its name"
    );
    assert_eq!(store.paths(), vec!["/", "/s"], "no temporary file left");
    // Rewriting it (it exists now) goes through a temporary name and a rename.
    let (_, fh) = open_name(&fs, "s", O_WRONLY | libc::O_TRUNC);
    for (i, chunk) in data.chunks(131072).enumerate().take(3) {
        fs.write(fh, (i * 131072) as u64, chunk).unwrap();
    }
    fs.release(fh).unwrap();
    assert_eq!(store.get("/s").unwrap(), data[..3 * 131072]);
    assert_eq!(store.renames.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(store.paths(), vec!["/", "/s"], "no temporary file left");

    // A writer that seeks: the stream is abandoned, the spool goes up at close.
    let (_, fh) = fs.create(ROOT_INO, "t", 0o644, libc::O_WRONLY).unwrap();
    fs.write(fh, 0, b"hello").unwrap();
    fs.write(fh, 100, b"world").unwrap();
    fs.release(fh).unwrap();
    let mut want = b"hello".to_vec();
    want.resize(100, 0);
    want.extend_from_slice(b"world");
    assert_eq!(store.get("/t").unwrap(), want);
    assert_eq!(
        store.paths(),
        vec!["/", "/s", "/t"],
        "abandoned stream cleaned up"
    );
}

#[test]
fn a_failed_stream_is_retried_from_the_spool_and_reported() {
    let (store, fs, spool) = setup();
    // A new file's stream and spool upload both go to its own name; the server
    // refuses both at their end and keeps half a file each time.
    *store.fail_uploads_matching.lock().unwrap() = Some("/u".into());
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

#[test]
fn inplace_uploads_straight_to_the_name() {
    let (store, fs, _d) = setup_with(|c| c.inplace = true);
    store.put("/f", b"old content");
    let (ino, fh) = open_name(&fs, "f", O_WRONLY | libc::O_TRUNC);
    fs.write(fh, 0, b"new").unwrap();
    fs.release(fh).unwrap();
    assert_eq!(store.get("/f").unwrap(), b"new");
    assert_eq!(store.paths(), vec!["/", "/f"]);
    assert_eq!(fs.getattr(ino).unwrap().size, 3);
    // No rename happened: a refused upload leaves the name as the server left it.
    *store.fail_uploads_matching.lock().unwrap() = Some("/f".into());
    let (_, fh) = open_name(&fs, "f", O_WRONLY | libc::O_TRUNC);
    fs.write(fh, 0, b"x").unwrap();
    assert_eq!(err(fs.release(fh)), libc::EACCES);
}

/// A directory of `n` files `/big/fNNNN` in the store, not yet listed.
fn big_dir(store: &MemStore, n: usize) {
    store.mkdir("/big").unwrap();
    for i in 0..n {
        store.put(&format!("/big/f{i:04}"), b"x");
    }
}

#[test]
fn readdir_hands_out_entries_while_the_listing_streams_in() {
    let (store, fs, _d) = setup();
    big_dir(&store, 300);
    let dir = lookup(&fs, "big").ino;
    let (go, wait) = std::sync::mpsc::channel();
    *store.list_pause.lock().unwrap() = Some((100, wait));
    let lists_before = store.lists.load(Ordering::Relaxed);
    let fs = Arc::new(fs);
    let dh = {
        let fs = fs.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(fs.opendir(dir)));
        rx.recv_timeout(Duration::from_secs(5))
            .expect("opendir returns before the listing is complete")
            .unwrap()
    };
    // The first 100 entries are readable while the rest is still "on the wire".
    let mut first = Vec::new();
    while first.len() < 100 {
        fs.read_dir(dh, first.len(), true, |name, attr, next| {
            assert_eq!(attr.kind, FileType::File);
            first.push((name.to_string(), next));
            false
        })
        .unwrap();
    }
    assert_eq!(
        first.len(),
        100,
        "what has arrived, without waiting for the rest"
    );
    assert_eq!(first[99].1, 100, "offsets are stream positions");
    // A lookup in that directory waits for this listing instead of listing again.
    let looker = {
        let fs = fs.clone();
        std::thread::spawn(move || fs.lookup(dir, "f0250").map(|a| a.size))
    };
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        !looker.is_finished(),
        "lookup waits for the listing in flight"
    );
    go.send(()).unwrap();
    assert_eq!(looker.join().unwrap(), Ok(1));
    let mut rest = Vec::new();
    fs.read_dir(dh, 100, true, |name, _, _| {
        rest.push(name.to_string());
        false
    })
    .unwrap();
    assert_eq!(rest.len(), 200);
    assert_eq!(
        store.lists.load(Ordering::Relaxed) - lists_before,
        1,
        "one listing served readdir and lookup"
    );
    // Complete and cached: a second reader gets the same entries from the cache.
    let dh2 = fs.opendir(dir).unwrap();
    assert_eq!(fs.dir_entries(dh2).unwrap().len(), 300);
    assert_eq!(store.lists.load(Ordering::Relaxed) - lists_before, 1);
    fs.releasedir(dh);
    fs.releasedir(dh2);
}

#[test]
fn a_listing_cut_off_fails_readdir_past_what_arrived_and_is_not_cached() {
    let (store, fs, _d) = setup();
    big_dir(&store, 50);
    let dir = lookup(&fs, "big").ino;
    let (go, wait) = std::sync::mpsc::channel::<()>();
    *store.list_pause.lock().unwrap() = Some((20, wait));
    let dh = fs.opendir(dir).unwrap();
    let mut got = 0;
    while got < 20 {
        fs.read_dir(dh, got, false, |_, _, _| {
            got += 1;
            false
        })
        .unwrap();
    }
    assert_eq!(got, 20);
    drop(go); // the connection is lost
    let e = fs.read_dir(dh, 20, false, |_, _, _| false).unwrap_err();
    assert_eq!(e, Errno(libc::EIO));
    fs.releasedir(dh);
    // Not cached: the next opendir lists again, completely.
    let before = store.lists.load(Ordering::Relaxed);
    let dh = fs.opendir(dir).unwrap();
    assert_eq!(fs.dir_entries(dh).unwrap().len(), 50);
    assert_eq!(store.lists.load(Ordering::Relaxed) - before, 1);
}
