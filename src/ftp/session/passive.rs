//! Opening data connections with as few round trips as the protocol allows.
//!
//! Design. A PROT P transfer naively costs five round trips before its first byte:
//! EPSV → 229, TCP connect, the command → 150, the TLS handshake (two flights).
//! ftpsfs removes all but the ones the server must answer:
//!
//! - **Prepared connections.** [`FtpConnection::prepare_data`] sends EPSV (or PASV)
//!   and starts a TCP connect to the passive port without waiting for it, while the
//!   connection is idle (the pool calls it on the connections given back to it).
//!   Servers accept the passive connection only when the transfer command arrives,
//!   so the socket waits in the server's listen queue until then. A transfer on a
//!   prepared connection sends only `[REST n] CMD`.
//! - **Pipelining.** Without a prepared socket, `EPSV [REST n] CMD` go in one write
//!   and the TCP connect starts as soon as the 229 is read.
//! - **ClientHello with the command.** The TLS handshake starts right after the
//!   command is sent, not after its 150: the server reads the ClientHello when it
//!   gets to it. Meanwhile the control connection is watched, so a refusal (550 no
//!   such file, 425) ends the wait at once instead of after a timeout.
//!
//! A transfer on a prepared connection then costs the command's round trip, which
//! also carries the server's TLS flight, plus one for our Finished before the
//! server sends data: two in all (TLS 1.2 and 1.3 alike), against five.
//!
//! A prepared socket can go stale (the server closed its passive listener after an
//! idle timeout or another EPSV): it is checked before use (a reset socket has
//! input), dropped after [`PREPARED_MAX_AGE`], and a transfer whose command gets a
//! 425/426 on it is retried once on a fresh EPSV.

use super::{first_word, prepare_socket, FtpConnection, Protection, Reply};
use crate::error::{FtpError, Result};
use crate::ftp::data::DataStream;
use crate::ftp::netio;
use crate::ftp::session::{parse_epsv, parse_pasv};
use crate::ftp::tls::{Handshake, PendingHandshake, TlsStream};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// A prepared socket older than this is not trusted any more.
pub const PREPARED_MAX_AGE: Duration = Duration::from_secs(20);

/// How this connection's data connections were opened (tests, logs).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DataStats {
    /// Transfers that used a prepared connection.
    pub prepared_used: u64,
    /// Transfers that opened their own (EPSV pipelined with the command, or PASV).
    pub opened_on_demand: u64,
    /// Prepared connections found dead or too old, or refused by the server.
    pub prepared_dropped: u64,
}

/// A passive data connection opened before its transfer command.
pub(super) struct PreparedData {
    tcp: TcpStream,
    since: Instant,
}

impl PreparedData {
    fn new(tcp: TcpStream) -> Self {
        PreparedData {
            tcp,
            since: Instant::now(),
        }
    }
}

impl FtpConnection {
    /// Opens the next transfer's data connection ahead of time (EPSV and a TCP
    /// connect that completes in the background). Idempotent. A connection whose
    /// TLS 1.3 tickets are used up is renewed now rather than at the next transfer.
    pub fn prepare_data(&mut self) -> Result<()> {
        if self.broken || self.prepared.is_some() {
            return Ok(());
        }
        if self.out_of_tickets() {
            self.renew()?;
        }
        let port = self.passive_port()?;
        let tcp = self.start_data_connect(port).inspect_err(|_| {
            // The server now waits for a connection we could not make.
            self.broken = true;
        })?;
        self.prepared = Some(PreparedData::new(tcp));
        Ok(())
    }

    pub fn data_stats(&self) -> DataStats {
        self.data_stats
    }

    /// Sends `lines` in one write, with an EPSV after them when the next transfer
    /// has no prepared connection: the preparation then costs no round trip of its
    /// own. The caller reads its own replies, then calls [`Self::finish_piggyback`]
    /// with the returned flag, whatever those replies said.
    pub(crate) fn send_batch_preparing(&mut self, lines: &[String]) -> Result<bool> {
        let piggyback =
            self.use_epsv && self.prepared.is_none() && !self.out_of_tickets() && self.pipelining();
        if !piggyback {
            self.send_batch(lines)?;
            return Ok(false);
        }
        let mut all = Vec::with_capacity(lines.len() + 1);
        all.extend_from_slice(lines);
        all.push("EPSV".to_string());
        self.send_batch(&all)?;
        Ok(true)
    }

    /// Reads the reply to a piggybacked EPSV and starts the data connection. A
    /// refusal only means there is nothing prepared; a lost reply breaks the
    /// connection (the caller's own result stands).
    pub(crate) fn finish_piggyback(&mut self, sent: bool) {
        if !sent {
            return;
        }
        match self.read_reply() {
            Ok(r) => self.use_piggybacked_epsv(r),
            Err(_) => self.broken = true,
        }
    }

