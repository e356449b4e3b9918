//! The FTPS client library (src/ftp) against a scripted hostile server
//! (tests/support/hostile.rs): whatever the server does, every call must return
//! within a small multiple of the configured timeout, with a clear error, in bounded
//! memory; and a huge but valid listing must still go through.
//!
//! Tests run one at a time (a lock), because each measures the process's memory:
//! the peak RSS (VmHWM, reset through /proc/self/clear_refs, plus a sampler) minus the
//! RSS before the call. The hostile server runs in this process but writes from small
//! chunks, so what grows is the client.

mod support;

#[path = "support/hostile.rs"]
mod hostile;

use std::fs;
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ftpsfs::error::FtpError;
use ftpsfs::ftp::command::Command;
use ftpsfs::ftp::{ConnectOptions, FtpConnection, Protection, Secret, TlsConfig, TlsContext};
use hostile::{Behaviour, HostileServer, FILE_NAME};

/// The client's timeout (ConnectOptions::timeout) in every test.
const TIMEOUT: Duration = Duration::from_secs(3);
/// What "bounded" means for one call: three times the timeout.
const BOUND: Duration = Duration::from_secs(3 * 3);
/// Past this a call is declared hung: the server is stopped (which ends the call).
const HARD_LIMIT: Duration = Duration::from_secs(20);
/// Memory a call may add when the server sends endless or oversized replies.
const SMALL_GROWTH_MIB: f64 = 64.0;
/// Memory a valid 1,000,000-entry listing may add.
const HUGE_GROWTH_MIB: f64 = 300.0;

// ---------------------------------------------------------------------------
// Helpers

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn options(srv: &HostileServer) -> Arc<ConnectOptions> {
    Arc::new(ConnectOptions {
        host: srv.host().to_string(),
        port: srv.port(),
        implicit: false,
        protection: Protection::Private,
        ccc: false,
        user: "hostile".into(),
        password: Secret::new("anything".into()),
        timeout: TIMEOUT,
        max_listing_entries: ftpsfs::ftp::session::DEFAULT_MAX_LISTING_ENTRIES,
        encoding: ftpsfs::names::NameCodec::default(),
        server: Default::default(),
    })
}

fn tls() -> Arc<TlsContext> {
    TlsContext::new(TlsConfig {
        cafile: Some(support::pki().ca_cert.clone()),
        ..TlsConfig::default()
    })
    .expect("TLS context")
}

fn connect(srv: &HostileServer) -> FtpConnection {
    FtpConnection::connect(options(srv), tls()).unwrap_or_else(|e| {
        panic!(
            "connect to the hostile server ({:?}) failed: {e}\ncommands: {:?}",
            srv.behaviour(),
            srv.commands()
        )
    })
}

fn status_kib(field: &str) -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Peak memory of the process over a span, relative to its RSS at the start.
struct Memory {
    baseline_kib: u64,
    hwm_reset: bool,
    peak_kib: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    sampler: Option<JoinHandle<()>>,
}

impl Memory {
    fn start() -> Memory {
        // Give freed heap back to the kernel first: memory an earlier test freed but
        // glibc kept would otherwise be reused unseen.
        // SAFETY: plain glibc call, no pointers.
        unsafe { libc::malloc_trim(0) };
        // "5" resets VmHWM to the current RSS (Linux >= 4.0).
        let hwm_reset = fs::write("/proc/self/clear_refs", "5").is_ok();
        let baseline_kib = status_kib("VmRSS");
        let peak_kib = Arc::new(AtomicU64::new(baseline_kib));
        let done = Arc::new(AtomicBool::new(false));
        let (p, d) = (peak_kib.clone(), done.clone());
        let sampler = thread::spawn(move || {
            while !d.load(Ordering::Relaxed) {
                p.fetch_max(status_kib("VmRSS"), Ordering::Relaxed);
                thread::sleep(Duration::from_millis(10));
            }
        });
        Memory {
            baseline_kib,
            hwm_reset,
            peak_kib,
            done,
            sampler: Some(sampler),
        }
    }

    /// Growth of the peak over the baseline so far, in MiB.
    fn growth_mib(&self) -> f64 {
        let mut peak = self.peak_kib.load(Ordering::Relaxed);
        peak = peak.max(status_kib("VmRSS"));
        if self.hwm_reset {
            peak = peak.max(status_kib("VmHWM"));
        }
        peak.saturating_sub(self.baseline_kib) as f64 / 1024.0
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.sampler.take() {
            let _ = t.join();
        }
    }
}

