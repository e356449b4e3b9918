//! The thin fuser adapter: translates FUSE requests into calls on [`FtpsFs`] and its
//! results into replies. No filesystem logic lives here.

use super::filesystem::{Attr, Errno as FsErrno, FileType as FsType, FtpsFs, SetTime};
use crate::names;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    Request, TimeOrNow, WriteFlags,
};
use std::borrow::Cow;
use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub struct FuseAdapter {
    fs: Arc<FtpsFs>,
    /// How long the kernel may keep attributes (`attr_timeout=`)...
    ttl: Duration,
    /// ...and name lookups (`entry_timeout=`).
    entry_ttl: Duration,
    /// Each operation's deadline.
    timeout: Duration,
    /// Buffers for read replies, reused: a read of up to 1 MiB then allocates
    /// nothing (an allocation that size is an mmap, page faults and an munmap).
    /// At most `READ_BUFFERS_KEPT` stay allocated between reads.
    read_buffers: std::sync::Mutex<Vec<Vec<u8>>>,
}

const READ_BUFFERS_KEPT: usize = 4;

impl FuseAdapter {
    pub fn new(fs: Arc<FtpsFs>) -> Self {
        let ttl = fs.config().cache_timeout;
        let timeout = fs.config().op_timeout;
        FuseAdapter {
            fs,
            ttl,
            entry_ttl: ttl,
            timeout,
            read_buffers: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Kernel cache times of attributes and of name lookups (default: the
    /// filesystem's `cache_timeout`).
    pub fn with_ttls(mut self, attr: Duration, entry: Duration) -> Self {
        self.ttl = attr;
        self.entry_ttl = entry;
        self
    }

    /// The deadline of one operation (`timeout=`, see `crate::deadline`).
    fn deadline(&self) -> crate::deadline::Scope {
        crate::deadline::start(self.timeout)
    }

    fn take_read_buffer(&self) -> Vec<u8> {
        let mut pool = self.read_buffers.lock().unwrap_or_else(|p| p.into_inner());
        pool.pop().unwrap_or_default()
    }

    fn give_back_read_buffer(&self, mut buf: Vec<u8>) {
        buf.clear();
        let mut pool = self.read_buffers.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < READ_BUFFERS_KEPT {
            pool.push(buf);
        }
    }
}

fn errno(e: FsErrno) -> Errno {
    Errno::from_i32(e.0)
}

fn to_fuse(a: &Attr) -> FileAttr {
    let kind = match a.kind {
        FsType::File => FileType::RegularFile,
        FsType::Dir => FileType::Directory,
        FsType::Symlink => FileType::Symlink,
    };
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.mtime,
        kind,
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 131072,
        flags: 0,
    }
}

/// A name from the kernel: its bytes, whatever they are (see `crate::names`).
fn name_str(name: &OsStr) -> Result<Cow<'_, str>, Errno> {
    Ok(names::from_os(name))
}

fn time_of(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::SpecificTime(t) => SetTime::At(t),
        TimeOrNow::Now => SetTime::Now,
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS);
        // open(O_TRUNC) comes to `open` whole, not as an open and then a
        // setattr without a handle, which would look like truncate(2) by path
        // (uploaded at once, see `FtpsFs::setattr`).
        let _ = config.add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC);
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_write(1 << 20);
        Ok(())
    }

    fn destroy(&mut self) {
        if let Err(e) = self.fs.flush_all() {
            log::error!(
                "unmount: some uploads failed (errno {}); their spool files are kept",
                e.0
            );
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _deadline = self.deadline();
        let r = name_str(name).and_then(|n| self.fs.lookup(parent.0, &n).map_err(errno));
        match r {
            Ok(a) => reply.entry(&self.entry_ttl, &to_fuse(&a), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _deadline = self.deadline();
        match self.fs.getattr(ino.0) {
            Ok(a) => reply.attr(&self.ttl, &to_fuse(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _deadline = self.deadline();
        let mtime = mtime.map(time_of);
        let handle = fh.map(|f| f.0);
        match self.fs.setattr(ino.0, mode, uid, gid, size, mtime, handle) {
            Ok(a) => reply.attr(&self.ttl, &to_fuse(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _deadline = self.deadline();
        match self.fs.readlink(ino.0) {
            Ok(t) => reply.data(&names::to_bytes(&t)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let _deadline = self.deadline();
        let r =
            name_str(name).and_then(|n| self.fs.mkdir(parent.0, &n, mode & !umask).map_err(errno));
        match r {
            Ok(a) => reply.entry(&self.entry_ttl, &to_fuse(&a), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _deadline = self.deadline();
        match name_str(name).and_then(|n| self.fs.unlink(parent.0, &n).map_err(errno)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _deadline = self.deadline();
        match name_str(name).and_then(|n| self.fs.rmdir(parent.0, &n).map_err(errno)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        match self.fs.symlink() {
            Ok(a) => reply.entry(&self.entry_ttl, &to_fuse(&a), Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _deadline = self.deadline();
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            return reply.error(Errno::from_i32(libc::EINVAL));
        }
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let r = name_str(name).and_then(|n| {
            let nn = name_str(newname)?;
            self.fs
                .rename(parent.0, &n, newparent.0, &nn, noreplace)
                .map_err(errno)
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _deadline = self.deadline();
        match self.fs.open(ino.0, flags.0) {
            Ok(fh) => reply.opened(FileHandle(fh), open_flags(flags.0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _deadline = self.deadline();
        let mut buf = self.take_read_buffer();
        match self.fs.read_into(fh.0, offset, size as usize, &mut buf) {
            Ok(()) => reply.data(&buf),
            Err(e) => reply.error(errno(e)),
        }
        self.give_back_read_buffer(buf);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _deadline = self.deadline();
        match self.fs.write(fh.0, offset, data) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let _deadline = self.deadline();
        match self.fs.flush(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _deadline = self.deadline();
        match self.fs.release(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _deadline = self.deadline();
        match self.fs.fsync(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _deadline = self.deadline();
        match self.fs.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _deadline = self.deadline();
        // Offsets: 1 after ".", 2 after "..", then 2 + the position in the stream.
        if offset == 0 && reply.add(ino, 1, FileType::Directory, ".") {
            return reply.ok();
        }
        if offset <= 1 && reply.add(ino, 2, FileType::Directory, "..") {
            return reply.ok();
        }
        let index = offset.saturating_sub(2) as usize;
        let r = self.fs.read_dir(fh.0, index, false, |name, attr, next| {
            let a = to_fuse(attr);
            reply.add(a.ino, next + 2, a.kind, names::to_os(name))
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _deadline = self.deadline();
        if offset <= 1 {
            // "." and ".." do not count as lookups: the kernel ignores their attributes.
            let dir_attr = match self.fs.getattr(ino.0) {
                Ok(a) => to_fuse(&a),
                Err(e) => return reply.error(errno(e)),
            };
            if offset == 0 && reply.add(ino, 1, ".", &Duration::ZERO, &dir_attr, Generation(0)) {
                return reply.ok();
            }
            if reply.add(ino, 2, "..", &Duration::ZERO, &dir_attr, Generation(0)) {
                return reply.ok();
            }
        }
        let index = offset.saturating_sub(2) as usize;
        let ttl = self.entry_ttl;
        let r = self.fs.read_dir(fh.0, index, true, |name, attr, next| {
            let a = to_fuse(attr);
            reply.add(a.ino, next + 2, names::to_os(name), &ttl, &a, Generation(0))
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let (blocks, bfree, bavail, files, ffree, bsize, namelen) = self.fs.statfs();
        reply.statfs(blocks, bfree, bavail, files, ffree, bsize, namelen, bsize);
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _deadline = self.deadline();
        let r =
            name_str(name).and_then(|n| self.fs.create(parent.0, &n, mode, flags).map_err(errno));
        match r {
            Ok((a, fh)) => reply.created(
                &self.entry_ttl,
                &to_fuse(&a),
                Generation(0),
                FileHandle(fh),
                open_flags(flags),
            ),
            Err(e) => reply.error(e),
        }
    }
}

/// Write-only handles bypass the kernel's page cache (`FOPEN_DIRECT_IO`): the
/// writer's bytes go straight from its buffer to the daemon, instead of being
/// copied into freshly allocated cache pages that nobody reads.
fn open_flags(flags: i32) -> FopenFlags {
    if flags & libc::O_ACCMODE == libc::O_WRONLY {
        FopenFlags::FOPEN_DIRECT_IO
    } else {
        FopenFlags::empty()
    }
}
