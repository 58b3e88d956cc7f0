//! The `--json` schemas of `sitrep status` and `sitrep jobs` (schema version 1).
//!
//! Stable for scripts: fields are only ever added; a removal or a change of meaning bumps
//! `schema`. Times are nanoseconds since the Unix epoch (`*_unix_ns`); durations are seconds.

use serde::{Deserialize, Serialize};

/// Version of these schemas.
pub const SCHEMA: u32 = 1;

/// `sitrep status --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// [`SCHEMA`].
    pub schema: u32,
    /// `"agent"` (primary) or `"server"` (secondary).
    pub role: String,
    /// This host's certificate name.
    pub host: String,
    /// One entry per protected (agent) or replicated (server) disk.
    pub disks: Vec<DiskStatus>,
    /// The daemon's listeners (`tls`, `control`): connections open, refused over a cap,
    /// timed out, accept errors (see `base::listen`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<ListenerStatus>,
    /// The server's store: bytes, quota, points retired per disk (None on the agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<crate::store_space::StoreSpace>,
    /// The consistency groups with points on this server (empty on the agent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupStatus>,
}

/// A consistency group on the server (`groups` in [`StatusReport`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    /// The group.
    pub name: String,
    /// Its member disks (those of its newest group point).
    pub members: Vec<String>,
    /// Group points kept.
    pub points: u64,
    /// The newest group point: its id and cut time (ns since the epoch).
    pub newest_point: Option<(u64, u64)>,
    /// The member whose newest point is the oldest, when the members' newest points differ:
    /// the one holding the group's next point back.
    pub held_back_by: Option<String>,
    /// A group on several agents: how its last round ended (`group point N`, or which member
    /// held it back and why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_round: Option<String>,
}

/// Counters of one listening socket since the daemon started (`listeners` in
/// [`StatusReport`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerStatus {
    /// `tls` (the server's port for agents) or `control` (the local socket).
    pub name: String,
    /// Connections open now.
    pub open: u64,
    /// Of those, connections still in the TLS handshake.
    pub handshaking: u64,
    /// Connections accepted.
    pub accepted: u64,
    /// Connections closed at once because a cap was reached.
    pub refused: u64,
    /// Idle connections closed to make room for a new one (control socket).
    pub evicted: u64,
    /// Connections closed because a phase (handshake, Hello, Attach, request line) took
    /// too long.
    pub timed_out: u64,
    /// Failed `accept` calls (e.g. out of descriptors; retried with a pause).
    pub accept_errors: u64,
    /// TLS handshakes that failed: a certificate refused either way, or no TLS at all.
    #[serde(default)]
    pub handshake_failed: u64,
}

/// Replication state of a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplState {
    /// The initial copy is running (or waiting to resume).
    InitialReplication,
    /// Delta cycles flow; the replica is at a consistent state.
    Protected,
    /// Tracking lost something (or verify found a difference): a checksum resync is
    /// required and waits for its window (`resync_reason`, `resync`).
    ResyncRequired,
    /// A non-recoverable error: operator action needed (see `error`).
    Critical,
    /// Replicated here (server view) and up to date with what was received.
    Replicating,
    /// A checksum resync is running (progress in `resync`).
    Resynchronizing,
    /// Failed over on this site (server view): the replica is the active disk.
    FailedOver,
    /// Failed over to the peer (agent view, after a planned failover): the disk is active on
    /// the secondary; this site no longer replicates it.
    FailedOverToPeer,
}

/// Health, as Hyper-V Replica shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    /// Everything flows.
    Normal,
    /// Retrying a recoverable error, or a resync is running.
    Warning,
    /// Stopped on a non-recoverable error.
    Critical,
}

/// A cycle on the replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CycleStatus {
    /// Log sequence number.
    pub seq: u64,
    /// When the source sealed it (source clock).
    pub cut_time_unix_ns: u64,
}

/// Progress of an initial copy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CopyStatus {
    /// Whether it completed.
    pub done: bool,
    /// Bytes of the disk covered so far (acknowledged durable by the server).
    pub bytes_done: u64,
    /// Disk size.
    pub size: u64,
    /// Recent rate.
    pub rate_bytes_per_sec: f64,
    /// Estimated seconds to completion (None when unknown).
    pub eta_seconds: Option<f64>,
}

