//! `ftpsfs check URL`: connect, log in, and report what a user or supporter needs to
//! know about the site's FTPS: TLS version and cipher, the certificate, CCC, the
//! features, data-session resumption, and the first entries of the listing. Also the
//! checks a mount makes on its first connection: the remote root is a directory, a
//! pinned certificate has not expired.

use crate::cli::{Failure, EXIT_REFUSED};
use crate::config::SiteConfig;
use crate::error::FtpError;
use crate::ftp::session::TlsInfo;
use crate::ftp::{EntryKind, FtpConnection, Protection, TlsContext};
use std::io::Write;
use std::sync::Arc;

/// How many listing entries `check` prints.
const SHOWN_ENTRIES: usize = 20;

/// Refuses a remote root that does not exist or is not a directory (a mount of it
/// would show an empty folder that refuses every write), with the server's words.
pub fn verify_root(conn: &mut FtpConnection, host: &str, path: &str) -> Result<(), Failure> {
    let said = match conn.enter(path) {
        Ok(()) => return Ok(()),
        Err(FtpError::Reply { code, text, .. }) if code / 100 == 5 => {
            format!("{code} {}", text.trim())
        }
        Err(e) => return Err(e.into()),
    };
    let is_file = conn.size(path).is_ok();
    let lower = said.to_ascii_lowercase();
    let msg = if is_file || lower.contains("not a directory") {
        format!("{path} on {host} is a file, not a directory ({said}); mount the directory that holds it")
    } else if lower.contains("permission") || lower.contains("denied") {
        format!("{path} on {host} cannot be entered ({said})")
    } else {
        format!("{path} on {host} does not exist ({said}); check the path in the URL")
    };
    Err(Failure::new(EXIT_REFUSED, msg))
}

/// A warning when the certificate accepted by `fingerprint=` is past its date
/// (pinning accepts it anyway: it is that very certificate).
pub fn pinned_cert_warning(site: &SiteConfig, info: &TlsInfo) -> Option<String> {
    let cert = info.server_cert.as_ref()?;
    (site.tls.fingerprint.is_some() && cert.expired).then(|| {
        format!(
            "the pinned server certificate expired on {}; it is accepted because fingerprint= names it, \
             but ask the server's administrator to renew it (then pin the new one)",
            cert.not_after
        )
    })
}

