//! The dataplane contract suite (palisade-ir's "What every backend guarantees"), written
//! once and run by name for every registered backend: each backend has a `contract_<name>.rs`
//! that hands a [`BackendUnderTest`] to these functions. Root only.
//!
//! - [`upstream_conformance`]: the upstream e2e suite with real packets, per family.
//! - [`update_equals_full`]: a chain of updates leaves the kernel exactly as full applies do,
//!   compared as kernel state ([`palisade_ir::Dataplane::kernel_state`]), not as text.
//! - [`atomic_under_large_updates`]: probes running while large updates come and go never
//!   see a state that is neither the old nor the new ruleset.
//! - [`failed_apply_keeps_previous`]: a transaction the kernel rejects leaves the previous
//!   ruleset in force (real packets) and is reported.
//! - [`counters_follow_real_packets`]: allowed connections are counted on the rule eval
//!   attributes them to, denied ones on the endpoint's default deny (both families), and
//!   a counter reader on another thread reads the same, after applies and a removal.
//! - [`drift_is_repaired`]: someone deleting the backend's rules is undone by the
//!   reconciler's periodic full apply within a bounded time.
//!
//! - [`events`]: verdict events name the engine's reason; audit mode reports and never
//!   drops; the kernel rate-limits a flood.
//! - [`differential`]: random worlds, every probe equal to the engine's verdict, and its
//!   stress variant under CPU load.

#![allow(dead_code)]

pub mod differential;
pub mod events;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use palisade_conformance::{CaseFile, run};
use palisade_engine::ClusterState;
use palisade_ir::events::EventConfig;
use palisade_ir::{
    AllowRule, Dataplane, Direction, DirectionRules, Endpoint, NodeRuleset, PeerMatch, PeerSet,
    PortMatch, PortRange, PortSet, Protocol as IrProtocol, Reconciler, ReconcilerConfig,
    RuleOrigin, RulesetDiff, SetId,
};
use palisade_lab::enforce::{Enforcer, LabProber};
use palisade_lab::{Lab, LabPod, LabSpec, ProbeOutcome, can_run_root_tests};
use palisade_model::{IpFamily, Key, Protocol};
use palisade_testkit::{GenParams, generate_cluster};

/// The shared tests of the suite for one backend, as `#[test]`s of the module it is
/// invoked in (`mod nft { contract_tests!(super::NFT); }`), each optionally holding a guard
/// built by `setup` while it runs.
#[macro_export]
macro_rules! contract_tests {
    ($b:path $(, setup = $setup:expr)?) => {
        #[test]
        fn upstream_e2e_ipv4() {
            $(let _setup = $setup;)?
            $crate::contract::upstream_conformance(&$b, palisade_model::IpFamily::V4);
        }

        #[test]
        fn upstream_e2e_ipv6() {
            $(let _setup = $setup;)?
            $crate::contract::upstream_conformance(&$b, palisade_model::IpFamily::V6);
        }

        #[test]
        fn update_equals_full_as_kernel_state() {
            $(let _setup = $setup;)?
            $crate::contract::update_equals_full(&$b);
        }

        #[test]
        fn atomic_under_large_updates() {
            $(let _setup = $setup;)?
            $crate::contract::atomic_under_large_updates(&$b);
        }

        #[test]
        fn failed_apply_keeps_previous() {
            $(let _setup = $setup;)?
            $crate::contract::failed_apply_keeps_previous(&$b);
        }

        #[test]
        fn counters_follow_real_packets() {
            $(let _setup = $setup;)?
            $crate::contract::counters_follow_real_packets(&$b);
        }

        #[test]
        fn drift_is_repaired() {
            $(let _setup = $setup;)?
            $crate::contract::drift_is_repaired(&$b);
        }

        #[test]
        fn random_worlds_real_packets_equal_engine_verdicts() {
            $(let _setup = $setup;)?
            $crate::contract::differential::random_clusters_real_packets_equal_engine_verdicts(&$b);
        }

        #[test]
        fn random_worlds_under_cpu_load() {
            $(let _setup = $setup;)?
            $crate::contract::differential::stress_long_sequences_under_cpu_load(&$b);
        }

        #[test]
        fn verdict_events_name_the_engine_reason() {
            $(let _setup = $setup;)?
            $crate::contract::events::events_name_the_engine_reason(&$b);
        }
    };
}

