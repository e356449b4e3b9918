//! Test harness: real FTPS servers (proftpd, vsftpd, pyftpdlib, pure-ftpd) on loopback.
//!
//! Use from an integration test with `mod support;`, or from an example with
//! `#[path = "../tests/support/mod.rs"] mod support;`.
//!
//! ```ignore
//! let srv = support::start(support::ServerSpec::proftpd());            // explicit FTPS
//! let srv = support::start(support::ServerSpec::vsftpd().implicit(true));
//! let srv = support::start(
//!     support::ServerSpec::proftpd()
//!         .client_cert_required(true)
//!         .server_cert(support::CertChoice::Expired)
//!         .tls_protocol(support::TlsProtocol::Tls13Only),
//! );
//! let ca = &support::pki().ca_cert;          // trust this CA
//! std::fs::write(srv.root.join("hello.txt"), b"hi").unwrap(); // seen as /hello.txt
//! // srv.host ("127.0.0.1"), srv.port, srv.user, srv.password, srv.url()
//! // drop(srv) kills the server (whole process group) and deletes its dirs.
//! ```
//!
//! # API
//! * `pki() -> &'static Pki`: CA + server certs (good, expired, not yet valid, wrong
//!   host, untrusted CA) + client cert/key (plain and encrypted PKCS#8), generated once
//!   per process with the `openssl` crate. `sha256_fingerprint(&Path) -> String`.
//! * `TEST_USER`, `TEST_PASSWORD`: the login for every server. `test_user()` creates
//!   the system user `ftpsfs-test` (flock-protected, idempotent) and the PAM service
//!   `/etc/pam.d/ftpsfs-test-vsftpd`; `start` calls it for you.
//! * `ServerSpec` (+ builder methods), `start(ServerSpec) -> Server`.
//! * `Server { spec, host, port, pasv_ports, root, user, password, conf_dir,
//!   startup_time }`, `url()`, `log_contents()`, `is_running()`, `stop()`.
//! * Faults: `kill()` (SIGKILL, no grace), `restart()` (stop, then start again on the
//!   same ports with the same root and config; waits until it answers), `url_via(host)`,
//!   `cert_fingerprint()`, `forward_ports()`, `forwarder(one_way_delay)`: a
//!   [`forwarder::Forwarder`] on [`FORWARD_HOST`] (127.0.0.2) with fault controls
//!   (cut data connections after N bytes by RST or FIN, cut everything, stall, refuse
//!   new connections, rate limit); see tests/support/forwarder.rs.
//! * [`mount`]: the `Mount` guard for the `ftpsfs` binary (any URL and options, daemon
//!   pids, spool dir) and shell helpers for e2e tests; see tests/support/mount.rs.
//!
//! # What each server supports
//! | spec field               | proftpd                    | vsftpd                               | pyftpdlib                 | pure-ftpd                |
//! |--------------------------|----------------------------|--------------------------------------|---------------------------|--------------------------|
//! | `implicit`               | `UseImplicitSSL`           | `implicit_ssl=YES`                   | not supported (panics)    | not supported (panics)   |
//! | `tls_required=On`        | `TLSRequired on`           | force ssl logins + data              | control + data required   | `-Y 3`                   |
//! | `tls_required=AuthData`  | `auth+data` (CCC allowed)  | not supported (panics)               | not supported (panics)    | not supported (panics)   |
//! | `tls_required=Ctrl`      | `ctrl` (PROT C allowed)    | `force_local_data_ssl=NO`            | `tls_data_required=False` | `-Y 2`                   |
//! | `client_cert_required`   | `TLSVerifyClient on`       | `require_cert`+`validate_cert`       | `VERIFY_PEER|FAIL_IF_NO..`| not supported (panics)   |
//! | `tls_protocol`           | `TLSProtocol TLSv1.x`      | via `OPENSSL_CONF` Min/MaxProtocol   | min/max proto version     | via `OPENSSL_CONF`       |
//! | `tls_enabled=false`      | `TLSEngine off`            | `ssl_enable=NO`                      | plain `FTPHandler`        | `-Y 0`                   |
//! | `session_reuse_required` | `NoSessionReuseRequired`   | `require_ssl_reuse`                  | never enforced (ignored)  | never enforced (ignored) |
//! | `reorder_replies`        | panics                     | panics                               | slow replies 50 ms late   | panics                   |
//!
//! pure-ftpd (unpacked under /opt/ftpsfs-servers/pure-ftpd, it conflicts with proftpd as
//! a package) logs in a virtual user from a puredb file made with `pure-pw mkdb` (a
//! SHA-512 crypt hash: argon2 takes seconds per login), chrooted to the root (`/./`),
//! with dot files shown (`-D`); its 220 greeting carries the token through a
//! "fortune" file (`-F`). It logs to syslog only (none here): the harness keeps its
//! transfer log (`-O clf:`). No CCC, no implicit mode.
//!
//! # Notes
//! * Ports: each server reserves a block of 20 loopback ports in 20000..32000 (below the
//!   kernel's ephemeral range): control port + 16 passive ports. A block is reserved
//!   with an flock'ed file under `/tmp/ftpsfs-test-ports/` (held while the `Server`
//!   lives) and probed by binding, so parallel threads and processes don't collide;
//!   a server that fails to start is retried on another block.
//! * Readiness: explicit/plain servers must send a 220 greeting with a unique token;
//!   implicit ones must complete a TLS handshake (no verification) and then send it.
//! * Processes: each server runs in its own process group (killed as a group on drop)
//!   with `PR_SET_PDEATHSIG=SIGKILL`. Children are spawned from one long-lived helper
//!   thread, because PDEATHSIG fires when the *thread* that forked exits; so a server
//!   kept in a `static` outlives the test thread that started it.
//! * Files: everything lives under `/tmp/ftpsfs-test.<pid>/` (0755); such directories
//!   of dead processes are removed when a new process starts using the harness.
//! * proftpd and vsftpd sessions run as `ftpsfs-test`, and pyftpdlib runs as that user
//!   too, so files uploaded through FTP are owned by it and permission checks apply.
//!   The system user's home is `/` (vsftpd changes into it before `local_root`).
//!
//! # Known limitations
//! * Needs root (useradd, chown, chroot in proftpd/vsftpd) and the binaries installed
//!   by `.ci/install-deps`.
//! * A server kept in a `static` is never dropped: at process exit PDEATHSIG kills its
//!   main process, but proftpd/vsftpd session processes live on until their client
//!   disconnects, and its directories stay until the next harness process cleans them.
//! * curl 7.88's TLS 1.3 uploads to vsftpd often end in `426` (curl closes the data
//!   connection without close_notify); the self-test pins curl to TLS 1.2 for vsftpd.
//! * pyftpdlib: no implicit mode, no CCC, never requires data-session reuse.
#![allow(dead_code)]

