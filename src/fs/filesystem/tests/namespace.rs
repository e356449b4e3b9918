//! mkdir, rmdir, unlink, rename.

use super::*;

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
