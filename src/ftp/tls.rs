//! TLS for control and data connections (OpenSSL): trust decisions, client
//! certificates, and capture of the control connection's session so that data
//! connections can resume it (RFC 4217 §10.2; vsftpd and proftpd require it).
//!
//! One [`TlsContext`] (one `SslConnector`) serves a whole mount: every connection is
//! made from it, because OpenSSL only resumes a session within the context that made
//! it. Each control connection has its own [`SessionSlot`] (attached as ex-data to it
//! and to its own data connections, never to another control connection's), filled
//! by the new-session callback: under TLS 1.3 tickets arrive after the handshake, and
//! servers such as proftpd accept each ticket once, so the slot keeps the freshest
//! few tickets and hands out an unused one per data connection.

use crate::error::{FtpError, Result};
use openssl::error::ErrorStack;
use openssl::ex_data::Index;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::ssl::{
    HandshakeError, MidHandshakeSslStream, Ssl, SslConnector, SslMethod, SslSession,
    SslSessionCacheMode, SslStream, SslVerifyMode, SslVersion,
};
use openssl::x509::{X509Ref, X509StoreContextRef, X509VerifyResult, X509};
use std::collections::VecDeque;
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Minimum (or maximum) TLS protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsVersion {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "1.2" => Some(TlsVersion::Tls12),
            "1.3" => Some(TlsVersion::Tls13),
            _ => None,
        }
    }
    fn to_openssl(self) -> SslVersion {
        match self {
            TlsVersion::Tls12 => SslVersion::TLS1_2,
            TlsVersion::Tls13 => SslVersion::TLS1_3,
        }
    }
}

/// What the user asked of TLS.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Trust this CA file instead of the system store.
    pub cafile: Option<PathBuf>,
    /// Accept exactly the certificate with this SHA-256 fingerprint (32 bytes).
    pub fingerprint: Option<Vec<u8>>,
    /// Accept any certificate (loudly warned).
    pub insecure: bool,
    pub min_version: TlsVersion,
    pub max_version: Option<TlsVersion>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Passphrase of an encrypted client key (read from a file by the caller).
    pub client_key_password: Option<Vec<u8>>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cafile: None,
            fingerprint: None,
            insecure: false,
            min_version: TlsVersion::Tls12,
            max_version: None,
            client_cert: None,
            client_key: None,
            client_key_password: None,
        }
    }
}

/// Tickets kept per control connection.
const MAX_TICKETS: usize = 8;

/// The TLS sessions a control connection's data connections may resume.
#[derive(Default)]
pub struct SessionStore {
    fresh: VecDeque<SslSession>,
    last: Option<SslSession>,
    /// How many sessions were ever received.
    received: u64,
}

impl SessionStore {
    pub fn push_session(&mut self, s: SslSession) {
        if self.fresh.len() == MAX_TICKETS {
            self.fresh.pop_front();
        }
        self.last = Some(s.clone());
        self.fresh.push_back(s);
        self.received += 1;
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    /// An unused session if there is one, else the most recent (TLS 1.2 sessions
    /// may be resumed many times).
    pub fn take(&mut self) -> Option<SslSession> {
        self.fresh.pop_back().or_else(|| self.last.clone())
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_none()
    }

    /// Unused sessions left.
    pub fn fresh_count(&self) -> usize {
        self.fresh.len()
    }
}

/// Where a control connection's TLS sessions are kept for its data connections.
pub type SessionSlot = Arc<Mutex<SessionStore>>;

fn session_index() -> Index<Ssl, SessionSlot> {
    static INDEX: OnceLock<Index<Ssl, SessionSlot>> = OnceLock::new();
    *INDEX.get_or_init(|| Ssl::new_ex_index().expect("OpenSSL ex-data index"))
}

/// The shared TLS context of a mount or a `check` run.
pub struct TlsContext {
    connector: SslConnector,
    config: TlsConfig,
    /// A control connection used up its TLS 1.3 tickets (see
    /// `FtpConnection::out_of_tickets`): new control connections then use TLS 1.2
    /// where the configuration allows it, since data connections can resume a
    /// TLS 1.2 session any number of times.
    prefer_tls12: AtomicBool,
}

/// A TLS stream over TCP.
pub type TlsStream = SslStream<TcpStream>;

/// Parses `sha256:AB:CD...` / `abcd...` into 32 bytes.
pub fn parse_fingerprint(s: &str) -> Option<Vec<u8>> {
    let s = s
        .strip_prefix("sha256:")
        .or_else(|| s.strip_prefix("SHA256:"))
        .unwrap_or(s);
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// Hex SHA-256 fingerprint with colons, as `openssl x509 -fingerprint` prints it.
pub fn fingerprint_hex(cert: &X509Ref) -> String {
    match cert.digest(MessageDigest::sha256()) {
        Ok(d) => d
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":"),
        Err(_) => "?".into(),
    }
}

fn ossl(context: &str) -> impl Fn(ErrorStack) -> FtpError + '_ {
    move |e| FtpError::Tls(format!("{context}: {e}"))
}

