//! `sitrep group` (the agent's consistency groups: create, add, remove, delete, list) and
//! the secondary's group views: `points --group`, `points export --group`, `failover
//! --group`. docs/architecture.md, *Consistency groups*.

use std::time::Duration;

use base::control::{GroupAction, Request};
use clap::{Args, Subcommand};

use super::repl::SocketArg;
use crate::Outcome;

/// Arguments of `sitrep group`.
#[derive(Args)]
pub(crate) struct GroupArgs {
    #[command(subcommand)]
    cmd: GroupCommand,
}

/// `sitrep group …` (on the agent: the disks cut together).
#[derive(Subcommand)]
pub(crate) enum GroupCommand {
    /// Create an empty consistency group (`sitrep protect --group` creates one too).
    Create(GroupCreateArgs),
    /// Change a group's settings on this agent.
    Set(GroupSetArgs),
    /// Put protected disks in a group: from their next cut on, all its disks are cut at one
    /// instant and the server keeps group points over all of them.
    Add(GroupDisksArgs),
    /// Take disks out of a group (they go on replicating with points of their own).
    Remove(GroupDisksArgs),
    /// Delete an empty group.
    Delete(GroupNameArgs),
    /// List the groups and their disks.
    List(GroupListArgs),
    /// On the SERVER (its socket): let another agent's disks join a group, so that one group
    /// spans hosts. The server then coordinates the group's points (`--group-points-every`).
    Allow(GroupAllowArgs),
}

/// `sitrep group allow`.
#[derive(Args)]
pub(crate) struct GroupAllowArgs {
    /// The group.
    group: String,
    /// The client (the certificate name of the agent whose disks may join).
    client: String,
    #[command(flatten)]
    socket: SocketArg,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

/// `sitrep group create`.
#[derive(Args)]
pub(crate) struct GroupCreateArgs {
    #[command(flatten)]
    name: GroupNameArgs,
    /// Freeze the members' mounted filesystems (fsfreeze) during each round of a group that
    /// spans agents: writes wait for the round (tens of ms; at most 2 s), and the round gets
    /// a point even under steady writes. Without it, a round has a point only if no member
    /// was written while it ran.
    #[arg(long)]
    freeze: bool,
}

/// `sitrep group set`.
#[derive(Args)]
pub(crate) struct GroupSetArgs {
    #[command(flatten)]
    name: GroupNameArgs,
    /// Freeze the members' mounted filesystems during cross-host rounds: on or off (see
    /// `sitrep group create --help`).
    #[arg(
        long,
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new(),
        value_name = "on|off",
        hide_possible_values = true
    )]
    freeze: bool,
}

/// A group's name.
#[derive(Args)]
pub(crate) struct GroupNameArgs {
    /// The group.
    group: String,
    #[command(flatten)]
    socket: SocketArg,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

/// A group and disks.
#[derive(Args)]
pub(crate) struct GroupDisksArgs {
    /// The group.
    group: String,
    /// The disks (names as in `sitrep status`).
    #[arg(required = true)]
    disks: Vec<String>,
    #[command(flatten)]
    socket: SocketArg,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

/// `sitrep group list`.
#[derive(Args)]
pub(crate) struct GroupListArgs {
    #[command(flatten)]
    socket: SocketArg,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

pub(crate) fn group(a: &GroupArgs) -> anyhow::Result<Outcome> {
    if let GroupCommand::Allow(x) = &a.cmd {
        let r: serde_json::Value = base::control::ask(
            &x.socket.path(),
            &Request::GroupAllow {
                group: x.group.clone(),
                client: x.client.clone(),
            },
            Duration::from_secs(30),
        )?;
        if x.json {
            crate::outln!("{}", serde_json::to_string_pretty(&r)?);
        } else {
            crate::outln!(
                "client {} may now have disks in group {}",
                x.client,
                x.group
            );
        }
        return Ok(Outcome::Ok);
    }
    let mut freeze = None;
    let (action, group, disks, socket, json) = match &a.cmd {
        GroupCommand::Create(c) => {
            freeze = Some(c.freeze);
            let n = &c.name;
            (
                GroupAction::Create,
                Some(&n.group),
                vec![],
                &n.socket,
                n.json,
            )
        }
        GroupCommand::Set(c) => {
            freeze = Some(c.freeze);
            let n = &c.name;
            (GroupAction::Set, Some(&n.group), vec![], &n.socket, n.json)
        }
        GroupCommand::Delete(n) => (
            GroupAction::Delete,
            Some(&n.group),
            vec![],
            &n.socket,
            n.json,
        ),
        GroupCommand::Add(d) => (
            GroupAction::Add,
            Some(&d.group),
            d.disks.clone(),
            &d.socket,
            d.json,
        ),
        GroupCommand::Remove(d) => (
            GroupAction::Remove,
            Some(&d.group),
            d.disks.clone(),
            &d.socket,
            d.json,
        ),
        GroupCommand::List(l) => (GroupAction::List, None, vec![], &l.socket, l.json),
        GroupCommand::Allow(_) => return Ok(Outcome::Ok),
    };
    let resp: serde_json::Value = base::control::ask(
        &socket.path(),
        &Request::Group {
            action,
            group: group.cloned(),
            disks,
            freeze,
        },
        Duration::from_secs(30),
    )?;
    if json {
        crate::outln!("{}", serde_json::to_string_pretty(&resp)?);
        return Ok(Outcome::Ok);
    }
    print_groups(&resp);
    Ok(Outcome::Ok)
}

/// `sitrep group list` for people.
fn print_groups(resp: &serde_json::Value) {
    let groups = resp["groups"].as_array().cloned().unwrap_or_default();
    if groups.is_empty() {
        crate::outln!("no consistency groups");
    }
    for g in groups {
        let members: Vec<&str> = g["members"]
            .as_array()
            .map(|m| m.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        crate::outln!(
            "{}: {}{}",
            g["name"].as_str().unwrap_or("?"),
            if members.is_empty() {
                "(no disks)".to_string()
            } else {
                members.join(", ")
            },
            if g["freeze"] == true {
                "  (filesystems frozen during cross-host rounds)"
            } else {
                ""
            }
        );
    }
}
