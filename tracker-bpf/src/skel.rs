//! The generated skeleton of `src/bpf/tracker.bpf.c` (built by `build.rs`).
#![allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    clippy::restriction,
    clippy::undocumented_unsafe_blocks,
    unsafe_op_in_unsafe_fn,
    unused_qualifications,
    non_camel_case_types
)]

include!(concat!(env!("OUT_DIR"), "/tracker.skel.rs"));

/// The generated skeleton of `src/bpf/sentinel.bpf.c`.
pub(crate) mod sentinel {
    #![allow(
        missing_docs,
        unreachable_pub,
        clippy::all,
        clippy::pedantic,
        clippy::restriction,
        clippy::undocumented_unsafe_blocks,
        unsafe_op_in_unsafe_fn,
        unused_qualifications,
        non_camel_case_types
    )]
    include!(concat!(env!("OUT_DIR"), "/sentinel.skel.rs"));
}
