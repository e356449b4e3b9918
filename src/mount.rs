//! `ftpsfs URL MOUNTPOINT [-o opts] [-f] [-d]`: connect, mount, detach (only once
//! the mount is up, so that every failure is reported with a non-zero exit), serve
//! until unmounted or signalled (SIGTERM/SIGINT/SIGHUP unmount after pending uploads).

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

/// Mount options besides the connection's.
pub const MOUNT_OPTIONS: &[&str] = &[
    "ro",
    "allow_other",
    "default_permissions",
    "no_default_permissions",
    "uid",
    "gid",
    "umask",
    "max_conns",
    "cache_timeout",
    "spool_dir",
    "fsname",
    "debug",
    "inplace",
    "strict_dir_times",
    "segments",
    // passed by mount(8)/fstab/mount.fuse3; nothing to do for them
    "rw",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "auto",
    "noauto",
    "users",
    "nofail",
    "_netdev",
    "atime",
    "noatime",
    "relatime",
];

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
    pub fsname: String,
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

/// `$XDG_CACHE_HOME/ftpsfs/spool`, else `~/.cache/ftpsfs/spool`.
pub fn default_spool_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("ftpsfs").join("spool")
}

impl MountPlan {
    pub fn new(url: &str, mountpoint: &Path, opts: &OptionList) -> Result<Self> {
        let site = SiteConfig::from_args(url, opts)?;
        let md = std::fs::metadata(mountpoint)
            .map_err(|e| FtpError::Invalid(format!("mountpoint {}: {e}", mountpoint.display())))?;
        if !md.is_dir() {
            return Err(FtpError::Invalid(format!(
                "mountpoint {} is not a directory",
                mountpoint.display()
            )));
        }
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let umask = match opts.value("umask")? {
            Some(v) => u32::from_str_radix(v, 8)
                .map_err(|_| FtpError::Invalid(format!("bad umask {v:?}")))?,
            None => 0o022,
        };
        let spool_dir = opts
            .value("spool_dir")?
            .map(PathBuf::from)
            .unwrap_or_else(default_spool_dir);
        std::fs::create_dir_all(&spool_dir)
            .map_err(|e| FtpError::Invalid(format!("spool_dir {}: {e}", spool_dir.display())))?;
        let fs = FsConfig {
            root: site.url.path.clone(),
            uid: opts.parsed("uid")?.unwrap_or(uid),
            gid: opts.parsed("gid")?.unwrap_or(gid),
            umask,
            read_only: opts.has("ro"),
            cache_timeout: Duration::from_secs_f64(
                opts.parsed::<f64>("cache_timeout")?.unwrap_or(5.0).max(0.0),
            ),
            cache_entries: 4096,
            spool_dir,
            inplace: opts.has("inplace"),
            prefetch_workers: 0,
            site: format!("{}@{}:{}", site.connect.user, site.url.host, site.url.port),
            op_timeout: site.connect.timeout,
            strict_dir_times: opts.has("strict_dir_times"),
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

/// Connects (one connection, so bad passwords and certificates fail here) and mounts.
pub fn mount(plan: &MountPlan) -> Result<Mounted> {
    let tls = TlsContext::new(plan.site.tls.clone())?;
    let pool = Pool::new(
        Arc::new(plan.site.connect.clone()),
        tls,
        plan.max_conns,
        Some(PREPARE_MIN_RTT),
    );
    pool.warm_up()?;
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
    let session = fuser::spawn_mount(
        FuseAdapter::new(fs.clone()),
        &plan.mountpoint,
        &plan.fuser_config(),
    )
    .map_err(|e| FtpError::io(format!("mounting on {}", plan.mountpoint.display()), e))?;
    set_read_ahead(&plan.mountpoint);
    let keeper_pool = Arc::downgrade(&pool);
    let _ = std::thread::Builder::new()
        .name("ftpsfs-keeper".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_secs(20));
            match keeper_pool.upgrade() {
                Some(p) => p.maintain(),
                None => return,
            }
        });
    Ok(Mounted {
        fs,
        pool,
        session: Some(session),
    })
}

impl Mounted {
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
        let deadline = std::time::Instant::now() + UNMOUNT_GRACE;
        while self.is_running() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.is_running() {
            log::warn!("files are still open after {UNMOUNT_GRACE:?}; stopping anyway");
        }
        let flushed = flushed.and(self.fs.shutdown());
        if let Some(s) = self.session.take() {
            if s.guard.is_finished() {
                let _ = s.join();
            } else {
                drop(s);
            }
        }
        self.pool.close_all();
        flushed.map_err(|e| {
            FtpError::Invalid(format!(
                "some uploads failed at unmount (errno {}); their spool files are kept",
                e.0
            ))
        })
    }
}

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
            log::info!("signal {sig}: unmounting after pending uploads");
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

/// Runs the mount in the foreground (`-f`) or detached after it is up.
pub fn run(plan: MountPlan, foreground: bool) -> Result<()> {
    let set = block_signals();
    if foreground {
        let m = mount(&plan)?;
        log::info!("mounted {} on {}", plan.fsname, plan.mountpoint.display());
        return serve(m, &plan.mountpoint, set);
    }
    // Fork before any thread exists; the parent waits for the child's verdict.
    let mut fds = [0; 2];
    // SAFETY: pipe with a valid array.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(FtpError::io("pipe", std::io::Error::last_os_error()));
    }
    // SAFETY: the fds were just created and are owned here.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: single-threaded at this point.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(FtpError::io("fork", std::io::Error::last_os_error()));
    }
    if pid > 0 {
        drop(wr);
        let mut msg = String::new();
        let _ = std::fs::File::from(rd).read_to_string(&mut msg);
        return match msg.strip_prefix("OK") {
            Some(_) => Ok(()),
            None if msg.is_empty() => Err(FtpError::Invalid(
                "the mount process died before mounting".into(),
            )),
            None => Err(FtpError::Invalid(msg.trim().to_string())),
        };
    }
    drop(rd);
    // SAFETY: in the child: new session, detached from the terminal.
    unsafe { libc::setsid() };
    let mut report = std::fs::File::from(wr);
    match mount(&plan) {
        Ok(m) => {
            let _ = report.write_all(b"OK");
            drop(report);
            redirect_stdio();
            let r = serve(m, &plan.mountpoint, set);
            if let Err(e) = &r {
                log::error!("{e}");
            }
            std::process::exit(if r.is_ok() { 0 } else { 1 });
        }
        Err(e) => {
            let _ = report.write_all(e.to_string().as_bytes());
            std::process::exit(1);
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
