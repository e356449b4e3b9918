//! The `ftpsfs` command: `ftpsfs check URL [-o opts]` and `ftpsfs URL MOUNTPOINT [-o opts]`.

use clap::Parser;
use ftpsfs::config::{OptionList, SiteConfig};
use std::process::ExitCode;

/// Diagnose an FTPS site: TLS, certificate, features, session reuse, listing.
#[derive(Parser, Debug)]
#[command(name = "ftpsfs check", version)]
struct CheckArgs {
    /// ftp://[user@]host[:port][/path] (explicit FTPS) or ftps://... (implicit FTPS)
    url: String,
    /// Options, comma-separated: cafile=, fingerprint=, insecure, min_tls=, cert=, key=, ...
    #[arg(short = 'o', action = clap::ArgAction::Append)]
    options: Vec<String>,
    /// Log the protocol exchange (passwords are never logged).
    #[arg(short = 'd', long)]
    debug: bool,
}

fn run_check(args: Vec<String>) -> ExitCode {
    let a = match CheckArgs::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(2);
        }
    };
    ftpsfs::cli::init_logging(a.debug, "warn", false);
    let opts = OptionList::parse(&a.options);
    if let Err(e) = ftpsfs::cli::reject_unknown(&opts, &[]) {
        eprintln!("ftpsfs: {e}");
        return ExitCode::from(2);
    }
    let site = match SiteConfig::from_args(&a.url, &opts) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ftpsfs: {e}");
            return ExitCode::from(2);
        }
    };
    if site.tls.insecure {
        eprintln!("ftpsfs: WARNING: insecure: the server's certificate is NOT verified");
    }
    let mut out = std::io::stdout();
    match ftpsfs::check::run(&site, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ftpsfs: check failed: {e}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    // Transfer buffers (up to 1 MiB) come and go on many threads: a fixed mmap
    // threshold returns them to the system at once instead of letting glibc's
    // per-thread arenas keep them, which bounds the resident size.
    // SAFETY: mallopt before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("check") {
        let mut rest = vec!["ftpsfs check".to_string()];
        rest.extend(args.into_iter().skip(2));
        return run_check(rest);
    }
    ftpsfs::cli::run_mount(args)
}
