//! A scripted hostile FTPS server, in-process (threads), on an ephemeral loopback port,
//! for testing that the client library (src/ftp) stays bounded in time and memory
//! whatever a server sends.
//!
//! It speaks explicit FTPS well enough for `FtpConnection::connect`: `AUTH TLS` (the
//! only way in), `USER`/`PASS` (anything is accepted), `PBSZ`, `PROT P|C`, `FEAT`
//! (announcing `MLST`, `UTF8`, `EPSV`, `REST STREAM`, `SIZE`, `MDTM`), `OPTS`, `TYPE`,
//! `PWD`, `CWD`, `NOOP`, `QUIT`, `EPSV`/`PASV` with a passive listener per transfer,
//! `REST`, `SIZE`, `MDTM`, `MLST`, `MLSD`/`LIST`/`NLST`, `RETR` and `ABOR` (during a
//! transfer: the data connection is closed, then `426` and `226`). Control and data
//! connections are TLS, with the test PKI's server certificate (`support::pki()`:
//! the client must trust `pki().ca_cert`); data connections may resume the control
//! connection's TLS session or start a fresh one (both accepted, counted in
//! [`Stats::data_sessions_resumed`]). Nothing can be uploaded, deleted or renamed.
//!
//! [`Behaviour`] chooses the misbehaviour. The server itself stays small in memory
//! whatever it sends (it writes from 64 KiB chunks), so the memory a test measures in
//! its process is the client's.
//!
//! ```ignore
//! mod support;                                    // for support::pki()
//! #[path = "support/hostile.rs"]
//! mod hostile;
//! let srv = hostile::HostileServer::start(hostile::Behaviour::HugeListing(1_000_000));
//! // srv.port(), srv.url() ("ftp://hostile@127.0.0.1:PORT/"), srv.stats(), srv.commands()
//! // srv.stopper().stop() from another thread; drop(srv) stops it within ~0.1 s.
//! ```
//!
//! Stopping: every socket is registered; `stop` (and `Drop`) sets a flag and shuts
//! each one down, so no thread stays blocked; sockets also have 100 ms timeouts so that
//! threads look at the flag. `Drop` waits up to 2 s for the threads, then leaves any
//! straggler detached (it ends at its next socket operation).

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use openssl::ssl::{HandshakeError, SslAcceptor, SslFiletype, SslMethod, SslStream};

/// Address the server listens on (control and passive ports).
pub const HOST: &str = "127.0.0.1";
/// The one file [`Behaviour::NormalFile`] serves, in the root directory.
pub const FILE_NAME: &str = "file.bin";
/// Modification time (UTC, MLSD/MDTM format) of every entry.
pub const MTIME: &str = "20240102030405";
/// Length of the reply line [`Behaviour::OverlongLine`] sends (no CRLF follows).
pub const OVERLONG_LEN: usize = 8 << 20;
/// Length of each line of [`Behaviour::EndlessMultiline`]'s reply (with CRLF): just
/// under the client's 8192-byte line bound, so only a bound on the whole reply helps.
pub const MULTILINE_LINE_LEN: usize = 8000;

/// Socket timeout: how often a blocked thread looks at the stop flag.
const TICK: Duration = Duration::from_millis(100);
/// Longest wait for the client's data connection or TLS handshake.
const DATA_WAIT: Duration = Duration::from_secs(10);
/// Longest wait for the client's close_notify after a complete download.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Size of the chunks written to a data or control connection.
const CHUNK: usize = 64 * 1024;
/// Commands kept by [`HostileServer::commands`].
const COMMAND_LOG: usize = 512;

/// What the server does wrong. Every behaviour logs in normally (unless it says
/// otherwise) and answers what it does not misuse as a sane server would.
#[derive(Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// Control: serves [`FILE_NAME`] (these bytes) normally: `SIZE`, `MDTM`, `MLST`,
    /// `RETR` (with `REST`), and `MLSD /` listing it.
    NormalFile(Vec<u8>),
    /// `MLSD`/`LIST`/`NLST` send valid entries with distinct names (`entry-%012d`)
    /// forever, as fast as the client takes them.
    EndlessListing,
    /// `MLSD`/`LIST`/`NLST` send this many valid entries (~70 bytes each), then
    /// close_notify and `226`.
    HugeListing(u64),
    /// `MLSD`/`LIST`/`NLST` send one listing line that never ends (`type=file;size=1; xxxx...`
    /// without LF) until the client goes away.
    EndlessListingLine,
    /// `PWD`, `SYST`, `STAT`, `HELP`, `SIZE`, `MDTM`, `MLST` and the preliminary reply
    /// of `RETR`/`MLSD`/`LIST`/`NLST` are one line of [`OVERLONG_LEN`] bytes without
    /// CRLF; then the server says nothing more (the connection stays open).
    OverlongLine,
    /// `PWD`, `SYST`, `STAT`, `HELP`, `SIZE`, `MDTM`, `MLST` are answered with a
    /// multi-line `213-` reply that never ends (lines of [`MULTILINE_LINE_LEN`] bytes).
    EndlessMultiline,
    /// `RETR`/`MLSD`/`LIST`/`NLST`: `150`, the data connection is accepted and its TLS
    /// handshake completed, then nothing at all (no data, no final reply, no answer to
    /// `ABOR` or anything else); both connections stay open.
    Preliminary150ThenNothing,
    /// `RETR` of [`FILE_NAME`] sends this many bytes of a 1 MiB file, closes the
    /// data connection without close_notify, and answers with this final reply
    /// (`426 ...` as a server that saw the cut, or a lying `226`).
    CutDownload(usize, &'static str),
    /// After `230` to `PASS`, nothing is ever answered again (connection kept open).
    StallAfterLogin,
    /// Answers everything `FtpConnection::connect` sends (up to its `TYPE I`), then
    /// nothing is ever answered again (connection kept open).
    StallAfterSetup,
}

