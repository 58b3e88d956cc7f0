//! Units that cross module boundaries ([`RunId`], [`UnixNs`]) and the parsers for the
//! command line's human forms: point times, durations, rates.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{Error, Result};

/// The random 128-bit identity of one workload run, in every block and in the history header.
///
/// A block whose run id differs from the history's was written by another run: *foreign*.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RunId(pub [u8; 16]);

impl RunId {
    /// A fresh random id (`getrandom`).
    ///
    /// # Errors
    /// The OS random source failed.
    pub fn random() -> Result<Self> {
        let mut b = [0u8; 16];
        getrandom::fill(&mut b).map_err(|e| Error::Invalid(format!("random run id: {e}")))?;
        Ok(Self(b))
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A CLOCK_REALTIME instant: nanoseconds since the Unix epoch (`SystemTime`), the clock of
/// HRL seal times (`sealed_unix_ns`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixNs(pub u64);

impl UnixNs {
    /// Now (0 if the clock is before 1970, `u64::MAX` after 2554).
    #[must_use]
    pub fn now() -> Self {
        Self(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        )
    }

    /// RFC 3339 UTC with nanoseconds, e.g. `2026-11-23T10:42:17.123456789Z`.
    #[must_use]
    pub fn rfc3339(self) -> String {
        let secs = self.0 / 1_000_000_000;
        let nanos = self.0 % 1_000_000_000;
        let (y, m, d) = civil_from_days(secs / 86_400);
        let sod = secs % 86_400;
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
            sod / 3600,
            (sod / 60) % 60,
            sod % 60
        )
    }
}

/// Parses `--point-time`: integer nanoseconds since the Unix epoch, or RFC 3339
/// (`2026-11-23T10:42:17.123Z`, `2026-11-23T12:42:17+02:00`; up to 9 fraction digits).
///
/// # Errors
/// Neither form, or a time before 1970.
pub fn parse_point_time(s: &str) -> Result<UnixNs> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse()
            .map(UnixNs)
            .map_err(|e| Error::Invalid(format!("point time '{s}': {e}")));
    }
    parse_rfc3339(s).ok_or_else(|| {
        Error::Invalid(format!(
            "point time '{s}': expected nanoseconds since the Unix epoch or RFC 3339 \
             like 2026-11-23T10:42:17.123Z"
        ))
    })
}

fn parse_rfc3339(s: &str) -> Option<UnixNs> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0u64;
    if b[i] == b'.' {
        let start = i + 1;
        let end = start + b[start..].iter().take_while(|c| c.is_ascii_digit()).count();
        let digits = end - start;
        if digits == 0 || digits > 9 {
            return None;
        }
        nanos = num(start..end)? * 10u64.pow(u32::try_from(9 - digits).ok()?);
        i = end;
    }
    let offset_secs: i64 = match s.get(i..)? {
        "Z" | "z" => 0,
        tz if tz.len() == 6 && (tz.starts_with('+') || tz.starts_with('-')) => {
            let oh = i64::try_from(num(i + 1..i + 3)?).ok()?;
            let om = i64::try_from(num(i + 4..i + 6)?).ok()?;
            if b[i + 3] != b':' || oh > 23 || om > 59 {
                return None;
            }
            let v = oh * 3600 + om * 60;
            if tz.starts_with('-') { -v } else { v }
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d)?;
    let local = i64::try_from(days * 86_400 + h * 3600 + mi * 60 + sec).ok()?;
    let utc = u64::try_from(local - offset_secs).ok()?;
    utc.checked_mul(1_000_000_000)?
        .checked_add(nanos)
        .map(UnixNs)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's method); `None` before.
fn days_from_civil(y: u64, m: u64, d: u64) -> Option<u64> {
    let y = if m <= 2 { y.checked_sub(1)? } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).checked_sub(719_468)
}

/// Days since 1970-01-01 to (year, month, day), the inverse of [`days_from_civil`].
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + u64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_time_forms() {
        assert_eq!(parse_point_time("0").unwrap(), UnixNs(0));
        assert_eq!(
            parse_point_time("1700000000123456789").unwrap().0,
            1_700_000_000_123_456_789
        );
        let t = parse_point_time("2026-11-23T10:42:17.123Z").unwrap();
        // date -u -d 2026-11-23T10:42:17Z +%s → 1795430537
        assert_eq!(t.0, 1_795_430_537_123_000_000);
        assert_eq!(
            parse_point_time("2026-11-23T12:42:17.123+02:00").unwrap(),
            t
        );
        assert_eq!(
            parse_point_time("2026-11-23T05:42:17.123-05:00").unwrap(),
            t
        );
        assert_eq!(parse_point_time("1970-01-01T00:00:00Z").unwrap(), UnixNs(0));
        assert_eq!(
            parse_point_time("2024-02-29T23:59:59.999999999Z")
                .unwrap()
                .0,
            1_709_251_199_999_999_999
        );
        assert_eq!(t.rfc3339(), "2026-11-23T10:42:17.123000000Z");
        for bad in [
            "",
            "yesterday",
            "2026-11-23",
            "2026-11-23T10:42:17",
            "2026-13-23T10:42:17Z",
            "2026-11-23T10:42:17.Z",
            "2026-11-23T10:42:17.1234567891Z",
            "1969-12-31T23:59:59Z",
            "2026-11-23T10:42:17+2:00",
            "-5",
        ] {
            assert!(parse_point_time(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn rfc3339_round_trips() {
        for ns in [0, 1, 951_782_400_000_000_000, 1_795_430_537_123_456_789] {
            assert_eq!(parse_point_time(&UnixNs(ns).rfc3339()).unwrap(), UnixNs(ns));
        }
    }
}
