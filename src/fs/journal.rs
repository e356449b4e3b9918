//! The write journal: what a crash of the daemon, the machine or the server must
//! not lose track of, kept in `spool_dir/journal/` beside the spool files.
//!
//! Design: each spool that holds data not yet on the server has one small text
//! record (`<spool file name>.rec`) saying which remote file it belongs to, what
//! the server had under that name when writing began (`base`), whether the program
//! had finished writing (`closed`: close() or fsync() was called, with the length
//! it then had), and which remote name an upload may have left incomplete
//! (`partial`: a temporary `.part` name, or the file's own name where uploads go
//! straight to it: `inplace`, or a server without rename). The record is written when a file becomes dirty,
//! rewritten durably (fdatasync, and the directory on first write) before any
//! upload starts, and removed once the server holds the complete file. Records of
//! a live mount are never touched by another: each mount holds an `flock` on its
//! owner file, and records name their owner.
//!
//! [`recover`] runs when a mount starts: for every record of the same site whose
//! owner is gone, it removes the incomplete remote name the crash left, then
//! finishes the upload when the program had finished writing, the spool is whole
//! and from this boot (the page cache of a previous boot may not have reached the
//! disk), and the server file is unchanged since; if the server file changed, the
//! local version goes to a clearly named sibling instead. Anything else is kept in
//! `spool_dir/recovered/` and reported. Every outcome is one line of the report.

use super::spool::Spool;
use super::store::{join, split, RemoteStore};
use super::uploader::{self, no_journal, Target};
use crate::ftp::EntryKind;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const MAGIC: &str = "ftpsfs-journal 1";

/// What the server had under a name when writing began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    Absent,
    /// Size, and modification time in seconds since the epoch when known.
    Present(u64, Option<u64>),
}

/// The content of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub site: String,
    pub owner: String,
    pub boot: String,
    pub path: String,
    pub base: Base,
    /// The program finished writing: `Some(length)` it had then.
    pub closed: Option<u64>,
    /// A remote name that may hold an incomplete upload.
    pub partial: Option<String>,
    /// The spool dropped the start of the file (a bounded stream, see
    /// `uploader.rs`): it is not a whole copy and cannot be uploaded.
    pub dropped: bool,
}

impl Entry {
    fn render(&self) -> String {
        let base = match self.base {
            Base::Absent => "absent".to_string(),
            Base::Present(size, Some(t)) => format!("{size} {t}"),
            Base::Present(size, None) => format!("{size} -"),
        };
        let mut s = format!(
            "{MAGIC}\nsite {}\nowner {}\nboot {}\npath {}\nbase {base}\n",
            self.site, self.owner, self.boot, self.path
        );
        if let Some(n) = self.closed {
            s.push_str(&format!("closed {n}\n"));
        }
        if let Some(p) = &self.partial {
            s.push_str(&format!("partial {p}\n"));
        }
        if self.dropped {
            s.push_str("dropped\n");
        }
        s.push_str("end\n");
        s
    }

    /// Parses a record; None when it is not a whole record (torn by a crash).
    fn parse(text: &str) -> Option<Entry> {
        let mut lines = text.split('\n');
        if lines.next()? != MAGIC {
            return None;
        }
        let (mut site, mut owner, mut boot, mut path, mut base) = (None, None, None, None, None);
        let (mut closed, mut partial, mut ended) = (None, None, false);
        let mut dropped = false;
        for line in lines {
            let (key, value) = line.split_once(' ').unwrap_or((line, ""));
            match key {
                "site" => site = Some(value.to_string()),
                "owner" => owner = Some(value.to_string()),
                "boot" => boot = Some(value.to_string()),
                "path" => path = Some(value.to_string()),
                "base" if value == "absent" => base = Some(Base::Absent),
                "base" => {
                    let (size, t) = value.split_once(' ')?;
                    base = Some(Base::Present(size.parse().ok()?, t.parse().ok()));
                }
                "closed" => closed = Some(value.parse().ok()?),
                "partial" => partial = Some(value.to_string()),
                "dropped" => dropped = true,
                "end" => {
                    ended = true;
                    break;
                }
                _ => {}
            }
        }
        if !ended {
            return None;
        }
        Some(Entry {
            site: site?,
            owner: owner?,
            boot: boot?,
            path: path?,
            base: base?,
            closed,
            partial,
            dropped,
        })
    }
}

