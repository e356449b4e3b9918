//! Reads.

use super::*;

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
