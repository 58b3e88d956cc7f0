//! `sitrep generate` (hidden, for packaging): man pages and completions from the clap
//! definitions, through the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failures should panic

use std::process::Command;

fn sitrep(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_sitrep"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn man_pages_one_per_subcommand_and_none_for_the_generator() {
    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("man");
    sitrep(&["generate", "man", man.to_str().unwrap()]);
    for page in [
        "sitrep.1",
        "sitrep-protect.1",
        "sitrep-agent.1",
        "sitrep-disk-add.1",
    ] {
        let text = std::fs::read_to_string(man.join(page)).unwrap();
        assert!(text.contains(".TH "), "{page}: not a man page");
    }
    let protect = std::fs::read_to_string(man.join("sitrep-protect.1")).unwrap();
    assert!(protect.contains(r"\-\-frequency"), "flags missing");
    assert!(!man.join("sitrep-generate.1").exists());
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        sitrep(&[
            "generate",
            "completions",
            shell,
            dir.path().to_str().unwrap(),
        ]);
    }
    for file in ["sitrep.bash", "_sitrep", "sitrep.fish"] {
        let text = std::fs::read_to_string(dir.path().join(file)).unwrap();
        assert!(text.contains("protect"), "{file}: no subcommands");
    }
}
