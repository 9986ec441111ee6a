//! Record times: read from what fluentd pipelines write, printed in a chosen zone, in stern's
//! `--timestamps` formats or a Go layout (`toTimestamp` in templates, as stern has it).

use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};
use serde_json::Value;

/// The time zone `--timezone` names: `Local`, `UTC`, or an IANA name.
pub fn zone(name: &str) -> Result<TimeZone, String> {
    match name {
        "Local" | "local" => Ok(TimeZone::system()),
        "UTC" | "utc" | "Z" => Ok(TimeZone::UTC),
        other => TimeZone::get(other).map_err(|e| {
            format!("--timezone {other:?} is not a time zone (Local, UTC or an IANA name such as Asia/Tokyo): {e}")
        }),
    }
}

/// The record's own time (`time`, `@timestamp` or `timestamp`), if one parses.
pub fn of_record(record: &Value) -> Option<Timestamp> {
    ["time", "@timestamp", "timestamp"]
        .iter()
        .find_map(|k| parse(&record[*k]))
}

/// A time as fluentd pipelines write it: RFC 3339 (containerd's `2025-03-14T09:26:53.589793238Z`),
/// fluentd's `2025-03-14 09:26:53 +0000` (with or without fraction), or Unix time in seconds,
/// milliseconds, microseconds or nanoseconds (a number, or a string of one).
pub fn parse(v: &Value) -> Option<Timestamp> {
    match v {
        Value::String(s) => parse_text(s.trim()),
        Value::Number(n) => n.as_f64().and_then(from_unix),
        _ => None,
    }
}

fn parse_text(s: &str) -> Option<Timestamp> {
    if let Ok(t) = s.parse::<Timestamp>() {
        return Some(t);
    }
    for format in [
        "%Y-%m-%d %H:%M:%S%.f %z",
        "%Y-%m-%dT%H:%M:%S%.f%z",
        "%Y-%m-%d %H:%M:%S%.f%z",
    ] {
        if let Ok(t) = jiff::fmt::strtime::parse(format, s).and_then(|p| p.to_timestamp()) {
            return Some(t);
        }
    }
    s.parse::<f64>().ok().and_then(from_unix)
}

fn from_unix(n: f64) -> Option<Timestamp> {
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    // Seconds until the year 5138, then milliseconds, microseconds, nanoseconds.
    let nanos = match n {
        n if n < 1e11 => n * 1e9,
        n if n < 1e14 => n * 1e6,
        n if n < 1e17 => n * 1e3,
        n => n,
    };
    Timestamp::from_nanosecond(nanos as i128).ok()
}

/// stern's `--timestamps=default`: `2006-01-02T15:04:05.000000000Z07:00`.
pub fn default_format(t: Timestamp, tz: &TimeZone) -> String {
    go_format(&t.to_zoned(tz.clone()), "2006-01-02T15:04:05.000000000Z07:00")
}

/// stern's `--timestamps=short`: `01-02 15:04:05`.
pub fn short_format(t: Timestamp, tz: &TimeZone) -> String {
    go_format(&t.to_zoned(tz.clone()), "01-02 15:04:05")
}

/// `t` written with a Go time layout (the reference time `Mon Jan 2 15:04:05 MST 2006`), as
/// stern's templates take them: `2006-01-02 15:04:05`, `Jan _2 15:04:05.000`, `15:04:05Z07:00`...
pub fn go_format(t: &Zoned, layout: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let mut out = String::with_capacity(layout.len() + 8);
    let month = MONTHS[(t.month() - 1) as usize];
    let weekday = DAYS[t.weekday().to_monday_zero_offset() as usize];
    let hour12 = match t.hour() % 12 {
        0 => 12,
        h => h,
    };
    let offset = t.offset().seconds();
    let zone_text = |colon: bool, seconds: bool, hours_only: bool| {
        let sign = if offset < 0 { '-' } else { '+' };
        let a = offset.unsigned_abs();
        let (h, m, s) = (a / 3600, a / 60 % 60, a % 60);
        match (hours_only, colon, seconds) {
            (true, _, _) => format!("{sign}{h:02}"),
            (false, true, true) => format!("{sign}{h:02}:{m:02}:{s:02}"),
            (false, true, false) => format!("{sign}{h:02}:{m:02}"),
            (false, false, true) => format!("{sign}{h:02}{m:02}{s:02}"),
            (false, false, false) => format!("{sign}{h:02}{m:02}"),
        }
    };
    let mut rest = layout;
    while !rest.is_empty() {
        let token = |t: &str| rest.starts_with(t);
        let (text, used) = if token("January") {
            (month.to_owned(), 7)
        } else if token("Jan") {
            (month[..3].to_owned(), 3)
        } else if token("Monday") {
            (weekday.to_owned(), 6)
        } else if token("Mon") {
            (weekday[..3].to_owned(), 3)
        } else if token("MST") {
            let abbr = t.time_zone().to_offset_info(t.timestamp()).abbreviation().to_owned();
            (abbr, 3)
        } else if token("2006") {
            (format!("{:04}", t.year()), 4)
        } else if token("002") {
            (format!("{:03}", t.day_of_year()), 3)
        } else if token("01") {
            (format!("{:02}", t.month()), 2)
        } else if token("02") {
            (format!("{:02}", t.day()), 2)
        } else if token("03") {
            (format!("{hour12:02}"), 2)
        } else if token("04") {
            (format!("{:02}", t.minute()), 2)
        } else if token("05") {
            (format!("{:02}", t.second()), 2)
        } else if token("06") {
            (format!("{:02}", t.year().rem_euclid(100)), 2)
        } else if token("15") {
            (format!("{:02}", t.hour()), 2)
        } else if token("__2") {
            (format!("{:>3}", t.day_of_year()), 3)
        } else if token("_2") {
            (format!("{:>2}", t.day()), 2)
        } else if token("1") {
            (t.month().to_string(), 1)
        } else if token("2") {
            (t.day().to_string(), 1)
        } else if token("3") {
            (hour12.to_string(), 1)
        } else if token("4") {
            (t.minute().to_string(), 1)
        } else if token("5") {
            (t.second().to_string(), 1)
        } else if token("PM") {
            ((if t.hour() >= 12 { "PM" } else { "AM" }).to_owned(), 2)
        } else if token("pm") {
            ((if t.hour() >= 12 { "pm" } else { "am" }).to_owned(), 2)
        } else if let Some((z, len, colon, seconds, hours)) = [
            ("Z07:00:00", true, true, false),
            ("-07:00:00", true, true, false),
            ("Z070000", false, true, false),
            ("-070000", false, true, false),
            ("Z07:00", true, false, false),
            ("-07:00", true, false, false),
            ("Z0700", false, false, false),
            ("-0700", false, false, false),
            ("Z07", false, false, true),
            ("-07", false, false, true),
        ]
        .iter()
        .find(|(t, ..)| rest.starts_with(t))
        .map(|(t, c, s, h)| (t.starts_with('Z'), t.len(), *c, *s, *h))
        {
            if z && offset == 0 {
                ("Z".to_owned(), len)
            } else {
                (zone_text(colon, seconds, hours), len)
            }
        } else if let Some((digits, trim, len)) = fraction(rest) {
            let nanos = format!("{:09}", t.subsec_nanosecond());
            let mut f = nanos[..digits.min(9)].to_owned();
            if trim {
                f = f.trim_end_matches('0').to_owned();
            }
            let sep = &rest[..1];
            (
                if f.is_empty() {
                    String::new()
                } else {
                    format!("{sep}{f}")
                },
                len,
            )
        } else {
            let c = rest.chars().next().expect("not empty");
            (c.to_string(), c.len_utf8())
        };
        out.push_str(&text);
        rest = &rest[used..];
    }
    out
}

