//! One check's typed result and the report of a whole `sitrep doctor` run.
//!
//! The JSON is a contract for scripts and monitoring (`schema` 1): check ids are stable
//! kebab-case names, statuses are `ok`, `warn`, `fail`, `skip`; fields may be added, never
//! renamed.
//!
//! ```json
//! {"schema":1,"ok":false,"checks":[
//!   {"id":"kernel-btf","title":"kernel BTF","status":"fail",
//!    "detail":"/sys/kernel/btf/vmlinux: missing",
//!    "fix":"boot a kernel built with CONFIG_DEBUG_INFO_BTF=y"}]}
//! ```

use serde::Serialize;

/// The JSON schema version of [`Report`].
pub(crate) const SCHEMA: u32 = 1;

/// What a check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    /// What the host needs is there.
    Ok,
    /// Something only some features need is missing, or a limit is near; sitrep runs.
    Warn,
    /// sitrep will not work here until this is fixed.
    Fail,
    /// Not checked, and `detail` says why (not root, nothing to look at).
    Skip,
}

impl Status {
    /// The mark in front of the check's line in the human output.
    pub(crate) fn mark(self) -> &'static str {
        match self {
            Status::Ok => "[ ok ]",
            Status::Warn => "[warn]",
            Status::Fail => "[FAIL]",
            Status::Skip => "[skip]",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Check {
    /// Stable kebab-case name, e.g. `kernel-btf`.
    pub(crate) id: &'static str,
    /// What was checked, for people.
    pub(crate) title: String,
    /// The verdict.
    pub(crate) status: Status,
    /// What was found (or, for `skip`, why it was not checked).
    pub(crate) detail: String,
    /// The command or action that fixes a `warn` or `fail`.
    pub(crate) fix: Option<String>,
}

impl Check {
    /// A passed check.
    pub(crate) fn ok(
        id: &'static str,
        title: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self::new(id, title, Status::Ok, detail, None)
    }

    /// A warning with its fix.
    pub(crate) fn warn(
        id: &'static str,
        title: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self::new(id, title, Status::Warn, detail, Some(fix.into()))
    }

    /// A failure with its fix.
    pub(crate) fn fail(
        id: &'static str,
        title: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self::new(id, title, Status::Fail, detail, Some(fix.into()))
    }

    /// Not checked, and why.
    pub(crate) fn skip(id: &'static str, title: impl Into<String>, why: impl Into<String>) -> Self {
        Self::new(id, title, Status::Skip, why, None)
    }

    fn new(
        id: &'static str,
        title: impl Into<String>,
        status: Status,
        detail: impl Into<String>,
        fix: Option<String>,
    ) -> Self {
        Check {
            id,
            title: title.into(),
            status,
            detail: detail.into(),
            fix,
        }
    }
}

/// A whole run: `{"schema":1,"ok":bool,"checks":[...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Report {
    /// [`SCHEMA`].
    pub(crate) schema: u32,
    /// No check failed (warnings do not count).
    pub(crate) ok: bool,
    /// Every check, in the order run.
    pub(crate) checks: Vec<Check>,
}

impl Report {
    /// The report of `checks`.
    pub(crate) fn new(checks: Vec<Check>) -> Self {
        Report {
            schema: SCHEMA,
            ok: checks.iter().all(|c| c.status != Status::Fail),
            checks,
        }
    }

    /// The human output: one line per check, then the fixes in the same order.
    pub(crate) fn human(&self) -> String {
        let width = self.checks.iter().map(|c| c.title.len()).max().unwrap_or(0);
        let mut s = String::new();
        for c in &self.checks {
            s.push_str(&format!(
                "{} {:width$}  {}\n",
                c.status.mark(),
                c.title,
                c.detail
            ));
        }
        let fixes: Vec<&Check> = self.checks.iter().filter(|c| c.fix.is_some()).collect();
        if !fixes.is_empty() {
            s.push_str("\nTo fix:\n");
            for c in fixes {
                let fix = c.fix.as_deref().unwrap_or_default();
                s.push_str(&format!("  {} ({}): {fix}\n", c.title, c.id));
            }
        }
        let count = |st| self.checks.iter().filter(|c| c.status == st).count();
        s.push_str(&format!(
            "\n{} ok, {} warning(s), {} failed, {} skipped\n",
            count(Status::Ok),
            count(Status::Warn),
            count(Status::Fail),
            count(Status::Skip)
        ));
        s
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn json_shape_and_ok() {
        let r = Report::new(vec![
            Check::ok("root", "running as root", "uid 0"),
            Check::warn("ublk", "ublk driver", "not loaded", "modprobe ublk_drv"),
            Check::skip("agent-unit", "agent unit", "PID 1 is not systemd"),
        ]);
        assert!(r.ok, "warnings and skips do not fail");
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"schema": 1, "ok": true, "checks": [
                {"id": "root", "title": "running as root", "status": "ok",
                 "detail": "uid 0", "fix": null},
                {"id": "ublk", "title": "ublk driver", "status": "warn",
                 "detail": "not loaded", "fix": "modprobe ublk_drv"},
                {"id": "agent-unit", "title": "agent unit", "status": "skip",
                 "detail": "PID 1 is not systemd", "fix": null},
            ]})
        );
    }

    #[test]
    fn one_failure_fails_the_report() {
        let r = Report::new(vec![
            Check::ok("root", "running as root", "uid 0"),
            Check::fail("kernel-btf", "kernel BTF", "missing", "a kernel with BTF"),
        ]);
        assert!(!r.ok);
        let h = r.human();
        assert!(h.contains("[FAIL] kernel BTF"), "{h}");
        assert!(
            h.contains("kernel BTF (kernel-btf): a kernel with BTF"),
            "{h}"
        );
        assert!(h.contains("1 ok, 0 warning(s), 1 failed, 0 skipped"), "{h}");
    }
}