/// This machine's boot, to tell a daemon crash (the page cache survived) from a
/// machine crash.
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn secs(t: SystemTime) -> Option<u64> {
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// A mount's journal: its directory, its site and its owner lock.
pub struct Journal {
    dir: PathBuf,
    site: String,
    owner: String,
    boot: String,
    /// Held (flock) while the mount lives.
    _owner_lock: Option<File>,
    /// The directory entry of a new record reached the disk.
    dir_synced: AtomicBool,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("dir", &self.dir).finish()
    }
}

impl Journal {
    /// Opens (creating) `spool_dir/journal` for `site` (`user@host:port`) and
    /// takes this mount's owner lock.
    pub fn open(spool_dir: &Path, site: &str) -> std::io::Result<Journal> {
        let dir = spool_dir.join("journal");
        std::fs::create_dir_all(&dir)?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let owner = format!("{}-{nanos}", std::process::id());
        let lock = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(dir.join(format!("owner-{owner}.lock")))?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Journal {
            dir,
            site: site.to_string(),
            owner,
            boot: boot_id(),
            _owner_lock: Some(lock),
            dir_synced: AtomicBool::new(false),
        })
    }

    /// A new record for the spool at `spool` holding data for `path`.
    pub fn record(&self, spool: &Path, path: &str, base: Base) -> Record {
        let name = spool
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "spool".into());
        Record {
            file: self.dir.join(format!("{name}.rec")),
            entry: Entry {
                site: self.site.clone(),
                owner: self.owner.clone(),
                boot: self.boot.clone(),
                path: path.to_string(),
                base,
                closed: None,
                partial: None,
                dropped: false,
            },
            written: false,
        }
    }

    /// Tests: lets go of the owner lock as a crashed process would.
    #[cfg(test)]
    pub fn drop_owner_lock(&mut self) {
        self._owner_lock = None;
    }

    fn sync_dir(&self) {
        if self.dir_synced.swap(true, Ordering::Relaxed) {
            return;
        }
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
    }
}

/// The base of a remote entry, for a record.
pub fn base_of(e: Option<&crate::ftp::RemoteEntry>) -> Base {
    match e {
        Some(e) => Base::Present(e.size, e.mtime.and_then(secs)),
        None => Base::Absent,
    }
}

/// One spool's record; removed from disk when dropped unless [`Record::keep`].
#[derive(Debug)]
pub struct Record {
    file: PathBuf,
    entry: Entry,
    written: bool,
}

impl Record {
    pub fn entry(&self) -> &Entry {
        &self.entry
    }

    /// Writes the record; `durable` waits until it is on the disk.
    pub fn write(&mut self, journal: &Journal, durable: bool) -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&self.file)?;
        f.write_all(self.entry.render().as_bytes())?;
        if durable {
            f.sync_data()?;
            journal.sync_dir();
        }
        self.written = true;
        Ok(())
    }

    /// The program finished writing `len` bytes (when `closed`), and an upload may
    /// now leave `partial` incomplete. Durable (on the disk before the upload's
    /// first byte) when `partial` is the file's own name, which only the journal can
    /// tell from a complete file after a machine crash; a temporary name is only
    /// litter then, and the record is written without waiting for the disk.
    pub fn uploading(
        &mut self,
        journal: &Journal,
        closed: Option<u64>,
        partial: &str,
    ) -> std::io::Result<()> {
        if closed.is_some() {
            self.entry.closed = closed;
        }
        self.entry.partial = Some(partial.to_string());
        let durable = partial == self.entry.path;
        self.write(journal, durable)
    }

    /// The spool is about to drop the start of the file: durable first, so that
    /// recovery never uploads a spool with holes.
    pub fn dropping(&mut self, journal: &Journal) -> std::io::Result<()> {
        self.entry.dropped = true;
        self.write(journal, true)
    }

    /// The spool is a whole copy again.
    pub fn restored(&mut self, journal: &Journal) -> std::io::Result<()> {
        self.entry.dropped = false;
        self.write(journal, false)
    }

    /// Keeps the record on disk (a crash or a shutdown with unfinished data): the
    /// next mount's recovery reads it.
    pub fn keep(mut self) {
        self.written = false;
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        if self.written {
            let _ = std::fs::remove_file(&self.file);
        }
    }
}

