//! Pure UTC calendar helpers (no chrono): civil date <-> `SystemTime`, and the
//! `YYYYMMDDHHMMSS[.fff]` timestamps of MDTM, MFMT, `SITE UTIME` and the MLSD
//! `modify` fact. All inputs may come from a hostile server: nothing here panics.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Smallest year accepted by [`utc_to_system_time`].
pub const MIN_YEAR: i64 = 1970;
/// Largest year accepted by [`utc_to_system_time`].
pub const MAX_YEAR: i64 = 9999;

const SECS_PER_DAY: i64 = 86_400;

/// True for Gregorian leap years.
pub fn is_leap_year(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

/// Number of days in `month` (1..=12) of `year`; 0 for an invalid month.
pub fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`). `month` must be 1..=12 and `day` 1..=31.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // [0, 399]
    let m = i64::from(month);
    let d = i64::from(day);
    let mp = if m > 2 { m - 3 } else { m + 9 }; // March = 0
    let doy = (153 * mp + 2) / 5 + d - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// Inverse of [`days_from_civil`]: (year, month, day) of a day count since the epoch.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days.saturating_add(719_468);
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32; // [1, 12]
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The instant of a UTC civil date and time. `None` unless every field is in
/// range: year 1970..=9999, month 1..=12, day within that month (leap years
/// honoured), hour < 24, minute < 60, second < 60, nanos < 1e9.
pub fn utc_to_system_time(
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    min: u32,
    sec: u32,
    nanos: u32,
) -> Option<SystemTime> {
    if !(MIN_YEAR..=MAX_YEAR).contains(&year)
        || !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || min > 59
        || sec > 59
        || nanos >= 1_000_000_000
    {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = days * SECS_PER_DAY + i64::from(hour) * 3600 + i64::from(min) * 60 + i64::from(sec);
    let secs = u64::try_from(secs).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// Seconds since the epoch (floor, negative before 1970), saturating.
fn epoch_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => {
            let d = e.duration();
            let s = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            let s = if d.subsec_nanos() > 0 {
                s.saturating_add(1)
            } else {
                s
            };
            s.saturating_neg()
        }
    }
}

/// UTC calendar fields of `t`: (year, month, day, hour, minute, second).
/// Sub-second parts are truncated (towards the past).
pub fn system_time_to_utc(t: SystemTime) -> (i64, u32, u32, u32, u32, u32) {
    let secs = epoch_secs(t);
    let days = secs.div_euclid(SECS_PER_DAY);
    let rem = secs.rem_euclid(SECS_PER_DAY); // [0, 86399]
    let (y, mo, d) = civil_from_days(days);
    let hour = (rem / 3600) as u32;
    let min = (rem % 3600 / 60) as u32;
    let sec = (rem % 60) as u32;
    (y, mo, d, hour, min, sec)
}

/// `YYYYMMDDHHMMSS` in UTC, as MFMT, MDTM and `SITE UTIME` expect. Instants
/// outside years 0..=9999 are clamped so the result is always 14 digits.
pub fn format_mfmt(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = system_time_to_utc(t);
    if y > MAX_YEAR {
        return "99991231235959".to_string();
    }
    if y < 0 {
        return "00000101000000".to_string();
    }
    format!("{y:04}{mo:02}{d:02}{h:02}{mi:02}{s:02}")
}

fn digits_value(b: &[u8]) -> u32 {
    b.iter()
        .fold(0u32, |acc, &c| acc * 10 + u32::from(c - b'0'))
}

/// Parses `YYYYMMDDHHMMSS[.fff]` (UTC), the MDTM reply value and MLSD `modify`
/// fact. Surrounding ASCII whitespace is ignored; the fraction may have any number
/// of digits (beyond nanoseconds they are ignored). `None` on anything else or on
/// an out-of-range date (see [`utc_to_system_time`]).
pub fn parse_mdtm_time(s: &str) -> Option<SystemTime> {
    let b = s.trim_matches(|c: char| c.is_ascii_whitespace()).as_bytes();
    if b.len() < 14 || !b[..14].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let nanos = match &b[14..] {
        [] => 0,
        [b'.', frac @ ..] if !frac.is_empty() && frac.iter().all(u8::is_ascii_digit) => {
            let mut n = 0u32;
            for i in 0..9 {
                n = n * 10 + frac.get(i).map_or(0, |&c| u32::from(c - b'0'));
            }
            n
        }
        _ => return None,
    };
    let year = i64::from(digits_value(&b[0..4]));
    utc_to_system_time(
        year,
        digits_value(&b[4..6]),
        digits_value(&b[6..8]),
        digits_value(&b[8..10]),
        digits_value(&b[10..12]),
        digits_value(&b[12..14]),
        nanos,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(t: SystemTime) -> u64 {
        t.duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    #[test]
    fn known_instants() {
        let t = utc_to_system_time(1970, 1, 1, 0, 0, 0, 0);
        assert_eq!(t, Some(UNIX_EPOCH));
        // 2000-03-01T00:00:00Z
        assert_eq!(
            utc_to_system_time(2000, 3, 1, 0, 0, 0, 0).map(secs),
            Some(951_868_800)
        );
        // 2021-03-04T12:30:00Z
        assert_eq!(
            utc_to_system_time(2021, 3, 4, 12, 30, 0, 0).map(secs),
            Some(1_614_861_000)
        );
        // 2038-01-19T03:14:08Z (past i32)
        assert_eq!(
            utc_to_system_time(2038, 1, 19, 3, 14, 8, 0).map(secs),
            Some(2_147_483_648)
        );
        assert_eq!(
            utc_to_system_time(9999, 12, 31, 23, 59, 59, 0).map(secs),
            Some(253_402_300_799)
        );
    }

    #[test]
    fn rejects_out_of_range_fields() {
        assert!(utc_to_system_time(1969, 12, 31, 23, 59, 59, 0).is_none());
        assert!(utc_to_system_time(10000, 1, 1, 0, 0, 0, 0).is_none());
        assert!(utc_to_system_time(i64::MIN, 1, 1, 0, 0, 0, 0).is_none());
        assert!(utc_to_system_time(2021, 0, 1, 0, 0, 0, 0).is_none());
        assert!(utc_to_system_time(2021, 13, 1, 0, 0, 0, 0).is_none());
        assert!(utc_to_system_time(2021, 1, 0, 0, 0, 0, 0).is_none());
        assert!(utc_to_system_time(2021, 1, 32, 0, 0, 0, 0).is_none());
        assert!(utc_to_system_time(2021, 4, 31, 0, 0, 0, 0).is_none());
        assert!(utc_to_system_time(2021, 2, 30, 0, 0, 0, 0).is_none());
        assert!(utc_to_system_time(2021, 1, 1, 24, 0, 0, 0).is_none());
        assert!(utc_to_system_time(2021, 1, 1, 0, 60, 0, 0).is_none());
        assert!(utc_to_system_time(2021, 1, 1, 0, 0, 60, 0).is_none());
        assert!(utc_to_system_time(2021, 1, 1, 0, 0, 0, 1_000_000_000).is_none());
    }

    #[test]
    fn leap_days() {
        assert!(utc_to_system_time(2024, 2, 29, 0, 0, 0, 0).is_some());
        assert!(utc_to_system_time(2000, 2, 29, 0, 0, 0, 0).is_some());
        assert!(utc_to_system_time(2100, 2, 29, 0, 0, 0, 0).is_none());
        assert!(utc_to_system_time(2023, 2, 29, 0, 0, 0, 0).is_none());
        let t = utc_to_system_time(2024, 2, 29, 23, 59, 59, 0);
        assert_eq!(t.map(system_time_to_utc), Some((2024, 2, 29, 23, 59, 59)));
        let next = t.and_then(|t| t.checked_add(Duration::from_secs(1)));
        assert_eq!(next.map(system_time_to_utc), Some((2024, 3, 1, 0, 0, 0)));
    }

    #[test]
    fn round_trip_every_day_sampled() {
        // Every day from 1970 to 2200 at a varying time of day.
        let mut day = 0i64;
        let mut prev: Option<(i64, u32, u32)> = None;
        loop {
            let s = day * SECS_PER_DAY + (day * 7919) % SECS_PER_DAY;
            let t = UNIX_EPOCH + Duration::from_secs(s as u64);
            let (y, mo, d, h, mi, se) = system_time_to_utc(t);
            if y > 2200 {
                break;
            }
            assert_eq!(utc_to_system_time(y, mo, d, h, mi, se, 0), Some(t));
            if let Some((py, pm, pd)) = prev {
                let consecutive = (y == py && mo == pm && d == pd + 1)
                    || (y == py && mo == pm + 1 && d == 1 && pd == days_in_month(py, pm))
                    || (y == py + 1 && mo == 1 && d == 1 && pm == 12 && pd == 31);
                assert!(consecutive, "{py}-{pm}-{pd} -> {y}-{mo}-{d}");
            }
            prev = Some((y, mo, d));
            day += 1;
        }
    }

    #[test]
    fn before_epoch_does_not_panic() {
        let t = UNIX_EPOCH - Duration::from_millis(1500);
        assert_eq!(system_time_to_utc(t), (1969, 12, 31, 23, 59, 58));
        assert_eq!(format_mfmt(t), "19691231235958");
    }

    #[test]
    fn mfmt_formatting() {
        let t = utc_to_system_time(2021, 3, 4, 1, 2, 3, 999_999_999);
        assert_eq!(t.map(format_mfmt).as_deref(), Some("20210304010203"));
        assert_eq!(format_mfmt(UNIX_EPOCH), "19700101000000");
        let far = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert_eq!(format_mfmt(far), "99991231235959");
    }

    #[test]
    fn mdtm_parsing() {
        let t = parse_mdtm_time("20210304123045");
        assert_eq!(t, utc_to_system_time(2021, 3, 4, 12, 30, 45, 0));
        let t = parse_mdtm_time("20210304123045.123");
        assert_eq!(t, utc_to_system_time(2021, 3, 4, 12, 30, 45, 123_000_000));
        let t = parse_mdtm_time(" 20210304123045.1234567891234\r\n");
        assert_eq!(t, utc_to_system_time(2021, 3, 4, 12, 30, 45, 123_456_789));
        assert_eq!(
            parse_mdtm_time("20240229000000").map(system_time_to_utc),
            Some((2024, 2, 29, 0, 0, 0))
        );
        for bad in [
            "",
            "2021",
            "2021030412304",
            "20210304123045.",
            "20210304123045x",
            "20210304123045.1x",
            "202103041230456",
            "20211304123045",
            "20230229000000",
            "20210230000000",
            "20210304243045",
            "19691231235959",
            "191210304123045", // Y2K-bug servers
            "+0210304123045",
            "2021-03-04 12:30",
            "２０２１０３０４１２３０４５",
        ] {
            assert_eq!(parse_mdtm_time(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn mfmt_round_trips_through_mdtm() {
        for (y, mo, d) in [
            (1970, 1, 1),
            (1999, 12, 31),
            (2000, 2, 29),
            (2024, 2, 29),
            (9999, 12, 31),
        ] {
            let t = utc_to_system_time(y, mo, d, 13, 14, 15, 0);
            assert_eq!(t.and_then(|t| parse_mdtm_time(&format_mfmt(t))), t);
        }
    }
}