    /// Starts the data connection a piggybacked EPSV's reply `r` offers, if any.
    pub(crate) fn use_piggybacked_epsv(&mut self, r: Reply) {
        if r.code != 229 {
            log::debug!("piggybacked EPSV refused: {} {}", r.code, r.text());
            return;
        }
        match parse_epsv(&r.text()).and_then(|port| self.start_data_connect(port)) {
            Ok(tcp) => self.prepared = Some(PreparedData::new(tcp)),
            Err(e) => log::debug!("piggybacked data connection failed: {e}"),
        }
    }

    /// Whether the next transfer has its data connection ready.
    pub fn has_prepared_data(&self) -> bool {
        self.prepared.is_some()
    }

    /// The prepared socket, if it is still fit for use.
    fn take_prepared(&mut self) -> Option<TcpStream> {
        let p = self.prepared.take()?;
        if p.since.elapsed() > PREPARED_MAX_AGE || netio::has_input(&p.tcp) {
            log::debug!("dropping a stale prepared data connection");
            self.data_stats.prepared_dropped += 1;
            return None;
        }
        Some(p.tcp)
    }

    /// EPSV, else PASV: the port of the server's passive listener.
    fn passive_port(&mut self) -> Result<u16> {
        if self.use_epsv {
            let r = self.command("EPSV")?;
            if r.code == 229 {
                return parse_epsv(&r.text());
            }
            self.epsv_refused(&r)?;
        }
        self.pasv_port()
    }

    /// An EPSV answered with something else than 229: "not implemented" turns
    /// EPSV off for this connection (PASV from now on); anything else is an error.
    fn epsv_refused(&mut self, r: &Reply) -> Result<()> {
        if !matches!(r.code, 500 | 501 | 502 | 504) {
            return Err(FtpError::Reply {
                command: "EPSV".into(),
                code: r.code,
                text: r.text(),
            });
        }
        self.use_epsv = false;
        Ok(())
    }

    fn pasv_port(&mut self) -> Result<u16> {
        let r = self.expect("PASV", |c| c == 227)?;
        let (ip, port) = parse_pasv(&r.text())?;
        if ip != self.peer {
            log::debug!(
                "PASV address {ip} differs from the control peer {}: using the peer",
                self.peer
            );
        }
        Ok(port)
    }

    /// Starts the TCP connect to a passive port, always at the control peer's address.
    fn start_data_connect(&self, port: u16) -> Result<TcpStream> {
        let addr = SocketAddr::new(self.peer, port);
        let s = netio::connect_started(addr)
            .map_err(|e| FtpError::io(format!("opening data connection to {addr}"), e))?;
        prepare_socket(&s, crate::deadline::bound(self.opts.timeout))?;
        Ok(s)
    }

    /// Replaces the connection now when its next data connection could not resume
    /// a TLS session (see `out_of_tickets`).
    pub(super) fn renew_if_out_of_tickets(&mut self) -> Result<()> {
        if self.out_of_tickets() {
            self.renew()?;
        }
        Ok(())
    }

    /// Opens a data connection and starts `cmd` on it (after `REST offset` if > 0).
    /// A path in `cmd` may be relative to the current directory (`longpath`), which
    /// a renewal here would lose: callers renew first (`renew_if_out_of_tickets`).
    pub(crate) fn start_transfer(&mut self, cmd: &str, offset: u64) -> Result<DataStream> {
        self.renew_if_out_of_tickets()?;
        let mut batch = Vec::with_capacity(3);
        if offset > 0 {
            batch.push(format!("REST {offset}"));
        }
        batch.push(cmd.to_string());
        if let Some(tcp) = self.take_prepared() {
            let rest = self.send_transfer(&batch)?;
            match self.open_channel(tcp, rest, cmd) {
                Err(FtpError::Reply { code, text, .. })
                    if matches!(code, 425 | 426) && !self.broken =>
                {
                    log::debug!("prepared data connection refused ({code} {text}): new EPSV");
                    self.data_stats.prepared_dropped += 1;
                }
                other => {
                    self.data_stats.prepared_used += 1;
                    return other;
                }
            }
        }
        self.data_stats.opened_on_demand += 1;
        if !self.pipelining() {
            let port = self.passive_port()?;
            let tcp = self.start_data_connect(port)?;
            let rest = self.send_transfer(&batch)?;
            return self.open_channel(tcp, rest, cmd);
        }
        let tcp = self.open_passive(&batch)?;
        self.open_channel(tcp, offset > 0, cmd)
    }