/// The suite's tests run one at a time: probes are timed, and the stress test loads every
/// core on purpose.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A backend as the suite drives it.
pub struct BackendUnderTest {
    pub name: &'static str,
    /// A dataplane that applies inside the network namespace `netns`.
    pub make: fn(netns: &str) -> Box<dyn Dataplane>,
    /// The same, except that every transaction it sends the kernel ends with a statement
    /// the kernel rejects: the whole transaction must then fail, changing nothing.
    pub make_failing: fn(netns: &str) -> Box<dyn Dataplane>,
    /// Deletes what the backend installed in `netns`, behind its back (drift).
    pub tamper: fn(netns: &str),
    /// A dataplane reporting verdict events.
    pub make_with_events: MakeWithEvents,
}

/// Builds a dataplane inside `netns` that reports verdict events as `events` says.
pub type MakeWithEvents = fn(netns: &str, events: EventConfig) -> Box<dyn Dataplane>;

fn upstream() -> CaseFile {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/conformance/upstream-e2e.yaml"
    );
    CaseFile::parse(&std::fs::read_to_string(path).unwrap(), path).unwrap()
}

pub fn upstream_conformance(b: &BackendUnderTest, family: IpFamily) {
    if !can_run_root_tests(true) {
        return;
    }
    let _serial = serial();
    let file = upstream();
    let spec = LabSpec {
        pods: file.pods.iter().map(|k| LabPod::new(k.clone())).collect(),
        ..LabSpec::default()
    };
    let lab = Lab::create(spec).expect("lab");
    let enforcer = Enforcer::new(&lab, |i| (b.make)(lab.node_netns(i)));
    let nodes = enforcer.node_of_pods(&file.pods);
    let addresses = enforcer.addresses(&file.pods, family);
    let mut prober = LabProber::new(enforcer, Duration::from_millis(1000));
    let report = run(&file, family, &addresses, &nodes, &[], &mut prober);
    for f in report.failures.iter().take(40) {
        eprintln!("FAIL {f}");
    }
    eprintln!(
        "{} {family}: {} ({:?})",
        b.name,
        report.summary(true),
        report.skip_reasons
    );
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.failed, 0);
    // Every TCP and UDP cell ran; only SCTP (3 probes x 72 cells) is skipped.
    assert_eq!(report.skipped, 3 * 72);
    assert_eq!(report.passed, 4680 - 3 * 72);
}

/// Node `node-0`'s rulesets of a sequence of generated clusters (dual-stack, named ports,
/// ipBlocks with excepts...), each a small step from the previous one: the same seed with
/// one more policy, then a new seed.
fn ruleset_sequence() -> Vec<NodeRuleset> {
    let mut out = Vec::new();
    for seed in 0..4u64 {
        for policies in [20, 21, 30] {
            let params = GenParams {
                namespaces: 5,
                pods: 80,
                policies,
                nodes: 2,
                dual_stack: true,
                ..GenParams::default()
            };
            let objects = generate_cluster(seed, params);
            out.push(ClusterState::from_objects(&objects).compile_node("node-0"));
        }
    }
    out.push(NodeRuleset {
        node: "node-0".into(),
        ..Default::default()
    });
    out
}

pub fn update_equals_full(b: &BackendUnderTest) {
    if !can_run_root_tests(true) {
        return;
    }
    let _serial = serial();
    let lab = Lab::create(LabSpec {
        nodes: 2,
        ..LabSpec::default()
    })
    .expect("lab");
    let sequence = ruleset_sequence();
    assert!(
        sequence.iter().any(|rs| rs.stats().endpoints > 5),
        "the generated rulesets enforce something"
    );
    let mut updated = Reconciler::new(
        (b.make)(lab.node_netns(0)),
        ReconcilerConfig { resync_every: None },
    );
    let mut fresh = (b.make)(lab.node_netns(1));
    let mut updates = 0;
    for (i, rs) in sequence.iter().enumerate() {
        match updated
            .reconcile(rs.clone())
            .unwrap_or_else(|e| panic!("step {i}: {e}"))
        {
            palisade_ir::Reconciled::Applied { report, .. } => updates += usize::from(!report.full),
            palisade_ir::Reconciled::Unchanged => {}
        }
        fresh
            .apply_full(rs)
            .unwrap_or_else(|e| panic!("step {i}: full: {e}"));
        let got = (b.make)(lab.node_netns(0))
            .kernel_state()
            .expect("state after updates");
        let want = fresh.kernel_state().expect("state after a full apply");
        assert!(
            got == want,
            "{}: step {i}: the kernel after updates differs from a full apply",
            b.name
        );
    }
    assert!(
        updates >= sequence.len() - 2,
        "{}: only {updates} steps went through updates",
        b.name
    );
}

