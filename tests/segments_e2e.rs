//! Segmented reads (`segments=N`, src/fs/segments.rs) through real mounts of real
//! servers, with the project's forwarder cutting data connections mid-file: a large
//! file read sequentially comes over several connections at once, and a cut
//! segment is resumed with REST, so the bytes read are exactly the file's (same
//! sha256, same length, the size shown never changes) — never short, never from a
//! wrong offset. Connections are capped (25 MB/s each), as segments start only
//! where one connection is held back by its path.

mod support;

use std::fs;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use support::forwarder::{Cut, Forwarder};
use support::mount::{pattern, sha256, Mount};
use support::{Server, ServerSpec, FORWARD_HOST};

fn cat(path: &std::path::Path) -> (bool, Vec<u8>) {
    let out = Command::new("cat")
        .arg(path)
        .stderr(Stdio::inherit())
        .output()
        .expect("cat");
    (out.status.success(), out.stdout)
}

/// A server holding `data` as /big.bin, mounted through the forwarder with
/// `segments=4` and `opts`; its size checked, then every connection capped below
/// SEGMENT_BELOW (25 MB/s), so that segments pay off.
fn capped_mount_of(spec: ServerSpec, data: &[u8], opts: &str) -> (Server, Forwarder, Mount) {
    let srv = support::start(spec);
    fs::write(srv.root.join("big.bin"), data).unwrap();
    let fwd = srv.forwarder(Duration::ZERO);
    let m = Mount::builder(&srv)
        .url(srv.url_via(FORWARD_HOST))
        .opts(&format!("{opts},cache_timeout=600,segments=4"))
        .mount();
    assert_eq!(
        fs::metadata(m.path("big.bin")).unwrap().len(),
        data.len() as u64
    );
    fwd.rate_limit(Some(25_000_000));
    (srv, fwd, m)
}

/// Which data connections are cut.
#[derive(Clone, Copy, PartialEq)]
enum Plan {
    /// One, once segments run (cut after 3 MiB, RST).
    OneSegment,
    /// Every one after 5 MiB (FIN): every 8 MiB segment is resumed.
    Every,
}

fn segmented_read_through_cuts(spec: ServerSpec, plan: Plan) {
    // Above the 64 MiB threshold, and not a multiple of the 8 MiB ranges.
    let data = pattern((80 << 20) + 12345, 11);
    let (_srv, fwd, m) = capped_mount_of(spec, &data, "timeout=10");
    let f = m.path("big.bin");
    let data_before = fwd.data_connections();
    if plan == Plan::Every {
        fwd.cut_data_after(5 << 20, Cut::Fin, None);
    }
    let done = AtomicBool::new(false);
    let (ok, out) = std::thread::scope(|scope| {
        if plan == Plan::OneSegment {
            scope.spawn(|| {
                // Once segments run (several data connections beyond the first),
                // the next data connection to carry bytes is cut mid-range.
                while !done.load(Ordering::Relaxed) {
                    if fwd.data_connections() >= data_before + 3 {
                        fwd.cut_data_after(3 << 20, Cut::Rst, Some(1));
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
        }
        let r = cat(&f);
        done.store(true, Ordering::Relaxed);
        r
    });
    fwd.clear_faults(); // and the rate limit
    let used = fwd.data_connections() - data_before;
    assert!(fwd.cuts() >= 1, "no connection was cut");
    assert!(ok, "cat failed");
    assert_eq!(out.len(), data.len(), "short read");
    assert_eq!(sha256(&out), sha256(&data), "wrong bytes");
    assert_eq!(
        fs::metadata(&f).unwrap().len(),
        data.len() as u64,
        "size changed"
    );
    // 80 MiB in 8 MiB ranges (plus resumes): far more data connections than the
    // one a single stream would use.
    assert!(used >= 10, "only {used} data connections: not segmented");
}

#[test]
fn a_cut_segment_resumes_proftpd() {
    segmented_read_through_cuts(ServerSpec::proftpd(), Plan::OneSegment);
}

#[test]
fn a_cut_segment_resumes_vsftpd() {
    segmented_read_through_cuts(ServerSpec::vsftpd(), Plan::OneSegment);
}

#[test]
fn every_segment_cut_and_resumed_proftpd() {
    segmented_read_through_cuts(ServerSpec::proftpd(), Plan::Every);
}

/// A segment that cannot be resumed (every data connection dies after its first
/// MiB, forever) fails the read: cat fails, it never gets a short file that looks
/// complete.
#[test]
fn a_segment_that_cannot_resume_fails_the_read_proftpd() {
    let data = pattern(72 << 20, 12);
    let (_srv, fwd, m) = capped_mount_of(ServerSpec::proftpd(), &data, "timeout=5");
    let f = m.path("big.bin");
    let data_before = fwd.data_connections();
    let done = AtomicBool::new(false);
    let (ok, out) = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                if fwd.data_connections() >= data_before + 3 {
                    fwd.cut_data_after(1, Cut::Rst, None);
                    return;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        let r = cat(&f);
        done.store(true, Ordering::Relaxed);
        r
    });
    fwd.clear_faults();
    assert!(
        !ok,
        "cat succeeded with {} of {} bytes",
        out.len(),
        data.len()
    );
    assert!(out.len() < data.len());
    assert_eq!(out, data[..out.len()], "bytes before the failure are wrong");
    assert_eq!(
        fs::metadata(&f).unwrap().len(),
        data.len() as u64,
        "size changed"
    );
    let (ok, out) = cat(&f);
    assert!(
        ok && out == data,
        "the file does not read after the fault ended"
    );
}
