//! What a user sees on the command line: exit statuses, `--help`, error messages that
//! say what to do next (wrong scheme for the port, untrusted certificates, a remote
//! root that is missing or a file, a mountpoint already mounted or left dead), and
//! the options fstab, sshfs and rclone users reach for. Real servers, real mounts.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::mount::{is_mounted, scratch, Mount};
use support::{start, CertChoice, ServerSpec};

fn ftpsfs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ftpsfs"))
        .args(args)
        .env_remove("FTPSFS_PASSWORD")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run ftpsfs")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A password file with the right password, mode 600, removed on drop.
fn password_file() -> tempfile::NamedTempFile {
    let f = tempfile::Builder::new()
        .prefix("cli-pw-")
        .tempfile_in(support::process_dir())
        .unwrap();
    fs::write(f.path(), format!("{}\n", support::TEST_PASSWORD)).unwrap();
    f
}

fn check(url: &str, opts: &str) -> Output {
    ftpsfs(&["check", url, "-o", opts])
}

// ---------------------------------------------------------------------------
// Usage

#[test]
fn help_and_version_exit_0_and_help_lists_the_options() {
    for args in [
        &["--help"][..],
        &["-h"],
        &["--version"],
        &["-V"],
        &["check", "--help"],
        &["check", "-h"],
        &["check", "--version"],
    ] {
        let o = ftpsfs(args);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {err}");
        assert!(!out.is_empty(), "{args:?} printed nothing");
    }
    let (help, _) = text(&ftpsfs(&["--help"]));
    for group in ["Trust and TLS:", "Login:", "Caching:", "Mount:", "Logging:"] {
        assert!(help.contains(group), "no {group} in --help:\n{help}");
    }
    for opt in ftpsfs::options::all() {
        assert!(
            help.contains(opt.usage),
            "--help lacks {}:\n{help}",
            opt.usage
        );
    }
    let (v, _) = text(&ftpsfs(&["-V"]));
    assert_eq!(v.trim(), format!("ftpsfs {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn wrong_usage_exits_2() {
    for args in [
        &[][..],
        &["ftp://h/"],
        &["--no-such-flag"],
        &["check"],
        &["ftp://h/", "/tmp", "-o", "fingerprnt=sha256:00"],
        &["http://h/", "/tmp"],
        &["check", "ftp://h/", "-o", "idmap=file"],
        &["completions", "tcsh"],
    ] {
        let o = ftpsfs(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o).1);
    }
    let (_, err) = text(&ftpsfs(&["ftp://h/", "/tmp", "-o", "fingerprnt=x"]));
    assert!(
        err.contains("unknown option \"fingerprnt\"") && err.contains("--help"),
        "{err}"
    );
}

#[test]
fn completions_are_generated_for_bash_zsh_fish() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef ftpsfs"),
        ("fish", "complete -c ftpsfs"),
    ] {
        let o = ftpsfs(&["completions", shell]);
        let (out, err) = text(&o);
        assert!(o.status.success(), "{shell}: {err}");
        assert!(out.contains(marker), "{shell}: {out}");
        assert!(out.contains("check"), "{shell} completion lacks check");
    }
}

