//! Against a real kernel, inside throwaway network namespaces (never the host's ruleset).
//! Needs root, `nft` and `ip`; skipped otherwise, unless `PALISADE_REQUIRE_ROOT_TESTS=1`.

mod common;

use common::{Netns, Rs, canonical, frontend, peers, ports, ruleset, shared_peer_set, tcp};
use palisade_ir::Dataplane;
use palisade_ir::Direction::{Egress, Ingress};
use palisade_ir::{NodeRuleset, RulesetDiff};
use palisade_nft::{Config, NftDataplane, NftExecutor, SystemNft, render_full, render_update};

const TABLE: &str = "palisade";

/// Rulesets whose every ordered pair is tried as an update.
fn scenarios() -> Vec<(String, NodeRuleset)> {
    let mut out: Vec<(String, NodeRuleset)> = vec![("empty".to_string(), NodeRuleset::default())];
    out.extend(
        common::fixtures()
            .into_iter()
            .map(|(n, rs)| (n.to_string(), rs)),
    );
    let combined = common::combined();
    out.push(("combined".to_string(), combined.clone()));
    out.push((
        "combined minus dual, plus web".to_string(),
        Rs(combined)
            .remove_endpoint("default/dual")
            .endpoint("default/web2", &["10.0.1.40", "fd00::41"])
            .isolate("default/web2", Ingress, &["default/allow-frontend"])
            .allow(
                "default/web2",
                Ingress,
                Some(frontend()),
                Some(ports(&[tcp(80, 80)])),
                "default/allow-frontend",
                0,
            )
            .build(),
    ));
    let mut bigger = frontend();
    bigger
        .addresses
        .extend(peers(&["10.0.2.12", "10.0.2.30", "fd00::30"]).addresses);
    out.push((
        "shared_peer_set, pods joined".to_string(),
        shared_peer_set(bigger),
    ));
    out.push((
        "ip reused by another pod".to_string(),
        ruleset()
            .endpoint("default/new", &["10.0.1.5"])
            .isolate("default/new", Ingress, &["default/deny-all"])
            .isolate("default/new", Egress, &["default/deny-all"])
            .build(),
    ));
    out
}

fn apply(nft: &mut SystemNft, what: &str, script: &str) {
    if let Err(e) = nft.run(script) {
        panic!("{what}: {e}\n--- script ---\n{script}");
    }
}

fn state(nft: &mut SystemNft) -> String {
    canonical(&nft.list_table(TABLE).expect("list table"))
}

/// Reference states: each ruleset's full render, as the kernel lists it.
fn reference_states(rulesets: &[(String, NodeRuleset)]) -> Vec<String> {
    let ns = Netns::new();
    let mut nft = ns.nft();
    rulesets
        .iter()
        .map(|(name, rs)| {
            apply(&mut nft, name, &render_full(rs, &Config::default()));
            state(&mut nft)
        })
        .collect()
}

fn assert_same_state(what: &str, expected: &str, actual: &str) {
    assert!(
        expected == actual,
        "{what}: kernel state after the update differs from the full render's (- full, + update):\n{}",
        common::diff(expected, actual)
    );
}

/// render_full(A) then render_update(A, B) leaves the kernel exactly as render_full(B).
#[test]
fn update_reaches_the_same_state_as_full_for_every_pair() {
    if !common::kernel_available("update_reaches_the_same_state_as_full_for_every_pair") {
        return;
    }
    let rulesets = scenarios();
    let reference = reference_states(&rulesets);
    let ns = Netns::new();
    let mut nft = ns.nft();
    let config = Config::default();
    let mut pairs = 0;
    for (i, (name_a, a)) in rulesets.iter().enumerate() {
        for (j, (name_b, b)) in rulesets.iter().enumerate() {
            if i == j {
                continue;
            }
            let what = format!("{name_a} -> {name_b}");
            apply(&mut nft, &format!("{what}: full"), &render_full(a, &config));
            let update = render_update(a, b, &config);
            assert_eq!(
                update.is_empty(),
                reference[i] == reference[j],
                "{what}: an update is empty exactly when the states are equal"
            );
            apply(&mut nft, &format!("{what}: update"), &update);
            assert_same_state(&what, &reference[j], &state(&mut nft));
            pairs += 1;
        }
    }
    eprintln!("{pairs} updates checked");
}

