//! Self-test of the server harness in tests/support: every server kind and mode is
//! started and checked with the `curl` CLI, an FTPS client independent of ftpsfs.

mod support;

use std::fs;
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use support::{CertChoice, Server, ServerKind, ServerSpec, TlsProtocol};

fn scratch_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("selftest-")
        .tempdir_in(support::process_dir())
        .unwrap()
}

/// Base URL for curl: `ftp://` (explicit/plain) or `ftps://` (implicit).
fn base_url(srv: &Server) -> String {
    let scheme = if srv.spec.implicit { "ftps" } else { "ftp" };
    format!("{scheme}://{}:{}/", srv.host, srv.port)
}

struct CurlOpts<'a> {
    client_cert: bool,
    ca: &'a Path,
    extra: &'a [&'a str],
}

impl Default for CurlOpts<'_> {
    fn default() -> Self {
        CurlOpts {
            client_cert: false,
            ca: &support::pki().ca_cert,
            extra: &[],
        }
    }
}

/// curl 7.88 closes TLS 1.3 upload data connections without close_notify often enough
/// that vsftpd answers 426 (see FIELD-NOTES); over TLS 1.2 its uploads are reliable.
fn curl_workarounds(srv: &Server, opts: &CurlOpts) -> &'static [&'static str] {
    let pinned = opts.extra.iter().any(|a| a.starts_with("--tls"));
    if srv.spec.kind == ServerKind::Vsftpd && srv.spec.tls_protocol.is_none() && !pinned {
        &["--tls-max", "1.2"]
    } else {
        &[]
    }
}

fn curl(srv: &Server, opts: &CurlOpts, args: &[&str]) -> Output {
    let p = support::pki();
    let mut cmd = Command::new("curl");
    cmd.args(curl_workarounds(srv, opts));
    // --ssl-reqd would override --ftp-ssl-control (TLS on the control connection only).
    if !opts.extra.contains(&"--ftp-ssl-control") {
        cmd.arg("--ssl-reqd");
    }
    cmd.args(["-sS", "--max-time", "30", "--cacert"])
        .arg(opts.ca)
        .arg("-u")
        .arg(format!("{}:{}", srv.user, srv.password));
    if opts.client_cert {
        cmd.arg("--cert")
            .arg(&p.client_cert)
            .arg("--key")
            .arg(&p.client_key);
    }
    cmd.args(opts.extra).args(args);
    cmd.output().expect("run curl")
}

fn check_ok(what: &str, out: &Output, srv: &Server) {
    assert!(
        out.status.success(),
        "curl {what} failed ({}): {}\n--- server logs ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        srv.log_contents()
    );
}

fn payload() -> Vec<u8> {
    (0..200_000u32)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 7)) as u8)
        .collect()
}

/// Upload, list, download back and compare; check the file landed under `srv.root`.
fn round_trip(srv: &Server, opts: &CurlOpts) {
    let dir = scratch_dir();
    let data = payload();
    let local = dir.path().join("local.bin");
    fs::write(&local, &data).unwrap();
    let base = base_url(srv);

    let out = curl(
        srv,
        opts,
        &["-T", local.to_str().unwrap(), &format!("{base}upload.bin")],
    );
    check_ok("upload", &out, srv);

    let out = curl(srv, opts, &[&base]);
    check_ok("list", &out, srv);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("upload.bin"),
        "listing lacks upload.bin: {listing}"
    );

    let back = dir.path().join("back.bin");
    let out = curl(
        srv,
        opts,
        &["-o", back.to_str().unwrap(), &format!("{base}upload.bin")],
    );
    check_ok("download", &out, srv);
    assert!(fs::read(&back).unwrap() == data, "downloaded data differs");

    let on_disk = srv.root.join("upload.bin");
    assert!(
        fs::read(&on_disk).unwrap() == data,
        "file under root differs"
    );
    let user = support::test_user();
    assert_eq!(
        fs::metadata(&on_disk).unwrap().uid(),
        user.uid,
        "uploaded file owner"
    );

    // A file put into root directly is visible at the FTP root.
    fs::write(srv.root.join("seeded.txt"), b"seeded\n").unwrap();
    let out = curl(srv, opts, &[&format!("{base}seeded.txt")]);
    check_ok("download seeded", &out, srv);
    assert_eq!(out.stdout, b"seeded\n");
}