impl fmt::Debug for Behaviour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Behaviour::NormalFile(b) => write!(f, "NormalFile({} bytes)", b.len()),
            Behaviour::CutDownload(n, r) => write!(f, "CutDownload({n} bytes, {r:?})"),
            Behaviour::EndlessListing => f.write_str("EndlessListing"),
            Behaviour::HugeListing(n) => write!(f, "HugeListing({n})"),
            Behaviour::EndlessListingLine => f.write_str("EndlessListingLine"),
            Behaviour::OverlongLine => f.write_str("OverlongLine"),
            Behaviour::EndlessMultiline => f.write_str("EndlessMultiline"),
            Behaviour::Preliminary150ThenNothing => f.write_str("Preliminary150ThenNothing"),
            Behaviour::StallAfterLogin => f.write_str("StallAfterLogin"),
            Behaviour::StallAfterSetup => f.write_str("StallAfterSetup"),
        }
    }
}

/// Counters, for test messages and checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub control_connections: u64,
    /// Data connections whose TLS handshake completed.
    pub data_connections: u64,
    /// Of those, the ones that resumed a TLS session.
    pub data_sessions_resumed: u64,
    /// Listing entries handed to the data connection's TLS layer.
    pub entries_sent: u64,
    /// Bytes written to data connections (plaintext).
    pub data_bytes_sent: u64,
    /// Bytes of misbehaving replies (overlong line, endless multi-line) written.
    pub hostile_reply_bytes_sent: u64,
    /// Transfers ended by the client's ABOR.
    pub aborts: u64,
}

#[derive(Default)]
struct Counters {
    control_connections: AtomicU64,
    data_connections: AtomicU64,
    data_sessions_resumed: AtomicU64,
    entries_sent: AtomicU64,
    data_bytes_sent: AtomicU64,
    hostile_reply_bytes_sent: AtomicU64,
    aborts: AtomicU64,
}

struct Shared {
    behaviour: Behaviour,
    acceptor: SslAcceptor,
    stop: AtomicBool,
    sockets: Mutex<HashMap<u64, TcpStream>>,
    next_socket: AtomicU64,
    threads: Mutex<Vec<JoinHandle<()>>>,
    counters: Counters,
    commands: Mutex<VecDeque<String>>,
    /// The next this many EPSV/PASV are refused as pure-ftpd does when two sessions
    /// picked the same passive port ([`HostileServer::refuse_passive`]).
    passive_refusals: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        for s in lock(&self.sockets).values() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn add(&self, counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn log_command(&self, line: &str) {
        let shown = if line.len() >= 5 && line[..5].eq_ignore_ascii_case("PASS ") {
            "PASS ***".to_string()
        } else {
            line.chars().take(200).collect()
        };
        let mut log = lock(&self.commands);
        if log.len() == COMMAND_LOG {
            log.pop_front();
        }
        log.push_back(shown);
    }
}

/// A socket known to [`Shared::stop`]; forgotten when dropped.
struct Registered {
    shared: Arc<Shared>,
    id: u64,
}

impl Registered {
    fn new(shared: &Arc<Shared>, s: &TcpStream) -> io::Result<Registered> {
        let id = shared.next_socket.fetch_add(1, Ordering::Relaxed);
        lock(&shared.sockets).insert(id, s.try_clone()?);
        // A stop that ran before the insert did not see this socket.
        if shared.stopped() {
            let _ = s.shutdown(Shutdown::Both);
        }
        Ok(Registered {
            shared: shared.clone(),
            id,
        })
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.shared.sockets).remove(&self.id);
    }
}

/// Stops the server from any thread (what `Drop` of [`HostileServer`] does first).
#[derive(Clone)]
pub struct Stopper(Arc<Shared>);

impl Stopper {
    /// Closes every connection (without TLS close_notify) and the listener.
    pub fn stop(&self) {
        self.0.stop();
    }
}

