//! The FTPS client (src/ftp) and the `ftpsfs check` command against real servers
//! (proftpd, vsftpd, pyftpdlib) started by tests/support: every connection mode, data
//! session reuse, CCC, PROT C, client certificates, certificate refusal, REST, large
//! transfers and the metadata commands.

mod support;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ftpsfs::error::FtpError;
use ftpsfs::ftp::command::Command as FtpCommand;
use ftpsfs::ftp::{
    ConnectOptions, EntryKind, FtpConnection, Protection, RemoteEntry, Secret, TlsConfig,
    TlsContext, TlsVersion,
};
use ftpsfs::remote::pool::{Pool, Use};
use support::{CertChoice, Server, ServerKind, ServerSpec, TlsRequired};

const TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Helpers

fn start(spec: ServerSpec) -> Server {
    support::start(spec)
}

/// TLS config trusting the test CA (TLS 1.2 and 1.3).
fn trusting_ca() -> TlsConfig {
    TlsConfig {
        cafile: Some(support::pki().ca_cert.clone()),
        ..TlsConfig::default()
    }
}

fn options(srv: &Server, protection: Protection, ccc: bool) -> Arc<ConnectOptions> {
    Arc::new(ConnectOptions {
        host: srv.host.to_string(),
        port: srv.port,
        implicit: srv.spec.implicit,
        protection,
        ccc,
        user: srv.user.to_string(),
        password: Secret::new(srv.password.to_string()),
        timeout: TIMEOUT,
        max_listing_entries: ftpsfs::ftp::session::DEFAULT_MAX_LISTING_ENTRIES,
        encoding: ftpsfs::names::NameCodec::default(),
        server: Default::default(),
    })
}

fn try_connect_with(
    srv: &Server,
    tls: TlsConfig,
    protection: Protection,
    ccc: bool,
) -> Result<FtpConnection, FtpError> {
    let ctx = TlsContext::new(tls)?;
    FtpConnection::connect(options(srv, protection, ccc), ctx)
}

fn connect_with(srv: &Server, tls: TlsConfig, protection: Protection, ccc: bool) -> FtpConnection {
    try_connect_with(srv, tls, protection, ccc).unwrap_or_else(|e| {
        panic!(
            "connect to {:?} failed: {e}\n--- server logs ---\n{}",
            srv.spec,
            srv.log_contents()
        )
    })
}

fn connect(srv: &Server) -> FtpConnection {
    connect_with(srv, trusting_ca(), Protection::Private, false)
}

/// The error of a connection attempt that must fail.
fn refused(srv: &Server, tls: TlsConfig, protection: Protection, ccc: bool) -> String {
    match try_connect_with(srv, tls, protection, ccc) {
        Ok(_) => panic!(
            "connection to {:?} unexpectedly succeeded\n--- server logs ---\n{}",
            srv.spec,
            srv.log_contents()
        ),
        Err(e) => e.to_string(),
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), different per seed.
struct Prng(u64);

impl Prng {
    fn new(seed: u64) -> Self {
        Prng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Prng::new(seed).fill(&mut v);
    v
}

fn upload(conn: &mut FtpConnection, path: &str, data: &[u8]) {
    let mut up = conn
        .stor(path, false)
        .unwrap_or_else(|e| panic!("STOR {path}: {e}"));
    up.write_all(data)
        .unwrap_or_else(|e| panic!("writing {path}: {e}"));
    let n = up
        .finish()
        .unwrap_or_else(|e| panic!("finishing STOR {path}: {e}"));
    assert_eq!(n, data.len() as u64, "bytes uploaded to {path}");
}

fn download(conn: &mut FtpConnection, path: &str, offset: u64) -> Vec<u8> {
    let mut dl = conn
        .retr(path, offset)
        .unwrap_or_else(|e| panic!("RETR {path} @{offset}: {e}"));
    let mut out = Vec::new();
    dl.read_to_end(&mut out)
        .unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let n = dl
        .finish()
        .unwrap_or_else(|e| panic!("finishing RETR {path}: {e}"));
    assert_eq!(
        n,
        out.len() as u64,
        "Download::finish byte count for {path}"
    );
    out
}

fn list(conn: &mut FtpConnection, path: &str) -> Vec<RemoteEntry> {
    conn.list_dir(path)
        .unwrap_or_else(|e| panic!("listing {path}: {e}"))
}

fn find<'a>(entries: &'a [RemoteEntry], name: &str) -> Option<&'a RemoteEntry> {
    entries.iter().find(|e| e.name == name)
}

fn names(entries: &[RemoteEntry]) -> Vec<&str> {
    let mut v: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    v.sort_unstable();
    v
}

/// `FtpConnection::quit` takes the connection by value.
fn quit(conn: FtpConnection) {
    conn.quit();
}

/// A file under the process directory (readable by everyone), removed on drop.
fn temp_file(contents: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new()
        .prefix("ftps-client-")
        .tempfile_in(support::process_dir())
        .unwrap();
    f.write_all(contents.as_bytes()).unwrap();
    f.flush().unwrap();
    f
}

fn hex_to_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

// ---------------------------------------------------------------------------
// Connect, list, upload, download, compare: every server × mode

fn round_trip(spec: ServerSpec) {
    let srv = start(spec);
    let mut conn = connect(&srv);
    assert!(!conn.control_is_clear());
    let info = conn.tls_info().clone();
    assert!(info.version.starts_with("TLSv1."), "{info:?}");
    let data = payload(300_000, 1);
    upload(&mut conn, "/round trip.bin", &data);
    assert_eq!(
        fs::read(srv.root.join("round trip.bin")).unwrap(),
        data,
        "file on the server's disk"
    );
    let entries = list(&mut conn, "/");
    let e = find(&entries, "round trip.bin")
        .unwrap_or_else(|| panic!("uploaded file not listed: {:?}", names(&entries)));
    assert_eq!(e.kind, EntryKind::File);
    assert_eq!(e.size, data.len() as u64);
    assert_eq!(conn.size("/round trip.bin").unwrap(), data.len() as u64);
    let back = download(&mut conn, "/round trip.bin", 0);
    assert!(back == data, "downloaded data differs from uploaded");
    // A file created on the server side is readable through FTPS.
    let seeded = payload(70_001, 2);
    fs::write(srv.root.join("seeded.bin"), &seeded).unwrap();
    assert!(download(&mut conn, "/seeded.bin", 0) == seeded);
    conn.noop().unwrap();
    quit(conn);
}

#[test]
fn round_trip_proftpd_explicit() {
    round_trip(ServerSpec::proftpd());
}

#[test]
fn round_trip_proftpd_implicit() {
    round_trip(ServerSpec::proftpd().implicit(true));
}

#[test]
fn round_trip_vsftpd_explicit() {
    round_trip(ServerSpec::vsftpd());
}

#[test]
fn round_trip_vsftpd_implicit() {
    round_trip(ServerSpec::vsftpd().implicit(true));
}

#[test]
fn round_trip_pyftpdlib_explicit() {
    round_trip(ServerSpec::pyftpdlib());
}

// ---------------------------------------------------------------------------
// Data-session reuse: servers that require it accept every data connection