impl TlsContext {
    pub fn new(config: TlsConfig) -> Result<Arc<Self>> {
        let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(ossl("TLS setup"))?;
        b.set_min_proto_version(Some(config.min_version.to_openssl()))
            .map_err(ossl("minimum TLS version"))?;
        if let Some(max) = config.max_version {
            b.set_max_proto_version(Some(max.to_openssl()))
                .map_err(ossl("maximum TLS version"))?;
        }
        if let Some(ca) = &config.cafile {
            if !ca.is_file() {
                return Err(FtpError::Invalid(format!(
                    "CA file {} not found",
                    ca.display()
                )));
            }
            b.set_ca_file(ca).map_err(|e| {
                FtpError::Invalid(format!("cannot load CA file {}: {e}", ca.display()))
            })?;
        }
        match (&config.client_cert, &config.client_key) {
            (Some(cert), key) => {
                let key = key.as_ref().unwrap_or(cert);
                b.set_certificate_chain_file(cert).map_err(|e| {
                    FtpError::Invalid(format!(
                        "cannot load client certificate {}: {e}",
                        cert.display()
                    ))
                })?;
                let pem = std::fs::read(key).map_err(|e| {
                    FtpError::Invalid(format!("cannot read client key {}: {e}", key.display()))
                })?;
                // Without a passphrase, never let OpenSSL prompt on the terminal.
                let pkey = match &config.client_key_password {
                    Some(pw) => PKey::private_key_from_pem_passphrase(&pem, pw),
                    None => PKey::private_key_from_pem_callback(&pem, |_| Ok(0)),
                }
                .map_err(|_| {
                    FtpError::Invalid(format!(
                        "cannot load client key {} (encrypted key without key_password_file, or wrong passphrase?)",
                        key.display()
                    ))
                })?;
                b.set_private_key(&pkey).map_err(ossl("client key"))?;
                b.check_private_key().map_err(|_| {
                    FtpError::Invalid("client key does not match the client certificate".into())
                })?;
            }
            (None, Some(_)) => {
                return Err(FtpError::Invalid("key= given without cert=".into()));
            }
            (None, None) => {}
        }
        // The verification callback itself is set per connection (see `connect`).
        b.set_verify(if config.insecure {
            SslVerifyMode::NONE
        } else {
            SslVerifyMode::PEER
        });
        b.set_session_cache_mode(SslSessionCacheMode::CLIENT);
        b.set_new_session_callback(|ssl, session| {
            if let Some(slot) = ssl.ex_data(session_index()) {
                if let Ok(mut s) = slot.lock() {
                    s.push_session(session);
                }
            }
        });
        Ok(Arc::new(TlsContext {
            connector: b.build(),
            config,
            prefer_tls12: AtomicBool::new(false),
        }))
    }

    pub fn config(&self) -> &TlsConfig {
        &self.config
    }

    /// Called when a control connection has used up its TLS 1.3 tickets.
    pub fn note_tickets_used_up(&self) {
        if self.tls12_allowed() && !self.prefer_tls12.swap(true, Ordering::Relaxed) {
            log::info!(
                "TLS 1.3 session tickets used up (servers such as proftpd accept each once and \
                 issue none on uploads): new connections use TLS 1.2, whose sessions every data \
                 connection can resume; min_tls=1.3 keeps TLS 1.3 and reconnects instead"
            );
        }
    }

    fn tls12_allowed(&self) -> bool {
        self.config.min_version == TlsVersion::Tls12
            && self.config.max_version != Some(TlsVersion::Tls13)
    }

