//! One logged-in FTPS control connection: connection setup in every mode (explicit
//! AUTH TLS, implicit TLS, PROT P/C, CCC), commands, and the data connections they
//! open. Knows nothing of FUSE.

mod longpath;
mod order;
mod passive;

use super::data::{Download, Upload};
use super::entry::RemoteEntry;
use super::features::Features;
use super::listing::{list, mlsd, timeconv};
use super::reply::{clip, LineReader, Reply};
use super::tls::{
    describe_post_handshake_error, summarize_cert, CertSummary, SessionSlot, SessionStore,
    TlsContext, TlsStream,
};
use crate::error::{FtpError, Result};
use crate::names::NameCodec;
pub use longpath::MAX_COMMAND_LINE;
pub use order::ServerTraits;
pub use passive::DataStats;
use passive::PreparedData;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// A password, never printed.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Data channel protection after login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    /// PROT P: data connections are TLS (the default).
    Private,
    /// PROT C: data connections are clear; the control channel stays TLS.
    Clear,
}

/// Everything needed to open and log in a control connection.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub host: String,
    pub port: u16,
    /// TLS from the first byte (ftps://) instead of AUTH TLS (ftp://).
    pub implicit: bool,
    pub protection: Protection,
    /// Clear the command channel after login (RFC 2228 CCC); data stays PROT P.
    pub ccc: bool,
    pub user: String,
    pub password: Secret,
    /// Bound on every connect, read and write.
    pub timeout: Duration,
    /// Most entries a directory listing may have (`max_entries=`); a listing also
    /// stops past `max_listing_entries * LISTING_BYTES_PER_ENTRY` bytes.
    pub max_listing_entries: usize,
    /// How names are written on the wire (`encoding=`; see `crate::names`).
    pub encoding: NameCodec,
    /// What the connections learn about the server (whether it keeps the order of
    /// pipelined replies), shared by every connection made with these options.
    pub server: Arc<ServerTraits>,
}

/// Default of [`ConnectOptions::max_listing_entries`].
pub const DEFAULT_MAX_LISTING_ENTRIES: usize = 2_000_000;
/// Bytes of listing text allowed per allowed entry (MLSD lines are ~60-120 bytes).
pub const LISTING_BYTES_PER_ENTRY: u64 = 512;

/// How this server lets us set a modification time; learnt on first use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MtimeMethod {
    Mfmt,
    SiteUtime,
    MdtmTwoArgs,
    Unsupported,
}

/// Facts about the TLS of the control connection, for `check` and logs.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    pub version: String,
    pub cipher: String,
    pub server_cert: Option<CertSummary>,
}

/// The control connection's stream, and its socket timeout (lowered while an
/// operation's deadline is nearer, see `crate::deadline`).
struct Control {
    stream: ControlStream,
    base: Duration,
    lowered: std::cell::Cell<bool>,
}

enum ControlStream {
    Tls(Box<TlsStream>),
    Plain(TcpStream),
}

impl Control {
    fn new(stream: ControlStream, base: Duration) -> Self {
        Control {
            stream,
            base,
            // Set up under an operation's deadline, perhaps: the first use restores.
            lowered: std::cell::Cell::new(true),
        }
    }

    fn tcp(&self) -> &TcpStream {
        match &self.stream {
            ControlStream::Tls(s) => s.get_ref(),
            ControlStream::Plain(s) => s,
        }
    }

    fn arm(&self) -> io::Result<()> {
        crate::deadline::arm(self.tcp(), self.base, &self.lowered)
    }
}

impl Read for Control {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arm()?;
        match &mut self.stream {
            ControlStream::Tls(s) => s.read(buf),
            ControlStream::Plain(s) => s.read(buf),
        }
    }
}

impl Write for Control {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.arm()?;
        match &mut self.stream {
            ControlStream::Tls(s) => s.write(buf),
            ControlStream::Plain(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.stream {
            ControlStream::Tls(s) => s.flush(),
            ControlStream::Plain(s) => s.flush(),
        }
    }
}

/// A logged-in control connection.
pub struct FtpConnection {
    ctrl: Control,
    reader: LineReader,
    tls: Arc<TlsContext>,
    opts: Arc<ConnectOptions>,
    peer: IpAddr,
    session: SessionSlot,
    features: Features,
    use_epsv: bool,
    mtime_method: Option<MtimeMethod>,
    last_data_resumed: Option<bool>,
    tls_info: TlsInfo,
    ccc_done: bool,
    broken: bool,
    last_used: Instant,
    /// Shortest command round trip seen (see `round_trip`).
    round_trip: Duration,
    /// The next transfer's data connection, opened ahead (see `passive`).
    prepared: Option<PreparedData>,
    data_stats: DataStats,
    /// The server's current directory, changed into for long paths (`longpath`).
    workdir: longpath::WorkDir,
}

/// Rejects paths that would smuggle a second command (CR/LF) or a NUL.
pub fn check_path(path: &str) -> Result<()> {
    if path.is_empty() || path.contains(['\r', '\n', '\0']) {
        return Err(FtpError::Invalid(format!(
            "invalid remote path {:?}",
            clip(path)
        )));
    }
    Ok(())
}

fn tcp_connect(host: &str, port: u16, timeout: Duration) -> Result<TcpStream> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| FtpError::io(format!("cannot resolve {host}"), e))?
        .collect();
    let mut last = None;
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, crate::deadline::bound(timeout)) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(FtpError::io(format!("cannot connect to {addr}"), e)),
        }
    }
    Err(last.unwrap_or_else(|| FtpError::Invalid(format!("no address for {host}"))))
}

fn prepare_socket(s: &TcpStream, timeout: Duration) -> Result<()> {
    let ctx = |e| FtpError::io("setting socket options", e);
    s.set_read_timeout(Some(timeout)).map_err(ctx)?;
    s.set_write_timeout(Some(timeout)).map_err(ctx)?;
    s.set_nodelay(true).map_err(ctx)?;
    set_keepalive(s);
    Ok(())
}