/// Runs `f` on its own thread. `Ok((value, time))` when it returned within
/// [`HARD_LIMIT`]; otherwise stops the server (which ends whatever the client waited
/// on), waits a little for the thread, and gives `Err(time waited)`.
fn run_bounded<T: Send + 'static>(
    srv: &HostileServer,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<(T, Duration), Duration> {
    run_within(srv, HARD_LIMIT, f)
}

/// [`run_bounded`] with another limit.
fn run_within<T: Send + 'static>(
    srv: &HostileServer,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<(T, Duration), Duration> {
    let (tx, rx) = mpsc::channel();
    let t0 = Instant::now();
    thread::spawn(move || {
        let v = f();
        let _ = tx.send((v, t0.elapsed()));
    });
    match rx.recv_timeout(limit) {
        Ok(r) => Ok(r),
        Err(_) => {
            let waited = t0.elapsed();
            srv.stopper().stop();
            let _ = rx.recv_timeout(Duration::from_secs(10));
            Err(waited)
        }
    }
}

/// A clear error: short (the server's junk is not echoed), and says what went wrong.
fn assert_clear(what: &str, err: &FtpError, any_of: &[&str]) {
    let msg = err.to_string();
    let lower = msg.to_lowercase();
    assert!(
        msg.len() < 600,
        "{what}: error message of {} bytes: {:.300}…",
        msg.len(),
        msg
    );
    assert!(
        any_of.iter().any(|k| lower.contains(k)),
        "{what}: error {msg:?} ({err:?}) does not say any of {any_of:?}"
    );
}

/// One line of measurements (`cargo test -- --nocapture` shows them).
fn report(what: &str, took: Duration, growth_mib: Option<f64>, outcome: &str) {
    let mem = growth_mib.map_or(String::new(), |g| format!(", memory +{g:.1} MiB"));
    eprintln!("[hostile] {what}: {took:.2?}{mem}: {outcome}");
}

// ---------------------------------------------------------------------------
// Control: a well-behaved server

/// The harness itself: size, mtime, MLST, MLSD and downloads (whole and with REST)
/// of the one file, over data connections that resume the control TLS session.
#[test]
fn normal_file_is_served_correctly() {
    let _g = serial();
    let bytes: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let srv = HostileServer::start(Behaviour::NormalFile(bytes.clone()));
    let mut conn = connect(&srv);
    let path = format!("/{FILE_NAME}");
    let t0 = Instant::now();

    assert_eq!(conn.size(&path).unwrap(), bytes.len() as u64);
    conn.mdtm(&path).unwrap();
    let e = conn.mlst(&path).unwrap().expect("MLST of the file");
    assert_eq!(e.size, bytes.len() as u64);
    let list = conn.list_dir("/").unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(
        (list[0].name.as_str(), list[0].size),
        (FILE_NAME, 3_000_000)
    );
    assert_eq!(conn.size("/missing").unwrap_err().reply_code(), Some(550));

    let mut got = Vec::new();
    let mut dl = conn.retr(&path, 0).unwrap();
    dl.read_to_end(&mut got).unwrap();
    assert_eq!(dl.resumed(), Some(true), "data TLS session resumed");
    assert_eq!(dl.finish().unwrap(), bytes.len() as u64);
    assert!(got == bytes, "downloaded bytes differ");

    let mut tail = Vec::new();
    let mut dl = conn.retr(&path, 1_000_000).unwrap();
    dl.read_to_end(&mut tail).unwrap();
    dl.finish().unwrap();
    assert!(tail == bytes[1_000_000..], "bytes after REST differ");
    conn.noop().unwrap();
    let took = t0.elapsed();

    let stats = srv.stats();
    assert_eq!(stats.data_connections, 3, "{stats:?}");
    assert_eq!(stats.data_sessions_resumed, 3, "{stats:?}");
    report("NormalFile", took, None, &format!("{stats:?}"));
    conn.quit();
}