/// A running hostile server; dropping it stops it.
pub struct HostileServer {
    shared: Arc<Shared>,
    port: u16,
    accept: Option<JoinHandle<()>>,
}

impl HostileServer {
    /// Starts a server with this behaviour on `127.0.0.1:<ephemeral>`, using the test
    /// PKI's server certificate (`support::pki()`). Panics if it cannot.
    pub fn start(behaviour: Behaviour) -> HostileServer {
        let pki = crate::support::pki();
        Self::start_with_cert(behaviour, &pki.server_cert, &pki.server_key)
    }

    /// [`HostileServer::start`] with another certificate chain and key (PEM).
    pub fn start_with_cert(behaviour: Behaviour, cert: &Path, key: &Path) -> HostileServer {
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())
            .expect("hostile server: TLS setup");
        b.set_certificate_chain_file(cert)
            .unwrap_or_else(|e| panic!("hostile server: certificate {}: {e}", cert.display()));
        b.set_private_key_file(key, SslFiletype::PEM)
            .unwrap_or_else(|e| panic!("hostile server: key {}: {e}", key.display()));
        b.check_private_key().expect("hostile server: key matches");
        b.set_session_id_context(b"ftpsfs-hostile")
            .expect("hostile server: session id context");
        let listener = TcpListener::bind((HOST, 0)).expect("hostile server: bind");
        listener
            .set_nonblocking(true)
            .expect("hostile server: nonblocking listener");
        let port = listener.local_addr().expect("hostile server: port").port();
        let shared = Arc::new(Shared {
            behaviour,
            acceptor: b.build(),
            stop: AtomicBool::new(false),
            sockets: Mutex::new(HashMap::new()),
            next_socket: AtomicU64::new(0),
            threads: Mutex::new(Vec::new()),
            counters: Counters::default(),
            commands: Mutex::new(VecDeque::new()),
            passive_refusals: AtomicU64::new(0),
        });
        let sh = shared.clone();
        let accept = thread::Builder::new()
            .name(format!("hostile-accept-{port}"))
            .spawn(move || accept_loop(sh, listener))
            .expect("hostile server: spawn");
        HostileServer {
            shared,
            port,
            accept: Some(accept),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn host(&self) -> &'static str {
        HOST
    }

    /// `ftp://hostile@127.0.0.1:PORT/` (explicit FTPS; any password is accepted).
    pub fn url(&self) -> String {
        format!("ftp://hostile@{HOST}:{}/", self.port)
    }

    pub fn behaviour(&self) -> &Behaviour {
        &self.shared.behaviour
    }

    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            control_connections: get(&c.control_connections),
            data_connections: get(&c.data_connections),
            data_sessions_resumed: get(&c.data_sessions_resumed),
            entries_sent: get(&c.entries_sent),
            data_bytes_sent: get(&c.data_bytes_sent),
            hostile_reply_bytes_sent: get(&c.hostile_reply_bytes_sent),
            aborts: get(&c.aborts),
        }
    }

    /// The last commands received (at most 512; passwords masked), oldest first.
    pub fn commands(&self) -> Vec<String> {
        lock(&self.shared.commands).iter().cloned().collect()
    }

    /// The next `n` EPSV/PASV are answered "425 Unable to identify the local data
    /// socket: Address already in use" (pure-ftpd, when another session's listener
    /// took the random passive port it bound). A transfer command sent with it then
    /// gets 150 and 425 (no passive listener).
    pub fn refuse_passive(&self, n: u64) {
        self.shared.passive_refusals.store(n, Ordering::Relaxed);
    }

    /// A handle that stops this server from another thread.
    pub fn stopper(&self) -> Stopper {
        Stopper(self.shared.clone())
    }
}

impl Drop for HostileServer {
    fn drop(&mut self) {
        self.shared.stop();
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let threads = std::mem::take(&mut *lock(&self.shared.threads));
        let deadline = Instant::now() + Duration::from_secs(2);
        for t in threads {
            while !t.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Sockets

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// True when `fd` has input (or EOF, or an error) within `ms` milliseconds.
fn readable(fd: RawFd, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, ms) > 0 }
}

fn setup_socket(s: &TcpStream) -> io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(TICK))?;
    s.set_write_timeout(Some(TICK))?;
    s.set_nodelay(true)
}

fn stopped_error() -> io::Error {
    io::Error::new(io::ErrorKind::Interrupted, "hostile server stopping")
}

