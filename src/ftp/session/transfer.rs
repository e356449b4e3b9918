//! Transfers on a data connection: downloads (RETR) and uploads (STOR, APPE), over
//! TLS (PROT P, resuming the control connection's session) or clear TCP (PROT C).
//!
//! Design. A download is complete only when the server's TLS close_notify arrived
//! and the control connection said 226: a TCP EOF without close_notify is a
//! truncated transfer. An upload ends with our close_notify, a short wait for the
//! server's (bidirectional shutdown: vsftpd and pyftpdlib need it under TLS 1.3),
//! and the 226. When the data connection fails, the server's final reply is read,
//! which keeps the control connection in step (without one it is given up). An
//! upload's error is then the server's refusal (552 quota, 553 permission) where
//! it gave one; a download's stays the data connection's own (a cut download is a
//! lost connection, tried again where nothing went out yet), the server's reply
//! added to its message.
//! [`Download`] and [`Upload`] share that bookkeeping in [`Transfer`]; both hand out
//! [`FtpError`]s (`read_chunk`, `send`), and `io::Read` / `io::Write` for callers
//! that want a stream carry the same error inside the `io::Error`
//! ([`into_ftp_error`] takes it out again).

use super::FtpConnection;
use crate::error::{FtpError, Result};
use crate::ftp::command::{Command, Verb};
use crate::ftp::reply::Reply;
use crate::ftp::tls::TlsStream;
use openssl::ssl::ShutdownState;
use std::cell::Cell;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

/// The socket of one data transfer.
pub(super) enum DataStream {
    Tls(Box<TlsStream>),
    Plain(TcpStream),
}

impl DataStream {
    fn tcp(&self) -> &TcpStream {
        match self {
            DataStream::Tls(s) => s.get_ref(),
            DataStream::Plain(s) => s,
        }
    }

