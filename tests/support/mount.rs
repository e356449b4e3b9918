//! Mounting the `ftpsfs` binary in tests: a [`Mount`] guard that always unmounts, and
//! small helpers shared by the e2e test files (`mod support;` then `support::mount::...`).
//!
//! ```ignore
//! use support::mount::{Mount, Env};
//! let srv = support::start(support::ServerSpec::proftpd());
//! let m = Mount::new(&srv);                         // default options
//! let m = Mount::with(&srv, "timeout=5,max_conns=2"); // extra -o options
//! // Through a forwarder on 127.0.0.2 (the certificate is pinned automatically):
//! let fwd = srv.forwarder(std::time::Duration::ZERO);
//! let m = Mount::builder(&srv)
//!     .url(srv.url_via(support::FORWARD_HOST))
//!     .opts("timeout=5")
//!     .mount();                                     // or .try_mount() -> Result
//! std::fs::read(m.path("file"));                    // m.mnt, m.spool, m.daemon_pids()
//! ```
//!
//! The binary is the one Cargo built for the integration test (`CARGO_BIN_EXE_ftpsfs`);
//! from an example, `target/<profile>/ftpsfs` next to the example's directory.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::Server;

/// Default `cache_timeout=` of the mounts (seconds).
pub const CACHE_TIMEOUT: u64 = 2;

/// A fresh directory under the process's test directory.
pub fn scratch(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(super::process_dir())
        .expect("create scratch dir")
}

/// Whether `path` is a mountpoint in /proc/mounts.
pub fn is_mounted(path: &Path) -> bool {
    let p = path.to_string_lossy();
    fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(&*p))
}

/// Pids of processes whose command line contains `pattern` (pgrep -f).
pub fn pids_matching(pattern: &str) -> Vec<u32> {
    let out = Command::new("pgrep")
        .arg("-f")
        .arg(pattern)
        .output()
        .expect("run pgrep");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// True while process `pid` runs. A zombie has ended: the daemons are reparented
/// to an init that may reap them a second or two later.
pub fn alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) S ...": the state follows the last ')' (comm may hold any byte).
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state != "Z" && state != "X")
}

/// The last `n` bytes of `s` (at a character boundary).
pub fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The `ftpsfs` binary under test.
pub fn ftpsfs_bin() -> PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_ftpsfs") {
        return PathBuf::from(p);
    }
    // An example: target/<profile>/examples/NAME -> target/<profile>/ftpsfs.
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .map(|d| d.join("ftpsfs"))
        .expect("ftpsfs binary next to the examples directory")
}

/// A running `ftpsfs` mount of a server. Dropping it always unmounts (lazily if
/// needed) and waits for the daemon to exit, so a failing test leaves no mount.
pub struct Mount {
    /// The mountpoint.
    pub mnt: PathBuf,
    /// The `spool_dir=` of the mount.
    pub spool: PathBuf,
    /// Pids of the detached daemon (processes whose command line names the mountpoint).
    pub daemon: Vec<u32>,
    /// The `-o` options it was mounted with.
    pub options: String,
    /// The URL it was mounted with.
    pub url: String,
    unmounted: bool,
    /// Unmounted by the test itself (`unmounted_by_hand`): the mountpoint is
    /// not this mount's any more.
    by_hand: bool,
    /// The daemon's stdout and stderr (files: the daemon must never hold a pipe we
    /// read to EOF).
    out_path: PathBuf,
    err_path: PathBuf,
    /// The detached daemon's fallback log file, `$XDG_CACHE_HOME/ftpsfs/ftpsfs.log`
    /// (written where there is no /dev/log; a `log_file=` option wins over it).
    log_path: PathBuf,
    /// Holds the mountpoint, spool and password file; removed after the unmount.
    _dir: tempfile::TempDir,
}

/// What a failed mount attempt said.
#[derive(Debug)]
pub struct MountFailure {
    pub code: Option<i32>,
    pub stderr: String,
}