/// TCP keepalive, so that a NAT dropping an idle control connection during a long
/// transfer is noticed (rclone's hang).
fn set_keepalive(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let fd = s.as_raw_fd();
    let one: libc::c_int = 1;
    let idle: libc::c_int = 60;
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid fd and pointers to c_int of the given length.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_KEEPALIVE,
            &one as *const _ as *const _,
            len,
        );
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_KEEPIDLE,
            &idle as *const _ as *const _,
            len,
        );
    }
}

impl FtpConnection {
    /// Connects, secures, logs in and negotiates features. Any failure to get TLS is
    /// an error: there is no plaintext mode.
    pub fn connect(opts: Arc<ConnectOptions>, tls: Arc<TlsContext>) -> Result<Self> {
        log::debug!(
            "connecting to {}:{} ({})",
            opts.host,
            opts.port,
            if opts.implicit {
                "implicit TLS"
            } else {
                "explicit: AUTH TLS"
            }
        );
        let tcp = tcp_connect(&opts.host, opts.port, opts.timeout)?;
        // The login is bounded by the operation's deadline too; the first command
        // after it sets the socket back to `timeout` (see `Control::arm`).
        prepare_socket(&tcp, crate::deadline::bound(opts.timeout))?;
        let peer = tcp
            .peer_addr()
            .map_err(|e| FtpError::io("control connection", e))?
            .ip();
        let tcp_clone = tcp
            .try_clone()
            .map_err(|e| FtpError::io("control connection", e))?;
        let session: SessionSlot = Arc::new(Mutex::new(SessionStore::default()));
        let mut reader = LineReader::new();

        let stream = if opts.implicit {
            tls.connect(&opts.host, tcp, Some(&session), None)
                .map_err(|e| super::probe::explain_implicit_failure(e, &opts.host, opts.port))?
        } else {
            let mut plain = tcp;
            let wait = crate::deadline::bound(opts.timeout);
            super::probe::wait_for_greeting(&plain, &opts.host, opts.port, wait)?;
            let greeting = reader.read_reply(&mut plain)?;
            if greeting.code != 220 {
                return Err(FtpError::Reply {
                    command: "connect".into(),
                    code: greeting.code,
                    text: greeting.text(),
                });
            }
            log::debug!("> AUTH TLS");
            plain
                .write_all(b"AUTH TLS\r\n")
                .map_err(|e| FtpError::io("sending AUTH TLS", e))?;
            let r = reader.read_reply(&mut plain)?;
            if r.code != 234 {
                return Err(FtpError::Tls(format!(
                    "the server refused AUTH TLS ({} {}); it does not offer explicit FTPS here, and ftpsfs never falls back to plaintext",
                    r.code,
                    r.text()
                )));
            }
            if !reader.is_empty() {
                return Err(FtpError::Protocol(
                    "data after the 234 reply to AUTH TLS".into(),
                ));
            }
            tls.connect(&opts.host, plain, Some(&session), None)?
        };
        let tls_info = TlsInfo {
            version: stream.ssl().version_str().to_string(),
            cipher: stream
                .ssl()
                .current_cipher()
                .map(|c| c.name().to_string())
                .unwrap_or_default(),
            server_cert: stream.ssl().peer_certificate().map(|c| summarize_cert(&c)),
        };
        log::debug!("TLS {}, cipher {}", tls_info.version, tls_info.cipher);
        if let Some(c) = &tls_info.server_cert {
            log::debug!(
                "certificate {} (issuer {}), sha256 {}",
                c.subject,
                c.issuer,
                c.sha256
            );
        }
        {
            let mut slot = session
                .lock()
                .map_err(|_| FtpError::Protocol("session lock".into()))?;
            // TLS 1.2: the handshake's session; TLS 1.3 tickets come later, by callback.
            if slot.is_empty() && stream.ssl().version2() != Some(openssl::ssl::SslVersion::TLS1_3)
            {
                if let Some(s) = stream.ssl().session() {
                    slot.push_session(s.to_owned());
                }
            }
        }
        let mut conn = FtpConnection {
            ctrl: Control::new(ControlStream::Tls(Box::new(stream)), opts.timeout),
            reader,
            tls,
            opts: opts.clone(),
            peer,
            session,
            features: Features::default(),
            use_epsv: true,
            mtime_method: None,
            last_data_resumed: None,
            tls_info,
            ccc_done: false,
            broken: false,
            last_used: Instant::now(),
            round_trip: Duration::MAX,
            prepared: None,
            data_stats: DataStats::default(),
            workdir: longpath::WorkDir::default(),
        };
        if opts.implicit {
            let version = conn.tls_info.version.clone();
            let greeting = conn.read_reply().map_err(|e| post_handshake(e, &version))?;
            if greeting.code != 220 {
                return Err(FtpError::Reply {
                    command: "connect".into(),
                    code: greeting.code,
                    text: greeting.text(),
                });
            }
        }
        let version = conn.tls_info.version.clone();
        conn.login().map_err(|e| post_handshake(e, &version))?;
        log::debug!("logged in as {}", conn.opts.user);
        conn.protect()?;
        if opts.ccc {
            conn.clear_command_channel(tcp_clone)?;
        }
        conn.negotiate_features()?;
        Ok(conn)
    }

    fn login(&mut self) -> Result<()> {
        let user = self.opts.user.clone();
        let r = self.command(&format!("USER {user}"))?;
        let r = match r.code {
            230 => r,
            331 | 332 => {
                let pass = self.opts.password.clone();
                self.send_line(&format!("PASS {}", pass.expose()), "PASS ***")?;
                self.read_reply()?
            }
            _ => r,
        };
        match r.code {
            230 | 202 => Ok(()),
            530 => Err(FtpError::Reply {
                command: "login".into(),
                code: 530,
                text: format!("login incorrect for user {user:?} ({})", r.text()),
            }),
            code => Err(FtpError::Reply {
                command: "login".into(),
                code,
                text: r.text(),
            }),
        }
    }

