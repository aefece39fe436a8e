//! The NetworkPolicy checklist (docs/SEMANTICS.md §1-§11) as table tests. Each row names the item
//! it checks, builds a small cluster, and asserts the verdict AND its explanation: which
//! policies isolate each side and which rule (policy, direction, index) allowed it.
//!
//! Every row is also run through the plain reference evaluator (palisade-testkit) and,
//! when both ends are visible to a dataplane, through the compiled IR, so the three
//! readings of the checklist are held to the same answer.
//!
//! Side notation: `not isolated`, `external`, `host network`, `self`,
//! `isolated by a/p, a/q; allowed by a/p ingress[0]`, `isolated by a/p; denied`.

use palisade_engine::verdict::ExplainError;
use palisade_engine::{ClusterState, Endpoint, Flow, SideVerdict};
use palisade_model::{
    Direction::{Egress, Ingress},
    IpFamily, Key, NetworkPolicy, Object, Pod, PodPhase, Protocol,
    Protocol::{Sctp, Tcp, Udp},
};
use palisade_testkit::build::*;
use palisade_testkit::{RefEndpoint, RefSide, ir_allows, ir_protocol, reference_explain};

// ---------------------------------------------------------------------------------------
// Fixture: namespace `a` (team=y) and `b` (team=x, env=prod), four dual-stack pods on n1.

fn base_pods() -> Vec<Pod> {
    vec![
        pod("a", "client")
            .label("app", "client")
            .ip("10.0.0.1")
            .ip("fd00::1")
            .port("http", 80)
            .node("n1")
            .build(),
        pod("a", "server")
            .label("app", "server")
            .ip("10.0.0.2")
            .ip("fd00::2")
            .port("http", 8080)
            .port("metrics", 9090)
            .node("n1")
            .build(),
        pod("b", "client")
            .label("app", "client")
            .ip("10.0.1.1")
            .ip("fd00::1:1")
            .node("n2")
            .build(),
        pod("b", "other")
            .labels(&[("app", "other"), ("env", "prod")])
            .ip("10.0.1.2")
            .ip("fd00::1:2")
            .node("n2")
            .build(),
    ]
}

fn cluster(extra_pods: Vec<Pod>, policies: Vec<NetworkPolicy>) -> Vec<Object> {
    let namespaces = vec![
        namespace("a", &[("team", "y")]),
        namespace("b", &[("team", "x"), ("env", "prod")]),
    ];
    objects(
        namespaces,
        base_pods().into_iter().chain(extra_pods),
        policies,
    )
}

fn with(policies: Vec<NetworkPolicy>) -> Vec<Object> {
    cluster(Vec::new(), policies)
}

fn flow(src: &str, dst: &str, protocol: Protocol, port: u16) -> Flow {
    Flow {
        src: src.parse().expect("endpoint"),
        dst: dst.parse().expect("endpoint"),
        protocol,
        port,
        family: None,
    }
}

fn v6(mut f: Flow) -> Flow {
    f.family = Some(IpFamily::V6);
    f
}

// ---------------------------------------------------------------------------------------
// The harness

fn engine_side(side: &SideVerdict) -> String {
    match side {
        SideVerdict::External => "external".into(),
        SideVerdict::HostNetwork => "host network".into(),
        SideVerdict::SelfTraffic => "self".into(),
        SideVerdict::NotIsolated => "not isolated".into(),
        SideVerdict::AuditDenied { audited_by } => {
            format!("audit-denied by {}", join(audited_by.iter()))
        }
        SideVerdict::Allowed {
            isolated_by,
            allowed_by,
        } => format!(
            "isolated by {}; allowed by {}",
            join(isolated_by.iter()),
            join(allowed_by.iter())
        ),
        SideVerdict::Denied { isolated_by } => {
            format!("isolated by {}; denied", join(isolated_by.iter()))
        }
    }
}

fn reference_side(side: &RefSide, direction: &str) -> String {
    match side {
        RefSide::External => "external".into(),
        RefSide::HostNetwork => "host network".into(),
        RefSide::SelfTraffic => "self".into(),
        RefSide::NotIsolated => "not isolated".into(),
        RefSide::AuditDenied { audited_by } => {
            format!("audit-denied by {}", join(audited_by.iter()))
        }
        RefSide::Isolated {
            isolated_by,
            allowed_by,
        } if allowed_by.is_empty() => {
            format!("isolated by {}; denied", join(isolated_by.iter()))
        }
        RefSide::Isolated {
            isolated_by,
            allowed_by,
        } => format!(
            "isolated by {}; allowed by {}",
            join(isolated_by.iter()),
            join(
                allowed_by
                    .iter()
                    .map(|(k, i)| format!("{k} {direction}[{i}]"))
            )
        ),
    }
}

fn join<T: ToString>(items: impl Iterator<Item = T>) -> String {
    items.map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}

fn ref_endpoint(e: &Endpoint) -> RefEndpoint {
    match e {
        Endpoint::Pod(k) => RefEndpoint::Pod(k.clone()),
        Endpoint::Ip(ip) => RefEndpoint::Ip(*ip),
    }
}

