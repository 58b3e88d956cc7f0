//! Shared helpers for sitrep's cross-crate integration tests.