/// True when the owner's lock file is gone or nobody holds its lock.
fn owner_gone(dir: &Path, owner: &str) -> bool {
    let Ok(f) = File::open(dir.join(format!("owner-{owner}.lock"))) else {
        return true;
    };
    // SAFETY: flock on a descriptor this function owns; released when f closes.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Where unfinished data is kept for the user: `spool_dir/recovered/`.
fn keep_for_user(spool_dir: &Path, spool: &Path, path: &str) -> Option<PathBuf> {
    let dir = spool_dir.join("recovered");
    std::fs::create_dir_all(&dir).ok()?;
    let name = split(path).map_or("file", |(_, n)| n);
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let to = dir.join(format!("{name}.{stamp}"));
    std::fs::rename(spool, &to).ok()?;
    Some(to)
}

/// The server's entry for `path` now (None: absent). Err when it cannot be asked.
fn remote_entry(
    store: &dyn RemoteStore,
    path: &str,
) -> super::error::StoreResult<Option<crate::ftp::RemoteEntry>> {
    let Some((dir, name)) = split(path) else {
        return Ok(None);
    };
    Ok(store.list(dir)?.into_iter().find(|e| e.name == name))
}

/// True when the server's `path` holds exactly the first `len` bytes of the local
/// file `spool` (read and compared as they arrive; recovery only).
fn same_content(store: &dyn RemoteStore, path: &str, spool: &Path, len: u64) -> bool {
    use std::os::unix::fs::FileExt;
    let Ok(f) = File::open(spool) else {
        return false;
    };
    let mut at = 0u64;
    let mut same = true;
    let mut local = Vec::new();
    let read = store.read_from(path, 0, &mut |chunk| {
        local.resize(chunk.len(), 0);
        if at + chunk.len() as u64 > len || f.read_exact_at(&mut local, at).is_err() {
            same = false;
            return false;
        }
        same = local == chunk;
        at += chunk.len() as u64;
        same
    });
    read.is_ok() && same && at == len
}

fn unchanged(base: Base, now: Option<&crate::ftp::RemoteEntry>) -> bool {
    match (base, now) {
        (Base::Absent, None) => true,
        (Base::Present(size, t), Some(e)) if e.kind == EntryKind::File && e.size == size => {
            match (t, e.mtime.and_then(secs)) {
                // Listings carry whole seconds; a time the mount set itself may be
                // off by the clocks' difference within a second.
                (Some(a), Some(b)) => a.abs_diff(b) <= 2,
                _ => true,
            }
        }
        _ => false,
    }
}

/// Finishes or reports what crashed mounts of `site` left in `spool_dir`; returns
/// one line per record handled, for the mount's stderr and log.
pub fn recover(spool_dir: &Path, site: &str, store: &dyn RemoteStore) -> Vec<String> {
    let dir = spool_dir.join("journal");
    let Ok(read) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let boot = boot_id();
    let mut report = Vec::new();
    let mut files: Vec<PathBuf> = read
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "rec"))
        .collect();
    files.sort();
    for rec in files {
        let Ok(text) = std::fs::read_to_string(&rec) else {
            continue;
        };
        let spool = spool_dir.join(rec.file_stem().unwrap_or_default());
        let Some(e) = Entry::parse(&text) else {
            let kept = keep_for_user(spool_dir, &spool, "unknown");
            report.push(format!(
                "journal record {} is unreadable (torn by a crash); {}",
                rec.display(),
                kept.map_or("no data was kept".into(), |p| format!(
                    "its data is kept in {}",
                    p.display()
                ))
            ));
            let _ = std::fs::remove_file(&rec);
            continue;
        };
        if e.site != site || !owner_gone(&dir, &e.owner) {
            continue;
        }
        match recover_one(spool_dir, &spool, &e, &boot, store) {
            Ok(line) => {
                report.push(line);
                let _ = std::fs::remove_file(&rec);
            }
            Err(line) => report.push(line),
        }
    }
    // Owner files of mounts that are gone and own no record any more.
    if let Ok(read) = std::fs::read_dir(&dir) {
        let live_owners: Vec<String> = read
            .flatten()
            .filter_map(|f| {
                let name = f.file_name().to_string_lossy().into_owned();
                name.strip_prefix("owner-")
                    .and_then(|o| o.strip_suffix(".lock"))
                    .map(str::to_string)
            })
            .collect();
        let still_referenced: Vec<String> = std::fs::read_dir(&dir)
            .map(|r| {
                r.flatten()
                    .filter_map(|f| std::fs::read_to_string(f.path()).ok())
                    .filter_map(|t| Entry::parse(&t).map(|e| e.owner))
                    .collect()
            })
            .unwrap_or_default();
        for o in live_owners {
            if owner_gone(&dir, &o) && !still_referenced.contains(&o) {
                let _ = std::fs::remove_file(dir.join(format!("owner-{o}.lock")));
            }
        }
    }
    report
}

