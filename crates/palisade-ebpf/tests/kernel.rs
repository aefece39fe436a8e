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

/// A throwaway network namespace with a veth pair inside it (ifindex 2 and 3), deleted
/// with its pins when dropped.
struct TestNetns(String);

impl TestNetns {
    fn create() -> TestNetns {
        let name = format!("palisade-ebpft-{:08x}", rand_suffix());
        let run = |args: &[&str]| {
            let out = std::process::Command::new("ip")
                .args(args)
                .output()
                .expect("ip");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&["netns", "add", &name]);
        let ns = TestNetns(name.clone());
        run(&[
            "-n", &name, "link", "add", "d1", "type", "veth", "peer", "name", "d2",
        ]);
        for d in ["d1", "d2"] {
            run(&["-n", &name, "link", "set", d, "up"]);
        }
        ns
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = SystemBpf::in_netns(&self.0).remove_all();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .output();
    }
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id()
}

/// An Ethernet + IPv4 + TCP frame (checksums left zero: tc programs do not check them).
fn tcp_frame(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, syn_only: bool) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 20 + 20];
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let tcp = &mut f[34..54];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = if syn_only { 0x02 } else { 0x10 };
    f
}

/// `ns/a` at `a`: ingress isolated with no rule (deny all), egress open.
fn deny_all_ingress_of(a: [u8; 4]) -> NodeRuleset {
    let mut rs = NodeRuleset {
        node: "n".into(),
        ..Default::default()
    };
    rs.endpoints.insert(
        "ns/a".into(),
        Endpoint {
            name: "ns/a".into(),
            ips: vec![std::net::IpAddr::from(a)],
            ingress: DirectionRules {
                isolated: true,
                isolated_by: vec!["ns/p".into()],
                ..Default::default()
            },
            egress: DirectionRules::default(),
        },
    );
    rs
}

/// A scratch namespace, an executor for BPF_PROG_TEST_RUN in it, the pod `a` whose ingress
/// is denied and a peer `b`.
struct TestRunSetup {
    ns: TestNetns,
    exec: SystemBpf,
    a: [u8; 4],
    b: [u8; 4],
    rs: NodeRuleset,
}

impl TestRunSetup {
    fn new() -> TestRunSetup {
        let ns = TestNetns::create();
        let exec = SystemBpf::in_netns(&ns.0);
        let a = [10, 1, 0, 1];
        TestRunSetup {
            ns,
            exec,
            a,
            b: [10, 0, 0, 9],
            rs: deny_all_ingress_of(a),
        }
    }
}

const SHOT: i32 = 2;
const PASS: i32 = -1;

/// The loaded program itself (BPF_PROG_TEST_RUN, no packet leaves anywhere): a reply
/// passes on the interface and direction its flow was seen, a forged copy on another
/// interface, another port pair, or a SYN with the reply's tuple is judged and dropped.
#[test]
fn the_kernel_program_lets_no_forged_packet_ride_a_flow() {
    if !can_run_root_tests(true) {
        return;
    }
    let TestRunSetup { ns, exec, a, b, rs } = TestRunSetup::new();
    let mut dp = EbpfDataplane::new(SystemBpf::in_netns(&ns.0));
    dp.apply_full(&rs).expect("apply");
    let (d1, d2) = (2, 3);
    let run =
        |to_pod, frame: &[u8], ifindex| exec.test_run(to_pod, frame, ifindex, 7).expect("test run");
    // Unsolicited: dropped.
    assert_eq!(run(true, &tcp_frame(b, a, 80, 1000, false), d1), SHOT);
    // a's connection out (egress open), then the reply: both pass.
    assert_eq!(run(false, &tcp_frame(a, b, 1000, 80, true), d1), PASS);
    assert_eq!(run(true, &tcp_frame(b, a, 80, 1000, false), d1), PASS);
    // The same reply on another interface, another port pair, or as a SYN: dropped.
    assert_eq!(run(true, &tcp_frame(b, a, 80, 1000, false), d2), SHOT);
    assert_eq!(run(true, &tcp_frame(b, a, 81, 1000, false), d1), SHOT);
    assert_eq!(run(true, &tcp_frame(b, a, 80, 1000, true), d1), SHOT);
    // The node's own packets (no input interface) always pass.
    let own = exec
        .test_run(true, &tcp_frame(b, a, 80, 2000, true), d1, 0)
        .expect("test run");
    assert_eq!(own, PASS);
    let counters = dp.counters().expect("counters");
    assert_eq!(
        counters.default_deny[&("ns/a".to_string(), Direction::Ingress)].packets,
        4,
        "{counters:?}"
    );
    dp.remove().expect("remove");
}

/// The loaded program's verdict events (BPF_PROG_TEST_RUN): a denied SYN is reported with
/// the tag of its reason and the packet's tuple; with nobody reading, a flood fills the ring
/// buffer and what had no room is counted as lost, never blocking the packet path.
#[test]
fn the_kernel_program_reports_denials_and_counts_what_the_ring_cannot_hold() {
    use palisade_ir::events::{EventConfig, EventTag};
    if !can_run_root_tests(true) {
        return;
    }
    let TestRunSetup { ns, exec, a, b, rs } = TestRunSetup::new();
    // No rate limit to speak of: the ring buffer is what bounds the reports here.
    let events = EventConfig {
        rate_per_second: 1_000_000,
        burst: 1_000_000,
        ..EventConfig::default()
    };
    let mut dp = EbpfDataplane::new(SystemBpf::in_netns(&ns.0)).with_events(Some(events));
    let mut source = dp.events().expect("ring buffer");
    dp.apply_full(&rs).expect("apply");
    let run = |sport: u16| {
        exec.test_run(true, &tcp_frame(b, a, sport, 80, true), 2, 7)
            .expect("test run")
    };
    assert_eq!(run(40000), SHOT);
    let got = source.recv(Duration::from_millis(500)).expect("recv");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].tag, EventTag::denied("ns/a", Direction::Ingress));
    assert_eq!(
        (got[0].packet.src_port, got[0].packet.dst_port),
        (Some(40000), Some(80))
    );
    assert_eq!(source.lost(), 0);
    // 256 KiB of ring hold about 4,700 records of 48 bytes (+ 8 of header): 8,000 denied
    // SYNs, nobody reading.
    for i in 0..8000u16 {
        assert_eq!(run(10000 + i), SHOT);
    }
    let mut read = 0;
    for _ in 0..50 {
        let batch = source.recv(Duration::from_millis(100)).expect("recv");
        if batch.is_empty() {
            break;
        }
        read += batch.len() as u64;
    }
    let lost = source.lost();
    assert!(lost > 0, "the ring overflowed: {read} read");
    assert_eq!(read + lost, 8000, "every report is read or counted lost");
    dp.remove().expect("remove");
}
