//! `sitrep generate`: man pages, shell completions and the daemons' config files made from
//! the clap definitions, for packaging (`scripts/package.sh`). Hidden from `--help`: operators get the results in
//! /usr/share, not the generator.
//!
//! Generated at package time from the binary being packaged rather than written by hand or
//! by a build script: the pages cannot drift from the flags, and a plain `cargo build` pays
//! nothing for them.

use std::path::PathBuf;

use anyhow::Context;
use clap::{CommandFactory, Subcommand};
use clap_complete::Shell;

use crate::Outcome;

/// What `sitrep generate` makes.
#[derive(Subcommand)]
pub(crate) enum GenerateCommand {
    /// Man pages into DIR: sitrep.1 and one page per subcommand (sitrep-protect.1, ...).
    Man {
        /// Directory to write the pages to (created if missing).
        dir: PathBuf,
    },
    /// The completion script for SHELL into DIR (bash: sitrep.bash, zsh: _sitrep, fish:
    /// sitrep.fish).
    Completions {
        /// Shell to complete for.
        shell: Shell,
        /// Directory to write the script to (created if missing).
        dir: PathBuf,
    },
    /// A daemon's config file to stdout: every setting (a flag by its long name) with its
    /// help and default, commented out; the state, store and PKI paths set to the package's
    /// (/var/lib/sitrep, /etc/sitrep/pki).
    Config {
        /// Which daemon's file.
        #[arg(value_parser = ["agent", "server"])]
        daemon: String,
    },
}

pub(crate) fn run(cmd: &GenerateCommand) -> anyhow::Result<Outcome> {
    match cmd {
        GenerateCommand::Man { dir } => {
            std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
            clap_mangen::generate_to(crate::Cli::command(), dir)
                .with_context(|| format!("writing man pages to {}", dir.display()))?;
        }
        GenerateCommand::Completions { shell, dir } => {
            std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
            let path =
                clap_complete::generate_to(*shell, &mut crate::Cli::command(), "sitrep", dir)
                    .with_context(|| format!("writing {shell} completions to {}", dir.display()))?;
            println!("{}", path.display());
        }
        GenerateCommand::Config { daemon } => {
            crate::out!("{}", config_file(daemon)?);
        }
    }
    Ok(Outcome::Ok)
}

/// Settings the packaged files set (uncommented): where the package keeps state and keys.
const PACKAGED: &[(&str, &str, &str)] = &[
    ("agent", "state", "/var/lib/sitrep/agent"),
    ("agent", "pki", "/etc/sitrep/pki"),
    ("server", "store", "/var/lib/sitrep/server"),
    ("server", "pki", "/etc/sitrep/pki"),
];

/// The documentation of the agent's `[[disk]]` tables.
const DISKS: &str = include_str!("../../../packaging/etc/disks.toml");

/// The config file of `daemon` (`agent` or `server`): see [`GenerateCommand::Config`].
///
/// # Errors
/// Not a daemon.
pub(crate) fn config_file(daemon: &str) -> anyhow::Result<String> {
    let cmd = crate::Cli::command();
    let sub = cmd
        .find_subcommand(daemon)
        .ok_or_else(|| anyhow::anyhow!("no daemon {daemon}"))?;
    let mut out = format!(
        "# sitrep {daemon} settings (`sitrep {daemon} --config FILE`; the package's unit reads\n\
         # /etc/sitrep/{daemon}.toml). Every key is a flag of `sitrep {daemon}` by its long name\n\
         # (`man sitrep-{daemon}`); a flag on the command line wins over this file. Strict: an\n\
         # unknown key is an error, so a typo never silently means \"default\". Read at start:\n\
         # restart the service after a change. Made by `sitrep generate config {daemon}`.\n\n\
         [{daemon}]\n"
    );
    for a in crate::settings::settable(sub) {
        let key = crate::settings::key_of(a);
        let help = a
            .get_long_help()
            .or_else(|| a.get_help())
            .map(|h| {
                let h = h.to_string();
                // clap drops a one-line help's final period.
                if h.ends_with('.') { h } else { format!("{h}.") }
            })
            .unwrap_or_default();
        out.push('\n');
        for line in wrap(&help, 88) {
            out.push_str(&format!("# {line}\n"));
        }
        let packaged = PACKAGED
            .iter()
            .find(|(d, k, _)| *d == daemon && *k == key)
            .map(|(_, _, v)| *v);
        let default: Vec<String> = a
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        match (packaged, default.first()) {
            (Some(v), _) => out.push_str(&format!("{key} = {}\n", toml_value(v))),
            _ if crate::settings::is_switch(a) => out.push_str(&format!("#{key} = false\n")),
            (None, Some(d)) => out.push_str(&format!("#{key} = {}\n", toml_value(d))),
            (None, None) => out.push_str(&format!("# Not set by default.\n#{key} = \"\"\n")),
        }
    }
    if daemon == "agent" {
        out.push('\n');
        out.push_str(DISKS);
    }
    Ok(out)
}

/// `v` as a TOML value: a bare number if it is one, else a quoted string.
fn toml_value(v: &str) -> String {
    if v.parse::<i64>().is_ok()
        || (v.parse::<f64>().is_ok() && v.contains('.'))
        || v == "true"
        || v == "false"
    {
        v.to_string()
    } else {
        toml::Value::String(v.to_string()).to_string()
    }
}

/// `text`'s paragraphs wrapped at `width` columns.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for para in text.split("\n\n") {
        if !lines.is_empty() {
            lines.push(String::new());
        }
        let mut line = String::new();
        for word in para.split_whitespace() {
            if !line.is_empty() && line.len() + 1 + word.len() > width {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        if !line.is_empty() {
            lines.push(line);
        }
    }
    lines
}