/// Each option of the table is in the man page and the README, and each option the
/// man page documents is in the table: `--help`, man page and README agree.
#[test]
fn man_page_readme_and_help_agree_option_for_option() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let man = fs::read_to_string(root.join("packaging/ftpsfs.1")).unwrap();
    let readme = fs::read_to_string(root.join("README.md")).unwrap();
    // The names the man page sets in bold at the start of a line.
    let documented: Vec<String> = man
        .lines()
        .filter_map(|l| {
            let rest = l
                .strip_prefix(".BI ")
                .or_else(|| l.strip_prefix(".BR "))
                .or_else(|| l.strip_prefix(".B "))?;
            Some(rest.split(['=', ' ', '[']).next()?.replace("\\-", "-"))
        })
        .collect();
    for opt in ftpsfs::options::all() {
        assert!(
            documented.iter().any(|d| d == opt.name),
            "man page does not document {}",
            opt.name
        );
        assert!(
            readme.contains(&format!("`{}", opt.usage.split('|').next().unwrap()))
                || readme.contains(&format!("`{}`", opt.name))
                || readme.contains(&format!("`{}=", opt.name)),
            "README does not list {}",
            opt.name
        );
    }
    // Options the man page describes in its OPTIONS section must exist.
    let options = man
        .split(".SH OPTIONS")
        .nth(1)
        .and_then(|s| s.split(".SH PASSWORDS").next())
        .unwrap();
    let mut lines = options.lines().peekable();
    while let Some(l) = lines.next() {
        if l == ".TP" || l == ".TQ" {
            let Some(next) = lines.peek() else { break };
            let word = next
                .trim_start_matches(".BI ")
                .trim_start_matches(".BR ")
                .trim_start_matches(".B ")
                .split(['=', ' ', '['])
                .next()
                .unwrap()
                .replace("\\-", "-");
            if word.starts_with('-') || word.is_empty() {
                continue;
            }
            assert!(
                ftpsfs::options::all().any(|o| o.name == word),
                "the man page documents {word:?}, which ftpsfs does not know"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Options as fstab, sshfs and rclone users write them

#[test]
fn fstab_line_checks_and_mounts_as_it_is() {
    let srv = start(ServerSpec::proftpd());
    fs::write(srv.root.join("seen.txt"), b"hello").unwrap();
    let pw = password_file();
    let spool = scratch("cli-spool-");
    // What mount(8) passes from a typical fstab line, plus sshfs/rclone spellings.
    let fstab = format!(
        "rw,nodev,nosuid,noexec,noatime,nodiratime,lazytime,sync,_netdev,nofail,noauto,user,\
         x-systemd.automount,reconnect,idmap=user,read_only,ServerAliveInterval=15,\
         dir_cache_timeout=3,attr_timeout=1,entry_timeout=1,log_level=info,\
         cafile={},password_file={},spool_dir={}",
        srv.ca_file().display(),
        pw.path().display(),
        spool.path().display()
    );
    let o = check(&srv.url(), &fstab);
    let (out, err) = text(&o);
    assert!(
        o.status.success(),
        "check refused the fstab options: {err}\n{out}"
    );
    assert!(out.contains("seen.txt"), "{out}");
    let m = Mount::builder(&srv).opts(&fstab).mount();
    assert_eq!(fs::read(m.path("seen.txt")).unwrap(), b"hello");
    // read_only is ro.
    let e = fs::write(m.path("new.txt"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
}

#[test]
fn password_file_readable_by_others_is_refused() {
    let srv = start(ServerSpec::proftpd());
    let pw = password_file();
    fs::set_permissions(pw.path(), fs::Permissions::from_mode(0o644)).unwrap();
    let o = check(
        &srv.url(),
        &format!(
            "cafile={},password_file={}",
            srv.ca_file().display(),
            pw.path().display()
        ),
    );
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("accessible by other users (mode 644)")
            && err.contains(&format!("chmod 600 {}", pw.path().display())),
        "{err}"
    );
}

#[test]
fn wrong_password_exits_3_refused() {
    let srv = start(ServerSpec::proftpd());
    let err = Mount::builder(&srv)
        .password("not-the-password")
        .try_mount()
        .err()
        .expect("mounted with a wrong password");
    assert_eq!(err.code, Some(3), "{}", err.stderr);
}

// ---------------------------------------------------------------------------
// The remote root

#[test]
fn missing_remote_root_is_refused_at_mount_and_by_check() {
    let srv = start(ServerSpec::vsftpd());
    fs::write(srv.root.join("afile"), b"x").unwrap();
    for (path, want) in [
        (
            "no-such-dir",
            "/no-such-dir on 127.0.0.1 does not exist (550",
        ),
        ("afile", "/afile on 127.0.0.1 is a file, not a directory"),
    ] {
        let url = format!("{}{path}/", srv.url());
        let f = Mount::builder(&srv)
            .url(&url)
            .try_mount()
            .err()
            .unwrap_or_else(|| panic!("{url} mounted"));
        assert_eq!(f.code, Some(3), "{}", f.stderr);
        assert!(f.stderr.contains(want), "{}", f.stderr);
        assert_eq!(f.stderr.lines().count(), 1, "{}", f.stderr);
        let pw = password_file();
        let o = check(
            &url,
            &format!(
                "cafile={},password_file={}",
                srv.ca_file().display(),
                pw.path().display()
            ),
        );
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(3), "{err}");
        assert!(err.contains(want), "{err}");
    }
    // A directory that exists still mounts.
    fs::create_dir(srv.root.join("sub")).unwrap();
    let m = Mount::builder(&srv)
        .url(format!("{}sub", srv.url()))
        .mount();
    assert!(fs::read_dir(&m.mnt).unwrap().next().is_none());
}

// ---------------------------------------------------------------------------
// The mountpoint

#[test]
fn second_mount_on_the_same_mountpoint_is_refused() {
    let srv = start(ServerSpec::proftpd());
    let m = Mount::new(&srv);
    let pw = password_file();
    let o = ftpsfs(&[
        &srv.url(),
        &m.mnt.to_string_lossy(),
        "-o",
        &format!(
            "cafile={},password_file={}",
            srv.ca_file().display(),
            pw.path().display()
        ),
    ]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("is already mounted")
            && err.contains(&format!("fusermount3 -u {}", m.mnt.display())),
        "{err}"
    );
    let mounts = fs::read_to_string("/proc/mounts").unwrap();
    let n = mounts
        .lines()
        .filter(|l| l.split(' ').nth(1) == Some(&*m.mnt.to_string_lossy()))
        .count();
    assert_eq!(n, 1, "{mounts}");
}

/// A mountpoint of the test's own (several mounts in turn), in a scratch directory.
fn own_mountpoint(prefix: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = scratch(prefix);
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    (dir, mnt)
}

#[test]
fn dead_mount_of_ours_is_cleared_by_the_next_mount() {
    let srv = start(ServerSpec::proftpd());
    fs::write(srv.root.join("f"), b"again").unwrap();
    let (_dir, mnt) = own_mountpoint("cli-dead-");
    let first = Mount::builder(&srv).mountpoint(&mnt).mount();
    first.signal(libc::SIGKILL);
    let t = Instant::now();
    while first.daemon_alive() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Once the kernel's cached attributes of the root expire, the dead mount shows.
    let t = Instant::now();
    let e = loop {
        match fs::metadata(&mnt) {
            Err(e) => break e,
            Ok(_) if t.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Ok(_) => panic!("the mount still answers after its daemon was killed"),
        }
    };
    assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN), "{e}");
    let second = Mount::builder(&srv).mountpoint(&mnt).mount();
    assert!(
        second.daemon_output().contains("cleared the mount"),
        "{}",
        second.daemon_output()
    );
    assert_eq!(fs::read(second.path("f")).unwrap(), b"again");
    drop(second);
    drop(first);
    assert!(!is_mounted(&mnt));
}

/// `fusermount3 -u`, then a new mount on the same mountpoint at once (a script, a
/// service restart): the old daemon, ending, must not unmount the new mount by
/// its path (what is then written there would land in the directory underneath).
/// Before the fix, about one round in four lost its new mount.
#[test]
fn a_remount_right_after_an_unmount_stays_mounted() {
    let srv = start(ServerSpec::proftpd());
    fs::write(srv.root.join("on-server"), b"here").unwrap();
    let (_dir, mnt) = own_mountpoint("cli-remount-");
    let mut previous = Mount::builder(&srv).mountpoint(&mnt).mount();
    for round in 0..20 {
        let unmounted = std::process::Command::new("fusermount3")
            .arg("-u")
            .arg(&mnt)
            .status()
            .is_ok_and(|s| s.success());
        assert!(unmounted, "round {round}: fusermount3 -u failed");
        let next = Mount::builder(&srv).mountpoint(&mnt).mount();
        // The old daemon has ended by now, whatever it did on its way out.
        previous.unmounted_by_hand();
        assert!(
            is_mounted(&mnt),
            "round {round}: the old daemon unmounted the new mount: {}",
            previous.daemon_output()
        );
        assert_eq!(
            fs::read(next.path("on-server")).unwrap(),
            b"here",
            "round {round}"
        );
        previous = next;
    }
}

// ---------------------------------------------------------------------------
// Certificates

fn check_refusal(choice: CertChoice, opts_extra: &str) -> (Option<i32>, String) {
    let srv = start(ServerSpec::proftpd().server_cert(choice));
    let pw = password_file();
    let o = check(
        &srv.url(),
        &format!(
            "cafile={},password_file={}{opts_extra}",
            srv.ca_file().display(),
            pw.path().display()
        ),
    );
    let (_, err) = text(&o);
    (o.status.code(), err)
}

fn colon_hex(lower_hex: &str) -> String {
    lower_hex
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap().to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join(":")
}

#[test]
fn untrusted_certificate_shows_it_and_both_ways_on() {
    let p = support::pki();
    let fp = colon_hex(&support::sha256_fingerprint(&p.untrusted_cert));
    let (code, err) = check_refusal(CertChoice::Untrusted, "");
    assert_eq!(code, Some(3), "{err}");
    for want in [
        "untrusted issuer",
        "subject:",
        "issuer:",
        "names:    localhost, 127.0.0.1",
        "valid:",
        &format!("sha256:   {fp}"),
        "-o cafile=PATH",
        &format!("-o fingerprint=sha256:{fp}"),
    ] {
        assert!(err.contains(want), "no {want:?} in:\n{err}");
    }
    // The value shown is the one to paste: with it, the check passes.
    let srv = start(ServerSpec::proftpd().server_cert(CertChoice::Untrusted));
    let pw = password_file();
    let o = check(
        &srv.url(),
        &format!(
            "fingerprint=sha256:{fp},password_file={}",
            pw.path().display()
        ),
    );
    assert!(o.status.success(), "{}", text(&o).1);
}

#[test]
fn expired_and_wrong_host_certificates_say_dates_and_names() {
    let (code, err) = check_refusal(CertChoice::Expired, "");
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("certificate expired on ") && err.contains("valid:"),
        "{err}"
    );
    assert!(err.contains("renew"), "{err}");
    let (code, err) = check_refusal(CertChoice::WrongHost, "");
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("certificate is for wrong.example, 10.9.9.9, not for 127.0.0.1"),
        "{err}"
    );
    assert!(err.contains("-o fingerprint=sha256:"), "{err}");
}