/// How to mount; see [`Mount::builder`].
pub struct MountBuilder<'a> {
    srv: &'a Server,
    url: Option<String>,
    extra: String,
    password: String,
    mountpoint: Option<PathBuf>,
    envs: Vec<(String, std::ffi::OsString)>,
}

impl MountBuilder<'_> {
    /// Mount this URL instead of `srv.url()` (e.g. `srv.url_via(FORWARD_HOST)`). When
    /// its host is not 127.0.0.1 or localhost, the server's certificate (which names only
    /// those) is pinned with `fingerprint=`, unless the options already say
    /// `fingerprint=` or `insecure`.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// Extra `-o` options, comma-separated (appended after the defaults, so they win
    /// where ftpsfs takes the last value); may be called more than once.
    pub fn opts(mut self, extra: &str) -> Self {
        if !extra.is_empty() {
            if !self.extra.is_empty() {
                self.extra.push(',');
            }
            self.extra.push_str(extra);
        }
        self
    }

    /// Log in with this password (default: the right one).
    pub fn password(mut self, password: &str) -> Self {
        self.password = password.to_string();
        self
    }

    /// Mount on this (existing or not) path instead of a fresh directory.
    pub fn mountpoint(mut self, p: &Path) -> Self {
        self.mountpoint = Some(p.to_path_buf());
        self
    }

    /// Sets an environment variable for `ftpsfs` (and so for its detached daemon), e.g.
    /// `XDG_CACHE_HOME` to keep its fallback log file apart; may be called more than once.
    pub fn env(mut self, key: &str, val: impl AsRef<std::ffi::OsStr>) -> Self {
        self.envs
            .push((key.to_string(), val.as_ref().to_os_string()));
        self
    }

    /// Mounts; panics with ftpsfs's output and the server's log on failure.
    pub fn mount(self) -> Mount {
        let srv = self.srv;
        self.try_mount().unwrap_or_else(|f| {
            panic!(
                "mount failed ({:?}): {}\n--- server log (tail) ---\n{}",
                f.code,
                f.stderr,
                tail(&srv.log_contents(), 4000)
            )
        })
    }

    /// Runs `ftpsfs URL MNT -o ...` (without -f) and waits for it to exit. On success
    /// the mount is up and the daemon runs detached.
    pub fn try_mount(self) -> Result<Mount, MountFailure> {
        let srv = self.srv;
        let dir = scratch("mount-");
        let mnt = self
            .mountpoint
            .clone()
            .unwrap_or_else(|| dir.path().join("mnt"));
        if self.mountpoint.is_none() {
            fs::create_dir(&mnt).unwrap();
        }
        let spool = dir.path().join("spool");
        fs::create_dir(&spool).unwrap();
        let pw = dir.path().join("password");
        fs::write(&pw, format!("{}\n", self.password)).unwrap();
        fs::set_permissions(&pw, fs::Permissions::from_mode(0o600)).unwrap();
        let url = self.url.clone().unwrap_or_else(|| srv.url());
        let mut opts = format!(
            "cafile={},password_file={},spool_dir={},cache_timeout={CACHE_TIMEOUT}",
            srv.ca_file().display(),
            pw.display(),
            spool.display()
        );
        let named = |o: &str| {
            self.extra
                .split(',')
                .any(|x| x.split('=').next() == Some(o))
        };
        if !host_is_local(&url) && !named("fingerprint") && !named("insecure") {
            opts.push_str(",fingerprint=");
            opts.push_str(&srv.cert_fingerprint());
        }
        // Info and above in the log printed on a failure (FTPSFS_TEST_LOG_LEVEL
        // chooses another level when chasing a failure), unless the test chose its
        // log's level or file (tests of logging itself).
        if !named("log_level") && !named("debug") && !named("log_file") {
            let level = std::env::var("FTPSFS_TEST_LOG_LEVEL").unwrap_or_else(|_| "info".into());
            opts.push_str(&format!(",log_level={level}"));
        }
        if !self.extra.is_empty() {
            opts.push(',');
            opts.push_str(&self.extra);
        }
        // The detached daemon's log goes to a cache directory of this mount's own
        // (unless the test chose one), so a failing test can print it.
        let cache = match self.envs.iter().find(|(k, _)| k == "XDG_CACHE_HOME") {
            Some((_, v)) => PathBuf::from(v),
            None => {
                let c = dir.path().join("cache");
                fs::create_dir(&c).unwrap();
                c
            }
        };
        let log_path = cache.join("ftpsfs").join("ftpsfs.log");
        let out_path = dir.path().join("ftpsfs.out");
        let err_path = dir.path().join("ftpsfs.err");
        let mut child = Command::new(ftpsfs_bin())
            .arg(&url)
            .arg(&mnt)
            .arg("-o")
            .arg(&opts)
            .env("XDG_CACHE_HOME", &cache)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out_path).unwrap())
            .stderr(fs::File::create(&err_path).unwrap())
            .spawn()
            .expect("run ftpsfs");
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("ftpsfs did not detach within 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stderr = fs::read_to_string(&err_path).unwrap_or_default()
            + &fs::read_to_string(&out_path).unwrap_or_default();
        let mut m = Mount {
            daemon: pids_matching(&mnt.to_string_lossy()),
            mnt,
            spool,
            options: opts,
            url,
            unmounted: false,
            by_hand: false,
            out_path,
            err_path,
            log_path,
            _dir: dir,
        };
        if !status.success() {
            m.unmounted = true; // nothing to undo; but check nothing was left behind
            assert!(
                !is_mounted(&m.mnt),
                "failed mount left a mount behind: {stderr}"
            );
            return Err(MountFailure {
                code: status.code(),
                stderr,
            });
        }
        assert!(
            is_mounted(&m.mnt),
            "ftpsfs exited 0 but {} is not in /proc/mounts; stderr: {stderr}",
            m.mnt.display()
        );
        Ok(m)
    }
}