#[derive(Default)]
struct Table {
    rows: usize,
    failures: Vec<String>,
}

impl Table {
    /// One row: `objects`, `flow`, and the expected verdict with both sides explained.
    fn row(
        &mut self,
        name: &str,
        objects: &[Object],
        flow: Flow,
        allowed: bool,
        egress: &str,
        ingress: &str,
    ) {
        self.row_with(
            name,
            ClusterState::from_objects(objects),
            objects,
            flow,
            allowed,
            egress,
            ingress,
            true,
        )
    }

    /// A row on a state built by hand (incremental updates); `reference`: also hold the
    /// plain evaluator (on `objects`) to it.
    #[allow(clippy::too_many_arguments)]
    fn row_with(
        &mut self,
        name: &str,
        state: ClusterState,
        objects: &[Object],
        flow: Flow,
        allowed: bool,
        egress: &str,
        ingress: &str,
        reference: bool,
    ) {
        self.rows += 1;
        let mut fail = |what: String| self.failures.push(format!("{name}: {what}"));
        let e = match state.explain(&flow) {
            Ok(e) => e,
            Err(err) => return fail(format!("explain failed: {err}")),
        };
        let got = (e.allowed(), engine_side(&e.egress), engine_side(&e.ingress));
        let want = (allowed, egress.to_string(), ingress.to_string());
        if got != want {
            fail(format!("engine\n    got  {got:?}\n    want {want:?}\n{e}"));
        }
        if reference {
            let (namespaces, pods, policies) = split(objects);
            let r = reference_explain(
                &namespaces,
                &pods,
                &policies,
                &ref_endpoint(&flow.src),
                &ref_endpoint(&flow.dst),
                flow.protocol,
                flow.port,
                flow.family,
            )
            .expect("reference resolves the flow");
            let got = (
                r.allowed(),
                reference_side(&r.egress, "egress"),
                reference_side(&r.ingress, "ingress"),
            );
            if got != want {
                fail(format!("reference\n    got  {got:?}\n    want {want:?}"));
            }
        }
        // The compiled IR, when both ends have an address a dataplane sees.
        let address = |ep: &Endpoint| match ep {
            Endpoint::Ip(ip) => Some(*ip),
            Endpoint::Pod(k) => state
                .pod(k)
                .filter(|p| p.host_network || p.node.is_some())
                .and_then(|p| p.ip(e.family)),
        };
        // A pod's traffic to itself never reaches a dataplane: nothing to compare there.
        if let (Some(s), Some(d)) = (address(&flow.src), address(&flow.dst))
            && s != d
        {
            let nodes: Vec<_> = ["n1", "n2"].iter().map(|n| state.compile_node(n)).collect();
            let ir = ir_allows(&nodes, s, d, ir_protocol(flow.protocol), flow.port);
            if ir != allowed {
                fail(format!("IR says {ir} for {s} -> {d}"));
            }
        }
    }

    fn finish(self) {
        eprintln!("{} rows", self.rows);
        assert!(
            self.failures.is_empty(),
            "{} of {} rows failed:\n\n{}",
            self.failures.len(),
            self.rows,
            self.failures.join("\n\n")
        );
    }
}

// ---------------------------------------------------------------------------------------
// The table, by checklist item

#[test]
fn s01_isolation() {
    let mut t = Table::default();
    let deny_server = policy("a", "deny")
        .select(sel(&[("app", "server")]))
        .build();
    t.row(
        "§1 a pod no policy selects is not isolated",
        &with(vec![
            policy("a", "p").select(sel(&[("app", "nobody")])).build(),
        ]),
        flow("a/client", "a/server", Tcp, 80),
        true,
        "not isolated",
        "not isolated",
    );
    t.row(
        "§1 selected with Ingress in policyTypes: isolated for ingress",
        &with(vec![deny_server.clone()]),
        flow("a/client", "a/server", Tcp, 80),
        false,
        "not isolated",
        "isolated by a/deny; denied",
    );
    t.row(
        "§1 ingress isolation leaves egress open",
        &with(vec![deny_server]),
        flow("a/server", "a/client", Tcp, 80),
        true,
        "not isolated",
        "not isolated",
    );
    t.row(
        "self: a pod's traffic to itself is allowed, even isolated both ways with no rule",
        &with(vec![
            policy("a", "deny-all").types(&[Ingress, Egress]).build(),
        ]),
        flow("a/server", "a/server", Tcp, 8080),
        true,
        "self",
        "self",
    );
    t.row(
        "§1 a policy selects pods of its own namespace only",
        &with(vec![
            policy("b", "deny-all").types(&[Ingress, Egress]).build(),
        ]),
        flow("a/client", "a/server", Tcp, 80),
        true,
        "not isolated",
        "not isolated",
    );
    t.finish();
}