#[test]
fn pinned_expired_certificate_is_accepted_with_a_warning() {
    let srv = start(ServerSpec::proftpd().server_cert(CertChoice::Expired));
    let pw = password_file();
    let o = check(
        &srv.url(),
        &format!(
            "fingerprint={},password_file={}",
            srv.cert_fingerprint(),
            pw.path().display()
        ),
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("warning: the pinned server certificate expired on"),
        "{err}"
    );
    assert!(out.contains("warning:"), "{out}");
    let m = Mount::builder(&srv)
        .opts(&format!("fingerprint={}", srv.cert_fingerprint()))
        .mount();
    assert!(
        m.daemon_output()
            .contains("pinned server certificate expired"),
        "{}",
        m.daemon_output()
    );
}

// ---------------------------------------------------------------------------
// Wrong scheme for the port

#[test]
fn ftp_scheme_on_an_implicit_port_is_named_within_seconds() {
    let srv = start(ServerSpec::proftpd().implicit(true));
    let url = srv.url().replace("ftps://", "ftp://");
    let pw = password_file();
    let t = Instant::now();
    let o = check(
        &url,
        &format!(
            "cafile={},password_file={}",
            srv.ca_file().display(),
            pw.path().display()
        ),
    );
    let took = t.elapsed();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.contains("speaks implicit TLS") && err.contains("use ftps://"),
        "{err}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn ftps_scheme_on_a_plain_ftp_port_is_named_at_once() {
    let srv = start(ServerSpec::vsftpd());
    let url = srv.url().replace("ftp://", "ftps://");
    let pw = password_file();
    let t = Instant::now();
    let o = check(
        &url,
        &format!(
            "cafile={},password_file={}",
            srv.ca_file().display(),
            pw.path().display()
        ),
    );
    let took = t.elapsed();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.contains("speaks plain FTP first") && err.contains("use ftp://"),
        "{err}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    // The same through a mount.
    let f = Mount::builder(&srv)
        .url(url)
        .try_mount()
        .err()
        .expect("mounted");
    assert!(f.stderr.contains("speaks plain FTP first"), "{}", f.stderr);
}