/// Real packets move the counters `counters()` reports: an allowed connection is counted on
/// its policy rule (the named-peer rule, as `palisade_ir::eval` attributes it, not the
/// any-peer rule that also matches), a denied one on the endpoint's default deny, in both
/// families.
pub fn counters_follow_real_packets(b: &BackendUnderTest) {
    if !can_run_root_tests(true) {
        return;
    }
    let _serial = serial();
    let (lab, client, server) = client_server_lab();
    let origin = |policy: &str| origin(policy, Direction::Ingress, 0);
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
    // The agent reads counters on a thread of its own through a reader made before the
    // first apply: it must read what the dataplane reads, named after the last apply.
    let mut reader = dp.counter_reader().expect("a counter reader");
    let mut read_apart = || {
        std::thread::scope(|s| {
            s.spawn(|| reader.counters().expect("counter reader"))
                .join()
                .expect("reader thread")
        })
    };
    assert_eq!(
        read_apart(),
        palisade_ir::Counters::default(),
        "{}: nothing to read before the first apply",
        b.name
    );
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
    assert_eq!(read_apart(), after, "{}: the reader reads the same", b.name);
    // An update that adds an endpoint with a rule of its own: the reader follows it.
    let mut updated = rs.clone();
    let mut other = updated.endpoints[&server.to_string()].clone();
    other.name = "c/other".into();
    other.ips = vec!["198.18.250.7".parse().expect("address")];
    other.ingress.rules[0].origin = origin("other");
    updated.endpoints.insert(other.name.clone(), other);
    dp.apply_update(&rs, &updated, &RulesetDiff::between(&rs, &updated))
        .expect("update");
    assert_eq!(
        read_apart(),
        dp.counters().expect("counters"),
        "{}: the reader reads the same after an update",
        b.name
    );
    dp.remove().expect("remove");
    assert_eq!(
        read_apart(),
        palisade_ir::Counters::default(),
        "{}: nothing to read after remove()",
        b.name
    );
}

/// Two pods across nodes: client (node 0) -> server (node 1) serving TCP 80 and 81.
fn client_server_lab() -> (Lab, Key, Key) {
    let client = Key::new("c", "client");
    let server = Key::new("c", "server");
    let spec = LabSpec {
        nodes: 2,
        pods: vec![
            LabPod::new(client.clone()).on_node(0),
            LabPod::new(server.clone())
                .on_node(1)
                .with_ports([(80, Protocol::Tcp), (81, Protocol::Tcp)]),
        ],
        ..LabSpec::default()
    };
    let lab = Lab::create(spec).expect("lab");
    lab.serve(&server, &[(80, Protocol::Tcp), (81, Protocol::Tcp)])
        .expect("serve");
    (lab, client, server)
}

fn origin(policy: &str, direction: Direction, index: usize) -> RuleOrigin {
    RuleOrigin {
        policy_namespace: "c".into(),
        policy_name: policy.into(),
        direction,
        rule_index: index,
    }
}

