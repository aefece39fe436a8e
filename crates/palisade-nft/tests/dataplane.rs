//! `NftDataplane` over the stateful `FakeNft`: what reaches the executor, what the table
//! holds afterwards, and that an update leaves exactly what a full apply leaves.

mod common;

use common::{Rs, peers, ruleset};
use palisade_ir::Direction::Ingress;
use palisade_ir::{Dataplane, NodeRuleset, PeerMatch, RulesetDiff, SetId};
use palisade_nft::{Config, FakeNft, NftDataplane, render_full};

fn dataplane() -> NftDataplane<FakeNft> {
    NftDataplane::new(FakeNft::new(), Config::default())
}

fn update(
    dp: &mut NftDataplane<FakeNft>,
    a: &NodeRuleset,
    b: &NodeRuleset,
) -> palisade_ir::ApplyReport {
    dp.apply_update(a, b, &RulesetDiff::between(a, b))
        .expect("apply_update")
}

/// The table a full apply of `rs` leaves in a fresh fake.
fn full_state(rs: &NodeRuleset) -> String {
    let mut dp = dataplane();
    dp.apply_full(rs).expect("apply_full");
    dp.executor().table("palisade").expect("table exists")
}

#[test]
fn apply_full_sends_the_full_render_once() {
    let rs = common::combined();
    let mut dp = dataplane();
    let report = dp.apply_full(&rs).expect("apply_full");
    assert!(report.full);
    assert!(report.operations > rs.stats().endpoints, "{report:?}");
    assert_eq!(
        dp.executor().scripts,
        vec![render_full(&rs, &Config::default())]
    );
}

#[test]
fn update_equals_full_as_table_state_for_every_pair_and_random_chains() {
    let mut scenarios: Vec<NodeRuleset> = vec![NodeRuleset::default()];
    scenarios.extend(common::fixtures().into_iter().map(|(_, rs)| rs));
    scenarios.push(common::combined());
    for seed in 0..40 {
        scenarios.push(common::random_ruleset(seed));
    }
    let expected: Vec<String> = scenarios.iter().map(full_state).collect();
    for (i, a) in scenarios.iter().enumerate() {
        for (j, b) in scenarios.iter().enumerate().step_by(3) {
            let mut dp = dataplane();
            dp.apply_full(a).unwrap();
            let report = update(&mut dp, a, b);
            assert!(
                !report.full,
                "{i}->{j}: fell back to a full apply: {:?}",
                dp.executor().last()
            );
            let got = dp.executor().table("palisade").unwrap();
            assert!(
                got == expected[j],
                "{i} -> {j}: update differs from full:\n{}",
                common::diff(&expected[j], &got)
            );
        }
    }
    // A long chain of updates never drifts from what a full apply would hold.
    let mut dp = dataplane();
    dp.apply_full(&scenarios[0]).unwrap();
    for w in scenarios.windows(2) {
        update(&mut dp, &w[0], &w[1]);
    }
    assert_eq!(
        dp.executor().table("palisade").unwrap(),
        *expected.last().unwrap()
    );
}

#[test]
fn apply_update_without_changes_runs_nothing() {
    let rs = common::combined();
    let mut dp = dataplane();
    dp.apply_full(&rs).unwrap();
    let report = update(&mut dp, &rs, &rs);
    assert_eq!(report.operations, 0);
    assert_eq!(dp.executor().scripts.len(), 1);
}

#[test]
fn rejected_update_falls_back_to_a_full_replace() {
    let fixtures = common::fixtures();
    let (a, b) = (&fixtures[1].1, &common::combined());
    let mut dp = dataplane();
    dp.apply_full(a).unwrap();
    dp.executor_mut()
        .push_failure("Error: Could not process rule: No such file or directory");
    let report = update(&mut dp, a, b);
    assert!(report.full, "{report:?}");
    assert_eq!(dp.executor().table("palisade").unwrap(), full_state(b));
}

#[test]
fn failed_full_apply_leaves_the_previous_table_and_names_backend_and_table() {
    let fixtures = common::fixtures();
    let mut dp = dataplane();
    dp.apply_full(&fixtures[1].1).unwrap();
    let before = dp.executor().table("palisade");
    dp.executor_mut().push_failure("Error: boom");
    let err = dp
        .apply_full(&common::combined())
        .expect_err("injected")
        .to_string();
    assert!(
        err.starts_with("nft: full apply of table inet palisade failed"),
        "{err}"
    );
    assert!(err.contains("boom"), "{err}");
    assert_eq!(dp.executor().table("palisade"), before);
}

#[test]
fn remove_deletes_the_table_tolerating_its_absence() {
    let mut dp = dataplane();
    dp.remove().expect("no table yet");
    dp.apply_full(&common::combined()).unwrap();
    dp.remove().expect("remove");
    assert_eq!(dp.executor().table("palisade"), None);
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
            PeerMatch::Set(SetId("peer_missing".to_string()));
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
        set.blocks.push("10.0.2.0/25".parse().unwrap());
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
        ("overlapping blocks", overlapping, "sorted and disjoint"),
    ];
    for (name, rs, expected) in cases {
        let mut dp = dataplane();
        let err = dp.apply_full(&rs).expect_err(name).to_string();
        assert!(err.contains(expected), "{name}: {err}");
        let empty = NodeRuleset::default();
        let err = dp
            .apply_update(&empty, &rs, &RulesetDiff::between(&empty, &rs))
            .expect_err(name)
            .to_string();
        assert!(err.contains(expected), "{name}: {err}");
        assert!(dp.executor().scripts.is_empty(), "{name}: reached nft");
    }
    let mut dp = NftDataplane::new(
        FakeNft::new(),
        Config {
            table: "bad name".to_string(),
            ..Config::default()
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
