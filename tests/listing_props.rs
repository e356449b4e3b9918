//! Property tests of the listing parsers through the public API.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ftpsfs::ftp::entry::{is_valid_name, EntryKind};
use ftpsfs::ftp::listing::{list, mlsd, timeconv};
use proptest::prelude::*;

/// A valid server file name: no `/`, NUL or line breaks, not `.`/`..`, <= 255 bytes,
/// possibly with leading, internal and trailing spaces and arbitrary unicode.
fn name_strategy() -> impl Strategy<Value = String> {
    let chars = prop_oneof![
        4 => proptest::char::range('a', 'z'),
        2 => Just(' '),
        1 => prop_oneof![Just(';'), Just('='), Just('-'), Just('>'), Just('.'), Just('\t')],
        1 => any::<char>().prop_filter("no separators", |c| !matches!(c, '/' | '\0' | '\r' | '\n')),
    ];
    proptest::collection::vec(chars, 1..40)
        .prop_map(|v| v.into_iter().collect::<String>())
        .prop_filter("valid name", |n| is_valid_name(n))
}

fn lowercase_word() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_]{0,11}"
}

fn perm_string(kind: char, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(kind);
    for (shift, special, set_ch, unset_ch) in [
        (6, 0o4000, 's', 'S'),
        (3, 0o2000, 's', 'S'),
        (0, 0o1000, 't', 'T'),
    ] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        let x = bits & 1 != 0;
        s.push(match (mode & special != 0, x) {
            (true, true) => set_ch,
            (true, false) => unset_ch,
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    s
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000) // 2023-11-14
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn parsers_never_panic_on_arbitrary_text(s in any::<String>(), secs in any::<u32>()) {
        let now = UNIX_EPOCH + Duration::from_secs(u64::from(secs));
        let _ = mlsd::parse_mlsd_line(&s);
        let _ = mlsd::parse_mlst_reply_line(&s);
        let _ = list::parse_list_line(&s, now);
        let _ = timeconv::parse_mdtm_time(&s);
        for e in mlsd::parse_mlsd(&s).into_iter().chain(list::parse_list(&s, now)) {
            prop_assert!(is_valid_name(&e.name), "{:?}", e.name);
        }
    }

    #[test]
    fn parsers_never_panic_on_listing_like_text(
        s in "[-dlrwxsStT0-9 :;=.<>A-Za-z/\u{0}\t\r\n]{0,120}",
        prefix in prop_oneof![
            Just(""), Just("-rw-r--r-- 1 a b "), Just("type=file;size="), Just("03-04-21  "),
            Just("drwxr-xr-x 2 0 0 4096 Mar  4 "), Just("lrwxrwxrwx 1 0 0 7 Jan 1 2020 "),
        ],
    ) {
        let line = format!("{prefix}{s}");
        for e in mlsd::parse_mlsd(&line).into_iter().chain(list::parse_list(&line, now())) {
            prop_assert!(is_valid_name(&e.name), "{:?}", e.name);
            prop_assert!(e.mode.unwrap_or(0) <= 0o7777);
        }
        if let Ok(Some(e)) = mlsd::parse_mlsd_line(&line) {
            prop_assert!(is_valid_name(&e.name));
        }
        if let Some(e) = list::parse_list_line(&line, now()) {
            prop_assert!(is_valid_name(&e.name));
        }
    }

    #[test]
    fn unix_list_lines_round_trip(
        name in name_strategy(),
        size in any::<u64>(),
        mode in 0u32..=0o7777,
        kind in prop_oneof![Just('-'), Just('d'), Just('l')],
        target in proptest::option::of("[a-zA-Z0-9_. /]{1,20}"),
        owner in prop_oneof![lowercase_word(), (0u32..70000).prop_map(|n| n.to_string())],
        group in proptest::option::of(lowercase_word()),
        month in 1u32..=12,
        day in 1u32..=28,
        year_or_time in prop_oneof![
            (1970i64..=2023).prop_map(|y| (Some(y), 0u32, 0u32)),
            (0u32..24, 0u32..60).prop_map(|(h, m)| (None, h, m)),
        ],
        links in 1u32..1000,
        pad in 1usize..6,
    ) {
        // Symlink names must not contain the separator.
        prop_assume!(kind != 'l' || !format!("{name} ").contains(" -> "));
        let date = match year_or_time {
            (Some(y), _, _) => format!("{} {:>2} {:>5}", MONTHS[month as usize - 1], day, y),
            (None, h, m) => format!("{} {:>2} {:02}:{:02}", MONTHS[month as usize - 1], day, h, m),
        };
        let group = group.map(|g| format!(" {g}")).unwrap_or_default();
        let spaces = " ".repeat(pad);
        let mut line = format!(
            "{}{spaces}{links} {owner}{group}{spaces}{size} {date} {name}",
            perm_string(kind, mode)
        );
        if kind == 'l' {
            if let Some(t) = &target {
                line.push_str(" -> ");
                line.push_str(t);
            }
        }
        line.push_str("\r\n");
        let e = list::parse_list_line(&line, now());
        prop_assert!(e.is_some(), "rejected {:?}", line);
        let e = e.unwrap();
        prop_assert_eq!(&e.name, &name);
        prop_assert_eq!(e.size, size);
        prop_assert_eq!(e.mode, Some(mode));
        let want_kind = match kind {
            '-' => EntryKind::File,
            'd' => EntryKind::Dir,
            _ => EntryKind::Symlink(target.clone()),
        };
        prop_assert_eq!(e.kind, want_kind);
        let mtime = e.mtime;
        prop_assert!(mtime.is_some());
        let (y, mo, d, h, mi, _) = timeconv::system_time_to_utc(mtime.unwrap());
        prop_assert_eq!((mo, d), (month, day));
        match year_or_time {
            (Some(want_y), _, _) => prop_assert_eq!((y, h, mi), (want_y, 0, 0)),
            (None, want_h, want_m) => {
                prop_assert_eq!((h, mi), (want_h, want_m));
                prop_assert!(y == 2023 || y == 2022);
                prop_assert!(mtime.unwrap() <= now() + Duration::from_secs(86_400));
            }
        }
        // The same line inside a listing.
        let all = list::parse_list(&format!("total 8\r\n{line}"), now());
        prop_assert_eq!(all.len(), 1);
    }

    #[test]
    fn mlsd_lines_round_trip(
        name in name_strategy(),
        size in any::<u64>(),
        mode in 0u32..=0o7777,
        kind in 0u8..3,
        // MLSD facts end at the first space and are split on `;`: targets have neither.
        target in "[a-zA-Z0-9_./=:-]{1,20}",
        secs in 0u64..253_402_300_800,
        unique in "[0-9a-fA-FU]{1,16}",
        order in Just((0usize..6).collect::<Vec<_>>()).prop_shuffle(),
        upper in proptest::collection::vec(any::<bool>(), 6),
    ) {
        let type_value = match kind {
            0 => "file".to_string(),
            1 => "dir".to_string(),
            _ => format!("OS.unix=slink:{target}"),
        };
        let t = UNIX_EPOCH + Duration::from_secs(secs);
        let facts = [
            ("type", type_value),
            (if kind == 1 { "sizd" } else { "size" }, size.to_string()),
            ("modify", timeconv::format_mfmt(t)),
            ("UNIX.mode", format!("0{mode:o}")),
            // not used by ftpsfs (it asks OPTS MLST not to send it): must be skipped
            ("unique", unique.clone()),
            ("perm", "adfrw".to_string()),
        ];
        let mut line = String::new();
        for i in order {
            let (k, v) = &facts[i];
            let k = if upper[i] { k.to_ascii_uppercase() } else { k.to_ascii_lowercase() };
            // Fact values keep their case, except `type` whose value is case-insensitive.
            let v = if i == 0 && upper[i] && kind < 2 { v.to_ascii_uppercase() } else { v.clone() };
            line.push_str(&format!("{k}={v};"));
        }
        line.push(' ');
        line.push_str(&name);
        let r = mlsd::parse_mlsd_line(&line);
        prop_assert!(matches!(r, Ok(Some(_))), "{:?} -> {:?}", line, r);
        let e = r.unwrap().unwrap();
        prop_assert_eq!(&e.name, &name);
        prop_assert_eq!(e.size, size);
        prop_assert_eq!(e.mode, Some(mode));
        prop_assert_eq!(e.mtime, Some(t));
        let want_kind = match kind {
            0 => EntryKind::File,
            1 => EntryKind::Dir,
            _ => EntryKind::Symlink(Some(target.clone())),
        };
        prop_assert_eq!(&e.kind, &want_kind);
        let listing = format!("type=cdir; /some/dir\r\ntype=pdir; ..\r\n{line}\r\n");
        prop_assert_eq!(mlsd::parse_mlsd(&listing), vec![e]);
    }

    #[test]
    fn mdtm_round_trip(secs in 0u64..253_402_300_800, nanos in 0u32..1_000_000_000) {
        let t = UNIX_EPOCH + Duration::new(secs, nanos);
        let text = timeconv::format_mfmt(t);
        prop_assert_eq!(text.len(), 14);
        let with_frac = format!("{text}.{nanos:09}");
        prop_assert_eq!(timeconv::parse_mdtm_time(&with_frac), Some(t));
        prop_assert_eq!(timeconv::parse_mdtm_time(&text), Some(UNIX_EPOCH + Duration::from_secs(secs)));
        let (y, mo, d, h, mi, s) = timeconv::system_time_to_utc(t);
        prop_assert_eq!(
            timeconv::utc_to_system_time(y, mo, d, h, mi, s, nanos),
            Some(t)
        );
    }
}
