//! Inode numbers for remote paths. A number is derived from a hash of the path, so
//! the same path gets the same number again after the kernel forgets it (stable for
//! the life of the mount, and across mounts), with probing on collision. Lookup
//! counts follow the kernel's: a node is dropped when `forget` brings it to zero.

use std::collections::HashMap;
use std::sync::Mutex;

pub const ROOT_INO: u64 = 1;

struct Node {
    path: String,
    lookups: u64,
    /// Unlinked or replaced while the kernel still holds it: no longer at `path`.
    detached: bool,
}

#[derive(Default)]
struct Table {
    by_ino: HashMap<u64, Node>,
    by_path: HashMap<String, u64>,
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

impl Inodes {
    pub fn new(root: &str) -> Self {
        let mut t = Table::default();
        t.by_ino.insert(
            ROOT_INO,
            Node {
                path: root.to_string(),
                lookups: 1,
                detached: false,
            },
        );
        t.by_path.insert(root.to_string(), ROOT_INO);
        Inodes {
            table: Mutex::new(t),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The inode of `path`, creating it; `count` adds a kernel lookup reference.
    pub fn get_or_create(&self, path: &str, count: bool) -> u64 {
        let mut t = self.lock();
        let ino = match t.by_path.get(path) {
            Some(&ino) => ino,
            None => {
                let mut ino = hash_path(path);
                while ino <= ROOT_INO || t.by_ino.contains_key(&ino) {
                    ino = ino.wrapping_add(1);
                }
                t.by_ino.insert(
                    ino,
                    Node {
                        path: path.to_string(),
                        lookups: 0,
                        detached: false,
                    },
                );
                t.by_path.insert(path.to_string(), ino);
                ino
            }
        };
        if count {
            if let Some(n) = t.by_ino.get_mut(&ino) {
                n.lookups += 1;
            }
        }
        ino
    }

    /// The current path of an inode (even if detached), and whether it is detached.
    pub fn path(&self, ino: u64) -> Option<(String, bool)> {
        self.lock()
            .by_ino
            .get(&ino)
            .map(|n| (n.path.clone(), n.detached))
    }

    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        let mut t = self.lock();
        let remove = match t.by_ino.get_mut(&ino) {
            Some(node) => {
                node.lookups = node.lookups.saturating_sub(n);
                node.lookups == 0
            }
            None => false,
        };
        if remove {
            if let Some(node) = t.by_ino.remove(&ino) {
                if t.by_path.get(&node.path) == Some(&ino) {
                    t.by_path.remove(&node.path);
                }
            }
        }
    }

    /// The object at `path` is gone (unlink, rmdir, replaced by a rename).
    pub fn detach(&self, path: &str) {
        let mut t = self.lock();
        if let Some(ino) = t.by_path.remove(path) {
            if let Some(n) = t.by_ino.get_mut(&ino) {
                n.detached = true;
            }
        }
    }

    /// Moves `from` (and everything under it) to `to`.
    pub fn rename(&self, from: &str, to: &str) {
        self.detach(to);
        let mut t = self.lock();
        let prefix = format!("{from}/");
        let moved: Vec<(String, u64)> = t
            .by_path
            .iter()
            .filter(|(p, _)| p.as_str() == from || p.starts_with(&prefix))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        for (old, ino) in moved {
            t.by_path.remove(&old);
            let new = format!("{to}{}", &old[from.len()..]);
            if let Some(n) = t.by_ino.get_mut(&ino) {
                n.path = new.clone();
            }
            t.by_path.insert(new, ino);
        }
    }

    pub fn len(&self) -> usize {
        self.lock().by_ino.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
        t.rename("/d", "/e");
        assert_eq!(t.path(d), Some(("/e".into(), false)));
        assert_eq!(t.path(f), Some(("/e/f".into(), false)));
        assert_eq!(t.path(victim), Some(("/e".into(), true)));
        assert_eq!(t.get_or_create("/e/f", false), f);
    }
}