/// How much of a log a failing test prints: `default` bytes, or FTPSFS_TEST_LOG_TAIL
/// (with FTPSFS_TEST_LOG_LEVEL=debug, to see a whole run).
pub fn log_tail_bytes(default: usize) -> usize {
    std::env::var("FTPSFS_TEST_LOG_TAIL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Whether the URL's host is 127.0.0.1 or localhost (which the test certificate names).
fn host_is_local(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let hostport = rest.split('/').next().unwrap_or("");
    let hostport = hostport.rsplit_once('@').map_or(hostport, |(_, h)| h);
    let host = match hostport.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => hostport,
    };
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
}

impl Mount {
    /// How to mount `srv`: URL, options, password, mountpoint; then `.mount()`.
    pub fn builder(srv: &Server) -> MountBuilder<'_> {
        MountBuilder {
            srv,
            url: None,
            extra: String::new(),
            password: super::TEST_PASSWORD.to_string(),
            mountpoint: None,
            envs: Vec::new(),
        }
    }

    /// Mounts with the default options.
    pub fn new(srv: &Server) -> Mount {
        Mount::with(srv, "")
    }

    /// Mounts with the default options and `extra` (comma-separated, may be empty).
    pub fn with(srv: &Server, extra: &str) -> Mount {
        Mount::builder(srv).opts(extra).mount()
    }

    /// Mounts `url` (e.g. `srv.url_via(FORWARD_HOST)`) with `extra` options.
    pub fn via(srv: &Server, url: &str, extra: &str) -> Mount {
        Mount::builder(srv).url(url).opts(extra).mount()
    }

    /// Runs `ftpsfs URL MNT -o ...` (without -f) and waits for it to exit. On success
    /// the mount is up and the daemon runs detached. `mountpoint` overrides the
    /// mountpoint (e.g. a missing one).
    pub fn try_mount(
        srv: &Server,
        extra: &str,
        password: &str,
        mountpoint: Option<&Path>,
    ) -> Result<Mount, MountFailure> {
        let mut b = Mount::builder(srv).opts(extra).password(password);
        if let Some(p) = mountpoint {
            b = b.mountpoint(p);
        }
        b.try_mount()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Pids of the detached daemon (found once, when it was mounted).
    pub fn daemon_pids(&self) -> &[u32] {
        &self.daemon
    }

    /// The spool directory (`spool_dir=`), where writes wait for their upload.
    pub fn spool_dir(&self) -> &Path {
        &self.spool
    }

    /// Whether the mount is still in /proc/mounts.
    pub fn is_mounted(&self) -> bool {
        is_mounted(&self.mnt)
    }

    /// Whether any daemon process is still alive.
    pub fn daemon_alive(&self) -> bool {
        self.daemon.iter().any(|p| alive(*p))
    }

    /// Sends `sig` to every daemon process (e.g. `libc::SIGTERM`, `libc::SIGKILL`).
    pub fn signal(&self, sig: libc::c_int) {
        for p in &self.daemon {
            // SAFETY: signalling the daemon this test started.
            unsafe {
                libc::kill(*p as libc::pid_t, sig);
            }
        }
    }

    /// What the daemon wrote to stdout and stderr so far (its log, with `-o` options
    /// such as `debug` or `-d` if given; errors it logged in the background).
    pub fn daemon_output(&self) -> String {
        fs::read_to_string(&self.err_path).unwrap_or_default()
            + &fs::read_to_string(&self.out_path).unwrap_or_default()
    }

    /// The detached daemon's fallback log file (see [`Mount::log`]).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// What the detached daemon logged to its fallback log file so far (empty where
    /// a syslog daemon took it, or with `log_file=`).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// On a failing test: the daemon's output, the warnings and errors of its log,
    /// and the log's last lines.
    fn print_logs(&self) {
        let log = self.log();
        let notable: Vec<&str> = log
            .lines()
            .filter(|l| [" WARN ", " ERROR "].iter().any(|k| l.contains(k)))
            .collect();
        eprintln!(
            "--- ftpsfs on {}: output ---\n{}\n--- its log {}: warnings and errors ---\n{}\n\
             --- its log (tail) ---\n{}",
            self.mnt.display(),
            tail(&self.daemon_output(), 4000),
            self.log_path.display(),
            tail(&notable.join("\n"), 8000),
            tail(&log, log_tail_bytes(12_000))
        );
    }

    /// The test unmounted this mount itself (and may have mounted another on the
    /// same mountpoint): waits ≤10 s for the daemon to exit, and leaves the
    /// mountpoint alone from now on, dropped or not.
    pub fn unmounted_by_hand(&mut self) {
        self.unmounted = true;
        self.by_hand = true;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && self.daemon.iter().any(|p| alive(*p)) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `fusermount3 -u` (then `-uz`), then waits ≤10 s for the daemon to exit.
    pub fn unmount(&mut self) {
        if self.unmounted {
            return;
        }
        self.unmounted = true;
        if is_mounted(&self.mnt) {
            let ok = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.mnt)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                // Busy (or already gone): detach lazily so nothing stays behind.
                let _ = Command::new("fusermount3")
                    .arg("-uz")
                    .arg(&self.mnt)
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline
            && (self.daemon.iter().any(|p| alive(*p)) || is_mounted(&self.mnt))
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        for p in self.daemon.iter().filter(|p| alive(**p)) {
            eprintln!("ftpsfs daemon {p} still running 10 s after unmount: killing it");
            unsafe {
                libc::kill(*p as libc::pid_t, libc::SIGKILL);
            }
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        self.unmount();
        if !self.by_hand && is_mounted(&self.mnt) {
            // Keep the directory rather than recursing into a live mount.
            let _ = Command::new("fusermount3")
                .arg("-uz")
                .arg(&self.mnt)
                .status();
        }
    }
}

// ---------------------------------------------------------------------------
// Shell helpers

/// A work directory for local copies, with `sh` helpers that export $MNT, $ROOT, $W.
pub struct Env<'a> {
    pub srv: &'a Server,
    pub m: &'a Mount,
    pub w: tempfile::TempDir,
}

impl<'a> Env<'a> {
    pub fn new(srv: &'a Server, m: &'a Mount) -> Self {
        Env {
            srv,
            m,
            w: scratch("work-"),
        }
    }

    pub fn w(&self) -> &Path {
        self.w.path()
    }

    pub fn root(&self) -> &Path {
        &self.srv.root
    }

    pub fn sh(&self, script: &str) -> Output {
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .env("MNT", &self.m.mnt)
            .env("ROOT", &self.srv.root)
            .env("W", self.w.path())
            .env("TZ", "UTC")
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .output()
            .expect("run sh")
    }

    /// Runs `script` and asserts exit status 0; returns stdout.
    #[track_caller]
    pub fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        if !out.status.success() {
            panic!(
                "[{}] `{script}` failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- server log (tail) ---\n{}",
                self.srv.spec.kind.name(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                tail(&self.srv.log_contents(), 3000)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

// ---------------------------------------------------------------------------
// A program holding a file open

/// A separate process (python3) that writes a local file's bytes into a file on the
/// mount (second half first, so nothing is streamed), then keeps it open until told
/// to close it. A separate process, because a file held by the test process itself
/// gets FUSE flushes whenever another test thread forks and execs (the child's copy
/// of the descriptor is closed at exec), and a flush uploads.
pub struct HeldWriter {
    child: std::process::Child,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

const HELD_WRITER: &str = r#"
import os, sys
src, dst = sys.argv[1], sys.argv[2]
data = open(src, 'rb').read()
fd = os.open(dst, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
def put(buf, off):
    while buf:
        n = os.pwrite(fd, buf, off)
        buf, off = buf[n:], off + n
half = len(data) // 2
put(data[half:], half)
put(data[:half], 0)
print("written", flush=True)
sys.stdin.readline()
ok = os.pread(fd, 4096, 0) == data[:4096]
try:
    os.close(fd)
    print("closed" if ok else "bad-read", flush=True)
except OSError as e:
    print("close-failed %d" % e.errno, flush=True)
"#;

impl HeldWriter {
    /// Starts writing `src` into `dst`; returns once the data is written.
    pub fn start(src: &Path, dst: &Path) -> HeldWriter {
        use std::io::BufRead;
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(HELD_WRITER)
            .arg(src)
            .arg(dst)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("writer output");
        assert_eq!(line.trim(), "written", "the writer failed");
        HeldWriter { child, stdout }
    }

    /// Reads back the head, closes the file, and says how that went: "closed",
    /// "bad-read" or "close-failed ERRNO".
    pub fn close(mut self) -> String {
        use std::io::{BufRead, Write};
        if let Some(mut i) = self.child.stdin.take() {
            let _ = i.write_all(b"close\n");
        }
        let mut line = String::new();
        let _ = self.stdout.read_line(&mut line);
        let _ = self.child.wait();
        line.trim().to_string()
    }
}

impl Drop for HeldWriter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SHA-256 of `d`, in hex.
pub fn sha256(d: &[u8]) -> String {
    openssl::sha::sha256(d)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ---------------------------------------------------------------------------
// A small disk

/// A tmpfs of `mib` MiB (a small or full `spool_dir`), unmounted on drop.
pub struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    pub fn new(mib: u32) -> SmallDisk {
        let dir = scratch("small-disk-");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mounting a tmpfs (the tests run as root)");
        SmallDisk { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    fn statvfs(path: &Path) -> libc::statvfs {
        // SAFETY: an all-zero statvfs is a valid value to be filled in.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: statvfs on a valid path into a zeroed struct.
        unsafe { libc::statvfs(c.as_ptr(), &mut st) };
        st
    }

    /// Bytes free for an unprivileged writer.
    pub fn free(&self) -> u64 {
        let st = Self::statvfs(self.path());
        st.f_bavail * st.f_frsize
    }

    /// Bytes in use on the file system holding `path`.
    pub fn used(path: &Path) -> u64 {
        let st = Self::statvfs(path);
        (st.f_blocks - st.f_bfree) * st.f_frsize
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
