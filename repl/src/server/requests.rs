//! The server's control socket requests: status, jobs, points, export, failover, commit.
//! Answered from the daemon's side of the channel `control::serve` feeds.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::{Shared, export::export, failover, report};
use crate::control::{Call, Request, Response};
use crate::status;

/// Answers control requests until the channel closes. Status, points and jobs are answered
/// here from published snapshots (never waiting for a disk); anything that takes a disk's
/// mutex or does long work (export, failover, commit) runs on the blocking pool and answers
/// from there.
pub(super) async fn serve(sh: Arc<Shared>, mut crx: mpsc::Receiver<Call>) {
    while let Some((req, reply)) = crx.recv().await {
        let resp = match req {
            Request::Status => Response::ok(report::status_report(&sh)),
            Request::Jobs => Response::ok(status::JobsReport {
                schema: status::SCHEMA,
                jobs: sh.jobs.report(),
            }),
            Request::Points { name } => report::points_report(&sh, &name),
            Request::Export {
                name,
                point,
                out,
                force,
            } => {
                let sh = sh.clone();
                let reply2 = reply;
                tokio::task::spawn_blocking(move || {
                    let r = export(
                        &sh,
                        &name,
                        &point,
                        std::path::Path::new(&out),
                        force,
                        &|_, _| {},
                    );
                    let _ = reply2.send(match r {
                        Ok(v) => Response::ok(v),
                        Err(e) => Response::err(format!("{e:#}")),
                    });
                });
                continue;
            }
            Request::Failover {
                name,
                point,
                test,
                cleanup,
            } => {
                let sh = sh.clone();
                tokio::task::spawn_blocking(move || {
                    let kind = if test {
                        failover::Kind::Test
                    } else {
                        failover::Kind::Unplanned
                    };
                    let r = failover::run(&sh, &name, &point, kind, cleanup);
                    let _ = reply.send(match r {
                        Ok(v) => Response::ok(v),
                        Err(e) => Response::err(format!("{e:#}")),
                    });
                });
                continue;
            }
            Request::FailoverRecord { name } => match failover::record(&sh, &name) {
                Ok(v) => Response::ok(v),
                Err(e) => Response::err(format!("{e:#}")),
            },
            Request::Commit { name } => {
                // Waits for the disk's mutex (a long operation may hold it): off this loop,
                // so status, points and jobs keep answering meanwhile.
                let sh = sh.clone();
                tokio::task::spawn_blocking(move || {
                    let _ = reply.send(match failover::commit(&sh, &name) {
                        Ok(v) => Response::ok(v),
                        Err(e) => Response::err(format!("{e:#}")),
                    });
                });
                continue;
            }
            other => Response::err(format!(
                "{other:?} is an agent request; this is the server's socket"
            )),
        };
        let _ = reply.send(resp);
    }
}