    /// Sends `[REST n] CMD`: together, or, to a server that reorders replies, REST
    /// alone first (its 350 read here). True when a REST reply is still due.
    fn send_transfer(&mut self, batch: &[String]) -> Result<bool> {
        if self.pipelining() || batch.len() < 2 {
            self.send_batch(batch)?;
            return Ok(batch.len() > 1);
        }
        for line in &batch[..batch.len() - 1] {
            self.expect(line, |c| c == 350)?;
        }
        self.send_batch(&batch[batch.len() - 1..])?;
        Ok(false)
    }

    /// A new passive connection with `batch` sent: EPSV pipelined with it, or PASV
    /// first where the server has no EPSV.
    fn open_passive(&mut self, batch: &[String]) -> Result<TcpStream> {
        if self.use_epsv {
            let mut lines = Vec::with_capacity(batch.len() + 1);
            lines.push("EPSV".to_string());
            lines.extend_from_slice(batch);
            self.send_batch(&lines)?;
            let epsv = self.read_reply()?;
            if epsv.code != 229 && epsv.code < 400 {
                // Another command's reply came first: the server reorders replies.
                // Which of those still due is which cannot be told: drop the
                // connection (the pool retries, one command at a time now).
                self.opts.server.note_reordering(&format!(
                    "EPSV+{} answered {} first",
                    first_word(cmd_of(batch)),
                    epsv.code
                ));
                self.broken = true;
                return Err(FtpError::Protocol(format!(
                    "reply {} to EPSV: the server answered out of order",
                    epsv.code
                )));
            }
            if epsv.code == 229 {
                // From here the batch's replies are pending: a failure desynchronises
                // the control connection, which is then dropped.
                return parse_epsv(&epsv.text())
                    .and_then(|port| self.start_data_connect(port))
                    .inspect_err(|_| self.broken = true);
            }
            // The batch fails for want of a data connection: consume its replies.
            for _ in batch {
                self.read_reply()?;
            }
            self.epsv_refused(&epsv)?;
        }
        let port = self.pasv_port()?;
        let tcp = self.start_data_connect(port)?;
        self.send_batch(batch)?;
        Ok(tcp)
    }

    /// True when a reply can be read from the control connection without waiting
    /// on the socket (already decrypted or buffered).
    fn control_buffered(&self) -> bool {
        !self.reader.is_empty()
            || match &self.ctrl.stream {
                super::ControlStream::Tls(s) => s.ssl().pending() > 0,
                super::ControlStream::Plain(_) => false,
            }
    }

    fn control_fd(&self) -> std::os::fd::RawFd {
        self.ctrl.tcp().as_raw_fd()
    }

