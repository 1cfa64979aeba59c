//! Human units in scenario files and thresholds: durations (`"250ms"`, `"5s"`,
//! `"2m"`, `"1h"`), rates (`"2000/s"`, `"60/m"`) and sizes (`"8KiB"`, `"512B"`,
//! `"1MB"`); and UTC dates for the names and stamps loadgen writes. Each
//! parser says what it expected, so a scenario error can name the field and
//! the reason.

use std::time::Duration;

/// The longest duration any field takes: a day. Longer is a typo (and past
/// what `Duration` arithmetic and the 1-hour histograms are built for).
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
/// The highest rate any field takes: more than one generator issues.
pub const MAX_RATE_PER_S: f64 = 1_000_000.0;

/// Parses `"250ms"`, `"5s"`, `"1.5s"`, `"2m"`, `"1h"`, `"100us"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (value, unit) = number_and_unit(s).ok_or_else(|| {
        format!("{s:?} is not a duration: expected a number and a unit, like \"250ms\", \"5s\" or \"2m\"")
    })?;
    let seconds = match unit {
        "us" | "µs" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "" => return Err(format!("{s:?} has no unit: write \"{s}s\" or \"{s}ms\"")),
        other => {
            return Err(format!(
                "{s:?}: unknown duration unit {other:?} (use us, ms, s, m, h)"
            ))
        }
    };
    if seconds.is_nan() || seconds < 0.0 {
        return Err(format!("{s:?} is not a valid duration"));
    }
    if seconds > MAX_DURATION.as_secs_f64() {
        return Err(format!(
            "{s:?} is too long: a duration is at most 24h (86400s)"
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Splits `"1.5ms"` into `(1.5, "ms")`: a non-negative decimal number, then
/// whatever follows it (trimmed). `None` when there is no number in front.
fn number_and_unit(s: &str) -> Option<(f64, &str)> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    Some((num.parse().ok()?, unit.trim()))
}

/// Parses `"N/s"` or `"N/m"` into events per second.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let (num, per) = s
        .trim()
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not a rate: expected \"N/s\" or \"N/m\""))?;
    let n: f64 = num
        .trim()
        .parse()
        .ok()
        .filter(|n: &f64| !n.is_nan())
        .ok_or_else(|| format!("{s:?} is not a rate: {num:?} is not a number"))?;
    if n < 0.0 {
        return Err(format!("{s:?}: a rate cannot be negative"));
    }
    let per_sec = match per.trim() {
        "s" => n,
        "m" => n / 60.0,
        "h" => n / 3600.0,
        other => return Err(format!("{s:?}: unknown rate unit {other:?} (use /s or /m)")),
    };
    // Gaps between events are 1/rate: a vanishing rate ("1e-300/s") would make
    // a gap no Duration holds. Zero means none at all.
    if per_sec != 0.0 && per_sec < MIN_RATE {
        return Err(format!("{s:?}: a rate is 0 or at least one a day"));
    }
    if per_sec > MAX_RATE_PER_S {
        return Err(format!(
            "{s:?} is too high: a rate is at most 1,000,000/s (more than one generator issues)"
        ));
    }
    Ok(per_sec)
}

/// The smallest rate above zero: one event a day.
const MIN_RATE: f64 = 1.0 / 86_400.0;

/// Parses sizes: `"8KiB"`, `"1MiB"`, `"512B"`, `"2KB"`, or a plain number of bytes.
pub fn parse_size(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let (value, unit) =
        number_and_unit(s).ok_or_else(|| format!("{s:?} is not a size like \"8KiB\""))?;
    let factor = match unit {
        "" | "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        other => {
            return Err(format!(
                "{s:?}: unknown size unit {other:?} (use B, KiB, MiB, GiB, KB, MB, GB)"
            ))
        }
    };
    let bytes = value * factor;
    if !bytes.is_finite() {
        return Err(format!("{s:?} is too large a size"));
    }
    Ok(bytes)
}

/// (year, month, day, hour, minute, second) in UTC of Unix seconds: a run
/// directory's name and a JUnit timestamp (Howard Hinnant's civil-date
/// algorithm; no time zone database needed).
pub fn utc(secs: u64) -> (i64, i64, i64, u64, u64, u64) {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_rates_and_sizes() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert_eq!(parse_rate("2000/s").unwrap(), 2000.0);
        assert_eq!(parse_rate("60/m").unwrap(), 1.0);
        assert!(parse_rate("-1/s").is_err());
        assert!(parse_rate("10").is_err());
        assert_eq!(parse_rate("0/s").unwrap(), 0.0);
        assert!(
            parse_rate("1e-300/s").is_err(),
            "a gap of 1e300 s is no Duration"
        );
        assert!(parse_duration("99999999999999999999999h").is_err());
        assert_eq!(parse_size("8KiB").unwrap(), 8192.0);
        assert_eq!(parse_size("512").unwrap(), 512.0);
        assert!(parse_size("8 furlongs").is_err());
        // Out of range: an error that states the limit, never a panic.
        let huge = parse_duration("99999999999999999999h").unwrap_err();
        assert!(huge.contains("at most 24h"), "{huge}");
        assert!(parse_duration("24h").is_ok());
        assert!(parse_rate("NaN/s").unwrap_err().contains("not a number"));
        assert!(parse_rate("1e400/s")
            .unwrap_err()
            .contains("at most 1,000,000/s"));
        assert!(parse_rate("inf/s").unwrap_err().contains("at most"));
        assert!(parse_size(&"9".repeat(400)).is_err());
        assert_eq!(utc(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(utc(1_764_310_287), (2025, 11, 28, 6, 11, 27));
    }
}