fn session_reuse(spec: ServerSpec, version: TlsVersion) {
    let srv = start(spec.session_reuse_required(true));
    let tls = match version {
        TlsVersion::Tls12 => TlsConfig {
            max_version: Some(TlsVersion::Tls12),
            ..trusting_ca()
        },
        TlsVersion::Tls13 => TlsConfig {
            min_version: TlsVersion::Tls13,
            ..trusting_ca()
        },
    };
    let want = match version {
        TlsVersion::Tls12 => "TLSv1.2",
        TlsVersion::Tls13 => "TLSv1.3",
    };
    let mut conn = connect_with(&srv, tls, Protection::Private, false);
    assert_eq!(conn.tls_info().version, want);
    assert_eq!(conn.data_session_resumed(), None, "before any transfer");
    let a = payload(150_000, 10);
    let b = payload(4_000, 11);
    let mut step = 0;
    let mut check = |conn: &FtpConnection, what: &str| {
        step += 1;
        assert_eq!(
            conn.data_session_resumed(),
            Some(true),
            "transfer {step} ({what}) did not resume the control session"
        );
    };
    list(&mut conn, "/");
    check(&conn, "LIST 1");
    upload(&mut conn, "/a.bin", &a);
    check(&conn, "STOR a");
    assert!(download(&mut conn, "/a.bin", 0) == a);
    check(&conn, "RETR a");
    let l = list(&mut conn, "/");
    assert_eq!(find(&l, "a.bin").map(|e| e.size), Some(a.len() as u64));
    check(&conn, "LIST 2");
    upload(&mut conn, "/b.bin", &b);
    check(&conn, "STOR b");
    assert!(download(&mut conn, "/b.bin", 0) == b);
    check(&conn, "RETR b");
    assert!(download(&mut conn, "/a.bin", 0) == a);
    check(&conn, "RETR a again");
    let l = list(&mut conn, "/");
    assert_eq!(names(&l), vec!["a.bin", "b.bin"]);
    check(&conn, "LIST 3");
    quit(conn);
    let controls = control_connections(&srv);
    if srv.spec.kind == ServerKind::Proftpd && version == TlsVersion::Tls13 {
        // The client renews the control connection when it runs out of single-use
        // TLS 1.3 tickets (see session_reuse_proftpd_tls13_single_control_connection).
        assert!(
            (1..=7).contains(&controls),
            "{controls} control connections"
        );
    } else {
        assert_eq!(controls, 1, "control connections opened");
    }
}

/// How many control connections logged in (proftpd: TLS session processes in its
/// TLS log; vsftpd: `OK LOGIN` lines).
fn control_connections(srv: &Server) -> usize {
    let logs = srv.log_contents();
    match srv.spec.kind {
        ServerKind::Vsftpd => logs.matches("OK LOGIN").count(),
        ServerKind::Proftpd => {
            let mut pids: Vec<&str> = logs
                .lines()
                .filter(|l| l.contains("SSL negotiation finished successfully"))
                .filter_map(|l| l.split("mod_tls/").nth(1)?.split(['[', ']']).nth(1))
                .collect();
            pids.sort_unstable();
            pids.dedup();
            pids.len()
        }
        k @ (ServerKind::Pyftpdlib | ServerKind::PureFtpd) => panic!("not counted for {k:?}"),
    }
}

#[test]
fn session_reuse_proftpd_tls12() {
    session_reuse(ServerSpec::proftpd(), TlsVersion::Tls12);
}

#[test]
fn session_reuse_proftpd_tls13() {
    session_reuse(ServerSpec::proftpd(), TlsVersion::Tls13);
}

#[test]
/// proftpd accepts each TLS 1.3 ticket once and sends none on a data connection it
/// only reads from (an upload), so an upload uses up a ticket for good; the client
/// then logs in again rather than be refused (`FtpConnection::out_of_tickets`).
/// Bound: the two tickets of each login cover at least two uploads.
fn session_reuse_proftpd_tls13_renews_at_most_once_per_two_uploads() {
    let srv = start(ServerSpec::proftpd());
    let mut conn = connect_with(&srv, tls13(), Protection::Private, false);
    let a = payload(50_000, 12);
    for i in 0..3 {
        list(&mut conn, "/");
        upload(&mut conn, &format!("/{i}.bin"), &a);
        assert!(download(&mut conn, &format!("/{i}.bin"), 0) == a);
        assert_eq!(conn.data_session_resumed(), Some(true));
    }
    quit(conn);
    let n = control_connections(&srv);
    assert!(
        (1..=3).contains(&n),
        "{n} control connections for 3 uploads"
    );
}

#[test]
fn session_reuse_vsftpd_tls12() {
    session_reuse(ServerSpec::vsftpd(), TlsVersion::Tls12);
}

#[test]
fn session_reuse_vsftpd_tls13() {
    session_reuse(ServerSpec::vsftpd(), TlsVersion::Tls13);
}

#[test]
fn session_reuse_proftpd_implicit_tls13() {
    session_reuse(ServerSpec::proftpd().implicit(true), TlsVersion::Tls13);
}

#[test]
fn session_reuse_vsftpd_implicit_tls12() {
    session_reuse(ServerSpec::vsftpd().implicit(true), TlsVersion::Tls12);
}

// ---------------------------------------------------------------------------
// CCC

#[test]
fn ccc_proftpd_auth_data() {
    let srv = start(ServerSpec::proftpd().tls_required(TlsRequired::AuthData));
    let mut conn = connect_with(&srv, trusting_ca(), Protection::Private, true);
    assert!(conn.control_is_clear(), "CCC not done");
    let data = payload(200_000, 20);
    upload(&mut conn, "/after ccc.bin", &data);
    assert_eq!(conn.data_session_resumed(), Some(true), "STOR data not TLS");
    let l = list(&mut conn, "/");
    assert_eq!(find(&l, "after ccc.bin").map(|e| e.size), Some(200_000));
    assert_eq!(conn.data_session_resumed(), Some(true), "LIST data not TLS");
    assert!(download(&mut conn, "/after ccc.bin", 0) == data);
    assert_eq!(conn.data_session_resumed(), Some(true), "RETR data not TLS");
    assert_eq!(fs::read(srv.root.join("after ccc.bin")).unwrap(), data);
    conn.noop().unwrap();
    quit(conn);
}

#[test]
fn ccc_refused_by_proftpd_tls_required_on() {
    let srv = start(ServerSpec::proftpd().tls_required(TlsRequired::On));
    let err = refused(&srv, trusting_ca(), Protection::Private, true);
    assert!(err.contains("CCC"), "error does not name CCC: {err}");
    assert!(err.contains("refused"), "{err}");
}

// ---------------------------------------------------------------------------
// PROT C

fn prot_c_round_trip(spec: ServerSpec) {
    let srv = start(spec.tls_required(TlsRequired::Ctrl));
    let mut conn = connect_with(&srv, trusting_ca(), Protection::Clear, false);
    let data = payload(250_000, 30);
    upload(&mut conn, "/clear.bin", &data);
    assert_eq!(
        conn.data_session_resumed(),
        None,
        "PROT C data must be clear"
    );
    let l = list(&mut conn, "/");
    assert_eq!(find(&l, "clear.bin").map(|e| e.size), Some(250_000));
    assert!(download(&mut conn, "/clear.bin", 0) == data);
    assert!(download(&mut conn, "/clear.bin", 1000) == data[1000..]);
    assert_eq!(conn.data_session_resumed(), None);
    assert_eq!(fs::read(srv.root.join("clear.bin")).unwrap(), data);
    quit(conn);
}

#[test]
fn prot_c_proftpd_ctrl() {
    prot_c_round_trip(ServerSpec::proftpd());
}

#[test]
fn prot_c_vsftpd_ctrl() {
    prot_c_round_trip(ServerSpec::vsftpd());
}

#[test]
fn prot_c_pyftpdlib_ctrl() {
    prot_c_round_trip(ServerSpec::pyftpdlib());
}

#[test]
fn prot_c_refused_by_proftpd_tls_required_on() {
    // proftpd refuses PROT C itself: the connection fails with that reply.
    let srv = start(ServerSpec::proftpd().tls_required(TlsRequired::On));
    let err = refused(&srv, trusting_ca(), Protection::Clear, false);
    assert!(err.contains("PROT C"), "error does not name PROT C: {err}");
    assert!(err.contains("refused"), "{err}");
}

