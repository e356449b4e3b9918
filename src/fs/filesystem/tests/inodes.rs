//! Inode numbers.

use super::*;

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
