//! Subcommands of the `sitrep` CLI, one module per noun.

pub(crate) mod backing;
pub(crate) mod certs;
pub(crate) mod check;
pub(crate) mod daemon;
pub(crate) mod disk;
pub(crate) mod doctor;
pub(crate) mod failover;
pub(crate) mod generate;
pub(crate) mod group;
pub(crate) mod group_moves;
pub(crate) mod group_views;
pub(crate) mod log;
pub(crate) mod points_delete;
pub(crate) mod repl;
pub(crate) mod resync;
pub(crate) mod retired;
pub(crate) mod reverse;
pub(crate) mod track;
pub(crate) mod workload;