/// `write_all` through socket timeouts, until done, an error, or the server stops.
fn write_all(sh: &Shared, w: &mut impl Write, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        if sh.stopped() {
            return Err(stopped_error());
        }
        match w.write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if would_block(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Accepts one connection on `l` within [`DATA_WAIT`].
fn accept_within(sh: &Shared, l: &TcpListener) -> io::Result<TcpStream> {
    l.set_nonblocking(true)?;
    let deadline = Instant::now() + DATA_WAIT;
    loop {
        if sh.stopped() {
            return Err(stopped_error());
        }
        match l.accept() {
            Ok((s, _)) => return Ok(s),
            Err(e) if would_block(&e) => {
                if Instant::now() > deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no data connection",
                    ));
                }
                readable(l.as_raw_fd(), 50);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Server side of a TLS handshake within [`DATA_WAIT`] (socket set up by `setup_socket`).
fn tls_accept(sh: &Shared, tcp: TcpStream) -> io::Result<SslStream<TcpStream>> {
    let deadline = Instant::now() + DATA_WAIT;
    let mut step = sh.acceptor.accept(tcp);
    loop {
        match step {
            Ok(s) => return Ok(s),
            Err(HandshakeError::WouldBlock(mid)) => {
                if sh.stopped() {
                    return Err(stopped_error());
                }
                if Instant::now() > deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "TLS handshake timed out",
                    ));
                }
                step = mid.handshake();
            }
            Err(HandshakeError::SetupFailure(e)) => return Err(io::Error::other(e)),
            Err(HandshakeError::Failure(mid)) => {
                return Err(io::Error::other(format!(
                    "TLS handshake failed: {}",
                    mid.error()
                )))
            }
        }
    }
}