    fn protect(&mut self) -> Result<()> {
        let r = self.command("PBSZ 0")?;
        if !r.is_positive() && !self.opts.implicit {
            return Err(FtpError::Reply {
                command: "PBSZ 0".into(),
                code: r.code,
                text: r.text(),
            });
        }
        let cmd = match self.opts.protection {
            super::session::Protection::Private => "PROT P",
            super::session::Protection::Clear => "PROT C",
        };
        let r = self.command(cmd)?;
        if !r.is_positive() {
            return Err(FtpError::Reply {
                command: cmd.into(),
                code: r.code,
                text: r.text(),
            });
        }
        Ok(())
    }

    /// RFC 2228 CCC: after login, end TLS on the control connection (bidirectional
    /// close_notify) and go on in clear on the same TCP socket.
    fn clear_command_channel(&mut self, tcp: TcpStream) -> Result<()> {
        let r = self.command("CCC")?;
        if r.code != 200 {
            return Err(FtpError::Reply {
                command: "CCC".into(),
                code: r.code,
                text: r.text(),
            });
        }
        if !self.reader.is_empty() {
            return Err(FtpError::Protocol("data after the 200 reply to CCC".into()));
        }
        if let ControlStream::Tls(s) = &mut self.ctrl.stream {
            s.shutdown()
                .map_err(|e| FtpError::Tls(format!("CCC shutdown: {e}")))?;
            let mut tries = 0;
            while !s
                .get_shutdown()
                .contains(openssl::ssl::ShutdownState::RECEIVED)
                && tries < 4
            {
                tries += 1;
                match s.shutdown() {
                    Ok(openssl::ssl::ShutdownResult::Received) => break,
                    Ok(_) => {}
                    Err(e) => {
                        return Err(FtpError::Tls(format!(
                            "CCC: no close_notify from the server: {e}"
                        )))
                    }
                }
            }
        }
        self.ctrl = Control::new(ControlStream::Plain(tcp), self.opts.timeout);
        self.ccc_done = true;
        Ok(())
    }

    fn negotiate_features(&mut self) -> Result<()> {
        let r = self.command("FEAT")?;
        if r.code == 211 {
            self.features = Features::parse(&r.lines);
        }
        // One write, one round trip. OPTS refusals are tolerated (pure-ftpd
        // answers 504 to OPTS UTF8 ON).
        let mut batch = Vec::with_capacity(3);
        // With encoding= the names are in the server's own charset: leave it so.
        if self.features.utf8 && !self.opts.encoding.converts() {
            batch.push("OPTS UTF8 ON".to_string());
        }
        if let Some(facts) = self.features.mlst_opts() {
            // Only the facts used: less for the server to compute and send.
            batch.push(format!("OPTS MLST {facts}"));
        }
        batch.push("TYPE I".to_string());
        let (replies, _) = self.exchange(&batch, false)?;
        for (cmd, r) in batch.iter().zip(replies) {
            if cmd == "TYPE I" {
                accepted(cmd, r, |c| c == 200)?;
            } else if !r.is_positive() {
                log::debug!("{cmd} refused: {} {}", r.code, r.text());
            }
        }
        Ok(())
    }

    // ---- plumbing -------------------------------------------------------------

    fn send_line(&mut self, line: &str, shown: &str) -> Result<()> {
        if line.contains(['\r', '\n']) {
            return Err(FtpError::Invalid("command contains a line break".into()));
        }
        log::debug!("> {shown}");
        let mut buf = Vec::with_capacity(line.len() + 2);
        buf.extend_from_slice(&self.wire(line)?);
        buf.extend_from_slice(b"\r\n");
        let r = self.ctrl.write_all(&buf).and_then(|_| self.ctrl.flush());
        self.last_used = Instant::now();
        r.map_err(|e| self.lost(FtpError::io(format!("sending {}", first_word(shown)), e)))
    }