/// One disk in `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskStatus {
    /// The protected disk's name.
    pub name: String,
    /// The source device (agent) — None on the server.
    pub device: Option<String>,
    /// The other side: `HOST:PORT` of the server (agent) or the owning client's name (server).
    pub peer: String,
    /// Replication state.
    pub state: ReplState,
    /// Health.
    pub health: Health,
    /// Replication lag (RPO): 0 when every change made on the source is applied on the
    /// replica, else seconds since the cut of the newest applied cycle (or since protection
    /// started, before the first one).
    pub lag_seconds: f64,
    /// The lag beyond which the disk's health is Warning (agent, while protected): twice the
    /// cycle interval plus a minute (60 s for continuous). None on the server.
    #[serde(default)]
    pub rpo_target_seconds: Option<f64>,
    /// Bytes of changed ranges recorded but not yet applied on the replica (an upper bound).
    pub backlog_bytes: u64,
    /// Data bytes shipped (before compression; zero ranges not counted).
    pub bytes_shipped: u64,
    /// Bytes on the wire (frames, after compression).
    pub wire_bytes: u64,
    /// Bytes described as zero ranges (never sent as bytes).
    pub zero_bytes: u64,
    /// Cycles applied.
    pub cycles_applied: u64,
    /// The newest applied cycle.
    pub last_applied: Option<CycleStatus>,
    /// Initial copy progress (None before it starts).
    pub copy: Option<CopyStatus>,
    /// Connected to the peer right now.
    pub connected: bool,
    /// The last error (kept while retrying), with the disk and the cause.
    pub error: Option<String>,
    /// Why a resync is required, when it is.
    pub resync_reason: Option<String>,
    /// Recovery points retained (server) — 0 on the agent.
    #[serde(default)]
    pub points: u64,
    /// Bytes of undo data kept for them (server).
    #[serde(default)]
    pub points_bytes: u64,
    /// The oldest retained recovery point (server).
    #[serde(default)]
    pub oldest_point: Option<PointRef>,
    /// The newest retained recovery point (server).
    #[serde(default)]
    pub newest_point: Option<PointRef>,
    /// The recovery-point policy: what the agent asks for (agent), what the server
    /// enforces for the disk, its floor applied (server).
    #[serde(default)]
    pub point_policy: Option<crate::points::PointPolicy>,
    /// Cycles the source has judged (agent).
    #[serde(default)]
    pub cycles_judged: u64,
    /// Of those, the ones proved crash-consistent, i.e. offered as recovery points (agent).
    #[serde(default)]
    pub cycles_consistent: u64,
    /// The pending or running checksum resync (agent side).
    #[serde(default)]
    pub resync: Option<ResyncStatus>,
    /// The last completed resync (agent side, since the agent started).
    #[serde(default)]
    pub last_resync: Option<ResyncStatus>,
    /// Resyncs completed since the agent started.
    #[serde(default)]
    pub resyncs_completed: u64,
    /// When the next attempt is due (agent), while waiting to retry a recoverable error
    /// (`error`); None otherwise. The delay follows the retry schedule (`backoff.rs`).
    #[serde(default)]
    pub next_retry_unix_ns: Option<u64>,
    /// Attempts retried after recoverable errors since the agent started (agent).
    #[serde(default)]
    pub retries: u64,
    /// What the operator must do to clear a `critical` state, derived from the error's kind
    /// (e.g. check the certificates, resync, reverse replication); None otherwise.
    #[serde(default)]
    pub action: Option<String>,
    /// The agent's crash-consistent points of the disk (None on the server).
    #[serde(default)]
    pub crash_points: Option<CrashPointStatus>,
    /// How long the disk's filesystem was frozen for the last cross-host group round (ms;
    /// agent, groups with `freeze` on): what the round cost the application's writes.
    #[serde(default)]
    pub round_freeze_ms: Option<f64>,
    /// Where the disk's changes come from (agent).
    #[serde(default)]
    pub source: Option<SourceStatus>,
}

