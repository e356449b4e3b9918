//! Test PKI: a CA, server certificates in several states of (in)validity and a
//! client certificate, generated once per process with the `openssl` crate.
//!
//! The OpenSSL 3.0 command line cannot make an already expired certificate, so
//! everything is built with `X509Builder` here.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::symm::Cipher;
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509Builder, X509NameBuilder, X509};

/// Passphrase of [`Pki::client_key_encrypted`] (also in [`Pki::client_key_password_file`]
/// followed by a newline).
pub const CLIENT_KEY_PASSPHRASE: &str = "ftpsfs-client-key-pass";

/// Paths of the generated PEM files (all readable by everyone; the directory is 0755).
#[derive(Debug, Clone)]
pub struct Pki {
    /// Directory holding every file below.
    pub dir: PathBuf,
    /// The test CA that clients should trust.
    pub ca_cert: PathBuf,
    /// Valid now, signed by the CA, SAN DNS:localhost, IP:127.0.0.1, IP:::1.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// Signed by the CA, localhost SANs, notAfter in the past.
    pub expired_cert: PathBuf,
    pub expired_key: PathBuf,
    /// Signed by the CA, localhost SANs, notBefore in the future.
    pub notyet_cert: PathBuf,
    pub notyet_key: PathBuf,
    /// Signed by the CA, valid now, SAN only DNS:wrong.example and IP:10.9.9.9.
    pub wronghost_cert: PathBuf,
    pub wronghost_key: PathBuf,
    /// Valid now, localhost SANs, but signed by a second CA that nobody trusts.
    pub untrusted_cert: PathBuf,
    pub untrusted_key: PathBuf,
    /// The second (untrusted) CA's certificate.
    pub untrusted_ca_cert: PathBuf,
    /// Client certificate (EKU clientAuth), signed by the CA.
    pub client_cert: PathBuf,
    /// Its key, unencrypted PEM.
    pub client_key: PathBuf,
    /// The same key as encrypted PKCS#8 PEM (passphrase [`CLIENT_KEY_PASSPHRASE`]).
    pub client_key_encrypted: PathBuf,
    /// File containing [`CLIENT_KEY_PASSPHRASE`] and a trailing newline.
    pub client_key_password_file: PathBuf,
}

static PKI: OnceLock<Pki> = OnceLock::new();

/// The process-wide test PKI (generated on first use).
pub fn pki() -> &'static Pki {
    PKI.get_or_init(|| {
        let dir = super::process_dir().join("pki");
        fs::create_dir_all(&dir).expect("create pki dir");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod pki dir");
        generate(&dir)
    })
}

/// SHA-256 fingerprint of the (first) certificate in a PEM file: lowercase hex, no colons.
pub fn sha256_fingerprint(cert_path: &Path) -> String {
    let pem = fs::read(cert_path).unwrap_or_else(|e| panic!("read {}: {e}", cert_path.display()));
    let cert = X509::from_pem(&pem).expect("parse certificate PEM");
    let digest = cert.digest(MessageDigest::sha256()).expect("digest");
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

const DAY: i64 = 24 * 3600;

struct Issuer<'a> {
    cert: &'a X509,
    key: &'a PKey<Private>,
}

struct CertParams<'a> {
    cn: &'a str,
    dns: &'a [&'a str],
    ips: &'a [&'a str],
    not_before: i64,
    not_after: i64,
    is_ca: bool,
    client: bool,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn new_key() -> PKey<Private> {
    PKey::from_rsa(Rsa::generate(2048).expect("rsa keygen")).expect("pkey")
}

fn serial() -> Asn1Integer {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(1);
    let n = u64::from(N.fetch_add(1, Ordering::Relaxed));
    let v = (now() as u64) << 20 | u64::from(std::process::id() & 0xfff) << 8 | n;
    BigNum::from_dec_str(&v.to_string())
        .and_then(|b| b.to_asn1_integer())
        .expect("serial")
}

fn build_cert(p: &CertParams, key: &PKey<Private>, issuer: Option<&Issuer>) -> X509 {
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("O", "ftpsfs test").unwrap();
    name.append_entry_by_text("CN", p.cn).unwrap();
    let name = name.build();

    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&serial()).unwrap();
    b.set_subject_name(&name).unwrap();
    match issuer {
        Some(i) => b.set_issuer_name(i.cert.subject_name()).unwrap(),
        None => b.set_issuer_name(&name).unwrap(),
    }
    b.set_pubkey(key).unwrap();
    b.set_not_before(&Asn1Time::from_unix(p.not_before).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::from_unix(p.not_after).unwrap())
        .unwrap();

    if p.is_ca {
        b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
        b.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()
                .unwrap(),
        )
        .unwrap();
    } else {
        b.append_extension(BasicConstraints::new().critical().build().unwrap())
            .unwrap();
        b.append_extension(
            KeyUsage::new()
                .critical()
                .digital_signature()
                .key_encipherment()
                .build()
                .unwrap(),
        )
        .unwrap();
        let mut eku = ExtendedKeyUsage::new();
        if p.client {
            eku.client_auth();
        } else {
            eku.server_auth();
        }
        b.append_extension(eku.build().unwrap()).unwrap();
    }

    let ski = SubjectKeyIdentifier::new()
        .build(&b.x509v3_context(issuer.map(|i| &**i.cert), None))
        .unwrap();
    b.append_extension(ski).unwrap();
    if issuer.is_some() {
        let aki = AuthorityKeyIdentifier::new()
            .keyid(false)
            .build(&b.x509v3_context(issuer.map(|i| &**i.cert), None))
            .unwrap();
        b.append_extension(aki).unwrap();
    }
    if !p.dns.is_empty() || !p.ips.is_empty() {
        let mut san = SubjectAlternativeName::new();
        for d in p.dns {
            san.dns(d);
        }
        for ip in p.ips {
            san.ip(ip);
        }
        let san = san
            .build(&b.x509v3_context(issuer.map(|i| &**i.cert), None))
            .unwrap();
        b.append_extension(san).unwrap();
    }

    let sign_key = issuer.map(|i| i.key).unwrap_or(key);
    b.sign(sign_key, MessageDigest::sha256()).unwrap();
    b.build()
}