#[test]
fn s02_policy_types_defaulting() {
    let mut t = Table::default();
    let ingress_only = policy("a", "p")
        .ingress(rule().from(pods(sel(&[("app", "client")]))))
        .build();
    t.row(
        "§2 policyTypes absent, no egress rules: Ingress only",
        &with(vec![ingress_only]),
        flow("a/server", "8.8.8.8", Udp, 53),
        true,
        "not isolated",
        "external",
    );
    let with_egress = policy("a", "p")
        .egress(rule().to(ip_block("10.0.0.0/8", &[])))
        .build();
    t.row(
        "§2 policyTypes absent, an egress rule: Egress too",
        &with(vec![with_egress.clone()]),
        flow("a/server", "8.8.8.8", Udp, 53),
        false,
        "isolated by a/p; denied",
        "external",
    );
    t.row(
        "§2 policyTypes absent: Ingress always (no ingress rules = deny)",
        &with(vec![with_egress]),
        flow("a/client", "a/server", Tcp, 80),
        false,
        "isolated by a/p; allowed by a/p egress[0]",
        "isolated by a/p; denied",
    );
    t.row(
        "§2 explicit policyTypes [Egress] does not isolate ingress",
        &with(vec![policy("a", "p").types(&[Egress]).build()]),
        flow("b/client", "a/server", Tcp, 80),
        true,
        "not isolated",
        "not isolated",
    );
    t.row(
        "§2 explicit policyTypes [Egress] with no rules denies egress",
        &with(vec![policy("a", "p").types(&[Egress]).build()]),
        flow("a/server", "b/client", Tcp, 80),
        false,
        "isolated by a/p; denied",
        "not isolated",
    );
    t.finish();
}

#[test]
fn s03_both_sides_and_union() {
    let mut t = Table::default();
    let egress_ok = policy("a", "out").types(&[Egress]).egress(rule()).build();
    let deny_b = policy("b", "deny").build();
    t.row(
        "§3 egress allows, ingress denies: denied",
        &with(vec![egress_ok.clone(), deny_b.clone()]),
        flow("a/client", "b/client", Tcp, 80),
        false,
        "isolated by a/out; allowed by a/out egress[0]",
        "isolated by b/deny; denied",
    );
    let allow_b = policy("b", "allow")
        .ingress(rule().from(namespaces(sel(&[("team", "y")]))))
        .build();
    t.row(
        "§3 policies only add allows: a second policy opens what the first denies",
        &with(vec![egress_ok, deny_b, allow_b]),
        flow("a/client", "b/client", Tcp, 80),
        true,
        "isolated by a/out; allowed by a/out egress[0]",
        "isolated by b/allow, b/deny; allowed by b/allow ingress[0]",
    );
    let two_rules = policy("a", "p")
        .select(sel(&[("app", "server")]))
        .ingress(rule().from(pods(sel(&[("app", "nobody")]))))
        .ingress(rule().from(pods(sel(&[("app", "client")]))).port(tcp(80)))
        .ingress(rule().port(tcp_range(70, 90)))
        .build();
    t.row(
        "§3 the explanation lists every allowing rule, by index",
        &with(vec![two_rules]),
        flow("a/client", "a/server", Tcp, 80),
        true,
        "not isolated",
        "isolated by a/p; allowed by a/p ingress[1], a/p ingress[2]",
    );
    t.finish();
}

#[test]
fn s04_rule_matching() {
    let mut t = Table::default();
    let ports_only = policy("a", "p")
        .select(sel(&[("app", "server")]))
        .ingress(rule().port(tcp(80)))
        .build();
    t.row(
        "§4 no from: every peer, external IPs included",
        &with(vec![ports_only.clone()]),
        flow("203.0.113.9", "a/server", Tcp, 80),
        true,
        "external",
        "isolated by a/p; allowed by a/p ingress[0]",
    );
    t.row(
        "§4 no from, but the port must match",
        &with(vec![ports_only]),
        flow("b/client", "a/server", Tcp, 81),
        false,
        "not isolated",
        "isolated by a/p; denied",
    );
    let peers_only = policy("a", "p")
        .select(sel(&[("app", "server")]))
        .ingress(rule().from(pods(sel(&[("app", "client")]))))
        .build();
    t.row(
        "§4 no ports: every port and protocol",
        &with(vec![peers_only.clone()]),
        flow("a/client", "a/server", Sctp, 9999),
        true,
        "not isolated",
        "isolated by a/p; allowed by a/p ingress[0]",
    );
    t.row(
        "§4 no ports, but the peer must match",
        &with(vec![peers_only]),
        flow("b/other", "a/server", Tcp, 80),
        false,
        "not isolated",
        "isolated by a/p; denied",
    );
    let both = policy("a", "p")
        .select(sel(&[("app", "server")]))
        .ingress(
            rule()
                .from(pods(sel(&[("app", "client")])))
                .port(tcp(80))
                .port(udp(53)),
        )
        .build();
    t.row(
        "§4 peer AND port: any ports entry",
        &with(vec![both.clone()]),
        flow("a/client", "a/server", Udp, 53),
        true,
        "not isolated",
        "isolated by a/p; allowed by a/p ingress[0]",
    );
    t.row(
        "§4 peer matches, port does not: denied",
        &with(vec![both]),
        flow("a/client", "a/server", Tcp, 53),
        false,
        "not isolated",
        "isolated by a/p; denied",
    );
    t.finish();
}