/// A Go fractional-second token at the start of `s` (`.000`, `,999999999`): its digits,
/// whether trailing zeros are dropped (`9`s), and its length. Only when not followed by a digit.
fn fraction(s: &str) -> Option<(usize, bool, usize)> {
    let mut chars = s.chars();
    let sep = chars.next()?;
    if sep != '.' && sep != ',' {
        return None;
    }
    let digit = chars.next().filter(|c| *c == '0' || *c == '9')?;
    let run = 1 + chars.clone().take_while(|c| *c == digit).count();
    if s[1 + run..].starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    Some((run, digit == '9', 1 + run))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn record_times_are_read_in_the_formats_fluentd_pipelines_write() {
        let want: Timestamp = "2025-03-14T09:26:53Z".parse().unwrap();
        for v in [
            json!("2025-03-14T09:26:53Z"),
            json!("2025-03-14T10:26:53+01:00"),
            json!("2025-03-14 09:26:53 +0000"),
            json!("2025-03-14 10:26:53 +0100"),
            json!("2025-03-14T09:26:53+0000"),
            json!(1741944413),
            json!(1741944413000u64),
            json!("1741944413"),
        ] {
            assert_eq!(parse(&v), Some(want), "{v}");
        }
        let nanos = parse(&json!("2025-03-14T09:26:53.589793238Z")).unwrap();
        assert_eq!(nanos.subsec_nanosecond(), 589793238);
        assert_eq!(parse(&json!(1741944413.5)).unwrap().subsec_millisecond(), 500);
        for bad in [json!("yesterday"), json!(null), json!(-5), json!({"a": 1})] {
            assert_eq!(parse(&bad), None, "{bad}");
        }
        assert_eq!(of_record(&json!({"@timestamp": "2025-03-14T09:26:53Z"})), Some(want));
    }

    #[test]
    fn timestamps_print_in_sterns_formats_and_go_layouts_in_the_chosen_zone() {
        let t: Timestamp = "2025-03-14T09:26:53.5897Z".parse().unwrap();
        assert_eq!(default_format(t, &TimeZone::UTC), "2025-03-14T09:26:53.589700000Z");
        let tokyo = zone("Asia/Tokyo").unwrap();
        assert_eq!(default_format(t, &tokyo), "2025-03-14T18:26:53.589700000+09:00");
        assert_eq!(short_format(t, &tokyo), "03-14 18:26:53");
        let z = t.to_zoned(tokyo);
        assert_eq!(
            go_format(&z, "2006-01-02 15:04:05.000 MST"),
            "2025-03-14 18:26:53.589 JST"
        );
        assert_eq!(go_format(&z, "Mon Jan _2 3:04PM .999999"), "Fri Mar 14 6:26PM .5897");
        assert_eq!(
            go_format(&z, "05.999"),
            "53.589",
            "Go: at most three digits, trailing zeros dropped"
        );
        assert_eq!(
            go_format(&z, "Monday, 02-January-06 -0700"),
            "Friday, 14-March-25 +0900"
        );
        assert!(zone("Mars/Olympus").unwrap_err().contains("IANA"));
        assert!(zone("Local").is_ok());
    }
}
