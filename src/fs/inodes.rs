//! Inode numbers for remote paths. A number is derived from a hash of the path, so
//! the same path gets the same number again after the kernel forgets it (stable for
//! the life of the mount, and across mounts), with probing on collision. Lookup
//! counts follow the kernel's: a node is dropped when `forget` brings it to zero.

use std::collections::HashMap;
use std::sync::Mutex;

pub const ROOT_INO: u64 = 1;

struct Node {
    path: Box<str>,
    lookups: u32,
    /// Unlinked or replaced while the kernel still holds it: no longer at `path`.
    detached: bool,
}

/// Compact (a listing of a million entries makes a million inodes): each path is
/// stored once, in its node. A path's node is found at its home number (the hash
/// of the path); only the few paths whose node is elsewhere (a hash collision, or
/// a node renamed: it keeps its number) are also in `displaced`.
#[derive(Default)]
struct Table {
    by_ino: HashMap<u64, Node>,
    displaced: HashMap<Box<str>, u64>,
}

pub struct Inodes {
    table: Mutex<Table>,
}

fn hash_path(path: &str) -> u64 {
    // FNV-1a, 64 bits.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in path.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// The number a path gets unless it is taken.
fn home(path: &str) -> u64 {
    match hash_path(path) {
        h if h <= ROOT_INO => h + 2,
        h => h,
    }
}

impl Table {
    /// The live (not detached) node at `path`.
    fn find(&self, path: &str) -> Option<u64> {
        let h = home(path);
        match self.by_ino.get(&h) {
            Some(n) if !n.detached && &*n.path == path => Some(h),
            _ => self.displaced.get(path).copied(),
        }
    }
}

impl Inodes {
    pub fn new(root: &str) -> Self {
        let mut t = Table::default();
        t.by_ino.insert(
            ROOT_INO,
            Node {
                path: root.into(),
                lookups: 1,
                detached: false,
            },
        );
        t.displaced.insert(root.into(), ROOT_INO);
        Inodes {
            table: Mutex::new(t),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        crate::sync::lock(&self.table)
    }

    /// The inode of `path`, creating it; `count` adds a kernel lookup reference.
    pub fn get_or_create(&self, path: &str, count: bool) -> u64 {
        let mut t = self.lock();
        let ino = match t.find(path) {
            Some(ino) => ino,
            None => {
                let mut ino = home(path);
                while ino <= ROOT_INO || t.by_ino.contains_key(&ino) {
                    ino = ino.wrapping_add(1);
                }
                t.by_ino.insert(
                    ino,
                    Node {
                        path: path.into(),
                        lookups: 0,
                        detached: false,
                    },
                );
                if ino != home(path) {
                    t.displaced.insert(path.into(), ino);
                }
                ino
            }
        };
        if count {
            if let Some(n) = t.by_ino.get_mut(&ino) {
                n.lookups = n.lookups.saturating_add(1);
            }
        }
        ino
    }

    /// The live inode of `path`, if it has one.
    pub fn existing(&self, path: &str) -> Option<u64> {
        self.lock().find(path)
    }

    /// The number `path` has, or would get, without creating a node (for plain
    /// readdir, whose entries the kernel does not hold).
    pub fn number_of(&self, path: &str) -> u64 {
        self.lock().find(path).unwrap_or_else(|| home(path))
    }

    /// The current path of an inode (even if detached), and whether it is detached.
    pub fn path(&self, ino: u64) -> Option<(String, bool)> {
        self.lock()
            .by_ino
            .get(&ino)
            .map(|n| (n.path.to_string(), n.detached))
    }

    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        let mut t = self.lock();
        let remove = match t.by_ino.get_mut(&ino) {
            Some(node) => {
                node.lookups = node
                    .lookups
                    .saturating_sub(u32::try_from(n).unwrap_or(u32::MAX));
                node.lookups == 0
            }
            None => false,
        };
        if remove {
            if let Some(node) = t.by_ino.remove(&ino) {
                if t.displaced.get(&node.path) == Some(&ino) {
                    t.displaced.remove(&node.path);
                }
            }
        }
    }

    /// The object at `path` is gone (unlink, rmdir, replaced by a rename).
    pub fn detach(&self, path: &str) {
        let mut t = self.lock();
        if let Some(ino) = t.find(path) {
            if t.displaced.get(path) == Some(&ino) {
                t.displaced.remove(path);
            }
            if let Some(n) = t.by_ino.get_mut(&ino) {
                n.detached = true;
            }
        }
    }

    /// Moves `from` (and, for a directory, everything under it) to `to`; the nodes
    /// keep their numbers.
    pub fn rename(&self, from: &str, to: &str, is_dir: bool) {
        self.detach(to);
        let mut t = self.lock();
        let moved: Vec<u64> = if is_dir {
            let prefix = format!("{from}/");
            t.by_ino
                .iter()
                .filter(|(_, n)| !n.detached && (&*n.path == from || n.path.starts_with(&prefix)))
                .map(|(i, _)| *i)
                .collect()
        } else {
            t.find(from).into_iter().collect()
        };
        for ino in moved {
            let Some(old) = t.by_ino.get(&ino).map(|n| n.path.clone()) else {
                continue;
            };
            if t.displaced.get(&old) == Some(&ino) {
                t.displaced.remove(&old);
            }
            let new: Box<str> = format!("{to}{}", &old[from.len()..]).into();
            if ino != home(&new) {
                t.displaced.insert(new.clone(), ino);
            }
            if let Some(n) = t.by_ino.get_mut(&ino) {
                n.path = new;
            }
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().by_ino.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_stable_and_forgotten() {
        let t = Inodes::new("/");
        let a = t.get_or_create("/a", true);
        assert_eq!(t.get_or_create("/a", true), a);
        t.forget(a, 1);
        assert_eq!(t.path(a).map(|p| p.0), Some("/a".into()));
        t.forget(a, 1);
        assert_eq!(t.path(a), None);
        assert_eq!(t.get_or_create("/a", true), a, "same path, same number");
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn rename_moves_descendants_and_detaches_target() {
        let t = Inodes::new("/");
        let d = t.get_or_create("/d", true);
        let f = t.get_or_create("/d/f", true);
        let victim = t.get_or_create("/e", true);
        t.rename("/d", "/e", true);
        assert_eq!(t.path(d), Some(("/e".into(), false)));
        assert_eq!(t.path(f), Some(("/e/f".into(), false)));
        assert_eq!(t.path(victim), Some(("/e".into(), true)));
        assert_eq!(t.get_or_create("/e/f", false), f);
    }

    #[test]
    fn a_replaced_path_gets_a_new_number_and_both_resolve() {
        let t = Inodes::new("/");
        let old = t.get_or_create("/f", true);
        t.detach("/f");
        let new = t.get_or_create("/f", true);
        assert_ne!(old, new, "the kernel still holds the old one");
        assert_eq!(t.path(old), Some(("/f".into(), true)));
        assert_eq!(t.path(new), Some(("/f".into(), false)));
        assert_eq!(t.get_or_create("/f", false), new);
        assert_eq!(t.number_of("/f"), new);
        t.forget(old, 1);
        assert_eq!(
            t.get_or_create("/f", false),
            new,
            "still found after the old one goes"
        );
        t.rename("/f", "/g", false);
        assert_eq!(t.path(new), Some(("/g".into(), false)));
        assert_eq!(
            t.get_or_create("/g", false),
            new,
            "a renamed node keeps its number"
        );
        assert_eq!(t.number_of("/nothing"), t.number_of("/nothing"));
        assert_eq!(t.len(), 2);
    }
}