#[test]
fn s05_empty_rules() {
    let mut t = Table::default();
    t.row(
        "§5 ingress: [] (isolated, no rules) denies everything",
        &with(vec![policy("a", "deny").types(&[Ingress]).build()]),
        flow("a/client", "a/server", Tcp, 80),
        false,
        "not isolated",
        "isolated by a/deny; denied",
    );
    t.row(
        "§5 egress: [] (isolated, no rules) denies everything",
        &with(vec![policy("a", "deny").types(&[Ingress, Egress]).build()]),
        flow("a/client", "10.0.1.1", Tcp, 80),
        false,
        "isolated by a/deny; denied",
        "external",
    );
    t.row(
        "§5 ingress: [{}] allows everything, external included",
        &with(vec![policy("a", "all").ingress(rule()).build()]),
        flow("198.51.100.7", "a/server", Sctp, 7),
        true,
        "external",
        "isolated by a/all; allowed by a/all ingress[0]",
    );
    t.row(
        "§5 egress: [{}] allows everything",
        &with(vec![
            policy("a", "all").types(&[Egress]).egress(rule()).build(),
        ]),
        flow("a/client", "2001:db8::1", Udp, 53),
        true,
        "isolated by a/all; allowed by a/all egress[0]",
        "external",
    );
    t.row(
        "§5 [{}] next to a deny-all: the union allows",
        &with(vec![
            policy("a", "deny").build(),
            policy("a", "all").ingress(rule()).build(),
        ]),
        flow("b/other", "a/server", Tcp, 80),
        true,
        "not isolated",
        "isolated by a/all, a/deny; allowed by a/all ingress[0]",
    );
    t.finish();
}

#[test]
fn s06_peers() {
    let mut t = Table::default();
    let server = || policy("a", "p").select(sel(&[("app", "server")]));
    let from_clients = server()
        .ingress(rule().from(pods(sel(&[("app", "client")]))))
        .build();
    t.row(
        "§6 podSelector alone: the policy's namespace",
        &with(vec![from_clients.clone()]),
        flow("a/client", "a/server", Tcp, 80),
        true,
        "not isolated",
        "isolated by a/p; allowed by a/p ingress[0]",
    );
    t.row(
        "§6 podSelector alone: not another namespace's pods",
        &with(vec![from_clients]),
        flow("b/client", "a/server", Tcp, 80),
        false,
        "not isolated",
        "isolated by a/p; denied",
    );
    let from_team_x = server()
        .ingress(rule().from(namespaces(sel(&[("team", "x")]))))
        .build();
    t.row(
        "§6 namespaceSelector alone: every pod of matching namespaces",
        &with(vec![from_team_x.clone()]),
        flow("b/other", "a/server", Tcp, 80),
        true,
        "not isolated",
        "isolated by a/p; allowed by a/p ingress[0]",
    );
    t.row(
        "§6 namespaceSelector alone: not the policy's own namespace unless it matches",
        &with(vec![from_team_x]),
        flow("a/client", "a/server", Tcp, 80),
        false,
        "not isolated",
        "isolated by a/p; denied",
    );
    let and = server()
        .ingress(rule().from(pods_in(sel(&[("team", "x")]), sel(&[("app", "client")]))))
        .build();
    t.row(
        "§6 AND within one peer: both match",
        &with(vec![and.clone()]),
        flow("b/client", "a/server", Tcp, 80),
        true,
        "not isolated",
        "isolated by a/p; allowed by a/p ingress[0]",
    );
    t.row(
        "§6 AND within one peer: namespace matches, pod does not",
        &with(vec![and.clone()]),
        flow("b/other", "a/server", Tcp, 80),
        false,
        "not isolated",
        "isolated by a/p; denied",
    );
    t.row(
        "§6 AND within one peer: pod matches, namespace does not",
        &with(vec![and]),
        flow("a/client", "a/server", Tcp, 80),
        false,
        "not isolated",
        "isolated by a/p; denied",
    );
    let or = server()
        .ingress(
            rule()
                .from(namespaces(sel(&[("team", "x")])))
                .from(pods(sel(&[("app", "client")]))),
        )
        .build();
    t.row(
        "§6 OR across list entries: the second entry matches",
        &with(vec![or.clone()]),
        flow("a/client", "a/server", Tcp, 80),
        true,
        "not isolated",
        "isolated by a/p; allowed by a/p ingress[0]",
    );
    t.row(
        "§6 OR across list entries: the first entry matches",
        &with(vec![or]),
        flow("b/other", "a/server", Tcp, 80),
        true,
        "not isolated",
        "isolated by a/p; allowed by a/p ingress[0]",
    );
    t.row(
        "§6 empty selectors {} match all pods of all namespaces",
        &with(vec![
            server().ingress(rule().from(pods_in(all(), all()))).build(),
        ]),
        flow("b/other", "a/server", Tcp, 80),
        true,
        "not isolated",
        "isolated by a/p; allowed by a/p ingress[0]",
    );
    t.row(
        "§6 selectors never match an external IP",
        &with(vec![
            server().ingress(rule().from(pods_in(all(), all()))).build(),
        ]),
        flow("10.9.9.9", "a/server", Tcp, 80),
        false,
        "external",
        "isolated by a/p; denied",
    );
    let to_server_ip = policy("a", "q")
        .select(sel(&[("app", "client")]))
        .types(&[Egress])
        .egress(rule().to(ip_block("10.0.0.2/32", &[])))
        .build();
    t.row(
        "§6 ipBlock matches pod IPs",
        &with(vec![to_server_ip]),
        flow("a/client", "a/server", Tcp, 80),
        true,
        "isolated by a/q; allowed by a/q egress[0]",
        "not isolated",
    );
    let except = policy("a", "q")
        .select(sel(&[("app", "client")]))
        .types(&[Egress])
        .egress(rule().to(ip_block("10.0.0.0/24", &["10.0.0.2/32"])))
        .build();
    t.row(
        "§6 ipBlock except: the excepted pod IP is not matched",
        &with(vec![except.clone()]),
        flow("a/client", "a/server", Tcp, 80),
        false,
        "isolated by a/q; denied",
        "not isolated",
    );
    t.row(
        "§6 ipBlock except: the rest of the cidr is",
        &with(vec![except.clone()]),
        flow("a/client", "10.0.0.3", Tcp, 80),
        true,
        "isolated by a/q; allowed by a/q egress[0]",
        "external",
    );
    t.row(
        "§6 ipBlock: outside the cidr",
        &with(vec![except]),
        flow("a/client", "10.0.1.1", Tcp, 80),
        false,
        "isolated by a/q; denied",
        "external",
    );
    t.finish();
}