pub mod forwarder;
pub mod mount;
pub mod pki;
mod servers;

#[allow(unused_imports)]
pub use pki::{pki, sha256_fingerprint, Pki, CLIENT_KEY_PASSPHRASE};

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::ops::RangeInclusive;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Login name on every test server (a real system user: vsftpd needs one).
pub const TEST_USER: &str = "ftpsfs-test";
/// Password of [`TEST_USER`] on every test server.
pub const TEST_PASSWORD: &str = "ftpsfs-Test-Pass-4217";
/// Address every test server listens on.
pub const HOST: &str = "127.0.0.1";
/// Address a [`Server::forwarder`] listens on (same ports as the server).
pub const FORWARD_HOST: &str = "127.0.0.2";
/// Home directory of [`TEST_USER`] in /etc/passwd (vsftpd needs an existing one; the FTP
/// root is set per server, this is never written to).
const TEST_USER_HOME: &str = "/";

pub const PROFTPD_BIN: &str = "/usr/sbin/proftpd";
pub const PROFTPD_MODULE_PATH: &str = "/usr/lib/proftpd";
pub const VSFTPD_BIN: &str = "/opt/ftpsfs-servers/vsftpd/usr/sbin/vsftpd";
pub const PYTHON_BIN: &str = "/opt/ftpsfs-servers/pyenv/bin/python";
pub const PURE_FTPD_BIN: &str = "/opt/ftpsfs-servers/pure-ftpd/usr/sbin/pure-ftpd";
pub const PURE_PW_BIN: &str = "/opt/ftpsfs-servers/pure-ftpd/usr/bin/pure-pw";
pub const PAM_SERVICE: &str = "ftpsfs-test-vsftpd";

const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
const START_ATTEMPTS: usize = 4;

// ---------------------------------------------------------------------------
// Spec

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    Proftpd,
    Vsftpd,
    Pyftpdlib,
    PureFtpd,
}

