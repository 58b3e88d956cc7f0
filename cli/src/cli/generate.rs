//! `sitrep generate`: man pages and shell completions made from the clap definitions, for
//! packaging (`scripts/package.sh`). Hidden from `--help`: operators get the results in
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
    }
    Ok(Outcome::Ok)
}
