//! The one clock and the one set of date renderings every crate uses: milliseconds since
//! the epoch, ISO 8601 as the wire carries it, a short readable UTC date for people, and
//! the HTTP `Date` header parsed back.
//!
//! Reading the wall clock is the only effect here; everything else is pure.

use std::time::{SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Seconds since the Unix epoch.
pub fn now_s() -> i64 {
    now_ms().div_euclid(1000)
}

fn at(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// `2026-11-29T18:00:00.123Z` for a millisecond timestamp (the wire's `createdAt` form).
pub fn iso8601(ms: i64) -> String {
    let t = at(ms);
    // Digit by digit: on every push and ack, `format!` cost more than the date maths.
    let mut s = String::with_capacity(24);
    let mut digits = |n: u32, width: u32, sep: char| {
        for i in (0..width).rev() {
            let d = n / 10u32.pow(i) % 10;
            s.push(char::from_digit(d, 10).unwrap_or('0'));
        }
        s.push(sep);
    };
    digits(u32::try_from(t.year().clamp(0, 9999)).unwrap_or(0), 4, '-');
    digits(u32::from(u8::from(t.month())), 2, '-');
    digits(u32::from(t.day()), 2, 'T');
    digits(u32::from(t.hour()), 2, ':');
    digits(u32::from(t.minute()), 2, ':');
    digits(u32::from(t.second()), 2, '.');
    digits(u32::from(t.millisecond()), 3, 'Z');
    s
}

/// `2026-11-29 18:00 UTC`: a millisecond timestamp for people.
pub fn readable(ms: i64) -> String {
    let t = at(ms);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    )
}

/// Seconds since the epoch of an HTTP date (`Tue, 01 Dec 2026 20:22:25 GMT`).
pub fn parse_http_date(s: &str) -> Option<i64> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_, day, month, year, hms, "GMT"] = parts.as_slice() else {
        return None;
    };
    let month = MONTHS.iter().position(|m| m == month)?;
    let month = time::Month::try_from(u8::try_from(month + 1).ok()?).ok()?;
    let date = time::Date::from_calendar_date(year.parse().ok()?, month, day.parse().ok()?).ok()?;
    let hms: Vec<u8> = hms.split(':').filter_map(|x| x.parse().ok()).collect();
    let [h, m, sec] = hms.as_slice() else {
        return None;
    };
    let time = time::Time::from_hms(*h, *m, *sec).ok()?;
    Some(date.with_time(time).assume_utc().unix_timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_parses() {
        assert_eq!(iso8601(1_764_374_400_123), "2025-11-29T00:00:00.123Z");
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(951_782_399_009), "2000-02-28T23:59:59.009Z");
        assert_eq!(iso8601(951_868_800_999), "2000-03-01T00:00:00.999Z");
        assert_eq!(readable(1_765_000_000_000), "2025-12-06 05:46 UTC");
        assert_eq!(
            parse_http_date("Tue, 01 Dec 2026 20:22:25 GMT"),
            Some(1_796_156_545)
        );
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_http_date("Sun, 29 Feb 2032 12:00:00 GMT"),
            Some(1_961_668_800)
        );
        assert_eq!(parse_http_date("yesterday"), None);
        assert!(now_ms() > 1_700_000_000_000);
    }
}
