//! Command-line glue: argument parsing for the mount, `check` and `completions`,
//! logging set-up, and the exit statuses (0 done, 1 failed, 2 wrong usage, 3 refused
//! by the site: retrying the same command will not help, so systemd stops there).

use crate::config::OptionList;
use crate::error::FtpError;
use crate::ftp::reply::code;
use crate::mount::MountPlan;
use clap::{CommandFactory, FromArgMatches, Parser};
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit status: something failed that may work on a later try (network, server).
pub const EXIT_FAILURE: u8 = 1;
/// Exit status: wrong usage (bad URL, option, mountpoint, password source).
pub const EXIT_USAGE: u8 = 2;
/// Exit status: the site refused (login, certificate, wrong scheme for the port, the
/// remote path missing, the mountpoint already mounted): fix the settings first.
pub const EXIT_REFUSED: u8 = 3;

/// A failure as the command reports it: its message and exit status.
#[derive(Debug)]
pub struct Failure {
    pub status: u8,
    pub message: String,
}

impl Failure {
    pub fn new(status: u8, message: impl Into<String>) -> Self {
        Failure {
            status,
            message: message.into(),
        }
    }
}

impl From<FtpError> for Failure {
    fn from(e: FtpError) -> Self {
        Failure {
            status: exit_status(&e),
            message: e.to_string(),
        }
    }
}

/// The exit status an error deserves.
pub fn exit_status(e: &FtpError) -> u8 {
    match e {
        FtpError::Invalid(_) => EXIT_USAGE,
        // A handshake cut short may be the network's doing; a refused certificate,
        // a wrong scheme or a client certificate problem is not.
        FtpError::Tls(m) if m.starts_with("handshake failed") => EXIT_FAILURE,
        FtpError::Tls(_) => EXIT_REFUSED,
        FtpError::Reply {
            code: code::NOT_LOGGED_IN | code::NEED_ACCOUNT_TO_STORE,
            ..
        } if !e.is_too_many_connections() => EXIT_REFUSED,
        _ => EXIT_FAILURE,
    }
}

const URL_HELP: &str =
    "ftp://[user@]host[:port][/path] (explicit FTPS, AUTH TLS) or ftps://... (implicit FTPS)";

/// Mount an FTPS site as a folder.
#[derive(Parser, Debug)]
#[command(
    name = "ftpsfs",
    version,
    about = "Mount an FTPS site (FTP over TLS) as a folder.",
    override_usage = "ftpsfs URL MOUNTPOINT [-o OPTIONS] [-f] [-d] [-v]\n       \
                      ftpsfs check URL [-o OPTIONS] [-d]\n       \
                      ftpsfs completions bash|zsh|fish"
)]
pub struct MountArgs {
    #[arg(help = URL_HELP)]
    url: String,
    /// Directory to mount on
    mountpoint: PathBuf,
    /// Options, comma-separated (listed below)
    #[arg(short = 'o', action = clap::ArgAction::Append, value_name = "OPTIONS")]
    options: Vec<String>,
    /// Stay in the foreground
    #[arg(short = 'f')]
    foreground: bool,
    /// Log each connection and operation to stderr (implies -f)
    #[arg(short = 'd', long)]
    debug: bool,
    /// Log more (info level: mounts, reconnections, unmounts)
    #[arg(short = 'v', long)]
    verbose: bool,
}

/// Diagnose an FTPS site: TLS, certificate, features, session reuse, listing.
#[derive(Parser, Debug)]
#[command(name = "ftpsfs check", version)]
pub struct CheckArgs {
    #[arg(help = URL_HELP)]
    url: String,
    /// Options, comma-separated: the same as the mount's (mount-only ones are ignored)
    #[arg(short = 'o', action = clap::ArgAction::Append, value_name = "OPTIONS")]
    options: Vec<String>,
    /// Log the protocol exchange (passwords are never logged)
    #[arg(short = 'd', long)]
    debug: bool,
}

/// Print a shell completion script for ftpsfs.
#[derive(Parser, Debug)]
#[command(name = "ftpsfs completions", version)]
pub struct CompletionArgs {
    /// bash, zsh or fish
    shell: clap_complete::Shell,
}

/// The clap definition of the mount command, with the option list as help.
pub fn mount_command() -> clap::Command {
    MountArgs::command().after_help(crate::options::help_text())
}

fn parse<T: FromArgMatches>(cmd: clap::Command, args: Vec<String>) -> Result<T, ExitCode> {
    let done = |e: clap::Error| {
        let _ = e.print();
        // 0 for --help and --version, 2 for wrong usage.
        ExitCode::from(e.exit_code() as u8)
    };
    let m = cmd.try_get_matches_from(args).map_err(done)?;
    T::from_arg_matches(&m).map_err(done)
}

/// How much to log and where.
pub struct LogSpec {
    /// `error`, `warn`, `info`, `debug` or `trace`; `RUST_LOG` overrides it.
    pub level: String,
    /// `log_file=`: always this file.
    pub file: Option<PathBuf>,
    /// Detached: syslog (or the fallback file where there is no syslog).
    pub detached: bool,
}

/// The level names `log_level=` takes.
const LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace"];

