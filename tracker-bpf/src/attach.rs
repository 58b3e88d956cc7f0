//! How the tracker attaches to the block layer and the poller's settings: the leaf both the
//! loader ([`crate::load`]) and the poller read, so neither imports the other's internals.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64};
use std::time::Duration;

/// How to attach to the block layer: the tracepoints `block_bio_queue`, `block_rq_complete`
/// and `block_bio_complete`, all three the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum AttachMode {
    /// BTF-typed tracepoints (`tp_btf`), falling back to raw tracepoints if that fails.
    #[default]
    Auto,
    /// Only `tp_btf`.
    TpBtf,
    /// Only `raw_tp` (kernels without BTF-typed tracepoints).
    RawTp,
}

/// Which attachment is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Attached {
    /// `tp_btf/block_{bio_queue,rq_complete,bio_complete}`.
    TpBtf,
    /// `raw_tp/block_{bio_queue,rq_complete,bio_complete}`.
    RawTp,
}

pub(crate) struct PollerConfig {
    pub(crate) ring_bytes: u32,
    /// Words of the fine write bitmap; 0 disables it (every write goes through the ring).
    pub(crate) fine_words: u32,
    pub(crate) attach: AttachMode,
    pub(crate) exclude_tgid: u32,
    /// Also record changes at `block_bio_queue` (the pre-completion behaviour; comparison).
    pub(crate) mark_at_queue: bool,
    pub(crate) pause: Option<Arc<AtomicBool>>,
    /// Test seam (see `TrackerConfig::skip_completions`).
    pub(crate) skip_completions: Option<Arc<AtomicI64>>,
    pub(crate) poll: Duration,
}
