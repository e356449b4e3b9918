//! LIST output parsers: Unix `ls -l` style (proftpd, vsftpd, pure-ftpd, ...) and
//! DOS style (IIS). Used when the server has no MLSD. Every line is hostile input.
//!
//! Unix lines are located by their date: the first run of
//! `SIZE MON DD HH:MM|YYYY` (or `SIZE YYYY-MM-DD HH:MM`, `ls --time-style=long-iso`)
//! after the permission string. The name is everything after exactly ONE space
//! following the time/year token, so leading and internal spaces survive.
//!
//! A line whose date fields are structurally wrong (month 13, day 32, hour 25) is
//! rejected; a well-formed but impossible date (Feb 30, a year before 1970) keeps
//! the entry with `mtime: None`. Times are taken as UTC.

use std::time::{Duration, SystemTime};

use super::mlsd::{parse_decimal_u64, strip_line_ending, truncate_for_log, MAX_LINE_LEN};
use super::timeconv::{system_time_to_utc, utc_to_system_time};
use crate::ftp::entry::{is_valid_name, EntryKind, RemoteEntry};

/// Byte ranges of the space/tab separated tokens of `line`.
fn tokens(line: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    for (i, b) in line.bytes().enumerate() {
        let sep = b == b' ' || b == b'\t';
        match (sep, start) {
            (true, Some(s)) => {
                out.push((s, i));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, line.len()));
    }
    out
}

/// A run of 1..=`max` ASCII digits as u32.
fn small_number(s: &str, max_digits: usize) -> Option<u32> {
    if s.is_empty() || s.len() > max_digits || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn month_number(s: &str) -> Option<u32> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    if s.len() != 3 {
        return None;
    }
    MONTHS
        .iter()
        .position(|m| m.eq_ignore_ascii_case(s))
        .map(|i| i as u32 + 1)
}

/// `HH:MM` (hour 1-2 digits) → (hour, minute), structurally valid.
fn hour_minute(s: &str) -> Option<(u32, u32)> {
    let (h, m) = s.split_once(':')?;
    let h = small_number(h, 2)?;
    if m.len() != 2 {
        return None;
    }
    let m = small_number(m, 2)?;
    (h < 24 && m < 60).then_some((h, m))
}

/// Permission bits of `ls -l`'s `rwxrwxrwx` (with s/S/t/T), or `None` if malformed.
fn mode_from_perm_string(p: &[u8]) -> Option<u32> {
    if p.len() != 9 {
        return None;
    }
    let mut mode = 0u32;
    for (who, shift) in [(0usize, 6u32), (1, 3), (2, 0)] {
        let r = p[who * 3];
        let w = p[who * 3 + 1];
        let x = p[who * 3 + 2];
        match r {
            b'r' => mode |= 0o4 << shift,
            b'-' => {}
            _ => return None,
        }
        match w {
            b'w' => mode |= 0o2 << shift,
            b'-' => {}
            _ => return None,
        }
        let special = [0o4000, 0o2000, 0o1000][who];
        match (who, x) {
            (_, b'x') => mode |= 0o1 << shift,
            (_, b'-') => {}
            (0 | 1, b's') | (2, b't') => mode |= special | (0o1 << shift),
            (0 | 1, b'S') | (2, b'T') => mode |= special,
            // Old System V: mandatory locking shown as `l` in the group x slot.
            (1, b'l') => mode |= 0o2000,
            _ => return None,
        }
    }
    Some(mode)
}

/// Resolves `Mon DD HH:MM` (no year) against `now`: this year, unless that is more
/// than a day in the future, then last year.
fn infer_year(month: u32, day: u32, hour: u32, min: u32, now: SystemTime) -> Option<SystemTime> {
    let (now_year, ..) = system_time_to_utc(now);
    let limit = now.checked_add(Duration::from_secs(86_400)).unwrap_or(now);
    match utc_to_system_time(now_year, month, day, hour, min, 0, 0) {
        Some(t) if t <= limit => Some(t),
        _ => utc_to_system_time(now_year - 1, month, day, hour, min, 0, 0),
    }
}

/// Where the date fields of a Unix line sit: index of the size token, index of the
/// last date token, and the mtime (None for an impossible date).
struct UnixDate {
    size_tok: usize,
    last_tok: usize,
    mtime: Option<SystemTime>,
}