#[test]
fn prot_c_refused_by_vsftpd_tls_required_on() {
    // vsftpd accepts PROT C (200) but refuses every clear data connection (522).
    let srv = start(ServerSpec::vsftpd().tls_required(TlsRequired::On));
    let mut conn = connect_with(&srv, trusting_ca(), Protection::Clear, false);
    let err = conn.list_dir("/").map(|_| ()).unwrap_err();
    assert!(
        err.reply_code().is_some_and(|c| c >= 500),
        "clear listing not refused with a 5xx reply: {err}"
    );
    match conn.stor("/clear.bin", false) {
        Ok(_) => panic!("clear upload accepted by a server requiring data TLS"),
        Err(e) => assert!(e.reply_code().is_some_and(|c| c >= 500), "{e}"),
    }
    assert!(!srv.root.join("clear.bin").exists());
}

// ---------------------------------------------------------------------------
// Client certificates

fn with_client_cert(mut tls: TlsConfig, encrypted: bool) -> TlsConfig {
    let p = support::pki();
    tls.client_cert = Some(p.client_cert.clone());
    if encrypted {
        tls.client_key = Some(p.client_key_encrypted.clone());
        let pw = fs::read_to_string(&p.client_key_password_file).unwrap();
        tls.client_key_password = Some(pw.trim_end_matches(['\r', '\n']).as_bytes().to_vec());
    } else {
        tls.client_key = Some(p.client_key.clone());
    }
    tls
}

fn tls12() -> TlsConfig {
    TlsConfig {
        max_version: Some(TlsVersion::Tls12),
        ..trusting_ca()
    }
}

fn tls13() -> TlsConfig {
    TlsConfig {
        min_version: TlsVersion::Tls13,
        ..trusting_ca()
    }
}

fn client_cert_accepted(spec: ServerSpec, tls: TlsConfig) {
    let srv = start(spec.client_cert_required(true));
    let mut conn = connect_with(&srv, tls, Protection::Private, false);
    let data = payload(100_000, 40);
    upload(&mut conn, "/cert.bin", &data);
    assert!(download(&mut conn, "/cert.bin", 0) == data);
    assert_eq!(conn.data_session_resumed(), Some(true));
    quit(conn);
}

#[test]
fn client_cert_proftpd_plain_key() {
    client_cert_accepted(
        ServerSpec::proftpd(),
        with_client_cert(trusting_ca(), false),
    );
}

#[test]
fn client_cert_proftpd_encrypted_key_tls13() {
    client_cert_accepted(ServerSpec::proftpd(), with_client_cert(tls13(), true));
}

#[test]
fn client_cert_proftpd_encrypted_key_tls12_implicit() {
    client_cert_accepted(
        ServerSpec::proftpd().implicit(true),
        with_client_cert(tls12(), true),
    );
}

#[test]
fn client_cert_vsftpd_plain_key() {
    client_cert_accepted(ServerSpec::vsftpd(), with_client_cert(tls12(), false));
}

#[test]
fn client_cert_encrypted_key_with_wrong_password_is_an_error() {
    let p = support::pki();
    let tls = TlsConfig {
        client_cert: Some(p.client_cert.clone()),
        client_key: Some(p.client_key_encrypted.clone()),
        ..trusting_ca()
    };
    // Not loaded in-process without a passphrase: OpenSSL would prompt on the
    // terminal (see check_encrypted_key_without_password_never_prompts).
    let _ = tls;
    let tls = TlsConfig {
        client_key_password: Some(b"wrong passphrase".to_vec()),
        ..with_client_cert(trusting_ca(), true)
    };
    assert!(
        TlsContext::new(tls).is_err(),
        "wrong key passphrase accepted"
    );
}

fn client_cert_missing(spec: ServerSpec, tls: TlsConfig) {
    let srv = start(spec.client_cert_required(true));
    let err = refused(&srv, tls, Protection::Private, false);
    assert!(
        err.contains("client certificate"),
        "refusal does not mention the client certificate: {err}"
    );
}

#[test]
fn client_cert_missing_proftpd_tls12() {
    client_cert_missing(ServerSpec::proftpd(), tls12());
}

#[test]
fn client_cert_missing_proftpd_tls13() {
    // Under TLS 1.3 the server's alert arrives after the handshake, at the first read
    // (or, racing, as a reset of the first write: see the ignored test below).
    let srv = start(ServerSpec::proftpd().client_cert_required(true));
    let err = refused(&srv, tls13(), Protection::Private, false);
    assert!(
        err.contains("client certificate") || err.contains("sending USER"),
        "{err}"
    );
}

#[test]
fn client_cert_missing_proftpd_tls13_always_explained() {
    let srv = start(ServerSpec::proftpd().client_cert_required(true));
    for i in 0..10 {
        let err = refused(&srv, tls13(), Protection::Private, false);
        assert!(err.contains("client certificate"), "attempt {i}: {err}");
    }
}

#[test]
fn client_cert_missing_proftpd_implicit_tls13() {
    client_cert_missing(ServerSpec::proftpd().implicit(true), tls13());
}

// ---------------------------------------------------------------------------
// Server certificates

fn bad_cert(choice: CertChoice, want: &str) {
    let srv = start(ServerSpec::proftpd().server_cert(choice));
    let err = refused(&srv, trusting_ca(), Protection::Private, false);
    assert!(err.contains(want), "expected {want:?} in: {err}");
    assert!(err.starts_with("TLS: "), "not a TLS error: {err}");
    for other in [
        "expired",
        "not yet valid",
        "hostname mismatch",
        "untrusted issuer",
        "fingerprint mismatch",
    ] {
        if other != want {
            assert!(
                !err.contains(other),
                "{choice:?} reported as {other:?}: {err}"
            );
        }
    }
}

#[test]
fn server_cert_expired_refused() {
    bad_cert(CertChoice::Expired, "expired");
}

#[test]
fn server_cert_not_yet_valid_refused() {
    bad_cert(CertChoice::NotYetValid, "not yet valid");
}

