//! End-to-end tests of the `ftpsfs` mount: the real binary mounts real proftpd,
//! vsftpd, pyftpdlib and pure-ftpd servers (tests/support) with FUSE, and ordinary
//! shell tools (cp, rsync, tar, find, mv, rm, dd, truncate, touch, cat, sha256sum)
//! work on the mount. Results are compared with the server's own directory on disk.
//! Every client mode (explicit, implicit, PROT C, CCC) is mounted on each server that
//! offers it; a server that answers pipelined commands out of order and paths longer
//! than a command line are covered too.
//!
//! Needs root, /dev/fuse and fusermount3 (and rsync, else that test is skipped).

mod support;

use std::fs;
use std::io::Write;
use std::os::fd::IntoRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::mount::{
    alive, is_mounted, pattern, pids_matching, scratch, Env, HeldWriter, Mount, CACHE_TIMEOUT,
};
use support::{Server, ServerSpec};

/// A small tree: nested dirs, names with spaces, an empty file, a 1 MiB file.
fn make_tree(dir: &Path) {
    fs::create_dir_all(dir.join("a/b c/deep er")).unwrap();
    fs::create_dir_all(dir.join("empty dir")).unwrap();
    fs::write(dir.join("top.txt"), b"top level\n").unwrap();
    fs::write(dir.join("a/with space.txt"), b"hello with spaces\n").unwrap();
    fs::write(dir.join("a/empty"), b"").unwrap();
    fs::write(dir.join("a/b c/x.txt"), pattern(3000, 1)).unwrap();
    fs::write(dir.join("a/b c/deep er/one mib.bin"), pattern(1 << 20, 2)).unwrap();
}

/// Starts the server and mounts it; runs `f`.
fn with_mount(spec: ServerSpec, f: impl FnOnce(&Server, &Mount)) {
    let srv = support::start(spec);
    let m = Mount::new(&srv);
    f(&srv, &m);
    drop(m);
    drop(srv);
}

fn mtime_of(p: &Path) -> i64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .mtime()
}

/// Every regular file under `src` has the same whole-second mtime under `dst`.
fn assert_same_file_mtimes(src: &Path, dst: &Path, what: &str) {
    let out = Command::new("find")
        .arg(".")
        .arg("-type")
        .arg("f")
        .current_dir(src)
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!list.is_empty());
    for rel in list.lines() {
        let (a, b) = (mtime_of(&src.join(rel)), mtime_of(&dst.join(rel)));
        assert_eq!(a, b, "{what}: mtime of {rel}: source {a}, copy {b}");
    }
}

// ---------------------------------------------------------------------------
// cp -r