fn started(spec: ServerSpec) -> Server {
    let srv = support::start(spec);
    eprintln!(
        "started {} implicit={} on port {} in {:?} ({})",
        srv.spec.kind.name(),
        srv.spec.implicit,
        srv.port,
        srv.startup_time,
        srv.url()
    );
    srv
}

#[test]
fn proftpd_explicit_curl_round_trip() {
    let srv = started(ServerSpec::proftpd());
    assert_eq!(
        srv.url(),
        format!("ftp://ftpsfs-test@127.0.0.1:{}/", srv.port)
    );
    round_trip(&srv, &CurlOpts::default());
}

#[test]
fn proftpd_implicit_curl_round_trip() {
    let srv = started(ServerSpec::proftpd().implicit(true));
    assert!(srv.url().starts_with("ftps://"));
    round_trip(&srv, &CurlOpts::default());
}

/// With a client certificate required, curl gets through with one and not without.
fn client_cert_required(spec: ServerSpec) {
    let kind = spec.kind.name();
    let srv = started(spec.client_cert_required(true));
    round_trip(
        &srv,
        &CurlOpts {
            client_cert: true,
            ..Default::default()
        },
    );
    let out = curl(&srv, &CurlOpts::default(), &[&base_url(&srv)]);
    assert!(
        !out.status.success(),
        "{kind} accepted a client without certificate"
    );
}

#[test]
fn proftpd_client_cert_required() {
    client_cert_required(ServerSpec::proftpd());
}

#[test]
fn vsftpd_explicit_curl_round_trip() {
    let srv = started(ServerSpec::vsftpd());
    round_trip(&srv, &CurlOpts::default());
}

#[test]
fn vsftpd_implicit_curl_round_trip() {
    let srv = started(ServerSpec::vsftpd().implicit(true));
    round_trip(&srv, &CurlOpts::default());
}

#[test]
fn vsftpd_client_cert_required() {
    client_cert_required(ServerSpec::vsftpd());
}

#[test]
fn pyftpdlib_explicit_curl_round_trip() {
    let srv = started(ServerSpec::pyftpdlib());
    round_trip(&srv, &CurlOpts::default());
}

#[test]
fn pyftpdlib_client_cert_required() {
    client_cert_required(ServerSpec::pyftpdlib());
}

#[test]
fn tls_disabled_refuses_auth_tls() {
    for spec in [
        ServerSpec::proftpd(),
        ServerSpec::vsftpd(),
        ServerSpec::pyftpdlib(),
    ] {
        let srv = started(spec.tls_enabled(false));
        let out = curl(&srv, &CurlOpts::default(), &[&base_url(&srv)]);
        assert!(
            !out.status.success(),
            "{}: curl --ssl-reqd succeeded against a TLS-less server",
            srv.spec.kind.name()
        );
        // ... while plain FTP works.
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "30", "-u"])
            .arg(format!("{}:{}", srv.user, srv.password))
            .arg(base_url(&srv))
            .output()
            .unwrap();
        check_ok("plain list", &out, &srv);
    }
}

