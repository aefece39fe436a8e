//! The real kernel (root): the verifier accepts both programs, TCX and the clsact fallback
//! enforce the same, counters count, and `remove()` leaves nothing attached or pinned.

use std::time::Duration;

use palisade_ebpf::{BpfExecutor, EbpfDataplane, SystemBpf};
use palisade_ir::{
    AllowRule, Dataplane, Direction, DirectionRules, Endpoint, NodeRuleset, PeerMatch, PeerSet,
    PortMatch, PortRange, PortSet, Protocol as IrProtocol, RuleOrigin, SetId,
};
use palisade_lab::{Lab, LabPod, LabSpec, can_run_root_tests};
use palisade_model::{IpFamily, Key, Protocol};

/// Removes this netns' pins if the test fails half-way (the lab removes the netns).
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = SystemBpf::in_netns(&self.0).remove_all();
    }
}

fn origin() -> RuleOrigin {
    RuleOrigin {
        policy_namespace: "c".into(),
        policy_name: "web".into(),
        direction: Direction::Ingress,
        rule_index: 0,
    }
}

#[test]
fn tcx_and_clsact_enforce_count_and_remove_cleanly() {
    if !can_run_root_tests(true) {
        return;
    }
    let client = Key::new("c", "client");
    let server = Key::new("c", "server");
    let ports = [(80, Protocol::Tcp), (81, Protocol::Tcp)];
    let lab = Lab::create(LabSpec {
        nodes: 2,
        pods: vec![
            LabPod::new(client.clone()).on_node(0),
            LabPod::new(server.clone()).on_node(1).with_ports(ports),
        ],
        ..LabSpec::default()
    })
    .expect("lab");
    lab.serve(&server, &ports).expect("serve");
    let ns = lab.node_netns(1).to_string();
    let _cleanup = Cleanup(ns.clone());
    let mut rs = NodeRuleset {
        node: "node-1".into(),
        ..Default::default()
    };
    let port_set = PortSet {
        ranges: vec![PortRange {
            protocol: IrProtocol::Tcp,
            first: 80,
            last: 80,
        }],
    };
    rs.port_sets.insert(port_set.id(), port_set.clone());
    let peers = SetId::peer_from_definition("client");
    rs.peer_sets.insert(
        peers.clone(),
        PeerSet {
            addresses: lab.pod_ips(&client).iter().copied().collect(),
            blocks: vec![],
        },
    );
    rs.endpoints.insert(
        server.to_string(),
        Endpoint {
            name: server.to_string(),
            ips: lab.pod_ips(&server).to_vec(),
            ingress: DirectionRules {
                isolated: true,
                isolated_by: vec!["c/web".into()],
                rules: vec![AllowRule {
                    peers: PeerMatch::Set(peers),
                    ports: PortMatch::Set(port_set.id()),
                    origin: origin(),
                }],
                ..Default::default()
            },
            egress: DirectionRules::default(),
        },
    );
    let probe = |port: u16, family: IpFamily| {
        lab.probe(
            &client,
            lab.pod_ip(&server, family).expect("address"),
            port,
            Protocol::Tcp,
            Duration::from_millis(400),
        )
        .is_connected()
    };
    let ifname = lab.pod_interface(&server).expect("interface");
    let tc_filters = |dir: &str| {
        let out = lab
            .run_in_node(1, &["tc", "filter", "show", "dev", &ifname, dir], None)
            .expect("tc");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    for clsact in [false, true] {
        let exec = if clsact {
            SystemBpf::in_netns(&ns).with_clsact()
        } else {
            SystemBpf::in_netns(&ns)
        };
        let pins = exec.pin_dir().to_path_buf();
        let mut dp = EbpfDataplane::new(exec);
        dp.apply_full(&rs)
            .expect("apply (the verifier accepts both programs)");
        for family in [IpFamily::V4, IpFamily::V6] {
            assert!(
                probe(80, family),
                "clsact {clsact}: {family} port 80 allowed"
            );
            assert!(
                !probe(81, family),
                "clsact {clsact}: {family} port 81 denied"
            );
        }
        assert_eq!(
            tc_filters("ingress").contains("palisade_from_p"),
            clsact,
            "the programs sit where they should: {}",
            tc_filters("ingress")
        );
        if !clsact {
            // Drift: someone detaches our links without unpinning them; the next full
            // apply notices the defunct links and attaches again.
            for e in std::fs::read_dir(pins.join("links")).expect("links") {
                let path = e.expect("entry").path();
                let out = std::process::Command::new("bpftool")
                    .args(["link", "detach", "pinned"])
                    .arg(&path)
                    .output()
                    .expect("bpftool");
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            assert!(probe(81, IpFamily::V4), "detached: nothing enforces");
            dp.apply_full(&rs).expect("apply again");
            assert!(!probe(81, IpFamily::V4), "attached again");
            assert!(probe(80, IpFamily::V4));
        }
        let counters = dp.counters().expect("counters");
        assert!(counters.allowed[&origin()].packets >= 2, "{counters:?}");
        assert!(
            counters.default_deny[&(server.to_string(), Direction::Ingress)].packets >= 2,
            "{counters:?}"
        );
        dp.remove().expect("remove");
        assert!(!pins.exists(), "remove() unpins everything");
        assert!(!tc_filters("ingress").contains("palisade"));
        assert!(!tc_filters("egress").contains("palisade"));
        assert!(probe(81, IpFamily::V4), "nothing enforces after remove()");
    }
}
