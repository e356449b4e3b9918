//! The metadata cache: directory listings by path, at most `capacity` of them (LRU),
//! each trusted for `ttl`. Lookups and getattr are answered from the listing of the
//! parent, so one MLSD/LIST serves a whole `ls -l`. The mount's own changes edit the
//! cached listings at once, so it sees its own writes, deletes and renames.
//!
//! A listing fetched from the server goes in through a fill ticket
//! ([`DirCache::begin_fill`] / [`DirCache::finish_fill`]): if the mount changed that
//! directory while the listing was on the wire, the server's answer may or may not
//! include the change, so it is used once but not cached.
//!
//! Times never go backwards because a listing is coarser than what the mount knew:
//! LIST gives minutes (dates only for older files), MLSD and MDTM whole seconds,
//! while the mount's own changes are timed to the nanosecond. A new listing's time
//! that is the old one cut to its own precision keeps the old one
//! ([`keep_finer_times`]); an expired listing (unless huge) therefore stays in the
//! LRU until the next listing of its directory replaces it.

pub use super::entries::Entries;
use crate::ftp::{EntryKind, RemoteEntry};
use lru::LruCache;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Expired listings of at most this many entries are kept until the next listing
/// of their directory, to carry their finer times over.
const STALE_KEPT_MAX: usize = 65_536;

struct Listing {
    fetched: Instant,
    entries: Arc<Entries>,
}

pub struct DirCache {
    lru: Mutex<LruCache<String, Listing>>,
    ttl: Duration,
    /// Directories being listed: (listings in flight, changes seen meanwhile).
    fills: Mutex<HashMap<String, (usize, u64)>>,
}

/// A listing being fetched (see [`DirCache::begin_fill`]).
pub struct FillTicket {
    dir: String,
    changes_at_start: u64,
}

impl DirCache {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        let cap = NonZeroUsize::new(capacity.max(1)).unwrap_or(NonZeroUsize::MIN);
        DirCache {
            lru: Mutex::new(LruCache::new(cap)),
            ttl,
            fills: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<String, Listing>> {
        crate::sync::lock(&self.lru)
    }

    /// The listing of `dir` if cached and fresh.
    pub fn get(&self, dir: &str) -> Option<Arc<Entries>> {
        let mut lru = self.lock();
        match lru.get(dir) {
            Some(l) if l.fetched.elapsed() < self.ttl => Some(l.entries.clone()),
            Some(l) if l.entries.len() <= STALE_KEPT_MAX => None,
            Some(_) => {
                lru.pop(dir);
                None
            }
            None => None,
        }
    }

    fn fills(&self) -> std::sync::MutexGuard<'_, HashMap<String, (usize, u64)>> {
        crate::sync::lock(&self.fills)
    }

    /// Notes that a listing of `dir` is being fetched from the server.
    pub fn begin_fill(&self, dir: &str) -> FillTicket {
        let mut fills = self.fills();
        let e = fills.entry(dir.to_string()).or_insert((0, 0));
        e.0 += 1;
        FillTicket {
            dir: dir.to_string(),
            changes_at_start: e.1,
        }
    }

    /// The fetched listing: cached unless the mount changed the directory since
    /// `begin_fill`.
    pub fn finish_fill(&self, ticket: FillTicket, mut entries: Entries) -> Arc<Entries> {
        entries.seal();
        self.keep_finer_times(&ticket.dir, &mut entries);
        if self.end_fill(&ticket) {
            self.put_entries(&ticket.dir, entries)
        } else {
            log::debug!(
                "listing of {} changed while it was fetched: used once, not cached",
                ticket.dir
            );
            Arc::new(entries)
        }
    }

    /// The fetch failed: nothing to cache.
    pub fn abandon_fill(&self, ticket: FillTicket) {
        self.end_fill(&ticket);
    }

    /// Releases a ticket; true when the directory did not change meanwhile.
    fn end_fill(&self, ticket: &FillTicket) -> bool {
        let mut fills = self.fills();
        let (changes, last) = match fills.get_mut(&ticket.dir) {
            Some(e) => {
                e.0 -= 1;
                (e.1, e.0 == 0)
            }
            None => (ticket.changes_at_start, false),
        };
        if last {
            fills.remove(&ticket.dir);
        }
        changes == ticket.changes_at_start
    }

