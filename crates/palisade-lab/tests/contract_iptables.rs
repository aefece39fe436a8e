//! The dataplane contract suite (tests/contract/mod.rs) for the iptables + ipset backend,
//! on both iptables backends: the whole suite on iptables-nft (`iptables_nft::*`) and on
//! iptables-legacy (`iptables_legacy::*`), plus checks that other programs' rules and
//! sets survive every apply.

#[macro_use]
mod contract;

use contract::BackendUnderTest;
use palisade_iptables::{
    Family, IptablesDataplane, IptablesError, IptablesExecutor, IptablesMode, SystemIptables,
};
use palisade_ir::Dataplane;

/// Real tools, but every `iptables-restore` transaction ends with a rule for a chain that
/// does not exist: the kernel rejects the whole transaction.
struct Rejected(SystemIptables);

impl IptablesExecutor for Rejected {
    fn mode(&self) -> IptablesMode {
        self.0.mode()
    }
    fn restore(&mut self, family: Family, input: &str) -> Result<(), IptablesError> {
        let input = input.replace("COMMIT\n", "-A PAL-TEST-NO-SUCH-CHAIN -j ACCEPT\nCOMMIT\n");
        self.0.restore(family, &input)
    }
    fn save(&mut self, family: Family) -> Result<String, IptablesError> {
        self.0.save(family)
    }
    fn ipset_restore(&mut self, input: &str) -> Result<(), IptablesError> {
        self.0.ipset_restore(input)
    }
    fn ipset_save(&mut self) -> Result<String, IptablesError> {
        self.0.ipset_save()
    }
    fn ipset_names(&mut self) -> Result<Vec<String>, IptablesError> {
        self.0.ipset_names()
    }
}

macro_rules! backend {
    ($name:literal, $mode:expr) => {
        BackendUnderTest {
            name: $name,
            make: |netns| -> Box<dyn Dataplane> {
                Box::new(IptablesDataplane::new(SystemIptables::new(
                    Some(netns),
                    Some($mode),
                )))
            },
            make_failing: |netns| -> Box<dyn Dataplane> {
                Box::new(IptablesDataplane::new(Rejected(SystemIptables::new(
                    Some(netns),
                    Some($mode),
                ))))
            },
            tamper: |netns| {
                // A second dataplane, unknown to the one under test, removes everything.
                IptablesDataplane::new(SystemIptables::new(Some(netns), Some($mode)))
                    .remove()
                    .expect("delete the chains and sets behind the backend's back");
            },
            make_with_events: |netns, events| -> Box<dyn Dataplane> {
                Box::new(
                    IptablesDataplane::new(SystemIptables::new(Some(netns), Some($mode)))
                        .with_events(Some(events)),
                )
            },
        }
    };
}

const NFT: BackendUnderTest = backend!("iptables-nft", IptablesMode::Nft);
const LEGACY: BackendUnderTest = backend!("iptables-legacy", IptablesMode::Legacy);