    /// A command line as the server's bytes (see `crate::names`).
    fn wire<'a>(&self, line: &'a str) -> Result<std::borrow::Cow<'a, [u8]>> {
        self.opts.encoding.encode(line).map_err(|c| {
            FtpError::Unencodable(format!(
                "{c:?} cannot be written in the server's encoding (encoding=)"
            ))
        })
    }

    fn read_reply(&mut self) -> Result<Reply> {
        let r = self
            .reader
            .read_reply(&mut self.ctrl)
            .map_err(|e| self.lost(e))?;
        log::debug!("< {} {}", r.code, r.text());
        if r.code == 421 {
            self.broken = true;
            if r.text().to_ascii_lowercase().contains("path too long") {
                // pure-ftpd ends the session on a path past its limit: the path is
                // the problem, not the connection (not to be tried again).
                return Err(FtpError::NameTooLong(format!(
                    "the server cannot take a path this long ({})",
                    r.text()
                )));
            }
            return Err(FtpError::Closed(format!(
                "server closed the session: {}",
                r.text()
            )));
        }
        Ok(r)
    }

    fn lost(&mut self, e: FtpError) -> FtpError {
        if e.is_connection_lost() {
            self.broken = true;
        }
        e
    }

    /// Sends several commands in one write (pipelining); the caller reads one reply
    /// per command, in order.
    fn send_batch(&mut self, lines: &[String]) -> Result<()> {
        let mut buf = Vec::new();
        for line in lines {
            if line.contains(['\r', '\n', '\0']) {
                return Err(FtpError::Invalid("command contains a line break".into()));
            }
            log::debug!("> {line} (pipelined)");
            buf.extend_from_slice(&self.wire(line)?);
            buf.extend_from_slice(b"\r\n");
        }
        let r = self.ctrl.write_all(&buf).and_then(|_| self.ctrl.flush());
        self.last_used = Instant::now();
        r.map_err(|e| self.lost(FtpError::io("sending commands", e)))
    }

    /// Sends one command and reads its reply, whatever the code.
    pub fn command(&mut self, cmd: &str) -> Result<Reply> {
        let t = Instant::now();
        self.send_line(cmd, cmd)?;
        let r = self.read_reply();
        self.round_trip = self.round_trip.min(t.elapsed());
        r
    }

    /// The shortest command round trip seen on this connection (login has several).
    pub fn round_trip(&self) -> Duration {
        self.round_trip
    }

    /// Sends one command; a reply whose code fails `ok` becomes an error.
    fn expect(&mut self, cmd: &str, ok: impl Fn(u16) -> bool) -> Result<Reply> {
        let r = self.command(cmd)?;
        accepted(cmd, r, ok)
    }

    /// [`Self::expect`] for the commands of a mounted filesystem (DELE, MKD...):
    /// an EPSV for the next transfer goes with the command when none is prepared.
    /// When the server answered the two out of order and the command's refusal
    /// could be the EPSV's, the command (which failed, so changed nothing) is sent
    /// again alone for its real reason.
    fn expect_preparing(&mut self, cmd: &str, ok: impl Fn(u16) -> bool) -> Result<()> {
        let (mut replies, unsure) = self.exchange(&[cmd.to_string()], true)?;
        let mut r = replies.swap_remove(0);
        if unsure.contains(&0) {
            r = self.command(cmd)?;
        }
        accepted(cmd, r, ok).map(drop)
    }

    /// True while the server is not known to answer pipelined commands out of order.
    fn pipelining(&self) -> bool {
        self.opts.server.pipelining()
    }

    /// Sends `lines` and returns one reply per line, in line order, and the lines
    /// whose (negative) reply is uncertain (see `order`). Pipelined in one write,
    /// with an EPSV for the next transfer when `prepare` and none is prepared,
    /// unless the server reorders replies: then one command at a time.
    fn exchange(&mut self, lines: &[String], prepare: bool) -> Result<(Vec<Reply>, Vec<usize>)> {
        if !self.pipelining() {
            let mut replies = Vec::with_capacity(lines.len());
            for l in lines {
                replies.push(self.command(l)?);
            }
            return Ok((replies, Vec::new()));
        }
        let piggyback =
            prepare && self.use_epsv && self.prepared.is_none() && !self.out_of_tickets();
        let mut all = lines.to_vec();
        if piggyback {
            all.push("EPSV".to_string());
        }
        self.send_batch(&all)?;
        let mut replies = Vec::with_capacity(all.len());
        for i in 0..all.len() {
            match self.read_reply() {
                Ok(r) => replies.push(r),
                // The piggybacked EPSV's reply alone is lost: the caller's stand
                // if they are in order (the connection is dropped afterwards).
                Err(_) if piggyback && i == lines.len() && order::in_order(lines, &replies) => {
                    self.broken = true;
                    return Ok((replies, Vec::new()));
                }
                Err(e) => return Err(e),
            }
        }
        let (mut replies, unsure) = if order::in_order(&all, &replies) {
            (replies, Vec::new())
        } else {
            let seen: Vec<String> = replies.iter().map(|r| r.code.to_string()).collect();
            let sent: Vec<&str> = all.iter().map(|c| first_word(c)).collect();
            self.opts.server.note_reordering(&format!(
                "{} answered {}",
                sent.join("+"),
                seen.join(", ")
            ));
            match order::assign(&all, replies) {
                Some(a) => (a.replies, a.unsure),
                None => {
                    self.broken = true;
                    return Err(FtpError::Protocol(format!(
                        "replies {} do not fit the commands {}",
                        seen.join(", "),
                        sent.join("+")
                    )));
                }
            }
        };
        if piggyback {
            if let Some(r) = replies.pop() {
                self.use_piggybacked_epsv(r);
            }
        }
        let unsure = unsure.into_iter().filter(|&i| i < lines.len()).collect();
        Ok((replies, unsure))
    }

    /// Asks whether the server keeps the order of pipelined replies: a `CWD` to the
    /// current directory and an `EPSV` sent together must be answered 250, then 229.
    /// Leaves the connection in step either way (for `check`).
    pub fn probe_reply_order(&mut self) -> Result<bool> {
        let r = self.expect("PWD", |c| c == 257)?;
        let dir = parse_pwd(&r.text()).unwrap_or_else(|| "/".to_string());
        check_path(&dir)?;
        let batch = [format!("CWD {dir}"), "EPSV".to_string()];
        self.send_batch(&batch)?;
        let replies = vec![self.read_reply()?, self.read_reply()?];
        self.workdir.set(dir);
        let kept = order::in_order(&batch, &replies);
        if !kept {
            self.opts.server.note_reordering(&format!(
                "CWD+EPSV answered {}, {}",
                replies[0].code, replies[1].code
            ));
        }
        Ok(kept)
    }

    /// True when the next transfer first logs in a new control connection (see
    /// `out_of_tickets`): a slow step, which the pool does not wait for.
    pub fn needs_renewal(&self) -> bool {
        self.out_of_tickets()
    }

    /// True when the next data connection has no unused TLS 1.3 ticket to resume.
    /// Servers with single-use tickets (proftpd) then refuse it: a download brings
    /// new tickets, but an upload does not (the server sends none on a connection
    /// it only reads from), so a run of uploads needs a fresh control connection.
    fn out_of_tickets(&self) -> bool {
        self.opts.protection == Protection::Private
            && self.tls_info.version == "TLSv1.3"
            && self
                .session
                .lock()
                .map(|s| s.fresh_count() == 0)
                .unwrap_or(true)
    }

    /// Replaces this control connection by a new one (same site, new TLS session).
    /// The old session ends first (QUIT): a server that counts logins per user
    /// (proftpd's MaxClientsPerUser) would refuse the new one while both exist. A
    /// refusal for "too many connections" (the server has not seen the old session
    /// go yet) is tried again, briefly, within the operation's deadline.
    fn renew(&mut self) -> Result<()> {
        log::debug!("no unused TLS session ticket left: opening a new control connection");
        self.tls.note_tickets_used_up();
        let _ = self.command("QUIT");
        self.mark_broken();
        let mut pause = Duration::from_millis(50);
        let fresh = loop {
            match FtpConnection::connect(self.opts.clone(), self.tls.clone()) {
                Ok(c) => break c,
                Err(e)
                    if e.is_too_many_connections()
                        && crate::deadline::bound(self.opts.timeout) > pause =>
                {
                    log::debug!("renewing the control connection: {e}; trying again");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        };
        log::debug!("new control connection: {}", fresh.tls_info.version);
        let old = std::mem::replace(self, fresh);
        self.data_stats = old.data_stats;
        Ok(())
    }

    /// Marks the connection unusable so that the pool drops it.
    pub fn mark_broken(&mut self) {
        self.broken = true;
    }

    /// True when an error left the connection unusable; the pool drops it.
    /// The timeout of each socket call (`timeout=`), before any deadline.
    pub(crate) fn io_timeout(&self) -> Duration {
        self.opts.timeout
    }

    pub fn is_broken(&self) -> bool {
        self.broken
    }

    pub fn idle_for(&self) -> Duration {
        self.last_used.elapsed()
    }

    pub fn features(&self) -> &Features {
        &self.features
    }

    pub fn tls_info(&self) -> &TlsInfo {
        &self.tls_info
    }

    /// True when CCC cleared the control channel.
    pub fn control_is_clear(&self) -> bool {
        self.ccc_done
    }

    /// Whether the most recent data connection resumed the control TLS session.
    pub fn data_session_resumed(&self) -> Option<bool> {
        self.last_data_resumed
    }

    /// Reads the final reply of a transfer whose data connection is closed.
    pub(crate) fn finish_transfer(&mut self, what: &str) -> Result<()> {
        let r = self.read_reply()?;
        if r.is_positive() {
            Ok(())
        } else {
            Err(FtpError::Reply {
                command: what.to_string(),
                code: r.code,
                text: r.text(),
            })
        }
    }

    /// Ends a transfer early. The data socket is already closed, which every server
    /// answers with one final reply (426/451, or 226 when it had sent everything).
    pub(crate) fn abort_transfer(&mut self) -> Result<()> {
        let r = self.read_reply()?;
        log::debug!("transfer aborted: {} {}", r.code, r.text());
        Ok(())
    }

    /// ABOR followed by a NOOP that marks the end of the replies to come.
    /// An EPSV for the next transfer goes with them when none is prepared; the
    /// returned flag goes to [`Self::read_until_noop`].
    pub(crate) fn send_abort(&mut self) -> Result<bool> {
        self.send_batch_preparing(&["ABOR".to_string(), "NOOP".to_string()])
    }

    /// Reads the replies to an aborted transfer and its ABOR, up to the NOOP's 200
    /// (then the piggybacked EPSV's, when `piggyback`). A 229 before the 200 is the
    /// EPSV's, from a server that answers out of order.
    pub(crate) fn read_until_noop(&mut self, mut piggyback: bool) -> Result<()> {
        for _ in 0..5 {
            let r = self.read_reply()?;
            log::debug!("abort: {} {}", r.code, r.text());
            if r.code == 229 && piggyback {
                self.opts
                    .server
                    .note_reordering("ABOR+NOOP+EPSV answered 229 before 200");
                piggyback = false;
                self.use_piggybacked_epsv(r);
                continue;
            }
            if r.code == 200 {
                self.finish_piggyback(piggyback);
                return Ok(());
            }
        }
        self.broken = true;
        Err(FtpError::Protocol(
            "no end to the replies after ABOR".into(),
        ))
    }

    /// Downloads `path` from byte `offset` (REST; needs REST STREAM).
    pub fn retr(&mut self, path: &str, offset: u64) -> Result<Download<'_>> {
        check_path(path)?;
        if offset > 0 && !self.features.rest_stream {
            return Err(FtpError::Reply {
                command: "REST".into(),
                code: 502,
                text: "the server does not announce REST STREAM".into(),
            });
        }
        // A renewed connection starts in its login directory: renew before the
        // path's argument is worked out relative to the current one.
        self.renew_if_out_of_tickets()?;
        self.forget_cwd();
        let arg = self.path_args(5, &[path])?.remove(0);
        let r = self.start_transfer(&format!("RETR {arg}"), offset);
        let data = r.map_err(|e| self.deep(e))?;
        Ok(Download::new(self, data, format!("RETR {path}")))
    }

    /// Uploads to `path`, replacing it (STOR), or appending (APPE).
    pub fn stor(&mut self, path: &str, append: bool) -> Result<Upload<'_>> {
        check_path(path)?;
        let verb = if append { "APPE" } else { "STOR" };
        self.renew_if_out_of_tickets()?;
        self.forget_cwd();
        let arg = self.path_args(5, &[path])?.remove(0);
        let r = self.start_transfer(&format!("{verb} {arg}"), 0);
        let data = r.map_err(|e| self.deep(e))?;
        // A path named from its directory is one a server may not hold: pure-ftpd
        // acknowledges such an upload and stores nothing. Check it.
        let check = self.workdir_relative() && self.features.size;
        let up = Upload::new(self, data, format!("{verb} {path}"));
        Ok(if check { up.checked(arg, append) } else { up })
    }

    /// Lists a directory: MLSD where the server has it, else `LIST -a`. Lines that do
    /// not parse or carry unsafe names are skipped (and logged).
    pub fn list_dir(&mut self, path: &str) -> Result<Vec<RemoteEntry>> {
        let mut entries = Vec::new();
        self.list_dir_each(path, &mut |e| entries.push(e))?;
        Ok(entries)
    }

    /// [`FtpConnection::list_dir`] handing each entry to `sink` as soon as it is
    /// parsed (MLSD), so a caller can use the first entries while the rest are still
    /// on the wire. LIST entries come once the listing is complete, because their
    /// exact times are asked with MDTM afterwards. An error after some entries means
    /// the listing is incomplete.
    pub fn list_dir_each(&mut self, path: &str, sink: &mut dyn FnMut(RemoteEntry)) -> Result<()> {
        check_path(path)?;
        let use_mlsd = self.features.mlst;
        let verb = if use_mlsd { "MLSD" } else { "LIST -a" };
        self.renew_if_out_of_tickets()?;
        self.forget_cwd();
        let cmd = format!("{verb} {}", self.dir_arg(verb.len() + 1, path)?);
        let data = self.start_transfer(&cmd, 0)?;
        let now = SystemTime::now();
        let mut entries = Vec::new();
        let max_entries = self.opts.max_listing_entries.max(1);
        let max_bytes = max_entries as u64 * LISTING_BYTES_PER_ENTRY;
        let encoding = self.opts.encoding;
        let (mut lines, mut bytes) = (0usize, 0u64);
        let mut dl = Download::new(self, data, cmd);
        {
            let mut rd = BufReader::with_capacity(65536, &mut dl);
            let mut line = Vec::with_capacity(256);
            loop {
                if lines > max_entries || bytes > max_bytes {
                    drop(rd);
                    dl.abandon();
                    log::error!(
                        "the listing of {path} is longer than {max_entries} entries or \
                         {max_bytes} bytes: stopped (raise max_entries= if it is real)"
                    );
                    return Err(FtpError::Protocol(format!(
                        "the listing of {path} has more than {max_entries} entries (or \
                         {max_bytes} bytes); stopped reading it (max_entries=)"
                    )));
                }
                line.clear();
                let n = (&mut rd)
                    .take(mlsd::MAX_LINE_LEN as u64 + 2)
                    .read_until(b'\n', &mut line)
                    .map_err(|e| FtpError::io("reading listing", e));
                let n = match n {
                    Ok(n) => n,
                    Err(e) => {
                        drop(rd);
                        return Err(dl.fail_listing(e));
                    }
                };
                if n == 0 {
                    break;
                }
                bytes += n as u64;
                lines += 1;
                if line.last() != Some(&b'\n') && n > mlsd::MAX_LINE_LEN {
                    log::warn!("skipping an overlong listing line");
                    // Skip the rest of that line, a bounded piece at a time (the
                    // listing's byte bound stops a line that never ends).
                    let mut rest = Vec::new();
                    let skipped = (&mut rd).take(1 << 20).read_until(b'\n', &mut rest);
                    bytes += skipped.unwrap_or(0) as u64;
                    if rest.last() != Some(&b'\n') {
                        lines -= 1; // the same line goes on
                    }
                    continue;
                }
                let text = encoding.decode(&line);
                let text = text.trim_end_matches(['\r', '\n']);
                if text.is_empty() {
                    continue;
                }
                let parsed = if use_mlsd {
                    match mlsd::parse_mlsd_line(text) {
                        Ok(e) => e,
                        Err(err) => {
                            log::warn!("skipping listing line {:?}: {err}", clip(text));
                            None
                        }
                    }
                } else {
                    list::parse_list_line(text, now)
                };
                match parsed {
                    Some(e) if use_mlsd => sink(e),
                    Some(e) => entries.push(e),
                    None => {}
                }
            }
        }
        dl.finish()?;
        if !use_mlsd && self.features.mdtm {
            self.exact_mtimes(path, &mut entries)?;
        }
        entries.into_iter().for_each(sink);
        Ok(())
    }

    /// LIST gives minutes at best (days for older files): ask MDTM for the exact
    /// time of every file, pipelined, so that the directory costs one more round
    /// trip, not one per file. Keeps the LIST time where MDTM fails.
    fn exact_mtimes(&mut self, dir: &str, entries: &mut [RemoteEntry]) -> Result<()> {
        const BATCH: usize = 64;
        let files: Vec<usize> = (0..entries.len())
            .filter(|&i| entries[i].kind == super::entry::EntryKind::File)
            .collect();
        for chunk in files.chunks(BATCH) {
            let mut batch = Vec::with_capacity(chunk.len());
            let mut asked = Vec::with_capacity(chunk.len());
            for &i in chunk {
                let p = if dir.ends_with('/') {
                    format!("{dir}{}", entries[i].name)
                } else {
                    format!("{dir}/{}", entries[i].name)
                };
                // The listing changed into a long directory: names from there.
                if let Some(arg) = self.path_arg_here(5, &p) {
                    batch.push(format!("MDTM {arg}"));
                    asked.push(i);
                }
            }
            let chunk = &asked;
            // MDTM replies do not say whose time they are: a server known to reorder
            // replies gets them one at a time.
            let (replies, _) = self.exchange(&batch, false)?;
            for (&i, r) in chunk.iter().zip(replies) {
                if r.code == 213 {
                    if let Some(t) = timeconv::parse_mdtm_time(r.text().trim()) {
                        entries[i].mtime = Some(t);
                    }
                }
            }
        }
        Ok(())
    }

    // ---- simple commands -------------------------------------------------------

    pub fn size(&mut self, path: &str) -> Result<u64> {
        self.on_paths(5, &[path], |c, a| c.size_at(&a[0]))
    }

    fn size_at(&mut self, arg: &str) -> Result<u64> {
        let r = self.expect(&format!("SIZE {arg}"), |c| c == 213)?;
        r.text()
            .trim()
            .parse()
            .map_err(|_| FtpError::Protocol(format!("bad SIZE reply {:?}", clip(&r.text()))))
    }

    pub fn mdtm(&mut self, path: &str) -> Result<SystemTime> {
        self.on_paths(5, &[path], |c, a| c.mdtm_at(&a[0]))
    }

    fn mdtm_at(&mut self, arg: &str) -> Result<SystemTime> {
        let r = self.expect(&format!("MDTM {arg}"), |c| c == 213)?;
        timeconv::parse_mdtm_time(r.text().trim())
            .ok_or_else(|| FtpError::Protocol(format!("bad MDTM reply {:?}", clip(&r.text()))))
    }

    /// MLST of one path (where the server has MLST).
    pub fn mlst(&mut self, path: &str) -> Result<Option<RemoteEntry>> {
        // "Not found" goes through `on_paths` as the refusal it is (to be asked
        // again from a fresh directory), and comes back as `None`.
        match self.on_paths(5, &[path], |c, a| c.mlst_at(&a[0])) {
            Err(FtpError::Reply { code: 550, .. }) => Ok(None),
            other => other.map(Some),
        }
    }

    fn mlst_at(&mut self, arg: &str) -> Result<RemoteEntry> {
        let r = self.command(&format!("MLST {arg}"))?;
        match r.code {
            250 => {}
            code => {
                return Err(FtpError::Reply {
                    command: "MLST".into(),
                    code,
                    text: r.text(),
                })
            }
        }
        for line in r.lines.iter().skip(1) {
            if line.starts_with(' ') {
                return mlsd::parse_mlst_reply_line(line)
                    .map_err(|e| FtpError::Protocol(format!("bad MLST reply: {e}")));
            }
        }
        Err(FtpError::Protocol("MLST reply without facts".into()))
    }

    pub fn delete(&mut self, path: &str) -> Result<()> {
        self.on_paths(5, &[path], |c, a| {
            c.expect_preparing(&format!("DELE {}", a[0]), |c| c == 250 || c == 200)
        })
    }

    pub fn mkdir(&mut self, path: &str) -> Result<()> {
        self.on_paths(4, &[path], |c, a| {
            c.expect_preparing(&format!("MKD {}", a[0]), |c| c == 257 || c == 250)
        })
    }

    pub fn rmdir(&mut self, path: &str) -> Result<()> {
        self.on_paths(4, &[path], |c, a| {
            c.expect_preparing(&format!("RMD {}", a[0]), |c| c == 250 || c == 200)
        })
    }

    /// RNFR and RNTO sent together (one round trip); if RNFR is refused, the
    /// server answers RNTO with 503 and RNFR's error is returned.
    pub fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        self.on_paths(5, &[from, to], |c, a| c.rename_at(&a[0], &a[1]))
    }

    fn rename_at(&mut self, from: &str, to: &str) -> Result<()> {
        let (rnfr, rnto) = if self.pipelining() {
            let (mut r, unsure) =
                self.exchange(&[format!("RNFR {from}"), format!("RNTO {to}")], true)?;
            let rnto = r.pop();
            match (r.pop(), rnto) {
                // A refusal whose place is uncertain: the rename did not happen,
                // so doing it again one command at a time is safe.
                (Some(_), Some(_)) if !unsure.is_empty() => self.rename_unpipelined(from, to)?,
                (Some(a), Some(b)) => (a, b),
                _ => return Err(FtpError::Protocol("missing reply to RNFR/RNTO".into())),
            }
        } else {
            self.rename_unpipelined(from, to)?
        };
        if rnfr.code != 350 {
            return Err(FtpError::Reply {
                command: "RNFR".into(),
                code: rnfr.code,
                text: rnfr.text(),
            });
        }
        if !matches!(rnto.code, 250 | 200) {
            return Err(FtpError::Reply {
                command: "RNTO".into(),
                code: rnto.code,
                text: rnto.text(),
            });
        }
        Ok(())
    }

    /// RNFR, and RNTO only after its 350 (servers that reorder replies). A refused
    /// RNFR comes back with a made-up 503 for RNTO, which was not sent.
    fn rename_unpipelined(&mut self, from: &str, to: &str) -> Result<(Reply, Reply)> {
        let rnfr = self.command(&format!("RNFR {from}"))?;
        if rnfr.code != 350 {
            let skipped = Reply {
                code: 503,
                lines: vec!["RNTO not sent".into()],
            };
            return Ok((rnfr, skipped));
        }
        let rnto = self.command(&format!("RNTO {to}"))?;
        Ok((rnfr, rnto))
    }

    pub fn chmod(&mut self, path: &str, mode: u32) -> Result<()> {
        self.on_paths(16, &[path], |c, a| {
            c.expect_preparing(&format!("SITE CHMOD {:o} {}", mode & 0o7777, a[0]), |c| {
                c == 200 || c == 250
            })
        })
    }

    /// Sets the modification time with whatever the server offers: MFMT, then
    /// SITE UTIME, then vsftpd's two-argument MDTM. Remembers what worked.
    pub fn set_mtime(&mut self, path: &str, mtime: SystemTime) -> Result<()> {
        // The longest of the lines without the path: SITE UTIME's.
        self.on_paths(64, &[path], |c, a| c.set_mtime_at(&a[0], mtime))
    }

    fn set_mtime_at(&mut self, path: &str, mtime: SystemTime) -> Result<()> {
        let t = timeconv::format_mfmt(mtime);
        let mut order = vec![];
        match self.mtime_method {
            Some(MtimeMethod::Unsupported) => {}
            Some(m) => order.push(m),
            None => {
                if self.features.mfmt {
                    order.push(MtimeMethod::Mfmt);
                }
                order.push(MtimeMethod::SiteUtime);
                order.push(MtimeMethod::MdtmTwoArgs);
            }
        }
        let mut last = None;
        // Only "not implemented" answers from every method prove there is no way;
        // a 550 may just mean "not for this path" (vsftpd refuses directories).
        let mut none_implemented = true;
        for m in order {
            let cmd = match m {
                MtimeMethod::Mfmt => format!("MFMT {t} {path}"),
                MtimeMethod::SiteUtime => format!("SITE UTIME {path} {t} {t} {t} UTC"),
                MtimeMethod::MdtmTwoArgs => format!("MDTM {t} {path}"),
                MtimeMethod::Unsupported => continue,
            };
            let r = self.command(&cmd)?;
            if matches!(r.code, 200 | 213 | 250) {
                self.mtime_method = Some(m);
                return Ok(());
            }
            let err = FtpError::Reply {
                command: first_word(&cmd).to_string(),
                code: r.code,
                text: r.text(),
            };
            let unimplemented = err.is_not_implemented() || r.code == 501;
            none_implemented &= unimplemented;
            if self.mtime_method.is_some() {
                return Err(err);
            }
            last = Some(err);
        }
        if self.mtime_method.is_none() && none_implemented {
            self.mtime_method = Some(MtimeMethod::Unsupported);
        }
        Err(last.unwrap_or(FtpError::Reply {
            command: "MFMT".into(),
            code: 502,
            text: "the server offers no way to set modification times".into(),
        }))
    }

    pub fn noop(&mut self) -> Result<()> {
        self.expect("NOOP", |c| c == 200).map(drop)
    }

    /// Politely ends the session.
    pub fn quit(mut self) {
        let _ = self.command("QUIT");
    }
}