    /// Fetches the listing of `dir` with `list` through a fill ticket.
    pub fn fill<E>(
        &self,
        dir: &str,
        list: impl FnOnce() -> Result<Vec<RemoteEntry>, E>,
    ) -> Result<Arc<Entries>, E> {
        let ticket = self.begin_fill(dir);
        match list() {
            Ok(entries) => Ok(self.finish_fill(ticket, Entries::from_vec(entries))),
            Err(e) => {
                self.abandon_fill(ticket);
                Err(e)
            }
        }
    }

    /// Counts a change of `dir` for listings of it in flight.
    fn changed(&self, dir: &str) {
        if let Some(e) = self.fills().get_mut(dir) {
            e.1 += 1;
        }
    }

    /// Gives `entries` the finer times of the listing of `dir` the cache holds
    /// (fresh or expired) where theirs are those times cut to a coarser precision.
    fn keep_finer_times(&self, dir: &str, entries: &mut Entries) {
        let Some(old) = self.lock().peek(dir).map(|l| l.entries.clone()) else {
            return;
        };
        for i in 0..entries.len() {
            let Some(new) = entries.mtime_at(i).filter(|&t| is_whole_second(t)) else {
                continue;
            };
            let Some(e) = entries.at(i) else { continue };
            let Some(o) = old.get(&e.name) else { continue };
            if o.kind != e.kind || (e.kind == EntryKind::File && o.size != e.size) {
                continue;
            }
            if let Some(finer) = o.mtime.filter(|&old| agrees(new, old)) {
                entries.set_mtime_at(i, Some(finer));
            }
        }
    }

    pub fn put(&self, dir: &str, entries: Vec<RemoteEntry>) -> Arc<Entries> {
        self.put_entries(dir, Entries::from_vec(entries))
    }

    fn put_entries(&self, dir: &str, entries: Entries) -> Arc<Entries> {
        let arc = Arc::new(entries);
        self.lock().put(
            dir.to_string(),
            Listing {
                fetched: Instant::now(),
                entries: arc.clone(),
            },
        );
        arc
    }

    /// Applies the mount's own change to a cached listing (if cached).
    pub fn edit(&self, dir: &str, f: impl FnOnce(&mut Entries)) {
        self.changed(dir);
        if let Some(l) = self.lock().peek_mut(dir) {
            f(Arc::make_mut(&mut l.entries));
        }
    }

    /// Drops `dir` and every cached listing below it.
    pub fn invalidate_tree(&self, dir: &str) {
        let prefix = format!("{dir}/");
        for (d, e) in self.fills().iter_mut() {
            if d == dir || d.starts_with(&prefix) {
                e.1 += 1;
            }
        }
        let mut lru = self.lock();
        let keys: Vec<String> = lru
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|k| k == dir || k.starts_with(&prefix))
            .collect();
        for k in keys {
            lru.pop(&k);
        }
    }

    /// Makes every cached listing expired, as `ttl` after it was fetched.
    #[cfg(test)]
    pub fn expire_all(&self) {
        let mut lru = self.lock();
        for (_, l) in lru.iter_mut() {
            if let Some(t) = l.fetched.checked_sub(self.ttl) {
                l.fetched = t;
            }
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }
}

fn is_whole_second(t: SystemTime) -> bool {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .is_ok_and(|d| d.subsec_nanos() == 0)
}