/// `MON DD HH:MM|YYYY` starting at token `i`.
fn classic_date(line: &str, t: &[(usize, usize)], i: usize, now: SystemTime) -> Option<UnixDate> {
    let tok = |k: usize| t.get(k).map(|&(s, e)| &line[s..e]);
    let month = month_number(tok(i)?)?;
    let day = small_number(tok(i + 1)?, 2).filter(|d| (1..=31).contains(d))?;
    let last = tok(i + 2)?;
    let mtime = if let Some((h, m)) = hour_minute(last) {
        infer_year(month, day, h, m, now)
    } else if last.len() == 4 {
        let year = small_number(last, 4)?;
        utc_to_system_time(i64::from(year), month, day, 0, 0, 0, 0)
    } else {
        return None;
    };
    Some(UnixDate {
        size_tok: i - 1,
        last_tok: i + 2,
        mtime,
    })
}

/// `YYYY-MM-DD HH:MM` starting at token `i` (`ls --time-style=long-iso`).
fn iso_date(line: &str, t: &[(usize, usize)], i: usize) -> Option<UnixDate> {
    let tok = |k: usize| t.get(k).map(|&(s, e)| &line[s..e]);
    let d = tok(i)?;
    let mut parts = d.split('-');
    let (y, mo, dd) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || y.len() != 4 || mo.len() != 2 || dd.len() != 2 {
        return None;
    }
    let (y, mo, dd) = (
        small_number(y, 4)?,
        small_number(mo, 2)?,
        small_number(dd, 2)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&dd) {
        return None;
    }
    let (h, m) = hour_minute(tok(i + 1)?)?;
    let mtime = utc_to_system_time(i64::from(y), mo, dd, h, m, 0, 0);
    Some(UnixDate {
        size_tok: i - 1,
        last_tok: i + 1,
        mtime,
    })
}

fn parse_unix(line: &str, now: SystemTime) -> Option<RemoteEntry> {
    let t = tokens(line);
    let &(ps, pe) = t.first()?;
    if ps != 0 {
        return None;
    }
    let perm = &line.as_bytes()[ps..pe];
    // 10 chars, optionally followed by one ACL / xattr / SELinux marker.
    if !(perm.len() == 10 || (perm.len() == 11 && matches!(perm[10], b'+' | b'@' | b'.'))) {
        return None;
    }
    let kind = match perm[0] {
        b'-' => EntryKind::File,
        b'd' => EntryKind::Dir,
        b'l' => EntryKind::Symlink(None),
        _ => return None, // devices, fifos, sockets, doors, ...
    };
    let mode = mode_from_perm_string(&perm[1..10])?;

    // perm [links] owner [group] SIZE DATE...: the size is at token 2 or later.
    let date = (3..t.len()).find_map(|i| {
        let (s, e) = t[i - 1];
        if !line[s..e].bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        classic_date(line, &t, i, now).or_else(|| iso_date(line, &t, i))
    })?;
    let (ss, se) = t[date.size_tok];
    let size = parse_decimal_u64(&line[ss..se])?;
    let (_, end) = t[date.last_tok];
    if line.as_bytes().get(end) != Some(&b' ') {
        return None;
    }
    let rest = &line[end + 1..];
    let (name, kind) = match kind {
        EntryKind::Symlink(_) => match rest.split_once(" -> ") {
            Some((n, target)) => (
                n,
                EntryKind::Symlink((!target.is_empty()).then(|| target.to_string())),
            ),
            None => (rest, EntryKind::Symlink(None)),
        },
        k => (rest, k),
    };
    if !is_valid_name(name) {
        return None;
    }
    Some(RemoteEntry {
        name: name.to_string(),
        kind,
        size,
        mtime: date.mtime,
        mode: Some(mode),
    })
}