impl ServerKind {
    pub const ALL: [ServerKind; 4] = [
        ServerKind::Proftpd,
        ServerKind::Vsftpd,
        ServerKind::Pyftpdlib,
        ServerKind::PureFtpd,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ServerKind::Proftpd => "proftpd",
            ServerKind::Vsftpd => "vsftpd",
            ServerKind::Pyftpdlib => "pyftpdlib",
            ServerKind::PureFtpd => "pure-ftpd",
        }
    }

    pub fn parse(s: &str) -> Option<ServerKind> {
        ServerKind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s))
    }

    /// Whether the server supports implicit FTPS.
    pub fn supports_implicit(self) -> bool {
        matches!(self, ServerKind::Proftpd | ServerKind::Vsftpd)
    }
}

/// What the server insists on being protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsRequired {
    /// Control and data must use TLS; CCC and PROT C refused.
    On,
    /// proftpd `auth+data`: login and data protected, CCC accepted afterwards.
    AuthData,
    /// Control must use TLS; PROT C (clear data) accepted.
    Ctrl,
}

/// Which certificate the server presents (see [`Pki`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertChoice {
    Good,
    Expired,
    NotYetValid,
    WrongHost,
    Untrusted,
}

impl CertChoice {
    /// (certificate, key) paths for this choice.
    pub fn paths(self) -> (&'static Path, &'static Path) {
        let p = pki();
        match self {
            CertChoice::Good => (&p.server_cert, &p.server_key),
            CertChoice::Expired => (&p.expired_cert, &p.expired_key),
            CertChoice::NotYetValid => (&p.notyet_cert, &p.notyet_key),
            CertChoice::WrongHost => (&p.wronghost_cert, &p.wronghost_key),
            CertChoice::Untrusted => (&p.untrusted_cert, &p.untrusted_key),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsProtocol {
    Tls12Only,
    Tls13Only,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    pub kind: ServerKind,
    /// Implicit FTPS (TLS from the first byte). Not for pyftpdlib.
    pub implicit: bool,
    pub tls_required: TlsRequired,
    pub client_cert_required: bool,
    pub server_cert: CertChoice,
    /// `None`: the server's default (TLS 1.2 and 1.3).
    pub tls_protocol: Option<TlsProtocol>,
    /// `false`: plain FTP server whose `AUTH TLS` is refused.
    pub tls_enabled: bool,
    /// Require data connections to resume the control connection's TLS session.
    pub session_reuse_required: bool,
    /// proftpd only: RNFR/RNTO refused (an account without rename permission).
    pub deny_rename: bool,
    /// proftpd only: at most this many simultaneous logins of the test user.
    pub max_clients_per_user: Option<u32>,
    /// proftpd only: `AllowStoreRestart` (REST before STOR; off in proftpd's own
    /// default configuration, on here unless turned off).
    pub store_restart: bool,
    /// pyftpdlib only: answer like an asynchronous server, whose storage commands
    /// (MKD, RMD, DELE, RNTO, CWD, SIZE, MDTM, SITE, MFMT) reply 50 ms late, so that a
    /// command pipelined behind one of them (EPSV) is answered first.
    pub reorder_replies: bool,
}

impl ServerSpec {
    pub fn new(kind: ServerKind) -> Self {
        ServerSpec {
            kind,
            implicit: false,
            tls_required: TlsRequired::On,
            client_cert_required: false,
            server_cert: CertChoice::Good,
            tls_protocol: None,
            tls_enabled: true,
            session_reuse_required: true,
            deny_rename: false,
            max_clients_per_user: None,
            store_restart: true,
            reorder_replies: false,
        }
    }
    pub fn proftpd() -> Self {
        Self::new(ServerKind::Proftpd)
    }
    pub fn vsftpd() -> Self {
        Self::new(ServerKind::Vsftpd)
    }
    pub fn pyftpdlib() -> Self {
        Self::new(ServerKind::Pyftpdlib)
    }
    pub fn pure_ftpd() -> Self {
        Self::new(ServerKind::PureFtpd)
    }
    pub fn implicit(mut self, on: bool) -> Self {
        self.implicit = on;
        self
    }
    pub fn tls_required(mut self, r: TlsRequired) -> Self {
        self.tls_required = r;
        self
    }
    pub fn client_cert_required(mut self, on: bool) -> Self {
        self.client_cert_required = on;
        self
    }
    pub fn server_cert(mut self, c: CertChoice) -> Self {
        self.server_cert = c;
        self
    }
    pub fn tls_protocol(mut self, p: TlsProtocol) -> Self {
        self.tls_protocol = Some(p);
        self
    }
    pub fn tls_enabled(mut self, on: bool) -> Self {
        self.tls_enabled = on;
        self
    }
    pub fn session_reuse_required(mut self, on: bool) -> Self {
        self.session_reuse_required = on;
        self
    }
    pub fn deny_rename(mut self, on: bool) -> Self {
        self.deny_rename = on;
        self
    }
    pub fn store_restart(mut self, on: bool) -> Self {
        self.store_restart = on;
        self
    }
    pub fn reorder_replies(mut self, on: bool) -> Self {
        self.reorder_replies = on;
        self
    }
    pub fn max_clients_per_user(mut self, n: u32) -> Self {
        self.max_clients_per_user = Some(n);
        self
    }

    /// Panics with a clear message for combinations the server cannot do.
    fn validate(&self) {
        let k = self.kind.name();
        assert!(
            self.kind == ServerKind::Proftpd
                || (!self.deny_rename && self.max_clients_per_user.is_none()),
            "ServerSpec: deny_rename and max_clients_per_user are for proftpd"
        );
        assert!(
            !(self.kind == ServerKind::PureFtpd && self.client_cert_required),
            "ServerSpec: client certificates are not set up for pure-ftpd"
        );
        assert!(
            !self.reorder_replies || self.kind == ServerKind::Pyftpdlib,
            "ServerSpec: reorder_replies is for pyftpdlib"
        );
        assert!(
            !self.implicit || self.tls_enabled,
            "ServerSpec: implicit FTPS needs tls_enabled"
        );
        assert!(
            !self.implicit || self.kind.supports_implicit(),
            "ServerSpec: {k} has no implicit FTPS mode"
        );
        assert!(
            !(self.tls_required == TlsRequired::AuthData && self.kind != ServerKind::Proftpd),
            "ServerSpec: TlsRequired::AuthData (CCC) is only supported by proftpd, not {k}"
        );
    }
}

// ---------------------------------------------------------------------------
// Server

pub struct Server {
    pub spec: ServerSpec,
    /// Always "127.0.0.1".
    pub host: &'static str,
    pub port: u16,
    pub pasv_ports: RangeInclusive<u16>,
    /// On-disk directory the FTP user sees as `/` (owned by `ftpsfs-test`, 0755).
    pub root: PathBuf,
    pub user: &'static str,
    pub password: &'static str,
    /// Directory with the server's config and log files.
    pub conf_dir: PathBuf,
    /// How long starting this server took (including retries; excluding the one-time
    /// PKI and user setup).
    pub startup_time: Duration,
    child: Option<Child>,
    log_files: Vec<PathBuf>,
    /// Greeting token of this server (kept across restarts: same config).
    token: String,
    /// How many times `restart` started it again.
    restarts: u32,
    _ports: PortBlock,
    _root_dir: tempfile::TempDir,
    _conf_dir: tempfile::TempDir,
}

impl Server {
    /// `ftp://ftpsfs-test@127.0.0.1:PORT/` (explicit or plain) or `ftps://...` (implicit).
    pub fn url(&self) -> String {
        let scheme = if self.spec.implicit { "ftps" } else { "ftp" };
        format!("{scheme}://{}@{}:{}/", self.user, self.host, self.port)
    }

    /// `SocketAddr` of the control port.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// CA file that verifies the server's certificate (unless `Untrusted` was chosen).
    pub fn ca_file(&self) -> &'static Path {
        &pki().ca_cert
    }

    /// The server's config file(s) and all of its logs (stdout, stderr, server/TLS/transfer
    /// logs), concatenated with `==> path <==` headers.
    pub fn log_contents(&self) -> String {
        collect_logs(&self.log_files)
    }

    /// Whether the server's main process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kill the server and all of its session processes (also done on drop): SIGTERM
    /// to the process group, SIGKILL after a second. Files and config stay; `restart`
    /// starts it again.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            kill_group(child);
        }
    }

