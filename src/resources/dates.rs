//! FHIR date, dateTime and instant values as the range of instants they cover
//! (search.html#date: "the implicit range"). Ranges are inclusive, in milliseconds since the epoch.
//! Values without a time zone (dates, partial dates) are read as UTC.

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

/// A closed range of instants, in milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub low: i64,
    pub high: i64,
}

/// Parses `YYYY`, `YYYY-MM`, `YYYY-MM-DD` or `YYYY-MM-DDThh:mm[:ss[.fff…]](Z|±hh:mm)`.
pub fn parse_range(s: &str) -> Option<Range> {
    let (date_part, time_part) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let mut fields = date_part.split('-');
    let year: i32 = digits(fields.next()?, 4)?.try_into().ok()?;
    let month = match fields.next() {
        Some(m) => Some(digits(m, 2)?),
        None => None,
    };
    let day = match fields.next() {
        Some(d) => Some(digits(d, 2)?),
        None => None,
    };
    if fields.next().is_some() {
        return None;
    }
    let Some(time_part) = time_part else {
        return date_range(year, month, day);
    };
    let (month, day) = (month?, day?);
    let date = Date::from_calendar_date(
        year,
        Month::try_from(u8::try_from(month).ok()?).ok()?,
        u8::try_from(day).ok()?,
    )
    .ok()?;
    // Split the offset from the clock time.
    let (clock, offset) = if let Some(c) = time_part.strip_suffix('Z') {
        (c, UtcOffset::UTC)
    } else {
        let pos = time_part.rfind(['+', '-'])?;
        let (c, o) = time_part.split_at(pos);
        let sign: i8 = if o.starts_with('-') { -1 } else { 1 };
        let (oh, om) = o[1..].split_once(':')?;
        let (oh, om) = (digits(oh, 2)? as i8, digits(om, 2)? as i8);
        (c, UtcOffset::from_hms(sign * oh, sign * om, 0).ok()?)
    };
    let mut hms = clock.split(':');
    let hour = digits(hms.next()?, 2)?;
    let minute = digits(hms.next()?, 2)?;
    let (second, frac) = match hms.next() {
        Some(sec) => match sec.split_once('.') {
            Some((s, f)) if !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) => (digits(s, 2)?, Some(f)),
            Some(_) => return None,
            None => (digits(sec, 2)?, None),
        },
        None => (0, None),
    };
    if hms.next().is_some() {
        return None;
    }
    let second = second.min(59); // a leap second (60) counts as the last second of the minute
    let time = Time::from_hms(
        u8::try_from(hour).ok()?,
        u8::try_from(minute).ok()?,
        u8::try_from(second).ok()?,
    )
    .ok()?;
    let start = PrimitiveDateTime::new(date, time).assume_offset(offset);
    let base = millis(start);
    let (low, span) = match (clock.split(':').count(), frac) {
        (2, _) => (base, 60_000 - 1),
        (_, None) => (base, 999),
        (_, Some(f)) => {
            let ms_digits: String = f.chars().chain("000".chars()).take(3).collect();
            let ms: i64 = ms_digits.parse().ok()?;
            let span = if f.len() >= 3 {
                0
            } else {
                10i64.pow(3 - f.len() as u32) - 1
            };
            (base + ms, span)
        }
    };
    Some(Range { low, high: low + span })
}

fn date_range(year: i32, month: Option<u32>, day: Option<u32>) -> Option<Range> {
    let first_month = Month::try_from(u8::try_from(month.unwrap_or(1)).ok()?).ok()?;
    let start = Date::from_calendar_date(year, first_month, u8::try_from(day.unwrap_or(1)).ok()?).ok()?;
    let end = match (month, day) {
        (_, Some(_)) => start.next_day()?,
        (Some(_), None) => {
            let (y, m) = if first_month == Month::December {
                (year + 1, Month::January)
            } else {
                (year, first_month.next())
            };
            Date::from_calendar_date(y, m, 1).ok()?
        }
        (None, None) => Date::from_calendar_date(year + 1, Month::January, 1).ok()?,
    };
    let low = millis(start.midnight().assume_utc());
    let high = millis(end.midnight().assume_utc()) - 1;
    Some(Range { low, high })
}