/// Sets up logging. ftpsfs's own lines at `level`; fuser's only from `error` up
/// (its warnings are about requests ftpsfs deliberately leaves unimplemented,
/// such as extended attributes, and about unmounts already done), unless
/// `RUST_LOG` says otherwise (`RUST_LOG=fuser=debug` shows each FUSE request).
pub fn init_logging(spec: &LogSpec) {
    let filter = format!("{},fuser=error", spec.level);
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(filter));
    b.format_timestamp_millis();
    let file = match &spec.file {
        Some(p) => open_log_file(p),
        None if spec.detached && !std::path::Path::new("/dev/log").exists() => {
            // No syslog daemon (containers): a log file beside the default spool.
            crate::mount::default_cache_dir().and_then(|d| {
                std::fs::create_dir_all(&d).ok()?;
                open_log_file(&d.join("ftpsfs.log"))
            })
        }
        None => None,
    };
    if let Some(file) = file {
        // Shared by several mounts perhaps, so each line names its process (the pid
        // at the time of the line: the daemon is a fork of this process).
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
    } else if spec.detached {
        let w = crate::syslog::SyslogWriter::open();
        b.target(env_logger::Target::Pipe(Box::new(w)));
    }
    let _ = b.try_init();
}

/// A log file beyond this size is moved to `NAME.1` when a mount starts (one old
/// generation kept), so that a long-lived machine's log stays bounded.
const LOG_ROTATE_BYTES: u64 = 8 << 20;

/// Opens `path` for appending, readable by its owner only (paths and server replies
/// are nobody else's business).
fn open_log_file(path: &std::path::Path) -> Option<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if std::fs::metadata(path).is_ok_and(|m| m.len() > LOG_ROTATE_BYTES) {
        let mut old = path.as_os_str().to_owned();
        old.push(".1");
        let _ = std::fs::rename(path, old);
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .ok()?;
    // An older log may have been created world-readable.
    let _ = f.set_permissions(std::fs::Permissions::from_mode(0o600));
    Some(f)
}

/// The log level from `-d`, `-v`, `debug` and `log_level=`.
fn log_level(opts: &OptionList, debug: bool, verbose: bool) -> Result<String, FtpError> {
    if debug || opts.has("debug") {
        return Ok("debug".into());
    }
    match opts.value("log_level")? {
        Some(l) if LEVELS.contains(&l) => Ok(l.to_string()),
        Some(l) => Err(FtpError::Invalid(format!(
            "log_level must be one of {}, not {l:?}",
            LEVELS.join(", ")
        ))),
        None if verbose => Ok("info".into()),
        None => Ok("warn".into()),
    }
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

fn fail(f: Failure) -> ExitCode {
    eprintln!("ftpsfs: {}", f.message);
    ExitCode::from(f.status)
}

/// `ftpsfs check URL [-o opts]`.
pub fn run_check(args: Vec<String>) -> ExitCode {
    let a: CheckArgs = match parse(CheckArgs::command(), args) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let opts = OptionList::parse(&a.options);
    let level = match log_level(&opts, a.debug, false) {
        Ok(l) => l,
        Err(e) => return fail(e.into()),
    };
    init_logging(&LogSpec {
        level,
        file: None,
        detached: false,
    });
    if let Err(e) = crate::options::reject_unknown(&opts) {
        return fail(e.into());
    }
    let site = match crate::config::SiteConfig::from_args(&a.url, &opts) {
        Ok(s) => s,
        Err(e) => return fail(e.into()),
    };
    warn_if_insecure(&site);
    let mut out = std::io::stdout();
    match crate::check::run(&site, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => fail(Failure {
            message: format!("check failed: {}", f.message),
            ..f
        }),
    }
}

/// `ftpsfs completions SHELL`: the completion script, generated from the clap
/// definition (the package installs them).
pub fn run_completions(args: Vec<String>) -> ExitCode {
    let a: CompletionArgs = match parse(CompletionArgs::command(), args) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let mut cmd = mount_command()
        .subcommand(CheckArgs::command().name("check"))
        .subcommand(CompletionArgs::command().name("completions"))
        .args_conflicts_with_subcommands(true);
    clap_complete::generate(a.shell, &mut cmd, "ftpsfs", &mut std::io::stdout());
    ExitCode::SUCCESS
}

/// `ftpsfs URL MOUNTPOINT [-o opts]`.
pub fn run_mount(args: Vec<String>) -> ExitCode {
    let a: MountArgs = match parse(mount_command(), args) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let opts = OptionList::parse(&a.options);
    let debug = a.debug || opts.has("debug");
    let foreground = a.foreground || debug;
    let level = match log_level(&opts, debug, a.verbose) {
        Ok(l) => l,
        Err(e) => return fail(e.into()),
    };
    let file = match opts.value("log_file") {
        Ok(f) => f.map(PathBuf::from),
        Err(e) => return fail(e.into()),
    };
    init_logging(&LogSpec {
        level,
        file,
        detached: !foreground,
    });
    if let Err(e) = crate::options::reject_unknown(&opts) {
        return fail(e.into());
    }
    let plan = match MountPlan::new(&a.url, &a.mountpoint, &opts) {
        Ok(p) => p,
        Err(f) => return fail(f),
    };
    forget_password_env();
    warn_if_insecure(&plan.site);
    match crate::mount::run(plan, foreground) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => fail(f),
    }
}

/// `-o insecure`: said on stderr and in the log, every time.
fn warn_if_insecure(site: &crate::config::SiteConfig) {
    if site.tls.insecure {
        eprintln!("ftpsfs: WARNING: insecure: the server's certificate is NOT verified");
        log::warn!(
            "insecure: the server's certificate is NOT verified; anyone on the path can read and change your data"
        );
    }
}
