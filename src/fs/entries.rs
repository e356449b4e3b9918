//! A directory's entries, compact: one vector in the server's order plus a sorted
//! index of positions (4 bytes an entry) for lookups by name.
//!
//! Design: a listing is built once from the vector the listing arrived in (no
//! copy, no second key per name as a map would hold), shared through an `Arc` by
//! the cache and by every open directory handle reading it (a handle's offsets are
//! positions in that vector), and copied only when the mount edits a listing that
//! someone is still reading (`Arc::make_mut`). Lookups are binary searches; an edit
//! costs a move of the vector's tail, which is fine for the mount's own creates and
//! deletes. 1,000,000 entries take about as much memory as the entries themselves.

use crate::ftp::{EntryKind, RemoteEntry};

#[derive(Debug, Clone, Default)]
pub struct Entries {
    /// In the server's order (new entries at the end).
    items: Vec<RemoteEntry>,
    /// Positions in `items`, sorted by name.
    by_name: Vec<u32>,
    /// How many of the entries are directories (a directory's link count).
    dirs: u32,
}

fn is_dir(e: &RemoteEntry) -> bool {
    e.kind == EntryKind::Dir
}

impl Entries {
    /// The entries of `items`, keeping the first of names listed twice.
    pub fn from_vec(mut items: Vec<RemoteEntry>) -> Self {
        let mut by_name: Vec<u32> = (0..items.len() as u32).collect();
        by_name.sort_by(|a, b| {
            items[*a as usize]
                .name
                .cmp(&items[*b as usize].name)
                .then(a.cmp(b))
        });
        let duplicate = by_name
            .windows(2)
            .any(|w| items[w[0] as usize].name == items[w[1] as usize].name);
        if duplicate {
            // A broken server listed a name twice: keep its first entry.
            let mut keep = vec![true; items.len()];
            for w in by_name.windows(2) {
                if items[w[0] as usize].name == items[w[1] as usize].name {
                    keep[w[1] as usize] = false;
                }
            }
            let mut i = 0;
            items.retain(|_| {
                i += 1;
                keep[i - 1]
            });
            return Entries::from_vec(items);
        }
        items.shrink_to_fit();
        let dirs = items.iter().filter(|e| is_dir(e)).count() as u32;
        Entries {
            items,
            by_name,
            dirs,
        }
    }

    /// Where `name` is (Ok) or would go (Err) in `by_name`.
    fn find(&self, name: &str) -> Result<usize, usize> {
        self.by_name
            .binary_search_by(|i| self.items[*i as usize].name.as_str().cmp(name))
    }

    pub fn get(&self, name: &str) -> Option<&RemoteEntry> {
        let at = self.find(name).ok()?;
        self.items.get(self.by_name[at] as usize)
    }

    /// Changes the entry named `name` with `f` (its name must stay).
    pub fn update(&mut self, name: &str, f: impl FnOnce(&mut RemoteEntry)) {
        let Ok(at) = self.find(name) else {
            return;
        };
        let i = self.by_name[at] as usize;
        if let Some(e) = self.items.get_mut(i) {
            let was_dir = is_dir(e);
            f(e);
            self.dirs = self.dirs - u32::from(was_dir) + u32::from(is_dir(e));
        }
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.find(name).is_ok()
    }

    /// Adds or replaces the entry named `name` (its `name` field is set to it).
    pub fn insert(&mut self, name: String, mut e: RemoteEntry) -> Option<RemoteEntry> {
        e.name = name;
        self.dirs += u32::from(is_dir(&e));
        let old = match self.find(&e.name) {
            Ok(at) => {
                let i = self.by_name[at] as usize;
                Some(std::mem::replace(&mut self.items[i], e))
            }
            Err(at) => {
                self.by_name.insert(at, self.items.len() as u32);
                self.items.push(e);
                None
            }
        };
        self.dirs -= old.as_ref().map_or(0, |o| u32::from(is_dir(o)));
        old
    }

    pub fn remove(&mut self, name: &str) -> Option<RemoteEntry> {
        let at = self.find(name).ok()?;
        let i = self.by_name.remove(at);
        for p in &mut self.by_name {
            if *p > i {
                *p -= 1;
            }
        }
        let old = self.items.remove(i as usize);
        self.dirs -= u32::from(is_dir(&old));
        Some(old)
    }

    /// How many entries are directories.
    pub fn dirs(&self) -> u32 {
        self.dirs
    }

    /// The entries in the server's order.
    pub fn values(&self) -> impl Iterator<Item = &RemoteEntry> {
        self.items.iter()
    }

    /// The entry at position `i` of the server's order.
    pub fn at(&self, i: usize) -> Option<&RemoteEntry> {
        self.items.get(i)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(name: &str) -> RemoteEntry {
        RemoteEntry::test_file(name)
    }

    #[test]
    fn lookups_edits_and_duplicates() {
        let mut l = Entries::from_vec(vec![e("b"), e("a"), e("c"), e("a")]);
        assert_eq!(l.len(), 3, "the second 'a' is dropped");
        let order: Vec<&str> = l.values().map(|x| x.name.as_str()).collect();
        assert_eq!(order, ["b", "a", "c"], "the server's order");
        assert!(l.contains_key("a") && l.get("c").is_some() && l.get("z").is_none());
        l.insert("0".into(), e("ignored"));
        assert_eq!(l.get("0").map(|x| x.name.as_str()), Some("0"));
        assert_eq!(l.at(3).map(|x| x.name.as_str()), Some("0"));
        assert!(l.remove("b").is_some());
        assert!(l.remove("b").is_none());
        assert_eq!(l.get("a").map(|x| x.name.as_str()), Some("a"));
        assert_eq!(l.get("c").map(|x| x.name.as_str()), Some("c"));
        assert_eq!(l.get("0").map(|x| x.name.as_str()), Some("0"));
        l.update("c", |x| x.size = 42);
        assert_eq!(l.get("c").map(|x| x.size), Some(42));
        let order: Vec<&str> = l.values().map(|x| x.name.as_str()).collect();
        assert_eq!(order, ["a", "c", "0"]);
    }

    #[test]
    fn counts_directories_through_every_edit() {
        let dir = |n: &str| RemoteEntry {
            kind: EntryKind::Dir,
            ..e(n)
        };
        let mut l = Entries::from_vec(vec![dir("d1"), e("f"), dir("d2"), dir("d1")]);
        assert_eq!(l.dirs(), 2, "the duplicate d1 is dropped");
        l.insert("d3".into(), dir("x"));
        assert_eq!(l.dirs(), 3);
        l.insert("d3".into(), e("x"));
        assert_eq!(l.dirs(), 2, "d3 replaced by a file");
        l.update("f", |x| x.kind = EntryKind::Dir);
        assert_eq!(l.dirs(), 3);
        l.remove("d1");
        l.remove("f");
        l.remove("nothing");
        assert_eq!(l.dirs(), 1);
    }
}