fn write_file(path: &Path, data: &[u8]) {
    fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).expect("chmod 0644");
}

fn write_pair(dir: &Path, name: &str, cert: &X509, key: &PKey<Private>) -> (PathBuf, PathBuf) {
    let c = dir.join(format!("{name}.crt"));
    let k = dir.join(format!("{name}.key"));
    write_file(&c, &cert.to_pem().unwrap());
    write_file(&k, &key.private_key_to_pem_pkcs8().unwrap());
    (c, k)
}

fn generate(dir: &Path) -> Pki {
    let t = now();

    let ca_key = new_key();
    let ca = build_cert(
        &CertParams {
            cn: "ftpsfs test CA",
            dns: &[],
            ips: &[],
            not_before: t - DAY,
            not_after: t + 3650 * DAY,
            is_ca: true,
            client: false,
        },
        &ca_key,
        None,
    );
    let ca_issuer = Issuer {
        cert: &ca,
        key: &ca_key,
    };

    let ca2_key = new_key();
    let ca2 = build_cert(
        &CertParams {
            cn: "ftpsfs untrusted CA",
            dns: &[],
            ips: &[],
            not_before: t - DAY,
            not_after: t + 3650 * DAY,
            is_ca: true,
            client: false,
        },
        &ca2_key,
        None,
    );
    let ca2_issuer = Issuer {
        cert: &ca2,
        key: &ca2_key,
    };

    let leaf = |cn: &'static str,
                dns: &'static [&'static str],
                ips: &'static [&'static str],
                nb: i64,
                na: i64,
                client: bool,
                issuer: &Issuer|
     -> (X509, PKey<Private>) {
        let key = new_key();
        let cert = build_cert(
            &CertParams {
                cn,
                dns,
                ips,
                not_before: nb,
                not_after: na,
                is_ca: false,
                client,
            },
            &key,
            Some(issuer),
        );
        (cert, key)
    };
    const LDNS: &[&str] = &["localhost"];
    const LIPS: &[&str] = &["127.0.0.1", "::1"];

    let (server, server_key) = leaf(
        "localhost",
        LDNS,
        LIPS,
        t - DAY,
        t + 3650 * DAY,
        false,
        &ca_issuer,
    );
    let (expired, expired_key) = leaf(
        "localhost",
        LDNS,
        LIPS,
        t - 30 * DAY,
        t - DAY,
        false,
        &ca_issuer,
    );
    let (notyet, notyet_key) = leaf(
        "localhost",
        LDNS,
        LIPS,
        t + 30 * DAY,
        t + 3650 * DAY,
        false,
        &ca_issuer,
    );
    let (wrong, wrong_key) = leaf(
        "wrong.example",
        &["wrong.example"],
        &["10.9.9.9"],
        t - DAY,
        t + 3650 * DAY,
        false,
        &ca_issuer,
    );
    let (untrusted, untrusted_key) = leaf(
        "localhost",
        LDNS,
        LIPS,
        t - DAY,
        t + 3650 * DAY,
        false,
        &ca2_issuer,
    );
    let (client, client_key) = leaf(
        "ftpsfs-test client",
        &[],
        &[],
        t - DAY,
        t + 3650 * DAY,
        true,
        &ca_issuer,
    );

    let ca_cert = dir.join("ca.crt");
    write_file(&ca_cert, &ca.to_pem().unwrap());
    let untrusted_ca_cert = dir.join("untrusted-ca.crt");
    write_file(&untrusted_ca_cert, &ca2.to_pem().unwrap());

    let (server_cert, server_key) = write_pair(dir, "server", &server, &server_key);
    let (expired_cert, expired_key) = write_pair(dir, "expired", &expired, &expired_key);
    let (notyet_cert, notyet_key) = write_pair(dir, "notyet", &notyet, &notyet_key);
    let (wronghost_cert, wronghost_key) = write_pair(dir, "wronghost", &wrong, &wrong_key);
    let (untrusted_cert, untrusted_key) = write_pair(dir, "untrusted", &untrusted, &untrusted_key);
    let (client_cert, client_key_path) = write_pair(dir, "client", &client, &client_key);

    let client_key_encrypted = dir.join("client-encrypted.key");
    write_file(
        &client_key_encrypted,
        &client_key
            .private_key_to_pem_pkcs8_passphrase(
                Cipher::aes_256_cbc(),
                CLIENT_KEY_PASSPHRASE.as_bytes(),
            )
            .unwrap(),
    );
    let client_key_password_file = dir.join("client-key-password.txt");
    write_file(
        &client_key_password_file,
        format!("{CLIENT_KEY_PASSPHRASE}\n").as_bytes(),
    );

    Pki {
        dir: dir.to_path_buf(),
        ca_cert,
        server_cert,
        server_key,
        expired_cert,
        expired_key,
        notyet_cert,
        notyet_key,
        wronghost_cert,
        wronghost_key,
        untrusted_cert,
        untrusted_key,
        untrusted_ca_cert,
        client_cert,
        client_key: client_key_path,
        client_key_encrypted,
        client_key_password_file,
    }
}
