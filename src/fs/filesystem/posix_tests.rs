//! POSIX where FTP allows it: what a program sees after the mount's own changes
//! (times, link counts, modes) and on servers that refuse some commands (times,
//! reading a directory), over the failure-injecting store.

use super::fault_tests::config;
use super::*;
use crate::fs::faultstore::FaultStore;
use std::sync::atomic::Ordering;
use std::thread::sleep;

const O_WRONLY: i32 = libc::O_WRONLY;

fn setup_with(f: impl FnOnce(&mut FsConfig)) -> (Arc<FaultStore>, FtpsFs, tempfile::TempDir) {
    let store = Arc::new(FaultStore::new());
    let spool = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(spool.path());
    f(&mut cfg);
    let fs = FtpsFs::new(store.clone(), cfg);
    (store, fs, spool)
}

fn setup() -> (Arc<FaultStore>, FtpsFs, tempfile::TempDir) {
    setup_with(|_| {})
}

fn refuse(store: &FaultStore, ops: &[&'static str]) {
    crate::sync::lock(&store.refuse).extend_from_slice(ops);
}

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// Long enough for a new time to differ from one taken before it.
fn tick() {
    sleep(Duration::from_millis(20));
}

// ---- times ---------------------------------------------------------------------------

#[test]
fn a_directory_time_the_server_refuses_is_skipped_unless_strict() {
    let (store, fs, _d) = setup();
    refuse(&store, &["set_mtime_dir"]);
    let d = fs.mkdir(ROOT_INO, "d", 0o755).expect("mkdir");
    let before = fs.getattr(d.ino).expect("getattr").mtime;
    let a = fs
        .utimens(d.ino, SetTime::At(t(1000)))
        .expect("a refused directory time succeeds without effect");
    assert_eq!(a.mtime, before, "nothing pretends the time was set");
    // Files stay strict.
    let (f, fh) = fs.create(ROOT_INO, "f", 0o644, O_WRONLY).expect("create");
    fs.release(fh).expect("release");
    refuse(&store, &["set_mtime"]);
    let err = fs.utimens(f.ino, SetTime::At(t(1000)));
    assert_eq!(err.map(|_| ()), Err(Errno(libc::EPERM)));

    let (store, fs, _d) = setup_with(|c| c.strict_dir_times = true);
    refuse(&store, &["set_mtime_dir"]);
    let d = fs.mkdir(ROOT_INO, "d", 0o755).expect("mkdir");
    let err = fs.utimens(d.ino, SetTime::At(t(1000)));
    assert_eq!(err.map(|_| ()), Err(Errno(libc::EPERM)));
}

#[test]
fn touch_right_after_writing_succeeds_where_times_cannot_be_set() {
    let (store, fs, _d) = setup();
    store.inner.put("/old", b"x");
    store.inner.set_mtime("/old", t(1000)).expect("set");
    refuse(&store, &["set_mtime"]);
    // touch newfile: create, futimens(UTIME_NOW) on the open file, close.
    let (a, fh) = fs.create(ROOT_INO, "new", 0o644, O_WRONLY).expect("create");
    fs.utimens(a.ino, SetTime::Now)
        .expect("touch of a new file");
    fs.release(fh)
        .expect("close uploads without setting a time");
    assert_eq!(store.inner.get("/new"), Some(Vec::new()));
    // touch again right after: the server's time is already now.
    fs.utimens(a.ino, SetTime::Now)
        .expect("touch right after the upload");
    // An old file cannot be made new where the server cannot set times.
    let old = fs.lookup(ROOT_INO, "old").expect("lookup");
    let err = fs.utimens(old.ino, SetTime::Now);
    assert_eq!(err.map(|_| ()), Err(Errno(libc::EPERM)));
}

#[test]
fn writes_truncates_and_chmod_move_the_times_a_program_sees() {
    let (store, fs, _d) = setup();
    store.inner.put("/f", b"0123456789");
    store.inner.set_mtime("/f", t(1000)).expect("set");
    let f = fs.lookup(ROOT_INO, "f").expect("lookup");
    assert_eq!(f.mtime, t(1000));
    let start = SystemTime::now();
    let fh = fs.open(f.ino, libc::O_RDWR).expect("open");
    fs.write(fh, 2, b"xy").expect("write");
    let a = fs.getattr(f.ino).expect("getattr");
    assert!(a.mtime >= start, "mtime after a write: {:?}", a.mtime);
    assert!(a.ctime >= a.mtime);
    tick();
    let before = fs.getattr(f.ino).expect("getattr").mtime;
    fs.setattr(f.ino, None, None, None, Some(3), None, None)
        .expect("ftruncate");
    assert!(
        fs.getattr(f.ino).expect("getattr").mtime > before,
        "after truncate"
    );
    fs.release(fh).expect("release");
    // chmod changes ctime, not mtime.
    let a = fs.getattr(f.ino).expect("getattr");
    tick();
    let after = fs
        .setattr(f.ino, Some(0o600), None, None, None, None, None)
        .expect("chmod");
    assert_eq!(after.mtime, a.mtime);
    assert!(after.ctime > a.ctime, "ctime after chmod");
    // A time set by the program wins over the time of writes before it.
    let fh = fs.open(f.ino, O_WRONLY).expect("open");
    fs.write(fh, 0, b"z").expect("write");
    let a = fs.utimens(f.ino, SetTime::At(t(5000))).expect("utimens");
    assert_eq!(a.mtime, t(5000));
    fs.release(fh).expect("release");
    assert_eq!(store.inner.mtime("/f"), Some(t(5000)));
}

/// The times the mount gives its own changes are never later than the
/// server's for them (same clock), so the next listing, in whole seconds, keeps
/// them or moves them forward, never back: here every reply comes a second
/// after its change, so a time taken after the reply would be a second ahead.
#[test]
fn a_listing_never_moves_the_times_of_the_mounts_own_changes_back() {
    let (store, fs, _d) = setup();
    store.inner.put_dir("/d");
    store.server_clock.store(true, Ordering::SeqCst);
    store.reply_delay_ms.store(1000, Ordering::SeqCst);
    let d = fs.lookup(ROOT_INO, "d").expect("lookup").ino;
    let check = |what: &str, inos: &[u64]| {
        let mine: Vec<SystemTime> = inos
            .iter()
            .map(|&i| fs.getattr(i).expect("getattr").mtime)
            .collect();
        fs.cache.expire_all();
        for (&ino, mine) in inos.iter().zip(mine) {
            let nanos = mine
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            assert_ne!(nanos, 0, "{what}: the mount's own time, not a listing's");
            let listed = fs.getattr(ino).expect("getattr after expiry").mtime;
            assert!(listed >= mine, "{what}: {mine:?} -> {listed:?}");
        }
    };
    let sub = fs.mkdir(d, "sub", 0o755).expect("mkdir");
    check("mkdir: the new directory, its parent", &[sub.ino, d]);
    let (f, fh) = fs.create(d, "f", 0o644, O_WRONLY).expect("create");
    fs.write(fh, 0, b"data").expect("write");
    fs.release(fh).expect("release");
    check("a written file", &[f.ino]);
    fs.setattr(f.ino, None, None, None, Some(2), None, None)
        .expect("truncate of a closed file");
    check("a truncated file", &[f.ino]);
    fs.rename(d, "f", d, "g", false).expect("rename");
    check("rename: the directory", &[d]);
    fs.unlink(d, "g").expect("unlink");
    check("unlink: the directory", &[d]);
    fs.rmdir(d, "sub").expect("rmdir");
    check("rmdir: the directory", &[d]);
}

#[test]
fn a_directory_s_times_move_with_changes_inside_it() {
    let (store, fs, _d) = setup();
    store.inner.put_dir("/d");
    store.inner.set_mtime("/d", t(1000)).expect("set");
    let d = fs.lookup(ROOT_INO, "d").expect("lookup");
    assert_eq!(d.mtime, t(1000));
    let root_before = fs.getattr(ROOT_INO).expect("root").mtime;
    assert!(
        root_before > t(1_600_000_000),
        "the root's mtime is not 1970"
    );
    let mut last = d.mtime;
    let mut step = |what: &str, op: &dyn Fn()| {
        tick();
        op();
        let now = fs.getattr(d.ino).expect("getattr");
        assert!(now.mtime > last, "dir mtime after {what}");
        assert!(now.ctime >= now.mtime, "dir ctime after {what}");
        last = now.mtime;
    };
    step("create", &|| {
        let (_, fh) = fs.create(d.ino, "f", 0o644, O_WRONLY).expect("create");
        fs.release(fh).expect("release");
    });
    step("mkdir", &|| {
        fs.mkdir(d.ino, "sub", 0o755).expect("mkdir");
    });
    step("rename", &|| {
        fs.rename(d.ino, "f", d.ino, "g", false).expect("mv")
    });
    step("unlink", &|| fs.unlink(d.ino, "g").expect("rm"));
    step("rmdir", &|| fs.rmdir(d.ino, "sub").expect("rmdir"));
    tick();
    fs.mkdir(ROOT_INO, "e", 0o755).expect("mkdir in the root");
    assert!(fs.getattr(ROOT_INO).expect("root").mtime > root_before);
}

// ---- link counts and modes -------------------------------------------------------------

#[test]
fn link_counts_follow_subdirectories_and_unlinks() {
    let (store, fs, _d) = setup();
    store.inner.put_dir("/d");
    store.inner.put_dir("/d/a");
    store.inner.put_dir("/d/b");
    store.inner.put("/d/f", b"x");
    let d = fs.lookup(ROOT_INO, "d").expect("lookup");
    let f = fs.lookup(d.ino, "f").expect("lookup f");
    assert_eq!(f.nlink, 1);
    assert_eq!(fs.getattr(d.ino).expect("getattr").nlink, 4, "2 + a, b");
    fs.mkdir(d.ino, "c", 0o755).expect("mkdir");
    assert_eq!(fs.getattr(d.ino).expect("getattr").nlink, 5);
    fs.rmdir(d.ino, "a").expect("rmdir");
    assert_eq!(fs.getattr(d.ino).expect("getattr").nlink, 4);
    // Unlinked while open: no links.
    let fh = fs.open(f.ino, libc::O_RDONLY).expect("open");
    fs.unlink(d.ino, "f").expect("unlink");
    assert_eq!(
        fs.getattr(f.ino).expect("getattr of the open file").nlink,
        0
    );
    fs.release(fh).expect("release");
}

#[test]
fn mkdir_applies_the_requested_mode() {
    let (store, fs, _d) = setup();
    let a = fs.mkdir(ROOT_INO, "private", 0o700).expect("mkdir");
    assert_eq!(a.perm, 0o700);
    fs.mkdir(ROOT_INO, "plain", 0o755).expect("mkdir");
    let chmods = crate::sync::lock(&store.chmods).clone();
    assert_eq!(
        chmods,
        [
            ("/private".to_string(), 0o700),
            ("/plain".to_string(), 0o755)
        ],
        "the requested mode, whatever the server's own default"
    );
    // Where the server refuses SITE CHMOD the directory is still made.
    refuse(&store, &["chmod"]);
    let a = fs.mkdir(ROOT_INO, "x", 0o700).expect("mkdir");
    assert_eq!(a.perm, 0o755, "the server's mode, not a pretended one");
    // A server without SITE CHMOD is asked once, not at every mkdir.
    let (store, fs, _d) = setup();
    crate::sync::lock(&store.unimplemented).push("chmod");
    for d in ["a", "b", "c"] {
        fs.mkdir(ROOT_INO, d, 0o700).expect("mkdir");
    }
    assert_eq!(store.chmods_tried.load(Ordering::SeqCst), 1);
}

// ---- rmdir -----------------------------------------------------------------------------

#[test]
fn rmdir_of_an_unreadable_empty_directory_succeeds() {
    let (store, fs, _d) = setup();
    for d in ["/locked", "/full", "/kept"] {
        store.inner.put_dir(d);
    }
    store.inner.put("/full/f", b"x");
    for d in ["locked", "full", "kept"] {
        fs.lookup(ROOT_INO, d).expect("lookup");
    }
    refuse(&store, &["list"]);
    fs.rmdir(ROOT_INO, "locked")
        .expect("RMD without listing first");
    assert!(!store.inner.is_dir("/locked"));
    // The server's own word for a directory that is not empty.
    assert_eq!(fs.rmdir(ROOT_INO, "full"), Err(Errno(libc::ENOTEMPTY)));
    assert!(store.inner.is_dir("/full"));
    // RMD refused ("Permission denied") and the listing too: the refusal.
    refuse(&store, &["rmdir"]);
    assert_eq!(fs.rmdir(ROOT_INO, "kept"), Err(Errno(libc::EACCES)));
    // ...and where the listing shows entries, the directory is not empty.
    crate::sync::lock(&store.refuse).retain(|o| *o != "list");
    assert_eq!(fs.rmdir(ROOT_INO, "full"), Err(Errno(libc::ENOTEMPTY)));
    assert_eq!(fs.rmdir(ROOT_INO, "kept"), Err(Errno(libc::EACCES)));
}

#[test]
fn rmdir_keeps_a_directory_holding_a_file_not_uploaded_yet() {
    let (store, fs, _d) = setup();
    let d = fs.mkdir(ROOT_INO, "d", 0o755).expect("mkdir");
    let (_, fh) = fs
        .create(d.ino, "being-written", 0o644, O_WRONLY)
        .expect("create");
    fs.write(fh, 0, b"data").expect("write");
    assert_eq!(fs.rmdir(ROOT_INO, "d"), Err(Errno(libc::ENOTEMPTY)));
    assert!(store.inner.is_dir("/d"));
    fs.release(fh).expect("release");
    assert_eq!(store.inner.get("/d/being-written"), Some(b"data".to_vec()));
}

#[test]
fn chmod_of_a_directory_is_shown() {
    let (_store, fs, _d) = setup();
    let d = fs.mkdir(ROOT_INO, "d", 0o755).expect("mkdir");
    let a = fs
        .setattr(d.ino, Some(0o777), None, None, None, None, None)
        .expect("chmod");
    assert_eq!(
        a.perm,
        0o777 & !0o022,
        "umask= of the mount (022 here) applies"
    );
    assert_eq!(fs.getattr(d.ino).expect("getattr").perm, 0o755);
    let (_store, fs, _d) = setup_with(|c| c.umask = 0);
    let d = fs.mkdir(ROOT_INO, "d", 0o755).expect("mkdir");
    fs.setattr(d.ino, Some(0o777), None, None, None, None, None)
        .expect("chmod");
    assert_eq!(fs.getattr(d.ino).expect("getattr").perm, 0o777);
}