    /// TLS handshake as a client over `tcp`. `slot` receives the sessions (tickets) the
    /// server issues on this connection; `resume` (data connections) is offered for
    /// resumption.
    pub fn connect(
        &self,
        host: &str,
        tcp: TcpStream,
        slot: Option<&SessionSlot>,
        resume: Option<&SslSession>,
    ) -> Result<TlsStream> {
        match self.begin_connect(host, tcp, slot, resume)? {
            Handshake::Done(s) => Ok(s),
            // Only a socket timeout makes a blocking handshake "would block".
            Handshake::Pending(_) => Err(FtpError::Timeout("TLS handshake timed out".into())),
        }
    }

    /// Starts a TLS handshake. On a blocking socket it runs to its end; on a
    /// non-blocking one it returns [`Handshake::Pending`] once the ClientHello is
    /// sent, to be driven on with [`TlsContext::continue_handshake`] when the socket
    /// is readable (a data connection's handshake waits on the server's reply to
    /// the transfer command, watched meanwhile on the control connection).
    pub fn begin_connect(
        &self,
        host: &str,
        tcp: TcpStream,
        slot: Option<&SessionSlot>,
        resume: Option<&SslSession>,
    ) -> Result<Handshake> {
        let mut cfg = self.connector.configure().map_err(ossl("TLS setup"))?;
        if self.config.insecure || self.config.fingerprint.is_some() {
            cfg.set_verify_hostname(false);
        }
        if let Some(slot) = slot {
            cfg.set_ex_data(session_index(), slot.clone());
        }
        if resume.is_none() && self.prefer_tls12.load(Ordering::Relaxed) {
            cfg.set_max_proto_version(Some(SslVersion::TLS1_2))
                .map_err(ossl("TLS version"))?;
        }
        if let Some(sess) = resume {
            // SAFETY: the session was created by a connection of this same SslContext.
            unsafe { cfg.set_session(sess) }.map_err(ossl("TLS session"))?;
            // A data connection must use its control connection's TLS version, or the
            // server negotiates a newer one and cannot resume the session.
            cfg.set_max_proto_version(Some(sess.protocol_version()))
                .map_err(ossl("TLS version"))?;
        }
        // Keep the server's certificate even when verification fails (OpenSSL then
        // drops it), so that a refusal can name its fingerprint; pin where asked.
        let presented: Arc<Mutex<Option<X509>>> = Arc::new(Mutex::new(None));
        if !self.config.insecure {
            let seen = presented.clone();
            let pin = self.config.fingerprint.clone();
            cfg.set_verify_callback(SslVerifyMode::PEER, move |ok, ctx| {
                if ctx.error_depth() == 0 {
                    if let (Some(c), Ok(mut s)) = (ctx.current_cert(), seen.lock()) {
                        *s = Some(c.to_owned());
                    }
                }
                match &pin {
                    // Accept that one certificate, whatever its chain says.
                    Some(pin) => pin_check(pin, ctx),
                    None => ok,
                }
            });
        }
        let step = cfg.connect(host, tcp);
        self.handshake_step(step, presented, host)
    }

    /// Drives a pending handshake on after its socket became ready.
    pub fn continue_handshake(&self, pending: PendingHandshake) -> Result<Handshake> {
        let PendingHandshake {
            mid,
            presented,
            host,
        } = pending;
        let step = mid.handshake();
        self.handshake_step(step, presented, &host)
    }

    fn handshake_step(
        &self,
        step: std::result::Result<TlsStream, HandshakeError<TcpStream>>,
        presented: Arc<Mutex<Option<X509>>>,
        host: &str,
    ) -> Result<Handshake> {
        match step {
            Ok(s) => Ok(Handshake::Done(s)),
            Err(HandshakeError::Failure(mid)) => {
                let ssl = mid.ssl();
                let verify = ssl.verify_result();
                let msg = if verify != X509VerifyResult::OK {
                    let peer = presented.lock().ok().and_then(|p| p.clone());
                    describe_verify_error(verify, peer.as_deref(), &self.config, host)
                } else {
                    describe_handshake_error(mid.error())
                };
                Err(FtpError::Tls(msg))
            }
            Err(HandshakeError::SetupFailure(e)) => {
                Err(FtpError::Tls(format!("setup failed: {e}")))
            }
            Err(HandshakeError::WouldBlock(mid)) => Ok(Handshake::Pending(PendingHandshake {
                mid,
                presented,
                host: host.to_string(),
            })),
        }
    }
}

