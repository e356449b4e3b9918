//! MLSD / MLST fact lines (RFC 3659 §7): `fact=value;fact=value; name`.
//!
//! The facts are everything before the FIRST space; the name is everything after
//! that space (names may hold spaces, `;` and `=`). Every line is hostile input.

use std::fmt;
use std::time::SystemTime;

use super::timeconv::parse_mdtm_time;
use crate::ftp::entry::{is_valid_name, EntryKind, RemoteEntry};

/// Longest listing line (bytes, without the line ending) the parsers accept.
pub const MAX_LINE_LEN: usize = 8192;

/// How many characters of a bad line are quoted in log messages.
pub(crate) const LOG_QUOTE_CHARS: usize = 200;

/// Why a listing line was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListingError(pub String);

impl fmt::Display for ListingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad listing line: {}", self.0)
    }
}

impl std::error::Error for ListingError {}

fn err<T>(msg: impl Into<String>) -> Result<T, ListingError> {
    Err(ListingError(msg.into()))
}

/// At most [`LOG_QUOTE_CHARS`] characters of `line`, for log messages (quote it with `{:?}`).
pub(crate) fn truncate_for_log(line: &str) -> &str {
    match line.char_indices().nth(LOG_QUOTE_CHARS) {
        Some((i, _)) => &line[..i],
        None => line,
    }
}

/// Removes one trailing `\n` and then one trailing `\r`.
pub(crate) fn strip_line_ending(line: &str) -> &str {
    let line = line.strip_suffix('\n').unwrap_or(line);
    line.strip_suffix('\r').unwrap_or(line)
}

/// The `type` fact, interpreted.
enum FactType {
    File,
    Dir,
    /// `cdir` (the listed directory itself) or `pdir` (a parent).
    SelfOrParent,
    Symlink(Option<String>),
    /// Devices, fifos, sockets and types we do not know.
    Other,
}

fn parse_type(value: &str) -> FactType {
    let lower = value.to_ascii_lowercase();
    match lower.as_str() {
        "file" => FactType::File,
        "dir" => FactType::Dir,
        "cdir" | "pdir" => FactType::SelfOrParent,
        "os.unix=symlink" | "os.unix=slink" => FactType::Symlink(None),
        _ if lower.starts_with("os.unix=slink:") => {
            // Keep the target's case: slice the original (same byte offsets, ASCII prefix).
            let target = value.get("os.unix=slink:".len()..).unwrap_or("");
            FactType::Symlink((!target.is_empty()).then(|| target.to_string()))
        }
        _ => FactType::Other,
    }
}

/// A non-empty run of ASCII digits as u64 (no sign, no spaces).
pub(crate) fn parse_decimal_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `UNIX.mode`: octal digits, masked to 0o7777.
fn parse_unix_mode(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    let significant = s.trim_start_matches('0');
    // Only the last four octal digits matter after masking; avoids overflow.
    let tail = &significant[significant.len().saturating_sub(4)..];
    if tail.is_empty() {
        return Some(0);
    }
    u32::from_str_radix(tail, 8).ok().map(|m| m & 0o7777)
}

/// Rough permission bits from the RFC 3659 `perm` fact, when no `UNIX.mode` is given.
fn mode_from_perm(perm: &str, is_dir: bool) -> u32 {
    let has = |c: char| perm.chars().any(|p| p.eq_ignore_ascii_case(&c));
    if is_dir {
        let listable = has('l') || has('e');
        let writable = has('c') || has('m') || has('p');
        (if listable { 0o555 } else { 0 }) | (if writable { 0o200 } else { 0 })
    } else {
        let readable = has('r');
        let writable = has('w') || has('a');
        (if readable { 0o444 } else { 0 }) | (if writable { 0o200 } else { 0 })
    }
}

/// Facts of one line, before the name is looked at.
struct Facts {
    kind: FactType,
    size: Option<u64>,
    sizd: Option<u64>,
    mtime: Option<SystemTime>,
    unix_mode: Option<u32>,
    perm: Option<String>,
}

