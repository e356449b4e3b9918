//! End-to-end: POSIX where FTP allows it, on real servers through a real mount.
//! A directory time the server cannot set is skipped unless `strict_dir_times`
//! (`rsync -a` and `tar x` on vsftpd and pyftpdlib: tests/mount_e2e.rs); mkdir modes, link counts and times after the mount's own
//! changes are what a local file system would show; an empty directory the
//! account cannot read can still be removed. See SEMANTICS.md ("Attributes").
//!
//! Needs root, /dev/fuse and fusermount3 (rsync and tar for those tests).

mod support;

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use support::mount::{Env, Mount, CACHE_TIMEOUT};
use support::{Server, ServerSpec};

fn with_mount(spec: ServerSpec, f: impl FnOnce(&Server, &Mount)) {
    let srv = support::start(spec);
    let m = Mount::new(&srv);
    f(&srv, &m);
    drop(m);
    drop(srv);
}

// ---- directory times on servers that cannot set them ----------------------------------
// (`rsync -a` twice and `tar x` exiting 0 on vsftpd and pyftpdlib: tests/mount_e2e.rs)

/// With `strict_dir_times` a directory time the server cannot set is EPERM.
#[test]
fn strict_dir_times_gives_eperm_vsftpd() {
    let srv = support::start(ServerSpec::vsftpd());
    let m = Mount::with(&srv, "strict_dir_times");
    let e = Env::new(&srv, &m);
    e.ok(r#"mkdir "$MNT/d""#);
    let out = e.sh(r#"touch -d '2001-02-03 04:05:06' "$MNT/d""#);
    assert!(!out.status.success(), "strict: the refusal reaches touch");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Operation not permitted"), "{err}");
    // Without the option the same touch succeeds (and changes nothing).
    drop(m);
    let m = Mount::new(&srv);
    let e = Env::new(&srv, &m);
    e.ok(r#"touch -d '2001-02-03 04:05:06' "$MNT/d""#);
    // File times stay exact.
    e.ok(r#"echo x > "$MNT/d/f" && touch -d '2001-02-03 04:05:06' "$MNT/d/f""#);
    assert_eq!(
        fs::metadata(srv.root.join("d/f")).expect("stat").mtime(),
        981173106
    );
}

// ---- modes, links, times after the mount's own changes --------------------------------

fn modes_links_and_times(spec: ServerSpec) {
    with_mount(spec, |srv, m| {
        // mkdir(2) with a mode, as tempfile.mkdtemp and `install -d -m 700` do.
        let private = m.path("private");
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&private)
            .expect("mkdir 0700");
        let on_server = fs::metadata(srv.root.join("private")).expect("stat");
        assert_eq!(
            on_server.permissions().mode() & 0o7777,
            0o700,
            "server mode"
        );
        assert_eq!(
            fs::metadata(&private).expect("stat").permissions().mode() & 0o777,
            0o700
        );
        // Link counts: 2 + subdirectories.
        for d in ["private/a", "private/b"] {
            fs::create_dir(m.path(d)).expect("mkdir");
        }
        fs::write(m.path("private/f"), b"x").expect("write");
        assert_eq!(fs::metadata(&private).expect("stat").nlink(), 4);
        assert_eq!(fs::metadata(m.path("private/f")).expect("stat").nlink(), 1);
        // A directory's mtime moves with a create inside it, at once.
        let before = fs::metadata(&private).expect("stat").mtime();
        std::thread::sleep(Duration::from_millis(1100));
        fs::write(m.path("private/g"), b"y").expect("write");
        let after = fs::metadata(&private).expect("stat").mtime();
        assert!(
            after > before,
            "dir mtime after a create: {before} -> {after}"
        );
        // A file's mtime moves with a write, before it is closed.
        let f = m.path("private/f");
        let t0 = fs::metadata(&f).expect("stat").mtime();
        std::thread::sleep(Duration::from_millis(1100));
        let mut h = fs::OpenOptions::new().append(true).open(&f).expect("open");
        std::io::Write::write_all(&mut h, b"more").expect("append");
        let t1 = fs::metadata(&f).expect("stat").mtime();
        assert!(t1 > t0, "file mtime after a write: {t0} -> {t1}");
        drop(h);
        assert_eq!(fs::read(&f).expect("read"), b"xmore");
        // The mount root has a real time, not 1970.
        assert!(fs::metadata(&m.mnt).expect("stat root").mtime() > 1_600_000_000);
    });
}

#[test]
fn mkdir_mode_links_and_times_proftpd() {
    modes_links_and_times(ServerSpec::proftpd());
}

#[test]
fn mkdir_mode_links_and_times_vsftpd() {
    modes_links_and_times(ServerSpec::vsftpd());
}

/// An empty directory the account may not read is removed (RMD first); one
/// with content gives ENOTEMPTY.
#[test]
fn rmdir_of_an_unreadable_empty_directory_proftpd() {
    with_mount(ServerSpec::proftpd(), |srv, m| {
        let e = Env::new(srv, m);
        e.ok(r#"mkdir "$MNT/locked" "$MNT/full" && echo x > "$MNT/full/f""#);
        e.ok(r#"chmod 0300 "$MNT/locked""#);
        assert_eq!(
            fs::metadata(srv.root.join("locked"))
                .expect("stat")
                .permissions()
                .mode()
                & 0o777,
            0o300
        );
        e.ok(r#"rmdir "$MNT/locked""#);
        assert!(!srv.root.join("locked").exists());
        let out = e.sh(r#"rmdir "$MNT/full""#);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Directory not empty"), "{err}");
    });
}

/// On a LIST-only server (vsftpd: minutes for directories), a time the mount knew
/// more finely does not move backwards when the listing is fetched again.
#[test]
fn times_do_not_move_backwards_after_a_coarse_listing_vsftpd() {
    with_mount(ServerSpec::vsftpd(), |srv, m| {
        let e = Env::new(srv, m);
        e.ok(r#"mkdir -p "$MNT/d/sub" && echo x > "$MNT/d/sub/f""#);
        let ns = |p: &Path| {
            let md = fs::metadata(p).expect("stat");
            (md.mtime(), md.mtime_nsec())
        };
        let (d0, f0) = (ns(&m.path("d/sub")), ns(&m.path("d/sub/f")));
        std::thread::sleep(Duration::from_secs(CACHE_TIMEOUT + 1));
        let (d1, f1) = (ns(&m.path("d/sub")), ns(&m.path("d/sub/f")));
        assert!(d1 >= d0, "directory time went back: {d0:?} -> {d1:?}");
        assert!(f1 >= f0, "file time went back: {f0:?} -> {f1:?}");
        // tar reads the tree twice over an expiring cache without complaint.
        e.ok(r#"tar cf "$W/a.tar" -C "$MNT" d && sleep 3 && tar cf "$W/b.tar" -C "$MNT" d"#);
    });
}

/// chmod of a directory shows at once and after the cache expires (the server's
/// listing), for the program and for the kernel's permission checks.
#[test]
fn chmod_of_a_directory_shows_proftpd() {
    with_mount(ServerSpec::proftpd(), |srv, m| {
        let e = Env::new(srv, m);
        e.ok(r#"mkdir "$MNT/d" && chmod 777 "$MNT/d""#);
        let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&srv.root.join("d")), 0o777, "on the server");
        assert_eq!(mode(&m.path("d")), 0o777, "through the mount at once");
        std::thread::sleep(Duration::from_secs(CACHE_TIMEOUT + 1));
        assert_eq!(
            mode(&m.path("d")),
            0o777,
            "through the mount from the listing"
        );
        e.ok(r#"chmod 701 "$MNT/d""#);
        assert_eq!(mode(&m.path("d")), 0o701);
    });
}