/// The harness stops promptly even while a transfer runs, and the client reports
/// the listing cut short as an error, not as a short directory.
#[test]
fn dropping_the_server_mid_listing_is_prompt_and_an_error() {
    let _g = serial();
    let srv = HostileServer::start(Behaviour::EndlessListing);
    let mut conn = connect(&srv);
    let seen = Arc::new(AtomicU64::new(0));
    let s2 = seen.clone();
    let client = thread::spawn(move || {
        let t = Instant::now();
        let r = conn.list_dir_each("/", &mut |_| {
            s2.fetch_add(1, Ordering::Relaxed);
        });
        (r, t)
    });
    let t0 = Instant::now();
    while seen.load(Ordering::Relaxed) < 10_000 && t0.elapsed() < HARD_LIMIT {
        thread::sleep(Duration::from_millis(5));
    }
    assert!(seen.load(Ordering::Relaxed) >= 10_000, "no entries arrived");
    let t = Instant::now();
    drop(srv);
    let drop_took = t.elapsed();
    assert!(
        drop_took < Duration::from_secs(1),
        "drop took {drop_took:?}"
    );
    let (r, _) = client.join().unwrap();
    let err = r.expect_err("a listing cut by the server must be an error");
    assert_clear(
        "cut listing",
        &err,
        &["close_notify", "closed", "reset", "truncated"],
    );
    report(
        "drop mid-listing",
        drop_took,
        None,
        &format!(
            "{} entries before the cut; client error: {err}",
            seen.load(Ordering::Relaxed)
        ),
    );
}

/// A download the server cuts (data connection closed without close_notify) is an
/// error, never a short read: "truncated", said once, a lost connection (tried
/// again where nothing went out yet). The server's final reply is read: its 426
/// goes into the message and the control connection, in step, is used again; a
/// server that answers 226 after the cut has its connection given up.
#[test]
fn cut_download_is_a_lost_connection_with_the_servers_reply() {
    let _g = serial();
    const CUT: usize = 300_000;
    for (final_reply, want_code) in [
        ("426 Connection closed; transfer aborted", Some(426)),
        ("226 Transfer complete", None),
    ] {
        let srv = HostileServer::start(Behaviour::CutDownload(CUT, final_reply));
        let mut conn = connect(&srv);
        let t0 = Instant::now();
        let mut dl = conn.retr(&format!("/{FILE_NAME}"), 0).unwrap();
        let mut got = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        let err = loop {
            match dl.read_chunk(&mut buf) {
                Ok(0) => panic!("a cut download ended as complete after {got} bytes"),
                Ok(n) => got += n,
                Err(e) => break e,
            }
        };
        drop(dl);
        let msg = err.to_string();
        assert!(got <= CUT, "{got} bytes read of {CUT} sent");
        assert!(matches!(err, FtpError::Truncated(_)), "{msg}");
        assert!(err.is_connection_lost(), "{msg}");
        assert_eq!(msg.matches("truncated").count(), 1, "{msg}");
        assert!(msg.contains("close_notify"), "{msg}");
        match want_code {
            Some(code) => {
                assert!(msg.contains(&format!("the server said {code}")), "{msg}");
                assert!(!conn.is_broken(), "in step after the server's reply: {msg}");
                conn.noop().expect("the connection is used again");
            }
            None => assert!(conn.is_broken(), "given up after a lying 226: {msg}"),
        }
        report(
            &format!("CutDownload then {final_reply:?}"),
            t0.elapsed(),
            None,
            &msg,
        );
    }
}

/// A passive port that is busy (pure-ftpd: two sessions bound the same random port
/// and the second one's listen() failed: "425 Unable to identify the local data
/// socket: Address already in use") is asked for again: downloads and listings go
/// through, and the connection stays in step although the command sent with the
/// refused EPSV was answered 150 and then 425.
#[test]
fn a_busy_passive_port_is_asked_for_again() {
    let _g = serial();
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let srv = HostileServer::start(Behaviour::NormalFile(bytes.clone()));
    let mut conn = connect(&srv);
    let path = format!("/{FILE_NAME}");
    srv.refuse_passive(2);
    let mut got = Vec::new();
    let mut dl = conn
        .retr(&path, 0)
        .expect("RETR after two busy passive ports");
    dl.read_to_end(&mut got).unwrap();
    dl.finish().unwrap();
    assert!(got == bytes, "downloaded bytes differ");
    srv.refuse_passive(1);
    let list = conn
        .list_dir("/")
        .expect("a listing after a busy passive port");
    assert_eq!(list.len(), 1, "{list:?}");
    conn.noop().expect("the connection is in step");
    let epsvs = srv
        .commands()
        .iter()
        .filter(|c| c.starts_with("EPSV"))
        .count();
    assert_eq!(epsvs, 5, "{:?}", srv.commands());
    // A port that stays busy is an error, not a loop.
    srv.refuse_passive(100);
    let err = conn.list_dir("/").unwrap_err();
    assert_eq!(err.reply_code(), Some(425), "{err}");
    conn.quit();
}

