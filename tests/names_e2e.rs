//! End-to-end: names that are not UTF-8 (Latin-1 `caf\xe9.txt`, as older servers
//! and data have) are never hidden. Through a real mount of proftpd and vsftpd they
//! are listed with the server's exact bytes and can be read, renamed, written and
//! deleted; `-o encoding=latin1` shows them as UTF-8 and writes new names in
//! Latin-1 on the server. See src/names.rs and SEMANTICS.md ("Names").
//!
//! Needs root, /dev/fuse and fusermount3.

mod support;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use support::mount::Mount;
use support::{Server, ServerSpec};

fn raw(bytes: &[u8]) -> &OsStr {
    OsStr::from_bytes(bytes)
}

fn names_in(dir: &std::path::Path) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
        .map(|e| e.expect("entry").file_name().as_bytes().to_vec())
        .collect();
    v.sort();
    v
}

fn on_server(srv: &Server, bytes: &[u8]) -> PathBuf {
    srv.root.join(raw(bytes))
}

/// Made on the server's disk (as root): given to the FTP account.
fn own(p: &std::path::Path) {
    let u = support::test_user();
    std::os::unix::fs::chown(p, Some(u.uid), Some(u.gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
}

/// Names pass through as the server's bytes.
fn bytes_pass_through(spec: ServerSpec) {
    let srv = support::start(spec);
    fs::create_dir(on_server(&srv, b"d\xe9j\xe0")).expect("mkdir latin1");
    fs::write(on_server(&srv, b"d\xe9j\xe0/caf\xe9.txt"), b"latin one\n").expect("write");
    fs::write(srv.root.join("plain.txt"), b"plain\n").expect("write");
    own(&on_server(&srv, b"d\xe9j\xe0"));
    own(&on_server(&srv, b"d\xe9j\xe0/caf\xe9.txt"));
    let m = Mount::new(&srv);
    let kind = srv.spec.kind.name();
    assert_eq!(
        names_in(&m.mnt),
        vec![b"d\xe9j\xe0".to_vec(), b"plain.txt".to_vec()],
        "[{kind}] ls of the root"
    );
    let dir = m.mnt.join(raw(b"d\xe9j\xe0"));
    assert_eq!(names_in(&dir), vec![b"caf\xe9.txt".to_vec()], "[{kind}]");
    let file = dir.join(raw(b"caf\xe9.txt"));
    assert_eq!(fs::read(&file).expect("read"), b"latin one\n", "[{kind}]");
    // Rename to another non-UTF-8 name, write a new one, delete.
    fs::rename(&file, dir.join(raw(b"th\xe9.txt"))).expect("rename");
    assert!(
        on_server(&srv, b"d\xe9j\xe0/th\xe9.txt").exists(),
        "[{kind}]"
    );
    fs::write(dir.join(raw(b"new\xfe\xfd")), b"made here").expect("create");
    assert_eq!(
        fs::read(on_server(&srv, b"d\xe9j\xe0/new\xfe\xfd")).expect("on the server"),
        b"made here"
    );
    // Byte 0xFF is Telnet's IAC on the control connection, read differently by
    // different servers: refused rather than sent to the wrong name.
    let err = fs::write(dir.join(raw(b"y\xff")), b"x").expect_err("0xFF");
    assert_eq!(err.raw_os_error(), Some(libc::EILSEQ), "[{kind}] {err}");
    fs::remove_file(dir.join(raw(b"th\xe9.txt"))).expect("unlink");
    assert!(!on_server(&srv, b"d\xe9j\xe0/th\xe9.txt").exists());
    // A UTF-8 name is still UTF-8.
    fs::write(m.mnt.join("café ☕.txt"), b"utf8").expect("create utf8");
    assert_eq!(
        fs::read(srv.root.join("café ☕.txt")).expect("read"),
        b"utf8",
        "[{kind}]"
    );
}

#[test]
fn latin1_bytes_pass_through_proftpd() {
    bytes_pass_through(ServerSpec::proftpd());
}

#[test]
fn latin1_bytes_pass_through_vsftpd() {
    bytes_pass_through(ServerSpec::vsftpd());
}

/// `encoding=latin1`: the server's Latin-1 names show as UTF-8, and names made
/// through the mount are written in Latin-1; a name Latin-1 cannot hold is refused.
fn latin1_converted(spec: ServerSpec) {
    let srv = support::start(spec);
    fs::write(on_server(&srv, b"caf\xe9.txt"), b"coffee").expect("write");
    own(&on_server(&srv, b"caf\xe9.txt"));
    let m = Mount::with(&srv, "encoding=latin1");
    let kind = srv.spec.kind.name();
    assert_eq!(
        names_in(&m.mnt),
        vec!["café.txt".as_bytes().to_vec()],
        "[{kind}]"
    );
    assert_eq!(fs::read(m.mnt.join("café.txt")).expect("read"), b"coffee");
    fs::create_dir(m.mnt.join("naïve")).expect("mkdir");
    fs::write(m.mnt.join("naïve/señor.txt"), b"hola").expect("create");
    assert_eq!(
        fs::read(on_server(&srv, b"na\xefve/se\xf1or.txt")).expect("latin1 on the server"),
        b"hola",
        "[{kind}]"
    );
    let err = fs::write(m.mnt.join("snow☃.txt"), b"x").expect_err("not in Latin-1");
    assert_eq!(err.raw_os_error(), Some(libc::EILSEQ), "[{kind}] {err}");
}

#[test]
fn encoding_latin1_converts_names_proftpd() {
    latin1_converted(ServerSpec::proftpd());
}

#[test]
fn encoding_latin1_converts_names_vsftpd() {
    latin1_converted(ServerSpec::vsftpd());
}

/// `ftpsfs check` says whether the server announced UTF8 and whether its listing
/// has names that are not UTF-8, with the way on.
#[test]
fn check_reports_names_that_are_not_utf8_vsftpd() {
    let srv = support::start(ServerSpec::vsftpd());
    fs::write(srv.root.join("plain.txt"), b"x").expect("write");
    let run = || {
        let pw = support::mount::scratch("names-pw-");
        let pw_file = pw.path().join("pw");
        fs::write(&pw_file, format!("{}\n", support::TEST_PASSWORD)).expect("pw");
        fs::set_permissions(
            &pw_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("chmod 600");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ftpsfs"))
            .args(["check", &srv.url(), "-o"])
            .arg(format!(
                "cafile={},password_file={}",
                support::pki().ca_cert.display(),
                pw_file.display()
            ))
            .env_remove("FTPSFS_PASSWORD")
            .output()
            .expect("run ftpsfs check");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = run();
    assert!(out.contains("every name listed is UTF-8"), "{out}");
    fs::write(on_server(&srv, b"caf\xe9.txt"), b"x").expect("write");
    let out = run();
    assert!(
        out.contains("1 of 2 names are not UTF-8") && out.contains("encoding=latin1"),
        "{out}"
    );
}