/// Ok(report line) when the record is dealt with (removed); Err(line) when it must
/// stay for the next mount (the server could not be reached).
fn recover_one(
    spool_dir: &Path,
    spool: &Path,
    e: &Entry,
    boot: &str,
    store: &dyn RemoteStore,
) -> std::result::Result<String, String> {
    let path = &e.path;
    let spool_len = std::fs::metadata(spool).ok().map(|m| m.len());
    let whole = e.closed.is_some() && e.closed == spool_len && e.boot == boot && !e.dropped;
    let retry_later = |what: &str, err: &dyn std::fmt::Display| {
        format!("{path}: could not {what} ({err}); the journal keeps it for the next mount")
    };
    // 1. The incomplete remote name a crash may have left.
    let mut partial_note = String::new();
    let mut in_place_left = false;
    if let Some(p) = &e.partial {
        if p != path {
            match store.delete(p) {
                Ok(()) => partial_note = format!("; removed the incomplete upload {p}"),
                Err(err) if err.is_refusal() => {} // never created
                Err(err) => return Err(retry_later("remove the incomplete upload", &err)),
            }
        } else if !whole && e.base != Base::Absent {
            // Replaced in place (a server without rename) and not finished: the old
            // content is gone already; what is there is left as it is, and said.
            in_place_left = true;
        } else if !whole {
            // A new file uploaded straight to its name (a server without rename):
            // what is there is ours and
            // incomplete, unless someone else has written a larger file since.
            match remote_entry(store, p) {
                // As long as the program's finished file: the upload ended and only
                // the record's removal was lost (a machine crash): keep it.
                Ok(Some(r)) if e.closed == Some(r.size) => {
                    partial_note =
                        "; the name already holds a file of its full length, left as it is".into();
                }
                Ok(Some(r)) if r.kind == EntryKind::File && r.size <= spool_len.unwrap_or(0) => {
                    match store.delete(p) {
                        Ok(()) => partial_note = "; removed its incomplete upload".into(),
                        Err(err) => return Err(retry_later("remove the incomplete upload", &err)),
                    }
                }
                Ok(_) => {}
                Err(err) => return Err(retry_later("check the server", &err)),
            }
        }
    }
    if !whole {
        let why = if e.dropped {
            "its upload was streamed with a bounded spool (spool_window=), which keeps only the \
             end of the file, and was cut by the crash before the program's close() succeeded; \
             the data is lost"
        } else if e.closed.is_none() {
            "the program writing it had not finished (no close or fsync)"
        } else if e.boot != boot {
            "the machine restarted before the upload ended (the local copy is not trusted)"
        } else {
            "its local copy is missing or incomplete"
        };
        if e.dropped {
            // Only the end of the file, with a hole for its start: of no use.
            let _ = std::fs::remove_file(spool);
        }
        let kept = (spool_len.is_some() && !e.dropped)
            .then(|| keep_for_user(spool_dir, spool, path))
            .flatten();
        let server = if in_place_left {
            "the name holds an incomplete in-place upload (the server refuses renames), left as it is"
        } else {
            "the server keeps its previous content"
        };
        return Ok(format!(
            "{path}: not uploaded: {why}; {server}{partial_note}; {}",
            kept.map_or("no local data was left".into(), |k| format!(
                "the unfinished data is kept in {}",
                k.display()
            ))
        ));
    }
    // 2. The program had finished: upload, unless the server file changed.
    let now = match remote_entry(store, path) {
        Ok(n) => n,
        Err(err) => return Err(retry_later("check the server", &err)),
    };
    let ours_partial = e.partial.as_deref() == Some(path.as_str());
    if let (Some(n), Some(len)) = (&now, e.closed) {
        if n.size == len && same_content(store, path, spool, len) {
            let _ = std::fs::remove_file(spool);
            return Ok(format!(
                "{path}: the upload had completed before the crash ({len} bytes){partial_note}"
            ));
        }
    }
    // A name written in place (`inplace`, or a server without rename) holds our
    // own incomplete upload: the complete version goes over it.
    let target = if unchanged(e.base, now.as_ref()) || ours_partial {
        path.clone()
    } else {
        let (dir, name) = split(path).unwrap_or(("/", "file"));
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        join(dir, &format!("{name}.ftpsfs-recovered-{stamp}"))
    };
    let mut sp = match Spool::adopt(spool) {
        Ok(s) => s,
        Err(err) => return Err(retry_later("open the local copy", &err)),
    };
    // Through a temporary name: a crash during recovery leaves no prefix either.
    let mut uploaded = uploader::upload(store, &mut sp, &target, Target::Temp, &mut no_journal);
    if uploaded.as_ref().is_err_and(uploader::is_rename_refusal) {
        uploaded = uploader::upload(store, &mut sp, &target, Target::InPlace, &mut no_journal);
    }
    match uploaded {
        Ok(()) => {
            sp.discard();
            let _ = std::fs::remove_file(spool);
            let size = e.closed.unwrap_or(0);
            Ok(if target == *path {
                format!("{path}: finished the upload interrupted by a crash ({size} bytes){partial_note}")
            } else {
                format!(
                    "{path}: changed on the server since it was written here; the local version ({size} bytes) was uploaded as {target}{partial_note}"
                )
            })
        }
        Err(err) if err.is_refusal() => {
            // Refused for good (permissions, quota): hand the data to the user.
            sp.keep();
            sp.discard();
            let kept = keep_for_user(spool_dir, spool, path);
            Ok(format!(
                "{path}: the server refused the upload ({err}); its data is kept in {}",
                kept.map_or("(could not be kept)".into(), |k| k.display().to_string())
            ))
        }
        Err(err) => {
            sp.keep();
            sp.discard();
            Err(retry_later("finish the upload", &err))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_torn_ones_are_refused() {
        let e = Entry {
            site: "u@h:21".into(),
            owner: "1-2".into(),
            boot: "b".into(),
            path: "/d/a file".into(),
            base: Base::Present(12, Some(34)),
            closed: Some(99),
            partial: Some("/d/.a file.part".into()),
            dropped: false,
        };
        let text = e.render();
        assert_eq!(Entry::parse(&text), Some(e.clone()));
        assert_eq!(Entry::parse(&text[..text.len() - 4]), None, "torn");
        let dropped = Entry {
            dropped: true,
            ..e.clone()
        };
        assert_eq!(Entry::parse(&dropped.render()), Some(dropped));
        let absent = Entry {
            base: Base::Absent,
            closed: None,
            partial: None,
            ..e
        };
        assert_eq!(Entry::parse(&absent.render()), Some(absent));
    }
}
