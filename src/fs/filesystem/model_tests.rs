//! Model-based property test: random sequences of open/create, write, truncate,
//! read, close, rename and unlink, with injected faults (cut uploads, failing
//! uploads, refused renames, a full spool), checked against a model of what the
//! server must hold. The invariants: every name on the store holds exactly what the
//! last successful close (or rename, unlink) put there — its old or its complete
//! new content, never a prefix — no temporary file is left behind, and every read
//! returns what the program wrote.

use super::*;
use crate::fs::faultstore::FaultStore;
use proptest::prelude::*;
use std::collections::HashMap;
use std::sync::atomic::Ordering::SeqCst;

const NAMES: [&str; 3] = ["a", "b", "c"];

#[derive(Debug, Clone)]
enum Op {
    Open {
        name: usize,
        trunc: bool,
    },
    Write {
        name: usize,
        offset: u16,
        len: u16,
        byte: u8,
    },
    Truncate {
        name: usize,
        size: u16,
    },
    Read {
        name: usize,
    },
    Close {
        name: usize,
    },
    Rename {
        from: usize,
        to: usize,
    },
    Unlink {
        name: usize,
    },
    CutNextUpload {
        after: u16,
    },
    FailNextUpload,
    RefuseRenames,
    FillSpool {
        name: usize,
        bytes: u16,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let n = 0..NAMES.len();
    prop_oneof![
        4 => (n.clone(), any::<bool>()).prop_map(|(name, trunc)| Op::Open { name, trunc }),
        6 => (n.clone(), 0u16..6000, 1u16..3000, any::<u8>())
            .prop_map(|(name, offset, len, byte)| Op::Write { name, offset, len, byte }),
        1 => (n.clone(), 0u16..5000).prop_map(|(name, size)| Op::Truncate { name, size }),
        2 => n.clone().prop_map(|name| Op::Read { name }),
        4 => n.clone().prop_map(|name| Op::Close { name }),
        1 => (n.clone(), n.clone()).prop_map(|(from, to)| Op::Rename { from, to }),
        1 => n.clone().prop_map(|name| Op::Unlink { name }),
        1 => (0u16..4000).prop_map(|after| Op::CutNextUpload { after }),
        1 => Just(Op::FailNextUpload),
        1 => Just(Op::RefuseRenames),
        1 => (n, 0u16..6000).prop_map(|(name, bytes)| Op::FillSpool { name, bytes }),
    ]
}

/// An open handle in the model: what the program has written so far.
struct Open {
    ino: u64,
    fh: u64,
    content: Vec<u8>,
    /// A write failed: the handle's data can never be uploaded.
    poisoned: bool,
}

fn path(i: usize) -> String {
    format!("/{}", NAMES[i])
}

fn check_store(store: &FaultStore, server: &HashMap<usize, Vec<u8>>, step: &str) {
    for (i, _) in NAMES.iter().enumerate() {
        let got = store.inner.get(&path(i));
        let want = server.get(&i);
        assert!(
            got.as_ref() == want,
            "{step}: {} holds {:?} bytes, the model says {:?}",
            path(i),
            got.map(|g| g.len()),
            want.map(|w| w.len())
        );
    }
    let paths = store.inner.paths();
    assert!(
        paths
            .iter()
            .all(|p| p == "/" || NAMES.iter().any(|n| *p == format!("/{n}"))),
        "{step}: stray files on the store: {paths:?}"
    );
}

fn run(ops: Vec<Op>) {
    let store = Arc::new(FaultStore::new());
    let spool = tempfile::tempdir().expect("tempdir");
    let mut cfg = super::fault_tests::config(spool.path());
    cfg.cache_timeout = Duration::from_secs(3600);
    let fs = FtpsFs::new(store.clone(), cfg);
    let mut server: HashMap<usize, Vec<u8>> = HashMap::new();
    let mut open: HashMap<usize, Open> = HashMap::new();
    for (k, op) in ops.into_iter().enumerate() {
        let step = format!("step {k} {op:?}");
        match op {
            Op::Open { name, trunc } => {
                if open.contains_key(&name) {
                    continue;
                }
                let (ino, fh, content) = if server.contains_key(&name) {
                    let ino = fs.lookup(ROOT_INO, NAMES[name]).expect(&step).ino;
                    let flags = libc::O_RDWR | if trunc { libc::O_TRUNC } else { 0 };
                    let fh = fs.open(ino, flags).expect(&step);
                    let old = if trunc {
                        Vec::new()
                    } else {
                        server[&name].clone()
                    };
                    (ino, fh, old)
                } else {
                    let (a, fh) = fs
                        .create(ROOT_INO, NAMES[name], 0o644, libc::O_RDWR)
                        .expect(&step);
                    (a.ino, fh, Vec::new())
                };
                open.insert(
                    name,
                    Open {
                        ino,
                        fh,
                        content,
                        poisoned: false,
                    },
                );
            }
            Op::Write {
                name,
                offset,
                len,
                byte,
            } => {
                let Some(h) = open.get_mut(&name) else {
                    continue;
                };
                let data = vec![byte; len as usize];
                match fs.write(h.fh, u64::from(offset), &data) {
                    Ok(n) => {
                        assert!(!h.poisoned, "{step}: a write after a failed one succeeded");
                        assert_eq!(n, data.len());
                        let end = offset as usize + data.len();
                        if h.content.len() < end {
                            h.content.resize(end, 0);
                        }
                        h.content[offset as usize..end].copy_from_slice(&data);
                    }
                    Err(_) => h.poisoned = true,
                }
            }
            Op::Truncate { name, size } => {
                let Some(h) = open.get_mut(&name) else {
                    continue;
                };
                match fs.setattr(
                    h.ino,
                    None,
                    None,
                    None,
                    Some(u64::from(size)),
                    None,
                    Some(h.fh),
                ) {
                    Ok(a) => {
                        assert!(!h.poisoned, "{step}");
                        h.content.resize(size as usize, 0);
                        assert_eq!(a.size, u64::from(size), "{step}");
                    }
                    Err(_) => h.poisoned = true,
                }
            }
            Op::Read { name } => {
                let Some(h) = open.get(&name) else { continue };
                if h.poisoned {
                    continue;
                }
                let got = fs.read(h.fh, 0, 20_000).expect(&step);
                assert!(
                    got == h.content,
                    "{step}: read does not return what was written"
                );
            }
            Op::Close { name } => {
                let Some(h) = open.remove(&name) else {
                    continue;
                };
                let _ = fs.flush(h.fh);
                let released = fs.release(h.fh);
                if h.poisoned {
                    assert!(
                        released.is_err(),
                        "{step}: close succeeded after a failed write"
                    );
                } else if released.is_ok() {
                    server.insert(name, h.content);
                } else if store.refuse_renames.load(SeqCst) && server.contains_key(&name) {
                    // Replaced in place (the server refuses renames): a failed
                    // upload may leave a prefix of the new content, the documented
                    // cost of such servers (SEMANTICS.md); never anything else.
                    let got = store.inner.get(&path(name)).unwrap_or_default();
                    assert!(
                        got == server[&name] || h.content.starts_with(&got),
                        "{step}: in-place upload left neither the old content nor a prefix"
                    );
                    server.insert(name, got);
                }
                // Otherwise a failed close leaves the server as it was.
            }
            Op::Rename { from, to } => {
                if open.contains_key(&from) || open.contains_key(&to) {
                    continue;
                }
                let r = fs.rename(ROOT_INO, NAMES[from], ROOT_INO, NAMES[to], false);
                match (r, server.contains_key(&from)) {
                    (Ok(()), true) => {
                        if from != to {
                            let c = server.remove(&from).expect("present");
                            server.insert(to, c);
                        }
                    }
                    (Ok(()), false) => {
                        assert_eq!(from, to, "{step}: renamed a missing file");
                    }
                    (Err(_), _) => {}
                }
            }
            Op::Unlink { name } => {
                if open.contains_key(&name) {
                    continue;
                }
                match fs.unlink(ROOT_INO, NAMES[name]) {
                    Ok(()) => assert!(server.remove(&name).is_some(), "{step}"),
                    Err(e) => assert!(!server.contains_key(&name), "{step}: {e:?}"),
                }
            }
            Op::CutNextUpload { after } => {
                store.cut_uploads_after.store(u64::from(after) + 1, SeqCst);
                store.cut_uploads_times.store(1, SeqCst);
            }
            Op::FailNextUpload => store.fail_next.lock().unwrap().push("write"),
            Op::RefuseRenames => store.refuse_renames.store(true, SeqCst),
            Op::FillSpool { name, bytes } => {
                if let Some(h) = open.get(&name) {
                    fs.limit_spool(h.ino, u64::from(bytes));
                }
            }
        }
        check_store(&store, &server, &step);
    }
    for (_, h) in open.drain() {
        let _ = fs.release(h.fh);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn every_success_tells_the_truth_under_faults(ops in proptest::collection::vec(op(), 1..40)) {
        run(ops);
    }
}