#[test]
fn tls_protocol_pinning() {
    for spec in [
        ServerSpec::proftpd(),
        ServerSpec::vsftpd(),
        ServerSpec::pyftpdlib(),
    ] {
        let srv12 = started(spec.clone().tls_protocol(TlsProtocol::Tls12Only));
        let only13 = CurlOpts {
            extra: &["--tlsv1.3"],
            ..Default::default()
        };
        let max12 = CurlOpts {
            extra: &["--tls-max", "1.2"],
            ..Default::default()
        };
        let name = srv12.spec.kind.name();
        let out = curl(&srv12, &only13, &[&base_url(&srv12)]);
        assert!(!out.status.success(), "{name} Tls12Only accepted TLS 1.3");
        let out = curl(&srv12, &max12, &[&base_url(&srv12)]);
        check_ok("list over TLS 1.2", &out, &srv12);

        let srv13 = started(spec.tls_protocol(TlsProtocol::Tls13Only));
        let out = curl(&srv13, &max12, &[&base_url(&srv13)]);
        assert!(!out.status.success(), "{name} Tls13Only accepted TLS 1.2");
        let out = curl(&srv13, &only13, &[&base_url(&srv13)]);
        check_ok("list over TLS 1.3", &out, &srv13);
    }
}

#[test]
fn bad_server_certs_are_rejected_by_curl() {
    for choice in [
        CertChoice::Expired,
        CertChoice::NotYetValid,
        CertChoice::WrongHost,
        CertChoice::Untrusted,
    ] {
        let srv = started(ServerSpec::proftpd().server_cert(choice));
        let out = curl(&srv, &CurlOpts::default(), &[&base_url(&srv)]);
        assert!(
            !out.status.success(),
            "curl accepted {choice:?} certificate"
        );
        // Without verification the server itself works.
        let out = curl(
            &srv,
            &CurlOpts {
                extra: &["--insecure"],
                ..Default::default()
            },
            &[&base_url(&srv)],
        );
        check_ok("insecure list", &out, &srv);
    }
}

#[test]
fn pki_verification() {
    use openssl::stack::Stack;
    use openssl::x509::store::X509StoreBuilder;
    use openssl::x509::{X509StoreContext, X509};

    let p = support::pki();
    let load = |path: &PathBuf| X509::from_pem(&fs::read(path).unwrap()).unwrap();
    let mut sb = X509StoreBuilder::new().unwrap();
    sb.add_cert(load(&p.ca_cert)).unwrap();
    let store = sb.build();
    let verify = |path: &PathBuf| {
        let cert = load(path);
        let chain = Stack::new().unwrap();
        let mut ctx = X509StoreContext::new().unwrap();
        ctx.init(&store, &cert, &chain, |c| {
            let ok = c.verify_cert()?;
            Ok((ok, c.error()))
        })
        .unwrap()
    };
    assert!(
        verify(&p.server_cert).0,
        "good cert: {:?}",
        verify(&p.server_cert).1
    );
    assert!(
        verify(&p.wronghost_cert).0,
        "wronghost chain is valid (only the name is wrong)"
    );
    assert!(verify(&p.client_cert).0, "client cert");
    assert!(!verify(&p.untrusted_cert).0, "untrusted cert verified");
    assert!(!verify(&p.expired_cert).0, "expired cert verified");
    assert!(!verify(&p.notyet_cert).0, "not-yet-valid cert verified");

    // The CLI agrees.
    let out = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(&p.ca_cert)
        .arg(&p.server_cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(&p.ca_cert)
        .arg(&p.untrusted_cert)
        .output()
        .unwrap();
    assert!(!out.status.success());

    // Fingerprint matches `openssl x509 -fingerprint -sha256`.
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(&p.server_cert)
        .output()
        .unwrap();
    let cli = String::from_utf8(out.stdout).unwrap();
    let cli = cli
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_lowercase();
    assert_eq!(support::sha256_fingerprint(&p.server_cert), cli);
    assert_eq!(cli.len(), 64);

    // The encrypted key decrypts with the passphrase from the password file to the same key.
    let pass = fs::read_to_string(&p.client_key_password_file).unwrap();
    assert!(pass.ends_with('\n'));
    let enc = openssl::pkey::PKey::private_key_from_pem_passphrase(
        &fs::read(&p.client_key_encrypted).unwrap(),
        pass.trim_end().as_bytes(),
    )
    .unwrap();
    let plain =
        openssl::pkey::PKey::private_key_from_pem(&fs::read(&p.client_key).unwrap()).unwrap();
    assert!(enc.public_eq(&plain));
    let wrong = openssl::pkey::PKey::private_key_from_pem_passphrase(
        &fs::read(&p.client_key_encrypted).unwrap(),
        b"wrong passphrase",
    );
    assert!(wrong.is_err());
}

#[test]
fn drop_kills_server_and_cleans_up() {
    let srv = started(ServerSpec::proftpd());
    let port = srv.port;
    let (root, conf) = (srv.root.clone(), srv.conf_dir.clone());
    // Keep a session process alive (proftpd forks one per connection).
    let _session = TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    drop(srv);
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port still open after drop"
    );
    assert!(!root.exists() && !conf.exists(), "temp dirs left behind");
}

