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
//! 425/426 on it is retried once on a fresh EPSV. An EPSV or PASV answered 425 (a
//! passive port another session took: pure-ftpd) is asked again, up to
//! `PASSIVE_BUSY_RETRIES` times.

use super::setup::prepare_socket;
use super::transfer::DataStream;
use super::{FtpConnection, Protection};
use crate::error::{FtpError, Result};
use crate::ftp::command::{Command, Verb};
use crate::ftp::netio;
use crate::ftp::reply::{clip, code, Reply};
use crate::ftp::tls::{Handshake, PendingHandshake, TlsStream};
use std::net::{IpAddr, SocketAddr, TcpStream};
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
    pub(super) fn send_preparing(&mut self, cmds: &[Command]) -> Result<bool> {
        let piggyback =
            self.use_epsv && self.prepared.is_none() && !self.out_of_tickets() && self.pipelining();
        if !piggyback {
            self.send(cmds)?;
            return Ok(false);
        }
        let mut all = Vec::with_capacity(cmds.len() + 1);
        all.extend_from_slice(cmds);
        all.push(Command::epsv());
        self.send(&all)?;
        Ok(true)
    }

    /// Reads the reply to a piggybacked EPSV and starts the data connection. A
    /// refusal only means there is nothing prepared; a lost reply breaks the
    /// connection (the caller's own result stands).
    pub(super) fn finish_piggyback(&mut self, sent: bool) {
        if !sent {
            return;
        }
        match self.read_reply() {
            Ok(r) => self.use_piggybacked_epsv(r),
            Err(_) => self.broken = true,
        }
    }

    /// Starts the data connection a piggybacked EPSV's reply `r` offers, if any.
    pub(super) fn use_piggybacked_epsv(&mut self, r: Reply) {
        if !Verb::Epsv.completes(r.code) {
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
        let mut busy = 0;
        while self.use_epsv {
            let r = self.command(&Command::epsv())?;
            if Verb::Epsv.completes(r.code) {
                return parse_epsv(&r.text());
            }
            if passive_busy(Verb::Epsv, r.code, &r.text(), &mut busy) {
                continue;
            }
            self.epsv_refused(r)?;
        }
        loop {
            match self.pasv_port() {
                Err(FtpError::Reply { code, ref text, .. })
                    if passive_busy(Verb::Pasv, code, text, &mut busy) => {}
                other => return other,
            }
        }
    }

    /// An EPSV answered with something else than 229: "not implemented" turns
    /// EPSV off for this connection (PASV from now on); anything else is an error.
    fn epsv_refused(&mut self, r: Reply) -> Result<()> {
        if !(code::not_implemented(r.code) || r.code == code::BAD_ARGUMENTS) {
            return Err(r.into_error(Verb::Epsv.name()));
        }
        self.use_epsv = false;
        Ok(())
    }

    fn pasv_port(&mut self) -> Result<u16> {
        let r = self.expect(&Command::pasv())?;
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
    pub(super) fn start_transfer(&mut self, cmd: &Command, offset: u64) -> Result<DataStream> {
        self.renew_if_out_of_tickets()?;
        let mut batch = Vec::with_capacity(2);
        if offset > 0 {
            batch.push(Command::rest(offset));
        }
        batch.push(cmd.clone());
        if let Some(tcp) = self.take_prepared() {
            let rest = self.send_transfer(&batch)?;
            match self.open_channel(tcp, rest, cmd) {
                Err(FtpError::Reply { code, text, .. })
                    if matches!(code, code::CANT_OPEN_DATA | code::TRANSFER_ABORTED)
                        && !self.broken =>
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
    fn send_transfer(&mut self, batch: &[Command]) -> Result<bool> {
        if self.pipelining() || batch.len() < 2 {
            self.send(batch)?;
            return Ok(batch.len() > 1);
        }
        for cmd in &batch[..batch.len() - 1] {
            self.expect(cmd)?;
        }
        self.send(&batch[batch.len() - 1..])?;
        Ok(false)
    }

    /// A new passive connection with `batch` sent: EPSV pipelined with it, or PASV
    /// first where the server has no EPSV.
    fn open_passive(&mut self, batch: &[Command]) -> Result<TcpStream> {
        let mut busy = 0;
        while self.use_epsv {
            let mut cmds = Vec::with_capacity(batch.len() + 1);
            cmds.push(Command::epsv());
            cmds.extend_from_slice(batch);
            self.send(&cmds)?;
            let epsv = self.read_reply()?;
            let is_epsv = Verb::Epsv.completes(epsv.code);
            if !is_epsv && !epsv.is_negative() {
                // Another command's reply came first: the server reorders replies.
                // Which of those still due is which cannot be told: drop the
                // connection (the pool retries, one command at a time now).
                self.opts.server.note_reordering(&format!(
                    "EPSV+{} answered {} first",
                    cmd_of(batch),
                    epsv.code
                ));
                self.broken = true;
                return Err(FtpError::Protocol(format!(
                    "reply {} to EPSV: the server answered out of order",
                    epsv.code
                )));
            }
            if is_epsv {
                // From here the batch's replies are pending: a failure desynchronises
                // the control connection, which is then dropped.
                return parse_epsv(&epsv.text())
                    .and_then(|port| self.start_data_connect(port))
                    .inspect_err(|_| self.broken = true);
            }
            // The batch fails for want of a data connection: consume its replies
            // (a server may say 150 before it finds no data connection).
            for _ in batch {
                while self.read_reply()?.is_preliminary() {}
            }
            if passive_busy(Verb::Epsv, epsv.code, &epsv.text(), &mut busy) {
                continue;
            }
            self.epsv_refused(epsv)?;
        }
        let port = self.passive_port()?;
        let tcp = self.start_data_connect(port)?;
        self.send(batch)?;
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
    fn open_channel(&mut self, tcp: TcpStream, rest: bool, cmd: &Command) -> Result<DataStream> {
        let verb = cmd.verb();
        let deadline = Instant::now() + crate::deadline::bound_silence(self.opts.timeout);
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
                    // Silence: waiting for the replies still due would meet the
                    // same. The connection is given up (and counts as silent).
                    drop(channel);
                    self.mark_silent();
                    return Err(FtpError::Timeout(format!(
                        "{}: neither a reply nor the data connection came",
                        verb.name()
                    )));
                }
                want_reply && ready.contains(&(fds.len() - 1))
            };
            if reply_ready {
                let r = self.read_reply()?;
                if rest_pending {
                    rest_pending = false;
                    if !Verb::Rest.completes(r.code) {
                        // The command would now send the file from its start: give
                        // this connection up rather than read the wrong bytes.
                        self.broken = true;
                        return Err(r.into_error(Verb::Rest.name()));
                    }
                } else if r.is_preliminary() {
                    started = true;
                } else {
                    // Refused before any data: the command's only reply.
                    return Err(r.into_error(verb.name()));
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
                    verb.name(),
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
    fn fail_before_data(&mut self, rest_pending: bool, cmd: &Command, e: FtpError) -> FtpError {
        if rest_pending {
            match self.read_reply() {
                Ok(r) if Verb::Rest.completes(r.code) => {}
                Ok(r) => {
                    // REST refused: the command's reply is still due, and the
                    // connection is not trusted any more.
                    let _ = self.fail_after_start(cmd, FtpError::Protocol(String::new()));
                    self.broken = true;
                    return r.into_error(Verb::Rest.name());
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
    fn fail_after_start(&mut self, cmd: &Command, e: FtpError) -> FtpError {
        for _ in 0..3 {
            match self.read_reply() {
                Ok(r) if r.is_preliminary() => continue,
                Ok(r) if r.is_negative() => {
                    return FtpError::Reply {
                        command: cmd.verb().name().to_string(),
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

/// The transfer command's verb in a `[REST n] CMD` batch.
fn cmd_of(batch: &[Command]) -> &'static str {
    batch.last().map(|c| c.verb().name()).unwrap_or("")
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

/// Times a 425 to EPSV/PASV is asked again. pure-ftpd picks a random passive port
/// and binds it with SO_REUSEADDR, so two sessions can pick the same one: the
/// second one's listen() fails, and it answers "425 Unable to identify the local
/// data socket: Address already in use". The next try picks another port.
const PASSIVE_BUSY_RETRIES: u32 = 3;

/// Whether `verb` (EPSV or PASV), refused with `code`, is worth asking again (a
/// busy passive port, see `PASSIVE_BUSY_RETRIES`); counts the tries in `busy`.
fn passive_busy(verb: Verb, code: u16, text: &str, busy: &mut u32) -> bool {
    if code != code::CANT_OPEN_DATA || *busy >= PASSIVE_BUSY_RETRIES {
        return false;
    }
    *busy += 1;
    log::debug!(
        "{} answered {code} {}: asking again",
        verb.name(),
        clip(text)
    );
    true
}

/// `229 Entering Extended Passive Mode (|||6446|)` → 6446.
fn parse_epsv(text: &str) -> Result<u16> {
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
fn parse_pasv(text: &str) -> Result<(IpAddr, u16)> {
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
}
