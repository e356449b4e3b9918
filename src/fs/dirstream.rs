//! Directory reads that start before the listing is complete.
//!
//! Design: `opendir` of a directory that is not cached starts its listing on a
//! thread of its own and returns at once. Entries go into a [`DirStream`] as the
//! server sends them (MLSD lines are parsed one at a time), and `readdir` hands out
//! whatever has arrived, waiting only when it has caught up. A program reading a
//! large directory (`ls -l` of 100,000 entries: the kernel builds an inode per
//! entry, ls stats each) thus does its per-entry work while the rest of the listing
//! is still on the wire, instead of after it.
//!
//! Offsets are positions in the stream (the server's order, duplicate names
//! dropped), so they stay valid for the handle whatever happens to the cache. When
//! the listing completes it goes into the listing cache (through a fill ticket, so a
//! directory changed meanwhile is not cached stale); until then, lookups in that
//! directory wait for it instead of listing it a second time. A failed listing
//! fails the `readdir` that reaches the missing part, with the listing's errno.
//! When complete, the entries move (no copy) into the [`Entries`] that the cache
//! shares; a directory already cached is read from a stream sharing the cached
//! entries (a snapshot: an edit of the cache copies them, so offsets never move).

use super::entries::Entries;
use crate::ftp::RemoteEntry;
use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Entries between wake-ups of a waiting reader (one FUSE reply holds fewer)...
const NOTIFY_EVERY: usize = 64;
/// ...and the longest a reader waits while fewer have come (a slow server).
const WAIT_AT_MOST: Duration = Duration::from_millis(10);

pub struct DirStream {
    state: Mutex<State>,
    grown: Condvar,
}

struct State {
    /// While the listing streams in (not indexed by name yet).
    entries: Entries,
    /// Once complete: the entries, shared with the cache.
    shared: Option<Arc<Entries>>,
    /// Hash of each name so far, to drop duplicates while the listing streams in
    /// (a repeated hash, rare, is checked against the names themselves).
    names: HashSet<u64>,
    /// `Some` once the listing is over: `Err(errno)` if it failed.
    done: Option<Result<(), i32>>,
}

impl State {
    fn len(&self) -> usize {
        match &self.shared {
            Some(e) => e.len(),
            None => self.entries.len(),
        }
    }

    /// Copies of up to `BATCH` entries from position `at` on.
    fn batch(&self, at: usize) -> Vec<RemoteEntry> {
        match &self.shared {
            Some(e) => (at..e.len().min(at + BATCH))
                .filter_map(|i| e.at(i))
                .collect(),
            None => (at..self.entries.len().min(at + BATCH))
                .filter_map(|i| self.entries.at(i))
                .collect(),
        }
    }
}

fn name_hash(name: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(name)
}

impl DirStream {
    /// A stream reading a complete listing.
    pub fn complete(entries: Arc<Entries>) -> Arc<Self> {
        Arc::new(DirStream {
            state: Mutex::new(State {
                entries: Entries::default(),
                shared: Some(entries),
                names: HashSet::new(),
                done: Some(Ok(())),
            }),
            grown: Condvar::new(),
        })
    }