/// Where a TLS handshake stands.
pub enum Handshake {
    Done(TlsStream),
    Pending(PendingHandshake),
}

/// A handshake waiting for its socket (non-blocking).
pub struct PendingHandshake {
    mid: MidHandshakeSslStream<TcpStream>,
    presented: Arc<Mutex<Option<X509>>>,
    host: String,
}

impl PendingHandshake {
    pub fn tcp(&self) -> &TcpStream {
        self.mid.get_ref()
    }

    /// True when OpenSSL waits to write rather than to read.
    pub fn wants_write(&self) -> bool {
        self.mid.error().code() == openssl::ssl::ErrorCode::WANT_WRITE
    }
}

fn pin_check(pin: &[u8], ctx: &mut X509StoreContextRef) -> bool {
    if ctx.error_depth() != 0 {
        return true;
    }
    let ok = ctx
        .current_cert()
        .and_then(|c| c.digest(MessageDigest::sha256()).ok())
        .is_some_and(|d| d.as_ref() == pin);
    if !ok {
        ctx.set_error(X509VerifyResult::APPLICATION_VERIFICATION);
    }
    ok
}

/// Explains a refused certificate as ssh explains an unknown host key: what the
/// certificate is (subject, issuer, names, dates, fingerprint) and the ways on.
fn describe_verify_error(
    v: X509VerifyResult,
    peer: Option<&X509Ref>,
    cfg: &TlsConfig,
    host: &str,
) -> String {
    let code = v.as_raw();
    let summary = peer.map(|c| summarize_cert(&c.to_owned()));
    let names = summary
        .as_ref()
        .map(|s| s.names.join(", "))
        .unwrap_or_default();
    let what = match (code, &summary) {
        (10, Some(s)) => format!("the server's certificate expired on {}", s.not_after),
        (10, None) => "the server's certificate has expired".to_string(),
        (9, Some(s)) => format!(
            "the server's certificate is not yet valid (valid from {})",
            s.not_before
        ),
        (9, None) => "the server's certificate is not yet valid".to_string(),
        (62 | 64, _) => format!(
            "hostname mismatch: the server's certificate is for {}, not for {host}",
            if names.is_empty() { "other names" } else { &names }
        ),
        (18, _) => "untrusted issuer: the server's certificate is self-signed and not trusted".to_string(),
        (2 | 19 | 20 | 21, _) => format!(
            "untrusted issuer: the server's certificate was not issued by a trusted CA{}",
            if cfg.cafile.is_some() { " (not by the CA in cafile=)" } else { "" }
        ),
        (50, _) => format!(
            "fingerprint mismatch: the server presented sha256:{}, which is not the pinned fingerprint",
            peer.map(fingerprint_hex).unwrap_or_else(|| "?".into())
        ),
        (23, _) => "the server's certificate has been revoked".to_string(),
        _ => format!("certificate verification failed: {}", v.error_string()),
    };
    let Some(s) = summary else {
        return format!("{what}; connection refused");
    };
    let mut out = format!("{what}; connection refused.\n");
    out.push_str(&format!("  subject:  {}\n", s.subject));
    out.push_str(&format!("  issuer:   {}\n", s.issuer));
    if !names.is_empty() {
        out.push_str(&format!("  names:    {names}\n"));
    }
    out.push_str(&format!(
        "  valid:    {} to {}\n",
        s.not_before, s.not_after
    ));
    out.push_str(&format!("  sha256:   {}\n", s.sha256));
    let pin = format!("-o fingerprint=sha256:{}", s.sha256);
    let hint = match code {
        50 => format!(
            "If the server's certificate was replaced on purpose (ask its administrator), pin the new one: {pin}"
        ),
        62 | 64 => format!(
            "Connect with a name the certificate has ({}), or, once you have checked the fingerprint \
             with the server's administrator, pin this certificate: {pin}",
            if names.is_empty() { "none" } else { &names }
        ),
        9 | 10 => format!(
            "Ask the server's administrator to renew it. To go on meanwhile, once you have checked the \
             fingerprint with them, pin this certificate (a pinned certificate is accepted whatever its dates, with a warning): {pin}"
        ),
        _ => format!(
            "To trust it, either give the CA that issued it: -o cafile=PATH (a PEM file), or, once you have \
             checked the fingerprint with the server's administrator, pin this certificate: {pin}"
        ),
    };
    out.push_str(&hint);
    out
}