// ---------------------------------------------------------------------------
// Listings

/// A valid listing of 1,000,000 entries succeeds when streamed (list_dir_each), in
/// bounded memory and time.
#[test]
fn huge_listing_of_a_million_entries_streams_in_bounded_memory() {
    let _g = serial();
    const N: u64 = 1_000_000;
    let srv = HostileServer::start(Behaviour::HugeListing(N));
    let mut conn = connect(&srv);
    let mem = Memory::start();
    // Parsing a million lines takes the (unoptimised) client 6 to 13 s here: a
    // generous limit, since what this test checks is success and memory.
    let ran = run_within(&srv, Duration::from_secs(60), move || {
        let mut count = 0u64;
        let mut in_order = true;
        let r = conn.list_dir_each("/", &mut |e| {
            in_order &= e.name.strip_prefix("entry-").and_then(|n| n.parse().ok()) == Some(count);
            count += 1;
        });
        (r, count, in_order)
    });
    let growth = mem.growth_mib();
    let ((r, count, in_order), took) = ran.unwrap_or_else(|waited| {
        panic!(
            "list_dir_each of {N} entries still running after {waited:?} ({:?})",
            srv.stats()
        )
    });
    report(
        "HugeListing(1M) list_dir_each",
        took,
        Some(growth),
        &format!("{count} entries, {:?}", r.as_ref().map(drop)),
    );
    r.unwrap();
    assert_eq!(count, N);
    assert!(in_order, "entries lost, repeated or out of order");
    assert!(growth < HUGE_GROWTH_MIB, "memory grew {growth:.1} MiB");
}

/// An endless listing (valid, distinct entries, as fast as the client reads) must end
/// in an error once the listing passes a bound, as a streamed list_dir_each too. The
/// bound here is 300,000 entries, so that the test's time does not depend on the
/// machine's load (the default, 2,000,000, is the same code with a larger number).
#[test]
fn endless_listing_is_stopped_by_a_listing_bound() {
    let _g = serial();
    let srv = HostileServer::start(Behaviour::EndlessListing);
    let opts = Arc::new(ConnectOptions {
        max_listing_entries: 300_000,
        ..(*options(&srv)).clone()
    });
    let mut conn = FtpConnection::connect(opts, tls()).expect("connect to the hostile server");
    let seen = Arc::new(AtomicU64::new(0));
    let s2 = seen.clone();
    let mem = Memory::start();
    let ran = run_bounded(&srv, move || {
        conn.list_dir_each("/", &mut |_| {
            s2.fetch_add(1, Ordering::Relaxed);
        })
    });
    let growth = mem.growth_mib();
    let entries = seen.load(Ordering::Relaxed);
    let (r, took) = ran.unwrap_or_else(|waited| {
        panic!(
            "list_dir_each of an endless MLSD still running after {waited:?}: {entries} entries \
             received, memory +{growth:.1} MiB; a listing needs a bound (entries or bytes)"
        )
    });
    report(
        "EndlessListing list_dir_each",
        took,
        Some(growth),
        &format!("{entries} entries, {:?}", r.as_ref().map(drop)),
    );
    let err = r.expect_err("an endless listing cannot succeed");
    assert_clear("endless listing", &err, &["listing", "entries"]);
    assert!(growth < SMALL_GROWTH_MIB, "memory grew {growth:.1} MiB");
}

