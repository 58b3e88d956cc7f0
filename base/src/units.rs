//! The one grammar for sizes, rates and durations, used by every flag, the policy file and the
//! server's options — so `1d` or `64M` means the same wherever an operator writes it.
//!
//! - size: digits and an optional binary unit `K`, `M`, `G`, `T` (any case; `B`, `KB`, `KiB`,
//!   … accepted): `4096`, `512K`, `64MiB`, `2G`;
//! - rate: a size with an optional `/s` (`50M`, `50MiB/s`), never zero;
//! - duration: digits and a unit `ms`, `s`, `m`, `h`, `d`, or bare digits for seconds:
//!   `500ms`, `30s`, `10m`, `1h`, `7d`, `90`.

use std::time::Duration;

fn split_digits(s: &str) -> (&str, &str) {
    s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()))
}

/// Parses a byte size (binary units).
///
/// # Errors
/// Not a size, or over `u64::MAX` bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let bad = || {
        format!(
            "size {t:?}: expected a number with an optional K, M, G or T suffix (e.g. 4096, 512K, 64M, 2G)"
        )
    };
    let (num, unit) = split_digits(t);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(bad()),
    };
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

/// Parses a rate in bytes per second: a size with an optional `/s`.
///
/// # Errors
/// Not a rate, or zero.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let bad =
        || format!("rate {t:?}: expected bytes/s like 512K, 50M, 1G (an optional /s is accepted)");
    match parse_size(t.strip_suffix("/s").unwrap_or(t)) {
        Ok(0) | Err(_) => Err(bad()),
        Ok(v) => Ok(v),
    }
}

/// Parses a duration into nanoseconds.
///
/// # Errors
/// Not a duration, or too long to count in nanoseconds (about 584 years).
pub fn parse_duration_ns(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let bad = || format!("duration {t:?}: expected e.g. 500ms, 30s, 10m, 1h, 7d");
    let (num, unit) = split_digits(t);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let unit_ns: u64 = match unit.trim() {
        "ms" => 1_000_000,
        "" | "s" => 1_000_000_000,
        "m" => 60 * 1_000_000_000,
        "h" => 3_600 * 1_000_000_000,
        "d" => 86_400 * 1_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(unit_ns).ok_or_else(bad)
}

/// Parses a duration.
///
/// # Errors
/// See [`parse_duration_ns`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    parse_duration_ns(s).map(Duration::from_nanos)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sizes_are_binary() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("512K").unwrap(), 512 << 10);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("2gb").unwrap(), 2 << 30);
        assert_eq!(parse_size(" 1T ").unwrap(), 1 << 40);
        for bad in ["", "x", "1X", "-1", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rates_take_an_optional_per_second_and_are_never_zero() {
        assert_eq!(parse_rate("50MiB/s").unwrap(), 50 << 20);
        assert_eq!(parse_rate("1048576").unwrap(), 1 << 20);
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn durations_share_one_set_of_units() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        // The day unit works for every flag (it used to be refused by `workload --duration`).
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration_ns("7d").unwrap(), 7 * 86_400 * 1_000_000_000);
        for bad in ["", "s", "1w", "1.5h", "-3s", "99999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
