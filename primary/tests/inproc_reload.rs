//! In-process: a re-read policy file (what SIGHUP sends) protects the disks it newly lists and
//! leaves running protections alone when their entry changes or goes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use base::agent_state::Protection;
use base::config::PolicyFile;
use common::{Agent, SERVER_ADDR, SimClock, Site};

/// The policy file listing `entries` (device, name, frequency), loaded as the daemon does.
fn policy(site: &Site, entries: &[(&std::path::Path, &str, &str)]) -> PolicyFile {
    let text: String = entries
        .iter()
        .map(|(dev, name, freq)| {
            format!(
                "[[disk]]\ndevice = \"{}\"\nname = \"{name}\"\nto = \"{SERVER_ADDR}\"\nfrequency = \"{freq}\"\n",
                dev.display()
            )
        })
        .collect();
    let path = site.dir.path().join("agent.toml");
    std::fs::write(&path, text).unwrap();
    PolicyFile::load(&path).unwrap()
}

/// The agent's protections (name, frequency), once `name` is among them.
async fn disks_once(agent: &Agent, name: &str) -> Vec<(String, String)> {
    for _ in 0..1000 {
        let prots = Protection::load_all(&agent.state).unwrap();
        if prots.iter().any(|p| p.name == name) {
            return prots
                .into_iter()
                .map(|p| (p.name, p.frequency.to_string()))
                .collect();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("disk {name} was never protected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reread_policy_protects_new_disks_and_leaves_running_ones() {
    let site = Site::new();
    let agent = site.agent("sitea", SimClock::auto()).await;
    let (a, b, c) = (
        site.device("a", 1 << 20, 1),
        site.device("b", 1 << 20, 2),
        site.device("c", 1 << 20, 3),
    );
    let reload = agent.reload.clone().unwrap();

    reload
        .send(policy(&site, &[(&a, "a", "30s")]))
        .await
        .unwrap();
    assert_eq!(disks_once(&agent, "a").await, [("a".into(), "30s".into())]);

    // a's entry changes and b is added: b is protected, a keeps its running settings.
    reload
        .send(policy(&site, &[(&a, "a", "5m"), (&b, "b", "continuous")]))
        .await
        .unwrap();
    let disks = disks_once(&agent, "b").await;
    assert!(disks.contains(&("a".into(), "30s".into())), "{disks:?}");

    // a's entry goes and c is added: a stays protected.
    reload
        .send(policy(
            &site,
            &[(&b, "b", "continuous"), (&c, "c", "continuous")],
        ))
        .await
        .unwrap();
    let mut names: Vec<String> = disks_once(&agent, "c")
        .await
        .into_iter()
        .map(|d| d.0)
        .collect();
    names.sort();
    assert_eq!(names, ["a", "b", "c"]);
}

/// The group list (`sitrep group list`) as (name, freeze), once `want` holds.
async fn groups_once(
    agent: &Agent,
    want: impl Fn(&[(String, bool)]) -> bool,
) -> Vec<(String, bool)> {
    let mut last = Vec::new();
    for _ in 0..1000 {
        let r = agent
            .request(base::control::Request::Group {
                action: base::control::GroupAction::List,
                group: None,
                disks: vec![],
                freeze: None,
            })
            .await;
        last = r.data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|g| {
                (
                    g["name"].as_str().unwrap_or("").to_string(),
                    g["freeze"] == true,
                )
            })
            .collect();
        if want(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the groups never matched: {last:?}");
}

/// `[[group]]` settings follow the file on every re-read (unlike protections).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reread_policy_applies_group_settings() {
    let site = Site::new();
    let agent = site.agent("sitea", SimClock::auto()).await;
    let reload = agent.reload.clone().unwrap();
    let path = site.dir.path().join("agent.toml");
    let send = |freeze: bool| {
        std::fs::write(
            &path,
            format!("[[group]]\nname = \"db\"\nfreeze = {freeze}\n"),
        )
        .unwrap();
        PolicyFile::load(&path).unwrap()
    };
    reload.send(send(true)).await.unwrap();
    groups_once(&agent, |g| g == [("db".to_string(), true)]).await;
    reload.send(send(false)).await.unwrap();
    groups_once(&agent, |g| g == [("db".to_string(), false)]).await;
}
