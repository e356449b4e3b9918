//! Writing: create, write, append, fsync, close, streaming uploads.

use super::*;

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
        1,
        "a new file goes to a temporary name, then one rename"
    );
    assert_eq!(store.paths(), vec!["/", "/s"], "no temporary file left");
    // Rewriting it (it exists now) goes through a temporary name and a rename.
    let (_, fh) = open_name(&fs, "s", O_WRONLY | libc::O_TRUNC);
    for (i, chunk) in data.chunks(131072).enumerate().take(3) {
        fs.write(fh, (i * 131072) as u64, chunk).unwrap();
    }
    fs.release(fh).unwrap();
    assert_eq!(store.get("/s").unwrap(), data[..3 * 131072]);
    assert_eq!(store.renames.load(std::sync::atomic::Ordering::Relaxed), 2);
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