/// Splits `facts; name` and parses the facts. Returns the facts and the raw name.
fn split_and_parse(line: &str) -> Result<(Facts, &str), ListingError> {
    if line.len() > MAX_LINE_LEN {
        return err(format!("line longer than {MAX_LINE_LEN} bytes"));
    }
    let Some(space) = line.find(' ') else {
        return err("no space between facts and name");
    };
    let (fact_text, name) = (&line[..space], &line[space + 1..]);
    let mut facts = Facts {
        // RFC 3659 lets a server omit `type`; treat the object as a file then.
        kind: FactType::File,
        size: None,
        sizd: None,
        mtime: None,
        unix_mode: None,
        perm: None,
    };
    for fact in fact_text.split(';').filter(|f| !f.is_empty()) {
        let Some((key, value)) = fact.split_once('=') else {
            return err(format!("fact without '=': {:?}", truncate_for_log(fact)));
        };
        match key.to_ascii_lowercase().as_str() {
            "type" => facts.kind = parse_type(value),
            "size" => match parse_decimal_u64(value) {
                Some(n) => facts.size = Some(n),
                None => return err(format!("bad size {:?}", truncate_for_log(value))),
            },
            "sizd" => match parse_decimal_u64(value) {
                Some(n) => facts.sizd = Some(n),
                None => return err(format!("bad sizd {:?}", truncate_for_log(value))),
            },
            // An unparsable time only loses the time, not the entry.
            "modify" => facts.mtime = parse_mdtm_time(value),
            "unix.mode" => facts.unix_mode = parse_unix_mode(value),
            "perm" => facts.perm = Some(value.to_string()),
            _ => {}
        }
    }
    Ok((facts, name))
}

fn build_entry(name: &str, kind: EntryKind, facts: Facts) -> RemoteEntry {
    let is_dir = kind == EntryKind::Dir;
    let size = if is_dir {
        facts.sizd.or(facts.size).unwrap_or(0)
    } else {
        facts.size.unwrap_or(0)
    };
    let mode = facts
        .unix_mode
        .or_else(|| facts.perm.as_deref().map(|p| mode_from_perm(p, is_dir)));
    RemoteEntry {
        name: name.to_string(),
        kind,
        size,
        mtime: facts.mtime,
        mode,
    }
}

/// Parses one MLSD line (a trailing `\r\n` / `\n` is tolerated).
///
/// * `Ok(Some(entry))` for files, directories and symlinks (`OS.unix=symlink`,
///   `OS.unix=slink:target`); a line without a `type` fact is a file.
/// * `Ok(None)` for `cdir` / `pdir` and for types we cannot represent
///   (devices, fifos, unknown types).
/// * `Err` for malformed lines: longer than [`MAX_LINE_LEN`], no space, a fact
///   without `=`, a non-numeric or overflowing `size`/`sizd`, or a name that fails
///   [`is_valid_name`].
///
/// A bad `modify` or `UNIX.mode` value only drops that fact. Without `UNIX.mode`,
/// mode bits are derived from `perm` (files 0o444 readable + 0o200 writable,
/// directories 0o555 listable + 0o200 writable); with neither, `mode` is `None`.
pub fn parse_mlsd_line(line: &str) -> Result<Option<RemoteEntry>, ListingError> {
    let line = strip_line_ending(line);
    let (mut facts, name) = split_and_parse(line)?;
    let kind = match std::mem::replace(&mut facts.kind, FactType::Other) {
        FactType::File => EntryKind::File,
        FactType::Dir => EntryKind::Dir,
        FactType::Symlink(t) => EntryKind::Symlink(t),
        FactType::SelfOrParent | FactType::Other => return Ok(None),
    };
    if !is_valid_name(name) {
        return err(format!("invalid name {:?}", truncate_for_log(name)));
    }
    Ok(Some(build_entry(name, kind, facts)))
}

