//! Data connections: one download or upload at a time, over TLS (PROT P, resuming
//! the control connection's session) or clear TCP (PROT C).
//!
//! A download is complete only when the server's TLS close_notify arrived and the
//! control connection said 226: a TCP EOF without close_notify is a truncated
//! transfer. An upload ends with our close_notify, a short wait for the server's
//! (bidirectional shutdown: vsftpd and pyftpdlib need it under TLS 1.3), and the 226.

use super::session::FtpConnection;
use crate::error::{FtpError, Result};
use openssl::ssl::ShutdownState;
use std::cell::Cell;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use super::tls::TlsStream;

/// The socket of one data transfer.
pub enum DataStream {
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

/// A download in progress. Read it to the end, then call [`Download::finish`]; dropping
/// it early aborts the transfer (ABOR).
pub struct Download<'a> {
    conn: &'a mut FtpConnection,
    data: Option<DataStream>,
    eof: bool,
    bytes: u64,
    what: String,
    /// The data socket's timeout is below the connection's (a deadline is near).
    lowered: Cell<bool>,
    /// A read timed out: the server went silent, so stopping the transfer gives the
    /// connection up instead of waiting for answers to ABOR.
    silent: bool,
}

impl<'a> Download<'a> {
    pub(crate) fn new(conn: &'a mut FtpConnection, data: DataStream, what: String) -> Self {
        Download {
            conn,
            data: Some(data),
            eof: false,
            bytes: 0,
            what,
            lowered: Cell::new(true),
            silent: false,
        }
    }

    /// Bytes received so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether the data connection's TLS session resumed the control session.
    pub fn resumed(&self) -> Option<bool> {
        self.conn.data_session_resumed()
    }

    /// After the last byte: closes the data connection and reads the final reply.
    /// Reads to EOF first if the caller has not.
    pub fn finish(mut self) -> Result<u64> {
        let mut sink = [0u8; 16384];
        while !self.eof {
            if let Err(e) = self.read(&mut sink).map(drop) {
                return Err(self.fail(e));
            }
        }
        if let Some(d) = self.data.take() {
            d.close(true);
        }
        self.conn.finish_transfer(&self.what)?;
        Ok(self.bytes)
    }

    /// Stops the transfer before its end (ABOR) and leaves the connection usable.
    pub fn abort(mut self) -> Result<()> {
        self.abort_inner()
    }

    /// Gives the transfer up without a word to the server (a hostile or runaway
    /// one): the data connection is closed and the control connection marked
    /// broken, so that the pool drops it.
    pub fn abandon(mut self) {
        if let Some(d) = self.data.take() {
            d.close(false);
        }
        self.conn.mark_broken();
    }

    /// Stops a download early with ABOR (RFC 959), keeping the control connection:
    /// ABOR and a NOOP go out together, the data connection is drained until the
    /// server closes it (a server blocked writing to a full socket would not see
    /// ABOR otherwise), then replies are read up to the NOOP's, whatever the
    /// server answered for the transfer (426 and 226, or 226 and 225). Closing the
    /// data connection alone makes proftpd end the whole session.
    fn abort_inner(&mut self) -> Result<()> {
        let Some(mut d) = self.data.take() else {
            return Ok(());
        };
        if self.silent {
            // The server went silent: ABOR would wait for it again.
            d.close(false);
            self.conn.mark_broken();
            return Err(FtpError::Timeout(format!(
                "{}: the server stopped sending; connection given up",
                self.what
            )));
        }
        if self.eof {
            d.close(true);
            return self.conn.finish_transfer(&self.what);
        }
        let piggyback = self.conn.send_abort()?;
        drain(&mut d);
        d.close(false);
        self.conn.read_until_noop(piggyback)
    }

    /// Turns a data-channel read error into the most useful error: the server's
    /// negative reply when it sent one, else the data error itself.
    fn fail(&mut self, e: io::Error) -> FtpError {
        let data_err = match e.get_ref().and_then(|i| i.downcast_ref::<FtpError>()) {
            Some(FtpError::Truncated(m)) => FtpError::Truncated(m.clone()),
            _ => FtpError::io(format!("receiving {}", self.what), e),
        };
        if let Some(d) = self.data.take() {
            d.close(false);
        }
        if self.silent {
            // No final reply is coming from a server that went silent.
            self.conn.mark_broken();
            return data_err;
        }
        match self.conn.finish_transfer(&self.what) {
            Err(reply_err @ FtpError::Reply { .. }) => reply_err,
            _ => {
                self.conn.mark_broken();
                data_err
            }
        }
    }
}

