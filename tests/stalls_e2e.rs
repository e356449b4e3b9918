//! Real mounts of real servers when the network is slow, stalls or drops idle
//! connections, when the server limits logins, lists hostile names, and what other
//! local users may do: one slow upload leaves the rest of the mount responsive; every
//! call returns by its deadline (`timeout=`) during a stall and the mount works again
//! afterwards; connections reset while idle are replaced without an error reaching a
//! program; eight parallel jobs succeed on a server that allows two logins; a name with
//! CR is hidden without breaking its listing; `allow_other` alone lets the kernel check
//! the modes shown; the daemon's fallback log file is 0600.
//!
//! Each mount's daemon logs to a file of its own (`XDG_CACHE_HOME` points into a scratch
//! directory; there is no /dev/log here), printed when a test fails. Run with
//! `RUST_LOG=ftpsfs=debug` in the environment for debug lines; `--nocapture` shows the
//! measured figures (lines starting with `FIGURE`).

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::forwarder::Forwarder;
use support::mount::{pattern, scratch, sha256, tail, HeldWriter, Mount};
use support::{Server, ServerSpec, FORWARD_HOST};

/// A mount with the harness's defaults and `opts`, through the server's forwarder on
/// 127.0.0.2 when `via_forwarder`. (Its detached daemon logs to a cache directory of
/// its own, printed if the test fails.)
fn logged_mount(srv: &Server, via_forwarder: bool, opts: &str) -> Mount {
    let mut b = Mount::builder(srv).opts(opts);
    if via_forwarder {
        b = b.url(srv.url_via(FORWARD_HOST));
    }
    b.mount()
}

/// A directory under the server's root, owned by the FTP user (so uploads may go there).
fn server_dir(srv: &Server, rel: &str) -> PathBuf {
    let p = srv.root.join(rel);
    fs::create_dir_all(&p).unwrap();
    let u = support::test_user();
    std::os::unix::fs::chown(&p, Some(u.uid), Some(u.gid)).unwrap();
    p
}

/// What a shell command did, and how long it took.
#[derive(Debug)]
struct Run {
    what: String,
    took: Duration,
    ok: bool,
    stdout: Vec<u8>,
    stderr: String,
}