// ---------------------------------------------------------------------------
// Logs

#[test]
fn default_log_is_quiet_and_debug_tells_the_connection_story() {
    let srv = start(ServerSpec::proftpd());
    let log_dir = scratch("cli-log-");
    let log = log_dir.path().join("ftpsfs.log");
    let mut m = Mount::builder(&srv)
        .opts(&format!("log_file={}", log.display()))
        .mount();
    let _ = fs::read_dir(&m.mnt).unwrap().count();
    let _ = Command::new("ls").arg("-la").arg(&m.mnt).output();
    m.unmount();
    let quiet = fs::read_to_string(&log).unwrap_or_default();
    assert!(quiet.trim().is_empty(), "default level logged:\n{quiet}");
    assert_eq!(
        fs::metadata(&log).unwrap().permissions().mode() & 0o777,
        0o600
    );
    drop(m);
    let m = Mount::builder(&srv)
        .opts(&format!("log_level=debug,log_file={}", log.display()))
        .mount();
    fs::write(m.path("f"), vec![7u8; 1 << 20]).unwrap();
    drop(m);
    let story = fs::read_to_string(&log).unwrap();
    // Brief: a line per command, none per FUSE request or per 128 KiB written.
    assert!(story.lines().count() < 120, "-d log too long:\n{story}");
    for want in [
        "connecting to 127.0.0.1:",
        "> AUTH TLS",
        "TLS TLSv1.",
        "certificate ",
        "logged in as",
    ] {
        assert!(story.contains(want), "no {want:?} in the -d log:\n{story}");
    }
    for unwanted in ["Not Implemented", "Unmount failed", "FUSE_"] {
        assert!(
            !story.contains(unwanted),
            "{unwanted:?} in the log:\n{story}"
        );
    }
}

