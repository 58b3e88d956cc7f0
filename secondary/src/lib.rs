//! The secondary site: `sitrep server` — sessions with agents over mutual TLS, the store of
//! replicas, staging and apply of whole cycles, the undo data behind recovery points, and the
//! operator's requests on its control socket (points, export, failover, reverse).
//!
//! - [`server`]: the daemon — listener, one session per disk, control requests, reports;
//! - [`store`]: one directory per replicated disk (state, replica, staged cycles), crash-safe;
//! - [`undo`]: the pre-images a cycle overwrote, from which every recovery point is rebuilt.
//!
//! It does not link the eBPF tracker: the agent side is the `primary` crate.

pub mod server;
pub mod store;
pub mod undo;