#[test]
fn s07_selectors() {
    let mut t = Table::default();
    let server = || policy("a", "p").select(sel(&[("app", "server")]));
    let from = |s| {
        with(vec![
            server().ingress(rule().from(pods_in(all(), s))).build(),
        ])
    };
    let allowed = "isolated by a/p; allowed by a/p ingress[0]";
    let denied = "isolated by a/p; denied";
    let rows: Vec<(&str, palisade_model::LabelSelector, &str, bool)> = vec![
        (
            "§7 matchLabels",
            sel(&[("app", "client")]),
            "b/client",
            true,
        ),
        (
            "§7 matchLabels AND matchExpressions: both hold",
            sel(&[("app", "other")]).key_exists("env"),
            "b/other",
            true,
        ),
        (
            "§7 matchLabels AND matchExpressions: one fails",
            sel(&[("app", "client")]).key_exists("env"),
            "b/client",
            false,
        ),
        (
            "§7 In",
            all().key_in("app", &["client", "x"]),
            "b/client",
            true,
        ),
        (
            "§7 In with the key missing",
            all().key_in("env", &["prod", "dev"]),
            "b/client",
            false,
        ),
        (
            "§7 NotIn with another value",
            all().key_not_in("env", &["dev"]),
            "b/other",
            true,
        ),
        (
            "§7 NotIn with the listed value",
            all().key_not_in("env", &["prod"]),
            "b/other",
            false,
        ),
        (
            "§7 NotIn with the key missing is true",
            all().key_not_in("env", &["prod"]),
            "b/client",
            true,
        ),
        ("§7 Exists", all().key_exists("env"), "b/other", true),
        (
            "§7 Exists with the key missing",
            all().key_exists("env"),
            "b/client",
            false,
        ),
        (
            "§7 DoesNotExist with the key missing",
            all().key_does_not_exist("env"),
            "b/client",
            true,
        ),
        (
            "§7 DoesNotExist with the key present",
            all().key_does_not_exist("env"),
            "b/other",
            false,
        ),
    ];
    for (name, selector, src, ok) in rows {
        t.row(
            name,
            &from(selector),
            flow(src, "a/server", Tcp, 80),
            ok,
            "not isolated",
            if ok { allowed } else { denied },
        );
    }
    let by_name = |ns: &str| {
        server()
            .ingress(rule().from(namespaces(sel(&[("kubernetes.io/metadata.name", ns)]))))
            .build()
    };
    t.row(
        "§7 namespaces carry kubernetes.io/metadata.name implicitly",
        &with(vec![by_name("b")]),
        flow("b/client", "a/server", Tcp, 80),
        true,
        "not isolated",
        allowed,
    );
    // A namespace no Namespace object declares still has its name label.
    let undeclared = pod("c", "ghost").ip("10.0.2.1").node("n2").build();
    t.row(
        "§7 the implicit name label exists for an undeclared namespace",
        &cluster(vec![undeclared], vec![by_name("c")]),
        flow("c/ghost", "a/server", Tcp, 80),
        true,
        "not isolated",
        allowed,
    );
    t.row(
        "§7 a namespace selector matches namespace labels, not pod labels",
        &with(vec![
            server()
                .ingress(rule().from(namespaces(sel(&[("app", "client")]))))
                .build(),
        ]),
        flow("b/client", "a/server", Tcp, 80),
        false,
        "not isolated",
        denied,
    );
    t.finish();
}