    /// Closes the connection. `polite` sends our close_notify (after a complete
    /// download); otherwise the TLS state is only marked as shut down. Either way
    /// OpenSSL keeps the session resumable: freeing a TLS connection that never
    /// "sent" its shutdown marks its session not resumable, and every later data
    /// connection of this control connection would then be refused (proftpd,
    /// vsftpd: "425 ... did not reuse TLS session").
    fn close(self, polite: bool) {
        match self {
            DataStream::Tls(mut s) => {
                if polite {
                    let _ = s.shutdown();
                } else {
                    s.set_shutdown(ShutdownState::SENT | ShutdownState::RECEIVED);
                }
                let _ = s.get_ref().shutdown(Shutdown::Both);
            }
            DataStream::Plain(s) => {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

/// The error inside an `io::Error` from a [`Download`]'s `Read` or an [`Upload`]'s
/// `Write`, or `e` itself in FTP terms (`context` says what was being done).
pub fn into_ftp_error(e: io::Error, context: &str) -> FtpError {
    if e.get_ref().is_some_and(|i| i.is::<FtpError>()) {
        if let Some(inner) = e.into_inner() {
            if let Ok(ftp) = inner.downcast::<FtpError>() {
                return *ftp;
            }
        }
        return FtpError::Protocol(format!("{context}: lost error"));
    }
    FtpError::io(context, e)
}

/// An `FtpError` carried through `io::Read` / `io::Write`.
fn into_io_error(e: FtpError) -> io::Error {
    let kind = match e {
        FtpError::Timeout(_) => io::ErrorKind::TimedOut,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

/// A data-connection error `e` with the server's final reply `r` in its message.
fn with_reply(e: FtpError, r: &Reply) -> FtpError {
    let said = format!("; the server said {} {}", r.code, r.text());
    match e {
        FtpError::Truncated(m) => FtpError::Truncated(m + &said),
        FtpError::Closed(m) => FtpError::Closed(m + &said),
        FtpError::Protocol(m) => FtpError::Protocol(m + &said),
        FtpError::Timeout(m) => FtpError::Timeout(m + &said),
        FtpError::Io { context, source } => FtpError::Io {
            context: context + &said,
            source,
        },
        other => other,
    }
}

/// What a download and an upload share: the control connection, the data socket,
/// the bytes moved, and what to call the transfer in messages.
struct Transfer<'a> {
    conn: &'a mut FtpConnection,
    data: Option<DataStream>,
    bytes: u64,
    /// The command and path ("RETR /a/b"), for messages.
    what: String,
    /// The data socket's timeouts as last set (`crate::deadline::arm`).
    timeouts: Cell<Option<Duration>>,
}

impl<'a> Transfer<'a> {
    fn new(conn: &'a mut FtpConnection, data: DataStream, what: String) -> Self {
        Transfer {
            conn,
            data: Some(data),
            bytes: 0,
            what,
            timeouts: Cell::new(None),
        }
    }

    /// The data socket, with its timeout set for the next call (`crate::deadline`),
    /// and what to call the transfer in an error (borrowed alongside).
    fn armed(&mut self) -> (io::Result<Option<&mut DataStream>>, &str) {
        let timeout = self.conn.io_timeout();
        let data = match self.data.as_mut() {
            Some(d) => crate::deadline::arm(d.tcp(), timeout, &self.timeouts).map(|()| Some(d)),
            None => Ok(None),
        };
        (data, &self.what)
    }

    fn moved(&mut self, n: usize) {
        self.bytes += n as u64;
        crate::deadline::progress();
    }

    /// After a complete download: closes the data connection (with our
    /// close_notify) and reads the transfer's final reply.
    fn close(&mut self) -> Result<()> {
        if let Some(d) = self.data.take() {
            d.close(true);
        }
        self.conn.finish_transfer(&self.what)
    }

    /// After the data connection failed: closes it and reads the final reply. The
    /// server's refusal when it sent one (the control connection is then in step);
    /// else `None`, and the control connection is given up (no reply, or one that
    /// calls the transfer a success, which it was not).
    fn refusal(&mut self) -> Option<Reply> {
        if let Some(d) = self.data.take() {
            d.close(false);
        }
        match self.conn.read_reply() {
            Ok(r) if r.is_negative() => Some(r),
            _ => {
                self.conn.mark_broken();
                None
            }
        }
    }

    /// Gives the transfer up without reading anything more from the server.
    fn give_up(&mut self) {
        if let Some(d) = self.data.take() {
            d.close(false);
        }
        self.conn.mark_broken();
    }
}

/// A download in progress. Read it to the end, then call [`Download::finish`];
/// dropping it early aborts the transfer (ABOR).
pub struct Download<'a> {
    t: Transfer<'a>,
    eof: bool,
    /// A read timed out: the server went silent, so stopping the transfer gives the
    /// connection up instead of waiting for answers to ABOR.
    silent: bool,
}

impl<'a> Download<'a> {
    pub(super) fn new(conn: &'a mut FtpConnection, data: DataStream, what: String) -> Self {
        Download {
            t: Transfer::new(conn, data, what),
            eof: false,
            silent: false,
        }
    }

    /// Whether the data connection's TLS session resumed the control session.
    pub fn resumed(&self) -> Option<bool> {
        self.t.conn.data_session_resumed()
    }

    /// Reads the next bytes of the file; 0 at its end. An error ends the transfer
    /// (with the server's refusal when it gave one) and is final.
    pub fn read_chunk(&mut self, buf: &mut [u8]) -> Result<usize> {
        match self.read_data(buf) {
            Err(e) if self.t.data.is_some() => Err(self.failed(e)),
            r => r,
        }
    }

    /// After the last byte: closes the data connection and reads the final reply.
    /// Reads to EOF first if the caller has not.
    pub fn finish(mut self) -> Result<u64> {
        let mut sink = [0u8; 16384];
        while !self.eof {
            self.read_chunk(&mut sink)?;
        }
        self.t.close()?;
        Ok(self.t.bytes)
    }

    /// Stops the transfer before its end (ABOR) and leaves the connection usable.
    pub fn abort(mut self) -> Result<()> {
        self.abort_inner()
    }

    /// Gives the transfer up without a word to the server (a hostile or runaway
    /// one): the data connection is closed and the control connection marked
    /// broken, so that the pool drops it.
    pub fn abandon(mut self) {
        self.t.give_up();
    }

    /// Stops a download early with ABOR (RFC 959), keeping the control connection:
    /// ABOR goes out, the data connection is drained until the server closes it (a
    /// server blocked writing to a full socket would not see ABOR otherwise), then
    /// replies are read up to a NOOP's sent after the first of them, whatever the
    /// server answered for the transfer (426 and 226, or 226 and 225). Closing the
    /// data connection alone makes proftpd end the whole session.
    fn abort_inner(&mut self) -> Result<()> {
        if self.t.data.is_none() {
            return Ok(());
        }
        if self.silent {
            // The server went silent: ABOR would wait for it again.
            self.t.conn.mark_silent();
            self.t.give_up();
            return Err(FtpError::Timeout(format!(
                "{}: the server stopped sending; connection given up",
                self.t.what
            )));
        }
        if self.eof {
            return self.t.close();
        }
        // The data socket is taken first: whatever happens next, this is the only
        // attempt (a failed ABOR is not sent again when the download is dropped).
        let Some(mut d) = self.t.data.take() else {
            return Ok(());
        };
        if let Err(e) = self.t.conn.send(&[Command::abor()]) {
            d.close(false);
            self.t.conn.mark_broken();
            return Err(e);
        }
        drain(&mut d);
        d.close(false);
        self.t.conn.read_abort_replies()
    }

    /// The transfer failed with `e` on the data connection. The error stays the
    /// data connection's (a cut download is a lost connection, tried again where
    /// nothing went out yet), with the server's final reply in its message when it
    /// sent one; a server gone silent sends none and is given up at once.
    fn failed(&mut self, e: FtpError) -> FtpError {
        if self.silent {
            self.t.conn.mark_silent();
            self.t.give_up();
            return e;
        }
        match self.t.refusal() {
            Some(r) => with_reply(e, &r),
            None => e,
        }
    }

    /// One read from the data connection, without touching the control connection.
    fn read_data(&mut self, buf: &mut [u8]) -> Result<usize> {
        if self.eof || buf.is_empty() {
            return Ok(0);
        }
        let bytes = self.t.bytes;
        let (armed, what) = self.t.armed();
        let data = match armed {
            Ok(Some(d)) => d,
            Ok(None) => {
                return Err(FtpError::Closed(format!(
                    "{what}: the transfer already ended"
                )))
            }
            Err(e) => return Err(FtpError::io(format!("receiving {what}"), e)),
        };
        let truncated = |e: &dyn std::fmt::Display| {
            FtpError::Truncated(format!(
                "{what}: data connection closed without TLS close_notify after {bytes} bytes{e}"
            ))
        };
        let read = loop {
            let r = match data {
                DataStream::Plain(s) => s.read(buf),
                DataStream::Tls(s) => match s.ssl_read(buf) {
                    Ok(n) => Ok(n),
                    Err(e) if e.code() == openssl::ssl::ErrorCode::ZERO_RETURN => Ok(0),
                    Err(_) if s.get_shutdown().contains(ShutdownState::RECEIVED) => Ok(0),
                    Err(e) if e.io_error().is_some() => {
                        Err(e.into_io_error().unwrap_or_else(io::Error::other))
                    }
                    Err(e) => return Err(truncated(&format_args!(" ({e})"))),
                },
            };
            match r {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        let n = match read {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                self.silent = true;
                return Err(FtpError::Timeout(format!(
                    "{what}: no data from the server: timed out after {bytes} bytes"
                )));
            }
            Err(e) => return Err(FtpError::io(format!("receiving {what}"), e)),
        };
        if n == 0 {
            if let DataStream::Tls(s) = data {
                if !s.get_shutdown().contains(ShutdownState::RECEIVED) {
                    return Err(truncated(&""));
                }
            }
            self.eof = true;
        }
        self.t.moved(n);
        Ok(n)
    }
}

impl Read for Download<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_chunk(buf).map_err(into_io_error)
    }
}

impl Drop for Download<'_> {
    fn drop(&mut self) {
        if self.t.data.is_some() && self.abort_inner().is_err() {
            self.t.conn.mark_broken();
        }
    }
}

/// Longest time spent draining a data connection after ABOR.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// Reads and discards what is left on a data connection, for a bounded time.
fn drain(d: &mut DataStream) {
    let limit = crate::deadline::bound(DRAIN_LIMIT);
    let deadline = std::time::Instant::now() + limit;
    let mut buf = vec![0u8; 64 * 1024];
    let _ = d.tcp().set_read_timeout(Some(limit));
    while std::time::Instant::now() < deadline {
        let n = match d {
            DataStream::Tls(s) => s.ssl_read(&mut buf).unwrap_or(0),
            DataStream::Plain(s) => s.read(&mut buf).unwrap_or(0),
        };
        if n == 0 {
            break;
        }
    }
}

/// An upload in progress. Send the data, then call [`Upload::finish`]: only its
/// `Ok` means the server has the file. Dropping it unfinished aborts the transfer.
pub struct Upload<'a> {
    t: Transfer<'a>,
    /// (argument, bytes before this transfer, append): check with SIZE that the
    /// server stored what it acknowledged (see `FtpConnection::check_stored`).
    check: Option<(String, u64, bool)>,
}

impl<'a> Upload<'a> {
    fn new(conn: &'a mut FtpConnection, data: DataStream, what: String) -> Self {
        Upload {
            t: Transfer::new(conn, data, what),
            check: None,
        }
    }