#[test]
fn tls_required_modes() {
    use support::TlsRequired;
    let clear_data = CurlOpts {
        extra: &["--ftp-ssl-control"], // TLS on control only: PROT C
        ..Default::default()
    };
    let ccc = CurlOpts {
        extra: &["--ftp-ssl-ccc"],
        ..Default::default()
    };
    // proftpd: `on` refuses PROT C and CCC, `ctrl` accepts PROT C, `auth+data` accepts CCC.
    let on = started(ServerSpec::proftpd());
    // proftpd answers PROT C with 534 but curl goes on, and the clear data connection then
    // hangs until proftpd gives up on its TLS handshake: don't wait for that.
    let clear_data_quick = CurlOpts {
        extra: &["--ftp-ssl-control", "--max-time", "3"],
        ..Default::default()
    };
    let out = curl(&on, &clear_data_quick, &[&base_url(&on)]);
    assert!(!out.status.success(), "TLSRequired on accepted PROT C");
    let ctrl = started(ServerSpec::proftpd().tls_required(TlsRequired::Ctrl));
    check_ok(
        "PROT C list",
        &curl(&ctrl, &clear_data, &[&base_url(&ctrl)]),
        &ctrl,
    );
    let auth_data = started(ServerSpec::proftpd().tls_required(TlsRequired::AuthData));
    check_ok(
        "CCC list",
        &curl(&auth_data, &ccc, &[&base_url(&auth_data)]),
        &auth_data,
    );
    assert!(
        auth_data.log_contents().contains("CCC"),
        "CCC was not sent/accepted:\n{}",
        auth_data.log_contents()
    );

    for spec in [ServerSpec::vsftpd(), ServerSpec::pyftpdlib()] {
        let on = started(spec.clone());
        let out = curl(&on, &clear_data, &[&base_url(&on)]);
        assert!(!out.status.success(), "{:?} On accepted PROT C", spec.kind);
        let ctrl = started(spec.tls_required(TlsRequired::Ctrl));
        check_ok(
            "PROT C list",
            &curl(&ctrl, &clear_data, &[&base_url(&ctrl)]),
            &ctrl,
        );
    }
}

#[test]
fn session_reuse_requirement() {
    // curl --no-sessionid makes every data connection a fresh TLS session.
    let no_reuse = CurlOpts {
        extra: &["--no-sessionid"],
        ..Default::default()
    };
    for spec in [ServerSpec::proftpd(), ServerSpec::vsftpd()] {
        let strict = started(spec.clone());
        let out = curl(&strict, &no_reuse, &[&base_url(&strict)]);
        assert!(
            !out.status.success(),
            "{:?} accepted a data connection without session reuse",
            spec.kind
        );
        let lax = started(spec.session_reuse_required(false));
        check_ok(
            "list without reuse",
            &curl(&lax, &no_reuse, &[&base_url(&lax)]),
            &lax,
        );
    }
}