#[test]
fn s08_ports() {
    let mut t = Table::default();
    let server = || policy("a", "p").select(sel(&[("app", "server")]));
    let allowed = "isolated by a/p; allowed by a/p ingress[0]";
    let denied = "isolated by a/p; denied";
    let tcp80 = with(vec![server().ingress(rule().port(tcp(80))).build()]);
    t.row(
        "§8 a TCP port admits TCP",
        &tcp80,
        flow("a/client", "a/server", Tcp, 80),
        true,
        "not isolated",
        allowed,
    );
    t.row(
        "§8 a TCP port does not admit UDP",
        &tcp80,
        flow("a/client", "a/server", Udp, 80),
        false,
        "not isolated",
        denied,
    );
    let sctp_only = with(vec![server().ingress(rule().port(sctp(80))).build()]);
    t.row(
        "§8 an SCTP-only rule does not admit TCP, but isolates",
        &sctp_only,
        flow("a/client", "a/server", Tcp, 80),
        false,
        "not isolated",
        denied,
    );
    t.row(
        "§8 an SCTP-only rule admits SCTP",
        &sctp_only,
        flow("a/client", "a/server", Sctp, 80),
        true,
        "not isolated",
        allowed,
    );
    let udp_any = with(vec![server().ingress(rule().port(port_any(Udp))).build()]);
    t.row(
        "§8 protocol without port: every port of it",
        &udp_any,
        flow("a/client", "a/server", Udp, 40000),
        true,
        "not isolated",
        allowed,
    );
    t.row(
        "§8 protocol without port: no other protocol",
        &udp_any,
        flow("a/client", "a/server", Tcp, 40000),
        false,
        "not isolated",
        denied,
    );
    let range = with(vec![
        server().ingress(rule().port(tcp_range(8000, 8100))).build(),
    ]);
    for (port, ok) in [
        (7999, false),
        (8000, true),
        (8050, true),
        (8100, true),
        (8101, false),
    ] {
        t.row(
            &format!("§8 endPort range [8000, 8100], port {port}"),
            &range,
            flow("a/client", "a/server", Tcp, port),
            ok,
            "not isolated",
            if ok { allowed } else { denied },
        );
    }
    // Named ports, ingress: resolved on the selected pod (a/server: http=8080, metrics=9090).
    let named_in = with(vec![
        server().ingress(rule().port(tcp_named("http"))).build(),
    ]);
    t.row(
        "§8 ingress named port resolves on the selected pod",
        &named_in,
        flow("a/client", "a/server", Tcp, 8080),
        true,
        "not isolated",
        allowed,
    );
    t.row(
        "§8 ingress named port: not the source's port of that name",
        &named_in,
        flow("a/client", "a/server", Tcp, 80),
        false,
        "not isolated",
        denied,
    );
    t.row(
        "§8 ingress named port: the name must match for the flow's protocol",
        &with(vec![
            server()
                .ingress(rule().port(port_named(Udp, "http")))
                .build(),
        ]),
        flow("a/client", "a/server", Udp, 8080),
        false,
        "not isolated",
        denied,
    );
    let no_http = with(vec![
        policy("b", "p")
            .ingress(rule().port(tcp_named("http")))
            .build(),
    ]);
    t.row(
        "§8 ingress named port the selected pod lacks admits nothing, but isolates",
        &no_http,
        flow("a/client", "b/client", Tcp, 80),
        false,
        "not isolated",
        denied.replace("a/p", "b/p").as_str(),
    );
    // Named ports, egress: resolved on each peer pod.
    let named_out = |extra: Vec<Pod>| {
        cluster(
            extra,
            vec![
                policy("a", "e")
                    .select(sel(&[("app", "client")]))
                    .types(&[Egress])
                    .egress(rule().port(tcp_named("http")))
                    .build(),
            ],
        )
    };
    let server2 = pod("a", "server2")
        .label("app", "server")
        .ip("10.0.0.3")
        .port("http", 9090)
        .node("n2")
        .build();
    let out_ok = "isolated by a/e; allowed by a/e egress[0]";
    let out_denied = "isolated by a/e; denied";
    t.row(
        "§8 egress named port resolves on the peer pod",
        &named_out(vec![server2.clone()]),
        flow("a/client", "a/server", Tcp, 8080),
        true,
        out_ok,
        "not isolated",
    );
    t.row(
        "§8 egress named port resolves on each peer pod separately",
        &named_out(vec![server2.clone()]),
        flow("a/client", "a/server2", Tcp, 9090),
        true,
        out_ok,
        "not isolated",
    );
    t.row(
        "§8 egress named port: another peer's number does not count",
        &named_out(vec![server2]),
        flow("a/client", "a/server", Tcp, 9090),
        false,
        out_denied,
        "not isolated",
    );
    t.row(
        "§8 egress named port: the source's own port of that name does not count",
        &named_out(vec![]),
        flow("a/client", "b/client", Tcp, 80),
        false,
        out_denied,
        "not isolated",
    );
    t.row(
        "§8 a named port never matches an ipBlock destination",
        &with(vec![
            policy("a", "e")
                .select(sel(&[("app", "client")]))
                .types(&[Egress])
                .egress(
                    rule()
                        .to(ip_block("0.0.0.0/0", &[]))
                        .port(tcp_named("http")),
                )
                .build(),
        ]),
        flow("a/client", "93.184.216.34", Tcp, 8080),
        false,
        out_denied,
        "external",
    );
    // A pod reached through an ipBlock is still a pod: its named ports resolve.
    t.row(
        "§8 egress named port on a pod matched by an ipBlock resolves on that pod",
        &with(vec![
            policy("a", "e")
                .select(sel(&[("app", "client")]))
                .types(&[Egress])
                .egress(
                    rule()
                        .to(ip_block("10.0.0.0/30", &[]))
                        .port(tcp_named("http")),
                )
                .build(),
        ]),
        flow("a/client", "a/server", Tcp, 8080),
        true,
        out_ok,
        "not isolated",
    );
    t.finish();
}