    /// Sends all of `buf`. An error ends the transfer (with the server's refusal
    /// when it gave one, 552 quota or 553 permission rather than "broken pipe").
    pub fn send(&mut self, mut buf: &[u8]) -> Result<()> {
        while !buf.is_empty() {
            let n = self.write_data(buf)?;
            buf = &buf[n..];
        }
        Ok(())
    }

    /// Closes the data connection cleanly and waits for the server's verdict.
    pub fn finish(mut self) -> Result<u64> {
        let Some(data) = self.t.data.take() else {
            return Err(FtpError::Protocol("upload already closed".into()));
        };
        let close_result = close_upload(data);
        let reply = self.t.conn.finish_transfer(&self.t.what);
        match (close_result, reply) {
            (_, Err(e @ FtpError::Reply { .. })) => Err(e),
            (Err(e), _) => {
                self.t.conn.mark_broken();
                Err(FtpError::io(
                    format!("closing upload of {}", self.t.what),
                    e,
                ))
            }
            (Ok(()), Err(e)) => Err(e),
            (Ok(()), Ok(())) => match self.check.take() {
                Some((arg, before, append)) => self
                    .t
                    .conn
                    .check_stored(&arg, before + self.t.bytes, append)
                    .map(|()| self.t.bytes),
                None => Ok(self.t.bytes),
            },
        }
    }

