//! `IptablesDataplane` over the stateful `FakeIptables`: what reaches the executor, what
//! the kernel holds afterwards, that an update leaves exactly what a full apply leaves,
//! that other programs' chains and sets survive, and that failures change nothing.

// The fixtures of palisade-nft (that module allows its own dead code).
#[path = "../../palisade-nft/tests/common/mod.rs"]
mod common;

use palisade_iptables::{FakeIptables, Family, IptablesDataplane, render_full};
use palisade_ir::{Dataplane, NodeRuleset, RulesetDiff};

fn dataplane() -> IptablesDataplane<FakeIptables> {
    IptablesDataplane::new(FakeIptables::new())
}

fn state(dp: &mut IptablesDataplane<FakeIptables>) -> String {
    dp.kernel_state().expect("kernel state")
}

/// The kernel state a full apply of `rs` leaves in a fresh fake.
fn full_state(rs: &NodeRuleset) -> String {
    let mut dp = dataplane();
    dp.apply_full(rs).expect("apply_full");
    state(&mut dp)
}

fn update(
    dp: &mut IptablesDataplane<FakeIptables>,
    a: &NodeRuleset,
    b: &NodeRuleset,
) -> palisade_ir::ApplyReport {
    dp.apply_update(a, b, &RulesetDiff::between(a, b))
        .expect("apply_update")
}

fn scenarios() -> Vec<NodeRuleset> {
    let mut s = vec![NodeRuleset::default()];
    s.extend(common::fixtures().into_iter().map(|(_, rs)| rs));
    s.push(common::combined());
    for seed in 0..30 {
        s.push(common::random_ruleset(seed));
    }
    s
}

#[test]
fn apply_full_sends_the_full_render() {
    let rs = common::combined();
    let mut dp = dataplane();
    let report = dp.apply_full(&rs).expect("apply_full");
    assert!(report.full);
    let r = render_full(&rs);
    let fake = dp.executor();
    assert_eq!(fake.restores[0], (Family::V4, r.restore[0].clone()));
    assert_eq!(fake.restores[1], (Family::V6, r.restore[1].clone()));
    assert_eq!(
        fake.ipset_inputs,
        vec![r.ipset_before.clone(), r.ipset_after.clone()]
    );
    // The hook is the first rule of FORWARD, in both families.
    for family in Family::BOTH {
        let forward = fake.chain(family, "FORWARD").unwrap();
        assert_eq!(forward.len(), 1, "{forward:?}");
        assert!(forward[0].ends_with("-j PAL-FORWARD"));
    }
}

#[test]
fn update_equals_full_as_kernel_state_for_every_pair() {
    let all = scenarios();
    let expected: Vec<String> = all.iter().map(full_state).collect();
    for (i, a) in all.iter().enumerate() {
        for (j, b) in all.iter().enumerate().step_by(3) {
            let mut dp = dataplane();
            dp.apply_full(a).unwrap();
            let report = update(&mut dp, a, b);
            assert!(!report.full, "{i}->{j}: fell back to a full apply");
            let got = state(&mut dp);
            assert!(
                got == expected[j],
                "{i}->{j}: update differs from full:\n{}",
                common::diff(&expected[j], &got)
            );
            // Nothing left to do afterwards.
            assert_eq!(update(&mut dp, b, b).operations, 0, "{i}->{j}");
        }
    }
}

#[test]
fn long_random_update_chains_equal_full() {
    let mut dp = dataplane();
    let mut current = NodeRuleset::default();
    dp.apply_full(&current).unwrap();
    for seed in 100..160 {
        let next = common::random_ruleset(seed);
        update(&mut dp, &current, &next);
        assert_eq!(state(&mut dp), full_state(&next), "seed {seed}");
        current = next;
    }
}

/// 20 endpoints whose ingress allows TCP 8080 from the pods of one selector (`front`).
fn web(n: usize, front: &[&str]) -> NodeRuleset {
    let mut rs = common::ruleset();
    for i in 0..n {
        let name = format!("default/web-{i}");
        rs = rs
            .endpoint(&name, &[&format!("10.0.1.{}", 10 + i)])
            .isolate(
                &name,
                palisade_ir::Direction::Ingress,
                &["default/allow-frontend"],
            )
            .allow_in(
                &name,
                palisade_ir::Direction::Ingress,
                Some("frontend pods"),
                Some(common::peers(front)),
                Some(common::ports(&[common::tcp(8080, 8080)])),
                "default/allow-frontend",
                0,
            );
    }
    rs.build()
}

