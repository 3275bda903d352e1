//! Calendar arithmetic for hour partitions (UTC), without a date library.
//!
//! Index partitions and archive paths are named after the UTC hour an envelope's timestamp falls
//! in. The conversion is Howard Hinnant's `civil_from_days`, exact over the whole `i64` range of
//! days that nanosecond timestamps can reach.

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds in one hour.
pub const NANOS_PER_HOUR: i64 = 3_600 * 1_000_000_000;

/// The UTC hour a timestamp falls in, as whole hours since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hour(pub i64);

impl Hour {
    /// The hour containing `timestamp_ns` (floor division, so negative times work too).
    pub fn of_nanos(timestamp_ns: i64) -> Hour {
        Hour(timestamp_ns.div_euclid(NANOS_PER_HOUR))
    }

    /// First nanosecond of this hour.
    pub fn start_nanos(self) -> i64 {
        self.0.saturating_mul(NANOS_PER_HOUR)
    }

    /// First nanosecond after this hour.
    pub fn end_nanos(self) -> i64 {
        (self.0 + 1).saturating_mul(NANOS_PER_HOUR)
    }

    /// `(year, month, day, hour)` in UTC.
    pub fn civil(self) -> (i64, u32, u32, u32) {
        let days = self.0.div_euclid(24);
        let hour = self.0.rem_euclid(24) as u32;
        let (year, month, day) = civil_from_days(days);
        (year, month, day, hour)
    }

    /// `YYYY-MM-DD`, the archive's `date=` partition value.
    pub fn date_string(self) -> String {
        let (year, month, day, _) = self.civil();
        format!("{year:04}-{month:02}-{day:02}")
    }

    /// `HH`, the archive's `hour=` partition value.
    pub fn hour_string(self) -> String {
        format!("{:02}", self.civil().3)
    }

    /// `YYYY-MM-DDTHH`, the name of an index partition directory.
    pub fn partition_name(self) -> String {
        let (year, month, day, hour) = self.civil();
        format!("{year:04}-{month:02}-{day:02}T{hour:02}")
    }

    /// Parses a name made by [`Hour::partition_name`].
    pub fn parse_partition_name(name: &str) -> Option<Hour> {
        let (date, hour) = name.split_once('T')?;
        let mut parts = date.splitn(3, '-');
        let year: i64 = parts.next()?.parse().ok()?;
        let month: u32 = parts.next()?.parse().ok()?;
        let day: u32 = parts.next()?.parse().ok()?;
        let hour: i64 = hour.parse().ok()?;
        if !(1..=12).contains(&month) || !(1..=31).contains(&day) || !(0..24).contains(&hour) {
            return None;
        }
        let parsed = Hour(days_from_civil(year, month, day) * 24 + hour);
        // Reject dates like 2026-02-31 that do not round-trip.
        (parsed.partition_name() == name).then_some(parsed)
    }
}

/// Days since 1970-01-01 to `(year, month, day)` in the proleptic Gregorian calendar.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `(year, month, day)` to days since 1970-01-01; the inverse of [`civil_from_days`].
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month = i64::from(month);
    let month_index = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * month_index + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Now, in nanoseconds since the Unix epoch.
pub fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Formats nanoseconds since the epoch as RFC 3339 UTC with nanoseconds,
/// e.g. `2026-11-26T14:03:07.123456789Z`.
pub fn format_rfc3339_nanos(timestamp_ns: i64) -> String {
    let seconds = timestamp_ns.div_euclid(1_000_000_000);
    let nanos = timestamp_ns.rem_euclid(1_000_000_000);
    let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
    let second_of_day = seconds.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        second_of_day / 3_600,
        (second_of_day % 3_600) / 60,
        second_of_day % 60
    )
}

/// Parses a time given as RFC 3339 (`2026-11-26T14:03:07Z`, fractional seconds and `+HH:MM`
/// offsets allowed) or as an integer: seconds, milliseconds or nanoseconds since the epoch
/// (told apart by magnitude, as Loki does).
pub fn parse_time_nanos(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(number) = text.parse::<i64>() {
        return Some(match number.unsigned_abs() {
            0..=99_999_999_999 => number.checked_mul(1_000_000_000)?,
            100_000_000_000..=99_999_999_999_999 => number.checked_mul(1_000_000)?,
            _ => number,
        });
    }
    parse_rfc3339(text)
}

fn parse_rfc3339(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    if bytes.len() < 20
        || bytes[4] != b'-'
        || bytes[7] != b'-'
        || !matches!(bytes[10], b'T' | b't' | b' ')
    {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<i64> { text.get(range)?.parse().ok() };
    let year = number(0..4)?;
    let month = u32::try_from(number(5..7)?).ok()?;
    let day = u32::try_from(number(8..10)?).ok()?;
    if bytes[13] != b':' || bytes[16] != b':' {
        return None;
    }
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &text[19..];
    let mut nanos: i64 = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let kept = &fraction[..digits.min(9)];
        nanos = kept.parse::<i64>().ok()? * 10_i64.pow(9 - kept.len() as u32);
        rest = &fraction[digits..];
    }
    let offset_seconds = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            sign * offset_seconds(&rest[1..])?
        }
    };
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second
        - offset_seconds;
    seconds.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// An RFC 3339 offset without its sign, exactly `HH:MM` (hours 00–23, minutes 00–59), in
