//! Read-only mounts.

use super::*;

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
        err(fs.setattr(f, None, None, None, Some(0), None, None)),
        libc::EROFS
    );
    assert_eq!(
        err(fs.setattr(f, Some(0o600), None, None, None, None, None)),
        libc::EROFS
    );
    assert_eq!(err(fs.utimens(f, SetTime::At(at(T1)))), libc::EROFS);
    // Reading still works.
    let fh = fs.open(f, O_RDONLY).unwrap();
    assert_eq!(fs.read(fh, 0, 10).unwrap(), b"x");
    fs.release(fh).unwrap();
    assert_eq!(store.paths(), vec!["/", "/d", "/f"]);
    assert_eq!(store.get("/f").unwrap(), b"x");
    assert_eq!(store.uploads.load(Ordering::Relaxed), 0);
}