#[test]
fn a_pod_joining_a_selector_is_one_ipset_add_and_leaving_one_del() {
    let before = web(20, &["10.0.2.10", "10.0.2.20"]);
    let after = web(20, &["10.0.2.10", "10.0.2.20", "10.0.2.30"]);
    let mut dp = dataplane();
    dp.apply_full(&before).unwrap();
    for (from, to, verb) in [(&before, &after, "add"), (&after, &before, "del")] {
        let restores = dp.executor().restores.len();
        let inputs = dp.executor().ipset_inputs.len();
        let report = update(&mut dp, from, to);
        assert_eq!(report.operations, 1, "{verb}: {report:?}");
        let fake = dp.executor();
        assert_eq!(
            fake.restores.len(),
            restores,
            "{verb}: no iptables-restore at all"
        );
        let sent: Vec<&String> = fake.ipset_inputs[inputs..].iter().collect();
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(sent[0].lines().count(), 1, "{}", sent[0]);
        assert!(
            sent[0].starts_with(&format!("{verb} PAL-"))
                && sent[0].trim_end().ends_with(" 10.0.2.30"),
            "{}",
            sent[0]
        );
    }
}

#[test]
fn a_new_endpoint_rewrites_one_dispatch_path_and_fills_its_gate_after_the_rules() {
    let before = web(40, &["10.0.2.10"]);
    let after = web(41, &["10.0.2.10"]);
    let r = palisade_iptables::render_update(&before, &after);
    assert!(r.ipset_before.is_empty(), "{}", r.ipset_before);
    assert_eq!(r.ipset_after.trim_end(), "add PAL-GI-4 10.0.1.50");
    // The endpoint's chain and at most the tree nodes on its path (root included).
    let declared = r.restore[0].lines().filter(|l| l.starts_with(':')).count();
    assert!(declared <= 3, "{}", r.restore[0]);
    assert!(r.restore[1].is_empty(), "IPv6 untouched: {}", r.restore[1]);
}

#[test]
fn foreign_chains_rules_and_sets_survive_every_apply() {
    let mut fake = FakeIptables::new();
    for family in Family::BOTH {
        fake.plant_chain(family, "KUBE-SERVICES", &["-j RETURN"]);
        fake.plant_chain(family, "FORWARD", &["-j KUBE-SERVICES"]);
    }
    fake.plant_set("KUBE-NODE-IPS", &["192.0.2.1"]);
    let mut dp = IptablesDataplane::new(fake);
    let check = |dp: &IptablesDataplane<FakeIptables>, step: &str| {
        for family in Family::BOTH {
            assert_eq!(
                dp.executor().chain(family, "KUBE-SERVICES").unwrap(),
                ["-j RETURN"],
                "{step}"
            );
            assert!(
                dp.executor()
                    .chain(family, "FORWARD")
                    .unwrap()
                    .iter()
                    .any(|r| r == "-j KUBE-SERVICES"),
                "{step}"
            );
        }
        assert!(
            dp.executor()
                .set("KUBE-NODE-IPS")
                .unwrap()
                .contains("192.0.2.1"),
            "{step}"
        );
    };
    let all = scenarios();
    dp.apply_full(&all[1]).unwrap();
    check(&dp, "full");
    for w in all.windows(2).take(12) {
        update(&mut dp, &w[0], &w[1]);
        check(&dp, "update");
    }
    dp.apply_full(&all[3]).unwrap();
    check(&dp, "second full");
    // The hook is not duplicated by a second full apply.
    assert_eq!(
        dp.executor()
            .chain(Family::V4, "FORWARD")
            .unwrap()
            .iter()
            .filter(|r| r.contains("PAL-FORWARD"))
            .count(),
        1
    );
    dp.remove().unwrap();
    check(&dp, "remove");
    assert!(dp.executor().chain(Family::V4, "PAL-FORWARD").is_none());
    use palisade_iptables::IptablesExecutor as _;
    assert!(
        dp.executor_mut()
            .ipset_names()
            .unwrap()
            .iter()
            .all(|n| !n.starts_with("PAL-"))
    );
}