    /// Crash the server: SIGKILL its whole process group (main process and sessions) at
    /// once, no grace period, and reap it. Files and config stay; `restart` starts it
    /// again. Open connections see the kernel close them (FIN, or RST with unread data).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling the process group of a child we spawned and have not reaped.
            unsafe {
                libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
            }
            let _ = child.wait();
        }
    }

    /// Stop the server (as `stop` does, if it runs) and start it again with the same spec,
    /// ports, root directory (files kept) and config; returns once it accepts connections.
    /// The logs of the earlier runs stay in `log_contents()`. Panics (with the logs) if it
    /// does not come back.
    pub fn restart(&mut self) {
        self.stop();
        // Keep what the earlier run logged: preparing the config truncates the logs.
        let earlier = self.conf_dir.join("earlier-runs.log");
        let logs = collect_logs(
            &self
                .log_files
                .iter()
                .filter(|f| **f != earlier)
                .cloned()
                .collect::<Vec<_>>(),
        );
        if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(&earlier) {
            let _ = writeln!(f, "######## run {} ########\n{logs}", self.restarts + 1);
        }
        self.restarts += 1;
        let user = test_user();
        let mut failures = String::new();
        for attempt in 1..=START_ATTEMPTS {
            let ctx = servers::Ctx {
                spec: &self.spec,
                conf_dir: &self.conf_dir,
                root: &self.root,
                port: self.port,
                pasv: self.pasv_ports.clone(),
                token: &self.token,
                user,
            };
            let (mut child, mut log_files) = launch(&ctx);
            log_files.insert(0, earlier.clone());
            self.log_files = log_files;
            match wait_ready(&self.spec, self.port, &self.token, &mut child) {
                Ok(()) => {
                    self.child = Some(child);
                    return;
                }
                Err(e) => {
                    kill_group(child);
                    failures.push_str(&format!(
                        "--- restart attempt {attempt}: {e}\n{}",
                        self.log_contents()
                    ));
                    // The old sessions may still hold the port for a moment.
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
        }
        panic!(
            "{} server did not restart on port {}:\n{failures}",
            self.spec.kind.name(),
            self.port
        );
    }

    /// The URL with another host, e.g. a forwarder's `127.0.0.2` ([`FORWARD_HOST`]):
    /// `ftp://ftpsfs-test@HOST:PORT/` (or `ftps://`). Note that the server's certificate
    /// names only 127.0.0.1, ::1 and localhost: through another address, pin it
    /// (`fingerprint=`, see [`Server::cert_fingerprint`]) or use the name `localhost`.
    pub fn url_via(&self, host: &str) -> String {
        let scheme = if self.spec.implicit { "ftps" } else { "ftp" };
        format!("{scheme}://{}@{host}:{}/", self.user, self.port)
    }

    /// `sha256:HEX` of the certificate the server presents, for `fingerprint=`.
    pub fn cert_fingerprint(&self) -> String {
        format!(
            "sha256:{}",
            sha256_fingerprint(self.spec.server_cert.paths().0)
        )
    }

    /// The ports a forwarder must carry: the control port first, then the passive ports.
    pub fn forward_ports(&self) -> Vec<u16> {
        std::iter::once(self.port)
            .chain(self.pasv_ports.clone())
            .collect()
    }

    /// A [`forwarder::Forwarder`] listening on [`FORWARD_HOST`] (127.0.0.2) for the
    /// control and passive ports of this server; reach it with `url_via(FORWARD_HOST)`.
    pub fn forwarder(&self, one_way_delay: Duration) -> forwarder::Forwarder {
        forwarder::Forwarder::start(
            FORWARD_HOST.parse().unwrap(),
            Ipv4Addr::LOCALHOST,
            &self.forward_ports(),
            one_way_delay,
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        // A failing test shows what the server saw (its protocol log's tail).
        if std::thread::panicking() {
            eprintln!(
                "--- {:?} server log (tail) ---\n{}",
                self.spec.kind,
                mount::tail(&self.log_contents(), mount::log_tail_bytes(8_000))
            );
        }
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("spec", &self.spec)
            .field("url", &self.url())
            .field("root", &self.root)
            .field("conf_dir", &self.conf_dir)
            .finish()
    }
}

fn collect_logs(files: &[PathBuf]) -> String {
    let mut out = String::new();
    for f in files {
        if let Ok(data) = fs::read(f) {
            out.push_str(&format!("==> {} <==\n", f.display()));
            out.push_str(&String::from_utf8_lossy(&data));
            if !out.ends_with('\n') {
                out.push('\n');
            }
        }
    }
    out
}

/// SIGTERM the process group, give it a second, then SIGKILL the group and reap.
/// The group is killed before the leader is reaped so that its pgid cannot have been reused.
fn kill_group(mut child: Child) {
    let pgid = child.id() as libc::pid_t;
    unsafe {
        libc::kill(-pgid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline && !exited_without_reaping(pgid) {
        std::thread::sleep(Duration::from_millis(10));
    }
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
    let _ = child.wait();
}

fn exited_without_reaping(pid: libc::pid_t) -> bool {
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let r = libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        r == 0 && info.si_pid() != 0
    }
}

// ---------------------------------------------------------------------------
// start

static SERVER_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Start a server as described by `spec`; panics (with the server's logs) on failure.
pub fn start(spec: ServerSpec) -> Server {
    spec.validate();
    let user = test_user();
    let _ = pki();
    let t0 = Instant::now();
    let pdir = process_dir();
    let n = SERVER_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tag = format!("{}-{}", spec.kind.name(), n);

    let conf_tmp = tempfile::Builder::new()
        .prefix(&format!("conf-{tag}-"))
        .tempdir_in(pdir)
        .expect("create conf dir");
    fs::set_permissions(conf_tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let root_tmp = tempfile::Builder::new()
        .prefix(&format!("root-{tag}-"))
        .tempdir_in(pdir)
        .expect("create root dir");
    fs::set_permissions(root_tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    chown(root_tmp.path(), user.uid, user.gid);
    let conf_dir = conf_tmp.path().to_path_buf();
    let root = root_tmp.path().to_path_buf();

    let mut failures = String::new();
    let mut prev_block: Option<PortBlock> = None;
    for attempt in 1..=START_ATTEMPTS {
        let ports = reserve_ports();
        drop(prev_block.take()); // keep the failed block locked until we hold another one
        let token = format!("ftpsfs-{}-{}-{}", std::process::id(), n, attempt);
        let ctx = servers::Ctx {
            spec: &spec,
            conf_dir: &conf_dir,
            root: &root,
            port: ports.ctrl,
            pasv: ports.pasv.clone(),
            token: &token,
            user,
        };
        let (child, log_files) = launch(&ctx);
        let mut child = Some(child);
        match wait_ready(&spec, ports.ctrl, &token, child.as_mut().unwrap()) {
            Ok(()) => {
                return Server {
                    spec,
                    host: HOST,
                    port: ports.ctrl,
                    pasv_ports: ports.pasv.clone(),
                    root,
                    user: TEST_USER,
                    password: TEST_PASSWORD,
                    conf_dir,
                    startup_time: t0.elapsed(),
                    child,
                    log_files,
                    token,
                    restarts: 0,
                    _ports: ports,
                    _root_dir: root_tmp,
                    _conf_dir: conf_tmp,
                };
            }
            Err(e) => {
                let exited = child
                    .as_mut()
                    .map(|c| matches!(c.try_wait(), Ok(Some(_))))
                    .unwrap_or(true);
                kill_group(child.take().unwrap());
                failures.push_str(&format!(
                    "--- attempt {attempt} (port {}, pasv {:?}): {e}\n{}",
                    ports.ctrl,
                    ports.pasv,
                    collect_logs(&log_files)
                ));
                prev_block = Some(ports);
                // A server that is still running but never answered is not a port problem.
                if !exited {
                    break;
                }
            }
        }
    }
    panic!(
        "{} server ({spec:?}) did not start in {conf_dir:?}:\n{failures}",
        spec.kind.name()
    );
}

/// Writes the server's config (`servers::prepare`) and spawns it in its own process
/// group, with stdout/stderr to files in the config dir; returns it and its log files.
fn launch(ctx: &servers::Ctx) -> (Child, Vec<PathBuf>) {
    let spec = ctx.spec;
    let conf_dir = ctx.conf_dir;
    let prepared = servers::prepare(ctx);
    let stdout_path = conf_dir.join("stdout.log");
    let stderr_path = conf_dir.join("stderr.log");
    let mut log_files = vec![stdout_path.clone(), stderr_path.clone()];
    log_files.extend(prepared.log_files.iter().cloned());

    let mut cmd = prepared.command;
    cmd.stdin(Stdio::null())
        .stdout(File::create(&stdout_path).expect("stdout log"))
        .stderr(File::create(&stderr_path).expect("stderr log"))
        .current_dir(conf_dir)
        .process_group(0);
    let parent = std::process::id() as libc::pid_t;
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(io::Error::other("parent died"));
            }
            Ok(())
        });
    }
    let child = spawn_on_keeper_thread(cmd)
        .unwrap_or_else(|e| panic!("spawning {} failed: {e}", spec.kind.name()));
    (child, log_files)
}

fn wait_ready(spec: &ServerSpec, port: u16, token: &str, child: &mut Child) -> Result<(), String> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut last_err = String::from("never connected");
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("server exited early with {status}"));
        }
        if Instant::now() >= deadline {
            return Err(format!("not ready after {STARTUP_TIMEOUT:?}: {last_err}"));
        }
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(s) => {
                let r = if spec.implicit {
                    probe_implicit(s, spec)
                } else {
                    probe_plain(s)
                };
                match r {
                    Ok(greeting) if greeting.contains(token) => return Ok(()),
                    Ok(greeting) => {
                        return Err(format!(
                            "port {port} answered with someone else's greeting: {greeting:?}"
                        ))
                    }
                    Err(e) => last_err = format!("probe: {e}"),
                }
            }
            Err(e) => last_err = format!("connect: {e}"),
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Reads the (possibly multi-line) 220 greeting, returns it whole, then sends QUIT.
fn read_greeting<S: Read + Write>(s: S) -> io::Result<String> {
    let mut r = BufReader::new(s);
    let mut all = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("EOF after {all:?}"),
            ));
        }
        all.push_str(&line);
        if all.len() > 8192 {
            return Err(io::Error::other("greeting too long"));
        }
        let b = line.as_bytes();
        if b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit) && b[3] == b' ' {
            break;
        }
    }
    if !all.starts_with("220") {
        return Err(io::Error::other(format!("unexpected greeting {all:?}")));
    }
    let _ = r.get_mut().write_all(b"QUIT\r\n");
    Ok(all)
}

