//! Command-line glue shared by `check` and the mount.

use crate::config::{OptionList, CONNECTION_OPTIONS};
use crate::error::{FtpError, Result};
use crate::mount::{MountPlan, MOUNT_OPTIONS};
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// Refuses options that neither the connection nor `extra` know, so a typo in
/// `fingerprint=` never silently weakens trust.
pub fn reject_unknown(opts: &OptionList, extra: &[&str]) -> Result<()> {
    for name in opts.names() {
        let known =
            CONNECTION_OPTIONS.contains(&name) || extra.contains(&name) || name.starts_with("x-");
        if !known {
            return Err(FtpError::Invalid(format!("unknown option {name:?}")));
        }
    }
    Ok(())
}

/// Mount an FTPS site as a folder.
#[derive(Parser, Debug)]
#[command(
    name = "ftpsfs",
    version,
    about = "Mount an FTPS site (FTP over TLS) as a folder.\nAlso: ftpsfs check URL [-o options] to diagnose a site."
)]
struct MountArgs {
    /// ftp://[user@]host[:port][/path] (explicit FTPS) or ftps://... (implicit FTPS)
    url: String,
    /// Directory to mount on
    mountpoint: PathBuf,
    /// Options, comma-separated (see the man page)
    #[arg(short = 'o', action = clap::ArgAction::Append)]
    options: Vec<String>,
    /// Stay in the foreground
    #[arg(short = 'f')]
    foreground: bool,
    /// Debug logging (implies -f)
    #[arg(short = 'd', long)]
    debug: bool,
}

pub fn init_logging(debug: bool) {
    let level = if debug { "debug" } else { "info" };
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp_millis()
        .try_init();
}

/// `ftpsfs URL MOUNTPOINT [-o opts]`.
pub fn run_mount(args: Vec<String>) -> ExitCode {
    let a = match MountArgs::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(2);
        }
    };
    let opts = OptionList::parse(&a.options);
    let debug = a.debug || opts.has("debug");
    init_logging(debug);
    if let Err(e) = reject_unknown(&opts, MOUNT_OPTIONS) {
        eprintln!("ftpsfs: {e}");
        return ExitCode::from(2);
    }
    let plan = match MountPlan::new(&a.url, &a.mountpoint, &opts) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ftpsfs: {e}");
            return ExitCode::from(2);
        }
    };
    if plan.site.tls.insecure {
        log::warn!("insecure: the server's certificate is NOT verified; anyone on the path can read and change your data");
    }
    match crate::mount::run(plan, a.foreground || debug) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ftpsfs: {e}");
            ExitCode::from(1)
        }
    }
}