fn accept_loop(sh: Arc<Shared>, listener: TcpListener) {
    while !sh.stopped() {
        match listener.accept() {
            Ok((tcp, _)) => {
                let sh2 = sh.clone();
                let spawned = thread::Builder::new()
                    .name("hostile-control".into())
                    .spawn(move || serve_control(sh2, tcp));
                if let Ok(h) = spawned {
                    let mut threads = lock(&sh.threads);
                    threads.retain(|t| !t.is_finished());
                    threads.push(h);
                }
            }
            Err(e) if would_block(&e) => {
                readable(listener.as_raw_fd(), 50);
            }
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn serve_control(sh: Arc<Shared>, tcp: TcpStream) {
    sh.add(&sh.counters.control_connections, 1);
    let Ok(reg) = Registered::new(&sh, &tcp) else {
        return;
    };
    if setup_socket(&tcp).is_err() {
        return;
    }
    let mut session = Session {
        sh: sh.clone(),
        ctrl: Ctrl::new(tcp),
        passive: None,
        rest: 0,
        _reg: reg,
    };
    let _ = session.serve();
}

// ---------------------------------------------------------------------------
// The control connection

enum Stream {
    Plain(TcpStream),
    Tls(Box<SslStream<TcpStream>>),
    Gone,
}

impl Stream {
    fn fd(&self) -> Option<RawFd> {
        match self {
            Stream::Plain(s) => Some(s.as_raw_fd()),
            Stream::Tls(s) => Some(s.get_ref().as_raw_fd()),
            Stream::Gone => None,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
            Stream::Gone => Ok(0),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
            Stream::Gone => Err(io::ErrorKind::NotConnected.into()),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
            Stream::Gone => Ok(()),
        }
    }
}

/// The control connection: a line reader (commands may come pipelined) and writer.
struct Ctrl {
    stream: Stream,
    buf: Vec<u8>,
    lines: VecDeque<String>,
}

/// Longest command line accepted from the client.
const MAX_COMMAND: usize = 64 * 1024;

impl Ctrl {
    fn new(tcp: TcpStream) -> Ctrl {
        Ctrl {
            stream: Stream::Plain(tcp),
            buf: Vec::new(),
            lines: VecDeque::new(),
        }
    }

    fn absorb(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.buf.extend_from_slice(bytes);
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.lines
                .push_back(String::from_utf8_lossy(&line).into_owned());
        }
        if self.buf.len() > MAX_COMMAND {
            return Err(io::Error::other("command line too long"));
        }
        Ok(())
    }

    /// The next command line; `None` at EOF, on a socket error or when stopping.
    fn read_line(&mut self, sh: &Shared) -> Option<String> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(l) = self.lines.pop_front() {
                return Some(l);
            }
            if sh.stopped() {
                return None;
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.absorb(&chunk[..n]).ok()?,
                Err(e) if would_block(&e) => {}
                Err(_) => return None,
            }
        }
    }

    /// Reads what has arrived, without waiting more than a socket timeout.
    /// `Ok(false)` at EOF.
    fn fill_available(&mut self) -> io::Result<bool> {
        let has_input = match &self.stream {
            Stream::Tls(s) if s.ssl().pending() > 0 => true,
            s => s.fd().is_some_and(|fd| readable(fd, 0)),
        };
        if !has_input {
            return Ok(true);
        }
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk) {
            Ok(0) => Ok(false),
            Ok(n) => self.absorb(&chunk[..n]).map(|_| true),
            Err(e) if would_block(&e) => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Removes a received `ABOR` (possibly preceded by Telnet IP/Synch bytes) from the
    /// queue of commands; other commands stay queued.
    fn take_abor(&mut self) -> bool {
        let pos = self.lines.iter().position(|l| {
            let l = l.trim_start_matches(|c: char| !c.is_ascii_alphabetic());
            l.len() >= 4 && l[..4].eq_ignore_ascii_case("ABOR")
        });
        match pos {
            Some(i) => {
                self.lines.remove(i);
                true
            }
            None => false,
        }
    }

    fn send(&mut self, sh: &Shared, line: &str) -> io::Result<()> {
        let mut b = Vec::with_capacity(line.len() + 2);
        b.extend_from_slice(line.as_bytes());
        b.extend_from_slice(b"\r\n");
        write_all(sh, &mut self.stream, &b)?;
        self.stream.flush()
    }

    /// AUTH TLS accepted: the TLS handshake, as server.
    fn start_tls(&mut self, sh: &Shared) -> io::Result<()> {
        if !self.buf.is_empty() || !self.lines.is_empty() {
            return Err(io::Error::other("client sent data after AUTH TLS"));
        }
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Gone) else {
            return Err(io::Error::other("AUTH TLS twice"));
        };
        self.stream = Stream::Tls(Box::new(tls_accept(sh, tcp)?));
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Data connections

struct Data {
    tls: SslStream<TcpStream>,
    _reg: Registered,
}

impl Data {
    /// After the last byte: close_notify, half-close, and a short wait for the client's
    /// own close (so that it has read everything before the socket goes).
    fn finish(mut self, sh: &Shared) {
        let _ = self.tls.shutdown();
        let _ = self.tls.get_ref().shutdown(Shutdown::Write);
        let deadline = Instant::now() + CLOSE_WAIT;
        let mut b = [0u8; 1024];
        while Instant::now() < deadline && !sh.stopped() {
            match self.tls.read(&mut b) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if would_block(&e) => {}
                Err(_) => break,
            }
        }
    }

    /// Closes abruptly (no close_notify), as a server does on ABOR.
    fn abort(self) {
        let _ = self.tls.get_ref().shutdown(Shutdown::Both);
    }
}

/// How a transfer ended.
enum Sent {
    Complete,
    /// ABOR arrived on the control connection.
    Aborted,
    /// The data connection failed (the client closed it).
    DataBroken,
    /// The control connection is gone, or the server is stopping.
    SessionOver,
}

// ---------------------------------------------------------------------------
// The session

struct Session {
    sh: Arc<Shared>,
    ctrl: Ctrl,
    passive: Option<TcpListener>,
    rest: u64,
    _reg: Registered,
}

/// Whether the session goes on after a command.
type Go = io::Result<bool>;

fn split(line: &str) -> (String, &str) {
    let line = line.trim_start_matches(|c: char| !c.is_ascii_alphabetic());
    match line.split_once(' ') {
        Some((v, a)) => (v.to_ascii_uppercase(), a),
        None => (line.to_ascii_uppercase(), ""),
    }
}

fn is_file(path: &str) -> bool {
    path.trim_start_matches('/') == FILE_NAME
}

fn is_root(path: &str) -> bool {
    path.is_empty() || path.trim_matches('/').is_empty() || path == "."
}

impl Session {
    fn reply(&mut self, line: &str) -> io::Result<()> {
        let sh = self.sh.clone();
        self.ctrl.send(&sh, line)
    }

    fn serve(&mut self) -> io::Result<()> {
        self.reply("220 ftpsfs hostile test server ready")?;
        let sh = self.sh.clone();
        loop {
            let Some(line) = self.ctrl.read_line(&sh) else {
                return Ok(());
            };
            sh.log_command(&line);
            let (verb, arg) = split(&line);
            match verb.as_str() {
                "AUTH"
                    if ["TLS", "SSL", "TLS-C"]
                        .iter()
                        .any(|m| arg.trim().eq_ignore_ascii_case(m)) =>
                {
                    self.reply("234 AUTH TLS successful")?;
                    break;
                }
                "QUIT" => return self.reply("221 Goodbye"),
                _ => self.reply("530 Please use AUTH TLS first")?,
            }
        }
        self.ctrl.start_tls(&sh)?;
        loop {
            let Some(line) = self.ctrl.read_line(&sh) else {
                return Ok(());
            };
            sh.log_command(&line);
            if !self.command(&line)? {
                return Ok(());
            }
        }
    }

    /// Reads and ignores commands until the client goes away or the server stops.
    fn idle(&mut self) -> Go {
        let sh = self.sh.clone();
        while let Some(line) = self.ctrl.read_line(&sh) {
            sh.log_command(&line);
        }
        Ok(false)
    }

    fn command(&mut self, line: &str) -> Go {
        let sh = self.sh.clone();
        let b = &sh.behaviour;
        let (verb, arg) = split(line);
        let arg = arg.trim_end();
        match verb.as_str() {
            "USER" => self.reply("331 Any password will do")?,
            "PASS" => {
                self.reply("230 Logged in")?;
                if *b == Behaviour::StallAfterLogin {
                    return self.idle();
                }
            }
            "AUTH" => self.reply("503 TLS already active")?,
            "PBSZ" => self.reply("200 PBSZ=0")?,
            "PROT" => self.reply("200 Protection level set")?,
            "FEAT" => {
                for l in [
                    "211-Features:",
                    " AUTH TLS",
                    " PBSZ",
                    " PROT",
                    " EPSV",
                    " UTF8",
                    " MLST type*;size*;modify*;UNIX.mode*;",
                    " REST STREAM",
                    " SIZE",
                    " MDTM",
                    "211 End",
                ] {
                    self.reply(l)?;
                }
            }
            "OPTS" => self.reply("200 OK")?,
            "TYPE" => {
                self.reply("200 Type set")?;
                if *b == Behaviour::StallAfterSetup {
                    return self.idle();
                }
            }
            "MODE" | "STRU" => self.reply("200 OK")?,
            "NOOP" => self.reply("200 NOOP ok")?,
            "CWD" | "XCWD" | "CDUP" => self.reply("250 Directory changed")?,
            "QUIT" => {
                self.reply("221 Goodbye")?;
                return Ok(false);
            }
            "PWD" | "XPWD" => {
                return self.informational("257", "\"/\" is the current directory");
            }
            "SYST" => return self.informational("215", "UNIX Type: L8"),
            "STAT" | "HELP" => return self.informational("211", "ftpsfs hostile test server"),
            "SIZE" => {
                let answer = match b {
                    Behaviour::NormalFile(bytes) if is_file(arg) => format!("{}", bytes.len()),
                    Behaviour::OverlongLine | Behaviour::EndlessMultiline => String::new(),
                    _ => return self.no_such_file(),
                };
                return self.informational("213", &answer);
            }
            "MDTM" => {
                if !matches!(b, Behaviour::NormalFile(_)) || is_file(arg) || is_root(arg) {
                    return self.informational("213", MTIME);
                }
                return self.no_such_file();
            }
            "MLST" => return self.mlst(arg),
            "EPSV" | "PASV" if self.refuses_passive() => {
                self.reply("425 Unable to identify the local data socket: Address already in use")?;
            }
            "EPSV" => {
                let l = TcpListener::bind((HOST, 0))?;
                let port = l.local_addr()?.port();
                self.passive = Some(l);
                self.reply(&format!("229 Entering Extended Passive Mode (|||{port}|)"))?;
            }
            "PASV" => {
                let l = TcpListener::bind((HOST, 0))?;
                let port = l.local_addr()?.port();
                self.passive = Some(l);
                self.reply(&format!(
                    "227 Entering Passive Mode (127,0,0,1,{},{})",
                    port >> 8,
                    port & 0xff
                ))?;
            }
            "REST" => match arg.parse::<u64>() {
                Ok(n) => {
                    self.rest = n;
                    self.reply(&format!("350 Restarting at {n}"))?;
                }
                Err(_) => self.reply("501 Bad REST offset")?,
            },
            "RETR" => return self.retr(arg),
            "MLSD" | "LIST" | "NLST" => return self.list(arg),
            "ABOR" => self.reply("225 No transfer to abort")?,
            "STOR" | "APPE" | "STOU" | "DELE" | "MKD" | "XMKD" | "RMD" | "XRMD" | "RNFR"
            | "RNTO" | "SITE" | "MFMT" => {
                self.passive = None;
                self.reply("550 Read-only test server")?;
            }
            _ => self.reply("502 Command not implemented")?,
        }
        Ok(true)
    }

    fn no_such_file(&mut self) -> Go {
        self.passive = None;
        self.rest = 0;
        self.reply("550 No such file or directory")?;
        Ok(true)
    }

    /// A control-connection answer that the misbehaviours corrupt.
    fn informational(&mut self, code: &str, text: &str) -> Go {
        match self.sh.behaviour {
            Behaviour::OverlongLine => self.overlong(&format!("{code} ")),
            Behaviour::EndlessMultiline => self.endless_multiline("213"),
            _ => {
                self.reply(&format!("{code} {text}"))?;
                Ok(true)
            }
        }
    }

    /// One reply line of [`OVERLONG_LEN`] bytes without CRLF, then silence.
    fn overlong(&mut self, prefix: &str) -> Go {
        let sh = self.sh.clone();
        write_all(&sh, &mut self.ctrl.stream, prefix.as_bytes())?;
        let chunk = vec![b'A'; CHUNK];
        let mut left = OVERLONG_LEN.saturating_sub(prefix.len());
        while left > 0 {
            let n = left.min(CHUNK);
            write_all(&sh, &mut self.ctrl.stream, &chunk[..n])?;
            sh.add(&sh.counters.hostile_reply_bytes_sent, n as u64);
            left -= n;
        }
        let _ = self.ctrl.stream.flush();
        self.idle()
    }

    /// `213-` and lines forever, until the client goes away.
    fn endless_multiline(&mut self, code: &str) -> Go {
        let sh = self.sh.clone();
        write_all(
            &sh,
            &mut self.ctrl.stream,
            format!("{code}-Status follows\r\n").as_bytes(),
        )?;
        let mut i = 0u64;
        let mut chunk = Vec::with_capacity(CHUNK + MULTILINE_LINE_LEN);
        loop {
            chunk.clear();
            while chunk.len() < CHUNK {
                let start = chunk.len();
                let _ = write!(chunk, " line {i:012} ");
                chunk.resize(start + MULTILINE_LINE_LEN - 2, b'x');
                chunk.extend_from_slice(b"\r\n");
                i += 1;
            }
            write_all(&sh, &mut self.ctrl.stream, &chunk)?;
            sh.add(&sh.counters.hostile_reply_bytes_sent, chunk.len() as u64);
        }
    }

    fn mlst(&mut self, arg: &str) -> Go {
        let b = self.sh.behaviour.clone();
        match &b {
            Behaviour::OverlongLine | Behaviour::EndlessMultiline => self.informational("250", ""),
            Behaviour::NormalFile(bytes) if is_file(arg) => {
                self.reply(&format!("250-Listing {arg}"))?;
                self.reply(&format!(
                    " type=file;size={};modify={MTIME};UNIX.mode=0644; {arg}",
                    bytes.len()
                ))?;
                self.reply("250 End")?;
                Ok(true)
            }
            _ if is_root(arg) => {
                self.reply(&format!("250-Listing {arg}"))?;
                self.reply(&format!(" type=dir;modify={MTIME};UNIX.mode=0755; /"))?;
                self.reply("250 End")?;
                Ok(true)
            }
            _ => self.no_such_file(),
        }
    }

    /// Opens the data connection of a transfer whose 150 is sent: accepts on the
    /// passive listener and runs the TLS handshake. Failures are answered with 425
    /// unless `quiet`.
    fn open_data(&mut self, quiet: bool) -> io::Result<Option<Data>> {
        let sh = self.sh.clone();
        let Some(l) = self.passive.take() else {
            if !quiet {
                self.reply("425 Use EPSV or PASV first")?;
            }
            return Ok(None);
        };
        let opened = accept_within(&sh, &l).and_then(|tcp| {
            let reg = Registered::new(&sh, &tcp)?;
            setup_socket(&tcp)?;
            let tls = tls_accept(&sh, tcp)?;
            Ok(Data { tls, _reg: reg })
        });
        match opened {
            Ok(d) => {
                sh.add(&sh.counters.data_connections, 1);
                if d.tls.ssl().session_reused() {
                    sh.add(&sh.counters.data_sessions_resumed, 1);
                }
                Ok(Some(d))
            }
            Err(_) if sh.stopped() => Err(stopped_error()),
            Err(e) => {
                if !quiet {
                    self.reply(&format!("425 Cannot open data connection: {e}"))?;
                }
                Ok(None)
            }
        }
    }

    /// Writes what `produce` makes (one chunk per call; `false` after the last) to the
    /// data connection, watching the control connection for ABOR between writes.
    fn send_data(
        &mut self,
        data: &mut Data,
        mut produce: impl FnMut(&mut Vec<u8>) -> bool,
    ) -> Sent {
        let sh = self.sh.clone();
        let mut chunk = Vec::with_capacity(CHUNK + 512);
        loop {
            chunk.clear();
            let more = produce(&mut chunk);
            let mut off = 0;
            while off < chunk.len() {
                if sh.stopped() {
                    return Sent::SessionOver;
                }
                match data.tls.write(&chunk[off..]) {
                    Ok(0) => return Sent::DataBroken,
                    Ok(n) => {
                        off += n;
                        sh.add(&sh.counters.data_bytes_sent, n as u64);
                    }
                    Err(e) if would_block(&e) => {}
                    Err(_) => return Sent::DataBroken,
                }
                match self.ctrl.fill_available() {
                    Ok(true) => {}
                    Ok(false) | Err(_) => return Sent::SessionOver,
                }
                if self.ctrl.take_abor() {
                    return Sent::Aborted;
                }
            }
            if !more {
                return Sent::Complete;
            }
        }
    }

    /// A transfer with a 150, a data connection and `produce`'s bytes, ended as a
    /// server ends it (226, or 426 + 226 after ABOR).
    /// Whether this EPSV/PASV is one to refuse (see `HostileServer::refuse_passive`).
    fn refuses_passive(&self) -> bool {
        let n = &self.sh.passive_refusals;
        n.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |k| k.checked_sub(1))
            .is_ok()
    }

    fn transfer(&mut self, produce: impl FnMut(&mut Vec<u8>) -> bool) -> Go {
        self.reply("150 Opening BINARY mode data connection")?;
        let Some(mut data) = self.open_data(false)? else {
            return Ok(true);
        };
        match self.send_data(&mut data, produce) {
            Sent::Complete => {
                data.finish(&self.sh.clone());
                self.reply("226 Transfer complete")?;
            }
            Sent::Aborted => {
                data.abort();
                self.sh.add(&self.sh.counters.aborts, 1);
                self.reply("426 Connection closed; transfer aborted")?;
                self.reply("226 ABOR command successful")?;
            }
            Sent::DataBroken => {
                data.abort();
                self.reply("426 Data connection broken; transfer aborted")?;
            }
            Sent::SessionOver => return Ok(false),
        }
        Ok(true)
    }

    /// 150, the data connection, then silence on both.
    fn preliminary_then_nothing(&mut self) -> Go {
        self.reply("150 Opening BINARY mode data connection")?;
        let data = self.open_data(true)?;
        let r = self.idle();
        drop(data);
        r
    }

    fn retr(&mut self, arg: &str) -> Go {
        let rest = std::mem::take(&mut self.rest);
        let b = self.sh.behaviour.clone();
        match &b {
            // The passive listener stays open: the client's data connection waits in
            // its backlog, so that what the client meets is the reply.
            Behaviour::OverlongLine => self.overlong("150 "),
            Behaviour::Preliminary150ThenNothing => self.preliminary_then_nothing(),
            Behaviour::CutDownload(cut, final_reply) if is_file(arg) => {
                self.reply("150 Opening BINARY mode data connection")?;
                let Some(mut data) = self.open_data(false)? else {
                    return Ok(true);
                };
                let mut left = *cut;
                let sent = self.send_data(&mut data, move |chunk| {
                    let n = left.min(CHUNK);
                    chunk.resize(n, b'c');
                    left -= n;
                    left > 0
                });
                if matches!(sent, Sent::SessionOver) {
                    return Ok(false);
                }
                data.abort();
                self.reply(final_reply)?;
                Ok(true)
            }
            Behaviour::NormalFile(bytes) if is_file(arg) => {
                let mut pos = (rest as usize).min(bytes.len());
                self.transfer(move |chunk| {
                    let n = (bytes.len() - pos).min(CHUNK);
                    chunk.extend_from_slice(&bytes[pos..pos + n]);
                    pos += n;
                    pos < bytes.len()
                })
            }
            _ => self.no_such_file(),
        }
    }

    fn list(&mut self, arg: &str) -> Go {
        self.rest = 0;
        let arg = arg.strip_prefix("-a").map_or(arg, str::trim_start);
        let sh = self.sh.clone();
        let b = sh.behaviour.clone();
        if !is_root(arg) && !matches!(b, Behaviour::OverlongLine) {
            return self.no_such_file();
        }
        match &b {
            // The passive listener stays open: the client's data connection waits in
            // its backlog, so that what the client meets is the reply.
            Behaviour::OverlongLine => self.overlong("150 "),
            Behaviour::Preliminary150ThenNothing => self.preliminary_then_nothing(),
            Behaviour::EndlessListing => self.transfer(entries(sh.clone(), None)),
            Behaviour::HugeListing(n) => self.transfer(entries(sh.clone(), Some(*n))),
            Behaviour::EndlessListingLine => {
                let mut first = true;
                self.transfer(move |chunk| {
                    if first {
                        chunk.extend_from_slice(b"type=file;size=1; ");
                        first = false;
                    }
                    chunk.resize(CHUNK, b'x');
                    true
                })
            }
            Behaviour::NormalFile(bytes) => {
                let text = format!(
                    "type=cdir;modify={MTIME};UNIX.mode=0755; /\r\n\
                     type=file;size={};modify={MTIME};UNIX.mode=0644; {FILE_NAME}\r\n",
                    bytes.len()
                );
                self.transfer(move |chunk| {
                    chunk.extend_from_slice(text.as_bytes());
                    false
                })
            }
            _ => {
                let text = format!("type=cdir;modify={MTIME};UNIX.mode=0755; /\r\n");
                self.transfer(move |chunk| {
                    chunk.extend_from_slice(text.as_bytes());
                    false
                })
            }
        }
    }
}

/// Valid MLSD entries `entry-000000000000`, `entry-000000000001`..., `limit` of them
/// (or endless), in chunks of about 64 KiB.
fn entries(sh: Arc<Shared>, limit: Option<u64>) -> impl FnMut(&mut Vec<u8>) -> bool {
    let mut i = 0u64;
    let left = move |i: u64| limit.is_none_or(|n| i < n);
    move |chunk| {
        let start = i;
        while chunk.len() < CHUNK && left(i) {
            let _ = write!(
                chunk,
                "type=file;size={};modify={MTIME};UNIX.mode=0644; entry-{i:012}\r\n",
                i % 1_000_003
            );
            i += 1;
        }
        sh.add(&sh.counters.entries_sent, i - start);
        left(i)
    }
}