#[test]
fn s09_dual_stack() {
    let mut t = Table::default();
    let to_v4 = with(vec![
        policy("a", "e")
            .select(sel(&[("app", "client")]))
            .types(&[Egress])
            .egress(rule().to(ip_block("10.0.0.0/24", &[])))
            .build(),
    ]);
    let ok = "isolated by a/e; allowed by a/e egress[0]";
    let no = "isolated by a/e; denied";
    t.row(
        "§9 a v4 ipBlock matches the v4 flow",
        &to_v4,
        flow("a/client", "a/server", Tcp, 80),
        true,
        ok,
        "not isolated",
    );
    t.row(
        "§9 a v4 ipBlock does not match the v6 flow of the same pods",
        &to_v4,
        v6(flow("a/client", "a/server", Tcp, 80)),
        false,
        no,
        "not isolated",
    );
    let to_v6 = with(vec![
        policy("a", "e")
            .select(sel(&[("app", "client")]))
            .types(&[Egress])
            .egress(rule().to(ip_block("fd00::/112", &[])))
            .build(),
    ]);
    t.row(
        "§9 a v6 ipBlock matches the v6 flow",
        &to_v6,
        v6(flow("a/client", "a/server", Tcp, 80)),
        true,
        ok,
        "not isolated",
    );
    t.row(
        "§9 a v6 ipBlock does not match the v4 flow",
        &to_v6,
        flow("a/client", "a/server", Tcp, 80),
        false,
        no,
        "not isolated",
    );
    let selector = with(vec![
        policy("a", "p")
            .select(sel(&[("app", "server")]))
            .ingress(
                rule()
                    .from(pods(sel(&[("app", "client")])))
                    .port(tcp_named("http")),
            )
            .build(),
    ]);
    t.row(
        "§9 selector and named-port rules apply to both families",
        &selector,
        v6(flow("a/client", "a/server", Tcp, 8080)),
        true,
        "not isolated",
        "isolated by a/p; allowed by a/p ingress[0]",
    );
    t.row(
        "§9 a v6 external address against a v4 ipBlock",
        &to_v4,
        flow("a/client", "fd00::2", Tcp, 80),
        false,
        no,
        "external",
    );
    t.finish();
}

#[test]
fn s10_terminal_pods() {
    let mut t = Table::default();
    let trusted_only = policy("a", "p")
        .select(sel(&[("app", "server")]))
        .ingress(rule().from(pods(sel(&[("app", "trusted")]))))
        .build();
    // A finished pod that held 10.0.0.9, and the new pod that holds it now.
    let old = pod("a", "old")
        .label("app", "trusted")
        .ip("10.0.0.9")
        .node("n1")
        .phase(PodPhase::Succeeded)
        .build();
    let new = pod("a", "new")
        .label("app", "untrusted")
        .ip("10.0.0.9")
        .node("n1")
        .build();
    let objs = cluster(vec![old.clone(), new.clone()], vec![trusted_only.clone()]);
    let state = ClusterState::from_objects(&objs);
    assert!(
        matches!(
            state.explain(&flow("a/old", "a/server", Tcp, 80)),
            Err(ExplainError::UnknownPod(_))
        ),
        "§10 a Succeeded pod is dropped"
    );
    t.row(
        "§10 an address reused by a new pod does not inherit the old pod's allows",
        &objs,
        flow("a/new", "a/server", Tcp, 80),
        false,
        "not isolated",
        "isolated by a/p; denied",
    );
    t.row(
        "§10 the reused address as a bare IP is not the old pod either",
        &objs,
        flow("10.0.0.9", "a/server", Tcp, 80),
        false,
        "external",
        "isolated by a/p; denied",
    );
    // Incrementally: the pod is allowed while running, and loses its rules at once.
    let mut state = ClusterState::from_objects(&cluster(vec![], vec![trusted_only.clone()]));
    let mut running = old.clone();
    running.phase = PodPhase::Running;
    state.apply(Object::Pod(running.clone()));
    t.row_with(
        "§10 a running pod's allows",
        state.clone(),
        &cluster(vec![running.clone()], vec![trusted_only.clone()]),
        flow("a/old", "a/server", Tcp, 80),
        true,
        "not isolated",
        "isolated by a/p; allowed by a/p ingress[0]",
        true,
    );
    let mut failed = running.clone();
    failed.phase = PodPhase::Failed;
    state.apply(Object::Pod(failed));
    assert!(
        state.pod(&Key::new("a", "old")).is_none(),
        "§10 a Failed pod is removed at once"
    );
    // The new holder of the address arrives before the old pod's delete: the old pod stops
    // matching ipBlocks on that address (engine-only; the reference has no event order).
    let by_ip = policy("a", "p")
        .select(sel(&[("app", "server")]))
        .ingress(rule().from(ip_block("10.0.0.9/32", &[])))
        .build();
    let mut state = ClusterState::from_objects(&cluster(vec![], vec![by_ip.clone()]));
    state.apply(Object::Pod(running));
    state.apply(Object::Pod(new));
    t.row_with(
        "§10 a stale pod loses an address another pod now holds",
        state.clone(),
        &[],
        flow("a/old", "a/server", Tcp, 80),
        false,
        "not isolated",
        "isolated by a/p; denied",
        false,
    );
    t.row_with(
        "§10 the pod now holding the address matches the ipBlock",
        state,
        &[],
        flow("a/new", "a/server", Tcp, 80),
        true,
        "not isolated",
        "isolated by a/p; allowed by a/p ingress[0]",
        false,
    );
    t.finish();
}

