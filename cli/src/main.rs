//! `sitrep`: the primary-side agent, the secondary-side server and the operator CLI.
//!
//! Exit codes (stable, for scripts): 0 success; 1 an error (the message names the disk or
//! file and the cause); 2 usage error (from clap); 3 something checked failed validation —
//! a log or chain (the disk needs a resync or an operator's look), a PKI directory that would
//! not work (`certs show`), or an image that is not the disk at the point time (`check`).

mod cli;
mod human;
mod out;
mod settings;
mod stop;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Site recovery for Linux block devices.
///
/// sitrep records every change to a disk into per-disk HRL change logs, ships them to a
/// secondary site, and keeps recovery points there for failover.
#[derive(Parser)]
#[command(name = "sitrep", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect, verify and create HRL change logs.
    #[command(subcommand)]
    Log(cli::log::LogCommand),
    /// Track a block device's changes with eBPF, in the foreground (needs root).
    ///
    /// Every write, discard, secure erase, write-zeroes and flush queued to DEVICE is logged
    /// into chained HRL logs in --log-dir. Ctrl-C (or SIGTERM) seals the log cleanly; a later
    /// start on the same directory continues the chain without a resync if the device was
    /// not written meanwhile, and otherwise starts with a whole-disk gap record.
    Track(cli::track::TrackArgs),
    /// Tracked ublk virtual disks (/dev/ublkbN): every change logged before it is done.
    #[command(subcommand)]
    Disk(cli::disk::DiskCommand),
    /// Certificates for mutual TLS between sites: a private CA, host certificates.
    #[command(subcommand)]
    Certs(cli::certs::CertsCommand),
    /// Secondary site: receive replicas from agents over mutual TLS (foreground daemon).
    ///
    /// Never connects out. Applies each cycle crash-safely (staged durably, then applied; a
    /// restart finishes a half-applied cycle). Stop with SIGTERM or Ctrl-C.
    Server(cli::daemon::ServerArgs),
    /// Primary site: track and replicate protected disks (foreground daemon).
    ///
    /// Only connects out, to the servers named by `sitrep protect --to`. Stop with SIGTERM or
    /// Ctrl-C: logs are sealed so a restart continues without a resync.
    Agent(cli::daemon::AgentArgs),
    /// Start protecting a block device: tracking, initial copy, then delta cycles (a job).
    Protect(cli::repl::ProtectArgs),
    /// Stop protecting a disk (the replica stays on the server).
    Unprotect(cli::repl::UnprotectArgs),
    /// Consistency groups (agent): disks cut at one instant, with group points on the server.
    ///
    /// An application over several disks (a database's data and log, an LVM volume group, an
    /// md array) is recoverable only at one instant for all of them. The disks of a group are
    /// cut together; when every member's cycle at a cut is crash-consistent the server keeps a
    /// group point (`sitrep points --group G`), which `points export --group` and `failover
    /// --group` use for all the members at once.
    Group(cli::group::GroupArgs),
    /// Replication status of every disk: state, health, lag, backlog, last applied cycle.
    Status(cli::repl::ShowArgs),
    /// Jobs (enable protection, resync) with their step and progress.
    Jobs(cli::repl::ShowArgs),
    /// Wait until every change made to a disk before this command is applied on the replica.
    Wait(cli::repl::WaitArgs),
    /// Checksum resync: make the replica equal to the source by sending only the blocks
    /// that differ.
    ///
    /// Both sides digest the disk (1 MiB, then 4 KiB blocks inside those that differ); only
    /// differing blocks cross the wire, zero blocks as zero ranges. The application keeps
    /// running: changes made meanwhile ship as cycles afterwards, and the replica keeps its
    /// recovery points throughout. Plans a whole-disk resync unless one is already required
    /// (tracking gaps, verify mismatches, a broken chain plan their own); follows it with a
    /// progress bar until it completes.
    Resync(cli::resync::ResyncArgs),
    /// Compare the replica with the source by digests only (no data sent).
    ///
    /// Ranges that differ and are not explained by changes made since the last applied
    /// cycle are listed and planned for a resync. Exits 0 if the replica matches, 3 if
    /// ranges differ.
    Verify(cli::resync::VerifyArgs),
    /// Write self-describing blocks to one or more devices and record every write in a history.
    ///
    /// First every block once, then random blocks, for --duration or until SIGINT/SIGTERM
    /// (in-flight writes finish, the history is closed cleanly). With several devices (an
    /// application's data and log disks) every write also records the write on another device
    /// it depends on. `sitrep check` verifies a replica or recovery point of the devices
    /// against the history. Overwrites the devices.
    Workload(cli::workload::WorkloadArgs),
    /// Check that an image is a crash-consistent state of a workload's device at a time.
    ///
    /// Every block must hold a version issued before --point-time and no older than the last
    /// write to it completed by then. For a multi-device workload, give one --image per device
    /// (in the workload's device order): they must also agree with each other — no image may
    /// hold a write whose dependency on another device is missing from that device's image —
    /// and --point-time is optional. Exits 0 if consistent, 3 if not (each violation is
    /// listed with its block and versions), 1 if the check could not run.
    Check(cli::check::CheckArgs),
    /// Recovery points of a replicated disk (server): list them, or export one as an image.
    Points(cli::repl::PointsArgs),
    /// Fail over to a recovery point (server): a test copy, or the disk itself.
    ///
    /// With --test: an isolated, writable copy of the point attached as a loop device while
    /// replication goes on (one per disk; --test --cleanup removes it). Without: an
    /// unplanned failover — replication of the disk stops, the point becomes the active
    /// disk as a loop device; another point can be chosen until `sitrep commit`. Prints the
    /// device, the image and the point used (id, kind, source-side cut time).
    Failover(cli::failover::FailoverArgs),
    /// Finalize an unplanned failover (server): deletes the disk's recovery points.
    Commit(cli::failover::CommitArgs),
    /// Replicate a failed-over disk back to the other site (on the site it is active on).
    ///
    /// The activated disk becomes a protected disk replicating into the other site's own
    /// device (that site's server runs with --adopt-from its agent's state). Nothing is
    /// copied whole: both disks are compared by digests and only differing blocks cross.
    /// If the other site also wrote the disk since the failover, that is a split brain:
    /// reported, nothing overwritten, until the other site's operator runs
    /// `sitrep reverse-accept NAME --discard-local-changes` there.
    Reverse(cli::reverse::ReverseArgs),
    /// Allow the next reverse replication into this site's own disk (on the site whose disk
    /// would be overwritten, against its server).
    ///
    /// Only this site's operator decides: --from CN lets that client adopt the disk (when
    /// it is not the server this site's agent replicated to, or this store's entry is owned
    /// by another client); --discard-local-changes resolves a split brain in favour of the
    /// other site's disk. Shows what would be discarded. Used up by the adoption it allows.
    ReverseAccept(cli::reverse::AcceptArgs),
    /// Retired copies of replicas (server): kept whole, with their recovery points, when a
    /// full re-copy or a reverse adoption replaced a disk's entry; list or purge them.
    ///
    /// A peer never deletes them. `sitrep points ID` lists a copy's points, `sitrep points
    /// export ID POINT --out F` exports one.
    Retired(cli::retired::RetiredArgs),
    /// Move a reverse-replicated disk back to the other site: a planned failover from here
    /// (quiesce, ship the rest, compare, activate there). Then `sitrep reverse` on that
    /// site restores the original direction.
    Failback(cli::reverse::FailbackArgs),
    /// Make a recovery point now (agent): `point create NAME --app-consistent`.
    #[command(subcommand)]
    Point(cli::repl::PointCommand),
    /// Check what this host needs (kernel BPF and BTF, devices, tools, clock, certificates,
    /// space, daemons) and print what to fix. Read-only.
    ///
    /// One line per check (ok, warn, fail, skip), then the fix for each problem. Checks that
    /// need root are skipped without it. Exits 0 if no check failed (warnings allowed), 3 if
    /// one did, 1 if the checks could not run.
    Doctor(cli::doctor::DoctorArgs),
    /// Man pages and shell completions from these definitions (for packaging).
    #[command(subcommand, hide = true)]
    Generate(cli::generate::GenerateCommand),
}

