//! The server's control socket requests: status, jobs, points, export, failover, commit,
//! reverse-replication grants, retired copies, deleting points. Answered from the daemon's side of the
//! channel `control::serve` feeds.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{Shared, delete, export::export, failover, grants, group_ops, report, retired};
use base::control::{Call, Request, Response};
use base::status;

/// Answers control requests until the channel closes. Status, points and jobs are answered
/// here from published snapshots (never waiting for a disk); anything that takes a disk's
/// mutex or touches files (export, failover, commit, grants, retired copies) runs on the
/// blocking pool and answers from there, so one slow disk or store never holds up the others.
pub(super) async fn serve(sh: Arc<Shared>, mut crx: mpsc::Receiver<Call>) {
    while let Some((req, reply)) = crx.recv().await {
        let resp = match req {
            Request::Status => Response::ok(report::status_report(&sh)),
            Request::Jobs => Response::ok(status::JobsReport {
                schema: status::SCHEMA,
                jobs: sh.jobs.report(),
            }),
            Request::Points { name } if !name.contains('@') => report::points_report(&sh, &name),
            other => {
                off_loop(&sh, reply, other);
                continue;
            }
        };
        let _ = reply.send(resp);
    }
}

/// Answers `req` on the blocking pool.
fn off_loop(sh: &Arc<Shared>, reply: oneshot::Sender<Response>, req: Request) {
    let sh = sh.clone();
    tokio::task::spawn_blocking(move || {
        let _ = reply.send(blocking(&sh, req));
    });
}

/// The requests that may wait for a disk or the store's files.
fn blocking(sh: &Shared, req: Request) -> Response {
    match req {
        Request::Points { name } => retired::points_report(sh, &name),
        Request::Export {
            name,
            point,
            out,
            force,
        } => Response::answer(export(
            sh,
            &name,
            point,
            std::path::Path::new(&out),
            force,
            &|_, _| {},
        )),
        Request::Failover {
            name,
            point,
            test,
            cleanup,
        } => {
            let kind = if test {
                failover::Kind::Test
            } else {
                failover::Kind::Unplanned
            };
            Response::answer(failover::run(sh, &name, point, kind, cleanup))
        }
        Request::FailoverRecord { name } => Response::answer(failover::record(sh, &name)),
        Request::GroupPoints { group } => Response::answer(group_ops::points(sh, &group)),
        Request::GroupAllow { group, client } => Response::answer(
            sh.groups
                .allow(&group, &client)
                .map(|()| serde_json::json!({ "group": group, "allowed": client }))
                .map_err(anyhow::Error::msg),
        ),
        Request::GroupCommit { group } => Response::answer(group_ops::commit_group(sh, &group)),
        Request::GroupFailoverRecords { group } => Response::answer(group_ops::records(sh, &group)),
        Request::GroupExport {
            group,
            point,
            out_dir,
            force,
        } => Response::answer(group_ops::export_group(
            sh,
            &group,
            point,
            std::path::Path::new(&out_dir),
            force,
        )),
        Request::GroupFailover {
            group,
            point,
            test,
            cleanup,
        } => Response::answer(group_ops::failover_group(sh, &group, point, test, cleanup)),
        Request::Commit { name } => Response::answer(failover::commit(sh, &name)),
        Request::AcceptReverse {
            name,
            from,
            discard_local_changes,
            revoke,
        } => Response::answer(grants::accept(
            sh,
            &name,
            from,
            discard_local_changes,
            revoke,
        )),
        Request::Retired { purge } => retired::request(sh, purge.as_deref()),
        Request::DeletePoints {
            name,
            point,
            all,
            yes,
        } => {
            let which = match (point, all) {
                (Some(id), false) => delete::Which::One(id),
                (None, true) => delete::Which::All,
                _ => return Response::err("name one point id, or --all"),
            };
            Response::answer(delete::run(sh, &name, which, yes))
        }
        other => Response::err(format!(
            "{other:?} is an agent request; this is the server's socket"
        )),
    }
}