    /// An empty stream that a listing will fill ([`DirStream::push`], then
    /// [`DirStream::finish`]).
    pub fn filling() -> Arc<Self> {
        Arc::new(DirStream {
            state: Mutex::new(State {
                entries: Entries::default(),
                shared: None,
                names: HashSet::new(),
                done: None,
            }),
            grown: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    /// Adds an entry that just arrived (ignored if its name came before).
    pub fn push(&self, e: RemoteEntry) {
        let mut guard = self.lock();
        let st = &mut *guard;
        if st.done.is_some() {
            return;
        }
        if !st.names.insert(name_hash(&e.name))
            && (0..st.entries.len())
                .any(|i| st.entries.kind_at(i).is_some_and(|(n, _)| n == e.name))
        {
            return; // a broken server listed it twice
        }
        st.entries.push(e);
        if st.entries.len() % NOTIFY_EVERY == 0 {
            self.grown.notify_all();
        }
    }

    /// The listing has come in completely: frees what only streaming needed (the
    /// duplicate index, spare capacity), then runs `f` over the entries (to fill
    /// the cache without an intermediate copy). Readers wait for [`DirStream::finish`].
    pub fn input_complete(&self, f: impl FnOnce(Entries) -> Arc<Entries>) {
        let mut st = self.lock();
        st.names = HashSet::new();
        let entries = std::mem::take(&mut st.entries);
        st.shared = Some(f(entries));
    }

    /// Ends the listing and wakes every reader.
    pub fn finish(&self, result: Result<(), i32>) {
        let mut st = self.lock();
        st.done = Some(result);
        st.names = HashSet::new();
        self.grown.notify_all();
    }

    /// Waits until the listing is over; its result (`ETIMEDOUT` when the
    /// operation's deadline passes first).
    pub fn wait_done(&self) -> Result<(), i32> {
        let mut st = self.lock();
        loop {
            if let Some(r) = st.done {
                return r;
            }
            st = self.wait(st)?;
        }
    }

    /// One wait for more entries, bounded by the operation's deadline.
    fn wait<'a>(
        &'a self,
        st: std::sync::MutexGuard<'a, State>,
    ) -> Result<std::sync::MutexGuard<'a, State>, i32> {
        if crate::deadline::expired() {
            return Err(libc::ETIMEDOUT);
        }
        Ok(self
            .grown
            .wait_timeout(st, crate::deadline::bound(WAIT_AT_MOST))
            .unwrap_or_else(|p| p.into_inner())
            .0)
    }

    /// Calls `f(position, entry)` for the entries from `index` on, in order, until
    /// it returns true (the reply is full) or the entries that have arrived run out;
    /// waits first if none from `index` on has arrived yet (bounded by the
    /// operation's deadline: `ETIMEDOUT`). Nothing is called at the end of a
    /// complete listing; `Err(errno)` if the listing failed before `index`. `f`
    /// runs outside the stream's lock, on copies taken `BATCH` at a time, so the
    /// listing goes on arriving meanwhile.
    pub fn read_from(
        &self,
        index: usize,
        mut f: impl FnMut(usize, &RemoteEntry) -> bool,
    ) -> Result<(), i32> {
        let mut at = index;
        loop {
            let batch: Vec<RemoteEntry> = {
                let mut st = self.lock();
                while st.len() <= at {
                    if at > index {
                        return Ok(()); // handed out what had arrived
                    }
                    match st.done {
                        Some(r) => return r,
                        None => st = self.wait(st)?,
                    }
                }
                st.batch(at)
            };
            for e in &batch {
                if f(at, e) {
                    return Ok(());
                }
                at += 1;
            }
        }
    }
}

/// Entries copied out of the lock at a time by [`DirStream::read_from`].
const BATCH: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> RemoteEntry {
        RemoteEntry::test_file(name)
    }

    /// One read: what has arrived from `index` on (waits for the first).
    fn names_from(s: &DirStream, index: usize) -> Result<Vec<String>, i32> {
        let mut v = Vec::new();
        s.read_from(index, |_, e| {
            v.push(e.name.clone());
            false
        })?;
        Ok(v)
    }

    /// Reads until the end of the listing, as readdir calls do.
    fn all_from(s: &DirStream, index: usize) -> Result<Vec<String>, i32> {
        let mut v = Vec::new();
        loop {
            let more = names_from(s, index + v.len())?;
            if more.is_empty() {
                return Ok(v);
            }
            v.extend(more);
        }
    }

    #[test]
    fn a_reader_gets_entries_while_the_listing_streams_in() {
        let s = DirStream::filling();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = {
            let s = s.clone();
            std::thread::spawn(move || {
                let first = names_from(&s, 0).unwrap();
                tx.send(first.len()).unwrap();
                let rest = all_from(&s, first.len()).unwrap();
                (first, rest)
            })
        };
        for i in 0..NOTIFY_EVERY {
            s.push(entry(&format!("f{i}")));
        }
        // The reader got the first batch before the listing is over.
        let got = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(got >= 1, "entries handed out before the listing is over");
        s.push(entry("f0")); // a duplicate from a broken server is dropped
        s.push(entry("last"));
        let mut n = 0;
        s.input_complete(|mut e| {
            n = e.len();
            e.seal();
            Arc::new(e)
        });
        assert_eq!(n, NOTIFY_EVERY + 1);
        s.finish(Ok(()));
        let (first, rest) = reader.join().unwrap();
        assert_eq!(first.len() + rest.len(), NOTIFY_EVERY + 1);
        assert_eq!(rest.last().map(String::as_str), Some("last"));
        assert_eq!(
            names_from(&s, NOTIFY_EVERY + 1).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_failed_listing_fails_only_past_what_arrived() {
        let s = DirStream::filling();
        s.push(entry("a"));
        s.finish(Err(libc::EIO));
        assert_eq!(names_from(&s, 0).unwrap(), vec!["a".to_string()]);
        assert_eq!(names_from(&s, 1), Err(libc::EIO));
        assert_eq!(s.wait_done(), Err(libc::EIO));
    }

    #[test]
    fn reading_stops_when_the_reply_is_full() {
        let s = DirStream::complete(Arc::new(Entries::from_vec(vec![
            entry("a"),
            entry("b"),
            entry("c"),
        ])));
        let mut seen = Vec::new();
        s.read_from(1, |i, e| {
            seen.push((i, e.name.clone()));
            true
        })
        .unwrap();
        assert_eq!(seen, vec![(1, "b".to_string())]);
    }
}