#[test]
fn server_cert_wrong_host_refused_by_name() {
    // Connecting as "localhost" to a certificate for wrong.example only.
    let srv = start(ServerSpec::proftpd().server_cert(CertChoice::WrongHost));
    let mut opts = (*options(&srv, Protection::Private, false)).clone();
    opts.host = "localhost".into();
    let ctx = TlsContext::new(trusting_ca()).unwrap();
    let err = match FtpConnection::connect(Arc::new(opts.clone()), ctx) {
        Ok(_) => panic!("wrong-host certificate accepted for localhost"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("hostname mismatch"), "{err}");
    // The good certificate is valid for "localhost": the name itself works.
    let good = start(ServerSpec::proftpd());
    opts.port = good.port;
    let conn = FtpConnection::connect(Arc::new(opts), TlsContext::new(trusting_ca()).unwrap())
        .unwrap_or_else(|e| panic!("localhost with the good certificate: {e}"));
    quit(conn);
}

#[test]
fn server_cert_wrong_host_refused_by_ip_address() {
    bad_cert(CertChoice::WrongHost, "hostname mismatch");
}

#[test]
fn server_cert_untrusted_refused() {
    bad_cert(CertChoice::Untrusted, "untrusted issuer");
}

#[test]
fn server_cert_expired_refused_vsftpd_implicit() {
    let srv = start(
        ServerSpec::vsftpd()
            .implicit(true)
            .server_cert(CertChoice::Expired),
    );
    let err = refused(&srv, trusting_ca(), Protection::Private, false);
    assert!(err.contains("expired"), "{err}");
}

#[test]
fn fingerprint_pin_and_insecure() {
    let srv = start(ServerSpec::proftpd().server_cert(CertChoice::Untrusted));
    let p = support::pki();
    let fp = support::sha256_fingerprint(&p.untrusted_cert);

    // Right pin, no CA: accepted, and data connections work (they are verified too).
    let pinned = TlsConfig {
        fingerprint: Some(hex_to_bytes(&fp)),
        ..TlsConfig::default()
    };
    let mut conn = connect_with(&srv, pinned, Protection::Private, false);
    let sha = conn.tls_info().server_cert.as_ref().unwrap().sha256.clone();
    assert_eq!(sha.replace(':', "").to_ascii_lowercase(), fp);
    let data = payload(10_000, 50);
    upload(&mut conn, "/pinned.bin", &data);
    assert!(download(&mut conn, "/pinned.bin", 0) == data);
    quit(conn);

    // Right pin even with a CA file that does not verify the chain.
    let pinned_ca = TlsConfig {
        fingerprint: Some(hex_to_bytes(&fp)),
        ..trusting_ca()
    };
    let conn = connect_with(&srv, pinned_ca, Protection::Private, false);
    quit(conn);

    // Wrong pin: the good server certificate's fingerprint.
    let wrong = TlsConfig {
        fingerprint: Some(hex_to_bytes(&support::sha256_fingerprint(&p.server_cert))),
        ..TlsConfig::default()
    };
    let err = refused(&srv, wrong, Protection::Private, false);
    assert!(err.contains("fingerprint mismatch"), "{err}");

    // insecure accepts anything.
    let insecure = TlsConfig {
        insecure: true,
        ..TlsConfig::default()
    };
    let mut conn = connect_with(&srv, insecure, Protection::Private, false);
    assert!(download(&mut conn, "/pinned.bin", 0) == data);
    quit(conn);

    // Without pin or insecure, the untrusted certificate is refused.
    let err = refused(&srv, trusting_ca(), Protection::Private, false);
    assert!(err.contains("untrusted issuer"), "{err}");
}

#[test]
fn refusals_show_the_presented_fingerprint() {
    let srv = start(ServerSpec::proftpd().server_cert(CertChoice::Untrusted));
    let p = support::pki();
    let presented = support::sha256_fingerprint(&p.untrusted_cert).to_ascii_uppercase();
    let wrong = TlsConfig {
        fingerprint: Some(hex_to_bytes(&support::sha256_fingerprint(&p.server_cert))),
        ..TlsConfig::default()
    };
    let err = refused(&srv, wrong, Protection::Private, false);
    assert!(err.contains("fingerprint mismatch"), "{err}");
    assert!(err.replace(':', "").contains(&presented), "{err}");
    let err = refused(&srv, trusting_ca(), Protection::Private, false);
    assert!(err.contains("untrusted issuer"), "{err}");
    assert!(err.replace(':', "").contains(&presented), "{err}");
}

#[test]
fn wrong_pin_refuses_even_a_ca_valid_certificate() {
    let srv = start(ServerSpec::vsftpd());
    let wrong = TlsConfig {
        fingerprint: Some(vec![0xab; 32]),
        ..trusting_ca()
    };
    let err = refused(&srv, wrong, Protection::Private, false);
    assert!(err.contains("fingerprint mismatch"), "{err}");
}

#[test]
fn system_cas_do_not_trust_the_test_ca() {
    let srv = start(ServerSpec::proftpd());
    let err = refused(&srv, TlsConfig::default(), Protection::Private, false);
    assert!(err.contains("untrusted issuer"), "{err}");
}

// ---------------------------------------------------------------------------
// AUTH TLS refused: no plaintext fallback, no login

fn auth_refused(spec: ServerSpec) {
    let srv = start(spec.tls_enabled(false));
    let err = refused(&srv, trusting_ca(), Protection::Private, false);
    assert!(err.contains("AUTH TLS"), "{err}");
    assert!(err.contains("plaintext"), "{err}");
    let logs = srv.log_contents();
    if srv.spec.kind == ServerKind::Vsftpd {
        // vsftpd logs every command: the negative checks below are meaningful.
        assert!(logs.contains("\"AUTH TLS\""), "{logs}");
    }
    for marker in [
        "USER ftpsfs-test",
        "Login successful",
        "logged in",
        "PASS ",
        "USER '",
    ] {
        assert!(
            !logs.contains(marker),
            "server log shows a login attempt ({marker:?}):\n{logs}"
        );
    }
}

#[test]
fn auth_tls_refused_proftpd() {
    auth_refused(ServerSpec::proftpd());
}

#[test]
fn auth_tls_refused_vsftpd() {
    auth_refused(ServerSpec::vsftpd());
}

#[test]
fn auth_tls_refused_pyftpdlib() {
    auth_refused(ServerSpec::pyftpdlib());
}

// ---------------------------------------------------------------------------
// REST

fn rest_resumes(spec: ServerSpec) {
    let srv = start(spec);
    let mut conn = connect(&srv);
    assert!(conn.features().rest_stream, "REST STREAM not announced");
    let data = payload(1 << 20, 60);
    upload(&mut conn, "/rest.bin", &data);
    for offset in [123_457u64, 1, (1 << 20) - 1] {
        let tail = download(&mut conn, "/rest.bin", offset);
        assert_eq!(tail.len(), data.len() - offset as usize, "offset {offset}");
        assert!(tail == data[offset as usize..], "wrong bytes from {offset}");
    }
    // At the very end: nothing.
    assert!(download(&mut conn, "/rest.bin", 1 << 20).is_empty());
    quit(conn);
}

#[test]
fn rest_proftpd() {
    rest_resumes(ServerSpec::proftpd());
}

#[test]
fn rest_vsftpd() {
    rest_resumes(ServerSpec::vsftpd());
}

#[test]
fn rest_pyftpdlib() {
    rest_resumes(ServerSpec::pyftpdlib());
}

// ---------------------------------------------------------------------------
// Large transfer

#[test]
fn large_transfer_100mib_proftpd_tls13() {
    const SIZE: usize = 100 << 20;
    const CHUNK: usize = 1 << 20;
    let srv = start(ServerSpec::proftpd());
    let mut conn = connect_with(&srv, tls13(), Protection::Private, false);
    assert_eq!(conn.tls_info().version, "TLSv1.3");

    let mut prng = Prng::new(70);
    let mut up_hash = openssl::sha::Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    {
        let mut up = conn.stor("/big.bin", false).unwrap();
        for _ in 0..SIZE / CHUNK {
            prng.fill(&mut buf);
            up_hash.update(&buf);
            up.write_all(&buf).unwrap();
        }
        assert_eq!(up.finish().unwrap(), SIZE as u64);
    }
    let up_hash = up_hash.finish();
    assert_eq!(
        fs::metadata(srv.root.join("big.bin")).unwrap().len(),
        SIZE as u64
    );
    assert_eq!(conn.size("/big.bin").unwrap(), SIZE as u64);

    let mut down_hash = openssl::sha::Sha256::new();
    let mut total = 0usize;
    {
        let mut dl = conn.retr("/big.bin", 0).unwrap();
        loop {
            let n = dl.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            down_hash.update(&buf[..n]);
            total += n;
        }
        assert_eq!(dl.finish().unwrap(), SIZE as u64);
    }
    assert_eq!(total, SIZE);
    assert_eq!(
        down_hash.finish(),
        up_hash,
        "SHA-256 differs after round trip"
    );
    assert_eq!(conn.data_session_resumed(), Some(true));
    quit(conn);
}

// ---------------------------------------------------------------------------
// Metadata and namespace commands

/// 2001-02-03 04:05:06 UTC.
fn some_time() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(981_173_106)
}

fn disk_mtime(p: &Path) -> SystemTime {
    fs::metadata(p).unwrap().modified().unwrap()
}

