//! Truncation, of closed and open files.

use super::*;

#[test]
fn truncate_closed_file_uploads_at_once() {
    let (store, fs, _d) = setup();
    store.put("/z", b"0123456789");
    store.put("/s", b"0123456789");
    store.put("/g", b"0123");
    let z = lookup(&fs, "z").ino;
    let s = lookup(&fs, "s").ino;
    let g = lookup(&fs, "g").ino;
    assert_eq!(
        fs.setattr(z, None, None, None, Some(0), None, None)
            .unwrap()
            .size,
        0
    );
    assert_eq!(store.get("/z").unwrap(), b"");
    assert_eq!(
        fs.setattr(s, None, None, None, Some(4), None, None)
            .unwrap()
            .size,
        4
    );
    assert_eq!(store.get("/s").unwrap(), b"0123");
    assert_eq!(
        fs.setattr(g, None, None, None, Some(8), None, None)
            .unwrap()
            .size,
        8
    );
    assert_eq!(store.get("/g").unwrap(), b"0123\0\0\0\0");
    assert_eq!(lookup(&fs, "z").size, 0);
    assert_eq!(lookup(&fs, "s").size, 4);
    assert_eq!(lookup(&fs, "g").size, 8);
    no_part_files(&store);
}

#[test]
fn truncate_open_file_applies_at_flush() {
    for (size, expect) in [
        (0u64, &b""[..]),
        (4, &b"0123"[..]),
        (12, &b"0123456789\0\0"[..]),
    ] {
        let (store, fs, _d) = setup();
        store.put("/f", b"0123456789");
        let (ino, fh) = open_name(&fs, "f", O_RDWR);
        assert_eq!(
            fs.setattr(ino, None, None, None, Some(size), None, Some(fh))
                .unwrap()
                .size,
            size
        );
        assert_eq!(
            store.get("/f").unwrap(),
            b"0123456789",
            "not before flush (size {size})"
        );
        assert_eq!(fs.read(fh, 0, 100).unwrap(), expect);
        fs.flush(fh).unwrap();
        assert_eq!(store.get("/f").unwrap(), expect, "size {size}");
        fs.release(fh).unwrap();
        assert_eq!(store.get("/f").unwrap(), expect);
        assert_eq!(lookup(&fs, "f").size, size);
    }
}

#[test]
fn truncate_then_write_while_open() {
    let (store, fs, _d) = setup();
    store.put("/f", b"0123456789");
    let (ino, fh) = open_name(&fs, "f", O_WRONLY);
    fs.setattr(ino, None, None, None, Some(0), None, Some(fh))
        .unwrap();
    fs.write(fh, 0, b"ab").unwrap();
    fs.release(fh).unwrap();
    assert_eq!(store.get("/f").unwrap(), b"ab");
}

/// truncate(2) by path of a file a writer holds with its data all sent (its
/// close() returned, the kernel's release not yet here): uploaded before it
/// returns. With unsent data it waits for the writer's close, as ftruncate does.
#[test]
fn truncate_by_path_of_a_written_file_reaches_the_server_at_once() {
    let (store, fs, _d) = setup();
    store.put("/f", b"0123456789");
    let (ino, fh) = open_name(&fs, "f", O_WRONLY);
    fs.write(fh, 0, b"ab").unwrap();
    fs.flush(fh).unwrap();
    assert_eq!(store.get("/f").unwrap(), b"ab23456789");
    fs.setattr(ino, None, None, None, Some(4), None, None)
        .unwrap();
    assert_eq!(store.get("/f").unwrap(), b"ab23", "at once");
    fs.write(fh, 4, b"!").unwrap();
    fs.setattr(ino, None, None, None, Some(6), None, None)
        .unwrap();
    assert_eq!(store.get("/f").unwrap(), b"ab23", "unsent data: at close");
    fs.release(fh).unwrap();
    assert_eq!(store.get("/f").unwrap(), b"ab23!\0");
}

#[test]

fn truncate_by_path_while_open_read_only_reaches_the_server() {
    // `truncate -s 0 f` while another program only reads f.
    let (store, fs, _d) = setup();
    store.put("/f", b"0123456789");
    let (ino, fh) = open_name(&fs, "f", O_RDONLY);
    fs.setattr(ino, None, None, None, Some(2), None, None)
        .unwrap();
    fs.flush(fh).unwrap();
    fs.release(fh).unwrap();
    assert_eq!(
        store.get("/f").unwrap(),
        b"01",
        "the truncation must not be lost"
    );
}

/// open(O_RDONLY | O_TRUNC) empties the file, as on Linux.
#[test]
fn read_only_open_with_o_trunc_empties_the_file() {
    let (store, fs, _d) = setup();
    store.put("/f", b"0123456789");
    let (ino, fh) = open_name(&fs, "f", O_RDONLY | libc::O_TRUNC);
    assert_eq!(store.get("/f").unwrap(), b"");
    assert_eq!(fs.getattr(ino).unwrap().size, 0);
    fs.release(fh).unwrap();
}
