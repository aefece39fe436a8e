//! `NftDataplane` over `FakeNft`: what reaches the executor, and when.

mod common;

use common::{Rs, peers, ruleset};
use palisade_ir::Direction::Ingress;
use palisade_ir::{Dataplane, DataplaneError, PeerMatch, SetName};
use palisade_nft::{Config, FakeNft, NftDataplane, render_full, render_update};

fn dataplane() -> NftDataplane<FakeNft> {
    NftDataplane::new(FakeNft::new(), Config::default())
}

#[test]
fn apply_full_sends_the_full_render_once() {
    let rs = common::combined();
    let mut dp = dataplane();
    let report = dp.apply_full(&rs).expect("apply_full");
    assert!(report.full);
    assert!(report.operations > rs.stats().rules, "{report:?}");
    assert_eq!(
        dp.executor().scripts,
        vec![render_full(&rs, &Config::default())]
    );
}

#[test]
fn apply_update_sends_only_the_diff() {
    let fixtures = common::fixtures();
    let (a, b) = (&fixtures[1].1, &common::combined());
    let mut dp = dataplane();
    let report = dp.apply_update(a, b).expect("apply_update");
    assert!(!report.full);
    let script = render_update(a, b, &Config::default());
    assert_eq!(report.operations, script.lines().count());
    assert_eq!(dp.executor().scripts, vec![script]);
}

#[test]
fn apply_update_without_changes_runs_nothing() {
    let rs = common::combined();
    let mut dp = dataplane();
    let report = dp.apply_update(&rs, &rs).expect("apply_update");
    assert_eq!((report.full, report.operations), (false, 0));
    assert!(dp.executor().scripts.is_empty());
}

#[test]
fn rejected_update_falls_back_to_a_full_replace() {
    let fixtures = common::fixtures();
    let (a, b) = (&fixtures[0].1, &fixtures[1].1);
    let mut dp = dataplane();
    dp.executor_mut()
        .push_result(Err("Error: No such file or directory".to_string()));
    let report = dp.apply_update(a, b).expect("fallback");
    assert!(report.full);
    let scripts = &dp.executor().scripts;
    assert_eq!(scripts.len(), 2);
    assert_eq!(scripts[0], render_update(a, b, &Config::default()));
    assert_eq!(scripts[1], render_full(b, &Config::default()));
}

#[test]
fn failed_full_apply_names_backend_and_table() {
    let mut dp = dataplane();
    dp.executor_mut()
        .push_result(Err("Error: Operation not permitted".to_string()));
    let err = dp.apply_full(&common::combined()).expect_err("must fail");
    let text = err.to_string();
    assert!(
        matches!(err, DataplaneError::Apply { backend: "nft", .. }),
        "{err:?}"
    );
    assert!(
        text.contains("table inet palisade") && text.contains("Operation not permitted"),
        "{text}"
    );
}

#[test]
fn remove_deletes_the_table_tolerating_its_absence() {
    let mut dp = NftDataplane::new(
        FakeNft::new(),
        Config {
            table: "pal_test".to_string(),
        },
    );
    dp.remove().expect("remove");
    assert_eq!(
        dp.executor().last(),
        Some("table inet pal_test\ndelete table inet pal_test\n")
    );
}

#[test]
fn invalid_rulesets_never_reach_nft() {
    let dangling = {
        let mut rs = ruleset()
            .endpoint("default/web", &["10.0.1.10"])
            .isolate("default/web", Ingress, &["default/p"])
            .allow(
                "default/web",
                Ingress,
                Some(peers(&["10.0.2.1"])),
                None,
                "default/p",
                0,
            )
            .build();
        rs.endpoints.get_mut("default/web").unwrap().ingress.rules[0].peers =
            PeerMatch::Set(SetName("peer_missing".to_string()));
        rs
    };
    let shared_ip = ruleset()
        .endpoint("default/a", &["10.0.1.10"])
        .endpoint("default/b", &["10.0.1.10"])
        .build();
    let mut overlapping = Rs(ruleset().0)
        .endpoint("default/web", &["10.0.1.10"])
        .isolate("default/web", Ingress, &["default/p"])
        .allow(
            "default/web",
            Ingress,
            Some(peers(&["10.0.2.0/24"])),
            None,
            "default/p",
            0,
        )
        .build();
    for set in overlapping.peer_sets.values_mut() {
        set.ranges.push(common::cidr("10.0.2.7"));
    }
    let cases = [
        (
            "dangling set reference",
            dangling,
            "no peer set peer_missing",
        ),
        (
            "address on two endpoints",
            shared_ip,
            "10.0.1.10 also belongs to endpoint default/a",
        ),
        ("overlapping ranges", overlapping, "overlaps"),
    ];
    for (name, rs, expected) in cases {
        let mut dp = dataplane();
        let err = dp.apply_full(&rs).expect_err(name).to_string();
        assert!(err.contains(expected), "{name}: {err}");
        let err = dp
            .apply_update(&Default::default(), &rs)
            .expect_err(name)
            .to_string();
        assert!(err.contains(expected), "{name}: {err}");
        assert!(dp.executor().scripts.is_empty(), "{name}: reached nft");
    }
    let mut dp = NftDataplane::new(
        FakeNft::new(),
        Config {
            table: "bad name".to_string(),
        },
    );
    assert!(dp.apply_full(&Default::default()).is_err());
    assert!(dp.remove().is_err());
    assert!(dp.executor().scripts.is_empty());
}

#[test]
fn dataplane_is_object_safe_and_send() {
    let boxed: Box<dyn Dataplane> = Box::new(dataplane());
    assert_eq!(boxed.name(), "nft");
}
