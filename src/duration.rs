//! Durations as Kubernetes users write them: Go-style (`500ms`, `10s`, `1h30m`, `1.5h`), the
//! form of every duration flag of both programs and of their configuration files.
//!
//! Not `kube::core::Duration`: its parser multiplies a float, so `300ms` would come out a
//! nanosecond short; here the sum is taken in whole nanoseconds. Not jiff's friendly format
//! either: it reads `1.5h` and `2m3s500ms` differently from Go and prints another form.

use serde::Serialize;

/// A duration written like `500ms`, `10s`, `5m`, `1h`, `1h30m` (Go's `time.ParseDuration`
/// without signs), kept in whole nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoDuration(pub std::time::Duration);

impl std::str::FromStr for GoDuration {
    type Err = String;
    /// A Go-style duration: one or more of a decimal number and a unit (`ns`, `us`/`µs`, `ms`,
    /// `s`, `m`, `h`), e.g. `500ms`, `10s`, `1h30m`, `1.5h`; or `0`.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bad = || format!("{s:?} is not a duration like 500ms, 10s, 5m, 1h or 1h30m");
        if s == "0" {
            return Ok(GoDuration(std::time::Duration::ZERO));
        }
        let mut rest = s;
        // Whole nanoseconds, so `300ms` is exactly 300 ms (floating point would make it less).
        let mut total: u128 = 0;
        if rest.is_empty() {
            return Err(bad());
        }
        while !rest.is_empty() {
            let number_end = rest
                .find(|c: char| !c.is_ascii_digit() && c != '.')
                .unwrap_or(rest.len());
            let (number, after) = rest.split_at(number_end);
            let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
            if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') || whole.len() > 20 {
                return Err(bad());
            }
            let unit_end = after
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(after.len());
            let (unit, after) = after.split_at(unit_end);
            let unit_ns: u128 = match unit {
                "ns" => 1,
                "us" | "µs" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                _ => return Err(bad()),
            };
            let whole: u128 = if whole.is_empty() {
                0
            } else {
                whole.parse().map_err(|_| bad())?
            };
            let mut part = whole * unit_ns;
            // At most 9 fraction digits matter (nanoseconds of a second, fewer of a smaller unit).
            let mut scale = unit_ns;
            for digit in fraction.bytes().take(18) {
                scale /= 10;
                part += u128::from(digit - b'0') * scale;
            }
            total = total
                .checked_add(part)
                .ok_or_else(|| format!("{s:?} is too long a duration"))?;
            rest = after;
        }
        let secs = u64::try_from(total / 1_000_000_000).map_err(|_| format!("{s:?} is too long a duration"))?;
        Ok(GoDuration(std::time::Duration::new(
            secs,
            (total % 1_000_000_000) as u32,
        )))
    }
}

impl std::fmt::Display for GoDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.0.as_millis();
        match ms {
            ms if ms % 3_600_000 == 0 && ms > 0 => write!(f, "{}h", ms / 3_600_000),
            ms if ms % 60_000 == 0 && ms > 0 => write!(f, "{}m", ms / 60_000),
            ms if ms % 1000 == 0 => write!(f, "{}s", ms / 1000),
            ms => write!(f, "{ms}ms"),
        }
    }
}

impl Serialize for GoDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_go_durations_compound_and_fractional() {
        use std::time::Duration;
        let d = |s: &str| s.parse::<GoDuration>().map(|d| d.0);
        assert_eq!(d("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(d("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(d("300ms").unwrap(), Duration::from_millis(300));
        assert_eq!(d("2m3s500ms").unwrap(), Duration::from_millis(123_500));
        assert_eq!(d("0").unwrap(), Duration::ZERO);
        for bad in ["", "5", "1x", "h", "1..5s", "-1s", "99999999999999999999999h"] {
            assert!(d(bad).is_err(), "{bad:?}");
        }
        assert_eq!(GoDuration(d("90m").unwrap()).to_string(), "90m");
    }
}
