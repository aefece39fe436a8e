//! The dataplane contract suite (tests/contract/mod.rs) for the iptables + ipset backend,
//! on both iptables backends: the whole suite on iptables-nft (`iptables_nft::*`) and on
//! iptables-legacy (`iptables_legacy::*`), plus checks that other programs' rules and
//! sets survive every apply and that real packets move the counters `counters()` reports.

#[macro_use]
mod contract;

use contract::BackendUnderTest;
use palisade_iptables::{
    Family, IptablesDataplane, IptablesError, IptablesExecutor, IptablesMode, SystemIptables,
};
use palisade_ir::Dataplane;
use palisade_model::IpFamily;

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
            make_with_events: Some(|netns, events| -> Box<dyn Dataplane> {
                Box::new(
                    IptablesDataplane::new(SystemIptables::new(Some(netns), Some($mode)))
                        .with_events(Some(events)),
                )
            }),
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

/// Real packets move the counters `counters()` reports: an allowed connection is counted on
/// its policy rule (the named-peer rule, as `palisade_ir::eval` attributes it, not the
/// any-peer rule that also matches), a denied one on the endpoint's default deny, in both
/// families.
fn counters_follow_real_packets(b: &BackendUnderTest) {
    use palisade_ir::{
        AllowRule, Direction, DirectionRules, Endpoint, NodeRuleset, PeerMatch, PeerSet, PortMatch,
        PortRange, PortSet, Protocol as IrProtocol, RuleOrigin, SetId,
    };
    use palisade_lab::{Lab, LabPod, LabSpec, can_run_root_tests};
    use palisade_model::{Key, Protocol};
    use std::time::Duration;
    if !can_run_root_tests(true) {
        return;
    }
    let _serial = contract::serial();
    let client = Key::new("c", "client");
    let server = Key::new("c", "server");
    let lab = Lab::create(LabSpec {
        nodes: 2,
        pods: vec![
            LabPod::new(client.clone()).on_node(0),
            LabPod::new(server.clone())
                .on_node(1)
                .with_ports([(80, Protocol::Tcp), (81, Protocol::Tcp)]),
        ],
        ..LabSpec::default()
    })
    .expect("lab");
    lab.serve(&server, &[(80, Protocol::Tcp), (81, Protocol::Tcp)])
        .expect("serve");
    let origin = |policy: &str| RuleOrigin {
        policy_namespace: "c".into(),
        policy_name: policy.into(),
        direction: Direction::Ingress,
        rule_index: 0,
    };
    let mut rs = NodeRuleset {
        node: lab.node_names()[1].clone(),
        ..Default::default()
    };
    let ports = PortSet {
        ranges: vec![PortRange {
            protocol: IrProtocol::Tcp,
            first: 80,
            last: 80,
        }],
    };
    let port_id = ports.id();
    rs.port_sets.insert(port_id.clone(), ports);
    let peers = PeerSet {
        addresses: lab.pod_ips(&client).iter().copied().collect(),
        blocks: Vec::new(),
    };
    let peer_id = SetId::peer_from_definition("the client");
    rs.peer_sets.insert(peer_id.clone(), peers);
    rs.endpoints.insert(
        server.to_string(),
        Endpoint {
            name: server.to_string(),
            ips: lab.pod_ips(&server).to_vec(),
            ingress: DirectionRules {
                isolated: true,
                isolated_by: vec!["c/any".into(), "c/named".into()],
                rules: vec![
                    // Listed first, but eval counts the rule naming the peer.
                    AllowRule {
                        peers: PeerMatch::Any,
                        ports: PortMatch::Set(port_id.clone()),
                        origin: origin("any"),
                    },
                    AllowRule {
                        peers: PeerMatch::Set(peer_id),
                        ports: PortMatch::Set(port_id),
                        origin: origin("named"),
                    },
                ],
                ..Default::default()
            },
            egress: Default::default(),
        },
    );
    let mut dp = (b.make)(lab.node_netns(1));
    dp.apply_full(&rs).expect("apply");
    let before = dp.counters().expect("counters");
    for family in [IpFamily::V4, IpFamily::V6] {
        let to = lab.pod_ip(&server, family).expect("server address");
        let ok = lab.probe(&client, to, 80, Protocol::Tcp, Duration::from_millis(1000));
        assert!(ok.is_connected(), "{}: {family} port 80: {ok}", b.name);
        let denied = lab.probe(&client, to, 81, Protocol::Tcp, Duration::from_millis(400));
        assert!(
            !denied.is_connected(),
            "{}: {family} port 81: {denied}",
            b.name
        );
    }
    let after = dp.counters().expect("counters");
    let allowed =
        |c: &palisade_ir::Counters, p: &str| c.allowed.get(&origin(p)).map_or(0, |n| n.packets);
    let denied = |c: &palisade_ir::Counters| {
        c.default_deny
            .get(&(server.to_string(), Direction::Ingress))
            .map_or(0, |n| n.packets)
    };
    // One SYN per family reaches the rules (established packets stop at the hook); a
    // dropped SYN may be sent again.
    assert_eq!(
        allowed(&after, "named") - allowed(&before, "named"),
        2,
        "{}: {after:?}",
        b.name
    );
    assert_eq!(allowed(&after, "any"), 0, "{}: {after:?}", b.name);
    assert!(
        denied(&after) - denied(&before) >= 2,
        "{}: {after:?}",
        b.name
    );
    dp.remove().expect("remove");
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
    fn verdict_events_name_the_engine_reason() {
        crate::contract::events::events_name_the_engine_reason(&super::NFT);
    }

    #[test]
    fn foreign_rules_survive() {
        super::foreign_rules_survive(&super::NFT, IptablesMode::Nft);
    }

    #[test]
    fn counters_follow_real_packets() {
        super::counters_follow_real_packets(&super::NFT);
    }
}

mod iptables_legacy {
    use palisade_iptables::IptablesMode;

    contract_tests!(super::LEGACY);

    #[test]
    fn verdict_events_name_the_engine_reason() {
        crate::contract::events::events_name_the_engine_reason(&super::LEGACY);
    }

    #[test]
    fn foreign_rules_survive() {
        super::foreign_rules_survive(&super::LEGACY, IptablesMode::Legacy);
    }

    #[test]
    fn counters_follow_real_packets() {
        super::counters_follow_real_packets(&super::LEGACY);
    }
}