/// Runs `script` with `sh -c` (in its own process; `$MNT` and `$W` set), bounded by
/// `timeout -k 5 90` so that a hung call cannot hang the test, and times it.
fn run(what: &str, script: &str, mnt: &Path, w: &Path) -> Run {
    let t = Instant::now();
    let out = Command::new("timeout")
        .args(["-k", "5", "90", "sh", "-c", script])
        .env("MNT", mnt)
        .env("W", w)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .expect("run sh");
    Run {
        what: what.to_string(),
        took: t.elapsed(),
        ok: out.status.success(),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Total bytes of the regular files directly in `dir`.
fn bytes_in(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|it| {
            it.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

// ---- 1. one slow upload does not stall the mount ---------------------------------------

const SLOW_UPLOAD: usize = 50 << 20;
const ROUNDS: usize = 5;

/// A 50 MiB file closed through a forwarder capped at 5 MB/s per connection (its
/// upload takes ~10 s, at close: it was written out of order). Meanwhile, with
/// `cache_timeout=0` (every lookup and listing goes to the server): `stat` of a file
/// in another directory, a listing of a third one, a read of a small file never read
/// before, create+write+close of a new small file, and `stat` of the uploading file
/// itself (which shows its new size) each take < 100 ms.
fn slow_upload_does_not_stall(spec: ServerSpec) {
    let srv = support::start(spec);
    server_dir(&srv, "up");
    let other = server_dir(&srv, "other");
    let lsdir = server_dir(&srv, "lsdir");
    fs::write(other.join("a.txt"), b"a\n").unwrap();
    let small = |i: usize| pattern(64 << 10, 100 + i as u64);
    for i in 0..=ROUNDS {
        fs::write(other.join(format!("r{i}.bin")), small(i)).unwrap();
    }
    for i in 0..20 {
        fs::write(lsdir.join(format!("f{i:02}")), b"x").unwrap();
    }
    let data = pattern(SLOW_UPLOAD, 21);
    let local = scratch("src-");
    let src = local.path().join("big.bin");
    fs::write(&src, &data).unwrap();

    let fwd = srv.forwarder(Duration::ZERO);
    let m = logged_mount(&srv, true, "timeout=30,cache_timeout=0");
    // Warm up: the pool has connections, each kind of call has been made once.
    assert!(fs::metadata(m.path("other/a.txt")).is_ok());
    assert_eq!(fs::read_dir(m.path("lsdir")).unwrap().count(), 20);
    assert_eq!(
        fs::read(m.path(&format!("other/r{ROUNDS}.bin"))).unwrap(),
        small(ROUNDS)
    );
    fs::write(m.path("other/warm.txt"), b"warm").unwrap();

    let writer = HeldWriter::start(&src, &m.path("up/big.bin"));
    fwd.rate_limit(Some(5_000_000));
    let t_close = Instant::now();
    let closing = std::thread::spawn(move || {
        let r = writer.close();
        (r, t_close.elapsed())
    });
    let t = Instant::now();
    while bytes_in(&srv.root.join("up")) < 1 << 20 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the upload did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    // Each call is timed in this process (no fork/exec in the figure).
    let mut worst: BTreeMap<&str, Duration> = BTreeMap::new();
    let mut all: Vec<(String, Duration)> = Vec::new();
    let mut rounds_during_upload = 0;
    let data_conns_before = fwd.data_connections();
    for i in 0..ROUNDS {
        if closing.is_finished() {
            break;
        }
        let mut time = |what: &'static str, f: &mut dyn FnMut()| {
            let t = Instant::now();
            f();
            let d = t.elapsed();
            all.push((format!("{what}#{i}"), d));
            let w = worst.entry(what).or_default();
            *w = (*w).max(d);
        };
        time("stat other/a.txt", &mut || {
            assert_eq!(fs::metadata(m.path("other/a.txt")).unwrap().len(), 2);
        });
        time("ls lsdir", &mut || {
            assert_eq!(fs::read_dir(m.path("lsdir")).unwrap().count(), 20);
        });
        time("read other/rN.bin (64 KiB)", &mut || {
            assert!(fs::read(m.path(&format!("other/r{i}.bin"))).unwrap() == small(i));
        });
        time("create+close other/newN.txt", &mut || {
            fs::write(m.path(&format!("other/new{i}.txt")), format!("new {i}\n")).unwrap();
        });
        time("stat up/big.bin (uploading)", &mut || {
            assert_eq!(
                fs::metadata(m.path("up/big.bin")).unwrap().len(),
                SLOW_UPLOAD as u64,
                "the uploading file does not show its new size"
            );
        });
        if !closing.is_finished() {
            rounds_during_upload += 1;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let on_server_then = bytes_in(&srv.root.join("up"));
    let data_conns = fwd.data_connections() - data_conns_before;
    let (closed, close_took) = closing.join().unwrap();
    fwd.clear_faults();
    println!(
        "FIGURE slow_upload[{}]: upload (close) took {:.1} s; {rounds_during_upload} rounds \
         during it ({} of {} MiB on the server after them, {data_conns} data connections); \
         slowest: {}",
        srv.spec.kind.name(),
        close_took.as_secs_f64(),
        on_server_then >> 20,
        SLOW_UPLOAD >> 20,
        worst
            .iter()
            .map(|(k, v)| format!("{k} {}", ms(*v)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert_eq!(closed, "closed", "the slow upload's close failed");
    assert_eq!(
        sha256(&fs::read(srv.root.join("up/big.bin")).unwrap()),
        sha256(&data)
    );
    for i in 0..ROUNDS.min(all.len() / 5) {
        assert_eq!(
            fs::read(srv.root.join(format!("other/new{i}.txt"))).unwrap(),
            format!("new {i}\n").as_bytes()
        );
    }
    // No call waits for the upload (it takes about 10 s; before, a stat of another
    // file took 8.6 s): the typical call is well under 100 ms, and no call, even
    // one that logs a connection in anew (TLS 1.3 tickets used up) in this debug
    // build on a loaded two-core machine, takes half a second.
    let mut times: Vec<Duration> = all.iter().map(|(_, d)| *d).collect();
    times.sort();
    let median = times[times.len() / 2];
    let slow: Vec<_> = all
        .iter()
        .filter(|(_, d)| *d >= Duration::from_millis(500))
        .collect();
    assert!(
        median < Duration::from_millis(100) && slow.is_empty(),
        "median {median:?}; calls of 500 ms or more during a slow upload: {slow:?} (all: {all:?})"
    );
    assert!(
        rounds_during_upload >= 2,
        "only {rounds_during_upload} rounds of calls ran while the upload did \
         (it took {close_took:?}): {all:?}"
    );
    // Nothing was answered from a cache: each round listed (ls, and the lookups of
    // the two stats and the create, cache_timeout=0), downloaded and uploaded.
    let rounds = all.len() / 5;
    assert!(
        data_conns >= 4 * rounds as u64,
        "{rounds} rounds of calls used only {data_conns} data connections"
    );
}

#[test]
fn a_slow_upload_does_not_stall_other_calls_proftpd() {
    slow_upload_does_not_stall(ServerSpec::proftpd());
}

#[test]
fn a_slow_upload_does_not_stall_other_calls_vsftpd() {
    slow_upload_does_not_stall(ServerSpec::vsftpd());
}

// ---- 2. deadlines during a stall ---------------------------------------------------------

/// `timeout=10`, then the network stalls (nothing moves on any connection, open or
/// new). Four programs at once, each needing a different kind of exchange: a listing
/// (`ls` of a directory not listed before), a download (`cat` of a file whose
/// attributes are cached but whose content was never read), a lookup (`stat` in a
/// directory not listed before) and an upload (write + close of a new file, its
/// directory listed before so the create itself needs nothing from the server). Each
/// returns (with success or an error) within 15 s. Then the stall ends and `ls`, `cat`
/// and a write succeed.
fn deadlines_during_a_stall(spec: ServerSpec) {
    let srv = support::start(spec);
    let lsdir = server_dir(&srv, "lsdir");
    let catdir = server_dir(&srv, "catdir");
    let statdir = server_dir(&srv, "statdir");
    server_dir(&srv, "wdir");
    for i in 0..5 {
        fs::write(lsdir.join(format!("f{i}")), b"x").unwrap();
    }
    let content = pattern(1 << 20, 31);
    fs::write(catdir.join("c.bin"), &content).unwrap();
    fs::write(statdir.join("s.txt"), b"stat me\n").unwrap();
    fs::write(srv.root.join("wdir/old.txt"), b"old\n").unwrap();

    let fwd: Forwarder = srv.forwarder(Duration::ZERO);
    let m = logged_mount(&srv, true, "timeout=10,cache_timeout=600");
    let w = scratch("w-");
    fs::write(w.path().join("during.txt"), b"during the stall\n").unwrap();
    fs::write(w.path().join("after.txt"), b"after the stall\n").unwrap();
    // Known before the stall: the root's entries (by lookups: an opendir would
    // prefetch the subdirectories' listings), catdir's and wdir's listings.
    for d in ["lsdir", "catdir", "statdir", "wdir"] {
        assert!(m.path(d).is_dir());
    }
    assert_eq!(fs::read_dir(m.path("catdir")).unwrap().count(), 1);
    assert_eq!(fs::read_dir(m.path("wdir")).unwrap().count(), 1);
    assert_eq!(fs::metadata(m.path("catdir/c.bin")).unwrap().len(), 1 << 20);
    std::thread::sleep(Duration::from_millis(500));

    let stall = Duration::from_secs(40);
    fwd.stall(stall);
    let stall_start = Instant::now();
    let jobs: [(&str, &str); 4] = [
        ("ls lsdir (listing)", r#"ls "$MNT/lsdir""#),
        (
            "cat catdir/c.bin (download)",
            r#"cat "$MNT/catdir/c.bin" >/dev/null"#,
        ),
        (
            "stat statdir/s.txt (lookup)",
            r#"stat "$MNT/statdir/s.txt""#,
        ),
        // cp: one open, one close, and close's error reported (a shell's `>` closes
        // twice, after a dup2, and ignores the errors).
        (
            "cp to new wdir/new.txt (upload)",
            r#"cp "$W/during.txt" "$MNT/wdir/new.txt""#,
        ),
    ];
    let runs: Vec<Run> = std::thread::scope(|s| {
        let hs: Vec<_> = jobs
            .iter()
            .map(|(what, script)| {
                let (mnt, w) = (m.mnt.clone(), w.path().to_path_buf());
                s.spawn(move || run(what, script, &mnt, &w))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let all_back = stall_start.elapsed();
    // End the stall (rather than waiting out its 40 s): the held bytes are delivered.
    fwd.stall(Duration::ZERO);
    println!(
        "FIGURE stall[{}]: {}; all back after {:.2} s",
        srv.spec.kind.name(),
        runs.iter()
            .map(|r| format!(
                "{} {:.2} s {}",
                r.what,
                r.took.as_secs_f64(),
                if r.ok {
                    "ok".to_string()
                } else {
                    format!("error ({})", r.stderr)
                }
            ))
            .collect::<Vec<_>>()
            .join("; "),
        all_back.as_secs_f64()
    );
    assert!(
        all_back < stall,
        "the calls came back only when the stall ended"
    );

    // After the stall: the mount works again.
    let after = [
        ("ls lsdir", r#"ls "$MNT/lsdir""#),
        ("cat catdir/c.bin", r#"cat "$MNT/catdir/c.bin""#),
        (
            "cp to new wdir/after.txt",
            r#"cp "$W/after.txt" "$MNT/wdir/after.txt""#,
        ),
    ];
    let mut runs_after = Vec::new();
    for (what, script) in after {
        runs_after.push(run(what, script, &m.mnt, w.path()));
    }
    println!(
        "FIGURE stall[{}] after: {}",
        srv.spec.kind.name(),
        runs_after
            .iter()
            .map(|r| format!(
                "{} {:.2} s {}",
                r.what,
                r.took.as_secs_f64(),
                if r.ok { "ok" } else { &r.stderr }
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    for r in &runs {
        assert!(
            r.took < Duration::from_secs(15),
            "{} took {:?} during a stall with timeout=10 (ok: {}, stderr: {})",
            r.what,
            r.took,
            r.ok,
            r.stderr
        );
    }
    for r in &runs_after {
        assert!(r.ok, "after the stall, {} failed: {}", r.what, r.stderr);
    }
    assert_eq!(
        String::from_utf8_lossy(&runs_after[0].stdout)
            .split_whitespace()
            .count(),
        5,
        "ls after the stall"
    );
    assert!(
        runs_after[1].stdout == content,
        "cat after the stall: wrong bytes"
    );
    assert_eq!(
        fs::read(srv.root.join("wdir/after.txt")).unwrap(),
        b"after the stall\n"
    );
    // What was written during the stall is on the server whole or not at all.
    let t = Instant::now();
    loop {
        match fs::read(srv.root.join("wdir/new.txt")) {
            Err(_) => break,
            Ok(d) if d == b"during the stall\n" => break,
            Ok(d) => assert!(
                t.elapsed() < Duration::from_secs(15),
                "the file written during the stall holds {d:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn every_call_returns_by_its_deadline_during_a_stall_proftpd() {
    deadlines_during_a_stall(ServerSpec::proftpd());
}

#[test]
fn every_call_returns_by_its_deadline_during_a_stall_vsftpd() {
    deadlines_during_a_stall(ServerSpec::vsftpd());
}

// ---- 3. idle connections reset ---------------------------------------------------------------

/// Three times: some activity (four uploads at once, so the pool holds several
/// connections), a pause, then every open connection (control and data, all idle) is
/// reset; the next listing of a directory not listed before, read
/// of a file not read before, and write of a new file all succeed. The order changes
/// each time so that each comes first once.
fn idle_connections_reset(spec: ServerSpec) {
    let srv = support::start(spec);
    let w = scratch("w-");
    let file = |i: usize| pattern(256 << 10, 40 + i as u64);
    for i in 0..3 {
        let d = server_dir(&srv, &format!("d{i}"));
        for j in 0..3 {
            fs::write(d.join(format!("e{j}")), b"e").unwrap();
        }
        fs::write(srv.root.join(format!("c{i}.bin")), file(i)).unwrap();
    }
    server_dir(&srv, "warm");
    fs::write(srv.root.join("warm.bin"), b"warm").unwrap();
    fs::write(w.path().join("warm.txt"), b"warm").unwrap();
    for i in 0..3 {
        fs::write(w.path().join(format!("w{i}.txt")), format!("w{i}\n")).unwrap();
    }
    let fwd = srv.forwarder(Duration::ZERO);
    let m = logged_mount(&srv, true, "timeout=10");
    let ops = |i: usize| -> [(String, String); 3] {
        [
            (format!("ls d{i}"), format!(r#"ls "$MNT/d{i}""#)),
            (format!("cat c{i}.bin"), format!(r#"cat "$MNT/c{i}.bin""#)),
            // cp reports close's error (a shell's `>` does not).
            (
                format!("cp to new w{i}.txt"),
                format!(r#"cp "$W/w{i}.txt" "$MNT/w{i}.txt""#),
            ),
        ]
    };
    // Activity before the first cut.
    for (what, script) in [
        ("ls warm", r#"ls "$MNT/warm""#),
        ("cat warm.bin", r#"cat "$MNT/warm.bin""#),
        ("cp to new warm.txt", r#"cp "$W/warm.txt" "$MNT/warm.txt""#),
    ] {
        let r = run(what, script, &m.mnt, w.path());
        assert!(r.ok, "{what}: {}", r.stderr);
    }
    let mut results: Vec<Vec<Run>> = Vec::new();
    for round in 0..3 {
        // Activity in parallel, so the pool holds several connections.
        std::thread::scope(|s| {
            for k in 0..4 {
                let (mnt, wp) = (m.mnt.clone(), w.path().to_path_buf());
                s.spawn(move || {
                    let r = run(
                        "activity",
                        &format!(r#"cp "$W/warm.txt" "$MNT/act{round}-{k}.txt""#),
                        &mnt,
                        &wp,
                    );
                    assert!(r.ok, "activity before round {round}: {}", r.stderr);
                });
            }
        });
        std::thread::sleep(Duration::from_secs(1));
        let open = fwd.open_connections();
        fwd.cut_all();
        std::thread::sleep(Duration::from_millis(300));
        let mut o = ops(round).to_vec();
        o.rotate_left(round);
        let runs: Vec<Run> = o
            .iter()
            .map(|(what, script)| run(what, script, &m.mnt, w.path()))
            .collect();
        println!(
            "FIGURE idle_reset[{}] round {round}: {open} connections reset; {}",
            srv.spec.kind.name(),
            runs.iter()
                .map(|r| format!(
                    "{} {} {}",
                    r.what,
                    ms(r.took),
                    if r.ok { "ok" } else { &r.stderr }
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
        assert!(open > 0, "round {round}: no connection to reset");
        results.push(runs);
    }
    for (round, runs) in results.iter().enumerate() {
        for r in runs {
            assert!(
                r.ok,
                "round {round}: {} failed after idle connections were reset: {}",
                r.what, r.stderr
            );
            if r.what.starts_with("ls") {
                assert_eq!(String::from_utf8_lossy(&r.stdout), "e0\ne1\ne2\n");
            } else if r.what.starts_with("cat") {
                assert!(r.stdout == file(round), "{}: wrong bytes", r.what);
            }
        }
        assert_eq!(
            fs::read(srv.root.join(format!("w{round}.txt"))).unwrap(),
            format!("w{round}\n").as_bytes()
        );
    }
}

#[test]
fn idle_connections_reset_are_replaced_without_errors_proftpd() {
    idle_connections_reset(ServerSpec::proftpd());
}

#[test]
fn idle_connections_reset_are_replaced_without_errors_vsftpd() {
    idle_connections_reset(ServerSpec::vsftpd());
}

// ---- 4. a server that allows two logins ---------------------------------------------------------

/// proftpd allows the user 2 sessions; the mount may open 8. Four `cat`s of different
/// 8 MiB files and four `cp`s of 8 MiB files into the mount, all at once: every one
/// succeeds with the right bytes.
#[test]
fn eight_jobs_on_a_server_allowing_two_logins_proftpd() {
    let srv = support::start(ServerSpec::proftpd().max_clients_per_user(2));
    let w = scratch("w-");
    let mib8 = |seed: u64| pattern(8 << 20, seed);
    for i in 0..4u64 {
        fs::write(srv.root.join(format!("r{i}.bin")), mib8(50 + i)).unwrap();
        fs::write(w.path().join(format!("w{i}.bin")), mib8(60 + i)).unwrap();
    }
    let m = logged_mount(&srv, false, "max_conns=8,timeout=30");
    let t = Instant::now();
    let runs: Vec<Run> = std::thread::scope(|s| {
        let mut hs = Vec::new();
        for i in 0..4 {
            let (mnt, wp) = (m.mnt.clone(), w.path().to_path_buf());
            hs.push(s.spawn(move || {
                run(
                    &format!("cat r{i}.bin"),
                    // No pipe: its status would be the last command's.
                    &format!(r#"cat "$MNT/r{i}.bin" > "$W/r{i}.out""#),
                    &mnt,
                    &wp,
                )
            }));
            let (mnt, wp) = (m.mnt.clone(), w.path().to_path_buf());
            hs.push(s.spawn(move || {
                run(
                    &format!("cp w{i}.bin"),
                    &format!(r#"cp "$W/w{i}.bin" "$MNT/w{i}.bin""#),
                    &mnt,
                    &wp,
                )
            }));
        }
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let wall = t.elapsed();
    println!(
        "FIGURE max_clients[proftpd]: all 8 back after {:.2} s; {}",
        wall.as_secs_f64(),
        runs.iter()
            .map(|r| format!(
                "{} {:.2} s {}",
                r.what,
                r.took.as_secs_f64(),
                if r.ok { "ok" } else { &r.stderr }
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    for r in &runs {
        assert!(r.ok, "{} failed: {}", r.what, r.stderr);
    }
    for i in 0..4u64 {
        let r = runs
            .iter()
            .find(|r| r.what == format!("cat r{i}.bin"))
            .unwrap();
        assert!(r.ok);
        assert_eq!(
            sha256(&fs::read(w.path().join(format!("r{i}.out"))).unwrap()),
            sha256(&mib8(50 + i)),
            "cat r{i}.bin: wrong bytes"
        );
        assert_eq!(
            sha256(&fs::read(srv.root.join(format!("w{i}.bin"))).unwrap()),
            sha256(&mib8(60 + i)),
            "w{i}.bin on the server"
        );
    }
}

// ---- 5. a name with CR ------------------------------------------------------------------------------

/// A file named "cr\rname" on the server (in the root and in a subdirectory) is not
/// shown, and the listing still shows every other entry, before and after it in any
/// order; `ls -la` succeeds; looking the name up fails.
fn cr_name_hidden(spec: ServerSpec) {
    let srv = support::start(spec);
    let sub = server_dir(&srv, "d");
    for dir in [srv.root.clone(), sub.clone()] {
        for n in ["a.txt", "cr\rname", "m.txt", "z.txt"] {
            fs::write(dir.join(n), b"x").unwrap();
        }
    }
    let m = logged_mount(&srv, false, "");
    let w = scratch("w-");
    for (rel, want) in [
        ("", vec!["a.txt", "d", "m.txt", "z.txt"]),
        ("d", vec!["a.txt", "m.txt", "z.txt"]),
    ] {
        let r = run(
            &format!("ls -la /{rel}"),
            &format!(r#"ls -la "$MNT/{rel}""#),
            &m.mnt,
            w.path(),
        );
        let out = String::from_utf8_lossy(&r.stdout).into_owned();
        println!(
            "FIGURE cr_name[{}] ls -la /{rel}: ok={} {:?} {}",
            srv.spec.kind.name(),
            r.ok,
            out,
            r.stderr
        );
        assert!(r.ok, "ls -la /{rel} failed: {}", r.stderr);
        assert!(!out.contains('\r'), "ls -la /{rel} shows a CR: {out:?}");
        let names: Vec<String> = fs::read_dir(m.path(rel))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().all(|n| !n.contains('\r')),
            "/{rel}: a name with CR is shown: {names:?}"
        );
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(sorted, want, "/{rel}: the listing");
        for n in want {
            assert!(
                out.lines().any(|l| l.ends_with(&format!(" {n}"))),
                "ls -la /{rel} does not show {n}: {out:?}"
            );
        }
        assert!(
            fs::metadata(m.path(rel).join("cr\rname")).is_err(),
            "/{rel}/cr\\rname can be looked up"
        );
    }
}

#[test]
fn a_name_with_cr_is_hidden_and_the_listing_kept_proftpd() {
    cr_name_hidden(ServerSpec::proftpd());
}

#[test]
fn a_name_with_cr_is_hidden_and_the_listing_kept_vsftpd() {
    cr_name_hidden(ServerSpec::vsftpd());
}

// ---- 6. allow_other alone checks the modes shown -----------------------------------------------

/// Runs `argv` as the `ftpsfs-test` system user.
fn as_other_user(argv: &[&str]) -> std::process::Output {
    support::test_user();
    Command::new("runuser")
        .args(["-u", support::TEST_USER, "--"])
        .args(argv)
        .stdin(Stdio::null())
        .output()
        .expect("runuser")
}

/// `allow_other,umask=077` (no `default_permissions`): the file shows as 0600 owned
/// by root; another local user gets into the mount (allow_other) but `cat` of the
/// file is refused with Permission denied, while root reads it. With `umask=066`
/// (directories searchable by others), the refusal is the file's own mode: the other
/// user can `stat` it but not read it.
#[test]
fn allow_other_alone_refuses_other_users_a_0600_file_proftpd() {
    let srv = support::start(ServerSpec::proftpd());
    let secret = srv.root.join("secret.txt");
    fs::write(&secret, b"secret\n").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o644)).unwrap();
    for umask in ["077", "066"] {
        let m = logged_mount(&srv, false, &format!("allow_other,umask={umask}"));
        // The mount's own scratch directory is 0700: let others pass through it.
        let parent = m.mnt.parent().unwrap();
        fs::set_permissions(parent, fs::Permissions::from_mode(0o711)).unwrap();
        let f = m.path("secret.txt");
        let fs_ = f.to_str().unwrap();
        let md = fs::metadata(&f).unwrap();
        let root_md = fs::metadata(&m.mnt).unwrap();
        println!(
            "FIGURE allow_other[proftpd] umask={umask}: file {:o} uid {}, mount root {:o}",
            md.mode() & 0o7777,
            md.uid(),
            root_md.mode() & 0o7777
        );
        assert_eq!(md.mode() & 0o777, 0o600, "umask={umask}: the file's mode");
        assert_eq!(md.uid(), 0, "the owner shown is the mounting user");
        assert_eq!(fs::read(&f).unwrap(), b"secret\n", "root reads the file");

        let st = as_other_user(&["stat", m.mnt.to_str().unwrap()]);
        assert!(
            st.status.success(),
            "umask={umask}: the other user cannot even stat the mount root (allow_other \
             not in effect?): {}",
            String::from_utf8_lossy(&st.stderr)
        );
        if umask == "066" {
            let st = as_other_user(&["stat", fs_]);
            assert!(
                st.status.success(),
                "umask=066: the other user cannot stat the file: {}",
                String::from_utf8_lossy(&st.stderr)
            );
        }
        let cat = as_other_user(&["cat", fs_]);
        let err = String::from_utf8_lossy(&cat.stderr);
        println!(
            "FIGURE allow_other[proftpd] umask={umask}: other user's cat: {} {:?} stdout {:?}",
            cat.status,
            err.trim(),
            String::from_utf8_lossy(&cat.stdout)
        );
        assert!(
            !cat.status.success() && cat.stdout.is_empty(),
            "umask={umask}: another user read a 0600 file of root's: {:?}",
            String::from_utf8_lossy(&cat.stdout)
        );
        assert!(
            err.contains("Permission denied"),
            "umask={umask}: the other user's cat failed otherwise: {err}"
        );
    }
}

// ---- 6b. connections that died without a word -----------------------------------------------

/// Leaves several connections idle in `m`'s pool: the six files `warm/w0..5` (300,000
/// bytes each) read at once, then a moment for them to go back.
fn fill_the_pool(m: &Mount) {
    std::thread::scope(|s| {
        for i in 0..6 {
            let p = m.path(&format!("warm/w{i}"));
            s.spawn(move || assert_eq!(fs::read(p).unwrap().len(), 300_000));
        }
    });
    std::thread::sleep(Duration::from_millis(300));
}

/// The path dies without a word (a NAT that forgot it, a laptop that moved to another
/// network): every connection the mount holds goes silent, with no reset and no close;
/// new connections work. The first read meets a dead connection: its stream gives it
/// up after a third of `timeout=` and reads on a new one, so it succeeds (it used to
/// fail at its deadline); the reads after it find a working connection at once
/// instead of each waiting out a dead one. With `keepalive`, the keeper's NOOPs meet
/// the dead connections first: it takes them one at a time, so the others stay
/// available meanwhile. With `paused`, the connections were idle a while when the
/// path died (a laptop that slept): the first read's probe finds that out.
fn silent_dead_connections(spec: ServerSpec, keepalive: bool, paused: bool) {
    let srv = support::start(spec);
    let warm = server_dir(&srv, "warm");
    let cold = server_dir(&srv, "cold");
    for i in 0..6 {
        fs::write(warm.join(format!("w{i}")), pattern(300_000, i)).unwrap();
        fs::write(cold.join(format!("c{i}")), pattern(300_000, 100 + i)).unwrap();
    }
    let fwd: Forwarder = srv.forwarder(Duration::ZERO);
    let opts = match keepalive {
        true => "timeout=5,cache_timeout=600,ServerAliveInterval=1",
        false => "timeout=5,cache_timeout=600",
    };
    let m = logged_mount(&srv, true, opts);
    assert_eq!(fs::read_dir(m.path("cold")).unwrap().count(), 6);
    fill_the_pool(&m);
    if paused {
        std::thread::sleep(ftpsfs::remote::pool::PROBE_AFTER);
    }
    fwd.freeze_open();
    if keepalive {
        std::thread::sleep(Duration::from_millis(1500));
    }
    let t0 = Instant::now();
    let mut took = Vec::new();
    for i in 0..6 {
        let t = Instant::now();
        let r = fs::read(m.path(&format!("cold/c{i}")));
        took.push(t.elapsed());
        match r {
            Ok(got) => assert!(got == pattern(300_000, 100 + i), "c{i}: wrong bytes"),
            Err(e) => panic!("read c{i} after {:?} ({took:?}): {e}", t.elapsed()),
        }
    }
    println!(
        "FIGURE silent_dead[{}{}{}]: six reads after the path died: {:?} in all, each {took:?}",
        srv.spec.kind.name(),
        if keepalive { ", keepalive" } else { "" },
        if paused { ", after a pause" } else { "" },
        t0.elapsed(),
    );
    // The first: a silence limit (5 s / 3) or a probe (1 s), and a login; the
    // others: at most a probe and a login each.
    assert!(
        took.iter().all(|d| *d < Duration::from_secs(3)),
        "a read waited out a dead connection: {took:?}"
    );
}

#[test]
fn dead_connections_cost_at_most_one_wait_proftpd() {
    silent_dead_connections(ServerSpec::proftpd(), false, false);
}

/// Idle a while before the path died: the first call's probe finds it out.
#[test]
fn dead_connections_after_a_pause_cost_one_probe_vsftpd() {
    silent_dead_connections(ServerSpec::vsftpd(), false, true);
}

#[test]
fn dead_connections_met_by_keepalives_cost_at_most_one_wait_proftpd() {
    silent_dead_connections(ServerSpec::proftpd(), true, false);
}

/// A file being read when its path dies without a word: the stream's thread gives
/// the silent connection up after a third of `timeout=` (2 s here) and resumes on a
/// new one, so the reader, waiting within its own deadline, gets every byte. (It
/// used to wait on the dead connection for all of `timeout=`: the read took its
/// whole deadline, or failed with ETIMEDOUT when that came first.)
#[test]
fn a_read_stream_whose_path_dies_resumes_within_the_deadline_proftpd() {
    use std::io::Read;
    let srv = support::start(ServerSpec::proftpd());
    let data = pattern(48 << 20, 21);
    fs::write(srv.root.join("big.bin"), &data).unwrap();
    let fwd: Forwarder = srv.forwarder(Duration::ZERO);
    let m = logged_mount(&srv, true, "timeout=6,cache_timeout=600");
    let mut f = fs::File::open(m.path("big.bin")).unwrap();
    let mut out = vec![0u8; 1 << 20];
    f.read_exact(&mut out).unwrap();
    // The stream fills its readahead, then waits for the reader: its data
    // connection is open and quiet when the path dies.
    std::thread::sleep(Duration::from_millis(500));
    fwd.freeze_open();
    let mut slowest = Duration::ZERO;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let t = Instant::now();
        let n = f
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("read at {} after the path died: {e}", out.len()));
        slowest = slowest.max(t.elapsed());
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    println!(
        "FIGURE stream_dead_path[proftpd]: 48 MiB read through a path that died after 1 MiB; \
         slowest read {slowest:?} (timeout=6)"
    );
    assert_eq!(out.len(), data.len(), "short read");
    assert!(sha256(&out) == sha256(&data), "wrong bytes");
    assert!(
        slowest < Duration::from_millis(4500),
        "a read waited {slowest:?}: longer than the silence limit, a resume and a login"
    );
}

/// An unmount after the path died without a word: each idle connection's QUIT would
/// wait `timeout=` for a goodbye that never comes, one after the other. The QUITs
/// wait only as long as a live server needs, all at once: the daemon is gone within
/// a few seconds.
#[test]
fn unmount_after_the_path_died_takes_seconds_proftpd() {
    let srv = support::start(ServerSpec::proftpd());
    let warm = server_dir(&srv, "warm");
    for i in 0..6 {
        fs::write(warm.join(format!("w{i}")), pattern(300_000, i)).unwrap();
    }
    let fwd: Forwarder = srv.forwarder(Duration::ZERO);
    let mut m = logged_mount(&srv, true, "timeout=10");
    fill_the_pool(&m);
    let held = fwd.open_connections();
    fwd.freeze_open();
    let t = Instant::now();
    m.unmount();
    let took = t.elapsed();
    println!(
        "FIGURE unmount_dead_path[proftpd]: {held} connections through the forwarder, \
         unmount took {took:?}"
    );
    assert!(
        held >= 2,
        "the reads left {held} connections: nothing to test"
    );
    assert!(
        took < Duration::from_secs(5) && !m.daemon_alive(),
        "the unmount waited out the dead connections ({took:?})"
    );
}

// ---- 7. the fallback log file --------------------------------------------------------------------

/// With no /dev/log the detached daemon logs to `$XDG_CACHE_HOME/ftpsfs/ftpsfs.log`:
/// created 0600, and an existing world-readable one is made 0600.
#[test]
fn the_fallback_log_file_is_0600_proftpd() {
    assert!(
        !Path::new("/dev/log").exists(),
        "this test needs a system without /dev/log (the daemon logs to syslog there)"
    );
    let srv = support::start(ServerSpec::proftpd());
    // A fresh log.
    let m = logged_mount(&srv, false, "");
    fs::write(m.path("f.txt"), b"f").unwrap();
    let md = fs::metadata(m.log_path()).expect("the daemon created no fallback log");
    println!(
        "FIGURE log_file[proftpd]: new {:o}, {} bytes",
        md.mode() & 0o7777,
        md.len()
    );
    assert_eq!(md.mode() & 0o777, 0o600, "a new fallback log file's mode");
    // Written by the daemon (a fork: its own pid), if anything was logged yet.
    let log = m.log();
    assert!(
        log.is_empty()
            || m.daemon_pids()
                .iter()
                .any(|p| log.contains(&format!("ftpsfs[{p}]"))),
        "the log file is not the daemon's: {}",
        tail(&log, 2000)
    );
    drop(m);
    // A world-readable log left by an older version.
    let cache = scratch("xdg-cache-");
    let log = cache.path().join("ftpsfs").join("ftpsfs.log");
    fs::create_dir_all(log.parent().unwrap()).unwrap();
    fs::write(&log, b"older line\n").unwrap();
    fs::set_permissions(&log, fs::Permissions::from_mode(0o644)).unwrap();
    let m2 = Mount::builder(&srv)
        .env("XDG_CACHE_HOME", cache.path())
        .mount();
    let md = fs::metadata(&log).unwrap();
    let text = fs::read_to_string(&log).unwrap();
    println!(
        "FIGURE log_file[proftpd]: older 0644 one now {:o}",
        md.mode() & 0o7777
    );
    assert_eq!(md.mode() & 0o777, 0o600, "an older world-readable log");
    assert!(
        text.starts_with("older line\n"),
        "the older log was replaced"
    );
    drop(m2);
}