fn describe_handshake_error(e: &openssl::ssl::Error) -> String {
    let s = e.to_string();
    let l = s.to_ascii_lowercase();
    if l.contains("certificate required") || l.contains("handshake failure") && l.contains("alert")
    {
        return format!("client certificate rejected or required by the server ({s})");
    }
    if l.contains("unknown ca")
        || l.contains("bad certificate")
        || l.contains("certificate unknown")
    {
        return format!("client certificate rejected by the server ({s})");
    }
    if l.contains("protocol version") || l.contains("unsupported protocol") {
        return format!("no TLS version in common with the server ({s})");
    }
    format!("handshake failed: {s}")
}

/// Translates an error met on the first read after a TLS 1.3 handshake: that is where a
/// server that refuses the client certificate says so.
pub fn describe_post_handshake_error(e: &FtpError) -> Option<String> {
    let s = e.to_string().to_ascii_lowercase();
    if s.contains("certificate required")
        || s.contains("unknown ca")
        || s.contains("bad certificate")
        || s.contains("certificate unknown")
        || s.contains("alert")
    {
        Some(format!(
            "client certificate rejected or required by the server ({e})"
        ))
    } else {
        None
    }
}

/// What `check` prints about a certificate.
#[derive(Debug, Clone)]
pub struct CertSummary {
    pub subject: String,
    pub issuer: String,
    pub not_before: String,
    pub not_after: String,
    pub sha256: String,
    /// DNS names and addresses (subjectAltName), else the subject's CN.
    pub names: Vec<String>,
    /// Past its notAfter date now.
    pub expired: bool,
}

fn name_line(n: &openssl::x509::X509NameRef) -> String {
    n.entries()
        .map(|e| {
            let key = e.object().nid().short_name().unwrap_or("?");
            let val = e.data().to_string().unwrap_or_default();
            format!("{key}={val}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn cert_names(c: &X509Ref) -> Vec<String> {
    let mut names = Vec::new();
    if let Some(sans) = c.subject_alt_names() {
        for n in sans.iter() {
            if let Some(d) = n.dnsname() {
                names.push(d.to_string());
            } else if let Some(ip) = n.ipaddress() {
                let ip = match ip.len() {
                    4 => <[u8; 4]>::try_from(ip).ok().map(std::net::IpAddr::from),
                    16 => <[u8; 16]>::try_from(ip).ok().map(std::net::IpAddr::from),
                    _ => None,
                };
                if let Some(ip) = ip {
                    names.push(ip.to_string());
                }
            }
        }
    }
    if names.is_empty() {
        for e in c.subject_name().entries_by_nid(Nid::COMMONNAME) {
            if let Ok(v) = e.data().to_string() {
                names.push(v.to_string());
            }
        }
    }
    names
}

pub fn summarize_cert(c: &X509) -> CertSummary {
    let expired = openssl::asn1::Asn1Time::days_from_now(0)
        .ok()
        .and_then(|now| c.not_after().compare(&now).ok())
        .is_some_and(|o| o == std::cmp::Ordering::Less);
    CertSummary {
        names: cert_names(c),
        expired,
        subject: name_line(c.subject_name()),
        issuer: name_line(c.issuer_name()),
        not_before: c.not_before().to_string(),
        not_after: c.not_after().to_string(),
        sha256: fingerprint_hex(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_in_every_spelling() {
        let hex = "ab".repeat(32);
        let colons = vec!["AB"; 32].join(":");
        for s in [
            hex.clone(),
            format!("sha256:{hex}"),
            format!("sha256:{colons}"),
            colons,
        ] {
            assert_eq!(parse_fingerprint(&s), Some(vec![0xab; 32]), "{s}");
        }
        assert_eq!(parse_fingerprint("sha256:abcd"), None);
        assert_eq!(parse_fingerprint(&"zz".repeat(32)), None);
    }
}
