//! Running external tools (losetup, ip, sfdisk, dmsetup) with errors that say what failed.
//!
//! Every failure message carries the exact command line (shell-quoted, so it can be pasted
//! into a terminal), the exit status and the tool's stderr.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use anyhow::{Context, bail};

/// Runs `program args...`; returns its stdout (trimmed) or an error naming the command,
/// its exit status and its stderr.
pub fn try_run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let line = command_line(program, args);
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("could not start `{line}` (is {program} installed?)"))?;
    check_output(&line, &output)
}

/// Runs `program args...` with `input` on its stdin (e.g. an sfdisk script).
pub fn try_run_with_stdin(program: &str, args: &[&str], input: &str) -> anyhow::Result<String> {
    let line = command_line(program, args);
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{line}` (is {program} installed?)"))?;
    let mut stdin = child.stdin.take().context("child stdin")?;
    stdin
        .write_all(input.as_bytes())
        .with_context(|| format!("write stdin of `{line}`"))?;
    drop(stdin); // EOF
    let output = child
        .wait_with_output()
        .with_context(|| format!("wait for `{line}`"))?;
    check_output(&line, &output)
}

/// Like [`try_run`] but panics with the error: for test code, where a failing tool is a bug.
pub fn run(program: &str, args: &[&str]) -> String {
    try_run(program, args).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Turns a finished command's output into its stdout or a descriptive error.
pub fn check_output(line: &str, output: &Output) -> anyhow::Result<String> {
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if output.status.success() {
        return Ok(stdout);
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    bail!("`{line}` failed ({}): {}", output.status, stderr.trim())
}

/// The command line as a shell would need it typed: arguments with special characters are
/// single-quoted.
pub fn command_line(program: &str, args: &[&str]) -> String {
    std::iter::once(program)
        .chain(args.iter().copied())
        .map(shell_quote)
        .collect::<Vec<_>>()
        .join(" ")
}

fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_quotes_only_what_needs_it() {
        assert_eq!(
            command_line("losetup", &["--find", "--show", "/tmp/a b"]),
            "losetup --find --show '/tmp/a b'"
        );
        assert_eq!(
            command_line(
                "dmsetup",
                &["create", "x", "--table", "0 8 linear /dev/loop0 0"]
            ),
            "dmsetup create x --table '0 8 linear /dev/loop0 0'"
        );
        assert_eq!(command_line("echo", &["", "it's"]), r"echo '' 'it'\''s'");
    }

    #[test]
    fn success_returns_trimmed_stdout() {
        assert_eq!(try_run("sh", &["-c", "echo ' hi '"]).unwrap(), "hi");
    }

    #[test]
    fn failure_names_command_status_and_stderr() {
        let err = try_run("sh", &["-c", "echo boom >&2; exit 3"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("sh -c 'echo boom >&2; exit 3'"), "{err}");
        assert!(err.contains("exit status: 3"), "{err}");
        assert!(err.contains("boom"), "{err}");
    }

    #[test]
    fn stdin_reaches_the_program() {
        assert_eq!(
            try_run_with_stdin("tr", &["a-z", "A-Z"], "label: dos\n").unwrap(),
            "LABEL: DOS"
        );
    }

    #[test]
    fn missing_program_is_named() {
        let err = format!("{:#}", try_run("sitrep-no-such-program", &[]).unwrap_err());
        assert!(
            err.contains("could not start `sitrep-no-such-program`"),
            "{err}"
        );
    }
}
