//! pjdfstest (the Rust port, `cargo install pjdfstest`) on an ftpsfs mount of proftpd
//! with `allow_other,default_permissions`, one test per group of its test cases.
//!
//! Design. Which cases fail is decided by `tests/pjdfstest/expected-failures.txt`: one
//! case per line, with the line of SEMANTICS.md that documents why it cannot pass and
//! a phrase that line must contain (`expected_failures_point_to_semantics` checks each
//! one, so a reference cannot go stale silently). The list goes to pjdfstest as its
//! `expected_failures` setting; any other failure, and any listed case that passes,
//! fails the test. `PJDFSTEST_RECORD=1` prints the failing cases in the file's format
//! (with a TODO reference) to update the list after a change in src/fs.
//!
//! The binary is found on PATH or in ~/.cargo/bin (`.ci/install-deps` installs it). When
//! it is missing the tests fail with the command to install it, unless
//! `FTPSFS_SKIP_PJDFSTEST=1` says to skip them (for local runs without it).
//!
//! Needs root (pjdfstest switches users: it needs the users `nobody` and `tests`,
//! created here if missing), /dev/fuse and proftpd.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use support::mount::Mount;
use support::ServerSpec;

/// Version installed by .ci/install-deps (`cargo install pjdfstest --locked --version`).
const PJDFSTEST_VERSION: &str = "0.2.2";
const EXPECTED: &str = "tests/pjdfstest/expected-failures.txt";
const SEMANTICS: &str = "SEMANTICS.md";

/// One expected failure: the case, and where SEMANTICS.md says why.
#[derive(Debug)]
struct Expected {
    case: String,
    line: usize,
    phrase: String,
    /// Fails in some runs only (timing): either outcome is accepted.
    flaky: bool,
}

fn manifest(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Parses `case  SEMANTICS.md:LINE "phrase" [flaky]` lines (`#` comments, blank lines).
fn expected_failures() -> Vec<Expected> {
    let text = fs::read_to_string(manifest(EXPECTED)).expect("read the expected failures");
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let want = format!(
            "{EXPECTED}:{}: want `case SEMANTICS.md:LINE \"phrase\"`: {raw}",
            n + 1
        );
        let (case, rest) = line.split_once(char::is_whitespace).expect(&want);
        let case = case.to_string();
        let rest = rest.trim().strip_prefix("SEMANTICS.md:").expect(&want);
        let (num, quoted) = rest.split_once(char::is_whitespace).expect(&want);
        let line_no: usize = num.parse().expect(&want);
        let quoted = quoted.trim().strip_prefix('"').expect(&want);
        let (phrase, tail) = quoted.split_once('"').expect(&want);
        let flaky = match tail.trim() {
            "" => false,
            "flaky" => true,
            _ => panic!("{want}"),
        };
        out.push(Expected {
            case,
            line: line_no,
            phrase: phrase.to_string(),
            flaky,
        });
    }
    out
}

#[test]
fn expected_failures_point_to_semantics() {
    let semantics = fs::read_to_string(manifest(SEMANTICS)).expect("read SEMANTICS.md");
    let lines: Vec<&str> = semantics.lines().collect();
    let list = expected_failures();
    assert!(!list.is_empty());
    let mut seen = BTreeSet::new();
    for e in &list {
        assert!(seen.insert(&e.case), "{} listed twice", e.case);
        assert!(!e.phrase.is_empty(), "{}: no phrase", e.case);
        let line = lines
            .get(e.line.wrapping_sub(1))
            .unwrap_or_else(|| panic!("{}: SEMANTICS.md has no line {}", e.case, e.line));
        assert!(
            line.to_lowercase().contains(&e.phrase.to_lowercase()),
            "{}: SEMANTICS.md:{} does not say {:?} (SEMANTICS.md changed? run tests/pjdfstest/renumber):\n{line}",
            e.case,
            e.line,
            e.phrase
        );
    }
}

/// The pjdfstest binary, or `None` (then the caller fails or skips).
fn pjdfstest_bin() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(home.map(|h| h.join(".cargo/bin")));
    for dir in candidates {
        let p = dir.join("pjdfstest");
        if p.is_file() {
            return Some(p);
        }
    }
    None
}