fn probe_plain(s: TcpStream) -> io::Result<String> {
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.set_write_timeout(Some(Duration::from_secs(3)))?;
    read_greeting(s)
}

fn probe_implicit(s: TcpStream, spec: &ServerSpec) -> io::Result<String> {
    use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode};
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.set_write_timeout(Some(Duration::from_secs(3)))?;
    let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(io::Error::other)?;
    b.set_verify(SslVerifyMode::NONE);
    if spec.client_cert_required {
        let p = pki();
        b.set_certificate_file(&p.client_cert, SslFiletype::PEM)
            .map_err(io::Error::other)?;
        b.set_private_key_file(&p.client_key, SslFiletype::PEM)
            .map_err(io::Error::other)?;
    }
    let conn = b.build();
    let cfg = conn
        .configure()
        .map_err(io::Error::other)?
        .verify_hostname(false)
        .use_server_name_indication(false);
    let tls = cfg
        .connect("localhost", s)
        .map_err(|e| io::Error::other(e.to_string()))?;
    read_greeting(tls)
}

// ---------------------------------------------------------------------------
// Children are spawned from one long-lived thread: PR_SET_PDEATHSIG fires when the
// thread that forked the child exits, which for a test thread is at the end of the test.

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

fn spawn_on_keeper_thread(cmd: Command) -> io::Result<Child> {
    static KEEPER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let tx = KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("ftpsfs-test-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawner thread");
        Mutex::new(tx)
    });
    let (rtx, rrx) = mpsc::channel();
    tx.lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, rtx))
        .expect("spawner thread gone");
    rrx.recv().expect("spawner thread gone")
}

