//! Daemon settings from the config file: `sitrep agent --config FILE` reads its `[agent]`
//! table, `sitrep server --config FILE` its `[server]` table. Every key is one of the
//! daemon's flags, by its long name (`max_rate = "50M"` for `--max-rate 50M`; `-` or `_`
//! alike); a flag given on the command line wins over the file, and the file over the
//! default. `sitrep generate config agent|server` prints every key, its help and its default
//! (the packaged `/etc/sitrep/*.toml` are made by it, so they cannot drift from the flags).
//!
//! How: before clap parses, the file's settings become flags inserted right after the
//! subcommand, each checked first by its flag's own value parser, so a bad value is reported
//! with the file and the key. The file is strict: an unknown key or table is an error that
//! lists the keys there are (a typo must not silently mean "default"). The agent's file also
//! holds its `[[disk]]` policy, read by the agent itself (`base::config::PolicyFile`).

use std::ffi::OsString;

use clap::{ArgAction, CommandFactory};

/// The daemons that read a config file, and the file's tables each accepts besides its own.
const DAEMONS: &[(&str, &[&str])] = &[("agent", &["disk"]), ("server", &[])];

/// Flags a config file cannot set: the file itself, and clap's own.
const NOT_SETTINGS: &[&str] = &["config", "help", "version"];

/// `argv` with the config file's settings inserted after the subcommand (unchanged unless
/// it runs a daemon with `--config`).
///
/// # Errors
/// The file cannot be read or is not TOML, names an unknown key or table, or holds a value
/// its flag refuses — the message names the file and the key.
pub(crate) fn merge(argv: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let Some(sub) = argv.get(1).and_then(|s| s.to_str()) else {
        return Ok(argv);
    };
    let Some((daemon, others)) = DAEMONS.iter().find(|(d, _)| *d == sub) else {
        return Ok(argv);
    };
    let Some(path) = config_path(&argv[2..]) else {
        return Ok(argv);
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("config file {}: {e}", path.display()))?;
    let flags = settings(daemon, others, &text, &argv[2..])
        .map_err(|e| format!("config file {}: {e}", path.display()))?;
    let mut out = argv[..2].to_vec();
    out.extend(flags);
    out.extend_from_slice(&argv[2..]);
    Ok(out)
}

/// The value of `--config` among a daemon's arguments.
fn config_path(args: &[OsString]) -> Option<std::path::PathBuf> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let a = a.to_str()?;
        if a == "--config" {
            return it.next().map(Into::into);
        }
        if let Some(v) = a.strip_prefix("--config=") {
            return Some(v.into());
        }
        if a == "--" {
            return None;
        }
    }
    None
}

/// True if the command line sets `--long` itself.
fn on_command_line(args: &[OsString], long: &str) -> bool {
    let flag = format!("--{long}");
    let with_value = format!("--{long}=");
    args.iter()
        .filter_map(|a| a.to_str())
        .any(|a| a == flag || a.starts_with(&with_value))
}

/// The flags `text`'s `[daemon]` table sets that the command line `args` does not.
fn settings(
    daemon: &str,
    others: &[&str],
    text: &str,
    args: &[OsString],
) -> Result<Vec<OsString>, String> {
    let doc: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
    for key in doc.keys() {
        if key != daemon && !others.contains(&key.as_str()) {
            let mut known = vec![format!("[{daemon}]")];
            known.extend(others.iter().map(|o| format!("[[{o}]]")));
            return Err(format!(
                "unknown table or key `{key}` (this file holds {})",
                known.join(" and ")
            ));
        }
    }
    let Some(table) = doc.get(daemon) else {
        return Ok(Vec::new());
    };
    let table = table
        .as_table()
        .ok_or_else(|| format!("`{daemon}` must be a table: [{daemon}]"))?;
    let cmd = crate::Cli::command();
    let sub = cmd
        .find_subcommand(daemon)
        .ok_or_else(|| format!("no subcommand {daemon}"))?;
    let mut out = Vec::new();
    for (key, value) in table {
        let long = key.replace('_', "-");
        let arg = settable(sub)
            .find(|a| a.get_long() == Some(long.as_str()))
            .ok_or_else(|| {
                let keys: Vec<String> = settable(sub).map(key_of).collect();
                format!(
                    "[{daemon}] has no setting `{key}` (the settings are: {})",
                    keys.join(", ")
                )
            })?;
        if on_command_line(args, &long) {
            continue;
        }
        for v in values(arg, value).map_err(|e| format!("[{daemon}] {key}: {e}"))? {
            match v {
                None => out.push(OsString::from(format!("--{long}"))),
                Some(v) => {
                    // The flag alone, parsed by its own value parser.
                    clap::Command::new("sitrep")
                        .no_binary_name(true)
                        .arg(arg.clone().required(false))
                        .try_get_matches_from([format!("--{long}={v}")])
                        .map_err(|e| format!("[{daemon}] {key} = {value}: {}", clap_message(&e)))?;
                    out.push(OsString::from(format!("--{long}={v}")));
                }
            }
        }
    }
    Ok(out)
}

/// The flags of a daemon a config file may set.
pub(crate) fn settable(sub: &clap::Command) -> impl Iterator<Item = &clap::Arg> {
    sub.get_arguments()
        .filter(|a| !a.is_hide_set() && a.get_long().is_some_and(|l| !NOT_SETTINGS.contains(&l)))
}

/// The config-file key of a flag: its long name with `_` for `-`.
pub(crate) fn key_of(a: &clap::Arg) -> String {
    a.get_long().unwrap_or_default().replace('-', "_")
}

/// A switch (`--flag`, no value).
pub(crate) fn is_switch(a: &clap::Arg) -> bool {
    matches!(a.get_action(), ArgAction::SetTrue)
}

/// The occurrences of `arg` a TOML value stands for: `None` a bare switch, `Some(v)` a value.
fn values(arg: &clap::Arg, value: &toml::Value) -> Result<Vec<Option<String>>, String> {
    let scalar = |v: &toml::Value| -> Result<String, String> {
        match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            // A flag taking true/false (`--trust-clean-reboot false`).
            toml::Value::Boolean(b) => Ok(b.to_string()),
            other => Err(format!(
                "expected a string, a number or a boolean, found {}",
                other.type_str()
            )),
        }
    };
    if is_switch(arg) {
        return match value {
            toml::Value::Boolean(true) => Ok(vec![None]),
            toml::Value::Boolean(false) => Ok(Vec::new()),
            other => Err(format!(
                "expected true or false, found {}",
                other.type_str()
            )),
        };
    }
    match value {
        toml::Value::Array(items) if matches!(arg.get_action(), ArgAction::Append) => {
            items.iter().map(|v| scalar(v).map(Some)).collect()
        }
        v => Ok(vec![Some(scalar(v)?)]),
    }
}

/// A clap error's message without its `error: ` prefix and usage lines.
fn clap_message(e: &clap::Error) -> String {
    let s = e.to_string();
    let first = s.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_string()
}

#[cfg(test)]
mod tests;