fn set_mtime(spec: ServerSpec) {
    let srv = start(spec);
    let kind = srv.spec.kind;
    let mut conn = connect(&srv);
    upload(&mut conn, "/dated.txt", b"dated\n");
    conn.set_mtime("/dated.txt", some_time())
        .unwrap_or_else(|e| panic!("set_mtime on {}: {e}", kind.name()));
    assert_eq!(disk_mtime(&srv.root.join("dated.txt")), some_time());
    assert_eq!(conn.mdtm("/dated.txt").unwrap(), some_time());
    let l = list(&mut conn, "/");
    let e = find(&l, "dated.txt").expect("listed");
    let listed = e.mtime.expect("listing has an mtime");
    if conn.features().mlst {
        assert_eq!(listed, some_time(), "MLSD modify fact");
    } else {
        // LIST shows only the day for old files.
        let d = listed
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            .abs_diff(981_173_106);
        assert!(d < 86_400, "LIST mtime {listed:?} is not 2001-02-03");
    }
    // A second call uses the method learnt on the first.
    let later = some_time() + Duration::from_secs(3600 * 24 * 400 + 7);
    conn.set_mtime("/dated.txt", later).unwrap();
    assert_eq!(conn.mdtm("/dated.txt").unwrap(), later);
    assert_eq!(disk_mtime(&srv.root.join("dated.txt")), later);
    // Content untouched (vsftpd's two-argument MDTM must not be taken as a path).
    assert_eq!(fs::read(srv.root.join("dated.txt")).unwrap(), b"dated\n");
    quit(conn);
}

#[test]
fn set_mtime_proftpd_mfmt() {
    set_mtime(ServerSpec::proftpd());
}

#[test]
fn set_mtime_vsftpd_mdtm() {
    set_mtime(ServerSpec::vsftpd());
}

