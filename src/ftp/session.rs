//! One logged-in FTPS control connection: the commands of a mounted filesystem and
//! the data connections they open. Knows nothing of FUSE.
//!
//! Design. `FtpConnection` owns the control stream and what the connection learnt
//! (features, how to set times, the current directory, a prepared data connection).
//! This file holds the connection's state and its plumbing: sending [`Command`]s
//! (one, or several in one write), reading replies, and matching replies to
//! pipelined commands. Each job on top of it has its module:
//!
//! - `setup`: TCP, explicit or implicit TLS, login, PBSZ/PROT, CCC, FEAT; renewal.
//! - `file_commands`: SIZE, MDTM, MLST, DELE, MKD, RMD, RNFR/RNTO, SITE CHMOD, times.
//! - `transfer`: downloads and uploads on a data connection (RETR, STOR, APPE).
//! - `listing`: MLSD / LIST on a data connection, parsed by `ftp::listing`.
//! - `passive`: opening data connections (EPSV/PASV), ahead of time where possible.
//! - `order`: which reply belongs to which pipelined command.
//! - `longpath`: paths longer than a command line.

mod file_commands;
mod listing;
mod longpath;
mod order;
mod passive;
mod setup;
mod transfer;

use super::command::Command;
use super::features::Features;
use super::reply::{clip, code, LineReader, Reply};
use super::tls::{CertSummary, SessionSlot, TlsContext, TlsStream};
use crate::error::{FtpError, Result};
use crate::names::NameCodec;
pub use longpath::MAX_COMMAND_LINE;
pub use order::ServerTraits;
pub use passive::DataStats;
use passive::PreparedData;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};
pub use transfer::{Download, Upload};

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
    /// The socket's timeouts as last set (`crate::deadline::arm`).
    timeouts: std::cell::Cell<Option<Duration>>,
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
            // Set up under an operation's deadline, perhaps: the first use sets them.
            timeouts: std::cell::Cell::new(None),
        }
    }

    fn tcp(&self) -> &TcpStream {
        match &self.stream {
            ControlStream::Tls(s) => s.get_ref(),
            ControlStream::Plain(s) => s,
        }
    }

    fn arm(&self) -> io::Result<()> {
        crate::deadline::arm(self.tcp(), self.base, &self.timeouts)
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

/// No answer for this long after a command, then a timeout: the server or the path
/// went silent (see [`FtpConnection::went_silent`]).
pub const SILENCE: Duration = Duration::from_secs(1);

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
    /// When a socket call timed out (the server went silent): see `went_silent`.
    silent_at: Option<Instant>,
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

impl FtpConnection {
    // ---- sending commands and reading replies ------------------------------------

    /// Writes `cmds` in one write (one command, or a pipelined batch).
    fn send(&mut self, cmds: &[Command]) -> Result<()> {
        let mut buf = Vec::new();
        for cmd in cmds {
            if cmd.line().contains(['\r', '\n', '\0']) {
                return Err(FtpError::Invalid("command contains a line break".into()));
            }
            if cmds.len() > 1 {
                log::debug!("> {} (pipelined)", cmd.shown());
            } else {
                log::debug!("> {}", cmd.shown());
            }
            buf.extend_from_slice(&self.wire(cmd.line())?);
            buf.extend_from_slice(b"\r\n");
        }
        let r = self.ctrl.write_all(&buf).and_then(|_| self.ctrl.flush());
        self.last_used = Instant::now();
        let what = match cmds {
            [one] => format!("sending {}", one.verb().name()),
            _ => "sending commands".to_string(),
        };
        r.map_err(|e| self.lost(FtpError::io(what, e)))
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
        if r.code == code::SERVICE_CLOSING {
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
        if matches!(e, FtpError::Timeout(_)) {
            self.mark_silent();
        } else if e.is_connection_lost() {
            self.broken = true;
        }
        e
    }

    /// Sends one command and reads its reply, whatever the code.
    pub fn command(&mut self, cmd: &Command) -> Result<Reply> {
        let t = Instant::now();
        self.send(std::slice::from_ref(cmd))?;
        let r = self.read_reply();
        self.round_trip = self.round_trip.min(t.elapsed());
        r
    }

    /// Sends one command; a reply that does not complete it becomes an error.
    fn expect(&mut self, cmd: &Command) -> Result<Reply> {
        let r = self.command(cmd)?;
        cmd.accept(r)
    }

    /// [`Self::expect`] for the commands of a mounted filesystem (DELE, MKD...):
    /// an EPSV for the next transfer goes with the command when none is prepared.
    /// When the server answered the two out of order and the command's refusal
    /// could be the EPSV's, the command (which failed, so changed nothing) is sent
    /// again alone for its real reason.
    fn expect_preparing(&mut self, cmd: Command) -> Result<()> {
        let (mut replies, unsure) = self.exchange(std::slice::from_ref(&cmd), true)?;
        let mut r = replies.swap_remove(0);
        if unsure.contains(&0) {
            r = self.command(&cmd)?;
        }
        cmd.accept(r).map(drop)
    }

    /// True while the server is not known to answer pipelined commands out of order.
    fn pipelining(&self) -> bool {
        self.opts.server.pipelining()
    }

    /// Sends `cmds` and returns one reply per command, in command order, and the
    /// commands whose (negative) reply is uncertain (see `order`). Pipelined in one
    /// write, with an EPSV for the next transfer when `prepare` and none is
    /// prepared, unless the server reorders replies: then one command at a time.
    fn exchange(&mut self, cmds: &[Command], prepare: bool) -> Result<(Vec<Reply>, Vec<usize>)> {
        if !self.pipelining() {
            let mut replies = Vec::with_capacity(cmds.len());
            for c in cmds {
                replies.push(self.command(c)?);
            }
            return Ok((replies, Vec::new()));
        }
        let piggyback =
            prepare && self.use_epsv && self.prepared.is_none() && !self.out_of_tickets();
        let mut all = cmds.to_vec();
        if piggyback {
            all.push(Command::epsv());
        }
        self.send(&all)?;
        let mut replies = Vec::with_capacity(all.len());
        for i in 0..all.len() {
            match self.read_reply() {
                Ok(r) => replies.push(r),
                // The piggybacked EPSV's reply alone is lost: the caller's stand
                // if they are in order (the connection is dropped afterwards).
                Err(_) if piggyback && i == cmds.len() && order::in_order(cmds, &replies) => {
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
            let sent: Vec<&str> = all.iter().map(|c| c.verb().name()).collect();
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
        let unsure = unsure.into_iter().filter(|&i| i < cmds.len()).collect();
        Ok((replies, unsure))
    }

    /// Asks whether the server keeps the order of pipelined replies: a `CWD` to the
    /// current directory and an `EPSV` sent together must be answered 250, then 229.
    /// Leaves the connection in step either way (for `check`).
    pub fn probe_reply_order(&mut self) -> Result<bool> {
        let r = self.expect(&Command::pwd())?;
        let dir = parse_pwd(&r.text()).unwrap_or_else(|| "/".to_string());
        check_path(&dir)?;
        let batch = [Command::cwd(&dir), Command::epsv()];
        self.send(&batch)?;
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

    // ---- state -------------------------------------------------------------------

    /// The shortest command round trip seen on this connection (login has several).
    pub fn round_trip(&self) -> Duration {
        self.round_trip
    }

    /// How long a live server may take to answer a trivial command (NOOP, QUIT):
    /// `SILENCE`, or 8 round trips if longer, and at most `timeout=`. Waits that
    /// only tell a live connection from a dead one use it instead of `timeout=`.
    pub fn answer_within(&self) -> Duration {
        SILENCE
            .max(self.round_trip.saturating_mul(8))
            .min(self.opts.timeout)
    }

    /// Marks the connection unusable so that the pool drops it.
    pub fn mark_broken(&mut self) {
        self.broken = true;
    }

    /// True when an error left the connection unusable; the pool drops it.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Marks the connection unusable because a socket call on it timed out.
    pub fn mark_silent(&mut self) {
        self.broken = true;
        self.silent_at.get_or_insert_with(Instant::now);
    }

    /// When the server went silent on this connection: the moment the command it
    /// never answered went out (its last send), if it then stayed silent for
    /// `SILENCE` or more. A shorter timeout only means that the operation ran out
    /// of time (its deadline lowered the socket's timeout), not that the path died.
    pub fn went_silent(&self) -> Option<Instant> {
        self.silent_at
            .filter(|at| at.saturating_duration_since(self.last_used) >= SILENCE)
            .map(|_| self.last_used)
    }

    /// The timeout of each socket call (`timeout=`), before any deadline.
    fn io_timeout(&self) -> Duration {
        self.opts.timeout
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn pwd_replies() {
        assert_eq!(
            parse_pwd(r#""/home/a ""b""" is the current directory"#).as_deref(),
            Some(r#"/home/a "b""#)
        );
        assert_eq!(parse_pwd("no quotes"), None);
    }
}
