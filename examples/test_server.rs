//! Start one real FTPS test server (the harness from tests/support) and keep it running.
//!
//! ```text
//! cargo run --example test_server -- [proftpd|vsftpd|pyftpdlib|pure-ftpd] [--implicit]
//!     [--client-cert] [--tls12|--tls13] [--no-tls] [--cert good|expired|notyet|wronghost|untrusted]
//!     [--tls-required on|auth+data|ctrl] [--no-session-reuse]
//! ```
//!
//! Prints `URL=`, `CAFILE=`, `USER=`, `PASSWORD=`, `ROOT=` (and `PORT=`, `CLIENT_CERT=`,
//! `CLIENT_KEY=`, `LOGDIR=`) lines on stdout, then waits until SIGTERM/SIGINT or until
//! stdin is closed, and stops the server.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::{CertChoice, ServerKind, ServerSpec, TlsProtocol, TlsRequired};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn usage(msg: &str) -> ! {
    eprintln!("test_server: {msg}");
    eprintln!(
        "usage: test_server [proftpd|vsftpd|pyftpdlib|pure-ftpd] [--implicit] [--client-cert] \
         [--tls12|--tls13] [--no-tls] [--cert good|expired|notyet|wronghost|untrusted] \
         [--tls-required on|auth+data|ctrl] [--no-session-reuse]"
    );
    std::process::exit(2);
}

fn parse_args() -> ServerSpec {
    let mut spec = ServerSpec::proftpd();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--implicit" => spec = spec.implicit(true),
            "--client-cert" => spec = spec.client_cert_required(true),
            "--tls12" => spec = spec.tls_protocol(TlsProtocol::Tls12Only),
            "--tls13" => spec = spec.tls_protocol(TlsProtocol::Tls13Only),
            "--no-tls" => spec = spec.tls_enabled(false),
            "--no-session-reuse" => spec = spec.session_reuse_required(false),
            "--cert" => {
                let c = match args.next().as_deref() {
                    Some("good") => CertChoice::Good,
                    Some("expired") => CertChoice::Expired,
                    Some("notyet") => CertChoice::NotYetValid,
                    Some("wronghost") => CertChoice::WrongHost,
                    Some("untrusted") => CertChoice::Untrusted,
                    _ => usage("bad --cert value"),
                };
                spec = spec.server_cert(c);
            }
            "--tls-required" => {
                let r = match args.next().as_deref() {
                    Some("on") => TlsRequired::On,
                    Some("auth+data") => TlsRequired::AuthData,
                    Some("ctrl") => TlsRequired::Ctrl,
                    _ => usage("bad --tls-required value"),
                };
                spec = spec.tls_required(r);
            }
            "-h" | "--help" => usage("help"),
            other => match ServerKind::parse(other) {
                Some(kind) => spec.kind = kind,
                None => usage(&format!("unknown argument {other:?}")),
            },
        }
    }
    spec
}

fn main() {
    let spec = parse_args();
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
    // Stop when stdin closes (e.g. the controlling script went away).
    std::thread::spawn(|| {
        let mut buf = [0u8; 256];
        let mut stdin = std::io::stdin();
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        STOP.store(true, Ordering::SeqCst);
    });

    let srv = support::start(spec);
    let pki = support::pki();
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "URL={}", srv.url());
        let _ = writeln!(out, "CAFILE={}", pki.ca_cert.display());
        let _ = writeln!(out, "USER={}", srv.user);
        let _ = writeln!(out, "PASSWORD={}", srv.password);
        let _ = writeln!(out, "ROOT={}", srv.root.display());
        let _ = writeln!(out, "PORT={}", srv.port);
        let _ = writeln!(out, "CLIENT_CERT={}", pki.client_cert.display());
        let _ = writeln!(out, "CLIENT_KEY={}", pki.client_key.display());
        let _ = writeln!(out, "LOGDIR={}", srv.conf_dir.display());
        let _ = out.flush();
    }
    eprintln!(
        "test_server: {} ready in {:?}; stop with SIGTERM/SIGINT or by closing stdin",
        srv.spec.kind.name(),
        srv.startup_time
    );

    let mut srv = srv;
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
        if !srv.is_running() {
            eprintln!(
                "test_server: server exited unexpectedly\n{}",
                srv.log_contents()
            );
            drop(srv);
            std::process::exit(1);
        }
    }
    eprintln!("test_server: stopping");
    drop(srv);
}