/// seconds. Anything longer is refused rather than multiplied: offsets arrive from clients.
fn offset_seconds(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    if bytes.len() != 5 || bytes[2] != b':' {
        return None;
    }
    let two_digits = |pair: &[u8]| -> Option<i64> {
        match pair {
            [tens @ b'0'..=b'9', ones @ b'0'..=b'9'] => {
                Some(i64::from(tens - b'0') * 10 + i64::from(ones - b'0'))
            }
            _ => None,
        }
    };
    let (hours, minutes) = (two_digits(&bytes[0..2])?, two_digits(&bytes[3..5])?);
    (hours <= 23 && minutes <= 59).then_some(hours * 3_600 + minutes * 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates_convert_both_ways() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(days_from_civil(2025, 11, 26), 20_418);
        assert_eq!(days_from_civil(2026, 11, 26), 20_783);
        for days in (-800_000..800_000).step_by(997) {
            let (year, month, day) = civil_from_days(days);
            assert_eq!(days_from_civil(year, month, day), days);
        }
    }

    #[test]
    fn hour_partitions_round_trip() {
        let timestamp = parse_time_nanos("2026-11-26T14:03:07.5Z").expect("valid time");
        let hour = Hour::of_nanos(timestamp);
        assert_eq!(hour.partition_name(), "2026-11-26T14");
        assert_eq!(hour.date_string(), "2026-11-26");
        assert_eq!(hour.hour_string(), "14");
        assert_eq!(Hour::parse_partition_name("2026-11-26T14"), Some(hour));
        assert!(hour.start_nanos() <= timestamp && timestamp < hour.end_nanos());
        assert_eq!(Hour::parse_partition_name("2026-02-31T00"), None);
        assert_eq!(Hour::parse_partition_name("garbage"), None);
        assert_eq!(Hour::of_nanos(-1).partition_name(), "1969-12-31T23");
    }

    #[test]
    fn times_parse_in_every_accepted_form() {
        let expected = 1_764_165_787_000_000_000;
        assert_eq!(
            format_rfc3339_nanos(expected),
            "2025-11-26T14:03:07.000000000Z"
        );
        assert_eq!(parse_time_nanos("2025-11-26T14:03:07Z"), Some(expected));
        assert_eq!(
            parse_time_nanos("2025-11-26T15:03:07+01:00"),
            Some(expected)
        );
        assert_eq!(parse_time_nanos("1764165787"), Some(expected));
        assert_eq!(parse_time_nanos("1764165787000"), Some(expected));
        assert_eq!(parse_time_nanos("1764165787000000000"), Some(expected));
        assert_eq!(
            parse_time_nanos("2025-11-26T14:03:07.25Z"),
            Some(expected + 250_000_000)
        );
        assert_eq!(parse_time_nanos("yesterday"), None);
        assert_eq!(parse_time_nanos("2025-13-26T14:03:07Z"), None);
    }

    /// Regression: an offset like `+9999999999999999:00` overflowed the offset arithmetic
    /// (a panic in debug builds, a wrong time in release). RFC 3339 offsets are `HH:MM`.
    #[test]
    fn regression_huge_offsets_are_refused_not_overflowed() {
        for text in [
            "2025-11-26T14:03:07+9999999999999999:00",
            "2025-11-26T14:03:07-9999999999999999:00",
            "2025-11-26T14:03:07+00:9999999999999999",
            "2025-11-26T14:03:07+24:00",
            "2025-11-26T14:03:07+01:60",
            "2025-11-26T14:03:07+1:00",
            "2025-11-26T14:03:07+01:0",
            "2025-11-26T14:03:07+-1:00",
            "2025-11-26T14:03:07++1:00",
        ] {
            assert_eq!(parse_time_nanos(text), None, "{text}");
        }
        assert_eq!(
            parse_time_nanos("2025-11-26T14:03:07-23:59"),
            Some(1_764_165_787_000_000_000 + (23 * 3_600 + 59 * 60) * 1_000_000_000)
        );
    }

    /// Every byte string, however formed, parses or is refused without a panic; a sweep of
    /// mutations of valid times (a deterministic stand-in for the fuzz target, run every time).
    #[test]
    fn mutated_times_never_panic() {
        let seeds = [
            "2025-11-26T14:03:07.123456789+01:00",
            "2025-11-26T14:03:07Z",
            "1764165787000",
            "-9223372036854775808",
        ];
        let alphabet = b"0123456789+-:.TZz \xff9";
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..50_000 {
            let seed = seeds[(next() % seeds.len() as u64) as usize];
            let mut bytes = seed.as_bytes().to_vec();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() % (bytes.len() as u64 + 1)) as usize;
                let byte = alphabet[(next() % alphabet.len() as u64) as usize];
                match next() % 3 {
                    0 if at < bytes.len() => bytes[at] = byte,
                    1 => bytes.insert(at, byte),
                    _ if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    _ => bytes.push(byte),
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            let _ = parse_time_nanos(&text);
        }
    }
}
