//! Formatting for people: sizes, durations and timestamps.

/// `1536` → `"1.5 KiB"`.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut unit = 0;
    let mut whole = n;
    let mut rem = 0;
    while whole >= 1024 && unit + 1 < UNITS.len() {
        rem = whole % 1024;
        whole /= 1024;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{whole}.{} {}", rem * 10 / 1024, UNITS[unit])
    }
}

/// A duration in ns as its two largest units: `"40s"`, `"5m"`, `"23h 55m"`, `"2d 3h"`
/// (`"0s"` below a second).
pub(crate) fn duration(ns: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let mut secs = ns / 1_000_000_000;
    let mut parts = Vec::new();
    for (len, name) in UNITS {
        if secs >= len && parts.len() < 2 {
            parts.push(format!("{}{name}", secs / len));
            secs %= len;
        } else if !parts.is_empty() {
            break;
        }
    }
    if parts.is_empty() {
        "0s".into()
    } else {
        parts.join(" ")
    }
}

/// Nanoseconds since the Unix epoch as an RFC 3339 UTC timestamp with milliseconds (the
/// checker's nanosecond form, shortened).
pub(crate) fn timestamp(unix_ns: u64) -> String {
    let full = checker::UnixNs(unix_ns).rfc3339();
    // `YYYY-MM-DDTHH:MM:SS.mmm` + `nnnnnnZ`: keep the milliseconds.
    match full.get(..23) {
        Some(ms) => format!("{ms}Z"),
        None => full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(64 << 20), "64.0 MiB");
    }

    #[test]
    fn durations() {
        const S: u64 = 1_000_000_000;
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(40 * S), "40s");
        assert_eq!(duration(300 * S), "5m");
        assert_eq!(duration((23 * 3600 + 55 * 60 + 7) * S), "23h 55m");
        assert_eq!(duration((2 * 86_400 + 3 * 3600) * S), "2d 3h");
        assert_eq!(duration((86_400 + 30) * S), "1d");
    }

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        // 2000-02-29T12:34:56.789Z
        assert_eq!(
            timestamp(951_827_696_789_000_000),
            "2000-02-29T12:34:56.789Z"
        );
        assert_eq!(
            timestamp(1_795_392_000_000_000_000),
            "2026-11-23T00:00:00.000Z"
        );
    }
}