#[test]
fn chmod_proftpd() {
    let srv = start(ServerSpec::proftpd());
    let mut conn = connect(&srv);
    upload(&mut conn, "/mode.txt", b"m");
    for mode in [0o640, 0o600, 0o755] {
        conn.chmod("/mode.txt", mode).unwrap();
        let on_disk = fs::metadata(srv.root.join("mode.txt"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777;
        assert_eq!(on_disk, mode, "mode on disk");
        let l = list(&mut conn, "/");
        assert_eq!(find(&l, "mode.txt").unwrap().mode, Some(mode), "MLSD mode");
    }
    let err = conn.chmod("/missing.txt", 0o644).unwrap_err();
    assert_eq!(err.reply_code(), Some(550), "{err}");
    quit(conn);
}

fn namespace_ops(spec: ServerSpec) {
    let srv = start(spec);
    let mut conn = connect(&srv);
    conn.mkdir("/new dir").unwrap();
    assert!(srv.root.join("new dir").is_dir());
    upload(&mut conn, "/new dir/a b.txt", b"first");
    let l = list(&mut conn, "/new dir");
    assert_eq!(names(&l), vec!["a b.txt"]);
    conn.rename("/new dir/a b.txt", "/new dir/c d.txt").unwrap();
    let l = list(&mut conn, "/new dir");
    assert_eq!(names(&l), vec!["c d.txt"]);
    assert_eq!(
        fs::read(srv.root.join("new dir/c d.txt")).unwrap(),
        b"first"
    );
    // Renaming across directories.
    conn.rename("/new dir/c d.txt", "/moved.txt").unwrap();
    assert_eq!(fs::read(srv.root.join("moved.txt")).unwrap(), b"first");
    // A non-empty directory cannot be removed.
    upload(&mut conn, "/new dir/keep", b"k");
    let err = conn.rmdir("/new dir").unwrap_err();
    assert!(err.reply_code().is_some_and(|c| c >= 500), "{err}");
    assert!(srv.root.join("new dir/keep").exists());
    conn.delete("/new dir/keep").unwrap();
    assert!(!srv.root.join("new dir/keep").exists());
    conn.rmdir("/new dir").unwrap();
    assert!(!srv.root.join("new dir").exists());
    conn.delete("/moved.txt").unwrap();
    assert!(list(&mut conn, "/").is_empty());
    // Errors for missing objects carry the server's reply.
    let err = conn.delete("/moved.txt").unwrap_err();
    assert_eq!(err.reply_code(), Some(550), "{err}");
    assert_eq!(err.errno(), libc::ENOENT, "{err}");
    let err = conn.rename("/nothing", "/x").unwrap_err();
    assert!(err.reply_code().is_some_and(|c| c >= 500), "{err}");
    assert!(conn.mlst("/moved.txt").unwrap_or(None).is_none());
    // The connection is still usable.
    conn.noop().unwrap();
    quit(conn);
}

#[test]
fn namespace_ops_proftpd() {
    namespace_ops(ServerSpec::proftpd());
}

#[test]
fn namespace_ops_vsftpd() {
    namespace_ops(ServerSpec::vsftpd());
}

#[test]
fn namespace_ops_pyftpdlib() {
    namespace_ops(ServerSpec::pyftpdlib());
}

fn spaces_listing(spec: ServerSpec, mlsd: bool) {
    let srv = start(spec);
    let files = [
        ("with space.txt", 3usize),
        ("two  spaces", 5),
        ("trailing ", 7),
        ("x y z", 11),
    ];
    for (name, len) in files {
        fs::write(srv.root.join(name), vec![b'a'; len]).unwrap();
    }
    fs::create_dir(srv.root.join("dir with space")).unwrap();
    fs::write(srv.root.join("dir with space/inner file"), b"inner").unwrap();
    let mut conn = connect(&srv);
    assert_eq!(conn.features().mlst, mlsd, "listing command");
    let l = list(&mut conn, "/");
    let mut want: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
    want.push("dir with space");
    want.sort_unstable();
    assert_eq!(names(&l), want);
    for (name, len) in files {
        let e = find(&l, name).unwrap();
        assert_eq!(
            (e.kind.clone(), e.size),
            (EntryKind::File, len as u64),
            "{name:?}"
        );
    }
    assert_eq!(find(&l, "dir with space").unwrap().kind, EntryKind::Dir);
    let inner = list(&mut conn, "/dir with space");
    assert_eq!(names(&inner), vec!["inner file"]);
    assert_eq!(
        download(&mut conn, "/dir with space/inner file", 0),
        b"inner"
    );
    assert_eq!(download(&mut conn, "/two  spaces", 0), b"aaaaa");
    quit(conn);
}

#[test]
fn names_with_spaces_vsftpd_list() {
    spaces_listing(ServerSpec::vsftpd(), false);
}

#[test]
fn names_with_spaces_proftpd_mlsd() {
    spaces_listing(ServerSpec::proftpd(), true);
}

// ---------------------------------------------------------------------------
// Through the user's configuration (URL + -o options)

#[test]
fn site_config_ccc_and_prot_options() {
    use ftpsfs::config::{OptionList, SiteConfig};
    let srv = start(ServerSpec::proftpd().tls_required(TlsRequired::AuthData));
    let pw = temp_file(&format!("{}\n", support::TEST_PASSWORD));
    let opts = OptionList::parse(&[format!(
        "cafile={},password_file={},ccc,max_tls=1.2",
        support::pki().ca_cert.display(),
        pw.path().display()
    )]);
    let site = SiteConfig::from_args(&srv.url(), &opts).unwrap();
    assert!(site.connect.ccc);
    let ctx = TlsContext::new(site.tls.clone()).unwrap();
    let mut conn = FtpConnection::connect(Arc::new(site.connect.clone()), ctx).unwrap();
    assert!(conn.control_is_clear());
    assert_eq!(conn.tls_info().version, "TLSv1.2");
    fs::write(srv.root.join("f"), b"via config").unwrap();
    assert_eq!(download(&mut conn, "/f", 0), b"via config");
    assert_eq!(conn.data_session_resumed(), Some(true));
    quit(conn);
}

// ---------------------------------------------------------------------------
// `ftpsfs check`

fn run_check(url: &str, opts: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ftpsfs"))
        .arg("check")
        .arg(url)
        .arg("-o")
        .arg(opts)
        .env_remove("FTPSFS_PASSWORD")
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run ftpsfs check")
}

fn check_ok(spec: ServerSpec) {
    let srv = start(spec);
    fs::write(srv.root.join("listed-file.txt"), b"x").unwrap();
    let pw = temp_file(support::TEST_PASSWORD);
    let out = run_check(
        &srv.url(),
        &format!(
            "cafile={},password_file={}",
            srv.ca_file().display(),
            pw.path().display()
        ),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "check failed ({}): {stderr}\n{stdout}\n--- server logs ---\n{}",
        out.status,
        srv.log_contents()
    );
    assert!(stdout.contains("session reuse:    yes"), "{stdout}");
    assert!(stdout.contains("tls:              TLSv1."), "{stdout}");
    let fp = support::sha256_fingerprint(&support::pki().server_cert);
    let sha_line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("sha256 "))
        .unwrap_or_else(|| panic!("no sha256 line: {stdout}"));
    assert_eq!(
        sha_line
            .trim_start()
            .trim_start_matches("sha256")
            .trim()
            .replace(':', "")
            .to_ascii_lowercase(),
        fp,
        "{stdout}"
    );
    assert!(stdout.contains("listed-file.txt"), "{stdout}");
    assert!(stdout.contains("result:           OK"), "{stdout}");
    assert!(stdout.contains("reply order:      kept"), "{stdout}");
    let mode = if srv.spec.implicit {
        "implicit FTPS"
    } else {
        "explicit FTPS"
    };
    assert!(stdout.contains(mode), "{stdout}");
    assert!(!stdout.contains(support::TEST_PASSWORD));
    assert!(!stderr.contains(support::TEST_PASSWORD));
}

#[test]
fn check_proftpd_explicit() {
    check_ok(ServerSpec::proftpd());
}

#[test]
fn check_proftpd_implicit() {
    check_ok(ServerSpec::proftpd().implicit(true));
}

#[test]
fn check_vsftpd_explicit() {
    check_ok(ServerSpec::vsftpd());
}

#[test]
fn check_vsftpd_implicit() {
    check_ok(ServerSpec::vsftpd().implicit(true));
}

#[test]
fn check_pyftpdlib_explicit() {
    check_ok(ServerSpec::pyftpdlib());
}

fn check_fails(srv: &Server, password: &str, want: &str) {
    let pw = temp_file(password);
    let out = run_check(
        &srv.url(),
        &format!(
            "cafile={},password_file={}",
            srv.ca_file().display(),
            pw.path().display()
        ),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check succeeded: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    // The first line says what failed; a refused certificate follows it with the
    // certificate's details and the ways on (see tests/cli_e2e.rs).
    if !stderr.contains("  sha256:   ") {
        assert_eq!(lines.len(), 1, "expected one stderr line, got {stderr:?}");
    }
    assert!(lines[0].contains(want), "{stderr}");
    assert!(!stderr.contains(password), "password leaked: {stderr}");
}

#[test]
fn check_expired_certificate_fails() {
    let srv = start(ServerSpec::proftpd().server_cert(CertChoice::Expired));
    check_fails(&srv, support::TEST_PASSWORD, "expired");
}

#[test]
fn check_wrong_password_fails() {
    let srv = start(ServerSpec::vsftpd());
    check_fails(&srv, "not-the-password-8812", "login incorrect");
}

#[test]
fn check_encrypted_key_without_password_never_prompts() {
    use std::os::unix::process::CommandExt;
    let p = support::pki();
    let pw = temp_file(support::TEST_PASSWORD);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ftpsfs"));
    cmd.arg("check")
        .arg("ftp://ftpsfs-test@127.0.0.1:9/")
        .arg("-o")
        .arg(format!(
            "cafile={},cert={},key={},password_file={}",
            p.ca_cert.display(),
            p.client_cert.display(),
            p.client_key_encrypted.display(),
            pw.path().display()
        ))
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null());
    // No controlling terminal: a prompt would go to stderr instead of blocking.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        !stderr.contains("pass phrase"),
        "OpenSSL prompted: {stderr:?}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(stderr.contains("key_password_file"), "{stderr}");
}

/// With the default min_tls=1.2, a control connection that used up its single-use
/// TLS 1.3 tickets on uploads (proftpd) is replaced once by a TLS 1.2 one, whose
/// session every later data connection resumes: many uploads, two logins.
#[test]
fn proftpd_upload_run_switches_to_tls12_once() {
    let srv = start(ServerSpec::proftpd());
    let mut conn = connect(&srv);
    let a = payload(10_000, 3);
    for i in 0..12 {
        upload(&mut conn, &format!("/u{i}.bin"), &a);
        assert_eq!(conn.data_session_resumed(), Some(true), "upload {i}");
        if i % 4 == 3 {
            assert_eq!(list(&mut conn, "/").len(), i + 1);
        }
    }
    assert_eq!(conn.tls_info().version, "TLSv1.2");
    quit(conn);
    assert_eq!(
        control_connections(&srv),
        2,
        "one switch, then no more logins"
    );
}

/// Stopping a download early (a seek in the mount) uses ABOR and keeps the control
/// connection: closing the data connection alone makes proftpd end the session.
fn abort_keeps_the_session(spec: ServerSpec) {
    use std::io::Read;
    let srv = start(spec);
    let mut conn = connect_with(&srv, tls12(), Protection::Private, false);
    let big = payload(8 << 20, 9);
    upload(&mut conn, "/big.bin", &big);
    for round in 0..3 {
        let mut dl = conn.retr("/big.bin", 1000 * round).expect("retr");
        let mut head = vec![0u8; 65536];
        dl.read_exact(&mut head).expect("read head");
        assert_eq!(
            head,
            big[1000 * round as usize..1000 * round as usize + 65536]
        );
        dl.abort().expect("abort");
        assert_eq!(
            list(&mut conn, "/").len(),
            1,
            "session usable after abort {round}"
        );
    }
    quit(conn);
    if matches!(srv.spec.kind, ServerKind::Proftpd | ServerKind::Vsftpd) {
        assert_eq!(
            control_connections(&srv),
            1,
            "one control connection throughout"
        );
    }
}

#[test]
fn abort_keeps_the_session_proftpd() {
    abort_keeps_the_session(ServerSpec::proftpd());
}

#[test]
fn abort_keeps_the_session_vsftpd() {
    abort_keeps_the_session(ServerSpec::vsftpd());
}

/// pure-ftpd reads the control connection once per chunk it sends and drops what
/// follows an ABOR in that read: a NOOP sent with the ABOR was never answered.
#[test]
fn abort_keeps_the_session_pure_ftpd() {
    abort_keeps_the_session(ServerSpec::pure_ftpd());
}

#[test]
fn abort_keeps_the_session_pyftpdlib() {
    abort_keeps_the_session(ServerSpec::pyftpdlib());
}

// ---------------------------------------------------------------------------
// Prepared data connections (EPSV + TCP connect ahead of the transfer command)

fn prepared_data(spec: ServerSpec, tls: TlsConfig) {
    let srv = start(spec);
    let mut conn = connect_with(&srv, tls, Protection::Private, false);
    let data = payload(200_000, 40);
    for i in 0..4 {
        conn.prepare_data().unwrap();
        assert!(conn.has_prepared_data());
        // Commands without a data connection leave the prepared one usable.
        conn.mkdir(&format!("/d{i}")).unwrap();
        upload(&mut conn, &format!("/d{i}/f"), &data);
        assert!(!conn.has_prepared_data(), "used by the upload");
        conn.prepare_data().unwrap();
        assert!(download(&mut conn, &format!("/d{i}/f"), 0) == data);
        conn.prepare_data().unwrap();
        assert_eq!(
            download(&mut conn, &format!("/d{i}/f"), 123_457),
            &data[123_457..]
        );
        conn.prepare_data().unwrap();
        assert_eq!(names(&list(&mut conn, &format!("/d{i}"))), vec!["f"]);
        assert_eq!(conn.data_session_resumed(), Some(true), "round {i}");
    }
    let stats = conn.data_stats();
    assert_eq!(stats.prepared_used, 16, "{stats:?}");
    assert_eq!(stats.opened_on_demand, 0, "{stats:?}");
    assert_eq!(stats.prepared_dropped, 0, "{stats:?}");

    // A refused command on a prepared connection returns the server's reply at
    // once (not after a timeout) and leaves the connection in step.
    conn.prepare_data().unwrap();
    let t = std::time::Instant::now();
    let err = match conn.retr("/no such file", 0) {
        Ok(_) => panic!("RETR of a missing file succeeded"),
        Err(e) => e,
    };
    assert_eq!(err.errno(), libc::ENOENT, "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    assert!(download(&mut conn, "/d0/f", 0) == data);
    // The same without a prepared connection (EPSV pipelined with the command).
    let err = match conn.retr("/no such file", 0) {
        Ok(_) => panic!("RETR of a missing file succeeded"),
        Err(e) => e,
    };
    assert_eq!(err.errno(), libc::ENOENT, "{err}");
    assert!(download(&mut conn, "/d0/f", 0) == data);
    conn.noop().unwrap();
    quit(conn);
}

#[test]
fn prepared_data_proftpd_tls12() {
    prepared_data(ServerSpec::proftpd(), tls12());
}

#[test]
fn prepared_data_proftpd_tls13() {
    // Single-use TLS 1.3 tickets: prepare_data renews the control connection when
    // they run out, before the transfer that needs one.
    prepared_data(ServerSpec::proftpd(), tls13());
}

#[test]
fn prepared_data_vsftpd() {
    prepared_data(ServerSpec::vsftpd(), trusting_ca());
}

#[test]
fn prepared_data_pyftpdlib() {
    prepared_data(ServerSpec::pyftpdlib(), trusting_ca());
}

/// A prepared connection the server no longer listens for (a second EPSV closed
/// its listener) is noticed and replaced: the transfer still succeeds.
fn stale_prepared_data(spec: ServerSpec) {
    let srv = start(spec);
    let mut conn = connect(&srv);
    let data = payload(50_000, 41);
    upload(&mut conn, "/f", &data);
    conn.prepare_data().unwrap();
    let r = conn.command(&FtpCommand::epsv()).unwrap();
    assert_eq!(r.code, 229);
    std::thread::sleep(Duration::from_millis(100));
    assert!(download(&mut conn, "/f", 0) == data);
    let stats = conn.data_stats();
    assert_eq!(stats.prepared_dropped, 1, "{stats:?}");
    assert!(download(&mut conn, "/f", 0) == data);
    quit(conn);
}

#[test]
fn stale_prepared_data_proftpd() {
    stale_prepared_data(ServerSpec::proftpd());
}

#[test]
fn stale_prepared_data_vsftpd() {
    stale_prepared_data(ServerSpec::vsftpd());
}

/// The mount's pool opens the next data connection of a connection left idle.
#[test]
fn pool_prepares_data_connections_of_idle_connections() {
    let srv = start(ServerSpec::proftpd());
    let ctx = TlsContext::new(trusting_ca()).unwrap();
    // Loopback: prepare whatever the round trip.
    let pool = Pool::new(
        options(&srv, Protection::Private, false),
        ctx,
        2,
        Some(Duration::ZERO),
    );
    let data = payload(10_000, 50);
    {
        let mut c = pool.get(Use::Transfer).unwrap();
        upload(&mut c, "/p", &data);
        assert!(!c.has_prepared_data());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        std::thread::sleep(Duration::from_millis(30));
        let c = pool.get(Use::Transfer).unwrap();
        if c.has_prepared_data() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the idle connection never got a prepared data connection"
        );
    }
    let mut c = pool.get(Use::Transfer).unwrap();
    let before = c.data_stats();
    assert!(download(&mut c, "/p", 0) == data);
    assert_eq!(c.data_stats().prepared_used, before.prepared_used + 1);
    drop(c);
    pool.close_all();
}

// ---------------------------------------------------------------------------
// A server that answers pipelined commands out of order (issue 14, item 1)

/// pyftpdlib answering its storage commands 50 ms late, like an asynchronous server:
/// an EPSV pipelined behind MKD, DELE or RNTO is answered first.
fn reordering() -> Server {
    start(ServerSpec::pyftpdlib().reorder_replies(true))
}

#[test]
fn replies_out_of_order_are_matched_to_their_commands() {
    let srv = reordering();
    fs::write(srv.root.join("a.txt"), b"one\n").unwrap();
    fs::write(srv.root.join("gone.txt"), b"x").unwrap();
    let opts = options(&srv, Protection::Private, false);
    let tls = TlsContext::new(trusting_ca()).unwrap();
    let mut c = FtpConnection::connect(opts.clone(), tls.clone()).unwrap();
    assert!(opts.server.pipelining(), "nothing seen yet");
    // MKD + EPSV: the 229 comes first, then the 257; the directory was made.
    c.mkdir("/p")
        .unwrap_or_else(|e| panic!("mkdir: {e}\n{}", srv.log_contents()));
    assert!(srv.root.join("p").is_dir());
    assert!(!opts.server.pipelining(), "reordering must be noticed");
    // From now on one command at a time: everything answers truthfully.
    c.rename("/a.txt", "/p/b.txt").unwrap();
    assert_eq!(fs::read(srv.root.join("p/b.txt")).unwrap(), b"one\n");
    c.delete("/gone.txt").unwrap();
    assert!(!srv.root.join("gone.txt").exists());
    let e = c.mkdir("/p").unwrap_err();
    assert_eq!(e.errno(), libc::EEXIST, "{e}");
    let e = c.delete("/gone.txt").unwrap_err();
    assert_eq!(e.errno(), libc::ENOENT, "{e}");
    let e = c.rename("/nothing", "/p/x").unwrap_err();
    assert_eq!(e.errno(), libc::ENOENT, "{e}");
    // Transfers and listings stay in step.
    let mut up = c.stor("/p/c.txt", false).unwrap();
    up.write_all(b"two\n").unwrap();
    up.finish().unwrap();
    let mut up = c.stor("/p/c.txt", true).unwrap();
    up.write_all(b"three\n").unwrap();
    up.finish().unwrap();
    assert_eq!(fs::read(srv.root.join("p/c.txt")).unwrap(), b"two\nthree\n");
    let mut names: Vec<String> = c
        .list_dir("/p")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    names.sort();
    assert_eq!(names, ["b.txt", "c.txt"]);
    assert_eq!(c.size("/p/c.txt").unwrap(), 10);
    c.noop().unwrap();
    assert!(!c.is_broken());
}

#[test]
fn each_pipelined_command_gets_its_own_reply_on_first_contact() {
    // Every kind of batch as the first command of a connection to a reordering server.
    let srv = reordering();
    fs::write(srv.root.join("f"), b"x").unwrap();
    let tls = TlsContext::new(trusting_ca()).unwrap();
    type Op = fn(&mut FtpConnection) -> Result<(), FtpError>;
    let ops: [(&str, Op); 4] = [
        ("rename", |c| c.rename("/f", "/g")),
        ("delete", |c| c.delete("/g")),
        ("mkdir", |c| c.mkdir("/d")),
        ("rmdir", |c| c.rmdir("/d")),
    ];
    for (what, op) in ops {
        let opts = options(&srv, Protection::Private, false);
        let mut c = FtpConnection::connect(opts.clone(), tls.clone()).unwrap();
        op(&mut c).unwrap_or_else(|e| panic!("{what}: {e}\n{}", srv.log_contents()));
        assert!(!opts.server.pipelining(), "{what}: reordering not noticed");
        c.noop()
            .unwrap_or_else(|e| panic!("{what}: out of step afterwards: {e}"));
    }
    assert!(!srv.root.join("f").exists() && !srv.root.join("g").exists());
    assert!(!srv.root.join("d").exists());
    // A refused command whose reply came after the EPSV's: its own error.
    let opts = options(&srv, Protection::Private, false);
    let mut c = FtpConnection::connect(opts, tls).unwrap();
    let e = c.delete("/missing").unwrap_err();
    assert_eq!(e.errno(), libc::ENOENT, "{e}");
    c.noop().unwrap();
}

#[test]
fn servers_in_order_keep_pipelining() {
    let srv = start(ServerSpec::pyftpdlib());
    let opts = options(&srv, Protection::Private, false);
    let tls = TlsContext::new(trusting_ca()).unwrap();
    let mut c = FtpConnection::connect(opts.clone(), tls).unwrap();
    c.mkdir("/p").unwrap();
    c.rename("/p", "/q").unwrap();
    c.rmdir("/q").unwrap();
    assert!(opts.server.pipelining());
}

#[test]
fn check_reports_reply_order() {
    let srv = reordering();
    let pw = temp_file(support::TEST_PASSWORD);
    let out = run_check(
        &srv.url(),
        &format!(
            "cafile={},password_file={}",
            srv.ca_file().display(),
            pw.path().display()
        ),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("reply order:      NOT kept"), "{stdout}");
    assert!(stdout.contains("result:           OK"), "{stdout}");
}

// ---------------------------------------------------------------------------
// Long paths (issue 14, item 3): no command line over MAX_COMMAND_LINE bytes

fn long_dir(n: usize) -> String {
    (0..n)
        .map(|i| format!("/L{i:02}{}", "y".repeat(197)))
        .collect::<String>()
}

fn long_paths_client(spec: ServerSpec) {
    let srv = start(spec);
    let mut c = connect(&srv);
    let dir = long_dir(17);
    // Directory chain one by one, as a filesystem makes it.
    let mut at = String::new();
    for comp in dir.split('/').skip(1) {
        at = format!("{at}/{comp}");
        c.mkdir(&at)
            .unwrap_or_else(|e| panic!("mkdir {}: {e}", at.len()));
    }
    let local = srv.root.join(&dir[1..]);
    assert!(local.is_dir());
    // Deeper than the server's own file system allows (proftpd, pyftpdlib: its real
    // path passes PATH_MAX; vsftpd works relative to its current directory and
    // goes on): refused at once, as ENAMETOOLONG.
    let t0 = std::time::Instant::now();
    let mut deeper = dir.clone();
    let mut refused = None;
    while deeper.len() < 6000 {
        deeper = format!("{deeper}/M{}", "w".repeat(197));
        if let Err(e) = c.mkdir(&deeper) {
            refused = Some(e);
            break;
        }
    }
    match (srv.spec.kind, refused) {
        (ServerKind::Vsftpd, None) => {}
        (_, Some(e)) => assert_eq!(e.errno(), libc::ENAMETOOLONG, "{e}"),
        (k, None) => panic!("{k:?} took a path of {} bytes", deeper.len()),
    }
    assert!(t0.elapsed() < Duration::from_secs(5));
    if c.is_broken() {
        // pure-ftpd ends the session over a path too long (421).
        assert_eq!(srv.spec.kind, ServerKind::PureFtpd);
        c = connect(&srv);
    }
    // Whole paths still work on this connection, its directory deep as it was
    // (proftpd refuses even absolute paths from a directory near its PATH_MAX).
    c.mkdir("/after-deep").unwrap();
    c.rmdir("/after-deep").unwrap();
    fs::remove_dir_all(local.join(deeper[dir.len() + 1..].split('/').next().unwrap())).unwrap();
    let file = format!("{dir}/f.txt");
    let mut up = c.stor(&file, false).unwrap();
    up.write_all(b"deep\n").unwrap();
    up.finish().unwrap();
    assert_eq!(fs::read(local.join("f.txt")).unwrap(), b"deep\n");
    assert_eq!(c.size(&file).unwrap(), 5);
    let names: Vec<String> = c
        .list_dir(&dir)
        .unwrap_or_else(|e| panic!("list: {e}\n{}", srv.log_contents()))
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["f.txt"]);
    if c.features().mlst {
        let e = c.mlst(&file).unwrap().expect("MLST finds the file");
        assert_eq!(e.size, 5);
    }
    // Absolute short paths still work after the changes of directory.
    fs::write(srv.root.join("top.txt"), b"top").unwrap();
    assert_eq!(c.size("/top.txt").unwrap(), 3);
    let mut dl = c.retr(&file, 0).unwrap();
    let mut got = Vec::new();
    dl.read_to_end(&mut got).unwrap();
    dl.finish().unwrap();
    assert_eq!(got, b"deep\n");
    // Rename within the directory, to the top and back.
    let g = format!("{dir}/g.txt");
    c.rename(&file, &g).unwrap();
    // On a fresh connection too (its directory is not the file's yet).
    let mut c2 = connect(&srv);
    c2.rename(&g, "/up.txt").unwrap();
    assert!(srv.root.join("up.txt").is_file());
    let mut c3 = connect(&srv);
    c3.rename("/up.txt", &file).unwrap();
    // Two long paths in one tree: named from their common directory.
    let sub = format!("{dir}/{}", "s".repeat(200));
    c3.mkdir(&sub).unwrap();
    let moved = format!("{sub}/f.txt");
    connect(&srv).rename(&file, &moved).unwrap();
    assert!(local.join("s".repeat(200)).join("f.txt").is_file());
    connect(&srv).rename(&moved, &file).unwrap();
    connect(&srv).rmdir(&sub).unwrap();
    c.delete(&file).unwrap();
    assert!(!local.join("f.txt").exists());
    // Errors keep their meaning.
    let e = c.delete(&file).unwrap_err();
    assert_eq!(e.errno(), libc::ENOENT, "{e}");
    let e = c
        .size(&format!("{dir}/nodir/{}/x", "z".repeat(400)))
        .unwrap_err();
    assert_eq!(e.errno(), libc::ENOENT, "{e}");
    // A single component too long for any command line: at once, without a word.
    let e = c.mkdir(&format!("/{}", "q".repeat(600))).unwrap_err();
    assert_eq!(e.errno(), libc::ENAMETOOLONG, "{e}");
    for comp in dir.split('/').skip(1).collect::<Vec<_>>().iter().rev() {
        let _ = comp;
        c.rmdir(&at).unwrap();
        at.truncate(at.rfind('/').unwrap());
    }
    assert_eq!(
        fs::read_dir(&srv.root).unwrap().count(),
        1,
        "only top.txt left"
    );
    c.noop().unwrap();
}

