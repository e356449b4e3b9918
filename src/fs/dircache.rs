//! The metadata cache: directory listings by path, at most `capacity` of them (LRU),
//! each trusted for `ttl`. Lookups and getattr are answered from the listing of the
//! parent, so one MLSD/LIST serves a whole `ls -l`. The mount's own changes edit the
//! cached listings at once, so it sees its own writes, deletes and renames.

use crate::ftp::RemoteEntry;
use lru::LruCache;
use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A directory's entries by name.
pub type Entries = BTreeMap<String, RemoteEntry>;

struct Listing {
    fetched: Instant,
    entries: Arc<Entries>,
}

pub struct DirCache {
    lru: Mutex<LruCache<String, Listing>>,
    ttl: Duration,
}

impl DirCache {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        let cap = NonZeroUsize::new(capacity.max(1)).unwrap_or(NonZeroUsize::MIN);
        DirCache {
            lru: Mutex::new(LruCache::new(cap)),
            ttl,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<String, Listing>> {
        self.lru.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The listing of `dir` if cached and fresh.
    pub fn get(&self, dir: &str) -> Option<Arc<Entries>> {
        let mut lru = self.lock();
        match lru.get(dir) {
            Some(l) if l.fetched.elapsed() < self.ttl => Some(l.entries.clone()),
            Some(_) => {
                lru.pop(dir);
                None
            }
            None => None,
        }
    }

    pub fn put(&self, dir: &str, entries: Vec<RemoteEntry>) -> Arc<Entries> {
        let map: Entries = entries.into_iter().map(|e| (e.name.clone(), e)).collect();
        let arc = Arc::new(map);
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
        if let Some(l) = self.lock().peek_mut(dir) {
            f(Arc::make_mut(&mut l.entries));
        }
    }

    pub fn invalidate(&self, dir: &str) {
        self.lock().pop(dir);
    }

    /// Drops `dir` and every cached listing below it.
    pub fn invalidate_tree(&self, dir: &str) {
        let prefix = format!("{dir}/");
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

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ftp::EntryKind;

    fn entry(name: &str) -> RemoteEntry {
        RemoteEntry {
            name: name.into(),
            kind: EntryKind::File,
            size: 1,
            mtime: None,
            mode: None,
            unique: None,
        }
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
}
