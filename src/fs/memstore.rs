//! An in-memory [`RemoteStore`] that behaves like a strict FTP server (RNTO replaces
//! files, RMD refuses non-empty directories), with failure injection. For tests.

use super::error::{Refusal, StoreError, StoreResult as Result};
use super::store::{split, RemoteStore};
use crate::ftp::{EntryKind, RemoteEntry};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

#[derive(Clone, Debug)]
enum Node {
    Dir {
        mtime: SystemTime,
    },
    File {
        data: Vec<u8>,
        mtime: SystemTime,
        mode: u32,
    },
}

/// The store's content and counters.
#[derive(Default)]
pub struct MemStore {
    nodes: Mutex<BTreeMap<String, Node>>,
    /// While set (when an upload ends), uploads whose path contains this text fail
    /// with 553.
    pub fail_uploads_matching: Mutex<Option<String>>,
    pub lists: AtomicUsize,
    pub reads: AtomicUsize,
    pub uploads: AtomicUsize,
    pub renames: AtomicUsize,
    /// What `is_contended` answers.
    pub contended: AtomicBool,
    /// While set, `list_each` stops after this many entries of a listing and waits
    /// for a message (then goes on), or fails with a lost connection if the sender
    /// is gone: a listing still on the wire, or cut off.
    pub list_pause: Mutex<Option<(usize, std::sync::mpsc::Receiver<()>)>>,
}

/// What a server says when it refuses `cmd`.
fn refused(cmd: &str, why: Refusal, text: &str) -> StoreError {
    StoreError::refused(why, format!("server refused {cmd}: {text}"))
}