/// Other programs' chain, rule in FORWARD and ipset in a lab node survive full applies,
/// updates and the removal of Palisade's objects.
fn foreign_rules_survive(b: &BackendUnderTest, mode: IptablesMode) {
    use palisade_lab::{Lab, LabSpec, can_run_root_tests};
    if !can_run_root_tests(true) {
        return;
    }
    let _serial = contract::serial();
    let lab = Lab::create(LabSpec {
        nodes: 1,
        ..LabSpec::default()
    })
    .expect("lab");
    let tool = |family: Family, what: &str| {
        let m = match mode {
            IptablesMode::Legacy => "legacy",
            IptablesMode::Nft => "nft",
        };
        format!("{}-{m}-{what}", family.command())
    };
    let run = |args: &[&str], stdin: Option<&[u8]>| {
        let out = lab
            .run_in_node(0, args, stdin)
            .expect("run in the lab node");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let foreign = "*filter\n:FOREIGN-CHAIN - [0:0]\n-A FOREIGN-CHAIN -s 192.0.2.7/32 -j ACCEPT\n-A FORWARD -s 192.0.2.8/32 -j FOREIGN-CHAIN\nCOMMIT\n";
    let foreign6 = "*filter\n:FOREIGN-CHAIN - [0:0]\n-A FOREIGN-CHAIN -s 2001:db8::7/128 -j ACCEPT\n-A FORWARD -s 2001:db8::8/128 -j FOREIGN-CHAIN\nCOMMIT\n";
    run(
        &[&tool(Family::V4, "restore"), "--noflush"],
        Some(foreign.as_bytes()),
    );
    run(
        &[&tool(Family::V6, "restore"), "--noflush"],
        Some(foreign6.as_bytes()),
    );
    run(&["ipset", "create", "foreign-set", "hash:ip"], None);
    run(&["ipset", "add", "foreign-set", "192.0.2.9"], None);
    let check = |step: &str| {
        for (family, addr) in [
            (Family::V4, "192.0.2.7/32"),
            (Family::V6, "2001:db8::7/128"),
        ] {
            let save = run(&[&tool(family, "save"), "-t", "filter"], None);
            assert!(
                save.contains(&format!("-A FOREIGN-CHAIN -s {addr} -j ACCEPT")),
                "{}: {step}: the foreign chain lost its rule:\n{save}",
                b.name
            );
            assert!(
                save.contains("-j FOREIGN-CHAIN"),
                "{}: {step}: the foreign FORWARD rule is gone:\n{save}",
                b.name
            );
        }
        let sets = run(&["ipset", "save", "foreign-set"], None);
        assert!(
            sets.contains("add foreign-set 192.0.2.9"),
            "{}: {step}: {sets}",
            b.name
        );
    };
    let sequence = ruleset_sequence_small(&lab);
    let mut dp = (b.make)(lab.node_netns(0));
    let mut current = palisade_ir::NodeRuleset::default();
    for (i, rs) in sequence.iter().enumerate() {
        if i == 0 {
            dp.apply_full(rs).expect("full apply");
        } else {
            let diff = palisade_ir::RulesetDiff::between(&current, rs);
            dp.apply_update(&current, rs, &diff).expect("update");
        }
        current = rs.clone();
        check(&format!("after apply {i}"));
        let save = run(&[&tool(Family::V4, "save"), "-t", "filter"], None);
        assert!(
            save.contains("-j PAL-FORWARD"),
            "the hook is installed:\n{save}"
        );
    }
    dp.apply_full(&current).expect("full apply again");
    check("after a second full apply");
    dp.remove().expect("remove");
    check("after remove");
    let save = run(&[&tool(Family::V4, "save"), "-t", "filter"], None);
    assert!(
        !save.contains("PAL-"),
        "remove left Palisade's chains:\n{save}"
    );
    run(&["ipset", "destroy", "foreign-set"], None);
}

/// `--backend iptables` picks the iptables backend that holds more rules, as kube-proxy's
/// iptables wrapper does: nf_tables on a fresh node, legacy once another program's rules
/// live there.
#[test]
fn iptables_backend_detection_follows_the_rules_on_the_node() {
    use palisade_lab::{Lab, LabSpec, can_run_root_tests};
    if !can_run_root_tests(true) {
        return;
    }
    let _serial = contract::serial();
    let lab = Lab::create(LabSpec {
        nodes: 1,
        ..LabSpec::default()
    })
    .expect("lab");
    let ns = lab.node_netns(0);
    let detect = || SystemIptables::detect(Some(ns)).expect("detect");
    assert_eq!(detect(), IptablesMode::Nft, "a fresh node");
    let restore = |tool: &str, rules: &str| {
        let input = format!("*filter\n:OTHER-AGENT - [0:0]\n{rules}COMMIT\n");
        let out = lab
            .run_in_node(0, &[tool, "--noflush"], Some(input.as_bytes()))
            .expect("restore");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    restore(
        "iptables-legacy-restore",
        "-A OTHER-AGENT -s 192.0.2.1/32 -j RETURN\n-A OTHER-AGENT -s 192.0.2.2/32 -j RETURN\n",
    );
    assert_eq!(detect(), IptablesMode::Legacy, "legacy rules present");
    assert_eq!(
        SystemIptables::new(Some(ns), None).mode,
        IptablesMode::Legacy,
        "the dataplane follows the detection"
    );
    restore(
        "iptables-nft-restore",
        "-A OTHER-AGENT -s 192.0.2.1/32 -j RETURN\n-A OTHER-AGENT -s 192.0.2.2/32 -j RETURN\n-A OTHER-AGENT -s 192.0.2.3/32 -j RETURN\n",
    );
    assert_eq!(detect(), IptablesMode::Nft, "more nf_tables rules");
}

/// A few generated rulesets of the lab's only node.
fn ruleset_sequence_small(lab: &palisade_lab::Lab) -> Vec<palisade_ir::NodeRuleset> {
    use palisade_engine::ClusterState;
    use palisade_testkit::{GenParams, generate_cluster};
    let mut out = Vec::new();
    for (seed, policies) in [(1u64, 10usize), (1, 11), (2, 15)] {
        let params = GenParams {
            namespaces: 3,
            pods: 40,
            policies,
            nodes: 1,
            dual_stack: true,
            ..GenParams::default()
        };
        let objects = generate_cluster(seed, params);
        let mut rs = ClusterState::from_objects(&objects).compile_node("node-0");
        rs.node = lab.node_names()[0].clone();
        out.push(rs);
    }
    assert!(out.iter().any(|rs| rs.stats().endpoints > 3));
    out
}

mod iptables_nft {
    use palisade_iptables::IptablesMode;

    contract_tests!(super::NFT);

    #[test]
    fn foreign_rules_survive() {
        super::foreign_rules_survive(&super::NFT, IptablesMode::Nft);
    }
}

mod iptables_legacy {
    use palisade_iptables::IptablesMode;

    contract_tests!(super::LEGACY);

    #[test]
    fn foreign_rules_survive() {
        super::foreign_rules_survive(&super::LEGACY, IptablesMode::Legacy);
    }
}