/// What a command reports back to `main`.
pub(crate) enum Outcome {
    /// Everything checked out.
    Ok,
    /// The command ran, and found a log or chain that failed validation.
    Invalid,
}

fn main() -> ExitCode {
    let argv = match settings::merge(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sitrep: error: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = match Cli::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) => {
            // Help, version or a usage error: printed like `Cli::parse` would, but a failing
            // stdout is reported (see `out`) instead of ignored.
            if let Err(w) = e.print() {
                out::fail(&w);
            }
            out::flush();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    let result = match cli.command {
        Command::Log(cmd) => cli::log::run(cmd),
        Command::Track(a) => cli::track::run(&a),
        Command::Disk(cmd) => cli::disk::run(cmd),
        Command::Certs(cmd) => cli::certs::run(cmd),
        Command::Server(a) => cli::daemon::server(&a),
        Command::Agent(a) => cli::daemon::agent(&a),
        Command::Protect(a) => cli::repl::protect(&a),
        Command::Unprotect(a) => cli::repl::unprotect(&a),
        Command::Status(a) => cli::repl::status(&a),
        Command::Jobs(a) => cli::repl::jobs(&a),
        Command::Wait(a) => cli::repl::wait(&a),
        Command::Resync(a) => cli::resync::resync(&a),
        Command::Verify(a) => cli::resync::verify(&a),
        Command::Failover(a) => cli::failover::failover(&a),
        Command::Commit(a) => cli::failover::commit(&a),
        Command::Reverse(a) => match a.whole_group() {
            Some(g) => cli::group_moves::reverse(&a, g),
            None => cli::reverse::reverse(&a),
        },
        Command::ReverseAccept(a) => cli::reverse::accept(&a),
        Command::Retired(a) => cli::retired::run(&a),
        Command::Failback(a) => match a.whole_group() {
            Some(g) => cli::group_moves::failback(&a, g),
            None => cli::reverse::failback(&a),
        },
        Command::Workload(a) => cli::workload::run(&a),
        Command::Check(a) => cli::check::run(&a),
        Command::Points(a) => cli::repl::points(&a),
        Command::Group(a) => cli::group::group(&a),
        Command::Point(c) => cli::repl::point(&c),
        Command::Doctor(a) => cli::doctor::run(&a),
        Command::Generate(c) => cli::generate::run(&c),
    };
    out::flush();
    match result {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Invalid) => ExitCode::from(3),
        Err(e) => {
            eprintln!("sitrep: error: {}", out::printable(&error_chain(&e)));
            ExitCode::from(1)
        }
    }
}

/// `e` and its causes, `: `-separated, each cause once: an error that already quotes its
/// source (`open F: No such file (os error 2)`) is not followed by the same text again.
fn error_chain(e: &anyhow::Error) -> String {
    let mut s = String::new();
    for cause in e.chain() {
        let t = cause.to_string();
        if s.contains(&t) {
            continue;
        }
        if !s.is_empty() {
            s.push_str(": ");
        }
        s.push_str(&t);
    }
    s
}