/// The same endless listing collected by list_dir (as the filesystem does) must stop
/// at the listing bound (`max_entries=`), before it fills memory. The bound here is
/// 300,000 entries, so that the test's time does not depend on the machine's load
/// (the default, 2,000,000, is the same code with a larger number).
#[test]
fn endless_listing_collected_by_list_dir_is_stopped_in_bounded_memory() {
    let _g = serial();
    let srv = HostileServer::start(Behaviour::EndlessListing);
    let opts = Arc::new(ConnectOptions {
        max_listing_entries: 300_000,
        ..(*options(&srv)).clone()
    });
    let mut conn = FtpConnection::connect(opts, tls()).expect("connect to the hostile server");
    let mem = Memory::start();
    let ran = run_bounded(&srv, move || conn.list_dir("/").map(|v| v.len()));
    let growth = mem.growth_mib();
    let sent = srv.stats().entries_sent;
    let (r, took) = ran.unwrap_or_else(|waited| {
        panic!(
            "list_dir of an endless MLSD still running after {waited:?}: {sent} entries sent \
             by the server, memory +{growth:.1} MiB; a listing needs a bound (entries or bytes)"
        )
    });
    report(
        "EndlessListing list_dir",
        took,
        Some(growth),
        &format!("{sent} entries sent, {r:?}"),
    );
    let err = r.expect_err("an endless listing cannot succeed");
    assert_clear("endless listing", &err, &["listing", "entries"]);
    assert!(growth < HUGE_GROWTH_MIB, "memory grew {growth:.1} MiB");
}

/// A listing line that never ends (no LF) must end in an error too: a bound on the
/// number of entries alone would never trigger. With a 300,000-entry bound (its
/// byte bound 150 MB), so that the test's time does not depend on the load.
#[test]
fn endless_listing_line_is_stopped_by_a_listing_bound() {
    let _g = serial();
    let srv = HostileServer::start(Behaviour::EndlessListingLine);
    let opts = Arc::new(ConnectOptions {
        max_listing_entries: 300_000,
        ..(*options(&srv)).clone()
    });
    let mut conn = FtpConnection::connect(opts, tls()).expect("connect to the hostile server");
    let seen = Arc::new(AtomicU64::new(0));
    let s2 = seen.clone();
    let mem = Memory::start();
    let ran = run_bounded(&srv, move || {
        conn.list_dir_each("/", &mut |_| {
            s2.fetch_add(1, Ordering::Relaxed);
        })
    });
    let growth = mem.growth_mib();
    let sent = srv.stats().data_bytes_sent;
    let (r, took) = ran.unwrap_or_else(|waited| {
        panic!(
            "list_dir_each of an MLSD with one endless line still running after {waited:?}: \
             {} MiB sent by the server, memory +{growth:.1} MiB; a listing needs a byte bound",
            sent >> 20
        )
    });
    report(
        "EndlessListingLine list_dir_each",
        took,
        Some(growth),
        &format!("{:?}", r.as_ref().map(drop)),
    );
    assert_eq!(seen.load(Ordering::Relaxed), 0);
    let err = r.expect_err("an endless line cannot be a listing");
    assert_clear("endless listing line", &err, &["listing", "line", "long"]);
    assert!(growth < SMALL_GROWTH_MIB, "memory grew {growth:.1} MiB");
}

// ---------------------------------------------------------------------------
// Replies

/// A reply line of 8 MiB without CRLF (to PWD) is refused after the line bound.
#[test]
fn overlong_reply_line_is_refused() {
    let _g = serial();
    let srv = HostileServer::start(Behaviour::OverlongLine);
    let mut conn = connect(&srv);
    let mem = Memory::start();
    let ran = run_bounded(&srv, move || {
        let r = conn.command(&Command::pwd());
        let broken = conn.is_broken();
        (r, broken, conn)
    });
    let growth = mem.growth_mib();
    let ((r, broken, _conn), took) =
        ran.unwrap_or_else(|w| panic!("PWD with an overlong reply still running after {w:?}"));
    report(
        "OverlongLine PWD",
        took,
        Some(growth),
        &format!("{:?}", r.as_ref().map(|r| r.code)),
    );
    let err = r.expect_err("an 8 MiB reply line must be refused");
    assert_clear("overlong PWD reply", &err, &["too long"]);
    assert!(
        broken,
        "the connection must be given up after a protocol error"
    );
    assert!(took < BOUND, "took {took:?}");
    assert!(growth < SMALL_GROWTH_MIB, "memory grew {growth:.1} MiB");
}

