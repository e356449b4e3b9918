//! Telling a wrong URL scheme from a slow server, within seconds instead of the whole
//! timeout. `ftp://` on an implicit-TLS port: the server sends no greeting (it waits
//! for a ClientHello), so when none comes after [`GREETING_PROBE_AFTER`] a second,
//! throwaway connection tries a TLS handshake. `ftps://` on a plain port: the
//! handshake fails on the server's "220 " text, so a second connection reads the
//! first bytes. Probes carry no credentials and the first connection never falls
//! back to anything: they only choose the error message.

use crate::error::FtpError;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// How long a greeting may take before the port is probed for implicit TLS.
pub const GREETING_PROBE_AFTER: Duration = Duration::from_secs(3);

/// How long a probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

fn probe_connection(host: &str, port: u16, timeout: Duration) -> Option<TcpStream> {
    use std::net::ToSocketAddrs;
    let timeout = timeout.max(Duration::from_millis(1));
    let addr = (host, port).to_socket_addrs().ok()?.next()?;
    let s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    Some(s)
}

/// True when `host:port` answers a TLS handshake within `timeout` (certificate not
/// looked at: the connection is closed right after).
pub fn speaks_tls(host: &str, port: u16, timeout: Duration) -> bool {
    let Some(tcp) = probe_connection(host, port, timeout) else {
        return false;
    };
    let Ok(mut b) = SslConnector::builder(SslMethod::tls_client()) else {
        return false;
    };
    b.set_verify(SslVerifyMode::NONE);
    let Ok(cfg) = b.build().configure() else {
        return false;
    };
    match cfg.verify_hostname(false).connect(host, tcp) {
        Ok(_) => true,
        // A TLS alert is TLS too (say, no version in common).
        Err(e) => e.to_string().contains("alert"),
    }
}

/// True when `host:port` starts with an FTP reply in clear ("220 ...").
pub fn speaks_plain_ftp(host: &str, port: u16) -> bool {
    let Some(mut tcp) = probe_connection(host, port, PROBE_TIMEOUT) else {
        return false;
    };
    let mut buf = [0u8; 4];
    let mut got = 0;
    while got < buf.len() {
        match tcp.read(&mut buf[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    got == 4
        && (b'1'..=b'5').contains(&buf[0])
        && buf[1].is_ascii_digit()
        && buf[2].is_ascii_digit()
        && (buf[3] == b' ' || buf[3] == b'-')
}

/// Waits up to [`GREETING_PROBE_AFTER`] for the first byte of a plain connection's
/// greeting (consuming nothing); if none comes and the port speaks TLS, that is the
/// error. Otherwise the caller reads the greeting in what is left of `wait`, to
/// which the socket's read timeout is set.
pub fn wait_for_greeting(
    tcp: &TcpStream,
    host: &str,
    port: u16,
    wait: Duration,
) -> crate::error::Result<()> {
    if wait <= GREETING_PROBE_AFTER {
        return Ok(());
    }
    let start = Instant::now();
    let left = || {
        wait.saturating_sub(start.elapsed())
            .max(Duration::from_millis(1))
    };
    let ctx = |e| FtpError::io("setting socket options", e);
    tcp.set_read_timeout(Some(GREETING_PROBE_AFTER))
        .map_err(ctx)?;
    let quiet = matches!(
        tcp.peek(&mut [0u8; 1]),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
    );
    if quiet && speaks_tls(host, port, PROBE_TIMEOUT.min(left())) {
        return Err(FtpError::Tls(format!(
            "{host}:{port} speaks implicit TLS (it waits for a TLS handshake and sends no FTP greeting): use ftps://{}:{port}/ instead of ftp://",
            bracket(host)
        )));
    }
    tcp.set_read_timeout(Some(left())).map_err(ctx)?;
    Ok(())
}

/// Explains a failed implicit-TLS handshake when the port speaks plain FTP first.
pub fn explain_implicit_failure(e: FtpError, host: &str, port: u16) -> FtpError {
    let plausible = match &e {
        FtpError::Tls(m) => m.starts_with("handshake failed"),
        FtpError::Closed(_) | FtpError::Io { .. } | FtpError::Protocol(_) => true,
        _ => false,
    };
    if plausible && speaks_plain_ftp(host, port) {
        return FtpError::Tls(format!(
            "{host}:{port} speaks plain FTP first (it sent an FTP greeting, not TLS): use ftp://{}:{port}/ (AUTH TLS) instead of ftps://",
            bracket(host)
        ));
    }
    e
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}
