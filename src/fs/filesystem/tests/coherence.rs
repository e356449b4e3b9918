//! The mount's own changes seen at once; others' after the cache expires.

use super::*;

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
