//! The sitrep wire protocol (see docs/protocol.md).
