//! Compiles the BPF program and generates its Rust skeleton (libbpf-cargo).
#![allow(clippy::expect_used, clippy::panic)] // a build script reports failure by panicking

use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

const SRC: &str = "src/bpf/tracker.bpf.c";

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"))
        .join("tracker.skel.rs");
    SkeletonBuilder::new()
        .source(SRC)
        .clang_args(["-I/usr/include/x86_64-linux-gnu", "-Wall", "-Werror", "-O2"])
        .build_and_generate(&out)
        .unwrap_or_else(|e| panic!("building {SRC} (needs clang and libelf-dev): {e:#}"));
    println!("cargo:rerun-if-changed={SRC}");
    println!("cargo:rerun-if-changed=src/bpf/tracker.h");
}
