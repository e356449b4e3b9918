//! Opening a control connection: TCP, TLS (explicit AUTH TLS or implicit), login,
//! PBSZ/PROT, CCC, FEAT; and replacing it when its TLS 1.3 tickets are used up.
//!
//! Design. There is no plaintext mode: every failure to get TLS is an error, and
//! the scheme probe (`ftp::probe`) explains a wrong scheme instead of falling back.
//! The login runs under the operation's deadline (`crate::deadline`).

use super::{longpath, Control, ControlStream, DataStats, FtpConnection, TlsInfo};
use crate::error::{FtpError, Result};
use crate::ftp::command::{Command, Verb};
use crate::ftp::features::Features;
use crate::ftp::reply::{code, LineReader};
use crate::ftp::session::{ConnectOptions, Protection};
use crate::ftp::tls::{
    describe_post_handshake_error, summarize_cert, SessionSlot, SessionStore, TlsContext,
};
use std::io::Write;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

pub(super) fn prepare_socket(s: &TcpStream, timeout: Duration) -> Result<()> {
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
                .map_err(|e| {
                    crate::ftp::probe::explain_implicit_failure(e, &opts.host, opts.port)
                })?
        } else {
            let mut plain = tcp;
            let wait = crate::deadline::bound(opts.timeout);
            crate::ftp::probe::wait_for_greeting(&plain, &opts.host, opts.port, wait)?;
            let greeting = reader.read_reply(&mut plain)?;
            if greeting.code != code::READY {
                return Err(greeting.into_error("connect"));
            }
            let auth = Command::auth_tls();
            log::debug!("> {}", auth.shown());
            plain
                .write_all(format!("{}\r\n", auth.line()).as_bytes())
                .map_err(|e| FtpError::io("sending AUTH TLS", e))?;
            let r = reader.read_reply(&mut plain)?;
            if !Verb::Auth.completes(r.code) {
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
            silent_at: None,
            last_used: Instant::now(),
            round_trip: Duration::MAX,
            prepared: None,
            data_stats: DataStats::default(),
            workdir: longpath::WorkDir::default(),
        };
        if opts.implicit {
            let version = conn.tls_info.version.clone();
            let greeting = conn.read_reply().map_err(|e| post_handshake(e, &version))?;
            if greeting.code != code::READY {
                return Err(greeting.into_error("connect"));
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
        let r = self.command(&Command::user(&user))?;
        let r = match r.code {
            code::NEED_PASSWORD | code::NEED_ACCOUNT => {
                let pass = self.opts.password.clone();
                self.command(&Command::pass(pass.expose()))?
            }
            _ => r,
        };
        match r.code {
            code::LOGGED_IN | code::SUPERFLUOUS => Ok(()),
            code::NOT_LOGGED_IN => Err(FtpError::Reply {
                command: "login".into(),
                code: r.code,
                text: format!("login incorrect for user {user:?} ({})", r.text()),
            }),
            _ => Err(r.into_error("login")),
        }
    }

    fn protect(&mut self) -> Result<()> {
        // Implicit FTPS servers may not know PBSZ: its refusal is theirs to make.
        let pbsz = Command::pbsz0();
        let r = self.command(&pbsz)?;
        if !self.opts.implicit {
            pbsz.accept(r)?;
        }
        self.expect(&Command::prot(self.opts.protection)).map(drop)
    }

    /// RFC 2228 CCC: after login, end TLS on the control connection (bidirectional
    /// close_notify) and go on in clear on the same TCP socket.
    fn clear_command_channel(&mut self, tcp: TcpStream) -> Result<()> {
        self.expect(&Command::ccc())?;
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
        let r = self.command(&Command::feat())?;
        if Verb::Feat.completes(r.code) {
            self.features = Features::parse(&r.lines);
        }
        // One write, one round trip. OPTS refusals are tolerated (pure-ftpd
        // answers 504 to OPTS UTF8 ON).
        let mut batch = Vec::with_capacity(3);
        // With encoding= the names are in the server's own charset: leave it so.
        if self.features.utf8 && !self.opts.encoding.converts() {
            batch.push(Command::opts_utf8_on());
        }
        if let Some(facts) = self.features.mlst_opts() {
            // Only the facts used: less for the server to compute and send.
            batch.push(Command::opts_mlst(&facts));
        }
        batch.push(Command::type_image());
        let (replies, _) = self.exchange(&batch, false)?;
        for (cmd, r) in batch.iter().zip(replies) {
            if cmd.verb() == Verb::Type {
                cmd.accept(r)?;
            } else if !r.is_positive() {
                log::debug!("{} refused: {} {}", cmd.shown(), r.code, r.text());
            }
        }
        Ok(())
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
    pub(super) fn out_of_tickets(&self) -> bool {
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
    pub(super) fn renew(&mut self) -> Result<()> {
        log::debug!("no unused TLS session ticket left: opening a new control connection");
        self.tls.note_tickets_used_up();
        self.say_goodbye();
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

    /// Politely ends the session: QUIT, waiting for the server's goodbye no longer
    /// than a live server needs to answer ([`FtpConnection::answer_within`]), so a
    /// path that died without a word costs an unmount about a second, not
    /// `timeout=` per connection.
    pub fn quit(mut self) {
        self.say_goodbye();
    }

    /// QUIT, waiting for the answer at most [`FtpConnection::answer_within`].
    fn say_goodbye(&mut self) {
        let _scope = crate::deadline::start(crate::deadline::bound(self.answer_within()));
        let _ = self.command(&Command::quit());
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