/// The users and group pjdfstest switches to (idempotent).
fn ensure_users() {
    let have_user = |u: &str| {
        Command::new("id")
            .arg(u)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if !have_user("tests") {
        let _ = Command::new("useradd")
            .args(["-M", "-U", "-s", "/usr/sbin/nologin", "tests"])
            .status();
    }
    let has_group = Command::new("getent")
        .args(["group", "pjdfstest"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !has_group {
        let _ = Command::new("groupadd").arg("pjdfstest").status();
    }
    assert!(
        have_user("tests") && have_user("nobody"),
        "users for pjdfstest"
    );
}

/// Outcome of one case, as pjdfstest prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Failed,
    FailedAsExpected,
    PassedUnexpectedly,
    Skipped,
}

/// (case, outcome, detail lines) from pjdfstest's output (colours stripped).
fn parse(out: &str) -> Vec<(String, Outcome, String)> {
    let mut res: Vec<(String, Outcome, String)> = Vec::new();
    for raw in out.lines() {
        let line = strip_ansi(raw);
        let t = line.trim_end();
        let outcome = [
            (" failed as expected", Outcome::FailedAsExpected),
            (" PASSED UNEXPECTEDLY", Outcome::PassedUnexpectedly),
            (" FAILED", Outcome::Failed),
            (" skipped", Outcome::Skipped),
            (" ok", Outcome::Ok),
        ]
        .into_iter()
        .find(|(s, _)| t.ends_with(s));
        match outcome {
            Some((suffix, o)) if !t.starts_with(char::is_whitespace) && t.contains("::") => {
                let name = t[..t.len() - suffix.len()].trim().to_string();
                res.push((name, o, String::new()));
            }
            _ if raw.starts_with('\t') => {
                if let Some(last) = res.last_mut() {
                    last.2.push_str(t.trim());
                    last.2.push(' ');
                }
            }
            _ => {}
        }
    }
    res
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            for d in it.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Runs the cases whose names contain `group` (pjdfstest's own filter: `link::`
/// also runs `unlink::` and `symlink::`) on a fresh mount of proftpd; reports
/// passed/total per group (the name up to its first `::`).
fn run_group(group: &str) {
    let Some(bin) = pjdfstest_bin() else {
        if std::env::var_os("FTPSFS_SKIP_PJDFSTEST").is_some_and(|v| v == "1") {
            eprintln!("pjdfstest not installed: skipped (FTPSFS_SKIP_PJDFSTEST=1)");
            return;
        }
        panic!(
            "pjdfstest is not installed: run .ci/install-deps, or \
             `cargo install pjdfstest --locked --version {PJDFSTEST_VERSION}`; \
             FTPSFS_SKIP_PJDFSTEST=1 skips these tests"
        );
    };
    ensure_users();
    let expected = expected_failures();
    let srv = support::start(ServerSpec::proftpd());
    let m = Mount::with(&srv, "allow_other,default_permissions");
    let dir = support::mount::scratch("pjdfstest-");
    let conf = dir.path().join("pjdfstest.toml");
    // Flaky cases are not given to pjdfstest (it would call a pass unexpected): their
    // failures are accepted here.
    let list: Vec<String> = expected
        .iter()
        .filter(|e| e.case.contains(group) && !e.flaky)
        .map(|e| format!("  {:?},", e.case))
        .collect();
    let flaky: BTreeSet<&str> = expected
        .iter()
        .filter(|e| e.flaky)
        .map(|e| e.case.as_str())
        .collect();
    fs::write(
        &conf,
        format!(
            "[features]\nutimensat = {{}}\nutime_now = {{}}\nposix_fallocate = {{}}\n\n\
             [settings]\nnaptime = 1.0\nexpected_failures = [\n{}\n]\n",
            list.join("\n")
        ),
    )
    .unwrap();
    let work = m.path("pjdfstest");
    fs::create_dir(&work).unwrap();
    fs::set_permissions(&work, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let t0 = Instant::now();
    let out = Command::new(&bin)
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(&work)
        .arg(group)
        .env("NO_COLOR", "1")
        .output()
        .expect("run pjdfstest");
    let took = t0.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut cases = parse(&stdout);
    for c in cases.iter_mut() {
        if c.1 == Outcome::Failed && flaky.contains(c.0.as_str()) {
            c.1 = Outcome::FailedAsExpected;
        }
    }
    let prefixes: BTreeSet<&str> = cases
        .iter()
        .map(|c| c.0.split("::").next().unwrap_or(""))
        .collect();
    for p in prefixes {
        let count = |o: Outcome| {
            cases
                .iter()
                .filter(|c| c.1 == o && c.0.split("::").next() == Some(p))
                .count()
        };
        let total: usize = [
            Outcome::Ok,
            Outcome::FailedAsExpected,
            Outcome::Failed,
            Outcome::PassedUnexpectedly,
            Outcome::Skipped,
        ]
        .into_iter()
        .map(count)
        .sum();
        eprintln!(
            "PJDFSTEST {p:12} passed {:3}/{total:3}  failed as expected {:3}  failed {:3}  \
             passed unexpectedly {:3}  skipped {:3}",
            count(Outcome::Ok),
            count(Outcome::FailedAsExpected),
            count(Outcome::Failed),
            count(Outcome::PassedUnexpectedly),
            count(Outcome::Skipped),
        );
    }
    eprintln!(
        "pjdfstest {group:?} on proftpd: {} cases in {took:.1?}",
        cases.len()
    );
    let failed: Vec<_> = cases.iter().filter(|c| c.1 == Outcome::Failed).collect();
    if std::env::var_os("PJDFSTEST_RECORD").is_some() {
        for (name, _, detail) in &failed {
            println!("{name:60} SEMANTICS.md:TODO \"TODO\"  # {}", detail.trim());
        }
    }
    assert!(
        !cases.is_empty(),
        "pjdfstest ran no case of {group} ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let unexpected_pass: Vec<&String> = cases
        .iter()
        .filter(|c| c.1 == Outcome::PassedUnexpectedly)
        .map(|c| &c.0)
        .collect();
    assert!(
        failed.is_empty() && unexpected_pass.is_empty(),
        "pjdfstest {group} on proftpd:\nfailed (not in {EXPECTED}):\n{}\npassed, but listed \
         as expected to fail (remove them from {EXPECTED}):\n{}\n--- daemon log ---\n{}",
        failed
            .iter()
            .map(|(n, _, d)| format!("  {n}: {d}"))
            .collect::<Vec<_>>()
            .join("\n"),
        unexpected_pass
            .iter()
            .map(|n| format!("  {n}"))
            .collect::<Vec<_>>()
            .join("\n"),
        support::mount::tail(&m.daemon_output(), 3000)
    );
}

#[test]
fn pjdfstest_mkdir() {
    run_group("mkdir::");
}

#[test]
fn pjdfstest_rmdir() {
    run_group("rmdir::");
}

/// `link::` also selects `unlink::` and `symlink::`.
#[test]
fn pjdfstest_unlink_link_symlink() {
    run_group("link::");
}

#[test]
fn pjdfstest_rename() {
    run_group("rename::");
}

#[test]
fn pjdfstest_open() {
    run_group("open::");
}

/// `truncate::` also selects `ftruncate::`.
#[test]
fn pjdfstest_truncate_ftruncate() {
    run_group("truncate::");
}

#[test]
fn pjdfstest_chmod() {
    run_group("chmod::");
}

#[test]
fn pjdfstest_utimensat() {
    run_group("utimensat::");
}

#[test]
fn pjdfstest_chown() {
    run_group("chown::");
}

#[test]
fn pjdfstest_mknod_mkfifo() {
    run_group("mknod::");
    run_group("mkfifo::");
}

#[test]
fn pjdfstest_posix_fallocate() {
    run_group("posix_fallocate::");
}

/// Every case at once, for `PJDFSTEST_RECORD=1` (not part of the suite).
#[test]
#[ignore]
fn pjdfstest_everything() {
    run_group("");
}