/// An 8 MiB preliminary reply to MLSD or RETR is refused the same way.
#[test]
fn overlong_preliminary_reply_to_a_transfer_is_refused() {
    let _g = serial();
    let srv = HostileServer::start(Behaviour::OverlongLine);
    for op in ["MLSD", "RETR"] {
        let mut conn = connect(&srv);
        let mem = Memory::start();
        let ran = run_bounded(&srv, move || {
            let r = if op == "MLSD" {
                conn.list_dir("/").map(drop)
            } else {
                let path = format!("/{FILE_NAME}");
                conn.retr(&path, 0).map(drop)
            };
            (r, conn)
        });
        let growth = mem.growth_mib();
        let ((r, _conn), took) =
            ran.unwrap_or_else(|w| panic!("{op} with an overlong 150 still running after {w:?}"));
        report(
            &format!("OverlongLine {op}"),
            took,
            Some(growth),
            &format!("{r:?}"),
        );
        let err = r.expect_err("an 8 MiB preliminary reply must be refused");
        assert_clear(&format!("overlong 150 to {op}"), &err, &["too long"]);
        assert!(took < BOUND, "{op} took {took:?}");
        assert!(
            growth < SMALL_GROWTH_MIB,
            "{op}: memory grew {growth:.1} MiB"
        );
    }
}

/// A multi-line reply that never ends (`213-` and 8000-byte lines forever) is refused
/// by a bound on the reply, for SIZE and for MLST.
#[test]
fn endless_multiline_reply_is_refused() {
    let _g = serial();
    let srv = HostileServer::start(Behaviour::EndlessMultiline);
    for op in ["SIZE", "MLST"] {
        let mut conn = connect(&srv);
        let mem = Memory::start();
        let ran = run_bounded(&srv, move || {
            let path = format!("/{FILE_NAME}");
            let r = if op == "SIZE" {
                conn.size(&path).map(drop)
            } else {
                conn.mlst(&path).map(drop)
            };
            (r, conn)
        });
        let growth = mem.growth_mib();
        let ((r, _conn), took) =
            ran.unwrap_or_else(|w| panic!("{op} with an endless reply still running after {w:?}"));
        report(
            &format!("EndlessMultiline {op}"),
            took,
            Some(growth),
            &format!(
                "{r:?}; server sent {} MiB",
                srv.stats().hostile_reply_bytes_sent >> 20
            ),
        );
        let err = r.expect_err("an endless reply must be refused");
        assert_clear(&format!("endless reply to {op}"), &err, &["too long"]);
        assert!(took < BOUND, "{op} took {took:?}");
        assert!(
            growth < SMALL_GROWTH_MIB,
            "{op}: memory grew {growth:.1} MiB"
        );
    }
}

// ---------------------------------------------------------------------------
// Silence

/// RETR answered with 150, a data connection, then nothing: the download fails with
/// a timeout, and giving it up (dropping the Download: ABOR) is bounded too.
#[test]
fn preliminary_150_then_nothing_on_retr_times_out() {
    let _g = serial();
    let srv = HostileServer::start(Behaviour::Preliminary150ThenNothing);
    let mut conn = connect(&srv);
    let ran = run_bounded(&srv, move || {
        let t = Instant::now();
        let path = format!("/{FILE_NAME}");
        let (first, at) = match conn.retr(&path, 0) {
            Err(e) => (e.to_string(), t.elapsed()),
            Ok(mut dl) => {
                let mut buf = [0u8; 4096];
                let r = dl.read(&mut buf);
                let at = t.elapsed();
                drop(dl); // ABOR
                (format!("{r:?}"), at)
            }
        };
        (first, at, conn.is_broken())
    });
    let ((first, at, broken), took) =
        ran.unwrap_or_else(|w| panic!("RETR after a bare 150 still running after {w:?}"));
    report(
        "Preliminary150ThenNothing RETR",
        took,
        None,
        &format!("first error after {at:.2?}: {first}; broken: {broken}"),
    );
    assert!(
        first.to_lowercase().contains("timed out"),
        "first error: {first}"
    );
    assert!(at < BOUND, "the read failed after {at:?}");
    assert!(took < BOUND, "RETR, read and abort took {took:?}");
    assert!(
        broken,
        "a connection whose server went silent must be given up"
    );
}

