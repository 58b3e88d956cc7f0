//! In-process: a consistency group of two disks. Their cycles are cut at one instant, the
//! server keeps group points, and every group point, exported, is a state both devices were
//! in at the same moment of the test's (sequential) writes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;

use base::control::{GroupAction, Request};
use base::points::PointSel;
use common::{PointOpts, SimClock, Site, pattern};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_points_are_states_both_disks_were_in_at_once() {
    let site = Site::new();
    let agent = site.agent("sitea", SimClock::auto()).await;
    let size = 1 << 20;
    let (a, b) = (site.device("a", size, 1), site.device("b", size, 2));
    let grouped = PointOpts {
        group: Some("db"),
        ..PointOpts::default()
    };
    for (dev, name) in [(&a, "a"), (&b, "b")] {
        let r = agent.try_protect_with(dev, name, grouped).await;
        assert!(r.ok, "{r:?}");
    }
    agent.wait_applied("a").await;
    agent.wait_applied("b").await;

    // Every joint state the test's writes pass through, in order: a group point must be one.
    let both = || (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let mut states = vec![both()];
    for round in 0..12u64 {
        // "b depends on a": a is written first, then b; a state with b's write and not a's
        // never exists.
        agent.write(&a, (round % 8) * 65536, &pattern(65536, 100 + round));
        states.push(both());
        agent.write(&b, (round % 8) * 65536, &pattern(65536, 200 + round));
        states.push(both());
        if round.is_multiple_of(3) {
            agent.wait_applied("a").await;
        }
    }
    agent.wait_applied("a").await;
    agent.wait_applied("b").await;
    // The last cycles' verdicts follow their `Applied`: let them arrive.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    // The agent lists the group and its members.
    let r = agent
        .request(Request::Group {
            action: GroupAction::List,
            group: None,
            disks: vec![],
            freeze: None,
        })
        .await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.data["groups"][0]["name"], "db", "{r:?}");
    assert_eq!(
        r.data["groups"][0]["members"],
        serde_json::json!(["a", "b"])
    );

    // The server has group points; each names a point of both members.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let points = loop {
        let r = site
            .request(Request::GroupPoints { group: "db".into() })
            .await;
        if r.ok && r.data["points"].as_array().is_some_and(|p| p.len() >= 2) {
            break r.data["points"].as_array().unwrap().clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no group points: {r:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let out = site.dir.path().join("export");
    std::fs::create_dir(&out).unwrap();
    let mut seen = BTreeSet::new();
    let mut images = Vec::new();
    for p in &points {
        let id = p["id"].as_u64().unwrap();
        let members = p["members"].as_object().unwrap();
        assert_eq!(members.len(), 2, "{p}");
        let a_pts = site.points("a").await;
        assert!(
            a_pts
                .points
                .iter()
                .any(|q| q.id == members["a"].as_u64().unwrap()),
            "group point {id}'s member point of a is kept (pinned): {a_pts:?}"
        );
        let r = site
            .request(Request::GroupExport {
                group: "db".into(),
                point: PointSel::Id(id),
                out_dir: out.display().to_string(),
                force: true,
            })
            .await;
        assert!(r.ok, "{r:?}");
        let got = (
            std::fs::read(out.join("a.img")).unwrap(),
            std::fs::read(out.join("b.img")).unwrap(),
        );
        let at = states.iter().position(|s| *s == got).unwrap_or_else(|| {
            panic!("group point {id} is no state the two disks were in together")
        });
        seen.insert(at);
        images.push(got);
    }
    // The negative control: the members' images from different group points (what pairing
    // per-disk points gives) are, somewhere, no state the disks were in together.
    let mixed = images
        .iter()
        .zip(images.iter().skip(1))
        .filter(|(older, newer)| !states.contains(&(older.0.clone(), newer.1.clone())))
        .count();
    assert!(mixed > 0, "the check cannot tell mixed points apart");
    // The newest group point is the final state (every write applied, cut together).
    assert!(
        seen.contains(&(states.len() - 1)),
        "{seen:?} of {}",
        states.len()
    );

    // The server's status shows the group.
    let r = site.request(Request::Status).await;
    let groups = r.data["groups"].as_array().cloned().unwrap_or_default();
    assert_eq!(groups.len(), 1, "{r:?}");
    assert_eq!(groups[0]["members"], serde_json::json!(["a", "b"]));

    // Out of the group, a disk goes on replicating with points of its own.
    let r = agent
        .request(Request::Group {
            action: GroupAction::Remove,
            group: Some("db".into()),
            disks: vec!["b".into()],
            freeze: None,
        })
        .await;
    assert!(r.ok, "{r:?}");
    agent.write(&b, 0, &pattern(4096, 999));
    agent.wait_applied("b").await;
    assert!(site.replica("b") == std::fs::read(&b).unwrap());
}
