//! Unit tests of the filesystem logic over the in-memory store.

use super::*;
use crate::fs::memstore::MemStore;

pub(crate) fn setup() -> (Arc<MemStore>, FtpsFs, tempfile::TempDir) {
    let store = Arc::new(MemStore::new());
    let spool = tempfile::tempdir().expect("tempdir");
    let cfg = FsConfig {
        root: "/".into(),
        uid: 1000,
        gid: 1000,
        umask: 0o022,
        read_only: false,
        cache_timeout: Duration::from_secs(60),
        cache_entries: 100,
        spool_dir: spool.path().to_path_buf(),
        inplace: false,
    };
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
