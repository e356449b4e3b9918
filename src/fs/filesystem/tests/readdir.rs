//! readdir, including listings that stream in and prefetching.

use super::*;

#[test]
fn readdir_lists_every_entry_with_kind_and_size() {
    let (store, fs, _d) = setup();
    store.put("/zeta", b"zz");
    store.put("/alpha", b"a");
    store.put_dir("/mid");
    store.put("/mid/inner", b"not listed at the root");
    write_new(&fs, ROOT_INO, "beta", b"bbbb");
    let dh = fs.opendir(ROOT_INO).unwrap();
    let entries = fs.dir_entries(dh).unwrap();
    // In the server's order, entries created through the mount after them.
    let mut got: Vec<(String, FileType, u64)> = entries
        .iter()
        .map(|e| (e.name.clone(), e.attr.kind, e.attr.size))
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        vec![
            ("alpha".to_string(), FileType::File, 1),
            ("beta".to_string(), FileType::File, 4),
            ("mid".to_string(), FileType::Dir, 0),
            ("zeta".to_string(), FileType::File, 2),
        ]
    );
    // Inode numbers match lookup's.
    for e in entries.iter() {
        assert_eq!(lookup(&fs, &e.name).ino, e.attr.ino, "{}", e.name);
    }
    fs.releasedir(dh);
    assert_eq!(err(fs.dir_entries(dh)), libc::EBADF);
    let mid = lookup(&fs, "mid").ino;
    let dh = fs.opendir(mid).unwrap();
    let names: Vec<String> = fs
        .dir_entries(dh)
        .unwrap()
        .iter()
        .map(|e| e.name.clone())
        .collect();
    assert_eq!(names, vec!["inner"]);
    fs.releasedir(dh);
}

#[test]
fn opendir_of_a_file_is_enotdir_and_open_of_a_dir_is_eisdir() {
    let (store, fs, _d) = setup();
    store.put("/f", b"x");
    store.put_dir("/d");
    let f = lookup(&fs, "f").ino;
    let d = lookup(&fs, "d").ino;
    assert_eq!(err(fs.opendir(f)), libc::ENOTDIR);
    assert_eq!(err(fs.open(d, O_RDONLY)), libc::EISDIR);
    assert_eq!(err(fs.opendir(987_654)), libc::ENOENT);
}

#[test]
fn readdir_shows_open_files_with_their_current_size() {
    let (_store, fs, _d) = setup();
    let (_, fh) = fs.create(ROOT_INO, "growing", 0o644, O_WRONLY).unwrap();
    fs.write(fh, 0, &[1u8; 100]).unwrap();
    let dh = fs.opendir(ROOT_INO).unwrap();
    let e = fs.dir_entries(dh).unwrap();
    assert_eq!(e.len(), 1);
    assert_eq!((e[0].name.as_str(), e[0].attr.size), ("growing", 100));
    fs.release(fh).unwrap();
}

#[test]
fn subdirectories_are_listed_ahead_of_the_walker() {
    let (store, fs, _d) = setup_with(|c| c.prefetch_workers = 3);
    for i in 0..20 {
        store.put_dir(&format!("/d{i}"));
        store.put(&format!("/d{i}/f"), b"x");
    }
    let fh = fs.opendir(ROOT_INO).unwrap();
    fs.releasedir(fh);
    let t0 = std::time::Instant::now();
    while store.lists.load(std::sync::atomic::Ordering::Relaxed) < 21 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "subdirectories not prefetched"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(50));
    for i in 0..20 {
        let d = fs.lookup(ROOT_INO, &format!("d{i}")).unwrap();
        assert_eq!(fs.lookup(d.ino, "f").unwrap().size, 1);
    }
    assert_eq!(
        store.lists.load(std::sync::atomic::Ordering::Relaxed),
        21,
        "each directory listed once"
    );
}

/// A directory of `n` files `/big/fNNNN` in the store, not yet listed.
fn big_dir(store: &MemStore, n: usize) {
    store.mkdir("/big").unwrap();
    for i in 0..n {
        store.put(&format!("/big/f{i:04}"), b"x");
    }
}

#[test]
fn readdir_hands_out_entries_while_the_listing_streams_in() {
    let (store, fs, _d) = setup();
    big_dir(&store, 300);
    let dir = lookup(&fs, "big").ino;
    let (go, wait) = std::sync::mpsc::channel();
    *store.list_pause.lock().unwrap() = Some((100, wait));
    let lists_before = store.lists.load(Ordering::Relaxed);
    let fs = Arc::new(fs);
    let dh = {
        let fs = fs.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(fs.opendir(dir)));
        rx.recv_timeout(Duration::from_secs(5))
            .expect("opendir returns before the listing is complete")
            .unwrap()
    };
    // The first 100 entries are readable while the rest is still "on the wire".
    let mut first = Vec::new();
    while first.len() < 100 {
        fs.read_dir(dh, first.len(), true, |name, attr, next| {
            assert_eq!(attr.kind, FileType::File);
            first.push((name.to_string(), next));
            false
        })
        .unwrap();
    }
    assert_eq!(
        first.len(),
        100,
        "what has arrived, without waiting for the rest"
    );
    assert_eq!(first[99].1, 100, "offsets are stream positions");
    // A lookup in that directory waits for this listing instead of listing again.
    let looker = {
        let fs = fs.clone();
        std::thread::spawn(move || fs.lookup(dir, "f0250").map(|a| a.size))
    };
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        !looker.is_finished(),
        "lookup waits for the listing in flight"
    );
    go.send(()).unwrap();
    assert_eq!(looker.join().unwrap(), Ok(1));
    let mut rest = Vec::new();
    fs.read_dir(dh, 100, true, |name, _, _| {
        rest.push(name.to_string());
        false
    })
    .unwrap();
    assert_eq!(rest.len(), 200);
    assert_eq!(
        store.lists.load(Ordering::Relaxed) - lists_before,
        1,
        "one listing served readdir and lookup"
    );
    // Complete and cached: a second reader gets the same entries from the cache.
    let dh2 = fs.opendir(dir).unwrap();
    assert_eq!(fs.dir_entries(dh2).unwrap().len(), 300);
    assert_eq!(store.lists.load(Ordering::Relaxed) - lists_before, 1);
    fs.releasedir(dh);
    fs.releasedir(dh2);
}

#[test]
fn a_listing_cut_off_fails_readdir_past_what_arrived_and_is_not_cached() {
    let (store, fs, _d) = setup();
    big_dir(&store, 50);
    let dir = lookup(&fs, "big").ino;
    let (go, wait) = std::sync::mpsc::channel::<()>();
    *store.list_pause.lock().unwrap() = Some((20, wait));
    let dh = fs.opendir(dir).unwrap();
    let mut got = 0;
    while got < 20 {
        fs.read_dir(dh, got, false, |_, _, _| {
            got += 1;
            false
        })
        .unwrap();
    }
    assert_eq!(got, 20);
    drop(go); // the connection is lost
    let e = fs.read_dir(dh, 20, false, |_, _, _| false).unwrap_err();
    assert_eq!(e, Errno(libc::EIO));
    fs.releasedir(dh);
    // Not cached: the next opendir lists again, completely.
    let before = store.lists.load(Ordering::Relaxed);
    let dh = fs.opendir(dir).unwrap();
    assert_eq!(fs.dir_entries(dh).unwrap().len(), 50);
    assert_eq!(store.lists.load(Ordering::Relaxed) - before, 1);
}