    /// One write to the data connection; a failure ends the transfer.
    fn write_data(&mut self, buf: &[u8]) -> Result<usize> {
        let written = loop {
            let (armed, what) = self.t.armed();
            let r = match armed {
                Ok(Some(DataStream::Plain(s))) => s.write(buf),
                Ok(Some(DataStream::Tls(s))) => s.write(buf),
                Ok(None) => return Err(FtpError::Closed(format!("{what}: upload closed"))),
                Err(e) => Err(e),
            };
            match r {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(0) => break Err(io::Error::from(io::ErrorKind::WriteZero)),
                other => break other,
            }
        };
        match written {
            Ok(n) => {
                self.t.moved(n);
                Ok(n)
            }
            // The server's reason (552 quota, 553 permission...) rather than
            // "broken pipe".
            Err(e) => match self.t.refusal() {
                Some(r) => Err(r.into_error(&self.t.what)),
                None => Err(FtpError::io(format!("sending {}", self.t.what), e)),
            },
        }
    }
}

/// Sends close_notify, waits briefly for the server's, then closes the socket.
fn close_upload(data: DataStream) -> io::Result<()> {
    match data {
        DataStream::Plain(mut s) => {
            s.flush()?;
            s.shutdown(Shutdown::Write)?;
            // Wait for the server to close its side so it has read everything.
            let _ = s.set_read_timeout(Some(crate::deadline::bound(Duration::from_secs(10))));
            let mut b = [0u8; 512];
            while matches!(s.read(&mut b), Ok(n) if n > 0) {}
            Ok(())
        }
        DataStream::Tls(mut s) => {
            s.flush()?;
            match s.shutdown() {
                Ok(_) => {}
                Err(e) => return Err(e.into_io_error().unwrap_or_else(io::Error::other)),
            }
            // Nothing follows our close_notify: half-close TCP now. proftpd waits for
            // the FIN before its 226, which would otherwise cost a round trip more.
            let _ = s.get_ref().shutdown(Shutdown::Write);
            let _ = s
                .get_ref()
                .set_read_timeout(Some(crate::deadline::bound(Duration::from_secs(10))));
            // Bidirectional: read the peer's close_notify (and any TLS 1.3 ticket before it).
            let mut tries = 0;
            while !s.get_shutdown().contains(ShutdownState::RECEIVED) && tries < 8 {
                tries += 1;
                match s.shutdown() {
                    Ok(openssl::ssl::ShutdownResult::Received) => break,
                    Ok(openssl::ssl::ShutdownResult::Sent) => continue,
                    Err(_) => break, // peer closed TCP without close_notify: its business
                }
            }
            let _ = s.get_ref().shutdown(Shutdown::Both);
            Ok(())
        }
    }
}

impl Write for Upload<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_data(buf).map_err(into_io_error)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.t.data.as_mut() {
            Some(DataStream::Plain(s)) => s.flush(),
            Some(DataStream::Tls(s)) => s.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for Upload<'_> {
    fn drop(&mut self) {
        if let Some(d) = self.t.data.take() {
            // Unfinished: close abruptly (no close_notify) so the server sees an error.
            d.close(false);
            if self.t.conn.abort_transfer().is_err() {
                self.t.conn.mark_broken();
            }
        }
    }
}

/// Why a transfer from an offset is not even tried.
fn no_rest_stream() -> FtpError {
    FtpError::not_offered("REST", "the server does not announce REST STREAM")
}

impl FtpConnection {
    /// Downloads `path` from byte `offset` (REST; needs REST STREAM).
    pub fn retr(&mut self, path: &str, offset: u64) -> Result<Download<'_>> {
        super::check_path(path)?;
        if offset > 0 && !self.features.rest_stream {
            return Err(no_rest_stream());
        }
        let (_, data) = self.start_on_path(Command::retr, path, offset)?;
        Ok(Download::new(self, data, format!("RETR {path}")))
    }