fn digits(s: &str, len: usize) -> Option<u32> {
    if s.len() == len && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

fn millis(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// Formats milliseconds since the epoch as a FHIR instant (UTC, millisecond precision).
pub fn format_instant(ms: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// The UTC offset, in minutes, a dateTime with a time is written in (`Z` or `±hh:mm`).
pub fn offset_minutes(s: &str) -> Option<i32> {
    let (_, t) = s.split_once('T')?;
    if t.ends_with('Z') {
        return Some(0);
    }
    let i = t.rfind(['+', '-'])?;
    let (sign, hm) = t[i..].split_at(1);
    let (h, m) = hm.split_once(':')?;
    let minutes = h.parse::<i32>().ok()? * 60 + m.parse::<i32>().ok()?;
    Some(if sign == "-" { -minutes } else { minutes })
}

/// Formats milliseconds since the epoch as a FHIR dateTime at a UTC offset of `offset` minutes
/// (`Z` for none), to the second, or to the millisecond when it has a fraction; None past the years
/// a FHIR dateTime holds (0001-9999).
pub fn format_at_offset(ms: i64, offset: i32) -> Option<String> {
    let local = ms.checked_add(i64::from(offset) * 60_000)?;
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(local) * 1_000_000).ok()?;
    if !(1..=9999).contains(&t.year()) {
        return None;
    }
    let fraction = if t.millisecond() == 0 {
        String::new()
    } else {
        format!(".{:03}", t.millisecond())
    };
    let zone = if offset == 0 {
        "Z".to_string()
    } else {
        let sign = if offset < 0 { '-' } else { '+' };
        format!("{sign}{:02}:{:02}", offset.abs() / 60, offset.abs() % 60)
    };
    Some(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{fraction}{zone}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    ))
}

/// An IANA time zone by name (`America/New_York`): the system's zoneinfo, else the database jiff
/// bundles.
pub fn time_zone(name: &str) -> Option<jiff::tz::TimeZone> {
    jiff::tz::TimeZone::get(name).ok()
}

/// The instant `weeks` calendar weeks after `ms` at the same wall-clock time in `zone` (a time that
/// a clock change skips is moved past the gap, one it repeats is the earlier), and that instant's
/// UTC offset in minutes.
pub fn add_weeks_in_zone(ms: i64, weeks: i64, zone: &jiff::tz::TimeZone) -> Option<(i64, i32)> {
    let start = jiff::Timestamp::from_millisecond(ms)
        .ok()?
        .to_zoned_datetime(zone.clone());
    let later = start.checked_add(jiff::Span::new().weeks(weeks)).ok()?;
    Some((later.timestamp().as_millisecond(), later.offset().seconds() / 60))
}

/// Formats milliseconds since the epoch as an HTTP date (RFC 9110 IMF-fixdate), for Last-Modified.
pub fn format_http_date(ms: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        DAYS[t.weekday().number_days_from_monday() as usize],
        t.day(),
        MONTHS[u8::from(t.month()) as usize - 1],
        t.year(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The current time in milliseconds since the epoch.
pub fn now_millis() -> i64 {
    millis(OffsetDateTime::now_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> (String, String) {
        let range = parse_range(s).unwrap();
        (format_instant(range.low), format_instant(range.high))
    }

    #[test]
    fn a_time_keeps_the_offset_it_was_written_in() {
        let t = "2026-12-08T18:00:00-05:00";
        let ms = parse_range(t).unwrap().low;
        assert_eq!(offset_minutes(t), Some(-300));
        assert_eq!(format_at_offset(ms, -300).unwrap(), t);
        let week = 7 * 24 * 3_600_000;
        assert_eq!(format_at_offset(ms + week, -300).unwrap(), "2026-12-15T18:00:00-05:00");
        assert_eq!(offset_minutes("2026-12-08T18:00:00Z"), Some(0));
        assert_eq!(format_at_offset(ms, 0).unwrap(), "2026-12-08T23:00:00Z");
        assert_eq!(offset_minutes("2026-12-08T18:00:00.5+05:30"), Some(330));
        assert_eq!(
            format_at_offset(ms + 500, 330).unwrap(),
            "2026-12-09T04:30:00.500+05:30"
        );
        assert_eq!(offset_minutes("2026-12-08"), None);
        let last = parse_range("9999-12-31T23:00:00Z").unwrap().low;
        assert_eq!(format_at_offset(last + week, 0), None);
    }

    #[test]
    fn weeks_in_a_zone_keep_the_wall_clock_across_daylight_saving() {
        let ny = time_zone("America/New_York").unwrap();
        // 18:00 in New York on Tuesday 3 March 2026 (EST), then after the change of 8 March (EDT).
        let start = parse_range("2026-03-03T18:00:00-05:00").unwrap().low;
        let (next, offset) = add_weeks_in_zone(start, 1, &ny).unwrap();
        assert_eq!(format_at_offset(next, offset).unwrap(), "2026-03-10T18:00:00-04:00");
        let (back, offset) = add_weeks_in_zone(start, 35, &ny).unwrap();
        assert_eq!(format_at_offset(back, offset).unwrap(), "2026-11-03T18:00:00-05:00");
        assert!(time_zone("Mars/Olympus_Mons").is_none());
    }

    #[test]
    fn partial_dates_cover_their_whole_period() {
        assert_eq!(
            r("2026"),
            ("2026-01-01T00:00:00.000Z".into(), "2026-12-31T23:59:59.999Z".into())
        );
        assert_eq!(
            r("2026-02"),
            ("2026-02-01T00:00:00.000Z".into(), "2026-02-28T23:59:59.999Z".into())
        );
        assert_eq!(
            r("2026-12"),
            ("2026-12-01T00:00:00.000Z".into(), "2026-12-31T23:59:59.999Z".into())
        );
        assert_eq!(
            r("2026-11-23"),
            ("2026-11-23T00:00:00.000Z".into(), "2026-11-23T23:59:59.999Z".into())
        );
    }

    #[test]
    fn date_times_use_their_offset_and_precision() {
        assert_eq!(
            r("2026-11-23T10:00:00+02:00"),
            ("2026-11-23T08:00:00.000Z".into(), "2026-11-23T08:00:00.999Z".into())
        );
        assert_eq!(
            r("2026-11-23T10:00:00.5Z"),
            ("2026-11-23T10:00:00.500Z".into(), "2026-11-23T10:00:00.599Z".into())
        );
        assert_eq!(
            r("2026-11-23T10:00:00.123456Z"),
            ("2026-11-23T10:00:00.123Z".into(), "2026-11-23T10:00:00.123Z".into())
        );
        assert_eq!(
            r("2026-11-23T10:00Z"),
            ("2026-11-23T10:00:00.000Z".into(), "2026-11-23T10:00:59.999Z".into())
        );
    }

    #[test]
    fn malformed_values_are_rejected() {
        for bad in [
            "",
            "26",
            "2026-13",
            "2026-02-30",
            "2026-11-23T25:00:00Z",
            "2026-11-23T10:00:00",
            "2026-11-23T10:00:00.Z",
            "abcd",
        ] {
            assert!(parse_range(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn http_dates_are_imf_fixdate() {
        assert_eq!(format_http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    }
}