impl MemStore {
    pub fn new() -> Self {
        let s = MemStore::default();
        if let Ok(mut n) = s.nodes.lock() {
            n.insert(
                "/".into(),
                Node::Dir {
                    mtime: SystemTime::now(),
                },
            );
        }
        s
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Node>> {
        crate::sync::lock(&self.nodes)
    }

    /// True when `path` is a directory.
    pub fn is_dir(&self, path: &str) -> bool {
        matches!(self.lock().get(path), Some(Node::Dir { .. }))
    }

    /// Puts a file directly (as another client would).
    pub fn put(&self, path: &str, data: &[u8]) {
        self.lock().insert(
            path.into(),
            Node::File {
                data: data.to_vec(),
                mtime: SystemTime::now(),
                mode: 0o644,
            },
        );
    }

    pub fn put_dir(&self, path: &str) {
        self.lock().insert(
            path.into(),
            Node::Dir {
                mtime: SystemTime::now(),
            },
        );
    }

    /// A file's content, if it exists.
    pub fn get(&self, path: &str) -> Option<Vec<u8>> {
        match self.lock().get(path) {
            Some(Node::File { data, .. }) => Some(data.clone()),
            _ => None,
        }
    }

    pub fn mtime(&self, path: &str) -> Option<SystemTime> {
        match self.lock().get(path) {
            Some(Node::File { mtime, .. }) | Some(Node::Dir { mtime }) => Some(*mtime),
            None => None,
        }
    }

    pub fn paths(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    fn parent_is_dir(nodes: &BTreeMap<String, Node>, path: &str) -> bool {
        split(path).is_some_and(|(dir, _)| matches!(nodes.get(dir), Some(Node::Dir { .. })))
    }
}

fn is_child(dir: &str, path: &str) -> bool {
    let prefix = if dir == "/" {
        "/".to_string()
    } else {
        format!("{dir}/")
    };
    path.len() > prefix.len() && path.starts_with(&prefix) && !path[prefix.len()..].contains('/')
}

impl RemoteStore for MemStore {
    fn list(&self, dir: &str) -> Result<Vec<RemoteEntry>> {
        self.lists.fetch_add(1, Ordering::Relaxed);
        let nodes = self.lock();
        if !matches!(nodes.get(dir), Some(Node::Dir { .. })) {
            return Err(refused(
                "MLSD",
                Refusal::NotFound,
                "No such file or directory",
            ));
        }
        Ok(nodes
            .iter()
            .filter(|(p, _)| is_child(dir, p))
            .map(|(p, n)| {
                let name = split(p).map(|(_, n)| n.to_string()).unwrap_or_default();
                match n {
                    Node::Dir { mtime } => RemoteEntry {
                        name,
                        kind: EntryKind::Dir,
                        size: 0,
                        mtime: Some(*mtime),
                        mode: Some(0o755),
                    },
                    Node::File { data, mtime, mode } => RemoteEntry {
                        name,
                        kind: EntryKind::File,
                        size: data.len() as u64,
                        mtime: Some(*mtime),
                        mode: Some(*mode),
                    },
                }
            })
            .collect())
    }

    fn list_each(&self, dir: &str, sink: &mut dyn FnMut(RemoteEntry)) -> Result<()> {
        let entries = self.list(dir)?;
        let pause = crate::sync::lock(&self.list_pause).take();
        for (i, e) in entries.into_iter().enumerate() {
            if let Some((at, rx)) = &pause {
                if i == *at && rx.recv().is_err() {
                    return Err(StoreError::Lost("listing cut off".into()));
                }
            }
            sink(e);
        }
        Ok(())
    }

    fn read_from(
        &self,
        path: &str,
        offset: u64,
        sink: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<()> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let data = self
            .get(path)
            .ok_or_else(|| refused("RETR", Refusal::NotFound, "No such file"))?;
        let start = (offset as usize).min(data.len());
        for chunk in data[start..].chunks(64 * 1024) {
            if !sink(chunk) {
                break;
            }
        }
        Ok(())
    }

    fn write_file(&self, path: &str, data: &mut dyn std::io::BufRead) -> Result<u64> {
        self.uploads.fetch_add(1, Ordering::Relaxed);
        let mut buf = Vec::new();
        data.read_to_end(&mut buf)
            .map_err(|e| StoreError::local("reading spool", e))?;
        let mut nodes = self.lock();
        if !Self::parent_is_dir(&nodes, path) || matches!(nodes.get(path), Some(Node::Dir { .. })) {
            return Err(refused("STOR", Refusal::Denied, "Could not create file"));
        }
        // Refused at the end of the transfer, as a server does when a write or
        // permission check fails late: the file is there, with half of the data.
        let refuse = self
            .fail_uploads_matching
            .lock()
            .ok()
            .and_then(|p| p.clone())
            .is_some_and(|pat| path.contains(&pat));
        if refuse {
            buf.truncate(buf.len() / 2);
        }
        let n = buf.len() as u64;
        nodes.insert(
            path.into(),
            Node::File {
                data: buf,
                mtime: SystemTime::now(),
                mode: 0o644,
            },
        );
        if refuse {
            return Err(refused("STOR", Refusal::Denied, "Permission denied"));
        }
        Ok(n)
    }

    fn size(&self, path: &str) -> Result<u64> {
        match self.lock().get(path) {
            Some(Node::File { data, .. }) => Ok(data.len() as u64),
            _ => Err(refused("SIZE", Refusal::NotFound, "No such file")),
        }
    }

    fn resume_file(
        &self,
        path: &str,
        offset: u64,
        data: &mut dyn std::io::BufRead,
        _append: bool,
    ) -> Result<u64> {
        self.uploads.fetch_add(1, Ordering::Relaxed);
        let mut buf = Vec::new();
        data.read_to_end(&mut buf)
            .map_err(|e| StoreError::local("reading spool", e))?;
        let mut nodes = self.lock();
        match nodes.get_mut(path) {
            Some(Node::File {
                data: have, mtime, ..
            }) if have.len() as u64 >= offset => {
                have.truncate(offset as usize);
                have.extend_from_slice(&buf);
                *mtime = SystemTime::now();
                Ok(buf.len() as u64)
            }
            _ => Err(refused("REST", Refusal::Other, "Cannot restart there")),
        }
    }

    fn delete(&self, path: &str) -> Result<()> {
        let mut nodes = self.lock();
        match nodes.get(path) {
            Some(Node::File { .. }) => {
                nodes.remove(path);
                Ok(())
            }
            Some(Node::Dir { .. }) => Err(refused("DELE", Refusal::IsDir, "Is a directory")),
            None => Err(refused(
                "DELE",
                Refusal::NotFound,
                "No such file or directory",
            )),
        }
    }

    fn mkdir(&self, path: &str) -> Result<()> {
        let mut nodes = self.lock();
        if nodes.contains_key(path) {
            return Err(refused("MKD", Refusal::Exists, "File exists"));
        }
        if !Self::parent_is_dir(&nodes, path) {
            return Err(refused(
                "MKD",
                Refusal::NotFound,
                "No such file or directory",
            ));
        }
        nodes.insert(
            path.into(),
            Node::Dir {
                mtime: SystemTime::now(),
            },
        );
        Ok(())
    }

    fn rmdir(&self, path: &str) -> Result<()> {
        let mut nodes = self.lock();
        if !matches!(nodes.get(path), Some(Node::Dir { .. })) {
            return Err(refused(
                "RMD",
                Refusal::NotFound,
                "No such file or directory",
            ));
        }
        if nodes.keys().any(|p| is_child(path, p)) {
            return Err(refused("RMD", Refusal::NotEmpty, "Directory not empty"));
        }
        nodes.remove(path);
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.renames.fetch_add(1, Ordering::Relaxed);
        let mut nodes = self.lock();
        let Some(node) = nodes.get(from).cloned() else {
            return Err(refused(
                "RNFR",
                Refusal::NotFound,
                "No such file or directory",
            ));
        };
        if !Self::parent_is_dir(&nodes, to) {
            return Err(refused(
                "RNTO",
                Refusal::NotFound,
                "No such file or directory",
            ));
        }
        if let Node::Dir { .. } = node {
            if nodes.keys().any(|p| is_child(to, p)) {
                return Err(refused("RNTO", Refusal::NotEmpty, "Directory not empty"));
            }
            let prefix = format!("{from}/");
            let moved: Vec<(String, Node)> = nodes
                .iter()
                .filter(|(p, _)| p.starts_with(&prefix))
                .map(|(p, n)| (format!("{to}/{}", &p[prefix.len()..]), n.clone()))
                .collect();
            nodes.retain(|p, _| !p.starts_with(&prefix));
            nodes.extend(moved);
        }
        nodes.remove(from);
        nodes.insert(to.into(), node);
        Ok(())
    }

    fn chmod(&self, path: &str, new_mode: u32) -> Result<()> {
        match self.lock().get_mut(path) {
            Some(Node::File { mode, .. }) => {
                *mode = new_mode & 0o7777;
                Ok(())
            }
            Some(Node::Dir { .. }) => Ok(()),
            None => Err(refused("SITE CHMOD", Refusal::NotFound, "No such file")),
        }
    }

    fn is_contended(&self) -> bool {
        self.contended.load(Ordering::Relaxed)
    }

    fn set_mtime(&self, path: &str, t: SystemTime) -> Result<()> {
        match self.lock().get_mut(path) {
            Some(Node::File { mtime, .. }) | Some(Node::Dir { mtime }) => {
                *mtime = t;
                Ok(())
            }
            None => Err(refused("MFMT", Refusal::NotFound, "No such file")),
        }
    }
}
