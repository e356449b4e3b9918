//! `ftpsfs URL MOUNTPOINT [-o opts] [-f] [-d]`: check the mountpoint (refuse one
//! already mounted, clean up a dead mount of ours), connect, check that the remote
//! root is a directory, mount, detach (only once the mount is up, so that every
//! failure is reported with a non-zero exit; in the foreground, tell systemd
//! READY=1 instead), serve until unmounted or signalled (SIGTERM/SIGINT/SIGHUP
//! unmount after pending uploads).

use crate::cli::{Failure, EXIT_FAILURE, EXIT_USAGE};
use crate::config::{OptionList, SiteConfig};
use crate::error::{FtpError, Result};
use crate::fs::filesystem::{FsConfig, FtpsFs};
use crate::fs::fuse_adapter::FuseAdapter;
use crate::fs::journal;
use crate::ftp::TlsContext;
use crate::remote::ftp_store::FtpStore;
use crate::remote::pool::Pool;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Control connections per mount unless `max_conns=` says otherwise.
pub const DEFAULT_MAX_CONNS: usize = 8;

/// Everything the mount needs, parsed before anything connects.
pub struct MountPlan {
    pub site: SiteConfig,
    pub mountpoint: PathBuf,
    pub fs: FsConfig,
    pub max_conns: usize,
    pub allow_other: bool,
    pub default_permissions: bool,
    pub auto_unmount: bool,
    pub fsname: String,
    /// Kernel cache times of attributes and of name lookups.
    pub attr_timeout: Duration,
    pub entry_timeout: Duration,
    /// NOOP on connections idle this long (`keepalive=`); `None`: never.
    pub keepalive: Option<Duration>,
}

/// Whether the kernel checks access against the modes shown. `allow_other` alone
/// would let every local user read and change every file (ftpsfs checks nothing
/// itself), so it implies `default_permissions` unless `no_default_permissions`
/// says otherwise (warned).
fn default_permissions(opts: &OptionList) -> bool {
    if opts.has("no_default_permissions") {
        if opts.has("allow_other") {
            log::warn!(
                "allow_other with no_default_permissions: every local user may read, change \
                 and delete every file of this mount"
            );
            eprintln!(
                "ftpsfs: warning: allow_other with no_default_permissions lets every local user \
                 read, change and delete every file of this mount"
            );
        }
        return false;
    }
    opts.has("default_permissions") || opts.has("allow_other")
}

/// `$XDG_CACHE_HOME/ftpsfs`, else `~/.cache/ftpsfs`, of the user running ftpsfs.
/// A variable that names another user's directory is passed over: a `user` fstab
/// mount runs setuid with root's HOME, whose cache the user cannot write.
pub fn default_cache_dir() -> Option<PathBuf> {
    let xdg = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|d| crate::config::owned_by_real_user(d));
    xdg.or_else(|| crate::config::home_dir().map(|h| h.join(".cache")))
        .map(|d| d.join("ftpsfs"))
}

/// `default_cache_dir()/spool`, else (no home at all) one in the temporary directory.
pub fn default_spool_dir() -> PathBuf {
    default_cache_dir()
        .map(|d| d.join("spool"))
        .unwrap_or_else(|| {
            // SAFETY: getuid cannot fail.
            let uid = unsafe { libc::getuid() };
            std::env::temp_dir()
                .join(format!("ftpsfs-{uid}"))
                .join("spool")
        })
}

/// A mount as /proc/self/mountinfo lists it.
#[derive(Debug, Clone)]
pub struct MountEntry {
    pub fstype: String,
    pub source: String,
    pub super_options: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The topmost mount at exactly `path` (absolute, without `..`), if any.
pub fn mount_at(mountinfo: &str, path: &Path) -> Option<MountEntry> {
    let want = path.to_string_lossy();
    mountinfo.lines().rev().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mp = unescape_mountinfo(left.split(' ').nth(4)?);
        if mp != want {
            return None;
        }
        let mut r = right.split(' ');
        Some(MountEntry {
            fstype: r.next()?.to_string(),
            source: unescape_mountinfo(r.next()?),
            super_options: r.next().unwrap_or("").to_string(),
        })
    })
}