impl Read for Download<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.eof || buf.is_empty() {
            return Ok(0);
        }
        let Some(data) = self.data.as_mut() else {
            return Ok(0);
        };
        crate::deadline::arm(data.tcp(), self.conn.io_timeout(), &self.lowered)?;
        let read = match data {
            DataStream::Plain(s) => s.read(buf),
            DataStream::Tls(s) => match s.ssl_read(buf) {
                Ok(n) => Ok(n),
                Err(e) if e.code() == openssl::ssl::ErrorCode::ZERO_RETURN => Ok(0),
                Err(e) => {
                    if s.get_shutdown().contains(ShutdownState::RECEIVED) {
                        Ok(0)
                    } else if e.io_error().is_some() {
                        Err(e.into_io_error().unwrap_or_else(io::Error::other))
                    } else {
                        return Err(io::Error::other(FtpError::Truncated(format!(
                            "{}: data connection closed without TLS close_notify after {} bytes ({e})",
                            self.what, self.bytes
                        ))));
                    }
                }
            },
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
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{}: no data from the server: timed out after {} bytes",
                        self.what, self.bytes
                    ),
                ));
            }
            Err(e) => return Err(e),
        };
        if n == 0 {
            if let DataStream::Tls(s) = data {
                if !s.get_shutdown().contains(ShutdownState::RECEIVED) {
                    return Err(io::Error::other(FtpError::Truncated(format!(
                        "{}: data connection closed without TLS close_notify after {} bytes",
                        self.what, self.bytes
                    ))));
                }
            }
            self.eof = true;
        }
        self.bytes += n as u64;
        crate::deadline::progress();
        Ok(n)
    }
}

impl Drop for Download<'_> {
    fn drop(&mut self) {
        if self.data.is_some() && self.abort_inner().is_err() {
            self.conn.mark_broken();
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
    let tcp_of = |d: &DataStream| match d {
        DataStream::Tls(s) => s.get_ref().try_clone(),
        DataStream::Plain(s) => s.try_clone(),
    };
    if let Ok(t) = tcp_of(d) {
        let _ = t.set_read_timeout(Some(limit));
    }
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

/// An upload in progress. Write the data, then call [`Upload::finish`]: only its `Ok`
/// means the server has the file. Dropping it unfinished aborts the transfer.
pub struct Upload<'a> {
    conn: &'a mut FtpConnection,
    data: Option<DataStream>,
    bytes: u64,
    what: String,
    lowered: Cell<bool>,
    /// (argument, append): check with SIZE that the server stored what it
    /// acknowledged (see `FtpConnection::check_stored`).
    check: Option<(String, bool)>,
}

impl<'a> Upload<'a> {
    pub(crate) fn new(conn: &'a mut FtpConnection, data: DataStream, what: String) -> Self {
        Upload {
            conn,
            data: Some(data),
            bytes: 0,
            what,
            lowered: Cell::new(true),
            check: None,
        }
    }

    /// After a positive final reply, asks SIZE of `arg` before believing it.
    pub(crate) fn checked(mut self, arg: String, append: bool) -> Self {
        self.check = Some((arg, append));
        self
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn resumed(&self) -> Option<bool> {
        self.conn.data_session_resumed()
    }

    /// Closes the data connection cleanly and waits for the server's verdict.
    pub fn finish(mut self) -> Result<u64> {
        let Some(data) = self.data.take() else {
            return Err(FtpError::Protocol("upload already closed".into()));
        };
        let close_result = close_upload(data);
        let reply = self.conn.finish_transfer(&self.what);
        match (close_result, reply) {
            (_, Err(e @ FtpError::Reply { .. })) => Err(e),
            (Err(e), _) => {
                self.conn.mark_broken();
                Err(FtpError::io(format!("closing upload of {}", self.what), e))
            }
            (Ok(()), Err(e)) => Err(e),
            (Ok(()), Ok(())) => match self.check.take() {
                Some((arg, append)) => self
                    .conn
                    .check_stored(&arg, self.bytes, append)
                    .map(|()| self.bytes),
                None => Ok(self.bytes),
            },
        }
    }

    fn fail(&mut self, e: io::Error) -> io::Error {
        // Prefer the server's reason (552 quota, 553 permission...) to "broken pipe".
        if let Some(d) = self.data.take() {
            d.close(false);
            if let Err(reply @ FtpError::Reply { .. }) = self.conn.finish_transfer(&self.what) {
                return io::Error::other(reply);
            }
            self.conn.mark_broken();
        }
        e
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
        let Some(data) = self.data.as_mut() else {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "upload closed"));
        };
        if let Err(e) = crate::deadline::arm(data.tcp(), self.conn.io_timeout(), &self.lowered) {
            return Err(self.fail(e));
        }
        let r = match data {
            DataStream::Plain(s) => s.write(buf),
            DataStream::Tls(s) => s.write(buf),
        };
        match r {
            Ok(n) => {
                self.bytes += n as u64;
                crate::deadline::progress();
                Ok(n)
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.data.as_mut() {
            Some(DataStream::Plain(s)) => s.flush(),
            Some(DataStream::Tls(s)) => s.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for Upload<'_> {
    fn drop(&mut self) {
        if let Some(d) = self.data.take() {
            // Unfinished: close abruptly (no close_notify) so the server sees an error.
            d.close(false);
            if self.conn.abort_transfer().is_err() {
                self.conn.mark_broken();
            }
        }
    }
}