/// True when `coarse` is `fine` cut to `coarse`'s own precision: whole days
/// (midnight), minutes, or seconds, judged by which of them `coarse` falls on.
fn agrees(coarse: SystemTime, fine: SystemTime) -> bool {
    let (Ok(c), Ok(f)) = (
        coarse.duration_since(SystemTime::UNIX_EPOCH),
        fine.duration_since(SystemTime::UNIX_EPOCH),
    ) else {
        return false;
    };
    if c.subsec_nanos() != 0 || f <= c {
        return false;
    }
    let unit = match c.as_secs() {
        s if s % 86_400 == 0 => 86_400,
        s if s % 60 == 0 => 60,
        _ => 1,
    };
    f.as_secs() / unit * unit == c.as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> RemoteEntry {
        RemoteEntry::test_file(name)
    }

    #[test]
    fn expiry_capacity_and_edits() {
        let c = DirCache::new(2, Duration::from_millis(50));
        c.put("/a", vec![entry("x")]);
        c.put("/b", vec![]);
        c.put("/c", vec![]);
        assert!(c.get("/a").is_none(), "evicted by LRU");
        assert_eq!(c.len(), 2);
        c.edit("/b", |e| {
            e.insert("new".into(), entry("new"));
        });
        assert!(c.get("/b").is_some_and(|e| e.contains_key("new")));
        std::thread::sleep(Duration::from_millis(60));
        assert!(c.get("/b").is_none(), "expired");
        c.put("/d", vec![]);
        c.put("/d/e", vec![]);
        c.invalidate_tree("/d");
        assert!(c.get("/d").is_none() && c.get("/d/e").is_none());
    }

    #[test]
    fn coarse_listing_times_never_move_a_finer_time_backwards() {
        let at = |s: u64, ns: u32| SystemTime::UNIX_EPOCH + Duration::new(s, ns);
        let dir = |name: &str, t| RemoteEntry {
            kind: EntryKind::Dir,
            mtime: Some(t),
            ..entry(name)
        };
        let file = |name: &str, size, t| RemoteEntry {
            size,
            mtime: Some(t),
            ..entry(name)
        };
        let c = DirCache::new(8, Duration::from_millis(30));
        // 12:14:21.5 on 2026-12-01 (a minute starts at ...20, a day at ...00).
        let fine = at(1_796_127_261, 500_000_000);
        c.put(
            "/",
            vec![
                dir("d", fine),
                file("f", 5, fine),
                file("g", 5, fine),
                file("h", 5, fine),
                dir("old", at(1_796_127_261, 0)),
            ],
        );
        std::thread::sleep(Duration::from_millis(40));
        assert!(c.get("/").is_none(), "expired");
        let t = c.begin_fill("/");
        let l = c.finish_fill(
            t,
            Entries::from_vec(vec![
                dir("d", at(1_796_127_240, 0)),     // LIST: minutes
                file("f", 5, at(1_796_127_261, 0)), // MDTM: seconds
                file("g", 6, at(1_796_127_240, 0)), // changed size: the server's
                file("h", 5, at(1_796_127_300, 0)), // a later minute: the server's
                dir("old", at(1_796_083_200, 0)),   // a date: midnight
            ]),
        );
        let m = |n: &str| l.get(n).and_then(|e| e.mtime);
        assert_eq!(m("d"), Some(fine));
        assert_eq!(m("f"), Some(fine));
        assert_eq!(m("g"), Some(at(1_796_127_240, 0)));
        assert_eq!(m("h"), Some(at(1_796_127_300, 0)));
        assert_eq!(m("old"), Some(at(1_796_127_261, 0)));
    }

    #[test]
    fn a_listing_changed_while_fetched_is_used_but_not_cached() {
        let c = DirCache::new(8, Duration::from_secs(60));
        let t = c.begin_fill("/a");
        let got = c.finish_fill(t, Entries::from_vec(vec![entry("x")]));
        assert!(got.contains_key("x"));
        assert!(c.get("/a").is_some(), "unchanged: cached");

        let t = c.begin_fill("/b");
        let other = c.begin_fill("/c");
        c.edit("/b", |_| {});
        let got = c.finish_fill(t, Entries::from_vec(vec![entry("y")]));
        assert!(
            got.contains_key("y"),
            "the caller still gets the server's answer"
        );
        assert!(c.get("/b").is_none(), "changed meanwhile: not cached");
        c.finish_fill(other, Entries::default());
        assert!(c.get("/c").is_some(), "a change elsewhere does not count");

        let t = c.begin_fill("/d/e");
        c.invalidate_tree("/d");
        c.finish_fill(t, Entries::default());
        assert!(
            c.get("/d/e").is_none(),
            "tree invalidation counts for subdirectories"
        );
        c.abandon_fill(c.begin_fill("/f"));
        assert!(c.get("/f").is_none());
        assert!(c.fills().is_empty(), "no ticket left behind");
    }
}