#[test]
fn s11_host_network() {
    let mut t = Table::default();
    let agent = || {
        pod("a", "agent")
            .label("app", "client")
            .ip("192.168.0.1")
            .port("metrics", 9100)
            .host_network()
            .node("n1")
    };
    let deny_all = policy("a", "deny").types(&[Ingress, Egress]).build();
    t.row(
        "§11 a hostNetwork pod cannot be isolated (egress)",
        &cluster(vec![agent().build()], vec![deny_all.clone()]),
        flow("a/agent", "8.8.8.8", Udp, 53),
        true,
        "host network",
        "external",
    );
    t.row(
        "§11 a hostNetwork pod cannot be isolated (ingress)",
        &cluster(vec![agent().build()], vec![deny_all]),
        flow("203.0.113.1", "a/agent", Tcp, 9100),
        true,
        "external",
        "host network",
    );
    let from_clients = policy("a", "p")
        .select(sel(&[("app", "server")]))
        .ingress(rule().from(pods_in(all(), sel(&[("app", "client")]))))
        .build();
    t.row(
        "§11 selectors do not match a hostNetwork pod",
        &cluster(vec![agent().build()], vec![from_clients.clone()]),
        flow("a/agent", "a/server", Tcp, 80),
        false,
        "host network",
        "isolated by a/p; denied",
    );
    t.row(
        "§11 selectors do not match a hostNetwork pod without an address either",
        &cluster(
            vec![
                pod("a", "agent")
                    .label("app", "client")
                    .host_network()
                    .build(),
            ],
            vec![from_clients],
        ),
        flow("a/agent", "a/server", Tcp, 80),
        false,
        "host network",
        "isolated by a/p; denied",
    );
    let from_node = policy("a", "p")
        .select(sel(&[("app", "server")]))
        .ingress(rule().from(ip_block("192.168.0.0/24", &[])))
        .build();
    t.row(
        "§11 a hostNetwork pod appears as its node's IP: ipBlocks match it",
        &cluster(vec![agent().build()], vec![from_node.clone()]),
        flow("a/agent", "a/server", Tcp, 80),
        true,
        "host network",
        "isolated by a/p; allowed by a/p ingress[0]",
    );
    // Two hostNetwork pods on one node share its address; neither loses it.
    let agent2 = pod("b", "agent2")
        .ip("192.168.0.1")
        .host_network()
        .node("n1")
        .build();
    for src in ["a/agent", "b/agent2"] {
        t.row(
            &format!("§11 hostNetwork pods share their node's address ({src})"),
            &cluster(
                vec![agent().build(), agent2.clone()],
                vec![from_node.clone()],
            ),
            flow(src, "a/server", Tcp, 80),
            true,
            "host network",
            "isolated by a/p; allowed by a/p ingress[0]",
        );
    }
    let out_named = policy("a", "e")
        .select(sel(&[("app", "server")]))
        .types(&[Egress])
        .egress(rule().port(tcp_named("metrics")))
        .build();
    t.row(
        "§11 named ports do not resolve on a hostNetwork destination",
        &cluster(vec![agent().build()], vec![out_named.clone()]),
        flow("a/server", "a/agent", Tcp, 9100),
        false,
        "isolated by a/e; denied",
        "host network",
    );
    t.row(
        "§11 named ports do not resolve on a hostNetwork destination without an address",
        &cluster(
            vec![
                pod("a", "agent")
                    .port("metrics", 9100)
                    .host_network()
                    .build(),
            ],
            vec![out_named],
        ),
        flow("a/server", "a/agent", Tcp, 9100),
        false,
        "isolated by a/e; denied",
        "host network",
    );
    t.row(
        "§11 a rule without peers still matches a hostNetwork pod",
        &cluster(
            vec![agent().build()],
            vec![
                policy("a", "p")
                    .select(sel(&[("app", "server")]))
                    .ingress(rule().port(tcp(80)))
                    .build(),
            ],
        ),
        flow("a/agent", "a/server", Tcp, 80),
        true,
        "host network",
        "isolated by a/p; allowed by a/p ingress[0]",
    );
    t.finish();
}