/// Explains a failure of the first exchange after the handshake. Under TLS 1.3 a
/// server refuses a missing or bad client certificate only then: with an alert, or
/// (proftpd, at times) by resetting the connection.
fn post_handshake(e: FtpError, tls_version: &str) -> FtpError {
    if matches!(e, FtpError::Reply { .. }) {
        return e;
    }
    if let Some(msg) = describe_post_handshake_error(&e) {
        return FtpError::Tls(msg);
    }
    if tls_version == "TLSv1.3" && matches!(e, FtpError::Closed(_) | FtpError::Io { .. }) {
        return FtpError::Tls(format!(
            "the server closed the connection right after the TLS handshake ({e}): it may require a client certificate (cert=, key=) or have refused the one given"
        ));
    }
    e
}

/// `r`, the reply to `cmd`, when `ok` accepts its code; else the refusal as an error.
fn accepted(cmd: &str, r: Reply, ok: impl Fn(u16) -> bool) -> Result<Reply> {
    if ok(r.code) {
        Ok(r)
    } else {
        Err(FtpError::Reply {
            command: first_word(cmd).to_string(),
            code: r.code,
            text: r.text(),
        })
    }
}

fn first_word(s: &str) -> &str {
    s.split(' ').next().unwrap_or(s)
}

/// The directory of a PWD reply: the text between the first quote and the next
/// lone one, doubled quotes undoubled (RFC 959).
fn parse_pwd(text: &str) -> Option<String> {
    let start = text.find('"')? + 1;
    let mut out = String::new();
    let mut it = text[start..].chars().peekable();
    while let Some(c) = it.next() {
        if c == '"' {
            if it.peek() == Some(&'"') {
                it.next();
                out.push('"');
            } else {
                return Some(out);
            }
        } else {
            out.push(c);
        }
    }
    None
}

