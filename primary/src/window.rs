//! When automatic checksum resyncs may start: `--resync-window`.

/// When automatic resyncs may start (local time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResyncWindow {
    /// At any time.
    Always,
    /// Daily from `start` to `end` (minutes after midnight; wraps past midnight when
    /// `start > end`).
    Daily {
        /// Opens.
        start: u16,
        /// Closes.
        end: u16,
    },
}

impl Default for ResyncWindow {
    /// Outside business hours (08:00–18:00), as the seed documents say.
    fn default() -> Self {
        Self::Daily {
            start: 18 * 60,
            end: 8 * 60,
        }
    }
}

impl ResyncWindow {
    /// Parses `always` or `HH:MM-HH:MM`.
    ///
    /// # Errors
    /// Anything else, with what was expected.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "always" {
            return Ok(Self::Always);
        }
        let bad = || format!("resync window '{s}': expected `always` or HH:MM-HH:MM (local time)");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let hm = |t: &str| -> Option<u16> {
            let (h, m) = t.split_once(':')?;
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60).then_some(h * 60 + m)
        };
        let (start, end) = (hm(a).ok_or_else(bad)?, hm(b).ok_or_else(bad)?);
        if start == end {
            return Err(format!("resync window '{s}' is empty (use `always`)"));
        }
        Ok(Self::Daily { start, end })
    }

    /// Whether minute `m` after midnight is inside the window.
    #[must_use]
    pub fn contains(&self, m: u16) -> bool {
        match *self {
            Self::Always => true,
            Self::Daily { start, end } if start < end => start <= m && m < end,
            Self::Daily { start, end } => m >= start || m < end,
        }
    }

    /// Whether the window is open now (local time).
    #[must_use]
    pub fn open_now(&self) -> bool {
        *self == Self::Always || self.contains(local_minute())
    }
}

impl std::fmt::Display for ResyncWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Always => f.write_str("always"),
            Self::Daily { start, end } => write!(
                f,
                "{:02}:{:02}-{:02}:{:02}",
                start / 60,
                start % 60,
                end / 60,
                end % 60
            ),
        }
    }
}

fn local_minute() -> u16 {
    let now: libc::time_t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| libc::time_t::try_from(d.as_secs()).unwrap_or(0));
    // SAFETY: `tm` is a plain C struct for which all-zero bytes are a valid value, and
    // localtime_r only writes into it (thread-safe variant, no shared static).
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the duration of the call.
    let ok = !unsafe { libc::localtime_r(&raw const now, &raw mut tm) }.is_null();
    if ok {
        u16::try_from(tm.tm_hour * 60 + tm.tm_min).unwrap_or(0)
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_and_wrap() {
        assert_eq!(ResyncWindow::parse("always"), Ok(ResyncWindow::Always));
        let w = ResyncWindow::parse("18:00-08:00").unwrap_or(ResyncWindow::Always);
        assert_eq!(w, ResyncWindow::default());
        assert!(w.contains(18 * 60));
        assert!(w.contains(23 * 60 + 59));
        assert!(w.contains(0));
        assert!(w.contains(7 * 60 + 59));
        assert!(!w.contains(8 * 60));
        assert!(!w.contains(12 * 60));
        assert!(!w.contains(17 * 60 + 59));
        let d = ResyncWindow::parse("01:30-02:00").unwrap_or(ResyncWindow::Always);
        assert!(d.contains(90) && !d.contains(120) && !d.contains(89));
        assert_eq!(d.to_string(), "01:30-02:00");
        for bad in [
            "",
            "8-18",
            "25:00-01:00",
            "10:60-11:00",
            "10:00-10:00",
            "always ",
        ] {
            assert!(ResyncWindow::parse(bad).is_err(), "{bad}");
        }
    }
}