/// Parses a whole MLSD data transfer. Lines end in `\r\n` or `\n`; empty lines
/// are skipped, and so are malformed lines (each logged with `log::warn!`,
/// quoted and truncated to 200 characters).
pub fn parse_mlsd(text: &str) -> Vec<RemoteEntry> {
    let mut out = Vec::new();
    for raw in text.split('\n') {
        let line = strip_line_ending(raw);
        if line.is_empty() {
            continue;
        }
        match parse_mlsd_line(line) {
            Ok(Some(entry)) => out.push(entry),
            Ok(None) => {}
            Err(e) => log::warn!("skipping MLSD line {:?}: {}", truncate_for_log(line), e.0),
        }
    }
    out
}

/// Parses the fact line of an MLST reply (`250-` ... ` facts; /full/path` ...
/// `250 End`). Exactly one leading space is stripped (the reply's indentation),
/// then the line is parsed like an MLSD line, except that:
///
/// * `cdir` and `pdir` are reported as [`EntryKind::Dir`] (many servers say
///   `type=cdir` for `MLST some/dir`);
/// * the returned entry's `name` is the path exactly as the server gave it: it is
///   usually a full path, so [`is_valid_name`] is NOT applied; it is only required
///   to be non-empty and free of NUL, `\r` and `\n`;
/// * types that cannot be represented (devices, fifos, unknown types) are an
///   `Err` too, since a single-object query has no "skip" outcome.
pub fn parse_mlst_reply_line(line: &str) -> Result<RemoteEntry, ListingError> {
    let line = strip_line_ending(line);
    let line = line.strip_prefix(' ').unwrap_or(line);
    let (mut facts, name) = split_and_parse(line)?;
    let kind = match std::mem::replace(&mut facts.kind, FactType::Other) {
        FactType::File => EntryKind::File,
        FactType::Dir | FactType::SelfOrParent => EntryKind::Dir,
        FactType::Symlink(t) => EntryKind::Symlink(t),
        FactType::Other => return err("unsupported object type"),
    };
    if name.is_empty() || name.contains(['\0', '\r', '\n']) {
        return err(format!("invalid path {:?}", truncate_for_log(name)));
    }
    Ok(build_entry(name, kind, facts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ftp::listing::timeconv::utc_to_system_time;

    fn ok(line: &str) -> RemoteEntry {
        match parse_mlsd_line(line) {
            Ok(Some(e)) => e,
            other => panic!("{line:?} -> {other:?}"),
        }
    }

    #[test]
    fn proftpd_samples() {
        let e = ok("modify=20210304123000;perm=adfrw;size=1234;type=file;unique=803U1A2B3;UNIX.group=1000;UNIX.groupname=user;UNIX.mode=0644;UNIX.owner=1000;UNIX.ownername=user; file name.txt");
        assert_eq!(e.name, "file name.txt");
        assert_eq!(e.kind, EntryKind::File);
        assert_eq!(e.size, 1234);
        assert_eq!(e.mode, Some(0o644));
        assert_eq!(e.mtime, utc_to_system_time(2021, 3, 4, 12, 30, 0, 0));

        let e = ok("modify=20210304123000;perm=flcdmpe;type=dir;unique=803U1A2B4;UNIX.mode=02775; sub dir\r\n");
        assert_eq!(e.name, "sub dir");
        assert_eq!(e.kind, EntryKind::Dir);
        assert_eq!(e.mode, Some(0o2775));

        let e = ok("modify=20200101000000;perm=adfrw;size=7;type=OS.unix=symlink;unique=1;UNIX.mode=0777; link");
        assert_eq!(e.kind, EntryKind::Symlink(None));
        assert_eq!(e.mode, Some(0o777));

        let e = ok("type=OS.unix=slink:/Some/Target;size=7; link");
        assert_eq!(e.kind, EntryKind::Symlink(Some("/Some/Target".into())));

        assert_eq!(
            parse_mlsd_line("modify=20210304123000;perm=flcdmpe;type=cdir;unique=1; ."),
            Ok(None)
        );
        assert_eq!(
            parse_mlsd_line("modify=20210304123000;perm=flcdmpe;type=pdir;unique=2; .."),
            Ok(None)
        );
        // cdir with a full path name is still just skipped, not an error.
        assert_eq!(parse_mlsd_line("type=cdir; /home/user"), Ok(None));
    }

    #[test]
    fn vsftpd_pureftpd_and_iis_samples() {
        // pure-ftpd
        let e = ok("type=file;size=42;modify=20230515083000;UNIX.mode=0640;UNIX.uid=1000;UNIX.gid=1000;unique=801g4e1; notes.txt");
        assert_eq!((e.size, e.mode), (42, Some(0o640)));
        let e = ok("type=dir;sizd=4096;modify=20230515083000;UNIX.mode=0755;unique=801g4e2; docs");
        assert_eq!(
            (e.kind, e.size, e.mode),
            (EntryKind::Dir, 4096, Some(0o755))
        );
        // IIS: upper-case facts, no UNIX.mode, fractional modify
        let e = ok("Type=file;Size=1234;Modify=20210304123000.123;Perm=rwd; Report 2021.xlsx");
        assert_eq!(e.mode, Some(0o644));
        assert_eq!(
            e.mtime,
            utc_to_system_time(2021, 3, 4, 12, 30, 0, 123_000_000)
        );
        let e = ok("TYPE=DIR;MODIFY=20210304123000;PERM=el; ro dir");
        assert_eq!(e.mode, Some(0o555));
    }

    #[test]
    fn perm_fallback() {
        assert_eq!(ok("type=file;perm=r; a").mode, Some(0o444));
        assert_eq!(ok("type=file;perm=rw; a").mode, Some(0o644));
        assert_eq!(ok("type=file;perm=ra; a").mode, Some(0o644));
        assert_eq!(ok("type=file;perm=; a").mode, Some(0));
        assert_eq!(ok("type=dir;perm=flcdmpe; a").mode, Some(0o755));
        assert_eq!(ok("type=dir;perm=el; a").mode, Some(0o555));
        assert_eq!(ok("type=file; a").mode, None);
        // UNIX.mode wins over perm, and is masked.
        assert_eq!(
            ok("type=file;perm=r;UNIX.mode=0100644; a").mode,
            Some(0o644)
        );
        assert_eq!(
            ok("type=file;UNIX.mode=00000000000000000000000000755; a").mode,
            Some(0o755)
        );
        // Bad UNIX.mode falls back to perm.
        assert_eq!(ok("type=file;perm=r;UNIX.mode=0999; a").mode, Some(0o444));
    }

    #[test]
    fn names_keep_spaces_semicolons_and_equals() {
        assert_eq!(
            ok("type=file;size=1;  leading spaces").name,
            " leading spaces"
        );
        assert_eq!(ok("type=file;size=1; trailing  ").name, "trailing  ");
        assert_eq!(ok("type=file;size=1; a;b=c d").name, "a;b=c d");
        assert_eq!(ok("type=file;size=1; x -> y").name, "x -> y");
        // Missing type is a file; only-name line with no facts.
        let e = ok(" bare");
        assert_eq!(
            (e.name.as_str(), e.kind, e.size),
            ("bare", EntryKind::File, 0)
        );
    }

    #[test]
    fn odd_types_are_skipped() {
        for line in [
            "type=OS.unix=chr-13/29; tty",
            "type=OS.unix=blk; sda",
            "type=OS.unix=fifo; p",
            "type=weird; x",
        ] {
            assert_eq!(parse_mlsd_line(line), Ok(None), "{line:?}");
        }
    }

    #[test]
    fn hostile_lines_are_errors() {
        let long = format!("type=file;size=1; {}", "x".repeat(MAX_LINE_LEN));
        for line in [
            "",
            "type=file;size=1;",
            "type=file;size=12",
            "type=file;size=-1; a",
            "type=file;size=+1; a",
            "type=file;size=1x; a",
            "type=file;size=; a",
            "type=file;size=99999999999999999999999; a",
            "type=dir;sizd=abc; a",
            "type=file;garbage; a",
            "type=file;size=1; ",
            "type=file;size=1; .",
            "type=file;size=1; ..",
            "type=dir; ..",
            "type=file;size=1; a/b",
            "type=file;size=1; a\0b",
            long.as_str(),
        ] {
            assert!(
                parse_mlsd_line(line).is_err(),
                "{:?} accepted",
                truncate_for_log(line)
            );
        }
        assert!(parse_mlsd_line(&format!("type=file; {}", "n".repeat(256))).is_err());
        assert!(parse_mlsd_line(&format!("type=file; {}", "n".repeat(255))).is_ok());
        // Bad dates lose only the time.
        for m in ["20211304123000", "20210230000000", "garbage", ""] {
            let e = ok(&format!("type=file;size=1;modify={m}; a"));
            assert_eq!(e.mtime, None);
        }
    }

    #[test]
    fn whole_listing() {
        let text = "type=cdir;modify=20210304123000; .\r\n\
                    type=pdir;modify=20210304123000; ..\r\n\
                    type=file;size=1; one\r\n\
                    \r\n\
                    type=file;size=bad; broken\r\n\
                    type=dir; two\n\
                    type=file;size=3; a/b\r\n\
                    no-space-at-all\r\n\
                    type=file;size=4; three";
        let names: Vec<_> = parse_mlsd(text).into_iter().map(|e| e.name).collect();
        assert_eq!(names, ["one", "two", "three"]);
        assert!(parse_mlsd("").is_empty());
        assert!(parse_mlsd("\r\n\n\r\n").is_empty());
    }

    #[test]
    fn mlst_reply_lines() {
        let r = parse_mlst_reply_line(
            " type=cdir;modify=20210304123000;UNIX.mode=0755; /home/user/dir",
        );
        let e = r.expect("entry");
        assert_eq!(
            (e.name.as_str(), e.kind, e.mode),
            ("/home/user/dir", EntryKind::Dir, Some(0o755))
        );
        let e = parse_mlst_reply_line(" Type=file;Size=10; /a b/c d\r\n").expect("entry");
        assert_eq!((e.name.as_str(), e.size), ("/a b/c d", 10));
        let e = parse_mlst_reply_line(" type=pdir; /").expect("entry");
        assert_eq!((e.name.as_str(), e.kind), ("/", EntryKind::Dir));
        // Only one space is stripped: facts then start with a space -> empty facts, name follows.
        let e = parse_mlst_reply_line("  /x").expect("entry");
        assert_eq!((e.name.as_str(), e.kind), ("/x", EntryKind::File));
        // Without the leading space it still parses.
        assert!(parse_mlst_reply_line("type=file; f").is_ok());
        assert!(parse_mlst_reply_line(" type=OS.unix=chr; /dev/tty").is_err());
        assert!(parse_mlst_reply_line(" type=file;size=1;").is_err());
        assert!(parse_mlst_reply_line(" type=file;size=1; ").is_err());
        assert!(parse_mlst_reply_line(" type=file;size=1; a\0b").is_err());
        assert!(parse_mlst_reply_line(" type=file;size=x; a").is_err());
        let long = format!(" type=file; /{}", "x".repeat(MAX_LINE_LEN));
        assert!(parse_mlst_reply_line(&long).is_err());
    }

    #[test]
    fn log_truncation_is_char_safe() {
        let s = "é".repeat(300);
        assert_eq!(truncate_for_log(&s).chars().count(), 200);
        assert_eq!(truncate_for_log("abc"), "abc");
        let _ = parse_mlsd(&format!("type=file;size=x; {s}"));
    }
}