/// The server's node ruleset: its ingress isolated, TCP 80 allowed from the client (in a
/// peer set that also holds `filler` other addresses), and `extra_endpoints` isolated
/// endpoints with rules of their own (to make an update large). TCP 81 stays denied.
fn server_ruleset(
    lab: &Lab,
    client: &Key,
    server: &Key,
    filler: u32,
    extra_endpoints: u32,
) -> NodeRuleset {
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
    let mut peers = PeerSet::default();
    peers.addresses.extend(lab.pod_ips(client).iter().copied());
    // Filler addresses outside the lab's ranges: only ever set members, never probed.
    for n in 0..filler {
        peers.addresses.insert(IpAddr::from([
            100,
            64 + (n >> 16) as u8,
            (n >> 8) as u8,
            n as u8,
        ]));
        peers.addresses.insert(IpAddr::from(std::net::Ipv6Addr::new(
            0x2001,
            0xdb8,
            0,
            0,
            0,
            0,
            (n >> 16) as u16,
            n as u16,
        )));
    }
    let peer_id = SetId::peer_from_definition("client and filler");
    rs.peer_sets.insert(peer_id.clone(), peers);
    let allow = |policy: &str| DirectionRules {
        isolated: true,
        isolated_by: vec![format!("c/{policy}")],
        rules: vec![AllowRule {
            peers: PeerMatch::Set(peer_id.clone()),
            ports: PortMatch::Set(port_id.clone()),
            origin: origin(policy, Direction::Ingress, 0),
        }],
        ..Default::default()
    };
    rs.endpoints.insert(
        server.to_string(),
        Endpoint {
            name: server.to_string(),
            ips: lab.pod_ips(server).to_vec(),
            ingress: allow("web"),
            egress: Default::default(),
        },
    );
    for n in 0..extra_endpoints {
        let name = format!("c/extra-{n}");
        let ips = vec![IpAddr::from([
            198,
            51,
            100 + (n / 250) as u8 % 3,
            (n % 250) as u8 + 1,
        ])];
        rs.endpoints.insert(
            name.clone(),
            Endpoint {
                name,
                ips,
                ingress: allow(&format!("extra-{}", n % 7)),
                egress: Default::default(),
            },
        );
    }
    rs
}

fn tcp_ok(lab: &Lab, client: &Key, server: &Key, port: u16, family: IpFamily) -> ProbeOutcome {
    let to = lab.pod_ip(server, family).expect("server address");
    lab.probe(client, to, port, Protocol::Tcp, Duration::from_millis(400))
}

pub fn atomic_under_large_updates(b: &BackendUnderTest) {
    if !can_run_root_tests(true) {
        return;
    }
    let _serial = serial();
    let (lab, client, server) = client_server_lab();
    // Two large rulesets that differ in thousands of elements and hundreds of chains, and
    // agree on the probed flows: 80 allowed, 81 denied.
    let small = server_ruleset(&lab, &client, &server, 10, 50);
    let large = server_ruleset(&lab, &client, &server, 3000, 400);
    let mut reconciler = Reconciler::new(
        (b.make)(lab.node_netns(1)),
        ReconcilerConfig { resync_every: None },
    );
    reconciler.reconcile(small.clone()).expect("first apply");
    assert!(tcp_ok(&lab, &client, &server, 80, IpFamily::V4).is_connected());
    let stop = AtomicBool::new(false);
    let probes = AtomicUsize::new(0);
    let updates = AtomicUsize::new(0);
    let violations = std::thread::scope(|scope| {
        let prober = scope.spawn(|| {
            let mut violations = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                for family in [IpFamily::V4, IpFamily::V6] {
                    let allowed = tcp_ok(&lab, &client, &server, 80, family);
                    let denied = tcp_ok(&lab, &client, &server, 81, family);
                    probes.fetch_add(2, Ordering::SeqCst);
                    if !allowed.is_connected() || denied.is_connected() {
                        violations.push(format!("{family}: 80 {allowed:?}, 81 {denied:?}"));
                    }
                }
            }
            violations
        });
        // Until enough probes ran across them: bounded by time (45 s) and count (3,000
        // updates), whatever the speed of updates and probes on this machine.
        let started = Instant::now();
        let mut i = 0;
        while i < 3000
            && (probes.load(Ordering::SeqCst) < 120 || i < 12)
            && started.elapsed() < Duration::from_secs(45)
        {
            let next = if i % 2 == 0 {
                large.clone()
            } else {
                small.clone()
            };
            reconciler
                .reconcile(next)
                .unwrap_or_else(|e| panic!("update {i}: {e}"));
            i += 1;
        }
        updates.store(i, Ordering::SeqCst);
        stop.store(true, Ordering::SeqCst);
        prober.join().expect("prober")
    });
    let (probes, updates) = (
        probes.load(Ordering::SeqCst),
        updates.load(Ordering::SeqCst),
    );
    eprintln!("{}: {probes} probes during {updates} large updates", b.name);
    assert!(probes >= 100, "too few probes ran: {probes}");
    assert!(
        violations.is_empty(),
        "{}: {} probes saw a state that is neither ruleset, e.g. {:?}",
        b.name,
        violations.len(),
        &violations[..violations.len().min(5)]
    );
}

