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

/// Logs to stderr in the foreground, to syslog once detached. `RUST_LOG` overrides
/// the level (debug with `-d`, else `quiet_level`).
pub fn init_logging(debug: bool, quiet_level: &str, to_syslog: bool) {
    let level = if debug { "debug" } else { quiet_level };
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level));
    b.format_timestamp_millis();
    if to_syslog {
        if std::path::Path::new("/dev/log").exists() {
            let w = crate::syslog::SyslogWriter::open();
            b.target(env_logger::Target::Pipe(Box::new(w)));
        } else if let Some(file) = fallback_log_file() {
            // No syslog daemon (containers): a log file beside the default spool,
            // shared by every mount of the user, so each line names its process.
            // The pid at the time of each line: the daemon is a fork of this process.
            b.format(|buf, r| {
                use std::io::Write;
                writeln!(
                    buf,
                    "[{} {:5} ftpsfs[{}] {}] {}",
                    buf.timestamp_millis(),
                    r.level(),
                    std::process::id(),
                    r.target(),
                    r.args()
                )
            });
            b.target(env_logger::Target::Pipe(Box::new(file)));
        }
    }
    let _ = b.try_init();
}

/// `ftpsfs.log` beside the default spool, readable by its owner only (paths and
/// server replies are nobody else's business).
fn fallback_log_file() -> Option<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = crate::mount::default_spool_dir().parent()?.to_path_buf();
    std::fs::create_dir_all(&dir).ok()?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(dir.join("ftpsfs.log"))
        .ok()?;
    // An older log may have been created world-readable.
    let _ = f.set_permissions(std::fs::Permissions::from_mode(0o600));
    Some(f)
}

/// The password has been read: keep it out of the environment that the mount's
/// processes (and /proc/PID/environ) would otherwise carry for their whole life.
/// Also makes the process non-dumpable: no core file, and other processes of the
/// same user cannot read its memory (the password) through /proc or ptrace.
pub fn forget_password_env() {
    // Single-threaded here: before the mount starts any thread.
    std::env::remove_var("FTPSFS_PASSWORD");
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
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
    let foreground = a.foreground || debug;
    init_logging(debug, "info", !foreground);
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
    forget_password_env();
    if plan.site.tls.insecure {
        eprintln!("ftpsfs: WARNING: insecure: the server's certificate is NOT verified");
        log::warn!("insecure: the server's certificate is NOT verified; anyone on the path can read and change your data");
    }
    match crate::mount::run(plan, foreground) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ftpsfs: {e}");
            ExitCode::from(1)
        }
    }
}
