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

fn setup_with(f: impl FnOnce(&mut FsConfig)) -> (Arc<MemStore>, FtpsFs, tempfile::TempDir) {
    let (store, fs, dir) = setup();
    let mut cfg = fs.config().clone();
    f(&mut cfg);
    (store.clone(), FtpsFs::new(store, cfg), dir)
}

mod attributes;
mod coherence;
mod inodes;
mod names;
mod namespace;
mod read_only;
mod readdir;
mod reading;
mod truncate;
mod upload_failures;
mod writing;
