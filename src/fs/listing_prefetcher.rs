//! Lists directories ahead of a tree walker.
//!
//! Design: when a program reads a directory (opendir), its subdirectories are queued
//! here, and a few worker threads list them over their own pooled connections into
//! the listing cache. A walker such as `find`, `du`, `rsync` or `cp -r` then finds the
//! next directories already listed instead of paying a round trip per directory, one
//! after the other. Only one level is queued per directory actually read, so merely
//! listing the root does not crawl the whole site; the queue is bounded, and work for
//! a directory already cached or queued is skipped.

use super::dircache::DirCache;
use super::store::RemoteStore;
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex};

/// Most directories waiting to be listed.
const MAX_QUEUED: usize = 4096;

#[derive(Default)]
struct Queue {
    waiting: VecDeque<String>,
    /// Waiting or being listed.
    known: HashSet<String>,
}

pub struct ListingPrefetcher {
    queue: Arc<(Mutex<Queue>, Condvar)>,
    cache: Arc<DirCache>,
}

impl ListingPrefetcher {
    pub fn new(store: Arc<dyn RemoteStore>, cache: Arc<DirCache>, workers: usize) -> Self {
        let queue: Arc<(Mutex<Queue>, Condvar)> = Arc::default();
        for _ in 0..workers {
            let q = queue.clone();
            let store = store.clone();
            let cache = cache.clone();
            let _ = std::thread::Builder::new()
                .name("ftpsfs-list".into())
                .spawn(move || loop {
                    let dir = {
                        let (m, cv) = &*q;
                        let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
                        loop {
                            if let Some(d) = g.waiting.pop_front() {
                                break d;
                            }
                            g = cv.wait(g).unwrap_or_else(|p| p.into_inner());
                        }
                    };
                    if cache.get(&dir).is_none() {
                        if let Err(e) = cache.fill(&dir, || store.list(&dir)) {
                            log::debug!("prefetching the listing of {dir}: {e}");
                        }
                    }
                    q.0.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .known
                        .remove(&dir);
                });
        }
        ListingPrefetcher { queue, cache }
    }

    /// Queues directories to be listed soon.
    pub fn queue(&self, dirs: impl IntoIterator<Item = String>) {
        let (m, cv) = &*self.queue;
        let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
        let mut added = false;
        for d in dirs {
            if g.waiting.len() >= MAX_QUEUED {
                break;
            }
            if g.known.contains(&d) || self.cache.get(&d).is_some() {
                continue;
            }
            g.known.insert(d.clone());
            g.waiting.push_back(d);
            added = true;
        }
        if added {
            cv.notify_all();
        }
    }

    /// True while a directory is queued or being listed (a reader that needs it now
    /// had better wait for it than list it a second time).
    pub fn is_pending(&self, dir: &str) -> bool {
        self.queue
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .known
            .contains(dir)
    }
}
