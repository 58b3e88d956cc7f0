#![allow(clippy::unwrap_used, clippy::panic)]

use super::*;
use clap::Parser;

fn args(v: &[&str]) -> Vec<OsString> {
    v.iter().map(OsString::from).collect()
}

fn file(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), text).unwrap();
    f
}

fn merged(daemon: &str, text: &str, extra: &[&str]) -> Result<Vec<String>, String> {
    let f = file(text);
    let mut v = vec!["sitrep", daemon, "--config", f.path().to_str().unwrap()];
    v.extend_from_slice(extra);
    merge(args(&v)).map(|a| a.into_iter().map(|s| s.into_string().unwrap()).collect())
}

#[test]
fn settings_become_flags_after_the_subcommand_and_the_command_line_wins() {
    let a = merged(
        "server",
        "[server]\nstore = \"/s\"\npki = \"/p\"\nretain = \"7d\"\nkeep-points = 5\n",
        &["--retain", "2d"],
    )
    .unwrap();
    assert_eq!(a[1], "server");
    assert!(a.contains(&"--store=/s".to_string()), "{a:?}");
    assert!(a.contains(&"--keep-points=5".to_string()), "{a:?}");
    assert!(!a.iter().any(|s| s == "--retain=7d"), "{a:?}");
    // The merged line parses, with the command line's --retain.
    assert!(crate::Cli::try_parse_from(&a).is_ok(), "{a:?}");
    let a = merged("server", "[server]\nretain = \"7d\"\n", &["--retain=2d"]).unwrap();
    assert!(!a.iter().any(|s| s == "--retain=7d"), "{a:?}");
}

#[test]
fn a_switch_is_a_boolean_and_a_value_is_a_string_or_a_number() {
    let a = merged(
        "agent",
        "[agent]\nstate = \"/s\"\npki = \"/p\"\ncompress_level = -3\nretry_unit = 0.5\n",
        &[],
    )
    .unwrap();
    assert!(a.contains(&"--compress-level=-3".to_string()), "{a:?}");
    assert!(a.contains(&"--retry-unit=0.5".to_string()), "{a:?}");
    assert!(crate::Cli::try_parse_from(&a).is_ok(), "{a:?}");
    let e = merged("agent", "[agent]\nmetrics = [1]\n", &[]).unwrap_err();
    assert!(
        e.contains("metrics") && e.contains("expected a string"),
        "{e}"
    );
    // A flag taking a boolean value.
    let a = merged("agent", "[agent]\ntrust_clean_reboot = false\n", &[]).unwrap();
    assert!(
        a.contains(&"--trust-clean-reboot=false".to_string()),
        "{a:?}"
    );
    let e = merged("agent", "[agent]\ntrust_clean_reboot = \"maybe\"\n", &[]).unwrap_err();
    assert!(e.contains("trust_clean_reboot"), "{e}");
}

#[test]
fn an_unknown_key_or_table_is_refused_with_the_file_and_the_keys_there_are() {
    let e = merged("server", "[server]\nretian = \"7d\"\n", &[]).unwrap_err();
    assert!(e.contains("config file") && e.contains("`retian`"), "{e}");
    assert!(e.contains("retain, min_retain"), "{e}");
    let e = merged("server", "[[disk]]\ndevice = \"/dev/x\"\n", &[]).unwrap_err();
    assert!(e.contains("`disk`") && e.contains("[server]"), "{e}");
    // The agent's file holds its disks too; `config` itself is no setting.
    assert!(
        merged(
            "agent",
            "[[disk]]\ndevice = \"/dev/x\"\nto = \"h:1\"\n",
            &[]
        )
        .is_ok()
    );
    let e = merged("agent", "[agent]\nconfig = \"/x\"\n", &[]).unwrap_err();
    assert!(e.contains("no setting `config`"), "{e}");
}

#[test]
fn a_bad_value_names_the_key_and_what_its_flag_says() {
    let e = merged("server", "[server]\nretain = \"a week\"\n", &[]).unwrap_err();
    assert!(e.contains("[server] retain = \"a week\""), "{e}");
    let e = merged("agent", "[agent]\ncompress_level = 99\n", &[]).unwrap_err();
    assert!(e.contains("compress_level") && e.contains("99"), "{e}");
    let e = merged("server", "not toml = = 1", &[]).unwrap_err();
    assert!(e.contains("config file"), "{e}");
    let e = merge(args(&[
        "sitrep",
        "server",
        "--config",
        "/nonexistent/x.toml",
    ]))
    .unwrap_err();
    assert!(e.contains("/nonexistent/x.toml"), "{e}");
}

#[test]
fn other_commands_and_daemons_without_config_are_left_alone() {
    let v = args(&["sitrep", "status", "--config", "x"]);
    assert_eq!(merge(v.clone()).unwrap(), v);
    let v = args(&["sitrep", "server", "--store", "s"]);
    assert_eq!(merge(v.clone()).unwrap(), v);
}

/// The generated files: every setting documented, and the file with every line uncommented
/// (each default written out) is a valid config.
#[test]
fn the_generated_files_cover_every_flag_and_their_defaults_parse() {
    for daemon in ["agent", "server"] {
        let text = crate::cli::generate::config_file(daemon).unwrap();
        let cmd = crate::Cli::command();
        let sub = cmd.find_subcommand(daemon).unwrap();
        for a in settable(sub) {
            let key = key_of(a);
            assert!(
                text.contains(&format!("\n#{key} = ")) || text.contains(&format!("\n{key} = ")),
                "{daemon}: {key} missing"
            );
        }
        // As packaged (state/store and pki set), it loads and parses; the agent's file is
        // also its policy file (no disk listed).
        let a = merged(daemon, &text, &[]).unwrap();
        if daemon == "agent" {
            let f = file(&text);
            let p = base::config::PolicyFile::load(f.path()).unwrap();
            assert!(p.disk.is_empty() && p.agent.is_some());
        }
        assert!(crate::Cli::try_parse_from(&a).is_ok(), "{a:?}");
        // Every default uncommented (optional flags without a default left out).
        let all: String = text
            .lines()
            .filter(|l| !l.ends_with("= \"\"") && !l.starts_with("#[") && !l.starts_with("# "))
            .map(|l| format!("{}\n", l.strip_prefix('#').unwrap_or(l)))
            .collect();
        let a = merged(daemon, &all, &[]).unwrap();
        assert!(crate::Cli::try_parse_from(&a).is_ok(), "{daemon}: {a:?}");
    }
}
