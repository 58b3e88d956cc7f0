//! Standard output that never panics: `println!` panics when stdout fails (`sitrep status |
//! head -0` closes the pipe, `> /dev/full` has no space), and a CLI must not crash with exit
//! 101 and a backtrace for that. [`outln!`](crate::outln) and [`out!`](macro@crate::out) write
//! through [`write()`]: a closed pipe (the reader has what it wanted) ends the program quietly
//! with status 0; any other write error ends it with a message and status 1 — the command
//! had nothing left to do but print, so ending at once loses nothing.

use std::io::Write;

/// Writes `args` to stdout; see the module doc for what a failure does. Control characters
/// other than newline and tab are escaped (see [`printable`]).
pub(crate) fn write(args: std::fmt::Arguments<'_>) {
    let text = std::fmt::format(args);
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(printable(&text).as_bytes()) {
        fail(&e);
    }
}

/// `text` with every control character but `\n` and `\t` escaped (`\u{1b}`): what the CLI
/// prints includes text a peer chose — a recovery point's label, a refusal's message — and a
/// peer must not be able to move the operator's cursor, recolor the terminal or forge lines.
/// (`--json` output is unaffected: JSON strings never hold raw control characters.)
pub(crate) fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !text.chars().any(bad) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut s = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if bad(c) {
            s.extend(c.escape_unicode());
        } else {
            s.push(c);
        }
    }
    std::borrow::Cow::Owned(s)
}

/// Flushes stdout before the program exits (the same rules as [`write()`]).
pub(crate) fn flush() {
    if let Err(e) = std::io::stdout().lock().flush() {
        fail(&e);
    }
}

/// Ends the program for a failed write to stdout: quietly (0) for a closed pipe, else 1.
pub(crate) fn fail(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    // Best effort: stderr may be closed as well.
    let _ = writeln!(
        std::io::stderr(),
        "sitrep: error: writing to standard output: {e}"
    );
    std::process::exit(1);
}

/// `println!` for the CLI's output (see [`mod@crate::out`]).
#[macro_export]
macro_rules! outln {
    () => {
        $crate::out::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::out::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` for the CLI's output (see [`mod@crate::out`]).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::out::write(format_args!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_characters_but_newline_and_tab_are_escaped() {
        assert_eq!(printable("plain\ttext\n"), "plain\ttext\n");
        assert_eq!(
            printable("\u{1b}[31mred\r\u{7}"),
            "\\u{1b}[31mred\\u{d}\\u{7}"
        );
        assert_eq!(printable("\u{9b}2J"), "\\u{9b}2J", "C1 CSI");
    }
}