/// `MM-DD-YY` / `MM-DD-YYYY` (also with `/`) → (year, month, day), structurally valid.
fn dos_date(s: &str) -> Option<(i64, u32, u32)> {
    let sep = if s.contains('-') { '-' } else { '/' };
    let mut parts = s.split(sep);
    let (mo, d, y) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || mo.len() != 2 || d.len() != 2 {
        return None;
    }
    let (mo, d) = (small_number(mo, 2)?, small_number(d, 2)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let y = match y.len() {
        2 => {
            let y = small_number(y, 2)?;
            i64::from(if y < 70 { 2000 + y } else { 1900 + y })
        }
        4 => i64::from(small_number(y, 4)?),
        _ => return None,
    };
    Some((y, mo, d))
}

/// `HH:MM` with an optional `AM`/`PM` suffix (attached or as the next token).
/// Returns (hour, minute, consumed-next-token).
fn dos_time(s: &str, next: Option<&str>) -> Option<(u32, u32, bool)> {
    let upper = s.to_ascii_uppercase();
    let (hm, suffix, consumed) = if let Some(hm) = upper.strip_suffix("AM") {
        (hm.to_string(), Some(false), false)
    } else if let Some(hm) = upper.strip_suffix("PM") {
        (hm.to_string(), Some(true), false)
    } else {
        match next.map(str::to_ascii_uppercase).as_deref() {
            Some("AM") => (upper.clone(), Some(false), true),
            Some("PM") => (upper.clone(), Some(true), true),
            _ => (upper.clone(), None, false),
        }
    };
    let (h, m) = hour_minute(&hm)?;
    let h = match suffix {
        None => h,
        Some(_) if !(1..=12).contains(&h) => return None,
        Some(false) => h % 12,
        Some(true) => h % 12 + 12,
    };
    Some((h, m, consumed))
}

fn parse_dos(line: &str) -> Option<RemoteEntry> {
    let t = tokens(line);
    let tok = |k: usize| t.get(k).map(|&(s, e)| &line[s..e]);
    let (year, month, day) = dos_date(tok(0)?)?;
    let (hour, min, consumed) = dos_time(tok(1)?, tok(2))?;
    let k = if consumed { 3 } else { 2 };
    let field = tok(k)?;
    let (_, end) = t[k];
    let (kind, size, name) = if field.eq_ignore_ascii_case("<DIR>") {
        // Directory names are left-aligned after padding; leading spaces are lost.
        let name = line[end..].trim_start_matches([' ', '\t']);
        (EntryKind::Dir, 0, name)
    } else {
        let size = parse_decimal_u64(field)?;
        // Sizes are right-aligned and followed by exactly one space.
        if line.as_bytes().get(end) != Some(&b' ') {
            return None;
        }
        (EntryKind::File, size, &line[end + 1..])
    };
    if !is_valid_name(name) {
        return None;
    }
    Some(RemoteEntry {
        name: name.to_string(),
        kind,
        size,
        mtime: utc_to_system_time(year, month, day, hour, min, 0, 0),
        mode: None,
    })
}

/// Parses one LIST line (Unix `ls -l` or DOS/IIS style; a trailing `\r\n` is
/// tolerated). `now` resolves year-less Unix dates. Returns `None` for anything
/// that is not a file, directory or symlink entry: `total N` lines, blank lines,
/// devices/fifos/sockets, `.` and `..`, malformed or overlong (> [`MAX_LINE_LEN`])
/// lines, sizes that are not a u64, and names failing [`is_valid_name`].
///
/// Unix symlinks `a -> b` give name `a` and `EntryKind::Symlink(Some("b"))`.
/// DOS entries have `mode: None`.
pub fn parse_list_line(line: &str, now: SystemTime) -> Option<RemoteEntry> {
    let line = strip_line_ending(line);
    if line.is_empty() || line.len() > MAX_LINE_LEN {
        return None;
    }
    match line.as_bytes()[0] {
        b'0'..=b'9' => parse_dos(line),
        _ => parse_unix(line, now),
    }
}

/// Parses a whole LIST data transfer (lines end in `\r\n` or `\n`), skipping
/// every line [`parse_list_line`] rejects. Unparsable lines other than `total N`
/// are logged at debug level.
pub fn parse_list(text: &str, now: SystemTime) -> Vec<RemoteEntry> {
    let mut out = Vec::new();
    for raw in text.split('\n') {
        let line = strip_line_ending(raw);
        if line.trim().is_empty() {
            continue;
        }
        match parse_list_line(line, now) {
            Some(e) => out.push(e),
            None => {
                if !line.starts_with("total ") {
                    log::debug!("skipping LIST line {:?}", truncate_for_log(line));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        // 2021-06-15 12:00:00 UTC
        utc_to_system_time(2021, 6, 15, 12, 0, 0, 0).unwrap_or(SystemTime::UNIX_EPOCH)
    }

    fn at(y: i64, mo: u32, d: u32, h: u32, mi: u32) -> Option<SystemTime> {
        utc_to_system_time(y, mo, d, h, mi, 0, 0)
    }

    fn ok(line: &str) -> RemoteEntry {
        match parse_list_line(line, now()) {
            Some(e) => e,
            None => panic!("rejected {line:?}"),
        }
    }

    #[test]
    fn proftpd_lines() {
        let e = ok("drwxr-xr-x   2 ftp      ftp          4096 Mar 04 12:30 dir name");
        assert_eq!(e.name, "dir name");
        assert_eq!(e.kind, EntryKind::Dir);
        assert_eq!((e.size, e.mode), (4096, Some(0o755)));
        assert_eq!(e.mtime, at(2021, 3, 4, 12, 30));

        let e = ok("-rw-r--r--   1 ftp      ftp           123 Mar  4  2021 file\r\n");
        assert_eq!(
            (e.name.as_str(), e.size, e.mode),
            ("file", 123, Some(0o644))
        );
        assert_eq!(e.mtime, at(2021, 3, 4, 0, 0));
        assert_eq!(e.kind, EntryKind::File);
    }

    #[test]
    fn vsftpd_numeric_owners() {
        let e = ok("drwxr-xr-x    2 1000     1000         4096 Mar 04 12:30 dir name");
        assert_eq!(
            (e.name.as_str(), e.kind, e.size),
            ("dir name", EntryKind::Dir, 4096)
        );
        let e = ok("lrwxrwxrwx    1 0        0               7 Jan 01  2020 link -> target");
        assert_eq!(e.name, "link");
        assert_eq!(e.kind, EntryKind::Symlink(Some("target".into())));
        assert_eq!(e.mode, Some(0o777));
        assert_eq!(e.mtime, at(2020, 1, 1, 0, 0));
        let e = ok("lrwxrwxrwx 1 0 0 7 Jan 1 2020 link -> target");
        assert_eq!((e.name.as_str(), e.size), ("link", 7));
    }

    #[test]
    fn pureftpd_and_missing_group() {
        let e = ok("-rw-r--r--    1 user       users             42 May 15 08:30 notes.txt");
        assert_eq!((e.name.as_str(), e.size), ("notes.txt", 42));
        assert_eq!(e.mtime, at(2021, 5, 15, 8, 30));
        // No group column.
        let e = ok("-rw-r--r--   1 owner        9 Nov  1  2019 nogroup.txt");
        assert_eq!((e.name.as_str(), e.size), ("nogroup.txt", 9));
        // No link count either.
        let e = ok("-rw-r--r-- owner 9 Nov 1 2019 bare");
        assert_eq!((e.name.as_str(), e.size), ("bare", 9));
        // ACL marker and long-iso dates.
        let e = ok("-rw-r--r--+ 1 a b 5 2020-02-29 23:59 iso file");
        assert_eq!(
            (e.name.as_str(), e.mtime),
            ("iso file", at(2020, 2, 29, 23, 59))
        );
    }

    #[test]
    fn names_with_spaces_are_preserved() {
        assert_eq!(
            ok("-rw-r--r-- 1 a b 1 Mar  4  2021  leading").name,
            " leading"
        );
        assert_eq!(
            ok("-rw-r--r-- 1 a b 1 Mar  4 12:30   three").name,
            "  three"
        );
        assert_eq!(
            ok("-rw-r--r-- 1 a b 1 Mar  4 12:30 in  side ").name,
            "in  side "
        );
        // A file may be named like a date.
        assert_eq!(
            ok("-rw-r--r-- 1 a b 1 Mar  4 12:30 5 Mar 4 2020 x").name,
            "5 Mar 4 2020 x"
        );
        // ` -> ` in a regular file's name is kept.
        assert_eq!(ok("-rw-r--r-- 1 a b 1 Mar  4 12:30 a -> b").name, "a -> b");
        let e = ok("lrwxrwxrwx 1 a b 1 Mar  4 12:30 my link -> /abs/tar get");
        assert_eq!(e.name, "my link");
        assert_eq!(e.kind, EntryKind::Symlink(Some("/abs/tar get".into())));
        let e = ok("lrwxrwxrwx 1 a b 1 Mar  4 12:30 dangling");
        assert_eq!(e.kind, EntryKind::Symlink(None));
    }

    #[test]
    fn special_mode_bits() {
        assert_eq!(ok("-rwsr-xr-x 1 a b 1 Mar 4 2021 f").mode, Some(0o4755));
        assert_eq!(ok("-rwSr--r-- 1 a b 1 Mar 4 2021 f").mode, Some(0o4644));
        assert_eq!(ok("-rwxr-sr-x 1 a b 1 Mar 4 2021 f").mode, Some(0o2755));
        assert_eq!(ok("-rw-r-Sr-- 1 a b 1 Mar 4 2021 f").mode, Some(0o2644));
        assert_eq!(ok("drwxrwxrwt 1 a b 1 Mar 4 2021 tmp").mode, Some(0o1777));
        assert_eq!(ok("drwxrwxrwT 1 a b 1 Mar 4 2021 tmp").mode, Some(0o1776));
        assert_eq!(ok("---------- 1 a b 1 Mar 4 2021 f").mode, Some(0));
        assert!(parse_list_line("-rwtr-xr-x 1 a b 1 Mar 4 2021 f", now()).is_none());
        assert!(parse_list_line("-rwxr-xr-q 1 a b 1 Mar 4 2021 f", now()).is_none());
    }

    #[test]
    fn year_inference() {
        // Within a day ahead of now: this year.
        assert_eq!(
            ok("-rw-r--r-- 1 a b 1 Jun 16 11:00 f").mtime,
            at(2021, 6, 16, 11, 0)
        );
        // More than a day ahead: last year.
        assert_eq!(
            ok("-rw-r--r-- 1 a b 1 Jun 17 12:00 f").mtime,
            at(2020, 6, 17, 12, 0)
        );
        assert_eq!(
            ok("-rw-r--r-- 1 a b 1 Dec 31 23:59 f").mtime,
            at(2020, 12, 31, 23, 59)
        );
        assert_eq!(
            ok("-rw-r--r-- 1 a b 1 Jan  1 00:00 f").mtime,
            at(2021, 1, 1, 0, 0)
        );
        // Feb 29 seen in 2021 must be 2020.
        assert_eq!(
            ok("-rw-r--r-- 1 a b 1 Feb 29 10:00 f").mtime,
            at(2020, 2, 29, 10, 0)
        );
        // Feb 29 seen in 2023: neither 2023 nor 2022 has it -> entry kept, no time.
        let now23 = utc_to_system_time(2023, 6, 1, 0, 0, 0, 0).unwrap_or(SystemTime::UNIX_EPOCH);
        let e = parse_list_line("-rw-r--r-- 1 a b 1 Feb 29 10:00 f", now23);
        assert_eq!(e.map(|e| e.mtime), Some(None));
    }

    #[test]
    fn impossible_dates() {
        assert_eq!(ok("-rw-r--r-- 1 a b 1 Feb 30  2021 f").mtime, None);
        assert_eq!(ok("-rw-r--r-- 1 a b 1 Jan  1  1960 f").mtime, None);
        for bad in [
            "-rw-r--r-- 1 a b 1 Foo 4 2021 f",
            "-rw-r--r-- 1 a b 1 Mar 32 2021 f",
            "-rw-r--r-- 1 a b 1 Mar 0 2021 f",
            "-rw-r--r-- 1 a b 1 Mar 4 25:00 f",
            "-rw-r--r-- 1 a b 1 Mar 4 12:60 f",
            "-rw-r--r-- 1 a b 1 Mar 4 202 f",
            "-rw-r--r-- 1 a b 1 2021-13-01 12:00 f",
        ] {
            assert!(parse_list_line(bad, now()).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn dos_iis_lines() {
        let e = ok("03-04-21  12:30PM       <DIR>          dir name");
        assert_eq!(
            (e.name.as_str(), e.kind, e.size, e.mode),
            ("dir name", EntryKind::Dir, 0, None)
        );
        assert_eq!(e.mtime, at(2021, 3, 4, 12, 30));
        let e = ok("03-04-2021  01:05AM            1234 file.txt\r\n");
        assert_eq!(
            (e.name.as_str(), e.kind, e.size),
            ("file.txt", EntryKind::File, 1234)
        );
        assert_eq!(e.mtime, at(2021, 3, 4, 1, 5));
        assert_eq!(ok("12-31-99  12:00AM 1 f").mtime, at(1999, 12, 31, 0, 0));
        assert_eq!(ok("01-01-69  11:59PM 1 f").mtime, at(2069, 1, 1, 23, 59));
        assert_eq!(ok("01-01-70  13:05 1 f").mtime, at(1970, 1, 1, 13, 5));
        assert_eq!(ok("01-01-2020  01:05 PM 1 f").mtime, at(2020, 1, 1, 13, 5));
        assert_eq!(ok("03-04-21  12:30PM  1  two spaces").name, " two spaces");
        assert_eq!(ok("02-30-21  12:30PM  1 f").mtime, None);
        for bad in [
            "13-04-21  12:30PM 1 f",
            "03-32-21  12:30PM 1 f",
            "03-04-21  13:30PM 1 f",
            "03-04-21  00:30AM 1 f",
            "03-04-21  24:00 1 f",
            "03-04-321  12:30PM 1 f",
            "03-04-21  12:30PM 18446744073709551616 huge",
            "03-04-21  12:30PM -1 neg",
            "03-04-21  12:30PM       <DIR>          ..",
            "03-04-21  12:30PM       <DIR>          .",
            "03-04-21  12:30PM       <DIR>          ",
            "03-04-21  12:30PM 1 a/b",
            "03-04-21  12:30PM 1 ",
            "03-04-21  12:30PM",
        ] {
            assert!(parse_list_line(bad, now()).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn hostile_unix_lines() {
        let long = format!("-rw-r--r-- 1 a b 1 Mar 4 2021 {}", "x".repeat(MAX_LINE_LEN));
        for bad in [
            "",
            "total 12",
            "   ",
            "crw-rw-rw- 1 root root 1, 3 Mar 4 2021 null",
            "brw-rw---- 1 root disk 8, 0 Mar 4 2021 sda",
            "prw-r--r-- 1 a b 0 Mar 4 2021 fifo",
            "srwxrwxrwx 1 a b 0 Mar 4 2021 sock",
            "drwxr-xr-x 2 a b 4096 Mar 4 12:30 .",
            "drwxr-xr-x 2 a b 4096 Mar 4 12:30 ..",
            "-rw-r--r-- 1 a b 1 Mar 4 12:30 a/b",
            "-rw-r--r-- 1 a b 1 Mar 4 12:30 a\0b",
            "-rw-r--r-- 1 a b 1 Mar 4 12:30 ",
            "-rw-r--r-- 1 a b 1 Mar 4 12:30",
            "-rw-r--r-- 1 a b 1 Mar 4 12:30\tf",
            "-rw-r--r-- 1 a b 18446744073709551616 Mar 4 2021 huge",
            "-rw-r--r-- 1 a b 99999999999999999999999 Mar 4 2021 x 5 Mar 4 2021 y",
            "-rw-r--r-- 1 a b 1x Mar 4 2021 f",
            "-rw-r--r-- 1 a b -1 Mar 4 2021 f",
            "lrwxrwxrwx 1 a b 1 Mar 4 2021  -> target",
            "-rw-r--r--",
            "-rw-r--r-- 1 a b",
            "garbage line",
            long.as_str(),
        ] {
            assert!(
                parse_list_line(bad, now()).is_none(),
                "{:?}",
                truncate_for_log(bad)
            );
        }
        let max = ok("-rw-r--r-- 1 a b 18446744073709551615 Mar 4 2021 big");
        assert_eq!(max.size, u64::MAX);
        assert!(parse_list_line(
            &format!("-rw-r--r-- 1 a b 1 Mar 4 2021 {}", "n".repeat(256)),
            now()
        )
        .is_none());
    }

    #[test]
    fn whole_listing() {
        let text = "total 12\r\n\
                    drwxr-xr-x    3 1000     1000         4096 Mar 04 12:30 .\r\n\
                    drwxr-xr-x    3 1000     1000         4096 Mar 04 12:30 ..\r\n\
                    -rw-r--r--    1 1000     1000          123 Mar  4  2021 a file\r\n\
                    \r\n\
                    crw-rw-rw-    1 0        0          1,   3 Mar  4  2021 null\r\n\
                    lrwxrwxrwx    1 0        0               7 Jan  1  2020 l -> t\n\
                    03-04-21  12:30PM       <DIR>          d\r\n";
        let names: Vec<_> = parse_list(text, now())
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["a file", "l", "d"]);
        assert!(parse_list("", now()).is_empty());
    }
}