pub fn failed_apply_keeps_previous(b: &BackendUnderTest) {
    if !can_run_root_tests(true) {
        return;
    }
    let _serial = serial();
    let (lab, client, server) = client_server_lab();
    let denying = server_ruleset(&lab, &client, &server, 0, 0);
    let mut opening = denying.clone();
    let ep = opening.endpoints.get_mut(&server.to_string()).unwrap();
    ep.ingress = DirectionRules::default();
    let mut good = (b.make)(lab.node_netns(1));
    good.apply_full(&denying).expect("apply");
    let before = good.kernel_state().expect("state");
    assert!(!tcp_ok(&lab, &client, &server, 81, IpFamily::V4).is_connected());

    let mut failing = Reconciler::new(
        (b.make_failing)(lab.node_netns(1)),
        ReconcilerConfig { resync_every: None },
    );
    let err = failing
        .reconcile(opening.clone())
        .expect_err("the kernel must reject the transaction");
    assert!(
        err.to_string().contains(b.name),
        "the error names the backend: {err}"
    );
    assert!(failing.failing());
    assert_eq!(
        good.kernel_state().expect("state"),
        before,
        "{}: a rejected transaction changed the kernel",
        b.name
    );
    assert!(
        !tcp_ok(&lab, &client, &server, 81, IpFamily::V4).is_connected(),
        "{}: a failed apply opened a denied flow",
        b.name
    );
    assert!(tcp_ok(&lab, &client, &server, 80, IpFamily::V4).is_connected());
    // An update (not a full apply) that fails changes nothing either.
    let mut failing = (b.make_failing)(lab.node_netns(1));
    let diff = palisade_ir::RulesetDiff::between(&denying, &opening);
    assert!(failing.apply_update(&denying, &opening, &diff).is_err());
    assert_eq!(good.kernel_state().expect("state"), before);
}

pub fn drift_is_repaired(b: &BackendUnderTest) {
    if !can_run_root_tests(true) {
        return;
    }
    let _serial = serial();
    let (lab, client, server) = client_server_lab();
    let rs = server_ruleset(&lab, &client, &server, 0, 0);
    let resync = Duration::from_secs(2);
    let mut reconciler = Reconciler::new(
        (b.make)(lab.node_netns(1)),
        ReconcilerConfig {
            resync_every: Some(resync),
        },
    );
    reconciler.reconcile(rs.clone()).expect("apply");
    assert!(!tcp_ok(&lab, &client, &server, 81, IpFamily::V4).is_connected());
    (b.tamper)(lab.node_netns(1));
    assert!(
        tcp_ok(&lab, &client, &server, 81, IpFamily::V4).is_connected(),
        "tampering removed the rules"
    );
    let tampered = Instant::now();
    // The agent's loop: reconcile what is desired, as events and timers come.
    let mut repaired = None;
    while tampered.elapsed() < resync * 3 {
        reconciler.reconcile(rs.clone()).expect("reconcile");
        if !tcp_ok(&lab, &client, &server, 81, IpFamily::V4).is_connected() {
            repaired = Some(tampered.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let repaired = repaired
        .unwrap_or_else(|| panic!("{}: drift not repaired within {:?}", b.name, resync * 3));
    eprintln!(
        "{}: drift repaired {repaired:?} after tampering (resync every {resync:?})",
        b.name
    );
    assert!(repaired <= resync + Duration::from_secs(1));
    assert!(tcp_ok(&lab, &client, &server, 80, IpFamily::V4).is_connected());
}