#[test]
fn long_paths_client_proftpd() {
    long_paths_client(ServerSpec::proftpd());
}

#[test]
fn long_paths_client_vsftpd() {
    long_paths_client(ServerSpec::vsftpd());
}

#[test]
fn long_paths_client_pyftpdlib() {
    long_paths_client(ServerSpec::pyftpdlib());
}

#[test]
fn long_paths_client_pure_ftpd() {
    long_paths_client(ServerSpec::pure_ftpd());
}

/// pyftpdlib with client certificates: curl's uploads there sometimes lose their
/// tail (harness_selftest); ours must not (the server's file is compared).
#[test]
fn client_cert_pyftpdlib_uploads_arrive_whole() {
    let srv = start(ServerSpec::pyftpdlib().client_cert_required(true));
    let mut conn = connect_with(
        &srv,
        with_client_cert(trusting_ca(), false),
        Protection::Private,
        false,
    );
    for i in 0..5u8 {
        let data = payload(400_000, 50 + u64::from(i));
        upload(&mut conn, "/cert.bin", &data);
        assert!(
            fs::read(srv.root.join("cert.bin")).unwrap() == data,
            "upload {i}: the server's file differs"
        );
        assert!(download(&mut conn, "/cert.bin", 0) == data);
    }
    quit(conn);
}