fn cp_tree(spec: ServerSpec) {
    with_mount(spec, |srv, m| {
        let e = Env::new(srv, m);
        make_tree(&e.w().join("src"));
        e.ok(r#"cp -r "$W/src" "$MNT/tree""#);
        e.ok(r#"diff -r "$W/src" "$ROOT/tree""#);
        e.ok(r#"diff -r "$W/src" "$MNT/tree""#);
        e.ok(r#"cp -r "$MNT/tree" "$W/out" && diff -r "$W/src" "$W/out""#);
        // No temporary upload names left behind.
        let leftovers = e.ok(r#"find "$ROOT" -name '*.part'"#);
        assert_eq!(leftovers, "", "temporary upload files left on the server");
    });
}

#[test]
fn cp_r_tree_in_and_out_proftpd() {
    cp_tree(ServerSpec::proftpd());
}

#[test]
fn cp_r_tree_in_and_out_vsftpd() {
    cp_tree(ServerSpec::vsftpd());
}

// ---------------------------------------------------------------------------
// rsync

fn rsync_twice(spec: ServerSpec, flags: &str) {
    if Command::new("rsync").arg("--version").output().is_err() {
        println!("SKIPPED: rsync is not installed");
        return;
    }
    with_mount(spec, |srv, m| {
        let e = Env::new(srv, m);
        let src = e.w().join("src");
        make_tree(&src);
        // Whole-second mtimes in the past: what any FTP server can store exactly.
        e.ok(r#"find "$W/src" -exec touch -h -d '2023-05-06 07:08:09' {} +"#);
        e.ok(&format!(r#"rsync -a {flags} "$W/src/" "$MNT/rs/""#));
        e.ok(r#"diff -r "$W/src" "$ROOT/rs""#);
        assert_same_file_mtimes(&src, &srv.root.join("rs"), "server after rsync");
        // Let the listing cache expire so the second run sees the server's own view.
        std::thread::sleep(Duration::from_secs(CACHE_TIMEOUT + 1));
        let out = e.ok(&format!(
            r#"rsync -a {flags} --itemize-changes --stats "$W/src/" "$MNT/rs/""#
        ));
        assert!(
            out.contains("Number of regular files transferred: 0"),
            "[{}] second rsync transferred files:\n{out}",
            srv.spec.kind.name()
        );
        assert!(
            !out.lines().any(|l| l.starts_with(">f")),
            "second rsync itemized file transfers:\n{out}"
        );
        assert_same_file_mtimes(&src, &srv.root.join("rs"), "server after 2nd rsync");
    });
}

#[test]
fn rsync_twice_second_run_transfers_nothing_proftpd() {
    rsync_twice(ServerSpec::proftpd(), "");
}

/// With directory times, which vsftpd cannot set: skipped, so rsync exits 0
/// (it used to exit 23 on every run).
#[test]
fn rsync_twice_second_run_transfers_nothing_vsftpd() {
    rsync_twice(ServerSpec::vsftpd(), "");
}

// ---------------------------------------------------------------------------
// tar

/// `xflags`: extra `tar xf` flags; `-m` (don't restore mtimes) skips the mtime check.
fn tar_round_trip(spec: ServerSpec, xflags: &str) {
    with_mount(spec, |srv, m| {
        let e = Env::new(srv, m);
        let src = e.w().join("src");
        make_tree(&src);
        e.ok(r#"find "$W/src" -exec touch -h -d '2022-01-02 03:04:05' {} +"#);
        e.ok(r#"tar cf "$W/a.tar" -C "$W/src" ."#);
        e.ok(&format!(
            r#"mkdir "$MNT/t" && tar xf "$W/a.tar" {xflags} -C "$MNT/t""#
        ));
        e.ok(r#"diff -r "$W/src" "$ROOT/t""#);
        if !xflags.contains("-m") {
            assert_same_file_mtimes(&src, &srv.root.join("t"), "server after tar xf");
        }
        e.ok(r#"tar cf "$W/b.tar" -C "$MNT/t" ."#);
        let a = e.ok(r#"tar tf "$W/a.tar" | sort"#);
        let b = e.ok(r#"tar tf "$W/b.tar" | sort"#);
        assert_eq!(a, b, "tar listings differ");
        e.ok(r#"mkdir "$W/c" && tar xf "$W/b.tar" -C "$W/c" && diff -r "$W/src" "$W/c""#);
    });
}

#[test]
fn tar_into_and_out_of_mount_proftpd() {
    tar_round_trip(ServerSpec::proftpd(), "");
}

/// Restoring times: vsftpd cannot set directory times (skipped, tar exits 0;
/// it used to exit 2); file times are exact.
#[test]
fn tar_into_and_out_of_mount_vsftpd() {
    tar_round_trip(ServerSpec::vsftpd(), "");
}

// ---------------------------------------------------------------------------
// find

fn find_same(spec: ServerSpec) {
    with_mount(spec, |srv, m| {
        let e = Env::new(srv, m);
        // Made on the server's disk directly, then listed through the mount.
        make_tree(&srv.root.join("f"));
        let on_mount = e.ok(r#"cd "$MNT/f" && find . -printf '%y %p %s\n' | grep -v '^d' | sort; cd "$MNT/f" && find . -type d | sort"#);
        let on_root = e.ok(r#"cd "$ROOT/f" && find . -printf '%y %p %s\n' | grep -v '^d' | sort; cd "$ROOT/f" && find . -type d | sort"#);
        assert_eq!(on_mount, on_root);
        assert!(on_mount.contains("./a/b c/deep er/one mib.bin 1048576"));
    });
}

#[test]
fn find_lists_same_paths_proftpd() {
    find_same(ServerSpec::proftpd());
}

#[test]
fn find_lists_same_paths_vsftpd() {
    find_same(ServerSpec::vsftpd());
}

// ---------------------------------------------------------------------------
// A directory of 3,000 entries: read while its listing streams in (MLSD on
// proftpd) or once complete (LIST on vsftpd), in many readdir calls.

fn many_entries(spec: ServerSpec) {
    with_mount(spec, |srv, m| {
        let e = Env::new(srv, m);
        let dir = srv.root.join("many");
        fs::create_dir(&dir).unwrap();
        for i in 0..3000 {
            fs::write(dir.join(format!("entry {i:04}.dat")), vec![b'x'; i % 7]).unwrap();
        }
        let names = r#"ls -f "$D/many" | grep -v '^\.\.\?$' | sort"#;
        let sizes = r#"ls -l "$D/many" | tail -n +2 | awk '{print $5, $NF}' | sort"#;
        let on_mount = e.ok(&format!("D=\"$MNT\"; {names}; {sizes}"));
        let on_root = e.ok(&format!("D=\"$ROOT\"; {names}; {sizes}"));
        assert_eq!(on_mount.lines().count(), 6000);
        assert_eq!(on_mount, on_root);
    });
}

#[test]
fn many_entries_listed_whole_proftpd() {
    many_entries(ServerSpec::proftpd());
}

#[test]
fn many_entries_listed_whole_vsftpd() {
    many_entries(ServerSpec::vsftpd());
}

// ---------------------------------------------------------------------------
// mv, rm -r, mkdir -p

fn mv_rm_mkdir(spec: ServerSpec) {
    with_mount(spec, |srv, m| {
        let e = Env::new(srv, m);
        make_tree(&e.w().join("src"));
        e.ok(r#"cp -r "$W/src" "$MNT/d""#);
        e.ok(r#"mv "$MNT/d/top.txt" "$MNT/d/moved top.txt""#);
        e.ok(r#"mv "$MNT/d/a" "$MNT/d/a moved""#);
        let root = e.root().join("d");
        assert!(!root.join("top.txt").exists());
        assert_eq!(
            fs::read(root.join("moved top.txt")).unwrap(),
            b"top level\n"
        );
        assert!(!root.join("a").exists());
        e.ok(r#"diff -r "$W/src/a" "$ROOT/d/a moved""#);
        e.ok(r#"diff -r "$W/src/a" "$MNT/d/a moved""#);
        // Into another directory.
        e.ok(r#"mv "$MNT/d/moved top.txt" "$MNT/d/empty dir/""#);
        assert_eq!(
            fs::read(root.join("empty dir/moved top.txt")).unwrap(),
            b"top level\n"
        );
        e.ok(r#"rm -r "$MNT/d/a moved""#);
        assert!(!root.join("a moved").exists());
        e.ok(r#"test ! -e "$MNT/d/a moved""#);
        e.ok(r#"mkdir -p "$MNT/x/y/z" && test -d "$MNT/x/y/z""#);
        assert!(e.root().join("x/y/z").is_dir());
        e.ok(r#"rm -r "$MNT/d" "$MNT/x""#);
        assert_eq!(
            fs::read_dir(e.root()).unwrap().count(),
            0,
            "server root not empty"
        );
    });
}

#[test]
fn mv_rm_r_mkdir_p_proftpd() {
    mv_rm_mkdir(ServerSpec::proftpd());
}

#[test]
fn mv_rm_r_mkdir_p_vsftpd() {
    mv_rm_mkdir(ServerSpec::vsftpd());
}

// ---------------------------------------------------------------------------
// append, write in the middle, truncate, touch

/// One check on a mounted server.
type Check = fn(&Env, &Mount);

/// The small-write checks, each on its own files of one mount. Every check runs
/// even when an earlier one fails, and the failure names each check that failed.
fn small_writes(spec: ServerSpec) {
    with_mount(spec, |srv, m| {
        let e = Env::new(srv, m);
        let checks: [(&str, Check); 6] = [
            ("append with >>", append_twice),
            ("dd conv=notrunc in the middle", dd_in_the_middle),
            ("truncate shrink and grow", truncate_shrink_grow),
            ("truncate right after close", truncate_right_after_close),
            ("reader sees a write-only handle", reader_sees_writer),
            ("touch -d", touch_sets_the_time),
        ];
        let failed: Vec<&str> = checks
            .iter()
            .filter(|(name, check)| {
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&e, m)));
                if run.is_err() {
                    eprintln!(
                        "small writes on {}: check {name:?} FAILED",
                        srv.spec.kind.name()
                    );
                }
                run.is_err()
            })
            .map(|(name, _)| *name)
            .collect();
        assert!(failed.is_empty(), "failed checks: {failed:?}");
    });
}

fn append_twice(e: &Env, m: &Mount) {
    e.ok(r#"echo one >> "$MNT/log.txt" && echo two >> "$MNT/log.txt""#);
    assert_eq!(
        fs::read_to_string(e.root().join("log.txt")).unwrap(),
        "one\ntwo\n"
    );
    assert_eq!(fs::read_to_string(m.path("log.txt")).unwrap(), "one\ntwo\n");
}

/// dd conv=notrunc in the middle of a 100 KiB file: only those bytes change.
fn dd_in_the_middle(e: &Env, m: &Mount) {
    let mut expected = pattern(100_000, 7);
    fs::write(e.w().join("mid"), &expected).unwrap();
    e.ok(r#"cp "$W/mid" "$MNT/mid""#);
    e.ok(r#"printf XXXXXXXX | dd of="$MNT/mid" bs=1 seek=50000 conv=notrunc status=none"#);
    expected[50_000..50_008].copy_from_slice(b"XXXXXXXX");
    assert!(
        fs::read(e.root().join("mid")).unwrap() == expected,
        "dd result on server"
    );
    assert!(
        fs::read(m.path("mid")).unwrap() == expected,
        "dd result on mount"
    );
}

/// truncate: shrink, then grow (zero-filled).
fn truncate_shrink_grow(e: &Env, _m: &Mount) {
    let mut expected = pattern(100_000, 8);
    fs::write(e.w().join("cut"), &expected).unwrap();
    e.ok(r#"cp "$W/cut" "$MNT/cut""#);
    e.ok(r#"truncate -s 1000 "$MNT/cut""#);
    expected.truncate(1000);
    assert!(
        fs::read(e.root().join("cut")).unwrap() == expected,
        "shrunk on server"
    );
    e.ok(r#"truncate -s 5000 "$MNT/cut""#);
    expected.resize(5000, 0);
    assert!(
        fs::read(e.root().join("cut")).unwrap() == expected,
        "grown on server"
    );
    assert_eq!(e.ok(r#"stat -c %s "$MNT/cut""#).trim(), "5000");
}

/// truncate(2) of a file just written and closed, while the kernel's release of
/// the writer may still be on its way (pjdfstest's `shrink_not_empty`), three
/// at once: every truncate that returns 0 is what the server holds.
fn truncate_right_after_close(e: &Env, m: &Mount) {
    let truncate = |p: &Path, len: i64| {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a NUL-terminated path that outlives the call.
        let rc = unsafe { libc::truncate(c.as_ptr(), len) };
        assert_eq!(
            rc,
            0,
            "truncate {}: {}",
            p.display(),
            std::io::Error::last_os_error()
        );
    };
    std::thread::scope(|s| {
        for t in 0..3u64 {
            s.spawn(move || {
                for round in 0..25 {
                    let name = format!("tr{t}-{round}");
                    let data = pattern(12_345, t ^ round);
                    fs::write(m.path(&name), &data).expect("write");
                    truncate(&m.path(&name), 23_456);
                    assert_eq!(fs::metadata(m.path(&name)).expect("stat").len(), 23_456);
                    truncate(&m.path(&name), 1);
                    assert_eq!(fs::metadata(m.path(&name)).expect("stat").len(), 1);
                    let on_server = fs::read(e.root().join(&name)).expect("server file");
                    assert_eq!(on_server.len(), 1, "{name} on the server");
                    assert_eq!(on_server[0], data[0], "{name} on the server");
                }
            });
        }
    });
}

/// A write-only handle (page cache bypassed) and a reader that cached the file
/// before: the reader sees the new bytes, in the middle and past the old end, on
/// its open handle.
fn reader_sees_writer(e: &Env, m: &Mount) {
    use std::os::unix::fs::FileExt;
    fs::write(m.path("coherent"), vec![b'A'; 5000]).unwrap();
    let reader = fs::File::open(m.path("coherent")).unwrap();
    let mut buf = vec![0u8; 10_000];
    assert_eq!(reader.read_at(&mut buf, 0).unwrap(), 5000);
    let writer = fs::OpenOptions::new()
        .write(true)
        .open(m.path("coherent"))
        .unwrap();
    writer.write_all_at(&[b'B'; 100], 5000).unwrap();
    writer.write_all_at(&[b'C'; 10], 100).unwrap();
    drop(writer);
    let mut want = vec![b'A'; 5100];
    want[100..110].fill(b'C');
    want[5000..].fill(b'B');
    let mut got = Vec::new();
    let mut off = 0;
    loop {
        let n = reader.read_at(&mut buf, off).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        off += n as u64;
    }
    assert!(got == want, "reader sees the write-only handle's bytes");
    assert!(
        fs::read(e.root().join("coherent")).unwrap() == want,
        "on server"
    );
}

/// touch -d: both views show the time, and the content is untouched.
fn touch_sets_the_time(e: &Env, _m: &Mount) {
    e.ok(r#"echo kept > "$MNT/touched.txt""#);
    e.ok(r#"touch -d "2001-02-03 04:05:06" "$MNT/touched.txt""#);
    let want = "981173106";
    assert_eq!(
        e.ok(r#"stat -c %Y "$MNT/touched.txt""#).trim(),
        want,
        "on mount"
    );
    assert_eq!(
        e.ok(r#"stat -c %Y "$ROOT/touched.txt""#).trim(),
        want,
        "on server"
    );
    assert_eq!(
        fs::read_to_string(e.root().join("touched.txt")).unwrap(),
        "kept\n"
    );
}

#[test]
fn append_dd_truncate_touch_proftpd() {
    small_writes(ServerSpec::proftpd());
}

#[test]
fn append_dd_truncate_touch_vsftpd() {
    small_writes(ServerSpec::vsftpd());
}

// ---------------------------------------------------------------------------
// 200 MiB round trip (proftpd only)

#[test]
fn big_file_round_trip_sha256_proftpd() {
    let srv = support::start(ServerSpec::proftpd());
    let w = scratch("big-");
    let local = w.path().join("big.bin");
    let st = Command::new("dd")
        .arg("if=/dev/urandom")
        .arg(format!("of={}", local.display()))
        .args(["bs=1M", "count=200", "status=none"])
        .status()
        .unwrap();
    assert!(st.success());
    let sha = |p: &Path| -> String {
        let out = Command::new("sha256sum").arg(p).output().unwrap();
        assert!(out.status.success(), "sha256sum {}", p.display());
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    let want = sha(&local);
    let t0 = Instant::now();
    {
        let m = Mount::new(&srv);
        let st = Command::new("cp")
            .arg(&local)
            .arg(m.path("big.bin"))
            .status()
            .unwrap();
        assert!(st.success(), "cp into the mount");
    }
    fs::remove_file(&local).unwrap();
    println!("200 MiB upload: {:?}", t0.elapsed());
    assert_eq!(sha(&srv.root.join("big.bin")), want, "server copy");
    // A fresh mount, so the read back cannot come from the page cache.
    let t0 = Instant::now();
    let m = Mount::new(&srv);
    assert_eq!(sha(&m.path("big.bin")), want, "read back through the mount");
    println!("200 MiB download: {:?}", t0.elapsed());
}

// ---------------------------------------------------------------------------
// Two readers at once

fn parallel_readers(spec: ServerSpec) {
    let srv = support::start(spec);
    let a = pattern(20 << 20, 11);
    let b = pattern(20 << 20, 12);
    fs::write(srv.root.join("r1.bin"), &a).unwrap();
    fs::write(srv.root.join("r2.bin"), &b).unwrap();
    let m = Mount::new(&srv);
    let w = scratch("par-");
    let cat = |name: &str, out: &str| {
        Command::new("cat")
            .arg(m.path(name))
            .stdout(fs::File::create(w.path().join(out)).unwrap())
            .spawn()
            .unwrap()
    };
    let (mut c1, mut c2) = (cat("r1.bin", "o1"), cat("r2.bin", "o2"));
    assert!(c1.wait().unwrap().success(), "cat r1");
    assert!(c2.wait().unwrap().success(), "cat r2");
    assert!(fs::read(w.path().join("o1")).unwrap() == a, "r1 content");
    assert!(fs::read(w.path().join("o2")).unwrap() == b, "r2 content");
    drop(m);
}

#[test]
fn two_parallel_readers_proftpd() {
    parallel_readers(ServerSpec::proftpd());
}

#[test]
fn two_parallel_readers_vsftpd() {
    parallel_readers(ServerSpec::vsftpd());
}

// ---------------------------------------------------------------------------
// Random reads: every seek stops a download (ABOR) and starts another

/// Reads at scattered offsets through one open file, each checked against the
/// file's bytes and each prompt: a seek ends the download in flight with ABOR, and
/// the connection must come back to the pool at once. (pure-ftpd dropped a NOOP sent
/// with the ABOR, and each seek then held a connection until `timeout=`.)
fn random_reads(spec: ServerSpec) {
    use std::os::unix::fs::FileExt;
    let srv = support::start(spec);
    let data = pattern(24 << 20, 21);
    fs::write(srv.root.join("r.bin"), &data).unwrap();
    let m = Mount::with(&srv, "timeout=5");
    let f = fs::File::open(m.path("r.bin")).unwrap();
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut slowest = Duration::ZERO;
    for i in 0..40 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = [4096usize, 65536, 200_000][i % 3];
        let off = (x % (data.len() - len) as u64) as usize;
        let mut buf = vec![0u8; len];
        let t = Instant::now();
        f.read_exact_at(&mut buf, off as u64)
            .unwrap_or_else(|e| panic!("read {i} of {len} at {off}: {e}"));
        slowest = slowest.max(t.elapsed());
        assert!(
            buf == data[off..off + len],
            "read {i}: wrong bytes at {off}"
        );
    }
    println!(
        "FIGURE random_reads[{}]: slowest of 40: {slowest:?}",
        srv.spec.kind.name()
    );
    // A read waits for no stuck connection: far below timeout=.
    assert!(slowest < Duration::from_secs(3), "a read took {slowest:?}");
}

#[test]
fn random_reads_proftpd() {
    random_reads(ServerSpec::proftpd());
}

#[test]
fn random_reads_vsftpd() {
    random_reads(ServerSpec::vsftpd());
}

#[test]
fn random_reads_pure_ftpd() {
    random_reads(ServerSpec::pure_ftpd());
}

#[test]
fn random_reads_pyftpdlib() {
    random_reads(ServerSpec::pyftpdlib());
}

// ---------------------------------------------------------------------------
// A failed upload reports an error and keeps the data

fn failed_upload(spec: ServerSpec) {
    let srv = support::start(spec);
    let ro = srv.root.join("ro");
    fs::create_dir(&ro).unwrap();
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap(); // owned by root
    let mut m = Mount::new(&srv);
    let data = pattern(200_000, 33);
    let mut f = fs::File::create(m.path("ro/f.bin")).expect("create is lazy: no error yet");
    f.write_all(&data).expect("writes go to the spool");
    let e = f
        .sync_all()
        .expect_err("fsync must report the failed upload");
    println!("fsync error: {e}");
    let fd = f.into_raw_fd();
    // SAFETY: fd is owned and closed exactly once.
    let r = unsafe { libc::close(fd) };
    let close_err = std::io::Error::last_os_error();
    assert_eq!(r, -1, "close must report the failed upload");
    println!("close error: {close_err}");
    assert!(!ro.join("f.bin").exists());
    // The spool copy must survive the last close and the unmount.
    m.unmount();
    let kept: Vec<PathBuf> = fs::read_dir(&m.spool)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| fs::read(p).is_ok_and(|d| d == data))
        .collect();
    assert!(
        !kept.is_empty(),
        "no spool file with the written data in {}: {:?}",
        m.spool.display(),
        fs::read_dir(&m.spool)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect::<Vec<_>>()
    );
}

#[test]
fn failed_upload_errors_and_keeps_spool_proftpd() {
    failed_upload(ServerSpec::proftpd());
}

#[test]
fn failed_upload_errors_and_keeps_spool_vsftpd() {
    failed_upload(ServerSpec::vsftpd());
}

// ---------------------------------------------------------------------------
// rmdir of a non-empty directory

fn rmdir_not_empty(spec: ServerSpec) {
    with_mount(spec, |srv, m| {
        // Made on the server, not through the mount (before the mount lists "/").
        fs::create_dir_all(srv.root.join("outside/sub")).unwrap();
        fs::create_dir(m.path("full")).unwrap();
        fs::write(m.path("full/f"), b"x").unwrap();
        let e = fs::remove_dir(m.path("full")).expect_err("rmdir of a non-empty dir");
        assert_eq!(e.raw_os_error(), Some(libc::ENOTEMPTY), "{e}");
        assert!(srv.root.join("full/f").exists());
        let e = fs::remove_dir(m.path("outside")).expect_err("rmdir of a non-empty dir");
        assert_eq!(e.raw_os_error(), Some(libc::ENOTEMPTY), "{e}");
        fs::remove_file(m.path("full/f")).unwrap();
        fs::remove_dir(m.path("full")).unwrap();
        assert!(!srv.root.join("full").exists());
    });
}

#[test]
fn rmdir_non_empty_is_enotempty_proftpd() {
    rmdir_not_empty(ServerSpec::proftpd());
}

#[test]
fn rmdir_non_empty_is_enotempty_vsftpd() {
    rmdir_not_empty(ServerSpec::vsftpd());
}

// ---------------------------------------------------------------------------
// Changes made on the server show up after cache_timeout

fn external_change(spec: ServerSpec) {
    with_mount(spec, |srv, m| {
        fs::create_dir(m.path("dir")).unwrap();
        assert_eq!(fs::read_dir(m.path("dir")).unwrap().count(), 0);
        fs::write(srv.root.join("dir/new.txt"), b"from outside\n").unwrap();
        let t0 = Instant::now();
        let limit = Duration::from_secs(CACHE_TIMEOUT + 3);
        loop {
            let names: Vec<String> = fs::read_dir(m.path("dir"))
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            if names.iter().any(|n| n == "new.txt") {
                break;
            }
            assert!(
                t0.elapsed() < limit,
                "new.txt not visible in the mount after {limit:?}: {names:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        println!("visible after {:?}", t0.elapsed());
        assert_eq!(
            fs::read_to_string(m.path("dir/new.txt")).unwrap(),
            "from outside\n"
        );
    });
}

#[test]
fn server_side_file_appears_after_cache_timeout_proftpd() {
    external_change(ServerSpec::proftpd());
}

#[test]
fn server_side_file_appears_after_cache_timeout_vsftpd() {
    external_change(ServerSpec::vsftpd());
}

// ---------------------------------------------------------------------------
// Mount failures

#[test]
fn mount_failures_exit_non_zero_and_leave_nothing() {
    let srv = support::start(ServerSpec::proftpd());
    let f = match Mount::try_mount(&srv, "", "wrong-password", None) {
        Ok(_) => panic!("mount with a wrong password succeeded"),
        Err(f) => f,
    };
    assert_ne!(f.code, Some(0));
    assert!(
        f.stderr.to_lowercase().contains("login"),
        "message does not mention login: {}",
        f.stderr
    );
    let dir = scratch("missing-");
    let missing = dir.path().join("no such dir");
    let f = match Mount::try_mount(&srv, "", support::TEST_PASSWORD, Some(&missing)) {
        Ok(_) => panic!("mount on a missing mountpoint succeeded"),
        Err(f) => f,
    };
    assert_ne!(f.code, Some(0));
    assert!(f.stderr.contains("mountpoint"), "{}", f.stderr);
    assert!(!missing.exists());
    // No daemon left for either attempt.
    std::thread::sleep(Duration::from_millis(300));
    assert!(pids_matching(&dir.path().to_string_lossy()).is_empty());
    assert!(!is_mounted(&missing));
}

// ---------------------------------------------------------------------------
// SIGTERM

/// SIGTERM while a program holds a written, not yet closed file: the daemon does not
/// upload it (its writer has not finished: the server keeps the old content), detaches
/// the mount, serves the open file until it is closed, uploads it at that close, then
/// exits. The data is written out of order, so it is only in the spool (no streamed
/// upload under way).
fn sigterm(spec: ServerSpec) {
    let srv = support::start(spec);
    let data = pattern(30 << 20, 44);
    let old = pattern(1 << 20, 45);
    fs::write(srv.root.join("up.bin"), &old).unwrap();
    let mut m = Mount::new(&srv);
    assert!(!m.daemon.is_empty(), "daemon pid not found");
    let local = scratch("sigterm-");
    fs::write(local.path().join("data"), &data).unwrap();
    let writer = HeldWriter::start(&local.path().join("data"), &m.path("up.bin"));
    assert!(
        fs::read(srv.root.join("up.bin")).unwrap() == old,
        "uploaded before close or SIGTERM"
    );
    m.signal(libc::SIGTERM);
    // Still open for writing: nothing is uploaded, the old content stays.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        assert!(
            fs::read(srv.root.join("up.bin")).unwrap() == old,
            "a file still open for writing was uploaded at SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The open file keeps working on the detached mount until it is closed; its
    // close uploads it.
    assert_eq!(writer.close(), "closed");
    let t0 = Instant::now();
    while is_mounted(&m.mnt) || m.daemon.iter().any(|p| alive(*p)) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "still mounted/running 10 s after the last close (mounted: {})",
            is_mounted(&m.mnt)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("unmounted {:?} after the last close", t0.elapsed());
    assert!(
        fs::read(srv.root.join("up.bin")).unwrap() == data,
        "the close after SIGTERM did not upload the file"
    );
    m.unmount();
}

#[test]
fn sigterm_unmounts_after_pending_upload_proftpd() {
    sigterm(ServerSpec::proftpd());
}

#[test]
fn sigterm_unmounts_after_pending_upload_vsftpd() {
    sigterm(ServerSpec::vsftpd());
}

/// SIGTERM with nothing open: the daemon unmounts and exits; what was written is there.
fn sigterm_idle(spec: ServerSpec) {
    let srv = support::start(spec);
    let mut m = Mount::new(&srv);
    assert!(!m.daemon.is_empty(), "daemon pid not found");
    fs::write(m.path("done.txt"), b"written before SIGTERM\n").unwrap();
    for p in &m.daemon {
        // SAFETY: signalling the daemon this test started.
        unsafe {
            libc::kill(*p as libc::pid_t, libc::SIGTERM);
        }
    }
    let t0 = Instant::now();
    while is_mounted(&m.mnt) || m.daemon.iter().any(|p| alive(*p)) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "still mounted/running 10 s after SIGTERM (mounted: {})",
            is_mounted(&m.mnt)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        fs::read(srv.root.join("done.txt")).unwrap(),
        b"written before SIGTERM\n"
    );
    m.unmount();
}

#[test]
fn sigterm_idle_unmounts_cleanly_proftpd() {
    sigterm_idle(ServerSpec::proftpd());
}

#[test]
fn sigterm_idle_unmounts_cleanly_vsftpd() {
    sigterm_idle(ServerSpec::vsftpd());
}

// ---------------------------------------------------------------------------
// A server that answers pipelined commands out of order (pyftpdlib made to answer its
// storage commands late, like an asynchronous server)

#[test]
fn reordering_server_mkdir_mv_and_appends_tell_the_truth() {
    with_mount(ServerSpec::pyftpdlib().reorder_replies(true), |srv, m| {
        let e = Env::new(srv, m);
        // mkdir: the 257 comes after the piggybacked EPSV's 229.
        e.ok(r#"mkdir "$MNT/p""#);
        assert!(e.root().join("p").is_dir());
        e.ok(r#"test -d "$MNT/p""#);
        let out = e.sh(r#"mkdir "$MNT/p""#);
        assert!(!out.status.success(), "mkdir of an existing directory");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("File exists"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // mv of a file and of a directory.
        e.ok(r#"echo one > "$MNT/p/f" && mv "$MNT/p/f" "$MNT/p/g""#);
        assert!(!e.root().join("p/f").exists());
        assert_eq!(fs::read(e.root().join("p/g")).unwrap(), b"one\n");
        e.ok(r#"mv "$MNT/p" "$MNT/q""#);
        assert!(e.root().join("q/g").is_file());
        // echo >> twice keeps the file, with both lines.
        e.ok(r#"echo first >> "$MNT/q/log" && echo second >> "$MNT/q/log""#);
        assert_eq!(
            fs::read(e.root().join("q/log")).unwrap(),
            b"first\nsecond\n"
        );
        assert_eq!(e.ok(r#"cat "$MNT/q/log""#), "first\nsecond\n");
        e.ok(r#"rm "$MNT/q/g" "$MNT/q/log" && rmdir "$MNT/q""#);
        assert_eq!(fs::read_dir(e.root()).unwrap().count(), 0);
    });
}

// ---------------------------------------------------------------------------
// Long paths: a chain of directories whose full path is ~3400 bytes (each command
// line stays short: ftpsfs changes into the parent and names things relative to it)

/// `n` directory names of 200 bytes each, joined with '/'.
fn long_chain(n: usize) -> String {
    (0..n)
        .map(|i| format!("d{i:02}_{}", "x".repeat(196)))
        .collect::<Vec<_>>()
        .join("/")
}

fn long_paths(spec: ServerSpec) {
    let srv = support::start(spec);
    let m = Mount::new(&srv);
    let (srv, m) = (&srv, &m);
    {
        let e = Env::new(srv, m);
        let t0 = Instant::now();
        let chain = long_chain(17);
        assert!(chain.len() > 3000 && chain.len() < 4000 - 100);
        let sh = |script: &str| e.ok(&format!("C='{chain}'; {script}"));
        sh(r#"mkdir -p "$MNT/$C""#);
        assert!(
            e.root().join(&chain).is_dir(),
            "the chain exists on the server"
        );
        sh(r#"echo hello > "$MNT/$C/file.txt""#);
        assert_eq!(
            fs::read(e.root().join(&chain).join("file.txt")).unwrap(),
            b"hello\n"
        );
        assert_eq!(sh(r#"cat "$MNT/$C/file.txt""#), "hello\n");
        sh(r#"echo more >> "$MNT/$C/file.txt""#);
        assert_eq!(sh(r#"cat "$MNT/$C/file.txt""#), "hello\nmore\n");
        sh(r#"mv "$MNT/$C/file.txt" "$MNT/$C/renamed.txt""#);
        assert_eq!(sh(r#"ls "$MNT/$C""#), "renamed.txt\n");
        assert_eq!(
            fs::read(e.root().join(&chain).join("renamed.txt")).unwrap(),
            b"hello\nmore\n"
        );
        // Up to the top of the chain, and back down (paths in two subtrees).
        let top = chain.split('/').next().unwrap().to_string();
        sh(r#"mv "$MNT/$C/renamed.txt" "$MNT/${C%%/*}/up.txt""#);
        assert!(e.root().join(&top).join("up.txt").is_file());
        sh(r#"mv "$MNT/${C%%/*}/up.txt" "$MNT/$C/down.txt" && test -f "$MNT/$C/down.txt""#);
        sh(r#"touch -d '2020-01-02 03:04:05 UTC' "$MNT/$C/down.txt""#);
        assert_eq!(
            sh(r#"ls -l --time-style=+%Y "$MNT/$C" | tail -n 1 | awk '{print $6}'"#),
            "2020\n"
        );
        sh(r#"rm "$MNT/$C/down.txt" && test ! -e "$MNT/$C/down.txt""#);
        assert!(!e.root().join(&chain).join("down.txt").exists());
        // A file created empty at the bottom, closed at once (no stall at close).
        sh(r#"touch "$MNT/$C/empty" && test -f "$ROOT/$C/empty""#);
        sh(r#"rm -r "$MNT/$top""#.replace("$top", &top).as_str());
        assert_eq!(fs::read_dir(e.root()).unwrap().count(), 0, "all removed");
        let took = t0.elapsed();
        assert!(took < Duration::from_secs(30), "long paths took {took:?}");
        // A file whose path on the server passes PATH_MAX (20 levels and a name of
        // 255 bytes): vsftpd works relative to its directory and takes it; proftpd
        // and pyftpdlib cannot, which is ENAMETOOLONG at once, not a creation that
        // "succeeds" and then blocks at close.
        let t0 = Instant::now();
        let chain19 = long_chain(20);
        let name = "f".repeat(255);
        // (python, as sh ignores the result of close() after a redirection.)
        let out = e.sh(&format!(
            r#"mkdir -p "$MNT/{chain19}" && cd "$MNT/{chain19}" && python3 -c "
f = open('{name}', 'w'); f.write('x\\n'); f.close(); print(open('{name}').read(), end='')""#
        ));
        let took = t0.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if srv.spec.kind == support::ServerKind::Vsftpd {
            assert!(out.status.success(), "{stderr}");
            assert_eq!(String::from_utf8_lossy(&out.stdout), "x\n");
        } else {
            assert!(
                !out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
            assert!(stderr.contains("File name too long"), "{stderr}");
            let on_server = e.ok(r#"find "$ROOT" -name 'fff*' | wc -l"#);
            assert_eq!(on_server.trim(), "0");
        }
        assert!(took < Duration::from_secs(15), "took {took:?}: {stderr}");
        e.ok(&format!(r#"rm -r "$MNT/{top}""#));
        // The file name limit still applies per component.
        let long_name = "n".repeat(256);
        let out = e.sh(&format!(r#"touch "$MNT/{long_name}""#));
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("File name too long"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn long_paths_work_proftpd() {
    long_paths(ServerSpec::proftpd());
}

#[test]
fn long_paths_work_vsftpd() {
    long_paths(ServerSpec::vsftpd());
}

#[test]
fn long_paths_work_pyftpdlib() {
    long_paths(ServerSpec::pyftpdlib());
}

// ---------------------------------------------------------------------------
// pure-ftpd and pyftpdlib: the same checks as on proftpd and vsftpd

#[test]
fn cp_r_tree_in_and_out_pure_ftpd() {
    cp_tree(ServerSpec::pure_ftpd());
}

#[test]
fn cp_r_tree_in_and_out_pyftpdlib() {
    cp_tree(ServerSpec::pyftpdlib());
}

#[test]
fn rsync_twice_second_run_transfers_nothing_pure_ftpd() {
    rsync_twice(ServerSpec::pure_ftpd(), "");
}

#[test]
fn rsync_twice_second_run_transfers_nothing_pyftpdlib() {
    rsync_twice(ServerSpec::pyftpdlib(), "");
}

#[test]
fn tar_into_and_out_of_mount_pure_ftpd() {
    tar_round_trip(ServerSpec::pure_ftpd(), "");
}

#[test]
fn tar_into_and_out_of_mount_pyftpdlib() {
    tar_round_trip(ServerSpec::pyftpdlib(), "");
}

#[test]
fn find_lists_same_paths_pure_ftpd() {
    find_same(ServerSpec::pure_ftpd());
}

#[test]
fn find_lists_same_paths_pyftpdlib() {
    find_same(ServerSpec::pyftpdlib());
}

#[test]
fn many_entries_listed_whole_pure_ftpd() {
    many_entries(ServerSpec::pure_ftpd());
}

#[test]
fn many_entries_listed_whole_pyftpdlib() {
    many_entries(ServerSpec::pyftpdlib());
}

#[test]
fn mv_rm_r_mkdir_p_pure_ftpd() {
    mv_rm_mkdir(ServerSpec::pure_ftpd());
}

#[test]
fn mv_rm_r_mkdir_p_pyftpdlib() {
    mv_rm_mkdir(ServerSpec::pyftpdlib());
}

#[test]
fn append_dd_truncate_touch_pure_ftpd() {
    small_writes(ServerSpec::pure_ftpd());
}

#[test]
fn append_dd_truncate_touch_pyftpdlib() {
    small_writes(ServerSpec::pyftpdlib());
}

#[test]
fn two_parallel_readers_pure_ftpd() {
    parallel_readers(ServerSpec::pure_ftpd());
}

#[test]
fn two_parallel_readers_pyftpdlib() {
    parallel_readers(ServerSpec::pyftpdlib());
}

#[test]
fn failed_upload_errors_and_keeps_spool_pure_ftpd() {
    failed_upload(ServerSpec::pure_ftpd());
}

#[test]
fn failed_upload_errors_and_keeps_spool_pyftpdlib() {
    failed_upload(ServerSpec::pyftpdlib());
}

#[test]
fn rmdir_non_empty_is_enotempty_pure_ftpd() {
    rmdir_not_empty(ServerSpec::pure_ftpd());
}

#[test]
fn rmdir_non_empty_is_enotempty_pyftpdlib() {
    rmdir_not_empty(ServerSpec::pyftpdlib());
}

#[test]
fn server_side_file_appears_after_cache_timeout_pure_ftpd() {
    external_change(ServerSpec::pure_ftpd());
}

#[test]
fn server_side_file_appears_after_cache_timeout_pyftpdlib() {
    external_change(ServerSpec::pyftpdlib());
}

#[test]
fn sigterm_unmounts_after_pending_upload_pure_ftpd() {
    sigterm(ServerSpec::pure_ftpd());
}

#[test]
fn sigterm_unmounts_after_pending_upload_pyftpdlib() {
    sigterm(ServerSpec::pyftpdlib());
}

#[test]
fn long_paths_work_pure_ftpd() {
    long_paths(ServerSpec::pure_ftpd());
}

// ---------------------------------------------------------------------------
// Every mode of the client as a mount, on every server that has it: explicit
// (AUTH TLS), implicit, PROT C, CCC.

/// Write, read back, list, rename and delete through a mount made with `opts`.
fn mode_round_trip(spec: ServerSpec, opts: &str) {
    let srv = support::start(spec);
    let m = Mount::with(&srv, opts);
    let e = Env::new(&srv, &m);
    let what = format!("{} {opts:?}", srv.spec.kind.name());
    fs::write(e.w().join("in.bin"), pattern(200_000, 7)).unwrap();
    e.ok(r#"mkdir "$MNT/d" && cp "$W/in.bin" "$MNT/d/f.bin""#);
    assert_eq!(
        fs::read(e.root().join("d/f.bin")).unwrap(),
        pattern(200_000, 7),
        "{what}"
    );
    e.ok(r#"cmp "$W/in.bin" "$MNT/d/f.bin""#);
    assert_eq!(e.ok(r#"ls "$MNT/d""#), "f.bin\n", "{what}");
    e.ok(r#"mv "$MNT/d/f.bin" "$MNT/g.bin" && rm "$MNT/g.bin" && rmdir "$MNT/d""#);
    assert_eq!(fs::read_dir(e.root()).unwrap().count(), 0, "{what}");
}

#[test]
fn modes_explicit_on_every_server() {
    for spec in [
        ServerSpec::proftpd(),
        ServerSpec::vsftpd(),
        ServerSpec::pyftpdlib(),
        ServerSpec::pure_ftpd(),
    ] {
        mode_round_trip(spec, "");
    }
}

#[test]
fn modes_implicit_where_servers_have_it() {
    for spec in [ServerSpec::proftpd(), ServerSpec::vsftpd()] {
        mode_round_trip(spec.implicit(true), "");
    }
}

#[test]
fn modes_prot_c_on_every_server() {
    for spec in [
        ServerSpec::proftpd(),
        ServerSpec::vsftpd(),
        ServerSpec::pyftpdlib(),
        ServerSpec::pure_ftpd(),
    ] {
        mode_round_trip(spec.tls_required(support::TlsRequired::Ctrl), "prot=C");
    }
}

#[test]
fn modes_ccc_where_servers_have_it() {
    // Only proftpd (auth+data) accepts CCC among the four.
    mode_round_trip(
        ServerSpec::proftpd().tls_required(support::TlsRequired::AuthData),
        "ccc",
    );
}