/// A long chain of updates over generated rulesets, never reset in between: drift would
/// accumulate and show.
#[test]
fn generated_update_chain_never_drifts() {
    if !common::kernel_available("generated_update_chain_never_drifts") {
        return;
    }
    let rulesets: Vec<(String, NodeRuleset)> = (0..40)
        .map(|seed| (format!("seed {seed}"), common::random_ruleset(seed)))
        .collect();
    let reference = reference_states(&rulesets);
    let ns = Netns::new();
    let mut nft = ns.nft();
    let config = Config::default();
    apply(
        &mut nft,
        "seed 0: full",
        &render_full(&rulesets[0].1, &config),
    );
    for k in 1..rulesets.len() {
        let (prev, next) = (&rulesets[k - 1], &rulesets[k]);
        let what = format!("{} -> {}", prev.0, next.0);
        apply(&mut nft, &what, &render_update(&prev.1, &next.1, &config));
        assert_same_state(&what, &reference[k], &state(&mut nft));
    }
}

#[test]
fn dataplane_applies_falls_back_and_removes() {
    if !common::kernel_available("dataplane_applies_falls_back_and_removes") {
        return;
    }
    let ns = Netns::new();
    let fixtures = common::fixtures();
    let (a, b) = (&fixtures[1].1, &common::combined());
    let reference = reference_states(&[("a".to_string(), a.clone()), ("b".to_string(), b.clone())]);
    let mut dp = NftDataplane::new(ns.nft(), Config::default());
    assert_eq!(dp.name(), "nft");

    dp.remove().expect("remove is tolerant of a missing table");
    let report = dp.apply_full(a).expect("apply_full");
    assert!(report.full && report.operations > 0);
    assert_same_state("apply_full", &reference[0], &state(dp.executor_mut()));

    let report = dp
        .apply_update(a, b, &RulesetDiff::between(a, b))
        .expect("apply_update");
    assert!(!report.full, "{report:?}");
    assert_same_state("apply_update", &reference[1], &state(dp.executor_mut()));

    // Someone deleted the table behind the dataplane's back: nft rejects the diff (it
    // touches what is not there) and the dataplane replaces the whole table instead.
    dp.executor_mut()
        .run("delete table inet palisade\n")
        .expect("delete the table by hand");
    let report = dp
        .apply_update(b, a, &RulesetDiff::between(b, a))
        .expect("apply_update with fallback");
    assert!(report.full, "{report:?}");
    assert_same_state("fallback", &reference[0], &state(dp.executor_mut()));

    dp.remove().expect("remove");
    assert!(
        dp.executor_mut().list_table(TABLE).is_err(),
        "table still there after remove"
    );
    dp.remove().expect("second remove");
}

/// The table is replaced atomically even when a previous table of the same name holds
/// objects the new ruleset lacks.
#[test]
fn full_apply_replaces_a_foreign_table_of_the_same_name() {
    if !common::kernel_available("full_apply_replaces_a_foreign_table_of_the_same_name") {
        return;
    }
    let ns = Netns::new();
    let mut nft = ns.nft();
    apply(
        &mut nft,
        "foreign",
        "table inet palisade {\n\tset junk { type ipv4_addr; }\n\tchain input { type filter hook input priority 0; policy accept; }\n}\n",
    );
    let rs = &common::fixtures()[0].1;
    apply(&mut nft, "full", &render_full(rs, &Config::default()));
    let listing = nft.list_table(TABLE).expect("list");
    assert!(
        !listing.contains("junk") && !listing.contains("hook input"),
        "{listing}"
    );
    assert_eq!(
        reference_states(&[("r".to_string(), rs.clone())])[0],
        canonical(&listing)
    );
}