// ---------------------------------------------------------------------------
// systemd

/// `-f` under systemd's Type=notify: READY=1 arrives once the mount is up, and
/// SIGTERM unmounts and exits 0.
#[test]
fn foreground_mount_notifies_systemd_when_up() {
    use std::os::unix::net::UnixDatagram;
    let srv = start(ServerSpec::pyftpdlib());
    fs::write(srv.root.join("f"), b"ready").unwrap();
    let dir = scratch("cli-notify-");
    let sock_path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let pw = password_file();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ftpsfs"))
        .arg(srv.url())
        .arg(&mnt)
        .arg("-f")
        .arg("-o")
        .arg(format!(
            "cafile={},password_file={},spool_dir={}",
            srv.ca_file().display(),
            pw.path().display(),
            dir.path().join("spool").display()
        ))
        .env("NOTIFY_SOCKET", &sock_path)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 64];
    let got = sock.recv(&mut buf);
    let mounted_then = is_mounted(&mnt);
    let read = fs::read(mnt.join("f"));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if t.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = Command::new("fusermount3").arg("-uz").arg(&mnt).status();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let n = got.expect("no READY=1 from ftpsfs -f");
    assert_eq!(&buf[..n], b"READY=1");
    assert!(mounted_then, "READY=1 came before the mount was up");
    assert_eq!(read.unwrap(), b"ready");
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "SIGTERM did not end it cleanly"
    );
    assert!(!is_mounted(&mnt));
}