/// Runs the check, writing the report to `out`.
pub fn run(site: &SiteConfig, out: &mut dyn Write) -> Result<(), Failure> {
    let tls = TlsContext::new(site.tls.clone())?;
    let c = &site.connect;
    let mode = if c.implicit {
        "implicit FTPS (TLS from the first byte)"
    } else {
        "explicit FTPS (AUTH TLS)"
    };
    let _ = writeln!(out, "server:           {}:{} ({mode})", c.host, c.port);
    let mut conn = FtpConnection::connect(Arc::new(c.clone()), tls)?;
    let info = conn.tls_info().clone();
    let _ = writeln!(
        out,
        "tls:              {}, cipher {}",
        info.version, info.cipher
    );
    let trust = if site.tls.insecure {
        "NOT VERIFIED (insecure): anyone on the path could impersonate this server"
    } else if site.tls.fingerprint.is_some() {
        "pinned SHA-256 fingerprint matches"
    } else if site.tls.cafile.is_some() {
        "chain verified against cafile=, host name matches"
    } else {
        "chain verified against the system CAs, host name matches"
    };
    let _ = writeln!(out, "trust:            {trust}");
    if let Some(cert) = &info.server_cert {
        let _ = writeln!(out, "certificate:      subject {}", cert.subject);
        let _ = writeln!(out, "                  issuer  {}", cert.issuer);
        let _ = writeln!(
            out,
            "                  valid   {} to {}",
            cert.not_before, cert.not_after
        );
        let _ = writeln!(out, "                  sha256  {}", cert.sha256);
        if !cert.names.is_empty() {
            let _ = writeln!(out, "                  names   {}", cert.names.join(", "));
        }
    }
    if let Some(w) = pinned_cert_warning(site, &info) {
        let _ = writeln!(out, "warning:          {w}");
        eprintln!("ftpsfs: warning: {w}");
    }
    if site.tls.client_cert.is_some() {
        let _ = writeln!(out, "client cert:      presented and accepted");
    }
    let _ = writeln!(out, "login:            ok as {}", c.user);
    let prot = match c.protection {
        Protection::Private => "PROT P (data connections encrypted)",
        Protection::Clear => "PROT C (data connections in clear)",
    };
    let _ = writeln!(out, "protection:       {prot}");
    let control = if conn.control_is_clear() {
        "clear after CCC (commands visible, password was sent encrypted)"
    } else {
        "encrypted"
    };
    let _ = writeln!(out, "control channel:  {control}");
    let feats = conn.features().raw.join(", ");
    let _ = writeln!(
        out,
        "features:         {}",
        if feats.is_empty() {
            "(none announced)"
        } else {
            &feats
        }
    );
    let _ = writeln!(out, "reply order:      {}", reply_order(&mut conn));
    verify_root(&mut conn, &c.host, &site.url.path)?;
    let how = if conn.features().mlst { "MLSD" } else { "LIST" };
    let entries = conn.list_dir(&site.url.path)?;
    let resumed = match conn.data_session_resumed() {
        Some(true) => "yes (data connection resumed the control TLS session)",
        Some(false) => "NO (the data connection made a full handshake)",
        None => "n/a (PROT C: data in clear)",
    };
    let _ = writeln!(out, "session reuse:    {resumed}");
    let _ = writeln!(
        out,
        "listing of {} ({how}, {} entries):",
        site.url.path,
        entries.len()
    );
    for e in entries.iter().take(SHOWN_ENTRIES) {
        let kind = match &e.kind {
            EntryKind::Dir => "d".to_string(),
            EntryKind::File => "-".to_string(),
            EntryKind::Symlink(_) => "l".to_string(),
        };
        let target = match &e.kind {
            EntryKind::Symlink(Some(t)) => format!(" -> {t}"),
            _ => String::new(),
        };
        let _ = writeln!(out, "  {kind} {:>12}  {}{target}", e.size, e.name);
    }
    if entries.len() > SHOWN_ENTRIES {
        let _ = writeln!(out, "  ... and {} more", entries.len() - SHOWN_ENTRIES);
    }
    let _ = writeln!(
        out,
        "names:            {}",
        names_report(conn.features().utf8, c.encoding, &entries)
    );
    conn.quit();
    let _ = writeln!(out, "result:           OK");
    Ok(())
}

/// Whether the server announced UTF8, and whether the listing had names that are
/// not UTF-8 (and what to do about them).
fn names_report(
    utf8: bool,
    encoding: crate::names::NameCodec,
    entries: &[crate::ftp::RemoteEntry],
) -> String {
    let announced = if utf8 {
        "UTF8 announced"
    } else {
        "UTF8 not announced"
    };
    if encoding.converts() {
        return format!("{announced}; converted with encoding= (as given)");
    }
    let raw = entries
        .iter()
        .filter(|e| !crate::names::is_utf8(&e.name))
        .count();
    if raw == 0 {
        format!("{announced}; every name listed is UTF-8")
    } else {
        format!(
            "{announced}; {raw} of {} names are not UTF-8: shown as the server's bytes \
             (if the server uses one charset, e.g. Latin-1: -o encoding=latin1)",
            entries.len()
        )
    }
}

/// Whether the server answers pipelined commands in order (see
/// `FtpConnection::probe_reply_order`).
fn reply_order(conn: &mut FtpConnection) -> String {
    match conn.probe_reply_order() {
        Ok(true) => "kept (pipelined commands are answered in order)".into(),
        Ok(false) => "NOT kept (answers pipelined commands out of order): \
                      ftpsfs sends one command at a time to this server"
            .into(),
        Err(e) => format!("unknown ({e})"),
    }
}
