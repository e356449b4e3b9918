//! Lists directories ahead of a tree walker.
//!
//! Design: when a program reads a directory (opendir), its subdirectories are queued
//! here, and a few worker threads list them over their own pooled connections into
//! the listing cache. A walker such as `find`, `du`, `rsync` or `cp -r` then finds the
//! next directories already listed instead of paying a round trip per directory, one
//! after the other. Only one level is queued per directory actually read, so merely
//! listing the root does not crawl the whole site; the queue is bounded, and work for
//! a directory already cached or queued is skipped. A reader that needs a directory
//! being prefetched waits on a condition variable for it (bounded), and the workers
//! end when the prefetcher is dropped.

use super::dircache::DirCache;
use super::store::RemoteStore;
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Most directories waiting to be listed.
const MAX_QUEUED: usize = 4096;

#[derive(Default)]
struct Queue {
    waiting: VecDeque<String>,
    /// Waiting or being listed.
    known: HashSet<String>,
    /// The prefetcher is gone: workers end.
    stop: bool,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    /// Work queued, or stop.
    work: Condvar,
    /// A directory left `known` (listed, or failed).
    done: Condvar,
}

pub struct ListingPrefetcher {
    shared: Arc<Shared>,
    cache: Arc<DirCache>,
}

impl Drop for ListingPrefetcher {
    fn drop(&mut self) {
        crate::sync::lock(&self.shared.queue).stop = true;
        self.shared.work.notify_all();
    }
}

impl ListingPrefetcher {
    pub fn new(store: Arc<dyn RemoteStore>, cache: Arc<DirCache>, workers: usize) -> Self {
        let shared: Arc<Shared> = Arc::default();
        for _ in 0..workers {
            let q = shared.clone();
            let store = store.clone();
            let cache = cache.clone();
            let _ = std::thread::Builder::new()
                .name("ftpsfs-list".into())
                .spawn(move || loop {
                    let dir = {
                        let mut g = crate::sync::lock(&q.queue);
                        loop {
                            if g.stop {
                                return;
                            }
                            if let Some(d) = g.waiting.pop_front() {
                                break d;
                            }
                            g = q.work.wait(g).unwrap_or_else(|p| p.into_inner());
                        }
                    };
                    if cache.get(&dir).is_none() {
                        if let Err(e) = cache.fill(&dir, || store.list(&dir)) {
                            log::debug!("prefetching the listing of {dir}: {e}");
                        }
                    }
                    crate::sync::lock(&q.queue).known.remove(&dir);
                    q.done.notify_all();
                });
        }
        ListingPrefetcher { shared, cache }
    }

    /// Queues directories to be listed soon.
    pub fn queue(&self, dirs: impl IntoIterator<Item = String>) {
        let mut g = crate::sync::lock(&self.shared.queue);
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
            self.shared.work.notify_all();
        }
    }

    /// Waits (at most `limit`) while `dir` is queued or being listed; a reader
    /// that needs it now had better wait than list it a second time.
    pub fn wait_for(&self, dir: &str, limit: Duration) {
        let until = Instant::now() + limit;
        let mut g = crate::sync::lock(&self.shared.queue);
        while g.known.contains(dir) {
            let now = Instant::now();
            if now >= until {
                return;
            }
            g = self
                .shared
                .done
                .wait_timeout(g, until - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}