// ---------------------------------------------------------------------------
// Defaults of a setuid (`user` fstab) mount

/// A HOME (and XDG_CACHE_HOME) that belongs to another user, as a setuid `user`
/// mount inherits root's: the spool and log defaults come from the real user's
/// passwd entry instead, and nothing is created in the other user's directory.
#[test]
fn spool_default_ignores_a_home_of_another_user() {
    let srv = start(ServerSpec::proftpd());
    let dir = scratch("cli-home-");
    let other_home = dir.path().join("other-home");
    fs::create_dir(&other_home).unwrap();
    std::os::unix::fs::chown(&other_home, Some(65534), Some(65534)).unwrap();
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let pw = password_file();
    let o = Command::new(env!("CARGO_BIN_EXE_ftpsfs"))
        .arg(srv.url())
        .arg(&mnt)
        .arg("-o")
        .arg(format!(
            "cafile={},password_file={}",
            srv.ca_file().display(),
            pw.path().display()
        ))
        .env("HOME", &other_home)
        .env("XDG_CACHE_HOME", other_home.join(".cache"))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let mounted = is_mounted(&mnt);
    let _ = Command::new("fusermount3").arg("-u").arg(&mnt).status();
    let t = Instant::now();
    while is_mounted(&mnt) && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(mounted);
    let left: Vec<_> = fs::read_dir(&other_home).unwrap().collect();
    assert!(
        left.is_empty(),
        "ftpsfs wrote into another user's home: {left:?}"
    );
}

/// `auto_unmount`: when the daemon is killed, fusermount3 takes the mount away
/// instead of leaving "Transport endpoint is not connected".
#[test]
fn auto_unmount_leaves_no_dead_mount() {
    let srv = start(ServerSpec::proftpd());
    let m = Mount::with(&srv, "auto_unmount");
    assert!(fs::read_dir(&m.mnt).is_ok());
    // Only ftpsfs: the fusermount3 that watches it names the mountpoint too.
    let daemons: Vec<u32> = m
        .daemon_pids()
        .iter()
        .copied()
        .filter(|p| {
            fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "ftpsfs")
        })
        .collect();
    assert!(!daemons.is_empty());
    for p in daemons {
        unsafe { libc::kill(p as i32, libc::SIGKILL) };
    }
    let t = Instant::now();
    while is_mounted(&m.mnt) && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!is_mounted(&m.mnt), "the dead mount stayed");
    assert!(fs::metadata(&m.mnt).is_ok());
}

/// `keepalive=SECS` (sshfs: `ServerAliveInterval=`): idle connections get a NOOP.
#[test]
fn keepalive_sends_noop_on_idle_connections() {
    let srv = start(ServerSpec::vsftpd());
    let log_dir = scratch("cli-keepalive-");
    let log = log_dir.path().join("ftpsfs.log");
    let m = Mount::with(
        &srv,
        &format!(
            "ServerAliveInterval=1,log_level=debug,log_file={}",
            log.display()
        ),
    );
    let _ = fs::read_dir(&m.mnt).unwrap().count();
    std::thread::sleep(Duration::from_secs(4));
    drop(m);
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("> NOOP"),
        "no NOOP in 4 idle seconds:\n{text}"
    );
}
