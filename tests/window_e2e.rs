//! Bounded spools (`spool_window=`) through real mounts of real servers: a file
//! much larger than its spool disk is written whole; a data connection cut in the
//! middle is resumed (SIZE, REST + STOR); cuts that cannot be resumed fail the
//! write and leave the old file; `kill -9` in the middle leaves the old content,
//! no partial file, and a recovery report saying the data was lost.

mod support;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::forwarder::Cut;
use support::mount::{pattern, scratch, tail, Mount, SmallDisk};
use support::{ServerSpec, FORWARD_HOST};

fn sha256_file(p: &Path) -> String {
    let mut h = openssl::sha::Sha256::new();
    let mut f = fs::File::open(p).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut f, &mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finish().iter().map(|b| format!("{b:02x}")).collect()
}

fn sh(script: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .stderr(Stdio::inherit())
        .status()
        .expect("sh")
        .success()
}

fn parts(root: &Path) -> Vec<String> {
    fs::read_dir(root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".part"))
        .collect()
}

/// Samples the disk use of `path` every 20 ms until dropped; the peak.
struct PeakUse {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    t: Option<std::thread::JoinHandle<()>>,
}

impl PeakUse {
    fn start(path: &Path) -> PeakUse {
        let (stop, peak) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let (s, p, path) = (stop.clone(), peak.clone(), path.to_path_buf());
        let t = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(SmallDisk::used(&path), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        PeakUse {
            stop,
            peak,
            t: Some(t),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.t.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

/// A 192 MiB file written with dd (sequential, 1 MiB writes) through a 32 MiB
/// spool disk with a 16 MiB window: it succeeds, the server has every byte, and
/// the spool disk never held more than the window.
fn bigger_than_the_spool_disk(spec: ServerSpec) {
    let srv = support::start(spec);
    fs::write(srv.root.join("big.bin"), b"old").unwrap();
    let disk = SmallDisk::new(32);
    let m = Mount::builder(&srv)
        .opts(&format!(
            "spool_dir={},spool_window=16M",
            disk.path().display()
        ))
        .mount();
    let base = SmallDisk::used(disk.path());
    let peak = PeakUse::start(disk.path());
    let ok = sh(&format!(
        "head -c {} /dev/urandom > /tmp/ftpsfs-window-src.$$ && \
         dd if=/tmp/ftpsfs-window-src.$$ of='{}' bs=1M status=none; r=$?; \
         sha256sum /tmp/ftpsfs-window-src.$$ | cut -d' ' -f1 > '{}/sum'; rm -f /tmp/ftpsfs-window-src.$$; exit $r",
        192 << 20,
        m.path("big.bin").display(),
        srv.conf_dir.display()
    ));
    let peak = peak.finish().saturating_sub(base);
    assert!(ok, "dd through a bounded spool failed");
    let want = fs::read_to_string(srv.conf_dir.join("sum")).unwrap();
    assert_eq!(sha256_file(&srv.root.join("big.bin")), want.trim());
    // The window, plus the page of the file's journal record.
    assert!(
        peak <= (16 << 20) + (64 << 10),
        "the spool disk held {peak} bytes"
    );
    assert!(parts(&srv.root).is_empty(), "{:?}", parts(&srv.root));
}

#[test]
fn a_file_six_times_the_spool_disk_proftpd() {
    bigger_than_the_spool_disk(ServerSpec::proftpd());
}

#[test]
fn a_file_six_times_the_spool_disk_vsftpd() {
    bigger_than_the_spool_disk(ServerSpec::vsftpd());
}

/// A 96 MiB cp whose data connection is cut after 48 MiB (past the 32 MiB window):
/// resumed where the server stopped, cp succeeds with every byte on the server;
/// with every data connection cut early, cp fails and leaves no file.
fn cut_in_the_middle(spec: ServerSpec, how: Cut) {
    let srv = support::start(spec);
    let data = pattern(96 << 20, 21);
    let local = scratch("src-");
    let src = local.path().join("src");
    fs::write(&src, &data).unwrap();
    drop(data);
    fs::write(srv.root.join("f.bin"), b"old").unwrap();
    let fwd = srv.forwarder(Duration::ZERO);
    let spool = scratch("spool-");
    let m = Mount::builder(&srv)
        .url(srv.url_via(FORWARD_HOST))
        .opts(&format!(
            "timeout=10,spool_window=32M,cache_timeout=600,log_level=info,log_file={},spool_dir={}",
            spool.path().join("log").display(),
            spool.path().display()
        ))
        .mount();
    // The first stream longer than half the window makes the mount probe (once)
    // whether the server resumes uploads, on data connections of its own: done
    // before the cut is planned. (A stream the network holds back past timeout=
    // falls back to the spool without probing: a loaded machine may need another.)
    let log = || fs::read_to_string(spool.path().join("log")).unwrap_or_default();
    for attempt in 1.. {
        fs::write(m.path("warm-up"), pattern(40 << 20, 3)).unwrap();
        let t = Instant::now();
        while !log().contains("resume probe") && t.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if log().contains("resume probe") {
            break;
        }
        assert!(
            attempt < 3,
            "no resume probe logged after {attempt} warm-up streams: {}",
            tail(&log(), 3000)
        );
    }
    // Listings cached: the plan's ticket goes to the upload's data connection.
    assert!(m.path("f.bin").exists() && !m.path("g.bin").exists());
    fwd.cut_upload_after(48 << 20, how, Some(1));
    let ok = sh(&format!(
        "cp '{}' '{}'",
        src.display(),
        m.path("f.bin").display()
    ));
    assert!(
        ok,
        "cp failed after one cut: {}",
        tail(&m.daemon_output(), 2000)
    );
    assert!(
        fwd.cuts() >= 1,
        "the forwarder cut nothing ({} data connections): {}",
        fwd.data_connections(),
        tail(&m.daemon_output(), 3000)
    );
    assert_eq!(sha256_file(&srv.root.join("f.bin")), sha256_file(&src));
    assert!(parts(&srv.root).is_empty());
    // Every data connection cut after 1 MiB: each resume moves ~1-3 MiB, so
    // MAX_RESUMES cuts in a row end the stream before anything was dropped (the
    // first drop needs ~27 MiB taken); the spool is then uploaded at close, cut
    // too: close() fails with EIO and the spool is kept. cp cannot succeed here
    // (if it did, every byte must be there). The release that follows retries
    // the kept spool; after the faults are cleared that retry may put the whole
    // g.bin on the server: absent or whole, never a prefix.
    fwd.cut_upload_after(1 << 20, how, None);
    let ok = sh(&format!(
        "cp '{}' '{}'",
        src.display(),
        m.path("g.bin").display()
    ));
    fwd.clear_faults();
    assert!(!ok, "cp succeeded although every data connection was cut");
    let t = Instant::now();
    while !parts(&srv.root).is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "{:?}",
            parts(&srv.root)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    if srv.root.join("g.bin").exists() {
        assert_eq!(
            sha256_file(&srv.root.join("g.bin")),
            sha256_file(&src),
            "g.bin on the server is not the whole file"
        );
    }
    assert_eq!(sha256_file(&srv.root.join("f.bin")), sha256_file(&src));
}

#[test]
fn a_cut_in_the_middle_is_resumed_rst_proftpd() {
    cut_in_the_middle(ServerSpec::proftpd(), Cut::Rst);
}

#[test]
fn a_cut_in_the_middle_is_resumed_fin_vsftpd() {
    cut_in_the_middle(ServerSpec::vsftpd(), Cut::Fin);
}

/// `kill -9` while a bounded stream overwrites a file, after its spool dropped
/// bytes: the server keeps the old file; the next mount removes the partial
/// temporary upload and reports the data lost; nothing is left in spool_dir.
fn crash_in_the_middle(spec: ServerSpec) {
    let srv = support::start(spec);
    fs::write(srv.root.join("f.bin"), b"old").unwrap();
    let spool = scratch("spool-");
    let opts = format!("spool_dir={},spool_window=16M", spool.path().display());
    let m = Mount::builder(&srv).opts(&opts).mount();
    let script = r#"
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_TRUNC)
chunk = bytes(range(256)) * 4096
for i in range(400):
    os.write(fd, chunk)
    time.sleep(0.02)
time.sleep(3600)
"#;
    let mut writer = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(m.path("f.bin"))
        .spawn()
        .expect("python3");
    let t = Instant::now();
    loop {
        let big = fs::read_dir(&srv.root)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
            .any(|e| e.metadata().map_or(0, |m| m.len()) > 28 << 20);
        if big {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the upload did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    m.signal(libc::SIGKILL);
    while m.daemon_alive() && t.elapsed() < Duration::from_secs(40) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = Command::new("fusermount3")
        .arg("-uz")
        .arg(&m.mnt)
        .stderr(Stdio::null())
        .status();
    let _ = writer.kill();
    let _ = writer.wait();
    assert_eq!(fs::read(srv.root.join("f.bin")).unwrap(), b"old");
    let again = Mount::builder(&srv).opts(&opts).mount();
    let report = again.daemon_output();
    assert!(
        report.contains("recovery: /f.bin: not uploaded")
            && report.contains("spool_window")
            && report.contains("removed the incomplete upload"),
        "no recovery report: {}",
        tail(&report, 2000)
    );
    assert!(parts(&srv.root).is_empty(), "{:?}", parts(&srv.root));
    assert_eq!(fs::read(again.path("f.bin")).unwrap(), b"old");
    let left: Vec<_> = fs::read_dir(spool.path())
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file())
        .collect();
    assert!(left.is_empty(), "spool files left: {left:?}");
    assert!(
        !spool.path().join("recovered").exists()
            || fs::read_dir(spool.path().join("recovered"))
                .unwrap()
                .next()
                .is_none()
    );
}

#[test]
fn kill_9_in_the_middle_of_a_bounded_stream_proftpd() {
    crash_in_the_middle(ServerSpec::proftpd());
}

/// proftpd as shipped (no AllowStoreRestart) refuses REST before STOR and APPE:
/// the mount learns it before dropping anything, its spool keeps every byte, and
/// the cut upload is sent again whole.
#[test]
fn a_cut_on_a_server_that_cannot_resume_is_sent_again_proftpd_without_store_restart() {
    cut_in_the_middle(ServerSpec::proftpd().store_restart(false), Cut::Rst);
}