// ---------------------------------------------------------------------------
// Ports

const PORT_BASE: u16 = 20000;
const PORT_BLOCK: u16 = 20;
const PORT_BLOCKS: u16 = 600; // 20000..32000, below the ephemeral range (32768..)
const PASV_COUNT: u16 = 16;

/// A reserved block of loopback ports; the flock is released on drop.
struct PortBlock {
    _lock: File,
    ctrl: u16,
    pasv: RangeInclusive<u16>,
}

fn reserve_ports() -> PortBlock {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = Path::new("/tmp/ftpsfs-test-ports");
    fs::create_dir_all(dir).expect("create port lock dir");
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let seed = std::process::id().wrapping_mul(7919) ^ nanos;
    let step = NEXT.fetch_add(1, Ordering::Relaxed);
    let start = seed.wrapping_add(step.wrapping_mul(37)) % u32::from(PORT_BLOCKS);
    for i in 0..u32::from(PORT_BLOCKS) {
        let idx = ((start + i) % u32::from(PORT_BLOCKS)) as u16;
        let base = PORT_BASE + idx * PORT_BLOCK;
        let lock = match OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("{base}.lock")))
        {
            Ok(f) => f,
            Err(_) => continue,
        };
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            continue;
        }
        let all_free =
            (base..base + PORT_BLOCK).all(|p| TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok());
        if all_free {
            return PortBlock {
                _lock: lock,
                ctrl: base,
                pasv: base + 1..=base + PASV_COUNT,
            };
        }
    }
    panic!("no free block of {PORT_BLOCK} loopback ports in {PORT_BASE}..");
}