/// Where a disk's changes come from (agent, `status.disks[].source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// The eBPF tracker watching the block layer: cycles are read from the device.
    Ebpf,
    /// A sitrep ublk target's own logs, journal mode: the data comes from the logs and every
    /// log is a crash-consistent point.
    UblkJournal,
    /// A sitrep ublk target's own logs, extents mode: ranges from the logs, data read from
    /// the device.
    UblkExtents,
}

/// A disk's change source as `status` shows it (agent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceStatus {
    /// What observes the disk's changes.
    pub kind: SourceKind,
    /// Bytes of change logs the source keeps now (ublk targets).
    #[serde(default)]
    pub log_bytes: Option<u64>,
    /// The log space cap (ublk targets): past it, changes are logged as ranges only and
    /// those ranges are read from the device again (no longer exact).
    #[serde(default)]
    pub log_cap: Option<u64>,
    /// Changes logged as ranges only because the cap was reached, since the target started.
    #[serde(default)]
    pub overflows: Option<u64>,
}

/// When the agent last offered a crash-consistent point of a disk
/// (`status.disks[].crash_points`). The agent makes one in every `every_seconds` slot when
/// it can (quick cuts); `overdue` says when it could not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrashPointStatus {
    /// Cut time of the newest cycle judged crash-consistent since the agent started.
    pub last_cut_unix_ns: Option<u64>,
    /// Seconds since that cut (since the agent started, before the first).
    pub age_seconds: f64,
    /// The slot width asked for (`crash_points_every`), seconds.
    pub every_seconds: u64,
    /// Set (and health is Warning) while changes wait for a point longer than a slot and
    /// its grace: the operator's message, with the options.
    pub overdue: Option<String>,
}

/// A recovery point named in `status`: its id and source-side cut time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointRef {
    /// The point's id.
    pub id: u64,
    /// Its cut time (Unix ns, the source's clock).
    pub cut_time_unix_ns: u64,
}

impl From<&crate::points::Point> for PointRef {
    fn from(p: &crate::points::Point) -> Self {
        Self {
            id: p.id,
            cut_time_unix_ns: p.cut_time_ns,
        }
    }
}

/// A checksum resync's progress (`status.disks[].resync`, and the result of
/// `sitrep resync --json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResyncStatus {
    /// `waiting-for-window`, `compare-and-repair`, `confirm`, `done`.
    pub phase: ResyncPhase,
    /// Why it was needed.
    pub reason: String,
    /// Bytes of the disk it covers (the whole disk, or the suspect regions).
    pub scope_bytes: u64,
    /// Bytes of the scope compared so far (this pass).
    pub bytes_done: u64,
    /// Bytes compared over all passes: the repair pass and the confirmation each compare
    /// the scope, so a resync without interruptions compares 2 × `scope_bytes`.
    pub compared_bytes: u64,
    /// Bytes found different (and repaired) so far.
    pub differing_bytes: u64,
    /// Repair data bytes sent (zero blocks travel as zero ranges and are not counted).
    pub data_bytes_sent: u64,
    /// Bytes the agent wrote to the server during the resync, over all its sessions
    /// (repairs, digest requests, control messages; the server's digests coming back are
    /// not counted).
    pub wire_bytes: u64,
    /// Compare rate of the current pass (repair or confirmation), not of the whole resync.
    pub rate_bytes_per_sec: f64,
    /// Estimated seconds until this pass ends.
    pub eta_seconds: Option<f64>,
    /// Seconds since the resync started running (0 while waiting).
    pub seconds: f64,
    /// The window automatic resyncs run in (`always` or `HH:MM-HH:MM` local time).
    pub window: String,
}

/// Where a checksum resync stands (`phase` of [`ResyncStatus`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResyncPhase {
    /// Required, waiting for its window (or `sitrep resync --now`).
    WaitingForWindow,
    /// Comparing the scope and repairing what differs.
    CompareAndRepair,
    /// Comparing again; what differs must be explained by changes recorded since the cut.
    Confirm,
    /// Complete.
    Done,
}

impl ResyncPhase {
    /// The string of the `--json` schema.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WaitingForWindow => "waiting-for-window",
            Self::CompareAndRepair => "compare-and-repair",
            Self::Confirm => "confirm",
            Self::Done => "done",
        }
    }
}