/// `229 Entering Extended Passive Mode (|||6446|)` → 6446.
pub fn parse_epsv(text: &str) -> Result<u16> {
    let bad = || FtpError::Protocol(format!("bad EPSV reply {:?}", clip(text)));
    let open = text.find('(').ok_or_else(bad)?;
    let close = text[open..].find(')').ok_or_else(bad)? + open;
    let inner = &text[open + 1..close];
    let delim = inner.chars().next().ok_or_else(bad)?;
    let parts: Vec<&str> = inner.split(delim).collect();
    if parts.len() != 5 {
        return Err(bad());
    }
    match parts[3].parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(bad()),
    }
}

/// `227 Entering Passive Mode (h1,h2,h3,h4,p1,p2)` → (address, port).
pub fn parse_pasv(text: &str) -> Result<(IpAddr, u16)> {
    let bad = || FtpError::Protocol(format!("bad PASV reply {:?}", clip(text)));
    let start = text.find(|c: char| c.is_ascii_digit()).ok_or_else(bad)?;
    let nums: Vec<u8> = text[start..]
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .take(6)
        .map(|s| s.parse::<u8>().map_err(|_| bad()))
        .collect::<Result<_>>()?;
    if nums.len() != 6 {
        return Err(bad());
    }
    let ip = IpAddr::from([nums[0], nums[1], nums[2], nums[3]]);
    let port = u16::from(nums[4]) << 8 | u16::from(nums[5]);
    if port == 0 {
        return Err(bad());
    }
    Ok((ip, port))
}

