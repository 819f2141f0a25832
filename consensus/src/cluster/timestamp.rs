//! ISO 8601 timestamps with a time zone, as `scheduled_at` carries them
//! (`2019-09-24T12:00+00`, `2023-09-24T10:36:00+02:00`, `...Z`), to and from Unix seconds.
//! A timestamp without a zone is refused, as Patroni refuses it: "12:00" is ambiguous across nodes.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimestampError {
    #[error("timezone information is mandatory (add +00:00 or Z)")]
    NoTimezone,
    #[error("unable to parse the timestamp; use ISO 8601, e.g. 2024-05-01T03:00:00+00:00")]
    Unparseable,
}

/// A point in time, in whole seconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub i64);

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719468;
    let era = if z >= 0 { z } else { z - 146096 } / 146097;
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// A fixed-width run of ASCII digits.
fn digits(s: &str, range: std::ops::Range<usize>) -> Result<i64, TimestampError> {
    let part = s.get(range).ok_or(TimestampError::Unparseable)?;
    if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TimestampError::Unparseable);
    }
    part.parse().map_err(|_| TimestampError::Unparseable)
}

/// Seconds east of UTC from `Z`, `+HH`, `+HH:MM` or `+HHMM`.
fn zone_offset(zone: &str) -> Result<i64, TimestampError> {
    if zone.eq_ignore_ascii_case("z") {
        return Ok(0);
    }
    let sign = match zone.as_bytes().first() {
        Some(b'+') => 1,
        Some(b'-') => -1,
        _ => return Err(TimestampError::Unparseable),
    };
    let rest = zone[1..].replace(':', "");
    let (h, m) = match rest.len() {
        2 => (digits(&rest, 0..2)?, 0),
        4 => (digits(&rest, 0..2)?, digits(&rest, 2..4)?),
        _ => return Err(TimestampError::Unparseable),
    };
    if h > 23 || m > 59 {
        return Err(TimestampError::Unparseable);
    }
    Ok(sign * (h * 3600 + m * 60))
}

impl Timestamp {
    pub fn parse(s: &str) -> Result<Timestamp, TimestampError> {
        let s = s.trim();
        let (y, mo, d) = (digits(s, 0..4)?, digits(s, 5..7)?, digits(s, 8..10)?);
        if s.get(4..5) != Some("-") || s.get(7..8) != Some("-") || !matches!(s.get(10..11), Some("T" | "t" | " ")) {
            return Err(TimestampError::Unparseable);
        }
        let time = &s[11..];
        let zone_at = time.find(['Z', 'z', '+', '-']);
        let (clock, zone) = match zone_at {
            Some(i) => (&time[..i], Some(&time[i..])),
            None => (time, None),
        };
        let (h, mi) = (digits(clock, 0..2)?, digits(clock, 3..5)?);
        if clock.get(2..3) != Some(":") {
            return Err(TimestampError::Unparseable);
        }
        let sec = match clock.get(5..) {
            None | Some("") => 0,
            Some(rest) => {
                let rest = rest.strip_prefix(':').ok_or(TimestampError::Unparseable)?;
                let (whole, fraction) = rest.split_once('.').unwrap_or((rest, "0"));
                if !fraction.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(TimestampError::Unparseable);
                }
                digits(whole, 0..whole.len().max(1))?
            }
        };
        if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || sec > 60 {
            return Err(TimestampError::Unparseable);
        }
        let offset = zone_offset(zone.ok_or(TimestampError::NoTimezone)?)?;
        Ok(Timestamp(days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec - offset))
    }

    pub fn now() -> Timestamp {
        let secs =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        Timestamp(secs)
    }
}

impl Timestamp {
    /// The calendar date and time of day in UTC: (year, month, day, hour, minute, second).
    pub fn utc(self) -> (i64, i64, i64, i64, i64, i64) {
        let (days, secs) = (self.0.div_euclid(86400), self.0.rem_euclid(86400));
        let (y, m, d) = civil_from_days(days);
        (y, m, d, secs / 3600, secs % 3600 / 60, secs % 60)
    }
}

/// ISO 8601 in UTC with an explicit offset, as Python's `isoformat()` writes it.
impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d, h, mi, s) = self.utc();
        write!(f, "{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}+00:00")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_patronictl_sends() {
        let t = |s: &str| Timestamp::parse(s).map(|t| t.to_string());
        assert_eq!(t("2019-09-24T12:00+00").as_deref(), Ok("2019-09-24T12:00:00+00:00"));
        assert_eq!(t("2023-09-24T10:36:00+02:00").as_deref(), Ok("2023-09-24T08:36:00+00:00"));
        assert_eq!(t("2024-02-29 23:59:59.123456-0130").as_deref(), Ok("2024-03-01T01:29:59+00:00"));
        assert_eq!(t("1970-01-01T00:00:00Z").as_deref(), Ok("1970-01-01T00:00:00+00:00"));
        assert_eq!(Timestamp::parse("1970-01-02T00:00Z"), Ok(Timestamp(86400)));
        assert_eq!(t("2024-05-01T03:00:00"), Err(TimestampError::NoTimezone));
        for bad in ["tomorrow", "2023-02-29T00:00Z", "2023-13-01T00:00Z", "2023-01-01T25:00Z", "2023-01-01T00:00+5"] {
            assert_eq!(Timestamp::parse(bad), Err(TimestampError::Unparseable), "{bad}");
        }
    }

    #[test]
    fn civil_dates_round_trip() {
        for days in [-719468, -1, 0, 1, 11016, 19782, 2932896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
