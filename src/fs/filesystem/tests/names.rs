//! Names the mount refuses.

use super::*;

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