/// MLSD answered with 150, a data connection, then nothing.
#[test]
fn preliminary_150_then_nothing_on_mlsd_times_out() {
    let _g = serial();
    let srv = HostileServer::start(Behaviour::Preliminary150ThenNothing);
    let mut conn = connect(&srv);
    let ran = run_bounded(&srv, move || {
        let r = conn.list_dir("/").map(|v| v.len());
        (r, conn.is_broken())
    });
    let ((r, broken), took) =
        ran.unwrap_or_else(|w| panic!("MLSD after a bare 150 still running after {w:?}"));
    report(
        "Preliminary150ThenNothing MLSD",
        took,
        None,
        &format!("{r:?}; broken: {broken}"),
    );
    let err = r.expect_err("a listing that never comes must fail");
    assert_clear("silent MLSD", &err, &["timed out"]);
    assert!(took < BOUND, "list_dir took {took:?}");
    assert!(
        broken,
        "a connection whose server went silent must be given up"
    );
}

/// The same silent transfers inside an operation deadline (`ftpsfs::deadline`, as
/// the filesystem runs every operation): the whole call, abort included, ends
/// within the bound.
#[test]
fn preliminary_150_then_nothing_within_an_operation_deadline() {
    let _g = serial();
    let srv = HostileServer::start(Behaviour::Preliminary150ThenNothing);
    for op in ["RETR", "MLSD"] {
        let mut conn = connect(&srv);
        let ran = run_bounded(&srv, move || {
            let _scope = ftpsfs::deadline::start(TIMEOUT);
            let r = if op == "MLSD" {
                conn.list_dir("/").map(drop).map_err(|e| e.to_string())
            } else {
                let path = format!("/{FILE_NAME}");
                match conn.retr(&path, 0) {
                    Err(e) => Err(e.to_string()),
                    Ok(mut dl) => {
                        let mut buf = [0u8; 4096];
                        dl.read(&mut buf).map(drop).map_err(|e| e.to_string())
                    }
                }
            };
            (r, conn.is_broken())
        });
        let ((r, broken), took) =
            ran.unwrap_or_else(|w| panic!("{op} after a bare 150 still running after {w:?}"));
        report(
            &format!("Preliminary150ThenNothing {op} under a deadline"),
            took,
            None,
            &format!("{r:?}; broken: {broken}"),
        );
        let err = r.expect_err("a transfer that never comes must fail");
        assert!(err.contains("timed out"), "{op}: {err}");
        assert!(took < BOUND, "{op} took {took:?}");
        assert!(broken, "{op}: a silent connection must be given up");
    }
}

/// A server that stops answering right after login: connect fails with a timeout.
#[test]
fn stall_after_login_fails_connect_with_a_timeout() {
    let _g = serial();
    let srv = HostileServer::start(Behaviour::StallAfterLogin);
    let (opts, ctx) = (options(&srv), tls());
    let ran = run_bounded(&srv, move || FtpConnection::connect(opts, ctx).map(drop));
    let (r, took) = ran.unwrap_or_else(|w| panic!("connect still running after {w:?}"));
    report("StallAfterLogin connect", took, None, &format!("{r:?}"));
    let err = r.expect_err("connect to a silent server must fail");
    assert_clear("stalled login", &err, &["timed out"]);
    assert!(took < BOUND, "connect took {took:?}");
}

/// A server that stops answering once the connection is set up: each command fails
/// with a timeout (NOOP, SIZE, MLSD, RETR, each on a fresh connection).
#[test]
fn stall_after_setup_fails_each_command_with_a_timeout() {
    let _g = serial();
    let srv = HostileServer::start(Behaviour::StallAfterSetup);
    type Op = fn(&mut FtpConnection) -> Result<(), FtpError>;
    let ops: [(&str, Op); 4] = [
        ("NOOP", |c| c.noop()),
        ("SIZE", |c| c.size("/x").map(drop)),
        ("MLSD", |c| c.list_dir("/").map(drop)),
        ("RETR", |c| c.retr("/x", 0).map(drop)),
    ];
    for (name, op) in ops {
        let mut conn = connect(&srv);
        let ran = run_bounded(&srv, move || {
            let r = op(&mut conn);
            (r, conn.is_broken())
        });
        let ((r, broken), took) =
            ran.unwrap_or_else(|w| panic!("{name} still running after {w:?}"));
        report(
            &format!("StallAfterSetup {name}"),
            took,
            None,
            &format!("{r:?}; broken: {broken}"),
        );
        let err = r.expect_err("a command to a silent server must fail");
        assert_clear(&format!("silent {name}"), &err, &["timed out"]);
        assert!(took < BOUND, "{name} took {took:?}");
        assert!(broken, "{name}: a silent connection must be given up");
    }
}