    /// Uploads to `path`, replacing it (STOR), or appending (APPE).
    pub fn stor(&mut self, path: &str, append: bool) -> Result<Upload<'_>> {
        super::check_path(path)?;
        if append {
            self.start_upload(Command::appe, path, 0, true)
        } else {
            self.start_upload(Command::stor, path, 0, false)
        }
    }

    /// Continues an upload to `path` at byte `offset`: `REST offset` + `STOR`
    /// (needs REST STREAM; a server may still refuse it for uploads).
    pub fn stor_from(&mut self, path: &str, offset: u64) -> Result<Upload<'_>> {
        super::check_path(path)?;
        if !self.features.rest_stream {
            return Err(no_rest_stream());
        }
        self.start_upload(Command::stor, path, offset, false)
    }

    /// Starts the upload `make(path's argument)` from byte `offset`.
    fn start_upload(
        &mut self,
        make: fn(&str) -> Command,
        path: &str,
        offset: u64,
        append: bool,
    ) -> Result<Upload<'_>> {
        let (arg, data) = self.start_on_path(make, path, offset)?;
        // A path named from its directory is one a server may not hold: pure-ftpd
        // acknowledges such an upload and stores nothing. Check it.
        let check = self.workdir_relative() && self.features.size;
        let what = format!("{} {path}", make(&arg).verb().name());
        let mut up = Upload::new(self, data, what);
        if check {
            up.check = Some((arg, offset, append));
        }
        Ok(up)
    }

    /// Starts the transfer `make(path's argument)` after `REST offset` when > 0;
    /// returns the argument used (relative after a change of directory).
    fn start_on_path(
        &mut self,
        make: fn(&str) -> Command,
        path: &str,
        offset: u64,
    ) -> Result<(String, DataStream)> {
        // A renewed connection starts in its login directory: renew before the
        // path's argument is worked out relative to the current one.
        self.renew_if_out_of_tickets()?;
        self.forget_cwd();
        let arg = self
            .path_args(crate::ftp::command::fixed_len(make), &[path])?
            .remove(0);
        let r = self.start_transfer(&make(&arg), offset);
        let data = r.map_err(|e| self.deep(e))?;
        Ok((arg, data))
    }

    /// Reads the final reply of a transfer whose data connection is closed.
    fn finish_transfer(&mut self, what: &str) -> Result<()> {
        let r = self.read_reply()?;
        if r.is_positive() {
            Ok(())
        } else {
            Err(r.into_error(what))
        }
    }

    /// Ends a transfer early. The data socket is already closed, which every server
    /// answers with one final reply (426/451, or 226 when it had sent everything).
    fn abort_transfer(&mut self) -> Result<()> {
        let r = self.read_reply()?;
        log::debug!("transfer aborted: {} {}", r.code, r.text());
        Ok(())
    }

    /// Reads the replies to an aborted transfer and its ABOR. The NOOP that marks
    /// their end goes out only after the first of them (with an EPSV for the next
    /// transfer when none is prepared): during a download pure-ftpd reads the
    /// control connection once per chunk it sends, takes an ABOR at the start of
    /// what it read and drops the rest, so a NOOP sent with the ABOR would never be
    /// answered. Its first reply comes once it has left the transfer.
    fn read_abort_replies(&mut self) -> Result<()> {
        let r = self.read_reply()?;
        log::debug!("abort: {} {}", r.code, r.text());
        let piggyback = self.send_preparing(&[Command::noop()])?;
        self.read_until_noop(piggyback)
    }

    /// Reads replies up to the NOOP's 200 (then the piggybacked EPSV's, when
    /// `piggyback`). A 229 before the 200 is the EPSV's, from a server that answers
    /// out of order.
    fn read_until_noop(&mut self, mut piggyback: bool) -> Result<()> {
        for _ in 0..5 {
            let r = self.read_reply()?;
            log::debug!("abort: {} {}", r.code, r.text());
            if piggyback && Verb::Epsv.completes(r.code) {
                self.opts
                    .server
                    .note_reordering("NOOP+EPSV after ABOR answered 229 before 200");
                piggyback = false;
                self.use_piggybacked_epsv(r);
                continue;
            }
            if Verb::Noop.completes(r.code) {
                self.finish_piggyback(piggyback);
                return Ok(());
            }
        }
        self.broken = true;
        Err(FtpError::Protocol(
            "no end to the replies after ABOR".into(),
        ))
    }
}
