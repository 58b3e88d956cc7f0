//! Compiles the BPF programs and generates their Rust skeletons (libbpf-cargo): the tracker
//! and the crash sentinel.
#![allow(clippy::expect_used, clippy::panic)] // a build script reports failure by panicking

use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

const PROGRAMS: &[(&str, &str, &str)] = &[
    (
        "src/bpf/tracker.bpf.c",
        "src/bpf/tracker.h",
        "tracker.skel.rs",
    ),
    (
        "src/bpf/sentinel.bpf.c",
        "src/bpf/sentinel.h",
        "sentinel.skel.rs",
    ),
];

fn main() {
    let dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    for (src, header, skel) in PROGRAMS {
        SkeletonBuilder::new()
            .source(src)
            .clang_args(["-I/usr/include/x86_64-linux-gnu", "-Wall", "-Werror", "-O2"])
            .build_and_generate(dir.join(skel))
            .unwrap_or_else(|e| panic!("building {src} (needs clang and libelf-dev): {e:#}"));
        println!("cargo:rerun-if-changed={src}");
        println!("cargo:rerun-if-changed={header}");
    }
}