    /// Completes a data connection whose command (`REST` first when `rest`) is sent:
    /// waits for the TCP connect, runs the TLS handshake (PROT P) and reads the
    /// command's preliminary reply, whichever comes first. A refusal on the control
    /// connection ends it with the server's reply.
    fn open_channel(&mut self, tcp: TcpStream, rest: bool, cmd: &str) -> Result<DataStream> {
        let deadline = Instant::now() + crate::deadline::bound(self.opts.timeout);
        let mut rest_pending = rest;
        let mut started = false;
        if let Err(e) = netio::wait_connected(&tcp, deadline) {
            drop(tcp);
            let e = FtpError::io("opening data connection", e);
            return Err(self.fail_before_data(rest_pending, cmd, e));
        }
        let mut channel = match self.opts.protection {
            Protection::Clear => Channel::Plain(tcp),
            Protection::Private => {
                let sess = self.session.lock().ok().and_then(|mut s| s.take());
                // The data connection's own new tickets go to this control
                // connection's slot: TLS 1.3 tickets are single-use on proftpd.
                let host = self.opts.host.clone();
                let begun = self
                    .tls
                    .begin_connect(&host, tcp, Some(&self.session), sess.as_ref());
                match begun {
                    Ok(h) => Channel::from(h),
                    Err(e) => return Err(self.fail_before_data(rest_pending, cmd, e)),
                }
            }
        };
        loop {
            let want_reply = rest_pending || !started;
            let handshake_fd = match &channel {
                Channel::Pending(p) => Some((
                    p.tcp().as_raw_fd(),
                    if p.wants_write() {
                        libc::POLLOUT
                    } else {
                        libc::POLLIN
                    },
                )),
                _ => None,
            };
            if handshake_fd.is_none() && !want_reply {
                break;
            }
            let reply_ready = if want_reply && self.control_buffered() {
                true
            } else {
                let mut fds = Vec::with_capacity(2);
                if let Some(h) = handshake_fd {
                    fds.push(h);
                }
                if want_reply {
                    fds.push((self.control_fd(), libc::POLLIN));
                }
                let ready = netio::poll(&mut fds, deadline)
                    .map_err(|e| FtpError::io("waiting for the data connection", e))?;
                if ready.is_empty() {
                    drop(channel);
                    let e = FtpError::Timeout(format!(
                        "{}: neither a reply nor the data connection came",
                        first_word(cmd)
                    ));
                    return Err(self.fail_before_data(rest_pending, cmd, e));
                }
                want_reply && ready.contains(&(fds.len() - 1))
            };
            if reply_ready {
                let r = self.read_reply()?;
                if rest_pending {
                    rest_pending = false;
                    if r.code != 350 {
                        // The command would now send the file from its start: give
                        // this connection up rather than read the wrong bytes.
                        self.broken = true;
                        return Err(FtpError::Reply {
                            command: "REST".into(),
                            code: r.code,
                            text: r.text(),
                        });
                    }
                } else if r.is_preliminary() {
                    started = true;
                } else {
                    // Refused before any data: the command's only reply.
                    return Err(FtpError::Reply {
                        command: first_word(cmd).to_string(),
                        code: r.code,
                        text: r.text(),
                    });
                }
                continue;
            }
            if let Channel::Pending(p) = channel {
                channel = match self.tls.continue_handshake(p) {
                    Ok(h) => Channel::from(h),
                    Err(e) => {
                        let due = rest_pending;
                        return Err(if started {
                            self.fail_after_start(cmd, e)
                        } else {
                            self.fail_before_data(due, cmd, e)
                        });
                    }
                };
            }
        }
        match channel {
            Channel::Plain(tcp) => {
                self.last_data_resumed = None;
                tcp.set_nonblocking(false)
                    .map_err(|e| FtpError::io("data connection", e))?;
                Ok(DataStream::Plain(tcp))
            }
            Channel::Tls(s) => {
                s.get_ref()
                    .set_nonblocking(false)
                    .map_err(|e| FtpError::io("data connection", e))?;
                self.last_data_resumed = Some(s.ssl().session_reused());
                log::debug!(
                    "data connection {}: {}, session {}",
                    first_word(cmd),
                    s.ssl().version_str(),
                    if s.ssl().session_reused() {
                        "resumed"
                    } else {
                        "NOT resumed"
                    }
                );
                Ok(DataStream::Tls(s))
            }
            Channel::Pending(_) => Err(FtpError::Protocol(
                "data connection handshake left unfinished".into(),
            )),
        }
    }

    /// The data connection failed before the server answered the command (its
    /// socket is closed by now). Reads the replies still due, so that the server's
    /// reason (425 "did not reuse TLS session", 550...) is what the caller sees and
    /// the control connection stays in step; without one, it is given up.
    fn fail_before_data(&mut self, rest_pending: bool, cmd: &str, e: FtpError) -> FtpError {
        if rest_pending {
            match self.read_reply() {
                Ok(r) if r.code == 350 => {}
                Ok(r) => {
                    // REST refused: the command's reply is still due, and the
                    // connection is not trusted any more.
                    let _ = self.fail_after_start(cmd, FtpError::Protocol(String::new()));
                    self.broken = true;
                    return FtpError::Reply {
                        command: "REST".into(),
                        code: r.code,
                        text: r.text(),
                    };
                }
                Err(_) => {
                    self.broken = true;
                    return e;
                }
            }
        }
        self.fail_after_start(cmd, e)
    }

    /// Reads the command's replies up to its final one after its data connection
    /// failed, and returns the server's refusal, or `e` when it had none.
    fn fail_after_start(&mut self, cmd: &str, e: FtpError) -> FtpError {
        for _ in 0..3 {
            match self.read_reply() {
                Ok(r) if r.is_preliminary() => continue,
                Ok(r) if !r.is_positive() => {
                    return FtpError::Reply {
                        command: first_word(cmd).to_string(),
                        code: r.code,
                        text: format!("{} (data connection: {e})", r.text()),
                    };
                }
                _ => break,
            }
        }
        self.broken = true;
        e
    }
}

/// The transfer command of a `[REST n] CMD` batch.
fn cmd_of(batch: &[String]) -> &str {
    batch.last().map(String::as_str).unwrap_or("")
}

/// A data connection on its way up.
enum Channel {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
    Pending(PendingHandshake),
}

impl From<Handshake> for Channel {
    fn from(h: Handshake) -> Self {
        match h {
            Handshake::Done(s) => Channel::Tls(Box::new(s)),
            Handshake::Pending(p) => Channel::Pending(p),
        }
    }
}
