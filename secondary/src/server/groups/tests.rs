use super::*;

fn members(m: &[&str]) -> Vec<String> {
    m.iter().map(|s| (*s).to_string()).collect()
}

fn report<'a>(
    group: &'a str,
    disk: &'a str,
    cut_id: u64,
    m: &'a [String],
    point: Option<(u64, u64)>,
) -> Report<'a> {
    Report {
        client: "sitea",
        group,
        disk,
        cut_id,
        members: m,
        point,
    }
}

/// Keeps the newest `keep` points only (a zero span).
fn keep_last(keep: usize) -> Retention {
    Retention {
        every_ns: 3_600_000_000_000,
        retain_ns: 0,
        keep,
        min_retain_ns: 0,
        tiers: Vec::new(),
    }
}

fn keep_all() -> Retention {
    keep_last(1000)
}

#[test]
fn a_group_point_needs_every_member_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let g = Groups::open(dir.path()).unwrap();
    let m = members(&["data", "log"]);
    let r = keep_all();
    assert_eq!(
        g.report(&report("db", "data", 7, &m, Some((41, 7))), &r, 10),
        Ok(None)
    );
    let gp = g
        .report(&report("db", "log", 7, &m, Some((17, 7))), &r, 10)
        .unwrap()
        .expect("both members reported a point");
    assert_eq!(gp.id, 1);
    assert_eq!(
        gp.members,
        BTreeMap::from([("data".into(), 41), ("log".into(), 17)])
    );
    assert_eq!(g.pins("data"), BTreeSet::from([41]));
    // One member's cycle not a point: no group point.
    assert_eq!(
        g.report(&report("db", "data", 8, &m, Some((42, 8))), &r, 11),
        Ok(None)
    );
    assert_eq!(
        g.report(&report("db", "log", 8, &m, None), &r, 11),
        Ok(None)
    );
    assert_eq!(
        g.report(&report("db", "data", 9, &m, Some((43, 9))), &r, 12),
        Ok(None)
    );
    let reopened = Groups::open(dir.path()).unwrap();
    let (owner, pts) = reopened.points("db").unwrap();
    assert_eq!((owner.as_str(), pts.len()), ("sitea", 1));
    assert_eq!(reopened.pins("log"), BTreeSet::from([17]));
}

#[test]
fn hostile_reports_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let g = Groups::open(dir.path()).unwrap();
    let r = keep_all();
    let m = members(&["data", "log"]);
    assert!(
        g.report(&report("db", "other", 1, &m, Some((1, 1))), &r, 1)
            .is_err(),
        "not a member"
    );
    let unsorted = members(&["log", "data"]);
    assert!(
        g.report(&report("db", "log", 1, &unsorted, Some((1, 1))), &r, 1)
            .is_err()
    );
    let one = members(&["data"]);
    assert!(
        g.report(&report("db", "data", 1, &one, Some((1, 1))), &r, 1)
            .is_err()
    );
    assert!(
        g.report(&report("../x", "data", 1, &m, Some((1, 1))), &r, 1)
            .is_err()
    );
    assert_eq!(
        g.report(&report("db", "data", 2, &m, Some((5, 2))), &r, 1),
        Ok(None)
    );
    let mut evil = report("db", "log", 2, &m, Some((6, 2)));
    evil.client = "siteb";
    assert!(
        g.report(&evil, &r, 1)
            .unwrap_err()
            .contains("belongs to client sitea")
    );
    assert!(g.points("db").unwrap().1.is_empty());
    // Another instant for the same cut: refused, and the cut is dropped.
    assert!(
        g.report(&report("db", "log", 2, &m, Some((6, 3))), &r, 1)
            .is_err()
    );
    assert_eq!(
        g.report(&report("db", "log", 2, &m, Some((6, 2))), &r, 1),
        Ok(None)
    );
}

#[test]
fn retention_thins_group_points_and_broken_ones_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let g = Groups::open(dir.path()).unwrap();
    let r = keep_last(2);
    let m = members(&["a", "b"]);
    for cut in 1..=5u64 {
        let _ = g
            .report(&report("g", "a", cut, &m, Some((cut, cut))), &r, 10)
            .unwrap();
        assert!(
            g.report(&report("g", "b", cut, &m, Some((cut + 100, cut))), &r, 10)
                .unwrap()
                .is_some()
        );
    }
    let pts = g.points("g").unwrap().1;
    assert_eq!(pts.iter().map(|p| p.id).collect::<Vec<_>>(), [4, 5]);
    assert_eq!(g.pins("b"), BTreeSet::from([104, 105]));
    assert!(g.drop_broken("g", |d, id| !(d == "a" && id == 4)));
    assert_eq!(
        g.points("g")
            .unwrap()
            .1
            .iter()
            .map(|p| p.id)
            .collect::<Vec<_>>(),
        [5]
    );
}

/// `drop_broken` asks about member points with the registry unlocked: the question may take
/// locks that are held, elsewhere, while the registry is asked (a disk's lock) — here, the
/// registry itself, which deadlocked the old code on the spot (in the server, the cycle
/// was a disk's lock against the registry's, and the control socket hung).
#[test]
fn dropping_broken_points_holds_no_registry_lock_while_asking() {
    let dir = tempfile::tempdir().unwrap();
    let g = Groups::open(dir.path()).unwrap();
    let r = keep_all();
    let m = members(&["a", "b"]);
    let _ = g
        .report(&report("g", "a", 1, &m, Some((1, 1))), &r, 10)
        .unwrap();
    let _ = g
        .report(&report("g", "b", 1, &m, Some((2, 1))), &r, 10)
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let g = std::sync::Arc::new(g);
    let g2 = g.clone();
    std::thread::spawn(move || {
        let dropped = g2.drop_broken("g", |d, _| {
            // Re-entering the registry, as a lock cycle would.
            g2.pins(d);
            false
        });
        let _ = tx.send(dropped);
    });
    let dropped = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("drop_broken deadlocked");
    assert!(dropped);
    assert!(g.points("g").unwrap().1.is_empty());
}
