//! chmod, utimens and chown.

use super::*;

#[test]
fn setattr_mtime_on_a_closed_file_sets_it_remotely() {
    let (store, fs, _d) = setup();
    store.put("/f", b"x");
    let ino = lookup(&fs, "f").ino;
    let a = fs.utimens(ino, SetTime::At(at(T1))).unwrap();
    assert_eq!(a.mtime, at(T1));
    assert_eq!(store.mtime("/f"), Some(at(T1)));
    assert_eq!(lookup(&fs, "f").mtime, at(T1));
    assert_eq!(store.uploads.load(Ordering::Relaxed), 0);
}

#[test]
fn setattr_mtime_on_a_directory() {
    let (store, fs, _d) = setup();
    let d = fs.mkdir(ROOT_INO, "d", 0o755).unwrap();
    fs.utimens(d.ino, SetTime::At(at(T1))).unwrap();
    assert_eq!(store.mtime("/d"), Some(at(T1)));
}

#[test]
fn cp_p_mtime_is_applied_after_upload() {
    let (store, fs, _d) = setup();
    let (attr, fh) = fs.create(ROOT_INO, "copy", 0o644, O_WRONLY).unwrap();
    fs.write(fh, 0, b"payload").unwrap();
    let a = fs.utimens(attr.ino, SetTime::At(at(T1))).unwrap();
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
    fs.utimens(ino, SetTime::At(at(T1))).unwrap();
    assert_eq!(store.mtime("/f"), Some(at(T1)));
    assert_eq!(fs.getattr(ino).unwrap().mtime, at(T1));
}

#[test]
fn setattr_mode_chmods_remotely() {
    let (store, fs, _d) = setup();
    store.put("/f", b"x");
    let ino = lookup(&fs, "f").ino;
    let a = fs
        .setattr(ino, Some(0o600), None, None, None, None, None)
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
        fs.setattr(attr.ino, Some(0o755), None, None, None, None, None)
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
        err(fs.setattr(ino, None, Some(0), None, None, None, None)),
        libc::EPERM
    );
    assert_eq!(
        err(fs.setattr(ino, None, None, Some(0), None, None, None)),
        libc::EPERM
    );
    assert_eq!(
        err(fs.setattr(ino, None, Some(1000), Some(5), None, None, None)),
        libc::EPERM
    );
    let a = fs
        .setattr(ino, None, Some(1000), Some(1000), None, None, None)
        .unwrap();
    assert_eq!((a.uid, a.gid), (1000, 1000));
    assert_eq!(store.get("/f").unwrap(), b"x");
}
