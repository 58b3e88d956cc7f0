//! The real server without its TLS port, for in-process tests (feature `test-support`):
//! the store opened as [`super::run`] opens it, the control socket served, and sessions
//! served on whatever stream a test hands over — one end of a `tokio::io::duplex` whose
//! other end the agent under test holds — under the client name the test says the
//! certificate would carry. Everything past the TLS handshake is the daemon's code.

use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};

use super::{ServerOptions, Shared, open_store, requests, session};
use base::control::{self, Call, Request, Response};
use base::lockfile::LockFile;
use base::net::ReplError;

/// A server running in this process (see the module docs). Its tasks run on the runtime
/// it was started on, until that runtime stops.
pub struct InProcess {
    shared: Arc<Shared>,
    calls: mpsc::Sender<Call>,
    _store_lock: LockFile,
}

impl InProcess {
    /// Opens the store `opts.store` and serves the control socket `opts.socket`, as
    /// `sitrep server` would, as server `name`; `opts.listen` and `opts.metrics` are unused.
    ///
    /// # Errors
    /// The store or the control socket cannot be set up.
    pub fn start(opts: &ServerOptions, name: &str) -> anyhow::Result<Self> {
        let store = &opts.store;
        std::fs::create_dir_all(store.join("disks"))
            .map_err(|e| anyhow::anyhow!("store {}: {e}", store.display()))?;
        let store_lock = LockFile::acquire(&store.join("LOCK"), "store")?;
        let control_socket = control::bind(
            &opts.socket,
            opts.limits.control_connections,
            opts.limits.control_read_timeout,
        )?;
        let shared = open_store(opts, name, opts.limits.clone(), control_socket.shared())?;
        let (calls, crx) = mpsc::channel::<Call>(16);
        tokio::spawn(control_socket.serve(calls.clone()));
        tokio::spawn(requests::serve(shared.clone(), crx));
        tokio::spawn(super::quota::run(shared.clone()));
        Ok(Self {
            shared,
            calls,
            _store_lock: store_lock,
        })
    }

    /// Serves agent `client` on `stream` until the session ends (spawn it): the version
    /// handshake, the attach and the disk's frames, as after a TLS handshake with a
    /// certificate naming `client`.
    ///
    /// # Errors
    /// Why the session ended, if not cleanly (a refusal, the peer gone, ...).
    pub fn serve_stream<S>(
        &self,
        client: &str,
        stream: S,
    ) -> impl Future<Output = Result<(), ReplError>> + Send + 'static
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        session::serve(self.shared.clone(), client.to_string(), stream)
    }

    /// Answers a control request as the control socket would.
    pub async fn request(&self, req: Request) -> Response {
        let (tx, rx) = oneshot::channel();
        if self.calls.send((req, tx)).await.is_err() {
            return Response::err("the server's request task stopped");
        }
        rx.await
            .unwrap_or_else(|_| Response::err("the server dropped the request"))
    }

    /// Marks disk `name` failed over here as an unplanned failover's activation does — its
    /// agent is refused `FailedOver` from now on and a running session ends at its next
    /// frame — without the export and the loop device, which need root.
    ///
    /// # Errors
    /// The disk is not replicated here or its state cannot be saved.
    pub fn mark_failed_over(&self, name: &str) -> anyhow::Result<()> {
        let slot = super::lock(&self.shared.slots)
            .get(name)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("disk {name} is not replicated here"))?;
        let mut g = slot.disk.lock();
        let d = g
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("disk {name} is not open"))?;
        d.set_failed_over("unplanned failover (in-process test)".into())?;
        slot.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// The store directory.
    #[must_use]
    pub fn store(&self) -> &Path {
        &self.shared.store
    }
}