// ---------------------------------------------------------------------------
// Per-process directory

/// `/tmp/ftpsfs-test.<pid>` (0755). Directories of dead processes are removed the first
/// time this is called in a process.
pub fn process_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let tmp = PathBuf::from("/tmp");
        if let Ok(entries) = fs::read_dir(&tmp) {
            for e in entries.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if let Some(pid) = name
                    .strip_prefix("ftpsfs-test.")
                    .and_then(|p| p.parse::<i32>().ok())
                {
                    let alive = unsafe { libc::kill(pid, 0) } == 0
                        || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
                    if !alive {
                        let _ = fs::remove_dir_all(e.path());
                    }
                }
            }
        }
        let dir = tmp.join(format!("ftpsfs-test.{}", std::process::id()));
        fs::create_dir_all(&dir).expect("create process dir");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod process dir");
        dir
    })
}

// ---------------------------------------------------------------------------
// System user

#[derive(Debug, Clone)]
pub struct TestUser {
    pub name: &'static str,
    pub uid: u32,
    pub gid: u32,
}

/// Creates (if missing) the system user [`TEST_USER`] with [`TEST_PASSWORD`] and the PAM
/// service file for vsftpd. Idempotent; serialized across processes with an flock.
pub fn test_user() -> &'static TestUser {
    static USER: OnceLock<TestUser> = OnceLock::new();
    USER.get_or_init(|| {
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/tmp/ftpsfs-test-user.lock")
            .expect("open user lock file");
        assert_eq!(
            unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) },
            0,
            "flock"
        );

        if lookup_user(TEST_USER).is_none() {
            let out = Command::new("useradd")
                .args([
                    "--system",
                    "--user-group",
                    "--no-create-home",
                    "--home-dir",
                    TEST_USER_HOME,
                    "--shell",
                    "/usr/sbin/nologin",
                    TEST_USER,
                ])
                .output()
                .expect("run useradd");
            assert!(
                out.status.success() || lookup_user(TEST_USER).is_some(),
                "useradd failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let (uid, gid, home) = lookup_user(TEST_USER).expect("user exists after useradd");
        if home != TEST_USER_HOME {
            // vsftpd changes into the home directory before local_root: it must exist.
            let out = Command::new("usermod")
                .args(["--home", TEST_USER_HOME, TEST_USER])
                .output()
                .expect("run usermod");
            assert!(
                out.status.success(),
                "usermod failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }

        let mut chpasswd = Command::new("chpasswd")
            .args(["-c", "SHA512"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run chpasswd");
        chpasswd
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{TEST_USER}:{TEST_PASSWORD}\n").as_bytes())
            .unwrap();
        let out = chpasswd.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "chpasswd failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        let pam = "#%PAM-1.0\n# written by the ftpsfs test harness (tests/support)\n\
                   auth     required pam_unix.so\n\
                   account  required pam_unix.so\n\
                   session  required pam_permit.so\n\
                   password required pam_deny.so\n";
        let pam_path = Path::new("/etc/pam.d").join(PAM_SERVICE);
        if fs::read_to_string(&pam_path).ok().as_deref() != Some(pam) {
            let tmp = pam_path.with_extension(format!("tmp{}", std::process::id()));
            fs::write(&tmp, pam).expect("write pam service");
            fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).unwrap();
            fs::rename(&tmp, &pam_path).expect("install pam service");
        }
        drop(lock);
        TestUser {
            name: TEST_USER,
            uid,
            gid,
        }
    })
}

fn lookup_user(name: &str) -> Option<(u32, u32, String)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() >= 4 && f[0] == name {
            Some((
                f[2].parse().ok()?,
                f[3].parse().ok()?,
                f.get(5)?.to_string(),
            ))
        } else {
            None
        }
    })
}

/// SHA-512 crypt(3) hash of [`TEST_PASSWORD`] (for proftpd's AuthUserFile).
pub fn test_password_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        let out = Command::new("openssl")
            .args(["passwd", "-6", "-salt", "ftpsfstestsalt", TEST_PASSWORD])
            .output()
            .expect("run openssl passwd");
        assert!(out.status.success(), "openssl passwd failed");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    })
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    debug_assert_eq!(fs::metadata(path).map(|m| m.uid()).ok(), Some(uid));
}