#[test]
fn a_failed_restore_changes_nothing() {
    let all = scenarios();
    let (a, b) = (&all[2], &common::combined());
    let mut dp = dataplane();
    dp.apply_full(a).unwrap();
    let before = state(&mut dp);
    // The update's IPv4 restore fails, and so does the one of the full apply it falls
    // back to; both undo their ipset steps.
    dp.executor_mut()
        .push_failure("iptables-restore: line 3 failed");
    dp.executor_mut()
        .push_failure("iptables-restore: line 3 failed");
    let err = dp.apply_update(a, b, &RulesetDiff::between(a, b));
    assert!(err.is_err());
    assert!(err.unwrap_err().to_string().contains("iptables-nft"));
    assert_eq!(state(&mut dp), before);
}

#[test]
fn a_failed_ipv6_restore_undoes_the_ipv4_half() {
    let all = scenarios();
    let (a, b) = (&all[2], &common::combined());
    let mut dp = dataplane();
    dp.apply_full(a).unwrap();
    let before = state(&mut dp);
    // The update's ipset before and IPv4 restore run; the IPv6 restore is rejected.
    let failing = FailV6 {
        inner: dp.into_executor(),
        fail: true,
    };
    let mut dp = IptablesDataplane::new(failing);
    // The new dataplane takes `a` as applied (it has no plan of its own yet); the update
    // fails on IPv6, and so does the full apply it falls back to.
    assert!(dp.apply_update(a, b, &RulesetDiff::between(a, b)).is_err());
    let mut fake = dp.into_executor().inner;
    let mut check = IptablesDataplane::new(std::mem::take(&mut fake));
    assert_eq!(check.kernel_state().unwrap(), before);
}

/// Rejects every IPv6 restore.
struct FailV6 {
    inner: FakeIptables,
    fail: bool,
}

impl palisade_iptables::IptablesExecutor for FailV6 {
    fn mode(&self) -> palisade_iptables::IptablesMode {
        self.inner.mode()
    }
    fn restore(
        &mut self,
        family: Family,
        input: &str,
    ) -> Result<(), palisade_iptables::IptablesError> {
        if self.fail && family == Family::V6 {
            return Err(palisade_iptables::IptablesError::Failed {
                command: "ip6tables-restore".into(),
                status: "exit status: 1".into(),
                stderr: "injected".into(),
            });
        }
        self.inner.restore(family, input)
    }
    fn save(&mut self, family: Family) -> Result<String, palisade_iptables::IptablesError> {
        self.inner.save(family)
    }
    fn ipset_restore(&mut self, input: &str) -> Result<(), palisade_iptables::IptablesError> {
        self.inner.ipset_restore(input)
    }
    fn ipset_save(&mut self) -> Result<String, palisade_iptables::IptablesError> {
        self.inner.ipset_save()
    }
    fn ipset_names(&mut self) -> Result<Vec<String>, palisade_iptables::IptablesError> {
        self.inner.ipset_names()
    }
}

#[test]
fn drift_is_repaired_by_a_full_apply_and_an_update_falls_back_to_one() {
    let all = scenarios();
    let rs = common::combined();
    let mut dp = dataplane();
    dp.apply_full(&rs).unwrap();
    let want = state(&mut dp);
    dp.executor_mut().tamper();
    assert_ne!(state(&mut dp), want);
    dp.apply_full(&rs).unwrap();
    assert_eq!(state(&mut dp), want);
    // An update onto a tampered kernel fails and falls back to a full apply.
    dp.executor_mut().tamper();
    let report = update(&mut dp, &rs, &all[4]);
    assert!(report.full, "{report:?}");
    assert_eq!(state(&mut dp), full_state(&all[4]));
}

#[test]
fn invalid_rulesets_are_refused_before_anything_runs() {
    let mut rs = common::combined();
    // A rule naming a set the ruleset lacks.
    rs.peer_sets.clear();
    let mut dp = dataplane();
    let err = dp.apply_full(&rs).expect_err("invalid");
    assert!(err.to_string().contains("iptables"), "{err}");
    assert!(dp.executor().restores.is_empty() && dp.executor().ipset_inputs.is_empty());
}