/// `path` made absolute and without `.`/`..` (lexically: a dead mount cannot be
/// canonicalized).
fn absolute(path: &Path) -> PathBuf {
    use std::path::Component;
    let full = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    let mut out = PathBuf::from("/");
    for c in full.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// True for an ftpsfs mount this user made (root's are everyone's to clean).
fn is_ours(m: &MountEntry) -> bool {
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    m.fstype == "fuse.ftpsfs"
        && (uid == 0
            || m.super_options
                .split(',')
                .any(|o| o == format!("user_id={uid}")))
}

/// Refuses a mountpoint that a FUSE filesystem already serves (a second daemon
/// would stack on the first), and clears a dead ftpsfs mount of ours that a
/// crashed daemon left behind ("Transport endpoint is not connected").
fn check_mountpoint(mountpoint: &Path) -> std::result::Result<(), Failure> {
    let shown = mountpoint.display();
    let abs = absolute(mountpoint);
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let existing = mount_at(&mountinfo, &abs);
    match std::fs::metadata(mountpoint) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => match existing {
            Some(m) if is_ours(&m) => {
                detach(&abs);
                let msg = format!(
                    "{shown}: cleared the mount of {} left by an ftpsfs that died",
                    m.source
                );
                log::warn!("{msg}");
                eprintln!("ftpsfs: {msg}");
                if let Err(e) = std::fs::metadata(mountpoint) {
                    return Err(Failure::new(
                        EXIT_FAILURE,
                        format!("mountpoint {shown}: {e}; unmount it with: fusermount3 -u {shown}"),
                    ));
                }
            }
            _ => {
                return Err(Failure::new(
                    EXIT_USAGE,
                    format!(
                        "mountpoint {shown}: {e}: a FUSE filesystem whose daemon died is still mounted there; \
                         unmount it with: fusermount3 -u {shown}"
                    ),
                ))
            }
        },
        Err(e) => {
            return Err(Failure::new(EXIT_USAGE, format!("mountpoint {shown}: {e}")));
        }
        Ok(md) if !md.is_dir() => {
            return Err(Failure::new(
                EXIT_USAGE,
                format!("mountpoint {shown} is not a directory"),
            ));
        }
        Ok(_) => {
            if let Some(m) = existing.filter(|m| m.fstype.starts_with("fuse")) {
                return Err(Failure::new(
                    EXIT_USAGE,
                    format!(
                        "{shown} is already mounted ({} {}); unmount it first with: fusermount3 -u {shown}",
                        m.fstype, m.source
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Seconds from an option, if given.
fn secs(opts: &OptionList, name: &str) -> Result<Option<Duration>> {
    Ok(opts
        .parsed::<f64>(name)?
        .map(|s| Duration::from_secs_f64(s.clamp(0.0, 1e9))))
}

impl MountPlan {
    pub fn new(
        url: &str,
        mountpoint: &Path,
        opts: &OptionList,
    ) -> std::result::Result<Self, Failure> {
        check_mountpoint(mountpoint)?;
        Ok(Self::from_options(url, mountpoint, opts)?)
    }

    fn from_options(url: &str, mountpoint: &Path, opts: &OptionList) -> Result<Self> {
        let site = SiteConfig::from_args(url, opts)?;
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let umask = match opts.value("umask")? {
            Some(v) => u32::from_str_radix(v, 8)
                .map_err(|_| FtpError::Invalid(format!("bad umask {v:?}")))?,
            // The server's modes as they are (as sshfs shows them): a chmod shows.
            None => 0,
        };
        let spool_dir = opts
            .value("spool_dir")?
            .map(PathBuf::from)
            .unwrap_or_else(default_spool_dir);
        std::fs::create_dir_all(&spool_dir).map_err(|e| {
            FtpError::Invalid(format!(
                "spool_dir {}: {e}; give a directory you can write with -o spool_dir=PATH",
                spool_dir.display()
            ))
        })?;
        let cache_timeout = secs(opts, "cache_timeout")?.unwrap_or(Duration::from_secs(5));
        let fs = FsConfig {
            root: site.url.path.clone(),
            uid: opts.parsed("uid")?.unwrap_or(uid),
            gid: opts.parsed("gid")?.unwrap_or(gid),
            umask,
            read_only: opts.has("ro") || opts.has("read_only"),
            cache_timeout: secs(opts, "dir_cache_timeout")?.unwrap_or(cache_timeout),
            cache_entries: 4096,
            spool_dir,
            inplace: opts.has("inplace"),
            prefetch_workers: 0,
            site: format!("{}@{}:{}", site.connect.user, site.url.host, site.url.port),
            op_timeout: site.connect.timeout,
            strict_dir_times: opts.has("strict_dir_times"),
            spool_window: match opts.value("spool_window")? {
                None => Some(crate::fs::config::DEFAULT_SPOOL_WINDOW),
                Some(v) => crate::fs::config::parse_spool_window(v).ok_or_else(|| {
                    FtpError::Invalid(format!(
                        "bad spool_window {v:?}: a size such as 256M, or all"
                    ))
                })?,
            },
            segments: opts
                .parsed::<usize>("segments")?
                .unwrap_or(crate::fs::segments::DEFAULT_SEGMENTS)
                .clamp(1, 16),
        };
        let u = &site.url;
        let fsname = match opts.value("fsname")? {
            Some(n) => n.to_string(),
            None => format!(
                "{}://{}@{}:{}{}",
                if u.implicit { "ftps" } else { "ftp" },
                site.connect.user,
                u.host,
                u.port,
                u.path
            ),
        };
        if fsname.contains([',', ' ', '\n']) {
            return Err(FtpError::Invalid(
                "fsname must not contain commas or spaces".into(),
            ));
        }
        let max_conns = opts
            .parsed::<usize>("max_conns")?
            .unwrap_or(DEFAULT_MAX_CONNS)
            .clamp(1, 64);
        let keepalive = match secs(opts, "keepalive")?.or(secs(opts, "ServerAliveInterval")?) {
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d.max(Duration::from_secs(1))),
            None => Some(crate::remote::pool::KEEPALIVE_AFTER),
        };
        // Leave a connection for interactive operations.
        let fs = FsConfig {
            prefetch_workers: max_conns.saturating_sub(1),
            // Never more segments than connections.
            segments: fs.segments.min(max_conns),
            ..fs
        };
        Ok(MountPlan {
            max_conns,
            allow_other: opts.has("allow_other"),
            default_permissions: default_permissions(opts),
            auto_unmount: opts.has("auto_unmount"),
            attr_timeout: secs(opts, "attr_timeout")?.unwrap_or(cache_timeout),
            entry_timeout: secs(opts, "entry_timeout")?.unwrap_or(cache_timeout),
            keepalive,
            mountpoint: mountpoint.to_path_buf(),
            fsname,
            site,
            fs,
        })
    }

    fn fuser_config(&self) -> fuser::Config {
        use fuser::MountOption as M;
        let mut c = fuser::Config::default();
        c.mount_options = vec![
            M::FSName(self.fsname.clone()),
            M::CUSTOM("subtype=ftpsfs".into()),
            M::NoDev,
            M::NoSuid,
        ];
        if self.fs.read_only {
            c.mount_options.push(M::RO);
        }
        if self.default_permissions {
            c.mount_options.push(M::DefaultPermissions);
        }
        if self.allow_other {
            c.acl = fuser::SessionACL::All;
        }
        if self.auto_unmount {
            // fusermount3 watches the daemon; it insists on allow_root at least.
            c.mount_options.push(M::AutoUnmount);
            if !self.allow_other {
                c.acl = fuser::SessionACL::RootAndOwner;
            }
        }
        c.n_threads = Some(self.max_conns + 2);
        c
    }
}

/// The running mount: its filesystem and connection pool.
pub struct Mounted {
    pub fs: Arc<FtpsFs>,
    pub pool: Arc<Pool>,
    session: Option<fuser::BackgroundSession>,
}

/// Connects (one connection, so bad passwords and certificates fail here), checks
/// on it that the remote root is a directory, and mounts.
pub fn mount(plan: &MountPlan) -> std::result::Result<Mounted, Failure> {
    let tls = TlsContext::new(plan.site.tls.clone())?;
    let pool = Pool::new(
        Arc::new(plan.site.connect.clone()),
        tls,
        plan.max_conns,
        Some(PREPARE_MIN_RTT),
    );
    {
        let mut conn = pool.get(crate::remote::pool::Use::Command)?;
        crate::check::verify_root(&mut conn, &plan.site.url.host, &plan.site.url.path)?;
        if let Some(w) = crate::check::pinned_cert_warning(&plan.site, conn.tls_info()) {
            log::warn!("{w}");
            eprintln!("ftpsfs: warning: {w}");
        }
    }
    let spare = Arc::downgrade(&pool);
    let _ = std::thread::Builder::new()
        .name("ftpsfs-spare".into())
        .spawn(move || {
            if let Some(p) = spare.upgrade() {
                p.add_spare();
            }
        });
    let store = Arc::new(FtpStore::new(pool.clone()));
    // What a crashed mount of this site left in the spool directory: finished or
    // reported before the new mount serves anything.
    for line in journal::recover(&plan.fs.spool_dir, &plan.fs.site, store.as_ref()) {
        log::warn!("recovery: {line}");
        eprintln!("ftpsfs: recovery: {line}");
    }
    let fs = Arc::new(FtpsFs::new(store, plan.fs.clone()));
    let adapter = FuseAdapter::new(fs.clone()).with_ttls(plan.attr_timeout, plan.entry_timeout);
    let session = fuser::spawn_mount(adapter, &plan.mountpoint, &plan.fuser_config())
        .map_err(|e| FtpError::io(format!("mounting on {}", plan.mountpoint.display()), e))?;
    set_read_ahead(&plan.mountpoint);
    let keeper_pool = Arc::downgrade(&pool);
    let keepalive = plan.keepalive;
    // Looks at idle connections often enough to keep `keepalive` within a third.
    let every = keepalive.map_or(KEEPER_PERIOD, |k| {
        (k / 3).clamp(Duration::from_secs(1), KEEPER_PERIOD)
    });
    let _ = std::thread::Builder::new()
        .name("ftpsfs-keeper".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            match keeper_pool.upgrade() {
                Some(p) => p.maintain_with(keepalive),
                None => return,
            }
        });
    Ok(Mounted {
        fs,
        pool,
        session: Some(session),
    })
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.release();
    }
}

impl Mounted {
    /// Lets the FUSE session go without the unmount fuser makes when it is dropped.
    /// That unmount names the mountpoint's path, and by the time this daemon ends
    /// the kernel has let its mount go (`fusermount3 -u`) or it was detached here:
    /// the path may then hold the next mount of a remount made right after (a
    /// script, a service restart), which that unmount would remove, sending the
    /// files written there into the directory underneath. The session's thread
    /// and /dev/fuse descriptor end with the process, which is about to exit.
    fn release(&mut self) {
        if let Some(s) = self.session.take() {
            std::mem::forget(s);
        }
    }

    /// True while the kernel mount is alive.
    pub fn is_running(&self) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| !s.guard.is_finished())
    }

    /// Uploads what is pending, then unmounts and waits for the session to end.
    /// Programs may still be inside an operation (a close() uploading its file), so
    /// the mount is detached lazily: it leaves the namespace at once, and the
    /// session keeps serving what is in flight until the kernel lets go.
    pub fn unmount(mut self, mountpoint: &Path) -> Result<()> {
        let flushed = self.fs.flush_all();
        detach(mountpoint);
        let start = std::time::Instant::now();
        let mut told = false;
        while self.is_running() && start.elapsed() < UNMOUNT_GRACE {
            if !told && start.elapsed() > Duration::from_secs(2) {
                told = true;
                log::warn!(
                    "{}: files are still open there; waiting up to {UNMOUNT_GRACE:?} for them",
                    mountpoint.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.is_running() {
            log::warn!("files are still open after {UNMOUNT_GRACE:?}; stopping anyway");
        }
        let flushed = flushed.and(self.fs.shutdown());
        self.release();
        self.pool.close_all();
        flushed.map_err(|e| {
            FtpError::Invalid(format!(
                "some uploads failed at unmount (errno {}); their spool files are kept",
                e.0
            ))
        })
    }
}

/// How often the keeper looks at idle connections at most.
const KEEPER_PERIOD: Duration = Duration::from_secs(20);

/// Idle connections get their next data connection opened ahead only where a round
/// trip costs at least this: on a LAN the extra thread and server work cost more
/// than the round trip saved (measured: 590 → 480 small files/s on loopback).
const PREPARE_MIN_RTT: Duration = Duration::from_millis(1);

/// Kernel readahead for the mount, KiB. The kernel starts FUSE mounts at 128 KiB,
/// which makes a sequential read 8 times more FUSE requests (and thread wake-ups)
/// than reads of 1 MiB; measured on loopback: ~270 → ~450 MB/s.
const READ_AHEAD_KB: u32 = 1024;

/// Raises the readahead of the mount's backing device info
/// (`/sys/class/bdi/MAJ:MIN/read_ahead_kb`); only root may, so a failure is only
/// logged (the mount then reads in 128 KiB requests).
fn set_read_ahead(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt;
    let dev = match std::fs::metadata(mountpoint) {
        Ok(m) => m.dev(),
        Err(e) => {
            log::debug!("readahead: cannot stat the mount point: {e}");
            return;
        }
    };
    let path = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    match std::fs::write(&path, format!("{READ_AHEAD_KB}\n")) {
        Ok(()) => log::debug!("readahead {READ_AHEAD_KB} KiB ({path})"),
        Err(e) => log::debug!("readahead left at the kernel's default ({path}: {e})"),
    }
}

/// How long an unmount waits for operations in flight.
const UNMOUNT_GRACE: Duration = Duration::from_secs(30);

/// Lazy unmount: umount2(MNT_DETACH) as root, else `fusermount3 -u -z`.
fn detach(mountpoint: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(mountpoint.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        return;
    }
    let status = std::process::Command::new("fusermount3")
        .args(["-u", "-z"])
        .arg(mountpoint)
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        log::warn!("could not unmount {}", mountpoint.display());
    }
}

/// Blocks SIGTERM/SIGINT/SIGHUP in this thread and the ones it starts; `wait_signal`
/// then receives them.
fn block_signals() -> libc::sigset_t {
    // SAFETY: plain libc signal-set manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Serves until the mount goes away or a signal asks to stop.
fn serve(mounted: Mounted, mountpoint: &Path, set: libc::sigset_t) -> Result<()> {
    loop {
        // SAFETY: sigtimedwait on a valid set with a valid timeout.
        let sig = unsafe {
            let ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 200_000_000,
            };
            libc::sigtimedwait(&set, std::ptr::null_mut(), &ts)
        };
        if sig > 0 {
            log::info!("signal {sig}: unmounting; pending uploads finish first (up to {UNMOUNT_GRACE:?} for files still open)");
            return mounted.unmount(mountpoint);
        }
        if !mounted.is_running() {
            log::info!("unmounted");
            let _ = mounted.fs.shutdown();
            mounted.pool.close_all();
            return Ok(());
        }
    }
}

/// Tells systemd (`Type=notify`) that the mount is up, when it started us.
fn notify_ready() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        Some(abs) => SocketAddr::from_abstract_name(abs.as_bytes()),
        None => SocketAddr::from_pathname(&path),
    };
    let sent = UnixDatagram::unbound().and_then(|s| {
        let a = addr?;
        s.send_to_addr(b"READY=1", &a)
    });
    match sent {
        Ok(_) => log::debug!("told systemd READY=1"),
        Err(e) => log::warn!("could not tell systemd the mount is up ({path}): {e}"),
    }
}

/// Runs the mount in the foreground (`-f`) or detached after it is up.
pub fn run(plan: MountPlan, foreground: bool) -> std::result::Result<(), Failure> {
    let set = block_signals();
    if foreground {
        let m = mount(&plan)?;
        log::info!("mounted {} on {}", plan.fsname, plan.mountpoint.display());
        notify_ready();
        return Ok(serve(m, &plan.mountpoint, set)?);
    }
    // Fork before any thread exists; the parent waits for the child's verdict:
    // "OK", or "E<status> <message>".
    let mut fds = [0; 2];
    // Close-on-exec: a helper the mount runs (fusermount3 for auto_unmount) must
    // not keep the write end open, or the parent never sees the end of the report.
    // SAFETY: pipe2 with a valid array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(FtpError::io("pipe", std::io::Error::last_os_error()).into());
    }
    // SAFETY: the fds were just created and are owned here.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: single-threaded at this point.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(FtpError::io("fork", std::io::Error::last_os_error()).into());
    }
    if pid > 0 {
        drop(wr);
        let mut msg = String::new();
        let _ = std::fs::File::from(rd).read_to_string(&mut msg);
        if msg.starts_with("OK") {
            return Ok(());
        }
        let (status, text) = msg
            .strip_prefix('E')
            .and_then(|m| m.split_once(' '))
            .and_then(|(code, text)| Some((code.parse::<u8>().ok()?, text)))
            .unwrap_or((EXIT_FAILURE, "the mount process died before mounting"));
        return Err(Failure::new(status, text.trim()));
    }
    drop(rd);
    // SAFETY: in the child: new session, detached from the terminal.
    unsafe { libc::setsid() };
    let mut report = std::fs::File::from(wr);
    match mount(&plan) {
        Ok(m) => {
            log::info!("mounted {} on {}", plan.fsname, plan.mountpoint.display());
            let _ = report.write_all(b"OK");
            drop(report);
            redirect_stdio();
            let r = serve(m, &plan.mountpoint, set);
            if let Err(e) = &r {
                log::error!("{e}");
            }
            std::process::exit(if r.is_ok() { 0 } else { 1 });
        }
        Err(f) => {
            let _ = report.write_all(format!("E{} {}", f.status, f.message).as_bytes());
            std::process::exit(f.status.into());
        }
    }
}

fn redirect_stdio() {
    // SAFETY: open/dup2 on fds 0-2 with a valid path.
    unsafe {
        let fd = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if fd >= 0 {
            libc::dup2(fd, 0);
            libc::dup2(fd, 1);
            libc::dup2(fd, 2);
            if fd > 2 {
                libc::close(fd);
            }
        }
    }
}