impl Download<'_> {
    fn fail_listing(self, e: FtpError) -> FtpError {
        match self.abort() {
            Err(r @ FtpError::Reply { .. }) => r,
            _ => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epsv_replies() {
        assert_eq!(
            parse_epsv("Entering Extended Passive Mode (|||6446|)").unwrap(),
            6446
        );
        assert_eq!(parse_epsv("ok (!!!21!)").unwrap(), 21);
        for bad in [
            "(|||0|)",
            "(|||70000|)",
            "no parens",
            "(|||x|)",
            "(||)",
            "(|||5",
        ] {
            assert!(parse_epsv(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pasv_replies() {
        let (ip, port) = parse_pasv("Entering Passive Mode (127,0,0,1,195,80).").unwrap();
        assert_eq!(ip.to_string(), "127.0.0.1");
        assert_eq!(port, 195 * 256 + 80);
        assert!(parse_pasv("Entering Passive Mode (127,0,0,1,300,1)").is_err());
        assert!(parse_pasv("Entering Passive Mode (127,0,0,1)").is_err());
        assert!(parse_pasv("nothing").is_err());
    }

    #[test]
    fn paths_cannot_smuggle_commands() {
        assert!(check_path("/a\r\nDELE /b").is_err());
        assert!(check_path("/a\0").is_err());
        assert!(check_path("").is_err());
        assert!(check_path("/a b/c").is_ok());
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2".into());
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