impl std::fmt::Display for ResyncPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// The result of `sitrep verify --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// The disk.
    pub disk: String,
    /// Bytes compared.
    pub compared_bytes: u64,
    /// Ranges `(offset, len)` that differ and are not explained by changes made since the
    /// last applied cycle: they are planned for a resync.
    pub mismatches: Vec<(u64, u64)>,
    /// Differing bytes explained by changes not yet shipped (in flight, not errors).
    pub in_flight_bytes: u64,
    /// Seconds the comparison took.
    pub seconds: f64,
}

/// `sitrep jobs --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobsReport {
    /// [`SCHEMA`].
    pub schema: u32,
    /// Newest first.
    pub jobs: Vec<Job>,
}

/// State of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobState {
    /// Running.
    Running,
    /// Finished successfully.
    Succeeded,
    /// Stopped on an error.
    Failed,
}

/// A job: a long operation with steps and progress ("enable protection", ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Id, unique per daemon run.
    pub id: u64,
    /// `"enable-protection"`, ...
    pub kind: String,
    /// The disk.
    pub disk: String,
    /// State.
    pub state: JobState,
    /// Current step: `prerequisites`, `start-tracking`, `initial-replication`,
    /// `ship-changes-during-copy`, `finalize-protection`.
    pub step: String,
    /// 0–100.
    pub progress_percent: f64,
    /// Bytes done / total in the current step, when it moves bytes.
    pub bytes_done: u64,
    /// Total bytes of the current step.
    pub bytes_total: u64,
    /// Recent rate of the current step.
    pub rate_bytes_per_sec: f64,
    /// Estimated seconds left in the current step.
    pub eta_seconds: Option<f64>,
    /// Start time.
    pub started_unix_ns: u64,
    /// End time.
    pub finished_unix_ns: Option<u64>,
    /// Why it failed.
    pub error: Option<String>,
}

/// `sitrep points NAME --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointsReport {
    /// [`SCHEMA`].
    pub schema: u32,
    /// The disk.
    pub disk: String,
    /// Its size.
    pub size: u64,
    /// Bytes of undo data kept so the retained points can be rebuilt.
    pub storage_bytes: u64,
    /// Retained points, oldest first.
    pub points: Vec<crate::points::Point>,
    /// The retention in force for the disk (None: a retired copy, which nothing retires).
    #[serde(default)]
    pub policy: Option<crate::points::Retention>,
}

/// `sitrep points export ... --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportReport {
    /// The disk.
    pub disk: String,
    /// The point exported.
    pub point: crate::points::Point,
    /// The image written.
    pub out: String,
    /// Its size.
    pub size: u64,
    /// Bytes actually written (zero chunks are left sparse).
    pub bytes_written: u64,
}

/// `sitrep point create --json` (agent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppPointReport {
    /// The disk.
    pub disk: String,
    /// The cycle (= point id on the server).
    pub seq: u64,
    /// The cut's instant (ns since the epoch).
    pub cut_time_unix_ns: u64,
    /// How it was quiesced.
    pub label: String,
    /// How long the filesystem was frozen.
    pub freeze_ms: f64,
    /// Whether the cycle was proved consistent (then the server lists it as an
    /// app-consistent point).
    pub consistent: bool,
}

/// The result of `sitrep failover NAME --planned` (agent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedReport {
    /// The disk.
    pub disk: String,
    /// `planned`.
    pub kind: String,
    /// The recovery point activated on the secondary (the source's last cycle).
    pub point: u64,
    /// Its kind: always `app-consistent` (taken quiesced, proved equal to the source).
    pub point_kind: String,
    /// Its source-side cut time (ns since the epoch).
    pub cut_time_unix_ns: u64,
    /// The block device on the secondary.
    pub device: String,
    /// The image behind it on the secondary.
    pub image: String,
    /// How the source was quiesced.
    pub quiesced: String,
    /// The source's filesystem stays frozen (so the old primary cannot diverge).
    pub frozen: bool,
    /// Bytes compared by digests before the activation (the whole disk).
    pub compared_bytes: u64,
    /// Seconds the whole failover took.
    pub seconds: f64,
}
